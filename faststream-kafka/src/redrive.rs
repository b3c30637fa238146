//! Dead-letter redrive: moving dead letters back to the topics they came from, once the cause is
//! fixed ([`KafkaBroker::redrive`](crate::KafkaBroker::redrive)).
//!
//! Each partition of the dead-letter topic is read from where the last redrive with the same
//! selection stopped (its progress is committed for a consumer group of its own, outside any
//! member: `faststream-redrive.<dead-letter topic>.<selection>`) up to the end the partition had
//! when the redrive began, so dead letters of messages that fail again are left for the next
//! redrive instead of going round. The selected dead letters are published to their original
//! topic and partition (key, payload and the original headers; the `x-faststream-*` failure
//! headers are replaced by `x-faststream-redriven-from`) in chunks of at most 256 KiB or 500
//! messages, and once the broker acknowledged a chunk the progress is committed: a redrive
//! stopped at any moment and run again moves every selected dead letter, at most the last
//! chunk twice.

use std::collections::BTreeMap;
use std::sync::Arc;

use faststream_core::{dlq_header, Message, OutgoingMessage};

use crate::backoff::Backoff;
use crate::config::Config;
use crate::error::KafkaError;
use crate::fetch::{Fetch, FetchError, PartitionReader};
use crate::group::{commit_offsets, fetch_offsets, find_coordinator};
use crate::produce::Producers;
use crate::records::Fetched;

/// The header a redriven message carries: `dead-letter topic/partition/offset` it came from.
pub const REDRIVEN_FROM: &str = "x-faststream-redriven-from";

/// Which dead letters a redrive moves: all, or those of one key, one handler, or dead-lettered
/// within a time range (their `x-faststream-failed-at` header). Conditions add up.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Redrive {
    key: Option<Vec<u8>>,
    handler: Option<String>,
    failed: Option<(i64, i64)>,
}

impl Redrive {
    /// Every dead letter.
    pub fn all() -> Self {
        Self::default()
    }

    /// Only dead letters with this record key.
    pub fn key(mut self, key: impl Into<Vec<u8>>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Only dead letters of this handler (its path, or its function name).
    pub fn handler(mut self, handler: impl Into<String>) -> Self {
        self.handler = Some(handler.into());
        self
    }

    /// Only dead letters that failed from `from_ms` (inclusive) to `until_ms` (exclusive),
    /// milliseconds since the Unix epoch.
    pub fn failed_between(mut self, from_ms: i64, until_ms: i64) -> Self {
        self.failed = Some((from_ms, until_ms));
        self
    }

    fn selects(&self, msg: &Message) -> bool {
        let key_ok = self
            .key
            .as_deref()
            .is_none_or(|k| msg.key.as_deref() == Some(k));
        let handler_ok = self.handler.as_deref().is_none_or(|h| {
            msg.headers
                .get_str(dlq_header::HANDLER)
                .is_some_and(|path| path == h || path.rsplit("::").next() == Some(h))
        });
        let failed_ok = self.failed.is_none_or(|(from, until)| {
            msg.headers
                .get_str(dlq_header::FAILED_AT)
                .and_then(|t| t.parse::<i64>().ok())
                .or(msg.timestamp)
                .is_some_and(|t| (from..until).contains(&t))
        });
        key_ok && handler_ok && failed_ok
    }

    /// The name of the group that keeps this selection's progress on `dlq`.
    fn group(&self, dlq: &str) -> String {
        let mut name = format!("faststream-redrive.{dlq}");
        if let Some(key) = &self.key {
            name.push_str(&format!(".key={}", String::from_utf8_lossy(key)));
        }
        if let Some(handler) = &self.handler {
            name.push_str(&format!(".handler={handler}"));
        }
        if let Some((from, until)) = self.failed {
            name.push_str(&format!(".failed={from}-{until}"));
        }
        name
    }
}

/// What a redrive did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Redriven {
    /// Dead letters published back to their original topic.
    pub moved: u64,
    /// Dead letters the selection left where they are.
    pub not_selected: u64,
    /// Dead letters that cannot go back: no original topic header, or the raw record batch
    /// of records that could not be read (kind `fetch`); read them from the dead-letter topic.
    pub not_movable: u64,
}

