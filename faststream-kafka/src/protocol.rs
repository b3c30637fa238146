//! One connection to a broker speaking Kafka's wire protocol (the `kafka-protocol` crate's
//! messages): the consumers, producers and group members all talk through it.
//!
//! Framing: an `i32` length, the request header, the body; one write per request with
//! `TCP_NODELAY` set (a vectored one for a request whose record batches are written from their
//! own buffers, [`Pieces`]). Versions are negotiated with ApiVersions: each request uses the highest
//! version both sides support.

use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, FindCoordinatorRequest, RequestHeader,
    ResponseHeader, SaslAuthenticateRequest, SaslHandshakeRequest,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Message, Request, StrBytes};
use kafka_protocol::ResponseError;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::Config;
pub(crate) use crate::error::ConnError;

/// A byte stream to a broker: TCP, or TLS over TCP.
trait Io: AsyncRead + AsyncWrite + Send + Sync + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Sync + Unpin> Io for T {}

/// Largest response accepted (a fetch grown for one very large record batch fits).
const MAX_RESPONSE: i32 = 300 * 1024 * 1024;

/// One connection with negotiated API versions.
pub(crate) struct Conn {
    addr: String,
    stream: Box<dyn Io>,
    client_id: StrBytes,
    correlation: i32,
    versions: Vec<(i16, i16, i16)>,
    timeout: Duration,
    /// Set while a request is in flight and kept when it timed out, failed on the wire or was
    /// abandoned: the stream may hold a stale response (or half a frame), so the connection is
    /// never used again.
    broken: bool,
    /// Whether TLS offered a client certificate (to say what a refused handshake means).
    client_cert: bool,
    /// Counted in `faststream_connections` while it lives (and its request in
    /// `faststream_requests_in_flight`).
    meter: crate::metrics::OpenConnection,
    /// The buffer requests are encoded into, kept for the next request (a produce request
    /// carries up to `max_batch_bytes` of records per partition: fresh memory of that size
    /// for every request cost the kernel more in clearing pages than the encoding).
    out: Vec<u8>,
    /// The buffer the last answer was read into: the next answer is read into it again once
    /// nothing refers to it any more (a fetch answer whose records were copied out), instead
    /// of into fresh memory, whose pages the kernel clears first.
    last_answer: Option<Bytes>,
}

/// Largest request buffer kept for the next request.
const KEPT_REQUEST_BUFFER: usize = 4 * 1024 * 1024;

/// Largest answer whose buffer is kept for the next answer.
const KEPT_ANSWER_BUFFER: usize = 8 * 1024 * 1024;

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("addr", &self.addr)
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}

impl Conn {
    /// Connects (TLS if configured), negotiates versions and authenticates (SASL if
    /// configured), all within `timeout`.
    pub(crate) async fn connect(
        addr: &str,
        config: &Config,
        timeout: Duration,
    ) -> Result<Self, ConnError> {
        // The TLS handshake has its own bound inside (to say what did not answer); this one
        // ends the whole connect a little later.
        let deadline = tokio::time::Instant::now() + timeout;
        let whole = timeout + Duration::from_millis(200);
        match tokio::time::timeout(whole, Self::open(addr, config, timeout, deadline)).await {
            Ok(res) => res,
            Err(_) => Err(ConnError::Timeout {
                addr: addr.to_owned(),
                timeout,
            }),
        }
    }

