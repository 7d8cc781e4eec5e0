//! Property and example tests of order decoding, through the public API only
//! (`order_processor::domain`), as the consumer loop sees it.
//!
//! The properties are the promises the daemon relies on: every order the
//! `OrderMessage` builder can express within the contract parses back to the
//! same values; no input, however broken, panics or escapes the two error
//! classes; anything over 64 KiB is refused by size alone; and no error text,
//! which leaves the process in a dead-letter header, carries the payment
//! token or the customer id.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::arithmetic_side_effects
)]

use order_processor::domain::{
    Currency, DecodeError, MAX_ORDER_BYTES, Order, OrderError, OrderMessage, OrderMessageItem,
    ValidationError,
};
use proptest::prelude::*;
use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, UtcOffset};

/// Every string the contract allows as `created_at`, from the years RFC 3339
/// can spell (0000 to 9999), with any whole-minute offset and nanoseconds.
fn created_at() -> impl Strategy<Value = String> {
    (
        -62_167_219_200i64..=253_402_300_799,
        0u32..1_000_000_000,
        -(23 * 60 + 59)..=(23 * 60 + 59i32),
    )
        .prop_filter_map("not representable in RFC 3339", |(secs, nanos, minutes)| {
            let offset = UtcOffset::from_whole_seconds(minutes * 60).ok()?;
            let at = OffsetDateTime::from_unix_timestamp(secs)
                .ok()?
                .replace_nanosecond(nanos)
                .ok()?
                .to_offset(offset);
            at.format(&Rfc3339).ok()
        })
}

fn item() -> impl Strategy<Value = OrderMessageItem> {
    // A unit price up to 10^6 keeps 100 items of 10 000 within the 10^12 cap.
    (any::<String>(), 1i64..=10_000, 0i64..=1_000_000).prop_map(
        |(sku, quantity, unit_price_minor)| OrderMessageItem {
            sku,
            quantity,
            unit_price_minor,
        },
    )
}

/// Any order that is valid under the contract.
fn valid_message() -> impl Strategy<Value = OrderMessage> {
    let currencies: Vec<String> = Currency::all().map(|c| c.as_str().to_owned()).collect();
    (
        any::<u128>(),
        "[A-Za-z0-9_-]{1,64}",
        proptest::sample::select(currencies),
        proptest::collection::vec(item(), 1..=100),
        "[ -~]{1,255}",
        proptest::option::of(created_at()),
    )
        .prop_map(
            |(id, customer_id, currency, mut items, payment_token, created_at)| {
                // The total must be positive: make sure one line costs something.
                if items.iter().all(|item| item.unit_price_minor == 0) {
                    items[0].unit_price_minor = 1;
                }
                OrderMessage {
                    order_id: uuid::Uuid::from_u128(id).hyphenated().to_string(),
                    customer_id,
                    currency,
                    items,
                    payment_token,
                    created_at,
                }
            },
        )
}

/// A valid order whose token and customer id are long and distinctive, so
/// that finding them in an error text cannot be a coincidence.
fn message_with_secrets() -> impl Strategy<Value = OrderMessage> {
    (
        valid_message(),
        "tok_[A-Za-z0-9]{12,40}",
        "cus_[A-Za-z0-9]{12,40}",
    )
        .prop_map(|(mut message, token, customer)| {
            message.payment_token = token;
            message.customer_id = customer;
            message
        })
}

