//! Exactly-once read-process-write (`exactly_once = true`) against Apache Kafka: the service
//! killed (SIGKILL) again and again, or frozen past its session timeout while another member
//! takes over, and an independent `read_committed` reader (aiokafka) sees every input's
//! outputs exactly once.
//!
//! Transactions are Kafka's: under the Tansu suite these tests start a Kafka node of their own
//! (Tansu 0.6 keeps no list of aborted transactions, so its `read_committed` readers would see
//! aborted outputs).

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use faststream::kafka::KafkaBroker;
use faststream::policy::FailurePolicy;
use faststream::{publisher, routes, subscriber, FastStream};
use rskafka::client::ClientBuilder;

/// Inputs per topic of the example: the relay, the keyed relay (`concurrency = 20`) and the
/// batch relay.
const RELAY: u64 = 12_000;
const KEYED: u64 = 4_000;
const BATCH: u64 = 4_000;

async fn setup(prefix: &str) -> String {
    let addr = tokio::task::spawn_blocking(apache_kafka).await.unwrap();
    fill(&addr, prefix, 1).await;
    addr
}

/// Creates the example's topics (3 partitions, `replication` copies) on the cluster at
/// `addr` and writes its inputs, keyed by number modulo 40. The audit topic is written by
/// `Publisher` only, so no route declares it.
async fn fill(addr: &str, prefix: &str, replication: i16) {
    let client = ClientBuilder::new(addr.split(',').map(str::to_owned).collect())
        .build()
        .await
        .unwrap();
    let outputs = [
        "eos-audit",
        "eos-out",
        "eos-dlq",
        "eos-out-keyed",
        "eos-out-batch",
    ];
    let inputs = ["eos-in", "eos-in-keyed", "eos-in-batch"];
    for topic in inputs.iter().chain(&outputs) {
        let topic = format!("{prefix}{topic}");
        client
            .controller_client()
            .unwrap()
            .create_topic(&topic, 3, replication, 10_000)
            .await
            .unwrap_or_else(|e| panic!("create {topic}: {e}"));
    }
    for (topic, count) in inputs.into_iter().zip([RELAY, KEYED, BATCH]) {
        let topic = format!("{prefix}{topic}");
        for partition in 0..3 {
            let records = (0..count)
                .filter(|n| (n % 3) as i32 == partition)
                .map(|n| {
                    let key = (n % 40).to_string();
                    record(Some(&key), n.to_string().as_bytes(), &[])
                })
                .collect();
            produce(&client, &topic, partition, records).await;
        }
    }
}

async fn spawn(addr: &str, prefix: &str, instance: &str) -> tokio::process::Child {
    spawn_with(addr, prefix, instance, Rebalancing::Eager).await
}

/// How the example's group rebalances.
#[derive(Clone, Copy, Debug)]
enum Rebalancing {
    Eager,
    /// `cooperative-sticky` on the classic protocol.
    Cooperative,
    /// The consumer group protocol (KIP-848).
    Consumer,
}

async fn spawn_with(
    addr: &str,
    prefix: &str,
    instance: &str,
    rebalancing: Rebalancing,
) -> tokio::process::Child {
    let mut env = vec![
        ("KAFKA_BOOTSTRAP", addr),
        ("INSTANCE_ID", instance),
        ("HANDLER_DELAY_MS", "1"),
    ];
    match rebalancing {
        Rebalancing::Eager => {}
        Rebalancing::Cooperative => env.push(("GROUP_ASSIGNOR", "cooperative-sticky")),
        Rebalancing::Consumer => env.push(("KAFKA_GROUP_PROTOCOL", "consumer")),
    }
    spawn_example("exactly_once", prefix, &env).await
}

/// Reads the example's output topics as a `read_committed` aiokafka consumer: values by topic
/// (without the prefix), once `want` records arrived.
async fn read_committed(addr: &str, prefix: &str, want: u64) -> BTreeMap<String, Vec<String>> {
    let topics = [
        "eos-out",
        "eos-audit",
        "eos-dlq",
        "eos-out-keyed",
        "eos-out-batch",
    ];
    read_committed_topics(addr, prefix, want, &topics).await
}

