use faststream::subscriber;

#[subscriber("")]
async fn handle(_user: String) {}

fn main() {}
