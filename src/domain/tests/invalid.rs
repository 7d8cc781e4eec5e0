//! `Order::parse` on bodies that decode but break a rule: each must come
//! back as the right `ValidationError`, and no error text may carry the
//! payment token or the customer id.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use serde_json::{Value, json};

use super::{body_with, example, set};
use crate::domain::{Money, Order, OrderError, ValidationError};

fn invalid(body: &[u8]) -> ValidationError {
    match Order::parse(body) {
        Err(OrderError::Invalid(error)) => error,
        other => panic!("expected a validation error, got {other:?}"),
    }
}

fn set_item(item: usize, field: &'static str, value: Value) -> impl FnOnce(&mut Value) {
    move |order| order["items"][item][field] = value
}

fn items(list: Vec<(u64, u64)>) -> Value {
    list.into_iter()
        .map(|(q, p)| json!({"sku": "S", "quantity": q, "unit_price_minor": p}))
        .collect()
}

#[test]
fn every_validation_error() {
    use ValidationError as V;
    let many = Value::Array(vec![
        json!({"sku": "S", "quantity": 1, "unit_price_minor": 1});
        101
    ]);
    let cases: Vec<(Vec<u8>, ValidationError)> = vec![
        (body_with(set("order_id", json!("not-a-uuid"))), V::OrderId),
        (
            body_with(set("customer_id", json!("cus 42"))),
            V::CustomerId,
        ),
        (body_with(set("customer_id", json!(""))), V::CustomerId),
        (body_with(set("currency", json!("eur"))), V::Currency),
        (body_with(set("currency", json!("XYZ"))), V::Currency),
        (
            body_with(set("items", json!([]))),
            V::ItemCount { count: 0 },
        ),
        (body_with(set("items", many)), V::ItemCount { count: 101 }),
        (
            body_with(set_item(2, "quantity", json!(0))),
            V::Quantity { item: 2 },
        ),
        (
            body_with(set_item(2, "quantity", json!(10_001))),
            V::Quantity { item: 2 },
        ),
        (
            body_with(set_item(1, "quantity", json!(1.5))),
            V::Quantity { item: 1 },
        ),
        (
            body_with(set_item(1, "quantity", json!(-1))),
            V::Quantity { item: 1 },
        ),
        (
            body_with(set_item(1, "quantity", json!(1e30))),
            V::Quantity { item: 1 },
        ),
        (
            body_with(set_item(3, "unit_price_minor", json!(-1))),
            V::UnitPrice { item: 3 },
        ),
        (
            body_with(set_item(3, "unit_price_minor", json!(0.5))),
            V::UnitPrice { item: 3 },
        ),
        (
            body_with(set("items", items(vec![(1, 0), (5, 0)]))),
            V::TotalOutOfRange,
        ),
        (
            body_with(set("items", items(vec![(10_000, 100_000_001)]))),
            V::TotalOutOfRange,
        ),
        (
            body_with(set("items", items(vec![(2, u64::MAX / 2 + 1)]))),
            V::TotalOverflow,
        ),
        (body_with(set("payment_token", json!(""))), V::PaymentToken),
        (
            body_with(set("payment_token", json!("tok\u{1}"))),
            V::PaymentToken,
        ),
        (
            body_with(set("payment_token", json!("t".repeat(256)))),
            V::PaymentToken,
        ),
        (
            body_with(set("created_at", json!("yesterday"))),
            V::CreatedAt,
        ),
    ];
    for (body, expected) in cases {
        assert_eq!(
            invalid(&body),
            expected,
            "{}",
            String::from_utf8_lossy(&body)
        );
    }
}

#[test]
fn overflow_of_one_line_and_of_the_sum() {
    let line = body_with(set("items", items(vec![(10_000, u64::MAX - 7)])));
    assert_eq!(invalid(&line), ValidationError::TotalOverflow);
    let sum = body_with(set("items", items(vec![(1, u64::MAX), (1, 1)])));
    assert_eq!(invalid(&sum), ValidationError::TotalOverflow);
    // Fits u64 but not i64: still just out of range.
    let big = body_with(set("items", items(vec![(1, u64::MAX)])));
    assert_eq!(invalid(&big), ValidationError::TotalOutOfRange);
}

