//! Reading one partition: Fetch and ListOffsets through the link to its leader (one request
//! per broker for all the partitions it leads, see [`crate::link`]), and the record batches
//! decoded here ([`crate::records`]), on the reader's own task, so that no batch another
//! client wrote can wedge the partition (every codec, transactions, unreadable batches
//! confined).
//!
//! Errors are classified as Kafka's Java consumer does: a lost connection, a moved leader or an
//! unknown partition is retried after finding the leader again; `OFFSET_OUT_OF_RANGE` resets the
//! position; anything else (authorization, an unsupported version) stops the partition.

use std::sync::Arc;

use crate::cluster::Cluster;
use crate::error::Cause;
pub(crate) use crate::error::{partition_error, FetchError};
use crate::link::Link;
use crate::records::{Aborted, Records, Source};
use crate::session::Position;

/// One fetch's result.
#[derive(Debug)]
pub(crate) struct Fetch {
    /// The whole batches fetched, decoded as they are read.
    pub(crate) records: Records,
    /// Bytes of records the broker returned.
    pub(crate) bytes: usize,
    /// The end of what a `read_committed` consumer can read (last stable offset).
    pub(crate) end: i64,
}

/// Reads one partition from its leader.
#[derive(Debug)]
pub(crate) struct PartitionReader {
    cluster: Arc<Cluster>,
    topic: Arc<str>,
    partition: i32,
    /// Per-partition fetch size; grows when a single batch does not fit (brokers older than
    /// KIP-74 cut it), back to the configured size after.
    max_bytes: i32,
    /// Set for a reader that validates its position (see [`PartitionReader::validating`]):
    /// where the last fetch ended, and the leader epoch of its last batch.
    read_to: Option<(i64, Option<i32>)>,
    validating: bool,
}

/// Largest fetch size grown to for one oversized batch.
const MAX_GROWN_FETCH: i32 = 256 * 1024 * 1024;

impl PartitionReader {
    pub(crate) fn new(cluster: Arc<Cluster>, topic: Arc<str>, partition: i32) -> Self {
        let max_bytes = cluster.config().fetch_max_bytes;
        Self {
            cluster,
            topic,
            partition,
            max_bytes,
            read_to: None,
            validating: false,
        }
    }

    /// A reader that sends, with each fetch that goes on where the last one ended, the leader
    /// epoch of the last batch it read (KIP-320): a leader whose log diverged from that (an
    /// unclean leader election truncated what was read) answers with where its log is
    /// consistent, and the fetch fails with [`FetchError::Truncated`] instead of reading past
    /// the divergence or being reset by `auto_offset_reset`. For the partition consumers.
    pub(crate) fn validating(mut self) -> Self {
        self.validating = true;
        self
    }

    /// The service's budget of fetched bytes (see [`Cluster::fetch_budget`]) and its size.
    pub(crate) fn budget(&self) -> (Arc<tokio::sync::Semaphore>, usize) {
        (
            self.cluster.fetch_budget().clone(),
            self.cluster.config().max_fetched_bytes,
        )
    }

    /// Topic and partition read.
    pub(crate) fn id(&self) -> (Arc<str>, i32) {
        (self.topic.clone(), self.partition)
    }

    fn what(&self) -> String {
        format!("partition {} of topic {:?}", self.partition, self.topic)
    }

    /// The link to the partition's leader, and the leader's epoch.
    async fn link(&self) -> Result<(Link, i32), FetchError> {
        let leader = self.cluster.leader(&self.topic, self.partition).await?;
        Ok((self.cluster.link(&leader.addr), leader.epoch))
    }

    /// Forgets the leader after an error that says it may have moved.
    fn check<T>(&mut self, res: Result<T, FetchError>) -> Result<T, FetchError> {
        if matches!(res, Err(FetchError::Retriable(_))) {
            self.cluster.forget(&self.topic, self.partition);
        }
        res
    }

    /// Fetches and decodes what follows `offset` (waiting up to `fetch_max_wait` for data).
    pub(crate) async fn fetch(&mut self, offset: i64) -> Result<Fetch, FetchError> {
        let res = self.try_fetch(offset).await;
        self.check(res)
    }

