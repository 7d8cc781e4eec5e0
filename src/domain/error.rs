//! Why an order message was rejected, split into the two classes that lead
//! to different dead-letter kinds: [`DecodeError`] (the body cannot be read
//! as an order at all) and [`ValidationError`] (it reads as an order, but a
//! value breaks a business rule).
//!
//! The `Display` text of every error leaves the process in the `x-error-reason`
//! dead-letter header, so it is a fixed, short ASCII sentence. It may name a
//! field path, which is built only from our own field names and array indices,
//! but never a value taken from the message: no token, no customer id and no
//! raw serde message (serde quotes the offending value in its messages).

/// Any reason [`Order::parse`](super::Order::parse) can fail.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum OrderError {
    /// The body cannot be decoded into the shape of an order.
    #[error(transparent)]
    Malformed(#[from] DecodeError),
    /// The body has the shape of an order, but a value breaks a rule.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
}

/// The body cannot be decoded into the shape of an order.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The body is larger than [`MAX_ORDER_BYTES`](super::MAX_ORDER_BYTES).
    #[error("message body of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    /// The body is not UTF-8.
    #[error("message body is not valid UTF-8")]
    NotUtf8,
    /// The body is not one JSON value: a syntax error, trailing characters,
    /// an empty body or a nesting too deep. Line and column are 1-based
    /// (column 0 means before the first character of the line).
    #[error("message body is not valid JSON (line {line}, column {column})")]
    NotJson { line: usize, column: usize },
    /// The body is JSON, but its top level is not an object.
    #[error("message body is not a JSON object")]
    NotAnObject,
    /// A required field is absent. `field` is a path such as
    /// `payment_token` or `items[2].sku`.
    #[error("missing field `{field}`")]
    MissingField { field: String },
    /// A field holds a JSON value of the wrong type (a string for a number,
    /// an object for an array, ...) or appears twice in the same object.
    /// `path` is a path such as `items[3].quantity`; `?` stands for a segment
    /// that cannot be named safely.
    #[error("field `{path}` has the wrong JSON type")]
    WrongType { path: String },
}

/// The body decodes as an order, but a value breaks a rule.
///
/// `item` is the 0-based index of the line item, the same number the JSON
/// path `items[N]` uses.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum ValidationError {
    #[error("field `order_id` is not a hyphenated UUID")]
    OrderId,
    #[error("field `customer_id` must be 1 to 64 characters from A-Z, a-z, 0-9, `_` and `-`")]
    CustomerId,
    #[error("field `currency` is not an active upper-case ISO 4217 code")]
    Currency,
    #[error("order has {count} items, expected 1 to 100")]
    ItemCount { count: usize },
    #[error("quantity of `items[{item}]` must be an integer from 1 to 10000")]
    Quantity { item: usize },
    #[error("unit price of `items[{item}]` must be a non-negative integer number of minor units")]
    UnitPrice { item: usize },
    #[error("order total overflows the integer range")]
    TotalOverflow,
    #[error("order total must be above 0 and at most 10^12 minor units")]
    TotalOutOfRange,
    #[error("field `payment_token` must be 1 to 255 printable ASCII characters")]
    PaymentToken,
    #[error("field `created_at` is not an RFC 3339 timestamp")]
    CreatedAt,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_error() -> Vec<OrderError> {
        let decode = [
            DecodeError::TooLarge {
                size: 70_000,
                limit: 65_536,
            },
            DecodeError::NotUtf8,
            DecodeError::NotJson { line: 3, column: 7 },
            DecodeError::NotAnObject,
            DecodeError::MissingField {
                field: "items[2].sku".to_owned(),
            },
            DecodeError::WrongType {
                path: "items[3].quantity".to_owned(),
            },
        ];
        let invalid = [
            ValidationError::OrderId,
            ValidationError::CustomerId,
            ValidationError::Currency,
            ValidationError::ItemCount { count: 101 },
            ValidationError::Quantity { item: 3 },
            ValidationError::UnitPrice { item: 4 },
            ValidationError::TotalOverflow,
            ValidationError::TotalOutOfRange,
            ValidationError::PaymentToken,
            ValidationError::CreatedAt,
        ];
        decode
            .into_iter()
            .map(OrderError::from)
            .chain(invalid.into_iter().map(OrderError::from))
            .collect()
    }

    #[test]
    fn display_is_a_short_printable_ascii_sentence() {
        for error in every_error() {
            let text = error.to_string();
            assert!(!text.is_empty());
            assert!(text.len() <= 120, "too long for a header: {text}");
            assert!(
                text.bytes().all(|b| (0x20..=0x7e).contains(&b)),
                "not printable ASCII: {text}"
            );
        }
    }

    #[test]
    fn display_names_paths_and_positions() {
        let cases = [
            (
                OrderError::from(DecodeError::WrongType {
                    path: "items[3].quantity".to_owned(),
                }),
                "field `items[3].quantity` has the wrong JSON type",
            ),
            (
                DecodeError::MissingField {
                    field: "payment_token".to_owned(),
                }
                .into(),
                "missing field `payment_token`",
            ),
            (
                DecodeError::NotJson { line: 3, column: 7 }.into(),
                "message body is not valid JSON (line 3, column 7)",
            ),
            (
                ValidationError::Quantity { item: 3 }.into(),
                "quantity of `items[3]` must be an integer from 1 to 10000",
            ),
        ];
        for (error, expected) in cases {
            assert_eq!(error.to_string(), expected);
        }
    }

    #[test]
    fn order_error_is_transparent() {
        let inner = ValidationError::Currency;
        assert_eq!(
            OrderError::from(inner.clone()).to_string(),
            inner.to_string()
        );
    }
}
