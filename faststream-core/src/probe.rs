//! How generated code decodes a body and encodes a return value whose written type the macro
//! cannot classify (an alias, a path it does not know): by the type itself, through autoref
//! specialization. `type Name = String` decodes as text, `type Res<T> = Result<T, ApiError>`
//! fails the message on `Err` like a written-out `Result`, whatever the spelling.
//!
//! The probes are called as `(&&&Probe::<T>::new()).decode(..)` / `.encode(..)`: method
//! lookup tries the impls for `&&Probe<T>` first (exact types: text, bytes, unit, and
//! `Result`/`Option` of those), then `&Probe<T>` (any other `Result` or `Option`: JSON inside),
//! then `Probe<T>` (JSON for anything else). The bounds sit on the methods, so a type that is
//! not `Serialize`/`Deserialize` (or an error type that is not `Display`) fails to compile
//! naming the missing trait.

use std::fmt::Display;
use std::marker::PhantomData;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::codec::{decode_json, decode_raw, decode_text};
use crate::error::HandlerError;
use crate::message::Message;
use crate::outcome::Reply;

/// Selects the body decoding of `T`.
#[derive(Debug)]
pub struct BodyProbe<T>(PhantomData<T>);

impl<T> BodyProbe<T> {
    /// A probe for `T`.
    pub const fn new() -> Self {
        Self(PhantomData)
    }
}

impl<T> Default for BodyProbe<T> {
    fn default() -> Self {
        Self::new()
    }
}

/// Text and bytes bodies, by type.
pub trait DecodeExact<T> {
    /// Decodes the body as `T`.
    fn decode(&self, msg: &Message, what: &str) -> Result<T, HandlerError>;

    /// How it is read.
    fn kind(&self) -> ReplyKind;
}

impl DecodeExact<String> for &BodyProbe<String> {
    fn decode(&self, msg: &Message, _: &str) -> Result<String, HandlerError> {
        decode_text(msg)
    }

    fn kind(&self) -> ReplyKind {
        ReplyKind::Text
    }
}

impl DecodeExact<Bytes> for &BodyProbe<Bytes> {
    fn decode(&self, msg: &Message, _: &str) -> Result<Bytes, HandlerError> {
        decode_raw(msg)
    }

    fn kind(&self) -> ReplyKind {
        ReplyKind::Bytes
    }
}

impl DecodeExact<Vec<u8>> for &BodyProbe<Vec<u8>> {
    fn decode(&self, msg: &Message, _: &str) -> Result<Vec<u8>, HandlerError> {
        decode_raw(msg).map(Vec::from)
    }

    fn kind(&self) -> ReplyKind {
        ReplyKind::Bytes
    }
}

/// Any other body: JSON.
pub trait DecodeJson<T> {
    /// Decodes the body as JSON into `T`.
    fn decode(&self, msg: &Message, what: &str) -> Result<T, HandlerError>
    where
        T: DeserializeOwned;

    /// How it is read.
    fn kind(&self) -> ReplyKind {
        ReplyKind::Json
    }
}

impl<T> DecodeJson<T> for BodyProbe<T> {
    fn decode(&self, msg: &Message, what: &str) -> Result<T, HandlerError>
    where
        T: DeserializeOwned,
    {
        decode_json(msg, what)
    }
}

/// Selects the encoding of a return value of type `T`.
#[derive(Debug)]
pub struct ReplyProbe<T>(PhantomData<T>);

impl<T> ReplyProbe<T> {
    /// A probe for `T`.
    pub const fn new() -> Self {
        Self(PhantomData)
    }
}

impl<T> Default for ReplyProbe<T> {
    fn default() -> Self {
        Self::new()
    }
}

/// What a return type publishes, for the AsyncAPI document.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplyKind {
    /// Nothing.
    Nothing,
    /// UTF-8 text.
    Text,
    /// Raw bytes.
    Bytes,
    /// JSON.
    Json,
}

/// Exact types: text, bytes, unit, and `Result`/`Option` of those.
pub trait EncodeExact<T> {
    /// Encodes the value.
    fn encode(&self, value: T) -> Result<Reply, HandlerError>;

    /// What it publishes.
    fn kind(&self) -> ReplyKind;
}

/// `Result` of a JSON value: `Err` fails the message.
pub trait EncodeResult<T, E> {
    /// Encodes the value.
    fn encode(&self, value: Result<T, E>) -> Result<Reply, HandlerError>
    where
        T: Serialize,
        E: Display + 'static;

    /// What it publishes.
    fn kind(&self) -> ReplyKind {
        ReplyKind::Json
    }
}

/// `Option` of a JSON value: `None` publishes nothing.
pub trait EncodeOption<T> {
    /// Encodes the value.
    fn encode(&self, value: Option<T>) -> Result<Reply, HandlerError>
    where
        T: Serialize;

    /// What it publishes.
    fn kind(&self) -> ReplyKind {
        ReplyKind::Json
    }
}

/// Anything else: JSON.
pub trait EncodeJson<T> {
    /// Encodes the value.
    fn encode(&self, value: T) -> Result<Reply, HandlerError>
    where
        T: Serialize;

    /// What it publishes.
    fn kind(&self) -> ReplyKind {
        ReplyKind::Json
    }
}

/// A plain value of an exact type.
trait Leaf {
    const KIND: ReplyKind;
    fn reply(self) -> Reply;
}

impl Leaf for String {
    const KIND: ReplyKind = ReplyKind::Text;

