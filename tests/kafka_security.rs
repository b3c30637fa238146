//! Security against Apache Kafka's own listeners: one Kafka node of this test binary's own
//! (`scripts/kafka-dev kafka-up --secure`, whatever broker the rest of the suite runs against)
//! with a SASL_SSL listener (PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512; the SCRAM user written into
//! the cluster's metadata at format time) and an SSL listener that requires a client
//! certificate, serving a certificate of a throwaway CA this test makes. Every connection the
//! runtime opens (bootstrap, metadata, leaders, the group coordinator) goes to those listeners;
//! inputs are written and outputs read by an independent client (rskafka) over the same ones.
//!
//! `tests/security.rs` covers what Kafka cannot show here (OAUTHBEARER, a certificate naming
//! another host) with the suite's own TLS/SASL front.

mod common;

use std::sync::OnceLock;
use std::time::Duration;

use common::secure::{raw_client, Pki};
use common::*;
use faststream::kafka::{KafkaBroker, Sasl, Security, Tls};
use faststream::{publisher, routes, subscriber, FastStream};
use rskafka::client::{Credentials, SaslConfig};

const USER: &str = "svc";
const PASSWORD: &str = "s3cret-Pass-42";

/// The secured node of this binary, its CA and its two listeners' addresses.
struct Secured {
    pki: Pki,
    sasl_ssl: String,
    mtls: String,
    plaintext: String,
}

fn secured() -> &'static Secured {
    static CLUSTER: OnceLock<Secured> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        init_logs();
        let pki = Pki::new();
        let cluster = KafkaCluster::up_secure(1, &pki, USER, PASSWORD);
        let (sasl_ssl, mtls) = cluster.secure_listeners();
        let plaintext = cluster.bootstrap.clone();
        // Kept for the life of the process; the script's watcher ends it with this process.
        std::mem::forget(cluster);
        Secured {
            pki,
            sasl_ssl,
            mtls,
            plaintext,
        }
    })
}

fn ca() -> Tls {
    Tls::ca_pem(secured().pki.ca_pem.as_bytes()).unwrap()
}

fn with_client_cert(tls: Tls) -> Tls {
    let pki = &secured().pki;
    tls.client_cert_pem(
        pki.client_cert_pem.as_bytes(),
        pki.client_key_pem.as_bytes(),
    )
    .unwrap()
}

/// The independent client over SASL_SSL (SCRAM-SHA-512).
async fn raw_sasl_ssl() -> rskafka::client::Client {
    let s = secured();
    raw_client(
        &s.sasl_ssl,
        Some((&s.pki, false)),
        Some(SaslConfig::ScramSha512(Credentials::new(
            USER.into(),
            PASSWORD.into(),
        ))),
    )
    .await
}

#[subscriber(
    "ksec-in",
    group_id = "ksec",
    auto_offset_reset = "earliest",
    session_timeout_ms = 6000,
    heartbeat_interval_ms = 500
)]
#[publisher("ksec-out")]
async fn relay(body: String) -> String {
    format!("relayed {body}")
}

