//! What happens when handling a message fails: retries with backoff, the dead-letter topic, what
//! to do without one, and when a message counts as acknowledged.
//!
//! | Failure | Default action |
//! |---|---|
//! | undecodable message (not JSON, missing or mistyped field, empty, tombstone, bad UTF-8, too large, unknown content type) | dead-letter at once (retrying cannot help) |
//! | handler `Err`, panic, timeout, `Acker::nack` | retry with backoff, then dead-letter |
//! | handler returns [`Failure`] | as the failure says: retry, dead-letter now, skip, or stop |
//!
//! "Dead-letter" publishes the original message (key, headers and payload kept) to the route's
//! `dlq` topic with headers describing the failure ([`dlq_header`]), then counts the message as
//! done. Without a `dlq` topic the message is logged at error level and skipped, or the
//! partition's consumer stops (`on_failure = "stop"`), by configuration.

use std::fmt;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Names of the headers a dead-lettered message carries.
pub mod dlq_header {
    /// Topic the message was read from.
    pub const ORIGINAL_TOPIC: &str = "x-faststream-original-topic";
    /// Its partition.
    pub const ORIGINAL_PARTITION: &str = "x-faststream-original-partition";
    /// Its offset (the first offset, when a whole range of records could not be read).
    pub const ORIGINAL_OFFSET: &str = "x-faststream-original-offset";
    /// The last offset of a range of records that could not be read (kind `fetch`); the
    /// payload is then the raw record batch.
    pub const ORIGINAL_LAST_OFFSET: &str = "x-faststream-original-last-offset";
    /// The kind of failure: `decode`, `handler`, `panic`, `timeout`, `nack`, `encode`,
    /// `rejected`, `fetch` (unreadable record batch), `publish` (an output was refused).
    pub const ERROR_KIND: &str = "x-faststream-error-kind";
    /// The error message.
    pub const ERROR: &str = "x-faststream-error";
    /// The handler's path.
    pub const HANDLER: &str = "x-faststream-handler";
    /// How many times the handler ran.
    pub const ATTEMPTS: &str = "x-faststream-attempts";
    /// When it was dead-lettered, milliseconds since the epoch.
    pub const FAILED_AT: &str = "x-faststream-failed-at";
}

/// What to do with a failed message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FailureAction {
    /// Retry with backoff; when retries run out, dead-letter.
    Retry,
    /// Dead-letter now, without retrying.
    DeadLetter,
    /// Log and go on, without retrying or dead-lettering.
    Skip,
    /// Stop the partition's consumer without counting the message as done: it is consumed
    /// again after a restart or rebalance.
    Stop,
}

/// An error a handler returns to choose what happens to the message:
/// `Result<T, Failure>`; `?` converts any other error into `Failure::retry`.
///
/// ```
/// use faststream_core::Failure;
/// fn check(amount: i64) -> Result<(), Failure> {
///     if amount < 0 {
///         return Err(Failure::dead_letter(format!("negative amount {amount}: will never succeed")));
///     }
///     Ok(())
/// }
/// # assert!(check(-1).is_err());
/// ```
#[derive(Clone, Debug)]
pub struct Failure {
    action: FailureAction,
    message: String,
    /// The error it was made from (with `?`, or [`Failure::with_source`]).
    source: Option<std::sync::Arc<dyn std::error::Error + Send + Sync>>,
}

/// Failures are equal when they ask for the same and say the same (their sources are not
/// compared).
impl PartialEq for Failure {
    fn eq(&self, other: &Self) -> bool {
        self.action == other.action && self.message == other.message
    }
}

impl Eq for Failure {}

impl Failure {
    /// Retry per the route's policy, then dead-letter (what any other error does).
    pub fn retry(message: impl fmt::Display) -> Self {
        Self::new(FailureAction::Retry, message)
    }

    /// This will never succeed: dead-letter now without burning retries.
    pub fn dead_letter(message: impl fmt::Display) -> Self {
        Self::new(FailureAction::DeadLetter, message)
    }

    /// Log and go on: the message counts as done.
    pub fn skip(message: impl fmt::Display) -> Self {
        Self::new(FailureAction::Skip, message)
    }

