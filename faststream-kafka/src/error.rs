//! Errors of the Kafka transport.

use std::sync::Arc;
use std::time::Duration;

use kafka_protocol::messages::ApiKey;
use kafka_protocol::ResponseError;

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
    #[error("topic(s) {topics:?} do not exist and the missing-topics policy does not create them; create them, or see `KafkaBrokerBuilder::missing_topics`")]
    MissingTopics {
        /// The missing topics.
        topics: Vec<String>,
    },
    /// TLS or SASL settings that cannot be used (a missing file, a bad certificate, an
    /// unknown mechanism).
    #[error("security settings: {0}")]
    Security(String),
    /// A request got no reply in time.
    #[error(
        "no reply to the request sent to {topic:?} arrived on {reply_topic:?} within {timeout:?}"
    )]
    NoReply {
        /// Where the request went.
        topic: String,
        /// Where the reply was awaited.
        reply_topic: String,
        /// How long it was awaited.
        timeout: Duration,
    },
    /// A topic name Kafka does not accept (after the topic prefix was applied).
    #[error("{0}")]
    InvalidTopic(String),
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
    /// A metadata or administration request failed.
    #[error("Kafka client error on {context}: {source}")]
    Client {
        /// What was being done.
        context: String,
        /// The underlying error (its type is not part of the API).
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A partition consumer stopped on its own (a failure policy with `on_failure = "stop"`, an
    /// output that could not be delivered): the service stops rather than leave the partition
    /// unread. Surfaces as [`faststream_core::Error::PartitionStopped`].
    #[error("{0}")]
    PartitionStopped(faststream_core::PartitionStop),
    /// Another instance joined the group with this service's `group_instance_id`.
    #[error("fenced from group {group:?}: another instance uses group_instance_id {instance_id:?}; each instance needs its own")]
    Fenced {
        /// The group.
        group: String,
        /// The static member id.
        instance_id: String,
    },
    /// The group coordinator refused this member for a reason retrying cannot fix (a setting
    /// outside the broker's limits, a missing ACL, ...).
    #[error("consumer group {group:?}: {reason}")]
    GroupRefused {
        /// The group.
        group: String,
        /// What the coordinator said, and the setting to change.
        reason: String,
    },
    /// A consumer task panicked outside any handler (a bug: please report it).
    #[error("a consumer task crashed: {0}")]
    Crashed(String),
    /// The cluster lacks something a setting needs.
    #[error("{0}")]
    Unsupported(String),
    /// The broker handle was shut down.
    #[error("the producer was shut down")]
    Closed,
}

impl From<KafkaError> for faststream_core::Error {
    fn from(e: KafkaError) -> Self {
        match e {
            // The same error as the in-memory test broker's, whatever the transport.
            KafkaError::PartitionStopped(stop) => faststream_core::Error::PartitionStopped(stop),
            e => faststream_core::Error::transport(e),
        }
    }
}

/// Why a request about one partition failed.
#[derive(Debug, Clone)]
pub(crate) enum FetchError {
    /// Worth retrying once the leader was found again (connection lost, leader moved, the
    /// partition not known yet).
    Retriable(Cause),
    /// The position is outside the partition's log.
    OffsetOutOfRange,
    /// The leader's log diverged from what this reader read (KIP-320: the leader changed and
    /// the new one does not have the last records read; an unclean leader election): the log
    /// the leader has is consistent up to `end_offset`, the end of `epoch` on it.
    Truncated { epoch: i32, end_offset: i64 },
    /// Retrying cannot help (not authorized, unsupported): the partition stops.
    Fatal(Cause),
}

/// What failed in a request about a partition (its text is what the log and a stopped
/// partition's reason say).
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum Cause {
    /// The connection to the broker failed, or could not be opened.
    #[error("{0}")]
    Conn(Arc<ConnError>),
    /// The broker answered with an error code.
    #[error("{what}: {error}")]
    Refused { what: String, error: ResponseError },
    /// The cluster's metadata lists the topic but names no leader for the partition (yet).
    #[error("{what}: no leader in the cluster's metadata")]
    NoLeader { what: String },
    /// The cluster's metadata, looked up again, has no leader for the partition (or no such
    /// partition).
    #[error("{what}: not in the cluster's metadata (or no leader)")]
    NotInMetadata { what: String },
    /// The broker's answer left out a partition the request asked about.
    #[error("partition {partition} of topic {topic:?}: not in the {api} answer")]
    Unanswered {
        topic: Arc<str>,
        partition: i32,
        api: &'static str,
    },
    /// A fetch answer without the partition's end offset.
    #[error("{what}: the fetch answer has no end offset")]
    NoEnd { what: String },
    /// An answer that is not of its request's kind.
    #[error("an answer of another kind than its request")]
    WrongAnswer,
    /// The task of the broker's connections ended (the service is stopping).
    #[error("the connection task of this broker ended")]
    LinkGone,
    /// The configuration names no broker to ask.
    #[error("no bootstrap address")]
    NoBootstrap,
}

impl std::fmt::Display for FetchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FetchError::Retriable(e) | FetchError::Fatal(e) => e.fmt(f),
            FetchError::OffsetOutOfRange => f.write_str("offset out of range"),
            FetchError::Truncated { epoch, end_offset } => write!(
                f,
                "the leader's log diverged from what was read: leader epoch {epoch} ends at offset {end_offset}"
            ),
        }
    }
}

