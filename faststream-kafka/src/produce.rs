//! Producing: one batching task per target partition, Kafka's default partitioner, acks.
//!
//! Each partition's task takes everything queued (up to `max_batch_bytes`), sends it as one
//! produce request, resolves each message's ack when the broker answered, and meanwhile the next
//! batch accumulates: natural batching, one request in flight per partition, order kept. The
//! queue in front of each task is bounded, so a slow broker slows the handlers (backpressure)
//! instead of growing memory.
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
use tokio::sync::{mpsc, oneshot};

use crate::broker::Config;
use crate::error::KafkaError;

/// Requests up to this size are sent as they are.
pub(crate) const SMALL_REQUEST: usize = 6 * 1024;
/// Requests from this size on are sent as they are.
pub(crate) const LARGE_REQUEST: usize = 96 * 1024;
/// Per-record framing overhead added to the payload sizes when sizing a request.
const RECORD_OVERHEAD: usize = 24;

/// Resolves when the broker acknowledged one message, or with why it never will be.
pub(crate) type Ack = oneshot::Receiver<Result<(), String>>;

struct Pending {
    record: Record,
    size: usize,
    ack: oneshot::Sender<Result<(), String>>,
}

/// All producers of one broker handle, created lazily per target partition.
#[derive(Debug)]
pub(crate) struct Producers {
    config: Arc<Config>,
    partitions: tokio::sync::Mutex<HashMap<String, i32>>,
    queues: Mutex<HashMap<(String, i32), mpsc::Sender<Pending>>>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    round_robin: AtomicUsize,
}

impl Producers {
    pub(crate) fn new(config: Arc<Config>) -> Self {
        Self {
            config,
            partitions: tokio::sync::Mutex::new(HashMap::new()),
            queues: Mutex::new(HashMap::new()),
            tasks: Mutex::new(Vec::new()),
            round_robin: AtomicUsize::new(0),
        }
    }

    /// Queues `msg` for its partition; the returned ack resolves once the broker has it.
    /// Waits when the partition's queue is full.
    pub(crate) async fn enqueue(
        &self,
        client: &Arc<Client>,
        msg: OutgoingMessage,
    ) -> Result<Ack, KafkaError> {
        let partition = match msg.partition {
            Some(p) => p,
            None => {
                let count = self.partition_count(client, &msg.topic).await?;
                match &msg.key {
                    Some(key) => partition_for_key(key, count),
                    None => {
                        (self.round_robin.fetch_add(1, Ordering::Relaxed) % count as usize) as i32
                    }
                }
            }
        };
        let queue = self.queue(client, &msg.topic, partition);
        let (tx, rx) = oneshot::channel();
        let size = msg.approximate_size() + RECORD_OVERHEAD;
        let record = Record {
            key: msg.key.map(|k| k.to_vec()),
            value: msg.payload.map(|v| v.to_vec()),
            headers: msg
                .headers
                .iter()
                .map(|(k, v)| (k.to_owned(), v.to_vec()))
                .collect(),
            timestamp: match msg.timestamp {
                Some(ms) => Utc
                    .timestamp_millis_opt(ms)
                    .single()
                    .unwrap_or_else(Utc::now),
                None => Utc::now(),
            },
        };
        queue
            .send(Pending {
                record,
                size,
                ack: tx,
            })
            .await
            .map_err(|_| KafkaError::Closed)?;
        Ok(rx)
    }

    /// Number of partitions of `topic`, from metadata (cached); creates the topic if allowed.
    pub(crate) async fn partition_count(
        &self,
        client: &Arc<Client>,
        topic: &str,
    ) -> Result<i32, KafkaError> {
        let mut cache = self.partitions.lock().await;
        if let Some(n) = cache.get(topic) {
            return Ok(*n);
        }
        let n = crate::broker::ensure_topic(client, &self.config, topic).await?;
        cache.insert(topic.to_owned(), n);
        Ok(n)
    }

    fn queue(&self, client: &Arc<Client>, topic: &str, partition: i32) -> mpsc::Sender<Pending> {
        let mut queues = self.queues.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(q) = queues.get(&(topic.to_owned(), partition)) {
            return q.clone();
        }
        let (tx, rx) = mpsc::channel(self.config.producer_queue);
        let task = tokio::spawn(run_partition_producer(
            client.clone(),
            self.config.clone(),
            topic.to_owned(),
            partition,
            rx,
        ));
        self.tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(task);
        queues.insert((topic.to_owned(), partition), tx.clone());
        tx
    }

    /// Closes every queue and waits until everything queued was sent (or failed).
    pub(crate) async fn flush(&self) {
        self.queues
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        let tasks: Vec<_> = self
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
            .collect();
        for task in tasks {
            let _ = task.await;
        }
    }
}

async fn run_partition_producer(
    client: Arc<Client>,
    config: Arc<Config>,
    topic: String,
    partition: i32,
    mut rx: mpsc::Receiver<Pending>,
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
    let mut batch: Vec<Pending> = Vec::new();
    while let Some(first) = rx.recv().await {
        let mut bytes = first.size;
        batch.push(first);
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
        let mut rest = std::mem::take(&mut batch);
        if bytes > SMALL_REQUEST && bytes < LARGE_REQUEST {
            while !rest.is_empty() {
                let mut take = 0;
                let mut size = 0;
                while take < rest.len() && (take == 0 || size + rest[take].size <= SMALL_REQUEST) {
                    size += rest[take].size;
                    take += 1;
                }
                let tail = rest.split_off(take);
                send(&pc, &config, &topic, partition, rest).await;
                rest = tail;
            }
        } else {
            send(&pc, &config, &topic, partition, rest).await;
        }
    }
}

/// Sends one batch, retrying with backoff until the broker takes it; then resolves its acks.
async fn send(
    pc: &PartitionClient,
    config: &Config,
    topic: &str,
    partition: i32,
    batch: Vec<Pending>,
) {
    let (records, acks): (Vec<Record>, Vec<_>) =
        batch.into_iter().map(|p| (p.record, p.ack)).unzip();
    let mut backoff = Duration::from_millis(100);
    loop {
        match pc.produce(records.clone(), config.compression).await {
            Ok(_) => {
                for ack in acks {
                    let _ = ack.send(Ok(()));
                }
                return;
            }
            Err(e) => {
                tracing::error!(
                    topic,
                    partition,
                    records = records.len(),
                    error = %e,
                    retry_in = ?backoff,
                    "produce failed; retrying"
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
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
