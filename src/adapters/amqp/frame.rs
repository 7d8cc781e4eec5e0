//! Making every copy the daemon publishes (a retry, a dead letter, a
//! replayed dead letter) fit the connection's negotiated `frame_max`.
//!
//! A message's properties, its header table included, travel in one
//! content header frame that cannot be split. A broker refuses a larger
//! one by closing the whole connection (FRAME_ERROR), and the original
//! delivery, never acked, comes back to fail the same way forever. A
//! publisher's headers may come within a few bytes of the limit, and a copy
//! carries more than the original: the daemon's own headers, and what the
//! broker adds later, when a retry copy expires back to the work queue
//! (`x-death`, `x-first-death-*`, `x-last-death-*`) or a quorum queue
//! redelivers (`x-delivery-count`), which the daemon's own connection must
//! still be able to receive.
//!
//! So a copy is measured with the protocol's own encoder (amq-protocol,
//! which lapin writes frames with), and when it would not leave room for
//! what comes later, headers are left out, the largest first, and named in
//! `x-dropped-headers`: first the publisher's, then the broker's history of
//! earlier dead-letterings. Never left out: the headers the daemon sets on
//! the copy and a `traceparent`/`tracestate` of a size the W3C allows.

use std::collections::{BTreeMap, HashSet};

use lapin::BasicProperties;
use lapin::protocol::basic::gen_properties;
use lapin::types::generation::{SerializeFn, gen_value};
use lapin::types::{AMQPValue, FieldArray, FieldTable, ShortString};

use super::headers::{DEATHS, DELIVERY_COUNT, DROPPED_HEADERS, TRACEPARENT, TRACESTATE, text};

/// A frame's own bytes: type, channel, payload size and frame-end.
const FRAME_OVERHEAD: usize = 8;
/// A content header's bytes before its properties: class id, weight and
/// body size.
const CONTENT_HEADER_FIXED: usize = 12;
/// The longest `traceparent` kept unconditionally: version 00 takes 55
/// bytes; later versions may only append fields.
pub const MAX_TRACEPARENT: usize = 256;
/// The longest `tracestate` kept unconditionally: the W3C asks vendors to
/// propagate at least 512 bytes of it.
pub const MAX_TRACESTATE: usize = 512;
/// The most bytes the names in `x-dropped-headers` take, as encoded.
const MAX_DROPPED_LIST: usize = 512;
/// Room kept in the list for its last element, "(N more)".
const MORE_ROOM: usize = 32;

/// The broker's history of a message's dead-letterings: left out only
/// after every other header that may go.
pub const BROKER_HISTORY: [&str; 7] = [
    DEATHS,
    "x-first-death-exchange",
    "x-first-death-queue",
    "x-first-death-reason",
    "x-last-death-exchange",
    "x-last-death-queue",
    "x-last-death-reason",
];

/// How many bytes a copy's properties may take on a connection: the frame
/// minus its overhead, the content header's fixed part and a reserve for
/// what the broker will add.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Room(usize);

impl Room {
    pub fn new(frame_max: u32, reserve: usize) -> Self {
        let frame_max = usize::try_from(frame_max).unwrap_or(usize::MAX);
        Self(
            frame_max
                .saturating_sub(FRAME_OVERHEAD)
                .saturating_sub(CONTENT_HEADER_FIXED)
                .saturating_sub(reserve),
        )
    }

    pub fn bytes(self) -> usize {
        self.0
    }
}

/// A copy that fits, and the headers left out of it (this time).
#[derive(Debug, Clone, PartialEq)]
pub struct Fitted {
    pub properties: BasicProperties,
    pub dropped: Vec<String>,
}

/// Even without every header that may go, the copy would be too large.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "its properties take at least {needed} bytes, and the broker's frame leaves room for {room}"
)]
pub struct DoesNotFit {
    pub needed: usize,
    pub room: usize,
}

