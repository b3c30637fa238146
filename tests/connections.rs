//! The connections a service holds to the brokers (the `faststream_connections` gauge, feature
//! `prometheus`) while a consumer group relays a topic of 64 partitions into another of 64:
//! they follow the brokers, not the partitions. A binary of its own, so that no other test's
//! connections are counted. Run with `cargo test --features prometheus --test connections`.

mod common;

use std::time::Duration;

use common::*;
use faststream::{publisher, routes, subscriber};

#[subscriber("many", group_id = "many", auto_offset_reset = "earliest")]
#[publisher("many-out")]
async fn many(user: String, user_id: i64) -> String {
    format!("User: {user_id} - {user} registered")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relaying_64_partitions_holds_connections_per_broker_not_per_partition() {
    const P: i32 = 64;
    const PER_PARTITION: usize = 100;
    let prefix = unique_prefix("conns");
    let client = raw_client().await;
    let (input, output) = (format!("{prefix}many"), format!("{prefix}many-out"));
    create_topic(&client, &input, P).await;
    create_topic(&client, &output, P).await;
    for p in 0..P {
        let records: Vec<_> = (0..PER_PARTITION)
            .map(|i| {
                let id = p as usize * PER_PARTITION + i;
                let body = format!(r#"{{"user":"u{id}","user_id":{id}}}"#);
                record(None, body.as_bytes(), &[])
            })
            .collect();
        produce(&client, &input, p, records).await;
    }
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/metrics");
    let running =
        start(app(routes![many], &prefix).prometheus(([127, 0, 0, 1], port).into())).await;
    let want = P as usize * PER_PARTITION;
    let reader = {
        let output = output.clone();
        tokio::spawn(async move {
            let client = raw_client().await;
            read_all_partitions(&client, &output, P, want).await.len()
        })
    };
    // The most connections open at once while the relay runs (and the brokers they go to).
    let (mut most, mut brokers, mut pages) = (0.0f64, 0, 0);
    while !reader.is_finished() {
        let page = http_get(&url).await;
        let open = per_broker(&page, "faststream_connections");
        most = most.max(open.iter().sum());
        brokers = brokers.max(open.iter().filter(|n| **n > 0.0).count());
        pages += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let relayed = reader.await.unwrap();
    running.stop().await.unwrap();
    assert_eq!(relayed, want, "every message relayed once");
    assert!(pages >= 2, "the page was read while the relay ran");
    // The test broker is a single node: a fetch and a request connection to it, plus the
    // metadata lookup, the group coordinator and the heartbeat make 5 (2 x brokers + 3). One
    // connection per partition would be well over 64.
    println!("at most {most} connections open at once to {brokers} address(es) while relaying {P} partitions");
    assert!(
        (3.0..=5.0).contains(&most),
        "at most {most} connections open at once (to {brokers} addresses) while relaying {P} partitions"
    );
}
