//! One broker, as the whole service talks to it: two connections, each driven by a task that
//! merges what every partition asks of that broker into one request.
//!
//! - The **fetch** connection: every partition reader led by this broker hands its next fetch
//!   here; one Fetch request carries all of them (Kafka holds it up to `fetch_max_wait` until
//!   one partition has data), and each reader gets its partition's part back to decode on its
//!   own task. A reader that is not asking (its consumer is busy or paused) is simply not in
//!   the next request: backpressure stays per partition.
//! - The **request** connection: produce batches (one Produce request carries the batch of
//!   every partition whose producer is waiting, as the Java client's sender does) and
//!   ListOffsets lookups. Fetches never wait behind it, nor it behind a fetch the broker holds.
//!
//! Fetches go in a fetch session (KIP-227, see [`crate::session`]) where the broker keeps one:
//! a request lists only the partitions that changed or left, an answer only those with news;
//! each reader still gets an answer for its partition (what the broker last told of it, when
//! the answer left it out).
//!
//! The fetch connection carries one request at a time; the request connection up to
//! [`MAX_IN_FLIGHT`] (Kafka handles one request per connection at a time, and reads the next
//! as soon as it answered the last, while this side dispatches the answer). What is asked
//! meanwhile goes into the next request. A lost connection fails the requests on it (the
//! callers retry with their backoff) and is opened again, after a jittered backoff when
//! opening failed.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic, ForgottenTopic};
use kafka_protocol::messages::fetch_response::PartitionData;
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::list_offsets_response::ListOffsetsPartitionResponse;
use kafka_protocol::messages::produce_response::PartitionProduceResponse;
use kafka_protocol::messages::{
    BrokerId, FetchRequest, ListOffsetsRequest, ListOffsetsResponse, ProduceRequest,
    ProduceResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::backoff::Backoff;
use crate::config::Config;
use crate::encode::BATCH_HEADER;
use crate::error::{partition_error, Cause, FetchError};
use crate::metrics::FetchSessionMetrics;
use crate::protocol::{ms, Conn, ConnError, Pieces, Sent};
use crate::session::{self, Ends, FetchSession, Key, Position};

/// Largest answer asked for in one Fetch request (each partition's part is bounded by its
/// own fetch size; Kafka fills partitions in request order up to this, and the order turns
/// every round so that none is always last). Smaller than the Java consumer's 50 MiB: an
/// answer is read whole before its partitions' records are copied out of it, so this is
/// memory held twice for a moment, and a few MiB per round already keep up with a broker.
const FETCH_RESPONSE_MAX: i32 = 8 * 1024 * 1024;
/// Requests on the wire at once on the request connection (the Java producer's
/// `max.in.flight.requests.per.connection` default).
const MAX_IN_FLIGHT: usize = 5;
/// Largest Produce request built from several partitions' batches (one batch larger than
/// this goes alone; Kafka's `socket.request.max.bytes` is 100 MiB).
const PRODUCE_REQUEST_MAX: usize = 16 * 1024 * 1024;
/// How long a fetch is held while a partition known to have more to read is not in it (its
/// consumer was busy when the request left): short, so that it joins the next one soon.
const REJOIN_WAIT: Duration = Duration::from_millis(10);
/// How long the next fetch waits at most for the partitions the last one answered empty to
/// ask again (they do so at once, unless their consumer stopped or paused meanwhile).
const RETURN_WAIT: Duration = Duration::from_millis(5);
/// How long a fetch waits for more partitions when one asks for the first time: partitions
/// start asking together (a service's start, an assignment), and one that misses the request
/// waits behind it for as long as the broker holds it (`fetch_max_wait`).
const JOIN_WAIT: Duration = Duration::from_millis(5);
/// For this long after a partition asked for the first time, fetches are held [`REJOIN_WAIT`]
/// at most: partitions that start later than [`JOIN_WAIT`] (their start offsets take a
/// request of their own) join the next request within that, not after `fetch_max_wait`.
const JOIN_WINDOW: Duration = Duration::from_millis(200);
/// How long a partition that had data counts as having more, while it does not ask.
const BEHIND_FOR: Duration = Duration::from_secs(1);
/// Pauses after a fetch round the broker answered empty at once (a broker that does not hold
/// empty fetches for `fetch_max_wait`, as Tansu 0.6.0): the extra latency of a first new
/// message on a quiet broker, never more.
const IDLE_MIN: Duration = Duration::from_millis(20);
const IDLE_MAX: Duration = Duration::from_millis(100);

/// What a reader or producer gets when its part of a request could not be had.
pub(crate) type Answer<T> = Result<T, FetchError>;

/// The handle to one broker's two connections. Cheap to clone; the tasks end when the last
/// handle is dropped.
#[derive(Debug, Clone)]
pub(crate) struct Link {
    fetches: mpsc::UnboundedSender<FetchJob>,
    requests: mpsc::UnboundedSender<Job>,
}

#[derive(Debug)]
struct FetchJob {
    topic: Arc<str>,
    partition: i32,
    /// Where and how much to read. The broker refuses the fetch if its leader epoch differs
    /// from the one the reader knows (KIP-320), and the reader looks the leader up again; with
    /// the epoch of the last batch read (when this fetch goes on from there), the leader
    /// answers with where its log diverged from that, if it did.
    at: Position,
    reply: oneshot::Sender<Answer<Option<PartitionData>>>,
}

/// A batch of one partition for the broker's next Produce request.
#[derive(Debug)]
pub(crate) struct Batch {
    pub(crate) topic: Arc<str>,
    pub(crate) partition: i32,
    /// The record batch's header, then its records (sent as they are, not copied into the
    /// request).
    pub(crate) head: [u8; BATCH_HEADER],
    pub(crate) records: Bytes,
    /// Set when the batch belongs to a transaction: batches of different transactional ids
    /// go in different requests.
    pub(crate) transactional_id: Option<Arc<str>>,
}

impl Batch {
    /// Its bytes in the request.
    fn len(&self) -> usize {
        self.head.len() + self.records.len()
    }
}

#[derive(Debug)]
enum Job {
    Produce {
        batch: Batch,
        reply: oneshot::Sender<Answer<PartitionProduceResponse>>,
    },
    ListOffsets {
        topic: Arc<str>,
        partition: i32,
        timestamp: i64,
        reply: oneshot::Sender<Answer<ListOffsetsPartitionResponse>>,
    },
}

impl Link {
    /// Starts the tasks of the link to `addr` (nothing connects before the first request).
    pub(crate) fn start(config: Arc<Config>, addr: Arc<str>) -> Self {
        let (fetches, fetch_rx) = mpsc::unbounded_channel();
        let (requests, request_rx) = mpsc::unbounded_channel();
        tokio::spawn(run_fetches(
            Channel::new(config.clone(), addr.clone()),
            fetch_rx,
        ));
        tokio::spawn(run_requests(Channel::new(config, addr), request_rx));
        Self { fetches, requests }
    }

    /// `topic`'s `partition` from `at` (its offset, at most its bytes, with the reader's
    /// leader epochs), in the broker's next fetch (`None`: the broker's answer did not list the
    /// partition).
    pub(crate) async fn fetch(
        &self,
        topic: &Arc<str>,
        partition: i32,
        at: Position,
    ) -> Answer<Option<PartitionData>> {
        let (reply, rx) = oneshot::channel();
        let job = FetchJob {
            topic: topic.clone(),
            partition,
            at,
            reply,
        };
        if self.fetches.send(job).is_err() {
            return Err(gone());
        }
        rx.await.unwrap_or_else(|_| Err(gone()))
    }

    /// ListOffsets for `timestamp` in `topic`'s `partition`.
    pub(crate) async fn list_offset(
        &self,
        topic: &Arc<str>,
        partition: i32,
        timestamp: i64,
    ) -> Answer<ListOffsetsPartitionResponse> {
        let (reply, rx) = oneshot::channel();
        let job = Job::ListOffsets {
            topic: topic.clone(),
            partition,
            timestamp,
            reply,
        };
        self.ask(job, rx).await
    }

    /// Writes `batch` in the broker's next Produce request (`acks = all`) and returns the
    /// partition's answer.
    pub(crate) async fn produce(&self, batch: Batch) -> Answer<PartitionProduceResponse> {
        let (reply, rx) = oneshot::channel();
        self.ask(Job::Produce { batch, reply }, rx).await
    }

    async fn ask<T>(&self, job: Job, rx: oneshot::Receiver<Answer<T>>) -> Answer<T> {
        if self.requests.send(job).is_err() {
            return Err(gone());
        }
        rx.await.unwrap_or_else(|_| Err(gone()))
    }
}

fn gone() -> FetchError {
    FetchError::Retriable(Cause::LinkGone)
}

/// One connection to the broker, opened when needed, with the backoff between failed opens.
struct Channel {
    config: Arc<Config>,
    addr: Arc<str>,
    conn: Option<Conn>,
    backoff: Backoff,
}

impl Channel {
    fn new(config: Arc<Config>, addr: Arc<str>) -> Self {
        Self {
            config,
            addr,
            conn: None,
            backoff: Backoff::requests(),
        }
    }

    /// The connection, opened if there is none or the last one broke. After a failed open the
    /// caller fails its requests and waits [`Channel::pause`] before the next try.
    async fn get(&mut self) -> Result<&mut Conn, FetchError> {
        if self.conn.as_ref().is_some_and(Conn::is_broken) {
            self.conn = None;
        }
        if self.conn.is_none() {
            let timeout = self.config.connect_timeout.min(self.config.request_timeout);
            let conn = Conn::connect(&self.addr, &self.config, timeout).await?;
            self.backoff.reset();
            self.conn = Some(conn);
        }
        Ok(self.conn.as_mut().expect("connected above"))
    }

    /// Waits before the next open after a failed one.
    async fn pause(&mut self) {
        if self.conn.is_none() {
            self.backoff.sleep().await;
        }
    }
}

/// Fails every job of a request that could not be sent or answered.
fn fail_all<T>(replies: impl IntoIterator<Item = oneshot::Sender<Answer<T>>>, e: &FetchError) {
    for reply in replies {
        let _ = reply.send(Err(e.clone()));
    }
}

async fn run_fetches(mut channel: Channel, mut rx: mpsc::UnboundedReceiver<FetchJob>) {
    let config = channel.config.clone();
    let mut pending: Vec<FetchJob> = Vec::new();
    // Partitions whose last answer had records, and since when.
    let mut behind: HashMap<(Arc<str>, i32), Instant> = HashMap::new();
    let mut round: usize = 0;
    let mut idle = IDLE_MIN;
    let mut session = FetchSession::default();
    let meter = FetchSessionMetrics::new(&channel.addr);
    // Partitions the last answer gave no records, until they ask again.
    let mut returning: HashSet<Key> = HashSet::new();
    // Partitions that asked before, and when one asked for the first time last.
    let mut known: HashSet<Key> = HashSet::new();
    let mut joined = None;
    loop {
        if pending.is_empty() {
            match rx.recv().await {
                Some(job) => pending.push(job),
                None => return,
            }
        }
        while let Ok(job) = rx.try_recv() {
            returning.remove(&(job.topic.clone(), job.partition));
            pending.push(job);
        }
        // A partition asking for the first time: the others starting with it go in the same
        // request, not behind one the broker may hold for `fetch_max_wait`.
        if pending
            .iter()
            .any(|j| !known.contains(&(j.topic.clone(), j.partition)))
        {
            joined = Some(Instant::now());
            let until = Instant::now() + JOIN_WAIT;
            if !gather(&mut rx, &mut pending, &mut returning, until, false).await {
                return;
            }
        }
        // Readers the last answer gave nothing ask again at once: the next request waits a
        // moment for them, so that every quiet partition goes in one request (rather than
        // rounds of a few, each making the fetch session drop the others).
        if !returning.is_empty() {
            let until = Instant::now() + RETURN_WAIT;
            if !gather(&mut rx, &mut pending, &mut returning, until, true).await {
                return;
            }
            returning.clear();
        }
        // Readers that stopped waiting (their consumer stopped).
        pending.retain(|j| !j.reply.is_closed());
        if pending.is_empty() {
            continue;
        }
        // A partition asked about twice (a consumer, and a re-read of the same partition)
        // goes once per request: the other waits for the next.
        let mut jobs: Vec<FetchJob> = Vec::with_capacity(pending.len());
        let mut asked: HashSet<(Arc<str>, i32)> = HashSet::with_capacity(pending.len());
        for job in std::mem::take(&mut pending) {
            if asked.insert((job.topic.clone(), job.partition)) {
                jobs.push(job);
            } else {
                pending.push(job);
            }
        }
        known.extend(asked.iter().cloned());
        let now = Instant::now();
        behind.retain(|_, since| now.duration_since(*since) < BEHIND_FOR);
        let missing = behind.keys().any(|k| !asked.contains(k));
        let joining = joined.is_some_and(|at: Instant| now.duration_since(at) < JOIN_WINDOW);
        let wait = if missing || joining {
            REJOIN_WAIT.min(config.fetch_max_wait)
        } else {
            config.fetch_max_wait
        };
        let started = Instant::now();
        let answered = fetch_round(&mut channel, &mut session, &jobs, round, wait).await;
        meter.partitions(session.state().1);
        let answered = match answered {
            Ok(answered) => answered,
            Err(e) => {
                channel.conn = None;
                fail_all(jobs.into_iter().map(|j| j.reply), &e);
                channel.pause().await;
                continue;
            }
        };
        round = round.wrapping_add(1);
        let mut any = false;
        for (job, data) in jobs.into_iter().zip(answered) {
            let key = (job.topic, job.partition);
            let has = data
                .as_ref()
                .and_then(|d| d.records.as_ref())
                .is_some_and(|r| !r.is_empty());
            if has {
                any = true;
                behind.insert(key, now);
            } else {
                behind.remove(&key);
                returning.insert(key);
            }
            let _ = job.reply.send(Ok(data));
        }
        if !any && started.elapsed() < wait / 2 {
            // Answered empty at once: the broker does not hold fetches; do not spin.
            tokio::time::sleep(idle).await;
            idle = (idle * 2).min(IDLE_MAX);
        } else if any {
            idle = IDLE_MIN;
        }
    }
}

/// Takes what readers ask until `until`, or sooner once every `returning` partition asked
/// again when `until_returned`; `false` when every handle to the link is gone.
async fn gather(
    rx: &mut mpsc::UnboundedReceiver<FetchJob>,
    pending: &mut Vec<FetchJob>,
    returning: &mut HashSet<Key>,
    until: Instant,
    until_returned: bool,
) -> bool {
    while !(until_returned && returning.is_empty()) {
        match tokio::time::timeout_at(until, rx.recv()).await {
            Ok(Some(job)) => {
                returning.remove(&(job.topic.clone(), job.partition));
                pending.push(job);
            }
            Ok(None) => return false,
            Err(_) => break,
        }
    }
    true
}

/// One Fetch request for `jobs`, answering each job's partition in job order (`None`: not in
/// the answer of a broker that keeps no session). The request is incremental when `session`
/// has one open; a partition its answer left out gets what the broker last told of it. The
/// partitions' records are copied out of the answer when several have some, so that one slow
/// consumer does not keep the whole answer in memory.
async fn fetch_round(
    channel: &mut Channel,
    session: &mut FetchSession,
    jobs: &[FetchJob],
    round: usize,
    wait: Duration,
) -> Result<Vec<Option<PartitionData>>, FetchError> {
    let res = try_fetch_round(channel, session, jobs, round, wait).await;
    if let Err(e) = &res {
        session.reset(e.1);
    }
    res.map_err(|e| e.0)
}

/// [`fetch_round`], with the answer's error code when the broker refused the request.
async fn try_fetch_round(
    channel: &mut Channel,
    session: &mut FetchSession,
    jobs: &[FetchJob],
    round: usize,
    wait: Duration,
) -> Result<Vec<Option<PartitionData>>, (FetchError, Option<i16>)> {
    let config = channel.config.clone();
    let conn = channel.get().await.map_err(|e| (e, None))?;
    // Up to v12: later versions name topics by id. Sessions from v7.
    let version = conn
        .version::<FetchRequest>(12)
        .map_err(|e| (e.into(), None))?;
    let asked: Vec<(Key, Position)> = jobs
        .iter()
        .map(|j| ((j.topic.clone(), j.partition), j.at))
        .collect();
    let mut reopened = false;
    // A session the broker no longer knows is opened again at once, with a full request.
    let resp = loop {
        let plan = session.plan(&asked, version >= 7);
        let req = fetch_request(&plan, jobs, round, wait);
        let limit = config.request_timeout + wait;
        let resp = conn
            .send_within(&req, version, limit)
            .await
            .map_err(|e| (e.into(), None))?;
        let code = resp.error_code;
        let stale = matches!(
            code,
            session::SESSION_NOT_FOUND | session::INVALID_SESSION_EPOCH
        );
        if stale && !reopened && !plan.is_full() {
            tracing::debug!(
                broker = conn.addr(),
                code,
                "the broker dropped the fetch session; opening another"
            );
            session.reset(Some(code));
            reopened = true;
            continue;
        }
        partition_error(code, || format!("fetch from {}", conn.addr()))
            .map_err(|e| (e, Some(code)))?;
        break (plan, resp);
    };
    let (plan, resp) = resp;
    let mut by_partition: HashMap<(&str, i32), PartitionData> = HashMap::new();
    let mut with_records = 0;
    for t in &resp.responses {
        for p in &t.partitions {
            if p.records.as_ref().is_some_and(|r| !r.is_empty()) {
                with_records += 1;
            }
        }
    }
    let session_id = resp.session_id;
    let resp_topics = resp.responses;
    let mut names: Vec<(TopicName, Vec<PartitionData>)> = resp_topics
        .into_iter()
        .map(|t| (t.topic, t.partitions))
        .collect();
    for (name, partitions) in &mut names {
        for mut p in std::mem::take(partitions) {
            if with_records > 1 {
                if let Some(r) = &p.records {
                    p.records = Some(Bytes::copy_from_slice(r));
                }
            }
            by_partition.insert((name.as_str(), p.partition_index), p);
        }
    }
    let answers: Vec<Option<PartitionData>> = jobs
        .iter()
        .map(|j| by_partition.remove(&(&*j.topic, j.partition)))
        .collect();
    let listed = asked.iter().zip(&answers).filter_map(|((key, _), data)| {
        let d = data.as_ref()?;
        let ends = Ends {
            high_watermark: d.high_watermark,
            last_stable_offset: d.last_stable_offset,
            log_start_offset: d.log_start_offset,
        };
        Some((key, ends))
    });
    session.answered(&plan, &asked, session_id, listed);
    if plan.is_full() {
        return Ok(answers);
    }
    Ok(answers
        .into_iter()
        .zip(&asked)
        .map(|(data, (key, _))| data.or_else(|| session.ends(key).map(|e| unchanged(key.1, e))))
        .collect())
}

/// What a reader gets for its partition when an incremental answer left it out: no records,
/// the offsets the broker last told.
fn unchanged(partition: i32, ends: Ends) -> PartitionData {
    let mut data = PartitionData::default();
    data.partition_index = partition;
    data.high_watermark = ends.high_watermark;
    data.last_stable_offset = ends.last_stable_offset;
    data.log_start_offset = ends.log_start_offset;
    data
}

/// The Fetch request of `plan` (the partitions it lists, in an order that turns every round,
/// and those it forgets).
fn fetch_request(
    plan: &session::Plan,
    jobs: &[FetchJob],
    round: usize,
    wait: Duration,
) -> FetchRequest {
    let mut order = plan.send.clone();
    if !order.is_empty() {
        let turn = round % order.len();
        order.rotate_left(turn);
    }
    let mut topics: Vec<FetchTopic> = Vec::new();
    for i in order {
        let job = &jobs[i];
        let mut part = FetchPartition::default();
        part.partition = job.partition;
        part.fetch_offset = job.at.offset;
        part.partition_max_bytes = job.at.max_bytes;
        part.current_leader_epoch = job.at.epoch;
        part.last_fetched_epoch = job.at.last_epoch;
        part.log_start_offset = -1;
        // Consecutive partitions of one topic share its entry.
        match topics.last_mut() {
            Some(t) if *t.topic == *job.topic => t.partitions.push(part),
            _ => {
                let mut t = FetchTopic::default();
                t.topic = topic_name(&job.topic);
                t.partitions = vec![part];
                topics.push(t);
            }
        }
    }
    let mut forgotten: Vec<ForgottenTopic> = Vec::new();
    for (topic, partition) in &plan.forget {
        match forgotten.last_mut() {
            Some(t) if *t.topic == **topic => t.partitions.push(*partition),
            _ => {
                let mut t = ForgottenTopic::default();
                t.topic = topic_name(topic);
                t.partitions = vec![*partition];
                forgotten.push(t);
            }
        }
    }
    // Every partition of the session may answer, listed or not.
    let total = jobs
        .iter()
        .fold(0i32, |n, j| n.saturating_add(j.at.max_bytes));
    let largest = jobs.iter().map(|j| j.at.max_bytes).max().unwrap_or(0);
    let mut req = FetchRequest::default();
    req.replica_id = BrokerId(-1);
    req.max_wait_ms = ms(wait).max(1);
    req.min_bytes = 1;
    req.max_bytes = total.min(FETCH_RESPONSE_MAX).max(largest);
    req.isolation_level = 1;
    req.session_id = plan.session_id;
    req.session_epoch = plan.session_epoch;
    req.topics = topics;
    req.forgotten_topics_data = forgotten;
    req
}

fn topic_name(topic: &str) -> TopicName {
    TopicName(StrBytes::from_string(topic.to_owned()))
}

type ProduceReply = oneshot::Sender<Answer<PartitionProduceResponse>>;

/// The jobs of one request on the request connection.
enum Jobs {
    Produce(Vec<(Batch, ProduceReply)>),
    ListOffsets(Vec<ListJob>),
}

impl Jobs {
    fn fail(self, e: &FetchError) {
        match self {
            Jobs::Produce(request) => fail_all(request.into_iter().map(|(_, r)| r), e),
            Jobs::ListOffsets(jobs) => fail_all(jobs.into_iter().map(|j| j.3), e),
        }
    }
}

/// A request written on the request connection, waiting for its answer.
struct Waiting {
    sent: Sent,
    jobs: Jobs,
}

/// The request connection: a request goes out as soon as something is asked and there is room
/// on the wire (up to [`MAX_IN_FLIGHT`] requests waiting for their answers, which Kafka sends
/// in order); what is asked while the wire is full goes into one request when room frees up.
/// A partition has one batch in flight at a time (its producer waits for the answer), so
/// order within a partition holds.
async fn run_requests(mut channel: Channel, mut rx: mpsc::UnboundedReceiver<Job>) {
    let timeout = channel.config.request_timeout;
    let mut lists: Vec<ListJob> = Vec::new();
    let mut batches: Vec<(Batch, ProduceReply)> = Vec::new();
    // Requests on the wire, oldest first, with when their answer is due.
    let mut in_flight: VecDeque<(Waiting, Instant)> = VecDeque::new();
    // What the broker sent that is not a whole answer yet.
    let mut received = BytesMut::new();
    let mut open = true;
    loop {
        // Write what is queued, while there is room on the wire.
        let mut failed = None;
        while in_flight.len() < MAX_IN_FLIGHT && failed.is_none() {
            let next = if !lists.is_empty() {
                let (now, later) = one_per_partition(std::mem::take(&mut lists));
                lists = later;
                write_list_offsets(&mut channel, now).await
            } else if !batches.is_empty() {
                let request = take_request(&mut batches);
                write_produce(&mut channel, request).await
            } else {
                break;
            };
            match next {
                Ok(waiting) => in_flight.push_back((waiting, Instant::now() + timeout)),
                Err((jobs, e)) => {
                    jobs.fail(&e);
                    failed = Some(e);
                }
            }
        }
        if failed.is_none() {
            if !open && in_flight.is_empty() && lists.is_empty() && batches.is_empty() {
                return;
            }
            let due = in_flight.front().map(|(_, due)| *due);
            tokio::select! {
                job = rx.recv(), if open => match job {
                    Some(job) => {
                        queue(job, &mut lists, &mut batches);
                        while let Ok(job) = rx.try_recv() {
                            queue(job, &mut lists, &mut batches);
                        }
                    }
                    None => open = false,
                },
                read = read_answers(&mut channel, &mut received, &mut in_flight), if due.is_some() => {
                    failed = read.err();
                }
                () = tokio::time::sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => {
                    failed = Some(FetchError::from(ConnError::Timeout {
                        addr: channel.addr.to_string(),
                        timeout,
                    }));
                }
            }
        }
        if let Some(e) = failed {
            // The connection's position is unknown: everything on it failed.
            channel.conn = None;
            received.clear();
            for (waiting, _) in in_flight.drain(..) {
                waiting.jobs.fail(&e);
            }
            channel.pause().await;
        }
    }
}

/// Reads what the broker sent and hands out every whole answer in it, oldest request first.
async fn read_answers(
    channel: &mut Channel,
    received: &mut BytesMut,
    in_flight: &mut VecDeque<(Waiting, Instant)>,
) -> Result<(), FetchError> {
    let conn = channel.conn.as_mut().ok_or_else(gone)?;
    conn.read_more(received).await?;
    while let Some((waiting, _)) = in_flight.front() {
        let handed = match &waiting.jobs {
            Jobs::Produce(_) => conn
                .next_answer::<ProduceRequest>(received, &waiting.sent)?
                .map(Answered::Produce),
            Jobs::ListOffsets(_) => conn
                .next_answer::<ListOffsetsRequest>(received, &waiting.sent)?
                .map(Answered::ListOffsets),
        };
        let Some(answered) = handed else {
            break;
        };
        let (waiting, _) = in_flight.pop_front().expect("looked at above");
        hand_out(waiting.jobs, answered);
    }
    Ok(())
}

/// A decoded answer of the request connection.
enum Answered {
    Produce(ProduceResponse),
    ListOffsets(ListOffsetsResponse),
}

/// The partitions' parts of an answer, by topic and partition, keyed by the answer's own topic
/// names (nothing allocated per partition); each part is taken out once.
struct Answers<'a, T> {
    api: &'static str,
    parts: HashMap<&'a str, HashMap<i32, &'a mut T>>,
}

