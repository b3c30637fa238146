//! A tiny Kafka client on rskafka alone (not through faststream), for the demo and for poking at
//! a broker: `produce TOPIC MESSAGE...` and `consume TOPIC COUNT [TIMEOUT_SECS]` (from the start).
//!
//! And the control of running services (their `FastStream::control_endpoint`), asked of every
//! instance listed, since each applies it to the partitions it consumes:
//! `control ADDR[,ADDR...] pause|resume HANDLER`,
//! `control ADDR[,ADDR...] seek HANDLER beginning|end|offset:N|timestamp:MILLIS [TOPIC [PARTITION]]`,
//! `control ADDR[,ADDR...] subscribe|unsubscribe HANDLER TOPIC` (a `dynamic` handler),
//! `control ADDR[,ADDR...] list`, `control ADDR asyncapi` (the running service's document).
//!
//! And dead-letter redrive through `faststream::kafka::KafkaBroker::redrive`:
//! `redrive DLQ_TOPIC [key=K] [handler=H] [failed=FROM_MS-UNTIL_MS]`.

use std::time::Duration;

use rskafka::client::partition::{Compression, OffsetAt, UnknownTopicHandling};
use rskafka::client::ClientBuilder;
use rskafka::record::Record;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("control") {
        return control(&args[1..]).await;
    }
    if args.first().map(String::as_str) == Some("redrive") {
        return redrive(&args[1..]).await;
    }
    let bootstrap = std::env::var("KAFKA_BOOTSTRAP").unwrap_or_else(|_| "localhost:9092".into());
    let client = ClientBuilder::new(vec![bootstrap]).build().await?;
    match args.first().map(String::as_str) {
        Some("produce") if args.len() >= 3 => {
            let topic = &args[1];
            if !client.list_topics().await?.iter().any(|t| &t.name == topic) {
                client
                    .controller_client()?
                    .create_topic(topic, 1, 1, 5_000)
                    .await?;
            }
            let pc = client
                .partition_client(topic, 0, UnknownTopicHandling::Retry)
                .await?;
            let records = args[2..]
                .iter()
                .map(|m| Record {
                    key: None,
                    value: Some(m.clone().into_bytes()),
                    headers: [("content-type".to_owned(), b"application/json".to_vec())].into(),
                    timestamp: chrono::Utc::now(),
                })
                .collect();
            let offsets = pc.produce(records, Compression::NoCompression).await?;
            println!(
                "produced {} message(s) to {topic} at offsets {offsets:?}",
                offsets.len()
            );
        }
        Some("consume") if args.len() >= 3 => {
            let topic = &args[1];
            let want: usize = args[2].parse()?;
            let timeout = Duration::from_secs(args.get(3).map_or(Ok(30), |s| s.parse())?);
            let deadline = tokio::time::Instant::now() + timeout;
            let topics = client.list_topics().await?;
            let partitions = topics
                .iter()
                .find(|t| &t.name == topic)
                .map_or(1, |t| t.partitions.len() as i32);
            let mut seen = 0;
            for p in 0..partitions {
                let pc = client
                    .partition_client(topic, p, UnknownTopicHandling::Retry)
                    .await?;
                let mut offset = pc.get_offset(OffsetAt::Earliest).await?;
                while seen < want && tokio::time::Instant::now() < deadline {
                    let (records, _) = pc.fetch_records(offset, 1..1_000_000, 200).await?;
                    if records.is_empty() && p + 1 < partitions {
                        break;
                    }
                    let from = offset;
                    for r in records.into_iter().filter(|r| r.offset >= from) {
                        offset = r.offset + 1;
                        seen += 1;
                        let value = r.record.value.unwrap_or_default();
                        println!(
                            "{topic}[{p}]@{}: {}",
                            r.offset,
                            String::from_utf8_lossy(&value)
                        );
                    }
                }
            }
            if seen < want {
                return Err(format!(
                    "read {seen} of {want} message(s) from {topic} within {timeout:?}"
                )
                .into());
            }
        }
        _ => {
            eprintln!("usage: kafka_cli produce TOPIC MESSAGE... | kafka_cli consume TOPIC COUNT [TIMEOUT_SECS] | kafka_cli control ADDR[,ADDR...] pause|resume|seek|subscribe|unsubscribe|list|asyncapi ... | kafka_cli redrive DLQ_TOPIC [key=K] [handler=H] [failed=FROM-UNTIL]");
            std::process::exit(2);
        }
    }
    Ok(())
}

