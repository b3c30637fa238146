use faststream::{publisher, subscriber};

#[subscriber("in")]
#[publisher("out")]
async fn handle(_body: String) {}

#[subscriber("in2")]
#[publisher("out")]
async fn fallible(_body: String) -> Result<(), String> {
    Ok(())
}

fn main() {}
