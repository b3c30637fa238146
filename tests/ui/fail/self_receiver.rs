use faststream::subscriber;

struct Service;

impl Service {
    #[subscriber("in")]
    async fn handle(&self, _user: String) {}
}

fn main() {}
