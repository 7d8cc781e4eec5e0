//! End-to-end load benchmark of `order-processor` against the real RabbitMQ,
//! PostgreSQL and `payment-sim` of this machine.
//!
//! A throughput means little on its own on a shared machine, so one run
//! measures, with the same ~500-byte orders: (1) what a consumer without
//! any work per message reaches: a quorum queue drained by consumers that
//! only acknowledge, with the daemon's prefetch: each ack awaited before
//! the next delivery (the null consumer the throughput target is set
//! against, run just before and just after the daemon's drain), each ack
//! sent without waiting for the one before (the broker's own limit for
//! single acks), and `multiple` every 64; (2) the daemon
//! draining a pre-filled queue of N orders, with the CPU each process spent
//! per order, the daemon's own time per order and PostgreSQL's sequential
//! scans; (3) the sustained rate: orders published at the drain rate while
//! the daemon consumes them, more than the machine keeps up with once the
//! publisher and the broker's publishing share the cores, so the rate at
//! which they are committed meanwhile is the highest it sustains; (4)
//! publish→commit latency at 100 orders/s, at 50 % and 80 % of that
//! sustained rate, and at 80 % of the drain rate, each followed by the same
//! rate through the broker alone (publish→delivery to an ack-only consumer
//! while the daemon is idle): the part of the latency that is the broker's
//! and the publisher's on this machine, whatever the consumer; (5) the daemon's RSS over the
//! whole run against that of a fresh idle daemon, with a provider that
//! answers in 2 s and a quiet minute at the end (`memory`). For (1) and (2) queues are filled before the
//! clock starts, so the publisher is not measured. Each run uses its own
//! queues and a fresh database, and removes them at the end, also when it
//! fails.
//!
//! `cargo bench --bench load` (whose args contain `--bench`): N = `LOAD_ORDERS`
//! or 50 000. Any other invocation (`cargo test --all-targets`) is a smoke
//! run of 300 orders that fails unless every order was saved, the work and
//! dead-letter queues are empty, the daemon stopped with exit code 0, and
//! the queues are still empty once it is gone.

#![allow(
    clippy::arithmetic_side_effects,
    clippy::cast_precision_loss,
    reason = "benchmark figures: approximate by nature, computed from small counts"
)]

pub mod broker;
mod measure;
mod memory;
mod report;
mod world;

use std::collections::VecDeque;
use std::process::ExitCode;
use std::time::Duration;

use lapin::options::QueueDeclareOptions;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Connection, ConnectionProperties};
use order_processor::adapters::amqp::topology;
use sqlx::postgres::PgPoolOptions;

use crate::broker::{AckMode, Publisher, ack_only, check};
use crate::measure::{measure_latency, reference_latency};
use crate::memory::{QUIET, RssTimeline, slow_provider};
use crate::report::Report;
use crate::world::{World, create_database};

const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const POSTGRES: &str = "postgres://postgres@127.0.0.1:5432";
const ROUTING_KEY: &str = "order.created";
/// Confirms outstanding at most while publishing, like `order-processor publish`.
const CONFIRM_WINDOW: usize = 1000;
const MULTIPLE_EVERY: usize = 64;
const POLL: Duration = Duration::from_millis(25);

type Res<T> = Result<T, String>;

trait Context<T> {
    fn context(self, what: &str) -> Res<T>;
}

impl<T, E: std::fmt::Display> Context<T> for Result<T, E> {
    fn context(self, what: &str) -> Res<T> {
        self.map_err(|error| format!("{what}: {error}"))
    }
}

