//! The per-partition loop: fetch, handle, produce outputs, track what is done.
//!
//! One task per (route, topic, partition). A fetch task keeps the next batch ready while the
//! current one is handled; messages are handled strictly in offset order. Outputs are queued
//! to the producers in small chunks as handlers return (so they keep their order per target
//! partition, and the producers' byte budget bounds memory; see [`Chunk`]), and a message is
//! done once the broker acknowledged every output of its chunk; done chunks move the partition's
//! position. At most `max_in_flight` messages await acks (beyond that the loop waits:
//! backpressure).

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use faststream_core::{
    AckMode, Headers, Message, OffsetReset, Outcome, OutgoingMessage, Pipeline, RouteDef, Shutdown,
};
use rskafka::client::error::{Error as ClientError, ProtocolError};
use rskafka::client::partition::{OffsetAt, PartitionClient, UnknownTopicHandling};
use rskafka::client::Client;
use rskafka::record::RecordAndOffset;
use tokio::sync::{mpsc, oneshot};

use crate::broker::Config;
use crate::error::KafkaError;
use crate::offsets::{OffsetTracker, Position};
use crate::produce::{Ack, Producers};

/// What every consumer of one service shares.
#[derive(Debug)]
pub(crate) struct Runtime {
    pub(crate) client: Arc<Client>,
    pub(crate) producers: Arc<Producers>,
    pub(crate) pipeline: Arc<Pipeline>,
    pub(crate) config: Arc<Config>,
}

/// A consumer's link to its consumer group: where it reports its position, and how it asks
/// for an immediate commit (`ack = "first"`).
#[derive(Debug)]
pub(crate) struct GroupLink {
    pub(crate) position: Position,
    pub(crate) commit_now: mpsc::Sender<oneshot::Sender<()>>,
}

pub(crate) struct PartitionConsumer {
    pub(crate) rt: Arc<Runtime>,
    pub(crate) route: &'static RouteDef,
    pub(crate) topic: Arc<str>,
    pub(crate) partition: i32,
    pub(crate) reset: OffsetReset,
    /// Where to start (a committed offset); `None` applies `reset`.
    pub(crate) start: Option<i64>,
    /// Set in a consumer group; without one nothing is committed.
    pub(crate) group: Option<GroupLink>,
    pub(crate) shutdown: Shutdown,
    /// Told once the start offset is known.
    pub(crate) ready: mpsc::UnboundedSender<()>,
}

