//! Coalesces concurrent single requests into batches.
//!
//! Each order asks its own question ("already processed?", "save this"),
//! but answering each with its own statement and commit would cap the
//! daemon at the database's per-transaction rate. A `Batcher` queues the
//! requests on a bounded channel; a few worker tasks each take whatever has
//! queued up (at most `max_batch`), run it as one batch and hand every caller
//! its own answer. Under heavy load batches grow by themselves, because
//! requests pile up while the previous batch runs. Under light load a worker
//! that finds a lone request waits up to `linger` for more before running
//! it: a statement costs the database and the client about the same for one
//! row as for ten, so a millisecond or two of waiting is what keeps the
//! cost per order low (and the machine unsaturated) at moderate rates.
//!
//! Each worker keeps a state of its own from one batch to the next (the
//! database adapter keeps its connection there), and lets go of it once it
//! has waited `idle` for a request.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Mutex, mpsc, oneshot};
use tokio_util::task::TaskTracker;

type Job<Req, Resp> = (Req, oneshot::Sender<Resp>);

/// The batcher stopped before answering (the daemon is shutting down).
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the batch worker stopped")]
pub struct BatcherClosed;

/// A handle to submit requests; cheap to clone.
pub struct Batcher<Req, Resp> {
    jobs: mpsc::Sender<Job<Req, Resp>>,
}

impl<Req, Resp> Clone for Batcher<Req, Resp> {
    fn clone(&self) -> Self {
        Self {
            jobs: self.jobs.clone(),
        }
    }
}

/// How a batcher is sized.
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    /// Requests that may wait for a worker; senders wait when it is full.
    pub queue: usize,
    /// The most requests one batch takes.
    pub max_batch: usize,
    /// Batches that may run at the same time.
    pub workers: usize,
    /// How long a batch that is not full waits for more requests.
    pub linger: Duration,
    /// How long a worker waits for a request before it drops its state and
    /// starts again from the default.
    pub idle: Duration,
}

impl<Req: Send + 'static, Resp: Send + 'static> Batcher<Req, Resp> {
    /// Starts the workers on `tracker`. `run` receives a worker's state and
    /// a batch, and must give the state back with exactly one response per
    /// request, in the same order; each worker starts from `S::default()`,
    /// and again after `idle` without requests. The workers stop when every
    /// handle has been dropped.
    pub fn spawn<S, F, Fut>(limits: BatchLimits, tracker: &TaskTracker, run: F) -> Self
    where
        S: Default + Send + 'static,
        F: Fn(S, Vec<Req>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = (S, Vec<Resp>)> + Send,
    {
        let (jobs, receiver) = mpsc::channel(limits.queue.max(1));
        let receiver = Arc::new(Mutex::new(receiver));
        for _ in 0..limits.workers.max(1) {
            let receiver = Arc::clone(&receiver);
            let run = run.clone();
            let max_batch = limits.max_batch.max(1);
            let BatchLimits { linger, idle, .. } = limits;
            tracker.spawn(async move {
                let mut jobs = Vec::with_capacity(max_batch);
                let mut state = S::default();
                loop {
                    // Both the lock and `recv_many` are cancel safe: when
                    // the wait times out, no request has been taken.
                    let first = async {
                        let mut receiver = receiver.lock().await;
                        let received = receiver.recv_many(&mut jobs, max_batch).await;
                        (receiver, received)
                    };
                    let Ok((mut receiver, received)) = tokio::time::timeout(idle, first).await
                    else {
                        state = S::default();
                        continue;
                    };
                    if received == 0 {
                        break;
                    }
                    gather(&mut receiver, &mut jobs, max_batch, linger).await;
                    drop(receiver);
                    let (requests, replies): (Vec<Req>, Vec<oneshot::Sender<Resp>>) =
                        jobs.drain(..).unzip();
                    let (kept, responses) = run(std::mem::take(&mut state), requests).await;
                    state = kept;
                    for (reply, response) in replies.into_iter().zip(responses) {
                        // A caller that stopped waiting (cancelled at shutdown)
                        // no longer needs its answer.
                        let _ = reply.send(response);
                    }
                }
            });
        }
        Self { jobs }
    }

    /// Submits one request and waits for its answer.
    pub async fn call(&self, request: Req) -> Result<Resp, BatcherClosed> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send((request, reply))
            .await
            .map_err(|_| BatcherClosed)?;
        answer.await.map_err(|_| BatcherClosed)
    }
}

