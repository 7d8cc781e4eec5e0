//! Reading and writing the AMQP headers the daemon cares about: the W3C
//! trace context, the attempt count, the failure headers of a dead letter
//! and the broker's `x-death` history. Every header was written by a
//! publisher who may be hostile or careless, so nothing read here panics
//! or believes a value the broker does not vouch for.

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use opentelemetry::propagation::{Extractor, Injector};

use super::topology::TopologyNames;

pub const ATTEMPTS: &str = "x-attempts";
pub const ERROR_KIND: &str = "x-error-kind";
pub const ERROR_REASON: &str = "x-error-reason";
/// Names the headers left out of a copy so that it fits the frame.
pub const DROPPED_HEADERS: &str = "x-dropped-headers";
/// The broker's record of a message's dead-letterings, newest first.
pub const DEATHS: &str = "x-death";
/// The quorum queue's count of a message's earlier deliveries.
pub const DELIVERY_COUNT: &str = "x-delivery-count";
pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";

/// Lets the propagator read `traceparent`/`tracestate` from AMQP headers.
pub struct HeaderExtractor<'a>(pub Option<&'a FieldTable>);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        as_text(self.0?.inner().get(key)?)
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .map(|table| table.inner().keys().map(ShortString::as_str).collect())
            .unwrap_or_default()
    }
}

/// Lets the propagator write the trace context into AMQP headers.
pub struct HeaderInjector<'a>(pub &'a mut FieldTable);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0
            .insert(key.into(), AMQPValue::LongString(LongString::from(value)));
    }
}

/// The attempt this delivery is: one more than the attempts recorded when
/// it was last sent for a retry, 1 for a fresh message, and always within
/// 1..=`max_attempts`.
///
/// The count is believed only when the broker says the message has just
/// come back from the retry queue of that very attempt (`x-death`, newest
/// first, names `{queue}.retry.{n}`). A publisher's own `x-attempts`, or a
/// dead letter moved back by hand (a shovel, the management UI), starts
/// over at 1 instead of getting fewer attempts than `MAX_ATTEMPTS`. A
/// publisher can still forge both headers together (the broker only
/// prepends to an `x-death` it finds): that can shorten its own message's
/// retries, never lengthen them, and the clamp keeps the count a dead
/// letter reports at `max_attempts` at most (a retry queue left from a
/// larger `MAX_ATTEMPTS` counts the same way).
pub fn attempt(properties: &BasicProperties, names: &TopologyNames, max_attempts: u32) -> u32 {
    let Some(headers) = properties.headers().as_ref() else {
        return 1;
    };
    let recorded = headers
        .inner()
        .get(ATTEMPTS)
        .and_then(as_count)
        .and_then(|n| u32::try_from(n).ok())
        .filter(|&n| last_death_queue(headers).is_some_and(|queue| queue == names.retry_queue(n)))
        .unwrap_or(0);
    recorded.saturating_add(1).clamp(1, max_attempts.max(1))
}

/// How many times the broker delivered the message before without it being
/// settled: a quorum queue's `x-delivery-count`, absent on a first delivery.
pub fn delivery_count(properties: &BasicProperties) -> Option<u64> {
    count_header(properties, DELIVERY_COUNT)
}

/// The queue the broker last dead-lettered the message from.
fn last_death_queue(headers: &FieldTable) -> Option<&str> {
    as_text(newest_death_in(headers)?.inner().get("queue")?)
}

/// The newest entry of the broker's `x-death` history, if any.
pub fn newest_death(properties: &BasicProperties) -> Option<&FieldTable> {
    newest_death_in(properties.headers().as_ref()?)
}

fn newest_death_in(headers: &FieldTable) -> Option<&FieldTable> {
    let AMQPValue::FieldArray(deaths) = headers.inner().get(DEATHS)? else {
        return None;
    };
    match deaths.as_slice().first()? {
        AMQPValue::FieldTable(newest) => Some(newest),
        _ => None,
    }
}

/// A header's value as text, when it is a string that is valid UTF-8.
pub fn text_header<'a>(properties: &'a BasicProperties, name: &str) -> Option<&'a str> {
    as_text(properties.headers().as_ref()?.inner().get(name)?)
}

