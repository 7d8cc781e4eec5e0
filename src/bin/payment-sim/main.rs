//! `payment-sim`: a local stand-in for the payment provider, for demos, integration
//! tests and load benchmarks of `order-processor`. It speaks the provider's API
//! (`POST /v1/charges` with an `Idempotency-Key` header, answering 201/200 for a
//! charge, 402 for a decline, 400/409/422 for a rejection and 503 for a transient
//! failure), keeps every idempotency key in memory so that a replay answers what the
//! first request got, and can inject latency, failures and declines at chosen rates.
//!
//! It is shaped by the benchmark it serves: it shares a 2-core machine with RabbitMQ,
//! PostgreSQL and the daemon while ~20 000 charges/s go through it, so every request
//! must cost as little CPU as possible. Hence no per-request logging or middleware,
//! plain keep-alive HTTP/1.1, a store split into independently locked shards
//! ([`store`]), statistics in relaxed atomics, a thread-local RNG, and hand-built
//! response bodies ([`api`]). It is self-contained (it does not link the
//! `order_processor` library) so that it stays a faithful *external* party, and it
//! never panics: every fallible step answers an HTTP error or exits with a message.
//!
//! This file is the process: command line, start-up, signals and shutdown.

mod api;
mod store;

use std::io::{IsTerminal as _, Write as _};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use axum::serve::ListenerExt as _;
use clap::Parser;
use tokio::sync::watch;

use crate::api::App;

const TOKENS_HELP: &str = "\
Deterministic payment tokens (the body's \"payment_token\"):
  tok_decline  always 402; recorded, so a replay of the key answers 402 again
  tok_reject   always 422; nothing recorded
  tok_fail     always 503; nothing recorded
  tok_slow     waits 10 x --latency-ms (at least 2 s), then behaves as normal
  other        503 with probability --fail-rate, else 402 with probability
               --decline-rate, else a new charge (201; 200 with the same
               charge_id on a replay of the Idempotency-Key)

Endpoints: POST /v1/charges, GET /v1/charges/{key}, GET /stats, GET /healthz.
Logging: RUST_LOG (default info; only start-up problems and shutdown are logged).
Worker threads: TOKIO_WORKER_THREADS (default: one per CPU).";

/// Command line. Rates are checked here so that a bad value is a usage error (exit 2);
/// negative numbers are taken as values, so `--fail-rate -0.1` is refused as out of
/// range rather than as an unknown flag `-0`.
#[derive(Parser, Debug)]
#[command(
    name = "payment-sim",
    version,
    about = "Local payment provider for order-processor demos, tests and load benchmarks.",
    after_help = TOKENS_HELP
)]
struct Cli {
    /// IP:PORT to listen on; port 0 picks a free port (the bound address is printed on stdout).
    #[arg(
        long,
        value_name = "ADDR",
        env = "PAYMENT_SIM_LISTEN",
        default_value = "127.0.0.1:8081"
    )]
    listen: SocketAddr,

    /// Milliseconds every charge request waits before it is answered (replays excepted).
    #[arg(
        long,
        value_name = "MS",
        default_value_t = 0,
        allow_negative_numbers = true
    )]
    latency_ms: u64,

    /// Probability (0..=1) of answering 503 without recording anything.
    #[arg(
        long,
        value_name = "F",
        default_value_t = 0.0,
        value_parser = parse_rate,
        allow_negative_numbers = true
    )]
    fail_rate: f64,

    /// Probability (0..=1) of declining with 402; the decline is recorded for replays.
    #[arg(
        long,
        value_name = "F",
        default_value_t = 0.0,
        value_parser = parse_rate,
        allow_negative_numbers = true
    )]
    decline_rate: f64,

    /// Most idempotency keys remembered; when full, new keys are answered 503.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 10_000_000,
        allow_negative_numbers = true
    )]
    max_keys: usize,
}

fn parse_rate(s: &str) -> Result<f64, String> {
    let rate: f64 = s.trim().parse().map_err(|e| format!("{e}"))?;
    // `contains` is false for NaN, so "NaN" is refused too.
    if (0.0..=1.0).contains(&rate) {
        Ok(rate)
    } else {
        Err("must be a number between 0 and 1".to_owned())
    }
}

/// `tok_slow` waits at least this long, so it is slow even with `--latency-ms 0`.
const MIN_SLOW: Duration = Duration::from_secs(2);
/// After SIGTERM, in-flight requests get this long (plus the `tok_slow` delay, the
/// longest a request waits) to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => return usage_error(&err),
    };
    let threads = match worker_threads() {
        Ok(threads) => threads,
        Err(line) => {
            stderr_line(&line);
            return ExitCode::from(2);
        }
    };
    init_tracing();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            stderr_line(&format!("payment-sim: cannot start the runtime: {e}"));
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(cli))
}

/// `TOKIO_WORKER_THREADS`, or one thread per core. Read here rather than by
/// tokio, which panics on a value that is not a positive number.
fn worker_threads() -> Result<usize, String> {
    const MAX: usize = 1024;
    let Some(value) = std::env::var_os("TOKIO_WORKER_THREADS") else {
        return Ok(std::thread::available_parallelism().map_or(1, std::num::NonZero::get));
    };
    value
        .to_str()
        .and_then(|value| value.trim().parse::<usize>().ok())
        .filter(|n| (1..=MAX).contains(n))
        .ok_or_else(|| {
            format!("payment-sim: TOKIO_WORKER_THREADS must be a number from 1 to {MAX}")
        })
}

