use faststream::subscriber;

// A dynamic subscriber gets its topics while the service runs.
#[subscriber("orders", dynamic = true)]
async fn orders(body: String) {
    let _ = body;
}

// A subscriber without topics, pattern or `dynamic` consumes nothing.
#[subscriber(group_id = "g")]
async fn nothing(body: String) {
    let _ = body;
}

fn main() {}