/// [`read_committed`] of `topics` (without the prefix).
async fn read_committed_topics(
    addr: &str,
    prefix: &str,
    want: u64,
    topics: &[&str],
) -> BTreeMap<String, Vec<String>> {
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/read_committed.py");
    let out = tokio::process::Command::new(python())
        .arg(script)
        .args([addr, "180", &want.to_string()])
        .args(topics.iter().map(|t| format!("{prefix}{t}")))
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "read_committed reader: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut by_topic: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        let (topic, value) = line.split_once('\t').unwrap();
        let topic = topic.strip_prefix(prefix).unwrap().to_owned();
        by_topic.entry(topic).or_default().push(value.to_owned());
    }
    by_topic
}

/// Every input's outputs are there exactly once: `out:n`, or for the relay's refused numbers
/// the dead-letter copy; for each number the relay did not refuse, one audit copy (a refused
/// number's attempts failed, and their publishes were dropped with them).
fn check_exactly_once(got: &BTreeMap<String, Vec<String>>) {
    let sorted = |topic: &str| {
        let mut v: Vec<String> = got.get(topic).cloned().unwrap_or_default();
        v.sort();
        v
    };
    let expect = |range: std::ops::Range<u64>, f: &dyn Fn(u64) -> Option<String>| {
        let mut v: Vec<String> = range.filter_map(f).collect();
        v.sort();
        v
    };
    let refused = |n: u64| n % 50 == 7;
    let checks = [
        (
            "eos-out",
            expect(0..RELAY, &|n| (!refused(n)).then(|| format!("out:{n}"))),
        ),
        (
            "eos-dlq",
            expect(0..RELAY, &|n| refused(n).then(|| n.to_string())),
        ),
        (
            "eos-audit",
            expect(0..RELAY, &|n| (!refused(n)).then(|| format!("audit:{n}"))),
        ),
        (
            "eos-out-keyed",
            expect(0..KEYED, &|n| Some(format!("out:{n}"))),
        ),
        (
            "eos-out-batch",
            expect(0..BATCH, &|n| Some(format!("out:{n}"))),
        ),
    ];
    for (topic, want) in checks {
        let have = sorted(topic);
        if have != want {
            let mut dups: Vec<&String> = have
                .windows(2)
                .filter(|w| w[0] == w[1])
                .map(|w| &w[0])
                .collect();
            dups.dedup();
            let missing: Vec<&String> = want
                .iter()
                .filter(|w| have.binary_search(w).is_err())
                .take(10)
                .collect();
            panic!(
                "{topic}: {} records for {} inputs; duplicates (first 10): {:?}; missing (first 10): {missing:?}",
                have.len(),
                want.len(),
                &dups[..dups.len().min(10)]
            );
        }
    }
}

fn expected_total() -> u64 {
    let refused = (0..RELAY).filter(|n| n % 50 == 7).count() as u64;
    // out + dlq, audit, keyed, batch.
    RELAY + (RELAY - refused) + KEYED + BATCH
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_ten_times_each_output_is_committed_exactly_once() {
    killed_ten_times(Rebalancing::Eager).await;
}

/// The same with `cooperative-sticky`: partitions kept through rebalances keep writing into
/// the open transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cooperative_killed_ten_times_each_output_is_committed_exactly_once() {
    killed_ten_times(Rebalancing::Cooperative).await;
}

/// Under the consumer group protocol, killed three times: a restart waits until the broker
/// expires the killed member (its session timeout) before it gets the partitions back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_protocol_killed_three_times_each_output_is_committed_exactly_once() {
    killed(Rebalancing::Consumer, 3).await;
}

async fn killed_ten_times(rebalancing: Rebalancing) {
    killed(rebalancing, 10).await;
}

