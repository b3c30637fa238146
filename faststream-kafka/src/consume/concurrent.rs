//! Key-ordered concurrency (`concurrency = N`): up to N messages of different keys in hand at
//! once, each key's messages in offset order.

use super::*;

impl PartitionConsumer {
    /// `concurrency > 1`: up to `concurrency` messages of the partition handled at once, one
    /// at a time per key (keyless messages in parallel). Each message's outputs are queued as
    /// its handler returns (so outputs of one key keep their order); the position moves past
    /// the contiguous run of messages whose outputs were acknowledged. Returns why it stopped
    /// on its own, if it did; on shutdown, handlers in hand finish and their outputs are
    /// awaited first.
    pub(super) async fn run_concurrently(
        &self,
        concurrency: usize,
        (rx, turn): (&mut Feed, &mut Turn),
        tracker: &mut OffsetTracker,
        ack_first: bool,
        metrics: &PartitionMetrics,
    ) -> Option<Stop> {
        use std::collections::{BTreeMap, HashMap};
        use tokio::task::JoinSet;

        /// What a handler task hands back: offset, key, outcome, how long it took.
        type Handled = (i64, Option<bytes::Bytes>, Outcome, Duration);
        let mut shutdown = self.shutdown.clone();
        let mut ticker = tokio::time::interval(Duration::from_secs(1));
        // Offsets not done yet (first -> last of the item), and the offset after the last item.
        let mut pending: BTreeMap<i64, i64> = BTreeMap::new();
        let mut end: Option<i64> = None;
        // Messages ready to run (their key is free), and per busy key those waiting behind it.
        let mut ready: VecDeque<Message> = VecDeque::new();
        let mut waiting: HashMap<bytes::Bytes, VecDeque<Message>> = HashMap::new();
        let mut buffered = 0usize;
        let mut running: JoinSet<Handled> = JoinSet::new();
        let mut acking: JoinSet<MessageSettled> = JoinSet::new();
        let mut stopped: Option<Stop> = None;
        let mut stopping = false;
        /// Done up to the first offset not done.
        fn advance(tracker: &OffsetTracker, pending: &BTreeMap<i64, i64>, end: Option<i64>) {
            if let Some(next) = pending.keys().next().copied().or(end) {
                tracker.done(next - 1);
            }
        }
        // The furthest offset whose handling started (or whose outputs were queued).
        let mut started_up_to = i64::MIN;
        loop {
            // Quiet (for a transaction's commit): everything up to the furthest message
            // started is done, so no output belongs to a message past the position.
            if pending
                .keys()
                .next()
                .is_none_or(|first| *first > started_up_to)
            {
                turn.quiet();
            }
            // Exactly-once, stopping gracefully (shutdown, revoke): the messages before the
            // furthest one started still run, so the position passes every output of the
            // transaction that commits now.
            let drain = stopping && stopped.is_none() && self.rt.txn.is_some();
            while (!stopping || drain)
                && running.len() < concurrency
                && acking.len() < self.rt.config.max_in_flight
            {
                // While a transaction commits, only messages before the furthest one started
                // run (the commit waits for that run to be done); nothing new starts.
                let pick = match turn.may_start() && !stopping {
                    true => (!ready.is_empty()).then_some(0),
                    false => ready.iter().position(|m| m.offset < started_up_to),
                };
                let Some(i) = pick else { break };
                if !turn.enter(&self.shutdown).await {
                    stopping = true;
                    break;
                }
                let Some(msg) = ready.remove(i) else { break };
                started_up_to = started_up_to.max(msg.offset);
                buffered -= 1;
                let (pipeline, route, stop) =
                    (self.rt.pipeline.clone(), self.route, self.shutdown.clone());
                let lane = self.lane.as_ref().map(|l| (l.lane.clone(), l.stage));
                let (offset, key) = (msg.offset, msg.key.clone());
                running.spawn(async move {
                    let started = Instant::now();
                    let lane = lane.as_ref().map(|(lane, stage)| (&**lane, *stage));
                    let outcome = handle_message(&pipeline, route, msg, &stop, lane).await;
                    (offset, key, outcome, started.elapsed())
                });
            }
            let holes_left = drain && ready.iter().any(|m| m.offset < started_up_to);
            if stopping && running.is_empty() && acking.is_empty() && !holes_left {
                break;
            }
            tokio::select! {
                biased;
                () = shutdown.wait(), if !stopping => stopping = true,
                Some(joined) = running.join_next(), if !running.is_empty() => {
                    let (offset, key, outcome, took) = match joined {
                        Ok(handled) => handled,
                        Err(e) => {
                            stopped.get_or_insert(Stop::new(pending.keys().next().copied(), format!("a handler task failed: {e}")));
                            stopping = true;
                            continue;
                        }
                    };
                    metrics.duration(took);
                    metrics.outcome(&outcome, 1);
                    // The key's next message may run now.
                    if let Some(key) = key {
                        match waiting.get_mut(&key).and_then(VecDeque::pop_front) {
                            Some(next) => ready.push_back(next),
                            None => {
                                waiting.remove(&key);
                            }
                        }
                    }
                    let (outputs, dead_letter, unacked) = match tracker.step(offset, outcome) {
                        Step::Stop(reason) => {
                            stopped.get_or_insert(Stop::at(offset, reason));
                            stopping = true;
                            continue;
                        }
                        Step::Interrupt => {
                            stopping = true;
                            continue;
                        }
                        Step::Publish { outputs, dead_letter, held } => (outputs, dead_letter, held),
                    };
                    match self.queue_outputs(offset, outputs, dead_letter, unacked, &mut acking).await {
                        // Nothing to publish: done now (a manual-ack message stays held).
                        Ok(false) if !unacked => {
                            pending.remove(&offset);
                            advance(tracker, &pending, end);
                        }
                        Ok(_) => {}
                        Err(e) => {
                            stopped.get_or_insert(e);
                            stopping = true;
                        }
                    }
                }
                Some(joined) = acking.join_next(), if !acking.is_empty() => {
                    let MessageSettled { offset, result, dead_letter, unacked } = match joined {
                        Ok(acked) => acked,
                        Err(e) => {
                            stopped.get_or_insert(Stop::new(pending.keys().next().copied(), format!("an ack task failed: {e}")));
                            stopping = true;
                            continue;
                        }
                    };
                    if let (Err(reason), true) = (&result, dead_letter) {
                        stopped.get_or_insert(Stop::at(offset, format!("its dead-letter copy was not delivered: {reason}")));
                        stopping = true;
                        continue;
                    }
                    if let Err(reason) = result {
                        if let Err(e) = self.fail_outputs(vec![(offset, offset, reason)]).await {
                            stopped.get_or_insert(e);
                            stopping = true;
                            continue;
                        }
                    }
                    if !unacked {
                        // (A manual-ack message stays held until acked.)
                        pending.remove(&offset);
                        advance(tracker, &pending, end);
                    }
                }
                _ = ticker.tick() => {
                    metrics.in_flight(pending.len());
                    self.warn_overdue(tracker);
                }
                batch = rx.recv(), if !stopping && buffered < concurrency && turn.may_start() => {
                    let batch = match batch {
                        Some(Ok(b)) => b,
                        Some(Err(e)) => {
                            stopped.get_or_insert(e);
                            stopping = true;
                            continue;
                        }
                        None => {
                            stopping = true;
                            continue;
                        }
                    };
                    if ack_first {
                        self.commit_before_handling(tracker, &batch).await;
                    }
                    if !turn.enter(&self.shutdown).await {
                        stopping = true;
                        continue;
                    }
                    for item in batch {
                        end = Some(item.last_offset() + 1);
                        match item {
                            Fetched::Record(msg) => {
                                metrics.received(msg.payload.as_ref().map_or(0, |p| p.len()));
                                pending.insert(msg.offset, msg.offset);
                                buffered += 1;
                                match &msg.key {
                                    Some(key) => match waiting.get_mut(key) {
                                        // The key is busy: wait behind it.
                                        Some(queue) => queue.push_back(msg),
                                        None => {
                                            waiting.insert(key.clone(), VecDeque::new());
                                            ready.push_back(msg);
                                        }
                                    },
                                    None => ready.push_back(msg),
                                }
                            }
                            Fetched::Unreadable { first, last, raw, reason } => {
                                pending.insert(first, last);
                                started_up_to = started_up_to.max(last);
                                let outcome = self.unreadable((first, last), raw, &reason, metrics);
                                let (outputs, dead_letter) = match tracker.step(first, outcome) {
                                    Step::Stop(reason) => {
                                        stopped.get_or_insert(Stop::at(first, reason));
                                        stopping = true;
                                        break;
                                    }
                                    Step::Interrupt => {
                                        stopping = true;
                                        break;
                                    }
                                    Step::Publish { outputs, dead_letter, .. } => (outputs, dead_letter),
                                };
                                match self.queue_outputs(first, outputs, dead_letter, false, &mut acking).await {
                                    Ok(false) => {
                                        pending.remove(&first);
                                    }
                                    Ok(true) => {}
                                    Err(e) => {
                                        stopped.get_or_insert(e);
                                        stopping = true;
                                        break;
                                    }
                                }
                            }
                            Fetched::Passed { .. } => {}
                        }
                    }
                    advance(tracker, &pending, end);
                }
            }
        }
        if let Some(txn) = &self.rt.txn {
            if let Some(first) = pending.keys().next().filter(|f| **f <= started_up_to) {
                // Outputs of messages past the position are in the transaction: it must not
                // commit (the partitions start again from the committed offsets).
                txn.poison(format!(
                    "partition {} of topic {:?} stopped at offset {first} with later messages' outputs in the transaction",
                    self.partition, self.topic
                ));
            }
        }
        stopped
    }

    /// Queues one message's outputs; its ack task reports when they are settled. `false`: there
    /// was nothing to queue (no task: the caller settles the message at once).
    pub(super) async fn queue_outputs(
        &self,
        offset: i64,
        outputs: Vec<OutgoingMessage>,
        dead_letter: bool,
        unacked: bool,
        acking: &mut tokio::task::JoinSet<MessageSettled>,
    ) -> Result<bool, Stop> {
        if outputs.is_empty() {
            return Ok(false);
        }
        let queued = self.enqueue(offset, outputs).await?;
        acking.spawn(async move {
            MessageSettled {
                offset,
                result: queued.delivered().await,
                dead_letter,
                unacked,
            }
        });
        Ok(true)
    }
}
