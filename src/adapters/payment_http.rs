//! `PaymentProvider` over HTTP with reqwest.
//!
//! `POST {base}/v1/charges` with `Idempotency-Key: <order_id>` and the
//! `traceparent` of its charge span. Answers map to the domain's error classes:
//! 200/201 charged, 402 declined, other 4xx (but 429) rejected, 429/5xx,
//! timeouts and connection failures unavailable (transient). One client is
//! shared by all workers so connections stay alive between charges: HTTP/1.1,
//! one connection per charge in flight, and at most `max_in_flight` charges
//! at a time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use opentelemetry::trace::{SpanKind, Status, TraceContextExt as _};
use opentelemetry::{Context, KeyValue, StringValue};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, StatusCode, Url};
use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, SemaphorePermit};

use crate::domain::{ChargeId, Order, PaymentError, PaymentProvider, UnavailableReason};
use crate::metrics::Metrics;
use crate::telemetry;

/// Larger answers are not read: a charge answer is a few dozen bytes.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum PaymentClientError {
    #[error("PAYMENT_BASE_URL cannot be joined with /v1/charges")]
    InvalidUrl,
    #[error("could not build the HTTP client: {0}")]
    Client(#[source] reqwest::Error),
}

pub struct HttpPaymentProvider {
    client: reqwest::Client,
    charges_url: Url,
    host_header: HeaderValue,
    server_address: StringValue,
    metrics: Arc<Metrics>,
    /// One permit per charge that may be in flight, when capped below the
    /// worker pool (which otherwise bounds them).
    in_flight: Option<Semaphore>,
}

#[derive(Serialize)]
struct ChargeRequest<'a> {
    order_id: String,
    customer_id: &'a str,
    amount_minor: i64,
    currency: &'a str,
    payment_token: &'a str,
}

#[derive(Deserialize)]
struct ChargeAnswer {
    charge_id: String,
    status: String,
}

/// `{base}/v1/charges`, keeping a path the base URL has: a provider at
/// `https://psp.example/api` is called at `https://psp.example/api/v1/charges`.
/// `None` for a URL that cannot have a path (`mailto:` and the like).
fn charges_url(base: &Url) -> Option<Url> {
    if base.cannot_be_a_base() {
        return None;
    }
    let mut directory = base.clone();
    if !directory.path().ends_with('/') {
        let path = format!("{}/", directory.path());
        directory.set_path(&path);
    }
    directory.join("v1/charges").ok()
}

