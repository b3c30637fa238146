use faststream::subscriber;

#[subscriber("in")]
fn handle(_user: String) {}

fn main() {}
