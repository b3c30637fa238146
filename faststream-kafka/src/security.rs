//! Connecting to secured clusters: Kafka's `security.protocol` (PLAINTEXT, SSL, SASL_PLAINTEXT,
//! SASL_SSL) with TLS (rustls, pure Rust: system or given root certificates, client
//! certificates) and SASL (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512, OAUTHBEARER).
//!
//! One [`Security`] value applies to every connection the runtime opens: the client's data
//! connections, the group coordinator's, partition leaders', reconnects included. Secrets never
//! appear in `Debug` output or logs.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use crate::error::KafkaError;

/// A boxed error, as token callbacks return it.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Returns an OAUTHBEARER token (RFC 6750), valid for long enough to log in. Called for every
/// new connection: cache the token and renew it before it expires.
pub type TokenCallback =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<String, BoxError>> + Send>> + Send + Sync>;

/// Kafka's `security.protocol`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SecurityProtocol {
    /// No TLS, no authentication.
    Plaintext,
    /// TLS, no SASL (a client certificate may authenticate).
    Ssl,
    /// SASL without TLS (credentials of PLAIN cross the network readable: only on trusted
    /// networks).
    SaslPlaintext,
    /// SASL over TLS: what managed clusters ask for.
    SaslSsl,
}

/// How to connect to the cluster: the default is plaintext.
///
/// ```
/// use faststream_kafka::{Sasl, Security, Tls};
/// let security = Security::sasl_ssl(Tls::system_roots(), Sasl::scram_sha512("svc", "secret"));
/// ```
#[derive(Clone, Default)]
pub struct Security {
    tls: Option<Tls>,
    sasl: Option<Sasl>,
}

impl Security {
    /// PLAINTEXT.
    pub fn plaintext() -> Self {
        Self::default()
    }

    /// SSL: TLS without SASL.
    pub fn ssl(tls: Tls) -> Self {
        Self {
            tls: Some(tls),
            sasl: None,
        }
    }

    /// SASL_PLAINTEXT.
    pub fn sasl_plaintext(sasl: Sasl) -> Self {
        Self {
            tls: None,
            sasl: Some(sasl),
        }
    }

    /// SASL_SSL.
    pub fn sasl_ssl(tls: Tls, sasl: Sasl) -> Self {
        Self {
            tls: Some(tls),
            sasl: Some(sasl),
        }
    }

    /// The security protocol this amounts to.
    pub fn protocol(&self) -> SecurityProtocol {
        match (&self.tls, &self.sasl) {
            (None, None) => SecurityProtocol::Plaintext,
            (Some(_), None) => SecurityProtocol::Ssl,
            (None, Some(_)) => SecurityProtocol::SaslPlaintext,
            (Some(_), Some(_)) => SecurityProtocol::SaslSsl,
        }
    }

