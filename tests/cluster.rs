//! Faults of a replicated cluster: a three-node Apache Kafka cluster of the test's own
//! (`scripts/kafka-dev kafka-up`, replication factor 3, `min.insync.replicas = 2`), whatever
//! broker the rest of the suite runs against. Inputs are written and outputs read back by an
//! independent client (rskafka), with exact counts and bounded waits.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use faststream::kafka::KafkaBroker;
use faststream::policy::dlq_header;
use faststream::{publisher, routes, subscriber, FastStream};
use rskafka::client::partition::{Compression, UnknownTopicHandling};
use rskafka::client::{Client, ClientBuilder};
use tokio::time::Instant;

const PARTITIONS: i32 = 3;

#[subscriber(
    "relay-in",
    group_id = "relay",
    auto_offset_reset = "earliest",
    session_timeout_ms = 6000,
    heartbeat_interval_ms = 500,
    commit_interval_ms = 200
)]
#[publisher("relay-out")]
async fn relay(n: u64) -> String {
    // About 1,000 messages a second per partition: the relay of 20,000 messages over three
    // partitions lasts several seconds, so a fault can be injected while it runs (a relay at
    // full speed finishes before a fresh cluster has taken the group's first commits).
    tokio::time::sleep(Duration::from_millis(1)).await;
    n.to_string()
}

async fn client(cluster: &KafkaCluster) -> Client {
    ClientBuilder::new(cluster.bootstrap.split(',').map(str::to_owned).collect())
        .build()
        .await
        .expect("connect to the cluster")
}