fn main() -> ExitCode {
    let full = std::env::args_os().any(|arg| arg == "--bench");
    let n = match std::env::var("LOAD_ORDERS") {
        Ok(value) if full => value.parse().unwrap_or(0),
        _ if full => 50_000,
        _ => 300,
    };
    if n == 0 {
        eprintln!("LOAD_ORDERS must be a positive whole number");
        return ExitCode::FAILURE;
    }
    let Ok(runtime) = tokio::runtime::Runtime::new() else {
        eprintln!("could not start the tokio runtime");
        return ExitCode::FAILURE;
    };
    let mut world = World::new();
    let outcome = runtime.block_on(async {
        let outcome = bench(n, !full, &mut world).await;
        if outcome.is_err() {
            world.print_log_tail();
        }
        world.cleanup().await;
        outcome
    });
    match outcome {
        Ok(report) => {
            report.print();
            if !full && !report.problems.is_empty() {
                eprintln!("smoke run failed: {}", report.problems.join("; "));
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("load benchmark failed: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn bench(n: usize, smoke: bool, world: &mut World) -> Res<Report> {
    let config = world.daemon_config()?;
    world.max_attempts = config.max_attempts;
    create_database(&world.database).await?;
    let payment_url = world.start_payment_sim().await?;
    let broker = Connection::connect(AMQP_URL, ConnectionProperties::default())
        .await
        .context("connect to RabbitMQ")?;
    let admin = broker.create_channel().await.context("open a channel")?;

    eprintln!("[load] broker limit: {n} orders through {}", world.ackonly);
    let mut quorum = FieldTable::default();
    quorum.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    // Owned: `world` is borrowed mutably to start the daemon meanwhile.
    let ackonly = &*world.ackonly.clone();
    admin
        .queue_declare(ackonly.into(), durable, quorum)
        .await
        .context("declare the ack-only queue")?;
    let mut direct = Publisher::open(&broker, "", ackonly).await?;
    // The daemon's prefetch, so that every consumer gets the same window.
    let prefetch = u16::try_from(config.prefetch).context("prefetch")?;
    direct.fill(n).await?;
    let ack_each = ack_only(&broker, ackonly, n, prefetch, AckMode::EachPipelined).await?;
    direct.fill(n).await?;
    let ack_multiple = ack_only(&broker, ackonly, n, prefetch, AckMode::Multiple).await?;

    eprintln!("[load] daemon: {n} orders through {}", world.names.queue);
    // The daemon's own declaration, so its declare at start changes nothing.
    topology::declare(&admin, &world.names, config.max_attempts)
        .await
        .context("declare the daemon's topology")?;
    // What the daemon holds with nothing to do, which the memory figures
    // are compared with: a first daemon started on the empty queue.
    let idle = world.idle_rss(&payment_url).await?;
    let mut orders = Publisher::open(&broker, &world.names.exchange, ROUTING_KEY).await?;
    orders.fill(n).await?;
    // The reference the daemon is compared with runs just before and just
    // after it, on queues filled beforehand: a shared machine's speed drifts
    // within minutes, and the two figures show by how much.
    direct.fill(2 * n).await?;
    let awaited = AckMode::EachAwaited;
    let ack_before = ack_only(&broker, ackonly, n, prefetch, awaited).await?;
    let daemon = world.start_daemon(&payment_url)?;
    let rss = RssTimeline::start(world.pids().0.ok_or("the daemon has no pid")?, idle);
    let drain = world.drain(&daemon, n, || {
        rss.mark(&format!("draining {n} pre-filled orders"));
    });
    let drain = drain.await?;
    rss.mark("idle while the ack-only consumer runs");
    let ack_after = ack_only(&broker, ackonly, n, prefetch, awaited).await?;

    let db = PgPoolOptions::new()
        .max_connections(1)
        .connect(&world.database_url())
        .await
        .context("connect to the bench database")?;
    let mut problems = check(&db, &broker, &world.names, n).await?;
    let mut expected = n;
    let mut latency = Vec::new();
    let mut sustained = None;
    let mut phases = VecDeque::from(first_phases(smoke, drain.rate));
    while let Some(phase) = phases.pop_front() {
        let Phase {
            label,
            rate,
            length,
            overload,
        } = &phase;
        if *overload {
            eprintln!("[load] sustained rate: publishing at {rate:.0}/s for {length:?}");
        } else {
            eprintln!("[load] latency at {label}: {rate:.0}/s for {length:?}");
        }
        let length = phase.length;
        rss.mark(&if *overload {
            "publishing at the drain rate".to_owned()
        } else {
            format!("publishing at {label}")
        });
        let pids = world.pids();
        let row = measure_latency(&mut orders, &db, &daemon, pids, phase, expected);
        let mut row = row.await?;
        expected += row.sent;
        if row.missing > 0 {
            problems.push(format!("{} orders were not saved within 30 s", row.missing));
        }
        if row.overload {
            phases.extend(latency_phases(row.committed_rate, drain.rate));
            sustained = Some(row);
        } else {
            let (label, rate) = (&row.label, row.rate);
            eprintln!("[load] the broker alone at {label}: {rate:.0}/s for {length:?}");
            let alone = reference_latency(&broker, &mut direct, ackonly, prefetch, rate, length);
            row.reference = Some(alone.await?);
            latency.push(row);
        }
    }
    if !smoke {
        // The worker pool full three times over with charges that take 2 s.
        let slow = 3 * usize::try_from(config.concurrency).context("concurrency")?;
        let label = format!("{slow} orders that the provider answers in 2 s");
        eprintln!("[load] memory: {label}");
        rss.mark_series(&label, Some(Duration::from_secs(1)));
        slow_provider(&mut orders, &daemon, slow, expected).await?;
        expected += slow;
        eprintln!("[load] memory: the daemon idle for {QUIET:?}");
        rss.mark_series("the quiet minute after the last phase", Some(QUIET / 6));
        tokio::time::sleep(QUIET).await;
    }
    let rss = rss.finish();
    problems.extend(check(&db, &broker, &world.names, expected).await?);
    let stopped = world.stop_daemon().await?;
    if stopped != Some(0) {
        problems.push(format!("exit on SIGTERM was {stopped:?}, not Some(0)"));
    }
    // Every delivery was acknowledged before the daemon closed its channel:
    // none comes back to the queue once it is gone.
    let after_stop = check(&db, &broker, &world.names, expected).await?;
    problems.extend(
        after_stop
            .into_iter()
            .map(|problem| format!("after the stop: {problem}")),
    );
    let _ = broker.close(200, "done".into()).await;
    // Lookups by primary key need no sequential scan, so many of them mean a
    // bad plan (their cost then grows with the table). Read once the daemon's
    // backends have exited, which is when they report their last statistics.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stats = "SELECT seq_scan, seq_tup_read FROM pg_stat_user_tables WHERE relname = 'orders'";
    let seq_scans = sqlx::query_as(stats).fetch_one(&db).await;
    let seq_scans = seq_scans.context("read the statistics of orders")?;
    db.close().await;
    let message_bytes = direct.bytes / direct.sent.max(1);
    Ok(Report {
        n,
        message_bytes,
        config,
        ack_awaited: [ack_before, ack_after],
        ack_each,
        ack_multiple,
        drain,
        sustained,
        latency,
        rss,
        saved: expected,
        seq_scans,
        stopped,
        problems,
    })
}

/// Orders published at a steady rate, to measure publish→commit.
struct Phase {
    label: String,
    /// Orders per second.
    rate: f64,
    length: Duration,
    /// Published faster than the daemon can keep up with, to measure the
    /// sustained rate rather than latency.
    overload: bool,
}

/// How long orders are published in each phase after the drain.
const PHASE: Duration = Duration::from_secs(10);

/// A smoke run's one slow phase, or else publishing at the drain rate to
/// find the sustained rate, which the latency phases then follow.
fn first_phases(smoke: bool, drain_rate: f64) -> Vec<Phase> {
    if smoke {
        return vec![Phase {
            label: "100/s".to_owned(),
            rate: 100.0,
            length: Duration::from_secs(2),
            overload: false,
        }];
    }
    vec![Phase {
        label: "the drain rate".to_owned(),
        rate: drain_rate,
        length: PHASE,
        overload: true,
    }]
}

/// A low rate, where each order arrives alone: what a replica that is mostly
/// idle pays per order.
const LOW_RATE: f64 = 100.0;

/// The latency phases: a low rate, half and 80 % of the sustained rate, and
/// 80 % of the drain rate, which is more than the machine can sustain.
fn latency_phases(sustained_rate: f64, drain_rate: f64) -> Vec<Phase> {
    let phase = |percent: f64, of: &str, rate: f64| Phase {
        label: format!("{percent}% of {of}"),
        rate: rate * percent / 100.0,
        length: PHASE,
        overload: false,
    };
    vec![
        Phase {
            label: format!("{LOW_RATE}/s"),
            rate: LOW_RATE,
            length: PHASE,
            overload: false,
        },
        phase(50.0, "sustained", sustained_rate),
        phase(80.0, "sustained", sustained_rate),
        phase(80.0, "drain", drain_rate),
    ]
}
