//! `payment-sim`: a local stand-in for the payment provider, for demos, integration
//! tests and load benchmarks of `order-processor`. It speaks the provider's API
//! (`POST /v1/charges` with an `Idempotency-Key` header, answering 201/200 for a
//! charge, 402 for a decline, 400/422 for a rejection, 409 while a request with the
//! same key is in progress, and 503 for a transient failure), keeps every idempotency
//! key in memory so that a replay answers what the first request got, and can inject
//! latency, failures and declines at chosen rates. It can also act as a production
//! provider does at its front door: require an API key (401), limit the rate of
//! charges (429 with `Retry-After`), and go down on request (503, or refused
//! connections) through an admin endpoint ([`outage`]).
//!
//! It is shaped by the benchmark it serves: it shares a 2-core machine with RabbitMQ,
//! PostgreSQL and the daemon while ~20 000 charges/s go through it, so every request
//! must cost as little CPU as possible. Hence no per-request logging or middleware,
//! plain keep-alive HTTP/1.1, a store split into independently locked shards
//! ([`store`]), statistics in relaxed atomics, a thread-local RNG, and hand-built
//! response bodies ([`reply`]); the optional behaviours cost nothing when off. It is self-contained (it does not link the
//! `order_processor` library) so that it stays a faithful *external* party, and it
//! never panics: every fallible step answers an HTTP error or exits with a message.
//!
//! This file is the process: command line, start-up, signals and shutdown.

mod api;
mod limit;
mod outage;
mod reply;
mod serve;
mod store;

use std::io::{IsTerminal as _, Write as _};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use tokio::sync::watch;

use crate::api::{App, Behaviour};
use crate::serve::{Ended, Servers, Signals};

const TOKENS_HELP: &str = "\
Deterministic payment tokens (the body's \"payment_token\"):
  tok_decline  always 402; recorded, so a replay of the key answers 402 again
  tok_reject   always 422; nothing recorded
  tok_fail     always 503; nothing recorded
  tok_slow     waits 10 x --latency-ms (at least 2 s), then behaves as normal
  other        503 with probability --fail-rate, else 402 with probability
               --decline-rate, else a new charge (201; 200 with the same
               charge_id on a replay of the Idempotency-Key)

Evaluation order of a charge: outage (503) -> --api-key (401) -> --rate-limit
(429 with Retry-After) -> request checks (400) -> replay of a recorded key (200/402;
422 if reused with another amount or currency) -> 409 while another request with the
same Idempotency-Key is in progress -> the token rules above.

Endpoints: POST /v1/charges, GET /v1/charges/{key}, GET /stats, GET /healthz,
POST /admin/outage, GET /admin/outage.

Outages, switched while running: POST /admin/outage with mode=503|refuse|off in the
query string or a form body (curl -d mode=503 ADMIN/admin/outage).
  503     every charge answered 503, with Retry-After if retry_after=SECONDS is given
  refuse  the charge port is closed: new connections are refused and idle ones
          closed; when the outage ends the same address is listened on again.
          Needs --admin-listen (else answered 409): the admin routes must stay up.
  off     back to normal
The answer comes once the switch took effect.

/admin/outage is served on --admin-listen when given, else on --listen; GET /stats,
/healthz and /v1/charges/{key} are served on both. Stdout carries two lines: \"payment-sim listening on ADDR\" then \"payment-sim admin listening on ADDR\"
(the same address as the first without --admin-listen).

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

    /// Charges accepted per second (a token bucket of N refilled at N/s); beyond, 429
    /// with Retry-After in whole seconds. Off by default.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    rate_limit: Option<u32>,

    /// Every charge must carry `Authorization: Bearer KEY`, else 401 (nothing recorded).
    /// Prefer the variable: a command line is visible to every user of the machine.
    #[arg(
        long,
        value_name = "KEY",
        env = "PAYMENT_SIM_API_KEY",
        hide_env_values = true,
        value_parser = parse_api_key
    )]
    api_key: Option<String>,

    /// IP:PORT of a second listener for the admin routes, which stays up during a
    /// `refuse` outage; port 0 picks a free port (printed on stdout's second line).
    #[arg(long, value_name = "ADDR")]
    admin_listen: Option<SocketAddr>,
}

/// A bearer token: visible ASCII without spaces, so that it fits in the header as is.
fn parse_api_key(s: &str) -> Result<String, String> {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(s.to_owned())
    } else {
        Err("must be visible ASCII characters without spaces".to_owned())
    }
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
    let (api, bound) = match listen(cli.listen).await {
        Ok(listening) => listening,
        Err(line) => {
            stderr_line(&line);
            return ExitCode::FAILURE;
        }
    };
    let admin = match cli.admin_listen {
        Some(address) => match listen(address).await {
            Ok(listening) => Some(listening),
            Err(line) => {
                stderr_line(&line);
                return ExitCode::FAILURE;
            }
        },
        None => None,
    };

    let slow = Duration::from_millis(cli.latency_ms.saturating_mul(10)).max(MIN_SLOW);
    // Leaked once: handlers get a `&'static` (Copy) instead of cloning an `Arc`, whose
    // shared reference count would bounce between the cores on every request.
    let app: &'static App = Box::leak(Box::new(App::new(Behaviour {
        max_keys: cli.max_keys,
        latency: Duration::from_millis(cli.latency_ms),
        slow,
        fail_rate: cli.fail_rate,
        decline_rate: cli.decline_rate,
        rate_limit: cli.rate_limit,
        api_key: cli.api_key,
        admin_listener: admin.is_some(),
    })));
    let admin_bound = admin.as_ref().map_or(bound, |(_, address)| *address);

    // Tests and scripts read these lines to learn the ports; written without
    // `println!`, which would panic if stdout were closed.
    {
        // Ignored: with stdout gone the simulator still serves; only the lines are lost.
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "payment-sim listening on {bound}");
        let _ = writeln!(out, "payment-sim admin listening on {admin_bound}");
        let _ = out.flush();
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    let on_signal = tokio::spawn(async move {
        signals.wait().await;
        // Ignored: with every receiver gone there is nothing left to stop.
        let _ = stop_tx.send(true);
    });
    let servers = Servers {
        api,
        api_router: api::router(app, admin.is_none()),
        admin: admin.map(|(listener, _)| (listener, api::admin(app))),
        outage: app.outage(),
    };
    // Graceful shutdown waits for open connections; bound that wait so a client that
    // keeps a request open cannot hold the process forever.
    let code = match servers
        .run(stop_rx, SHUTDOWN_GRACE.saturating_add(slow))
        .await
    {
        Ended::Drained => ExitCode::SUCCESS,
        Ended::GraceElapsed => {
            tracing::warn!("shutdown grace period elapsed; dropping open connections");
            ExitCode::SUCCESS
        }
    };
    // Stopped by the servers' own failure rather than a signal: the signal
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
        in_progress = s.in_progress,
        rate_limited = s.rate_limited,
        unauthorized = s.unauthorized,
        outage = s.outage,
        "payment-sim stopped"
    );
    code
}

/// Binds `address`; `Err` is the line to print.
async fn listen(address: SocketAddr) -> Result<(tokio::net::TcpListener, SocketAddr), String> {
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|e| format!("payment-sim: cannot listen on {address}: {e}"))?;
    let bound = listener
        .local_addr()
        .map_err(|e| format!("payment-sim: cannot read the address bound for {address}: {e}"))?;
    Ok((listener, bound))
}
