//! Record batches (magic v2), written from records encoded ahead.
//!
//! A message is encoded when it is queued ([`Ahead::push`]), as the Java producer appends a
//! record to its partition's open batch when it is sent: its key, value and headers go into
//! its group's buffer as a batch holds them, while the message is still in the cache, and
//! the message itself is dropped. What depends on the record's place in its batch (its offset
//! and timestamp deltas, and the length in front) is written with the batch
//! ([`Encoder::batch`]), which copies each record's encoded fields after them: no
//! intermediate record type, no buffer per record, every length prefix written once.
//! Compressed batches encode the records into a scratch buffer that is reused between
//! batches, then compress it into the batch.
//!
//! [`BatchHeader`] holds the producer id, epoch and base sequence of an idempotent or
//! transactional producer (`-1` for a plain one).

use bytes::{BufMut, Bytes, BytesMut};
use faststream_core::OutgoingMessage;

use crate::config::Compression;

/// Bytes of a v2 record batch before its records.
pub(crate) const BATCH_HEADER: usize = 61;
/// Where the CRC-32C is stored, and where the bytes it covers start.
const CRC_AT: usize = 17;
const CRC_FROM: usize = 21;
/// Where the attributes and the producer id (then its epoch and the base sequence) are.
const ATTRIBUTES_AT: usize = 21;
const PRODUCER_AT: usize = 43;

/// The producer-identity fields of a batch header (KIP-98).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BatchHeader {
    pub(crate) producer_id: i64,
    pub(crate) producer_epoch: i16,
    pub(crate) base_sequence: i32,
    /// Written inside a transaction (attribute bit 4): invisible to `read_committed` readers
    /// until the transaction commits.
    pub(crate) transactional: bool,
}

impl BatchHeader {
    /// A producer without idempotence or transactions.
    pub(crate) const PLAIN: Self = Self {
        producer_id: -1,
        producer_epoch: -1,
        base_sequence: -1,
        transactional: false,
    };
}

/// Records encoded ahead of their batch: each record's key, value and headers as a batch
/// holds them, back to back in `fields`, and where each one is.
#[derive(Debug, Default)]
pub(crate) struct Ahead {
    pub(crate) fields: BytesMut,
    pub(crate) records: Vec<Rec>,
}

/// One record encoded ahead: where its fields are (in part `part` of the buffers a batch is
/// written from) and its timestamp.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Rec {
    pub(crate) part: u32,
    start: u32,
    len: u32,
    timestamp: i64,
}

impl Rec {
    /// The bytes of its encoded fields.
    pub(crate) fn len(&self) -> usize {
        self.len as usize
    }

    /// The same record, its fields in part `part`.
    pub(crate) fn in_part(self, part: u32) -> Self {
        Self { part, ..self }
    }
}

/// Most bytes of fields a group's buffer is made with (it grows past that as records come).
const ROOM_AHEAD: usize = 1024 * 1024;

/// Most bytes a record adds to its fields in a batch: its length, attributes, timestamp and
/// offset deltas.
const RECORD_FRAME: usize = 5 + 1 + 10 + 5;

impl Ahead {
    /// Room for about `count` records like `msg` (at most [`ROOM_AHEAD`] bytes of fields:
    /// the first message may be much larger than the others).
    pub(crate) fn with_room_for(msg: &OutgoingMessage, count: usize) -> Self {
        let one = fields_len(msg);
        let room = one.saturating_mul(count).min(ROOM_AHEAD).max(one);
        Self {
            fields: BytesMut::with_capacity(room),
            records: Vec::with_capacity(count),
        }
    }