/// A header's value as a count, when it is a non-negative integer.
pub fn count_header(properties: &BasicProperties, name: &str) -> Option<u64> {
    as_count(properties.headers().as_ref()?.inner().get(name)?)
}

/// A string value (long or short) that is valid UTF-8.
pub fn as_text(value: &AMQPValue) -> Option<&str> {
    match value {
        AMQPValue::LongString(value) => std::str::from_utf8(value.as_bytes()).ok(),
        AMQPValue::ShortString(value) => Some(value.as_str()),
        _ => None,
    }
}

/// An integer value of any width, when it is not negative.
pub fn as_count(value: &AMQPValue) -> Option<u64> {
    match *value {
        AMQPValue::LongLongInt(n) => u64::try_from(n).ok(),
        AMQPValue::LongInt(n) => u64::try_from(n).ok(),
        AMQPValue::LongUInt(n) => Some(u64::from(n)),
        AMQPValue::ShortInt(n) => u64::try_from(n).ok(),
        AMQPValue::ShortUInt(n) => Some(u64::from(n)),
        AMQPValue::ShortShortInt(n) => u64::try_from(n).ok(),
        AMQPValue::ShortShortUInt(n) => Some(u64::from(n)),
        _ => None,
    }
}

/// The headers of `properties` but those `dropped` names; none when none
/// are left.
pub fn headers_without(
    properties: &BasicProperties,
    dropped: impl Fn(&str) -> bool,
) -> Option<FieldTable> {
    let kept: std::collections::BTreeMap<ShortString, AMQPValue> = properties
        .headers()
        .as_ref()?
        .inner()
        .iter()
        .filter(|(name, _)| !dropped(name.as_str()))
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect();
    (!kept.is_empty()).then(|| kept.into())
}

/// The properties without `expiration`, everything else as it was. A copy
/// kept for later (a dead letter) must not vanish when the publisher's TTL
/// runs out, and a replayed one must not expire on arrival; the broker
/// itself drops the property when it dead-letters a message.
pub fn without_expiration(properties: &BasicProperties) -> BasicProperties {
    let mut copy = BasicProperties::default();
    if let Some(value) = properties.content_type() {
        copy = copy.with_content_type(value.clone());
    }
    if let Some(value) = properties.content_encoding() {
        copy = copy.with_content_encoding(value.clone());
    }
    if let Some(value) = properties.headers() {
        copy = copy.with_headers(value.clone());
    }
    if let Some(value) = *properties.delivery_mode() {
        copy = copy.with_delivery_mode(value);
    }
    if let Some(value) = *properties.priority() {
        copy = copy.with_priority(value);
    }
    if let Some(value) = properties.correlation_id() {
        copy = copy.with_correlation_id(value.clone());
    }
    if let Some(value) = properties.reply_to() {
        copy = copy.with_reply_to(value.clone());
    }
    if let Some(value) = properties.message_id() {
        copy = copy.with_message_id(value.clone());
    }
    if let Some(value) = *properties.timestamp() {
        copy = copy.with_timestamp(value);
    }
    if let Some(value) = properties.kind() {
        copy = copy.with_type(value.clone());
    }
    if let Some(value) = properties.user_id() {
        copy = copy.with_user_id(value.clone());
    }
    if let Some(value) = properties.app_id() {
        copy = copy.with_app_id(value.clone());
    }
    if let Some(value) = properties.cluster_id() {
        copy = copy.with_cluster_id(value.clone());
    }
    copy
}

/// The original properties with `extra` headers set (replacing any of the
/// same name); everything else is kept as it was.
pub fn with_headers(properties: &BasicProperties, extra: &[(&str, AMQPValue)]) -> BasicProperties {
    let mut headers = properties.headers().clone().unwrap_or_default();
    for (name, value) in extra {
        headers.insert((*name).into(), value.clone());
    }
    properties.clone().with_headers(headers)
}

pub fn text(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value))
}

