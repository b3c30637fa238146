//! Retry topics that keep per-key order, against the real broker: a failing message moves to a
//! delay topic while its partition goes on, later messages with its key follow it, other keys
//! are not held; the retry path survives a crash (its lane is rebuilt from the retry topics).

mod common;

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::*;
use faststream::policy::{dlq_header, retry_header};
use faststream::{publisher, routes, subscriber};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
struct Job {
    /// The test's tag (tests of this binary run side by side).
    test: String,
    id: String,
    /// How many times it fails before it succeeds.
    fails: u32,
}

/// Every handler run: (test, id, succeeded, when).
static RUNS: Mutex<Vec<(String, String, bool, Instant)>> = Mutex::new(Vec::new());

fn run(job: &Job) -> Result<String, String> {
    let mut runs = RUNS.lock().unwrap();
    let earlier = runs
        .iter()
        .filter(|(t, id, ok, _)| *t == job.test && *id == job.id && !ok)
        .count() as u32;
    let ok = earlier >= job.fails;
    runs.push((job.test.clone(), job.id.clone(), ok, Instant::now()));
    if ok {
        Ok(job.id.clone())
    } else {
        Err(format!("{} fails (run {})", job.id, earlier + 1))
    }
}

/// The runs of one test, in order.
fn runs_of(test: &str) -> Vec<(String, bool, Instant)> {
    RUNS.lock()
        .unwrap()
        .iter()
        .filter(|(t, ..)| t == test)
        .map(|(_, id, ok, at)| (id.clone(), *ok, *at))
        .collect()
}

fn successes(test: &str) -> Vec<String> {
    runs_of(test)
        .into_iter()
        .filter(|(_, ok, _)| *ok)
        .map(|(id, ..)| id)
        .collect()
}

fn job(test: &str, key: &str, id: &str, fails: u32) -> rskafka::record::Record {
    let body = format!(r#"{{"test": "{test}", "id": "{id}", "fails": {fails}}}"#);
    record(Some(key), body.as_bytes(), &[])
}

fn header(r: &rskafka::record::RecordAndOffset, name: &str) -> Option<String> {
    let value = r.record.headers.get(name)?;
    Some(String::from_utf8(value.clone()).unwrap())
}

#[subscriber(
    "jobs",
    group_id = "jobs",
    auto_offset_reset = "earliest",
    retry = 0,
    retry_topics = ["jobs.retry.1s", "jobs.retry.2s"],
    dlq = "jobs.dlq"
)]
#[publisher("jobs-done")]
async fn work(job: Job) -> Result<String, String> {
    run(&job)
}

