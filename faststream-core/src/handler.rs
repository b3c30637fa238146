//! The handler pipeline: one message in, decode, call, encode, outputs (or an error) out.

use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use crate::error::HandlerError;
use crate::extract::Context;
use crate::message::{header, Message, OutgoingMessage};
use crate::outcome::Reply;
use crate::route::RouteDef;
use crate::transport::BoxFuture;

/// What a generated handler returns.
pub type HandlerResult = Result<Reply, HandlerError>;

/// The type-erased handler the macros generate for each route.
pub type HandlerFn = fn(Message, Context) -> BoxFuture<'static, HandlerResult>;

/// The result of handling one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The handler finished; these messages are to be published (possibly none).
    Done(Vec<OutgoingMessage>),
    /// Decoding, the handler or encoding failed.
    Failed(HandlerError),
}

/// Runs messages through routes. Shared by every transport and the test broker.
#[derive(Debug)]
pub struct Pipeline {
    routes: Vec<&'static RouteDef>,
    ctx: Context,
    prefix: String,
    ready: tokio::sync::watch::Sender<bool>,
}

impl Pipeline {
    /// A pipeline over validated `routes`.
    pub fn new(routes: Vec<&'static RouteDef>, ctx: Context) -> Self {
        Self {
            routes,
            ctx,
            prefix: String::new(),
            ready: tokio::sync::watch::Sender::new(false),
        }
    }

    /// Called by the transport once it consumes every subscription; see [`Pipeline::ready`].
    pub fn mark_ready(&self) {
        self.ready.send_replace(true);
    }

    /// Resolves once the transport said it is consuming every subscription.
    pub fn ready(&self) -> Ready {
        Ready(self.ready.subscribe())
    }

    pub(crate) fn with_ready(mut self, ready: tokio::sync::watch::Sender<bool>) -> Self {
        self.ready = ready;
        self
    }

    /// Prepends `prefix` to every topic the routes subscribe and publish to, and to their
    /// consumer group ids.
    pub fn with_topic_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The real name of a route's topic or group id: the prefix (if any) followed by `name`.
    pub fn topic_name(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// The routes, sorted by handler path.
    pub fn routes(&self) -> &[&'static RouteDef] {
        &self.routes
    }

    /// The context handlers run with.
    pub fn context(&self) -> &Context {
        &self.ctx
    }

    /// Handles `msg` with `route`: decode, call, encode, address the reply to every publisher
    /// topic. A failure is logged with topic, partition, offset and handler, and returned.
    pub async fn handle(&self, route: &RouteDef, mut msg: Message) -> Outcome {
        let correlation_id = match msg.headers.get(header::CORRELATION_ID) {
            Some(id) => id.clone(),
            None => {
                let id = bytes::Bytes::from(new_correlation_id());
                msg.headers.insert(header::CORRELATION_ID, id.clone());
                id
            }
        };
        let topic = msg.topic.clone();
        let (partition, offset) = (msg.partition, msg.offset);
        let key = msg.key.clone();
        let result = CatchUnwind((route.handler)(msg, self.ctx.clone())).await;
        let reply = match result {
            Ok(reply) => reply,
            Err(err) => {
                tracing::error!(
                    handler = route.name(),
                    topic = &*topic,
                    partition,
                    offset,
                    kind = err.kind(),
                    error = %err,
                    "message failed"
                );
                return Outcome::Failed(err);
            }
        };
        let Some(body) = reply.into_body() else {
            return Outcome::Done(Vec::new());
        };
        let mut headers = body.meta.headers;
        if let Some(ct) = body.content_type {
            headers.insert(header::CONTENT_TYPE, ct);
        }
        headers.insert(header::CORRELATION_ID, correlation_id);
        let key = body.meta.key.or(key);
        let outputs = route
            .publishers()
            .iter()
            .map(|topic| OutgoingMessage {
                topic: self.topic_name(topic),
                partition: body.meta.partition,
                key: key.clone(),
                headers: headers.clone(),
                payload: Some(body.payload.clone()),
                timestamp: None,
            })
            .collect();
        Outcome::Done(outputs)
    }
}

/// Waits for the app to be ready: every subscription is being consumed from its start offset.
#[derive(Clone, Debug)]
pub struct Ready(tokio::sync::watch::Receiver<bool>);

impl Ready {
    pub(crate) fn from_sender(tx: &tokio::sync::watch::Sender<bool>) -> Self {
        Ready(tx.subscribe())
    }

    /// Resolves when ready; returns `false` if the app stopped before getting there.
    pub async fn wait(&mut self) -> bool {
        self.0.wait_for(|r| *r).await.is_ok()
    }
}

/// Turns a panic while polling the handler into [`HandlerError::Panic`].
struct CatchUnwind(BoxFuture<'static, HandlerResult>);

impl Future for CatchUnwind {
    type Output = HandlerResult;

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<HandlerResult> {
        let fut = &mut self.0;
        match catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(cx))) {
            Ok(poll) => poll,
            Err(panic) => {
                let msg = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "non-string panic payload".to_owned());
                Poll::Ready(Err(HandlerError::Panic(msg)))
            }
        }
    }
}

/// A random UUID (version 4 layout), without pulling in a UUID crate: a random per-thread
/// base mixed with a counter, hex-encoded by hand (this runs once per message).
pub(crate) fn new_correlation_id() -> String {
    thread_local! {
        static STATE: std::cell::Cell<(u64, u64)> = std::cell::Cell::new({
            let seed = std::collections::hash_map::RandomState::new();
            let mut h = seed.build_hasher();
            h.write_u64(0x5eed);
            let a = h.finish();
            h.write_u64(a);
            (a, h.finish())
        });
    }
    let (a, b) = STATE.with(|s| {
        let (a, b) = s.get();
        let b2 = b.wrapping_add(0x9e37_79b9_7f4a_7c15);
        s.set((a, b2));
        (a, splitmix(b2 ^ a))
    });
    let v =
        (u128::from(a) << 64 | u128::from(b)) & !(0xF << 76 | 0x3 << 62) | (0x4 << 76 | 0x2 << 62);
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = Vec::with_capacity(36);
    for i in 0..32 {
        if matches!(i, 8 | 12 | 16 | 20) {
            out.push(b'-');
        }
        out.push(HEX[((v >> (124 - 4 * i)) & 0xF) as usize]);
    }
    String::from_utf8(out).expect("hex is ASCII")
}

fn splitmix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn correlation_ids_are_uuid_shaped_and_distinct() {
        let a = new_correlation_id();
        let b = new_correlation_id();
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
        assert!(matches!(&a[19..20], "8" | "9" | "a" | "b"), "{a}");
    }
}