    async fn open(
        addr: &str,
        config: &Config,
        timeout: Duration,
        deadline: tokio::time::Instant,
    ) -> Result<Self, ConnError> {
        let io = |source| ConnError::Io {
            addr: addr.to_owned(),
            source,
        };
        let tcp = TcpStream::connect(addr).await.map_err(io)?;
        tcp.set_nodelay(true).map_err(io)?;
        let security = &config.security;
        let stream: Box<dyn Io> = match security.tls() {
            None => Box::new(tcp),
            Some(tls) => {
                let setup = |e: crate::KafkaError| ConnError::Setup(e.to_string());
                let client = config
                    .tls_client_config()
                    .map_err(setup)?
                    .expect("TLS is configured");
                let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
                let host = host.trim_start_matches('[').trim_end_matches(']');
                let name = tls.name_for(host).map_err(setup)?;
                let handshake = tokio_rustls::TlsConnector::from(client).connect(name, tcp);
                let tls_error = |reason| ConnError::Tls {
                    addr: addr.to_owned(),
                    reason,
                };
                let stream = tokio::time::timeout_at(deadline, handshake)
                    .await
                    .map_err(|_| {
                        tls_error(format!(
                            "no answer to the TLS handshake within {timeout:?}: is this a plaintext listener? (use PLAINTEXT or SASL_PLAINTEXT)"
                        ))
                    })?
                    .map_err(|e| tls_error(tls_reason(&e, tls.has_client_cert())))?;
                Box::new(stream)
            }
        };
        let mut conn = Conn {
            addr: addr.to_owned(),
            stream,
            client_id: StrBytes::from_string(config.client_id.clone()),
            correlation: 0,
            versions: Vec::new(),
            timeout,
            broken: false,
            client_cert: security.tls().is_some_and(|t| t.has_client_cert()),
            meter: crate::metrics::OpenConnection::new(addr),
            out: Vec::new(),
            last_answer: None,
        };
        let resp: ApiVersionsResponse = conn.send(&ApiVersionsRequest::default(), 0).await?;
        if resp.error_code != 0 {
            return Err(conn.protocol(format!("ApiVersions error code {}", resp.error_code)));
        }
        conn.versions = resp
            .api_keys
            .iter()
            .map(|k| (k.api_key, k.min_version, k.max_version))
            .collect();
        if let Some(sasl) = security.sasl() {
            conn.authenticate(sasl).await?;
        }
        Ok(conn)
    }

    /// SaslHandshake, then the mechanism's exchange in SaslAuthenticate requests.
    async fn authenticate(&mut self, sasl: &crate::Sasl) -> Result<(), ConnError> {
        let auth = |addr: &str, reason: String| ConnError::Auth {
            addr: addr.to_owned(),
            reason: format!("{}: {reason}", sasl.who()),
        };
        let version = self.version::<SaslHandshakeRequest>(1)?;
        let mut req = SaslHandshakeRequest::default();
        req.mechanism = StrBytes::from_static_str(sasl.mechanism());
        let resp = self.send(&req, version).await?;
        if resp.error_code != 0 {
            let offered: Vec<&str> = resp.mechanisms.iter().map(|m| m.as_str()).collect();
            let reason = if offered.is_empty() {
                format!(
                    "this listener offers no SASL mechanism (error code {}): is it a PLAINTEXT or SSL listener? (use that security protocol, or the broker's SASL listener)",
                    resp.error_code
                )
            } else {
                format!(
                    "the broker does not offer {}; it offers {offered:?}",
                    sasl.mechanism()
                )
            };
            return Err(auth(&self.addr, reason));
        }
        let version = self.version::<SaslAuthenticateRequest>(2)?;
        let mut session = sasl.session().await.map_err(|r| auth(&self.addr, r))?;
        let mut received: Option<Vec<u8>> = None;
        loop {
            let mut out = std::io::Cursor::new(Vec::new());
            let state = session
                .step(received.as_deref(), &mut out)
                .map_err(|e| auth(&self.addr, format!("the exchange failed: {e}")))?;
            if state.has_sent_message() {
                let mut req = SaslAuthenticateRequest::default();
                req.auth_bytes = Bytes::from(out.into_inner());
                let resp = self.send(&req, version).await?;
                if resp.error_code != 0 {
                    let message = resp
                        .error_message
                        .map(|m| m.to_string())
                        .unwrap_or_default();
                    return Err(auth(
                        &self.addr,
                        format!(
                            "the broker refused the login (error code {}): {message}",
                            resp.error_code
                        ),
                    ));
                }
                received = Some(resp.auth_bytes.to_vec());
            }
            if state.is_finished() {
                return Ok(());
            }
        }
    }

    pub(crate) fn addr(&self) -> &str {
        &self.addr
    }

    fn protocol(&self, reason: impl Into<String>) -> ConnError {
        ConnError::Protocol {
            addr: self.addr.clone(),
            reason: reason.into(),
        }
    }

