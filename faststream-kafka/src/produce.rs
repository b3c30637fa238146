//! Producing: a record accumulator and a sender per target partition, Kafka's default
//! partitioner, acks.
//!
//! Callers queue groups of messages (a consumer queues the outputs of one fetched batch at once).
//! As in the Java producer, each target partition has an accumulator: a group's messages are
//! appended, as records, to the partition's open batch when they are queued
//! ([`crate::encode::Open`]), which closes before it would pass `max_batch_bytes`. The
//! partition's sender takes the batches in order, one request in flight per partition, sends
//! each and resolves each group's ack once the broker has its last record; meanwhile the next
//! batch fills: natural batching, order kept. The accumulator is bounded by a byte budget, so a
//! slow broker slows the consumers (backpressure) instead of growing memory.
//!
//! A batch's records are sent as they were appended, with the header written for each attempt
//! in front, through the link of the partition's leader ([`crate::link`], the leader from
//! [`crate::cluster`], looked up again after any failure), which sends them in one Produce
//! request with the batches of every other partition of that broker waiting at the time.
//! Errors are classified as Kafka's Java producer does: retriable ones (a moved leader, a lost
//! connection, a timeout) are retried with backoff until `delivery_timeout`; a batch refused as
//! too large is split; the rest fails the messages for good.
//!
//! Batch sizing: a partition's sender takes a closed batch at once, the open one once it holds
//! [`LINGER_FILL`] bytes or waited `linger` for more, as Java's producer does with
//! `batch.size` and `linger.ms`. Each request goes out in one write on a `TCP_NODELAY`
//! connection, so no request size waits for a delayed ACK.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use faststream_core::OutgoingMessage;
use kafka_protocol::ResponseError;
use tokio::sync::{oneshot, Notify, OwnedSemaphorePermit, Semaphore};

use crate::backoff::Backoff;
use crate::cluster::Cluster;
use crate::config::Config;
use crate::encode::{BatchHeader, Encoded, Open, BATCH_HEADER, MAX_FIELDS, RECORD_FRAME};
pub(crate) use crate::error::lock;
use crate::error::FetchError;
use crate::error::KafkaError;
use crate::idempotence::{self, IdError, Identity, Producer};
use crate::link::Batch;
use crate::transaction::{Txn, TxnError};

/// Below this many queued bytes a partition's task waits up to `linger` for more (Java's
/// `batch.size` default).
pub(crate) const LINGER_FILL: usize = 16 * 1024;
/// Keyless messages of a topic go to one partition until about this many bytes went there,
/// then to the next (across calls and consumers), as Kafka's Java producer does with
/// `batch.size` (KIP-794): each partition's batches fill up instead of every partition
/// getting a few records per request.
pub(crate) const STICKY_BYTES: usize = LINGER_FILL;

/// A topic's sticky partition for keyless messages, and the bytes it takes before the next.
#[derive(Debug, Clone, Copy)]
struct Sticky {
    partition: i32,
    left: usize,
}

impl Sticky {
    /// The partition a keyless message of `size` bytes goes to: this one, then the next
    /// (`next`) once it took its share.
    fn take(&mut self, size: usize, next: impl FnOnce() -> i32) -> i32 {
        if self.left == 0 {
            self.partition = next();
            self.left = STICKY_BYTES;
        }
        self.left = self.left.saturating_sub(size);
        self.partition
    }
}

/// The room a new batch is made with (or more, for a larger group; at most
/// `max_batch_bytes`): a batch grown by doubling takes fresh memory and copies its records at
/// each step.
const BATCH_ROOM: usize = 64 * 1024;

/// Per-record framing overhead added to a record's fields when counting a sticky share.
const RECORD_OVERHEAD: usize = 24;

/// What a queued record of `fields` bytes of fields costs the queue budgets: its bytes in a
/// batch at most, plus where it ends, so that the budgets bound memory for small messages too.
fn queued_cost(fields: usize) -> usize {
    fields + RECORD_FRAME + std::mem::size_of::<u32>()
}

/// How a group of messages ended: all delivered, or these (indices into the group) were not,
/// with why (refused for good by the broker, or not delivered within the delivery timeout).
pub(crate) type Delivery = Result<(), Vec<(u32, Arc<Undelivered>)>>;

/// Why an output was not delivered: what a consumer's failure policy (kind `publish`) and a
/// publisher's caller are told. One is shared by every message it failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Undelivered {
    /// The topic cannot be written: missing (and not to be created), or a name Kafka refuses.
    #[error("{0}")]
    Unwritable(KafkaError),
    /// The topic's metadata could not be read within the delivery timeout.
    #[error("no metadata of topic {topic:?} within the delivery timeout ({timeout:?}): {error}")]
    NoMetadata {
        topic: Arc<str>,
        timeout: std::time::Duration,
        error: KafkaError,
    },
    /// The message names a partition the topic does not have.
    #[error("partition {partition} of topic {topic:?}, which has {count} partition(s)")]
    NoSuchPartition {
        topic: Arc<str>,
        partition: i32,
        count: i32,
    },
    /// Refused for good (by the broker, or a batch that cannot be encoded or written).
    #[error("refused by the broker: {0}")]
    Refused(ProduceFailure),
    /// Retriable failures until the delivery timeout; the last one.
    #[error("not delivered within the delivery timeout ({timeout:?}): {last}")]
    TimedOut {
        timeout: std::time::Duration,
        last: ProduceFailure,
    },
    /// Its transaction was aborted: it is not written (nor in the next one).
    #[error("{0}")]
    Aborted(ProduceFailure),
    /// The producer went away before the broker answered.
    #[error("abandoned before the broker acknowledged it")]
    Abandoned,
}

/// Why one attempt to write a partition's record batch failed; [`ProduceFailure::refusal`]
/// classifies it as Kafka's Java producer does.
#[derive(Debug)]
pub(crate) enum ProduceFailure {
    /// The leader answered with an error code (and maybe a message).
    Broker {
        topic: Arc<str>,
        partition: i32,
        error: ResponseError,
        detail: Option<String>,
    },
    /// The partition's leader is not known.
    Leader(FetchError),
    /// The request got no answer (a connection failure, a timeout).
    Request(FetchError),
    /// The batch cannot be encoded.
    Encode(String),
    /// No producer id (idempotence).
    ProducerId(IdError),
    /// The group's transaction refused the batch.
    Txn(TxnError),
}