/// Moves the selected dead letters of `dlq` back (see the module docs).
pub(crate) async fn redrive(
    config: &Arc<Config>,
    producers: &Producers,
    dlq: &str,
    selection: &Redrive,
) -> Result<Redriven, KafkaError> {
    let failed = |reason: String| KafkaError::Publish {
        topic: dlq.to_owned(),
        reason: format!("redrive: {reason}"),
    };
    let partitions = producers.partition_count(dlq).await?;
    let group = selection.group(dlq);
    let assigned: Vec<(String, i32)> = (0..partitions).map(|p| (dlq.to_owned(), p)).collect();
    let mut coordinator = find_coordinator(config, &group)
        .await
        .map_err(|e| failed(e.to_string()))?;
    let patience = config.transaction_timeout + config.request_timeout;
    let committed = fetch_offsets(&mut coordinator, &group, &assigned, patience)
        .await
        .map_err(|e| failed(e.to_string()))?;
    let mut report = Redriven::default();
    let name: Arc<str> = Arc::from(dlq);
    for partition in 0..partitions {
        let mut reader = PartitionReader::new(producers.cluster().clone(), name.clone(), partition);
        let mut offset = match committed.get(&(dlq.to_owned(), partition)) {
            Some(&o) if o >= 0 => o,
            _ => first_or_end(&mut reader, true).await?,
        };
        let end = first_or_end(&mut reader, false).await?;
        tracing::info!(dlq, partition, from = offset, end, group, "redriving");
        while offset < end {
            let fetch = fetch(&mut reader, offset).await?;
            let fetched_to = fetch.records.next().unwrap_or(offset).max(offset).min(end);
            let mut chunk = Chunk::default();
            for item in fetch.records.all().items {
                let at = item.last_offset();
                if at >= end {
                    break;
                }
                match item {
                    Fetched::Record(msg) if !selection.selects(&msg) => report.not_selected += 1,
                    Fetched::Record(msg) => match back(msg) {
                        Some(out) => {
                            chunk.bytes += out.approximate_size();
                            chunk.outputs.push(out);
                        }
                        None => report.not_movable += 1,
                    },
                    Fetched::Unreadable { .. } => report.not_movable += 1,
                    Fetched::Passed { .. } => {}
                }
                if chunk.is_full() {
                    report.moved += chunk.send(producers).await.map_err(failed)?;
                    let progress = BTreeMap::from([(dlq, vec![(partition, at + 1)])]);
                    commit(config, &mut coordinator, &group, &progress).await?;
                }
            }
            report.moved += chunk.send(producers).await.map_err(failed)?;
            // Out: the next redrive of this selection starts after it.
            let progress = BTreeMap::from([(dlq, vec![(partition, fetched_to)])]);
            commit(config, &mut coordinator, &group, &progress).await?;
            offset = fetched_to;
        }
    }
    tracing::info!(dlq, group, ?report, "redrive done");
    Ok(report)
}

/// Dead letters published and committed together: at most this much is published twice when
/// a redrive is stopped between publishing and committing.
#[derive(Default)]
struct Chunk {
    outputs: Vec<OutgoingMessage>,
    bytes: usize,
}

impl Chunk {
    const MAX_BYTES: usize = 256 * 1024;
    const MAX_MESSAGES: usize = 500;

    fn is_full(&self) -> bool {
        self.bytes >= Self::MAX_BYTES || self.outputs.len() >= Self::MAX_MESSAGES
    }

