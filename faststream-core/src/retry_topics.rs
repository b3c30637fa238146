//! Retry topics that keep per-key order: a failed message moves to a delay topic and its
//! partition goes on; later messages with the same key follow it there, so they are handled
//! after it, in their order; other keys flow on.
//!
//! A route with `retry_topics = ["orders.retry.5s", "orders.retry.1m"]` is served in *lanes*:
//! partition `p` of the main topic together with partition `p` of each retry topic (the copies
//! are written to the partition of the same number; the member the group assigns `p` of the
//! main topic reads `p` of each retry topic too, and commits its progress there), so one
//! process knows every message of `p`'s keys that is somewhere on the retry path. A
//! [`RetryLane`] holds that knowledge: for each key, the original offsets of its messages on
//! the path and the stage (1 = the first retry topic) each has reached.
//!
//! At stage `s` (0 = the main topic) a message of key `K` at original offset `o` is
//! - handled, when no earlier message of `K` is further down the path;
//! - sent after them (a *follower*) to the furthest stage an earlier message of `K` reached;
//! - passed over as a stale copy when `o` itself already reached a later stage (a crash after
//!   the copy was written but before the move was committed).
//!
//! A failure whose retries ran out goes to the next retry topic, due after its delay; after the
//! last one the failure policy (dead-letter, skip, stop) applies. Rebuilding the lane when a
//! partition is assigned (reading the retry topics from their committed offsets) is the
//! transport's part; the lane is told with [`RetryLane::restore`] and
//! [`RetryLane::mark_ready`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;

use crate::message::Message;
use crate::policy::dlq_header;

/// Names of the headers a message on a retry topic carries, besides the dead-letter ones
/// (`x-faststream-original-topic`, `-partition`, `-offset`, `-error`, `-error-kind`,
/// `-attempts`, `-failed-at`: see [`dlq_header`](crate::dlq_header)).
pub mod retry_header {
    /// When the copy may be handled, milliseconds since the epoch.
    pub const DUE: &str = "x-faststream-retry-due";
    /// On a message that did not fail itself but follows an earlier message with its key onto
    /// the retry path: that message's original offset.
    pub const FOLLOWS: &str = "x-faststream-retry-follows";
}

/// One retry topic of a route: its name (with the app's prefix) and its delay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryTopic {
    /// The topic's name.
    pub topic: String,
    /// How long after a message was written there it is handled again.
    pub delay: Duration,
}

/// What one partition of a route with retry topics knows of its keys on the retry path (the
/// guide's delivery chapter tells the whole design). Shared by the consumers of the main topic's partition
/// and of the same partition of each retry topic; transports create one per assignment.
#[derive(Debug)]
pub struct RetryLane {
    topic: Arc<str>,
    partition: i32,
    state: Mutex<LaneState>,
    ready: tokio::sync::watch::Sender<bool>,
}

#[derive(Debug, Default)]
struct LaneState {
    /// Per key: original offset -> stage reached.
    pending: HashMap<Option<Bytes>, BTreeMap<i64, usize>>,
    /// Original offsets found on the retry path when the lane was rebuilt: the main topic may
    /// read them again (its commit lagged), perhaps after they finished.
    restored: HashSet<i64>,
    /// Restored ones that finished before the main topic read them again: passed there.
    finished: HashSet<i64>,
}

/// What a lane says about one message.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum LaneStep {
    /// Handle it.
    Handle,
    /// An earlier message of its key is at this (later) stage: follow it there.
    Follow {
        /// The stage to send it to.
        stage: usize,
        /// The original offset of the message it follows.
        after: i64,
    },
    /// This copy is stale: the message already moved on.
    Stale,
}

impl RetryLane {
    /// The lane of `partition` of the main `topic`, not ready until [`RetryLane::mark_ready`].
    pub fn new(topic: Arc<str>, partition: i32) -> Arc<Self> {
        Arc::new(Self {
            topic,
            partition,
            state: Mutex::new(LaneState::default()),
            ready: tokio::sync::watch::channel(false).0,
        })
    }

    /// The main topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The partition (of the main topic and of each retry topic).
    pub fn partition(&self) -> i32 {
        self.partition
    }

