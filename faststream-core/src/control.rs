//! Pausing and resuming the subscribers of a running service.
//!
//! A [`Control`] is handed out by the app ([`crate::FastStream::control`]), to handlers (as an
//! extractor) and to hooks ([`crate::AppContext::control`]). Pausing a handler stops its
//! partitions from taking new messages: each finishes what it has in hand (the fetched batch
//! being handled), then fetches nothing until resumed, and resumes at the next offset. The
//! partitions stay assigned (a consumer group's member keeps heartbeating), so a pause moves
//! nothing and repeats nothing. Transports read the state through [`Control::watch`].

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::error::{Error, Result};

/// What of one handler is paused: all its partitions, or some.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Paused {
    all: bool,
    partitions: BTreeSet<(String, i32)>,
}

impl Paused {
    /// Whether `partition` of `topic` (the name as consumed, prefix included) is paused.
    pub fn covers(&self, topic: &str, partition: i32) -> bool {
        self.all
            || self
                .partitions
                .iter()
                .any(|(t, p)| *p == partition && t == topic)
    }

    /// Whether every partition is paused.
    pub fn is_all(&self) -> bool {
        self.all
    }

    /// The partitions paused one by one (topic, partition).
    pub fn partitions(&self) -> impl Iterator<Item = (&str, i32)> {
        self.partitions.iter().map(|(t, p)| (t.as_str(), *p))
    }

    /// Whether nothing is paused.
    pub fn is_empty(&self) -> bool {
        !self.all && self.partitions.is_empty()
    }
}

/// A handle on the running service's subscribers. Cheap to clone; every clone controls the
/// same service.
///
/// Handlers are named by their function name (`"relay"`) or their path
/// (`"my_service::handlers::relay"`).
///
/// ```
/// # async fn demo(control: faststream_core::Control) -> faststream_core::Result<()> {
/// control.pause("relay")?; // every partition of the `relay` handler
/// // ... the downstream system is back:
/// control.resume("relay")?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug, Default)]
pub struct Control {
    handlers: Arc<Mutex<BTreeMap<&'static str, watch::Sender<Paused>>>>,
}

