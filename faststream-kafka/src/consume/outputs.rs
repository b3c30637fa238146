//! The partition's one in-flight tracker, shared by every scheduling: what was taken from the
//! feed and is not done yet, and what the acks of its outputs mean. Handled messages' outputs
//! are collected in a chunk ([`Chunk`]) and queued to the producers a few at a time; each
//! queued chunk is open until every output was acknowledged; the position is the first offset
//! of the first open entry (messages in hand, a chunk being collected or awaiting acks), so it
//! never passes a message that is not done, whatever order acks arrive in. A message whose
//! output was refused is read again and goes through the failure policy (kind `publish`).

use std::collections::BTreeMap;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::stream::{FuturesUnordered, StreamExt};

use super::*;
use crate::produce::{Delivery, Enqueued, Undelivered};

/// Where an output came from: the offsets of its message (a batch's first and last), and
/// whether it is a dead-letter copy.
#[derive(Debug, Clone, Copy)]
pub(super) struct Owner {
    pub(super) first: i64,
    pub(super) last: i64,
    pub(super) dead_letter: bool,
}

/// An open entry's key: its first offset (so the first key is the position), and a number
/// telling entries with the same first offset apart (0: a message in hand).
type Key = (i64, u64);

/// Something taken from the feed and not done yet.
#[derive(Debug)]
enum Open {
    /// A message (or unreadable batch) in hand: buffered or being handled (key-ordered
    /// concurrency), or a chunk whose outputs are being queued.
    InHand,
    /// A chunk whose outputs were queued, awaiting acks.
    Queued(Queued),
}

/// A queued chunk: its messages and the acks of their outputs still awaited.
#[derive(Debug)]
struct Queued {
    messages: usize,
    owners: Vec<Owner>,
    /// Groups of outputs (one per target partition) not acknowledged yet.
    acks_left: usize,
    /// Outputs not delivered so far: index into `owners`, why.
    failed: Vec<(u32, Arc<Undelivered>)>,
    /// An ack was abandoned (the partition stops there): the chunk never settles, so the
    /// position never passes it.
    abandoned: bool,
}

/// One target partition's ack of a queued chunk's outputs.
struct AckWait {
    key: Key,
    /// Indices (into the chunk's owners) of the outputs it covers.
    indices: Vec<u32>,
    ack: crate::produce::Ack,
}

impl Future for AckWait {
    /// The chunk, the outputs, and how they ended (`Err`: the producer dropped them).
    type Output = (Key, Vec<u32>, Result<Delivery, oneshot::error::RecvError>);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let res = std::task::ready!(Pin::new(&mut self.ack).poll(cx));
        Poll::Ready((self.key, std::mem::take(&mut self.indices), res))
    }
}

/// A queued chunk whose outputs are all settled (acknowledged or refused).
#[derive(Debug)]
pub(super) struct Settled {
    key: Key,
    /// Messages (or batches) with an output that was not delivered: first and last offset,
    /// why (first failure per message).
    failed: Vec<(i64, i64, Arc<Undelivered>)>,
}

/// What was taken from the feed and is not done yet, and the acks it awaits (see the module
/// documentation). The same for every scheduling: in offset order one message at a time
/// (chunks open in offset order), key-ordered concurrency (each message open from its arrival
/// until its outputs were acknowledged) and batches.
#[derive(Default)]
pub(super) struct InFlight {
    /// Outputs of handled messages, not queued yet.
    chunk: Chunk,
    /// Not done, by first offset.
    open: BTreeMap<Key, Open>,
    /// Acks awaited, of every queued chunk: they arrive in any order.
    acks: FuturesUnordered<AckWait>,
    /// How many of them can still settle a chunk (not of a chunk with an abandoned ack).
    live_acks: usize,
    /// Queued chunks with nothing left to wait for (every output refused at once, or none).
    settled: VecDeque<Key>,
    /// Messages of queued chunks (bounded by `max_in_flight`).
    queued: usize,
    /// Messages in hand.
    in_hand: usize,
    /// The offset after the last item handed to the tracker.
    end: Option<i64>,
    /// Numbers the queued chunks.
    next_id: u64,
}

