//! The fetch session a link keeps with its broker (KIP-227): after one full Fetch request the
//! broker remembers the partitions asked and their positions, so each later request lists only
//! what changed (a partition added, moved on, or asked with another size or leader epoch) and
//! what left (a partition whose reader is not asking this round: its consumer is busy or
//! paused, so the broker must not send its records), and each answer lists only partitions
//! with records or news (an error, a new high watermark). An idle service's fetch is then
//! nearly empty both ways, whatever the partition count.
//!
//! This module only keeps the books; [`crate::link`] sends the requests. A broker without
//! sessions (its Fetch versions end before 7, as Tansu 0.6.0's do) gets sessionless full
//! requests, and one that opens no session (answers with session id 0) full requests, every
//! time, as before.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// A partition, by topic and number.
pub(crate) type Key = (Arc<str>, i32);

/// What a reader asks of its partition in one fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Position {
    pub(crate) offset: i64,
    pub(crate) max_bytes: i32,
    /// The leader epoch the reader knows (-1: none).
    pub(crate) epoch: i32,
    /// The leader epoch of the last batch read (-1: none).
    pub(crate) last_epoch: i32,
}

/// The offsets a broker last told for a partition of the session: what a reader gets for a
/// partition the answer left out (nothing new there).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ends {
    pub(crate) high_watermark: i64,
    pub(crate) last_stable_offset: i64,
    pub(crate) log_start_offset: i64,
}

/// `FETCH_SESSION_ID_NOT_FOUND`: the broker evicted the session (or restarted).
pub(crate) const SESSION_NOT_FOUND: i16 = 70;
/// `INVALID_FETCH_SESSION_EPOCH`: a request of the session went missing or came twice.
pub(crate) const INVALID_SESSION_EPOCH: i16 = 71;

/// The session's state on this side.
#[derive(Debug, Default)]
pub(crate) struct FetchSession {
    /// The broker's id of the session; 0 when there is none.
    id: i32,
    /// The epoch of the next request: 0 asks for a full request (which opens a session, and
    /// closes `id`'s if there is one), then 1, 2, ... for incremental ones.
    epoch: i32,
    /// What the broker holds for each partition of the session.
    held: HashMap<Key, Held>,
}

#[derive(Debug, Clone, Copy)]
struct Held {
    sent: Position,
    ends: Option<Ends>,
}

/// The next request of the session.
#[derive(Debug)]
pub(crate) struct Plan {
    pub(crate) session_id: i32,
    pub(crate) session_epoch: i32,
    /// Indexes (into what was asked) of the partitions the request lists.
    pub(crate) send: Vec<usize>,
    /// Partitions the broker is to drop from the session.
    pub(crate) forget: Vec<Key>,
}

impl Plan {
    /// Whether the request lists every partition asked (and its answer every one of them).
    pub(crate) fn is_full(&self) -> bool {
        self.session_epoch <= 0
    }
}

impl FetchSession {
    /// The request for the partitions `asked` (each at most once). `sessions`: whether the
    /// connection's Fetch version has sessions at all (7 or later); without, every request is
    /// full and sessionless.
    pub(crate) fn plan(&self, asked: &[(Key, Position)], sessions: bool) -> Plan {
        if !sessions {
            return Plan {
                session_id: 0,
                session_epoch: -1,
                send: (0..asked.len()).collect(),
                forget: Vec::new(),
            };
        }
        if self.epoch == 0 {
            return Plan {
                session_id: self.id,
                session_epoch: 0,
                send: (0..asked.len()).collect(),
                forget: Vec::new(),
            };
        }
        let send = asked
            .iter()
            .enumerate()
            .filter(|(_, (key, pos))| self.held.get(key).is_none_or(|h| h.sent != *pos))
            .map(|(i, _)| i)
            .collect();
        let asking: HashSet<&Key> = asked.iter().map(|(k, _)| k).collect();
        let mut forget: Vec<Key> = self
            .held
            .keys()
            .filter(|key| !asking.contains(key))
            .cloned()
            .collect();
        forget.sort();
        Plan {
            session_id: self.id,
            session_epoch: self.epoch,
            send,
            forget,
        }
    }

    /// Books the broker's answer to `plan`: its session id and the offsets of the partitions
    /// asked that it listed (`listed`).
    pub(crate) fn answered<'a>(
        &mut self,
        plan: &Plan,
        asked: &[(Key, Position)],
        session_id: i32,
        listed: impl IntoIterator<Item = (&'a Key, Ends)>,
    ) {
        if plan.session_epoch < 0 {
            return;
        }
        if plan.is_full() {
            self.held.clear();
            if session_id == 0 {
                // The broker keeps no session (it has none, or no room): full requests on.
                self.id = 0;
                self.epoch = 0;
                return;
            }
            self.id = session_id;
            self.epoch = 1;
        } else {
            self.epoch = if self.epoch == i32::MAX {
                1
            } else {
                self.epoch + 1
            };
            for key in &plan.forget {
                self.held.remove(key);
            }
        }
        for &i in &plan.send {
            let (key, pos) = &asked[i];
            self.held
                .entry(key.clone())
                .and_modify(|h| h.sent = *pos)
                .or_insert(Held {
                    sent: *pos,
                    ends: None,
                });
        }
        for (key, ends) in listed {
            if let Some(h) = self.held.get_mut(key) {
                h.ends = Some(ends);
            }
        }
    }

