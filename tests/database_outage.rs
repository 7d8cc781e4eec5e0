//! PostgreSQL restarts in the middle of a load. A binary of its own: it
//! takes the database away from every test that would run beside it.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::TestEnv;
use common::broker::Broker;
use common::daemon::{Daemon, PaymentSim};

fn restart_postgres() {
    let clusters = std::fs::read_dir("/etc/postgresql").unwrap();
    let version = clusters.flatten().next().unwrap().file_name();
    let status = Command::new("pg_ctlcluster")
        .args([
            "--skip-systemctl-redirect",
            &version.to_string_lossy(),
            "main",
            "restart",
        ])
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_restart_mid_load_is_retried_and_loses_nothing() {
    let env = TestEnv::new().await;
    let sim = PaymentSim::start(&["--latency-ms", "20"]);
    let daemon = Daemon::start(
        &env,
        &sim.url,
        &[
            ("ORDER_PROCESSOR__WORKERS__CONCURRENCY", "16"),
            ("ORDER_PROCESSOR__RETRY__BASE_DELAY_MS", "500"),
            ("ORDER_PROCESSOR__RETRY__MAX_ATTEMPTS", "10"),
        ],
    )
    .await;
    let ids = env.publish_orders(300, "tok_visa").await;
    let broker = Broker::connect().await;
    env.eventually(Duration::from_secs(60), "progress", || async {
        env.order_count().await > 20
    })
    .await;

    restart_postgres();

    daemon.wait_ready(Duration::from_secs(90)).await;
    env.eventually(Duration::from_secs(120), "every order saved", || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM orders")
            .fetch_one(&env.db)
            .await
            .is_ok_and(|n| n == ids.len() as i64)
    })
    .await;
    assert_eq!(
        sim.stats().await["charges"],
        ids.len() as u64,
        "a retried order is not charged twice"
    );
    assert_eq!(broker.depth(&env.dead_letter_queue()).await, 0);
    assert_eq!(daemon.status("/healthz").await, Some(200));
    broker.close().await;
}
