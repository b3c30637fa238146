//! How long partitions stand still when a group rebalances: eager, `cooperative-sticky` and
//! the consumer group protocol (KIP-848) side by side, in one run.
//!
//! ```sh
//! scripts/kafka-dev run --kafka -- cargo bench --bench rebalance
//! scripts/kafka-dev run --kafka -- cargo bench --bench rebalance -- --rounds 3
//! ```
//!
//! Each way runs the scenario of `tests/rebalance.rs` (its `tests/support/rebalance.rs`): three
//! members relay a topic of 12 partitions that receives an input on every partition every
//! 20 ms; a fourth member joins, then the first leaves. Printed per way: the time from the
//! fourth member's start to its first output, and the largest gap between two consecutive
//! outputs of a partition that kept its owner and of one that moved (the median over the
//! rounds), with duplicates and inputs. Needs Apache Kafka 4.0 or later (`KAFKA_BOOTSTRAP`;
//! without it a node is started, as the tests do). The members run in this process, with the
//! routes' timings (classic: heartbeat 1 s; consumer protocol: the broker's heartbeat interval).

#[path = "../tests/common/mod.rs"]
mod common;
// The tests use all of it; this benchmark only the scenario.
#[path = "../tests/support/rebalance.rs"]
#[allow(dead_code)]
mod scenario;

use std::time::Duration;

use faststream::routes;
use scenario::*;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let mut rounds = 1;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--rounds" => rounds = args.next().and_then(|r| r.parse().ok()).unwrap_or(1),
            "--bench" => {}
            other => panic!("unknown argument {other}: use --rounds N"),
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let ways = [
        ("eager", routes![eager]),
        ("cooperative-sticky", routes![cooperative]),
        ("consumer protocol", routes![consumer_protocol]),
    ];
    println!(
        "{:<20} {:>14} {:>16} {:>14} {:>11} {:>8}",
        "way", "first output", "gap, unmoved", "gap, moved", "duplicates", "inputs"
    );
    for (name, route) in ways {
        let mut first = Vec::new();
        let mut unmoved = Vec::new();
        let mut moved = Vec::new();
        let mut duplicates = 0;
        let mut inputs = 0;
        for _ in 0..rounds {
            let m = rt.block_on(join_and_leave(
                name.split(' ').next().unwrap(),
                route.clone(),
            ));
            first.push(m.first_output);
            unmoved.push(m.largest_gap(true).unwrap_or_default());
            moved.push(m.largest_gap(false).unwrap_or_default());
            duplicates += m.duplicates.len();
            inputs += m.written;
        }
        println!(
            "{:<20} {:>14} {:>16} {:>14} {:>11} {:>8}",
            name,
            format!("{} ms", median(first).as_millis()),
            format!("{} ms", median(unmoved).as_millis()),
            format!("{} ms", median(moved).as_millis()),
            duplicates,
            inputs
        );
    }
}