/// Classifies a partition-level error code.
pub(crate) fn partition_error(code: i16, what: impl FnOnce() -> String) -> Result<(), FetchError> {
    let Some(err) = ResponseError::try_from_code(code) else {
        return Ok(());
    };
    let what = what();
    Err(match err {
        ResponseError::OffsetOutOfRange => FetchError::OffsetOutOfRange,
        ResponseError::TopicAuthorizationFailed
        | ResponseError::ClusterAuthorizationFailed
        | ResponseError::UnsupportedVersion
        | ResponseError::UnsupportedCompressionType
        | ResponseError::InvalidRequest => FetchError::Fatal(Cause::Refused { what, error: err }),
        // Leader moves, unknown or offline partitions, storage errors, throttling, ...
        _ => FetchError::Retriable(Cause::Refused { what, error: err }),
    })
}

/// Locks `m`, also after a panic elsewhere (the data stays usable).
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A failure talking to one broker.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnError {
    #[error("I/O error talking to {addr}: {source}")]
    Io {
        addr: String,
        source: std::io::Error,
    },
    #[error("protocol error talking to {addr}: {reason}")]
    Protocol { addr: String, reason: String },
    #[error("{addr} does not support {api:?} in a version this client speaks")]
    Unsupported { addr: String, api: ApiKey },
    #[error("no answer from {addr} within {timeout:?}")]
    Timeout { addr: String, timeout: Duration },
    /// TLS failed: untrusted certificate, wrong name, not a TLS listener, ...
    #[error("TLS with {addr} failed: {reason}")]
    Tls { addr: String, reason: String },
    /// SASL authentication failed (wrong credentials, mechanism not offered).
    #[error("authentication with {addr} failed: {reason}")]
    Auth { addr: String, reason: String },
    /// The settings themselves are unusable (bad certificate files, ...).
    #[error("{0}")]
    Setup(String),
}

impl ConnError {
    /// Whether retrying cannot help (credentials, certificates, settings).
    pub(crate) fn is_fatal(&self) -> bool {
        matches!(
            self,
            ConnError::Tls { .. } | ConnError::Auth { .. } | ConnError::Setup(_)
        )
    }
}

impl From<ConnError> for FetchError {
    fn from(e: ConnError) -> Self {
        match e {
            ConnError::Unsupported { .. } => FetchError::Fatal(Cause::Conn(Arc::new(e))),
            _ => FetchError::Retriable(Cause::Conn(Arc::new(e))),
        }
    }
}
