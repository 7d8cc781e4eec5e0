//! The latency phases: publishing at a set rate while the daemon consumes,
//! publish→commit times, their quarter-second windows, and each process's CPU.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use futures_util::stream::StreamExt as _;
use lapin::Connection;
use lapin::options::BasicAckOptions;
use sqlx::postgres::PgPool;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::broker::{Publisher, consume, order};
use crate::report::{AckFrames, Breakdown, Latency};
use crate::world::{Daemon, Scrape, poll_until};
use crate::{Context as _, POLL, Phase, Res};

/// Publishes at `rate` for `length`, waits (30 s at most) until the daemon
/// has acked them all, and reads back when each order's row was inserted.
pub async fn measure_latency(
    publisher: &mut Publisher,
    db: &PgPool,
    daemon: &Daemon,
    pids: (Option<u32>, Option<u32>),
    phase: Phase,
    acked_before: usize,
) -> Res<Latency> {
    let Phase {
        label,
        rate,
        length,
        overload,
    } = phase;
    let sent = (rate * length.as_secs_f64()) as usize;
    let before = daemon.scrape().await?;
    let (machine, cpu) = (machine_ticks(), Cpu::sample(pids.0, pids.1));
    let paced = publish_paced(publisher, rate, std::iter::repeat_with(order).take(sent)).await?;
    let Paced {
        published,
        started_at,
        ended_at,
        rate,
    } = paced;
    let busy = machine_busy_since(machine);
    let cpu = Cpu::sample(pids.0, pids.1).since(cpu);
    publisher.flush().await?;
    let expected = (acked_before + sent) as f64;
    let mut after = Scrape::default();
    let all_acked = async || {
        after = daemon.scrape().await?;
        Ok(after.acked >= expected)
    };
    poll_until(Duration::from_secs(30), POLL, all_acked).await?;
    let time = Breakdown::between(&before, &after);
    let ack_frames = AckFrames::per_order(before.ack_frames, after.ack_frames, sent);

    let ids: Vec<Uuid> = published.keys().copied().collect();
    let query = "SELECT order_id, processed_at FROM orders WHERE order_id = ANY($1)";
    let rows: Vec<(Uuid, OffsetDateTime)> = sqlx::query_as(query)
        .bind(&ids)
        .fetch_all(db)
        .await
        .context("read processed_at")?;
    let mut millis: Vec<f64> = rows
        .iter()
        .filter_map(|(id, saved)| Some((*saved - *published.get(id)?).as_seconds_f64() * 1e3))
        .collect();
    let windows = Windows::of(&rows, &published, started_at);
    millis.sort_by(f64::total_cmp);
    let (p50, p99, max) = (
        quantile(&millis, 0.5),
        quantile(&millis, 0.99),
        quantile(&millis, 1.0),
    );
    let missing = sent - millis.len();
    // Commits while publishing, after the first fifth of the phase: once
    // the daemon falls behind, this is the most it commits per second.
    let from = started_at + (ended_at - started_at) / 5;
    let committed = rows
        .iter()
        .filter(|(_, saved)| (from..=ended_at).contains(saved));
    let committed_rate = committed.count() as f64 / (ended_at - from).as_seconds_f64().max(1e-3);
    Ok(Latency {
        label,
        overload,
        rate,
        committed_rate,
        sent,
        p50,
        p99,
        max,
        missing,
        windows,
        time,
        ack_frames,
        busy,
        cpu,
        reference: None,
    })
}

/// Orders published at a steady rate, and when each was sent.
struct Paced {
    published: HashMap<Uuid, OffsetDateTime>,
    started_at: OffsetDateTime,
    ended_at: OffsetDateTime,
    /// The rate reached.
    rate: f64,
}