    /// Encodes `msg`'s key, value and headers after the records before it; `timestamp` is its
    /// own or the time it was sent. `Err` when the buffer would pass 4 GiB.
    pub(crate) fn push(&mut self, msg: &OutgoingMessage, timestamp: i64) -> Result<&Rec, String> {
        let start = self.fields.len();
        self.fields.reserve(fields_len(msg));
        let key = msg.key.as_deref();
        put_bytes(&mut self.fields, key);
        put_bytes(&mut self.fields, msg.payload.as_deref());
        put_varint(&mut self.fields, msg.headers.len() as i64);
        for (k, v) in msg.headers.iter() {
            put_bytes(&mut self.fields, Some(k.as_bytes()));
            put_bytes(&mut self.fields, Some(v));
        }
        let end = self.fields.len();
        debug_assert_eq!(end - start, fields_len(msg), "fields_len is exact");
        let (Ok(start32), Ok(len)) = (u32::try_from(start), u32::try_from(end - start)) else {
            self.fields.truncate(start);
            return Err(format!(
                "a message of {} bytes after {start} bytes of others: more than one batch may hold",
                end - start
            ));
        };
        self.records.push(Rec {
            part: 0,
            start: start32,
            len,
            timestamp,
        });
        Ok(self.records.last().expect("just pushed"))
    }
}

/// Encodes record batches, keeping its scratch buffer between batches.
#[derive(Debug, Default)]
pub(crate) struct Encoder {
    scratch: Vec<u8>,
}

impl Encoder {
    /// Appends one record batch holding `records` (in order; their fields in `parts`) to
    /// `out`.
    pub(crate) fn batch(
        &mut self,
        out: &mut BytesMut,
        parts: &[Bytes],
        records: &[Rec],
        compression: Compression,
        header: BatchHeader,
    ) -> Result<(), String> {
        let base_ts = records.first().map_or(0, |r| r.timestamp);
        let max_ts = records.iter().map(|r| r.timestamp).max().unwrap_or(0);
        let start = out.len();
        out.reserve(bound(records));
        out.put_i64(0); // base offset: the broker assigns offsets
        out.put_i32(0); // batch length, set below
        out.put_i32(-1); // partition leader epoch
        out.put_i8(2); // magic
        out.put_u32(0); // CRC-32C, set below
        out.put_i16(compression_bits(compression) | if header.transactional { 0x10 } else { 0 });
        out.put_i32(records.len().saturating_sub(1) as i32); // last offset delta
        out.put_i64(base_ts);
        out.put_i64(max_ts);
        out.put_i64(header.producer_id);
        out.put_i16(header.producer_epoch);
        out.put_i32(header.base_sequence);
        out.put_i32(records.len() as i32);
        match compression {
            Compression::None => write_records(out, parts, records, base_ts),
            #[allow(unreachable_patterns)] // no codec when both compression features are off
            codec => {
                self.scratch.clear();
                write_records(&mut self.scratch, parts, records, base_ts);
                compress(codec, &self.scratch, out)?;
            }
        }
        let length = out.len() - start - 12;
        let length = i32::try_from(length)
            .map_err(|_| format!("a record batch of {length} bytes is too large"))?;
        out[start + 8..start + 12].copy_from_slice(&length.to_be_bytes());
        let crc = crc32c::crc32c(&out[start + CRC_FROM..]);
        out[start + CRC_AT..start + CRC_FROM].copy_from_slice(&crc.to_be_bytes());
        Ok(())
    }
}

/// Appends one batch of `msgs` to `out` (messages without a timestamp get `now_ms`).
#[cfg(test)]
pub(crate) fn batch_of(
    out: &mut BytesMut,
    msgs: &[OutgoingMessage],
    now_ms: i64,
    compression: Compression,
    header: BatchHeader,
) -> Result<(), String> {
    let mut ahead = Ahead::default();
    for m in msgs {
        ahead.push(m, m.timestamp.unwrap_or(now_ms))?;
    }
    let parts = [ahead.fields.freeze()];
    Encoder::default().batch(out, &parts, &ahead.records, compression, header)
}

