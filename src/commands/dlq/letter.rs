//! One dead letter as read from `Q.dead`, what an operator asks of it
//! (kind, reason, attempts, order id, trace id, age), and the filters that
//! select dead letters by those answers.
//!
//! - `--kind`: the `x-error-kind` header, exactly.
//! - `--reason`: a substring of the `x-error-reason` header, case-sensitive.
//! - `--order-id`: the `message_id` property, or else the body's
//!   `order_id` field, exactly.
//! - `--older-than`: the message's time is its `timestamp` property (set by
//!   `publish` when the order was sent) or else the `time` of its newest
//!   `x-death` entry (when the broker last moved it); a dead letter with
//!   neither has no age and is never selected by `--older-than`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lapin::BasicProperties;
use lapin::types::{AMQPValue, DeliveryTag};

use crate::adapters::amqp::headers::{
    self, ATTEMPTS, ERROR_KIND, ERROR_REASON, TRACEPARENT, count_header, text_header,
};
use crate::cli::FilterArgs;

/// A dead letter read but not acknowledged: it leaves the queue only when
/// a command acknowledges its tag.
pub struct DeadLetter {
    pub tag: DeliveryTag,
    pub body: Vec<u8>,
    pub properties: BasicProperties,
}

impl DeadLetter {
    pub fn kind(&self) -> &str {
        text_header(&self.properties, ERROR_KIND).unwrap_or("unknown")
    }

    pub fn reason(&self) -> &str {
        text_header(&self.properties, ERROR_REASON).unwrap_or_default()
    }

    pub fn attempts(&self) -> Option<u64> {
        count_header(&self.properties, ATTEMPTS)
    }

    /// The `message_id` property, or else the body's `order_id` field.
    pub fn order_id(&self) -> Option<String> {
        if let Some(id) = self.properties.message_id() {
            return Some(id.as_str().to_owned());
        }
        #[derive(serde::Deserialize)]
        struct OrderIdOnly {
            order_id: String,
        }
        serde_json::from_slice::<OrderIdOnly>(&self.body)
            .ok()
            .map(|only| only.order_id)
    }

    /// The trace id of the W3C `traceparent` header
    /// (`00-{trace id}-{span id}-{flags}`).
    pub fn trace_id(&self) -> Option<&str> {
        let traceparent = text_header(&self.properties, TRACEPARENT)?;
        let trace_id = traceparent.split('-').nth(1)?;
        (trace_id.len() == 32).then_some(trace_id)
    }

    /// Seconds since the epoch: the `timestamp` property, or else the time
    /// of the newest `x-death` entry.
    pub fn time(&self) -> Option<u64> {
        if let Some(timestamp) = *self.properties.timestamp() {
            return Some(timestamp);
        }
        match headers::newest_death(&self.properties)?
            .inner()
            .get("time")?
        {
            AMQPValue::Timestamp(time) => Some(*time),
            _ => None,
        }
    }
}

/// Which dead letters a command acts on; every criterion given must hold.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    args: FilterArgs,
    now: u64,
}

