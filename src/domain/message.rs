//! A builder for order message bodies, for tests, benchmarks and the crate's
//! `publish` command.
//!
//! It is the mirror image of the wire shape but deliberately unvalidated:
//! its fields are plain `String`s and `i64`s so that tests can also build
//! broken messages (a negative quantity, a lower-case currency) through the
//! same path as good ones.

use serde::Serialize;

/// One order message, serialized as the contract's JSON.
#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
pub struct OrderMessage {
    pub order_id: String,
    pub customer_id: String,
    pub currency: String,
    pub items: Vec<OrderMessageItem>,
    pub payment_token: String,
    /// Left out of the JSON when `None`, which the contract treats like `null`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
}

/// One line item of an [`OrderMessage`].
#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
pub struct OrderMessageItem {
    pub sku: String,
    pub quantity: i64,
    pub unit_price_minor: i64,
}

impl OrderMessage {
    /// A valid order of about 500 bytes with four items, totalling 11 293
    /// minor units of EUR: a typical message for tests and benchmarks.
    pub fn example(order_id: uuid::Uuid) -> Self {
        let item = |sku: &str, quantity, unit_price_minor| OrderMessageItem {
            sku: sku.to_owned(),
            quantity,
            unit_price_minor,
        };
        Self {
            order_id: order_id.hyphenated().to_string(),
            customer_id: "cus_8f3k2m9x4q7w1z5v".to_owned(),
            currency: "EUR".to_owned(),
            items: vec![
                item("SKU-COFFEE-BEANS-ARABICA-1KG", 2, 1999),
                item("SKU-MILK-FROTHER-STAINLESS", 1, 3495),
                item("SKU-PAPER-FILTERS-SIZE4-100", 3, 349),
                item("SKU-DESCALER-LIQUID-500ML", 1, 2753),
            ],
            payment_token: "tok_1PqR8sT2uV3wX4yZ5aB6cD7e".to_owned(),
            created_at: Some("2026-11-24T10:00:00Z".to_owned()),
        }
    }

    /// The JSON body. Serializing these field types cannot fail, but the
    /// error is passed on rather than unwrapped so no caller can panic.
    pub fn to_json(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(self)
    }
}
