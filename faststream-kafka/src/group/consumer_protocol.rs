//! A member of the consumer group protocol (KIP-848, `group_protocol = "consumer"`): the
//! broker assigns, the member heartbeats with `ConsumerGroupHeartbeat` and reconciles.
//!
//! There are no generations that stop everything. The heartbeat (a task of its own, so that
//! handlers and commits never delay it) brings the member's target assignment; the member
//! starts the partitions it gained at once, and stops only those it lost: they finish the
//! message in hand, their positions are committed, and the next heartbeat tells the broker
//! they are free (only then does the broker give them to another member). Every other
//! partition keeps running throughout.
//!
//! Fencing (the broker's `FENCED_MEMBER_EPOCH` or `UNKNOWN_MEMBER_ID`, after a session
//! timeout or a revocation later than the rebalance timeout): the partitions may already be
//! another member's, so they are dropped without committing, and the member joins again.

use super::*;
use kafka_protocol::messages::consumer_group_heartbeat_request::TopicPartitions;
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{
    ConsumerGroupHeartbeatRequest, ConsumerGroupHeartbeatResponse, MetadataRequest, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use running::Assigned;
use uuid::Uuid;

/// The member epoch of a dynamic member leaving the group.
const LEAVE: i32 = -1;
/// The member epoch of a static member leaving: the broker keeps its assignment for the
/// session timeout, for the same `group_instance_id` to take back.
const LEAVE_STATIC: i32 = -2;

/// What the member reports in its heartbeats.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Reported {
    /// The subscribed topic names.
    topics: Vec<String>,
    /// The partitions the member owns (started, and not yet released).
    owned: BTreeSet<Assigned>,
}

/// The member's identity as the broker last confirmed it.
#[derive(Debug, Clone)]
struct Identity {
    member_id: String,
    epoch: i32,
}

/// What the heartbeat task tells the member.
enum Event {
    /// The broker's target assignment for this member (it changed).
    Assigned(BTreeSet<Assigned>),
    /// The broker no longer knows the member at its epoch: drop the partitions, join again.
    Fenced(ResponseError),
    /// The member cannot go on.
    Fatal(KafkaError),
}

/// Revoked partitions draining before the member releases them.
struct Revoking {
    parts: BTreeSet<Assigned>,
    since: Instant,
    deadline: Instant,
}

