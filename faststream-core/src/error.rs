//! Errors: of the framework ([`Error`]) and of one message's handling ([`HandlerError`]).

use std::fmt;

/// Errors of the framework: startup, transport, publishing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Startup validation found problems with the routes; every one is listed.
    #[error("{}", RouteProblem::list(.0))]
    InvalidRoutes(Vec<RouteProblem>),

    /// A value could not be encoded into a payload.
    #[error("cannot encode payload for topic {topic:?}: {reason}")]
    Encode {
        /// Target topic.
        topic: String,
        /// What went wrong.
        reason: String,
    },

    /// The transport failed (connection, protocol, broker error).
    #[error(transparent)]
    Transport(Box<dyn std::error::Error + Send + Sync>),

    /// Graceful shutdown did not finish within the configured timeout.
    #[error("graceful shutdown did not finish within {0:?}; in-flight messages were abandoned (they will be redelivered)")]
    ShutdownTimeout(std::time::Duration),

    /// A lifespan hook failed (`on_startup` failures stop the startup).
    #[error("the {stage} hook #{index} failed: {reason}")]
    Hook {
        /// `on_startup`, `after_startup`, `on_shutdown` or `after_shutdown`.
        stage: &'static str,
        /// Which hook of that stage, from 1, in registration order.
        index: usize,
        /// Its error.
        reason: String,
    },

    /// The health and metrics endpoint could not be served on its address.
    #[error("cannot serve an HTTP endpoint (health, metrics or control) on {addr}: {source}")]
    Endpoint {
        /// The address asked for.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },

    /// The Prometheus recorder could not be installed (another recorder was installed first).
    #[error("cannot install the Prometheus recorder: {0}")]
    Metrics(String),

    /// A command-line flag the app was asked to read was misused.
    #[error("{0}")]
    Usage(String),

    /// A partition's consumer stopped on its own (`on_failure = "stop"`, an output that could
    /// not be delivered), which stops the service rather than leave the partition unread; the
    /// message at the stop's offset is not done, so a restart consumes it again. The Kafka
    /// transport and the in-memory test broker report it the same way.
    #[error("{0}")]
    PartitionStopped(PartitionStop),

    /// The in-memory test broker found a publish loop.
    #[error("publishing to {topic:?} nested {depth} levels deep: a route publishes to a topic it (indirectly) consumes")]
    PublishLoop {
        /// Topic of the publish that was refused.
        topic: String,
        /// Nesting depth reached.
        depth: usize,
    },
}

/// Where and why a partition's consumer stopped (see [`Error::PartitionStopped`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the consumer of {topic}[{partition}] for handler {handler} stopped {}: {reason}; the service stops so that a restart (or another instance) resumes there", at_offset(.offset))]
pub struct PartitionStop {
    /// The handler's path.
    pub handler: String,
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The first offset not done: the message it stopped at (`None` when it stopped before
    /// it had a position, or its task itself failed).
    pub offset: Option<i64>,
    /// Why it stopped.
    pub reason: String,
}

/// Where a consumer stopped, for [`PartitionStop`]'s message.
fn at_offset(offset: &Option<i64>) -> String {
    match offset {
        Some(offset) => format!("at offset {offset}"),
        None => "before reading any message".to_owned(),
    }
}

impl Error {
    /// Wraps a transport's own error.
    pub fn transport(err: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Transport(Box::new(err))
    }
}

/// `Result` with the framework's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why one message could not be turned into handler arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    /// What was being decoded: the body's type, "header `x-id`", ...
    pub target: String,
    /// The JSON path of the offending field (`user_id`, `items[2].price`), when known.
    pub field: Option<String>,
    /// What was wrong.
    pub reason: String,
}

impl DecodeError {
    /// A decode error with no field path.
    pub fn new(target: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            target: target.into(),
            field: None,
            reason: reason.into(),
        }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot decode {}", self.target)?;
        if let Some(field) = &self.field {
            write!(f, ": field `{field}`")?;
        }
        write!(f, ": {}", self.reason)
    }
}

impl std::error::Error for DecodeError {}

/// Why handling one message failed. Its [`source`](std::error::Error::source) is the error a
/// handler's [`Failure`](crate::Failure) was made from (with `?`, or `Failure::with_source`),
/// or the [`DecodeError`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HandlerError {
    /// The message could not be decoded into the handler's arguments.
    Decode(DecodeError),
    /// The handler returned `Err` with an error that is not a [`Failure`](crate::Failure).
    Handler(String),
    /// The handler panicked; the service keeps running.
    Panic(String),
    /// The return value could not be encoded.
    Encode(String),
    /// The handler did not finish within the route's `timeout_ms`.
    Timeout(std::time::Duration),
    /// The handler called `Acker::nack`.
    Nacked,
    /// The handler returned a [`Failure`](crate::Failure) choosing what happens next.
    Rejected(crate::policy::Failure),
    /// The transport could not read the record (a corrupt or unsupported record batch); the
    /// handler never ran.
    Fetch(String),
    /// An output of the message was refused for good by the broker (or not delivered within
    /// the delivery timeout); the handler ran, its outputs are incomplete.
    Publish(String),
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandlerError::Decode(e) => e.fmt(f),
            HandlerError::Handler(e) => write!(f, "handler returned an error: {e}"),
            HandlerError::Panic(e) => write!(f, "handler panicked: {e}"),
            HandlerError::Encode(e) => write!(f, "cannot encode the handler's return value: {e}"),
            HandlerError::Timeout(d) => write!(f, "handler did not finish within {d:?}"),
            HandlerError::Nacked => f.write_str("the handler asked for redelivery (nack)"),
            HandlerError::Rejected(e) => write!(f, "handler failed: {e}"),
            HandlerError::Fetch(e) => write!(f, "cannot read the record: {e}"),
            HandlerError::Publish(e) => write!(f, "an output was not delivered: {e}"),
        }
    }
}