    /// Reads the settings from the environment, with the names of Kafka's client properties:
    ///
    /// | Variable | Values |
    /// |---|---|
    /// | `KAFKA_SECURITY_PROTOCOL` | `PLAINTEXT` (default), `SSL`, `SASL_PLAINTEXT`, `SASL_SSL` |
    /// | `KAFKA_SASL_MECHANISM` | `PLAIN` (default), `SCRAM-SHA-256`, `SCRAM-SHA-512` |
    /// | `KAFKA_SASL_USERNAME`, `KAFKA_SASL_PASSWORD` | the credentials |
    /// | `KAFKA_SSL_CA_LOCATION` | PEM file of the CA certificates to trust (default: the system's) |
    /// | `KAFKA_SSL_CERTIFICATE_LOCATION`, `KAFKA_SSL_KEY_LOCATION` | PEM files of a client certificate and its key (mTLS) |
    /// | `KAFKA_SSL_SERVER_NAME` | the name to check the brokers' certificates against, instead of their host names |
    ///
    /// OAUTHBEARER needs a token callback, so it is configured in code only.
    pub fn from_env() -> Result<Self, KafkaError> {
        Self::from_lookup(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
    }

    fn from_lookup(var: impl Fn(&str) -> Option<String>) -> Result<Self, KafkaError> {
        let bad = |what: String| KafkaError::Security(what);
        let protocol = var("KAFKA_SECURITY_PROTOCOL").unwrap_or_else(|| "PLAINTEXT".into());
        let (tls, sasl) = match protocol.to_ascii_uppercase().as_str() {
            "PLAINTEXT" => (false, false),
            "SSL" => (true, false),
            "SASL_PLAINTEXT" => (false, true),
            "SASL_SSL" => (true, true),
            other => {
                return Err(bad(format!(
                    "KAFKA_SECURITY_PROTOCOL={other:?}: expected PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL"
                )))
            }
        };
        let tls = if tls {
            let mut t = match var("KAFKA_SSL_CA_LOCATION") {
                Some(path) => Tls::ca_file(path)?,
                None => Tls::system_roots(),
            };
            match (
                var("KAFKA_SSL_CERTIFICATE_LOCATION"),
                var("KAFKA_SSL_KEY_LOCATION"),
            ) {
                (Some(cert), Some(key)) => t = t.client_cert_files(cert, key)?,
                (None, None) => {}
                _ => {
                    return Err(bad(
                        "KAFKA_SSL_CERTIFICATE_LOCATION and KAFKA_SSL_KEY_LOCATION go together"
                            .into(),
                    ))
                }
            }
            if let Some(name) = var("KAFKA_SSL_SERVER_NAME") {
                t = t.server_name(name);
            }
            Some(t)
        } else {
            None
        };
        let sasl = if sasl {
            let mechanism = var("KAFKA_SASL_MECHANISM").unwrap_or_else(|| "PLAIN".into());
            let user = var("KAFKA_SASL_USERNAME")
                .ok_or_else(|| bad("KAFKA_SASL_USERNAME is not set".into()))?;
            let password = var("KAFKA_SASL_PASSWORD")
                .ok_or_else(|| bad("KAFKA_SASL_PASSWORD is not set".into()))?;
            Some(match mechanism.to_ascii_uppercase().as_str() {
                "PLAIN" => Sasl::plain(user, password),
                "SCRAM-SHA-256" => Sasl::scram_sha256(user, password),
                "SCRAM-SHA-512" => Sasl::scram_sha512(user, password),
                "OAUTHBEARER" => {
                    return Err(bad(
                        "KAFKA_SASL_MECHANISM=OAUTHBEARER needs a token callback: use Sasl::oauthbearer in code"
                            .into(),
                    ))
                }
                other => {
                    return Err(bad(format!(
                        "KAFKA_SASL_MECHANISM={other:?}: expected PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512"
                    )))
                }
            })
        } else {
            None
        };
        Ok(Self { tls, sasl })
    }

    pub(crate) fn tls(&self) -> Option<&Tls> {
        self.tls.as_ref()
    }

    pub(crate) fn sasl(&self) -> Option<&Sasl> {
        self.sasl.as_ref()
    }
}

impl std::fmt::Debug for Security {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Security")
            .field("protocol", &self.protocol())
            .field("tls", &self.tls)
            .field("sasl", &self.sasl)
            .finish()
    }
}

/// TLS settings: which certificates to trust, and an optional client certificate.
#[derive(Clone)]
pub struct Tls {
    /// `None`: the system's root certificates.
    roots: Option<Vec<CertificateDer<'static>>>,
    client: Option<(Vec<CertificateDer<'static>>, Arc<PrivateKeyDer<'static>>)>,
    server_name: Option<String>,
}

impl Tls {
    /// Trusts the operating system's root certificates (what public managed clusters need).
    pub fn system_roots() -> Self {
        Self {
            roots: None,
            client: None,
            server_name: None,
        }
    }

    /// Trusts the CA certificates of a PEM document (a private CA).
    pub fn ca_pem(pem: &[u8]) -> Result<Self, KafkaError> {
        let roots = certificates(pem, "the CA PEM")?;
        Ok(Self {
            roots: Some(roots),
            client: None,
            server_name: None,
        })
    }

