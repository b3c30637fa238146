//! Rolling restarts of a consumer group, as a deploy does them: three instances of the
//! `group_worker` example (separate processes) share a 6-partition topic under a steady stream,
//! and one instance at a time is stopped with SIGTERM and started again at once. A graceful stop
//! drains, commits and leaves, so nothing may be lost and nothing repeated; and the group must
//! be consuming again within a bound after the last restart.
//!
//! Bounds: the group is consuming again (every input handled) within `SETTLE` of the last
//! restart. With the worker's timings (session 4 s) one rebalance takes well under that on
//! Apache Kafka; Tansu holds every JoinGroup round for session_timeout / 2, so a few rounds in
//! a row fit too.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use rskafka::client::partition::UnknownTopicHandling;
use tokio::io::AsyncBufReadExt;
use tokio::process::Child;

const PARTITIONS: i32 = 6;
/// Messages per second of the steady stream.
const RATE: u64 = 3_000;
/// How long after the last restart the group must have handled every input.
const SETTLE: Duration = Duration::from_secs(30);

/// One `group_worker` process whose log lines are kept (for the failure message).
struct Worker {
    name: String,
    child: Child,
}

type Log = Arc<Mutex<Vec<String>>>;

/// Starts `group_worker` without waiting for it to be ready (a deploy does not wait either).
fn spawn_worker(prefix: &str, name: &str, log: &Log) -> Worker {
    let mut child = tokio::process::Command::new(example("group_worker"))
        .env("KAFKA_BOOTSTRAP", bootstrap())
        .env("TOPIC_PREFIX", prefix)
        .env("WORKER_NAME", name)
        .env(
            "RUST_LOG",
            std::env::var("WORKER_LOG").unwrap_or_else(|_| "info,rskafka=warn".into()),
        )
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let (log, who) = (log.clone(), name.to_owned());
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            log.lock().unwrap().push(format!("[{who}] {line}"));
        }
    });
    Worker {
        name: name.to_owned(),
        child,
    }
}

/// SIGTERM, and the process must exit 0 within the timeout.
async fn stop_worker(mut w: Worker, log: &Log) {
    let pid = w.child.id().expect("still running").to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = tokio::time::timeout(TIMEOUT, w.child.wait()).await;
    let tail = || log_tail(log, 60);
    let exit = exit
        .unwrap_or_else(|_| panic!("{} did not stop on SIGTERM; log:\n{}", w.name, tail()))
        .unwrap();
    assert!(
        exit.success(),
        "{} exited with {exit:?}; log:\n{}",
        w.name,
        tail()
    );
}

fn log_tail(log: &Log, n: usize) -> String {
    let log = log.lock().unwrap();
    log[log.len().saturating_sub(n)..].join("\n")
}

/// Produces `0..n` at `RATE` per second, spread over the partitions by number.
async fn steady_stream(client: Arc<rskafka::client::Client>, topic: String, n: u64) {
    let mut partitions = Vec::new();
    for p in 0..PARTITIONS {
        partitions.push(
            client
                .partition_client(topic.clone(), p, UnknownTopicHandling::Retry)
                .await
                .unwrap(),
        );
    }
    let tick = Duration::from_millis(20);
    let per_tick = RATE * tick.as_millis() as u64 / 1000;
    let mut ticker = tokio::time::interval(tick);
    let mut next = 0;
    while next < n {
        ticker.tick().await;
        let end = (next + per_tick).min(n);
        let mut by_p: BTreeMap<usize, Vec<_>> = BTreeMap::new();
        for k in next..end {
            by_p.entry((k % PARTITIONS as u64) as usize)
                .or_default()
                .push(record(None, k.to_string().as_bytes(), &[]));
        }
        for (p, recs) in by_p {
            partitions[p]
                .produce(recs, rskafka::client::partition::Compression::NoCompression)
                .await
                .unwrap();
        }
        next = end;
    }
}

/// Counts of each input number among the outputs read so far, read incrementally.
struct OutputReader {
    pc: rskafka::client::partition::PartitionClient,
    next: i64,
    /// The partition's high watermark at the last fetch.
    high: i64,
    seen: BTreeMap<u64, usize>,
}

impl OutputReader {
    async fn new(client: &rskafka::client::Client, topic: &str) -> Self {
        let pc = client
            .partition_client(topic, 0, UnknownTopicHandling::Retry)
            .await
            .unwrap();
        Self {
            pc,
            next: 0,
            high: 0,
            seen: BTreeMap::new(),
        }
    }

