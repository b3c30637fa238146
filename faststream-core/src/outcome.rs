//! What handling a message comes to: the [`Reply`] a handler returns (a value to publish, or
//! nothing), and the [`Outcome`] of a message (or [`BatchOutcome`] of a batch) after the
//! failure policy: done with outputs, dead-lettered, skipped, interrupted or stopped.

use bytes::Bytes;
use serde::Serialize;

use crate::error::HandlerError;
use crate::message::{content_type, HeaderName, Headers, OutgoingMessage};

/// The encoded return value of a handler, before it is addressed to the publisher topics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reply {
    body: Option<ReplyBody>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ReplyBody {
    pub(crate) payload: Bytes,
    pub(crate) content_type: Option<&'static str>,
    pub(crate) meta: ResponseMeta,
}

impl Reply {
    /// Nothing to publish.
    pub fn none() -> Self {
        Self { body: None }
    }

    /// A `text/plain` reply (`String` and `&'static str` convert without copying).
    pub fn text(text: impl Into<Bytes>) -> Self {
        Self::with(text.into(), Some(content_type::TEXT))
    }

    /// A raw bytes reply (no content type).
    pub fn bytes(bytes: impl Into<Bytes>) -> Self {
        Self::with(bytes.into(), None)
    }

    /// An `application/json` reply.
    pub fn json<T: Serialize + ?Sized>(value: &T) -> Result<Self, HandlerError> {
        serde_json::to_vec(value)
            .map(|v| Self::with(Bytes::from(v), Some(content_type::JSON)))
            .map_err(|e| HandlerError::Encode(e.to_string()))
    }

    fn with(payload: Bytes, content_type: Option<&'static str>) -> Self {
        Self {
            body: Some(ReplyBody {
                payload,
                content_type,
                meta: ResponseMeta::default(),
            }),
        }
    }

    /// Applies the key, headers and partition of a [`Response`].
    pub fn with_meta(mut self, meta: ResponseMeta) -> Self {
        if let Some(body) = &mut self.body {
            body.meta = meta;
        }
        self
    }

    /// The payload, if there is something to publish.
    pub fn payload(&self) -> Option<&Bytes> {
        self.body.as_ref().map(|b| &b.payload)
    }

    pub(crate) fn into_body(self) -> Option<ReplyBody> {
        self.body
    }
}

/// Key, headers and partition for the outgoing message of a [`Response`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResponseMeta {
    pub(crate) key: Option<Bytes>,
    pub(crate) headers: Headers,
    pub(crate) partition: Option<i32>,
}

/// A return value with the key, headers or partition of the outgoing message set by the handler.
///
/// ```
/// use faststream_core::Response;
/// let r = Response::new("done".to_string()).key("user-1").header("x-source", "billing");
/// # let _ = r;
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response<T> {
    body: T,
    meta: ResponseMeta,
}

impl<T> Response<T> {
    /// Wraps a body (encoded by the usual rules: text, bytes or JSON).
    pub fn new(body: T) -> Self {
        Self {
            body,
            meta: ResponseMeta::default(),
        }
    }

    /// Sets the key of the outgoing message (by default the incoming message's key is kept).
    pub fn key(mut self, key: impl Into<Bytes>) -> Self {
        self.meta.key = Some(key.into());
        self
    }

    /// Adds a header to the outgoing message.
    pub fn header(mut self, name: impl Into<HeaderName>, value: impl Into<Bytes>) -> Self {
        self.meta.headers.insert(name, value);
        self
    }

    /// Sends to this partition instead of the partitioner's choice.
    pub fn partition(mut self, partition: i32) -> Self {
        self.meta.partition = Some(partition);
        self
    }

    /// Splits into body and metadata (used by generated code).
    pub fn into_parts(self) -> (T, ResponseMeta) {
        (self.body, self.meta)
    }
}