/// Creates `topic` with replication factor 3 and waits until every partition has a leader.
async fn create_replicated(client: &Client, topic: &str, partitions: i32) {
    client
        .controller_client()
        .unwrap()
        .create_topic(topic, partitions, 3, 10_000)
        .await
        .unwrap_or_else(|e| panic!("create {topic}: {e}"));
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let topics = client.list_topics().await.unwrap();
        if topics
            .iter()
            .any(|t| t.name == topic && t.partitions.len() as i32 == partitions)
        {
            return;
        }
        assert!(Instant::now() < deadline, "{topic} did not appear");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The node leading `partition` of `topic`, from the cluster's metadata.
async fn leader_of(cluster: &KafkaCluster, topic: &str, partition: i32) -> i32 {
    common::wire::leaders(&cluster.addr(1), topic).await[&partition]
}

/// Writes `0..n` spread over the partitions by number.
async fn produce_numbers(client: &Client, topic: &str, n: u64) {
    produce_range(client, topic, 0..n).await;
}

/// Writes the numbers of `range` spread over the partitions by number.
async fn produce_range(client: &Client, topic: &str, range: std::ops::Range<u64>) {
    let mut by_p: BTreeMap<i32, Vec<_>> = BTreeMap::new();
    for k in range {
        by_p.entry((k % PARTITIONS as u64) as i32)
            .or_default()
            .push(record(None, k.to_string().as_bytes(), &[]));
    }
    for (p, records) in by_p {
        let pc = client
            .partition_client(topic, p, UnknownTopicHandling::Retry)
            .await
            .unwrap();
        for chunk in records.chunks(1000) {
            pc.produce(chunk.to_vec(), Compression::NoCompression)
                .await
                .unwrap();
        }
    }
}

/// Reads a topic's partitions incrementally with a client of its own, riding out leader
/// changes and restarted brokers: a failed or slow lookup or fetch is tried again at the next
/// poll, on a fresh client.
struct Reader {
    bootstrap: Vec<String>,
    client: Option<Client>,
    topic: String,
    next: BTreeMap<i32, i64>,
    /// How often each output value was seen.
    seen: BTreeMap<u64, usize>,
}

impl Reader {
    fn new(cluster: &KafkaCluster, topic: &str) -> Self {
        Reader {
            bootstrap: cluster.bootstrap.split(',').map(str::to_owned).collect(),
            client: None,
            topic: topic.to_owned(),
            next: (0..PARTITIONS).map(|p| (p, 0)).collect(),
            seen: BTreeMap::new(),
        }
    }

    async fn poll(&mut self) {
        let limit = Duration::from_secs(5);
        if self.client.is_none() {
            let built = ClientBuilder::new(self.bootstrap.clone()).build();
            self.client = tokio::time::timeout(limit, built)
                .await
                .ok()
                .and_then(Result::ok);
        }
        let Some(client) = &self.client else {
            return;
        };
        let mut failed = false;
        for p in 0..PARTITIONS {
            let lookup =
                client.partition_client(self.topic.as_str(), p, UnknownTopicHandling::Retry);
            let Ok(Ok(pc)) = tokio::time::timeout(limit, lookup).await else {
                failed = true;
                continue;
            };
            loop {
                let from = self.next[&p];
                let fetched =
                    tokio::time::timeout(limit, pc.fetch_records(from, 1..4_000_000, 50)).await;
                let Ok(Ok((records, high))) = fetched else {
                    failed = true;
                    break;
                };
                for r in records.into_iter().filter(|r| r.offset >= from) {
                    self.next.insert(p, r.offset + 1);
                    *self.seen.entry(text(&r).parse().unwrap()).or_default() += 1;
                }
                if self.next[&p] >= high {
                    break;
                }
            }
        }
        if failed {
            self.client = None;
        }
    }

    fn distinct(&self) -> usize {
        self.seen.len()
    }

    fn duplicates(&self) -> usize {
        self.seen.values().map(|c| c - 1).sum()
    }
}

fn relay_app(cluster: &KafkaCluster, prefix: &str) -> FastStream<KafkaBroker> {
    init_logs();
    FastStream::new(
        KafkaBroker::builder(&cluster.bootstrap)
            .request_timeout(Duration::from_secs(10))
            .build(),
    )
    .with_routes(routes![relay])
    .topic_prefix(prefix)
}

/// The leader of the consumed and produced partitions is killed (-9) mid-relay: the service
/// finds the new leaders (and the coordinator, if it was there), every input gets its output,
/// and only what was finished since the last commit is repeated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_killed_mid_relay_loses_nothing() {
    const N: u64 = 20_000;
    let cluster = tokio::task::spawn_blocking(|| KafkaCluster::up(3, None, None))
        .await
        .unwrap();
    let client = client(&cluster).await;
    let prefix = unique_prefix("failover");
    let (input, output) = (format!("{prefix}relay-in"), format!("{prefix}relay-out"));
    create_replicated(&client, &input, PARTITIONS).await;
    create_replicated(&client, &output, PARTITIONS).await;
    produce_numbers(&client, &input, N).await;
    let victim = leader_of(&cluster, &input, 0).await;

    let service = start(relay_app(&cluster, &prefix)).await;
    let mut reader = Reader::new(&cluster, &output);
    // The group's commits have landed (a fresh cluster's offsets topic takes a moment to
    // accept them): what the kill may repeat is then bounded by the commit interval.
    let group = format!("{prefix}relay");
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let coordinator = common::wire::coordinator(&cluster.addr(1), &group).await;
        let mut committed = 0;
        for p in 0..PARTITIONS {
            let addr = cluster.addr(coordinator as usize);
            committed += common::wire::committed_partition(&addr, &group, &input, p)
                .await
                .max(0);
        }
        if committed >= 1_000 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no commit landed; log:\n{}",
            logs_about(&input)
        );
        reader.poll().await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let deadline = Instant::now() + TIMEOUT;
    while reader.distinct() < (N / 4) as usize {
        assert!(Instant::now() < deadline, "the relay did not start");
        reader.poll().await;
    }
    let before = reader.distinct();
    assert!(before < N as usize, "the relay was over before the kill");
    let killed_at = Instant::now();
    cluster.node(victim as usize, "kill");
    // Flow resumes: more outputs than at the kill, then all of them.
    let mut resumed = None;
    let deadline = Instant::now() + Duration::from_secs(120);
    while reader.distinct() < N as usize {
        assert!(
            Instant::now() < deadline,
            "{} of {N} inputs relayed 120 s after node {victim} was killed; log:\n{}",
            reader.distinct(),
            logs_about(&input)
        );
        reader.poll().await;
        if resumed.is_none() && reader.distinct() > before + 100 {
            resumed = Some(killed_at.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let all = killed_at.elapsed();
    service.stop().await.unwrap();
    reader.poll().await;
    println!(
        "leader (node {victim}) killed after {before} of {N} outputs: flow resumed after {:?}, \
         all relayed {all:?} after the kill, {} duplicate outputs",
        resumed.unwrap_or(all),
        reader.duplicates()
    );
    assert_eq!(reader.distinct(), N as usize);
    // A crash of a broker is not a crash of the service: what is repeated is bounded by what
    // was in flight when the connections broke (a produce retried without idempotence) and
    // the commits the lost coordinator did not take; far below the relayed total.
    assert!(
        reader.duplicates() < (N / 4) as usize,
        "{} duplicates; log:\n{}",
        reader.duplicates(),
        logs_about(&input)
    );
}

#[subscriber(
    "statics",
    group_id = "statics",
    auto_offset_reset = "earliest",
    session_timeout_ms = 10000,
    heartbeat_interval_ms = 500,
    commit_interval_ms = 200
)]
#[publisher("statics-out")]
async fn statics(n: u64) -> String {
    n.to_string()
}

