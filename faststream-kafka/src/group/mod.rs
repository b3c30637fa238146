//! A consumer-group member on Kafka's classic group protocol, with the standard `consumer`
//! protocol type so members of other client libraries can share a group with ours.
//!
//! One [`GroupRunner`] per group id. Each generation: find the coordinator, join (the leader
//! assigns partitions with the range or round-robin assignor), sync, fetch committed offsets,
//! start one partition consumer per assigned partition, commit their positions periodically.
//!
//! Heartbeats run in a task of their own, on their own connection and on a thread of their
//! own ([`heartbeat_thread`]), for as long as the member holds partitions: while handlers run
//! (even handlers that block every worker of the service), while revoked partitions drain,
//! during commits and hooks. A heartbeat that cannot reach the coordinator finds it again and
//! keeps the member's generation and partitions; only the coordinator's word (a rebalance, an
//! unknown member, an illegal generation) ends a generation, as in the Java client.
//!
//! Ending a generation (rebalance, shutdown, or a partition consumer that stopped on its own):
//! the consumers stop fetching, finish the message in hand and wait for its outputs' acks,
//! within the rebalance timeout (or the shutdown deadline); then the positions are committed.
//! A consumer still busy past that bound is abandoned without committing its message, and the
//! handler is named in the log with the setting to raise.
//!
//! Stopping in the middle of a rebalance: the member goes on joining until the group settled,
//! then leaves (or, past a bound, stops without leaving; see `finish_joining`). A member
//! without an assignment for longer than a rebalance may take says so in a warning, naming
//! the step it waits for.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use faststream_core::{Assignor, GroupProtocol, OffsetReset, RouteDef, Shutdown, ShutdownTrigger};
use kafka_protocol::error::ResponseError;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::backoff::Backoff;
use crate::config::{Config, GroupSettings};
use crate::consume::{GroupLink, LaneLink, PartitionConsumer, Runtime};
use crate::error::KafkaError;
use crate::protocol::{ms, Conn, ConnError};
use faststream_core::{PartitionStop, Position, RetryLane, Subscriptions};
use tokio_util::task::AbortOnDropHandle;

mod consumer_protocol;
mod coordinator;
mod heartbeat_thread;
mod running;

use running::Running;

pub(crate) use crate::protocol::find_coordinator;
pub(crate) use coordinator::{commit_offsets, fetch_offsets};

use coordinator::{heartbeat_loop, JoinError};

/// How often a topic the group subscribes to but the cluster does not list (not created yet,
/// or lost with a broker) is looked up again: the Java client's longest retry backoff, so a
/// topic created a moment later is assigned within about a second, not at the next
/// `metadata_max_age`.
const MISSING_TOPIC_RETRY: Duration = Duration::from_secs(1);

/// Pauses between join attempts the coordinator asked for (a rebalance started meanwhile):
/// the first is short, repeated ones grow so a confused coordinator is not flooded.
const REJOIN_PAUSE: (Duration, Duration) = (Duration::from_millis(50), Duration::from_secs(1));

/// The partition counts an assignment was made with, by topic (`None`: no metadata): the
/// member's own topics, and as the leader every member's. A change means a new assignment.
type Watched = BTreeMap<String, Option<i32>>;

/// What a join gives.
struct Joined {
    /// This member's partitions.
    assigned: Vec<(String, i32)>,
    /// The partition counts they were assigned with.
    watched: Watched,
    /// Whether the group's assignor is `cooperative-sticky` (KIP-429): partitions that stay
    /// the member's keep running through rebalances.
    cooperative: bool,
}

/// Partitions a cooperative generation keeps consuming while the member joins the next one,
/// with the heartbeat that keeps its session alive meanwhile.
struct Kept {
    running: Running,
    owned: BTreeSet<(String, i32)>,
    /// Held for as long as the partitions are kept: dropping it ends the heartbeats.
    _heartbeat: AbortOnDropHandle<()>,
}

/// The step of joining a member is in, for the warning about a rebalance that takes too long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Step {
    Coordinator,
    Join,
    Metadata,
    Sync,
}

impl Step {
    fn describe(self) -> &'static str {
        match self {
            Step::Coordinator => "finding the group coordinator",
            Step::Join => "JoinGroup: the coordinator waits for every member to rejoin",
            Step::Metadata => "topic metadata for the assignment",
            Step::Sync => "SyncGroup: the leader's assignment",
        }
    }
}

/// Where a join is, readable while the join runs.
#[derive(Debug)]
struct Waiting(AtomicU8);

impl Waiting {
    fn new() -> Self {
        Waiting(AtomicU8::new(Step::Coordinator as u8))
    }

    fn set(&self, step: Step) {
        self.0.store(step as u8, Ordering::Relaxed);
    }

    fn get(&self) -> Step {
        match self.0.load(Ordering::Relaxed) {
            0 => Step::Coordinator,
            1 => Step::Join,
            2 => Step::Metadata,
            _ => Step::Sync,
        }
    }
}

