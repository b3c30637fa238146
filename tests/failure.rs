//! The failure policy through the in-memory broker, on tokio's paused clock: retries with
//! backoff, dead-letter topics and their headers, failure kinds chosen by the handler, panics,
//! timeouts, manual acks, and every kind of bad input.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use faststream::extract::Acker;
use faststream::policy::{dlq_header, FailurePolicy, RetryPolicy};
use faststream::testing::TestBroker;
use faststream::{
    publisher, routes, subscriber, Failure, HandlerError, Message, Outcome, OutgoingMessage,
};
use serde::Deserialize;

fn no_jitter() -> FailurePolicy {
    FailurePolicy {
        retry: RetryPolicy {
            jitter: false,
            ..RetryPolicy::default()
        },
        ..FailurePolicy::default()
    }
}

static FLAKY_CALLS: AtomicU32 = AtomicU32::new(0);

#[subscriber("flaky", retry = 3, retry_backoff_ms = 100)]
#[publisher("flaky-out")]
async fn flaky(n: u32) -> Result<u32, String> {
    let call = FLAKY_CALLS.fetch_add(1, Ordering::SeqCst) + 1;
    if call < 3 {
        return Err(format!("transient failure {call}"));
    }
    Ok(n * 10)
}

#[tokio::test(start_paused = true)]
async fn retries_with_exponential_backoff_then_succeeds() {
    let broker = TestBroker::builder()
        .with_routes(routes![flaky])
        .failure_policy(no_jitter())
        .build()
        .unwrap();
    let started = tokio::time::Instant::now();
    broker.publish("4", "flaky").await.unwrap();
    // Two failed attempts waited 100 ms, then 200 ms, on the paused clock.
    assert_eq!(started.elapsed(), Duration::from_millis(300));
    assert_eq!(FLAKY_CALLS.load(Ordering::SeqCst), 3);
    assert_eq!(broker.published("flaky-out")[0].text(), Some("40"));
    assert!(broker.errors().is_empty());
}

#[subscriber("always-fails", retry = 2, dlq = "always-fails.dlq")]
async fn always_fails(_body: String) -> Result<(), String> {
    Err("database unavailable".into())
}

#[tokio::test(start_paused = true)]
async fn exhausted_retries_go_to_the_dead_letter_topic_with_headers() {
    let broker = TestBroker::builder()
        .with_routes(routes![always_fails])
        .build()
        .unwrap();
    broker
        .send(
            OutgoingMessage::new("always-fails", "payload-1")
                .key("k1")
                .header("x-trace", "t1"),
        )
        .await
        .unwrap();
    let dlq = broker.published("always-fails.dlq");
    assert_eq!(dlq.len(), 1);
    let m = &dlq[0];
    assert_eq!(m.text(), Some("payload-1"));
    assert_eq!(m.key.as_deref(), Some(&b"k1"[..]));
    let h = |name| m.headers.get_str(name).unwrap().to_owned();
    assert_eq!(h("x-trace"), "t1", "original headers are kept");
    assert_eq!(h(dlq_header::ORIGINAL_TOPIC), "always-fails");
    assert_eq!(h(dlq_header::ORIGINAL_PARTITION), "0");
    assert_eq!(h(dlq_header::ORIGINAL_OFFSET), "0");
    assert_eq!(h(dlq_header::ERROR_KIND), "handler");
    assert_eq!(
        h(dlq_header::ERROR),
        "handler returned an error: database unavailable"
    );
    assert_eq!(h(dlq_header::HANDLER), "failure::always_fails");
    assert_eq!(h(dlq_header::ATTEMPTS), "3");
    assert!(h(dlq_header::FAILED_AT).parse::<u64>().unwrap() > 1_600_000_000_000);
    match &broker.received("always_fails")[0].outcome {
        Outcome::DeadLettered { attempts, .. } => assert_eq!(*attempts, 3),
        other => panic!("{other:?}"),
    }
}

