//! Nothing lost, nothing charged twice: the daemon stopped, killed or cut
//! off from the broker in the middle of a load.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::TestEnv;
use crate::common::daemon::{Daemon, PaymentSim};

const WAIT: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_with_a_slow_provider_exits_0_within_the_grace_period() {
    let env = TestEnv::new().await;
    let sim = PaymentSim::start(&["--latency-ms", "300"]);
    let ids = env.publish_orders(150, "tok_visa").await;
    let grace = [
        ("ORDER_PROCESSOR__SHUTDOWN__GRACE_MS", "1000"),
        ("ORDER_PROCESSOR__WORKERS__CONCURRENCY", "8"),
    ];
    let mut daemon = Daemon::start(&env, &sim.url, &grace).await;
    env.eventually(WAIT, "some orders saved", || async {
        env.order_count().await > 0
    })
    .await;

    let stopping = Instant::now();
    let code = daemon.stop_with("TERM", Duration::from_secs(15));
    assert_eq!(code, Some(0), "log:\n{}", daemon.logs());
    assert!(
        stopping.elapsed() < Duration::from_secs(5),
        "took {:?}",
        stopping.elapsed()
    );
    assert!(
        env.order_count().await < ids.len() as i64,
        "the load was still running"
    );

    let _again = Daemon::start(&env, &sim.url, &[]).await;
    env.assert_exactly_once(&sim, &ids, WAIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_turns_off_as_soon_as_draining_starts() {
    let env = TestEnv::new().await;
    let sim = PaymentSim::start(&["--latency-ms", "2000"]);
    let _ids = env.publish_orders(4, "tok_visa").await;
    let mut daemon = Daemon::start(
        &env,
        &sim.url,
        &[("ORDER_PROCESSOR__SHUTDOWN__GRACE_MS", "4000")],
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    Command::new("kill")
        .args(["-TERM", &daemon.child.id().to_string()])
        .status()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(daemon.status("/readyz").await, Some(503));
    assert_eq!(daemon.status("/healthz").await, Some(200));
    assert_eq!(daemon.stop_with("TERM", Duration::from_secs(15)), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_load_then_restart_processes_every_order_exactly_once() {
    let env = TestEnv::new().await;
    let sim = PaymentSim::start(&["--latency-ms", "20"]);
    let ids = env.publish_orders(400, "tok_visa").await;
    let small = [("ORDER_PROCESSOR__WORKERS__CONCURRENCY", "16")];
    for round in 1..=3 {
        let mut daemon = Daemon::start(&env, &sim.url, &small).await;
        let target = (round * 80) as i64;
        env.eventually(WAIT, "progress before the kill", || async {
            env.order_count().await >= target
        })
        .await;
        daemon.stop_with("KILL", Duration::from_secs(10));
    }
    let _last = Daemon::start(&env, &sim.url, &[]).await;
    env.assert_exactly_once(&sim, &ids, WAIT).await;
}

/// The broker's name of the daemon's connection (named after its pid).
fn broker_connection_of(pid: u32) -> Option<String> {
    let output = Command::new("rabbitmqctl")
        .args(["-q", "list_connections", "pid", "client_properties"])
        .output()
        .ok()?;
    let listing = String::from_utf8_lossy(&output.stdout).into_owned();
    let marker = format!("order-processor pid {pid}");
    listing
        .lines()
        .find(|line| line.contains(&marker))
        .and_then(|line| line.split('\t').next())
        .map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_broker_connection_is_reopened_and_nothing_is_lost() {
    let env = TestEnv::new().await;
    let sim = PaymentSim::start(&["--latency-ms", "20"]);
    let daemon = Daemon::start(
        &env,
        &sim.url,
        &[("ORDER_PROCESSOR__WORKERS__CONCURRENCY", "16")],
    )
    .await;
    let ids = env.publish_orders(300, "tok_visa").await;
    env.eventually(WAIT, "progress", || async { env.order_count().await > 20 })
        .await;

    let connection =
        broker_connection_of(daemon.child.id()).expect("the daemon's connection is listed");
    let closed = Command::new("rabbitmqctl")
        .args(["-q", "close_connection", &connection, "closed by a test"])
        .status()
        .unwrap();
    assert!(closed.success());
    env.eventually(
        Duration::from_secs(10),
        "readiness off while disconnected",
        || async {
            daemon.status("/readyz").await == Some(503)
                || daemon
                    .metrics()
                    .await
                    .contains("order_processor_amqp_reconnects_total 1")
        },
    )
    .await;
    daemon.wait_ready(WAIT).await;
    env.assert_exactly_once(&sim, &ids, WAIT).await;
    assert!(
        daemon
            .metrics()
            .await
            .contains("order_processor_amqp_reconnects_total 1")
    );
}
