//! A secured front for a plaintext broker, for the security tests: it terminates TLS (rustls,
//! with a throwaway CA made here, optionally requiring a client certificate) and SASL (the
//! server side of the `rsasl` crate: PLAIN, SCRAM-SHA-256, SCRAM-SHA-512, OAUTHBEARER),
//! answering SaslHandshake and SaslAuthenticate itself, then passes bytes through. The local
//! broker can do neither (its TLS listener serves plaintext and its memory storage keeps no
//! users), so this stands in for a secured cluster's listener. The broker advertises the front,
//! so every connection (metadata, leaders, group coordinator) comes back through it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsResponse, RequestHeader, ResponseHeader, SaslAuthenticateRequest,
    SaslAuthenticateResponse, SaslHandshakeRequest, SaslHandshakeResponse,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, StrBytes};
use rsasl::callback::{Context, Request, SessionCallback, SessionData};
use rsasl::mechanisms::oauthbearer::properties::{OAuthBearerError, OAuthBearerValidate};
use rsasl::mechanisms::scram::properties::ScramStoredPassword;
use rsasl::prelude::{Mechname, SASLConfig, SASLServer, SessionError};
use rsasl::property::{AuthId, OAuthBearerToken, Password};
use rsasl::validate::{Validate, Validation, ValidationError};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};

use super::wire::{read_frame, write_frame};

/// A throwaway CA and a server certificate it signed for `127.0.0.1` and `localhost`, plus a
/// client certificate for mTLS; all PEM.
pub struct Pki {
    pub ca_pem: String,
    pub server_cert_pem: String,
    pub server_key_pem: String,
    pub client_cert_pem: String,
    pub client_key_pem: String,
}

impl Pki {
    pub fn new() -> Pki {
        Self::for_names(vec!["127.0.0.1".into(), "localhost".into()])
    }

    /// A server certificate naming only `names`.
    pub fn for_names(names: Vec<String>) -> Pki {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "faststream test CA");
        let ca = ca.self_signed(&ca_key).unwrap();
        let server_key = KeyPair::generate().unwrap();
        let server = CertificateParams::new(names)
            .unwrap()
            .signed_by(&server_key, &ca, &ca_key)
            .unwrap();
        let client_key = KeyPair::generate().unwrap();
        let client = CertificateParams::new(vec!["client".to_owned()])
            .unwrap()
            .signed_by(&client_key, &ca, &ca_key)
            .unwrap();
        Pki {
            ca_pem: ca.pem(),
            server_cert_pem: server.pem(),
            server_key_pem: server_key.serialize_pem(),
            client_cert_pem: client.pem(),
            client_key_pem: client_key.serialize_pem(),
        }
    }

    /// The front's TLS settings; with `client_auth`, a client certificate signed by the CA is
    /// required.
    pub fn server_config(&self, client_auth: bool) -> Arc<rustls::ServerConfig> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certs = CertificateDer::pem_slice_iter(self.server_cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_slice(self.server_key_pem.as_bytes()).unwrap();
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = if client_auth {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(self.ca_pem.as_bytes()) {
                roots.add(c.unwrap()).unwrap();
            }
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .build()
                    .unwrap();
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        Arc::new(builder.with_single_cert(certs, key).unwrap())
    }
}