impl std::fmt::Display for ProduceFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Broker {
                topic,
                partition,
                error,
                detail,
            } => {
                write!(f, "partition {partition} of topic {topic:?}: {error}")?;
                match detail {
                    Some(detail) => write!(f, " ({detail})"),
                    None => Ok(()),
                }
            }
            Self::Leader(e) => write!(f, "finding the leader: {e}"),
            Self::Request(e) => e.fmt(f),
            Self::Encode(e) => f.write_str(e),
            Self::ProducerId(e @ IdError::Retriable(_)) => write!(f, "no producer id: {e}"),
            Self::ProducerId(e) => e.fmt(f),
            Self::Txn(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for ProduceFailure {}

impl ProduceFailure {
    /// Whether a retry can succeed, as Kafka's Java producer classifies it.
    fn refusal(&self) -> Refusal {
        match self {
            Self::Broker { error, .. } => refusal(*error),
            Self::Request(FetchError::Fatal(_)) => Refusal::Permanent,
            Self::Leader(_) | Self::Request(_) => Refusal::Retriable,
            Self::Encode(_) => Refusal::Permanent,
            Self::ProducerId(IdError::Retriable(_)) => Refusal::Retriable,
            Self::ProducerId(IdError::Refused(_)) => Refusal::Permanent,
            Self::Txn(TxnError::Retriable(_)) => Refusal::Retriable,
            Self::Txn(TxnError::Ended(_)) => Refusal::Ended,
            Self::Txn(_) => Refusal::Permanent,
        }
    }
}

/// Resolves when the broker acknowledged a group of messages, or with which it never will.
pub(crate) type Ack = oneshot::Receiver<Delivery>;

/// What [`Producers::enqueue`] did with a list of messages.
#[derive(Debug, Default)]
pub(crate) struct Enqueued {
    /// One per target partition: the indices (into the list) of its messages, and their ack.
    pub(crate) groups: Vec<(Vec<u32>, Ack)>,
    /// Messages that cannot be addressed (a partition the topic does not have, a topic that
    /// does not exist and may not be created): index and why. Nothing else of the list is
    /// affected.
    pub(crate) refused: Vec<(u32, Arc<Undelivered>)>,
}

impl Enqueued {
    /// Waits until every message was settled; `Err` with the first reason one was not
    /// delivered (refused, or abandoned before the broker acknowledged it).
    pub(crate) async fn delivered(self) -> Result<(), Arc<Undelivered>> {
        let mut failure = self.refused.into_iter().next().map(|(_, r)| r);
        for (_, ack) in self.groups {
            let reason = match ack.await {
                Ok(Ok(())) => continue,
                Ok(Err(failed)) => failed.into_iter().next().map(|(_, r)| r),
                Err(_) => Some(Arc::new(Undelivered::Abandoned)),
            };
            failure = failure.or(reason);
        }
        failure.map_or(Ok(()), Err)
    }
}

/// A group's records in one batch: the batch's records after the previous part's, up to
/// record `end`, from the group's record `first` on. The part holding the group's last record
/// carries what settles the group.
struct Part {
    end: u32,
    first: u32,
    finish: Option<Finish>,
}

/// What settles a group of messages once its last record was answered.
struct Finish {
    ack: oneshot::Sender<Delivery>,
    /// Its share of the partition's queue budget and of the producers' total, returned when
    /// it is dropped (after the ack).
    _budget: (OwnedSemaphorePermit, OwnedSemaphorePermit),
}

/// A partition's record batch, open (records are appended to it) or closed (waiting to be
/// sent), and the groups it holds.
#[derive(Default)]
struct Filling {
    records: Open,
    parts: Vec<Part>,
    /// When its first group was queued: retriable failures are retried until
    /// `delivery_timeout` after.
    since: Option<tokio::time::Instant>,
    /// The transaction its groups belong to (see [`Txn::round`]; 0 outside transactions).
    round: u64,
}

/// One partition's batches: the open one and the closed ones before it.
#[derive(Default)]
struct Batches {
    open: Filling,
    closed: std::collections::VecDeque<Filling>,
    /// No more appends: the sender sends what is there and stops.
    shut: bool,
}

/// A partition's record accumulator, as the Java producer's: callers append whole groups to
/// its open batch, its sender takes the batches in order. Bounded by a byte budget.
struct Accumulator {
    batches: Mutex<Batches>,
    /// Wakes the sender: records were appended, or the accumulator was shut.
    appended: Notify,
    budget: Arc<Semaphore>,
}

impl std::fmt::Debug for Accumulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Accumulator")
            .field("budget", &self.budget.available_permits())
            .finish_non_exhaustive()
    }
}

/// A group of messages for one partition, acknowledged together: which of the list, and what
/// they take.
struct Group<'a> {
    list: &'a [OutgoingMessage],
    /// Indices into `list`, and each message's fields' length.
    msgs: &'a [(u32, usize)],
    /// Records' bytes in a batch, at most.
    bytes: usize,
    round: u64,
    queued_at: tokio::time::Instant,
}

impl Accumulator {
    fn new(budget: usize) -> Self {
        Self {
            batches: Mutex::default(),
            appended: Notify::new(),
            budget: Arc::new(Semaphore::new(budget)),
        }
    }

    /// Appends `group` (messages with their fields' length; those without a timestamp get
    /// `now`) to the open batch, closing it first when it belongs to another transaction and
    /// whenever the next record would take it past `max_bytes` of records; wakes the sender.
    fn append(
        &self,
        group: Group<'_>,
        now: i64,
        finish: Finish,
        max_bytes: usize,
        pool: &BufferPool,
    ) -> Result<(), KafkaError> {
        let mut guard = lock(&self.batches);
        let batches = &mut *guard;
        if batches.shut {
            return Err(KafkaError::Closed);
        }
        if batches.open.round != group.round && !batches.open.records.is_empty() {
            close(batches);
        }
        let n = group.msgs.len();
        if !batches.open.records.is_empty() {
            let room = max_bytes.saturating_sub(batches.open.records.bytes());
            batches.open.records.reserve(group.bytes.min(room), n);
        }
        let mut first = 0;
        for (i, &(index, fields)) in group.msgs.iter().enumerate() {
            let msg = &group.list[index as usize];
            let open = &mut batches.open;
            if !open.records.is_empty() && open.records.bytes() + fields + RECORD_FRAME > max_bytes
            {
                if i > first {
                    let end = open.records.count() as u32;
                    let first = first as u32;
                    open.parts.push(Part {
                        end,
                        first,
                        finish: None,
                    });
                }
                first = i;
                close(batches);
            }
            let open = &mut batches.open;
            if open.records.is_empty() {
                if open.records.capacity() == 0 {
                    open.records = pool.take();
                }
                open.round = group.round;
                open.since = Some(group.queued_at);
                // Room for what a batch usually takes at once, so that it seldom grows.
                let room = group.bytes.max(BATCH_ROOM).min(max_bytes);
                open.records.reserve(room, n - i);
            }
            let timestamp = msg.timestamp.unwrap_or(now);
            open.records.append(msg, fields, timestamp);
        }
        let open = &mut batches.open;
        open.parts.push(Part {
            end: open.records.count() as u32,
            first: first as u32,
            finish: Some(finish),
        });
        drop(guard);
        self.appended.notify_one();
        Ok(())
    }

