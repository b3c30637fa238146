#![doc = include_str!("../README.md")]

pub use faststream_core::*;
pub use faststream_macros::{publisher, routes, subscriber};

/// The Kafka transport.
#[cfg(feature = "kafka")]
pub mod kafka {
    pub use faststream_kafka::*;
}