/// A plain rskafka client (independent of the code under test) to `bootstrap`: over TLS
/// trusting `pki`'s CA (with its client certificate if the flag is set) when given, logging in
/// with `sasl` when given.
pub async fn raw_client(
    bootstrap: &str,
    pki: Option<(&Pki, bool)>,
    sasl: Option<rskafka::client::SaslConfig>,
) -> rskafka::client::Client {
    let mut b = rskafka::client::ClientBuilder::new(vec![bootstrap.to_owned()]);
    if let Some((pki, client_cert)) = pki {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(pki.ca_pem.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
        let config = if client_cert {
            let chain = CertificateDer::pem_slice_iter(pki.client_cert_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            let key = PrivateKeyDer::from_pem_slice(pki.client_key_pem.as_bytes()).unwrap();
            config.with_client_auth_cert(chain, key).unwrap()
        } else {
            config.with_no_client_auth()
        };
        b = b.tls_config(Arc::new(config));
    }
    if let Some(sasl) = sasl {
        b = b.sasl_config(sasl);
    }
    b.build()
        .await
        .expect("raw client through a secured listener")
}

/// Who may log in, and how.
#[derive(Clone, Default)]
pub struct Logins {
    /// Mechanisms offered, for example `["SCRAM-SHA-512"]`.
    pub mechanisms: Vec<&'static str>,
    /// Users and passwords.
    pub users: Vec<(String, String)>,
    /// OAUTHBEARER tokens accepted.
    pub tokens: Vec<String>,
}

/// The front's settings.
#[derive(Clone, Default)]
pub struct FrontConfig {
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub sasl: Option<Logins>,
}

/// A running front; counts what happened.
#[derive(Clone)]
pub struct SecureFront {
    pub port: u16,
    /// Successful SASL logins.
    pub logins: Arc<AtomicUsize>,
    /// Connections passed through to the broker (after TLS and SASL).
    pub passed: Arc<AtomicUsize>,
}

impl SecureFront {
    pub async fn start_on(port: u16, broker: String, config: FrontConfig) -> SecureFront {
        let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let front = SecureFront {
            port,
            logins: Arc::default(),
            passed: Arc::default(),
        };
        let config = Arc::new(config);
        let f = front.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (broker, config, f) = (broker.clone(), config.clone(), f.clone());
                tokio::spawn(async move {
                    let _ = serve(client, broker, config, f).await;
                });
            }
        });
        front
    }
}

trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

type BoxErr = Box<dyn std::error::Error + Send + Sync>;

async fn serve(
    client: TcpStream,
    broker: String,
    config: Arc<FrontConfig>,
    front: SecureFront,
) -> Result<(), BoxErr> {
    let mut client: Box<dyn Io> = match &config.tls {
        Some(tls) => Box::new(
            tokio_rustls::TlsAcceptor::from(tls.clone())
                .accept(client)
                .await?,
        ),
        None => Box::new(client),
    };
    let mut upstream = TcpStream::connect(&broker).await?;
    if let Some(logins) = &config.sasl {
        if !authenticate(&mut client, &mut upstream, logins).await? {
            return Ok(());
        }
        front.logins.fetch_add(1, Ordering::SeqCst);
    }
    front.passed.fetch_add(1, Ordering::SeqCst);
    tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
    Ok(())
}

