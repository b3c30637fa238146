//! The transport's settings, as the builder collects them: connection, producing, consuming,
//! consumer-group defaults and the missing-topics policy.

use std::sync::Arc;
use std::time::Duration;

use faststream_core::{Assignor, GroupProtocol, GroupTimings, SubscriberDef};

use crate::security::Security;

/// What to do about a topic that does not exist.
///
/// "Declared" topics are the ones the routes name: subscribed, `#[publisher]` and dead-letter
/// topics. They are checked (and created, if the policy says so) at startup, before anything
/// is consumed. A topic only named at run time (`Publisher::publish`, `send_message`) is
/// created only under [`MissingTopics::Create`]: otherwise a typo fails that publish (the
/// handler gets the error) instead of creating a topic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum MissingTopics {
    /// Create nothing: a missing declared topic fails startup, naming every missing topic; a
    /// publish to a missing topic fails. What production clusters usually want.
    Fail,
    /// Create missing declared topics at startup (logged as a warning); a publish to any other
    /// missing topic fails. The default, with 1 partition and replication factor 1.
    CreateDeclared {
        /// Partitions of a created topic.
        partitions: i32,
        /// Replication factor of a created topic.
        replication_factor: i16,
    },
    /// Create any missing topic, also one first named by a publish at run time.
    Create {
        /// Partitions of a created topic.
        partitions: i32,
        /// Replication factor of a created topic.
        replication_factor: i16,
    },
}

impl MissingTopics {
    /// How to create `topic`, if this policy creates it.
    pub(crate) fn creates(self, declared: bool) -> Option<(i32, i16)> {
        match self {
            MissingTopics::Create {
                partitions,
                replication_factor,
            } => Some((partitions, replication_factor)),
            MissingTopics::CreateDeclared {
                partitions,
                replication_factor,
            } if declared => Some((partitions, replication_factor)),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) brokers: Vec<String>,
    pub(crate) client_id: String,
    pub(crate) security: Security,
    pub(crate) connect_timeout: Duration,
    pub(crate) request_timeout: Duration,
    pub(crate) delivery_timeout: Duration,
    pub(crate) linger: Duration,
    pub(crate) max_batch_bytes: usize,
    pub(crate) compression: Compression,
    pub(crate) idempotence: bool,
    pub(crate) fetch_max_bytes: i32,
    pub(crate) fetch_max_wait: Duration,
    pub(crate) missing_topics: MissingTopics,
    pub(crate) max_queued_bytes: usize,
    pub(crate) max_queued_bytes_total: usize,
    pub(crate) max_fetched_bytes: usize,
    pub(crate) max_in_flight: usize,
    pub(crate) group: GroupDefaults,
    pub(crate) group_instance_id: Option<String>,
    /// The instance part of exactly-once groups' transactional ids (default: the
    /// `group_instance_id`).
    pub(crate) transactional_id: Option<String>,
    pub(crate) transaction_timeout: Duration,
    pub(crate) metadata_max_age: Duration,
    pub(crate) manual_ack_warning: Duration,
    pub(crate) hooks: RebalanceHooks,
    pub(crate) reply_topic: Option<String>,
    /// The TLS client configuration, built on first use and shared by every connection of the
    /// service (roots and client certificate read once; TLS sessions resumed across
    /// connections).
    pub(crate) tls: TlsCache,
}

/// See [`Config::tls_client_config`].
#[derive(Clone, Default)]
pub(crate) struct TlsCache(Arc<std::sync::OnceLock<Result<Arc<rustls::ClientConfig>, String>>>);

impl std::fmt::Debug for TlsCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsCache")
            .field("built", &self.0.get().is_some())
            .finish()
    }
}

impl Config {
    /// The TLS client configuration (`None` without TLS), built once per service.
    pub(crate) fn tls_client_config(
        &self,
    ) -> Result<Option<Arc<rustls::ClientConfig>>, crate::KafkaError> {
        let Some(tls) = self.security.tls() else {
            return Ok(None);
        };
        let built = self
            .tls
            .0
            .get_or_init(|| tls.client_config().map_err(|e| e.to_string()));
        match built {
            Ok(config) => Ok(Some(config.clone())),
            Err(reason) => Err(crate::KafkaError::Security(
                reason
                    .strip_prefix("security settings: ")
                    .unwrap_or(reason)
                    .to_owned(),
            )),
        }
    }
}

/// Called with the group id and the partitions, after partitions are assigned (and their
/// consumers started) or revoked (and their done offsets committed).
pub type RebalanceHook = Arc<dyn Fn(&str, &[(String, i32)]) + Send + Sync>;

#[derive(Clone, Default)]
pub(crate) struct RebalanceHooks {
    pub(crate) assigned: Option<RebalanceHook>,
    pub(crate) revoked: Option<RebalanceHook>,
}

impl std::fmt::Debug for RebalanceHooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RebalanceHooks")
            .field("assigned", &self.assigned.is_some())
            .field("revoked", &self.revoked.is_some())
            .finish()
    }
}

/// Consumer-group settings for routes that do not set their own.
#[derive(Debug, Clone, Copy)]
pub(crate) struct GroupDefaults {
    pub(crate) session_timeout: Duration,
    pub(crate) heartbeat_interval: Duration,
    pub(crate) rebalance_timeout: Duration,
    pub(crate) commit_interval: Duration,
    /// `None`: `range` under the classic protocol, the broker's choice under the consumer
    /// protocol.
    pub(crate) assignor: Option<Assignor>,
    pub(crate) protocol: GroupProtocol,
}

