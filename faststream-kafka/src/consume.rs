//! The per-partition loop: fetch, handle, produce outputs, track what is done.
//!
//! One task per (route, topic, partition). A fetch task keeps the next batch ready while the
//! current one is handled; messages are handled strictly in offset order. Outputs are queued
//! to the producers in small chunks as handlers return (so they keep their order per target
//! partition, and the producers' byte budget bounds memory; see [`Chunk`]), and a message is
//! done once the broker acknowledged every output of its chunk; done chunks move the partition's
//! position. At most `max_in_flight` messages await acks (beyond that the loop waits:
//! backpressure).
//!
//! Below the handler nothing loops on poison: a record batch that cannot be read and a message
//! whose output the broker refused go through the route's failure policy like a handler
//! failure (kinds `fetch` and `publish`); a dead-letter copy that cannot be written stops the
//! partition, so nothing is lost.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use faststream_core::{
    dlq_header, AckMode, BatchDef, HandlerError, Message, OffsetReset, Outcome, OutgoingMessage,
    Pipeline, RetryLane, RouteDef, Shutdown,
};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit};
use tokio_util::task::AbortOnDropHandle;

use crate::backoff::Backoff;
use crate::config::Config;
use crate::error::KafkaError;
use crate::fetch::{FetchError, PartitionReader};
use crate::metrics::{Lag, PartitionMetrics};
use crate::produce::{Ack, Producers};
use crate::records::Fetched;
use crate::transaction::Txn;
use faststream_core::{OffsetTracker, PartitionStop, Position, SeekTo, ShutdownTrigger, Step};

/// What every consumer of one service shares.
#[derive(Debug)]
pub(crate) struct Runtime {
    pub(crate) producers: Arc<Producers>,
    pub(crate) pipeline: Arc<Pipeline>,
    pub(crate) config: Arc<Config>,
    pub(crate) cluster: Arc<crate::cluster::Cluster>,
    /// An exactly-once group's transaction (its consumers' `producers` write in it).
    pub(crate) txn: Option<Arc<Txn>>,
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
    /// Set for a route with retry topics.
    pub(crate) lane: Option<LaneLink>,
}

/// A consumer's part in a retry lane ([`RetryLane`]): the main topic's partition (stage 0)
/// rebuilds the lane from each retry topic's partition before handling anything; a retry
/// topic's partition (stage `n`) waits for that, and ignores seeks (they move main topics).
#[derive(Debug)]
pub(crate) struct LaneLink {
    pub(crate) lane: Arc<RetryLane>,
    pub(crate) stage: usize,
    /// For stage 0: each retry topic and where its partition starts (a committed offset;
    /// `None`: its beginning).
    pub(crate) restore_from: Vec<(Arc<str>, Option<i64>)>,
}

/// A queued chunk: its messages' offsets and the acks of their outputs.
#[derive(Debug)]
struct Queued {
    first: i64,
    last: i64,
    messages: usize,
    owners: Vec<Owner>,
    /// Per target partition: indices into `owners`, and the ack.
    acks: Vec<(Vec<u32>, Ack)>,
    /// Outputs not delivered so far: index into `owners`, why.
    failed: Vec<(u32, String)>,
}

/// Where an output came from: the offsets of its message (a batch's first and last), and
/// whether it is a dead-letter copy.
#[derive(Debug, Clone, Copy)]
struct Owner {
    first: i64,
    last: i64,
    dead_letter: bool,
}

/// One message's outputs, settled (concurrent consumption).
#[derive(Debug)]
struct MessageSettled {
    offset: i64,
    /// `Err`: an output was not delivered.
    result: Result<(), String>,
    /// The output was the message's dead-letter copy.
    dead_letter: bool,
    /// The message awaits its manual ack: not done even now.
    unacked: bool,
}

/// A chunk whose outputs are all settled.
#[derive(Debug)]
struct Settled {
    last: i64,
    /// Messages (or batches) with an output that was not delivered: first and last offset,
    /// why (first failure per message).
    failed: Vec<(i64, i64, String)>,
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
    owners: Vec<Owner>,
}

const CHUNK_MESSAGES: usize = 128;
const CHUNK_BYTES: usize = 64 * 1024;
const CHUNK_WAIT: Duration = Duration::from_millis(2);

impl Chunk {
    fn is_empty(&self) -> bool {
        self.span.is_none()
    }

