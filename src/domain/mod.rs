//! PLACEHOLDER until the real domain lands.
#![allow(dead_code, clippy::all)]
mod ports;
pub use ports::*;
pub const MAX_ORDER_BYTES: usize = 64 * 1024;
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OrderId(uuid::Uuid);
impl OrderId { pub fn as_uuid(&self) -> uuid::Uuid { self.0 } pub fn from_uuid(u: uuid::Uuid) -> Self { Self(u) } }
impl std::fmt::Display for OrderId { fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { self.0.fmt(f) } }
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomerId(String);
impl CustomerId { pub fn as_str(&self) -> &str { &self.0 } }
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Currency([u8; 3]);
impl Currency { pub fn as_str(&self) -> &str { std::str::from_utf8(&self.0).unwrap_or("") } }
#[derive(Debug, Clone, Copy)]
pub struct Money { minor: i64, currency: Currency }
impl Money { pub fn minor(&self) -> i64 { self.minor } pub fn currency(&self) -> Currency { self.currency } }
#[derive(Clone)]
pub struct PaymentToken(String);
impl std::fmt::Debug for PaymentToken { fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { f.write_str("PaymentToken([redacted])") } }
impl PaymentToken { pub fn expose(&self) -> &str { &self.0 } }
#[derive(Debug, Clone)]
pub struct Order { id: OrderId, customer_id: CustomerId, total: Money, payment_token: PaymentToken }
impl Order {
    pub fn parse(body: &[u8]) -> Result<Order, OrderError> { let _ = body; Err(OrderError::Malformed(DecodeError::NotUtf8)) }
    pub fn id(&self) -> OrderId { self.id }
    pub fn customer_id(&self) -> &CustomerId { &self.customer_id }
    pub fn currency(&self) -> Currency { self.total.currency }
    pub fn total(&self) -> Money { self.total }
    pub fn payment_token(&self) -> &PaymentToken { &self.payment_token }
}
#[derive(thiserror::Error, Debug)] pub enum OrderError { #[error(transparent)] Malformed(#[from] DecodeError), #[error(transparent)] Invalid(#[from] ValidationError) }
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)] pub enum DecodeError { #[error("x")] TooLarge { size: usize, limit: usize }, #[error("x")] NotUtf8 }
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)] pub enum ValidationError { #[error("x")] OrderId }
#[derive(serde::Serialize, Debug, Clone)]
pub struct OrderMessage { pub order_id: String, pub customer_id: String, pub currency: String, pub items: Vec<OrderMessageItem>, pub payment_token: String, pub created_at: Option<String> }
#[derive(serde::Serialize, Debug, Clone)]
pub struct OrderMessageItem { pub sku: String, pub quantity: i64, pub unit_price_minor: i64 }
impl OrderMessage { pub fn example(order_id: uuid::Uuid) -> Self { Self { order_id: order_id.to_string(), customer_id: "c".into(), currency: "EUR".into(), items: vec![], payment_token: "tok".into(), created_at: None } } pub fn to_json(&self) -> Result<Vec<u8>, serde_json::Error> { serde_json::to_vec(self) } }
