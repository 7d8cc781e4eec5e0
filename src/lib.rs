//! order-processor: consumes order messages from RabbitMQ, charges each at
//! a payment provider over HTTP, records it in PostgreSQL, and settles
//! every delivery by what happened to it.
//!
//! How a message flows:
//! 1. [`adapters::amqp`] pulls a delivery when a worker permit is free and
//!    opens its consumer span (a child of the publisher's `traceparent`).
//! 2. [`usecase::ProcessOrder`] parses it into a valid
//!    [`domain::Order`], asks the [`domain::OrderRepository`] whether it was
//!    processed already, charges it through the [`domain::PaymentProvider`]
//!    (idempotent by order id) and saves it (idempotent by order id).
//! 3. [`disposition::Disposition`] turns the result into ack, retry later,
//!    dead-letter or leave unacked, and the AMQP adapter carries it out:
//!    acks batched with `multiple`, retries parked in broker-held delay
//!    queues, dead letters confirmed before the original is acked.
//!
//! Dependencies point inward: `domain` knows no infrastructure, `usecase`
//! composes the domain's traits and imports nothing else (the adapter that
//! calls it traces its steps), `adapters` implement them, `telemetry`
//! depends on no business module, and [`commands::run`] wires the concrete
//! types together; [`commands`] holds each of the binary's commands. A test
//! (`architecture`) fails the build when the domain or the use case names an
//! adapter, telemetry or an infrastructure crate.

pub mod adapters;
#[cfg(test)]
mod architecture;
pub mod batch;
pub mod circuit;
pub mod cli;
pub mod commands;
pub mod config;
pub mod disposition;
pub mod domain;
pub mod health;
pub mod intake;
pub mod metrics;
pub mod retry;
pub mod telemetry;
pub mod usecase;
