//! A consumer-group member on Kafka's classic group protocol, with the standard `consumer`
//! protocol type so members of other client libraries can share a group with ours.
//!
//! One [`GroupRunner`] per group id. Each generation: find the coordinator, join (the leader
//! assigns partitions with the range or round-robin assignor), sync, fetch committed offsets,
//! start one partition consumer per assigned partition, commit their positions periodically.
//!
//! Heartbeats run in a task of their own, on their own connection, for as long as the member
//! holds partitions: while handlers run, while revoked partitions drain, during commits and
//! hooks. A heartbeat that cannot reach the coordinator finds it again and keeps the member's
//! generation and partitions; only the coordinator's word (a rebalance, an unknown member, an
//! illegal generation) ends a generation, as in the Java client.
//!
//! Ending a generation (rebalance, shutdown, or a partition consumer that stopped on its own):
//! the consumers stop fetching, finish the message in hand and wait for its outputs' acks,
//! within the rebalance timeout (or the shutdown deadline); then the positions are committed.
//! A consumer still busy past that bound is abandoned without committing its message, and the
//! handler is named in the log with the setting to raise.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use faststream_core::{Assignor, OffsetReset, RouteDef, Shutdown, ShutdownTrigger};
use kafka_protocol::error::ResponseError;
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
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::assign::{assign, encode_assignment};
use crate::config::{Config, GroupSettings};
use crate::consume::{AbortOnDrop, GroupLink, PartitionConsumer, Runtime};
use crate::error::KafkaError;
use crate::offsets::Position;
use crate::protocol::{decode_versioned, encode_versioned, ms, Conn, ConnError};

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
    pub(crate) rt: Arc<Runtime>,
    pub(crate) shutdown: Shutdown,
    pub(crate) ready: mpsc::UnboundedSender<()>,
}

/// Who this member is in the group.
#[derive(Debug, Clone)]
struct Member {
    group: String,
    member_id: String,
    /// Static membership (KIP-345): a restart with the same id within the session timeout
    /// gets its partitions back without a rebalance.
    instance_id: Option<String>,
    generation: i32,
}

/// Why a generation ended.
enum Ended {
    Shutdown,
    Rejoin {
        reset_member: bool,
    },
    /// A partition consumer stopped on its own, or the member was fenced for good.
    Failed(KafkaError),
}

/// What the heartbeat task reports.
enum Beat {
    Rebalance,
    Fenced(ResponseError),
}

