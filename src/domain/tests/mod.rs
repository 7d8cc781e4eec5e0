//! End-to-end unit tests of `Order::parse`, kept out of `order.rs` and
//! `wire.rs` so those files stay about the code. The helpers build bodies by
//! editing the example as a `serde_json::Value`, because tests need shapes
//! that `OrderMessage` cannot express (a number for `order_id`, a missing
//! field).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod invalid;
mod malformed;

use serde_json::{Value, json};

use crate::domain::{Order, OrderMessage};

const ORDER_ID: &str = "5f0c4c2e-8a51-4f55-9d1e-3e2b9f3f8a10";

fn example() -> OrderMessage {
    OrderMessage::example(uuid::Uuid::parse_str(ORDER_ID).unwrap())
}

/// The example body as text.
fn good() -> String {
    String::from_utf8(example().to_json().unwrap()).unwrap()
}

/// The example body after `edit` has changed its JSON tree.
fn body_with(edit: impl FnOnce(&mut Value)) -> Vec<u8> {
    let mut value = serde_json::to_value(example()).unwrap();
    edit(&mut value);
    serde_json::to_vec(&value).unwrap()
}

fn set(field: &'static str, value: Value) -> impl FnOnce(&mut Value) {
    move |order| order[field] = value
}

#[test]
fn parses_the_example() {
    let message = example();
    let body = message.to_json().unwrap();
    assert!((400..=600).contains(&body.len()), "{} bytes", body.len());
    let order = Order::parse(&body).unwrap();
    assert_eq!(order.id().to_string(), ORDER_ID);
    assert_eq!(order.customer_id().as_str(), message.customer_id);
    assert_eq!(order.currency().as_str(), "EUR");
    assert_eq!(order.total().minor(), 11_293);
    assert_eq!(order.total().currency(), order.currency());
    assert_eq!(order.items().len(), 4);
    assert_eq!(order.items()[0].sku(), "SKU-COFFEE-BEANS-ARABICA-1KG");
    assert_eq!(order.items()[0].quantity(), 2);
    assert_eq!(order.items()[0].unit_price_minor(), 1999);
    assert_eq!(order.payment_token().expose(), message.payment_token);
    assert_eq!(order.created_at().unwrap().unix_timestamp(), 1_795_514_400);
}

#[test]
fn contract_sample_parses() {
    let body = br#"{
      "order_id": "5f0c4c2e-8a51-4f55-9d1e-3e2b9f3f8a10",
      "customer_id": "cus_42",
      "currency": "EUR",
      "items": [{ "sku": "SKU-1", "quantity": 2, "unit_price_minor": 1999 }],
      "payment_token": "tok_visa",
      "created_at": "2026-11-24T10:00:00Z"
    }"#;
    assert_eq!(Order::parse(body).unwrap().total().minor(), 3998);
}

#[test]
fn created_at_absent_or_null_is_none() {
    let absent = body_with(|o| _ = o.as_object_mut().unwrap().remove("created_at"));
    let null = body_with(set("created_at", Value::Null));
    for body in [absent, null] {
        assert_eq!(Order::parse(&body).unwrap().created_at(), None);
    }
}

#[test]
fn unknown_fields_are_ignored() {
    let body = body_with(|o| {
        o["extra"] = json!({"nested": [1, 2.5, "x", null]});
        o["items"][0]["colour"] = json!("red");
    });
    assert!(Order::parse(&body).is_ok());
}

#[test]
fn escaped_strings_are_unescaped() {
    let body = body_with(|o| {
        o["items"][0]["sku"] = json!("caf\u{e9} \"x\"\n");
        o["customer_id"] = json!("cus_42");
    });
    // Also spell a field with a JSON escape that serde_json will not emit.
    let text = String::from_utf8(body)
        .unwrap()
        .replace("cus_42", "cus\\u005f42");
    let order = Order::parse(text.as_bytes()).unwrap();
    assert_eq!(order.items()[0].sku(), "caf\u{e9} \"x\"\n");
    assert_eq!(order.customer_id().as_str(), "cus_42");
}