/// One subscription served by a group member.
#[derive(Debug, Clone)]
pub(crate) struct GroupTopic {
    pub(crate) route: &'static RouteDef,
    pub(crate) topic: String,
    pub(crate) reset: OffsetReset,
    /// Subscribed while the service runs ([`faststream_core::Control::subscribe`]): its
    /// partitions start at `reset` when nothing is committed, as at startup.
    pub(crate) dynamic: bool,
}

/// Runs one consumer group member for every subscription with the same group id.
pub(crate) struct GroupRunner {
    pub(crate) group: String,
    /// The subscribed topics: those named, and those a pattern took (growing as topics that
    /// match are created).
    pub(crate) topics: std::sync::Mutex<Vec<GroupTopic>>,
    /// Pattern subscriptions of the group's routes.
    pub(crate) patterns: Vec<crate::topics::TopicPattern>,
    /// Dynamic handlers of the group (`dynamic = true`), with their offset reset: their topics
    /// follow the control's subscriptions.
    pub(crate) dynamic: Vec<(&'static RouteDef, OffsetReset)>,
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
    /// Whether the coordinator named this member the leader of its generation.
    leader: bool,
}

/// Why a generation ended.
enum Ended {
    Shutdown,
    Rejoin {
        reset_member: bool,
        /// What asked for it, as metrics name it: `group` (the coordinator: a member joined
        /// or left), `fenced`, `heartbeat`, `commit`, `metadata`, `subscriptions`.
        cause: &'static str,
    },
    /// A partition consumer stopped on its own, or the member was fenced for good.
    Failed(KafkaError),
}

/// What the heartbeat task reports.
enum Beat {
    Rebalance,
    Fenced(ResponseError),
}

impl GroupRunner {
    /// Serves the group until shutdown (`Ok`) or until one of its partition consumers stopped
    /// on its own (`Err`, after committing what is done and leaving the group).
    pub(crate) async fn run(self) -> Result<(), KafkaError> {
        if self.settings.protocol == GroupProtocol::Consumer {
            return self.run_consumer_protocol().await;
        }
        let config = self.rt.config.clone();
        let mut member = Member {
            group: self.group.clone(),
            member_id: String::new(),
            instance_id: config.group_instance_id.clone(),
            generation: -1,
            leader: false,
        };
        let mut conn: Option<Conn> = None;
        let mut ready_sent = false;
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        let mut shutdown = self.shutdown.clone();
        let initial = self.initial_counts().await;
        // When the member last stopped consuming (startup, or a generation's end), and when to
        // warn that it still has no assignment.
        let mut unassigned_since = Instant::now();
        let mut next_warning = unassigned_since + self.rebalance_bound();
        let mut rejoin_pause = Backoff::new(REJOIN_PAUSE.0, REJOIN_PAUSE.1);
        let mut subscriptions = self.rt.pipeline.control().watch_subscriptions();
        // Why the member is joining again, and when its partitions stopped (`None`: the first
        // join).
        let mut rejoining: Option<(&'static str, Instant)> = None;
        let mut kept: Option<Kept> = None;
        let result = loop {
            if self.shutdown.is_triggered() {
                break Ok(());
            }
            if !self.dynamic.is_empty() {
                let now = subscriptions.borrow_and_update().clone();
                self.apply_subscriptions(&now).await;
            }
            let waiting = Waiting::new();
            let owned = kept.as_ref().map(|k| k.owned.clone()).unwrap_or_default();
            let joined = {
                let join = self.watched_join(
                    &mut conn,
                    &mut member,
                    (&waiting, &owned),
                    unassigned_since,
                    &mut next_warning,
                );
                tokio::pin!(join);
                tokio::select! {
                    j = &mut join => Ok(j),
                    () = shutdown.wait() => {
                        let deadline = self.finish_deadline();
                        Err((tokio::time::timeout_at(deadline, join).await.ok(), deadline))
                    }
                }
            };
            let joined = match joined {
                Ok(joined) => joined,
                Err((first, deadline)) => {
                    if !self
                        .finish_joining(first, deadline, &mut conn, (&mut member, &owned))
                        .await
                    {
                        // Not leaving: see `finish_joining`.
                        member.member_id.clear();
                    }
                    break Ok(());
                }
            };
            let Joined {
                assigned,
                watched,
                cooperative,
            } = match joined {
                Ok(j) => j,
                Err(JoinError::Rejoin {
                    reset_member,
                    reason,
                }) => {
                    tracing::debug!(group = self.group, reason, "joining again");
                    if reset_member {
                        member.member_id.clear();
                        if let Some(k) = kept.take() {
                            // No longer a member: what it kept may be another's already.
                            self.lose(k).await;
                        }
                    }
                    // The coordinator asked for it; a pause that grows while it keeps asking
                    // keeps a confused one from being flooded.
                    tokio::select! {
                        () = tokio::time::sleep(rejoin_pause.wait()) => {},
                        () = shutdown.wait() => break Ok(()),
                    }
                    rejoin_pause.advance();
                    continue;
                }
                Err(JoinError::Failed(e)) => {
                    tracing::warn!(group = self.group, error = %e, retry_in = ?backoff.wait(), "joining the group failed; retrying");
                    conn = None;
                    tokio::select! {
                        () = tokio::time::sleep(backoff.wait()) => {},
                        () = shutdown.wait() => break Ok(()),
                    }
                    backoff.advance();
                    continue;
                }
                Err(JoinError::Fatal(e)) => break Err(e),
            };
            rejoin_pause.reset();
            backoff.reset();
            tracing::info!(
                group = self.group,
                generation = member.generation,
                member = member.member_id,
                partitions = ?assigned,
                "assigned"
            );
            // Heartbeats start before anything else can take time.
            let (beat_tx, beat_rx) = mpsc::unbounded_channel();
            let heartbeat = heartbeat_thread::spawn(heartbeat_loop(
                config.clone(),
                member.clone(),
                self.settings,
                beat_tx,
            ));
            let (mut running, before) = match kept.take() {
                Some(k) => (k.running, k.owned),
                None => (Running::new(), BTreeSet::new()),
            };
            let now: BTreeSet<(String, i32)> = assigned.iter().cloned().collect();
            let revoked: BTreeSet<(String, i32)> = before.difference(&now).cloned().collect();
            let gained: Vec<(String, i32)> = now.difference(&before).cloned().collect();
            if !revoked.is_empty() {
                tracing::info!(group = self.group, generation = member.generation, partitions = ?revoked, "revoking: the other partitions keep running");
                let failure = self.drain(&mut conn, &member, &mut running, &revoked).await;
                if let Some(hook) = &config.hooks.revoked {
                    hook(&self.group, &revoked.iter().cloned().collect::<Vec<_>>());
                }
                if let Some(e) = failure {
                    let ended = self
                        .finish_generation(&mut conn, &member, &mut running, Ended::Failed(e))
                        .await;
                    drop(heartbeat);
                    match ended {
                        Ended::Failed(e) => break Err(e),
                        _ => unreachable!("a failed generation stays failed"),
                    }
                }
            }
            if let Err(e) = self.add(&mut conn, &mut running, &gained, &initial).await {
                conn = None;
                tracing::warn!(group = self.group, error = %e, "fetching committed offsets failed; rejoining");
                let cause = Ended::Rejoin {
                    reset_member: false,
                    cause: "offsets",
                };
                if let Ended::Failed(e) = self
                    .finish_generation(&mut conn, &member, &mut running, cause)
                    .await
                {
                    break Err(e);
                }
                drop(heartbeat);
                unassigned_since = Instant::now();
                next_warning = unassigned_since + self.rebalance_bound();
                continue;
            }
            crate::metrics::assigned(&self.group, assigned.len());
            match rejoining.take() {
                Some((cause, since)) if !before.is_empty() => {
                    // Cooperative: only the revoked partitions paused.
                    crate::metrics::rebalance(&self.group, "classic", cause);
                    tracing::info!(
                        group = self.group,
                        generation = member.generation,
                        cause,
                        took = ?since.elapsed(),
                        kept = before.len() - revoked.len(),
                        revoked = revoked.len(),
                        gained = gained.len(),
                        "cooperative rebalance: the kept partitions never stopped"
                    );
                }
                Some((cause, stopped_at)) => {
                    let pause = stopped_at.elapsed();
                    crate::metrics::rebalance(&self.group, "classic", cause);
                    crate::metrics::rebalance_pause(&self.group, "classic", pause);
                    tracing::info!(
                        group = self.group,
                        generation = member.generation,
                        cause,
                        paused = ?pause,
                        "partitions consumed again after the rebalance"
                    );
                }
                None => crate::metrics::rebalance(&self.group, "classic", "join"),
            }
            if let Some(hook) = &config.hooks.assigned {
                hook(&self.group, &gained);
            }
            if cooperative && !revoked.is_empty() {
                // KIP-429's second round: the released partitions go to their new members.
                kept = Some(Kept {
                    running,
                    owned: now,
                    _heartbeat: heartbeat,
                });
                rejoining = Some(("cooperative", Instant::now()));
                continue;
            }
            let (ended, stopped_at) = self
                .serve_generation(
                    &mut conn,
                    &member,
                    (&watched, &mut subscriptions),
                    &mut running,
                    beat_rx,
                    (&mut ready_sent, cooperative),
                )
                .await;
            if let Ended::Rejoin {
                reset_member: false,
                cause,
            } = ended
            {
                if cooperative && cause != "abort" {
                    kept = Some(Kept {
                        running,
                        owned: now,
                        _heartbeat: heartbeat,
                    });
                    rejoining = Some((cause, stopped_at));
                    continue;
                }
            }
            drop(heartbeat);
            unassigned_since = Instant::now();
            next_warning = unassigned_since + self.rebalance_bound();
            crate::metrics::assigned(&self.group, 0);
            if let Some(hook) = &config.hooks.revoked {
                hook(&self.group, &assigned);
            }
            match ended {
                Ended::Shutdown => {
                    // A leader leaving while the group is forming wedges Tansu's group (see
                    // `finish_joining`): if a rebalance has begun, let it settle first.
                    if member.leader && self.rebalancing(&mut conn, &member).await {
                        let deadline = self.finish_deadline();
                        let begun = Some(Err(JoinError::Rejoin {
                            reset_member: false,
                            reason: "stopping during a rebalance".into(),
                        }));
                        if !self
                            .finish_joining(
                                begun,
                                deadline,
                                &mut conn,
                                (&mut member, &BTreeSet::new()),
                            )
                            .await
                        {
                            member.member_id.clear();
                        }
                    }
                    break Ok(());
                }
                Ended::Failed(e) => break Err(e),
                Ended::Rejoin {
                    reset_member,
                    cause,
                } => {
                    if reset_member {
                        member.member_id.clear();
                    }
                    rejoining = Some((cause, stopped_at));
                }
            }
        };
        if let Some(mut k) = kept.take() {
            // Stopped (or failed) while joining with partitions kept: they finish and commit
            // (a commit the rebalance refuses is retried by the next owner's restart point).
            let ended = self
                .finish_generation(&mut conn, &member, &mut k.running, Ended::Shutdown)
                .await;
            if let Some(hook) = &config.hooks.revoked {
                hook(&self.group, &k.owned.iter().cloned().collect::<Vec<_>>());
            }
            crate::metrics::assigned(&self.group, 0);
            if let (Ended::Failed(e), Ok(())) = (ended, &result) {
                return Err(e);
            }
        }
        if !ready_sent {
            let _ = self.ready.send(());
        }
        if !member.member_id.is_empty() {
            self.leave(&mut conn, &member).await;
        }
        result
    }

    /// Drops partitions kept through a rebalance the member lost its membership in: they may
    /// be another member's already, so nothing is committed (the Java client's "partitions
    /// lost").
    async fn lose(&self, mut k: Kept) {
        tracing::warn!(group = self.group, partitions = ?k.owned, "no longer a member: dropping the kept partitions without committing");
        k.running.drop_all().await;
        if let Some(hook) = &self.rt.config.hooks.revoked {
            hook(&self.group, &k.owned.iter().cloned().collect::<Vec<_>>());
        }
        crate::metrics::assigned(&self.group, 0);
    }

    /// Stops the consumers of `parts` (the others go on), waits until they finished what
    /// they had in hand (within the rebalance timeout), commits and forgets them. Returns the
    /// error of a consumer that stopped on its own meanwhile.
    async fn drain(
        &self,
        conn: &mut Option<Conn>,
        member: &Member,
        running: &mut Running,
        parts: &BTreeSet<(String, i32)>,
    ) -> Option<KafkaError> {
        running.stop(parts);
        let limit = self.revoke_limit();
        let since = Instant::now();
        let mut deadline = Some(since + limit);
        let mut failure = None;
        while running.serves_any(parts) {
            tokio::select! {
                Some(joined) = running.tasks.join_next_with_id() => {
                    if let Some(e) = running.finished(joined) {
                        failure.get_or_insert(e);
                    }
                }
                Some(reply) = running.commit_requests.recv() => {
                    let _ = self.commit(conn, member, running).await;
                    let _ = reply.send(());
                }
                () = tokio::time::sleep_until(deadline.unwrap_or(since)), if deadline.is_some() => {
                    self.abandon(running, parts);
                    running.abort(parts);
                    deadline = None;
                }
            }
        }
        if self.commit(conn, member, running).await.is_some() {
            tracing::warn!(group = self.group, partitions = ?parts, "committing the revoked partitions failed; their next owner starts from the last commit");
        }
        running.forget(parts);
        crate::metrics::rebalance_pause(&self.group, "classic", since.elapsed());
        failure
    }

    /// Logs the consumers of `parts` still running past their drain limit. Exactly-once: the
    /// transaction cannot commit (an abandoned handler's outputs may be in it without its
    /// offset), so it is aborted and every partition starts again from the committed offsets.
    fn abandon(&self, running: &Running, parts: &BTreeSet<(String, i32)>) {
        for s in running
            .serving
            .values()
            .filter(|s| parts.contains(&s.owner))
        {
            if let Some(txn) = &self.rt.txn {
                txn.poison(format!(
                    "the handler of partition {} of topic {:?} was abandoned at the rebalance \
                     deadline: its outputs may be in the transaction without its offset",
                    s.partition, s.topic
                ));
            }
            tracing::error!(
                group = self.group,
                topic = s.topic,
                partition = s.partition,
                handler = s.handler,
                "the handler did not finish within the rebalance timeout (or the shutdown deadline); abandoning it: its message is not committed and will be consumed again. Raise rebalance_timeout_ms (or the shutdown timeout) above the handler's longest run"
            );
        }
    }

    /// Partition counts when the member started: partitions beyond them (all of a topic
    /// created since) appeared while it ran, and are read from their beginning when nothing
    /// was committed for them. Unknown if the lookup failed: then nothing counts as new.
    async fn initial_counts(&self) -> Option<BTreeMap<String, i32>> {
        self.rt
            .producers
            .try_lookup_partitions(&self.topic_names())
            .await
            .ok()
    }

    /// A usable connection to the coordinator: the current one, or a new one.
    async fn conn<'c>(&self, conn: &'c mut Option<Conn>) -> Result<&'c mut Conn, ConnError> {
        if conn.as_ref().is_none_or(Conn::is_broken) {
            *conn = Some(find_coordinator(&self.rt.config, &self.group).await?);
        }
        Ok(conn.as_mut().expect("just connected"))
    }

