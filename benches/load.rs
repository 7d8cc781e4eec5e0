//! End-to-end load benchmark of `order-processor` against the real RabbitMQ,
//! PostgreSQL and `payment-sim` of this machine.
//!
//! A throughput means little on its own on a shared machine, so one run
//! measures, with the same ~500-byte orders: (1) the broker's own limit, a
//! quorum queue drained by a consumer that only acknowledges, with the
//! daemon's prefetch (each message, then `multiple` every 64); (2) the daemon
//! draining a pre-filled queue of N orders, with the CPU each process spent
//! per order, the daemon's own time per order and PostgreSQL's sequential
//! scans; (3) the sustained rate: orders published at the drain rate while
//! the daemon consumes them, more than the machine keeps up with once the
//! publisher and the broker's publishing share the cores, so the rate at
//! which they are committed meanwhile is the highest it sustains; (4)
//! publish→commit latency at 50 % and 80 % of that sustained rate, and at
//! 80 % of the drain rate. For (1) and (2) queues are filled before the
//! clock starts, so the publisher is not measured. Each run uses its own
//! queues and a fresh database, and removes them at the end, also when it
//! fails.
//!
//! `cargo bench --bench load` (whose args contain `--bench`): N = `LOAD_ORDERS`
//! or 50 000. Any other invocation (`cargo test --all-targets`) is a smoke
//! run of 300 orders that fails unless every order was saved, the work and
//! dead-letter queues are empty and the daemon stopped with exit code 0.

#![allow(
    clippy::arithmetic_side_effects,
    clippy::cast_precision_loss,
    reason = "benchmark figures: approximate by nature, computed from small counts"
)]

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{BufRead as _, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use futures_util::FutureExt as _;
use futures_util::stream::{FuturesUnordered, StreamExt as _};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeleteOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use order_processor::adapters::amqp::{Names, topology};
use order_processor::domain::OrderMessage;
use sqlx::postgres::{PgPool, PgPoolOptions};
use time::OffsetDateTime;
use uuid::Uuid;

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
    let ackonly = world.ackonly.as_str();
    admin
        .queue_declare(ackonly.into(), durable, quorum)
        .await
        .context("declare the ack-only queue")?;
    let mut direct = Publisher::open(&broker, "", ackonly).await?;
    direct.fill(n).await?;
    // The daemon's prefetch, so that both consumers get the same window.
    let prefetch = u16::try_from(config.prefetch).context("prefetch")?;
    let ack_each = ack_only(&broker, ackonly, n, prefetch, false).await?;
    direct.fill(n).await?;
    let ack_multiple = ack_only(&broker, ackonly, n, prefetch, true).await?;

    eprintln!("[load] daemon: {n} orders through {}", world.names.queue);
    // The daemon's own declaration, so its declare at start changes nothing.
    topology::declare(&admin, &world.names, config.max_attempts)
        .await
        .context("declare the daemon's topology")?;
    let mut orders = Publisher::open(&broker, &world.names.exchange, ROUTING_KEY).await?;
    orders.fill(n).await?;
    let daemon = world.start_daemon(&payment_url)?;
    let drain = world.drain(&daemon, n).await?;

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
        let pids = world.pids();
        let row = measure_latency(&mut orders, &db, &daemon, pids, phase, expected);
        let row = row.await?;
        expected += row.sent;
        if row.missing > 0 {
            problems.push(format!("{} orders were not saved within 30 s", row.missing));
        }
        if row.overload {
            phases.extend(latency_phases(row.committed_rate, drain.rate));
            sustained = Some(row);
        } else {
            latency.push(row);
        }
    }
    problems.extend(check(&db, &broker, &world.names, expected).await?);
    let _ = broker.close(200, "done".into()).await;
    let stopped = world.stop_daemon().await?;
    if stopped != Some(0) {
        problems.push(format!("exit on SIGTERM was {stopped:?}, not Some(0)"));
    }
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
        ack_each,
        ack_multiple,
        drain,
        sustained,
        latency,
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