/// A consumer-group relay of 30 messages over 3 partitions to `bootstrap` with `security`:
/// every output present, in order per partition.
async fn relay_over(bootstrap: &str, security: Security, raw: &rskafka::client::Client) {
    let prefix = unique_prefix("ksec");
    let input = format!("{prefix}ksec-in");
    create_topic(raw, &input, 3).await;
    let app = FastStream::new(
        KafkaBroker::builder(bootstrap)
            .security(security)
            .connect_timeout(Duration::from_secs(10))
            .build(),
    )
    .with_routes(routes![relay])
    .topic_prefix(&prefix);
    let running = start(app).await;
    for p in 0..3 {
        let records = (0..10)
            .map(|i| record(None, format!("{p}-{i}").as_bytes(), &[]))
            .collect();
        produce(raw, &input, p, records).await;
    }
    let out = read(raw, &format!("{prefix}ksec-out"), 30).await;
    let mut got: Vec<String> = out.values().flatten().map(text).collect();
    got.sort();
    let mut want: Vec<String> = (0..3)
        .flat_map(|p| (0..10).map(move |i| format!("relayed {p}-{i}")))
        .collect();
    want.sort();
    assert_eq!(got, want, "every input relayed once");
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_relays_over_kafkas_sasl_ssl_listener_with_each_mechanism() {
    let raw = raw_sasl_ssl().await;
    let addr = &secured().sasl_ssl;
    for sasl in [
        Sasl::scram_sha512(USER, PASSWORD),
        Sasl::scram_sha256(USER, PASSWORD),
        Sasl::plain(USER, PASSWORD),
    ] {
        relay_over(addr, Security::sasl_ssl(ca(), sasl), &raw).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_relays_over_kafkas_ssl_listener_with_a_client_certificate() {
    let s = secured();
    let raw = raw_client(&s.mtls, Some((&s.pki, true)), None).await;
    relay_over(&s.mtls, Security::ssl(with_client_cert(ca())), &raw).await;
}

/// Starts the relay with `security` against `bootstrap` and returns its startup error.
async fn startup_error(bootstrap: &str, security: Security) -> String {
    common::startup_error(bootstrap, security, routes![relay]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_logins_and_untrusted_certificates_fail_at_startup_with_what_went_wrong() {
    let s = secured();
    for sasl in [
        Sasl::scram_sha512(USER, "wrong-password"),
        Sasl::scram_sha256("nobody", PASSWORD),
        Sasl::plain(USER, "wrong-password"),
    ] {
        let err = startup_error(&s.sasl_ssl, Security::sasl_ssl(ca(), sasl)).await;
        assert!(
            err.contains("authentication") && err.contains("refused the login"),
            "refused login: {err}"
        );
        assert!(
            !err.contains("wrong-password"),
            "the password is not in the error: {err}"
        );
    }

    // Kafka's certificate is signed by the test's CA, not by a system root.
    let err = startup_error(
        &s.sasl_ssl,
        Security::sasl_ssl(Tls::system_roots(), Sasl::scram_sha512(USER, PASSWORD)),
    )
    .await;
    assert!(err.contains("not trusted"), "untrusted certificate: {err}");

    let err = startup_error(&s.mtls, Security::ssl(ca())).await;
    assert!(
        err.contains("requires a client certificate"),
        "mTLS listener without a client certificate: {err}"
    );

    // A client certificate of another CA.
    let stranger = Pki::new();
    let tls = ca()
        .client_cert_pem(
            stranger.client_cert_pem.as_bytes(),
            stranger.client_key_pem.as_bytes(),
        )
        .unwrap();
    let err = startup_error(&s.mtls, Security::ssl(tls)).await;
    assert!(
        err.contains("refused our client certificate"),
        "a client certificate the broker does not trust: {err}"
    );

    let err = startup_error(&s.sasl_ssl, Security::plaintext()).await;
    assert!(
        err.contains("TLS listener"),
        "plaintext to a TLS listener: {err}"
    );

    let err = startup_error(&s.plaintext, Security::ssl(ca())).await;
    assert!(
        err.contains("plaintext listener"),
        "TLS to a plaintext listener: {err}"
    );

    let err = startup_error(
        &s.plaintext,
        Security::sasl_plaintext(Sasl::scram_sha512(USER, PASSWORD)),
    )
    .await;
    assert!(
        err.contains("offers no SASL mechanism"),
        "SASL to a listener without SASL: {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hello_example_runs_on_kafkas_sasl_ssl_listener_from_environment_variables() {
    let s = secured();
    let raw = raw_sasl_ssl().await;
    // The example's topics are fixed; this node is the binary's own and no other test uses them.
    create_topic(&raw, "in_topic", 1).await;
    let dir = std::env::temp_dir().join(unique_prefix("kpki"));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, &s.pki.ca_pem).unwrap();
    let child = spawn_example(
        "hello",
        "",
        &[
            ("KAFKA_BOOTSTRAP", &s.sasl_ssl),
            ("KAFKA_SECURITY_PROTOCOL", "SASL_SSL"),
            ("KAFKA_SASL_MECHANISM", "SCRAM-SHA-256"),
            ("KAFKA_SASL_USERNAME", USER),
            ("KAFKA_SASL_PASSWORD", PASSWORD),
            ("KAFKA_SSL_CA_LOCATION", ca.to_str().unwrap()),
        ],
    )
    .await;
    produce(
        &raw,
        "in_topic",
        0,
        vec![record(None, br#"{"user": "ann", "user_id": 7}"#, &[])],
    )
    .await;
    let out = read(&raw, "out-topic", 1).await;
    assert_eq!(text(&out[&0][0]), "User: 7 - ann registered");
    terminate(child).await;
}
