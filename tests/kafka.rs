//! Real-broker tests of the Kafka transport: each on its own topics (unique prefix), each
//! bounded in time. `cargo test` starts a local broker for them (or uses `KAFKA_BOOTSTRAP`).

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use faststream::extract::{Headers, Key, Publisher, State};
use faststream::kafka::{partition_for_key, KafkaBroker};
use faststream::{publisher, routes, subscriber, Failure, FastStream, Response};
use serde::{Deserialize, Serialize};

// The seed, as written in the README (default auto_offset_reset: latest).
#[subscriber("in_topic")]
#[publisher("out-topic")]
async fn handle_msg(user: String, user_id: i64) -> String {
    format!("User: {user_id} - {user} registered")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_flow_end_to_end() {
    let prefix = unique_prefix("seed");
    let running = start(app(routes![handle_msg], &prefix)).await;
    let client = raw_client().await;
    let input: Vec<_> = (1..=20)
        .map(|i| {
            let body = format!(r#"{{"user": "user{i}", "user_id": {i}}}"#);
            record(None, body.as_bytes(), &[])
        })
        .collect();
    produce(&client, &format!("{prefix}in_topic"), 0, input).await;
    let out = read(&client, &format!("{prefix}out-topic"), 20).await;
    let got: Vec<String> = out.values().flatten().map(text).collect();
    let want: Vec<String> = (1..=20)
        .map(|i| format!("User: {i} - user{i} registered"))
        .collect();
    assert_eq!(got, want);
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_100k_messages() {
    const N: usize = 100_000;
    let prefix = unique_prefix("bulk");
    let running = start(app(routes![handle_msg], &prefix)).await;
    let client = raw_client().await;
    let input: Vec<_> = (0..N)
        .map(|i| {
            record(
                None,
                format!(r#"{{"user":"u{i}","user_id":{i}}}"#).as_bytes(),
                &[],
            )
        })
        .collect();
    produce(&client, &format!("{prefix}in_topic"), 0, input).await;
    let out = read(&client, &format!("{prefix}out-topic"), N).await;
    let got: Vec<String> = out.values().flatten().map(text).collect();
    assert_eq!(got.len(), N);
    for (i, line) in got.iter().enumerate() {
        assert_eq!(line, &format!("User: {i} - u{i} registered"));
    }
    running.stop().await.unwrap();
}

#[subscriber("wide", group_id = "wide", auto_offset_reset = "earliest")]
#[publisher("wide-out")]
async fn wide_relay(user: String, user_id: i64) -> String {
    format!("User: {user_id} - {user} registered")
}

/// A consumer group relaying a topic of 256 partitions into another of 256: every message
/// comes out exactly once (the service reads and writes them through one link per broker).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_over_256_partitions_delivers_every_message_once() {
    const P: i32 = 256;
    const PER_PARTITION: usize = 40;
    let prefix = unique_prefix("wide");
    let client = raw_client().await;
    let (input, output) = (format!("{prefix}wide"), format!("{prefix}wide-out"));
    create_topic(&client, &input, P).await;
    create_topic(&client, &output, P).await;
    let mut want = Vec::new();
    let mut writers = tokio::task::JoinSet::new();
    for p in 0..P {
        let records: Vec<_> = (0..PER_PARTITION)
            .map(|i| {
                let id = p as usize * PER_PARTITION + i;
                want.push(format!("User: {id} - u{id} registered"));
                let body = format!(r#"{{"user":"u{id}","user_id":{id}}}"#);
                record(None, body.as_bytes(), &[])
            })
            .collect();
        let (client, input) = (raw_client().await, input.clone());
        writers.spawn(async move { produce(&client, &input, p, records).await });
    }
    while let Some(done) = writers.join_next().await {
        done.unwrap();
    }
    let running = start(app(routes![wide_relay], &prefix)).await;
    let out = read_all_partitions(&client, &output, P, want.len()).await;
    running.stop().await.unwrap();
    let mut got: Vec<String> = out.iter().map(text).collect();
    got.sort();
    want.sort();
    assert_eq!(got.len(), want.len(), "duplicates or losses");
    assert_eq!(got, want);
}

#[derive(Debug, Serialize, Deserialize)]
struct Seq {
    key: String,
    seq: u64,
}

#[subscriber("keyed", auto_offset_reset = "earliest")]
#[publisher("keyed-out")]
async fn keyed_relay(seq: Seq) -> Seq {
    seq
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_keyed_messages_keep_order_per_key() {
    const N: u64 = 10_000;
    const KEYS: u64 = 40;
    let prefix = unique_prefix("keyed");
    let client = raw_client().await;
    let (input, output) = (format!("{prefix}keyed"), format!("{prefix}keyed-out"));
    create_topic(&client, &input, 4).await;
    create_topic(&client, &output, 4).await;
    let mut by_partition: HashMap<i32, Vec<_>> = HashMap::new();
    for i in 0..N {
        let key = format!("k{}", i % KEYS);
        let body = serde_json::to_vec(&Seq {
            key: key.clone(),
            seq: i / KEYS,
        })
        .unwrap();
        let p = partition_for_key(key.as_bytes(), 4);
        by_partition
            .entry(p)
            .or_default()
            .push(record(Some(&key), &body, &[]));
    }
    assert_eq!(by_partition.len(), 4, "keys spread over all partitions");
    for (p, records) in by_partition {
        produce(&client, &input, p, records).await;
    }
    let running = start(app(routes![keyed_relay], &prefix)).await;
    let out = read(&client, &output, N as usize).await;
    let mut last: HashMap<String, (i32, u64)> = HashMap::new();
    let mut count = 0;
    for (p, records) in &out {
        for r in records {
            let s: Seq = serde_json::from_slice(r.record.value.as_ref().unwrap()).unwrap();
            let key = String::from_utf8(r.record.key.clone().unwrap()).unwrap();
            assert_eq!(key, s.key, "the input key is kept on the output");
            assert_eq!(
                *p,
                partition_for_key(key.as_bytes(), 4),
                "keyed output uses murmur2"
            );
            if let Some((lp, ls)) = last.get(&key) {
                assert_eq!(lp, p);
                assert_eq!(*ls + 1, s.seq, "order kept for key {key}");
            } else {
                assert_eq!(s.seq, 0, "first message of {key}");
            }
            last.insert(key, (*p, s.seq));
            count += 1;
        }
    }
    assert_eq!(count, N as usize);
    assert_eq!(last.len() as u64, KEYS);
    assert!(last.values().all(|(_, s)| *s == N / KEYS - 1));
    running.stop().await.unwrap();
}

#[subscriber("meta", auto_offset_reset = "earliest")]
#[publisher("meta-out")]
async fn echo_meta(key: Key, headers: Headers, body: String) -> Response<String> {
    let trace = headers.get_str("x-trace").unwrap_or("-").to_owned();
    Response::new(format!("{}|{trace}|{body}", key.as_str().unwrap_or("-")))
        .header("x-handled", "yes")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_headers_content_type_and_correlation_id_round_trip() {
    let prefix = unique_prefix("meta");
    let client = raw_client().await;
    let running = start(app(routes![echo_meta], &prefix)).await;
    produce(
        &client,
        &format!("{prefix}meta"),
        0,
        vec![
            record(
                Some("user-7"),
                b"hello",
                &[
                    ("x-trace", "abc"),
                    ("correlation_id", "cid-1"),
                    ("content-type", "text/plain"),
                ],
            ),
            record(None, b"no key", &[]),
        ],
    )
    .await;
    let out = read(&client, &format!("{prefix}meta-out"), 2).await;
    let recs: Vec<_> = out.values().flatten().collect();
    let first = &recs[0].record;
    assert_eq!(text(recs[0]), "user-7|abc|hello");
    assert_eq!(first.key.as_deref(), Some(&b"user-7"[..]));
    assert_eq!(
        first.headers.get("correlation_id").map(Vec::as_slice),
        Some(&b"cid-1"[..])
    );
    assert_eq!(
        first.headers.get("content-type").map(Vec::as_slice),
        Some(&b"text/plain"[..])
    );
    assert_eq!(
        first.headers.get("x-handled").map(Vec::as_slice),
        Some(&b"yes"[..])
    );
    let second = &recs[1].record;
    assert_eq!(text(recs[1]), "-|-|no key");
    assert_eq!(second.key, None);
    let cid = std::str::from_utf8(&second.headers["correlation_id"]).unwrap();
    assert_eq!(
        cid.len(),
        36,
        "a correlation id is generated when absent: {cid}"
    );
    running.stop().await.unwrap();
}

#[subscriber("mixed", auto_offset_reset = "earliest")]
#[publisher("mixed-out")]
async fn mixed(user: String, user_id: i64) -> String {
    format!("User: {user_id} - {user} registered")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_messages_are_logged_and_good_ones_still_processed() {
    let prefix = unique_prefix("mixed");
    let client = raw_client().await;
    let topic = format!("{prefix}mixed");
    produce(
        &client,
        &topic,
        0,
        vec![
            record(None, br#"{"user": "a", "user_id": 1}"#, &[]),
            record(None, b"this is not json", &[]),
            record(None, br#"{"user": "b", "user_id": 2}"#, &[]),
            record(None, br#"{"user": "c"}"#, &[]),
            record(None, br#"{"user": "d", "user_id": 4}"#, &[]),
        ],
    )
    .await;
    let running = start(app(routes![mixed], &prefix)).await;
    let out = read(&client, &format!("{prefix}mixed-out"), 3).await;
    let got: Vec<String> = out.values().flatten().map(text).collect();
    assert_eq!(
        got,
        [
            "User: 1 - a registered",
            "User: 2 - b registered",
            "User: 4 - d registered"
        ]
    );
    running.stop().await.unwrap();
    let logs = logs();
    let lines: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains(&topic) && l.contains("message failed"))
        .collect();
    assert_eq!(lines.len(), 2, "{logs}");
    assert!(
        lines[0].contains("partition=0") && lines[0].contains("offset=1"),
        "{}",
        lines[0]
    );
    assert!(
        lines[0].contains("not valid JSON") && lines[0].contains("mixed"),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].contains("offset=3") && lines[1].contains("missing field `user_id`"),
        "{}",
        lines[1]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_down_at_startup_is_a_clear_error_within_the_timeout() {
    init_logs();
    // A port nothing listens on: bind, note it, close.
    let port = free_port();
    let broker = KafkaBroker::builder(&format!("127.0.0.1:{port}"))
        .connect_timeout(Duration::from_secs(2))
        .build();
    let started = Instant::now();
    let res = tokio::time::timeout(
        Duration::from_secs(20),
        FastStream::new(broker)
            .with_routes(routes![handle_msg])
            .run_until(std::future::pending()),
    )
    .await
    .expect("startup fails instead of hanging");
    let err = res.unwrap_err().to_string();
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
    assert!(err.contains("cannot connect to Kafka"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

#[derive(Clone, Default)]
struct Counter(Arc<AtomicUsize>);

#[subscriber("stateful", auto_offset_reset = "earliest")]
#[publisher("stateful-a")]
#[publisher("stateful-b")]
async fn count(n: u64, counter: State<Counter>) -> String {
    let seen = counter.0 .0.fetch_add(1, Ordering::SeqCst) + 1;
    format!("{n}#{seen}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_and_several_publishers() {
    let prefix = unique_prefix("state");
    let client = raw_client().await;
    let counter = Counter::default();
    let running = start(app(routes![count], &prefix).with_state(counter.clone())).await;
    produce(
        &client,
        &format!("{prefix}stateful"),
        0,
        (1..=5)
            .map(|i| record(None, i.to_string().as_bytes(), &[]))
            .collect(),
    )
    .await;
    for topic in ["stateful-a", "stateful-b"] {
        let out = read(&client, &format!("{prefix}{topic}"), 5).await;
        let got: Vec<String> = out.values().flatten().map(text).collect();
        assert_eq!(got, ["1#1", "2#2", "3#3", "4#4", "5#5"], "{topic}");
    }
    assert_eq!(counter.0.load(Ordering::SeqCst), 5);
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_state_fails_startup_naming_handler_and_type() {
    let err = app(routes![count], &unique_prefix("nostate"))
        .run_until(std::future::pending())
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("kafka::count"), "{msg}");
    assert!(msg.contains("State<kafka::Counter>"), "{msg}");
    assert!(msg.contains("tests/kafka.rs:"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_api_sets_key_headers_and_partition() {
    let prefix = unique_prefix("publish");
    let client = raw_client().await;
    let topic = format!("{prefix}direct");
    create_topic(&client, &topic, 3).await;
    let broker = KafkaBroker::new(&bootstrap());
    broker.publish("plain", &topic).await.unwrap();
    broker
        .send_message(
            faststream::OutgoingMessage::encode(
                &topic,
                faststream::Json(serde_json::json!({"a": 1})),
            )
            .unwrap()
            .key("k")
            .header("x-h", "v")
            .partition(2)
            .timestamp(1_700_000_000_123),
        )
        .await
        .unwrap();
    let out = read(&client, &topic, 2).await;
    let p2 = &out[&2];
    let last = &p2.last().unwrap().record;
    assert_eq!(last.value.as_deref(), Some(&br#"{"a":1}"#[..]));
    assert_eq!(last.key.as_deref(), Some(&b"k"[..]));
    assert_eq!(last.headers["x-h"], b"v");
    assert_eq!(last.headers["content-type"], b"application/json");
    assert_eq!(
        last.timestamp.timestamp_millis(),
        1_700_000_000_123,
        "the timestamp round-trips"
    );
    assert_eq!(out.values().map(Vec::len).sum::<usize>(), 2);
}

/// Keyless messages stick to one partition until about 16 KiB went there, then move on (the
/// Java producer's sticky partitioner, KIP-794): one message per call, from many tasks at
/// once, still makes full batches rather than a record per partition per request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyless_messages_share_a_partition_until_it_took_its_share() {
    let prefix = unique_prefix("sticky");
    let client = raw_client().await;
    let topic = format!("{prefix}t");
    create_topic(&client, &topic, 4).await;
    let broker = KafkaBroker::new(&bootstrap());
    let send = |n: usize| {
        let mut sends = tokio::task::JoinSet::new();
        for _ in 0..n {
            let (broker, topic) = (broker.clone(), topic.clone());
            sends.spawn(async move {
                let msg = faststream::OutgoingMessage::new(&topic, vec![b'x'; 100]);
                broker.send_message(msg).await
            });
        }
        sends.join_all()
    };
    // 100 messages of about 124 bytes each (with the record framing): under 16 KiB.
    for sent in send(100).await {
        sent.unwrap();
    }
    let out = read(&client, &topic, 100).await;
    assert_eq!(
        out.keys().collect::<Vec<_>>().len(),
        1,
        "100 small keyless messages in one partition: {:?}",
        out.iter().map(|(p, r)| (*p, r.len())).collect::<Vec<_>>()
    );
    // 400 more (about 50 KiB): the partition moves on as each takes its share.
    for sent in send(400).await {
        sent.unwrap();
    }
    let out = read(&client, &topic, 500).await;
    let counts: Vec<(i32, usize)> = out.iter().map(|(p, r)| (*p, r.len())).collect();
    assert!(out.len() >= 3, "spread over the partitions: {counts:?}");
    assert!(
        counts.iter().all(|(_, n)| *n <= 300),
        "no partition takes much more than its shares: {counts:?}"
    );
}

#[subscriber("picked", partitions = [1, 3], auto_offset_reset = "earliest")]
#[publisher("picked-out")]
async fn picked(body: String, partition: faststream::extract::Partition) -> String {
    format!("{}:{body}", partition.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explicit_partitions_are_the_only_ones_read() {
    let prefix = unique_prefix("picked");
    let client = raw_client().await;
    let topic = format!("{prefix}picked");
    create_topic(&client, &topic, 4).await;
    for p in 0..4 {
        produce(
            &client,
            &topic,
            p,
            vec![record(None, format!("m{p}").as_bytes(), &[])],
        )
        .await;
    }
    let running = start(app(routes![picked], &prefix)).await;
    let out = read(&client, &format!("{prefix}picked-out"), 2).await;
    let mut got: Vec<String> = out.values().flatten().map(text).collect();
    got.sort();
    assert_eq!(got, ["1:m1", "3:m3"]);
    // Nothing from partitions 0 and 2 arrives later either.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        read(&client, &format!("{prefix}picked-out"), 2)
            .await
            .values()
            .flatten()
            .count(),
        2
    );
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_orders_example_bills_an_order() {
    let prefix = unique_prefix("orders");
    let child = spawn_example("orders", &prefix, &[]).await;
    let client = raw_client().await;
    let order = br#"{"id": 7, "customer": "ann", "items": [{"sku": "pen", "cents": 150, "qty": 2}, {"sku": "ink", "cents": 100, "qty": 1}]}"#;
    produce(
        &client,
        &format!("{prefix}orders"),
        0,
        vec![
            record(Some("o-7"), order, &[("x-source", "web")]),
            record(None, b"{}", &[]),
        ],
    )
    .await;
    for topic in ["invoices", "audit-log"] {
        let out = read(&client, &format!("{prefix}{topic}"), 1).await;
        let r = out.values().flatten().next().unwrap();
        let v: serde_json::Value =
            serde_json::from_slice(r.record.value.as_ref().unwrap()).unwrap();
        assert_eq!(v["order_id"], 7);
        assert_eq!(v["total_cents"], 480, "(2 x 150 + 100) + 20% tax");
        assert_eq!(v["lines"], 2);
        assert_eq!(v["invoice_no"], 1000);
        assert_eq!(v["source"], "web");
        assert_eq!(r.record.key.as_deref(), Some(&b"ann"[..]));
    }
    // The malformed order went to the dead-letter topic.
    let dlq = read(&client, &format!("{prefix}orders.dlq"), 1).await;
    let bad = dlq.values().flatten().next().unwrap();
    assert!(
        String::from_utf8_lossy(&bad.record.headers["x-faststream-error"])
            .contains("missing field `id`")
    );
    terminate(child).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compat_headers_can_be_turned_off() {
    let prefix = unique_prefix("bare");
    let client = raw_client().await;
    let running = start(app(routes![echo_meta], &prefix).compat_headers(false)).await;
    produce(
        &client,
        &format!("{prefix}meta"),
        0,
        vec![
            record(None, b"plain", &[]),
            record(None, b"traced", &[("correlation_id", "cid-2")]),
        ],
    )
    .await;
    let out = read(&client, &format!("{prefix}meta-out"), 2).await;
    let recs: Vec<_> = out.values().flatten().collect();
    let names = |i: usize| recs[i].record.headers.keys().cloned().collect::<Vec<_>>();
    assert_eq!(
        names(0),
        ["x-handled"],
        "no content-type, no generated correlation id"
    );
    assert_eq!(
        names(1),
        ["correlation_id", "x-handled"],
        "an incoming correlation id is passed on"
    );
    assert_eq!(recs[1].record.headers["correlation_id"], b"cid-2");
    running.stop().await.unwrap();
}

#[subscriber("stamped", auto_offset_reset = "earliest")]
#[publisher("stamped-out")]
async fn stamped(
    _body: String,
    ts: faststream::extract::Timestamp,
    offset: faststream::extract::Offset,
) -> String {
    format!("{}@{}", ts.0.unwrap_or(-1), offset.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handlers_see_record_timestamps_and_offsets() {
    let prefix = unique_prefix("stamped");
    let client = raw_client().await;
    let mut r = record(None, b"x", &[]);
    r.timestamp = chrono::DateTime::from_timestamp_millis(1_650_000_000_456).unwrap();
    produce(
        &client,
        &format!("{prefix}stamped"),
        0,
        vec![record(None, b"first", &[]), r],
    )
    .await;
    let running = start(app(routes![stamped], &prefix)).await;
    let out = read(&client, &format!("{prefix}stamped-out"), 2).await;
    let got: Vec<String> = out.values().flatten().map(text).collect();
    assert_eq!(got[1], "1650000000456@1");
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hello_example_relays_100k_messages() {
    const N: usize = 100_000;
    // Its own broker: the example's topic names and group are fixed.
    let (_broker, addr) = OwnBroker::start(None).await;
    let client = rskafka::client::ClientBuilder::new(vec![addr.clone()])
        .build()
        .await
        .unwrap();
    create_topic(&client, "in_topic", 1).await;
    let hello = spawn_example("hello", "", &[("KAFKA_BOOTSTRAP", addr.as_str())]).await;
    let input: Vec<_> = (0..N)
        .map(|i| {
            record(
                None,
                format!(r#"{{"user": "u{i}", "user_id": {i}}}"#).as_bytes(),
                &[],
            )
        })
        .collect();
    produce(&client, "in_topic", 0, input).await;
    let out = read(&client, "out-topic", N).await;
    let got: Vec<String> = out.values().flatten().map(text).collect();
    assert_eq!(got.len(), N);
    for (i, line) in got.iter().enumerate() {
        assert_eq!(line, &format!("User: {i} - u{i} registered"));
    }
    terminate(hello).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_to_a_partition_that_does_not_exist_is_an_error() {
    let prefix = unique_prefix("nopart");
    let client = raw_client().await;
    let topic = format!("{prefix}t");
    create_topic(&client, &topic, 2).await;
    let broker = KafkaBroker::new(&bootstrap());
    let err = tokio::time::timeout(
        TIMEOUT,
        broker.send_message(faststream::OutgoingMessage::new(&topic, "x").partition(5)),
    )
    .await
    .expect("fails instead of hanging")
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("partition 5") && err.contains("2 partition(s)"),
        "{err}"
    );
}

#[subscriber("traced", auto_offset_reset = "earliest")]
async fn traced(body: String) {
    tracing::warn!(body = body.as_str(), "inside the handler");
}

/// Log lines written in a handler carry the message's context (the `message` span).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_logs_carry_the_message_context() {
    let prefix = unique_prefix("traced");
    let client = raw_client().await;
    let topic = format!("{prefix}traced");
    create_topic(&client, &topic, 1).await;
    produce(&client, &topic, 0, vec![record(Some("k-7"), b"hi", &[])]).await;
    let running = start(app(routes![traced], &prefix)).await;
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    let line = loop {
        let logs = logs();
        if let Some(line) = logs
            .lines()
            .find(|l| l.contains("inside the handler") && l.contains(&topic))
        {
            break line.to_owned();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no handler log line"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    running.stop().await.unwrap();
    for field in [
        "message{",
        "handler=\"kafka::traced\"",
        "partition=0",
        "offset=0",
        "key=k-7",
        "correlation_id=",
    ] {
        assert!(line.contains(field), "{field} missing in: {line}");
    }
}

#[subscriber("rpc", auto_offset_reset = "earliest")]
async fn rpc(body: String) -> String {
    format!("pong {body}")
}

#[subscriber("quiet-rpc", auto_offset_reset = "earliest", no_reply = true)]
#[publisher("quiet-rpc-out")]
async fn quiet_rpc(body: String) -> String {
    format!("pong {body}")
}

/// FastStream's request/reply: a message with `reply_to` gets the return value there, with its
/// `correlation_id`; `no_reply = true` ignores `reply_to`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_with_reply_to_gets_the_answer_there() {
    let prefix = unique_prefix("rpc");
    let client = raw_client().await;
    let replies = format!("{prefix}replies");
    for t in ["rpc", "quiet-rpc", "quiet-rpc-out", "replies"] {
        create_topic(&client, &format!("{prefix}{t}"), 1).await;
    }
    let ask = |body: &str, id: &str| {
        record(
            None,
            body.as_bytes(),
            &[("reply_to", replies.as_str()), ("correlation_id", id)],
        )
    };
    produce(
        &client,
        &format!("{prefix}rpc"),
        0,
        vec![ask("ping", "c-1")],
    )
    .await;
    let running = start(app(routes![rpc, quiet_rpc], &prefix)).await;
    let got = read(&client, &replies, 1).await;
    let answer = &got[&0][0];
    assert_eq!(text(answer), "pong ping");
    assert_eq!(
        answer
            .record
            .headers
            .get("correlation_id")
            .map(Vec::as_slice),
        Some(&b"c-1"[..])
    );
    // The opted-out route answers only on its publisher topic.
    produce(
        &client,
        &format!("{prefix}quiet-rpc"),
        0,
        vec![ask("hush", "c-2")],
    )
    .await;
    read(&client, &format!("{prefix}quiet-rpc-out"), 1).await;
    produce(
        &client,
        &format!("{prefix}rpc"),
        0,
        vec![ask("again", "c-3")],
    )
    .await;
    let got = read(&client, &replies, 2).await;
    let bodies: Vec<String> = got.values().flatten().map(text).collect();
    assert_eq!(
        bodies,
        vec!["pong ping", "pong again"],
        "no reply from no_reply"
    );
    running.stop().await.unwrap();
}

static LIFE: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

fn life_event(e: impl Into<String>) {
    LIFE.lock().unwrap().push(e.into());
}

#[derive(Clone)]
struct Greeting(String);

#[subscriber("life", auto_offset_reset = "earliest")]
async fn life(body: String, greeting: State<Greeting>) {
    life_event(format!("handled {} {body}", greeting.0 .0));
}

/// Lifespan hooks run in FastStream's order; a startup hook provides state handlers use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifespan_hooks_run_in_order_and_provide_state() {
    let prefix = unique_prefix("life");
    let client = raw_client().await;
    let topic = format!("{prefix}life");
    create_topic(&client, &topic, 1).await;
    let announce = topic.clone();
    let service = app(routes![life], &prefix)
        .on_startup(|ctx| async move {
            life_event("on_startup");
            ctx.provide(Greeting("hi".into()));
            Ok::<_, String>(())
        })
        .after_startup(|ctx| async move {
            life_event("after_startup");
            ctx.publisher().publish("from-hook", &announce).await
        })
        .on_shutdown(|_| async {
            life_event("on_shutdown");
            Ok::<_, String>(())
        })
        .after_shutdown(|_| async {
            life_event("after_shutdown");
            Ok::<_, String>(())
        });
    let running = start(service).await;
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while !LIFE
        .lock()
        .unwrap()
        .iter()
        .any(|e| e.starts_with("handled"))
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the hook's message was handled"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    running.stop().await.unwrap();
    assert_eq!(
        *LIFE.lock().unwrap(),
        vec![
            "on_startup",
            "after_startup",
            "handled hi from-hook",
            "on_shutdown",
            "after_shutdown"
        ]
    );

    // A failing startup hook stops the startup with its error.
    let err = app(routes![life], &prefix)
        .on_startup(|_| async { Err::<(), _>("database unreachable") })
        .run_until(std::future::pending())
        .await
        .expect_err("startup fails");
    let text = err.to_string();
    assert!(
        text.contains("on_startup") && text.contains("database unreachable"),
        "{text}"
    );
}

/// Request/reply from Rust: `KafkaBroker::request` gets the answer of a service's handler (the
/// `rpc` route above), and a clear error when nobody answers in time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_gets_the_reply_of_a_service() {
    let prefix = unique_prefix("request");
    let client = raw_client().await;
    create_topic(&client, &format!("{prefix}rpc"), 1).await;
    create_topic(&client, &format!("{prefix}nobody"), 1).await;
    let running = start(app(routes![rpc], &prefix)).await;
    let requester = KafkaBroker::builder(&bootstrap())
        .reply_topic(format!("{prefix}my-replies"))
        .build();
    let reply = requester
        .request("ping", &format!("{prefix}rpc"), Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(reply.text(), Some("pong ping"));
    let second = requester
        .request("again", &format!("{prefix}rpc"), Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(second.text(), Some("pong again"));
    let err = requester
        .request(
            "hello?",
            &format!("{prefix}nobody"),
            Duration::from_millis(500),
        )
        .await
        .expect_err("nobody answers")
        .to_string();
    assert!(err.contains("no reply") && err.contains("nobody"), "{err}");
    running.stop().await.unwrap();
}

static GATEWAY_RPC: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Calls the `rpc` service from inside a handler and relays its answer.
#[subscriber("gateway", auto_offset_reset = "earliest")]
#[publisher("gateway-out")]
async fn gateway(body: String, publisher: Publisher) -> Result<String, Failure> {
    let rpc = GATEWAY_RPC.get().expect("set by the test");
    let reply = publisher
        .request(body, rpc, Duration::from_secs(20))
        .await
        .map_err(Failure::retry)?;
    Ok(format!("via gateway: {}", reply.text().unwrap_or_default()))
}

/// A handler asks another service through its `Publisher` and waits for the answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_requests_another_service_through_its_publisher() {
    let prefix = unique_prefix("gateway");
    let client = raw_client().await;
    for t in ["rpc", "gateway", "gateway-out"] {
        create_topic(&client, &format!("{prefix}{t}"), 1).await;
    }
    GATEWAY_RPC.set(format!("{prefix}rpc")).unwrap();
    let rpc_service = start(app(routes![rpc], &prefix)).await;
    let gateway_service = start(
        FastStream::new(
            KafkaBroker::builder(&bootstrap())
                .reply_topic(format!("{prefix}gateway-replies"))
                .build(),
        )
        .with_routes(routes![gateway])
        .topic_prefix(&prefix),
    )
    .await;
    produce(
        &client,
        &format!("{prefix}gateway"),
        0,
        vec![record(None, b"knock", &[])],
    )
    .await;
    let out = read(&client, &format!("{prefix}gateway-out"), 1).await;
    assert_eq!(text(&out[&0][0]), "via gateway: pong knock");
    gateway_service.stop().await.unwrap();
    rpc_service.stop().await.unwrap();
}

/// Request/reply across languages: Python FastStream asks our service (publishing with
/// `reply_to`), and our `request` asks a Python FastStream service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_reply_works_with_python_faststream() {
    use tokio::io::AsyncBufReadExt;
    let prefix = unique_prefix("pyrpc");
    let client = raw_client().await;
    for t in ["rpc", "py-replies", "py-rpc"] {
        create_topic(&client, &format!("{prefix}{t}"), 1).await;
    }
    let running = start(app(routes![rpc], &prefix)).await;
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/faststream_rpc.py");
    let asked = tokio::process::Command::new(python())
        .arg(&script)
        .args([bootstrap(), "ask".into()])
        .args([format!("{prefix}rpc"), format!("{prefix}py-replies")])
        .output();
    let asked = tokio::time::timeout(TIMEOUT, asked)
        .await
        .expect("the Python requester finishes")
        .unwrap();
    assert!(
        asked.status.success(),
        "{}",
        String::from_utf8_lossy(&asked.stderr)
    );
    let stdout = String::from_utf8_lossy(&asked.stdout);
    assert!(
        stdout.lines().any(|l| l.trim() == "py-1 pong ping"),
        "the Python requester got our reply with its correlation id: {stdout}"
    );

    let mut server = tokio::process::Command::new(python())
        .arg(&script)
        .args([bootstrap(), "serve".into(), format!("{prefix}py-rpc")])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(server.stdout.take().unwrap()).lines();
    tokio::time::timeout(TIMEOUT, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains("ready") {
                return;
            }
        }
        panic!("the Python service exited before it was ready");
    })
    .await
    .expect("the Python service gets ready");
    let requester = KafkaBroker::builder(&bootstrap())
        .reply_topic(format!("{prefix}rs-replies"))
        .build();
    let reply = requester
        .request("hi", &format!("{prefix}py-rpc"), Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(reply.text(), Some("py hi"));
    let _ = server.kill().await;
    running.stop().await.unwrap();
}

/// Refuses messages carrying `x-blocked`; stamps every published message.
struct Audit;

impl faststream::Middleware for Audit {
    fn before<'a>(
        &'a self,
        msg: &'a faststream::Message,
    ) -> faststream::BoxFuture<'a, Result<(), faststream::Failure>> {
        let blocked = msg.headers.get("x-blocked").is_some();
        Box::pin(async move {
            match blocked {
                true => Err(faststream::Failure::dead_letter("blocked by policy")),
                false => Ok(()),
            }
        })
    }

    fn publish(&self, out: &mut faststream::OutgoingMessage) {
        out.headers.insert("x-audited", "yes");
    }
}

#[subscriber("mw", auto_offset_reset = "earliest", dlq = "mw.dlq")]
#[publisher("mw-out")]
async fn audited(body: String) -> String {
    body.to_uppercase()
}

/// A middleware sees every message before its handler (and may refuse it: the failure policy
/// applies) and every message published (here: a header the next service sees).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn middleware_refuses_messages_and_stamps_outputs() {
    let prefix = unique_prefix("mw");
    let client = raw_client().await;
    for t in ["mw", "mw-out", "mw.dlq"] {
        create_topic(&client, &format!("{prefix}{t}"), 1).await;
    }
    produce(
        &client,
        &format!("{prefix}mw"),
        0,
        vec![
            record(None, b"a", &[]),
            record(None, b"b", &[("x-blocked", "1")]),
            record(None, b"c", &[]),
        ],
    )
    .await;
    let running = start(app(routes![audited], &prefix).middleware(Audit)).await;
    let out = read(&client, &format!("{prefix}mw-out"), 2).await;
    let got: Vec<String> = out.values().flatten().map(text).collect();
    assert_eq!(got, vec!["A", "C"]);
    for r in out.values().flatten() {
        assert_eq!(
            r.record.headers.get("x-audited").map(Vec::as_slice),
            Some(&b"yes"[..])
        );
    }
    let dlq = read(&client, &format!("{prefix}mw.dlq"), 1).await;
    let dead = &dlq[&0][0];
    assert_eq!(text(dead), "b");
    let error = String::from_utf8(dead.record.headers["x-faststream-error"].clone()).unwrap();
    assert!(error.contains("blocked by policy"), "{error}");
    assert_eq!(
        dead.record.headers.get("x-audited").map(Vec::as_slice),
        Some(&b"yes"[..])
    );
    running.stop().await.unwrap();
}

#[subscriber("probed", group_id = "probed", auto_offset_reset = "earliest")]
async fn probed(_body: String) {}

/// HTTP status of `GET url`, asked with Python's standard HTTP client; `None` if nothing answers.
async fn http_status(url: String) -> Option<u16> {
    let script = "import sys, urllib.request, urllib.error\n\
        try:\n    print(urllib.request.urlopen(sys.argv[1], timeout=5).status)\n\
        except urllib.error.HTTPError as e:\n    print(e.code)\n\
        except Exception:\n    print(0)";
    let out = tokio::process::Command::new("python3")
        .args(["-c", script, &url])
        .output()
        .await
        .ok()?;
    let code: u16 = String::from_utf8_lossy(&out.stdout).trim().parse().ok()?;
    (code != 0).then_some(code)
}

static STOPPING_READY: std::sync::Mutex<Option<u16>> = std::sync::Mutex::new(None);

/// The probes: not ready until the group assigned the partitions, ready then, not ready as soon
/// as shutdown begins; live throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_probes_follow_the_app() {
    let prefix = unique_prefix("probed");
    let client = raw_client().await;
    create_topic(&client, &format!("{prefix}probed"), 1).await;
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let ready_url = format!("{base}/health/ready");
    let during = ready_url.clone();
    // Startup waits until the first probe was answered: the probes answer from the start,
    // and a group can be assigned sooner than a probe client starts.
    let (probed_once, first_probe) = tokio::sync::oneshot::channel::<()>();
    let service = app(routes![probed], &prefix)
        .health(([127, 0, 0, 1], port).into())
        .on_startup(move |_| async move {
            let _ = first_probe.await;
            Ok::<_, String>(())
        })
        .on_shutdown(move |_| async move {
            *STOPPING_READY.lock().unwrap() = http_status(during).await;
            Ok::<_, String>(())
        });
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(service.run_until(async {
        let _ = stopped.await;
    }));
    // The first answer comes before the group assigned anything.
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    let first = loop {
        if let Some(code) = http_status(ready_url.clone()).await {
            break code;
        }
        assert!(tokio::time::Instant::now() < deadline, "the probes answer");
    };
    let _ = probed_once.send(());
    assert_eq!(first, 503, "not ready before the partitions are assigned");
    assert_eq!(http_status(format!("{base}/health/live")).await, Some(200));
    assert_eq!(http_status(format!("{base}/nothing")).await, Some(404));
    while http_status(ready_url.clone()).await != Some(200) {
        assert!(tokio::time::Instant::now() < deadline, "ready in time");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = stop.send(());
    task.await.unwrap().unwrap();
    assert_eq!(
        *STOPPING_READY.lock().unwrap(),
        Some(503),
        "not ready once shutdown began"
    );
    assert_eq!(
        http_status(ready_url).await,
        None,
        "the probes stop with the app"
    );
}
