//! Decoding a message body into the order's JSON shape, and turning every
//! way that can fail into a safe [`DecodeError`].
//!
//! The wire structs borrow from the body (`Cow<str>` with `#[serde(borrow)]`
//! falls back to an owned string only when a string has escapes) and keep
//! the amounts as [`WireNumber`], so a wrong *type* fails here while a wrong
//! *value* (`1.5` items, `-1` cents, `1e400` of either) is left to the
//! validation step.
//!
//! The body is decoded with plain serde_json first. Only when that fails with
//! an error that needs a field path is it decoded again under
//! `serde_path_to_error`, because path tracking allocates a `String` for
//! every object key it passes and the happy path, about 20 000 times a
//! second, should not pay for paths it never reports. Decoding is
//! deterministic, so the second pass fails at the same place.

use std::borrow::Cow;
use std::fmt::{self, Write as _};
use std::marker::PhantomData;

use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, Unexpected, Visitor};
use serde_json::error::Category;
use serde_json::value::RawValue;
use serde_path_to_error::{Path, Segment};

use super::MAX_ORDER_BYTES;
use super::error::DecodeError;

#[derive(serde::Deserialize)]
pub(super) struct WireOrder<'a> {
    #[serde(borrow)]
    pub order_id: Cow<'a, str>,
    #[serde(borrow)]
    pub customer_id: Cow<'a, str>,
    #[serde(borrow)]
    pub currency: Cow<'a, str>,
    #[serde(borrow)]
    pub items: Vec<ObjectOnly<WireItem<'a>>>,
    #[serde(borrow)]
    pub payment_token: Cow<'a, str>,
    // `null` and absence both become `None`.
    #[serde(borrow, default)]
    pub created_at: Option<Text<'a>>,
}

#[derive(serde::Deserialize)]
pub(super) struct WireItem<'a> {
    #[serde(borrow)]
    pub sku: Cow<'a, str>,
    pub quantity: WireNumber,
    pub unit_price_minor: WireNumber,
}

/// A JSON number in an amount field, read from its text.
///
/// serde_json refuses a number beyond `f64` (`1e400`, a 400-digit price)
/// with an error that stops decoding where it stands. For an amount that
/// would leave the rest of the body unread, so a body broken further on
/// (a missing field, a syntax error, trailing garbage) would be reported as
/// an invalid amount instead of as malformed. Reading the number as a raw
/// token first, which serde_json scans without converting, lets decoding
/// go on; whether the value is a good amount is the validation step's call.
pub(super) enum WireNumber {
    Number(serde_json::Number),
    /// A number too large in magnitude for `f64`: never a valid amount.
    BeyondF64,
}

impl WireNumber {
    pub fn number(&self) -> Option<&serde_json::Number> {
        match self {
            Self::Number(number) => Some(number),
            Self::BeyondF64 => None,
        }
    }
}

impl<'de> Deserialize<'de> for WireNumber {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = <&'de RawValue>::deserialize(deserializer)?;
        let text = raw.get();
        // The token is valid JSON (serde_json checked it while scanning), and
        // only a number starts with a digit or a minus sign.
        if !text.starts_with(|c: char| c == '-' || c.is_ascii_digit()) {
            return Err(de::Error::invalid_type(
                Unexpected::Other("a non-number value"),
                &"a JSON number",
            ));
        }
        // Most amounts are plain non-negative integers: parse those directly,
        // as serde_json would (as a `u64`). JSON allows no `+` or leading zero.
        if let Ok(integer) = text.parse::<u64>() {
            return Ok(Self::Number(integer.into()));
        }
        // A number token that serde_json cannot convert is out of range.
        Ok(text
            .parse::<serde_json::Number>()
            .map_or(Self::BeyondF64, Self::Number))
    }
}

/// A borrowed string inside an `Option`: serde only borrows a `Cow` that is
/// a direct field, so the `Option` needs this newtype to avoid allocating.
#[derive(serde::Deserialize)]
pub(super) struct Text<'a>(#[serde(borrow)] pub Cow<'a, str>);

/// Accepts `T` from a JSON object only. A derived struct also accepts an
/// array of its fields in order, which would let `["SKU-1", 2, 1999]` pass
/// as a line item although the contract says an item is an object.
pub(super) struct ObjectOnly<T>(pub T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for ObjectOnly<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectVisitor<T>(PhantomData<T>);

        impl<'de, T: Deserialize<'de>> Visitor<'de> for ObjectVisitor<T> {
            type Value = T;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(de::value::MapAccessDeserializer::new(map))
            }
        }

        deserializer
            .deserialize_map(ObjectVisitor(PhantomData))
            .map(ObjectOnly)
    }
}

/// Every object key the order shape knows. Paths in error text are built
/// from this list only, so no key from the message can reach a header.
const KNOWN_FIELDS: [&str; 9] = [
    "order_id",
    "customer_id",
    "currency",
    "items",
    "payment_token",
    "created_at",
    "sku",
    "quantity",
    "unit_price_minor",
];