impl<'a, T: Default> Answers<'a, T> {
    fn new(
        api: &'static str,
        topics: impl Iterator<Item = (&'a str, &'a mut Vec<T>)>,
        index: impl Fn(&T) -> i32,
    ) -> Self {
        let mut parts: HashMap<&str, HashMap<i32, &mut T>> = HashMap::new();
        for (topic, partitions) in topics {
            let by_partition = parts.entry(topic).or_default();
            for p in partitions {
                by_partition.insert(index(p), p);
            }
        }
        Self { api, parts }
    }

    /// `topic`'s `partition`'s part (an error when the answer left it out).
    fn take(&mut self, topic: &Arc<str>, partition: i32) -> Answer<T> {
        self.parts
            .get_mut(&**topic)
            .and_then(|t| t.remove(&partition))
            .map(std::mem::take)
            .ok_or_else(|| {
                FetchError::Retriable(Cause::Unanswered {
                    topic: topic.clone(),
                    partition,
                    api: self.api,
                })
            })
    }
}

/// Gives each job of a request its partition's part of the answer.
fn hand_out(jobs: Jobs, answered: Answered) {
    match (jobs, answered) {
        (Jobs::Produce(request), Answered::Produce(mut resp)) => {
            let topics = resp.responses.iter_mut();
            let parts = topics.map(|t| (t.name.as_str(), &mut t.partition_responses));
            let mut answers = Answers::new("produce", parts, |p| p.index);
            for (batch, reply) in request {
                let answer = answers.take(&batch.topic, batch.partition);
                // The batch's records go before the answer, so that its producer finds their
                // buffer free to use again.
                drop(batch);
                let _ = reply.send(answer);
            }
        }
        (Jobs::ListOffsets(jobs), Answered::ListOffsets(mut resp)) => {
            let topics = resp.topics.iter_mut();
            let parts = topics.map(|t| (t.name.as_str(), &mut t.partitions));
            let mut answers = Answers::new("ListOffsets", parts, |p| p.partition_index);
            for (topic, partition, _, reply) in jobs {
                let _ = reply.send(answers.take(&topic, partition));
            }
        }
        (jobs, _) => jobs.fail(&FetchError::Retriable(Cause::WrongAnswer)),
    }
}

