//! A tiny Kafka client on rskafka alone (not through faststream), for the demo and for poking at
//! a broker: `produce TOPIC MESSAGE...` and `consume TOPIC COUNT [TIMEOUT_SECS]` (from the start).

use std::time::Duration;

use rskafka::client::partition::{Compression, OffsetAt, UnknownTopicHandling};
use rskafka::client::ClientBuilder;
use rskafka::record::Record;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
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
            eprintln!("usage: kafka_cli produce TOPIC MESSAGE... | kafka_cli consume TOPIC COUNT [TIMEOUT_SECS]");
            std::process::exit(2);
        }
    }
    Ok(())
}
