//! The HTTP surface: `POST /v1/charges` and the inspection endpoints.
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
//! recorded) → new charge (201, `charge_id` = `ch_` + 32 hex digits).
//!
//! Inspection endpoints: `GET /v1/charges/{key}` (the recorded outcome, how many
//! well-formed POSTs carried the key, and the last `traceparent` seen), `GET /stats`
//! (counters, with `requests = charges + replays + declined + rejected + failed`) and
//! `GET /healthz`.

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use rand::Rng as _;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::store::{Kind, Store, Touch};

/// The longest `Idempotency-Key` accepted (as at real providers); with `--max-keys` it
/// bounds the store's memory.
const MAX_KEY_LEN: usize = 255;
/// A W3C `traceparent` is 55 characters; anything far longer is not one and is not kept.
const MAX_TRACEPARENT_LEN: usize = 512;
/// A charge body is ~200 bytes; refuse large ones before parsing them.
const MAX_BODY_BYTES: usize = 16 * 1024;

/// What every handler shares: the store, the counters and the injected behaviour.
pub struct App {
    store: Store,
    stats: Stats,
    latency: Duration,
    slow: Duration,
    fail_rate: f64,
    decline_rate: f64,
}

impl App {
    /// `latency` delays every first request for a key, `slow` a `tok_slow` one; the
    /// rates are probabilities in 0..=1.
    pub fn new(
        max_keys: usize,
        latency: Duration,
        slow: Duration,
        fail_rate: f64,
        decline_rate: f64,
    ) -> Self {
        Self {
            store: Store::new(max_keys),
            stats: Stats::default(),
            latency,
            slow,
            fail_rate,
            decline_rate,
        }
    }

    /// The counters as `GET /stats` shows them.
    pub fn stats(&self) -> StatsView {
        self.stats.snapshot()
    }
}

/// The simulator's routes over `app`.
pub fn router(app: &'static App) -> Router {
    Router::new()
        .route("/v1/charges", post(create_charge))
        .route("/v1/charges/{key}", get(get_charge))
        .route("/stats", get(get_stats))
        .route("/healthz", get(healthz))
        .with_state(app)
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
pub struct StatsView {
    pub requests: u64,
    pub charges: u64,
    pub replays: u64,
    pub declined: u64,
    pub rejected: u64,
    pub failed: u64,
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

/// The charge body. Strings borrow from the request bytes unless they hold escapes.
#[derive(Deserialize)]
pub struct ChargeRequest<'a> {
    #[serde(borrow)]
    order_id: Cow<'a, str>,
    #[serde(borrow)]
    customer_id: Cow<'a, str>,
    pub amount_minor: i64,
    #[serde(borrow)]
    pub currency: Cow<'a, str>,
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

pub enum Reply {
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
    let view = app.store.recorded(&key).map(|found| {
        let (charge_id, status) = match found.kind {
            Kind::Charged(id) => (Some(charge_id(id)), "succeeded"),
            Kind::Declined => (None, "declined"),
        };
        ChargeView {
            charge_id,
            status,
            amount_minor: found.amount_minor,
            currency: found.currency,
            requests: found.requests,
            traceparent: found.traceparent,
        }
    });
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