    /// The next batch to send, in order: a closed one, else the open one once it holds
    /// [`LINGER_FILL`] bytes or `linger` passed since its first record was queued (as Java's
    /// `linger.ms`: a batch that waited it while the one before was on its way goes at once);
    /// `None` once shut and empty.
    async fn next(&self, linger: std::time::Duration) -> Option<Filling> {
        loop {
            let appended = self.appended.notified();
            let mut deadline = None;
            {
                let mut batches = lock(&self.batches);
                if let Some(closed) = batches.closed.pop_front() {
                    return Some(closed);
                }
                let open = &batches.open;
                if !open.records.is_empty() {
                    let now = tokio::time::Instant::now();
                    let due = open.since.unwrap_or(now) + linger;
                    let full = open.records.bytes() >= LINGER_FILL;
                    if full || linger.is_zero() || batches.shut || now >= due {
                        return Some(std::mem::take(&mut batches.open));
                    }
                    deadline = Some(due);
                } else if batches.shut {
                    return None;
                }
            }
            match deadline {
                Some(at) => drop(tokio::time::timeout_at(at, appended).await),
                None => appended.await,
            }
        }
    }

    /// No more appends; the sender sends what is left and stops.
    fn shut(&self) {
        lock(&self.batches).shut = true;
        self.appended.notify_one();
    }
}

/// Closes the open batch (it goes after the closed ones).
fn close(batches: &mut Batches) {
    let full = std::mem::take(&mut batches.open);
    batches.closed.push_back(full);
}

/// All producers of one broker handle, created lazily per target partition.
#[derive(Debug)]
pub(crate) struct Producers {
    config: Arc<Config>,
    cluster: Arc<Cluster>,
    /// Partition counts by topic, with when they were looked up (refreshed after
    /// `metadata_max_age`, so keys are partitioned with a count that follows the cluster's).
    partitions: Mutex<HashMap<String, (i32, tokio::time::Instant)>>,
    /// Per topic and partition, the record accumulator its sender takes batches from.
    accumulators: Accumulators,
    /// Topics the routes name (created under `MissingTopics::CreateDeclared`).
    declared: Mutex<std::collections::HashSet<String>>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    round_robin: AtomicUsize,
    /// Per topic, the partition its keyless messages stick to, and how many more bytes go
    /// there before the next one is picked (see [`STICKY_BYTES`]).
    sticky: Mutex<HashMap<Arc<str>, Sticky>>,
    /// The bytes all partitions' queues may hold together (`max_queued_bytes_total`), shared
    /// with the transactional producers made from these.
    total: Arc<Semaphore>,
    /// The idempotent producer's id, shared by every partition's task.
    identity: Arc<Identity>,
    /// Set for an exactly-once group's producers: every batch is written in its transaction.
    txn: Option<Arc<Txn>>,
    /// Batch buffers kept between batches, shared by every partition.
    pool: Arc<BufferPool>,
}

impl Producers {
    pub(crate) fn new(cluster: Arc<Cluster>) -> Self {
        let total = Arc::new(Semaphore::new(cluster.config().max_queued_bytes_total));
        let pooled = POOLED_BATCHES * cluster.config().max_batch_bytes;
        Self {
            config: cluster.config().clone(),
            cluster,
            partitions: Mutex::new(HashMap::new()),
            accumulators: Accumulators::default(),
            declared: Mutex::default(),
            tasks: Mutex::new(Vec::new()),
            round_robin: AtomicUsize::new(0),
            sticky: Mutex::default(),
            total,
            identity: Arc::default(),
            txn: None,
            pool: Arc::new(BufferPool::new(pooled)),
        }
    }

    /// Partition leaders and the links to the brokers.
    pub(crate) fn cluster(&self) -> &Arc<Cluster> {
        &self.cluster
    }

    /// Producers writing in `txn`'s transactions (an exactly-once group's), knowing the
    /// topics `plain` knows the routes name.
    pub(crate) fn transactional(plain: &Producers, txn: Arc<Txn>) -> Self {
        let declared = lock(&plain.declared).clone();
        Self {
            txn: Some(txn),
            declared: Mutex::new(declared),
            total: plain.total.clone(),
            pool: plain.pool.clone(),
            ..Self::new(plain.cluster.clone())
        }
    }

    /// With idempotence on (the default), obtains the producer id now, so that a cluster that
    /// refuses it fails startup with a message naming the setting instead of failing the
    /// first publish. Transient failures are retried until the request timeout.
    pub(crate) async fn check_idempotence(&self) -> Result<(), KafkaError> {
        if !self.config.idempotence {
            return Ok(());
        }
        let deadline = tokio::time::Instant::now() + self.config.request_timeout;
        let mut backoff = Backoff::requests();
        loop {
            match self.identity.current(&self.config).await {
                Ok(_) => return Ok(()),
                Err(IdError::Refused(reason)) => return Err(KafkaError::Unsupported(reason)),
                Err(IdError::Retriable(e))
                    if tokio::time::Instant::now() + backoff.wait() < deadline =>
                {
                    tracing::warn!(error = %e, retry_in = ?backoff.wait(), "no idempotent producer id yet; retrying");
                    backoff.sleep().await;
                }
                Err(IdError::Retriable(e)) => {
                    return Err(KafkaError::Unsupported(format!(
                        "no idempotent producer id within the request timeout ({:?}): {e}",
                        self.config.request_timeout
                    )))
                }
            }
        }
    }

