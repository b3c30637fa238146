//! The programming model end to end through the in-memory test broker: the seed handler and
//! the other handler shapes, decode failures, extractors, state, fan-out.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use faststream::extract::{CorrelationId, Headers, Key, Partition, Publisher, State, Topic};
use faststream::testing::TestBroker;
use faststream::{
    publisher, routes, subscriber, HandlerError, Json, Message, Outcome, OutgoingMessage, Response,
};
use serde::{Deserialize, Serialize};

// The seed, exactly as a user writes it.
#[subscriber("in_topic")]
#[publisher("out-topic")]
async fn handle_msg(user: String, user_id: i64) -> String {
    format!("User: {user_id} - {user} registered")
}

#[tokio::test]
async fn seed_handler_relays_through_the_test_broker() {
    let broker = TestBroker::builder()
        .with_routes(routes![handle_msg])
        .build()
        .unwrap();
    broker
        .publish(r#"{"user": "john", "user_id": 1}"#, "in_topic")
        .await
        .unwrap();
    let out = broker.published("out-topic");
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].text(), Some("User: 1 - john registered"));
    assert_eq!(out[0].content_type(), Some("text/plain"));
    // A correlation id was assigned and carried to the output.
    let received = broker.received("handle_msg");
    assert_eq!(received.len(), 1);
    let cid = received[0].message.correlation_id().unwrap().to_owned();
    assert_eq!(out[0].correlation_id(), Some(cid.as_str()));
    // What the handler received, decoded.
    let body: serde_json::Value = received[0].body().unwrap();
    assert_eq!(body["user"], "john");
}

#[tokio::test]
async fn seed_function_stays_callable() {
    assert_eq!(
        handle_msg("ann".into(), 7).await,
        "User: 7 - ann registered"
    );
}

#[tokio::test]
async fn decode_failures_name_the_field() {
    let broker = TestBroker::builder()
        .with_routes(routes![handle_msg])
        .build()
        .unwrap();
    broker
        .publish(r#"{"user": "john"}"#, "in_topic")
        .await
        .unwrap();
    broker
        .publish(r#"{"user": "john", "user_id": "one"}"#, "in_topic")
        .await
        .unwrap();
    broker.publish("not json", "in_topic").await.unwrap();
    broker
        .publish(r#"{"user": "ok", "user_id": 2}"#, "in_topic")
        .await
        .unwrap();
    let errors = broker.errors();
    assert_eq!(errors.len(), 3);
    let msgs: Vec<String> = errors
        .iter()
        .map(|d| d.error().unwrap().to_string())
        .collect();
    assert!(msgs[0].contains("missing field `user_id`"), "{}", msgs[0]);
    assert!(
        msgs[1].contains("field `user_id`: invalid type: string \"one\", expected i64"),
        "{}",
        msgs[1]
    );
    assert!(msgs[2].contains("not valid JSON"), "{}", msgs[2]);
    match errors[1].error().unwrap() {
        HandlerError::Decode(d) => assert_eq!(d.field.as_deref(), Some("user_id")),
        other => panic!("{other:?}"),
    }
    // The good message after the bad ones is still processed.
    let out = broker.published("out-topic");
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].text(), Some("User: 2 - ok registered"));
}

// A struct body, JSON in and out, Result return.
#[derive(Debug, Deserialize, Serialize, PartialEq)]
struct Order {
    id: u32,
    amount_cents: i64,
}

#[derive(Debug, Deserialize, Serialize, PartialEq)]
struct Invoice {
    order_id: u32,
    total: String,
}

#[subscriber("orders", group_id = "billing", auto_offset_reset = "earliest")]
#[publisher("invoices")]
async fn bill(order: Order) -> Result<Invoice, String> {
    if order.amount_cents < 0 {
        return Err(format!("order {} has a negative amount", order.id));
    }
    Ok(Invoice {
        order_id: order.id,
        total: format!(
            "{}.{:02}",
            order.amount_cents / 100,
            order.amount_cents % 100
        ),
    })
}

#[tokio::test]
async fn struct_body_json_reply_and_handler_errors() {
    let broker = TestBroker::builder()
        .with_routes(routes![bill])
        .build()
        .unwrap();
    broker
        .publish(
            Json(Order {
                id: 1,
                amount_cents: 1250,
            }),
            "orders",
        )
        .await
        .unwrap();
    broker
        .publish(
            Json(Order {
                id: 2,
                amount_cents: -5,
            }),
            "orders",
        )
        .await
        .unwrap();
    let out = broker.published("invoices");
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].content_type(), Some("application/json"));
    let inv: Invoice = serde_json::from_slice(out[0].payload.as_ref().unwrap()).unwrap();
    assert_eq!(
        inv,
        Invoice {
            order_id: 1,
            total: "12.50".into()
        }
    );
    let errors = broker.errors();
    assert_eq!(errors.len(), 1);
    assert_eq!(
        errors[0].error(),
        Some(&HandlerError::Handler(
            "order 2 has a negative amount".into()
        ))
    );
    let received: Order = errors[0].body().unwrap();
    assert_eq!(received.id, 2);
}

