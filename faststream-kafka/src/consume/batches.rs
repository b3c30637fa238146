//! Batch routes (`batch = true`): fetched messages handed to the handler in batches.

use super::*;

impl PartitionConsumer {
    /// A batch route: fetched messages are collected into batches of at most `max_records`,
    /// each handed over once full or `batch_timeout` after its first message arrived (a record
    /// batch that cannot be read, and transaction markers, pass in offset order). The position
    /// moves past a batch once its outputs (and its failed messages' dead-letter copies) are
    /// acknowledged.
    pub(super) async fn run_batches(
        &self,
        def: BatchDef,
        rx: &mut Feed,
        tracker: &mut OffsetTracker,
        ack_first: bool,
        (inflight, turn): (&mut InFlight, &mut Turn),
        metrics: &PartitionMetrics,
    ) -> Result<(), End> {
        let mut shutdown = self.shutdown.clone();
        let mut ticker = tokio::time::interval(Duration::from_secs(1));
        let max = def.max_records();
        // Fetched items not handed over yet, each with when it arrived; how many are records.
        let mut buffer: VecDeque<(tokio::time::Instant, Fetched)> = VecDeque::new();
        let mut records = 0usize;
        loop {
            // The oldest waiting message's batch is due at this time.
            let due = buffer
                .iter()
                .find(|(_, item)| matches!(item, Fetched::Record(_)))
                .map(|(arrived, _)| *arrived + def.timeout());
            let now = tokio::time::Instant::now();
            if inflight.is_empty() {
                turn.quiet();
            }
            if !buffer.is_empty()
                && turn.may_start()
                && (records >= max || due.is_none_or(|due| due <= now))
            {
                if !turn.enter(&self.shutdown).await {
                    return Ok(());
                }
                let mut items = Vec::new();
                let mut taken = 0;
                while let Some((_, item)) = buffer.front() {
                    if matches!(item, Fetched::Record(_)) {
                        if taken == max {
                            break;
                        }
                        taken += 1;
                    }
                    items.push(buffer.pop_front().expect("peeked").1);
                }
                records -= taken;
                self.handle_batch(items, inflight, tracker, metrics).await?;
                if slice::spent(tokio::time::Instant::now()) {
                    tokio::task::yield_now().await;
                }
                continue;
            }
            tokio::select! {
                biased;
                () = shutdown.wait() => return Ok(()),
                res = inflight.settled(), if inflight.is_waiting() => {
                    self.finish(res, inflight, tracker).await?;
                }
                _ = ticker.tick() => {
                    metrics.in_flight(inflight.messages());
                    self.warn_overdue(tracker);
                }
                () = tokio::time::sleep_until(due.unwrap_or(now)), if due.is_some() && turn.may_start() => {}
                batch = rx.recv(), if records < max => match batch {
                    Some(Ok(batch)) => {
                        if ack_first {
                            self.commit_before_handling(tracker, &batch).await;
                        }
                        let arrived = tokio::time::Instant::now();
                        records += batch.iter().filter(|i| matches!(i, Fetched::Record(_))).count();
                        buffer.extend(batch.into_iter().map(|item| (arrived, item)));
                    }
                    Some(Err(e)) => return Err(e.into()),
                    None => return Ok(()),
                },
            }
        }
    }

    /// Handles one batch's items (records, unreadable batches, markers, in offset order) and
    /// queues what they publish. Interrupted (shutdown or revoke during a retry's backoff):
    /// nothing of the batch is done.
    pub(super) async fn handle_batch(
        &self,
        items: Vec<Fetched>,
        inflight: &mut InFlight,
        tracker: &mut OffsetTracker,
        metrics: &PartitionMetrics,
    ) -> Result<(), End> {
        let Some(end) = items.last().map(Fetched::last_offset) else {
            return Ok(());
        };
        // ((first offset, last offset, messages), outputs, dead-letter copy), queued in offset
        // order once everything is handled, so no position passes a message not handled yet.
        type Entry = ((i64, i64, usize), Vec<OutgoingMessage>, bool);
        let mut entries: Vec<Entry> = Vec::new();
        let mut msgs = Vec::new();
        for item in items {
            match item {
                Fetched::Record(msg) => {
                    metrics.received(msg.payload.as_ref().map_or(0, |p| p.len()));
                    msgs.push(msg);
                }
                Fetched::Unreadable {
                    first,
                    last,
                    raw,
                    reason,
                } => {
                    let outcome = self.unreadable((first, last), raw, &reason, metrics);
                    let (outputs, dead_letter) = step(tracker, first, outcome)?;
                    entries.push(((first, last, 1), outputs, dead_letter));
                }
                Fetched::Passed { .. } => {}
            }
        }
        if let (Some(first), Some(last), count) = (
            msgs.first().map(|m| m.offset),
            msgs.last().map(|m| m.offset),
            msgs.len(),
        ) {
            let started = tokio::time::Instant::now();
            let outcome = match &self.lane {
                Some(link) => {
                    let (lane, stage) = (&link.lane, link.stage);
                    let stop = Some(&self.shutdown);
                    let pipeline = &self.rt.pipeline;
                    pipeline
                        .handle_batch_in_lane(self.route, msgs, stop, lane, stage)
                        .await
                }
                None => {
                    let stop = Some(&self.shutdown);
                    self.rt.pipeline.handle_batch(self.route, msgs, stop).await
                }
            };
            metrics.since(started);
            let batched = count - outcome.failed.len();
            metrics.outcome(&Outcome::Done(Vec::new()), batched as u64);
            for (offset, failed) in outcome.failed {
                metrics.outcome(&failed, 1);
                let (outputs, dead_letter) = step(tracker, offset, failed)?;
                entries.push(((offset, offset, 1), outputs, dead_letter));
            }
            // A failed output of the batch fails each of its messages.
            entries.push(((first, last, batched), outcome.outputs, false));
        }
        entries.sort_by_key(|((_, last, _), _, _)| *last);
        entries.push(((end, end, 0), Vec::new(), false));
        // All in chunks, even entries with nothing to publish: a failed message's entry
        // (sorted by its own offset) may come before its batch's, so nothing is done before
        // the chunks holding the batch settle.
        for (span, outputs, dead_letter) in entries {
            if inflight.push(span, outputs, dead_letter) {
                self.flush(inflight).await?;
            }
        }
        self.flush(inflight).await?;
        self.settle(inflight, tracker).await?;
        Ok(())
    }
}
