//! What a handler's return value means: a reply to publish, or nothing.

use bytes::Bytes;
use serde::Serialize;

use crate::error::HandlerError;
use crate::message::{content_type, HeaderName, Headers};

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
