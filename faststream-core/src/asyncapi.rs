//! AsyncAPI 3.0 documents of a service's routes ([`FastStream::asyncapi`](crate::FastStream::asyncapi)),
//! and the payload descriptions they are built from, which the topic-contract check at startup
//! also reads.
//!
//! Each route describes what its body and its return value look like on the wire: the content
//! type, the Rust type, and (with the `schemars` feature, for types that derive
//! `schemars::JsonSchema`) a JSON Schema. The document follows what Python FastStream generates:
//! a channel per subscription (`topic:Handler`) and per published topic (`topic:Publisher`), a
//! `receive` operation per subscription and a `send` operation per published topic, messages
//! with their correlation id in the `correlation_id` header, the Kafka bindings.

use std::collections::BTreeMap;
use std::marker::PhantomData;

use serde_json::{json, Map, Value};

use crate::message::content_type;
use crate::route::RouteDef;

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
    fn definitions(&mut self) -> Map<String, Value> {
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

/// Where the document says the service connects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Server {
    /// `host:port` of the (first) bootstrap broker.
    pub host: String,
    /// `kafka`, or `kafka-secure` over TLS.
    pub protocol: &'static str,
}

/// An AsyncAPI 3.0 document.
#[derive(Clone, Debug, PartialEq)]
pub struct AsyncApi(Value);

impl AsyncApi {
    /// The document as JSON (pretty-printed).
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(&self.0).expect("a JSON value serializes")
    }

    /// The document as YAML.
    pub fn to_yaml(&self) -> String {
        let mut out = String::new();
        yaml(&self.0, 0, &mut out);
        out
    }

    /// The document as a JSON value.
    pub fn as_value(&self) -> &Value {
        &self.0
    }

    /// Builds the document of `routes` (topic names with `prefix`).
    pub(crate) fn build(
        routes: &[&'static RouteDef],
        prefix: &str,
        info: (&str, &str),
        server: Option<Server>,
    ) -> AsyncApi {
        let mut gen = SchemaGen::default();
        let mut channels = Map::new();
        let mut operations = Map::new();
        let mut messages = Map::new();
        let mut inline = BTreeMap::new();
        let server_ref = json!([{"$ref": "#/servers/development"}]);
        let kafka = |topic: &str| json!({"kafka": {"topic": topic, "bindingVersion": "0.4.0"}});
        for route in routes {
            let schemas = route.schemas(&mut gen);
            let handler = camel(route.fn_name());
            for sub in route.subscribers() {
                for topic in sub.topics() {
                    let topic = format!("{prefix}{topic}");
                    let channel = format!("{topic}:{handler}");
                    let message = format!("{channel}:SubscribeMessage");
                    messages.insert(
                        message.clone(),
                        message_object(&message, schemas.body.as_ref(), &mut inline),
                    );
                    channels.insert(
                        channel.clone(),
                        json!({
                            "address": topic,
                            "servers": server_ref,
                            "messages": {"SubscribeMessage": {"$ref": format!("#/components/messages/{message}")}},
                            "bindings": kafka(&topic),
                        }),
                    );
                    let mut operation = json!({
                        "action": "receive",
                        "channel": {"$ref": format!("#/channels/{channel}")},
                        "messages": [{"$ref": format!("#/channels/{channel}/messages/SubscribeMessage")}],
                    });
                    if let Some(group) = sub.group() {
                        operation["bindings"] = json!({"kafka": {
                            "groupId": {"type": "string", "enum": [format!("{prefix}{group}")]},
                            "bindingVersion": "0.4.0",
                        }});
                    }
                    operations.insert(format!("{channel}Subscribe"), operation);
                }
            }
            for topic in route.publishers() {
                let topic = format!("{prefix}{topic}");
                let channel = format!("{topic}:Publisher");
                let key = format!("{handler}:Message");
                let message = format!("{channel}:{key}");
                messages.insert(
                    message.clone(),
                    message_object(&message, schemas.reply.as_ref(), &mut inline),
                );
                let entry = channels.entry(channel.clone()).or_insert_with(|| {
                    json!({
                        "address": topic,
                        "servers": server_ref,
                        "messages": {},
                        "bindings": kafka(&topic),
                    })
                });
                entry["messages"][&key] =
                    json!({"$ref": format!("#/components/messages/{message}")});
                let operation = operations.entry(channel.clone()).or_insert_with(|| {
                    json!({
                        "action": "send",
                        "channel": {"$ref": format!("#/channels/{channel}")},
                        "messages": [],
                    })
                });
                operation["messages"]
                    .as_array_mut()
                    .expect("an operation's messages are a list")
                    .push(json!({"$ref": format!("#/channels/{channel}/messages/{key}")}));
            }
        }
        let mut schemas = gen.definitions();
        schemas.extend(inline);
        let mut doc = json!({
            "asyncapi": "3.0.0",
            "info": {"title": info.0, "version": info.1},
            "defaultContentType": content_type::JSON,
            "channels": channels,
            "operations": operations,
            "components": {"messages": messages, "schemas": schemas},
        });
        let server = server.unwrap_or(Server {
            host: "localhost:9092".into(),
            protocol: "kafka",
        });
        doc["servers"] = json!({"development": {
            "host": server.host,
            "pathname": "",
            "protocol": server.protocol,
            "protocolVersion": "auto",
        }});
        AsyncApi(doc)
    }
}

