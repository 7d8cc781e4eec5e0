//! The broker stops and starts in the middle of a load. This test runs
//! alone ([`TestEnv::alone`]) because it takes the broker away from every
//! test that would run beside it.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

use std::process::Command;
use std::time::Duration;

use crate::common::TestEnv;
use crate::common::broker::Broker;
use crate::common::daemon::{Daemon, PaymentSim};

fn rabbitmqctl(args: &[&str]) {
    let status = Command::new("rabbitmqctl")
        .arg("-q")
        .args(args)
        .status()
        .unwrap();
    assert!(status.success(), "rabbitmqctl {args:?} failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_mid_load_loses_nothing_and_charges_nothing_twice() {
    let env = TestEnv::alone().await;
    let sim = PaymentSim::start(&["--latency-ms", "20"]);
    let daemon = Daemon::start(
        &env,
        &sim.url,
        &[("ORDER_PROCESSOR__WORKERS__CONCURRENCY", "16")],
    )
    .await;
    let ids = env.publish_orders(300, "tok_visa").await;
    let broker = Broker::connect().await;
    broker.close().await;
    env.eventually(Duration::from_secs(60), "progress", || async {
        env.order_count().await > 20
    })
    .await;

    rabbitmqctl(&["stop_app"]);
    env.eventually(Duration::from_secs(20), "readiness off", || async {
        daemon.status("/readyz").await == Some(503)
    })
    .await;
    assert_eq!(
        daemon.status("/healthz").await,
        Some(200),
        "the process stays alive"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    rabbitmqctl(&["start_app"]);
    rabbitmqctl(&["await_startup"]);

    daemon.wait_ready(Duration::from_secs(90)).await;
    env.eventually(Duration::from_secs(90), "every order saved", || async {
        env.order_count().await == ids.len() as i64
    })
    .await;
    assert_eq!(sim.stats().await["charges"], ids.len() as u64);
    let broker = Broker::connect().await;
    assert_eq!(broker.depth(&env.queue).await, 0);
    assert_eq!(broker.depth(&env.dead_letter_queue()).await, 0);
    broker.close().await;
    assert!(
        !daemon
            .metrics()
            .await
            .contains("order_processor_amqp_reconnects_total 0")
    );
}
