//! Outputs on their way to the broker, and what their acks mean for the partition: handled
//! messages' outputs are queued in chunks ([`Chunk`]), tracked in offset order until every one
//! was acknowledged ([`InFlight`]), and then the messages are done; a message whose output was
//! refused is read again and goes through the failure policy (kind `publish`).

use super::*;

/// A queued chunk: its messages' offsets and the acks of their outputs.
#[derive(Debug)]
pub(super) struct Queued {
    pub(super) first: i64,
    pub(super) last: i64,
    pub(super) messages: usize,
    pub(super) owners: Vec<Owner>,
    /// Per target partition: indices into `owners`, and the ack.
    pub(super) acks: Vec<(Vec<u32>, Ack)>,
    /// Outputs not delivered so far: index into `owners`, why.
    pub(super) failed: Vec<(u32, String)>,
}

/// Where an output came from: the offsets of its message (a batch's first and last), and
/// whether it is a dead-letter copy.
#[derive(Debug, Clone, Copy)]
pub(super) struct Owner {
    pub(super) first: i64,
    pub(super) last: i64,
    pub(super) dead_letter: bool,
}

/// One message's outputs, settled (concurrent consumption).
#[derive(Debug)]
pub(super) struct MessageSettled {
    pub(super) offset: i64,
    /// `Err`: an output was not delivered.
    pub(super) result: Result<(), String>,
    /// The output was the message's dead-letter copy.
    pub(super) dead_letter: bool,
    /// The message awaits its manual ack: not done even now.
    pub(super) unacked: bool,
}

/// A chunk whose outputs are all settled.
#[derive(Debug)]
pub(super) struct Settled {
    pub(super) last: i64,
    /// Messages (or batches) with an output that was not delivered: first and last offset,
    /// why (first failure per message).
    pub(super) failed: Vec<(i64, i64, String)>,
}

/// Queued chunks awaiting the broker's acks, in offset order.
#[derive(Debug, Default)]
pub(super) struct InFlight {
    pub(super) queue: VecDeque<Queued>,
    pub(super) messages: usize,
}

impl InFlight {
    pub(super) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    pub(super) fn push_back(&mut self, queued: Queued) {
        self.messages += queued.messages;
        self.queue.push_back(queued);
    }
}

/// Outputs of consecutive handled messages are queued together, a few at a time (fewer,
/// larger queue operations), but never held for long: when the chunk is full, when the fetched
/// batch ends, or when the next handler takes longer than [`CHUNK_WAIT`].
#[derive(Debug, Default)]
pub(super) struct Chunk {
    /// First and last offset of its messages.
    pub(super) span: Option<(i64, i64)>,
    pub(super) messages: usize,
    pub(super) bytes: usize,
    pub(super) outputs: Vec<OutgoingMessage>,
    pub(super) owners: Vec<Owner>,
}

pub(super) const CHUNK_MESSAGES: usize = 128;

pub(super) const CHUNK_BYTES: usize = 64 * 1024;

pub(super) const CHUNK_WAIT: Duration = Duration::from_millis(2);

impl Chunk {
    pub(super) fn is_empty(&self) -> bool {
        self.span.is_none()
    }

    /// Adds the outputs of `count` messages from `first` to `offset` (one message: both its
    /// offset); true when the chunk should be queued now.
    pub(super) fn push(
        &mut self,
        (first, offset, count): (i64, i64, usize),
        outputs: Vec<OutgoingMessage>,
        dead_letter: bool,
    ) -> bool {
        let owner = Owner {
            first,
            last: offset,
            dead_letter,
        };
        self.owners
            .extend(std::iter::repeat_n(owner, outputs.len()));
        self.span = Some(
            self.span
                .map_or((offset, offset), |(first, _)| (first, offset)),
        );
        self.messages += count;
        self.bytes += outputs
            .iter()
            .map(OutgoingMessage::approximate_size)
            .sum::<usize>();
        if self.outputs.is_empty() {
            self.outputs = outputs;
        } else {
            self.outputs.extend(outputs);
        }
        self.messages >= CHUNK_MESSAGES || self.bytes >= CHUNK_BYTES
    }
}

