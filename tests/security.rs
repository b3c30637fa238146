//! Secured clusters: TLS, mTLS, SASL PLAIN, SCRAM-SHA-256/512 and OAUTHBEARER, on every
//! connection the runtime opens, and each way a connection can fail, reported at startup.
//!
//! The local broker cannot do TLS or keep SASL users, so each test puts the secured front of
//! `common::secure` before a broker of its own, which advertises the front: every connection
//! (bootstrap, metadata, partition leaders, group coordinator) goes through it. The front
//! itself is checked with an independent client (aiokafka) first.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::secure::{self, FrontConfig, Logins, Pki, SecureFront};
use common::*;
use faststream::extract::{State, Topic};
use faststream::kafka::{KafkaBroker, Sasl, Security, Tls};
use faststream::{publisher, routes, subscriber, FastStream};

/// A broker of the test's own behind a secured front; returns both and the front's address.
async fn secured(config: FrontConfig) -> (OwnBroker, SecureFront, String) {
    init_logs();
    let port = free_port();
    let (broker, broker_addr) = OwnBroker::start(Some(port)).await;
    let front = SecureFront::start_on(port, broker_addr, config).await;
    (broker, front, format!("127.0.0.1:{port}"))
}

/// A front that only terminates TLS (requiring a client certificate with `client_auth`).
fn tls_only(pki: &Pki, client_auth: bool) -> FrontConfig {
    FrontConfig {
        tls: Some(pki.server_config(client_auth)),
        sasl: None,
    }
}

fn logins(mechanisms: &[&'static str]) -> Logins {
    Logins {
        mechanisms: mechanisms.to_vec(),
        users: vec![("svc".into(), "s3cret-pass".into())],
        tokens: vec!["token-123".into()],
    }
}

/// The independent check: aiokafka produces and consumes through the front.
async fn aiokafka(bootstrap: &str, args: &[&str]) -> Result<(), String> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = tokio::process::Command::new(python())
        .arg(root.join("tests/interop/secure_client.py"))
        .arg(bootstrap)
        .arg(unique_prefix("aio").replace('.', "-") + "check")
        .args(args)
        .output();
    let out = tokio::time::timeout(TIMEOUT, out)
        .await
        .expect("aiokafka finishes")
        .expect("python from scripts/kafka-dev's venv runs");
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn write_pem(dir: &std::path::Path, name: &str, pem: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, pem).unwrap();
    path.to_str().unwrap().to_owned()
}

fn temp_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(unique_prefix("pki"));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_secured_front_works_for_an_independent_client() {
    let pki = Pki::new();
    let dir = temp_dir();
    let ca = write_pem(&dir, "ca.pem", &pki.ca_pem);
    let cert = write_pem(&dir, "client.pem", &pki.client_cert_pem);
    let key = write_pem(&dir, "client.key", &pki.client_key_pem);

    let (_b, _f, tls_port) = secured(tls_only(&pki, false)).await;
    aiokafka(&tls_port, &["SSL", "--ca", &ca]).await.unwrap();

    let (_b, _f, mtls) = secured(tls_only(&pki, true)).await;
    aiokafka(&mtls, &["SSL", "--ca", &ca, "--cert", &cert, "--key", &key])
        .await
        .unwrap();
    aiokafka(&mtls, &["SSL", "--ca", &ca])
        .await
        .expect_err("mTLS refuses a client without a certificate");

    let all = ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"];
    let (_b, front, plain) = secured(FrontConfig {
        tls: None,
        sasl: Some(logins(&all)),
    })
    .await;
    for mech in ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] {
        aiokafka(&plain, &["SASL_PLAINTEXT", mech, "svc", "s3cret-pass"])
            .await
            .unwrap_or_else(|e| panic!("{mech}: {e}"));
        aiokafka(&plain, &["SASL_PLAINTEXT", mech, "svc", "wrong"])
            .await
            .expect_err("a wrong password is refused");
    }
    aiokafka(
        &plain,
        &["SASL_PLAINTEXT", "OAUTHBEARER", "--token", "token-123"],
    )
    .await
    .unwrap();
    aiokafka(
        &plain,
        &["SASL_PLAINTEXT", "OAUTHBEARER", "--token", "stolen"],
    )
    .await
    .expect_err("an unknown token is refused");
    assert!(front.logins.load(Ordering::SeqCst) > 0);

    let (_b, _f, sasl_ssl) = secured(FrontConfig {
        tls: Some(pki.server_config(false)),
        sasl: Some(logins(&["SCRAM-SHA-512"])),
    })
    .await;
    aiokafka(
        &sasl_ssl,
        &[
            "SASL_SSL",
            "SCRAM-SHA-512",
            "svc",
            "s3cret-pass",
            "--ca",
            &ca,
        ],
    )
    .await
    .unwrap();
}

