//! Reading record batches (format v2) from fetch responses: every codec Kafka clients write
//! (gzip, snappy in both framings, lz4, zstd; all pure Rust), transactions filtered as a
//! `read_committed` consumer must, and every failure confined to the batch it is in.
//!
//! A batch that cannot be read (bad checksum, unknown codec, corrupt compressed data, a legacy
//! message set) becomes an [`Fetched::Unreadable`] item carrying its offsets and raw bytes, so the
//! consumer can dead-letter it and go on; the batches around it are delivered as usual.

use std::collections::HashSet;
use std::io::Read;
use std::sync::Arc;

use bytes::{Buf, Bytes};
use faststream_core::{Headers, Message};

/// Length of a v2 batch header, up to and including the record count.
const HEADER_LEN: usize = 61;
/// Offset and length fields that start every batch (and every legacy message set).
const LOG_OVERHEAD: usize = 12;
/// Largest plausible record timestamp: the end of year 9999, in milliseconds.
const MAX_TIMESTAMP_MS: i64 = 253_402_300_799_999;

/// One item of a fetched partition, in offset order.
#[derive(Debug)]
pub(crate) enum Fetched {
    Record(Message),
    /// Records `first..=last` could not be read; `raw` holds their batch as fetched.
    Unreadable {
        first: i64,
        last: i64,
        raw: Bytes,
        reason: String,
    },
    /// Offsets up to `last` hold nothing to deliver (transaction markers, aborted
    /// transactions): done as they are, so the committed position reaches the log's end.
    Passed {
        last: i64,
    },
}

impl Fetched {
    /// The last offset this item covers.
    pub(crate) fn last_offset(&self) -> i64 {
        match self {
            Fetched::Record(m) => m.offset,
            Fetched::Unreadable { last, .. } | Fetched::Passed { last } => *last,
        }
    }
}

/// What one partition's fetched data held.
#[derive(Debug, Default)]
pub(crate) struct Decoded {
    pub(crate) items: Vec<Fetched>,
    /// The offset to fetch next: past every whole batch read (also batches that held nothing to
    /// deliver: transaction markers, aborted transactions, records before the fetch offset).
    pub(crate) next: Option<i64>,
    /// Records whose timestamp was implausible (delivered without one): (offset, raw value).
    pub(crate) bad_timestamps: Vec<(i64, i64)>,
}

/// A transaction the broker reported as aborted in this fetch range.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Aborted {
    pub(crate) producer_id: i64,
    pub(crate) first_offset: i64,
}

/// Where the fetched data came from and what to skip.
#[derive(Debug)]
pub(crate) struct Source {
    pub(crate) topic: Arc<str>,
    pub(crate) partition: i32,
    /// The fetch offset: records before it (in the same compressed batch) are dropped.
    pub(crate) from: i64,
    /// Sorted by first offset (as the broker sends them).
    pub(crate) aborted: Vec<Aborted>,
    /// Decompressed data larger than this is refused (a corrupt or hostile length).
    pub(crate) max_decompressed: usize,
}

/// Reads every whole batch of `data` at once; a truncated batch at the end (brokers cut the
/// response at the size limit) is left for the next fetch.
#[cfg(test)]
pub(crate) fn decode(src: Source, data: Bytes) -> Decoded {
    Records::new(src, data).all()
}

/// The whole record batches of one fetched partition, decoded a chunk of records at a time as
/// their consumer asks ([`Records::decode_into`]): what waits for its consumer is the fetched
/// bytes alone, and each message is built just before it is handled (with hundreds of
/// partitions, decoding every fetch at once held the whole backlog as messages).
#[derive(Debug)]
pub(crate) struct Records {
    src: Source,
    /// The whole batches not decoded yet.
    data: Bytes,
    /// A batch of negative length after them: nothing past it can be framed.
    broken: Option<(i64, Bytes)>,
    next: Option<i64>,
    last_epoch: Option<i32>,
    /// Every record's message starts as a clone of this one: the topic name is the
    /// consumer's, shared, not allocated again per record.
    template: Message,
    /// Aborted transactions not reached yet (an index into `src.aborted`).
    aborted_at: usize,
    /// Producers whose aborted transaction is open at the current batch.
    aborting: HashSet<i64>,
    /// Offsets below this have had their item (or precede the fetch offset).
    covered: i64,
    /// The batch being read.
    open: Option<Open>,
    /// Records whose timestamp was implausible (delivered without one): (offset, raw value);
    /// the caller takes them to log.
    pub(crate) bad_timestamps: Vec<(i64, i64)>,
}

