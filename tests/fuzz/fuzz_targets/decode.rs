//! Fuzzes `Order::parse`, the decoder every delivery goes through, and
//! checks what it answers, not only that it answers:
//!
//! 1. It agrees with the reference model of the contract in `src/lib.rs`:
//!    the same valid order, the same first broken rule, or malformed when
//!    the model says the body has no order shape.
//! 2. Kinds follow the input: over 64 KiB is `TooLarge`, otherwise non-UTF-8
//!    is `NotUtf8`, and a body that is not JSON at all is malformed.
//! 3. A valid order keeps every rule when read back through the public
//!    accessors, and writing it out as an `OrderMessage` and parsing that
//!    gives the same order.
//! 4. An error's text, and the dead-letter reason made of it, is short
//!    printable ASCII, names only known fields, and never carries the
//!    payment token or customer id of the body.
//!
//! Any broken invariant panics, which libFuzzer reports as a crash.

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use order_processor::disposition::{Disposition, ErrorKind, Intake};
use order_processor::retry::RetryPolicy;
use order_processor::domain::{
    Currency, CustomerId, DecodeError, MAX_ORDER_BYTES, Money, Order, OrderError, OrderId,
    OrderMessage, OrderMessageItem, PaymentToken, Quantity, ValidationError,
};
use order_processor::usecase::ProcessError;
use order_processor_fuzz::{Broken, Expected, Json, ModelOrder, expect, top_level_strings};
use serde::de::IgnoredAny;
use time::format_description::well_known::Rfc3339;

fuzz_target!(|body: &[u8]| check(body));

fn check(body: &[u8]) {
    let result = Order::parse(body);
    let (expected, json) = expect(body, &|code| Currency::parse(code).is_ok());

    kind_follows_input(body, &result);
    agrees_with_model(&expected, &result);
    match &result {
        Ok(order) => {
            keeps_every_rule(order);
            round_trips(order);
        }
        Err(error) => error_is_safe(body, error, json.as_ref()),
    }
}

/// Size first, then UTF-8, then JSON syntax, whatever else is wrong.
fn kind_follows_input(body: &[u8], result: &Result<Order, OrderError>) {
    let too_large = DecodeError::TooLarge {
        size: body.len(),
        limit: MAX_ORDER_BYTES,
    };
    if body.len() > MAX_ORDER_BYTES {
        assert_eq!(result, &Err(too_large.into()), "a body over 64 KiB");
        return;
    }
    let Ok(text) = std::str::from_utf8(body) else {
        assert_eq!(
            result,
            &Err(DecodeError::NotUtf8.into()),
            "a non-UTF-8 body"
        );
        return;
    };
    assert!(
        !matches!(
            result,
            Err(OrderError::Malformed(
                DecodeError::TooLarge { .. } | DecodeError::NotUtf8
            ))
        ),
        "{result:?} for a UTF-8 body within the limit"
    );
    // serde_json's own syntax check, which skips without depth limit and
    // does not range-check numbers (both are JSON): if it fails, the body
    // is not JSON, and whatever the decoder met first, it is malformed.
    if serde_json::from_str::<IgnoredAny>(text).is_err() {
        assert!(
            matches!(result, Err(OrderError::Malformed(_))),
            "not JSON, but {result:?}"
        );
    }
}

fn broken_as_error(broken: Broken) -> ValidationError {
    match broken {
        Broken::OrderId => ValidationError::OrderId,
        Broken::CustomerId => ValidationError::CustomerId,
        Broken::Currency => ValidationError::Currency,
        Broken::ItemCount(count) => ValidationError::ItemCount { count },
        Broken::Quantity(item) => ValidationError::Quantity { item },
        Broken::UnitPrice(item) => ValidationError::UnitPrice { item },
        Broken::TotalOverflow => ValidationError::TotalOverflow,
        Broken::TotalOutOfRange => ValidationError::TotalOutOfRange,
        Broken::PaymentToken => ValidationError::PaymentToken,
        Broken::CreatedAt => ValidationError::CreatedAt,
    }
}

