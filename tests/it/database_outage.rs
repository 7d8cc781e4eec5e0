//! PostgreSQL restarts, in the middle of a load and while the daemon is
//! idle. Each test runs alone ([`TestEnv::alone`]): it takes the database
//! away from every test that would run beside it.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

use std::process::Command;
use std::time::Duration;

use crate::common::broker::Broker;
use crate::common::daemon::{Daemon, PaymentSim};
use crate::common::{SHORT_RETRIES, TestEnv, publish_paced};

/// The rows of the test's database, or None while it cannot answer.
async fn saved(env: &TestEnv) -> Option<i64> {
    sqlx::query_scalar::<_, i64>("SELECT count(*) FROM orders")
        .fetch_one(&env.db)
        .await
        .ok()
}

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
    let env = TestEnv::alone().await;
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
        saved(&env).await == Some(ids.len() as i64)
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_database_restart_while_idle_the_daemon_stays_ready_and_no_order_is_retried() {
    let env = TestEnv::alone().await;
    let sim = PaymentSim::start(&[]);
    let daemon = Daemon::start(&env, &sim.url, &[]).await;
    // Enough orders at once that the daemon's pool opens several connections.
    env.publish_orders(50, "tok_visa").await;
    env.eventually(Duration::from_secs(60), "the first orders", || async {
        saved(&env).await == Some(50)
    })
    .await;

    // Every connection the daemon keeps is broken now, and sits idle. The
    // readiness check (once a second) gets a working one at its next turn,
    // within about a second, not one broken connection after another (a
    // second each).
    restart_postgres();
    let restarted = std::time::Instant::now();
    daemon.wait_ready(Duration::from_secs(30)).await;
    let took = restarted.elapsed();
    let mut not_ready = 0;
    for _ in 0..30 {
        if daemon.status("/readyz").await != Some(200) {
            not_ready += 1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        took < Duration::from_millis(1900) && not_ready == 0,
        "ready {took:?} after the restart, then not ready {not_ready} times in 3 s:\n{}",
        daemon.logs()
    );

    env.publish_orders(50, "tok_visa").await;
    env.eventually(Duration::from_secs(60), "the next orders", || async {
        saved(&env).await == Some(100)
    })
    .await;
    let metrics = daemon.metrics().await;
    let retried: f64 = metrics
        .lines()
        .filter(|line| line.starts_with("order_processor_deliveries_total{outcome=\"retried\""))
        .filter_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum();
    assert_eq!(retried, 0.0, "{metrics}");
    assert_eq!(sim.stats().await["charges"], 100);
}

/// Starts PostgreSQL again when dropped, so that a failing test never
/// leaves the machine without its database.
struct Stopped;

impl Stopped {
    fn postgres() -> Self {
        pg_ctlcluster("stop");
        Self
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        pg_ctlcluster("start");
    }
}

fn pg_ctlcluster(action: &str) {
    let clusters = std::fs::read_dir("/etc/postgresql").unwrap();
    let version = clusters.flatten().next().unwrap().file_name();
    let status = Command::new("pg_ctlcluster")
        .args([
            "--skip-systemctl-redirect",
            &version.to_string_lossy(),
            "main",
            action,
        ])
        .status()
        .unwrap();
    assert!(status.success(), "pg_ctlcluster {action}");
}

async fn circuit_open(daemon: &Daemon) -> bool {
    daemon
        .metrics()
        .await
        .contains("order_processor_circuit_open{dependency=\"database\"} 1")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_for_30_s_under_load_dead_letters_nothing_and_saves_every_order_once() {
    let env = TestEnv::alone().await;
    let sim = PaymentSim::start(&["--latency-ms", "5"]);
    Broker::connect().await.declare(&env).await;
    let daemon = Daemon::start(&env, &sim.url, &SHORT_RETRIES).await;
    let published = publish_paced(&env, 1000, 50);
    env.eventually(Duration::from_secs(30), "progress", || async {
        saved(&env).await.unwrap_or(0) > 50
    })
    .await;

    let stopped = Stopped::postgres();
    env.eventually(Duration::from_secs(15), "the circuit opens", || async {
        circuit_open(&daemon).await
    })
    .await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    drop(stopped);
    let count = published.await.unwrap().len();

    env.eventually(Duration::from_secs(60), "every order saved", || async {
        saved(&env).await == Some(count as i64)
    })
    .await;
    assert_eq!(
        sim.stats().await["charges"],
        count as u64,
        "one charge each"
    );
    let broker = Broker::connect().await;
    assert_eq!(broker.depth(&env.dead_letter_queue()).await, 0);
    broker.close().await;
    assert!(!circuit_open(&daemon).await);
    daemon.wait_ready(Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_locked_for_60_s_so_that_statements_hang_dead_letters_nothing() {
    let env = TestEnv::alone().await;
    let sim = PaymentSim::start(&["--latency-ms", "5"]);
    Broker::connect().await.declare(&env).await;
    let daemon = Daemon::start(&env, &sim.url, &SHORT_RETRIES).await;
    let published = publish_paced(&env, 1000, 25);
    env.eventually(Duration::from_secs(30), "progress", || async {
        saved(&env).await.unwrap_or(0) > 50
    })
    .await;

    let mut lock = env.db.begin().await.unwrap();
    sqlx::query("LOCK TABLE orders IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    env.eventually(Duration::from_secs(30), "the circuit opens", || async {
        circuit_open(&daemon).await
    })
    .await;
    tokio::time::sleep(Duration::from_secs(50)).await;
    lock.rollback().await.unwrap();
    let released = std::time::Instant::now();
    let count = published.await.unwrap().len();

    env.eventually(Duration::from_secs(60), "every order saved", || async {
        saved(&env).await == Some(count as i64)
    })
    .await;
    println!("every order saved {:?} after the lock", released.elapsed());
    assert_eq!(
        sim.stats().await["charges"],
        count as u64,
        "one charge each"
    );
    let broker = Broker::connect().await;
    assert_eq!(broker.depth(&env.dead_letter_queue()).await, 0);
    broker.close().await;
}
