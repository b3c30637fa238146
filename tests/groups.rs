//! Consumer groups against the real broker: partitions shared between instances, committed
//! offsets across restarts, rebalances when members join and leave, and a member killed with
//! SIGKILL. Each test uses its own topics and group (unique prefix) and bounded waits.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::*;
use faststream::extract::{Partition, State};
use faststream::{publisher, routes, subscriber};

#[derive(Clone)]
struct Instance(&'static str);

// Short session timeouts: the test broker holds every JoinGroup round for session_timeout / 2.
#[subscriber(
    "jobs",
    group_id = "workers",
    auto_offset_reset = "earliest",
    session_timeout_ms = 4000,
    heartbeat_interval_ms = 300,
    commit_interval_ms = 200
)]
#[publisher("jobs-done")]
async fn job(n: u64, me: State<Instance>, partition: Partition) -> String {
    format!("{n}:{}:{}", me.0 .0, partition.0)
}

/// Parsed outputs: input number -> [(instance, partition)].
fn outputs(
    records: &BTreeMap<i32, Vec<rskafka::record::RecordAndOffset>>,
) -> BTreeMap<u64, Vec<(String, i32)>> {
    let mut out: BTreeMap<u64, Vec<(String, i32)>> = BTreeMap::new();
    for r in records.values().flatten() {
        let t = text(r);
        let mut parts = t.split(':');
        let n = parts.next().unwrap().parse().unwrap();
        let who = parts.next().unwrap().to_owned();
        let p = parts.next().unwrap().parse().unwrap();
        out.entry(n).or_default().push((who, p));
    }
    out
}

