//! Payload descriptions: what each route's body and return value look like on the wire (content
//! type, Rust type, and with the `schemars` feature a JSON Schema), as the macros generate them.
//! The AsyncAPI document and the topic-contract check at startup are built from them.

use std::marker::PhantomData;

use serde_json::{json, Map, Value};

use crate::message::content_type;

/// Collects the JSON Schemas of payload types (named types go to `components.schemas` and are
/// referenced from there). Without the `schemars` feature it collects nothing.
#[derive(Debug)]
pub struct SchemaGen {
    #[cfg(feature = "schemars")]
    gen: schemars::SchemaGenerator,
}

// Derivable only without the `schemars` feature.
#[allow(clippy::derivable_impls)]
impl Default for SchemaGen {
    fn default() -> Self {
        Self {
            #[cfg(feature = "schemars")]
            gen: schemars::generate::SchemaSettings::draft07()
                .with(|s| {
                    s.definitions_path = "/components/schemas".into();
                    s.meta_schema = None;
                })
                .into_generator(),
        }
    }
}

impl SchemaGen {
    /// The named schemas collected so far.
    pub(crate) fn definitions(&mut self) -> Map<String, Value> {
        #[cfg(feature = "schemars")]
        return self.gen.take_definitions(true);
        #[cfg(not(feature = "schemars"))]
        Map::new()
    }
}

/// What one side of a route (its body, or its return value) looks like on the wire.
#[derive(Clone, Debug, PartialEq)]
pub struct Payload {
    /// The content type (`None`: raw bytes, any content).
    pub content_type: Option<&'static str>,
    /// The Rust type, as written in the handler.
    pub type_name: &'static str,
    /// Its JSON Schema, if known.
    pub schema: Option<Value>,
}

impl Payload {
    /// UTF-8 text.
    pub fn text(type_name: &'static str) -> Self {
        Self {
            content_type: Some(content_type::TEXT),
            type_name,
            schema: Some(json!({"type": "string"})),
        }
    }

    /// Raw bytes.
    pub fn bytes(type_name: &'static str) -> Self {
        Self {
            content_type: None,
            type_name,
            schema: Some(json!({"type": "string", "format": "binary"})),
        }
    }

    /// What a return type the macro could not classify by its spelling publishes: decided by
    /// the type (an alias of `String` is text).
    pub fn reply(
        kind: crate::probe::ReplyKind,
        type_name: &'static str,
        schema: Option<Value>,
    ) -> Option<Self> {
        use crate::probe::ReplyKind;
        match kind {
            ReplyKind::Nothing => None,
            ReplyKind::Text => Some(Self::text(type_name)),
            ReplyKind::Bytes => Some(Self::bytes(type_name)),
            ReplyKind::Json => Some(Self::json(type_name, schema)),
        }
    }

    /// JSON, with its schema if known.
    pub fn json(type_name: &'static str, schema: Option<Value>) -> Self {
        Self {
            content_type: Some(content_type::JSON),
            type_name,
            schema,
        }
    }
}

/// The payloads of one route: what it receives and what it returns.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RouteSchemas {
    /// The body (`None`: the handler does not read it).
    pub body: Option<Payload>,
    /// The return value (`None`: it publishes nothing).
    pub reply: Option<Payload>,
}

/// The payload description a route's macro generated.
pub type SchemasFn = fn(&mut SchemaGen) -> RouteSchemas;

/// The schema of a JSON object with these fields (name, required, schema); `None` unless every
/// field's schema is known. For handlers with several body arguments.
pub fn object_schema(fields: &[(&str, bool, Option<Value>)]) -> Option<Value> {
    let mut properties = Map::new();
    let mut required = Vec::new();
    for (name, needed, schema) in fields {
        properties.insert((*name).to_owned(), schema.clone()?);
        if *needed {
            required.push(Value::from(*name));
        }
    }
    Some(json!({"type": "object", "properties": properties, "required": required}))
}

/// Finds the JSON Schema of `T` in generated code: the `schemars` one where `T` has it, else
/// none (autoref specialization: see [`schema_of!`](crate::__schema_of)).
#[doc(hidden)]
#[derive(Debug)]
pub struct SchemaProbe<T: ?Sized>(PhantomData<T>);

impl<T: ?Sized> SchemaProbe<T> {
    /// A probe for `T`.
    pub const fn new() -> Self {
        Self(PhantomData)
    }
}

impl<T: ?Sized> Default for SchemaProbe<T> {
    fn default() -> Self {
        Self::new()
    }
}

/// The fallback of [`SchemaProbe`]: no schema.
#[doc(hidden)]
pub trait NoSchema {
    /// None.
    fn schema(&self, _: &mut SchemaGen) -> Option<Value> {
        None
    }
}

impl<T: ?Sized> NoSchema for &SchemaProbe<T> {}

/// The schema of a type deriving `schemars::JsonSchema`.
#[cfg(feature = "schemars")]
#[doc(hidden)]
pub trait HasSchema {
    /// Its schema (a reference into `components.schemas` for named types).
    fn schema(&self, gen: &mut SchemaGen) -> Option<Value>;
}

#[cfg(feature = "schemars")]
impl<T: ?Sized + schemars::JsonSchema> HasSchema for SchemaProbe<T> {
    fn schema(&self, gen: &mut SchemaGen) -> Option<Value> {
        Some(gen.gen.subschema_for::<T>().to_value())
    }
}

/// `schema_of!(gen, T)`: `Some(schema)` if `T` derives `schemars::JsonSchema` (with the
/// `schemars` feature), else `None`. For generated code.
#[cfg(feature = "schemars")]
#[doc(hidden)]
#[macro_export]
macro_rules! __schema_of {
    ($gen:expr, $t:ty) => {{
        #[allow(unused_imports)]
        use $crate::__private::{HasSchema as _, NoSchema as _};
        (&$crate::__private::SchemaProbe::<$t>::new()).schema($gen)
    }};
}

/// `schema_of!(gen, T)`: `None` without the `schemars` feature.
#[cfg(not(feature = "schemars"))]
#[doc(hidden)]
#[macro_export]
macro_rules! __schema_of {
    ($gen:expr, $t:ty) => {{
        #[allow(unused_imports)]
        use $crate::__private::NoSchema as _;
        (&$crate::__private::SchemaProbe::<$t>::new()).schema($gen)
    }};
}
