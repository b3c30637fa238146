//! W3C trace context in Kafka headers (feature `opentelemetry`), as a [`Middleware`]: register
//! [`TraceContext`] and a handled message's span continues the trace its `traceparent` (and
//! `tracestate`, `baggage`) headers carry, while every message published while handling it
//! (returned outputs, dead-letter copies and `Publisher` publishes) carries the current span's
//! context on, so a trace runs from a FastStream service in Python through this one and on. The
//! spans reach an OpenTelemetry exporter through the application's `tracing-opentelemetry`
//! layer; without one nothing is written.

use std::sync::OnceLock;

use opentelemetry::propagation::{
    Extractor, Injector, TextMapCompositePropagator, TextMapPropagator,
};
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::message::{Headers, Message, OutgoingMessage};
use crate::Middleware;

/// Carries OpenTelemetry trace context across services in message headers, the counterpart of
/// Python FastStream's `KafkaTelemetryMiddleware` (feature `opentelemetry`):
///
/// ```no_run
/// # fn app(broker: faststream_core::testing::TestBroker) {}
/// use faststream_core::TraceContext;
/// # let _ = TraceContext;
/// // FastStream::new(broker).middleware(TraceContext)
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct TraceContext;

impl Middleware for TraceContext {
    fn on_span(&self, msg: &Message, span: &tracing::Span) {
        if msg.headers.get("traceparent").is_none() || span.is_disabled() {
            return;
        }
        let parent = propagator().extract(&Read(&msg.headers));
        // Fails only when no OpenTelemetry layer is installed: nothing to continue then.
        let _ = span.set_parent(parent);
    }

    fn publish(&self, out: &mut OutgoingMessage) {
        let span = tracing::Span::current();
        if span.is_disabled() {
            return;
        }
        propagator().inject_context(&span.context(), &mut Write(&mut out.headers));
    }
}

fn propagator() -> &'static TextMapCompositePropagator {
    static PROPAGATOR: OnceLock<TextMapCompositePropagator> = OnceLock::new();
    PROPAGATOR.get_or_init(|| {
        TextMapCompositePropagator::new(vec![
            Box::new(TraceContextPropagator::new()),
            Box::new(BaggagePropagator::new()),
        ])
    })
}

struct Read<'a>(&'a Headers);

impl Extractor for Read<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get_str(key)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| k).collect()
    }
}

struct Write<'a>(&'a mut Headers);

impl Injector for Write<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_owned(), value);
    }
}