impl HttpPaymentProvider {
    /// With `max_in_flight`, that many charges are sent at a time (at least
    /// one) and the others wait for their turn. Every connection opened is
    /// kept alive, so that no charge waits for a handshake.
    pub fn new(
        base_url: &str,
        timeout: Duration,
        max_in_flight: Option<usize>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, PaymentClientError> {
        let max_in_flight = max_in_flight.map(|n| n.clamp(1, Semaphore::MAX_PERMITS));
        let base = Url::parse(base_url).map_err(|_| PaymentClientError::InvalidUrl)?;
        let charges_url = charges_url(&base).ok_or(PaymentClientError::InvalidUrl)?;
        let host = base.host_str().unwrap_or_default();
        let server_address = StringValue::from(Arc::<str>::from(host));
        // Made once here instead of formatted by the client for every request.
        let host_header = match base.port() {
            Some(port) => HeaderValue::try_from(format!("{host}:{port}")),
            None => HeaderValue::try_from(host),
        }
        .map_err(|_| PaymentClientError::InvalidUrl)?;
        let client = reqwest::Client::builder()
            // A charge, with its payment token, is never sent anywhere but
            // the configured provider.
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .pool_max_idle_per_host(max_in_flight.unwrap_or(usize::MAX))
            .pool_idle_timeout(Duration::from_secs(60))
            .tcp_nodelay(true)
            // HTTP/1.1 even to a provider that offers HTTP/2: one HTTP/2
            // connection carries every charge, and its stream limit (often
            // 100) would cap the charges in flight far below the pool size.
            .http1_only()
            // Retrying is the daemon's own policy (the retry queue, with
            // backoff and MAX_ATTEMPTS). Over HTTP/1.1 the client would only
            // retry HTTP/2 refusals anyway, yet it copies every request's
            // headers in case it has to.
            .retry(reqwest::retry::never().max_retries_per_request(0))
            .build()
            .map_err(PaymentClientError::Client)?;
        Ok(Self {
            client,
            charges_url,
            host_header,
            server_address,
            metrics,
            in_flight: max_in_flight.map(Semaphore::new),
        })
    }

    async fn post(&self, order: &Order, span: &Context) -> Result<ChargeId, PaymentError> {
        let id = order.id().to_string();
        let total = order.total();
        let body = serde_json::to_vec(&ChargeRequest {
            order_id: id.clone(),
            customer_id: order.customer_id().as_str(),
            amount_minor: total.minor(),
            currency: total.currency().as_str(),
            payment_token: order.payment_token().expose(),
        })
        .map_err(|_| unavailable(UnavailableReason::InvalidResponse))?;
        let mut request = reqwest::Request::new(Method::POST, self.charges_url.clone());
        *request.body_mut() = Some(body.into());
        let headers = request.headers_mut();
        headers.reserve(5);
        headers.insert(reqwest::header::HOST, self.host_header.clone());
        headers.insert(
            reqwest::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        let key = HeaderValue::from_str(&id)
            .map_err(|_| unavailable(UnavailableReason::InvalidResponse))?;
        headers.insert(HeaderName::from_static("idempotency-key"), key);
        telemetry::inject(span, &mut HeaderCarrier(headers));

        // Held until the answer is read.
        let _turn = self.turn().await?;
        let started = Instant::now();
        let sent = self.client.execute(request).await;
        let response = match sent {
            Ok(response) => response,
            Err(error) => {
                self.metrics.payment_request("error", started.elapsed());
                let reason = if error.is_timeout() {
                    UnavailableReason::Timeout
                } else {
                    UnavailableReason::Connect
                };
                return Err(unavailable(reason));
            }
        };
        let status = response.status();
        span.span().set_attribute(KeyValue::new(
            "http.response.status_code",
            i64::from(status.as_u16()),
        ));
        let answer = read_limited(response).await;
        self.metrics
            .payment_request(status_class(status), started.elapsed());
        classify(status, answer)
    }

    /// Waits for a turn to charge when charges in flight are capped. Only
    /// an order that has to wait is counted as waiting (permits free up for
    /// the queued ones first, so none jumps the queue). The semaphore is
    /// never closed.
    async fn turn(&self) -> Result<Option<SemaphorePermit<'_>>, PaymentError> {
        let Some(in_flight) = &self.in_flight else {
            return Ok(None);
        };
        if let Ok(turn) = in_flight.try_acquire() {
            return Ok(Some(turn));
        }
        let _waiting = self.metrics.payment_wait();
        let turn = in_flight.acquire().await;
        turn.map(Some)
            .map_err(|_| unavailable(UnavailableReason::Connect))
    }
}

impl PaymentProvider for HttpPaymentProvider {
    async fn charge(&self, order: &Order) -> Result<ChargeId, PaymentError> {
        let step = telemetry::Step::start("charge", |span| {
            // Room for the status code and the error type set later.
            let mut attributes = Vec::with_capacity(5);
            attributes.extend([
                KeyValue::new("http.request.method", "POST"),
                KeyValue::new("server.address", self.server_address.clone()),
                KeyValue::new("url.path", "/v1/charges"),
            ]);
            span.with_kind(SpanKind::Client).with_attributes(attributes)
        });
        // Current while the request runs, so that the client's own log
        // lines (a refused certificate) carry the charge span.
        let result = step.run(self.post(order, step.context())).await;
        if let Err(error) = &result {
            let kind = error_type(error);
            let span = step.context().span();
            span.set_attribute(KeyValue::new("error.type", kind));
            span.set_status(Status::error(kind));
        }
        result
    }
}

/// Lets the propagator write `traceparent`/`tracestate` into request headers.
struct HeaderCarrier<'a>(&'a mut HeaderMap);

impl opentelemetry::propagation::Injector for HeaderCarrier<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

/// The longest an order can wait for the provider: its own request, and
/// before it those of the orders ahead of it in the queue for a turn
/// (`concurrency` orders in flight, `max_in_flight` charges at a time if
/// capped, each bounded by `timeout`).
pub fn longest_wait(
    timeout: Duration,
    concurrency: usize,
    max_in_flight: Option<usize>,
) -> Duration {
    let turns = max_in_flight.map_or(1, |n| concurrency.div_ceil(n.max(1)).max(1));
    timeout.saturating_mul(u32::try_from(turns).unwrap_or(u32::MAX))
}

fn unavailable(reason: UnavailableReason) -> PaymentError {
    PaymentError::Unavailable {
        reason,
        retry_after: None,
    }
}

fn error_type(error: &PaymentError) -> &'static str {
    match error {
        PaymentError::Declined => "payment_declined",
        PaymentError::Rejected { .. } => "payment_rejected",
        PaymentError::Unavailable { reason, .. } => match reason {
            UnavailableReason::Timeout => "timeout",
            UnavailableReason::Connect => "connect",
            UnavailableReason::Closed => "connection_closed",
            UnavailableReason::NotHttp => "invalid_http",
            UnavailableReason::Status(_) => "http_status",
            UnavailableReason::InProgress => "in_progress",
            UnavailableReason::RateLimited => "rate_limited",
            UnavailableReason::InvalidResponse => "invalid_response",
        },
    }
}

