//! Fuzzes the code that reads a delivery's headers and writes its copies:
//! the attempt count (`x-death`, `x-attempts`), the trace context
//! extraction, and the retry, dead-letter and replay copies that must fit
//! the connection's frame. Whatever header table a publisher sends:
//!
//! 1. nothing panics, and the attempt is within 1..=MAX_ATTEMPTS;
//! 2. every copy is made (none is ever too large to publish) and fits its
//!    room: the frame, less what the broker adds later;
//! 3. a copy keeps the daemon's own headers, a `traceparent`/`tracestate`
//!    of a size the W3C allows and every other header it does not name in
//!    its dropped list, unchanged; it names only headers the original had,
//!    and drops nothing when the original fits as it is.
//!
//! The input is not a wire-format table but a recipe for one (see
//! [`Recipe`]), so that short inputs reach every value type, the header
//! names the daemon reads and headers tens of KiB long. The seeds in
//! `tests/fuzz/seeds-headers/` are such recipes (written by
//! `tests/fuzz/seeds-headers.py`): headers that nearly fill the smallest and the default frame, a
//! forged `x-death`, routing headers.

#![no_main]

use std::collections::BTreeMap;
use std::time::Duration;

use lapin::BasicProperties;
use lapin::types::generation::gen_value;
use lapin::types::{
    AMQPValue, ByteArray, DecimalValue, FieldArray, FieldTable, LongString, ShortString,
};
use libfuzzer_sys::fuzz_target;
use order_processor::adapters::amqp::TopologyNames;
use order_processor::adapters::amqp::copy::{
    MAX_REASON_BYTES, dead_letter_copy, replay_copy, retry_copy,
};
use order_processor::adapters::amqp::frame::{
    Fitted, MAX_TRACEPARENT, MAX_TRACESTATE, Room, expiry_reserve, properties_len,
    redelivery_reserve,
};
use order_processor::adapters::amqp::headers::{
    ATTEMPTS, DROPPED_HEADERS, ERROR_KIND, ERROR_REASON, HeaderExtractor, TRACEPARENT, TRACESTATE,
    attempt,
};
use order_processor::telemetry;

/// Frame sizes a connection may negotiate: the protocol's least, small
/// ones, and RabbitMQ's default.
const FRAMES: [u32; 4] = [4096, 8192, 16_384, 131_072];
const QUEUE: &str = "orders.process";

fuzz_target!(|data: &[u8]| check(data));

fn names() -> TopologyNames {
    TopologyNames {
        exchange: "orders".into(),
        routing_key: "order.created".into(),
        queue: QUEUE.into(),
    }
}

fn check(data: &[u8]) {
    let mut recipe = Recipe {
        data,
        budget: MAX_GENERATED,
    };
    let max_attempts = 1 + u32::from(recipe.byte() % 12);
    let frame_max = FRAMES[usize::from(recipe.byte() % 4)];
    let headers = recipe.table(0);
    let properties = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_message_id("m-1".into())
        .with_expiration("60000".into())
        .with_headers(headers.clone());

    let attempt = attempt(&properties, &names(), max_attempts);
    assert!(
        (1..=max_attempts).contains(&attempt),
        "attempt {attempt} of {max_attempts}"
    );
    let context = telemetry::extract(&HeaderExtractor(Some(&headers)));
    if let Some(trace_id) = telemetry::context_trace_id(&context) {
        assert_eq!(trace_id.len(), 32, "{trace_id}");
    }

    let queue = names().retry_queue(attempt);
    let delay = Duration::from_millis(u64::from(recipe.byte()) * 1000);
    let millis = delay.as_millis().to_string();
    let retry = retry_copy(&properties, &queue, attempt, delay, frame_max)
        .unwrap_or_else(|error| panic!("no retry copy at frame_max {frame_max}: {error}"));
    let room = Room::new(frame_max, expiry_reserve(&queue, &millis));
    let mut expected = without(&headers, &["CC", "BCC"]);
    expected.insert(ATTEMPTS.into(), AMQPValue::LongLongInt(i64::from(attempt)));
    keeps_the_contract(&retry, &expected, room, &[ATTEMPTS]);
    assert_eq!(
        retry
            .properties
            .expiration()
            .as_ref()
            .map(ShortString::as_str),
        Some(millis.as_str())
    );

    let reason = recipe.text();
    let dead = dead_letter_copy(
        &properties,
        attempt,
        "retries_exhausted",
        &reason,
        frame_max,
    )
    .unwrap_or_else(|error| panic!("no dead letter at frame_max {frame_max}: {error}"));
    let room = Room::new(frame_max, redelivery_reserve());
    let mut expected = headers.inner().clone();
    expected.insert(ERROR_KIND.into(), text("retries_exhausted"));
    let bounded = reason
        .char_indices()
        .map(|(at, c)| at + c.len_utf8())
        .take_while(|end| *end <= MAX_REASON_BYTES)
        .last()
        .map_or("", |end| &reason[..end]);
    expected.insert(ERROR_REASON.into(), text(bounded));
    expected.insert(ATTEMPTS.into(), AMQPValue::LongLongInt(i64::from(attempt)));
    keeps_the_contract(
        &dead,
        &expected,
        room,
        &[ERROR_KIND, ERROR_REASON, ATTEMPTS],
    );
    assert_eq!(dead.properties.expiration(), &None);

    let replay = replay_copy(properties.clone(), frame_max)
        .unwrap_or_else(|error| panic!("no replay at frame_max {frame_max}: {error}"));
    let room = Room::new(frame_max, redelivery_reserve());
    keeps_the_contract(&replay, headers.inner(), room, &[]);
}