    fn topic_names(&self) -> Vec<String> {
        let topics = crate::produce::lock(&self.topics);
        let set: BTreeSet<&str> = topics.iter().map(|t| t.topic.as_str()).collect();
        set.into_iter().map(str::to_owned).collect()
    }

    /// Current partition counts of the subscribed topics (fresh metadata).
    async fn partition_counts(&self) -> BTreeMap<String, i32> {
        self.rt
            .producers
            .lookup_partitions(&self.topic_names())
            .await
    }

    /// Fetches committed offsets and starts one consumer per assigned partition in `running`.
    async fn add(
        &self,
        conn: &mut Option<Conn>,
        running: &mut Running,
        assigned: &[(String, i32)],
        initial: &Option<BTreeMap<String, i32>>,
    ) -> Result<(), ConnError> {
        let conn = self.conn(conn).await?;
        // A route with retry topics also owns the same partition of each: read (and committed)
        // by this member alongside the assigned one, never assigned on their own.
        let mut lanes = Vec::new();
        for (topic, partition) in assigned {
            let route = crate::produce::lock(&self.topics)
                .iter()
                .find(|t| t.topic == *topic)
                .map(|t| t.route);
            let retry = route.map(|r| &self.rt.pipeline.policy(r).retry_topics);
            if let (Some(route), Some(retry)) = (route, retry.filter(|r| !r.is_empty())) {
                let names: Vec<String> = retry.iter().map(|t| t.topic.clone()).collect();
                lanes.push((route, topic.clone(), *partition, names));
            }
        }
        let mut wanted = assigned.to_vec();
        for (_, _, partition, names) in &lanes {
            wanted.extend(names.iter().map(|n| (n.clone(), *partition)));
        }
        let committed = self.fetch_offsets(conn, &wanted).await?;
        let mut links: HashMap<(String, i32), LaneLink> = HashMap::new();
        for (route, topic, partition, names) in lanes {
            let owner = (topic.clone(), partition);
            let lane = RetryLane::new(Arc::from(topic.as_str()), partition);
            let starts: Vec<(Arc<str>, Option<i64>)> = names
                .iter()
                .map(|n| {
                    let start = committed.get(&(n.clone(), partition)).copied();
                    (Arc::from(n.as_str()), start.filter(|o| *o >= 0))
                })
                .collect();
            for (stage, (name, start)) in (1..).zip(&starts) {
                let (shutdown, group, ready) = running.link(&owner, (name, partition), *start);
                let consumer = PartitionConsumer {
                    rt: self.rt.clone(),
                    route,
                    topic: name.clone(),
                    partition,
                    reset: OffsetReset::Earliest,
                    start: *start,
                    group: Some(group),
                    shutdown,
                    ready,
                    lane: Some(LaneLink {
                        lane: lane.clone(),
                        stage,
                        restore_from: Vec::new(),
                    }),
                };
                running.spawn(&owner, consumer);
            }
            let main = LaneLink {
                lane,
                stage: 0,
                restore_from: starts,
            };
            links.insert(owner, main);
        }
        for owner @ (topic, partition) in assigned {
            let found = crate::produce::lock(&self.topics)
                .iter()
                .find(|t| t.topic == *topic)
                .cloned();
            let Some(sub) = found else {
                continue;
            };
            let start = committed.get(owner).copied().filter(|o| *o >= 0);
            // A partition that appeared while the service ran is read from its beginning:
            // `latest` would skip what was written to it before this member noticed it.
            let is_new = initial
                .as_ref()
                .is_some_and(|counts| *partition >= counts.get(topic).copied().unwrap_or(0));
            let reset = if is_new && start.is_none() && !sub.dynamic {
                OffsetReset::Earliest
            } else {
                sub.reset
            };
            let (shutdown, group, ready) = running.link(owner, (topic, *partition), start);
            let consumer = PartitionConsumer {
                rt: self.rt.clone(),
                route: sub.route,
                topic: Arc::from(topic.as_str()),
                partition: *partition,
                reset,
                start,
                group: Some(group),
                shutdown,
                ready,
                lane: links.remove(owner),
            };
            running.spawn(owner, consumer);
        }
        Ok(())
    }