/// Ways to break a body that put the secrets where errors are reported.
#[derive(Debug, Clone)]
enum Breakage {
    /// Replace the value of a field with a JSON fragment.
    Field(&'static str, String),
    /// Cut the body short.
    Truncate(usize),
    /// Overwrite one byte.
    Flip(usize, u8),
    /// Append bytes after the object.
    Trail(Vec<u8>),
}

fn breakage(token: String, customer: String) -> impl Strategy<Value = Breakage> {
    let fields = prop_oneof![
        Just("order_id"),
        Just("customer_id"),
        Just("currency"),
        Just("items"),
        Just("payment_token"),
        Just("created_at"),
    ];
    let fragments = prop_oneof![
        Just(format!("\"{token}\"")),
        Just(format!("\"{customer}\"")),
        Just(format!("\"{token}\\u0001\"")),
        Just(format!("\"{customer}!\"")),
        Just(format!("[\"{token}\"]")),
        Just(format!("{{\"{token}\": \"{customer}\"}}")),
        Just(format!(
            "[{{\"sku\": \"{token}\", \"quantity\": \"{customer}\"}}]"
        )),
        Just(format!("\"{token}")),
    ];
    prop_oneof![
        (fields, fragments).prop_map(|(field, fragment)| Breakage::Field(field, fragment)),
        any::<usize>().prop_map(Breakage::Truncate),
        (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Breakage::Flip(at, byte)),
        proptest::collection::vec(any::<u8>(), 1..16).prop_map(Breakage::Trail),
    ]
}

fn apply(message: &OrderMessage, breakage: &Breakage) -> Vec<u8> {
    let body = message.to_json().unwrap();
    match breakage {
        Breakage::Field(field, fragment) => {
            let mut value: serde_json::Value = serde_json::from_slice(&body).unwrap();
            value[*field] = serde_json::Value::Null;
            let text = serde_json::to_string(&value).unwrap();
            text.replacen(
                &format!("\"{field}\":null"),
                &format!("\"{field}\":{fragment}"),
                1,
            )
            .into_bytes()
        }
        Breakage::Truncate(at) => body[..at % body.len()].to_vec(),
        Breakage::Flip(at, byte) => {
            let mut body = body;
            let len = body.len();
            body[at % len] = *byte;
            body
        }
        Breakage::Trail(tail) => [body, tail.clone()].concat(),
    }
}

fn assert_no_secret(error: &OrderError, message: &OrderMessage) {
    let text = error.to_string();
    assert!(!text.contains(&message.payment_token), "token in {text:?}");
    assert!(
        !text.contains(&message.customer_id),
        "customer id in {text:?}"
    );
}

proptest! {
    #[test]
    fn valid_orders_round_trip(message in valid_message()) {
        let order = Order::parse(&message.to_json().unwrap()).unwrap();
        prop_assert_eq!(order.id().to_string(), message.order_id.clone());
        prop_assert_eq!(order.customer_id().as_str(), message.customer_id.as_str());
        prop_assert_eq!(order.currency().as_str(), message.currency.as_str());
        prop_assert_eq!(order.payment_token().expose(), message.payment_token.as_str());
        prop_assert_eq!(order.items().len(), message.items.len());
        for (parsed, sent) in order.items().iter().zip(&message.items) {
            prop_assert_eq!(parsed.sku(), sent.sku.as_str());
            prop_assert_eq!(i64::from(parsed.quantity()), sent.quantity);
            prop_assert_eq!(i64::try_from(parsed.unit_price_minor()).unwrap(), sent.unit_price_minor);
        }
        let expected: i64 = message.items.iter().map(|i| i.quantity * i.unit_price_minor).sum();
        prop_assert_eq!(order.total().minor(), expected);
        prop_assert_eq!(order.total().currency(), order.currency());
        let sent_at = message
            .created_at
            .as_deref()
            .map(|text| OffsetDateTime::parse(text, &Rfc3339).unwrap());
        prop_assert_eq!(order.created_at(), sent_at);
    }

    #[test]
    fn arbitrary_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..2048)) {
        match Order::parse(&body) {
            Ok(_) => {}
            Err(error @ (OrderError::Malformed(_) | OrderError::Invalid(_))) => {
                prop_assert!(!error.to_string().is_empty());
            }
        }
    }

    #[test]
    fn arbitrary_json_text_never_panics(body in r#"[\[\]{}":,0-9a-z_.eE+\- \\]{0,256}"#) {
        // Denser in JSON punctuation than random bytes, so it gets further.
        let _ = Order::parse(body.as_bytes());
    }

    #[test]
    fn oversized_bodies_are_refused_by_size(
        extra in 1usize..4096,
        fill in any::<u8>(),
        valid_start in any::<bool>(),
    ) {
        let size = MAX_ORDER_BYTES + extra;
        let mut body = if valid_start {
            OrderMessage::example(uuid::Uuid::nil()).to_json().unwrap()
        } else {
            Vec::new()
        };
        body.resize(size, fill);
        let expected = OrderError::Malformed(DecodeError::TooLarge { size, limit: MAX_ORDER_BYTES });
        prop_assert_eq!(Order::parse(&body).unwrap_err(), expected);
    }

    #[test]
    fn error_text_never_carries_the_secrets(
        (message, breakage) in message_with_secrets().prop_flat_map(|message| {
            let breakage = breakage(message.payment_token.clone(), message.customer_id.clone());
            (Just(message), breakage)
        })
    ) {
        let body = apply(&message, &breakage);
        match Order::parse(&body) {
            Err(error) => assert_no_secret(&error, &message),
            // Some breakages still leave a valid order (a flipped byte in a
            // SKU); the token must then stay out of its `Debug`, unless the
            // breakage copied it into a field that `Debug` shows.
            Ok(order) => {
                let token = order.payment_token().expose();
                let shown_elsewhere = order.customer_id().as_str().contains(token)
                    || order.items().iter().any(|item| item.sku().contains(token));
                let debug = format!("{order:?}");
                prop_assert!(shown_elsewhere || !debug.contains(token));
            }
        }
    }
}

