//! Exactly-once read-process-write: Kafka transactions (KIP-98) whose input offsets are
//! committed through the consumer group with its generation (KIP-447).
//!
//! One [`Txn`] per consumer group with `exactly_once` routes, in each service instance: its own
//! transactional producer (a producer id and epoch from the transaction coordinator of its
//! transactional id) writes every output of the group's partitions: return values, what
//! handlers publish, dead-letter and retry-topic copies. Every commit interval the group
//! commits one transaction holding those outputs and the offsets of the messages they came
//! from:
//!
//! 1. the gate closes: partitions finish what they started (handlers in hand, outputs
//!    acknowledged) and start nothing new, so every output in the transaction belongs to a
//!    message at or before its partition's position and every such message's outputs are in;
//! 2. `AddOffsetsToTxn` and `TxnOffsetCommit` (with the member's generation: a member that
//!    lost its partitions is refused, KIP-447), then `EndTxn` commits;
//! 3. the gate opens.
//!
//! Anything that breaks a transaction (an output that may or may not have been written, the
//! group refusing the offsets, the producer fenced) aborts it: its outputs never become
//! visible to `read_committed` readers, and the group's partitions start again from the
//! committed offsets (the group rejoins), so each input's outputs are committed once.
//!
//! The transactional id is `<group>.<instance>` with the instance's `group_instance_id` (or
//! `transactional_id`): a restarted instance takes the same id, and its first
//! `InitProducerId` aborts what its predecessor left open and fences it. Without either, the
//! instance part is random: a crashed instance's open transaction then holds back
//! `read_committed` readers of its outputs until `transaction_timeout`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kafka_protocol::messages::add_partitions_to_txn_request::AddPartitionsToTxnTopic;
use kafka_protocol::messages::txn_offset_commit_request::{
    TxnOffsetCommitRequestPartition, TxnOffsetCommitRequestTopic,
};
use kafka_protocol::messages::{
    AddOffsetsToTxnRequest, AddPartitionsToTxnRequest, EndTxnRequest, GroupId,
    InitProducerIdRequest, ProducerId, TopicName, TransactionalId, TxnOffsetCommitRequest,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use tokio::sync::{OwnedRwLockReadGuard, OwnedRwLockWriteGuard, RwLock};

use crate::backoff::Backoff;
use crate::config::Config;
use crate::idempotence::Producer;
use crate::protocol::{ms, Conn, ConnError};

/// Why a transaction step failed.
#[derive(Debug, Clone)]
pub(crate) enum TxnError {
    /// Transient (a coordinator moving or loading, a lost connection): worth retrying.
    Retriable(String),
    /// The transaction cannot commit: it is (or must be) aborted.
    Abortable(String),
    /// The group no longer knows this member (its generation is gone): abort, and join as a
    /// new member.
    NotMember(String),
    /// Another producer with this transactional id took over (or the cluster refuses
    /// transactions): nothing more can be written under this producer id.
    Fatal(String),
    /// The output's transaction was aborted: it must not be written (in the next one).
    Ended(String),
}

impl std::fmt::Display for TxnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TxnError::Retriable(e)
            | TxnError::Abortable(e)
            | TxnError::NotMember(e)
            | TxnError::Fatal(e)
            | TxnError::Ended(e) => f.write_str(e),
        }
    }
}

/// How a commit ended.
#[derive(Debug)]
pub(crate) enum Ended {
    /// The transaction committed (outputs and offsets), or nothing was written in it.
    Committed,
    /// Nothing was written since the last commit: the offsets go in a plain commit.
    Empty,
    /// The transaction was aborted: why, and whether the group refused the member (it must
    /// join as a new member).
    Aborted { reason: String, reset_member: bool },
}

/// The transaction state of one group's transactional producer.
#[derive(Debug, Default)]
struct State {
    conn: Option<Conn>,
    producer: Option<Producer>,
    /// Partitions added to the open transaction.
    partitions: BTreeSet<(String, i32)>,
}

