//! The in-memory test broker: runs the same routes in-process, with no Kafka.
//!
//! Publishing runs every subscribed handler to completion before returning, and delivers what
//! they publish to the routes subscribed to those topics in turn, so a test can publish and
//! then look at what each handler received and what landed on each topic.
//!
//! Outcomes go through the same per-partition bookkeeping as the Kafka transport
//! ([`OffsetTracker`]): a message a manual-ack handler neither acked nor
//! nacked holds its partition's commits back ([`TestBroker::committed`] shows what a consumer
//! group would commit), and `on_failure = "stop"` stops the service: that publish and every
//! later one return [`Error::PartitionStopped`], as the Kafka
//! service exits with the same reason.
//!
//! Pausing ([`TestBroker::control`], or a handler's `Control`) holds the messages of the paused
//! partitions, in order, without handling them; once resumed they are handled at the next call
//! that publishes, or at [`TestBroker::deliver_resumed`]. A seek moves the handler's position
//! in the stored messages of its topics, then (at the same points) hands it what follows again,
//! and `committed` shows the new position.
//!
//! Retries wait with `tokio::time::sleep`: run such tests on tokio's paused clock
//! (`#[tokio::test(start_paused = true)]`, tokio's `test-util` feature) and backoffs take no
//! wall time and are deterministic.
//!
//! Retry topics (`retry_topics = [...]`) are modelled with the same lanes as on Kafka: a
//! failed message's copy is published to the retry topic and handled from there once due
//! (the wait is a `tokio::time::sleep` too), later messages with its key follow it, the last
//! failure goes to the dead-letter topic. Publishing is synchronous here, so the publish of
//! the failing message returns once its retry path is over.
//!
//! ```no_run
//! # async fn demo() -> faststream_core::Result<()> {
//! use faststream_core::testing::TestBroker;
//! let broker = TestBroker::new()?;
//! broker.publish(r#"{"user": "john", "user_id": 1}"#, "in_topic").await?;
//! let out = broker.published("out-topic");
//! assert_eq!(out[0].text(), Some("User: 1 - john registered"));
//! # Ok(()) }
//! ```

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, Weak};

use serde::de::DeserializeOwned;

use crate::codec::{decode_json, IntoPayload};
use crate::error::HandlerError;
use crate::extract::{Context, StateMap};
use crate::message::{header, Message, OutgoingMessage};
use crate::offsets::{OffsetTracker, Position, Step};
use crate::outcome::Outcome;
use crate::pipeline::{new_correlation_id, Pipeline};
use crate::policy::FailurePolicy;
use crate::publish::{BoxFuture, Publish, Publisher};
use crate::retry_topics::RetryLane;
use crate::route::RouteDef;
use crate::validate::resolve_routes;
use crate::{Error, Result};

/// How deep handlers may publish to topics other handlers consume before it counts as a loop.
const MAX_DEPTH: usize = 32;

/// One message handled by one route.
#[derive(Clone, Debug)]
pub struct Delivery {
    /// The handler's path.
    pub handler: &'static str,
    /// The message it received.
    pub message: Message,
    /// What came of it.
    pub outcome: Outcome,
}

impl Delivery {
    /// The payload decoded as JSON into `T`, as the handler would have seen it.
    pub fn body<T: DeserializeOwned>(&self) -> Result<T, HandlerError> {
        decode_json(&self.message, std::any::type_name::<T>())
    }

    /// The error, if handling failed.
    pub fn error(&self) -> Option<&HandlerError> {
        self.outcome.error()
    }
}