    /// Adds the outputs of `count` messages from `first` to `offset` (one message: both its
    /// offset); true when the chunk should be queued now.
    fn push(
        &mut self,
        (first, offset, count): (i64, i64, usize),
        outputs: Vec<OutgoingMessage>,
        dead_letter: bool,
    ) -> bool {
        let owner = Owner {
            first,
            last: offset,
            dead_letter,
        };
        self.owners
            .extend(std::iter::repeat_n(owner, outputs.len()));
        self.span = Some(
            self.span
                .map_or((offset, offset), |(first, _)| (first, offset)),
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
    /// Consumes until shutdown (`Ok`), or until the partition cannot go on (`Err`: the failure
    /// policy said stop, an output or its dead-letter copy was not delivered, the broker refused
    /// the fetch for good). The message it stopped at is not done.
    /// Consumes the partition until the service's shutdown (or a stop of its own); a seek
    /// ([`faststream_core::Control::seek`]) for it ends the current run as a revoke would (the
    /// message in hand finishes, outputs are acknowledged), moves the position and goes on
    /// from there.
    pub(crate) async fn run(mut self) -> Result<(), KafkaError> {
        let outer = self.shutdown.clone();
        let mut seeks = self.rt.pipeline.control().watch_seeks(self.route.name());
        // A seek asked before this consumer started is not for it.
        seeks.mark_unchanged();
        let mut first = true;
        let seekable = self.lane.as_ref().is_none_or(|l| l.stage == 0);
        loop {
            let (trigger, inner) = Shutdown::new();
            self.shutdown = inner;
            let watcher = tokio::spawn(watch_for_seek(
                outer.clone(),
                seeks,
                (self.topic.clone(), self.partition, seekable),
                trigger,
            ));
            let res = self.run_once(first).await;
            first = false;
            if res.is_err() || outer.is_triggered() {
                watcher.abort();
                return res;
            }
            // Not stopped, nor by the service: a seek ended the run (its watcher returns with
            // it at once).
            let Ok(Ok((back, Some(seek)))) =
                tokio::time::timeout(Duration::from_secs(5), watcher).await
            else {
                return res;
            };
            seeks = back;
            match self.seek_start(seek, outer.clone()).await {
                Some(start) => self.start = Some(start),
                None => return Ok(()),
            }
        }
    }

    /// Rebuilds the lane: reads the partition of each retry topic from where its consumer
    /// starts to the end it has now, recording the messages of this partition's keys still on
    /// the retry path. Returns early (the caller sees the shutdown) when the service stops.
    async fn restore_lane(&self, link: &LaneLink) -> Result<(), String> {
        let partition = self.partition;
        let mut stop = self.shutdown.clone();
        for (stage, (topic, start)) in (1..).zip(&link.restore_from) {
            let mut reader =
                PartitionReader::new(self.rt.cluster.clone(), topic.clone(), partition);
            let mut offset = match start {
                Some(o) => *o,
                None => match resolve_offset(
                    &mut reader,
                    OffsetReset::Earliest,
                    &self.shutdown,
                    topic,
                    partition,
                )
                .await?
                {
                    Some(o) => o,
                    None => return Ok(()),
                },
            };
            let mut end = None;
            let mut backoff = Backoff::requests();
            let mut found = 0;
            while end.is_none_or(|end| offset < end) {
                let res = tokio::select! {
                    res = reader.fetch(offset) => res,
                    () = stop.wait() => return Ok(()),
                };
                let fetch = match res {
                    Ok(fetch) => fetch,
                    Err(FetchError::OffsetOutOfRange) => {
                        let earliest = OffsetReset::Earliest;
                        match resolve_offset(&mut reader, earliest, &self.shutdown, topic, partition)
                            .await?
                        {
                            Some(o) => offset = o,
                            None => return Ok(()),
                        }
                        continue;
                    }
                    Err(FetchError::Fatal(e)) => {
                        return Err(format!(
                            "cannot read retry topic {topic:?} partition {partition} to rebuild the retry lane: {e}"
                        ))
                    }
                    Err(FetchError::Retriable(e)) => {
                        tracing::warn!(topic = &**topic, partition, offset, error = %e, "reading the retry topic failed; retrying");
                        tokio::select! {
                            () = backoff.sleep() => {}
                            () = stop.wait() => return Ok(()),
                        }
                        continue;
                    }
                };
                backoff.reset();
                end = end.or(Some(fetch.end)).filter(|e| *e >= 0);
                for item in &fetch.decoded.items {
                    if let Fetched::Record(msg) = item {
                        link.lane.restore(msg, stage);
                        found += 1;
                    }
                }
                let next = fetch.decoded.next.unwrap_or(offset).max(offset);
                if next == offset {
                    // Nothing more to read (a broker that does not say its end, or the end).
                    break;
                }
                offset = next;
            }
            tracing::debug!(
                topic = &**topic,
                partition,
                read = found,
                "retry lane rebuilt from the retry topic"
            );
        }
        tracing::debug!(
            topic = &*self.topic,
            partition,
            pending = link.lane.pending(),
            "retry lane ready"
        );
        Ok(())
    }

    /// Where a seek moves the partition (`None`: the service is stopping), with its position
    /// set there (the group commits it).
    async fn seek_start(&self, to: SeekTo, mut shutdown: Shutdown) -> Option<i64> {
        let mut reader =
            PartitionReader::new(self.rt.cluster.clone(), self.topic.clone(), self.partition);
        let mut backoff = crate::backoff::Backoff::requests();
        let start = loop {
            let res = match to {
                SeekTo::Offset(o) => Ok(o),
                SeekTo::Beginning => reader.offset(true).await,
                SeekTo::Timestamp(ms) => reader.offset_at(ms).await,
                _ => reader.offset(false).await,
            };
            match res {
                Ok(o) => break o,
                Err(e) => {
                    tracing::warn!(topic = &*self.topic, partition = self.partition, error = %e, retry_in = ?backoff.wait(), "finding the seek's offset failed; retrying");
                    tokio::select! {
                        () = backoff.sleep() => {}
                        () = shutdown.wait() => return None,
                    }
                }
            }
        };
        let before = self.group.as_ref().and_then(|g| g.position.get());
        if let Some(group) = &self.group {
            group.position.seek(start);
        }
        tracing::info!(
            topic = &*self.topic,
            partition = self.partition,
            handler = self.route.name(),
            ?to,
            from = before,
            start,
            "seeked"
        );
        Some(start)
    }

    async fn run_once(&self, first: bool) -> Result<(), KafkaError> {
        let topic = &*self.topic;
        let partition = self.partition;
        let config = &self.rt.config;
        let mut reader =
            PartitionReader::new(self.rt.cluster.clone(), self.topic.clone(), partition);
        let start = match self.start {
            Some(offset) => offset,
            None => match resolve_offset(&mut reader, self.reset, &self.shutdown, topic, partition)
                .await
            {
                Ok(Some(offset)) => offset,
                Ok(None) => return Ok(()),
                Err(reason) => return Err(self.stopped(-1, reason)),
            },
        };
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
        if first {
            // (After a seek it goes on: it was ready long ago.)
            let _ = self.ready.send(());
        }
        if let Some(link) = &self.lane {
            let mut stop = self.shutdown.clone();
            if link.stage == 0 && !link.lane.is_ready() {
                if let Err(reason) = self.restore_lane(link).await {
                    return Err(self.stopped(-1, reason));
                }
                if self.shutdown.is_triggered() {
                    return Ok(());
                }
                link.lane.mark_ready();
            } else {
                tokio::select! {
                    () = link.lane.ready() => {}
                    () = stop.wait() => return Ok(()),
                }
            }
        }

        let metrics = PartitionMetrics::new(self.route.name(), topic, partition);
        let (tx, rx) = mpsc::channel(2);
        let paused = self.rt.pipeline.control().watch(self.route.name());
        let fetcher = AbortOnDropHandle::new(tokio::spawn(fetch_loop(
            reader,
            start,
            tx,
            self.shutdown.clone(),
            self.reset,
            metrics.lag(),
            paused.clone(),
        )));
        let mut rx = Feed {
            rx,
            paused,
            topic: self.topic.clone(),
            partition,
            next: None,
            held: None,
        };
        let mut inflight = InFlight::default();
        let mut chunk = Chunk::default();
        let mut shutdown = self.shutdown.clone();
        let mut ticker = tokio::time::interval(Duration::from_secs(1));
        let ack_first = self.rt.pipeline.policy(self.route).ack == AckMode::First;
        let mut stopped = None;
        let concurrency = self.rt.pipeline.policy(self.route).concurrency as usize;
        // Held until everything below settled (dropped last).
        let mut turn = Turn::new(self.rt.txn.clone());
        if let Some(batch) = self.route.batch() {
            stopped = self
                .run_batches(
                    batch,
                    &mut rx,
                    &mut tracker,
                    ack_first,
                    (&mut chunk, &mut inflight, &mut turn),
                    &metrics,
                )
                .await;
        } else if concurrency > 1 {
            stopped = self
                .run_concurrently(
                    concurrency,
                    (&mut rx, &mut turn),
                    &mut tracker,
                    ack_first,
                    &metrics,
                )
                .await;
        } else {
            'fetched: loop {
                if inflight.is_empty() && chunk.is_empty() {
                    turn.quiet();
                }
                let batch = tokio::select! {
                    biased;
                    () = shutdown.wait() => break,
                    // Acks completing move the position even when no new messages arrive.
                    res = settle_front(&mut inflight), if !inflight.is_empty() => {
                        if let Err(e) = self.finish(res, &tracker).await {
                            stopped = Some(e);
                            break;
                        }
                        continue;
                    }
                    _ = ticker.tick() => {
                        metrics.in_flight(inflight.messages);
                        self.warn_overdue(&mut tracker);
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
                    self.commit_before_handling(&tracker, &batch).await;
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
                                        if let Err(e) = self.flush(&mut chunk, &mut inflight).await {
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
                            let outcome = self.unreadable((first, last), raw, &reason, &metrics);
                            (last, outcome)
                        }
                        Fetched::Passed { last } => (last, Outcome::Done(Vec::new())),
                    };
                    let (outputs, dead_letter) = match tracker.step(offset, outcome) {
                        Step::Stop(reason) => {
                            stopped = Some((offset, reason));
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
        }
        // Messages handled before the stop are done once their outputs are acknowledged.
        if let Err(e) = self.flush(&mut chunk, &mut inflight).await {
            stopped.get_or_insert(e);
        }
        drop(fetcher);
        // Graceful stop: the message being handled finished; wait for the outputs' acks.
        while !inflight.is_empty() {
            let res = settle_front(&mut inflight).await;
            if let Err(e) = self.finish(res, &tracker).await {
                stopped.get_or_insert(e);
                break;
            }
        }
        tracing::debug!(topic, partition, handler = self.route.name(), "stopped");
        match stopped {
            None => Ok(()),
            Some((offset, reason)) => Err(self.stopped(offset, reason)),
        }
    }

    /// A batch route: fetched messages are collected into batches of at most `max_records`,
    /// each handed over once full or `batch_timeout` after its first message arrived (a record
    /// batch that cannot be read, and transaction markers, pass in offset order). The position
    /// moves past a batch once its outputs (and its failed messages' dead-letter copies) are
    /// acknowledged. Returns why it stopped on its own, if it did.
    async fn run_batches(
        &self,
        def: BatchDef,
        rx: &mut Feed,
        tracker: &mut OffsetTracker,
        ack_first: bool,
        (chunk, inflight, turn): (&mut Chunk, &mut InFlight, &mut Turn),
        metrics: &PartitionMetrics,
    ) -> Option<(i64, String)> {
        let mut shutdown = self.shutdown.clone();
        let mut ticker = tokio::time::interval(Duration::from_secs(1));
        let max = def.max_records();
        // Fetched items not handed over yet, each with when it arrived; how many are records.
        let mut buffer: VecDeque<(tokio::time::Instant, Fetched)> = VecDeque::new();
        let mut records = 0usize;
        loop {
            // The oldest waiting message's batch is due at this time.
            let due = buffer
                .iter()
                .find(|(_, item)| matches!(item, Fetched::Record(_)))
                .map(|(arrived, _)| *arrived + def.timeout());
            let now = tokio::time::Instant::now();
            if inflight.is_empty() && chunk.is_empty() {
                turn.quiet();
            }
            if !buffer.is_empty()
                && turn.may_start()
                && (records >= max || due.is_none_or(|due| due <= now))
            {
                if !turn.enter(&self.shutdown).await {
                    return None;
                }
                let mut items = Vec::new();
                let mut taken = 0;
                while let Some((_, item)) = buffer.front() {
                    if matches!(item, Fetched::Record(_)) {
                        if taken == max {
                            break;
                        }
                        taken += 1;
                    }
                    items.push(buffer.pop_front().expect("peeked").1);
                }
                records -= taken;
                match self
                    .handle_batch(items, (chunk, inflight), tracker, metrics)
                    .await
                {
                    Ok(true) => continue,
                    Ok(false) => return None,
                    Err(e) => return Some(e),
                }
            }
            tokio::select! {
                biased;
                () = shutdown.wait() => return None,
                res = settle_front(inflight), if !inflight.is_empty() => {
                    if let Err(e) = self.finish(res, tracker).await {
                        return Some(e);
                    }
                }
                _ = ticker.tick() => {
                    metrics.in_flight(inflight.messages);
                    self.warn_overdue(tracker);
                }
                () = tokio::time::sleep_until(due.unwrap_or(now)), if due.is_some() && turn.may_start() => {}
                batch = rx.recv(), if records < max => match batch {
                    Some(Ok(batch)) => {
                        if ack_first {
                            self.commit_before_handling(tracker, &batch).await;
                        }
                        let arrived = tokio::time::Instant::now();
                        records += batch.iter().filter(|i| matches!(i, Fetched::Record(_))).count();
                        buffer.extend(batch.into_iter().map(|item| (arrived, item)));
                    }
                    Some(Err(e)) => return Some(e),
                    None => return None,
                },
            }
        }
    }

    /// Handles one batch's items (records, unreadable batches, markers, in offset order) and
    /// queues what they publish. `Ok(false)`: a retry backoff was interrupted (shutdown or
    /// revoke), nothing of the batch is done.
    async fn handle_batch(
        &self,
        items: Vec<Fetched>,
        (chunk, inflight): (&mut Chunk, &mut InFlight),
        tracker: &mut OffsetTracker,
        metrics: &PartitionMetrics,
    ) -> Result<bool, (i64, String)> {
        let Some(end) = items.last().map(Fetched::last_offset) else {
            return Ok(true);
        };
        // ((first offset, last offset, messages), outputs, dead-letter copy), queued in offset
        // order once everything is handled, so no position passes a message not handled yet.
        type Entry = ((i64, i64, usize), Vec<OutgoingMessage>, bool);
        let mut entries: Vec<Entry> = Vec::new();
        let mut msgs = Vec::new();
        for item in items {
            match item {
                Fetched::Record(msg) => {
                    metrics.received(msg.payload.as_ref().map_or(0, |p| p.len()));
                    msgs.push(msg);
                }
                Fetched::Unreadable {
                    first,
                    last,
                    raw,
                    reason,
                } => {
                    let outcome = self.unreadable((first, last), raw, &reason, metrics);
                    match tracker.step(first, outcome) {
                        Step::Stop(reason) => return Err((first, reason)),
                        Step::Interrupt => return Ok(false),
                        Step::Publish {
                            outputs,
                            dead_letter,
                            ..
                        } => entries.push(((first, last, 1), outputs, dead_letter)),
                    }
                }
                Fetched::Passed { .. } => {}
            }
        }
        if let (Some(first), Some(last), count) = (
            msgs.first().map(|m| m.offset),
            msgs.last().map(|m| m.offset),
            msgs.len(),
        ) {
            let started = tokio::time::Instant::now();
            let outcome = match &self.lane {
                Some(link) => {
                    let (lane, stage) = (&link.lane, link.stage);
                    let stop = Some(&self.shutdown);
                    let pipeline = &self.rt.pipeline;
                    pipeline
                        .handle_batch_in_lane(self.route, msgs, stop, lane, stage)
                        .await
                }
                None => {
                    let stop = Some(&self.shutdown);
                    self.rt.pipeline.handle_batch(self.route, msgs, stop).await
                }
            };
            metrics.since(started);
            let batched = count - outcome.failed.len();
            metrics.outcome(&Outcome::Done(Vec::new()), batched as u64);
            for (offset, failed) in outcome.failed {
                metrics.outcome(&failed, 1);
                match tracker.step(offset, failed) {
                    Step::Stop(reason) => return Err((offset, reason)),
                    Step::Interrupt => return Ok(false),
                    Step::Publish {
                        outputs,
                        dead_letter,
                        ..
                    } => entries.push(((offset, offset, 1), outputs, dead_letter)),
                }
            }
            // A failed output of the batch fails each of its messages.
            entries.push(((first, last, batched), outcome.outputs, false));
        }
        entries.sort_by_key(|((_, last, _), _, _)| *last);
        entries.push(((end, end, 0), Vec::new(), false));
        for (span, outputs, dead_letter) in entries {
            if outputs.is_empty() && chunk.is_empty() && inflight.is_empty() {
                tracker.done(span.1);
                continue;
            }
            if chunk.push(span, outputs, dead_letter) {
                self.flush(chunk, inflight).await?;
            }
        }
        self.flush(chunk, inflight).await?;
        self.settle(inflight, tracker).await?;
        Ok(true)
    }

    /// `concurrency > 1`: up to `concurrency` messages of the partition handled at once, one
    /// at a time per key (keyless messages in parallel). Each message's outputs are queued as
    /// its handler returns (so outputs of one key keep their order); the position moves past
    /// the contiguous run of messages whose outputs were acknowledged. Returns why it stopped
    /// on its own, if it did; on shutdown, handlers in hand finish and their outputs are
    /// awaited first.
    async fn run_concurrently(
        &self,
        concurrency: usize,
        (rx, turn): (&mut Feed, &mut Turn),
        tracker: &mut OffsetTracker,
        ack_first: bool,
        metrics: &PartitionMetrics,
    ) -> Option<(i64, String)> {
        use std::collections::{BTreeMap, HashMap};
        use tokio::task::JoinSet;

        /// What a handler task hands back: offset, key, outcome, how long it took.
        type Handled = (i64, Option<bytes::Bytes>, Outcome, Duration);
        let mut shutdown = self.shutdown.clone();
        let mut ticker = tokio::time::interval(Duration::from_secs(1));
        // Offsets not done yet (first -> last of the item), and the offset after the last item.
        let mut pending: BTreeMap<i64, i64> = BTreeMap::new();
        let mut end: Option<i64> = None;
        // Messages ready to run (their key is free), and per busy key those waiting behind it.
        let mut ready: VecDeque<Message> = VecDeque::new();
        let mut waiting: HashMap<bytes::Bytes, VecDeque<Message>> = HashMap::new();
        let mut buffered = 0usize;
        let mut running: JoinSet<Handled> = JoinSet::new();
        let mut acking: JoinSet<MessageSettled> = JoinSet::new();
        let mut stopped: Option<(i64, String)> = None;
        let mut stopping = false;
        /// Done up to the first offset not done.
        fn advance(tracker: &OffsetTracker, pending: &BTreeMap<i64, i64>, end: Option<i64>) {
            if let Some(next) = pending.keys().next().copied().or(end) {
                tracker.done(next - 1);
            }
        }
        // The furthest offset whose handling started (or whose outputs were queued).
        let mut started_up_to = i64::MIN;
        loop {
            // Quiet (for a transaction's commit): everything up to the furthest message
            // started is done, so no output belongs to a message past the position.
            if pending
                .keys()
                .next()
                .is_none_or(|first| *first > started_up_to)
            {
                turn.quiet();
            }
            // Exactly-once, stopping gracefully (shutdown, revoke): the messages before the
            // furthest one started still run, so the position passes every output of the
            // transaction that commits now.
            let drain = stopping && stopped.is_none() && self.rt.txn.is_some();
            while (!stopping || drain)
                && running.len() < concurrency
                && acking.len() < self.rt.config.max_in_flight
            {
                // While a transaction commits, only messages before the furthest one started
                // run (the commit waits for that run to be done); nothing new starts.
                let pick = match turn.may_start() && !stopping {
                    true => (!ready.is_empty()).then_some(0),
                    false => ready.iter().position(|m| m.offset < started_up_to),
                };
                let Some(i) = pick else { break };
                if !turn.enter(&self.shutdown).await {
                    stopping = true;
                    break;
                }
                let Some(msg) = ready.remove(i) else { break };
                started_up_to = started_up_to.max(msg.offset);
                buffered -= 1;
                let (pipeline, route, stop) =
                    (self.rt.pipeline.clone(), self.route, self.shutdown.clone());
                let lane = self.lane.as_ref().map(|l| (l.lane.clone(), l.stage));
                let (offset, key) = (msg.offset, msg.key.clone());
                running.spawn(async move {
                    let started = Instant::now();
                    let lane = lane.as_ref().map(|(lane, stage)| (&**lane, *stage));
                    let outcome = handle_message(&pipeline, route, msg, &stop, lane).await;
                    (offset, key, outcome, started.elapsed())
                });
            }
            let holes_left = drain && ready.iter().any(|m| m.offset < started_up_to);
            if stopping && running.is_empty() && acking.is_empty() && !holes_left {
                break;
            }
            tokio::select! {
                biased;
                () = shutdown.wait(), if !stopping => stopping = true,
                Some(joined) = running.join_next(), if !running.is_empty() => {
                    let (offset, key, outcome, took) = match joined {
                        Ok(handled) => handled,
                        Err(e) => {
                            stopped.get_or_insert((pending.keys().next().copied().unwrap_or(-1), format!("a handler task failed: {e}")));
                            stopping = true;
                            continue;
                        }
                    };
                    metrics.duration(took);
                    metrics.outcome(&outcome, 1);
                    // The key's next message may run now.
                    if let Some(key) = key {
                        match waiting.get_mut(&key).and_then(VecDeque::pop_front) {
                            Some(next) => ready.push_back(next),
                            None => {
                                waiting.remove(&key);
                            }
                        }
                    }
                    let (outputs, dead_letter, unacked) = match tracker.step(offset, outcome) {
                        Step::Stop(reason) => {
                            stopped.get_or_insert((offset, reason));
                            stopping = true;
                            continue;
                        }
                        Step::Interrupt => {
                            stopping = true;
                            continue;
                        }
                        Step::Publish { outputs, dead_letter, held } => (outputs, dead_letter, held),
                    };
                    match self.queue_outputs(offset, outputs, dead_letter, unacked, &mut acking).await {
                        // Nothing to publish: done now (a manual-ack message stays held).
                        Ok(false) if !unacked => {
                            pending.remove(&offset);
                            advance(tracker, &pending, end);
                        }
                        Ok(_) => {}
                        Err(e) => {
                            stopped.get_or_insert(e);
                            stopping = true;
                        }
                    }
                }
                Some(joined) = acking.join_next(), if !acking.is_empty() => {
                    let MessageSettled { offset, result, dead_letter, unacked } = match joined {
                        Ok(acked) => acked,
                        Err(e) => {
                            stopped.get_or_insert((pending.keys().next().copied().unwrap_or(-1), format!("an ack task failed: {e}")));
                            stopping = true;
                            continue;
                        }
                    };
                    if let (Err(reason), true) = (&result, dead_letter) {
                        stopped.get_or_insert((offset, format!("its dead-letter copy was not delivered: {reason}")));
                        stopping = true;
                        continue;
                    }
                    if let Err(reason) = result {
                        if let Err(e) = self.fail_outputs(vec![(offset, offset, reason)]).await {
                            stopped.get_or_insert(e);
                            stopping = true;
                            continue;
                        }
                    }
                    if !unacked {
                        // (A manual-ack message stays held until acked.)
                        pending.remove(&offset);
                        advance(tracker, &pending, end);
                    }
                }
                _ = ticker.tick() => {
                    metrics.in_flight(pending.len());
                    self.warn_overdue(tracker);
                }
                batch = rx.recv(), if !stopping && buffered < concurrency && turn.may_start() => {
                    let batch = match batch {
                        Some(Ok(b)) => b,
                        Some(Err(e)) => {
                            stopped.get_or_insert(e);
                            stopping = true;
                            continue;
                        }
                        None => {
                            stopping = true;
                            continue;
                        }
                    };
                    if ack_first {
                        self.commit_before_handling(tracker, &batch).await;
                    }
                    if !turn.enter(&self.shutdown).await {
                        stopping = true;
                        continue;
                    }
                    for item in batch {
                        end = Some(item.last_offset() + 1);
                        match item {
                            Fetched::Record(msg) => {
                                metrics.received(msg.payload.as_ref().map_or(0, |p| p.len()));
                                pending.insert(msg.offset, msg.offset);
                                buffered += 1;
                                match &msg.key {
                                    Some(key) => match waiting.get_mut(key) {
                                        // The key is busy: wait behind it.
                                        Some(queue) => queue.push_back(msg),
                                        None => {
                                            waiting.insert(key.clone(), VecDeque::new());
                                            ready.push_back(msg);
                                        }
                                    },
                                    None => ready.push_back(msg),
                                }
                            }
                            Fetched::Unreadable { first, last, raw, reason } => {
                                pending.insert(first, last);
                                started_up_to = started_up_to.max(last);
                                let outcome = self.unreadable((first, last), raw, &reason, metrics);
                                let (outputs, dead_letter) = match tracker.step(first, outcome) {
                                    Step::Stop(reason) => {
                                        stopped.get_or_insert((first, reason));
                                        stopping = true;
                                        break;
                                    }
                                    Step::Interrupt => {
                                        stopping = true;
                                        break;
                                    }
                                    Step::Publish { outputs, dead_letter, .. } => (outputs, dead_letter),
                                };
                                match self.queue_outputs(first, outputs, dead_letter, false, &mut acking).await {
                                    Ok(false) => {
                                        pending.remove(&first);
                                    }
                                    Ok(true) => {}
                                    Err(e) => {
                                        stopped.get_or_insert(e);
                                        stopping = true;
                                        break;
                                    }
                                }
                            }
                            Fetched::Passed { .. } => {}
                        }
                    }
                    advance(tracker, &pending, end);
                }
            }
        }
        if let Some(txn) = &self.rt.txn {
            if let Some(first) = pending.keys().next().filter(|f| **f <= started_up_to) {
                // Outputs of messages past the position are in the transaction: it must not
                // commit (the partitions start again from the committed offsets).
                txn.poison(format!(
                    "partition {} of topic {:?} stopped at offset {first} with later messages' outputs in the transaction",
                    self.partition, self.topic
                ));
            }
        }
        stopped
    }

    /// Queues one message's outputs; its ack task reports when they are settled. `false`: there
    /// was nothing to queue (no task: the caller settles the message at once).
    async fn queue_outputs(
        &self,
        offset: i64,
        outputs: Vec<OutgoingMessage>,
        dead_letter: bool,
        unacked: bool,
        acking: &mut tokio::task::JoinSet<MessageSettled>,
    ) -> Result<bool, (i64, String)> {
        if outputs.is_empty() {
            return Ok(false);
        }
        let queued = self.enqueue(offset, outputs).await?;
        acking.spawn(async move {
            MessageSettled {
                offset,
                result: queued.delivered().await,
                dead_letter,
                unacked,
            }
        });
        Ok(true)
    }

    fn stopped(&self, offset: i64, reason: String) -> KafkaError {
        let err = KafkaError::PartitionStopped(PartitionStop {
            handler: self.route.name().to_owned(),
            topic: self.topic.to_string(),
            partition: self.partition,
            offset,
            reason,
        });
        tracing::error!(error = %err, "partition consumer stopped");
        err
    }

    /// Records `first..=last` could not be read: the failure policy decides (the dead-letter
    /// copy carries the raw batch and both offsets); the outcome is counted in `metrics`.
    fn unreadable(
        &self,
        (first, last): (i64, i64),
        raw: bytes::Bytes,
        reason: &str,
        metrics: &PartitionMetrics,
    ) -> Outcome {
        let mut msg = Message::new(self.topic.clone(), raw).at(self.partition, first);
        msg.headers
            .insert(dlq_header::ORIGINAL_LAST_OFFSET, last.to_string());
        let error = HandlerError::Fetch(format!(
            "offsets {first}..={last} of {}[{}]: {reason}",
            self.topic, self.partition
        ));
        let outcome = self.rt.pipeline.fail(self.route, &msg, error);
        metrics.outcome(&outcome, 1);
        outcome
    }

    /// Queues outputs of the message(s) from `offset` on (nothing for none).
    async fn enqueue(
        &self,
        offset: i64,
        outputs: Vec<OutgoingMessage>,
    ) -> Result<crate::produce::Enqueued, (i64, String)> {
        if outputs.is_empty() {
            return Ok(Default::default());
        }
        self.rt
            .producers
            .enqueue(outputs)
            .await
            .map_err(|e| (offset, format!("outputs cannot be queued: {e}")))
    }

    /// Queues the chunk's outputs; its messages are done once the broker acknowledged them.
    async fn flush(&self, chunk: &mut Chunk, inflight: &mut InFlight) -> Result<(), (i64, String)> {
        let Some((first, last)) = chunk.span.take() else {
            return Ok(());
        };
        let outputs = std::mem::take(&mut chunk.outputs);
        let owners = std::mem::take(&mut chunk.owners);
        let messages = std::mem::take(&mut chunk.messages);
        chunk.bytes = 0;
        let queued = self.enqueue(first, outputs).await?;
        inflight.push_back(Queued {
            first,
            last,
            messages,
            owners,
            acks: queued.groups,
            failed: queued.refused,
        });
        Ok(())
    }

    /// Marks done what was acknowledged; waits while too many messages await acks.
    async fn settle(
        &self,
        inflight: &mut InFlight,
        tracker: &OffsetTracker,
    ) -> Result<(), (i64, String)> {
        while let Some(res) = settle_ready(inflight) {
            self.finish(res, tracker).await?;
        }
        while inflight.messages > self.rt.config.max_in_flight {
            let res = settle_front(inflight).await;
            self.finish(res, tracker).await?;
        }
        Ok(())
    }

    /// A chunk is settled: messages whose outputs were not delivered go through the failure
    /// policy (kind `publish`), then the chunk is done.
    async fn finish(
        &self,
        settled: Result<Settled, (i64, String)>,
        tracker: &OffsetTracker,
    ) -> Result<(), (i64, String)> {
        let settled = settled?;
        if !settled.failed.is_empty() {
            self.fail_outputs(settled.failed).await?;
        }
        tracker.done(settled.last);
        Ok(())
    }

    /// Each message is read again from the partition (the consumer keeps no copy of messages
    /// awaiting acks) and handed to the failure policy; a dead-letter copy is awaited here. A
    /// batch's output that failed fails every message of the batch.
    async fn fail_outputs(&self, failed: Vec<(i64, i64, String)>) -> Result<(), (i64, String)> {
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
    async fn fail_output(&self, msg: Message, reason: String) -> Result<(), (i64, String)> {
        let offset = msg.offset;
        let outcome = self
            .rt
            .pipeline
            .fail(self.route, &msg, HandlerError::Publish(reason));
        match outcome {
            Outcome::Stopped { error, .. } => {
                Err((offset, format!("the failure policy stopped it: {error}")))
            }
            Outcome::DeadLettered { dlq, .. } => {
                let topic = dlq.topic.clone();
                let queued = self
                    .rt
                    .producers
                    .enqueue(vec![*dlq])
                    .await
                    .map_err(|e| (offset, format!("dead-letter copy cannot be queued: {e}")))?;
                queued.delivered().await.map_err(|why| {
                    (
                        offset,
                        format!("an output was not delivered, and neither was its dead-letter copy to {topic:?}: {why}"),
                    )
                })
            }
            _ => Ok(()),
        }
    }

    /// The messages at offsets `first..=last`, read from the partition again.
    async fn read_again(
        &self,
        reader: &mut PartitionReader,
        first: i64,
        last: i64,
    ) -> Result<Vec<Message>, (i64, String)> {
        let mut backoff = Backoff::requests();
        let mut found = Vec::new();
        let mut offset = first;
        let mut failures = 0;
        loop {
            match reader.fetch(offset).await {
                Ok(fetch) => {
                    let next = fetch.decoded.next.unwrap_or(offset);
                    found.extend(fetch.decoded.items.into_iter().filter_map(|i| match i {
                        Fetched::Record(m) if (offset..=last).contains(&m.offset) => Some(m),
                        _ => None,
                    }));
                    if next > offset && next <= last {
                        offset = next;
                        continue;
                    }
                    if found.is_empty() {
                        return Err((
                            first,
                            "an output was not delivered, and the message is no longer readable to dead-letter it".into(),
                        ));
                    }
                    return Ok(found);
                }
                Err(FetchError::Retriable(e)) if failures < 10 => {
                    failures += 1;
                    tracing::warn!(topic = &*self.topic, partition = self.partition, offset, error = %e, "reading a message again failed; retrying");
                    backoff.sleep().await;
                }
                Err(e) => {
                    return Err((
                        offset,
                        format!(
                            "an output was not delivered, and the message cannot be read again: {e}"
                        ),
                    ))
                }
            }
        }
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

    /// `ack = "first"` (at-most-once): marks the whole fetched batch done and commits it before
    /// any of it is handled.
    async fn commit_before_handling(&self, tracker: &OffsetTracker, batch: &[Fetched]) {
        if let Some(last) = batch.last() {
            tracker.done(last.last_offset());
            self.commit_now().await;
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
}

/// Waits until every output of the oldest queued chunk was settled (acknowledged or refused),
/// and removes it. An abandoned ack (the producer went away) is an error naming the chunk's
/// first offset (nothing from there on is done). Cancellation-safe: settled acks are removed.
async fn settle_front(inflight: &mut InFlight) -> Result<Settled, (i64, String)> {
    let Some(front) = inflight.queue.front_mut() else {
        return Err((-1, "nothing in flight".into()));
    };
    while let Some((_, ack)) = front.acks.last_mut() {
        let result = ack.await;
        let (indices, _) = front.acks.pop().expect("awaited above");
        match result {
            Ok(Ok(())) => {}
            Ok(Err(failed)) => front.failed.extend(
                failed
                    .into_iter()
                    .map(|(i, reason)| (indices[i as usize], reason)),
            ),
            Err(_) => {
                return Err((
                    front.first,
                    "an output was abandoned before the broker acknowledged it".into(),
                ))
            }
        }
    }
    let front = inflight.queue.pop_front().expect("checked above");
    inflight.messages -= front.messages;
    let mut failed: Vec<(i64, i64, String)> = Vec::new();
    let mut by_output = front.failed;
    by_output.sort_by_key(|(i, _)| *i);
    for (i, reason) in by_output {
        let owner = front.owners[i as usize];
        if owner.dead_letter {
            return Err((
                owner.last,
                format!("its dead-letter copy was not delivered: {reason}"),
            ));
        }
        if failed.last().is_none_or(|(_, o, _)| *o != owner.last) {
            failed.push((owner.first, owner.last, reason));
        }
    }
    Ok(Settled {
        last: front.last,
        failed,
    })
}

/// The front chunk, if all its outputs are already settled (without waiting).
fn settle_ready(inflight: &mut InFlight) -> Option<Result<Settled, (i64, String)>> {
    if inflight.is_empty() {
        return None;
    }
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match std::pin::pin!(settle_front(inflight)).poll(&mut cx) {
        std::task::Poll::Ready(res) => Some(res),
        std::task::Poll::Pending => None,
    }
}

/// Where to start: the oldest kept record, or the end of the log. `Err` when the broker
/// refuses for good (not authorized), `Ok(None)` on shutdown.
/// Handles one message, in its retry lane if it has one.
async fn handle_message(
    pipeline: &Pipeline,
    route: &RouteDef,
    msg: Message,
    stop: &Shutdown,
    lane: Option<(&RetryLane, usize)>,
) -> Outcome {
    match lane {
        Some((lane, stage)) => {
            pipeline
                .handle_in_lane(route, msg, Some(stop), lane, stage)
                .await
        }
        None => pipeline.handle_until(route, msg, Some(stop)).await,
    }
}

async fn resolve_offset(
    reader: &mut PartitionReader,
    reset: OffsetReset,
    shutdown: &Shutdown,
    topic: &str,
    partition: i32,
) -> Result<Option<i64>, String> {
    let mut backoff = Backoff::requests();
    loop {
        let mut stop = shutdown.clone();
        let earliest = reset == OffsetReset::Earliest;
        tokio::select! {
            res = reader.offset(earliest) => match res {
                Ok(offset) => return Ok(Some(offset)),
                Err(FetchError::Fatal(e)) => return Err(format!("cannot read the start offset: {e}")),
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
const LAG_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Ends one run of a partition consumer (through `trigger`): at the service's shutdown (with
/// its deadline), or at a seek that covers the partition, which it returns with the seek
/// receiver.
async fn watch_for_seek(
    mut outer: Shutdown,
    mut seeks: tokio::sync::watch::Receiver<Option<faststream_core::Seek>>,
    (topic, partition, seekable): (Arc<str>, i32, bool),
    trigger: ShutdownTrigger,
) -> (
    tokio::sync::watch::Receiver<Option<faststream_core::Seek>>,
    Option<SeekTo>,
) {
    loop {
        tokio::select! {
            () = outer.wait() => {
                match outer.deadline() {
                    Some(deadline) => trigger.trigger_by(deadline),
                    None => trigger.trigger(),
                }
                // Keep the trigger until the run is over (dropping it would not matter: the
                // signal is given).
                std::future::pending::<()>().await;
            }
            changed = seeks.changed() => {
                if changed.is_err() || !seekable {
                    // The control is gone with the service; only its shutdown ends the run.
                    outer.wait().await;
                    continue;
                }
                let seek = seeks.borrow_and_update().clone();
                if let Some(seek) = seek.filter(|s| s.covers(&topic, partition)) {
                    trigger.trigger();
                    return (seeks, Some(seek.to()));
                }
            }
        }
    }
}

/// A partition's part in its group's transaction (exactly-once; without one it allows
/// everything): it holds the commit gate while it has started work that is not done, and
/// starts nothing new while a commit waits for that work (see [`crate::transaction`]).
struct Turn {
    txn: Option<Arc<Txn>>,
    held: Option<tokio::sync::OwnedRwLockReadGuard<()>>,
}

impl Turn {
    fn new(txn: Option<Arc<Txn>>) -> Self {
        Self { txn, held: None }
    }

    /// Whether new work may start: not while a commit waits for what this partition started.
    fn may_start(&self) -> bool {
        match &self.txn {
            None => true,
            Some(txn) => self.held.is_none() || !txn.closing(),
        }
    }

    /// Before starting work: joins the open transaction, waiting while a commit runs.
    /// `false`: stopped first.
    async fn enter(&mut self, shutdown: &Shutdown) -> bool {
        let Some(txn) = &self.txn else { return true };
        if self.held.is_some() {
            return true;
        }
        let mut stop = shutdown.clone();
        tokio::select! {
            held = txn.enter() => {
                self.held = Some(held);
                true
            }
            () = stop.wait() => false,
        }
    }

    /// Nothing started is unfinished (every output acknowledged, the position past it): a
    /// commit may go ahead.
    fn quiet(&mut self) {
        self.held = None;
    }
}

/// What the fetch task hands the consumer: items in offset order, or why it cannot go on.
type FetchedBatch = Result<Vec<Fetched>, (i64, String)>;

/// A fetched batch on its way to the consumer, with its share of the service's budget of
/// fetched bytes (`max_fetched_bytes`; none for a failure).
struct Buffered {
    batch: FetchedBatch,
    share: Option<OwnedSemaphorePermit>,
}

/// The fetched batches of one partition as its consumer takes them: none while the
/// partition is paused ([`faststream_core::Control`]).
struct Feed {
    rx: mpsc::Receiver<Buffered>,
    paused: tokio::sync::watch::Receiver<faststream_core::Paused>,
    topic: Arc<str>,
    partition: i32,
    /// A batch received and not handed out yet (the partition was paused meanwhile).
    next: Option<Buffered>,
    /// The budget share of the batch handed out last, given back when the consumer asks
    /// for the next one.
    held: Option<OwnedSemaphorePermit>,
}

impl Feed {
    /// The next batch, once the partition is not paused; also one that arrives while the
    /// caller waits is held back by a pause that came first. Cancel-safe: a batch is kept
    /// until it is returned.
    async fn recv(&mut self) -> Option<FetchedBatch> {
        // Asking for more: the batch taken last is the consumer's now, its fetched bytes go
        // back to the budget (a partition waiting here must not hold what others need).
        self.held = None;
        if self.next.is_none() {
            faststream_core::until_resumed(&mut self.paused, &self.topic, self.partition).await;
            self.next = Some(self.rx.recv().await?);
        }
        faststream_core::until_resumed(&mut self.paused, &self.topic, self.partition).await;
        let Buffered { batch, share } = self.next.take()?;
        self.held = share;
        Some(batch)
    }

    /// Gives back the rest of the batch taken last, to be taken again first (with its budget
    /// share).
    fn put_back(&mut self, rest: Vec<Fetched>) {
        self.next = Some(Buffered {
            batch: Ok(rest),
            share: self.held.take(),
        });
    }
}

async fn fetch_loop(
    mut reader: PartitionReader,
    mut offset: i64,
    tx: mpsc::Sender<Buffered>,
    mut shutdown: Shutdown,
    reset: OffsetReset,
    lag: Lag,
    mut paused: tokio::sync::watch::Receiver<faststream_core::Paused>,
) {
    let (topic, partition) = reader.id();
    let mut backoff = Backoff::requests();
    let mut lag_logged = Instant::now();
    let (budget, budget_size) = reader.budget();
    let failed = |batch: (i64, String)| Buffered {
        batch: Err(batch),
        share: None,
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
                                let _ = tx.send(failed((offset, reason))).await;
                                return;
                            }
                        }
                    }
                    FetchError::Fatal(e) => {
                        let _ = tx
                            .send(failed((
                                offset,
                                format!("the broker refused the fetch: {e}"),
                            )))
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
            let held = fetch.bytes + decoded.items.len() * std::mem::size_of::<Fetched>();
            let bytes = held.clamp(1, budget_size) as u32;
            let share = tokio::select! {
                share = budget.clone().acquire_many_owned(bytes) => match share {
                    Ok(share) => share,
                    Err(_) => return,
                },
                () = shutdown.wait() => return,
            };
            slot.send(Buffered {
                batch: Ok(decoded.items),
                share: Some(share),
            });
        }
        offset = next;
    }
}