fn queue(job: Job, lists: &mut Vec<ListJob>, batches: &mut Vec<(Batch, ProduceReply)>) {
    match job {
        Job::ListOffsets {
            topic,
            partition,
            timestamp,
            reply,
        } => lists.push((topic, partition, timestamp, reply)),
        Job::Produce { batch, reply } => batches.push((batch, reply)),
    }
}

/// The batches of the next Produce request: those of the first batch's transactional id, in
/// queue order, one per partition, up to [`PRODUCE_REQUEST_MAX`] bytes (the first always).
fn take_request<T>(batches: &mut Vec<(Batch, T)>) -> Vec<(Batch, T)> {
    let txn = batches[0].0.transactional_id.clone();
    let mut bytes = 0;
    let mut taken = Vec::new();
    let mut rest = Vec::new();
    // One batch per partition and request (two producers of one partition take turns).
    let mut partitions = HashSet::new();
    for (batch, reply) in batches.drain(..) {
        let fits = taken.is_empty() || bytes + batch.len() <= PRODUCE_REQUEST_MAX;
        if batch.transactional_id == txn
            && fits
            && partitions.insert((batch.topic.clone(), batch.partition))
        {
            bytes += batch.len();
            taken.push((batch, reply));
        } else {
            rest.push((batch, reply));
        }
    }
    *batches = rest;
    taken
}

