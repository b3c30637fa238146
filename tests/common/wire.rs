//! Kafka's wire protocol spoken by the tests themselves (with the `kafka-protocol` crate, not the
//! code under test): record batches as other clients write them (odd ones included), a raw
//! produce, and a proxy that can answer requests in the broker's place.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::fetch_response::AbortedTransaction;
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{
    ApiKey, FetchRequest, FetchResponse, GroupId, InitProducerIdRequest, InitProducerIdResponse,
    OffsetFetchRequest, OffsetFetchResponse, ProduceRequest, ProduceResponse, ProducerId,
    RequestHeader, ResponseHeader, TopicName, TransactionalId,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, StrBytes};
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A record as a plain producer writes it.
pub fn plain(value: &str) -> Record {
    Record {
        transactional: false,
        control: false,
        delete_horizon: false,
        partition_leader_epoch: -1,
        producer_id: -1,
        producer_epoch: -1,
        timestamp_type: TimestampType::Creation,
        offset: 0,
        sequence: -1,
        timestamp: 1_700_000_000_000,
        key: None,
        value: Some(Bytes::copy_from_slice(value.as_bytes())),
        headers: Default::default(),
    }
}

/// Encodes `records` as one uncompressed batch (offsets counted from 0).
pub fn batch(records: &[Record]) -> BytesMut {
    let mut records = records.to_vec();
    for (i, r) in records.iter_mut().enumerate() {
        r.offset = i as i64;
    }
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        &records,
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )
    .expect("encode batch");
    buf
}

/// Records of a transaction of `producer_id`, with sequence numbers from `first_sequence`.
pub fn transactional(producer_id: i64, first_sequence: i32, values: &[&str]) -> Vec<Record> {
    values
        .iter()
        .enumerate()
        .map(|(i, v)| Record {
            transactional: true,
            producer_id,
            producer_epoch: 0,
            sequence: first_sequence + i as i32,
            ..plain(v)
        })
        .collect()
}

/// The marker ending a transaction of `producer_id` (commit or abort); `sequence` follows the
/// producer's last record (the local broker checks sequences of every batch).
pub fn marker(producer_id: i64, sequence: i32, commit: bool) -> Vec<Record> {
    let mut key = BytesMut::new();
    key.put_i16(0);
    key.put_i16(i16::from(commit));
    let mut value = BytesMut::new();
    value.put_i16(0);
    value.put_i32(0);
    vec![Record {
        control: true,
        key: Some(key.freeze()),
        value: Some(value.freeze()),
        sequence,
        ..transactional(producer_id, 0, &[""])[0].clone()
    }]
}

/// A producer id from `broker` (InitProducerId, as an idempotent or transactional producer
/// starts), with its epoch.
pub async fn init_producer_id(broker: &str, transactional_id: Option<&str>) -> (i64, i16) {
    let mut conn = TcpStream::connect(broker).await.expect("connect to broker");
    let mut req = InitProducerIdRequest::default();
    req.transactional_id =
        transactional_id.map(|t| TransactionalId(StrBytes::from_string(t.to_owned())));
    req.transaction_timeout_ms = 60_000;
    req.producer_id = ProducerId(-1);
    req.producer_epoch = -1;
    let version = 4;
    let frame = request_frame(&req, ApiKey::InitProducerId, version, 1);
    conn.write_all(&frame).await.unwrap();
    let mut body = read_frame(&mut conn).await.expect("InitProducerId answer");
    let _ = ResponseHeader::decode(&mut body, InitProducerIdResponse::header_version(version));
    let resp = InitProducerIdResponse::decode(&mut body, version).expect("decode answer");
    assert_eq!(resp.error_code, 0, "InitProducerId refused");
    (resp.producer_id.0, resp.producer_epoch)
}

/// The offset `group` committed for partition 0 of `topic` (-1: none), asked of `broker` (the
/// single local broker is every group's coordinator).
pub async fn committed(broker: &str, group: &str, topic: &str) -> i64 {
    committed_partition(broker, group, topic, 0).await
}

/// The offset `group` committed for `partition` of `topic` (-1: none).
pub async fn committed_partition(broker: &str, group: &str, topic: &str, partition: i32) -> i64 {
    let mut conn = TcpStream::connect(broker).await.expect("connect to broker");
    let mut t = OffsetFetchRequestTopic::default();
    t.name = TopicName(StrBytes::from_string(topic.to_owned()));
    t.partition_indexes = vec![partition];
    let mut req = OffsetFetchRequest::default();
    req.group_id = GroupId(StrBytes::from_string(group.to_owned()));
    req.topics = Some(vec![t]);
    let version = 7;
    let frame = request_frame(&req, ApiKey::OffsetFetch, version, 1);
    conn.write_all(&frame).await.unwrap();
    let mut body = read_frame(&mut conn).await.expect("OffsetFetch answer");
    let _ = ResponseHeader::decode(&mut body, OffsetFetchResponse::header_version(version));
    let resp = OffsetFetchResponse::decode(&mut body, version).expect("decode answer");
    resp.topics
        .iter()
        .flat_map(|t| &t.partitions)
        .map(|p| p.committed_offset)
        .next()
        .unwrap_or(-1)
}

