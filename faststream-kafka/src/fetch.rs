//! Reading one partition: Fetch and ListOffsets on our own connection to its leader, and the
//! record batches decoded here ([`crate::records`]), so that no batch another client wrote can
//! wedge the partition (every codec, transactions, unreadable batches confined).
//!
//! Errors are classified as Kafka's Java consumer does: a lost connection, a moved leader or an
//! unknown partition is retried after finding the leader again; `OFFSET_OUT_OF_RANGE` resets the
//! position; anything else (authorization, an unsupported version) stops the partition.

use std::sync::Arc;

use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{
    BrokerId, FetchRequest, ListOffsetsRequest, MetadataRequest, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use crate::config::Config;
use crate::protocol::{ms, Conn, ConnError};
use crate::records::{self, Aborted, Decoded, Source};

/// Why a request about one partition failed.
#[derive(Debug)]
pub(crate) enum FetchError {
    /// Worth retrying once the leader was found again (connection lost, leader moved, the
    /// partition not known yet).
    Retriable(String),
    /// The position is outside the partition's log.
    OffsetOutOfRange,
    /// Retrying cannot help (not authorized, unsupported): the partition stops.
    Fatal(String),
}

impl std::fmt::Display for FetchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FetchError::Retriable(e) | FetchError::Fatal(e) => f.write_str(e),
            FetchError::OffsetOutOfRange => f.write_str("offset out of range"),
        }
    }
}

impl From<ConnError> for FetchError {
    fn from(e: ConnError) -> Self {
        match e {
            ConnError::Unsupported { .. } => FetchError::Fatal(e.to_string()),
            _ => FetchError::Retriable(e.to_string()),
        }
    }
}

/// Classifies a partition-level error code.
fn partition_error(code: i16, what: &str) -> Result<(), FetchError> {
    let Some(err) = ResponseError::try_from_code(code) else {
        return Ok(());
    };
    Err(match err {
        ResponseError::OffsetOutOfRange => FetchError::OffsetOutOfRange,
        ResponseError::TopicAuthorizationFailed
        | ResponseError::ClusterAuthorizationFailed
        | ResponseError::UnsupportedVersion
        | ResponseError::UnsupportedCompressionType
        | ResponseError::InvalidRequest => FetchError::Fatal(format!("{what}: {err}")),
        // Leader moves, unknown or offline partitions, storage errors, throttling, ...
        _ => FetchError::Retriable(format!("{what}: {err}")),
    })
}

/// One fetch's result.
#[derive(Debug)]
pub(crate) struct Fetch {
    pub(crate) decoded: Decoded,
    /// The end of what a `read_committed` consumer can read (last stable offset).
    pub(crate) end: i64,
}

/// Reads one partition from its leader.
#[derive(Debug)]
pub(crate) struct PartitionReader {
    config: Arc<Config>,
    topic: Arc<str>,
    partition: i32,
    conn: LeaderConn,
    /// Per-partition fetch size; grows when a single batch does not fit (brokers older than
    /// KIP-74 cut it), back to the configured size after.
    max_bytes: i32,
}

/// Largest fetch size grown to for one oversized batch.
const MAX_GROWN_FETCH: i32 = 256 * 1024 * 1024;

impl PartitionReader {
    pub(crate) fn new(config: Arc<Config>, topic: Arc<str>, partition: i32) -> Self {
        let max_bytes = config.fetch_max_bytes;
        Self {
            config,
            topic,
            partition,
            conn: LeaderConn::default(),
            max_bytes,
        }
    }

    /// Topic and partition read.
    pub(crate) fn id(&self) -> (Arc<str>, i32) {
        (self.topic.clone(), self.partition)
    }

    fn what(&self) -> String {
        format!("partition {} of topic {:?}", self.partition, self.topic)
    }

    async fn conn(&mut self) -> Result<&mut Conn, FetchError> {
        self.conn
            .get(&self.config, &self.topic, self.partition)
            .await
    }