    /// The version to use for `R`: the highest both sides support, at most `max`.
    pub(crate) fn version<R: Request>(&self, max: i16) -> Result<i16, ConnError> {
        let ours = R::VERSIONS;
        let (_, min, theirs) = self
            .versions
            .iter()
            .copied()
            .find(|(k, _, _)| *k == R::KEY)
            .ok_or_else(|| self.unsupported::<R>())?;
        let v = theirs.min(ours.max).min(max);
        if v < min.max(ours.min) {
            return Err(self.unsupported::<R>());
        }
        Ok(v)
    }

    fn unsupported<R: Request>(&self) -> ConnError {
        ConnError::Unsupported {
            addr: self.addr.clone(),
            api: ApiKey::try_from(R::KEY).unwrap_or(ApiKey::ApiVersions),
        }
    }

    /// Whether an earlier request failed on the wire; such a connection must be replaced.
    pub(crate) fn is_broken(&self) -> bool {
        self.broken
    }

    /// Marks the connection as not to be used again (the broker said it is the wrong one).
    pub(crate) fn mark_broken(&mut self) {
        self.broken = true;
    }

    /// Sends `req` at `version` and reads its response, within the connection's timeout.
    pub(crate) async fn send<R: Request + Sync>(
        &mut self,
        req: &R,
        version: i16,
    ) -> Result<R::Response, ConnError> {
        self.send_within(req, version, self.timeout).await
    }

    /// Sends `req` and reads its response within `timeout` (for requests the broker may hold,
    /// such as JoinGroup). Any failure breaks the connection for good.
    pub(crate) async fn send_within<R: Request + Sync>(
        &mut self,
        req: &R,
        version: i16,
        timeout: Duration,
    ) -> Result<R::Response, ConnError> {
        if self.broken {
            return Err(self.dropped());
        }
        // Broken until the response is read: if this future is dropped half-way (a shutdown,
        // a `select!` that took another branch), the request's response is still on its way
        // and the next request would read it as its own.
        self.broken = true;
        let _in_flight = self.meter.request();
        let res = match tokio::time::timeout(timeout, self.roundtrip(req, version)).await {
            Ok(res) => res,
            Err(_) => Err(ConnError::Timeout {
                addr: self.addr.clone(),
                timeout,
            }),
        };
        // After any failure the stream's position is unknown (a late response, half a frame).
        self.broken = res.is_err();
        res
    }

    async fn roundtrip<R: Request + Sync>(
        &mut self,
        req: &R,
        version: i16,
    ) -> Result<R::Response, ConnError> {
        let correlation = self.write_request(req, version).await?;
        self.read_response::<R>(version, correlation).await
    }

    /// Writes `req` at `version` without waiting for its answer (read it, in the order the
    /// requests were written, with [`Conn::next_answer`]): several requests in flight on one
    /// connection, as Kafka answers them in order. A failure breaks the connection.
    pub(crate) async fn pipeline<R: Request + Sync>(
        &mut self,
        req: &R,
        version: i16,
    ) -> Result<Sent, ConnError> {
        if self.broken {
            return Err(self.dropped());
        }
        // Broken until written whole (a dropped future leaves half a request on the wire).
        self.broken = true;
        let in_flight = self.meter.request();
        let correlation = self.write_request(req, version).await?;
        self.broken = false;
        Ok(Sent {
            correlation,
            version,
            _in_flight: in_flight,
        })
    }

    /// Reads what the broker sent so far into `buf` (at least one byte). Cancel-safe: what
    /// was read stays in `buf`, so a task can wait for answers and new work at once. Cut
    /// answers out of it with [`Conn::next_answer`].
    pub(crate) async fn read_more(&mut self, buf: &mut BytesMut) -> Result<(), ConnError> {
        if self.broken {
            return Err(self.dropped());
        }
        if buf.capacity() - buf.len() < 8 * 1024 {
            buf.reserve(64 * 1024);
        }
        let io = self.io_error();
        match self.stream.read_buf(buf).await {
            Ok(0) => {
                self.broken = true;
                Err(io(std::io::ErrorKind::UnexpectedEof.into()))
            }
            Ok(_) => Ok(()),
            Err(e) => {
                self.broken = true;
                Err(io(e))
            }
        }
    }

