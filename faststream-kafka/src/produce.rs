//! Producing: one batching task per target partition, Kafka's default partitioner, acks.
//!
//! Callers queue groups of messages (a consumer queues the outputs of one fetched batch at once).
//! Each partition's task takes everything queued (up to `max_batch_bytes`), sends it, resolves
//! each group's ack when the broker answered, and meanwhile the next batch accumulates: natural
//! batching, one request in flight per partition, order kept. The queue in front of each task is
//! bounded, so a slow broker slows the consumers (backpressure) instead of growing memory.
//!
//! Each request's record batch is encoded here ([`crate::encode`]) straight from the outgoing
//! messages and handed to the link of the partition's leader ([`crate::link`], the leader from
//! [`crate::cluster`], looked up again after any failure), which sends it in one Produce
//! request with the batches of every other partition of that broker waiting at the time.
//! Errors are classified as Kafka's Java producer does: retriable ones (a moved leader, a lost
//! connection, a timeout) are retried with backoff until `delivery_timeout`; a batch refused as
//! too large is split; the rest fails the messages for good.
//!
//! Request sizing: a partition's task sends what is queued when its previous request was
//! answered, up to `max_batch_bytes` per request; with less than [`LINGER_FILL`] queued it first
//! waits up to `linger` for more, as Java's producer does with `batch.size` and `linger.ms`.
//! Each request goes out in one write on a `TCP_NODELAY` connection, so no request size waits
//! for a delayed ACK.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use faststream_core::OutgoingMessage;
use kafka_protocol::ResponseError;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

use crate::backoff::Backoff;
use crate::cluster::Cluster;
use crate::config::Config;
use crate::encode::{Ahead, BatchHeader, Encoder, Rec};
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

/// Per-record framing overhead added to the encoded fields when sizing a request.
const RECORD_OVERHEAD: usize = 24;

