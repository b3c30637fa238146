//! Health probes over HTTP for Kubernetes and load balancers: `GET /health/live` answers 200 while
//! the app runs; `GET /health/ready` answers 200 once every subscription is consumed and 503
//! before that and from the moment shutdown begins; with the `prometheus` feature and
//! `FastStream::prometheus`, `GET /metrics` answers the Prometheus text format. Anything else is
//! 404.
//!
//! A deliberately small HTTP/1.1 responder (one request per connection): probes and scrapes
//! need no more.

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

/// Renders the metrics page, if metrics are served.
pub(crate) type Render = Arc<dyn Fn() -> String + Send + Sync>;

/// Binds `addr` and serves the probes (and `metrics`, if given) until the returned task is
/// aborted.
pub(crate) async fn serve(
    addr: SocketAddr,
    health: Arc<Health>,
    metrics: Option<Render>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = TcpListener::bind(addr).await?;
    match metrics {
        Some(_) => {
            tracing::info!(addr = %listener.local_addr()?, "metrics on /metrics, health probes on /health/live and /health/ready")
        }
        None => {
            tracing::info!(addr = %listener.local_addr()?, "health probes on /health/live and /health/ready")
        }
    }
    Ok(tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let health = health.clone();
            let metrics = metrics.clone();
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
                let text = |s: &str| (s.to_owned(), "text/plain");
                let (status, (body, content_type)) = match (path, &metrics) {
                    ("/health/live", _) => ("200 OK", text("live")),
                    ("/health/ready", _)
                        if health.ready.load(Ordering::SeqCst)
                            && !health.stopping.load(Ordering::SeqCst) =>
                    {
                        ("200 OK", text("ready"))
                    }
                    ("/health/ready", _) => ("503 Service Unavailable", text("not ready")),
                    ("/metrics", Some(render)) => {
                        ("200 OK", (render(), "text/plain; version=0.0.4"))
                    }
                    _ => ("404 Not Found", text("not found")),
                };
                let response = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(response.as_bytes()).await;
                let _ = conn.shutdown().await;
            });
        }
    }))
}

/// The process-wide Prometheus recorder, installed on first use (every app of the process
/// shares it). Fails if another metrics recorder was installed first.
#[cfg(feature = "prometheus")]
pub(crate) fn prometheus() -> Result<Render, String> {
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
    static HANDLE: std::sync::OnceLock<Result<PrometheusHandle, String>> =
        std::sync::OnceLock::new();
    let handle = HANDLE.get_or_init(|| {
        const SECONDS: &[f64] = &[
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ];
        const BYTES: &[f64] = &[
            64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0,
        ];
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS)
            .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_bytes".into()), BYTES))
            .map_err(|e| e.to_string())?
            .build_recorder();
        let handle = recorder.handle();
        metrics::set_global_recorder(recorder).map_err(|_| {
            "another metrics recorder is already installed in this process: serve its output yourself instead of calling prometheus()".to_owned()
        })?;
        Ok(handle)
    });
    let handle = handle.clone()?;
    Ok(Arc::new(move || {
        handle.run_upkeep();
        handle.render()
    }))
}