    /// The answer to `sent` (the oldest request written with [`Conn::pipeline`] and not
    /// answered yet), if `buf` holds all of it. A malformed answer breaks the connection.
    pub(crate) fn next_answer<R: Request + Sync>(
        &mut self,
        buf: &mut BytesMut,
        sent: &Sent,
    ) -> Result<Option<R::Response>, ConnError> {
        if buf.len() < 4 {
            return Ok(None);
        }
        let len = i32::from_be_bytes(buf[..4].try_into().expect("4 bytes"));
        if !(0..=MAX_RESPONSE).contains(&len) {
            self.broken = true;
            return Err(self.protocol(format!("implausible response length {len}")));
        }
        let len = len as usize;
        if buf.len() < 4 + len {
            // The rest of a large answer: room for it at once.
            buf.reserve(4 + len - buf.len());
            return Ok(None);
        }
        buf.advance(4);
        let mut body = buf.split_to(len).freeze();
        let decoded = ResponseHeader::decode(&mut body, R::Response::header_version(sent.version))
            .map_err(|e| format!("decoding response header: {e}"))
            .and_then(|header| match header.correlation_id == sent.correlation {
                true => Ok(()),
                false => Err(format!(
                    "response correlation id {} does not match request {}",
                    header.correlation_id, sent.correlation
                )),
            })
            .and_then(|()| {
                R::Response::decode(&mut body, sent.version)
                    .map_err(|e| format!("decoding response: {e}"))
            });
        decoded.map(Some).map_err(|reason| {
            self.broken = true;
            self.protocol(reason)
        })
    }

    fn dropped(&self) -> ConnError {
        ConnError::Io {
            addr: self.addr.clone(),
            source: std::io::Error::new(
                std::io::ErrorKind::NotConnected,
                "connection dropped after an earlier failure",
            ),
        }
    }

    fn io_error(&self) -> impl Fn(std::io::Error) -> ConnError {
        let addr = self.addr.clone();
        let client_cert = self.client_cert;
        move |source: std::io::Error| match source
            .get_ref()
            .and_then(|i| i.downcast_ref::<rustls::Error>())
        {
            // A TLS failure after the handshake (TLS 1.3 reports a refused client
            // certificate on the first read).
            Some(_) => ConnError::Tls {
                addr: addr.clone(),
                reason: tls_reason(&source, client_cert),
            },
            None => ConnError::Io {
                addr: addr.clone(),
                source,
            },
        }
    }

    /// Writes a request of type `R` at `version` whose body `body` encodes in [`Pieces`],
    /// without waiting for its answer (as [`Conn::pipeline`]).
    pub(crate) async fn pipeline_pieces<R: Request>(
        &mut self,
        version: i16,
        body: impl FnOnce(&mut Pieces),
    ) -> Result<Sent, ConnError> {
        if self.broken {
            return Err(self.dropped());
        }
        // Broken until written whole (a dropped future leaves half a request on the wire).
        self.broken = true;
        let in_flight = self.meter.request();
        self.correlation = self.correlation.wrapping_add(1);
        let header = self.header::<R>(version);
        let mut own = std::mem::take(&mut self.out);
        own.clear();
        let mut pieces = Pieces {
            own,
            spliced: Vec::new(),
            spliced_len: 0,
        };
        pieces.own.put_i32(0);
        header
            .encode(&mut pieces.own, R::header_version(version))
            .map_err(|e| self.protocol(format!("encoding request header: {e}")))?;
        body(&mut pieces);
        let len = i32::try_from(pieces.len() - 4)
            .map_err(|_| self.protocol(format!("a request of {} bytes", pieces.len())))?;
        pieces.own[..4].copy_from_slice(&len.to_be_bytes());
        let io = self.io_error();
        pieces.write(&mut self.stream).await.map_err(io)?;
        if pieces.own.capacity() <= KEPT_REQUEST_BUFFER {
            self.out = pieces.own;
        }
        self.broken = false;
        Ok(Sent {
            correlation: self.correlation,
            version,
            _in_flight: in_flight,
        })
    }