// Extractors, a header by name, shared state and two publishers.
#[derive(Clone, Default)]
struct Stats {
    seen: Arc<AtomicUsize>,
}

#[subscriber("audit-in")]
#[publisher("audit-a")]
#[publisher("audit-b")]
#[allow(clippy::too_many_arguments)]
async fn audit(
    key: Key,
    headers: Headers,
    topic: Topic,
    partition: Partition,
    #[header("x-request-id")] request_id: String,
    #[header("x-missing")] missing: Option<String>,
    correlation: CorrelationId,
    stats: State<Stats>,
    text: String,
) -> Response<String> {
    let n = stats.seen.fetch_add(1, Ordering::SeqCst) + 1;
    assert!(headers.get("x-request-id").is_some());
    assert!(!correlation.0.is_empty());
    Response::new(format!(
        "{n}:{}:{}:{}:{request_id}:{missing:?}:{text}",
        key.as_str().unwrap_or("-"),
        topic.0,
        partition.0
    ))
    .key("out-key")
    .header("x-audited", "yes")
}

#[tokio::test]
async fn extractors_state_and_fan_out() {
    let stats = Stats::default();
    let broker = TestBroker::builder()
        .with_routes(routes![audit])
        .with_state(stats.clone())
        .build()
        .unwrap();
    broker
        .send(
            OutgoingMessage::new("audit-in", "hello")
                .key("k1")
                .header("x-request-id", "r-1")
                .header("correlation_id", "cid-9")
                .partition(3),
        )
        .await
        .unwrap();
    assert!(broker.errors().is_empty(), "{:?}", broker.errors());
    for topic in ["audit-a", "audit-b"] {
        let out = broker.published(topic);
        assert_eq!(out.len(), 1, "{topic}");
        assert_eq!(out[0].text(), Some("1:k1:audit-in:3:r-1:None:hello"));
        assert_eq!(out[0].key.as_deref(), Some(&b"out-key"[..]));
        assert_eq!(out[0].headers.get_str("x-audited"), Some("yes"));
        assert_eq!(out[0].correlation_id(), Some("cid-9"));
    }
    assert_eq!(stats.seen.load(Ordering::SeqCst), 1);

    // A missing required header is a decode error naming the header.
    broker.publish("no header", "audit-in").await.unwrap();
    let err = broker.errors()[0].error().unwrap().to_string();
    assert_eq!(
        err,
        "cannot decode header `x-request-id`: the header is missing"
    );
}

// Raw bytes in, Option out; a unit handler; a panicking handler; a Publisher extractor.
#[subscriber("raw-in")]
#[publisher("raw-out")]
async fn reverse(bytes: Vec<u8>) -> Option<Vec<u8>> {
    if bytes.is_empty() {
        return None;
    }
    Some(bytes.into_iter().rev().collect())
}

static SINK_COUNT: AtomicUsize = AtomicUsize::new(0);

#[subscriber("sink")]
async fn sink(_msg: Message) {
    SINK_COUNT.fetch_add(1, Ordering::SeqCst);
}