/// A generation's partition consumers.
struct Running {
    stop: ShutdownTrigger,
    tasks: JoinSet<Result<(), KafkaError>>,
    /// Which partition each consumer task serves, by task id.
    serving: HashMap<tokio::task::Id, (String, i32, &'static str)>,
    commit_requests: mpsc::Receiver<oneshot::Sender<()>>,
    positions: Vec<((String, i32), Position)>,
    /// Each consumer says when it knows its start position.
    started: mpsc::UnboundedReceiver<()>,
    starting: usize,
}

impl GroupRunner {
    /// Serves the group until shutdown (`Ok`) or until one of its partition consumers stopped
    /// on its own (`Err`, after committing what is done and leaving the group).
    pub(crate) async fn run(self) -> Result<(), KafkaError> {
        let config = self.rt.config.clone();
        let mut member = Member {
            group: self.group.clone(),
            member_id: String::new(),
            instance_id: config.group_instance_id.clone(),
            generation: -1,
        };
        let mut conn: Option<Conn> = None;
        let mut ready_sent = false;
        let mut backoff = Duration::from_millis(200);
        let mut shutdown = self.shutdown.clone();
        // Partition counts when the member started: partitions beyond them appeared while it
        // ran, and are read from their beginning when nothing was committed for them.
        let initial = self.partition_counts().await;
        let result = loop {
            if self.shutdown.is_triggered() {
                break Ok(());
            }
            let joined = tokio::select! {
                j = self.join(&mut conn, &mut member) => j,
                () = shutdown.wait() => break Ok(()),
            };
            let (assigned, counts) = match joined {
                Ok(j) => j,
                Err(JoinError::Rejoin {
                    reset_member,
                    reason,
                }) => {
                    tracing::debug!(group = self.group, reason, "joining again");
                    if reset_member {
                        member.member_id.clear();
                    }
                    // The coordinator asked for it; a short pause keeps a confused one from
                    // being flooded.
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_millis(50)) => {},
                        () = shutdown.wait() => break Ok(()),
                    }
                    continue;
                }
                Err(JoinError::Failed(e)) => {
                    tracing::warn!(group = self.group, error = %e, retry_in = ?backoff, "joining the group failed; retrying");
                    conn = None;
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {},
                        () = shutdown.wait() => break Ok(()),
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
                Err(JoinError::Fatal(e)) => break Err(e),
            };
            backoff = Duration::from_millis(200);
            tracing::info!(
                group = self.group,
                generation = member.generation,
                member = member.member_id,
                partitions = ?assigned,
                "assigned"
            );
            // Heartbeats start before anything else can take time.
            let (beat_tx, beat_rx) = mpsc::unbounded_channel();
            let heartbeat = AbortOnDrop(tokio::spawn(heartbeat_loop(
                config.clone(),
                member.clone(),
                self.settings,
                beat_tx,
            )));
            let running = match self.start(&mut conn, &assigned, &initial).await {
                Ok(r) => r,
                Err(e) => {
                    drop(heartbeat);
                    conn = None;
                    tracing::warn!(group = self.group, error = %e, "fetching committed offsets failed; rejoining");
                    continue;
                }
            };
            crate::metrics::assigned(&self.group, assigned.len());
            if let Some(hook) = &config.hooks.assigned {
                hook(&self.group, &assigned);
            }
            let ended = self
                .serve_generation(
                    &mut conn,
                    &member,
                    &counts,
                    running,
                    beat_rx,
                    &mut ready_sent,
                )
                .await;
            drop(heartbeat);
            crate::metrics::assigned(&self.group, 0);
            if let Some(hook) = &config.hooks.revoked {
                hook(&self.group, &assigned);
            }
            match ended {
                Ended::Shutdown => break Ok(()),
                Ended::Failed(e) => break Err(e),
                Ended::Rejoin { reset_member } => {
                    if reset_member {
                        member.member_id.clear();
                    }
                }
            }
        };
        if !ready_sent {
            let _ = self.ready.send(());
        }
        if !member.member_id.is_empty() {
            self.leave(&mut conn, &member).await;
        }
        result
    }

