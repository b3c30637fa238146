//! The partition consumers a member runs for its assigned partitions, kept per assigned
//! partition so that one can be stopped, drained and committed while the others go on (the
//! consumer group protocol moves partitions one at a time; the classic protocol stops them
//! all at a generation's end).

use super::*;
use tokio::task::AbortHandle;

/// An assigned partition: the topic and partition the group assigned.
pub(super) type Assigned = (String, i32);

/// One partition consumer task: the partition it reads (the assigned one, or the same
/// partition of one of its retry topics) and the assigned partition it belongs to.
pub(super) struct Serving {
    pub(super) topic: String,
    pub(super) partition: i32,
    pub(super) handler: &'static str,
    pub(super) owner: Assigned,
    abort: AbortHandle,
}

/// The member's partition consumers.
pub(super) struct Running {
    /// What stops each assigned partition's consumers (its retry lanes' too).
    stops: HashMap<Assigned, (ShutdownTrigger, Shutdown)>,
    pub(super) tasks: JoinSet<Result<(), KafkaError>>,
    /// Which partition each consumer task serves, by task id.
    pub(super) serving: HashMap<tokio::task::Id, Serving>,
    commit_now: mpsc::Sender<oneshot::Sender<()>>,
    pub(super) commit_requests: mpsc::Receiver<oneshot::Sender<()>>,
    /// Each consumer's position, with the assigned partition it belongs to.
    pub(super) positions: Vec<((String, i32), Position, Assigned)>,
    ready: mpsc::UnboundedSender<()>,
    /// Each consumer says when it knows its start position.
    pub(super) started: mpsc::UnboundedReceiver<()>,
    pub(super) starting: usize,
}

impl Running {
    pub(super) fn new() -> Self {
        let (ready, started) = mpsc::unbounded_channel();
        let (commit_now, commit_requests) = mpsc::channel(64);
        Running {
            stops: HashMap::new(),
            tasks: JoinSet::new(),
            serving: HashMap::new(),
            commit_now,
            commit_requests,
            positions: Vec::new(),
            ready,
            started,
            starting: 0,
        }
    }

    /// Starts `consumer` for the assigned partition `owner` (its stop is `owner`'s).
    pub(super) fn spawn(&mut self, owner: &Assigned, consumer: PartitionConsumer) {
        let (topic, partition, handler) = (
            consumer.topic.to_string(),
            consumer.partition,
            consumer.route.name(),
        );
        let abort = self.tasks.spawn(consumer.run());
        self.starting += 1;
        self.serving.insert(
            abort.id(),
            Serving {
                topic,
                partition,
                handler,
                owner: owner.clone(),
                abort,
            },
        );
    }

    /// What a consumer of the assigned partition `owner` starting at `start` is linked to:
    /// its stop, its position (tracked here), the commit channel and the ready signal.
    pub(super) fn link(
        &mut self,
        owner: &Assigned,
        read: (&str, i32),
        start: Option<i64>,
    ) -> (Shutdown, GroupLink, mpsc::UnboundedSender<()>) {
        let shutdown = self
            .stops
            .entry(owner.clone())
            .or_insert_with(Shutdown::new)
            .1
            .clone();
        let position = Position::new(start);
        self.positions
            .push(((read.0.to_owned(), read.1), position.clone(), owner.clone()));
        let link = GroupLink {
            position,
            commit_now: self.commit_now.clone(),
        };
        (shutdown, link, self.ready.clone())
    }

    /// Tells every consumer to stop: they finish the message in hand and wait for its acks.
    pub(super) fn stop_all(&self) {
        for (trigger, _) in self.stops.values() {
            trigger.trigger();
        }
    }

    /// Tells the consumers of `parts` to stop.
    pub(super) fn stop(&self, parts: &BTreeSet<Assigned>) {
        for part in parts {
            if let Some((trigger, _)) = self.stops.get(part) {
                trigger.trigger();
            }
        }
    }

    /// Whether a consumer of one of `parts` still runs.
    pub(super) fn serves_any(&self, parts: &BTreeSet<Assigned>) -> bool {
        self.serving.values().any(|s| parts.contains(&s.owner))
    }

    /// Aborts the consumers of `parts` still running (their message is not committed).
    pub(super) fn abort(&self, parts: &BTreeSet<Assigned>) {
        for s in self.serving.values().filter(|s| parts.contains(&s.owner)) {
            s.abort.abort();
        }
    }

    /// Ends every consumer at once, without waiting for what it has in hand, and takes all
    /// partitions off the books (they may be another member's already: nothing is committed).
    pub(super) async fn drop_all(&mut self) {
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
        self.serving.clear();
        self.positions.clear();
        self.stops.clear();
    }

    /// Takes `parts` off the books once their consumers stopped (and were committed).
    pub(super) fn forget(&mut self, parts: &BTreeSet<Assigned>) {
        self.positions
            .retain(|(_, _, owner)| !parts.contains(owner));
        self.stops.retain(|owner, _| !parts.contains(owner));
    }

    /// Takes a finished consumer off the books; returns its error if it stopped on its own
    /// (or crashed).
    pub(super) fn finished(
        &mut self,
        joined: Result<(tokio::task::Id, Result<(), KafkaError>), tokio::task::JoinError>,
    ) -> Option<KafkaError> {
        let (id, result) = match joined {
            Ok((id, result)) => (id, result),
            Err(e) if e.is_cancelled() => {
                self.serving.remove(&e.id());
                return None;
            }
            Err(e) => {
                let s = self.serving.remove(&e.id())?;
                return Some(KafkaError::PartitionStopped(PartitionStop {
                    handler: s.handler.to_owned(),
                    topic: s.topic,
                    partition: s.partition,
                    offset: None,
                    reason: format!("its task crashed: {e}"),
                }));
            }
        };
        self.serving.remove(&id);
        result.err()
    }
}
