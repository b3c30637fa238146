//! One message at a time, in offset order: the default scheduling.

use super::*;

impl PartitionConsumer {
    /// One message at a time, in offset order (the default): each handler finishes before the
    /// next message starts; outputs go to the producers in chunks ([`Chunk`]) and the position
    /// moves as their acks arrive. Returns why it stopped on its own, if it did.
    pub(super) async fn run_in_order(
        &self,
        rx: &mut Feed,
        tracker: &mut OffsetTracker,
        ack_first: bool,
        (chunk, inflight, turn): (&mut Chunk, &mut InFlight, &mut Turn),
        metrics: &PartitionMetrics,
    ) -> Option<Stop> {
        let mut shutdown = self.shutdown.clone();
        let mut ticker = tokio::time::interval(Duration::from_secs(1));
        let mut stopped = None;
        'fetched: loop {
            if inflight.is_empty() && chunk.is_empty() {
                turn.quiet();
            }
            let batch = tokio::select! {
                biased;
                () = shutdown.wait() => break,
                // Acks completing move the position even when no new messages arrive.
                res = settle_front(inflight), if !inflight.is_empty() => {
                    if let Err(e) = self.finish(res, tracker).await {
                        stopped = Some(e);
                        break;
                    }
                    continue;
                }
                _ = ticker.tick() => {
                    metrics.in_flight(inflight.messages);
                    self.warn_overdue(tracker);
                    continue;
                }
                batch = rx.recv(), if turn.may_start() => match batch {
                    Some(Ok(b)) => b,
                    Some(Err(e)) => {
                        stopped = Some(e);
                        break;
                    }
                    None => break,
                },
            };
            if ack_first {
                self.commit_before_handling(tracker, &batch).await;
            }
            if !turn.enter(&self.shutdown).await {
                break;
            }
            let mut items = batch.into_iter();
            loop {
                if !turn.may_start() {
                    // A transaction commits: the rest waits until it did.
                    rx.put_back(items.collect());
                    break;
                }
                let Some(item) = items.next() else { break };
                if self.shutdown.is_triggered() {
                    break 'fetched;
                }
                let (offset, outcome) = match item {
                    Fetched::Record(msg) => {
                        let offset = msg.offset;
                        metrics.received(msg.payload.as_ref().map_or(0, |p| p.len()));
                        // One clock read per message: the chunk deadline and the metric.
                        let started = tokio::time::Instant::now();
                        let handling = handle_message(
                            &self.rt.pipeline,
                            self.route,
                            msg,
                            &self.shutdown,
                            self.lane.as_ref().map(|l| (&*l.lane, l.stage)),
                        );
                        let outcome = if chunk.is_empty() {
                            handling.await
                        } else {
                            // Outputs of earlier messages wait for this handler only briefly.
                            tokio::pin!(handling);
                            tokio::select! {
                                biased;
                                outcome = &mut handling => outcome,
                                () = tokio::time::sleep_until(started + CHUNK_WAIT) => {
                                    if let Err(e) = self.flush(chunk, inflight).await {
                                        stopped = Some(e);
                                        break 'fetched;
                                    }
                                    handling.await
                                }
                            }
                        };
                        metrics.since(started);
                        metrics.outcome(&outcome, 1);
                        (offset, outcome)
                    }
                    Fetched::Unreadable {
                        first,
                        last,
                        raw,
                        reason,
                    } => {
                        let outcome = self.unreadable((first, last), raw, &reason, metrics);
                        (last, outcome)
                    }
                    Fetched::Passed { last } => (last, Outcome::Done(Vec::new())),
                };
                let (outputs, dead_letter) = match tracker.step(offset, outcome) {
                    Step::Stop(reason) => {
                        stopped = Some(Stop::at(offset, reason));
                        break 'fetched;
                    }
                    Step::Interrupt => break 'fetched,
                    Step::Publish {
                        outputs,
                        dead_letter,
                        ..
                    } => (outputs, dead_letter),
                };
                if outputs.is_empty() && chunk.is_empty() && inflight.is_empty() {
                    tracker.done(offset);
                    continue;
                }
                if chunk.push((offset, offset, 1), outputs, dead_letter) {
                    if let Err(e) = self.flush(chunk, inflight).await {
                        stopped = Some(e);
                        break 'fetched;
                    }
                }
                if let Err(e) = self.settle(inflight, tracker).await {
                    stopped = Some(e);
                    break 'fetched;
                }
            }
            // The fetched batch is done: queue what it left.
            if let Err(e) = self.flush(chunk, inflight).await {
                stopped = Some(e);
                break;
            }
            if let Err(e) = self.settle(inflight, tracker).await {
                stopped = Some(e);
                break;
            }
        }
        stopped
    }
}