/// One group's transactional producer and its commit gate (see the module docs).
#[derive(Debug)]
pub(crate) struct Txn {
    config: Arc<Config>,
    id: String,
    state: tokio::sync::Mutex<State>,
    /// Why the open transaction cannot commit (an output given up after it may have been
    /// written, the producer fenced).
    poisoned: Mutex<Option<String>>,
    gate: Arc<RwLock<()>>,
    closing: AtomicBool,
    closed: Mutex<Option<OwnedRwLockWriteGuard<()>>>,
    /// The number of the open transaction, moved on by every abort: an output queued in an
    /// aborted transaction is refused instead of being written in the next one.
    round: AtomicU64,
    /// Held (shared) by every produce request of the open transaction while it is on its way;
    /// `EndTxn` waits for them (taken exclusively), so no batch lands after its transaction
    /// ended.
    sending: Arc<RwLock<()>>,
}

impl Txn {
    pub(crate) fn new(config: Arc<Config>, group: &str) -> Self {
        let instance = config
            .transactional_id
            .clone()
            .or_else(|| config.group_instance_id.clone())
            .unwrap_or_else(|| format!("{:016x}", fastrand::u64(..)));
        Self {
            config,
            id: format!("{group}.{instance}"),
            state: tokio::sync::Mutex::default(),
            poisoned: Mutex::default(),
            gate: Arc::new(RwLock::new(())),
            closing: AtomicBool::new(false),
            closed: Mutex::default(),
            round: AtomicU64::new(0),
            sending: Arc::new(RwLock::new(())),
        }
    }

    /// The transactional id.
    pub(crate) fn id(&self) -> &str {
        &self.id
    }