impl Records {
    /// Frames the whole batches of `data` (reading only their headers, and checking the last
    /// one's checksum for its leader epoch); nothing is decoded yet.
    pub(crate) fn new(src: Source, mut data: Bytes) -> Self {
        let mut whole = 0;
        let mut last = None;
        let mut next = None;
        let mut broken = None;
        while data.len() - whole >= LOG_OVERHEAD {
            let at = &data[whole..];
            let base = i64::from_be_bytes(at[0..8].try_into().expect("8 bytes"));
            let Ok(len) =
                usize::try_from(i32::from_be_bytes(at[8..12].try_into().expect("4 bytes")))
            else {
                next = Some(base + 1);
                broken = Some(base);
                break;
            };
            if at.len() < LOG_OVERHEAD + len {
                break;
            }
            let raw = &at[..LOG_OVERHEAD + len];
            next = Some(Header::last_offset_hint(raw).unwrap_or(base) + 1);
            last = Some(whole..whole + raw.len());
            whole += raw.len();
        }
        let rest = data.split_off(whole);
        let broken = broken.map(|base| (base, rest));
        // The epoch of the last whole batch, if it reads as a record batch v2 (and nothing
        // unframable follows it).
        let last_epoch = last
            .filter(|_| broken.is_none())
            .and_then(|range| Header::parse(&data[range]).ok())
            .map(|h| h.leader_epoch);
        let mut template = Message::new("", Bytes::new()).at(src.partition, 0);
        template.topic = src.topic.clone();
        let covered = src.from;
        Records {
            src,
            data,
            broken,
            next,
            last_epoch,
            template,
            aborted_at: 0,
            aborting: HashSet::new(),
            covered,
            open: None,
            bad_timestamps: Vec::new(),
        }
    }

    /// The offset to fetch next: past every whole batch (also batches that held nothing to
    /// deliver: transaction markers, aborted transactions, records before the fetch offset).
    pub(crate) fn next(&self) -> Option<i64> {
        self.next
    }

    /// The partition leader epoch of the last whole batch (the one ending before `next`), if
    /// it was a record batch v2.
    pub(crate) fn last_epoch(&self) -> Option<i32> {
        self.last_epoch
    }

    /// Decodes everything at once.
    pub(crate) fn all(mut self) -> Decoded {
        let mut out = Decoded {
            next: self.next,
            ..Decoded::default()
        };
        while !self.decode_into(&mut out.items, usize::MAX) {}
        out.bad_timestamps = self.bad_timestamps;
        out
    }

    /// Whether decoding yields anything: records, unreadable batches, or offsets to pass over.
    pub(crate) fn is_empty(&self) -> bool {
        self.broken.is_none() && self.next.is_none_or(|next| next <= self.src.from)
    }

    /// Decodes records into `out` until it holds `max` items; true when everything was
    /// decoded.
    pub(crate) fn decode_into(&mut self, out: &mut Vec<Fetched>, max: usize) -> bool {
        while out.len() < max {
            if let Some(mut open) = self.open.take() {
                if self.record(&mut open, out) {
                    self.open = Some(open);
                }
                continue;
            }
            if self.data.is_empty() {
                self.finish(out);
                return true;
            }
            let len = i32::from_be_bytes(self.data[8..12].try_into().expect("4 bytes"));
            let raw = self.data.split_to(LOG_OVERHEAD + len as usize);
            self.open(raw, out);
        }
        let done = self.open.is_none()
            && self.data.is_empty()
            && self.broken.is_none()
            && !self.passes_over();
        if done {
            self.finish(out);
        }
        done
    }

    /// Whole batches after the last item that held nothing to deliver.
    fn passes_over(&self) -> bool {
        self.next.is_some_and(|next| next > self.covered)
    }

    fn finish(&mut self, out: &mut Vec<Fetched>) {
        if let Some((base, rest)) = self.broken.take() {
            out.push(unreadable(base, base, rest, "negative batch length"));
        } else if let Some(next) = self.next.filter(|_| self.passes_over()) {
            out.push(Fetched::Passed { last: next - 1 });
        }
        self.covered = self.covered.max(self.next.unwrap_or(i64::MIN));
    }