    /// Queues `msgs`, grouped by target partition; returns one ack per group, resolving once the
    /// broker has the whole group (or with the messages it refused). Waits when a partition's
    /// queue is full (backpressure). A message that cannot be addressed is refused alone.
    ///
    /// Partitions: explicit, else murmur2 of the key, else the topic's sticky partition, which
    /// moves on after [`STICKY_BYTES`] (across calls: keyless messages batch well).
    pub(crate) async fn enqueue(&self, msgs: Vec<OutgoingMessage>) -> Result<Enqueued, KafkaError> {
        struct Target {
            topic: Arc<str>,
            partition: i32,
            /// Indices into the list, and each message's fields' length.
            msgs: Vec<(u32, usize)>,
            /// What the group costs the queue budgets ([`queued_cost`]).
            cost: usize,
            bytes: usize,
        }
        let mut out = Enqueued::default();
        let mut targets: Vec<Target> = Vec::new();
        /// A topic's partition count (`Err`: why it cannot be written) and where its keyless
        /// messages go (taken from the shared state at the first, given back at the end).
        type Known = Result<(i32, Option<Sticky>), Arc<Undelivered>>;
        let mut topics: Vec<(Arc<str>, Known)> = Vec::new();
        for (index, msg) in msgs.iter().enumerate() {
            let index = index as u32;
            let at = match topics.iter().position(|(t, _)| same_topic(t, &msg.topic)) {
                Some(at) => at,
                None => {
                    let known = self.partition_count_within(&msg.topic).await;
                    topics.push((msg.topic.clone(), known.map(|count| (count, None))));
                    topics.len() - 1
                }
            };
            let (count, sticky) = match &mut topics[at].1 {
                Ok((count, sticky)) => (*count, sticky),
                Err(reason) => {
                    out.refused.push((index, reason.clone()));
                    continue;
                }
            };
            let fields = crate::encode::fields_len(msg);
            if fields > MAX_FIELDS {
                let why = format!("a message of {fields} bytes: more than a record batch holds");
                let reason = Undelivered::Refused(ProduceFailure::Encode(why));
                out.refused.push((index, Arc::new(reason)));
                continue;
            }
            let size = fields + RECORD_OVERHEAD;
            let partition = match (msg.partition, &msg.key) {
                (Some(p), _) if (0..count).contains(&p) => p,
                (Some(p), _) => {
                    let reason = Undelivered::NoSuchPartition {
                        topic: msg.topic.clone(),
                        partition: p,
                        count,
                    };
                    out.refused.push((index, Arc::new(reason)));
                    continue;
                }
                (None, Some(key)) => partition_for_key(key, count),
                (None, None) => {
                    let sticky = sticky.get_or_insert_with(|| self.sticky(&msg.topic, count));
                    sticky.take(size, || self.next_partition(count))
                }
            };
            let at = match targets
                .iter()
                .position(|g| g.partition == partition && same_topic(&g.topic, &msg.topic))
            {
                Some(at) => at,
                None => {
                    targets.push(Target {
                        topic: msg.topic.clone(),
                        partition,
                        msgs: Vec::new(),
                        cost: 0,
                        bytes: 0,
                    });
                    targets.len() - 1
                }
            };
            let t = &mut targets[at];
            t.msgs.push((index, fields));
            t.cost += queued_cost(fields);
            t.bytes += fields + RECORD_FRAME;
        }
        for (topic, known) in topics {
            if let Ok((_, Some(sticky))) = known {
                lock(&self.sticky).insert(topic, sticky);
            }
        }
        // Records without a timestamp of their own get the time they were sent (as the Java
        // producer's `send` gives them).
        let now = now_ms();
        let round = self.txn.as_ref().map_or(0, |t| t.round());
        let max_bytes = self.max_batch_records();
        out.groups.reserve(targets.len());
        for target in targets {
            let accumulator = self.accumulator(&target.topic, target.partition)?;
            // (A group larger than a budget takes all of it.)
            let permits = target.cost.clamp(1, self.config.max_queued_bytes) as u32;
            let partition_share = accumulator
                .budget
                .clone()
                .acquire_many_owned(permits)
                .await
                .map_err(|_| KafkaError::Closed)?;
            let permits = target.cost.clamp(1, self.config.max_queued_bytes_total) as u32;
            let total_share = self
                .total
                .clone()
                .acquire_many_owned(permits)
                .await
                .map_err(|_| KafkaError::Closed)?;
            let (ack, rx) = oneshot::channel();
            let finish = Finish {
                ack,
                _budget: (partition_share, total_share),
            };
            // Appended now, while the messages are in the cache.
            let group = Group {
                list: &msgs,
                msgs: &target.msgs,
                bytes: target.bytes,
                round,
                queued_at: tokio::time::Instant::now(),
            };
            accumulator.append(group, now, finish, max_bytes, &self.pool)?;
            let indices = target.msgs.into_iter().map(|(i, _)| i).collect();
            out.groups.push((indices, rx));
        }
        Ok(out)
    }

    /// The most bytes of records a batch takes (`max_batch_bytes`, its header aside); a
    /// record larger than that goes alone.
    fn max_batch_records(&self) -> usize {
        (self.config.max_batch_bytes.saturating_sub(BATCH_HEADER)).clamp(1, MAX_FIELDS)
    }

    /// Where `topic`'s keyless messages go now (a partition of `count`).
    fn sticky(&self, topic: &Arc<str>, count: i32) -> Sticky {
        match lock(&self.sticky).get(topic) {
            Some(s) if s.partition < count => *s,
            _ => Sticky {
                partition: self.next_partition(count),
                left: STICKY_BYTES,
            },
        }
    }

    /// The next partition keyless messages stick to: round-robin over the topic's `count`.
    fn next_partition(&self, count: i32) -> i32 {
        (self.round_robin.fetch_add(1, Ordering::Relaxed) % count as usize) as i32
    }

    /// [`Producers::partition_count`], retrying a metadata lookup that fails (the cluster is
    /// unreachable) until the delivery timeout; `Err` says why the topic cannot be written.
    async fn partition_count_within(&self, topic: &Arc<str>) -> Result<i32, Arc<Undelivered>> {
        let deadline = tokio::time::Instant::now() + self.config.delivery_timeout;
        let mut backoff = Backoff::requests();
        loop {
            match self.partition_count(topic).await {
                Ok(n) => return Ok(n),
                Err(e @ (KafkaError::MissingTopics { .. } | KafkaError::InvalidTopic(_))) => {
                    return Err(Arc::new(Undelivered::Unwritable(e)))
                }
                Err(error) if tokio::time::Instant::now() + backoff.wait() >= deadline => {
                    return Err(Arc::new(Undelivered::NoMetadata {
                        topic: topic.clone(),
                        timeout: self.config.delivery_timeout,
                        error,
                    }))
                }
                Err(e) => {
                    tracing::warn!(topic = &**topic, error = %e, retry_in = ?backoff.wait(), "metadata lookup failed; retrying");
                    backoff.sleep().await;
                }
            }
        }
    }

    /// Number of partitions of `topic`, from metadata (cached for `metadata_max_age`); creates
    /// the topic if allowed.
    pub(crate) async fn partition_count(&self, topic: &str) -> Result<i32, KafkaError> {
        let cached = lock(&self.partitions).get(topic).copied();
        if let Some((n, at)) = cached {
            if at.elapsed() < self.config.metadata_max_age {
                return Ok(n);
            }
        }
        let declared = lock(&self.declared).contains(topic);
        let n = match crate::topics::ensure_topic(&self.cluster, topic, declared).await {
            Ok(n) => n,
            Err(e) => match cached {
                // A refresh that fails keeps the last known count.
                Some((n, _)) => {
                    tracing::warn!(topic, error = %e, "metadata refresh failed; keeping the last partition count");
                    n
                }
                None => return Err(e),
            },
        };
        if cached.is_some_and(|(old, _)| old != n) {
            tracing::info!(topic, partitions = n, "partition count changed");
        }
        lock(&self.partitions).insert(topic.to_owned(), (n, tokio::time::Instant::now()));
        Ok(n)
    }

