//! Memory bounded in bytes: orders of the largest size the contract admits
//! (64 KiB), held by a provider that never answers, keep the daemon within
//! its byte budget (`workers.max_in_flight_bytes`), whatever the worker
//! pool and the configured prefetch would allow; and the daemon keeps its
//! pages small, so that what a burst freed can go back to the system.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::cast_precision_loss
)]

use crate::common;

use std::time::Duration;

use common::broker::Broker;
use common::daemon::Daemon;
use common::payment::{HANG, PaymentStub};
use common::{TestEnv, metric};
use lapin::options::BasicPublishOptions;
use uuid::Uuid;

const ORDERS: usize = 2_000;
/// Just under the contract's 64 KiB.
const BODY_BYTES: usize = 65_000;
const BUDGET: u64 = 32 << 20;
/// The largest body the contract admits; the prefetch is capped at
/// `BUDGET / LARGEST`.
const LARGEST: u64 = 64 * 1024;
/// Resident memory per byte of body in flight, at most: the body as the
/// AMQP client buffered it (its buffer may have grown to twice the body),
/// and what an order in flight holds besides (its task, span, decoded
/// order and request to the provider). See deploy/README.md, "Tuning and
/// sizing".
const RSS_PER_BUDGET_BYTE: u64 = 3;
/// Allocator arenas and caches that fill once under load, whatever the
/// budget.
const RSS_MARGIN: u64 = 24 << 20;
/// How long the orders are watched while they sit in flight.
const WATCH: Duration = Duration::from_secs(12);

/// A valid order padded with a field the decoder ignores (CONTRACT §3:
/// unknown fields are ignored) to `BODY_BYTES`.
fn large_order(id: Uuid) -> Vec<u8> {
    let mut order: serde_json::Value =
        serde_json::from_slice(&common::order_json(id, "tok_visa")).unwrap();
    let unpadded = order.to_string().len() + r#","note":"""#.len();
    order["note"] = "x".repeat(BODY_BYTES - unpadded).into();
    let body = order.to_string().into_bytes();
    assert_eq!(body.len(), BODY_BYTES);
    body
}

/// Publishes every order, waiting for all the broker's confirms at the end.
async fn publish_large_orders(env: &TestEnv) {
    let broker = Broker::connect().await;
    broker.declare(env).await;
    let mut confirms = Vec::with_capacity(ORDERS);
    for _ in 0..ORDERS {
        let confirm = broker
            .channel
            .basic_publish(
                env.exchange.as_str().into(),
                env.routing_key.as_str().into(),
                BasicPublishOptions::default(),
                &large_order(Uuid::new_v4()),
                Broker::properties(None),
            )
            .await
            .unwrap();
        confirms.push(confirm);
    }
    for confirm in confirms {
        assert!(
            confirm.await.unwrap().is_ack(),
            "the broker refused an order"
        );
    }
    broker.close().await;
}

/// The daemon's resident memory, in bytes.
fn rss(daemon: &Daemon) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", daemon.child.id())).unwrap();
    let line = status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

const MIB: f64 = 1024.0 * 1024.0;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_orders_held_by_a_hung_provider_stay_within_the_byte_budget() {
    let env = TestEnv::new().await;
    let provider = PaymentStub::start(|_, _| HANG).await;
    let budget = BUDGET.to_string();
    let daemon = Daemon::start(
        &env,
        &provider.url,
        &[
            ("ORDER_PROCESSOR__WORKERS__MAX_IN_FLIGHT_BYTES", &budget),
            // The defaults would take every order: the budget must bound them.
            ("ORDER_PROCESSOR__WORKERS__CONCURRENCY", "2048"),
            ("ORDER_PROCESSOR__AMQP__PREFETCH", "4096"),
            // The orders stay in flight for the whole test.
            ("ORDER_PROCESSOR__PAYMENT__TIMEOUT_MS", "600000"),
        ],
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = rss(&daemon);

    publish_large_orders(&env).await;
    let cap = BUDGET / LARGEST;
    env.eventually(Duration::from_secs(120), "orders in flight", || async {
        metric(&daemon.metrics().await, "order_processor_in_flight") >= cap as f64
    })
    .await;

    // Nothing is settled while the provider hangs: every order not ready
    // in the queue is a delivery the daemon holds unacknowledged.
    let broker = Broker::connect().await;
    let (mut peak, mut most_unacked, mut most_in_flight) = (idle, 0, 0.0_f64);
    let watched = tokio::time::Instant::now();
    while watched.elapsed() < WATCH {
        peak = peak.max(rss(&daemon));
        let ready = u64::from(broker.depth(&env.queue).await);
        most_unacked = most_unacked.max(ORDERS as u64 - ready);
        let in_flight = metric(&daemon.metrics().await, "order_processor_in_flight");
        most_in_flight = most_in_flight.max(in_flight);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    broker.close().await;
    let growth = peak.saturating_sub(idle);
    let bound = BUDGET * RSS_PER_BUDGET_BYTE + RSS_MARGIN;
    eprintln!(
        "idle RSS {:.1} MiB, peak {:.1} MiB, growth {:.1} MiB (bound {:.1} MiB); \
         at most {most_unacked} unacknowledged, {most_in_flight} in flight (cap {cap})",
        idle as f64 / MIB,
        peak as f64 / MIB,
        growth as f64 / MIB,
        bound as f64 / MIB,
    );
    assert!(
        most_in_flight <= cap as f64,
        "{most_in_flight} orders in flight, more than {cap}"
    );
    assert!(
        most_unacked <= cap,
        "{most_unacked} deliveries unacknowledged, more than {cap}"
    );
    assert!(
        growth <= bound,
        "RSS grew by {growth} bytes, more than {bound}"
    );
    assert!(
        daemon
            .logs()
            .contains("amqp.prefetch lowered so that a full window of 64 KiB orders fits"),
        "no line said the prefetch was lowered:\n{}",
        daemon.logs()
    );
}

/// A 2 MiB transparent huge page stays resident while any byte of it is
/// used, which kept a burst's memory after it had drained: the daemon turns
/// them off for itself, whatever the machine's setting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_runs_without_transparent_huge_pages() {
    let env = TestEnv::new().await;
    let provider = PaymentStub::start(|_, _| 201).await;
    let daemon = Daemon::start(&env, &provider.url, &[]).await;
    let status = std::fs::read_to_string(format!("/proc/{}/status", daemon.child.id())).unwrap();
    let thp = status
        .lines()
        .find_map(|line| line.strip_prefix("THP_enabled:"))
        .expect("the kernel reports THP_enabled (Linux 5.0 and later)");
    assert_eq!(
        thp.trim(),
        "0",
        "transparent huge pages are on for the daemon"
    );
}
