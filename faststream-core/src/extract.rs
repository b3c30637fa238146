//! Extractors: handler arguments built from the message or the app's context, not the body.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;

use crate::error::DecodeError;
use crate::message::{Headers, Message};
use crate::policy::Acker;
use crate::publish::Publisher;

/// Shared values given to the app with `with_state`, by type.
#[derive(Clone, Default)]
pub struct StateMap(HashMap<TypeId, Arc<dyn Any + Send + Sync>>);

impl std::fmt::Debug for StateMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateMap")
            .field("len", &self.0.len())
            .finish()
    }
}

impl StateMap {
    /// Adds (or replaces) the state of type `T`.
    pub fn insert<T: Clone + Send + Sync + 'static>(&mut self, value: T) {
        self.0.insert(TypeId::of::<T>(), Arc::new(value));
    }

    /// The state of type `T`.
    pub fn get<T: Clone + Send + Sync + 'static>(&self) -> Option<&T> {
        self.0.get(&TypeId::of::<T>())?.downcast_ref()
    }

    /// Whether a state of this type is present.
    pub fn contains(&self, id: TypeId) -> bool {
        self.0.contains_key(&id)
    }
}

/// What a handler runs with besides the message: shared state and a publisher.
#[derive(Clone, Debug)]
pub struct Context {
    /// What every message's context shares: one reference to count per handler run, not one
    /// per part (those counts are touched from every worker thread).
    shared: Arc<Shared>,
    /// The publisher of this run when it is not the shared one (exactly-once: one holding
    /// what the handler publishes).
    publisher: Option<Publisher>,
    acker: Option<Acker>,
    correlation_id: Option<bytes::Bytes>,
}

#[derive(Clone, Debug)]
struct Shared {
    state: Arc<StateMap>,
    publisher: Publisher,
    control: crate::Control,
}

impl Context {
    /// A context over `state`, publishing through `publisher`.
    pub fn new(state: Arc<StateMap>, publisher: Publisher) -> Self {
        Self {
            shared: Arc::new(Shared {
                state,
                publisher,
                control: crate::Control::default(),
            }),
            publisher: None,
            acker: None,
            correlation_id: None,
        }
    }

    /// The same context handing out `control` (the app's pause and resume handle).
    pub fn with_control(mut self, control: crate::Control) -> Self {
        Arc::make_mut(&mut self.shared).control = control;
        self
    }

    /// The context of one handler run: its acker (manual ack) and correlation id.
    pub(crate) fn for_attempt(
        &self,
        acker: Option<Acker>,
        correlation_id: Option<bytes::Bytes>,
    ) -> Self {
        Self {
            shared: self.shared.clone(),
            publisher: self.publisher.clone(),
            acker,
            correlation_id,
        }
    }

    /// The same context whose publisher holds what the handler publishes (exactly-once: it
    /// joins the message's outputs if the attempt succeeds).
    pub(crate) fn holding(mut self) -> (Self, Arc<crate::publish::Held>) {
        let (publisher, held) = self.publisher().holding();
        self.publisher = Some(publisher);
        (self, held)
    }

    /// The shared state.
    pub fn state(&self) -> &StateMap {
        &self.shared.state
    }

    /// The publisher handle.
    pub fn publisher(&self) -> &Publisher {
        self.publisher.as_ref().unwrap_or(&self.shared.publisher)
    }

    /// The pause and resume handle of the app.
    pub fn control(&self) -> &crate::Control {
        &self.shared.control
    }
}

/// A handler argument built from the message and context rather than decoded from the body.
///
/// Implement it for your own types and mark the argument `#[context]`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an extractor",
    label = "cannot be built from the message or the context",
    note = "extractors are Key, Headers, Topic, Partition, Offset, Timestamp, Message, State<T>, Publisher, Control, CorrelationId, Acker, or your own type implementing `FromMessage`; write `#[body]` if this argument is the payload"
)]
pub trait FromMessage: Sized {
    /// Builds the value; an error fails the message like a decode error.
    fn from_message(msg: &Message, ctx: &Context) -> Result<Self, DecodeError>;
}

