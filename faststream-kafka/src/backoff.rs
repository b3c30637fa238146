//! The one retry backoff of the transport's loops (fetch, produce, metadata, group joins,
//! reply readers): exponential, from a first wait doubling up to a cap, each wait spread by
//! ±20 % (as the Java client's `retry.backoff.ms` and `retry.backoff.max.ms` are) so that
//! clients that failed together do not retry together.

use std::time::Duration;

/// Waits between retries. [`Backoff::wait`] is the next wait (already jittered, so a deadline
/// check, a log line and the sleep all see the same value); [`Backoff::advance`] doubles it.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    first: Duration,
    max: Duration,
    base: Duration,
    wait: Duration,
}

impl Backoff {
    /// Starts at `first`, doubling up to `max`.
    pub(crate) fn new(first: Duration, max: Duration) -> Self {
        Self {
            first,
            max,
            base: first,
            wait: jitter(first),
        }
    }

    /// 100 ms doubling up to 5 s: the transport's requests.
    pub(crate) fn requests() -> Self {
        Self::new(Duration::from_millis(100), Duration::from_secs(5))
    }

    /// The next wait.
    pub(crate) fn wait(&self) -> Duration {
        self.wait
    }

    /// After a retry: the next wait is twice as long, up to the cap.
    pub(crate) fn advance(&mut self) {
        self.base = (self.base * 2).min(self.max);
        self.wait = jitter(self.base);
    }

    /// After a success: back to the first wait.
    pub(crate) fn reset(&mut self) {
        self.base = self.first;
        self.wait = jitter(self.first);
    }

    /// Sleeps the next wait, then advances.
    pub(crate) async fn sleep(&mut self) {
        tokio::time::sleep(self.wait).await;
        self.advance();
    }
}

/// `d` spread uniformly over ±20 %.
fn jitter(d: Duration) -> Duration {
    d.mul_f64(0.8 + 0.4 * fastrand::f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_up_to_the_cap_within_the_jitter() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(500));
        for base in [100u64, 200, 400, 500, 500] {
            let w = b.wait().as_secs_f64() * 1000.0;
            assert!(
                (base as f64 * 0.8..=base as f64 * 1.2).contains(&w),
                "{w} ms for {base}"
            );
            b.advance();
        }
        b.reset();
        assert!(b.wait() <= Duration::from_millis(120));
    }
}