#[subscriber("choose", dlq = "choose.dlq", retry = 5)]
async fn choose(action: String) -> Result<(), Failure> {
    match action.as_str() {
        "dead" => Err(Failure::dead_letter("will never succeed")),
        "skip" => Err(Failure::skip("not for us")),
        "stop" => Err(Failure::stop("cannot continue")),
        "io" => {
            std::fs::read("/definitely/not/here")?;
            Ok(())
        }
        _ => Ok(()),
    }
}

#[tokio::test(start_paused = true)]
async fn the_handler_chooses_the_outcome() {
    let broker = TestBroker::builder()
        .with_routes(routes![choose])
        .build()
        .unwrap();
    for action in ["dead", "skip", "io", "fine"] {
        broker.publish(action, "choose").await.unwrap();
    }
    // A stop ends the service (see `a_stop_ends_the_service_and_leaves_the_message_not_done`).
    let stopped = broker.publish("stop", "choose").await.unwrap_err();
    assert!(stopped.to_string().contains("cannot continue"), "{stopped}");
    let got: Vec<(String, Option<u32>)> = broker
        .received("choose")
        .iter()
        .map(|d| {
            let attempts = match &d.outcome {
                Outcome::DeadLettered { attempts, .. }
                | Outcome::Skipped { attempts, .. }
                | Outcome::Stopped { attempts, .. } => Some(*attempts),
                _ => None,
            };
            let kind = d.outcome.name();
            (kind.to_owned(), attempts)
        })
        .collect();
    assert_eq!(
        got,
        [
            ("dead_lettered".to_owned(), Some(1)),
            ("skipped".to_owned(), Some(1)),
            ("dead_lettered".to_owned(), Some(6)), // `?` on an io::Error retries (5 retries), then dead-letters
            ("ok".to_owned(), None),
            ("stopped".to_owned(), Some(1)),
        ]
    );
    let dlq = broker.published("choose.dlq");
    assert_eq!(dlq.len(), 2);
    assert_eq!(
        dlq[0].headers.get_str(dlq_header::ERROR_KIND),
        Some("rejected")
    );
    assert_eq!(
        dlq[0].headers.get_str(dlq_header::ERROR),
        Some("handler failed: will never succeed")
    );
}

/// An error a handler turned into a `Failure` with `?` stays reachable as the source of the
/// message's `HandlerError`: code that sees the outcome can downcast to it.
#[tokio::test(start_paused = true)]
async fn an_error_raised_with_the_question_mark_is_kept_as_the_source() {
    use std::error::Error as _;
    let broker = TestBroker::builder()
        .with_routes(routes![choose])
        .build()
        .unwrap();
    broker.publish("io", "choose").await.unwrap();
    let received = broker.received("choose");
    let error = received[0].outcome.error().expect("the message failed");
    assert!(matches!(error, HandlerError::Rejected(_)), "{error:?}");
    let source = error.source().expect("the io error is the source");
    let io = source
        .downcast_ref::<std::io::Error>()
        .expect("the handler's own error type");
    assert_eq!(io.kind(), std::io::ErrorKind::NotFound);
    assert!(error.to_string().contains(&io.to_string()), "{error}");
}

#[subscriber("panics", retry = 1, dlq = "panics.dlq")]
async fn panics(n: u32) -> u32 {
    if n == 0 {
        panic!("division by zero");
    }
    100 / n
}

#[subscriber("slow", retry = 0, timeout_ms = 50, dlq = "slow.dlq")]
async fn slow(_body: String) {
    tokio::time::sleep(Duration::from_secs(5)).await;
}

