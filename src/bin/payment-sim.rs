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
//! plain keep-alive HTTP/1.1, a store split into 64 independently locked shards (a lock
//! is never held across an `.await`), statistics in relaxed atomics, a thread-local
//! RNG, and hand-built response bodies. It is self-contained (it does not link the
//! `order_processor` library) so that it stays a faithful *external* party, and it
//! never panics: every fallible step answers an HTTP error or exits with a message.
//!
//! Deterministic behaviour by `payment_token`, for demos and tests:
//! - `tok_decline`: always 402; the decline is recorded, so a replay of the key is 402 too.
//! - `tok_reject`: always 422; nothing is recorded.
//! - `tok_fail`: always 503; nothing is recorded, so a retry is a first attempt again.
//! - `tok_slow`: waits 10 × `--latency-ms` (at least 2 s) instead of `--latency-ms`,
//!   then behaves like any other token.
//! - any other token: 503 with probability `--fail-rate`, else 402 with probability
//!   `--decline-rate`, else a new charge.
//!
//! A request is evaluated in this order: body and header validation (400) → replay of
//! a recorded key (200 with the same `charge_id`, or 402; 409 if the amount or currency
//! differs from the recorded one) → latency → 422 for an invalid request (`tok_reject`,
//! empty `order_id`/`customer_id`, `amount_minor` <= 0, currency not three upper-case
//! letters) → `tok_fail`/`--fail-rate` (503) → `tok_decline`/`--decline-rate` (402,
//! recorded) → new charge (201, `charge_id` = `ch_` + 32 hex digits). The last two steps
//! insert-if-absent under the shard lock, so concurrent first requests for one key make
//! exactly one charge and the others replay it.
//!
//! Inspection endpoints: `GET /v1/charges/{key}` (the recorded outcome, how many
//! well-formed POSTs carried the key, and the last `traceparent` seen), `GET /stats`
//! (counters, with `requests = charges + replays + declined + rejected + failed`) and
//! `GET /healthz`.
//!
//! Memory is bounded by `--max-keys`: a key is remembered from its first well-formed POST
//! (failed and rejected attempts included, so their `requests` count survives), and
//! once that many keys are held a new key is answered 503 instead of growing the store.
//! A key costs about 300 bytes with its `traceparent`, so the default of 10 000 000
//! keys is about 3 GB at worst; a 1-minute benchmark at 20 000/s holds ~400 MB.

use std::borrow::Cow;
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::io::{IsTerminal as _, Write as _};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt as _;
use clap::Parser;
use rand::Rng as _;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use uuid::Uuid;

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

