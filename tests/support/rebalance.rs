//! The rebalance scenario of `tests/rebalance.rs` and `benches/rebalance.rs`: members relay a
//! topic of 12 partitions written to all the time while a fourth member joins and the first
//! leaves; per input partition, its owners and the largest gap between two consecutive outputs.
//! Both crates declare `common` (tests/common) at their root.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::common::*;
use faststream::extract::{Partition, State};
use faststream::kafka::KafkaBroker;
use faststream::{publisher, subscriber, FastStream};
use rskafka::client::partition::UnknownTopicHandling;
use rskafka::client::Client;

pub(crate) const PARTITIONS: i32 = 12;

#[derive(Clone)]
pub(crate) struct Instance(pub(crate) &'static str);

pub(crate) fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis()
}

/// `input:member:partition:handled at (ms)`.
pub(crate) fn relayed(n: u64, me: &Instance, partition: Partition) -> String {
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
pub(crate) async fn consumer_protocol(n: u64, me: State<Instance>, partition: Partition) -> String {
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
pub(crate) async fn eager(n: u64, me: State<Instance>, partition: Partition) -> String {
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
pub(crate) async fn cooperative(n: u64, me: State<Instance>, partition: Partition) -> String {
    relayed(n, &me, partition)
}

/// Who holds which partition, as the members' rebalance hooks tell it.
#[derive(Clone, Default)]
pub(crate) struct Holdings(Arc<Mutex<BTreeMap<&'static str, BTreeSet<i32>>>>);

impl Holdings {
    pub(crate) fn of(&self, who: &'static str) -> BTreeSet<i32> {
        self.0.lock().unwrap().get(who).cloned().unwrap_or_default()
    }

    /// Whether `members` hold every partition between them, each its even share.
    pub(crate) fn settled(&self, members: &[&'static str]) -> bool {
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

pub(crate) fn member(
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
pub(crate) fn keep_writing(
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
pub(crate) struct PartitionRun {
    pub(crate) owners: BTreeSet<String>,
    /// The largest time between two consecutive inputs' outputs.
    pub(crate) largest_gap: Duration,
}

/// Checks every input `0..written` was relayed; returns per input partition its owners and
/// largest gap, and the inputs relayed more than once.
pub(crate) fn analyse(
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

/// What one run of [`join_and_leave`] saw.
#[derive(Debug)]
pub(crate) struct Moves {
    /// Per input partition.
    pub(crate) runs: BTreeMap<i32, PartitionRun>,
    /// Inputs relayed more than once.
    pub(crate) duplicates: Vec<u64>,
    /// Inputs written (each relayed, checked).
    pub(crate) written: u64,
    /// From the fourth member's start to its first output.
    pub(crate) first_output: Duration,
}

impl Moves {
    /// The largest gap of the partitions that kept their owner (`true`) or moved (`false`).
    pub(crate) fn largest_gap(&self, stayed: bool) -> Option<Duration> {
        self.runs
            .values()
            .filter(|r| (r.owners.len() == 1) == stayed)
            .map(|r| r.largest_gap)
            .max()
    }
}

/// Three members, a fourth joins, the first leaves; the inputs are written throughout.
pub(crate) async fn join_and_leave(
    protocol: &str,
    route: Vec<&'static faststream::runtime::RouteDef>,
) -> Moves {
    let addr = tokio::task::spawn_blocking(apache_kafka).await.unwrap();
    let prefix = unique_prefix(protocol);
    let client = Arc::new(client_at(&addr).await);
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
    Moves {
        runs,
        duplicates,
        written,
        first_output: Duration::from_millis((d_first - d_started) as u64),
    }
}