    /// Starts on one whole batch: what it holds to deliver is read by [`Records::record`].
    fn open(&mut self, raw: Bytes, out: &mut Vec<Fetched>) {
        let from = self.src.from;
        let batch = match Header::parse(&raw) {
            Ok(h) => h,
            Err(reason) => {
                // A legacy message set (magic 0 or 1) or a mangled header: its offsets are
                // known only as far as the header goes.
                let base = i64::from_be_bytes(raw[0..8].try_into().expect("8 bytes"));
                let last = Header::last_offset_hint(&raw).unwrap_or(base);
                if last >= from {
                    out.push(unreadable(base, last, raw, &reason));
                    self.covered = last + 1;
                }
                return;
            }
        };
        let last = batch.base_offset + i64::from(batch.last_offset_delta);
        if last < from {
            return;
        }
        if batch.transactional {
            while let Some(a) = self
                .src
                .aborted
                .get(self.aborted_at)
                .filter(|a| a.first_offset <= last)
            {
                self.aborting.insert(a.producer_id);
                self.aborted_at += 1;
            }
        }
        if batch.control {
            // A transaction marker: the producer's transaction (committed or aborted) ends here.
            self.aborting.remove(&batch.producer_id);
            return;
        }
        if batch.transactional && self.aborting.contains(&batch.producer_id) {
            return;
        }
        match batch.body(&self.src, &raw) {
            Ok(body) => {
                self.open = Some(Open {
                    header: batch,
                    raw,
                    body,
                    read: 0,
                })
            }
            Err(reason) => {
                out.push(unreadable(batch.base_offset.max(from), last, raw, &reason));
                self.covered = last + 1;
            }
        }
    }

    /// Reads the open batch's next record; false when the batch is done. A record that cannot
    /// be read makes the rest of the batch unreadable (the records before it are delivered).
    fn record(&mut self, open: &mut Open, out: &mut Vec<Fetched>) -> bool {
        let base = open.header.base_offset;
        let last = base + i64::from(open.header.last_offset_delta);
        let failed = match open.next_record(&self.src, &self.template, &mut self.bad_timestamps) {
            Ok(Some(Some(msg))) => {
                self.covered = msg.offset + 1;
                out.push(Fetched::Record(msg));
                return true;
            }
            // Before the fetch offset.
            Ok(Some(None)) => return true,
            Ok(None) => return false,
            Err(reason) => reason,
        };
        let first = self.covered.max(base).max(self.src.from);
        out.push(unreadable(first, last, open.raw.clone(), &failed));
        self.covered = last + 1;
        false
    }
}

/// A record batch being read.
#[derive(Debug)]
struct Open {
    header: Header,
    /// The batch as fetched (the dead-letter copy of what cannot be read).
    raw: Bytes,
    /// Its records not read yet, decompressed.
    body: Bytes,
    /// Records read so far.
    read: usize,
}

impl Open {
    /// The next record as a message (`None` inside: before the fetch offset), or `None` after
    /// the last.
    fn next_record(
        &mut self,
        src: &Source,
        template: &Message,
        bad_timestamps: &mut Vec<(i64, i64)>,
    ) -> Result<Option<Option<Message>>, String> {
        let h = &self.header;
        if self.read == h.count {
            if self.body.has_remaining() {
                return Err(format!(
                    "{} bytes left after the batch's {} records",
                    self.body.remaining(),
                    h.count
                ));
            }
            return Ok(None);
        }
        let i = self.read;
        self.read += 1;
        let rec = read_record(&mut self.body)
            .map_err(|e| format!("record {i} of {} in the batch: {e}", h.count))?;
        let offset = h.base_offset + i64::from(rec.offset_delta);
        if offset < src.from {
            return Ok(Some(None));
        }
        let timestamp = if h.log_append_time {
            h.max_timestamp
        } else {
            h.base_timestamp.wrapping_add(rec.timestamp_delta)
        };
        let mut msg = template.clone();
        msg.offset = offset;
        msg.key = rec.key;
        msg.payload = rec.value;
        msg.headers = rec.headers;
        msg.timestamp = if (-1..=MAX_TIMESTAMP_MS).contains(&timestamp) {
            (timestamp >= 0).then_some(timestamp)
        } else {
            bad_timestamps.push((offset, timestamp));
            None
        };
        Ok(Some(Some(msg)))
    }
}

fn unreadable(first: i64, last: i64, raw: Bytes, reason: &str) -> Fetched {
    Fetched::Unreadable {
        first,
        last,
        raw,
        reason: reason.to_owned(),
    }
}