impl PartitionConsumer {
    /// Queues outputs of the message(s) from `offset` on (nothing for none).
    pub(super) async fn enqueue(
        &self,
        offset: i64,
        outputs: Vec<OutgoingMessage>,
    ) -> Result<crate::produce::Enqueued, Stop> {
        if outputs.is_empty() {
            return Ok(Default::default());
        }
        self.rt
            .producers
            .enqueue(outputs)
            .await
            .map_err(|e| Stop::at(offset, format!("outputs cannot be queued: {e}")))
    }

    /// Queues the chunk's outputs; its messages are done once the broker acknowledged them.
    pub(super) async fn flush(
        &self,
        chunk: &mut Chunk,
        inflight: &mut InFlight,
    ) -> Result<(), Stop> {
        let Some((first, last)) = chunk.span.take() else {
            return Ok(());
        };
        let outputs = std::mem::take(&mut chunk.outputs);
        let owners = std::mem::take(&mut chunk.owners);
        let messages = std::mem::take(&mut chunk.messages);
        chunk.bytes = 0;
        let queued = self.enqueue(first, outputs).await?;
        inflight.push_back(Queued {
            first,
            last,
            messages,
            owners,
            acks: queued.groups,
            failed: queued.refused,
        });
        Ok(())
    }

    /// Marks done what was acknowledged; waits while too many messages await acks.
    pub(super) async fn settle(
        &self,
        inflight: &mut InFlight,
        tracker: &OffsetTracker,
    ) -> Result<(), Stop> {
        while let Some(res) = settle_ready(inflight) {
            self.finish(res, tracker).await?;
        }
        while inflight.messages > self.rt.config.max_in_flight {
            let res = settle_front(inflight).await;
            self.finish(res, tracker).await?;
        }
        Ok(())
    }

    /// A chunk is settled: messages whose outputs were not delivered go through the failure
    /// policy (kind `publish`), then the chunk is done.
    pub(super) async fn finish(
        &self,
        settled: Result<Settled, Stop>,
        tracker: &OffsetTracker,
    ) -> Result<(), Stop> {
        let settled = settled?;
        if !settled.failed.is_empty() {
            self.fail_outputs(settled.failed).await?;
        }
        tracker.done(settled.last);
        Ok(())
    }

    /// Each message is read again from the partition (the consumer keeps no copy of messages
    /// awaiting acks) and handed to the failure policy; a dead-letter copy is awaited here. A
    /// batch's output that failed fails every message of the batch.
    pub(super) async fn fail_outputs(&self, failed: Vec<(i64, i64, String)>) -> Result<(), Stop> {
        let mut reader =
            PartitionReader::new(self.rt.cluster.clone(), self.topic.clone(), self.partition);
        for (first, last, reason) in failed {
            for msg in self.read_again(&mut reader, first, last).await? {
                self.fail_output(msg, reason.clone()).await?;
            }
        }
        Ok(())
    }

    /// One message whose output was not delivered, through the failure policy.
    pub(super) async fn fail_output(&self, msg: Message, reason: String) -> Result<(), Stop> {
        let offset = msg.offset;
        let outcome = self
            .rt
            .pipeline
            .fail(self.route, &msg, HandlerError::Publish(reason));
        match outcome {
            Outcome::Stopped { error, .. } => Err(Stop::at(
                offset,
                format!("the failure policy stopped it: {error}"),
            )),
            Outcome::DeadLettered { dlq, .. } => {
                let topic = dlq.topic.clone();
                let queued = self.rt.producers.enqueue(vec![*dlq]).await.map_err(|e| {
                    Stop::at(offset, format!("dead-letter copy cannot be queued: {e}"))
                })?;
                queued.delivered().await.map_err(|why| {
                    Stop::at(
                        offset,
                        format!("an output was not delivered, and neither was its dead-letter copy to {topic:?}: {why}"),
                    )
                })
            }
            _ => Ok(()),
        }
    }