    async fn try_fetch(&mut self, offset: i64) -> Result<Fetch, FetchError> {
        let config = self.cluster.config().clone();
        let max_bytes = self.max_bytes;
        let topic = self.topic.clone();
        let partition = self.partition;
        let (link, epoch) = self.link().await?;
        // The epoch of what was read, when this fetch goes on from there.
        let last_epoch = match self.read_to {
            Some((to, epoch)) if to == offset => epoch.unwrap_or(-1),
            _ => -1,
        };
        let data = link
            .fetch(
                &topic,
                partition,
                Position {
                    offset,
                    max_bytes,
                    epoch,
                    last_epoch,
                },
            )
            .await?;
        let Some(data) = data else {
            // A fetch that found nothing may be answered with no partitions at all (Tansu
            // 0.6.0 does; Apache Kafka lists the partition with no records). Nothing to read.
            return Ok(Fetch {
                records: Records::new(
                    Source {
                        topic,
                        partition,
                        from: offset,
                        aborted: Vec::new(),
                        max_decompressed: 0,
                    },
                    bytes::Bytes::new(),
                ),
                bytes: 0,
                end: -1,
            });
        };
        partition_error(data.error_code, || self.what())?;
        let diverged = &data.diverging_epoch;
        if last_epoch >= 0 && diverged.epoch >= 0 && diverged.end_offset >= 0 {
            self.read_to = None;
            return Err(FetchError::Truncated {
                epoch: diverged.epoch,
                end_offset: diverged.end_offset,
            });
        }
        let end = if data.last_stable_offset >= 0 {
            data.last_stable_offset
        } else {
            data.high_watermark
        };
        let mut aborted: Vec<Aborted> = data
            .aborted_transactions
            .unwrap_or_default()
            .into_iter()
            .map(|a| Aborted {
                producer_id: a.producer_id.0,
                first_offset: a.first_offset,
            })
            .collect();
        aborted.sort_by_key(|a| a.first_offset);
        let data = data.records.unwrap_or_default();
        let fetched = data.len();
        let src = Source {
            topic,
            partition,
            from: offset,
            aborted,
            max_decompressed: (config.fetch_max_bytes.max(max_bytes) as usize).saturating_mul(64),
        };
        let records = Records::new(src, data);
        if let Some(next) = records.next().filter(|_| self.validating) {
            self.read_to = Some((next, records.last_epoch()));
        }
        if records.next().is_none() && fetched > 0 {
            // Not even one whole batch: ask for more next time.
            self.max_bytes = self
                .max_bytes
                .saturating_mul(2)
                .clamp(fetched as i32 + 1, MAX_GROWN_FETCH);
            tracing::debug!(
                topic = &*self.topic,
                partition,
                offset,
                fetch_bytes = self.max_bytes,
                "the next record batch is larger than the fetch size; fetching more"
            );
        } else if records.next().is_some() {
            self.max_bytes = config.fetch_max_bytes;
        }
        Ok(Fetch {
            records,
            bytes: fetched,
            end,
        })
    }

    /// The partition's first offset (`earliest`) or the end a `read_committed` consumer can
    /// read to (`latest`, from a fetch: some Kafka-compatible brokers answer
    /// ListOffsets(latest) wrongly after multi-record batches).
    pub(crate) async fn offset(&mut self, earliest: bool) -> Result<i64, FetchError> {
        let res = self.try_offset(earliest).await;
        self.check(res)
    }

    /// The offset of the first message with a timestamp at or after `timestamp` (ms), or the
    /// end a `read_committed` consumer can read to if there is none.
    pub(crate) async fn offset_at(&mut self, timestamp: i64) -> Result<i64, FetchError> {
        let res = self.list_offset(timestamp).await;
        match self.check(res)? {
            -1 => self.offset(false).await,
            found => Ok(found),
        }
    }

    async fn try_offset(&mut self, earliest: bool) -> Result<i64, FetchError> {
        let first = self.list_offset(-2).await?;
        if earliest {
            return Ok(first);
        }
        let what = self.what();
        let saved = std::mem::replace(&mut self.max_bytes, 1);
        let res = self.try_fetch(first).await;
        self.max_bytes = saved;
        match res?.end {
            -1 => Err(FetchError::Retriable(Cause::NoEnd { what })),
            end => Ok(end),
        }
    }

    /// ListOffsets for `timestamp` (-2: the first offset); -1 when no message is that late.
    async fn list_offset(&mut self, timestamp: i64) -> Result<i64, FetchError> {
        let (link, _) = self.link().await?;
        let p = link
            .list_offset(&self.topic, self.partition, timestamp)
            .await?;
        partition_error(p.error_code, || self.what())?;
        Ok(p.offset)
    }
}
