//! The app: collects and validates routes, runs a transport until SIGINT/SIGTERM, stops gracefully.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::extract::{Context, StateMap};
use crate::pipeline::{Pipeline, Ready};
use crate::policy::FailurePolicy;
use crate::publish::{BoxFuture, Publisher};
use crate::route::{registered_routes, RouteDef};
use crate::shutdown::{termination_signal, Shutdown};
use crate::transport::Transport;
use crate::validate::resolve_routes;
use crate::{Error, Result};
use tokio_util::task::AbortOnDropHandle;

/// What a lifespan hook gets: the app's state (startup hooks may add to it: handlers then
/// extract it as `State<T>`) and a publisher.
#[derive(Clone, Debug)]
pub struct AppContext {
    state: Arc<std::sync::Mutex<StateMap>>,
    publisher: Publisher,
    control: crate::Control,
}

impl AppContext {
    /// Provides `value` to handlers as `State<S>` (in `on_startup` hooks; later it is too
    /// late: the handlers' state is fixed when consuming starts).
    pub fn provide<S: Clone + Send + Sync + 'static>(&self, value: S) {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(value);
    }

    /// A copy of the state value of type `S`, if there is one.
    pub fn get<S: Clone + Send + Sync + 'static>(&self) -> Option<S> {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get::<S>()
            .cloned()
    }

    /// Publishes through the app's transport (for example a message announcing the service).
    pub fn publisher(&self) -> &Publisher {
        &self.publisher
    }

    /// Pauses and resumes the app's subscribers (from `after_startup` on: before, the
    /// handlers are not known yet).
    pub fn control(&self) -> &crate::Control {
        &self.control
    }
}

type Hook = Box<dyn FnOnce(AppContext) -> BoxFuture<'static, Result<(), String>> + Send>;

/// Lifespan hooks, by stage, in registration order.
#[derive(Default)]
struct Hooks {
    on_startup: Vec<Hook>,
    after_startup: Vec<Hook>,
    on_shutdown: Vec<Hook>,
    after_shutdown: Vec<Hook>,
}

impl std::fmt::Debug for Hooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hooks")
            .field("on_startup", &self.on_startup.len())
            .field("after_startup", &self.after_startup.len())
            .field("on_shutdown", &self.on_shutdown.len())
            .field("after_shutdown", &self.after_shutdown.len())
            .finish()
    }
}

fn hook<F, Fut, E>(f: F) -> Hook
where
    F: FnOnce(AppContext) -> Fut + Send + 'static,
    Fut: Future<Output = std::result::Result<(), E>> + Send + 'static,
    E: std::fmt::Display,
{
    Box::new(move |ctx| {
        let fut = f(ctx);
        Box::pin(async move { fut.await.map_err(|e| e.to_string()) })
    })
}

/// Runs the hooks of one stage in order; the first failure ends the stage.
async fn run_hooks(stage: &'static str, hooks: Vec<Hook>, ctx: &AppContext) -> Result<()> {
    for (i, hook) in hooks.into_iter().enumerate() {
        hook(ctx.clone()).await.map_err(|reason| Error::Hook {
            stage,
            index: i + 1,
            reason,
        })?;
    }
    Ok(())
}

/// A service: a transport plus the routes and state its handlers run with.
///
/// ```no_run
/// # async fn demo<T: faststream_core::Transport>(broker: T) -> faststream_core::Result<()> {
/// use faststream_core::FastStream;
/// FastStream::new(broker).run().await
/// # }
/// ```
#[derive(Debug)]
pub struct FastStream<T> {
    transport: Arc<T>,
    routes: Option<Vec<&'static RouteDef>>,
    state: StateMap,
    shutdown_timeout: Duration,
    topic_prefix: String,
    ready: tokio::sync::watch::Sender<bool>,
    policy: FailurePolicy,
    compat_headers: bool,
    /// The AsyncAPI document's title and version.
    info: (String, String),
    hooks: Hooks,
    middlewares: crate::middleware::Middlewares,
    health: Option<std::net::SocketAddr>,
    /// Whether `/metrics` is served beside the probes.
    metrics: bool,
    control: crate::Control,
    /// Where the control routes are served, if anywhere.
    control_endpoint: Option<std::net::SocketAddr>,
}

