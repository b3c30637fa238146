//! Memory is bounded by the producers' byte budget, not by what a fetch brings: many small
//! inputs each returning a large output. A test binary of its own, so the peak RSS it reads
//! (VmHWM of this process) is this test's alone.

mod common;

use common::*;
use faststream::{publisher, routes, subscriber};

/// A little under Kafka's default `message.max.bytes` (1 MiB plus 12 bytes), which a 1 MiB
/// value with its record overhead exceeds.
const OUTPUT: usize = 1_000_000;
const INPUTS: usize = 1_500;

#[subscriber("big", auto_offset_reset = "earliest")]
#[publisher("big-out")]
async fn inflate(body: String) -> Vec<u8> {
    vec![body.len() as u8; OUTPUT]
}

/// Peak resident memory of this process, in bytes (Linux).
fn peak_rss() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: usize = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/self/status");
    kb * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_of_one_fetch_do_not_all_sit_in_memory() {
    let prefix = unique_prefix("big");
    let client = raw_client().await;
    let topic = format!("{prefix}big");
    let out = format!("{prefix}big-out");
    create_topic(&client, &topic, 1).await;
    create_topic(&client, &out, 1).await;
    // Small inputs: one fetch holds all of them.
    produce(
        &client,
        &topic,
        0,
        (0..INPUTS)
            .map(|i| record(None, format!("{i}").as_bytes(), &[]))
            .collect(),
    )
    .await;
    let before = peak_rss();
    let running = start(app(routes![inflate], &prefix)).await;
    // Count the outputs by the partition's high watermark (reading them back would itself
    // take the memory this test measures).
    let pc = client
        .partition_client(
            out.clone(),
            0,
            rskafka::client::partition::UnknownTopicHandling::Retry,
        )
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + TIMEOUT * 5;
    loop {
        let (_, high_watermark) = pc.fetch_records(0, 1..2, 100).await.unwrap();
        if high_watermark as usize >= INPUTS {
            assert_eq!(high_watermark as usize, INPUTS);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{high_watermark} of {INPUTS} outputs"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    running.stop().await.unwrap();
    let grown = peak_rss().saturating_sub(before);
    println!(
        "{INPUTS} inputs x {} KB outputs: peak RSS grew by {} MiB",
        OUTPUT / 1000,
        grown >> 20
    );
    // The outputs total 1.5 GB; the default budget is 4 MiB queued per target partition plus
    // the request in flight and the client's copies of it.
    assert!(
        grown < 96 * 1024 * 1024,
        "peak RSS grew by {} MiB",
        grown >> 20
    );
}
