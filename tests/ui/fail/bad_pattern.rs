use faststream::subscriber;

// An unclosed group: the pattern is checked when the service is compiled.
#[subscriber(pattern = "orders\\.(eu|us")]
async fn orders(body: String) {
    let _ = body;
}

fn main() {}
