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
//! A request is evaluated in this order, as a provider's front door would: a `503`
//! outage switched on at the admin endpoint (503, [`crate::outage`]) → `--api-key`
//! (401 without `Authorization: Bearer <key>`) → `--rate-limit` (429 with
//! `Retry-After`, [`crate::limit`]) → body and header validation (400) → replay of a
//! recorded key (200 with the same `charge_id`, or 402; 422 if the amount or currency
//! differs from the recorded one) → 409 if another request for the key is still being
//! processed → latency → 422 for an invalid request (`tok_reject`, empty
//! `order_id`/`customer_id`, `amount_minor` <= 0, currency not three upper-case
//! letters) → `tok_fail`/`--fail-rate` (503) → `tok_decline`/`--decline-rate` (402,
//! recorded) → new charge (201, `charge_id` = `ch_` + 32 hex digits). Nothing is
//! recorded for a 503, 401, 429 or 409.
//!
//! Inspection endpoints: `GET /v1/charges/{key}` (the recorded outcome, how many
//! well-formed POSTs carried the key, and the last `traceparent` seen), `GET /stats`
//! (counters, with `requests` the sum of all the others) and `GET /healthz`.

use std::borrow::Cow;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use rand::Rng as _;
use serde::{Deserialize, Serialize};

use crate::limit::{RateLimit, retry_after_seconds};
use crate::outage::{self, Outage};
use crate::reply::{BAD_BODY, NO_KEY, Reply, Stats, StatsView, bump, charge_id, json, to_json};
use crate::store::{Kind, Store, Touch};

/// The longest `Idempotency-Key` accepted (as at real providers); with `--max-keys` it
/// bounds the store's memory.
const MAX_KEY_LEN: usize = 255;
/// A W3C `traceparent` is 55 characters; anything far longer is not one and is not kept.
const MAX_TRACEPARENT_LEN: usize = 512;
/// A charge body is ~200 bytes; refuse large ones before parsing them.
const MAX_BODY_BYTES: usize = 16 * 1024;

/// How the simulator behaves, from the command line.
pub struct Behaviour {
    /// Most idempotency keys remembered.
    pub max_keys: usize,
    /// Delay of every first request for a key.
    pub latency: Duration,
    /// Delay of a `tok_slow` request.
    pub slow: Duration,
    /// Probabilities in 0..=1.
    pub fail_rate: f64,
    pub decline_rate: f64,
    /// Charges accepted per second, if limited.
    pub rate_limit: Option<u32>,
    /// The bearer token every charge must carry, if any.
    pub api_key: Option<String>,
    /// Whether the admin routes have a listener of their own (`--admin-listen`).
    pub admin_listener: bool,
}

/// What every handler shares: the store, the counters and the injected behaviour.
pub struct App {
    store: Store,
    stats: Stats,
    outage: Outage,
    rate_limit: Option<RateLimit>,
    /// `Bearer <key>`, the whole expected header value.
    authorization: Option<Box<[u8]>>,
    latency: Duration,
    slow: Duration,
    fail_rate: f64,
    decline_rate: f64,
}

impl App {
    pub fn new(behaviour: Behaviour) -> Self {
        Self {
            store: Store::new(behaviour.max_keys),
            stats: Stats::default(),
            outage: Outage::new(behaviour.admin_listener),
            rate_limit: behaviour.rate_limit.map(RateLimit::new),
            authorization: behaviour
                .api_key
                .map(|key| format!("Bearer {key}").into_bytes().into_boxed_slice()),
            latency: behaviour.latency,
            slow: behaviour.slow,
            fail_rate: behaviour.fail_rate,
            decline_rate: behaviour.decline_rate,
        }
    }

    /// The counters as `GET /stats` shows them.
    pub fn stats(&self) -> StatsView {
        self.stats.snapshot()
    }

    pub fn outage(&self) -> &Outage {
        &self.outage
    }

    /// The provider's front door: an outage, a missing API key or the rate limit
    /// answer before the request is looked at.
    fn gate(&self, headers: &HeaderMap) -> Option<Reply> {
        if let Some(reply) = self.outage.reply() {
            return Some(reply);
        }
        if let Some(expected) = &self.authorization
            && !authorized(headers, expected)
        {
            return Some(Reply::Unauthorized);
        }
        if let Some(limit) = &self.rate_limit
            && let Err(wait) = limit.acquire()
        {
            return Some(Reply::RateLimited(retry_after_seconds(wait)));
        }
        None
    }
}

/// The charge API and the inspection routes, for the main listener; with
/// `admin_routes`, the outage switch too (when there is no admin listener).
pub fn router(app: &'static App, admin_routes: bool) -> Router {
    let router = inspection().route("/v1/charges", post(create_charge));
    let router = if admin_routes {
        with_outage_switch(router)
    } else {
        router
    };
    router.with_state(app)
}

/// The admin listener's routes: the outage switch and the inspection routes.
pub fn admin(app: &'static App) -> Router {
    with_outage_switch(inspection()).with_state(app)
}

fn with_outage_switch(router: Router<&'static App>) -> Router<&'static App> {
    router.route("/admin/outage", post(outage::switch).get(outage::show))
}

fn inspection() -> Router<&'static App> {
    Router::new()
        .route("/v1/charges/{key}", get(get_charge))
        .route("/stats", get(get_stats))
        .route("/healthz", get(healthz))
}

/// `Authorization: Bearer <key>`, the scheme's name in any case (RFC 9110 §11.1).
fn authorized(headers: &HeaderMap, expected: &[u8]) -> bool {
    const SCHEME: usize = "Bearer ".len();
    let Some(given) = headers.get(AUTHORIZATION).map(|v| v.as_bytes()) else {
        return false;
    };
    match (
        given.split_at_checked(SCHEME),
        expected.split_at_checked(SCHEME),
    ) {
        (Some((scheme, token)), Some((want_scheme, want_token))) => {
            scheme.eq_ignore_ascii_case(want_scheme) && token == want_token
        }
        _ => false,
    }
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
    if let Some(reply) = app.gate(headers) {
        return reply;
    }
    let Some(key) = idempotency_key(headers) else {
        return Reply::BadRequest(NO_KEY);
    };
    let Ok(request) = serde_json::from_slice::<ChargeRequest<'_>>(bytes) else {
        return Reply::BadRequest(BAD_BODY);
    };
    // Held until the request is answered: meanwhile, others for the key get 409.
    let claim = match app.store.touch(key, traceparent(headers), &request) {
        Touch::Recorded(reply) => return reply,
        Touch::InProgress => return Reply::InProgress,
        Touch::Full => return Reply::StoreFull,
        Touch::Fresh(claim) => claim,
    };

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
    claim.settle(kind, &request)
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