    async fn serve_generation(
        &self,
        conn: &mut Option<Conn>,
        member: &Member,
        (watched, subscriptions): (&Watched, &mut watch::Receiver<Subscriptions>),
        running: &mut Running,
        mut beats: mpsc::UnboundedReceiver<Beat>,
        (ready_sent, cooperative): (&mut bool, bool),
    ) -> (Ended, Instant) {
        self.announce_ready(running, ready_sent);
        let mut commit = tokio::time::interval(self.settings.commit_interval);
        commit.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Metadata is looked up every `metadata_max_age`, and at the retry backoff while a
        // watched topic has none.
        let refresh_every = if watched.values().any(Option::is_none) {
            MISSING_TOPIC_RETRY.min(self.rt.config.metadata_max_age)
        } else {
            self.rt.config.metadata_max_age
        };
        let mut refresh = tokio::time::interval_at(Instant::now() + refresh_every, refresh_every);
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut shutdown = self.shutdown.clone();
        let ended = loop {
            tokio::select! {
                () = shutdown.wait() => break Ended::Shutdown,
                Some(()) = running.started.recv(), if running.starting > 0 => {
                    running.starting -= 1;
                    self.announce_ready(running, ready_sent);
                }
                beat = beats.recv() => match beat {
                    Some(Beat::Rebalance) => {
                        tracing::info!(group = self.group, generation = member.generation, "rebalance: revoking partitions");
                        break Ended::Rejoin { reset_member: false, cause: "group" };
                    }
                    Some(Beat::Fenced(ResponseError::FencedInstanceId)) => break Ended::Failed(fenced(member)),
                    Some(Beat::Fenced(e)) => {
                        tracing::warn!(group = self.group, generation = member.generation, error = %e, "no longer a member: rejoining");
                        break Ended::Rejoin { reset_member: true, cause: "fenced" };
                    }
                    None => break Ended::Rejoin { reset_member: false, cause: "heartbeat" },
                },
                Some(joined) = running.tasks.join_next_with_id() => {
                    if let Some(e) = running.finished(joined) {
                        if self.rt.txn.as_ref().is_some_and(|t| t.is_poisoned()) {
                            // Its outputs failed with the transaction: all start again.
                            tracing::warn!(group = self.group, error = %e, "a partition stopped with the open transaction broken: aborting it");
                            break Ended::Rejoin { reset_member: false, cause: "abort" };
                        }
                        break Ended::Failed(e);
                    }
                }
                _ = commit.tick() => {
                    if let Some(end) = self.commit(conn, member, running).await {
                        break end;
                    }
                }
                Some(reply) = running.commit_requests.recv() => {
                    let end = self.commit(conn, member, running).await;
                    let _ = reply.send(());
                    if let Some(end) = end {
                        break end;
                    }
                }
                Ok(()) = subscriptions.changed(), if !self.dynamic.is_empty() => {
                    let now = subscriptions.borrow_and_update().clone();
                    if self.apply_subscriptions(&now).await {
                        tracing::info!(group = self.group, generation = member.generation, "subscriptions of dynamic handlers changed: rejoining");
                        break Ended::Rejoin { reset_member: false, cause: "subscriptions" };
                    }
                }
                _ = refresh.tick() => {
                    if let Some(changed) = self.watched_changes(watched).await {
                        tracing::info!(group = self.group, generation = member.generation, changed = ?changed, "subscribed topics changed (partitions: before, now): rejoining");
                        break Ended::Rejoin { reset_member: false, cause: "metadata" };
                    }
                }
            }
        };
        let stopped_at = Instant::now();
        match ended {
            // Cooperative: the partitions keep running while the member joins again; only
            // those the next assignment takes away stop.
            Ended::Rejoin {
                reset_member: false,
                cause,
            } if cooperative && cause != "abort" => (ended, stopped_at),
            ended => (
                self.finish_generation(conn, member, running, ended).await,
                stopped_at,
            ),
        }
    }

