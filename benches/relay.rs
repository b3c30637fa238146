//! The framework's cost over the raw client, measured side by side in one run.
//!
//! ```sh
//! scripts/kafka-dev run -- cargo bench --bench relay                      # N = 200000, P = 3
//! scripts/kafka-dev run -- cargo bench --bench relay -- --messages 1000000 --partitions 3
//! scripts/kafka-dev run --kafka -- cargo bench --bench relay -- --rounds 2 --only framework,framework-plain
//! scripts/kafka-dev run --kafka -- cargo bench --bench relay -- --partitions 3,256 --only framework-group
//! ```
//!
//! `--partitions 3,256` runs every row at each partition count in the same run (idle rows at
//! the largest only) and prints each count's rows against the first count's. Before the
//! measured rows, each relay row runs unmeasured at each partition count, up to 30 times
//! (`--warm-up ROWS` sets the most, `--no-warm-up` skips it), until the broker's JIT compiler
//! took less than 15 % of the broker's CPU during one: a freshly started broker on the JVM
//! compiles its hot paths for minutes (its compiler threads took half its CPU during the first
//! rows at P = 256, and the paths of 256 partitions are not those of 3), which made whichever
//! rows ran first pay for it. At P = 256 that took 10 to 15 rows: with at most 8 or 12, the
//! measured rows at P = 256 ran beside a compiler still taking half the broker's CPU, on the
//! same two cores as the relay. Each row's share of the broker's CPU that went to its JIT is
//! printed beside the broker's CPU.
//!
//! Where the partition count changes from one row to the next (rounds run every count in
//! turn), a row runs unmeasured first (`--no-settle` skips it): the first row at P = 256 after
//! rows at P = 3 used about a fifth more CPU per message than the rows after it, whichever
//! build ran in it (the same build as both `framework-group` and `framework-group@base`), and
//! the rotation of rows gave that place to the same row in most rounds. (That was before each
//! row's topics were deleted and every row warmed up; a run after it showed no such penalty,
//! so the unmeasured row is a guard.)
//!
//! With `RELAY_CHILD_LOGS=DIR`, each child's log goes to a file of its own in DIR, at the level
//! `RUST_LOG` sets (the framework's, or the peer's stderr).
//!
//! Pre-fills one input topic per relay with N seed-shaped JSON messages over P partitions, then
//! runs, each in a child process of its own (so CPU time and peak RSS are that relay's alone):
//! - `raw`: a relay written directly on rskafka (fetch each partition, parse, format, produce
//!   each fetched batch with a bounded window of requests in flight), writing no headers;
//! - `raw-headers`: the same, writing FastStream's two headers (`content-type`, and a
//!   `correlation_id` of the same length as the framework's): byte-for-byte the framework's
//!   output, so `framework / raw-headers` compares the same work (and `bare / raw` too);
//! - `framework`: the seed handler (`#[subscriber]` + `#[publisher]`) on `KafkaBroker`;
//! - `framework-bare`: the same with `compat_headers(false)` (no FastStream headers);
//! - `framework-plain`: `framework` with `idempotence(false)` (no producer id or sequence
//!   numbers), the baseline of the idempotent producer's cost (`idem / plain`);
//! - `framework-group`: the seed relay in a consumer group, as the seed example runs it (group
//!   protocol, heartbeats, periodic commits);
//! - `framework-eos`: `framework-group` with `exactly_once = true` (outputs and offsets
//!   committed in one transaction per commit interval; timed until the group's committed
//!   offsets reach N, so the last transaction is in), against `framework-group` (`eos / group`);
//! - `framework-batch`: the seed handler as a batch handler (`batch = true`,
//!   `max_records = 500`, `batch_timeout_ms = 0`), same output as `framework`;
//! - `framework-metrics` (built with `--features prometheus` only): the seed relay with
//!   `FastStream::prometheus` (the Prometheus recorder installed, `/metrics` served), beside
//!   `framework`, which then has the metrics compiled in but no recorder;
//! - `pipeline`: the framework's handler pipeline alone, in memory (no network).
//!
//! - `idle`: the group relay on P partitions that stay quiet, watched for `--idle-seconds`
//!   (20) once it has its partitions: the CPU it costs itself and the broker while nothing
//!   arrives (printed as % of one core), and the sockets it holds;
//! - `<row>@base` (with `--baseline PATH`, another build of this benchmark, such as an
//!   earlier commit's `target/release/deps/relay-*`): the same row with its child from that
//!   build, so a change is measured against what it replaces in the same run (by default
//!   `framework@base`, `framework-group@base` and `idle@base` are added).
//! - `librdkafka` and `idle@librdkafka` (with `--peer PATH`, the binary of
//!   `benches/librdkafka-peer`, a crate outside the workspace: `cargo build --release
//!   --manifest-path benches/librdkafka-peer/Cargo.toml`): the `framework-group` and `idle` rows
//!   with a consumer-group relay written directly on librdkafka (rust-rdkafka) as the child, so
//!   `group / rdkafka` compares the seed relay with the C client's in the same run (the last
//!   round's rows; every round's, with their median, at the end of the run, and what the idle
//!   rows cost the broker).
//! - `io-seq` and `io-par`: an I/O-bound handler (waits 5 ms, then answers) over keyed input
//!   (1000 keys), one message at a time per partition and with `concurrency = 100`, on N / 50
//!   messages (at least 3000).
//!
//! The parent process times each relay child from its start until the output topic holds all
//! N messages (it polls the partitions' high watermarks itself, every 20 ms in one Fetch
//! request for all of them that reads next to nothing, so the polling costs the measured
//! process nothing and the broker about the same at every partition count), checks the count is exactly N, counts the sockets the child holds at that
//! moment (from `/proc`, printed as `tcp/all`: its TCP sockets, then all its sockets, which
//! include local ones such as the socket pair of tokio's signal handling), then stops the child, which
//! reports its CPU time and peak RSS. With `KAFKA_BROKER_PID` set (`scripts/kafka-dev run` sets it), the broker's
//! own CPU per message during each row is printed too: the broker shares the machine's cores.

use std::collections::VecDeque;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use faststream::kafka::KafkaBroker;
use faststream::{publisher, routes, subscriber, FastStream};
use rskafka::client::partition::{Compression, PartitionClient, UnknownTopicHandling};
use rskafka::client::{Client, ClientBuilder};
use rskafka::record::Record;
use serde::Deserialize;

/// Every relay (raw and framework alike) runs on mimalloc, as the examples do and the guide
/// (docs/guide/performance.md) recommends for services; without transparent huge pages
/// (`MIMALLOC_ALLOW_THP=0`, see [`MIMALLOC_THP`]), as the guide recommends where memory counts.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's switch for transparent huge pages: on (its default), a 2 MiB page counts in RSS
/// as soon as one byte of it is touched. The children run with it off unless it is set
/// (`MIMALLOC_ALLOW_THP=1` to measure with mimalloc's default).
const MIMALLOC_THP: &str = "MIMALLOC_ALLOW_THP";