/// A copy of the encoded batch `batch` under another producer identity (`header`), its
/// checksum computed again.
pub(crate) fn with_header(batch: &[u8], header: BatchHeader) -> Bytes {
    let mut out = BytesMut::from(batch);
    let attributes = i16::from_be_bytes([out[ATTRIBUTES_AT], out[ATTRIBUTES_AT + 1]]);
    let attributes = (attributes & !0x10) | if header.transactional { 0x10 } else { 0 };
    out[ATTRIBUTES_AT..ATTRIBUTES_AT + 2].copy_from_slice(&attributes.to_be_bytes());
    out[PRODUCER_AT..PRODUCER_AT + 8].copy_from_slice(&header.producer_id.to_be_bytes());
    out[PRODUCER_AT + 8..PRODUCER_AT + 10].copy_from_slice(&header.producer_epoch.to_be_bytes());
    out[PRODUCER_AT + 10..PRODUCER_AT + 14].copy_from_slice(&header.base_sequence.to_be_bytes());
    let crc = crc32c::crc32c(&out[CRC_FROM..]);
    out[CRC_AT..CRC_FROM].copy_from_slice(&crc.to_be_bytes());
    out.freeze()
}

fn compression_bits(compression: Compression) -> i16 {
    match compression {
        Compression::None => 0,
        #[cfg(feature = "compression-gzip")]
        Compression::Gzip => 1,
        #[cfg(feature = "compression-snappy")]
        Compression::Snappy => 2,
    }
}

#[allow(unused_variables)] // no codec when both compression features are off
fn compress(compression: Compression, data: &[u8], out: &mut BytesMut) -> Result<(), String> {
    match compression {
        Compression::None => out.put_slice(data),
        #[cfg(feature = "compression-gzip")]
        Compression::Gzip => {
            use std::io::Write;
            let mut gz = flate2::write::GzEncoder::new(out.writer(), flate2::Compression::fast());
            gz.write_all(data)
                .and_then(|()| gz.finish().map(drop))
                .map_err(|e| format!("gzip: {e}"))?;
        }
        // Raw snappy, as librdkafka and Kafka's own clients read it (the Java framing is only
        // needed by very old readers).
        #[cfg(feature = "compression-snappy")]
        Compression::Snappy => {
            let at = out.len();
            out.resize(at + snap::raw::max_compress_len(data.len()), 0);
            let n = snap::raw::Encoder::new()
                .compress(data, &mut out[at..])
                .map_err(|e| format!("snappy: {e}"))?;
            out.truncate(at + n);
        }
    }
    Ok(())
}

/// An upper bound of the encoded size of a batch of `records` (uncompressed).
pub(crate) fn bound(records: &[Rec]) -> usize {
    BATCH_HEADER
        + records
            .iter()
            .map(|r| r.len() + RECORD_FRAME)
            .sum::<usize>()
}

/// The bytes `msg`'s key, value and headers take in a record, exactly.
fn fields_len(m: &OutgoingMessage) -> usize {
    fn field(b: Option<&[u8]>) -> usize {
        b.map_or(1, |b| varint_len(b.len() as i64) + b.len())
    }
    field(m.key.as_deref())
        + field(m.payload.as_deref())
        + varint_len(m.headers.len() as i64)
        + m.headers
            .iter()
            .map(|(k, v)| field(Some(k.as_bytes())) + field(Some(v)))
            .sum::<usize>()
}

