//! The per-partition consumer: fetch, handle, produce outputs, track what is done.
//!
//! One task per (route, topic, partition), and one message's walk through it, a module per step:
//! - [`feed`]: the partition's fetch task reads ahead through its leader's link (one batch in
//!   hand, one waiting) and hands decoded batches to the driver;
//! - the driver: the scheduling is the route's strategy, [`in_order`] (one message at a time,
//!   in offset order: the default), [`concurrent`] (key-ordered concurrency) or [`batches`]
//!   (batch handlers); each runs the handler pipeline and hands every outcome to the one
//!   outcome handling ([`step`], over core's `OffsetTracker`: publish, stop, or interrupted);
//! - [`outputs`]: the one in-flight tracker ([`InFlight`]) of every strategy: what was taken
//!   from the feed and is not done. Outputs are queued to the producers in small chunks as
//!   handlers return (so they keep their order per target partition, and the producers' byte
//!   budget bounds memory); a chunk is done once the broker acknowledged every output in it,
//!   acks arriving in any order, and the position is the first offset still open. At most
//!   `max_in_flight` messages await acks (beyond that the driver waits: backpressure);
//! - done offsets are committed by the group ([`crate::group`]) from the partition's position.
//!
//! Below the handler nothing loops on poison: a record batch that cannot be read and a message
//! whose output the broker refused go through the route's failure policy like a handler
//! failure (kinds `fetch` and `publish`); a dead-letter copy that cannot be written stops the
//! partition, so nothing is lost.

mod batches;
mod concurrent;
mod feed;
mod in_order;
mod outputs;
mod slice;

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
use crate::error::{Cause, KafkaError};
use crate::fetch::{FetchError, PartitionReader};
use crate::metrics::{Lag, PartitionMetrics};
use crate::produce::{Producers, Undelivered};
use crate::records::Fetched;
use crate::transaction::Txn;
use faststream_core::{OffsetTracker, PartitionStop, Position, SeekTo, ShutdownTrigger, Step};

use feed::{fetch_loop, resolve_offset, Feed};
use outputs::{advance, InFlight, CHUNK_WAIT};

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

/// Why a partition consumer stops on its own (its failure policy said so, an output or its
/// dead-letter copy was not delivered, the broker refused the fetch for good): the first offset
/// not done, when the consumer had got that far, and what happened.
#[derive(Debug)]
pub(crate) struct Stop {
    pub(crate) offset: Option<i64>,
    pub(crate) reason: Why,
}

impl Stop {
    pub(crate) fn new(offset: Option<i64>, reason: Why) -> Self {
        Self { offset, reason }
    }

    /// Stopped at the message at `offset` (not done).
    pub(crate) fn at(offset: i64, reason: Why) -> Self {
        Self::new(Some(offset), reason)
    }
}

/// What stopped a partition consumer (its text is the stopped partition's reason).
#[derive(Debug, thiserror::Error)]
pub(crate) enum Why {
    /// The route's failure policy said stop (core's text).
    #[error("{0}")]
    Policy(String),
    /// The broker refused the fetch for good.
    #[error("the broker refused the fetch: {0}")]
    FetchRefused(Cause),
    /// The offset to start from cannot be read.
    #[error("cannot read the start offset: {0}")]
    NoStartOffset(Cause),
    /// A retry topic's partition cannot be read to rebuild the retry lane.
    #[error("cannot read retry topic {topic:?} partition {partition} to rebuild the retry lane: {cause}")]
    RetryLane {
        topic: Arc<str>,
        partition: i32,
        cause: Cause,
    },
    /// Outputs cannot be queued (the producers are gone).
    #[error("outputs cannot be queued: {0}")]
    NotQueued(KafkaError),
    /// The producer dropped an output before the broker answered.
    #[error("an output was abandoned before the broker acknowledged it")]
    Abandoned,
    /// A dead-letter copy was not delivered.
    #[error("its dead-letter copy was not delivered: {0}")]
    DeadLetterUndelivered(Arc<Undelivered>),
    /// A dead-letter copy cannot be queued.
    #[error("dead-letter copy cannot be queued: {0}")]
    DeadLetterNotQueued(KafkaError),
    /// An output was not delivered, and then neither was the message's dead-letter copy.
    #[error(
        "an output was not delivered, and neither was its dead-letter copy to {topic:?}: {why}"
    )]
    NeitherDelivered {
        topic: Arc<str>,
        why: Arc<Undelivered>,
    },
    /// An output was not delivered, and the message is gone from the partition.
    #[error(
        "an output was not delivered, and the message is no longer readable to dead-letter it"
    )]
    NoLongerReadable,
    /// An output was not delivered, and the message cannot be read again.
    #[error("an output was not delivered, and the message cannot be read again: {0}")]
    NotReadAgain(FetchError),
    /// A handler's task panicked (key-ordered concurrency).
    #[error("a handler task failed: {0}")]
    HandlerTask(tokio::task::JoinError),
}

