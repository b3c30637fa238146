//! Losing the connection to the broker: the runtime logs each failure, reconnects with backoff
//! and resumes where it stopped. The test runs its own broker behind a TCP proxy it can cut
//! (the broker advertises the proxy's address, so every connection goes through it).

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use faststream::extract::Topic;
use faststream::kafka::KafkaBroker;
use faststream::runtime::RouteDef;
use faststream::{publisher, routes, subscriber, FastStream};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;

#[subscriber(
    "flow",
    group_id = "flow",
    auto_offset_reset = "earliest",
    commit_interval_ms = 100
)]
#[publisher("flow-out")]
async fn flow(n: u64) -> String {
    format!("got {n}")
}

/// Forwards 127.0.0.1:<port> to `target`; `set_up(false)` cuts every connection and refuses
/// new ones until `set_up(true)`.
struct Proxy {
    port: u16,
    up: Arc<AtomicBool>,
    cut: broadcast::Sender<()>,
}

impl Proxy {
    async fn start_on(port: u16, target: String) -> Proxy {
        let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let up = Arc::new(AtomicBool::new(true));
        let (cut, _) = broadcast::channel(4);
        let (up2, cut2) = (up.clone(), cut.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                if !up2.load(Ordering::SeqCst) {
                    continue; // dropped: refused
                }
                let target = target.clone();
                let mut cut = cut2.subscribe();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(&target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.recv() => {}
                    }
                });
            }
        });
        Proxy { port, up, cut }
    }

    fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::SeqCst);
        if !up {
            let _ = self.cut.send(());
        }
    }
}

/// A broker of the test's own behind a proxy it advertises (so every connection goes through
/// the proxy), its bootstrap address, and a plain client.
async fn broker_behind_proxy() -> (OwnBroker, Proxy, String, rskafka::client::Client) {
    init_logs();
    let proxy_port = free_port();
    let (broker, broker_addr) = OwnBroker::start(Some(proxy_port)).await;
    let proxy = Proxy::start_on(proxy_port, broker_addr).await;
    let bootstrap = format!("127.0.0.1:{}", proxy.port);
    let client = rskafka::client::ClientBuilder::new(vec![bootstrap.clone()])
        .build()
        .await
        .unwrap();
    (broker, proxy, bootstrap, client)
}

/// Waits until the `flow` group committed `offset` (asked through the proxy's broker).
async fn wait_until_committed(broker: &str, offset: i64) {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while common::wire::committed(broker, "flow", "flow").await != offset {
        assert!(
            tokio::time::Instant::now() < deadline,
            "offset {offset} never committed; log:\n{}",
            logs_about("flow")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_and_resumes_after_losing_the_broker() {
    let (_broker, proxy, bootstrap, client) = broker_behind_proxy().await;
    create_topic(&client, "flow", 1).await;
    let app = FastStream::new(
        KafkaBroker::builder(&bootstrap)
            .request_timeout(Duration::from_secs(2))
            .build(),
    )
    .with_routes(routes![flow]);
    let running = start(app).await;
    produce(
        &client,
        "flow",
        0,
        (0..50)
            .map(|n| record(None, n.to_string().as_bytes(), &[]))
            .collect(),
    )
    .await;
    read(&client, "flow-out", 50).await;
    // Cut only once the outputs' acks have arrived (the commit follows them): a cut while an
    // ack is on its way back would make the producer send those outputs again, a duplicate
    // only an idempotent producer avoids.
    wait_until_committed(&bootstrap, 50).await;

    // Longer than the client's request timeout (2 s), so requests fail and are retried by the
    // runtime, not only inside the client.
    proxy.set_up(false);
    tokio::time::sleep(Duration::from_secs(5)).await;
    proxy.set_up(true);

    produce(
        &client,
        "flow",
        0,
        (50..100)
            .map(|n| record(None, n.to_string().as_bytes(), &[]))
            .collect(),
    )
    .await;
    let out = read(&client, "flow-out", 100).await;
    let got: Vec<String> = out.values().flatten().map(text).collect();
    let want: Vec<String> = (0..100).map(|n| format!("got {n}")).collect();
    assert_eq!(
        got,
        want,
        "resumed where it stopped: nothing lost, nothing repeated; log:\n{}",
        logs_about("flow")
    );
    running.stop().await.unwrap();
    let logs = logs();
    assert!(
        logs.lines().any(|l| l.contains("WARN")
            && l.contains("topic=\"flow\"")
            && l.contains("partition=0")
            && l.contains("fetch failed")),
        "each failure is logged:\n{logs}"
    );
}

#[subscriber(
    "gflow",
    group_id = "gflow",
    auto_offset_reset = "earliest",
    session_timeout_ms = 10000,
    heartbeat_interval_ms = 300,
    commit_interval_ms = 200
)]
#[publisher("gflow-out")]
async fn group_flow(n: u64) -> String {
    format!("got {n}")
}

/// Losing the coordinator connection (and every other) for less than the session timeout does
/// not end the membership: no partition is revoked, nothing is repeated, consumption resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_coordinator_connection_keeps_the_partitions() {
    let (_broker, proxy, bootstrap, client) = broker_behind_proxy().await;
    create_topic(&client, "gflow", 1).await;
    static REVOKED: AtomicUsize = AtomicUsize::new(0);
    let app = FastStream::new(
        KafkaBroker::builder(&bootstrap)
            .request_timeout(Duration::from_secs(2))
            .on_partitions_revoked(|_, _| {
                REVOKED.fetch_add(1, Ordering::SeqCst);
            })
            .build(),
    )
    .with_routes(routes![group_flow]);
    let running = start(app).await;
    let batch = |r: std::ops::Range<u64>| {
        r.map(|n| record(None, n.to_string().as_bytes(), &[]))
            .collect()
    };
    produce(&client, "gflow", 0, batch(0..50)).await;
    read(&client, "gflow-out", 50).await;
    // A few heartbeats on their connection first.
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Heartbeats and commits fail for 4 s, within the 10 s session.
    proxy.set_up(false);
    tokio::time::sleep(Duration::from_secs(4)).await;
    proxy.set_up(true);
    produce(&client, "gflow", 0, batch(50..100)).await;
    let out = read(&client, "gflow-out", 100).await;
    let got: Vec<String> = out.values().flatten().map(text).collect();
    let want: Vec<String> = (0..100).map(|n| format!("got {n}")).collect();
    assert_eq!(got, want, "nothing lost, nothing repeated");
    assert_eq!(
        REVOKED.load(Ordering::SeqCst),
        0,
        "no partition was revoked"
    );
    running.stop().await.unwrap();
    assert_eq!(
        REVOKED.load(Ordering::SeqCst),
        1,
        "revoked once, on shutdown"
    );
    let logs = logs();
    assert!(
        logs.contains("heartbeat failed; finding the coordinator again (partitions kept)"),
        "{logs}"
    );
}

