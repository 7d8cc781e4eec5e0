//! Acknowledges deliveries in as few frames as possible.
//!
//! Workers finish in any order; the settler of a channel collects their
//! completions and acknowledges the highest tag below which everything is
//! settled with one `basic.ack(multiple)`. Under load one frame settles
//! dozens of deliveries, which is what lets the broker keep up. A slow
//! order would hold back every later tag (and with them the prefetch
//! window), so once enough completions wait behind a gap they are
//! acknowledged one by one.
//!
//! A settler belongs to one channel. When the channel dies its settler
//! stops, and completions sent to it are dropped: those deliveries are
//! redelivered by the broker and the idempotent use case absorbs them.

use std::collections::BTreeMap;

use lapin::Channel;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

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
    /// Starts the settler of `channel`. `capacity` is the prefetch: a
    /// delivery is settled once, so the queue can never hold more.
    /// `failed` is cancelled if an acknowledgement cannot be sent.
    pub fn spawn(
        channel: Channel,
        capacity: usize,
        tracker: &TaskTracker,
        failed: CancellationToken,
    ) -> Self {
        let (completions, receiver) = mpsc::channel(capacity.max(1));
        let straggler_limit = (capacity / 4).max(1);
        tracker.spawn(async move {
            let ledger = Ledger::new(straggler_limit);
            if let Err(error) = run(channel, receiver, ledger).await {
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

async fn run(
    channel: Channel,
    mut receiver: mpsc::Receiver<Settle>,
    mut ledger: Ledger,
) -> lapin::Result<()> {
    let mut batch = Vec::with_capacity(256);
    while receiver.recv_many(&mut batch, 256).await > 0 {
        for settle in batch.drain(..) {
            if let Settle::Requeue(tag) = settle {
                let options = BasicNackOptions {
                    multiple: false,
                    requeue: true,
                };
                channel.basic_nack(tag, options).await?;
            }
            ledger.record(settle);
        }
        for frame in ledger.frames(false) {
            send(&channel, frame).await?;
        }
    }
    // Every sender is gone: the session is over. Settle what can be.
    for frame in ledger.frames(true) {
        send(&channel, frame).await?;
    }
    Ok(())
}

async fn send(channel: &Channel, frame: Frame) -> lapin::Result<()> {
    let (tag, multiple) = match frame {
        Frame::UpTo(tag) => (tag, true),
        Frame::Single(tag) => (tag, false),
    };
    channel.basic_ack(tag, BasicAckOptions { multiple }).await
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
    straggler_limit: usize,
}

impl Ledger {
    fn new(straggler_limit: usize) -> Self {
        Self {
            next: 1,
            ahead: BTreeMap::new(),
            straggler_limit,
        }
    }

    fn record(&mut self, settle: Settle) {
        match settle {
            Settle::Ack(tag) => {
                self.ahead.entry(tag).or_insert(false);
            }
            // The nack was its own frame already.
            Settle::Requeue(tag) => {
                self.ahead.insert(tag, true);
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
            }
            self.next = self.next.saturating_add(1);
        }
        if let Some(tag) = up_to {
            frames.push(Frame::UpTo(tag));
        }
        let waiting = self.ahead.values().filter(|sent| !**sent).count();
        if waiting > 0 && (flush_all || waiting >= self.straggler_limit) {
            for (tag, sent) in self.ahead.iter_mut().filter(|(_, sent)| !**sent) {
                *sent = true;
                frames.push(Frame::Single(*tag));
            }
        }
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
    fn completions_behind_a_slow_delivery_are_acked_one_by_one_past_the_limit() {
        let mut ledger = Ledger::new(3);
        ledger.record(Settle::Ack(2));
        ledger.record(Settle::Ack(3));
        assert_eq!(ledger.frames(false), vec![]);
        ledger.record(Settle::Ack(4));
        assert_eq!(
            ledger.frames(false),
            vec![Frame::Single(2), Frame::Single(3), Frame::Single(4)]
        );
        // When the gap closes, nothing is acknowledged twice.
        ledger.record(Settle::Ack(1));
        assert_eq!(ledger.frames(false), vec![Frame::UpTo(1)]);
        ledger.record(Settle::Ack(5));
        assert_eq!(ledger.frames(false), vec![Frame::UpTo(5)]);
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
            vec![Frame::Single(2), Frame::Single(4)]
        );
    }
}
