//! Consumer groups on Kafka's classic group protocol, with the standard `consumer` protocol type
//! so members of other client libraries can share a group with ours.
//!
//! One [`GroupRunner`] per group id: find the coordinator, join (the leader computes the
//! assignment with the range or round-robin assignor), sync, fetch committed offsets, run one
//! partition consumer per assigned partition, heartbeat, commit done offsets periodically. On a
//! rebalance, an unknown member, an illegal generation or a coordinator move: stop the partition
//! consumers (each finishes the message in hand and waits for its outputs' acks), commit what is
//! done, rejoin. On shutdown: the same, then LeaveGroup.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use faststream_core::{Assignor, OffsetReset, Pipeline, RouteDef, Shutdown};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::consumer_protocol_assignment::TopicPartition as AssignedPartitions;
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::leave_group_request::MemberIdentity;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::{
    OffsetFetchRequestGroup, OffsetFetchRequestTopic, OffsetFetchRequestTopics,
};
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::{
    ConsumerProtocolAssignment, ConsumerProtocolSubscription, FindCoordinatorRequest, GroupId,
    HeartbeatRequest, JoinGroupRequest, LeaveGroupRequest, OffsetCommitRequest, OffsetFetchRequest,
    SyncGroupRequest, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use rskafka::client::Client;
use tokio::sync::mpsc;

use crate::broker::Config;
use crate::consume::PartitionConsumer;
use crate::produce::Producers;
use crate::protocol::{decode_versioned, encode_versioned, Conn, ConnError};

/// Group timings and assignor, resolved from route options and broker defaults.
#[derive(Debug, Clone, Copy)]
pub(crate) struct GroupSettings {
    pub(crate) session_timeout: Duration,
    pub(crate) heartbeat_interval: Duration,
    pub(crate) rebalance_timeout: Duration,
    pub(crate) commit_interval: Duration,
    pub(crate) assignor: Assignor,
}

/// One subscription served by a group member.
#[derive(Debug, Clone)]
pub(crate) struct GroupTopic {
    pub(crate) route: &'static RouteDef,
    pub(crate) topic: String,
    pub(crate) reset: OffsetReset,
}

/// Runs one consumer group member for every subscription with the same group id.
pub(crate) struct GroupRunner {
    pub(crate) group: String,
    pub(crate) topics: Vec<GroupTopic>,
    pub(crate) settings: GroupSettings,
    pub(crate) client: Arc<Client>,
    pub(crate) producers: Arc<Producers>,
    pub(crate) pipeline: Arc<Pipeline>,
    pub(crate) config: Arc<Config>,
    pub(crate) shutdown: Shutdown,
    pub(crate) ready: mpsc::UnboundedSender<()>,
}

/// Why a generation ended.
enum Ended {
    Shutdown,
    Rejoin { reset_member: bool },
}

/// A member's partitions in one generation.
struct Generation {
    id: i32,
    member_id: String,
    assigned: Vec<(String, i32)>,
}

struct Running {
    stop: faststream_core::ShutdownTrigger,
    tasks: tokio::task::JoinSet<()>,
    commit_requests: mpsc::Receiver<tokio::sync::oneshot::Sender<()>>,
    progress: Vec<((String, i32), Arc<AtomicI64>)>,
    committed: HashMap<(String, i32), i64>,
}

impl GroupRunner {
    pub(crate) async fn run(self) {
        let mut member_id = String::new();
        let mut ready_sent = false;
        let mut backoff = Duration::from_millis(200);
        let mut shutdown = self.shutdown.clone();
        while !self.shutdown.is_triggered() {
            let mut conn = tokio::select! {
                c = self.coordinator() => match c {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(group = self.group, error = %e, retry_in = ?backoff, "cannot reach the group coordinator; retrying");
                        tokio::select! {
                            () = tokio::time::sleep(backoff) => {},
                            () = shutdown.wait() => break,
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                        continue;
                    }
                },
                () = shutdown.wait() => break,
            };
            let generation = tokio::select! {
                g = self.join(&mut conn, &mut member_id) => g,
                () = shutdown.wait() => break,
            };
            let generation = match generation {
                Ok(g) => g,
                Err(JoinError::Rejoin { reset_member }) => {
                    if reset_member {
                        member_id.clear();
                    }
                    continue;
                }
                Err(JoinError::Failed(e)) => {
                    tracing::warn!(group = self.group, error = %e, retry_in = ?backoff, "joining the group failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            backoff = Duration::from_millis(200);
            tracing::info!(
                group = self.group,
                generation = generation.id,
                member = generation.member_id,
                partitions = ?generation.assigned,
                "assigned"
            );
            let running = match self.start(&mut conn, &generation).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(group = self.group, error = %e, "fetching committed offsets failed; rejoining");
                    continue;
                }
            };
            if let Some(hook) = &self.config.hooks.assigned {
                hook(&self.group, &generation.assigned);
            }
            if !ready_sent {
                let _ = self.ready.send(());
                ready_sent = true;
            }
            let ended = self.serve_generation(&mut conn, &generation, running).await;
            if let Some(hook) = &self.config.hooks.revoked {
                hook(&self.group, &generation.assigned);
            }
            match ended {
                Ended::Shutdown => {
                    self.leave(&mut conn, &generation.member_id).await;
                    return;
                }
                Ended::Rejoin { reset_member } => {
                    if reset_member {
                        member_id.clear();
                    }
                }
            }
        }
        if !ready_sent {
            let _ = self.ready.send(());
        }
    }

    /// Finds the coordinator through any bootstrap broker and connects to it.
    async fn coordinator(&self) -> Result<Conn, ConnError> {
        let timeout = self.config.request_timeout.min(Duration::from_secs(10));
        let mut last = None;
        for addr in &self.config.brokers {
            let mut conn = match Conn::connect(addr, &self.config.client_id, timeout).await {
                Ok(c) => c,
                Err(e) => {
                    last = Some(e);
                    continue;
                }
            };
            let version = conn.version::<FindCoordinatorRequest>(4)?;
            let mut req = FindCoordinatorRequest::default();
            let key = StrBytes::from_string(self.group.clone());
            if version >= 4 {
                req.coordinator_keys = vec![key];
            } else {
                req.key = key;
            }
            let resp = conn.send(&req, version).await?;
            let (code, host, port) = match resp.coordinators.first() {
                Some(c) if version >= 4 => (c.error_code, c.host.to_string(), c.port),
                _ => (resp.error_code, resp.host.to_string(), resp.port),
            };
            if let Some(err) = ResponseError::try_from_code(code) {
                return Err(ConnError::Protocol {
                    addr: addr.clone(),
                    reason: format!("FindCoordinator for group {:?}: {err}", self.group),
                });
            }
            let coord = format!("{host}:{port}");
            if coord == *addr {
                return Ok(conn);
            }
            return Conn::connect(&coord, &self.config.client_id, timeout).await;
        }
        Err(last.unwrap_or(ConnError::Protocol {
            addr: String::new(),
            reason: "no bootstrap address".into(),
        }))
    }

    fn topic_names(&self) -> Vec<String> {
        let set: BTreeSet<&str> = self.topics.iter().map(|t| t.topic.as_str()).collect();
        set.into_iter().map(str::to_owned).collect()
    }

    async fn join(&self, conn: &mut Conn, member_id: &mut String) -> Result<Generation, JoinError> {
        let s = self.settings;
        let subscription = {
            let mut sub = ConsumerProtocolSubscription::default();
            sub.topics = self
                .topic_names()
                .into_iter()
                .map(StrBytes::from_string)
                .collect();
            encode_versioned(&sub, 0)
        };
        let version = conn.version::<JoinGroupRequest>(9)?;
        for _attempt in 0..2 {
            let mut req = JoinGroupRequest::default();
            req.group_id = GroupId(StrBytes::from_string(self.group.clone()));
            req.session_timeout_ms = ms(s.session_timeout);
            req.rebalance_timeout_ms = ms(s.rebalance_timeout);
            req.member_id = StrBytes::from_string(member_id.clone());
            req.protocol_type = StrBytes::from_static_str("consumer");
            // Both assignors, the preferred one first: the coordinator picks one every member
            // supports, so members of other client libraries can join.
            let other = match s.assignor {
                Assignor::Range => Assignor::RoundRobin,
                Assignor::RoundRobin => Assignor::Range,
            };
            req.protocols = [s.assignor, other]
                .into_iter()
                .map(|a| {
                    let mut protocol = JoinGroupRequestProtocol::default();
                    protocol.name = StrBytes::from_static_str(a.protocol_name());
                    protocol.metadata = subscription.clone();
                    protocol
                })
                .collect();
            // The coordinator holds JoinGroup until the rebalance completes.
            let resp = conn.send(&req, version).await?;
            match ResponseError::try_from_code(resp.error_code) {
                None => {}
                Some(ResponseError::MemberIdRequired) => {
                    *member_id = resp.member_id.to_string();
                    continue;
                }
                Some(e) => return Err(rejoin_or_fail(e, "JoinGroup")),
            }
            *member_id = resp.member_id.to_string();
            let generation = resp.generation_id;
            let protocol_name = resp
                .protocol_name
                .as_ref()
                .map_or(s.assignor.protocol_name().to_owned(), |p| p.to_string());
            let assignments = if resp.leader == resp.member_id {
                let members: Vec<(String, Vec<String>)> = resp
                    .members
                    .iter()
                    .map(|m| {
                        let topics =
                            decode_versioned::<ConsumerProtocolSubscription>(m.metadata.clone())
                                .map(|s| s.topics.iter().map(|t| t.to_string()).collect())
                                .unwrap_or_default();
                        (m.member_id.to_string(), topics)
                    })
                    .collect();
                self.leader_assign(&members, &protocol_name).await?
            } else {
                Vec::new()
            };
            let sync_version = conn.version::<SyncGroupRequest>(5)?;
            let mut sync = SyncGroupRequest::default();
            sync.group_id = GroupId(StrBytes::from_string(self.group.clone()));
            sync.generation_id = generation;
            sync.member_id = StrBytes::from_string(member_id.clone());
            sync.protocol_type = Some(StrBytes::from_static_str("consumer"));
            sync.protocol_name = Some(StrBytes::from_string(protocol_name));
            sync.assignments = assignments
                .into_iter()
                .map(|(member, parts)| {
                    let mut a = SyncGroupRequestAssignment::default();
                    a.member_id = StrBytes::from_string(member);
                    a.assignment = encode_assignment(&parts);
                    a
                })
                .collect();
            let resp = conn.send(&sync, sync_version).await?;
            if let Some(e) = ResponseError::try_from_code(resp.error_code) {
                return Err(rejoin_or_fail(e, "SyncGroup"));
            }
            let mut assigned = Vec::new();
            if let Some(a) = decode_versioned::<ConsumerProtocolAssignment>(resp.assignment) {
                for tp in a.assigned_partitions {
                    for p in tp.partitions {
                        assigned.push((tp.topic.0.to_string(), p));
                    }
                }
            }
            assigned.sort();
            return Ok(Generation {
                id: generation,
                member_id: member_id.clone(),
                assigned,
            });
        }
        Err(JoinError::Failed(
            "the coordinator kept asking for a member id".into(),
        ))
    }

    /// The leader's assignment: partitions of every subscribed topic spread over the members.
    async fn leader_assign(
        &self,
        members: &[(String, Vec<String>)],
        protocol: &str,
    ) -> Result<Vec<(String, Vec<(String, i32)>)>, JoinError> {
        let topics: BTreeSet<&str> = members
            .iter()
            .flat_map(|(_, t)| t.iter().map(String::as_str))
            .collect();
        let mut partitions = BTreeMap::new();
        for topic in topics {
            let n = self
                .producers
                .partition_count(&self.client, topic)
                .await
                .map_err(|e| JoinError::Failed(e.to_string()))?;
            partitions.insert(topic.to_owned(), n);
        }
        let assignor = if protocol == "roundrobin" {
            Assignor::RoundRobin
        } else {
            Assignor::Range
        };
        Ok(assign(assignor, members, &partitions))
    }

    /// Fetches committed offsets and starts one consumer per assigned partition.
    async fn start(&self, conn: &mut Conn, generation: &Generation) -> Result<Running, ConnError> {
        let committed = self.fetch_offsets(conn, &generation.assigned).await?;
        let (stop, gen_shutdown) = Shutdown::new();
        let mut tasks = tokio::task::JoinSet::new();
        let mut progress = Vec::new();
        let (ready_tx, _ready_rx) = mpsc::unbounded_channel();
        let (commit_tx, commit_rx) = mpsc::channel(64);
        for (topic, partition) in &generation.assigned {
            let Some(sub) = self.topics.iter().find(|t| t.topic == *topic) else {
                continue;
            };
            let start = committed
                .get(&(topic.clone(), *partition))
                .copied()
                .filter(|o| *o >= 0);
            let done = Arc::new(AtomicI64::new(start.unwrap_or(-1)));
            progress.push(((topic.clone(), *partition), done.clone()));
            tasks.spawn(
                PartitionConsumer {
                    client: self.client.clone(),
                    producers: self.producers.clone(),
                    pipeline: self.pipeline.clone(),
                    route: sub.route,
                    topic: Arc::from(topic.as_str()),
                    partition: *partition,
                    reset: sub.reset,
                    start,
                    progress: Some(done),
                    commit_now: Some(commit_tx.clone()),
                    held: None,
                    config: self.config.clone(),
                    shutdown: gen_shutdown.clone(),
                    ready: ready_tx.clone(),
                }
                .run(),
            );
        }
        Ok(Running {
            stop,
            tasks,
            commit_requests: commit_rx,
            progress,
            committed: committed.into_iter().filter(|(_, o)| *o >= 0).collect(),
        })
    }

    async fn serve_generation(
        &self,
        conn: &mut Conn,
        generation: &Generation,
        mut running: Running,
    ) -> Ended {
        let mut heartbeat = tokio::time::interval(self.settings.heartbeat_interval);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut commit = tokio::time::interval(self.settings.commit_interval);
        commit.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut shutdown = self.shutdown.clone();
        let ended = loop {
            tokio::select! {
                () = shutdown.wait() => break Ended::Shutdown,
                _ = heartbeat.tick() => {
                    match self.heartbeat(conn, generation).await {
                        Ok(()) => {}
                        Err(HeartbeatEnd::Rebalance) => {
                            tracing::info!(group = self.group, generation = generation.id, "rebalance: revoking partitions");
                            break Ended::Rejoin { reset_member: false };
                        }
                        Err(HeartbeatEnd::Fenced(e)) => {
                            tracing::warn!(group = self.group, generation = generation.id, error = %e, "no longer a member: rejoining");
                            break Ended::Rejoin { reset_member: true };
                        }
                        Err(HeartbeatEnd::Failed(e)) => {
                            tracing::warn!(group = self.group, error = %e, "heartbeat failed: finding the coordinator again");
                            break Ended::Rejoin { reset_member: false };
                        }
                    }
                }
                _ = commit.tick() => {
                    if let Err(e) = self.commit(conn, generation, &mut running).await {
                        tracing::warn!(group = self.group, error = %e, "offset commit failed");
                    }
                }
                Some(reply) = running.commit_requests.recv() => {
                    if let Err(e) = self.commit(conn, generation, &mut running).await {
                        tracing::warn!(group = self.group, error = %e, "offset commit failed");
                    }
                    let _ = reply.send(());
                }
            }
        };
        // Revoke: stop fetching, finish the message in hand, wait for acks, commit.
        running.stop.trigger();
        loop {
            tokio::select! {
                joined = running.tasks.join_next() => if joined.is_none() { break },
                // A consumer of an `ack = "first"` route may be waiting for its commit.
                Some(reply) = running.commit_requests.recv() => {
                    let _ = self.commit(conn, generation, &mut running).await;
                    let _ = reply.send(());
                }
            }
        }
        if let Err(e) = self.commit(conn, generation, &mut running).await {
            tracing::warn!(group = self.group, error = %e, "final offset commit failed; those messages will be redelivered");
        }
        ended
    }

    async fn heartbeat(
        &self,
        conn: &mut Conn,
        generation: &Generation,
    ) -> Result<(), HeartbeatEnd> {
        let version = conn
            .version::<HeartbeatRequest>(4)
            .map_err(|e| HeartbeatEnd::Failed(e.to_string()))?;
        let mut req = HeartbeatRequest::default();
        req.group_id = GroupId(StrBytes::from_string(self.group.clone()));
        req.generation_id = generation.id;
        req.member_id = StrBytes::from_string(generation.member_id.clone());
        let resp = conn
            .send(&req, version)
            .await
            .map_err(|e| HeartbeatEnd::Failed(e.to_string()))?;
        match ResponseError::try_from_code(resp.error_code) {
            None => Ok(()),
            Some(ResponseError::RebalanceInProgress) => Err(HeartbeatEnd::Rebalance),
            Some(
                e @ (ResponseError::UnknownMemberId
                | ResponseError::IllegalGeneration
                | ResponseError::FencedInstanceId),
            ) => Err(HeartbeatEnd::Fenced(e.to_string())),
            Some(e) => Err(HeartbeatEnd::Failed(e.to_string())),
        }
    }

    /// Commits every partition whose done offset moved since the last commit.
    async fn commit(
        &self,
        conn: &mut Conn,
        generation: &Generation,
        running: &mut Running,
    ) -> Result<(), ConnError> {
        let mut by_topic: BTreeMap<String, Vec<(i32, i64)>> = BTreeMap::new();
        for ((topic, partition), done) in &running.progress {
            let offset = done.load(Ordering::Acquire);
            if offset < 0 || running.committed.get(&(topic.clone(), *partition)) == Some(&offset) {
                continue;
            }
            by_topic
                .entry(topic.clone())
                .or_default()
                .push((*partition, offset));
        }
        if by_topic.is_empty() {
            return Ok(());
        }
        let version = conn.version::<OffsetCommitRequest>(8)?;
        let mut req = OffsetCommitRequest::default();
        req.group_id = GroupId(StrBytes::from_string(self.group.clone()));
        req.generation_id_or_member_epoch = generation.id;
        req.member_id = StrBytes::from_string(generation.member_id.clone());
        req.retention_time_ms = -1;
        req.topics = by_topic
            .iter()
            .map(|(topic, parts)| {
                let mut t = OffsetCommitRequestTopic::default();
                t.name = TopicName(StrBytes::from_string(topic.clone()));
                t.partitions = parts
                    .iter()
                    .map(|(p, o)| {
                        let mut part = OffsetCommitRequestPartition::default();
                        part.partition_index = *p;
                        part.committed_offset = *o;
                        part.committed_leader_epoch = -1;
                        part
                    })
                    .collect();
                t
            })
            .collect();
        let resp = conn.send(&req, version).await?;
        let mut failed = Vec::new();
        for t in &resp.topics {
            for p in &t.partitions {
                let key = (t.name.0.to_string(), p.partition_index);
                match ResponseError::try_from_code(p.error_code) {
                    None => {
                        if let Some((_, o)) = by_topic
                            .get(&key.0)
                            .and_then(|ps| ps.iter().find(|(pi, _)| *pi == key.1))
                        {
                            running.committed.insert(key, *o);
                        }
                    }
                    Some(e) => failed.push(format!("{}[{}]: {e}", key.0, key.1)),
                }
            }
        }
        if failed.is_empty() {
            tracing::debug!(group = self.group, offsets = ?by_topic, "committed");
            Ok(())
        } else {
            Err(ConnError::Protocol {
                addr: conn.addr().to_owned(),
                reason: format!("OffsetCommit refused: {}", failed.join(", ")),
            })
        }
    }

    async fn fetch_offsets(
        &self,
        conn: &mut Conn,
        assigned: &[(String, i32)],
    ) -> Result<HashMap<(String, i32), i64>, ConnError> {
        let mut by_topic: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
        for (t, p) in assigned {
            by_topic.entry(t).or_default().push(*p);
        }
        let mut out = HashMap::new();
        if by_topic.is_empty() {
            return Ok(out);
        }
        let version = conn.version::<OffsetFetchRequest>(8)?;
        let group = GroupId(StrBytes::from_string(self.group.clone()));
        let mut req = OffsetFetchRequest::default();
        if version >= 8 {
            let mut g = OffsetFetchRequestGroup::default();
            g.group_id = group;
            g.topics = Some(
                by_topic
                    .iter()
                    .map(|(t, ps)| {
                        let mut topic = OffsetFetchRequestTopics::default();
                        topic.name = TopicName(StrBytes::from_string((*t).to_owned()));
                        topic.partition_indexes = ps.clone();
                        topic
                    })
                    .collect(),
            );
            req.groups = vec![g];
        } else {
            req.group_id = group;
            req.topics = Some(
                by_topic
                    .iter()
                    .map(|(t, ps)| {
                        let mut topic = OffsetFetchRequestTopic::default();
                        topic.name = TopicName(StrBytes::from_string((*t).to_owned()));
                        topic.partition_indexes = ps.clone();
                        topic
                    })
                    .collect(),
            );
        }
        let resp = conn.send(&req, version).await?;
        let protocol_err = |reason: String| ConnError::Protocol {
            addr: conn.addr().to_owned(),
            reason,
        };
        if version >= 8 {
            for g in &resp.groups {
                if let Some(e) = ResponseError::try_from_code(g.error_code) {
                    return Err(protocol_err(format!("OffsetFetch: {e}")));
                }
                for t in &g.topics {
                    for p in &t.partitions {
                        out.insert(
                            (t.name.0.to_string(), p.partition_index),
                            p.committed_offset,
                        );
                    }
                }
            }
        } else {
            if let Some(e) = ResponseError::try_from_code(resp.error_code) {
                return Err(protocol_err(format!("OffsetFetch: {e}")));
            }
            for t in &resp.topics {
                for p in &t.partitions {
                    out.insert(
                        (t.name.0.to_string(), p.partition_index),
                        p.committed_offset,
                    );
                }
            }
        }
        Ok(out)
    }

    async fn leave(&self, conn: &mut Conn, member_id: &str) {
        let Ok(version) = conn.version::<LeaveGroupRequest>(5) else {
            return;
        };
        let mut req = LeaveGroupRequest::default();
        req.group_id = GroupId(StrBytes::from_string(self.group.clone()));
        if version >= 3 {
            let mut m = MemberIdentity::default();
            m.member_id = StrBytes::from_string(member_id.to_owned());
            req.members = vec![m];
        } else {
            req.member_id = StrBytes::from_string(member_id.to_owned());
        }
        match conn.send(&req, version).await {
            Ok(_) => tracing::info!(group = self.group, member = member_id, "left the group"),
            Err(e) => {
                tracing::warn!(group = self.group, error = %e, "LeaveGroup failed; the coordinator will expire the member")
            }
        }
    }
}

enum JoinError {
    Rejoin { reset_member: bool },
    Failed(String),
}

impl From<ConnError> for JoinError {
    fn from(e: ConnError) -> Self {
        JoinError::Failed(e.to_string())
    }
}

fn rejoin_or_fail(e: ResponseError, what: &str) -> JoinError {
    match e {
        ResponseError::RebalanceInProgress => JoinError::Rejoin {
            reset_member: false,
        },
        ResponseError::UnknownMemberId | ResponseError::IllegalGeneration => {
            JoinError::Rejoin { reset_member: true }
        }
        other => JoinError::Failed(format!("{what}: {other}")),
    }
}

enum HeartbeatEnd {
    Rebalance,
    Fenced(String),
    Failed(String),
}

fn ms(d: Duration) -> i32 {
    d.as_millis().min(i32::MAX as u128) as i32
}

fn encode_assignment(parts: &[(String, i32)]) -> bytes::Bytes {
    let mut by_topic: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for (t, p) in parts {
        by_topic.entry(t).or_default().push(*p);
    }
    let mut a = ConsumerProtocolAssignment::default();
    a.assigned_partitions = by_topic
        .into_iter()
        .map(|(t, ps)| {
            let mut tp = AssignedPartitions::default();
            tp.topic = TopicName(StrBytes::from_string(t.to_owned()));
            tp.partitions = ps;
            tp
        })
        .collect();
    encode_versioned(&a, 0)
}

/// Spreads the partitions of each member's subscribed topics over the members, as Kafka's
/// `range` and `roundrobin` assignors do. Every member appears in the result, possibly empty.
pub(crate) fn assign(
    assignor: Assignor,
    members: &[(String, Vec<String>)],
    partitions: &BTreeMap<String, i32>,
) -> Vec<(String, Vec<(String, i32)>)> {
    let mut sorted: Vec<&(String, Vec<String>)> = members.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out: BTreeMap<&str, Vec<(String, i32)>> = sorted
        .iter()
        .map(|(m, _)| (m.as_str(), Vec::new()))
        .collect();
    match assignor {
        Assignor::Range => {
            for (topic, n) in partitions {
                let subs: Vec<&str> = sorted
                    .iter()
                    .filter(|(_, ts)| ts.contains(topic))
                    .map(|(m, _)| m.as_str())
                    .collect();
                if subs.is_empty() {
                    continue;
                }
                let per = *n as usize / subs.len();
                let extra = *n as usize % subs.len();
                let mut next = 0;
                for (i, m) in subs.iter().enumerate() {
                    let count = per + usize::from(i < extra);
                    for p in next..next + count {
                        out.get_mut(m).unwrap().push((topic.clone(), p as i32));
                    }
                    next += count;
                }
            }
        }
        Assignor::RoundRobin => {
            let mut i = 0;
            for (topic, n) in partitions {
                for p in 0..*n {
                    // The next member (in turn) subscribed to this topic.
                    for _ in 0..sorted.len() {
                        let (m, ts) = sorted[i % sorted.len()];
                        i += 1;
                        if ts.contains(topic) {
                            out.get_mut(m.as_str()).unwrap().push((topic.clone(), p));
                            break;
                        }
                    }
                }
            }
        }
    }
    out.into_iter().map(|(m, ps)| (m.to_owned(), ps)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(list: &[(&str, &[&str])]) -> Vec<(String, Vec<String>)> {
        list.iter()
            .map(|(m, ts)| (m.to_string(), ts.iter().map(|t| t.to_string()).collect()))
            .collect()
    }

    fn parts(list: &[(&str, i32)]) -> BTreeMap<String, i32> {
        list.iter().map(|(t, n)| (t.to_string(), *n)).collect()
    }

    #[test]
    fn range_gives_consecutive_ranges_per_topic() {
        let out = assign(
            Assignor::Range,
            &members(&[("b", &["t"]), ("a", &["t"])]),
            &parts(&[("t", 5)]),
        );
        assert_eq!(out[0].0, "a");
        assert_eq!(
            out[0].1,
            [("t".into(), 0), ("t".into(), 1), ("t".into(), 2)]
        );
        assert_eq!(out[1].1, [("t".into(), 3), ("t".into(), 4)]);
    }

    #[test]
    fn round_robin_deals_partitions_in_turn() {
        let out = assign(
            Assignor::RoundRobin,
            &members(&[("a", &["t", "u"]), ("b", &["t", "u"])]),
            &parts(&[("t", 3), ("u", 1)]),
        );
        assert_eq!(out[0].1, [("t".into(), 0), ("t".into(), 2)]);
        assert_eq!(out[1].1, [("t".into(), 1), ("u".into(), 0)]);
    }

    #[test]
    fn members_only_get_topics_they_subscribe_to() {
        for assignor in [Assignor::Range, Assignor::RoundRobin] {
            let out = assign(
                assignor,
                &members(&[("a", &["t"]), ("b", &["u"]), ("c", &[])]),
                &parts(&[("t", 2), ("u", 2)]),
            );
            assert!(out[0].1.iter().all(|(t, _)| t == "t"));
            assert!(out[1].1.iter().all(|(t, _)| t == "u"));
            assert!(out[2].1.is_empty(), "{assignor:?}");
            let total: usize = out.iter().map(|(_, p)| p.len()).sum();
            assert_eq!(total, 4);
        }
    }

    #[test]
    fn assignment_encoding_round_trips() {
        let bytes = encode_assignment(&[("t".into(), 1), ("t".into(), 0), ("u".into(), 2)]);
        let a: ConsumerProtocolAssignment = decode_versioned(bytes).unwrap();
        assert_eq!(a.assigned_partitions.len(), 2);
        assert_eq!(a.assigned_partitions[0].partitions, [1, 0]);
    }
}
