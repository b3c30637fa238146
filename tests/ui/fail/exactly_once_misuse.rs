use faststream::subscriber;

// The offsets are committed in the transaction through the group.
#[subscriber("orders", exactly_once = true)]
async fn no_group(body: String) {
    let _ = body;
}

// The offset moves with the message's outputs, never before them.
#[subscriber("orders", group_id = "g", exactly_once = true, ack = "first")]
async fn acked_first(body: String) {
    let _ = body;
}

#[subscriber("orders", group_id = "g", exactly_once = "yes")]
async fn not_a_bool(body: String) {
    let _ = body;
}

fn main() {}
