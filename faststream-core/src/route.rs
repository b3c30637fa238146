//! Routes: the descriptors the macros emit, their registry, and startup validation.

use std::any::TypeId;
use std::fmt;

use crate::error::HandlerError;
use crate::extract::Context;
use crate::message::Message;
use crate::outcome::Reply;
use crate::policy::PolicyDef;
use crate::publish::BoxFuture;
use crate::schema::{RouteSchemas, SchemaGen, SchemasFn};

/// What a generated handler returns.
pub type HandlerResult = Result<Reply, HandlerError>;

/// The type-erased handler the macros generate for each route.
pub type HandlerFn = fn(Message, Context) -> BoxFuture<'static, HandlerResult>;

/// The type-erased handler the macros generate for a `batch = true` route.
pub type BatchHandlerFn = fn(Vec<Message>, Context) -> BoxFuture<'static, BatchResult>;

/// What a generated batch handler returns.
#[derive(Debug)]
pub struct BatchResult {
    /// Messages that could not be decoded (index in the batch it was given, why); the handler
    /// ran without them.
    pub undecodable: Vec<(usize, HandlerError)>,
    /// One reply per message to publish, or why the batch failed. `Ok` and empty without a
    /// call when no message could be decoded.
    pub replies: Result<Vec<Reply>, HandlerError>,
}

/// Decodes each message of a batch with `decode`: the values, and the messages that failed
/// (index, error). Used by generated batch handlers.
pub fn decode_batch<T>(
    msgs: &[Message],
    decode: impl Fn(&Message) -> Result<T, HandlerError>,
) -> (Vec<T>, Vec<(usize, HandlerError)>) {
    let mut values = Vec::with_capacity(msgs.len());
    let mut failed = Vec::new();
    for (i, msg) in msgs.iter().enumerate() {
        match decode(msg) {
            Ok(v) => values.push(v),
            Err(e) => failed.push((i, e)),
        }
    }
    (values, failed)
}

/// Why a name cannot be a Kafka topic: the broker's rule is 1 to 249 characters of ASCII
/// letters, digits, `.`, `_` and `-`, and not `.` or `..`. The one rule of the project: the
/// macros check the names written in `#[subscriber]` and `#[publisher]` with it at compile time
/// (it is a `const fn`), the Kafka transport checks the names it uses (with their prefix).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TopicNameProblem {
    /// The name is empty.
    Empty,
    /// The name is longer than 249 characters.
    TooLong {
        /// Its length.
        len: usize,
    },
    /// The name is `.` or `..`.
    Dots,
    /// The name holds a character Kafka does not allow.
    Character(char),
}

impl TopicNameProblem {
    /// The problem with `name`, if any.
    pub const fn of(name: &str) -> Option<Self> {
        let b = name.as_bytes();
        if b.is_empty() {
            return Some(Self::Empty);
        }
        if b.len() > 249 {
            return Some(Self::TooLong { len: b.len() });
        }
        if (b.len() == 1 && b[0] == b'.') || (b.len() == 2 && b[0] == b'.' && b[1] == b'.') {
            return Some(Self::Dots);
        }
        let mut i = 0;
        while i < b.len() {
            let c = b[i];
            if !(c.is_ascii_alphanumeric() || c == b'.' || c == b'_' || c == b'-') {
                return Some(Self::Character(char_at(b, i)));
            }
            i += 1;
        }
        None
    }
}

/// The character of the UTF-8 text `b` that starts at byte `i`.
const fn char_at(b: &[u8], i: usize) -> char {
    let lead = b[i] as u32;
    let (len, mut code) = match lead {
        0x00..=0x7f => (1, lead),
        0xc0..=0xdf => (2, lead & 0x1f),
        0xe0..=0xef => (3, lead & 0x0f),
        _ => (4, lead & 0x07),
    };
    let mut k = 1;
    while k < len && i + k < b.len() {
        code = (code << 6) | (b[i + k] as u32 & 0x3f);
        k += 1;
    }
    match char::from_u32(code) {
        Some(c) => c,
        None => char::REPLACEMENT_CHARACTER,
    }
}

