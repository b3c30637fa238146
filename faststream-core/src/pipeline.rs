//! The handler pipeline: one message in, decode, call, encode, outputs (or an error) out.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures_util::FutureExt;

use crate::error::{DecodeError, HandlerError};
use crate::extract::Context;
use crate::message::Headers;
use crate::message::{header, Message, OutgoingMessage};
use crate::outcome::{BatchOutcome, Outcome, Reply};
use crate::policy::{dlq_header, AckMode, Acker, FailureAction, FailurePolicy};
use crate::publish::BoxFuture;
use crate::retry_topics::{self, retry_header, LaneStep, RetryLane};
use crate::route::{BatchHandlerFn, BatchResult, RouteDef, RouteHandler};
use crate::shutdown::Shutdown;

/// Runs messages through routes. Shared by every transport and the test broker.
#[derive(Debug)]
pub struct Pipeline {
    routes: Vec<&'static RouteDef>,
    defaults: FailurePolicy,
    policies: Vec<FailurePolicy>,
    /// Each route's publisher topics with the prefix applied (computed once).
    outputs: Vec<Vec<Arc<str>>>,
    ctx: Context,
    prefix: String,
    ready: tokio::sync::watch::Sender<bool>,
    compat_headers: bool,
    middlewares: crate::middleware::Middlewares,
}

impl Pipeline {
    /// The app's pause and resume handle: transports take no new messages from the
    /// partitions it pauses ([`crate::Control::watch`]).
    pub fn control(&self) -> &crate::Control {
        self.ctx.control()
    }

    /// A pipeline over validated `routes`.
    pub fn new(routes: Vec<&'static RouteDef>, ctx: Context) -> Self {
        let mut pipeline = Self {
            routes,
            defaults: FailurePolicy::default(),
            policies: Vec::new(),
            outputs: Vec::new(),
            ctx,
            prefix: String::new(),
            ready: tokio::sync::watch::Sender::new(false),
            compat_headers: true,
            middlewares: Default::default(),
        };
        pipeline.resolve_routes();
        pipeline
    }

    /// Whether outputs carry FastStream's `content-type` and `correlation_id` headers (default
    /// true). Without them a message costs about half the CPU in the Kafka transport; an
    /// incoming `correlation_id` is still passed on.
    pub fn with_compat_headers(mut self, on: bool) -> Self {
        self.compat_headers = on;
        self
    }

    /// Runs `middlewares` around every message (see [`crate::Middleware`]).
    pub(crate) fn with_middlewares(mut self, middlewares: crate::middleware::Middlewares) -> Self {
        self.middlewares = middlewares;
        self
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
        self.resolve_routes();
        self
    }

    /// The failure policy of routes that do not override it.
    pub fn with_failure_policy(mut self, defaults: FailurePolicy) -> Self {
        self.defaults = defaults;
        self.resolve_routes();
        self
    }

    /// Each route's effective policy and prefixed output topics, computed once.
    fn resolve_routes(&mut self) {
        let prefix = self.prefix.clone();
        self.outputs = self
            .routes
            .iter()
            .map(|r| {
                r.publishers()
                    .iter()
                    .map(|t| Arc::from(format!("{prefix}{t}")))
                    .collect()
            })
            .collect();
        self.policies = self
            .routes
            .iter()
            .map(|r| {
                r.policy()
                    .resolve(&self.defaults, |t| format!("{prefix}{t}"))
            })
            .collect();
    }

    /// The effective failure policy of `route`.
    pub fn policy(&self, route: &RouteDef) -> &FailurePolicy {
        self.index(route)
            .map_or(&self.defaults, |i| &self.policies[i])
    }

