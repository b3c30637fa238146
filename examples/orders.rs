//! A fuller service: a struct body, key and headers extractors, shared state, two publishers,
//! a consumer group and a dead-letter topic.
//!
//! ```sh
//! scripts/kafka-dev run -- cargo run --example orders
//! # in another shell, with the address it printed:
//! KAFKA_BOOTSTRAP=127.0.0.1:PORT cargo run --example kafka_cli -- produce orders '{"id": 1, "customer": "ann", "items": [{"sku": "pen", "cents": 150, "qty": 2}]}'
//! KAFKA_BOOTSTRAP=127.0.0.1:PORT cargo run --example kafka_cli -- consume invoices 1
//! # its AsyncAPI document, without connecting:
//! cargo run --example orders -- --asyncapi yaml
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use faststream::extract::{Headers, Key, State};
use faststream::kafka::KafkaBroker;
use faststream::{publisher, subscriber, FastStream, Response};
use serde::{Deserialize, Serialize};

/// A well-kept allocator: a service like this one allocates many small, short-lived
/// buffers (see the guide's performance page, docs/guide/performance.md); the library sets no allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Deserialize)]
struct Order {
    id: u64,
    customer: String,
    items: Vec<Item>,
}

#[derive(Debug, Deserialize)]
struct Item {
    sku: String,
    cents: u64,
    qty: u32,
}

#[derive(Debug, Serialize)]
struct Invoice {
    order_id: u64,
    customer: String,
    total_cents: u64,
    lines: usize,
    invoice_no: u64,
    source: String,
}

/// Shared by every handler invocation: an invoice counter and the tax rate.
#[derive(Clone)]
struct Billing {
    next_invoice: Arc<AtomicU64>,
    tax_percent: u64,
}

/// Bills an order and publishes the invoice to `invoices` (for the customer) and
/// `audit-log` (for bookkeeping), keyed by customer so one customer's invoices stay in order.
#[subscriber(
    "orders",
    group_id = "billing",
    auto_offset_reset = "earliest",
    dlq = "orders.dlq"
)]
#[publisher("invoices")]
#[publisher("audit-log")]
async fn bill(
    order: Order,
    key: Key,
    headers: Headers,
    billing: State<Billing>,
) -> Response<Invoice> {
    let net: u64 = order.items.iter().map(|i| i.cents * u64::from(i.qty)).sum();
    let total_cents = net + net * billing.tax_percent / 100;
    let invoice = Invoice {
        order_id: order.id,
        customer: order.customer.clone(),
        total_cents,
        lines: order.items.len(),
        invoice_no: billing.next_invoice.fetch_add(1, Ordering::Relaxed),
        source: headers.get_str("x-source").unwrap_or("unknown").to_owned(),
    };
    tracing::info!(order = order.id, key = ?key.as_str(), skus = ?order.items.iter().map(|i| &i.sku).collect::<Vec<_>>(), "billed");
    Response::new(invoice).key(order.customer)
}

#[tokio::main]
async fn main() -> faststream::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,rskafka=warn".into()),
        )
        .init();
    // Namespaces the topics and group (the tests run it that way).
    let prefix = std::env::var("TOPIC_PREFIX").unwrap_or_default();
    FastStream::new(KafkaBroker::from_env()?)
        .topic_prefix(prefix)
        .asyncapi_info("orders", "1.0.0")
        // State built before anything is consumed (where a database pool would be opened).
        .on_startup(|ctx| async move {
            let tax_percent = match std::env::var("TAX_PERCENT") {
                Ok(v) => v.parse().map_err(|e| format!("TAX_PERCENT={v:?}: {e}"))?,
                Err(_) => 20,
            };
            ctx.provide(Billing {
                next_invoice: Arc::new(AtomicU64::new(1000)),
                tax_percent,
            });
            Ok::<_, String>(())
        })
        .after_shutdown(|_| async {
            tracing::info!("billing closed");
            Ok::<_, String>(())
        })
        .run_with_args(std::env::args())
        .await
}
