//! `Order::parse` on bodies that cannot be decoded into the order's shape:
//! each must come back as the right `DecodeError`, with a path or position
//! that names no value from the message.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use serde_json::{Value, json};

use super::{body_with, good};
use crate::domain::{DecodeError, MAX_ORDER_BYTES, Order, OrderError};

fn malformed(body: &[u8]) -> DecodeError {
    match Order::parse(body) {
        Err(OrderError::Malformed(error)) => error,
        other => panic!("expected a decode error, got {other:?}"),
    }
}

fn wrong_type(path: &str) -> DecodeError {
    DecodeError::WrongType {
        path: path.to_owned(),
    }
}

fn missing(field: &str) -> DecodeError {
    DecodeError::MissingField {
        field: field.to_owned(),
    }
}

fn without(field: &'static str) -> Vec<u8> {
    body_with(|o| _ = o.as_object_mut().unwrap().remove(field))
}

fn set(path: &[&str], value: Value) -> Vec<u8> {
    body_with(|o| {
        let target = path.iter().fold(o, |node, key| match key.parse::<usize>() {
            Ok(index) => &mut node[index],
            Err(_) => &mut node[*key],
        });
        *target = value;
    })
}

#[test]
fn too_large_is_checked_first() {
    let body = vec![0xff; MAX_ORDER_BYTES + 1];
    let expected = DecodeError::TooLarge {
        size: MAX_ORDER_BYTES + 1,
        limit: MAX_ORDER_BYTES,
    };
    assert_eq!(malformed(&body), expected);
}

#[test]
fn exactly_the_limit_is_accepted() {
    let mut body = good().into_bytes();
    body.resize(MAX_ORDER_BYTES, b' ');
    assert!(Order::parse(&body).is_ok());
}

#[test]
fn not_utf8() {
    assert_eq!(malformed(b"{\"order_id\": \"\xff\"}"), DecodeError::NotUtf8);
    assert_eq!(malformed(b"\xef\xbb"), DecodeError::NotUtf8);
}

#[test]
fn not_json() {
    let good = good();
    let cases: [(&[u8], usize, usize); 7] = [
        (b"", 1, 0),
        (b" \n\t ", 2, 2),
        (b"{\"order_id\": }", 1, 14),
        (b"{\"order_id\": \"x\"", 1, 16),
        (b"hello", 1, 1),
        (b"\xef\xbb\xbf{}", 1, 1),
        (b"{\"order_id\": \"\\ud800\"}", 1, 21),
    ];
    for (body, line, column) in cases {
        assert_eq!(
            malformed(body),
            DecodeError::NotJson { line, column },
            "{}",
            String::from_utf8_lossy(body)
        );
    }
    let trailing = format!("{good} x");
    assert!(matches!(
        malformed(trailing.as_bytes()),
        DecodeError::NotJson { .. }
    ));
    let two = format!("{good}{good}");
    assert!(matches!(
        malformed(two.as_bytes()),
        DecodeError::NotJson { .. }
    ));
    let control = good.replace("SKU-COFFEE", "SKU-\u{1}");
    assert!(matches!(
        malformed(control.as_bytes()),
        DecodeError::NotJson { .. }
    ));
}

#[test]
fn not_an_object() {
    for body in [
        "[]",
        "42",
        "\"order\"",
        "null",
        " true",
        "1e400",
        "[[[[]]]]",
    ] {
        assert_eq!(
            malformed(body.as_bytes()),
            DecodeError::NotAnObject,
            "{body}"
        );
    }
}

#[test]
fn missing_fields_are_named() {
    for field in [
        "order_id",
        "customer_id",
        "currency",
        "items",
        "payment_token",
    ] {
        assert_eq!(malformed(&without(field)), missing(field));
    }
    let no_sku = body_with(|o| _ = o["items"][2].as_object_mut().unwrap().remove("sku"));
    assert_eq!(malformed(&no_sku), missing("items[2].sku"));
    assert_eq!(malformed(b"{}"), missing("order_id"));
}