/// Sends `batches` to partition 0 of `topic` in one Produce request per batch, directly to
/// `broker` (the partition's leader); returns each answer's error code. A batch answered with
/// an error of a partition that is not ready yet (a topic just created: UNKNOWN_TOPIC_OR_PARTITION,
/// LEADER_NOT_AVAILABLE, NOT_LEADER_OR_FOLLOWER) is sent again, for up to 10 s.
pub async fn produce_raw(broker: &str, topic: &str, batches: Vec<BytesMut>) -> Vec<i16> {
    const NOT_READY: [i16; 3] = [3, 5, 6];
    let mut conn = TcpStream::connect(broker).await.expect("connect to broker");
    let mut codes = Vec::new();
    let mut correlation = 0;
    for records in batches {
        let records = records.freeze();
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let mut part = PartitionProduceData::default();
            part.index = 0;
            part.records = Some(records.clone());
            let mut t = TopicProduceData::default();
            t.name = TopicName(StrBytes::from_string(topic.to_owned()));
            t.partition_data = vec![part];
            let mut req = ProduceRequest::default();
            req.acks = -1;
            req.timeout_ms = 10_000;
            req.topic_data = vec![t];
            let version = 7;
            correlation += 1;
            let frame = request_frame(&req, ApiKey::Produce, version, correlation);
            conn.write_all(&frame).await.unwrap();
            let mut body = read_frame(&mut conn).await.expect("produce answer");
            let _ = ResponseHeader::decode(&mut body, ProduceResponse::header_version(version));
            let resp = ProduceResponse::decode(&mut body, version).expect("decode produce answer");
            let code = resp.responses[0].partition_responses[0].error_code;
            if NOT_READY.contains(&code) && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
            codes.push(code);
            break;
        }
    }
    codes
}

fn request_frame<R: Encodable + HeaderVersion>(
    req: &R,
    key: ApiKey,
    version: i16,
    correlation: i32,
) -> BytesMut {
    let mut header = RequestHeader::default();
    header.request_api_key = key as i16;
    header.request_api_version = version;
    header.correlation_id = correlation;
    header.client_id = Some(StrBytes::from_static_str("tests"));
    let mut buf = BytesMut::new();
    buf.put_i32(0);
    header.encode(&mut buf, R::header_version(version)).unwrap();
    req.encode(&mut buf, version).unwrap();
    let len = (buf.len() - 4) as i32;
    buf[..4].copy_from_slice(&len.to_be_bytes());
    buf
}

/// One length-prefixed Kafka frame (request or answer), without its length; `None` at the end
/// of the stream or for an implausible length.
pub async fn read_frame(conn: &mut (impl AsyncReadExt + Unpin)) -> Option<Bytes> {
    let len = conn.read_i32().await.ok()?;
    if !(0..=100 * 1024 * 1024).contains(&len) {
        return None;
    }
    let mut body = vec![0u8; len as usize];
    conn.read_exact(&mut body).await.ok()?;
    Some(Bytes::from(body))
}

/// Writes `frame` with its length prefix, in one write (so frames never interleave).
pub async fn write_frame(
    io: &mut (impl AsyncWriteExt + Unpin),
    frame: &[u8],
) -> std::io::Result<()> {
    let mut out = BytesMut::with_capacity(frame.len() + 4);
    out.put_i32(frame.len() as i32);
    out.put_slice(frame);
    io.write_all(&out).await
}

/// What the proxy does with a Produce request for a topic: pass it on, or answer it with this
/// error code without forwarding it.
pub type ProduceRule = Arc<dyn Fn(&str, usize) -> Option<i16> + Send + Sync>;

/// A proxy in front of one broker that understands request framing: it answers Produce
/// requests the rule refuses (by topic and record-batch size) itself, and passes everything
/// else through. Refusing is how a test makes a broker reject an output for good (the local
/// broker enforces no size limit and no ACLs).
#[derive(Clone)]
pub struct KafkaProxy {
    pub port: u16,
    rule: Arc<Mutex<ProduceRule>>,
    aborted: Aborted,
    delays: Delays,
    /// Requests passed on, by API key.
    counts: Arc<Mutex<HashMap<i16, usize>>>,
    offset_fetch_errors: OffsetFetchErrors,
    lost_answers: LostAnswers,
    /// The error code the proxy answers InitProducerId requests with itself, if any.
    refused_producer_ids: Arc<Mutex<Option<i16>>>,
    /// The most Produce requests seen on the wire at once on one connection (passed on, not
    /// answered yet).
    most_produce_in_flight: Arc<std::sync::atomic::AtomicUsize>,
    /// The most partitions one Fetch request asked for.
    most_fetch_partitions: Arc<std::sync::atomic::AtomicUsize>,
    /// Every Fetch request passed on, in order.
    fetch_log: Arc<Mutex<Vec<FetchSeen>>>,
    /// How many more incremental Fetch requests get `FETCH_SESSION_ID_NOT_FOUND` back.
    lost_sessions: Arc<Mutex<usize>>,
    /// A partition whose next fetch from an offset at least this far that says its last
    /// fetched epoch gets a diverging epoch back: topic, partition, offset, end offset.
    diverge: Arc<Mutex<Option<DivergeAt>>>,
}

/// Where [`KafkaProxy::diverge_next_fetch`] acts: topic, partition, from offset, end offset.
type DivergeAt = (String, i32, i64, i64);

/// A Fetch answer to rewrite as diverging: topic, partition, epoch, end offset.
type Diverging = (String, i32, i32, i64);