/// The same with key-ordered concurrency: A's messages are handled one at a time, B's beside.
#[subscriber(
    "cjobs",
    group_id = "cjobs",
    auto_offset_reset = "earliest",
    retry = 0,
    retry_topics = ["cjobs.retry.1s", "cjobs.retry.2s"],
    dlq = "cjobs.dlq",
    concurrency = 4
)]
#[publisher("cjobs-done")]
async fn work_concurrently(job: Job) -> Result<String, String> {
    run(&job)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_message_moves_aside_and_its_key_follows_it_in_order() {
    interleaved(&unique_prefix("retrytopics"), "jobs", routes![work]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_concurrency_a_failing_message_moves_aside_and_its_key_follows_it_in_order() {
    let routes = routes![work_concurrently];
    interleaved(&unique_prefix("retryconc"), "cjobs", routes).await;
}

/// Keys A and B interleaved on one partition, a third key on another: A1 fails twice, then
/// succeeds; A's later messages follow it through both retry topics and are handled after it,
/// in order; B's go on at once; each message succeeds once; the copies say where they came
/// from.
async fn interleaved(
    prefix: &str,
    name: &str,
    routes: Vec<&'static faststream::runtime::RouteDef>,
) {
    let test = prefix.to_owned();
    let client = raw_client().await;
    let jobs = format!("{prefix}{name}");
    create_topic(&client, &jobs, 2).await;
    let t = test.as_str();
    produce(
        &client,
        &jobs,
        0,
        vec![
            job(t, "A", "A1", 2),
            job(t, "B", "B1", 0),
            job(t, "A", "A2", 0),
            job(t, "B", "B2", 0),
            job(t, "A", "A3", 0),
            job(t, "B", "B3", 0),
        ],
    )
    .await;
    produce(&client, &jobs, 1, vec![job(t, "C", "C1", 1)]).await;
    let running = start(app(routes, prefix)).await;
    let done = read(&client, &format!("{prefix}{name}-done"), 7).await;
    wait_for("every job succeeded", || successes(t).len() == 7).await;
    running.stop().await.unwrap();

    let runs = runs_of(t);
    let ok = successes(t);
    let position = |id: &str| ok.iter().position(|s| s == id).unwrap();
    // Every message succeeded once.
    let mut counted: BTreeMap<&str, usize> = BTreeMap::new();
    for id in &ok {
        *counted.entry(id).or_default() += 1;
    }
    assert!(counted.values().all(|n| *n == 1), "{counted:?}");
    // A keeps its order, through the retry path.
    assert!(position("A1") < position("A2") && position("A2") < position("A3"));
    // B is not held back by A: all of B succeeded before A1's first retry.
    let a1: Vec<Instant> = runs
        .iter()
        .filter(|(id, ..)| id == "A1")
        .map(|(.., at)| *at)
        .collect();
    assert_eq!(a1.len(), 3, "A1 ran three times: {runs:?}");
    for (id, succeeded, at) in &runs {
        if id.starts_with('B') {
            assert!(*succeeded && *at < a1[1], "{id} waited for A1: {runs:?}");
        }
    }
    // Each retry waited for its topic's delay (the due time is whole milliseconds of the
    // wall clock: a millisecond of slack).
    let slack = Duration::from_millis(2);
    assert!(a1[1] - a1[0] + slack >= Duration::from_secs(1), "{a1:?}");
    assert!(a1[2] - a1[1] + slack >= Duration::from_secs(2), "{a1:?}");
    // Nothing was dead-lettered; every output is there.
    assert_eq!(done.values().map(Vec::len).sum::<usize>(), 7);

    // The first retry topic holds A1's copy, then A2's and A3's following it (and C1's, on
    // partition 1), each on the partition of its origin.
    let first = read(&client, &format!("{prefix}{name}.retry.1s"), 4).await;
    let p0 = &first[&0];
    assert_eq!(p0.len(), 3, "{:?}", first.keys());
    assert_eq!(first[&1].len(), 1);
    let a1_copy = &p0[0];
    assert_eq!(
        header(a1_copy, dlq_header::ORIGINAL_TOPIC),
        Some(jobs.clone())
    );
    assert_eq!(
        header(a1_copy, dlq_header::ORIGINAL_PARTITION).as_deref(),
        Some("0")
    );
    assert_eq!(
        header(a1_copy, dlq_header::ORIGINAL_OFFSET).as_deref(),
        Some("0")
    );
    assert_eq!(header(a1_copy, dlq_header::ATTEMPTS).as_deref(), Some("1"));
    assert!(header(a1_copy, dlq_header::ERROR)
        .unwrap()
        .contains("A1 fails (run 1)"));
    assert!(header(a1_copy, retry_header::DUE).is_some());
    assert_eq!(header(a1_copy, retry_header::FOLLOWS), None);
    assert_eq!(header(&p0[1], retry_header::FOLLOWS).as_deref(), Some("0"));
    assert_eq!(
        header(&p0[1], dlq_header::ORIGINAL_OFFSET).as_deref(),
        Some("2")
    );
    // The second retry topic: A1 again (two runs counted), A2 and A3 after it.
    let second = read(&client, &format!("{prefix}{name}.retry.2s"), 3).await;
    let s0 = &second[&0];
    assert_eq!(header(&s0[0], dlq_header::ATTEMPTS).as_deref(), Some("2"));
    assert_eq!(
        header(&s0[0], dlq_header::ORIGINAL_TOPIC),
        Some(jobs.clone())
    );
    assert_eq!(
        header(&s0[0], dlq_header::ORIGINAL_OFFSET).as_deref(),
        Some("0")
    );
    let followers: Vec<_> = s0[1..]
        .iter()
        .map(|r| header(r, dlq_header::ORIGINAL_OFFSET).unwrap())
        .collect();
    assert_eq!(followers, ["2", "4"]);
}

#[subscriber(
    "parked",
    group_id = "parked",
    auto_offset_reset = "earliest",
    retry = 0,
    retry_topics = ["parked.retry.3s"],
    dlq = "parked.dlq",
    session_timeout_ms = 6000
)]
#[publisher("parked-done")]
async fn parked(job: Job) -> Result<String, String> {
    run(&job)
}

/// The service dies (no final commit) while A1 and its follower wait on the retry topic; a
/// later A3 arrives meanwhile. The restarted service rebuilds the lane from the retry topic:
/// A3 still waits for A1 and A2, nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_on_the_retry_path_loses_nothing_and_keeps_the_order() {
    let prefix = unique_prefix("retrycrash");
    let test = prefix.clone();
    let t = test.as_str();
    let client = raw_client().await;
    let topic = format!("{prefix}parked");
    create_topic(&client, &topic, 1).await;
    produce(
        &client,
        &topic,
        0,
        vec![
            job(t, "A", "A1", 1),
            job(t, "A", "A2", 0),
            job(t, "B", "B1", 0),
        ],
    )
    .await;
    let running = start(app(routes![parked], &prefix)).await;
    // A1 and A2 wait on the retry topic; B1 is done.
    read(&client, &format!("{prefix}parked.retry.3s"), 2).await;
    wait_for("B1 handled", || successes(t).contains(&"B1".to_string())).await;
    running.crash().await;
    assert!(
        !successes(t).contains(&"A1".to_string()),
        "A1 ran before its delay: {:?}",
        runs_of(t)
    );
    produce(&client, &topic, 0, vec![job(t, "A", "A3", 0)]).await;

    let running = start(app(routes![parked], &prefix)).await;
    wait_for("A3 handled", || successes(t).contains(&"A3".to_string())).await;
    running.stop().await.unwrap();
    let ok = successes(t);
    let first = |id: &str| ok.iter().position(|s| s == id).unwrap();
    assert!(
        first("A1") < first("A2") && first("A2") < first("A3"),
        "A's order: {ok:?}"
    );
    // Nothing dead-lettered, every A handled; B1 may run again (at-least-once: the crash came
    // before its commit).
    for id in ["A1", "A2", "A3"] {
        assert_eq!(ok.iter().filter(|s| *s == id).count(), 1, "{id}: {ok:?}");
    }
    let dlq = fetch_from(&client, &format!("{prefix}parked.dlq"), 0, 0, 100).await;
    assert!(dlq.is_empty(), "dead-lettered: {}", dlq.len());
}

