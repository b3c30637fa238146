//! `concurrency = N`: messages of one partition handled in parallel, one at a time per key.
//! Real broker, exact counts, bounded waits.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use common::*;
use faststream::extract::{Key, Offset, Topic};
use faststream::kafka::KafkaBroker;
use faststream::{publisher, routes, subscriber, Failure, FastStream};

/// (topic, key, offset) when each handler call started, and when it finished.
static STARTED: Mutex<Vec<(String, String, i64)>> = Mutex::new(Vec::new());
static FINISHED: Mutex<Vec<(String, String, i64)>> = Mutex::new(Vec::new());
static RUNNING: AtomicUsize = AtomicUsize::new(0);
static MOST: AtomicUsize = AtomicUsize::new(0);

fn record_call(list: &Mutex<Vec<(String, String, i64)>>, topic: &Topic, key: &Key, offset: i64) {
    list.lock().unwrap().push((
        topic.0.to_string(),
        key.as_str().unwrap_or("").to_owned(),
        offset,
    ));
}

fn calls(list: &Mutex<Vec<(String, String, i64)>>, topic: &str) -> Vec<(String, i64)> {
    list.lock()
        .unwrap()
        .iter()
        .filter(|(t, _, _)| t == topic)
        .map(|(_, k, o)| (k.clone(), *o))
        .collect()
}

/// A pseudo-random 0-10 ms from the offset (the same for a message handled twice).
fn jitter(offset: i64) -> Duration {
    Duration::from_millis((offset as u64).wrapping_mul(2654435761) % 11)
}

#[subscriber("par", auto_offset_reset = "earliest", concurrency = 50)]
#[publisher("par-out")]
async fn parallel(body: String, topic: Topic, key: Key, offset: Offset) -> String {
    record_call(&STARTED, &topic, &key, offset.0);
    let now = RUNNING.fetch_add(1, Ordering::SeqCst) + 1;
    MOST.fetch_max(now, Ordering::SeqCst);
    tokio::time::sleep(jitter(offset.0)).await;
    RUNNING.fetch_sub(1, Ordering::SeqCst);
    record_call(&FINISHED, &topic, &key, offset.0);
    body
}

