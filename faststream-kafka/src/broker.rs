//! `KafkaBroker`: configuration, connection, and the transport that runs the routes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use faststream_core::{
    AckMode, Assignor, BoxFuture, GroupProtocol, IntoPayload, Message, OffsetReset,
    OutgoingMessage, Pipeline, Publish, RouteDef, Shutdown, SubscriberDef, Transport,
};
use tokio::sync::{OnceCell, Semaphore};
use tokio::task::JoinSet;

use crate::cluster::Cluster;
use crate::config::{Compression, Config, GroupDefaults, MissingTopics, RebalanceHooks};
use crate::consume::{PartitionConsumer, Runtime};
use crate::error::KafkaError;
use crate::group::{GroupRunner, GroupTopic};
use crate::produce::Producers;
use crate::protocol::Conn;
use crate::security::Security;
use crate::topics::{invalid_topic_name, list_topics, TopicPattern};
use crate::transaction::Txn;

/// Builds a [`KafkaBroker`]; every setting has a default.
#[derive(Debug, Clone)]
pub struct KafkaBrokerBuilder {
    config: Config,
}

impl KafkaBrokerBuilder {
    /// The settings as built, for the crate's unit tests.
    #[cfg(test)]
    pub(crate) fn config_for_tests(self) -> Config {
        self.into_config()
    }

    /// The settings of one service: with a TLS cache of its own, so that builders cloned and
    /// then configured apart never share one.
    fn into_config(self) -> Config {
        let mut config = self.config;
        config.tls = Default::default();
        config
    }

    /// Client id sent to the brokers (default `faststream-rs`).
    pub fn client_id(mut self, id: impl Into<String>) -> Self {
        self.config.client_id = id.into();
        self
    }

    /// How to connect: TLS, SASL, both or neither (default plaintext). Applies to every
    /// connection (data, partition leaders, group coordinator). See [`Security::from_env`] for
    /// configuration by environment variables.
    pub fn security(mut self, security: Security) -> Self {
        self.config.security = security;
        self
    }