    fn index(&self, route: &RouteDef) -> Option<usize> {
        self.routes.iter().position(|r| std::ptr::eq(*r, route))
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
    /// topic; on failure, retry and dead-letter per the route's [`FailurePolicy`]. Every failure
    /// is logged with topic, partition, offset and handler.
    pub async fn handle(&self, route: &RouteDef, msg: Message) -> Outcome {
        self.handle_until(route, msg, None).await
    }

    /// [`Pipeline::handle`], except that a retry backoff ends early when `interrupt` fires
    /// (shutdown, or the partition was revoked): the message is then [`Outcome::Interrupted`],
    /// not done. A handler already running is never interrupted.
    ///
    /// Runs inside a `message` span (info level) with the handler, topic, partition, offset,
    /// key and correlation id, and the outcome once known: log lines written in the handler carry
    /// the message's context.
    pub async fn handle_until(
        &self,
        route: &RouteDef,
        msg: Message,
        interrupt: Option<&Shutdown>,
    ) -> Outcome {
        let scope = Scope {
            interrupt,
            lane: None,
        };
        if route.batch().is_some() {
            // Boxed: the batch path's future would otherwise set the size (and the cost of
            // every move) of each single message's.
            return Box::pin(self.handle_batch_in(route, vec![msg], scope))
                .await
                .into_single();
        }
        self.handle_one(route, msg, scope).await
    }

    /// [`Pipeline::handle_until`] for a route with retry topics: `msg` was read at `stage` of
    /// `lane` (0: the main topic, `n`: the `n`th retry topic). A message on a retry topic waits
    /// until it is due (`interrupt` ends the wait: not done); a message whose key has earlier
    /// messages further down the retry path follows them there; a failure whose in-place
    /// retries ran out goes to the next retry topic (see [`RetryLane`]).
    pub async fn handle_in_lane(
        &self,
        route: &RouteDef,
        msg: Message,
        interrupt: Option<&Shutdown>,
        lane: &RetryLane,
        stage: usize,
    ) -> Outcome {
        self.handle_batch_in_lane(route, vec![msg], interrupt, lane, stage)
            .await
            .into_single()
    }

    /// [`Pipeline::handle_batch`] for a route with retry topics, as [`Pipeline::handle_in_lane`]
    /// says: the batch waits until its last message is due; followers and stale copies leave
    /// it before the handler runs.
    pub async fn handle_batch_in_lane(
        &self,
        route: &RouteDef,
        msgs: Vec<Message>,
        interrupt: Option<&Shutdown>,
        lane: &RetryLane,
        stage: usize,
    ) -> BatchOutcome {
        if stage > 0 {
            if let Some(due) = msgs.iter().filter_map(retry_topics::due).max() {
                if let Err(error) = wait_until_due(due, interrupt).await {
                    let failed = msgs
                        .iter()
                        .map(|m| {
                            let error = error.clone();
                            (m.offset, Outcome::Interrupted { error, attempts: 0 })
                        })
                        .collect();
                    return BatchOutcome {
                        outputs: Vec::new(),
                        failed,
                    };
                }
            }
        }
        let mut passed = Vec::new();
        let mut kept = Vec::with_capacity(msgs.len());
        // (offset, key, original offset) of the kept messages that are on the lane.
        let mut handled = Vec::with_capacity(msgs.len());
        for msg in msgs {
            let Some(origin) = lane_origin(&msg, stage) else {
                kept.push(msg);
                continue;
            };
            match lane.step(&msg.key, origin, stage) {
                LaneStep::Handle => {
                    handled.push((msg.offset, msg.key.clone(), origin));
                    kept.push(msg);
                }
                LaneStep::Stale => {
                    tracing::debug!(
                        handler = route.name(),
                        topic = &*msg.topic,
                        partition = msg.partition,
                        offset = msg.offset,
                        original_offset = origin,
                        "a stale copy on the retry path (the message moved on already); passed"
                    );
                    passed.push((msg.offset, Outcome::Done(Vec::new())));
                }
                LaneStep::Follow { stage: to, after } => {
                    let copy = self.retry_copy(route, &msg, (lane, to), None, Some(after));
                    lane.park(&msg.key, origin, to);
                    tracing::info!(
                        handler = route.name(),
                        topic = &*msg.topic,
                        partition = msg.partition,
                        offset = msg.offset,
                        follows = after,
                        to = &*copy.topic,
                        "an earlier message with this key is on the retry path: following it"
                    );
                    passed.push((
                        msg.offset,
                        Outcome::Deferred {
                            error: None,
                            attempts: 0,
                            copy: Box::new(copy),
                        },
                    ));
                }
            }
        }
        let scope = Scope {
            interrupt,
            lane: Some((lane, stage)),
        };
        let mut outcome = self.handle_batch_in(route, kept, scope).await;
        // Handled ones leave the path (failures were settled by `conclude`).
        for (offset, key, origin) in handled {
            if !outcome.failed.iter().any(|(o, _)| *o == offset) {
                lane.finish(&key, origin);
            }
        }
        outcome.failed.extend(passed);
        outcome.failed.sort_by_key(|(offset, _)| *offset);
        outcome
    }

    async fn handle_one(&self, route: &RouteDef, msg: Message, scope: Scope<'_>) -> Outcome {
        use tracing::field::{display, Empty};
        use tracing::Instrument;
        let span = tracing::info_span!(
            "message",
            handler = route.name(),
            topic = &*msg.topic,
            partition = msg.partition,
            offset = msg.offset,
            key = Empty,
            correlation_id = Empty,
            outcome = Empty,
        );
        if !span.is_disabled() {
            if let Some(key) = &msg.key {
                span.record("key", display(String::from_utf8_lossy(key)));
            }
        }
        let chain = self.middlewares.chain(route.middlewares());
        if let Some(chain) = &chain {
            chain.on_span(&msg, &span);
        }
        // The message stays here; the layers below borrow it (no copy of it per layer).
        // Without a subscriber that wants the span, the future is not wrapped (nor moved again).
        if span.is_disabled() {
            return self
                .handle_in_span(route, &msg, scope, &span, chain.as_ref())
                .await;
        }
        let outcome = self
            .handle_in_span(route, &msg, scope, &span, chain.as_ref())
            .instrument(span.clone())
            .await;
        span.record("outcome", outcome.name());
        outcome
    }

    async fn handle_in_span(
        &self,
        route: &RouteDef,
        msg: &Message,
        scope: Scope<'_>,
        span: &tracing::Span,
        chain: Option<&crate::middleware::Chain<'_>>,
    ) -> Outcome {
        let Some(chain) = chain else {
            return self.handle_inner(route, msg, scope, span).await;
        };
        if let Err(refused) = chain.before(msg).await {
            let policy = self.policy(route);
            let action = refused.action();
            let mut outcome = self.conclude(
                route,
                policy,
                msg,
                HandlerError::Rejected(refused),
                0,
                action,
                scope.lane,
            );
            chain.after(msg, &mut outcome);
            return outcome;
        }
        let mut outcome = self.handle_inner(route, msg, scope, span).await;
        chain.after(msg, &mut outcome);
        outcome
    }

    async fn handle_inner(
        &self,
        route: &RouteDef,
        msg: &Message,
        scope: Scope<'_>,
        span: &tracing::Span,
    ) -> Outcome {
        let index = self.index(route);
        let policy = index.map_or(&self.defaults, |i| &self.policies[i]);
        // The message stays as received; a generated id travels in the handler's context.
        let correlation_id = match msg.headers.get(header::CORRELATION_ID) {
            Some(id) => Some(id.clone()),
            None if self.compat_headers => Some(bytes::Bytes::from_owner(correlation_id())),
            None => None,
        };
        if let (Some(id), false) = (&correlation_id, span.is_disabled()) {
            span.record(
                "correlation_id",
                tracing::field::display(String::from_utf8_lossy(id)),
            );
        }
        let unit = Unit::message(msg);
        let attempt = |_| self.attempt(route, policy, msg, &correlation_id);
        match self
            .retried(route, policy, scope.interrupt, &unit, attempt)
            .await
        {
            Tried::Ok((reply, acked, published)) => {
                let mut outputs = self.held(published);
                outputs.extend(self.address(route, index, policy, reply, msg, correlation_id));
                if acked {
                    Outcome::Done(outputs)
                } else {
                    Outcome::Unacked(outputs)
                }
            }
            Tried::Interrupted { error, attempts } => Outcome::Interrupted { error, attempts },
            Tried::Failed {
                error,
                action,
                attempts,
            } => self.conclude(route, policy, msg, error, attempts, action, scope.lane),
        }
    }

    /// Handles `msgs` (consecutive messages of one partition) with a `batch = true` route: each
    /// is decoded on its own (one that cannot be is dead-lettered alone and left out), the
    /// handler runs once for the rest, and each returned element is published as its own
    /// message. A failed batch is retried as a whole per the route's policy; when retries run
    /// out, each of its messages goes through the failure policy with the batch's error.
    /// `interrupt` ends a retry backoff early, as in [`Pipeline::handle_until`].
    ///
    /// Middlewares see each message (`before` may refuse one, which is left out of the batch);
    /// `after` sees each batched message as done with no outputs of its own, and `publish`
    /// every output. A route without `batch` handles the messages one at a time. Runs inside a
    /// `batch` span (info level) with the handler, topic, partition, offsets and size.
    pub async fn handle_batch(
        &self,
        route: &RouteDef,
        msgs: Vec<Message>,
        interrupt: Option<&Shutdown>,
    ) -> BatchOutcome {
        let scope = Scope {
            interrupt,
            lane: None,
        };
        self.handle_batch_in(route, msgs, scope).await
    }

    async fn handle_batch_in(
        &self,
        route: &RouteDef,
        msgs: Vec<Message>,
        scope: Scope<'_>,
    ) -> BatchOutcome {
        use tracing::Instrument;
        let RouteHandler::Batch(handler, _) = route.handler else {
            let mut outcome = BatchOutcome {
                outputs: Vec::new(),
                failed: Vec::new(),
            };
            for msg in msgs {
                let offset = msg.offset;
                match self.handle_one(route, msg, scope).await {
                    Outcome::Done(out) => outcome.outputs.extend(out),
                    failed => outcome.failed.push((offset, failed)),
                }
            }
            return outcome;
        };
        let Some(first) = msgs.first() else {
            return BatchOutcome {
                outputs: Vec::new(),
                failed: Vec::new(),
            };
        };
        let span = tracing::info_span!(
            "batch",
            handler = route.name(),
            topic = &*first.topic,
            partition = first.partition,
            first_offset = first.offset,
            last_offset = msgs.last().map_or(first.offset, |m| m.offset),
            size = msgs.len(),
            failed = tracing::field::Empty,
        );
        let chain = self.middlewares.chain(route.middlewares());
        if let Some(chain) = &chain {
            chain.on_span(first, &span);
        }
        let outcome = self
            .run_batch(route, handler, msgs, scope, chain.as_ref())
            .instrument(span.clone())
            .await;
        span.record("failed", outcome.failed.len());
        outcome
    }

    async fn run_batch(
        &self,
        route: &RouteDef,
        handler: BatchHandlerFn,
        mut msgs: Vec<Message>,
        scope: Scope<'_>,
        chain: Option<&crate::middleware::Chain<'_>>,
    ) -> BatchOutcome {
        let index = self.index(route);
        let policy = index.map_or(&self.defaults, |i| &self.policies[i]);
        let mut failed: Vec<(i64, Outcome)> = Vec::new();
        let mut fail = |pipeline: &Self, msg: &Message, error, attempts, action| {
            let mut outcome =
                pipeline.conclude(route, policy, msg, error, attempts, action, scope.lane);
            if let Some(chain) = chain {
                chain.after(msg, &mut outcome);
            }
            failed.push((msg.offset, outcome));
        };
        if let Some(chain) = chain {
            let mut kept = Vec::with_capacity(msgs.len());
            for msg in msgs {
                match chain.before(&msg).await {
                    Ok(()) => kept.push(msg),
                    Err(refused) => {
                        let action = refused.action();
                        fail(self, &msg, HandlerError::Rejected(refused), 0, action);
                    }
                }
            }
            msgs = kept;
        }
        if let Some(max) = policy.max_message_bytes {
            let (fits, too_large): (Vec<_>, Vec<_>) = msgs
                .into_iter()
                .partition(|m| m.payload.as_ref().is_none_or(|p| p.len() <= max));
            for msg in too_large {
                let error = HandlerError::Decode(DecodeError::new(
                    "the message",
                    format!(
                        "payload of {} bytes exceeds max_message_bytes ({max})",
                        msg.payload.as_ref().map_or(0, |p| p.len())
                    ),
                ));
                fail(self, &msg, error, 0, FailureAction::DeadLetter);
            }
            msgs = fits;
        }
        // Outputs of a batch carry the correlation id of its first message (or a new one).
        let correlation_id = match msgs
            .first()
            .and_then(|m| m.headers.get(header::CORRELATION_ID))
        {
            Some(id) => Some(id.clone()),
            None if self.compat_headers => Some(bytes::Bytes::from_owner(correlation_id())),
            None => None,
        };
        let result = if msgs.is_empty() {
            Tried::Ok((Vec::new(), Vec::new()))
        } else {
            // The messages move into the attempts' state below: the unit keeps its own topic.
            let topic = msgs[0].topic.clone();
            let unit = Unit {
                topic: &topic,
                batch: Some(msgs.len()),
                ..Unit::message(&msgs[0])
            };
            // Messages that cannot be decoded leave the batch at their first attempt (the lock
            // is never held across an await).
            let state = std::sync::Mutex::new((std::mem::take(&mut msgs), Vec::new()));
            let state = &state;
            let attempt = |attempts| {
                let batch = state.lock().unwrap().0.clone();
                // Every message left as undecodable: nothing to call.
                let call = (!batch.is_empty()).then(|| {
                    let ctx = self.ctx.for_attempt(None, correlation_id.clone());
                    let (ctx, held) = match policy.exactly_once {
                        true => {
                            let (ctx, held) = ctx.holding();
                            (ctx, Some(held))
                        }
                        false => (ctx, None),
                    };
                    (call_limited(handler(batch, ctx), policy.timeout), held)
                });
                async move {
                    let Some((call, held)) = call else {
                        return Ok((Vec::new(), Vec::new()));
                    };
                    let BatchResult {
                        undecodable: mut failed,
                        replies,
                    } = call.await?;
                    // Highest index first, so the others stay valid while removing.
                    failed.sort_by_key(|(i, _)| std::cmp::Reverse(*i));
                    let mut state = state.lock().unwrap();
                    let (msgs, undecodable): &mut (Vec<Message>, Vec<_>) = &mut state;
                    for (i, error) in failed {
                        if i < msgs.len() {
                            undecodable.push((msgs.remove(i), error, attempts));
                        }
                    }
                    let published = held.map(|h| h.take()).unwrap_or_default();
                    replies.map(|r| (r, published))
                }
            };
            let tried = self
                .retried(route, policy, scope.interrupt, &unit, attempt)
                .await;
            let (kept, undecodable) = std::mem::take(&mut *state.lock().unwrap());
            msgs = kept;
            for (msg, error, attempts) in undecodable {
                fail(self, &msg, error, attempts, FailureAction::DeadLetter);
            }
            tried
        };
        let outputs = match result {
            Tried::Ok((replies, published)) => {
                let mut outputs = self.held(published);
                outputs.extend(self.address_batch(route, index, replies, correlation_id));
                if let Some(chain) = chain {
                    for msg in &msgs {
                        chain.after(msg, &mut Outcome::Done(Vec::new()));
                    }
                    for out in &mut outputs {
                        chain.publish(out);
                    }
                }
                outputs
            }
            Tried::Failed {
                error,
                action,
                attempts,
            } => {
                for msg in &msgs {
                    fail(self, msg, error.clone(), attempts, action);
                }
                Vec::new()
            }
            Tried::Interrupted { error, attempts } => {
                for msg in &msgs {
                    let error = error.clone();
                    failed.push((msg.offset, Outcome::Interrupted { error, attempts }));
                }
                Vec::new()
            }
        };
        failed.sort_by_key(|(offset, _)| *offset);
        BatchOutcome { outputs, failed }
    }

    /// What an exactly-once handler published during its successful attempt, through the
    /// app's middlewares as any publish: the first of the message's outputs.
    fn held(&self, mut published: Vec<OutgoingMessage>) -> Vec<OutgoingMessage> {
        for out in &mut published {
            self.middlewares.publish(out);
        }
        published
    }

    /// A batch's replies, each addressed to every publisher topic of `route` (in reply order,
    /// then topic order). The key is the one a `Response` set, else none.
    fn address_batch(
        &self,
        route: &RouteDef,
        index: Option<usize>,
        replies: Vec<Reply>,
        correlation_id: Option<bytes::Bytes>,
    ) -> Vec<OutgoingMessage> {
        let topics = self.output_topics(route, index);
        let mut outputs = Vec::with_capacity(replies.len() * topics.len());
        for reply in replies {
            let Some(body) = reply.into_body() else {
                continue;
            };
            let mut headers = body.meta.headers;
            let content_type = body.content_type.filter(|_| self.compat_headers);
            headers.reserve_exact(
                usize::from(content_type.is_some()) + usize::from(correlation_id.is_some()),
            );
            if let Some(ct) = content_type {
                headers.insert(header::CONTENT_TYPE, ct);
            }
            if let Some(id) = &correlation_id {
                headers.insert(header::CORRELATION_ID, id.clone());
            }
            for topic in topics.iter() {
                outputs.push(OutgoingMessage {
                    topic: topic.clone(),
                    partition: body.meta.partition,
                    key: body.meta.key.clone(),
                    headers: headers.clone(),
                    payload: Some(body.payload.clone()),
                    timestamp: None,
                });
            }
        }
        outputs
    }

    /// The prefixed publisher topics of `route`.
    fn output_topics(
        &self,
        route: &RouteDef,
        index: Option<usize>,
    ) -> std::borrow::Cow<'_, [Arc<str>]> {
        match index {
            Some(i) => std::borrow::Cow::Borrowed(&self.outputs[i]),
            None => std::borrow::Cow::Owned(
                route
                    .publishers()
                    .iter()
                    .map(|t| Arc::from(self.topic_name(t)))
                    .collect(),
            ),
        }
    }

