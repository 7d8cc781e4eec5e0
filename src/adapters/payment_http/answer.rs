//! What the provider's answer, or the failure to get one, means for the charge
//! (CONTRACT §4).
//!
//! An answer is classified by status, with the `Retry-After` of a 429 or 503
//! kept as the least delay before the next try. A success must carry a settled
//! charge with a usable `charge_id`: it is stored and shown, so an id with
//! control characters or of unbounded length is treated as an unreadable
//! answer (transient: the same key is asked again later), never saved. A
//! request that got no answer is told apart by the error chain of the HTTP
//! client: timed out, could not connect, connection closed without an answer,
//! or an answer that is not HTTP.

use std::error::Error as _;
use std::time::{Duration, SystemTime};

use reqwest::StatusCode;
use reqwest::header::{HeaderMap, RETRY_AFTER};
use serde::Deserialize;

use crate::domain::{ChargeId, PaymentError, UnavailableReason};

/// The longest `Retry-After` honoured: a provider asking for more is asked
/// again after this anyway, so that a typo or a clock far off cannot park an
/// order for days.
pub(super) const MAX_RETRY_AFTER: Duration = Duration::from_secs(10 * 60);

/// The longest `charge_id` kept, as for the other identifiers of the contract.
const MAX_CHARGE_ID_LEN: usize = 255;

/// What came back for a charge request.
pub(super) struct Answer {
    pub status: StatusCode,
    /// The `Retry-After` of a 429 or 503, capped at [`MAX_RETRY_AFTER`].
    pub retry_after: Option<Duration>,
    /// The body, or why it could not be read.
    pub body: Result<Vec<u8>, UnreadableBody>,
}

/// Why an answer's body could not be read.
pub(super) enum UnreadableBody {
    TooLarge,
    /// The exchange failed while the body came.
    Failed(UnavailableReason),
}

#[derive(Deserialize)]
struct ChargeAnswer {
    charge_id: String,
    status: String,
}

/// Maps an answer to the outcome of the charge.
pub(super) fn classify(answer: Answer) -> Result<ChargeId, PaymentError> {
    match answer.status.as_u16() {
        200 | 201 => settled_charge(answer.body),
        402 => Err(PaymentError::Declined),
        409 => Err(unavailable(UnavailableReason::InProgress, None)),
        429 => Err(unavailable(
            UnavailableReason::RateLimited,
            answer.retry_after,
        )),
        code @ 400..=499 => Err(PaymentError::Rejected { status: code }),
        code => Err(unavailable(
            UnavailableReason::Status(code),
            answer.retry_after,
        )),
    }
}

/// The charge of a success answer. Anything but a settled charge with a
/// usable id is asked again later under the same key.
fn settled_charge(body: Result<Vec<u8>, UnreadableBody>) -> Result<ChargeId, PaymentError> {
    let body = body.map_err(|unreadable| match unreadable {
        UnreadableBody::TooLarge => unavailable(UnavailableReason::InvalidResponse, None),
        UnreadableBody::Failed(reason) => unavailable(reason, None),
    })?;
    let answer: ChargeAnswer = serde_json::from_slice(&body)
        .map_err(|_| unavailable(UnavailableReason::InvalidResponse, None))?;
    if answer.status != "succeeded" || !is_usable_charge_id(&answer.charge_id) {
        return Err(unavailable(UnavailableReason::InvalidResponse, None));
    }
    Ok(ChargeId::new(answer.charge_id))
}

/// 1 to 255 printable ASCII characters: no NUL (which PostgreSQL cannot
/// store in text), no line breaks or other control characters.
fn is_usable_charge_id(id: &str) -> bool {
    (1..=MAX_CHARGE_ID_LEN).contains(&id.len()) && id.bytes().all(|b| matches!(b, b' '..=b'~'))
}

/// `Retry-After` as delay-seconds or an HTTP-date (RFC 9110 §10.2.3), as
/// the delay from `now`, capped at [`MAX_RETRY_AFTER`]. A date in the past
/// is no delay; a value that is neither form is ignored.
pub(super) fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    let delay = if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // Digits only, so a parse failure is an overflow: far beyond the cap.
        value
            .parse::<u64>()
            .map_or(MAX_RETRY_AFTER, Duration::from_secs)
    } else {
        let date = httpdate::parse_http_date(value).ok()?;
        date.duration_since(now).unwrap_or(Duration::ZERO)
    };
    Some(delay.min(MAX_RETRY_AFTER))
}

/// Why a request got no answer, from the HTTP client's error chain.
pub(super) fn failure_reason(error: &reqwest::Error) -> UnavailableReason {
    if error.is_timeout() {
        return UnavailableReason::Timeout;
    }
    if error.is_connect() {
        return UnavailableReason::Connect;
    }
    let mut cause = error.source();
    while let Some(current) = cause {
        if let Some(http) = current.downcast_ref::<hyper::Error>() {
            if http.is_parse() || http.is_parse_status() {
                return UnavailableReason::NotHttp;
            }
            // EOF before the whole answer, or the pooled connection closed
            // before the request could go out on it.
            if http.is_incomplete_message() || http.is_canceled() {
                return UnavailableReason::Closed;
            }
        }
        if let Some(io) = current.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind;
            match io.kind() {
                ErrorKind::ConnectionReset
                | ErrorKind::ConnectionAborted
                | ErrorKind::BrokenPipe
                | ErrorKind::UnexpectedEof => return UnavailableReason::Closed,
                ErrorKind::TimedOut => return UnavailableReason::Timeout,
                _ => {}
            }
        }
        cause = current.source();
    }
    // Connected (connection failures were matched above), then failed in a
    // way the chain does not name: the connection ended without an answer.
    UnavailableReason::Closed
}

