//! The seed service: consumes `in_topic`, publishes a greeting to `out-topic`.
//!
//! It runs in the consumer group `hello`: start it twice and the two share `in_topic`'s
//! partitions; stop and restart it and it resumes after the last committed message.
//!
//! ```sh
//! scripts/demo                                  # local broker, this service, sample messages
//! KAFKA_BOOTSTRAP=broker:9092 cargo run --example hello
//! # a secured cluster, configured by the environment only:
//! KAFKA_BOOTSTRAP=broker:9093 KAFKA_SECURITY_PROTOCOL=SASL_SSL KAFKA_SASL_MECHANISM=SCRAM-SHA-512 \
//!   KAFKA_SASL_USERNAME=svc KAFKA_SASL_PASSWORD=... cargo run --example hello
//! # Prometheus metrics and health probes on one address:
//! METRICS_ADDR=127.0.0.1:9000 cargo run --example hello --features prometheus
//! ```

use faststream::kafka::KafkaBroker;
use faststream::{publisher, subscriber, FastStream};

/// A well-kept allocator: a service like this one allocates many small, short-lived
/// buffers (see the guide's performance page, docs/guide/performance.md); the library sets no allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[subscriber("in_topic", group_id = "hello")]
#[publisher("out-topic")]
async fn handle_msg(user: String, user_id: i64) -> String {
    format!("User: {user_id} - {user} registered")
}

#[tokio::main]
async fn main() -> faststream::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,rskafka=warn".into()),
        )
        .init();
    // KAFKA_BOOTSTRAP, and KAFKA_SECURITY_PROTOCOL, KAFKA_SASL_* and KAFKA_SSL_* for a
    // secured cluster.
    let broker = KafkaBroker::from_env()?;
    let app = FastStream::new(broker);
    // With the `prometheus` feature: /metrics, /health/live and /health/ready on METRICS_ADDR.
    #[cfg(feature = "prometheus")]
    let app = match std::env::var("METRICS_ADDR") {
        Ok(addr) => app.prometheus(addr.parse().expect("METRICS_ADDR is an ip:port address")),
        Err(_) => app,
    };
    app.run().await
}