    /// Applies `route`'s failure policy to a message that failed outside its handler: a record
    /// the transport could not read ([`HandlerError::Fetch`]), or an output the broker refused
    /// ([`HandlerError::Publish`]). Not retried here (the transport retried what could succeed):
    /// dead-lettered where the route has a dead-letter topic, else skipped or stopped as its
    /// policy says. Logged like handler failures.
    pub fn fail(&self, route: &RouteDef, msg: &Message, error: HandlerError) -> Outcome {
        let policy = self
            .index(route)
            .map_or(&self.defaults, |i| &self.policies[i]);
        let attempts = u32::from(matches!(error, HandlerError::Publish(_)));
        self.conclude(
            route,
            policy,
            msg,
            error,
            attempts,
            FailureAction::DeadLetter,
            None,
        )
    }

    /// The outcome of a failed message, logged. On the retry path (`lane`), a failure to retry
    /// goes to the next retry topic while there is one.
    #[allow(clippy::too_many_arguments)]
    fn conclude(
        &self,
        route: &RouteDef,
        policy: &FailurePolicy,
        msg: &Message,
        error: HandlerError,
        attempts: u32,
        action: FailureAction,
        lane: Option<(&RetryLane, usize)>,
    ) -> Outcome {
        let on_lane = lane.and_then(|(lane, stage)| Some((lane, stage, lane_origin(msg, stage)?)));
        if let Some((lane, stage, origin)) = on_lane {
            if action == FailureAction::Retry && stage < policy.retry_topics.len() {
                let failure = Some((&error, attempts));
                let copy = self.retry_copy(route, msg, (lane, stage + 1), failure, None);
                lane.park(&msg.key, origin, stage + 1);
                tracing::warn!(
                    handler = route.name(),
                    topic = &*msg.topic,
                    partition = msg.partition,
                    offset = msg.offset,
                    attempts,
                    kind = error.kind(),
                    error = %error,
                    to = &*copy.topic,
                    "message failed; moved to the retry topic, its partition goes on"
                );
                return Outcome::Deferred {
                    error: Some(error),
                    attempts,
                    copy: Box::new(copy),
                };
            }
        }
        let action = match (action, &policy.dlq) {
            (FailureAction::Retry | FailureAction::DeadLetter, Some(_)) => {
                FailureAction::DeadLetter
            }
            (FailureAction::Retry | FailureAction::DeadLetter, None) => policy.without_dlq,
            (other, _) => other,
        };
        let outcome = match action {
            FailureAction::DeadLetter => {
                let topic = policy.dlq.clone().unwrap_or_default();
                // From a retry topic, the origin stays the main topic's.
                let keep_origin = lane.is_some_and(|(_, stage)| stage > 0);
                let dlq = Box::new(dead_letter(
                    route,
                    msg,
                    &error,
                    attempts,
                    topic,
                    keep_origin,
                ));
                Outcome::DeadLettered {
                    error,
                    attempts,
                    dlq,
                }
            }
            FailureAction::Stop => Outcome::Stopped { error, attempts },
            _ => Outcome::Skipped { error, attempts },
        };
        if let Some((lane, _, origin)) = on_lane {
            if !matches!(outcome, Outcome::Stopped { .. }) {
                lane.finish(&msg.key, origin);
            }
        }
        let error = outcome.error().expect("a failed outcome has an error");
        let what = match &outcome {
            Outcome::DeadLettered { dlq, .. } => format!("dead-lettered to {:?}", dlq.topic),
            Outcome::Stopped { .. } => {
                "consumer stopped; the message will be consumed again".into()
            }
            _ => "skipped".into(),
        };
        tracing::error!(
            handler = route.name(),
            topic = &*msg.topic,
            partition = msg.partition,
            offset = msg.offset,
            attempts,
            kind = error.kind(),
            error = %error,
            outcome = what,
            "message failed"
        );
        outcome
    }