    /// Records the topics the routes name.
    pub(crate) fn declare(&self, topics: &[String]) {
        lock(&self.declared).extend(topics.iter().cloned());
    }

    /// Current partition counts of those `topics` that exist (fresh metadata, nothing created;
    /// a failed lookup is logged and yields nothing).
    pub(crate) async fn lookup_partitions(
        &self,
        topics: &[String],
    ) -> std::collections::BTreeMap<String, i32> {
        match self.try_lookup_partitions(topics).await {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(?topics, error = %e, "metadata lookup failed");
                Default::default()
            }
        }
    }

    /// Like [`Self::lookup_partitions`], but a failed lookup is an error rather than "no
    /// topics" (for callers that act on a topic's absence).
    pub(crate) async fn try_lookup_partitions(
        &self,
        topics: &[String],
    ) -> Result<std::collections::BTreeMap<String, i32>, FetchError> {
        let listed = self.cluster.topics().await?;
        let now = tokio::time::Instant::now();
        let found: std::collections::BTreeMap<String, i32> = listed
            .into_iter()
            .filter(|(name, _)| topics.iter().any(|t| **t == **name))
            .map(|(name, n)| (name.to_string(), n))
            .collect();
        let mut cache = lock(&self.partitions);
        for (topic, n) in &found {
            cache.insert(topic.clone(), (*n, now));
        }
        Ok(found)
    }

    /// The accumulator of `partition` of `topic`, with its sender started at the first use.
    fn accumulator(&self, topic: &str, partition: i32) -> Result<Arc<Accumulator>, KafkaError> {
        let index = usize::try_from(partition).map_err(|_| {
            KafkaError::InvalidPartition(format!(
                "invalid partition {partition} for topic {topic:?}"
            ))
        })?;
        let mut accumulators = lock(&self.accumulators.0);
        let slots = match accumulators.get_mut(topic) {
            Some(slots) => slots,
            None => accumulators.entry(topic.to_owned()).or_default(),
        };
        if slots.len() <= index {
            slots.resize(index + 1, None);
        }
        if let Some(a) = &slots[index] {
            return Ok(a.clone());
        }
        let accumulator = Arc::new(Accumulator::new(self.config.max_queued_bytes));
        let writer = Writer {
            config: self.config.clone(),
            topic: Arc::from(topic),
            partition,
            cluster: self.cluster.clone(),
            identity: self.identity.clone(),
            txn: self.txn.clone(),
            round: 0,
            sequence: None,
            given_up: None,
            carried: Vec::new(),
            pool: self.pool.clone(),
        };
        let task = tokio::spawn(run_partition_producer(writer, accumulator.clone()));
        lock(&self.tasks).push(task);
        slots[index] = Some(accumulator.clone());
        Ok(accumulator)
    }

    /// Shuts every accumulator and waits until everything queued was sent (or failed).
    pub(crate) async fn flush(&self) {
        self.accumulators.shut();
        let tasks: Vec<_> = lock(&self.tasks).drain(..).collect();
        for task in tasks {
            let _ = task.await;
        }
    }
}

/// Per topic and partition, the record accumulator its sender takes batches from; shut when
/// dropped.
#[derive(Debug, Default)]
struct Accumulators(Mutex<HashMap<String, Vec<Option<Arc<Accumulator>>>>>);

impl Accumulators {
    /// Shuts every accumulator made so far: their senders send what is queued and stop.
    fn shut(&self) {
        for slots in std::mem::take(&mut *lock(&self.0)).into_values() {
            for accumulator in slots.into_iter().flatten() {
                accumulator.shut();
            }
        }
    }
}

impl Drop for Accumulators {
    fn drop(&mut self) {
        self.shut();
    }
}

async fn run_partition_producer(mut writer: Writer, accumulator: Arc<Accumulator>) {
    let config = writer.config.clone();
    let metrics = crate::metrics::ProducerMetrics::new(&writer.topic, writer.partition);
    let budget = &accumulator.budget;
    let queued =
        || config.max_queued_bytes - budget.available_permits().min(config.max_queued_bytes);
    while let Some(batch) = accumulator.next(config.linger).await {
        metrics.queued(queued());
        send(&mut writer, batch, &metrics).await;
        metrics.queued(queued());
    }
}

/// Whether a produce error can succeed on retry, as Kafka's Java producer classifies it.
enum Refusal {
    /// Transient: retried until the delivery timeout.
    Retriable,
    /// The request (or one of its records) is too large: split, or refuse a single record.
    TooLarge,
    /// The leader disagrees about the idempotent producer's sequence or epoch (nothing was
    /// written): bump the epoch and send again, until the delivery timeout.
    Sequence,
    /// Retrying cannot help.
    Permanent,
    /// The batch's transaction was aborted: it must not be written.
    Ended,
}

/// Classifies a partition's produce error code.
fn refusal(err: ResponseError) -> Refusal {
    use ResponseError as E;
    match err {
        E::MessageTooLarge | E::RecordListTooLarge => Refusal::TooLarge,
        err if idempotence::needs_bump(err) => Refusal::Sequence,
        E::InvalidTopicException
        | E::TopicAuthorizationFailed
        | E::ClusterAuthorizationFailed
        | E::TransactionalIdAuthorizationFailed
        | E::InvalidRecord
        | E::InvalidTimestamp
        | E::InvalidRequiredAcks
        | E::UnsupportedForMessageFormat
        | E::UnsupportedVersion
        | E::UnsupportedCompressionType
        | E::PolicyViolation
        | E::InvalidRequest
        | E::SaslAuthenticationFailed => Refusal::Permanent,
        // Moved or unavailable leaders, too few in-sync replicas, timeouts, storage errors,
        // corrupt in transit, and codes this client does not know.
        _ => Refusal::Retriable,
    }
}

/// Writes one partition's record batches to its leader.
struct Writer {
    config: Arc<Config>,
    topic: Arc<str>,
    partition: i32,
    cluster: Arc<Cluster>,
    identity: Arc<Identity>,
    /// Set when writing in a group's transactions.
    txn: Option<Arc<Txn>>,
    /// The transaction of the batch being written.
    round: u64,
    /// The producer id this partition's batches are numbered under, and the next batch's
    /// sequence (`None`: not idempotent, or nothing numbered yet).
    sequence: Option<(Producer, i32)>,
    /// A producer id under which a batch was given up after it may have been written: the
    /// next batch moves to the next epoch first, so its sequence cannot be taken as that
    /// batch's duplicate.
    given_up: Option<Producer>,
    /// The refused messages of a group whose last records are in the next batch (indices
    /// into the group).
    carried: Vec<(u32, Arc<Undelivered>)>,
    /// Buffers for batches, shared with the other partitions.
    pool: Arc<BufferPool>,
}