/// The latency phases: half and 80 % of the sustained rate, and 80 % of the
/// drain rate, which is more than the machine can sustain.
fn latency_phases(sustained_rate: f64, drain_rate: f64) -> Vec<Phase> {
    let phase = |percent: f64, of: &str, rate: f64| Phase {
        label: format!("{percent}% of {of}"),
        rate: rate * percent / 100.0,
        length: PHASE,
        overload: false,
    };
    vec![
        phase(50.0, "sustained", sustained_rate),
        phase(80.0, "sustained", sustained_rate),
        phase(80.0, "drain", drain_rate),
    ]
}

/// Everything one run creates, so that all of it can be removed.
struct World {
    names: Names,
    ackonly: String,
    database: String,
    max_attempts: u32,
    log: PathBuf,
    sim: Option<Child>,
    daemon: Option<Child>,
}

/// What the daemon's own loader made of the configuration and environment.
/// How `workers.threads` reads: 0 is one per core.
fn threads(configured: u64) -> String {
    if configured == 0 {
        "one per core".to_owned()
    } else {
        configured.to_string()
    }
}

struct DaemonConfig {
    prefetch: u64,
    concurrency: u64,
    threads: u64,
    pool: u64,
    /// `payment.max_in_flight`: 0 is the worker pool.
    payment_in_flight: u64,
    max_attempts: u32,
}

impl World {
    fn new() -> Self {
        let id = format!("{:08x}", rand::random::<u32>());
        Self {
            names: Names {
                exchange: format!("bench.{id}.orders"),
                routing_key: ROUTING_KEY.to_owned(),
                queue: format!("bench.{id}.process"),
            },
            ackonly: format!("bench.{id}.ackonly"),
            database: format!("op_bench_{id}"),
            max_attempts: 5,
            log: std::env::temp_dir().join(format!("order-processor-bench-{id}.log")),
            sim: None,
            daemon: None,
        }
    }

    fn database_url(&self) -> String {
        format!("{POSTGRES}/{}?sslmode=disable", self.database)
    }

