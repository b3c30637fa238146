//! Where a partition's consumption stands: the next offset a consumer group may commit, and
//! what a handled message's [`Outcome`] means for it.
//!
//! A transport's partition consumer turns each outcome into a [`Step`] with
//! [`OffsetTracker::step`] (stop, interrupt, or publish its outputs and then count it done),
//! and reports each message as it finishes (handler done and every output acknowledged, in
//! offset order); the group's commit loop reads the [`Position`]. The position the consumer
//! starts from counts too, so a group commits its start position even when nothing arrives: a
//! restart then resumes there instead of applying `auto_offset_reset` again (which, with
//! `latest`, would skip what arrived while the service was down).
//!
//! The Kafka transport and the in-memory [`TestBroker`](crate::testing::TestBroker) share this
//! code, so a stopped partition or an unacknowledged manual-ack message behaves the same in
//! tests as on a cluster.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::message::OutgoingMessage;
use crate::outcome::Outcome;

/// The next offset to commit for one partition; `-1` until the start position is known.
#[derive(Debug, Clone)]
pub struct Position(Arc<AtomicI64>);

impl Position {
    /// A position starting at the committed `offset`, if there is one.
    pub fn new(committed: Option<i64>) -> Self {
        Self(Arc::new(AtomicI64::new(committed.unwrap_or(-1))))
    }

    /// The next offset to commit, if known.
    pub fn get(&self) -> Option<i64> {
        let offset = self.0.load(Ordering::Acquire);
        (offset >= 0).then_some(offset)
    }

    /// Moves the position forward (never backwards).
    pub(crate) fn advance(&self, next: i64) {
        self.0.fetch_max(next, Ordering::AcqRel);
    }

    /// Moves the position to `offset`, backwards too: a seek, made by the partition's consumer
    /// once nothing of it is in flight (the next commit stores it).
    pub fn seek(&self, offset: i64) {
        self.0.store(offset, Ordering::Release);
    }
}

/// One partition consumer's bookkeeping of done and held messages.
#[derive(Debug)]
pub struct OffsetTracker {
    position: Position,
    /// The first message of a manual-ack route that was neither acked nor nacked: Kafka commits
    /// are cumulative, so nothing from it on can be committed.
    held: Option<Held>,
    warn_after: Duration,
}

#[derive(Debug)]
struct Held {
    offset: i64,
    since: Instant,
    warned: bool,
}

impl OffsetTracker {
    /// A tracker publishing to `position`. A held message is reported after `warn_after`.
    pub fn new(position: Position, warn_after: Duration) -> Self {
        Self {
            position,
            held: None,
            warn_after,
        }
    }

    /// The consumer starts at `offset`: committed as is until messages are done.
    pub fn start(&self, offset: i64) {
        self.position.advance(offset);
    }

    /// Every message up to and including `offset` is finished.
    pub fn done(&self, offset: i64) {
        let next = self
            .held
            .as_ref()
            .map_or(offset + 1, |h| h.offset.min(offset + 1));
        self.position.advance(next);
    }

    /// The message at `offset` was handled but not acknowledged (manual ack).
    pub fn hold(&mut self, offset: i64) {
        self.held.get_or_insert(Held {
            offset,
            since: Instant::now(),
            warned: false,
        });
    }

    /// What the consumer does with the message at `offset` after the pipeline's `outcome`:
    /// a manual-ack message that was neither acked nor nacked is held here (nothing from it on
    /// is committed).
    pub fn step(&mut self, offset: i64, outcome: Outcome) -> Step {
        let held = match &outcome {
            // Logged by the pipeline; not done, so consumed again after a restart.
            Outcome::Stopped { error, .. } => {
                return Step::Stop(format!("the failure policy stopped it: {error}"))
            }
            Outcome::Interrupted { .. } => return Step::Interrupt,
            Outcome::Unacked(_) => {
                self.hold(offset);
                true
            }
            _ => false,
        };
        let dead_letter = matches!(outcome, Outcome::DeadLettered { .. });
        Step::Publish {
            outputs: outcome.into_outputs(),
            dead_letter,
            held,
        }
    }

    /// The held offset, once it has been held longer than the warning threshold (reported once).
    pub fn overdue(&mut self) -> Option<(i64, Duration)> {
        let held = self.held.as_mut()?;
        let age = held.since.elapsed();
        if held.warned || age < self.warn_after {
            return None;
        }
        held.warned = true;
        Some((held.offset, age))
    }
}

/// What a partition consumer does with one handled message (see [`OffsetTracker::step`]).
/// Exhaustive on purpose: a transport must act on every step, so a new one is a deliberate
/// breaking change for transports.
#[derive(Debug)]
pub enum Step {
    /// Publish `outputs` (a dead-letter copy when `dead_letter`); once the broker acknowledged
    /// them the message is done, unless `held` (manual ack: never done by itself).
    Publish {
        /// What to publish, in order.
        outputs: Vec<OutgoingMessage>,
        /// Whether `outputs` is the message's dead-letter copy.
        dead_letter: bool,
        /// Whether the message stays held (manual ack, neither acked nor nacked).
        held: bool,
    },
    /// The failure policy stopped the partition here (the message is not done): why.
    Stop(String),
    /// The consumer was told to stop while the message waited for a retry: not done.
    Interrupt,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_position_is_committable_before_any_message() {
        let position = Position::new(None);
        assert_eq!(position.get(), None);
        let tracker = OffsetTracker::new(position.clone(), Duration::from_secs(60));
        tracker.start(42);
        assert_eq!(position.get(), Some(42));
        tracker.done(42);
        assert_eq!(position.get(), Some(43));
    }

    #[test]
    fn never_moves_backwards() {
        let position = Position::new(Some(10));
        let tracker = OffsetTracker::new(position.clone(), Duration::from_secs(60));
        tracker.start(5);
        assert_eq!(position.get(), Some(10));
        tracker.done(3);
        assert_eq!(position.get(), Some(10));
    }

    #[test]
    fn a_held_message_caps_the_position() {
        let position = Position::new(Some(0));
        let mut tracker = OffsetTracker::new(position.clone(), Duration::ZERO);
        tracker.done(1);
        tracker.hold(2);
        tracker.done(2);
        tracker.done(9);
        assert_eq!(position.get(), Some(2));
        assert_eq!(tracker.overdue().map(|(o, _)| o), Some(2));
        assert_eq!(tracker.overdue(), None, "reported once");
    }
}