    /// A usable connection to the coordinator: the current one, or a new one.
    async fn conn<'c>(&self, conn: &'c mut Option<Conn>) -> Result<&'c mut Conn, ConnError> {
        if conn.as_ref().is_none_or(Conn::is_broken) {
            *conn = Some(find_coordinator(&self.rt.config, &self.group).await?);
        }
        Ok(conn.as_mut().expect("just connected"))
    }

    fn topic_names(&self) -> Vec<String> {
        let set: BTreeSet<&str> = self.topics.iter().map(|t| t.topic.as_str()).collect();
        set.into_iter().map(str::to_owned).collect()
    }

    /// Current partition counts of the subscribed topics (fresh metadata).
    async fn partition_counts(&self) -> BTreeMap<String, i32> {
        self.rt
            .producers
            .lookup_partitions(&self.rt.client, &self.topic_names())
            .await
    }

    /// Joins and syncs; returns this member's partitions and the subscribed topics' partition
    /// counts the assignment was made with.
    async fn join(
        &self,
        conn: &mut Option<Conn>,
        member: &mut Member,
    ) -> Result<(Vec<(String, i32)>, BTreeMap<String, i32>), JoinError> {
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
        // The coordinator holds JoinGroup until every member rejoined, up to the largest
        // rebalance timeout in the group (ours, or a longer one of another member: Java's
        // default is 5 minutes). Wait for ours plus a margin; a longer wait shows up as a
        // timeout and a retry, which the coordinator answers from its state.
        let join_timeout = s.rebalance_timeout + self.rt.config.request_timeout;
        let conn = self.conn(conn).await?;
        let version = conn.version::<JoinGroupRequest>(9)?;
        if member.instance_id.is_some() && version < 5 {
            return Err(JoinError::Fatal(KafkaError::Unsupported(format!(
                "group_instance_id needs JoinGroup v5 or later; the coordinator {} offers v{version}",
                conn.addr()
            ))));
        }
        for _attempt in 0..2 {
            let mut req = JoinGroupRequest::default();
            req.group_id = group_id(&self.group);
            req.session_timeout_ms = ms(s.session_timeout);
            req.rebalance_timeout_ms = ms(s.rebalance_timeout);
            req.member_id = StrBytes::from_string(member.member_id.clone());
            req.group_instance_id = member.instance_id.clone().map(StrBytes::from_string);
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
            let resp = conn.send_within(&req, version, join_timeout).await?;
            match ResponseError::try_from_code(resp.error_code) {
                None => {}
                Some(ResponseError::MemberIdRequired) => {
                    member.member_id = resp.member_id.to_string();
                    continue;
                }
                Some(e) => return Err(self.rejoin_or_fail(e, "JoinGroup", member)),
            }
            member.member_id = resp.member_id.to_string();
            member.generation = resp.generation_id;
            let protocol_name = resp
                .protocol_name
                .as_ref()
                .map_or(s.assignor.protocol_name().to_owned(), |p| p.to_string());
            let counts = self.partition_counts().await;
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
                self.leader_assign(&members, &protocol_name, &counts).await
            } else {
                Vec::new()
            };
            let sync_version = conn.version::<SyncGroupRequest>(5)?;
            let mut sync = SyncGroupRequest::default();
            sync.group_id = group_id(&self.group);
            sync.generation_id = member.generation;
            sync.member_id = StrBytes::from_string(member.member_id.clone());
            sync.group_instance_id = member.instance_id.clone().map(StrBytes::from_string);
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
            let resp = conn.send_within(&sync, sync_version, join_timeout).await?;
            if let Some(e) = ResponseError::try_from_code(resp.error_code) {
                return Err(self.rejoin_or_fail(e, "SyncGroup", member));
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
            return Ok((assigned, counts));
        }
        Err(JoinError::Failed(
            "the coordinator kept asking for a member id".into(),
        ))
    }

    fn rejoin_or_fail(&self, e: ResponseError, what: &str, member: &Member) -> JoinError {
        let reason = format!("{what}: {e}");
        match e {
            ResponseError::RebalanceInProgress => JoinError::Rejoin {
                reset_member: false,
                reason,
            },
            ResponseError::UnknownMemberId | ResponseError::IllegalGeneration => {
                JoinError::Rejoin {
                    reset_member: true,
                    reason,
                }
            }
            ResponseError::FencedInstanceId => JoinError::Fatal(fenced(member)),
            other => JoinError::Failed(format!("{what}: {other}")),
        }
    }

    /// The leader's assignment: partitions of every subscribed topic spread over the members.
    /// Topics without metadata (another member's subscription this cluster does not have, or a
    /// lookup that failed) are left out, so they cannot block the group.
    async fn leader_assign(
        &self,
        members: &[(String, Vec<String>)],
        protocol: &str,
        ours: &BTreeMap<String, i32>,
    ) -> Vec<(String, Vec<(String, i32)>)> {
        let topics: Vec<String> = members
            .iter()
            .flat_map(|(_, t)| t.iter().cloned())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .filter(|t| !ours.contains_key(t))
            .collect();
        let mut partitions = ours.clone();
        partitions.extend(
            self.rt
                .producers
                .lookup_partitions(&self.rt.client, &topics)
                .await,
        );
        for topic in topics.iter().filter(|t| !partitions.contains_key(*t)) {
            tracing::warn!(
                group = self.group,
                topic,
                "a member subscribes to a topic without metadata; it is not assigned"
            );
        }
        let assignor = if protocol == "roundrobin" {
            Assignor::RoundRobin
        } else {
            Assignor::Range
        };
        assign(assignor, members, &partitions)
    }

    /// Fetches committed offsets and starts one consumer per assigned partition.
    async fn start(
        &self,
        conn: &mut Option<Conn>,
        assigned: &[(String, i32)],
        initial: &BTreeMap<String, i32>,
    ) -> Result<Running, ConnError> {
        let conn = self.conn(conn).await?;
        let committed = self.fetch_offsets(conn, assigned).await?;
        let (stop, gen_shutdown) = Shutdown::new();
        let mut tasks = JoinSet::new();
        let mut serving = HashMap::new();
        let mut positions = Vec::new();
        let (ready_tx, started) = mpsc::unbounded_channel();
        let (commit_tx, commit_rx) = mpsc::channel(64);
        for (topic, partition) in assigned {
            let Some(sub) = self.topics.iter().find(|t| t.topic == *topic) else {
                continue;
            };
            let start = committed
                .get(&(topic.clone(), *partition))
                .copied()
                .filter(|o| *o >= 0);
            // A partition that appeared while the service ran is read from its beginning:
            // `latest` would skip what was written to it before this member noticed it.
            let is_new = initial.get(topic).is_some_and(|n| *partition >= *n);
            let reset = if is_new && start.is_none() {
                OffsetReset::Earliest
            } else {
                sub.reset
            };
            let position = Position::new(start);
            positions.push(((topic.clone(), *partition), position.clone()));
            let handle = tasks.spawn(
                PartitionConsumer {
                    rt: self.rt.clone(),
                    route: sub.route,
                    topic: Arc::from(topic.as_str()),
                    partition: *partition,
                    reset,
                    start,
                    group: Some(GroupLink {
                        position,
                        commit_now: commit_tx.clone(),
                    }),
                    shutdown: gen_shutdown.clone(),
                    ready: ready_tx.clone(),
                }
                .run(),
            );
            serving.insert(handle.id(), (topic.clone(), *partition, sub.route.name()));
        }
        Ok(Running {
            stop,
            tasks,
            serving,
            commit_requests: commit_rx,
            starting: positions.len(),
            positions,
            started,
        })
    }

    async fn serve_generation(
        &self,
        conn: &mut Option<Conn>,
        member: &Member,
        counts: &BTreeMap<String, i32>,
        mut running: Running,
        mut beats: mpsc::UnboundedReceiver<Beat>,
        ready_sent: &mut bool,
    ) -> Ended {
        self.announce_ready(&running, ready_sent);
        let mut commit = tokio::time::interval(self.settings.commit_interval);
        commit.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let refresh_every = self.rt.config.metadata_max_age;
        let mut refresh = tokio::time::interval_at(Instant::now() + refresh_every, refresh_every);
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut shutdown = self.shutdown.clone();
        let ended = loop {
            tokio::select! {
                () = shutdown.wait() => break Ended::Shutdown,
                Some(()) = running.started.recv(), if running.starting > 0 => {
                    running.starting -= 1;
                    self.announce_ready(&running, ready_sent);
                }
                beat = beats.recv() => match beat {
                    Some(Beat::Rebalance) => {
                        tracing::info!(group = self.group, generation = member.generation, "rebalance: revoking partitions");
                        break Ended::Rejoin { reset_member: false };
                    }
                    Some(Beat::Fenced(ResponseError::FencedInstanceId)) => break Ended::Failed(fenced(member)),
                    Some(Beat::Fenced(e)) => {
                        tracing::warn!(group = self.group, generation = member.generation, error = %e, "no longer a member: rejoining");
                        break Ended::Rejoin { reset_member: true };
                    }
                    None => break Ended::Rejoin { reset_member: false },
                },
                Some(joined) = running.tasks.join_next_with_id() => {
                    if let Some(e) = consumer_failure(&mut running, joined) {
                        break Ended::Failed(e);
                    }
                }
                _ = commit.tick() => {
                    if let Some(end) = self.commit(conn, member, &running).await {
                        break end;
                    }
                }
                Some(reply) = running.commit_requests.recv() => {
                    let end = self.commit(conn, member, &running).await;
                    let _ = reply.send(());
                    if let Some(end) = end {
                        break end;
                    }
                }
                _ = refresh.tick() => {
                    let now = self.partition_counts().await;
                    let changed: Vec<_> = now
                        .iter()
                        .filter(|(t, n)| counts.get(*t).is_some_and(|old| old != *n))
                        .collect();
                    if !changed.is_empty() {
                        tracing::info!(group = self.group, partitions = ?changed, "partition count changed: rejoining");
                        break Ended::Rejoin { reset_member: false };
                    }
                }
            }
        };
        // Revoke: stop fetching, finish the message in hand, wait for acks; heartbeats go on.
        running.stop.trigger();
        let limit = self.drain_limit(&ended);
        let deadline = Instant::now() + limit;
        let mut failure = None;
        loop {
            tokio::select! {
                joined = running.tasks.join_next_with_id() => match joined {
                    None => break,
                    Some(joined) => {
                        if let Some(e) = consumer_failure(&mut running, joined) {
                            failure.get_or_insert(e);
                        }
                    }
                },
                // A consumer of an `ack = "first"` route may be waiting for its commit.
                Some(reply) = running.commit_requests.recv() => {
                    let _ = self.commit(conn, member, &running).await;
                    let _ = reply.send(());
                }
                () = tokio::time::sleep_until(deadline) => {
                    for (topic, partition, handler) in running.serving.values() {
                        tracing::error!(
                            group = self.group,
                            topic,
                            partition,
                            handler,
                            limit = ?limit,
                            "the handler did not finish within the rebalance timeout (or the shutdown deadline); abandoning it: its message is not committed and will be consumed again. Raise rebalance_timeout_ms (or the shutdown timeout) above the handler's longest run"
                        );
                    }
                    running.tasks.abort_all();
                    while running.tasks.join_next().await.is_some() {}
                    break;
                }
            }
        }
        match self.commit(conn, member, &running).await {
            None => {}
            Some(_) => tracing::warn!(
                group = self.group,
                "final offset commit failed; messages since the last commit will be consumed again"
            ),
        }
        match (ended, failure) {
            (Ended::Failed(e), _) => Ended::Failed(e),
            (_, Some(e)) => Ended::Failed(e),
            (ended, None) => ended,
        }
    }

    /// The service is ready once the first generation's consumers know where they start.
    fn announce_ready(&self, running: &Running, ready_sent: &mut bool) {
        if running.starting == 0 && !*ready_sent {
            let _ = self.ready.send(());
            *ready_sent = true;
        }
    }

    /// How long revoked partitions may take to drain: within the rebalance timeout (the
    /// coordinator expels a member that rejoins later), or before the app's shutdown deadline
    /// (leaving time to commit and leave the group).
    fn drain_limit(&self, ended: &Ended) -> Duration {
        let s = self.settings;
        let rebalance = s
            .rebalance_timeout
            .saturating_sub(s.heartbeat_interval)
            .saturating_sub(Duration::from_secs(1))
            .max(s.rebalance_timeout / 2);
        match (ended, self.shutdown.deadline()) {
            (Ended::Shutdown, Some(deadline)) => {
                let left = deadline.saturating_duration_since(Instant::now());
                // Keep a share for the final commit and LeaveGroup.
                left.saturating_sub((left / 5).min(Duration::from_secs(2)))
                    .min(rebalance)
            }
            _ => rebalance,
        }
    }

    /// Commits every partition's position. Returns how the generation ends, if the coordinator
    /// says it is over.
    async fn commit(
        &self,
        conn: &mut Option<Conn>,
        member: &Member,
        running: &Running,
    ) -> Option<Ended> {
        let refused = match self.try_commit(conn, member, running).await {
            Ok(refused) => refused,
            Err(e) => {
                tracing::warn!(group = self.group, error = %e, "offset commit failed; finding the coordinator again");
                *conn = None;
                return None;
            }
        };
        if refused.is_empty() {
            return None;
        }
        let reason = refused
            .iter()
            .map(|(partition, e)| format!("{partition}: {e}"))
            .collect::<Vec<_>>()
            .join(", ");
        let reset_member = refused.iter().any(|(_, e)| {
            matches!(
                e,
                ResponseError::UnknownMemberId
                    | ResponseError::IllegalGeneration
                    | ResponseError::FencedInstanceId
            )
        });
        if reset_member
            || refused
                .iter()
                .any(|(_, e)| *e == ResponseError::RebalanceInProgress)
        {
            tracing::warn!(
                group = self.group,
                reason,
                "offset commit refused: rejoining"
            );
            return Some(Ended::Rejoin { reset_member });
        }
        tracing::warn!(
            group = self.group,
            reason,
            "offset commit failed; retrying at the next commit"
        );
        None
    }

    /// Commits the position of every partition that has one, also when unchanged (so the
    /// broker's offset retention never drops a quiet group's offsets). Returns the partitions
    /// the coordinator refused, with why.
    async fn try_commit(
        &self,
        conn: &mut Option<Conn>,
        member: &Member,
        running: &Running,
    ) -> Result<Vec<(String, ResponseError)>, ConnError> {
        let mut by_topic: BTreeMap<&str, Vec<(i32, i64)>> = BTreeMap::new();
        for ((topic, partition), position) in &running.positions {
            if let Some(offset) = position.get() {
                by_topic
                    .entry(topic)
                    .or_default()
                    .push((*partition, offset));
            }
        }
        if by_topic.is_empty() {
            return Ok(Vec::new());
        }
        let conn = self.conn(conn).await?;
        let version = conn.version::<OffsetCommitRequest>(8)?;
        let mut req = OffsetCommitRequest::default();
        req.group_id = group_id(&self.group);
        req.generation_id_or_member_epoch = member.generation;
        req.member_id = StrBytes::from_string(member.member_id.clone());
        req.group_instance_id = member.instance_id.clone().map(StrBytes::from_string);
        req.retention_time_ms = -1;
        req.topics = by_topic
            .iter()
            .map(|(topic, parts)| {
                let mut t = OffsetCommitRequestTopic::default();
                t.name = TopicName(StrBytes::from_string((*topic).to_owned()));
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
        let mut refused = Vec::new();
        for t in &resp.topics {
            for p in &t.partitions {
                if let Some(e) = ResponseError::try_from_code(p.error_code) {
                    if matches!(
                        e,
                        ResponseError::NotCoordinator | ResponseError::CoordinatorNotAvailable
                    ) {
                        // Find the coordinator again before the next commit.
                        conn.mark_broken();
                    }
                    refused.push((format!("{}[{}]", t.name.0, p.partition_index), e));
                }
            }
        }
        for (topic, parts) in &by_topic {
            for (partition, offset) in parts {
                let name = format!("{topic}[{partition}]");
                if !refused.iter().any(|(n, _)| *n == name) {
                    crate::metrics::committed(&self.group, topic, *partition, *offset);
                }
            }
        }
        if refused.is_empty() {
            tracing::debug!(group = self.group, offsets = ?by_topic, "committed");
        }
        Ok(refused)
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

    async fn leave(&self, conn: &mut Option<Conn>, member: &Member) {
        if member.instance_id.is_some() {
            // A static member keeps its place: a restart within the session timeout gets its
            // partitions back without a rebalance (as the Java client does on close).
            return;
        }
        let Ok(conn) = self.conn(conn).await else {
            return;
        };
        let Ok(version) = conn.version::<LeaveGroupRequest>(5) else {
            return;
        };
        let mut req = LeaveGroupRequest::default();
        req.group_id = group_id(&self.group);
        if version >= 3 {
            let mut m = MemberIdentity::default();
            m.member_id = StrBytes::from_string(member.member_id.clone());
            req.members = vec![m];
        } else {
            req.member_id = StrBytes::from_string(member.member_id.clone());
        }
        match conn.send(&req, version).await {
            Ok(_) => tracing::info!(
                group = self.group,
                member = member.member_id,
                "left the group"
            ),
            Err(e) => {
                tracing::warn!(group = self.group, error = %e, "LeaveGroup failed; the coordinator will expire the member")
            }
        }
    }
}

/// Takes a finished partition consumer off the books; returns its error if it stopped on its
/// own (or crashed).
fn consumer_failure(
    running: &mut Running,
    joined: Result<(tokio::task::Id, Result<(), KafkaError>), tokio::task::JoinError>,
) -> Option<KafkaError> {
    let (id, result) = match joined {
        Ok((id, result)) => (id, result),
        Err(e) if e.is_cancelled() => {
            running.serving.remove(&e.id());
            return None;
        }
        Err(e) => {
            let (topic, partition, handler) = running.serving.remove(&e.id())?;
            return Some(KafkaError::PartitionStopped {
                handler: handler.to_owned(),
                topic,
                partition,
                offset: -1,
                reason: format!("its task crashed: {e}"),
            });
        }
    };
    running.serving.remove(&id);
    result.err()
}

fn fenced(member: &Member) -> KafkaError {
    KafkaError::Fenced {
        group: member.group.clone(),
        instance_id: member.instance_id.clone().unwrap_or_default(),
    }
}

/// Heartbeats every `heartbeat_interval` on a connection of its own, until aborted or the
/// coordinator says the member is gone. Reports the first rebalance and keeps heartbeating
/// through it (the session stays alive while revoked partitions drain). A coordinator that
/// cannot be reached or moved is found again; the member keeps its generation meanwhile.
async fn heartbeat_loop(
    config: Arc<Config>,
    member: Member,
    settings: GroupSettings,
    beats: mpsc::UnboundedSender<Beat>,
) {
    let group = member.group.as_str();
    let mut conn: Option<Conn> = None;
    let mut rebalance_reported = false;
    let mut last_ok = Instant::now();
    let mut ticker = tokio::time::interval_at(
        Instant::now() + settings.heartbeat_interval,
        settings.heartbeat_interval,
    );
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        if conn.as_ref().is_none_or(Conn::is_broken) {
            match find_coordinator(&config, group).await {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    tracing::warn!(group, error = %e, since_last_heartbeat = ?last_ok.elapsed(), "cannot reach the group coordinator; keeping the partitions and retrying");
                    continue;
                }
            }
        }
        let c = conn.as_mut().expect("connected above");
        match heartbeat(c, &member).await {
            Ok(None) => last_ok = Instant::now(),
            Ok(Some(ResponseError::RebalanceInProgress)) => {
                last_ok = Instant::now();
                if !rebalance_reported {
                    rebalance_reported = true;
                    let _ = beats.send(Beat::Rebalance);
                }
            }
            Ok(Some(
                e @ (ResponseError::UnknownMemberId
                | ResponseError::IllegalGeneration
                | ResponseError::FencedInstanceId),
            )) => {
                let _ = beats.send(Beat::Fenced(e));
                return;
            }
            Ok(Some(e)) => {
                // NOT_COORDINATOR, COORDINATOR_NOT_AVAILABLE and the like: find it again.
                tracing::warn!(group, error = %e, "heartbeat refused; finding the coordinator again (partitions kept)");
                conn = None;
            }
            Err(e) => {
                tracing::warn!(group, error = %e, since_last_heartbeat = ?last_ok.elapsed(), "heartbeat failed; finding the coordinator again (partitions kept)");
                conn = None;
            }
        }
    }
}