/// Size, then UTF-8, then JSON shape.
pub(super) fn decode(body: &[u8]) -> Result<WireOrder<'_>, DecodeError> {
    if body.len() > MAX_ORDER_BYTES {
        return Err(DecodeError::TooLarge {
            size: body.len(),
            limit: MAX_ORDER_BYTES,
        });
    }
    let text = std::str::from_utf8(body).map_err(|_| DecodeError::NotUtf8)?;
    let first = text
        .bytes()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'));
    if first != Some(b'{') {
        return Err(non_object(text));
    }
    // `from_str` rather than `from_slice`: the UTF-8 check above is done, and
    // serde_json skips validating it again for a `&str` source.
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let decoded = ObjectOnly::<WireOrder<'_>>::deserialize(&mut deserializer)
        .and_then(|order| deserializer.end().map(|()| order.0));
    decoded.map_err(|error| classify_untracked(text, &error))
}

/// The body is not an object; say whether it is JSON at all, so that an
/// empty body or `hello` reads as not JSON and `[]` or `42` as not an object.
fn non_object(text: &str) -> DecodeError {
    let mut deserializer = serde_json::Deserializer::from_str(text);
    match IgnoredAny::deserialize(&mut deserializer).and_then(|_| deserializer.end()) {
        Ok(()) => DecodeError::NotAnObject,
        Err(error) => not_json(&error),
    }
}

fn not_json(error: &serde_json::Error) -> DecodeError {
    DecodeError::NotJson {
        line: error.line(),
        column: error.column(),
    }
}

fn is_number_out_of_range(error: &serde_json::Error) -> bool {
    error.classify() == Category::Syntax && error.to_string().starts_with("number out of range")
}

fn classify_untracked(text: &str, error: &serde_json::Error) -> DecodeError {
    let needs_path = error.classify() == Category::Data || is_number_out_of_range(error);
    if !needs_path {
        return not_json(error);
    }
    let mut deserializer = serde_json::Deserializer::from_str(text);
    match serde_path_to_error::deserialize::<_, ObjectOnly<WireOrder<'_>>>(&mut deserializer) {
        Err(tracked) => classify_tracked(tracked.path(), tracked.inner()),
        // Unreachable while decoding is deterministic; still answer with a
        // malformed error rather than trust a body that failed once.
        Ok(_) => DecodeError::WrongType {
            path: "?".to_owned(),
        },
    }
}

fn classify_tracked(path: &Path, error: &serde_json::Error) -> DecodeError {
    // A number beyond `f64` where a string, array or object belongs (the
    // amounts read theirs as text, see `WireNumber`).
    if is_number_out_of_range(error) {
        return if path.iter().len() > 0 {
            DecodeError::WrongType {
                path: render(path, None),
            }
        } else {
            not_json(error)
        };
    }
    if error.classify() != Category::Data {
        return not_json(error);
    }
    // serde's own messages for these two quote a field name from the derive,
    // never a value; the name is still checked against `KNOWN_FIELDS`.
    let message = error.to_string();
    if let Some(field) = quoted_name(&message, "missing field `") {
        return DecodeError::MissingField {
            field: render(path, Some(field)),
        };
    }
    if let Some(field) = quoted_name(&message, "duplicate field `") {
        return DecodeError::WrongType {
            path: render(path, Some(field)),
        };
    }
    if path.iter().len() == 0 {
        return DecodeError::NotAnObject;
    }
    DecodeError::WrongType {
        path: render(path, None),
    }
}

fn quoted_name<'m>(message: &'m str, prefix: &str) -> Option<&'m str> {
    message.strip_prefix(prefix)?.split('`').next()
}

fn known(name: &str) -> &'static str {
    KNOWN_FIELDS
        .iter()
        .find(|known| **known == name)
        .copied()
        .unwrap_or("?")
}

/// A path like `items[3].quantity`, with `leaf` appended when given. Any
/// segment not in [`KNOWN_FIELDS`] is written as `?`.
fn render(path: &Path, leaf: Option<&str>) -> String {
    let mut out = String::new();
    let push_name = |out: &mut String, name: &str| {
        if !out.is_empty() {
            out.push('.');
        }
        out.push_str(known(name));
    };
    for segment in path {
        match segment {
            Segment::Seq { index } => {
                // Writing to a String cannot fail.
                let _ = write!(out, "[{index}]");
            }
            Segment::Map { key } => push_name(&mut out, key),
            Segment::Enum { .. } | Segment::Unknown => push_name(&mut out, "?"),
        }
    }
    if let Some(leaf) = leaf {
        push_name(&mut out, leaf);
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn strings_borrow_from_the_body_unless_escaped() {
        let body = br#"{"order_id": "x", "customer_id": "c", "currency": "EUR",
            "items": [{"sku": "a\u0062", "quantity": 1, "unit_price_minor": 1}],
            "payment_token": "t", "created_at": "2026-11-24T10:00:00Z"}"#;
        let order = decode(body).unwrap();
        assert!(matches!(order.order_id, Cow::Borrowed("x")));
        assert!(matches!(order.payment_token, Cow::Borrowed("t")));
        let created_at = order.created_at.unwrap().0;
        assert!(matches!(created_at, Cow::Borrowed("2026-11-24T10:00:00Z")));
        let sku = &order.items[0].0.sku;
        assert!(matches!(sku, Cow::Owned(text) if text == "ab"));
    }

    #[test]
    fn only_known_names_reach_paths() {
        assert_eq!(known("unit_price_minor"), "unit_price_minor");
        assert_eq!(known("tok_secret"), "?");
        assert_eq!(
            quoted_name("missing field `sku` at line 1", "missing field `"),
            Some("sku")
        );
        assert_eq!(quoted_name("invalid type", "missing field `"), None);
    }
}
