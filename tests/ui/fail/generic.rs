use faststream::subscriber;

#[subscriber("in")]
async fn handle<T: serde::de::DeserializeOwned>(_body: T) {}

fn main() {}
