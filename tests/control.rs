//! Control of a running service against the broker: pausing and resuming a consumer group's
//! handler from code and over the control endpoint.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use faststream::kafka::KafkaBroker;
use faststream::{publisher, routes, subscriber, FastStream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[subscriber(
    "ctl-in",
    group_id = "ctl",
    auto_offset_reset = "earliest",
    session_timeout_ms = 6000,
    heartbeat_interval_ms = 500,
    commit_interval_ms = 200
)]
#[publisher("ctl-out")]
async fn relay_ctl(body: String) -> String {
    body
}

/// Sends one HTTP request to `addr` and returns the status code and body.
async fn http(addr: std::net::SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("{method} {path} HTTP/1.1\r\nhost: test\r\ncontent-length: 0\r\n\r\n");
    conn.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).await.unwrap();
    let status = answer[9..12].parse().unwrap();
    let body = answer
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    (status, body)
}

/// Produces `range` as `m{i}` bodies to partitions `i % 3` of `topic`.
async fn feed(client: &rskafka::client::Client, topic: &str, range: std::ops::Range<usize>) {
    for p in 0..3 {
        let records = range
            .clone()
            .filter(|i| i % 3 == p)
            .map(|i| record(None, format!("m{i}").as_bytes(), &[]))
            .collect();
        produce(client, topic, p as i32, records).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_handler_takes_nothing_keeps_its_partitions_and_resumes_where_it_stopped() {
    let prefix = unique_prefix("ctl");
    let client = raw_client().await;
    let (input, out) = (format!("{prefix}ctl-in"), format!("{prefix}ctl-out"));
    create_topic(&client, &input, 3).await;
    create_topic(&client, &out, 1).await;
    let revoked = Arc::new(AtomicUsize::new(0));
    let counted = revoked.clone();
    let port = free_port();
    let endpoint: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let app = FastStream::new(
        KafkaBroker::builder(&bootstrap())
            .on_partitions_revoked(move |_, _| {
                counted.fetch_add(1, Ordering::SeqCst);
            })
            .build(),
    )
    .with_routes(routes![relay_ctl])
    .topic_prefix(&prefix)
    .control_endpoint(endpoint);
    let control = app.control();
    init_logs();
    let running = start(app).await;

    feed(&client, &input, 0..150).await;
    read(&client, &out, 150).await;
    control.pause("relay_ctl").unwrap();
    assert!(control.paused("relay_ctl").unwrap().is_all());
    feed(&client, &input, 150..300).await;
    // Longer than the session timeout: a member that stopped heartbeating would be expelled
    // and its partitions revoked.
    let until = tokio::time::Instant::now() + Duration::from_secs(8);
    while tokio::time::Instant::now() < until {
        let more = fetch_from(&client, &out, 0, 150, 200).await;
        assert!(
            more.is_empty(),
            "an output while paused: {:?}",
            more.iter().map(text).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        revoked.load(Ordering::SeqCst),
        0,
        "the paused member kept its partitions"
    );

    // The control endpoint: state changes take POST only.
    let (status, _) = http(endpoint, "GET", "/subscribers/relay_ctl/resume").await;
    assert_eq!(status, 405);
    assert!(control.paused("relay_ctl").unwrap().is_all());
    let (status, body) = http(endpoint, "GET", "/subscribers").await;
    assert_eq!(status, 200);
    assert!(
        body.contains("relay_ctl") && body.contains("\"paused\":true"),
        "{body}"
    );
    let (status, body) = http(endpoint, "POST", "/subscribers/relay_ctl/resume").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"paused\":false"), "{body}");

    let relayed = read(&client, &out, 300).await;
    assert_eq!(revoked.load(Ordering::SeqCst), 0, "no rebalance");
    running.stop().await.expect("a clean shutdown");
    let mut outputs: Vec<String> = relayed.values().flatten().map(text).collect();
    outputs.sort();
    outputs.dedup();
    assert_eq!(outputs.len(), 300, "every input relayed");
    // Nothing more behind them: no input was handled twice.
    let more = fetch_from(&client, &out, 0, 300, 500).await;
    assert!(
        relayed[&0].len() == 300 && more.is_empty(),
        "duplicates after resume"
    );
    for p in 0..3 {
        assert_eq!(
            wire_committed(&input, &prefix, p).await,
            100,
            "partition {p} committed to its end"
        );
    }
}

/// The group's committed offset of `partition` of `topic`.
async fn wire_committed(topic: &str, prefix: &str, partition: i32) -> i64 {
    common::wire::committed_partition(&bootstrap(), &format!("{prefix}ctl"), topic, partition).await
}