#[test]
fn the_contract_sample_parses() {
    let body = br#"{
      "order_id": "5f0c4c2e-8a51-4f55-9d1e-3e2b9f3f8a10",
      "customer_id": "cus_42",
      "currency": "EUR",
      "items": [{ "sku": "SKU-1", "quantity": 2, "unit_price_minor": 1999 }],
      "payment_token": "tok_visa",
      "created_at": "2026-11-24T10:00:00Z"
    }"#;
    let order = Order::parse(body).unwrap();
    assert_eq!(
        order.id().to_string(),
        "5f0c4c2e-8a51-4f55-9d1e-3e2b9f3f8a10"
    );
    assert_eq!(order.total().minor(), 3998);
    assert_eq!(order.currency().to_string(), "EUR");
    assert_eq!(
        format!("{:?}", order.payment_token()),
        "PaymentToken([redacted])"
    );
}

#[test]
fn the_example_is_a_typical_valid_order() {
    let id = uuid::Uuid::new_v4();
    let body = OrderMessage::example(id).to_json().unwrap();
    assert!((400..=600).contains(&body.len()), "{} bytes", body.len());
    let order = Order::parse(&body).unwrap();
    assert_eq!(order.id().as_uuid(), id);
    assert_eq!(order.items().len(), 4);
}

#[test]
fn the_two_classes_are_kept_apart() {
    let cases: [(&str, bool); 8] = [
        (r#"{"quantity": "2"}"#, true),
        (r#"{"order_id": 42}"#, true),
        ("[]", true),
        ("", true),
        (r#"{"order_id": "x"} trailing"#, true),
        ("not-a-uuid", false),
        ("eur", false),
        ("1.5", false),
    ];
    let base =
        String::from_utf8(OrderMessage::example(uuid::Uuid::nil()).to_json().unwrap()).unwrap();
    for (input, malformed) in cases {
        let body = match input {
            "not-a-uuid" => base.replace(&uuid::Uuid::nil().to_string(), input),
            "eur" => base.replace("\"EUR\"", "\"eur\""),
            "1.5" => base.replacen("\"quantity\":2", "\"quantity\":1.5", 1),
            other => other.to_owned(),
        };
        let error = Order::parse(body.as_bytes()).unwrap_err();
        assert_eq!(
            matches!(error, OrderError::Malformed(_)),
            malformed,
            "{input}: {error}"
        );
    }
    let error = Order::parse(base.replace("\"EUR\"", "\"eur\"").as_bytes()).unwrap_err();
    assert_eq!(error, OrderError::Invalid(ValidationError::Currency));
}
