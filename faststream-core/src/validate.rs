//! Startup validation of the routes: against each other (one subscription per topic and group,
//! each topic published once per handler), against the app's state, and the topic contracts
//! between publishers and subscribers (by JSON Schema, where both ends have one).

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::error::RouteProblem;
use crate::extract::StateMap;
use crate::message::content_type;
use crate::route::{registered_routes, RouteDef};
use crate::schema::{RouteSchemas, SchemaGen};

fn describe(route: &RouteDef) -> String {
    format!("{} ({})", route.name(), route.location())
}

/// Checks the routes against each other and against the provided state; returns every problem.
pub fn validate(routes: &[&'static RouteDef], state: &StateMap) -> Result<(), Vec<RouteProblem>> {
    let mut problems = Vec::new();
    if routes.is_empty() {
        problems.push(RouteProblem::NoRoutes);
    }
    let mut seen: BTreeMap<(&str, &str), &RouteDef> = BTreeMap::new();
    for route in routes {
        for sub in route.subscribers() {
            let Some(group) = sub.group() else { continue };
            for topic in sub.topics() {
                if let Some(first) = seen.insert((topic, group), route) {
                    problems.push(RouteProblem::DuplicateSubscription {
                        topic: topic.to_string(),
                        group: group.to_string(),
                        first: describe(first),
                        second: describe(route),
                    });
                }
            }
        }
        for req in route.states() {
            if !state.contains(req.type_id) {
                problems.push(RouteProblem::MissingState {
                    handler: describe(route),
                    type_name: req.type_name,
                });
            }
        }
        for (i, topic) in route.publishers().iter().enumerate() {
            if route.publishers()[..i].contains(topic) {
                problems.push(RouteProblem::DuplicatePublisher {
                    handler: describe(route),
                    topic: topic.to_string(),
                });
            }
        }
    }
    if let Err(mismatches) = check_contracts(routes) {
        problems.extend(mismatches);
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

/// Checks the topic contracts between `routes`: wherever one handler publishes to a topic
/// another subscribes to, the subscriber's body type must accept what the publisher returns
/// (compared by JSON Schema where both types derive `schemars::JsonSchema`, with the
/// `schemars` feature; other payloads pass). Runs at startup with the other checks; as a
/// one-line test of your own:
///
/// ```no_run
/// # fn check() {
/// faststream_core::check_contracts(&faststream_core::registered_routes()).unwrap();
/// # }
/// ```
pub fn check_contracts(routes: &[&'static RouteDef]) -> Result<(), Vec<RouteProblem>> {
    let problems: Vec<RouteProblem> = contract_mismatches(routes)
        .into_iter()
        .map(
            |(topic, publisher, subscriber, reason)| RouteProblem::ContractMismatch {
                topic,
                publisher: describe(publisher),
                subscriber: describe(subscriber),
                reason,
            },
        )
        .collect();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
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

/// The routes an app or test broker runs: `explicit` ones, or every registered one, validated
/// against the state it was given.
pub(crate) fn resolve_routes(
    explicit: Option<Vec<&'static RouteDef>>,
    state: &StateMap,
) -> crate::Result<Vec<&'static RouteDef>> {
    let routes = explicit.unwrap_or_else(registered_routes);
    validate(&routes, state).map_err(crate::Error::InvalidRoutes)?;
    Ok(routes)
}
