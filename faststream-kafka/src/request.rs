//! Request/reply from Rust: publish with `reply_to` and `correlation_id`, await the answer on
//! the broker handle's reply topic.
//!
//! One reader per partition of the reply topic (started on the first request, from the end of
//! the log) hands each reply to the request waiting for its correlation id; replies nobody waits
//! for (late ones, or another instance's when several share the topic) are dropped.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use faststream_core::{header, Message, OutgoingMessage};
use tokio::sync::oneshot;

use crate::backoff::Backoff;
use crate::cluster::Cluster;
use crate::error::KafkaError;
use crate::fetch::{FetchError, PartitionReader};
use crate::produce::lock;
use crate::records::Fetched;
use tokio_util::task::AbortOnDropHandle;

type Waiters = Arc<Mutex<HashMap<String, oneshot::Sender<Message>>>>;

/// The reply side of one broker handle.
#[derive(Debug)]
pub(crate) struct Replies {
    topic: String,
    waiters: Waiters,
    _readers: Vec<AbortOnDropHandle<()>>,
}

impl Replies {
    /// Starts reading every partition of `topic` from its current end.
    pub(crate) async fn start(
        cluster: Arc<Cluster>,
        topic: String,
        partitions: i32,
    ) -> Result<Self, KafkaError> {
        let waiters: Waiters = Arc::default();
        let mut readers = Vec::new();
        let name: Arc<str> = Arc::from(topic.as_str());
        for partition in 0..partitions {
            let mut reader = PartitionReader::new(cluster.clone(), name.clone(), partition);
            let start = start_offset(&mut reader, &topic, partition).await?;
            readers.push(AbortOnDropHandle::new(tokio::spawn(read_replies(
                reader,
                start,
                waiters.clone(),
            ))));
        }
        Ok(Self {
            topic,
            waiters,
            _readers: readers,
        })
    }

    /// Registers a request; returns its message headers' values and the reply's receiver.
    pub(crate) fn register(
        &self,
        msg: &mut OutgoingMessage,
    ) -> (String, oneshot::Receiver<Message>) {
        let id = msg
            .headers
            .get_str(header::CORRELATION_ID)
            .map(str::to_owned)
            .unwrap_or_else(faststream_core::new_correlation_id);
        msg.headers.insert(header::CORRELATION_ID, id.clone());
        msg.headers.insert(header::REPLY_TO, self.topic.clone());
        let (tx, rx) = oneshot::channel();
        lock(&self.waiters).insert(id.clone(), tx);
        (id, rx)
    }

    /// Forgets a request that timed out or failed.
    pub(crate) fn forget(&self, id: &str) {
        lock(&self.waiters).remove(id);
    }

    pub(crate) fn topic(&self) -> &str {
        &self.topic
    }
}

async fn start_offset(
    reader: &mut PartitionReader,
    topic: &str,
    partition: i32,
) -> Result<i64, KafkaError> {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
    for _ in 0..20 {
        match reader.offset(false).await {
            Ok(o) => return Ok(o),
            Err(FetchError::Retriable(e)) => {
                tracing::debug!(topic, partition, error = %e, "reply topic not readable yet; retrying");
                backoff.sleep().await;
            }
            Err(e) => {
                return Err(KafkaError::Publish {
                    topic: topic.to_owned(),
                    reason: format!("cannot read the reply topic: {e}"),
                })
            }
        }
    }
    Err(KafkaError::Publish {
        topic: topic.to_owned(),
        reason: "the reply topic did not become readable".into(),
    })
}

async fn read_replies(mut reader: PartitionReader, mut offset: i64, waiters: Waiters) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
    loop {
        match reader.fetch(offset).await {
            Ok(fetch) => {
                backoff.reset();
                if let Some(next) = fetch.records.next() {
                    offset = offset.max(next);
                }
                for item in fetch.records.all().items {
                    if let Fetched::Record(msg) = item {
                        let id = msg.correlation_id().map(str::to_owned);
                        if let Some(tx) = id.and_then(|id| lock(&waiters).remove(&id)) {
                            let _ = tx.send(msg);
                        }
                    }
                }
            }
            Err(FetchError::OffsetOutOfRange) => match reader.offset(false).await {
                Ok(o) => offset = o,
                Err(_) => tokio::time::sleep(backoff.wait()).await,
            },
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff.wait(), "reading replies failed; retrying");
                backoff.sleep().await;
            }
        }
    }
}
