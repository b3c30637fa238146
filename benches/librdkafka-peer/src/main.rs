//! The seed relay written directly on librdkafka: a consumer group member reading
//! `<prefix>in_topic` from the earliest offset, decoding each JSON message, and producing
//! `"User: {user_id} - {user} registered"` to `<prefix>out-topic`.
//!
//! It speaks the relay benchmark's child protocol (`benches/relay.rs`), so the benchmark runs it
//! as the `librdkafka` row with `--peer PATH`: started as
//! `--child framework-group --prefix P --messages N --partitions P` with `KAFKA_BOOTSTRAP` set,
//! it prints `assigned <CPU seconds>` once the group gave it partitions, and when the parent
//! stops it (SIGTERM) `<seconds> <CPU seconds> <peak RSS KiB>`.
//!
//! Settings are librdkafka's defaults except where the framework's differ and the comparison
//! would otherwise be unequal: the idempotent producer (on in the framework), offsets committed
//! every second (the framework's `commit_interval`), and `linger.ms` 5 (both defaults agree).
//! Outputs carry the framework's two headers (`content-type`, a 36-character
//! `correlation_id`), so both relays write the same bytes.
//! Offsets are committed by librdkafka's timer for what was consumed, whether or not the outputs
//! were acknowledged yet: the usual way to write such a relay, and less work than the
//! framework's, which commits an input only once its output is acknowledged.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, ProducerContext, ThreadedProducer};
use rdkafka::{ClientConfig, ClientContext};
use serde::Deserialize;

#[derive(Deserialize)]
struct Seed {
    user: String,
    user_id: i64,
}

/// Prints `assigned <CPU seconds>` at the first assignment that gives partitions.
struct Member {
    assigned: AtomicBool,
}

impl ClientContext for Member {}

impl ConsumerContext for Member {
    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(list) = rebalance {
            if list.count() > 0 && !self.assigned.swap(true, Ordering::SeqCst) {
                println!("assigned {}", cpu_seconds());
            }
        }
    }
}

/// Counts outputs the broker did not take.
struct Deliveries {
    failed: AtomicU64,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            if self.failed.fetch_add(1, Ordering::Relaxed) == 0 {
                eprintln!("an output was not delivered: {e}");
            }
        }
    }
}

struct Args {
    prefix: String,
}

fn parse_args() -> Args {
    let mut prefix = None;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        if a == "--prefix" {
            prefix = it.next();
        }
    }
    Args {
        prefix: prefix.expect("--prefix P"),
    }
}

fn relay(args: &Args, bootstrap: &str) {
    let consumer: BaseConsumer<Member> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("{}relay", args.prefix))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .create_with_context(Member {
            assigned: AtomicBool::new(false),
        })
        .expect("consumer");
    let producer: ThreadedProducer<Deliveries> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create_with_context(Deliveries {
            failed: AtomicU64::new(0),
        })
        .expect("producer");
    let input = format!("{}in_topic", args.prefix);
    let output = format!("{}out-topic", args.prefix);
    consumer.subscribe(&[&input]).expect("subscribe");
    loop {
        let Some(msg) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let msg = msg.expect("consume");
        let Some(payload) = msg.payload() else {
            continue;
        };
        let seed: Seed = match serde_json::from_slice(payload) {
            Ok(seed) => seed,
            Err(e) => {
                eprintln!(
                    "partition {} offset {}: not a seed message: {e}",
                    msg.partition(),
                    msg.offset()
                );
                continue;
            }
        };
        let out = format!("User: {} - {} registered", seed.user_id, seed.user);
        // The framework's two headers: its content type, and a correlation id in its format
        // (a UUID's 36 characters), so both relays write the same bytes.
        let correlation = format!(
            "{:08x}-0000-4000-8000-{:012x}",
            msg.partition(),
            msg.offset()
        );
        let headers = OwnedHeaders::new_with_capacity(2)
            .insert(Header {
                key: "content-type",
                value: Some("text/plain"),
            })
            .insert(Header {
                key: "correlation_id",
                value: Some(correlation.as_str()),
            });
        let mut record = BaseRecord::<(), str>::to(&output)
            .payload(out.as_str())
            .headers(headers);
        // A full queue waits for the producer's thread to send some (backpressure).
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err((e, _)) => panic!("produce: {e}"),
            }
        }
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = Arc::new(parse_args());
    let bootstrap = std::env::var("KAFKA_BOOTSTRAP").expect("KAFKA_BOOTSTRAP");
    let cpu0 = cpu_seconds();
    let started = Instant::now();
    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).unwrap();
    std::thread::spawn({
        let args = args.clone();
        move || relay(&args, &bootstrap)
    });
    term.recv().await;
    println!(
        "{} {} {}",
        started.elapsed().as_secs_f64(),
        cpu_seconds() - cpu0,
        peak_rss_kib()
    );
    std::process::exit(0);
}

/// This process's CPU time (user + system), from `/proc/self/stat`.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after its closing ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    (ticks(11) + ticks(12)) / 100.0
}

/// Peak resident set size (`VmHWM`), in KiB.
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}