    /// How long startup waits for a broker to answer before failing (default 10 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.config.connect_timeout = timeout;
        self
    }

    /// How long one fetch or produce may take (beyond the fetch wait) before the runtime logs
    /// it with topic and partition and tries again (default 30 s); also bounds the client's own
    /// retries of a request. A broker that goes away mid-run is thus reported, never a silent hang.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.config.request_timeout = timeout;
        self
    }

    /// How long an output may take to be delivered, retries included (default 120 s, as Kafka's
    /// `delivery.timeout.ms`). Retriable produce errors (leader moved, broker unreachable) are
    /// retried within it; past it, and at once for errors retrying cannot fix (record too large,
    /// not authorized, invalid record), the output fails: `publish` returns the error, and a
    /// handler's input goes through its failure policy with the error kind `publish`.
    pub fn delivery_timeout(mut self, timeout: Duration) -> Self {
        self.config.delivery_timeout = timeout;
        self
    }

    /// The topic [`KafkaBroker::request`] asks for replies on (default `"<client_id>.replies"`;
    /// created on first use unless missing topics are an error). Instances may share it: each
    /// takes only the replies to its own requests.
    pub fn reply_topic(mut self, topic: impl Into<String>) -> Self {
        self.config.reply_topic = Some(topic.into());
        self
    }

    /// How long a partition's produce batch may wait to grow while less than 16 KiB is queued,
    /// counted from its first record (default 5 ms, Java's `linger.ms`; zero sends at once).
    pub fn linger(mut self, linger: Duration) -> Self {
        self.config.linger = linger;
        self
    }

    /// The most bytes of one partition's record batch (default 1 MiB): a partition's open
    /// batch closes before a record would take it past this; a larger record goes alone.
    pub fn max_batch_bytes(mut self, bytes: usize) -> Self {
        self.config.max_batch_bytes = bytes.max(1);
        self
    }

    /// Compression of produced batches (default none; codecs are behind crate features).
    pub fn compression(mut self, compression: Compression) -> Self {
        self.config.compression = compression;
        self
    }

    /// Whether the producer is idempotent (default on, as Kafka's Java producer since 3.0):
    /// every batch carries a producer id and a sequence number per partition, so the leader
    /// writes a batch retried after a lost answer once, and outputs keep their order across
    /// retries. Needs `InitProducerId` (Kafka 0.11 and later; on clusters with ACLs the
    /// `IdempotentWrite` permission, or since Kafka 2.8 `Write` on a topic). Switch it off
    /// for a broker without it: startup says so when the cluster refuses a producer id.
    pub fn idempotence(mut self, enabled: bool) -> Self {
        self.config.idempotence = enabled;
        self
    }

    /// Upper bound of one fetch response per partition (default 256 KiB; Java's
    /// `max.partition.fetch.bytes` is 1 MiB). Up to four fetches of a partition are in memory at
    /// once (one being handled, one waiting, two ahead), and the relay benchmark measured 256 KiB
    /// at less memory and less CPU per message than 1 MiB. A larger single record is still read.
    pub fn fetch_max_bytes(mut self, bytes: i32) -> Self {
        self.config.fetch_max_bytes = bytes.max(2);
        self
    }

    /// How long the broker may hold a fetch waiting for data (default 500 ms).
    pub fn fetch_max_wait(mut self, wait: Duration) -> Self {
        self.config.fetch_max_wait = wait;
        self
    }

    /// Whether missing topics are created or an error (default:
    /// [`MissingTopics::CreateDeclared`] with 1 partition, replication factor 1: topics the
    /// routes name are created at startup, which suits development; a publish to an unknown
    /// topic fails. Production clusters usually want [`MissingTopics::Fail`]).
    pub fn missing_topics(mut self, policy: MissingTopics) -> Self {
        self.config.missing_topics = policy;
        self
    }

    /// Bytes of messages that may wait in each target partition's produce queue (default
    /// 4 MiB); beyond that publishing waits. A message is encoded as it is queued (its key,
    /// value and headers as the record batch holds them) and counts those bytes plus what its
    /// record takes while it waits (32 bytes), so small messages are bounded by memory too.
    pub fn max_queued_bytes(mut self, bytes: usize) -> Self {
        self.config.max_queued_bytes =
            bytes.clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize));
        self
    }

    /// Bytes of messages that may wait in all produce queues of this broker handle together
    /// (default 16 MiB, counted as for `max_queued_bytes`; half the Java producer's
    /// `buffer.memory`: a larger queue added memory and waiting, not throughput, in the relay
    /// benchmark); beyond that publishing waits. With many target partitions this is the bound
    /// that holds: `max_queued_bytes` per partition times 256 partitions would be 1 GiB.
    pub fn max_queued_bytes_total(mut self, bytes: usize) -> Self {
        self.config.max_queued_bytes_total =
            bytes.clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize));
        self
    }

    /// Bytes of fetched records that may wait for their handlers in all consumed partitions of
    /// this broker handle together (default 64 MiB; a fetch counts its bytes and room for one
    /// chunk of decoded records: fetched batches are decoded a few hundred records at a time as
    /// the consumer gets to them). What a fetch brought back waits for room
    /// in this budget before its consumer gets it (the partition fetches nothing more
    /// meanwhile) and counts until the consumer asks for more after its last record; quiet
    /// partitions take nothing. With many partitions this bounds what is read ahead: without it, each
    /// partition may hold two fetches waiting (128 MiB at 256 partitions of 256 KiB fetches).
    pub fn max_fetched_bytes(mut self, bytes: usize) -> Self {
        self.config.max_fetched_bytes =
            bytes.clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize));
        self
    }

    /// Messages each partition consumer may have awaiting broker acks (default 10 000).
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.config.max_in_flight = n.max(1);
        self
    }

    /// Consumer-group session timeout for routes that do not set `session_timeout_ms`
    /// (default 10 s): a member silent this long is removed from its group.
    pub fn session_timeout(mut self, timeout: Duration) -> Self {
        self.config.group.session_timeout = timeout;
        self
    }

    /// Heartbeat interval for routes that do not set `heartbeat_interval_ms` (default 1 s).
    pub fn heartbeat_interval(mut self, interval: Duration) -> Self {
        self.config.group.heartbeat_interval = interval;
        self
    }

    /// Rebalance timeout for routes that do not set `rebalance_timeout_ms` (default 30 s).
    pub fn rebalance_timeout(mut self, timeout: Duration) -> Self {
        self.config.group.rebalance_timeout = timeout;
        self
    }

    /// How often done offsets are committed, for routes that do not set `commit_interval_ms`
    /// (default 1 s). Offsets are also committed on rebalance and on shutdown.
    pub fn commit_interval(mut self, interval: Duration) -> Self {
        self.config.group.commit_interval = interval;
        self
    }

    /// Partition assignor for routes that do not set `assignor`. Default: `range` under the
    /// classic protocol; under the consumer protocol the broker's first
    /// `group.consumer.assignors` (`uniform` unless configured otherwise).
    pub fn assignor(mut self, assignor: Assignor) -> Self {
        self.config.group.assignor = Some(assignor);
        self
    }

    /// The consumer group protocol for routes that do not set `group_protocol` (default
    /// [`GroupProtocol::Classic`], as the Java client). [`GroupProtocol::Consumer`] (KIP-848)
    /// needs Apache Kafka 4.0 or later: a rebalance then pauses only the partitions that move.
    /// Its session timeout and heartbeat interval are the broker's
    /// (`group.consumer.session.timeout.ms`, `group.consumer.heartbeat.interval.ms`); the
    /// settings of this builder for them apply to classic groups only.
    pub fn group_protocol(mut self, protocol: GroupProtocol) -> Self {
        self.config.group.protocol = protocol;
        self
    }

    /// Static group membership (Kafka's `group.instance.id`, KIP-345) for every consumer group
    /// of this service: a restart within the session timeout gets its partitions back without
    /// a rebalance, and the member does not leave its groups on shutdown. Each running instance
    /// needs its own id (for example the pod name); two instances with one id fence each other,
    /// and the fenced one stops with an error. Default: none (dynamic membership).
    pub fn group_instance_id(mut self, id: impl Into<String>) -> Self {
        self.config.group_instance_id = Some(id.into()).filter(|id| !id.is_empty());
        self
    }

    /// The instance part of the transactional ids of `exactly_once` groups: the id of the
    /// group `g` is `g.<this>`. It must be unique per running instance and kept across
    /// restarts (for example the pod name of a StatefulSet), so a restarted instance fences
    /// its predecessor and aborts what it left open at once. Default: the
    /// `group_instance_id`, else a random value per start (a crashed instance's open
    /// transaction then holds back `read_committed` readers of its outputs until
    /// [`transaction_timeout`](Self::transaction_timeout)).
    pub fn transactional_id(mut self, id: impl Into<String>) -> Self {
        self.config.transactional_id = Some(id.into()).filter(|id| !id.is_empty());
        self
    }

    /// How long the transaction coordinator lets a transaction stay open before aborting it
    /// (Java's `transaction.timeout.ms`, default 60 s; the broker caps it at its
    /// `transaction.max.timeout.ms`, 15 min by default).
    pub fn transaction_timeout(mut self, timeout: Duration) -> Self {
        self.config.transaction_timeout = timeout;
        self
    }

    /// How often topic metadata is refreshed (Java's `metadata.max.age.ms`, default 5 min):
    /// partitions added to a subscribed topic are then consumed (a group rebalances; a
    /// subscriber without a group starts reading them from their beginning), and keys are
    /// partitioned with the new count.
    pub fn metadata_max_age(mut self, age: Duration) -> Self {
        self.config.metadata_max_age = age.max(Duration::from_millis(100));
        self
    }

    /// How long a message of an `ack = "manual"` route may stay neither acked nor nacked before
    /// a warning names it (default 60 s): such a message holds back every later commit of its
    /// partition.
    pub fn manual_ack_warning(mut self, after: Duration) -> Self {
        self.config.manual_ack_warning = after;
        self
    }

    /// Calls `hook(group, partitions)` each time this service is assigned partitions in a
    /// consumer group, after their consumers started.
    pub fn on_partitions_assigned(
        mut self,
        hook: impl Fn(&str, &[(String, i32)]) + Send + Sync + 'static,
    ) -> Self {
        self.config.hooks.assigned = Some(Arc::new(hook));
        self
    }

    /// Calls `hook(group, partitions)` each time partitions are taken from this service (a
    /// rebalance or shutdown), after their consumers finished and their offsets were committed.
    pub fn on_partitions_revoked(
        mut self,
        hook: impl Fn(&str, &[(String, i32)]) + Send + Sync + 'static,
    ) -> Self {
        self.config.hooks.revoked = Some(Arc::new(hook));
        self
    }

    /// Builds the handle; nothing connects until it is used.
    pub fn build(self) -> KafkaBroker {
        let config = Arc::new(self.into_config());
        let cluster = Arc::new(Cluster::new(config.clone()));
        KafkaBroker {
            shared: Arc::new(Shared {
                producers: Arc::new(Producers::new(cluster.clone())),
                cluster,
                config,
                connected: OnceCell::new(),
                replies: OnceCell::new(),
            }),
        }
    }
}