impl std::error::Error for HandlerError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            HandlerError::Decode(e) => e.source(),
            HandlerError::Rejected(f) => {
                f.source().map(|e| e as &(dyn std::error::Error + 'static))
            }
            _ => None,
        }
    }
}

impl From<DecodeError> for HandlerError {
    fn from(e: DecodeError) -> Self {
        HandlerError::Decode(e)
    }
}

impl HandlerError {
    /// Converts a handler's `Err` value; a [`Failure`](crate::Failure) keeps its action.
    pub fn from_handler<E: fmt::Display + 'static>(err: E) -> Self {
        match (&err as &dyn std::any::Any).downcast_ref::<crate::policy::Failure>() {
            Some(f) => Self::Rejected(f.clone()),
            None => Self::Handler(err.to_string()),
        }
    }

    /// A short machine-readable name of the error's kind.
    pub fn kind(&self) -> &'static str {
        match self {
            HandlerError::Decode(_) => "decode",
            HandlerError::Handler(_) => "handler",
            HandlerError::Panic(_) => "panic",
            HandlerError::Encode(_) => "encode",
            HandlerError::Timeout(_) => "timeout",
            HandlerError::Nacked => "nack",
            HandlerError::Rejected(_) => "rejected",
            HandlerError::Fetch(_) => "fetch",
            HandlerError::Publish(_) => "publish",
        }
    }
}

/// One problem found by startup validation.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RouteProblem {
    /// No route at all.
    NoRoutes,
    /// Two subscriptions to the same topic in the same consumer group.
    DuplicateSubscription {
        /// The topic.
        topic: String,
        /// The group.
        group: String,
        /// The first handler, `path (file:line)`.
        first: String,
        /// The second handler, `path (file:line)`.
        second: String,
    },
    /// A handler needs a `State<T>` the app was not given.
    MissingState {
        /// The handler, `path (file:line)`.
        handler: String,
        /// The missing state type.
        type_name: &'static str,
    },
    /// A handler publishes to a topic another handler of the binary subscribes to, and the
    /// subscriber's body type does not accept what the publisher returns (checked where both
    /// types have JSON Schemas: the `schemars` feature).
    ContractMismatch {
        /// The topic.
        topic: String,
        /// The publishing handler, `path (file:line)`.
        publisher: String,
        /// The subscribing handler, `path (file:line)`.
        subscriber: String,
        /// What disagrees.
        reason: String,
    },
    /// A handler publishes to the same topic twice.
    DuplicatePublisher {
        /// The handler, `path (file:line)`.
        handler: String,
        /// The topic.
        topic: String,
    },
}

impl fmt::Display for RouteProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RouteProblem::NoRoutes => write!(
                f,
                "no routes found: annotate an `async fn` with #[subscriber(\"topic\")]. If your handlers live in \
                 another crate that nothing in this binary references, the linker may have dropped them: \
                 reference that crate (e.g. `use handlers as _;`) or list routes explicitly with `routes![...]`"
            ),
            RouteProblem::DuplicateSubscription { topic, group, first, second } => write!(
                f,
                "topic {topic:?} is subscribed twice in consumer group {group:?}: by {first} and by {second}; \
                 the group would split its partitions between them. Use distinct group ids"
            ),
            RouteProblem::MissingState { handler, type_name } => write!(
                f,
                "{handler} needs `State<{type_name}>`, but the app has no such state: add `.with_state(...)` with a value of that type"
            ),
            RouteProblem::ContractMismatch { topic, publisher, subscriber, reason } => write!(
                f,
                "topic {topic:?}: {publisher} publishes what {subscriber} cannot read: {reason}"
            ),
            RouteProblem::DuplicatePublisher { handler, topic } => {
                write!(f, "{handler} publishes to {topic:?} twice")
            }
        }
    }
}

impl RouteProblem {
    pub(crate) fn list(problems: &[RouteProblem]) -> String {
        let mut s = format!("{} problem(s) with the routes:", problems.len());
        for p in problems {
            s.push_str("\n  - ");
            s.push_str(&p.to_string());
        }
        s
    }
}