#[subscriber(
    "bjobs",
    group_id = "bjobs",
    auto_offset_reset = "earliest",
    batch = true,
    max_records = 10,
    batch_timeout_ms = 300,
    retry = 0,
    retry_topics = ["bjobs.retry.1s"],
    dlq = "bjobs.dlq"
)]
#[publisher("bjobs-done")]
async fn work_in_batches(jobs: Vec<Job>) -> Result<Vec<String>, String> {
    // A batch fails as a whole when one of its jobs fails: each job's run counts the batch's.
    let mut runs = RUNS.lock().unwrap();
    let failures = |job: &Job| {
        let earlier = runs
            .iter()
            .filter(|(t, id, ok, _)| *t == job.test && *id == job.id && !ok);
        earlier.count() as u32
    };
    let ok = jobs.iter().all(|job| failures(job) >= job.fails);
    for job in &jobs {
        runs.push((job.test.clone(), job.id.clone(), ok, Instant::now()));
    }
    if ok {
        Ok(jobs.into_iter().map(|job| job.id).collect())
    } else {
        Err("a job of the batch failed".into())
    }
}

/// A batch handler: the failed batch's messages move to the retry topic together and are
/// handled there in their order; a later message of a key on the retry path follows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_move_to_the_retry_topic_and_keep_each_keys_order() {
    let prefix = unique_prefix("retrybatch");
    let test = prefix.clone();
    let t = test.as_str();
    let client = raw_client().await;
    let topic = format!("{prefix}bjobs");
    create_topic(&client, &topic, 1).await;
    produce(
        &client,
        &topic,
        0,
        vec![
            job(t, "A", "A1", 1),
            job(t, "B", "B1", 0),
            job(t, "A", "A2", 0),
        ],
    )
    .await;
    let running = start(app(routes![work_in_batches], &prefix)).await;
    // The first batch failed: its three messages wait on the retry topic.
    read(&client, &format!("{prefix}bjobs.retry.1s"), 3).await;
    produce(
        &client,
        &topic,
        0,
        vec![job(t, "A", "A3", 0), job(t, "C", "C1", 0)],
    )
    .await;
    read(&client, &format!("{prefix}bjobs-done"), 5).await;
    running.stop().await.unwrap();
    let ok = successes(t);
    let position = |id: &str| ok.iter().position(|s| s == id).unwrap();
    assert!(
        position("A1") < position("A2") && position("A2") < position("A3"),
        "{ok:?}"
    );
    for id in ["A1", "A2", "A3", "B1", "C1"] {
        assert_eq!(ok.iter().filter(|s| *s == id).count(), 1, "{id}: {ok:?}");
    }
    // A3 followed A1 and A2 onto the retry topic; C1 did not wait.
    let retried = read(&client, &format!("{prefix}bjobs.retry.1s"), 4).await;
    let ids: Vec<String> = retried[&0]
        .iter()
        .map(|r| header(r, dlq_header::ORIGINAL_OFFSET).unwrap())
        .collect();
    assert_eq!(ids, ["0", "1", "2", "3"]);
    assert!(position("C1") < position("A1"), "{ok:?}");
}