/// A message object; its payload schema goes to `components.schemas` under `{id}:Payload`.
fn message_object(
    id: &str,
    payload: Option<&Payload>,
    schemas: &mut BTreeMap<String, Value>,
) -> Value {
    let mut message = json!({
        "title": id,
        "correlationId": {"location": "$message.header#/correlation_id"},
    });
    let payload_id = format!("{id}:Payload");
    let schema = match payload {
        Some(p) => {
            if let Some(ct) = p.content_type {
                message["contentType"] = ct.into();
            }
            let mut schema = p.schema.clone().unwrap_or_else(|| json!({}));
            if let Value::Object(map) = &mut schema {
                map.entry("title")
                    .or_insert_with(|| p.type_name.rsplit("::").next().unwrap_or("").into());
            }
            schema
        }
        None => json!({}),
    };
    schemas.insert(payload_id.clone(), schema);
    message["payload"] = json!({"$ref": format!("#/components/schemas/{payload_id}")});
    message
}

/// `handle_msg` -> `HandleMsg`, as FastStream names handlers.
fn camel(name: &str) -> String {
    name.split('_')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let mut c = p.chars();
            c.next()
                .map(|f| f.to_uppercase().chain(c).collect::<String>())
                .unwrap_or_default()
        })
        .collect()
}

/// YAML of a JSON value: block mappings and sequences, strings double-quoted (JSON escapes are
/// YAML escapes), so every value reads back exactly.
fn yaml(value: &Value, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                out.push_str(&pad);
                out.push_str(&Value::from(k.as_str()).to_string());
                out.push(':');
                yaml_child(v, indent, out);
            }
        }
        Value::Array(items) if !items.is_empty() => {
            for v in items {
                out.push_str(&pad);
                out.push('-');
                yaml_child(v, indent, out);
            }
        }
        scalar => {
            out.push_str(&pad);
            out.push_str(&scalar.to_string());
            out.push('\n');
        }
    }
}

/// A value after `key:` or `-`: inline if scalar or empty, else on the lines below.
fn yaml_child(value: &Value, indent: usize, out: &mut String) {
    match value {
        Value::Object(m) if !m.is_empty() => {
            out.push('\n');
            yaml(value, indent + 2, out);
        }
        Value::Array(a) if !a.is_empty() => {
            out.push('\n');
            yaml(value, indent + 2, out);
        }
        scalar => {
            out.push(' ');
            out.push_str(&scalar.to_string());
            out.push('\n');
        }
    }
}

