//! `PaymentProvider` over HTTP with reqwest.
//!
//! `POST {base}/v1/charges` with `Idempotency-Key: <order_id>`, the
//! `traceparent` of its charge span and, when `PAYMENT_API_KEY` is set,
//! `Authorization: Bearer <key>` (a header value marked sensitive, so that no
//! debug output of the request shows it). Answers map to the domain's error
//! classes in [`answer`]: 200/201 charged, 402 declined, other 4xx (but 409
//! and 429) rejected, 409/429/5xx, timeouts and connection failures
//! unavailable (transient), with the `Retry-After` of a 429 or 503. One
//! client is shared by all workers so connections stay alive between
//! charges: HTTP/1.1, one connection per charge in flight, and at most
//! `max_in_flight` charges at a time.
//!
//! A charge is three steps: build the request
//! ([`HttpPaymentProvider::request`]), exchange it for an answer, classify
//! the answer ([`answer::classify`]). Around the exchange, the
//! [`AdaptiveRate`] limiter paces charges once the provider has answered
//! 429: each waits for a token first, and a throttled one waits for the
//! provider's `Retry-After`, then for its next token, and is sent again. A
//! 429 is the provider's admission control, not a failure of the order:
//! it spends no attempt.

mod adaptive_rate;
mod answer;
mod limits;
mod span;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use opentelemetry::{Context, KeyValue};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, StatusCode, Url};
use serde::Serialize;
use tokio::sync::{Semaphore, SemaphorePermit};

use self::adaptive_rate::AdaptiveRate;
use self::answer::{Answer, UnreadableBody, classify, failure_reason, unavailable};
pub use self::limits::{PaymentLimits, longest_wait};
use crate::domain::{ChargeId, Order, PaymentError, PaymentProvider, UnavailableReason};
use crate::metrics::Metrics;
use crate::telemetry;