    /// Stop this partition's consumer; the message is not counted as done.
    pub fn stop(message: impl fmt::Display) -> Self {
        Self::new(FailureAction::Stop, message)
    }

    fn new(action: FailureAction, message: impl fmt::Display) -> Self {
        Self {
            action,
            message: message.to_string(),
            source: None,
        }
    }

    /// The same failure, caused by `error` (kept as its source: logs show the message, code
    /// that handles the failure can walk the chain, for example to downcast to your error).
    pub fn with_source(mut self, error: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(std::sync::Arc::new(error));
        self
    }

    /// The error it was made from, if any.
    pub fn source(&self) -> Option<&(dyn std::error::Error + Send + Sync + 'static)> {
        self.source.as_deref()
    }

    /// What it asks for.
    pub fn action(&self) -> FailureAction {
        self.action
    }

    /// Its message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

// Not `std::error::Error`, so that any error converts into it with `?` (as `anyhow::Error` does);
// the error is kept as the failure's source.
impl<E: std::error::Error + Send + Sync + 'static> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure::retry(&e).with_source(e)
    }
}

/// When a message counts as acknowledged (its offset may be committed).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AckMode {
    /// When the handler finished and its outputs were acknowledged (at-least-once).
    #[default]
    AfterProcessing,
    /// On receipt, committed before the handler runs (at-most-once).
    First,
    /// When the handler calls [`Acker::ack`]; `nack` asks for redelivery after backoff.
    Manual,
}

/// Retries with exponential backoff.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Retries after the first attempt (0: none).
    pub max_retries: u32,
    /// Wait before the first retry.
    pub initial_backoff: Duration,
    /// Upper bound of the wait.
    pub max_backoff: Duration,
    /// Growth of the wait per retry.
    pub multiplier: f64,
    /// Randomise each wait between half and all of it, so instances do not retry in step.
    pub jitter: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_retries: 3,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            multiplier: 2.0,
            jitter: true,
        }
    }
}

impl RetryPolicy {
    /// The wait before retry number `retry` (1-based).
    pub fn backoff(&self, retry: u32) -> Duration {
        let factor = self
            .multiplier
            .max(1.0)
            .powi(retry.saturating_sub(1) as i32);
        let wait = self.initial_backoff.mul_f64(factor).min(self.max_backoff);
        if self.jitter {
            wait.mul_f64(0.5 + 0.5 * jitter_fraction())
        } else {
            wait
        }
    }
}

fn jitter_fraction() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0);
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// A route's failure policy: defaults from the app, overridden by the route's attribute.
#[derive(Clone, Debug, PartialEq)]
pub struct FailurePolicy {
    /// Retries of retryable failures.
    pub retry: RetryPolicy,
    /// Dead-letter topic.
    pub dlq: Option<String>,
    /// Without a dead-letter topic: skip (log and go on) or stop the partition's consumer.
    pub without_dlq: FailureAction,
    /// Handler time limit; exceeding it is a failure (kind `timeout`).
    pub timeout: Option<Duration>,
    /// Largest payload accepted; larger ones fail to decode (kind `decode`).
    pub max_message_bytes: Option<usize>,
    /// When a message counts as acknowledged.
    pub ack: AckMode,
    /// Messages of one partition handled at once (default 1: one at a time, in offset order).
    /// Above 1, messages with the same key are still handled one at a time in offset order;
    /// different keys, and keyless messages, run in parallel. The committed position only
    /// passes a contiguous run of finished messages.
    pub concurrency: u32,
    /// Whether a `reply_to` header on an incoming message is ignored (by default the return
    /// value is also published there, as FastStream does).
    pub no_reply: bool,
    /// Delay topics a failed message moves through before the dead-letter topic, its
    /// partition going on meanwhile and later messages with its key following it (see
    /// [`RetryLane`](crate::RetryLane)). Empty: failures are retried in place only.
    pub retry_topics: Vec<crate::RetryTopic>,
    /// Exactly-once read-process-write: the message's outputs (its return value, what the
    /// handler publishes, dead-letter and retry-topic copies) and its offset are committed in
    /// one Kafka transaction. Publishes made inside the handler are held until it succeeds
    /// (those of a failed attempt are dropped). Needs a consumer group.
    pub exactly_once: bool,
}

