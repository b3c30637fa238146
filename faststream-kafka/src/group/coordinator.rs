//! Talking to the group coordinator: finding it, joining and syncing (the leader assigns),
//! heartbeats, committed offsets (fetch and commit), leaving. The membership loop in the parent
//! module decides when; this module speaks the requests and classifies the answers.

use super::*;
use crate::assign::{assign, assign_cooperative, encode_assignment, Claim};
use crate::protocol::{decode_versioned, encode_versioned};
use crate::transaction::{Ended as TxnEnded, Txn};
use kafka_protocol::messages::consumer_protocol_subscription::TopicPartition as SubscriptionPartitions;
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
    ConsumerProtocolAssignment, ConsumerProtocolSubscription, GroupId, HeartbeatRequest,
    JoinGroupRequest, LeaveGroupRequest, OffsetCommitRequest, OffsetFetchRequest, SyncGroupRequest,
    TopicName,
};
use kafka_protocol::protocol::StrBytes;

impl GroupRunner {
    /// Joins and syncs; returns this member's partitions and the partition counts the
    /// assignment was made with (see [`Watched`]). `waiting` says which step it is in.
    pub(super) async fn join(
        &self,
        conn: &mut Option<Conn>,
        member: &mut Member,
        waiting: &Waiting,
        owned: &BTreeSet<(String, i32)>,
    ) -> Result<Joined, JoinError> {
        let s = self.settings;
        let subscription = {
            let mut sub = ConsumerProtocolSubscription::default();
            sub.topics = self
                .topic_names()
                .into_iter()
                .map(StrBytes::from_string)
                .collect();
            if s.assignor == Assignor::CooperativeSticky {
                // What the member keeps consuming through the rebalance, and since which
                // generation (also as the user data older Java leaders read it from).
                let mut by_topic: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
                for (t, p) in owned {
                    by_topic.entry(t).or_default().push(*p);
                }
                sub.owned_partitions = by_topic
                    .into_iter()
                    .map(|(t, partitions)| {
                        let mut tp = SubscriptionPartitions::default();
                        tp.topic = TopicName(StrBytes::from_string(t.to_owned()));
                        tp.partitions = partitions;
                        tp
                    })
                    .collect();
                sub.generation_id = member.generation;
                sub.user_data = Some(bytes::Bytes::copy_from_slice(
                    &member.generation.to_be_bytes(),
                ));
                encode_versioned(&sub, 2)
            } else {
                encode_versioned(&sub, 0)
            }
        };
        // The coordinator holds JoinGroup until every member rejoined, up to the largest
        // rebalance timeout in the group (ours, or a longer one of another member: Java's
        // default is 5 minutes). Wait for ours plus a margin; a longer wait shows up as a
        // timeout and a retry, which the coordinator answers from its state.
        let join_timeout = s.rebalance_timeout + self.rt.config.request_timeout;
        waiting.set(Step::Coordinator);
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
            // Two assignors, the preferred one first: the coordinator picks one every member
            // supports, so members of other client libraries can join (a cooperative member
            // in a group that picks `range` rebalances eagerly).
            let other = match s.assignor {
                Assignor::Range => Assignor::RoundRobin,
                // `uniform` is the consumer protocol's; startup refuses it for classic groups.
                Assignor::RoundRobin | Assignor::Uniform | Assignor::CooperativeSticky => {
                    Assignor::Range
                }
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
            waiting.set(Step::Join);
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
            member.leader = resp.leader == resp.member_id;
            tracing::debug!(
                group = self.group,
                generation = member.generation,
                member = member.member_id,
                leader = %resp.leader,
                members = resp.members.len(),
                "joined"
            );
            let protocol_name = resp
                .protocol_name
                .as_ref()
                .map_or(s.assignor.protocol_name().to_owned(), |p| p.to_string());
            waiting.set(Step::Metadata);
            let counts = self.partition_counts().await;
            let mut watched: Watched = self
                .topic_names()
                .into_iter()
                .map(|t| {
                    let n = counts.get(&t).copied();
                    (t, n)
                })
                .collect();
            let assignments = if resp.leader == resp.member_id {
                let members: Vec<Claim> = resp
                    .members
                    .iter()
                    .map(|m| claim(m.member_id.to_string(), m.metadata.clone()))
                    .collect();
                let (assignments, partitions) =
                    self.leader_assign(&members, &protocol_name, &counts).await;
                // The leader watches every member's topics: one appearing or changing its
                // partition count means a new assignment.
                for Claim { topics, .. } in &members {
                    for t in topics {
                        watched.insert(t.clone(), partitions.get(t).copied());
                    }
                }
                assignments
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
            sync.protocol_name = Some(StrBytes::from_string(protocol_name.clone()));
            sync.assignments = assignments
                .into_iter()
                .map(|(member, parts)| {
                    let mut a = SyncGroupRequestAssignment::default();
                    a.member_id = StrBytes::from_string(member);
                    a.assignment = encode_assignment(&parts);
                    a
                })
                .collect();
            waiting.set(Step::Sync);
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
            for (topic, _) in watched.iter().filter(|(_, n)| n.is_none()) {
                tracing::warn!(
                    group = self.group,
                    topic,
                    retry_in = ?MISSING_TOPIC_RETRY,
                    "a subscribed topic has no metadata (not created yet, or lost); looking it up again"
                );
            }
            return Ok(Joined {
                assigned,
                watched,
                cooperative: protocol_name == Assignor::CooperativeSticky.protocol_name(),
            });
        }
        Err(JoinError::Failed(
            "the coordinator kept asking for a member id".into(),
        ))
    }

    pub(super) fn rejoin_or_fail(
        &self,
        e: ResponseError,
        what: &str,
        member: &Member,
    ) -> JoinError {
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
            // Errors the Java consumer treats as fatal: the same request would be refused again.
            ResponseError::InvalidSessionTimeout => self.refused(format!(
                "{what} refused the session timeout of {:?}: it is outside the broker's \
                 group.min.session.timeout.ms .. group.max.session.timeout.ms (6 s to 30 min by \
                 default); set session_timeout_ms (or KafkaBrokerBuilder::session_timeout) within them",
                self.settings.session_timeout
            )),
            ResponseError::GroupAuthorizationFailed => self.refused(format!(
                "{what}: not authorized for this group (the principal needs READ on the group)"
            )),
            ResponseError::InconsistentGroupProtocol => self.refused(format!(
                "{what}: the group's members use another protocol type or no assignor in common \
                 with ours (range, roundrobin)"
            )),
            ResponseError::InvalidGroupId | ResponseError::GroupMaxSizeReached => {
                self.refused(format!("{what}: {e}"))
            }
            other => JoinError::Failed(format!("{what}: {other}")),
        }
    }

