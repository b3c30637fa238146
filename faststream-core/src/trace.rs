//! W3C trace context in Kafka headers (feature `opentelemetry`): a handled message's span
//! continues the trace its `traceparent` (and `tracestate`, `baggage`) header carries, and every
//! message published while handling it (returned outputs and `Publisher` publishes) carries the
//! current span's context, so a trace runs from a FastStream service in Python through this one
//! and on. The spans reach an OpenTelemetry exporter through the application's
//! `tracing-opentelemetry` layer; without one nothing is written. Without the feature both
//! functions are empty.

use crate::message::Headers;

#[cfg(feature = "opentelemetry")]
mod on {
    use std::sync::OnceLock;

    use opentelemetry::propagation::{
        Extractor, Injector, TextMapCompositePropagator, TextMapPropagator,
    };
    use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    use super::Headers;

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

    pub(crate) fn continue_trace(span: &tracing::Span, headers: &Headers) {
        if headers.get("traceparent").is_none() || span.is_disabled() {
            return;
        }
        let parent = propagator().extract(&Read(headers));
        // Fails only when no OpenTelemetry layer is installed: nothing to continue then.
        let _ = span.set_parent(parent);
    }

    pub(crate) fn inject(span: &tracing::Span, headers: &mut Headers) {
        if span.is_disabled() {
            return;
        }
        propagator().inject_context(&span.context(), &mut Write(headers));
    }
}

/// Makes `span` a child of the trace `headers` carry, if they carry one.
#[inline]
pub(crate) fn continue_trace(span: &tracing::Span, headers: &Headers) {
    #[cfg(feature = "opentelemetry")]
    on::continue_trace(span, headers);
    #[cfg(not(feature = "opentelemetry"))]
    let _ = (span, headers);
}

/// Writes the trace context of `span` (the message being handled) into `headers`.
#[inline]
pub(crate) fn inject(span: &tracing::Span, headers: &mut Headers) {
    #[cfg(feature = "opentelemetry")]
    on::inject(span, headers);
    #[cfg(not(feature = "opentelemetry"))]
    let _ = (span, headers);
}
