//! Pausing and resuming the subscribers of a running service.
//!
//! A [`Control`] is handed out by the app ([`crate::FastStream::control`]), to handlers (as an
//! extractor) and to hooks ([`crate::AppContext::control`]). Pausing a handler stops its
//! partitions from taking new messages: each finishes what it has in hand (the fetched batch
//! being handled), then fetches nothing until resumed, and resumes at the next offset. The
//! partitions stay assigned (a consumer group's member keeps heartbeating), so a pause moves
//! nothing and repeats nothing. Transports read the state through [`Control::watch`].
//!
//! Seeking moves partitions' positions: each partition finishes what it has in hand (and
//! waits for its outputs' acknowledgements), then goes on from the new position, which a
//! consumer group commits (so a restart keeps it). Transports read seeks through
//! [`Control::watch_seeks`].
//!
//! Subscribing adds a topic to a handler declared `#[subscriber(dynamic = true, ...)]` (which
//! takes no topics at startup), unsubscribing takes it away: transports read the subscriptions
//! through [`Control::watch_subscriptions`] and start or stop consuming (a consumer group
//! rejoins with its new topics).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
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

/// Where a seek moves a partition's position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SeekTo {
    /// The partition's first offset.
    Beginning,
    /// The partition's end: what arrives from now on.
    End,
    /// This offset (out of the log's range, the subscriber's `auto_offset_reset` applies).
    Offset(i64),
    /// The first message whose timestamp is at or after this time (milliseconds since the
    /// Unix epoch); the end if there is none.
    Timestamp(i64),
}

impl std::str::FromStr for SeekTo {
    type Err = String;

    /// `beginning`, `end`, `offset:N` or `timestamp:MILLIS`.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let number = |n: &str| {
            n.parse::<i64>()
                .ok()
                .filter(|n| *n >= 0)
                .ok_or_else(|| format!("{s:?}: not a number of 0 or more"))
        };
        match s.split_once(':') {
            None if s == "beginning" => Ok(SeekTo::Beginning),
            None if s == "end" => Ok(SeekTo::End),
            Some(("offset", n)) => number(n).map(SeekTo::Offset),
            Some(("timestamp", n)) => number(n).map(SeekTo::Timestamp),
            _ => Err(format!(
                "{s:?}: seek to `beginning`, `end`, `offset:N` or `timestamp:MILLIS`"
            )),
        }
    }
}

/// A seek asked of a handler: which of its partitions, and where to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seek {
    id: u64,
    topic: Option<String>,
    partitions: Option<Vec<i32>>,
    to: SeekTo,
}

impl Seek {
    /// Whether it moves `partition` of `topic`.
    pub fn covers(&self, topic: &str, partition: i32) -> bool {
        self.topic.as_deref().is_none_or(|t| t == topic)
            && self
                .partitions
                .as_ref()
                .is_none_or(|ps| ps.contains(&partition))
    }

    /// Where to.
    pub fn to(&self) -> SeekTo {
        self.to
    }
}

/// One handler's controls.
#[derive(Debug)]
struct Handler {
    paused: watch::Sender<Paused>,
    seek: watch::Sender<Option<Seek>>,
    /// Declared `dynamic = true`: takes topics through [`Control::subscribe`].
    dynamic: bool,
}

impl Handler {
    fn new() -> Self {
        Self {
            paused: watch::Sender::new(Paused::default()),
            seek: watch::Sender::new(None),
            dynamic: false,
        }
    }
}

/// The topics each dynamic handler (by path) is subscribed to while the service runs, as
/// written (the app's topic prefix is applied by the transport).
pub type Subscriptions = BTreeMap<&'static str, BTreeSet<String>>;

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
    handlers: Arc<Mutex<BTreeMap<&'static str, Handler>>>,
    seeks: Arc<AtomicU64>,
    subscriptions: Arc<watch::Sender<Subscriptions>>,
    document: Arc<Mutex<Option<Document>>>,
}

/// Builds the running service's AsyncAPI document.
type DocumentFn = dyn Fn(&Subscriptions) -> crate::asyncapi::AsyncApi + Send + Sync;

#[derive(Clone)]
struct Document(Arc<DocumentFn>);