    /// Drops the connection after an error that says the leader may have moved.
    fn check<T>(&mut self, res: Result<T, FetchError>) -> Result<T, FetchError> {
        if matches!(res, Err(FetchError::Retriable(_))) {
            self.conn.forget();
        }
        res
    }

    /// Fetches and decodes what follows `offset` (waiting up to `fetch_max_wait` for data).
    pub(crate) async fn fetch(&mut self, offset: i64) -> Result<Fetch, FetchError> {
        let res = self.try_fetch(offset).await;
        self.check(res)
    }

    async fn try_fetch(&mut self, offset: i64) -> Result<Fetch, FetchError> {
        let config = self.config.clone();
        let what = self.what();
        let max_bytes = self.max_bytes;
        let topic = self.topic.clone();
        let partition = self.partition;
        let conn = self.conn().await?;
        // Up to v12: later versions name topics by id.
        let version = conn.version::<FetchRequest>(12)?;
        let mut part = FetchPartition::default();
        part.partition = partition;
        part.fetch_offset = offset;
        part.partition_max_bytes = max_bytes;
        part.current_leader_epoch = -1;
        part.last_fetched_epoch = -1;
        part.log_start_offset = -1;
        let mut t = FetchTopic::default();
        t.topic = TopicName(StrBytes::from_string(topic.to_string()));
        t.partitions = vec![part];
        let mut req = FetchRequest::default();
        req.replica_id = BrokerId(-1);
        req.max_wait_ms = ms(config.fetch_max_wait).max(1);
        req.min_bytes = 1;
        req.max_bytes = max_bytes;
        req.isolation_level = 1;
        req.session_id = 0;
        req.session_epoch = -1;
        req.topics = vec![t];
        let limit = config.request_timeout + config.fetch_max_wait;
        let resp = conn.send_within(&req, version, limit).await?;
        partition_error(resp.error_code, &what)?;
        let data = resp
            .responses
            .into_iter()
            .filter(|t| *t.topic == *topic)
            .flat_map(|t| t.partitions)
            .find(|p| p.partition_index == partition);
        let Some(data) = data else {
            // A fetch that found nothing may be answered with no partitions at all (Tansu
            // 0.6.0 does; Apache Kafka lists the partition with no records). Nothing to read.
            return Ok(Fetch {
                decoded: Decoded::default(),
                end: -1,
            });
        };
        partition_error(data.error_code, &what)?;
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
        let records = data.records.unwrap_or_default();
        let fetched = records.len();
        let src = Source {
            topic: &topic,
            partition,
            from: offset,
            aborted: &aborted,
            max_decompressed: (config.fetch_max_bytes.max(max_bytes) as usize).saturating_mul(64),
        };
        let decoded = records::decode(&src, records);
        if decoded.next.is_none() && fetched > 0 {
            // Not even one whole batch: ask for more next time.
            self.max_bytes = self
                .max_bytes
                .saturating_mul(2)
                .clamp(fetched as i32 + 1, MAX_GROWN_FETCH);
            tracing::debug!(
                topic = &*topic,
                partition,
                offset,
                fetch_bytes = self.max_bytes,
                "the next record batch is larger than the fetch size; fetching more"
            );
        } else if decoded.next.is_some() {
            self.max_bytes = config.fetch_max_bytes;
        }
        Ok(Fetch { decoded, end })
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
            -1 => Err(FetchError::Retriable(format!(
                "{what}: the fetch answer has no end offset"
            ))),
            end => Ok(end),
        }
    }

    /// ListOffsets for `timestamp` (-2: the first offset); -1 when no message is that late.
    async fn list_offset(&mut self, timestamp: i64) -> Result<i64, FetchError> {
        let what = self.what();
        let topic = self.topic.clone();
        let partition = self.partition;
        let conn = self.conn().await?;
        let version = conn.version::<ListOffsetsRequest>(7)?;
        let mut p = ListOffsetsPartition::default();
        p.partition_index = partition;
        p.timestamp = timestamp;
        p.current_leader_epoch = -1;
        let mut t = ListOffsetsTopic::default();
        t.name = TopicName(StrBytes::from_string(topic.to_string()));
        t.partitions = vec![p];
        let mut req = ListOffsetsRequest::default();
        req.replica_id = BrokerId(-1);
        req.isolation_level = 1;
        req.topics = vec![t];
        let resp = conn.send(&req, version).await?;
        let p = resp
            .topics
            .into_iter()
            .flat_map(|t| t.partitions)
            .find(|p| p.partition_index == partition)
            .ok_or_else(|| {
                FetchError::Retriable(format!("{what}: not in the ListOffsets answer"))
            })?;
        partition_error(p.error_code, &what)?;
        Ok(p.offset)
    }
}

