//! A worker in the consumer group `workers`: consumes `jobs`, publishes `jobs-done`. Start
//! several and they share the partitions; stop or kill one and the others take over.
//!
//! ```sh
//! KAFKA_BOOTSTRAP=127.0.0.1:9092 WORKER_NAME=w1 cargo run --example group_worker
//! ```
//!
//! `TOPIC_PREFIX` namespaces its topics and group (the tests run it that way).

use faststream::extract::{Partition, State};
use faststream::kafka::KafkaBroker;
use faststream::{publisher, subscriber, FastStream};

/// A well-kept allocator: a service like this one allocates many small, short-lived
/// buffers (see the guide's performance page, docs/guide/performance.md); the library sets no allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Clone)]
struct Worker(String);

#[subscriber(
    "jobs",
    group_id = "workers",
    auto_offset_reset = "earliest",
    session_timeout_ms = 4000,
    heartbeat_interval_ms = 300,
    commit_interval_ms = 200
)]
#[publisher("jobs-done")]
async fn job(n: u64, worker: State<Worker>, partition: Partition) -> String {
    format!("{n}:{}:{}", worker.0 .0, partition.0)
}

#[tokio::main]
async fn main() -> faststream::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,rskafka=warn".into()),
        )
        .with_ansi(false)
        .init();
    let name = std::env::var("WORKER_NAME").unwrap_or_else(|_| std::process::id().to_string());
    let prefix = std::env::var("TOPIC_PREFIX").unwrap_or_default();
    FastStream::new(KafkaBroker::from_env()?)
        .with_state(Worker(name))
        .topic_prefix(prefix)
        .run()
        .await
}
