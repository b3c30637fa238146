//! The idempotent producer (KIP-98): one producer id and epoch for a broker handle, shared by
//! every partition's producer, and the sequence numbers each partition gives its batches.
//!
//! The leader of a partition remembers the sequence numbers of each producer's last batches
//! there and answers a batch it already wrote as a duplicate instead of writing it again, so
//! a produce retried after its answer was lost lands once. When the leader's view and ours
//! part (a sequence gap after a batch we gave up on, a producer id it has forgotten), the
//! epoch is bumped (KIP-360: InitProducerId with the current id and epoch) and every
//! partition numbers its batches from 0 again, as Kafka's Java producer does.
//!
//! Each partition has one request in flight (see [`crate::produce`]), so a batch is retried
//! with the same producer id, epoch and sequence until it is answered, and order holds.

use kafka_protocol::messages::{InitProducerIdRequest, ProducerId};
use kafka_protocol::ResponseError;

use crate::config::Config;
use crate::protocol::{Conn, ConnError};

/// A producer id with its epoch, as the broker gave it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Producer {
    pub(crate) id: i64,
    pub(crate) epoch: i16,
}

/// Why no producer id could be had.
#[derive(Debug)]
pub(crate) enum IdError {
    /// Transient (no broker reachable, a coordinator loading): worth retrying.
    Retriable(String),
    /// The cluster refuses idempotence (no InitProducerId, not authorized): the message says
    /// how to switch it off.
    Refused(String),
}

impl std::fmt::Display for IdError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IdError::Retriable(e) | IdError::Refused(e) => f.write_str(e),
        }
    }
}

/// The producer id of one broker handle, obtained on first use.
#[derive(Debug, Default)]
pub(crate) struct Identity {
    current: tokio::sync::Mutex<Option<Producer>>,
}

impl Identity {
    /// The producer id in use, asking the cluster for one first if there is none yet.
    pub(crate) async fn current(&self, config: &Config) -> Result<Producer, IdError> {
        let mut current = self.current.lock().await;
        if let Some(p) = *current {
            return Ok(p);
        }
        let p = init(config, None).await?;
        tracing::debug!(
            producer_id = p.id,
            epoch = p.epoch,
            "idempotent producer id"
        );
        *current = Some(p);
        Ok(p)
    }

    /// Moves on from `seen` after a partition's leader refused it (a sequence gap, an unknown
    /// producer id) or a batch sent with it may have been written although we gave up on it:
    /// the epoch is bumped, or a new id obtained where the broker cannot bump (before Kafka
    /// 2.5, or the id expired). If another partition already moved on from `seen`, that id is
    /// returned as it is. Either way every partition's sequence starts at 0 with the result.
    pub(crate) async fn bump(&self, config: &Config, seen: Producer) -> Result<Producer, IdError> {
        let mut current = self.current.lock().await;
        if let Some(p) = *current {
            if p != seen {
                return Ok(p);
            }
        }
        let p = match init(config, Some(seen)).await {
            Ok(p) => p,
            // The broker no longer knows the id (expired) or cannot bump it: start afresh.
            Err(IdError::Retriable(_)) | Err(IdError::Refused(_)) => init(config, None).await?,
        };
        tracing::info!(
            producer_id = p.id,
            epoch = p.epoch,
            previous_id = seen.id,
            previous_epoch = seen.epoch,
            "idempotent producer epoch bumped; sequences restart at 0"
        );
        *current = Some(p);
        Ok(p)
    }
}

/// The sequence number `by` records after `sequence`, wrapping past `i32::MAX` to 0 as the
/// broker does.
pub(crate) fn advance(sequence: i32, by: i32) -> i32 {
    if sequence > i32::MAX - by {
        by - (i32::MAX - sequence) - 1
    } else {
        sequence + by
    }
}