#[subscriber("boom")]
async fn boom(n: u32) -> u32 {
    if n == 13 {
        panic!("unlucky number");
    }
    n
}

#[subscriber("forward")]
async fn forward(text: String, publisher: Publisher) -> Result<(), faststream::Error> {
    publisher.publish(text.to_uppercase(), "sink").await
}

#[tokio::test]
async fn bytes_option_unit_panic_and_publisher() {
    let broker = TestBroker::builder()
        .with_routes(routes![reverse, sink, boom, forward])
        .build()
        .unwrap();
    broker.publish(vec![1u8, 2, 3], "raw-in").await.unwrap();
    broker.publish(Vec::<u8>::new(), "raw-in").await.unwrap();
    let out = broker.published("raw-out");
    assert_eq!(out.len(), 1, "None publishes nothing");
    assert_eq!(out[0].payload.as_deref(), Some(&[3u8, 2, 1][..]));
    assert_eq!(out[0].content_type(), None);

    broker.publish("13", "boom").await.unwrap();
    broker.publish("14", "boom").await.unwrap();
    let errors = broker.errors();
    assert_eq!(errors.len(), 1);
    assert_eq!(
        errors[0].error(),
        Some(&HandlerError::Panic("unlucky number".into()))
    );
    assert!(matches!(
        broker.received("boom")[1].outcome,
        Outcome::Done(_)
    ));

    let before = SINK_COUNT.load(Ordering::SeqCst);
    broker.publish("hi", "forward").await.unwrap();
    assert_eq!(SINK_COUNT.load(Ordering::SeqCst), before + 1);
    assert_eq!(broker.published("sink")[0].text(), Some("HI"));
}

// Several topics in one subscriber, and chained routes.
#[subscriber("chain-a", "chain-b")]
#[publisher("chain-c")]
async fn step_one(n: i64, topic: Topic) -> String {
    format!("{}:{}", topic.0, n * 2)
}

#[subscriber("chain-c")]
#[publisher("chain-d")]
async fn step_two(s: String) -> Json<Vec<String>> {
    Json(s.split(':').map(str::to_owned).collect())
}