async fn produce_range(client: &rskafka::client::Client, topic: &str, range: std::ops::Range<u64>) {
    // Spread over the 4 partitions by number.
    let mut by_p: BTreeMap<i32, Vec<_>> = BTreeMap::new();
    for n in range {
        by_p.entry((n % 4) as i32)
            .or_default()
            .push(record(None, n.to_string().as_bytes(), &[]));
    }
    for (p, recs) in by_p {
        produce(client, topic, p, recs).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_partitions_exactly_once_when_nothing_fails() {
    let prefix = unique_prefix("share");
    let client = raw_client().await;
    let (input, output) = (format!("{prefix}jobs"), format!("{prefix}jobs-done"));
    create_topic(&client, &input, 4).await;
    create_topic(&client, &output, 1).await;
    let a_app = app(routes![job], &prefix).with_state(Instance("a"));
    let b_app = app(routes![job], &prefix).with_state(Instance("b"));
    // Start both before any input so the group settles with two members.
    let (a, b) = tokio::join!(start(a_app), start(b_app));
    produce_range(&client, &input, 0..400).await;
    let out = outputs(&read(&client, &output, 400).await);
    assert_eq!(out.len(), 400, "every input has an output");
    assert!(out.values().all(|v| v.len() == 1), "no duplicates");
    let by_instance: BTreeMap<&str, BTreeSet<i32>> =
        out.values().fold(BTreeMap::new(), |mut m, v| {
            m.entry(v[0].0.as_str()).or_default().insert(v[0].1);
            m
        });
    assert_eq!(
        by_instance.len(),
        2,
        "both instances got partitions: {by_instance:?}"
    );
    let a_parts = &by_instance["a"];
    let b_parts = &by_instance["b"];
    assert!(a_parts.is_disjoint(b_parts), "{by_instance:?}");
    assert_eq!(a_parts.len() + b_parts.len(), 4);
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_resumes_from_committed_offsets() {
    let prefix = unique_prefix("restart");
    let client = raw_client().await;
    let (input, output) = (format!("{prefix}jobs"), format!("{prefix}jobs-done"));
    create_topic(&client, &input, 4).await;
    create_topic(&client, &output, 1).await;
    produce_range(&client, &input, 0..200).await;
    let first = start(app(routes![job], &prefix).with_state(Instance("first"))).await;
    read(&client, &output, 200).await;
    first.stop().await.unwrap(); // SIGTERM path: finish, commit, leave
    produce_range(&client, &input, 200..300).await;
    let second = start(app(routes![job], &prefix).with_state(Instance("second"))).await;
    let out = outputs(&read(&client, &output, 300).await);
    // Give a reprocessing bug time to show up before counting.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let all = outputs(&read(&client, &output, 300).await);
    assert_eq!(out.len(), 300);
    assert_eq!(
        all.values().map(Vec::len).sum::<usize>(),
        300,
        "nothing reprocessed after restart"
    );
    assert!((200..300).all(|n| all[&n][0].0 == "second"));
    assert!((0..200).all(|n| all[&n][0].0 == "first"));
    second.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_third_member_joins_and_leaves_without_losing_messages() {
    let prefix = unique_prefix("third");
    let client = raw_client().await;
    let (input, output) = (format!("{prefix}jobs"), format!("{prefix}jobs-done"));
    create_topic(&client, &input, 4).await;
    create_topic(&client, &output, 1).await;
    let (a, b) = tokio::join!(
        start(app(routes![job], &prefix).with_state(Instance("a"))),
        start(app(routes![job], &prefix).with_state(Instance("b")))
    );
    produce_range(&client, &input, 0..100).await;
    read(&client, &output, 100).await;
    let c = start(app(routes![job], &prefix).with_state(Instance("c"))).await;
    produce_range(&client, &input, 100..200).await;
    let out = outputs(&read(&client, &output, 200).await);
    let with_c: BTreeSet<i32> = out
        .values()
        .flatten()
        .filter(|(w, _)| w == "c")
        .map(|(_, p)| *p)
        .collect();
    assert!(
        !with_c.is_empty(),
        "the third member got partitions after joining"
    );
    c.stop().await.unwrap();
    produce_range(&client, &input, 200..300).await;
    let out = outputs(&read(&client, &output, 300).await);
    let lost: Vec<u64> = (0..300).filter(|n| !out.contains_key(n)).collect();
    assert!(lost.is_empty(), "lost: {lost:?}");
    let duplicates = out.values().filter(|v| v.len() > 1).count();
    println!("third member join/leave: 300 inputs, {duplicates} duplicated");
    assert_eq!(
        duplicates, 0,
        "graceful revokes commit before handing partitions over"
    );
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_member_loses_nothing() {
    let prefix = unique_prefix("kill");
    let client = raw_client().await;
    let (input, output) = (format!("{prefix}jobs"), format!("{prefix}jobs-done"));
    create_topic(&client, &input, 4).await;
    create_topic(&client, &output, 1).await;
    let (mut w1, w2) = tokio::join!(
        spawn_example("group_worker", &prefix, &[("WORKER_NAME", "w1")]),
        spawn_example("group_worker", &prefix, &[("WORKER_NAME", "w2")])
    );
    const N: u64 = 2_000;
    for batch in 0..20 {
        produce_range(&client, &input, batch * 100..(batch + 1) * 100).await;
        if batch == 10 {
            // SIGKILL: no revoke, no final commit, no LeaveGroup.
            w1.start_kill().unwrap();
            w1.wait().await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Every input gets at least one output; the survivor takes over w1's partitions once the
    // coordinator expires w1's session.
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    let (out, records) = loop {
        let total: usize = {
            let mut n = 0;
            for p in 0..1 {
                let pc = client
                    .partition_client(
                        output.clone(),
                        p,
                        rskafka::client::partition::UnknownTopicHandling::Retry,
                    )
                    .await
                    .unwrap();
                n += pc.fetch_records(0, 1..2, 1).await.unwrap().1 as usize;
            }
            n
        };
        let records = read(&client, &output, total).await;
        let out = outputs(&records);
        if (0..N).all(|n| out.contains_key(&n)) {
            break (out, records);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "lost: {:?}",
            (0..N).filter(|n| !out.contains_key(n)).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let lost = (0..N).filter(|n| !out.contains_key(n)).count();
    let duplicates: usize = out.values().map(|v| v.len() - 1).sum();
    println!(
        "kill -9 of one of two members: {N} inputs, {lost} lost, {duplicates} duplicate outputs"
    );
    assert_eq!(lost, 0);
    assert!(out.values().flatten().any(|(w, _)| w == "w2"));
    // What a crash repeats is what the killed member finished since its last commit: every
    // repeated input's first output was written within one commit interval (200 ms, plus the
    // time an ack and a commit round trip take) of the killed member's last output.
    let w1_outputs: Vec<(u64, i64)> = records
        .values()
        .flatten()
        .filter_map(|r| {
            let t = text(r);
            let mut parts = t.split(':');
            let n: u64 = parts.next()?.parse().ok()?;
            (parts.next()? == "w1").then(|| (n, r.record.timestamp.timestamp_millis()))
        })
        .collect();
    let last = w1_outputs.iter().map(|(_, t)| *t).max().unwrap();
    let repeated: Vec<(u64, i64)> = w1_outputs
        .iter()
        .filter(|(n, _)| out[n].len() > 1)
        .map(|(n, t)| (*n, last - t))
        .collect();
    let oldest = repeated.iter().map(|(_, age)| *age).max().unwrap_or(0);
    println!("repeated inputs were finished at most {oldest} ms before the kill");
    assert!(
        oldest <= 200 + 500,
        "a repeated input was finished {oldest} ms before the kill: {repeated:?}"
    );
    // Graceful stop of the survivor.
    terminate(w2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aiokafka_member_shares_our_group() {
    use tokio::io::AsyncBufReadExt;
    let prefix = unique_prefix("interop");
    let client = raw_client().await;
    let (input, output) = (format!("{prefix}jobs"), format!("{prefix}jobs-done"));
    create_topic(&client, &input, 4).await;
    create_topic(&client, &output, 1).await;
    let ours = start(app(routes![job], &prefix).with_state(Instance("rust"))).await;

    let python = python();
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/aiokafka_member.py");
    let mut member = tokio::process::Command::new(python)
        .arg(script)
        .args([
            bootstrap(),
            input.clone(),
            format!("{prefix}workers"),
            "30".into(),
        ])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(member.stdout.take().unwrap()).lines();
    // Wait until the Python member holds some partitions.
    let theirs = await_share(&mut lines, 4, "aiokafka").await;

    produce_range(&client, &input, 0..400).await;
    // Our outputs plus the Python member's messages cover every input exactly once.
    let mut python_got: BTreeSet<u64> = BTreeSet::new();
    let collect = async {
        while python_got.len() < 400 {
            let line = lines
                .next_line()
                .await
                .unwrap()
                .expect("aiokafka member output");
            if let Some(rest) = line.strip_prefix("MSG ") {
                let (p, n) = rest.split_once(' ').unwrap();
                assert!(
                    theirs.contains(&p.parse().unwrap()),
                    "{line} outside {theirs:?}"
                );
                python_got.insert(n.parse().unwrap());
            }
            let expected_theirs = (0..400u64)
                .filter(|n| theirs.contains(&((n % 4) as i32)))
                .count();
            if python_got.len() == expected_theirs {
                break;
            }
        }
    };
    tokio::time::timeout(TIMEOUT, collect)
        .await
        .expect("the aiokafka member reads its share");
    let ours_expected = (0..400u64)
        .filter(|n| !theirs.contains(&((n % 4) as i32)))
        .count();
    let out = outputs(&read(&client, &output, ours_expected).await);
    let ours_got: BTreeSet<u64> = out.keys().copied().collect();
    assert!(ours_got.is_disjoint(&python_got));
    assert_eq!(ours_got.len() + python_got.len(), 400);
    assert!(!ours_got.is_empty() && !python_got.is_empty());
    println!(
        "aiokafka member held partitions {theirs:?}; it read {} messages, we handled {}",
        python_got.len(),
        ours_got.len()
    );
    member.start_kill().unwrap();
    ours.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebalance_hooks_see_assignments_and_revocations() {
    let prefix = unique_prefix("hooks");
    let client = raw_client().await;
    create_topic(&client, &format!("{prefix}jobs"), 4).await;
    create_topic(&client, &format!("{prefix}jobs-done"), 1).await;
    let events = Events::default();
    let hooked = |name: &'static str| {
        let broker = recording_rebalances(&bootstrap(), &events, name).build();
        faststream::FastStream::new(broker)
            .with_routes(routes![job])
            .topic_prefix(&prefix)
            .with_state(Instance(name))
    };
    let group = format!("{prefix}workers");
    let a = start(hooked("a")).await;
    let b = start(hooked("b")).await;
    b.stop().await.unwrap(); // LeaveGroup: a gets all four partitions back
    let back = format!("a assigned {group} 4");
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while events
        .lock()
        .unwrap()
        .iter()
        .filter(|e| **e == back)
        .count()
        < 2
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:#?}",
            events.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    a.stop().await.unwrap();
    let events = events.lock().unwrap().clone();
    // a: all four, revoked when b joins, two, revoked when b leaves, four, revoked at shutdown.
    assert_eq!(
        events.first().unwrap(),
        &format!("a assigned {group} 4"),
        "{events:#?}"
    );
    assert!(
        events.contains(&format!("b assigned {group} 2")),
        "{events:#?}"
    );
    assert!(
        events.contains(&format!("b revoked {group} 2")),
        "{events:#?}"
    );
    assert_eq!(
        events.last().unwrap(),
        &format!("a revoked {group} 4"),
        "{events:#?}"
    );
    let assigned = events.iter().filter(|e| e.contains("assigned")).count();
    let revoked = events.iter().filter(|e| e.contains("revoked")).count();
    assert_eq!(
        assigned, revoked,
        "every assignment ends in a revocation: {events:#?}"
    );
}

#[subscriber(
    "ghostly",
    group_id = "ghostly",
    auto_offset_reset = "earliest",
    session_timeout_ms = 3000,
    heartbeat_interval_ms = 300
)]
#[publisher("ghostly-out")]
async fn ghostly(body: String) -> String {
    body
}

/// Another client's member in our group, subscribed to a topic the cluster does not have: the
/// leader assigns it nothing (and creates nothing), and our member goes on consuming.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_member_subscribed_to_a_missing_topic_does_not_block_the_group() {
    let prefix = unique_prefix("ghostly");
    let client = raw_client().await;
    let topic = format!("{prefix}ghostly");
    create_topic(&client, &topic, 2).await;
    create_topic(&client, &format!("{prefix}ghostly-out"), 1).await;
    let ours = start(app(routes![ghostly], &prefix)).await;
    let ghost = format!("{prefix}nowhere");
    let foreign =
        common::wire::ForeignMember::join(&bootstrap(), &format!("{prefix}ghostly"), &[&ghost])
            .await;
    assert!(
        foreign.assigned.iter().all(|(_, parts)| parts.is_empty()),
        "nothing to assign for a missing topic: {:?}",
        foreign.assigned
    );
    for p in 0..2 {
        produce(
            &client,
            &topic,
            p,
            (0..10)
                .map(|i| record(None, format!("{p}-{i}").as_bytes(), &[]))
                .collect(),
        )
        .await;
    }
    let out = read(&client, &format!("{prefix}ghostly-out"), 20).await;
    assert_eq!(out.values().flatten().count(), 20);
    let topics = client.list_topics().await.unwrap();
    assert!(
        !topics.iter().any(|t| t.name == ghost),
        "the missing topic was not created"
    );
    drop(foreign);
    ours.stop().await.unwrap();
}

/// A broker of the test's own behind the Kafka-aware proxy, which it advertises (every
/// connection goes through the proxy): the broker, its own address, the proxy, the proxy's
/// address, and a plain client through it.
async fn broker_behind_proxy() -> (
    OwnBroker,
    String,
    common::wire::KafkaProxy,
    String,
    rskafka::client::Client,
) {
    let proxy_port = free_port();
    let (broker, broker_addr) = OwnBroker::start(Some(proxy_port)).await;
    let proxy = common::wire::KafkaProxy::start_on(proxy_port, broker_addr.clone()).await;
    let via_proxy = format!("127.0.0.1:{proxy_port}");
    let client = rskafka::client::ClientBuilder::new(vec![via_proxy.clone()])
        .build()
        .await
        .unwrap();
    (broker, broker_addr, proxy, via_proxy, client)
}

#[subscriber(
    "patient",
    group_id = "patient",
    auto_offset_reset = "earliest",
    session_timeout_ms = 6000,
    heartbeat_interval_ms = 300,
    commit_interval_ms = 200
)]
#[publisher("patient-out")]
async fn patient(n: u64) -> String {
    n.to_string()
}

/// A coordinator that answers late: an offset commit whose answer comes after the request
/// timeout (the connection is dropped, never reused: later commits land, and the member's
/// LeaveGroup is answered as itself), and a member stopped while the coordinator holds its
/// JoinGroup (it gives up joining after its session timeout and stops without LeaveGroup; the
/// other member gets every partition once the coordinator expired it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_coordinator_answers_are_never_read_by_the_next_request() {
    use faststream::kafka::KafkaBroker;
    use kafka_protocol::messages::ApiKey;
    init_logs();
    let prefix = unique_prefix("late");
    let (_broker, broker_addr, proxy, via_proxy, client) = broker_behind_proxy().await;
    let (input, output) = (format!("{prefix}patient"), format!("{prefix}patient-out"));
    let group = input.clone();
    create_topic(&client, &input, 2).await;
    create_topic(&client, &output, 1).await;
    let member = || {
        faststream::FastStream::new(
            KafkaBroker::builder(&via_proxy)
                .request_timeout(Duration::from_secs(2))
                .build(),
        )
        .with_routes(routes![patient])
        .topic_prefix(&prefix)
    };
    let a = start(member()).await;

    // 1. The answer to one offset commit comes after the request timeout.
    proxy.delay_answers(ApiKey::OffsetCommit, 1, Duration::from_secs(4));
    let inputs = (0..10)
        .map(|n: u64| record(None, n.to_string().as_bytes(), &[]))
        .collect();
    produce(&client, &input, 0, inputs).await;
    read(&client, &output, 10).await;
    wait_for("the delayed commit times out", || {
        logs_about(&input).contains("offset commit failed")
    })
    .await;
    // Later commits go out on a fresh connection and land.
    let inputs = (10..15)
        .map(|n: u64| record(None, n.to_string().as_bytes(), &[]))
        .collect();
    produce(&client, &input, 0, inputs).await;
    read(&client, &output, 15).await;
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while common::wire::committed(&broker_addr, &group, &input).await != 15 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the commit of offset 15 never landed; log:\n{}",
            logs_about(&input)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // 2. A second member joins and is stopped while the coordinator's answer to its JoinGroup
    // is held back for longer than a stopping member waits for the group to settle (its
    // session timeout): it abandons the join and stops without LeaveGroup (the coordinator
    // expires it), and the first member takes every partition again.
    let joins_before = proxy.requests(ApiKey::JoinGroup);
    let (stop_b, stopped) = tokio::sync::oneshot::channel::<()>();
    let b = tokio::spawn(member().run_until(async {
        let _ = stopped.await;
    }));
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    // b's first JoinGroup is answered "member id required" at once; the coordinator holds its
    // second until the group has rejoined, and the proxy holds the answer back further.
    while proxy.requests(ApiKey::JoinGroup) < joins_before + 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{}",
            logs_about(&input)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    proxy.delay_answers(ApiKey::JoinGroup, 100, Duration::from_secs(10));
    let _ = stop_b.send(());
    tokio::time::timeout(TIMEOUT, b)
        .await
        .expect("the second member stops")
        .unwrap()
        .unwrap();
    proxy.delay_answers(ApiKey::JoinGroup, 0, Duration::ZERO);
    let log = logs_about(&input);
    assert!(log.contains("not leaving the group"), "{log}");
    assert!(!log.contains("left the group"), "{log}");
    // The first member goes on: it takes every partition again.
    let inputs = (15..25)
        .map(|n: u64| record(None, n.to_string().as_bytes(), &[]))
        .collect();
    produce(&client, &input, 1, inputs).await;
    read(&client, &output, 25).await;
    // 3. After the commit that timed out, the first member's LeaveGroup is answered as itself.
    a.stop().await.unwrap();
    let log = logs_about(&input);
    assert_eq!(log.matches("left the group").count(), 1, "{log}");
    assert!(!log.contains("LeaveGroup failed"), "{log}");
    assert!(!logs_about(&input).contains("correlation id"));
}

#[subscriber(
    "phoenix",
    group_id = "phoenix",
    auto_offset_reset = "earliest",
    session_timeout_ms = 6000,
    heartbeat_interval_ms = 300,
    commit_interval_ms = 200
)]
#[publisher("phoenix-out")]
async fn phoenix(body: String) -> String {
    body
}

/// A subscribed topic that disappears (deleted, or lost with a broker) and is created again:
/// the member notices the loss at a metadata refresh, is assigned nothing meanwhile, looks
/// the topic up again at the retry backoff, and consumes it again once it is back: no restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscribed_topic_created_again_is_consumed_without_a_restart() {
    let prefix = unique_prefix("phoenix");
    let client = raw_client().await;
    let (input, output) = (format!("{prefix}phoenix"), format!("{prefix}phoenix-out"));
    create_topic(&client, &input, 2).await;
    create_topic(&client, &output, 1).await;
    init_logs();
    let broker = faststream::kafka::KafkaBroker::builder(&bootstrap())
        .metadata_max_age(Duration::from_secs(3))
        .build();
    let service = start(
        faststream::FastStream::new(broker)
            .with_routes(routes![phoenix])
            .topic_prefix(&prefix),
    )
    .await;
    produce(&client, &input, 0, vec![record(None, b"before", &[])]).await;
    read(&client, &output, 1).await;

    let controller = client.controller_client().unwrap();
    controller.delete_topic(&input, 5_000).await.unwrap();
    wait_for("the member notices the topic is gone", || {
        logs_about(&input).contains("a subscribed topic has no metadata")
    })
    .await;
    create_topic(&client, &input, 2).await;
    for p in 0..2 {
        let records = (0..5)
            .map(|i| record(None, format!("after-{p}-{i}").as_bytes(), &[]))
            .collect();
        produce(&client, &input, p, records).await;
    }
    let out = read(&client, &output, 11).await;
    let mut values: Vec<String> = out.values().flatten().map(text).collect();
    values.sort();
    assert_eq!(values.len(), 11, "{values:?}");
    assert_eq!(values[0], "after-0-0");
    assert_eq!(values[10], "before");
    service.stop().await.unwrap();
}

#[subscriber(
    "resumer",
    group_id = "resumer",
    auto_offset_reset = "earliest",
    session_timeout_ms = 6000,
    heartbeat_interval_ms = 300,
    commit_interval_ms = 200
)]
#[publisher("resumer-out")]
async fn resumer(n: u64) -> String {
    n.to_string()
}

