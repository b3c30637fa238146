//! Routes: the descriptors the macros emit, their registry, and startup validation.

use std::any::TypeId;
use std::collections::BTreeMap;
use std::fmt;

use crate::asyncapi::{RouteSchemas, SchemaGen, SchemasFn};
use crate::extract::StateMap;
use crate::handler::{BatchHandlerFn, HandlerFn};
use crate::policy::PolicyDef;

/// Where a consumer with no committed offset starts reading.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum OffsetReset {
    /// From the oldest record still kept.
    Earliest,
    /// Only records produced after the consumer started (Kafka's default).
    #[default]
    Latest,
}

/// How a consumer group's leader spreads partitions over the members.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Assignor {
    /// Per topic, consecutive ranges of partitions to members in member-id order (Kafka's
    /// `range`, the default).
    #[default]
    Range,
    /// All partitions of all topics dealt to the members in turn (Kafka's `roundrobin`).
    RoundRobin,
}

impl Assignor {
    /// The protocol name members announce in JoinGroup.
    pub fn protocol_name(self) -> &'static str {
        match self {
            Assignor::Range => "range",
            Assignor::RoundRobin => "roundrobin",
        }
    }
}

/// Consumer-group timings of a subscriber, in milliseconds, each if set on the route.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GroupTimings {
    /// `session_timeout_ms`.
    pub session_timeout_ms: Option<u32>,
    /// `heartbeat_interval_ms`.
    pub heartbeat_interval_ms: Option<u32>,
    /// `rebalance_timeout_ms`.
    pub rebalance_timeout_ms: Option<u32>,
    /// `commit_interval_ms`.
    pub commit_interval_ms: Option<u32>,
}

impl GroupTimings {
    /// Each timing set here, else the one of `other`.
    pub fn or(self, other: GroupTimings) -> GroupTimings {
        GroupTimings {
            session_timeout_ms: self.session_timeout_ms.or(other.session_timeout_ms),
            heartbeat_interval_ms: self.heartbeat_interval_ms.or(other.heartbeat_interval_ms),
            rebalance_timeout_ms: self.rebalance_timeout_ms.or(other.rebalance_timeout_ms),
            commit_interval_ms: self.commit_interval_ms.or(other.commit_interval_ms),
        }
    }
}

/// One `#[subscriber(...)]`: topics and consumer options.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SubscriberDef {
    topics: &'static [&'static str],
    group_id: Option<&'static str>,
    auto_offset_reset: OffsetReset,
    partitions: Option<&'static [i32]>,
    assignor: Option<Assignor>,
    session_timeout_ms: Option<u32>,
    heartbeat_interval_ms: Option<u32>,
    rebalance_timeout_ms: Option<u32>,
    commit_interval_ms: Option<u32>,
}

impl SubscriberDef {
    /// Subscribes to `topics` with default options.
    pub const fn new(topics: &'static [&'static str]) -> Self {
        Self {
            topics,
            group_id: None,
            auto_offset_reset: OffsetReset::Latest,
            partitions: None,
            assignor: None,
            session_timeout_ms: None,
            heartbeat_interval_ms: None,
            rebalance_timeout_ms: None,
            commit_interval_ms: None,
        }
    }

    /// Reads only these partitions, without a consumer group (FastStream's `partitions=`).
    pub const fn partitions(mut self, partitions: &'static [i32]) -> Self {
        self.partitions = Some(partitions);
        self
    }

    /// Sets the partition assignor of the group.
    pub const fn assignor(mut self, assignor: Assignor) -> Self {
        self.assignor = Some(assignor);
        self
    }

    /// Sets the group session timeout.
    pub const fn session_timeout_ms(mut self, ms: u32) -> Self {
        self.session_timeout_ms = Some(ms);
        self
    }

    /// Sets the heartbeat interval.
    pub const fn heartbeat_interval_ms(mut self, ms: u32) -> Self {
        self.heartbeat_interval_ms = Some(ms);
        self
    }

    /// Sets the rebalance timeout.
    pub const fn rebalance_timeout_ms(mut self, ms: u32) -> Self {
        self.rebalance_timeout_ms = Some(ms);
        self
    }

    /// Sets how often done offsets are committed.
    pub const fn commit_interval_ms(mut self, ms: u32) -> Self {
        self.commit_interval_ms = Some(ms);
        self
    }

    /// Explicitly assigned partitions, if any.
    pub fn assigned_partitions(&self) -> Option<&'static [i32]> {
        self.partitions
    }

    /// The assignor, if set on the route.
    pub fn group_assignor(&self) -> Option<Assignor> {
        self.assignor
    }

    /// The consumer-group timings the route sets (each `None` where it keeps the default).
    pub fn group_timings(&self) -> GroupTimings {
        GroupTimings {
            session_timeout_ms: self.session_timeout_ms,
            heartbeat_interval_ms: self.heartbeat_interval_ms,
            rebalance_timeout_ms: self.rebalance_timeout_ms,
            commit_interval_ms: self.commit_interval_ms,
        }
    }

    /// Sets the consumer group.
    pub const fn group_id(mut self, group_id: &'static str) -> Self {
        self.group_id = Some(group_id);
        self
    }

    /// Sets where to start without a committed offset.
    pub const fn auto_offset_reset(mut self, reset: OffsetReset) -> Self {
        self.auto_offset_reset = reset;
        self
    }

    /// The subscribed topics.
    pub fn topics(&self) -> &'static [&'static str] {
        self.topics
    }

    /// The consumer group, if any.
    pub fn group(&self) -> Option<&'static str> {
        self.group_id
    }

    /// Where to start without a committed offset.
    pub fn offset_reset(&self) -> OffsetReset {
        self.auto_offset_reset
    }
}