#[tokio::test]
async fn multi_topic_subscriber_and_chained_routes() {
    let broker = TestBroker::builder()
        .with_routes(routes![step_one, step_two])
        .build()
        .unwrap();
    broker.publish("1", "chain-a").await.unwrap();
    broker.publish("5", "chain-b").await.unwrap();
    let out: Vec<_> = broker
        .published("chain-d")
        .iter()
        .map(|m| m.text().unwrap().to_owned())
        .collect();
    assert_eq!(out, [r#"["chain-a","2"]"#, r#"["chain-b","10"]"#]);
}

#[subscriber("loop")]
#[publisher("loop")]
async fn echo_forever(s: String) -> String {
    s
}

#[tokio::test]
async fn publish_loops_are_reported() {
    let broker = TestBroker::builder()
        .with_routes(routes![echo_forever])
        .build()
        .unwrap();
    let err = broker.publish("x", "loop").await.unwrap_err();
    assert!(
        matches!(err, faststream::Error::PublishLoop { .. }),
        "{err}"
    );
}

#[tokio::test]
async fn all_registered_routes_are_collected() {
    let names: Vec<&str> = faststream::registered_routes()
        .iter()
        .map(|r| r.fn_name())
        .collect();
    for expected in [
        "handle_msg",
        "bill",
        "audit",
        "reverse",
        "sink",
        "boom",
        "step_one",
    ] {
        assert!(
            names.contains(&expected),
            "{expected} missing from {names:?}"
        );
    }
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted, "routes come sorted by path");
}

#[tokio::test]
async fn a_test_broker_can_run_every_registered_route() {
    // Every route in this test binary; `audit` needs its state.
    let broker = TestBroker::builder()
        .with_state(Stats::default())
        .build()
        .unwrap();
    broker
        .publish(r#"{"user": "eve", "user_id": 3}"#, "in_topic")
        .await
        .unwrap();
    broker.publish("2", "chain-a").await.unwrap();
    assert_eq!(
        broker.published("out-topic")[0].text(),
        Some("User: 3 - eve registered")
    );
    assert_eq!(
        broker.published("chain-d")[0].text(),
        Some(r#"["chain-a","4"]"#)
    );
}

#[subscriber("fan-in")]
#[publisher("fan-mid")]
async fn fan_first(s: String) -> String {
    tokio::task::yield_now().await;
    s
}

#[subscriber("fan-mid")]
#[publisher("fan-out")]
async fn fan_second(s: String) -> String {
    tokio::task::yield_now().await;
    s
}

/// Publish chains are counted per chain: many concurrent publishes are no "publish loop".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishes_are_not_a_loop() {
    let broker = TestBroker::builder()
        .with_routes(routes![fan_first, fan_second])
        .build()
        .unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..64 {
        let broker = broker.clone();
        tasks.spawn(async move { broker.publish(i.to_string(), "fan-in").await });
    }
    while let Some(res) = tasks.join_next().await {
        res.unwrap().unwrap();
    }
    assert_eq!(broker.published("fan-out").len(), 64);
}

struct Stamp;

impl faststream::Middleware for Stamp {
    fn publish(&self, out: &mut faststream::OutgoingMessage) {
        out.headers.insert("x-stamp", "1");
    }
}

/// The test broker runs middlewares like the app does.
#[tokio::test]
async fn middlewares_run_in_the_test_broker() {
    let broker = TestBroker::builder()
        .with_routes(routes![fan_first])
        .middleware(Stamp)
        .build()
        .unwrap();
    broker.publish("a", "fan-in").await.unwrap();
    assert_eq!(
        broker.published("fan-mid")[0].headers.get_str("x-stamp"),
        Some("1")
    );
}

/// Appends its name to the `x-trail` header of outputs; a guard refuses messages saying "halt".
struct Trail(&'static str, bool);

impl faststream::Middleware for Trail {
    fn before<'a>(
        &'a self,
        msg: &'a Message,
    ) -> faststream::BoxFuture<'a, Result<(), faststream::Failure>> {
        let halt = self.1 && msg.text() == Some("halt");
        Box::pin(async move {
            match halt {
                true => Err(faststream::Failure::skip(format!("{} refused it", self.0))),
                false => Ok(()),
            }
        })
    }

    fn publish(&self, out: &mut faststream::OutgoingMessage) {
        let trail = out.headers.get_str("x-trail").unwrap_or("").to_owned();
        out.headers.insert("x-trail", format!("{trail}/{}", self.0));
    }
}

static GUARD: Trail = Trail("guard", true);

#[subscriber("guarded", middleware = [GUARD])]
#[publisher("guarded-out")]
async fn guarded(body: String) -> String {
    body
}

#[subscriber("open")]
#[publisher("open-out")]
async fn open(body: String) -> String {
    body
}

/// A route's own middleware runs inside the app's, and only for that route.
#[tokio::test]
async fn a_route_middleware_runs_inside_the_app_ones_and_only_for_its_route() {
    let broker = TestBroker::builder()
        .with_routes(routes![guarded, open])
        .middleware(Trail("app", false))
        .build()
        .unwrap();
    broker.publish("a", "guarded").await.unwrap();
    broker.publish("b", "open").await.unwrap();
    broker.publish("halt", "guarded").await.unwrap();
    broker.publish("halt", "open").await.unwrap();
    let trail = |topic: &str| -> Vec<String> {
        broker
            .published(topic)
            .iter()
            .map(|m| m.headers.get_str("x-trail").unwrap_or("").to_owned())
            .collect()
    };
    // `publish` hooks run in order: the app's first, then the route's.
    assert_eq!(trail("guarded-out"), ["/app/guard"]);
    // The other route has only the app's middleware, which lets "halt" through; the guard
    // refused it on its route.
    assert_eq!(trail("open-out"), ["/app", "/app"]);
    let refused = broker.errors();
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0].handler, "test_broker::guarded");
    assert!(refused[0]
        .error()
        .unwrap()
        .to_string()
        .contains("guard refused it"));
}