    /// The retry engine of messages and batches alike: runs `attempt` (given the attempt's
    /// number, the first is 1) until it succeeds, fails in a way retrying cannot help, or the
    /// route's retries run out, waiting the policy's backoff in between; `interrupt`
    /// (shutdown, revoke) ends a wait early and leaves the unit not done.
    async fn retried<T, Fut>(
        &self,
        route: &RouteDef,
        policy: &FailurePolicy,
        interrupt: Option<&Shutdown>,
        unit: &Unit<'_>,
        mut attempt: impl FnMut(u32) -> Fut,
    ) -> Tried<T>
    where
        Fut: std::future::Future<Output = Result<T, HandlerError>>,
    {
        let mut attempts = 0;
        loop {
            attempts += 1;
            let error = match attempt(attempts).await {
                Ok(value) => return Tried::Ok(value),
                Err(error) => error,
            };
            let action = action_for(&error);
            if action != FailureAction::Retry || attempts > policy.retry.max_retries {
                return Tried::Failed {
                    error,
                    action,
                    attempts,
                };
            }
            let wait = policy.retry.backoff(attempts);
            count_retry(route, unit.topic);
            let (topic, partition, offset) = (unit.topic, unit.partition, unit.offset);
            match unit.batch {
                None => tracing::warn!(
                    handler = route.name(),
                    topic,
                    partition,
                    offset,
                    attempt = attempts,
                    kind = error.kind(),
                    error = %error,
                    retry_in = ?wait,
                    "message failed; retrying"
                ),
                Some(size) => tracing::warn!(
                    handler = route.name(),
                    topic,
                    partition,
                    first_offset = offset,
                    size,
                    attempt = attempts,
                    kind = error.kind(),
                    error = %error,
                    retry_in = ?wait,
                    "batch failed; retrying"
                ),
            }
            if Box::pin(backoff(wait, interrupt)).await {
                tracing::warn!(
                    handler = route.name(),
                    topic,
                    partition,
                    offset,
                    attempts,
                    "retry backoff interrupted by shutdown or revoke; not done, it will be consumed again"
                );
                return Tried::Interrupted { error, attempts };
            }
        }
    }