#[test]
fn numbers_beyond_f64_in_amounts_are_invalid_not_malformed() {
    let text = String::from_utf8(example().to_json().unwrap()).unwrap();
    let quantity = text.replacen("\"quantity\":2", "\"quantity\":1e400", 1);
    assert_eq!(
        invalid(quantity.as_bytes()),
        ValidationError::Quantity { item: 0 }
    );
    let price = text.replacen(
        "\"unit_price_minor\":3495",
        "\"unit_price_minor\":-1e999",
        1,
    );
    assert_eq!(
        invalid(price.as_bytes()),
        ValidationError::UnitPrice { item: 1 }
    );
    let huge_int = text.replacen(":3495", ":99999999999999999999999", 1);
    assert_eq!(
        invalid(huge_int.as_bytes()),
        ValidationError::UnitPrice { item: 1 }
    );
}

#[test]
fn total_bounds_are_inclusive_of_the_cap() {
    let cap = body_with(set("items", items(vec![(10_000, 100_000_000)])));
    assert_eq!(
        Order::parse(&cap).unwrap().total().minor(),
        Money::MAX_MINOR
    );
    let one = body_with(set("items", items(vec![(1, 0), (1, 1)])));
    assert_eq!(Order::parse(&one).unwrap().total().minor(), 1);
}

#[test]
fn first_broken_rule_in_contract_order_wins() {
    let body = body_with(|o| {
        o["currency"] = json!("eur");
        o["payment_token"] = json!("");
    });
    assert_eq!(invalid(&body), ValidationError::Currency);
}

#[test]
fn error_text_never_echoes_token_or_customer() {
    const TOKEN: &str = "tok_SECRET_4242";
    const CUSTOMER: &str = "cus_PRIVATE_77";
    type Edit = Box<dyn FnOnce(&mut Value)>;
    let with_secrets = |edit: Edit| {
        body_with(|o| {
            o["payment_token"] = json!(TOKEN);
            o["customer_id"] = json!(CUSTOMER);
            edit(o);
        })
    };
    let edits: Vec<Edit> = vec![
        Box::new(set("order_id", json!(TOKEN))),
        Box::new(set("currency", json!(CUSTOMER))),
        Box::new(set("created_at", json!(TOKEN))),
        Box::new(set("items", json!(TOKEN))),
        Box::new(set_item(0, "quantity", json!(TOKEN))),
        Box::new(set_item(0, "sku", json!({ TOKEN: CUSTOMER }))),
        Box::new(set("payment_token", json!(format!("{TOKEN}\u{1}")))),
        Box::new(set("customer_id", json!(format!("{CUSTOMER}!")))),
        Box::new(set("payment_token", json!([TOKEN]))),
        Box::new(set("customer_id", json!(12))),
        Box::new(|o| _ = o.as_object_mut().unwrap().remove("order_id")),
    ];
    for edit in edits {
        let body = with_secrets(edit);
        let text = Order::parse(&body).unwrap_err().to_string();
        assert!(!text.contains(TOKEN) && !text.contains(CUSTOMER), "{text}");
    }
    // Syntax errors near the secrets, and a key spelled like a secret.
    let body = String::from_utf8(with_secrets(Box::new(|_| {}))).unwrap();
    for broken in [
        body.replace(TOKEN, &format!("{TOKEN}\" x")),
        body.replace("\"customer_id\"", &format!("\"{TOKEN}\"")),
        format!("{body} {TOKEN}"),
    ] {
        let text = Order::parse(broken.as_bytes()).unwrap_err().to_string();
        assert!(!text.contains(TOKEN) && !text.contains(CUSTOMER), "{text}");
    }
}

#[test]
fn a_number_beyond_f64_is_reported_in_contract_order() {
    let text = String::from_utf8(example().to_json().unwrap()).unwrap();
    // The third item's quantity is beyond f64.
    let huge = text.replacen("\"quantity\":3", "\"quantity\":1e400", 1);
    assert_eq!(
        invalid(huge.as_bytes()),
        ValidationError::Quantity { item: 2 }
    );
    // Rules on the fields before the items come first...
    let bad_id = huge.replacen(super::ORDER_ID, "not-a-uuid", 1);
    assert_eq!(invalid(bad_id.as_bytes()), ValidationError::OrderId);
    // ... and so do earlier items.
    let zero_first = huge.replacen("\"quantity\":2", "\"quantity\":0", 1);
    assert_eq!(
        invalid(zero_first.as_bytes()),
        ValidationError::Quantity { item: 0 }
    );
    let price = text
        .replacen(":2753", ":1e999", 1)
        .replacen(":3495", ":-1", 1);
    assert_eq!(
        invalid(price.as_bytes()),
        ValidationError::UnitPrice { item: 1 }
    );
}
