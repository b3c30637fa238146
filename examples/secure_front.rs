//! A TLS + SASL front for a local plaintext broker, to try a service's secured settings
//! without a secured cluster: `scripts/kafka-dev run --secure -- CMD` starts it (SASL_SSL with
//! SCRAM-SHA-512) and exports the settings, for example
//!
//! ```sh
//! scripts/kafka-dev run --secure -- cargo run --example hello
//! ```
//!
//! Usage: `secure_front LISTEN_PORT BROKER_ADDR DIR USER PASSWORD`; writes `DIR/ca.pem` (a
//! throwaway CA that signed the front's certificate for 127.0.0.1), prints `ready`, serves
//! until killed. The same front is what `tests/security.rs` runs in front of its brokers.

#[allow(dead_code, unreachable_pub)]
#[path = "../tests/common/secure.rs"]
mod secure;
// The Kafka framing the front shares with the tests' proxy.
#[allow(dead_code, unreachable_pub)]
#[path = "../tests/common/wire.rs"]
mod wire;

use secure::{FrontConfig, Logins, Pki, SecureFront};

/// A well-kept allocator: a service like this one allocates many small, short-lived
/// buffers (see the guide's performance page, docs/guide/performance.md); the library sets no allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [port, broker, dir, user, password] = args.as_slice() else {
        eprintln!("usage: secure_front LISTEN_PORT BROKER_ADDR DIR USER PASSWORD");
        std::process::exit(2);
    };
    let pki = Pki::new();
    std::fs::create_dir_all(dir)?;
    std::fs::write(std::path::Path::new(dir).join("ca.pem"), &pki.ca_pem)?;
    let config = FrontConfig {
        tls: Some(pki.server_config(false)),
        sasl: Some(Logins {
            mechanisms: vec!["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"],
            users: vec![(user.clone(), password.clone())],
            tokens: Vec::new(),
        }),
    };
    SecureFront::start_on(port.parse()?, broker.clone(), config).await;
    println!("ready");
    std::future::pending::<()>().await;
    Ok(())
}
