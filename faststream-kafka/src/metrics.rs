//! Metrics through the [`metrics`](https://docs.rs/metrics) facade (feature `metrics`): what
//! the consumers, groups and producers do, recorded by whatever recorder the application
//! installed (`FastStream::prometheus` installs a Prometheus one). Without the feature every
//! method here is empty and compiles away.
//!
//! Handles are registered once per partition consumer and producer, so the per-message cost
//! is an atomic add (or nothing, when no recorder is installed).
//!
//! | name | type | labels |
//! |---|---|---|
//! | `faststream_received_messages_total` | counter | `topic`, `partition`, `handler` |
//! | `faststream_received_messages_size_bytes` | histogram | `topic`, `handler` |
//! | `faststream_processed_messages_total` | counter | `topic`, `handler`, `outcome` |
//! | `faststream_processed_messages_errors_total` | counter | `topic`, `handler`, `kind` |
//! | `faststream_processed_messages_duration_seconds` | histogram | `topic`, `handler` |
//! | `faststream_in_flight_messages` | gauge | `topic`, `partition`, `handler` |
//! | `faststream_consumer_lag_messages` | gauge | `topic`, `partition`, `handler` |
//! | `faststream_committed_offset` | gauge | `group`, `topic`, `partition` |
//! | `faststream_assigned_partitions` | gauge | `group` |
//! | `faststream_published_messages_total` | counter | `topic` |
//! | `faststream_published_messages_errors_total` | counter | `topic` |
//! | `faststream_producer_queued_bytes` | gauge | `topic`, `partition` |
//! | `faststream_rebalances_total` | counter | `group`, `cause` |
//! | `faststream_rebalance_pause_seconds` | histogram | `group` |
//! | `faststream_transactions_total` | counter | `group`, `outcome` (`committed`, `aborted`) |
//! | `faststream_connections` | gauge | `broker` |
//! | `faststream_requests_in_flight` | gauge | `broker` |
//! | `faststream_fetch_session_partitions` | gauge | `broker` |

#[cfg(feature = "metrics")]
pub(crate) use on::*;

#[cfg(not(feature = "metrics"))]
pub(crate) use off::*;

#[cfg(feature = "metrics")]
mod on {
    use std::sync::Mutex;
    use std::time::Duration;

    use faststream_core::Outcome;
    use metrics::{counter, gauge, histogram, Counter, Gauge, Histogram};

