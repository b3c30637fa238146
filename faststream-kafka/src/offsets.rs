//! Where a partition's consumption stands: the next offset a consumer group may commit.
//!
//! The partition consumer reports each message as it finishes (handler done and every output
//! acknowledged, in offset order); the group's commit loop reads the result. The position the
//! consumer starts from counts too, so a group commits its start position even when nothing
//! arrives: a restart then resumes there instead of applying `auto_offset_reset` again (which,
//! with `latest`, would skip what arrived while the service was down).

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

/// The next offset to commit for one partition; `-1` until the start position is known.
#[derive(Debug, Clone)]
pub(crate) struct Position(Arc<AtomicI64>);

impl Position {
    /// A position starting at the committed `offset`, if there is one.
    pub(crate) fn new(committed: Option<i64>) -> Self {
        Self(Arc::new(AtomicI64::new(committed.unwrap_or(-1))))
    }

    /// The next offset to commit, if known.
    pub(crate) fn get(&self) -> Option<i64> {
        let offset = self.0.load(Ordering::Acquire);
        (offset >= 0).then_some(offset)
    }

    /// Moves the position forward (never backwards).
    fn advance(&self, next: i64) {
        self.0.fetch_max(next, Ordering::AcqRel);
    }
}

/// One partition consumer's bookkeeping of done and held messages.
#[derive(Debug)]
pub(crate) struct OffsetTracker {
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
    pub(crate) fn new(position: Position, warn_after: Duration) -> Self {
        Self {
            position,
            held: None,
            warn_after,
        }
    }

    /// The consumer starts at `offset`: committed as is until messages are done.
    pub(crate) fn start(&self, offset: i64) {
        self.position.advance(offset);
    }

    /// Every message up to and including `offset` is finished.
    pub(crate) fn done(&self, offset: i64) {
        let next = self
            .held
            .as_ref()
            .map_or(offset + 1, |h| h.offset.min(offset + 1));
        self.position.advance(next);
    }

    /// The message at `offset` was handled but not acknowledged (manual ack).
    pub(crate) fn hold(&mut self, offset: i64) {
        self.held.get_or_insert(Held {
            offset,
            since: Instant::now(),
            warned: false,
        });
    }

    /// The held offset, once it has been held longer than the warning threshold (reported once).
    pub(crate) fn overdue(&mut self) -> Option<(i64, Duration)> {
        let held = self.held.as_mut()?;
        let age = held.since.elapsed();
        if held.warned || age < self.warn_after {
            return None;
        }
        held.warned = true;
        Some((held.offset, age))
    }
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
