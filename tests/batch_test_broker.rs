//! Batch handlers (`batch = true`) through the in-memory test broker: batching, per-message
//! decode failures, returned lists, a failing batch dead-lettered message by message.

use std::sync::Mutex;

use faststream::extract::State;
use faststream::policy::dlq_header;
use faststream::testing::TestBroker;
use faststream::{publisher, routes, subscriber, Failure, Message, Outcome};
use serde::{Deserialize, Serialize};

#[derive(Debug, Deserialize, Serialize, PartialEq)]
struct Order {
    id: u32,
    qty: u32,
}

#[derive(Clone, Default)]
struct Seen(std::sync::Arc<Mutex<Vec<Vec<u32>>>>);

#[subscriber("orders", batch = true, max_records = 3)]
#[publisher("order-totals")]
async fn totals(orders: Vec<Order>, seen: State<Seen>) -> Vec<String> {
    seen.0
         .0
        .lock()
        .unwrap()
        .push(orders.iter().map(|o| o.id).collect());
    orders
        .iter()
        .map(|o| format!("{}:{}", o.id, o.qty * 10))
        .collect()
}

#[tokio::test]
async fn batches_are_cut_at_max_records_and_each_element_is_published() {
    let seen = Seen::default();
    let broker = TestBroker::builder()
        .with_routes(routes![totals])
        .with_state(seen.clone())
        .build()
        .unwrap();
    let orders: Vec<String> = (1..=7)
        .map(|id| format!(r#"{{"id": {id}, "qty": {id}}}"#))
        .collect();
    broker.publish_batch(orders, "orders").await.unwrap();
    assert_eq!(
        *seen.0.lock().unwrap(),
        vec![vec![1, 2, 3], vec![4, 5, 6], vec![7]]
    );
    let out: Vec<String> = broker
        .published("order-totals")
        .iter()
        .map(|m| m.text().unwrap().to_owned())
        .collect();
    assert_eq!(
        out,
        ["1:10", "2:20", "3:30", "4:40", "5:50", "6:60", "7:70"]
    );
    // One delivery per message; a batch's outputs ride on its last message.
    let received = broker.received("totals");
    assert_eq!(received.len(), 7);
    let carried: Vec<usize> = received
        .iter()
        .map(|d| match &d.outcome {
            Outcome::Done(out) => out.len(),
            other => panic!("unexpected outcome {other:?}"),
        })
        .collect();
    assert_eq!(carried, [0, 0, 3, 0, 0, 3, 1]);
    // A single publish is a batch of one.
    broker
        .publish(r#"{"id": 8, "qty": 1}"#, "orders")
        .await
        .unwrap();
    assert_eq!(seen.0.lock().unwrap().last().unwrap(), &vec![8]);
}

#[subscriber("orders-dq", batch = true, dlq = "orders-dq-dlq")]
#[publisher("orders-dq-out")]
async fn strict(orders: Vec<Order>) -> Vec<String> {
    orders.iter().map(|o| o.id.to_string()).collect()
}

#[tokio::test]
async fn an_undecodable_message_is_dead_lettered_alone_and_the_rest_is_delivered() {
    let broker = TestBroker::builder()
        .with_routes(routes![strict])
        .build()
        .unwrap();
    broker
        .publish_batch(
            [
                r#"{"id": 1, "qty": 1}"#,
                r#"{"id": "two"}"#,
                r#"{"id": 3, "qty": 1}"#,
            ],
            "orders-dq",
        )
        .await
        .unwrap();
    let out: Vec<_> = broker
        .published("orders-dq-out")
        .iter()
        .map(|m| m.text().unwrap().to_owned())
        .collect();
    assert_eq!(out, ["1", "3"]);
    let dlq = broker.published("orders-dq-dlq");
    assert_eq!(dlq.len(), 1);
    assert_eq!(dlq[0].payload.as_deref(), Some(&br#"{"id": "two"}"#[..]));
    assert_eq!(
        dlq[0].headers.get_str(dlq_header::ERROR_KIND),
        Some("decode")
    );
    assert_eq!(
        dlq[0].headers.get_str(dlq_header::ORIGINAL_OFFSET),
        Some("1")
    );
    let error = dlq[0].headers.get_str(dlq_header::ERROR).unwrap();
    assert!(error.contains("Order"), "{error}");
}

static ATTEMPTS: Mutex<Vec<usize>> = Mutex::new(Vec::new());

#[subscriber(
    "orders-fail",
    batch = true,
    retry = 2,
    retry_backoff_ms = 1,
    dlq = "orders-fail-dlq"
)]
async fn flaky(orders: Vec<Message>) -> Result<(), Failure> {
    ATTEMPTS.lock().unwrap().push(orders.len());
    Err(Failure::retry("the database is down"))
}

#[tokio::test]
async fn a_failing_batch_is_retried_whole_then_dead_lettered_message_by_message() {
    let broker = TestBroker::builder()
        .with_routes(routes![flaky])
        .build()
        .unwrap();
    broker
        .publish_batch(["a", "b", "c", "d"], "orders-fail")
        .await
        .unwrap();
    assert_eq!(*ATTEMPTS.lock().unwrap(), [4, 4, 4]);
    let dlq = broker.published("orders-fail-dlq");
    let payloads: Vec<_> = dlq.iter().map(|m| m.text().unwrap()).collect();
    assert_eq!(payloads, ["a", "b", "c", "d"]);
    for m in &dlq {
        assert_eq!(m.headers.get_str(dlq_header::ATTEMPTS), Some("3"));
        assert!(m
            .headers
            .get_str(dlq_header::ERROR)
            .unwrap()
            .contains("the database is down"));
    }
    assert_eq!(broker.errors().len(), 4);
}