/// A coordinator that cannot give a partition's committed offset yet (an OffsetFetch answer
/// with an error on the partition and no offset, as Kafka answers `UNSTABLE_OFFSET_COMMIT`
/// while a transaction's offsets are pending) is asked again: the member does not start that
/// partition from `auto_offset_reset`, which would repeat everything the group handled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_offsets_the_coordinator_cannot_give_yet_are_asked_again_not_reset() {
    use faststream::kafka::KafkaBroker;
    use kafka_protocol::messages::ApiKey;
    init_logs();
    let prefix = unique_prefix("resume");
    let (_broker, broker_addr, proxy, via_proxy, client) = broker_behind_proxy().await;
    let (input, output) = (format!("{prefix}resumer"), format!("{prefix}resumer-out"));
    create_topic(&client, &input, 1).await;
    create_topic(&client, &output, 1).await;
    let member = || {
        faststream::FastStream::new(KafkaBroker::new(&via_proxy))
            .with_routes(routes![resumer])
            .topic_prefix(&prefix)
    };
    let numbers = |range: std::ops::Range<u64>| {
        range
            .map(|n| record(None, n.to_string().as_bytes(), &[]))
            .collect()
    };
    let a = start(member()).await;
    produce(&client, &input, 0, numbers(0..10)).await;
    read(&client, &output, 10).await;
    a.stop().await.unwrap();
    assert_eq!(
        common::wire::committed(&broker_addr, &input, &input).await,
        10
    );

    // The restarted member's first two OffsetFetch answers carry UNSTABLE_OFFSET_COMMIT.
    let fetches_before = proxy.requests(ApiKey::OffsetFetch);
    proxy.fail_offset_fetches(2, 88);
    let b = start(member()).await;
    assert!(
        proxy.requests(ApiKey::OffsetFetch) >= fetches_before + 3,
        "asked again after two refused answers"
    );
    produce(&client, &input, 0, numbers(10..15)).await;
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while common::wire::committed(&broker_addr, &input, &input).await != 15 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "offset 15 never committed; log:\n{}",
            logs_about(&input)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    b.stop().await.unwrap();
    let out = read(&client, &output, 15).await;
    let got: Vec<String> = out.values().flatten().map(text).collect();
    let want: Vec<String> = (0..15).map(|n: u64| n.to_string()).collect();
    assert_eq!(
        got,
        want,
        "each input handled once; log:\n{}",
        logs_about(&input)
    );
    assert!(logs_about(&input).contains("UnstableOffsetCommit"));
}