/// `control ADDRS COMMAND ...`: one HTTP request to each service instance's control endpoint.
async fn control(args: &[String]) -> Result<(), Box<dyn std::error::Error>> {
    let usage = "usage: kafka_cli control ADDR[,ADDR...] pause|resume HANDLER | seek HANDLER TO [TOPIC [PARTITION]] | subscribe|unsubscribe HANDLER TOPIC | list | asyncapi";
    let (Some(addrs), Some(command)) = (args.first(), args.get(1)) else {
        return Err(usage.into());
    };
    let (method, target) = match (command.as_str(), &args[2..]) {
        ("list", []) => ("GET", "/subscribers".to_owned()),
        ("asyncapi", []) => ("GET", "/asyncapi".to_owned()),
        ("subscribe" | "unsubscribe", [handler, topic]) => (
            "POST",
            format!("/subscribers/{handler}/{command}?topic={topic}"),
        ),
        ("pause" | "resume", [handler]) => ("POST", format!("/subscribers/{handler}/{command}")),
        ("seek", [handler, to, rest @ ..]) if rest.len() <= 2 => {
            let mut target = format!("/subscribers/{handler}/seek?to={to}");
            if let Some(topic) = rest.first() {
                target.push_str(&format!("&topic={topic}"));
            }
            if let Some(partition) = rest.get(1) {
                target.push_str(&format!("&partition={partition}"));
            }
            ("POST", target)
        }
        _ => return Err(usage.into()),
    };
    let mut failed = false;
    for addr in addrs.split(',') {
        match request(addr, method, &target).await {
            Ok((200, body)) => println!("{addr}: {body}"),
            Ok((status, body)) => {
                failed = true;
                eprintln!("{addr}: {status} {body}");
            }
            Err(e) => {
                failed = true;
                eprintln!("{addr}: {e}");
            }
        }
    }
    if failed {
        return Err("not every instance did it".into());
    }
    Ok(())
}

/// One HTTP/1.1 request; the status and body of the answer.
async fn request(addr: &str, method: &str, target: &str) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn =
        tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
            .await??;
    let head = format!("{method} {target} HTTP/1.1\r\nhost: {addr}\r\ncontent-length: 0\r\n\r\n");
    conn.write_all(head.as_bytes()).await?;
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(5), conn.read_to_string(&mut answer)).await??;
    let status = answer
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP answer: {answer:?}")))?;
    let body = answer
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    Ok((status, body))
}

/// `redrive DLQ_TOPIC [key=K] [handler=H] [failed=FROM-UNTIL]`: the selected dead letters back
/// to their topics; run it again after a crash and it goes on where it stopped.
async fn redrive(args: &[String]) -> Result<(), Box<dyn std::error::Error>> {
    use faststream::kafka::{KafkaBroker, Redrive};
    let Some(dlq) = args.first() else {
        return Err(
            "usage: kafka_cli redrive DLQ_TOPIC [key=K] [handler=H] [failed=FROM-UNTIL]".into(),
        );
    };
    let mut selection = Redrive::all();
    for arg in &args[1..] {
        selection = match arg.split_once('=') {
            Some(("key", k)) => selection.key(k.as_bytes().to_vec()),
            Some(("handler", h)) => selection.handler(h),
            Some(("failed", range)) => {
                let (from, until) = range.split_once('-').ok_or("failed=FROM_MS-UNTIL_MS")?;
                selection.failed_between(from.parse()?, until.parse()?)
            }
            _ => return Err(format!("unknown selection {arg:?}: key=, handler=, failed=").into()),
        };
    }
    let report = KafkaBroker::from_env()?.redrive(dlq, &selection).await?;
    println!(
        "redrive of {dlq}: {} moved, {} not selected, {} not movable",
        report.moved, report.not_selected, report.not_movable
    );
    Ok(())
}
