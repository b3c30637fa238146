//! Record batches (magic v2), written as records are queued.
//!
//! As the Java producer's record accumulator does, a message is appended to its partition's
//! open batch ([`Open::append`]) when it is queued, while it is still in the cache: its
//! length, attributes, timestamp and offset deltas, key, value and headers, as the batch
//! holds them, every length prefix written once and the message itself dropped after. When
//! the batch is sent its body goes out as it is ([`Sealed::records`] copies only to split a
//! batch the broker refused as too large); the 61-byte header in front of it is written last
//! ([`Encoded::head`]), for the producer identity of that attempt, its checksum running on
//! over the body. Compressed batches compress the body into a buffer of their own.
//!
//! [`BatchHeader`] holds the producer id, epoch and base sequence of an idempotent or
//! transactional producer (`-1` for a plain one).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use faststream_core::OutgoingMessage;

use crate::config::Compression;

/// Bytes of a v2 record batch before its records.
pub(crate) const BATCH_HEADER: usize = 61;
/// Where the CRC-32C is stored, and where the bytes it covers start.
const CRC_AT: usize = 17;
const CRC_FROM: usize = 21;

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

/// Most bytes a record adds to its fields in a batch: its length, attributes, timestamp and
/// offset deltas.
pub(crate) const RECORD_FRAME: usize = 5 + 1 + 10 + 5;

/// The largest record fields a batch takes (its offsets in a batch are 32-bit).
pub(crate) const MAX_FIELDS: usize = i32::MAX as usize / 2;

/// A partition's open record batch: its records as a batch holds them, back to back, and
/// where each one ends.
#[derive(Debug, Default)]
pub(crate) struct Open {
    body: BytesMut,
    ends: Vec<u32>,
    base_ts: i64,
    max_ts: i64,
}

impl Open {
    /// Records appended.
    pub(crate) fn count(&self) -> usize {
        self.ends.len()
    }

    /// Bytes of its records.
    pub(crate) fn bytes(&self) -> usize {
        self.body.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Room for `bytes` more bytes of records and `count` more records without growing.
    pub(crate) fn reserve(&mut self, bytes: usize, count: usize) {
        self.body.reserve(bytes);
        self.ends.reserve(count);
    }

    /// Bytes it holds without growing.
    pub(crate) fn capacity(&self) -> usize {
        self.body.capacity()
    }

    /// The memory it holds.
    pub(crate) fn footprint(&self) -> usize {
        self.body.capacity() + self.ends.capacity() * std::mem::size_of::<u32>()
    }

    /// Appends `msg` as the next record; `fields` is [`fields_len`] of it (at most
    /// [`MAX_FIELDS`]), `timestamp` its own or the time it was sent. A batch is closed before
    /// it passes 2 GiB (`max_batch_bytes` is at most that).
    pub(crate) fn append(&mut self, msg: &OutgoingMessage, fields: usize, timestamp: i64) {
        if self.is_empty() {
            self.base_ts = timestamp;
            self.max_ts = timestamp;
        }
        self.max_ts = self.max_ts.max(timestamp);
        let ts_delta = timestamp - self.base_ts;
        let delta = self.count() as i64;
        let start = self.body.len();
        let out = &mut self.body;
        out.reserve(frame_len(fields, ts_delta, delta));
        put_varint(
            out,
            (1 + varint_len(ts_delta) + varint_len(delta) + fields) as i64,
        );
        out.put_i8(0); // record attributes
        put_varint(out, ts_delta);
        put_varint(out, delta);
        let at = out.len();
        put_bytes(out, msg.key.as_deref());
        put_bytes(out, msg.payload.as_deref());
        put_varint(out, msg.headers.len() as i64);
        for (k, v) in msg.headers.iter() {
            put_bytes(out, Some(k.as_bytes()));
            put_bytes(out, Some(v));
        }
        debug_assert_eq!(out.len() - at, fields, "fields_len is exact");
        debug_assert_eq!(out.len() - start, frame_len(fields, ts_delta, delta));
        self.ends.push(out.len() as u32);
    }

    /// Closes the batch: its records can only be sent now.
    pub(crate) fn seal(self) -> Sealed {
        Sealed {
            body: self.body.freeze(),
            ends: self.ends,
            base_ts: self.base_ts,
            max_ts: self.max_ts,
        }
    }
}

/// A closed batch's records (see [`Open`]).
#[derive(Debug)]
pub(crate) struct Sealed {
    body: Bytes,
    ends: Vec<u32>,
    base_ts: i64,
    max_ts: i64,
}

impl Sealed {
    pub(crate) fn count(&self) -> usize {
        self.ends.len()
    }