type ListJob = (
    Arc<str>,
    i32,
    i64,
    oneshot::Sender<Answer<ListOffsetsPartitionResponse>>,
);

/// The ListOffsets jobs of one request: one per partition (a partition asked about twice,
/// for another timestamp, waits for the next).
fn one_per_partition(jobs: Vec<ListJob>) -> (Vec<ListJob>, Vec<ListJob>) {
    let mut now: Vec<ListJob> = Vec::new();
    let mut later = Vec::new();
    for job in jobs {
        if now.iter().any(|j| j.0 == job.0 && j.1 == job.1) {
            later.push(job);
        } else {
            now.push(job);
        }
    }
    (now, later)
}

async fn write_list_offsets(
    channel: &mut Channel,
    jobs: Vec<ListJob>,
) -> Result<Waiting, (Jobs, FetchError)> {
    let mut topics: Vec<ListOffsetsTopic> = Vec::new();
    for (topic, partition, timestamp, _) in &jobs {
        let mut p = ListOffsetsPartition::default();
        p.partition_index = *partition;
        p.timestamp = *timestamp;
        p.current_leader_epoch = -1;
        match topics.iter_mut().find(|t| *t.name == **topic) {
            Some(t) => t.partitions.push(p),
            None => {
                let mut t = ListOffsetsTopic::default();
                t.name = topic_name(topic);
                t.partitions = vec![p];
                topics.push(t);
            }
        }
    }
    let mut req = ListOffsetsRequest::default();
    req.replica_id = BrokerId(-1);
    req.isolation_level = 1;
    req.topics = topics;
    let sent = async {
        let conn = channel.get().await?;
        let version = conn.version::<ListOffsetsRequest>(7)?;
        Ok::<_, FetchError>(conn.pipeline(&req, version).await?)
    };
    match sent.await {
        Ok(sent) => Ok(Waiting {
            sent,
            jobs: Jobs::ListOffsets(jobs),
        }),
        Err(e) => Err((Jobs::ListOffsets(jobs), e)),
    }
}

