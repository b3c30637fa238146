//! Delivery under the conditions a production cluster creates: quiet partitions and restarts,
//! slow handlers during rebalances, crashes with a slow message in hand, shutdown during a retry
//! backoff, a consumer stopped by its failure policy, handlers slower than the rebalance
//! timeout, and manual-ack messages nobody acknowledges. Exact counts, bounded waits.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use common::*;
use faststream::extract::Topic;
use faststream::kafka::KafkaBroker;
use faststream::runtime::RouteDef;
use faststream::{routes, subscriber, Failure, FastStream};

/// (topic, body) of every message a handler finished, in order.
static SEEN: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());
/// (topic, body) of every handler call that started.
static STARTED: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

fn started(topic: &Topic, body: &str) {
    STARTED
        .lock()
        .unwrap()
        .push((topic.0.to_string(), body.to_owned()));
}

fn seen(topic: &Topic, body: &str) {
    SEEN.lock()
        .unwrap()
        .push((topic.0.to_string(), body.to_owned()));
}

/// How often each body of `topic` was finished.
fn counts(topic: &str) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for (t, b) in SEEN.lock().unwrap().iter() {
        if t == topic {
            *out.entry(b.clone()).or_default() += 1;
        }
    }
    out
}

fn started_count(topic: &str, body: &str) -> usize {
    STARTED
        .lock()
        .unwrap()
        .iter()
        .filter(|(t, b)| t == topic && b == body)
        .count()
}

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn bodies(prefix: &str, n: usize) -> Vec<rskafka::record::Record> {
    (0..n)
        .map(|i| record(None, format!("{prefix}{i}").as_bytes(), &[]))
        .collect()
}

fn app_with(
    routes: Vec<&'static RouteDef>,
    prefix: &str,
    broker: impl FnOnce(faststream::kafka::KafkaBrokerBuilder) -> faststream::kafka::KafkaBrokerBuilder,
) -> FastStream<KafkaBroker> {
    init_logs();
    FastStream::new(broker(KafkaBroker::builder(&bootstrap())).build())
        .with_routes(routes)
        .topic_prefix(prefix)
}

// ---------------------------------------------------------------------------------------------

#[subscriber(
    "quiet",
    group_id = "quiet",
    session_timeout_ms = 4000,
    heartbeat_interval_ms = 300,
    commit_interval_ms = 200
)]
async fn quiet(body: String, topic: Topic) {
    seen(&topic, &body);
}

/// A new group with the default `auto_offset_reset = "latest"` commits its start position, so
/// messages that arrive while the service is down are handled after the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latest_group_handles_what_arrived_while_it_was_down() {
    let prefix = unique_prefix("quiet");
    let client = raw_client().await;
    let topic = format!("{prefix}quiet");
    create_topic(&client, &topic, 1).await;
    // Nothing arrives during the first run.
    start(app(routes![quiet], &prefix))
        .await
        .stop()
        .await
        .unwrap();
    produce(&client, &topic, 0, bodies("m", 5)).await;
    let running = start(app(routes![quiet], &prefix)).await;
    wait_until("5 messages handled after the restart", || {
        counts(&topic).len() == 5
    })
    .await;
    running.stop().await.unwrap();
    assert!(
        counts(&topic).values().all(|n| *n == 1),
        "{:?}",
        counts(&topic)
    );
}

// ---------------------------------------------------------------------------------------------

// A session shorter than the slow handler: only heartbeats during the revoke drain keep the
// member in the group.
#[subscriber(
    "rebal",
    group_id = "rebal",
    auto_offset_reset = "earliest",
    session_timeout_ms = 4000,
    heartbeat_interval_ms = 300,
    rebalance_timeout_ms = 20000,
    commit_interval_ms = 200
)]
async fn rebalanced(body: String, topic: Topic) {
    started(&topic, &body);
    if body == "slow" {
        tokio::time::sleep(Duration::from_secs(7)).await;
    }
    seen(&topic, &body);
}