    fn reply(self) -> Reply {
        Reply::text(self)
    }
}

impl Leaf for &'static str {
    const KIND: ReplyKind = ReplyKind::Text;

    fn reply(self) -> Reply {
        Reply::text(self)
    }
}

impl Leaf for Bytes {
    const KIND: ReplyKind = ReplyKind::Bytes;

    fn reply(self) -> Reply {
        Reply::bytes(self)
    }
}

impl Leaf for Vec<u8> {
    const KIND: ReplyKind = ReplyKind::Bytes;

    fn reply(self) -> Reply {
        Reply::bytes(self)
    }
}

impl Leaf for () {
    const KIND: ReplyKind = ReplyKind::Nothing;

    fn reply(self) -> Reply {
        Reply::none()
    }
}

macro_rules! exact {
    ($($t:ty),*) => {$(
        impl EncodeExact<$t> for &&ReplyProbe<$t> {
            fn encode(&self, value: $t) -> Result<Reply, HandlerError> {
                Ok(value.reply())
            }

            fn kind(&self) -> ReplyKind {
                <$t as Leaf>::KIND
            }
        }

        impl EncodeExact<Option<$t>> for &&ReplyProbe<Option<$t>> {
            fn encode(&self, value: Option<$t>) -> Result<Reply, HandlerError> {
                Ok(value.map_or_else(Reply::none, Leaf::reply))
            }

            fn kind(&self) -> ReplyKind {
                <$t as Leaf>::KIND
            }
        }

        impl<E: Display + 'static> EncodeExact<Result<$t, E>> for &&ReplyProbe<Result<$t, E>> {
            fn encode(&self, value: Result<$t, E>) -> Result<Reply, HandlerError> {
                value.map(Leaf::reply).map_err(HandlerError::from_handler)
            }

            fn kind(&self) -> ReplyKind {
                <$t as Leaf>::KIND
            }
        }
    )*};
}

exact!(String, &'static str, Bytes, Vec<u8>, ());

impl<T, E> EncodeResult<T, E> for &ReplyProbe<Result<T, E>> {
    fn encode(&self, value: Result<T, E>) -> Result<Reply, HandlerError>
    where
        T: Serialize,
        E: Display + 'static,
    {
        match value {
            Ok(v) => Reply::json(&v),
            Err(e) => Err(HandlerError::from_handler(e)),
        }
    }
}

impl<T> EncodeOption<T> for &ReplyProbe<Option<T>> {
    fn encode(&self, value: Option<T>) -> Result<Reply, HandlerError>
    where
        T: Serialize,
    {
        value.map_or_else(|| Ok(Reply::none()), |v| Reply::json(&v))
    }
}

impl<T> EncodeJson<T> for ReplyProbe<T> {
    fn encode(&self, value: T) -> Result<Reply, HandlerError>
    where
        T: Serialize,
    {
        Reply::json(&value)
    }
}

#[cfg(test)]
mod tests {
    // The borrows pick the specialization level; they are the point.
    #![allow(clippy::needless_borrow)]
    use super::*;

    type Res<T> = Result<T, String>;
    type Name = String;

    #[derive(serde::Serialize)]
    struct User {
        id: u32,
    }

    #[test]
    fn aliases_encode_like_the_written_types() {
        let text = (&&&ReplyProbe::<Name>::new())
            .encode("ann".to_owned())
            .unwrap();
        assert_eq!(text, Reply::text("ann"));
        let failed = (&&&ReplyProbe::<Res<User>>::new()).encode(Err("no such user".to_owned()));
        assert!(matches!(failed, Err(HandlerError::Handler(m)) if m == "no such user"));
        let ok = (&&&ReplyProbe::<Res<User>>::new())
            .encode(Ok(User { id: 7 }))
            .unwrap();
        assert_eq!(ok.payload().map(|p| &p[..]), Some(&br#"{"id":7}"#[..]));
        let text_ok = (&&&ReplyProbe::<Res<Name>>::new())
            .encode(Ok("x".to_owned()))
            .unwrap();
        assert_eq!(text_ok, Reply::text("x"));
        assert_eq!((&&&ReplyProbe::<Res<Name>>::new()).kind(), ReplyKind::Text);
        assert_eq!((&&&ReplyProbe::<Res<User>>::new()).kind(), ReplyKind::Json);
        assert_eq!((&&&ReplyProbe::<()>::new()).kind(), ReplyKind::Nothing);
        let none = (&&&ReplyProbe::<Option<User>>::new()).encode(None).unwrap();
        assert_eq!(none, Reply::none());
        let user = (&&&ReplyProbe::<User>::new())
            .encode(User { id: 1 })
            .unwrap();
        assert_eq!(user.payload().map(|p| &p[..]), Some(&br#"{"id":1}"#[..]));
    }

    #[test]
    fn aliases_decode_like_the_written_types() {
        let msg = Message::new("t", &b"plain text"[..]);
        let name: Name = (&&BodyProbe::<Name>::new()).decode(&msg, "Name").unwrap();
        assert_eq!(name, "plain text");
        type Raw = Vec<u8>;
        let raw: Raw = (&&BodyProbe::<Raw>::new()).decode(&msg, "Raw").unwrap();
        assert_eq!(raw, b"plain text");
        let json = Message::new("t", &br#"{"a": 1}"#[..]);
        let v: serde_json::Value = (&&BodyProbe::<serde_json::Value>::new())
            .decode(&json, "Value")
            .unwrap();
        assert_eq!(v["a"], 1);
    }
}
