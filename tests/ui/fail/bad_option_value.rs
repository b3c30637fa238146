use faststream::subscriber;

#[subscriber("in", auto_offset_reset = "soon")]
async fn handle(_user: String) {}

#[subscriber("in2", group_id = 42)]
async fn other(_user: String) {}

#[subscriber("in3", concurrency = 0)]
async fn zero(_user: String) {}

#[subscriber("in4", concurrency = "many")]
async fn words(_user: String) {}

#[subscriber("in5", no_reply = "yes")]
async fn reply(_user: String) {}

fn main() {}
