//! Stopping: the [`Shutdown`] signal (how the app tells the transports, and they their tasks,
//! to stop, and by when), and [`termination_signal`], the operating system's request to stop.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::watch;
use tokio::time::Instant;

/// Fires once when the app should stop. Clones observe the same signal.
///
/// A trigger may carry a deadline: the moment by which the app wants everything stopped (its
/// shutdown timeout). Transports bound their own draining by it, so they still commit what is
/// done and leave their groups before the app gives up on them.
#[derive(Clone, Debug)]
pub struct Shutdown(watch::Receiver<Option<Option<Instant>>>, Arc<AtomicBool>);

// The watched state: `None` until triggered, then `Some(deadline)`; beside it a flag set once
// triggered, which `is_triggered` reads (consumers ask once per message, and reading the
// watched value takes its lock, a counter both threads write).

/// Triggers a [`Shutdown`].
#[derive(Debug)]
pub struct ShutdownTrigger(watch::Sender<Option<Option<Instant>>>, Arc<AtomicBool>);

impl Shutdown {
    /// A signal and its trigger.
    pub fn new() -> (ShutdownTrigger, Shutdown) {
        let (tx, rx) = watch::channel(None);
        let fired = Arc::new(AtomicBool::new(false));
        (ShutdownTrigger(tx, fired.clone()), Shutdown(rx, fired))
    }

    /// Whether shutdown was requested.
    pub fn is_triggered(&self) -> bool {
        self.1.load(Ordering::Acquire)
    }

    /// The deadline the trigger gave, if any (only meaningful once triggered).
    pub fn deadline(&self) -> Option<Instant> {
        self.0.borrow().flatten()
    }

    /// Resolves when shutdown is requested (or the trigger is dropped).
    pub async fn wait(&mut self) {
        let _ = self.0.wait_for(|stop| stop.is_some()).await;
    }
}

impl ShutdownTrigger {
    /// Requests shutdown, without a deadline.
    pub fn trigger(&self) {
        self.fire(None);
    }

    /// Requests shutdown, to be completed by `deadline`.
    pub fn trigger_by(&self, deadline: Instant) {
        self.fire(Some(deadline));
    }

    /// The first request wins; later ones change nothing.
    fn fire(&self, deadline: Option<Instant>) {
        self.0.send_if_modified(|state| {
            let first = state.is_none();
            if first {
                *state = Some(deadline);
                self.1.store(true, Ordering::Release);
            }
            first
        });
    }
}

/// Resolves on SIGINT or (on Unix) SIGTERM.
pub async fn termination_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
