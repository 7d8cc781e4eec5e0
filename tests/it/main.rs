//! The crate's one integration-test binary: every black-box test of the
//! daemon, `payment-sim` and the deployment artefacts, one module per
//! subject, linked once. The helpers they share live in [`common`].
//!
//! The tests run in parallel in this one process. Those that take RabbitMQ
//! or PostgreSQL away from everyone (or that need the machine to
//! themselves) hold [`common::services`]' exclusive guard; every other test
//! that talks to the services holds a shared one, taken by
//! [`common::TestEnv::new`].

mod common;

mod broker_check;
mod broker_outage;
mod cli;
mod database_outage;
mod database_rows;
mod deploy_manifests;
mod dlq;
mod hostile;
mod http_listener;
mod memory;
mod observability;
mod order_decoding;
mod outages;
mod payment_provider;
mod payment_sim;
mod pipeline;
mod republish;
mod resilience;
mod tls;
mod traces;
