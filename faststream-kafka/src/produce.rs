//! Producing: one batching task per target partition, Kafka's default partitioner, acks.
//!
//! Callers queue groups of messages (a consumer queues the outputs of one fetched batch at once).
//! Each partition's task takes everything queued (up to `max_batch_bytes`), sends it, resolves
//! each group's ack when the broker answered, and meanwhile the next batch accumulates: natural
//! batching, one request in flight per partition, order kept. The queue in front of each task is
//! bounded, so a slow broker slows the consumers (backpressure) instead of growing memory.
//!
//! Request sizing: rskafka writes a request's length prefix and body in two writes without
//! TCP_NODELAY, so requests of roughly 7 to 80 KB wait ~40 ms for a delayed ACK. Batches in that
//! window are held for `linger` to grow past it, and otherwise sent in chunks below it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{TimeZone, Utc};
use faststream_core::OutgoingMessage;
use rskafka::client::partition::{PartitionClient, UnknownTopicHandling};
use rskafka::client::Client;
use rskafka::record::Record;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

use crate::broker::Config;
use crate::error::KafkaError;

/// Requests up to this size are sent as they are.
pub(crate) const SMALL_REQUEST: usize = 6 * 1024;
/// Requests from this size on are sent as they are.
pub(crate) const LARGE_REQUEST: usize = 96 * 1024;
/// Per-record framing overhead added to the payload sizes when sizing a request.
const RECORD_OVERHEAD: usize = 24;

/// Resolves when the broker acknowledged a group of messages, or with why it never will be.
pub(crate) type Ack = oneshot::Receiver<Result<(), String>>;

/// Messages for one partition, acknowledged together.
struct Pending {
    msgs: Vec<OutgoingMessage>,
    sizes: Vec<usize>,
    size: usize,
    ack: oneshot::Sender<Result<(), String>>,
    /// Its share of the partition's queue budget, returned when it is dropped (after the ack).
    _budget: OwnedSemaphorePermit,
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
    /// Partition counts by topic, with when they were looked up (refreshed after
    /// `metadata_max_age`, so keys are partitioned with a count that follows the cluster's).
    partitions: Mutex<HashMap<String, (i32, tokio::time::Instant)>>,
    queues: Mutex<HashMap<String, Vec<Option<Queue>>>>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    round_robin: AtomicUsize,
}

impl Producers {
    pub(crate) fn new(config: Arc<Config>) -> Self {
        Self {
            config,
            partitions: Mutex::new(HashMap::new()),
            queues: Mutex::new(HashMap::new()),
            tasks: Mutex::new(Vec::new()),
            round_robin: AtomicUsize::new(0),
        }
    }