/// The SASL phase: ApiVersions (passed on, with the SASL APIs added), SaslHandshake and
/// SaslAuthenticate (answered here). True once a login succeeded; false when the client was
/// refused (the connection is then closed, as Kafka brokers do).
async fn authenticate(
    client: &mut Box<dyn Io>,
    upstream: &mut TcpStream,
    logins: &Logins,
) -> Result<bool, BoxErr> {
    let mut session = None;
    // After SaslHandshake v0, tokens travel as bare length-prefixed frames (the framing of
    // Kafka before 1.0, which some clients still use on their first connection).
    let mut legacy = false;
    loop {
        let Some(frame) = read_frame(client).await else {
            return Ok(false);
        };
        if legacy {
            let Some(s) = session.as_mut() else {
                return Ok(false);
            };
            let mut out = std::io::Cursor::new(Vec::new());
            match step(s, &frame, &mut out) {
                Some(false) => return Ok(false),
                verdict => {
                    write_frame(client, out.get_ref()).await?;
                    if verdict == Some(true) {
                        return Ok(true);
                    }
                    continue;
                }
            }
        }
        let mut peek = frame.clone();
        let (key, version) = (peek.get_i16(), peek.get_i16());
        match ApiKey::try_from(key) {
            Ok(ApiKey::ApiVersions) => {
                write_frame(upstream, &frame).await?;
                let answer = read_frame(upstream).await.ok_or("broker closed")?;
                write_frame(client, &with_sasl_apis(answer, version)).await?;
            }
            Ok(ApiKey::SaslHandshake) => {
                let mut body = frame.clone();
                let header = RequestHeader::decode(
                    &mut body,
                    SaslHandshakeRequest::header_version(version),
                )?;
                let req = SaslHandshakeRequest::decode(&mut body, version)?;
                let mut resp = SaslHandshakeResponse::default();
                resp.mechanisms = logins
                    .mechanisms
                    .iter()
                    .map(|m| StrBytes::from_static_str(m))
                    .collect();
                if logins.mechanisms.contains(&req.mechanism.as_str()) {
                    let config = SASLConfig::builder()
                        .with_defaults()
                        .with_callback(Users(logins.clone()))?;
                    let mech = Mechname::parse(req.mechanism.as_bytes())?;
                    session = Some(SASLServer::<Accepted>::new(config).start_suggested(mech)?);
                } else {
                    resp.error_code = 33; // UNSUPPORTED_SASL_MECHANISM
                }
                let refused = resp.error_code != 0;
                legacy = version == 0;
                write_frame(client, &answer(&header, &resp, version)).await?;
                if refused {
                    return Ok(false);
                }
            }
            Ok(ApiKey::SaslAuthenticate) => {
                let mut body = frame.clone();
                let header = RequestHeader::decode(
                    &mut body,
                    SaslAuthenticateRequest::header_version(version),
                )?;
                let req = SaslAuthenticateRequest::decode(&mut body, version)?;
                let Some(s) = session.as_mut() else {
                    return Ok(false);
                };
                let mut out = std::io::Cursor::new(Vec::new());
                let outcome = step(s, &req.auth_bytes, &mut out);
                let mut resp = SaslAuthenticateResponse::default();
                if outcome == Some(false) {
                    resp.error_code = 58; // SASL_AUTHENTICATION_FAILED
                    resp.error_message = Some(StrBytes::from_static_str(
                        "Authentication failed: invalid credentials",
                    ));
                } else {
                    resp.auth_bytes = Bytes::from(out.into_inner());
                }
                write_frame(client, &answer(&header, &resp, version)).await?;
                match outcome {
                    Some(ok) => return Ok(ok),
                    None => continue,
                }
            }
            // Anything else before a login: refused by closing, as brokers do.
            _ => return Ok(false),
        }
    }
}

/// One step of the server's side: `Some(verdict)` once the exchange ended, `None` while it
/// goes on.
fn step(
    session: &mut rsasl::prelude::Session<Accepted>,
    input: &[u8],
    out: &mut std::io::Cursor<Vec<u8>>,
) -> Option<bool> {
    match session.step(Some(input), out) {
        Ok(state) if state.is_finished() => Some(session.validation() == Some(true)),
        Ok(_) => None,
        Err(_) => Some(false),
    }
}

/// An ApiVersions answer that lists SaslHandshake and SaslAuthenticate (which this front
/// serves, whatever the broker behind it lists).
fn with_sasl_apis(frame: Bytes, version: i16) -> Bytes {
    let mut body = frame.clone();
    let Ok(header) = ResponseHeader::decode(&mut body, 0) else {
        return frame;
    };
    let Ok(mut resp) = ApiVersionsResponse::decode(&mut body, version) else {
        return frame;
    };
    resp.api_keys.retain(|k| {
        k.api_key != ApiKey::SaslHandshake as i16 && k.api_key != ApiKey::SaslAuthenticate as i16
    });
    for (key, max) in [(ApiKey::SaslHandshake, 1), (ApiKey::SaslAuthenticate, 2)] {
        let mut v = ApiVersion::default();
        v.api_key = key as i16;
        v.min_version = 0;
        v.max_version = max;
        resp.api_keys.push(v);
    }
    let mut buf = BytesMut::new();
    header.encode(&mut buf, 0).unwrap();
    resp.encode(&mut buf, version).unwrap();
    buf.freeze()
}