fn mimalloc_thp() -> String {
    std::env::var(MIMALLOC_THP).unwrap_or_else(|_| "0".into())
}

#[subscriber("in_topic", auto_offset_reset = "earliest")]
#[publisher("out-topic")]
async fn handle_msg(user: String, user_id: i64) -> String {
    format!("User: {user_id} - {user} registered")
}

/// The seed handler in a consumer group with `exactly_once = true`: outputs and offsets
/// committed in one transaction per commit interval (1 s).
#[subscriber(
    "in_topic",
    group_id = "relay-eos",
    auto_offset_reset = "earliest",
    exactly_once = true
)]
#[publisher("out-topic")]
async fn handle_msg_eos(user: String, user_id: i64) -> String {
    format!("User: {user_id} - {user} registered")
}

/// The seed handler as the seed example runs it: in a consumer group (offsets committed).
#[subscriber("in_topic", group_id = "relay", auto_offset_reset = "earliest")]
#[publisher("out-topic")]
async fn handle_msg_group(user: String, user_id: i64) -> String {
    FIRST.call_once(|| println!("first {}", STARTED.elapsed().as_secs_f64()));
    format!("User: {user_id} - {user} registered")
}

/// When this process started, and the group relay's first message: the child prints
/// `first <seconds since its start>` when its handler is first called (so the parent reports
/// startup to the first output, the group's join included).
static STARTED: std::sync::LazyLock<Instant> = std::sync::LazyLock::new(Instant::now);
static FIRST: std::sync::Once = std::sync::Once::new();

/// The seed message as one element of a batch.
#[derive(Deserialize)]
struct Registration {
    user: String,
    user_id: i64,
}

/// The seed handler as a batch handler: up to 500 messages at once, one output each.
#[subscriber(
    "in_topic",
    auto_offset_reset = "earliest",
    batch = true,
    max_records = 500,
    batch_timeout_ms = 0
)]
#[publisher("out-topic")]
async fn handle_batch(users: Vec<Registration>) -> Vec<String> {
    users
        .into_iter()
        .map(|u| format!("User: {} - {} registered", u.user_id, u.user))
        .collect()
}

/// The I/O-bound handler: a 5 ms wait (a database, an API), one message at a time.
#[subscriber("in_topic", auto_offset_reset = "earliest")]
#[publisher("out-topic")]
async fn io_seq(user: String, user_id: i64) -> String {
    tokio::time::sleep(Duration::from_millis(5)).await;
    format!("User: {user_id} - {user} registered")
}

/// The same with `concurrency = 100`.
#[subscriber("in_topic", auto_offset_reset = "earliest", concurrency = 100)]
#[publisher("out-topic")]
async fn io_par(user: String, user_id: i64) -> String {
    tokio::time::sleep(Duration::from_millis(5)).await;
    format!("User: {user_id} - {user} registered")
}

/// Messages of the I/O-bound rows.
fn io_messages(args: &Args) -> usize {
    (args.messages / 50).max(3000)
}

#[derive(Debug, Clone)]
struct Args {
    messages: usize,
    /// The partition count of a child's topics (the first of `partition_counts` in the parent).
    partitions: i32,
    /// The parent's partition counts (`--partitions 3,256`): every row runs at each, in the same
    /// run, and each count is compared with the first.
    partition_counts: Vec<i32>,
    /// How many unmeasured rows the parent runs at most at each partition count before the
    /// measured ones (0: none): a broker on the JVM compiles its hot paths during the first
    /// relays it serves, which would otherwise cost the first rows. It stops sooner once the
    /// broker's compiler took less than [`WARM_JIT`] of its CPU during a warm-up row.
    warm_up: usize,
    /// Whether a row runs unmeasured first where the partition count changes between rows.
    settle: bool,
    child: Option<String>,
    prefix: String,
    only: Option<String>,
    /// How many times the rows run, in turn (ABC, BCA, CAB, ...): ratios use the last round,
    /// when a broker on the JVM has warmed up.
    rounds: usize,
    /// Another build of this benchmark (an earlier commit's): rows named `<kind>@base` run
    /// their child from it, beside this build's rows in the same run.
    baseline: Option<String>,
    /// The librdkafka peer relay's binary (`benches/librdkafka-peer`), for the `librdkafka`
    /// rows.
    peer: Option<String>,
    /// How long the `idle` rows watch a service on quiet partitions.
    idle_seconds: u64,
}

fn parse_args() -> Args {
    let mut args = Args {
        messages: 200_000,
        partitions: 3,
        partition_counts: vec![3],
        warm_up: 30,
        settle: true,
        child: None,
        prefix: String::new(),
        only: None,
        rounds: 1,
        baseline: None,
        peer: None,
        idle_seconds: 20,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--messages" => {
                args.messages = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--messages N")
            }
            "--partitions" => {
                args.partition_counts = it
                    .next()
                    .and_then(|v| v.split(',').map(|p| p.parse().ok()).collect())
                    .filter(|ps: &Vec<i32>| !ps.is_empty() && ps.iter().all(|p| *p > 0))
                    .expect("--partitions P or P1,P2,..");
                args.partitions = args.partition_counts[0];
            }
            "--no-warm-up" => args.warm_up = 0,
            "--no-settle" => args.settle = false,
            "--warm-up" => {
                args.warm_up = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--warm-up ROWS")
            }
            "--child" => args.child = it.next(),
            "--prefix" => args.prefix = it.next().expect("--prefix P"),
            "--only" => args.only = it.next(),
            "--baseline" => args.baseline = it.next(),
            "--peer" => args.peer = it.next(),
            "--idle-seconds" => {
                args.idle_seconds = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--idle-seconds S")
            }
            "--rounds" => {
                args.rounds = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|r| *r > 0)
                    .expect("--rounds R (1 or more)")
            }
            _ => {} // `cargo bench` passes --bench
        }
    }
    args
}

fn bootstrap() -> String {
    std::env::var("KAFKA_BOOTSTRAP").expect(
        "KAFKA_BOOTSTRAP is not set: run as `scripts/kafka-dev run -- cargo bench --bench relay`",
    )
}

#[derive(Debug, Deserialize)]
struct Seed {
    user: String,
    user_id: i64,
}

/// Figures a child reports on its last stdout line.
#[derive(Debug, Clone, Copy)]
struct Figures {
    seconds: f64,
    cpu_seconds: f64,
    peak_rss_kib: u64,
    /// The broker's CPU time during the row (when its pid is known), and its JIT compiler's.
    broker_cpu: Option<BrokerCpu>,
    /// Sockets the relay held once its output was complete (networked rows, on Linux).
    sockets: Option<Sockets>,
}