/// What a queued record costs the queue budgets: its encoded fields, plus what it takes while
/// it waits beyond them (where it is, and its size), so that the budgets bound memory for
/// small messages too.
fn queued_cost(record: &Rec) -> usize {
    record.len() + std::mem::size_of::<Rec>() + std::mem::size_of::<usize>()
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

/// Messages for one partition, acknowledged together, encoded as they were queued.
struct Pending {
    records: Ahead,
    sizes: Vec<usize>,
    size: usize,
    ack: oneshot::Sender<Delivery>,
    /// When it was queued: retriable failures are retried until `delivery_timeout` after.
    queued_at: tokio::time::Instant,
    /// Its share of the partition's queue budget and of the producers' total, returned when
    /// it is dropped (after the ack).
    _budget: (OwnedSemaphorePermit, OwnedSemaphorePermit),
    /// The transaction it belongs to (see [`Txn::round`]; 0 outside transactions).
    round: u64,
}

/// A partition's queue: unbounded channel, bounded by a byte budget.
#[derive(Clone, Debug)]
struct Queue {
    tx: mpsc::UnboundedSender<Pending>,
    budget: Arc<Semaphore>,
}

/// All producers of one broker handle, created lazily per target partition.
#[derive(Debug)]
pub(crate) struct Producers {
    config: Arc<Config>,
    cluster: Arc<Cluster>,
    /// Partition counts by topic, with when they were looked up (refreshed after
    /// `metadata_max_age`, so keys are partitioned with a count that follows the cluster's).
    partitions: Mutex<HashMap<String, (i32, tokio::time::Instant)>>,
    queues: Mutex<HashMap<String, Vec<Option<Queue>>>>,
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
    /// Buffers the partitions' tasks use for their requests, kept between requests.
    scratch: Arc<ScratchPool>,
}

impl Producers {
    pub(crate) fn new(cluster: Arc<Cluster>) -> Self {
        let total = Arc::new(Semaphore::new(cluster.config().max_queued_bytes_total));
        let scratch_limit = SCRATCH_BATCHES * cluster.config().max_batch_bytes;
        Self {
            config: cluster.config().clone(),
            cluster,
            partitions: Mutex::new(HashMap::new()),
            queues: Mutex::new(HashMap::new()),
            declared: Mutex::default(),
            tasks: Mutex::new(Vec::new()),
            round_robin: AtomicUsize::new(0),
            sticky: Mutex::default(),
            total,
            identity: Arc::default(),
            txn: None,
            scratch: Arc::new(ScratchPool::new(scratch_limit)),
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
            scratch: plain.scratch.clone(),
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
        struct Group {
            topic: Arc<str>,
            partition: i32,
            records: Ahead,
            sizes: Vec<usize>,
            indices: Vec<u32>,
            /// What the group costs the queue budgets ([`queued_cost`]).
            cost: usize,
        }
        let mut out = Enqueued::default();
        let mut groups: Vec<Group> = Vec::new();
        /// A topic's partition count (`Err`: why it cannot be written) and where its keyless
        /// messages go (taken from the shared state at the first, given back at the end).
        type Known = Result<(i32, Option<Sticky>), Arc<Undelivered>>;
        let mut topics: Vec<(Arc<str>, Known)> = Vec::new();
        let listed = msgs.len();
        // Records without a timestamp of their own get the time they were sent (as the Java
        // producer's `send` gives them).
        let now = now_ms();
        for (index, msg) in msgs.into_iter().enumerate() {
            let count_left = listed - index;
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
            let size = msg.approximate_size() + RECORD_OVERHEAD;
            // How many of the list's messages may go where this one goes: a keyless one's
            // partition takes what is left of its share, the others may take the rest.
            let mut expected = count_left;
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
                    let partition = sticky.take(size, || self.next_partition(count));
                    expected = expected.min(1 + sticky.left / size);
                    partition
                }
            };
            let at = match groups
                .iter()
                .position(|g| g.partition == partition && same_topic(&g.topic, &msg.topic))
            {
                Some(at) => at,
                None => {
                    // Most calls address one partition: room for what may follow.
                    let room = expected.min(1024);
                    groups.push(Group {
                        topic: msg.topic.clone(),
                        partition,
                        records: Ahead::with_room_for(&msg, room),
                        sizes: Vec::with_capacity(room),
                        indices: Vec::with_capacity(room),
                        cost: 0,
                    });
                    groups.len() - 1
                }
            };
            // Encoded now, while it is in the cache; the message itself is dropped here.
            let g = &mut groups[at];
            match g.records.push(&msg, msg.timestamp.unwrap_or(now)) {
                Ok(record) => {
                    g.sizes.push(record.len() + RECORD_OVERHEAD);
                    g.cost += queued_cost(record);
                    g.indices.push(index);
                }
                Err(why) => {
                    let reason = Undelivered::Refused(ProduceFailure::Encode(why));
                    out.refused.push((index, Arc::new(reason)));
                }
            }
        }
        for (topic, known) in topics {
            if let Ok((_, Some(sticky))) = known {
                lock(&self.sticky).insert(topic, sticky);
            }
        }
        out.groups.reserve(groups.len());
        for Group {
            topic,
            partition,
            records,
            sizes,
            indices,
            cost,
        } in groups
        {
            if indices.is_empty() {
                continue;
            }
            let queue = self.queue(&topic, partition)?;
            let size: usize = sizes.iter().sum();
            // (A group larger than a budget takes all of it.)
            let permits = cost.clamp(1, self.config.max_queued_bytes) as u32;
            let partition_share = queue
                .budget
                .acquire_many_owned(permits)
                .await
                .map_err(|_| KafkaError::Closed)?;
            let permits = cost.clamp(1, self.config.max_queued_bytes_total) as u32;
            let total_share = self
                .total
                .clone()
                .acquire_many_owned(permits)
                .await
                .map_err(|_| KafkaError::Closed)?;
            let (tx, rx) = oneshot::channel();
            let pending = Pending {
                records,
                sizes,
                size,
                ack: tx,
                queued_at: tokio::time::Instant::now(),
                _budget: (partition_share, total_share),
                round: self.txn.as_ref().map_or(0, |t| t.round()),
            };
            queue.tx.send(pending).map_err(|_| KafkaError::Closed)?;
            out.groups.push((indices, rx));
        }
        Ok(out)
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

    fn queue(&self, topic: &str, partition: i32) -> Result<Queue, KafkaError> {
        let index = usize::try_from(partition).map_err(|_| {
            KafkaError::InvalidPartition(format!(
                "invalid partition {partition} for topic {topic:?}"
            ))
        })?;
        let mut queues = lock(&self.queues);
        let slots = match queues.get_mut(topic) {
            Some(slots) => slots,
            None => queues.entry(topic.to_owned()).or_default(),
        };
        if slots.len() <= index {
            slots.resize(index + 1, None);
        }
        if let Some(q) = &slots[index] {
            return Ok(q.clone());
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let budget = Arc::new(Semaphore::new(self.config.max_queued_bytes));
        let writer = Writer {
            config: self.config.clone(),
            topic: topic.to_owned(),
            partition,
            cluster: self.cluster.clone(),
            encoder: Encoder::default(),
            identity: self.identity.clone(),
            txn: self.txn.clone(),
            round: 0,
            sequence: None,
            given_up: None,
            scratch: self.scratch.clone(),
        };
        let task = tokio::spawn(run_partition_producer(writer, rx, budget.clone()));
        lock(&self.tasks).push(task);
        let queue = Queue { tx, budget };
        slots[index] = Some(queue.clone());
        Ok(queue)
    }

    /// Closes every queue and waits until everything queued was sent (or failed).
    pub(crate) async fn flush(&self) {
        lock(&self.queues).clear();
        let tasks: Vec<_> = lock(&self.tasks).drain(..).collect();
        for task in tasks {
            let _ = task.await;
        }
    }
}

async fn run_partition_producer(
    mut writer: Writer,
    mut rx: mpsc::UnboundedReceiver<Pending>,
    budget: Arc<Semaphore>,
) {
    let config = writer.config.clone();
    let metrics = crate::metrics::ProducerMetrics::new(&writer.topic, writer.partition);
    let queued =
        || config.max_queued_bytes - budget.available_permits().min(config.max_queued_bytes);
    while let Some(first) = rx.recv().await {
        let mut bytes = first.size;
        let mut batch = vec![first];
        while bytes < config.max_batch_bytes {
            match rx.try_recv() {
                Ok(p) => {
                    bytes += p.size;
                    batch.push(p);
                }
                Err(_) => break,
            }
        }
        // Little queued: give the batch a moment to grow.
        if bytes < LINGER_FILL && !config.linger.is_zero() {
            let deadline = tokio::time::Instant::now() + config.linger;
            while bytes < LINGER_FILL {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(p)) => {
                        bytes += p.size;
                        batch.push(p);
                    }
                    _ => break,
                }
            }
        }
        metrics.queued(queued());
        send(&mut writer, batch, &metrics).await;
        metrics.queued(queued());
    }
}

