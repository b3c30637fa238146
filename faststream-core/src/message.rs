//! The message model: what a handler receives and what the runtime publishes.

use std::borrow::Cow;
use std::sync::Arc;

use bytes::Bytes;

/// Header names shared with Python FastStream, so services written with either can talk.
pub mod header {
    /// MIME type of the payload (`application/json`, `text/plain`; absent for raw bytes).
    pub const CONTENT_TYPE: &str = "content-type";
    /// Carried from an incoming message to every message published while handling it.
    pub const CORRELATION_ID: &str = "correlation_id";
    /// Topic a requester expects the reply on.
    pub const REPLY_TO: &str = "reply_to";
}

/// Content types the codecs produce and understand.
pub mod content_type {
    /// JSON payloads.
    pub const JSON: &str = "application/json";
    /// UTF-8 text payloads.
    pub const TEXT: &str = "text/plain";
}

/// Kafka record headers, in the order they were set.
///
/// One value per name: setting a name again replaces its value (the Kafka transport keeps the
/// last value of duplicate names too). A small vector, since records carry few headers; names
/// given as `&'static str` are stored without allocating.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Headers(Vec<(HeaderName, Bytes)>);

/// A header name: static or owned.
pub type HeaderName = Cow<'static, str>;

impl Headers {
    /// No headers.
    pub fn new() -> Self {
        Self::default()
    }

    /// The raw value of header `name`.
    pub fn get(&self, name: &str) -> Option<&Bytes> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v)
    }

    /// The value of header `name` if it is present and valid UTF-8.
    pub fn get_str(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// Sets header `name`, replacing any previous value.
    pub fn insert(&mut self, name: impl Into<HeaderName>, value: impl Into<Bytes>) {
        let name = name.into();
        let value = value.into();
        match self.0.iter_mut().find(|(k, _)| *k == name) {
            Some(slot) => slot.1 = value,
            None => self.0.push((name, value)),
        }
    }

    /// Removes header `name`, returning its value.
    pub fn remove(&mut self, name: &str) -> Option<Bytes> {
        let i = self.0.iter().position(|(k, _)| k == name)?;
        Some(self.0.remove(i).1)
    }

    /// Iterates over `(name, value)` in the order they were set.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Bytes)> {
        self.0.iter().map(|(k, v)| (&**k, v))
    }

    /// Makes room for exactly `additional` more headers (a vector grown one push at a time
    /// would take room for four: every output message carries its headers while it waits for
    /// the broker).
    pub(crate) fn reserve_exact(&mut self, additional: usize) {
        self.0.reserve_exact(additional);
    }

    /// Number of headers.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no headers.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Adds every header of `other`, replacing values of the same name.
    pub fn extend(&mut self, other: Headers) {
        for (k, v) in other.0 {
            self.insert(k, v);
        }
    }
}

impl<K: Into<HeaderName>, V: Into<Bytes>> FromIterator<(K, V)> for Headers {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut headers = Headers::new();
        for (k, v) in iter {
            headers.insert(k, v);
        }
        headers
    }
}

impl IntoIterator for Headers {
    type Item = (HeaderName, Bytes);
    type IntoIter = std::vec::IntoIter<(HeaderName, Bytes)>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

/// One consumed record, as a handler sees it.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Message {
    /// Topic it was read from.
    pub topic: Arc<str>,
    /// Partition it was read from.
    pub partition: i32,
    /// Offset within the partition.
    pub offset: i64,
    /// Record key.
    pub key: Option<Bytes>,
    /// Record headers.
    pub headers: Headers,
    /// Record timestamp, milliseconds since the Unix epoch.
    pub timestamp: Option<i64>,
    /// Record value; `None` is a tombstone (null value).
    pub payload: Option<Bytes>,
}

impl Message {
    /// A message on partition 0 at offset 0, for tests and custom transports.
    pub fn new(topic: impl AsRef<str>, payload: impl Into<Bytes>) -> Self {
        Self {
            topic: Arc::from(topic.as_ref()),
            partition: 0,
            offset: 0,
            key: None,
            headers: Headers::new(),
            timestamp: None,
            payload: Some(payload.into()),
        }
    }

    /// Sets the position (partition and offset).
    pub fn at(mut self, partition: i32, offset: i64) -> Self {
        self.partition = partition;
        self.offset = offset;
        self
    }

    /// Sets the key.
    pub fn with_key(mut self, key: impl Into<Bytes>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Adds a header.
    pub fn with_header(mut self, name: impl Into<HeaderName>, value: impl Into<Bytes>) -> Self {
        self.headers.insert(name, value);
        self
    }

    /// Sets the timestamp (milliseconds since the Unix epoch).
    pub fn with_timestamp(mut self, millis: i64) -> Self {
        self.timestamp = Some(millis);
        self
    }

    /// The `content-type` header, if any.
    pub fn content_type(&self) -> Option<&str> {
        self.headers.get_str(header::CONTENT_TYPE)
    }

    /// The `correlation_id` header, if any.
    pub fn correlation_id(&self) -> Option<&str> {
        self.headers.get_str(header::CORRELATION_ID)
    }

    /// The payload as UTF-8 text, if it is that.
    pub fn text(&self) -> Option<&str> {
        self.payload
            .as_deref()
            .and_then(|p| std::str::from_utf8(p).ok())
    }
}

/// A record to publish.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct OutgoingMessage {
    /// Target topic (shared: the outputs of one route share their topic names).
    pub topic: Arc<str>,
    /// Target partition; `None` lets the transport's partitioner choose (by key hash).
    pub partition: Option<i32>,
    /// Record key.
    pub key: Option<Bytes>,
    /// Record headers.
    pub headers: Headers,
    /// Record value; `None` publishes a tombstone.
    pub payload: Option<Bytes>,
    /// Timestamp in milliseconds since the epoch; `None` means now.
    pub timestamp: Option<i64>,
}

impl OutgoingMessage {
    /// A message with `payload` for `topic`, with no key and no headers.
    pub fn new(topic: impl AsRef<str>, payload: impl Into<Bytes>) -> Self {
        Self {
            topic: Arc::from(topic.as_ref()),
            partition: None,
            key: None,
            headers: Headers::new(),
            payload: Some(payload.into()),
            timestamp: None,
        }
    }

    /// Sets the key.
    pub fn key(mut self, key: impl Into<Bytes>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Adds a header.
    pub fn header(mut self, name: impl Into<HeaderName>, value: impl Into<Bytes>) -> Self {
        self.headers.insert(name, value);
        self
    }

    /// Sends to this partition instead of letting the partitioner choose.
    pub fn partition(mut self, partition: i32) -> Self {
        self.partition = Some(partition);
        self
    }

    /// Sets the timestamp (milliseconds since the Unix epoch).
    pub fn timestamp(mut self, millis: i64) -> Self {
        self.timestamp = Some(millis);
        self
    }

    /// Rough size in bytes, for batching decisions.
    pub fn approximate_size(&self) -> usize {
        self.key.as_ref().map_or(0, Bytes::len)
            + self.payload.as_ref().map_or(0, Bytes::len)
            + self
                .headers
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
    }
}