    /// Queues `msgs`, grouped by target partition; returns one ack per group, resolving once the
    /// broker has the whole group. Waits when a partition's queue is full (backpressure).
    ///
    /// Partitions: explicit, else murmur2 of the key, else one partition per call and topic
    /// (round-robin across calls: "sticky", so keyless messages batch well).
    pub(crate) async fn enqueue(
        &self,
        client: &Arc<Client>,
        msgs: Vec<OutgoingMessage>,
    ) -> Result<Vec<Ack>, KafkaError> {
        struct Group {
            topic: String,
            partition: i32,
            msgs: Vec<OutgoingMessage>,
            sizes: Vec<usize>,
        }
        let mut groups: Vec<Group> = Vec::new();
        // Per topic of this call: its partition count (looked up once) and the partition its
        // keyless messages stick to.
        let mut topics: Vec<(String, i32, i32)> = Vec::new();
        for msg in msgs {
            let (count, sticky) = match topics.iter().find(|(t, _, _)| *t == msg.topic) {
                Some((_, count, sticky)) => (*count, *sticky),
                None => {
                    let count = self.partition_count(client, &msg.topic).await?;
                    let sticky =
                        (self.round_robin.fetch_add(1, Ordering::Relaxed) % count as usize) as i32;
                    topics.push((msg.topic.clone(), count, sticky));
                    (count, sticky)
                }
            };
            let partition = match (msg.partition, &msg.key) {
                (Some(p), _) if (0..count).contains(&p) => p,
                (Some(p), _) => {
                    return Err(KafkaError::InvalidPartition(format!(
                        "partition {p} of topic {:?}, which has {count} partition(s)",
                        msg.topic
                    )))
                }
                (None, Some(key)) => partition_for_key(key, count),
                (None, None) => sticky,
            };
            let size = msg.approximate_size() + RECORD_OVERHEAD;
            match groups
                .iter_mut()
                .find(|g| g.partition == partition && g.topic == msg.topic)
            {
                Some(g) => {
                    g.msgs.push(msg);
                    g.sizes.push(size);
                }
                None => groups.push(Group {
                    topic: msg.topic.clone(),
                    partition,
                    msgs: vec![msg],
                    sizes: vec![size],
                }),
            }
        }
        let mut acks = Vec::with_capacity(groups.len());
        for Group {
            topic,
            partition,
            msgs,
            sizes,
        } in groups
        {
            let queue = self.queue(client, &topic, partition)?;
            let size: usize = sizes.iter().sum();
            let permits = size.clamp(1, self.config.max_queued_bytes) as u32;
            let budget = queue
                .budget
                .acquire_many_owned(permits)
                .await
                .map_err(|_| KafkaError::Closed)?;
            let (tx, rx) = oneshot::channel();
            let pending = Pending {
                msgs,
                sizes,
                size,
                ack: tx,
                _budget: budget,
            };
            queue.tx.send(pending).map_err(|_| KafkaError::Closed)?;
            acks.push(rx);
        }
        Ok(acks)
    }

