//! Nothing on the wire wedges a partition: batches other clients write (every codec, odd
//! timestamps, transactions), batches nobody can read, records larger than the fetch size, and
//! outputs the broker refuses. Real broker, exact counts, bounded waits; the test binary is
//! built with the library's default features only.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use common::wire::*;
use common::*;
use faststream::extract::Topic;
use faststream::kafka::KafkaBroker;
use faststream::runtime::RouteDef;
use faststream::{publisher, routes, subscriber, FastStream, Response};

/// (topic, body) of every message a handler finished.
static SEEN: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

fn seen(topic: &Topic, body: &str) {
    SEEN.lock()
        .unwrap()
        .push((topic.0.to_string(), body.to_owned()));
}

/// Bodies finished from `topic`, in order.
fn bodies(topic: &str) -> Vec<String> {
    SEEN.lock()
        .unwrap()
        .iter()
        .filter(|(t, _)| t == topic)
        .map(|(_, b)| b.clone())
        .collect()
}

async fn wait_for(topic: &str, n: usize) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let got = bodies(topic);
        if got.len() >= n {
            return got;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{topic}: {} of {n} handled: {got:?}",
            got.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn app_on(
    bootstrap: &str,
    routes: Vec<&'static RouteDef>,
    prefix: &str,
    broker: impl FnOnce(faststream::kafka::KafkaBrokerBuilder) -> faststream::kafka::KafkaBrokerBuilder,
) -> FastStream<KafkaBroker> {
    init_logs();
    FastStream::new(broker(KafkaBroker::builder(bootstrap)).build())
        .with_routes(routes)
        .topic_prefix(prefix)
}

/// Waits until the cluster's metadata lists `topic`.
async fn wait_until_listed(client: &rskafka::client::Client, topic: &str) {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while !client
        .list_topics()
        .await
        .unwrap()
        .iter()
        .any(|t| t.name == topic && !t.partitions.is_empty())
    {
        assert!(tokio::time::Instant::now() < deadline, "{topic} not listed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn header(r: &rskafka::record::RecordAndOffset, name: &str) -> String {
    String::from_utf8(r.record.headers.get(name).cloned().unwrap_or_default()).unwrap()
}

/// An Apache Kafka node of the test's own (whatever the suite's broker) behind a
/// [`KafkaProxy`] it advertises, with its bootstrap address and a client.
async fn kafka_behind_kafka_proxy() -> (OwnBroker, KafkaProxy, String, rskafka::client::Client) {
    init_logs();
    let proxy_port = free_port();
    let (broker, broker_addr) = OwnBroker::kafka(Some(proxy_port)).await;
    let proxy = KafkaProxy::start_on(proxy_port, broker_addr).await;
    let bootstrap = format!("127.0.0.1:{proxy_port}");
    let client = rskafka::client::ClientBuilder::new(vec![bootstrap.clone()])
        .build()
        .await
        .unwrap();
    (broker, proxy, bootstrap, client)
}

/// Writes the messages `p{partition}-{i}` for every `i` of `each` to each of `topic`'s first
/// `partitions` partitions.
async fn fill_partitions(
    client: &rskafka::client::Client,
    topic: &str,
    partitions: i32,
    each: std::ops::Range<usize>,
) {
    for partition in 0..partitions {
        let records = each
            .clone()
            .map(|i| record(None, format!("p{partition}-{i}").as_bytes(), &[]))
            .collect();
        produce(client, topic, partition, records).await;
    }
}

/// Checks that `handled` holds `p{partition}-{i}` for every `i` of `each` exactly once and in
/// order within each of the first `partitions` partitions.
fn assert_each_partition_in_order(handled: &[String], partitions: i32, each: usize) {
    for partition in 0..partitions {
        let mine = format!("p{partition}-");
        let got: Vec<&String> = handled.iter().filter(|b| b.starts_with(&mine)).collect();
        let want: Vec<String> = (0..each).map(|i| format!("p{partition}-{i}")).collect();
        assert_eq!(
            got,
            want.iter().collect::<Vec<_>>(),
            "partition {partition}: every message once, in order"
        );
    }
}

/// A broker of the test's own behind a [`KafkaProxy`] it advertises, so every connection of
/// the service goes through the proxy; returns the broker's own address too.
async fn broker_behind_kafka_proxy() -> (OwnBroker, KafkaProxy, String, String) {
    init_logs();
    let proxy_port = free_port();
    let (broker, broker_addr) = OwnBroker::start(Some(proxy_port)).await;
    let proxy = KafkaProxy::start_on(proxy_port, broker_addr.clone()).await;
    (
        broker,
        proxy,
        format!("127.0.0.1:{proxy_port}"),
        broker_addr,
    )
}

// ---------------------------------------------------------------------------------------------
// Every codec other clients write.

#[subscriber("codec-gzip", auto_offset_reset = "earliest")]
async fn gzip_in(body: String, topic: Topic) {
    seen(&topic, &body);
}

#[subscriber("codec-snappy", auto_offset_reset = "earliest")]
async fn snappy_in(body: String, topic: Topic) {
    seen(&topic, &body);
}

#[subscriber("codec-lz4", auto_offset_reset = "earliest")]
async fn lz4_in(body: String, topic: Topic) {
    seen(&topic, &body);
}

#[subscriber("codec-zstd", auto_offset_reset = "earliest")]
async fn zstd_in(body: String, topic: Topic) {
    seen(&topic, &body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_codec_another_client_writes_is_handled() {
    let prefix = unique_prefix("codecs");
    let client = raw_client().await;
    let codecs = ["gzip", "snappy", "lz4", "zstd"];
    for codec in codecs {
        create_topic(&client, &format!("{prefix}codec-{codec}"), 1).await;
    }
    let running = start(app_on(
        &bootstrap(),
        routes![gzip_in, snappy_in, lz4_in, zstd_in],
        &prefix,
        |b| b,
    ))
    .await;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = tokio::process::Command::new(python())
        .arg(root.join("tests/interop/produce_compressed.py"))
        .args([&bootstrap(), &prefix, "100"])
        .output();
    let out = tokio::time::timeout(TIMEOUT, out)
        .await
        .expect("aiokafka producer finishes")
        .expect("python from scripts/kafka-dev's venv runs");
    assert!(
        out.status.success(),
        "aiokafka producer failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for codec in codecs {
        let got = wait_for(&format!("{prefix}codec-{codec}"), 100).await;
        let want: Vec<String> = (0..100).map(|i| format!("{codec}-{i}")).collect();
        assert_eq!(got, want, "{codec}: every record, in order, once");
    }
    running.stop().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// Batches nobody can read, and records with odd fields.

#[subscriber("unreadable", auto_offset_reset = "earliest", dlq = "unreadable.dlq")]
async fn unreadable_in(body: String, topic: Topic) {
    seen(&topic, &body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_batch_is_dead_lettered_with_its_offsets_and_the_rest_handled() {
    let prefix = unique_prefix("corrupt");
    let client = raw_client().await;
    let topic = format!("{prefix}unreadable");
    create_topic(&client, &topic, 1).await;
    // One record per batch: the local broker stores each record of a batch as a batch of its
    // own, so a corrupt batch of one record is what reaches the consumer as sent.
    let mut corrupt = batch(&[plain("lost")]);
    let last = corrupt.len() - 1;
    corrupt[last] ^= 0xff; // the checksum no longer matches
    let raw = corrupt.clone();
    let codes = produce_raw(
        &bootstrap(),
        &topic,
        vec![batch(&[plain("before")]), corrupt, batch(&[plain("after")])],
    )
    .await;
    if broker_kind() == BrokerKind::Kafka {
        // Kafka checks every batch's CRC on produce (CORRUPT_MESSAGE): a consumer of Kafka
        // meets a corrupt batch only from a damaged log, not from a producer. Tansu stores it
        // as sent, which is how the rest of this test reaches the consumer's checks.
        assert_eq!(codes, vec![0, 2, 0], "Kafka refuses the corrupt batch");
        return;
    }
    assert_eq!(codes, vec![0, 0, 0], "the broker stores the batches");

    let running = start(app_on(&bootstrap(), routes![unreadable_in], &prefix, |b| b)).await;
    assert_eq!(wait_for(&topic, 2).await, vec!["before", "after"]);
    let dlq = read(&client, &format!("{topic}.dlq"), 1).await;
    let dead = &dlq[&0][0];
    assert_eq!(header(dead, "x-faststream-error-kind"), "fetch");
    assert_eq!(header(dead, "x-faststream-original-offset"), "1");
    assert_eq!(header(dead, "x-faststream-original-last-offset"), "1");
    let error = header(dead, "x-faststream-error");
    assert!(
        error.contains("offsets 1..=1") && error.contains("checksum"),
        "{error}"
    );
    let payload = dead.record.value.clone().unwrap_or_default();
    // Base offset and leader epoch are the broker's; the rest is the batch as written.
    assert_eq!(
        payload.get(16..),
        raw.get(16..),
        "the dead-letter copy carries the raw batch"
    );
    running.stop().await.unwrap();
    assert_eq!(
        bodies(&topic),
        vec!["before", "after"],
        "nothing handled twice"
    );
}

#[subscriber("stamps", auto_offset_reset = "earliest")]
async fn stamps_in(body: String, topic: Topic) {
    seen(&topic, &body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_with_a_nanosecond_timestamp_is_handled_and_reported() {
    let prefix = unique_prefix("stamps");
    let client = raw_client().await;
    let topic = format!("{prefix}stamps");
    // Kafka 4 refuses a record stamped more than an hour ahead (INVALID_TIMESTAMP) unless the
    // topic allows it, as topics of clusters set up before 4.0 did by default: such a topic
    // is where consumers meet these records.
    create_topic_with_configs(
        &bootstrap(),
        &topic,
        &[("message.timestamp.after.max.ms", "9223372036854775807")],
    )
    .await;
    wait_until_listed(&client, &topic).await;
    let mut odd = plain("odd");
    odd.timestamp = 1_700_000_000_000_000_000; // nanoseconds, not milliseconds
    let codes = produce_raw(
        &bootstrap(),
        &topic,
        vec![batch(&[plain("a")]), batch(&[odd]), batch(&[plain("b")])],
    )
    .await;
    assert_eq!(codes, vec![0, 0, 0]);
    let running = start(app_on(&bootstrap(), routes![stamps_in], &prefix, |b| b)).await;
    assert_eq!(wait_for(&topic, 3).await, vec!["a", "odd", "b"]);
    running.stop().await.unwrap();
    let logs = logs();
    let line = logs
        .lines()
        .find(|l| l.contains(&topic) && l.contains("timestamp is not a plausible time"))
        .expect("the odd timestamp is reported");
    assert!(line.contains("offset=1"), "{line}");
}

#[subscriber("huge", auto_offset_reset = "earliest")]
async fn huge_in(body: String, topic: Topic) {
    seen(&topic, &body.len().to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_larger_than_the_fetch_size_is_handled() {
    let prefix = unique_prefix("huge");
    let client = raw_client().await;
    let topic = format!("{prefix}huge");
    create_topic(&client, &topic, 1).await;
    // Under Kafka's default message.max.bytes (1 MiB), over the fetch size set below.
    let big = "x".repeat(900 * 1024);
    produce(
        &client,
        &topic,
        0,
        vec![
            record(None, b"small", &[]),
            record(None, big.as_bytes(), &[]),
        ],
    )
    .await;
    produce(&client, &topic, 0, vec![record(None, b"tail", &[])]).await;
    let running = start(app_on(&bootstrap(), routes![huge_in], &prefix, |b| {
        b.fetch_max_bytes(256 * 1024)
    }))
    .await;
    assert_eq!(
        wait_for(&topic, 3).await,
        vec!["5".to_owned(), big.len().to_string(), "4".to_owned()]
    );
    running.stop().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// Transactions.

#[subscriber("txn", auto_offset_reset = "earliest", group_id = "txn")]
async fn txn_in(body: String, topic: Topic) {
    seen(&topic, &body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_committed_transactions_are_handled_and_the_position_reaches_the_end() {
    let prefix = unique_prefix("txn");
    let (_broker, proxy, bootstrap, broker_addr) = broker_behind_kafka_proxy().await;
    let client = rskafka::client::ClientBuilder::new(vec![bootstrap.clone()])
        .build()
        .await
        .unwrap();
    let topic = format!("{prefix}txn");
    create_topic(&client, &topic, 1).await;
    // Offsets: 0 plain, 1-2 aborted, 3 abort marker, 4 committed, 5 commit marker.
    if broker_kind() == BrokerKind::Kafka {
        // Kafka refuses transactional batches and markers written outside a transaction: a
        // real transactional producer writes them, and the broker reports the aborted one.
        let script =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/transactions.py");
        let out = tokio::process::Command::new(python())
            .arg(script)
            .args([&broker_addr, &topic])
            .output()
            .await
            .unwrap();
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("DONE"),
            "aiokafka's transactions: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    } else {
        // Tansu keeps no list of aborted transactions: the proxy adds it to fetch answers, as
        // a Kafka broker does for read_committed consumers.
        let (pid, _) = init_producer_id(&broker_addr, None).await;
        let codes = produce_raw(
            &broker_addr,
            &topic,
            vec![
                batch(&[plain("plain")]),
                batch(&transactional(pid, 0, &["aborted-1", "aborted-2"])),
                batch(&marker(pid, 2, false)),
                batch(&transactional(pid, 3, &["committed"])),
                batch(&marker(pid, 4, true)),
            ],
        )
        .await;
        assert_eq!(codes, vec![0; 5]);
        proxy.report_aborted(&topic, pid, 1);
    }

    let running = start(app_on(&bootstrap, routes![txn_in], &prefix, |b| {
        b.session_timeout(Duration::from_secs(2))
    }))
    .await;
    assert_eq!(wait_for(&topic, 2).await, vec!["plain", "committed"]);
    let group = format!("{prefix}txn");
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while committed(&broker_addr, &group, &topic).await != 6 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the committed position passes the last transaction marker (lag 0)"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    running.stop().await.unwrap();
    assert_eq!(bodies(&topic), vec!["plain", "committed"]);
}

// ---------------------------------------------------------------------------------------------
// Outputs the broker refuses.

#[subscriber("relay", auto_offset_reset = "earliest", dlq = "relay.dlq")]
#[publisher("relay-out")]
async fn relay(body: String, topic: Topic) -> String {
    seen(&topic, &body);
    body
}

/// Relays `inputs` through `relay` (at most `max_batch_bytes` a record batch) behind a proxy
/// that refuses Produce requests of more than 10 KB to the output topic with
/// MESSAGE_TOO_LARGE, as a broker with `message.max.bytes` of 10 KB does. Returns the outputs
/// (once all but one are there) and the one input dead-lettered, with its headers.
async fn relay_refusing_large(
    name: &str,
    inputs: &[String],
    max_batch_bytes: usize,
) -> (Vec<String>, Vec<rskafka::record::RecordAndOffset>) {
    let prefix = unique_prefix(name);
    let (_broker, proxy, bootstrap, _) = broker_behind_kafka_proxy().await;
    let client = rskafka::client::ClientBuilder::new(vec![bootstrap.clone()])
        .build()
        .await
        .unwrap();
    let topic = format!("{prefix}relay");
    let out = format!("{prefix}relay-out");
    for t in [&topic, &out, &format!("{topic}.dlq")] {
        create_topic(&client, t, 1).await;
    }
    let limited = out.clone();
    proxy.refuse_produce(move |t, bytes| (t == limited && bytes > 10_000).then_some(10));
    let records = inputs
        .iter()
        .map(|v| record(None, v.as_bytes(), &[]))
        .collect();
    produce(&client, &topic, 0, records).await;

    let running = start(app_on(&bootstrap, routes![relay], &prefix, |b| {
        b.max_batch_bytes(max_batch_bytes)
    }))
    .await;
    let relayed = read(&client, &out, inputs.len() - 1).await;
    let relayed: Vec<String> = relayed.values().flatten().map(text).collect();
    let mut dlq = read(&client, &format!("{topic}.dlq"), 1).await;
    running.stop().await.expect("a clean shutdown");
    (relayed, dlq.remove(&0).unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_output_refused_for_good_dead_letters_its_input_and_the_neighbours_go_on() {
    let big = "B".repeat(20_000);
    let inputs = ["a".to_owned(), big.clone(), "b".to_owned()];
    let (relayed, dlq) = relay_refusing_large("refused", &inputs, 1 << 20).await;
    assert_eq!(
        relayed,
        vec!["a", "b"],
        "the neighbours of the refused output are relayed"
    );
    let dead = &dlq[0];
    assert_eq!(text(dead), big, "the input whose output was refused");
    assert_eq!(header(dead, "x-faststream-error-kind"), "publish");
    assert_eq!(header(dead, "x-faststream-original-offset"), "1");
    let error = header(dead, "x-faststream-error");
    assert!(error.contains("MessageTooLarge"), "{error}");
}

/// Outputs of one fetched batch spread over several record batches (small batches): the one
/// refused for good is reported as itself (its input dead-lettered, no other), every other
/// output relayed once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_output_among_several_batches_of_its_group_is_named_right() {
    const BIG: usize = 137;
    let big = "B".repeat(20_000);
    let inputs: Vec<String> = (0..200)
        .map(|i| match i {
            BIG => big.clone(),
            i => format!("m{i:03}-{}", "x".repeat(40)),
        })
        .collect();
    let (relayed, dlq) = relay_refusing_large("refused-spread", &inputs, 1_000).await;
    let mut want = inputs.clone();
    want.remove(BIG);
    assert_eq!(relayed, want, "every other output once, in order");
    assert_eq!(dlq.len(), 1, "one input dead-lettered");
    let dead = text(&dlq[0]);
    assert!(
        dead == big,
        "dead-lettered {dead:.20}..., not the large input"
    );
    let offset = header(&dlq[0], "x-faststream-original-offset");
    assert_eq!(offset, BIG.to_string());
}

#[subscriber("moved", auto_offset_reset = "earliest")]
#[publisher("moved-out")]
async fn moved(body: String, topic: Topic) -> String {
    seen(&topic, &body);
    body
}

/// A produce refused as retriable (the leader moved: NOT_LEADER_OR_FOLLOWER) is retried after
/// finding the leader again, until accepted: every output once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_produce_refused_as_retriable_is_retried_until_accepted() {
    let prefix = unique_prefix("moved");
    let (_broker, proxy, bootstrap, _) = broker_behind_kafka_proxy().await;
    let client = rskafka::client::ClientBuilder::new(vec![bootstrap.clone()])
        .build()
        .await
        .unwrap();
    let topic = format!("{prefix}moved");
    let out = format!("{prefix}moved-out");
    for t in [&topic, &out] {
        create_topic(&client, t, 1).await;
    }
    // The first three produce requests to the output topic are answered "not the leader".
    let refused = std::sync::Arc::new(AtomicUsize::new(0));
    let (o, count) = (out.clone(), refused.clone());
    proxy.refuse_produce(move |t, _| {
        (t == o && count.fetch_add(1, Ordering::SeqCst) < 3).then_some(6)
    });
    let inputs = (0..50)
        .map(|i| record(None, format!("m{i}").as_bytes(), &[]))
        .collect();
    produce(&client, &topic, 0, inputs).await;

    let running = start(app_on(&bootstrap, routes![moved], &prefix, |b| b)).await;
    let relayed = read(&client, &out, 50).await;
    let relayed: Vec<String> = relayed.values().flatten().map(text).collect();
    let want: Vec<String> = (0..50).map(|i| format!("m{i}")).collect();
    assert_eq!(relayed, want, "every output once, in order");
    assert!(refused.load(Ordering::SeqCst) > 3, "the refusals were seen");
    assert!(
        logs_about(&out).contains("produce failed; retrying"),
        "the retries are logged"
    );
    running.stop().await.expect("a clean shutdown");
}

#[subscriber("piped", auto_offset_reset = "earliest")]
#[publisher("piped-out")]
async fn piped(body: String, partition: faststream::extract::Partition) -> Response<String> {
    Response::new(body).partition(partition.0)
}

/// Relays `EACH` messages on each of 8 partitions (route `piped`, outputs to the same
/// partition) through the test proxy, which holds the broker's next `delayed` produce answers
/// back 150 ms each, with the broker handle set up by `broker`; checks every output landed
/// once, in order within its partition, and returns the proxy (for its counts).
async fn relay_with_slow_produce_answers(
    name: &str,
    each: usize,
    delayed: usize,
    broker: impl FnOnce(faststream::kafka::KafkaBrokerBuilder) -> faststream::kafka::KafkaBrokerBuilder,
) -> KafkaProxy {
    use kafka_protocol::messages::ApiKey;
    const PARTITIONS: i32 = 8;
    let prefix = unique_prefix(name);
    let (_broker, proxy, bootstrap, _) = broker_behind_kafka_proxy().await;
    let client = rskafka::client::ClientBuilder::new(vec![bootstrap.clone()])
        .build()
        .await
        .unwrap();
    let (input, out) = (format!("{prefix}piped"), format!("{prefix}piped-out"));
    create_topic(&client, &input, PARTITIONS).await;
    create_topic(&client, &out, PARTITIONS).await;
    fill_partitions(&client, &input, PARTITIONS, 0..each).await;
    proxy.delay_answers(ApiKey::Produce, delayed, Duration::from_millis(150));
    let running = start(app_on(&bootstrap, routes![piped], &prefix, broker)).await;
    let relayed = read(&client, &out, PARTITIONS as usize * each).await;
    running.stop().await.expect("a clean shutdown");
    for partition in 0..PARTITIONS {
        let got: Vec<String> = relayed
            .get(&partition)
            .map(|r| r.iter().map(text).collect())
            .unwrap_or_default();
        let want: Vec<String> = (0..each).map(|i| format!("p{partition}-{i}")).collect();
        assert_eq!(
            got, want,
            "partition {partition}: every output once, in order"
        );
    }
    proxy
}

/// The request connection keeps several Produce requests on the wire at once (at most five,
/// as the Java producer's `max.in.flight.requests.per.connection`) while the broker is slow
/// to answer (the partitions' batches that are ready meanwhile go out in the next requests
/// instead of waiting for the answer), and every output still lands once, in order within its
/// partition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_requests_are_pipelined_and_keep_each_partitions_order() {
    let proxy = relay_with_slow_produce_answers("piped", 40, 30, |b| b.max_batch_bytes(200)).await;
    let most = proxy.most_produce_in_flight();
    assert!(
        (2..=5).contains(&most),
        "Produce requests on the wire at once on one connection: {most}"
    );
    // And one Fetch request asks for several partitions of the broker at once.
    let fetched = proxy.most_fetch_partitions();
    assert!(fetched >= 2, "partitions in one Fetch request: {fetched}");
}

#[subscriber("sessions", auto_offset_reset = "earliest")]
async fn in_session(body: String, topic: Topic) {
    seen(&topic, &body);
}

/// Against Apache Kafka, fetches go in a fetch session (KIP-227): the first request lists
/// every partition and opens the session; once the consumer caught up, each request lists no
/// partition at all (the broker keeps their positions). When the broker says the session is
/// gone, the next request is a full one that opens another, and every message is still
/// handled once, in order within its partition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetches_go_in_a_fetch_session_that_is_opened_again_when_lost() {
    const PARTITIONS: i32 = 12;
    const EACH: usize = 5;
    let prefix = unique_prefix("sessions");
    let (_broker, proxy, bootstrap, client) = kafka_behind_kafka_proxy().await;
    let topic = format!("{prefix}sessions");
    create_topic(&client, &topic, PARTITIONS).await;
    fill_partitions(&client, &topic, PARTITIONS, 0..EACH).await;
    let running = start(app_on(&bootstrap, routes![in_session], &prefix, |b| b)).await;
    wait_for(&topic, PARTITIONS as usize * EACH).await;

    // Caught up: the requests of the session list nothing (idle fetches wait on the broker).
    let idle = |log: &[FetchSeen]| {
        log.len() >= 3
            && log[log.len() - 3..]
                .iter()
                .all(|f| f.session_id != 0 && f.session_epoch > 0 && f.partitions == 0)
    };
    common::wait_for("idle fetches in a session list no partition", || {
        idle(&proxy.fetches())
    })
    .await;
    let log = proxy.fetches();
    let first = log[0];
    assert_eq!(
        (first.session_id, first.session_epoch),
        (0, 0),
        "the first request opens a session: {log:?}"
    );
    assert!(first.partitions >= 1, "{log:?}");
    let opened = log.iter().find(|f| f.session_epoch > 0).unwrap().session_id;

    // The broker loses the session.
    proxy.lose_fetch_sessions(1);
    let lost_at = |log: &[FetchSeen]| log.iter().position(|f| f.lost);
    common::wait_for("idle in a new session after the lost one", || {
        let log = proxy.fetches();
        lost_at(&log).is_some_and(|i| log.len() > i + 4) && idle(&log)
    })
    .await;
    let log = proxy.fetches();
    let lost = lost_at(&log).unwrap();
    let next = log[lost + 1];
    assert_eq!(
        (next.session_id, next.session_epoch, next.partitions),
        (0, 0, PARTITIONS as usize),
        "after the loss, a full request for every partition: {:?}",
        &log[lost..]
    );
    let reopened = log.last().unwrap().session_id;
    assert!(reopened != 0 && reopened != opened, "{:?}", &log[lost..]);

    // And reading goes on in the new session.
    fill_partitions(&client, &topic, PARTITIONS, EACH..2 * EACH).await;
    let handled = wait_for(&topic, PARTITIONS as usize * 2 * EACH).await;
    running.stop().await.expect("a clean shutdown");
    assert_each_partition_in_order(&handled, PARTITIONS, 2 * EACH);
}

#[subscriber("diverged", auto_offset_reset = "earliest")]
async fn diverged_in(body: String, topic: Topic) {
    seen(&topic, &body);
}

/// A leader whose log diverged from what the consumer read (KIP-320: after an unclean
/// election it lacks the last records read) answers a fetch that says the leader epoch of the
/// last batch read with where its log is consistent: the consumer goes on from there (the
/// Java consumer's behaviour with a reset policy) instead of reading past the divergence or
/// resetting to `auto_offset_reset`. The test proxy plays that leader's answer once; the
/// records from the divergence on are read again, then everything new once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_diverged_leader_log_is_read_again_from_where_it_diverged() {
    let prefix = unique_prefix("diverged");
    let (_broker, proxy, bootstrap, client) = kafka_behind_kafka_proxy().await;
    let topic = format!("{prefix}diverged");
    create_topic(&client, &topic, 1).await;
    fill_partitions(&client, &topic, 1, 0..10).await;
    let running = start(app_on(&bootstrap, routes![diverged_in], &prefix, |b| b)).await;
    wait_for(&topic, 10).await;

    // The fetch that goes on after the next records learns that the log diverged at 4.
    proxy.diverge_next_fetch(&topic, 0, 15, 4);
    fill_partitions(&client, &topic, 1, 10..15).await;
    let handled = wait_for(&topic, 15 + 11).await;
    assert!(!proxy.divergence_pending());
    // Nothing more arrives: every record once more from offset 4, then nothing.
    fill_partitions(&client, &topic, 1, 15..17).await;
    let handled_after = wait_for(&topic, 15 + 11 + 2).await;
    running.stop().await.expect("a clean shutdown");
    let want: Vec<String> = (0..15)
        .chain(4..15)
        .chain(15..17)
        .map(|i| format!("p0-{i}"))
        .collect();
    assert_eq!(handled_after, want, "read again from the divergence on");
    assert_eq!(handled, want[..26].to_vec());
}

/// Every message the `diverged-batch` route was handed, in order.
static DIVERGED_BATCHES: Mutex<Vec<String>> = Mutex::new(Vec::new());

#[subscriber(
    "diverged-batch",
    auto_offset_reset = "earliest",
    batch = true,
    max_records = 100,
    batch_timeout_ms = 3000
)]
async fn diverged_batch(bodies: Vec<String>) {
    DIVERGED_BATCHES.lock().unwrap().extend(bodies);
}

/// A batch route that learns of a divergence while it collects a batch drops what it had not
/// handed over, and its next run starts at the first message not done when that is before
/// the divergence point: every message is still handed over once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_divergence_while_a_batch_is_collected_loses_nothing() {
    let prefix = unique_prefix("diverged-batch");
    let (_broker, proxy, bootstrap, client) = kafka_behind_kafka_proxy().await;
    let topic = format!("{prefix}diverged-batch");
    create_topic(&client, &topic, 1).await;
    fill_partitions(&client, &topic, 1, 0..10).await;
    // The fetch after the first (which reads all ten) learns that the log diverged at 8,
    // while the ten wait for the batch to fill or time out.
    proxy.diverge_next_fetch(&topic, 0, 10, 8);
    let running = start(app_on(&bootstrap, routes![diverged_batch], &prefix, |b| b)).await;
    let handled = || DIVERGED_BATCHES.lock().unwrap().clone();
    common::wait_for("the first ten handed over", || handled().len() >= 10).await;
    assert!(!proxy.divergence_pending());
    fill_partitions(&client, &topic, 1, 10..12).await;
    common::wait_for("all twelve handed over", || handled().len() >= 12).await;
    running.stop().await.expect("a clean shutdown");
    let want: Vec<String> = (0..12).map(|i| format!("p0-{i}")).collect();
    assert_eq!(handled(), want, "each message once, in order");
}

/// Handlers of the `paced` route running now, and the most at once.
static PACED_NOW: AtomicUsize = AtomicUsize::new(0);
static PACED_MOST: AtomicUsize = AtomicUsize::new(0);

#[subscriber("paced", auto_offset_reset = "earliest")]
async fn paced(body: String, topic: Topic) {
    let now = PACED_NOW.fetch_add(1, Ordering::SeqCst) + 1;
    PACED_MOST.fetch_max(now, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(5)).await;
    PACED_NOW.fetch_sub(1, Ordering::SeqCst);
    seen(&topic, &body);
}

/// What partitions fetched and their consumers have not finished shares one byte budget
/// (`max_fetched_bytes`): with a budget of one byte, one partition at a time has a fetched
/// batch in hand, so the handlers of 8 partitions (which otherwise run side by side) never
/// overlap, and every message is still handled once, in order per partition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bytes_fetched_ahead_share_one_budget() {
    const PARTITIONS: i32 = 8;
    const EACH: usize = 10;
    let prefix = unique_prefix("paced");
    let client = raw_client().await;
    let topic = format!("{prefix}paced");
    create_topic(&client, &topic, PARTITIONS).await;
    fill_partitions(&client, &topic, PARTITIONS, 0..EACH).await;
    let running = start(app_on(&bootstrap(), routes![paced], &prefix, |b| {
        b.max_fetched_bytes(1)
    }))
    .await;
    let handled = wait_for(&topic, PARTITIONS as usize * EACH).await;
    running.stop().await.expect("a clean shutdown");
    assert_each_partition_in_order(&handled, PARTITIONS, EACH);
    assert_eq!(
        PACED_MOST.load(Ordering::SeqCst),
        1,
        "handlers of different partitions ran at once"
    );
}

/// The produce queues of all target partitions share one byte budget
/// (`max_queued_bytes_total`): with a budget of one byte, one group of outputs waits at a time
/// in the whole service, so the request connection never has two Produce requests on the
/// wire (where the test above, with only the per-partition budgets, has several), and every
/// output still lands once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_produce_queues_of_all_partitions_share_one_budget() {
    let proxy =
        relay_with_slow_produce_answers("budget", 10, 12, |b| b.max_queued_bytes_total(1)).await;
    assert_eq!(
        proxy.most_produce_in_flight(),
        1,
        "one group of outputs queued at a time: one Produce request on the wire at a time"
    );
}

#[subscriber("aimed", auto_offset_reset = "earliest", dlq = "aimed.dlq")]
#[publisher("aimed-out")]
async fn aimed(body: String) -> Response<String> {
    let partition = if body == "nowhere" { 7 } else { 0 };
    Response::new(body).partition(partition)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_output_to_a_missing_partition_dead_letters_only_its_input() {
    let prefix = unique_prefix("aimed");
    let client = raw_client().await;
    let topic = format!("{prefix}aimed");
    let out = format!("{prefix}aimed-out");
    for t in [&topic, &out, &format!("{topic}.dlq")] {
        create_topic(&client, t, 1).await;
    }
    produce(
        &client,
        &topic,
        0,
        ["a", "nowhere", "b"]
            .iter()
            .map(|v| record(None, v.as_bytes(), &[]))
            .collect(),
    )
    .await;
    let running = start(app_on(&bootstrap(), routes![aimed], &prefix, |b| b)).await;
    let relayed = read(&client, &out, 2).await;
    let relayed: Vec<String> = relayed.values().flatten().map(text).collect();
    assert_eq!(relayed, vec!["a", "b"]);
    let dlq = read(&client, &format!("{topic}.dlq"), 1).await;
    let dead = &dlq[&0][0];
    assert_eq!(text(dead), "nowhere");
    assert_eq!(header(dead, "x-faststream-error-kind"), "publish");
    let error = header(dead, "x-faststream-error");
    assert!(error.contains("partition 7"), "{error}");
    running.stop().await.expect("a clean shutdown");
}

#[subscriber(
    "guarded",
    auto_offset_reset = "earliest",
    group_id = "guarded",
    dlq = "guarded.dlq"
)]
#[publisher("guarded-out")]
async fn guarded(body: String, topic: Topic) -> String {
    seen(&topic, &body);
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unwritable_dead_letter_topic_stops_the_partition_and_loses_nothing() {
    let prefix = unique_prefix("guarded");
    let (_broker, proxy, bootstrap, _) = broker_behind_kafka_proxy().await;
    let client = rskafka::client::ClientBuilder::new(vec![bootstrap.clone()])
        .build()
        .await
        .unwrap();
    let topic = format!("{prefix}guarded");
    let out = format!("{prefix}guarded-out");
    let dlq = format!("{topic}.dlq");
    for t in [&topic, &out, &dlq] {
        create_topic(&client, t, 1).await;
    }
    // Not authorized to write the output topic, nor the dead-letter topic.
    let (o, d) = (out.clone(), dlq.clone());
    proxy.refuse_produce(move |t, _| (t == o || t == d).then_some(29));
    produce(&client, &topic, 0, vec![record(None, b"precious", &[])]).await;

    let settings =
        |b: faststream::kafka::KafkaBrokerBuilder| b.session_timeout(Duration::from_secs(2));
    let running = start(app_on(&bootstrap, routes![guarded], &prefix, settings)).await;
    let ended = tokio::time::timeout(TIMEOUT, running.finished())
        .await
        .expect("the service stops on its own");
    let err = ended.expect_err("the service reports why it stopped");
    let text_err = err.to_string();
    assert!(
        text_err.contains("offset 0") && text_err.contains("dead-letter copy"),
        "{text_err}"
    );
    // The same error the in-memory test broker reports for a stop.
    assert!(
        matches!(
            &err,
            faststream::Error::PartitionStopped(faststream::PartitionStop {
                offset: Some(0),
                ..
            })
        ),
        "{err:?}"
    );

    // Fixed (write access granted): a restart handles the message and relays it.
    proxy.pass_all();
    let running = start(app_on(&bootstrap, routes![guarded], &prefix, settings)).await;
    let relayed = read(&client, &out, 1).await;
    assert_eq!(
        relayed[&0].iter().map(text).collect::<Vec<_>>(),
        vec!["precious"]
    );
    running.stop().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// Topics: checked at startup, never created by a typo.

#[subscriber("typo", auto_offset_reset = "earliest", retry = 0, dlq = "typo.dlq")]
async fn typo(body: String, publisher: faststream::extract::Publisher) -> Result<(), String> {
    publisher
        .publish(body, "no-such-topic")
        .await
        .map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_to_an_unknown_topic_fails_instead_of_creating_it() {
    let prefix = unique_prefix("typo");
    let client = raw_client().await;
    let topic = format!("{prefix}typo");
    create_topic(&client, &topic, 1).await;
    produce(&client, &topic, 0, vec![record(None, b"lost?", &[])]).await;
    let running = start(app_on(&bootstrap(), routes![typo], &prefix, |b| b)).await;
    let dlq = read(&client, &format!("{topic}.dlq"), 1).await;
    let error = header(&dlq[&0][0], "x-faststream-error");
    assert!(
        error.contains("no-such-topic") && error.contains("do not exist"),
        "the handler got the publish error: {error}"
    );
    running.stop().await.unwrap();
    let topics = client.list_topics().await.unwrap();
    assert!(
        !topics.iter().any(|t| t.name == "no-such-topic"),
        "no topic was created by the typo"
    );
}

#[subscriber("checked", dlq = "checked.dlq")]
#[publisher("checked-out")]
async fn checked(body: String) -> String {
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_checks_dead_letter_topics_and_prefixed_names() {
    let prefix = unique_prefix("checked");
    let client = raw_client().await;
    create_topic(&client, &format!("{prefix}checked"), 1).await;
    create_topic(&client, &format!("{prefix}checked-out"), 1).await;
    let run = |app: FastStream<KafkaBroker>| async move {
        tokio::time::timeout(TIMEOUT, app.run_until(std::future::pending()))
            .await
            .expect("startup fails fast")
            .expect_err("startup fails")
            .to_string()
    };
    let fail = |b: faststream::kafka::KafkaBrokerBuilder| {
        b.missing_topics(faststream::kafka::MissingTopics::Fail)
    };
    let err = run(app_on(&bootstrap(), routes![checked], &prefix, fail)).await;
    assert!(
        err.contains(&format!("{prefix}checked.dlq")) && err.contains("do not exist"),
        "{err}"
    );
    let err = run(app_on(&bootstrap(), routes![checked], "team a/", |b| b)).await;
    assert!(
        err.contains("\"team a/checked\"") && err.contains("' '"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------------
// What the service writes, read by another client.

#[subscriber("encoded-in", auto_offset_reset = "earliest")]
#[publisher("encoded-out")]
async fn encoded(body: String) -> Response<String> {
    let n: usize = body.trim_start_matches("in-").parse().unwrap();
    let response = Response::new(format!("out-{n}")).header("x-n", n.to_string());
    // Every third output keyless, the others keyed (keyed ones spread by the partitioner).
    match n % 3 {
        0 => response,
        _ => response.key(format!("key-{n}")),
    }
}

/// The record batches the producer encodes itself (uncompressed, gzip, snappy) are read back
/// by aiokafka with CRC checks: every value, key, header and timestamp as written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produced_batches_are_read_back_by_another_client() {
    use faststream::kafka::Compression;
    const N: usize = 300;
    let client = raw_client().await;
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    for (name, compression) in [
        ("none", Compression::None),
        ("gzip", Compression::Gzip),
        ("snappy", Compression::Snappy),
    ] {
        let prefix = unique_prefix(&format!("encoded-{name}"));
        create_topic(&client, &format!("{prefix}encoded-in"), 1).await;
        create_topic(&client, &format!("{prefix}encoded-out"), 3).await;
        let input = (0..N)
            .map(|i| record(None, format!("in-{i}").as_bytes(), &[]))
            .collect();
        produce(&client, &format!("{prefix}encoded-in"), 0, input).await;
        let running = start(app_on(&bootstrap(), routes![encoded], &prefix, |b| {
            b.compression(compression)
        }))
        .await;
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let out = tokio::process::Command::new(python())
            .arg(root.join("tests/interop/read_back.py"))
            .args([
                &bootstrap(),
                &format!("{prefix}encoded-out"),
                &N.to_string(),
            ])
            .output();
        let out = tokio::time::timeout(TIMEOUT, out)
            .await
            .expect("aiokafka consumer finishes")
            .expect("python from scripts/kafka-dev's venv runs");
        running.stop().await.unwrap();
        assert!(
            out.status.success(),
            "{name}: aiokafka could not read them: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let until = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        let mut seen = vec![false; N];
        for line in String::from_utf8(out.stdout).unwrap().lines() {
            let r: serde_json::Value = serde_json::from_str(line).unwrap();
            let value = r["value"].as_str().unwrap();
            let n: usize = value.trim_start_matches("out-").parse().unwrap();
            assert!(
                !std::mem::replace(&mut seen[n], true),
                "{name}: {value} twice"
            );
            let want_key = (!n.is_multiple_of(3)).then(|| format!("key-{n}"));
            assert_eq!(
                r["key"].as_str().map(str::to_owned),
                want_key,
                "{name}: {line}"
            );
            let headers: Vec<(String, String)> =
                serde_json::from_value(r["headers"].clone()).unwrap();
            let get = |h: &str| {
                headers
                    .iter()
                    .find(|(k, _)| k == h)
                    .map(|(_, v)| v.as_str())
            };
            assert_eq!(get("x-n"), Some(n.to_string().as_str()), "{name}: {line}");
            assert_eq!(get("content-type"), Some("text/plain"), "{name}: {line}");
            assert!(
                get("correlation_id").is_some_and(|c| !c.is_empty()),
                "{name}: {line}"
            );
            let ts = r["timestamp"].as_i64().unwrap();
            assert!(
                (since - 1000..=until + 1000).contains(&ts),
                "{name}: timestamp {ts}"
            );
            if let Some(key) = want_key {
                let partition = faststream::kafka::partition_for_key(key.as_bytes(), 3);
                assert_eq!(
                    r["partition"].as_i64(),
                    Some(partition.into()),
                    "{name}: {line}"
                );
            }
        }
        assert!(seen.iter().all(|s| *s), "{name}: every output once");
    }
}

// ---------------------------------------------------------------------------------------------
// The idempotent producer: a produce whose answer is lost after the leader wrote the batch.

#[subscriber("lost", auto_offset_reset = "earliest")]
#[publisher("lost-out")]
async fn lost(body: String) -> String {
    body
}

/// A broker of the test's own behind a proxy, a client through the proxy, and the `lost`
/// route's input and output topics (one partition each) under `prefix`.
async fn lost_behind_proxy(
    prefix: &str,
) -> (
    OwnBroker,
    KafkaProxy,
    String,
    rskafka::client::Client,
    String,
    String,
) {
    let (broker, proxy, bootstrap, _) = broker_behind_kafka_proxy().await;
    let client = rskafka::client::ClientBuilder::new(vec![bootstrap.clone()])
        .build()
        .await
        .unwrap();
    let (input, out) = (format!("{prefix}lost"), format!("{prefix}lost-out"));
    create_topic(&client, &input, 1).await;
    create_topic(&client, &out, 1).await;
    (broker, proxy, bootstrap, client, input, out)
}

/// Relays 300 inputs while the proxy loses the answers to the first three Produce requests
/// for the output topic (each after the broker wrote it); returns the output topic's whole
/// content once the service stopped (every acknowledged write is readable then).
async fn relay_losing_answers(idempotence: bool) -> Vec<String> {
    const N: usize = 300;
    let prefix = unique_prefix(if idempotence {
        "lost-idem"
    } else {
        "lost-plain"
    });
    let (_broker, proxy, bootstrap, client, input, out) = lost_behind_proxy(&prefix).await;
    proxy.lose_produce_answers(&out, 3);
    for chunk in (0..N).collect::<Vec<_>>().chunks(50) {
        let records = chunk
            .iter()
            .map(|i| record(None, format!("m{i}").as_bytes(), &[]))
            .collect();
        produce(&client, &input, 0, records).await;
    }
    let running = start(app_on(&bootstrap, routes![lost], &prefix, |b| {
        b.idempotence(idempotence)
            // Small requests, so that the lost answers fall among many.
            .max_batch_bytes(2_000)
            .request_timeout(Duration::from_secs(5))
    }))
    .await;
    let relayed = read(&client, &out, N).await;
    running.stop().await.expect("a clean shutdown");
    assert_eq!(
        proxy.answers_to_lose(),
        0,
        "three produce answers were lost"
    );
    let mut records = relayed.into_values().flatten().collect::<Vec<_>>();
    // Whatever else the topic holds: read on until a fetch finds nothing more.
    loop {
        let next = records.last().map_or(0, |r| r.offset + 1);
        let more = fetch_from(&client, &out, 0, next, 500).await;
        if more.is_empty() {
            break;
        }
        records.extend(more);
    }
    records.iter().map(text).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_output_whose_produce_answer_was_lost_is_written_once() {
    let outputs = relay_losing_answers(true).await;
    let want: Vec<String> = (0..300).map(|i| format!("m{i}")).collect();
    assert_eq!(
        outputs, want,
        "every output once, in input order, although three produce answers were lost"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_idempotence_a_lost_produce_answer_duplicates_outputs() {
    // The same relay with idempotence off: the retries of the batches the broker wrote write
    // them again. (What the test above guards against, so a proxy that lost nothing, or a
    // broker that deduplicated plain producers, would show here.)
    let outputs = relay_losing_answers(false).await;
    let mut distinct = outputs.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 300, "every input relayed");
    assert!(
        outputs.len() > 300,
        "the retried batches were written twice: {} outputs",
        outputs.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_refusing_producer_ids_fails_startup_naming_the_setting() {
    let (_broker, proxy, bootstrap, _) = broker_behind_kafka_proxy().await;
    // As a cluster with ACLs answers a principal without IdempotentWrite.
    proxy.refuse_producer_ids(31);
    let err = startup_error(&bootstrap, Default::default(), routes![lost]).await;
    assert!(
        err.contains("idempotent producer") && err.contains("idempotence(false)"),
        "{err}"
    );
    assert!(err.contains("ClusterAuthorizationFailed"), "{err}");

    // With idempotence off, the same service starts and relays.
    let prefix = unique_prefix("no-idem");
    let client = rskafka::client::ClientBuilder::new(vec![bootstrap.clone()])
        .build()
        .await
        .unwrap();
    create_topic(&client, &format!("{prefix}lost"), 1).await;
    produce(
        &client,
        &format!("{prefix}lost"),
        0,
        vec![record(None, b"x", &[])],
    )
    .await;
    let running = start(app_on(&bootstrap, routes![lost], &prefix, |b| {
        b.idempotence(false)
    }))
    .await;
    let out = read(&client, &format!("{prefix}lost-out"), 1).await;
    assert_eq!(text(&out[&0][0]), "x");
    running.stop().await.expect("a clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_lost_the_producer_sequence_gets_the_next_epoch_and_each_output_once() {
    let prefix = unique_prefix("seq-gap");
    let (_broker, proxy, bootstrap, client, input, out) = lost_behind_proxy(&prefix).await;
    // The first produce to the output is answered OUT_OF_ORDER_SEQUENCE_NUMBER (45), the
    // second UNKNOWN_PRODUCER_ID (59): what a leader says that lost this producer's state.
    let refused = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (count, target) = (refused.clone(), out.clone());
    proxy.refuse_produce(move |t, _| {
        if t != target {
            return None;
        }
        match count.fetch_add(1, std::sync::atomic::Ordering::SeqCst) {
            0 => Some(45),
            1 => Some(59),
            _ => None,
        }
    });
    let inputs = (0..20)
        .map(|i| record(None, format!("m{i}").as_bytes(), &[]))
        .collect();
    produce(&client, &input, 0, inputs).await;
    let running = start(app_on(&bootstrap, routes![lost], &prefix, |b| b)).await;
    let relayed = read(&client, &out, 20).await;
    running.stop().await.expect("a clean shutdown");
    assert!(refused.load(std::sync::atomic::Ordering::SeqCst) >= 3);
    let outputs: Vec<String> = relayed.values().flatten().map(text).collect();
    let want: Vec<String> = (0..20).map(|i| format!("m{i}")).collect();
    assert_eq!(outputs, want);
    let logs = logs();
    assert!(
        logs.matches("idempotent producer epoch bumped").count() >= 2,
        "each refusal moved the producer to its next epoch:\n{logs}"
    );
}