/// The sockets a process holds: its TCP connections and listeners, and all its sockets
/// (TCP ones plus local ones such as the socket pair tokio's signal handling keeps), from
/// `/proc` (`None` without it).
#[derive(Debug, Clone, Copy)]
struct Sockets {
    tcp: usize,
    all: usize,
}

impl std::fmt::Display for Sockets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.tcp, self.all)
    }
}

fn sockets_of(pid: u32) -> Option<Sockets> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter_map(|target| {
            let target = target.to_string_lossy().into_owned();
            Some(
                target
                    .strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .to_owned(),
            )
        })
        .collect();
    // The inode is the tenth column of /proc/<pid>/net/tcp{,6}.
    let mut tcp_inodes = std::collections::HashSet::new();
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            if let Some(inode) = line.split_whitespace().nth(9) {
                tcp_inodes.insert(inode.to_owned());
            }
        }
    }
    Some(Sockets {
        tcp: inodes.iter().filter(|i| tcp_inodes.contains(*i)).count(),
        all: inodes.len(),
    })
}

fn main() {
    std::sync::LazyLock::force(&STARTED);
    let args = parse_args();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    match args.child.clone() {
        Some(kind) => rt.block_on(child(&kind, &args)),
        None => rt.block_on(parent(args)),
    }
}

async fn parent(args: Args) {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let client = ClientBuilder::new(vec![bootstrap()]).build().await.unwrap();
    println!(
        "relay benchmark: N = {} messages, P = {:?} partitions, broker {}, {MIMALLOC_THP}={}",
        args.messages,
        args.partition_counts,
        bootstrap(),
        mimalloc_thp()
    );
    let mut results = Vec::new();
    let mut kinds = vec![
        "raw",
        "raw-headers",
        "framework",
        "framework-bare",
        "framework-plain",
        "framework-group",
        "framework-eos",
        "framework-batch",
        "pipeline",
        "test-broker",
        "io-seq",
        "io-par",
    ];
    if cfg!(feature = "prometheus") {
        kinds.insert(3, "framework-metrics");
    }
    kinds.push("idle");
    if args.baseline.is_some() {
        kinds.extend(["framework@base", "framework-group@base", "idle@base"]);
    }
    if args.peer.is_some() {
        kinds.extend(["librdkafka", "idle@librdkafka"]);
    }
    kinds.retain(|kind| {
        args.only
            .as_deref()
            .is_none_or(|o| o.split(',').any(|k| k == *kind))
    });
    // Every row at every partition count (idle rows at the largest only); each round starts
    // one row later than the last, so that no build always runs first (on a broker still busy
    // with the previous round's work) or always right after another.
    let largest = *args
        .partition_counts
        .iter()
        .max()
        .expect("a partition count");
    let mut rows: Vec<(i32, &str)> = Vec::new();
    for &p in &args.partition_counts {
        rows.extend(
            kinds
                .iter()
                .filter(|k| !k.starts_with("idle") || p == largest)
                .map(|k| (p, *k)),
        );
    }
    let rounds = (0..args.rounds).flat_map(|round| {
        let mut order = rows.clone();
        if !order.is_empty() {
            let turn = round % order.len();
            order.rotate_left(turn);
        }
        order
    });
    let mut row = 0;
    // Unmeasured first, at each partition count (the broker's paths of 256 partitions are
    // not those of 3) and for each relay row (another client's requests take other paths):
    // until the broker's JIT compiler has settled.
    for &p in args.partition_counts.iter().filter(|_| args.warm_up > 0) {
        let mut args = args.clone();
        args.partitions = p;
        for &(_, kind) in rows
            .iter()
            .filter(|(at, k)| *at == p && !k.starts_with("idle"))
        {
            for i in 1..=args.warm_up {
                let prefix = format!("bench{stamp}-{row}-warm-{}.", kind.replace('@', "-"));
                row += 1;
                let figures = run_row(&client, &args, &prefix, kind).await;
                println!(
                    "  warm-up {i}: {kind} at P = {p} (not counted): the broker's JIT took {} of its CPU",
                    jit_share(figures.broker_cpu)
                );
                match figures.broker_cpu {
                    Some(b) if b.jit > WARM_JIT * b.total => {}
                    _ => break,
                }
            }
        }
    }
    // The partition count of the row before (the warm-up ended at the last one).
    let mut before = args.partition_counts.last().copied();
    for (partitions, kind) in rounds {
        let mut args = args.clone();
        args.partitions = partitions;
        if before != Some(partitions) && !kind.starts_with("idle") && args.settle {
            // The first row at a partition count after rows at another once ran slower than
            // the rows after it, whichever build it was; kept unmeasured as a guard (see
            // `--no-settle`).
            let prefix = format!("bench{stamp}-{row}-settle-{}.", kind.replace('@', "-"));
            row += 1;
            run_row(&client, &args, &prefix, kind).await;
            println!("  settle: {kind} at P = {partitions} (not counted)");
        }
        before = Some(partitions);
        let prefix = format!("bench{stamp}-{row}-{}.", kind.replace('@', "-"));
        row += 1;
        let figures = run_row(&client, &args, &prefix, kind).await;
        results.push((partitions, kind, figures));
    }
    for &p in &args.partition_counts {
        let mut args = args.clone();
        args.partitions = p;
        let results: Vec<(&str, Figures)> = results
            .iter()
            .filter(|r| r.0 == p)
            .map(|r| (r.1, r.2))
            .collect();
        report(&args, &results);
    }
    // Each partition count against the first, kind by kind, round by round (the rows of one
    // round ran one after the other), and the median of the rounds.
    let p0 = args.partition_counts[0];
    let rounds_of = |p: i32, k: &str| -> Vec<Figures> {
        results
            .iter()
            .filter(|r| r.0 == p && r.1 == k)
            .map(|r| r.2)
            .collect()
    };
    for &p in &args.partition_counts[1..] {
        println!();
        println!("P = {p} against P = {p0}, round by round (median last):");
        for kind in kinds.iter().filter(|k| !k.starts_with("idle")) {
            let pairs: Vec<[f64; 3]> = rounds_of(p, kind)
                .iter()
                .zip(rounds_of(p0, kind))
                .map(|(at_p, at_p0)| {
                    [
                        at_p0.seconds / at_p.seconds,
                        at_p.cpu_seconds / at_p0.cpu_seconds,
                        at_p.peak_rss_kib as f64 / at_p0.peak_rss_kib as f64,
                    ]
                })
                .collect();
            if pairs.is_empty() {
                continue;
            }
            let column = |i: usize| round_by_round(pairs.iter().map(|r| r[i]));
            println!("{kind} {p}/{p0}");
            println!("  throughput {}", column(0));
            println!("  CPU / msg  {}", column(1));
            println!("  peak RSS   {}", column(2));
        }
    }
    // The group relay against the librdkafka peer at each partition count, and what each idle
    // service costs the broker, round by round (a round's rows ran one after the other).
    for &p in args.partition_counts.iter().filter(|_| args.peer.is_some()) {
        let pairs: Vec<(Figures, Figures)> = rounds_of(p, "framework-group")
            .into_iter()
            .zip(rounds_of(p, "librdkafka"))
            .collect();
        if pairs.is_empty() {
            continue;
        }
        println!();
        println!("framework-group against librdkafka at P = {p}, round by round (median last):");
        let column = |f: fn(&Figures, &Figures) -> f64| {
            round_by_round(pairs.iter().map(|(ours, peer)| f(ours, peer)))
        };
        println!("  throughput {}", column(|o, r| r.seconds / o.seconds));
        println!(
            "  CPU / msg  {}",
            column(|o, r| o.cpu_seconds / r.cpu_seconds)
        );
        println!(
            "  peak RSS   {}",
            column(|o, r| o.peak_rss_kib as f64 / r.peak_rss_kib as f64)
        );
    }
    let idle_broker = |k: &str| -> Vec<f64> {
        rounds_of(largest, k)
            .iter()
            .filter_map(|f| Some(f.broker_cpu?.total))
            .collect()
    };
    let (ours, peer) = (idle_broker("idle"), idle_broker("idle@librdkafka"));
    if !ours.is_empty() && ours.len() == peer.len() {
        println!();
        println!(
            "idle against idle@librdkafka, the broker's CPU, round by round (median last):\n  {}",
            round_by_round(ours.iter().zip(&peer).map(|(o, r)| o / r))
        );
    }

    if args.only.is_none() || args.only.as_deref() == Some("sizing") {
        request_sizing(&client, stamp).await;
    }
    println!("(throughput ratio: higher is better; CPU and RSS ratios: lower is better)");
}