impl GroupRunner {
    /// Serves the group on the consumer group protocol until shutdown (`Ok`) or until a
    /// partition consumer stopped on its own or the broker refused the member (`Err`).
    pub(super) async fn run_consumer_protocol(self) -> Result<(), KafkaError> {
        // KIP-1082: the member picks its id; it stays the same across rejoins.
        let member_id = Uuid::from_u64_pair(fastrand::u64(..), fastrand::u64(..)).to_string();
        let (report_tx, report_rx) = watch::channel(Reported {
            topics: self.topic_names(),
            owned: BTreeSet::new(),
        });
        let (identity_tx, identity) = watch::channel(Identity {
            member_id: member_id.clone(),
            epoch: 0,
        });
        let (events_tx, mut events) = mpsc::unbounded_channel();
        // On the heartbeat thread: the member stays in its group while handlers hold the
        // service's workers.
        let heartbeat = super::heartbeat_thread::spawn(heartbeats(
            self.rt.config.clone(),
            self.group.clone(),
            self.settings,
            report_rx,
            identity_tx,
            events_tx,
        ));
        let initial = self.initial_counts().await;
        let member = |identity: &watch::Receiver<Identity>| {
            let now = identity.borrow();
            Member {
                group: self.group.clone(),
                member_id: now.member_id.clone(),
                instance_id: self.rt.config.group_instance_id.clone(),
                generation: now.epoch,
                leader: false,
            }
        };
        let mut conn: Option<Conn> = None;
        let mut running = Running::new();
        let mut owned: BTreeSet<Assigned> = BTreeSet::new();
        let mut target: Option<BTreeSet<Assigned>> = None;
        let mut revoking: Option<Revoking> = None;
        // When adding partitions failed (their committed offsets could not be fetched).
        let mut retry_add: Option<Instant> = None;
        let mut ready_sent = false;
        let mut assigned_once = false;
        let mut commit = tokio::time::interval(self.settings.commit_interval);
        commit.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Pattern subscriptions are resolved here and sent as names: topics created since are
        // looked for every `metadata_max_age`, as under the classic protocol.
        let every = self.rt.config.metadata_max_age;
        let mut refresh = tokio::time::interval_at(Instant::now() + every, every);
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut subscriptions = self.rt.pipeline.control().watch_subscriptions();
        if !self.dynamic.is_empty() {
            let now = subscriptions.borrow_and_update().clone();
            if self.apply_subscriptions(&now).await {
                report_tx.send_modify(|r| r.topics = self.topic_names());
            }
        }
        let mut shutdown = self.shutdown.clone();
        let far = || Instant::now() + Duration::from_secs(86_400);
        let failure: Option<KafkaError> = loop {
            // Set when an exactly-once group's transaction was aborted.
            let mut aborted = false;
            let revoke_deadline = revoking.as_ref().map_or_else(far, |r| r.deadline);
            let retry_at = retry_add.unwrap_or_else(far);
            tokio::select! {
                () = shutdown.wait() => break None,
                Some(()) = running.started.recv(), if running.starting > 0 => {
                    running.starting -= 1;
                    if assigned_once {
                        self.announce_ready(&running, &mut ready_sent);
                    }
                }
                event = events.recv() => match event {
                    Some(Event::Assigned(parts)) => {
                        tracing::info!(group = self.group, epoch = identity.borrow().epoch, partitions = ?parts, "target assignment");
                        target = Some(parts);
                    }
                    Some(Event::Fenced(e)) => {
                        tracing::warn!(group = self.group, error = %e, partitions = ?owned, "no longer a member: dropping the partitions without committing and joining again");
                        revoking = None;
                        target = None;
                        running.drop_all().await;
                        owned.clear();
                        report_tx.send_modify(|r| r.owned.clear());
                        if let Some(txn) = &self.rt.txn {
                            // Their outputs since the last commit may be another's to write.
                            if txn.abort("the member was fenced".into()).await {
                                crate::metrics::transaction(&self.group, "aborted");
                            }
                            txn.reopen();
                        }
                        crate::metrics::assigned(&self.group, 0);
                        crate::metrics::rebalance(&self.group, "consumer", "fenced");
                        continue;
                    }
                    Some(Event::Fatal(e)) => break Some(e),
                    None => break Some(KafkaError::Crashed("the group heartbeat stopped".into())),
                },
                Some(joined) = running.tasks.join_next_with_id() => {
                    if let Some(e) = running.finished(joined) {
                        break Some(e);
                    }
                }
                () = tokio::time::sleep_until(revoke_deadline), if revoking.is_some() => {
                    let r = revoking.as_mut().expect("guarded");
                    self.abandon(&running, &r.parts);
                    running.abort(&r.parts);
                    r.deadline = far();
                }
                () = tokio::time::sleep_until(retry_at), if retry_add.is_some() => retry_add = None,
                // Revoked partitions with nothing left running: release them now.
                () = std::future::ready(()), if revoking.as_ref().is_some_and(|r| !running.serves_any(&r.parts)) => {}
                _ = commit.tick() => {
                    aborted = self.commit_consumer(&mut conn, &member(&identity), &running).await;
                }
                Some(reply) = running.commit_requests.recv() => {
                    aborted = self.commit_consumer(&mut conn, &member(&identity), &running).await;
                    let _ = reply.send(());
                }
                Ok(()) = subscriptions.changed(), if !self.dynamic.is_empty() => {
                    let now = subscriptions.borrow_and_update().clone();
                    if self.apply_subscriptions(&now).await {
                        tracing::info!(group = self.group, "subscriptions of dynamic handlers changed");
                        report_tx.send_modify(|r| r.topics = self.topic_names());
                    }
                }
                _ = refresh.tick(), if !self.patterns.is_empty() => {
                    if self.new_pattern_topics().await.is_some() {
                        report_tx.send_modify(|r| r.topics = self.topic_names());
                    }
                }
            }
            // Revoked partitions that stopped: commit them and release them (an aborted
            // transaction leaves their committed offsets where the next owner starts).
            if let Some(r) = revoking.as_ref().filter(|r| !running.serves_any(&r.parts)) {
                aborted |= self
                    .commit_consumer(&mut conn, &member(&identity), &running)
                    .await;
                running.forget(&r.parts);
                for part in &r.parts {
                    owned.remove(part);
                }
                tracing::info!(group = self.group, partitions = ?r.parts, drained_in = ?r.since.elapsed(), "revoked partitions committed and released");
                crate::metrics::rebalance_pause(&self.group, "consumer", r.since.elapsed());
                report_tx.send_modify(|rep| rep.owned = owned.clone());
                crate::metrics::assigned(&self.group, owned.len());
                if let Some(hook) = &self.rt.config.hooks.revoked {
                    hook(&self.group, &r.parts.iter().cloned().collect::<Vec<_>>());
                }
                revoking = None;
            }
            if aborted {
                // What every partition did since the last commit was undone: all start again
                // from the committed offsets (those being revoked are released as they are).
                tracing::warn!(group = self.group, partitions = ?owned, "transaction aborted: the partitions start again from the committed offsets");
                let restart = Ended::Rejoin {
                    reset_member: false,
                    cause: "abort",
                };
                let m = member(&identity);
                if let Ended::Failed(e) = self
                    .finish_generation(&mut conn, &m, &mut running, restart)
                    .await
                {
                    break Some(e);
                }
                running.forget(&owned);
                if let Some(r) = revoking.take() {
                    for part in &r.parts {
                        owned.remove(part);
                    }
                    report_tx.send_modify(|rep| rep.owned = owned.clone());
                }
                // Started again below, as gained partitions; what the broker is told they own
                // does not change meanwhile.
                owned.clear();
                crate::metrics::rebalance(&self.group, "consumer", "abort");
            }
            // Reconcile: one revocation at a time, gained partitions at once.
            let Some(want) = target.as_ref() else {
                continue;
            };
            if revoking.is_none() {
                let lost: BTreeSet<Assigned> = owned.difference(want).cloned().collect();
                if !lost.is_empty() {
                    tracing::info!(group = self.group, partitions = ?lost, "revoking: the other partitions keep running");
                    running.stop(&lost);
                    crate::metrics::rebalance(&self.group, "consumer", "revoked");
                    revoking = Some(Revoking {
                        parts: lost,
                        since: Instant::now(),
                        deadline: Instant::now() + self.revoke_limit(),
                    });
                }
            }
            let gained: Vec<Assigned> = want.difference(&owned).cloned().collect();
            if !gained.is_empty() && retry_add.is_none() {
                match self.add(&mut conn, &mut running, &gained, &initial).await {
                    Ok(()) => {
                        tracing::info!(group = self.group, partitions = ?gained, "partitions assigned: consuming");
                        if let Some(hook) = &self.rt.config.hooks.assigned {
                            hook(&self.group, &gained);
                        }
                        owned.extend(gained);
                        report_tx.send_modify(|r| r.owned = owned.clone());
                        crate::metrics::assigned(&self.group, owned.len());
                        crate::metrics::rebalance(
                            &self.group,
                            "consumer",
                            if assigned_once { "assigned" } else { "join" },
                        );
                    }
                    Err(e) => {
                        conn = None;
                        tracing::warn!(group = self.group, error = %e, "fetching committed offsets failed; trying again");
                        retry_add = Some(Instant::now() + REJOIN_PAUSE.1);
                        continue;
                    }
                }
            }
            if !assigned_once && want.is_subset(&owned) {
                assigned_once = true;
                self.announce_ready(&running, &mut ready_sent);
            }
        };
        // Stop: every partition finishes what it has in hand, its position is committed,
        // then the member leaves (a static one keeps its assignment for its restart).
        let ended = match failure {
            None => Ended::Shutdown,
            Some(e) => Ended::Failed(e),
        };
        let ended = self
            .finish_generation(&mut conn, &member(&identity), &mut running, ended)
            .await;
        if let Some(hook) = &self.rt.config.hooks.revoked {
            hook(&self.group, &owned.iter().cloned().collect::<Vec<_>>());
        }
        crate::metrics::assigned(&self.group, 0);
        drop(heartbeat);
        if !ready_sent {
            let _ = self.ready.send(());
        }
        let now = identity.borrow().clone();
        self.leave_consumer_group(&now).await;
        match ended {
            Ended::Failed(e) => Err(e),
            _ => Ok(()),
        }
    }