/// Adds what arrives within `linger` to a batch that is not full yet.
async fn gather<T>(
    receiver: &mut mpsc::Receiver<T>,
    batch: &mut Vec<T>,
    max: usize,
    linger: Duration,
) {
    let deadline = tokio::time::Instant::now().checked_add(linger);
    let Some(deadline) = deadline.filter(|_| !linger.is_zero()) else {
        return;
    };
    while let Some(room) = max.checked_sub(batch.len()).filter(|room| *room > 0) {
        match tokio::time::timeout_at(deadline, receiver.recv_many(batch, room)).await {
            // The channel closed: run what there is.
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::arithmetic_side_effects)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// A batcher with one worker that doubles numbers and records the size
    /// of every batch it runs.
    fn recording(
        max_batch: usize,
        linger: Duration,
    ) -> (
        TaskTracker,
        Arc<std::sync::Mutex<Vec<usize>>>,
        Batcher<u32, u32>,
    ) {
        let tracker = TaskTracker::new();
        let sizes = Arc::new(std::sync::Mutex::new(Vec::new()));
        let recorded = Arc::clone(&sizes);
        let limits = BatchLimits {
            queue: 100,
            max_batch,
            workers: 1,
            linger,
            idle: Duration::from_secs(3600),
        };
        let batcher = Batcher::spawn(limits, &tracker, move |(): (), requests: Vec<u32>| {
            recorded.lock().unwrap().push(requests.len());
            async move { ((), requests.into_iter().map(|r| r * 2).collect::<Vec<_>>()) }
        });
        (tracker, sizes, batcher)
    }

    #[tokio::test(start_paused = true)]
    async fn a_lone_request_waits_up_to_the_linger_for_company() {
        let linger = Duration::from_millis(20);
        let (tracker, sizes, batcher) = recording(10, linger);

        let early = batcher.clone();
        let first = tokio::spawn(async move { early.call(1).await.unwrap() });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(batcher.call(2).await.unwrap(), 4);
        assert_eq!(first.await.unwrap(), 2);
        assert_eq!(*sizes.lock().unwrap(), [2], "one batch for both");

        let started = tokio::time::Instant::now();
        assert_eq!(batcher.call(3).await.unwrap(), 6);
        assert!(started.elapsed() >= linger, "alone, it waited the linger");
        assert_eq!(*sizes.lock().unwrap(), [2, 1]);

        drop(batcher);
        tracker.close();
        tracker.wait().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_batch_runs_without_waiting_for_the_linger() {
        let linger = Duration::from_secs(3600);
        let (tracker, sizes, batcher) = recording(2, linger);
        let started = tokio::time::Instant::now();
        let (a, b) = tokio::join!(batcher.call(1), batcher.call(2));
        assert_eq!((a.unwrap(), b.unwrap()), (2, 4));
        assert!(started.elapsed() < linger);
        assert_eq!(*sizes.lock().unwrap(), [2]);

        drop(batcher);
        tracker.close();
        tracker.wait().await;
    }

    #[tokio::test]
    async fn concurrent_requests_share_batches_and_get_their_own_answers() {
        let tracker = TaskTracker::new();
        let batches = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&batches);
        let batcher = Batcher::spawn(
            BatchLimits {
                queue: 1000,
                max_batch: 100,
                workers: 1,
                linger: Duration::ZERO,
                idle: Duration::from_secs(3600),
            },
            &tracker,
            move |(): (), requests: Vec<u32>| {
                let counted = Arc::clone(&counted);
                async move {
                    counted.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                    ((), requests.into_iter().map(|r| r * 2).collect::<Vec<_>>())
                }
            },
        );
        let calls: Vec<_> = (0..500u32)
            .map(|i| {
                let batcher = batcher.clone();
                tokio::spawn(async move { (i, batcher.call(i).await.unwrap()) })
            })
            .collect();
        for call in calls {
            let (i, answer) = call.await.unwrap();
            assert_eq!(answer, i * 2);
        }
        assert!(
            batches.load(Ordering::SeqCst) < 100,
            "requests were not batched"
        );
        drop(batcher);
        tracker.close();
        tracker.wait().await;
    }

    /// Each worker's state goes from one batch to the next, and back to
    /// the default once the worker has waited `idle` for a request.
    #[tokio::test(start_paused = true)]
    async fn a_worker_keeps_its_state_between_batches_until_it_is_idle() {
        let tracker = TaskTracker::new();
        let idle = Duration::from_secs(20);
        let limits = BatchLimits {
            queue: 10,
            max_batch: 10,
            workers: 1,
            linger: Duration::ZERO,
            idle,
        };
        // The state counts the batches the worker ran since it last started
        // from the default; every answer is that count.
        let batcher = Batcher::spawn(
            limits,
            &tracker,
            |runs: u32, requests: Vec<u32>| async move {
                let runs = runs + 1;
                (runs, vec![runs; requests.len()])
            },
        );
        assert_eq!(batcher.call(0).await.unwrap(), 1);
        tokio::time::sleep(idle / 2).await;
        assert_eq!(batcher.call(0).await.unwrap(), 2, "kept between batches");
        tokio::time::sleep(idle + Duration::from_secs(1)).await;
        assert_eq!(batcher.call(0).await.unwrap(), 1, "dropped when idle");

        drop(batcher);
        tracker.close();
        tracker.wait().await;
    }
}