/// Static membership (KIP-345): a member with a `group_instance_id` restarted within the
/// session timeout gets its partitions back, and the other member is not rebalanced (it sees
/// no revocation and no new assignment). Not checkable on Tansu, which refuses a restarted
/// static member for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_static_member_restarted_within_its_session_gets_its_partitions_back() {
    use std::sync::{Arc, Mutex};
    let cluster = tokio::task::spawn_blocking(|| KafkaCluster::up(3, None, None))
        .await
        .unwrap();
    let client = client(&cluster).await;
    let prefix = unique_prefix("static");
    let (input, output) = (format!("{prefix}statics"), format!("{prefix}statics-out"));
    create_replicated(&client, &input, 4).await;
    create_replicated(&client, &output, 1).await;
    let events: Arc<Mutex<Vec<String>>> = Arc::default();
    let member = |name: &'static str| {
        let (a, r) = (events.clone(), events.clone());
        init_logs();
        let broker = KafkaBroker::builder(&cluster.bootstrap)
            .group_instance_id(format!("{prefix}{name}"))
            .on_partitions_assigned(move |_, parts| {
                a.lock().unwrap().push(format!("{name} assigned {parts:?}"))
            })
            .on_partitions_revoked(move |_, parts| {
                r.lock().unwrap().push(format!("{name} revoked {parts:?}"))
            })
            .build();
        FastStream::new(broker)
            .with_routes(routes![statics])
            .topic_prefix(&prefix)
    };
    let a = start(member("a")).await;
    let b = start(member("b")).await;
    // Both hold partitions once the group settled on two members.
    let assigned = |who: &str| {
        events
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|e| e.starts_with(&format!("{who} assigned")))
            .cloned()
    };
    wait_for("b holds partitions", || {
        assigned("b").is_some_and(|e| !e.ends_with("[]"))
    })
    .await;
    wait_for("a holds the others", || {
        events
            .lock()
            .unwrap()
            .last()
            .is_some_and(|e| e.starts_with("a assigned"))
            || assigned("a").is_some_and(|e| e.matches('(').count() == 2)
    })
    .await;
    let a_before = assigned("a").unwrap();
    let b_events = |events: &Vec<String>| {
        events
            .iter()
            .filter(|e| e.starts_with('b'))
            .cloned()
            .collect::<Vec<_>>()
    };
    let b_before = b_events(&events.lock().unwrap());

    // a restarts within its session timeout: no LeaveGroup, the same instance id.
    a.stop().await.unwrap();
    let a = start(member("a")).await;
    assert_eq!(
        assigned("a").unwrap(),
        a_before,
        "a got its partitions back"
    );
    produce_numbers(&client, &input, 400).await;
    let out = read(&client, &output, 400).await;
    assert_eq!(out.values().flatten().count(), 400);
    let b_after = b_events(&events.lock().unwrap());
    assert_eq!(
        b_after, b_before,
        "the other member was not rebalanced while a restarted"
    );
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