#[derive(Debug)]
struct Shared {
    config: Arc<Config>,
    /// Partition leaders and the links to the brokers, shared by everything this handle runs.
    cluster: Arc<Cluster>,
    /// Set once a bootstrap broker answered ([`KafkaBroker::connected`]).
    connected: OnceCell<()>,
    producers: Arc<Producers>,
    replies: OnceCell<crate::request::Replies>,
}

/// A Kafka cluster, by bootstrap address. Cheap to clone; clones share connections and producers.
///
/// ```no_run
/// use faststream_kafka::KafkaBroker;
/// let broker = KafkaBroker::new("localhost:9092");
/// # let _ = broker;
/// ```
#[derive(Debug, Clone)]
pub struct KafkaBroker {
    shared: Arc<Shared>,
}

impl KafkaBroker {
    /// A builder configured from the environment: `KAFKA_BOOTSTRAP` (default
    /// `localhost:9092`), the security settings of [`Security::from_env`]
    /// (`KAFKA_SECURITY_PROTOCOL`, `KAFKA_SASL_*`, `KAFKA_SSL_*`), and `KAFKA_GROUP_PROTOCOL`
    /// (`classic` or `consumer`: the group protocol of routes that do not set theirs). A
    /// service binary built on it is pointed at any cluster without code changes.
    pub fn builder_from_env() -> Result<KafkaBrokerBuilder, KafkaError> {
        let bootstrap =
            std::env::var("KAFKA_BOOTSTRAP").unwrap_or_else(|_| "localhost:9092".into());
        let mut builder = Self::builder(&bootstrap).security(Security::from_env()?);
        match std::env::var("KAFKA_GROUP_PROTOCOL").as_deref() {
            Err(_) | Ok("") => {}
            Ok("classic") => builder = builder.group_protocol(GroupProtocol::Classic),
            Ok("consumer") => builder = builder.group_protocol(GroupProtocol::Consumer),
            Ok(other) => {
                return Err(KafkaError::Unsupported(format!(
                    "KAFKA_GROUP_PROTOCOL={other:?}: expected \"classic\" or \"consumer\""
                )))
            }
        }
        Ok(builder)
    }

    /// [`KafkaBroker::builder_from_env`] with default settings otherwise.
    pub fn from_env() -> Result<Self, KafkaError> {
        Ok(Self::builder_from_env()?.build())
    }

    /// A broker handle for `"host:port"` or `"host:port,host:port"`, with default settings.
    pub fn new(bootstrap: &str) -> Self {
        Self::builder(bootstrap).build()
    }