impl fmt::Display for TopicNameProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => f.write_str("a topic name cannot be empty"),
            Self::TooLong { len } => {
                write!(f, "it is {len} characters long; Kafka allows at most 249")
            }
            Self::Dots => f.write_str("`.` and `..` cannot be topic names"),
            Self::Character(c) => write!(
                f,
                "it contains {c:?}; Kafka allows only ASCII letters, digits, '.', '_' and '-'"
            ),
        }
    }
}

/// Where a consumer with no committed offset starts reading.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum OffsetReset {
    /// From the oldest record still kept.
    Earliest,
    /// Only records produced after the consumer started (Kafka's default).
    #[default]
    Latest,
}

/// How a consumer group's leader spreads partitions over the members. Exhaustive on purpose:
/// the transport must implement every assignor, so a new one is a deliberate breaking change.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Assignor {
    /// Per topic, consecutive ranges of partitions to members in member-id order (Kafka's
    /// `range`, the default).
    #[default]
    Range,
    /// All partitions of all topics dealt to the members in turn (Kafka's `roundrobin`).
    RoundRobin,
    /// Kafka's `cooperative-sticky` (KIP-429): members keep the partitions that stay theirs
    /// through a rebalance, and only the partitions that move pause (the classic protocol's
    /// incremental rebalancing; Java and librdkafka members with `cooperative-sticky` share
    /// a group with ours).
    CooperativeSticky,
    /// The broker's `uniform` assignor of the consumer group protocol
    /// ([`GroupProtocol::Consumer`], its default there): partitions spread evenly, each
    /// member keeping what it can. Not a classic-protocol assignor: startup refuses it there.
    Uniform,
}

impl Assignor {
    /// The protocol name members announce in JoinGroup.
    pub fn protocol_name(self) -> &'static str {
        match self {
            Assignor::Range => "range",
            Assignor::RoundRobin => "roundrobin",
            Assignor::CooperativeSticky => "cooperative-sticky",
            Assignor::Uniform => "uniform",
        }
    }
}

/// Which consumer group protocol a group's members speak.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum GroupProtocol {
    /// The classic protocol (JoinGroup, SyncGroup, Heartbeat): the group's leader assigns, and
    /// every rebalance stops every member's partitions until the group joined again. The
    /// default, as in the Java client.
    #[default]
    Classic,
    /// The consumer group protocol of KIP-848 (Apache Kafka 4.0 and later): the broker
    /// assigns, members heartbeat with `ConsumerGroupHeartbeat`, and a rebalance moves only
    /// the partitions that change owner; the others are never paused.
    Consumer,
}

impl GroupProtocol {
    /// The name of the protocol, as Kafka's `group.protocol` spells it.
    pub fn name(self) -> &'static str {
        match self {
            GroupProtocol::Classic => "classic",
            GroupProtocol::Consumer => "consumer",
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

/// Which topic names a pattern subscription takes: the whole name matches, and internal topics
/// (names starting with `__`, such as `__consumer_offsets`) are left out, as the Java
/// consumer leaves them out.
#[derive(Clone, Debug)]
pub struct TopicMatcher(Option<regex_lite::Regex>);

impl TopicMatcher {
    /// Whether the subscription takes `topic`.
    pub fn matches(&self, topic: &str) -> bool {
        !topic.starts_with("__") && self.0.as_ref().is_some_and(|r| r.is_match(topic))
    }
}

/// One `#[subscriber(...)]`: topics and consumer options.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SubscriberDef {
    topics: &'static [&'static str],
    pattern: Option<&'static str>,
    group_id: Option<&'static str>,
    auto_offset_reset: OffsetReset,
    partitions: Option<&'static [i32]>,
    assignor: Option<Assignor>,
    group_protocol: Option<GroupProtocol>,
    session_timeout_ms: Option<u32>,
    heartbeat_interval_ms: Option<u32>,
    rebalance_timeout_ms: Option<u32>,
    commit_interval_ms: Option<u32>,
    dynamic: bool,
}

