//! Unit tests of the frame arithmetic: every copy the daemon publishes fits
//! the negotiated `frame_max`, whatever the original headers hold.

#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

use lapin::types::{ByteArray, DecimalValue, LongString};

use super::*;
use crate::adapters::amqp::copy::{dead_letter_copy, retry_copy};
use crate::adapters::amqp::headers::{ATTEMPTS, ERROR_KIND, ERROR_REASON};

fn table(entries: &[(&str, AMQPValue)]) -> FieldTable {
    let mut table = FieldTable::default();
    for (name, value) in entries {
        table.insert((*name).into(), value.clone());
    }
    table
}

/// Every kind of value a header can hold, nested ones included.
fn every_kind() -> FieldTable {
    let nested = table(&[
        ("queue", text("orders.process.retry.1")),
        ("count", AMQPValue::LongLongInt(3)),
        (
            "keys",
            AMQPValue::FieldArray(vec![text("a"), text("")].into()),
        ),
    ]);
    table(&[
        ("bool", AMQPValue::Boolean(true)),
        ("i8", AMQPValue::ShortShortInt(-1)),
        ("u8", AMQPValue::ShortShortUInt(1)),
        ("i16", AMQPValue::ShortInt(-2)),
        ("u16", AMQPValue::ShortUInt(2)),
        ("i32", AMQPValue::LongInt(-3)),
        ("u32", AMQPValue::LongUInt(3)),
        ("i64", AMQPValue::LongLongInt(-4)),
        ("f32", AMQPValue::Float(1.5)),
        ("f64", AMQPValue::Double(2.5)),
        (
            "decimal",
            AMQPValue::DecimalValue(DecimalValue { scale: 2, value: 7 }),
        ),
        ("short", AMQPValue::ShortString("s".into())),
        (
            "long",
            AMQPValue::LongString(LongString::from("é".repeat(300))),
        ),
        ("time", AMQPValue::Timestamp(1_700_000_000)),
        (
            "bytes",
            AMQPValue::ByteArray(ByteArray::from(vec![0, 1, 2])),
        ),
        ("void", AMQPValue::Void),
        (
            "x-death",
            AMQPValue::FieldArray(vec![AMQPValue::FieldTable(nested.clone())].into()),
        ),
        ("table", AMQPValue::FieldTable(nested)),
    ])
}

fn properties(headers: FieldTable) -> BasicProperties {
    BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_message_id("m-1".into())
        .with_headers(headers)
}

#[test]
fn the_entries_add_up_to_the_encoders_length_of_the_properties() {
    let headers = every_kind();
    let bare = properties_len(&properties(FieldTable::default()));
    let entries = entries_len(headers.inner().iter().map(|(n, v)| (n.as_str(), v)));
    assert_eq!(properties_len(&properties(headers)), bare + entries);
    // The empty table is its 4 bytes of length; flags, strings and the
    // delivery mode are the rest.
    let without = properties_len(&BasicProperties::default());
    assert_eq!(without, 2);
    assert_eq!(bare, 2 + (1 + 16) + 4 + 1 + (1 + 3));
    assert_eq!(entry_len("ab", &text("xyz")), 1 + 2 + 1 + 4 + 3);
}

#[test]
fn the_room_is_the_frame_less_its_overhead_and_the_reserve() {
    assert_eq!(Room::new(131_072, 0).bytes(), 131_072 - 8 - 12);
    assert_eq!(Room::new(131_072, 100).bytes(), 131_072 - 20 - 100);
    assert_eq!(Room::new(10, 100).bytes(), 0);
}

#[test]
fn the_largest_publisher_headers_go_first_then_the_brokers_history() {
    let headers = table(&[
        ("traceparent", text(&"0".repeat(55))),
        ("x-attempts", AMQPValue::LongLongInt(2)),
        ("x-death", text(&"d".repeat(3000))),
        ("a", text(&"a".repeat(1000))),
        ("b", text(&"b".repeat(2000))),
        ("c", text(&"c".repeat(10))),
    ]);
    let original = properties(headers);
    let whole = properties_len(&original);
    // Room for everything but b, and the list naming it.
    let room = Room(whole - 2000 + 30);
    let fitted = fit(original.clone(), &[ATTEMPTS], room).unwrap();
    assert_eq!(fitted.dropped, ["b"]);
    // Then a, then the history; what stays stays.
    let fitted = fit(original.clone(), &[ATTEMPTS], Room(whole - 2500)).unwrap();
    assert_eq!(fitted.dropped, ["b", "a"]);
    let fitted = fit(original.clone(), &[ATTEMPTS], Room(whole - 3500)).unwrap();
    assert_eq!(fitted.dropped, ["b", "a", "c", "x-death"]);
    let kept = fitted.properties.headers().clone().unwrap();
    assert!(kept.contains_key("traceparent") && kept.contains_key(ATTEMPTS));
    assert!(properties_len(&fitted.properties) <= whole - 3500);
    // Not even the headers that stay fit: an error, not a mutilated copy.
    let error = fit(original, &[ATTEMPTS], Room(60)).unwrap_err();
    assert_eq!(error.room, 60);
}

#[test]
fn a_trace_header_beyond_the_w3c_sizes_may_go() {
    let headers = table(&[
        ("traceparent", text(&"0".repeat(MAX_TRACEPARENT + 1))),
        ("tracestate", text(&"k=v,".repeat(200))),
    ]);
    let original = properties(headers);
    let fitted = fit(original.clone(), &[], Room(properties_len(&original) - 1)).unwrap();
    assert_eq!(fitted.dropped, ["tracestate"]);
    let fitted = fit(original, &[], Room(200)).unwrap();
    assert_eq!(fitted.dropped, ["tracestate", "traceparent"]);
}