/// Batch buffers kept between batches, up to a total size: a partition's open batch takes
/// them, and gives them back once its batch was answered, instead of fresh memory each time
/// (which the kernel first has to clear: at hundreds of thousands of messages a second that
/// costs more than filling it). As the Java producer's buffer pool, but for what is idle only.
#[derive(Debug)]
pub(crate) struct BufferPool {
    idle: Mutex<(Vec<Open>, usize)>,
    limit: usize,
}

/// The pool keeps idle buffers for about this many batches of `max_batch_bytes`.
const POOLED_BATCHES: usize = 8;

impl BufferPool {
    fn new(limit: usize) -> Self {
        Self {
            idle: Mutex::new((Vec::new(), 0)),
            limit,
        }
    }

    fn take(&self) -> Open {
        let mut idle = lock(&self.idle);
        match idle.0.pop() {
            Some(open) => {
                idle.1 -= open.footprint();
                open
            }
            None => Open::default(),
        }
    }

    /// Keeps `open` (empty) if the pool has room for it.
    fn give(&self, open: Open) {
        let size = open.footprint();
        let mut idle = lock(&self.idle);
        if idle.1 + size <= self.limit {
            idle.1 += size;
            idle.0.push(open);
        }
    }
}

impl Writer {
    /// The producer fields of the next batch: plain without idempotence, else the shared
    /// producer id and this partition's next sequence (0 under an id not used here before).
    async fn header(&mut self) -> Result<BatchHeader, ProduceFailure> {
        if let Some(txn) = &self.txn {
            let p = txn
                .enlist(&self.topic, self.partition, self.round)
                .await
                .map_err(ProduceFailure::Txn)?;
            return Ok(self.numbered(p, true));
        }
        if !self.config.idempotence {
            return Ok(BatchHeader::PLAIN);
        }
        let p = match self.given_up.take() {
            Some(seen) => self.identity.bump(&self.config, seen).await,
            None => self.identity.current(&self.config).await,
        }
        .map_err(ProduceFailure::ProducerId)?;
        Ok(self.numbered(p, false))
    }

    /// The header of the next batch under producer `p`: this partition's next sequence (0
    /// under an id not used here before).
    fn numbered(&mut self, p: Producer, transactional: bool) -> BatchHeader {
        let next = match self.sequence {
            Some((q, next)) if q == p => next,
            _ => 0,
        };
        self.sequence = Some((p, next));
        BatchHeader {
            producer_id: p.id,
            producer_epoch: p.epoch,
            base_sequence: next,
            transactional,
        }
    }

    /// The leader has the batch of `count` records sent with `header`.
    fn written(&mut self, header: BatchHeader, count: usize) {
        if let Some((p, next)) = &mut self.sequence {
            if (p.id, p.epoch) == (header.producer_id, header.producer_epoch) {
                *next = idempotence::advance(header.base_sequence, count as i32);
            }
        }
    }

    /// The batch sent with `header` is given up after it may have been written (or was
    /// refused as out of sequence): the next batch moves on from its producer id and epoch.
    fn move_on(&mut self, header: BatchHeader, why: &dyn std::fmt::Display) {
        if let Some(txn) = &self.txn {
            // The transaction may hold the batch or not: it cannot commit.
            txn.poison_round(
                self.round,
                format!(
                    "a batch to partition {} of topic {:?} was given up: {why}",
                    self.partition, self.topic
                ),
            );
            return;
        }
        if header.producer_id >= 0 {
            self.given_up = Some(Producer {
                id: header.producer_id,
                epoch: header.producer_epoch,
            });
        }
    }

    /// Sends one record batch and waits for the leader's acknowledgement (all in-sync
    /// replicas, `acks = all`). A batch the leader already had (a retry after a lost answer)
    /// counts as acknowledged.
    async fn produce(
        &mut self,
        batch: &Encoded,
        header: BatchHeader,
    ) -> Result<(), ProduceFailure> {
        let res = self.send(batch, header).await;
        if matches!(&res, Err(e) if matches!(e.refusal(), Refusal::Retriable)) {
            // The leader may have moved: look it up again before the retry.
            self.cluster.forget(&self.topic, self.partition);
        }
        res
    }

    async fn send(&mut self, batch: &Encoded, header: BatchHeader) -> Result<(), ProduceFailure> {
        let leader = self
            .cluster
            .leader(&self.topic, self.partition)
            .await
            .map_err(ProduceFailure::Leader)?;
        // In a transaction: on its way only while the transaction is open (its end waits for
        // the answer).
        let _sending = match &self.txn {
            Some(txn) => Some(
                txn.sending(&self.topic, self.partition, self.round)
                    .await
                    .map_err(ProduceFailure::Txn)?,
            ),
            None => None,
        };
        let request = Batch {
            topic: self.topic.clone(),
            partition: self.partition,
            head: batch.head(header),
            records: batch.body.clone(),
            transactional_id: self.txn.as_ref().map(|t| Arc::from(t.id())),
        };
        let p = self
            .cluster
            .link(&leader.addr)
            .produce(request)
            .await
            .map_err(ProduceFailure::Request)?;
        match ResponseError::try_from_code(p.error_code) {
            // With idempotence: the leader already wrote this batch (an earlier attempt
            // whose answer was lost).
            None | Some(ResponseError::DuplicateSequenceNumber) => Ok(()),
            Some(error) => Err(ProduceFailure::Broker {
                topic: self.topic.clone(),
                partition: self.partition,
                error,
                detail: p.error_message.map(|m| m.to_string()),
            }),
        }
    }
}