impl<T: Transport> FastStream<T> {
    /// An app over `transport` running every route registered with `#[subscriber]`.
    pub fn new(transport: T) -> Self {
        Self {
            transport: Arc::new(transport),
            routes: None,
            state: StateMap::default(),
            shutdown_timeout: Duration::from_secs(30),
            topic_prefix: String::new(),
            ready: tokio::sync::watch::Sender::new(false),
            policy: FailurePolicy::default(),
            compat_headers: true,
            info: ("FastStream".into(), "0.1.0".into()),
            hooks: Hooks::default(),
            middlewares: Default::default(),
            health: None,
            metrics: false,
            control: crate::Control::default(),
            control_endpoint: None,
        }
    }

    /// The handle that pauses and resumes this app's subscribers once it runs (clones share
    /// it; handlers get it as an extractor, hooks from [`AppContext::control`]).
    pub fn control(&self) -> crate::Control {
        self.control.clone()
    }

    /// Serves the control routes on `addr` (off unless called; give a loopback address such
    /// as `127.0.0.1:9091` unless something in front authenticates callers: whoever reaches
    /// it can pause the service). `GET /subscribers` lists every handler with what of it is
    /// paused; `POST /subscribers/{handler}/pause` and `POST /subscribers/{handler}/resume`
    /// pause and resume every partition of a handler (named by function or path). State
    /// changes take `POST` only: a `GET` on them is answered 405.
    pub fn control_endpoint(mut self, addr: std::net::SocketAddr) -> Self {
        self.control_endpoint = Some(addr);
        self
    }

    /// Serves Prometheus metrics at `GET /metrics` on `addr`, beside the health probes of
    /// [`FastStream::health`] (one address for scrapes and probes). Installs the process-wide
    /// Prometheus recorder of the `metrics` facade on first use; the run fails at startup if
    /// another recorder was installed first. The metrics are listed in the guide's
    /// operating page (`faststream::guide::operating`).
    #[cfg(feature = "prometheus")]
    pub fn prometheus(mut self, addr: std::net::SocketAddr) -> Self {
        self.health = Some(addr);
        self.metrics = true;
        self
    }

    /// Serves health probes on `addr` (for example `0.0.0.0:8080`): `GET /health/live` (200
    /// while the app runs) and `GET /health/ready` (200 once every subscription is consumed; 503
    /// before, and from the moment shutdown begins, so a load balancer stops sending work first).
    /// In-process, [`FastStream::ready`] gives the same readiness.
    pub fn health(mut self, addr: std::net::SocketAddr) -> Self {
        self.health = Some(addr);
        self
    }

    /// Runs `middleware` around every message's handling and every publish (see
    /// [`crate::Middleware`]); middlewares run in registration order (`after` in reverse).
    pub fn middleware(mut self, middleware: impl crate::Middleware) -> Self {
        self.middlewares.0.push(Arc::new(middleware));
        self
    }

    /// Runs `hook` before anything is consumed (after the routes were found, before they are
    /// checked against the state): open a database pool, warm a cache, and provide them to
    /// handlers with [`AppContext::provide`]. Hooks run in registration order; an error stops the
    /// startup ([`Error::Hook`]) and nothing is consumed.
    pub fn on_startup<F, Fut, E>(mut self, hook_fn: F) -> Self
    where
        F: FnOnce(AppContext) -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<(), E>> + Send + 'static,
        E: std::fmt::Display,
    {
        self.hooks.on_startup.push(hook(hook_fn));
        self
    }

    /// Runs `hook` once every subscription is consumed (the app is ready); an error stops the
    /// app gracefully and is returned.
    pub fn after_startup<F, Fut, E>(mut self, hook_fn: F) -> Self
    where
        F: FnOnce(AppContext) -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<(), E>> + Send + 'static,
        E: std::fmt::Display,
    {
        self.hooks.after_startup.push(hook(hook_fn));
        self
    }

    /// Runs `hook` when the stop signal came, before consuming stops (handlers still run).
    pub fn on_shutdown<F, Fut, E>(mut self, hook_fn: F) -> Self
    where
        F: FnOnce(AppContext) -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<(), E>> + Send + 'static,
        E: std::fmt::Display,
    {
        self.hooks.on_shutdown.push(hook(hook_fn));
        self
    }

    /// Runs `hook` after consuming stopped and every output was flushed (close pools here).
    /// It also runs when the transport stopped on its own with an error.
    pub fn after_shutdown<F, Fut, E>(mut self, hook_fn: F) -> Self
    where
        F: FnOnce(AppContext) -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<(), E>> + Send + 'static,
        E: std::fmt::Display,
    {
        self.hooks.after_shutdown.push(hook(hook_fn));
        self
    }