    /// Records `msg`, read from the retry topic of `stage` (1-based) while rebuilding the lane,
    /// as on the retry path. A message of another main topic, or without the original offset
    /// header, is ignored.
    pub fn restore(&self, msg: &Message, stage: usize) {
        if msg.headers.get_str(dlq_header::ORIGINAL_TOPIC) != Some(&*self.topic) {
            return;
        }
        if let Some(origin) = original_offset(msg) {
            self.park(&msg.key, origin, stage);
            self.lock().restored.insert(origin);
        }
    }

    /// The lane is rebuilt: its consumers may handle messages.
    pub fn mark_ready(&self) {
        self.ready.send_replace(true);
    }

    /// Whether the lane is rebuilt.
    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    /// Waits until the lane is rebuilt.
    pub async fn ready(&self) {
        let mut rx = self.ready.subscribe();
        // The sender lives as long as `self`.
        let _ = rx.wait_for(|r| *r).await;
    }

    /// How many messages are on the retry path.
    pub fn pending(&self) -> usize {
        self.lock().pending.values().map(BTreeMap::len).sum()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LaneState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records that the message of `key` at original offset `origin` reached `stage` (a
    /// message never goes back: the furthest stage wins).
    pub(crate) fn park(&self, key: &Option<Bytes>, origin: i64, stage: usize) {
        let mut state = self.lock();
        let at = state
            .pending
            .entry(key.clone())
            .or_default()
            .entry(origin)
            .or_insert(stage);
        *at = (*at).max(stage);
    }

    /// The message of `key` at `origin` left the path (handled, dead-lettered or skipped).
    pub(crate) fn finish(&self, key: &Option<Bytes>, origin: i64) {
        let mut state = self.lock();
        if let Some(offsets) = state.pending.get_mut(key) {
            offsets.remove(&origin);
            if offsets.is_empty() {
                state.pending.remove(key);
            }
        }
        if state.restored.remove(&origin) {
            state.finished.insert(origin);
        }
    }

    /// What to do with the message of `key` at original offset `origin`, read at `stage`.
    /// Keyless messages keep no order with each other: they never follow.
    pub(crate) fn step(&self, key: &Option<Bytes>, origin: i64, stage: usize) -> LaneStep {
        let mut state = self.lock();
        if stage == 0 {
            if state.finished.remove(&origin) {
                return LaneStep::Stale;
            }
            // Read again while still on the path: it finishes there, and is not read again.
            state.restored.remove(&origin);
        }
        let pending = &mut state.pending;
        let Some(offsets) = pending.get_mut(key) else {
            return LaneStep::Handle;
        };
        if offsets.get(&origin).is_some_and(|at| *at > stage) {
            return LaneStep::Stale;
        }
        if key.is_none() {
            return LaneStep::Handle;
        }
        // An earlier message still recorded at this stage or before it was passed in order
        // already: its record is left over (its copy was refused, or a failure ended it
        // outside the lane). Dropped, so that nothing waits for it.
        if stage > 0 {
            offsets.retain(|o, at| *o >= origin || *at > stage);
        }
        let follow = offsets
            .range(..origin)
            .filter(|(_, at)| **at > stage)
            .max_by_key(|(o, at)| (**at, **o))
            .map(|(o, at)| LaneStep::Follow {
                stage: *at,
                after: *o,
            });
        if offsets.is_empty() {
            pending.remove(key);
        }
        follow.unwrap_or(LaneStep::Handle)
    }
}

/// The offset in the main topic a message on the retry path came from (its own offset on the
/// main topic).
pub(crate) fn original_offset(msg: &Message) -> Option<i64> {
    msg.headers
        .get_str(dlq_header::ORIGINAL_OFFSET)
        .and_then(|v| v.parse().ok())
}

/// When a message on a retry topic is due, milliseconds since the epoch.
pub(crate) fn due(msg: &Message) -> Option<i64> {
    msg.headers
        .get_str(retry_header::DUE)
        .and_then(|v| v.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(k: &str) -> Option<Bytes> {
        Some(Bytes::copy_from_slice(k.as_bytes()))
    }

    #[test]
    fn later_messages_of_a_key_follow_it_and_others_pass() {
        let lane = RetryLane::new("orders".into(), 0);
        let (a, b) = (key("a"), key("b"));
        assert_eq!(lane.step(&a, 10, 0), LaneStep::Handle);
        lane.park(&a, 10, 1); // a@10 failed: to the first retry topic
        assert_eq!(lane.step(&b, 11, 0), LaneStep::Handle);
        assert_eq!(
            lane.step(&a, 12, 0),
            LaneStep::Follow {
                stage: 1,
                after: 10
            }
        );
        lane.park(&a, 12, 1);
        // a@10 fails again: to stage 2; a@12 at stage 1 follows it there.
        assert_eq!(lane.step(&a, 10, 1), LaneStep::Handle);
        lane.park(&a, 10, 2);
        assert_eq!(
            lane.step(&a, 12, 1),
            LaneStep::Follow {
                stage: 2,
                after: 10
            }
        );
        lane.park(&a, 12, 2);
        // The stage-1 copy of a@10, read again after a crash, is stale.
        assert_eq!(lane.step(&a, 10, 1), LaneStep::Stale);
        // a@10 succeeds at stage 2; a@12 is handled after it.
        assert_eq!(lane.step(&a, 10, 2), LaneStep::Handle);
        lane.finish(&a, 10);
        assert_eq!(lane.step(&a, 12, 2), LaneStep::Handle);
        lane.finish(&a, 12);
        assert_eq!(lane.pending(), 0);
        assert_eq!(lane.step(&a, 13, 0), LaneStep::Handle);
    }

    #[test]
    fn a_left_over_record_does_not_hold_its_key() {
        let lane = RetryLane::new("orders".into(), 0);
        let a = key("a");
        lane.park(&a, 5, 1); // its copy was refused: nothing on stage 1 will finish it
        lane.park(&a, 7, 1);
        // a@7 on stage 1: a@5 would have come first in this partition.
        assert_eq!(lane.step(&a, 7, 1), LaneStep::Handle);
        lane.finish(&a, 7);
        assert_eq!(lane.pending(), 0);
    }

    #[test]
    fn a_restored_message_that_finished_is_not_handled_again_on_the_main_topic() {
        let lane = RetryLane::new("orders".into(), 0);
        let mut msg = Message::new("orders.retry.1s", "x");
        msg.key = key("a");
        msg.headers.insert(dlq_header::ORIGINAL_TOPIC, "orders");
        msg.headers.insert(dlq_header::ORIGINAL_OFFSET, "3");
        lane.restore(&msg, 1);
        msg.headers.insert(dlq_header::ORIGINAL_OFFSET, "4");
        lane.restore(&msg, 1);
        // The retry topic finishes a@3 before the main topic reads offset 3 again.
        assert_eq!(lane.step(&key("a"), 3, 1), LaneStep::Handle);
        lane.finish(&key("a"), 3);
        assert_eq!(lane.step(&key("a"), 3, 0), LaneStep::Stale);
        // a@4 is read again on the main topic while still on the path.
        assert_eq!(lane.step(&key("a"), 4, 0), LaneStep::Stale);
        lane.finish(&key("a"), 4);
        assert_eq!(lane.lock().finished.len(), 0);
        // Offset 3 read once more (a seek back): handled.
        assert_eq!(lane.step(&key("a"), 3, 0), LaneStep::Handle);
    }

    #[test]
    fn keyless_messages_never_wait() {
        let lane = RetryLane::new("orders".into(), 0);
        lane.park(&None, 1, 1);
        assert_eq!(lane.step(&None, 2, 0), LaneStep::Handle);
        lane.park(&None, 1, 2);
        assert_eq!(lane.step(&None, 1, 1), LaneStep::Stale);
    }

    #[test]
    fn restore_reads_only_its_own_topic() {
        let lane = RetryLane::new("orders".into(), 0);
        let mut msg = Message::new("orders.retry.1s", "x");
        msg.key = key("a");
        msg.headers.insert(dlq_header::ORIGINAL_TOPIC, "orders");
        msg.headers.insert(dlq_header::ORIGINAL_OFFSET, "3");
        lane.restore(&msg, 1);
        msg.headers.insert(dlq_header::ORIGINAL_TOPIC, "payments");
        msg.headers.insert(dlq_header::ORIGINAL_OFFSET, "4");
        lane.restore(&msg, 1);
        assert_eq!(lane.pending(), 1);
        assert_eq!(
            lane.step(&key("a"), 9, 0),
            LaneStep::Follow { stage: 1, after: 3 }
        );
    }
}