/// Why a driver's run ends before the feed does: the partition stops on its own ([`Stop`]),
/// or the shutdown (or a revoke) interrupted a retry's wait.
#[derive(Debug)]
pub(crate) enum End {
    Stop(Stop),
    Interrupted,
}

impl End {
    fn stopped(self) -> Option<Stop> {
        match self {
            Self::Stop(stop) => Some(stop),
            Self::Interrupted => None,
        }
    }
}

impl From<Stop> for End {
    fn from(stop: Stop) -> Self {
        Self::Stop(stop)
    }
}

/// The one outcome handling of every scheduling (core's [`OffsetTracker::step`]): what the
/// handled item at `offset` publishes (its outputs, or its dead-letter copy: `true`), or why
/// the run ends. A manual-ack message that was neither acked nor nacked is held by the
/// tracker, which keeps the position before it.
fn step(
    tracker: &mut OffsetTracker,
    offset: i64,
    outcome: Outcome,
) -> Result<(Vec<OutgoingMessage>, bool), End> {
    match tracker.step(offset, outcome) {
        Step::Publish {
            outputs,
            dead_letter,
            ..
        } => Ok((outputs, dead_letter)),
        Step::Stop(reason) => Err(End::Stop(Stop::at(offset, Why::Policy(reason)))),
        Step::Interrupt => Err(End::Interrupted),
    }
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

impl PartitionConsumer {
    /// Consumes the partition until the service's shutdown (`Ok`), or until it cannot go on
    /// (`Err`: the failure policy said stop, an output or its dead-letter copy was not
    /// delivered, the broker refused the fetch for good; the message it stopped at is not
    /// done). A seek ([`faststream_core::Control::seek`]) for it ends the current run as a
    /// revoke would (the message in hand finishes, outputs are acknowledged), moves the
    /// position and goes on from there; so does a leader whose log diverged from what was read
    /// (KIP-320), to where it diverged.
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
            let end_watch = Arc::new(tokio::sync::Notify::new());
            let watcher = tokio::spawn(watch_for_seek(
                outer.clone(),
                seeks,
                (self.topic.clone(), self.partition, seekable),
                (trigger, end_watch.clone()),
            ));
            let res = self.run_once(first).await;
            first = false;
            let truncated = match res {
                Err(e) => {
                    watcher.abort();
                    return Err(e);
                }
                _ if outer.is_triggered() => {
                    watcher.abort();
                    return Ok(());
                }
                Ok(truncated) => truncated,
            };
            if truncated.is_some() {
                // The run ended on its own: the watcher gives the seeks back.
                end_watch.notify_one();
            }
            // Not stopped, nor by the service: a seek or the truncation ended the run (its
            // watcher returns at once).
            let Ok(Ok((back, seek))) = tokio::time::timeout(Duration::from_secs(5), watcher).await
            else {
                return Ok(());
            };
            let Some(seek) = seek.or(truncated.map(SeekTo::Offset)) else {
                return Ok(());
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
    async fn restore_lane(&self, link: &LaneLink) -> Result<(), Why> {
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
                        match resolve_offset(
                            &mut reader,
                            earliest,
                            &self.shutdown,
                            topic,
                            partition,
                        )
                        .await?
                        {
                            Some(o) => offset = o,
                            None => return Ok(()),
                        }
                        continue;
                    }
                    Err(FetchError::Truncated { end_offset, .. }) => {
                        offset = end_offset;
                        continue;
                    }
                    Err(FetchError::Fatal(cause)) => {
                        return Err(Why::RetryLane {
                            topic: topic.clone(),
                            partition,
                            cause,
                        })
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
                let decoded = fetch.records.all();
                for item in &decoded.items {
                    if let Fetched::Record(msg) = item {
                        link.lane.restore(msg, stage);
                        found += 1;
                    }
                }
                let next = decoded.next.unwrap_or(offset).max(offset);
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

    /// One run from the start position until shutdown, a stop, or the end of the feed; `Ok`
    /// with an offset when the leader's log diverged from what was read, to go on from there.
    async fn run_once(&self, first: bool) -> Result<Option<i64>, KafkaError> {
        let topic = &*self.topic;
        let partition = self.partition;
        let config = &self.rt.config;
        let mut reader =
            PartitionReader::new(self.rt.cluster.clone(), self.topic.clone(), partition)
                .validating();
        let start = match self.start {
            Some(offset) => offset,
            None => match resolve_offset(&mut reader, self.reset, &self.shutdown, topic, partition)
                .await
            {
                Ok(Some(offset)) => offset,
                Ok(None) => return Ok(None),
                Err(reason) => return Err(self.stopped(Stop::new(None, reason))),
            },
        };
        // Without a group the position is only used to report where a stopped consumer ended.
        let position = self
            .group
            .as_ref()
            .map_or_else(|| Position::new(None), |g| g.position.clone());
        let mut tracker = OffsetTracker::new(position.clone(), config.manual_ack_warning);
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
                    return Err(self.stopped(Stop::new(None, reason)));
                }
                if self.shutdown.is_triggered() {
                    return Ok(None);
                }
                link.lane.mark_ready();
            } else {
                tokio::select! {
                    () = link.lane.ready() => {}
                    () = stop.wait() => return Ok(None),
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
        let mut rx = Feed::new(rx, paused, self.topic.clone(), partition);
        let mut inflight = InFlight::default();
        let ack_first = self.rt.pipeline.policy(self.route).ack == AckMode::First;
        let concurrency = self.rt.pipeline.policy(self.route).concurrency as usize;
        // Held until everything below settled (dropped last).
        let mut turn = Turn::new(self.rt.txn.clone());
        // The driver of the route's scheduling, over the one in-flight tracker.
        let state = (&mut inflight, &mut turn);
        // (In its time slice: a driver whose handlers never wait gives its worker back now
        // and then, see [`slice`].)
        let ended = if let Some(batch) = self.route.batch() {
            let driver = self.run_batches(batch, &mut rx, &mut tracker, ack_first, state, &metrics);
            slice::Sliced::new(driver).await
        } else if concurrency > 1 {
            let (rx, tracker) = (&mut rx, &mut tracker);
            self.run_concurrently(concurrency, rx, tracker, ack_first, state, &metrics)
                .await
        } else {
            let driver = self.run_in_order(&mut rx, &mut tracker, ack_first, state, &metrics);
            slice::Sliced::new(driver).await
        };
        let mut stopped = ended.err().and_then(End::stopped);
        // Messages handled before the stop are done once their outputs are acknowledged.
        if let Err(e) = self.flush(&mut inflight).await {
            stopped.get_or_insert(e);
        }
        drop(fetcher);
        // Graceful stop: the message being handled finished; wait for the outputs' acks.
        while inflight.is_waiting() {
            let res = inflight.settled().await;
            if let Err(e) = self.finish(res, &mut inflight, &tracker).await {
                stopped.get_or_insert(e);
                break;
            }
        }
        tracing::debug!(topic, partition, handler = self.route.name(), "stopped");
        match stopped {
            // After a divergence: from where the logs agree, or from the first message not done
            // if that is earlier (a batch route drops what it had not handed over yet).
            None => Ok(rx
                .truncated
                .map(|at| position.get().map_or(at, |p| p.min(at)))),
            Some(stop) => Err(self.stopped(stop)),
        }
    }

    fn stopped(&self, stop: Stop) -> KafkaError {
        let err = KafkaError::PartitionStopped(PartitionStop {
            handler: self.route.name().to_owned(),
            topic: self.topic.to_string(),
            partition: self.partition,
            offset: stop.offset,
            reason: stop.reason.to_string(),
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

/// Handles one message, in its retry lane if it has one.
async fn handle_message(
    pipeline: &Pipeline,
    route: &RouteDef,
    msg: Message,
    stop: &Shutdown,
    lane: Option<(&RetryLane, usize)>,
) -> Outcome {
    match lane {
        // Boxed: the lane's future (a batch of one) would otherwise set the size of every
        // message's future, and what each move of it copies.
        Some((lane, stage)) => {
            Box::pin(pipeline.handle_in_lane(route, msg, Some(stop), lane, stage)).await
        }
        None => pipeline.handle_until(route, msg, Some(stop)).await,
    }
}

/// Ends one run of a partition consumer (through `trigger`): at the service's shutdown (with
/// its deadline), or at a seek that covers the partition, which it returns with the seek
/// receiver; returns the receiver without a seek when told that the run ended on its own
/// (`end`).
async fn watch_for_seek(
    mut outer: Shutdown,
    mut seeks: tokio::sync::watch::Receiver<Option<faststream_core::Seek>>,
    (topic, partition, seekable): (Arc<str>, i32, bool),
    (trigger, end): (ShutdownTrigger, Arc<tokio::sync::Notify>),
) -> (
    tokio::sync::watch::Receiver<Option<faststream_core::Seek>>,
    Option<SeekTo>,
) {
    loop {
        tokio::select! {
            // The run ended on its own (the leader's log diverged).
            () = end.notified() => return (seeks, None),
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
                    // The control is gone with the service, or seeks are not for this
                    // partition: only the shutdown (or the run itself) ends the run.
                    tokio::select! {
                        () = outer.wait() => {}
                        () = end.notified() => return (seeks, None),
                    }
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
