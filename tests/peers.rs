//! Other ecosystems' clients as peers, against Apache Kafka (a node of the test's own, whatever
//! broker the rest of the suite uses): the Java client (`kafka-clients`, Apache Kafka's own) and
//! librdkafka (through the `confluent-kafka` Python wheel). Each one's producer writes every
//! codec and transactions that we read, its consumer shares our group, and a `read_committed`
//! consumer of it reads our outputs (values, keys, headers, timestamps, and for Java keyed
//! partitions as its own partitioner computes them). Both peers run the same programs' modes
//! (`tests/interop/JavaClient.java`, `tests/interop/rdkafka_client.py`).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use common::*;
use faststream::extract::{Key, Partition, Topic};
use faststream::kafka::KafkaBroker;
use faststream::{publisher, routes, subscriber, FastStream, Response};
use tokio::io::AsyncBufReadExt;

/// Bodies handled, by topic.
fn seen() -> &'static Mutex<BTreeMap<String, Vec<String>>> {
    static SEEN: OnceLock<Mutex<BTreeMap<String, Vec<String>>>> = OnceLock::new();
    SEEN.get_or_init(Default::default)
}

fn bodies(topic: &str) -> Vec<String> {
    seen()
        .lock()
        .unwrap()
        .get(topic)
        .cloned()
        .unwrap_or_default()
}

fn app_on(
    bootstrap: &str,
    routes: Vec<&'static faststream::runtime::RouteDef>,
    prefix: &str,
) -> FastStream<KafkaBroker> {
    init_logs();
    FastStream::new(KafkaBroker::new(bootstrap))
        .with_routes(routes)
        .topic_prefix(prefix)
}

/// A client of another ecosystem.
#[derive(Clone, Copy, Debug)]
enum Peer {
    Java,
    Librdkafka,
}

impl Peer {
    /// Its program in `mode` with `args`.
    fn run(self, args: &[&str]) -> tokio::process::Command {
        match self {
            Peer::Java => java_client(args),
            Peer::Librdkafka => {
                let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
                let mut cmd = tokio::process::Command::new(python());
                cmd.arg(root.join("tests/interop/rdkafka_client.py"))
                    .args(args)
                    .kill_on_drop(true);
                cmd
            }
        }
    }
}

async fn kafka() -> String {
    tokio::task::spawn_blocking(apache_kafka).await.unwrap()
}

#[subscriber("from-peer", auto_offset_reset = "earliest")]
async fn from_peer(body: String, topic: Topic) {
    seen()
        .lock()
        .unwrap()
        .entry(topic.0.to_string())
        .or_default()
        .push(body);
}

/// The peer's producer writes 100 records with each codec (none, gzip, snappy, lz4, zstd),
/// then an aborted and a committed transaction: we handle every record of every codec and of
/// the committed transaction, and nothing of the aborted one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_java_producer_writes_is_read() {
    what_the_producer_writes_is_read(Peer::Java).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_librdkafka_producer_writes_is_read() {
    what_the_producer_writes_is_read(Peer::Librdkafka).await;
}

async fn what_the_producer_writes_is_read(peer: Peer) {
    const N: usize = 100;
    let bootstrap = kafka().await;
    let client = rskafka::client::ClientBuilder::new(vec![bootstrap.clone()])
        .build()
        .await
        .unwrap();
    let prefix = unique_prefix("peer-produce");
    let topic = format!("{prefix}from-peer");
    create_topic(&client, &topic, 3).await;
    let out = peer
        .run(&["produce", &bootstrap, &topic, &N.to_string()])
        .output()
        .await
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("DONE"),
        "the {peer:?} producer: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let running = start(app_on(&bootstrap, routes![from_peer], &prefix)).await;
    let want = 5 * N + 1;
    wait_for("every record handled", || bodies(&topic).len() >= want).await;
    // Anything beyond would show up meanwhile.
    tokio::time::sleep(Duration::from_millis(500)).await;
    running.stop().await.unwrap();
    let got: BTreeSet<String> = bodies(&topic).into_iter().collect();
    let mut expected: BTreeSet<String> = ["none", "gzip", "snappy", "lz4", "zstd"]
        .iter()
        .flat_map(|c| (0..N).map(move |i| format!("{c}-{i}")))
        .collect();
    expected.insert("committed".into());
    assert_eq!(bodies(&topic).len(), want, "each record once");
    assert_eq!(got, expected);
}