/// Splits `sizes` (bytes per record) into ranges of at most `max` bytes each (a record larger
/// than `max` goes alone).
pub(crate) fn plan_requests(sizes: &[usize], max: usize) -> Vec<std::ops::Range<usize>> {
    let mut ranges = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, size) in sizes.iter().enumerate() {
        if i > start && bytes + size > max {
            ranges.push(start..i);
            (start, bytes) = (i, 0);
        }
        bytes += size;
    }
    if start < sizes.len() {
        ranges.push(start..sizes.len());
    }
    ranges
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
    topic: String,
    partition: i32,
    cluster: Arc<Cluster>,
    encoder: Encoder,
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
    /// Buffers for its requests, shared with the other partitions' tasks.
    scratch: Arc<ScratchPool>,
}

/// A request's buffers: the records of the groups taken (their fields in `parts`, one per
/// group), their sizes, and the encoded record batch.
#[derive(Debug, Default)]
struct Scratch {
    recs: Vec<Rec>,
    parts: Vec<Bytes>,
    sizes: Vec<usize>,
    records: BytesMut,
}

impl Scratch {
    /// The memory it holds.
    fn footprint(&self) -> usize {
        self.recs.capacity() * std::mem::size_of::<Rec>()
            + self.parts.capacity() * std::mem::size_of::<Bytes>()
            + self.sizes.capacity() * std::mem::size_of::<usize>()
            + self.records.capacity()
    }
}

/// Request buffers kept between requests, up to a total size: taken by a partition's task for
/// each request and given back after it, instead of fresh memory of a request's size each time
/// (which the kernel first has to clear: at hundreds of thousands of messages a second that
/// cost more than filling it). As the Java producer's buffer pool, but for what is idle only.
#[derive(Debug)]
pub(crate) struct ScratchPool {
    idle: Mutex<(Vec<Scratch>, usize)>,
    limit: usize,
}