    /// A builder for `"host:port,..."`.
    pub fn builder(bootstrap: &str) -> KafkaBrokerBuilder {
        let brokers = bootstrap
            .split(',')
            .map(|b| b.trim().trim_start_matches("tcp://").to_owned())
            .filter(|b| !b.is_empty())
            .collect();
        KafkaBrokerBuilder {
            config: Config {
                brokers,
                client_id: "faststream-rs".into(),
                security: Security::default(),
                connect_timeout: Duration::from_secs(10),
                request_timeout: Duration::from_secs(30),
                delivery_timeout: Duration::from_secs(120),
                linger: Duration::from_millis(5),
                max_batch_bytes: 1024 * 1024,
                compression: Compression::None,
                idempotence: true,
                fetch_max_bytes: 256 * 1024,
                fetch_max_wait: Duration::from_millis(500),
                missing_topics: MissingTopics::CreateDeclared {
                    partitions: 1,
                    replication_factor: 1,
                },
                max_queued_bytes: 4 * 1024 * 1024,
                max_queued_bytes_total: 16 * 1024 * 1024,
                max_fetched_bytes: 64 * 1024 * 1024,
                max_in_flight: 10_000,
                group: GroupDefaults {
                    session_timeout: Duration::from_secs(10),
                    heartbeat_interval: Duration::from_secs(1),
                    rebalance_timeout: Duration::from_secs(30),
                    commit_interval: Duration::from_secs(1),
                    assignor: None,
                    protocol: GroupProtocol::Classic,
                },
                group_instance_id: None,
                transactional_id: None,
                transaction_timeout: Duration::from_secs(60),
                metadata_max_age: Duration::from_secs(300),
                manual_ack_warning: Duration::from_secs(60),
                hooks: RebalanceHooks::default(),
                reply_topic: None,
                tls: Default::default(),
            },
        }
    }

    /// Checks once, on first use, that a bootstrap broker answers (TLS and SASL included)
    /// within the connect timeout, so that an unreachable or misconfigured cluster is one
    /// clear error.
    pub(crate) async fn connected(&self) -> Result<(), KafkaError> {
        self.shared
            .connected
            .get_or_try_init(|| connect(&self.shared.config))
            .await
            .copied()
    }

    /// Sends `value` to `topic` as a request (FastStream's RPC: `reply_to` and `correlation_id`
    /// headers) and waits up to `timeout` for the reply, which a faststream service (Rust or
    /// Python) publishes to this handle's reply topic (see
    /// [`KafkaBrokerBuilder::reply_topic`]).
    pub async fn request(
        &self,
        value: impl IntoPayload,
        topic: &str,
        timeout: Duration,
    ) -> faststream_core::Result<Message> {
        self.request_message(OutgoingMessage::encode(topic, value)?, timeout)
            .await
    }

    /// [`KafkaBroker::request`] with a fully specified message (its `correlation_id` header is
    /// kept if set).
    pub async fn request_message(
        &self,
        mut msg: OutgoingMessage,
        timeout: Duration,
    ) -> faststream_core::Result<Message> {
        let replies = self.replies().await?;
        let (id, reply) = replies.register(&mut msg);
        let topic = msg.topic.clone();
        if let Err(e) = self.send_message(msg).await {
            replies.forget(&id);
            return Err(e);
        }
        match tokio::time::timeout(timeout, reply).await {
            Ok(Ok(reply)) => Ok(reply),
            _ => {
                replies.forget(&id);
                Err(KafkaError::NoReply {
                    topic: topic.to_string(),
                    reply_topic: replies.topic().to_owned(),
                    timeout,
                }
                .into())
            }
        }
    }

    async fn replies(&self) -> Result<&crate::request::Replies, KafkaError> {
        self.shared
            .replies
            .get_or_try_init(|| async {
                let config = &self.shared.config;
                let topic = config
                    .reply_topic
                    .clone()
                    .unwrap_or_else(|| format!("{}.replies", config.client_id));
                if let Some(reason) = invalid_topic_name(&topic) {
                    return Err(KafkaError::InvalidTopic(reason));
                }
                self.connected().await?;
                self.shared.producers.declare(std::slice::from_ref(&topic));
                let partitions = self.shared.producers.partition_count(&topic).await?;
                crate::request::Replies::start(self.shared.cluster.clone(), topic, partitions).await
            })
            .await
    }

    /// Publishes `value` (text, bytes, or `Json(..)`) to `topic`; resolves once acknowledged.
    pub async fn publish(
        &self,
        value: impl IntoPayload,
        topic: &str,
    ) -> faststream_core::Result<()> {
        self.send_message(OutgoingMessage::encode(topic, value)?)
            .await
    }

