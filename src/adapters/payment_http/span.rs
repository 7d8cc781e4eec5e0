//! The charge span, as the OpenTelemetry HTTP client conventions describe
//! it: `POST`, CLIENT, with the method, the server, the URL (without user
//! info, query or fragment, so that no credential reaches a trace), the
//! answer's status code, and an `error.type` on failure.

use std::sync::Arc;

use opentelemetry::trace::{SpanBuilder, SpanKind, Status, TraceContextExt as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_semantic_conventions::attribute as semconv;
use reqwest::Url;

use crate::domain::{PaymentError, UnavailableReason};

/// A charge span, with the attributes every charge shares.
pub(super) fn charge(shared: &[KeyValue]) -> SpanBuilder {
    // Room for the status code and the error type set later.
    let mut attributes = Vec::with_capacity(shared.len().saturating_add(2));
    attributes.extend_from_slice(shared);
    SpanBuilder::from_name("POST")
        .with_kind(SpanKind::Client)
        .with_attributes(attributes)
}

/// The attributes of every charge span (OpenTelemetry HTTP client
/// conventions): the method, the server, and the URL without user info,
/// query or fragment, so that no credential can reach a trace. Their
/// strings are shared, so that a charge copies them without allocating.
pub(super) fn attributes(charges_url: &Url, host: &str) -> [KeyValue; 4] {
    let port = charges_url.port_or_known_default().unwrap_or_default();
    let explicit_port = charges_url
        .port()
        .map(|p| format!(":{p}"))
        .unwrap_or_default();
    let url = format!(
        "{}://{host}{explicit_port}{}",
        charges_url.scheme(),
        charges_url.path()
    );
    [
        KeyValue::new(semconv::HTTP_REQUEST_METHOD, "POST"),
        KeyValue::new(semconv::SERVER_ADDRESS, Arc::<str>::from(host)),
        KeyValue::new(semconv::SERVER_PORT, i64::from(port)),
        KeyValue::new(semconv::URL_FULL, Arc::<str>::from(url)),
    ]
}

/// Records the answer's status code on the charge span.
pub(super) fn answered(span: &Context, status: u16) {
    let status = KeyValue::new(semconv::HTTP_RESPONSE_STATUS_CODE, i64::from(status));
    span.span().set_attribute(status);
}

/// Marks the charge span as failed.
pub(super) fn failed(span: &Context, error: &PaymentError) {
    let kind = error_type(error);
    let span = span.span();
    span.set_attribute(KeyValue::new(semconv::ERROR_TYPE, kind.clone()));
    span.set_status(Status::error(kind));
}

/// The charge span's `error.type`: the answer's status code when one came
/// (HTTP conventions), else what kept it from coming.
fn error_type(error: &PaymentError) -> String {
    let kind = match error {
        PaymentError::Declined => "402",
        PaymentError::Rejected { status }
        | PaymentError::Unavailable {
            reason: UnavailableReason::Status(status),
            ..
        } => return status.to_string(),
        PaymentError::Unavailable { reason, .. } => match reason {
            UnavailableReason::Timeout => "timeout",
            UnavailableReason::Connect => "connect",
            UnavailableReason::Closed => "connection_closed",
            UnavailableReason::NotHttp => "invalid_http",
            UnavailableReason::Status(status) => return status.to_string(),
            UnavailableReason::InProgress => "409",
            UnavailableReason::RateLimited => "429",
            UnavailableReason::InvalidResponse => "invalid_response",
        },
    };
    kind.to_owned()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_url_of_a_charge_span_has_no_user_info_query_or_fragment() {
        let url =
            Url::parse("https://user:secret@psp.example:8443/api/v1/charges?key=k#f").unwrap();
        let attributes = attributes(&url, url.host_str().unwrap());
        let value = |key: &str| {
            let found = attributes.iter().find(|kv| kv.key.as_str() == key);
            found.map(|kv| kv.value.to_string())
        };
        assert_eq!(
            value(semconv::URL_FULL).as_deref(),
            Some("https://psp.example:8443/api/v1/charges")
        );
        assert_eq!(
            value(semconv::SERVER_ADDRESS).as_deref(),
            Some("psp.example")
        );
        assert_eq!(value(semconv::SERVER_PORT).as_deref(), Some("8443"));
        let default_port = Url::parse("https://psp.example/v1/charges").unwrap();
        let attributes = super::attributes(&default_port, "psp.example");
        let port = attributes
            .iter()
            .find(|kv| kv.key.as_str() == semconv::SERVER_PORT);
        assert_eq!(port.map(|kv| kv.value.to_string()).as_deref(), Some("443"));
    }
}
