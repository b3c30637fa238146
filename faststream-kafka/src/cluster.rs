//! What one service shares to reach the cluster: the partition leaders (a metadata cache) and
//! one [`Link`] per broker, so that the I/O a service costs grows with its brokers, not with
//! the partitions it reads and writes.
//!
//! Leaders are looked up once for every partition of a topic (one Metadata request for all
//! the topics known, however many partitions ask at once) and kept until a request about a
//! partition fails in a way that says its leader may have moved ([`Cluster::forget`]); then
//! the next lookup asks again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{MetadataRequest, TopicName};
use kafka_protocol::protocol::StrBytes;

use crate::config::Config;
use crate::error::{lock, partition_error, Cause, FetchError};
use crate::link::Link;
use crate::protocol::Conn;

/// The leaders of one topic's partitions, by partition: broker address and leader epoch
/// (`None`: not known, looked up on the next request).
type TopicLeaders = Vec<Option<Leader>>;

/// Where a partition is read and written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Leader {
    /// The leader's address (`host:port`).
    pub(crate) addr: Arc<str>,
    /// The leader epoch Metadata named (-1 when the broker does not say).
    pub(crate) epoch: i32,
}

/// The service's view of the cluster and its links to the brokers.
#[derive(Debug)]
pub(crate) struct Cluster {
    config: Arc<Config>,
    /// The connection Metadata requests go out on; held while one lookup runs, so that
    /// partitions asking at once wait for it instead of asking again.
    lookup: tokio::sync::Mutex<Option<Conn>>,
    state: Mutex<State>,
    /// The bytes fetched and not yet taken by their consumers, for all partitions
    /// (`max_fetched_bytes`).
    fetched: Arc<tokio::sync::Semaphore>,
}

#[derive(Debug, Default)]
struct State {
    leaders: HashMap<Arc<str>, TopicLeaders>,
    /// Counts the lookups done, to tell whether one finished while a caller waited.
    lookups: u64,
    /// The topics the last lookup asked about, and why it failed for each it failed for (all
    /// of them when the request itself failed): a caller that waited for it takes its answer
    /// instead of asking again, so that an unreachable cluster is not asked once per partition.
    covered: Vec<Arc<str>>,
    refused: HashMap<Arc<str>, FetchError>,
    links: HashMap<Arc<str>, Link>,
}

impl Cluster {
    pub(crate) fn new(config: Arc<Config>) -> Self {
        Self {
            fetched: Arc::new(tokio::sync::Semaphore::new(config.max_fetched_bytes)),
            config,
            lookup: tokio::sync::Mutex::new(None),
            state: Mutex::default(),
        }
    }

    /// The budget of fetched bytes waiting for their consumers (`max_fetched_bytes`).
    pub(crate) fn fetch_budget(&self) -> &Arc<tokio::sync::Semaphore> {
        &self.fetched
    }

    pub(crate) fn config(&self) -> &Arc<Config> {
        &self.config
    }

    /// The link to `addr`, started on first use (it lives as long as this service).
    pub(crate) fn link(&self, addr: &Arc<str>) -> Link {
        let mut state = lock(&self.state);
        state
            .links
            .entry(addr.clone())
            .or_insert_with(|| Link::start(self.config.clone(), addr.clone()))
            .clone()
    }

    fn cached(&self, topic: &str, partition: i32) -> (Option<Leader>, u64) {
        let state = lock(&self.state);
        let leader = state
            .leaders
            .get(topic)
            .and_then(|t| t.get(usize::try_from(partition).ok()?).cloned().flatten());
        (leader, state.lookups)
    }

    /// The leader of `topic`'s `partition`: from the cache, else looked up.
    pub(crate) async fn leader(&self, topic: &str, partition: i32) -> Result<Leader, FetchError> {
        let (cached, seen) = self.cached(topic, partition);
        if let Some(leader) = cached {
            return Ok(leader);
        }
        let mut conn = self.lookup.lock().await;
        // Another caller's lookup may have found it meanwhile.
        let (cached, now) = self.cached(topic, partition);
        if let Some(leader) = cached {
            return Ok(leader);
        }
        let what = format!("partition {partition} of topic {topic:?}");
        if now != seen {
            let state = lock(&self.state);
            if state.covered.iter().any(|t| &**t == topic) {
                return Err(state
                    .refused
                    .get(topic)
                    .cloned()
                    .unwrap_or(FetchError::Retriable(Cause::NoLeader { what })));
            }
        }
        self.look_up(&mut conn, topic).await?;
        match self.cached(topic, partition).0 {
            Some(leader) => Ok(leader),
            None => Err(FetchError::Retriable(Cause::NotInMetadata { what })),
        }
    }

    /// Forgets `topic`'s `partition`'s leader after an error that says it may have moved.
    pub(crate) fn forget(&self, topic: &str, partition: i32) {
        let mut state = lock(&self.state);
        if let Some(slot) = state
            .leaders
            .get_mut(topic)
            .and_then(|t| t.get_mut(usize::try_from(partition).ok()?))
        {
            *slot = None;
        }
    }

