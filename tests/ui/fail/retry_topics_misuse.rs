use faststream::subscriber;

// A retry topic's name ends in its delay.
#[subscriber("orders", group_id = "g", retry_topics = ["orders.retry"])]
async fn no_delay(body: String) {
    let _ = body;
}

// The group commits the retry topics' progress.
#[subscriber("orders", retry_topics = ["orders.retry.30s"])]
async fn no_group(body: String) {
    let _ = body;
}

// A message's retries stay on the partition of the same number of its one topic.
#[subscriber("orders", "payments", group_id = "g", retry_topics = ["orders.retry.30s"])]
async fn two_topics(body: String) {
    let _ = body;
}

#[subscriber(pattern = "orders\\..*", group_id = "g", retry_topics = ["orders.retry.30s"])]
async fn by_pattern(body: String) {
    let _ = body;
}

fn main() {}
