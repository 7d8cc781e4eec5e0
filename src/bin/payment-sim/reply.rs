//! Every answer the charge endpoint gives, and the counters of `GET /stats`.
//!
//! A [`Reply`] is counted and turned into a response in one place
//! ([`Reply::respond`]), so that every POST lands in exactly one outcome counter and
//! `requests` is always their sum. Bodies are written by hand: they are tiny and
//! fixed, and the charge id is hex, so there is nothing to escape.

use std::sync::atomic::{AtomicU64, Ordering};

use axum::http::header::{CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use axum::http::{HeaderValue, StatusCode};
use axum::response::Response;
use serde::Serialize;
use uuid::Uuid;

pub const NO_KEY: &str =
    r#"{"error":"bad_request","message":"missing or invalid Idempotency-Key header"}"#;
pub const BAD_BODY: &str =
    r#"{"error":"bad_request","message":"body is not a JSON charge request"}"#;

/// The answer to one `POST /v1/charges`.
pub enum Reply {
    Created(Uuid),
    Replayed(Uuid),
    Declined,
    DeclineReplayed,
    BadRequest(&'static str),
    /// The key was used before for another amount or currency (422).
    KeyReused,
    Rejected,
    Failed,
    StoreFull,
    /// A request with the same key is still being processed (409).
    InProgress,
    /// Over `--rate-limit`; the whole seconds until a charge would be accepted (429).
    RateLimited(u64),
    /// No `Authorization: Bearer <--api-key>` (401).
    Unauthorized,
    /// A `503` outage switched on at the admin endpoint, with its `Retry-After`.
    Outage(Option<u64>),
}

impl Reply {
    /// Counts the answer and builds it.
    pub fn respond(self, stats: &Stats) -> Response {
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
            Self::KeyReused => {
                bump(&stats.rejected);
                json(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    r#"{"error":"idempotency_key_reused","message":"key used before with another amount or currency"}"#,
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
            Self::InProgress => {
                bump(&stats.in_progress);
                json(
                    StatusCode::CONFLICT,
                    r#"{"error":"idempotency_key_in_use","message":"a request with this key is in progress"}"#,
                )
            }
            Self::RateLimited(seconds) => {
                bump(&stats.rate_limited);
                let response = json(
                    StatusCode::TOO_MANY_REQUESTS,
                    r#"{"error":"rate_limited","message":"too many charges per second"}"#,
                );
                with_retry_after(response, Some(seconds))
            }
            Self::Unauthorized => {
                bump(&stats.unauthorized);
                let mut response = json(
                    StatusCode::UNAUTHORIZED,
                    r#"{"error":"unauthorized","message":"missing or wrong API key"}"#,
                );
                response
                    .headers_mut()
                    .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                response
            }
            Self::Outage(retry_after) => {
                bump(&stats.outage);
                let response = json(
                    StatusCode::SERVICE_UNAVAILABLE,
                    r#"{"error":"outage","message":"simulated outage"}"#,
                );
                with_retry_after(response, retry_after)
            }
        }
    }
}

/// Counters for `GET /stats`. Relaxed: they are independent tallies, read for reporting.
/// Every POST lands in exactly one of the outcome counters.
#[derive(Default)]
pub struct Stats {
    pub requests: AtomicU64,
    charges: AtomicU64,
    replays: AtomicU64,
    declined: AtomicU64,
    rejected: AtomicU64,
    failed: AtomicU64,
    in_progress: AtomicU64,
    rate_limited: AtomicU64,
    unauthorized: AtomicU64,
    outage: AtomicU64,
}

/// `requests` = the sum of all the others.
#[derive(Serialize)]
pub struct StatsView {
    pub requests: u64,
    pub charges: u64,
    pub replays: u64,
    pub declined: u64,
    pub rejected: u64,
    pub failed: u64,
    pub in_progress: u64,
    pub rate_limited: u64,
    pub unauthorized: u64,
    pub outage: u64,
}

impl Stats {
    pub fn snapshot(&self) -> StatsView {
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        StatsView {
            requests: read(&self.requests),
            charges: read(&self.charges),
            replays: read(&self.replays),
            declined: read(&self.declined),
            rejected: read(&self.rejected),
            failed: read(&self.failed),
            in_progress: read(&self.in_progress),
            rate_limited: read(&self.rate_limited),
            unauthorized: read(&self.unauthorized),
            outage: read(&self.outage),
        }
    }
}

pub fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

pub fn json(status: StatusCode, body: impl Into<axum::body::Body>) -> Response {
    let mut response = Response::new(body.into());
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

pub fn to_json(status: StatusCode, value: &impl Serialize) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => json(status, body),
        Err(_) => json(
            StatusCode::INTERNAL_SERVER_ERROR,
            r#"{"error":"internal","message":"cannot serialise the response"}"#,
        ),
    }
}

/// `Retry-After` in delay-seconds, the form every client understands.
fn with_retry_after(mut response: Response, seconds: Option<u64>) -> Response {
    if let Some(seconds) = seconds {
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

fn push_charge_id(out: &mut String, id: Uuid) {
    let mut hex = [0u8; uuid::fmt::Simple::LENGTH];
    out.push_str("ch_");
    out.push_str(id.simple().encode_lower(&mut hex));
}

pub fn charge_id(id: Uuid) -> String {
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