#[derive(Default)]
struct Log {
    topics: HashMap<String, Vec<Message>>,
    next_offsets: HashMap<(String, i32), i64>,
    deliveries: Vec<Delivery>,
    /// Per handler, topic and partition: what its consumer group would commit.
    progress: HashMap<(&'static str, String, i32), Progress>,
    /// The stop that ended the service, if one did.
    stopped: Option<crate::PartitionStop>,
    /// Messages of paused partitions (or queued behind them), by handler, in arrival order.
    held: Vec<(&'static RouteDef, Message)>,
    /// Retry lanes of routes with retry topics, by handler, main topic and partition.
    lanes: HashMap<(&'static str, String, i32), Arc<RetryLane>>,
}

/// One handler's progress on one partition.
struct Progress {
    tracker: OffsetTracker,
    position: Position,
    /// Finished offsets after the first one still running (concurrent publishes).
    finished: BTreeSet<i64>,
    /// The first offset not finished.
    next: i64,
}

impl Progress {
    fn new() -> Self {
        Self::starting_at(0)
    }

    /// Progress of a partition whose next message is `offset` (after a seek).
    fn starting_at(offset: i64) -> Self {
        let position = Position::new(None);
        // The test broker does not warn about held messages: tests read `committed` instead.
        let tracker = OffsetTracker::new(position.clone(), std::time::Duration::MAX);
        tracker.start(offset);
        Self {
            tracker,
            position,
            finished: BTreeSet::new(),
            next: offset,
        }
    }

    /// `offset` is done: the position moves over every finished offset in a row.
    fn finish(&mut self, offset: i64) {
        self.finished.insert(offset);
        while self.finished.remove(&self.next) {
            self.next += 1;
        }
        if self.next > 0 {
            self.tracker.done(self.next - 1);
        }
    }
}

impl Log {
    fn progress(&mut self, handler: &'static str, msg: &Message) -> &mut Progress {
        self.progress
            .entry((handler, msg.topic.to_string(), msg.partition))
            .or_insert_with(Progress::new)
    }

    fn stop_error(&self) -> Option<Error> {
        self.stopped.clone().map(Error::PartitionStopped)
    }
}

struct Inner {
    pipeline: Pipeline,
    log: Mutex<Log>,
    /// The seeks asked of each handler, as the control gives them out.
    seeks: Mutex<Vec<(&'static RouteDef, SeekReceiver)>>,
}

/// Where a handler's seeks arrive.
type SeekReceiver = tokio::sync::watch::Receiver<Option<crate::Seek>>;

tokio::task_local! {
    /// How deep the publish being delivered is nested in the chain that started it (handlers
    /// publishing what handlers publish). Per chain, so concurrent publishes do not add up.
    static DEPTH: usize;
}

/// Builds a [`TestBroker`] with state and an explicit route list.
#[derive(Debug, Default)]
pub struct TestBrokerBuilder {
    routes: Option<Vec<&'static RouteDef>>,
    state: StateMap,
    policy: Option<FailurePolicy>,
    middlewares: crate::middleware::Middlewares,
}

impl TestBrokerBuilder {
    /// Adds shared state, as `FastStream::with_state`.
    pub fn with_state<S: Clone + Send + Sync + 'static>(mut self, state: S) -> Self {
        self.state.insert(state);
        self
    }

    /// Runs only these routes (see `routes![...]`) instead of every registered one.
    pub fn with_routes(mut self, routes: Vec<&'static RouteDef>) -> Self {
        self.routes = Some(routes);
        self
    }

    /// The failure policy of routes that do not override it, as `FastStream::failure_policy`.
    pub fn failure_policy(mut self, policy: FailurePolicy) -> Self {
        self.policy = Some(policy);
        self
    }

    /// Runs `middleware` around every handling and publish, as `FastStream::middleware`.
    pub fn middleware(mut self, middleware: impl crate::Middleware) -> Self {
        self.middlewares.0.push(Arc::new(middleware));
        self
    }

    /// Validates the routes as the app does at startup and builds the broker.
    pub fn build(self) -> Result<TestBroker> {
        let routes = resolve_routes(self.routes, &self.state)?;
        let state = Arc::new(self.state);
        let middlewares = self.middlewares;
        let inner = Arc::new_cyclic(|weak: &Weak<Inner>| {
            let sink: Arc<dyn Publish> = Arc::new(Sink(weak.clone()));
            let publisher = match middlewares.is_empty() {
                true => Publisher::new(sink),
                false => Publisher::new(Arc::new(crate::middleware::PublishThrough {
                    inner: sink,
                    middlewares: middlewares.clone(),
                })),
            };
            let control = crate::Control::default();
            control.register_routes(&routes);
            let ctx = Context::new(state, publisher).with_control(control);
            let mut pipeline = Pipeline::new(routes, ctx).with_middlewares(middlewares);
            if let Some(policy) = self.policy {
                pipeline = pipeline.with_failure_policy(policy);
            }
            let seeks = pipeline
                .routes()
                .iter()
                .map(|r| {
                    let mut rx = pipeline.control().watch_seeks(r.name());
                    rx.mark_unchanged();
                    (*r, rx)
                })
                .collect();
            Inner {
                pipeline,
                log: Mutex::new(Log::default()),
                seeks: Mutex::new(seeks),
            }
        });
        Ok(TestBroker { inner })
    }
}

/// Runs routes in-process; see the [module docs](self).
#[derive(Clone)]
pub struct TestBroker {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for TestBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestBroker")
            .field("routes", &self.inner.pipeline.routes().len())
            .finish()
    }
}

impl TestBroker {
    /// A broker running every registered route, with no state.
    pub fn new() -> Result<TestBroker> {
        Self::builder().build()
    }

    /// A builder for state and explicit routes.
    pub fn builder() -> TestBrokerBuilder {
        TestBrokerBuilder::default()
    }

    /// Publishes `value` (text, bytes or `Json(..)`) to `topic` and runs every handler it reaches.
    pub async fn publish(&self, value: impl IntoPayload, topic: &str) -> Result<()> {
        self.send(OutgoingMessage::encode(topic, value)?).await
    }

    /// Publishes a fully specified message (key, headers, partition) and runs every handler it reaches.
    pub async fn send(&self, msg: OutgoingMessage) -> Result<()> {
        self.inner.clone().release().await?;
        self.inner.clone().deliver(msg).await
    }

    /// Pauses and resumes handlers, as [`crate::FastStream::control`] does for a service.
    pub fn control(&self) -> crate::Control {
        self.inner.pipeline.control().clone()
    }

    /// Applies the seeks asked since the last call (the handler gets its stored messages again
    /// from the new position) and handles the held messages of partitions no longer paused, in
    /// order. Every call that publishes does this first.
    pub async fn deliver_resumed(&self) -> Result<()> {
        self.inner.clone().release().await
    }

    /// Publishes each value to `topic` and delivers them together, as if they arrived in one
    /// fetch: a `batch = true` route receives them in batches of up to its `max_records`, other
    /// routes one at a time. Each message gets its own [`Delivery`]; a batch's outputs are in
    /// the outcome of its last message.
    pub async fn publish_batch<V: IntoPayload>(
        &self,
        values: impl IntoIterator<Item = V>,
        topic: &str,
    ) -> Result<()> {
        let outs = values
            .into_iter()
            .map(|v| OutgoingMessage::encode(topic, v))
            .collect::<Result<Vec<_>>>()?;
        self.inner.clone().release().await?;
        self.inner.clone().deliver_many(outs).await
    }

    /// Sends `value` to `topic` as a request (with a `reply_to` topic of its own, as
    /// `Publisher::request` and `KafkaBroker::request` do) and returns the handler's reply.
    pub async fn request(&self, value: impl IntoPayload, topic: &str) -> Result<Message> {
        let msg = OutgoingMessage::encode(topic, value)?;
        self.inner.clone().release().await?;
        self.inner.clone().request(msg).await
    }

    /// Every message published to `topic` so far, in order.
    pub fn published(&self, topic: &str) -> Vec<Message> {
        self.log().topics.get(topic).cloned().unwrap_or_default()
    }

    /// Every delivery so far, in order.
    pub fn deliveries(&self) -> Vec<Delivery> {
        self.log().deliveries.clone()
    }

    /// The deliveries to one handler, named by function name or full path.
    pub fn received(&self, handler: &str) -> Vec<Delivery> {
        self.log()
            .deliveries
            .iter()
            .filter(|d| d.handler == handler || d.handler.rsplit("::").next() == Some(handler))
            .cloned()
            .collect()
    }

    /// The offset a consumer group of `handler` (function name or full path) would commit for
    /// `topic`'s `partition`: the first message not done. A message a manual-ack handler
    /// neither acked nor nacked, and one the failure policy stopped at, are not done. `None`
    /// when the handler never received a message of that partition.
    pub fn committed(&self, handler: &str, topic: &str, partition: i32) -> Option<i64> {
        self.log()
            .progress
            .iter()
            .find(|((h, t, p), _)| {
                (*h == handler || h.rsplit("::").next() == Some(handler))
                    && t == topic
                    && *p == partition
            })
            .and_then(|(_, progress)| progress.position.get())
    }

    /// The deliveries that failed.
    pub fn errors(&self) -> Vec<Delivery> {
        self.log()
            .deliveries
            .iter()
            .filter(|d| d.error().is_some())
            .cloned()
            .collect()
    }

    fn log(&self) -> std::sync::MutexGuard<'_, Log> {
        self.inner.lock()
    }
}

impl Inner {
    fn deliver(self: Arc<Self>, out: OutgoingMessage) -> BoxFuture<'static, Result<()>> {
        Box::pin(async move {
            let depth = DEPTH.try_with(|d| *d).unwrap_or(0);
            DEPTH
                .scope(depth + 1, self.clone().deliver_at_depth(out, depth))
                .await
        })
    }