    /// One Metadata request for `topic` and every topic known, through the lookup connection
    /// (connected to the first bootstrap broker that answers).
    async fn look_up(&self, conn: &mut Option<Conn>, topic: &str) -> Result<(), FetchError> {
        let mut topics: Vec<Arc<str>> = lock(&self.state).leaders.keys().cloned().collect();
        if !topics.iter().any(|t| &**t == topic) {
            topics.push(Arc::from(topic));
        }
        let res = self.request(conn, Some(&topics)).await;
        let mut state = lock(&self.state);
        state.lookups += 1;
        state.refused.clear();
        let found = match res {
            Ok(found) => found,
            Err(e) => {
                *conn = None;
                state.refused = topics.iter().map(|t| (t.clone(), e.clone())).collect();
                state.covered = topics;
                return Err(e);
            }
        };
        let mut mine = Ok(());
        for (name, leaders) in found {
            match leaders {
                Ok(leaders) => {
                    state.leaders.insert(name, leaders);
                }
                Err(e) => {
                    if &*name == topic {
                        mine = Err(e.clone());
                    }
                    state.refused.insert(name, e);
                }
            }
        }
        state.covered = topics;
        mine
    }

    /// Every topic of the cluster with its partition count (one Metadata request for all
    /// topics, on the lookup connection). The leaders it names replace the cached ones of the
    /// topics already known, so a periodic listing also refreshes them.
    pub(crate) async fn topics(&self) -> Result<Vec<(Arc<str>, i32)>, FetchError> {
        let mut conn = self.lookup.lock().await;
        let found = match self.request(&mut conn, None).await {
            Ok(found) => found,
            Err(e) => {
                *conn = None;
                return Err(e);
            }
        };
        let mut state = lock(&self.state);
        let mut topics = Vec::with_capacity(found.len());
        for (name, leaders) in found {
            // (A topic the broker reports with an error, such as one being deleted, is left out.)
            let Ok(leaders) = leaders else {
                continue;
            };
            if leaders.is_empty() {
                continue;
            }
            topics.push((name.clone(), leaders.len() as i32));
            if let Some(known) = state.leaders.get_mut(&name) {
                *known = leaders;
            }
        }
        Ok(topics)
    }

    /// The Metadata request for `topics` (all of the cluster's with `None`): each topic's
    /// leaders, or why the broker refused it.
    async fn request(
        &self,
        conn: &mut Option<Conn>,
        topics: Option<&[Arc<str>]>,
    ) -> Result<Vec<(Arc<str>, Result<TopicLeaders, FetchError>)>, FetchError> {
        let config = &self.config;
        if conn.as_ref().is_some_and(Conn::is_broken) {
            *conn = None;
        }
        if conn.is_none() {
            let timeout = config.connect_timeout.min(config.request_timeout);
            let mut last = None;
            for addr in &config.brokers {
                match Conn::connect(addr, config, timeout).await {
                    Ok(c) => {
                        *conn = Some(c);
                        break;
                    }
                    Err(e) => last = Some(FetchError::from(e)),
                }
            }
            if conn.is_none() {
                return Err(last.unwrap_or(FetchError::Fatal(Cause::NoBootstrap)));
            }
        }
        let c = conn.as_mut().expect("connected above");
        let version = c.version::<MetadataRequest>(12)?;
        let mut req = MetadataRequest::default();
        req.topics = topics.map(|topics| {
            topics
                .iter()
                .map(|t| {
                    let mut rt = MetadataRequestTopic::default();
                    rt.name = Some(TopicName(StrBytes::from_string(t.to_string())));
                    rt
                })
                .collect()
        });
        req.allow_auto_topic_creation = false;
        let resp = c.send(&req, version).await?;
        let brokers: HashMap<i32, Arc<str>> = resp
            .brokers
            .iter()
            .map(|b| (b.node_id.0, Arc::from(format!("{}:{}", b.host, b.port))))
            .collect();
        let mut found = Vec::new();
        for t in &resp.topics {
            let Some(name) = t.name.as_deref() else {
                continue;
            };
            let name = Arc::<str>::from(&**name);
            if let Err(e) = partition_error(t.error_code, || format!("topic {name:?}")) {
                found.push((name, Err(e)));
                continue;
            }
            let mut leaders: TopicLeaders = Vec::new();
            for p in &t.partitions {
                let Ok(i) = usize::try_from(p.partition_index) else {
                    continue;
                };
                if leaders.len() <= i {
                    leaders.resize(i + 1, None);
                }
                leaders[i] = brokers.get(&p.leader_id.0).map(|addr| Leader {
                    addr: addr.clone(),
                    epoch: p.leader_epoch,
                });
            }
            found.push((name, Ok(leaders)));
        }
        Ok(found)
    }
}
