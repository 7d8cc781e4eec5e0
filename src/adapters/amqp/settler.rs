//! Acknowledges deliveries in as few frames as possible.
//!
//! Workers finish in any order; the settler of a channel collects their
//! completions and acknowledges the highest tag below which everything is
//! settled with one `basic.ack(multiple)`. Under load one frame settles
//! hundreds of deliveries, which is what lets the broker keep up.
//!
//! Completions behind an unfinished delivery wait for it, and each holds a
//! place of the prefetch window meanwhile. The window has room for as many
//! as it holds beyond the worker pool (`prefetch - concurrency`), so that a
//! slow order never starves the workers: completions beyond that room are
//! acknowledged one by one, and the rest still wait for one frame.
//!
//! A settler belongs to one channel. When the channel dies its settler
//! stops, and completions sent to it are dropped: those deliveries are
//! redelivered by the broker and the idempotent use case absorbs them.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::sync::Arc;

use lapin::Channel;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{AmqpError, within_answer_timeout};
use crate::metrics::Metrics;

/// How a delivery was settled by its worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Settle {
    /// Done: acknowledge (possibly together with others).
    Ack(u64),
    /// Give it back to the queue now (`basic.nack`, requeue).
    Requeue(u64),
}

/// The workers' handle to the settler of their channel.
#[derive(Clone)]
pub struct Settler {
    completions: mpsc::Sender<Settle>,
}

impl Settler {
    /// Starts the settler of `channel`, whose prefetch window is `prefetch`
    /// and whose deliveries are processed `concurrency` at a time. A
    /// delivery is settled once, so the queue never holds more than the
    /// window. `failed` is cancelled if an acknowledgement cannot be sent.
    pub fn spawn(
        channel: Channel,
        prefetch: usize,
        concurrency: usize,
        tracker: &TaskTracker,
        failed: CancellationToken,
        metrics: Arc<Metrics>,
    ) -> Self {
        let (completions, receiver) = mpsc::channel(prefetch.max(1));
        tracker.spawn(async move {
            let ledger = Ledger::new(room_to_wait(prefetch, concurrency));
            if let Err(error) = run(channel, receiver, ledger, &metrics).await {
                tracing::warn!(%error, "could not acknowledge on the broker channel");
                failed.cancel();
            }
        });
        Self { completions }
    }

    pub async fn ack(&self, delivery_tag: u64) {
        self.send(Settle::Ack(delivery_tag)).await;
    }

    pub async fn requeue(&self, delivery_tag: u64) {
        self.send(Settle::Requeue(delivery_tag)).await;
    }

    async fn send(&self, settle: Settle) {
        // A closed settler means its channel is gone; the broker redelivers.
        let _ = self.completions.send(settle).await;
    }
}

/// How many completions may wait behind an unfinished delivery: the part of
/// the prefetch window the workers do not need. With a window no larger than
/// the pool, a quarter of it, so that waiting costs the pool little.
fn room_to_wait(prefetch: usize, concurrency: usize) -> usize {
    prefetch
        .saturating_sub(concurrency)
        .max(prefetch / 4)
        .max(1)
}

async fn run(
    channel: Channel,
    mut receiver: mpsc::Receiver<Settle>,
    mut ledger: Ledger,
    metrics: &Metrics,
) -> Result<(), AmqpError> {
    let mut batch = Vec::with_capacity(256);
    while receiver.recv_many(&mut batch, 256).await > 0 {
        for settle in batch.drain(..) {
            if let Settle::Requeue(tag) = settle {
                let options = BasicNackOptions {
                    multiple: false,
                    requeue: true,
                };
                within_answer_timeout(channel.basic_nack(tag, options), AmqpError::Channel).await?;
            }
            ledger.record(settle);
        }
        for frame in ledger.frames(false) {
            send(&channel, frame, metrics).await?;
        }
    }
    // Every sender is gone: the session is over. Settle what can be.
    for frame in ledger.frames(true) {
        send(&channel, frame, metrics).await?;
    }
    Ok(())
}

async fn send(channel: &Channel, frame: Frame, metrics: &Metrics) -> Result<(), AmqpError> {
    let (tag, multiple) = match frame {
        Frame::UpTo(tag) => (tag, true),
        Frame::Single(tag) => (tag, false),
    };
    let ack = channel.basic_ack(tag, BasicAckOptions { multiple });
    within_answer_timeout(ack, AmqpError::Channel).await?;
    metrics.ack_frame_sent(multiple);
    Ok(())
}

/// An acknowledgement to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Frame {
    /// Everything up to and including this tag.
    UpTo(u64),
    Single(u64),
}

/// Which tags are settled, and which of those still need a frame.
struct Ledger {
    /// The lowest tag not yet settled (tags start at 1 on every channel).
    next: u64,
    /// Settled tags above `next`; `true` once their own frame was sent.
    ahead: BTreeMap<u64, bool>,
    /// How many of `ahead` still need a frame.
    waiting: usize,
    /// How many may wait; the newest beyond that are acknowledged alone.
    room: usize,
}

