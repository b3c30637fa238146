//! Record batches (magic v2) encoded in one pass from outgoing messages.
//!
//! The producer writes each request's records straight from the [`OutgoingMessage`]s into one
//! buffer: no intermediate record type, no map of headers, no buffer per record. Sizes are
//! computed before writing, so every length prefix is written once and nothing is moved.
//! Compressed batches encode the records into a scratch buffer that is reused between
//! requests, then compress it into the batch.
//!
//! The batch header carries no producer id (`-1`), as a non-idempotent producer sends it;
//! [`BatchHeader`] is where an idempotent or transactional producer would set its producer id,
//! epoch and base sequence.

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

/// Encodes record batches, keeping its scratch buffer between batches.
#[derive(Debug, Default)]
pub(crate) struct Encoder {
    scratch: Vec<u8>,
}

impl Encoder {
    /// Appends one record batch holding `msgs` (in order) to `out`. Messages without a
    /// timestamp get `now_ms`.
    pub(crate) fn batch(
        &mut self,
        out: &mut BytesMut,
        msgs: &[OutgoingMessage],
        now_ms: i64,
        compression: Compression,
        header: BatchHeader,
    ) -> Result<(), String> {
        let timestamp = |m: &OutgoingMessage| m.timestamp.unwrap_or(now_ms);
        let base_ts = msgs.first().map_or(now_ms, timestamp);
        let max_ts = msgs.iter().map(timestamp).max().unwrap_or(now_ms);
        let start = out.len();
        out.reserve(bound(msgs));
        out.put_i64(0); // base offset: the broker assigns offsets
        out.put_i32(0); // batch length, set below
        out.put_i32(-1); // partition leader epoch
        out.put_i8(2); // magic
        out.put_u32(0); // CRC-32C, set below
        out.put_i16(compression_bits(compression) | if header.transactional { 0x10 } else { 0 });
        out.put_i32(msgs.len().saturating_sub(1) as i32); // last offset delta
        out.put_i64(base_ts);
        out.put_i64(max_ts);
        out.put_i64(header.producer_id);
        out.put_i16(header.producer_epoch);
        out.put_i32(header.base_sequence);
        out.put_i32(msgs.len() as i32);
        match compression {
            Compression::None => write_records(out, msgs, base_ts, now_ms),
            #[allow(unreachable_patterns)] // no codec when both compression features are off
            codec => {
                self.scratch.clear();
                write_records(&mut self.scratch, msgs, base_ts, now_ms);
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

/// The `count` messages of a batch this producer encoded for `topic`, read back (to split it
/// into smaller batches): keys, values, headers and timestamps as they were written.
pub(crate) fn messages(
    batch: Bytes,
    topic: &str,
    count: usize,
) -> Result<Vec<OutgoingMessage>, String> {
    let src = crate::records::Source {
        topic: topic.into(),
        partition: 0,
        from: 0,
        aborted: Vec::new(),
        max_decompressed: usize::MAX,
    };
    let mut msgs = Vec::with_capacity(count);
    for item in crate::records::Records::new(src, batch).all().items {
        let crate::records::Fetched::Record(m) = item else {
            return Err(format!("an encoded batch reads back as {item:?}"));
        };
        let mut msg = OutgoingMessage::new("", Bytes::new());
        msg.topic = m.topic;
        msg.key = m.key;
        msg.headers = m.headers;
        msg.payload = m.payload;
        msg.timestamp = m.timestamp;
        msgs.push(msg);
    }
    match msgs.len() == count {
        true => Ok(msgs),
        false => Err(format!(
            "an encoded batch of {count} records reads back as {}",
            msgs.len()
        )),
    }
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

/// An upper bound of the encoded size of a batch of `msgs` (uncompressed).
pub(crate) fn bound(msgs: &[OutgoingMessage]) -> usize {
    BATCH_HEADER + msgs.iter().map(record_bound).sum::<usize>()
}

/// An upper bound of one record's encoded size.
fn record_bound(m: &OutgoingMessage) -> usize {
    let fields = m.key.as_ref().map_or(0, |k| k.len())
        + m.payload.as_ref().map_or(0, |v| v.len())
        + m.headers
            .iter()
            .map(|(k, v)| k.len() + v.len() + 10)
            .sum::<usize>();
    fields + 5 + 1 + 10 + 5 + 5 + 5 + 5
}

fn write_records(out: &mut impl BufMut, msgs: &[OutgoingMessage], base_ts: i64, now_ms: i64) {
    for (delta, m) in msgs.iter().enumerate() {
        let ts_delta = m.timestamp.unwrap_or(now_ms) - base_ts;
        let delta = delta as i64;
        let key = m.key.as_deref();
        let value = m.payload.as_deref();
        let headers = m.headers.len() as i64;
        let body = 1
            + varint_len(ts_delta)
            + varint_len(delta)
            + bytes_len(key)
            + bytes_len(value)
            + varint_len(headers)
            + m.headers
                .iter()
                .map(|(k, v)| bytes_len(Some(k.as_bytes())) + bytes_len(Some(v)))
                .sum::<usize>();
        put_varint(out, body as i64);
        out.put_i8(0); // record attributes
        put_varint(out, ts_delta);
        put_varint(out, delta);
        put_bytes(out, key);
        put_bytes(out, value);
        put_varint(out, headers);
        for (k, v) in m.headers.iter() {
            put_bytes(out, Some(k.as_bytes()));
            put_bytes(out, Some(v));
        }
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

fn bytes_len(b: Option<&[u8]>) -> usize {
    match b {
        None => varint_len(-1),
        Some(b) => varint_len(b.len() as i64) + b.len(),
    }
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
        let mut enc = Encoder::default();
        // Two batches in one buffer, the second at offset 300, as a log would hold them.
        enc.batch(
            &mut out,
            &msgs,
            1_800_000_000_000,
            compression,
            BatchHeader::PLAIN,
        )
        .unwrap();
        let second = out.len();
        enc.batch(&mut out, &msgs[..5], 5, compression, BatchHeader::PLAIN)
            .unwrap();
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
    fn a_batch_reads_back_and_takes_another_producer_identity() {
        let msgs: Vec<_> = (0..30).map(msg).collect();
        let first = BatchHeader {
            producer_id: 7,
            producer_epoch: 1,
            base_sequence: 40,
            transactional: false,
        };
        let encode = |header| {
            let mut out = BytesMut::new();
            Encoder::default()
                .batch(
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
        // Read back (to split it): what was written, the encoding time given to those without
        // a timestamp.
        let read = messages(encode(first), "t", 30).unwrap();
        for (i, m) in read.iter().enumerate() {
            let want = msg(i);
            assert_eq!(
                (&m.payload, &m.key, &m.headers),
                (&want.payload, &want.key, &want.headers)
            );
            assert_eq!(
                m.timestamp,
                Some(want.timestamp.unwrap_or(1_800_000_000_000))
            );
        }
        assert!(
            messages(encode(first), "t", 31).is_err(),
            "a count that does not match"
        );
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
