//! Middleware: code that runs around every message's handling and every publish, registered
//! once on the app (`FastStream::middleware`), or on one handler (`middleware = [..]` on its
//! `#[subscriber]`), instead of written into each handler.
//!
//! A middleware sees the message before its handler runs (and may refuse it: the refusal is a
//! [`Failure`] handled by the route's failure policy, so a refused message is skipped,
//! dead-lettered or stops the partition as the failure says), sees the outcome after, and may
//! change every outgoing message: returned outputs, dead-letter copies and `Publisher`
//! publishes. With none registered, nothing runs and nothing is allocated.

use std::sync::Arc;

use crate::message::{Message, OutgoingMessage};
use crate::outcome::Outcome;
use crate::policy::Failure;
use crate::publish::{BoxFuture, Publish};
use crate::Result;

/// Runs around message handling and publishing. Every method has a default that does nothing,
/// so a middleware implements only what it needs.
///
/// ```
/// use faststream_core::{Failure, Message, Middleware, OutgoingMessage, BoxFuture};
///
/// /// Refuses messages without a tenant header; stamps every output with this service's name.
/// struct Tenancy;
///
/// impl Middleware for Tenancy {
///     fn before<'a>(&'a self, msg: &'a Message) -> BoxFuture<'a, Result<(), Failure>> {
///         let ok = msg.headers.get("x-tenant").is_some();
///         Box::pin(async move {
///             if ok { Ok(()) } else { Err(Failure::dead_letter("no x-tenant header")) }
///         })
///     }
///
///     fn publish(&self, out: &mut OutgoingMessage) {
///         out.headers.insert("x-produced-by", "billing");
///     }
/// }
/// ```
pub trait Middleware: Send + Sync + 'static {
    /// When the message's `message` span (or a batch's `batch` span) is created, before it is
    /// entered: link it to a trace the message carries (see `TraceContext`, feature
    /// `opentelemetry`).
    fn on_span(&self, msg: &Message, span: &tracing::Span) {
        let _ = (msg, span);
    }

    /// Before the handler: `Err` refuses the message (the handler does not run; the failure
    /// policy applies to the `Failure`, error kind `rejected`).
    fn before<'a>(&'a self, msg: &'a Message) -> BoxFuture<'a, Result<(), Failure>> {
        let _ = msg;
        Box::pin(async { Ok(()) })
    }

    /// After the handler (and retries), with the outcome; outputs are not yet published.
    fn after(&self, msg: &Message, outcome: &Outcome) {
        let _ = (msg, outcome);
    }

    /// On every message about to be published (returned outputs, dead-letter copies, and
    /// `Publisher` publishes): add headers, change the key.
    fn publish(&self, out: &mut OutgoingMessage) {
        let _ = out;
    }
}

/// The app-wide middlewares, in registration order.
#[derive(Clone, Default)]
pub(crate) struct Middlewares(pub(crate) Vec<Arc<dyn Middleware>>);

impl std::fmt::Debug for Middlewares {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Middlewares({})", self.0.len())
    }
}

impl Middlewares {
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// What runs around a route's messages: the app's middlewares, then the route's `own`;
    /// `None` when there are none (nothing runs). Borrows both lists: nothing is allocated.
    pub(crate) fn chain(&self, own: &'static [&'static dyn Middleware]) -> Option<Chain<'_>> {
        if self.0.is_empty() && own.is_empty() {
            return None;
        }
        Some(Chain { app: &self.0, own })
    }

    pub(crate) fn publish(&self, out: &mut OutgoingMessage) {
        for m in &self.0 {
            m.publish(out);
        }
    }
}

/// The middlewares of one route, outermost first (`before`, `publish` and `on_span` run in
/// that order, `after` in reverse, as layers do).
pub(crate) struct Chain<'a> {
    app: &'a [Arc<dyn Middleware>],
    own: &'static [&'static dyn Middleware],
}

impl Chain<'_> {
    fn iter(&self) -> impl DoubleEndedIterator<Item = &dyn Middleware> {
        self.app
            .iter()
            .map(|m| &**m as &dyn Middleware)
            .chain(self.own.iter().copied())
    }

    pub(crate) fn on_span(&self, msg: &Message, span: &tracing::Span) {
        for m in self.iter() {
            m.on_span(msg, span);
        }
    }

    pub(crate) async fn before(&self, msg: &Message) -> Result<(), Failure> {
        for m in self.iter() {
            m.before(msg).await?;
        }
        Ok(())
    }

    pub(crate) fn after(&self, msg: &Message, outcome: &mut Outcome) {
        for m in self.iter().rev() {
            m.after(msg, outcome);
        }
        let outputs = match outcome {
            Outcome::Done(out) | Outcome::Unacked(out) => out,
            Outcome::DeadLettered { dlq: copy, .. } | Outcome::Deferred { copy, .. } => {
                self.publish(copy);
                return;
            }
            _ => return,
        };
        for out in outputs {
            self.publish(out);
        }
    }

    pub(crate) fn publish(&self, out: &mut OutgoingMessage) {
        for m in self.iter() {
            m.publish(out);
        }
    }
}

/// A route's own middlewares (`middleware = [..]` on its `#[subscriber]`).
#[derive(Clone, Copy)]
pub(crate) struct RouteMiddlewares(pub(crate) &'static [&'static dyn Middleware]);

impl std::fmt::Debug for RouteMiddlewares {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RouteMiddlewares({})", self.0.len())
    }
}

/// A `Publish` sink that passes every message through the middlewares first.
pub(crate) struct PublishThrough {
    pub(crate) inner: Arc<dyn Publish>,
    pub(crate) middlewares: Middlewares,
}

impl Publish for PublishThrough {
    fn send(&self, mut msg: OutgoingMessage) -> BoxFuture<'_, crate::Result<()>> {
        self.middlewares.publish(&mut msg);
        self.inner.send(msg)
    }

    fn request(
        &self,
        mut msg: OutgoingMessage,
        timeout: std::time::Duration,
    ) -> BoxFuture<'_, crate::Result<Message>> {
        self.middlewares.publish(&mut msg);
        self.inner.request(msg, timeout)
    }
}