/// The longest `Idempotency-Key` accepted (as at real providers); with `--max-keys` it
/// bounds the store's memory.
const MAX_KEY_LEN: usize = 255;
/// A W3C `traceparent` is 55 characters; anything far longer is not one and is not kept.
const MAX_TRACEPARENT_LEN: usize = 512;
/// A charge body is ~200 bytes; refuse large ones before parsing them.
const MAX_BODY_BYTES: usize = 16 * 1024;
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
    init_tracing();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
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
    let app: &'static App = Box::leak(Box::new(App {
        store: Store::new(cli.max_keys),
        stats: Stats::default(),
        latency,
        slow,
        fail_rate: cli.fail_rate,
        decline_rate: cli.decline_rate,
    }));
    let router = Router::new()
        .route("/v1/charges", post(create_charge))
        .route("/v1/charges/{key}", get(get_charge))
        .route("/stats", get(get_stats))
        .route("/healthz", get(healthz))
        .with_state(app);

    // Tests and scripts read this line to learn the port; written without `println!`,
    // which would panic if stdout were closed.
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "payment-sim listening on {bound}");
        let _ = out.flush();
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        signals.wait().await;
        let _ = stop_tx.send(true);
    });
    // Without TCP_NODELAY a reply that leaves in two writes can stall ~40 ms behind
    // the client's delayed ACK (Nagle), which would dominate a microsecond replay.
    let listener = listener.tap_io(|tcp| {
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
    let s = app.stats.snapshot();
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

struct App {
    store: Store,
    stats: Stats,
    latency: Duration,
    slow: Duration,
    fail_rate: f64,
    decline_rate: f64,
}

/// Counters for `GET /stats`. Relaxed: they are independent tallies, read for reporting.
/// Every POST lands in exactly one of the outcome counters.
#[derive(Default)]
struct Stats {
    requests: AtomicU64,
    charges: AtomicU64,
    replays: AtomicU64,
    declined: AtomicU64,
    rejected: AtomicU64,
    failed: AtomicU64,
}

#[derive(Serialize)]
struct StatsView {
    requests: u64,
    charges: u64,
    replays: u64,
    declined: u64,
    rejected: u64,
    failed: u64,
}

impl Stats {
    fn snapshot(&self) -> StatsView {
        StatsView {
            requests: self.requests.load(Ordering::Relaxed),
            charges: self.charges.load(Ordering::Relaxed),
            replays: self.replays.load(Ordering::Relaxed),
            declined: self.declined.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
        }
    }
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// What a key got the first time it was charged or declined.
#[derive(Clone, Copy)]
enum Kind {
    Charged(Uuid),
    Declined,
}

struct Recorded {
    kind: Kind,
    // Kept to tell a true replay from a reuse of the key for another payment (409).
    amount_minor: i64,
    currency: Box<str>,
}

struct Record {
    /// `None` while the key has only seen attempts that recorded nothing (503, 422).
    outcome: Option<Recorded>,
    requests: u64,
    traceparent: Option<Box<str>>,
}

type Shard = Mutex<HashMap<String, Record>>;

const SHARDS: usize = 64;
const SHARD_MASK: u64 = 63;

/// Idempotency keys, in independently locked shards so the two cores rarely contend.
struct Store {
    shards: [Shard; SHARDS],
    len: AtomicUsize,
    max_keys: usize,
}

impl Store {
    fn new(max_keys: usize) -> Self {
        Self {
            shards: std::array::from_fn(|_| Mutex::new(HashMap::new())),
            len: AtomicUsize::new(0),
            max_keys,
        }
    }

    fn shard(&self, key: &str) -> MutexGuard<'_, HashMap<String, Record>> {
        // FNV-1a: a few cycles per byte, good enough to spread keys over 64 shards
        // (the maps inside keep std's DoS-resistant hasher).
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in key.bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
        let index = usize::try_from((h ^ (h >> 32)) & SHARD_MASK).unwrap_or(0);
        let shard = self.shards.get(index).unwrap_or(&self.shards[0]);
        // A poisoned lock would mean a panic while holding it, which this code does not
        // do; the map is still consistent, so keep serving.
        shard.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes one slot of `--max-keys`, if any is left. Called under the shard lock
    /// right before inserting, so the bound is exact.
    fn reserve(&self) -> bool {
        self.len
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                n.checked_add(1).filter(|&next| next <= self.max_keys)
            })
            .is_ok()
    }

    /// First look at a POST: counts it against the key and keeps its `traceparent`, and
    /// returns the recorded answer if the key has one.
    fn touch(&self, key: &str, traceparent: Option<&str>, charge: &ChargeRequest<'_>) -> Touch {
        let mut shard = self.shard(key);
        let record = match shard.get_mut(key) {
            Some(record) => {
                record.requests = record.requests.saturating_add(1);
                record
            }
            None => {
                if !self.reserve() {
                    return Touch::Full;
                }
                shard.entry(key.to_owned()).or_insert(Record {
                    outcome: None,
                    requests: 1,
                    traceparent: None,
                })
            }
        };
        if let Some(tp) = traceparent
            && record.traceparent.as_deref() != Some(tp)
        {
            record.traceparent = Some(tp.into());
        }
        match &record.outcome {
            Some(recorded) => Touch::Recorded(replay(recorded, charge)),
            None => Touch::Fresh,
        }
    }

    /// Records a decline or a new charge unless a concurrent request for the same key
    /// recorded first, in which case that outcome is replayed: one charge per key.
    fn settle(&self, key: &str, kind: Kind, charge: &ChargeRequest<'_>) -> Reply {
        let mut shard = self.shard(key);
        let record = match shard.entry(key.to_owned()) {
            Entry::Occupied(entry) => entry.into_mut(),
            // `touch` inserted the key and nothing removes keys, so this is not reached;
            // handled anyway rather than assumed.
            Entry::Vacant(entry) => {
                if !self.reserve() {
                    return Reply::StoreFull;
                }
                entry.insert(Record {
                    outcome: None,
                    requests: 1,
                    traceparent: None,
                })
            }
        };
        if let Some(recorded) = &record.outcome {
            return replay(recorded, charge);
        }
        record.outcome = Some(Recorded {
            kind,
            amount_minor: charge.amount_minor,
            currency: charge.currency.as_ref().into(),
        });
        match kind {
            Kind::Charged(id) => Reply::Created(id),
            Kind::Declined => Reply::Declined,
        }
    }
}

enum Touch {
    Recorded(Reply),
    Fresh,
    Full,
}

fn replay(recorded: &Recorded, charge: &ChargeRequest<'_>) -> Reply {
    if recorded.amount_minor != charge.amount_minor || *recorded.currency != *charge.currency {
        return Reply::Conflict;
    }
    match recorded.kind {
        Kind::Charged(id) => Reply::Replayed(id),
        Kind::Declined => Reply::DeclineReplayed,
    }
}

/// The charge body. Strings borrow from the request bytes unless they hold escapes.
#[derive(Deserialize)]
struct ChargeRequest<'a> {
    #[serde(borrow)]
    order_id: Cow<'a, str>,
    #[serde(borrow)]
    customer_id: Cow<'a, str>,
    amount_minor: i64,
    #[serde(borrow)]
    currency: Cow<'a, str>,
    #[serde(borrow)]
    payment_token: Cow<'a, str>,
}

