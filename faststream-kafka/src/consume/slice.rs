//! A driver's time slice: how long it has kept its worker in the current poll.
//!
//! Handlers that never wait (parsing, computing) make a partition's driver run through a whole
//! fetched backlog in one poll of its task, and the runtime looks at sockets and timers only
//! between polls: acks, fetches and commits would wait for the backlog (heartbeats have a
//! thread of their own, see `group::heartbeat_thread`). So the driver runs
//! inside [`Sliced`], which notes when each poll began, and gives its worker back
//! ([`tokio::task::yield_now`]) once a poll has run for [`RUN_SLICE`]. A slice is long against
//! a message (the relay's handlers take about a microsecond), so fast handlers run whole
//! fetched batches in one poll as before: a yield after every few messages made the other
//! tasks run between them and cost a third more CPU per message at 256 partitions (smaller
//! output batches, fuller run queues).

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;

/// The longest a driver keeps its worker before it yields.
pub(super) const RUN_SLICE: Duration = Duration::from_millis(10);

thread_local! {
    /// When the poll of the [`Sliced`] future running on this thread began.
    static POLLED_AT: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Runs a driver, noting when each of its polls begins (boxed: once per partition's run).
pub(super) struct Sliced<F>(Pin<Box<F>>);

impl<F: Future> Sliced<F> {
    pub(super) fn new(driver: F) -> Self {
        Self(Box::pin(driver))
    }
}

impl<F: Future> Future for Sliced<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let outer = POLLED_AT.replace(Some(Instant::now()));
        let res = self.0.as_mut().poll(cx);
        POLLED_AT.set(outer);
        res
    }
}

/// Whether the running driver's poll began [`RUN_SLICE`] or more before `now`: then the
/// driver gives its worker back ([`tokio::task::yield_now`]) before its next message.
pub(super) fn spent(now: Instant) -> bool {
    POLLED_AT
        .get()
        .is_some_and(|at| now.saturating_duration_since(at) >= RUN_SLICE)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A driver whose messages never wait yields once its poll ran for a slice: not after
    /// every message, and not never.
    #[tokio::test]
    async fn a_driver_yields_once_its_slice_is_spent() {
        let driver = async {
            let mut yields = 0;
            for _ in 0..100 {
                // A message of a quarter of a millisecond, without an await.
                std::thread::sleep(Duration::from_micros(250));
                if spent(Instant::now()) {
                    tokio::task::yield_now().await;
                    yields += 1;
                }
            }
            yields
        };
        let yields = Sliced::new(driver).await;
        // 25 ms or more of messages: a yield every 10 ms (a slow machine makes the messages
        // longer, so there may be more), not one after every message or every few.
        assert!((2..=25).contains(&yields), "{yields} yields");
        assert!(!spent(Instant::now()), "no slice outside a driver");
    }
}
