//! Payload schemas and topic contracts (feature `schemars`): the AsyncAPI document carries the
//! JSON Schemas of body and return types that derive `JsonSchema` (accepted by the official
//! parser), and a topic published by one handler and read by another with a type that cannot
//! read it is a startup error naming both handlers. Run with
//! `cargo test --features schemars --test contracts`.

mod common;

use common::validate_asyncapi;
use faststream::kafka::KafkaBroker;
use faststream::testing::TestBroker;
use faststream::{check_contracts, publisher, routes, subscriber, Error, FastStream, RouteProblem};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, JsonSchema)]
struct Order {
    id: u64,
    customer: String,
    lines: Vec<Line>,
}

#[derive(Serialize, Deserialize, JsonSchema)]
struct Line {
    sku: String,
    qty: u32,
}

#[derive(Serialize, Deserialize, JsonSchema)]
struct Placed {
    order_id: u64,
    total_cents: u64,
}

/// Reads a subset of `Placed`: compatible.
#[derive(Deserialize, JsonSchema)]
struct PlacedSummary {
    #[allow(dead_code)]
    order_id: u64,
}

/// Needs a field `Placed` does not have.
#[derive(Deserialize, JsonSchema)]
struct Shipment {
    #[allow(dead_code)]
    order_id: u64,
    #[allow(dead_code)]
    address: String,
}

/// Reads `order_id` as text.
#[derive(Deserialize, JsonSchema)]
struct TextId {
    #[allow(dead_code)]
    order_id: String,
}

#[subscriber("orders")]
#[publisher("placed")]
async fn place(order: Order) -> Placed {
    Placed {
        order_id: order.id,
        total_cents: order.lines.iter().map(|l| u64::from(l.qty) * 100).sum(),
    }
}

#[subscriber("placed", group_id = "reports")]
async fn report(_placed: PlacedSummary) {}

#[subscriber("placed", group_id = "shipping")]
async fn ship(_shipment: Shipment) {}

#[subscriber("placed", group_id = "ids")]
async fn ids(_id: TextId) {}

#[test]
fn the_document_carries_the_payload_schemas() {
    let doc = FastStream::new(KafkaBroker::new("localhost:9092"))
        .with_routes(routes![place, report])
        .asyncapi();
    let v = doc.as_value();
    let schemas = &v["components"]["schemas"];
    // Named types are shared definitions, referenced from the payloads.
    assert_eq!(
        schemas["orders:Place:SubscribeMessage:Payload"]["$ref"],
        "#/components/schemas/Order"
    );
    assert_eq!(
        schemas["Order"]["properties"]["lines"]["items"]["$ref"],
        "#/components/schemas/Line"
    );
    assert_eq!(
        schemas["Line"]["required"],
        serde_json::json!(["sku", "qty"])
    );
    assert_eq!(
        schemas["placed:Publisher:Place:Message:Payload"]["$ref"],
        "#/components/schemas/Placed"
    );
    let text = doc.to_json();
    assert!(
        !text.contains("#/$defs") && !text.contains("#/definitions"),
        "{text}"
    );
    validate_asyncapi(&text, "json");
    validate_asyncapi(&doc.to_yaml(), "yaml");
}

#[test]
fn a_subscriber_reading_a_subset_of_the_published_type_is_compatible() {
    check_contracts(&routes![place, report]).unwrap();
    TestBroker::builder()
        .with_routes(routes![place, report])
        .build()
        .unwrap();
}

#[test]
fn a_missing_field_is_a_contract_mismatch_naming_both_handlers() {
    let problems = check_contracts(&routes![place, ship]).unwrap_err();
    assert_eq!(problems.len(), 1);
    let RouteProblem::ContractMismatch {
        topic,
        publisher,
        subscriber,
        reason,
    } = &problems[0]
    else {
        panic!("{problems:?}");
    };
    assert_eq!(topic, "placed");
    assert!(
        publisher.contains("contracts::place") && publisher.contains("tests/contracts.rs:"),
        "{publisher}"
    );
    assert!(
        subscriber.contains("contracts::ship") && subscriber.contains("tests/contracts.rs:"),
        "{subscriber}"
    );
    assert!(reason.contains("field `address`"), "{reason}");
}

#[test]
fn a_field_of_another_type_is_a_contract_mismatch() {
    let problems = check_contracts(&routes![place, ids]).unwrap_err();
    let message = problems[0].to_string();
    assert!(
        message.contains("field `order_id` is integer when published but read as string"),
        "{message}"
    );
}

#[tokio::test]
async fn a_mismatch_stops_the_startup() {
    // Nothing listens there: the routes are refused before anything connects.
    let app = FastStream::new(KafkaBroker::new("127.0.0.1:1")).with_routes(routes![place, ship]);
    match app.run_until(std::future::pending()).await {
        Err(Error::InvalidRoutes(problems)) => assert!(
            problems
                .iter()
                .any(|p| matches!(p, RouteProblem::ContractMismatch { .. })),
            "{problems:?}"
        ),
        other => panic!("expected the startup to fail on the contract: {other:?}"),
    }
    let built = TestBroker::builder()
        .with_routes(routes![place, ship])
        .build();
    assert!(built.is_err());
}