    fn refused(&self, reason: String) -> JoinError {
        JoinError::Fatal(KafkaError::GroupRefused {
            group: self.group.clone(),
            reason,
        })
    }

    /// The leader's assignment: partitions of every subscribed topic spread over the members,
    /// with the partition counts it used. Topics without metadata (another member's
    /// subscription this cluster does not have, or a lookup that failed) are left out, so they
    /// cannot block the group.
    pub(super) async fn leader_assign(
        &self,
        members: &[Claim],
        protocol: &str,
        ours: &BTreeMap<String, i32>,
    ) -> (Vec<(String, Vec<(String, i32)>)>, BTreeMap<String, i32>) {
        let topics: Vec<String> = members
            .iter()
            .flat_map(|m| m.topics.iter().cloned())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .filter(|t| !ours.contains_key(t))
            .collect();
        let mut partitions = ours.clone();
        partitions.extend(self.rt.producers.lookup_partitions(&topics).await);
        for topic in topics.iter().filter(|t| !partitions.contains_key(*t)) {
            tracing::warn!(
                group = self.group,
                topic,
                "a member subscribes to a topic without metadata; it is not assigned"
            );
        }
        let assignor = match protocol {
            "roundrobin" => Assignor::RoundRobin,
            "cooperative-sticky" => {
                return (assign_cooperative(members, &partitions), partitions);
            }
            _ => Assignor::Range,
        };
        let members: Vec<(String, Vec<String>)> = members
            .iter()
            .map(|m| (m.member.clone(), m.topics.clone()))
            .collect();
        (assign(assignor, &members, &partitions), partitions)
    }

