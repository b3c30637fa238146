//! Trace propagation (feature `opentelemetry`, the `TraceContext` middleware) against the real
//! broker: a message carrying a
//! known `traceparent` is handled in a span of that trace, and what the handler publishes
//! (its return value and a `Publisher` publish) carries the trace on; a message published by
//! Python FastStream with its OpenTelemetry middleware is continued the same way. Spans are
//! collected with an in-memory exporter. Run with
//! `cargo test --features opentelemetry --test otel`.

mod common;

use std::sync::OnceLock;

use common::*;
use faststream::extract::Publisher;
use faststream::kafka::KafkaBroker;
use faststream::{publisher, routes, subscriber, FastStream, TraceContext};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tracing_subscriber::layer::SubscriberExt;

/// The exporter every span of this test binary goes to (one global subscriber).
fn spans() -> &'static InMemorySpanExporter {
    static EXPORTER: OnceLock<InMemorySpanExporter> = OnceLock::new();
    EXPORTER.get_or_init(|| {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("otel-test")));
        tracing::subscriber::set_global_default(subscriber).expect("one global subscriber");
        exporter
    })
}

/// The finished `message` spans of `topic`.
fn message_spans(topic: &str) -> Vec<SpanData> {
    spans()
        .get_finished_spans()
        .unwrap()
        .into_iter()
        .filter(|s| {
            s.name == "message"
                && s.attributes
                    .iter()
                    .any(|kv| kv.key.as_str() == "topic" && kv.value.as_str() == topic)
        })
        .collect()
}

static SIDE_TOPIC: OnceLock<String> = OnceLock::new();

#[subscriber("traced", auto_offset_reset = "earliest")]
#[publisher("traced-out")]
async fn traced(body: String, publisher: Publisher) -> String {
    if let Some(side) = SIDE_TOPIC.get() {
        publisher.publish("side", side).await.unwrap();
    }
    format!("seen {body}")
}

/// `(trace id, span id)` of a `traceparent` value (`00-<trace>-<span>-<flags>`).
fn ids(traceparent: &[u8]) -> (String, String) {
    let text = std::str::from_utf8(traceparent).unwrap();
    let parts: Vec<&str> = text.split('-').collect();
    assert_eq!(parts.len(), 4, "traceparent {text}");
    (parts[1].to_owned(), parts[2].to_owned())
}

async fn wait_for_span(topic: &str) -> SpanData {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        if let Some(span) = message_spans(topic).pop() {
            return span;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "a message span for {topic}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_continues_through_the_handler_and_its_outputs() {
    spans();
    let prefix = unique_prefix("traced");
    let client = raw_client().await;
    let topic = format!("{prefix}traced");
    create_topic(&client, &topic, 1).await;
    let side = format!("{prefix}traced-side");
    create_topic(&client, &side, 1).await;
    SIDE_TOPIC.set(side.clone()).unwrap();
    let trace = "0af7651916cd43dd8448eb211c80319c";
    let parent = "b7ad6b7169203331";
    let traceparent = format!("00-{trace}-{parent}-01");
    produce(
        &client,
        &topic,
        0,
        vec![record(None, b"hello", &[("traceparent", &traceparent)])],
    )
    .await;
    let app = FastStream::new(KafkaBroker::new(&bootstrap()))
        .with_routes(routes![traced])
        .topic_prefix(&prefix)
        .middleware(TraceContext);
    let running = start(app).await;
    let out = read(&client, &format!("{prefix}traced-out"), 1).await;
    let side_out = read(&client, &side, 1).await;
    let span = wait_for_span(&topic).await;
    running.stop().await.unwrap();

    // The handler's span is a child of the incoming message's span, in its trace.
    assert_eq!(format!("{}", span.span_context.trace_id()), trace);
    assert_eq!(format!("{}", span.parent_span_id), parent);
    let own = format!("{}", span.span_context.span_id());
    // Its outputs carry the trace on, with the handler's span as their parent.
    for (what, records) in [("output", &out), ("Publisher publish", &side_out)] {
        let header = records[&0][0]
            .record
            .headers
            .get("traceparent")
            .unwrap_or_else(|| panic!("the {what} carries a traceparent"));
        assert_eq!(ids(header), (trace.to_owned(), own.clone()), "{what}");
    }
}

#[subscriber("from-python", auto_offset_reset = "earliest")]
async fn from_python(_body: String) {}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_started_by_python_faststream_continues_here() {
    spans();
    let prefix = unique_prefix("pytrace");
    let client = raw_client().await;
    let topic = format!("{prefix}from-python");
    create_topic(&client, &topic, 1).await;
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/traced_publish.py");
    let published = tokio::process::Command::new(python())
        .arg(&script)
        .args([bootstrap(), topic.clone(), "from python".into()])
        .output();
    let published = tokio::time::timeout(TIMEOUT, published)
        .await
        .expect("the Python publisher finishes")
        .unwrap();
    assert!(
        published.status.success(),
        "{}",
        String::from_utf8_lossy(&published.stderr)
    );
    let python_trace = String::from_utf8(published.stdout)
        .unwrap()
        .trim()
        .to_owned();
    // What Python wrote: a traceparent of its publish span's trace.
    let input = read(&client, &topic, 1).await;
    let header = input[&0][0]
        .record
        .headers
        .get("traceparent")
        .expect("Python FastStream's middleware wrote a traceparent");
    let (trace, parent) = ids(header);
    assert_eq!(trace, python_trace);

    let app = FastStream::new(KafkaBroker::new(&bootstrap()))
        .with_routes(routes![from_python])
        .topic_prefix(&prefix)
        .middleware(TraceContext);
    let running = start(app).await;
    let span = wait_for_span(&topic).await;
    running.stop().await.unwrap();
    assert_eq!(format!("{}", span.span_context.trace_id()), python_trace);
    assert_eq!(format!("{}", span.parent_span_id), parent);
}