pub(super) fn unavailable(
    reason: UnavailableReason,
    retry_after: Option<Duration>,
) -> PaymentError {
    PaymentError::Unavailable {
        reason,
        retry_after,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use reqwest::header::HeaderValue;

    use super::*;

    fn answer(code: u16, body: &[u8], retry_after: Option<Duration>) -> Answer {
        Answer {
            status: StatusCode::from_u16(code).unwrap(),
            retry_after,
            body: Ok(body.to_vec()),
        }
    }

    fn reason_of(result: Result<ChargeId, PaymentError>) -> (UnavailableReason, Option<Duration>) {
        match result {
            Err(PaymentError::Unavailable {
                reason,
                retry_after,
            }) => (reason, retry_after),
            other => panic!("not unavailable: {other:?}"),
        }
    }

    #[test]
    fn answers_map_as_the_contract_says() {
        let ok = br#"{"charge_id":"ch_1","status":"succeeded"}"#;
        for code in [200, 201] {
            assert_eq!(
                classify(answer(code, ok, None)).unwrap(),
                ChargeId::new("ch_1")
            );
        }
        assert!(matches!(
            classify(answer(402, b"", None)),
            Err(PaymentError::Declined)
        ));
        for code in [400, 401, 403, 404, 422] {
            assert!(matches!(
                classify(answer(code, b"", None)),
                Err(PaymentError::Rejected { status }) if status == code
            ));
        }
        for code in [500, 502, 503, 504, 302] {
            let (reason, _) = reason_of(classify(answer(code, b"", None)));
            assert_eq!(reason, UnavailableReason::Status(code));
        }
        let (reason, _) = reason_of(classify(answer(409, b"", None)));
        assert_eq!(reason, UnavailableReason::InProgress);
        let (reason, _) = reason_of(classify(answer(429, b"", None)));
        assert_eq!(reason, UnavailableReason::RateLimited);
    }

    #[test]
    fn the_retry_after_of_a_429_or_503_is_kept() {
        let wait = Some(Duration::from_secs(7));
        assert_eq!(
            reason_of(classify(answer(429, b"", wait))),
            (UnavailableReason::RateLimited, wait)
        );
        assert_eq!(
            reason_of(classify(answer(503, b"", wait))),
            (UnavailableReason::Status(503), wait)
        );
    }

    #[test]
    fn an_unreadable_or_unsettled_success_is_asked_again() {
        let long = format!(
            r#"{{"charge_id":"{}","status":"succeeded"}}"#,
            "c".repeat(256)
        );
        for body in [
            &b"nope"[..],
            br#"{"charge_id":"c","status":"pending"}"#,
            br#"{"charge_id":"","status":"succeeded"}"#,
            br#"{"charge_id":"ch_\u0000","status":"succeeded"}"#,
            br#"{"charge_id":"ch_1\nX-Injected: 1","status":"succeeded"}"#,
            br#"{"charge_id":"ch_\u00e9","status":"succeeded"}"#,
            long.as_bytes(),
        ] {
            let (reason, _) = reason_of(classify(answer(200, body, None)));
            assert_eq!(
                reason,
                UnavailableReason::InvalidResponse,
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        let longest = format!(
            r#"{{"charge_id":"{}","status":"succeeded"}}"#,
            "c".repeat(255)
        );
        assert!(classify(answer(200, longest.as_bytes(), None)).is_ok());
        let too_large = Answer {
            body: Err(UnreadableBody::TooLarge),
            ..answer(200, b"", None)
        };
        let (reason, _) = reason_of(classify(too_large));
        assert_eq!(reason, UnavailableReason::InvalidResponse);
        let cut = Answer {
            body: Err(UnreadableBody::Failed(UnavailableReason::Closed)),
            ..answer(200, b"", None)
        };
        let (reason, _) = reason_of(classify(cut));
        assert_eq!(reason, UnavailableReason::Closed);
    }

    #[test]
    fn retry_after_is_read_as_seconds_or_a_date_and_capped() {
        let now = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        let read = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(RETRY_AFTER, HeaderValue::from_str(value).unwrap());
            retry_after(&headers, now)
        };
        assert_eq!(read("120"), Some(Duration::from_secs(120)));
        assert_eq!(read(" 0 "), Some(Duration::ZERO));
        assert_eq!(read("601"), Some(MAX_RETRY_AFTER));
        assert_eq!(read("99999999999999999999999"), Some(MAX_RETRY_AFTER));
        assert_eq!(
            read("Sun, 06 Nov 1994 08:50:07 GMT"),
            Some(Duration::from_secs(30))
        );
        assert_eq!(read("Sun, 06 Nov 1994 08:00:00 GMT"), Some(Duration::ZERO));
        assert_eq!(read("Mon, 07 Nov 1994 08:49:37 GMT"), Some(MAX_RETRY_AFTER));
        for ignored in ["soon", "-1", "1.5", ""] {
            assert_eq!(read(ignored), None, "{ignored:?}");
        }
        assert_eq!(retry_after(&HeaderMap::new(), now), None);
    }
}
