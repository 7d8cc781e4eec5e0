//! The figures of a run and how they are printed.

use std::process::Command;

use crate::measure::{Cpu, Reference, SLOW_WINDOW_MS, Windows};
use crate::memory::RssReport;
use crate::world::{Buckets, DaemonConfig, Scrape, StatementScrape, threads};

pub struct AckOnly {
    pub rate: f64,
    pub cpu: Cpu,
}

pub struct Drain {
    pub rate: f64,
    pub cpu: Cpu,
    pub time: Breakdown,
    pub ack_frames: AckFrames,
}

/// Where an order's time in the daemon went, on average over the orders
/// settled between two scrapes, from the daemon's own histograms.
pub struct Breakdown {
    /// From delivery to settlement.
    pub processing_ms: f64,
    /// Its 99th percentile, interpolated within the histogram's bucket.
    pub processing_p99_ms: f64,
    /// Its lookup and its save: the wait for the answer (batch forming,
    /// then the statement), and each batch statement's size and duration.
    pub lookup: StatementTime,
    pub save: StatementTime,
    /// The HTTP request of its charge.
    pub payment_ms: f64,
    pub payment_p99_ms: f64,
}

pub struct StatementTime {
    pub wait_ms: f64,
    pub wait_p99_ms: f64,
    pub statement_p99_ms: f64,
    pub batch_orders: f64,
    pub statement_ms: f64,
}

impl StatementTime {
    fn between(before: &StatementScrape, after: &StatementScrape) -> Self {
        let statements = (after.statements - before.statements).max(1.0);
        Self {
            wait_ms: (after.wait_seconds - before.wait_seconds) * 1e3
                / (after.waits - before.waits).max(1.0),
            wait_p99_ms: p99_ms(&before.wait_buckets, &after.wait_buckets),
            statement_p99_ms: p99_ms(&before.statement_buckets, &after.statement_buckets),
            batch_orders: (after.orders - before.orders) / statements,
            statement_ms: (after.statement_seconds - before.statement_seconds) * 1e3 / statements,
        }
    }
}

impl Breakdown {
    pub fn between(before: &Scrape, after: &Scrape) -> Self {
        let acked = (after.acked - before.acked).max(1.0);
        let payments = (after.payments - before.payments).max(1.0);
        Self {
            processing_ms: (after.processing_seconds - before.processing_seconds) * 1e3 / acked,
            processing_p99_ms: p99_ms(&before.processing_buckets, &after.processing_buckets),
            lookup: StatementTime::between(&before.lookup, &after.lookup),
            save: StatementTime::between(&before.save, &after.save),
            payment_ms: (after.payment_seconds - before.payment_seconds) * 1e3 / payments,
            payment_p99_ms: p99_ms(&before.payment_buckets, &after.payment_buckets),
        }
    }
}

/// The quantile `q` of what was observed between two scrapes of a
/// histogram, interpolated linearly within its bucket (as PromQL's
/// `histogram_quantile`); the lower bound of the last bucket if it falls
/// there, NaN if nothing was observed.
fn bucket_quantile(before: &Buckets, after: &Buckets, q: f64) -> f64 {
    let (before, after) = (&before.0, &after.0);
    let count = |i: usize| {
        let at = |buckets: &[(f64, f64)]| buckets.get(i).map_or(0.0, |(_, count)| *count);
        at(after) - at(before)
    };
    let total = after.len().checked_sub(1).map_or(0.0, count);
    if total <= 0.0 {
        return f64::NAN;
    }
    let rank = q * total;
    let (mut lower, mut below) = (0.0, 0.0);
    for (i, (upper, _)) in after.iter().enumerate() {
        let cumulative = count(i);
        if cumulative >= rank {
            if upper.is_infinite() {
                return lower;
            }
            let share = (rank - below) / (cumulative - below).max(f64::MIN_POSITIVE);
            return lower + (upper - lower) * share;
        }
        (lower, below) = (*upper, cumulative);
    }
    lower
}

/// The p99 in milliseconds of what a histogram observed between two scrapes.
fn p99_ms(before: &Buckets, after: &Buckets) -> f64 {
    bucket_quantile(before, after, 0.99) * 1e3
}

impl std::fmt::Display for Breakdown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (lookup, save) = (&self.lookup, &self.save);
        let rest = self.processing_ms - lookup.wait_ms - self.payment_ms - save.wait_ms;
        write!(
            f,
            "in the daemon {:.1} ms per order from delivery to settlement (p99 about {:.0} ms): \
             lookup {:.1} ms (p99 {:.0}), payment call {:.1} ms (p99 {:.0}), save {:.1} ms \
             (p99 {:.0}), the rest {:.1} ms; statements: lookup batches \
             of {:.0} in {:.1} ms (p99 {:.0}), save batches of {:.0} in {:.1} ms (p99 {:.0})",
            self.processing_ms,
            self.processing_p99_ms,
            lookup.wait_ms,
            lookup.wait_p99_ms,
            self.payment_ms,
            self.payment_p99_ms,
            save.wait_ms,
            save.wait_p99_ms,
            rest.max(0.0),
            lookup.batch_orders,
            lookup.statement_ms,
            lookup.statement_p99_ms,
            save.batch_orders,
            save.statement_ms,
            save.statement_p99_ms,
        )
    }
}

