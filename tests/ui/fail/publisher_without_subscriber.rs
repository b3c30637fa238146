use faststream::publisher;

#[publisher("out")]
async fn handle(_body: String) -> String {
    body
}

fn main() {}