impl std::fmt::Debug for InFlight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InFlight")
            .field("chunk", &self.chunk.span)
            .field("open", &self.open.len())
            .field("acks", &self.acks.len())
            .field("queued", &self.queued)
            .field("end", &self.end)
            .finish()
    }
}

impl InFlight {
    /// Nothing open and nothing collected: everything taken from the feed is done.
    pub(super) fn is_empty(&self) -> bool {
        self.open.is_empty() && self.chunk.is_empty()
    }

    /// Whether outputs are being collected (not queued yet).
    pub(super) fn is_collecting(&self) -> bool {
        !self.chunk.is_empty()
    }

    /// Whether a queued chunk may still settle ([`InFlight::settled`] would not wait forever).
    pub(super) fn is_waiting(&self) -> bool {
        !self.settled.is_empty() || self.live_acks > 0
    }

    /// Messages whose outputs were queued and are not settled.
    pub(super) fn queued(&self) -> usize {
        self.queued
    }

    /// Messages taken from the feed and not done (for the in-flight metric).
    pub(super) fn messages(&self) -> usize {
        self.queued + self.in_hand + self.chunk.messages
    }

    /// The first offset not done, if anything is open.
    pub(super) fn first_open(&self) -> Option<i64> {
        let chunk = self.chunk.span.map(|(first, _)| first);
        let open = self.open.keys().next().map(|(first, _)| *first);
        match (open, chunk) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Everything up to this offset is done (`None`: nothing taken yet).
    pub(super) fn done_up_to(&self) -> Option<i64> {
        self.first_open().or(self.end).map(|next| next - 1)
    }

    /// Items up to `last` were taken from the feed (what is not open of them is done).
    pub(super) fn passed(&mut self, last: i64) {
        self.end = Some(self.end.map_or(last + 1, |end| end.max(last + 1)));
    }

    /// A message (or unreadable batch) from `first` to `last` is in hand until its outputs are
    /// queued ([`InFlight::push`] and a flush) or it is done without any ([`InFlight::close_in_hand`]).
    pub(super) fn take_in_hand(&mut self, first: i64, last: i64) {
        if self.open.insert((first, 0), Open::InHand).is_none() {
            self.in_hand += 1;
        }
        self.passed(last);
    }

    /// The message in hand at `first` is done (it had nothing to publish).
    pub(super) fn close_in_hand(&mut self, first: i64) {
        if self.open.remove(&(first, 0)).is_some() {
            self.in_hand -= 1;
        }
    }

    /// Adds the outputs of `count` handled messages from `first` to `last` to the chunk; true
    /// when the chunk should be queued now.
    pub(super) fn push(
        &mut self,
        (first, last, count): (i64, i64, usize),
        outputs: Vec<OutgoingMessage>,
        dead_letter: bool,
    ) -> bool {
        self.passed(last);
        self.chunk.push((first, last, count), outputs, dead_letter)
    }

    /// Takes the chunk to queue its outputs: its span stays open (in hand) until
    /// [`InFlight::queued_chunk`] records the queue's answer.
    fn take_chunk(&mut self) -> Option<TakenChunk> {
        let (first, _) = self.chunk.span.take()?;
        // A message in hand (concurrency) whose outputs these are is now this chunk.
        if self.open.remove(&(first, 0)).is_some() {
            self.in_hand -= 1;
        }
        self.next_id += 1;
        let key = (first, self.next_id);
        self.open.insert(key, Open::InHand);
        self.chunk.bytes = 0;
        Some(TakenChunk {
            key,
            messages: std::mem::take(&mut self.chunk.messages),
            outputs: std::mem::take(&mut self.chunk.outputs),
            owners: std::mem::take(&mut self.chunk.owners),
        })
    }

    /// The taken chunk's outputs were queued: it awaits their acks.
    fn queued_chunk(&mut self, key: Key, messages: usize, owners: Vec<Owner>, queued: Enqueued) {
        let acks_left = queued.groups.len();
        self.live_acks += acks_left;
        for (indices, ack) in queued.groups {
            self.acks.push(AckWait { key, indices, ack });
        }
        if acks_left == 0 {
            self.settled.push_back(key);
        }
        self.queued += messages;
        self.open.insert(
            key,
            Open::Queued(Queued {
                messages,
                owners,
                acks_left,
                failed: queued.refused,
                abandoned: false,
            }),
        );
    }

    /// Waits until a queued chunk's outputs are all settled (in any order), and says which
    /// were not delivered; the chunk stays open until [`InFlight::close`]. Waits forever when
    /// nothing [`is_waiting`](InFlight::is_waiting) (acks of a chunk with an abandoned one are
    /// taken as they come, but settle nothing). An abandoned ack (the producer went
    /// away) is an error naming the chunk's first offset (nothing from there on is done); so
    /// is a dead-letter copy that was not delivered. Cancellation-safe.
    pub(super) async fn settled(&mut self) -> Result<Settled, Stop> {
        loop {
            if let Some(key) = self.settled.pop_front() {
                return self.settle(key);
            }
            let Some((key, indices, res)) = self.acks.next().await else {
                std::future::pending::<()>().await;
                continue;
            };
            let Some(Open::Queued(chunk)) = self.open.get_mut(&key) else {
                continue;
            };
            chunk.acks_left -= 1;
            if !chunk.abandoned {
                self.live_acks -= 1;
            }
            match res {
                Ok(Ok(())) => {}
                Ok(Err(failed)) => chunk.failed.extend(
                    failed
                        .into_iter()
                        .map(|(i, reason)| (indices[i as usize], reason)),
                ),
                Err(_) if chunk.abandoned => {}
                Err(_) => {
                    chunk.abandoned = true;
                    self.live_acks -= chunk.acks_left;
                    return Err(Stop::at(key.0, Why::Abandoned));
                }
            }
            if chunk.acks_left == 0 && !chunk.abandoned {
                return self.settle(key);
            }
        }
    }

    /// A settled chunk, if one is ready (without waiting).
    pub(super) fn try_settled(&mut self) -> Option<Result<Settled, Stop>> {
        if !self.is_waiting() {
            return None;
        }
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match std::pin::pin!(self.settled()).poll(&mut cx) {
            Poll::Ready(res) => Some(res),
            Poll::Pending => None,
        }
    }

    fn settle(&mut self, key: Key) -> Result<Settled, Stop> {
        let Some(Open::Queued(chunk)) = self.open.get_mut(&key) else {
            return Ok(Settled {
                key,
                failed: Vec::new(),
            });
        };
        self.queued -= chunk.messages;
        chunk.messages = 0;
        let mut failed: Vec<(i64, i64, Arc<Undelivered>)> = Vec::new();
        let mut by_output = std::mem::take(&mut chunk.failed);
        by_output.sort_by_key(|(i, _)| *i);
        for (i, reason) in by_output {
            let owner = chunk.owners[i as usize];
            if owner.dead_letter {
                return Err(Stop::at(owner.last, Why::DeadLetterUndelivered(reason)));
            }
            if failed.last().is_none_or(|(_, o, _)| *o != owner.last) {
                failed.push((owner.first, owner.last, reason));
            }
        }
        Ok(Settled { key, failed })
    }

    /// The settled chunk is done (its failed messages went through the failure policy).
    fn close(&mut self, key: Key) {
        self.open.remove(&key);
    }
}

/// A chunk taken to be queued.
struct TakenChunk {
    key: Key,
    messages: usize,
    outputs: Vec<OutgoingMessage>,
    owners: Vec<Owner>,
}

/// Outputs of consecutive handled messages are queued together, a few at a time (fewer,
/// larger queue operations), but never held for long: when the chunk is full, when the fetched
/// batch ends, or when the next handler takes longer than [`CHUNK_WAIT`].
#[derive(Debug, Default)]
struct Chunk {
    /// First and last offset of its messages.
    span: Option<(i64, i64)>,
    messages: usize,
    bytes: usize,
    outputs: Vec<OutgoingMessage>,
    owners: Vec<Owner>,
}

pub(super) const CHUNK_MESSAGES: usize = 128;

pub(super) const CHUNK_BYTES: usize = 64 * 1024;

pub(super) const CHUNK_WAIT: Duration = Duration::from_millis(2);

impl Chunk {
    fn is_empty(&self) -> bool {
        self.span.is_none()
    }