fn agrees_with_model(expected: &Expected, result: &Result<Order, OrderError>) {
    use DecodeError as D;
    let agrees = match (expected, result) {
        (Expected::Unknown, _) => true,
        (Expected::TooLarge, Err(OrderError::Malformed(D::TooLarge { .. })))
        | (Expected::NotUtf8, Err(OrderError::Malformed(D::NotUtf8)))
        | (Expected::NotAnObject, Err(OrderError::Malformed(D::NotAnObject))) => true,
        // Which shape error is reported first depends on where the decoder
        // stops; the kind does not.
        (
            Expected::NotJson | Expected::Malformed,
            Err(OrderError::Malformed(
                D::NotJson { .. } | D::MissingField { .. } | D::WrongType { .. },
            )),
        ) => true,
        (Expected::Invalid(broken), Err(OrderError::Invalid(error))) => {
            *error == broken_as_error(*broken)
        }
        (Expected::Valid(model), Ok(order)) => same_order(model, order),
        _ => false,
    };
    assert!(
        agrees,
        "the decoder and the contract model disagree\n  model:   {expected:?}\n  decoder: {result:?}"
    );
}

fn same_order(model: &ModelOrder, order: &Order) -> bool {
    let items: Vec<(String, u32, u64)> = order
        .items()
        .iter()
        .map(|item| {
            (
                item.sku().to_owned(),
                item.quantity(),
                item.unit_price_minor(),
            )
        })
        .collect();
    order.id().to_string() == model.order_id
        && order.customer_id().as_str() == model.customer_id
        && order.currency().as_str() == model.currency
        && items == model.items
        && u64::try_from(order.total().minor()) == Ok(model.total_minor)
        && order.payment_token().expose() == model.payment_token
        && order.created_at() == model.created_at
        && order.created_at().map(|at| at.offset()) == model.created_at.map(|at| at.offset())
}

/// Every rule of CONTRACT.md §3, read back through the public API only.
fn keeps_every_rule(order: &Order) {
    let id = order.id().to_string();
    assert_eq!(id.len(), 36, "{id}");
    assert!(
        id.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_digit() || (b'a'..=b'f').contains(&b),
        }),
        "{id}"
    );
    assert_eq!(OrderId::parse(&id), Ok(order.id()));

    let customer = order.customer_id().as_str();
    assert!((1..=CustomerId::MAX_LEN).contains(&customer.len()));
    assert!(
        customer
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    );

    let code = order.currency().as_str();
    assert!(code.len() == 3 && code.bytes().all(|b| b.is_ascii_uppercase()));
    assert_eq!(Currency::parse(code), Ok(order.currency()));
    assert_eq!(order.total().currency(), order.currency());

    let items = order.items();
    assert!((1..=Order::MAX_ITEMS).contains(&items.len()));
    assert_eq!(Order::MAX_ITEMS, 100);
    let mut sum: u128 = 0;
    for item in items {
        assert!((Quantity::MIN..=Quantity::MAX).contains(&item.quantity()));
        assert_eq!((Quantity::MIN, Quantity::MAX), (1, 10_000));
        sum += u128::from(item.quantity()) * u128::from(item.unit_price_minor());
    }
    let total = order.total().minor();
    assert!(0 < total && total <= Money::MAX_MINOR, "total {total}");
    assert_eq!(Money::MAX_MINOR, 1_000_000_000_000);
    assert_eq!(
        u128::try_from(total).ok(),
        Some(sum),
        "total is not the sum of the lines"
    );

    let token = order.payment_token().expose();
    assert!((1..=PaymentToken::MAX_LEN).contains(&token.len()));
    assert!(token.bytes().all(|b| (0x20..=0x7e).contains(&b)));

    if let Some(at) = order.created_at() {
        assert!((0..=9999).contains(&at.year()), "{at}");
    }
}