impl std::fmt::Debug for Document {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Document")
    }
}

impl Control {
    /// Registers the handlers of a starting service, noting the dynamic ones.
    pub(crate) fn register_routes(&self, routes: &[&'static crate::RouteDef]) {
        self.register(routes.iter().map(|r| r.name()));
        let mut handlers = self.lock();
        for route in routes {
            if route.subscribers().iter().any(|s| s.is_dynamic()) {
                if let Some(handler) = handlers.get_mut(route.name()) {
                    handler.dynamic = true;
                }
            }
        }
    }

    /// Subscribes the dynamic handler `name` to `topic` while the service runs (with the
    /// options its attribute sets: group, offset reset, failure policy). Consumption starts
    /// shortly after (a consumer group first rejoins with the new topic); a missing topic is
    /// created if the broker's missing-topics policy creates topics. Subscribing twice is one
    /// subscription.
    ///
    /// ```
    /// # async fn demo(control: faststream_core::Control) -> faststream_core::Result<()> {
    /// control.subscribe("tenant_events", "tenant-42.events")?;
    /// // ... the tenant leaves:
    /// control.unsubscribe("tenant_events", "tenant-42.events")?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn subscribe(&self, name: &str, topic: &str) -> Result<()> {
        let full = self.dynamic_handler(name)?;
        if let Some(problem) = crate::TopicNameProblem::of(topic) {
            return Err(Error::Usage(format!(
                "cannot subscribe {full} to {topic:?}: {problem}"
            )));
        }
        let added = self
            .subscriptions
            .send_if_modified(|subs| subs.entry(full).or_default().insert(topic.to_owned()));
        if added {
            tracing::info!(handler = full, topic, "subscribed");
        }
        Ok(())
    }

    /// Takes `topic` away from the dynamic handler `name`: its partitions finish the message in
    /// hand, their outputs are acknowledged and the position committed, as on a revoke.
    /// Unsubscribing a topic it does not have does nothing.
    pub fn unsubscribe(&self, name: &str, topic: &str) -> Result<()> {
        let full = self.dynamic_handler(name)?;
        let removed = self
            .subscriptions
            .send_if_modified(|subs| subs.get_mut(full).is_some_and(|t| t.remove(topic)));
        if removed {
            tracing::info!(handler = full, topic, "unsubscribed");
        }
        Ok(())
    }

    /// The topics the dynamic handler `name` is subscribed to.
    pub fn subscriptions(&self, name: &str) -> Result<Vec<String>> {
        let full = self.dynamic_handler(name)?;
        let subs = self.subscriptions.borrow();
        Ok(subs.get(full).into_iter().flatten().cloned().collect())
    }

    /// The running service's AsyncAPI document, with the topics dynamic handlers are
    /// subscribed to now (`None` before the service started).
    pub fn asyncapi(&self) -> Option<crate::asyncapi::AsyncApi> {
        let document = self
            .document
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()?;
        Some((document.0)(&self.subscriptions.borrow()))
    }

    pub(crate) fn set_document(
        &self,
        build: impl Fn(&Subscriptions) -> crate::asyncapi::AsyncApi + Send + Sync + 'static,
    ) {
        *self.document.lock().unwrap_or_else(|e| e.into_inner()) = Some(Document(Arc::new(build)));
    }

    /// Every dynamic handler's topics, for a transport: the current ones, as they change.
    pub fn watch_subscriptions(&self) -> watch::Receiver<Subscriptions> {
        self.subscriptions.subscribe()
    }