fn keeps_the_contract(
    copy: &Fitted,
    expected: &BTreeMap<ShortString, AMQPValue>,
    room: Room,
    own: &[&str],
) {
    let length = properties_len(&copy.properties);
    assert!(
        length <= room.bytes(),
        "{length} bytes in a room of {}",
        room.bytes()
    );
    let kept = copy.properties.headers().clone().unwrap_or_default();
    let kept = kept.inner();
    let whole = properties_len(
        &copy
            .properties
            .clone()
            .with_headers(expected.clone().into()),
    );
    if whole <= room.bytes() {
        assert!(
            copy.dropped.is_empty(),
            "dropped {:?} from a copy that fits",
            copy.dropped
        );
        assert!(
            kept.len() == expected.len()
                && expected
                    .iter()
                    .all(|(name, value)| same(kept.get(name), value)),
            "a copy that fits is not the original with the daemon's headers"
        );
        return;
    }
    for name in &copy.dropped {
        assert!(
            expected.contains_key(name.as_str()),
            "dropped {name}, which it never had"
        );
        assert!(
            !kept.contains_key(name.as_str()),
            "dropped {name} and kept it"
        );
    }
    for (name, value) in expected {
        let stays = own.contains(&name.as_str()) || trace_within_bounds(name.as_str(), value);
        if stays {
            assert!(same(kept.get(name), value), "{name} must stay as it was");
        }
        if name.as_str() == DROPPED_HEADERS {
            continue;
        }
        let dropped = copy.dropped.iter().any(|dropped| dropped == name.as_str());
        assert!(
            dropped || same(kept.get(name), value),
            "{name} neither kept as it was nor dropped"
        );
    }
    if copy.dropped.is_empty() {
        return;
    }
    let Some(AMQPValue::FieldArray(list)) = kept.get(DROPPED_HEADERS) else {
        panic!("headers dropped, but no list: {:?}", copy.dropped);
    };
    let listed: Vec<&[u8]> = list
        .as_slice()
        .iter()
        .map(|name| match name {
            AMQPValue::LongString(name) => name.as_bytes(),
            other => panic!("{other:?} in the list"),
        })
        .collect();
    assert!(listed.iter().map(|name| name.len() + 5).sum::<usize>() <= 512);
    let complete = !listed.last().is_some_and(|last| last.ends_with(b" more)"));
    if complete {
        for name in &copy.dropped {
            assert!(
                listed.contains(&name.as_bytes()),
                "{name} dropped, not listed"
            );
        }
    }
}

/// Equal as encoded (a NaN float is not equal to itself as a value).
fn same(kept: Option<&AMQPValue>, value: &AMQPValue) -> bool {
    kept.is_some_and(|kept| encoded(kept) == encoded(value))
}

fn encoded(value: &AMQPValue) -> Vec<u8> {
    gen_value(value)(Vec::new().into())
        .map(|written| written.write)
        .unwrap_or_else(|error| panic!("{value:?} cannot be encoded: {error:?}"))
}

fn trace_within_bounds(name: &str, value: &AMQPValue) -> bool {
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

fn without(headers: &FieldTable, names: &[&str]) -> BTreeMap<ShortString, AMQPValue> {
    let mut kept = headers.inner().clone();
    for name in names {
        kept.remove(*name);
    }
    kept
}

fn text(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value))
}