#[tokio::test(start_paused = true)]
async fn panics_and_timeouts_are_failures_and_the_service_keeps_running() {
    let broker = TestBroker::builder()
        .with_routes(routes![panics, slow])
        .build()
        .unwrap();
    broker.publish("0", "panics").await.unwrap();
    broker.publish("5", "panics").await.unwrap();
    broker.publish("x", "slow").await.unwrap();
    let p = broker.published("panics.dlq");
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].headers.get_str(dlq_header::ERROR_KIND), Some("panic"));
    assert_eq!(
        p[0].headers.get_str(dlq_header::ERROR),
        Some("handler panicked: division by zero")
    );
    assert_eq!(p[0].headers.get_str(dlq_header::ATTEMPTS), Some("2"));
    assert!(matches!(
        broker.received("panics")[1].outcome,
        Outcome::Done(_)
    ));
    let s = broker.published("slow.dlq");
    assert_eq!(
        s[0].headers.get_str(dlq_header::ERROR_KIND),
        Some("timeout")
    );
    assert_eq!(
        s[0].headers.get_str(dlq_header::ERROR),
        Some("handler did not finish within 50ms")
    );
}

static MANUAL_CALLS: AtomicU32 = AtomicU32::new(0);

#[subscriber("manual", ack = "manual", retry = 2, dlq = "manual.dlq")]
async fn manual(action: String, acker: Acker) {
    MANUAL_CALLS.fetch_add(1, Ordering::SeqCst);
    match action.as_str() {
        "ack" => acker.ack(),
        "nack" => acker.nack(),
        _ => {} // neither
    }
}

#[tokio::test(start_paused = true)]
async fn manual_ack_nack_and_neither() {
    let broker = TestBroker::builder()
        .with_routes(routes![manual])
        .failure_policy(no_jitter())
        .build()
        .unwrap();
    broker.publish("ack", "manual").await.unwrap();
    assert_eq!(MANUAL_CALLS.load(Ordering::SeqCst), 1);
    assert_eq!(broker.committed("manual", "manual", 0), Some(1));
    let started = tokio::time::Instant::now();
    broker.publish("nack", "manual").await.unwrap();
    // A nack redelivers after backoff (100 ms, 200 ms), not in a hot loop, then dead-letters.
    assert_eq!(started.elapsed(), Duration::from_millis(300));
    assert_eq!(MANUAL_CALLS.load(Ordering::SeqCst), 4);
    assert_eq!(
        broker.committed("manual", "manual", 0),
        Some(2),
        "dead-lettered is done"
    );
    broker.publish("neither", "manual").await.unwrap();
    broker.publish("ack", "manual").await.unwrap();
    // Kafka commits are cumulative: the message neither acked nor nacked (offset 2) holds the
    // partition's commits back, also after a later message was acked, as on Kafka.
    assert_eq!(broker.committed("manual", "manual", 0), Some(2));
    let outcomes: Vec<Outcome> = broker
        .received("manual")
        .into_iter()
        .map(|d| d.outcome)
        .collect();
    assert!(matches!(outcomes[0], Outcome::Done(_)));
    assert!(matches!(
        &outcomes[1],
        Outcome::DeadLettered {
            error: HandlerError::Nacked,
            attempts: 3,
            ..
        }
    ));
    assert!(matches!(outcomes[2], Outcome::Unacked(_)));
    assert!(matches!(outcomes[3], Outcome::Done(_)));
}

static STOPPING_CALLS: AtomicU32 = AtomicU32::new(0);

#[subscriber("stopping", on_failure = "stop", retry = 2)]
#[publisher("stopping-out")]
async fn stopping(body: String) -> Result<String, Failure> {
    STOPPING_CALLS.fetch_add(1, Ordering::SeqCst);
    match body.as_str() {
        "poison" => Err(Failure::retry("cannot handle it")),
        _ => Ok(body),
    }
}