/// The pool keeps idle buffers for about this many requests of `max_batch_bytes`.
const SCRATCH_BATCHES: usize = 8;

impl ScratchPool {
    fn new(limit: usize) -> Self {
        Self {
            idle: Mutex::new((Vec::new(), 0)),
            limit,
        }
    }

    fn take(&self) -> Scratch {
        let mut idle = lock(&self.idle);
        match idle.0.pop() {
            Some(scratch) => {
                idle.1 -= scratch.footprint();
                scratch
            }
            None => Scratch::default(),
        }
    }

    /// Keeps `scratch` (emptied) if the pool has room for it.
    fn give(&self, mut scratch: Scratch) {
        scratch.recs.clear();
        scratch.parts.clear();
        scratch.sizes.clear();
        scratch.records.clear();
        let size = scratch.footprint();
        let mut idle = lock(&self.idle);
        if idle.1 + size <= self.limit {
            idle.1 += size;
            idle.0.push(scratch);
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

    /// Encodes `recs` (their fields in `parts`) as one record batch with `header`, in
    /// `buffer`'s memory.
    fn encode(
        &mut self,
        parts: &[Bytes],
        recs: &[Rec],
        buffer: &mut BytesMut,
        header: BatchHeader,
    ) -> Result<Bytes, ProduceFailure> {
        let mut records = std::mem::take(buffer);
        records.clear();
        records.reserve(crate::encode::bound(recs));
        self.encoder
            .batch(&mut records, parts, recs, self.config.compression, header)
            .map_err(ProduceFailure::Encode)?;
        Ok(records.freeze())
    }

    /// Sends one record batch and waits for the leader's acknowledgement (all in-sync
    /// replicas, `acks = all`). A batch the leader already had (a retry after a lost answer)
    /// counts as acknowledged.
    async fn produce(&mut self, records: Bytes) -> Result<(), ProduceFailure> {
        let res = self.send(records).await;
        if matches!(&res, Err(e) if matches!(e.refusal(), Refusal::Retriable)) {
            // The leader may have moved: look it up again before the retry.
            self.cluster.forget(&self.topic, self.partition);
        }
        res
    }

    async fn send(&mut self, records: Bytes) -> Result<(), ProduceFailure> {
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
        let batch = Batch {
            topic: Arc::from(self.topic.as_str()),
            partition: self.partition,
            records,
            transactional_id: self.txn.as_ref().map(|t| Arc::from(t.id())),
        };
        let p = self
            .cluster
            .link(&leader.addr)
            .produce(batch)
            .await
            .map_err(ProduceFailure::Request)?;
        match ResponseError::try_from_code(p.error_code) {
            // With idempotence: the leader already wrote this batch (an earlier attempt
            // whose answer was lost).
            None | Some(ResponseError::DuplicateSequenceNumber) => Ok(()),
            Some(error) => Err(ProduceFailure::Broker {
                topic: Arc::from(self.topic.as_str()),
                partition: self.partition,
                error,
                detail: p.error_message.map(|m| m.to_string()),
            }),
        }
    }
}

/// Sends a batch in request-sized pieces, resolving each group's ack once all its messages
/// are in, or with the ones that were refused. Retriable errors are retried with backoff until
/// `delivery_timeout` after the oldest group was queued; a request refused as too large is
/// split until the record that is too large stands alone.
async fn send(writer: &mut Writer, batch: Vec<Pending>, metrics: &crate::metrics::ProducerMetrics) {
    let config = writer.config.clone();
    let (topic, partition) = (writer.topic.clone(), writer.partition);
    let total = batch.iter().map(|p| p.records.records.len()).sum();
    let pool = writer.scratch.clone();
    let Scratch {
        mut recs,
        mut parts,
        mut sizes,
        records: mut buffer,
    } = pool.take();
    recs.reserve(total);
    parts.reserve(batch.len());
    sizes.reserve(total);
    let mut ends = Vec::with_capacity(batch.len());
    let deadline = batch
        .iter()
        .map(|p| p.queued_at)
        .min()
        .map(|t| t + config.delivery_timeout);
    let batch = match &writer.txn {
        Some(txn) => {
            // Outputs of an aborted transaction are not written in the next one.
            let round = txn.round();
            let (batch, ended): (Vec<_>, Vec<_>) =
                batch.into_iter().partition(|p| p.round == round);
            if !ended.is_empty() {
                let reason = Arc::new(Undelivered::Aborted(ProduceFailure::Txn(
                    txn.ended(&topic, partition),
                )));
                tracing::warn!(
                    topic,
                    partition,
                    groups = ended.len(),
                    "outputs of an aborted transaction are not written"
                );
                for p in ended {
                    let failed = (0..p.records.records.len() as u32).map(|i| (i, reason.clone()));
                    let _ = p.ack.send(Err(failed.collect()));
                }
            }
            writer.round = round;
            batch
        }
        None => batch,
    };
    for p in batch {
        let part = parts.len() as u32;
        parts.push(p.records.fields.freeze());
        recs.extend(p.records.records.iter().map(|r| r.in_part(part)));
        sizes.extend(p.sizes);
        ends.push((recs.len(), p.ack, p._budget));
    }
    let deadline = deadline.unwrap_or_else(tokio::time::Instant::now);
    // Refused records: index into `recs`, reason.
    let mut refused: Vec<(usize, Arc<Undelivered>)> = Vec::new();
    let mut todo: std::collections::VecDeque<std::ops::Range<usize>> =
        plan_requests(&sizes, config.max_batch_bytes).into();
    let mut ends = ends.into_iter().peekable();
    // Where the next group to resolve starts.
    let mut group_start = 0;
    while let Some(range) = todo.pop_front() {
        let mut backoff = Backoff::requests();
        // The producer fields of this range's batch, kept across retries (so the leader can
        // tell a retry of a batch it wrote from a new one), and whether an attempt may have
        // been written although it failed.
        let mut pinned: Option<BatchHeader> = None;
        let mut maybe_written = false;
        // The range's batch as encoded, and the header in it: a retry sends the batch again
        // (under a new header if it changed), as the Java producer's batches do; a split
        // encodes its parts from the records again.
        let mut encoded: Option<(BatchHeader, Bytes)> = None;
        loop {
            let attempt = match pinned {
                Some(header) => Ok(header),
                None => writer.header().await,
            };
            let error = match attempt {
                Ok(header) => {
                    pinned = Some(header);
                    let records = match encoded.take() {
                        Some((was, records)) if was == header => Ok(records),
                        Some((_, records)) => Ok(crate::encode::with_header(&records, header)),
                        None => writer.encode(&parts, &recs[range.clone()], &mut buffer, header),
                    };
                    match records {
                        Ok(records) => {
                            encoded = Some((header, records.clone()));
                            match writer.produce(records).await {
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
                        topic,
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
                        topic,
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
        // The batch's memory serves the next one (the link holds no copy any more).
        if let Some((_, records)) = encoded {
            if let Ok(records) = records.try_into_mut() {
                buffer = records;
            }
        }
        // Everything before the next range was sent or refused: resolve those groups.
        let done = todo.front().map_or(recs.len(), |r| r.start);
        while let Some((end, ack, _budget)) = ends.next_if(|(end, _, _)| *end <= done) {
            let failed: Vec<(u32, Arc<Undelivered>)> = refused
                .iter()
                .filter(|(i, _)| (group_start..end).contains(i))
                .map(|(i, reason)| ((i - group_start) as u32, reason.clone()))
                .collect();
            let _ = ack.send(if failed.is_empty() {
                Ok(())
            } else {
                Err(failed)
            });
            group_start = end;
        }
    }
    pool.give(Scratch {
        recs,
        parts,
        sizes,
        records: buffer,
    });
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

    #[test]
    fn requests_are_cut_at_the_maximum_size() {
        assert_eq!(plan_requests(&[100; 10], 1 << 20), vec![0..10]);
        assert_eq!(plan_requests(&[1000; 40], 1 << 20), vec![0..40]);
        assert_eq!(plan_requests(&[1000; 200], 50_000).len(), 4);
        assert!(plan_requests(&[1000; 200], 50_000)
            .iter()
            .all(|r| r.len() * 1000 <= 50_000));
        // A single record larger than the limit still goes (alone).
        assert_eq!(plan_requests(&[10_000, 10], 5_000), vec![0..1, 1..2]);
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
