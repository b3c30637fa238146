//! Exactly-once relays in the consumer group `relay`: each input's outputs (the return value,
//! an audit copy published inside the handler, or a dead-letter copy) and its offset are
//! committed in one Kafka transaction, so a `read_committed` reader sees each exactly once,
//! however often the service is killed.
//!
//! ```sh
//! KAFKA_BOOTSTRAP=127.0.0.1:9092 INSTANCE_ID=relay-1 cargo run --example exactly_once
//! ```
//!
//! `TOPIC_PREFIX` namespaces its topics and group; `INSTANCE_ID` is the static member id (and
//! so the transactional id: a restart fences its predecessor); `HANDLER_DELAY_MS` slows each
//! message down (the tests use it to kill the service mid-stream); `GROUP_ASSIGNOR=cooperative-sticky`
//! and `KAFKA_GROUP_PROTOCOL=consumer` choose incremental rebalancing.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use faststream::extract::Publisher;
use faststream::kafka::KafkaBroker;
use faststream::runtime::Assignor;
use faststream::{publisher, subscriber, FastStream};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Where audit copies go (`TOPIC_PREFIX` applies to the routes' topics, not to what handlers
/// publish by name).
static AUDIT: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Numbers whose first attempt failed here (after publishing its audit copy).
static FAILED_ONCE: Mutex<Option<HashSet<u64>>> = Mutex::new(None);

async fn pause() {
    let ms: u64 = std::env::var("HANDLER_DELAY_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if ms > 0 {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
}

/// Relays `n`; publishes an audit copy first. Every 97th number fails its first attempt after
/// that publish (the copy of the failed attempt is dropped with it); every 50th + 7 fails for
/// good and goes to the dead-letter topic.
#[subscriber(
    "eos-in",
    group_id = "relay",
    auto_offset_reset = "earliest",
    exactly_once = true,
    retry = 1,
    retry_backoff_ms = 10,
    dlq = "eos-dlq",
    session_timeout_ms = 6000,
    heartbeat_interval_ms = 300,
    commit_interval_ms = 200
)]
#[publisher("eos-out")]
async fn relay(n: u64, audit: Publisher) -> Result<String, String> {
    pause().await;
    audit
        .publish(format!("audit:{n}"), AUDIT.get().expect("set in main"))
        .await
        .map_err(|e| e.to_string())?;
    if n % 50 == 7 {
        return Err(format!("{n} is refused"));
    }
    if n.is_multiple_of(97)
        && FAILED_ONCE
            .lock()
            .unwrap()
            .get_or_insert_default()
            .insert(n)
    {
        return Err(format!("{n} fails its first attempt"));
    }
    Ok(format!("out:{n}"))
}

/// The same relay with 20 messages of a partition at once (one at a time per key).
#[subscriber(
    "eos-in-keyed",
    group_id = "relay",
    auto_offset_reset = "earliest",
    exactly_once = true,
    concurrency = 20
)]
#[publisher("eos-out-keyed")]
async fn relay_keyed(n: u64) -> String {
    pause().await;
    format!("out:{n}")
}

/// The same relay in batches.
#[subscriber(
    "eos-in-batch",
    group_id = "relay",
    auto_offset_reset = "earliest",
    exactly_once = true,
    batch = true,
    max_records = 50,
    batch_timeout_ms = 20
)]
#[publisher("eos-out-batch")]
async fn relay_batch(ns: Vec<u64>) -> Vec<String> {
    pause().await;
    ns.into_iter().map(|n| format!("out:{n}")).collect()
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
    let prefix = std::env::var("TOPIC_PREFIX").unwrap_or_default();
    AUDIT.get_or_init(|| format!("{prefix}eos-audit"));
    let mut broker = KafkaBroker::builder_from_env()?;
    if let Ok(id) = std::env::var("INSTANCE_ID") {
        broker = broker.group_instance_id(id);
    }
    if std::env::var("GROUP_ASSIGNOR").as_deref() == Ok("cooperative-sticky") {
        broker = broker.assignor(Assignor::CooperativeSticky);
    }
    FastStream::new(broker.build())
        .topic_prefix(prefix)
        .run()
        .await
}