/// `on_failure = "stop"` stops the service on the test broker as it does on Kafka: the publish
/// returns the error naming handler, topic, partition and offset, the message is not done, and
/// nothing is handled after it.
#[tokio::test(start_paused = true)]
async fn a_stop_ends_the_service_and_leaves_the_message_not_done() {
    let broker = TestBroker::builder()
        .with_routes(routes![stopping])
        .failure_policy(no_jitter())
        .build()
        .unwrap();
    broker.publish("one", "stopping").await.unwrap();
    let err = broker.publish("poison", "stopping").await.unwrap_err();
    match &err {
        faststream::Error::PartitionStopped(faststream::PartitionStop {
            handler,
            topic,
            partition,
            offset,
            reason,
        }) => {
            assert!(handler.ends_with("stopping"), "{handler}");
            assert_eq!(
                (topic.as_str(), *partition, *offset),
                ("stopping", 0, Some(1))
            );
            assert!(reason.contains("cannot handle it"), "{reason}");
        }
        other => panic!("expected a stopped partition, got {other:?}"),
    }
    // "one", then "poison": one call and two retries.
    assert_eq!(STOPPING_CALLS.load(Ordering::SeqCst), 4);
    // The service is down: a later message is stored but not handled.
    let again = broker.publish("two", "stopping").await.unwrap_err();
    assert_eq!(again.to_string(), err.to_string());
    assert_eq!(STOPPING_CALLS.load(Ordering::SeqCst), 4);
    assert_eq!(broker.published("stopping").len(), 3);
    assert_eq!(broker.published("stopping-out").len(), 1);
    assert_eq!(broker.committed("stopping", "stopping", 0), Some(1));
}

#[derive(Debug, Deserialize)]
struct Order {
    #[allow(dead_code)]
    id: u64,
    #[allow(dead_code)]
    amount: i64,
}

#[subscriber("orders", dlq = "orders.dlq", max_message_bytes = 64)]
#[publisher("orders-ok")]
async fn take_order(order: Order) -> String {
    format!("{order:?}")
}

#[subscriber("texts", dlq = "texts.dlq")]
#[publisher("texts-ok")]
async fn take_text(text: String) -> String {
    text
}