    /// What the broker last told of `key`'s offsets, for a partition an incremental answer
    /// left out.
    pub(crate) fn ends(&self, key: &Key) -> Option<Ends> {
        self.held.get(key).and_then(|h| h.ends)
    }

    /// After a request that failed or was refused (`code`, the answer's error): the next one
    /// is full. It closes the old session and opens a new one, unless the broker said the old
    /// one is gone.
    pub(crate) fn reset(&mut self, code: Option<i16>) {
        if code == Some(SESSION_NOT_FOUND) {
            self.id = 0;
        }
        self.epoch = 0;
        self.held.clear();
    }

    /// The broker's session id (0: none) and how many partitions the broker holds in it.
    pub(crate) fn state(&self) -> (i32, usize) {
        if self.id == 0 {
            (0, 0)
        } else {
            (self.id, self.held.len())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(p: i32) -> Key {
        (Arc::from("t"), p)
    }

    fn at(offset: i64) -> Position {
        Position {
            offset,
            max_bytes: 100,
            epoch: 0,
            last_epoch: -1,
        }
    }

    fn ends(hw: i64) -> Ends {
        Ends {
            high_watermark: hw,
            last_stable_offset: hw,
            log_start_offset: 0,
        }
    }

    /// Books a full answer that opened session 7 with `asked`, every partition listed at 10.
    fn opened(asked: &[(Key, Position)]) -> FetchSession {
        let mut s = FetchSession::default();
        let plan = s.plan(asked, true);
        assert!(plan.is_full());
        assert_eq!((plan.session_id, plan.session_epoch), (0, 0));
        assert_eq!(plan.send.len(), asked.len());
        let listed: Vec<_> = asked.iter().map(|(k, _)| (k, ends(10))).collect();
        s.answered(&plan, asked, 7, listed);
        s
    }

    #[test]
    fn after_a_full_request_only_what_changed_or_left_is_listed() {
        let asked = vec![(key(0), at(5)), (key(1), at(5)), (key(2), at(5))];
        let mut s = opened(&asked);
        assert_eq!(s.state(), (7, 3));

        // Same positions: an empty request.
        let plan = s.plan(&asked, true);
        assert_eq!((plan.session_id, plan.session_epoch), (7, 1));
        assert!(plan.send.is_empty() && plan.forget.is_empty());
        s.answered(&plan, &asked, 7, []);
        assert_eq!(s.ends(&key(1)), Some(ends(10)), "kept for the left-out");

        // Partition 0 moved on, 1 is not asking this round, 3 is new.
        let next = vec![(key(0), at(9)), (key(2), at(5)), (key(3), at(0))];
        let plan = s.plan(&next, true);
        assert_eq!(plan.session_epoch, 2);
        assert_eq!(plan.send, vec![0, 2]);
        assert_eq!(plan.forget, vec![key(1)]);
        s.answered(&plan, &next, 7, [(&key(3), ends(4))]);
        assert_eq!(s.state(), (7, 3));
        assert_eq!(s.ends(&key(1)), None, "forgotten");
        assert_eq!(s.ends(&key(3)), Some(ends(4)));

        // A partition that comes back is listed again, as is one asked with another epoch.
        let mut again = next.clone();
        again.push((key(1), at(5)));
        again[1].1.epoch = 3;
        let plan = s.plan(&again, true);
        assert_eq!(plan.send, vec![1, 3]);
        assert!(plan.forget.is_empty());
    }

    #[test]
    fn a_failed_or_refused_request_makes_the_next_one_full() {
        let asked = vec![(key(0), at(5))];
        let mut s = opened(&asked);
        // Lost: close the session and open another in one full request.
        s.reset(None);
        let plan = s.plan(&asked, true);
        assert!(plan.is_full());
        assert_eq!((plan.session_id, plan.session_epoch), (7, 0));
        assert_eq!(s.ends(&key(0)), None);
        // Evicted on the broker: nothing to close.
        s.reset(Some(SESSION_NOT_FOUND));
        let plan = s.plan(&asked, true);
        assert_eq!((plan.session_id, plan.session_epoch), (0, 0));
        // A new session after that.
        s.answered(&plan, &asked, 9, [(&key(0), ends(6))]);
        assert_eq!(s.state(), (9, 1));
        assert_eq!(s.plan(&asked, true).session_epoch, 1);
    }

    #[test]
    fn a_broker_without_sessions_gets_full_requests() {
        let asked = vec![(key(0), at(5)), (key(1), at(5))];
        let mut s = FetchSession::default();
        for _ in 0..3 {
            let plan = s.plan(&asked, true);
            assert!(plan.is_full());
            assert_eq!(plan.send.len(), 2);
            s.answered(&plan, &asked, 0, []);
            assert_eq!(s.state(), (0, 0));
        }
        // Before version 7: sessionless requests.
        let plan = s.plan(&asked, false);
        assert_eq!((plan.session_id, plan.session_epoch), (0, -1));
        assert_eq!(plan.send.len(), 2);
    }

    #[test]
    fn the_epoch_wraps_to_one() {
        let asked = vec![(key(0), at(5))];
        let mut s = opened(&asked);
        s.epoch = i32::MAX;
        let plan = s.plan(&asked, true);
        s.answered(&plan, &asked, 7, []);
        assert_eq!(s.plan(&asked, true).session_epoch, 1);
    }
}