impl SubscriberDef {
    /// Subscribes to `topics` with default options.
    pub const fn new(topics: &'static [&'static str]) -> Self {
        Self {
            topics,
            pattern: None,
            group_id: None,
            auto_offset_reset: OffsetReset::Latest,
            partitions: None,
            assignor: None,
            group_protocol: None,
            session_timeout_ms: None,
            heartbeat_interval_ms: None,
            rebalance_timeout_ms: None,
            commit_interval_ms: None,
            dynamic: false,
        }
    }

    /// Takes its topics while the service runs ([`Control::subscribe`](crate::Control::subscribe)),
    /// none at startup.
    pub const fn dynamic(mut self) -> Self {
        self.dynamic = true;
        self
    }

    /// Whether the subscription takes its topics while the service runs.
    pub fn is_dynamic(&self) -> bool {
        self.dynamic
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

    /// Sets the consumer group protocol of the group.
    pub const fn group_protocol(mut self, protocol: GroupProtocol) -> Self {
        self.group_protocol = Some(protocol);
        self
    }

    /// The group protocol, if set on the route.
    pub fn protocol(&self) -> Option<GroupProtocol> {
        self.group_protocol
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

    /// The subscribed topics (those named; see [`Self::pattern`] for the others).
    pub fn topics(&self) -> &'static [&'static str] {
        self.topics
    }

    /// Subscribes also to every topic whose name (after the topic prefix) matches the regular
    /// expression `pattern` as a whole, including topics created while the service runs.
    pub const fn pattern(mut self, pattern: &'static str) -> Self {
        self.pattern = Some(pattern);
        self
    }

    /// The topic pattern, if the subscription has one.
    pub fn topic_pattern(&self) -> Option<&'static str> {
        self.pattern
    }

    /// The pattern as a matcher of whole topic names carrying `prefix` (the app's topic
    /// prefix); `None` without a pattern.
    pub fn topic_matcher(&self, prefix: &str) -> Option<TopicMatcher> {
        let pattern = self.pattern?;
        let full = format!("^{}(?:{pattern})$", regex_lite::escape(prefix));
        // The macro checked the pattern; a hand-built descriptor's bad pattern matches nothing.
        Some(TopicMatcher(regex_lite::Regex::new(&full).ok()))
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

/// Every route registered with `#[subscriber]` in the binary, sorted by handler path.
pub fn registered_routes() -> Vec<&'static RouteDef> {
    let mut routes: Vec<&'static RouteDef> = inventory::iter::<RouteRef>().map(|r| r.0).collect();
    routes.sort_by_key(|r| (r.name, r.file, r.line));
    routes
}

#[cfg(test)]
mod tests {
    #[test]
    fn topic_names_follow_kafkas_rule() {
        use super::TopicNameProblem as P;
        assert_eq!(P::of("in_topic"), None);
        assert_eq!(P::of("a.b-c_D9"), None);
        assert_eq!(P::of("..."), None);
        assert_eq!(P::of(&"x".repeat(249)), None);
        assert_eq!(P::of(&"x".repeat(250)), Some(P::TooLong { len: 250 }));
        assert_eq!(P::of(""), Some(P::Empty));
        assert_eq!(P::of("."), Some(P::Dots));
        assert_eq!(P::of(".."), Some(P::Dots));
        assert_eq!(P::of("in topic"), Some(P::Character(' ')));
        assert_eq!(P::of("caf\u{e9}"), Some(P::Character('\u{e9}')));
        assert_eq!(P::of("a\u{1f600}"), Some(P::Character('\u{1f600}')));
        // Usable at compile time.
        const BAD: Option<P> = P::of("a/b");
        assert_eq!(BAD, Some(P::Character('/')));
    }
}