#[subscriber(
    "grind",
    group_id = "grinders",
    auto_offset_reset = "earliest",
    session_timeout_ms = 4000,
    heartbeat_interval_ms = 300,
    commit_interval_ms = 200
)]
#[publisher("grind-done")]
async fn grind(n: u64) -> String {
    // Work that never waits (a parser, a computation): the thread is busy throughout.
    std::thread::sleep(Duration::from_millis(5));
    n.to_string()
}

#[subscriber(
    "stall",
    group_id = "stallers",
    auto_offset_reset = "earliest",
    session_timeout_ms = 4000,
    heartbeat_interval_ms = 300,
    commit_interval_ms = 200
)]
#[publisher("stall-done")]
async fn stall(n: u64) -> String {
    // A synchronous call that takes longer than the session timeout.
    std::thread::sleep(Duration::from_secs(5));
    n.to_string()
}

/// Rebalance events as the hooks of [`recording_rebalances`] write them.
type Events = std::sync::Arc<std::sync::Mutex<Vec<String>>>;

/// A broker builder whose rebalance hooks push `"{who} assigned {group} {n}"` and
/// `"{who} revoked {group} {n}"` (n partitions) to `events`.
fn recording_rebalances(
    addr: &str,
    events: &Events,
    who: &'static str,
) -> faststream::kafka::KafkaBrokerBuilder {
    let (a, r) = (events.clone(), events.clone());
    init_logs();
    faststream::kafka::KafkaBroker::builder(addr)
        .on_partitions_assigned(move |group, parts| {
            a.lock()
                .unwrap()
                .push(format!("{who} assigned {group} {}", parts.len()))
        })
        .on_partitions_revoked(move |group, parts| {
            r.lock()
                .unwrap()
                .push(format!("{who} revoked {group} {}", parts.len()))
        })
}

