//! Codecs: payload bytes to handler arguments and values to payload bytes.
//!
//! | Rust type                  | decoded from / encoded as | `content-type`     |
//! |----------------------------|---------------------------|--------------------|
//! | `String`, `&str`           | UTF-8 text                | `text/plain`       |
//! | `Vec<u8>`, `Bytes`         | raw bytes                 | none               |
//! | anything else (`Json<T>`)  | JSON through serde        | `application/json` |
//!
//! An incoming `content-type` is honoured: a JSON body accepts `application/json`, `text/*` or
//! no content type, and refuses any other (Avro, Protobuf, ...) with a clear error rather than
//! misreading it.

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{DecodeError, HandlerError};
use crate::message::{content_type, header, Message, OutgoingMessage};

/// Explicitly JSON: as an argument, decodes the payload as JSON; as a return value, encodes it
/// as JSON. Useful where the written type would otherwise be read as text or bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Json<T>(pub T);

fn payload<'m>(msg: &'m Message, target: &str) -> Result<&'m Bytes, DecodeError> {
    msg.payload
        .as_ref()
        .ok_or_else(|| DecodeError::new(target, "the payload is null (a tombstone)"))
}

/// Decodes the whole payload as UTF-8 text.
pub fn decode_text(msg: &Message) -> Result<String, HandlerError> {
    let bytes = payload(msg, "the text body")?;
    match std::str::from_utf8(bytes) {
        Ok(s) => Ok(s.to_owned()),
        Err(e) => Err(DecodeError::new(
            "the text body",
            format!(
                "payload is not valid UTF-8 (invalid byte at position {})",
                e.valid_up_to()
            ),
        )
        .into()),
    }
}

/// The whole payload as bytes.
pub fn decode_raw(msg: &Message) -> Result<Bytes, HandlerError> {
    Ok(payload(msg, "the bytes body")?.clone())
}

/// Decodes the payload as JSON into `T`; `target` names what was expected, for the error.
pub fn decode_json<T: DeserializeOwned>(msg: &Message, target: &str) -> Result<T, HandlerError> {
    let bytes = payload(msg, target)?;
    if let Some(ct) = msg.content_type() {
        let mime = ct.split(';').next().unwrap_or("").trim();
        let json_like =
            mime.is_empty() || mime.starts_with("text/") || mime.ends_with("json") || mime == "*/*";
        if !json_like {
            return Err(DecodeError::new(
                target,
                format!("unsupported content type {ct:?}: this body is decoded as JSON"),
            )
            .into());
        }
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(DecodeError::new(target, "the payload is empty").into());
    }
    // Fast path without path tracking; on failure, decode again to learn which field was wrong.
    if let Ok(value) = serde_json::from_slice(bytes) {
        return Ok(value);
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    let result: Result<T, _> = serde_path_to_error::deserialize(de);
    result.map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        let reason = if inner.is_syntax() || inner.is_eof() {
            format!("payload is not valid JSON: {inner}")
        } else {
            inner.to_string()
        };
        HandlerError::Decode(DecodeError {
            target: target.to_owned(),
            field: (path != "." && !path.is_empty()).then_some(path),
            reason,
        })
    })
}

/// Values that can be published as a payload (see the module table).
pub trait IntoPayload {
    /// The payload and its content type.
    fn into_payload(self) -> Result<(Bytes, Option<&'static str>), crate::Error>;
}

impl IntoPayload for String {
    fn into_payload(self) -> Result<(Bytes, Option<&'static str>), crate::Error> {
        Ok((Bytes::from(self), Some(content_type::TEXT)))
    }
}

impl IntoPayload for &str {
    fn into_payload(self) -> Result<(Bytes, Option<&'static str>), crate::Error> {
        Ok((
            Bytes::copy_from_slice(self.as_bytes()),
            Some(content_type::TEXT),
        ))
    }
}

impl IntoPayload for Vec<u8> {
    fn into_payload(self) -> Result<(Bytes, Option<&'static str>), crate::Error> {
        Ok((Bytes::from(self), None))
    }
}

impl IntoPayload for Bytes {
    fn into_payload(self) -> Result<(Bytes, Option<&'static str>), crate::Error> {
        Ok((self, None))
    }
}

impl<T: Serialize> IntoPayload for Json<T> {
    fn into_payload(self) -> Result<(Bytes, Option<&'static str>), crate::Error> {
        serde_json::to_vec(&self.0)
            .map(|v| (Bytes::from(v), Some(content_type::JSON)))
            .map_err(|e| crate::Error::Encode {
                topic: String::new(),
                reason: e.to_string(),
            })
    }
}

impl IntoPayload for serde_json::Value {
    fn into_payload(self) -> Result<(Bytes, Option<&'static str>), crate::Error> {
        Json(self).into_payload()
    }
}

/// `Json<T>` has `T`'s schema.
#[cfg(feature = "schemars")]
impl<T: schemars::JsonSchema> schemars::JsonSchema for Json<T> {
    fn inline_schema() -> bool {
        T::inline_schema()
    }