    /// Trusts the CA certificates of a PEM file.
    pub fn ca_file(path: impl AsRef<std::path::Path>) -> Result<Self, KafkaError> {
        Self::ca_pem(&read(path.as_ref(), "CA certificate")?)
    }

    /// Presents a client certificate (chain) and its private key, PEM-encoded (mTLS).
    pub fn client_cert_pem(mut self, cert: &[u8], key: &[u8]) -> Result<Self, KafkaError> {
        let chain = certificates(cert, "the client certificate PEM")?;
        let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| {
            KafkaError::Security(format!(
                "the client key PEM holds no usable private key: {e}"
            ))
        })?;
        self.client = Some((chain, Arc::new(key)));
        Ok(self)
    }

    /// [`Tls::client_cert_pem`] from files.
    pub fn client_cert_files(
        self,
        cert: impl AsRef<std::path::Path>,
        key: impl AsRef<std::path::Path>,
    ) -> Result<Self, KafkaError> {
        let cert = read(cert.as_ref(), "client certificate")?;
        let key = read(key.as_ref(), "client key")?;
        self.client_cert_pem(&cert, &key)
    }

    /// Checks the brokers' certificates against `name` instead of the host names they are
    /// reached at (for brokers reached through an address their certificates do not name).
    pub fn server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = Some(name.into());
        self
    }

    /// The rustls configuration every connection uses.
    pub(crate) fn client_config(&self) -> Result<Arc<rustls::ClientConfig>, KafkaError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        match &self.roots {
            Some(certs) => {
                for cert in certs {
                    roots.add(cert.clone()).map_err(|e| {
                        KafkaError::Security(format!("a CA certificate cannot be used: {e}"))
                    })?;
                }
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                for cert in found.certs {
                    let _ = roots.add(cert);
                }
                if roots.is_empty() {
                    return Err(KafkaError::Security(format!(
                        "no system root certificates found ({} errors); give the CA with Tls::ca_file or KAFKA_SSL_CA_LOCATION",
                        found.errors.len()
                    )));
                }
            }
        }
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| KafkaError::Security(format!("TLS setup: {e}")))?;
        let builder = match &self.server_name {
            None => builder.with_root_certificates(roots),
            Some(name) => {
                let name = ServerName::try_from(name.clone()).map_err(|e| {
                    KafkaError::Security(format!("TLS server name {name:?} is not valid: {e}"))
                })?;
                let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .map_err(|e| KafkaError::Security(format!("TLS setup: {e}")))?;
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(NamedVerifier { inner, name }))
            }
        };
        let config = match &self.client {
            None => builder.with_no_client_auth(),
            Some((chain, key)) => builder
                .with_client_auth_cert(chain.clone(), key.clone_key())
                .map_err(|e| {
                    KafkaError::Security(format!("the client certificate cannot be used: {e}"))
                })?,
        };
        Ok(Arc::new(config))
    }

    /// The name to check a broker's certificate against.
    /// Whether a client certificate is configured (for mTLS).
    pub(crate) fn has_client_cert(&self) -> bool {
        self.client.is_some()
    }

    pub(crate) fn name_for(&self, host: &str) -> Result<ServerName<'static>, KafkaError> {
        ServerName::try_from(host.to_owned())
            .map_err(|e| KafkaError::Security(format!("{host:?} is not a valid TLS name: {e}")))
    }
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field(
                "roots",
                &match &self.roots {
                    None => "system".to_owned(),
                    Some(c) => format!("{} CA certificate(s)", c.len()),
                },
            )
            .field("client_cert", &self.client.is_some())
            .field("server_name", &self.server_name)
            .finish()
    }
}

/// Verifies certificates against a fixed name instead of the host connected to.
#[derive(Debug)]
struct NamedVerifier {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    name: ServerName<'static>,
}

