//! The leader's partition assignment: Kafka's `range`, `roundrobin` and `cooperative-sticky`
//! assignors, and the standard consumer-protocol encoding of an assignment.

use std::collections::{BTreeMap, BTreeSet};

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
        // classic groups, and the coordinator picks only what members announce. Cooperative
        // groups assign with `assign_cooperative`, which knows what members own.
        Assignor::RoundRobin | Assignor::Uniform | Assignor::CooperativeSticky => {
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

/// A member of a cooperative group as the leader sees it: its topics, the partitions it
/// says it owns, and the generation it owned them in.
#[derive(Debug, Clone)]
pub(crate) struct Claim {
    pub(crate) member: String,
    pub(crate) topics: Vec<String>,
    pub(crate) owned: Vec<(String, i32)>,
    pub(crate) generation: i32,
}

/// Kafka's `cooperative-sticky` (KIP-429): every member keeps what it owns up to its fair
/// share, the rest goes to the members with the fewest. A partition that changes owner is
/// left out of this round (its owner sees it gone, releases it and rejoins; the next round
/// gives it to its new member), so no partition is ever held by two members. Balanced when
/// the members subscribe to the same topics; otherwise every partition still goes to a member
/// that subscribes to it. A partition two members claim goes to the later generation's.
pub(crate) fn assign_cooperative(
    members: &[Claim],
    partitions: &BTreeMap<String, i32>,
) -> Vec<(String, Vec<(String, i32)>)> {
    let mut sorted: Vec<&Claim> = members.iter().collect();
    sorted.sort_by(|a, b| a.member.cmp(&b.member));
    if sorted.is_empty() {
        return Vec::new();
    }
    let subscribed: BTreeSet<&str> = sorted
        .iter()
        .flat_map(|m| m.topics.iter().map(String::as_str))
        .collect();
    let all: Vec<(String, i32)> = partitions
        .iter()
        .filter(|(t, _)| subscribed.contains(t.as_str()))
        .flat_map(|(t, n)| (0..*n).map(move |p| (t.clone(), p)))
        .collect();
    // Who owned each partition, by the latest generation's claim.
    let mut previous: BTreeMap<(String, i32), (i32, &str)> = BTreeMap::new();
    for m in &sorted {
        for part @ (topic, p) in &m.owned {
            let exists = partitions.get(topic).is_some_and(|n| *p < *n);
            if !exists || !m.topics.contains(topic) {
                continue;
            }
            let claim = (m.generation, m.member.as_str());
            let entry = previous.entry(part.clone()).or_insert(claim);
            if m.generation > entry.0 {
                *entry = claim;
            }
        }
    }
    let mut held: BTreeMap<&str, Vec<(String, i32)>> = sorted
        .iter()
        .map(|m| (m.member.as_str(), Vec::new()))
        .collect();
    for (part, (_, member)) in &previous {
        held.get_mut(member).expect("a member").push(part.clone());
    }
    // Fair shares: `least` each, one more for `extra` of them (those that hold most keep it).
    let least = all.len() / sorted.len();
    let mut extra = all.len() % sorted.len();
    let mut order: Vec<&str> = held.keys().copied().collect();
    order.sort_by_key(|m| std::cmp::Reverse(held[m].len()));
    let mut free: Vec<(String, i32)> = all
        .iter()
        .filter(|p| !previous.contains_key(*p))
        .cloned()
        .collect();
    for m in order {
        let mine = held.get_mut(m).expect("a member");
        let share = if mine.len() > least && extra > 0 {
            extra -= 1;
            least + 1
        } else {
            least
        };
        while mine.len() > share {
            free.push(mine.pop().expect("more than the share"));
        }
    }
    // The free partitions go to subscribed members with the fewest.
    free.sort();
    for part in free {
        let taker = sorted
            .iter()
            .filter(|m| m.topics.contains(&part.0))
            .min_by_key(|m| (held[m.member.as_str()].len(), m.member.as_str()));
        if let Some(m) = taker {
            held.get_mut(m.member.as_str())
                .expect("a member")
                .push(part);
        }
    }
    // A partition that moves waits for the next round.
    held.into_iter()
        .map(|(m, parts)| {
            let parts: Vec<_> = parts
                .into_iter()
                .filter(|p| previous.get(p).is_none_or(|(_, owner)| *owner == m))
                .collect();
            (m.to_owned(), parts)
        })
        .collect()
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

    fn claim(member: &str, owned: &[i32], generation: i32) -> Claim {
        Claim {
            member: member.into(),
            topics: vec!["t".into()],
            owned: owned.iter().map(|p| ("t".to_owned(), *p)).collect(),
            generation,
        }
    }

    fn counts(out: &[(String, Vec<(String, i32)>)]) -> Vec<usize> {
        out.iter().map(|(_, p)| p.len()).collect()
    }

    #[test]
    fn cooperative_members_keep_what_they_own_and_moves_wait_a_round() {
        let t = parts(&[("t", 12)]);
        // A fresh group: everything is free, spread evenly.
        let first = assign_cooperative(&[claim("a", &[], -1), claim("b", &[], -1)], &t);
        assert_eq!(counts(&first), [6, 6]);
        let a: Vec<i32> = first[0].1.iter().map(|(_, p)| *p).collect();
        let b: Vec<i32> = first[1].1.iter().map(|(_, p)| *p).collect();
        // A third member joins: a and b keep 4 of their own each, give up 2 (held back this
        // round), and c gets nothing yet.
        let second = assign_cooperative(
            &[claim("a", &a, 1), claim("b", &b, 1), claim("c", &[], -1)],
            &t,
        );
        assert_eq!(counts(&second), [4, 4, 0]);
        assert!(second[0].1.iter().all(|(_, p)| a.contains(p)));
        assert!(second[1].1.iter().all(|(_, p)| b.contains(p)));
        // After a and b released them, the next round gives c the four freed partitions.
        let own = |i: usize| second[i].1.iter().map(|(_, p)| *p).collect::<Vec<_>>();
        let third = assign_cooperative(
            &[
                claim("a", &own(0), 2),
                claim("b", &own(1), 2),
                claim("c", &[], 2),
            ],
            &t,
        );
        assert_eq!(counts(&third), [4, 4, 4]);
        assert_eq!(third[0].1, second[0].1);
        assert_eq!(third[1].1, second[1].1);
    }

    #[test]
    fn cooperative_contested_partitions_go_to_the_latest_generation() {
        let t = parts(&[("t", 2)]);
        let out = assign_cooperative(&[claim("a", &[0, 1], 3), claim("b", &[1], 4)], &t);
        assert_eq!(out[0].1, [("t".into(), 0)]);
        assert_eq!(out[1].1, [("t".into(), 1)]);
    }

    #[test]
    fn cooperative_partitions_go_only_to_subscribers() {
        let mut u = claim("b", &[], -1);
        u.topics = vec!["u".into()];
        let out = assign_cooperative(&[claim("a", &[], -1), u], &parts(&[("t", 3), ("u", 1)]));
        assert_eq!(counts(&out), [3, 1]);
        assert!(out[1].1.iter().all(|(t, _)| t == "u"));
    }

    #[test]
    fn assignment_encoding_round_trips() {
        let bytes = encode_assignment(&[("t".into(), 1), ("t".into(), 0), ("u".into(), 2)]);
        let a: ConsumerProtocolAssignment = decode_versioned(bytes).unwrap();
        assert_eq!(a.assigned_partitions.len(), 2);
        assert_eq!(a.assigned_partitions[0].partitions, [1, 0]);
    }
}