    /// Records `range` as a batch of their own: the body as it is when that is all of them,
    /// else those records copied with their offset and timestamp deltas from the first of
    /// them (a batch split after the broker refused it as too large).
    pub(crate) fn records(&self, range: std::ops::Range<usize>) -> Records {
        if range == (0..self.count()) {
            return Records {
                body: self.body.clone(),
                count: self.count(),
                base_ts: self.base_ts,
                max_ts: self.max_ts,
            };
        }
        let from = range
            .start
            .checked_sub(1)
            .map_or(0, |i| self.ends[i] as usize);
        let to = range
            .end
            .checked_sub(1)
            .map_or(0, |i| self.ends[i] as usize);
        let mut src = &self.body[from..to];
        let mut parsed = Vec::with_capacity(range.len());
        while !src.is_empty() {
            let len = get_varint(&mut src) as usize;
            let (mut record, rest) = src.split_at(len);
            src = rest;
            record.advance(1); // attributes
            let ts = self.base_ts + get_varint(&mut record);
            let _offset_delta = get_varint(&mut record);
            parsed.push((ts, record));
        }
        let base_ts = parsed.first().map_or(0, |(ts, _)| *ts);
        let max_ts = parsed.iter().map(|(ts, _)| *ts).max().unwrap_or(0);
        let mut body = BytesMut::with_capacity(to - from);
        for (delta, (ts, fields)) in parsed.iter().enumerate() {
            let (ts_delta, delta) = (ts - base_ts, delta as i64);
            put_varint(
                &mut body,
                (1 + varint_len(ts_delta) + varint_len(delta) + fields.len()) as i64,
            );
            body.put_i8(0);
            put_varint(&mut body, ts_delta);
            put_varint(&mut body, delta);
            body.put_slice(fields);
        }
        Records {
            body: body.freeze(),
            count: range.len(),
            base_ts,
            max_ts,
        }
    }

