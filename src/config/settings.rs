//! The typed sections of [`Settings`](super::Settings), one struct per
//! `[section]` of the TOML files, and the shapes the files and
//! `ORDER_PROCESSOR__*` variables are read into before the secrets (which
//! come only from their own variables) are added.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::secrets::{ApiKey, Secret};

#[derive(Debug, Clone, Serialize)]
pub struct AmqpSettings {
    pub url: Secret,
    pub exchange: String,
    pub routing_key: String,
    pub queue: String,
    pub prefetch: u16,
    /// Deliveries of one message (the quorum queue's `x-delivery-count`)
    /// after which it is dead-lettered unprocessed, as `redelivery_limit`.
    pub redelivery_limit: u32,
    /// The RabbitMQ management API, when the operator wants the broker's
    /// settings checked against the retry policy. A secret: it may carry
    /// credentials.
    pub management_url: Option<Secret>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSettings {
    pub concurrency: usize,
    /// Threads of the async runtime; 0 means one per available core (which
    /// follows the container's CPU limit).
    #[serde(default)]
    pub threads: usize,
    /// Bytes of message bodies taken from the broker and not yet settled
    /// before intake pauses; it also caps the prefetch (see
    /// `adapters::amqp::effective_prefetch`).
    pub max_in_flight_bytes: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RetrySettings {
    pub max_attempts: u32,
    pub base_delay_ms: u64,
    pub max_delay_ms: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct PaymentSettings {
    pub base_url: Secret,
    /// Sent as `Authorization: Bearer <key>` with every charge, when set.
    pub api_key: Option<ApiKey>,
    pub timeout_ms: u64,
    /// Charges sent to the provider at the same time; 0 means as many as
    /// the worker pool.
    pub max_in_flight: usize,
    /// The slowest the rate limiter paces charges while the provider
    /// answers 429, per second.
    pub min_rate: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct DatabaseSettings {
    pub url: Secret,
    pub migrate: bool,
    pub max_connections: u32,
}

/// When an outage of the provider or the database pauses intake (see
/// [`crate::circuit`]).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CircuitConfig {
    pub window_ms: u64,
    pub min_calls: u32,
    pub failure_ratio: f64,
    pub consecutive_failures: u32,
    pub first_probe_ms: u64,
    pub max_probe_interval_ms: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownSettings {
    pub grace_ms: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    pub listen: SocketAddr,
}

/// What the files and `ORDER_PROCESSOR__*` variables may set: everything but
/// the secrets.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NonSecretSettings {
    pub(super) amqp: NonSecretAmqp,
    pub(super) workers: WorkerSettings,
    pub(super) retry: RetrySettings,
    pub(super) payment: NonSecretPayment,
    pub(super) database: NonSecretDatabase,
    pub(super) shutdown: ShutdownSettings,
    pub(super) http: HttpSettings,
    pub(super) circuit: CircuitConfig,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NonSecretAmqp {
    pub(super) exchange: String,
    pub(super) routing_key: String,
    pub(super) queue: String,
    pub(super) prefetch: u16,
    pub(super) redelivery_limit: u32,
    #[serde(default)]
    pub(super) management_url: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NonSecretPayment {
    pub(super) timeout_ms: u64,
    #[serde(default)]
    pub(super) max_in_flight: usize,
    pub(super) min_rate: f64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NonSecretDatabase {
    pub(super) migrate: bool,
    pub(super) max_connections: u32,
}