/// The result of handling one batch (after any retries).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchOutcome {
    /// What the handler returned, addressed to the publisher topics (nothing if it failed).
    pub outputs: Vec<OutgoingMessage>,
    /// The messages that were not handled as part of a successful batch, each with its own
    /// outcome, in offset order: undecodable or refused ones, or every message of a batch that
    /// failed (dead-lettered one by one with the batch's error, skipped, stopped, or
    /// interrupted while waiting for a retry).
    pub failed: Vec<(i64, Outcome)>,
}

impl BatchOutcome {
    /// A batch of one as the outcome of its message.
    pub(crate) fn into_single(mut self) -> Outcome {
        match self.failed.pop() {
            Some((_, failed)) => failed,
            None => Outcome::Done(self.outputs),
        }
    }
}

/// The result of handling one message (after any retries).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// The handler finished; these messages are to be published (possibly none). The message
    /// is done once they are acknowledged.
    Done(Vec<OutgoingMessage>),
    /// `ack = "manual"` and the handler neither acked nor nacked: its outputs are published,
    /// but the message is not done (it holds back commits of its partition).
    Unacked(Vec<OutgoingMessage>),
    /// It failed; this copy of it goes to the dead-letter topic, after which it is done.
    DeadLettered {
        /// The last error.
        error: HandlerError,
        /// How many times the handler ran.
        attempts: u32,
        /// The message for the dead-letter topic.
        dlq: Box<OutgoingMessage>,
    },
    /// It goes to a retry topic: it failed and its in-place retries ran out, or it follows an
    /// earlier message with its key there (then `error` is `None`). It is done once the copy is
    /// acknowledged.
    Deferred {
        /// The last error (`None` for a message that follows another).
        error: Option<HandlerError>,
        /// How many times the handler ran.
        attempts: u32,
        /// The copy for the retry topic.
        copy: Box<OutgoingMessage>,
    },
    /// It failed and was logged; it counts as done.
    Skipped {
        /// The last error.
        error: HandlerError,
        /// How many times the handler ran.
        attempts: u32,
    },
    /// It failed and was waiting to be retried when the consumer was told to stop (shutdown or
    /// a revoked partition): it is not done, so it is consumed again later.
    Interrupted {
        /// The last error.
        error: HandlerError,
        /// How many times the handler ran.
        attempts: u32,
    },
    /// It failed and the partition's consumer must stop without counting it as done.
    Stopped {
        /// The last error.
        error: HandlerError,
        /// How many times the handler ran.
        attempts: u32,
    },
}

impl Outcome {
    /// The error, if the message failed.
    pub fn error(&self) -> Option<&HandlerError> {
        match self {
            Outcome::Done(_) | Outcome::Unacked(_) => None,
            Outcome::Deferred { error, .. } => error.as_ref(),
            Outcome::DeadLettered { error, .. }
            | Outcome::Skipped { error, .. }
            | Outcome::Interrupted { error, .. }
            | Outcome::Stopped { error, .. } => Some(error),
        }
    }

    /// A short name of the outcome, as logs and metrics write it.
    pub fn name(&self) -> &'static str {
        match self {
            Outcome::Done(_) => "ok",
            Outcome::Unacked(_) => "unacked",
            Outcome::DeadLettered { .. } => "dead_lettered",
            Outcome::Deferred { .. } => "deferred",
            Outcome::Skipped { .. } => "skipped",
            Outcome::Interrupted { .. } => "interrupted",
            Outcome::Stopped { .. } => "stopped",
        }
    }

    /// The messages to publish: outputs, or the dead-letter or retry-topic copy.
    pub fn into_outputs(self) -> Vec<OutgoingMessage> {
        match self {
            Outcome::Done(out) | Outcome::Unacked(out) => out,
            Outcome::DeadLettered { dlq, .. } => vec![*dlq],
            Outcome::Deferred { copy, .. } => vec![*copy],
            Outcome::Skipped { .. } | Outcome::Interrupted { .. } | Outcome::Stopped { .. } => {
                Vec::new()
            }
        }
    }
}