/// The order written out as a message (the same type the `publish` command
/// sends) parses back to the same order.
fn round_trips(order: &Order) {
    let message = OrderMessage {
        order_id: order.id().to_string(),
        customer_id: order.customer_id().as_str().to_owned(),
        currency: order.currency().as_str().to_owned(),
        items: order
            .items()
            .iter()
            .map(|item| OrderMessageItem {
                sku: item.sku().to_owned(),
                quantity: i64::from(item.quantity()),
                // At most the total, hence at most 10^12.
                unit_price_minor: i64::try_from(item.unit_price_minor())
                    .expect("a unit price of a valid order fits i64"),
            })
            .collect(),
        payment_token: order.payment_token().expose().to_owned(),
        created_at: order.created_at().map(|at| {
            at.format(&Rfc3339)
                .expect("a time read as RFC 3339 can be written as RFC 3339")
        }),
    };
    let body = message.to_json().expect("an OrderMessage serializes");
    // Writing drops unknown fields and whitespace and never escapes more
    // than the input had to, but a leap second is written back as
    // 23:59:59.999999999, ten bytes longer: only then can it not fit.
    if body.len() > MAX_ORDER_BYTES {
        assert!(
            order
                .created_at()
                .is_some_and(|at| at.nanosecond() == 999_999_999),
            "{} bytes written from a valid order",
            body.len()
        );
        return;
    }
    match Order::parse(&body) {
        Ok(again) => {
            assert_eq!(&again, order, "the order changed on the way round");
            assert_eq!(
                again.created_at().map(|at| at.offset()),
                order.created_at().map(|at| at.offset())
            );
        }
        Err(error) => panic!(
            "a valid order written out does not parse back: {error}\n{}",
            String::from_utf8_lossy(&body)
        ),
    }
}

/// The names a path in an error may use.
const TOP_FIELDS: [&str; 6] = [
    "order_id",
    "customer_id",
    "currency",
    "items",
    "payment_token",
    "created_at",
];
const ITEM_FIELDS: [&str; 3] = ["sku", "quantity", "unit_price_minor"];

/// `order_id`, `items`, `items[3]` or `items[3].quantity`, with N < the
/// longest possible array of a 64 KiB body.
fn is_known_path(path: &str) -> bool {
    if TOP_FIELDS.contains(&path) {
        return true;
    }
    let Some(rest) = path.strip_prefix("items[") else {
        return false;
    };
    let Some((index, rest)) = rest.split_once(']') else {
        return false;
    };
    let index_ok = !index.is_empty()
        && index.bytes().all(|b| b.is_ascii_digit())
        && index.parse::<usize>().is_ok_and(|n| n < MAX_ORDER_BYTES);
    index_ok
        && (rest.is_empty()
            || rest
                .strip_prefix('.')
                .is_some_and(|field| ITEM_FIELDS.contains(&field)))
}

/// Every byte an error text can hold: those of each message with its
/// placeholders filled by digits and known field names.
fn reason_alphabet() -> &'static [bool; 256] {
    static ALPHABET: OnceLock<[bool; 256]> = OnceLock::new();
    ALPHABET.get_or_init(|| {
        let path = "order_id.customer_id.currency.items[0].payment_token.created_at.sku.quantity.unit_price_minor";
        let decode = [
            DecodeError::TooLarge { size: 0, limit: 0 },
            DecodeError::NotUtf8,
            DecodeError::NotJson { line: 0, column: 0 },
            DecodeError::NotAnObject,
            DecodeError::MissingField {
                field: path.to_owned(),
            },
            DecodeError::WrongType {
                path: path.to_owned(),
            },
        ];
        let invalid = [
            ValidationError::OrderId,
            ValidationError::CustomerId,
            ValidationError::Currency,
            ValidationError::ItemCount { count: 0 },
            ValidationError::Quantity { item: 0 },
            ValidationError::UnitPrice { item: 0 },
            ValidationError::TotalOverflow,
            ValidationError::TotalOutOfRange,
            ValidationError::PaymentToken,
            ValidationError::CreatedAt,
        ];
        let mut alphabet = [false; 256];
        let errors = decode
            .into_iter()
            .map(ProcessError::Malformed)
            .chain(invalid.into_iter().map(ProcessError::Invalid));
        for error in errors {
            for b in error.to_string().bytes() {
                alphabet[usize::from(b)] = true;
            }
        }
        for b in b'0'..=b'9' {
            alphabet[usize::from(b)] = true;
        }
        alphabet
    })
}