// ---------------------------------------------------------------------------------------------
// Our service through the front.

/// (topic, body) of every message handled.
static SEEN: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

#[subscriber("sec-in", auto_offset_reset = "earliest")]
#[publisher("sec-out")]
async fn relay(body: String, topic: Topic) -> String {
    SEEN.lock()
        .unwrap()
        .push((topic.0.to_string(), body.clone()));
    format!("relayed {body}")
}

/// A plain rskafka client through the front (independent of the code under test).
async fn raw_through(
    bootstrap: &str,
    pki: Option<(&Pki, bool)>,
    sasl: Option<rskafka::client::SaslConfig>,
) -> rskafka::client::Client {
    secure::raw_client(bootstrap, pki, sasl).await
}

/// Runs the relay with `security` through a front, checks 20 messages arrive relayed.
async fn relay_through(
    front: FrontConfig,
    pki: Option<(&Pki, bool)>,
    raw_sasl: Option<rskafka::client::SaslConfig>,
    security: Security,
) -> SecureFront {
    let (_broker, front, bootstrap) = secured(front).await;
    let client = raw_through(&bootstrap, pki, raw_sasl).await;
    let prefix = unique_prefix("sec");
    let input = format!("{prefix}sec-in");
    create_topic(&client, &input, 1).await;
    let app = FastStream::new(
        KafkaBroker::builder(&bootstrap)
            .security(security)
            .connect_timeout(Duration::from_secs(10))
            .build(),
    )
    .with_routes(routes![relay])
    .topic_prefix(&prefix);
    let running = start(app).await;
    produce(
        &client,
        &input,
        0,
        (0..20)
            .map(|i| record(None, i.to_string().as_bytes(), &[]))
            .collect(),
    )
    .await;
    let out = read(&client, &format!("{prefix}sec-out"), 20).await;
    let got: Vec<String> = out.values().flatten().map(text).collect();
    let want: Vec<String> = (0..20).map(|i| format!("relayed {i}")).collect();
    assert_eq!(got, want);
    running.stop().await.unwrap();
    front
}

