//! What a retry or dead-letter copy of a delivery carries: the original
//! body and properties, the daemon's own headers, and no more than fits the
//! connection's frame with room for what the broker adds later (see
//! [`super::frame`]). Pure functions, so that every copy the daemon could
//! make can be checked without a broker.

use std::time::Duration;

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};

use super::frame::{self, DoesNotFit, Fitted, Room};
use super::headers::{self, ATTEMPTS, ERROR_KIND, ERROR_REASON};

/// The longest `x-error-reason`, in bytes. The daemon's reasons are one
/// short sentence; the bound keeps the headers a dead letter must carry
/// small whatever an error's text becomes.
pub const MAX_REASON_BYTES: usize = 256;

/// Headers that make the broker route a message to more queues: the
/// original was routed by them already.
const ROUTING_HEADERS: [&str; 2] = ["CC", "BCC"];

/// The copy parked in `retry_queue` for `delay` after `attempt` failed: the
/// original properties with `x-attempts` and an expiration, leaving room
/// for the broker's `x-death` bookkeeping when it expires back to the work
/// queue. Without CC and BCC, which would make the default exchange route
/// the copy into the queues they name too (and into the reserve: the broker
/// records them in `x-death`).
pub fn retry_copy(
    properties: &BasicProperties,
    retry_queue: &str,
    attempt: u32,
    delay: Duration,
    frame_max: u32,
) -> Result<Fitted, DoesNotFit> {
    let millis = u64::try_from(delay.as_millis())
        .unwrap_or(u64::MAX)
        .to_string();
    let copy = headers::with_headers(
        &without_routing_headers(properties),
        &[(ATTEMPTS, AMQPValue::LongLongInt(i64::from(attempt)))],
    )
    .with_expiration(millis.as_str().into());
    let room = Room::new(frame_max, frame::expiry_reserve(retry_queue, &millis));
    frame::fit(copy, &[ATTEMPTS], room)
}

/// The copy for the dead-letter queue: the original properties without the
/// publisher's `expiration` (or the dead letter would expire in turn), plus
/// why and after how many attempts, leaving room for the `x-delivery-count`
/// the quorum queue adds when `dlq` reads it more than once.
pub fn dead_letter_copy(
    properties: &BasicProperties,
    attempt: u32,
    kind: &str,
    reason: &str,
    frame_max: u32,
) -> Result<Fitted, DoesNotFit> {
    let copy = headers::with_headers(
        &headers::without_expiration(properties),
        &[
            (ERROR_KIND, headers::text(bounded(kind, MAX_REASON_BYTES))),
            (
                ERROR_REASON,
                headers::text(bounded(reason, MAX_REASON_BYTES)),
            ),
            (ATTEMPTS, AMQPValue::LongLongInt(i64::from(attempt))),
        ],
    );
    let room = Room::new(frame_max, frame::redelivery_reserve());
    frame::fit(copy, &[ERROR_KIND, ERROR_REASON, ATTEMPTS], room)
}

/// A replayed dead letter (already stripped of its failure headers), on
/// its way back to the work queue, where the quorum queue may add
/// `x-delivery-count`.
pub fn replay_copy(properties: BasicProperties, frame_max: u32) -> Result<Fitted, DoesNotFit> {
    frame::fit(
        properties,
        &[],
        Room::new(frame_max, frame::redelivery_reserve()),
    )
}

/// A dead letter imported from a `dlq export` file, on its way back into
/// the dead-letter queue with its failure headers kept.
pub fn imported_copy(properties: BasicProperties, frame_max: u32) -> Result<Fitted, DoesNotFit> {
    frame::fit(
        properties,
        &[ERROR_KIND, ERROR_REASON, ATTEMPTS],
        Room::new(frame_max, frame::redelivery_reserve()),
    )
}

fn without_routing_headers(properties: &BasicProperties) -> BasicProperties {
    let Some(original) = properties.headers().as_ref() else {
        return properties.clone();
    };
    if !ROUTING_HEADERS
        .iter()
        .any(|name| original.contains_key(name))
    {
        return properties.clone();
    }
    let kept: FieldTable = original
        .inner()
        .iter()
        .filter(|(name, _)| !ROUTING_HEADERS.contains(&name.as_str()))
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect::<std::collections::BTreeMap<_, _>>()
        .into();
    properties.clone().with_headers(kept)
}

/// `text` cut to at most `limit` bytes, at a character boundary.
pub fn bounded(text: &str, limit: usize) -> &str {
    if text.len() <= limit {
        return text;
    }
    let end = (0..=limit)
        .rev()
        .find(|&end| text.is_char_boundary(end))
        .unwrap_or(0);
    text.get(..end).unwrap_or_default()
}

