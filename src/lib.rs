#![doc = include_str!("../README.md")]
//!
//! # Layout of this crate
//!
//! The root holds what every handler author writes: the attributes, [`FastStream`],
//! [`Message`], what handlers return ([`Response`], [`Json`], [`Failure`]), the errors,
//! [`Middleware`], [`testing`] and [`kafka`]. Handler arguments are in [`extract`] (`Key`,
//! `Topic`, `State`, ...: names that would collide with your own types at the root), the failure
//! policy's settings in [`policy`], and the guide's chapters in [`guide`]. Machinery for writing a
//! transport or driving the pipeline yourself is in [`runtime`]; what the macros' generated code
//! calls is hidden in `__private` and is not public API (`api/faststream.txt` lists the public
//! API; CI checks it is unchanged unless the listing is updated with the change).

pub use faststream_macros::{publisher, routes, subscriber};

// The app and its lifecycle.
pub use faststream_core::{termination_signal, AppContext, FastStream, Ready};

// The message, what handlers return, and how they fail.
pub use faststream_core::{Failure, IntoPayload, Json, Message, OutgoingMessage, Response};

// Errors.
pub use faststream_core::{DecodeError, Error, HandlerError, PartitionStop, Result, RouteProblem};

// Middleware.
pub use faststream_core::{BoxFuture, Middleware, Outcome};

// Header names and content types shared with Python FastStream.
pub use faststream_core::{content_type, header};

// Route checks for your own tests, and the AsyncAPI document.
pub use faststream_core::{asyncapi, check_contracts, registered_routes};

pub use faststream_core::testing;

/// Handler arguments: what `#[subscriber]` builds from the message (`Key`, `Topic`,
/// `Partition`, `Offset`, `Timestamp`, `CorrelationId`, `Headers`, `Acker`) or from the app
/// (`State`, `Publisher`, `Control`), and the traits for your own ([`FromMessage`](extract::FromMessage),
/// [`FromHeader`](extract::FromHeader)). The macros recognise them by their written name, so
/// import them (`use faststream::extract::Key;`) or write the path.
pub mod extract {
    pub use faststream_core::{
        Acker, Control, CorrelationId, FromHeader, FromMessage, Headers, Key, Offset, Partition,
        Paused, Publisher, SeekTo, State, Timestamp, Topic,
    };
}

/// The failure policy's settings: app-wide defaults of the `#[subscriber]` options
/// ([`FailurePolicy`](policy::FailurePolicy), [`RetryPolicy`](policy::RetryPolicy),
/// [`AckMode`](policy::AckMode), [`FailureAction`](policy::FailureAction)) and the headers of
/// dead-lettered messages ([`dlq_header`](policy::dlq_header)) and of messages on retry
/// topics ([`retry_header`](policy::retry_header)).
pub mod policy {
    pub use faststream_core::{
        dlq_header, retry_header, AckMode, FailureAction, FailurePolicy, RetryPolicy, RetryTopic,
    };
}

/// W3C trace-context propagation as a middleware (feature `opentelemetry`).
#[cfg(feature = "opentelemetry")]
pub use faststream_core::TraceContext;

/// The Kafka transport.
#[cfg(feature = "kafka")]
pub mod kafka {
    pub use faststream_kafka::*;
}

/// For transport authors and integrations that drive the handler pipeline themselves: the
/// [`Transport`](runtime::Transport) seam, the [`Pipeline`](runtime::Pipeline), route
/// descriptors and their validation, codecs. A handler author needs none of it.
pub mod runtime {
    pub use faststream_core::{
        decode_json, decode_raw, decode_text, new_correlation_id, until_resumed, validate,
        Assignor, BatchDef, BatchHandlerFn, BatchOutcome, BatchResult, Context, GroupProtocol,
        GroupTimings, HandlerFn, HandlerResult, HeaderName, OffsetReset, OffsetTracker, Pipeline,
        PolicyDef, Position, Publish, Reply, ResponseMeta, RetryLane, RouteDef, Shutdown,
        ShutdownTrigger, StateMap, StateReq, Step, SubscriberDef, Subscriptions, TopicNameProblem,
        Transport,
    };
}

/// The guide: how to write, test, connect, run and measure a service, chapter by chapter
/// (the pages under `docs/guide/` of the repository). Every code sample is compiled by
/// `cargo test --doc`.
pub mod guide {
    #[doc = include_str!("../docs/guide/handlers.md")]
    pub mod handlers {}
    #[doc = include_str!("../docs/guide/testing.md")]
    pub mod testing {}
    #[doc = include_str!("../docs/guide/kafka.md")]
    pub mod kafka {}
    #[doc = include_str!("../docs/guide/delivery.md")]
    pub mod delivery {}
    #[doc = include_str!("../docs/guide/operating.md")]
    pub mod operating {}
    #[doc = include_str!("../docs/guide/performance.md")]
    pub mod performance {}
    #[doc = include_str!("../docs/guide/brokers.md")]
    pub mod brokers {}
    #[doc = include_str!("../docs/guide/contributing.md")]
    pub mod contributing {}
}

#[doc(hidden)]
pub use faststream_core::__private;
