//! Control of a running service against the broker: pausing and resuming a consumer group's
//! handler from code and over the control endpoint, seeking its partitions, and redriving
//! dead letters.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use faststream::kafka::KafkaBroker;
use faststream::{publisher, routes, subscriber, FastStream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[subscriber(
    "ctl-in",
    group_id = "ctl",
    auto_offset_reset = "earliest",
    session_timeout_ms = 6000,
    heartbeat_interval_ms = 500,
    commit_interval_ms = 200
)]
#[publisher("ctl-out")]
async fn relay_ctl(body: String) -> String {
    body
}

/// Sends one HTTP request to `addr` and returns the status code and body.
async fn http(addr: std::net::SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("{method} {path} HTTP/1.1\r\nhost: test\r\ncontent-length: 0\r\n\r\n");
    conn.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).await.unwrap();
    let status = answer[9..12].parse().unwrap();
    let body = answer
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    (status, body)
}

/// A client, and the input (3 partitions) and output (1) topics `{prefix}{name}-in` and
/// `{prefix}{name}-out`.
async fn topics(prefix: &str, name: &str) -> (rskafka::client::Client, String, String) {
    let client = raw_client().await;
    let (input, out) = (format!("{prefix}{name}-in"), format!("{prefix}{name}-out"));
    create_topic(&client, &input, 3).await;
    create_topic(&client, &out, 1).await;
    (client, input, out)
}

/// Produces `range` as `m{i}` bodies to partitions `i % 3` of `topic`.
async fn feed(client: &rskafka::client::Client, topic: &str, range: std::ops::Range<usize>) {
    for p in 0..3 {
        let records = range
            .clone()
            .filter(|i| i % 3 == p)
            .map(|i| record(None, format!("m{i}").as_bytes(), &[]))
            .collect();
        produce(client, topic, p as i32, records).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_handler_takes_nothing_keeps_its_partitions_and_resumes_where_it_stopped() {
    let prefix = unique_prefix("ctl");
    let (client, input, out) = topics(&prefix, "ctl").await;
    let revoked = Arc::new(AtomicUsize::new(0));
    let counted = revoked.clone();
    let port = free_port();
    let endpoint: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let app = FastStream::new(
        KafkaBroker::builder(&bootstrap())
            .on_partitions_revoked(move |_, _| {
                counted.fetch_add(1, Ordering::SeqCst);
            })
            .build(),
    )
    .with_routes(routes![relay_ctl])
    .topic_prefix(&prefix)
    .control_endpoint(endpoint);
    let control = app.control();
    init_logs();
    let running = start(app).await;

    feed(&client, &input, 0..150).await;
    read(&client, &out, 150).await;
    control.pause("relay_ctl").unwrap();
    assert!(control.paused("relay_ctl").unwrap().is_all());
    feed(&client, &input, 150..300).await;
    // Longer than the session timeout: a member that stopped heartbeating would be expelled
    // and its partitions revoked.
    let until = tokio::time::Instant::now() + Duration::from_secs(8);
    while tokio::time::Instant::now() < until {
        let more = fetch_from(&client, &out, 0, 150, 200).await;
        assert!(
            more.is_empty(),
            "an output while paused: {:?}",
            more.iter().map(text).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        revoked.load(Ordering::SeqCst),
        0,
        "the paused member kept its partitions"
    );

    // The control endpoint: state changes take POST only.
    let (status, _) = http(endpoint, "GET", "/subscribers/relay_ctl/resume").await;
    assert_eq!(status, 405);
    assert!(control.paused("relay_ctl").unwrap().is_all());
    let (status, body) = http(endpoint, "GET", "/subscribers").await;
    assert_eq!(status, 200);
    assert!(
        body.contains("relay_ctl") && body.contains("\"paused\":true"),
        "{body}"
    );
    let (status, body) = http(endpoint, "POST", "/subscribers/relay_ctl/resume").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"paused\":false"), "{body}");

    let relayed = read(&client, &out, 300).await;
    assert_eq!(revoked.load(Ordering::SeqCst), 0, "no rebalance");
    running.stop().await.expect("a clean shutdown");
    let mut outputs: Vec<String> = relayed.values().flatten().map(text).collect();
    outputs.sort();
    outputs.dedup();
    assert_eq!(outputs.len(), 300, "every input relayed");
    // Nothing more behind them: no input was handled twice.
    let more = fetch_from(&client, &out, 0, 300, 500).await;
    assert!(
        relayed[&0].len() == 300 && more.is_empty(),
        "duplicates after resume"
    );
    for p in 0..3 {
        assert_eq!(
            wire_committed(&input, &prefix, p).await,
            100,
            "partition {p} committed to its end"
        );
    }
}

/// The group's committed offset of `partition` of `topic`.
async fn wire_committed(topic: &str, prefix: &str, partition: i32) -> i64 {
    common::wire::committed_partition(&bootstrap(), &format!("{prefix}ctl"), topic, partition).await
}

#[subscriber(
    "seek-in",
    group_id = "seek",
    auto_offset_reset = "earliest",
    session_timeout_ms = 6000,
    heartbeat_interval_ms = 500,
    commit_interval_ms = 200
)]
#[publisher("seek-out")]
async fn relay_seek(body: String) -> String {
    body
}