    /// Its buffers, emptied, when nothing else holds them any more (for the next batch).
    pub(crate) fn reuse(self) -> Option<Open> {
        let mut body = self.body.try_into_mut().ok()?;
        body.clear();
        let mut ends = self.ends;
        ends.clear();
        Some(Open {
            body,
            ends,
            base_ts: 0,
            max_ts: 0,
        })
    }
}

/// Records as one batch holds them (uncompressed), and what its header says of them.
#[derive(Debug)]
pub(crate) struct Records {
    body: Bytes,
    count: usize,
    base_ts: i64,
    max_ts: i64,
}

/// A record batch as sent: its body (compressed or not) and what its header says; its header
/// is written for each attempt's producer identity ([`Encoded::head`]).
#[derive(Clone, Debug)]
pub(crate) struct Encoded {
    pub(crate) body: Bytes,
    count: i32,
    base_ts: i64,
    max_ts: i64,
    attributes: i16,
}

impl Records {
    /// The batch of these records, compressed with `compression`.
    pub(crate) fn encode(self, compression: Compression) -> Result<Encoded, String> {
        let body = match compression {
            Compression::None => self.body,
            #[allow(unreachable_patterns)] // no codec when both compression features are off
            codec => {
                let mut out = BytesMut::with_capacity(self.body.len() / 2 + 64);
                compress(codec, &self.body, &mut out)?;
                out.freeze()
            }
        };
        let length = BATCH_HEADER - 12 + body.len();
        if i32::try_from(length).is_err() {
            return Err(format!("a record batch of {length} bytes is too large"));
        }
        Ok(Encoded {
            body,
            count: self.count as i32,
            base_ts: self.base_ts,
            max_ts: self.max_ts,
            attributes: compression_bits(compression),
        })
    }
}

impl Encoded {
    /// The batch's header for producer identity `header`.
    pub(crate) fn head(&self, header: BatchHeader) -> [u8; BATCH_HEADER] {
        let mut head = [0u8; BATCH_HEADER];
        let mut out = &mut head[..];
        out.put_i64(0); // base offset: the broker assigns offsets
        out.put_i32((BATCH_HEADER - 12 + self.body.len()) as i32); // checked when encoded
        out.put_i32(-1); // partition leader epoch
        out.put_i8(2); // magic
        out.put_u32(0); // CRC-32C, set below
        out.put_i16(self.attributes | if header.transactional { 0x10 } else { 0 });
        out.put_i32(self.count.saturating_sub(1)); // last offset delta
        out.put_i64(self.base_ts);
        out.put_i64(self.max_ts);
        out.put_i64(header.producer_id);
        out.put_i16(header.producer_epoch);
        out.put_i32(header.base_sequence);
        out.put_i32(self.count);
        debug_assert!(out.is_empty());
        // (Combining a CRC of the body computed once with the header's costs more than the
        // hardware CRC of the body again: the crate's combine is software.)
        let crc = crc32c::crc32c_append(crc32c::crc32c(&head[CRC_FROM..]), &self.body);
        head[CRC_AT..CRC_FROM].copy_from_slice(&crc.to_be_bytes());
        head
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
    let mut open = Open::default();
    for m in msgs {
        open.append(m, fields_len(m), m.timestamp.unwrap_or(now_ms));
    }
    let sealed = open.seal();
    let encoded = sealed.records(0..sealed.count()).encode(compression)?;
    out.put_slice(&encoded.head(header));
    out.put_slice(&encoded.body);
    Ok(())
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

/// The bytes `msg`'s key, value and headers take in a record, exactly.
pub(crate) fn fields_len(m: &OutgoingMessage) -> usize {
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

/// The bytes a record of `fields` bytes takes in a batch with these deltas, exactly.
fn frame_len(fields: usize, ts_delta: i64, offset_delta: i64) -> usize {
    let body = 1 + varint_len(ts_delta) + varint_len(offset_delta) + fields;
    varint_len(body as i64) + body
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

/// Reads a varint this module wrote.
fn get_varint(src: &mut &[u8]) -> i64 {
    let (mut z, mut shift) = (0u64, 0);
    loop {
        let b = src.get_u8();
        z |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            break;
        }
        shift += 7;
    }
    ((z >> 1) as i64) ^ -((z & 1) as i64)
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

    /// Decodes the batches in `log` (the first at offset 0) to messages.
    fn read(log: Bytes) -> Vec<faststream_core::Message> {
        let src = Source {
            topic: "t".into(),
            partition: 0,
            from: 0,
            aborted: Vec::new(),
            max_decompressed: 1 << 24,
        };
        decode(src, log)
            .items
            .into_iter()
            .map(|f| match f {
                Fetched::Record(m) => m,
                other => panic!("{other:?}"),
            })
            .collect()
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
        let got = read(out.freeze());
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

    /// The header written for another producer identity (a retry after the producer's epoch
    /// moved on, in a transaction or not) is the one of encoding the batch under it, its
    /// checksum included: the broker verifies it.
    #[test]
    fn a_batch_takes_another_producer_identity() {
        let msgs: Vec<_> = (0..30).map(msg).collect();
        let first = BatchHeader {
            producer_id: 7,
            producer_epoch: 1,
            base_sequence: 40,
            transactional: false,
        };
        let mut open = Open::default();
        for m in &msgs {
            open.append(m, fields_len(m), m.timestamp.unwrap_or(1_800_000_000_000));
        }
        let encoded = open
            .seal()
            .records(0..30)
            .encode(Compression::None)
            .unwrap();
        for next in [
            first,
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
            let mut want = BytesMut::new();
            batch_of(&mut want, &msgs, 1_800_000_000_000, Compression::None, next).unwrap();
            let head = encoded.head(next);
            assert_eq!(&want[..BATCH_HEADER], head, "{next:?}");
            let crc = u32::from_be_bytes(head[CRC_AT..CRC_FROM].try_into().unwrap());
            assert_eq!(crc, crc32c::crc32c(&want[CRC_FROM..]), "{next:?}");
            assert_eq!(want[BATCH_HEADER..], encoded.body[..]);
        }
    }

    /// A batch split in parts (refused as too large) sends each part as if its records had
    /// been appended to a batch of their own: offsets from 0, timestamps from the part's
    /// first, its own newest timestamp.
    #[test]
    fn the_parts_of_a_split_batch_are_batches_of_their_own() {
        let msgs: Vec<_> = (0..40).map(msg).collect();
        let stamp = |m: &OutgoingMessage| m.timestamp.unwrap_or(1_800_000_000_000);
        let mut open = Open::default();
        for m in &msgs {
            open.append(m, fields_len(m), stamp(m));
        }
        let sealed = open.seal();
        for range in [0..40, 0..20, 20..40, 13..14, 39..40] {
            let mut want = Open::default();
            for m in &msgs[range.clone()] {
                want.append(m, fields_len(m), stamp(m));
            }
            let got = sealed.records(range.clone());
            assert_eq!(got.count, range.len());
            assert_eq!(got.body, want.body, "{range:?}");
            assert_eq!((got.base_ts, got.max_ts), (want.base_ts, want.max_ts));
            let encoded = got.encode(Compression::None).unwrap();
            let mut log = BytesMut::from(&encoded.head(BatchHeader::PLAIN)[..]);
            log.put_slice(&encoded.body);
            let read = read(log.freeze());
            assert_eq!(read.len(), range.len());
            for (m, want) in read.iter().zip(&msgs[range.clone()]) {
                assert_eq!(
                    (&m.payload, m.timestamp),
                    (&want.payload, Some(stamp(want)))
                );
            }
        }
    }

    /// What a record takes is known exactly before it is written, whatever its deltas.
    #[test]
    fn a_record_takes_the_bytes_foreseen() {
        let keyed = OutgoingMessage::new("t", vec![7u8; 300])
            .key("user-17")
            .header("content-type", "application/json")
            .header("correlation_id", "0123456789abcdef");
        let mut empty = OutgoingMessage::new("t", "");
        empty.payload = None;
        let mut open = Open::default();
        for (i, msg) in [&keyed, &empty, &OutgoingMessage::new("t", "v")]
            .iter()
            .cycle()
            .take(300)
            .enumerate()
        {
            // Timestamps before and far after the first.
            let ts = 1_000_000 + (i as i64 - 5) * 1_000_003;
            let ts_delta = if i == 0 { 0 } else { ts - open.base_ts };
            let foreseen = frame_len(fields_len(msg), ts_delta, i as i64);
            let before = open.bytes();
            open.append(msg, fields_len(msg), ts);
            assert_eq!(open.bytes() - before, foreseen, "record {i}");
            assert!(foreseen <= fields_len(msg) + RECORD_FRAME);
        }
    }

    #[test]
    fn varints_match_the_zigzag_encoding() {
        for v in [0i64, -1, 1, 63, -64, 64, 300, -300, i64::MAX, i64::MIN] {
            let mut b = Vec::new();
            put_varint(&mut b, v);
            assert_eq!(b.len(), varint_len(v), "{v}");
            assert_eq!(get_varint(&mut &b[..]), v);
        }
        let mut b = Vec::new();
        put_varint(&mut b, 300);
        assert_eq!(b, [0xd8, 0x04]);
        b.clear();
        put_varint(&mut b, -1);
        assert_eq!(b, [0x01]);
    }
}