impl Default for FailurePolicy {
    fn default() -> Self {
        Self {
            retry: RetryPolicy::default(),
            dlq: None,
            without_dlq: FailureAction::Skip,
            timeout: None,
            max_message_bytes: None,
            ack: AckMode::AfterProcessing,
            concurrency: 1,
            no_reply: false,
            retry_topics: Vec::new(),
            exactly_once: false,
        }
    }
}

/// A route's own policy settings, as its attribute wrote them (each overrides the default).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyDef {
    retry: Option<u32>,
    retry_backoff_ms: Option<u32>,
    retry_max_backoff_ms: Option<u32>,
    dlq: Option<&'static str>,
    on_failure: Option<FailureAction>,
    timeout_ms: Option<u32>,
    max_message_bytes: Option<u32>,
    ack: Option<AckMode>,
    concurrency: Option<u32>,
    no_reply: Option<bool>,
    retry_topics: Option<&'static [(&'static str, u64)]>,
    exactly_once: Option<bool>,
}

impl PolicyDef {
    /// No overrides.
    pub const fn new() -> Self {
        Self {
            retry: None,
            retry_backoff_ms: None,
            retry_max_backoff_ms: None,
            dlq: None,
            on_failure: None,
            timeout_ms: None,
            max_message_bytes: None,
            ack: None,
            concurrency: None,
            no_reply: None,
            retry_topics: None,
            exactly_once: None,
        }
    }

    /// Retries after the first attempt.
    pub const fn retry(mut self, n: u32) -> Self {
        self.retry = Some(n);
        self
    }

    /// Initial backoff.
    pub const fn retry_backoff_ms(mut self, ms: u32) -> Self {
        self.retry_backoff_ms = Some(ms);
        self
    }

    /// Maximum backoff.
    pub const fn retry_max_backoff_ms(mut self, ms: u32) -> Self {
        self.retry_max_backoff_ms = Some(ms);
        self
    }

    /// Dead-letter topic.
    pub const fn dlq(mut self, topic: &'static str) -> Self {
        self.dlq = Some(topic);
        self
    }

    /// Without a dead-letter topic: `Skip` or `Stop`.
    pub const fn on_failure(mut self, action: FailureAction) -> Self {
        self.on_failure = Some(action);
        self
    }

    /// Handler time limit.
    pub const fn timeout_ms(mut self, ms: u32) -> Self {
        self.timeout_ms = Some(ms);
        self
    }

    /// Largest payload accepted.
    pub const fn max_message_bytes(mut self, bytes: u32) -> Self {
        self.max_message_bytes = Some(bytes);
        self
    }

    /// When a message counts as acknowledged.
    pub const fn ack(mut self, mode: AckMode) -> Self {
        self.ack = Some(mode);
        self
    }

    /// Messages of one partition handled at once.
    pub const fn concurrency(mut self, n: u32) -> Self {
        self.concurrency = Some(n);
        self
    }

    /// Whether `reply_to` is ignored.
    pub const fn no_reply(mut self, on: bool) -> Self {
        self.no_reply = Some(on);
        self
    }

    /// Exactly-once read-process-write (see [`FailurePolicy::exactly_once`]).
    pub const fn exactly_once(mut self, on: bool) -> Self {
        self.exactly_once = Some(on);
        self
    }