/// A `State<T>` a handler needs: checked at startup against what the app provides.
#[derive(Clone, Copy, Debug)]
pub struct StateReq {
    /// The state type.
    pub type_id: TypeId,
    /// Its name, for the error message.
    pub type_name: &'static str,
}

impl StateReq {
    /// The requirement for `State<T>`.
    pub fn of<T: 'static>() -> StateReq {
        StateReq {
            type_id: TypeId::of::<T>(),
            type_name: std::any::type_name::<T>(),
        }
    }
}

/// How a `batch = true` route collects its batches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchDef {
    max_records: u32,
    timeout_ms: u32,
}

impl BatchDef {
    /// Batches of at most `max_records` messages, each delivered at most `timeout_ms` after its
    /// first message arrived.
    pub const fn new(max_records: u32, timeout_ms: u32) -> Self {
        Self {
            max_records,
            timeout_ms,
        }
    }

    /// The most messages in one batch (`max_records`, default 500).
    pub fn max_records(&self) -> usize {
        self.max_records.max(1) as usize
    }

    /// How long a batch waits to fill up after its first message (`batch_timeout_ms`,
    /// default 200 ms; 0 hands over whatever has arrived at once, as FastStream does).
    pub fn timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.timeout_ms.into())
    }
}

/// The generated function a route calls: one message at a time, or batches.
#[doc(hidden)]
#[derive(Clone, Copy, Debug)]
pub enum RouteHandler {
    /// `fn(Message) -> reply`.
    One(HandlerFn),
    /// `fn(Vec<Message>) -> replies`, with the batch settings.
    Batch(BatchHandlerFn, BatchDef),
}

/// One handler function with everything its attributes said: a route.
#[derive(Debug)]
pub struct RouteDef {
    name: &'static str,
    file: &'static str,
    line: u32,
    subscribers: &'static [SubscriberDef],
    publishers: &'static [&'static str],
    states: &'static [fn() -> StateReq],
    policy: PolicyDef,
    pub(crate) handler: RouteHandler,
    schemas: Option<SchemasFn>,
    middlewares: crate::middleware::RouteMiddlewares,
}

impl RouteDef {
    #[doc(hidden)]
    #[allow(clippy::too_many_arguments)] // called only by generated code
    pub const fn __new(
        name: &'static str,
        file: &'static str,
        line: u32,
        subscribers: &'static [SubscriberDef],
        publishers: &'static [&'static str],
        states: &'static [fn() -> StateReq],
        policy: PolicyDef,
        handler: RouteHandler,
    ) -> Self {
        Self {
            name,
            file,
            line,
            subscribers,
            publishers,
            states,
            policy,
            handler,
            schemas: None,
            middlewares: crate::middleware::RouteMiddlewares(&[]),
        }
    }

    #[doc(hidden)]
    pub const fn __with_middlewares(
        mut self,
        middlewares: &'static [&'static dyn crate::Middleware],
    ) -> Self {
        self.middlewares = crate::middleware::RouteMiddlewares(middlewares);
        self
    }

    /// Its own middlewares (inside the app's), in the order its attribute lists them.
    pub fn middlewares(&self) -> &'static [&'static dyn crate::Middleware] {
        self.middlewares.0
    }

    #[doc(hidden)]
    pub const fn __with_schemas(mut self, schemas: SchemasFn) -> Self {
        self.schemas = Some(schemas);
        self
    }

    /// What its body and return value look like on the wire (schemas are collected in `gen`).
    pub fn schemas(&self, gen: &mut SchemaGen) -> RouteSchemas {
        self.schemas.map(|f| f(gen)).unwrap_or_default()
    }

    /// The batch settings of a `batch = true` route (its handler takes a `Vec` of messages).
    pub fn batch(&self) -> Option<BatchDef> {
        match self.handler {
            RouteHandler::One(_) => None,
            RouteHandler::Batch(_, def) => Some(def),
        }
    }

    /// The failure-policy settings its attribute wrote.
    pub fn policy(&self) -> &PolicyDef {
        &self.policy
    }

    /// The handler's path, `crate::module::function`.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The handler's function name (the last segment of [`name`](Self::name)).
    pub fn fn_name(&self) -> &'static str {
        self.name.rsplit("::").next().unwrap_or(self.name)
    }

    /// Where the handler is defined, `file:line`.
    pub fn location(&self) -> String {
        format!("{}:{}", self.file, self.line)
    }

    /// Its subscriptions.
    pub fn subscribers(&self) -> &'static [SubscriberDef] {
        self.subscribers
    }

    /// The topics its return value is published to.
    pub fn publishers(&self) -> &'static [&'static str] {
        self.publishers
    }

    /// The `State<T>` types it needs.
    pub fn states(&self) -> impl Iterator<Item = StateReq> {
        self.states.iter().map(|f| f())
    }
}

