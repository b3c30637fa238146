//! Batch handlers (`batch = true`) against the real broker: batches stay within one partition,
//! in offset order and within `max_records`; every message is in exactly one batch; a failing
//! batch is retried and then dead-lettered message by message; a batch waits up to
//! `batch_timeout_ms` to fill; a consumer group commits past the batches. Exact counts.

mod common;

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use common::*;
use faststream::policy::dlq_header;
use faststream::{publisher, routes, subscriber, Failure, Message};

/// Per topic: each batch as (partition, offsets), in the order handled.
static BATCHES: Mutex<Vec<(String, i32, Vec<i64>)>> = Mutex::new(Vec::new());

fn record_batch(msgs: &[Message]) {
    let first = &msgs[0];
    BATCHES.lock().unwrap().push((
        first.topic.to_string(),
        first.partition,
        msgs.iter().map(|m| m.offset).collect(),
    ));
    for m in msgs {
        assert_eq!(m.partition, first.partition, "a batch holds one partition");
    }
}

fn batches(topic: &str) -> Vec<(i32, Vec<i64>)> {
    BATCHES
        .lock()
        .unwrap()
        .iter()
        .filter(|(t, _, _)| t == topic)
        .map(|(_, p, o)| (*p, o.clone()))
        .collect()
}