static GROWN: std::sync::Mutex<Vec<(String, String)>> = std::sync::Mutex::new(Vec::new());

#[subscriber("grow", auto_offset_reset = "earliest")]
async fn grow(body: String, topic: Topic) {
    GROWN.lock().unwrap().push((topic.0.to_string(), body));
}

#[subscriber(
    "ggrow",
    group_id = "ggrow",
    auto_offset_reset = "earliest",
    session_timeout_ms = 4000,
    heartbeat_interval_ms = 300,
    commit_interval_ms = 200
)]
async fn group_grow(body: String, topic: Topic) {
    GROWN.lock().unwrap().push((topic.0.to_string(), body));
}

fn grown(topic: &str) -> Vec<String> {
    let mut got: Vec<String> = GROWN
        .lock()
        .unwrap()
        .iter()
        .filter(|(t, _)| t == topic)
        .map(|(_, b)| b.clone())
        .collect();
    got.sort();
    got
}

/// The broker comes back (memory storage: topics gone) and the topic returns with more
/// partitions: the metadata refresh finds them and they are consumed without a restart.
async fn consumes_partitions_that_appear(topic: &str, route: &'static RouteDef) {
    init_logs();
    let port = free_port();
    let (broker, addr) = OwnBroker::start_on(port, None).await;
    let client = rskafka::client::ClientBuilder::new(vec![addr.clone()])
        .build()
        .await
        .unwrap();
    create_topic(&client, topic, 1).await;
    let app = FastStream::new(
        KafkaBroker::builder(&addr)
            .request_timeout(Duration::from_secs(2))
            .metadata_max_age(Duration::from_secs(1))
            .build(),
    )
    .with_routes(vec![route]);
    let running = start(app).await;
    produce(&client, topic, 0, vec![record(None, b"before", &[])]).await;
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while grown(topic).is_empty() {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    broker.stop().await;
    let (_broker, _) = OwnBroker::start_on(port, None).await;
    let client = rskafka::client::ClientBuilder::new(vec![addr.clone()])
        .build()
        .await
        .unwrap();
    // The consumer's own requests may have the broker create it first (with its default
    // partition count); either way it comes back with more than one partition.
    let _ = client
        .controller_client()
        .unwrap()
        .create_topic(topic, 3, 1, 5_000)
        .await;
    let partitions = loop {
        let topics = client.list_topics().await.unwrap();
        if let Some(t) = topics.iter().find(|t| t.name == topic) {
            break t.partitions.len() as i32;
        }
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(partitions > 1, "{partitions}");
    for p in 1..partitions {
        produce(
            &client,
            topic,
            p,
            vec![record(None, format!("new{p}").as_bytes(), &[])],
        )
        .await;
    }
    let mut expected: Vec<String> = (1..partitions).map(|p| format!("new{p}")).collect();
    expected.push("before".into());
    expected.sort();
    while grown(topic) != expected {
        assert!(
            tokio::time::Instant::now() < deadline,
            "new partitions not consumed: {:?}",
            grown(topic)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    running.stop().await.unwrap();
    assert_eq!(grown(topic), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_that_appear_while_running_are_consumed() {
    consumes_partitions_that_appear("grow", routes![grow][0]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_that_appear_while_running_are_consumed_by_a_group() {
    consumes_partitions_that_appear("ggrow", routes![group_grow][0]).await;
}