/// The bytes `value` takes when encoded by `serialize`; an unencodable
/// value counts as too large for any frame.
fn encoded<F: SerializeFn<Vec<u8>>>(serialize: F) -> usize {
    serialize(Vec::new().into()).map_or(usize::MAX, |written| written.write.len())
}

/// The exact bytes `properties` take in a content header frame: property
/// flags and every property present, the header table included.
pub fn properties_len(properties: &BasicProperties) -> usize {
    encoded(gen_properties(properties))
}

/// The exact bytes one entry takes in a header table: its name as a short
/// string, then its type tag and value.
pub fn entry_len(name: &str, value: &AMQPValue) -> usize {
    1usize
        .saturating_add(name.len())
        .saturating_add(encoded(gen_value(value)))
}

fn entries_len<'a>(entries: impl IntoIterator<Item = (&'a str, &'a AMQPValue)>) -> usize {
    entries.into_iter().fold(0, |sum, (name, value)| {
        sum.saturating_add(entry_len(name, value))
    })
}

/// What the broker adds to a copy that waits in `retry_queue` until its
/// `expiration` and is then dead-lettered back to the work queue, as
/// RabbitMQ 3.10 to 4.x encode it: an `x-death` entry, `x-first-death-*`,
/// `x-last-death-*`, and `x-delivery-count` should the work queue deliver
/// it again. Each counts as new, which covers one the broker only updates.
pub fn expiry_reserve(retry_queue: &str, expiration: &str) -> usize {
    let death: BTreeMap<ShortString, AMQPValue> = [
        ("count", AMQPValue::LongLongInt(i64::MAX)),
        ("reason", text("expired")),
        ("queue", text(retry_queue)),
        ("time", AMQPValue::Timestamp(u64::MAX)),
        // Retry copies are published to the default exchange.
        ("exchange", text("")),
        (
            "routing-keys",
            AMQPValue::FieldArray(vec![text(retry_queue)].into()),
        ),
        ("original-expiration", text(expiration)),
    ]
    .into_iter()
    .map(|(name, value)| (ShortString::from(name), value))
    .collect();
    let deaths = AMQPValue::FieldArray(vec![AMQPValue::FieldTable(death.into())].into());
    let added = [
        (DEATHS, deaths),
        ("x-first-death-exchange", text("")),
        ("x-first-death-queue", text(retry_queue)),
        ("x-first-death-reason", text("expired")),
        ("x-last-death-exchange", text("")),
        ("x-last-death-queue", text(retry_queue)),
        ("x-last-death-reason", text("expired")),
        (DELIVERY_COUNT, AMQPValue::LongLongInt(i64::MAX)),
    ];
    entries_len(added.iter().map(|(name, value)| (*name, value)))
}

/// What a quorum queue adds when it delivers a message again.
pub fn redelivery_reserve() -> usize {
    entry_len(DELIVERY_COUNT, &AMQPValue::LongLongInt(i64::MAX))
}

