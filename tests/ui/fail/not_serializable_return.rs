use faststream::{publisher, subscriber};

struct Opaque;

#[subscriber("in")]
#[publisher("out")]
async fn handle(_body: String) -> Opaque {
    Opaque
}

fn main() {}
