//! Key-ordered concurrency (`concurrency = N`): up to N messages of different keys in hand at
//! once, each key's messages in offset order.

use super::*;

impl PartitionConsumer {
    /// `concurrency > 1`: up to `concurrency` messages of the partition handled at once, one
    /// at a time per key (keyless messages in parallel). Each message's outputs are queued as
    /// its handler returns (so outputs of one key keep their order); the position moves past
    /// the contiguous run of messages whose outputs were acknowledged (each message is open in
    /// [`InFlight`] from its arrival). On shutdown, handlers in hand finish and their outputs
    /// are awaited first.
    pub(super) async fn run_concurrently(
        &self,
        concurrency: usize,
        rx: &mut Feed,
        tracker: &mut OffsetTracker,
        ack_first: bool,
        (inflight, turn): (&mut InFlight, &mut Turn),
        metrics: &PartitionMetrics,
    ) -> Result<(), End> {
        use std::collections::HashMap;
        use tokio::task::JoinSet;

        /// What a handler task hands back: offset, key, outcome, how long it took.
        type Handled = (i64, Option<bytes::Bytes>, Outcome, Duration);
        let mut shutdown = self.shutdown.clone();
        let mut ticker = tokio::time::interval(Duration::from_secs(1));
        // Messages ready to run (their key is free), and per busy key those waiting behind it.
        let mut ready: VecDeque<Message> = VecDeque::new();
        let mut waiting: HashMap<bytes::Bytes, VecDeque<Message>> = HashMap::new();
        let mut buffered = 0usize;
        let mut running: JoinSet<Handled> = JoinSet::new();
        let mut stopped: Option<Stop> = None;
        let mut stopping = false;
        // The furthest offset whose handling started (or whose outputs were queued).
        let mut started_up_to = i64::MIN;
        loop {
            // Quiet (for a transaction's commit): everything up to the furthest message
            // started is done, so no output belongs to a message past the position.
            if inflight
                .first_open()
                .is_none_or(|first| first > started_up_to)
            {
                turn.quiet();
            }
            // Exactly-once, stopping gracefully (shutdown, revoke): the messages before the
            // furthest one started still run, so the position passes every output of the
            // transaction that commits now.
            let drain = stopping && stopped.is_none() && self.rt.txn.is_some();
            while (!stopping || drain)
                && running.len() < concurrency
                && inflight.queued() < self.rt.config.max_in_flight
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
            if stopping && running.is_empty() && !inflight.is_waiting() && !holes_left {
                break;
            }
            tokio::select! {
                biased;
                () = shutdown.wait(), if !stopping => stopping = true,
                Some(joined) = running.join_next(), if !running.is_empty() => {
                    let (offset, key, outcome, took) = match joined {
                        Ok(handled) => handled,
                        Err(e) => {
                            stopped.get_or_insert(Stop::new(inflight.first_open(), Why::HandlerTask(e)));
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
                    if let Err(end) = self.handled(inflight, tracker, (offset, offset), outcome).await {
                        stopped = stopped.or(end.stopped());
                        stopping = true;
                    }
                }
                res = inflight.settled(), if inflight.is_waiting() => {
                    if let Err(e) = self.finish(res, inflight, tracker).await {
                        stopped.get_or_insert(e);
                        stopping = true;
                    }
                }
                _ = ticker.tick() => {
                    metrics.in_flight(inflight.messages());
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
                        match item {
                            Fetched::Record(msg) => {
                                metrics.received(msg.payload.as_ref().map_or(0, |p| p.len()));
                                inflight.take_in_hand(msg.offset, msg.offset);
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
                                inflight.take_in_hand(first, last);
                                started_up_to = started_up_to.max(last);
                                let outcome = self.unreadable((first, last), raw, &reason, metrics);
                                if let Err(end) = self.handled(inflight, tracker, (first, last), outcome).await {
                                    stopped = stopped.or(end.stopped());
                                    stopping = true;
                                    break;
                                }
                            }
                            Fetched::Passed { last } => inflight.passed(last),
                        }
                    }
                    advance(inflight, tracker);
                }
            }
        }
        if let Some(txn) = &self.rt.txn {
            if let Some(first) = inflight.first_open().filter(|f| *f <= started_up_to) {
                // Outputs of messages past the position are in the transaction: it must not
                // commit (the partitions start again from the committed offsets).
                txn.poison(format!(
                    "partition {} of topic {:?} stopped at offset {first} with later messages' outputs in the transaction",
                    self.partition, self.topic
                ));
            }
        }
        stopped.map_or(Ok(()), |stop| Err(End::Stop(stop)))
    }

    /// One message in hand (or unreadable batch) from `first` to `last` was handled: its
    /// outcome's outputs are queued at once, or it is done if it has none.
    async fn handled(
        &self,
        inflight: &mut InFlight,
        tracker: &mut OffsetTracker,
        (first, last): (i64, i64),
        outcome: Outcome,
    ) -> Result<(), End> {
        let (outputs, dead_letter) = step(tracker, first, outcome)?;
        if outputs.is_empty() {
            inflight.close_in_hand(first);
            advance(inflight, tracker);
            return Ok(());
        }
        inflight.push((first, last, 1), outputs, dead_letter);
        Ok(self.flush(inflight).await?)
    }
}