/// `properties` as they are if they fit in `room`. Otherwise without the
/// largest headers that may go, first the publisher's and then the
/// broker's history, until they fit with `x-dropped-headers` naming them
/// (after the names an earlier copy listed). The headers named in `own`,
/// set by the daemon, and a `traceparent`/`tracestate` within the W3C's
/// sizes always stay.
pub fn fit(properties: BasicProperties, own: &[&str], room: Room) -> Result<Fitted, DoesNotFit> {
    let room = room.bytes();
    if properties_len(&properties) <= room {
        return Ok(Fitted {
            properties,
            dropped: Vec::new(),
        });
    }
    let mut headers = properties
        .headers()
        .as_ref()
        .map(|headers| headers.inner().clone())
        .unwrap_or_default();
    // Rewritten below, bounded, with the names it held.
    let earlier = headers
        .remove(DROPPED_HEADERS)
        .map(|list| listed_names(&list))
        .unwrap_or_default();
    let bare = properties_len(&properties.clone().with_headers(FieldTable::default()));
    let mut total = bare;
    let mut candidates = Vec::new();
    for (name, value) in &headers {
        let size = entry_len(name.as_str(), value);
        total = total.saturating_add(size);
        if !stays(name.as_str(), value, own) {
            let history = BROKER_HISTORY.contains(&name.as_str());
            candidates.push((history, size, name.clone()));
        }
    }
    // The publisher's before the broker's history, the largest first.
    candidates.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)).then(a.2.cmp(&b.2)));
    let mut candidates = candidates.into_iter();
    let mut dropped: Vec<String> = Vec::new();
    // What the list names: the earlier names, then this copy's, each once.
    let mut named = Vec::new();
    let mut seen = HashSet::new();
    for name in earlier {
        if seen.insert(name.clone()) {
            named.push(name);
        }
    }
    loop {
        let list = dropped_list(&named);
        let needed = total.saturating_add(
            list.as_ref()
                .map_or(0, |list| entry_len(DROPPED_HEADERS, list)),
        );
        if needed <= room {
            if let Some(list) = list {
                headers.insert(ShortString::from(DROPPED_HEADERS), list);
            }
            let fitted = properties.with_headers(headers.into());
            // The sum above is exact; this guards the guarantee itself.
            let needed = properties_len(&fitted);
            if needed > room {
                return Err(DoesNotFit { needed, room });
            }
            return Ok(Fitted {
                properties: fitted,
                dropped,
            });
        }
        let Some((_, size, name)) = candidates.next() else {
            return Err(DoesNotFit { needed, room });
        };
        headers.remove(&name);
        total = total.saturating_sub(size);
        if seen.insert(name.to_string()) {
            named.push(name.to_string());
        }
        dropped.push(name.to_string());
    }
}

/// Whether a header always stays in the copy.
fn stays(name: &str, value: &AMQPValue, own: &[&str]) -> bool {
    if own.contains(&name) {
        return true;
    }
    let limit = match name {
        TRACEPARENT => MAX_TRACEPARENT,
        TRACESTATE => MAX_TRACESTATE,
        _ => return false,
    };
    match value {
        AMQPValue::LongString(value) => value.as_bytes().len() <= limit,
        AMQPValue::ShortString(value) => value.as_str().len() <= limit,
        _ => false,
    }
}

/// The header names an earlier `x-dropped-headers` listed (strings short
/// enough to be a header name; anything else there is not ours).
fn listed_names(list: &AMQPValue) -> Vec<String> {
    let AMQPValue::FieldArray(list) = list else {
        return Vec::new();
    };
    list.as_slice()
        .iter()
        .filter_map(|value| match value {
            AMQPValue::LongString(name) => std::str::from_utf8(name.as_bytes()).ok(),
            AMQPValue::ShortString(name) => Some(name.as_str()),
            _ => None,
        })
        .filter(|name| name.len() <= usize::from(u8::MAX))
        .map(str::to_owned)
        .collect()
}

/// `x-dropped-headers`: as many of `names` as [`MAX_DROPPED_LIST`] bytes
/// hold, then "(N more)"; none if there are no names.
fn dropped_list(names: &[String]) -> Option<AMQPValue> {
    if names.is_empty() {
        return None;
    }
    let mut listed = Vec::new();
    let mut used = 0usize;
    for (index, name) in names.iter().enumerate() {
        // A long string: type tag, length, bytes.
        let cost = name.len().saturating_add(5);
        if used.saturating_add(cost).saturating_add(MORE_ROOM) > MAX_DROPPED_LIST {
            let more = names.len().saturating_sub(index);
            listed.push(text(&format!("({more} more)")));
            break;
        }
        used = used.saturating_add(cost);
        listed.push(text(name));
    }
    Some(AMQPValue::FieldArray(FieldArray::from(listed)))
}

#[cfg(test)]
#[path = "frame_tests.rs"]
mod tests;