    /// Retry topics: `(name, delay in milliseconds)`, in the order a message moves through them.
    pub const fn retry_topics(mut self, topics: &'static [(&'static str, u64)]) -> Self {
        self.retry_topics = Some(topics);
        self
    }

    /// The route's retry topics, `(name, delay in milliseconds)`, as written.
    pub fn retry_topic_names(&self) -> &'static [(&'static str, u64)] {
        self.retry_topics.unwrap_or(&[])
    }

    /// The route's dead-letter topic, if it names one.
    pub fn dlq_topic(&self) -> Option<&'static str> {
        self.dlq
    }

    /// The effective policy: `defaults` overridden by what the route set. `topic_name` maps the
    /// route's dead-letter topic to its real name (the app's topic prefix).
    pub fn resolve(
        &self,
        defaults: &FailurePolicy,
        topic_name: impl Fn(&str) -> String,
    ) -> FailurePolicy {
        let ms = |v: u32| Duration::from_millis(v.into());
        let mut p = defaults.clone();
        if let Some(n) = self.retry {
            p.retry.max_retries = n;
        }
        if let Some(v) = self.retry_backoff_ms {
            p.retry.initial_backoff = ms(v);
        }
        if let Some(v) = self.retry_max_backoff_ms {
            p.retry.max_backoff = ms(v);
        }
        if let Some(t) = self.dlq {
            p.dlq = Some(topic_name(t));
        }
        if let Some(a) = self.on_failure {
            p.without_dlq = a;
        }
        if let Some(v) = self.timeout_ms {
            p.timeout = Some(ms(v));
        }
        if let Some(v) = self.max_message_bytes {
            p.max_message_bytes = Some(v as usize);
        }
        if let Some(a) = self.ack {
            p.ack = a;
        }
        if let Some(n) = self.concurrency {
            p.concurrency = n;
        }
        p.concurrency = p.concurrency.max(1);
        if let Some(on) = self.no_reply {
            p.no_reply = on;
        }
        if let Some(on) = self.exactly_once {
            p.exactly_once = on;
        }
        if let Some(topics) = self.retry_topics {
            p.retry_topics = topics
                .iter()
                .map(|(name, delay)| crate::RetryTopic {
                    topic: topic_name(name),
                    delay: Duration::from_millis(*delay),
                })
                .collect();
        }
        p
    }
}

const PENDING: u8 = 0;
const ACKED: u8 = 1;
const NACKED: u8 = 2;

/// Acknowledges the message by hand, for routes with `ack = "manual"`.
///
/// `ack()` lets its offset be committed; `nack()` asks for redelivery after the route's retry
/// backoff (it counts as a retry; when retries run out the message is dead-lettered). A message
/// whose handler does neither is not acknowledged: Kafka commits are cumulative, so it holds back
/// the commit of every later message in its partition and is consumed again after a restart or
/// rebalance.
#[derive(Clone, Debug)]
pub struct Acker(Arc<AtomicU8>);

impl Acker {
    pub(crate) fn new() -> Self {
        Self(Arc::new(AtomicU8::new(PENDING)))
    }

    /// The message is done.
    pub fn ack(&self) {
        self.0.store(ACKED, Ordering::Release);
    }

    /// Redeliver the message after backoff.
    pub fn nack(&self) {
        self.0.store(NACKED, Ordering::Release);
    }

    pub(crate) fn state(&self) -> Option<bool> {
        match self.0.load(Ordering::Acquire) {
            ACKED => Some(true),
            NACKED => Some(false),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = RetryPolicy {
            jitter: false,
            ..RetryPolicy::default()
        };
        assert_eq!(p.backoff(1), Duration::from_millis(100));
        assert_eq!(p.backoff(2), Duration::from_millis(200));
        assert_eq!(p.backoff(4), Duration::from_millis(800));
        assert_eq!(p.backoff(20), Duration::from_secs(10));
        let j = RetryPolicy::default();
        for retry in 1..5 {
            let w = j.backoff(retry);
            assert!(w <= p.backoff(retry) && w >= p.backoff(retry) / 2, "{w:?}");
        }
    }

    #[test]
    fn route_settings_override_defaults() {
        let def = PolicyDef::new()
            .retry(5)
            .dlq("t.dlq")
            .ack(AckMode::Manual)
            .timeout_ms(50);
        let p = def.resolve(&FailurePolicy::default(), |t| format!("pre.{t}"));
        assert_eq!(p.retry.max_retries, 5);
        assert_eq!(p.dlq.as_deref(), Some("pre.t.dlq"));
        assert_eq!(p.ack, AckMode::Manual);
        assert_eq!(p.timeout, Some(Duration::from_millis(50)));
        assert_eq!(p.without_dlq, FailureAction::Skip);
    }

    #[test]
    fn any_error_converts_to_a_retry() {
        fn io() -> Result<(), Failure> {
            Err(std::io::Error::other("disk on fire"))?;
            Ok(())
        }
        let f = io().unwrap_err();
        assert_eq!(f.action(), FailureAction::Retry);
        assert_eq!(f.message(), "disk on fire");
    }
}
