//! Errors of the Kafka transport.

use std::time::Duration;

/// What went wrong talking to Kafka.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KafkaError {
    /// No broker answered within the connect timeout.
    #[error("cannot connect to Kafka at {brokers} within {timeout:?}: {reason}")]
    Connect {
        /// The bootstrap addresses tried.
        brokers: String,
        /// The configured connect timeout.
        timeout: Duration,
        /// The last error seen.
        reason: String,
    },
    /// Subscribed or published topics are missing and topic creation is off.
    #[error("topic(s) {topics:?} do not exist and missing topics are configured as an error; create them or use `missing_topics(MissingTopics::Create {{ .. }})`")]
    MissingTopics {
        /// The missing topics.
        topics: Vec<String>,
    },
    /// A route or message asks for something the cluster does not have (a partition number
    /// beyond the topic's partitions).
    #[error("{0}")]
    InvalidPartition(String),
    /// A published message was not delivered.
    #[error("publish to {topic:?} failed: {reason}")]
    Publish {
        /// Target topic.
        topic: String,
        /// What went wrong.
        reason: String,
    },
    /// An error from the Kafka client.
    #[error("Kafka client error on {context}: {source}")]
    Client {
        /// What was being done.
        context: String,
        /// The client's error.
        source: rskafka::client::error::Error,
    },
    /// Every partition consumer stopped before shutdown was requested (see the error logs).
    #[error("every partition consumer stopped (see the error log: a failure policy with on_failure = \"stop\", or a topic that cannot be published to); the service has nothing left to do")]
    ConsumersStopped,
    /// The broker handle was shut down.
    #[error("the producer was shut down")]
    Closed,
}

impl From<KafkaError> for faststream_core::Error {
    fn from(e: KafkaError) -> Self {
        faststream_core::Error::transport(e)
    }
}