/// A topic both published and subscribed by `routes` whose payloads disagree: the
/// subscriber's schema does not accept what the publisher's return type produces. Returns
/// `(topic, publisher, subscriber, why)` per mismatch. Only JSON payloads whose types have
/// schemas on both ends (the `schemars` feature, types deriving `JsonSchema`) can be compared;
/// others pass.
pub(crate) fn contract_mismatches(
    routes: &[&'static RouteDef],
) -> Vec<(String, &'static RouteDef, &'static RouteDef, String)> {
    let mut gen = SchemaGen::default();
    let described: Vec<RouteSchemas> = routes.iter().map(|r| r.schemas(&mut gen)).collect();
    let defs = gen.definitions();
    let mut found = Vec::new();
    for (p, publisher) in routes.iter().enumerate() {
        let Some(sent) = &described[p].reply else {
            continue;
        };
        for topic in publisher.publishers() {
            for (s, subscriber) in routes.iter().enumerate() {
                if !subscriber
                    .subscribers()
                    .iter()
                    .any(|sub| sub.topics().contains(topic))
                {
                    continue;
                }
                let Some(read) = &described[s].body else {
                    continue;
                };
                let json = Some(content_type::JSON);
                if sent.content_type != json || read.content_type != json {
                    continue;
                }
                if sent.type_name == read.type_name {
                    continue;
                }
                if let (Some(out), Some(input)) = (&sent.schema, &read.schema) {
                    if let Err(why) = accepts(input, out, &defs, "", 0) {
                        let why = format!(
                            "it publishes `{}` and the subscriber reads `{}`: {why}",
                            sent.type_name, read.type_name
                        );
                        found.push((topic.to_string(), *publisher, *subscriber, why));
                    }
                }
            }
        }
    }
    found
}

/// Whether every value of schema `out` is a value of schema `input` (as far as types,
/// required fields and items tell); `Err` names the first field that disagrees.
fn accepts(
    input: &Value,
    out: &Value,
    defs: &Map<String, Value>,
    path: &str,
    depth: usize,
) -> Result<(), String> {
    let (input, out) = (resolve(input, defs), resolve(out, defs));
    if depth > 16 || input.as_object().is_none_or(|m| m.is_empty()) || out.as_object().is_none() {
        return Ok(());
    }
    let at = |p: &str| {
        if p.is_empty() {
            "the payload".to_owned()
        } else {
            format!("field `{p}`")
        }
    };
    if let (Some(want), Some(got)) = (types(input), types(out)) {
        let fits = |t: &str| want.contains(&t) || (t == "integer" && want.contains(&"number"));
        if let Some(t) = got.iter().find(|t| !fits(t)) {
            return Err(format!(
                "{} is {t} when published but read as {}",
                at(path),
                want.join(" or ")
            ));
        }
    }
    if let (Some(want), Some(got)) = (input.get("properties"), out.get("properties")) {
        let sent: Vec<&str> = out
            .get("required")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        for name in input
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            if !sent.contains(&name) {
                let field = if path.is_empty() {
                    name.to_owned()
                } else {
                    format!("{path}.{name}")
                };
                return Err(format!(
                    "field `{field}` is required by the subscriber but not always published"
                ));
            }
        }
        if let (Some(want), Some(got)) = (want.as_object(), got.as_object()) {
            for (name, schema) in want {
                if let Some(published) = got.get(name) {
                    let field = if path.is_empty() {
                        name.clone()
                    } else {
                        format!("{path}.{name}")
                    };
                    accepts(schema, published, defs, &field, depth + 1)?;
                }
            }
        }
    }
    if let (Some(want), Some(got)) = (input.get("items"), out.get("items")) {
        accepts(want, got, defs, &format!("{path}[]"), depth + 1)?;
    }
    Ok(())
}

/// `{"$ref": "#/components/schemas/X"}` -> the definition of `X`.
fn resolve<'a>(schema: &'a Value, defs: &'a Map<String, Value>) -> &'a Value {
    let mut schema = schema;
    for _ in 0..8 {
        let Some(name) = schema
            .get("$ref")
            .and_then(Value::as_str)
            .and_then(|r| r.strip_prefix("#/components/schemas/"))
        else {
            break;
        };
        match defs.get(name) {
            Some(def) => schema = def,
            None => break,
        }
    }
    schema
}

/// The JSON types a schema allows, if it says.
fn types(schema: &Value) -> Option<Vec<&str>> {
    match schema.get("type")? {
        Value::String(t) => Some(vec![t.as_str()]),
        Value::Array(ts) => Some(ts.iter().filter_map(Value::as_str).collect()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handler_names_are_camel_cased() {
        assert_eq!(camel("handle_msg"), "HandleMsg");
        assert_eq!(camel("store"), "Store");
        assert_eq!(camel("_x__y"), "XY");
    }

    #[test]
    fn yaml_writes_nested_values() {
        let v = json!({"a": {"b": [1, "two", {"c": null}], "e": {}}, "$ref": "x:y"});
        let got = AsyncApi(v).to_yaml();
        assert_eq!(
            got,
            "\"$ref\": \"x:y\"\n\"a\":\n  \"b\":\n    - 1\n    - \"two\"\n    -\n      \"c\": null\n  \"e\": {}\n"
        );
    }
}
