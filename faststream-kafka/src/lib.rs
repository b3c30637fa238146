//! The Kafka transport of [faststream](https://docs.rs/faststream): pure Rust, no librdkafka.
//!
//! The data path speaks the Kafka protocol itself, on the `kafka-protocol` crate's message
//! types over our own connections (TLS, SASL): fetching and record-batch decoding (every codec,
//! transactions), producing (record batches encoded in one pass from the outgoing messages,
//! no intermediate record type: see `encode`), and the consumer-group protocol.
//! [rskafka](https://docs.rs/rskafka) serves topic creation only (connected for it, closed
//! after). The produce
//! path is ours because per-message cost there is the framework's largest (a profile put a
//! client-owned record with a header map at about half the relay's CPU), and because an
//! idempotent or transactional producer needs to set the batch header's producer fields.
//!
//! [`KafkaBroker`] implements the core's `Transport`: at startup it connects (bounded by the
//! connect timeout, TLS and SASL as [`Security`] says), makes sure every subscribed, published
//! and dead-letter topic exists, and starts one consumer per subscribed partition. Each consumer
//! hands its next fetch to the link of its partition's leader and decodes its part of the
//! answer itself, runs messages through the handler pipeline (in offset order, or key-ordered
//! with `concurrency`), and queues the outputs to batching producers (one per target
//! partition, Kafka's murmur2 partitioner for keyed messages), whose batches go out through the
//! same links. On shutdown it stops fetching, finishes the messages in hand, waits for the acks
//! of everything it produced and flushes.
//!
//! The I/O grows with brokers, not partitions: one cache of partition leaders per service, and
//! per broker one link of two connections, a fetch connection (one Fetch request for every
//! partition read from that broker, in a fetch session where the broker keeps one, so that a
//! request lists only what changed) and a request connection (one Produce request for every
//! partition's waiting batch, and ListOffsets), as Java's fetcher and sender do.
//!
//! Routes with a `group_id` join that consumer group (Kafka's classic group protocol, spoken with
//! the `kafka-protocol` crate): partitions are assigned by the group,
//! consumers start from committed offsets, and done offsets are committed periodically, on
//! revoke and on shutdown (at-least-once by default).
//!
//! Modules in layers, each using only those below it (`scripts/import-cycles --graph` prints
//! them; CI fails on a circle):
//! 1. `error` (the transport's errors, and why a request about one partition failed),
//!    `metrics` (what consumers, groups and producers record through the `metrics` facade,
//!    feature `metrics`), `records` (record-batch decoding: codecs, transactions);
//! 2. `security` (TLS, SASL), then `config` (settings);
//! 3. `protocol` (one connection: framing, versions, TLS, SASL), `encode` (record batches v2
//!    from outgoing messages), `session` (the books of a fetch session, KIP-227), `link` (one
//!    broker's fetch and request connections, merging what every partition asks), then `cluster` (the metadata: partition leaders, topic
//!    listings; the links by broker), then `topics` (names, existence, creation);
//! 4. `assign` (the group leader's assignors), `fetch` (one partition's reads through its
//!    leader's link, and the decoding of its part of the answer),
//!    `transaction` (a group's transactional producer and commit gate, exactly-once);
//! 5. `group::coordinator` (join and sync, heartbeats, offset fetch and commit, leave),
//!    `produce` (batching producers, the partitioner, produce errors);
//! 6. `consume` (the per-partition consumer, a module per step of a message's walk:
//!    `consume::feed` fetches ahead, the route's scheduling strategy runs the handlers, in
//!    offset order, key-ordered concurrently, or in batches, through one outcome handling over
//!    core's `OffsetTracker`, and `consume::outputs`, the one in-flight tracker of every
//!    strategy, queues the outputs and moves the position as their acks arrive);
//! 7. `group` (membership: generations, partition consumers, bounded drains), `request`
//!    (request/reply), `redrive` (dead letters back to their topics);
//! 8. `broker` (the builder, startup, the transport).

mod assign;
mod backoff;
mod broker;
mod cluster;
mod config;
mod consume;
mod encode;
mod error;
mod fetch;
mod group;
mod idempotence;
mod link;
mod metrics;
mod produce;
mod protocol;
mod records;
mod redrive;
mod request;
mod security;
mod session;
mod topics;
mod transaction;

pub use broker::{KafkaBroker, KafkaBrokerBuilder};
pub use config::{Compression, MissingTopics, RebalanceHook};
pub use error::KafkaError;
pub use faststream_core::GroupProtocol;
pub use produce::partition_for_key;
pub use redrive::{Redrive, Redriven, REDRIVEN_FROM};
pub use security::{BoxError, Sasl, Security, SecurityProtocol, Tls, TokenCallback};
