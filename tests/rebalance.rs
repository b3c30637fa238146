//! Rebalances that stop nothing (Apache Kafka): the consumer group protocol of KIP-848
//! (`group_protocol = "consumer"`) against the classic protocol's eager rebalances. Three
//! members relay a topic of 12 partitions written to all the time; a fourth joins, then one
//! leaves. Per input partition the test measures the largest gap between two consecutive
//! outputs: under the consumer protocol a partition that did not move never pauses.
//!
//! KIP-848 is Kafka's: under the Tansu suite these tests start a Kafka node of their own.

mod common;
#[path = "support/rebalance.rs"]
mod scenario;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use faststream::extract::{Partition, State};
use faststream::kafka::{GroupProtocol, KafkaBroker};
use faststream::{publisher, routes, subscriber, FastStream};
use scenario::*;

/// Runs the scenario under `protocol` and prints what it saw, partition by partition.
async fn moves(protocol: &str, route: Vec<&'static faststream::runtime::RouteDef>) -> Moves {
    let moves = join_and_leave(protocol, route).await;
    println!(
        "{protocol}: {} inputs, {} duplicated; the joining member's first output after {:?}; largest gap: unmoved partitions {:?}, moved partitions {:?}",
        moves.written,
        moves.duplicates.len(),
        moves.first_output,
        moves.largest_gap(true),
        moves.largest_gap(false),
    );
    for (p, run) in &moves.runs {
        println!(
            "{protocol}: partition {p:2}: owners {:?}, largest output gap {:?}",
            run.owners, run.largest_gap
        );
    }
    moves
}

/// Under the consumer group protocol a member joining or leaving moves only the partitions
/// that change owner: every other partition goes on with no gap longer than a second, nothing
/// is lost, and (revoked partitions commit before they are released) nothing is repeated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_the_consumer_protocol_partitions_that_stay_never_pause() {
    only_moved_partitions_paused(&moves("consumer", routes![consumer_protocol]).await);
}

/// The same on the classic protocol with the `cooperative-sticky` assignor (KIP-429).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_cooperative_sticky_partitions_that_stay_never_pause() {
    only_moved_partitions_paused(&moves("cooperative", routes![cooperative]).await);
}

fn only_moved_partitions_paused(moves: &Moves) {
    let runs = &moves.runs;
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
        moves.duplicates.is_empty(),
        "graceful moves commit before the partition is released: {:?}",
        moves.duplicates
    );
}

/// The same moves under the classic protocol's eager rebalances, for comparison: nothing is
/// lost, and every partition pauses at each rebalance (printed, not asserted: how long
/// depends on the members' timings).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_eager_rebalances_every_partition_pauses() {
    let moves = moves("eager", routes![eager]).await;
    let gaps = moves.runs.values().map(|r| r.largest_gap);
    let (least, most) = (gaps.clone().min().unwrap(), gaps.max().unwrap());
    println!("eager: largest output gap per partition between {least:?} and {most:?}");
    assert!(moves.duplicates.is_empty(), "{:?}", moves.duplicates);
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
    let client = Arc::new(client_at(&addr).await);
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
    let client = client_at(&addr).await;
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
    let client = client_at(&addr).await;
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
    let client = client_at(&addr).await;
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
