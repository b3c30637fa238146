//! Rebalances that stop nothing (Apache Kafka): the consumer group protocol of KIP-848
//! (`group_protocol = "consumer"`) against the classic protocol's eager rebalances. Three
//! members relay a topic of 12 partitions written to all the time; a fourth joins, then one
//! leaves. Per input partition the test measures the largest gap between two consecutive
//! outputs: under the consumer protocol a partition that did not move never pauses.
//!
//! KIP-848 is Kafka's: under the Tansu suite these tests start a Kafka node of their own.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use faststream::extract::{Partition, State};
use faststream::kafka::{GroupProtocol, KafkaBroker};
use faststream::{publisher, routes, subscriber, FastStream};
use rskafka::client::partition::UnknownTopicHandling;
use rskafka::client::{Client, ClientBuilder};

const PARTITIONS: i32 = 12;

#[derive(Clone)]
struct Instance(&'static str);

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis()
}

/// `input:member:partition:handled at (ms)`.
fn relayed(n: u64, me: &Instance, partition: Partition) -> String {
    format!("{n}:{}:{}:{}", me.0, partition.0, now_ms())
}

#[subscriber(
    "moves",
    group_id = "movers",
    group_protocol = "consumer",
    auto_offset_reset = "earliest",
    commit_interval_ms = 200
)]
#[publisher("moves-out")]
async fn consumer_protocol(n: u64, me: State<Instance>, partition: Partition) -> String {
    relayed(n, &me, partition)
}

#[subscriber(
    "moves",
    group_id = "movers",
    group_protocol = "classic",
    auto_offset_reset = "earliest",
    commit_interval_ms = 200
)]
#[publisher("moves-out")]
async fn eager(n: u64, me: State<Instance>, partition: Partition) -> String {
    relayed(n, &me, partition)
}

#[subscriber(
    "moves",
    group_id = "movers",
    assignor = "cooperative-sticky",
    auto_offset_reset = "earliest",
    commit_interval_ms = 200
)]
#[publisher("moves-out")]
async fn cooperative(n: u64, me: State<Instance>, partition: Partition) -> String {
    relayed(n, &me, partition)
}

async fn kafka_client(addr: &str) -> Client {
    ClientBuilder::new(vec![addr.to_owned()])
        .build()
        .await
        .unwrap()
}

/// Who holds which partition, as the members' rebalance hooks tell it.
#[derive(Clone, Default)]
struct Holdings(Arc<Mutex<BTreeMap<&'static str, BTreeSet<i32>>>>);

impl Holdings {
    fn of(&self, who: &'static str) -> BTreeSet<i32> {
        self.0.lock().unwrap().get(who).cloned().unwrap_or_default()
    }

    /// Whether `members` hold every partition between them, each its even share.
    fn settled(&self, members: &[&'static str]) -> bool {
        let all = self.0.lock().unwrap();
        let held: usize = members
            .iter()
            .map(|m| all.get(m).map_or(0, BTreeSet::len))
            .sum();
        let share = PARTITIONS as usize / members.len();
        held == PARTITIONS as usize
            && members
                .iter()
                .all(|m| all.get(m).is_some_and(|p| p.len() == share))
            && all
                .iter()
                .filter(|(m, _)| !members.contains(m))
                .all(|(_, p)| p.is_empty())
    }
}

fn member(
    addr: &str,
    prefix: &str,
    who: &'static str,
    routes: Vec<&'static faststream::runtime::RouteDef>,
    holdings: &Holdings,
    instance_id: Option<String>,
) -> FastStream<KafkaBroker> {
    init_logs();
    let (on, off) = (holdings.clone(), holdings.clone());
    let mut broker = KafkaBroker::builder(addr)
        .on_partitions_assigned(move |_, parts| {
            let mut all = on.0.lock().unwrap();
            all.entry(who)
                .or_default()
                .extend(parts.iter().map(|(_, p)| *p));
        })
        .on_partitions_revoked(move |_, parts| {
            let mut all = off.0.lock().unwrap();
            let held = all.entry(who).or_default();
            for (_, p) in parts {
                held.remove(p);
            }
        });
    if let Some(id) = instance_id {
        broker = broker.group_instance_id(id);
    }
    FastStream::new(broker.build())
        .with_routes(routes)
        .with_state(Instance(who))
        .topic_prefix(prefix)
}

/// Writes one input to every partition every 20 ms until stopped; returns how many it wrote.
/// `written` counts them as they go.
fn keep_writing(
    client: Arc<Client>,
    topic: String,
    written: Arc<AtomicU64>,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<u64>,
) {
    let (stop, mut stopped) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let mut partitions = Vec::new();
        for p in 0..PARTITIONS {
            let pc = client
                .partition_client(&topic, p, UnknownTopicHandling::Retry)
                .await
                .unwrap();
            partitions.push(pc);
        }
        let mut n = 0u64;
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = &mut stopped => return n,
            }
            for pc in &partitions {
                let r = record(None, n.to_string().as_bytes(), &[]);
                pc.produce(
                    vec![r],
                    rskafka::client::partition::Compression::NoCompression,
                )
                .await
                .unwrap();
                n += 1;
                written.store(n, Ordering::SeqCst);
            }
        }
    });
    (stop, task)
}