async fn write_produce(
    channel: &mut Channel,
    request: Vec<(Batch, ProduceReply)>,
) -> Result<Waiting, (Jobs, FetchError)> {
    let timeout = ms(channel.config.request_timeout);
    let sent = async {
        let conn = channel.get().await?;
        // Up to v9: later versions add leader hints (v10) and topic ids (v13).
        let version = conn.version::<ProduceRequest>(9)?;
        let batches = request.iter().map(|(batch, _)| batch);
        let body = |p: &mut Pieces| produce_body(p, version, timeout, batches);
        Ok::<_, FetchError>(
            conn.pipeline_pieces::<ProduceRequest>(version, body)
                .await?,
        )
    };
    match sent.await {
        Ok(sent) => Ok(Waiting {
            sent,
            jobs: Jobs::Produce(request),
        }),
        Err(e) => Err((Jobs::Produce(request), e)),
    }
}

/// Encodes a Produce request's body (v3 to v9; `acks = all`) for `batches` (one
/// transactional id, the first's), their record batches written from their own buffers.
/// Batches of one topic go under one topic entry, in the order their topics first come.
fn produce_body<'a>(
    p: &mut Pieces,
    version: i16,
    timeout_ms: i32,
    batches: impl Iterator<Item = &'a Batch> + Clone,
) {
    let flexible = version >= 9;
    let txn = batches
        .clone()
        .next()
        .and_then(|b| b.transactional_id.clone());
    let mut topics: Vec<(&str, Vec<&Batch>)> = Vec::new();
    for batch in batches {
        match topics.iter_mut().find(|(t, _)| *t == &*batch.topic) {
            Some((_, list)) => list.push(batch),
            None => topics.push((&batch.topic, vec![batch])),
        }
    }
    let out = p.own();
    put_string(out, flexible, txn.as_deref());
    out.put_i16(-1);
    out.put_i32(timeout_ms);
    put_count(out, flexible, topics.len());
    for (topic, list) in &topics {
        let out = p.own();
        put_string(out, flexible, Some(topic));
        put_count(out, flexible, list.len());
        for batch in list {
            let out = p.own();
            out.put_i32(batch.partition);
            put_count(out, flexible, batch.len());
            out.put_slice(&batch.head);
            p.splice(batch.records.clone());
            if flexible {
                put_uvarint(p.own(), 0); // no tagged fields
            }
        }
        if flexible {
            put_uvarint(p.own(), 0);
        }
    }
    if flexible {
        put_uvarint(p.own(), 0);
    }
}