fn error_is_safe(body: &[u8], error: &OrderError, json: Option<&Json>) {
    // The payload of each variant: numbers that follow from the body and
    // paths made of known names. Display adds only fixed text to these.
    match error {
        OrderError::Malformed(DecodeError::TooLarge { size, limit }) => {
            assert_eq!((*size, *limit), (body.len(), MAX_ORDER_BYTES));
        }
        OrderError::Malformed(DecodeError::NotJson { line, column }) => {
            let lines = body.iter().filter(|b| **b == b'\n').count() + 1;
            assert!((1..=lines).contains(line), "line {line} of {lines}");
            assert!(*column <= body.len(), "column {column}");
        }
        OrderError::Malformed(DecodeError::MissingField { field: path })
        | OrderError::Malformed(DecodeError::WrongType { path }) => {
            assert!(is_known_path(path), "path {path:?}");
        }
        OrderError::Invalid(ValidationError::ItemCount { count }) => {
            assert!(!(1..=Order::MAX_ITEMS).contains(count), "{count} items");
        }
        OrderError::Invalid(
            ValidationError::Quantity { item } | ValidationError::UnitPrice { item },
        ) => {
            assert!(*item < Order::MAX_ITEMS, "item {item}");
        }
        OrderError::Malformed(DecodeError::NotUtf8 | DecodeError::NotAnObject)
        | OrderError::Invalid(
            ValidationError::OrderId
            | ValidationError::CustomerId
            | ValidationError::Currency
            | ValidationError::TotalOverflow
            | ValidationError::TotalOutOfRange
            | ValidationError::PaymentToken
            | ValidationError::CreatedAt,
        ) => {}
    }

    let text = error.to_string();
    let expected_kind = match error {
        OrderError::Malformed(_) => ErrorKind::Malformed,
        OrderError::Invalid(_) => ErrorKind::Invalid,
    };
    let policy = RetryPolicy {
        max_attempts: 5,
        base_delay: std::time::Duration::from_millis(1000),
        max_delay: std::time::Duration::from_millis(60_000),
    };
    let result = Err(ProcessError::from(error.clone()));
    let reason = match Disposition::decide(&result, 1, &policy, Intake::Open) {
        Disposition::DeadLetter { kind, reason } => {
            assert_eq!(kind, expected_kind, "{error:?}");
            reason
        }
        other => panic!("{error:?} is not dead-lettered at once: {other:?}"),
    };
    assert!(reason.ends_with(&text), "{reason:?} does not give {text:?}");

    let alphabet = reason_alphabet();
    for (what, limit) in [(&text, 120), (&reason, 160)] {
        assert!(
            !what.is_empty() && what.len() <= limit,
            "{} bytes: {what:?}",
            what.len()
        );
        assert!(
            what.bytes().all(|b| (0x20..=0x7e).contains(&b)),
            "not one line of printable ASCII: {what:?}"
        );
        assert!(
            what.bytes().all(|b| alphabet[usize::from(b)]),
            "a byte no message has: {what:?}"
        );
    }

    // The secrets of the body. One made only of bytes that messages use
    // ("cus_42") could occur by chance and is proven absent by the checks
    // above instead; any other must not occur at all.
    let Some(json) = json else { return };
    for key in ["payment_token", "customer_id"] {
        for secret in top_level_strings(json, key) {
            if secret.bytes().any(|b| !alphabet[usize::from(b)]) {
                assert!(
                    !reason.contains(secret),
                    "the {key} of the body is in the reason: {reason:?}"
                );
            }
        }
    }
}
