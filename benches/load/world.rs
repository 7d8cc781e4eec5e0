//! The processes a run starts and stops: payment-sim, the daemon, its fresh
//! database and queues, and the daemon's metrics.

use std::io::{BufRead as _, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
use lapin::{Connection, ConnectionProperties};
use order_processor::adapters::amqp::TopologyNames;
use sqlx::postgres::PgPoolOptions;

use crate::measure::Cpu;
use crate::memory::rss_kib;
use crate::report::{AckFrames, Breakdown, Drain};
use crate::{AMQP_URL, Context as _, POLL, POSTGRES, ROUTING_KEY, Res};

/// Everything one run creates, so that all of it can be removed.
pub struct World {
    pub names: TopologyNames,
    pub ackonly: String,
    pub database: String,
    pub max_attempts: u32,
    log: PathBuf,
    sim: Option<Child>,
    daemon: Option<Child>,
}

/// What the daemon's own loader made of the configuration and environment.
/// How `workers.threads` reads: 0 is one per core.
pub fn threads(configured: u64) -> String {
    if configured == 0 {
        "one per core".to_owned()
    } else {
        configured.to_string()
    }
}

pub struct DaemonConfig {
    pub prefetch: u64,
    pub concurrency: u64,
    pub threads: u64,
    pub pool: u64,
    /// `payment.max_in_flight`: 0 is the worker pool.
    pub payment_in_flight: u64,
    pub max_attempts: u32,
}

impl World {
    pub fn new() -> Self {
        let id = format!("{:08x}", rand::random::<u32>());
        Self {
            names: TopologyNames {
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

    pub fn database_url(&self) -> String {
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
    pub fn daemon_config(&self) -> Res<DaemonConfig> {
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

    pub async fn start_payment_sim(&mut self) -> Res<String> {
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

    pub fn start_daemon(&mut self, payment_url: &str) -> Res<Daemon> {
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

    /// The process ids of the daemon and payment-sim.
    pub fn pids(&self) -> (Option<u32>, Option<u32>) {
        (
            self.daemon.as_ref().map(Child::id),
            self.sim.as_ref().map(Child::id),
        )
    }

    /// Starts a daemon, waits until it is ready and has sat idle for 2 s,
    /// reads its RSS (KiB) and stops it.
    pub async fn idle_rss(&mut self, payment_url: &str) -> Res<u64> {
        let daemon = self.start_daemon(payment_url)?;
        self.until_ready(&daemon, Duration::from_millis(50)).await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let pid = self.pids().0.ok_or("the daemon has no pid")?;
        let kib = rss_kib(pid).ok_or("could not read the daemon's RSS")?;
        match self.stop_daemon().await? {
            Some(0) => Ok(kib),
            other => Err(format!("the idle daemon's exit on SIGTERM was {other:?}")),
        }
    }

    /// Polls `/readyz` every `every` until it answers 200 (60 s at most).
    async fn until_ready(&mut self, daemon: &Daemon, every: Duration) -> Res<()> {
        let ready = poll_until(Duration::from_secs(60), every, async || {
            self.daemon_running()?;
            Ok(daemon.ready().await)
        });
        if ready.await? {
            Ok(())
        } else {
            Err("the daemon was not ready within 60 s".to_owned())
        }
    }

    /// Times the daemon from its first `/readyz` 200 (it consumes from then
    /// on) until it has acked `n` orders, with the CPU spent meanwhile.
    /// `on_ready` is called as soon as it is ready, before the clock starts.
    pub async fn drain(
        &mut self,
        daemon: &Daemon,
        n: usize,
        on_ready: impl FnOnce(),
    ) -> Res<Drain> {
        self.until_ready(daemon, Duration::from_millis(10)).await?;
        on_ready();
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
            time: Breakdown::between(&Scrape::default(), &last),
            ack_frames: AckFrames::per_order(Scrape::default().ack_frames, last.ack_frames, n),
        })
    }

    /// SIGTERM, then the exit code (None if it did not exit within 40 s).
    pub async fn stop_daemon(&mut self) -> Res<Option<i32>> {
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

    pub fn print_log_tail(&self) {
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

    pub async fn cleanup(&mut self) {
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
pub struct Daemon {
    http: reqwest::Client,
    base: String,
}

/// The daemon's counters that matter here (cumulative since it started).
#[derive(Default, Clone)]
pub struct Scrape {
    pub acked: f64,
    /// `basic.ack` frames sent: (multiple, one by one).
    pub ack_frames: (f64, f64),
    pub processing_seconds: f64,
    /// The buckets of the processing histogram and of the payment requests.
    pub processing_buckets: Buckets,
    pub payment_buckets: Buckets,
    pub payment_seconds: f64,
    pub payments: f64,
    pub lookup: StatementScrape,
    pub save: StatementScrape,
}

/// A histogram's buckets, summed over its label sets: (upper bound in
/// seconds, cumulative count), ascending as `/metrics` lists them.
#[derive(Default, Clone)]
pub struct Buckets(pub Vec<(f64, f64)>);

impl Buckets {
    /// Adds `value` if `key` is a bucket of `metric` that has the label
    /// `labels` (any bucket of `metric` if `labels` is empty).
    fn read(&mut self, metric: &str, labels: &str, key: &str, value: f64) {
        let labels_of = key
            .strip_prefix(metric)
            .and_then(|rest| rest.strip_prefix("_bucket{"))
            .and_then(|rest| rest.strip_suffix('}'));
        let Some(all) = labels_of else {
            return;
        };
        // Label values here hold no comma: `le="0.001",statement="save"`.
        let (mut bound, mut matches) = (None, false);
        for label in all.split(',') {
            match label.strip_prefix("le=") {
                Some(le) => bound = Some(le.trim_matches('"')),
                None => matches |= label == labels,
            }
        }
        let Some(bound) = bound.filter(|_| matches || labels.is_empty()) else {
            return;
        };
        let bound = bound.parse().unwrap_or(f64::INFINITY);
        match self.0.iter_mut().find(|(upper, _)| *upper == bound) {
            Some((_, count)) => *count += value,
            None => self.0.push((bound, value)),
        }
    }
}

/// The database histograms of one statement (sums and counts).
#[derive(Default, Clone)]
pub struct StatementScrape {
    /// What the orders waited for their answers, and how many did.
    pub wait_seconds: f64,
    pub waits: f64,
    pub wait_buckets: Buckets,
    pub statement_buckets: Buckets,
    /// What the batch statements took, and how many ran.
    pub statement_seconds: f64,
    pub statements: f64,
    /// The orders those statements answered.
    pub orders: f64,
}

impl StatementScrape {
    /// Reads one sample of `statement`'s series into this.
    fn read(&mut self, metric: &str, value: f64) {
        let field = match metric {
            "order_processor_database_wait_seconds_sum" => &mut self.wait_seconds,
            "order_processor_database_wait_seconds_count" => &mut self.waits,
            "order_processor_database_statement_seconds_sum" => &mut self.statement_seconds,
            "order_processor_database_statement_seconds_count" => &mut self.statements,
            "order_processor_database_batch_orders_sum" => &mut self.orders,
            _ => return,
        };
        *field += value;
    }
}

impl Daemon {
    async fn ready(&self) -> bool {
        let response = self.http.get(format!("{}/readyz", self.base)).send().await;
        response.is_ok_and(|response| response.status() == 200)
    }

    /// Reads `/metrics`. Any outcome but a plain ack fails the run: every
    /// order published here is valid and must be charged and saved.
    pub async fn scrape(&self) -> Res<Scrape> {
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
            } else if key.contains("_bucket{") {
                let buckets = [
                    (
                        "order_processor_processing_seconds",
                        "",
                        &mut scrape.processing_buckets,
                    ),
                    (
                        "order_processor_payment_request_seconds",
                        "",
                        &mut scrape.payment_buckets,
                    ),
                    (
                        WAIT,
                        "statement=\"lookup\"",
                        &mut scrape.lookup.wait_buckets,
                    ),
                    (WAIT, "statement=\"save\"", &mut scrape.save.wait_buckets),
                    (
                        STATEMENT,
                        "statement=\"lookup\"",
                        &mut scrape.lookup.statement_buckets,
                    ),
                    (
                        STATEMENT,
                        "statement=\"save\"",
                        &mut scrape.save.statement_buckets,
                    ),
                ];
                for (metric, labels, buckets) in buckets {
                    buckets.read(metric, labels, key, value);
                }
            } else if key.starts_with("order_processor_payment_request_seconds_sum") {
                scrape.payment_seconds += value;
            } else if key.starts_with("order_processor_payment_request_seconds_count") {
                scrape.payments += value;
            } else if let Some(metric) = key.strip_suffix("{statement=\"lookup\"}") {
                scrape.lookup.read(metric, value);
            } else if let Some(metric) = key.strip_suffix("{statement=\"save\"}") {
                scrape.save.read(metric, value);
            }
        }
        Ok(scrape)
    }
}

const WAIT: &str = "order_processor_database_wait_seconds";
const STATEMENT: &str = "order_processor_database_statement_seconds";

/// Calls `check` every `every` until it is true (Ok(true)) or `within` has
/// passed (Ok(false)); an error ends the wait at once.
pub async fn poll_until(
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

pub async fn create_database(name: &str) -> Res<()> {
    admin_sql(format!("CREATE DATABASE \"{name}\"")).await
}