    /// Ends a generation: every partition stops fetching, finishes the message in hand and
    /// waits for its acks (heartbeats go on), within the rebalance timeout or the shutdown
    /// deadline; then the positions are committed (or an exactly-once group's transaction is
    /// aborted). Returns how it ended, failed if a consumer stopped on its own meanwhile.
    async fn finish_generation(
        &self,
        conn: &mut Option<Conn>,
        member: &Member,
        running: &mut Running,
        ended: Ended,
    ) -> Ended {
        // An aborted transaction: what the partitions did since the last commit is undone,
        // nothing of it is committed, and they start again from the committed offsets.
        let aborted = matches!(ended, Ended::Rejoin { cause: "abort", .. });
        running.stop_all();
        let limit = self.drain_limit(&ended);
        let deadline = Instant::now() + limit;
        let mut failure = None;
        loop {
            tokio::select! {
                joined = running.tasks.join_next_with_id() => match joined {
                    None => break,
                    Some(joined) => {
                        if let Some(e) = running.finished(joined) {
                            if !aborted {
                                failure.get_or_insert(e);
                            }
                        }
                    }
                },
                // A consumer of an `ack = "first"` route may be waiting for its commit.
                Some(reply) = running.commit_requests.recv() => {
                    let _ = self.commit(conn, member, running).await;
                    let _ = reply.send(());
                }
                () = tokio::time::sleep_until(deadline) => {
                    let all = running.serving.values().map(|s| s.owner.clone()).collect();
                    self.abandon(running, &all);
                    running.tasks.abort_all();
                    while running.tasks.join_next().await.is_some() {}
                    break;
                }
            }
        }
        // A partition that stopped on its own (the service stops) may have left outputs past
        // its position in the transaction: exactly-once aborts, and the restart redoes what
        // was done since the last commit.
        let failed = matches!(ended, Ended::Failed(_)) || failure.is_some();
        match (&self.rt.txn, aborted || failed) {
            (Some(txn), true) => {
                let why = match aborted {
                    true => "the generation ended with the transaction aborted",
                    false => "a partition stopped on its own",
                };
                if txn.abort(why.into()).await {
                    crate::metrics::transaction(&self.group, "aborted");
                }
                txn.reopen();
            }
            _ => match self.commit(conn, member, running).await {
                None => {}
                Some(_) => {
                    tracing::warn!(
                        group = self.group,
                        "final offset commit failed; messages since the last commit will be consumed again"
                    );
                    if let Some(txn) = &self.rt.txn {
                        txn.reopen();
                    }
                }
            },
        }
        match (ended, failure) {
            (Ended::Failed(e), _) => Ended::Failed(e),
            (_, Some(e)) => Ended::Failed(e),
            (ended, None) => ended,
        }
    }