    fn schema_name() -> std::borrow::Cow<'static, str> {
        T::schema_name()
    }

    fn schema_id() -> std::borrow::Cow<'static, str> {
        T::schema_id()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        T::json_schema(generator)
    }
}

impl OutgoingMessage {
    /// A message whose payload is `value` encoded by the codec rules (text, bytes or JSON), with
    /// the matching `content-type` header.
    pub fn encode(topic: impl AsRef<str>, value: impl IntoPayload) -> Result<Self, crate::Error> {
        let (payload, content_type) = value.into_payload()?;
        let mut msg = Self::new(topic, payload);
        if let Some(ct) = content_type {
            msg.headers.insert(header::CONTENT_TYPE, ct);
        }
        Ok(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize, PartialEq)]
    struct User {
        user: String,
        user_id: i64,
    }

    fn msg(payload: &str) -> Message {
        Message::new("t", payload.to_owned())
    }

    fn decode_err(m: &Message) -> DecodeError {
        match decode_json::<User>(m, "User").unwrap_err() {
            HandlerError::Decode(d) => d,
            other => panic!("expected a decode error, got {other:?}"),
        }
    }

    #[test]
    fn json_decodes() {
        let u: User = decode_json(&msg(r#"{"user":"john","user_id":1}"#), "User").unwrap();
        assert_eq!(u.user_id, 1);
    }

    #[test]
    fn json_errors_name_the_field() {
        let e = decode_err(&msg(r#"{"user":"john"}"#));
        assert!(e.reason.contains("missing field `user_id`"), "{e}");
        let e = decode_err(&msg(r#"{"user":"john","user_id":"one"}"#));
        assert_eq!(e.field.as_deref(), Some("user_id"));
        assert!(
            e.to_string()
                .contains("field `user_id`: invalid type: string"),
            "{e}"
        );
        let e = decode_err(&msg("not json"));
        assert!(e.reason.starts_with("payload is not valid JSON"), "{e}");
        let e = decode_err(&msg(""));
        assert_eq!(e.reason, "the payload is empty");
        let mut tomb = msg("x");
        tomb.payload = None;
        assert!(decode_err(&tomb).reason.contains("tombstone"));
    }

    #[test]
    fn content_type_is_honoured() {
        let m = msg(r#"{"user":"john","user_id":1}"#);
        assert!(decode_json::<User>(
            &m.clone().with_header("content-type", "application/json"),
            "User"
        )
        .is_ok());
        assert!(decode_json::<User>(
            &m.clone()
                .with_header("content-type", "text/plain; charset=utf-8"),
            "User"
        )
        .is_ok());
        let e = decode_err(&m.with_header("content-type", "application/avro"));
        assert!(e
            .reason
            .contains("unsupported content type \"application/avro\""));
    }

    #[test]
    fn text_must_be_utf8() {
        let m = Message::new("t", vec![b'o', b'k', 0xff]);
        let e = decode_text(&m).unwrap_err();
        assert!(
            e.to_string()
                .contains("not valid UTF-8 (invalid byte at position 2)"),
            "{e}"
        );
        assert_eq!(decode_text(&msg("héllo")).unwrap(), "héllo");
    }

    #[test]
    fn payload_encoding() {
        assert_eq!(
            "a".into_payload().unwrap(),
            (Bytes::from("a"), Some("text/plain"))
        );
        assert_eq!(
            vec![1u8].into_payload().unwrap(),
            (Bytes::from(vec![1u8]), None)
        );
        let (b, ct) = Json(serde_json::json!({"a": 1})).into_payload().unwrap();
        assert_eq!((&b[..], ct), (&br#"{"a":1}"#[..], Some("application/json")));
    }
}
