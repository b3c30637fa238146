use faststream::subscriber;

#[subscriber("in", group_id = "a", group_id = "b")]
async fn handle(_user: String) {}

fn main() {}