    /// Brings the topics of the group's dynamic handlers in line with `subscriptions` (a topic
    /// that cannot be found or created is logged and left out); whether they changed.
    async fn apply_subscriptions(&self, subscriptions: &Subscriptions) -> bool {
        let mut wanted = Vec::new();
        for (route, reset) in &self.dynamic {
            for topic in subscriptions.get(route.name()).into_iter().flatten() {
                let topic = self.rt.pipeline.topic_name(topic);
                self.rt.producers.declare(std::slice::from_ref(&topic));
                let found = self.rt.producers.partition_count(&topic).await;
                match found {
                    Ok(_) => wanted.push(GroupTopic {
                        route,
                        topic,
                        reset: *reset,
                        dynamic: true,
                    }),
                    Err(e) => tracing::error!(
                        group = self.group,
                        handler = route.name(),
                        topic,
                        error = %e,
                        "cannot subscribe the handler to the topic"
                    ),
                }
            }
        }
        let same =
            |a: &GroupTopic, b: &GroupTopic| a.topic == b.topic && a.route.name() == b.route.name();
        let mut topics = crate::produce::lock(&self.topics);
        let before = topics.len();
        topics.retain(|t| !t.dynamic || wanted.iter().any(|w| same(w, t)));
        let mut changed = topics.len() != before;
        for w in wanted {
            if !topics.iter().any(|t| same(t, &w)) {
                topics.push(w);
                changed = true;
            }
        }
        changed
    }

