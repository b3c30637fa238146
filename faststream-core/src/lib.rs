//! The core of [faststream](https://docs.rs/faststream): everything but the broker.
//!
//! Applications depend on the `faststream` facade. Depend on this crate directly to write a
//! transport (implement [`Transport`]), an extractor (implement [`FromMessage`]) or a codec,
//! without pulling in Kafka.
//!
//! What core is, precisely: the message model, handlers and their failure policy, routes, the
//! app's lifecycle, and the in-memory test broker, with no network code of a broker. Route
//! descriptors carry Kafka's consumer-group settings ([`Assignor`], [`OffsetReset`],
//! [`GroupTimings`]) because `#[subscriber]` takes them as attributes and its descriptor lives
//! here; a transport without consumer groups ignores them. The HTTP probes and metrics
//! endpoint and the operating system's stop signal are in modules of their own.
//!
//! The modules form layers, each using only those below it (`scripts/import-cycles --graph`
//! prints them; CI fails on a circle):
//!
//! 1. `message` ([`Message`], [`OutgoingMessage`], [`Headers`]), `policy` ([`FailurePolicy`],
//!    [`Failure`], [`AckMode`], [`Acker`]), `shutdown` ([`Shutdown`], [`termination_signal`]),
//!    `health` (the HTTP probes and metrics endpoint);
//! 2. `error` ([`Error`], [`HandlerError`], [`RouteProblem`]), `trace` (W3C trace context,
//!    feature `opentelemetry`);
//! 3. `codec` ([`Json`], text, bytes, [`IntoPayload`]), `outcome` ([`Reply`], [`Outcome`],
//!    [`BatchOutcome`]), `control` ([`Control`]: pausing and resuming handlers, and its HTTP
//!    routes);
//! 4. `publish` ([`Publish`], [`Publisher`]), `offsets` ([`OffsetTracker`]: what outcomes mean
//!    for a partition's commits), `probe` (how the macros tell a body or return type's codec);
//! 5. `extract` ([`FromMessage`], [`Key`], [`State`], ...), `middleware` ([`Middleware`]),
//!    `schema` (payload descriptions);
//! 6. `route` ([`RouteDef`]: what `#[subscriber]` emits, and the registry);
//! 7. `pipeline` ([`Pipeline`]: decode, call, retry, encode, outcome), `validate` (startup
//!    checks, [`check_contracts`]), [`asyncapi`] (the AsyncAPI 3.0 document);
//! 8. `transport` ([`Transport`]) and [`testing`] ([`testing::TestBroker`]);
//! 9. `app` ([`FastStream`]).
//!
//! The `faststream` facade re-exports what a handler author needs at its root and the
//! transport-author items under `faststream::runtime`.

mod app;
pub mod asyncapi;
mod codec;
mod control;
mod error;
mod extract;
mod health;
mod message;
mod middleware;
mod offsets;
mod outcome;
mod pipeline;
mod policy;
mod probe;
mod publish;
mod retry_topics;
mod route;
mod schema;
mod shutdown;
pub mod testing;
#[cfg(feature = "opentelemetry")]
mod trace;
mod transport;
mod validate;

pub use app::{AppContext, FastStream};
pub use codec::{decode_json, decode_raw, decode_text, IntoPayload, Json};
pub use control::{until_resumed, Control, Paused, Seek, SeekTo, Subscriptions};
pub use error::RouteProblem;
pub use error::{DecodeError, Error, HandlerError, PartitionStop, Result};
pub use extract::{
    Context, CorrelationId, FromHeader, FromMessage, Key, Offset, Partition, State, StateMap,
    Timestamp, Topic,
};
pub use message::{content_type, header, HeaderName, Headers, Message, OutgoingMessage};
pub use middleware::Middleware;
pub use offsets::{OffsetTracker, Position, Step};
pub use outcome::{BatchOutcome, Outcome, Reply, Response, ResponseMeta};
pub use pipeline::{new_correlation_id, Pipeline, Ready};
pub use policy::{
    dlq_header, AckMode, Acker, Failure, FailureAction, FailurePolicy, PolicyDef, RetryPolicy,
};
pub use publish::{BoxFuture, Publish, Publisher};
pub use retry_topics::{retry_header, RetryLane, RetryTopic};
pub use route::{
    decode_batch, registered_routes, Assignor, BatchDef, BatchHandlerFn, BatchResult,
    GroupProtocol, GroupTimings, HandlerFn, HandlerResult, OffsetReset, RouteDef, StateReq,
    SubscriberDef, TopicMatcher, TopicNameProblem,
};
pub use shutdown::{termination_signal, Shutdown, ShutdownTrigger};
#[cfg(feature = "opentelemetry")]
pub use trace::TraceContext;
pub use transport::Transport;
pub use validate::{check_contracts, validate};

/// Support for macro-generated code. Not public API.
#[doc(hidden)]
pub mod __private {
    pub use crate::__schema_of as schema_of;
    pub use crate::codec::{decode_json, decode_raw, decode_text};
    pub use crate::error::HandlerError;
    pub use crate::extract::{Context, FromHeader, FromMessage};
    pub use crate::message::Message;
    pub use crate::middleware::Middleware;
    pub use crate::outcome::Reply;
    pub use crate::policy::{AckMode, FailureAction, PolicyDef};
    pub use crate::probe::{
        BodyProbe, DecodeExact, DecodeJson, EncodeExact, EncodeJson, EncodeOption, EncodeResult,
        ReplyKind, ReplyProbe,
    };
    pub use crate::publish::BoxFuture;
    pub use crate::route::{decode_batch, BatchResult, HandlerResult};
    pub use crate::route::{
        Assignor, BatchDef, GroupProtocol, OffsetReset, RouteDef, RouteHandler, RouteRef, StateReq,
        SubscriberDef, TopicNameProblem,
    };
    #[cfg(feature = "schemars")]
    pub use crate::schema::HasSchema;
    pub use crate::schema::{
        object_schema, NoSchema, Payload, RouteSchemas, SchemaGen, SchemaProbe,
    };
    pub use inventory;
    pub use serde;
    pub use serde_json;
}