    /// One partition consumer's handles.
    #[derive(Debug)]
    pub(crate) struct PartitionMetrics {
        handler: &'static str,
        topic: String,
        received: Counter,
        size: Histogram,
        duration: Histogram,
        in_flight: Gauge,
        lag: Gauge,
        /// The common outcome, without the lookup below.
        ok: Counter,
        /// Per other outcome name and per error kind, registered on first use.
        outcomes: Mutex<Vec<(&'static str, Counter)>>,
        errors: Mutex<Vec<(&'static str, Counter)>>,
    }

    impl PartitionMetrics {
        pub(crate) fn new(handler: &'static str, topic: &str, partition: i32) -> Self {
            let (t, p) = (topic.to_owned(), partition.to_string());
            Self {
                handler,
                topic: t.clone(),
                received: counter!("faststream_received_messages_total", "topic" => t.clone(), "partition" => p.clone(), "handler" => handler),
                size: histogram!("faststream_received_messages_size_bytes", "topic" => t.clone(), "handler" => handler),
                duration: histogram!("faststream_processed_messages_duration_seconds", "topic" => t.clone(), "handler" => handler),
                in_flight: gauge!("faststream_in_flight_messages", "topic" => t.clone(), "partition" => p.clone(), "handler" => handler),
                lag: gauge!("faststream_consumer_lag_messages", "topic" => t.clone(), "partition" => p, "handler" => handler),
                ok: counter!("faststream_processed_messages_total", "topic" => t, "handler" => handler, "outcome" => "ok"),
                outcomes: Mutex::new(Vec::new()),
                errors: Mutex::new(Vec::new()),
            }
        }

        /// A message arrived with `bytes` of payload.
        pub(crate) fn received(&self, bytes: usize) {
            self.received.increment(1);
            self.size.record(bytes as f64);
        }

        /// How long one handling (one message, or one batch) took.
        pub(crate) fn duration(&self, took: Duration) {
            self.duration.record(took.as_secs_f64());
        }

        /// One handling that began at `started` ended now.
        pub(crate) fn since(&self, started: tokio::time::Instant) {
            self.duration(started.elapsed());
        }

        /// `n` messages ended with `outcome`.
        pub(crate) fn outcome(&self, outcome: &Outcome, n: u64) {
            if let Outcome::Done(_) = outcome {
                self.ok.increment(n);
                return;
            }
            let name = outcome.name();
            self.labelled(&self.outcomes, "outcome", name).increment(n);
            if let Some(error) = outcome.error() {
                self.labelled(&self.errors, "kind", error.kind())
                    .increment(n);
            }
        }

        fn labelled(
            &self,
            cache: &Mutex<Vec<(&'static str, Counter)>>,
            label: &'static str,
            value: &'static str,
        ) -> Counter {
            let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((_, c)) = cache.iter().find(|(v, _)| *v == value) {
                return c.clone();
            }
            let name = match label {
                "outcome" => "faststream_processed_messages_total",
                _ => "faststream_processed_messages_errors_total",
            };
            let c = counter!(name, "topic" => self.topic.clone(), "handler" => self.handler, label => value);
            cache.push((value, c.clone()));
            c
        }

        /// Messages handed to the handler whose outputs are not yet acknowledged.
        pub(crate) fn in_flight(&self, n: usize) {
            self.in_flight.set(n as f64);
        }

        /// The lag gauge, for the fetch task.
        pub(crate) fn lag(&self) -> Lag {
            Lag(self.lag.clone())
        }
    }

    /// Messages between the consumer's position and the partition's end.
    #[derive(Debug, Clone)]
    pub(crate) struct Lag(Gauge);

    impl Lag {
        pub(crate) fn set(&self, lag: i64) {
            self.0.set(lag.max(0) as f64);
        }
    }

    /// A group committed `offset` for a partition.
    pub(crate) fn committed(group: &str, topic: &str, partition: i32, offset: i64) {
        gauge!("faststream_committed_offset", "group" => group.to_owned(), "topic" => topic.to_owned(), "partition" => partition.to_string())
            .set(offset as f64);
    }

    /// A group member holds `n` partitions.
    pub(crate) fn assigned(group: &str, n: usize) {
        gauge!("faststream_assigned_partitions", "group" => group.to_owned()).set(n as f64);
    }

    /// A member's assignment changed (group protocol `protocol`) for `cause`.
    pub(crate) fn rebalance(group: &str, protocol: &'static str, cause: &'static str) {
        let labels = [
            ("group", group.to_owned()),
            ("protocol", protocol.to_owned()),
            ("cause", cause.to_owned()),
        ];
        counter!("faststream_rebalances_total", &labels).increment(1);
    }

    /// An exactly-once group's transaction ended: `committed` or `aborted`.
    pub(crate) fn transaction(group: &str, outcome: &'static str) {
        let labels = [("group", group.to_owned()), ("outcome", outcome.to_owned())];
        counter!("faststream_transactions_total", &labels).increment(1);
    }

    /// How long partitions were stopped by a rebalance: all of the member's (classic), or
    /// the revoked ones until released (consumer protocol).
    pub(crate) fn rebalance_pause(group: &str, protocol: &'static str, pause: Duration) {
        histogram!("faststream_rebalance_pause_seconds", "group" => group.to_owned(), "protocol" => protocol)
            .record(pause.as_secs_f64());
    }

    /// Counts one open connection to a broker while it lives, and its request while one
    /// waits for its answer.
    #[derive(Debug)]
    pub(crate) struct OpenConnection {
        open: Gauge,
        in_flight: Gauge,
    }

    impl OpenConnection {
        pub(crate) fn new(broker: &str) -> Self {
            let open = gauge!("faststream_connections", "broker" => broker.to_owned());
            open.increment(1.0);
            let in_flight = gauge!("faststream_requests_in_flight", "broker" => broker.to_owned());
            Self { open, in_flight }
        }

        /// Counts a request until the guard is dropped (answered, failed or abandoned).
        pub(crate) fn request(&self) -> InFlight {
            self.in_flight.increment(1.0);
            InFlight(self.in_flight.clone())
        }
    }

    impl Drop for OpenConnection {
        fn drop(&mut self) {
            self.open.decrement(1.0);
        }
    }

    /// One request waiting for its answer.
    pub(crate) struct InFlight(Gauge);

    /// The partitions a broker holds in the link's fetch session (0: no session).
    #[derive(Debug)]
    pub(crate) struct FetchSessionMetrics(Gauge);

    impl FetchSessionMetrics {
        pub(crate) fn new(broker: &str) -> Self {
            Self(gauge!("faststream_fetch_session_partitions", "broker" => broker.to_owned()))
        }

        pub(crate) fn partitions(&self, n: usize) {
            self.0.set(n as f64);
        }
    }

    impl Drop for FetchSessionMetrics {
        fn drop(&mut self) {
            self.0.set(0.0);
        }
    }

    impl Drop for InFlight {
        fn drop(&mut self) {
            self.0.decrement(1.0);
        }
    }

    /// One partition producer's handles.
    #[derive(Debug)]
    pub(crate) struct ProducerMetrics {
        published: Counter,
        failed: Counter,
        queued: Gauge,
    }

    impl ProducerMetrics {
        pub(crate) fn new(topic: &str, partition: i32) -> Self {
            Self {
                published: counter!("faststream_published_messages_total", "topic" => topic.to_owned()),
                failed: counter!("faststream_published_messages_errors_total", "topic" => topic.to_owned()),
                queued: gauge!("faststream_producer_queued_bytes", "topic" => topic.to_owned(), "partition" => partition.to_string()),
            }
        }

        pub(crate) fn published(&self, n: usize) {
            self.published.increment(n as u64);
        }

        pub(crate) fn failed(&self, n: usize) {
            self.failed.increment(n as u64);
        }

        pub(crate) fn queued(&self, bytes: usize) {
            self.queued.set(bytes as f64);
        }
    }
}

#[cfg(not(feature = "metrics"))]
mod off {
    use std::time::Duration;

    use faststream_core::Outcome;

    #[derive(Debug)]
    pub(crate) struct PartitionMetrics;

    impl PartitionMetrics {
        #[inline]
        pub(crate) fn new(_: &'static str, _: &str, _: i32) -> Self {
            Self
        }
        #[inline]
        pub(crate) fn received(&self, _: usize) {}
        #[inline]
        pub(crate) fn duration(&self, _: Duration) {}
        #[inline]
        pub(crate) fn since(&self, _: tokio::time::Instant) {}
        #[inline]
        pub(crate) fn outcome(&self, _: &Outcome, _: u64) {}
        #[inline]
        pub(crate) fn in_flight(&self, _: usize) {}
        #[inline]
        pub(crate) fn lag(&self) -> Lag {
            Lag
        }
    }

    #[derive(Debug, Clone)]
    pub(crate) struct Lag;

    impl Lag {
        #[inline]
        pub(crate) fn set(&self, _: i64) {}
    }

    #[inline]
    pub(crate) fn committed(_: &str, _: &str, _: i32, _: i64) {}

    #[inline]
    pub(crate) fn assigned(_: &str, _: usize) {}

    #[inline]
    pub(crate) fn rebalance(_: &str, _: &'static str, _: &'static str) {}

    #[inline]
    pub(crate) fn transaction(_: &str, _: &'static str) {}

    #[inline]
    pub(crate) fn rebalance_pause(_: &str, _: &'static str, _: Duration) {}

    #[derive(Debug)]
    pub(crate) struct OpenConnection;

    impl OpenConnection {
        #[inline]
        pub(crate) fn new(_: &str) -> Self {
            Self
        }

        #[inline]
        pub(crate) fn request(&self) -> InFlight {
            InFlight
        }
    }

    pub(crate) struct InFlight;

    #[derive(Debug)]
    pub(crate) struct FetchSessionMetrics;

    impl FetchSessionMetrics {
        #[inline]
        pub(crate) fn new(_: &str) -> Self {
            Self
        }
        #[inline]
        pub(crate) fn partitions(&self, _: usize) {}
    }

    #[derive(Debug)]
    pub(crate) struct ProducerMetrics;

    impl ProducerMetrics {
        #[inline]
        pub(crate) fn new(_: &str, _: i32) -> Self {
            Self
        }
        #[inline]
        pub(crate) fn published(&self, _: usize) {}
        #[inline]
        pub(crate) fn failed(&self, _: usize) {}
        #[inline]
        pub(crate) fn queued(&self, _: usize) {}
    }
}