#[subscriber("tb-rpc")]
async fn tb_rpc(body: String) -> String {
    format!("pong {body}")
}

#[subscriber("tb-gateway")]
#[publisher("tb-gateway-out")]
async fn tb_gateway(body: String, publisher: Publisher) -> Result<String, faststream::Failure> {
    let reply = publisher
        .request(body, "tb-rpc", std::time::Duration::from_secs(1))
        .await
        .map_err(faststream::Failure::retry)?;
    Ok(format!("via gateway: {}", reply.text().unwrap_or_default()))
}

/// Request/reply in the test broker: from the test, and from a handler through its `Publisher`.
#[tokio::test]
async fn requests_get_their_replies_in_the_test_broker() {
    let broker = TestBroker::builder()
        .with_routes(routes![tb_rpc, tb_gateway])
        .build()
        .unwrap();
    let reply = broker.request("ping", "tb-rpc").await.unwrap();
    assert_eq!(reply.text(), Some("pong ping"));
    broker.publish("knock", "tb-gateway").await.unwrap();
    let out = broker.published("tb-gateway-out");
    assert_eq!(out[0].text(), Some("via gateway: pong knock"));
    // Nobody subscribes there: a clear error instead of a hang.
    let err = broker.request("hello?", "nobody").await.unwrap_err();
    assert!(err.to_string().contains("no reply"), "{err}");
}

/// Aliases behave like the types they name.
type Name = String;

#[derive(Debug, Serialize)]
struct ApiError {
    code: u16,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "api error {}", self.code)
    }
}

type ApiResult<T> = Result<T, ApiError>;

#[derive(Serialize)]
struct Greeting {
    to: String,
}

#[subscriber("alias-text", retry = 0)]
#[publisher("alias-text-out")]
async fn alias_text(name: Name) -> ApiResult<Name> {
    match name.as_str() {
        "bad" => Err(ApiError { code: 400 }),
        _ => Ok(format!("hi {name}")),
    }
}

#[subscriber("alias-json", retry = 0)]
#[publisher("alias-json-out")]
async fn alias_json(name: Name) -> ApiResult<Greeting> {
    match name.as_str() {
        "bad" => Err(ApiError { code: 422 }),
        _ => Ok(Greeting { to: name }),
    }
}

