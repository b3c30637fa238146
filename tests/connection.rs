//! Losing the connection to the broker: the runtime logs each failure, reconnects with backoff
//! and resumes where it stopped. The test runs its own broker behind a TCP proxy it can cut
//! (the broker advertises the proxy's address, so every connection goes through it).

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use faststream::kafka::KafkaBroker;
use faststream::{publisher, routes, subscriber, FastStream};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;

#[subscriber("flow", auto_offset_reset = "earliest")]
#[publisher("flow-out")]
async fn flow(n: u64) -> String {
    format!("got {n}")
}

/// Forwards 127.0.0.1:<port> to `target`; `set_up(false)` cuts every connection and refuses
/// new ones until `set_up(true)`.
struct Proxy {
    port: u16,
    up: Arc<AtomicBool>,
    cut: broadcast::Sender<()>,
}

impl Proxy {
    async fn start_on(port: u16, target: String) -> Proxy {
        let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let up = Arc::new(AtomicBool::new(true));
        let (cut, _) = broadcast::channel(4);
        let (up2, cut2) = (up.clone(), cut.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                if !up2.load(Ordering::SeqCst) {
                    continue; // dropped: refused
                }
                let target = target.clone();
                let mut cut = cut2.subscribe();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(&target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.recv() => {}
                    }
                });
            }
        });
        Proxy { port, up, cut }
    }

    fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::SeqCst);
        if !up {
            let _ = self.cut.send(());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_and_resumes_after_losing_the_broker() {
    init_logs();
    // A free port for the proxy, which the broker advertises.
    let proxy_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (_broker, broker_addr) = OwnBroker::start(Some(proxy_port)).await;
    let proxy = Proxy::start_on(proxy_port, broker_addr).await;
    let bootstrap = format!("127.0.0.1:{}", proxy.port);
    let client = rskafka::client::ClientBuilder::new(vec![bootstrap.clone()])
        .build()
        .await
        .unwrap();
    create_topic(&client, "flow", 1).await;
    let app = FastStream::new(
        KafkaBroker::builder(&bootstrap)
            .request_timeout(Duration::from_secs(2))
            .build(),
    )
    .with_routes(routes![flow]);
    let running = start(app).await;
    produce(
        &client,
        "flow",
        0,
        (0..50)
            .map(|n| record(None, n.to_string().as_bytes(), &[]))
            .collect(),
    )
    .await;
    read(&client, "flow-out", 50).await;

    // Longer than the client's request timeout (2 s), so requests fail and are retried by the
    // runtime, not only inside the client.
    proxy.set_up(false);
    tokio::time::sleep(Duration::from_secs(5)).await;
    proxy.set_up(true);

    produce(
        &client,
        "flow",
        0,
        (50..100)
            .map(|n| record(None, n.to_string().as_bytes(), &[]))
            .collect(),
    )
    .await;
    let out = read(&client, "flow-out", 100).await;
    let got: Vec<String> = out.values().flatten().map(text).collect();
    let want: Vec<String> = (0..100).map(|n| format!("got {n}")).collect();
    assert_eq!(
        got, want,
        "resumed where it stopped: nothing lost, nothing repeated"
    );
    running.stop().await.unwrap();
    let logs = logs();
    assert!(
        logs.lines().any(|l| l.contains("WARN")
            && l.contains("topic=\"flow\"")
            && l.contains("partition=0")
            && l.contains("fetch failed")),
        "each failure is logged:\n{logs}"
    );
}