#[subscriber(
    "bulk",
    group_id = "bulk-group",
    auto_offset_reset = "earliest",
    batch = true,
    max_records = 500
)]
#[publisher("bulk-out")]
async fn bulk(msgs: Vec<Message>) -> Vec<String> {
    record_batch(&msgs);
    msgs.iter()
        .map(|m| format!("{}:{}", m.partition, m.text().unwrap_or_default()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_messages_arrive_in_batches_each_message_in_exactly_one() {
    let prefix = unique_prefix("bulk");
    let client = raw_client().await;
    let topic = format!("{prefix}bulk");
    create_topic(&client, &topic, 3).await;
    create_topic(&client, &format!("{prefix}bulk-out"), 3).await;
    let mut sent = 0;
    for p in 0..3 {
        let n = 3000 + 500 * p as usize; // 3000 + 3500 + 4000 = 10 500
        let records = (0..n)
            .map(|i| record(None, format!("m{i}").as_bytes(), &[]))
            .collect();
        produce(&client, &topic, p, records).await;
        sent += n;
    }
    let running = start(app(routes![bulk], &prefix)).await;
    let out = read(&client, &format!("{prefix}bulk-out"), sent).await;
    let group = format!("{prefix}bulk-group");
    let broker = bootstrap();
    for p in 0..3 {
        let end = 3000 + 500 * p as i64;
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        while wire::committed_partition(&broker, &group, &topic, p).await != end {
            assert!(
                tokio::time::Instant::now() < deadline,
                "partition {p}: the group commits past the last batch"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    running.stop().await.unwrap();

    let seen = batches(&topic);
    let mut per_partition: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
    for (p, offsets) in &seen {
        assert!(
            !offsets.is_empty() && offsets.len() <= 500,
            "batch of {}",
            offsets.len()
        );
        assert!(
            offsets.windows(2).all(|w| w[0] + 1 == w[1]),
            "a batch is consecutive offsets"
        );
        per_partition.entry(*p).or_default().extend(offsets);
    }
    for p in 0..3 {
        let n = 3000 + 500 * p as i64;
        assert_eq!(
            per_partition[&p],
            (0..n).collect::<Vec<_>>(),
            "partition {p}: every message in exactly one batch, in offset order"
        );
    }
    // With the backlog there before the start, batches fill up.
    assert!(
        seen.len() <= 40,
        "{} batches for 10 500 messages with max_records = 500",
        seen.len()
    );
    // One output per message.
    let total: usize = out.values().map(Vec::len).sum();
    assert_eq!(total, sent);
}

static FLAKY: Mutex<Vec<usize>> = Mutex::new(Vec::new());

#[derive(serde::Deserialize)]
struct Reading {
    value: i64,
}

#[subscriber(
    "sink",
    auto_offset_reset = "earliest",
    batch = true,
    max_records = 100,
    batch_timeout_ms = 1000,
    retry = 2,
    retry_backoff_ms = 50,
    dlq = "sink-dlq"
)]
async fn sink(readings: Vec<Reading>) -> Result<(), Failure> {
    FLAKY.lock().unwrap().push(readings.len());
    if readings.iter().any(|r| r.value < 0) {
        return Err(Failure::retry("a negative reading: the insert was refused"));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_batch_is_retried_then_dead_lettered_message_by_message() {
    let prefix = unique_prefix("sink");
    let client = raw_client().await;
    let topic = format!("{prefix}sink");
    create_topic(&client, &topic, 1).await;
    create_topic(&client, &format!("{prefix}sink-dlq"), 1).await;
    // Ten readings, one of them undecodable and one negative.
    let mut records: Vec<_> = (0..10)
        .map(|i| record(None, format!(r#"{{"value": {i}}}"#).as_bytes(), &[]))
        .collect();
    records[3] = record(None, b"not json", &[]);
    records[7] = record(None, br#"{"value": -1}"#, &[]);
    produce(&client, &topic, 0, records).await;
    let running = start(app(routes![sink], &prefix)).await;
    let dlq = read(&client, &format!("{prefix}sink-dlq"), 10).await;
    running.stop().await.unwrap();

    // The batch ran without the undecodable one, three times (one try, two retries).
    assert_eq!(*FLAKY.lock().unwrap(), [9, 9, 9]);
    let copies = &dlq[&0];
    let offsets: Vec<String> = copies
        .iter()
        .map(|r| String::from_utf8(r.record.headers[dlq_header::ORIGINAL_OFFSET].clone()).unwrap())
        .collect();
    // Every message dead-lettered once, in offset order: the undecodable one on its own
    // (kind `decode`), the batch's nine with the batch's error.
    assert_eq!(offsets, ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]);
    for (i, copy) in copies.iter().enumerate() {
        let header = |name: &str| String::from_utf8(copy.record.headers[name].clone()).unwrap();
        if i == 3 {
            assert_eq!(header(dlq_header::ERROR_KIND), "decode");
            assert_eq!(copy.record.value.as_deref(), Some(&b"not json"[..]));
            continue;
        }
        assert_eq!(header(dlq_header::ERROR_KIND), "rejected");
        assert!(
            header(dlq_header::ERROR).contains("the insert was refused"),
            "{}",
            header(dlq_header::ERROR)
        );
        assert_eq!(header(dlq_header::ATTEMPTS), "3");
    }
}

static FILLED: Mutex<Vec<usize>> = Mutex::new(Vec::new());

#[subscriber(
    "fill",
    auto_offset_reset = "earliest",
    batch = true,
    max_records = 50,
    batch_timeout_ms = 3000
)]
async fn fill(lines: Vec<String>) {
    FILLED.lock().unwrap().push(lines.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_waits_for_more_messages_up_to_its_timeout() {
    let prefix = unique_prefix("fill");
    let client = raw_client().await;
    let topic = format!("{prefix}fill");
    create_topic(&client, &topic, 1).await;
    let running = start(app(routes![fill], &prefix)).await;
    let three = (0..3)
        .map(|i| record(None, format!("a{i}").as_bytes(), &[]))
        .collect();
    produce(&client, &topic, 0, three).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let two = (0..2)
        .map(|i| record(None, format!("b{i}").as_bytes(), &[]))
        .collect();
    produce(&client, &topic, 0, two).await;
    wait_for("the batch is handed over", || {
        !FILLED.lock().unwrap().is_empty()
    })
    .await;
    // Then a full batch goes at once, without waiting for the timeout.
    let full = (0..50)
        .map(|i| record(None, format!("c{i}").as_bytes(), &[]))
        .collect();
    produce(&client, &topic, 0, full).await;
    wait_for("the full batch", || FILLED.lock().unwrap().len() == 2).await;
    running.stop().await.unwrap();
    assert_eq!(*FILLED.lock().unwrap(), [5, 50]);
}

static STORED: Mutex<Vec<i64>> = Mutex::new(Vec::new());

#[subscriber(
    "crash",
    group_id = "crash-group",
    auto_offset_reset = "earliest",
    batch = true,
    max_records = 50
)]
#[publisher("crash-out")]
async fn store(msgs: Vec<Message>) -> Vec<String> {
    tokio::time::sleep(Duration::from_millis(20)).await;
    STORED.lock().unwrap().extend(msgs.iter().map(|m| m.offset));
    msgs.iter()
        .map(|m| m.text().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_batches_loses_nothing() {
    let prefix = unique_prefix("crash");
    let client = raw_client().await;
    let topic = format!("{prefix}crash");
    create_topic(&client, &topic, 1).await;
    create_topic(&client, &format!("{prefix}crash-out"), 1).await;
    let records = (0..2000)
        .map(|i| record(None, format!("m{i}").as_bytes(), &[]))
        .collect();
    produce(&client, &topic, 0, records).await;
    let make = || {
        let broker = faststream::kafka::KafkaBroker::builder(&bootstrap())
            .session_timeout(Duration::from_secs(2))
            .heartbeat_interval(Duration::from_millis(300))
            .commit_interval(Duration::from_millis(100))
            .build();
        faststream::FastStream::new(broker)
            .with_routes(routes![store])
            .topic_prefix(&prefix)
    };
    init_logs();
    let first = start(make()).await;
    wait_for("some batches stored", || {
        STORED.lock().unwrap().len() >= 500
    })
    .await;
    first.crash().await;
    let second = start(make()).await;
    wait_for("every offset stored", || {
        let stored = STORED.lock().unwrap();
        (0..2000).all(|o| stored.contains(&o))
    })
    .await;
    second.stop().await.unwrap();
    // Outputs may repeat (at-least-once); every input's output is there.
    let out_topic = format!("{prefix}crash-out");
    let mut want = 2000;
    loop {
        let out = read(&client, &out_topic, want).await;
        let distinct: std::collections::BTreeSet<String> =
            out.values().flatten().map(text).collect();
        if distinct.len() == 2000 {
            break;
        }
        want += 2000 - distinct.len();
    }
}