    /// Commits every partition's position; a refusal is logged (the heartbeat settles the
    /// membership: a stale epoch is retried at the next commit with the new one).
    /// Exactly-once: commits the group's transaction with the positions instead; returns
    /// whether it was aborted (every partition then starts again from the committed offsets).
    async fn commit_consumer(
        &self,
        conn: &mut Option<Conn>,
        member: &Member,
        running: &Running,
    ) -> bool {
        if member.generation <= 0 {
            return false;
        }
        if self.rt.txn.is_some() {
            let ended = self.commit(conn, member, running).await;
            return matches!(ended, Some(Ended::Rejoin { cause: "abort", .. }));
        }
        match self.try_commit(conn, member, running).await {
            Ok(refused) if refused.is_empty() => {}
            Ok(refused) => {
                let reason = refused
                    .iter()
                    .map(|(partition, e)| format!("{partition}: {e}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                tracing::warn!(
                    group = self.group,
                    epoch = member.generation,
                    reason,
                    "offset commit refused; retrying at the next commit"
                );
            }
            Err(e) => {
                tracing::warn!(group = self.group, error = %e, "offset commit failed; finding the coordinator again");
                *conn = None;
            }
        }
        false
    }

    /// Leaves the group: epoch -1, or -2 for a static member (its partitions wait for its
    /// restart within the session timeout).
    async fn leave_consumer_group(&self, identity: &Identity) {
        if identity.epoch <= 0 {
            return;
        }
        let config = &self.rt.config;
        let epoch = match config.group_instance_id {
            Some(_) => LEAVE_STATIC,
            None => LEAVE,
        };
        let left = async {
            let mut conn = find_coordinator(config, &self.group).await?;
            let version = conn.version::<ConsumerGroupHeartbeatRequest>(1)?;
            let mut req = ConsumerGroupHeartbeatRequest::default();
            req.group_id = coordinator::group_id(&self.group);
            req.member_id = StrBytes::from_string(identity.member_id.clone());
            req.member_epoch = epoch;
            req.instance_id = config.group_instance_id.clone().map(StrBytes::from_string);
            req.rebalance_timeout_ms = -1;
            let resp = conn.send(&req, version).await?;
            Ok::<_, ConnError>(ResponseError::try_from_code(resp.error_code))
        };
        match tokio::time::timeout(config.request_timeout, left).await {
            Ok(Ok(None)) => {
                tracing::info!(
                    group = self.group,
                    member = identity.member_id,
                    "left the group"
                )
            }
            Ok(Ok(Some(e))) => {
                tracing::warn!(group = self.group, error = %e, "leaving the group refused; the coordinator will expire the member")
            }
            Ok(Err(e)) => {
                tracing::warn!(group = self.group, error = %e, "cannot leave the group; the coordinator will expire the member")
            }
            Err(_) => {
                tracing::warn!(
                    group = self.group,
                    "leaving the group timed out; the coordinator will expire the member"
                )
            }
        }
    }
}

/// Heartbeats at the broker's interval, and at once when what the member reports changes
/// (a partition started or released). Publishes the member's epoch; reports assignments,
/// fencing and refusals.
async fn heartbeats(
    config: Arc<Config>,
    group: String,
    settings: GroupSettings,
    mut report: watch::Receiver<Reported>,
    identity: watch::Sender<Identity>,
    events: mpsc::UnboundedSender<Event>,
) {
    let mut conn: Option<Conn> = None;
    let mut names = TopicNames::default();
    let mut interval = settings.heartbeat_interval;
    let mut next = Instant::now();
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
    let mut last_ok = Instant::now();
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(next) => {}
            changed = report.changed() => if changed.is_err() { return },
        }
        let now = report.borrow_and_update().clone();
        if conn.as_ref().is_none_or(Conn::is_broken) {
            match find_coordinator(&config, &group).await {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    tracing::warn!(group, error = %e, since_last_heartbeat = ?last_ok.elapsed(), "cannot reach the group coordinator; keeping the partitions and retrying");
                    next = Instant::now() + backoff.wait();
                    backoff.advance();
                    continue;
                }
            }
        }
        let c = conn.as_mut().expect("connected above");
        let me = identity.borrow().clone();
        let answer = heartbeat(c, &config, &group, &settings, &me, &now, &mut names).await;
        let resp = match answer {
            Ok(resp) => resp,
            Err(ConnError::Unsupported { addr, .. }) => {
                let _ = events.send(Event::Fatal(KafkaError::Unsupported(format!(
                    "consumer group {group:?} uses group_protocol = \"consumer\" (KIP-848), but the broker {addr} does not offer ConsumerGroupHeartbeat (Apache Kafka 4.0 or later has it): set group_protocol = \"classic\""
                ))));
                return;
            }
            Err(e) if e.is_fatal() => {
                let _ = events.send(Event::Fatal(KafkaError::GroupRefused {
                    group: group.clone(),
                    reason: e.to_string(),
                }));
                return;
            }
            Err(e) => {
                tracing::warn!(group, error = %e, since_last_heartbeat = ?last_ok.elapsed(), "heartbeat failed; finding the coordinator again (partitions kept)");
                conn = None;
                next = Instant::now() + backoff.wait();
                backoff.advance();
                continue;
            }
        };
        match ResponseError::try_from_code(resp.error_code) {
            None => {}
            Some(
                e @ (ResponseError::NotCoordinator
                | ResponseError::CoordinatorNotAvailable
                | ResponseError::CoordinatorLoadInProgress),
            ) => {
                tracing::debug!(group, error = %e, "finding the group coordinator again");
                conn = None;
                next = Instant::now() + backoff.wait();
                backoff.advance();
                continue;
            }
            Some(e @ (ResponseError::UnknownMemberId | ResponseError::FencedMemberEpoch)) => {
                identity.send_modify(|i| i.epoch = 0);
                let _ = events.send(Event::Fenced(e));
                next = Instant::now();
                continue;
            }
            Some(ResponseError::UnreleasedInstanceId) => {
                // The instance's previous run has not left (it crashed): the broker frees
                // its id within the session timeout.
                tracing::warn!(group, instance_id = config.group_instance_id, "the group still holds this group_instance_id for an earlier run of the instance; waiting for the broker to release it");
                next = Instant::now() + Duration::from_secs(1);
                continue;
            }
            Some(ResponseError::FencedInstanceId) => {
                let _ = events.send(Event::Fatal(KafkaError::Fenced {
                    group: group.clone(),
                    instance_id: config.group_instance_id.clone().unwrap_or_default(),
                }));
                return;
            }
            Some(
                e @ (ResponseError::UnsupportedAssignor
                | ResponseError::InvalidRequest
                | ResponseError::GroupMaxSizeReached
                | ResponseError::GroupAuthorizationFailed
                | ResponseError::TopicAuthorizationFailed
                | ResponseError::UnsupportedVersion
                | ResponseError::GroupIdNotFound
                | ResponseError::InconsistentGroupProtocol),
            ) => {
                let message = resp.error_message.as_deref().unwrap_or("");
                let _ = events.send(Event::Fatal(KafkaError::GroupRefused {
                    group: group.clone(),
                    reason: format!("ConsumerGroupHeartbeat refused: {e} {message}"),
                }));
                return;
            }
            Some(e) => {
                tracing::warn!(group, error = %e, message = resp.error_message.as_deref().unwrap_or(""), "heartbeat refused; retrying");
                next = Instant::now() + backoff.wait();
                backoff.advance();
                continue;
            }
        }
        backoff.reset();
        last_ok = Instant::now();
        if resp.heartbeat_interval_ms > 0 {
            interval = Duration::from_millis(resp.heartbeat_interval_ms as u64);
        }
        let member_id = resp
            .member_id
            .as_deref()
            .map(|m| m.to_string())
            .unwrap_or(me.member_id);
        identity.send_replace(Identity {
            member_id,
            epoch: resp.member_epoch,
        });
        next = Instant::now() + interval;
        if let Some(assignment) = resp.assignment {
            let ids: Vec<Uuid> = assignment
                .topic_partitions
                .iter()
                .map(|t| t.topic_id)
                .collect();
            if !names.knows(&ids) {
                if let Err(e) = names.refresh(c, &now.topics).await {
                    // Ask again: the next answer repeats the assignment until it is acted on.
                    tracing::warn!(group, error = %e, "looking up the assigned topics failed; retrying");
                    conn = None;
                    continue;
                }
            }
            let mut parts = BTreeSet::new();
            for t in &assignment.topic_partitions {
                match names.name(&t.topic_id) {
                    Some(name) => parts.extend(t.partitions.iter().map(|p| (name.to_owned(), *p))),
                    None => {
                        tracing::warn!(group, topic_id = %t.topic_id, "assigned a topic this member does not subscribe to; ignoring it")
                    }
                }
            }
            let _ = events.send(Event::Assigned(parts));
        }
    }
}