fn scram512() -> rskafka::client::SaslConfig {
    rskafka::client::SaslConfig::ScramSha512(rskafka::client::Credentials::new(
        "svc".into(),
        "s3cret-pass".into(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_over_sasl_ssl_with_scram_sha_512() {
    let pki = Pki::new();
    let front = relay_through(
        FrontConfig {
            tls: Some(pki.server_config(false)),
            sasl: Some(logins(&["SCRAM-SHA-512"])),
        },
        Some((&pki, false)),
        Some(scram512()),
        Security::sasl_ssl(
            Tls::ca_pem(pki.ca_pem.as_bytes()).unwrap(),
            Sasl::scram_sha512("svc", "s3cret-pass"),
        ),
    )
    .await;
    // The raw client's connection, our probe, the client library's data connections and
    // our own leader connections: every one logged in.
    assert!(front.logins.load(Ordering::SeqCst) >= 3);
    assert_eq!(
        front.logins.load(Ordering::SeqCst),
        front.passed.load(Ordering::SeqCst),
        "no connection went through without logging in"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_over_sasl_plaintext_with_plain_and_scram_sha_256() {
    for (mech, ours, raw) in [
        (
            "PLAIN",
            Sasl::plain("svc", "s3cret-pass"),
            rskafka::client::SaslConfig::Plain(rskafka::client::Credentials::new(
                "svc".into(),
                "s3cret-pass".into(),
            )),
        ),
        (
            "SCRAM-SHA-256",
            Sasl::scram_sha256("svc", "s3cret-pass"),
            rskafka::client::SaslConfig::ScramSha256(rskafka::client::Credentials::new(
                "svc".into(),
                "s3cret-pass".into(),
            )),
        ),
    ] {
        relay_through(
            FrontConfig {
                tls: None,
                sasl: Some(logins(&[mech])),
            },
            None,
            Some(raw),
            Security::sasl_plaintext(ours),
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_over_tls_and_mtls() {
    let pki = Pki::new();
    relay_through(
        tls_only(&pki, false),
        Some((&pki, false)),
        None,
        Security::ssl(Tls::ca_pem(pki.ca_pem.as_bytes()).unwrap()),
    )
    .await;
    // mTLS: the front requires a client certificate signed by its CA.
    let tls = Tls::ca_pem(pki.ca_pem.as_bytes())
        .unwrap()
        .client_cert_pem(
            pki.client_cert_pem.as_bytes(),
            pki.client_key_pem.as_bytes(),
        )
        .unwrap();
    relay_through(
        tls_only(&pki, true),
        Some((&pki, true)),
        None,
        Security::ssl(tls),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_with_oauthbearer_tokens_from_a_callback() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let sasl = Sasl::oauthbearer(move || {
        counted.fetch_add(1, Ordering::SeqCst);
        async { Ok::<_, std::io::Error>("token-123".to_owned()) }
    });
    let raw = rskafka::client::SaslConfig::Oauthbearer(rskafka::client::OauthBearerCredentials {
        callback: Arc::new(|| Box::pin(async { Ok("token-123".to_owned()) })),
        authz_id: None,
        bearer_kvs: Vec::new(),
    });
    relay_through(
        FrontConfig {
            tls: None,
            sasl: Some(logins(&["OAUTHBEARER"])),
        },
        None,
        Some(raw),
        Security::sasl_plaintext(sasl),
    )
    .await;
    assert!(
        calls.load(Ordering::SeqCst) >= 2,
        "a token for each connection"
    );
}

#[derive(Clone)]
struct Member(&'static str);

#[subscriber("sec-shared", group_id = "secure", auto_offset_reset = "earliest")]
async fn shared(body: String, topic: Topic, member: State<Member>) {
    SEEN.lock()
        .unwrap()
        .push((topic.0.to_string(), format!("{} {body}", member.0 .0)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_member_group_over_sasl_ssl_shares_partitions_and_loses_nothing() {
    let pki = Pki::new();
    let (_broker, _front, bootstrap) = secured(FrontConfig {
        tls: Some(pki.server_config(false)),
        sasl: Some(logins(&["SCRAM-SHA-512"])),
    })
    .await;
    let client = raw_through(&bootstrap, Some((&pki, false)), Some(scram512())).await;
    let prefix = unique_prefix("secgroup");
    let topic = format!("{prefix}sec-shared");
    create_topic(&client, &topic, 2).await;
    let member = |name: &'static str| {
        let security = Security::sasl_ssl(
            Tls::ca_pem(pki.ca_pem.as_bytes()).unwrap(),
            Sasl::scram_sha512("svc", "s3cret-pass"),
        );
        FastStream::new(
            KafkaBroker::builder(&bootstrap)
                .security(security)
                .session_timeout(Duration::from_secs(2))
                .heartbeat_interval(Duration::from_millis(300))
                .build(),
        )
        .with_routes(routes![shared])
        .with_state(Member(name))
        .topic_prefix(&prefix)
    };
    let first = start(member("first")).await;
    let second = start(member("second")).await;
    for p in 0..2 {
        produce(
            &client,
            &topic,
            p,
            (0..50)
                .map(|i| record(None, format!("{p}-{i}").as_bytes(), &[]))
                .collect(),
        )
        .await;
    }
    let deadline = Instant::now() + TIMEOUT;
    let handled = loop {
        let handled: Vec<String> = SEEN
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, _)| *t == topic)
            .map(|(_, b)| b.clone())
            .collect();
        if handled.len() >= 100 || Instant::now() > deadline {
            break handled;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut bodies: Vec<&str> = handled
        .iter()
        .map(|h| h.split_once(' ').unwrap().1)
        .collect();
    bodies.sort_unstable();
    bodies.dedup();
    assert_eq!(bodies.len(), 100, "every message handled: {handled:?}");
    for name in ["first", "second"] {
        assert!(
            handled.iter().any(|h| h.starts_with(name)),
            "the {name} member got a partition: {handled:?}"
        );
    }
    first.stop().await.unwrap();
    second.stop().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// Each failure, reported at startup within the connect timeout.

/// Starts the relay with `security` against `bootstrap` and returns its startup error.
async fn startup_error(bootstrap: &str, security: Security) -> String {
    common::startup_error(bootstrap, security, routes![relay]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_connection_failure_is_named_at_startup() {
    let pki = Pki::new();
    let ca = || Tls::ca_pem(pki.ca_pem.as_bytes()).unwrap();
    let (_b1, _f1, sasl_ssl) = secured(FrontConfig {
        tls: Some(pki.server_config(false)),
        sasl: Some(logins(&["SCRAM-SHA-512"])),
    })
    .await;

    let err = startup_error(
        &sasl_ssl,
        Security::sasl_ssl(ca(), Sasl::scram_sha512("svc", "wrong")),
    )
    .await;
    assert!(
        err.contains("authentication") && err.contains("refused the login"),
        "wrong password: {err}"
    );
    assert!(
        !err.contains("wrong"),
        "the password is not in the error: {err}"
    );

    let err = startup_error(
        &sasl_ssl,
        Security::sasl_ssl(ca(), Sasl::plain("svc", "s3cret-pass")),
    )
    .await;
    assert!(
        err.contains("does not offer PLAIN") && err.contains("SCRAM-SHA-512"),
        "mechanism not offered: {err}"
    );

    let err = startup_error(
        &sasl_ssl,
        Security::sasl_ssl(
            Tls::system_roots(),
            Sasl::scram_sha512("svc", "s3cret-pass"),
        ),
    )
    .await;
    assert!(err.contains("not trusted"), "untrusted certificate: {err}");

    let other = Pki::for_names(vec!["kafka.example.com".into()]);
    let (_b2, _f2, misnamed) = secured(tls_only(&other, false)).await;
    let err = startup_error(
        &misnamed,
        Security::ssl(Tls::ca_pem(other.ca_pem.as_bytes()).unwrap()),
    )
    .await;
    assert!(err.contains("does not name"), "host name mismatch: {err}");
    // The same front, with the name its certificate lists: connects.
    let running = start(
        FastStream::new(
            KafkaBroker::builder(&misnamed)
                .security(Security::ssl(
                    Tls::ca_pem(other.ca_pem.as_bytes())
                        .unwrap()
                        .server_name("kafka.example.com"),
                ))
                .build(),
        )
        .with_routes(routes![relay])
        .topic_prefix(unique_prefix("named")),
    )
    .await;
    running.stop().await.unwrap();

    let (_b3, _f3, plaintext) = secured(FrontConfig::default()).await;
    let err = startup_error(&plaintext, Security::ssl(ca())).await;
    assert!(
        err.contains("plaintext listener"),
        "TLS to a plaintext port: {err}"
    );

    let (_b4, _f4, tls_port) = secured(tls_only(&pki, false)).await;
    let err = startup_error(&tls_port, Security::plaintext()).await;
    assert!(
        err.contains("TLS listener"),
        "plaintext to a TLS port: {err}"
    );

    let (_b5, _f5, mtls) = secured(tls_only(&pki, true)).await;
    let err = startup_error(&mtls, Security::ssl(ca())).await;
    assert!(
        err.contains("client certificate"),
        "mTLS without a certificate: {err}"
    );
}

// ---------------------------------------------------------------------------------------------
// The hello example, configured by the environment only.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hello_example_runs_on_sasl_ssl_from_environment_variables() {
    let pki = Pki::new();
    let (_broker, _front, bootstrap) = secured(FrontConfig {
        tls: Some(pki.server_config(false)),
        sasl: Some(logins(&["SCRAM-SHA-512"])),
    })
    .await;
    let client = raw_through(&bootstrap, Some((&pki, false)), Some(scram512())).await;
    // The example's topics are fixed; the broker is this test's own.
    let prefix = "";
    create_topic(&client, "in_topic", 1).await;
    let dir = temp_dir();
    let ca = write_pem(&dir, "ca.pem", &pki.ca_pem);
    let child = spawn_example(
        "hello",
        prefix,
        &[
            ("KAFKA_BOOTSTRAP", &bootstrap),
            ("KAFKA_SECURITY_PROTOCOL", "SASL_SSL"),
            ("KAFKA_SASL_MECHANISM", "SCRAM-SHA-512"),
            ("KAFKA_SASL_USERNAME", "svc"),
            ("KAFKA_SASL_PASSWORD", "s3cret-pass"),
            ("KAFKA_SSL_CA_LOCATION", &ca),
        ],
    )
    .await;
    produce(
        &client,
        "in_topic",
        0,
        vec![record(None, br#"{"user": "ann", "user_id": 7}"#, &[])],
    )
    .await;
    let out = read(&client, "out-topic", 1).await;
    assert_eq!(text(&out[&0][0]), "User: 7 - ann registered");
    terminate(child).await;
}