    /// Commits every partition's position. Returns how the generation ends, if the coordinator
    /// says it is over.
    pub(super) async fn commit(
        &self,
        conn: &mut Option<Conn>,
        member: &Member,
        running: &Running,
    ) -> Option<Ended> {
        match &self.rt.txn {
            Some(txn) => self.commit_transaction(txn, conn, member, running).await,
            None => self.commit_plain(conn, member, running).await,
        }
    }

    /// Commits the positions with OffsetCommit.
    async fn commit_plain(
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
            return Some(Ended::Rejoin {
                reset_member,
                cause: "commit",
            });
        }
        tracing::warn!(
            group = self.group,
            reason,
            "offset commit failed; retrying at the next commit"
        );
        None
    }

    /// Exactly-once: commits the group's transaction with the positions of its partitions,
    /// once every partition finished what it started (the gate). An aborted transaction
    /// keeps the gate closed and ends the generation: the partitions start again from the
    /// committed offsets (the gate opens once they stopped).
    async fn commit_transaction(
        &self,
        txn: &Txn,
        conn: &mut Option<Conn>,
        member: &Member,
        running: &Running,
    ) -> Option<Ended> {
        txn.close().await;
        let by_topic = positions_by_topic(running);
        let group_conn = match self.conn(conn).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(group = self.group, error = %e, "no group coordinator for the transaction's offsets; committing at the next interval");
                *conn = None;
                txn.reopen();
                return None;
            }
        };
        let ended = txn
            .commit(
                group_conn,
                &self.group,
                (
                    member.generation,
                    &member.member_id,
                    member.instance_id.as_deref(),
                ),
                &by_topic,
            )
            .await;
        match ended {
            TxnEnded::Committed => {
                crate::metrics::transaction(&self.group, "committed");
                for (topic, parts) in &by_topic {
                    for (partition, offset) in parts {
                        crate::metrics::committed(&self.group, topic, *partition, *offset);
                    }
                }
                tracing::debug!(group = self.group, offsets = ?by_topic, "transaction committed");
                txn.reopen();
                None
            }
            TxnEnded::Empty => {
                // Nothing was written since the last commit: a plain commit (before anything
                // new starts) keeps the offsets fresh and moves them past messages without
                // outputs.
                let ended = self.commit_plain(conn, member, running).await;
                txn.reopen();
                ended
            }
            TxnEnded::Aborted {
                reason,
                reset_member,
            } => {
                crate::metrics::transaction(&self.group, "aborted");
                tracing::warn!(group = self.group, reason, "transaction aborted: the group's partitions start again from the committed offsets");
                Some(Ended::Rejoin {
                    reset_member,
                    cause: "abort",
                })
            }
        }
    }

    /// Commits the position of every partition that has one, also when unchanged (so the
    /// broker's offset retention never drops a quiet group's offsets). Returns the partitions
    /// the coordinator refused, with why.
    pub(super) async fn try_commit(
        &self,
        conn: &mut Option<Conn>,
        member: &Member,
        running: &Running,
    ) -> Result<Vec<(String, ResponseError)>, ConnError> {
        let by_topic = positions_by_topic(running);
        if by_topic.is_empty() {
            return Ok(Vec::new());
        }
        let conn = self.conn(conn).await?;
        let refused = commit_offsets(
            conn,
            &self.group,
            (
                member.generation,
                &member.member_id,
                member.instance_id.as_deref(),
            ),
            &by_topic,
        )
        .await?;
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

    pub(super) async fn fetch_offsets(
        &self,
        conn: &mut Conn,
        assigned: &[(String, i32)],
    ) -> Result<HashMap<(String, i32), i64>, ConnError> {
        let config = &self.rt.config;
        let patience = config.transaction_timeout + config.request_timeout;
        fetch_offsets(conn, &self.group, assigned, patience).await
    }

    pub(super) async fn leave(&self, conn: &mut Option<Conn>, member: &Member) {
        if member.instance_id.is_some() {
            // A static member keeps its place: a restart within the session timeout gets its
            // partitions back without a rebalance (as the Java client does on close).
            return;
        }
        let conn = match self.conn(conn).await {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!(group = self.group, error = %e, "cannot reach the coordinator to leave the group; it will expire the member");
                return;
            }
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

/// The offsets `group` committed for `assigned` partitions (-1: none). Only stable offsets
/// are taken (KIP-447 `require_stable`, as the Java consumer asks under `read_committed`): a
/// partition whose offsets wait in a transaction that is committing (or not yet ended) is
/// asked again, with backoff, for up to `patience`, so a new owner never starts from the
/// offsets before that commit (it would write the committed outputs again). Any other
/// partition error in the answer fails the whole fetch.
pub(crate) async fn fetch_offsets(
    conn: &mut Conn,
    group: &str,
    assigned: &[(String, i32)],
    patience: Duration,
) -> Result<HashMap<(String, i32), i64>, ConnError> {
    let deadline = tokio::time::Instant::now() + patience;
    let mut backoff = Backoff::new(Duration::from_millis(10), Duration::from_millis(500));
    let mut told = false;
    loop {
        match fetch_offsets_once(conn, group, assigned).await? {
            Ok(offsets) => return Ok(offsets),
            Err(unstable) if tokio::time::Instant::now() + backoff.wait() < deadline => {
                if !std::mem::replace(&mut told, true) {
                    tracing::info!(group, partition = %unstable, "committed offsets wait in a transaction that has not ended; asking again until it has");
                }
                backoff.sleep().await;
            }
            Err(unstable) => {
                return Err(ConnError::Protocol {
                    addr: conn.addr().to_owned(),
                    reason: format!(
                        "OffsetFetch: the committed offset of {unstable} of group {group:?} \
                         stayed in an open transaction for {patience:?}"
                    ),
                })
            }
        }
    }
}

/// One OffsetFetch: the offsets, or (inner `Err`) a partition whose offset is not stable yet.
async fn fetch_offsets_once(
    conn: &mut Conn,
    group: &str,
    assigned: &[(String, i32)],
) -> Result<Result<HashMap<(String, i32), i64>, String>, ConnError> {
    let mut by_topic: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for (t, p) in assigned {
        by_topic.entry(t).or_default().push(*p);
    }
    let mut out = HashMap::new();
    if by_topic.is_empty() {
        return Ok(Ok(out));
    }
    let version = conn.version::<OffsetFetchRequest>(8)?;
    let group = GroupId(StrBytes::from_string(group.to_owned()));
    let mut req = OffsetFetchRequest::default();
    // v7 added it; older brokers answer what is committed.
    req.require_stable = version >= 7;
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
    // Every partition of the answer, with its error code.
    let mut parts: Vec<(&str, i32, i16, i64)> = Vec::new();
    if version >= 8 {
        for g in &resp.groups {
            if let Some(e) = ResponseError::try_from_code(g.error_code) {
                return Err(protocol_err(format!("OffsetFetch: {e}")));
            }
            for t in &g.topics {
                for p in &t.partitions {
                    parts.push((
                        &t.name.0,
                        p.partition_index,
                        p.error_code,
                        p.committed_offset,
                    ));
                }
            }
        }
    } else {
        if let Some(e) = ResponseError::try_from_code(resp.error_code) {
            return Err(protocol_err(format!("OffsetFetch: {e}")));
        }
        for t in &resp.topics {
            for p in &t.partitions {
                parts.push((
                    &t.name.0,
                    p.partition_index,
                    p.error_code,
                    p.committed_offset,
                ));
            }
        }
    }
    for (topic, partition, code, offset) in parts {
        if let Some(e @ ResponseError::UnstableOffsetCommit) = ResponseError::try_from_code(code) {
            return Ok(Err(format!(
                "partition {partition} of topic {topic:?} ({e:?})"
            )));
        }
        partition_refused(topic, partition, code).map_err(protocol_err)?;
        out.insert((topic.to_owned(), partition), offset);
    }
    Ok(Ok(out))
}

/// Commits `offsets` (by topic: partition and next offset) for `group` as the member
/// `(generation, member id, instance id)` (generation -1 and no member id: a client outside
/// the group, allowed while the group has no members). Returns the partitions the coordinator
/// refused, with why.
pub(crate) async fn commit_offsets(
    conn: &mut Conn,
    group: &str,
    (generation, member_id, instance_id): (i32, &str, Option<&str>),
    offsets: &BTreeMap<&str, Vec<(i32, i64)>>,
) -> Result<Vec<(String, ResponseError)>, ConnError> {
    let version = conn.version::<OffsetCommitRequest>(9)?;
    let mut req = OffsetCommitRequest::default();
    req.group_id = group_id(group);
    req.generation_id_or_member_epoch = generation;
    req.member_id = StrBytes::from_string(member_id.to_owned());
    req.group_instance_id = instance_id.map(|i| StrBytes::from_string(i.to_owned()));
    req.retention_time_ms = -1;
    req.topics = offsets
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
    Ok(refused)
}

/// Heartbeats every `heartbeat_interval` on a connection of its own, until aborted or the
/// coordinator says the member is gone. Reports the first rebalance and keeps heartbeating
/// through it (the session stays alive while revoked partitions drain). A coordinator that
/// cannot be reached or moved is found again; the member keeps its generation meanwhile.
pub(super) async fn heartbeat_loop(
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
pub(super) async fn heartbeat(
    conn: &mut Conn,
    member: &Member,
) -> Result<Option<ResponseError>, ConnError> {
    let version = conn.version::<HeartbeatRequest>(4)?;
    let mut req = HeartbeatRequest::default();
    req.group_id = group_id(&member.group);
    req.generation_id = member.generation;
    req.member_id = StrBytes::from_string(member.member_id.clone());
    req.group_instance_id = member.instance_id.clone().map(StrBytes::from_string);
    let resp = conn.send(&req, version).await?;
    Ok(ResponseError::try_from_code(resp.error_code))
}

/// The positions of a generation's partitions (those that have one), by topic.
fn positions_by_topic(running: &Running) -> BTreeMap<&str, Vec<(i32, i64)>> {
    let mut by_topic: BTreeMap<&str, Vec<(i32, i64)>> = BTreeMap::new();
    for ((topic, partition), position, _) in &running.positions {
        if let Some(offset) = position.get() {
            by_topic
                .entry(topic)
                .or_default()
                .push((*partition, offset));
        }
    }
    by_topic
}

/// A member's JoinGroup metadata as the leader reads it: topics, and for cooperative members
/// what they own since which generation (from the subscription's v2 field, else the 4-byte
/// user data of Java's cooperative-sticky assignor).
fn claim(member: String, metadata: bytes::Bytes) -> Claim {
    let Some(sub) = decode_versioned::<ConsumerProtocolSubscription>(metadata) else {
        return Claim {
            member,
            topics: Vec::new(),
            owned: Vec::new(),
            generation: -1,
        };
    };
    let from_user_data = sub
        .user_data
        .as_deref()
        .and_then(|d| <[u8; 4]>::try_from(d).ok())
        .map(i32::from_be_bytes);
    let generation = match sub.generation_id {
        -1 => from_user_data.unwrap_or(-1),
        g => g,
    };
    Claim {
        member,
        topics: sub.topics.iter().map(|t| t.to_string()).collect(),
        owned: sub
            .owned_partitions
            .iter()
            .flat_map(|tp| tp.partitions.iter().map(|p| (tp.topic.0.to_string(), *p)))
            .collect(),
        generation,
    }
}

pub(super) fn group_id(group: &str) -> GroupId {
    GroupId(StrBytes::from_string(group.to_owned()))
}

pub(super) enum JoinError {
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

/// A partition of an OffsetFetch answer that carries an error has no usable committed offset
/// (its `committed_offset` is -1): starting it from `auto_offset_reset` would repeat or skip
/// what the group already handled. As the Java consumer does, such an answer fails the fetch
/// (retried: the member rejoins), for example `UNSTABLE_OFFSET_COMMIT` while a transaction's
/// offsets are pending.
fn partition_refused(topic: &str, partition: i32, code: i16) -> Result<(), String> {
    match ResponseError::try_from_code(code) {
        None => Ok(()),
        Some(e) => Err(format!(
            "OffsetFetch: partition {partition} of topic {topic:?}: {e}"
        )),
    }
}
