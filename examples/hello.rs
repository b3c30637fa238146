//! The seed service: consumes `in_topic`, publishes a greeting to `out-topic`.
//!
//! ```sh
//! scripts/demo                                  # local broker, this service, sample messages
//! KAFKA_BOOTSTRAP=broker:9092 cargo run --example hello
//! ```

use faststream::kafka::KafkaBroker;
use faststream::{publisher, subscriber, FastStream};

#[subscriber("in_topic")]
#[publisher("out-topic")]
async fn handle_msg(user: String, user_id: i64) -> String {
    format!("User: {user_id} - {user} registered")
}

#[tokio::main]
async fn main() -> faststream::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let bootstrap = std::env::var("KAFKA_BOOTSTRAP").unwrap_or_else(|_| "localhost:9092".into());
    let broker = KafkaBroker::new(&bootstrap);
    FastStream::new(broker).run().await
}
