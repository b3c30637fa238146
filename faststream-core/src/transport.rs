//! The seam between the pipeline and a broker: [`Transport`], plus the [`Publisher`] handle and
//! the [`Shutdown`] signal.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::codec::IntoPayload;
use crate::handler::Pipeline;
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

/// A broker the app runs on: the Kafka transport, or your own.
pub trait Transport: Publish {
    /// Consumes every subscription of `pipeline`'s routes, runs each message through the
    /// pipeline and publishes its outputs, until `shutdown` fires; then stops fetching, finishes
    /// in-flight messages, flushes and returns.
    fn serve(&self, pipeline: Arc<Pipeline>, shutdown: Shutdown) -> BoxFuture<'_, Result<()>>;

    /// Where it connects, for the AsyncAPI document's `servers` (none: `localhost:9092`).
    fn server(&self) -> Option<crate::asyncapi::Server> {
        None
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

/// Fires once when the app should stop. Clones observe the same signal.
///
/// A trigger may carry a deadline: the moment by which the app wants everything stopped (its
/// shutdown timeout). Transports bound their own draining by it, so they still commit what is
/// done and leave their groups before the app gives up on them.
#[derive(Clone, Debug)]
pub struct Shutdown(watch::Receiver<Option<Option<Instant>>>);

// The watched state: `None` until triggered, then `Some(deadline)`.

/// Triggers a [`Shutdown`].
#[derive(Debug)]
pub struct ShutdownTrigger(watch::Sender<Option<Option<Instant>>>);

impl Shutdown {
    /// A signal and its trigger.
    pub fn new() -> (ShutdownTrigger, Shutdown) {
        let (tx, rx) = watch::channel(None);
        (ShutdownTrigger(tx), Shutdown(rx))
    }

    /// Whether shutdown was requested.
    pub fn is_triggered(&self) -> bool {
        self.0.borrow().is_some()
    }

    /// The deadline the trigger gave, if any (only meaningful once triggered).
    pub fn deadline(&self) -> Option<Instant> {
        self.0.borrow().flatten()
    }

    /// Resolves when shutdown is requested (or the trigger is dropped).
    pub async fn wait(&mut self) {
        let _ = self.0.wait_for(|stop| stop.is_some()).await;
    }
}

impl ShutdownTrigger {
    /// Requests shutdown, without a deadline.
    pub fn trigger(&self) {
        self.fire(None);
    }

    /// Requests shutdown, to be completed by `deadline`.
    pub fn trigger_by(&self, deadline: Instant) {
        self.fire(Some(deadline));
    }

    /// The first request wins; later ones change nothing.
    fn fire(&self, deadline: Option<Instant>) {
        self.0.send_if_modified(|state| {
            let first = state.is_none();
            if first {
                *state = Some(deadline);
            }
            first
        });
    }
}
