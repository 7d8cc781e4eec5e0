//! The value types an [`Order`](super::Order) is made of.
//!
//! Each is a newtype with a private field and a `parse` constructor that
//! returns [`ValidationError`], so a value that exists has passed its rule
//! and code further in (the payment call, the repository) never re-checks
//! it. The constructors take `&str` or `&serde_json::Number` borrowed from
//! the message and copy only once the value is known to be good.

use std::fmt;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::currency::Currency;
use super::error::ValidationError;

/// The order's idempotency key, a UUID.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct OrderId(uuid::Uuid);

impl OrderId {
    const HYPHENATED_LEN: usize = 36;

    /// Accepts the hyphenated form (`5f0c4c2e-8a51-...`, either case) only.
    /// The `uuid` crate would also take the simple, braced and URN forms;
    /// the contract shows the hyphenated one, and refusing the others keeps
    /// producers from drifting into several spellings of one key.
    pub fn parse(text: &str) -> Result<Self, ValidationError> {
        if text.len() != Self::HYPHENATED_LEN {
            return Err(ValidationError::OrderId);
        }
        uuid::Uuid::try_parse(text)
            .map(Self)
            .map_err(|_| ValidationError::OrderId)
    }

    pub fn from_uuid(uuid: uuid::Uuid) -> Self {
        Self(uuid)
    }

    pub fn as_uuid(&self) -> uuid::Uuid {
        self.0
    }
}

/// Lower-case hyphenated, the form the contract and the database use.
impl fmt::Display for OrderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

/// The customer's id: 1 to 64 characters from `[A-Za-z0-9_-]`.
///
/// It has no `Display` on purpose: it is personal data, and the easiest way
/// to keep it out of error text and logs is to make formatting it explicit.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct CustomerId(String);

impl CustomerId {
    pub const MAX_LEN: usize = 64;

