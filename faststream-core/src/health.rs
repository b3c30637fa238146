//! Health probes over HTTP for Kubernetes and load balancers: `GET /health/live` answers 200 while
//! the app runs; `GET /health/ready` answers 200 once every subscription is consumed and 503
//! before that and from the moment shutdown begins; with the `prometheus` feature and
//! `FastStream::prometheus`, `GET /metrics` answers the Prometheus text format. Anything else is
//! 404.
//!
//! A small HTTP/1.1 responder (one request per connection, parsed with `httparse`): `GET` and
//! `HEAD` only (anything else is answered 405), a request head of at most 8 KiB read within
//! 5 s (a malformed one is answered 400). Probes and scrapes need no more.

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

/// Answers one request: method and target (path and query) to the whole response.
pub(crate) type Responder = Arc<dyn Fn(&str, &str) -> Vec<u8> + Send + Sync>;

/// Binds `addr` and serves the probes (and `metrics`, if given) until the returned task is
/// aborted.
pub(crate) async fn serve(
    addr: SocketAddr,
    health: Arc<Health>,
    metrics: Option<Render>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let what = match metrics {
        Some(_) => "metrics on /metrics, health probes on /health/live and /health/ready",
        None => "health probes on /health/live and /health/ready",
    };
    let respond: Responder =
        Arc::new(move |method, target| respond(method, target, &health, metrics.as_ref()));
    serve_with(addr, what, respond).await
}

/// Binds `addr` and serves `respond`'s answers until the returned task is aborted; logs
/// `what` is served there.
pub(crate) async fn serve_with(
    addr: SocketAddr,
    what: &'static str,
    respond: Responder,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = TcpListener::bind(addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "{what}");
    Ok(tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let respond = respond.clone();
            tokio::spawn(async move {
                let limit = std::time::Duration::from_secs(5);
                let Ok(Some(response)) =
                    tokio::time::timeout(limit, answer(&mut conn, &*respond)).await
                else {
                    return;
                };
                let _ = conn.write_all(&response).await;
                let _ = conn.shutdown().await;
            });
        }
    }))
}

/// Reads one request head from `conn` and returns the whole response; `None` if the peer
/// closed the connection (or it failed) before a request came.
async fn answer(
    conn: &mut (impl AsyncReadExt + Unpin),
    respond: &(dyn Fn(&str, &str) -> Vec<u8> + Send + Sync),
) -> Option<Vec<u8>> {
    const MAX_HEAD: usize = 8 * 1024;
    let mut buf = Vec::with_capacity(1024);
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut request = httparse::Request::new(&mut headers);
        match request.parse(&buf) {
            Ok(httparse::Status::Complete(_)) => {
                let method = request.method.unwrap_or("");
                return Some(respond(method, request.path.unwrap_or("")));
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => {}
            Ok(httparse::Status::Partial) | Err(_) => {
                return Some(response(
                    "400 Bad Request",
                    "text/plain",
                    "bad request",
                    true,
                ));
            }
        }
        let mut chunk = [0u8; 1024];
        match conn.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// The response to `method` on `target` (its query plays no part).
fn respond(method: &str, target: &str, health: &Health, metrics: Option<&Render>) -> Vec<u8> {
    let path = target.split('?').next().unwrap_or(target);
    let with_body = match method {
        "GET" => true,
        "HEAD" => false,
        _ => {
            let mut r = response(
                "405 Method Not Allowed",
                "text/plain",
                "method not allowed",
                true,
            );
            // The header goes before the blank line that ends the head.
            let at = r
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .unwrap_or(r.len());
            r.splice(at..at, b"\r\nallow: GET, HEAD".iter().copied());
            return r;
        }
    };
    match (path, metrics) {
        ("/health/live", _) => response("200 OK", "text/plain", "live", with_body),
        ("/health/ready", _)
            if health.ready.load(Ordering::SeqCst) && !health.stopping.load(Ordering::SeqCst) =>
        {
            response("200 OK", "text/plain", "ready", with_body)
        }
        ("/health/ready", _) => response(
            "503 Service Unavailable",
            "text/plain",
            "not ready",
            with_body,
        ),
        ("/metrics", Some(render)) => {
            response("200 OK", "text/plain; version=0.0.4", &render(), with_body)
        }
        _ => response("404 Not Found", "text/plain", "not found", with_body),
    }
}

/// A whole response with `body` (left out for `HEAD`: `with_body` false).
pub(crate) fn response(status: &str, content_type: &str, body: &str, with_body: bool) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if with_body {
        out.extend_from_slice(body.as_bytes());
    }
    out
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

#[cfg(test)]
mod tests {
    use super::*;

    async fn ask(request: &[&[u8]], health: &Health) -> String {
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        for part in request {
            client.write_all(part).await.unwrap();
        }
        drop(client);
        let got = answer(&mut server, &|m: &str, p: &str| respond(m, p, health, None))
            .await
            .unwrap_or_default();
        String::from_utf8(got).unwrap()
    }

    #[tokio::test]
    async fn a_request_head_in_pieces_is_answered() {
        let health = Health::default();
        let got = ask(
            &[b"GET /health/li", b"ve HTTP/1.1\r\nhost: x\r\n", b"\r\n"],
            &health,
        )
        .await;
        assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{got}");
        assert!(got.ends_with("\r\n\r\nlive"), "{got}");
    }

    #[tokio::test]
    async fn only_get_and_head_are_served() {
        let health = Health::default();
        let got = ask(&[b"POST /health/live HTTP/1.1\r\n\r\n"], &health).await;
        assert!(
            got.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"),
            "{got}"
        );
        assert!(got.contains("\r\nallow: GET, HEAD\r\n"), "{got}");
        let got = ask(&[b"HEAD /health/ready HTTP/1.1\r\n\r\n"], &health).await;
        assert!(
            got.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{got}"
        );
        assert!(got.ends_with("\r\n\r\n"), "no body for HEAD: {got}");
    }

    #[tokio::test]
    async fn a_malformed_or_oversized_head_is_refused() {
        let health = Health::default();
        let got = ask(&[b"GET\x00 nonsense\r\n\r\n"], &health).await;
        assert!(got.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{got}");
        let long = vec![b'a'; 9000];
        let got = ask(&[b"GET /", &long], &health).await;
        assert!(got.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{got}");
    }

    #[tokio::test]
    async fn a_query_string_does_not_change_the_path() {
        let health = Health::default();
        health.ready.store(true, Ordering::SeqCst);
        let got = ask(&[b"GET /health/ready?verbose=1 HTTP/1.1\r\n\r\n"], &health).await;
        assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{got}");
    }
}
