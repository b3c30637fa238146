//! One message at a time, in offset order: the default scheduling.

use std::future::Future;
use std::task::Poll;

use super::*;

impl PartitionConsumer {
    /// One message at a time, in offset order (the default): each handler finishes before the
    /// next message starts; outputs go to the producers in chunks and the position moves as
    /// their acks arrive ([`InFlight`]).
    pub(super) async fn run_in_order(
        &self,
        rx: &mut Feed,
        tracker: &mut OffsetTracker,
        ack_first: bool,
        (inflight, turn): (&mut InFlight, &mut Turn),
        metrics: &PartitionMetrics,
    ) -> Result<(), End> {
        let mut shutdown = self.shutdown.clone();
        let mut ticker = tokio::time::interval(Duration::from_secs(1));
        loop {
            if inflight.is_empty() {
                turn.quiet();
            }
            let batch = tokio::select! {
                biased;
                () = shutdown.wait() => return Ok(()),
                // Acks completing move the position even when no new messages arrive.
                res = inflight.settled(), if inflight.is_waiting() => {
                    self.finish(res, inflight, tracker).await?;
                    continue;
                }
                _ = ticker.tick() => {
                    metrics.in_flight(inflight.messages());
                    self.warn_overdue(tracker);
                    continue;
                }
                batch = rx.recv(), if turn.may_start() => match batch {
                    Some(Ok(b)) => b,
                    Some(Err(e)) => return Err(e.into()),
                    None => return Ok(()),
                },
            };
            if ack_first {
                self.commit_before_handling(tracker, &batch).await;
            }
            if !turn.enter(&self.shutdown).await {
                return Ok(());
            }
            let mut batch = batch;
            let mut items = batch.drain(..);
            loop {
                if !turn.may_start() {
                    // A transaction commits: the rest waits until it did.
                    rx.put_back(items.by_ref().collect());
                    break;
                }
                let Some(item) = items.next() else { break };
                if self.shutdown.is_triggered() {
                    return Ok(());
                }
                let ((first, last), outcome) = match item {
                    Fetched::Record(msg) => {
                        let offset = msg.offset;
                        metrics.received(msg.payload.as_ref().map_or(0, |p| p.len()));
                        // One clock read per message: the slice, the chunk deadline and the
                        // metric.
                        let mut started = tokio::time::Instant::now();
                        if slice::spent(started) {
                            tokio::task::yield_now().await;
                            started = tokio::time::Instant::now();
                        }
                        // Pinned where it is made: the future (over a kilobyte) is not
                        // copied again to be awaited.
                        let mut handling = std::pin::pin!(handle_message(
                            &self.rt.pipeline,
                            self.route,
                            msg,
                            &self.shutdown,
                            self.lane.as_ref().map(|l| (&*l.lane, l.stage)),
                        ));
                        let outcome = if !inflight.is_collecting() {
                            handling.await
                        } else {
                            // Outputs of earlier messages wait for this handler only briefly
                            // (no timer for a handler done at its first poll, as most are).
                            let first =
                                std::future::poll_fn(|cx| Poll::Ready(handling.as_mut().poll(cx)))
                                    .await;
                            match first {
                                Poll::Ready(outcome) => outcome,
                                Poll::Pending => tokio::select! {
                                    biased;
                                    outcome = &mut handling => outcome,
                                    () = tokio::time::sleep_until(started + CHUNK_WAIT) => {
                                        self.flush(inflight).await?;
                                        handling.await
                                    }
                                },
                            }
                        };
                        metrics.since(started);
                        metrics.outcome(&outcome, 1);
                        ((offset, offset), outcome)
                    }
                    Fetched::Unreadable {
                        first,
                        last,
                        raw,
                        reason,
                    } => {
                        let outcome = self.unreadable((first, last), raw, &reason, metrics);
                        ((first, last), outcome)
                    }
                    Fetched::Passed { last } => ((last, last), Outcome::Done(Vec::new())),
                };
                let (outputs, dead_letter) = step(tracker, first, outcome)?;
                self.publish(inflight, tracker, (first, last, 1), outputs, dead_letter)
                    .await?;
                self.settle(inflight, tracker).await?;
            }
            drop(items);
            rx.recycle(batch);
            // The fetched batch is done: queue what it left.
            self.flush(inflight).await?;
            self.settle(inflight, tracker).await?;
        }
    }
}
