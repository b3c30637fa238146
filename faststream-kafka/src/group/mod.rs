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
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::config::{Config, GroupSettings};
use crate::consume::{AbortOnDrop, GroupLink, PartitionConsumer, Runtime};
use crate::error::KafkaError;
use crate::protocol::{ms, Conn, ConnError};
use faststream_core::{PartitionStop, Position};

mod coordinator;

use coordinator::{find_coordinator, heartbeat_loop, JoinError};

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
            return Some(KafkaError::PartitionStopped(PartitionStop {
                handler: handler.to_owned(),
                topic,
                partition,
                offset: -1,
                reason: format!("its task crashed: {e}"),
            }));
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
