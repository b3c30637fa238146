//! Topic names and existence: Kafka's naming rule, listing, and creation under the
//! missing-topics policy.

use std::time::Duration;

use rskafka::client::Client;

use faststream_core::TopicNameProblem;

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

pub(crate) async fn list_topics(client: &Client) -> Result<Vec<String>, KafkaError> {
    client
        .list_topics()
        .await
        .map(|ts| ts.into_iter().map(|t| t.name).collect())
        .map_err(|source| KafkaError::Client {
            context: "listing topics".into(),
            source: Box::new(source),
        })
}

/// The partition count of `topic`, creating the topic if it is missing and the policy allows.
pub(crate) async fn ensure_topic(
    client: &Client,
    config: &Config,
    topic: &str,
    declared: bool,
) -> Result<i32, KafkaError> {
    ensure(client, config, topic, declared, None).await
}

/// [`ensure_topic`] for a topic the routes declare that must have `partitions` if created.
pub(crate) async fn ensure_topic_partitions(
    client: &Client,
    config: &Config,
    topic: &str,
    partitions: i32,
) -> Result<i32, KafkaError> {
    ensure(client, config, topic, true, Some(partitions)).await
}

async fn ensure(
    client: &Client,
    config: &Config,
    topic: &str,
    declared: bool,
    partitions: Option<i32>,
) -> Result<i32, KafkaError> {
    let find = |topics: Vec<rskafka::topic::Topic>| {
        topics
            .into_iter()
            .find(|t| t.name == topic)
            .map(|t| t.partitions.len() as i32)
    };
    let err = |source: rskafka::client::error::Error| KafkaError::Client {
        context: format!("metadata of topic {topic:?}"),
        source: Box::new(source),
    };
    if let Some(n) = find(client.list_topics().await.map_err(err)?) {
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
    let controller = client.controller_client().map_err(err)?;
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
    for _ in 0..50 {
        if let Some(n) = find(client.list_topics().await.map_err(err)?) {
            if n > 0 {
                return Ok(n);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(KafkaError::MissingTopics {
        topics: vec![topic.to_owned()],
    })
}

/// A pattern subscription: its route, which topic names it takes, where a topic it adds starts.
#[derive(Debug, Clone)]
pub(crate) struct TopicPattern {
    pub(crate) route: &'static faststream_core::RouteDef,
    pub(crate) matcher: faststream_core::TopicMatcher,
    pub(crate) reset: faststream_core::OffsetReset,
}