/// The broker coordinating the group is killed (-9): the member finds the new coordinator and
/// keeps its generation and partitions (no revocation: losing the coordinator is not a
/// rebalance), and every input is relayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_coordinator_revokes_nothing_and_loses_nothing() {
    use std::sync::{Arc, Mutex};
    const N: u64 = 10_000;
    let cluster = tokio::task::spawn_blocking(|| KafkaCluster::up(3, None, None))
        .await
        .unwrap();
    let client = client(&cluster).await;
    let prefix = unique_prefix("coordinator");
    let (input, output) = (format!("{prefix}relay-in"), format!("{prefix}relay-out"));
    create_replicated(&client, &input, PARTITIONS).await;
    create_replicated(&client, &output, PARTITIONS).await;
    produce_numbers(&client, &input, N).await;
    let events: Arc<Mutex<Vec<String>>> = Arc::default();
    let (a, r) = (events.clone(), events.clone());
    init_logs();
    let broker = KafkaBroker::builder(&cluster.bootstrap)
        .request_timeout(Duration::from_secs(10))
        .on_partitions_assigned(move |_, parts| {
            a.lock().unwrap().push(format!("assigned {parts:?}"))
        })
        .on_partitions_revoked(move |_, parts| r.lock().unwrap().push(format!("revoked {parts:?}")))
        .build();
    let service = start(
        FastStream::new(broker)
            .with_routes(routes![relay])
            .topic_prefix(&prefix),
    )
    .await;
    let group = format!("{prefix}relay");
    let victim = common::wire::coordinator(&cluster.addr(1), &group).await;
    let mut reader = Reader::new(&cluster, &output);
    let deadline = Instant::now() + TIMEOUT;
    while reader.distinct() < (N / 4) as usize {
        assert!(Instant::now() < deadline, "the relay did not start");
        reader.poll().await;
    }
    cluster.node(victim as usize, "kill");
    let killed_at = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(120);
    while reader.distinct() < N as usize {
        assert!(
            Instant::now() < deadline,
            "{} of {N} relayed 120 s after the coordinator (node {victim}) was killed; log:\n{}",
            reader.distinct(),
            logs_about(&input)
        );
        reader.poll().await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Kafka notices the dead broker within its broker session timeout and moves the
    // coordinator; the member then commits through the new one: every partition's committed
    // position reaches the end there, with the member still holding its first assignment.
    let survivor = if victim == 1 { 2 } else { 1 };
    let deadline = Instant::now() + TIMEOUT;
    let moved_to = loop {
        let now = common::wire::coordinator(&cluster.addr(survivor), &group).await;
        if now != victim {
            break now;
        }
        assert!(Instant::now() < deadline, "the coordinator never moved");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let ends: Vec<i64> = (0..PARTITIONS)
        .map(|p| (0..N).filter(|k| k % PARTITIONS as u64 == p as u64).count() as i64)
        .collect();
    let coordinator = cluster.addr(moved_to as usize);
    let deadline = Instant::now() + TIMEOUT;
    for (p, end) in ends.iter().enumerate() {
        while common::wire::committed_partition(&coordinator, &group, &input, p as i32).await
            != *end
        {
            assert!(
                Instant::now() < deadline,
                "partition {p}: the commit of {end} never reached the new coordinator; log:\n{}",
                logs_about(&input)
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let events_before_stop = events.lock().unwrap().clone();
    service.stop().await.unwrap();
    println!(
        "coordinator (node {victim}) killed: moved to node {moved_to}, all relayed {:?} after \
         the kill, {} duplicate outputs",
        killed_at.elapsed(),
        reader.duplicates()
    );
    assert_ne!(moved_to, victim);
    assert_eq!(
        events_before_stop.len(),
        1,
        "one assignment, no revocation while the coordinator moved: {events_before_stop:?}"
    );
    assert_eq!(reader.distinct(), N as usize);
}

#[subscriber(
    "paced-in",
    group_id = "paced",
    auto_offset_reset = "earliest",
    session_timeout_ms = 6000,
    heartbeat_interval_ms = 500,
    commit_interval_ms = 200
)]
#[publisher("paced-out")]
async fn paced(n: u64) -> String {
    // Slow enough (about 200 messages/s over three partitions) that the relay is still under
    // way while the brokers restart.
    tokio::time::sleep(Duration::from_millis(15)).await;
    n.to_string()
}

/// Every broker restarted in turn (SIGTERM, a controlled shutdown, then started again) while
/// two members of a group relay: partitions and the coordinator move, nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_every_broker_loses_nothing() {
    const N: u64 = 16_000;
    let cluster = std::sync::Arc::new(
        tokio::task::spawn_blocking(|| KafkaCluster::up(3, None, None))
            .await
            .unwrap(),
    );
    let client = client(&cluster).await;
    let prefix = unique_prefix("rolling-brokers");
    let (input, output) = (format!("{prefix}paced-in"), format!("{prefix}paced-out"));
    create_replicated(&client, &input, PARTITIONS).await;
    create_replicated(&client, &output, PARTITIONS).await;
    produce_numbers(&client, &input, N).await;
    let member = || {
        init_logs();
        FastStream::new(
            KafkaBroker::builder(&cluster.bootstrap)
                .request_timeout(Duration::from_secs(10))
                .build(),
        )
        .with_routes(routes![paced])
        .topic_prefix(&prefix)
    };
    let a = start(member()).await;
    let b = start(member()).await;
    let started = Instant::now();
    let mut reader = Reader::new(&cluster, &output);
    while reader.distinct() < 1_000 {
        assert!(started.elapsed() < TIMEOUT, "the relay did not start");
        reader.poll().await;
    }
    let mut during = 0;
    let mut after_first = None;
    for node in 1..=3 {
        let c = cluster.clone();
        tokio::task::spawn_blocking(move || {
            c.node(node, "stop");
            c.node(node, "start");
            c.wait_whole(3);
        })
        .await
        .unwrap();
        reader.poll().await;
        during = reader.distinct();
        after_first.get_or_insert(during);
        println!(
            "{:?}: node {node} restarted, {during} relayed",
            started.elapsed()
        );
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while reader.distinct() < N as usize {
        assert!(
            Instant::now() < deadline,
            "{} of {N} relayed after a rolling restart of the brokers; log:\n{}",
            reader.distinct(),
            logs_about(&input)
        );
        reader.poll().await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "rolling restart of 3 brokers during a relay by 2 members: {N} inputs relayed in {:?} \
         ({during} by the end of the restarts), {} duplicate outputs",
        started.elapsed(),
        reader.duplicates()
    );
    a.stop().await.unwrap();
    b.stop().await.unwrap();
    assert!(
        after_first.unwrap() < N as usize,
        "the first restart happened while the relay was under way"
    );
    assert_eq!(reader.distinct(), N as usize);
}

#[subscriber(
    "quorum-in",
    group_id = "quorum",
    auto_offset_reset = "earliest",
    session_timeout_ms = 10000,
    heartbeat_interval_ms = 500,
    commit_interval_ms = 200
)]
#[publisher("quorum-out")]
async fn quorum(n: u64) -> String {
    n.to_string()
}