    /// The header of the next request of type `R`.
    fn header<R: Request>(&self, version: i16) -> RequestHeader {
        let mut header = RequestHeader::default();
        header.request_api_key = R::KEY;
        header.request_api_version = version;
        header.correlation_id = self.correlation;
        header.client_id = Some(self.client_id.clone());
        header
    }

    /// Encodes and writes `req`; returns its correlation id.
    async fn write_request<R: Request + Sync>(
        &mut self,
        req: &R,
        version: i16,
    ) -> Result<i32, ConnError> {
        self.correlation = self.correlation.wrapping_add(1);
        let header = self.header::<R>(version);
        // Sized up front: a produce request carries up to `max_batch_bytes` of records, which
        // growing the buffer would copy several times.
        let size = header
            .compute_size(R::header_version(version))
            .and_then(|h| req.compute_size(version).map(|b| h + b))
            .unwrap_or(256);
        let mut buf = std::mem::take(&mut self.out);
        buf.clear();
        buf.reserve(4 + size);
        buf.put_i32(0);
        header
            .encode(&mut buf, R::header_version(version))
            .map_err(|e| self.protocol(format!("encoding request header: {e}")))?;
        req.encode(&mut buf, version)
            .map_err(|e| self.protocol(format!("encoding request: {e}")))?;
        let len = (buf.len() - 4) as i32;
        buf[..4].copy_from_slice(&len.to_be_bytes());
        let io = self.io_error();
        self.stream.write_all(&buf).await.map_err(io)?;
        if buf.capacity() <= KEPT_REQUEST_BUFFER {
            self.out = buf;
        }
        Ok(self.correlation)
    }

    /// A buffer for an answer of `len` bytes: the last answer's when nothing refers to it any
    /// more and it is not far larger than needed (an idle connection keeps no large buffer).
    fn answer_buffer(&mut self, len: usize) -> BytesMut {
        let last = self.last_answer.take().and_then(|b| b.try_into_mut().ok());
        match last {
            Some(mut buf) if buf.capacity() <= (4 * len).max(1024 * 1024) => {
                buf.clear();
                buf.reserve(len);
                buf
            }
            _ => BytesMut::with_capacity(len),
        }
    }

    /// Reads one response frame and decodes it as the answer to request `correlation`.
    async fn read_response<R: Request + Sync>(
        &mut self,
        version: i16,
        correlation: i32,
    ) -> Result<R::Response, ConnError> {
        let io = self.io_error();
        let len = self.stream.read_i32().await.map_err(&io)?;
        if !(0..=MAX_RESPONSE).contains(&len) {
            // TLS records start with 0x14..0x17 0x03: a TLS listener answering plaintext.
            let hint = if (0x1403_0000..0x1804_0000).contains(&len) {
                " (this looks like a TLS listener: use security protocol SSL or SASL_SSL)"
            } else {
                ""
            };
            return Err(self.protocol(format!("implausible response length {len}{hint}")));
        }
        // Read into uninitialised capacity: a fetch answer can be megabytes, not worth zeroing.
        let mut body = self.answer_buffer(len as usize);
        while body.len() < len as usize {
            let mut part = (&mut self.stream).take((len as usize - body.len()) as u64);
            if part.read_buf(&mut body).await.map_err(&io)? == 0 {
                return Err(io(std::io::ErrorKind::UnexpectedEof.into()));
            }
        }
        let mut body = body.freeze();
        if body.len() <= KEPT_ANSWER_BUFFER {
            self.last_answer = Some(body.clone());
        }
        let header = ResponseHeader::decode(&mut body, R::Response::header_version(version))
            .map_err(|e| self.protocol(format!("decoding response header: {e}")))?;
        if header.correlation_id != correlation {
            return Err(self.protocol(format!(
                "response correlation id {} does not match request {correlation}",
                header.correlation_id
            )));
        }
        R::Response::decode(&mut body, version)
            .map_err(|e| self.protocol(format!("decoding response: {e}")))
    }
}

