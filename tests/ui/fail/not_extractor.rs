use faststream::subscriber;

struct Tenant;

#[subscriber("in")]
async fn handle(#[context] _tenant: Tenant, _body: String) {}

fn main() {}
