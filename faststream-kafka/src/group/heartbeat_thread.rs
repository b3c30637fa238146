//! The thread heartbeats run on: a runtime of its own, so that a member keeps its place in
//! its group whatever the handlers do with the service's workers.
//!
//! A handler that blocks its worker (a synchronous call, a long computation) for longer than
//! the session timeout, with every worker so busy, would otherwise hold up the heartbeat task
//! too: the coordinator drops the member, the group rebalances and what was not committed is
//! handled again. The Java consumer sends heartbeats from a thread of its own for this reason;
//! here one thread (a current-thread tokio runtime, started with the first group) serves the
//! heartbeat tasks of every group of the process, each on its own coordinator connection.
//! Everything else of a group (joins, commits, revocations) stays on the service's runtime.

use std::future::Future;
use std::sync::OnceLock;

use tokio::runtime::{Builder, Handle};
use tokio_util::task::AbortOnDropHandle;

/// The heartbeat runtime, started on first use; it runs for the life of the process.
static RUNTIME: OnceLock<Handle> = OnceLock::new();

/// Runs a group's heartbeat task on the heartbeat thread; dropping the handle stops it.
pub(super) fn spawn<F>(heartbeats: F) -> AbortOnDropHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    AbortOnDropHandle::new(runtime().spawn(heartbeats))
}

fn runtime() -> &'static Handle {
    RUNTIME.get_or_init(|| {
        let runtime = Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for heartbeats (a thread with an I/O driver and a timer)");
        let handle = runtime.handle().clone();
        std::thread::Builder::new()
            .name("faststream-heartbeats".into())
            .spawn(move || runtime.block_on(std::future::pending::<()>()))
            .expect("the heartbeat thread starts");
        handle
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A heartbeat task ticks on while every worker of the runtime that started it is blocked.
    #[tokio::test(flavor = "current_thread")]
    async fn heartbeats_tick_while_the_service_runtime_is_blocked() {
        let (tx, rx) = std::sync::mpsc::channel();
        let _beating = spawn(async move {
            let mut ticker = tokio::time::interval(Duration::from_millis(20));
            loop {
                ticker.tick().await;
                if tx.send(()).is_err() {
                    return;
                }
            }
        });
        // The only worker of this runtime is busy for 300 ms, never yielding.
        std::thread::sleep(Duration::from_millis(300));
        let ticks = rx.try_iter().count();
        assert!(ticks >= 5, "{ticks} ticks in 300 ms at one every 20 ms");
    }
}
