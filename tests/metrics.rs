//! Prometheus metrics (feature `prometheus`) against the real broker: after a relay with decode
//! failures, a retried failure and dead letters, the `/metrics` page scraped with a real HTTP
//! client (Python's) shows the exact counts, and the lag, duration, committed-offset and
//! assignment series. Run with `cargo test --features prometheus --test metrics`.

mod common;

use std::time::Duration;

use common::*;
use faststream::{publisher, routes, subscriber, Failure};

#[derive(serde::Deserialize)]
struct Order {
    id: i64,
}

#[subscriber(
    "orders",
    group_id = "metered",
    auto_offset_reset = "earliest",
    retry = 1,
    retry_backoff_ms = 10,
    dlq = "orders-dlq"
)]
#[publisher("orders-out")]
async fn metered(order: Order) -> Result<String, Failure> {
    if order.id == 13 {
        return Err(Failure::retry("order 13 is cursed"));
    }
    Ok(format!("order {}", order.id))
}

/// The value of the series `name{labels}` (labels in any order), if the page has it.
fn value(page: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    page.lines().find_map(|line| {
        let (series, v) = line.rsplit_once(' ')?;
        let (n, rest) = series.split_once('{').unwrap_or((series, "}"));
        if n != name {
            return None;
        }
        let inner = rest.strip_suffix('}')?;
        let have: Vec<(&str, &str)> = inner
            .split(',')
            .filter(|kv| !kv.is_empty())
            .filter_map(|kv| {
                let (k, v) = kv.split_once('=')?;
                Some((k, v.trim_matches('"')))
            })
            .collect();
        let matches = have.len() == labels.len() && labels.iter().all(|l| have.contains(l));
        matches.then(|| v.parse().ok())?
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_page_counts_what_happened() {
    let prefix = unique_prefix("metered");
    let client = raw_client().await;
    let input = format!("{prefix}orders");
    create_topic(&client, &input, 1).await;
    // 20 orders: two undecodable, one that fails until dead-lettered, 17 relayed.
    let mut records: Vec<_> = (0..20)
        .map(|i| record(None, format!(r#"{{"id": {i}}}"#).as_bytes(), &[]))
        .collect();
    records[4] = record(None, b"{not json", &[]);
    records[9] = record(None, br#"{"id": "nine"}"#, &[]);
    produce(&client, &input, 0, records).await;

    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let running =
        start(app(routes![metered], &prefix).prometheus(([127, 0, 0, 1], port).into())).await;
    let out = read(&client, &format!("{prefix}orders-out"), 17).await;
    assert_eq!(out[&0].len(), 17);
    read(&client, &format!("{prefix}orders-dlq"), 3).await;

    let handler = "metrics::metered";
    let group = format!("{prefix}metered");
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    // Counters move as acks arrive and the group commits: wait for the final picture.
    let page = loop {
        let page = http_get(&format!("{base}/metrics")).await;
        let committed = value(
            &page,
            "faststream_committed_offset",
            &[("group", &group), ("topic", &input), ("partition", "0")],
        );
        if committed == Some(20.0) {
            break page;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the committed offset reaches 20:\n{page}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    running.stop().await.unwrap();

    // The connections held to the broker while the service ran (the other test of this binary
    // may hold some too, so only a lower bound): at least the fetch, the produce and the group's.
    let open: f64 = per_broker(&page, "faststream_connections").iter().sum();
    assert!(
        open >= 3.0,
        "faststream_connections counts {open} in\n{page}"
    );
    // Requests waiting for their answer: a series per broker, never negative.
    let waiting = per_broker(&page, "faststream_requests_in_flight");
    assert!(
        !waiting.is_empty() && waiting.iter().all(|v| *v >= 0.0),
        "{page}"
    );
    let t = input.as_str();
    let get = |name: &str, labels: &[(&str, &str)]| {
        value(&page, name, labels).unwrap_or_else(|| panic!("no {name}{labels:?} in\n{page}"))
    };
    assert_eq!(
        get(
            "faststream_received_messages_total",
            &[("topic", t), ("partition", "0"), ("handler", handler)]
        ),
        20.0
    );
    let processed = |outcome| {
        get(
            "faststream_processed_messages_total",
            &[("topic", t), ("handler", handler), ("outcome", outcome)],
        )
    };
    assert_eq!(processed("ok"), 17.0);
    assert_eq!(processed("dead_lettered"), 3.0);
    let errors = |kind| {
        get(
            "faststream_processed_messages_errors_total",
            &[("topic", t), ("handler", handler), ("kind", kind)],
        )
    };
    assert_eq!(errors("decode"), 2.0);
    assert_eq!(errors("rejected"), 1.0);
    assert_eq!(
        get(
            "faststream_retries_total",
            &[("topic", t), ("handler", handler)]
        ),
        1.0
    );
    let out_topic = format!("{prefix}orders-out");
    let dlq_topic = format!("{prefix}orders-dlq");
    assert_eq!(
        get(
            "faststream_published_messages_total",
            &[("topic", &out_topic)]
        ),
        17.0
    );
    assert_eq!(
        get(
            "faststream_published_messages_total",
            &[("topic", &dlq_topic)]
        ),
        3.0
    );
    assert_eq!(
        get("faststream_assigned_partitions", &[("group", &group)]),
        1.0
    );
    // Every message handled: the consumer caught up.
    assert_eq!(
        get(
            "faststream_consumer_lag_messages",
            &[("topic", t), ("partition", "0"), ("handler", handler)]
        ),
        0.0
    );
    assert_eq!(
        get(
            "faststream_processed_messages_duration_seconds_count",
            &[("topic", t), ("handler", handler)]
        ),
        20.0
    );
    assert!(
        page.contains("faststream_processed_messages_duration_seconds_bucket{"),
        "duration histogram buckets:\n{page}"
    );
    assert_eq!(
        get(
            "faststream_received_messages_size_bytes_count",
            &[("topic", t), ("handler", handler)]
        ),
        20.0
    );
}

/// Each batch the handler saw: its size, and whether it held the negative id.
static BATCHES: std::sync::Mutex<Vec<(usize, bool)>> = std::sync::Mutex::new(Vec::new());

#[subscriber(
    "bulk",
    auto_offset_reset = "earliest",
    batch = true,
    max_records = 10,
    dlq = "bulk-dlq"
)]
async fn bulk(orders: Vec<Order>) -> Result<(), Failure> {
    BATCHES
        .lock()
        .unwrap()
        .push((orders.len(), orders.iter().any(|o| o.id < 0)));
    if orders.iter().any(|o| o.id < 0) {
        return Err(Failure::dead_letter("negative id in the batch"));
    }
    Ok(())
}

/// A batch handler counts each message it received and each outcome, and one duration per
/// batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_handlers_count_messages_and_batches() {
    let prefix = unique_prefix("bulkmet");
    let client = raw_client().await;
    let input = format!("{prefix}bulk");
    create_topic(&client, &input, 1).await;
    // 25 orders in batches of at most 10: the batch holding the negative id is dead-lettered
    // message by message; one message cannot be decoded (dead-lettered alone).
    let mut records: Vec<_> = (0..25)
        .map(|i| record(None, format!(r#"{{"id": {i}}}"#).as_bytes(), &[]))
        .collect();
    records[3] = record(None, b"not json", &[]);
    records[22] = record(None, br#"{"id": -1}"#, &[]);
    produce(&client, &input, 0, records).await;
    let port = free_port();
    let running =
        start(app(routes![bulk], &prefix).prometheus(([127, 0, 0, 1], port).into())).await;
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    // Every decodable message was in a batch the handler saw.
    while BATCHES.lock().unwrap().iter().map(|b| b.0).sum::<usize>() < 24 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "all batches handled"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let batches = BATCHES.lock().unwrap().clone();
    let failed: usize = batches.iter().filter(|b| b.1).map(|b| b.0).sum();
    let ok = 24 - failed;
    read(&client, &format!("{prefix}bulk-dlq"), failed + 1).await;
    let (t, handler) = (input.as_str(), "metrics::bulk");
    let page = loop {
        let page = http_get(&format!("http://127.0.0.1:{port}/metrics")).await;
        let seen = value(
            &page,
            "faststream_processed_messages_total",
            &[("topic", t), ("handler", handler), ("outcome", "ok")],
        );
        if seen == Some(ok as f64) {
            break page;
        }
        assert!(tokio::time::Instant::now() < deadline, "{ok} ok:\n{page}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    running.stop().await.unwrap();
    let get = |name: &str, labels: &[(&str, &str)]| {
        value(&page, name, labels).unwrap_or_else(|| panic!("no {name}{labels:?} in\n{page}"))
    };
    assert_eq!(
        get(
            "faststream_received_messages_total",
            &[("topic", t), ("partition", "0"), ("handler", handler)]
        ),
        25.0
    );
    assert_eq!(
        get(
            "faststream_processed_messages_total",
            &[
                ("topic", t),
                ("handler", handler),
                ("outcome", "dead_lettered")
            ]
        ),
        (failed + 1) as f64
    );
    assert_eq!(
        get(
            "faststream_processed_messages_errors_total",
            &[("topic", t), ("handler", handler), ("kind", "decode")]
        ),
        1.0
    );
    assert_eq!(
        get(
            "faststream_processed_messages_errors_total",
            &[("topic", t), ("handler", handler), ("kind", "rejected")]
        ),
        failed as f64
    );
    // One handler run per batch.
    assert_eq!(
        get(
            "faststream_processed_messages_duration_seconds_count",
            &[("topic", t), ("handler", handler)]
        ),
        batches.len() as f64
    );
}

#[subscriber(
    "shared",
    group_id = "shared",
    auto_offset_reset = "earliest",
    session_timeout_ms = 6000,
    heartbeat_interval_ms = 300
)]
async fn shared(order: Order) {
    let _ = order;
}

/// Polls the metrics page at `url` until `done` holds for it (within the timeout); returns it.
async fn page_when(url: &str, what: &str, done: impl Fn(&str) -> bool) -> String {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let page = http_get(url).await;
        if done(&page) {
            return page;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}, within the timeout:\n{page}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[subscriber(
    "shared848",
    group_id = "shared848",
    group_protocol = "consumer",
    auto_offset_reset = "earliest"
)]
async fn shared_848(order: Order) {
    let _ = order;
}

/// Under the consumer group protocol (Apache Kafka; under the Tansu suite a node of the
/// test's own): the join is counted, a second member takes one of the two partitions (the
/// first revokes it: cause `revoked`, its drain timed), and the gauge follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_protocol_member_counts_its_revocation() {
    let addr = tokio::task::spawn_blocking(apache_kafka).await.unwrap();
    let prefix = unique_prefix("rebal848");
    let client = rskafka::client::ClientBuilder::new(vec![addr.clone()])
        .build()
        .await
        .unwrap();
    create_topic(&client, &format!("{prefix}shared848"), 2).await;
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/metrics");
    let member = || {
        init_logs();
        faststream::FastStream::new(faststream::kafka::KafkaBroker::new(&addr))
            .with_routes(routes![shared_848])
            .topic_prefix(&prefix)
    };
    let first = start(member().prometheus(([127, 0, 0, 1], port).into())).await;
    let group = format!("{prefix}shared848");
    let g = group.as_str();
    let labels = |cause| [("group", g), ("protocol", "consumer"), ("cause", cause)];
    let page = page_when(&url, "the first member holds both partitions", |page| {
        value(page, "faststream_assigned_partitions", &[("group", g)]) == Some(2.0)
    })
    .await;
    let joins = value(&page, "faststream_rebalances_total", &labels("join"));
    assert_eq!(joins, Some(1.0), "{page}");
    let second = start(member()).await;
    let page = page_when(&url, "the first member revokes a partition", |page| {
        value(page, "faststream_rebalances_total", &labels("revoked")) >= Some(1.0)
            && value(
                page,
                "faststream_rebalance_pause_seconds_count",
                &[("group", g), ("protocol", "consumer")],
            ) >= Some(1.0)
            && value(page, "faststream_assigned_partitions", &[("group", g)]) == Some(1.0)
    })
    .await;
    println!("{page}");
    second.stop().await.unwrap();
    first.stop().await.unwrap();
}

/// The first member's join is counted; a second member joining rebalances the first (cause
/// `group`), and how long the first member's partitions stopped is recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_joining_counts_a_rebalance_and_its_pause() {
    let prefix = unique_prefix("rebal");
    let client = raw_client().await;
    create_topic(&client, &format!("{prefix}shared"), 2).await;
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/metrics");
    let metered = app(routes![shared], &prefix).prometheus(([127, 0, 0, 1], port).into());
    let first = start(metered).await;
    let group = format!("{prefix}shared");
    let g = group.as_str();
    let page = http_get(&url).await;
    let joins = value(
        &page,
        "faststream_rebalances_total",
        &[("group", g), ("protocol", "classic"), ("cause", "join")],
    );
    assert_eq!(joins, Some(1.0), "{page}");
    let second = start(app(routes![shared], &prefix)).await;
    let classic = [("group", g), ("protocol", "classic")];
    let page = page_when(&url, "the first member's rebalance is counted", |page| {
        let cause = [("group", g), ("protocol", "classic"), ("cause", "group")];
        value(page, "faststream_rebalances_total", &cause) >= Some(1.0)
            && value(page, "faststream_rebalance_pause_seconds_count", &classic) >= Some(1.0)
    })
    .await;
    let paused = value(&page, "faststream_rebalance_pause_seconds_sum", &classic);
    assert!(paused.is_some_and(|s| s > 0.0), "{page}");
    second.stop().await.unwrap();
    first.stop().await.unwrap();
}

#[subscriber(
    "ledger",
    group_id = "ledger",
    auto_offset_reset = "earliest",
    exactly_once = true,
    commit_interval_ms = 200
)]
#[publisher("ledger-out")]
async fn ledger(order: Order) -> String {
    format!("booked {}", order.id)
}

/// An exactly-once group counts its committed transactions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exactly_once_group_counts_its_transactions() {
    let prefix = unique_prefix("ledger");
    let client = raw_client().await;
    let input = format!("{prefix}ledger");
    create_topic(&client, &input, 1).await;
    let records = (0..10)
        .map(|i| record(None, format!(r#"{{"id": {i}}}"#).as_bytes(), &[]))
        .collect();
    produce(&client, &input, 0, records).await;
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/metrics");
    let running =
        start(app(routes![ledger], &prefix).prometheus(([127, 0, 0, 1], port).into())).await;
    let group = format!("{prefix}ledger");
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let page = http_get(&url).await;
        let committed = value(
            &page,
            "faststream_transactions_total",
            &[("group", &group), ("outcome", "committed")],
        );
        let offset = value(
            &page,
            "faststream_committed_offset",
            &[("group", &group), ("topic", &input), ("partition", "0")],
        );
        if committed >= Some(1.0) && offset == Some(10.0) {
            assert_eq!(
                value(
                    &page,
                    "faststream_transactions_total",
                    &[("group", &group), ("outcome", "aborted")],
                ),
                None,
                "{page}"
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the transaction is counted:\n{page}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    running.stop().await.unwrap();
}