/// Larger answers are not read: a charge answer is a few dozen bytes.
const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// A connection unused for this long is closed, with its buffers. A burst
/// opens one per charge in flight (hundreds); once it has drained, the few
/// that steady traffic keeps busy stay open and the others go.
const IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum PaymentClientError {
    #[error("PAYMENT_BASE_URL cannot be joined with /v1/charges")]
    InvalidUrl,
    #[error("PAYMENT_API_KEY cannot be sent in an HTTP header")]
    InvalidApiKey,
    #[error("could not build the HTTP client: {0}")]
    Client(#[source] reqwest::Error),
}

pub struct HttpPaymentProvider {
    client: reqwest::Client,
    charges_url: Url,
    host_header: HeaderValue,
    /// `Bearer <PAYMENT_API_KEY>`, marked sensitive.
    authorization: Option<HeaderValue>,
    /// What every charge span says of the request, made once.
    span_attributes: [KeyValue; 4],
    metrics: Arc<Metrics>,
    /// One permit per charge that may be in flight, when capped below the
    /// worker pool (which otherwise bounds them).
    in_flight: Option<Semaphore>,
    /// Paces charges while the provider limits their rate.
    pace: AdaptiveRate,
    /// The line of charges waiting for a token.
    line: tokio::sync::Mutex<()>,
}

#[derive(Serialize)]
struct ChargeRequest<'a> {
    order_id: &'a str,
    customer_id: &'a str,
    amount_minor: i64,
    currency: &'a str,
    payment_token: &'a str,
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
    /// With `api_key`, every charge carries it as a bearer token. With
    /// `max_in_flight`, that many charges are sent at a time (at least
    /// one) and the others wait for their turn. Every connection opened is
    /// kept alive while it is in use, so that no charge waits for a
    /// handshake.
    pub fn new(
        base_url: &str,
        api_key: Option<&str>,
        limits: PaymentLimits,
        metrics: Arc<Metrics>,
    ) -> Result<Self, PaymentClientError> {
        let PaymentLimits {
            timeout,
            max_in_flight,
            min_rate,
        } = limits;
        let max_in_flight = max_in_flight.map(|n| n.clamp(1, Semaphore::MAX_PERMITS));
        let base = Url::parse(base_url).map_err(|_| PaymentClientError::InvalidUrl)?;
        let charges_url = charges_url(&base).ok_or(PaymentClientError::InvalidUrl)?;
        let host = base.host_str().unwrap_or_default();
        let span_attributes = span::attributes(&charges_url, host);
        // Made once here instead of formatted by the client for every request.
        let host_header = match base.port() {
            Some(port) => HeaderValue::try_from(format!("{host}:{port}")),
            None => HeaderValue::try_from(host),
        }
        .map_err(|_| PaymentClientError::InvalidUrl)?;
        let authorization = api_key
            .map(|key| {
                let mut value = HeaderValue::try_from(format!("Bearer {key}"))
                    .map_err(|_| PaymentClientError::InvalidApiKey)?;
                value.set_sensitive(true);
                Ok(value)
            })
            .transpose()?;
        let client = reqwest::Client::builder()
            // A charge, with its payment token, is never sent anywhere but
            // the configured provider.
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .pool_max_idle_per_host(max_in_flight.unwrap_or(usize::MAX))
            .pool_idle_timeout(IDLE_CONNECTION_TIMEOUT)
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
            authorization,
            span_attributes,
            metrics,
            in_flight: max_in_flight.map(Semaphore::new),
            pace: AdaptiveRate::new(Instant::now(), min_rate),
            line: tokio::sync::Mutex::new(()),
        })
    }

    async fn post(&self, order: &Order, span: &Context) -> Result<ChargeId, PaymentError> {
        loop {
            let request = self.request(order, span)?;
            let sent_at = self.paced().await;
            // Held until the answer is read.
            let turn = self.turn().await?;
            let answer = self.exchange(request, span).await?;
            drop(turn);
            let throttled = answer.status == StatusCode::TOO_MANY_REQUESTS;
            let rate = self.pace.answered(Instant::now(), sent_at, throttled);
            self.metrics.payment_rate_limit(rate);
            if !throttled {
                return classify(answer);
            }
            if let Some(delay) = answer.retry_after {
                tokio::time::sleep(delay).await;
            }
        }
    }

    /// Waits for a token while the provider limits the rate of charges
    /// (the order counts as waiting meanwhile), in line with the other
    /// waiting orders; returns when it was taken.
    async fn paced(&self) -> Instant {
        let now = Instant::now();
        if !self.pace.engaged(now) {
            return now;
        }
        let _waiting = self.metrics.payment_wait();
        // First come, first served: tokio's mutex queues its waiters.
        let _line = self.line.lock().await;
        loop {
            let now = Instant::now();
            match self.pace.take(now) {
                None => return now,
                Some(next) => tokio::time::sleep_until(next.into()).await,
            }
        }
    }

    /// The charge request of `order`, under the trace context of `span`.
    fn request(&self, order: &Order, span: &Context) -> Result<reqwest::Request, PaymentError> {
        // Neither can fail for a valid order (a UUID key, plain strings and
        // integers), but neither is assumed.
        let invalid = |_| unavailable(UnavailableReason::InvalidResponse, None);
        let id = order.id().to_string();
        let total = order.total();
        let body = serde_json::to_vec(&ChargeRequest {
            order_id: &id,
            customer_id: order.customer_id().as_str(),
            amount_minor: total.minor(),
            currency: total.currency().as_str(),
            payment_token: order.payment_token().expose(),
        })
        .map_err(|_| unavailable(UnavailableReason::InvalidResponse, None))?;
        // The id's string becomes the header, without a copy.
        let key = HeaderValue::try_from(id).map_err(invalid)?;
        let mut request = reqwest::Request::new(Method::POST, self.charges_url.clone());
        *request.body_mut() = Some(body.into());
        let headers = request.headers_mut();
        headers.reserve(6);
        headers.insert(reqwest::header::HOST, self.host_header.clone());
        headers.insert(
            reqwest::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(HeaderName::from_static("idempotency-key"), key);
        if let Some(authorization) = &self.authorization {
            headers.insert(reqwest::header::AUTHORIZATION, authorization.clone());
        }
        telemetry::inject(span, &mut HeaderCarrier(headers));
        Ok(request)
    }

    /// Sends `request` and reads the answer (status, `Retry-After`, body),
    /// recording its duration by status class. `Err` when no answer came.
    async fn exchange(
        &self,
        request: reqwest::Request,
        span: &Context,
    ) -> Result<Answer, PaymentError> {
        let started = Instant::now();
        let response = match self.client.execute(request).await {
            Ok(response) => response,
            Err(error) => {
                self.metrics.payment_request("error", started.elapsed());
                return Err(unavailable(failure_reason(&error), None));
            }
        };
        let status = response.status();
        span::answered(span, status.as_u16());
        let retry_after = match status {
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => {
                answer::retry_after(response.headers(), SystemTime::now())
            }
            _ => None,
        };
        let body = read_limited(response).await;
        self.metrics
            .payment_request(status_class(status), started.elapsed());
        Ok(Answer {
            status,
            retry_after,
            body,
        })
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
            .map_err(|_| unavailable(UnavailableReason::Connect, None))
    }
}

impl PaymentProvider for HttpPaymentProvider {
    async fn charge(&self, order: &Order) -> Result<ChargeId, PaymentError> {
        let step = telemetry::Step::start("charge", || span::charge(&self.span_attributes));
        // Current while the request runs, so that the client's own log
        // lines (a refused certificate) carry the charge span.
        let result = step.run(self.post(order, step.context())).await;
        if let Err(error) = &result {
            span::failed(step.context(), error);
        }
        result
    }
}

/// Lets the propagator write `traceparent`/`tracestate` into request headers.
struct HeaderCarrier<'a>(&'a mut HeaderMap);

impl opentelemetry::propagation::Injector for HeaderCarrier<'_> {
    /// The trace context's two names are static, and the value's string
    /// becomes the header without a copy: neither allocates per charge.
    fn set(&mut self, key: &str, value: String) {
        let name = match key {
            "traceparent" => Ok(HeaderName::from_static("traceparent")),
            "tracestate" => Ok(HeaderName::from_static("tracestate")),
            other => HeaderName::from_bytes(other.as_bytes()),
        };
        if let (Ok(name), Ok(value)) = (name, HeaderValue::try_from(value)) {
            self.0.insert(name, value);
        }
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

/// Reads at most `MAX_ANSWER_BYTES`.
async fn read_limited(mut response: reqwest::Response) -> Result<Vec<u8>, UnreadableBody> {
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if body.len().saturating_add(chunk.len()) > MAX_ANSWER_BYTES {
                    return Err(UnreadableBody::TooLarge);
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(error) => return Err(UnreadableBody::Failed(failure_reason(&error))),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