    /// Publishes the chunk and waits for the broker's acknowledgement; how many it held.
    async fn send(&mut self, producers: &Producers) -> Result<u64, String> {
        self.bytes = 0;
        let outputs = std::mem::take(&mut self.outputs);
        let count = outputs.len() as u64;
        if count > 0 {
            producers
                .enqueue(outputs)
                .await
                .map_err(|e| e.to_string())?
                .delivered()
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(count)
    }
}

/// The original message of a dead letter, to publish back; `None` without the original topic.
fn back(msg: Message) -> Option<OutgoingMessage> {
    let mut headers = msg.headers;
    let topic = headers.get_str(dlq_header::ORIGINAL_TOPIC)?.to_owned();
    let partition = headers
        .get_str(dlq_header::ORIGINAL_PARTITION)
        .and_then(|p| p.parse().ok());
    for name in [
        dlq_header::ORIGINAL_TOPIC,
        dlq_header::ORIGINAL_PARTITION,
        dlq_header::ORIGINAL_OFFSET,
        dlq_header::ORIGINAL_LAST_OFFSET,
        dlq_header::ERROR_KIND,
        dlq_header::ERROR,
        dlq_header::HANDLER,
        dlq_header::ATTEMPTS,
        dlq_header::FAILED_AT,
    ] {
        headers.remove(name);
    }
    headers.insert(
        REDRIVEN_FROM,
        format!("{}/{}/{}", msg.topic, msg.partition, msg.offset),
    );
    // A tombstone (no payload) goes back as one.
    let mut out = OutgoingMessage::new(&topic, bytes::Bytes::new());
    out.payload = msg.payload;
    out.key = msg.key;
    out.headers = headers;
    out.partition = partition;
    Some(out)
}

/// Commits a redrive's progress, finding the coordinator again while it moves.
async fn commit(
    config: &Config,
    coordinator: &mut crate::protocol::Conn,
    group: &str,
    progress: &BTreeMap<&str, Vec<(i32, i64)>>,
) -> Result<(), KafkaError> {
    let mut backoff = Backoff::requests();
    for _ in 0..10 {
        let refused = match commit_offsets(coordinator, group, (-1, "", None), progress).await {
            Ok(refused) if refused.is_empty() => return Ok(()),
            Ok(refused) => format!("{refused:?}"),
            Err(e) => e.to_string(),
        };
        tracing::warn!(group, refused, retry_in = ?backoff.wait(), "committing the redrive's progress failed; retrying");
        backoff.sleep().await;
        if coordinator.is_broken() {
            if let Ok(conn) = find_coordinator(config, group).await {
                *coordinator = conn;
            }
        }
    }
    Err(KafkaError::GroupRefused {
        group: group.to_owned(),
        reason: "the redrive's progress could not be committed (is a redrive of the same selection running elsewhere?)".into(),
    })
}

/// The partition's first offset, or its end (retrying a few times).
async fn first_or_end(reader: &mut PartitionReader, first: bool) -> Result<i64, KafkaError> {
    let mut retry = Retry::default();
    loop {
        match reader.offset(first).await {
            Ok(o) => return Ok(o),
            Err(e) => retry.after(e).await?,
        }
    }
}

/// What follows `offset` (retrying a few times).
async fn fetch(reader: &mut PartitionReader, offset: i64) -> Result<Fetch, KafkaError> {
    let mut retry = Retry::default();
    loop {
        match reader.fetch(offset).await {
            Ok(f) => return Ok(f),
            Err(e) => retry.after(e).await?,
        }
    }
}

/// Up to ten retries of a retriable read, with backoff.
#[derive(Default)]
struct Retry {
    tries: u32,
    backoff: Option<Backoff>,
}

impl Retry {
    async fn after(&mut self, e: FetchError) -> Result<(), KafkaError> {
        match e {
            FetchError::Retriable(e) if self.tries < 10 => {
                self.tries += 1;
                let backoff = self.backoff.get_or_insert_with(Backoff::requests);
                tracing::warn!(error = %e, retry_in = ?backoff.wait(), "redrive read failed; retrying");
                backoff.sleep().await;
                Ok(())
            }
            e => Err(KafkaError::Client {
                context: "reading the dead-letter topic".into(),
                source: e.to_string().into(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dead_letter(key: &str, handler: &str, failed_at: i64) -> Message {
        let mut msg = Message::new("orders.dlq", "payload");
        msg.key = Some(bytes::Bytes::copy_from_slice(key.as_bytes()));
        msg.headers.insert(dlq_header::ORIGINAL_TOPIC, "orders");
        msg.headers.insert(dlq_header::ORIGINAL_PARTITION, "2");
        msg.headers.insert(dlq_header::HANDLER, handler.to_owned());
        msg.headers
            .insert(dlq_header::FAILED_AT, failed_at.to_string());
        msg.headers.insert("trace", "kept");
        msg
    }

    #[test]
    fn selections_add_up() {
        let msg = dead_letter("k1", "svc::bill", 1_000);
        assert!(Redrive::all().selects(&msg));
        assert!(Redrive::all().key("k1").selects(&msg));
        assert!(!Redrive::all().key("k2").selects(&msg));
        assert!(Redrive::all().handler("bill").selects(&msg));
        assert!(Redrive::all().handler("svc::bill").selects(&msg));
        assert!(!Redrive::all().handler("ship").selects(&msg));
        assert!(Redrive::all().failed_between(1_000, 1_001).selects(&msg));
        assert!(!Redrive::all().failed_between(0, 1_000).selects(&msg));
        assert!(!Redrive::all().key("k1").handler("ship").selects(&msg));
        assert_ne!(
            Redrive::all().group("d"),
            Redrive::all().key("k1").group("d"),
            "selections keep their own progress"
        );
    }

    #[test]
    fn a_dead_letter_goes_back_with_its_own_headers_only() {
        let out = back(dead_letter("k1", "svc::bill", 1_000)).unwrap();
        assert_eq!(&*out.topic, "orders");
        assert_eq!(out.partition, Some(2));
        assert_eq!(out.key.as_deref(), Some(&b"k1"[..]));
        assert_eq!(out.headers.get_str("trace"), Some("kept"));
        assert_eq!(out.headers.get_str(REDRIVEN_FROM), Some("orders.dlq/0/0"));
        assert!(out
            .headers
            .iter()
            .all(|(name, _)| !name.starts_with("x-faststream-original")
                && name != dlq_header::ERROR
                && name != dlq_header::FAILED_AT));
        let mut no_origin = Message::new("orders.dlq", "x");
        no_origin.headers.insert("a", "b");
        assert!(back(no_origin).is_none());
    }
}
