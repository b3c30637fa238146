//! Startup validation: every problem is reported at once, with handler path and file:line.

use faststream::extract::State;
use faststream::runtime::RouteDef;
use faststream::testing::TestBroker;
use faststream::{routes, subscriber, Error, RouteProblem};

#[derive(Clone)]
struct Db;

#[derive(Clone)]
struct Cache;

#[subscriber("orders", group_id = "billing")]
async fn first(_body: String) {}

#[subscriber("orders", "refunds", group_id = "billing")]
async fn second(_body: String) {}

#[subscriber("orders", group_id = "audit")]
async fn other_group(_body: String) {}

#[subscriber("orders")]
async fn no_group(_body: String) {}

#[subscriber("needs-state")]
async fn needs_state(_db: State<Db>, _cache: State<Cache>, _body: String) {}

fn problems(routes: Vec<&'static RouteDef>) -> Vec<RouteProblem> {
    match TestBroker::builder().with_routes(routes).build() {
        Err(Error::InvalidRoutes(p)) => p,
        other => panic!("expected invalid routes, got {other:?}"),
    }
}

#[test]
fn every_problem_is_reported_at_once() {
    let found = problems(routes![first, second, other_group, no_group, needs_state]);
    assert_eq!(found.len(), 3, "{found:#?}");
    let RouteProblem::DuplicateSubscription {
        topic,
        group,
        first,
        second,
    } = &found[0]
    else {
        panic!("{:?}", found[0]);
    };
    assert_eq!((topic.as_str(), group.as_str()), ("orders", "billing"));
    assert!(
        first.starts_with("validation::first (tests/validation.rs:"),
        "{first}"
    );
    assert!(
        second.starts_with("validation::second (tests/validation.rs:"),
        "{second}"
    );
    let missing: Vec<String> = found[1..].iter().map(|p| p.to_string()).collect();
    assert!(
        missing[0].contains("validation::needs_state (tests/validation.rs:"),
        "{}",
        missing[0]
    );
    assert!(
        missing[0].contains("State<validation::Db>"),
        "{}",
        missing[0]
    );
    assert!(
        missing[1].contains("State<validation::Cache>"),
        "{}",
        missing[1]
    );
    // The error's text lists them all.
    let err = TestBroker::builder()
        .with_routes(routes![first, second, needs_state])
        .build()
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("3 problem(s) with the routes:"), "{err}");
}

#[test]
fn provided_state_satisfies_the_check() {
    let found = problems(routes![needs_state, first, second]);
    assert_eq!(found.len(), 3);
    TestBroker::builder()
        .with_routes(routes![needs_state])
        .with_state(Db)
        .with_state(Cache)
        .build()
        .unwrap();
}

#[test]
fn zero_routes_is_an_error_with_a_hint() {
    let found = problems(vec![]);
    assert_eq!(found, [RouteProblem::NoRoutes]);
    let text = found[0].to_string();
    assert!(text.contains("linker may have dropped them"), "{text}");
    assert!(text.contains("routes![...]"), "{text}");
}

#[test]
fn different_groups_and_no_group_do_not_conflict() {
    TestBroker::builder()
        .with_routes(routes![first, other_group, no_group])
        .build()
        .unwrap();
}

#[subscriber("twice-in")]
#[faststream::publisher("twice-out")]
#[faststream::publisher("twice-out")]
async fn publishes_twice(body: String) -> String {
    body
}

#[test]
fn publishing_twice_to_one_topic_is_reported() {
    let found = problems(routes![publishes_twice]);
    assert_eq!(found.len(), 1);
    let text = found[0].to_string();
    assert!(
        text.contains("validation::publishes_twice (tests/validation.rs:"),
        "{text}"
    );
    assert!(text.contains("publishes to \"twice-out\" twice"), "{text}");
}