    /// Runs the handler once: size check, timeout, panic capture, manual ack.
    async fn attempt(
        &self,
        route: &RouteDef,
        policy: &FailurePolicy,
        msg: &Message,
        correlation_id: &Option<bytes::Bytes>,
    ) -> Result<(Reply, bool, Vec<OutgoingMessage>), HandlerError> {
        if let (Some(max), Some(payload)) = (policy.max_message_bytes, &msg.payload) {
            if payload.len() > max {
                return Err(HandlerError::Decode(DecodeError::new(
                    "the message",
                    format!(
                        "payload of {} bytes exceeds max_message_bytes ({max})",
                        payload.len()
                    ),
                )));
            }
        }
        let acker = (policy.ack == AckMode::Manual).then(Acker::new);
        let ctx = self.ctx.for_attempt(acker.clone(), correlation_id.clone());
        let (ctx, held) = match policy.exactly_once {
            true => {
                let (ctx, held) = ctx.holding();
                (ctx, Some(held))
            }
            false => (ctx, None),
        };
        let RouteHandler::One(handler) = route.handler else {
            unreachable!("batch routes are handled by handle_batch");
        };
        let result = call_limited(handler(msg.clone(), ctx), policy.timeout)
            .await
            .and_then(|r| r);
        let published = || held.as_ref().map(|h| h.take()).unwrap_or_default();
        match (result, acker.as_ref().map(Acker::state)) {
            (Err(e), _) => Err(e),
            (Ok(_), Some(Some(false))) => Err(HandlerError::Nacked),
            (Ok(reply), Some(None)) => Ok((reply, false, published())),
            (Ok(reply), _) => Ok((reply, true, published())),
        }
    }