macro_rules! newtype_extractor {
    ($(#[$doc:meta])* $name:ident($ty:ty) = |$msg:ident| $value:expr) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq)]
        pub struct $name(pub $ty);

        impl FromMessage for $name {
            fn from_message($msg: &Message, _: &Context) -> Result<Self, DecodeError> {
                Ok($name($value))
            }
        }
    };
}

newtype_extractor!(
    /// The record key (`None` when the record has no key).
    Key(Option<Bytes>) = |m| m.key.clone()
);
newtype_extractor!(
    /// The topic the message was read from.
    Topic(Arc<str>) = |m| m.topic.clone()
);
newtype_extractor!(
    /// The partition the message was read from.
    Partition(i32) = |m| m.partition
);
newtype_extractor!(
    /// The offset of the message in its partition.
    Offset(i64) = |m| m.offset
);
newtype_extractor!(
    /// The record timestamp in milliseconds since the epoch, if it has one.
    Timestamp(Option<i64>) = |m| m.timestamp
);

impl Key {
    /// The key as UTF-8 text, if it is present and text.
    pub fn as_str(&self) -> Option<&str> {
        self.0.as_deref().and_then(|k| std::str::from_utf8(k).ok())
    }
}

/// The correlation id: the incoming `correlation_id` header (or, when absent, the one generated
/// for this message), which every message published while handling it carries too.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CorrelationId(pub String);

impl FromMessage for CorrelationId {
    fn from_message(msg: &Message, ctx: &Context) -> Result<Self, DecodeError> {
        let id = match &ctx.correlation_id {
            Some(id) => String::from_utf8_lossy(id).into_owned(),
            None => msg.correlation_id().unwrap_or("").to_owned(),
        };
        Ok(CorrelationId(id))
    }
}

impl FromMessage for Headers {
    fn from_message(msg: &Message, _: &Context) -> Result<Self, DecodeError> {
        Ok(msg.headers.clone())
    }
}

impl FromMessage for Message {
    fn from_message(msg: &Message, _: &Context) -> Result<Self, DecodeError> {
        Ok(msg.clone())
    }
}

impl FromMessage for Acker {
    fn from_message(_: &Message, ctx: &Context) -> Result<Self, DecodeError> {
        ctx.acker.clone().ok_or_else(|| {
            DecodeError::new(
                "Acker",
                "this route does not acknowledge by hand: set ack = \"manual\" on its #[subscriber]",
            )
        })
    }
}

impl FromMessage for crate::Control {
    fn from_message(_: &Message, ctx: &Context) -> Result<Self, DecodeError> {
        Ok(ctx.control().clone())
    }
}

impl FromMessage for Publisher {
    fn from_message(_: &Message, ctx: &Context) -> Result<Self, DecodeError> {
        Ok(ctx.publisher().clone())
    }
}

/// Shared state given to the app with `with_state(value)`; cloned for each message (wrap large
/// values in an `Arc`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct State<T>(pub T);

impl<T> std::ops::Deref for State<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T: Clone + Send + Sync + 'static> FromMessage for State<T> {
    fn from_message(_: &Message, ctx: &Context) -> Result<Self, DecodeError> {
        // Startup validation guarantees presence; keep a clear error for hand-built contexts.
        ctx.state().get::<T>().cloned().map(State).ok_or_else(|| {
            DecodeError::new(
                format!("State<{}>", std::any::type_name::<T>()),
                "the app was not given this state",
            )
        })
    }
}

/// A value read from one header, by name: `#[header("x-request-id")] id: String`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be read from a header",
    note = "a #[header] argument is String, Bytes, Vec<u8>, or an Option of one of them"
)]
pub trait FromHeader: Sized {
    /// Reads header `name` of `msg`.
    fn from_header(msg: &Message, name: &str) -> Result<Self, DecodeError>;
}

fn required<'m>(msg: &'m Message, name: &str) -> Result<&'m Bytes, DecodeError> {
    msg.headers
        .get(name)
        .ok_or_else(|| DecodeError::new(format!("header `{name}`"), "the header is missing"))
}

impl FromHeader for Bytes {
    fn from_header(msg: &Message, name: &str) -> Result<Self, DecodeError> {
        required(msg, name).cloned()
    }
}

impl FromHeader for Vec<u8> {
    fn from_header(msg: &Message, name: &str) -> Result<Self, DecodeError> {
        required(msg, name).map(|b| b.to_vec())
    }
}

impl FromHeader for String {
    fn from_header(msg: &Message, name: &str) -> Result<Self, DecodeError> {
        let raw = required(msg, name)?;
        std::str::from_utf8(raw).map(str::to_owned).map_err(|_| {
            DecodeError::new(format!("header `{name}`"), "the value is not valid UTF-8")
        })
    }
}

impl<T: FromHeader> FromHeader for Option<T> {
    fn from_header(msg: &Message, name: &str) -> Result<Self, DecodeError> {
        if msg.headers.get(name).is_none() {
            return Ok(None);
        }
        T::from_header(msg, name).map(Some)
    }
}