impl ServerCertVerifier for NamedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, &self.name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

fn read(path: &std::path::Path, what: &str) -> Result<Vec<u8>, KafkaError> {
    std::fs::read(path)
        .map_err(|e| KafkaError::Security(format!("cannot read the {what} {path:?}: {e}")))
}

fn certificates(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, KafkaError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| KafkaError::Security(format!("{what} cannot be read: {e}")))?;
    if certs.is_empty() {
        return Err(KafkaError::Security(format!("{what} holds no certificate")));
    }
    Ok(certs)
}

/// SASL authentication.
#[derive(Clone)]
#[non_exhaustive]
pub enum Sasl {
    /// PLAIN: user name and password as they are (use it over TLS only).
    Plain {
        /// The user name.
        username: String,
        /// The password.
        password: String,
    },
    /// SCRAM-SHA-256 (RFC 7677).
    ScramSha256 {
        /// The user name.
        username: String,
        /// The password.
        password: String,
    },
    /// SCRAM-SHA-512.
    ScramSha512 {
        /// The user name.
        username: String,
        /// The password.
        password: String,
    },
    /// OAUTHBEARER (RFC 7628) with tokens from a callback (OIDC, AWS MSK IAM token libraries).
    OAuthBearer(TokenCallback),
}

impl Sasl {
    /// PLAIN.
    pub fn plain(username: impl Into<String>, password: impl Into<String>) -> Self {
        Sasl::Plain {
            username: username.into(),
            password: password.into(),
        }
    }

    /// SCRAM-SHA-256.
    pub fn scram_sha256(username: impl Into<String>, password: impl Into<String>) -> Self {
        Sasl::ScramSha256 {
            username: username.into(),
            password: password.into(),
        }
    }

    /// SCRAM-SHA-512.
    pub fn scram_sha512(username: impl Into<String>, password: impl Into<String>) -> Self {
        Sasl::ScramSha512 {
            username: username.into(),
            password: password.into(),
        }
    }

    /// OAUTHBEARER: `token` is called for each new connection and returns a token.
    pub fn oauthbearer<F, Fut, E>(token: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, E>> + Send + 'static,
        E: Into<BoxError>,
    {
        Sasl::OAuthBearer(Arc::new(move || {
            let fut = token();
            Box::pin(async move { fut.await.map_err(Into::into) })
        }))
    }

    /// The mechanism's name on the wire.
    pub fn mechanism(&self) -> &'static str {
        match self {
            Sasl::Plain { .. } => "PLAIN",
            Sasl::ScramSha256 { .. } => "SCRAM-SHA-256",
            Sasl::ScramSha512 { .. } => "SCRAM-SHA-512",
            Sasl::OAuthBearer(_) => "OAUTHBEARER",
        }
    }

    /// Who logs in, for error messages (never the secret).
    pub(crate) fn who(&self) -> String {
        match self {
            Sasl::Plain { username, .. }
            | Sasl::ScramSha256 { username, .. }
            | Sasl::ScramSha512 { username, .. } => {
                format!("SASL {} as user {username:?}", self.mechanism())
            }
            Sasl::OAuthBearer(_) => "SASL OAUTHBEARER".into(),
        }
    }

    /// The same settings for the rskafka client.
    pub(crate) fn for_client(&self) -> rskafka::client::SaslConfig {
        use rskafka::client::{Credentials, OauthBearerCredentials, SaslConfig};
        let creds = |u: &String, p: &String| Credentials::new(u.clone(), p.clone());
        match self {
            Sasl::Plain { username, password } => SaslConfig::Plain(creds(username, password)),
            Sasl::ScramSha256 { username, password } => {
                SaslConfig::ScramSha256(creds(username, password))
            }
            Sasl::ScramSha512 { username, password } => {
                SaslConfig::ScramSha512(creds(username, password))
            }
            Sasl::OAuthBearer(token) => {
                let token = token.clone();
                SaslConfig::Oauthbearer(OauthBearerCredentials {
                    callback: Arc::new(move || token()),
                    authz_id: None,
                    bearer_kvs: Vec::new(),
                })
            }
        }
    }