    /// Obtains the producer id now (fencing a predecessor with this transactional id and
    /// aborting what it left open), so a cluster without transactions fails startup.
    pub(crate) async fn start(&self) -> Result<(), TxnError> {
        let deadline = tokio::time::Instant::now() + self.config.request_timeout;
        let mut backoff = Backoff::requests();
        loop {
            let mut state = self.state.lock().await;
            match self.producer_in(&mut state).await {
                Ok(_) => return Ok(()),
                Err(TxnError::Retriable(e))
                    if tokio::time::Instant::now() + backoff.wait() < deadline =>
                {
                    drop(state);
                    tracing::warn!(transactional_id = self.id, error = %e, "no transactional producer id yet; retrying");
                    backoff.sleep().await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The number of the open transaction: outputs queued now belong to it.
    pub(crate) fn round(&self) -> u64 {
        self.round.load(Ordering::Acquire)
    }

    /// The producer fields for a batch to `topic`/`partition` of transaction `round`: the
    /// producer id (obtained first if needed), with the partition added to the transaction.
    /// Refused ([`TxnError::Ended`]) once that transaction was aborted.
    pub(crate) async fn enlist(
        &self,
        topic: &str,
        partition: i32,
        round: u64,
    ) -> Result<Producer, TxnError> {
        if let Some(reason) = self.poisoned() {
            return Err(TxnError::Abortable(reason));
        }
        let mut state = self.state.lock().await;
        if self.round() != round {
            return Err(self.ended(topic, partition));
        }
        let producer = self.producer_in(&mut state).await?;
        let key = (topic.to_owned(), partition);
        if state.partitions.contains(&key) {
            return Ok(producer);
        }
        let mut backoff = Backoff::new(Duration::from_millis(5), Duration::from_millis(500));
        let deadline = tokio::time::Instant::now() + self.config.request_timeout;
        loop {
            match self
                .add_partition(&mut state, producer, topic, partition)
                .await
            {
                Ok(()) => break,
                Err(TxnError::Retriable(e)) if tokio::time::Instant::now() < deadline => {
                    tracing::debug!(transactional_id = self.id, topic, partition, error = %e, "adding a partition to the transaction; retrying");
                    backoff.sleep().await;
                }
                Err(e) => return Err(e),
            }
        }
        state.partitions.insert(key);
        Ok(producer)
    }

    /// Leave to send a produce request of transaction `round` (with a producer id and
    /// sequence from [`Txn::enlist`]): held until its answer is in. Refused once the
    /// transaction was aborted.
    pub(crate) async fn sending(
        &self,
        topic: &str,
        partition: i32,
        round: u64,
    ) -> Result<OwnedRwLockReadGuard<()>, TxnError> {
        let guard = self.sending.clone().read_owned().await;
        match self.round() == round {
            true => Ok(guard),
            false => Err(self.ended(topic, partition)),
        }
    }

    pub(crate) fn ended(&self, topic: &str, partition: i32) -> TxnError {
        TxnError::Ended(format!(
            "an output to partition {partition} of topic {topic:?} belongs to a transaction of \
             {:?} that was aborted: it is not written (its input is consumed again)",
            self.id
        ))
    }

    /// Ends the open transaction's round: its outputs still queued are refused from now on,
    /// and those on their way are answered before this returns.
    async fn next_round(&self) {
        self.round.fetch_add(1, Ordering::AcqRel);
        drop(self.sending.write().await);
    }

    /// Marks the open transaction as unable to commit (unless it is no longer open).
    pub(crate) fn poison_round(&self, round: u64, reason: String) {
        if self.round() == round {
            self.poison(reason);
        }
    }

    /// Marks the open transaction as unable to commit.
    pub(crate) fn poison(&self, reason: String) {
        tracing::warn!(
            transactional_id = self.id,
            reason,
            "the open transaction will be aborted"
        );
        lock(&self.poisoned).get_or_insert(reason);
    }

    fn poisoned(&self) -> Option<String> {
        lock(&self.poisoned).clone()
    }

    /// Whether a commit is waiting for partitions to finish what they started.
    pub(crate) fn closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    /// A partition's turn at starting work in the open transaction: waits while a commit
    /// runs.
    pub(crate) async fn enter(&self) -> OwnedRwLockReadGuard<()> {
        self.gate.clone().read_owned().await
    }

    /// Closes the gate: returns once no partition has unfinished work in the transaction;
    /// nothing new starts until [`Txn::reopen`].
    pub(crate) async fn close(&self) {
        if lock(&self.closed).is_some() {
            return;
        }
        self.closing.store(true, Ordering::Release);
        let guard = self.gate.clone().write_owned().await;
        *lock(&self.closed) = Some(guard);
    }

    /// Opens the gate again.
    pub(crate) fn reopen(&self) {
        self.closing.store(false, Ordering::Release);
        lock(&self.closed).take();
    }

    /// Whether the open transaction cannot commit.
    pub(crate) fn is_poisoned(&self) -> bool {
        self.poisoned().is_some()
    }

    /// Commits the open transaction with `offsets` of `group` (the member's generation, id
    /// and instance id), or aborts it when it cannot commit. Call with the gate closed.
    pub(crate) async fn commit(
        &self,
        group_conn: &mut Conn,
        group: &str,
        (generation, member_id, instance_id): (i32, &str, Option<&str>),
        offsets: &BTreeMap<&str, Vec<(i32, i64)>>,
    ) -> Ended {
        let mut state = self.state.lock().await;
        if let Some(reason) = self.poisoned() {
            return self.abort_in(&mut state, reason, false).await;
        }
        if state.partitions.is_empty() {
            return Ended::Empty;
        }
        let Some(producer) = state.producer else {
            return self
                .abort_in(&mut state, "no producer id".into(), false)
                .await;
        };
        let deadline = tokio::time::Instant::now() + self.config.request_timeout;
        let mut backoff = Backoff::new(Duration::from_millis(5), Duration::from_millis(500));
        // The group's offsets join the transaction, then are written to the group (refused
        // if this member no longer owns them).
        loop {
            let res = match self.add_offsets(&mut state, producer, group).await {
                Ok(()) => {
                    txn_offset_commit(
                        group_conn,
                        &self.id,
                        producer,
                        group,
                        (generation, member_id, instance_id),
                        offsets,
                    )
                    .await
                }
                Err(e) => Err(e),
            };
            match res {
                Ok(()) => break,
                // The group's coordinator moved: this transaction ends here (the runner finds
                // the coordinator again and the partitions start from the committed offsets).
                Err(TxnError::Retriable(e)) if group_conn.is_broken() => {
                    return self.abort_in(&mut state, e, false).await;
                }
                Err(TxnError::Retriable(e)) if tokio::time::Instant::now() < deadline => {
                    tracing::debug!(transactional_id = self.id, group, error = %e, "committing offsets in the transaction; retrying");
                    backoff.sleep().await;
                }
                Err(TxnError::Retriable(e) | TxnError::Abortable(e) | TxnError::Ended(e)) => {
                    return self.abort_in(&mut state, e, false).await;
                }
                Err(TxnError::NotMember(e)) => return self.abort_in(&mut state, e, true).await,
                Err(TxnError::Fatal(e)) => return self.fenced(&mut state, e),
            }
        }
        // Every output was answered (the gate); a request still on its way (of a partition
        // stopped without waiting) is answered before the transaction ends.
        drop(self.sending.write().await);
        match self.end(&mut state, producer, true).await {
            Ok(()) => Ended::Committed,
            Err(TxnError::Fatal(e)) => self.fenced(&mut state, e),
            Err(e) => {
                self.abort_in(&mut state, format!("EndTxn: {e}"), false)
                    .await
            }
        }
    }

    /// Aborts the open transaction; `false` when nothing was written in it (nothing to do).
    pub(crate) async fn abort(&self, reason: String) -> bool {
        let mut state = self.state.lock().await;
        if state.partitions.is_empty() {
            // Outputs may be queued without having reached the transaction yet.
            self.next_round().await;
            lock(&self.poisoned).take();
            return false;
        }
        self.abort_in(&mut state, reason, false).await;
        true
    }

    async fn abort_in(&self, state: &mut State, reason: String, reset_member: bool) -> Ended {
        tracing::warn!(
            transactional_id = self.id,
            reason,
            "aborting the transaction: its outputs are discarded and its inputs consumed again"
        );
        self.next_round().await;
        if let Some(producer) = state.producer.filter(|_| !state.partitions.is_empty()) {
            if let Err(e) = self.end(state, producer, false).await {
                // Whatever stays open is aborted by the next InitProducerId with this id.
                tracing::warn!(transactional_id = self.id, error = %e, "abort failed; the producer id is obtained again");
            }
            // The next transaction goes under the next epoch (as the Java producer bumps it
            // after an abort): a batch of this one that still reached a leader is refused as
            // fenced, and every partition's sequence starts again.
            state.producer = None;
        }
        state.partitions.clear();
        lock(&self.poisoned).take();
        Ended::Aborted {
            reason,
            reset_member,
        }
    }

    /// Another producer took this transactional id: a new producer id (and epoch) is
    /// obtained before anything more is written; the transaction is gone.
    fn fenced(&self, state: &mut State, reason: String) -> Ended {
        tracing::warn!(
            transactional_id = self.id,
            reason,
            "transactional producer fenced; its open transaction is aborted"
        );
        self.round.fetch_add(1, Ordering::AcqRel);
        state.producer = None;
        state.partitions.clear();
        lock(&self.poisoned).take();
        Ended::Aborted {
            reason,
            reset_member: false,
        }
    }

    async fn conn<'s>(&self, state: &'s mut State) -> Result<&'s mut Conn, TxnError> {
        if state.conn.as_ref().is_some_and(Conn::is_broken) {
            state.conn = None;
        }
        if state.conn.is_none() {
            let conn = crate::protocol::find_coordinator_of(&self.config, &self.id, 1)
                .await
                .map_err(conn_error)?;
            state.conn = Some(conn);
        }
        Ok(state.conn.as_mut().expect("connected above"))
    }

    /// The producer id, obtained from the transaction coordinator if there is none.
    async fn producer_in(&self, state: &mut State) -> Result<Producer, TxnError> {
        if let Some(p) = state.producer {
            return Ok(p);
        }
        let timeout = ms(self.config.transaction_timeout);
        let conn = self.conn(state).await?;
        let version = conn
            .version::<InitProducerIdRequest>(4)
            .map_err(conn_error)?;
        let mut req = InitProducerIdRequest::default();
        req.transactional_id = Some(TransactionalId(StrBytes::from_string(self.id.clone())));
        req.transaction_timeout_ms = timeout;
        req.producer_id = ProducerId(-1);
        req.producer_epoch = -1;
        let resp = conn.send(&req, version).await.map_err(conn_error)?;
        let err = ResponseError::try_from_code(resp.error_code);
        if let Some(err) = err {
            return Err(self.classify(state, "InitProducerId", err));
        }
        let p = Producer {
            id: resp.producer_id.0,
            epoch: resp.producer_epoch,
        };
        tracing::debug!(
            transactional_id = self.id,
            producer_id = p.id,
            epoch = p.epoch,
            "transactional producer id"
        );
        state.producer = Some(p);
        state.partitions.clear();
        Ok(p)
    }

    async fn add_partition(
        &self,
        state: &mut State,
        producer: Producer,
        topic: &str,
        partition: i32,
    ) -> Result<(), TxnError> {
        let conn = self.conn(state).await?;
        let version = conn
            .version::<AddPartitionsToTxnRequest>(3)
            .map_err(conn_error)?;
        let mut t = AddPartitionsToTxnTopic::default();
        t.name = TopicName(StrBytes::from_string(topic.to_owned()));
        t.partitions = vec![partition];
        let mut req = AddPartitionsToTxnRequest::default();
        req.v3_and_below_transactional_id = TransactionalId(StrBytes::from_string(self.id.clone()));
        req.v3_and_below_producer_id = ProducerId(producer.id);
        req.v3_and_below_producer_epoch = producer.epoch;
        req.v3_and_below_topics = vec![t];
        let resp = conn.send(&req, version).await.map_err(conn_error)?;
        let code = resp
            .results_by_topic_v3_and_below
            .iter()
            .flat_map(|t| &t.results_by_partition)
            .map(|p| p.partition_error_code)
            .find(|c| *c != 0)
            .unwrap_or(resp.error_code);
        match ResponseError::try_from_code(code) {
            None => Ok(()),
            Some(err) => Err(self.classify(
                state,
                &format!("AddPartitionsToTxn of partition {partition} of topic {topic:?}"),
                err,
            )),
        }
    }

    async fn add_offsets(
        &self,
        state: &mut State,
        producer: Producer,
        group: &str,
    ) -> Result<(), TxnError> {
        let conn = self.conn(state).await?;
        let version = conn
            .version::<AddOffsetsToTxnRequest>(3)
            .map_err(conn_error)?;
        let mut req = AddOffsetsToTxnRequest::default();
        req.transactional_id = TransactionalId(StrBytes::from_string(self.id.clone()));
        req.producer_id = ProducerId(producer.id);
        req.producer_epoch = producer.epoch;
        req.group_id = GroupId(StrBytes::from_string(group.to_owned()));
        let resp = conn.send(&req, version).await.map_err(conn_error)?;
        match ResponseError::try_from_code(resp.error_code) {
            None => Ok(()),
            Some(err) => Err(self.classify(state, "AddOffsetsToTxn", err)),
        }
    }

    /// `EndTxn`, retried while the coordinator is busy or moving.
    async fn end(
        &self,
        state: &mut State,
        producer: Producer,
        commit: bool,
    ) -> Result<(), TxnError> {
        let deadline = tokio::time::Instant::now() + self.config.request_timeout;
        let mut backoff = Backoff::new(Duration::from_millis(5), Duration::from_millis(500));
        loop {
            let res = async {
                let conn = self.conn(state).await?;
                let version = conn.version::<EndTxnRequest>(3).map_err(conn_error)?;
                let mut req = EndTxnRequest::default();
                req.transactional_id = TransactionalId(StrBytes::from_string(self.id.clone()));
                req.producer_id = ProducerId(producer.id);
                req.producer_epoch = producer.epoch;
                req.committed = commit;
                let resp = conn.send(&req, version).await.map_err(conn_error)?;
                match ResponseError::try_from_code(resp.error_code) {
                    None => Ok(()),
                    Some(err) => Err(self.classify(state, "EndTxn", err)),
                }
            }
            .await;
            match res {
                Ok(()) => {
                    state.partitions.clear();
                    return Ok(());
                }
                Err(TxnError::Retriable(e)) if tokio::time::Instant::now() < deadline => {
                    tracing::debug!(transactional_id = self.id, commit, error = %e, "EndTxn; retrying");
                    backoff.sleep().await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Classifies a transaction coordinator's error, as the Java producer does; a moved
    /// coordinator is found again before the retry.
    fn classify(&self, state: &mut State, what: &str, err: ResponseError) -> TxnError {
        use ResponseError as E;
        let reason = format!("{what} for transactional id {:?}: {err}", self.id);
        match err {
            E::NotCoordinator | E::CoordinatorNotAvailable => {
                state.conn = None;
                TxnError::Retriable(reason)
            }
            E::CoordinatorLoadInProgress
            | E::ConcurrentTransactions
            | E::RequestTimedOut
            | E::UnknownTopicOrPartition
            | E::OperationNotAttempted => TxnError::Retriable(reason),
            E::ProducerFenced | E::InvalidProducerEpoch | E::InvalidProducerIdMapping => {
                TxnError::Fatal(reason)
            }
            E::TransactionalIdAuthorizationFailed
            | E::ClusterAuthorizationFailed
            | E::UnsupportedVersion
            | E::UnsupportedForMessageFormat => TxnError::Fatal(format!(
                "{reason}; exactly-once needs a cluster with transactions: switch `exactly_once` off for this broker"
            )),
            _ => TxnError::Abortable(reason),
        }
    }
}

/// `TxnOffsetCommit` to the group coordinator: the offsets become the group's when the
/// transaction commits, and only if the member still owns the partitions (its generation).
async fn txn_offset_commit(
    conn: &mut Conn,
    id: &str,
    producer: Producer,
    group: &str,
    (generation, member_id, instance_id): (i32, &str, Option<&str>),
    offsets: &BTreeMap<&str, Vec<(i32, i64)>>,
) -> Result<(), TxnError> {
    let version = conn
        .version::<TxnOffsetCommitRequest>(3)
        .map_err(conn_error)?;
    let mut req = TxnOffsetCommitRequest::default();
    req.transactional_id = TransactionalId(StrBytes::from_string(id.to_owned()));
    req.group_id = GroupId(StrBytes::from_string(group.to_owned()));
    req.producer_id = ProducerId(producer.id);
    req.producer_epoch = producer.epoch;
    req.generation_id = generation;
    req.member_id = StrBytes::from_string(member_id.to_owned());
    req.group_instance_id = instance_id.map(|i| StrBytes::from_string(i.to_owned()));
    req.topics = offsets
        .iter()
        .map(|(topic, parts)| {
            let mut t = TxnOffsetCommitRequestTopic::default();
            t.name = TopicName(StrBytes::from_string((*topic).to_owned()));
            t.partitions = parts
                .iter()
                .map(|(p, o)| {
                    let mut part = TxnOffsetCommitRequestPartition::default();
                    part.partition_index = *p;
                    part.committed_offset = *o;
                    part.committed_leader_epoch = -1;
                    part
                })
                .collect();
            t
        })
        .collect();
    let resp = conn.send(&req, version).await.map_err(conn_error)?;
    for t in &resp.topics {
        for p in &t.partitions {
            let Some(err) = ResponseError::try_from_code(p.error_code) else {
                continue;
            };
            let reason = format!(
                "TxnOffsetCommit of partition {} of topic {:?} for group {group:?}: {err:?}",
                p.partition_index, t.name.0
            );
            use ResponseError as E;
            return Err(match err {
                E::NotCoordinator | E::CoordinatorNotAvailable => {
                    conn.mark_broken();
                    TxnError::Retriable(reason)
                }
                E::CoordinatorLoadInProgress | E::RequestTimedOut | E::ConcurrentTransactions => {
                    TxnError::Retriable(reason)
                }
                E::ProducerFenced | E::InvalidProducerEpoch => TxnError::Fatal(reason),
                E::UnknownMemberId | E::IllegalGeneration | E::FencedInstanceId => {
                    TxnError::NotMember(reason)
                }
                _ => TxnError::Abortable(reason),
            });
        }
    }
    Ok(())
}

fn conn_error(e: ConnError) -> TxnError {
    match e {
        ConnError::Unsupported { .. } => TxnError::Fatal(format!(
            "{e}; exactly-once needs a cluster with transactions: switch `exactly_once` off for this broker"
        )),
        e if e.is_fatal() => TxnError::Fatal(e.to_string()),
        e => TxnError::Retriable(e.to_string()),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