/// Runs `route` (subscribed to `{name}`, publishing to `{name}-done`, on a runtime of one
/// worker) over `n` numbers in one partition of the broker at `addr`, and checks that the
/// member kept its partition from its assignment to its shutdown and handled each number
/// once. `prefix` is the test's topic prefix.
async fn one_assignment_over(
    addr: &str,
    prefix: &str,
    route: &'static faststream::runtime::RouteDef,
    name: &'static str,
    n: u64,
) {
    let client = client_at(addr).await;
    let (input, output) = (format!("{prefix}{name}"), format!("{prefix}{name}-done"));
    create_topic(&client, &input, 1).await;
    create_topic(&client, &output, 1).await;
    let inputs: Vec<_> = (0..n)
        .map(|n| record(None, n.to_string().as_bytes(), &[]))
        .collect();
    produce(&client, &input, 0, inputs).await;
    let events = Events::default();
    let broker = recording_rebalances(addr, &events, name).build();
    let running = start(
        faststream::FastStream::new(broker)
            .with_routes(vec![route])
            .topic_prefix(prefix),
    )
    .await;
    let records = read(&client, &output, n as usize).await;
    running.stop().await.unwrap();
    let events = events.lock().unwrap().clone();
    let group = format!(
        "{prefix}{}",
        route.subscribers()[0].group().expect("a group")
    );
    assert_eq!(
        events,
        [
            format!("{name} assigned {group} 1"),
            format!("{name} revoked {group} 1")
        ],
        "one assignment, revoked at shutdown only: {}",
        logs_about(&input)
    );
    let mut handled: Vec<u64> = records
        .values()
        .flatten()
        .map(|r| text(r).parse().unwrap())
        .collect();
    handled.sort_unstable();
    assert_eq!(handled, (0..n).collect::<Vec<_>>(), "each message once");
}

