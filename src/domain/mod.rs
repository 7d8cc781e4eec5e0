//! The order domain: what an order is, and how a message body becomes one.
//!
//! This module is pure: it knows nothing of RabbitMQ, HTTP or PostgreSQL
//! (those live behind the traits in `ports`) and only depends on serde,
//! serde_json, serde_path_to_error, uuid, time and thiserror. It follows
//! "parse, don't validate": [`Order::parse`] is the only way from bytes to an
//! [`Order`], every field of which is a type that cannot hold a bad value,
//! so the rest of the daemon never checks a rule again.
//!
//! Failures come in two classes because they are dead-lettered differently:
//! [`DecodeError`] when the body does not have the order's JSON shape, and
//! [`ValidationError`] when it does but a value breaks a rule.

mod currency;
mod error;
mod message;
mod order;
mod ports;
mod values;
mod wire;

#[cfg(test)]
mod tests;

pub use currency::Currency;
pub use error::{DecodeError, OrderError, ValidationError};
pub use message::{OrderMessage, OrderMessageItem};
pub use order::{LineItem, Order};
pub use ports::*;
pub use values::{CustomerId, Money, OrderId, PaymentToken, Quantity};

/// The largest message body accepted, in bytes. Checked before anything
/// else so an oversized body costs nothing to refuse.
pub const MAX_ORDER_BYTES: usize = 64 * 1024;