#[test]
fn the_dropped_list_keeps_earlier_names_and_stays_bounded() {
    let mut entries: Vec<(String, AMQPValue)> = (0..300)
        .map(|n| (format!("x-header-{n:03}"), text(&"v".repeat(100))))
        .collect();
    entries.push((
        DROPPED_HEADERS.to_owned(),
        AMQPValue::FieldArray(vec![text("x-earlier"), AMQPValue::LongLongInt(1)].into()),
    ));
    let mut headers = FieldTable::default();
    for (name, value) in entries {
        headers.insert(name.into(), value);
    }
    let original = properties(headers);
    let fitted = fit(original, &[], Room(2000)).unwrap();
    assert!(fitted.dropped.len() > 250);
    let list = fitted.properties.headers().clone().unwrap();
    let list = list.inner().get(DROPPED_HEADERS).unwrap();
    assert!(entry_len(DROPPED_HEADERS, list) <= 1 + 17 + 1 + 4 + MAX_DROPPED_LIST);
    let AMQPValue::FieldArray(names) = list else {
        panic!("{list:?}")
    };
    let names = names.as_slice();
    assert_eq!(names[0], text("x-earlier"));
    // All equal in size: dropped in name order.
    assert_eq!(names[1], text("x-header-000"));
    let more = format!("({} more)", fitted.dropped.len() + 1 - (names.len() - 1));
    assert_eq!(names.last(), Some(&text(&more)));
}

/// Every optional property a publisher can fill, at its longest.
fn fullest_properties(headers: FieldTable) -> BasicProperties {
    let long = || ShortString::from("p".repeat(255));
    BasicProperties::default()
        .with_content_type(long())
        .with_content_encoding(long())
        .with_headers(headers)
        .with_delivery_mode(2)
        .with_priority(9)
        .with_correlation_id(long())
        .with_reply_to(long())
        .with_expiration(long())
        .with_message_id(long())
        .with_timestamp(u64::MAX)
        .with_type(long())
        .with_user_id(long())
        .with_app_id(long())
        .with_cluster_id(long())
}

/// Headers that use up any frame: many large ones, the longest trace
/// headers that stay, a large broker history and an earlier list.
fn hostile_headers() -> FieldTable {
    let mut headers = table(&[
        ("traceparent", text(&"0".repeat(MAX_TRACEPARENT))),
        ("tracestate", text(&"s".repeat(MAX_TRACESTATE))),
        ("x-death", text(&"d".repeat(100_000))),
        ("x-first-death-queue", text(&"q".repeat(10_000))),
        (
            DROPPED_HEADERS,
            AMQPValue::FieldArray(vec![text(&"n".repeat(255)); 50].into()),
        ),
        (ERROR_REASON, text(&"r".repeat(50_000))),
    ]);
    for n in 0..40 {
        headers.insert(format!("x-{n}").into(), text(&"h".repeat(3000)));
    }
    headers
}

#[test]
fn a_dead_letter_fits_the_smallest_frame_the_protocol_allows() {
    let original = fullest_properties(hostile_headers());
    let reason = "r".repeat(10_000);
    let copy = dead_letter_copy(&original, 4, "retries_exhausted", &reason, 4096).unwrap();
    let room = Room::new(4096, redelivery_reserve()).bytes();
    assert!(properties_len(&copy.properties) <= room);
    let kept = copy.properties.headers().clone().unwrap();
    for name in [TRACEPARENT, TRACESTATE, ERROR_KIND, ERROR_REASON, ATTEMPTS] {
        assert!(kept.contains_key(name), "{name}");
    }
}

#[test]
fn a_retry_copy_fits_an_8_kib_frame_with_the_longest_names() {
    let original = fullest_properties(hostile_headers());
    let queue = format!("{}.retry.99", "q".repeat(245));
    let delay = std::time::Duration::from_millis(u64::MAX);
    let copy = retry_copy(&original, &queue, 4, delay, 8192).unwrap();
    let room = Room::new(8192, expiry_reserve(&queue, &u64::MAX.to_string())).bytes();
    assert!(properties_len(&copy.properties) <= room);
}

#[test]
fn the_expiry_reserve_covers_what_rabbitmq_writes() {
    // As RabbitMQ 3.13 leaves a message that expired from a retry queue:
    // one x-death entry, the first-death and last-death headers, and a
    // delivery count once the work queue redelivers it.
    let queue = "orders.process.retry.2";
    let death = table(&[
        ("count", AMQPValue::LongLongInt(1)),
        ("reason", text("expired")),
        ("queue", text(queue)),
        ("time", AMQPValue::Timestamp(1_700_000_000)),
        ("exchange", text("")),
        (
            "routing-keys",
            AMQPValue::FieldArray(vec![text(queue)].into()),
        ),
        ("original-expiration", text("1999")),
    ]);
    let written = table(&[
        (
            "x-death",
            AMQPValue::FieldArray(vec![AMQPValue::FieldTable(death)].into()),
        ),
        ("x-first-death-exchange", text("")),
        ("x-first-death-queue", text(queue)),
        ("x-first-death-reason", text("expired")),
        ("x-last-death-exchange", text("")),
        ("x-last-death-queue", text(queue)),
        ("x-last-death-reason", text("expired")),
        ("x-delivery-count", AMQPValue::LongInt(1)),
    ]);
    let written = entries_len(written.inner().iter().map(|(n, v)| (n.as_str(), v)));
    let reserve = expiry_reserve(queue, "1999");
    assert!(reserve >= written, "{reserve} < {written}");
    assert!(reserve < written + 16, "{reserve} is needlessly large");
}
