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

use serde_json::{json, Map, Value};

use crate::message::content_type;
use crate::route::RouteDef;
pub use crate::schema::{Payload, RouteSchemas, SchemaGen, SchemasFn};

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

    /// Builds the document of `routes` (topic names with `prefix`), dynamic handlers with the
    /// topics of `subscriptions`.
    pub(crate) fn build(
        routes: &[&'static RouteDef],
        prefix: &str,
        info: (&str, &str),
        server: Option<Server>,
        subscriptions: &crate::Subscriptions,
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
                // A pattern subscription is a channel without a fixed address (AsyncAPI's
                // `null`), its pattern in the description.
                // A dynamic one: the topics it is subscribed to now, and a channel without an
                // address for those it may be given.
                let mut named: Vec<(String, Option<String>)> = sub
                    .topics()
                    .iter()
                    .map(|t| (format!("{prefix}{t}"), None))
                    .collect();
                if sub.is_dynamic() {
                    let now = subscriptions.get(route.name()).into_iter().flatten();
                    named.extend(now.map(|t| (format!("{prefix}{t}"), None)));
                    named.push((
                        "dynamic".into(),
                        Some("the topics this handler is subscribed to while the service runs (Control::subscribe)".into()),
                    ));
                }
                // Retry topics are read by the handler too.
                let retry = route.policy().retry_topic_names().iter();
                named.extend(retry.map(|(t, _)| (format!("{prefix}{t}"), None)));
                if let Some(p) = sub.topic_pattern() {
                    let topic = format!("{prefix}{p}");
                    let description =
                        format!("every topic whose name matches the regular expression {topic}");
                    named.push((topic, Some(description)));
                }
                for (topic, unaddressed) in named {
                    let channel = format!("{topic}:{handler}");
                    let message = format!("{channel}:SubscribeMessage");
                    messages.insert(
                        message.clone(),
                        message_object(&message, schemas.body.as_ref(), &mut inline),
                    );
                    let mut entry = json!({
                        "address": topic,
                        "servers": server_ref,
                        "messages": {"SubscribeMessage": {"$ref": format!("#/components/messages/{message}")}},
                        "bindings": kafka(&topic),
                    });
                    if let Some(description) = unaddressed {
                        entry["address"] = Value::Null;
                        entry["description"] = description.into();
                        entry.as_object_mut().map(|e| e.remove("bindings"));
                    }
                    channels.insert(channel.clone(), entry);
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
            // What it sends: its return values, and copies of its input to the dead-letter
            // topic and the retry topics.
            let outputs = route
                .publishers()
                .iter()
                .map(|t| (*t, schemas.reply.as_ref()));
            let policy = route.policy();
            let copies = policy.dlq_topic().into_iter();
            let copies = copies.chain(policy.retry_topic_names().iter().map(|(t, _)| *t));
            let copies = copies.map(|t| (t, schemas.body.as_ref()));
            for (topic, payload) in outputs.chain(copies) {
                let topic = format!("{prefix}{topic}");
                let channel = format!("{topic}:Publisher");
                let key = format!("{handler}:Message");
                let message = format!("{channel}:{key}");
                messages.insert(
                    message.clone(),
                    message_object(&message, payload, &mut inline),
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