    fn dynamic_handler(&self, name: &str) -> Result<&'static str> {
        let full = self.resolve(name)?;
        if self.lock()[full].dynamic {
            Ok(full)
        } else {
            Err(Error::Usage(format!(
                "handler {full} takes its topics from its attribute: declare it with #[subscriber(dynamic = true, ...)] to subscribe it while the service runs"
            )))
        }
    }

    /// Registers the handlers of a starting service (their state is kept if they were known).
    pub(crate) fn register(&self, names: impl IntoIterator<Item = &'static str>) {
        let mut handlers = self.lock();
        for name in names {
            handlers.entry(name).or_insert_with(Handler::new);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<&'static str, Handler>> {
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
                "cannot control handler {name:?}: the service is not running yet"
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
        let sender = &handlers[full].paused;
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
        Ok(self.lock()[full].paused.borrow().clone())
    }

    /// Every handler with what of it is paused.
    pub fn states(&self) -> Vec<(&'static str, Paused)> {
        self.lock()
            .iter()
            .map(|(name, h)| (*name, h.paused.borrow().clone()))
            .collect()
    }

    /// The pause state of the handler with path `handler`, for a transport's consumers: they
    /// take no new messages from the partitions it covers. A handler not registered is never
    /// paused.
    pub fn watch(&self, handler: &'static str) -> watch::Receiver<Paused> {
        self.lock()
            .entry(handler)
            .or_insert_with(Handler::new)
            .paused
            .subscribe()
    }

    /// Moves every partition of handler `name` (that this instance consumes) to `to`.
    pub fn seek(&self, name: &str, to: SeekTo) -> Result<()> {
        self.ask_seek(name, None, None, to)
    }

    /// Moves `partitions` of `topic` (the name as consumed, prefix included) of handler
    /// `name` to `to`.
    pub fn seek_partitions(
        &self,
        name: &str,
        topic: &str,
        partitions: &[i32],
        to: SeekTo,
    ) -> Result<()> {
        self.ask_seek(name, Some(topic), Some(partitions), to)
    }

    fn ask_seek(
        &self,
        name: &str,
        topic: Option<&str>,
        partitions: Option<&[i32]>,
        to: SeekTo,
    ) -> Result<()> {
        let full = self.resolve(name)?;
        let seek = Seek {
            id: self.seeks.fetch_add(1, Ordering::Relaxed) + 1,
            topic: topic.map(str::to_owned),
            partitions: partitions.map(<[i32]>::to_vec),
            to,
        };
        tracing::info!(handler = full, ?topic, ?partitions, ?to, "seek asked");
        self.lock()[full].seek.send_replace(Some(seek));
        Ok(())
    }

    /// The seeks asked of the handler with path `handler`, for a transport's consumers: the
    /// latest one, as it changes (a consumer applies each new one that covers its
    /// partition; mark the receiver unchanged at start so that one asked before it does not
    /// apply).
    pub fn watch_seeks(&self, handler: &'static str) -> watch::Receiver<Option<Seek>> {
        self.lock()
            .entry(handler)
            .or_insert_with(Handler::new)
            .seek
            .subscribe()
    }
}

/// The seek route's query: `to=...` (required), `topic=...` and `partition=N` (optional).
fn seek_query(query: &str) -> std::result::Result<(Option<String>, Option<i32>, SeekTo), String> {
    let (mut topic, mut partition, mut to) = (None, None, None);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("to", v)) => to = Some(v.parse::<SeekTo>()?),
            Some(("topic", v)) => topic = Some(v.to_owned()),
            Some(("partition", v)) => {
                partition = Some(
                    v.parse()
                        .map_err(|_| format!("partition {v:?}: not a number"))?,
                )
            }
            _ => {
                return Err(format!(
                    "unknown query parameter {pair:?}: to, topic, partition"
                ))
            }
        }
    }
    let to = to.ok_or("seek needs ?to=beginning|end|offset:N|timestamp:MILLIS")?;
    Ok((topic, partition, to))
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
            400 => "400 Bad Request",
            404 => "404 Not Found",
            _ => "405 Method Not Allowed",
        };
        crate::health::response(status, "application/json", &body, method != "HEAD")
    });
    crate::health::serve_with(
        addr,
        "control on GET /subscribers, GET /asyncapi, POST /subscribers/{handler}/pause, /resume, /seek, /subscribe and /unsubscribe",
        respond,
    )
    .await
}