    /// Reads what has arrived since the last call.
    async fn poll(&mut self) {
        loop {
            let (records, high) = self
                .pc
                .fetch_records(self.next, 1..4_000_000, 50)
                .await
                .unwrap();
            let from = self.next;
            for r in records.into_iter().filter(|r| r.offset >= from) {
                self.next = r.offset + 1;
                let t = text(&r);
                let n: u64 = t.split(':').next().unwrap().parse().unwrap();
                *self.seen.entry(n).or_default() += 1;
            }
            self.high = high;
            if self.next >= high {
                return;
            }
        }
    }
}

/// Rolling graceful restarts: every `pause` one worker is stopped (SIGTERM) and started again
/// at once, for `rolling`; then every input must be handled exactly once.
async fn rolling_restarts(name: &str, pauses: &[Duration], rolling: Duration) {
    let prefix = unique_prefix(name);
    let client = Arc::new(raw_client().await);
    let (input, output) = (format!("{prefix}jobs"), format!("{prefix}jobs-done"));
    create_topic(&client, &input, PARTITIONS).await;
    create_topic(&client, &output, 1).await;
    let log: Log = Arc::default();
    let mut workers: Vec<Worker> = (1..=3)
        .map(|i| spawn_worker(&prefix, &format!("w{i}"), &log))
        .collect();
    // The stream runs through the whole rolling phase and a little beyond it.
    let n = RATE * (rolling.as_secs() + 5);
    let producer = tokio::spawn(steady_stream(client.clone(), input.clone(), n));
    let started = tokio::time::Instant::now();
    let mut restarts = 0;
    let mut next_name = 4;
    while started.elapsed() < rolling {
        let pause = pauses[restarts % pauses.len()];
        tokio::time::sleep(pause).await;
        let w = workers.remove(0);
        stop_worker(w, &log).await;
        workers.push(spawn_worker(&prefix, &format!("w{next_name}"), &log));
        next_name += 1;
        restarts += 1;
    }
    let last_restart = tokio::time::Instant::now();
    tokio::time::timeout(TIMEOUT, producer)
        .await
        .expect("the stream ends")
        .unwrap();
    let mut reader = OutputReader::new(&client, &output).await;
    loop {
        reader.poll().await;
        if reader.seen.len() as u64 == n {
            break;
        }
        if last_restart.elapsed() > SETTLE {
            let missing: Vec<u64> = (0..n).filter(|k| !reader.seen.contains_key(k)).collect();
            panic!(
                "{} of {n} inputs not handled {SETTLE:?} after the last of {restarts} restarts \
                 (first missing: {:?}); the workers' log:\n{}",
                missing.len(),
                &missing[..missing.len().min(10)],
                log_tail(&log, 150)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let settled = last_restart.elapsed();
    // Graceful stops of the last workers; then the output is final.
    for w in workers {
        stop_worker(w, &log).await;
    }
    reader.poll().await;
    let duplicates: Vec<(u64, usize)> = reader
        .seen
        .iter()
        .filter(|(_, c)| **c > 1)
        .map(|(k, c)| (*k, *c))
        .collect();
    println!(
        "{name}: {restarts} rolling restarts, {n} inputs, every one handled {settled:?} after \
         the last restart, {} repeated",
        duplicates.len()
    );
    assert!(
        duplicates.is_empty(),
        "graceful restarts repeated {} inputs (first: {:?}); the workers' log:\n{}",
        duplicates.len(),
        &duplicates[..duplicates.len().min(10)],
        log_tail(&log, 150)
    );
    assert_eq!(reader.seen.len() as u64, n);
    // No request may ever have read another request's response.
    let log = log.lock().unwrap();
    let mismatched: Vec<&String> = log
        .iter()
        .filter(|l| l.contains("correlation id"))
        .collect();
    assert!(mismatched.is_empty(), "{mismatched:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_graceful_restarts_lose_and_repeat_nothing() {
    let pauses = [3, 4, 5].map(Duration::from_secs);
    rolling_restarts("rolling", &pauses, Duration::from_secs(30)).await;
}

/// Restarts faster than one rebalance: a member leaves while the group is still joining or
/// syncing after the previous restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_faster_than_a_rebalance_lose_and_repeat_nothing() {
    let pauses = [300, 700, 1200].map(Duration::from_millis);
    rolling_restarts("rapid", &pauses, Duration::from_secs(15)).await;
}
