//! Long runs: `--rate` pacing, so that a provider just back from an
//! outage is not flooded, and a progress line on stderr about once a second.

use std::time::{Duration, Instant};

use super::output::note;

/// Spaces messages out to at most `rate` a second, measured from the first,
/// so that a slow message is made up for by the next ones.
pub struct Pacer {
    rate: Option<f64>,
    started: Instant,
    sent: u64,
}

impl Pacer {
    pub fn new(rate: Option<f64>) -> Self {
        Self {
            rate,
            started: Instant::now(),
            sent: 0,
        }
    }

    /// Sleeps until the next message is due, and counts it as sent.
    pub async fn wait(&mut self) {
        if let Some(rate) = self.rate {
            // A rate so low that the next message is due beyond
            // `Duration::MAX` waits that long instead of overflowing.
            let due = Duration::try_from_secs_f64(self.sent as f64 / rate).unwrap_or(Duration::MAX);
            if let Some(wait) = due.checked_sub(self.started.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
        self.sent = self.sent.saturating_add(1);
    }
}

/// Says on stderr how far a run has come, at most once a second.
pub struct Progress {
    verb: &'static str,
    last: Instant,
    count: u64,
}

const PROGRESS_EVERY: Duration = Duration::from_secs(1);

impl Progress {
    /// `verb` starts each line: `replayed 1200…`.
    pub fn new(verb: &'static str) -> Self {
        Self {
            verb,
            last: Instant::now(),
            count: 0,
        }
    }

    /// One more done.
    pub fn add(&mut self) {
        self.count = self.count.saturating_add(1);
        if self.last.elapsed() >= PROGRESS_EVERY {
            self.last = Instant::now();
            note(format_args!("{} {}…", self.verb, self.count));
        }
    }

    pub fn count(&self) -> u64 {
        self.count
    }
}
