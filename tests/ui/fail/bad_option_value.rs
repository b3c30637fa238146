use faststream::subscriber;

#[subscriber("in", auto_offset_reset = "soon")]
async fn handle(_user: String) {}

#[subscriber("in2", group_id = 42)]
async fn other(_user: String) {}

fn main() {}
