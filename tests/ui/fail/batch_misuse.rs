use faststream::{extract::Key, subscriber, Message};

#[subscriber("a", batch = true)]
async fn not_a_vec(_body: String) {}

#[subscriber("b", batch = true)]
async fn per_message(_bodies: Vec<String>, _key: Key) {}

#[subscriber("c", batch = true, concurrency = 4)]
async fn concurrent(_bodies: Vec<String>) {}

#[subscriber("d", batch = true, ack = "manual")]
async fn manual(_bodies: Vec<Message>) {}

#[subscriber("e", max_records = 10)]
async fn not_batched(_body: String) {}

#[subscriber("f", batch = true, max_records = 0)]
async fn zero(_bodies: Vec<String>) {}

#[subscriber("g", batch = true)]
async fn no_body(_key: Key) {}

fn main() {}
