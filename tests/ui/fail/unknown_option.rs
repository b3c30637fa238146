use faststream::subscriber;

#[subscriber("in", group = "billing")]
async fn handle(_user: String) {}

fn main() {}
