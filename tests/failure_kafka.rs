//! The failure policy against the real broker: bad input dead-lettered with its headers read
//! back from the dead-letter topic, retries, `on_failure = "stop"`, and what each ack mode
//! means for committed offsets across a restart.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

use common::*;
use faststream::extract::Acker;
use faststream::policy::dlq_header;
use faststream::{publisher, routes, subscriber, Failure};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
struct Order {
    id: u64,
    amount: i64,
}

#[subscriber(
    "orders",
    auto_offset_reset = "earliest",
    dlq = "orders.dlq",
    max_message_bytes = 64,
    retry = 1,
    retry_backoff_ms = 10
)]
#[publisher("orders-ok")]
async fn take_order(order: Order) -> Result<String, String> {
    if order.amount == 13 {
        return Err(format!("payment service rejected order {}", order.id));
    }
    Ok(format!("order {} for {}", order.id, order.amount))
}

#[subscriber("texts", auto_offset_reset = "earliest", dlq = "texts.dlq")]
#[publisher("texts-ok")]
async fn take_text(text: String) -> String {
    text.to_uppercase()
}

fn header(r: &rskafka::record::RecordAndOffset, name: &str) -> String {
    String::from_utf8(r.record.headers.get(name).cloned().unwrap_or_default()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_goes_to_the_dead_letter_topic_and_good_input_goes_on() {
    let prefix = unique_prefix("badinput");
    let client = raw_client().await;
    let orders = format!("{prefix}orders");
    let mut tombstone = record(Some("k-null"), b"", &[]);
    tombstone.value = None;
    let inputs = vec![
        (record(None, br#"{"id": 1, "amount": 10}"#, &[]), None),
        (record(None, b"not json", &[]), Some("not valid JSON")),
        (record(None, br#"{"id": 2, "amount": 20}"#, &[]), None),
        (
            record(None, br#"{"id": 3}"#, &[]),
            Some("missing field `amount`"),
        ),
        (
            record(None, br#"{"id": 4, "amount": "x"}"#, &[]),
            Some("field `amount`: invalid type"),
        ),
        (record(None, b"", &[]), Some("the payload is empty")),
        (tombstone, Some("the payload is null (a tombstone)")),
        (
            record(
                None,
                format!(r#"{{"id": 5, "amount": 1, "pad": "{}"}}"#, "x".repeat(80)).as_bytes(),
                &[],
            ),
            Some("exceeds max_message_bytes (64)"),
        ),
        (
            record(
                None,
                br#"{"id": 6, "amount": 60}"#,
                &[("content-type", "application/avro")],
            ),
            Some("unsupported content type"),
        ),
        (
            record(Some("k13"), br#"{"id": 7, "amount": 13}"#, &[]),
            Some("payment service rejected order 7"),
        ),
        (record(None, br#"{"id": 8, "amount": 80}"#, &[]), None),
    ];
    let expected_bad: Vec<(i64, &str)> = inputs
        .iter()
        .enumerate()
        .filter_map(|(i, (_, why))| why.map(|w| (i as i64, w)))
        .collect();
    produce(
        &client,
        &orders,
        0,
        inputs.into_iter().map(|(r, _)| r).collect(),
    )
    .await;
    produce(
        &client,
        &format!("{prefix}texts"),
        0,
        vec![
            record(None, &[b'o', b'k', 0xff], &[]),
            record(None, b"fine", &[]),
        ],
    )
    .await;

    let running = start(app(routes![take_order, take_text], &prefix)).await;
    let ok = read(&client, &format!("{prefix}orders-ok"), 3).await;
    let ok: Vec<String> = ok.values().flatten().map(text).collect();
    assert_eq!(ok, ["order 1 for 10", "order 2 for 20", "order 8 for 80"]);
    let dlq = read(&client, &format!("{prefix}orders.dlq"), expected_bad.len()).await;
    let dlq: Vec<_> = dlq.values().flatten().collect();
    for (r, (offset, why)) in dlq.iter().zip(&expected_bad) {
        assert_eq!(header(r, dlq_header::ORIGINAL_TOPIC), orders);
        assert_eq!(header(r, dlq_header::ORIGINAL_PARTITION), "0");
        assert_eq!(header(r, dlq_header::ORIGINAL_OFFSET), offset.to_string());
        assert!(
            header(r, dlq_header::ERROR).contains(why),
            "offset {offset}: {:?}",
            header(r, dlq_header::ERROR)
        );
        assert_eq!(header(r, dlq_header::HANDLER), "failure_kafka::take_order");
    }
    // Decode failures are not retried; the handler error was, once.
    let last = dlq.last().unwrap();
    assert_eq!(header(last, dlq_header::ERROR_KIND), "handler");
    assert_eq!(header(last, dlq_header::ATTEMPTS), "2");
    assert_eq!(
        last.record.key.as_deref(),
        Some(&b"k13"[..]),
        "the key is kept"
    );
    assert_eq!(header(dlq[0], dlq_header::ATTEMPTS), "1");
    assert_eq!(dlq[4].record.value, None, "a tombstone stays a tombstone");
    assert_eq!(dlq[4].record.key.as_deref(), Some(&b"k-null"[..]));

    let texts_dlq = read(&client, &format!("{prefix}texts.dlq"), 1).await;
    let t = texts_dlq.values().flatten().next().unwrap();
    assert!(header(t, dlq_header::ERROR).contains("not valid UTF-8 (invalid byte at position 2)"));
    assert_eq!(
        text(
            read(&client, &format!("{prefix}texts-ok"), 1)
                .await
                .values()
                .flatten()
                .next()
                .unwrap()
        ),
        "FINE"
    );
    running.stop().await.unwrap();

    // One error line per bad message, naming topic, partition, offset and what was wrong.
    let logs = logs();
    for (offset, why) in &expected_bad {
        let line = logs
            .lines()
            .find(|l| {
                l.contains("ERROR")
                    && l.contains("message failed")
                    && l.contains(&orders)
                    && l.contains(&format!("offset={offset} "))
            })
            .unwrap_or_else(|| panic!("no error line for offset {offset}"));
        assert!(
            line.contains("ERROR") && line.contains("partition=0") && line.contains(why),
            "{line}"
        );
    }
}

/// Calls per message, across app restarts in this process.
static CALLS: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn calls_of(tag: &str) -> usize {
    CALLS
        .lock()
        .unwrap()
        .iter()
        .filter(|c| c.as_str() == tag)
        .count()
}

#[subscriber(
    "halt",
    group_id = "halt",
    auto_offset_reset = "earliest",
    on_failure = "stop",
    retry = 0,
    session_timeout_ms = 4000,
    heartbeat_interval_ms = 300,
    commit_interval_ms = 100
)]
#[publisher("halt-out")]
async fn halt(body: String) -> Result<String, Failure> {
    CALLS.lock().unwrap().push(format!("halt:{body}"));
    if body == "poison" {
        return Err(Failure::retry("cannot handle poison yet"));
    }
    Ok(body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_failure_stop_halts_the_partition_without_committing_the_message() {
    let prefix = unique_prefix("halt");
    let client = raw_client().await;
    let topic = format!("{prefix}halt");
    create_topic(&client, &topic, 1).await;
    produce(
        &client,
        &topic,
        0,
        vec![
            record(None, b"first", &[]),
            record(None, b"poison", &[]),
            record(None, b"after", &[]),
        ],
    )
    .await;
    let running = start(app(routes![halt], &prefix)).await;
    read(&client, &format!("{prefix}halt-out"), 1).await;
    // The service stops by itself, naming where.
    let err = running.finished().await.unwrap_err().to_string();
    assert!(
        err.contains(&format!("{topic}[0]")) && err.contains("stopped at offset 1"),
        "{err}"
    );
    assert_eq!(calls_of("halt:poison"), 1);
    assert_eq!(
        calls_of("halt:after"),
        0,
        "the partition stopped at the poison message"
    );
    // After a restart the poison message is consumed again: it was never committed.
    let running = start(app(routes![halt], &prefix)).await;
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while calls_of("halt:poison") < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "poison message was not redelivered"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(
        running.finished().await.is_err(),
        "stops again at the poison message"
    );
    assert_eq!(
        calls_of("halt:first"),
        1,
        "the message before it was committed"
    );
}

#[subscriber(
    "atmost",
    group_id = "atmost",
    auto_offset_reset = "earliest",
    ack = "first",
    on_failure = "stop",
    retry = 0,
    session_timeout_ms = 4000,
    heartbeat_interval_ms = 300
)]
async fn at_most_once(body: String) -> Result<(), Failure> {
    CALLS.lock().unwrap().push(format!("atmost:{body}"));
    if body == "crash" {
        // Stands in for a crash in the middle of handling.
        return Err(Failure::stop("crashed"));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_first_commits_before_handling() {
    let prefix = unique_prefix("atmost");
    let client = raw_client().await;
    let topic = format!("{prefix}atmost");
    create_topic(&client, &topic, 1).await;
    produce(
        &client,
        &topic,
        0,
        vec![record(None, b"one", &[]), record(None, b"crash", &[])],
    )
    .await;
    let running = start(app(routes![at_most_once], &prefix)).await;
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while calls_of("atmost:crash") < 1 {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // `on_failure = "stop"` ends the service (after committing what ack = "first" acked).
    assert!(running.finished().await.is_err());
    produce(&client, &topic, 0, vec![record(None, b"two", &[])]).await;
    let running = start(app(routes![at_most_once], &prefix)).await;
    while calls_of("atmost:two") < 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "new message not consumed after restart"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    running.stop().await.unwrap();
    assert_eq!(
        calls_of("atmost:crash"),
        1,
        "at-most-once: not redelivered after the 'crash'"
    );
    assert_eq!(calls_of("atmost:one"), 1);
}

static MANUAL: AtomicU32 = AtomicU32::new(0);

#[subscriber(
    "manual",
    group_id = "manual",
    auto_offset_reset = "earliest",
    ack = "manual",
    session_timeout_ms = 4000,
    heartbeat_interval_ms = 300,
    commit_interval_ms = 100
)]
async fn manual(body: String, acker: Acker) {
    MANUAL.fetch_add(1, Ordering::SeqCst);
    CALLS.lock().unwrap().push(format!("manual:{body}"));
    if body != "forget" {
        acker.ack();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unacked_message_holds_back_the_commit_and_is_redelivered() {
    let prefix = unique_prefix("manual");
    let client = raw_client().await;
    let topic = format!("{prefix}manual");
    create_topic(&client, &topic, 1).await;
    produce(
        &client,
        &topic,
        0,
        vec![
            record(None, b"a", &[]),
            record(None, b"forget", &[]),
            record(None, b"c", &[]),
        ],
    )
    .await;
    let running = start(app(routes![manual], &prefix)).await;
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while calls_of("manual:c") < 1 {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    running.stop().await.unwrap();
    let running = start(app(routes![manual], &prefix)).await;
    while calls_of("manual:c") < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "messages after the unacked one were not redelivered"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    running.stop().await.unwrap();
    assert_eq!(
        calls_of("manual:a"),
        1,
        "acked before the unacked one: committed"
    );
    assert_eq!(calls_of("manual:forget"), 2, "unacked: redelivered");
}

#[subscriber("only", auto_offset_reset = "earliest", on_failure = "stop", retry = 0)]
async fn only_partition(_body: String) -> Result<(), Failure> {
    Err(Failure::stop("cannot go on"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_partition_consumer_stops_the_service_with_an_error() {
    let prefix = unique_prefix("only");
    let client = raw_client().await;
    let topic = format!("{prefix}only");
    create_topic(&client, &topic, 1).await;
    produce(&client, &topic, 0, vec![record(None, b"x", &[])]).await;
    let res = tokio::time::timeout(
        TIMEOUT,
        app(routes![only_partition], &prefix).run_until(std::future::pending()),
    )
    .await
    .expect("the service ends by itself");
    let err = res.unwrap_err().to_string();
    assert!(
        err.contains(&format!("{topic}[0]"))
            && err.contains("failure_kafka::only_partition")
            && err.contains("stopped at offset 0")
            && err.contains("cannot go on"),
        "{err}"
    );
}