    /// Adds the outputs of `count` messages from `first` to `last`; true when the chunk should
    /// be queued now.
    fn push(
        &mut self,
        (first, last, count): (i64, i64, usize),
        outputs: Vec<OutgoingMessage>,
        dead_letter: bool,
    ) -> bool {
        let owner = Owner {
            first,
            last,
            dead_letter,
        };
        self.owners
            .extend(std::iter::repeat_n(owner, outputs.len()));
        self.span = Some(
            self.span
                .map_or((first, last), |(from, to)| (from.min(first), to.max(last))),
        );
        self.messages += count;
        self.bytes += outputs
            .iter()
            .map(OutgoingMessage::approximate_size)
            .sum::<usize>();
        if self.outputs.is_empty() {
            self.outputs = outputs;
        } else {
            self.outputs.extend(outputs);
        }
        self.messages >= CHUNK_MESSAGES || self.bytes >= CHUNK_BYTES
    }
}

impl PartitionConsumer {
    /// Queues outputs of the message(s) from `offset` on (nothing for none).
    pub(super) async fn enqueue(
        &self,
        offset: i64,
        outputs: Vec<OutgoingMessage>,
    ) -> Result<Enqueued, Stop> {
        if outputs.is_empty() {
            return Ok(Default::default());
        }
        self.rt
            .producers
            .enqueue(outputs)
            .await
            .map_err(|e| Stop::at(offset, Why::NotQueued(e)))
    }