    /// Adds shared state, available to handlers as `State<S>` (one value per type).
    pub fn with_state<S: Clone + Send + Sync + 'static>(mut self, state: S) -> Self {
        self.state.insert(state);
        self
    }

    /// Runs only these routes instead of every registered one (see `routes![...]`).
    pub fn with_routes(mut self, routes: Vec<&'static RouteDef>) -> Self {
        self.routes = Some(routes);
        self
    }

    /// How long a graceful stop may take before in-flight work is abandoned (default 30 s).
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// Prepends `prefix` to every topic the routes subscribe and publish to (like FastStream's
    /// router prefix) and to their consumer group ids: one binary can serve several
    /// environments, and tests stay isolated. Topics named explicitly in `Publisher::publish`
    /// are used as given.
    pub fn topic_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.topic_prefix = prefix.into();
        self
    }

    /// The failure policy of routes that do not override it (retries, dead-letter topic, what
    /// to do without one, timeout, size limit, ack mode). See [`FailurePolicy`].
    pub fn failure_policy(mut self, policy: FailurePolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Whether published messages carry FastStream's `content-type` and `correlation_id`
    /// headers (default true, so Python FastStream services read them as their own). Turning
    /// them off roughly halves the transport's CPU per message (see the guide's performance
    /// page, `faststream::guide::performance`); an incoming `correlation_id` is still passed on.
    pub fn compat_headers(mut self, on: bool) -> Self {
        self.compat_headers = on;
        self
    }

    /// A handle that resolves once the app consumes every subscription (for health checks,
    /// and for tests that publish only after the service listens).
    pub fn ready(&self) -> Ready {
        Ready::from_sender(&self.ready)
    }

    /// The routes this app will run, validated against its state.
    pub fn routes(&self) -> Result<Vec<&'static RouteDef>> {
        resolve_routes(self.routes.clone(), &self.state)
    }

    /// The title and version the AsyncAPI document gives the service (default `FastStream`,
    /// `0.1.0`, as Python FastStream's).
    pub fn asyncapi_info(mut self, title: impl Into<String>, version: impl Into<String>) -> Self {
        self.info = (title.into(), version.into());
        self
    }

    /// The AsyncAPI 3.0 document of this app's routes: a channel and an operation per
    /// subscription (`receive`) and per published topic (`send`), with payload content types
    /// and, with the `schemars` feature, the JSON Schemas of body and return types that derive
    /// `schemars::JsonSchema` (see [`crate::asyncapi`]). Topic names carry the topic prefix.
    pub fn asyncapi(&self) -> crate::asyncapi::AsyncApi {
        let routes = self.routes.clone().unwrap_or_else(registered_routes);
        crate::asyncapi::AsyncApi::build(
            &routes,
            &self.topic_prefix,
            (&self.info.0, &self.info.1),
            self.transport.server(),
            &self.control.watch_subscriptions().borrow(),
        )
    }

    /// Runs until SIGINT (Ctrl-C) or SIGTERM, then stops gracefully. Reads no command line:
    /// see [`FastStream::run_with_args`] for the `--asyncapi` flag.
    pub async fn run(self) -> Result<()> {
        self.run_until(termination_signal()).await
    }

    /// [`FastStream::run`], unless `args` (the process's, `std::env::args()`, or your own
    /// parser's leftovers) hold `--asyncapi json` or `--asyncapi yaml`: then it prints
    /// [`FastStream::asyncapi`] in that format and returns without connecting. Other arguments
    /// are left to the application.
    pub async fn run_with_args(self, args: impl IntoIterator<Item = String>) -> Result<()> {
        let args: Vec<String> = args.into_iter().collect();
        if let Some(i) = args.iter().position(|a| a == "--asyncapi") {
            let doc = self.asyncapi();
            match args.get(i + 1).map(String::as_str) {
                None | Some("json") => println!("{}", doc.to_json()),
                Some("yaml") => print!("{}", doc.to_yaml()),
                Some(other) => {
                    return Err(Error::Usage(format!(
                        "--asyncapi takes `json` or `yaml`, not {other:?}"
                    )))
                }
            }
            return Ok(());
        }
        self.run().await
    }

    /// Runs until `signal` resolves, then stops gracefully: stop fetching, finish in-flight
    /// messages, flush producers, within the shutdown timeout.
    pub async fn run_until(self, signal: impl Future<Output = ()> + Send) -> Result<()> {
        let Self {
            transport,
            routes,
            state,
            shutdown_timeout,
            topic_prefix,
            ready,
            policy,
            compat_headers,
            info,
            hooks,
            middlewares,
            health,
            metrics,
            control,
            control_endpoint,
        } = self;
        let probes = Arc::new(crate::health::Health::default());
        let render = match metrics {
            #[cfg(feature = "prometheus")]
            true => Some(crate::health::prometheus().map_err(Error::Metrics)?),
            _ => None,
        };
        let _probes_task = match health {
            Some(addr) => Some(AbortOnDropHandle::new(
                crate::health::serve(addr, probes.clone(), render)
                    .await
                    .map_err(|source| Error::Endpoint { addr, source })?,
            )),
            None => None,
        };
        let publisher = if middlewares.is_empty() {
            Publisher::new(transport.clone())
        } else {
            Publisher::new(Arc::new(crate::middleware::PublishThrough {
                inner: transport.clone(),
                middlewares: middlewares.clone(),
            }))
        };
        let app_ctx = AppContext {
            state: Arc::new(std::sync::Mutex::new(state)),
            publisher: publisher.clone(),
            control: control.clone(),
        };
        run_hooks("on_startup", hooks.on_startup, &app_ctx).await?;
        let state = std::mem::take(&mut *app_ctx.state.lock().unwrap_or_else(|e| e.into_inner()));
        let routes = resolve_routes(routes, &state)?;
        for route in &routes {
            tracing::info!(
                handler = route.name(),
                subscribes = ?route.subscribers().iter().flat_map(|s| s.topics()).collect::<Vec<_>>(),
                patterns = ?route.subscribers().iter().filter_map(|s| s.topic_pattern()).collect::<Vec<_>>(),
                publishes = ?route.publishers(),
                "route"
            );
        }
        let state = Arc::new(state);
        // Hooks after startup read the same state handlers see.
        *app_ctx.state.lock().unwrap_or_else(|e| e.into_inner()) = (*state).clone();
        control.register_routes(&routes);
        // The running service's document, dynamic handlers' topics included.
        let (document_routes, prefix, server) =
            (routes.clone(), topic_prefix.clone(), transport.server());
        control.set_document(move |subscriptions| {
            crate::asyncapi::AsyncApi::build(
                &document_routes,
                &prefix,
                (&info.0, &info.1),
                server.clone(),
                subscriptions,
            )
        });
        let _control_task = match control_endpoint {
            Some(addr) => Some(AbortOnDropHandle::new(
                crate::control::serve(addr, control.clone())
                    .await
                    .map_err(|source| Error::Endpoint { addr, source })?,
            )),
            None => None,
        };
        let ctx = Context::new(state, publisher).with_control(control);
        let mut is_ready = Ready::from_sender(&ready);
        let pipeline = Arc::new(
            Pipeline::new(routes, ctx)
                .with_failure_policy(policy)
                .with_compat_headers(compat_headers)
                .with_topic_prefix(topic_prefix)
                .with_middlewares(middlewares)
                .with_ready(ready),
        );
        let (trigger, shutdown) = Shutdown::new();
        let serve = transport.serve(pipeline, shutdown);
        tokio::pin!(serve);
        tokio::pin!(signal);
        let mut after_startup = Some(hooks.after_startup);
        let mut failed = None;
        loop {
            tokio::select! {
                res = &mut serve => {
                    run_hooks("after_shutdown", hooks.after_shutdown, &app_ctx).await?;
                    return res;
                }
                () = &mut signal => break,
                true = is_ready.wait(), if after_startup.is_some() => {
                    probes.ready.store(true, std::sync::atomic::Ordering::SeqCst);
                    let hooks = after_startup.take().unwrap_or_default();
                    if let Err(e) = run_hooks("after_startup", hooks, &app_ctx).await {
                        failed = Some(e);
                        break;
                    }
                }
            }
        }
        probes
            .stopping
            .store(true, std::sync::atomic::Ordering::SeqCst);
        tracing::info!(timeout = ?shutdown_timeout, "shutting down");
        let deadline = tokio::time::Instant::now() + shutdown_timeout;
        let on_shutdown = run_hooks("on_shutdown", hooks.on_shutdown, &app_ctx).await;
        trigger.trigger_by(deadline);
        let stopped = match tokio::time::timeout_at(deadline, serve).await {
            Ok(res) => res,
            Err(_) => Err(Error::ShutdownTimeout(shutdown_timeout)),
        };
        let after = run_hooks("after_shutdown", hooks.after_shutdown, &app_ctx).await;
        match failed {
            Some(e) => Err(e),
            None => stopped.and(on_shutdown).and(after),
        }
    }
}
