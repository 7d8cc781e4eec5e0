//! A dependency down for longer than the retry budget, a few orders that
//! always fail among many that succeed, and a message that keeps crashing
//! its consumer: no order is dead-lettered because a dependency was down,
//! and the orders that do fail still fail as they should.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

use crate::common;
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::common::broker::Broker;
use crate::common::daemon::{Daemon, PaymentSim, SimOutage};
use crate::common::payment::{HANG, PaymentStub};
use crate::common::{SHORT_RETRIES, TestEnv, metric, metric_sum, publish_paced};
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_outage_longer_than_the_retry_budget_dead_letters_nothing() {
    let env = TestEnv::new().await;
    let down = Arc::new(AtomicBool::new(true));
    let stub = PaymentStub::start({
        let down = Arc::clone(&down);
        move |_, _| {
            if down.load(Ordering::SeqCst) {
                503
            } else {
                201
            }
        }
    })
    .await;
    Broker::connect().await.declare(&env).await;
    let daemon = Daemon::start(&env, &stub.url, &SHORT_RETRIES).await;

    let outage = Instant::now();
    let published = publish_paced(&env, 1000, 100);
    env.eventually(Duration::from_secs(10), "the circuit opens", || async {
        metric(
            &daemon.metrics().await,
            "order_processor_circuit_open{dependency=\"payment\"}",
        ) == 1.0
    })
    .await;
    assert!(daemon.logs().contains("circuit open"), "{}", daemon.logs());
    // The provider is a third party: its outage never makes the replica unready.
    assert_eq!(daemon.status("/readyz").await, Some(200));
    let ids = published.await.unwrap();
    tokio::time::sleep_until((outage + Duration::from_secs(30)).into()).await;
    down.store(false, Ordering::SeqCst);
    let ended = Instant::now();

    let second_half = outage + Duration::from_secs(15);
    let late_calls = stub
        .calls()
        .iter()
        .filter(|call| call.at >= second_half && call.at < ended)
        .count();
    assert!(
        late_calls <= 20,
        "{late_calls} calls in the outage's second half"
    );
    env.eventually(Duration::from_secs(40), "every order saved", || async {
        env.order_count().await == ids.len() as i64
    })
    .await;
    println!("all saved {:?} after the outage", ended.elapsed());
    assert_eq!(stub.charge_count(), ids.len(), "one charge per order");
    let broker = Broker::connect().await;
    assert_eq!(broker.depth(&env.dead_letter_queue()).await, 0);
    broker.close().await;
    let metrics = daemon.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "order_processor_circuit_open{dependency=\"payment\"}"
        ),
        0.0
    );
    assert!(
        daemon.logs().contains("circuit closed"),
        "{}",
        daemon.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minority_of_failing_orders_retries_and_dead_letters_as_without_a_circuit() {
    let env = TestEnv::new().await;
    let broker = Broker::connect().await;
    broker.declare(&env).await;
    let mut ids = Vec::new();
    let mut failing = HashSet::new();
    for n in 0..230 {
        let id = Uuid::new_v4();
        if n % 23 < 3 {
            failing.insert(id.to_string());
        }
        ids.push(id);
    }
    let stub = PaymentStub::start({
        let failing = failing.clone();
        move |key, _| if failing.contains(key) { 503 } else { 201 }
    })
    .await;
    for id in &ids {
        let body = common::order_json(*id, "tok_visa");
        broker
            .publish(
                &env.exchange,
                &env.routing_key,
                &body,
                Broker::properties(None),
            )
            .await;
    }
    let daemon = Daemon::start(&env, &stub.url, &SHORT_RETRIES).await;

    env.eventually(Duration::from_secs(60), "30 dead letters", || async {
        broker.depth(&env.dead_letter_queue()).await == 30
    })
    .await;
    env.eventually(Duration::from_secs(10), "200 rows", || async {
        env.order_count().await == 200
    })
    .await;
    for key in &failing {
        assert_eq!(stub.calls_for(key).len(), 4, "MAX_ATTEMPTS calls for {key}");
    }
    while let Some(dead) = broker.get(&env.dead_letter_queue()).await {
        assert_eq!(
            dead.header("x-error-kind").as_deref(),
            Some("retries_exhausted")
        );
        assert_eq!(dead.header("x-attempts").as_deref(), Some("4"));
    }
    let metrics = daemon.metrics().await;
    assert!(!daemon.logs().contains("circuit open"), "{}", daemon.logs());
    assert_eq!(
        metric(
            &metrics,
            "order_processor_circuit_open{dependency=\"payment\"}"
        ),
        0.0
    );
    broker.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_keeps_crashing_its_consumer_is_dead_lettered_at_the_redelivery_limit() {
    let env = TestEnv::new().await;
    let poison = Uuid::new_v4();
    let poison_key = poison.to_string();
    // The poison order's charge never returns: each daemon is killed while
    // it waits, as a crash on that message would end it.
    let stub = PaymentStub::start({
        let poison_key = poison_key.clone();
        move |key, _| if key == poison_key { HANG } else { 201 }
    })
    .await;
    let broker = Broker::connect().await;
    broker.declare(&env).await;
    broker
        .publish(
            &env.exchange,
            &env.routing_key,
            &common::order_json(poison, "tok_visa"),
            Broker::properties(None),
        )
        .await;
    let limit = [("ORDER_PROCESSOR__AMQP__REDELIVERY_LIMIT", "3")];
    for crash in 1..=3 {
        let mut daemon = Daemon::start(&env, &stub.url, &limit).await;
        env.eventually(
            Duration::from_secs(30),
            "the poison order's charge",
            || async { stub.calls_for(&poison_key).len() == crash },
        )
        .await;
        daemon.stop_with("KILL", Duration::from_secs(10));
    }

    let daemon = Daemon::start(&env, &stub.url, &limit).await;
    let others = env.publish_orders(20, "tok_visa").await;
    env.eventually(Duration::from_secs(30), "the dead letter", || async {
        broker.depth(&env.dead_letter_queue()).await == 1
    })
    .await;
    env.eventually(Duration::from_secs(30), "the other orders", || async {
        env.order_count().await == others.len() as i64
    })
    .await;
    let dead = broker.get(&env.dead_letter_queue()).await.unwrap();
    assert_eq!(dead.body, common::order_json(poison, "tok_visa"));
    assert_eq!(
        dead.header("x-error-kind").as_deref(),
        Some("redelivery_limit")
    );
    assert_eq!(stub.calls_for(&poison_key).len(), 3, "not charged again");
    assert_eq!(broker.depth(&env.queue).await, 0);
    drop(daemon);
    broker.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_that_limits_the_rate_is_charged_close_to_its_limit_and_nothing_is_dead_lettered()
 {
    let env = TestEnv::new().await;
    let sim = PaymentSim::start(&["--rate-limit", "200"]);
    let ids = env.publish_orders(2000, "tok_visa").await;
    let daemon = Daemon::start(&env, &sim.url, &[]).await;
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let adapted = sim.stats().await;
    env.eventually(Duration::from_secs(40), "every order saved", || async {
        env.order_count().await == ids.len() as i64
    })
    .await;
    let took = started.elapsed();
    let end = sim.stats().await;
    println!("{took:?}: after 3 s {adapted:?}, at the end {end:?}");

    // 2000 orders at 200/s take 10 s at best: at least 70 % of the allowed rate.
    assert!(took <= Duration::from_millis(14_285), "took {took:?}");
    let late_calls = end["requests"] - adapted["requests"];
    let late_throttled = end["rate_limited"] - adapted["rate_limited"];
    assert!(
        late_throttled * 4 <= late_calls,
        "{late_throttled} of {late_calls} calls throttled once adapted"
    );
    assert!(end["requests"] <= 3 * ids.len() as u64, "{end:?}");
    assert_eq!(end["charges"], ids.len() as u64);
    let broker = Broker::connect().await;
    assert_eq!(broker.depth(&env.dead_letter_queue()).await, 0);
    broker.close().await;
    drop(daemon);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_one_killed_and_every_order_published_three_times_charge_and_save_each_once()
{
    let env = TestEnv::new().await;
    // A charge takes long enough that two replicas often hold copies of
    // one order at once: the second is answered 409 while the first runs.
    let sim = PaymentSim::start(&["--latency-ms", "50"]);
    let broker = Broker::connect().await;
    broker.declare(&env).await;
    let settings = [
        ("ORDER_PROCESSOR__WORKERS__CONCURRENCY", "64"),
        ("ORDER_PROCESSOR__RETRY__BASE_DELAY_MS", "200"),
        ("ORDER_PROCESSOR__RETRY__MAX_DELAY_MS", "1000"),
    ];
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(Daemon::start(&env, &sim.url, &settings).await);
    }
    let ids: Vec<Uuid> = (0..500).map(|_| Uuid::new_v4()).collect();
    for id in &ids {
        let body = common::order_json(*id, "tok_visa");
        for _ in 0..3 {
            broker
                .publish(
                    &env.exchange,
                    &env.routing_key,
                    &body,
                    Broker::properties(None),
                )
                .await;
        }
    }
    env.eventually(Duration::from_secs(60), "progress", || async {
        env.order_count().await >= 100
    })
    .await;
    replicas[0].stop_with("KILL", Duration::from_secs(10));
    replicas[0] = Daemon::start(&env, &sim.url, &settings).await;

    env.eventually(Duration::from_secs(120), "every order saved", || async {
        env.order_count().await == ids.len() as i64
    })
    .await;
    env.eventually(Duration::from_secs(60), "the queue drained", || async {
        broker.depth(&env.queue).await == 0
    })
    .await;
    let stats = sim.stats().await;
    println!("{stats:?}");
    assert_eq!(stats["charges"], ids.len() as u64, "one charge per order");
    assert!(
        stats["in_progress"] > 0,
        "copies met at the provider: {stats:?}"
    );
    assert_eq!(broker.depth(&env.dead_letter_queue()).await, 0);
    broker.close().await;
}

/// Calls the daemon made to the provider so far, answered or not.
fn payment_calls(metrics: &str) -> f64 {
    metric_sum(metrics, "order_processor_payment_request_seconds_count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_refusing_connections_for_30_s_dead_letters_nothing() {
    let env = TestEnv::new().await;
    let sim = PaymentSim::start(&[]);
    Broker::connect().await.declare(&env).await;
    let daemon = Daemon::start(&env, &sim.url, &SHORT_RETRIES).await;
    sim.outage(SimOutage::Refuse).await;

    let outage = Instant::now();
    let published = publish_paced(&env, 1000, 100);
    env.eventually(Duration::from_secs(10), "the circuit opens", || async {
        metric(
            &daemon.metrics().await,
            "order_processor_circuit_open{dependency=\"payment\"}",
        ) == 1.0
    })
    .await;
    assert_eq!(daemon.status("/readyz").await, Some(200));
    let ids = published.await.unwrap();
    tokio::time::sleep_until((outage + Duration::from_secs(15)).into()).await;
    let halfway = payment_calls(&daemon.metrics().await);
    tokio::time::sleep_until((outage + Duration::from_secs(30)).into()).await;
    let late_calls = payment_calls(&daemon.metrics().await) - halfway;
    sim.outage(SimOutage::Off).await;
    let ended = Instant::now();
    assert!(
        late_calls <= 20.0,
        "{late_calls} calls in the outage's second half"
    );

    env.eventually(Duration::from_secs(40), "every order saved", || async {
        env.order_count().await == ids.len() as i64
    })
    .await;
    println!("all saved {:?} after the outage", ended.elapsed());
    assert_eq!(
        sim.stats().await["charges"],
        ids.len() as u64,
        "one charge each"
    );
    let broker = Broker::connect().await;
    assert_eq!(broker.depth(&env.dead_letter_queue()).await, 0);
    broker.close().await;
}