fn status_class(status: StatusCode) -> &'static str {
    match status.as_u16() {
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// Reads at most `MAX_ANSWER_BYTES`; `None` if the body was larger or broke.
async fn read_limited(mut response: reqwest::Response) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if body.len().saturating_add(chunk.len()) > MAX_ANSWER_BYTES {
                    return None;
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Some(body),
            Err(_) => return None,
        }
    }
}

/// Maps an answer to the outcome of the charge (CONTRACT §4).
fn classify(status: StatusCode, body: Option<Vec<u8>>) -> Result<ChargeId, PaymentError> {
    match status.as_u16() {
        200 | 201 => {
            let answer: ChargeAnswer = body
                .as_deref()
                .and_then(|bytes| serde_json::from_slice(bytes).ok())
                .ok_or(unavailable(UnavailableReason::InvalidResponse))?;
            // Anything but a settled charge is asked again later under the same key.
            if answer.status != "succeeded" || answer.charge_id.is_empty() {
                return Err(unavailable(UnavailableReason::InvalidResponse));
            }
            Ok(ChargeId::new(answer.charge_id))
        }
        402 => Err(PaymentError::Declined),
        409 => Err(unavailable(UnavailableReason::InProgress)),
        429 => Err(unavailable(UnavailableReason::RateLimited)),
        code @ 400..=499 => Err(PaymentError::Rejected { status: code }),
        code => Err(unavailable(UnavailableReason::Status(code))),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn status(code: u16) -> StatusCode {
        StatusCode::from_u16(code).unwrap()
    }

    #[test]
    fn an_order_waits_for_the_charges_ahead_of_it_when_turns_are_limited() {
        let timeout = Duration::from_secs(5);
        assert_eq!(longest_wait(timeout, 2048, None), timeout);
        assert_eq!(longest_wait(timeout, 2048, Some(2048)), timeout);
        assert_eq!(longest_wait(timeout, 16, Some(64)), timeout);
        assert_eq!(longest_wait(timeout, 2048, Some(64)), timeout * 32);
        assert_eq!(longest_wait(timeout, 65, Some(64)), timeout * 2);
        assert_eq!(longest_wait(timeout, 8, Some(0)), timeout * 8);
        assert_eq!(longest_wait(Duration::MAX, 2, Some(1)), Duration::MAX);
    }

    #[test]
    fn charges_go_to_v1_charges_under_the_base_urls_path() {
        let url = |base: &str| charges_url(&Url::parse(base).unwrap()).map(String::from);
        for (base, expected) in [
            ("http://127.0.0.1:8081", "http://127.0.0.1:8081/v1/charges"),
            ("http://127.0.0.1:8081/", "http://127.0.0.1:8081/v1/charges"),
            (
                "https://psp.example/api",
                "https://psp.example/api/v1/charges",
            ),
            (
                "https://psp.example/api/",
                "https://psp.example/api/v1/charges",
            ),
            (
                "https://psp.example/api?x=1",
                "https://psp.example/api/v1/charges",
            ),
        ] {
            assert_eq!(url(base).as_deref(), Some(expected), "{base}");
        }
        assert_eq!(url("mailto:payments@example.com"), None);
    }

    #[test]
    fn answers_map_as_the_contract_says() {
        let ok = br#"{"charge_id":"ch_1","status":"succeeded"}"#.to_vec();
        assert_eq!(
            classify(status(201), Some(ok.clone())).unwrap(),
            ChargeId::new("ch_1")
        );
        assert_eq!(
            classify(status(200), Some(ok)).unwrap(),
            ChargeId::new("ch_1")
        );
        assert!(matches!(
            classify(status(402), None),
            Err(PaymentError::Declined)
        ));
        for code in [400, 422, 404] {
            assert!(matches!(
                classify(status(code), None),
                Err(PaymentError::Rejected { status }) if status == code
            ));
        }
        for code in [500, 502, 503, 504, 302] {
            assert!(matches!(
                classify(status(code), None),
                Err(PaymentError::Unavailable { reason: UnavailableReason::Status(c), .. }) if c == code
            ));
        }
        assert!(matches!(
            classify(status(409), None),
            Err(PaymentError::Unavailable {
                reason: UnavailableReason::InProgress,
                ..
            })
        ));
        assert!(matches!(
            classify(status(429), None),
            Err(PaymentError::Unavailable {
                reason: UnavailableReason::RateLimited,
                ..
            })
        ));
    }

    #[test]
    fn an_unreadable_or_unsettled_success_is_asked_again() {
        for body in [
            None,
            Some(b"nope".to_vec()),
            Some(br#"{"charge_id":"c","status":"pending"}"#.to_vec()),
        ] {
            assert!(matches!(
                classify(status(200), body),
                Err(PaymentError::Unavailable {
                    reason: UnavailableReason::InvalidResponse,
                    ..
                })
            ));
        }
    }
}