/// A handler taking longer than the session timeout while a second member joins: the first
/// member keeps heartbeating while it finishes, commits, and hands over; nothing is repeated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_handler_during_a_rebalance_repeats_nothing() {
    let prefix = unique_prefix("rebal");
    let client = raw_client().await;
    let topic = format!("{prefix}rebal");
    create_topic(&client, &topic, 2).await;
    let mut p0 = bodies("a", 10);
    p0.push(record(None, b"slow", &[]));
    p0.extend(bodies("c", 10));
    produce(&client, &topic, 0, p0).await;
    produce(&client, &topic, 1, bodies("b", 20)).await;
    let first = start(app(routes![rebalanced], &prefix)).await;
    wait_until("the slow message is in hand", || {
        started_count(&topic, "slow") == 1
    })
    .await;
    let second = start(app(routes![rebalanced], &prefix)).await;
    wait_until("every message handled", || counts(&topic).len() == 41).await;
    // Give a wrongly repeated message time to show up.
    tokio::time::sleep(Duration::from_secs(1)).await;
    first.stop().await.unwrap();
    second.stop().await.unwrap();
    let repeated: Vec<_> = counts(&topic).into_iter().filter(|(_, n)| *n > 1).collect();
    assert!(repeated.is_empty(), "repeated: {repeated:?}");
    assert!(
        !logs().contains(&format!("{prefix}rebal\" error=")),
        "no commit was refused"
    );
}

// ---------------------------------------------------------------------------------------------

static HELD_ONCE: AtomicBool = AtomicBool::new(false);

#[subscriber(
    "hold",
    group_id = "hold",
    auto_offset_reset = "earliest",
    session_timeout_ms = 4000,
    heartbeat_interval_ms = 300,
    commit_interval_ms = 200
)]
async fn held(body: String, topic: Topic) {
    started(&topic, &body);
    if body == "slow" && !HELD_ONCE.swap(true, Ordering::SeqCst) {
        // Longer than the test: the process "crashes" while this runs.
        tokio::time::sleep(Duration::from_secs(600)).await;
    }
    seen(&topic, &body);
}

/// Progress moves per message: while a slow message is in hand, the messages before it in the
/// same fetch are committed, so a crash repeats only the slow one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_message_does_not_hold_back_commits_of_earlier_ones() {
    let prefix = unique_prefix("hold");
    let client = raw_client().await;
    let topic = format!("{prefix}hold");
    create_topic(&client, &topic, 1).await;
    let mut batch = bodies("m", 10);
    batch.push(record(None, b"slow", &[]));
    batch.push(record(None, b"after", &[]));
    // One produce request: one record batch, fetched at once.
    produce(&client, &topic, 0, batch).await;
    let running = start(app(routes![held], &prefix)).await;
    wait_until("the slow message is in hand", || {
        started_count(&topic, "slow") == 1
    })
    .await;
    // Several commit intervals pass while it runs; then the process dies (no final commit).
    tokio::time::sleep(Duration::from_secs(1)).await;
    running.crash().await;
    let running = start(app(routes![held], &prefix)).await;
    wait_until("the rest handled after the restart", || {
        counts(&topic).get("after") == Some(&1)
    })
    .await;
    running.stop().await.unwrap();
    let c = counts(&topic);
    assert_eq!(c.get("slow"), Some(&1), "{c:?}");
    for i in 0..10 {
        assert_eq!(c.get(&format!("m{i}")), Some(&1), "m{i} repeated: {c:?}");
        assert_eq!(started_count(&topic, &format!("m{i}")), 1);
    }
}

// ---------------------------------------------------------------------------------------------

#[subscriber(
    "backoff",
    group_id = "backoff",
    auto_offset_reset = "earliest",
    retry = 3,
    retry_backoff_ms = 120000,
    retry_max_backoff_ms = 120000,
    session_timeout_ms = 4000,
    heartbeat_interval_ms = 300
)]
async fn backs_off(body: String, topic: Topic) -> Result<(), Failure> {
    started(&topic, &body);
    if started_count(&topic.0, &body) == 1 {
        return Err(Failure::retry("not yet"));
    }
    seen(&topic, &body);
    Ok(())
}

/// Shutdown during a long retry backoff ends the backoff: the service stops within its
/// shutdown timeout (committing and leaving), and the message is consumed again afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_during_a_retry_backoff_is_prompt_and_loses_nothing() {
    let prefix = unique_prefix("backoff");
    let client = raw_client().await;
    let topic = format!("{prefix}backoff");
    create_topic(&client, &topic, 1).await;
    produce(&client, &topic, 0, bodies("x", 1)).await;
    let running =
        start(app(routes![backs_off], &prefix).shutdown_timeout(Duration::from_secs(10))).await;
    wait_until("the first attempt failed", || {
        started_count(&topic, "x0") == 1
    })
    .await;
    // Not `ShutdownTimeout`: the backoff (2 minutes) was cut short.
    running.stop().await.unwrap();
    assert!(counts(&topic).is_empty());
    let running = start(app(routes![backs_off], &prefix)).await;
    wait_until("consumed again after the restart", || {
        counts(&topic).get("x0") == Some(&1)
    })
    .await;
    running.stop().await.unwrap();
    assert!(logs().contains("retry backoff interrupted"));
}

// ---------------------------------------------------------------------------------------------

