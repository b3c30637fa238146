//! AsyncAPI 3.0 documents: the seed service's document has the channels and operations Python
//! FastStream generates for the same handler, the official parser (`@asyncapi/parser`) accepts
//! the documents as JSON and YAML, and a service binary prints its document with
//! `--asyncapi yaml` without connecting.

mod common;

use common::*;
use faststream::kafka::KafkaBroker;
use faststream::{publisher, routes, subscriber, FastStream};
use serde_json::Value;

#[subscriber("in_topic")]
#[publisher("out-topic")]
async fn handle_msg(user: String, user_id: i64) -> String {
    format!("User: {user_id} - {user} registered")
}

#[derive(serde::Deserialize)]
struct Reading {
    #[allow(dead_code)]
    value: f64,
}

#[subscriber("readings", group_id = "sink", batch = true)]
#[publisher("stored")]
async fn sink(readings: Vec<Reading>) -> Vec<Vec<u8>> {
    readings.iter().map(|_| b"ok".to_vec()).collect()
}

type Name = String;

#[subscriber("names")]
#[publisher("greetings")]
async fn greet(name: Name) -> Name {
    name
}

#[subscriber(pattern = "audit\\..+", group_id = "audit")]
async fn audit(event: String) {
    let _ = event;
}

#[subscriber(
    "orders",
    group_id = "billing",
    retry_topics = ["orders.retry.30s"],
    dlq = "orders.dlq"
)]
async fn bill(order: Name) -> Result<(), String> {
    let _ = order;
    Ok(())
}

fn seed_app() -> FastStream<KafkaBroker> {
    FastStream::new(KafkaBroker::new("localhost:9092")).with_routes(routes![handle_msg])
}