/// `--help`/`--version` go to stdout with exit 0; any other clap error becomes exactly
/// one stderr line (clap's first line, which names the option) and exit 2, so scripts
/// and tests see a short, stable message.
fn usage_error(err: &clap::Error) -> ExitCode {
    if !err.use_stderr() {
        // Ignored: if stdout is gone there is no one to show the help to.
        let _ = err.print();
        return ExitCode::SUCCESS;
    }
    let rendered = err.render().to_string();
    let line = rendered
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("error: invalid arguments");
    stderr_line(&format!("payment-sim: {line}"));
    ExitCode::from(2)
}

/// `eprintln!` panics when stderr is closed; this must never panic.
fn stderr_line(line: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Ignored: it only fails if a subscriber is already set, which is then used.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, not in CI logs or files.
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .try_init();
}

async fn run(cli: Cli) -> ExitCode {
    // Signal handlers are installed before the address is printed: a test that sends
    // SIGTERM as soon as it reads that line must get a graceful exit, not the default
    // action of the signal.
    let signals = match Signals::install() {
        Ok(signals) => signals,
        Err(e) => {
            stderr_line(&format!("payment-sim: cannot install signal handlers: {e}"));
            return ExitCode::FAILURE;
        }
    };
    let listener = match tokio::net::TcpListener::bind(cli.listen).await {
        Ok(listener) => listener,
        Err(e) => {
            stderr_line(&format!(
                "payment-sim: cannot listen on {}: {e}",
                cli.listen
            ));
            return ExitCode::FAILURE;
        }
    };
    let bound = match listener.local_addr() {
        Ok(addr) => addr,
        Err(e) => {
            stderr_line(&format!(
                "payment-sim: cannot read the address bound for {}: {e}",
                cli.listen
            ));
            return ExitCode::FAILURE;
        }
    };

    let latency = Duration::from_millis(cli.latency_ms);
    let slow = Duration::from_millis(cli.latency_ms.saturating_mul(10)).max(MIN_SLOW);
    // Leaked once: handlers get a `&'static` (Copy) instead of cloning an `Arc`, whose
    // shared reference count would bounce between the cores on every request.
    let app: &'static App = Box::leak(Box::new(App::new(
        cli.max_keys,
        latency,
        slow,
        cli.fail_rate,
        cli.decline_rate,
    )));
    let router = api::router(app);

    // Tests and scripts read this line to learn the port; written without `println!`,
    // which would panic if stdout were closed.
    {
        // Ignored: with stdout gone the simulator still serves; only the line is lost.
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "payment-sim listening on {bound}");
        let _ = out.flush();
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    let on_signal = tokio::spawn(async move {
        signals.wait().await;
        // Ignored: with every receiver gone there is nothing left to stop.
        let _ = stop_tx.send(true);
    });
    // Without TCP_NODELAY a reply that leaves in two writes can stall ~40 ms behind
    // the client's delayed ACK (Nagle), which would dominate a microsecond replay.
    let listener = listener.tap_io(|tcp| {
        // Ignored: without it a connection is slower, not wrong.
        let _ = tcp.set_nodelay(true);
    });
    let server = axum::serve(listener, router).with_graceful_shutdown(stopped(stop_rx.clone()));
    // Graceful shutdown waits for open connections; bound that wait so a client that
    // keeps a request open cannot hold the process forever.
    let deadline = async move {
        stopped(stop_rx).await;
        tokio::time::sleep(SHUTDOWN_GRACE.saturating_add(slow)).await;
    };
    let code = tokio::select! {
        result = server => match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!("server failed: {e}");
                ExitCode::FAILURE
            }
        },
        () = deadline => {
            tracing::warn!("shutdown grace period elapsed; dropping open connections");
            ExitCode::SUCCESS
        }
    };
    // Stopped by the server's own failure rather than a signal: the signal
    // listener is all that is left running.
    on_signal.abort();
    let s = app.stats();
    tracing::info!(
        requests = s.requests,
        charges = s.charges,
        replays = s.replays,
        declined = s.declined,
        rejected = s.rejected,
        failed = s.failed,
        "payment-sim stopped"
    );
    code
}

/// Resolves once a stop was requested. If the sender is dropped without a request
/// (it is not), it never resolves rather than stopping the server by mistake.
async fn stopped(mut rx: watch::Receiver<bool>) {
    if rx.wait_for(|stop| *stop).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// SIGTERM and SIGINT, registered eagerly (see `run`).
struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Self {
                term: signal(SignalKind::terminate())?,
                int: signal(SignalKind::interrupt())?,
            })
        }
        #[cfg(not(unix))]
        {
            Ok(Self {})
        }
    }

    async fn wait(mut self) {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.term.recv() => {}
                _ = self.int.recv() => {}
            }
        }
        #[cfg(not(unix))]
        {
            if tokio::signal::ctrl_c().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}