/// What the outputs say about one input partition.
#[derive(Debug)]
struct PartitionRun {
    owners: BTreeSet<String>,
    /// The largest time between two consecutive inputs' outputs.
    largest_gap: Duration,
}

/// Checks every input `0..written` was relayed; returns per input partition its owners and
/// largest gap, and the inputs relayed more than once.
fn analyse(
    out: &BTreeMap<i32, Vec<rskafka::record::RecordAndOffset>>,
    written: u64,
) -> (BTreeMap<i32, PartitionRun>, Vec<u64>) {
    let mut first: BTreeMap<u64, (String, i32, u128)> = BTreeMap::new();
    let mut duplicates = Vec::new();
    for r in out.values().flatten() {
        let t = text(r);
        let f: Vec<&str> = t.split(':').collect();
        let n: u64 = f[0].parse().unwrap();
        let at: u128 = f[3].parse().unwrap();
        if first.contains_key(&n) {
            duplicates.push(n);
            continue;
        }
        first.insert(n, (f[1].to_owned(), f[2].parse().unwrap(), at));
    }
    let lost: Vec<u64> = (0..written).filter(|n| !first.contains_key(n)).collect();
    assert!(lost.is_empty(), "inputs never relayed: {lost:?}");
    let mut runs: BTreeMap<i32, (BTreeSet<String>, Vec<u128>)> = BTreeMap::new();
    for (who, partition, at) in first.values() {
        let run = runs.entry(*partition).or_default();
        run.0.insert(who.clone());
        run.1.push(*at);
    }
    let runs = runs
        .into_iter()
        .map(|(p, (owners, times))| {
            let gap = times.windows(2).map(|w| w[1].saturating_sub(w[0])).max();
            let largest_gap = Duration::from_millis(gap.unwrap_or(0) as u64);
            (
                p,
                PartitionRun {
                    owners,
                    largest_gap,
                },
            )
        })
        .collect();
    (runs, duplicates)
}