/// A length or count: compact (unsigned varint of n + 1) in flexible versions, else an `i32`.
fn put_count(out: &mut Vec<u8>, flexible: bool, n: usize) {
    match flexible {
        true => put_uvarint(out, n as u64 + 1),
        false => out.put_i32(n as i32),
    }
}

/// A nullable string: compact in flexible versions, else with an `i16` length (-1: none).
fn put_string(out: &mut Vec<u8>, flexible: bool, s: Option<&str>) {
    match (s, flexible) {
        (None, true) => put_uvarint(out, 0),
        (None, false) => out.put_i16(-1),
        (Some(s), true) => put_uvarint(out, s.len() as u64 + 1),
        (Some(s), false) => out.put_i16(s.len() as i16),
    }
    if let Some(s) = s {
        out.put_slice(s.as_bytes());
    }
}

fn put_uvarint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.put_u8(v as u8 | 0x80);
        v >>= 7;
    }
    out.put_u8(v as u8);
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::messages::TransactionalId;
    use kafka_protocol::protocol::Encodable;

    /// A batch of `bytes` in a request (its header included, so at least [`BATCH_HEADER`]).
    fn batch(topic: &str, partition: i32, bytes: usize, txn: Option<&str>) -> (Batch, usize) {
        let batch = Batch {
            topic: Arc::from(topic),
            partition,
            head: [0; BATCH_HEADER],
            records: Bytes::from(vec![0u8; bytes.saturating_sub(BATCH_HEADER)]),
            transactional_id: txn.map(Arc::from),
        };
        (batch, 0)
    }

    fn keys(taken: &[(Batch, usize)]) -> Vec<(String, i32)> {
        taken
            .iter()
            .map(|(b, _)| (b.topic.to_string(), b.partition))
            .collect()
    }

    /// A request takes the batches of the first batch's transactional id, one per partition,
    /// in queue order; the rest wait for the next request, in their order.
    /// The body written in pieces is the bytes `kafka-protocol` encodes for the same request,
    /// at every version used, with a transactional id and without.
    #[test]
    fn a_produce_body_in_pieces_is_the_encoded_request() {
        for txn in [None, Some("txn-1")] {
            let batches: Vec<Batch> = [("a", 0, 10), ("b", 3, 0), ("a", 2, 300)]
                .into_iter()
                .map(|(topic, partition, bytes)| Batch {
                    topic: Arc::from(topic),
                    partition,
                    head: [bytes as u8; BATCH_HEADER],
                    records: Bytes::from((0..bytes).map(|i| i as u8).collect::<Vec<_>>()),
                    transactional_id: txn.map(Arc::from),
                })
                .collect();
            let mut req = ProduceRequest::default();
            req.transactional_id = txn.map(|t| TransactionalId(StrBytes::from_static_str(t)));
            req.acks = -1;
            req.timeout_ms = 30_000;
            for name in ["a", "b"] {
                let mut t = TopicProduceData::default();
                t.name = topic_name(name);
                for b in batches.iter().filter(|b| &*b.topic == name) {
                    let mut data = PartitionProduceData::default();
                    data.index = b.partition;
                    data.records = Some([&b.head[..], &b.records[..]].concat().into());
                    t.partition_data.push(data);
                }
                req.topic_data.push(t);
            }
            for version in 3..=9 {
                let mut want = BytesMut::new();
                req.encode(&mut want, version).unwrap();
                let mut got = Pieces::default();
                produce_body(&mut got, version, 30_000, batches.iter());
                assert_eq!(
                    got.flat(),
                    want,
                    "version {version}, transactional id {txn:?}"
                );
            }
        }
    }

    #[test]
    fn a_request_takes_one_batch_per_partition_of_one_transactional_id() {
        let mut queue = vec![
            batch("a", 0, 10, None),
            batch("a", 1, 10, Some("t")),
            batch("b", 0, 10, None),
            batch("a", 0, 10, None),
            batch("a", 2, 10, None),
        ];
        let first = take_request(&mut queue);
        assert_eq!(
            keys(&first),
            [("a".into(), 0), ("b".into(), 0), ("a".into(), 2)]
        );
        assert_eq!(keys(&queue), [("a".into(), 1), ("a".into(), 0)]);
        let second = take_request(&mut queue);
        assert_eq!(keys(&second), [("a".into(), 1)]);
        assert_eq!(keys(&take_request(&mut queue)), [("a".into(), 0)]);
        assert!(queue.is_empty());
    }

    /// A request stops growing at its size bound; a single batch larger than it goes alone.
    #[test]
    fn a_request_is_bounded_in_size_but_takes_a_larger_batch_alone() {
        let half = PRODUCE_REQUEST_MAX / 2;
        let mut queue = vec![
            batch("a", 0, PRODUCE_REQUEST_MAX + 1, None),
            batch("a", 1, half, None),
        ];
        assert_eq!(keys(&take_request(&mut queue)), [("a".into(), 0)]);
        let mut queue = vec![
            batch("a", 0, half, None),
            batch("a", 1, half - BATCH_HEADER, None),
            batch("a", 2, BATCH_HEADER + 1, None),
            batch("a", 3, BATCH_HEADER, None),
        ];
        assert_eq!(
            keys(&take_request(&mut queue)),
            [("a".into(), 0), ("a".into(), 1), ("a".into(), 3)]
        );
        assert_eq!(keys(&queue), [("a".into(), 2)]);
    }
}
