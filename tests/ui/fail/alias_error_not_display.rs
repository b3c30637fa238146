use faststream::{publisher, subscriber};

#[derive(serde::Serialize)]
struct NotDisplay;

// An alias of `Result`: its `Err` must be a failure, so the error type must be `Display`
// (it is not published as `{"Err": ..}`).
type Res<T> = Result<T, NotDisplay>;

#[subscriber("in")]
#[publisher("out")]
async fn handle(_body: String) -> Res<String> {
    Ok(String::new())
}

fn main() {}