    /// Handled messages from `first` to `last` (`count` of them) publish `outputs`: collected
    /// in the chunk, queued when it is full; with nothing to publish and nothing before them
    /// open, they are done at once.
    pub(super) async fn publish(
        &self,
        inflight: &mut InFlight,
        tracker: &OffsetTracker,
        span: (i64, i64, usize),
        outputs: Vec<OutgoingMessage>,
        dead_letter: bool,
    ) -> Result<(), Stop> {
        if outputs.is_empty() && inflight.is_empty() {
            inflight.passed(span.1);
            tracker.done(span.1);
            return Ok(());
        }
        if inflight.push(span, outputs, dead_letter) {
            self.flush(inflight).await?;
        }
        Ok(())
    }

    /// Queues the chunk's outputs; its messages are done once the broker acknowledged them.
    pub(super) async fn flush(&self, inflight: &mut InFlight) -> Result<(), Stop> {
        let Some(taken) = inflight.take_chunk() else {
            return Ok(());
        };
        let queued = self.enqueue(taken.key.0, taken.outputs).await?;
        inflight.queued_chunk(taken.key, taken.messages, taken.owners, queued);
        Ok(())
    }

    /// Marks done what was acknowledged; waits while too many messages await acks.
    pub(super) async fn settle(
        &self,
        inflight: &mut InFlight,
        tracker: &OffsetTracker,
    ) -> Result<(), Stop> {
        while let Some(res) = inflight.try_settled() {
            self.finish(res, inflight, tracker).await?;
        }
        while inflight.queued() > self.rt.config.max_in_flight {
            let res = inflight.settled().await;
            self.finish(res, inflight, tracker).await?;
        }
        Ok(())
    }

    /// A chunk is settled: messages whose outputs were not delivered go through the failure
    /// policy (kind `publish`), then the chunk is done and the position moves up to the first
    /// message still open.
    pub(super) async fn finish(
        &self,
        settled: Result<Settled, Stop>,
        inflight: &mut InFlight,
        tracker: &OffsetTracker,
    ) -> Result<(), Stop> {
        let Settled { key, failed } = settled?;
        if !failed.is_empty() {
            self.fail_outputs(failed).await?;
        }
        inflight.close(key);
        advance(inflight, tracker);
        Ok(())
    }

    /// Each message is read again from the partition (the consumer keeps no copy of messages
    /// awaiting acks) and handed to the failure policy; a dead-letter copy is awaited here. A
    /// batch's output that failed fails every message of the batch.
    pub(super) async fn fail_outputs(
        &self,
        failed: Vec<(i64, i64, Arc<Undelivered>)>,
    ) -> Result<(), Stop> {
        let mut reader =
            PartitionReader::new(self.rt.cluster.clone(), self.topic.clone(), self.partition);
        for (first, last, reason) in failed {
            for msg in self.read_again(&mut reader, first, last).await? {
                self.fail_output(msg, reason.clone()).await?;
            }
        }
        Ok(())
    }

