use faststream::subscriber;

#[subscriber("a", middleware = "audit")]
async fn named(_body: String) {}

#[subscriber("b", middleware = [make_audit()])]
async fn called(_body: String) {}

struct NotAMiddleware;
static PLAIN: NotAMiddleware = NotAMiddleware;

#[subscriber("c", middleware = [PLAIN])]
async fn plain(_body: String) {}

fn main() {}