/// A request encoded in pieces: its own bytes, and buffers written between them as they are
/// (a Produce request's record batches, which would otherwise be copied into the request:
/// megabytes per request at hundreds of partitions).
#[derive(Debug, Default)]
pub(crate) struct Pieces {
    own: Vec<u8>,
    /// Buffers written at a position of `own`, in order.
    spliced: Vec<(usize, Bytes)>,
    spliced_len: usize,
}

impl Pieces {
    /// Where the request's own bytes go.
    pub(crate) fn own(&mut self) -> &mut Vec<u8> {
        &mut self.own
    }

    /// `bytes`, written as they are after what was encoded so far.
    pub(crate) fn splice(&mut self, bytes: Bytes) {
        self.spliced_len += bytes.len();
        self.spliced.push((self.own.len(), bytes));
    }

    /// The request's length in bytes.
    fn len(&self) -> usize {
        self.own.len() + self.spliced_len
    }

    /// The request's bytes in order.
    fn slices(&self) -> Vec<std::io::IoSlice<'_>> {
        let mut slices = Vec::with_capacity(2 * self.spliced.len() + 1);
        let mut at = 0;
        for (pos, bytes) in &self.spliced {
            slices.push(std::io::IoSlice::new(&self.own[at..*pos]));
            slices.push(std::io::IoSlice::new(bytes));
            at = *pos;
        }
        slices.push(std::io::IoSlice::new(&self.own[at..]));
        slices
    }

    /// Writes the request whole, in as few writes as the stream takes.
    async fn write(&self, stream: &mut (impl AsyncWrite + Unpin)) -> std::io::Result<()> {
        let mut slices = self.slices();
        let mut bufs = &mut slices[..];
        let mut left = self.len();
        while left > 0 {
            let n = stream.write_vectored(bufs).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            left -= n;
            std::io::IoSlice::advance_slices(&mut bufs, n);
        }
        Ok(())
    }

    /// The request's bytes in one buffer.
    #[cfg(test)]
    pub(crate) fn flat(&self) -> Vec<u8> {
        self.slices()
            .iter()
            .flat_map(|s| s.iter().copied())
            .collect()
    }
}

/// A request written with [`Conn::pipeline`], waiting for its answer.
#[must_use = "the answer must be read before the next one"]
pub(crate) struct Sent {
    correlation: i32,
    version: i16,
    /// Counted in `faststream_requests_in_flight` until answered.
    _in_flight: crate::metrics::InFlight,
}

/// Encodes an embedded consumer-protocol structure: `i16` version, then the structure.
pub(crate) fn encode_versioned<T: Encodable>(value: &T, version: i16) -> Bytes {
    let mut buf = BytesMut::new();
    buf.put_i16(version);
    value
        .encode(&mut buf, version)
        .expect("consumer protocol structures encode");
    buf.freeze()
}

/// Decodes an embedded consumer-protocol structure written at any version.
pub(crate) fn decode_versioned<T: Decodable + Message>(mut bytes: Bytes) -> Option<T> {
    if bytes.remaining() < 2 {
        return None;
    }
    let version = bytes.get_i16().min(T::VERSIONS.max);
    T::decode(&mut bytes, version).ok()
}