    /// Nothing from the shell but `PATH`, the `ORDER_PROCESSOR__*`
    /// variables (to tune prefetch, concurrency …) and `OTEL_SDK_DISABLED`;
    /// this run's names win. Spans are recorded but not exported, unless
    /// `OTEL_SDK_DISABLED=true` turns them off.
    fn daemon_command(&self, payment_url: &str, listen: &str) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_order-processor"));
        command.env_clear();
        command.env("PATH", std::env::var_os("PATH").unwrap_or_default());
        for (key, value) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("ORDER_PROCESSOR__") || key == "OTEL_SDK_DISABLED"
            {
                command.env(key, value);
            }
        }
        let config_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/config");
        command
            .env("ORDER_PROCESSOR_CONFIG_DIR", config_dir)
            .env("AMQP_URL", AMQP_URL)
            .env("DATABASE_URL", self.database_url())
            .env("PAYMENT_BASE_URL", payment_url)
            .env("ORDER_PROCESSOR__AMQP__EXCHANGE", &self.names.exchange)
            .env("ORDER_PROCESSOR__AMQP__QUEUE", &self.names.queue)
            .env("ORDER_PROCESSOR__AMQP__ROUTING_KEY", ROUTING_KEY)
            .env("ORDER_PROCESSOR__HTTP__LISTEN", listen)
            .env("OTEL_TRACES_EXPORTER", "none")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null());
        command
    }

    /// Asks `check-config` rather than assuming defaults, so the figures
    /// printed are the ones the daemon really ran with.
    fn daemon_config(&self) -> Res<DaemonConfig> {
        let output = self
            .daemon_command("http://127.0.0.1:1", "127.0.0.1:0")
            .arg("check-config")
            .output()
            .context("run order-processor check-config")?;
        if !output.status.success() {
            return Err(String::from_utf8_lossy(&output.stderr).trim().to_owned());
        }
        let json: serde_json::Value =
            serde_json::from_slice(&output.stdout).context("parse check-config")?;
        let get = |pointer: &str| {
            json.pointer(pointer)
                .and_then(serde_json::Value::as_u64)
                .ok_or_else(|| format!("check-config printed no {pointer}"))
        };
        Ok(DaemonConfig {
            prefetch: get("/amqp/prefetch")?,
            concurrency: get("/workers/concurrency")?,
            threads: get("/workers/threads")?,
            pool: get("/database/max_connections")?,
            payment_in_flight: get("/payment/max_in_flight")?,
            max_attempts: u32::try_from(get("/retry/max_attempts")?).context("max_attempts")?,
        })
    }

    async fn start_payment_sim(&mut self) -> Res<String> {
        let mut child = Command::new(env!("CARGO_BIN_EXE_payment-sim"))
            .args(["--listen", "127.0.0.1:0", "--latency-ms", "0"])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("start payment-sim")?;
        let stdout = child.stdout.take().ok_or("payment-sim has no stdout")?;
        self.sim = Some(child);
        let read = tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            BufReader::new(stdout).read_line(&mut line).map(|_| line)
        });
        let line = tokio::time::timeout(Duration::from_secs(10), read)
            .await
            .context("payment-sim did not print its address")?
            .context("payment-sim reader")?
            .context("read payment-sim's stdout")?;
        let address = line.trim().strip_prefix("payment-sim listening on ");
        let address = address.ok_or_else(|| format!("unexpected from payment-sim: {line:?}"))?;
        Ok(format!("http://{address}"))
    }

    fn start_daemon(&mut self, payment_url: &str) -> Res<Daemon> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .context("find a free port")?
            .port();
        let log = std::fs::File::create(&self.log).context("create the daemon's log")?;
        let child = self
            .daemon_command(payment_url, &format!("127.0.0.1:{port}"))
            .arg("run")
            .stdout(log.try_clone().context("open the daemon's log")?)
            .stderr(log)
            .spawn()
            .context("start order-processor")?;
        self.daemon = Some(child);
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build();
        let http = http.context("build an HTTP client")?;
        let base = format!("http://127.0.0.1:{port}");
        Ok(Daemon { http, base })
    }

    fn daemon_running(&mut self) -> Res<()> {
        let child = self.daemon.as_mut().ok_or("the daemon is not started")?;
        match child.try_wait() {
            Ok(Some(status)) => Err(format!("the daemon exited early ({status})")),
            _ => Ok(()),
        }
    }

    /// Times the daemon from its first `/readyz` 200 (it consumes from then
    /// on) until it has acked `n` orders, with the CPU spent meanwhile.
    /// The process ids of the daemon and payment-sim.
    fn pids(&self) -> (Option<u32>, Option<u32>) {
        (
            self.daemon.as_ref().map(Child::id),
            self.sim.as_ref().map(Child::id),
        )
    }

    async fn drain(&mut self, daemon: &Daemon, n: usize) -> Res<Drain> {
        let every = Duration::from_millis(10);
        let ready = poll_until(Duration::from_secs(60), every, async || {
            self.daemon_running()?;
            Ok(daemon.ready().await)
        });
        if !ready.await? {
            return Err("the daemon was not ready within 60 s".to_owned());
        }
        let pids = self.pids();
        let (cpu, started) = (Cpu::sample(pids.0, pids.1), Instant::now());
        let limit = Duration::from_secs(60) + Duration::from_millis(2 * n as u64);
        let mut last = Scrape::default();
        let done = poll_until(limit, POLL, async || {
            self.daemon_running()?;
            last = daemon.scrape().await?;
            Ok(last.acked >= n as f64)
        });
        if !done.await? {
            return Err(format!("the daemon did not ack {n} orders in {limit:?}"));
        }
        Ok(Drain {
            rate: n as f64 / started.elapsed().as_secs_f64(),
            cpu: Cpu::sample(pids.0, pids.1).since(cpu),
            processing_ms: last.processing_seconds * 1000.0 / last.acked,
            payment_ms: last.payment_seconds * 1000.0 / last.payments.max(1.0),
            ack_frames: AckFrames::per_order(Scrape::default().ack_frames, last.ack_frames, n),
        })
    }

    /// SIGTERM, then the exit code (None if it did not exit within 40 s).
    async fn stop_daemon(&mut self) -> Res<Option<i32>> {
        let child = self.daemon.as_mut().ok_or("the daemon is not started")?;
        let pid = child.id().to_string();
        let kill = Command::new("kill").args(["-TERM", &pid]).status();
        kill.context("send SIGTERM")?;
        for _ in 0..800 {
            if let Ok(Some(status)) = child.try_wait() {
                return Ok(status.code());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(None)
    }

    fn print_log_tail(&self) {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        for line in lines.iter().skip(lines.len().saturating_sub(20)) {
            eprintln!("[daemon] {line}");
        }
    }

    fn kill_children(&mut self) {
        for mut child in [self.daemon.take(), self.sim.take()].into_iter().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    async fn cleanup(&mut self) {
        self.kill_children();
        let connect = Connection::connect(AMQP_URL, ConnectionProperties::default());
        if let Ok(Ok(connection)) = tokio::time::timeout(Duration::from_secs(10), connect).await {
            let names = &self.names;
            let mut queues = vec![self.ackonly.clone(), names.queue.clone()];
            queues.push(names.dead_letter_queue());
            queues.extend((1..self.max_attempts.max(5)).map(|n| names.retry_queue(n)));
            // A failed delete closes its channel, hence a channel for each.
            for queue in queues {
                if let Ok(channel) = connection.create_channel().await {
                    let options = QueueDeleteOptions::default();
                    let _ = channel.queue_delete(queue.as_str().into(), options).await;
                    let _ = channel.close(200, "done".into()).await;
                }
            }
            for exchange in [names.exchange.clone(), names.dead_letter_exchange()] {
                if let Ok(channel) = connection.create_channel().await {
                    let options = ExchangeDeleteOptions::default();
                    let _ = channel
                        .exchange_delete(exchange.as_str().into(), options)
                        .await;
                    let _ = channel.close(200, "done".into()).await;
                }
            }
            let _ = connection.close(200, "done".into()).await;
        }
        let drop = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.database);
        let _ = admin_sql(drop).await;
        let _ = std::fs::remove_file(&self.log);
    }
}

impl Drop for World {
    /// The last resort if something panicked: no child outlives the bench.
    fn drop(&mut self) {
        self.kill_children();
    }
}

/// How to reach the running daemon.
struct Daemon {
    http: reqwest::Client,
    base: String,
}

/// The daemon's counters that matter here (cumulative since it started).
#[derive(Default, Clone, Copy)]
struct Scrape {
    acked: f64,
    /// `basic.ack` frames sent: (multiple, one by one).
    ack_frames: (f64, f64),
    processing_seconds: f64,
    payment_seconds: f64,
    payments: f64,
}

impl Daemon {
    async fn ready(&self) -> bool {
        let response = self.http.get(format!("{}/readyz", self.base)).send().await;
        response.is_ok_and(|response| response.status() == 200)
    }

    /// Reads `/metrics`. Any outcome but a plain ack fails the run: every
    /// order published here is valid and must be charged and saved.
    async fn scrape(&self) -> Res<Scrape> {
        let response = self.http.get(format!("{}/metrics", self.base)).send();
        let text = response.await.context("GET /metrics")?.text().await;
        let text = text.context("read /metrics")?;
        let mut scrape = Scrape::default();
        for (key, value) in text.lines().filter_map(|line| line.rsplit_once(' ')) {
            let value: f64 = value.parse().unwrap_or(0.0);
            if key == "order_processor_deliveries_total{outcome=\"acked\",error_kind=\"\"}" {
                scrape.acked += value;
            } else if key.starts_with("order_processor_deliveries_total{") && value > 0.0 {
                return Err(format!("the daemon settled {value} deliveries as {key}"));
            } else if key == "order_processor_amqp_ack_frames_total{multiple=\"true\"}" {
                scrape.ack_frames.0 += value;
            } else if key == "order_processor_amqp_ack_frames_total{multiple=\"false\"}" {
                scrape.ack_frames.1 += value;
            } else if key == "order_processor_processing_seconds_sum" {
                scrape.processing_seconds += value;
            } else if key.starts_with("order_processor_payment_request_seconds_sum") {
                scrape.payment_seconds += value;
            } else if key.starts_with("order_processor_payment_request_seconds_count") {
                scrape.payments += value;
            }
        }
        Ok(scrape)
    }
}

/// Calls `check` every `every` until it is true (Ok(true)) or `within` has
/// passed (Ok(false)); an error ends the wait at once.
async fn poll_until(
    within: Duration,
    every: Duration,
    mut check: impl AsyncFnMut() -> Res<bool>,
) -> Res<bool> {
    let deadline = Instant::now() + within;
    loop {
        if check().await? {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        tokio::time::sleep(every).await;
    }
}

async fn admin_sql(statement: String) -> Res<()> {
    let admin = PgPoolOptions::new().max_connections(1);
    let admin = admin.connect(&format!("{POSTGRES}/postgres")).await;
    let admin = admin.context("connect to PostgreSQL")?;
    let done = sqlx::query(sqlx::AssertSqlSafe(statement))
        .execute(&admin)
        .await;
    admin.close().await;
    done.map(drop).context("PostgreSQL")
}

async fn create_database(name: &str) -> Res<()> {
    admin_sql(format!("CREATE DATABASE \"{name}\"")).await
}

/// A typical valid order of about 500 bytes (four items).
fn order() -> (Uuid, Vec<u8>) {
    let id = Uuid::new_v4();
    // Serializing plain strings and integers cannot fail.
    (id, OrderMessage::example(id).to_json().unwrap_or_default())
}

/// Publishes like `order-processor publish` (JSON, persistent, message id,
/// a `traceparent`), with confirms awaited in a sliding window.
struct Publisher {
    channel: Channel,
    exchange: String,
    routing_key: String,
    window: VecDeque<lapin::PublisherConfirm>,
    sent: usize,
    bytes: usize,
}

impl Publisher {
    async fn open(connection: &Connection, exchange: &str, routing_key: &str) -> Res<Self> {
        let channel = connection
            .create_channel()
            .await
            .context("open a channel")?;
        let confirms = channel
            .confirm_select(ConfirmSelectOptions::default())
            .await;
        confirms.context("enable publisher confirms")?;
        Ok(Self {
            channel,
            exchange: exchange.to_owned(),
            routing_key: routing_key.to_owned(),
            window: VecDeque::with_capacity(CONFIRM_WINDOW),
            sent: 0,
            bytes: 0,
        })
    }

    async fn fill(&mut self, n: usize) -> Res<()> {
        for _ in 0..n {
            let (order_id, body) = order();
            self.send(order_id, &body).await?;
        }
        self.flush().await
    }

    async fn send(&mut self, order_id: Uuid, body: &[u8]) -> Res<()> {
        let (trace, span) = (rand::random::<u128>() | 1, rand::random::<u64>() | 1);
        let traceparent = format!("00-{trace:032x}-{span:016x}-01");
        let mut headers = FieldTable::default();
        let traceparent = AMQPValue::LongString(traceparent.as_str().into());
        headers.insert("traceparent".into(), traceparent);
        let properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_message_id(order_id.to_string().as_str().into())
            .with_headers(headers);
        let options = BasicPublishOptions {
            mandatory: true,
            ..BasicPublishOptions::default()
        };
        let (exchange, key) = (self.exchange.as_str(), self.routing_key.as_str());
        let publish =
            self.channel
                .basic_publish(exchange.into(), key.into(), options, body, properties);
        self.window.push_back(publish.await.context("publish")?);
        self.sent += 1;
        self.bytes += body.len();
        if self.window.len() >= CONFIRM_WINDOW {
            self.settle_oldest().await?;
        }
        Ok(())
    }

    async fn settle_oldest(&mut self) -> Res<()> {
        let Some(confirm) = self.window.pop_front() else {
            return Ok(());
        };
        match tokio::time::timeout(Duration::from_secs(30), confirm).await {
            Ok(Ok(Confirmation::Ack(None))) => Ok(()),
            other => Err(format!("a publish was not confirmed and routed: {other:?}")),
        }
    }

    async fn flush(&mut self) -> Res<()> {
        while !self.window.is_empty() {
            self.settle_oldest().await?;
        }
        Ok(())
    }
}

/// Drains `n` messages with a consumer that only acknowledges: the most the
/// broker can deliver and settle here, the ceiling for any consumer.
async fn ack_only(
    connection: &Connection,
    queue: &str,
    n: usize,
    prefetch: u16,
    multiple: bool,
) -> Res<AckOnly> {
    let channel = connection
        .create_channel()
        .await
        .context("open a channel")?;
    let qos = channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await;
    qos.context("basic.qos")?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60 + n as u64 / 1000);
    let (cpu, started) = (Cpu::sample(None, None), Instant::now());
    let (options, arguments) = (BasicConsumeOptions::default(), FieldTable::default());
    let consumer = channel.basic_consume(queue.into(), "".into(), options, arguments);
    let mut consumer = consumer.await.context("basic.consume")?;
    let mut acks = FuturesUnordered::new();
    for received in 1..=n {
        let delivery = tokio::time::timeout_at(deadline, consumer.next()).await;
        let delivery = delivery.map_err(|_| format!("{} of {n} arrived in time", received - 1))?;
        let delivery = delivery
            .ok_or("the consumer was cancelled")?
            .context("delivery")?;
        if !multiple {
            // Sent now, completed later: awaiting each ack's write in turn
            // would make the client the limit instead of the broker.
            let acker = delivery.acker;
            acks.push(async move { acker.ack(BasicAckOptions { multiple: false }).await });
        } else if received % MULTIPLE_EVERY == 0 || received == n {
            let ack = channel.basic_ack(delivery.delivery_tag, BasicAckOptions { multiple: true });
            ack.await.context("basic.ack")?;
        }
        while let Some(Some(done)) = acks.next().now_or_never() {
            done.context("basic.ack")?;
        }
    }
    while let Ok(Some(done)) = tokio::time::timeout_at(deadline, acks.next()).await {
        done.context("basic.ack")?;
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    let cpu = Cpu::sample(None, None).since(cpu);
    let _ = channel.close(200, "done".into()).await;
    Ok(AckOnly { rate, cpu })
}

/// Problems found: rows other than `rows`, messages left in the work queue
/// or the dead-letter queue.
async fn check(db: &PgPool, broker: &Connection, names: &Names, rows: usize) -> Res<Vec<String>> {
    let mut problems = Vec::new();
    let saved: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(db)
        .await
        .context("count the orders")?;
    if saved != rows as i64 {
        problems.push(format!("{saved} rows in orders, expected {rows}"));
    }
    for queue in [names.queue.clone(), names.dead_letter_queue()] {
        let channel = broker.create_channel().await.context("open a channel")?;
        let options = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let declared = channel.queue_declare(queue.as_str().into(), options, FieldTable::default());
        let left = declared
            .await
            .context("passive queue.declare")?
            .message_count();
        if left > 0 {
            problems.push(format!("{left} messages left in {queue}"));
        }
        let _ = channel.close(200, "done".into()).await;
    }
    Ok(problems)
}

/// Publishes at `rate` for `length`, waits (30 s at most) until the daemon
/// has acked them all, and reads back when each order's row was inserted.
async fn measure_latency(
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
    let mut published = HashMap::with_capacity(sent);
    let started = Instant::now();
    let started_at = OffsetDateTime::now_utc();
    while published.len() < sent {
        let due = ((started.elapsed().as_secs_f64() * rate) as usize).min(sent);
        while published.len() < due {
            let (order_id, body) = order();
            published.insert(order_id, OffsetDateTime::now_utc());
            publisher.send(order_id, &body).await?;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let rate = sent as f64 / started.elapsed().as_secs_f64();
    let ended_at = OffsetDateTime::now_utc();
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
    let acked = (after.acked - before.acked).max(1.0);
    let daemon_ms = (after.processing_seconds - before.processing_seconds) * 1e3 / acked;
    let payments = (after.payments - before.payments).max(1.0);
    let payment_ms = (after.payment_seconds - before.payment_seconds) * 1e3 / payments;
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
    let at = |q: f64| {
        let index = (millis.len().saturating_sub(1) as f64 * q).round() as usize;
        millis.get(index).copied().unwrap_or(f64::NAN)
    };
    let (p50, p99, max) = (at(0.5), at(0.99), at(1.0));
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
        daemon_ms,
        payment_ms,
        ack_frames,
        busy,
        cpu,
    })
}

/// The p99 of each quarter second of a phase (by publish time): whether a
/// phase's p99 comes from one stall or from the whole phase.
struct Windows {
    count: usize,
    /// The median of the windows' p99s.
    median_p99: f64,
    /// Windows whose p99 is above [`SLOW_WINDOW_MS`].
    slow: usize,
    /// The worst window's p99 and its start, in seconds into the phase.
    worst: (f64, f64),
}

const WINDOW: f64 = 0.25;
const SLOW_WINDOW_MS: f64 = 50.0;

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
            let at = |q: f64| {
                let index = (millis.len().saturating_sub(1) as f64 * q).round() as usize;
                millis.get(index).copied().unwrap_or(f64::NAN)
            };
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

/// CPU clock ticks of the processes taking part, children included.
#[derive(Clone, Copy)]
struct Cpu {
    daemon: u64,
    broker: u64,
    postgres: u64,
    sim: u64,
    client: u64,
}

impl Cpu {
    fn sample(daemon: Option<u32>, sim: Option<u32>) -> Self {
        let of = |pid: Option<u32>| pid.and_then(|pid| ticks(&pid.to_string())).unwrap_or(0);
        Self {
            daemon: of(daemon),
            sim: of(sim),
            client: ticks("self").unwrap_or(0),
            broker: ticks_of_all("beam.smp"),
            postgres: ticks_of_all("postgres"),
        }
    }

    fn since(self, before: Self) -> Self {
        Self {
            daemon: self.daemon.saturating_sub(before.daemon),
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
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 2, the command, may hold spaces; the fields after it cannot.
    let (_, fields) = stat.rsplit_once(')')?;
    let mut fields = fields.split_whitespace().skip(11).take(4);
    fields.try_fold(0, |sum, field| Some(sum + field.parse::<u64>().ok()?))
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

struct AckOnly {
    rate: f64,
    cpu: Cpu,
}

struct Drain {
    rate: f64,
    cpu: Cpu,
    processing_ms: f64,
    payment_ms: f64,
    ack_frames: AckFrames,
}

/// `basic.ack` frames the daemon sent per 100 orders.
#[derive(Clone, Copy)]
struct AckFrames {
    multiple: f64,
    single: f64,
}

impl AckFrames {
    fn per_order(before: (f64, f64), after: (f64, f64), orders: usize) -> Self {
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

struct Latency {
    label: String,
    /// The phase that measured the sustained rate.
    overload: bool,
    rate: f64,
    /// Orders committed per second while publishing (after the first fifth).
    committed_rate: f64,
    sent: usize,
    p50: f64,
    p99: f64,
    max: f64,
    missing: usize,
    /// The p99 of each quarter second of publishing.
    windows: Windows,
    /// The daemon's mean time from delivery to settlement in this phase.
    daemon_ms: f64,
    /// The mean time of a payment call in this phase.
    payment_ms: f64,
    ack_frames: AckFrames,
    /// How busy the machine's cores were while publishing.
    busy: f64,
    /// What each process spent while publishing (`client`: the publisher).
    cpu: Cpu,
}

struct Report {
    n: usize,
    message_bytes: usize,
    config: DaemonConfig,
    ack_each: AckOnly,
    ack_multiple: AckOnly,
    drain: Drain,
    /// Publishing at the drain rate: how fast the daemon commits meanwhile.
    sustained: Option<Latency>,
    latency: Vec<Latency>,
    saved: usize,
    /// Sequential scans of `orders` over the whole run, and rows they read.
    seq_scans: (i64, i64),
    stopped: Option<i32>,
    problems: Vec<String>,
}

impl Report {
    fn print(&self) {
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
        for (how, a) in [
            ("ack per message", &self.ack_each),
            ("multiple every 64", &self.ack_multiple),
        ] {
            println!(
                "{:<52}{:>8} msgs/s   broker {:.0} µs/msg, bench consumer {:.0} µs/msg",
                format!("broker limit, ack-only consumer ({how})"),
                grouped(a.rate),
                us(a.cpu.broker),
                us(a.cpu.client)
            );
        }
        let ratio = d.rate / self.ack_each.rate;
        println!(
            "{:<52}{:>8} orders/s = {ratio:.2} × ack-only",
            "daemon drain",
            grouped(d.rate)
        );
        let parts = [d.cpu.daemon, d.cpu.broker, d.cpu.postgres, d.cpu.sim].map(us);
        let [daemon, broker, postgres, sim] = parts;
        println!(
            "CPU per order: daemon {daemon:.0} µs, broker {broker:.0} µs, PostgreSQL {postgres:.0} µs, \
             payment-sim {sim:.0} µs (sum {:.0} µs; {cores} cores offer {:.0} µs per order at this rate)",
            parts.iter().sum::<f64>(),
            cores as f64 * 1e6 / d.rate
        );
        println!(
            "daemon time per order: {:.1} ms from delivery to settlement, of which payment call {:.1} ms; {}",
            d.processing_ms, d.payment_ms, d.ack_frames
        );
        let (scans, rows) = self.seq_scans;
        println!(
            "PostgreSQL, whole run: {} sequential scans of orders read {} rows ({:.0} per order saved)",
            grouped(scans as f64),
            grouped(rows as f64),
            rows as f64 / self.saved as f64
        );
        if let Some(s) = &self.sustained {
            println!(
                "{:<52}{:>8} orders/s = {:.2} × drain, {:.2} × ack-only (publishing at {}/s, CPU {:.0} % busy)",
                "sustained, publishing while consuming",
                grouped(s.committed_rate),
                s.committed_rate / d.rate,
                s.committed_rate / self.ack_each.rate,
                grouped(s.rate),
                s.busy * 100.0,
            );
        }
        for l in &self.latency {
            println!(
                "publish→commit at {} ({}/s, CPU {:.0} % busy): p50 {:.1} ms, p99 {:.1} ms, \
                 max {:.1} ms (in the daemon {:.1} ms on average, payment call {:.1} ms); \
                 {} of {} not saved after 30 s",
                l.label,
                grouped(l.rate),
                l.busy * 100.0,
                l.p50,
                l.p99,
                l.max,
                l.daemon_ms,
                l.payment_ms,
                l.missing,
                grouped(l.sent as f64)
            );
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
                "    CPU per order at {}: daemon {:.0} µs, broker {:.0} µs, PostgreSQL {:.0} µs, \
                 payment-sim {:.0} µs, publisher {:.0} µs",
                l.label,
                per_order(c.daemon),
                per_order(c.broker),
                per_order(c.postgres),
                per_order(c.sim),
                per_order(c.client),
            );
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
