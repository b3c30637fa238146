//! Consumer groups against the real broker: partitions shared between instances, committed
//! offsets across restarts, rebalances when members join and leave, and a member killed with
//! SIGKILL. Each test uses its own topics and group (unique prefix) and bounded waits.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::*;
use faststream::{publisher, routes, subscriber, Partition, State};

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