/// `basic.ack` frames the daemon sent per 100 orders.
#[derive(Clone, Copy)]
pub struct AckFrames {
    multiple: f64,
    single: f64,
}

impl AckFrames {
    pub fn per_order(before: (f64, f64), after: (f64, f64), orders: usize) -> Self {
        let per_100 = |frames: f64| frames * 100.0 / orders.max(1) as f64;
        Self {
            multiple: per_100(after.0 - before.0),
            single: per_100(after.1 - before.1),
        }
    }
}

impl std::fmt::Display for AckFrames {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ack frames per 100 orders: {:.1} multiple, {:.1} one by one",
            self.multiple, self.single
        )
    }
}

pub struct Latency {
    pub label: String,
    /// The phase that measured the sustained rate.
    pub overload: bool,
    pub rate: f64,
    /// Orders committed per second while publishing (after the first fifth).
    pub committed_rate: f64,
    pub sent: usize,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
    pub missing: usize,
    /// The p99 of each quarter second of publishing.
    pub windows: Windows,
    /// Where an order's time in the daemon went in this phase.
    pub time: Breakdown,
    pub ack_frames: AckFrames,
    /// How busy the machine's cores were while publishing.
    pub busy: f64,
    /// What each process spent while publishing (`client`: the publisher).
    pub cpu: Cpu,
    /// The broker alone at the same rate, with an ack-only consumer.
    pub reference: Option<Reference>,
}

pub struct Report {
    pub n: usize,
    pub message_bytes: usize,
    pub config: DaemonConfig,
    /// Each ack awaited in turn, just before and just after the daemon's
    /// drain: what the throughput target is set against.
    pub ack_awaited: [AckOnly; 2],
    /// Each ack sent without waiting: the broker's limit for single acks.
    pub ack_each: AckOnly,
    pub ack_multiple: AckOnly,
    pub drain: Drain,
    /// Publishing at the drain rate: how fast the daemon commits meanwhile.
    pub sustained: Option<Latency>,
    pub latency: Vec<Latency>,
    /// The daemon's resident memory over the run.
    pub rss: RssReport,
    pub saved: usize,
    /// Sequential scans of `orders` over the whole run, and rows they read.
    pub seq_scans: (i64, i64),
    pub stopped: Option<i32>,
    pub problems: Vec<String>,
}