/// Publishes `orders` at `rate` (each millisecond, those that are due).
async fn publish_paced(
    publisher: &mut Publisher,
    rate: f64,
    orders: impl ExactSizeIterator<Item = (Uuid, Vec<u8>)>,
) -> Res<Paced> {
    let sent = orders.len();
    let mut orders = orders.peekable();
    let mut published = HashMap::with_capacity(sent);
    let started = Instant::now();
    let started_at = OffsetDateTime::now_utc();
    while orders.peek().is_some() {
        let due = (started.elapsed().as_secs_f64() * rate) as usize;
        while published.len() < due
            && let Some((order_id, body)) = orders.next()
        {
            published.insert(order_id, OffsetDateTime::now_utc());
            publisher.send(order_id, &body).await?;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(Paced {
        published,
        started_at,
        ended_at: OffsetDateTime::now_utc(),
        rate: sent as f64 / started.elapsed().as_secs_f64(),
    })
}

/// The value at quantile `q` of sorted `values` (NaN if there are none).
fn quantile(values: &[f64], q: f64) -> f64 {
    let index = (values.len().saturating_sub(1) as f64 * q).round() as usize;
    values.get(index).copied().unwrap_or(f64::NAN)
}

/// The same orders at the same rate through the broker alone: what a
/// consumer that only acknowledges (each ack awaited) sees from publish to
/// delivery, while the daemon sits idle. The part of the daemon's
/// publish→commit that no consumer on this machine could avoid.
pub struct Reference {
    pub p50: f64,
    pub p99: f64,
    /// The p99 of each quarter second of publishing.
    pub windows: Windows,
    /// How busy the machine's cores were while publishing.
    pub busy: f64,
    pub cpu: Cpu,
    pub sent: usize,
}

/// Publishes at `rate` for `length` into `queue` (through `publisher`) while
/// an ack-only consumer records when each order arrives.
pub async fn reference_latency(
    broker: &Connection,
    publisher: &mut Publisher,
    queue: &str,
    prefetch: u16,
    rate: f64,
    length: Duration,
) -> Res<Reference> {
    let sent = ((rate * length.as_secs_f64()) as usize).max(1);
    // Made beforehand, so that the consumer knows which orders it waits for:
    // anything else in the queue (a delivery an earlier ack-only run left
    // unsettled when it closed its channel) is acked and not counted.
    let orders: Vec<(Uuid, Vec<u8>)> = std::iter::repeat_with(order).take(sent).collect();
    let mut expected: HashSet<Uuid> = orders.iter().map(|(id, _)| *id).collect();
    let (channel, mut consumer) = consume(broker, queue, prefetch).await?;
    let deadline = tokio::time::Instant::now() + length + Duration::from_secs(30);
    let arrivals = tokio::spawn(async move {
        let mut arrived = Vec::with_capacity(sent);
        while !expected.is_empty() {
            let delivery = tokio::time::timeout_at(deadline, consumer.next()).await;
            let delivery =
                delivery.map_err(|_| format!("{} of {sent} arrived in time", arrived.len()))?;
            let delivery = delivery
                .ok_or("the consumer was cancelled")?
                .context("delivery")?;
            let at = OffsetDateTime::now_utc();
            let id = delivery.properties.message_id().as_ref();
            let id = id.and_then(|id| Uuid::parse_str(id.as_str()).ok());
            let ack = delivery.ack(BasicAckOptions { multiple: false });
            ack.await.context("basic.ack")?;
            if let Some(id) = id.filter(|id| expected.remove(id)) {
                arrived.push((id, at));
            }
        }
        Res::Ok(arrived)
    });
    let (machine, cpu) = (machine_ticks(), Cpu::sample(None, None));
    let paced = publish_paced(publisher, rate, orders.into_iter()).await;
    let (busy, cpu) = (
        machine_busy_since(machine),
        Cpu::sample(None, None).since(cpu),
    );
    let flushed = publisher.flush().await;
    if paced.is_err() || flushed.is_err() {
        // Nothing more is coming: do not wait for the consumer's deadline.
        arrivals.abort();
    }
    let arrived = arrivals.await;
    let closed = channel.close(200, "done".into()).await;
    let (paced, _) = (paced?, flushed?);
    let arrived = arrived.context("the ack-only consumer")??;
    closed.context("close the ack-only consumer's channel")?;
    let mut millis: Vec<f64> = arrived
        .iter()
        .filter_map(|(id, at)| Some((*at - *paced.published.get(id)?).as_seconds_f64() * 1e3))
        .collect();
    millis.sort_by(f64::total_cmp);
    Ok(Reference {
        p50: quantile(&millis, 0.5),
        p99: quantile(&millis, 0.99),
        windows: Windows::of(&arrived, &paced.published, paced.started_at),
        busy,
        cpu,
        sent,
    })
}

/// The p99 of each quarter second of a phase (by publish time): whether a
/// phase's p99 comes from one stall or from the whole phase.
pub struct Windows {
    pub count: usize,
    /// The median of the windows' p99s.
    pub median_p99: f64,
    /// Windows whose p99 is above [`SLOW_WINDOW_MS`].
    pub slow: usize,
    /// The worst window's p99 and its start, in seconds into the phase.
    pub worst: (f64, f64),
}

const WINDOW: f64 = 0.25;
pub const SLOW_WINDOW_MS: f64 = 50.0;

impl Windows {
    /// With `LOAD_TIMELINE` set, also prints every window to stderr, with
    /// the phase's start to compare with the broker's and database's logs.
    fn of(
        rows: &[(Uuid, OffsetDateTime)],
        published: &HashMap<Uuid, OffsetDateTime>,
        started_at: OffsetDateTime,
    ) -> Self {
        let mut by_window: BTreeMap<u64, Vec<f64>> = BTreeMap::new();
        for (id, saved) in rows {
            let Some(sent_at) = published.get(id) else {
                continue;
            };
            let window = ((*sent_at - started_at).as_seconds_f64() / WINDOW) as u64;
            let millis = (*saved - *sent_at).as_seconds_f64() * 1e3;
            by_window.entry(window).or_default().push(millis);
        }
        let verbose = std::env::var_os("LOAD_TIMELINE").is_some();
        if verbose {
            eprintln!("[load]   phase started at {started_at} (UTC)");
        }
        let mut p99s = Vec::with_capacity(by_window.len());
        let mut worst = (0.0, f64::NAN);
        for (window, mut millis) in by_window {
            millis.sort_by(f64::total_cmp);
            let at = |q: f64| quantile(&millis, q);
            let start = window as f64 * WINDOW;
            if verbose {
                eprintln!(
                    "[load]   {start:5.2} s: {:5} orders, p50 {:6.1} ms, p99 {:6.1} ms",
                    millis.len(),
                    at(0.5),
                    at(0.99)
                );
            }
            if worst.1.is_nan() || at(0.99) > worst.1 {
                worst = (start, at(0.99));
            }
            p99s.push(at(0.99));
        }
        p99s.sort_by(f64::total_cmp);
        Windows {
            count: p99s.len(),
            median_p99: p99s.get(p99s.len() / 2).copied().unwrap_or(f64::NAN),
            slow: p99s.iter().filter(|p99| **p99 > SLOW_WINDOW_MS).count(),
            worst,
        }
    }
}

/// CPU clock ticks of the processes taking part, children included; of
/// the daemon's, those of the AMQP client's I/O thread; and the daemon's
/// context switches (each a thread that went to sleep or was preempted:
/// the wake-ups it costs).
#[derive(Clone, Copy)]
pub struct Cpu {
    pub daemon: u64,
    pub daemon_amqp_io: u64,
    pub daemon_switches: u64,
    pub broker: u64,
    pub postgres: u64,
    pub sim: u64,
    pub client: u64,
}

impl Cpu {
    pub fn sample(daemon: Option<u32>, sim: Option<u32>) -> Self {
        let of = |pid: Option<u32>| pid.and_then(|pid| ticks(&pid.to_string())).unwrap_or(0);
        Self {
            daemon: of(daemon),
            daemon_amqp_io: daemon.map_or(0, amqp_io_ticks),
            daemon_switches: daemon.map_or(0, switches),
            sim: of(sim),
            client: ticks("self").unwrap_or(0),
            broker: ticks_of_all("beam.smp"),
            postgres: ticks_of_all("postgres"),
        }
    }

    pub fn since(self, before: Self) -> Self {
        Self {
            daemon: self.daemon.saturating_sub(before.daemon),
            daemon_amqp_io: self.daemon_amqp_io.saturating_sub(before.daemon_amqp_io),
            daemon_switches: self.daemon_switches.saturating_sub(before.daemon_switches),
            broker: self.broker.saturating_sub(before.broker),
            postgres: self.postgres.saturating_sub(before.postgres),
            sim: self.sim.saturating_sub(before.sim),
            client: self.client.saturating_sub(before.client),
        }
    }
}

/// utime + stime + cutime + cstime (fields 14 to 17 of `/proc/<pid>/stat`).
/// The children's part matters for PostgreSQL: a backend that exits during
/// a phase was sampled alive before and is in the postmaster's cutime after.
fn ticks(pid: &str) -> Option<u64> {
    stat_ticks(&format!("/proc/{pid}/stat"), 4)
}

/// The sum of the first `fields` time fields (utime, stime, cutime,
/// cstime) of a `stat` file, of a process or of one of its threads.
fn stat_ticks(path: &str, fields: usize) -> Option<u64> {
    let stat = std::fs::read_to_string(path).ok()?;
    // Field 2, the command, may hold spaces; the fields after it cannot.
    let (_, rest) = stat.rsplit_once(')')?;
    let mut times = rest.split_whitespace().skip(11).take(fields);
    times.try_fold(0, |sum, field| Some(sum + field.parse::<u64>().ok()?))
}

/// The threads of `pid`, as their `/proc/<pid>/task/<tid>` folders.
fn threads(pid: u32) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|tasks| tasks.flatten().map(|task| task.path()).collect())
        .unwrap_or_default()
}