    async fn deliver_at_depth(self: Arc<Self>, out: OutgoingMessage, depth: usize) -> Result<()> {
        let msg = self.store(out, depth)?;
        for route in self.routes_of(&msg.topic) {
            self.clone().run(route, vec![msg.clone()]).await?;
        }
        Ok(())
    }

    /// Several messages to one topic, handed to batch routes together.
    fn deliver_many(self: Arc<Self>, outs: Vec<OutgoingMessage>) -> BoxFuture<'static, Result<()>> {
        Box::pin(async move {
            let depth = DEPTH.try_with(|d| *d).unwrap_or(0);
            DEPTH
                .scope(depth + 1, async move {
                    let Some(topic) = outs.first().map(|o| o.topic.clone()) else {
                        return Ok(());
                    };
                    let msgs = outs
                        .into_iter()
                        .map(|out| self.store(out, depth))
                        .collect::<Result<Vec<_>>>()?;
                    for route in self.routes_of(&topic) {
                        let size = route.batch().map_or(1, |b| b.max_records());
                        for batch in msgs.chunks(size) {
                            self.clone().run(route, batch.to_vec()).await?;
                        }
                    }
                    Ok(())
                })
                .await
        })
    }

    /// The routes subscribed to `topic`.
    fn routes_of(&self, topic: &str) -> Vec<&'static RouteDef> {
        // Dynamic handlers take the topics they are subscribed to (`Control::subscribe`).
        let subscriptions = self.pipeline.control().watch_subscriptions();
        let subscribed = subscriptions.borrow();
        self.pipeline
            .routes()
            .iter()
            .copied()
            .filter(|r| {
                r.subscribers().iter().any(|s| {
                    s.topics().contains(&topic)
                        || s.topic_matcher("").is_some_and(|m| m.matches(topic))
                }) || self.retry_stage(r, topic).is_some()
                    || subscribed.get(r.name()).is_some_and(|t| t.contains(topic))
            })
            .collect()
    }

    /// Which retry topic of `route` `topic` is (1-based), if it is one.
    fn retry_stage(&self, route: &RouteDef, topic: &str) -> Option<usize> {
        let topics = &self.pipeline.policy(route).retry_topics;
        topics.iter().position(|t| t.topic == topic).map(|i| i + 1)
    }

    /// The retry lane `msg` belongs to for `route`, and the stage it was read at: `None` for a
    /// route without retry topics.
    fn lane(&self, route: &'static RouteDef, msg: &Message) -> Option<(Arc<RetryLane>, usize)> {
        if self.pipeline.policy(route).retry_topics.is_empty() {
            return None;
        }
        let stage = self.retry_stage(route, &msg.topic).unwrap_or(0);
        let main = match stage {
            0 => msg.topic.to_string(),
            _ => msg
                .headers
                .get_str(crate::dlq_header::ORIGINAL_TOPIC)
                .unwrap_or(&msg.topic)
                .to_owned(),
        };
        let mut log = self.lock();
        let lane = log
            .lanes
            .entry((route.name(), main.clone(), msg.partition))
            .or_insert_with(|| {
                let lane = RetryLane::new(main.as_str().into(), msg.partition);
                lane.mark_ready();
                lane
            });
        Some((lane.clone(), stage))
    }

    /// Runs `route` on `msgs` (one message, or a batch for a batch route), records the
    /// deliveries and delivers what it published.
    async fn run(self: Arc<Self>, route: &'static RouteDef, msgs: Vec<Message>) -> Result<()> {
        // A stopped partition stopped the service: nothing is handled any more.
        if let Some(stopped) = self.lock().stop_error() {
            return Err(stopped);
        }
        let msgs = self.hold_paused(route, msgs);
        if msgs.is_empty() {
            return Ok(());
        }
        let mut deliveries = Vec::with_capacity(msgs.len());
        let mut outputs = Vec::new();
        let lane = self.lane(route, &msgs[0]);
        if route.batch().is_some() {
            let outcome = match &lane {
                Some((lane, stage)) => {
                    let msgs = msgs.clone();
                    let pipeline = &self.pipeline;
                    pipeline
                        .handle_batch_in_lane(route, msgs, None, lane, *stage)
                        .await
                }
                None => self.pipeline.handle_batch(route, msgs.clone(), None).await,
            };
            // The last message that was part of the batch carries its outputs.
            let last = msgs
                .iter()
                .rev()
                .map(|m| m.offset)
                .find(|o| outcome.failed.iter().all(|(f, _)| f != o));
            let mut failed = outcome.failed.into_iter().peekable();
            let mut batch_outputs = Some(outcome.outputs);
            for msg in msgs {
                let outcome = match failed.next_if(|(offset, _)| *offset == msg.offset) {
                    Some((_, failed)) => failed,
                    None if Some(msg.offset) == last => {
                        Outcome::Done(batch_outputs.take().unwrap_or_default())
                    }
                    None => Outcome::Done(Vec::new()),
                };
                deliveries.push((msg, outcome));
            }
        } else {
            for msg in msgs {
                let outcome = match &lane {
                    Some((lane, stage)) => {
                        let pipeline = &self.pipeline;
                        pipeline
                            .handle_in_lane(route, msg.clone(), None, lane, *stage)
                            .await
                    }
                    None => self.pipeline.handle(route, msg.clone()).await,
                };
                deliveries.push((msg, outcome));
            }
        }
        // What the Kafka consumer would do with each outcome, in offset order.
        let mut done = Vec::with_capacity(deliveries.len());
        for (msg, outcome) in deliveries {
            let mut log = self.lock();
            let step = log
                .progress(route.name(), &msg)
                .tracker
                .step(msg.offset, outcome.clone());
            let (topic, partition, offset) = (msg.topic.to_string(), msg.partition, msg.offset);
            log.deliveries.push(Delivery {
                handler: route.name(),
                message: msg,
                outcome,
            });
            match step {
                Step::Stop(reason) => {
                    log.stopped = Some(crate::PartitionStop {
                        handler: route.name().to_owned(),
                        topic,
                        partition,
                        offset: Some(offset),
                        reason,
                    });
                    break;
                }
                // Not done: consumed again after a restart.
                Step::Interrupt => {}
                Step::Publish {
                    outputs: out, held, ..
                } => {
                    outputs.extend(out);
                    if !held {
                        done.push((topic, partition, offset));
                    }
                }
            }
        }
        // Outputs of messages before a stop are still published, as on Kafka.
        for out in outputs {
            self.clone().deliver(out).await?;
        }
        let mut log = self.lock();
        for (topic, partition, offset) in done {
            if let Some(progress) = log.progress.get_mut(&(route.name(), topic, partition)) {
                progress.finish(offset);
            }
        }
        match log.stop_error() {
            Some(stopped) => Err(stopped),
            None => Ok(()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Log> {
        self.log.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Holds the messages of `msgs` whose partition is paused for `route`, or has messages
    /// held already (they keep their order); returns the others.
    fn hold_paused(&self, route: &'static RouteDef, msgs: Vec<Message>) -> Vec<Message> {
        let paused = self.pipeline.control().watch(route.name()).borrow().clone();
        let mut log = self.lock();
        let mut free = Vec::with_capacity(msgs.len());
        for msg in msgs {
            let queued = log.held.iter().any(|(r, m)| {
                r.name() == route.name() && m.topic == msg.topic && m.partition == msg.partition
            });
            if queued || paused.covers(&msg.topic, msg.partition) {
                log.held.push((route, msg));
            } else {
                free.push(msg);
            }
        }
        free
    }

    /// Applies the seeks asked since the last look: the handler's position on each partition
    /// it covers moves, and the stored messages from there are handed to it again (held while
    /// paused).
    async fn apply_seeks(self: Arc<Self>) -> Result<()> {
        let asked: Vec<(&'static RouteDef, crate::Seek)> = self
            .seeks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter_mut()
            .filter(|(_, rx)| rx.has_changed().unwrap_or(false))
            .filter_map(|(route, rx)| rx.borrow_and_update().clone().map(|s| (*route, s)))
            .collect();
        for (route, seek) in asked {
            let again: Vec<Message> = {
                let mut log = self.lock();
                let mut again = Vec::new();
                let topics: Vec<String> = log.topics.keys().cloned().collect();
                for topic in topics {
                    let subscribed = route.subscribers().iter().any(|s| {
                        s.topics().contains(&topic.as_str())
                            || s.topic_matcher("").is_some_and(|m| m.matches(&topic))
                    });
                    if !subscribed {
                        continue;
                    }
                    let stored = log.topics[&topic].clone();
                    let partitions: BTreeSet<i32> = stored.iter().map(|m| m.partition).collect();
                    for partition in partitions.into_iter().filter(|p| seek.covers(&topic, *p)) {
                        let of_partition = stored.iter().filter(|m| m.partition == partition);
                        let end = of_partition
                            .clone()
                            .map(|m| m.offset + 1)
                            .max()
                            .unwrap_or(0);
                        let start = match seek.to() {
                            crate::SeekTo::Beginning => 0,
                            crate::SeekTo::Offset(o) => o.min(end),
                            crate::SeekTo::Timestamp(ms) => of_partition
                                .clone()
                                .find(|m| m.timestamp.is_some_and(|t| t >= ms))
                                .map_or(end, |m| m.offset),
                            _ => end,
                        };
                        // What was held for it is handed over again from the new position.
                        log.held.retain(|(r, m)| {
                            r.name() != route.name()
                                || *m.topic != *topic
                                || m.partition != partition
                        });
                        log.progress.insert(
                            (route.name(), topic.clone(), partition),
                            Progress::starting_at(start),
                        );
                        again.extend(of_partition.filter(|m| m.offset >= start).cloned());
                    }
                }
                again
            };
            for msg in again {
                let depth = DEPTH.try_with(|d| *d).unwrap_or(0);
                DEPTH
                    .scope(depth + 1, self.clone().run(route, vec![msg]))
                    .await?;
            }
        }
        Ok(())
    }

    /// Handles, in order, the held messages whose partitions are no longer paused.
    async fn release(self: Arc<Self>) -> Result<()> {
        self.clone().apply_seeks().await?;
        let resumed: Vec<(&'static RouteDef, Message)> = {
            let mut log = self.lock();
            let held = std::mem::take(&mut log.held);
            let (resumed, still) = held.into_iter().partition(|(route, msg)| {
                !self
                    .pipeline
                    .control()
                    .watch(route.name())
                    .borrow()
                    .covers(&msg.topic, msg.partition)
            });
            log.held = still;
            resumed
        };
        for (route, msg) in resumed {
            let depth = DEPTH.try_with(|d| *d).unwrap_or(0);
            DEPTH
                .scope(depth + 1, self.clone().run(route, vec![msg]))
                .await?;
        }
        Ok(())
    }

    /// Appends a published message to its topic's log.
    fn store(&self, mut out: OutgoingMessage, depth: usize) -> Result<Message> {
        // Like a real publisher, every message gets a correlation id.
        if out.headers.get(header::CORRELATION_ID).is_none() {
            out.headers
                .insert(header::CORRELATION_ID, new_correlation_id());
        }
        if depth >= MAX_DEPTH {
            return Err(Error::PublishLoop {
                topic: out.topic.to_string(),
                depth,
            });
        }
        let msg = {
            let mut log = self.lock();
            let partition = out.partition.unwrap_or(0);
            let next = log
                .next_offsets
                .entry((out.topic.to_string(), partition))
                .or_default();
            let offset = *next;
            *next += 1;
            let entries = log.topics.entry(out.topic.to_string()).or_default();
            let msg = Message {
                topic: out.topic,
                partition,
                offset,
                key: out.key,
                headers: out.headers,
                timestamp: Some(out.timestamp.unwrap_or_else(now_millis)),
                payload: out.payload,
            };
            entries.push(msg.clone());
            msg
        };
        Ok(msg)
    }
}

fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Publishing from inside handlers run by the test broker.
struct Sink(Weak<Inner>);

impl Publish for Sink {
    fn send(&self, msg: OutgoingMessage) -> BoxFuture<'_, Result<()>> {
        let inner = self.0.upgrade();
        Box::pin(async move {
            match inner {
                Some(inner) => inner.deliver(msg).await,
                None => Ok(()),
            }
        })
    }

    fn request(
        &self,
        msg: OutgoingMessage,
        _timeout: std::time::Duration,
    ) -> BoxFuture<'_, Result<Message>> {
        let inner = self.0.upgrade();
        Box::pin(async move {
            match inner {
                Some(inner) => inner.request(msg).await,
                None => Err(Error::Transport("the test broker is gone".into())),
            }
        })
    }
}

impl Inner {
    /// Delivers `msg` with a `reply_to` topic of its own and returns the first reply published
    /// there (handlers run to completion during delivery, so it is there or never comes).
    async fn request(self: Arc<Self>, mut msg: OutgoingMessage) -> Result<Message> {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let reply_topic = format!("faststream.test-broker.replies.{n}");
        let topic = msg.topic.clone();
        msg.headers.insert(header::REPLY_TO, reply_topic.clone());
        if msg.headers.get(header::CORRELATION_ID).is_none() {
            msg.headers
                .insert(header::CORRELATION_ID, new_correlation_id());
        }
        self.clone().deliver(msg).await?;
        let log = self.lock();
        log.topics
            .get(&reply_topic)
            .and_then(|replies| replies.first().cloned())
            .ok_or_else(|| {
                Error::Transport(
                    format!("no reply to the request sent to {topic:?}: no handler answered")
                        .into(),
                )
            })
    }
}