    /// A client session of the mechanism (fetching a token first for OAUTHBEARER).
    pub(crate) async fn session(&self) -> Result<rsasl::prelude::Session, String> {
        use rsasl::prelude::{Mechname, SASLClient, SASLConfig};
        let config = match self {
            Sasl::Plain { username, password }
            | Sasl::ScramSha256 { username, password }
            | Sasl::ScramSha512 { username, password } => {
                SASLConfig::with_credentials(None, username.clone(), password.clone())
                    .map_err(|e| e.to_string())?
            }
            Sasl::OAuthBearer(callback) => {
                let token = callback()
                    .await
                    .map_err(|e| format!("the OAUTHBEARER token callback failed: {e}"))?;
                SASLConfig::builder()
                    .with_default_mechanisms()
                    .with_callback(Bearer(token))
                    .map_err(|e| e.to_string())?
            }
        };
        let mech = Mechname::parse(self.mechanism().as_bytes()).map_err(|e| e.to_string())?;
        SASLClient::new(config)
            .start_suggested(&[mech])
            .map_err(|e| format!("cannot start {}: {e}", self.mechanism()))
    }
}

/// Hands the OAUTHBEARER token to the SASL session.
struct Bearer(String);

impl rsasl::callback::SessionCallback for Bearer {
    fn callback(
        &self,
        _session: &rsasl::callback::SessionData,
        _context: &rsasl::callback::Context<'_>,
        request: &mut rsasl::callback::Request<'_>,
    ) -> Result<(), rsasl::prelude::SessionError> {
        use rsasl::property::{OAuthBearerKV, OAuthBearerToken};
        request
            .satisfy::<OAuthBearerKV>(&[])?
            .satisfy::<OAuthBearerToken>(&self.0)?;
        Ok(())
    }
}

impl std::fmt::Debug for Sasl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Sasl::Plain { username, .. }
            | Sasl::ScramSha256 { username, .. }
            | Sasl::ScramSha512 { username, .. } => f
                .debug_struct(self.mechanism())
                .field("username", username)
                .field("password", &"<redacted>")
                .finish(),
            Sasl::OAuthBearer(_) => f.write_str("OAUTHBEARER(<token callback>)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn environment_names_kafka_users_know() {
        let s = Security::from_lookup(env(&[
            ("KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT"),
            ("KAFKA_SASL_MECHANISM", "SCRAM-SHA-512"),
            ("KAFKA_SASL_USERNAME", "svc"),
            ("KAFKA_SASL_PASSWORD", "hunter2"),
        ]))
        .unwrap();
        assert_eq!(s.protocol(), SecurityProtocol::SaslPlaintext);
        assert_eq!(s.sasl().unwrap().mechanism(), "SCRAM-SHA-512");
        let debug = format!("{s:?}");
        assert!(
            debug.contains("svc") && !debug.contains("hunter2"),
            "{debug}"
        );
        assert_eq!(
            Security::from_lookup(env(&[])).unwrap().protocol(),
            SecurityProtocol::Plaintext
        );
    }

    #[test]
    fn bad_environment_names_the_variable() {
        let err = Security::from_lookup(env(&[("KAFKA_SECURITY_PROTOCOL", "TLS")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("KAFKA_SECURITY_PROTOCOL"), "{err}");
        let err = Security::from_lookup(env(&[("KAFKA_SECURITY_PROTOCOL", "SASL_SSL")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("KAFKA_SASL_USERNAME"), "{err}");
        let err = Security::from_lookup(env(&[
            ("KAFKA_SECURITY_PROTOCOL", "SSL"),
            ("KAFKA_SSL_CA_LOCATION", "/nonexistent/ca.pem"),
        ]))
        .unwrap_err()
        .to_string();
        assert!(err.contains("/nonexistent/ca.pem"), "{err}");
    }
}