/// What one Fetch request said of its fetch session (KIP-227).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchSeen {
    pub session_id: i32,
    pub session_epoch: i32,
    /// Partitions listed.
    pub partitions: usize,
    /// Partitions the request drops from the session.
    pub forgotten: usize,
    /// Whether the proxy answered it with a lost session ([`KafkaProxy::lose_fetch_sessions`]).
    pub lost: bool,
}

/// Produce requests to a topic whose answers the proxy loses: the topic, and how many more.
type LostAnswers = Arc<Mutex<(String, usize)>>;

/// How many more OffsetFetch answers get an error on every partition, and which.
type OffsetFetchErrors = Arc<Mutex<(usize, i16)>>;

/// Answers the proxy holds back: by API key, how many more answers and for how long.
type Delays = Arc<Mutex<HashMap<i16, (usize, std::time::Duration)>>>;

/// Aborted transactions the proxy adds to Fetch answers: topic, producer id, first offset.
type Aborted = Arc<Mutex<Vec<(String, i64, i64)>>>;

impl KafkaProxy {
    /// Listens on `port`, forwarding to `broker`.
    pub async fn start_on(port: u16, broker: String) -> KafkaProxy {
        let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let pass: ProduceRule = Arc::new(|_, _| None);
        let proxy = KafkaProxy {
            port,
            rule: Arc::new(Mutex::new(pass)),
            aborted: Arc::default(),
            delays: Arc::default(),
            counts: Arc::default(),
            offset_fetch_errors: Arc::default(),
            lost_answers: Arc::default(),
            refused_producer_ids: Arc::default(),
            most_produce_in_flight: Arc::default(),
            most_fetch_partitions: Arc::default(),
            fetch_log: Arc::default(),
            lost_sessions: Arc::default(),
            diverge: Arc::default(),
        };
        let shared = proxy.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(upstream) = TcpStream::connect(&broker).await else {
                    continue;
                };
                tokio::spawn(relay(client, upstream, shared.clone()));
            }
        });
        proxy
    }

    /// Reports a transaction of `producer_id` starting at `first_offset` of `topic` as aborted
    /// in every Fetch answer from now on, as a Kafka broker does for `read_committed` consumers
    /// (the local broker keeps no such list: it always answers with none).
    pub fn report_aborted(&self, topic: &str, producer_id: i64, first_offset: i64) {
        self.aborted
            .lock()
            .unwrap()
            .push((topic.to_owned(), producer_id, first_offset));
    }

    /// Sets the rule for Produce requests (topic, bytes of its records) -> error code.
    pub fn refuse_produce(
        &self,
        rule: impl Fn(&str, usize) -> Option<i16> + Send + Sync + 'static,
    ) {
        *self.rule.lock().unwrap() = Arc::new(rule);
    }

    /// Holds back the broker's next `count` answers to requests of `api` by `delay` each (a
    /// coordinator or leader that answers late), on whichever connection they come.
    pub fn delay_answers(&self, api: ApiKey, count: usize, delay: std::time::Duration) {
        self.delays
            .lock()
            .unwrap()
            .insert(api as i16, (count, delay));
    }

    /// Answers the next `count` OffsetFetch requests with `code` on every partition (and no
    /// committed offset), as a coordinator does for offsets it cannot give yet, for example
    /// `UNSTABLE_OFFSET_COMMIT` (88) while a transaction's offsets are pending.
    pub fn fail_offset_fetches(&self, count: usize, code: i16) {
        *self.offset_fetch_errors.lock().unwrap() = (count, code);
    }

    /// Loses the broker's answers to the next `count` Produce requests for `topic`: each such
    /// request reaches the broker (which writes its records), then the connection to the
    /// client is closed instead of answering, as when a connection drops after the leader
    /// wrote a batch.
    pub fn lose_produce_answers(&self, topic: &str, count: usize) {
        *self.lost_answers.lock().unwrap() = (topic.to_owned(), count);
    }

    /// Answers every InitProducerId request with `code` itself (as a cluster does that grants
    /// no producer ids, e.g. CLUSTER_AUTHORIZATION_FAILED, 31, without the IdempotentWrite ACL).
    pub fn refuse_producer_ids(&self, code: i16) {
        *self.refused_producer_ids.lock().unwrap() = Some(code);
    }

    /// How many answers [`Self::lose_produce_answers`] still has to lose.
    pub fn answers_to_lose(&self) -> usize {
        self.lost_answers.lock().unwrap().1
    }

    /// How many requests of `api` the proxy has passed on.
    pub fn requests(&self, api: ApiKey) -> usize {
        self.counts
            .lock()
            .unwrap()
            .get(&(api as i16))
            .copied()
            .unwrap_or(0)
    }

    /// The most Produce requests one client connection had on the wire at once: passed on to
    /// the broker and not answered yet (1 for a client that waits for each answer).
    pub fn most_produce_in_flight(&self) -> usize {
        self.most_produce_in_flight
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The most partitions one Fetch request passed on asked for.
    pub fn most_fetch_partitions(&self) -> usize {
        self.most_fetch_partitions
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Every Fetch request passed on so far.
    pub fn fetches(&self) -> Vec<FetchSeen> {
        self.fetch_log.lock().unwrap().clone()
    }

    /// Answers the next `count` incremental Fetch requests (those of an open fetch session)
    /// with `FETCH_SESSION_ID_NOT_FOUND` (70) instead of the broker's answer, as a broker that
    /// evicted the session or restarted does. The broker still gets each request.
    pub fn lose_fetch_sessions(&self, count: usize) {
        *self.lost_sessions.lock().unwrap() = count;
    }

    /// Answers the next Fetch request that reads `partition` of `topic` from `from` or later,
    /// going on from where its last fetch ended (it says the leader epoch of the last batch it
    /// read), as a leader whose log diverged from that does after an unclean election
    /// (KIP-320): with that epoch ending at `end_offset`, and no records.
    pub fn diverge_next_fetch(&self, topic: &str, partition: i32, from: i64, end_offset: i64) {
        *self.diverge.lock().unwrap() = Some((topic.to_owned(), partition, from, end_offset));
    }

    /// Whether the divergence asked for is still to be answered.
    pub fn divergence_pending(&self) -> bool {
        self.diverge.lock().unwrap().is_some()
    }

    /// Passes every request on again.
    pub fn pass_all(&self) {
        self.refuse_produce(|_, _| None);
    }
}

/// Passes one client connection's requests to `upstream` and the answers back, doing to
/// them what `proxy` was told.
async fn relay(client: TcpStream, upstream: TcpStream, proxy: KafkaProxy) {
    let KafkaProxy {
        rule,
        aborted,
        delays,
        counts,
        offset_fetch_errors,
        lost_answers,
        refused_producer_ids,
        most_produce_in_flight,
        most_fetch_partitions,
        fetch_log,
        lost_sessions,
        diverge,
        ..
    } = proxy;
    use std::sync::atomic::{AtomicUsize, Ordering};
    // Produce requests of this connection passed on and not answered yet.
    let produce_in_flight: Arc<AtomicUsize> = Arc::default();
    let (mut client_rx, client_tx) = client.into_split();
    // Produce requests passed on whose answers are to be lost, by correlation id.
    let losing: Arc<Mutex<std::collections::HashSet<i32>>> = Arc::default();
    let (upstream_rx, mut upstream_tx) = upstream.into_split();
    let client_tx = Arc::new(tokio::sync::Mutex::new(client_tx));
    // Fetch requests passed on, by correlation id, with their version.
    let fetches: Arc<Mutex<HashMap<i32, i16>>> = Arc::default();
    // Fetch requests whose answers are replaced by a lost session, by correlation id.
    let stale: Arc<Mutex<std::collections::HashSet<i32>>> = Arc::default();
    // Fetch requests whose answers are rewritten as diverging, by correlation id.
    let diverging: Arc<Mutex<HashMap<i32, Diverging>>> = Arc::default();
    // The API key and version of every request passed on, by correlation id.
    let apis: Arc<Mutex<HashMap<i32, (i16, i16)>>> = Arc::default();
    // Answers from the broker go back frame by frame (so our own answers never interleave).
    let back = {
        let client_tx = client_tx.clone();
        let fetches = fetches.clone();
        let apis = apis.clone();
        let losing = losing.clone();
        let stale = stale.clone();
        let diverging = diverging.clone();
        let produce_in_flight = produce_in_flight.clone();
        let mut upstream_rx = upstream_rx;
        tokio::spawn(async move {
            while let Some(frame) = read_frame(&mut upstream_rx).await {
                let correlation = frame.clone().get_i32();
                if losing.lock().unwrap().remove(&correlation) {
                    let _ = client_tx.lock().await.shutdown().await;
                    return;
                }
                let request = apis.lock().unwrap().remove(&correlation);
                let api = request.map(|(api, _)| api);
                if api == Some(ApiKey::Produce as i16) {
                    produce_in_flight.fetch_sub(1, Ordering::SeqCst);
                }
                let hold = api.and_then(|api| {
                    let mut delays = delays.lock().unwrap();
                    let (left, delay) = delays.get_mut(&api)?;
                    (*left > 0).then(|| {
                        *left -= 1;
                        *delay
                    })
                });
                if let Some(delay) = hold {
                    tokio::time::sleep(delay).await;
                }
                let frame = match request {
                    Some((_, version)) if stale.lock().unwrap().remove(&correlation) => {
                        fetches.lock().unwrap().remove(&correlation);
                        session_lost(correlation, version)
                    }
                    Some((_, version)) if diverging.lock().unwrap().contains_key(&correlation) => {
                        fetches.lock().unwrap().remove(&correlation);
                        let d = diverging.lock().unwrap().remove(&correlation).unwrap();
                        diverged(frame, version, &d)
                    }
                    _ => add_aborted(frame, &fetches, &aborted),
                };
                let frame = match request {
                    Some((api, version)) if api == ApiKey::OffsetFetch as i16 => {
                        fail_offset_fetch(frame, version, &offset_fetch_errors)
                    }
                    _ => frame,
                };
                if write_frame(&mut *client_tx.lock().await, &frame)
                    .await
                    .is_err()
                {
                    return;
                }
            }
        })
    };
    while let Some(frame) = read_frame(&mut client_rx).await {
        if let Some(answer) = refusal(&frame, &rule) {
            if client_tx.lock().await.write_all(&answer).await.is_err() {
                break;
            }
            continue;
        }
        let refused = *refused_producer_ids.lock().unwrap();
        if let Some(answer) = refused.and_then(|code| refuse_producer_id(&frame, code)) {
            if client_tx.lock().await.write_all(&answer).await.is_err() {
                break;
            }
            continue;
        }
        let mut peek = frame.clone();
        if peek.remaining() >= 8 {
            let (api, version, correlation) = (peek.get_i16(), peek.get_i16(), peek.get_i32());
            apis.lock().unwrap().insert(correlation, (api, version));
            *counts.lock().unwrap().entry(api).or_default() += 1;
            if api == ApiKey::Fetch as i16 {
                fetches.lock().unwrap().insert(correlation, version);
                if let Some(mut seen) = fetch_seen(&frame, version) {
                    most_fetch_partitions.fetch_max(seen.partitions, Ordering::SeqCst);
                    let mut lost = lost_sessions.lock().unwrap();
                    if seen.session_epoch > 0 && *lost > 0 {
                        *lost -= 1;
                        seen.lost = true;
                        stale.lock().unwrap().insert(correlation);
                    }
                    fetch_log.lock().unwrap().push(seen);
                }
                let armed = diverge.lock().unwrap().clone();
                if let Some((topic, partition, from, end)) = armed {
                    let at = (&*topic, partition, from);
                    if let Some(epoch) = last_fetched_epoch(&frame, version, at) {
                        *diverge.lock().unwrap() = None;
                        diverging
                            .lock()
                            .unwrap()
                            .insert(correlation, (topic, partition, epoch, end));
                    }
                }
            }
            if api == ApiKey::Produce as i16 && produces_to(&frame, version, &lost_answers) {
                losing.lock().unwrap().insert(correlation);
            }
            if api == ApiKey::Produce as i16 {
                let now = produce_in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                most_produce_in_flight.fetch_max(now, Ordering::SeqCst);
            }
        }
        if write_frame(&mut upstream_tx, &frame).await.is_err() {
            break;
        }
    }
    back.abort();
}

/// A Fetch answer with the reported aborted transactions of its topics added.
fn add_aborted(frame: Bytes, fetches: &Mutex<HashMap<i32, i16>>, aborted: &Aborted) -> Bytes {
    let correlation = frame.clone().get_i32();
    let Some(version) = fetches.lock().unwrap().remove(&correlation) else {
        return frame;
    };
    let aborted = aborted.lock().unwrap().clone();
    if aborted.is_empty() {
        return frame;
    }
    edit_fetch_answer(frame, version, |resp| {
        for t in &mut resp.responses {
            for p in &mut t.partitions {
                let list = p.aborted_transactions.get_or_insert_with(Vec::new);
                for (_, producer, first) in
                    aborted.iter().filter(|(topic, _, _)| *t.topic == **topic)
                {
                    let mut a = AbortedTransaction::default();
                    a.producer_id = ProducerId(*producer);
                    a.first_offset = *first;
                    list.push(a);
                }
            }
        }
    })
}

/// `frame` (a Fetch answer of `version`) as `edit` changes it (unchanged if unreadable).
fn edit_fetch_answer(frame: Bytes, version: i16, edit: impl FnOnce(&mut FetchResponse)) -> Bytes {
    let mut body = frame.clone();
    let hv = FetchResponse::header_version(version);
    let (Ok(header), Ok(mut resp)) = (
        ResponseHeader::decode(&mut body, hv),
        FetchResponse::decode(&mut body, version),
    ) else {
        return frame;
    };
    edit(&mut resp);
    let mut buf = BytesMut::new();
    header.encode(&mut buf, hv).unwrap();
    resp.encode(&mut buf, version).unwrap();
    buf.freeze()
}

/// An OffsetFetch answer with every partition failed, while `errors` asks for that.
fn fail_offset_fetch(frame: Bytes, version: i16, errors: &OffsetFetchErrors) -> Bytes {
    let code = {
        let mut errors = errors.lock().unwrap();
        if errors.0 == 0 {
            return frame;
        }
        errors.0 -= 1;
        errors.1
    };
    let mut body = frame.clone();
    let hv = OffsetFetchResponse::header_version(version);
    let (Ok(header), Ok(mut resp)) = (
        ResponseHeader::decode(&mut body, hv),
        OffsetFetchResponse::decode(&mut body, version),
    ) else {
        return frame;
    };
    let partitions = resp
        .topics
        .iter_mut()
        .flat_map(|t| t.partitions.iter_mut())
        .map(|p| (&mut p.error_code, &mut p.committed_offset));
    let grouped = resp
        .groups
        .iter_mut()
        .flat_map(|g| g.topics.iter_mut())
        .flat_map(|t| t.partitions.iter_mut())
        .map(|p| (&mut p.error_code, &mut p.committed_offset));
    for (error, offset) in partitions.chain(grouped) {
        *error = code;
        *offset = -1;
    }
    let mut buf = BytesMut::new();
    header.encode(&mut buf, hv).unwrap();
    resp.encode(&mut buf, version).unwrap();
    buf.freeze()
}

/// What `frame` (a Fetch request) says of its session and partitions (`None` if unreadable).
fn fetch_seen(frame: &Bytes, version: i16) -> Option<FetchSeen> {
    let mut body = frame.clone();
    RequestHeader::decode(&mut body, FetchRequest::header_version(version)).ok()?;
    let req = FetchRequest::decode(&mut body, version).ok()?;
    Some(FetchSeen {
        session_id: req.session_id,
        session_epoch: req.session_epoch,
        partitions: req.topics.iter().map(|t| t.partitions.len()).sum(),
        forgotten: req
            .forgotten_topics_data
            .iter()
            .map(|t| t.partitions.len())
            .sum(),
        lost: false,
    })
}

/// The last fetched epoch `frame` (a Fetch request) gives for `partition` of `topic`, if it
/// lists the partition with one and a fetch offset of at least `from`.
fn last_fetched_epoch(
    frame: &Bytes,
    version: i16,
    (topic, partition, from): (&str, i32, i64),
) -> Option<i32> {
    let mut body = frame.clone();
    RequestHeader::decode(&mut body, FetchRequest::header_version(version)).ok()?;
    let req = FetchRequest::decode(&mut body, version).ok()?;
    req.topics
        .iter()
        .filter(|t| *t.topic == *topic)
        .flat_map(|t| &t.partitions)
        .find(|p| p.partition == partition && p.fetch_offset >= from && p.last_fetched_epoch >= 0)
        .map(|p| p.last_fetched_epoch)
}

/// A Fetch answer with the partition of `d` diverging (its epoch ending at its end offset) and
/// without its records.
fn diverged(frame: Bytes, version: i16, d: &Diverging) -> Bytes {
    let (topic, partition, epoch, end) = d;
    edit_fetch_answer(frame, version, |resp| {
        let mut listed = false;
        for t in resp.responses.iter_mut().filter(|t| *t.topic == **topic) {
            for p in t
                .partitions
                .iter_mut()
                .filter(|p| p.partition_index == *partition)
            {
                p.records = None;
                p.diverging_epoch.epoch = *epoch;
                p.diverging_epoch.end_offset = *end;
                listed = true;
            }
        }
        if !listed {
            let mut p = kafka_protocol::messages::fetch_response::PartitionData::default();
            p.partition_index = *partition;
            p.diverging_epoch.epoch = *epoch;
            p.diverging_epoch.end_offset = *end;
            let mut t = kafka_protocol::messages::fetch_response::FetchableTopicResponse::default();
            t.topic = TopicName(StrBytes::from_string(topic.clone()));
            t.partitions = vec![p];
            resp.responses.push(t);
        }
    })
}

/// A Fetch answer saying the request's fetch session is not found (70), with no partitions.
fn session_lost(correlation: i32, version: i16) -> Bytes {
    let mut header = ResponseHeader::default();
    header.correlation_id = correlation;
    let mut resp = FetchResponse::default();
    resp.error_code = 70;
    resp.session_id = 0;
    let hv = FetchResponse::header_version(version);
    let mut buf = BytesMut::new();
    header.encode(&mut buf, hv).unwrap();
    resp.encode(&mut buf, version).unwrap();
    buf.freeze()
}

/// Whether `frame` (a Produce request) writes to the topic whose answers are to be lost while
/// some are left to lose; counts it if so.
fn produces_to(frame: &Bytes, version: i16, lost: &LostAnswers) -> bool {
    let mut lost = lost.lock().unwrap();
    if lost.1 == 0 {
        return false;
    }
    let mut body = frame.clone();
    let Ok(_) = RequestHeader::decode(&mut body, ProduceRequest::header_version(version)) else {
        return false;
    };
    let Ok(req) = ProduceRequest::decode(&mut body, version) else {
        return false;
    };
    if !req.topic_data.iter().any(|t| *t.name == *lost.0) {
        return false;
    }
    lost.1 -= 1;
    true
}

/// The proxy's own answer with `code` to `frame` if it is an InitProducerId request.
fn refuse_producer_id(frame: &Bytes, code: i16) -> Option<BytesMut> {
    let mut peek = frame.clone();
    if peek.remaining() < 4 || peek.get_i16() != ApiKey::InitProducerId as i16 {
        return None;
    }
    let version = peek.get_i16();
    let mut body = frame.clone();
    let header =
        RequestHeader::decode(&mut body, InitProducerIdRequest::header_version(version)).ok()?;
    let mut resp = InitProducerIdResponse::default();
    resp.error_code = code;
    resp.producer_id = ProducerId(-1);
    resp.producer_epoch = -1;
    answer_frame(header.correlation_id, &resp, version)
}

/// `resp` framed as the answer (length prefix included) to request `correlation`.
fn answer_frame<R: Encodable + HeaderVersion>(
    correlation: i32,
    resp: &R,
    version: i16,
) -> Option<BytesMut> {
    let mut rh = ResponseHeader::default();
    rh.correlation_id = correlation;
    let mut buf = BytesMut::new();
    buf.put_i32(0);
    rh.encode(&mut buf, R::header_version(version)).ok()?;
    resp.encode(&mut buf, version).ok()?;
    let len = (buf.len() - 4) as i32;
    buf[..4].copy_from_slice(&len.to_be_bytes());
    Some(buf)
}

/// The proxy's own answer to a Produce request its rule refuses.
fn refusal(frame: &Bytes, rule: &Mutex<ProduceRule>) -> Option<BytesMut> {
    let mut peek = frame.clone();
    if peek.remaining() < 4 || peek.get_i16() != ApiKey::Produce as i16 {
        return None;
    }
    let version = peek.get_i16();
    let mut body = frame.clone();
    let header = RequestHeader::decode(&mut body, ProduceRequest::header_version(version)).ok()?;
    let req = ProduceRequest::decode(&mut body, version).ok()?;
    let rule = rule.lock().unwrap().clone();
    let mut code = None;
    for t in &req.topic_data {
        for p in &t.partition_data {
            let size = p.records.as_ref().map_or(0, Bytes::len);
            code = code.or(rule(&t.name, size));
        }
    }
    let code = code?;
    let mut resp = ProduceResponse::default();
    resp.responses = req
        .topic_data
        .iter()
        .map(|t| {
            let mut tr = TopicProduceResponse::default();
            tr.name = t.name.clone();
            tr.partition_responses = t
                .partition_data
                .iter()
                .map(|p| {
                    let mut pr = PartitionProduceResponse::default();
                    pr.index = p.index;
                    pr.error_code = code;
                    pr.base_offset = -1;
                    pr
                })
                .collect();
            tr
        })
        .collect();
    answer_frame(header.correlation_id, &resp, version)
}

/// A consumer-group member written with the protocol crate alone, as another client library's
/// member would be: it joins `group` subscribed to `topics` (which may not exist), syncs, then
/// heartbeats until dropped (and leaves the group then).
pub struct ForeignMember {
    /// The topics and partitions the group's leader gave it.
    pub assigned: Vec<(String, Vec<i32>)>,
    heartbeat: tokio::task::JoinHandle<()>,
}

impl Drop for ForeignMember {
    fn drop(&mut self) {
        self.heartbeat.abort();
    }
}

impl ForeignMember {
    pub async fn join(broker: &str, group: &str, topics: &[&str]) -> ForeignMember {
        use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
        use kafka_protocol::messages::{
            ConsumerProtocolAssignment, ConsumerProtocolSubscription, HeartbeatRequest,
            HeartbeatResponse, JoinGroupRequest, JoinGroupResponse, SyncGroupRequest,
            SyncGroupResponse,
        };
        let mut conn = TcpStream::connect(broker).await.expect("connect to broker");
        let mut sub = ConsumerProtocolSubscription::default();
        sub.topics = topics
            .iter()
            .map(|t| StrBytes::from_string((*t).to_owned()))
            .collect();
        let mut metadata = BytesMut::new();
        metadata.put_i16(1);
        sub.encode(&mut metadata, 1).unwrap();
        let group_id = GroupId(StrBytes::from_string(group.to_owned()));
        let mut member_id = StrBytes::default();
        let mut correlation = 0;
        let joined = loop {
            let mut protocol = JoinGroupRequestProtocol::default();
            protocol.name = StrBytes::from_static_str("range");
            protocol.metadata = metadata.clone().freeze();
            let mut req = JoinGroupRequest::default();
            req.group_id = group_id.clone();
            req.session_timeout_ms = 6_000;
            req.rebalance_timeout_ms = 10_000;
            req.member_id = member_id.clone();
            req.protocol_type = StrBytes::from_static_str("consumer");
            req.protocols = vec![protocol];
            correlation += 1;
            let resp: JoinGroupResponse =
                roundtrip(&mut conn, &req, ApiKey::JoinGroup, 5, correlation).await;
            match resp.error_code {
                0 => break resp,
                79 => member_id = resp.member_id, // MEMBER_ID_REQUIRED: join again with it
                code => panic!("JoinGroup refused with error code {code}"),
            }
        };
        let mut sync = SyncGroupRequest::default();
        sync.group_id = group_id.clone();
        sync.generation_id = joined.generation_id;
        sync.member_id = joined.member_id.clone();
        correlation += 1;
        let synced: SyncGroupResponse =
            roundtrip(&mut conn, &sync, ApiKey::SyncGroup, 3, correlation).await;
        assert_eq!(synced.error_code, 0, "SyncGroup refused");
        let mut bytes = synced.assignment.clone();
        let assigned = if bytes.remaining() >= 2 {
            let version = bytes.get_i16();
            let a = ConsumerProtocolAssignment::decode(&mut bytes, version.min(1)).unwrap();
            a.assigned_partitions
                .iter()
                .map(|t| (t.topic.to_string(), t.partitions.clone()))
                .collect()
        } else {
            Vec::new()
        };
        let (generation, member) = (joined.generation_id, joined.member_id.clone());
        let heartbeat = tokio::spawn(async move {
            loop {
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                let mut hb = HeartbeatRequest::default();
                hb.group_id = group_id.clone();
                hb.generation_id = generation;
                hb.member_id = member.clone();
                correlation += 1;
                let _: HeartbeatResponse =
                    roundtrip(&mut conn, &hb, ApiKey::Heartbeat, 3, correlation).await;
            }
        });
        ForeignMember {
            assigned,
            heartbeat,
        }
    }
}

async fn roundtrip<R, S>(
    conn: &mut TcpStream,
    req: &R,
    key: ApiKey,
    version: i16,
    correlation: i32,
) -> S
where
    R: Encodable + HeaderVersion + Sync,
    S: Decodable + HeaderVersion,
{
    let frame = request_frame(req, key, version, correlation);
    conn.write_all(&frame).await.unwrap();
    let mut body = tokio::time::timeout(std::time::Duration::from_secs(60), read_frame(conn))
        .await
        .expect("the coordinator answers")
        .expect("an answer");
    let _ = ResponseHeader::decode(&mut body, S::header_version(version));
    S::decode(&mut body, version).expect("decode the answer")
}

/// The leader node of each partition of `topic`, from `broker`'s metadata (-1: none now).
pub async fn leaders(broker: &str, topic: &str) -> std::collections::BTreeMap<i32, i32> {
    topic_metadata(broker, topic)
        .await
        .topics
        .iter()
        .flat_map(|t| t.partitions.iter())
        .map(|p| (p.partition_index, p.leader_id.0))
        .collect()
}

/// `broker`'s Metadata answer about `topic` alone.
async fn topic_metadata(broker: &str, topic: &str) -> kafka_protocol::messages::MetadataResponse {
    use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
    use kafka_protocol::messages::MetadataRequest;
    let mut conn = TcpStream::connect(broker).await.expect("connect to broker");
    let mut t = MetadataRequestTopic::default();
    t.name = Some(TopicName(StrBytes::from_string(topic.to_owned())));
    let mut req = MetadataRequest::default();
    req.topics = Some(vec![t]);
    roundtrip(&mut conn, &req, ApiKey::Metadata, 9, 1).await
}

/// Each partition's in-sync replicas (node ids, sorted), as `broker` knows them.
pub async fn in_sync(broker: &str, topic: &str) -> std::collections::BTreeMap<i32, Vec<i32>> {
    topic_metadata(broker, topic)
        .await
        .topics
        .iter()
        .flat_map(|t| t.partitions.iter())
        .map(|p| {
            let mut isr: Vec<i32> = p.isr_nodes.iter().map(|n| n.0).collect();
            isr.sort_unstable();
            (p.partition_index, isr)
        })
        .collect()
}

/// The node coordinating `group`, asked of `broker` (FindCoordinator).
pub async fn coordinator(broker: &str, group: &str) -> i32 {
    coordinator_of(broker, group, 0).await
}

/// The node coordinating `key`: a group's (`key_type` 0) or a transactional id's (1).
pub async fn coordinator_of(broker: &str, group: &str, key_type: i8) -> i32 {
    use kafka_protocol::messages::{FindCoordinatorRequest, FindCoordinatorResponse};
    let mut conn = TcpStream::connect(broker).await.expect("connect to broker");
    let mut req = FindCoordinatorRequest::default();
    req.key_type = key_type;
    req.coordinator_keys = vec![StrBytes::from_string(group.to_owned())];
    let resp: FindCoordinatorResponse =
        roundtrip(&mut conn, &req, ApiKey::FindCoordinator, 4, 1).await;
    let c = resp.coordinators.first().expect("one coordinator");
    assert_eq!(
        c.error_code, 0,
        "FindCoordinator for {group}: {}",
        c.error_code
    );
    c.node_id.0
}

/// Creates `topic` (1 partition, replication factor 1) with topic `configs`, asked of
/// `broker` (CreateTopics; rskafka's admin client takes no configs).
pub async fn create_topic_with_configs(broker: &str, topic: &str, configs: &[(&str, &str)]) {
    create_topic_with(broker, topic, 1, 1, configs).await;
}

/// Creates `topic` with `partitions`, `replication` and topic `configs` (CreateTopics),
/// asserting success.
pub async fn create_topic_with(
    broker: &str,
    topic: &str,
    partitions: i32,
    replication: i16,
    configs: &[(&str, &str)],
) {
    use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
    use kafka_protocol::messages::{CreateTopicsRequest, CreateTopicsResponse};
    let mut conn = TcpStream::connect(broker).await.expect("connect to broker");
    let mut t = CreatableTopic::default();
    t.name = TopicName(StrBytes::from_string(topic.to_owned()));
    t.num_partitions = partitions;
    t.replication_factor = replication;
    t.configs = configs
        .iter()
        .map(|(k, v)| {
            let mut c = CreatableTopicConfig::default();
            c.name = StrBytes::from_string((*k).to_owned());
            c.value = Some(StrBytes::from_string((*v).to_owned()));
            c
        })
        .collect();
    let mut req = CreateTopicsRequest::default();
    req.topics = vec![t];
    req.timeout_ms = 10_000;
    let resp: CreateTopicsResponse = roundtrip(&mut conn, &req, ApiKey::CreateTopics, 5, 1).await;
    let code = resp.topics.first().map_or(-1, |t| t.error_code);
    assert_eq!(
        code, 0,
        "CreateTopics {topic} {configs:?}: error code {code}"
    );
}

/// Each partition of `topic`: its leader node (-1: none now) and leader epoch, from
/// `broker`'s metadata.
pub async fn leader_epochs(
    broker: &str,
    topic: &str,
) -> std::collections::BTreeMap<i32, (i32, i32)> {
    topic_metadata(broker, topic)
        .await
        .topics
        .iter()
        .flat_map(|t| t.partitions.iter())
        .map(|p| (p.partition_index, (p.leader_id.0, p.leader_epoch)))
        .collect()
}

/// Asks `broker` for an unclean leader election of `topic`'s `partition` (ElectLeaders,
/// election type 1, what `kafka-leader-election --election-type unclean` sends): any live
/// replica may become its leader, in sync or not. The partition's error code (0: elected).
pub async fn elect_unclean(broker: &str, topic: &str, partition: i32) -> i16 {
    use kafka_protocol::messages::elect_leaders_request::TopicPartitions;
    use kafka_protocol::messages::{ElectLeadersRequest, ElectLeadersResponse};
    let mut conn = TcpStream::connect(broker).await.expect("connect to broker");
    let mut t = TopicPartitions::default();
    t.topic = TopicName(StrBytes::from_string(topic.to_owned()));
    t.partitions = vec![partition];
    let mut req = ElectLeadersRequest::default();
    req.election_type = 1;
    req.topic_partitions = Some(vec![t]);
    req.timeout_ms = 10_000;
    let resp: ElectLeadersResponse = roundtrip(&mut conn, &req, ApiKey::ElectLeaders, 2, 1).await;
    if resp.error_code != 0 {
        return resp.error_code;
    }
    resp.replica_election_results
        .iter()
        .flat_map(|t| t.partition_result.iter())
        .find(|p| p.partition_id == partition)
        .map_or(-1, |p| p.error_code)
}