/// What a failed TLS handshake means, in the words of Kafka users.
/// `client_cert`: whether we offered one (a broker requiring one may refuse its absence with
/// any of the certificate alerts; Kafka's Java TLS sends `bad_certificate`).
fn tls_reason(e: &std::io::Error, client_cert: bool) -> String {
    use rustls::{AlertDescription, CertificateError, Error as TlsError};
    let inner = e.get_ref().and_then(|i| i.downcast_ref::<TlsError>());
    match inner {
        Some(TlsError::InvalidCertificate(CertificateError::UnknownIssuer)) => {
            "the broker's certificate is not trusted (unknown issuer): give its CA with Tls::ca_file or KAFKA_SSL_CA_LOCATION".into()
        }
        Some(TlsError::InvalidCertificate(CertificateError::NotValidForName))
        | Some(TlsError::InvalidCertificate(CertificateError::NotValidForNameContext { .. })) => {
            format!("the broker's certificate does not name the host connected to ({e}); connect by a name it lists, or set Tls::server_name")
        }
        Some(TlsError::InvalidCertificate(c)) => format!("the broker's certificate is not valid: {c:?}"),
        Some(TlsError::AlertReceived(
            AlertDescription::CertificateRequired
            | AlertDescription::BadCertificate
            | AlertDescription::CertificateUnknown,
        )) if !client_cert => {
            "the broker requires a client certificate (mTLS): set Tls::client_cert_pem or KAFKA_SSL_CERTIFICATE_LOCATION and KAFKA_SSL_KEY_LOCATION".into()
        }
        Some(TlsError::AlertReceived(
            AlertDescription::BadCertificate
            | AlertDescription::UnknownCA
            | AlertDescription::CertificateUnknown
            | AlertDescription::CertificateExpired,
        )) => format!("the broker refused our client certificate ({e})"),
        Some(TlsError::InvalidMessage(_)) | Some(TlsError::InappropriateMessage { .. }) => format!(
            "the answer is not TLS ({e}): is this a plaintext listener? (use PLAINTEXT or SASL_PLAINTEXT)"
        ),
        Some(other) => other.to_string(),
        None if e.kind() == std::io::ErrorKind::UnexpectedEof => format!(
            "the broker closed the connection during the handshake ({e}): a plaintext listener, or it wants a client certificate"
        ),
        None => e.to_string(),
    }
}

/// A duration as a protocol field in milliseconds (saturating).
pub(crate) fn ms(d: Duration) -> i32 {
    d.as_millis().min(i32::MAX as u128) as i32
}

/// Finds the group's coordinator through any bootstrap broker and connects to it.
pub(crate) async fn find_coordinator(config: &Config, group: &str) -> Result<Conn, ConnError> {
    find_coordinator_of(config, group, 0).await
}