/// Every property but the expiration set, with `headers`: for the tests of
/// code that must keep them all.
#[cfg(test)]
pub(crate) fn every_property(headers: FieldTable) -> BasicProperties {
    BasicProperties::default()
        .with_content_type("application/json".into())
        .with_content_encoding("identity".into())
        .with_headers(headers)
        .with_delivery_mode(2)
        .with_priority(3)
        .with_correlation_id("corr".into())
        .with_reply_to("replies".into())
        .with_message_id("m-1".into())
        .with_timestamp(1_700_000_000)
        .with_type("order".into())
        .with_user_id("guest".into())
        .with_app_id("shop".into())
        .with_cluster_id("c".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_expiration_is_left_out() {
        let mut headers = FieldTable::default();
        headers.insert("traceparent".into(), text("00-ab-cd-01"));
        let all = every_property(headers);
        let copy = without_expiration(&all.clone().with_expiration("60000".into()));
        assert_eq!(copy, all);
    }

    fn names() -> TopologyNames {
        TopologyNames {
            exchange: "orders".into(),
            routing_key: "order.created".into(),
            queue: "orders.process".into(),
        }
    }

    /// Headers as the broker leaves them on a message that expired from
    /// `queue` (newest death first).
    fn died_in(queue: &str, attempts: i64) -> BasicProperties {
        let mut death = FieldTable::default();
        death.insert("queue".into(), text(queue));
        death.insert("reason".into(), text("expired"));
        let deaths = AMQPValue::FieldArray(vec![AMQPValue::FieldTable(death)].into());
        with_headers(
            &BasicProperties::default(),
            &[
                (DEATHS, deaths),
                (ATTEMPTS, AMQPValue::LongLongInt(attempts)),
            ],
        )
    }

    #[test]
    fn a_fresh_message_is_attempt_one_and_a_retried_one_counts_on() {
        let names = names();
        assert_eq!(attempt(&BasicProperties::default(), &names, 5), 1);
        assert_eq!(attempt(&died_in("orders.process.retry.3", 3), &names, 5), 4);
        let hostile = died_in("orders.process.retry.3", -7);
        assert_eq!(attempt(&hostile, &names, 5), 1);
    }

    #[test]
    fn the_attempt_never_exceeds_max_attempts_whatever_the_headers_claim() {
        let names = names();
        // Forged: there is no retry queue 99 when MAX_ATTEMPTS is 4.
        assert_eq!(
            attempt(&died_in("orders.process.retry.99", 99), &names, 4),
            4
        );
        let huge = died_in(
            &format!("orders.process.retry.{}", u32::MAX),
            i64::from(u32::MAX),
        );
        assert_eq!(attempt(&huge, &names, 4), 4);
        // Left from a deployment with a larger MAX_ATTEMPTS.
        assert_eq!(attempt(&died_in("orders.process.retry.7", 7), &names, 4), 4);
        assert_eq!(attempt(&died_in("orders.process.retry.2", 2), &names, 4), 3);
        // A zero maximum (refused by the configuration) still means one attempt.
        assert_eq!(attempt(&BasicProperties::default(), &names, 0), 1);
    }

    #[test]
    fn an_attempt_count_the_broker_does_not_vouch_for_starts_over() {
        let names = names();
        let published = with_headers(
            &BasicProperties::default(),
            &[(ATTEMPTS, AMQPValue::LongLongInt(9))],
        );
        assert_eq!(attempt(&published, &names, 5), 1);
        // A dead letter moved back by hand: it last died in retry queue 4,
        // and was then dead-lettered by the daemon as attempt 5.
        assert_eq!(attempt(&died_in("orders.process.retry.4", 5), &names, 5), 1);
        assert_eq!(attempt(&died_in("other.retry.3", 3), &names, 5), 1);
    }

    #[test]
    fn extra_headers_keep_the_original_ones() {
        let original = with_headers(
            &BasicProperties::default(),
            &[("traceparent", text("00-x"))],
        )
        .with_content_type("application/json".into());
        let dead = with_headers(&original, &[(ERROR_KIND, text("invalid"))]);
        let headers = dead.headers().clone().unwrap_or_default();
        assert!(headers.contains_key("traceparent"));
        assert!(headers.contains_key(ERROR_KIND));
        assert_eq!(dead.content_type(), original.content_type());
    }
}