/// Three members, a fourth joins, the first leaves; the inputs are written throughout.
/// Returns the per-partition runs and the duplicated inputs.
async fn join_and_leave(
    protocol: &str,
    route: Vec<&'static faststream::runtime::RouteDef>,
) -> (BTreeMap<i32, PartitionRun>, Vec<u64>) {
    let addr = tokio::task::spawn_blocking(apache_kafka).await.unwrap();
    let prefix = unique_prefix(protocol);
    let client = Arc::new(kafka_client(&addr).await);
    let (input, output) = (format!("{prefix}moves"), format!("{prefix}moves-out"));
    create_topic(&client, &input, PARTITIONS).await;
    create_topic(&client, &output, 1).await;
    let holdings = Holdings::default();
    let make = |who| member(&addr, &prefix, who, route.clone(), &holdings, None);
    let a = start(make("a")).await;
    let b = start(make("b")).await;
    let c = start(make("c")).await;
    wait_for("a, b and c share the partitions", || {
        holdings.settled(&["a", "b", "c"])
    })
    .await;
    let count = Arc::new(AtomicU64::new(0));
    let (stop_writing, writer) = keep_writing(client.clone(), input.clone(), count.clone());
    // Outputs catch up with 25 rounds of inputs before the fourth joins, after it took its
    // share, and after the first left.
    let caught_up = || async {
        wait_for("25 rounds written", || {
            count.load(Ordering::SeqCst) >= 12 * 25
        })
        .await;
        let now = count.load(Ordering::SeqCst) + 12 * 25;
        wait_for("25 more rounds written", || {
            count.load(Ordering::SeqCst) >= now
        })
        .await;
        read(&client, &output, now as usize).await;
    };
    caught_up().await;
    let d_started = now_ms();
    let d = start(make("d")).await;
    wait_for("d takes its share", || {
        holdings.settled(&["a", "b", "c", "d"])
    })
    .await;
    caught_up().await;
    a.stop().await.unwrap();
    wait_for("b, c and d share a's partitions", || {
        holdings.settled(&["b", "c", "d"])
    })
    .await;
    caught_up().await;
    let _ = stop_writing.send(());
    let written = writer.await.unwrap();
    let out = read(&client, &output, written as usize).await;
    for m in [b, c, d] {
        m.stop().await.unwrap();
    }
    let (runs, duplicates) = analyse(&out, written);
    let d_first = out
        .values()
        .flatten()
        .map(text)
        .filter(|t| t.split(':').nth(1) == Some("d"))
        .filter_map(|t| t.split(':').nth(3)?.parse::<u128>().ok())
        .min()
        .expect("d relayed");
    let unmoved = runs.values().filter(|r| r.owners.len() == 1);
    let moved = runs.values().filter(|r| r.owners.len() > 1);
    println!(
        "{protocol}: {written} inputs, {} duplicated; the joining member's first output after {:?}; largest gap: unmoved partitions {:?}, moved partitions {:?}",
        duplicates.len(),
        Duration::from_millis((d_first - d_started) as u64),
        unmoved.map(|r| r.largest_gap).max(),
        moved.map(|r| r.largest_gap).max(),
    );
    for (p, run) in &runs {
        println!(
            "{protocol}: partition {p:2}: owners {:?}, largest output gap {:?}",
            run.owners, run.largest_gap
        );
    }
    (runs, duplicates)
}

/// Under the consumer group protocol a member joining or leaving moves only the partitions
/// that change owner: every other partition goes on with no gap longer than a second, nothing
/// is lost, and (revoked partitions commit before they are released) nothing is repeated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_the_consumer_protocol_partitions_that_stay_never_pause() {
    let (runs, duplicates) = join_and_leave("consumer", routes![consumer_protocol]).await;
    only_moved_partitions_paused(&runs, &duplicates);
}

/// The same on the classic protocol with the `cooperative-sticky` assignor (KIP-429).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_cooperative_sticky_partitions_that_stay_never_pause() {
    let (runs, duplicates) = join_and_leave("cooperative", routes![cooperative]).await;
    only_moved_partitions_paused(&runs, &duplicates);
}

fn only_moved_partitions_paused(runs: &BTreeMap<i32, PartitionRun>, duplicates: &[u64]) {
    let stayed: Vec<_> = runs.values().filter(|r| r.owners.len() == 1).collect();
    assert!(
        !stayed.is_empty(),
        "some partitions kept their owner: {runs:?}"
    );
    for (p, run) in runs.iter().filter(|(_, r)| r.owners.len() == 1) {
        assert!(
            run.largest_gap < Duration::from_secs(1),
            "partition {p} never moved ({:?}) yet paused {:?}",
            run.owners,
            run.largest_gap
        );
    }
    assert!(
        duplicates.is_empty(),
        "graceful moves commit before the partition is released: {duplicates:?}"
    );
}

/// The same moves under the classic protocol's eager rebalances, for comparison: nothing is
/// lost, and every partition pauses at each rebalance (printed, not asserted: how long
/// depends on the members' timings).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_eager_rebalances_every_partition_pauses() {
    let (runs, duplicates) = join_and_leave("eager", routes![eager]).await;
    let gaps = runs.values().map(|r| r.largest_gap);
    let (least, most) = (gaps.clone().min().unwrap(), gaps.max().unwrap());
    println!("eager: largest output gap per partition between {least:?} and {most:?}");
    assert!(duplicates.is_empty(), "{duplicates:?}");
}