impl Report {
    pub fn print(&self) {
        let getconf = Command::new("getconf").arg("CLK_TCK").output();
        let hz = getconf.map(|out| String::from_utf8_lossy(&out.stdout).trim().parse());
        let hz: f64 = hz.ok().and_then(Result::ok).unwrap_or(100.0);
        let us = |ticks: u64| ticks as f64 * 1e6 / hz / self.n as f64;
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let model = cpuinfo
            .lines()
            .find_map(|line| line.strip_prefix("model name")?.split_once(':'));
        let model = model.map_or("unknown CPU", |(_, model)| model.trim());
        let build = if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        };
        let (c, d) = (&self.config, &self.drain);
        println!();
        println!(
            "order-processor load benchmark (N={}, ~{} B messages, quorum queues, \
             payment-sim 0 ms, {build} build)",
            self.n, self.message_bytes
        );
        println!(
            "machine: {cores} × {model}; prefetch {} (daemon and ack-only consumer), daemon concurrency {}, \
             charges in flight {}, runtime threads {}, database pool {}, {}",
            c.prefetch,
            c.concurrency,
            match c.payment_in_flight {
                0 => "as many as the worker pool".to_owned(),
                n => format!("at most {n}"),
            },
            threads(c.threads),
            c.pool,
            if order_processor::telemetry::sdk_disabled() {
                "OTEL_SDK_DISABLED (no span recorded)"
            } else {
                "spans recorded, not exported"
            }
        );
        let [before, after] = &self.ack_awaited;
        for (how, a) in [
            ("each ack awaited, before the daemon", before),
            ("each ack awaited, after the daemon", after),
            ("ack per message, pipelined", &self.ack_each),
            ("multiple every 64", &self.ack_multiple),
        ] {
            println!(
                "{:<58}{:>8} msgs/s   broker {:.0} µs/msg, bench consumer {:.0} µs/msg",
                format!("ack-only consumer ({how})"),
                grouped(a.rate),
                us(a.cpu.broker),
                us(a.cpu.client)
            );
        }
        // The mean of the two runs around the drain.
        let reference = f64::midpoint(before.rate, after.rate);
        println!(
            "{:<58}{:>8} orders/s = {:.2} × the ack-only consumer awaiting each ack \
             ({:.2} × pipelined, {:.2} × multiple)",
            "daemon drain",
            grouped(d.rate),
            d.rate / reference,
            d.rate / self.ack_each.rate,
            d.rate / self.ack_multiple.rate,
        );
        let parts = [d.cpu.daemon, d.cpu.broker, d.cpu.postgres, d.cpu.sim].map(us);
        let [daemon, broker, postgres, sim] = parts;
        println!(
            "CPU per order: daemon {daemon:.0} µs, broker {broker:.0} µs, PostgreSQL {postgres:.0} µs, \
             payment-sim {sim:.0} µs (sum {:.0} µs; {cores} cores offer {:.0} µs per order at this rate); \
             of the daemon's, its AMQP I/O thread {:.0} µs; {:.2} daemon context switches per order",
            parts.iter().sum::<f64>(),
            cores as f64 * 1e6 / d.rate,
            us(d.cpu.daemon_amqp_io),
            d.cpu.daemon_switches as f64 / self.n.max(1) as f64,
        );
        println!("{}; {}", d.time, d.ack_frames);
        let (scans, rows) = self.seq_scans;
        println!(
            "PostgreSQL, whole run: {} sequential scans of orders read {} rows ({:.0} per order saved)",
            grouped(scans as f64),
            grouped(rows as f64),
            rows as f64 / self.saved as f64
        );
        if let Some(s) = &self.sustained {
            println!(
                "{:<58}{:>8} orders/s = {:.2} × drain, {:.2} × the ack-only consumer awaiting each ack \
                 (publishing at {}/s, CPU {:.0} % busy)",
                "sustained, publishing while consuming",
                grouped(s.committed_rate),
                s.committed_rate / d.rate,
                s.committed_rate / reference,
                grouped(s.rate),
                s.busy * 100.0,
            );
        }
        for l in &self.latency {
            println!(
                "publish→commit at {} ({}/s, CPU {:.0} % busy): p50 {:.1} ms, p99 {:.1} ms, \
                 max {:.1} ms; {} of {} not saved after 30 s",
                l.label,
                grouped(l.rate),
                l.busy * 100.0,
                l.p50,
                l.p99,
                l.max,
                l.missing,
                grouped(l.sent as f64)
            );
            if let Some(r) = &l.reference {
                let per_order = |ticks: u64| ticks as f64 * 1e6 / hz / r.sent.max(1) as f64;
                let w = &r.windows;
                println!(
                    "    the broker alone at that rate, publish→delivery to an ack-only consumer \
                     awaiting each ack (CPU {:.0} % busy): p50 {:.1} ms, p99 {:.1} ms, \
                     p99 of each quarter second: median {:.1} ms, above {SLOW_WINDOW_MS:.0} ms \
                     in {} of {} (worst {:.1} ms); broker {:.0} µs, publisher and consumer {:.0} µs \
                     per order",
                    r.busy * 100.0,
                    r.p50,
                    r.p99,
                    w.median_p99,
                    w.slow,
                    w.count,
                    w.worst.1,
                    per_order(r.cpu.broker),
                    per_order(r.cpu.client),
                );
            }
            println!("    {}", l.time);
            let w = &l.windows;
            println!(
                "    p99 of each quarter second: median {:.1} ms, above {SLOW_WINDOW_MS:.0} ms in {} of {} \
                 (worst {:.1} ms, {:.2} s into the phase)",
                w.median_p99, w.slow, w.count, w.worst.1, w.worst.0
            );
            println!("    {}", l.ack_frames);
            let per_order = |ticks: u64| ticks as f64 * 1e6 / hz / l.sent.max(1) as f64;
            let c = &l.cpu;
            println!(
                "    CPU per order at {}: daemon {:.0} µs (AMQP I/O thread {:.0} µs; {:.2} context \
                 switches), broker {:.0} µs, PostgreSQL {:.0} µs, payment-sim {:.0} µs, publisher {:.0} µs",
                l.label,
                per_order(c.daemon),
                per_order(c.daemon_amqp_io),
                c.daemon_switches as f64 / l.sent.max(1) as f64,
                per_order(c.broker),
                per_order(c.postgres),
                per_order(c.sim),
                per_order(c.client),
            );
        }
        for line in self.rss.lines() {
            println!("{line}");
        }
        match self.stopped {
            Some(code) => println!("daemon stop on SIGTERM: exit {code}"),
            None => println!("daemon stop on SIGTERM: no exit within 40 s (killed)"),
        }
        for problem in &self.problems {
            println!("PROBLEM: {problem}");
        }
    }
}

/// 25100.4 → "25 100".
fn grouped(value: f64) -> String {
    let digits = format!("{:.0}", value.max(0.0));
    let mut out = String::new();
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(' ');
        }
        out.push(digit);
    }
    out
}