fn keyed(n: usize, keys: usize) -> Vec<rskafka::record::Record> {
    (0..n)
        .map(|i| {
            let key = format!("k{}", i % keys);
            record(Some(&key), format!("{key}:{i}").as_bytes(), &[])
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_keep_their_order_while_different_keys_run_in_parallel() {
    let prefix = unique_prefix("par");
    let client = raw_client().await;
    let topic = format!("{prefix}par");
    create_topic(&client, &topic, 1).await;
    create_topic(&client, &format!("{prefix}par-out"), 1).await;
    produce(&client, &topic, 0, keyed(2000, 100)).await;
    let running = start(app(routes![parallel], &prefix)).await;
    let out = read(&client, &format!("{prefix}par-out"), 2000).await;
    running.stop().await.unwrap();

    // Per key, the handler saw its messages one at a time, in offset order.
    let mut last: BTreeMap<String, i64> = BTreeMap::new();
    let started = calls(&STARTED, &topic);
    assert_eq!(started.len(), 2000, "each message handled once");
    let finished = calls(&FINISHED, &topic);
    for (key, offset) in &started {
        if let Some(prev) = last.insert(key.clone(), *offset) {
            assert!(prev < *offset, "key {key}: {offset} started after {prev}");
            // The previous message of the key had finished before this one started.
            let prev_done = finished.iter().position(|c| c == &(key.clone(), prev));
            let this_start = started.iter().position(|c| c == &(key.clone(), *offset));
            assert!(prev_done.is_some() && this_start.is_some());
        }
    }
    assert!(
        MOST.load(Ordering::SeqCst) >= 10,
        "handlers ran in parallel (at most {} at once)",
        MOST.load(Ordering::SeqCst)
    );
    // Every input has its output; outputs of one key keep their order.
    let bodies: Vec<String> = out.values().flatten().map(text).collect();
    assert_eq!(
        bodies.iter().collect::<BTreeSet<_>>().len(),
        2000,
        "every input has its output"
    );
    let mut per_key: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for b in &bodies {
        let (k, i) = b.split_once(':').unwrap();
        per_key.entry(k).or_default().push(i.parse().unwrap());
    }
    for (k, seq) in per_key {
        assert!(
            seq.windows(2).all(|w| w[0] < w[1]),
            "outputs of {k} in order: {seq:?}"
        );
    }
}

static SLOW_FAILED: AtomicUsize = AtomicUsize::new(0);

#[subscriber(
    "hold",
    auto_offset_reset = "earliest",
    concurrency = 10,
    retry = 1,
    retry_backoff_ms = 1500
)]
async fn retried(body: String, topic: Topic, key: Key, offset: Offset) -> Result<(), Failure> {
    if body == "slow:0" && SLOW_FAILED.fetch_add(1, Ordering::SeqCst) == 0 {
        return Err(Failure::retry("not yet"));
    }
    record_call(&FINISHED, &topic, &key, offset.0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_message_holds_back_only_its_own_key() {
    let prefix = unique_prefix("hold");
    let client = raw_client().await;
    let topic = format!("{prefix}hold");
    create_topic(&client, &topic, 1).await;
    let mut inputs = vec![record(Some("slow"), b"slow:0", &[])];
    inputs.extend(keyed(50, 5));
    inputs.push(record(Some("slow"), b"slow:1", &[]));
    inputs.extend(keyed(50, 5));
    produce(&client, &topic, 0, inputs).await;
    let running = start(app(routes![retried], &prefix)).await;
    wait_for("all handled", || calls(&FINISHED, &topic).len() == 102).await;
    running.stop().await.unwrap();
    let finished = calls(&FINISHED, &topic);
    let at = |key: &str, offset: i64| {
        finished
            .iter()
            .position(|c| c == &(key.to_owned(), offset))
            .unwrap()
    };
    // Offsets: slow:0 at 0, 50 others, slow:1 at 51, 50 others.
    assert!(
        finished[..at("slow", 0)].len() >= 90,
        "other keys went on during the backoff: {finished:?}"
    );
    assert!(
        at("slow", 0) < at("slow", 51),
        "the key's next message waited for the retried one"
    );
}

#[subscriber(
    "crashy",
    auto_offset_reset = "earliest",
    group_id = "crashy",
    concurrency = 20
)]
#[publisher("crashy-out")]
async fn crashy(body: String, topic: Topic, key: Key, offset: Offset) -> String {
    tokio::time::sleep(jitter(offset.0)).await;
    record_call(&FINISHED, &topic, &key, offset.0);
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_mid_stream_loses_nothing() {
    let prefix = unique_prefix("crashy");
    let client = raw_client().await;
    let topic = format!("{prefix}crashy");
    create_topic(&client, &topic, 1).await;
    create_topic(&client, &format!("{prefix}crashy-out"), 1).await;
    produce(&client, &topic, 0, keyed(1000, 50)).await;
    let settings = |b: faststream::kafka::KafkaBrokerBuilder| {
        b.session_timeout(Duration::from_secs(2))
            .heartbeat_interval(Duration::from_millis(300))
            .commit_interval(Duration::from_millis(100))
    };
    let make = || {
        FastStream::new(settings(KafkaBroker::builder(&bootstrap())).build())
            .with_routes(routes![crashy])
            .topic_prefix(&prefix)
    };
    init_logs();
    let first = start(make()).await;
    wait_for("some handled", || calls(&FINISHED, &topic).len() >= 300).await;
    first.crash().await;
    let second = start(make()).await;
    wait_for("every offset handled", || {
        calls(&FINISHED, &topic)
            .iter()
            .map(|(_, o)| *o)
            .collect::<BTreeSet<_>>()
            .len()
            == 1000
    })
    .await;
    second.stop().await.unwrap();
    // Outputs may repeat (at-least-once); read until every input's output is seen.
    let out_topic = format!("{prefix}crashy-out");
    let mut want = 1000;
    loop {
        let out = read(&client, &out_topic, want).await;
        let distinct: BTreeSet<String> = out.values().flatten().map(text).collect();
        if distinct.len() == 1000 {
            break;
        }
        want += 1000 - distinct.len();
    }
}
