use faststream::{publisher, subscriber};

#[subscriber("in topic")]
#[publisher("..")]
async fn handle(_user: String) -> String {
    _user
}

fn main() {}