/// Static members (`group_instance_id`) restarted one after the other under the consumer
/// protocol: each gets its partitions back, the others see no change, nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_members_restarted_one_by_one_keep_their_partitions() {
    static_members_restarted("static848", routes![consumer_protocol]).await;
}

/// The same on the classic protocol (KIP-345): a restart within the session timeout rejoins
/// with its instance id and gets its partitions back without a rebalance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classic_static_members_restarted_one_by_one_keep_their_partitions() {
    static_members_restarted("static345", routes![eager]).await;
}

async fn static_members_restarted(name: &str, route: Vec<&'static faststream::runtime::RouteDef>) {
    let addr = tokio::task::spawn_blocking(apache_kafka).await.unwrap();
    let prefix = unique_prefix(name);
    let client = Arc::new(kafka_client(&addr).await);
    let (input, output) = (format!("{prefix}moves"), format!("{prefix}moves-out"));
    create_topic(&client, &input, PARTITIONS).await;
    create_topic(&client, &output, 1).await;
    let holdings = Holdings::default();
    let make = |who: &'static str| {
        member(
            &addr,
            &prefix,
            who,
            route.clone(),
            &holdings,
            Some(format!("{prefix}{who}")),
        )
    };
    let mut members = BTreeMap::new();
    for who in ["a", "b", "c"] {
        members.insert(who, start(make(who)).await);
    }
    wait_for("a, b and c share the partitions", || {
        holdings.settled(&["a", "b", "c"])
    })
    .await;
    let count = Arc::new(AtomicU64::new(0));
    let (stop_writing, writer) = keep_writing(client.clone(), input.clone(), count.clone());
    let settled: BTreeMap<_, _> = ["a", "b", "c"]
        .into_iter()
        .map(|w| (w, holdings.of(w)))
        .collect();
    for who in ["a", "b", "c"] {
        // Outputs catch up with 10 more rounds of inputs before each restart.
        let now = count.load(Ordering::SeqCst) + 12 * 10;
        wait_for("10 more rounds written", || {
            count.load(Ordering::SeqCst) >= now
        })
        .await;
        read(&client, &output, now as usize).await;
        members.remove(who).unwrap().stop().await.unwrap();
        members.insert(who, start(make(who)).await);
        wait_for("the restarted member holds its partitions again", || {
            holdings.of(who) == settled[who]
        })
        .await;
        for other in ["a", "b", "c"] {
            assert_eq!(
                holdings.of(other),
                settled[other],
                "{other}'s partitions after {who} restarted"
            );
        }
    }
    let _ = stop_writing.send(());
    let written = writer.await.unwrap();
    let out = read(&client, &output, written as usize).await;
    for (_, m) in members {
        m.stop().await.unwrap();
    }
    let (runs, _) = analyse(&out, written);
    for (p, run) in &runs {
        assert_eq!(run.owners.len(), 1, "partition {p} moved: {:?}", run.owners);
    }
}

#[subscriber(
    "slow",
    group_id = "slow",
    group_protocol = "consumer",
    auto_offset_reset = "earliest",
    rebalance_timeout_ms = 3000
)]
#[publisher("slow-out")]
async fn slowpoke(n: u64, me: State<Instance>, partition: Partition) -> String {
    // Longer than the broker's heartbeat interval (5 s by default: when the member learns
    // of the revocation) plus the drain limit.
    tokio::time::sleep(Duration::from_secs(12)).await;
    relayed(n, &me, partition)
}