/// `(operation id, action, channel address)` of a document, sorted.
fn operations(doc: &Value) -> Vec<(String, String, String)> {
    let mut ops: Vec<_> = doc["operations"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(id, op)| {
            let channel = op["channel"]["$ref"]
                .as_str()
                .unwrap()
                .trim_start_matches("#/channels/");
            (
                id.clone(),
                op["action"].as_str().unwrap().to_owned(),
                // (A pattern's channel has no address.)
                doc["channels"][channel]["address"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect();
    ops.sort();
    ops
}

#[test]
fn the_seed_document_has_the_channels_and_operations_faststream_generates() {
    let ours: Value = serde_json::from_str(&seed_app().asyncapi().to_json()).unwrap();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/interop/faststream_asyncapi.py");
    let out = std::process::Command::new(python())
        .arg(script)
        .arg("localhost:9092")
        .output()
        .expect("run the FastStream script");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let theirs: Value = serde_json::from_slice(&out.stdout).unwrap();

    assert_eq!(ours["asyncapi"], "3.0.0");
    let channels = |doc: &Value| {
        let mut c: Vec<(String, String)> = doc["channels"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(id, ch)| (id.clone(), ch["address"].as_str().unwrap().to_owned()))
            .collect();
        c.sort();
        c
    };
    assert_eq!(channels(&ours), channels(&theirs));
    assert_eq!(operations(&ours), operations(&theirs));
    assert_eq!(
        operations(&ours),
        [
            (
                "in_topic:HandleMsgSubscribe".to_owned(),
                "receive".to_owned(),
                "in_topic".to_owned()
            ),
            (
                "out-topic:Publisher".to_owned(),
                "send".to_owned(),
                "out-topic".to_owned()
            ),
        ]
    );
    assert_eq!(ours["servers"], theirs["servers"]);
    assert_eq!(ours["info"], theirs["info"]);
    // Messages: the correlation id where FastStream puts it; content types from the handler.
    let messages = ours["components"]["messages"].as_object().unwrap();
    let received = &messages["in_topic:HandleMsg:SubscribeMessage"];
    assert_eq!(
        received["correlationId"]["location"],
        "$message.header#/correlation_id"
    );
    assert_eq!(received["contentType"], "application/json");
    assert_eq!(
        messages["out-topic:Publisher:HandleMsg:Message"]["contentType"],
        "text/plain"
    );
    // The official parser accepts FastStream's document and ours.
    validate_asyncapi(&serde_json::to_string(&theirs).unwrap(), "json");
    validate_asyncapi(&seed_app().asyncapi().to_json(), "json");
}

#[test]
fn documents_with_groups_batches_and_prefixes_pass_the_official_parser_as_json_and_yaml() {
    let app = FastStream::new(KafkaBroker::new("broker-1:9093"))
        .with_routes(routes![handle_msg, sink, greet, audit, bill])
        .topic_prefix("staging.")
        .asyncapi_info("readings", "2.1.0");
    let doc = app.asyncapi();
    let v = doc.as_value();
    assert_eq!(v["info"]["title"], "readings");
    assert_eq!(v["servers"]["development"]["host"], "broker-1:9093");
    let sub = &v["operations"]["staging.readings:SinkSubscribe"];
    assert_eq!(sub["action"], "receive");
    assert_eq!(
        sub["bindings"]["kafka"]["groupId"]["enum"][0],
        "staging.sink"
    );
    // A batch handler's messages are its elements: JSON in, bytes out.
    let messages = &v["components"]["messages"];
    assert_eq!(
        messages["staging.readings:Sink:SubscribeMessage"]["contentType"],
        "application/json"
    );
    assert!(messages["staging.stored:Publisher:Sink:Message"]
        .get("contentType")
        .is_none());
    // An alias of `String` is text on both sides, as the runtime reads and writes it.
    assert_eq!(
        messages["staging.names:Greet:SubscribeMessage"]["contentType"],
        "text/plain"
    );
    assert_eq!(
        messages["staging.greetings:Publisher:Greet:Message"]["contentType"],
        "text/plain"
    );
    // A pattern subscription: a channel without a fixed address, the pattern described.
    let pattern = &v["channels"]["staging.audit\\..+:Audit"];
    assert!(pattern["address"].is_null(), "{pattern}");
    assert!(pattern["description"]
        .as_str()
        .unwrap()
        .contains("staging.audit\\..+"));
    // Retry topics are read and written, the dead-letter topic written, with the input's
    // payload.
    let ops = operations(v);
    for (id, action, address) in [
        (
            "staging.orders.retry.30s:BillSubscribe",
            "receive",
            "staging.orders.retry.30s",
        ),
        (
            "staging.orders.retry.30s:Publisher",
            "send",
            "staging.orders.retry.30s",
        ),
        ("staging.orders.dlq:Publisher", "send", "staging.orders.dlq"),
    ] {
        let want = (id.to_owned(), action.to_owned(), address.to_owned());
        assert!(ops.contains(&want), "{want:?} in {ops:?}");
    }
    assert_eq!(
        messages["staging.orders.dlq:Publisher:Bill:Message"]["contentType"],
        messages["staging.orders:Bill:SubscribeMessage"]["contentType"]
    );
    // YAML reads back as the same document.
    let yaml = doc.to_yaml();
    assert!(yaml.starts_with("\"asyncapi\": \"3.0.0\"\n"), "{yaml}");
    validate_asyncapi(&doc.to_json(), "json");
    validate_asyncapi(&yaml, "yaml");
}

#[test]
fn a_service_prints_its_document_with_the_asyncapi_flag() {
    let bin = common::example("orders");
    // Nothing listens there: the flag prints the document without connecting.
    let out = std::process::Command::new(bin)
        .args(["--asyncapi", "json"])
        .env("KAFKA_BOOTSTRAP", "127.0.0.1:1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["info"]["title"], "orders");
    let ops = operations(&doc);
    let actions: Vec<(&str, &str)> = ops
        .iter()
        .map(|(_, action, address)| (action.as_str(), address.as_str()))
        .collect();
    assert_eq!(
        actions,
        [
            ("send", "audit-log"),
            ("send", "invoices"),
            ("send", "orders.dlq"),
            ("receive", "orders")
        ]
    );
}