    pub fn parse(text: &str) -> Result<Self, ValidationError> {
        let allowed = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b'-';
        if (1..=Self::MAX_LEN).contains(&text.len()) && text.bytes().all(allowed) {
            Ok(Self(text.to_owned()))
        } else {
            Err(ValidationError::CustomerId)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// How many units of a line item were ordered: an integer from 1 to 10 000.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct Quantity(u32);

impl Quantity {
    pub const MIN: u32 = 1;
    pub const MAX: u32 = 10_000;

    /// Takes the JSON number as decoded, so that `1.5`, `-1` and `1e30`
    /// reach this function (and become [`ValidationError::Quantity`]) rather
    /// than failing in the decoder as a malformed message. Only an integer
    /// token counts: `2.0` is refused, because the contract says integer and
    /// a producer writing floats is a bug worth surfacing.
    pub fn parse(value: &serde_json::Number, item: usize) -> Result<Self, ValidationError> {
        value
            .as_u64()
            .and_then(|v| u32::try_from(v).ok())
            .and_then(Self::new)
            .ok_or(ValidationError::Quantity { item })
    }

    /// For callers that already hold an integer, such as a repository.
    pub fn new(value: u32) -> Option<Self> {
        (Self::MIN..=Self::MAX)
            .contains(&value)
            .then_some(Self(value))
    }

    pub fn get(self) -> u32 {
        self.0
    }
}

/// An order total: more than 0 and at most 10^12 minor units of a currency.
///
/// There is no arithmetic on it: totals are computed once, from the line
/// items, with checked integer operations, and then only carried around.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Money {
    minor: i64,
    currency: Currency,
}

impl Money {
    /// The largest total accepted, in minor units.
    pub const MAX_MINOR: i64 = 1_000_000_000_000;

    pub fn new(minor: i64, currency: Currency) -> Result<Self, ValidationError> {
        if 0 < minor && minor <= Self::MAX_MINOR {
            Ok(Self { minor, currency })
        } else {
            Err(ValidationError::TotalOutOfRange)
        }
    }

    /// The amount in minor units (cents for EUR, yen for JPY).
    pub fn minor(&self) -> i64 {
        self.minor
    }

    pub fn currency(&self) -> Currency {
        self.currency
    }
}

/// An opaque token from the payment provider: 1 to 255 printable ASCII
/// characters. It stands in for card data and must never be logged, so
/// `Debug` redacts it, there is no `Display`, and reading it takes a call to
/// [`PaymentToken::expose`] that is easy to find in review.
#[derive(Clone, PartialEq, Eq)]
pub struct PaymentToken(String);

impl PaymentToken {
    pub const MAX_LEN: usize = 255;

    pub fn parse(text: &str) -> Result<Self, ValidationError> {
        let printable = |b: u8| (0x20..=0x7e).contains(&b);
        if (1..=Self::MAX_LEN).contains(&text.len()) && text.bytes().all(printable) {
            Ok(Self(text.to_owned()))
        } else {
            Err(ValidationError::PaymentToken)
        }
    }

    /// The token itself, for the one place that sends it to the provider.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for PaymentToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PaymentToken([redacted])")
    }
}

/// The optional `created_at` timestamp. A plain `OffsetDateTime` is enough
/// once parsed, so this is a function rather than another newtype.
pub(super) fn parse_created_at(text: &str) -> Result<OffsetDateTime, ValidationError> {
    OffsetDateTime::parse(text, &Rfc3339).map_err(|_| ValidationError::CreatedAt)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn number(json: &str) -> serde_json::Number {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn order_id_accepts_hyphenated_either_case_and_displays_lower_case() {
        let lower = "5f0c4c2e-8a51-4f55-9d1e-3e2b9f3f8a10";
        let id = OrderId::parse(lower).unwrap();
        assert_eq!(id.to_string(), lower);
        assert_eq!(OrderId::parse(&lower.to_uppercase()), Ok(id));
        assert_eq!(OrderId::from_uuid(id.as_uuid()), id);
    }

    #[test]
    fn order_id_refuses_other_forms_and_garbage() {
        for text in [
            "",
            "not-a-uuid",
            "5f0c4c2e8a514f559d1e3e2b9f3f8a10",
            "{5f0c4c2e-8a51-4f55-9d1e-3e2b9f3f8a10}",
            "urn:uuid:5f0c4c2e-8a51-4f55-9d1e-3e2b9f3f8a10",
            "5f0c4c2e-8a51-4f55-9d1e-3e2b9f3f8a1g",
            "5f0c4c2e-8a51-4f55-9d1e_3e2b9f3f8a10",
        ] {
            assert_eq!(
                OrderId::parse(text),
                Err(ValidationError::OrderId),
                "{text}"
            );
        }
    }

    #[test]
    fn customer_id_bounds_and_alphabet() {
        assert!(CustomerId::parse("cus_42").is_ok());
        assert!(CustomerId::parse("A-z_0").is_ok());
        assert!(CustomerId::parse(&"x".repeat(64)).is_ok());
        for text in ["", &"x".repeat(65), "cus 42", "cus.42", "cüs", "cus\n"] {
            assert_eq!(CustomerId::parse(text), Err(ValidationError::CustomerId));
        }
        assert_eq!(CustomerId::parse("cus_42").unwrap().as_str(), "cus_42");
    }

    #[test]
    fn quantity_accepts_integers_in_range_only() {
        assert_eq!(Quantity::parse(&number("1"), 0).unwrap().get(), 1);
        assert_eq!(Quantity::parse(&number("10000"), 0).unwrap().get(), 10_000);
        for json in ["0", "10001", "-1", "1.5", "2.0", "1e30", "-0", "4294967297"] {
            assert_eq!(
                Quantity::parse(&number(json), 7),
                Err(ValidationError::Quantity { item: 7 }),
                "{json}"
            );
        }
        assert_eq!(Quantity::new(0), None);
        assert_eq!(Quantity::new(10_000).map(Quantity::get), Some(10_000));
    }

    #[test]
    fn money_range() {
        let eur = Currency::parse("EUR").unwrap();
        assert_eq!(Money::new(1, eur).unwrap().minor(), 1);
        assert_eq!(Money::new(Money::MAX_MINOR, eur).unwrap().currency(), eur);
        for minor in [0, -1, Money::MAX_MINOR + 1, i64::MIN, i64::MAX] {
            assert_eq!(
                Money::new(minor, eur),
                Err(ValidationError::TotalOutOfRange)
            );
        }
    }

    #[test]
    fn payment_token_is_printable_ascii_and_redacted() {
        let token = PaymentToken::parse("tok_visa ~!").unwrap();
        assert_eq!(token.expose(), "tok_visa ~!");
        assert_eq!(format!("{token:?}"), "PaymentToken([redacted])");
        assert!(PaymentToken::parse(&"t".repeat(255)).is_ok());
        for text in [
            "",
            &"t".repeat(256),
            "tök",
            "tok\u{7}",
            "tok\t",
            "tok\u{7f}",
        ] {
            assert_eq!(
                PaymentToken::parse(text),
                Err(ValidationError::PaymentToken)
            );
        }
    }

    #[test]
    fn created_at_is_rfc3339() {
        let at = parse_created_at("2026-11-24T10:00:00Z").unwrap();
        assert_eq!(at.unix_timestamp(), 1_795_514_400);
        assert!(parse_created_at("2026-11-24T11:00:00.123+01:00").is_ok());
        for text in [
            "",
            "yesterday",
            "2026-11-24",
            "2026-11-24 10:00:00",
            "1795514400",
        ] {
            assert_eq!(
                parse_created_at(text),
                Err(ValidationError::CreatedAt),
                "{text}"
            );
        }
    }
}
