use faststream::{publisher, subscriber};

#[subscriber("in topic")]
#[publisher("..")]
async fn handle(_user: String) -> String {
    user
}

fn main() {}