impl Filter {
    pub fn new(args: FilterArgs) -> Self {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_secs());
        Self { args, now }
    }

    pub fn matches(&self, letter: &DeadLetter) -> bool {
        let args = &self.args;
        args.kind
            .as_deref()
            .is_none_or(|kind| letter.kind() == kind)
            && args
                .reason
                .as_deref()
                .is_none_or(|reason| letter.reason().contains(reason))
            && args
                .order_id
                .as_deref()
                .is_none_or(|id| letter.order_id().as_deref() == Some(id))
            && args.older_than.is_none_or(|age| self.older(letter, age))
    }

    fn older(&self, letter: &DeadLetter, age: Duration) -> bool {
        letter
            .time()
            .is_some_and(|time| self.now.saturating_sub(time) >= age.as_secs())
    }

    /// The criteria in words, for a prompt or a summary.
    pub fn describe(&self) -> String {
        let args = &self.args;
        let mut parts = Vec::new();
        if let Some(kind) = &args.kind {
            parts.push(format!("kind {kind}"));
        }
        if let Some(reason) = &args.reason {
            parts.push(format!("reason containing {reason:?}"));
        }
        if let Some(id) = &args.order_id {
            parts.push(format!("order id {id}"));
        }
        if let Some(age) = args.older_than {
            parts.push(format!("older than {} s", age.as_secs()));
        }
        if parts.is_empty() {
            "every dead letter".to_owned()
        } else {
            format!("dead letters with {}", parts.join(", "))
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use lapin::types::FieldTable;

    use super::*;
    use crate::adapters::amqp::headers::{DEATHS, text, with_headers};

    fn letter(properties: BasicProperties, body: &[u8]) -> DeadLetter {
        DeadLetter {
            tag: 1,
            body: body.to_vec(),
            properties,
        }
    }

    fn failed(kind: &str, reason: &str) -> BasicProperties {
        with_headers(
            &BasicProperties::default(),
            &[(ERROR_KIND, text(kind)), (ERROR_REASON, text(reason))],
        )
    }

    fn filter(args: FilterArgs, now: u64) -> Filter {
        Filter { args, now }
    }

    #[test]
    fn kind_is_exact_and_reason_a_substring() {
        let dead = letter(failed("invalid", "unknown currency ZZZ"), b"{}");
        let kind = |kind: &str| FilterArgs {
            kind: Some(kind.to_owned()),
            ..FilterArgs::default()
        };
        assert!(filter(kind("invalid"), 0).matches(&dead));
        assert!(!filter(kind("inval"), 0).matches(&dead));
        let reason = |reason: &str| FilterArgs {
            reason: Some(reason.to_owned()),
            ..FilterArgs::default()
        };
        assert!(filter(reason("currency"), 0).matches(&dead));
        assert!(!filter(reason("Currency"), 0).matches(&dead));
    }

    #[test]
    fn the_order_id_is_the_message_id_or_the_bodys_field() {
        let by_body = letter(BasicProperties::default(), br#"{"order_id":"a-1"}"#);
        assert_eq!(by_body.order_id().as_deref(), Some("a-1"));
        let by_property = letter(
            BasicProperties::default().with_message_id("b-2".into()),
            br#"{"order_id":"a-1"}"#,
        );
        assert_eq!(by_property.order_id().as_deref(), Some("b-2"));
        assert_eq!(letter(BasicProperties::default(), b"junk").order_id(), None);
    }

    #[test]
    fn the_age_comes_from_the_timestamp_or_the_newest_death() {
        let ten_minutes = FilterArgs {
            older_than: Some(Duration::from_secs(600)),
            ..FilterArgs::default()
        };
        let stamped = letter(BasicProperties::default().with_timestamp(1_000), b"");
        assert!(filter(ten_minutes.clone(), 1_600).matches(&stamped));
        assert!(!filter(ten_minutes.clone(), 1_599).matches(&stamped));
        let mut death = FieldTable::default();
        death.insert("time".into(), AMQPValue::Timestamp(2_000));
        let deaths = AMQPValue::FieldArray(vec![AMQPValue::FieldTable(death)].into());
        let died = letter(
            with_headers(&BasicProperties::default(), &[(DEATHS, deaths)]),
            b"",
        );
        assert_eq!(died.time(), Some(2_000));
        assert!(filter(ten_minutes.clone(), 2_600).matches(&died));
        let ageless = letter(BasicProperties::default(), b"");
        assert!(!filter(ten_minutes, u64::MAX).matches(&ageless));
    }

    #[test]
    fn the_trace_id_is_read_from_the_traceparent() {
        let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let traced = letter(
            with_headers(
                &BasicProperties::default(),
                &[(TRACEPARENT, text(traceparent))],
            ),
            b"",
        );
        assert_eq!(traced.trace_id(), Some("0af7651916cd43dd8448eb211c80319c"));
        let forged = letter(
            with_headers(
                &BasicProperties::default(),
                &[(TRACEPARENT, text("00-x-y-01"))],
            ),
            b"",
        );
        assert_eq!(forged.trace_id(), None);
    }
}
