use faststream::subscriber;

struct Opaque;

#[subscriber("in")]
async fn handle(_body: Opaque) {}

fn main() {}