#[subscriber(
    "stopg",
    group_id = "stopg",
    auto_offset_reset = "earliest",
    on_failure = "stop",
    retry = 0,
    session_timeout_ms = 4000,
    heartbeat_interval_ms = 300,
    commit_interval_ms = 200
)]
async fn stops(body: String, topic: Topic) -> Result<(), Failure> {
    started(&topic, &body);
    if body == "poison" && started_count(&topic.0, &body) == 1 {
        return Err(Failure::stop("cannot handle it yet"));
    }
    seen(&topic, &body);
    Ok(())
}

/// A partition consumer stopped by `on_failure = "stop"` in a group: the member commits what is
/// done, leaves the group, and the service exits with an error naming the place; after a
/// restart the stopped message and everything after it are handled, nothing before repeated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_consumer_in_a_group_exits_the_service_and_loses_nothing() {
    let prefix = unique_prefix("stopg");
    let client = raw_client().await;
    let topic = format!("{prefix}stopg");
    create_topic(&client, &topic, 1).await;
    produce(
        &client,
        &topic,
        0,
        vec![
            record(None, b"ok1", &[]),
            record(None, b"poison", &[]),
            record(None, b"ok2", &[]),
        ],
    )
    .await;
    let running = start(app(routes![stops], &prefix)).await;
    let err = running.finished().await.unwrap_err().to_string();
    assert!(
        err.contains(&format!("{topic}[0]")) && err.contains("stopped at offset 1"),
        "{err}"
    );
    assert!(logs().contains("left the group"));
    let running = start(app(routes![stops], &prefix)).await;
    wait_until("the rest handled after the restart", || {
        counts(&topic).len() == 3
    })
    .await;
    running.stop().await.unwrap();
    assert!(
        counts(&topic).values().all(|n| *n == 1),
        "{:?}",
        counts(&topic)
    );
}

// ---------------------------------------------------------------------------------------------

#[subscriber(
    "livelock",
    group_id = "livelock",
    auto_offset_reset = "earliest",
    session_timeout_ms = 3000,
    heartbeat_interval_ms = 300,
    rebalance_timeout_ms = 4000,
    commit_interval_ms = 200
)]
async fn too_slow(body: String, topic: Topic) {
    started(&topic, &body);
    if body.starts_with("long") {
        tokio::time::sleep(Duration::from_secs(8)).await;
    }
    seen(&topic, &body);
}

/// Handlers slower than the rebalance timeout, two members: the member abandons the handler in
/// time to rejoin (naming it and the setting to raise), so the group settles and every message
/// is handled (repeats allowed) instead of members taking turns being expelled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_slower_than_the_rebalance_timeout_does_not_livelock_the_group() {
    let prefix = unique_prefix("livelock");
    let client = raw_client().await;
    let topic = format!("{prefix}livelock");
    create_topic(&client, &topic, 2).await;
    for p in 0..2 {
        let mut recs = vec![record(None, format!("long{p}").as_bytes(), &[])];
        recs.extend(bodies(&format!("q{p}-"), 5));
        produce(&client, &topic, p, recs).await;
    }
    let first = start(app(routes![too_slow], &prefix)).await;
    wait_until("a long handler runs", || {
        started_count(&topic, "long0") + started_count(&topic, "long1") > 0
    })
    .await;
    let second = start(app(routes![too_slow], &prefix)).await;
    wait_until("every message handled", || counts(&topic).len() == 12).await;
    first.stop().await.unwrap();
    second.stop().await.unwrap();
    let logs = logs();
    assert!(
        logs.contains("did not finish within the rebalance timeout")
            && logs.contains("delivery::too_slow"),
        "the cause is logged"
    );
}

// ---------------------------------------------------------------------------------------------

#[subscriber("forgot", auto_offset_reset = "earliest", ack = "manual")]
async fn forgets_to_ack(body: String, topic: Topic) {
    seen(&topic, &body);
}

/// A manual-ack message that is neither acked nor nacked is reported, with its offset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unacknowledged_manual_ack_message_is_reported() {
    let prefix = unique_prefix("forgot");
    let client = raw_client().await;
    let topic = format!("{prefix}forgot");
    create_topic(&client, &topic, 1).await;
    produce(&client, &topic, 0, bodies("n", 3)).await;
    let running = start(app_with(routes![forgets_to_ack], &prefix, |b| {
        b.manual_ack_warning(Duration::from_millis(300))
    }))
    .await;
    wait_until("the warning", || {
        logs().lines().any(|l| {
            l.contains("neither acked nor nacked") && l.contains(&topic) && l.contains("offset=0")
        })
    })
    .await;
    running.stop().await.unwrap();
}