/// One `ConsumerGroupHeartbeat` with the member's full state (as on joining: the broker takes
/// it whole every time, which keeps a member that reconnected to a new coordinator simple).
async fn heartbeat(
    conn: &mut Conn,
    config: &Config,
    group: &str,
    settings: &GroupSettings,
    me: &Identity,
    now: &Reported,
    names: &mut TopicNames,
) -> Result<ConsumerGroupHeartbeatResponse, ConnError> {
    let version = conn.version::<ConsumerGroupHeartbeatRequest>(1)?;
    let owned: Vec<&Assigned> = match me.epoch {
        // Joining: the member owns nothing yet.
        0 => Vec::new(),
        _ => now.owned.iter().collect(),
    };
    let topics: Vec<String> = owned.iter().map(|(t, _)| t.clone()).collect();
    if !names.knows_names(&topics) {
        // The owned topics too: one no longer subscribed is still reported until released.
        let mut wanted = now.topics.clone();
        wanted.extend(topics.iter().filter(|t| !now.topics.contains(t)).cloned());
        names.refresh(conn, &wanted).await?;
    }
    let mut by_topic: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for (t, p) in owned {
        by_topic.entry(t).or_default().push(*p);
    }
    let mut req = ConsumerGroupHeartbeatRequest::default();
    req.group_id = coordinator::group_id(group);
    // v0: the broker names the member on its first heartbeat.
    req.member_id = match (version, me.epoch) {
        (0, 0) => StrBytes::default(),
        _ => StrBytes::from_string(me.member_id.clone()),
    };
    req.member_epoch = me.epoch;
    req.instance_id = config.group_instance_id.clone().map(StrBytes::from_string);
    req.rebalance_timeout_ms = ms(settings.rebalance_timeout);
    req.subscribed_topic_names = Some(
        now.topics
            .iter()
            .map(|t| TopicName(StrBytes::from_string(t.clone())))
            .collect(),
    );
    req.server_assignor = settings
        .assignor_set
        .then(|| StrBytes::from_static_str(settings.assignor.protocol_name()));
    req.topic_partitions = Some(
        by_topic
            .into_iter()
            .filter_map(|(t, partitions)| {
                let mut tp = TopicPartitions::default();
                tp.topic_id = names.id(t)?;
                tp.partitions = partitions;
                Some(tp)
            })
            .collect(),
    );
    conn.send(&req, version).await
}

