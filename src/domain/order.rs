//! The [`Order`] and its [`LineItem`]s, and [`Order::parse`], the one way
//! from a message body to an order.
//!
//! Parsing is two steps: `wire::decode` gets the JSON shape (or a
//! [`DecodeError`]), then `from_wire` turns each borrowed field into its
//! value type (or a [`ValidationError`]). Fields are checked in contract
//! order and the first broken rule is reported, which keeps the reason in
//! the dead-letter header stable for a given message. The total is computed
//! here, once, with checked `u64` arithmetic, so an order's `total()` always
//! equals the sum of its lines.

use time::OffsetDateTime;

use super::currency::Currency;
use super::error::{OrderError, ValidationError};
use super::values::{CustomerId, Money, OrderId, PaymentToken, Quantity, parse_created_at};
use super::wire::{self, ObjectOnly, WireOrder};

/// One line of an order.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct LineItem {
    sku: String,
    quantity: Quantity,
    unit_price_minor: u64,
}

impl LineItem {
    /// The stock-keeping unit, any string (the contract sets no rule on it).
    pub fn sku(&self) -> &str {
        &self.sku
    }

    pub fn quantity(&self) -> u32 {
        self.quantity.get()
    }

    /// The price of one unit in minor units of the order's currency.
    pub fn unit_price_minor(&self) -> u64 {
        self.unit_price_minor
    }
}

/// A valid order. Only [`Order::parse`] makes one.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Order {
    id: OrderId,
    customer_id: CustomerId,
    items: Vec<LineItem>,
    total: Money,
    payment_token: PaymentToken,
    created_at: Option<OffsetDateTime>,
}

impl Order {
    /// The most line items an order may have.
    pub const MAX_ITEMS: usize = 100;

    /// Decodes and validates one message body (the raw AMQP payload).
    /// Never panics, whatever the bytes.
    pub fn parse(body: &[u8]) -> Result<Order, OrderError> {
        let wire = wire::decode(body)?;
        Ok(Self::from_wire(wire)?)
    }

    fn from_wire(wire: WireOrder<'_>) -> Result<Order, ValidationError> {
        let id = OrderId::parse(&wire.order_id)?;
        let customer_id = CustomerId::parse(&wire.customer_id)?;
        let currency = Currency::parse(&wire.currency)?;

        let count = wire.items.len();
        if !(1..=Self::MAX_ITEMS).contains(&count) {
            return Err(ValidationError::ItemCount { count });
        }
        let mut items = Vec::with_capacity(count);
        let mut total: u64 = 0;
        for (index, ObjectOnly(item)) in wire.items.into_iter().enumerate() {
            let quantity = item
                .quantity
                .number()
                .ok_or(ValidationError::Quantity { item: index })
                .and_then(|number| Quantity::parse(number, index))?;
            let unit_price_minor = item
                .unit_price_minor
                .number()
                .and_then(serde_json::Number::as_u64)
                .ok_or(ValidationError::UnitPrice { item: index })?;
            total = u64::from(quantity.get())
                .checked_mul(unit_price_minor)
                .and_then(|line| total.checked_add(line))
                .ok_or(ValidationError::TotalOverflow)?;
            items.push(LineItem {
                sku: item.sku.into_owned(),
                quantity,
                unit_price_minor,
            });
        }
        // A sum above i64::MAX fits u64 but is far above the 10^12 cap.
        let minor = i64::try_from(total).map_err(|_| ValidationError::TotalOutOfRange)?;
        let total = Money::new(minor, currency)?;

        let payment_token = PaymentToken::parse(&wire.payment_token)?;
        let created_at = wire
            .created_at
            .map(|text| parse_created_at(&text.0))
            .transpose()?;

        Ok(Order {
            id,
            customer_id,
            items,
            total,
            payment_token,
            created_at,
        })
    }

    pub fn id(&self) -> OrderId {
        self.id
    }

    pub fn customer_id(&self) -> &CustomerId {
        &self.customer_id
    }

    pub fn currency(&self) -> Currency {
        self.total.currency()
    }

    /// Between 1 and [`Order::MAX_ITEMS`] lines, in message order.
    pub fn items(&self) -> &[LineItem] {
        &self.items
    }

    /// The sum of quantity × unit price over the lines.
    pub fn total(&self) -> Money {
        self.total
    }

    pub fn payment_token(&self) -> &PaymentToken {
        &self.payment_token
    }

    pub fn created_at(&self) -> Option<OffsetDateTime> {
        self.created_at
    }
}
