//! Helpers for the real-broker tests: the broker address, unique topic prefixes, a plain
//! rskafka producer/reader (independent of the code under test), running an app, and log capture.
#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use faststream::kafka::KafkaBroker;
use faststream::runtime::RouteDef;
use faststream::FastStream;
use rskafka::client::partition::{Compression, OffsetAt, UnknownTopicHandling};
use rskafka::client::{Client, ClientBuilder};
use rskafka::record::{Record, RecordAndOffset};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub mod secure;
pub mod wire;

/// Every wait in these tests is bounded by this.
pub const TIMEOUT: Duration = Duration::from_secs(60);

/// Which broker the suite runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerKind {
    /// Apache Kafka 4 (the reference): `FASTSTREAM_TEST_BROKER=kafka`.
    Kafka,
    /// Tansu 0.6.0, memory storage (the default).
    Tansu,
}

/// `FASTSTREAM_TEST_BROKER`: `kafka` or `tansu` (the default). With `KAFKA_BOOTSTRAP` set it
/// says what that cluster is (`scripts/kafka-dev run` sets both).
pub fn broker_kind() -> BrokerKind {
    match std::env::var("FASTSTREAM_TEST_BROKER").as_deref() {
        Ok("kafka") => BrokerKind::Kafka,
        Ok("tansu") | Ok("") | Err(_) => BrokerKind::Tansu,
        Ok(other) => panic!("FASTSTREAM_TEST_BROKER={other}: use kafka or tansu"),
    }
}

/// The broker under test: `KAFKA_BOOTSTRAP` if set (`scripts/kafka-dev run -- cargo test`, or
/// a cluster of your own), else a local broker of [`broker_kind`] this test binary starts on
/// first use (installed by `scripts/kafka-dev`) and that stops when the binary exits. Never
/// skipped: a broker that cannot be started fails the test.
pub fn bootstrap() -> String {
    static ADDR: OnceLock<String> = OnceLock::new();
    ADDR.get_or_init(|| match std::env::var("KAFKA_BOOTSTRAP") {
        Ok(addr) if !addr.is_empty() => addr,
        _ => match broker_kind() {
            BrokerKind::Tansu => start_local_broker(),
            BrokerKind::Kafka => {
                // Kept for the life of the process; its watcher ends it with this process.
                let cluster = KafkaCluster::up(1, None, None);
                let addr = cluster.bootstrap.clone();
                std::mem::forget(cluster);
                addr
            }
        },
    })
    .clone()
}

/// Apache Kafka, for what only it does (transactions with aborts, KIP-848): the suite's broker
/// when it is Kafka, else one node of this test binary's own (its watcher ends it with the
/// process). Blocks while the node starts: call it from `spawn_blocking`.
pub fn apache_kafka() -> String {
    static ADDR: OnceLock<String> = OnceLock::new();
    ADDR.get_or_init(|| match broker_kind() {
        BrokerKind::Kafka => bootstrap(),
        BrokerKind::Tansu => {
            let cluster = KafkaCluster::up(1, None, None);
            let addr = cluster.bootstrap.clone();
            std::mem::forget(cluster);
            addr
        }
    })
    .clone()
}

/// `scripts/kafka-dev` of this checkout.
fn kafka_dev() -> std::process::Command {
    std::process::Command::new(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/kafka-dev"),
    )
}

/// An Apache Kafka cluster of a test's own (1 or 3 combined nodes on loopback, started by
/// `scripts/kafka-dev kafka-up`), with control of each node. Dropping it ends every node; so
/// does the end of the test process, however it ends (a watcher of the script's).
pub struct KafkaCluster {
    pub dir: std::path::PathBuf,
    pub bootstrap: String,
}

impl KafkaCluster {
    /// Formats and starts `nodes` nodes, node 1 on `port` if given and advertising
    /// `advertise` (a proxy's port) instead of its own; waits until every node lists all.
    pub fn up(nodes: usize, port: Option<u16>, advertise: Option<u16>) -> KafkaCluster {
        let mut extra = Vec::new();
        if let Some(p) = port {
            extra.extend(["--port".to_owned(), p.to_string()]);
        }
        if let Some(p) = advertise {
            extra.extend(["--advertise".to_owned(), p.to_string()]);
        }
        Self::up_with(nodes, &extra)
    }

