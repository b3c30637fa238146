//! From the fetch to the driver: each partition's fetch task reads ahead (one batch in hand, one
//! waiting, within the service's budget of fetched bytes) and hands decoded batches over a
//! channel; the driver takes them through [`Feed`], which holds nothing while the partition is
//! paused.

use super::*;

/// What the fetch task hands the consumer: items in offset order, or why it cannot go on.
pub(super) type FetchedBatch = Result<Vec<Fetched>, Stop>;

/// A fetched batch on its way to the consumer, with its share of the service's budget of
/// fetched bytes (`max_fetched_bytes`; none for a failure).
pub(super) struct Buffered {
    pub(super) batch: FetchedBatch,
    pub(super) share: Option<OwnedSemaphorePermit>,
}

/// What the fetch task hands its consumer.
pub(super) enum Handed {
    Batch(Buffered),
    /// The leader's log diverged from what was read: this run ends once what was handed
    /// before is done, and the next one starts at this offset.
    Truncated(i64),
}

/// The fetched batches of one partition as its consumer takes them: none while the
/// partition is paused ([`faststream_core::Control`]).
pub(super) struct Feed {
    pub(super) rx: mpsc::Receiver<Handed>,
    pub(super) paused: tokio::sync::watch::Receiver<faststream_core::Paused>,
    pub(super) topic: Arc<str>,
    pub(super) partition: i32,
    /// A batch received and not handed out yet (the partition was paused meanwhile).
    pub(super) next: Option<Buffered>,
    /// The budget share of the batch handed out last, given back when the consumer asks
    /// for the next one.
    pub(super) held: Option<OwnedSemaphorePermit>,
    /// Where the next run starts after the leader's log diverged (the feed ended there).
    pub(super) truncated: Option<i64>,
}

impl Feed {
    /// The next batch, once the partition is not paused; also one that arrives while the
    /// caller waits is held back by a pause that came first. Cancel-safe: a batch is kept
    /// until it is returned.
    pub(super) async fn recv(&mut self) -> Option<FetchedBatch> {
        // Asking for more: the batch taken last is the consumer's now, its fetched bytes go
        // back to the budget (a partition waiting here must not hold what others need).
        self.held = None;
        if self.next.is_none() {
            faststream_core::until_resumed(&mut self.paused, &self.topic, self.partition).await;
            match self.rx.recv().await? {
                Handed::Batch(batch) => self.next = Some(batch),
                Handed::Truncated(at) => {
                    self.truncated = Some(at);
                    return None;
                }
            }
        }
        faststream_core::until_resumed(&mut self.paused, &self.topic, self.partition).await;
        let Buffered { batch, share } = self.next.take()?;
        self.held = share;
        Some(batch)
    }

    /// Gives back the rest of the batch taken last, to be taken again first (with its budget
    /// share).
    pub(super) fn put_back(&mut self, rest: Vec<Fetched>) {
        self.next = Some(Buffered {
            batch: Ok(rest),
            share: self.held.take(),
        });
    }
}

