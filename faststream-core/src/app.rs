//! The app: collects and validates routes, runs a transport until SIGINT/SIGTERM, stops gracefully.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::extract::{Context, StateMap};
use crate::handler::{Pipeline, Ready};
use crate::policy::FailurePolicy;
use crate::route::{resolve_routes, RouteDef};
use crate::transport::{Publisher, Shutdown, Transport};
use crate::{Error, Result};

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
        }
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
    /// them off roughly halves the transport's CPU per message (see the README's performance
    /// section); an incoming `correlation_id` is still passed on.
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

    /// Runs until SIGINT (Ctrl-C) or SIGTERM, then stops gracefully.
    pub async fn run(self) -> Result<()> {
        self.run_until(termination_signal()).await
    }

    /// Runs until `signal` resolves, then stops gracefully: stop fetching, finish in-flight
    /// messages, flush producers, within the shutdown timeout.
    pub async fn run_until(self, signal: impl Future<Output = ()> + Send) -> Result<()> {
        let routes = self.routes()?;
        for route in &routes {
            tracing::info!(
                handler = route.name(),
                subscribes = ?route.subscribers().iter().flat_map(|s| s.topics()).collect::<Vec<_>>(),
                publishes = ?route.publishers(),
                "route"
            );
        }
        let publisher = Publisher::new(self.transport.clone());
        let ctx = Context::new(Arc::new(self.state), publisher);
        let pipeline = Arc::new(
            Pipeline::new(routes, ctx)
                .with_failure_policy(self.policy)
                .with_compat_headers(self.compat_headers)
                .with_topic_prefix(self.topic_prefix)
                .with_ready(self.ready),
        );
        let (trigger, shutdown) = Shutdown::new();
        let transport = self.transport.clone();
        let serve = transport.serve(pipeline, shutdown);
        tokio::pin!(serve);
        tokio::select! {
            res = &mut serve => return res,
            () = signal => {}
        }
        tracing::info!(timeout = ?self.shutdown_timeout, "shutting down");
        trigger.trigger_by(tokio::time::Instant::now() + self.shutdown_timeout);
        match tokio::time::timeout(self.shutdown_timeout, serve).await {
            Ok(res) => res,
            Err(_) => Err(Error::ShutdownTimeout(self.shutdown_timeout)),
        }
    }
}

/// Resolves on SIGINT or (on Unix) SIGTERM.
pub async fn termination_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
