//! Kafka transport (in progress).