    /// Publishes a fully specified message; resolves once acknowledged.
    pub async fn send_message(&self, msg: OutgoingMessage) -> faststream_core::Result<()> {
        self.connected().await?;
        let topic = msg.topic.to_string();
        let mut queued = self.shared.producers.enqueue(vec![msg]).await?;
        if let Some((_, reason)) = queued.refused.pop() {
            let reason = reason.to_string();
            return Err(KafkaError::Publish { topic, reason }.into());
        }
        let (_, ack) = queued.groups.pop().ok_or(KafkaError::Closed)?;
        match ack.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(mut failed)) => Err(KafkaError::Publish {
                topic,
                reason: failed.pop().map(|(_, r)| r.to_string()).unwrap_or_default(),
            }
            .into()),
            Err(_) => Err(KafkaError::Closed.into()),
        }
    }

    /// Number of partitions of `topic` (creating it if the missing-topics policy says so).
    pub async fn partitions(&self, topic: &str) -> Result<i32, KafkaError> {
        self.connected().await?;
        self.shared.producers.partition_count(topic).await
    }

    /// Moves the dead letters of `dlq_topic` that `selection` picks back to the topics (and
    /// partitions) they came from, once the cause of their failure is fixed; the service
    /// consuming those topics then handles them again. Reads up to the end the dead-letter
    /// topic has now, and keeps its progress per topic and selection (committed after each
    /// fetched batch is acknowledged): run again after a crash, it goes on where it stopped,
    /// moving at most the last batch twice; run again later, it moves only what arrived since.
    /// Dead letters stay in the dead-letter topic (a Kafka topic is a log): the progress is
    /// what keeps them from being moved twice.
    pub async fn redrive(
        &self,
        dlq_topic: &str,
        selection: &crate::Redrive,
    ) -> Result<crate::Redriven, KafkaError> {
        self.connected().await?;
        crate::redrive::redrive(
            &self.shared.config,
            &self.shared.producers,
            dlq_topic,
            selection,
        )
        .await
    }

    /// A route's retry topics have as many partitions as its topic (a missing one is created
    /// so, where the missing-topics policy creates topics): a message's retries stay on the
    /// partition of the same number, which the member owning the topic's partition reads.
    /// The transaction of each consumer group whose routes are `exactly_once`, its producer
    /// id already obtained (a cluster without transactions fails startup here). Every route
    /// of such a group must be exactly-once, acknowledge after processing, and be in a group.
    async fn exactly_once_groups(
        &self,
        pipeline: &Pipeline,
    ) -> Result<BTreeMap<&'static str, Arc<Txn>>, KafkaError> {
        let mut groups: BTreeMap<&'static str, Arc<Txn>> = BTreeMap::new();
        let mut plain: BTreeMap<&'static str, &'static str> = BTreeMap::new();
        for route in pipeline.routes() {
            let policy = pipeline.policy(route);
            for sub in route.subscribers() {
                match (sub.group(), policy.exactly_once) {
                    (None, true) => {
                        return Err(KafkaError::Unsupported(format!(
                            "handler {} is exactly-once but has no consumer group: give it a `group_id` or set `exactly_once = false` on it",
                            route.name()
                        )))
                    }
                    (Some(_), true) if policy.ack != AckMode::AfterProcessing => {
                        return Err(KafkaError::Unsupported(format!(
                            "handler {} is exactly-once: its offsets are committed with its outputs, so `ack = \"first\"` or `\"manual\"` does not apply",
                            route.name()
                        )))
                    }
                    (Some(_), true) if !policy.retry_topics.is_empty() => {
                        return Err(KafkaError::Unsupported(format!(
                            "handler {} is exactly-once with retry topics, which this version does not support (a retry's wait would hold the group's transaction open): drop one of the two",
                            route.name()
                        )))
                    }
                    (Some(group), true) => {
                        if !groups.contains_key(group) {
                            let txn = Txn::new(self.shared.config.clone(), &pipeline.topic_name(group));
                            groups.insert(group, Arc::new(txn));
                        }
                    }
                    (Some(group), false) => {
                        plain.insert(group, route.name());
                    }
                    (None, false) => {}
                }
            }
        }
        for (group, txn) in &groups {
            if let Some(handler) = plain.get(group) {
                return Err(KafkaError::Unsupported(format!(
                    "consumer group {group:?} mixes exactly-once handlers with handler {handler}, which is not: one transaction commits the whole group's offsets, so set `exactly_once` alike on every handler of the group"
                )));
            }
            txn.start().await.map_err(|e| {
                KafkaError::Unsupported(format!(
                    "exactly-once group {group:?} (transactional id {:?}): {e}",
                    txn.id()
                ))
            })?;
            tracing::info!(
                group,
                transactional_id = txn.id(),
                "exactly-once: transactional producer ready"
            );
        }
        Ok(groups)
    }

    async fn check_retry_topics(&self, pipeline: &Pipeline) -> Result<(), KafkaError> {
        let producers = &self.shared.producers;
        for route in pipeline.routes() {
            let retry = &pipeline.policy(route).retry_topics;
            if retry.is_empty() {
                continue;
            }
            let topics = route.subscribers().iter().flat_map(|s| s.topics());
            for topic in topics.map(|t| pipeline.topic_name(t)) {
                let n = producers.partition_count(&topic).await?;
                for retry_topic in retry {
                    let name = &retry_topic.topic;
                    let declared =
                        crate::topics::ensure_topic_partitions(&self.shared.cluster, name, n)
                            .await?;
                    if declared != n {
                        return Err(KafkaError::InvalidPartition(format!(
                            "retry topic {name:?} of {} ({}) has {declared} partition(s) and topic {topic:?} has {n}: they must have as many (a message's retries stay on the partition of the same number); create {name:?} with {n} partitions",
                            route.name(),
                            route.location()
                        )));
                    }
                }
            }
        }
        Ok(())
    }

    async fn serve_routes(
        &self,
        pipeline: Arc<Pipeline>,
        shutdown: Shutdown,
    ) -> Result<(), KafkaError> {
        self.connected().await?;
        let config = &self.shared.config;
        // Every topic the routes touch must be valid and exist (or be created) before anything
        // starts: subscribed, published and dead-letter topics, with the prefix applied.
        let mut topics: Vec<String> = pipeline
            .routes()
            .iter()
            .flat_map(|r| {
                r.subscribers()
                    .iter()
                    .flat_map(|s| s.topics().iter().copied())
                    .chain(r.publishers().iter().copied())
                    .map(|t| pipeline.topic_name(t))
                    .chain(pipeline.policy(r).dlq.clone())
                    .chain(retry_topic_names(&pipeline, r))
            })
            .collect();
        topics.sort_unstable();
        topics.dedup();
        for topic in &topics {
            if let Some(reason) = invalid_topic_name(topic) {
                return Err(KafkaError::InvalidTopic(reason));
            }
        }
        self.shared.producers.declare(&topics);
        if config.missing_topics == MissingTopics::Fail {
            let existing: Vec<String> = list_topics(&self.shared.cluster).await?;
            let missing: Vec<String> = topics
                .iter()
                .filter(|t| !existing.contains(t))
                .cloned()
                .collect();
            if !missing.is_empty() {
                return Err(KafkaError::MissingTopics { topics: missing });
            }
        }
        // A service that produces learns now whether the cluster grants an idempotent
        // producer (a refusal names the setting), not at its first output.
        let produces = pipeline.routes().iter().any(|r| {
            let policy = pipeline.policy(r);
            !r.publishers().is_empty() || policy.dlq.is_some() || !policy.retry_topics.is_empty()
        });
        if produces {
            self.shared.producers.check_idempotence().await?;
        }
        self.check_retry_topics(&pipeline).await?;
        // Stops every consumer: the app's shutdown (forwarded with its deadline), or the first
        // consumer that stops on its own (nothing may sit unread while the service looks alive).
        let (stop_all, inner) = Shutdown::new();
        let rt = Arc::new(Runtime {
            producers: self.shared.producers.clone(),
            pipeline: pipeline.clone(),
            config: config.clone(),
            cluster: self.shared.cluster.clone(),
            txn: None,
        });
        let transactional = self.exactly_once_groups(&pipeline).await?;
        let mut consumers = JoinSet::new();
        let (ready_tx, mut ready_rx) = tokio::sync::mpsc::unbounded_channel();
        let spawn_partition =
            |consumers: &mut JoinSet<_>, sub: &Ungrouped, partition: i32, reset: OffsetReset| {
                consumers.spawn(
                    PartitionConsumer {
                        rt: rt.clone(),
                        route: sub.route,
                        topic: sub.topic.clone(),
                        partition,
                        reset,
                        start: None,
                        group: None,
                        shutdown: sub.stop.clone(),
                        ready: ready_tx.clone(),
                        lane: None,
                    }
                    .run(),
                );
            };
        let mut groups: BTreeMap<&str, Vec<(GroupTopic, &SubscriberDef)>> = BTreeMap::new();
        // Subscriptions to every partition of a topic without a group: they follow new
        // partitions found by the metadata refresh.
        let mut ungrouped = Vec::new();
        // Pattern subscriptions: the topics that match now are subscribed below; the metadata
        // refresh (groups: their own) adds the ones created later.
        let prefix = pipeline.topic_name("");
        let mut patterns: BTreeMap<Option<&str>, Vec<TopicPattern>> = BTreeMap::new();
        let mut existing: Option<Vec<String>> = None;
        for route in pipeline.routes() {
            for sub in route.subscribers() {
                let mut names: Vec<String> = sub
                    .topics()
                    .iter()
                    .map(|t| pipeline.topic_name(t))
                    .collect();
                if let Some(matcher) = sub.topic_matcher(&prefix) {
                    if existing.is_none() {
                        existing = Some(list_topics(&self.shared.cluster).await?);
                    }
                    let matching = existing.iter().flatten().filter(|t| matcher.matches(t));
                    names.extend(
                        matching
                            .filter(|t| !names.contains(t))
                            .cloned()
                            .collect::<Vec<_>>(),
                    );
                    patterns.entry(sub.group()).or_default().push(TopicPattern {
                        route,
                        matcher,
                        reset: sub.offset_reset(),
                    });
                }
                for topic in names {
                    let count = self.shared.producers.partition_count(&topic).await?;
                    if let Some(group) = sub.group() {
                        let entry = GroupTopic {
                            route,
                            topic,
                            reset: sub.offset_reset(),
                            dynamic: false,
                        };
                        groups.entry(group).or_default().push((entry, sub));
                        continue;
                    }
                    let entry = Ungrouped {
                        route,
                        topic: Arc::from(topic.as_str()),
                        reset: sub.offset_reset(),
                        partitions: count,
                        stop: inner.clone(),
                    };
                    match sub.assigned_partitions() {
                        Some(list) => {
                            if let Some(bad) = list.iter().find(|p| **p >= count) {
                                return Err(KafkaError::InvalidPartition(format!(
                                    "{} ({}) asks for partition {bad} of topic {topic:?}, which has {count} partition(s)",
                                    route.name(),
                                    route.location()
                                )));
                            }
                            for partition in list {
                                spawn_partition(&mut consumers, &entry, *partition, entry.reset);
                            }
                        }
                        None => {
                            for partition in 0..count {
                                spawn_partition(&mut consumers, &entry, partition, entry.reset);
                            }
                            ungrouped.push(entry);
                        }
                    }
                }
            }
        }
        // A group whose pattern matches no topic yet, or whose handlers take their topics while
        // the service runs, still joins (with no topics).
        let mut dynamic: BTreeMap<Option<&str>, Vec<(&'static RouteDef, OffsetReset)>> =
            BTreeMap::new();
        for route in pipeline.routes() {
            for sub in route.subscribers() {
                if sub.is_dynamic() {
                    let entry = (*route, sub.offset_reset());
                    dynamic.entry(sub.group()).or_default().push(entry);
                }
                if sub.topic_pattern().is_some() || sub.is_dynamic() {
                    if let Some(group) = sub.group() {
                        groups.entry(group).or_default();
                    }
                }
            }
        }
        let dynamic_ungrouped = dynamic.remove(&None).unwrap_or_default();
        let mut subscriptions = pipeline.control().watch_subscriptions();
        // Topics subscribed while running without a group: dropping the sender stops them.
        let mut subscribed: BTreeMap<(&str, String), tokio::sync::oneshot::Sender<()>> =
            BTreeMap::new();
        let mut ungrouped_patterns = patterns.remove(&None).unwrap_or_default();
        for (group, subs) in groups {
            let settings = config.group.resolve(
                pipeline
                    .routes()
                    .iter()
                    .flat_map(|r| r.subscribers())
                    .filter(|s| s.group() == Some(group)),
            );
            settings.check(group)?;
            // An exactly-once group writes through its own transactional producer.
            let rt = match transactional.get(group) {
                Some(txn) => Arc::new(Runtime {
                    producers: Arc::new(Producers::transactional(
                        &self.shared.producers,
                        txn.clone(),
                    )),
                    txn: Some(txn.clone()),
                    pipeline: rt.pipeline.clone(),
                    config: rt.config.clone(),
                    cluster: rt.cluster.clone(),
                }),
                None => rt.clone(),
            };
            consumers.spawn(
                GroupRunner {
                    group: pipeline.topic_name(group),
                    patterns: patterns.remove(&Some(group)).unwrap_or_default(),
                    dynamic: dynamic.remove(&Some(group)).unwrap_or_default(),
                    topics: std::sync::Mutex::new(subs.into_iter().map(|(t, _)| t).collect()),
                    settings,
                    rt,
                    shutdown: inner.clone(),
                    ready: ready_tx.clone(),
                }
                .run(),
            );
        }
        for route in pipeline.routes() {
            let outputs = route.publishers().iter().map(|t| pipeline.topic_name(t));
            for topic in outputs.chain(pipeline.policy(route).dlq.clone()) {
                self.shared.producers.partition_count(&topic).await?;
            }
        }
        // Ready once every consumer knows where it starts (checked in the loop below, which
        // also sees a consumer that fails before it gets there).
        let mut waiting = consumers.len();
        let mut stop = shutdown.clone();
        let announce = |consumers: usize| {
            tracing::info!(consumers, "ready");
            pipeline.mark_ready();
        };
        if waiting == 0 {
            announce(0);
        }
        let mut refresh = tokio::time::interval_at(
            tokio::time::Instant::now() + config.metadata_max_age,
            config.metadata_max_age,
        );
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failure = None;
        loop {
            tokio::select! {
                Some(()) = ready_rx.recv(), if waiting > 0 => {
                    waiting -= 1;
                    if waiting == 0 {
                        announce(consumers.len());
                    }
                }
                () = stop.wait(), if !inner.is_triggered() => match shutdown.deadline() {
                    Some(deadline) => stop_all.trigger_by(deadline),
                    None => stop_all.trigger(),
                },
                // (A service whose handlers all wait for topics at run time has none yet.)
                joined = consumers.join_next(), if !consumers.is_empty() || dynamic_ungrouped.is_empty() || inner.is_triggered() => match joined {
                    None => break,
                    Some(Ok(Ok(()))) => {}
                    Some(Ok(Err(e))) => {
                        failure.get_or_insert(e);
                        stop_all.trigger();
                    }
                    Some(Err(e)) => {
                        tracing::error!(error = %e, "a consumer task crashed; stopping");
                        failure.get_or_insert(KafkaError::Crashed(e.to_string()));
                        stop_all.trigger();
                    }
                },
                Ok(()) = subscriptions.changed(), if !dynamic_ungrouped.is_empty() && !inner.is_triggered() => {
                    let now = subscriptions.borrow_and_update().clone();
                    let wanted = |name: &str, topic: &str| {
                        now.get(name).into_iter().flatten().any(|t| pipeline.topic_name(t) == topic)
                    };
                    // Dropping a sender stops that subscription's consumers (a revoke: the
                    // message in hand finishes, outputs are acknowledged).
                    subscribed.retain(|(name, topic), _| wanted(name, topic));
                    ungrouped.retain(|u| !dynamic_ungrouped.iter().any(|(r, _)| r.name() == u.route.name()) || wanted(u.route.name(), &u.topic));
                    for (route, reset) in &dynamic_ungrouped {
                        for topic in now.get(route.name()).into_iter().flatten() {
                            let topic = pipeline.topic_name(topic);
                            if subscribed.contains_key(&(route.name(), topic.clone())) {
                                continue;
                            }
                            self.shared.producers.declare(std::slice::from_ref(&topic));
                            let count = match self.shared.producers.partition_count(&topic).await {
                                Ok(count) => count,
                                Err(e) => {
                                    tracing::error!(handler = route.name(), topic, error = %e, "cannot subscribe the handler to the topic");
                                    continue;
                                }
                            };
                            let (removed, stop) = until_removed(inner.clone());
                            let entry = Ungrouped {
                                route,
                                topic: Arc::from(topic.as_str()),
                                reset: *reset,
                                partitions: count,
                                stop,
                            };
                            for partition in 0..count {
                                spawn_partition(&mut consumers, &entry, partition, entry.reset);
                            }
                            tracing::info!(handler = route.name(), topic, partitions = count, "consuming the subscribed topic");
                            ungrouped.push(entry);
                            subscribed.insert((route.name(), topic), removed);
                        }
                    }
                }
                _ = refresh.tick(), if (!ungrouped.is_empty() || !ungrouped_patterns.is_empty()) && !inner.is_triggered() => {
                    if !ungrouped_patterns.is_empty() {
                        // Topics created since that a pattern takes: every partition, from the
                        // beginning (as new partitions are).
                        match list_topics(&self.shared.cluster).await {
                            Ok(all) => {
                                for pattern in &mut ungrouped_patterns {
                                    for topic in all.iter().filter(|t| pattern.matcher.matches(t)) {
                                        if ungrouped.iter().any(|u: &Ungrouped| u.route.name() == pattern.route.name() && &*u.topic == topic.as_str()) {
                                            continue;
                                        }
                                        tracing::info!(topic, handler = pattern.route.name(), "a new topic matches the subscription's pattern: consuming it");
                                        ungrouped.push(Ungrouped {
                                            route: pattern.route,
                                            topic: Arc::from(topic.as_str()),
                                            reset: pattern.reset,
                                            partitions: 0,
                                            stop: inner.clone(),
                                        });
                                    }
                                }
                            }
                            Err(e) => tracing::warn!(error = %e, "listing topics for pattern subscriptions failed"),
                        }
                    }
                    let names: Vec<String> = ungrouped.iter().map(|u| u.topic.to_string()).collect();
                    let counts = self.shared.producers.lookup_partitions(&names).await;
                    for sub in &mut ungrouped {
                        let Some(&now) = counts.get(&*sub.topic) else { continue };
                        for partition in sub.partitions..now {
                            tracing::info!(topic = &*sub.topic, partition, handler = sub.route.name(), "new partition: consuming it from its beginning");
                            spawn_partition(&mut consumers, sub, partition, OffsetReset::Earliest);
                        }
                        sub.partitions = sub.partitions.max(now);
                    }
                }
            }
        }
        self.shared.producers.flush().await;
        if let Some(e) = failure {
            return Err(e);
        }
        tracing::info!("stopped");
        Ok(())
    }
}