fn write_records(out: &mut impl BufMut, parts: &[Bytes], records: &[Rec], base_ts: i64) {
    for (delta, r) in records.iter().enumerate() {
        let ts_delta = r.timestamp - base_ts;
        let delta = delta as i64;
        let body = 1 + varint_len(ts_delta) + varint_len(delta) + r.len();
        put_varint(out, body as i64);
        out.put_i8(0); // record attributes
        put_varint(out, ts_delta);
        put_varint(out, delta);
        let start = r.start as usize;
        out.put_slice(&parts[r.part as usize][start..start + r.len()]);
    }
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

pub(crate) fn varint_len(v: i64) -> usize {
    let bits = 64 - (zigzag(v) | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

pub(crate) fn put_varint(out: &mut impl BufMut, v: i64) {
    let mut z = zigzag(v);
    while z >= 0x80 {
        out.put_u8((z as u8) | 0x80);
        z >>= 7;
    }
    out.put_u8(z as u8);
}

fn put_bytes(out: &mut impl BufMut, b: Option<&[u8]>) {
    match b {
        None => put_varint(out, -1),
        Some(b) => {
            put_varint(out, b.len() as i64);
            out.put_slice(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::{decode, Fetched, Source};

    fn msg(i: usize) -> OutgoingMessage {
        let mut m = OutgoingMessage::new("t", format!("value-{i}"));
        if i.is_multiple_of(2) {
            m.key = Some(format!("k{i}").into());
        }
        if i.is_multiple_of(3) {
            m.headers.insert("content-type", "text/plain");
            m.headers.insert("correlation_id", format!("id-{i}"));
        }
        m.timestamp = i.is_multiple_of(4).then_some(1_700_000_000_000 + i as i64);
        m
    }

    fn round_trip(compression: Compression) {
        let msgs: Vec<_> = (0..300).map(msg).collect();
        let mut out = BytesMut::new();
        // Two batches in one buffer, the second at offset 300, as a log would hold them.
        batch_of(
            &mut out,
            &msgs,
            1_800_000_000_000,
            compression,
            BatchHeader::PLAIN,
        )
        .unwrap();
        let second = out.len();
        batch_of(&mut out, &msgs[..5], 5, compression, BatchHeader::PLAIN).unwrap();
        out[second..second + 8].copy_from_slice(&300i64.to_be_bytes());
        let topic: std::sync::Arc<str> = "t".into();
        let src = Source {
            topic,
            partition: 0,
            from: 0,
            aborted: Vec::new(),
            max_decompressed: 1 << 24,
        };
        let decoded = decode(src, out.freeze());
        assert_eq!(decoded.next, Some(305));
        let got: Vec<_> = decoded
            .items
            .into_iter()
            .map(|f| match f {
                Fetched::Record(m) => m,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(got.len(), 305);
        for (i, m) in got.iter().enumerate() {
            let want = msg(i % 300);
            let now = if i < 300 { 1_800_000_000_000 } else { 5 };
            assert_eq!(m.offset, i as i64);
            assert_eq!(m.payload, want.payload, "{i}");
            assert_eq!(m.key, want.key, "{i}");
            assert_eq!(m.headers, want.headers, "{i}");
            assert_eq!(m.timestamp, Some(want.timestamp.unwrap_or(now)), "{i}");
        }
    }

    #[test]
    fn batches_decode_to_what_was_encoded() {
        round_trip(Compression::None);
        #[cfg(feature = "compression-gzip")]
        round_trip(Compression::Gzip);
        #[cfg(feature = "compression-snappy")]
        round_trip(Compression::Snappy);
    }

    #[test]
    fn a_batch_takes_another_producer_identity() {
        let msgs: Vec<_> = (0..30).map(msg).collect();
        let first = BatchHeader {
            producer_id: 7,
            producer_epoch: 1,
            base_sequence: 40,
            transactional: false,
        };
        let encode = |header| {
            let mut out = BytesMut::new();
            batch_of(
                &mut out,
                &msgs,
                1_800_000_000_000,
                Compression::None,
                header,
            )
            .unwrap();
            out.freeze()
        };
        // Under a new identity (a retry after the producer's epoch moved on, in a transaction
        // or not): the same bytes as encoding it under that identity, checksum included.
        for next in [
            BatchHeader {
                producer_id: 7,
                producer_epoch: 2,
                base_sequence: 0,
                transactional: false,
            },
            BatchHeader {
                producer_id: 9,
                producer_epoch: 0,
                base_sequence: 3,
                transactional: true,
            },
        ] {
            assert_eq!(with_header(&encode(first), next), encode(next));
        }
    }

    #[test]
    fn records_encoded_ahead_in_several_buffers_make_one_batch() {
        // Groups queued apart (two buffers), sent as one batch and as two halves: each the
        // same as encoding those messages at once.
        let msgs: Vec<_> = (0..40).map(msg).collect();
        let stamp = |m: &OutgoingMessage| m.timestamp.unwrap_or(1_800_000_000_000);
        let (mut a, mut b) = (Ahead::default(), Ahead::default());
        for m in &msgs[..25] {
            a.push(m, stamp(m)).unwrap();
        }
        for m in &msgs[25..] {
            b.push(m, stamp(m)).unwrap();
        }
        let mut records = a.records.clone();
        records.extend(b.records.iter().map(|r| r.in_part(1)));
        let parts = [a.fields.freeze(), b.fields.freeze()];
        let mut enc = Encoder::default();
        for range in [0..40, 0..20, 20..40] {
            let mut got = BytesMut::new();
            enc.batch(
                &mut got,
                &parts,
                &records[range.clone()],
                Compression::None,
                BatchHeader::PLAIN,
            )
            .unwrap();
            let mut want = BytesMut::new();
            batch_of(
                &mut want,
                &msgs[range.clone()],
                1_800_000_000_000,
                Compression::None,
                BatchHeader::PLAIN,
            )
            .unwrap();
            assert_eq!(got, want, "{range:?}");
            assert!(got.len() <= bound(&records[range]));
        }
    }

    /// A group's buffer is made for the records expected, but not from a first message much
    /// larger than the rest: past [`ROOM_AHEAD`] it grows as records come.
    #[test]
    fn a_group_buffer_is_made_for_what_comes_within_a_bound() {
        let small = OutgoingMessage::new("t", "v");
        let room = Ahead::with_room_for(&small, 100).fields.capacity();
        assert!((100..ROOM_AHEAD).contains(&room), "{room}");
        let large = OutgoingMessage::new("t", vec![0u8; 512 * 1024]);
        let mut ahead = Ahead::with_room_for(&large, 1000);
        assert!(
            ahead.fields.capacity() <= ROOM_AHEAD,
            "{}",
            ahead.fields.capacity()
        );
        for _ in 0..3 {
            ahead.push(&large, 0).unwrap();
        }
        assert_eq!(ahead.records.len(), 3);
        assert!(ahead.records.iter().all(|r| r.len() > 512 * 1024));
    }

    /// A group made for `n` records like its first holds `n` of them without growing, and
    /// what a message's fields take is known exactly before they are written.
    #[test]
    fn a_group_made_for_n_like_records_holds_them_without_growing() {
        let keyed = OutgoingMessage::new("t", vec![7u8; 300])
            .key("user-17")
            .header("content-type", "application/json")
            .header("correlation_id", "0123456789abcdef");
        let mut empty = OutgoingMessage::new("t", "");
        empty.payload = None;
        for msg in [&keyed, &empty, &OutgoingMessage::new("t", "v")] {
            let mut ahead = Ahead::with_room_for(msg, 50);
            let room = ahead.fields.capacity();
            for _ in 0..50 {
                let rec = *ahead.push(msg, 0).unwrap();
                assert_eq!(rec.len(), fields_len(msg));
            }
            assert_eq!(ahead.fields.len(), 50 * fields_len(msg));
            assert_eq!(ahead.fields.capacity(), room, "the buffer grew");
        }
    }

    #[test]
    fn varints_match_the_zigzag_encoding() {
        for v in [0i64, -1, 1, 63, -64, 64, 300, -300, i64::MAX, i64::MIN] {
            let mut b = Vec::new();
            put_varint(&mut b, v);
            assert_eq!(b.len(), varint_len(v), "{v}");
        }
        let mut b = Vec::new();
        put_varint(&mut b, 300);
        assert_eq!(b, [0xd8, 0x04]);
        b.clear();
        put_varint(&mut b, -1);
        assert_eq!(b, [0x01]);
    }
}