    /// Addresses a reply to every publisher topic of `route`, and to the message's `reply_to`
    /// topic if it names one (FastStream's request/reply; `no_reply` turns it off). A requester
    /// gets an empty reply when the handler returned nothing.
    fn address(
        &self,
        route: &RouteDef,
        index: Option<usize>,
        policy: &FailurePolicy,
        reply: Reply,
        msg: &Message,
        correlation_id: Option<bytes::Bytes>,
    ) -> Vec<OutgoingMessage> {
        let reply_to = match policy.no_reply {
            true => None,
            false => msg
                .headers
                .get_str(header::REPLY_TO)
                .filter(|t| !t.is_empty())
                .map(Arc::<str>::from),
        };
        let Some(body) = reply.into_body() else {
            let Some(topic) = reply_to else {
                return Vec::new();
            };
            let mut headers = crate::message::Headers::new();
            if let Some(id) = correlation_id {
                headers.insert(header::CORRELATION_ID, id);
            }
            return vec![OutgoingMessage {
                topic,
                partition: None,
                key: msg.key.clone(),
                headers,
                payload: Some(bytes::Bytes::new()),
                timestamp: None,
            }];
        };
        let mut headers = body.meta.headers;
        let content_type = body.content_type.filter(|_| self.compat_headers);
        headers.reserve_exact(
            usize::from(content_type.is_some()) + usize::from(correlation_id.is_some()),
        );
        if let Some(ct) = content_type {
            headers.insert(header::CONTENT_TYPE, ct);
        }
        if let Some(id) = correlation_id {
            headers.insert(header::CORRELATION_ID, id);
        }
        let key = body.meta.key.or_else(|| msg.key.clone());
        let own = self.output_topics(route, index);
        let topics: &[Arc<str>] = &own;
        let with_reply;
        let topics = match reply_to {
            None => topics,
            Some(reply_to) => {
                with_reply = topics
                    .iter()
                    .cloned()
                    .chain(std::iter::once(reply_to))
                    .collect::<Vec<_>>();
                &with_reply[..]
            }
        };
        let replies_from = if topics.len() > route.publishers().len() {
            route.publishers().len()
        } else {
            usize::MAX
        };
        let mut outputs = Vec::with_capacity(topics.len());
        let last = topics.len().saturating_sub(1);
        for (i, topic) in topics.iter().cloned().enumerate() {
            // The last output takes the headers instead of a copy.
            let headers = if i == last {
                std::mem::take(&mut headers)
            } else {
                headers.clone()
            };
            outputs.push(OutgoingMessage {
                topic,
                // The requester's reply topic: its own partitioning.
                partition: body.meta.partition.filter(|_| i < replies_from),
                key: key.clone(),
                headers,
                payload: Some(body.payload.clone()),
                timestamp: None,
            });
        }
        outputs
    }
}

