//! The seam between the pipeline and a broker: [`Transport`].

use std::sync::Arc;

use crate::pipeline::Pipeline;
use crate::publish::{BoxFuture, Publish};
use crate::shutdown::Shutdown;
use crate::Result;

/// A broker the app runs on: the Kafka transport, or your own.
pub trait Transport: Publish {
    /// Consumes every subscription of `pipeline`'s routes, runs each message through the
    /// pipeline and publishes its outputs, until `shutdown` fires; then stops fetching, finishes
    /// in-flight messages, flushes and returns.
    fn serve(&self, pipeline: Arc<Pipeline>, shutdown: Shutdown) -> BoxFuture<'_, Result<()>>;

    /// Where it connects, for the AsyncAPI document's `servers` (none: `localhost:9092`).
    fn server(&self) -> Option<crate::asyncapi::Server> {
        None
    }
}