impl GroupDefaults {
    /// Route options override the defaults; where routes of one group disagree, the first
    /// route (by handler path) that sets an option wins.
    pub(crate) fn resolve<'a>(
        &self,
        subs: impl Iterator<Item = &'a SubscriberDef>,
    ) -> GroupSettings {
        let mut timings = GroupTimings::default();
        let mut assignor = None;
        let mut protocol = None;
        for sub in subs {
            timings = timings.or(sub.group_timings());
            assignor = assignor.or(sub.group_assignor());
            protocol = protocol.or(sub.protocol());
        }
        let pick = |ms: Option<u32>, default: Duration| {
            ms.map_or(default, |ms| Duration::from_millis(ms.into()))
        };
        GroupSettings {
            session_timeout: pick(timings.session_timeout_ms, self.session_timeout),
            heartbeat_interval: pick(timings.heartbeat_interval_ms, self.heartbeat_interval),
            rebalance_timeout: pick(timings.rebalance_timeout_ms, self.rebalance_timeout),
            commit_interval: pick(timings.commit_interval_ms, self.commit_interval),
            assignor: assignor.or(self.assignor).unwrap_or_default(),
            protocol: protocol.unwrap_or(self.protocol),
            assignor_set: assignor.or(self.assignor).is_some(),
        }
    }
}

/// Group timings and assignor, resolved from route options and broker defaults.
#[derive(Debug, Clone, Copy)]
pub(crate) struct GroupSettings {
    pub(crate) session_timeout: Duration,
    pub(crate) heartbeat_interval: Duration,
    pub(crate) rebalance_timeout: Duration,
    pub(crate) commit_interval: Duration,
    pub(crate) assignor: Assignor,
    pub(crate) protocol: GroupProtocol,
    /// Whether a route or the broker chose the assignor (else the consumer protocol leaves
    /// the choice to the broker's `group.consumer.assignors`).
    pub(crate) assignor_set: bool,
}

impl GroupSettings {
    /// Refuses an assignor the group's protocol does not have.
    pub(crate) fn check(&self, group: &str) -> Result<(), crate::KafkaError> {
        let wrong = match (self.protocol, self.assignor) {
            (GroupProtocol::Classic, Assignor::Uniform) => {
                "`uniform` is an assignor of the consumer group protocol: set `group_protocol = \"consumer\"`, or use `range` or `roundrobin`"
            }
            (GroupProtocol::Consumer, Assignor::RoundRobin | Assignor::CooperativeSticky) => {
                "`roundrobin` and `cooperative-sticky` are assignors of the classic group protocol: under `group_protocol = \"consumer\"` the broker assigns, with `uniform` or `range`"
            }
            _ => return Ok(()),
        };
        Err(crate::KafkaError::Unsupported(format!(
            "consumer group {group:?}: {wrong}"
        )))
    }
}

/// Compression of produced record batches. The codecs are behind the crate features
/// `compression-gzip` and `compression-snappy` (both on by default); consumed batches are decoded
/// whatever their codec (gzip, snappy, lz4, zstd), with or without them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Compression {
    /// Uncompressed (the default).
    #[default]
    None,
    /// gzip.
    #[cfg(feature = "compression-gzip")]
    Gzip,
    /// snappy.
    #[cfg(feature = "compression-snappy")]
    Snappy,
}

#[cfg(test)]
mod tests {
    use crate::{KafkaBroker, Security, Tls};
    use std::sync::Arc;

    /// A self-signed CA certificate (its key thrown away): something to trust.
    const CA: &[u8] = b"-----BEGIN CERTIFICATE-----
MIIBgTCCASegAwIBAgIULRSSzVCTqtB1sC94r/azL8LOm6EwCgYIKoZIzj0EAwIw
FTETMBEGA1UEAwwKZml4dHVyZS1jYTAgFw0yNjEyMDUwNzE1MjJaGA8yMTI2MTEx
MTA3MTUyMlowFTETMBEGA1UEAwwKZml4dHVyZS1jYTBZMBMGByqGSM49AgEGCCqG
SM49AwEHA0IABHxmH2+S/c/fuZ3H7mDwdL2tWDzwZHW3dnUl8fPz1xUfP7E+1PlX
1AIk5Ic/M+YOJaaNFjZMHqesGj8tvN5kcFyjUzBRMB0GA1UdDgQWBBTrk2sdIfcr
xW2Ld0AhXWpfPzGtPzAfBgNVHSMEGDAWgBTrk2sdIfcrxW2Ld0AhXWpfPzGtPzAP
BgNVHRMBAf8EBTADAQH/MAoGCCqGSM49BAMCA0gAMEUCIQCDR8PPJCz57DBo8mcn
0U4krMgOHmoISatj0PO9g8LbVgIgCmdHb/1+wGv8DMyZYHoufasysJANB+gN659t
fhaXISg=
-----END CERTIFICATE-----
";

    #[test]
    fn the_tls_configuration_is_built_once_per_service() {
        let builder =
            KafkaBroker::builder("127.0.0.1:1").security(Security::ssl(Tls::ca_pem(CA).unwrap()));
        let config = builder.clone().config_for_tests();
        let first = config.tls_client_config().unwrap().unwrap();
        let again = config.tls_client_config().unwrap().unwrap();
        assert!(Arc::ptr_eq(&first, &again), "every connection shares one");
        // Another service built from the same builder has its own.
        let other = builder.clone().config_for_tests();
        let its = other.tls_client_config().unwrap().unwrap();
        assert!(!Arc::ptr_eq(&first, &its));
        let changed = builder.security(Security::plaintext()).config_for_tests();
        assert!(changed.tls_client_config().unwrap().is_none());
        let plain = KafkaBroker::builder("127.0.0.1:1").config_for_tests();
        assert!(plain.tls_client_config().unwrap().is_none());
    }
}
