//! The leader's partition assignment: Kafka's `range` and `roundrobin` assignors, and the
//! standard consumer-protocol encoding of an assignment.

use std::collections::BTreeMap;

use faststream_core::Assignor;
use kafka_protocol::messages::consumer_protocol_assignment::TopicPartition as AssignedPartitions;
use kafka_protocol::messages::{ConsumerProtocolAssignment, TopicName};
use kafka_protocol::protocol::StrBytes;

use crate::protocol::encode_versioned;

pub(crate) fn encode_assignment(parts: &[(String, i32)]) -> bytes::Bytes {
    let mut by_topic: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for (t, p) in parts {
        by_topic.entry(t).or_default().push(*p);
    }
    let mut a = ConsumerProtocolAssignment::default();
    a.assigned_partitions = by_topic
        .into_iter()
        .map(|(t, ps)| {
            let mut tp = AssignedPartitions::default();
            tp.topic = TopicName(StrBytes::from_string(t.to_owned()));
            tp.partitions = ps;
            tp
        })
        .collect();
    encode_versioned(&a, 0)
}

/// Spreads the partitions of each member's subscribed topics over the members, as Kafka's
/// `range` and `roundrobin` assignors do. Every member appears in the result, possibly empty.
pub(crate) fn assign(
    assignor: Assignor,
    members: &[(String, Vec<String>)],
    partitions: &BTreeMap<String, i32>,
) -> Vec<(String, Vec<(String, i32)>)> {
    let mut sorted: Vec<&(String, Vec<String>)> = members.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out: BTreeMap<&str, Vec<(String, i32)>> = sorted
        .iter()
        .map(|(m, _)| (m.as_str(), Vec::new()))
        .collect();
    match assignor {
        Assignor::Range => {
            for (topic, n) in partitions {
                let subs: Vec<&str> = sorted
                    .iter()
                    .filter(|(_, ts)| ts.contains(topic))
                    .map(|(m, _)| m.as_str())
                    .collect();
                if subs.is_empty() {
                    continue;
                }
                let per = *n as usize / subs.len();
                let extra = *n as usize % subs.len();
                let mut next = 0;
                for (i, m) in subs.iter().enumerate() {
                    let count = per + usize::from(i < extra);
                    for p in next..next + count {
                        out.get_mut(m).unwrap().push((topic.clone(), p as i32));
                    }
                    next += count;
                }
            }
        }
        // `uniform` is the consumer protocol's (the broker assigns); startup refuses it for
        // classic groups, and the coordinator picks only what members announce.
        Assignor::RoundRobin | Assignor::Uniform => {
            let mut i = 0;
            for (topic, n) in partitions {
                for p in 0..*n {
                    // The next member (in turn) subscribed to this topic.
                    for _ in 0..sorted.len() {
                        let (m, ts) = sorted[i % sorted.len()];
                        i += 1;
                        if ts.contains(topic) {
                            out.get_mut(m.as_str()).unwrap().push((topic.clone(), p));
                            break;
                        }
                    }
                }
            }
        }
    }
    out.into_iter().map(|(m, ps)| (m.to_owned(), ps)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::decode_versioned;

    fn members(list: &[(&str, &[&str])]) -> Vec<(String, Vec<String>)> {
        list.iter()
            .map(|(m, ts)| (m.to_string(), ts.iter().map(|t| t.to_string()).collect()))
            .collect()
    }

    fn parts(list: &[(&str, i32)]) -> BTreeMap<String, i32> {
        list.iter().map(|(t, n)| (t.to_string(), *n)).collect()
    }

    #[test]
    fn range_gives_consecutive_ranges_per_topic() {
        let out = assign(
            Assignor::Range,
            &members(&[("b", &["t"]), ("a", &["t"])]),
            &parts(&[("t", 5)]),
        );
        assert_eq!(out[0].0, "a");
        assert_eq!(
            out[0].1,
            [("t".into(), 0), ("t".into(), 1), ("t".into(), 2)]
        );
        assert_eq!(out[1].1, [("t".into(), 3), ("t".into(), 4)]);
    }

    #[test]
    fn round_robin_deals_partitions_in_turn() {
        let out = assign(
            Assignor::RoundRobin,
            &members(&[("a", &["t", "u"]), ("b", &["t", "u"])]),
            &parts(&[("t", 3), ("u", 1)]),
        );
        assert_eq!(out[0].1, [("t".into(), 0), ("t".into(), 2)]);
        assert_eq!(out[1].1, [("t".into(), 1), ("u".into(), 0)]);
    }

    #[test]
    fn members_only_get_topics_they_subscribe_to() {
        for assignor in [Assignor::Range, Assignor::RoundRobin] {
            let out = assign(
                assignor,
                &members(&[("a", &["t"]), ("b", &["u"]), ("c", &[])]),
                &parts(&[("t", 2), ("u", 2)]),
            );
            assert!(out[0].1.iter().all(|(t, _)| t == "t"));
            assert!(out[1].1.iter().all(|(t, _)| t == "u"));
            assert!(out[2].1.is_empty(), "{assignor:?}");
            let total: usize = out.iter().map(|(_, p)| p.len()).sum();
            assert_eq!(total, 4);
        }
    }

    #[test]
    fn assignment_encoding_round_trips() {
        let bytes = encode_assignment(&[("t".into(), 1), ("t".into(), 0), ("u".into(), 2)]);
        let a: ConsumerProtocolAssignment = decode_versioned(bytes).unwrap();
        assert_eq!(a.assigned_partitions.len(), 2);
        assert_eq!(a.assigned_partitions[0].partitions, [1, 0]);
    }
}