fn answer<R: Encodable + HeaderVersion>(req: &RequestHeader, resp: &R, version: i16) -> Bytes {
    let mut header = ResponseHeader::default();
    header.correlation_id = req.correlation_id;
    let mut buf = BytesMut::new();
    header.encode(&mut buf, R::header_version(version)).unwrap();
    resp.encode(&mut buf, version).unwrap();
    buf.freeze()
}

/// The login's verdict.
struct Accepted;

impl Validation for Accepted {
    type Value = bool;
}

/// The front's user database.
struct Users(Logins);

const SALT: &[u8] = b"faststream-test-salt";
const ITERATIONS: u32 = 4096;

impl Users {
    /// Whether the OAUTHBEARER token presented (`auth=Bearer <token>`) is one we accept.
    fn token_known(&self, context: &Context<'_>) -> bool {
        context
            .get_ref::<OAuthBearerToken>()
            .map(|t| t.strip_prefix("Bearer ").unwrap_or(t))
            .is_some_and(|t| self.0.tokens.iter().any(|ok| ok == t))
    }

    fn password(&self, user: &str) -> Option<&str> {
        self.0
            .users
            .iter()
            .find(|(u, _)| u == user)
            .map(|(_, p)| p.as_str())
    }
}

/// Salted keys of a SCRAM login, as a broker stores them.
fn scram_keys<D>(password: &str) -> (Vec<u8>, Vec<u8>)
where
    D: sha2::Digest
        + sha2::digest::core_api::BlockSizeUser
        + sha2::digest::FixedOutputReset
        + Clone
        + Sync,
{
    use rsasl::mechanisms::scram::tools::{derive_keys, hash_password};
    let mut salted = Default::default();
    hash_password::<D>(password.as_bytes(), ITERATIONS, SALT, &mut salted);
    let (client_key, server_key) = derive_keys::<D>(salted.as_slice());
    let stored_key = D::digest(client_key);
    (stored_key.to_vec(), server_key.to_vec())
}

impl SessionCallback for Users {
    fn callback(
        &self,
        session: &SessionData,
        context: &Context<'_>,
        request: &mut Request<'_>,
    ) -> Result<(), SessionError> {
        let mech = session.mechanism().mechanism.as_str();
        if request.is::<OAuthBearerValidate>() {
            let known = self.token_known(context);
            let verdict = if known {
                Ok(())
            } else {
                Err(OAuthBearerError::new("invalid_token", None, None))
            };
            request.satisfy::<OAuthBearerValidate>(&verdict)?;
            return Ok(());
        }
        if let Some(password) = context.get_ref::<AuthId>().and_then(|u| self.password(u)) {
            let (stored, server) = match mech {
                "SCRAM-SHA-256" => scram_keys::<sha2::Sha256>(password),
                "SCRAM-SHA-512" => scram_keys::<sha2::Sha512>(password),
                _ => return Ok(()),
            };
            request.satisfy::<ScramStoredPassword<'_>>(&ScramStoredPassword::new(
                ITERATIONS, SALT, &stored, &server,
            ))?;
        }
        Ok(())
    }

    fn validate(
        &self,
        session: &SessionData,
        context: &Context<'_>,
        validate: &mut Validate<'_>,
    ) -> Result<(), ValidationError> {
        let ok = match session.mechanism().mechanism.as_str() {
            "PLAIN" => {
                let user = context.get_ref::<AuthId>();
                let given = context.get_ref::<Password>();
                matches!((user.and_then(|u| self.password(u)), given), (Some(p), Some(g)) if p.as_bytes() == g)
            }
            // SCRAM checked the proof against the stored keys: the user exists.
            m if m.starts_with("SCRAM-") => context
                .get_ref::<AuthId>()
                .is_some_and(|u| self.password(u).is_some()),
            "OAUTHBEARER" => self.token_known(context),
            _ => false,
        };
        validate.with::<Accepted, _>(|| Ok(ok))?;
        Ok(())
    }
}
