//! Publishing: the [`Publish`] sink a transport implements and the [`Publisher`] handle that
//! handlers, hooks and tests publish through.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::codec::IntoPayload;
use crate::message::{Message, OutgoingMessage};
use crate::Result;

/// A boxed `Send` future.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Something messages can be published to.
pub trait Publish: Send + Sync + 'static {
    /// Publishes one message; resolves once the broker acknowledged it.
    fn send(&self, msg: OutgoingMessage) -> BoxFuture<'_, Result<()>>;

    /// Publishes `msg` as a request (FastStream's RPC: a `reply_to` header naming where to
    /// answer, and a `correlation_id`) and waits up to `timeout` for the reply. Transports
    /// without request/reply keep this default, which refuses.
    fn request(&self, msg: OutgoingMessage, timeout: Duration) -> BoxFuture<'_, Result<Message>> {
        let _ = (msg, timeout);
        Box::pin(async {
            Err(crate::Error::Transport(
                "this transport does not support request/reply".into(),
            ))
        })
    }
}

/// The publisher of one attempt of an exactly-once handler: what it publishes is held, and
/// joins the message's outputs (committed in its transaction) when the attempt succeeds; a
/// failed attempt's publishes are dropped. A request goes out at once: its answer is awaited
/// inside the handler.
pub(crate) struct Held {
    inner: Arc<dyn Publish>,
    held: std::sync::Mutex<Vec<OutgoingMessage>>,
}

impl Held {
    /// What the attempt published, in order.
    pub(crate) fn take(&self) -> Vec<OutgoingMessage> {
        std::mem::take(&mut *self.held.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl Publish for Held {
    fn send(&self, msg: OutgoingMessage) -> BoxFuture<'_, Result<()>> {
        self.held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(msg);
        Box::pin(async { Ok(()) })
    }

    fn request(&self, msg: OutgoingMessage, timeout: Duration) -> BoxFuture<'_, Result<Message>> {
        self.inner.request(msg, timeout)
    }
}

/// A cheap handle for publishing from anywhere, including inside handlers (as an extractor).
#[derive(Clone)]
pub struct Publisher(Arc<dyn Publish>);

impl fmt::Debug for Publisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Publisher")
    }
}

impl Publisher {
    /// A handle publishing through `sink`.
    pub fn new(sink: Arc<dyn Publish>) -> Self {
        Self(sink)
    }

    /// The same handle, holding what is published for the message's outputs (see [`Held`]).
    pub(crate) fn holding(&self) -> (Self, Arc<Held>) {
        let held = Arc::new(Held {
            inner: self.0.clone(),
            held: std::sync::Mutex::default(),
        });
        (Self(held.clone()), held)
    }

    /// Publishes `value` (text, bytes, or `Json(..)`) to `topic`, with no key.
    pub async fn publish(&self, value: impl IntoPayload, topic: &str) -> Result<()> {
        let msg = OutgoingMessage::encode(topic, value)?;
        self.send(msg).await
    }

    /// Publishes a fully specified message (key, headers, partition).
    pub async fn send(&self, msg: OutgoingMessage) -> Result<()> {
        self.0.send(msg).await
    }

    /// Sends `value` to `topic` as a request and waits up to `timeout` for the reply: another
    /// service's handler (Rust or Python FastStream) answers to the `reply_to` topic with the
    /// request's `correlation_id`. From inside a handler this calls another service.
    pub async fn request(
        &self,
        value: impl IntoPayload,
        topic: &str,
        timeout: Duration,
    ) -> Result<Message> {
        self.request_message(OutgoingMessage::encode(topic, value)?, timeout)
            .await
    }

    /// [`Publisher::request`] with a fully specified message.
    pub async fn request_message(
        &self,
        msg: OutgoingMessage,
        timeout: Duration,
    ) -> Result<Message> {
        self.0.request(msg, timeout).await
    }
}