/// How the macros register a route with `inventory`.
#[doc(hidden)]
#[derive(Debug)]
pub struct RouteRef(pub &'static RouteDef);

inventory::collect!(RouteRef);

/// The routes an app or test broker runs: `explicit` ones, or every registered one, validated
/// against the state it was given.
pub(crate) fn resolve_routes(
    explicit: Option<Vec<&'static RouteDef>>,
    state: &StateMap,
) -> crate::Result<Vec<&'static RouteDef>> {
    let routes = explicit.unwrap_or_else(registered_routes);
    validate(&routes, state).map_err(crate::Error::InvalidRoutes)?;
    Ok(routes)
}

/// Every route registered with `#[subscriber]` in the binary, sorted by handler path.
pub fn registered_routes() -> Vec<&'static RouteDef> {
    let mut routes: Vec<&'static RouteDef> = inventory::iter::<RouteRef>().map(|r| r.0).collect();
    routes.sort_by_key(|r| (r.name, r.file, r.line));
    routes
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

fn describe(route: &RouteDef) -> String {
    format!("{} ({})", route.name, route.location())
}

/// Checks the routes against each other and against the provided state; returns every problem.
pub fn validate(routes: &[&'static RouteDef], state: &StateMap) -> Result<(), Vec<RouteProblem>> {
    let mut problems = Vec::new();
    if routes.is_empty() {
        problems.push(RouteProblem::NoRoutes);
    }
    let mut seen: BTreeMap<(&str, &str), &RouteDef> = BTreeMap::new();
    for route in routes {
        for sub in route.subscribers {
            let Some(group) = sub.group_id else { continue };
            for topic in sub.topics {
                if let Some(first) = seen.insert((topic, group), route) {
                    problems.push(RouteProblem::DuplicateSubscription {
                        topic: topic.to_string(),
                        group: group.to_string(),
                        first: describe(first),
                        second: describe(route),
                    });
                }
            }
        }
        for req in route.states() {
            if !state.contains(req.type_id) {
                problems.push(RouteProblem::MissingState {
                    handler: describe(route),
                    type_name: req.type_name,
                });
            }
        }
        for (i, topic) in route.publishers.iter().enumerate() {
            if route.publishers[..i].contains(topic) {
                problems.push(RouteProblem::DuplicatePublisher {
                    handler: describe(route),
                    topic: topic.to_string(),
                });
            }
        }
    }
    if let Err(mismatches) = check_contracts(routes) {
        problems.extend(mismatches);
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

/// Checks the topic contracts between `routes`: wherever one handler publishes to a topic
/// another subscribes to, the subscriber's body type must accept what the publisher returns
/// (compared by JSON Schema where both types derive `schemars::JsonSchema`, with the
/// `schemars` feature; other payloads pass). Runs at startup with the other checks; as a
/// one-line test of your own:
///
/// ```no_run
/// # fn check() {
/// faststream_core::check_contracts(&faststream_core::registered_routes()).unwrap();
/// # }
/// ```
pub fn check_contracts(routes: &[&'static RouteDef]) -> Result<(), Vec<RouteProblem>> {
    let problems: Vec<RouteProblem> = crate::asyncapi::contract_mismatches(routes)
        .into_iter()
        .map(
            |(topic, publisher, subscriber, reason)| RouteProblem::ContractMismatch {
                topic,
                publisher: describe(publisher),
                subscriber: describe(subscriber),
                reason,
            },
        )
        .collect();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}