/// Handlers that never wait, over a backlog that takes about twice the session timeout
/// (1 500 messages of 5 ms against 4 s): the partition's consumer gives its worker back now
/// and then, so fetches, acks and commits go on, and the member keeps its partition. (A
/// consumer that kept its worker for a whole fetched backlog starved the heartbeat task
/// when it ran on the service's runtime: the broker dropped the member and the messages
/// after its last commit were handled again.)
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn handlers_that_never_wait_do_not_stop_the_heartbeat() {
    let prefix = unique_prefix("grind");
    one_assignment_over(&bootstrap(), &prefix, routes![grind][0], "grind", 1500).await;
}

/// A handler that blocks the service's only worker for longer than the session timeout
/// (5 s against 4 s, twice): heartbeats go on from their own thread, as the Java consumer's
/// do, so the member keeps its partition and nothing is handled twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_handler_blocking_past_the_session_timeout_keeps_the_member() {
    let prefix = unique_prefix("stall");
    one_assignment_over(&bootstrap(), &prefix, routes![stall][0], "stall", 2).await;
}

#[subscriber(
    "stall848",
    group_id = "stallers848",
    group_protocol = "consumer",
    auto_offset_reset = "earliest",
    commit_interval_ms = 200
)]
#[publisher("stall848-done")]
async fn stall_848(n: u64) -> String {
    std::thread::sleep(Duration::from_secs(5));
    n.to_string()
}

/// The same under the consumer group protocol (KIP-848, Apache Kafka), whose session timeout
/// is the group's setting at the broker: set to 4 s for this group with Kafka's own
/// `ConfigCommand` before the member joins. Its heartbeat task runs on the heartbeat thread
/// too: without that, the broker fences the member while the handler blocks the worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn under_the_consumer_protocol_a_blocking_handler_keeps_the_member() {
    let addr = tokio::task::spawn_blocking(apache_kafka).await.unwrap();
    let prefix = unique_prefix("stall848");
    let group = format!("{prefix}stallers848");
    let timeouts = "consumer.session.timeout.ms=4000,consumer.heartbeat.interval.ms=500";
    kafka_tool(
        "org.apache.kafka.tools.ConfigCommand",
        &[
            "--bootstrap-server",
            &addr,
            "--alter",
            "--entity-type",
            "groups",
            "--entity-name",
            &group,
            "--add-config",
            timeouts,
        ],
    )
    .await;
    one_assignment_over(&addr, &prefix, routes![stall_848][0], "stall848", 2).await;
}
