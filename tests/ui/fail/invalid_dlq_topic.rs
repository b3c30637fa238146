use faststream::subscriber;

#[subscriber("in_topic", dlq = "dead letters")]
async fn handle(_user: String) {}

fn main() {}
