//! From the fetch to the driver: each partition's fetch task reads ahead (one fetch in hand,
//! one waiting, within the service's budget of fetched bytes) and hands the fetched record
//! batches over a channel; the driver takes them through [`Feed`], which decodes them a chunk
//! at a time as it asks (so a backlog waits as fetched bytes, not as messages) and holds
//! nothing while the partition is paused.

use super::*;
use crate::records::Records;

/// What the fetch task hands the consumer: items in offset order, or why it cannot go on.
pub(super) type FetchedBatch = Result<Vec<Fetched>, Stop>;

/// Most items decoded for the consumer at once: as many as its outputs are queued in
/// ([`super::outputs::CHUNK_MESSAGES`]). Also how many records an `ack = "first"` route commits
/// before handling them. (Per partition: with hundreds of partitions, hundreds of chunks are
/// decoded at once.)
const CHUNK: usize = super::outputs::CHUNK_MESSAGES;

/// A fetch on its way to the consumer, with its share of the service's budget of fetched
/// bytes (`max_fetched_bytes`; none for a failure).
pub(super) struct Buffered {
    pub(super) batch: Result<Box<Records>, Stop>,
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
    /// A fetch received and not all handed out yet.
    pub(super) next: Option<Buffered>,
    /// Items handed out and given back, to be handed out first.
    pub(super) returned: Option<Vec<Fetched>>,
    /// The budget share of the fetch handed out last, given back when the consumer asks for
    /// more after it was all handed out.
    pub(super) held: Option<OwnedSemaphorePermit>,
    /// Where the next run starts after the leader's log diverged (the feed ended there).
    pub(super) truncated: Option<i64>,
    /// A chunk's vector handed back empty, to decode the next chunk into (its memory used
    /// again instead of fresh memory for every chunk).
    spare: Vec<Fetched>,
}

impl Feed {
    pub(super) fn new(
        rx: mpsc::Receiver<Handed>,
        paused: tokio::sync::watch::Receiver<faststream_core::Paused>,
        topic: Arc<str>,
        partition: i32,
    ) -> Self {
        Self {
            rx,
            paused,
            topic,
            partition,
            next: None,
            returned: None,
            held: None,
            truncated: None,
            spare: Vec::new(),
        }
    }

    /// The next items (at most [`CHUNK`]), once the partition is not paused; also
    /// items that arrive while the caller waits are held back by a pause that came first.
    /// Cancel-safe: a fetch is kept until all of it was returned.
    pub(super) async fn recv(&mut self) -> Option<FetchedBatch> {
        if self.next.is_none() && self.returned.is_none() {
            // Asking for more: the fetch taken last is the consumer's now, its fetched bytes
            // go back to the budget (a partition waiting here must not hold what others need).
            self.held = None;
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
        if let Some(items) = self.returned.take() {
            return Some(Ok(items));
        }
        let Buffered { batch, share } = self.next.as_mut()?;
        let records = match batch {
            Ok(records) => records,
            Err(_) => {
                let Buffered { batch, .. } = self.next.take()?;
                return batch.err().map(Err);
            }
        };
        let mut items = std::mem::take(&mut self.spare);
        let done = records.decode_into(&mut items, CHUNK);
        for (at, value) in records.bad_timestamps.drain(..) {
            tracing::warn!(
                topic = &*self.topic,
                partition = self.partition,
                offset = at,
                timestamp = value,
                "record timestamp is not a plausible time in milliseconds (a producer bug?); the message is delivered without a timestamp"
            );
        }
        if done {
            self.held = share.take();
            self.next = None;
        }
        Some(Ok(items))
    }

    /// Gives back a chunk's vector, emptied, for the next chunk.
    pub(super) fn recycle(&mut self, mut items: Vec<Fetched>) {
        items.clear();
        if items.capacity() <= 2 * CHUNK {
            self.spare = items;
        }
    }

    /// Gives back the rest of the items taken last, to be taken again first.
    pub(super) fn put_back(&mut self, rest: Vec<Fetched>) {
        if !rest.is_empty() {
            self.returned = Some(rest);
        }
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
        let records = fetch.records;
        let next = records.next().unwrap_or(offset).max(offset);
        if fetch.end >= 0 {
            lag.set(fetch.end - next);
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
        // (A broker answering empty fetches at once is paced by the link, per broker.)
        if !records.is_empty() {
            // What was fetched waits for room in the service's budget of fetched bytes before
            // its consumer gets it (and the partition fetches nothing more meanwhile); it
            // keeps its share until the consumer asks for more after the last of it. A quiet
            // partition takes nothing. (Counted with room for one chunk of decoded items.)
            let held = fetch.bytes + CHUNK * std::mem::size_of::<Fetched>();
            let bytes = held.clamp(1, budget_size) as u32;
            let share = tokio::select! {
                share = budget.clone().acquire_many_owned(bytes) => match share {
                    Ok(share) => share,
                    Err(_) => return,
                },
                () = shutdown.wait() => return,
            };
            slot.send(Handed::Batch(Buffered {
                batch: Ok(Box::new(records)),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Compression;
    use crate::encode::{batch_of, BatchHeader};
    use crate::records::Source;
    use faststream_core::OutgoingMessage;

    /// One fetch of `n` records (one batch) from offset 0.
    fn fetch(n: usize) -> Records {
        let msgs: Vec<_> = (0..n)
            .map(|i| OutgoingMessage::new("t", format!("m{i}")))
            .collect();
        let mut out = bytes::BytesMut::new();
        batch_of(&mut out, &msgs, 0, Compression::None, BatchHeader::PLAIN).unwrap();
        let src = Source {
            topic: "t".into(),
            partition: 0,
            from: 0,
            aborted: Vec::new(),
            max_decompressed: 1 << 20,
        };
        Records::new(src, out.freeze())
    }

    fn offsets(items: &[Fetched]) -> Vec<i64> {
        items.iter().map(Fetched::last_offset).collect()
    }

    #[tokio::test]
    async fn a_fetch_is_decoded_a_chunk_at_a_time_and_holds_its_budget_share_to_the_last() {
        let budget = Arc::new(tokio::sync::Semaphore::new(10));
        let share = budget.clone().acquire_many_owned(10).await.unwrap();
        let (tx, rx) = mpsc::channel(2);
        let (_control, paused) = tokio::sync::watch::channel(faststream_core::Paused::default());
        let mut feed = Feed::new(rx, paused, "t".into(), 0);
        tx.send(Handed::Batch(Buffered {
            batch: Ok(Box::new(fetch(300))),
            share: Some(share),
        }))
        .await
        .unwrap();
        // 300 records in one batch: handed as 128, 128 and 44, in order.
        let first = feed.recv().await.unwrap().unwrap();
        assert_eq!(offsets(&first), (0..128).collect::<Vec<_>>());
        // What is given back comes first again.
        feed.put_back(first.into_iter().skip(100).collect());
        let again = feed.recv().await.unwrap().unwrap();
        assert_eq!(offsets(&again), (100..128).collect::<Vec<_>>());
        feed.recycle(again);
        let second = feed.recv().await.unwrap().unwrap();
        assert_eq!(offsets(&second), (128..256).collect::<Vec<_>>());
        let last = feed.recv().await.unwrap().unwrap();
        assert_eq!(offsets(&last), (256..300).collect::<Vec<_>>());
        // The fetch's share of the budget is held until the consumer asks past its last record.
        assert_eq!(budget.available_permits(), 0);
        drop(tx);
        assert!(feed.recv().await.is_none(), "the feed ended");
        assert_eq!(budget.available_permits(), 10);
    }
}
