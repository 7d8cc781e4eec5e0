//! The two ports the use case needs from the outside world: a payment
//! provider that charges an order, and a repository that remembers which
//! orders were processed.
//!
//! They are traits so that the use case can be tested with in-memory fakes
//! and so that the adapters (HTTP, PostgreSQL) depend on the domain and never
//! the other way round. The futures are `Send` because every order runs on a
//! multi-threaded runtime.

use std::future::Future;
use std::time::Duration;

use super::{Currency, CustomerId, Order, OrderId};

/// The provider's identifier of a successful charge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChargeId(String);

impl ChargeId {
    /// Wraps the identifier the provider returned.
    pub fn new(id: impl Into<String>) -> Self {
        Self(id.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Why the provider did not answer with a charge. The split between the
/// variants is what decides between dead-lettering and retrying.
#[derive(Debug, thiserror::Error)]
pub enum PaymentError {
    /// The provider refused the payment (HTTP 402). Retrying cannot help.
    #[error("the payment was declined")]
    Declined,
    /// The provider refused the request itself (4xx other than 402, 409
    /// and 429).
    #[error("the payment provider rejected the request with status {status}")]
    Rejected { status: u16 },
    /// The provider could not be asked or did not decide: 409, 429, 5xx, a
    /// timeout, a connection failure or an unreadable answer. The charge is
    /// idempotent by order id, so asking again later is safe; not before
    /// `retry_after` when the provider said so.
    #[error("the payment provider is unavailable ({reason})")]
    Unavailable {
        reason: UnavailableReason,
        retry_after: Option<Duration>,
    },
}

/// The safe, short cause of an unavailable provider. It ends up in logs and
/// dead-letter headers, so it never carries a URL or a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnavailableReason {
    Timeout,
    /// No connection could be made (refused, unreachable, TLS failed).
    Connect,
    /// The connection was closed before an answer came.
    Closed,
    /// What came back was not HTTP.
    NotHttp,
    /// An answer status that says "not now" (5xx, or an unexpected 3xx).
    Status(u16),
    /// 409: a request with the same idempotency key is still in progress,
    /// sent by another replica or an earlier attempt.
    InProgress,
    /// 429: the provider limits the rate of charges.
    RateLimited,
    /// A 2xx that is not a settled charge with a usable id (1 to 255
    /// printable ASCII characters).
    InvalidResponse,
}

impl UnavailableReason {
    /// Whether this failure says the provider itself is down, as opposed to
    /// busy with this order elsewhere (409) or limiting the rate (429),
    /// which a healthy provider answers too.
    pub fn is_outage(self) -> bool {
        match self {
            Self::Timeout
            | Self::Connect
            | Self::Closed
            | Self::NotHttp
            | Self::Status(_)
            | Self::InvalidResponse => true,
            Self::InProgress | Self::RateLimited => false,
        }
    }
}

impl std::fmt::Display for UnavailableReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Timeout => f.write_str("timed out"),
            Self::Connect => f.write_str("could not connect"),
            Self::Closed => f.write_str("the provider closed the connection without answering"),
            Self::NotHttp => f.write_str("the provider's answer was not HTTP"),
            Self::Status(status) => write!(f, "status {status}"),
            Self::InProgress => f.write_str("status 409: the charge is in progress elsewhere"),
            Self::RateLimited => f.write_str("status 429: rate limited"),
            Self::InvalidResponse => f.write_str(
                "the provider's success answer had no settled charge with a usable charge_id",
            ),
        }
    }
}

/// Charges orders. Implementations must send the order id as the
/// idempotency key, so that charging the same order twice charges it once.
pub trait PaymentProvider: Send + Sync + 'static {
    fn charge(&self, order: &Order) -> impl Future<Output = Result<ChargeId, PaymentError>> + Send;
}

/// What is recorded once an order has been charged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessedOrder {
    pub order_id: OrderId,
    pub customer_id: CustomerId,
    pub currency: Currency,
    pub total_minor: i64,
    pub charge_id: ChargeId,
    /// The W3C trace id (32 lowercase hex digits) the order was processed under.
    pub trace_id: Option<String>,
}

/// The repository could not be reached or did not answer in time. The
/// source is kept for the operator's logs; `Display` stays generic because
/// driver messages can quote SQL or connection details.
#[derive(Debug, thiserror::Error)]
pub enum RepositoryError {
    /// The database could not be reached, failed or did not answer in time.
    #[error("the order database is unavailable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The database answered, but refused this order's row (a value it
    /// cannot store). The orders beside it are not affected.
    #[error("the order database refused this order's row")]
    RowRejected(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl RepositoryError {
    /// Whether this failure says the database itself is down.
    pub fn is_outage(&self) -> bool {
        match self {
            Self::Unavailable(_) => true,
            Self::RowRejected(_) => false,
        }
    }
}

/// Remembers processed orders. `save` must be idempotent: saving an order
/// that is already there is a success and changes nothing.
pub trait OrderRepository: Send + Sync + 'static {
    fn is_processed(
        &self,
        id: OrderId,
    ) -> impl Future<Output = Result<bool, RepositoryError>> + Send;

    fn save(
        &self,
        order: ProcessedOrder,
    ) -> impl Future<Output = Result<(), RepositoryError>> + Send;
}