#[subscriber(
    "shared",
    group_id = "shared",
    auto_offset_reset = "earliest",
    session_timeout_ms = 6000,
    heartbeat_interval_ms = 300,
    commit_interval_ms = 200
)]
#[publisher("shared-out")]
async fn shared(n: u64, partition: Partition) -> String {
    format!("{n}:{}", partition.0)
}

#[subscriber(
    "shared",
    group_id = "shared848",
    group_protocol = "consumer",
    auto_offset_reset = "earliest",
    commit_interval_ms = 200
)]
#[publisher("shared-out")]
async fn shared_848(n: u64, partition: Partition) -> String {
    format!("{n}:{}", partition.0)
}

#[subscriber(
    "shared",
    group_id = "sharedcoop",
    assignor = "cooperative-sticky",
    auto_offset_reset = "earliest",
    session_timeout_ms = 6000,
    heartbeat_interval_ms = 300,
    commit_interval_ms = 200
)]
#[publisher("shared-out")]
async fn shared_cooperative(n: u64, partition: Partition) -> String {
    format!("{n}:{}", partition.0)
}

/// The peer's consumer (classic protocol) joins our group: the partitions are split between it
/// and our member, and every input is handled exactly once by one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_java_consumer_shares_our_group() {
    a_consumer_shares_our_group(Peer::Java, routes![shared], "shared", &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_librdkafka_consumer_shares_our_group() {
    a_consumer_shares_our_group(Peer::Librdkafka, routes![shared], "shared", &[]).await;
}

/// The same under the consumer group protocol (KIP-848): the broker assigns, our member
/// releases what moves to the Java `KafkaConsumer` (`group.protocol=consumer`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_java_consumer_protocol_member_shares_our_group() {
    let routes = routes![shared_848];
    a_consumer_shares_our_group(Peer::Java, routes, "shared848", &["consumer"]).await;
}