    /// Topics whose partition count differs from the assignment's (appeared, gone, or
    /// resized), with the count before and now; `None` when nothing changed or the lookup
    /// failed (a failed lookup is not a vanished topic).
    async fn watched_changes(
        &self,
        watched: &Watched,
    ) -> Option<Vec<(String, Option<i32>, Option<i32>)>> {
        if let Some(added) = self.new_pattern_topics().await {
            return Some(added.into_iter().map(|t| (t, None, None)).collect());
        }
        let topics: Vec<String> = watched.keys().cloned().collect();
        let now = match self.rt.producers.try_lookup_partitions(&topics).await {
            Ok(now) => now,
            Err(e) => {
                tracing::warn!(group = self.group, error = %e, "metadata refresh failed; keeping the assignment");
                return None;
            }
        };
        let changed: Vec<_> = watched
            .iter()
            .filter(|(t, before)| now.get(*t).copied() != **before)
            .map(|(t, before)| (t.clone(), *before, now.get(t).copied()))
            .collect();
        (!changed.is_empty()).then_some(changed)
    }

    /// Topics created since the last look that a pattern of the group takes, now subscribed
    /// (read from their beginning, as new partitions are); `None` when there are none.
    async fn new_pattern_topics(&self) -> Option<Vec<String>> {
        if self.patterns.is_empty() {
            return None;
        }
        let all = match crate::topics::list_topics(&self.rt.cluster).await {
            Ok(all) => all,
            Err(e) => {
                tracing::warn!(group = self.group, error = %e, "listing topics for pattern subscriptions failed");
                return None;
            }
        };
        let mut topics = crate::produce::lock(&self.topics);
        let mut added = Vec::new();
        for pattern in &self.patterns {
            for topic in all.iter().filter(|t| pattern.matcher.matches(t)) {
                let known = topics
                    .iter()
                    .any(|t| t.topic == *topic && t.route.name() == pattern.route.name());
                if !known {
                    tracing::info!(
                        group = self.group,
                        topic,
                        handler = pattern.route.name(),
                        "a new topic matches the subscription's pattern: subscribing"
                    );
                    topics.push(GroupTopic {
                        route: pattern.route,
                        topic: topic.clone(),
                        reset: OffsetReset::Earliest,
                        dynamic: false,
                    });
                    added.push(topic.clone());
                }
            }
        }
        (!added.is_empty()).then_some(added)
    }

