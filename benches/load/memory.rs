//! The daemon's resident memory over a run: `VmRSS` read from `/proc` every
//! quarter second, from its start until a minute after its last phase, and
//! the two phases that exist to show it: a provider that answers in 2 s,
//! and the quiet minute after the last burst.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use order_processor::domain::OrderMessage;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::broker::Publisher;
use crate::world::{Daemon, Scrape, poll_until};
use crate::{Context as _, POLL, Res};

const EVERY: Duration = Duration::from_millis(250);
/// How long the daemon sits idle after its last phase before its memory
/// is judged.
pub const QUIET: Duration = Duration::from_secs(60);
/// The payment token payment-sim answers after 2 s (with `--latency-ms 0`).
const SLOW_TOKEN: &str = "tok_slow";

/// A part of the run, from its mark to the next one.
struct Mark {
    at: Duration,
    label: String,
    /// Print the samples this far apart, not only the part's peak.
    series: Option<Duration>,
}

#[derive(Default)]
struct Samples {
    /// KiB of a daemon that is ready and has nothing to do.
    idle: u64,
    /// Since the sampler started, and KiB.
    rss: Vec<(Duration, u64)>,
    marks: Vec<Mark>,
}

/// Samples the daemon's RSS in the background until [`Self::finish`].
pub struct RssTimeline {
    started: Instant,
    samples: Arc<Mutex<Samples>>,
    task: JoinHandle<()>,
}

impl RssTimeline {
    /// Samples `pid`; `idle` is what the figures are compared with.
    pub fn start(pid: u32, idle: u64) -> Self {
        let started = Instant::now();
        let samples = Arc::new(Mutex::new(Samples {
            idle,
            ..Samples::default()
        }));
        let shared = Arc::clone(&samples);
        let task = tokio::spawn(async move {
            let mut every = tokio::time::interval(EVERY);
            loop {
                every.tick().await;
                let Some(kib) = rss_kib(pid) else { return };
                if let Ok(mut samples) = shared.lock() {
                    samples.rss.push((started.elapsed(), kib));
                }
            }
        });
        Self {
            started,
            samples,
            task,
        }
    }

    /// Starts a part of the run called `label`.
    pub fn mark(&self, label: &str) {
        self.mark_series(label, None);
    }

    /// Starts a part whose samples are printed `every` so far apart.
    pub fn mark_series(&self, label: &str, every: Option<Duration>) {
        if let Ok(mut samples) = self.samples.lock() {
            samples.marks.push(Mark {
                at: self.started.elapsed(),
                label: label.to_owned(),
                series: every,
            });
        }
    }

    pub fn finish(self) -> RssReport {
        self.task.abort();
        let samples = self
            .samples
            .lock()
            .map(|mut samples| std::mem::take(&mut *samples))
            .unwrap_or_default();
        RssReport(samples)
    }
}

/// `VmRSS` of `pid` in KiB; `None` once the process is gone.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?;
    line.trim().trim_end_matches("kB").trim().parse().ok()
}

/// Publishes `orders` orders that payment-sim answers after 2 s, and waits
/// until the daemon has acked them (`acked_before` + `orders` in all): the
/// worker pool full of charges that take their time.
pub async fn slow_provider(
    publisher: &mut Publisher,
    daemon: &Daemon,
    orders: usize,
    acked_before: usize,
) -> Res<()> {
    for _ in 0..orders {
        let id = Uuid::new_v4();
        let mut message = OrderMessage::example(id);
        SLOW_TOKEN.clone_into(&mut message.payment_token);
        let body = message.to_json().context("serialize a slow order")?;
        publisher.send(id, &body).await?;
    }
    publisher.flush().await?;
    let expected = (acked_before + orders) as f64;
    let limit = Duration::from_secs(30) + Duration::from_millis(10 * orders as u64);
    let all_acked = async || {
        let scrape: Scrape = daemon.scrape().await?;
        Ok(scrape.acked >= expected)
    };
    if !poll_until(limit, POLL, all_acked).await? {
        return Err(format!(
            "the daemon did not ack {orders} slow orders in {limit:?}"
        ));
    }
    Ok(())
}

/// What the timeline recorded, by part of the run.
pub struct RssReport(Samples);

impl RssReport {
    fn mib(kib: u64) -> f64 {
        kib as f64 / 1024.0
    }

    /// The last sample of the run.
    fn last_kib(&self) -> Option<u64> {
        self.0.rss.last().map(|(_, kib)| *kib)
    }

    /// Samples between the mark `i` and the next one.
    fn part(&self, i: usize) -> &[(Duration, u64)] {
        let marks = &self.0.marks;
        let Some(from) = marks.get(i).map(|mark| mark.at) else {
            return &[];
        };
        let to = marks.get(i + 1).map_or(Duration::MAX, |mark| mark.at);
        let first = self.0.rss.partition_point(|(at, _)| *at < from);
        let end = self.0.rss.partition_point(|(at, _)| *at < to);
        self.0.rss.get(first..end).unwrap_or_default()
    }

    /// Lines to print: the idle figure, then each part's peak and where it
    /// ended, and the samples of the parts marked as series.
    pub fn lines(&self) -> Vec<String> {
        let idle = self.0.idle.max(1);
        let mut lines = vec![format!(
            "daemon RSS (VmRSS every {} ms): {:.1} MiB idle (a fresh daemon, ready, nothing to consume)",
            EVERY.as_millis(),
            Self::mib(idle)
        )];
        for (i, mark) in self.0.marks.iter().enumerate() {
            let part = self.part(i);
            let (Some(peak), Some((_, last))) =
                (part.iter().map(|(_, kib)| *kib).max(), part.last())
            else {
                continue;
            };
            lines.push(format!(
                "    {}: peak {:.1} MiB ({:.2} × idle), {:.1} MiB at its end",
                mark.label,
                Self::mib(peak),
                peak as f64 / idle as f64,
                Self::mib(*last)
            ));
            if let Some(every) = mark.series {
                let mut next = mark.at;
                let mut series = Vec::new();
                for (at, kib) in part {
                    if *at >= next {
                        series.push(format!(
                            "{:.0} s {:.1}",
                            (*at - mark.at).as_secs_f64(),
                            Self::mib(*kib)
                        ));
                        next = *at + every;
                    }
                }
                lines.push(format!("      MiB over time: {}", series.join(", ")));
            }
        }
        if let Some(last) = self.last_kib() {
            lines.push(format!(
                "    at the end of the run: {:.1} MiB = {:.2} × idle",
                Self::mib(last),
                last as f64 / idle as f64
            ));
        }
        lines
    }
}