#[subscriber("late-in", auto_offset_reset = "earliest", dlq = "late-dlq")]
#[publisher("late-out")]
async fn late(n: u64) -> String {
    n.to_string()
}

/// Waits until node 1 lists `want` as the in-sync replicas of every partition of `topic`.
async fn await_in_sync(cluster: &KafkaCluster, topic: &str, want: &[i32]) {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let isr = common::wire::in_sync(&cluster.addr(1), topic).await;
        if isr.len() == PARTITIONS as usize && isr.values().all(|r| r == want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{topic}: in-sync replicas {isr:?}, waiting for {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Two of three brokers down (with a controller of its own, so the cluster keeps its quorum):
/// outputs, which need two in-sync replicas, are refused with NOT_ENOUGH_REPLICAS, retried and
/// held (nothing written, nothing skipped) until a broker is back, then all delivered within
/// the delivery timeout. Past the delivery timeout, the failure policy applies: the input is
/// dead-lettered with the broker's reason. Inputs and dead letters are topics that accept one
/// in-sync replica, so they can be written while two brokers are down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_brokers_down_hold_outputs_until_one_returns_then_past_the_delivery_timeout_dead_letter(
) {
    const N: u64 = 300;
    let cluster =
        tokio::task::spawn_blocking(|| KafkaCluster::up_with(3, &["--controller".to_owned()]))
            .await
            .unwrap();
    let client = client(&cluster).await;
    let prefix = unique_prefix("quorum");
    let alive = cluster.addr(1);
    let [input, output, late_in, late_out, dlq] =
        ["quorum-in", "quorum-out", "late-in", "late-out", "late-dlq"]
            .map(|t| format!("{prefix}{t}"));
    let one_replica = [("min.insync.replicas", "1")];
    for (topic, configs) in [
        (&input, &one_replica[..]),
        (&output, &[][..]),
        (&late_in, &one_replica[..]),
        (&late_out, &[][..]),
        (&dlq, &one_replica[..]),
    ] {
        common::wire::create_topic_with(&alive, topic, PARTITIONS, 3, configs).await;
        await_in_sync(&cluster, topic, &[1, 2, 3]).await;
    }
    produce_numbers(&client, &input, N).await;
    let service = start(relay_app_of(
        &cluster,
        &prefix,
        routes![quorum],
        Duration::from_secs(120),
    ))
    .await;
    let mut reader = Reader::new(&cluster, &output);
    let deadline = Instant::now() + TIMEOUT;
    while reader.distinct() < N as usize {
        assert!(Instant::now() < deadline, "the relay did not start");
        reader.poll().await;
    }

    // Two brokers down: node 1 leads every partition, alone in sync.
    cluster.node(2, "kill");
    cluster.node(3, "kill");
    await_in_sync(&cluster, &output, &[1]).await;
    await_in_sync(&cluster, &input, &[1]).await;
    let survivor = ClientBuilder::new(vec![alive.clone()])
        .build()
        .await
        .unwrap();
    produce_range(&survivor, &input, N..2 * N).await;
    // Held: the producer is refused (too few in-sync replicas) and retries; nothing of the
    // new inputs is written, nothing is dead-lettered.
    let deadline = Instant::now() + TIMEOUT;
    while !logs_about(&output).contains("NotEnoughReplicas") {
        assert!(
            Instant::now() < deadline,
            "no output refused for too few in-sync replicas; log:\n{}",
            logs_about(&input)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    reader.poll().await;
    assert_eq!(
        reader.distinct(),
        N as usize,
        "no output written without two in-sync replicas"
    );
    assert!(!logs_about(&output).contains("produce failed for good"));

    // One broker back: the held outputs are delivered, within the delivery timeout.
    let back_at = Instant::now();
    cluster.node(2, "start");
    let deadline = Instant::now() + Duration::from_secs(120);
    while reader.distinct() < 2 * N as usize {
        assert!(
            Instant::now() < deadline,
            "{} of {} relayed 120 s after node 2 came back; log:\n{}",
            reader.distinct(),
            2 * N,
            logs_about(&input)
        );
        reader.poll().await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let resumed = back_at.elapsed();
    service.stop().await.unwrap();
    reader.poll().await;
    println!(
        "two of three brokers down: outputs held, then delivered {resumed:?} after one came \
         back; {} duplicate outputs",
        reader.duplicates()
    );
    assert_eq!(reader.distinct(), 2 * N as usize);
    assert!(!logs_about(&output).contains("produce failed for good"));

    // Past the delivery timeout: dead-lettered, with the reason.
    cluster.node(2, "kill");
    await_in_sync(&cluster, &late_out, &[1]).await;
    await_in_sync(&cluster, &dlq, &[1]).await;
    produce_range(&survivor, &late_in, 0..6).await;
    let late_service = start(relay_app_of(
        &cluster,
        &prefix,
        routes![late],
        Duration::from_secs(3),
    ))
    .await;
    let parked = read(&survivor, &dlq, 6).await;
    late_service.stop().await.unwrap();
    let mut numbers: Vec<u64> = parked
        .values()
        .flatten()
        .map(|r| text(r).parse().unwrap())
        .collect();
    numbers.sort_unstable();
    assert_eq!(
        numbers,
        (0..6).collect::<Vec<_>>(),
        "every input dead-lettered once"
    );
    for r in parked.values().flatten() {
        let error = header(r, dlq_header::ERROR);
        assert!(
            error.contains("not delivered within the delivery timeout")
                && error.contains("NotEnoughReplicas"),
            "the dead letter says why: {error}"
        );
        assert_eq!(header(r, dlq_header::ERROR_KIND), "publish");
    }
    let late_reader = {
        let mut r = Reader::new(&cluster, &late_out);
        r.bootstrap = vec![alive.clone()];
        r.poll().await;
        r
    };
    assert_eq!(late_reader.distinct(), 0, "no output written");
}

fn header(r: &rskafka::record::RecordAndOffset, name: &str) -> String {
    r.record
        .headers
        .get(name)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .unwrap_or_else(|| panic!("no {name} header"))
}

fn relay_app_of(
    cluster: &KafkaCluster,
    prefix: &str,
    routes: Vec<&'static faststream::runtime::RouteDef>,
    delivery_timeout: Duration,
) -> FastStream<KafkaBroker> {
    init_logs();
    FastStream::new(
        KafkaBroker::builder(&cluster.bootstrap)
            .request_timeout(Duration::from_secs(10))
            .delivery_timeout(delivery_timeout)
            .build(),
    )
    .with_routes(routes)
    .topic_prefix(prefix)
}

/// What the `unclean` handler saw: each number, how often.
static UNCLEAN_SEEN: std::sync::Mutex<BTreeMap<u64, usize>> =
    std::sync::Mutex::new(BTreeMap::new());

#[subscriber("unclean-in", auto_offset_reset = "earliest")]
async fn unclean(n: u64) {
    *UNCLEAN_SEEN.lock().unwrap().entry(n).or_default() += 1;
}

/// Waits until the `unclean` handler saw every number of `want`.
async fn await_unclean_seen(want: std::ops::Range<u64>, topic: &str) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let missing: Vec<u64> = {
            let seen = UNCLEAN_SEEN.lock().unwrap();
            want.clone().filter(|n| !seen.contains_key(n)).collect()
        };
        if missing.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {want:?} never handled (first: {:?}); log:\n{}",
            missing.len(),
            &missing[..missing.len().min(10)],
            logs_about(topic)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A real unclean leader election (KIP-320 against Apache Kafka, no proxy): node A leads
/// every partition alone (the other two killed, `min.insync.replicas = 1`) and takes inputs
/// the others never see; the service reads them. Then A dies and node B, whose log ends
/// earlier, is made leader uncleanly, with a new leader epoch, and takes new inputs at the
/// offsets A had used. The consumer's next fetch names the epoch of what it last read: the new
/// leader answers where its log diverged from that, and the consumer reads on from there.
/// Every new input is handled once and no old one again (a consumer that only compares
/// offsets would skip the new inputs below its position, or reset and read everything again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unclean_leader_election_is_detected_and_the_new_log_read_from_where_it_diverged() {
    const OLD: u64 = 60;
    let cluster =
        tokio::task::spawn_blocking(|| KafkaCluster::up_with(3, &["--controller".to_owned()]))
            .await
            .unwrap();
    let prefix = unique_prefix("unclean");
    let input = format!("{prefix}unclean-in");
    let configs = [
        ("min.insync.replicas", "1"),
        ("unclean.leader.election.enable", "true"),
    ];
    common::wire::create_topic_with(&cluster.addr(1), &input, PARTITIONS, 3, &configs).await;
    await_in_sync(&cluster, &input, &[1, 2, 3]).await;
    let client = client(&cluster).await;
    // Every replica holds the first third.
    produce_range(&client, &input, 0..OLD / 3).await;
    init_logs();
    let service = start(
        FastStream::new(
            KafkaBroker::builder(&cluster.bootstrap)
                .request_timeout(Duration::from_secs(10))
                .build(),
        )
        .with_routes(routes![unclean])
        .topic_prefix(&prefix),
    )
    .await;
    await_unclean_seen(0..OLD / 3, &input).await;

    // Node 1 alone: it leads every partition and takes the rest of the old inputs.
    let (a, b) = (1usize, 2usize);
    cluster.node(2, "kill");
    cluster.node(3, "kill");
    await_in_sync(&cluster, &input, &[1]).await;
    let alone = ClientBuilder::new(vec![cluster.addr(a)])
        .build()
        .await
        .unwrap();
    produce_range(&alone, &input, OLD / 3..OLD).await;
    await_unclean_seen(0..OLD, &input).await;
    let before = common::wire::leader_epochs(&cluster.addr(a), &input).await;

    // Node 1 dies; node 2, which missed two thirds of the old inputs, leads uncleanly.
    cluster.node(a, "kill");
    cluster.node(b, "start");
    let deadline = Instant::now() + Duration::from_secs(90);
    let after = loop {
        assert!(Instant::now() < deadline, "node {b} did not come back");
        if tokio::net::TcpStream::connect(cluster.addr(b))
            .await
            .is_err()
        {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        let now = common::wire::leader_epochs(&cluster.addr(b), &input).await;
        if now.len() == PARTITIONS as usize && now.values().all(|(leader, _)| *leader == b as i32) {
            break now;
        }
        for (p, (leader, _)) in &now {
            if *leader != b as i32 {
                common::wire::elect_unclean(&cluster.addr(b), &input, *p).await;
            }
        }
        assert!(
            Instant::now() < deadline,
            "node {b} did not become leader: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for p in 0..PARTITIONS {
        assert!(
            after[&p].1 > before[&p].1,
            "partition {p}: a new leader epoch ({before:?} -> {after:?})"
        );
    }
    // New inputs, written where node 1 had written the old ones.
    let survivor = ClientBuilder::new(vec![cluster.addr(b)])
        .build()
        .await
        .unwrap();
    let (from, to) = (1_000, 1_000 + OLD);
    produce_range(&survivor, &input, from..to).await;
    let ends: BTreeMap<i32, i64> = {
        let mut ends = BTreeMap::new();
        for p in 0..PARTITIONS {
            let pc = survivor
                .partition_client(input.as_str(), p, UnknownTopicHandling::Retry)
                .await
                .unwrap();
            let end = pc
                .get_offset(rskafka::client::partition::OffsetAt::Latest)
                .await
                .unwrap();
            ends.insert(p, end);
        }
        ends
    };
    await_unclean_seen(from..to, &input).await;
    service.stop().await.unwrap();
    let seen = UNCLEAN_SEEN.lock().unwrap().clone();
    let logs = logs_about(&input);
    println!("unclean election: epochs {before:?} -> {after:?}, new log ends {ends:?}");
    let twice: Vec<(&u64, &usize)> = seen.iter().filter(|(_, c)| **c > 1).collect();
    assert!(
        twice.is_empty(),
        "handled more than once: {twice:?}; log:\n{logs}"
    );
    assert_eq!(
        seen.len() as u64,
        2 * OLD,
        "every old and new input handled, nothing else"
    );
    assert!(
        logs.contains("the leader's log was truncated below what was read"),
        "the truncation is reported; log:\n{logs}"
    );
}