/// A connection to the coordinator of `key`: a group's (`key_type` 0) or a transactional
/// id's (1).
pub(crate) async fn find_coordinator_of(
    config: &Config,
    key: &str,
    key_type: i8,
) -> Result<Conn, ConnError> {
    let what = match key_type {
        0 => "group",
        _ => "transactional id",
    };
    let group = key;
    let timeout = config.request_timeout.min(Duration::from_secs(10));
    let mut last = None;
    for addr in &config.brokers {
        let mut conn = match Conn::connect(addr, config, timeout).await {
            Ok(c) => c,
            Err(e) => {
                last = Some(e);
                continue;
            }
        };
        let version = conn.version::<FindCoordinatorRequest>(4)?;
        let mut req = FindCoordinatorRequest::default();
        req.key_type = key_type;
        let key = StrBytes::from_string(group.to_owned());
        if version >= 4 {
            req.coordinator_keys = vec![key];
        } else {
            req.key = key;
        }
        let resp = match conn.send(&req, version).await {
            Ok(resp) => resp,
            Err(e) => {
                last = Some(e);
                continue;
            }
        };
        let (code, host, port) = match resp.coordinators.first() {
            Some(c) if version >= 4 => (c.error_code, c.host.to_string(), c.port),
            _ => (resp.error_code, resp.host.to_string(), resp.port),
        };
        if let Some(err) = ResponseError::try_from_code(code) {
            last = Some(ConnError::Protocol {
                addr: addr.clone(),
                reason: format!("FindCoordinator for {what} {group:?}: {err}"),
            });
            continue;
        }
        let coord = format!("{host}:{port}");
        if coord == *addr {
            return Ok(conn);
        }
        return Conn::connect(&coord, config, timeout).await;
    }
    Err(last.unwrap_or(ConnError::Protocol {
        addr: String::new(),
        reason: "no bootstrap address".into(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::api_versions_response::ApiVersion;
    use kafka_protocol::messages::{HeartbeatRequest, HeartbeatResponse};
    use tokio::net::TcpListener;

    /// A broker that answers ApiVersions at once and every later request after `delay`, on
    /// one connection.
    async fn slow_broker(delay: Duration) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            loop {
                let Ok(len) = conn.read_i32().await else {
                    return;
                };
                let mut frame = vec![0u8; len as usize];
                if conn.read_exact(&mut frame).await.is_err() {
                    return;
                }
                let mut frame = Bytes::from(frame);
                let (key, version) = (frame.get_i16(), frame.get_i16());
                let correlation = frame.get_i32();
                let mut header = ResponseHeader::default();
                header.correlation_id = correlation;
                let mut out = BytesMut::new();
                if key == ApiKey::ApiVersions as i16 {
                    let mut resp = ApiVersionsResponse::default();
                    let mut v = ApiVersion::default();
                    v.api_key = ApiKey::Heartbeat as i16;
                    v.max_version = 4;
                    resp.api_keys = vec![v];
                    header.encode(&mut out, 0).unwrap();
                    resp.encode(&mut out, 0).unwrap();
                } else {
                    tokio::time::sleep(delay).await;
                    header
                        .encode(&mut out, HeartbeatResponse::header_version(version))
                        .unwrap();
                    HeartbeatResponse::default()
                        .encode(&mut out, version)
                        .unwrap();
                }
                let mut framed = BytesMut::new();
                framed.put_i32(out.len() as i32);
                framed.extend_from_slice(&out);
                if conn.write_all(&framed).await.is_err() {
                    return;
                }
            }
        });
        addr
    }

    fn config() -> Config {
        crate::KafkaBroker::builder("127.0.0.1:1").config_for_tests()
    }

    /// A request abandoned half-way (its future dropped, as a shutdown or a `select!` does)
    /// leaves the connection broken: the next request fails at once instead of reading the
    /// abandoned request's late answer as its own.
    #[tokio::test]
    async fn an_abandoned_request_breaks_the_connection() {
        let addr = slow_broker(Duration::from_millis(300)).await;
        let mut conn = Conn::connect(&addr, &config(), Duration::from_secs(5))
            .await
            .unwrap();
        let req = HeartbeatRequest::default();
        let abandoned = tokio::time::timeout(Duration::from_millis(50), conn.send(&req, 4)).await;
        assert!(abandoned.is_err(), "the answer comes later than that");
        assert!(conn.is_broken());
        let next = conn.send(&req, 4).await;
        assert!(
            matches!(&next, Err(ConnError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotConnected),
            "{next:?}"
        );
    }

    /// The next answer is read into the last answer's buffer once nothing refers to it, and
    /// never into one far larger than it needs.
    #[tokio::test]
    async fn an_answer_reuses_the_last_answers_buffer_once_it_is_free() {
        let addr = slow_broker(Duration::ZERO).await;
        let mut conn = Conn::connect(&addr, &config(), Duration::from_secs(5))
            .await
            .unwrap();
        let answer = |len: usize| {
            let mut buf = BytesMut::with_capacity(len);
            buf.resize(len, 7);
            buf.freeze()
        };
        let last = answer(64 * 1024);
        let at = last.as_ptr();
        conn.last_answer = Some(last.clone());
        let part = last.slice(10..20);
        drop(last);
        // A record set of the last answer is still held: fresh memory.
        let held = conn.answer_buffer(64 * 1024);
        assert_ne!(held.as_ptr(), at);
        drop(part);
        // Nothing held it any more: the same memory.
        conn.last_answer = Some(held.freeze());
        let kept = conn.last_answer.as_ref().unwrap().as_ptr();
        let again = conn.answer_buffer(32 * 1024);
        assert_eq!(again.as_ptr(), kept);
        assert!(again.is_empty() && again.capacity() >= 32 * 1024);
        // An 8 MiB buffer is not kept for a 100-byte answer.
        conn.last_answer = Some(answer(8 * 1024 * 1024));
        let small = conn.answer_buffer(100);
        assert!(small.capacity() < 1024 * 1024, "{}", small.capacity());
    }

    /// A request that got its answer leaves the connection usable.
    #[tokio::test]
    async fn an_answered_request_keeps_the_connection() {
        let addr = slow_broker(Duration::from_millis(10)).await;
        let mut conn = Conn::connect(&addr, &config(), Duration::from_secs(5))
            .await
            .unwrap();
        let req = HeartbeatRequest::default();
        conn.send(&req, 4).await.unwrap();
        assert!(!conn.is_broken());
        conn.send(&req, 4).await.unwrap();
    }
}