/// Sends a batch, resolving each group's ack once all its messages are in, or with the ones
/// that were refused. Retriable errors are retried with backoff until `delivery_timeout` after
/// its first group was queued; a batch refused as too large is split until the record that is
/// too large stands alone.
async fn send(writer: &mut Writer, batch: Filling, metrics: &crate::metrics::ProducerMetrics) {
    let config = writer.config.clone();
    let (topic, partition) = (writer.topic.clone(), writer.partition);
    let Filling {
        records,
        parts,
        since,
        round,
    } = batch;
    let records = records.seal();
    let count = records.count();
    let deadline = since.unwrap_or_else(tokio::time::Instant::now) + config.delivery_timeout;
    // Refused records: index into the batch, reason.
    let mut refused: Vec<(usize, Arc<Undelivered>)> = Vec::new();
    let mut todo = std::collections::VecDeque::new();
    todo.push_back(0..count);
    if let Some(txn) = &writer.txn {
        // Outputs of an aborted transaction are not written in the next one.
        let now = txn.round();
        if round != now {
            let reason = Arc::new(Undelivered::Aborted(ProduceFailure::Txn(
                txn.ended(&topic, partition),
            )));
            tracing::warn!(
                topic = &*topic,
                partition,
                records = count,
                "outputs of an aborted transaction are not written"
            );
            refused.extend((0..count).map(|i| (i, reason.clone())));
            todo.clear();
        }
        writer.round = now;
    }
    let mut parts = parts.into_iter().peekable();
    // Where the next part to resolve starts.
    let mut part_start = 0;
    while let Some(range) = todo.pop_front() {
        let mut backoff = Backoff::requests();
        // The producer fields of this range's batch, kept across retries (so the leader can
        // tell a retry of a batch it wrote from a new one), and whether an attempt may have
        // been written although it failed.
        let mut pinned: Option<BatchHeader> = None;
        let mut maybe_written = false;
        // The range's batch as encoded: a retry sends it again (under a new header if it
        // changed), as the Java producer's batches do; a split encodes its parts again.
        let mut encoded: Option<Encoded> = None;
        loop {
            let attempt = match pinned {
                Some(header) => Ok(header),
                None => writer.header().await,
            };
            let error = match attempt {
                Ok(header) => {
                    pinned = Some(header);
                    let batch = match encoded.take() {
                        Some(batch) => Ok(batch),
                        None => records
                            .records(range.clone())
                            .encode(config.compression)
                            .map_err(ProduceFailure::Encode),
                    };
                    match batch {
                        Ok(batch) => {
                            let sent = writer.produce(&batch, header).await;
                            encoded = Some(batch);
                            match sent {
                                Ok(()) => {
                                    writer.written(header, range.len());
                                    metrics.published(range.len());
                                    break;
                                }
                                Err(refused) => refused,
                            }
                        }
                        Err(failed) => failed,
                    }
                }
                Err(no_header) => no_header,
            };
            let kind = error.refusal();
            match kind {
                Refusal::TooLarge if range.len() > 1 => {
                    // Split, as the Java producer does: the parts are sent in order, each
                    // encoded again.
                    let mid = range.start + range.len() / 2;
                    todo.push_front(mid..range.end);
                    todo.push_front(range.start..mid);
                    break;
                }
                Refusal::Retriable | Refusal::Sequence
                    if tokio::time::Instant::now() + backoff.wait() < deadline =>
                {
                    if matches!(kind, Refusal::Sequence) {
                        // Nothing of it was written: again under the next epoch.
                        if let Some(header) = pinned.take() {
                            writer.move_on(header, &error);
                        }
                    } else {
                        maybe_written |= pinned.is_some();
                    }
                    tracing::warn!(
                        topic = &*topic,
                        partition,
                        records = range.len(),
                        error = %error,
                        retry_in = ?backoff.wait(),
                        "produce failed; retrying"
                    );
                    backoff.sleep().await;
                }
                kind => {
                    let reason = Arc::new(match kind {
                        Refusal::Retriable | Refusal::Sequence => Undelivered::TimedOut {
                            timeout: config.delivery_timeout,
                            last: error,
                        },
                        Refusal::Ended => Undelivered::Aborted(error),
                        _ => Undelivered::Refused(error),
                    });
                    tracing::error!(
                        topic = &*topic,
                        partition,
                        records = range.len(),
                        error = %reason,
                        "produce failed for good"
                    );
                    if let Some(header) = pinned.filter(|_| {
                        maybe_written || matches!(kind, Refusal::Retriable | Refusal::Sequence)
                    }) {
                        writer.move_on(header, &*reason);
                    }
                    metrics.failed(range.len());
                    refused.extend(range.clone().map(|i| (i, reason.clone())));
                    break;
                }
            }
        }
        // Everything before the next range was sent or refused: resolve those groups.
        let done = todo.front().map_or(count, |r| r.start);
        writer.settle(&mut parts, &mut part_start, done, &refused);
    }
    writer.settle(&mut parts, &mut part_start, count, &refused);
    // The batch's memory serves the next one (the link holds no copy any more).
    if let Some(open) = records.reuse() {
        writer.pool.give(open);
    }
}

impl Writer {
    /// Resolves the groups whose parts end before record `done` of the batch (`refused`:
    /// its records that were not delivered, and why); a group whose last part is in the next
    /// batch carries its refused messages there.
    fn settle(
        &mut self,
        parts: &mut std::iter::Peekable<std::vec::IntoIter<Part>>,
        part_start: &mut usize,
        done: usize,
        refused: &[(usize, Arc<Undelivered>)],
    ) {
        while let Some(part) = parts.next_if(|p| p.end as usize <= done) {
            let (start, end) = (*part_start, part.end as usize);
            let failed = refused.iter().filter(|(i, _)| (start..end).contains(i));
            self.carried.extend(
                failed.map(|(i, reason)| (part.first + (i - start) as u32, reason.clone())),
            );
            *part_start = end;
            if let Some(finish) = part.finish {
                let failed = std::mem::take(&mut self.carried);
                let _ = finish.ack.send(if failed.is_empty() {
                    Ok(())
                } else {
                    Err(failed)
                });
            }
        }
    }
}

/// Whether two topic names are the same: most often the same shared name (a route's outputs
/// share theirs), compared without reading it.
fn same_topic(a: &Arc<str>, b: &Arc<str>) -> bool {
    Arc::ptr_eq(a, b) || a == b
}

/// Milliseconds since the Unix epoch.
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Kafka's default partitioner for keyed records: `murmur2(key) & 0x7fffffff % partitions`,
/// so keyed messages land where Java and librdkafka clients put them.
pub fn partition_for_key(key: &[u8], partitions: i32) -> i32 {
    ((murmur2(key) & 0x7fff_ffff) as i32) % partitions
}