impl ChargeRequest<'_> {
    /// Well-formed but unacceptable requests, answered 422 like `tok_reject`.
    fn is_valid(&self) -> bool {
        !self.order_id.is_empty()
            && !self.customer_id.is_empty()
            && self.amount_minor > 0
            && self.currency.len() == 3
            && self.currency.bytes().all(|b| b.is_ascii_uppercase())
    }
}

enum Reply {
    Created(Uuid),
    Replayed(Uuid),
    Declined,
    DeclineReplayed,
    BadRequest(&'static str),
    Conflict,
    Rejected,
    Failed,
    StoreFull,
}

impl Reply {
    /// Counts the answer and builds it. Bodies are written by hand: they are tiny and
    /// fixed, and the charge id is hex, so there is nothing to escape.
    fn respond(self, stats: &Stats) -> Response {
        match self {
            Self::Created(id) => {
                bump(&stats.charges);
                charge_response(StatusCode::CREATED, id)
            }
            Self::Replayed(id) => {
                bump(&stats.replays);
                charge_response(StatusCode::OK, id)
            }
            Self::Declined => {
                bump(&stats.declined);
                declined_response()
            }
            Self::DeclineReplayed => {
                bump(&stats.replays);
                declined_response()
            }
            Self::BadRequest(body) => {
                bump(&stats.rejected);
                json(StatusCode::BAD_REQUEST, body)
            }
            Self::Conflict => {
                bump(&stats.rejected);
                json(
                    StatusCode::CONFLICT,
                    r#"{"error":"idempotency_conflict","message":"key reused with another amount or currency"}"#,
                )
            }
            Self::Rejected => {
                bump(&stats.rejected);
                json(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    r#"{"error":"rejected","message":"charge request rejected"}"#,
                )
            }
            Self::Failed => {
                bump(&stats.failed);
                json(
                    StatusCode::SERVICE_UNAVAILABLE,
                    r#"{"error":"unavailable","message":"simulated provider failure"}"#,
                )
            }
            Self::StoreFull => {
                bump(&stats.failed);
                json(
                    StatusCode::SERVICE_UNAVAILABLE,
                    r#"{"error":"store_full","message":"--max-keys reached"}"#,
                )
            }
        }
    }
}

const NO_KEY: &str =
    r#"{"error":"bad_request","message":"missing or invalid Idempotency-Key header"}"#;
const BAD_BODY: &str = r#"{"error":"bad_request","message":"body is not a JSON charge request"}"#;

fn json(status: StatusCode, body: impl Into<axum::body::Body>) -> Response {
    let mut response = Response::new(body.into());
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn push_charge_id(out: &mut String, id: Uuid) {
    let mut hex = [0u8; uuid::fmt::Simple::LENGTH];
    out.push_str("ch_");
    out.push_str(id.simple().encode_lower(&mut hex));
}

fn charge_id(id: Uuid) -> String {
    let mut out = String::with_capacity(3 + uuid::fmt::Simple::LENGTH);
    push_charge_id(&mut out, id);
    out
}

fn charge_response(status: StatusCode, id: Uuid) -> Response {
    let mut body = String::with_capacity(72);
    body.push_str(r#"{"charge_id":""#);
    push_charge_id(&mut body, id);
    body.push_str(r#"","status":"succeeded"}"#);
    json(status, body)
}

fn declined_response() -> Response {
    json(
        StatusCode::PAYMENT_REQUIRED,
        r#"{"status":"declined","error":"card_declined"}"#,
    )
}

/// A usable `Idempotency-Key`: present, visible ASCII, 1..=255 bytes.
fn idempotency_key(headers: &HeaderMap) -> Option<&str> {
    let key = headers.get("idempotency-key")?.to_str().ok()?.trim();
    (!key.is_empty() && key.len() <= MAX_KEY_LEN).then_some(key)
}

fn traceparent(headers: &HeaderMap) -> Option<&str> {
    let tp = headers.get("traceparent")?.to_str().ok()?.trim();
    (!tp.is_empty() && tp.len() <= MAX_TRACEPARENT_LEN).then_some(tp)
}

/// `true` with probability `rate`; no RNG call at all for the usual 0.
fn roll(rate: f64) -> bool {
    rate > 0.0 && rand::rng().random::<f64>() < rate
}

async fn create_charge(State(app): State<&'static App>, request: Request) -> Response {
    bump(&app.stats.requests);
    let (parts, body) = request.into_parts();
    // The body is read even when the header is missing, so the connection stays usable.
    let Ok(bytes) = axum::body::to_bytes(body, MAX_BODY_BYTES).await else {
        return Reply::BadRequest(BAD_BODY).respond(&app.stats);
    };
    let reply = charge(app, &parts.headers, &bytes).await;
    reply.respond(&app.stats)
}

async fn charge(app: &App, headers: &HeaderMap, bytes: &Bytes) -> Reply {
    let Some(key) = idempotency_key(headers) else {
        return Reply::BadRequest(NO_KEY);
    };
    let Ok(request) = serde_json::from_slice::<ChargeRequest<'_>>(bytes) else {
        return Reply::BadRequest(BAD_BODY);
    };
    match app.store.touch(key, traceparent(headers), &request) {
        Touch::Recorded(reply) => return reply,
        Touch::Full => return Reply::StoreFull,
        Touch::Fresh => {}
    }

    let token = request.payment_token.as_ref();
    let delay = if token == "tok_slow" {
        app.slow
    } else {
        app.latency
    };
    // No timer at all for the default 0: a sleep registers with the timer wheel.
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }

    if token == "tok_reject" || !request.is_valid() {
        return Reply::Rejected;
    }
    if token == "tok_fail" || roll(app.fail_rate) {
        return Reply::Failed;
    }
    let kind = if token == "tok_decline" || roll(app.decline_rate) {
        Kind::Declined
    } else {
        // A v4 UUID from the thread-local RNG: no getrandom syscall per charge.
        Kind::Charged(uuid::Builder::from_random_bytes(rand::rng().random()).into_uuid())
    };
    app.store.settle(key, kind, &request)
}

#[derive(Serialize)]
struct ChargeView {
    charge_id: Option<String>,
    status: &'static str,
    amount_minor: i64,
    currency: Box<str>,
    requests: u64,
    traceparent: Option<Box<str>>,
}

async fn get_charge(State(app): State<&'static App>, Path(key): Path<String>) -> Response {
    // Copied out so that serialising happens after the lock is released.
    let view = {
        let shard = app.store.shard(&key);
        shard.get(&key).and_then(|record| {
            let recorded = record.outcome.as_ref()?;
            let (charge_id, status) = match recorded.kind {
                Kind::Charged(id) => (Some(charge_id(id)), "succeeded"),
                Kind::Declined => (None, "declined"),
            };
            Some(ChargeView {
                charge_id,
                status,
                amount_minor: recorded.amount_minor,
                currency: recorded.currency.clone(),
                requests: record.requests,
                traceparent: record.traceparent.clone(),
            })
        })
    };
    match view {
        Some(view) => to_json(StatusCode::OK, &view),
        None => json(
            StatusCode::NOT_FOUND,
            r#"{"error":"not_found","message":"no charge recorded for this key"}"#,
        ),
    }
}

async fn get_stats(State(app): State<&'static App>) -> Response {
    to_json(StatusCode::OK, &app.stats.snapshot())
}

async fn healthz() -> impl IntoResponse {
    "ok"
}

fn to_json(status: StatusCode, value: &impl Serialize) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => json(status, body),
        Err(_) => json(
            StatusCode::INTERNAL_SERVER_ERROR,
            r#"{"error":"internal","message":"cannot serialise the response"}"#,
        ),
    }
}