/// One heartbeat: the coordinator's error, if any.
async fn heartbeat(conn: &mut Conn, member: &Member) -> Result<Option<ResponseError>, ConnError> {
    let version = conn.version::<HeartbeatRequest>(4)?;
    let mut req = HeartbeatRequest::default();
    req.group_id = group_id(&member.group);
    req.generation_id = member.generation;
    req.member_id = StrBytes::from_string(member.member_id.clone());
    req.group_instance_id = member.instance_id.clone().map(StrBytes::from_string);
    let resp = conn.send(&req, version).await?;
    Ok(ResponseError::try_from_code(resp.error_code))
}

/// Finds the group's coordinator through any bootstrap broker and connects to it.
async fn find_coordinator(config: &Config, group: &str) -> Result<Conn, ConnError> {
    let timeout = config.request_timeout.min(Duration::from_secs(10));
    let mut last = None;
    for addr in &config.brokers {
        let mut conn = match Conn::connect(addr, config, timeout).await {
            Ok(c) => c,
            Err(e) => {
                last = Some(e);
                continue;
            }
        };
        let version = conn.version::<FindCoordinatorRequest>(4)?;
        let mut req = FindCoordinatorRequest::default();
        let key = StrBytes::from_string(group.to_owned());
        if version >= 4 {
            req.coordinator_keys = vec![key];
        } else {
            req.key = key;
        }
        let resp = match conn.send(&req, version).await {
            Ok(resp) => resp,
            Err(e) => {
                last = Some(e);
                continue;
            }
        };
        let (code, host, port) = match resp.coordinators.first() {
            Some(c) if version >= 4 => (c.error_code, c.host.to_string(), c.port),
            _ => (resp.error_code, resp.host.to_string(), resp.port),
        };
        if let Some(err) = ResponseError::try_from_code(code) {
            last = Some(ConnError::Protocol {
                addr: addr.clone(),
                reason: format!("FindCoordinator for group {group:?}: {err}"),
            });
            continue;
        }
        let coord = format!("{host}:{port}");
        if coord == *addr {
            return Ok(conn);
        }
        return Conn::connect(&coord, config, timeout).await;
    }
    Err(last.unwrap_or(ConnError::Protocol {
        addr: String::new(),
        reason: "no bootstrap address".into(),
    }))
}

fn group_id(group: &str) -> GroupId {
    GroupId(StrBytes::from_string(group.to_owned()))
}

enum JoinError {
    Rejoin {
        reset_member: bool,
        reason: String,
    },
    Failed(String),
    /// The member cannot go on (fenced by another instance with its `group_instance_id`).
    Fatal(KafkaError),
}

impl From<ConnError> for JoinError {
    fn from(e: ConnError) -> Self {
        JoinError::Failed(e.to_string())
    }
}
