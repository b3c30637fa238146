use faststream::subscriber;

#[subscriber("in", group_id = "g", partitions = [0, 1])]
async fn manual_and_group(_body: String) {}

#[subscriber("in", assignor = "sticky", session_timeout_ms = "10s", partitions = [1, 1])]
async fn bad_values(_body: String) {}

#[subscriber("in", group_id = "g", group_protocol = "consumer", assignor = "roundrobin")]
async fn classic_assignor_on_the_consumer_protocol(_body: String) {}

#[subscriber("in", group_protocol = "consumer")]
async fn protocol_without_group(_body: String) {}

fn main() {}
