//! Transport-independent core of [faststream](https://docs.rs/faststream).
//!
//! Applications depend on the `faststream` facade. Depend on this crate directly to write a
//! transport (implement [`Transport`]), an extractor (implement [`FromMessage`]) or a codec,
//! without pulling in Kafka.
//!
//! What lives here:
//! - the message model: [`Message`], [`OutgoingMessage`], [`Headers`];
//! - routes: [`RouteDef`] (what `#[subscriber]` emits), the registry and startup validation;
//! - the handler pipeline ([`Pipeline`]): decode, call, encode, outcome;
//! - the failure policy ([`FailurePolicy`]): retries, dead-letter topics, [`Failure`] kinds,
//!   ack modes ([`AckMode`], [`Acker`]);
//! - extractors ([`Key`], [`Headers`], [`State`], ...) and codecs ([`Json`], text, bytes);
//! - the app lifecycle ([`FastStream`]: lifespan hooks, health probes, Prometheus metrics with
//!   the `prometheus` feature) and the transport seam ([`Transport`]);
//! - per-partition progress ([`OffsetTracker`]: what an outcome means, what may be committed),
//!   shared by the transports and the test broker;
//! - [`Middleware`] (app-wide and per route), and `TraceContext` (W3C trace context in headers,
//!   feature `opentelemetry`);
//! - [`asyncapi`]: the AsyncAPI 3.0 document and the payload descriptions (JSON Schemas with
//!   the `schemars` feature) that the topic-contract check compares;
//! - the in-memory [`testing::TestBroker`].
//!
//! The `faststream` facade re-exports what a handler author needs at its root and the
//! transport-author items under `faststream::runtime`.

mod app;
pub mod asyncapi;
mod codec;
mod error;
mod extract;
mod handler;
mod health;
mod message;
mod middleware;
mod offsets;
mod outcome;
mod policy;
mod probe;
mod route;
pub mod testing;
#[cfg(feature = "opentelemetry")]
mod trace;
mod transport;

pub use app::{termination_signal, AppContext, FastStream};
pub use codec::{decode_json, decode_raw, decode_text, IntoPayload, Json};
pub use error::{DecodeError, Error, HandlerError, PartitionStop, Result};
pub use extract::{
    Context, CorrelationId, FromHeader, FromMessage, Key, Offset, Partition, State, StateMap,
    Timestamp, Topic,
};
pub use handler::{
    new_correlation_id, BatchHandlerFn, BatchOutcome, BatchResult, HandlerFn, HandlerResult,
    Outcome, Pipeline, Ready,
};
pub use message::{content_type, header, HeaderName, Headers, Message, OutgoingMessage};
pub use middleware::Middleware;
pub use offsets::{OffsetTracker, Position, Step};
pub use outcome::{Reply, Response, ResponseMeta};
pub use policy::{
    dlq_header, AckMode, Acker, Failure, FailureAction, FailurePolicy, PolicyDef, RetryPolicy,
};
pub use route::{
    check_contracts, registered_routes, validate, Assignor, BatchDef, GroupTimings, OffsetReset,
    RouteDef, RouteProblem, StateReq, SubscriberDef,
};
#[cfg(feature = "opentelemetry")]
pub use trace::TraceContext;
pub use transport::{BoxFuture, Publish, Publisher, Shutdown, ShutdownTrigger, Transport};

/// Support for macro-generated code. Not public API.
#[doc(hidden)]
pub mod __private {
    pub use crate::__schema_of as schema_of;
    #[cfg(feature = "schemars")]
    pub use crate::asyncapi::HasSchema;
    pub use crate::asyncapi::{
        object_schema, NoSchema, Payload, RouteSchemas, SchemaGen, SchemaProbe,
    };
    pub use crate::codec::{decode_json, decode_raw, decode_text};
    pub use crate::error::HandlerError;
    pub use crate::extract::{Context, FromHeader, FromMessage};
    pub use crate::handler::{decode_batch, BatchResult, HandlerResult};
    pub use crate::message::Message;
    pub use crate::middleware::Middleware;
    pub use crate::outcome::Reply;
    pub use crate::policy::{AckMode, FailureAction, PolicyDef};
    pub use crate::probe::{
        BodyProbe, DecodeExact, DecodeJson, EncodeExact, EncodeJson, EncodeOption, EncodeResult,
        ReplyKind, ReplyProbe,
    };
    pub use crate::route::{
        Assignor, BatchDef, OffsetReset, RouteDef, RouteHandler, RouteRef, StateReq, SubscriberDef,
    };
    pub use crate::transport::BoxFuture;
    pub use inventory;
    pub use serde;
    pub use serde_json;
}