/// Voluntary and involuntary context switches of every thread of `pid`,
/// from `/proc/<pid>/task/*/status` (those of threads that have exited
/// are not counted).
fn switches(pid: u32) -> u64 {
    let of_thread = |status: String| -> u64 {
        status
            .lines()
            .filter(|line| line.contains("ctxt_switches:"))
            .filter_map(|line| line.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum()
    };
    threads(pid)
        .iter()
        .filter_map(|task| std::fs::read_to_string(task.join("status")).ok())
        .map(of_thread)
        .sum()
}

/// The CPU ticks (utime and stime) of lapin's I/O thread
/// (`lapin-io-loop`) in `pid`: frame parsing and the hand-over of
/// deliveries and acks to and from the runtime.
fn amqp_io_ticks(pid: u32) -> u64 {
    threads(pid)
        .iter()
        .filter(|task| {
            std::fs::read_to_string(task.join("comm"))
                .is_ok_and(|comm| comm.trim().starts_with("lapin-io"))
        })
        .filter_map(|task| stat_ticks(&task.join("stat").to_string_lossy(), 2))
        .sum()
}

/// The machine's `(busy, total)` CPU ticks over all cores, from
/// `/proc/stat` (idle and I/O wait are not busy).
fn machine_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .map(|field| field.parse().ok())
        .collect::<Option<_>>()?;
    let total: u64 = fields.iter().take(8).sum();
    let idle = fields.get(3)? + fields.get(4)?;
    Some((total - idle, total))
}

/// The share of the machine's CPU time that was busy since `before`.
fn machine_busy_since(before: Option<(u64, u64)>) -> f64 {
    match (before, machine_ticks()) {
        (Some((busy0, total0)), Some((busy1, total1))) if total1 > total0 => {
            (busy1 - busy0) as f64 / (total1 - total0) as f64
        }
        _ => f64::NAN,
    }
}

/// The ticks of every process whose command name is `name`.
fn ticks_of_all(name: &str) -> u64 {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let comm = |pid: &String| std::fs::read_to_string(format!("/proc/{pid}/comm"));
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().into_string().ok())
        .filter(|pid| pid.bytes().all(|b| b.is_ascii_digit()))
        .filter(|pid| comm(pid).is_ok_and(|comm| comm.trim() == name))
        .filter_map(|pid| ticks(&pid))
        .sum()
}