/// One line for an operator: which headers a copy goes without. At most a
/// few names are logged; `x-dropped-headers` on the copy has the rest.
pub fn log_dropped(dropped: &[String]) {
    const LOGGED: usize = 8;
    let names: Vec<&str> = dropped.iter().take(LOGGED).map(String::as_str).collect();
    tracing::warn!(
        dropped = dropped.len(),
        headers = %names.join(", "),
        "left the largest headers out of the copy so that it fits the broker's frame"
    );
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic, clippy::arithmetic_side_effects)]
mod tests {
    use super::*;
    use crate::adapters::amqp::headers::{DROPPED_HEADERS, TRACEPARENT, text};

    const TRACE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    /// An order message whose headers leave `slack` bytes of a
    /// `frame_max` frame: a trace, a small header and two large ones.
    fn near_the_limit(frame_max: u32, slack: usize) -> BasicProperties {
        let mut headers = FieldTable::default();
        headers.insert(TRACEPARENT.into(), text(TRACE));
        headers.insert("x-small".into(), text("keep me"));
        headers.insert("x-large".into(), text(&"b".repeat(20_000)));
        let base = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_expiration("60000".into());
        let used = frame::properties_len(&base.clone().with_headers(headers.clone()));
        let room = Room::new(frame_max, 0).bytes() - slack;
        // Besides its text, the filler's entry takes 1 + 8 bytes of name, a
        // type tag and 4 bytes of length.
        headers.insert("x-filler".into(), text(&"a".repeat(room - used - 14)));
        let properties = base.with_headers(headers);
        assert_eq!(frame::properties_len(&properties), room);
        properties
    }

    fn header(properties: &BasicProperties, name: &str) -> Option<AMQPValue> {
        properties.headers().as_ref()?.inner().get(name).cloned()
    }

    #[test]
    fn a_dead_letter_near_the_frame_drops_the_largest_header_and_names_it() {
        // The daemon's headers take about a hundred bytes more.
        let original = near_the_limit(131_072, 64);
        let reason = "payment declined";
        let copy = dead_letter_copy(&original, 1, "invalid", reason, 131_072).unwrap();
        assert_eq!(copy.dropped, ["x-filler"]);
        let properties = &copy.properties;
        assert!(frame::properties_len(properties) <= Room::new(131_072, 26).bytes());
        let list = AMQPValue::FieldArray(vec![text("x-filler")].into());
        assert_eq!(header(properties, DROPPED_HEADERS), Some(list));
        for kept in [TRACEPARENT, "x-small", "x-large"] {
            assert_eq!(header(properties, kept), header(&original, kept), "{kept}");
        }
        assert_eq!(header(properties, ERROR_REASON), Some(text(reason)));
        assert_eq!(properties.expiration(), &None);
        assert_eq!(properties.content_type(), original.content_type());
    }

    #[test]
    fn a_retry_copy_leaves_room_for_the_brokers_bookkeeping() {
        let original = near_the_limit(131_072, 300);
        let queue = "orders.process.retry.1";
        let delay = Duration::from_millis(1500);
        let copy = retry_copy(&original, queue, 1, delay, 131_072).unwrap();
        assert_eq!(copy.dropped, ["x-filler"]);
        let reserve = frame::expiry_reserve(queue, "1500");
        assert!(frame::properties_len(&copy.properties) <= Room::new(131_072, reserve).bytes());
        assert_eq!(
            copy.properties.expiration().as_ref().unwrap().as_str(),
            "1500"
        );
        assert_eq!(
            header(&copy.properties, ATTEMPTS),
            Some(AMQPValue::LongLongInt(1))
        );
    }

    #[test]
    fn a_copy_that_fits_is_the_original_with_the_daemons_headers() {
        let mut headers = FieldTable::default();
        headers.insert(TRACEPARENT.into(), text(TRACE));
        headers.insert(
            "CC".into(),
            AMQPValue::FieldArray(vec![text("elsewhere")].into()),
        );
        let original = BasicProperties::default().with_headers(headers);
        let dead = dead_letter_copy(&original, 3, "retries_exhausted", "x", 131_072).unwrap();
        assert!(dead.dropped.is_empty());
        assert_eq!(header(&dead.properties, DROPPED_HEADERS), None);
        assert!(header(&dead.properties, "CC").is_some());
        let retry = retry_copy(&original, "q.retry.1", 1, Duration::ZERO, 131_072).unwrap();
        assert!(retry.dropped.is_empty());
        assert_eq!(
            header(&retry.properties, "CC"),
            None,
            "routes the copy elsewhere"
        );
        assert_eq!(header(&retry.properties, TRACEPARENT), Some(text(TRACE)));
    }

    #[test]
    fn the_reason_is_bounded_at_a_character_boundary() {
        let long = "é".repeat(200);
        let copy = dead_letter_copy(&BasicProperties::default(), 1, "k", &long, 131_072).unwrap();
        let Some(AMQPValue::LongString(reason)) = header(&copy.properties, ERROR_REASON) else {
            panic!("no reason");
        };
        assert_eq!(reason.as_bytes().len(), 256);
        assert_eq!(bounded("abc", 2), "ab");
        assert_eq!(bounded("é", 1), "");
    }
}