    /// Number of partitions of `topic`, from metadata (cached for `metadata_max_age`); creates
    /// the topic if allowed.
    pub(crate) async fn partition_count(
        &self,
        client: &Arc<Client>,
        topic: &str,
    ) -> Result<i32, KafkaError> {
        let cached = lock(&self.partitions).get(topic).copied();
        if let Some((n, at)) = cached {
            if at.elapsed() < self.config.metadata_max_age {
                return Ok(n);
            }
        }
        let n = match crate::broker::ensure_topic(client, &self.config, topic).await {
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

    /// Current partition counts of those `topics` that exist (fresh metadata, nothing created;
    /// a failed lookup is logged and yields nothing).
    pub(crate) async fn lookup_partitions(
        &self,
        client: &Arc<Client>,
        topics: &[String],
    ) -> std::collections::BTreeMap<String, i32> {
        let listed = match client.list_topics().await {
            Ok(listed) => listed,
            Err(e) => {
                tracing::warn!(?topics, error = %e, "metadata lookup failed");
                return Default::default();
            }
        };
        let now = tokio::time::Instant::now();
        let found: std::collections::BTreeMap<String, i32> = listed
            .into_iter()
            .filter(|t| topics.contains(&t.name) && !t.partitions.is_empty())
            .map(|t| (t.name, t.partitions.len() as i32))
            .collect();
        let mut cache = lock(&self.partitions);
        for (topic, n) in &found {
            cache.insert(topic.clone(), (*n, now));
        }
        found
    }

    fn queue(
        &self,
        client: &Arc<Client>,
        topic: &str,
        partition: i32,
    ) -> Result<Queue, KafkaError> {
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
        let task = tokio::spawn(run_partition_producer(
            client.clone(),
            self.config.clone(),
            topic.to_owned(),
            partition,
            rx,
        ));
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

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

async fn run_partition_producer(
    client: Arc<Client>,
    config: Arc<Config>,
    topic: String,
    partition: i32,
    mut rx: mpsc::UnboundedReceiver<Pending>,
) {
    let pc = loop {
        match client
            .partition_client(topic.clone(), partition, UnknownTopicHandling::Retry)
            .await
        {
            Ok(pc) => break pc,
            Err(e) => {
                tracing::warn!(topic, partition, error = %e, "cannot reach partition leader; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    };
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
        // In the stall window: give the batch a moment to grow past it.
        if bytes > SMALL_REQUEST && bytes < LARGE_REQUEST && !config.linger.is_zero() {
            let deadline = tokio::time::Instant::now() + config.linger;
            while bytes < LARGE_REQUEST {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(p)) => {
                        bytes += p.size;
                        batch.push(p);
                    }
                    _ => break,
                }
            }
        }
        send(&pc, &config, &topic, partition, batch).await;
    }
}

/// Splits `sizes` (bytes per record) into request-sized ranges: one per `max` bytes, and below
/// [`SMALL_REQUEST`] each when the total falls in the stall window.
pub(crate) fn plan_requests(sizes: &[usize], max: usize) -> Vec<std::ops::Range<usize>> {
    let total: usize = sizes.iter().sum();
    let limit = if total > SMALL_REQUEST && total < LARGE_REQUEST {
        SMALL_REQUEST
    } else {
        max
    };
    let mut ranges = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, size) in sizes.iter().enumerate() {
        if i > start && bytes + size > limit {
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

fn to_record(msg: &OutgoingMessage, now: chrono::DateTime<Utc>) -> Record {
    Record {
        key: msg.key.as_ref().map(|k| k.to_vec()),
        value: msg.payload.as_ref().map(|v| v.to_vec()),
        headers: msg
            .headers
            .iter()
            .map(|(k, v)| (k.to_owned(), v.to_vec()))
            .collect(),
        timestamp: match msg.timestamp {
            Some(ms) => Utc.timestamp_millis_opt(ms).single().unwrap_or(now),
            None => now,
        },
    }
}

/// Sends a batch in request-sized pieces, each retried with backoff until the broker takes it,
/// resolving each group's ack once all its messages are in.
async fn send(
    pc: &PartitionClient,
    config: &Config,
    topic: &str,
    partition: i32,
    batch: Vec<Pending>,
) {
    let mut msgs = Vec::new();
    let mut sizes = Vec::new();
    let mut ends = Vec::with_capacity(batch.len());
    for p in batch {
        msgs.extend(p.msgs);
        sizes.extend(p.sizes);
        ends.push((msgs.len(), p.ack, p._budget));
    }
    let mut ends = ends.into_iter().peekable();
    let now = Utc::now();
    for range in plan_requests(&sizes, config.max_batch_bytes) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let records: Vec<Record> = msgs[range.clone()]
                .iter()
                .map(|m| to_record(m, now))
                .collect();
            let limit = config.request_timeout;
            let attempt = tokio::time::timeout(limit, pc.produce(records, config.compression));
            let result = match attempt.await {
                Ok(r) => r.map_err(|e| e.to_string()),
                Err(_) => Err(format!("no answer from the broker within {limit:?}")),
            };
            match result {
                Ok(_) => break,
                Err(e) => {
                    tracing::error!(
                        topic,
                        partition,
                        records = range.len(),
                        error = %e,
                        retry_in = ?backoff,
                        "produce failed; retrying"
                    );
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        while let Some((_, ack, _budget)) = ends.next_if(|(end, _, _)| *end <= range.end) {
            let _ = ack.send(Ok(()));
        }
    }
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
    fn requests_avoid_the_stall_window() {
        // Small totals go as one request; totals in the window are cut below SMALL_REQUEST.
        assert_eq!(plan_requests(&[100; 10], 1 << 20), vec![0..10]);
        let ranges = plan_requests(&[1000; 40], 1 << 20);
        assert!(ranges.len() > 1);
        assert!(ranges.iter().all(|r| r.len() * 1000 <= SMALL_REQUEST));
        assert_eq!(ranges.iter().map(|r| r.len()).sum::<usize>(), 40);
        // Large totals go whole, up to the maximum request size.
        assert_eq!(plan_requests(&[1000; 200], 1 << 20), vec![0..200]);
        assert_eq!(plan_requests(&[1000; 200], 50_000).len(), 4);
        // A single record larger than the limit still goes (alone).
        assert_eq!(plan_requests(&[10_000, 10], 1 << 20), vec![0..1, 1..2]);
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