/// The same with `cooperative-sticky` on the classic protocol (KIP-429): our member keeps
/// its share through the rebalance and releases the rest to the Java member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_java_cooperative_sticky_member_shares_our_group() {
    let routes = routes![shared_cooperative];
    a_consumer_shares_our_group(Peer::Java, routes, "sharedcoop", &["cooperative"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_librdkafka_consumer_protocol_member_shares_our_group() {
    let routes = routes![shared_848];
    a_consumer_shares_our_group(Peer::Librdkafka, routes, "shared848", &["consumer"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_librdkafka_cooperative_sticky_member_shares_our_group() {
    let routes = routes![shared_cooperative];
    a_consumer_shares_our_group(Peer::Librdkafka, routes, "sharedcoop", &["cooperative"]).await;
}

async fn a_consumer_shares_our_group(
    peer: Peer,
    routes: Vec<&'static faststream::runtime::RouteDef>,
    group: &str,
    extra: &[&str],
) {
    let bootstrap = kafka().await;
    let client = rskafka::client::ClientBuilder::new(vec![bootstrap.clone()])
        .build()
        .await
        .unwrap();
    let prefix = unique_prefix("peer-member");
    let (input, output) = (format!("{prefix}shared"), format!("{prefix}shared-out"));
    create_topic(&client, &input, 4).await;
    create_topic(&client, &output, 1).await;
    let ours = start(app_on(&bootstrap, routes, &prefix)).await;
    let group = format!("{prefix}{group}");
    let mut args = vec!["member", &bootstrap, &input, &group, "40"];
    args.extend(extra);
    let mut member = peer
        .run(&args)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(member.stdout.take().unwrap()).lines();
    let theirs = await_share(&mut lines, 4, &format!("{peer:?}")).await;
    for p in 0..4 {
        let records = (0..100u64)
            .map(|i| record(None, (i * 4 + p as u64).to_string().as_bytes(), &[]))
            .collect();
        produce(&client, &input, p, records).await;
    }
    let expected_theirs = theirs.len() * 100;
    let mut peer_got: BTreeSet<u64> = BTreeSet::new();
    tokio::time::timeout(TIMEOUT, async {
        while peer_got.len() < expected_theirs {
            let line = lines
                .next_line()
                .await
                .unwrap()
                .expect("the peer member's output");
            if let Some(rest) = line.strip_prefix("MSG ") {
                let (p, n) = rest.split_once(' ').unwrap();
                assert!(
                    theirs.contains(&p.parse().unwrap()),
                    "{line} outside {theirs:?}"
                );
                peer_got.insert(n.parse().unwrap());
            }
        }
    })
    .await
    .expect("the peer member reads its share");
    let out = read(&client, &output, 400 - expected_theirs).await;
    let ours_got: BTreeSet<u64> = out
        .values()
        .flatten()
        .map(|r| text(r).split(':').next().unwrap().parse().unwrap())
        .collect();
    assert!(ours_got.is_disjoint(&peer_got));
    assert_eq!(ours_got.len() + peer_got.len(), 400);
    println!(
        "the {peer:?} member held {theirs:?}; it read {}, we handled {}",
        peer_got.len(),
        ours_got.len()
    );
    let _ = member.start_kill();
    ours.stop().await.unwrap();
}

#[subscriber("to-peer-in", auto_offset_reset = "earliest")]
#[publisher("to-peer")]
async fn to_peer(body: String, key: Key) -> Response<String> {
    let key = String::from_utf8_lossy(&key.0.unwrap_or_default()).into_owned();
    Response::new(format!("out-{body}"))
        .key(key)
        .header("origin", "faststream-rs")
}

/// A `read_committed` consumer of the peer reads what we publish: every value once, with its
/// key, our header, a timestamp, and (Java) in the partition the Java partitioner picks for its
/// key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_java_consumer_reads_our_outputs() {
    a_consumer_reads_our_outputs(Peer::Java).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_librdkafka_consumer_reads_our_outputs() {
    a_consumer_reads_our_outputs(Peer::Librdkafka).await;
}

async fn a_consumer_reads_our_outputs(peer: Peer) {
    const N: usize = 200;
    let bootstrap = kafka().await;
    let client = rskafka::client::ClientBuilder::new(vec![bootstrap.clone()])
        .build()
        .await
        .unwrap();
    let prefix = unique_prefix("peer-read");
    let (input, output) = (format!("{prefix}to-peer-in"), format!("{prefix}to-peer"));
    create_topic(&client, &input, 1).await;
    create_topic(&client, &output, 3).await;
    let records = (0..N)
        .map(|i| record(Some(&format!("key-{i}")), i.to_string().as_bytes(), &[]))
        .collect();
    produce(&client, &input, 0, records).await;
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let running = start(app_on(&bootstrap, routes![to_peer], &prefix)).await;
    read(&client, &output, N).await;
    running.stop().await.unwrap();
    let out = peer
        .run(&["read", &bootstrap, &output, &N.to_string()])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("DONE"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut values = BTreeSet::new();
    for line in stdout.lines().filter_map(|l| l.strip_prefix("REC ")) {
        let f: Vec<&str> = line.split(' ').collect();
        let (partition, key, value, timestamp, headers, expected) =
            (f[0], f[1], f[2], f[3], f[4], f[5]);
        let i: usize = value.strip_prefix("out-").unwrap().parse().unwrap();
        assert_eq!(key, format!("key-{i}"), "{line}");
        assert!(headers.contains("origin=faststream-rs"), "{line}");
        assert!(
            timestamp.parse::<i64>().unwrap() >= started - 60_000,
            "{line}"
        );
        if expected != "-" {
            assert_eq!(partition, expected, "murmur2 partition of {key}: {line}");
        }
        values.insert(i);
    }
    assert_eq!(values.len(), N, "{stdout}");
    assert_eq!(stdout.lines().filter(|l| l.starts_with("REC ")).count(), N);
}