/// Ratios round by round, then their median: `0.94 0.76 0.80 | 0.80`.
fn round_by_round(ratios: impl Iterator<Item = f64>) -> String {
    let mut all: Vec<f64> = ratios.collect();
    let figures: Vec<String> = all.iter().map(|x| format!("{x:.2}")).collect();
    all.sort_by(f64::total_cmp);
    let mid = all.len() / 2;
    let median = if all.len().is_multiple_of(2) {
        (all[mid - 1] + all[mid]) / 2.0
    } else {
        all[mid]
    };
    format!("{} | {median:.2}", figures.join(" "))
}

/// Runs one row: its input written, its child started, timed and measured.
async fn run_row(client: &Client, args: &Args, prefix: &str, kind: &str) -> Figures {
    // `<kind>@base`: the same row, its child from the baseline build; `librdkafka`: the
    // group relay's row with the peer relay as its child.
    let (base, exe) = match (kind, kind.strip_suffix("@base")) {
        (_, Some(base)) => (base, args.baseline.clone().expect("--baseline PATH").into()),
        ("librdkafka", _) => (
            "framework-group",
            args.peer.clone().expect("--peer PATH").into(),
        ),
        ("idle@librdkafka", _) => ("idle", args.peer.clone().expect("--peer PATH").into()),
        _ => (kind, std::env::current_exe().unwrap()),
    };
    // An idle row is a group relay of nothing, watched for `idle_seconds`.
    let idle = base == "idle";
    let child_kind = if idle { "framework-group" } else { base };
    let networked =
        idle || base.starts_with("raw") || base.starts_with("framework") || base.starts_with("io-");
    let mut fill = args.clone();
    if base.starts_with("io-") {
        fill.messages = io_messages(args);
    }
    if idle {
        fill.messages = 0;
    }
    if networked {
        let t = Instant::now();
        prefill(client, prefix, &fill, base.starts_with("io-")).await;
        println!(
            "  {kind}: pre-filled {}in_topic in {:.1?}",
            prefix,
            t.elapsed()
        );
    }
    if networked {
        match broker_quiet().await {
            Some(after) => println!("  {kind}: the broker was quiet {after:.1?} after"),
            None if broker_cpu_seconds().is_some() => println!(
                "  {kind}: the broker was still busy {BUSY_FOR_AT_MOST:?} after (measured anyway)"
            ),
            None => {}
        }
    }
    let mut broker0 = broker_cpu_seconds();
    let mut started = Instant::now();
    let mut child = Command::new(exe)
        .env(MIMALLOC_THP, mimalloc_thp())
        .args(["--child", child_kind, "--prefix", prefix])
        .args(["--messages", &fill.messages.to_string()])
        .args(["--partitions", &args.partitions.to_string()])
        .stdout(std::process::Stdio::piped())
        .stderr(match std::env::var("RELAY_CHILD_LOGS") {
            Ok(dir) => std::fs::File::create(format!("{dir}/{prefix}log"))
                .unwrap()
                .into(),
            Err(_) => std::process::Stdio::piped(),
        })
        .spawn()
        .expect("run child");
    // The child's stdout, line by line.
    let (lines_tx, lines) = std::sync::mpsc::channel::<String>();
    let stdout = child.stdout.take().expect("piped");
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = lines_tx.send(line);
        }
    });
    let mut seconds = None;
    let mut sockets = None;
    // CPU the child used before its clock started (a group's join).
    let mut cpu_before = 0.0;
    // The group child's `first` line (it may come before `assigned`).
    let mut first = None;
    if child_kind == "framework-group" || child_kind == "framework-eos" {
        let line = loop {
            let line = lines
                .recv_timeout(Duration::from_secs(120))
                .expect("the group child reports its assignment");
            match line.strip_prefix("first ") {
                Some(at) => first = Some(at.to_owned()),
                None => break line,
            }
        };
        cpu_before = line
            .strip_prefix("assigned ")
            .and_then(|cpu| cpu.parse().ok())
            .unwrap_or_else(|| panic!("unexpected line {line:?}"));
        println!(
            "  {kind}: assigned after {:.1?} (not counted)",
            started.elapsed()
        );
        started = Instant::now();
        broker0 = broker_cpu_seconds();
    }
    if idle {
        // Nothing to read: what the service and the broker spend on quiet partitions.
        tokio::time::sleep(Duration::from_secs(args.idle_seconds)).await;
        seconds = Some(started.elapsed().as_secs_f64());
        sockets = sockets_of(child.id());
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
    } else if child_kind == "framework-eos" {
        // Outputs count once their transaction committed: when the group's committed
        // offsets (written in the transaction) reach N.
        wait_for_commit(
            &format!("{prefix}relay-eos"),
            &format!("{prefix}in_topic"),
            &fill,
        )
        .await;
        seconds = Some(started.elapsed().as_secs_f64());
        sockets = sockets_of(child.id());
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
    } else if networked {
        wait_for_output(&format!("{prefix}out-topic"), &fill).await;
        seconds = Some(started.elapsed().as_secs_f64());
        sockets = sockets_of(child.id());
        // Done: the child reports its figures when told to stop.
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
    }
    let broker = broker_cpu_seconds().zip(broker0).map(|(b1, b0)| b1 - b0);
    let out = child.wait_with_output().expect("child output");
    reader.join().expect("stdout reader");
    let stdout: Vec<String> = lines.try_iter().collect();
    let first = first.or_else(|| {
        stdout
            .iter()
            .find_map(|l| Some(l.strip_prefix("first ")?.to_owned()))
    });
    if let Some(first) = first {
        println!("  {kind}: first message handled {first} s after the child started");
    }
    assert!(
        out.status.success(),
        "{kind} failed: {}{}",
        stdout.join("\n"),
        String::from_utf8_lossy(&out.stderr)
    );
    if networked {
        delete_topics(client, prefix).await;
    }
    let last = stdout.last().map(String::as_str).unwrap_or_default();
    let f: Vec<f64> = last
        .split_whitespace()
        .map(|v| v.parse().unwrap())
        .collect();
    Figures {
        seconds: seconds.unwrap_or(f[0]),
        cpu_seconds: f[1] - cpu_before,
        peak_rss_kib: f[2] as u64,
        broker_cpu: broker.filter(|_| networked),
        sockets,
    }
}