pub(super) async fn fetch_loop(
    mut reader: PartitionReader,
    mut offset: i64,
    tx: mpsc::Sender<Handed>,
    mut shutdown: Shutdown,
    reset: OffsetReset,
    lag: Lag,
    mut paused: tokio::sync::watch::Receiver<faststream_core::Paused>,
) {
    let (topic, partition) = reader.id();
    let mut backoff = Backoff::requests();
    let mut lag_logged = Instant::now();
    let (budget, budget_size) = reader.budget();
    let failed = |batch: Stop| {
        Handed::Batch(Buffered {
            batch: Err(batch),
            share: None,
        })
    };
    loop {
        // A paused partition fetches nothing (what was fetched waits in the channel).
        tokio::select! {
            () = faststream_core::until_resumed(&mut paused, &topic, partition) => {}
            () = shutdown.wait() => return,
        }
        // A fetch goes out only when its answer has a place in the channel.
        let slot = tokio::select! {
            slot = tx.reserve() => match slot {
                Ok(slot) => slot,
                Err(_) => return,
            },
            () = shutdown.wait() => return,
        };
        let res = tokio::select! {
            res = reader.fetch(offset) => res,
            () = shutdown.wait() => return,
        };
        let fetch = match res {
            Ok(fetch) => fetch,
            Err(e) => {
                // Nothing to hand over: the place goes back before any wait.
                drop(slot);
                match e {
                    FetchError::OffsetOutOfRange => {
                        tracing::warn!(
                            topic = &*topic,
                            partition,
                            offset,
                            ?reset,
                            "offset out of range; resetting"
                        );
                        match resolve_offset(&mut reader, reset, &shutdown, &topic, partition).await
                        {
                            Ok(Some(o)) => offset = o,
                            Ok(None) => return,
                            Err(reason) => {
                                let _ = tx.send(failed(Stop::at(offset, reason))).await;
                                return;
                            }
                        }
                    }
                    FetchError::Truncated { epoch, end_offset } => {
                        // As the Java consumer does when it detects truncation and has a reset
                        // policy: go on from the first offset known to diverge, with the
                        // partition's position moved back there.
                        tracing::warn!(
                            topic = &*topic,
                            partition,
                            offset,
                            leader_epoch = epoch,
                            resume_at = end_offset,
                            "the leader's log was truncated below what was read (an unclean leader election?); reading again from where it diverged"
                        );
                        let _ = tx.send(Handed::Truncated(end_offset)).await;
                        return;
                    }
                    FetchError::Fatal(e) => {
                        let _ = tx
                            .send(failed(Stop::at(offset, Why::FetchRefused(e))))
                            .await;
                        return;
                    }
                    FetchError::Retriable(e) => {
                        tracing::warn!(topic = &*topic, partition, offset, error = %e, retry_in = ?backoff.wait(), "fetch failed; retrying");
                        tokio::select! {
                            () = tokio::time::sleep(backoff.wait()) => {}
                            () = shutdown.wait() => return,
                        }
                        backoff.advance();
                    }
                }
                continue;
            }
        };
        backoff.reset();
        if fetch.end >= 0 {
            lag.set(fetch.end - fetch.decoded.next.unwrap_or(offset).max(offset));
        }
        if lag_logged.elapsed() >= LAG_LOG_INTERVAL && fetch.end >= 0 {
            lag_logged = Instant::now();
            tracing::debug!(
                topic = &*topic,
                partition,
                next_offset = offset,
                end = fetch.end,
                lag = fetch.end - offset,
                "lag"
            );
        }
        let decoded = fetch.decoded;
        for (at, value) in &decoded.bad_timestamps {
            tracing::warn!(
                topic = &*topic,
                partition,
                offset = at,
                timestamp = value,
                "record timestamp is not a plausible time in milliseconds (a producer bug?); the message is delivered without a timestamp"
            );
        }
        let next = decoded.next.unwrap_or(offset).max(offset);
        // (A broker answering empty fetches at once is paced by the link, per broker.)
        if !decoded.items.is_empty() {
            // What was fetched waits for room in the service's budget of fetched bytes before
            // its consumer gets it (and the partition fetches nothing more meanwhile); it
            // keeps its share until the consumer asks for its next batch. A quiet partition
            // takes nothing.
            // (Counted with what the decoded records take beside the fetched bytes.)
            let held = fetch.bytes + decoded.items.capacity() * std::mem::size_of::<Fetched>();
            let bytes = held.clamp(1, budget_size) as u32;
            let share = tokio::select! {
                share = budget.clone().acquire_many_owned(bytes) => match share {
                    Ok(share) => share,
                    Err(_) => return,
                },
                () = shutdown.wait() => return,
            };
            slot.send(Handed::Batch(Buffered {
                batch: Ok(decoded.items),
                share: Some(share),
            }));
        }
        offset = next;
    }
}

/// Where to start: the oldest kept record, or the end of the log. `Err` when the broker
/// refuses for good (not authorized), `Ok(None)` on shutdown.
pub(super) async fn resolve_offset(
    reader: &mut PartitionReader,
    reset: OffsetReset,
    shutdown: &Shutdown,
    topic: &str,
    partition: i32,
) -> Result<Option<i64>, Why> {
    let mut backoff = Backoff::requests();
    loop {
        let mut stop = shutdown.clone();
        let earliest = reset == OffsetReset::Earliest;
        tokio::select! {
            res = reader.offset(earliest) => match res {
                Ok(offset) => return Ok(Some(offset)),
                Err(FetchError::Fatal(e)) => return Err(Why::NoStartOffset(e)),
                Err(e) => tracing::warn!(
                    topic, partition, error = %e,
                    "cannot read the start offset; retrying"
                ),
            },
            () = stop.wait() => return Ok(None),
        }
        backoff.sleep().await;
    }
}

/// How often each partition logs its lag (at debug level).
pub(super) const LAG_LOG_INTERVAL: Duration = Duration::from_secs(10);