async fn killed(rebalancing: Rebalancing, times: u64) {
    let prefix = unique_prefix("eos-kill");
    let addr = setup(&prefix).await;
    // Killed at varied moments of its work; restarts take the same instance id (static
    // member, transactional id), so each fences its predecessor.
    for round in 0..times {
        let child = spawn_with(&addr, &prefix, "relay-1", rebalancing).await;
        tokio::time::sleep(Duration::from_millis(300 + (round * 397) % 1200)).await;
        let pid = child.id().unwrap().to_string();
        let killed = std::process::Command::new("kill")
            .args(["-KILL", &pid])
            .status()
            .unwrap();
        assert!(killed.success());
        let _ = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output()).await;
    }
    let last = spawn_with(&addr, &prefix, "relay-1", rebalancing).await;
    let got = read_committed(&addr, &prefix, expected_total()).await;
    terminate(last).await;
    check_exactly_once(&got);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_member_that_lost_its_partitions_commits_nothing_after_the_takeover() {
    let prefix = unique_prefix("eos-zombie");
    let addr = setup(&prefix).await;
    let (frozen, frozen_log) = spawn_example_logged(
        "exactly_once",
        &prefix,
        &[
            ("KAFKA_BOOTSTRAP", &addr),
            ("INSTANCE_ID", "relay-a"),
            ("HANDLER_DELAY_MS", "1"),
        ],
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let pid = frozen.id().unwrap().to_string();
    // Frozen mid-stream with a transaction open; the other member starts and, once the
    // session timeout (6 s) passed, takes every partition from the committed offsets.
    let stopped = std::process::Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .unwrap();
    assert!(stopped.success());
    let other = spawn(&addr, &prefix, "relay-b").await;
    tokio::time::sleep(Duration::from_secs(9)).await;
    // Thawed: it finishes what it had in hand, but its offsets are refused (its generation
    // is gone) and its transaction aborted; it rejoins and the two share the rest.
    let resumed = std::process::Command::new("kill")
        .args(["-CONT", &pid])
        .status()
        .unwrap();
    assert!(resumed.success());
    let got = read_committed(&addr, &prefix, expected_total()).await;
    terminate(other).await;
    terminate(frozen).await;
    check_exactly_once(&got);
    // What it did while it was a zombie was thrown away, not committed.
    let log = frozen_log.lock().unwrap().clone();
    assert!(
        log.contains("aborting the transaction"),
        "the thawed member aborts its transaction:\n{log}"
    );
}

static STABLE_SEEN: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

#[subscriber("eos-stable-in", group_id = "stable", auto_offset_reset = "earliest")]
async fn stable_in(body: String) {
    STABLE_SEEN.lock().unwrap().push(body);
}

/// A partition whose group offset waits in a transaction that has not ended (another
/// producer's, between its `TxnOffsetCommit` and `EndTxn`, as when the previous owner commits
/// while the partition moves) is started from that transaction's offset once it committed,
/// never from the offset before it (KIP-447 `require_stable`): the inputs it covers were
/// handled, their outputs committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_owner_waits_for_offsets_still_in_a_transaction() {
    use tokio::io::AsyncBufReadExt;
    init_logs();
    let addr = tokio::task::spawn_blocking(apache_kafka).await.unwrap();
    let prefix = unique_prefix("eos-stable");
    let topic = format!("{prefix}eos-stable-in");
    let client = ClientBuilder::new(vec![addr.clone()])
        .build()
        .await
        .unwrap();
    create_topic(&client, &topic, 1).await;
    let records = (0..20u32)
        .map(|n| record(None, n.to_string().as_bytes(), &[]))
        .collect();
    produce(&client, &topic, 0, records).await;
    // Offset 10 of the group, in a transaction held open for 4 s.
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/pending_offsets.py");
    let group = format!("{prefix}stable");
    let mut txn = tokio::process::Command::new(python())
        .arg(script)
        .args([&addr, &topic, &group, "10", "4"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(txn.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(TIMEOUT, lines.next_line()).await;
    assert_eq!(
        line.expect("the transaction's offsets within the timeout")
            .unwrap()
            .as_deref(),
        Some("PENDING")
    );
    let app = FastStream::new(KafkaBroker::new(&addr))
        .with_routes(routes![stable_in])
        .topic_prefix(&prefix);
    let running = start(app).await;
    let line = tokio::time::timeout(TIMEOUT, lines.next_line()).await;
    assert_eq!(
        line.expect("the transaction commits within the timeout")
            .unwrap()
            .as_deref(),
        Some("COMMITTED")
    );
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while common::wire::committed(&addr, &group, &topic).await != 20 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "offset 20 never committed; handled {:?}",
            STABLE_SEEN.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    running.stop().await.unwrap();
    let _ = txn.wait().await;
    let want: Vec<String> = (10..20).map(|n: u32| n.to_string()).collect();
    assert_eq!(*STABLE_SEEN.lock().unwrap(), want);
    assert!(logs_about(&group).contains("UnstableOffsetCommit"));
}

#[subscriber(
    "eos-abandon-in",
    group_id = "abandon",
    auto_offset_reset = "earliest",
    exactly_once = true
)]
#[publisher("eos-abandon-out")]
async fn abandon_relay(body: String) -> String {
    body
}

/// A member whose handler is still waiting for its output's acknowledgement when the revoke
/// deadline passes abandons it; the output may already be in the transaction without its
/// input's offset, so the transaction is aborted (not committed) and the input is handled
/// again by the next owner: its output is committed once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_abandoned_at_the_revoke_deadline_commits_no_output() {
    use common::wire::KafkaProxy;
    use kafka_protocol::messages::ApiKey;
    init_logs();
    let prefix = unique_prefix("eos-abandon");
    let proxy_port = free_port();
    let (_kafka, kafka_addr) = OwnBroker::kafka(Some(proxy_port)).await;
    let proxy = KafkaProxy::start_on(proxy_port, kafka_addr).await;
    let addr = format!("127.0.0.1:{proxy_port}");
    let client = ClientBuilder::new(vec![addr.clone()])
        .build()
        .await
        .unwrap();
    let (input, output) = (
        format!("{prefix}eos-abandon-in"),
        format!("{prefix}eos-abandon-out"),
    );
    create_topic(&client, &input, 1).await;
    create_topic(&client, &output, 1).await;
    let records = (0..10u32)
        .map(|n| record(None, n.to_string().as_bytes(), &[]))
        .collect();
    produce(&client, &input, 0, records).await;
    // The service's first produce answer comes 8 s late: the first member's handler still
    // waits for it when the second member's join makes it revoke, with a revoke deadline of
    // 2.8 s (a rebalance timeout of 4 s less a heartbeat interval and a second).
    let produced = proxy.requests(ApiKey::Produce);
    proxy.delay_answers(ApiKey::Produce, 1, Duration::from_secs(8));
    let member = || {
        FastStream::new(
            KafkaBroker::builder(&addr)
                .rebalance_timeout(Duration::from_secs(4))
                .heartbeat_interval(Duration::from_millis(200))
                .session_timeout(Duration::from_secs(6))
                .build(),
        )
        .with_routes(routes![abandon_relay])
        .topic_prefix(&prefix)
    };
    let first = start(member()).await;
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while proxy.requests(ApiKey::Produce) == produced {
        assert!(tokio::time::Instant::now() < deadline, "no output written");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let second = start(member()).await;
    let got = read_committed_topics(&addr, &prefix, 10, &["eos-abandon-out"]).await;
    second.stop().await.unwrap();
    first.stop().await.unwrap();
    let mut outputs = got.get("eos-abandon-out").cloned().unwrap_or_default();
    outputs.sort_by_key(|v| v.parse::<u32>().unwrap());
    let want: Vec<String> = (0..10u32).map(|n| n.to_string()).collect();
    assert_eq!(outputs, want, "every output committed once");
    assert!(
        logs_about(&input).contains("abandoned at the rebalance deadline"),
        "the transaction was given up because of the abandoned handler:\n{}",
        logs_about(&input)
    );
}

#[subscriber("eos-plain-in")]
async fn ungrouped(body: String) {
    let _ = body;
}

#[subscriber("eos-mix-a", group_id = "mix", exactly_once = true)]
async fn mixed_exactly_once(body: String) {
    let _ = body;
}

#[subscriber("eos-mix-b", group_id = "mix")]
async fn mixed_at_least_once(body: String) {
    let _ = body;
}

async fn startup_fails(app: FastStream<KafkaBroker>) -> String {
    let run = app.run_until(std::future::pending());
    tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("startup ends")
        .expect_err("startup fails")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_names_the_handler_that_cannot_be_exactly_once() {
    let addr = tokio::task::spawn_blocking(apache_kafka).await.unwrap();
    // The app-wide default reaches a handler without a group.
    let app = FastStream::new(KafkaBroker::new(&addr))
        .with_routes(routes![ungrouped])
        .failure_policy(FailurePolicy {
            exactly_once: true,
            ..FailurePolicy::default()
        })
        .topic_prefix(unique_prefix("eos-fail"));
    let err = startup_fails(app).await;
    assert!(
        err.contains("ungrouped")
            && err.contains("group_id")
            && err.contains("exactly_once = false"),
        "{err}"
    );
    // One transaction commits a whole group's offsets: its handlers agree.
    let app = FastStream::new(KafkaBroker::new(&addr))
        .with_routes(routes![mixed_exactly_once, mixed_at_least_once])
        .topic_prefix(unique_prefix("eos-fail"));
    let err = startup_fails(app).await;
    assert!(
        err.contains("mix") && err.contains("mixed_at_least_once") && err.contains("exactly_once"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_joining_and_leaving_commit_before_partitions_move() {
    joining_and_leaving(Rebalancing::Eager).await;
}

/// With `cooperative-sticky`: only the moved partitions stop, and the transaction is committed
/// before they are released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cooperative_members_joining_and_leaving_commit_before_partitions_move() {
    joining_and_leaving(Rebalancing::Cooperative).await;
}

/// Under the consumer group protocol (KIP-848): the offsets go with the member epoch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_protocol_members_joining_and_leaving_commit_before_partitions_move() {
    joining_and_leaving(Rebalancing::Consumer).await;
}

async fn joining_and_leaving(rebalancing: Rebalancing) {
    let prefix = unique_prefix("eos-rebalance");
    let addr = setup(&prefix).await;
    // Two members share the partitions; a third joins mid-stream, then one leaves (SIGTERM):
    // each revoke commits the transaction before its partitions move.
    let a = spawn_with(&addr, &prefix, "relay-a", rebalancing).await;
    let b = spawn_with(&addr, &prefix, "relay-b", rebalancing).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let c = spawn_with(&addr, &prefix, "relay-c", rebalancing).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    terminate(b).await;
    let got = read_committed(&addr, &prefix, expected_total()).await;
    terminate(a).await;
    terminate(c).await;
    check_exactly_once(&got);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_transaction_coordinator_killed_mid_stream_loses_and_repeats_nothing() {
    // Three nodes, every topic (the transaction log too) with three copies and two in sync.
    let cluster = tokio::task::spawn_blocking(|| KafkaCluster::up(3, None, None))
        .await
        .unwrap();
    let prefix = unique_prefix("eos-failover");
    fill(&cluster.bootstrap, &prefix, 3).await;
    let service = spawn(&cluster.bootstrap, &prefix, "relay-f").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // The node coordinating the service's transactions dies (SIGKILL) and comes back.
    let id = format!("{prefix}relay.relay-f");
    let victim = common::wire::coordinator_of(&cluster.addr(1), &id, 1).await;
    cluster.node(victim as usize, "kill");
    tokio::time::sleep(Duration::from_secs(5)).await;
    cluster.node(victim as usize, "start");
    tokio::task::block_in_place(|| cluster.wait_whole(3));
    let got = read_committed(&cluster.bootstrap, &prefix, expected_total()).await;
    terminate(service).await;
    check_exactly_once(&got);
}