/// The control routes' answer to `method` on `path`: `GET /subscribers` lists every handler
/// with its pause state; `POST /subscribers/{name}/pause` and `POST /subscribers/{name}/resume`
/// change it. Status and JSON body.
pub(crate) fn respond(control: &Control, method: &str, target: &str) -> (u16, String) {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let state = |name: &str, p: &Paused| {
        serde_json::json!({
            "handler": name,
            "paused": p.all,
            "paused_partitions": p.partitions().map(|(t, n)| serde_json::json!({"topic": t, "partition": n})).collect::<Vec<_>>(),
            "topics": control.subscriptions.borrow().get(name).map(|t| t.iter().cloned().collect::<Vec<_>>()),
        })
    };
    let error =
        |status, message: String| (status, serde_json::json!({ "error": message }).to_string());
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (method, &parts[..]) {
        ("GET" | "HEAD", ["asyncapi"]) => match control.asyncapi() {
            Some(document) => (200, document.to_json()),
            None => error(404, "the service is not running yet".into()),
        },
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
        ("POST", ["subscribers", name, action @ ("subscribe" | "unsubscribe")]) => {
            let topic = query
                .split('&')
                .find_map(|pair| pair.strip_prefix("topic="))
                .filter(|t| !t.is_empty());
            let Some(topic) = topic else {
                return error(400, format!("{action} needs ?topic=NAME"));
            };
            let done = if *action == "subscribe" {
                control.subscribe(name, topic)
            } else {
                control.unsubscribe(name, topic)
            };
            match done.and_then(|()| control.subscriptions(name)) {
                Ok(topics) => (
                    200,
                    serde_json::json!({"handler": name, "topics": topics}).to_string(),
                ),
                Err(e) => error(404, e.to_string()),
            }
        }
        ("POST", ["subscribers", name, "seek"]) => match seek_query(query) {
            Ok((topic, partition, to)) => {
                let partitions = partition.map(|p| vec![p]);
                let asked = control.ask_seek(name, topic.as_deref(), partitions.as_deref(), to);
                match asked {
                    Ok(()) => (
                        200,
                        serde_json::json!({
                            "handler": name,
                            "seek": format!("{to:?}"),
                            "topic": topic,
                            "partition": partition,
                        })
                        .to_string(),
                    ),
                    Err(e) => error(404, e.to_string()),
                }
            }
            Err(e) => error(400, e),
        },
        (_, ["subscribers", _, "pause" | "resume" | "seek" | "subscribe" | "unsubscribe"]) => {
            error(
                405,
                "pause, resume, seek, subscribe and unsubscribe take POST".into(),
            )
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

    #[test]
    fn seeks_are_parsed_asked_and_watched() {
        assert_eq!("beginning".parse(), Ok(SeekTo::Beginning));
        assert_eq!("end".parse(), Ok(SeekTo::End));
        assert_eq!("offset:42".parse(), Ok(SeekTo::Offset(42)));
        assert_eq!(
            "timestamp:1700000000000".parse(),
            Ok(SeekTo::Timestamp(1_700_000_000_000))
        );
        assert!("offset:-1".parse::<SeekTo>().is_err());
        assert!("middle".parse::<SeekTo>().is_err());
        let control = Control::default();
        control.register(["svc::relay"]);
        let mut seeks = control.watch_seeks("svc::relay");
        seeks.mark_unchanged();
        control
            .seek_partitions("relay", "in", &[1], SeekTo::End)
            .unwrap();
        assert!(seeks.has_changed().unwrap());
        let seek = seeks.borrow_and_update().clone().unwrap();
        assert!(seek.covers("in", 1) && !seek.covers("in", 0) && !seek.covers("other", 1));
        assert_eq!(seek.to(), SeekTo::End);
        let (status, body) = respond(
            &control,
            "POST",
            "/subscribers/relay/seek?to=offset:7&topic=in",
        );
        assert_eq!(status, 200, "{body}");
        let seek = seeks.borrow_and_update().clone().unwrap();
        assert!(seek.covers("in", 0) && seek.to() == SeekTo::Offset(7));
        assert_eq!(
            respond(&control, "POST", "/subscribers/relay/seek?to=later").0,
            400
        );
        assert_eq!(respond(&control, "POST", "/subscribers/relay/seek").0, 400);
        assert_eq!(
            respond(&control, "GET", "/subscribers/relay/seek?to=end").0,
            405
        );
        assert!(
            !seeks.has_changed().unwrap(),
            "refused requests ask nothing"
        );
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