/// Whether a partition's produce error means its leader and we disagree about this producer's
/// sequence or epoch: nothing of the batch was written, and it can go again after a bump.
pub(crate) fn needs_bump(err: ResponseError) -> bool {
    matches!(
        err,
        ResponseError::OutOfOrderSequenceNumber
            | ResponseError::UnknownProducerId
            | ResponseError::InvalidProducerEpoch
    )
}

/// Asks any bootstrap broker for a producer id (`bump`: the next epoch of this one).
async fn init(config: &Config, bump: Option<Producer>) -> Result<Producer, IdError> {
    let mut last = None;
    for addr in &config.brokers {
        match init_at(addr, config, bump).await {
            Ok(p) => return Ok(p),
            Err(e @ IdError::Refused(_)) => return Err(e),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| IdError::Refused("no bootstrap address given".into())))
}

async fn init_at(addr: &str, config: &Config, bump: Option<Producer>) -> Result<Producer, IdError> {
    let timeout = config.connect_timeout.min(config.request_timeout);
    let conn_error = |e: ConnError| match e {
        ConnError::Unsupported { .. } => refused(&e.to_string()),
        e if e.is_fatal() => IdError::Refused(e.to_string()),
        e => IdError::Retriable(e.to_string()),
    };
    let mut conn = Conn::connect(addr, config, timeout)
        .await
        .map_err(conn_error)?;
    // v3 added bumping an epoch (KIP-360); v4 answers PRODUCER_FENCED; later versions are for
    // transactions' own protocol changes.
    let version = conn
        .version::<InitProducerIdRequest>(4)
        .map_err(conn_error)?;
    let mut req = InitProducerIdRequest::default();
    req.transactional_id = None;
    req.transaction_timeout_ms = 60_000;
    match bump {
        Some(p) if version >= 3 => {
            req.producer_id = ProducerId(p.id);
            req.producer_epoch = p.epoch;
        }
        Some(_) => return Err(IdError::Retriable("bumping needs InitProducerId v3".into())),
        None => {
            req.producer_id = ProducerId(-1);
            req.producer_epoch = -1;
        }
    }
    let resp = conn.send(&req, version).await.map_err(conn_error)?;
    let Some(err) = ResponseError::try_from_code(resp.error_code) else {
        return Ok(Producer {
            id: resp.producer_id.0,
            epoch: resp.producer_epoch,
        });
    };
    Err(match err {
        ResponseError::ClusterAuthorizationFailed
        | ResponseError::TransactionalIdAuthorizationFailed
        | ResponseError::UnsupportedVersion
        | ResponseError::UnsupportedForMessageFormat
        | ResponseError::InvalidRequest => refused(&format!("{addr} answered {err}")),
        // A bump the broker cannot make (the id expired, fenced), a coordinator loading or
        // moving, a timeout: retried (a failed bump by asking for a new id).
        _ => IdError::Retriable(format!("InitProducerId at {addr}: {err}")),
    })
}

fn refused(reason: &str) -> IdError {
    IdError::Refused(format!(
        "the cluster refuses an idempotent producer ({reason}); the producer is idempotent by \
         default: switch it off with `KafkaBrokerBuilder::idempotence(false)` for a cluster \
         without it"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequences_wrap_as_the_broker_counts_them() {
        assert_eq!(advance(0, 5), 5);
        assert_eq!(advance(i32::MAX - 5, 5), i32::MAX);
        assert_eq!(advance(i32::MAX - 4, 5), 0);
        assert_eq!(advance(i32::MAX, 1), 0);
        assert_eq!(advance(i32::MAX - 1, 10), 8);
    }

    #[test]
    fn only_sequence_and_epoch_disagreements_bump() {
        assert!(needs_bump(ResponseError::OutOfOrderSequenceNumber));
        assert!(needs_bump(ResponseError::UnknownProducerId));
        assert!(needs_bump(ResponseError::InvalidProducerEpoch));
        assert!(!needs_bump(ResponseError::NotLeaderOrFollower));
        assert!(!needs_bump(ResponseError::DuplicateSequenceNumber));
    }
}