/// A connection to one partition's leader, for reading or writing it: kept while it works,
/// found again through metadata after any failure.
#[derive(Debug, Default)]
pub(crate) struct LeaderConn(Option<Conn>);

impl LeaderConn {
    /// The connection, (re)connecting to the leader if there is none or it broke.
    pub(crate) async fn get(
        &mut self,
        config: &Config,
        topic: &str,
        partition: i32,
    ) -> Result<&mut Conn, FetchError> {
        if self.0.as_ref().is_some_and(Conn::is_broken) {
            self.0 = None;
        }
        if self.0.is_none() {
            self.0 = Some(leader(config, topic, partition).await?);
        }
        Ok(self.0.as_mut().expect("connected above"))
    }

    /// Drops the connection after an error that says the leader may have moved.
    pub(crate) fn forget(&mut self) {
        self.0 = None;
    }
}

/// Connects to the leader of `topic`'s `partition`, found through any bootstrap broker.
pub(crate) async fn leader(
    config: &Config,
    topic: &str,
    partition: i32,
) -> Result<Conn, FetchError> {
    let timeout = config.connect_timeout.min(config.request_timeout);
    let mut last = None;
    for addr in &config.brokers {
        let mut conn = match Conn::connect(addr, config, timeout).await {
            Ok(c) => c,
            Err(e) => {
                last = Some(FetchError::from(e));
                continue;
            }
        };
        let version = conn.version::<MetadataRequest>(12)?;
        let mut t = MetadataRequestTopic::default();
        t.name = Some(TopicName(StrBytes::from_string(topic.to_owned())));
        let mut req = MetadataRequest::default();
        req.topics = Some(vec![t]);
        req.allow_auto_topic_creation = false;
        let resp = match conn.send(&req, version).await {
            Ok(r) => r,
            Err(e) => {
                last = Some(e.into());
                continue;
            }
        };
        let what = format!("partition {partition} of topic {topic:?}");
        let t = resp
            .topics
            .iter()
            .find(|t| t.name.as_deref().map(|n| &**n) == Some(topic))
            .ok_or_else(|| FetchError::Retriable(format!("{what}: topic not in metadata")))?;
        partition_error(t.error_code, &what)?;
        let p = t
            .partitions
            .iter()
            .find(|p| p.partition_index == partition)
            .ok_or_else(|| FetchError::Retriable(format!("{what}: partition not in metadata")))?;
        partition_error(p.error_code, &what)?;
        let b = resp
            .brokers
            .iter()
            .find(|b| b.node_id == p.leader_id)
            .ok_or_else(|| {
                FetchError::Retriable(format!("{what}: no leader (broker {})", p.leader_id.0))
            })?;
        let leader = format!("{}:{}", b.host, b.port);
        if leader == *addr {
            return Ok(conn);
        }
        return Conn::connect(&leader, config, timeout)
            .await
            .map_err(Into::into);
    }
    Err(last.unwrap_or_else(|| FetchError::Fatal("no bootstrap address".into())))
}