/// Topic ids (the consumer group protocol's assignments name topics by id) and names.
#[derive(Default)]
struct TopicNames {
    by_id: HashMap<Uuid, String>,
}

impl TopicNames {
    fn knows(&self, ids: &[Uuid]) -> bool {
        ids.iter().all(|id| self.by_id.contains_key(id))
    }

    fn knows_names(&self, names: &[String]) -> bool {
        names.iter().all(|n| self.by_id.values().any(|v| v == n))
    }

    fn name(&self, id: &Uuid) -> Option<&str> {
        self.by_id.get(id).map(String::as_str)
    }

    fn id(&self, name: &str) -> Option<Uuid> {
        self.by_id
            .iter()
            .find_map(|(id, n)| (n == name).then_some(*id))
    }

    /// Looks the ids of `topics` up (Metadata v10 or later, from the broker at hand).
    async fn refresh(&mut self, conn: &mut Conn, topics: &[String]) -> Result<(), ConnError> {
        let version = conn.version::<MetadataRequest>(12)?;
        if version < 10 {
            return Err(ConnError::Protocol {
                addr: conn.addr().to_owned(),
                reason: format!("Metadata v{version} carries no topic ids (v10 or later needed)"),
            });
        }
        let mut req = MetadataRequest::default();
        req.topics = Some(
            topics
                .iter()
                .map(|t| {
                    let mut topic = MetadataRequestTopic::default();
                    topic.name = Some(TopicName(StrBytes::from_string(t.clone())));
                    topic
                })
                .collect(),
        );
        req.allow_auto_topic_creation = false;
        let resp = conn.send(&req, version).await?;
        for t in resp.topics {
            if let Some(name) = t.name {
                if !t.topic_id.is_nil() {
                    self.by_id.insert(t.topic_id, name.0.to_string());
                }
            }
        }
        Ok(())
    }
}