/// Under the consumer protocol a handler that outlives the rebalance timeout while its
/// partition is revoked is named in the log with the setting to raise, its message is left
/// uncommitted, and the group goes on: the new owner handles it, every input is relayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_outliving_the_rebalance_timeout_is_named_and_the_group_goes_on() {
    let addr = tokio::task::spawn_blocking(apache_kafka).await.unwrap();
    let prefix = unique_prefix("slow848");
    let client = kafka_client(&addr).await;
    let (input, output) = (format!("{prefix}slow"), format!("{prefix}slow-out"));
    create_topic(&client, &input, 2).await;
    create_topic(&client, &output, 1).await;
    let holdings = Holdings::default();
    let make = |who| member(&addr, &prefix, who, routes![slowpoke], &holdings, None);
    let a = start(make("a")).await;
    wait_for("a holds both partitions", || holdings.of("a").len() == 2).await;
    for p in 0..2 {
        let r = record(None, p.to_string().as_bytes(), &[]);
        produce(&client, &input, p, vec![r]).await;
    }
    // a is in both handlers when b joins and takes one partition.
    let b = start(make("b")).await;
    wait_for("b takes a partition", || holdings.of("b").len() == 1).await;
    let out = read(&client, &output, 2).await;
    let relayed: BTreeSet<u64> = out
        .values()
        .flatten()
        .map(|r| text(r).split(':').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(relayed, BTreeSet::from([0, 1]));
    let logs = logs_about(&input);
    assert!(
        logs.contains("slowpoke")
            && logs.contains("did not finish within the rebalance timeout")
            && logs.contains("rebalance_timeout_ms"),
        "the abandoned handler is named with the setting to raise:\n{logs}"
    );
    b.stop().await.unwrap();
    a.stop().await.unwrap();
}

/// `KAFKA_GROUP_PROTOCOL` (read by `KafkaBroker::builder_from_env`, as the examples do) puts
/// routes that do not set `group_protocol` on the consumer protocol; a value it does not know
/// stops the service naming the variable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_group_protocol_is_taken_from_the_environment() {
    let addr = tokio::task::spawn_blocking(apache_kafka).await.unwrap();
    let prefix = unique_prefix("env848");
    let client = kafka_client(&addr).await;
    let (input, output) = (format!("{prefix}jobs"), format!("{prefix}jobs-done"));
    create_topic(&client, &input, 2).await;
    create_topic(&client, &output, 1).await;
    let env = [
        ("KAFKA_BOOTSTRAP", addr.as_str()),
        ("KAFKA_GROUP_PROTOCOL", "consumer"),
    ];
    let (worker, log) = spawn_example_logged("group_worker", &prefix, &env).await;
    for p in 0..2 {
        let r = record(None, p.to_string().as_bytes(), &[]);
        produce(&client, &input, p, vec![r]).await;
    }
    read(&client, &output, 2).await;
    terminate(worker).await;
    let log = log.lock().unwrap().clone();
    assert!(
        log.contains("target assignment"),
        "a consumer-protocol member logs the broker's assignment:\n{log}"
    );
    let refused = tokio::process::Command::new(example("group_worker"))
        .env("KAFKA_BOOTSTRAP", &addr)
        .env("TOPIC_PREFIX", &prefix)
        .env("KAFKA_GROUP_PROTOCOL", "eager")
        .output()
        .await
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&refused.stdout),
        String::from_utf8_lossy(&refused.stderr)
    );
    assert!(!refused.status.success(), "{said}");
    // `main` returning the error prints it with `Debug` (quotes escaped).
    assert!(
        said.contains("KAFKA_GROUP_PROTOCOL=") && said.contains("eager"),
        "{said}"
    );
}

/// A broker without KIP-848 (Tansu 0.6): startup fails naming the option to change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_without_the_consumer_protocol_is_named_at_startup() {
    let (tansu, addr) = OwnBroker::tansu().await;
    let client = kafka_client(&addr).await;
    let prefix = unique_prefix("no848");
    create_topic(&client, &format!("{prefix}moves"), 1).await;
    init_logs();
    let app = FastStream::new(
        KafkaBroker::builder(&addr)
            .group_protocol(GroupProtocol::Consumer)
            .build(),
    )
    .with_routes(routes![consumer_protocol])
    .with_state(Instance("x"))
    .topic_prefix(&prefix);
    let err = tokio::time::timeout(TIMEOUT, app.run_until(std::future::pending()))
        .await
        .expect("startup ends")
        .expect_err("startup fails")
        .to_string();
    assert!(
        err.contains("group_protocol = \"classic\"") && err.contains("ConsumerGroupHeartbeat"),
        "{err}"
    );
    tansu.stop().await;
}