/// The most bytes of long values one input may generate (beyond its own).
const MAX_GENERATED: usize = 1 << 20;

/// Reads a header table out of the fuzzer's bytes; zeros once they run out.
struct Recipe<'a> {
    data: &'a [u8],
    /// What is left of [`MAX_GENERATED`].
    budget: usize,
}

/// Names the daemon or the broker give meaning to, and some others.
const NAMES: [&str; 16] = [
    "x-death",
    "x-attempts",
    "traceparent",
    "tracestate",
    "x-dropped-headers",
    "x-error-kind",
    "x-error-reason",
    "x-first-death-queue",
    "x-last-death-reason",
    "x-delivery-count",
    "CC",
    "BCC",
    "queue",
    "reason",
    "count",
    "x-custom",
];

impl Recipe<'_> {
    fn byte(&mut self) -> u8 {
        let Some((first, rest)) = self.data.split_first() else {
            return 0;
        };
        self.data = rest;
        *first
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let n = n.min(self.data.len());
        let (taken, rest) = self.data.split_at(n);
        self.data = rest;
        taken.to_vec()
    }

    fn u64(&mut self) -> u64 {
        (0..8).fold(0, |n, _| (n << 8) | u64::from(self.byte()))
    }

    /// A length: mostly short, sometimes tens of KiB (one byte repeated).
    fn content(&mut self) -> Vec<u8> {
        let kind = self.byte();
        let length = usize::from(self.byte());
        match kind % 4 {
            0 => {
                let fill = self.byte();
                let length = (length * 256 + usize::from(self.byte())).min(self.budget);
                self.budget -= length;
                vec![fill; length]
            }
            _ => self.bytes(length),
        }
    }

    fn text(&mut self) -> String {
        match self.byte() % 4 {
            0 => format!("{QUEUE}.retry.{}", self.u64() % 200),
            1 => format!(
                "00-{:032x}-{:016x}-01",
                u128::from(self.u64()) << 64 | u128::from(self.u64()),
                self.u64()
            ),
            _ => String::from_utf8_lossy(&self.content()).into_owned(),
        }
    }

    fn name(&mut self) -> ShortString {
        let pick = usize::from(self.byte());
        if let Some(name) = NAMES.get(pick) {
            return (*name).into();
        }
        let length = usize::from(self.byte()) % 256;
        let mut name = String::from_utf8_lossy(&self.bytes(length)).into_owned();
        while name.len() > 255 {
            name.pop();
        }
        ShortString::from(name)
    }

    fn table(&mut self, depth: u8) -> FieldTable {
        let mut table = FieldTable::default();
        for _ in 0..self.byte() % 24 {
            let name = self.name();
            let value = self.value(depth);
            table.insert(name, value);
        }
        table
    }

    fn value(&mut self, depth: u8) -> AMQPValue {
        let tag = self.byte() % 18;
        let n = if tag <= 12 { self.u64() } else { 0 };
        match tag {
            0 => AMQPValue::Boolean(n % 2 == 0),
            1 => AMQPValue::ShortShortInt(n as i8),
            2 => AMQPValue::ShortShortUInt(n as u8),
            3 => AMQPValue::ShortInt(n as i16),
            4 => AMQPValue::ShortUInt(n as u16),
            5 => AMQPValue::LongInt(n as i32),
            6 => AMQPValue::LongUInt(n as u32),
            7 => AMQPValue::LongLongInt(n as i64),
            8 => AMQPValue::Float(f32::from_bits(n as u32)),
            9 => AMQPValue::Double(f64::from_bits(n)),
            10 => AMQPValue::DecimalValue(DecimalValue {
                scale: n as u8,
                value: (n >> 8) as u32,
            }),
            11 => {
                let mut text = self.text();
                while text.len() > 255 {
                    text.pop();
                }
                AMQPValue::ShortString(text.into())
            }
            12 => AMQPValue::Timestamp(n),
            13 => AMQPValue::ByteArray(ByteArray::from(self.content())),
            14 => AMQPValue::Void,
            15 if depth < 4 => {
                let items: Vec<AMQPValue> = (0..self.byte() % 8)
                    .map(|_| self.value(depth + 1))
                    .collect();
                AMQPValue::FieldArray(FieldArray::from(items))
            }
            16 if depth < 4 => AMQPValue::FieldTable(self.table(depth + 1)),
            _ => AMQPValue::LongString(LongString::from(self.text())),
        }
    }
}