impl Control {
    /// Registers the handlers of a starting service (their state is kept if they were known).
    pub(crate) fn register(&self, names: impl IntoIterator<Item = &'static str>) {
        let mut handlers = self.lock();
        for name in names {
            handlers
                .entry(name)
                .or_insert_with(|| watch::Sender::new(Paused::default()));
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<&'static str, watch::Sender<Paused>>> {
        self.handlers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The full name of the handler `name` designates (a path, or a function name that only
    /// one handler has).
    fn resolve(&self, name: &str) -> Result<&'static str> {
        let handlers = self.lock();
        if let Some((full, _)) = handlers.get_key_value(name) {
            return Ok(full);
        }
        let matching: Vec<&'static str> = handlers
            .keys()
            .copied()
            .filter(|full| full.rsplit("::").next() == Some(name))
            .collect();
        match matching[..] {
            [one] => Ok(one),
            [] if handlers.is_empty() => Err(Error::Usage(format!(
                "cannot pause or resume handler {name:?}: the service is not running yet"
            ))),
            [] => Err(Error::Usage(format!(
                "no handler {name:?}; the handlers are {:?}",
                handlers.keys().collect::<Vec<_>>()
            ))),
            _ => Err(Error::Usage(format!(
                "{name:?} names several handlers ({matching:?}): give the path"
            ))),
        }
    }

    fn update(&self, name: &str, change: impl FnOnce(&mut Paused)) -> Result<Paused> {
        let full = self.resolve(name)?;
        let handlers = self.lock();
        let sender = &handlers[full];
        sender.send_modify(change);
        let now = sender.borrow().clone();
        tracing::info!(
            handler = full,
            all = now.all,
            partitions = ?now.partitions,
            "paused partitions changed"
        );
        Ok(now)
    }

    /// Pauses every partition of handler `name`.
    pub fn pause(&self, name: &str) -> Result<()> {
        self.update(name, |p| p.all = true).map(drop)
    }

    /// Pauses `partitions` of `topic` (the name as consumed, prefix included) for handler
    /// `name`; its other partitions go on.
    pub fn pause_partitions(&self, name: &str, topic: &str, partitions: &[i32]) -> Result<()> {
        self.update(name, |p| {
            p.partitions
                .extend(partitions.iter().map(|&n| (topic.to_owned(), n)))
        })
        .map(drop)
    }

    /// Resumes every partition of handler `name` (also those paused one by one).
    pub fn resume(&self, name: &str) -> Result<()> {
        self.update(name, |p| *p = Paused::default()).map(drop)
    }

    /// Resumes `partitions` of `topic` paused one by one (a handler paused as a whole stays
    /// paused).
    pub fn resume_partitions(&self, name: &str, topic: &str, partitions: &[i32]) -> Result<()> {
        self.update(name, |p| {
            p.partitions
                .retain(|(t, n)| t != topic || !partitions.contains(n))
        })
        .map(drop)
    }

    /// What of handler `name` is paused.
    pub fn paused(&self, name: &str) -> Result<Paused> {
        let full = self.resolve(name)?;
        Ok(self.lock()[full].borrow().clone())
    }

    /// Every handler with what of it is paused.
    pub fn states(&self) -> Vec<(&'static str, Paused)> {
        self.lock()
            .iter()
            .map(|(name, s)| (*name, s.borrow().clone()))
            .collect()
    }

    /// The pause state of the handler with path `handler`, for a transport's consumers: they
    /// take no new messages from the partitions it covers. A handler not registered is never
    /// paused.
    pub fn watch(&self, handler: &'static str) -> watch::Receiver<Paused> {
        self.lock()
            .entry(handler)
            .or_insert_with(|| watch::Sender::new(Paused::default()))
            .subscribe()
    }
}

/// Waits until `partition` of `topic` is not paused in `state` (at once if it is not).
pub async fn until_resumed(state: &mut watch::Receiver<Paused>, topic: &str, partition: i32) {
    if !state.borrow().covers(topic, partition) {
        return;
    }
    tracing::debug!(topic, partition, "paused");
    // The sender lives as long as the control: an error means the service is going away,
    // and then nothing is waited for.
    let _ = state.wait_for(|p| !p.covers(topic, partition)).await;
    tracing::debug!(topic, partition, "resumed");
}

/// Binds `addr` and serves the control routes of `control` ([`respond`]) until the returned
/// task is aborted.
pub(crate) async fn serve(
    addr: std::net::SocketAddr,
    control: Control,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    if !addr.ip().is_loopback() {
        tracing::warn!(%addr, "the control endpoint is reachable beyond this host: whoever reaches it can pause the service's subscribers");
    }
    let respond: crate::health::Responder = Arc::new(move |method, path| {
        let (status, body) = respond(&control, method, path);
        let status = match status {
            200 => "200 OK",
            404 => "404 Not Found",
            _ => "405 Method Not Allowed",
        };
        crate::health::response(status, "application/json", &body, method != "HEAD")
    });
    crate::health::serve_with(
        addr,
        "control on GET /subscribers, POST /subscribers/{handler}/pause and /resume",
        respond,
    )
    .await
}

/// The control routes' answer to `method` on `path`: `GET /subscribers` lists every handler
/// with its pause state; `POST /subscribers/{name}/pause` and `POST /subscribers/{name}/resume`
/// change it. Status and JSON body.
pub(crate) fn respond(control: &Control, method: &str, path: &str) -> (u16, String) {
    let state = |name: &str, p: &Paused| {
        serde_json::json!({
            "handler": name,
            "paused": p.all,
            "paused_partitions": p.partitions().map(|(t, n)| serde_json::json!({"topic": t, "partition": n})).collect::<Vec<_>>(),
        })
    };
    let error =
        |status, message: String| (status, serde_json::json!({ "error": message }).to_string());
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (method, &parts[..]) {
        ("GET" | "HEAD", ["subscribers"]) => {
            let list: Vec<_> = control.states().iter().map(|(n, p)| state(n, p)).collect();
            (200, serde_json::Value::from(list).to_string())
        }
        ("POST", ["subscribers", name, action @ ("pause" | "resume")]) => {
            let done = if *action == "pause" {
                control.pause(name)
            } else {
                control.resume(name)
            };
            match done.and_then(|()| control.paused(name)) {
                Ok(p) => (200, state(name, &p).to_string()),
                Err(e) => error(404, e.to_string()),
            }
        }
        (_, ["subscribers", _, "pause" | "resume"]) => {
            error(405, "pause and resume take POST".into())
        }
        (_, ["subscribers"]) => error(405, "the list takes GET".into()),
        _ => error(404, "not found".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handlers_are_named_by_function_or_path() {
        let control = Control::default();
        assert!(control.pause("relay").is_err(), "not running yet");
        control.register(["svc::a::relay", "svc::b::relay", "svc::a::audit"]);
        control.pause("audit").unwrap();
        assert!(control.paused("svc::a::audit").unwrap().is_all());
        let err = control.pause("relay").unwrap_err().to_string();
        assert!(err.contains("several handlers"), "{err}");
        control.pause("svc::b::relay").unwrap();
        assert!(!control.paused("svc::a::relay").unwrap().covers("t", 0));
        let err = control.pause("nope").unwrap_err().to_string();
        assert!(err.contains("no handler \"nope\""), "{err}");
    }

    #[test]
    fn partitions_pause_and_resume_one_by_one() {
        let control = Control::default();
        control.register(["svc::relay"]);
        let watched = control.watch("svc::relay");
        control.pause_partitions("relay", "in", &[0, 2]).unwrap();
        let p = watched.borrow().clone();
        assert!(p.covers("in", 0) && !p.covers("in", 1) && p.covers("in", 2));
        assert!(!p.covers("other", 0));
        control.resume_partitions("relay", "in", &[0]).unwrap();
        assert!(!watched.borrow().covers("in", 0) && watched.borrow().covers("in", 2));
        control.pause("relay").unwrap();
        control.resume_partitions("relay", "in", &[2]).unwrap();
        assert!(watched.borrow().covers("in", 1), "paused as a whole");
        control.resume("relay").unwrap();
        assert!(watched.borrow().is_empty());
    }

    #[test]
    fn the_http_routes_change_state_only_with_post() {
        let control = Control::default();
        control.register(["svc::relay"]);
        assert_eq!(respond(&control, "GET", "/subscribers/relay/pause").0, 405);
        assert!(control.paused("relay").unwrap().is_empty());
        let (status, body) = respond(&control, "POST", "/subscribers/relay/pause");
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("\"paused\":true"), "{body}");
        let (status, body) = respond(&control, "GET", "/subscribers");
        assert_eq!(status, 200);
        assert!(
            body.contains("svc::relay") && body.contains("\"paused\":true"),
            "{body}"
        );
        assert_eq!(respond(&control, "POST", "/subscribers/nope/pause").0, 404);
        assert_eq!(
            respond(&control, "POST", "/subscribers/relay/resume").0,
            200
        );
        assert!(control.paused("relay").unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_paused_partition_waits_until_resumed() {
        let control = Control::default();
        control.register(["svc::relay"]);
        let mut watched = control.watch("svc::relay");
        control.pause("relay").unwrap();
        let waiting = tokio::spawn(async move { until_resumed(&mut watched, "in", 0).await });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        control.resume("relay").unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("resumed")
            .unwrap();
    }
}