    /// The messages at offsets `first..=last`, read from the partition again.
    pub(super) async fn read_again(
        &self,
        reader: &mut PartitionReader,
        first: i64,
        last: i64,
    ) -> Result<Vec<Message>, Stop> {
        let mut backoff = Backoff::requests();
        let mut found = Vec::new();
        let mut offset = first;
        let mut failures = 0;
        loop {
            match reader.fetch(offset).await {
                Ok(fetch) => {
                    let next = fetch.decoded.next.unwrap_or(offset);
                    found.extend(fetch.decoded.items.into_iter().filter_map(|i| match i {
                        Fetched::Record(m) if (offset..=last).contains(&m.offset) => Some(m),
                        _ => None,
                    }));
                    if next > offset && next <= last {
                        offset = next;
                        continue;
                    }
                    if found.is_empty() {
                        return Err(Stop::at(
                            first,
                            "an output was not delivered, and the message is no longer readable to dead-letter it",
                        ));
                    }
                    return Ok(found);
                }
                Err(FetchError::Retriable(e)) if failures < 10 => {
                    failures += 1;
                    tracing::warn!(topic = &*self.topic, partition = self.partition, offset, error = %e, "reading a message again failed; retrying");
                    backoff.sleep().await;
                }
                Err(e) => {
                    return Err(Stop::at(
                        offset,
                        format!(
                            "an output was not delivered, and the message cannot be read again: {e}"
                        ),
                    ))
                }
            }
        }
    }
}

/// Waits until every output of the oldest queued chunk was settled (acknowledged or refused),
/// and removes it. An abandoned ack (the producer went away) is an error naming the chunk's
/// first offset (nothing from there on is done). Cancellation-safe: settled acks are removed.
pub(super) async fn settle_front(inflight: &mut InFlight) -> Result<Settled, Stop> {
    let Some(front) = inflight.queue.front_mut() else {
        return Err(Stop::new(None, "nothing in flight"));
    };
    while let Some((_, ack)) = front.acks.last_mut() {
        let result = ack.await;
        let (indices, _) = front.acks.pop().expect("awaited above");
        match result {
            Ok(Ok(())) => {}
            Ok(Err(failed)) => front.failed.extend(
                failed
                    .into_iter()
                    .map(|(i, reason)| (indices[i as usize], reason)),
            ),
            Err(_) => {
                return Err(Stop::at(
                    front.first,
                    "an output was abandoned before the broker acknowledged it",
                ))
            }
        }
    }
    let front = inflight.queue.pop_front().expect("checked above");
    inflight.messages -= front.messages;
    let mut failed: Vec<(i64, i64, String)> = Vec::new();
    let mut by_output = front.failed;
    by_output.sort_by_key(|(i, _)| *i);
    for (i, reason) in by_output {
        let owner = front.owners[i as usize];
        if owner.dead_letter {
            return Err(Stop::at(
                owner.last,
                format!("its dead-letter copy was not delivered: {reason}"),
            ));
        }
        if failed.last().is_none_or(|(_, o, _)| *o != owner.last) {
            failed.push((owner.first, owner.last, reason));
        }
    }
    Ok(Settled {
        last: front.last,
        failed,
    })
}

/// The front chunk, if all its outputs are already settled (without waiting).
pub(super) fn settle_ready(inflight: &mut InFlight) -> Option<Result<Settled, Stop>> {
    if inflight.is_empty() {
        return None;
    }
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match std::pin::pin!(settle_front(inflight)).poll(&mut cx) {
        std::task::Poll::Ready(res) => Some(res),
        std::task::Poll::Pending => None,
    }
}