#[test]
fn wrong_types_are_located() {
    let cases = [
        (
            set(&["items", "3", "quantity"], json!("2")),
            "items[3].quantity",
        ),
        (
            set(&["items", "0", "quantity"], Value::Null),
            "items[0].quantity",
        ),
        (
            set(&["items", "0", "unit_price_minor"], json!([1])),
            "items[0].unit_price_minor",
        ),
        (set(&["items", "0", "sku"], json!(7)), "items[0].sku"),
        (set(&["items"], json!({"sku": "S"})), "items"),
        (set(&["items", "1"], json!(["SKU-1", 2, 1999])), "items[1]"),
        (set(&["items", "1"], json!("SKU-1")), "items[1]"),
        (set(&["order_id"], json!(42)), "order_id"),
        (set(&["order_id"], json!(1e300)), "order_id"),
        (set(&["customer_id"], Value::Null), "customer_id"),
        (set(&["created_at"], json!(1_795_514_400)), "created_at"),
        (set(&["payment_token"], json!({"a": 1})), "payment_token"),
    ];
    for (body, path) in cases {
        assert_eq!(malformed(&body), wrong_type(path));
    }
    let beyond_f64 = good().replace("\"EUR\"", "1e400");
    assert_eq!(malformed(beyond_f64.as_bytes()), wrong_type("currency"));
}

#[test]
fn a_repeated_field_is_malformed() {
    let top = good().replacen('{', "{\"currency\":\"USD\",", 1);
    assert_eq!(malformed(top.as_bytes()), wrong_type("currency"));
    let item = good().replacen("{\"sku\"", "{\"quantity\":1,\"sku\"", 1);
    assert_eq!(malformed(item.as_bytes()), wrong_type("items[0].quantity"));
}

#[test]
fn malformed_wins_over_invalid() {
    // Decoding finishes before any rule is checked, so a bad currency
    // does not hide a missing field further on.
    let body = body_with(|o| {
        o["currency"] = json!("eur");
        _ = o.as_object_mut().unwrap().remove("payment_token");
    });
    assert_eq!(malformed(&body), missing("payment_token"));
}

#[test]
fn deep_nesting_is_refused_or_skipped_without_overflow() {
    let deep = |depth: usize| format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    // In a known field the wrong type is seen at the first bracket.
    let known = good().replace("\"EUR\"", &deep(30_000));
    assert_eq!(malformed(known.as_bytes()), wrong_type("currency"));
    let items = good().replacen("[{", &format!("[{},{{", deep(30_000)), 1);
    assert_eq!(malformed(items.as_bytes()), wrong_type("items[0]"));
    // serde_json skips unknown values without recursing.
    let unknown = good().replacen('{', &format!("{{\"x\":{},", deep(20_000)), 1);
    assert!(Order::parse(unknown.as_bytes()).is_ok());
    let unbalanced = good().replacen('{', &format!("{{\"x\":{},", "[".repeat(20_000)), 1);
    assert!(matches!(
        malformed(unbalanced.as_bytes()),
        DecodeError::NotJson { .. }
    ));
}

#[test]
fn a_number_beyond_f64_in_an_amount_does_not_hide_a_broken_body() {
    // serde_json stops at `1e400`; the rest of the body must still be read,
    // or a body that is not even JSON comes out as an invalid quantity.
    let huge = good().replacen("\"quantity\":2", "\"quantity\":1e400", 1);
    let end = huge.find("1e400").unwrap() + "1e400".len();
    let cut = &huge[..end];
    assert!(matches!(
        malformed(cut.as_bytes()),
        DecodeError::NotJson { .. }
    ));
    // Found by the fuzzer (tests/fuzz): garbage in the next item.
    let garbage = huge.replacen(",\"quantity\":1,", ",\"quant\"x\"or\":1,", 1);
    assert!(matches!(
        malformed(garbage.as_bytes()),
        DecodeError::NotJson { .. }
    ));
    let trailing = format!("{huge} x");
    assert!(matches!(
        malformed(trailing.as_bytes()),
        DecodeError::NotJson { .. }
    ));
    let no_token = huge.replacen("\"payment_token\"", "\"payment_tokn\"", 1);
    assert_eq!(malformed(no_token.as_bytes()), missing("payment_token"));
    let late_wrong_type = huge.replacen("\"2026-11-24T10:00:00Z\"", "7", 1);
    assert_eq!(
        malformed(late_wrong_type.as_bytes()),
        wrong_type("created_at")
    );
    let repeated = good().replacen(
        "\"unit_price_minor\":3495",
        "\"unit_price_minor\":-1e999,\"unit_price_minor\":1",
        1,
    );
    assert_eq!(
        malformed(repeated.as_bytes()),
        wrong_type("items[1].unit_price_minor")
    );
}
