//! The per-partition loop: fetch, handle, produce outputs, track what is done.
//!
//! One task per (route, topic, partition). A fetch task keeps the next batch ready while the
//! current one is handled; messages are handled strictly in offset order; the outputs of a
//! fetched batch are queued to the producers together and their acks tracked, with at most
//! `max_in_flight` messages awaiting acks (beyond that the loop waits: backpressure). A message
//! is done when the handler finished and every output of its batch was acknowledged.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use faststream_core::{
    AckMode, Headers, Message, OffsetReset, Outcome, Pipeline, RouteDef, Shutdown,
};
use rskafka::client::error::{Error as ClientError, ProtocolError};
use rskafka::client::partition::{OffsetAt, PartitionClient, UnknownTopicHandling};
use rskafka::client::Client;
use rskafka::record::RecordAndOffset;
use tokio::sync::mpsc;

use crate::broker::Config;
use crate::produce::{Ack, Producers};

pub(crate) struct PartitionConsumer {
    pub(crate) client: Arc<Client>,
    pub(crate) producers: Arc<Producers>,
    pub(crate) pipeline: Arc<Pipeline>,
    pub(crate) route: &'static RouteDef,
    pub(crate) topic: Arc<str>,
    pub(crate) partition: i32,
    pub(crate) reset: OffsetReset,
    /// Where to start (a committed offset); `None` applies `reset`.
    pub(crate) start: Option<i64>,
    /// Where the done offset is published (the next offset to commit), for consumer groups.
    pub(crate) progress: Option<Arc<AtomicI64>>,
    /// Asks the group runner for an immediate commit (for `ack = "first"`).
    pub(crate) commit_now: Option<mpsc::Sender<tokio::sync::oneshot::Sender<()>>>,
    /// The first message of a manual-ack route that was not acknowledged.
    pub(crate) held: Option<i64>,
    pub(crate) config: Arc<Config>,
    pub(crate) shutdown: Shutdown,
    /// Told once the start offset is known.
    pub(crate) ready: mpsc::UnboundedSender<()>,
}

impl PartitionConsumer {
    pub(crate) async fn run(mut self) {
        let topic = &*self.topic;
        let partition = self.partition;
        let Some(pc) = self.partition_client().await else {
            return;
        };
        let pc = Arc::new(pc);
        let start = match self.start {
            Some(offset) => offset,
            None => match resolve_offset(&pc, self.reset, &self.shutdown, topic).await {
                Some(offset) => offset,
                None => return,
            },
        };
        tracing::debug!(
            topic,
            partition,
            start,
            handler = self.route.name(),
            "consuming"
        );
        let _ = self.ready.send(());

        let (tx, mut rx) = mpsc::channel(2);
        let fetcher = tokio::spawn(fetch_loop(
            pc.clone(),
            start,
            tx,
            self.shutdown.clone(),
            self.config.clone(),
            self.reset,
        ));
        // Fetched batches whose outputs await acks: (last offset, messages, acks).
        let mut inflight: VecDeque<(i64, usize, Vec<Ack>)> = VecDeque::new();
        let mut inflight_msgs = 0;
        let mut shutdown = self.shutdown.clone();
        let ack_first = self.pipeline.policy(self.route).ack == AckMode::First;
        loop {
            let batch = tokio::select! {
                biased;
                () = shutdown.wait() => break,
                // Acks completing move the done offset even when no new messages arrive.
                () = settle_front(&mut inflight), if !inflight.is_empty() => {
                    if let Some((offset, n, _)) = inflight.pop_front() {
                        inflight_msgs -= n;
                        self.done(offset);
                    }
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
                    self.done(last.offset);
                    self.commit_now().await;
                }
            }
            let mut outputs = Vec::new();
            let mut last = None;
            let mut handled = 0;
            let mut stop = false;
            for record in batch {
                if self.shutdown.is_triggered() {
                    break;
                }
                let offset = record.offset;
                let msg = to_message(&self.topic, partition, record);
                let outcome = self.pipeline.handle(self.route, msg).await;
                match outcome {
                    // Logged by the pipeline; not done, so consumed again after a restart.
                    Outcome::Stopped { .. } => {
                        stop = true;
                        break;
                    }
                    // Manual ack: published, but its offset holds back later commits.
                    Outcome::Unacked(_) => {
                        self.held.get_or_insert(offset);
                    }
                    _ => {}
                }
                outputs.extend(outcome.into_outputs());
                last = Some(offset);
                handled += 1;
            }
            let Some(last) = last else { break };
            let acks = match self.producers.enqueue(&self.client, outputs).await {
                Ok(acks) => acks,
                Err(e) => {
                    // Not marked done: these messages are consumed again after a restart or
                    // rebalance. This partition stops here rather than skip them.
                    tracing::error!(
                        topic, partition, offset = last, error = %e,
                        "cannot queue the outputs; stopping this partition's consumer"
                    );
                    break;
                }
            };
            inflight.push_back((last, handled, acks));
            inflight_msgs += handled;
            if stop {
                tracing::error!(
                    topic,
                    partition,
                    offset = last + 1,
                    handler = self.route.name(),
                    "partition consumer stopped by the failure policy (on_failure = \"stop\")"
                );
                break;
            }
            while inflight_msgs > self.config.max_in_flight {
                settle_front(&mut inflight).await;
                let Some((offset, n, _)) = inflight.pop_front() else {
                    break;
                };
                inflight_msgs -= n;
                self.done(offset);
            }
        }
        fetcher.abort();
        // Graceful stop: the message being handled finished; wait for the outputs' acks.
        while !inflight.is_empty() {
            settle_front(&mut inflight).await;
            if let Some((offset, _, _)) = inflight.pop_front() {
                self.done(offset);
            }
        }
        tracing::debug!(topic, partition, handler = self.route.name(), "stopped");
    }

    /// Every message up to `offset` is done: the next offset to commit is `offset + 1`, unless
    /// an unacknowledged message (manual ack) holds it back.
    fn done(&self, offset: i64) {
        if let Some(progress) = &self.progress {
            let next = self.held.map_or(offset + 1, |h| h.min(offset + 1));
            // Never backwards: with `ack = "first"` the offset was already moved past the batch.
            progress.fetch_max(next, Ordering::AcqRel);
        }
    }

    /// Asks the group to commit the done offsets now, and waits for it.
    async fn commit_now(&self) {
        if let Some(tx) = &self.commit_now {
            let (done_tx, done_rx) = tokio::sync::oneshot::channel();
            if tx.send(done_tx).await.is_ok() {
                let _ = done_rx.await;
            }
        }
    }

    async fn partition_client(&self) -> Option<PartitionClient> {
        let mut backoff = Duration::from_millis(100);
        loop {
            let attempt = self.client.partition_client(
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

/// Waits until every output of the oldest in-flight batch was acknowledged (or abandoned, which
/// only happens when the producers shut down). Cancellation-safe: finished acks are removed.
async fn settle_front(inflight: &mut VecDeque<(i64, usize, Vec<Ack>)>) {
    let Some((offset, _, acks)) = inflight.front_mut() else {
        return;
    };
    while let Some(ack) = acks.last_mut() {
        let result = ack.await;
        acks.pop();
        match result {
            Ok(Ok(())) => {}
            Ok(Err(reason)) => {
                tracing::error!(offset = *offset, reason, "output was not delivered")
            }
            Err(_) => tracing::error!(
                offset = *offset,
                "output was abandoned before the broker acknowledged it"
            ),
        }
    }
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