#[derive(Debug)]
struct Header {
    base_offset: i64,
    leader_epoch: i32,
    last_offset_delta: i32,
    codec: u8,
    log_append_time: bool,
    transactional: bool,
    control: bool,
    base_timestamp: i64,
    max_timestamp: i64,
    producer_id: i64,
    count: usize,
}

impl Header {
    fn parse(raw: &[u8]) -> Result<Self, String> {
        let magic = *raw.get(16).ok_or("batch shorter than its header")? as i8;
        if magic != 2 {
            return Err(format!(
                "legacy message format v{magic} (only record batches v2 are read)"
            ));
        }
        if raw.len() < HEADER_LEN {
            return Err("batch shorter than its header".into());
        }
        let mut b = raw;
        let base_offset = b.get_i64();
        let _len = b.get_i32();
        let leader_epoch = b.get_i32();
        let _magic = b.get_i8();
        let crc = b.get_u32();
        let actual = crc32c::crc32c(b);
        if crc != actual {
            return Err(format!(
                "checksum mismatch (batch says {crc:#010x}, data has {actual:#010x}): corrupt batch"
            ));
        }
        let attributes = b.get_i16();
        let last_offset_delta = b.get_i32();
        let base_timestamp = b.get_i64();
        let max_timestamp = b.get_i64();
        let producer_id = b.get_i64();
        let _producer_epoch = b.get_i16();
        let _base_sequence = b.get_i32();
        let count = b.get_i32();
        let count = usize::try_from(count).map_err(|_| format!("negative record count {count}"))?;
        if last_offset_delta < 0 {
            return Err(format!("negative last offset delta {last_offset_delta}"));
        }
        Ok(Header {
            base_offset,
            leader_epoch,
            last_offset_delta,
            codec: (attributes & 0x7) as u8,
            log_append_time: attributes & 0x8 != 0,
            transactional: attributes & 0x10 != 0,
            control: attributes & 0x20 != 0,
            base_timestamp,
            max_timestamp,
            producer_id,
            count,
        })
    }

    /// The last offset of a batch whose header did not parse, when its fields can be read.
    fn last_offset_hint(raw: &[u8]) -> Option<i64> {
        if raw.get(16).copied()? != 2 || raw.len() < HEADER_LEN {
            // Legacy message sets carry the last (wrapper) offset in front.
            return Some(i64::from_be_bytes(raw[0..8].try_into().ok()?));
        }
        let base = i64::from_be_bytes(raw[0..8].try_into().ok()?);
        let delta = i32::from_be_bytes(raw[23..27].try_into().ok()?);
        (delta >= 0).then(|| base + i64::from(delta))
    }

    /// The batch's records, decompressed.
    fn body(&self, src: &Source, raw: &Bytes) -> Result<Bytes, String> {
        let body = raw.slice(HEADER_LEN..);
        Ok(match self.codec {
            0 => body,
            1 => read_all(flate2::read::GzDecoder::new(&body[..]), src, "gzip")?,
            2 => snappy(&body, src.max_decompressed)?,
            3 => read_all(lz4_flex::frame::FrameDecoder::new(&body[..]), src, "lz4")?,
            4 => read_all(
                ruzstd::decoding::StreamingDecoder::new(&body[..])
                    .map_err(|e| format!("zstd: {e}"))?,
                src,
                "zstd",
            )?,
            other => return Err(format!("unknown compression codec {other}")),
        })
    }
}

fn read_all(mut reader: impl Read, src: &Source, codec: &str) -> Result<Bytes, String> {
    let mut buf = Vec::new();
    let limit = src.max_decompressed as u64;
    let n = (&mut reader)
        .take(limit + 1)
        .read_to_end(&mut buf)
        .map_err(|e| format!("{codec}: {e}"))?;
    if n as u64 > limit {
        return Err(format!(
            "{codec}: decompresses to more than {limit} bytes (limit: 64 x fetch_max_bytes)"
        ));
    }
    Ok(Bytes::from(buf))
}