/// A subscription without a consumer group to every partition of a topic.
struct Ungrouped {
    route: &'static RouteDef,
    topic: Arc<str>,
    reset: OffsetReset,
    /// Partitions consumed so far.
    partitions: i32,
    /// What stops its consumers: the service's stop, or (subscribed while running) also its
    /// unsubscribe.
    stop: Shutdown,
}

impl Publish for KafkaBroker {
    fn send(&self, msg: OutgoingMessage) -> BoxFuture<'_, faststream_core::Result<()>> {
        Box::pin(self.send_message(msg))
    }

    fn request(
        &self,
        msg: OutgoingMessage,
        timeout: Duration,
    ) -> BoxFuture<'_, faststream_core::Result<Message>> {
        Box::pin(self.request_message(msg, timeout))
    }
}

impl Transport for KafkaBroker {
    fn serve(
        &self,
        pipeline: Arc<Pipeline>,
        shutdown: Shutdown,
    ) -> BoxFuture<'_, faststream_core::Result<()>> {
        Box::pin(async move { Ok(self.serve_routes(pipeline, shutdown).await?) })
    }

    fn server(&self) -> Option<faststream_core::asyncapi::Server> {
        let config = &self.shared.config;
        Some(faststream_core::asyncapi::Server {
            host: config.brokers.first()?.clone(),
            protocol: match config.security.tls() {
                Some(_) => "kafka-secure",
                None => "kafka",
            },
        })
    }
}

