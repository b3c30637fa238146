//! The Kafka transport of [faststream](https://docs.rs/faststream), on
//! [rskafka](https://docs.rs/rskafka): pure Rust, no librdkafka.
//!
//! [`KafkaBroker`] implements the core's `Transport`: at startup it connects (bounded by the
//! connect timeout), makes sure every subscribed and published topic exists, and starts one
//! consumer per subscribed partition. Each consumer fetches, runs messages through the handler
//! pipeline in offset order, and queues the outputs to batching producers (one per target
//! partition, Kafka's murmur2 partitioner for keyed messages). On shutdown it stops fetching,
//! finishes the message in hand, waits for the acks of everything it produced and flushes.
//!
//! Routes with a `group_id` join that consumer group (Kafka's classic group protocol, spoken with
//! the `kafka-protocol` crate since rskafka has no groups): partitions are assigned by the group,
//! consumers start from committed offsets, and done offsets are committed periodically, on
//! revoke and on shutdown (at-least-once by default).
//!
//! Modules, following one message: `consume` (the per-partition loop), `offsets` (where a
//! partition stands: the position a group commits), `produce` (batching producers, the
//! partitioner), `group` (membership: join, heartbeat task, commits, bounded drains), `assign`
//! (the leader's range and round-robin assignors), `protocol` (the raw connection for the group
//! APIs), `broker` (settings and startup).
//!
//! Not yet here: TLS and SASL settings.

mod assign;
mod broker;
mod consume;
mod error;
mod fetch;
mod group;
mod offsets;
mod produce;
mod protocol;
mod records;
mod request;
mod security;

pub use broker::{KafkaBroker, KafkaBrokerBuilder, MissingTopics, RebalanceHook};
pub use error::KafkaError;
pub use produce::partition_for_key;
pub use rskafka::client::partition::Compression;
pub use security::{BoxError, Sasl, Security, SecurityProtocol, Tls, TokenCallback};