    /// One message whose output was not delivered, through the failure policy.
    pub(super) async fn fail_output(
        &self,
        msg: Message,
        reason: Arc<Undelivered>,
    ) -> Result<(), Stop> {
        let offset = msg.offset;
        let outcome =
            self.rt
                .pipeline
                .fail(self.route, &msg, HandlerError::Publish(reason.to_string()));
        match outcome {
            Outcome::Stopped { error, .. } => Err(Stop::at(
                offset,
                Why::Policy(format!("the failure policy stopped it: {error}")),
            )),
            Outcome::DeadLettered { dlq, .. } => {
                let topic = dlq.topic.clone();
                let queued = (self.rt.producers.enqueue(vec![*dlq]).await)
                    .map_err(|e| Stop::at(offset, Why::DeadLetterNotQueued(e)))?;
                queued
                    .delivered()
                    .await
                    .map_err(|why| Stop::at(offset, Why::NeitherDelivered { topic, why }))
            }
            _ => Ok(()),
        }
    }

    /// The messages at offsets `first..=last`, read from the partition again.
    pub(super) async fn read_again(
        &self,
        reader: &mut PartitionReader,
        first: i64,
        last: i64,
    ) -> Result<Vec<Message>, Stop> {
        let mut backoff = Backoff::requests();
        let mut found = Vec::new();
        let mut offset = first;
        let mut failures = 0;
        loop {
            match reader.fetch(offset).await {
                Ok(fetch) => {
                    let next = fetch.records.next().unwrap_or(offset);
                    found.extend(
                        fetch
                            .records
                            .all()
                            .items
                            .into_iter()
                            .filter_map(|i| match i {
                                Fetched::Record(m) if (offset..=last).contains(&m.offset) => {
                                    Some(m)
                                }
                                _ => None,
                            }),
                    );
                    if next > offset && next <= last {
                        offset = next;
                        continue;
                    }
                    if found.is_empty() {
                        return Err(Stop::at(first, Why::NoLongerReadable));
                    }
                    return Ok(found);
                }
                Err(FetchError::Retriable(e)) if failures < 10 => {
                    failures += 1;
                    tracing::warn!(topic = &*self.topic, partition = self.partition, offset, error = %e, "reading a message again failed; retrying");
                    backoff.sleep().await;
                }
                Err(e) => return Err(Stop::at(offset, Why::NotReadAgain(e))),
            }
        }
    }
}

/// Moves the position up to the first message still open.
pub(super) fn advance(inflight: &InFlight, tracker: &OffsetTracker) {
    if let Some(done) = inflight.done_up_to() {
        tracker.done(done);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn output() -> Vec<OutgoingMessage> {
        vec![OutgoingMessage::new("out", "x")]
    }

    /// Takes the chunk and queues it with one ack per output; returns the ack senders.
    fn queue(inflight: &mut InFlight) -> Vec<oneshot::Sender<Delivery>> {
        let taken = inflight.take_chunk().expect("a chunk");
        let mut senders = Vec::new();
        let groups = (0..taken.outputs.len() as u32)
            .map(|i| {
                let (tx, rx) = oneshot::channel();
                senders.push(tx);
                (vec![i], rx)
            })
            .collect();
        let queued = Enqueued {
            groups,
            refused: Vec::new(),
        };
        inflight.queued_chunk(taken.key, taken.messages, taken.owners, queued);
        senders
    }

    fn refused(why: &str) -> Arc<Undelivered> {
        let failure = crate::produce::ProduceFailure::Encode(why.to_owned());
        Arc::new(Undelivered::Refused(failure))
    }

    fn answer(acks: Vec<oneshot::Sender<Delivery>>, delivery: Delivery) {
        for tx in acks {
            tx.send(delivery.clone()).unwrap();
        }
    }

    async fn settle_next(
        inflight: &mut InFlight,
    ) -> Result<Vec<(i64, i64, Arc<Undelivered>)>, Stop> {
        let settled = inflight.settled().await?;
        inflight.close(settled.key);
        Ok(settled.failed)
    }

    #[tokio::test]
    async fn the_position_waits_for_the_first_open_chunk_whatever_order_acks_arrive_in() {
        let mut inflight = InFlight::default();
        inflight.push((0, 0, 1), output(), false);
        let first = queue(&mut inflight);
        inflight.push((1, 1, 1), output(), false);
        let second = queue(&mut inflight);
        inflight.push((2, 2, 1), Vec::new(), false);
        assert_eq!(inflight.queued(), 2);
        assert_eq!(inflight.done_up_to(), Some(-1));

        answer(second, Ok(()));
        assert!(settle_next(&mut inflight).await.unwrap().is_empty());
        assert_eq!(
            inflight.done_up_to(),
            Some(-1),
            "offset 0 still awaits its ack"
        );
        answer(first, Ok(()));
        assert!(settle_next(&mut inflight).await.unwrap().is_empty());
        assert_eq!(
            inflight.done_up_to(),
            Some(1),
            "offset 2 is still collected"
        );
        queue(&mut inflight);
        assert!(settle_next(&mut inflight).await.unwrap().is_empty());
        assert_eq!(inflight.done_up_to(), Some(2));
        assert!(inflight.is_empty() && !inflight.is_waiting());
        assert_eq!(inflight.queued(), 0);
    }

    #[tokio::test]
    async fn messages_in_hand_hold_the_position_until_done() {
        let mut inflight = InFlight::default();
        inflight.take_in_hand(5, 5);
        inflight.take_in_hand(6, 6);
        inflight.take_in_hand(7, 9);
        inflight.close_in_hand(6);
        assert_eq!(inflight.done_up_to(), Some(4));
        // Offset 7's outputs are queued: it stays open until they are acknowledged.
        inflight.push((7, 9, 1), output(), false);
        let acks = queue(&mut inflight);
        inflight.close_in_hand(5);
        assert_eq!(inflight.done_up_to(), Some(6));
        assert_eq!(inflight.messages(), 1);
        answer(acks, Ok(()));
        assert!(settle_next(&mut inflight).await.unwrap().is_empty());
        assert_eq!(inflight.done_up_to(), Some(9));
    }

    #[tokio::test]
    async fn a_batch_chunk_holds_the_position_behind_a_failed_message_queued_before_it() {
        let mut inflight = InFlight::default();
        // A failed message (its dead-letter copy) sorted before the batch that holds it.
        inflight.push((3, 3, 1), output(), true);
        let dead_letter = queue(&mut inflight);
        inflight.push((0, 10, 10), output(), false);
        let batch = queue(&mut inflight);
        answer(dead_letter, Ok(()));
        assert!(settle_next(&mut inflight).await.unwrap().is_empty());
        assert_eq!(
            inflight.done_up_to(),
            Some(-1),
            "the batch is not acknowledged"
        );
        answer(batch, Err(vec![(0, refused("too large"))]));
        let failed = settle_next(&mut inflight).await.unwrap();
        let failed: Vec<_> = failed
            .iter()
            .map(|(a, b, why)| (*a, *b, why.to_string()))
            .collect();
        assert_eq!(
            failed,
            vec![(0, 10, "refused by the broker: too large".to_owned())]
        );
        assert_eq!(inflight.done_up_to(), Some(10));
    }

    #[tokio::test]
    async fn an_undelivered_dead_letter_copy_or_an_abandoned_ack_stops_at_its_message() {
        let mut inflight = InFlight::default();
        inflight.push((4, 4, 1), output(), true);
        answer(queue(&mut inflight), Err(vec![(0, refused("too large"))]));
        let stop = inflight.settled().await.unwrap_err();
        assert_eq!(stop.offset, Some(4));
        assert!(
            matches!(stop.reason, Why::DeadLetterUndelivered(_)),
            "{}",
            stop.reason
        );

        // One of a chunk's two acks is abandoned: the other one settling later does not
        // settle the chunk.
        let mut inflight = InFlight::default();
        inflight.push((8, 8, 1), output(), false);
        inflight.push((9, 9, 1), output(), false);
        let mut acks = queue(&mut inflight);
        drop(acks.remove(0));
        let stop = inflight.settled().await.unwrap_err();
        assert_eq!(stop.offset, Some(8));
        assert!(matches!(stop.reason, Why::Abandoned), "{}", stop.reason);
        answer(acks, Ok(()));
        assert!(inflight.try_settled().is_none());
        assert!(!inflight.is_waiting());
        assert_eq!(inflight.done_up_to(), Some(7));
    }
}