#[tokio::test(start_paused = true)]
async fn every_kind_of_bad_input_is_dead_lettered_and_the_next_message_processed() {
    let broker = TestBroker::builder()
        .with_routes(routes![take_order, take_text])
        .build()
        .unwrap();
    let good = r#"{"id": 1, "amount": 5}"#;
    let mut tombstone = OutgoingMessage::new("orders", "");
    tombstone.payload = None;
    let cases: Vec<(OutgoingMessage, &str)> = vec![
        (OutgoingMessage::new("orders", "not json"), "not valid JSON"),
        (
            OutgoingMessage::new("orders", r#"{"id": 1}"#),
            "missing field `amount`",
        ),
        (
            OutgoingMessage::new("orders", r#"{"id": 1, "amount": "five"}"#),
            "field `amount`: invalid type: string \"five\"",
        ),
        (OutgoingMessage::new("orders", ""), "the payload is empty"),
        (tombstone, "the payload is null (a tombstone)"),
        (
            OutgoingMessage::new(
                "orders",
                format!(r#"{{"id": 1, "amount": 5, "note": "{}"}}"#, "x".repeat(80)),
            ),
            "exceeds max_message_bytes (64)",
        ),
        (
            OutgoingMessage::new("orders", good).header("content-type", "application/avro"),
            "unsupported content type \"application/avro\"",
        ),
        (
            OutgoingMessage::new("texts", vec![b'h', b'i', 0xff]),
            "not valid UTF-8 (invalid byte at position 2)",
        ),
    ];
    let n = cases.len();
    for (i, (bad, why)) in cases.into_iter().enumerate() {
        let topic = bad.topic.clone();
        broker.send(bad).await.unwrap();
        let dlq = broker.published(&format!("{topic}.dlq"));
        let last = dlq
            .last()
            .unwrap_or_else(|| panic!("case {i} ({why}) was not dead-lettered"));
        let error = last.headers.get_str(dlq_header::ERROR).unwrap();
        assert!(
            error.contains(why),
            "case {i}: {error:?} does not say {why:?}"
        );
        assert_eq!(last.headers.get_str(dlq_header::ERROR_KIND), Some("decode"));
        assert_eq!(
            last.headers.get_str(dlq_header::ATTEMPTS),
            Some("1"),
            "decode errors are not retried"
        );
        // The message after it is processed.
        broker
            .publish(if &*topic == "orders" { good } else { "fine" }, &topic)
            .await
            .unwrap();
    }
    assert_eq!(
        broker.published("orders-ok").len() + broker.published("texts-ok").len(),
        n
    );
    assert_eq!(broker.errors().len(), n);
}

#[subscriber("no-dlq", retry = 0)]
async fn no_dlq(_m: Message) -> Result<(), String> {
    Err("boom".into())
}

#[tokio::test(start_paused = true)]
async fn without_a_dead_letter_topic_the_message_is_logged_and_skipped() {
    let broker = TestBroker::builder()
        .with_routes(routes![no_dlq])
        .build()
        .unwrap();
    broker.publish("x", "no-dlq").await.unwrap();
    assert!(matches!(
        broker.received("no_dlq")[0].outcome,
        Outcome::Skipped { attempts: 1, .. }
    ));
}

static STEPS_RUNS: AtomicU32 = AtomicU32::new(0);

#[subscriber(
    "steps",
    group_id = "steps",
    retry = 1,
    retry_backoff_ms = 100,
    retry_topics = ["steps.retry.1m", "steps.retry.10m"],
    dlq = "steps.dlq"
)]
#[publisher("steps-out")]
async fn steps(n: u32) -> Result<u32, String> {
    let run = STEPS_RUNS.fetch_add(1, Ordering::SeqCst) + 1;
    // 1 fails on every run; 2 on its first two runs (in place and its retry), then succeeds.
    match n {
        1 => Err(format!("run {run}: 1 always fails")),
        2 if run <= 2 => Err(format!("run {run}: 2 is not ready")),
        _ => Ok(n),
    }
}

/// The test broker models retry topics: the copy goes to the retry topic and is handled there
/// once due (on the paused clock, at once), through each retry topic to the dead-letter topic.
#[tokio::test(start_paused = true)]
async fn retry_topics_move_a_failure_through_delay_topics_to_the_dead_letter_topic() {
    let broker = TestBroker::builder()
        .with_routes(routes![steps])
        .build()
        .unwrap();
    let started = tokio::time::Instant::now();
    broker.publish("2", "steps").await.unwrap();
    // Failed in place twice (one retry), then on the first retry topic it succeeded.
    assert_eq!(STEPS_RUNS.load(Ordering::SeqCst), 3);
    assert_eq!(broker.published("steps.retry.1m").len(), 1);
    assert!(broker.published("steps.retry.10m").is_empty());
    assert_eq!(broker.published("steps-out")[0].text(), Some("2"));
    assert!(started.elapsed() >= Duration::from_secs(60));

    broker.publish("1", "steps").await.unwrap();
    // Two runs on the main topic, two on each retry topic, then the dead-letter topic.
    assert_eq!(STEPS_RUNS.load(Ordering::SeqCst), 3 + 6);
    let retried = broker.published("steps.retry.10m");
    assert_eq!(retried.len(), 1);
    assert_eq!(retried[0].headers.get_str(dlq_header::ATTEMPTS), Some("4"));
    let dead = broker.published("steps.dlq");
    assert_eq!(dead.len(), 1);
    let h = &dead[0].headers;
    assert_eq!(h.get_str(dlq_header::ORIGINAL_TOPIC), Some("steps"));
    assert_eq!(h.get_str(dlq_header::ORIGINAL_OFFSET), Some("1"));
    assert_eq!(h.get_str(dlq_header::ATTEMPTS), Some("6"));
    // Each message done on its topic, as a group would commit.
    assert_eq!(broker.committed("steps", "steps", 0), Some(2));
}