    /// Joins like [`Self::join`], warning while the member has had no assignment for longer
    /// than a rebalance may take (see [`Self::rebalance_bound`]), naming the step it is in.
    async fn watched_join(
        &self,
        conn: &mut Option<Conn>,
        member: &mut Member,
        (waiting, owned): (&Waiting, &BTreeSet<(String, i32)>),
        unassigned_since: Instant,
        next_warning: &mut Instant,
    ) -> Result<Joined, JoinError> {
        let (generation, member_id) = (member.generation, member.member_id.clone());
        let join = self.join(conn, member, waiting, owned);
        tokio::pin!(join);
        loop {
            tokio::select! {
                joined = &mut join => return joined,
                () = tokio::time::sleep_until(*next_warning) => {
                    tracing::warn!(
                        group = self.group,
                        generation,
                        member = member_id,
                        unassigned_for = ?unassigned_since.elapsed(),
                        waiting_for = waiting.get().describe(),
                        "the member has had no assignment for longer than a rebalance may take (rebalance timeout plus session timeout)"
                    );
                    *next_warning = Instant::now() + self.rebalance_bound();
                }
            }
        }
    }

    /// Whether the coordinator says a rebalance of the member's generation has begun (one
    /// heartbeat; a failure counts as no).
    async fn rebalancing(&self, conn: &mut Option<Conn>, member: &Member) -> bool {
        let Ok(c) = self.conn(conn).await else {
            return false;
        };
        matches!(
            coordinator::heartbeat(c, member).await,
            Ok(Some(ResponseError::RebalanceInProgress))
        )
    }

    /// Until when a member stopped during a join may go on joining: its session timeout, and
    /// at most half the shutdown time left.
    fn finish_deadline(&self) -> Instant {
        let now = Instant::now();
        let left = self
            .shutdown
            .deadline()
            .map_or(self.settings.session_timeout, |d| {
                d.saturating_duration_since(now) / 2
            });
        now + self.settings.session_timeout.min(left)
    }

    /// Stopping while a join is in flight: goes on joining (`first` is how the join in flight
    /// ended, `None` if not by `deadline`) until the group has settled (this member synced),
    /// then the member leaves. Returns whether it may send LeaveGroup.
    ///
    /// The Java client leaves at once. A leader that leaves while the group is forming is
    /// fine on Kafka, but Tansu 0.6.0 keeps it as the group's leader for good, and no member
    /// is ever assigned again. So a member that could not see the group settle by `deadline`
    /// stops without LeaveGroup: the coordinator expires it within its session timeout (on
    /// Kafka the group waits that long once; on Tansu the expiry is what clears the leader).
    async fn finish_joining(
        &self,
        first: Option<Result<Joined, JoinError>>,
        deadline: Instant,
        conn: &mut Option<Conn>,
        (member, owned): (&mut Member, &BTreeSet<(String, i32)>),
    ) -> bool {
        let mut result = first;
        loop {
            match result {
                Some(Ok(_)) | Some(Err(JoinError::Fatal(_))) => return true,
                None => break,
                Some(Err(JoinError::Rejoin { reset_member, .. })) if reset_member => {
                    // Not a member any more: nothing to leave.
                    member.member_id.clear();
                    return true;
                }
                Some(Err(_)) if Instant::now() + REJOIN_PAUSE.0 >= deadline => break,
                Some(Err(_)) => {
                    tokio::time::sleep(REJOIN_PAUSE.0).await;
                    result = tokio::time::timeout_at(
                        deadline,
                        self.join(conn, member, &Waiting::new(), owned),
                    )
                    .await
                    .ok();
                }
            }
        }
        tracing::info!(
            group = self.group,
            member = member.member_id,
            "stopping during a rebalance that did not settle in time: not leaving the group; the coordinator expires the member within its session timeout"
        );
        false
    }

    /// How long a member may be without an assignment in a healthy group: the coordinator
    /// waits up to the rebalance timeout for every member to rejoin, and a member that died
    /// meanwhile is noticed within its session timeout.
    fn rebalance_bound(&self) -> Duration {
        self.settings.rebalance_timeout + self.settings.session_timeout
    }

    /// The service is ready once the first generation's consumers know where they start.
    fn announce_ready(&self, running: &Running, ready_sent: &mut bool) {
        if running.starting == 0 && !*ready_sent {
            let _ = self.ready.send(());
            *ready_sent = true;
        }
    }

    /// How long partitions revoked by a rebalance may take to drain: within the rebalance
    /// timeout, with a heartbeat and a second to spare.
    fn revoke_limit(&self) -> Duration {
        let s = self.settings;
        s.rebalance_timeout
            .saturating_sub(s.heartbeat_interval)
            .saturating_sub(Duration::from_secs(1))
            .max(s.rebalance_timeout / 2)
    }

    /// How long revoked partitions may take to drain: within the rebalance timeout (the
    /// coordinator expels a member that rejoins later), or before the app's shutdown deadline
    /// (leaving time to commit and leave the group).
    fn drain_limit(&self, ended: &Ended) -> Duration {
        let rebalance = self.revoke_limit();
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
}

fn fenced(member: &Member) -> KafkaError {
    KafkaError::Fenced {
        group: member.group.clone(),
        instance_id: member.instance_id.clone().unwrap_or_default(),
    }
}