impl Ledger {
    fn new(room: usize) -> Self {
        Self {
            next: 1,
            ahead: BTreeMap::new(),
            waiting: 0,
            room,
        }
    }

    fn record(&mut self, settle: Settle) {
        match settle {
            Settle::Ack(tag) => {
                if let Entry::Vacant(entry) = self.ahead.entry(tag) {
                    entry.insert(false);
                    self.waiting = self.waiting.saturating_add(1);
                }
            }
            // The nack was its own frame already.
            Settle::Requeue(tag) => {
                if self.ahead.insert(tag, true) == Some(false) {
                    self.waiting = self.waiting.saturating_sub(1);
                }
            }
        }
    }

    /// The frames that settle what can be settled now. `flush_all` also
    /// acknowledges every completion waiting behind a gap.
    fn frames(&mut self, flush_all: bool) -> Vec<Frame> {
        let mut frames = Vec::new();
        let mut up_to = None;
        while let Some(sent) = self.ahead.remove(&self.next) {
            if !sent {
                up_to = Some(self.next);
                self.waiting = self.waiting.saturating_sub(1);
            }
            self.next = self.next.saturating_add(1);
        }
        if let Some(tag) = up_to {
            frames.push(Frame::UpTo(tag));
        }
        let excess = if flush_all {
            self.waiting
        } else {
            self.waiting.saturating_sub(self.room)
        };
        // The newest: the others may still be covered by one multiple ack.
        let unsent = self.ahead.iter_mut().rev().filter(|(_, sent)| !**sent);
        for (tag, sent) in unsent.take(excess) {
            *sent = true;
            frames.push(Frame::Single(*tag));
        }
        self.waiting = self.waiting.saturating_sub(excess);
        frames
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contiguous_completions_are_settled_by_one_multiple_ack() {
        let mut ledger = Ledger::new(100);
        for tag in [3, 1, 2, 5] {
            ledger.record(Settle::Ack(tag));
        }
        assert_eq!(ledger.frames(false), vec![Frame::UpTo(3)]);
        ledger.record(Settle::Ack(4));
        assert_eq!(ledger.frames(false), vec![Frame::UpTo(5)]);
        assert_eq!(ledger.frames(false), vec![]);
    }

    #[test]
    fn completions_behind_a_slow_delivery_beyond_the_room_are_acked_one_by_one() {
        let mut ledger = Ledger::new(3);
        for tag in [2, 3, 4] {
            ledger.record(Settle::Ack(tag));
        }
        assert_eq!(ledger.frames(false), vec![]);
        ledger.record(Settle::Ack(6));
        ledger.record(Settle::Ack(5));
        assert_eq!(
            ledger.frames(false),
            vec![Frame::Single(6), Frame::Single(5)]
        );
        ledger.record(Settle::Ack(7));
        assert_eq!(ledger.frames(false), vec![Frame::Single(7)]);
        // When the gap closes, one frame covers those that waited, and
        // nothing is acknowledged twice.
        ledger.record(Settle::Ack(1));
        assert_eq!(ledger.frames(false), vec![Frame::UpTo(4)]);
        ledger.record(Settle::Ack(8));
        assert_eq!(ledger.frames(false), vec![Frame::UpTo(8)]);
    }

    #[test]
    fn a_requeued_tag_takes_no_room_among_the_waiting() {
        let mut ledger = Ledger::new(2);
        ledger.record(Settle::Ack(2));
        ledger.record(Settle::Requeue(3));
        ledger.record(Settle::Ack(4));
        assert_eq!(ledger.frames(false), vec![]);
        ledger.record(Settle::Ack(5));
        assert_eq!(ledger.frames(false), vec![Frame::Single(5)]);
    }

    #[test]
    fn the_room_to_wait_is_the_window_beyond_the_worker_pool() {
        assert_eq!(room_to_wait(4096, 2048), 2048);
        assert_eq!(room_to_wait(1000, 100), 900);
        // A window no larger than the pool: a quarter of it.
        assert_eq!(room_to_wait(4096, 4000), 1024);
        assert_eq!(room_to_wait(100, 2048), 25);
        assert_eq!(room_to_wait(1, 1), 1);
    }

    #[test]
    fn a_requeued_tag_is_never_acked() {
        let mut ledger = Ledger::new(100);
        ledger.record(Settle::Ack(1));
        ledger.record(Settle::Requeue(2));
        assert_eq!(ledger.frames(false), vec![Frame::UpTo(1)]);
        ledger.record(Settle::Requeue(3));
        assert_eq!(ledger.frames(false), vec![]);
        ledger.record(Settle::Ack(4));
        assert_eq!(ledger.frames(false), vec![Frame::UpTo(4)]);
    }

    #[test]
    fn the_final_flush_acks_everything_completed() {
        let mut ledger = Ledger::new(100);
        ledger.record(Settle::Ack(2));
        ledger.record(Settle::Ack(4));
        assert_eq!(ledger.frames(false), vec![]);
        assert_eq!(
            ledger.frames(true),
            vec![Frame::Single(4), Frame::Single(2)]
        );
        assert_eq!(ledger.frames(true), vec![]);
    }
}