/// Snappy as Kafka clients write it: raw blocks, or the Java client's framing (a magic header,
/// then length-prefixed raw blocks).
fn snappy(data: &[u8], limit: usize) -> Result<Bytes, String> {
    const JAVA_MAGIC: &[u8] = b"\x82SNAPPY\x00";
    fn block(data: &[u8], out: &mut Vec<u8>, limit: usize) -> Result<(), String> {
        let len = snap::raw::decompress_len(data).map_err(|e| format!("snappy: {e}"))?;
        if out.len() + len > limit {
            return Err(format!(
                "snappy: decompresses to more than {limit} bytes (limit: 64 x fetch_max_bytes)"
            ));
        }
        let start = out.len();
        out.resize(start + len, 0);
        snap::raw::Decoder::new()
            .decompress(data, &mut out[start..])
            .map_err(|e| format!("snappy: {e}"))?;
        Ok(())
    }
    let mut out = Vec::new();
    match data.strip_prefix(JAVA_MAGIC) {
        None => block(data, &mut out, limit)?,
        Some(mut rest) => {
            // Version and minimum compatible version, then blocks.
            if rest.len() < 8 {
                return Err("snappy: truncated Java framing header".into());
            }
            rest.advance(8);
            while !rest.is_empty() {
                if rest.len() < 4 {
                    return Err("snappy: truncated block length".into());
                }
                let len = rest.get_u32() as usize;
                if len > rest.len() {
                    return Err(format!(
                        "snappy: block of {len} bytes, only {} left",
                        rest.len()
                    ));
                }
                block(&rest[..len], &mut out, limit)?;
                rest.advance(len);
            }
        }
    }
    Ok(Bytes::from(out))
}

struct RawRecord {
    timestamp_delta: i64,
    offset_delta: i32,
    key: Option<Bytes>,
    value: Option<Bytes>,
    headers: Headers,
}

/// One record; `key`, `value` and header values share `buf`'s memory (read through a plain
/// slice, so only the fields kept count a reference to it).
fn read_record(buf: &mut Bytes) -> Result<RawRecord, String> {
    let len = varint(buf)?;
    let len = usize::try_from(len).map_err(|_| format!("negative record length {len}"))?;
    if len > buf.len() {
        return Err(format!("record of {len} bytes, only {} left", buf.len()));
    }
    let mut rec = &buf[..len];
    if !rec.has_remaining() {
        return Err("empty record".into());
    }
    let _attributes = rec.get_i8();
    let timestamp_delta = varint(&mut rec)?;
    let offset_delta = i32::try_from(varint(&mut rec)?).map_err(|_| "offset delta out of range")?;
    let key = field(&mut rec, len, "key")?;
    let value = field(&mut rec, len, "value")?;
    let count = varint(&mut rec)?;
    let count = usize::try_from(count).map_err(|_| format!("negative header count {count}"))?;
    let mut fields = Vec::new();
    for _ in 0..count.min(rec.len()) {
        let name = field(&mut rec, len, "header name")?.ok_or("null header name")?;
        let value = field(&mut rec, len, "header value")?;
        fields.push((name, value));
    }
    if rec.has_remaining() {
        return Err(format!("{} bytes left inside a record", rec.remaining()));
    }
    let mut headers = Headers::new();
    for (name, value) in fields {
        let name = match std::str::from_utf8(&buf[name.clone()]) {
            Ok(s) => s.to_owned(),
            Err(_) => String::from_utf8_lossy(&buf[name]).into_owned(),
        };
        headers.insert(name, value.map(|v| buf.slice(v)).unwrap_or_default());
    }
    let record = RawRecord {
        timestamp_delta,
        offset_delta,
        key: key.map(|k| buf.slice(k)),
        value: value.map(|v| buf.slice(v)),
        headers,
    };
    buf.advance(len);
    Ok(record)
}

/// A length-prefixed field of the record `rec` is what is left of (`len` bytes in all): where
/// it lies in the record, `None` for a null field.
fn field(
    rec: &mut &[u8],
    len: usize,
    what: &str,
) -> Result<Option<std::ops::Range<usize>>, String> {
    let n = varint(rec)?;
    if n == -1 {
        return Ok(None);
    }
    let n = usize::try_from(n).map_err(|_| format!("{what} has negative length {n}"))?;
    if n > rec.len() {
        return Err(format!("{what} of {n} bytes, only {} left", rec.len()));
    }
    let start = len - rec.len();
    rec.advance(n);
    Ok(Some(start..start + n))
}

