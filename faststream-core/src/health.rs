//! Health probes over HTTP for Kubernetes and load balancers: `GET /health/live` answers 200 while
//! the app runs; `GET /health/ready` answers 200 once every subscription is consumed and 503
//! before that and from the moment shutdown begins. Anything else is 404.
//!
//! A deliberately small HTTP/1.1 responder (one request per connection): probes need no more.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// What the probes report.
#[derive(Debug, Default)]
pub(crate) struct Health {
    pub(crate) ready: AtomicBool,
    pub(crate) stopping: AtomicBool,
}

/// Binds `addr` and serves the probes until the returned task is aborted.
pub(crate) async fn serve(
    addr: SocketAddr,
    health: Arc<Health>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = TcpListener::bind(addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "health probes on /health/live and /health/ready");
    Ok(tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let health = health.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let n = match tokio::time::timeout(
                    std::time::Duration::from_secs(5),
                    conn.read(&mut buf),
                )
                .await
                {
                    Ok(Ok(n)) => n,
                    _ => return,
                };
                let request = String::from_utf8_lossy(&buf[..n]);
                let path = request.split_whitespace().nth(1).unwrap_or("");
                let (status, body) = match path {
                    "/health/live" => ("200 OK", "live"),
                    "/health/ready"
                        if health.ready.load(Ordering::SeqCst)
                            && !health.stopping.load(Ordering::SeqCst) =>
                    {
                        ("200 OK", "ready")
                    }
                    "/health/ready" => ("503 Service Unavailable", "not ready"),
                    _ => ("404 Not Found", "not found"),
                };
                let response = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(response.as_bytes()).await;
                let _ = conn.shutdown().await;
            });
        }
    }))
}