/// Murmur2 as in Kafka's Java client (seed 0x9747b28c).
pub(crate) fn murmur2(data: &[u8]) -> u32 {
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h: u32 = 0x9747_b28c ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_kafka() {
        // Reference values from Kafka's Java client test suite.
        let cases: &[(&str, i32)] = &[
            ("21", -973932308),
            ("foobar", -790332482),
            ("a-little-bit-long-string", -985981536),
            ("a-little-bit-longer-string", -1486304829),
            (
                "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58897971,
            ),
            ("abc", 479470107),
        ];
        for (input, want) in cases {
            assert_eq!(murmur2(input.as_bytes()) as i32, *want, "{input}");
        }
    }

    /// A finish for a test group, and the receiver of its ack.
    fn finish() -> (Finish, Ack) {
        let budget = Arc::new(Semaphore::new(2));
        let permit = || budget.clone().try_acquire_owned().unwrap();
        let (ack, rx) = oneshot::channel();
        let _budget = (permit(), permit());
        (Finish { ack, _budget }, rx)
    }

    /// Appends messages `list[from..to]` to `acc` as one group of transaction `round`.
    fn append(acc: &Accumulator, list: &[OutgoingMessage], from: u32, to: u32, round: u64) -> Ack {
        let msgs: Vec<(u32, usize)> = (from..to)
            .map(|i| (i, crate::encode::fields_len(&list[i as usize])))
            .collect();
        let group = Group {
            list,
            msgs: &msgs,
            bytes: msgs.iter().map(|(_, f)| f + RECORD_FRAME).sum(),
            round,
            queued_at: tokio::time::Instant::now(),
        };
        let (finish, ack) = finish();
        acc.append(group, 0, finish, 1000, &BufferPool::new(0))
            .unwrap();
        ack
    }

    /// (records, (end, first, settles) of each part) of a batch.
    fn shape(b: &Filling) -> (usize, Vec<(u32, u32, bool)>) {
        let parts = b.parts.iter().map(|p| (p.end, p.first, p.finish.is_some()));
        (b.records.count(), parts.collect())
    }

    /// Groups are appended whole to a partition's open batch, which closes before a record
    /// would take it past the maximum (a record larger than that alone), and before a group
    /// of another transaction; a group spread over batches is settled by its last part.
    #[tokio::test]
    async fn groups_fill_batches_in_order_up_to_the_maximum() {
        // Values of 98 bytes: 107 bytes each in a batch, 9 to a batch of 1 000 bytes.
        let list: Vec<_> = (0..40)
            .map(|i| match i {
                30 => OutgoingMessage::new("t", vec![0u8; 5000]),
                _ => OutgoingMessage::new("t", vec![i as u8; 98]),
            })
            .collect();
        let acc = Accumulator::new(1 << 20);
        let _a = append(&acc, &list, 0, 3, 0);
        let _b = append(&acc, &list, 3, 20, 0);
        let _c = append(&acc, &list, 20, 22, 1);
        let _d = append(&acc, &list, 22, 40, 1);
        let mut batches = Vec::new();
        acc.shut();
        while let Some(b) = acc.next(std::time::Duration::ZERO).await {
            batches.push(shape(&b));
        }
        let want = vec![
            // Group a, then b's first six records.
            (9, vec![(3, 0, true), (9, 0, false)]),
            (9, vec![(9, 6, false)]),
            (2, vec![(2, 15, true)]),
            // Another transaction: a batch of its own.
            (9, vec![(2, 0, true), (9, 0, false)]),
            // The large record does not fit after the next: alone, then the rest.
            (1, vec![(1, 7, false)]),
            (1, vec![(1, 8, false)]),
            (9, vec![(9, 9, true)]),
        ];
        assert_eq!(batches, want);
    }

    /// The sender takes closed batches first, the open one once it holds enough or has
    /// waited the linger; once shut it drains what is left, then stops.
    #[tokio::test]
    async fn the_sender_takes_the_open_batch_after_the_linger() {
        let list: Vec<_> = (0..4).map(|_| OutgoingMessage::new("t", "small")).collect();
        let acc = Arc::new(Accumulator::new(1 << 20));
        let _a = append(&acc, &list, 0, 2, 0);
        let linger = std::time::Duration::from_millis(5);
        let start = tokio::time::Instant::now();
        let first = acc.next(linger).await.unwrap();
        assert_eq!(first.records.count(), 2);
        assert!(start.elapsed() >= linger, "waited the linger for more");
        // Records appended while the sender waits join the batch it takes.
        let waiting = tokio::spawn({
            let acc = acc.clone();
            async move { acc.next(linger).await.map(|b| b.records.count()) }
        });
        tokio::task::yield_now().await;
        let _b = append(&acc, &list, 2, 3, 0);
        tokio::task::yield_now().await;
        let _c = append(&acc, &list, 3, 4, 0);
        assert_eq!(waiting.await.unwrap(), Some(2));
        acc.shut();
        assert!(acc.next(linger).await.is_none());
    }

    /// The linger counts from a batch's first record, as Java's `linger.ms` does: a batch
    /// that waited it while its sender was busy (the batch before on its way) goes at once.
    #[tokio::test]
    async fn a_batch_that_waited_its_linger_meanwhile_goes_at_once() {
        use std::time::Duration;
        let list: Vec<_> = (0..3).map(|_| OutgoingMessage::new("t", "small")).collect();
        let acc = Accumulator::new(1 << 20);
        let linger = Duration::from_millis(200);
        let _a = append(&acc, &list, 0, 1, 0);
        tokio::time::sleep(Duration::from_millis(120)).await;
        let _b = append(&acc, &list, 1, 2, 0);
        tokio::time::sleep(Duration::from_millis(120)).await;
        let start = tokio::time::Instant::now();
        let batch = acc.next(linger).await.unwrap();
        assert_eq!(batch.records.count(), 2);
        assert!(
            start.elapsed() < linger,
            "its linger had passed: no new wait"
        );
        // The next batch waits its own linger, from its own first record.
        let _c = append(&acc, &list, 2, 3, 0);
        let start = tokio::time::Instant::now();
        assert_eq!(acc.next(linger).await.unwrap().records.count(), 1);
        assert!(start.elapsed() >= linger);
    }

    #[test]
    fn keyless_messages_stick_to_a_partition_until_it_took_its_share() {
        let mut sticky = Sticky {
            partition: 0,
            left: STICKY_BYTES,
        };
        let mut next = 0;
        let mut took = Vec::new();
        let per_partition = STICKY_BYTES.div_ceil(100);
        for _ in 0..3 * per_partition {
            took.push(sticky.take(100, || {
                next += 1;
                next
            }));
        }
        for p in 0..3 {
            let count = took.iter().filter(|t| **t == p).count();
            assert_eq!(count, per_partition, "partition {p}");
        }
        assert!(
            took.windows(2).all(|w| w[0] <= w[1]),
            "one partition at a time"
        );
        // A message larger than a share goes whole to one partition; the next moves on.
        assert_eq!(sticky.take(STICKY_BYTES * 2, || 3), 3);
        assert_eq!(sticky.take(1, || 4), 4);
    }

    #[test]
    fn keyed_partitioning_is_stable_and_in_range() {
        for n in [1, 3, 4, 12] {
            for key in ["a", "user-1", "user-2", ""] {
                let p = partition_for_key(key.as_bytes(), n);
                assert!((0..n).contains(&p));
                assert_eq!(p, partition_for_key(key.as_bytes(), n));
            }
        }
    }
}