/// Connects to a bootstrap broker (TLS and SASL included); the first success wins, else the
/// most telling failure (a TLS or login failure over an unreachable address).
async fn probe(config: &Config) -> Result<(), crate::protocol::ConnError> {
    let mut last = None;
    for addr in &config.brokers {
        match Conn::connect(addr, config, config.connect_timeout).await {
            Ok(_) => return Ok(()),
            Err(e) if e.is_fatal() => return Err(e),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or(crate::protocol::ConnError::Setup(
        "no bootstrap address given".into(),
    )))
}

/// [`probe`] as the service's first contact with the cluster: its failure is a
/// [`KafkaError::Connect`] naming the bootstrap addresses.
async fn connect(config: &Config) -> Result<(), KafkaError> {
    let brokers = config.brokers.join(",");
    let fail = |reason: String| KafkaError::Connect {
        brokers: brokers.clone(),
        timeout: config.connect_timeout,
        reason,
    };
    if config.brokers.is_empty() {
        return Err(fail("no bootstrap address given".into()));
    }
    probe(config).await.map_err(|e| fail(e.to_string()))?;
    tracing::info!(brokers, "connected");
    Ok(())
}

/// A route's retry topics, with the app's prefix.
fn retry_topic_names<'p>(
    pipeline: &'p Pipeline,
    route: &RouteDef,
) -> impl Iterator<Item = String> + 'p {
    pipeline
        .policy(route)
        .retry_topics
        .iter()
        .map(|t| t.topic.clone())
}

/// A shutdown for consumers of a topic subscribed while running: it fires with the service's
/// (and its deadline), or when the returned sender is dropped (unsubscribed).
fn until_removed(mut service: Shutdown) -> (tokio::sync::oneshot::Sender<()>, Shutdown) {
    let (trigger, stop) = Shutdown::new();
    let (removed, mut gone) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        tokio::select! {
            () = service.wait() => match service.deadline() {
                Some(deadline) => trigger.trigger_by(deadline),
                None => trigger.trigger(),
            },
            _ = &mut gone => trigger.trigger(),
        }
    });
    (removed, stop)
}