/// A zigzag-encoded variable-length integer (up to 64 bits).
fn varint(buf: &mut impl Buf) -> Result<i64, String> {
    let mut value: u64 = 0;
    for shift in (0..64).step_by(7) {
        if !buf.has_remaining() {
            return Err("truncated varint".into());
        }
        let byte = buf.get_u8();
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok((value >> 1) as i64 ^ -((value & 1) as i64));
        }
    }
    Err("varint longer than 10 bytes".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{BufMut, BytesMut};

    fn zigzag(buf: &mut BytesMut, v: i64) {
        let mut z = ((v << 1) ^ (v >> 63)) as u64;
        while z >= 0x80 {
            buf.put_u8((z as u8) | 0x80);
            z >>= 7;
        }
        buf.put_u8(z as u8);
    }

    fn record(delta: i32, value: &[u8]) -> BytesMut {
        let mut body = BytesMut::new();
        body.put_i8(0);
        zigzag(&mut body, i64::from(delta));
        zigzag(&mut body, i64::from(delta));
        zigzag(&mut body, -1);
        zigzag(&mut body, value.len() as i64);
        body.put_slice(value);
        zigzag(&mut body, 1);
        zigzag(&mut body, 1);
        body.put_slice(b"h");
        zigzag(&mut body, 1);
        body.put_slice(b"v");
        let mut rec = BytesMut::new();
        zigzag(&mut rec, body.len() as i64);
        rec.put_slice(&body);
        rec
    }

    struct Spec {
        base: i64,
        codec: i16,
        attrs: i16,
        producer: i64,
        records: Vec<&'static [u8]>,
    }

    fn batch(spec: &Spec, compress: impl Fn(&[u8]) -> Vec<u8>) -> BytesMut {
        let mut plain = BytesMut::new();
        for (i, v) in spec.records.iter().enumerate() {
            plain.put_slice(&record(i as i32, v));
        }
        let body = compress(&plain);
        let mut after_crc = BytesMut::new();
        after_crc.put_i16(spec.codec | spec.attrs);
        after_crc.put_i32(spec.records.len() as i32 - 1);
        after_crc.put_i64(1_700_000_000_000);
        after_crc.put_i64(1_700_000_000_000);
        after_crc.put_i64(spec.producer);
        after_crc.put_i16(0);
        after_crc.put_i32(0);
        after_crc.put_i32(spec.records.len() as i32);
        after_crc.put_slice(&body);
        let mut out = BytesMut::new();
        out.put_i64(spec.base);
        out.put_i32((4 + 1 + 4 + after_crc.len()) as i32);
        out.put_i32(0);
        out.put_i8(2);
        out.put_u32(crc32c::crc32c(&after_crc));
        out.put_slice(&after_crc);
        out
    }

    fn plain(spec: Spec) -> BytesMut {
        batch(&spec, |b| b.to_vec())
    }

    fn source(from: i64, aborted: &[Aborted]) -> Source {
        Source {
            topic: Arc::from("t"),
            partition: 0,
            from,
            aborted: aborted.to_vec(),
            max_decompressed: 1 << 20,
        }
    }

    fn run(data: Bytes, from: i64, aborted: &[Aborted]) -> Decoded {
        decode(source(from, aborted), data)
    }

    fn offsets(d: &Decoded) -> Vec<i64> {
        d.items
            .iter()
            .filter_map(|i| match i {
                Fetched::Record(m) => Some(m.offset),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn plain_and_snappy_batches_decode_with_headers() {
        let mut data = plain(Spec {
            base: 10,
            codec: 0,
            attrs: 0,
            producer: -1,
            records: vec![b"a", b"b"],
        });
        let snappy_raw = batch(
            &Spec {
                base: 12,
                codec: 2,
                attrs: 0,
                producer: -1,
                records: vec![b"c"],
            },
            |b| snap::raw::Encoder::new().compress_vec(b).unwrap(),
        );
        data.put_slice(&snappy_raw);
        let d = run(data.freeze(), 11, &[]);
        assert_eq!(offsets(&d), vec![11, 12]);
        assert_eq!(d.next, Some(13));
        let Fetched::Record(m) = &d.items[1] else {
            panic!("record expected")
        };
        assert_eq!(m.payload.as_deref(), Some(&b"c"[..]));
        assert_eq!(m.headers.get_str("h"), Some("v"));
        assert_eq!(m.timestamp, Some(1_700_000_000_000));
    }

    #[test]
    fn corrupt_batch_is_confined_and_truncated_tail_left_for_later() {
        let mut bad = plain(Spec {
            base: 0,
            codec: 0,
            attrs: 0,
            producer: -1,
            records: vec![b"x", b"y"],
        });
        let n = bad.len();
        bad[n - 1] ^= 0xff;
        let mut data = bad;
        data.put_slice(&plain(Spec {
            base: 2,
            codec: 0,
            attrs: 0,
            producer: -1,
            records: vec![b"z"],
        }));
        let tail = plain(Spec {
            base: 3,
            codec: 0,
            attrs: 0,
            producer: -1,
            records: vec![b"w"],
        });
        data.put_slice(&tail[..tail.len() - 3]);
        let d = run(data.freeze(), 0, &[]);
        assert!(matches!(
            &d.items[0],
            Fetched::Unreadable { first: 0, last: 1, reason, .. } if reason.contains("checksum")
        ));
        assert_eq!(offsets(&d), vec![2]);
        assert_eq!(d.next, Some(3));
    }

    #[test]
    fn the_leader_epoch_of_the_last_whole_batch_is_kept() {
        let spec = |base| Spec {
            base,
            codec: 0,
            attrs: 0,
            producer: -1,
            records: vec![b"a", b"b"],
        };
        let mut data = plain(spec(0));
        let mut second = plain(spec(2));
        second[12..16].copy_from_slice(&7i32.to_be_bytes());
        data.extend_from_slice(&second);
        // A batch cut short at the end of the fetch does not count.
        let mut third = plain(spec(4));
        third[12..16].copy_from_slice(&9i32.to_be_bytes());
        data.extend_from_slice(&third[..20]);
        let records = Records::new(source(0, &[]), data.freeze());
        assert_eq!(records.next(), Some(4));
        assert_eq!(records.last_epoch(), Some(7));
    }

    #[test]
    fn records_decode_in_chunks_as_asked() {
        static VALUE: [u8; 50] = [b'v'; 50];
        let spec = |base, attrs, producer| Spec {
            base,
            codec: 0,
            attrs,
            producer,
            records: vec![&VALUE[..]; 40],
        };
        // Batches of 40 records: plain, an aborted transaction's, plain, then a commit marker
        // and the start of a batch cut short at the end of the fetch.
        let mut data = plain(spec(0, 0, -1));
        data.extend_from_slice(&plain(spec(40, 0x10, 7)));
        data.extend_from_slice(&plain(spec(80, 0, -1)));
        data.extend_from_slice(&plain(Spec {
            base: 120,
            codec: 0,
            attrs: 0x30,
            producer: 7,
            records: vec![b"m"],
        }));
        data.extend_from_slice(&plain(spec(121, 0, -1))[..30]);
        let aborted = [Aborted {
            producer_id: 7,
            first_offset: 40,
        }];
        let data = data.freeze();
        let whole = run(data.clone(), 10, &aborted);
        let mut records = Records::new(source(10, &aborted), data);
        assert_eq!(records.next(), Some(121));
        assert!(!records.is_empty());
        let mut chunks = Vec::new();
        loop {
            let mut chunk = Vec::new();
            let done = records.decode_into(&mut chunk, 50);
            chunks.push(chunk);
            if done {
                break;
            }
        }
        // 30 records of the first batch (from offset 10 on), none of the aborted one, 20 of the
        // third; then its other 20 and the item passing over the marker.
        let lens: Vec<_> = chunks.iter().map(Vec::len).collect();
        assert_eq!(lens, vec![50, 21]);
        let chunked: Vec<_> = chunks.iter().flatten().map(Fetched::last_offset).collect();
        let at_once: Vec<_> = whole.items.iter().map(Fetched::last_offset).collect();
        assert_eq!(chunked, at_once);
        assert!(matches!(chunks[1][20], Fetched::Passed { last: 120 }));
        // A batch cut inside its last record: the records before it, one at a time, then the
        // rest of the batch as unreadable.
        let cut = batch(&spec(200, 0, -1), |b| b[..b.len() - 3].to_vec()).freeze();
        let mut records = Records::new(source(200, &[]), cut);
        let mut items = Vec::new();
        loop {
            let max = items.len() + 1;
            if records.decode_into(&mut items, max) {
                break;
            }
        }
        assert_eq!(items.len(), 40);
        assert_eq!(items[38].last_offset(), 238);
        assert!(matches!(
            &items[39],
            Fetched::Unreadable { first: 239, last: 239, reason, .. } if reason.contains("record 39 of 40")
        ));
        // A fetch that ends before the fetch offset yields nothing.
        let early = Records::new(source(500, &[]), plain(spec(0, 0, -1)).freeze());
        assert!(early.is_empty());
    }

    #[test]
    fn unknown_codec_is_unreadable() {
        let data = plain(Spec {
            base: 5,
            codec: 6,
            attrs: 0,
            producer: -1,
            records: vec![b"x"],
        });
        let d = run(data.freeze(), 0, &[]);
        assert!(matches!(
            &d.items[0],
            Fetched::Unreadable { first: 5, last: 5, reason, .. } if reason.contains("codec 6")
        ));
        assert_eq!(d.next, Some(6));
    }

    #[test]
    fn aborted_transactions_and_markers_are_skipped() {
        const TXN: i16 = 0x10;
        const CONTROL: i16 = 0x20;
        let mut data = BytesMut::new();
        for spec in [
            // Producer 7 commits offsets 0-1 (marker at 2), producer 8 aborts 3 (marker at 4).
            Spec {
                base: 0,
                codec: 0,
                attrs: TXN,
                producer: 7,
                records: vec![b"c1", b"c2"],
            },
            Spec {
                base: 2,
                codec: 0,
                attrs: TXN | CONTROL,
                producer: 7,
                records: vec![b""],
            },
            Spec {
                base: 3,
                codec: 0,
                attrs: TXN,
                producer: 8,
                records: vec![b"a1"],
            },
            Spec {
                base: 4,
                codec: 0,
                attrs: TXN | CONTROL,
                producer: 8,
                records: vec![b""],
            },
            Spec {
                base: 5,
                codec: 0,
                attrs: 0,
                producer: -1,
                records: vec![b"p"],
            },
        ] {
            data.put_slice(&plain(spec));
        }
        let aborted = [Aborted {
            producer_id: 8,
            first_offset: 3,
        }];
        let d = run(data.freeze(), 0, &aborted);
        assert_eq!(offsets(&d), vec![0, 1, 5]);
        assert_eq!(d.next, Some(6));
    }

    #[test]
    fn a_batch_of_only_markers_advances_the_position() {
        let data = plain(Spec {
            base: 9,
            codec: 0,
            attrs: 0x30,
            producer: 1,
            records: vec![b""],
        });
        let d = run(data.freeze(), 9, &[]);
        assert!(matches!(d.items[..], [Fetched::Passed { last: 9 }]));
        assert_eq!(d.next, Some(10));
    }

    #[test]
    fn java_framed_snappy_and_other_codecs_decode() {
        let java = |b: &[u8]| {
            let block = snap::raw::Encoder::new().compress_vec(b).unwrap();
            let mut out = b"\x82SNAPPY\x00\x00\x00\x00\x01\x00\x00\x00\x01".to_vec();
            out.extend_from_slice(&(block.len() as u32).to_be_bytes());
            out.extend_from_slice(&block);
            out
        };
        let gzip = |b: &[u8]| {
            use std::io::Write;
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(b).unwrap();
            e.finish().unwrap()
        };
        let lz4 = |b: &[u8]| {
            use std::io::Write;
            let mut e = lz4_flex::frame::FrameEncoder::new(Vec::new());
            e.write_all(b).unwrap();
            e.finish().unwrap()
        };
        let zstd = |b: &[u8]| {
            ruzstd::encoding::compress_to_vec(b, ruzstd::encoding::CompressionLevel::Fastest)
        };
        type Compress<'a> = &'a dyn Fn(&[u8]) -> Vec<u8>;
        let codecs: [(i16, Compress<'_>); 4] = [(2, &java), (1, &gzip), (3, &lz4), (4, &zstd)];
        for (codec, compress) in codecs {
            let spec = Spec {
                base: 0,
                codec,
                attrs: 0,
                producer: -1,
                records: vec![b"one", b"two"],
            };
            let d = run(batch(&spec, compress).freeze(), 0, &[]);
            assert_eq!(offsets(&d), vec![0, 1], "codec {codec}");
        }
    }

    #[test]
    fn implausible_timestamps_are_dropped_and_reported() {
        let mut data = plain(Spec {
            base: 0,
            codec: 0,
            attrs: 0,
            producer: -1,
            records: vec![b"x"],
        });
        // Base timestamp in nanoseconds (bytes 27..35), checksum recomputed.
        data[27..35].copy_from_slice(&1_700_000_000_000_000_000i64.to_be_bytes());
        let crc = crc32c::crc32c(&data[21..]);
        data[17..21].copy_from_slice(&crc.to_be_bytes());
        let d = run(data.freeze(), 0, &[]);
        assert_eq!(offsets(&d), vec![0]);
        assert_eq!(d.bad_timestamps, vec![(0, 1_700_000_000_000_000_000)]);
        let Fetched::Record(m) = &d.items[0] else {
            panic!("record expected")
        };
        assert_eq!(m.timestamp, None);
    }
}
