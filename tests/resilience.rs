//! Nothing lost, nothing charged twice: the daemon stopped, killed or cut
//! off from the broker in the middle of a load.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::broker::Broker;
use common::daemon::{Daemon, PaymentSim};
use common::{TestEnv, order_json};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(90);

async fn publish_orders(env: &TestEnv, count: usize) -> Vec<Uuid> {
    let broker = Broker::connect().await;
    broker.declare(env).await;
    let ids: Vec<Uuid> = (0..count).map(|_| Uuid::new_v4()).collect();
    for id in &ids {
        broker
            .publish(
                &env.exchange,
                &env.routing_key,
                &order_json(*id, "tok_visa"),
                Broker::properties(None),
            )
            .await;
    }
    broker.close().await;
    ids
}

/// Every order saved once and charged once at the provider.
async fn assert_exactly_once(env: &TestEnv, sim: &PaymentSim, ids: &[Uuid]) {
    env.eventually(WAIT, "every order saved", || async {
        env.order_count().await == ids.len() as i64
    })
    .await;
    let stats = sim.stats().await;
    assert_eq!(
        stats["charges"],
        ids.len() as u64,
        "one charge per order: {stats:?}"
    );
    let broker = Broker::connect().await;
    assert_eq!(broker.depth(&env.queue).await, 0);
    assert_eq!(broker.depth(&env.dead_letter_queue()).await, 0);
    broker.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_with_a_slow_provider_exits_0_within_the_grace_period() {
    let env = TestEnv::new().await;
    let sim = PaymentSim::start(&["--latency-ms", "300"]);
    let ids = publish_orders(&env, 150).await;
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
    assert_exactly_once(&env, &sim, &ids).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_turns_off_as_soon_as_draining_starts() {
    let env = TestEnv::new().await;
    let sim = PaymentSim::start(&["--latency-ms", "2000"]);
    let _ids = publish_orders(&env, 4).await;
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
    let ids = publish_orders(&env, 400).await;
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
    assert_exactly_once(&env, &sim, &ids).await;
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
    let ids = publish_orders(&env, 300).await;
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
    assert_exactly_once(&env, &sim, &ids).await;
    assert!(
        daemon
            .metrics()
            .await
            .contains("order_processor_amqp_reconnects_total 1")
    );
}