/// Aborts a task when dropped, so a consumer that is itself aborted (a drain past its bound)
/// leaves nothing behind.
#[derive(Debug)]
pub(crate) struct AbortOnDrop<T>(pub(crate) tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A queued chunk: its messages' offsets and the acks of their outputs.
#[derive(Debug)]
struct Queued {
    first: i64,
    last: i64,
    messages: usize,
    acks: Vec<Ack>,
}

/// Queued chunks awaiting the broker's acks, in offset order.
#[derive(Debug, Default)]
struct InFlight {
    queue: VecDeque<Queued>,
    messages: usize,
}

impl InFlight {
    fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    fn push_back(&mut self, queued: Queued) {
        self.messages += queued.messages;
        self.queue.push_back(queued);
    }
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
}

const CHUNK_MESSAGES: usize = 128;
const CHUNK_BYTES: usize = 64 * 1024;
const CHUNK_WAIT: Duration = Duration::from_millis(2);

impl Chunk {
    fn is_empty(&self) -> bool {
        self.span.is_none()
    }

    /// Adds a message's outputs; true when the chunk should be queued now.
    fn push(&mut self, offset: i64, outputs: Vec<OutgoingMessage>) -> bool {
        self.span = Some(
            self.span
                .map_or((offset, offset), |(first, _)| (first, offset)),
        );
        self.messages += 1;
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
    /// Consumes until shutdown (`Ok`), or until the partition cannot go on (`Err`: the failure
    /// policy said stop, or an output was not delivered). The message it stopped at is not done.
    pub(crate) async fn run(self) -> Result<(), KafkaError> {
        let topic = &*self.topic;
        let partition = self.partition;
        let Some(pc) = self.partition_client().await else {
            return Ok(());
        };
        let pc = Arc::new(pc);
        let start = match self.start {
            Some(offset) => offset,
            None => match resolve_offset(&pc, self.reset, &self.shutdown, topic).await {
                Some(offset) => offset,
                None => return Ok(()),
            },
        };
        let config = &self.rt.config;
        // Without a group the position is only used to report where a stopped consumer ended.
        let position = self
            .group
            .as_ref()
            .map_or_else(|| Position::new(None), |g| g.position.clone());
        let mut tracker = OffsetTracker::new(position, config.manual_ack_warning);
        // Committed even if nothing arrives: a restart resumes here, not at `reset` again.
        tracker.start(start);
        tracing::debug!(
            topic,
            partition,
            start,
            handler = self.route.name(),
            "consuming"
        );
        let _ = self.ready.send(());

        let (tx, mut rx) = mpsc::channel(2);
        let fetcher = AbortOnDrop(tokio::spawn(fetch_loop(
            pc.clone(),
            start,
            tx,
            self.shutdown.clone(),
            config.clone(),
            self.reset,
        )));
        let mut inflight = InFlight::default();
        let mut chunk = Chunk::default();
        let mut shutdown = self.shutdown.clone();
        let mut ticker = tokio::time::interval(Duration::from_secs(1));
        let ack_first = self.rt.pipeline.policy(self.route).ack == AckMode::First;
        let mut stopped = None;
        'fetched: loop {
            let batch = tokio::select! {
                biased;
                () = shutdown.wait() => break,
                // Acks completing move the position even when no new messages arrive.
                res = settle_front(&mut inflight), if !inflight.is_empty() => {
                    match res {
                        Ok(offset) => tracker.done(offset),
                        Err(e) => {
                            stopped = Some(e);
                            break;
                        }
                    }
                    continue;
                }
                _ = ticker.tick() => {
                    self.warn_overdue(&mut tracker);
                    continue;
                }
                batch = rx.recv() => match batch {
                    Some(b) => b,
                    None => break,
                },
            };
            if ack_first {
                // At-most-once: commit past the whole batch before handling it.
                if let Some(last) = batch.last() {
                    tracker.done(last.offset);
                    self.commit_now().await;
                }
            }
            for record in batch {
                if self.shutdown.is_triggered() {
                    break 'fetched;
                }
                let offset = record.offset;
                let msg = to_message(&self.topic, partition, record);
                let handling = self
                    .rt
                    .pipeline
                    .handle_until(self.route, msg, Some(&self.shutdown));
                let outcome = if chunk.is_empty() {
                    handling.await
                } else {
                    // Outputs of earlier messages wait for this handler only briefly.
                    tokio::pin!(handling);
                    tokio::select! {
                        biased;
                        outcome = &mut handling => outcome,
                        () = tokio::time::sleep(CHUNK_WAIT) => {
                            if let Err(e) = self.flush(&mut chunk, &mut inflight).await {
                                stopped = Some(e);
                                break 'fetched;
                            }
                            handling.await
                        }
                    }
                };
                match &outcome {
                    // Logged by the pipeline; not done, so consumed again after a restart.
                    Outcome::Stopped { error, .. } => {
                        stopped = Some((offset, format!("the failure policy stopped it: {error}")));
                        break 'fetched;
                    }
                    Outcome::Interrupted { .. } => break 'fetched,
                    Outcome::Unacked(_) => tracker.hold(offset),
                    _ => {}
                }
                let outputs = outcome.into_outputs();
                if outputs.is_empty() && chunk.is_empty() && inflight.is_empty() {
                    tracker.done(offset);
                    continue;
                }
                if chunk.push(offset, outputs) {
                    if let Err(e) = self.flush(&mut chunk, &mut inflight).await {
                        stopped = Some(e);
                        break 'fetched;
                    }
                }
                if let Err(e) = self.settle(&mut inflight, &tracker).await {
                    stopped = Some(e);
                    break 'fetched;
                }
            }
            // The fetched batch is done: queue what it left.
            if let Err(e) = self.flush(&mut chunk, &mut inflight).await {
                stopped = Some(e);
                break;
            }
            if let Err(e) = self.settle(&mut inflight, &tracker).await {
                stopped = Some(e);
                break;
            }
        }
        // Messages handled before the stop are done once their outputs are acknowledged.
        if let Err(e) = self.flush(&mut chunk, &mut inflight).await {
            stopped.get_or_insert(e);
        }
        drop(fetcher);
        // Graceful stop: the message being handled finished; wait for the outputs' acks.
        while !inflight.is_empty() {
            match settle_front(&mut inflight).await {
                Ok(offset) => tracker.done(offset),
                Err(e) => {
                    stopped.get_or_insert(e);
                    break;
                }
            }
        }
        tracing::debug!(topic, partition, handler = self.route.name(), "stopped");
        match stopped {
            None => Ok(()),
            Some((offset, reason)) => {
                let err = KafkaError::PartitionStopped {
                    handler: self.route.name().to_owned(),
                    topic: topic.to_owned(),
                    partition,
                    offset,
                    reason,
                };
                tracing::error!(error = %err, "partition consumer stopped");
                Err(err)
            }
        }
    }

    /// Queues the chunk's outputs; its messages are done once the broker acknowledged them.
    async fn flush(&self, chunk: &mut Chunk, inflight: &mut InFlight) -> Result<(), (i64, String)> {
        let Some((first, last)) = chunk.span.take() else {
            return Ok(());
        };
        let outputs = std::mem::take(&mut chunk.outputs);
        let messages = std::mem::take(&mut chunk.messages);
        chunk.bytes = 0;
        let acks = if outputs.is_empty() {
            Vec::new()
        } else {
            self.rt
                .producers
                .enqueue(&self.rt.client, outputs)
                .await
                .map_err(|e| (first, format!("outputs cannot be queued: {e}")))?
        };
        inflight.push_back(Queued {
            first,
            last,
            messages,
            acks,
        });
        Ok(())
    }

    /// Marks done what was acknowledged; waits while too many messages await acks.
    async fn settle(
        &self,
        inflight: &mut InFlight,
        tracker: &OffsetTracker,
    ) -> Result<(), (i64, String)> {
        settle_ready(inflight, tracker)?;
        while inflight.messages > self.rt.config.max_in_flight {
            tracker.done(settle_front(inflight).await?);
        }
        Ok(())
    }

    /// Reports a manual-ack message that has held back the partition's commits for too long.
    fn warn_overdue(&self, tracker: &mut OffsetTracker) {
        if let Some((offset, age)) = tracker.overdue() {
            tracing::warn!(
                topic = &*self.topic,
                partition = self.partition,
                offset,
                handler = self.route.name(),
                held_for = ?age,
                "a manual-ack message was neither acked nor nacked: no later offset of this partition can be committed until it is consumed again (restart or rebalance)"
            );
        }
    }

    /// Asks the group to commit the done offsets now, and waits for it.
    async fn commit_now(&self) {
        if let Some(group) = &self.group {
            let (done_tx, done_rx) = oneshot::channel();
            if group.commit_now.send(done_tx).await.is_ok() {
                let _ = done_rx.await;
            }
        }
    }

    async fn partition_client(&self) -> Option<PartitionClient> {
        let mut backoff = Duration::from_millis(100);
        loop {
            let attempt = self.rt.client.partition_client(
                self.topic.to_string(),
                self.partition,
                UnknownTopicHandling::Retry,
            );
            let mut shutdown = self.shutdown.clone();
            tokio::select! {
                res = attempt => match res {
                    Ok(pc) => return Some(pc),
                    Err(e) => tracing::warn!(
                        topic = &*self.topic, partition = self.partition, error = %e,
                        "cannot reach partition leader; retrying"
                    ),
                },
                () = shutdown.wait() => return None,
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }
}

/// Waits until every output of the oldest queued chunk was acknowledged, removes it and
/// returns its last offset. An output that was not delivered is an error naming the chunk's
/// first offset (nothing from there on is done). Cancellation-safe: finished acks are removed.
async fn settle_front(inflight: &mut InFlight) -> Result<i64, (i64, String)> {
    let Some(front) = inflight.queue.front_mut() else {
        return Err((-1, "nothing in flight".into()));
    };
    while let Some(ack) = front.acks.last_mut() {
        let result = ack.await;
        front.acks.pop();
        match result {
            Ok(Ok(())) => {}
            Ok(Err(reason)) => {
                return Err((
                    front.first,
                    format!("an output was not delivered: {reason}"),
                ))
            }
            Err(_) => {
                return Err((
                    front.first,
                    "an output was abandoned before the broker acknowledged it".into(),
                ))
            }
        }
    }
    let last = front.last;
    inflight.messages -= front.messages;
    inflight.queue.pop_front();
    Ok(last)
}

/// Marks done the chunks at the front whose outputs are all acknowledged, without waiting.
fn settle_ready(inflight: &mut InFlight, tracker: &OffsetTracker) -> Result<(), (i64, String)> {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    while !inflight.is_empty() {
        match std::pin::pin!(settle_front(inflight)).poll(&mut cx) {
            std::task::Poll::Ready(last) => tracker.done(last?),
            std::task::Poll::Pending => break,
        }
    }
    Ok(())
}

fn to_message(topic: &Arc<str>, partition: i32, r: RecordAndOffset) -> Message {
    let rec = r.record;
    let headers: Headers = rec
        .headers
        .into_iter()
        .map(|(k, v)| (k, Bytes::from(v)))
        .collect();
    let mut msg = Message::new(topic.clone(), Bytes::new()).at(partition, r.offset);
    msg.key = rec.key.map(Bytes::from);
    msg.headers = headers;
    msg.timestamp = Some(rec.timestamp.timestamp_millis());
    msg.payload = rec.value.map(Bytes::from);
    msg
}

/// Where to start: the oldest kept record, or the high watermark.
///
/// The high watermark is read from a fetch response rather than ListOffsets(latest), which some
/// Kafka-compatible brokers answer wrongly after multi-record batches.
async fn resolve_offset(
    pc: &PartitionClient,
    reset: OffsetReset,
    shutdown: &Shutdown,
    topic: &str,
) -> Option<i64> {
    let mut backoff = Duration::from_millis(100);
    loop {
        let attempt = async {
            let earliest = pc.get_offset(OffsetAt::Earliest).await?;
            match reset {
                OffsetReset::Earliest => Ok::<_, ClientError>(earliest),
                OffsetReset::Latest => Ok(pc.fetch_records(earliest, 1..2, 10).await?.1),
            }
        };
        let mut stop = shutdown.clone();
        tokio::select! {
            res = attempt => match res {
                Ok(offset) => return Some(offset),
                Err(e) => tracing::warn!(
                    topic, partition = pc.partition(), error = %e,
                    "cannot read the start offset; retrying"
                ),
            },
            () = stop.wait() => return None,
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// How often each partition logs its lag (at debug level).
const LAG_LOG_INTERVAL: Duration = Duration::from_secs(10);

async fn fetch_loop(
    pc: Arc<PartitionClient>,
    mut offset: i64,
    tx: mpsc::Sender<Vec<RecordAndOffset>>,
    mut shutdown: Shutdown,
    config: Arc<Config>,
    reset: OffsetReset,
) {
    let topic = pc.topic().to_owned();
    let partition = pc.partition();
    let max_wait_ms = config.fetch_max_wait.as_millis().clamp(1, i32::MAX as u128) as i32;
    let mut backoff = Duration::from_millis(100);
    let mut lag_logged = Instant::now();
    loop {
        let started = Instant::now();
        // The client retries lost connections internally; bound each fetch so an unreachable
        // broker shows up in our logs with topic, partition and offset.
        let limit = config.request_timeout + config.fetch_max_wait;
        let fetch = tokio::time::timeout(
            limit,
            pc.fetch_records(offset, 1..config.fetch_max_bytes, max_wait_ms),
        );
        let res = tokio::select! {
            res = fetch => match res {
                Ok(res) => res,
                Err(_) => {
                    tracing::warn!(topic, partition, offset, timeout = ?limit, "fetch failed: no answer from the broker; retrying");
                    continue;
                }
            },
            () = shutdown.wait() => return,
        };
        match res {
            Ok((mut records, high_watermark)) => {
                backoff = Duration::from_millis(100);
                // The high watermark comes from the fetch response (ListOffsets(latest) is
                // wrong on some Kafka-compatible brokers).
                if lag_logged.elapsed() >= LAG_LOG_INTERVAL {
                    lag_logged = Instant::now();
                    tracing::debug!(
                        topic,
                        partition,
                        next_offset = offset,
                        high_watermark,
                        lag = high_watermark - offset,
                        "lag"
                    );
                }
                // Compressed batches may start before the requested offset.
                records.retain(|r| r.offset >= offset);
                match records.last() {
                    Some(last) => {
                        offset = last.offset + 1;
                        if tx.send(records).await.is_err() {
                            return;
                        }
                    }
                    // A broker that answers an empty fetch at once must not make us spin.
                    None if started.elapsed() < Duration::from_millis(5) => {
                        tokio::time::sleep(Duration::from_millis(20)).await
                    }
                    None => {}
                }
            }
            Err(ClientError::ServerError {
                protocol_error: ProtocolError::OffsetOutOfRange,
                ..
            }) => {
                tracing::warn!(
                    topic,
                    partition,
                    offset,
                    ?reset,
                    "offset out of range; resetting"
                );
                match resolve_offset(&pc, reset, &shutdown, &topic).await {
                    Some(o) => offset = o,
                    None => return,
                }
            }
            Err(e) => {
                tracing::warn!(topic, partition, offset, error = %e, retry_in = ?backoff, "fetch failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}
