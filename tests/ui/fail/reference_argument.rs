use faststream::subscriber;

#[subscriber("in")]
async fn handle(_body: &str) {}

fn main() {}
