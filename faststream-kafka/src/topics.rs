//! Topic names and existence: Kafka's naming rule, listing, and creation under the
//! missing-topics policy.

use std::sync::Arc;
use std::time::Duration;

use rskafka::client::{Client, ClientBuilder};
use rskafka::BackoffConfig;

use faststream_core::TopicNameProblem;

use crate::cluster::Cluster;
use crate::config::Config;
use crate::error::KafkaError;

/// Why `name` cannot be a Kafka topic name (the rule of [`TopicNameProblem`], which the macros
/// also check at compile time), with the name.
pub(crate) fn invalid_topic_name(name: &str) -> Option<String> {
    TopicNameProblem::of(name).map(|problem| match problem {
        TopicNameProblem::Empty => problem.to_string(),
        _ => format!("topic name {name:?}: {problem}"),
    })
}

/// The names of every topic of the cluster (from its metadata, on the service's own
/// connection).
pub(crate) async fn list_topics(cluster: &Cluster) -> Result<Vec<String>, KafkaError> {
    Ok(all_topics(cluster)
        .await?
        .into_iter()
        .map(|(name, _)| name.to_string())
        .collect())
}

async fn all_topics(cluster: &Cluster) -> Result<Vec<(Arc<str>, i32)>, KafkaError> {
    cluster.topics().await.map_err(|e| KafkaError::Client {
        context: "listing topics".into(),
        source: e.to_string().into(),
    })
}

/// The partition count of `topic`, creating the topic if it is missing and the policy allows.
pub(crate) async fn ensure_topic(
    cluster: &Cluster,
    topic: &str,
    declared: bool,
) -> Result<i32, KafkaError> {
    ensure(cluster, topic, declared, None).await
}

/// [`ensure_topic`] for a topic the routes declare that must have `partitions` if created.
pub(crate) async fn ensure_topic_partitions(
    cluster: &Cluster,
    topic: &str,
    partitions: i32,
) -> Result<i32, KafkaError> {
    ensure(cluster, topic, true, Some(partitions)).await
}

async fn ensure(
    cluster: &Cluster,
    topic: &str,
    declared: bool,
    partitions: Option<i32>,
) -> Result<i32, KafkaError> {
    let config = cluster.config();
    let find = |topics: Vec<(Arc<str>, i32)>| {
        topics
            .into_iter()
            .find(|(name, _)| &**name == topic)
            .map(|(_, n)| n)
    };
    if let Some(n) = find(all_topics(cluster).await?) {
        return Ok(n);
    }
    let Some((default_partitions, replication_factor)) = config.missing_topics.creates(declared)
    else {
        return Err(KafkaError::MissingTopics {
            topics: vec![topic.to_owned()],
        });
    };
    let partitions = partitions.unwrap_or(default_partitions);
    if let Some(reason) = invalid_topic_name(topic) {
        return Err(KafkaError::InvalidTopic(reason));
    }
    let err = |source: rskafka::client::error::Error| KafkaError::Client {
        context: format!("creating topic {topic:?}"),
        source: Box::new(source),
    };
    // An administration client for this creation only: its connections close with it.
    let admin = connect(config).await?;
    let controller = admin.controller_client().map_err(err)?;
    match controller
        .create_topic(topic, partitions, replication_factor, 5_000)
        .await
    {
        Ok(()) => tracing::warn!(topic, partitions, "topic did not exist; created it"),
        // Someone else may have created it meanwhile.
        Err(e) => {
            tracing::debug!(topic, error = %e, "create topic failed; checking whether it exists")
        }
    }
    drop(controller);
    drop(admin);
    for _ in 0..50 {
        if let Some(n) = find(all_topics(cluster).await?) {
            return Ok(n);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(KafkaError::MissingTopics {
        topics: vec![topic.to_owned()],
    })
}

/// An rskafka client for administration (topic creation), connected to the bootstrap brokers
/// with the service's security settings within the connect timeout.
async fn connect(config: &Config) -> Result<Client, KafkaError> {
    let brokers = config.brokers.join(",");
    let fail = |reason: String| KafkaError::Connect {
        brokers: brokers.clone(),
        timeout: config.connect_timeout,
        reason,
    };
    // rskafka retries connection errors forever by default: bound it.
    let backoff = BackoffConfig {
        init_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_secs(2),
        base: 2.0,
        deadline: Some(config.request_timeout),
    };
    let mut builder = ClientBuilder::new(config.brokers.clone())
        .client_id(config.client_id.as_str())
        .backoff_config(backoff);
    if let Some(tls) = config.tls_client_config()? {
        builder = builder.tls_config(tls);
    }
    if let Some(sasl) = config.security.sasl() {
        builder = builder.sasl_config(sasl.for_client());
    }
    match tokio::time::timeout(config.connect_timeout, builder.build()).await {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(e)) => Err(fail(e.to_string())),
        Err(_) => Err(fail("no broker answered".into())),
    }
}

/// A pattern subscription: its route, which topic names it takes, where a topic it adds starts.
#[derive(Debug, Clone)]
pub(crate) struct TopicPattern {
    pub(crate) route: &'static faststream_core::RouteDef,
    pub(crate) matcher: faststream_core::TopicMatcher,
    pub(crate) reset: faststream_core::OffsetReset,
}