#[tokio::test]
async fn aliases_of_string_and_result_behave_like_the_written_types() {
    let broker = TestBroker::builder()
        .with_routes(routes![alias_text, alias_json])
        .build()
        .unwrap();
    // A plain-text body (not JSON) for a `Name` argument: decoded as text.
    broker.publish("ann", "alias-text").await.unwrap();
    broker.publish("bad", "alias-text").await.unwrap();
    broker.publish("bob", "alias-json").await.unwrap();
    broker.publish("bad", "alias-json").await.unwrap();
    let text = broker.published("alias-text-out");
    assert_eq!(text.len(), 1, "the Err is not published");
    assert_eq!(text[0].text(), Some("hi ann"));
    assert_eq!(text[0].content_type(), Some("text/plain"));
    let json = broker.published("alias-json-out");
    assert_eq!(json.len(), 1);
    assert_eq!(json[0].text(), Some(r#"{"to":"bob"}"#));
    assert_eq!(json[0].content_type(), Some("application/json"));
    // Each `Err` is a failed message (a handler error), not a success.
    let errors: Vec<String> = broker
        .errors()
        .iter()
        .map(|d| d.error().unwrap().to_string())
        .collect();
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(errors[0].contains("api error 400"), "{errors:?}");
    assert!(errors[1].contains("api error 422"), "{errors:?}");
}

// Pausing: the messages of a paused handler are held in order, then handled once resumed.

#[subscriber("pausable")]
#[publisher("pausable-out")]
async fn pausable(body: String, control: faststream::extract::Control) -> String {
    // A handler can pause itself (say, when its downstream system says "slow down").
    if body == "stop" {
        control.pause("pausable").unwrap();
    }
    body
}

/// What `pausable` published so far.
fn pausable_outputs(broker: &TestBroker) -> Vec<String> {
    broker
        .published("pausable-out")
        .iter()
        .map(|m| m.text().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn a_paused_handler_holds_its_messages_in_order_until_resumed() {
    let broker = TestBroker::builder()
        .with_routes(routes![pausable])
        .build()
        .unwrap();
    let out = |b: &TestBroker| pausable_outputs(b);
    broker.publish("a", "pausable").await.unwrap();
    broker.publish("stop", "pausable").await.unwrap();
    assert!(broker.control().paused("pausable").unwrap().is_all());
    broker.publish("b", "pausable").await.unwrap();
    broker.publish("c", "pausable").await.unwrap();
    assert_eq!(out(&broker), ["a", "stop"], "nothing handled while paused");
    assert_eq!(
        broker.published("pausable").len(),
        4,
        "but every input stored"
    );
    broker.control().resume("pausable").unwrap();
    broker.deliver_resumed().await.unwrap();
    assert_eq!(out(&broker), ["a", "stop", "b", "c"]);
    assert_eq!(broker.committed("pausable", "pausable", 0), Some(4));
    let err = broker.control().pause("nope").unwrap_err().to_string();
    assert!(err.contains("no handler \"nope\""), "{err}");
}

// A pattern subscription takes every topic whose whole name matches.

#[subscriber(pattern = "audit\\.[a-z]+")]
#[publisher("audit-all")]
async fn audit_all(body: String, topic: faststream::extract::Topic) -> String {
    format!("{}:{body}", topic.0)
}

#[tokio::test]
async fn a_pattern_subscription_takes_every_matching_topic_and_only_those() {
    let broker = TestBroker::builder()
        .with_routes(routes![audit_all])
        .build()
        .unwrap();
    broker.publish("1", "audit.orders").await.unwrap();
    broker.publish("2", "audit.users").await.unwrap();
    broker.publish("3", "audit.Users").await.unwrap(); // upper case: no match
    broker.publish("4", "audit.orders.eu").await.unwrap(); // the whole name must match
    broker.publish("5", "xaudit.orders").await.unwrap();
    let out: Vec<String> = broker
        .published("audit-all")
        .iter()
        .map(|m| m.text().unwrap().to_owned())
        .collect();
    assert_eq!(out, ["audit.orders:1", "audit.users:2"]);
}

#[tokio::test]
async fn a_seek_hands_the_handler_its_messages_again_from_the_new_position() {
    use faststream::extract::SeekTo;
    let broker = TestBroker::builder()
        .with_routes(routes![pausable])
        .build()
        .unwrap();
    let out = |b: &TestBroker| pausable_outputs(b);
    for body in ["a", "b", "c", "d"] {
        broker.publish(body, "pausable").await.unwrap();
    }
    assert_eq!(broker.committed("pausable", "pausable", 0), Some(4));
    let control = broker.control();
    control.seek("pausable", SeekTo::Offset(2)).unwrap();
    broker.deliver_resumed().await.unwrap();
    assert_eq!(out(&broker), ["a", "b", "c", "d", "c", "d"]);
    // Paused, a seek moves the position (what a group would commit) and hands nothing over.
    control.pause("pausable").unwrap();
    control.seek("pausable", SeekTo::Beginning).unwrap();
    broker.deliver_resumed().await.unwrap();
    assert_eq!(broker.committed("pausable", "pausable", 0), Some(0));
    assert_eq!(out(&broker).len(), 6);
    control.resume("pausable").unwrap();
    broker.publish("e", "pausable").await.unwrap();
    assert_eq!(
        out(&broker)[6..],
        ["a", "b", "c", "d", "e"],
        "from the beginning, then what came since"
    );
    assert_eq!(broker.committed("pausable", "pausable", 0), Some(5));
}

#[subscriber(dynamic = true, group_id = "tenants")]
#[publisher("tenant-out")]
async fn tenant(body: String, topic: Topic) -> String {
    format!("{}:{body}", topic.0)
}

/// A dynamic handler takes the topics it is subscribed to while the service runs, and lets go
/// of them when unsubscribed; a handler with topics in its attribute cannot be subscribed.
#[tokio::test]
async fn a_dynamic_handler_takes_topics_subscribed_while_running() {
    let broker = TestBroker::builder()
        .with_routes(routes![tenant, handle_msg])
        .build()
        .unwrap();
    broker.publish("early", "tenant-1").await.unwrap();
    assert!(broker.published("tenant-out").is_empty());
    let control = broker.control();
    control.subscribe("tenant", "tenant-1").unwrap();
    broker.publish("one", "tenant-1").await.unwrap();
    control.unsubscribe("tenant", "tenant-1").unwrap();
    broker.publish("two", "tenant-1").await.unwrap();
    let out: Vec<_> = broker
        .published("tenant-out")
        .iter()
        .map(|m| m.text().unwrap().to_owned())
        .collect();
    assert_eq!(out, ["tenant-1:one"]);
    assert!(control.subscriptions("tenant").unwrap().is_empty());
    let err = control
        .subscribe("handle_msg", "x")
        .unwrap_err()
        .to_string();
    assert!(err.contains("dynamic = true"), "{err}");
    let err = control
        .subscribe("tenant", "bad topic!")
        .unwrap_err()
        .to_string();
    assert!(err.contains("bad topic!"), "{err}");
}

// Exactly-once in the test broker: what a handler publishes joins its outputs only when the
// attempt succeeds (here the first attempt publishes, then fails; the retry publishes again).
static EOS_ATTEMPTS: AtomicUsize = AtomicUsize::new(0);
static PLAIN_ATTEMPTS: AtomicUsize = AtomicUsize::new(0);

async fn audit_then_fail_once(
    n: u64,
    audit: &Publisher,
    attempts: &AtomicUsize,
) -> Result<String, String> {
    audit
        .publish(format!("audit:{n}"), "audit")
        .await
        .map_err(|e| e.to_string())?;
    if attempts.fetch_add(1, Ordering::SeqCst) == 0 {
        return Err("the first attempt fails after publishing".into());
    }
    Ok(format!("out:{n}"))
}

#[subscriber(
    "eos-in",
    group_id = "eos",
    exactly_once = true,
    retry = 1,
    retry_backoff_ms = 1
)]
#[publisher("eos-out")]
async fn audited_exactly_once(n: u64, audit: Publisher) -> Result<String, String> {
    audit_then_fail_once(n, &audit, &EOS_ATTEMPTS).await
}

#[subscriber("plain-in", group_id = "plain", retry = 1, retry_backoff_ms = 1)]
#[publisher("plain-out")]
async fn audited_at_least_once(n: u64, audit: Publisher) -> Result<String, String> {
    audit_then_fail_once(n, &audit, &PLAIN_ATTEMPTS).await
}

#[tokio::test]
async fn an_exactly_once_handler_publishes_only_from_the_attempt_that_succeeded() {
    let broker = TestBroker::builder()
        .with_routes(routes![audited_exactly_once, audited_at_least_once])
        .build()
        .unwrap();
    broker.publish("7", "eos-in").await.unwrap();
    let audit: Vec<_> = broker
        .published("audit")
        .iter()
        .map(|m| m.text().unwrap().to_owned())
        .collect();
    // The failed attempt's copy was dropped; the output follows the handler's own publish.
    assert_eq!(audit, ["audit:7"]);
    assert_eq!(broker.published("eos-out")[0].text(), Some("out:7"));
    assert_eq!(
        broker.committed("audited_exactly_once", "eos-in", 0),
        Some(1)
    );
    // At least once, the failed attempt's publish went out at once: two copies.
    broker.publish("8", "plain-in").await.unwrap();
    let audit: Vec<_> = broker
        .published("audit")
        .iter()
        .map(|m| m.text().unwrap().to_owned())
        .collect();
    assert_eq!(audit, ["audit:7", "audit:8", "audit:8"]);
}