/// The broker's JIT compiler's share of its CPU during a warm-up row under which the
/// broker counts as warm.
const WARM_JIT: f64 = 0.15;

/// The share of the broker's CPU its JIT compiler took, as printed.
fn jit_share(cpu: Option<BrokerCpu>) -> String {
    match cpu {
        Some(b) if b.total > 0.0 => format!("{:.0} %", b.jit / b.total * 100.0),
        _ => "n/a".to_owned(),
    }
}

/// Prints the figures of one partition count's rows, and the rows side by side.
fn report(args: &Args, results: &[(&str, Figures)]) {
    let n = args.messages as f64;
    println!();
    println!("P = {} partitions:", args.partitions);
    println!(
        "{:<16} {:>12} {:>16} {:>14} {:>20} {:>12} {:>16}",
        "",
        "msgs/s",
        "CPU s / 100k",
        "peak RSS MiB",
        "broker CPU s / 100k",
        "of it JIT",
        "sockets tcp/all"
    );
    let io_n = io_messages(args) as f64;
    for (kind, f) in results {
        if kind.starts_with("idle") {
            continue;
        }
        if *kind == "io-seq" {
            println!(
                "I/O-bound handler (5 ms wait), {io_n} messages over {} partitions, 1000 keys:",
                args.partitions
            );
        }
        let n = if kind.starts_with("io-") { io_n } else { n };
        let broker = f.broker_cpu.map_or("n/a".to_owned(), |b| {
            format!("{:.3}", b.total / n * 100_000.0)
        });
        let sockets = f.sockets.map_or("n/a".to_owned(), |s| s.to_string());
        println!(
            "{:<16} {:>12.0} {:>16.3} {:>14.1} {:>20} {:>12} {:>16}",
            kind,
            n / f.seconds,
            f.cpu_seconds / n * 100_000.0,
            f.peak_rss_kib as f64 / 1024.0,
            broker,
            jit_share(f.broker_cpu),
            sockets
        );
    }
    let idle: Vec<_> = results
        .iter()
        .filter(|(k, _)| k.starts_with("idle"))
        .collect();
    if !idle.is_empty() {
        println!();
        println!(
            "idle: a group member on {} quiet partitions for {} s",
            args.partitions, args.idle_seconds
        );
        println!(
            "{:<16} {:>18} {:>18} {:>12} {:>14} {:>16}",
            "", "service CPU %", "broker CPU %", "of it JIT", "peak RSS MiB", "sockets tcp/all"
        );
        for (kind, f) in idle {
            let broker = f.broker_cpu.map_or("n/a".to_owned(), |b| {
                format!("{:.1}", b.total / f.seconds * 100.0)
            });
            println!(
                "{:<16} {:>18.1} {:>18} {:>12} {:>14.1} {:>16}",
                kind,
                f.cpu_seconds / f.seconds * 100.0,
                broker,
                jit_share(f.broker_cpu),
                f.peak_rss_kib as f64 / 1024.0,
                f.sockets.map_or("n/a".to_owned(), |s| s.to_string())
            );
        }
    }
    // The last round of a row (warm).
    let find = |k: &str| {
        results
            .iter()
            .rev()
            .find(|(kind, _)| *kind == k)
            .map(|(_, f)| *f)
    };
    if let (Some(seq), Some(par)) = (find("io-seq"), find("io-par")) {
        println!(
            "{:<16} {:>12.2} {:>16.2} {:>14.2}",
            "par / seq",
            seq.seconds / par.seconds,
            par.cpu_seconds / seq.cpu_seconds,
            par.peak_rss_kib as f64 / seq.peak_rss_kib as f64
        );
    }
    // The same work side by side: headers against headers, none against none.
    for (fw, base, label) in [
        ("framework", "raw-headers", "fw / raw-hdr"),
        ("framework-bare", "raw", "bare / raw"),
        ("framework", "raw", "fw / raw"),
        ("framework", "framework-plain", "idem / plain"),
        ("framework-group", "framework", "group / fw"),
        ("framework-eos", "framework-group", "eos / group"),
        ("framework-group", "librdkafka", "group / rdkafka"),
        ("framework-batch", "raw-headers", "batch / raw-hdr"),
        ("framework-batch", "framework", "batch / fw"),
        ("framework-metrics", "framework", "metrics / fw"),
    ] {
        if let (Some(fw), Some(base)) = (find(fw), find(base)) {
            println!(
                "{:<16} {:>12.2} {:>16.2} {:>14.2}",
                label,
                base.seconds / fw.seconds,
                fw.cpu_seconds / base.cpu_seconds,
                fw.peak_rss_kib as f64 / base.peak_rss_kib as f64
            );
        }
    }
}

/// Requests of about 30 KB: written directly with rskafka they wait for a delayed ACK (no
/// TCP_NODELAY, length prefix and body written separately); through `KafkaBroker` the same
/// records are sized out of that window.
async fn request_sizing(client: &Client, stamp: u128) {
    const ROUNDS: usize = 40;
    const PER_ROUND: usize = 300; // 300 records of ~100 bytes: a ~30 KB request
    let value = vec![b'x'; 100];
    let raw_topic = format!("bench{stamp}-sizing-raw");
    let fw_topic = format!("bench{stamp}-sizing-fw");
    for t in [&raw_topic, &fw_topic] {
        client
            .controller_client()
            .unwrap()
            .create_topic(t.as_str(), 1, 1, 5_000)
            .await
            .unwrap();
    }
    let pc = partition(client, &raw_topic, 0).await;
    let started = Instant::now();
    for _ in 0..ROUNDS {
        let records = (0..PER_ROUND)
            .map(|_| Record {
                key: None,
                value: Some(value.clone()),
                headers: Default::default(),
                timestamp: chrono::Utc::now(),
            })
            .collect();
        pc.produce(records, Compression::NoCompression)
            .await
            .unwrap();
    }
    let raw = started.elapsed();
    let broker = KafkaBroker::new(&bootstrap());
    broker.partitions(&fw_topic).await.unwrap();
    let started = Instant::now();
    for _ in 0..ROUNDS {
        let mut round = tokio::task::JoinSet::new();
        for _ in 0..PER_ROUND {
            let (broker, topic, value) = (broker.clone(), fw_topic.clone(), value.clone());
            round.spawn(async move {
                broker
                    .send_message(faststream::OutgoingMessage::new(topic, value).partition(0))
                    .await
            });
        }
        while let Some(r) = round.join_next().await {
            r.unwrap().unwrap();
        }
    }
    let fw = started.elapsed();
    println!();
    println!(
        "request sizing: {ROUNDS} rounds of {PER_ROUND} x 100-byte records (~30 KB per round)"
    );
    println!(
        "  raw rskafka, one request per round: {:>8.1} ms per round",
        raw.as_secs_f64() * 1000.0 / ROUNDS as f64
    );
    println!(
        "  KafkaBroker producer:               {:>8.1} ms per round",
        fw.as_secs_f64() * 1000.0 / ROUNDS as f64
    );
}