/// The `relay_seek` service with its control endpoint on `endpoint`.
fn seek_app(prefix: &str, endpoint: std::net::SocketAddr) -> FastStream<KafkaBroker> {
    init_logs();
    FastStream::new(KafkaBroker::new(&bootstrap()))
        .with_routes(routes![relay_seek])
        .topic_prefix(prefix)
        .control_endpoint(endpoint)
}

/// The bodies of the output topic's records from offset `from` on, sorted.
fn sorted_bodies(records: &[rskafka::record::RecordAndOffset], from: i64) -> Vec<String> {
    let mut bodies: Vec<String> = records
        .iter()
        .filter(|r| r.offset >= from)
        .map(text)
        .collect();
    bodies.sort();
    bodies
}

fn bodies_of(range: std::ops::Range<usize>) -> Vec<String> {
    let mut bodies: Vec<String> = range.map(|i| format!("m{i}")).collect();
    bodies.sort();
    bodies
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seek_to_a_timestamp_from_the_command_line_handles_exactly_what_came_after_it_again() {
    let prefix = unique_prefix("seek-ts");
    let (client, input, out) = topics(&prefix, "seek").await;
    let endpoint: std::net::SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let running = start(seek_app(&prefix, endpoint)).await;
    feed(&client, &input, 0..150).await;
    read(&client, &out, 150).await;
    // Record timestamps are the producer's clock (this machine's): later messages are later.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let since = chrono::Utc::now().timestamp_millis();
    tokio::time::sleep(Duration::from_millis(20)).await;
    feed(&client, &input, 150..300).await;
    read(&client, &out, 300).await;

    let cli = tokio::process::Command::new(example("kafka_cli"))
        .args(["control", &endpoint.to_string(), "seek", "relay_seek"])
        .arg(format!("timestamp:{since}"))
        .output()
        .await
        .unwrap();
    assert!(
        cli.status.success(),
        "{}",
        String::from_utf8_lossy(&cli.stderr)
    );
    let relayed = read(&client, &out, 450).await;
    // The group commits the end again once the replay is done.
    for p in 0..3 {
        wait_committed(
            &input,
            &format!("{prefix}seek"),
            p,
            100,
            "partition {p} committed to its end",
        )
        .await;
    }
    running.stop().await.expect("a clean shutdown");
    let records = relayed[&0].clone();
    assert_eq!(
        sorted_bodies(&records, 300),
        bodies_of(150..300),
        "exactly the messages after the timestamp, again"
    );
    assert!(
        fetch_from(&client, &out, 0, 450, 500).await.is_empty(),
        "nothing else handled again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seek_is_committed_so_that_a_restart_keeps_it() {
    let prefix = unique_prefix("seek-keep");
    let (client, input, out) = topics(&prefix, "seek").await;
    let group = format!("{prefix}seek");
    let app = seek_app(&prefix, ([127, 0, 0, 1], free_port()).into());
    let control = app.control();
    let running = start(app).await;
    feed(&client, &input, 0..90).await;
    read(&client, &out, 90).await;
    for p in 0..3 {
        wait_committed(&input, &group, p, 30, "the first inputs committed").await;
    }
    // Paused, nothing moves the position after the seek: the commit shows it.
    control.pause("relay_seek").unwrap();
    control
        .seek_partitions(
            "relay_seek",
            &input,
            &[1],
            faststream::extract::SeekTo::Beginning,
        )
        .unwrap();
    wait_committed(&input, &group, 1, 0, "the seek was committed").await;
    assert_eq!(
        wire_committed_group(&input, &group, 0).await,
        30,
        "other partitions stay"
    );
    running.stop().await.expect("a clean shutdown");

    // A new instance of the service (not paused) starts from the committed seek.
    let running = start(seek_app(&prefix, ([127, 0, 0, 1], free_port()).into())).await;
    let relayed = read(&client, &out, 120).await;
    running.stop().await.expect("a clean shutdown");
    assert_eq!(
        sorted_bodies(&relayed[&0], 90),
        {
            let mut again: Vec<String> = (0..90)
                .filter(|i| i % 3 == 1)
                .map(|i| format!("m{i}"))
                .collect();
            again.sort();
            again
        },
        "partition 1 handled again from its beginning, and only it"
    );
    assert!(fetch_from(&client, &out, 0, 120, 500).await.is_empty());
}

/// Waits (up to 30 s) until `group` committed `want` for `partition` of `topic`.
async fn wait_committed(topic: &str, group: &str, partition: i32, want: i64, what: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let committed = wire_committed_group(topic, group, partition).await;
        if committed == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: partition {partition} committed {committed}, not {want}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `group`'s committed offset of `partition` of `topic`.
async fn wire_committed_group(topic: &str, group: &str, partition: i32) -> i64 {
    common::wire::committed_partition(&bootstrap(), group, topic, partition).await
}

// ---------------------------------------------------------------------------------------------
// Dead-letter redrive.

static FRAGILE_BROKEN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

#[subscriber(
    "fragile-in",
    group_id = "fragile",
    auto_offset_reset = "earliest",
    retry = 0,
    dlq = "fragile-in.dlq",
    commit_interval_ms = 200
)]
#[publisher("fragile-out")]
async fn fragile(body: String) -> Result<String, String> {
    if body.starts_with("bad") && FRAGILE_BROKEN.load(Ordering::SeqCst) {
        return Err("the downstream system refused it".into());
    }
    Ok(body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_go_back_once_the_cause_is_fixed_by_selection_and_only_once() {
    let prefix = unique_prefix("redrive");
    let (client, input, out) = topics(&prefix, "fragile").await;
    let dlq = format!("{input}.dlq");
    create_topic(&client, &dlq, 1).await;
    let broker = KafkaBroker::new(&bootstrap());
    init_logs();
    let app = FastStream::new(broker.clone())
        .with_routes(routes![fragile])
        .topic_prefix(&prefix);
    let running = start(app).await;
    // 300 inputs over 3 partitions, keys k0..k4; every third one fails while "broken".
    for p in 0..3 {
        let records = (0..300)
            .filter(|i| i % 3 == p)
            .map(|i| {
                let body = if i % 2 == 0 {
                    format!("bad{i}")
                } else {
                    format!("ok{i}")
                };
                record(Some(&format!("k{}", i % 5)), body.as_bytes(), &[])
            })
            .collect();
        produce(&client, &input, p, records).await;
    }
    read(&client, &out, 150).await;
    read(&client, &dlq, 150).await;
    FRAGILE_BROKEN.store(false, Ordering::SeqCst);

    // The fix is deployed: key k1's dead letters first, then again (nothing new), then the
    // ones that failed in a time range covering everything (the rest, and k1's again: a
    // selection keeps its own progress).
    let k1 = faststream::kafka::Redrive::all().key("k1");
    let report = broker.redrive(&dlq, &k1).await.unwrap();
    assert_eq!(
        (report.moved, report.not_selected, report.not_movable),
        (30, 120, 0)
    );
    let again = broker.redrive(&dlq, &k1).await.unwrap();
    assert_eq!(again.moved, 0, "the same selection moves nothing twice");
    let relayed = read(&client, &out, 180).await;
    let redriven: Vec<String> = relayed[&0].iter().skip(150).map(text).collect();
    let mut want: Vec<String> = (0..300)
        .filter(|i| i % 2 == 0 && i % 5 == 1)
        .map(|i| format!("bad{i}"))
        .collect();
    let mut got = redriven.clone();
    got.sort();
    want.sort();
    assert_eq!(got, want, "exactly key k1's dead letters, handled again");
    let everything = faststream::kafka::Redrive::all().failed_between(0, i64::MAX);
    let rest = broker.redrive(&dlq, &everything).await.unwrap();
    assert_eq!(rest.moved, 150);
    read(&client, &out, 330).await;
    running.stop().await.expect("a clean shutdown");
    // The dead letters went back to the input partitions they came from, after the first 100.
    let redriven = fetch_from(&client, &input, 0, 100, 500).await;
    let first = &redriven[0];
    assert!(
        header_of(first, faststream::kafka::REDRIVEN_FROM).starts_with(&format!("{dlq}/0/")),
        "a redriven message says where it came from"
    );
    assert!(
        first
            .record
            .headers
            .keys()
            .all(|h| !h.starts_with("x-faststream-original")),
        "without the failure headers"
    );
}

fn header_of(r: &rskafka::record::RecordAndOffset, name: &str) -> String {
    String::from_utf8(r.record.headers.get(name).cloned().unwrap_or_default()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redrive_killed_mid_way_and_run_again_moves_every_dead_letter() {
    const N: usize = 1000;
    let payload = "x".repeat(10_000);
    for attempt in 0..3 {
        let prefix = unique_prefix(&format!("redrive-kill{attempt}"));
        let client = raw_client().await;
        let (dlq, origin) = (format!("{prefix}dead"), format!("{prefix}origin"));
        create_topic(&client, &dlq, 1).await;
        create_topic(&client, &origin, 1).await;
        for chunk in (0..N).collect::<Vec<_>>().chunks(20) {
            let records = chunk
                .iter()
                .map(|i| {
                    let body = format!("{i}:{payload}");
                    record(
                        None,
                        body.as_bytes(),
                        &[
                            ("x-faststream-original-topic", origin.as_str()),
                            ("x-faststream-original-partition", "0"),
                            ("x-faststream-error", "it failed"),
                        ],
                    )
                })
                .collect();
            produce(&client, &dlq, 0, records).await;
        }
        let cli = || {
            let mut cmd = tokio::process::Command::new(example("kafka_cli"));
            cmd.args(["redrive", &dlq])
                .env("KAFKA_BOOTSTRAP", bootstrap())
                .kill_on_drop(true);
            cmd
        };
        let mut first = cli().stdout(std::process::Stdio::null()).spawn().unwrap();
        // Killed as soon as some dead letters are back, not all.
        let killed_at = loop {
            let back = fetch_from(&client, &origin, 0, 0, 10).await.len();
            if back > 0 {
                first.start_kill().unwrap();
                break back;
            }
            if let Some(status) = first.try_wait().unwrap() {
                panic!("the redrive ended before anything was back: {status}");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        let _ = first.wait().await;
        let back_before = count_all(&client, &origin).await;
        if back_before >= N {
            eprintln!("attempt {attempt}: the redrive was done before the kill landed; again");
            continue;
        }
        let group = format!("faststream-redrive.{dlq}");
        let committed = common::wire::committed_partition(&bootstrap(), &group, &dlq, 0).await;
        eprintln!("after the kill: {back_before} back, {committed} committed");
        let rerun = cli().output().await.unwrap();
        assert!(
            rerun.status.success(),
            "{}",
            String::from_utf8_lossy(&rerun.stderr)
        );
        let back = all_bodies(&client, &origin).await;
        let mut distinct: Vec<usize> = back
            .iter()
            .map(|b| b.split(':').next().unwrap().parse().unwrap())
            .collect();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), N, "every dead letter back, none lost");
        // What the killed run published but had not committed yet is moved again: at most one
        // chunk (256 KiB: 26 of these dead letters). On Tansu 0.6.0 the committed offset read
        // after such a kill lagged the writes by two chunks in some runs (also read 2 s
        // later: the last acknowledged commit was not kept), so there it can be two.
        let twice = back.len() - N;
        eprintln!(
            "killed with {killed_at}+ back ({back_before} after the kill); {twice} moved twice"
        );
        let chunks = if broker_kind() == BrokerKind::Kafka {
            1
        } else {
            2
        };
        assert!(twice <= 26 * chunks, "{twice} moved twice");
        return;
    }
    panic!("in three attempts the kill never landed before the redrive was done");
}

/// How many records `topic` (partition 0) holds.
async fn count_all(client: &rskafka::client::Client, topic: &str) -> usize {
    all_bodies(client, topic).await.len()
}

/// Every body of `topic` (partition 0), reading until a fetch finds nothing more.
async fn all_bodies(client: &rskafka::client::Client, topic: &str) -> Vec<String> {
    let mut bodies = Vec::new();
    let mut next = 0;
    loop {
        let more = fetch_from(client, topic, 0, next, 200).await;
        let Some(last) = more.last() else {
            return bodies;
        };
        next = last.offset + 1;
        bodies.extend(more.iter().map(text));
    }
}

// ---------------------------------------------------------------------------------------------
// Pattern subscriptions.

#[subscriber(
    pattern = "pat\\.[a-z]+",
    group_id = "pat",
    auto_offset_reset = "earliest",
    session_timeout_ms = 6000,
    heartbeat_interval_ms = 500,
    commit_interval_ms = 200
)]
#[publisher("pat-out")]
async fn by_pattern(body: String, topic: faststream::extract::Topic) -> String {
    format!("{}:{body}", topic.0)
}

#[subscriber(pattern = "upat\\.[a-z]+", auto_offset_reset = "earliest")]
#[publisher("upat-out")]
async fn by_pattern_ungrouped(body: String, topic: faststream::extract::Topic) -> String {
    format!("{}:{body}", topic.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pattern_subscription_picks_up_a_topic_created_while_running() {
    let prefix = unique_prefix("pattern");
    let client = raw_client().await;
    for name in ["pat.a", "pat.A1", "upat.a", "pat-out", "upat-out"] {
        create_topic(&client, &format!("{prefix}{name}"), 1).await;
    }
    let five = |tag: &str| -> Vec<rskafka::record::Record> {
        (0..5)
            .map(|i| record(None, format!("{tag}{i}").as_bytes(), &[]))
            .collect()
    };
    produce(&client, &format!("{prefix}pat.a"), 0, five("a")).await;
    produce(&client, &format!("{prefix}pat.A1"), 0, five("nomatch")).await;
    produce(&client, &format!("{prefix}upat.a"), 0, five("u")).await;
    init_logs();
    let app = FastStream::new(
        KafkaBroker::builder(&bootstrap())
            .metadata_max_age(Duration::from_millis(500))
            .build(),
    )
    .with_routes(routes![by_pattern, by_pattern_ungrouped])
    .topic_prefix(&prefix);
    let running = start(app).await;
    let (out, uout) = (format!("{prefix}pat-out"), format!("{prefix}upat-out"));
    read(&client, &out, 5).await;
    read(&client, &uout, 5).await;
    // Created while the service runs: taken at the next metadata refresh, from the beginning.
    for name in ["pat.b", "upat.b"] {
        let topic = format!("{prefix}{name}");
        create_topic(&client, &topic, 2).await;
        produce(&client, &topic, 0, five("b")).await;
        produce(&client, &topic, 1, five("c")).await;
    }
    let grouped = read(&client, &out, 15).await;
    let ungrouped = read(&client, &uout, 15).await;
    running.stop().await.expect("a clean shutdown");
    for (records, tag) in [(&grouped[&0], "pat"), (&ungrouped[&0], "upat")] {
        let mut got: Vec<String> = records.iter().map(text).collect();
        got.sort();
        let mut want: Vec<String> = (0..5)
            .map(|i| {
                format!(
                    "{prefix}{tag}.a:{}{i}",
                    if tag == "pat" { "a" } else { "u" }
                )
            })
            .chain((0..5).map(|i| format!("{prefix}{tag}.b:b{i}")))
            .chain((0..5).map(|i| format!("{prefix}{tag}.b:c{i}")))
            .collect();
        want.sort();
        assert_eq!(
            got, want,
            "{tag}: the matching topics, old and new, and only those"
        );
    }
    assert!(fetch_from(&client, &out, 0, 15, 300).await.is_empty());
}

// ---------------------------------------------------------------------------------------------
// Subscribers added and removed while the service runs.

#[subscriber(
    dynamic = true,
    group_id = "tenants",
    auto_offset_reset = "earliest",
    session_timeout_ms = 6000,
    heartbeat_interval_ms = 500,
    commit_interval_ms = 200
)]
#[publisher("tenants-out")]
async fn tenant_events(body: String, topic: faststream::extract::Topic) -> String {
    format!("{}:{body}", topic.0.rsplit('.').next().unwrap())
}

#[subscriber(dynamic = true, auto_offset_reset = "earliest")]
#[publisher("loose-out")]
async fn loose_events(body: String) -> String {
    body
}

/// Every output so far, read from the beginning.
async fn outputs_now(client: &rskafka::client::Client, topic: &str) -> Vec<String> {
    let mut all = Vec::new();
    let mut from = 0;
    loop {
        let got = fetch_from(client, topic, 0, from, 100).await;
        let Some(last) = got.last() else { break };
        from = last.offset + 1;
        all.extend(got.iter().map(text));
    }
    all
}

async fn wait_output(client: &rskafka::client::Client, topic: &str, want: &str) {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while !outputs_now(client, topic).await.iter().any(|o| o == want) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{want:?} never arrived on {topic}:\n{}",
            logs_about(topic)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A consumer-group handler subscribed to a topic while running handles it; unsubscribed, it
/// stops taking it with its progress committed (subscribed again, it goes on where it stopped);
/// the running service's AsyncAPI document lists what it is subscribed to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_subscribed_and_unsubscribed_while_running() {
    let prefix = unique_prefix("dynamic");
    let client = raw_client().await;
    let (a, b) = (format!("{prefix}tenant.a"), format!("{prefix}tenant.b"));
    let out = format!("{prefix}tenants-out");
    create_topic(&client, &a, 2).await;
    create_topic(&client, &out, 1).await;
    produce(&client, &a, 0, vec![record(None, b"1", &[])]).await;
    produce(&client, &a, 1, vec![record(None, b"2", &[])]).await;
    let app = app(routes![tenant_events], &prefix);
    let control = app.control();
    let running = start(app).await;
    // Not subscribed to anything: the document still says it takes topics at run time.
    let document = control.asyncapi().unwrap().to_json();
    assert!(document.contains("Control::subscribe"), "{document}");
    assert!(!document.contains(&a), "{document}");
    control.subscribe("tenant_events", "tenant.a").unwrap();
    wait_output(&client, &out, "a:1").await;
    wait_output(&client, &out, "a:2").await;
    assert_eq!(
        control.subscriptions("tenant_events").unwrap(),
        ["tenant.a"]
    );
    let document = control.asyncapi().unwrap().to_json();
    assert!(
        document.contains(&format!("\"address\": \"{a}\"")),
        "{document}"
    );
    // A topic that does not exist yet is created (the default missing-topics policy).
    control.subscribe("tenant_events", "tenant.b").unwrap();
    produce(&client, &b, 0, vec![record(None, b"1", &[])]).await;
    wait_output(&client, &out, "b:1").await;

    // Unsubscribed from a: once the group has rejoined without it (b's next message is
    // handled after the change), a's new messages are left alone.
    control.unsubscribe("tenant_events", "tenant.a").unwrap();
    let c = format!("{prefix}tenant.c");
    control.subscribe("tenant_events", "tenant.c").unwrap();
    produce(&client, &c, 0, vec![record(None, b"1", &[])]).await;
    wait_output(&client, &out, "c:1").await;
    produce(&client, &a, 0, vec![record(None, b"3", &[])]).await;
    produce(&client, &b, 0, vec![record(None, b"2", &[])]).await;
    wait_output(&client, &out, "b:2").await;
    let now = outputs_now(&client, &out).await;
    assert!(!now.contains(&"a:3".to_string()), "{now:?}");
    assert!(!control
        .asyncapi()
        .unwrap()
        .to_json()
        .contains(&format!("\"address\": \"{a}\"")));

    // Subscribed again: it goes on from the committed position, nothing of a repeated.
    control.subscribe("tenant_events", "tenant.a").unwrap();
    wait_output(&client, &out, "a:3").await;
    running.stop().await.unwrap();
    let all = outputs_now(&client, &out).await;
    for want in ["a:1", "a:2", "a:3", "b:1", "b:2", "c:1"] {
        assert_eq!(
            all.iter().filter(|o| *o == want).count(),
            1,
            "{want}: {all:?}"
        );
    }
    // An unknown handler is an error naming it.
    let err = control.subscribe("tenant_events_typo", "x").unwrap_err();
    assert!(err.to_string().contains("tenant_events_typo"), "{err}");
}

/// Without a consumer group: every partition of the subscribed topic from the reset position;
/// unsubscribed, its consumers stop; over the control endpoint too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ungrouped_handler_subscribed_over_the_control_endpoint() {
    let prefix = unique_prefix("dynloose");
    let client = raw_client().await;
    let (input, out) = (format!("{prefix}loose.in"), format!("{prefix}loose-out"));
    create_topic(&client, &input, 2).await;
    create_topic(&client, &out, 1).await;
    produce(&client, &input, 0, vec![record(None, b"x0", &[])]).await;
    produce(&client, &input, 1, vec![record(None, b"x1", &[])]).await;
    let endpoint: std::net::SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let app = app(routes![loose_events], &prefix).control_endpoint(endpoint);
    let running = start(app).await;
    let (status, body) = http(
        endpoint,
        "POST",
        "/subscribers/loose_events/subscribe?topic=loose.in",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("loose.in"), "{body}");
    wait_output(&client, &out, "x0").await;
    wait_output(&client, &out, "x1").await;
    let (status, body) = http(endpoint, "GET", "/asyncapi").await;
    assert_eq!(status, 200);
    assert!(body.contains(&input), "{body}");
    let (status, _) = http(
        endpoint,
        "POST",
        "/subscribers/loose_events/unsubscribe?topic=loose.in",
    )
    .await;
    assert_eq!(status, 200);
    let (status, body) = http(endpoint, "GET", "/subscribers").await;
    assert_eq!(status, 200);
    assert!(body.contains("\"topics\":[]"), "{body}");
    // Once a later subscription is served, the earlier unsubscribe was applied: a new message
    // of the unsubscribed topic is left alone.
    let other = format!("{prefix}loose.other");
    let path = "/subscribers/loose_events/subscribe?topic=loose.other";
    assert_eq!(http(endpoint, "POST", path).await.0, 200);
    produce(&client, &other, 0, vec![record(None, b"y0", &[])]).await;
    wait_output(&client, &out, "y0").await;
    produce(&client, &input, 0, vec![record(None, b"x2", &[])]).await;
    produce(&client, &other, 0, vec![record(None, b"y1", &[])]).await;
    wait_output(&client, &out, "y1").await;
    let now = outputs_now(&client, &out).await;
    assert!(!now.contains(&"x2".to_string()), "{now:?}");
    // Subscribing needs a topic.
    let (status, body) = http(endpoint, "POST", "/subscribers/loose_events/subscribe").await;
    assert_eq!(status, 400, "{body}");
    running.stop().await.unwrap();
}