/// What is being retried, for the logs: one message, or a batch (its first message and size).
struct Unit<'a> {
    topic: &'a str,
    partition: i32,
    offset: i64,
    batch: Option<usize>,
}

impl<'a> Unit<'a> {
    fn message(msg: &'a Message) -> Self {
        Unit {
            topic: &msg.topic,
            partition: msg.partition,
            offset: msg.offset,
            batch: None,
        }
    }
}

/// How a unit of work (a message or a batch) ended after the route's retries.
enum Tried<T> {
    Ok(T),
    /// Failed for good: the failure policy decides with `action`.
    Failed {
        error: HandlerError,
        action: FailureAction,
        attempts: u32,
    },
    /// A retry backoff was cut short by shutdown or revoke: not done, consumed again later.
    Interrupted {
        error: HandlerError,
        attempts: u32,
    },
}

/// The dead-letter copy of `msg`: key, headers and payload kept, failure described in headers.
fn dead_letter(
    route: &RouteDef,
    msg: &Message,
    error: &HandlerError,
    attempts: u32,
    topic: String,
    keep_origin: bool,
) -> OutgoingMessage {
    let mut headers = msg.headers.clone();
    if !keep_origin || headers.get(dlq_header::ORIGINAL_TOPIC).is_none() {
        set_origin(&mut headers, msg);
    }
    let attempts = attempts
        + if keep_origin {
            earlier_attempts(msg)
        } else {
            0
        };
    describe_failure(&mut headers, route.name(), error, attempts);
    OutgoingMessage {
        topic: topic.into(),
        partition: None,
        key: msg.key.clone(),
        headers,
        payload: msg.payload.clone(),
        timestamp: None,
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Where a message came from, in the dead-letter header names.
fn set_origin(headers: &mut Headers, msg: &Message) {
    headers.insert(dlq_header::ORIGINAL_TOPIC, msg.topic.to_string());
    headers.insert(dlq_header::ORIGINAL_PARTITION, msg.partition.to_string());
    headers.insert(dlq_header::ORIGINAL_OFFSET, msg.offset.to_string());
}

fn describe_failure(headers: &mut Headers, handler: &str, error: &HandlerError, attempts: u32) {
    headers.insert(dlq_header::ERROR_KIND, error.kind());
    headers.insert(dlq_header::ERROR, error.to_string());
    headers.insert(dlq_header::HANDLER, handler.to_owned());
    headers.insert(dlq_header::ATTEMPTS, attempts.to_string());
    headers.insert(dlq_header::FAILED_AT, now_ms().to_string());
}

/// Handler runs of a message on the retry path before this stage.
fn earlier_attempts(msg: &Message) -> u32 {
    msg.headers
        .get_str(dlq_header::ATTEMPTS)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The lane's offset of a message read at `stage`: its own on the main topic, the original
/// one on a retry topic (`None`: a message on a retry topic that did not come from the path,
/// handled without the lane).
fn lane_origin(msg: &Message, stage: usize) -> Option<i64> {
    if stage == 0 {
        Some(msg.offset)
    } else {
        retry_topics::original_offset(msg)
    }
}

/// Waits until `due` (milliseconds since the epoch); an error to report when `interrupt`
/// fired first.
async fn wait_until_due(due: i64, interrupt: Option<&Shutdown>) -> Result<(), HandlerError> {
    let wait = std::time::Duration::from_millis(u64::try_from(due - now_ms()).unwrap_or(0));
    if wait.is_zero() {
        return Ok(());
    }
    if Box::pin(backoff(wait, interrupt)).await {
        return Err(HandlerError::Handler(format!(
            "stopped while waiting for its retry (due in {wait:?}); not done, it will be consumed again"
        )));
    }
    Ok(())
}

/// How a message is handled: what interrupts a retry wait, and its retry lane.
#[derive(Clone, Copy, Default)]
struct Scope<'a> {
    interrupt: Option<&'a Shutdown>,
    lane: Option<(&'a RetryLane, usize)>,
}

impl Pipeline {
    /// The copy of `msg` for retry stage `to` (1-based), written to the lane's partition: the
    /// origin (main topic, partition, offset) kept or set, due after that topic's delay; the
    /// failure described when it failed, or the message it follows.
    fn retry_copy(
        &self,
        route: &RouteDef,
        msg: &Message,
        (lane, to): (&RetryLane, usize),
        failure: Option<(&HandlerError, u32)>,
        follows: Option<i64>,
    ) -> OutgoingMessage {
        let target = &self.policy(route).retry_topics[to - 1];
        let mut headers = msg.headers.clone();
        if headers.get(dlq_header::ORIGINAL_TOPIC).is_none() || *msg.topic == *lane.topic() {
            set_origin(&mut headers, msg);
        }
        let due = now_ms() + target.delay.as_millis() as i64;
        headers.insert(retry_header::DUE, due.to_string());
        headers.remove(retry_header::FOLLOWS);
        if let Some((error, attempts)) = failure {
            let before = if *msg.topic == *lane.topic() {
                0
            } else {
                earlier_attempts(msg)
            };
            describe_failure(&mut headers, route.name(), error, attempts + before);
        }
        if let Some(after) = follows {
            headers.insert(retry_header::FOLLOWS, after.to_string());
        }
        OutgoingMessage {
            topic: target.topic.as_str().into(),
            partition: Some(lane.partition()),
            key: msg.key.clone(),
            headers,
            payload: msg.payload.clone(),
            timestamp: None,
        }
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

/// What a handler failure asks for: decode and encode failures cannot succeed on retry, a
/// `Failure` says itself, anything else is retried.
fn action_for(err: &HandlerError) -> FailureAction {
    match err {
        HandlerError::Decode(_) | HandlerError::Encode(_) => FailureAction::DeadLetter,
        HandlerError::Rejected(f) => f.action(),
        _ => FailureAction::Retry,
    }
}

/// Waits a retry backoff; `true` if `interrupt` fired first (shutdown or revoke). Callers box
/// it: its timer would otherwise sit in every message's future, retried or not.
async fn backoff(wait: std::time::Duration, interrupt: Option<&Shutdown>) -> bool {
    let Some(stop) = interrupt else {
        tokio::time::sleep(wait).await;
        return false;
    };
    let mut stop = stop.clone();
    tokio::select! {
        () = tokio::time::sleep(wait) => false,
        () = stop.wait() => true,
    }
}

/// Counts a retry (of one message, or one batch) in `faststream_retries_total`.
#[cfg(feature = "metrics")]
fn count_retry(route: &RouteDef, topic: &str) {
    metrics::counter!("faststream_retries_total", "topic" => topic.to_owned(), "handler" => route.name())
        .increment(1);
}

#[cfg(not(feature = "metrics"))]
fn count_retry(_: &RouteDef, _: &str) {}

/// Runs a generated handler's future within the route's time limit, a panic caught as
/// [`HandlerError::Panic`].
async fn call_limited<T>(
    call: BoxFuture<'static, T>,
    limit: Option<std::time::Duration>,
) -> Result<T, HandlerError> {
    // A panic in the handler is its failure, not the service's.
    let call = AssertUnwindSafe(call).catch_unwind().map(|r| {
        r.map_err(|panic| {
            let msg = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "non-string panic payload".to_owned());
            HandlerError::Panic(msg)
        })
    });
    match limit {
        Some(limit) => tokio::time::timeout(limit, call)
            .await
            .unwrap_or(Err(HandlerError::Timeout(limit))),
        None => call.await,
    }
}

/// A new correlation id: a random UUID (version 4) as text, what the pipeline gives messages
/// that arrive without one.
pub fn new_correlation_id() -> String {
    String::from_utf8(correlation_id().to_vec()).expect("a UUID is ASCII")
}

/// A random UUID (version 4 layout) as its 36 ASCII bytes, without pulling in a UUID crate: a
/// random per-thread base mixed with a counter, hex-encoded a byte at a time (this runs once
/// per message).
pub(crate) fn correlation_id() -> [u8; 36] {
    // A random (version 4) UUID; the bits come from a fast thread-local generator: a
    // correlation id needs to be unique, not unpredictable.
    let id = uuid::Builder::from_random_bytes(fastrand::u128(..).to_le_bytes()).into_uuid();
    let mut out = [0; 36];
    id.hyphenated().encode_lower(&mut out);
    out
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
        for dash in [8, 13, 18, 23] {
            assert_eq!(&a[dash..dash + 1], "-", "{a}");
        }
        assert!(a
            .bytes()
            .all(|c| c == b'-' || c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
    }
}