/// Deletes a row's topics once it is measured: a run makes hundreds of them, and a broker
/// that keeps every partition of the run (thousands at P = 256) does more background work
/// for each (checkpoints of all partitions every few seconds) as the run goes on.
async fn delete_topics(client: &Client, prefix: &str) {
    for topic in ROW_TOPICS {
        let name = format!("{prefix}{topic}");
        let deleted = client
            .controller_client()
            .unwrap()
            .delete_topic(name.as_str(), 5_000)
            .await;
        if let Err(e) = deleted {
            println!("  (could not delete topic {name}: {e})");
        }
    }
}

/// The topics of a row (after its prefix): the seed's input and output.
const ROW_TOPICS: [&str; 2] = ["in_topic", "out-topic"];

async fn prefill(client: &Client, prefix: &str, args: &Args, keyed: bool) {
    for topic in ROW_TOPICS {
        client
            .controller_client()
            .unwrap()
            .create_topic(format!("{prefix}{topic}"), args.partitions, 1, 5_000)
            .await
            .unwrap();
    }
    let mut tasks = tokio::task::JoinSet::new();
    for p in 0..args.partitions {
        let pc = partition(client, &format!("{prefix}in_topic"), p).await;
        let (n, parts) = (args.messages, args.partitions as usize);
        tasks.spawn(async move {
            let ids: Vec<usize> = (p as usize..n).step_by(parts).collect();
            for chunk in ids.chunks(2_000) {
                let records = chunk
                    .iter()
                    .map(|i| Record {
                        key: keyed.then(|| format!("k{}", i % 1000).into_bytes()),
                        value: Some(format!(r#"{{"user":"user{i}","user_id":{i}}}"#).into_bytes()),
                        headers: Default::default(),
                        timestamp: chrono::Utc::now(),
                    })
                    .collect();
                pc.produce(records, Compression::NoCompression)
                    .await
                    .unwrap();
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

async fn partition(client: &Client, topic: &str, p: i32) -> PartitionClient {
    client
        .partition_client(topic.to_owned(), p, UnknownTopicHandling::Retry)
        .await
        .unwrap()
}

async fn child(kind: &str, args: &Args) {
    if std::env::var_os("RELAY_CHILD_LOGS").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let cpu0 = cpu_seconds();
    let started = Instant::now();
    let relay = async {
        match kind {
            "raw" => raw_relay(args, false).await,
            "raw-headers" => raw_relay(args, true).await,
            "framework" => framework_relay(args, true, true).await,
            "framework-bare" => framework_relay(args, false, true).await,
            "framework-plain" => framework_relay(args, true, false).await,
            "framework-batch" => batch_relay(args).await,
            "framework-group" => group_relay(args, false).await,
            "framework-eos" => group_relay(args, true).await,
            #[cfg(feature = "prometheus")]
            "framework-metrics" => {
                let app = FastStream::new(KafkaBroker::new(&bootstrap()))
                    .with_routes(routes![handle_msg])
                    .topic_prefix(args.prefix.clone())
                    .prometheus(([127, 0, 0, 1], 0).into());
                app.run_until(std::future::pending()).await.unwrap();
            }
            "io-seq" | "io-par" => {
                let mut io = args.clone();
                io.messages = io_messages(args);
                io_relay(&io, kind == "io-par").await
            }
            other => panic!("unknown child {other}"),
        }
    };
    match kind {
        "pipeline" => pipeline_only(args).await,
        "test-broker" => test_broker(args).await,
        // A relay runs until the parent saw all its output and tells it to stop.
        _ => {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).unwrap();
            tokio::select! {
                () = relay => {}
                _ = term.recv() => {}
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    println!("{seconds} {} {}", cpu_seconds() - cpu0, peak_rss_kib());
    // Exit without a graceful shutdown: it is not part of what is measured.
    std::process::exit(0);
}

/// One request on `conn` and its answer (the bench's own requests: one per poll for every
/// partition, so that watching a topic of 256 partitions costs the broker what watching 3 does).
async fn roundtrip<Req, Resp>(
    conn: &mut tokio::net::TcpStream,
    key: kafka_protocol::messages::ApiKey,
    version: i16,
    correlation: i32,
    req: &Req,
) -> Resp
where
    Req: kafka_protocol::protocol::Encodable + kafka_protocol::protocol::HeaderVersion + Sync,
    Resp: kafka_protocol::protocol::Decodable + kafka_protocol::protocol::HeaderVersion + Send,
{
    use bytes::{Buf, BufMut, BytesMut};
    use kafka_protocol::messages::{RequestHeader, ResponseHeader};
    use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut header = RequestHeader::default();
    header.request_api_key = key as i16;
    header.request_api_version = version;
    header.correlation_id = correlation;
    header.client_id = Some(StrBytes::from_static_str("relay-bench"));
    let mut body = BytesMut::new();
    header
        .encode(&mut body, Req::header_version(version))
        .unwrap();
    req.encode(&mut body, version).unwrap();
    let mut frame = BytesMut::with_capacity(body.len() + 4);
    frame.put_i32(body.len() as i32);
    frame.extend_from_slice(&body);
    conn.write_all(&frame).await.unwrap();
    let len = conn.read_i32().await.unwrap();
    let mut buf = vec![0; len as usize];
    conn.read_exact(&mut buf).await.unwrap();
    let mut buf = bytes::Bytes::from(buf);
    let header = ResponseHeader::decode(&mut buf, Resp::header_version(version)).unwrap();
    assert_eq!(header.correlation_id, correlation);
    let resp = Resp::decode(&mut buf, version).unwrap();
    assert_eq!(buf.remaining(), 0);
    resp
}

/// Waits until `group`'s committed offsets of `topic` add up to N (OffsetFetch v1 on the
/// bootstrap broker, the group coordinator of a one-node cluster).
async fn wait_for_commit(group: &str, topic: &str, args: &Args) {
    use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
    use kafka_protocol::messages::{
        ApiKey, GroupId, OffsetFetchRequest, OffsetFetchResponse, TopicName,
    };
    use kafka_protocol::protocol::StrBytes;
    let mut conn = tokio::net::TcpStream::connect(bootstrap()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut t = OffsetFetchRequestTopic::default();
    t.name = TopicName(StrBytes::from_string(topic.to_owned()));
    t.partition_indexes = (0..args.partitions).collect();
    let mut req = OffsetFetchRequest::default();
    req.group_id = GroupId(StrBytes::from_string(group.to_owned()));
    req.topics = Some(vec![t]);
    for correlation in 1.. {
        let resp: OffsetFetchResponse =
            roundtrip(&mut conn, ApiKey::OffsetFetch, 1, correlation, &req).await;
        let total: i64 = resp
            .topics
            .iter()
            .flat_map(|t| &t.partitions)
            .map(|p| p.committed_offset.max(0))
            .sum();
        if total as usize >= args.messages {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "group {group} committed only {total} offsets of {topic}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the output topic holds exactly `n` messages: the sum of its partitions' high
/// watermarks, from one Fetch request (v4, read uncommitted) for all of them on the bootstrap
/// broker, the leader of every partition of a one-node cluster. Each partition is asked from
/// the high watermark seen last, at most 1 byte of it (Kafka then reads at most the one batch
/// that starts there; Tansu 0.6.0 reads what is new, up to 1 MiB in all): the answer's high
/// watermarks are the figure. (Not ListOffsets: Tansu 0.6.0 answers it with offsets behind the
/// log's end.)
async fn wait_for_output(topic: &str, args: &Args) {
    use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
    use kafka_protocol::messages::{ApiKey, BrokerId, FetchRequest, FetchResponse, TopicName};
    use kafka_protocol::protocol::StrBytes;
    let mut conn = tokio::net::TcpStream::connect(bootstrap()).await.unwrap();
    let mut marks = vec![0i64; args.partitions as usize];
    let deadline = Instant::now() + Duration::from_secs(600);
    for correlation in 1.. {
        let mut t = FetchTopic::default();
        t.topic = TopicName(StrBytes::from_string(topic.to_owned()));
        t.partitions = (0..args.partitions)
            .map(|p| {
                let mut part = FetchPartition::default();
                part.partition = p;
                part.fetch_offset = marks[p as usize];
                part.partition_max_bytes = 1;
                part
            })
            .collect();
        let mut req = FetchRequest::default();
        req.replica_id = BrokerId(-1);
        req.max_wait_ms = 1;
        req.min_bytes = 1;
        req.max_bytes = 1 << 20;
        req.isolation_level = 0;
        req.topics = vec![t];
        let resp: FetchResponse = roundtrip(&mut conn, ApiKey::Fetch, 4, correlation, &req).await;
        // A partition of a topic just created may not have its leader yet (the next poll
        // asks again).
        let mut refused = None;
        for p in resp.responses.iter().flat_map(|t| &t.partitions) {
            match p.error_code {
                0 => marks[p.partition_index as usize] = p.high_watermark,
                code => refused = Some((p.partition_index, code)),
            }
        }
        let total: i64 = marks.iter().sum();
        assert!(
            total as usize <= args.messages,
            "{topic} holds {total} > {} messages",
            args.messages
        );
        if total as usize == args.messages && refused.is_none() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{topic} reached only {total} messages (last refused partition and code: {refused:?})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn raw_relay(args: &Args, headers: bool) {
    let client = Arc::new(ClientBuilder::new(vec![bootstrap()]).build().await.unwrap());
    let per_partition = args.messages / args.partitions as usize;
    let mut tasks = tokio::task::JoinSet::new();
    for p in 0..args.partitions {
        let input = Arc::new(partition(&client, &format!("{}in_topic", args.prefix), p).await);
        let output = Arc::new(partition(&client, &format!("{}out-topic", args.prefix), p).await);
        let expected =
            per_partition + usize::from((p as usize) < args.messages % args.partitions as usize);
        tasks.spawn(async move {
            // Fetch ahead while the previous batch is transformed and produced.
            let (tx, mut rx) = tokio::sync::mpsc::channel(2);
            let fetcher = tokio::spawn(async move {
                let mut offset = 0;
                loop {
                    let (records, _) = input
                        .fetch_records(offset, 1..1_048_576, 500)
                        .await
                        .unwrap();
                    let records: Vec<_> =
                        records.into_iter().filter(|r| r.offset >= offset).collect();
                    if let Some(last) = records.last() {
                        offset = last.offset + 1;
                        if tx.send(records).await.is_err() {
                            return;
                        }
                    }
                }
            });
            let mut in_flight = VecDeque::new();
            let mut done = 0;
            while done < expected {
                let batch = rx.recv().await.unwrap();
                done += batch.len();
                let out: Vec<Record> = batch
                    .into_iter()
                    .map(|r| {
                        let s: Seed =
                            serde_json::from_slice(r.record.value.as_deref().unwrap()).unwrap();
                        let mut record = Record {
                            key: None,
                            value: Some(
                                format!("User: {} - {} registered", s.user_id, s.user).into_bytes(),
                            ),
                            headers: Default::default(),
                            timestamp: chrono::Utc::now(),
                        };
                        if headers {
                            // What the framework writes: its content type, and a correlation id
                            // in its format (a UUID's 36 characters).
                            record
                                .headers
                                .insert("content-type".into(), b"text/plain".to_vec());
                            record.headers.insert(
                                "correlation_id".into(),
                                format!("{:08x}-0000-4000-8000-{:012x}", p, r.offset).into_bytes(),
                            );
                        }
                        record
                    })
                    .collect();
                let output = output.clone();
                in_flight.push_back(tokio::spawn(async move {
                    output
                        .produce(out, Compression::NoCompression)
                        .await
                        .unwrap();
                }));
                while in_flight.len() > 4 {
                    in_flight.pop_front().unwrap().await.unwrap();
                }
            }
            for t in in_flight {
                t.await.unwrap();
            }
            fetcher.abort();
        });
    }
    while tasks.join_next().await.is_some() {}
    std::future::pending::<()>().await;
}

/// The seed handler on `KafkaBroker`; `compat` = FastStream's headers on every output,
/// `idempotence` = the idempotent producer (the default).
async fn framework_relay(args: &Args, compat: bool, idempotence: bool) {
    let broker = KafkaBroker::builder(&bootstrap())
        .idempotence(idempotence)
        .build();
    let app = FastStream::new(broker)
        .with_routes(routes![handle_msg])
        .compat_headers(compat)
        .topic_prefix(args.prefix.clone());
    app.run_until(std::future::pending()).await.unwrap();
}

/// The seed handler in a consumer group (group ids take the topic prefix, so each run has a
/// new group).
///
/// The broker holds a new group's first join for a few seconds (Java brokers: 3 s of
/// `group.initial.rebalance.delay.ms`), so the child prints `assigned <CPU seconds>` once it
/// has its partitions and the parent times the row from there, with the CPU used until then
/// taken off.
async fn group_relay(args: &Args, exactly_once: bool) {
    let broker = KafkaBroker::builder(&bootstrap())
        .on_partitions_assigned(|_, _| println!("assigned {}", cpu_seconds()))
        .build();
    let routes = match exactly_once {
        true => routes![handle_msg_eos],
        false => routes![handle_msg_group],
    };
    let app = FastStream::new(broker)
        .with_routes(routes)
        .topic_prefix(args.prefix.clone());
    app.run_until(std::future::pending()).await.unwrap();
}

/// The seed handler as a batch handler on `KafkaBroker`, with FastStream's headers.
async fn batch_relay(args: &Args) {
    let app = FastStream::new(KafkaBroker::new(&bootstrap()))
        .with_routes(routes![handle_batch])
        .topic_prefix(args.prefix.clone());
    app.run_until(std::future::pending()).await.unwrap();
}

/// The I/O-bound handler on `KafkaBroker`, sequential or with `concurrency = 100`.
async fn io_relay(args: &Args, parallel: bool) {
    let broker = KafkaBroker::new(&bootstrap());
    let routes = if parallel {
        routes![io_par]
    } else {
        routes![io_seq]
    };
    let app = FastStream::new(broker)
        .with_routes(routes)
        .topic_prefix(args.prefix.clone());
    app.run_until(std::future::pending()).await.unwrap();
}

/// The handler pipeline alone: decode, call, encode, address the outputs; no broker at all.
async fn pipeline_only(args: &Args) {
    struct Discard;
    impl faststream::runtime::Publish for Discard {
        fn send(
            &self,
            _: faststream::OutgoingMessage,
        ) -> faststream::BoxFuture<'_, faststream::Result<()>> {
            Box::pin(async { Ok(()) })
        }
    }
    let routes = routes![handle_msg];
    let route = routes[0];
    let ctx = faststream::runtime::Context::new(
        Default::default(),
        faststream::extract::Publisher::new(Arc::new(Discard)),
    );
    let pipeline = faststream::runtime::Pipeline::new(routes, ctx);
    let topic: Arc<str> = Arc::from("in_topic");
    let mut published = 0;
    for i in 0..args.messages {
        let payload = format!(r#"{{"user":"user{i}","user_id":{i}}}"#);
        let msg = faststream::Message::new(topic.clone(), payload).at(0, i as i64);
        match pipeline.handle(route, msg).await {
            faststream::Outcome::Done(out) => published += out.len(),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(published, args.messages);
}

/// The in-memory test broker (pipeline plus its record of every message and delivery).
async fn test_broker(args: &Args) {
    use faststream::testing::TestBroker;
    let broker = TestBroker::builder()
        .with_routes(routes![handle_msg])
        .build()
        .unwrap();
    for i in 0..args.messages {
        broker
            .publish(format!(r#"{{"user":"user{i}","user_id":{i}}}"#), "in_topic")
            .await
            .unwrap();
    }
    assert_eq!(broker.published("out-topic").len(), args.messages);
}

/// User + system CPU time of this process, from /proc.
fn cpu_seconds() -> f64 {
    process_cpu_seconds("self").unwrap_or(0.0)
}

/// How long a row waits at most for the broker to be quiet before its clock starts.
const BUSY_FOR_AT_MOST: Duration = Duration::from_secs(10);

/// Waits until the broker is quiet (`None`: not within [`BUSY_FOR_AT_MOST`], or its CPU
/// cannot be read): its JIT compiler idle and the broker under a tenth of a core for 200 ms.
/// A row's topics were just created and filled, and the rows before deleted theirs: the
/// broker compiles the paths of creating and deleting hundreds of partitions seconds after it
/// took them, and that compiler shares the two cores with the relay measured next. Waiting
/// here keeps one row's aftermath out of the next row's figures.
async fn broker_quiet() -> Option<Duration> {
    const WINDOW: Duration = Duration::from_millis(200);
    let t = Instant::now();
    let mut last = broker_cpu_seconds()?;
    loop {
        tokio::time::sleep(WINDOW).await;
        let now = broker_cpu_seconds()?;
        let spent = now - last;
        // (The kernel counts CPU in ticks of 10 ms.)
        if spent.jit < 0.005 && spent.total < 0.025 {
            return Some(t.elapsed());
        }
        if t.elapsed() >= BUSY_FOR_AT_MOST {
            return None;
        }
        last = now;
    }
}

/// The broker's CPU time so far, if `KAFKA_BROKER_PID` names it.
fn broker_cpu_seconds() -> Option<BrokerCpu> {
    let pid = std::env::var("KAFKA_BROKER_PID").ok()?;
    let total = process_cpu_seconds(&pid)?;
    // The JVM's compiler threads (`C1 CompilerThre`, `C2 CompilerThre`: names are cut to 15
    // bytes). Those that ended meanwhile are not counted: the figure is a lower bound.
    let mut jit = 0.0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
    {
        let path = task.path();
        let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        if comm.contains("CompilerThre") {
            jit += stat_cpu_seconds(&path.join("stat")).unwrap_or(0.0);
        }
    }
    Some(BrokerCpu { total, jit })
}

/// The broker's CPU seconds so far, and those of its JIT compiler threads among them.
#[derive(Debug, Clone, Copy)]
struct BrokerCpu {
    total: f64,
    jit: f64,
}

impl std::ops::Sub for BrokerCpu {
    type Output = BrokerCpu;
    fn sub(self, earlier: BrokerCpu) -> BrokerCpu {
        BrokerCpu {
            total: self.total - earlier.total,
            // A compiler thread that ended since `earlier` takes its seconds with it.
            jit: (self.jit - earlier.jit).max(0.0),
        }
    }
}

/// User + system CPU seconds of process `pid` (or `self`), from /proc.
fn process_cpu_seconds(pid: &str) -> Option<f64> {
    stat_cpu_seconds(std::path::Path::new(&format!("/proc/{pid}/stat")))
}

/// User + system CPU seconds from a `/proc/.../stat` file (a process's or a thread's).
fn stat_cpu_seconds(path: &std::path::Path) -> Option<f64> {
    let stat = std::fs::read_to_string(path).ok()?;
    // Fields after the command name (which is in parentheses).
    let rest = stat.rsplit(')').next().unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11).and_then(|v| v.parse::<f64>().ok())?
        + fields.get(12).and_then(|v| v.parse::<f64>().ok())?;
    Some(ticks / 100.0) // USER_HZ is 100 on Linux
}

/// Peak resident set size of this process (KiB), from /proc.
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}
