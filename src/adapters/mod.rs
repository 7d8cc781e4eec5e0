//! The outside world: RabbitMQ, PostgreSQL, the payment provider's HTTP
//! API and the daemon's own HTTP surface. Each adapter depends on the
//! domain, never on another adapter; only `app` knows them all.

pub mod amqp;
pub mod http_server;
pub mod payment_http;
pub mod postgres;