    /// A cluster whose nodes also open a SASL_SSL listener (PLAIN, SCRAM-SHA-256 and
    /// SCRAM-SHA-512 for `user`) and an SSL listener requiring a client certificate signed by
    /// `pki`'s CA, serving `pki`'s server certificate; see [`KafkaCluster::secure_listeners`].
    pub fn up_secure(nodes: usize, pki: &secure::Pki, user: &str, password: &str) -> KafkaCluster {
        let dir = std::env::temp_dir().join(unique_prefix("kafka-pki"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("ca.pem"), &pki.ca_pem).unwrap();
        std::fs::write(dir.join("server.pem"), &pki.server_cert_pem).unwrap();
        std::fs::write(dir.join("server.key"), &pki.server_key_pem).unwrap();
        let extra = [
            "--secure".to_owned(),
            dir.to_str().unwrap().to_owned(),
            user.to_owned(),
            password.to_owned(),
        ];
        Self::up_with(nodes, &extra)
    }

    /// The bootstrap addresses of the SASL_SSL and the (client-certificate) SSL listeners of a
    /// cluster from [`KafkaCluster::up_secure`].
    pub fn secure_listeners(&self) -> (String, String) {
        let text = std::fs::read_to_string(self.dir.join("secure")).expect("a secured cluster");
        let get = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix('='))
                .unwrap_or_else(|| panic!("no {name} listener in {text}"))
                .to_owned()
        };
        (get("sasl_ssl"), get("ssl"))
    }

    /// `nodes` nodes started with `scripts/kafka-dev kafka-up` and the options `extra`.
    pub fn up_with(nodes: usize, extra: &[String]) -> KafkaCluster {
        static N: AtomicUsize = AtomicUsize::new(0);
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let dir = root.join(".dev/clusters").join(format!(
            "test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let mut cmd = kafka_dev();
        cmd.arg("kafka-up")
            .arg(&dir)
            .arg(nodes.to_string())
            .args(["--owner", &std::process::id().to_string()])
            .args(extra);
        let out = cmd.output().expect("run scripts/kafka-dev kafka-up");
        assert!(
            out.status.success(),
            "scripts/kafka-dev kafka-up failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let bootstrap = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .last()
            .expect("the bootstrap address")
            .to_owned();
        KafkaCluster { dir, bootstrap }
    }

    /// `stop` (SIGTERM: a controlled shutdown), `kill` (SIGKILL), `freeze` (SIGSTOP), `thaw`
    /// (SIGCONT) or `start` (again, with its data) node `id` (1-based).
    pub fn node(&self, id: usize, action: &str) {
        let out = kafka_dev()
            .arg("kafka-node")
            .arg(&self.dir)
            .arg(id.to_string())
            .arg(action)
            .output()
            .expect("run scripts/kafka-dev kafka-node");
        assert!(
            out.status.success(),
            "kafka-node {id} {action}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Waits until every node lists all `nodes` brokers again (after a restart).
    pub fn wait_whole(&self, nodes: usize) {
        let out = kafka_dev()
            .arg("kafka-wait")
            .arg(&self.dir)
            .arg(nodes.to_string())
            .output()
            .expect("run scripts/kafka-dev kafka-wait");
        assert!(
            out.status.success(),
            "kafka-wait: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The address of node `id`.
    pub fn addr(&self, id: usize) -> String {
        self.bootstrap.split(',').nth(id - 1).unwrap().to_owned()
    }
}

impl Drop for KafkaCluster {
    fn drop(&mut self) {
        let _ = kafka_dev().arg("kafka-down").arg(&self.dir).output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs `scripts/kafka-dev install` (once per test binary) and returns the broker binary's path.
fn install() -> String {
    static BIN: OnceLock<String> = OnceLock::new();
    BIN.get_or_init(|| {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let out = std::process::Command::new(root.join("scripts/kafka-dev"))
            .arg("install")
            .output()
            .expect("run scripts/kafka-dev install");
        assert!(
            out.status.success(),
            "scripts/kafka-dev install failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    })
    .clone()
}

/// The Python of `.dev/venv` (aiokafka and cramjam installed), for the interoperability tests.
pub fn python() -> std::path::PathBuf {
    install();
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".dev/venv/bin/python")
}

/// Starts a broker on a free loopback port, watched by a shell that stops it as soon as this
/// test process is gone (statics are never dropped, so no destructor would).
fn start_local_broker() -> String {
    let bin = install();
    let port = free_port();
    let watch = format!(
        "\"$0\" broker --listener-url tcp://127.0.0.1:{port} --advertised-listener-url tcp://127.0.0.1:{port} --storage-engine memory://tansu/ >/dev/null 2>&1 & b=$!; \
         trap 'kill $b 2>/dev/null' EXIT; \
         while kill -0 {parent} 2>/dev/null && kill -0 $b 2>/dev/null; do sleep 0.5; done",
        parent = std::process::id()
    );
    let watcher = std::process::Command::new("bash")
        .args(["-c", &watch, &bin])
        .stdin(std::process::Stdio::null())
        .spawn()
        .expect("start the local broker");
    // Kept for the life of the process; it ends (and stops the broker) when this process does.
    static WATCHER: OnceLock<Mutex<std::process::Child>> = OnceLock::new();
    let _ = WATCHER.set(Mutex::new(watcher));
    let addr = format!("127.0.0.1:{port}");
    for _ in 0..200 {
        if std::net::TcpStream::connect(&addr).is_ok() {
            return addr;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("the local test broker did not start on {addr}");
}

/// A port nothing listens on, for a server the test starts later. Picked below the kernel's
/// ephemeral range (32768 and up on Linux): a port from `bind(0)` is one the kernel also hands
/// to outgoing connections, so another test's client could take it before the server binds it.
pub fn free_port() -> u16 {
    // Claimed for an hour in the registry `scripts/kafka-dev` uses too (an empty file per
    // port, created exclusively): a port that is free now is free until someone binds it, and
    // brokers and proxies of tests running at once must not pick the same one.
    let registry = std::env::temp_dir().join("faststream-ports");
    let _ = std::fs::create_dir_all(&registry);
    for _ in 0..1000 {
        let port = fastrand::u16(20_000..32_000);
        let claim = registry.join(port.to_string());
        let recent = std::fs::metadata(&claim)
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().unwrap_or_default() < Duration::from_secs(3600));
        if recent {
            continue;
        }
        let _ = std::fs::remove_file(&claim);
        let claimed = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&claim)
            .is_ok();
        if claimed && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port between 20000 and 32000");
}

/// A topic prefix no other test (or earlier run) uses.
pub fn unique_prefix(name: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "t{}-{}-{}-{name}.",
        std::process::id(),
        nanos % 1_000_000_000_000,
        N.fetch_add(1, Ordering::SeqCst)
    )
}

pub async fn raw_client() -> Client {
    client_at(&bootstrap()).await
}

/// An rskafka client of the broker at `addr` (the suite's, or a test's own Kafka).
pub async fn client_at(addr: &str) -> Client {
    ClientBuilder::new(vec![addr.to_owned()])
        .build()
        .await
        .unwrap_or_else(|e| panic!("connect to the broker at {addr}: {e}"))
}

pub async fn create_topic(client: &Client, topic: &str, partitions: i32) {
    client
        .controller_client()
        .unwrap()
        .create_topic(topic, partitions, 1, 5_000)
        .await
        .unwrap_or_else(|e| panic!("create topic {topic}: {e}"));
    // Wait until metadata shows it.
    for _ in 0..100 {
        let topics = client.list_topics().await.unwrap();
        if topics
            .iter()
            .any(|t| t.name == topic && t.partitions.len() as i32 == partitions)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("topic {topic} did not appear");
}

pub fn record(key: Option<&str>, value: &[u8], headers: &[(&str, &str)]) -> Record {
    Record {
        key: key.map(|k| k.as_bytes().to_vec()),
        value: Some(value.to_vec()),
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect(),
        timestamp: chrono::Utc::now(),
    }
}

/// Produces with rskafka directly (not through the framework).
pub async fn produce(client: &Client, topic: &str, partition: i32, records: Vec<Record>) {
    let pc = client
        .partition_client(topic, partition, UnknownTopicHandling::Retry)
        .await
        .unwrap();
    for chunk in records.chunks(500) {
        pc.produce(chunk.to_vec(), Compression::NoCompression)
            .await
            .unwrap();
    }
}

/// Reads every partition of `topic` from the start until `want` records arrived (or panics at
/// the timeout). Returns records per partition, in offset order.
pub async fn read(
    client: &Client,
    topic: &str,
    want: usize,
) -> BTreeMap<i32, Vec<RecordAndOffset>> {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    let partitions = loop {
        let topics = client.list_topics().await.unwrap();
        if let Some(t) = topics.iter().find(|t| t.name == topic) {
            break t.partitions.iter().copied().collect::<Vec<_>>();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "topic {topic} never appeared"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut clients = Vec::new();
    for p in &partitions {
        let pc = client
            .partition_client(topic, *p, UnknownTopicHandling::Retry)
            .await
            .unwrap();
        let start = pc.get_offset(OffsetAt::Earliest).await.unwrap();
        clients.push((*p, pc, start));
    }
    let mut out: BTreeMap<i32, Vec<RecordAndOffset>> = BTreeMap::new();
    let mut total = 0;
    while total < want {
        assert!(
            tokio::time::Instant::now() < deadline,
            "read {total} of {want} records from {topic} within {TIMEOUT:?}; per partition {:?}; \
             the service's log lines about this test:\n{}",
            out.iter().map(|(p, r)| (*p, r.len())).collect::<Vec<_>>(),
            logs_about(topic)
        );
        let mut progressed = false;
        for (p, pc, next) in clients.iter_mut() {
            let (records, _) = pc.fetch_records(*next, 1..4_000_000, 100).await.unwrap();
            let from = *next;
            for r in records.into_iter().filter(|r| r.offset >= from) {
                *next = r.offset + 1;
                total += 1;
                progressed = true;
                out.entry(*p).or_default().push(r);
            }
        }
        if !progressed {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    out
}

/// Reads every partition of `topic` (`partitions` of them) from the start, all partitions at
/// once, until `want` records arrived in all, then once more each partition to its end (so
/// that duplicates beyond `want` are returned too). For topics of many partitions, where
/// [`read`]'s one-partition-at-a-time sweep is slow. Panics at the timeout.
pub async fn read_all_partitions(
    client: &Client,
    topic: &str,
    partitions: i32,
    want: usize,
) -> Vec<RecordAndOffset> {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    let total = Arc::new(AtomicUsize::new(0));
    let mut readers = tokio::task::JoinSet::new();
    for p in 0..partitions {
        let pc = client
            .partition_client(topic, p, UnknownTopicHandling::Retry)
            .await
            .unwrap();
        let total = total.clone();
        readers.spawn(async move {
            let mut got = Vec::new();
            let mut next = 0;
            let mut last_round = false;
            loop {
                // Once all arrived, no waiting: only what is there (1 ms, not 0: Tansu
                // answers a fetch with no wait without any topic).
                let reached = total.load(Ordering::SeqCst) >= want;
                let (records, high) = pc
                    .fetch_records(next, 1..4_000_000, if reached { 1 } else { 200 })
                    .await
                    .unwrap();
                let from = next;
                for r in records.into_iter().filter(|r| r.offset >= from) {
                    next = r.offset + 1;
                    total.fetch_add(1, Ordering::SeqCst);
                    got.push(r);
                }
                if last_round && next >= high {
                    return got;
                }
                last_round = reached;
                if tokio::time::Instant::now() > deadline {
                    return got;
                }
            }
        });
    }
    let mut all = Vec::new();
    while let Some(got) = readers.join_next().await {
        all.extend(got.unwrap());
    }
    assert!(
        all.len() >= want,
        "read {} of {want} records from the {partitions} partitions of {topic} within \
         {TIMEOUT:?}; the service's log lines about this test:\n{}",
        all.len(),
        logs_about(topic)
    );
    all
}

/// The records of `partition` of `topic` from offset `from` on that one fetch returns
/// (waiting up to `max_wait_ms` for some), none before `from`.
pub async fn fetch_from(
    client: &Client,
    topic: &str,
    partition: i32,
    from: i64,
    max_wait_ms: i32,
) -> Vec<RecordAndOffset> {
    let pc = client
        .partition_client(topic, partition, UnknownTopicHandling::Error)
        .await
        .unwrap();
    let (records, _) = pc
        .fetch_records(from, 1..4_000_000, max_wait_ms)
        .await
        .unwrap();
    records.into_iter().filter(|r| r.offset >= from).collect()
}

pub fn text(r: &RecordAndOffset) -> String {
    String::from_utf8(r.record.value.clone().unwrap_or_default()).unwrap()
}

/// A running app; dropping it does not stop it, call `stop`.
pub struct RunningApp {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<faststream::Result<()>>,
}

impl RunningApp {
    /// Waits (within the timeout) for the app to end by itself.
    pub async fn finished(self) -> faststream::Result<()> {
        tokio::time::timeout(TIMEOUT, self.task)
            .await
            .expect("the app ends by itself within the timeout")
            .expect("the app task does not panic")
    }

    /// Ends the app abruptly, as a crash would: no revoke, no final commit, no LeaveGroup.
    pub async fn crash(self) {
        self.task.abort();
        let _ = self.task.await;
    }

    /// Whether the app has ended (by itself).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    pub async fn stop(mut self) -> faststream::Result<()> {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(TIMEOUT, self.task)
            .await
            .expect("the app stops within the timeout")
            .expect("the app task does not panic")
    }
}

/// Starts `app` and waits until it consumes every subscription.
pub async fn start(app: FastStream<KafkaBroker>) -> RunningApp {
    let mut ready = app.ready();
    let (tx, rx) = oneshot::channel();
    let task = tokio::spawn(app.run_until(async {
        let _ = rx.await;
    }));
    let ok = tokio::time::timeout(TIMEOUT, ready.wait())
        .await
        .expect("the app gets ready in time");
    if !ok {
        let res = task.await.unwrap();
        panic!("the app stopped before it was ready: {res:?}");
    }
    RunningApp {
        stop: Some(tx),
        task,
    }
}

pub fn app(routes: Vec<&'static RouteDef>, prefix: &str) -> FastStream<KafkaBroker> {
    init_logs();
    FastStream::new(KafkaBroker::new(&bootstrap()))
        .with_routes(routes)
        .topic_prefix(prefix)
}

/// The last captured log lines naming the test prefix of `topic` (its part before the first
/// `.`), for a failure message.
pub fn logs_about(topic: &str) -> String {
    let prefix = topic.split('.').next().unwrap_or(topic);
    let all = logs();
    let lines: Vec<&str> = all.lines().filter(|l| l.contains(prefix)).collect();
    lines[lines.len().saturating_sub(80)..].join("\n")
}

/// Captured log output of this test binary (every test's, filter by topic prefix).
pub fn logs() -> String {
    String::from_utf8_lossy(&LOGS.get_or_init(Default::default).lock().unwrap()).into_owned()
}

static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();

struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        if std::env::var_os("RUST_LOG").is_some() {
            std::io::stderr().write_all(buf)?;
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub fn init_logs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let buf = LOGS.get_or_init(Default::default).clone();
        let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "warn,faststream=info".into());
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_ansi(false)
            .with_writer(move || Capture(buf.clone()))
            .init();
    });
}

/// Starts example `name` (built by `cargo test` beside the test binaries) with the test broker,
/// `prefix` as its `TOPIC_PREFIX` and `envs`, and waits for its "ready" log line.
pub async fn spawn_example(
    name: &str,
    prefix: &str,
    envs: &[(&str, &str)],
) -> tokio::process::Child {
    spawn_example_logged(name, prefix, envs).await.0
}

/// [`spawn_example`], also keeping what the example logs (its standard output).
pub async fn spawn_example_logged(
    name: &str,
    prefix: &str,
    envs: &[(&str, &str)],
) -> (tokio::process::Child, Arc<Mutex<String>>) {
    use tokio::io::AsyncBufReadExt;
    let log = Arc::new(Mutex::new(String::new()));
    let mut child = tokio::process::Command::new(example(name))
        .env("KAFKA_BOOTSTRAP", bootstrap())
        .env("TOPIC_PREFIX", prefix)
        .env("RUST_LOG", "info")
        .envs(envs.iter().copied())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    tokio::time::timeout(TIMEOUT, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let mut kept = log.lock().unwrap();
            kept.push_str(&line);
            kept.push('\n');
            if line.contains(" ready") {
                return;
            }
        }
        panic!("example {name} exited before it was ready");
    })
    .await
    .expect("the example gets ready in time");
    // Keep reading so the example never blocks on a full pipe.
    let kept = log.clone();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            let mut kept = kept.lock().unwrap();
            kept.push_str(&line);
            kept.push('\n');
        }
    });
    (child, log)
}

/// The binary of example `name`, built by `cargo test` beside the test binaries.
pub fn example(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples")
        .join(name);
    assert!(
        bin.exists(),
        "{} is missing: run the suite with `cargo test` (which builds the examples)",
        bin.display()
    );
    bin
}

/// Sends SIGTERM to `child` and checks it exits cleanly within the timeout.
pub async fn terminate(mut child: tokio::process::Child) {
    let pid = child.id().expect("still running").to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = tokio::time::timeout(TIMEOUT, child.wait())
        .await
        .expect("stops on SIGTERM")
        .unwrap();
    assert!(exit.success(), "{exit:?}");
}

/// A broker of the test's own (ended when dropped), listening on a free port and advertising
/// `advertised_port` (a proxy's) or its own: a Tansu process, or a one-node Kafka cluster when
/// the suite runs against Kafka. Either way it starts empty. For tests that need fixed topic
/// names or to cut the connection.
pub enum OwnBroker {
    Tansu(#[allow(dead_code)] tokio::process::Child),
    Kafka(#[allow(dead_code)] KafkaCluster),
}

impl OwnBroker {
    /// Starts it and returns it with its listening address.
    pub async fn start(advertised_port: Option<u16>) -> (OwnBroker, String) {
        let port = free_port();
        Self::start_on(port, advertised_port).await
    }

    /// Ends it at once and waits until it is gone (everything it held is lost: the next one
    /// starts empty).
    pub async fn stop(self) {
        match self {
            OwnBroker::Tansu(mut child) => {
                let _ = child.kill().await;
            }
            OwnBroker::Kafka(cluster) => tokio::task::spawn_blocking(move || drop(cluster))
                .await
                .unwrap(),
        }
    }

    /// Starts it on `port` (to restart a broker where clients expect it).
    pub async fn start_on(port: u16, advertised_port: Option<u16>) -> (OwnBroker, String) {
        Self::start_kind(broker_kind(), port, advertised_port).await
    }

    /// A Kafka node of the test's own whatever the suite's broker (for what only Kafka has,
    /// such as transactions), advertising `advertised_port` (a proxy's) if given.
    pub async fn kafka(advertised_port: Option<u16>) -> (OwnBroker, String) {
        Self::start_kind(BrokerKind::Kafka, free_port(), advertised_port).await
    }

    /// A Tansu of the test's own whatever the suite's broker (for what Tansu lacks).
    pub async fn tansu() -> (OwnBroker, String) {
        Self::start_kind(BrokerKind::Tansu, free_port(), None).await
    }

    async fn start_kind(
        kind: BrokerKind,
        port: u16,
        advertised_port: Option<u16>,
    ) -> (OwnBroker, String) {
        if kind == BrokerKind::Kafka {
            let cluster = tokio::task::spawn_blocking(move || {
                KafkaCluster::up(1, Some(port), advertised_port)
            })
            .await
            .unwrap();
            let addr = cluster.addr(1);
            return (OwnBroker::Kafka(cluster), addr);
        }
        let bin = install();
        let advertised = advertised_port.unwrap_or(port);
        let child = tokio::process::Command::new(bin)
            .args([
                "broker",
                "--listener-url",
                &format!("tcp://127.0.0.1:{port}"),
            ])
            .args([
                "--advertised-listener-url",
                &format!("tcp://127.0.0.1:{advertised}"),
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let addr = format!("127.0.0.1:{port}");
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(&addr).await.is_ok() {
                return (OwnBroker::Tansu(child), addr);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the test's own broker did not start");
    }
}

/// Runs the official parser on `text`; panics with its diagnostics if it finds an error.
pub fn validate_asyncapi(text: &str, ext: &str) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new(root.join("scripts/kafka-dev"))
        .arg("asyncapi-parser")
        .output()
        .expect("run scripts/kafka-dev asyncapi-parser");
    assert!(
        out.status.success(),
        "installing the parser failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let mut lines = stdout.lines();
    let (node, modules) = (lines.next().unwrap(), lines.next().unwrap());
    let dir = std::env::temp_dir().join(unique_prefix("asyncapi"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(format!("doc.{ext}"));
    std::fs::write(&file, text).unwrap();
    let checked = std::process::Command::new(node)
        .arg(root.join("tests/interop/asyncapi_validate.cjs"))
        .arg(&file)
        .env("NODE_PATH", modules)
        .output()
        .expect("run node");
    let report = String::from_utf8_lossy(&checked.stdout);
    assert!(
        checked.status.success(),
        "the parser refused the document:\n{report}{}\n{text}",
        String::from_utf8_lossy(&checked.stderr)
    );
    assert!(report.lines().any(|l| l == "ok"), "{report}");
    let _ = std::fs::remove_dir_all(dir);
}

/// Waits (polling every 50 ms, at most the timeout) until `done` holds; panics naming `what`.
pub async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The folder of Apache Kafka's jars (`scripts/kafka-dev kafka-install`), for the Java client
/// the interoperability tests run.
pub fn kafka_libs() -> std::path::PathBuf {
    static DIR: OnceLock<std::path::PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let out = kafka_dev()
            .arg("kafka-install")
            .output()
            .expect("run scripts/kafka-dev kafka-install");
        assert!(
            out.status.success(),
            "scripts/kafka-dev kafka-install failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::path::PathBuf::from(String::from_utf8(out.stdout).unwrap().trim()).join("libs")
    })
    .clone()
}

/// `java` with Kafka's jars on its class path.
fn kafka_java() -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new("java");
    cmd.arg("-cp")
        .arg(format!("{}/*", kafka_libs().display()))
        .arg("-Xmx256m")
        .kill_on_drop(true);
    cmd
}

/// `tests/interop/JavaClient.java` run from source with Kafka's jars (the Java client as a peer).
pub fn java_client(args: &[&str]) -> tokio::process::Command {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut cmd = kafka_java();
    cmd.arg(root.join("tests/interop/JavaClient.java"))
        .args(args);
    cmd
}

/// Runs one of Kafka's own tools (`class` of its jars, such as
/// `org.apache.kafka.tools.ConfigCommand`) to its end; fails the test with its output if the
/// tool fails.
pub async fn kafka_tool(class: &str, args: &[&str]) {
    let out = kafka_java()
        .arg(class)
        .args(args)
        .output()
        .await
        .unwrap_or_else(|e| panic!("run {class}: {e}"));
    assert!(
        out.status.success(),
        "{class} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Reads a peer member's `ASSIGNED [p, ...]` lines (the aiokafka and Java member programs)
/// until it holds a share of the `total` partitions (some, not all); returns that share.
pub async fn await_share<R: tokio::io::AsyncBufRead + Unpin>(
    lines: &mut tokio::io::Lines<R>,
    total: usize,
    who: &str,
) -> Vec<i32> {
    tokio::time::timeout(TIMEOUT, async {
        loop {
            let line = lines
                .next_line()
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("the {who} member exited early"));
            if let Some(list) = line.strip_prefix("ASSIGNED ") {
                let parts: Vec<i32> = list
                    .trim_matches(|c| c == '[' || c == ']')
                    .split(',')
                    .filter_map(|p| p.trim().parse().ok())
                    .collect();
                if !parts.is_empty() && parts.len() < total {
                    return parts;
                }
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the {who} member gets a share of the partitions"))
}

/// Starts a service of `routes` with `security` against `bootstrap` (connect timeout 5 s) and
/// returns its startup error.
pub async fn startup_error(
    bootstrap: &str,
    security: faststream::kafka::Security,
    routes: Vec<&'static faststream::runtime::RouteDef>,
) -> String {
    use faststream::kafka::KafkaBroker;
    let timeout = std::time::Duration::from_secs(5);
    let app = faststream::FastStream::new(
        KafkaBroker::builder(bootstrap)
            .security(security)
            .connect_timeout(timeout)
            .build(),
    )
    .with_routes(routes)
    .topic_prefix(unique_prefix("fail"));
    let run = app.run_until(std::future::pending());
    let err = tokio::time::timeout(timeout + std::time::Duration::from_secs(10), run)
        .await
        .expect("startup ends within the connect timeout")
        .expect_err("startup fails")
        .to_string();
    eprintln!("startup error: {err}");
    err
}

/// The body of `GET url`, fetched with Python's standard HTTP client.
pub async fn http_get(url: &str) -> String {
    let script = "import sys, urllib.request\n\
        print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode(), end='')";
    let out = tokio::process::Command::new("python3")
        .args(["-c", script, url])
        .output()
        .await
        .expect("run python3");
    assert!(
        out.status.success(),
        "GET {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The values of a gauge labelled by broker, one per broker.
pub fn per_broker(page: &str, name: &str) -> Vec<f64> {
    let start = format!("{name}{{broker=\"");
    page.lines()
        .filter(|l| l.starts_with(&start))
        .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
        .collect()
}
