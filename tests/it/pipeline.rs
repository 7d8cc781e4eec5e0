//! The daemon end to end, against the real RabbitMQ, PostgreSQL and an HTTP
//! payment provider: every disposition of the contract, observed from
//! outside the process.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::common::broker::Broker;
use crate::common::daemon::{Daemon, PaymentSim};
use crate::common::payment::{HANG, PaymentStub};
use crate::common::{ClosedPort, TestEnv, order_json};
use lapin::types::{AMQPValue, FieldTable};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_few_hundred_orders_end_as_one_row_and_one_charge_each() {
    let env = TestEnv::new().await;
    let sim = PaymentSim::start(&[]);
    let daemon = Daemon::start(&env, &sim.url, &[]).await;
    let ids = env.publish_orders(300, "tok_visa").await;
    let broker = Broker::connect().await;
    env.eventually(WAIT, "300 rows", || async {
        env.order_count().await == 300
    })
    .await;

    let stats = sim.stats().await;
    assert_eq!(stats["charges"], 300);
    let row: (String, String, i64, String) = sqlx::query_as(
        "SELECT customer_id, currency, total_minor, charge_id FROM orders WHERE order_id = $1",
    )
    .bind(ids[0])
    .fetch_one(&env.db)
    .await
    .unwrap();
    assert_eq!(
        (row.0.as_str(), row.1.as_str(), row.2),
        ("cus_42", "EUR", 2 * 1999 + 500)
    );
    let recorded = sim.charge(&ids[0].to_string()).await.unwrap();
    assert_eq!(recorded["charge_id"].as_str(), Some(row.3.as_str()));

    env.eventually(WAIT, "every delivery acked", || async {
        daemon
            .metrics()
            .await
            .contains(r#"order_processor_deliveries_total{outcome="acked",error_kind=""} 300"#)
    })
    .await;
    assert_eq!(broker.depth(&env.queue).await, 0);
    assert_eq!(broker.depth(&env.dead_letter_queue()).await, 0);
    broker.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_published_three_times_gives_one_row_and_one_charge() {
    let env = TestEnv::new().await;
    let sim = PaymentSim::start(&[]);
    let _daemon = Daemon::start(&env, &sim.url, &[]).await;
    let broker = Broker::connect().await;

    let id = Uuid::new_v4();
    for _ in 0..3 {
        broker
            .publish(
                &env.exchange,
                &env.routing_key,
                &order_json(id, "tok_visa"),
                Broker::properties(None),
            )
            .await;
    }
    env.eventually(WAIT, "one row", || async { env.order_count().await == 1 })
        .await;
    env.eventually(WAIT, "queue drained", || async {
        broker.depth(&env.queue).await == 0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    assert_eq!(env.order_count().await, 1);
    assert_eq!(sim.stats().await["charges"], 1);
    assert_eq!(broker.depth(&env.dead_letter_queue()).await, 0);
    broker.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_permanent_failure_is_dead_lettered_with_its_kind_and_the_original_body() {
    let env = TestEnv::new().await;
    let sim = PaymentSim::start(&[]);
    let _daemon = Daemon::start(&env, &sim.url, &[]).await;
    let broker = Broker::connect().await;

    let mut bad_currency =
        serde_json::from_slice::<serde_json::Value>(&order_json(Uuid::new_v4(), "tok_visa"))
            .unwrap();
    bad_currency["currency"] = "ZZZ".into();
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"this is not json".to_vec(), "malformed"),
        (vec![0xff, 0xfe, 0x00], "malformed"),
        (br#"{"order_id": 42}"#.to_vec(), "malformed"),
        (serde_json::to_vec(&bad_currency).unwrap(), "invalid"),
        (
            order_json(Uuid::new_v4(), "tok_decline"),
            "payment_declined",
        ),
        (order_json(Uuid::new_v4(), "tok_reject"), "payment_rejected"),
    ];
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    for (body, _) in &cases {
        broker
            .publish(
                &env.exchange,
                &env.routing_key,
                body,
                Broker::properties(Some(traceparent)),
            )
            .await;
    }
    env.eventually(WAIT, "all dead-lettered", || async {
        broker.depth(&env.dead_letter_queue()).await as usize == cases.len()
    })
    .await;

    let mut dead = Vec::new();
    while let Some(message) = broker.get(&env.dead_letter_queue()).await {
        dead.push(message);
    }
    for (body, kind) in &cases {
        let message = dead
            .iter()
            .find(|m| &m.body == body)
            .unwrap_or_else(|| panic!("no dead letter with the original body of the {kind} case"));
        assert_eq!(message.header("x-error-kind").as_deref(), Some(*kind));
        assert_eq!(message.header("x-attempts").as_deref(), Some("1"));
        assert_eq!(message.header("traceparent").as_deref(), Some(traceparent));
        assert_eq!(
            message
                .properties
                .content_type()
                .as_ref()
                .map(|c| c.as_str()),
            Some("application/json")
        );
        let reason = message.header("x-error-reason").unwrap();
        assert!(
            !reason.is_empty() && !reason.contains("postgres://") && !reason.contains("tok_"),
            "{reason}"
        );
    }
    assert_eq!(env.order_count().await, 0);
    assert_eq!(sim.stats().await["charges"], 0);
    broker.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_failing_twice_then_succeeding_charges_once() {
    let env = TestEnv::new().await;
    let stub = PaymentStub::start(|_, nth| if nth <= 2 { 503 } else { 201 }).await;
    let _daemon = Daemon::start(
        &env,
        &stub.url,
        &[
            ("ORDER_PROCESSOR__RETRY__BASE_DELAY_MS", "100"),
            ("ORDER_PROCESSOR__RETRY__MAX_DELAY_MS", "400"),
        ],
    )
    .await;
    let broker = Broker::connect().await;

    let id = env.publish_orders(1, "tok_visa").await[0];
    env.eventually(WAIT, "the row", || async { env.order_count().await == 1 })
        .await;

    assert_eq!(stub.calls_for(&id.to_string()).len(), 3);
    assert_eq!(stub.charge_count(), 1);
    assert_eq!(broker.depth(&env.dead_letter_queue()).await, 0);
    broker.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_that_hangs_times_out_and_the_charge_is_retried_once_later() {
    let env = TestEnv::new().await;
    let stub = PaymentStub::start(|_, nth| if nth == 1 { HANG } else { 201 }).await;
    let _daemon = Daemon::start(
        &env,
        &stub.url,
        &[
            ("ORDER_PROCESSOR__PAYMENT__TIMEOUT_MS", "500"),
            ("ORDER_PROCESSOR__RETRY__BASE_DELAY_MS", "300"),
            ("ORDER_PROCESSOR__RETRY__MAX_DELAY_MS", "300"),
        ],
    )
    .await;
    let broker = Broker::connect().await;

    let id = env.publish_orders(1, "tok_visa").await[0];
    env.eventually(WAIT, "the row", || async { env.order_count().await == 1 })
        .await;

    let calls = stub.calls_for(&id.to_string());
    assert_eq!(calls.len(), 2, "one timed-out call, one retry: {calls:?}");
    // The retry waited for the timeout (500 ms) and then the backoff
    // (150–300 ms) instead of asking again at once.
    let gap = calls[1].at - calls[0].at;
    assert!(gap >= Duration::from_millis(600), "retried after {gap:?}");
    assert_eq!(stub.charge_count(), 1);
    assert_eq!(broker.depth(&env.dead_letter_queue()).await, 0);
    broker.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_more_charges_are_in_flight_than_payment_max_in_flight() {
    let env = TestEnv::new().await;
    // Every first request hangs until the charge times out; the retry is charged.
    let stub = PaymentStub::start(|_, nth| if nth == 1 { HANG } else { 201 }).await;
    let daemon = Daemon::start(
        &env,
        &stub.url,
        &[
            ("ORDER_PROCESSOR__PAYMENT__MAX_IN_FLIGHT", "2"),
            ("ORDER_PROCESSOR__PAYMENT__TIMEOUT_MS", "3000"),
            ("ORDER_PROCESSOR__RETRY__BASE_DELAY_MS", "100"),
            ("ORDER_PROCESSOR__RETRY__MAX_DELAY_MS", "100"),
        ],
    )
    .await;

    env.publish_orders(6, "tok_visa").await;
    env.eventually(WAIT, "two requests", || async { stub.calls().len() >= 2 })
        .await;
    // While the first two hang, the other four orders wait for a turn.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(stub.calls().len(), 2, "{:?}", stub.calls());
    let metrics = daemon.metrics().await;
    assert!(
        metrics.contains("\norder_processor_payment_waiting 4\n"),
        "{metrics}"
    );
    env.eventually(WAIT, "every row", || async { env.order_count().await == 6 })
        .await;
    assert_eq!(stub.charge_count(), 6);

    // With two requests open at most, a hanging request starts only once
    // one of the two before it has timed out.
    let hangs: Vec<_> = stub
        .calls()
        .into_iter()
        .filter(|c| c.status == HANG)
        .collect();
    assert_eq!(hangs.len(), 6, "{hangs:?}");
    for three in hangs.windows(3) {
        let gap = three[2].at - three[0].at;
        assert!(
            gap >= Duration::from_secs(2),
            "a third request after {gap:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_order_does_not_hold_back_the_orders_behind_it() {
    let env = TestEnv::new().await;
    // The very first request hangs until the charge times out.
    let first = AtomicBool::new(true);
    let stub = PaymentStub::start(move |_, _| {
        if first.swap(false, Ordering::SeqCst) {
            HANG
        } else {
            201
        }
    })
    .await;
    // Room for 8 unacknowledged deliveries, 4 of them being processed.
    let daemon = Daemon::start(
        &env,
        &stub.url,
        &[
            ("ORDER_PROCESSOR__AMQP__PREFETCH", "8"),
            ("ORDER_PROCESSOR__WORKERS__CONCURRENCY", "4"),
            ("ORDER_PROCESSOR__PAYMENT__TIMEOUT_MS", "5000"),
            ("ORDER_PROCESSOR__RETRY__BASE_DELAY_MS", "100"),
            ("ORDER_PROCESSOR__RETRY__MAX_DELAY_MS", "100"),
        ],
    )
    .await;

    let slow = env.publish_orders(1, "tok_visa").await[0].to_string();
    env.eventually(WAIT, "the hanging request", || async {
        stub.calls().len() == 1
    })
    .await;
    env.publish_orders(40, "tok_visa").await;
    // Completions behind the hanging delivery cannot be acknowledged with
    // one frame while it is open. Held back, 7 of them would fill the
    // window and the broker would deliver nothing more until the timeout.
    env.eventually(Duration::from_secs(4), "40 rows", || async {
        env.order_count().await == 40
    })
    .await;
    assert_eq!(stub.calls_for(&slow).len(), 1, "the first call still hangs");
    // 4 completions wait for the hanging one (the window beyond the pool);
    // the other 36 were acknowledged one by one.
    env.eventually(Duration::from_secs(2), "36 single acks", || async {
        let metrics = daemon.metrics().await;
        metrics.contains("\norder_processor_amqp_ack_frames_total{multiple=\"false\"} 36\n")
    })
    .await;

    env.eventually(WAIT, "every row", || async {
        env.order_count().await == 41
    })
    .await;
    assert_eq!(stub.charge_count(), 41);
    let broker = Broker::connect().await;
    assert_eq!(broker.depth(&env.queue).await, 0);
    broker.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_provider_is_retried_with_backoff_then_dead_lettered() {
    let env = TestEnv::new().await;
    // Nothing listens on this port: every charge is a connection error.
    let port = ClosedPort::bind();
    let closed = format!("http://127.0.0.1:{}", port.port());
    let daemon = Daemon::start(
        &env,
        &closed,
        &[
            ("ORDER_PROCESSOR__RETRY__MAX_ATTEMPTS", "3"),
            ("ORDER_PROCESSOR__RETRY__BASE_DELAY_MS", "200"),
            ("ORDER_PROCESSOR__RETRY__MAX_DELAY_MS", "400"),
        ],
    )
    .await;
    let broker = Broker::connect().await;

    let id = env.publish_orders(1, "tok_visa").await[0];
    let body = order_json(id, "tok_visa");
    let started = std::time::Instant::now();
    env.eventually(WAIT, "the dead letter", || async {
        broker.depth(&env.dead_letter_queue()).await == 1
    })
    .await;
    // Two backoffs of at least 100 and 200 ms: no hot loop.
    assert!(started.elapsed() >= Duration::from_millis(300));

    let dead = broker.get(&env.dead_letter_queue()).await.unwrap();
    assert_eq!(dead.body, body);
    assert_eq!(
        dead.header("x-error-kind").as_deref(),
        Some("retries_exhausted")
    );
    assert_eq!(dead.header("x-attempts").as_deref(), Some("3"));
    let metrics = daemon.metrics().await;
    let failed_calls: f64 = metrics
        .lines()
        .filter(|line| {
            line.starts_with("order_processor_payment_request_seconds_count")
                && line.contains("error")
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(
        failed_calls, 3.0,
        "one connection attempt per attempt:\n{metrics}"
    );
    assert_eq!(env.order_count().await, 0);
    broker.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_that_keeps_failing_exhausts_the_attempts_with_spaced_out_delays() {
    let env = TestEnv::new().await;
    let stub = PaymentStub::start(|_, _| 503).await;
    let _daemon = Daemon::start(
        &env,
        &stub.url,
        &[
            ("ORDER_PROCESSOR__RETRY__MAX_ATTEMPTS", "4"),
            ("ORDER_PROCESSOR__RETRY__BASE_DELAY_MS", "400"),
            ("ORDER_PROCESSOR__RETRY__MAX_DELAY_MS", "1000"),
        ],
    )
    .await;
    let broker = Broker::connect().await;

    let id = env.publish_orders(1, "tok_visa").await[0];
    let body = order_json(id, "tok_visa");
    env.eventually(WAIT, "the dead letter", || async {
        broker.depth(&env.dead_letter_queue()).await == 1
    })
    .await;

    let dead = broker.get(&env.dead_letter_queue()).await.unwrap();
    assert_eq!(dead.body, body);
    assert_eq!(
        dead.header("x-error-kind").as_deref(),
        Some("retries_exhausted")
    );
    assert_eq!(dead.header("x-attempts").as_deref(), Some("4"));

    let calls = stub.calls_for(&id.to_string());
    assert_eq!(
        calls.len(),
        4,
        "the provider is called exactly MAX_ATTEMPTS times"
    );
    // After attempt n the delay is within [d/2, d], d = min(400 ms × 2^(n-1), 1000 ms).
    for (n, pair) in calls.windows(2).enumerate() {
        let ceiling = (400u64 << n).min(1000);
        let gap = pair[1].at.duration_since(pair[0].at);
        assert!(
            gap >= Duration::from_millis(ceiling / 2),
            "attempt {} was retried after {gap:?}, less than {} ms",
            n + 1,
            ceiling / 2
        );
        assert!(
            gap <= Duration::from_millis(ceiling + 2000),
            "attempt {} waited {gap:?}",
            n + 1
        );
    }
    assert_eq!(env.order_count().await, 0);
    broker.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_count_set_by_the_publisher_does_not_cut_the_retries_short() {
    let env = TestEnv::new().await;
    let stub = PaymentStub::start(|_, _| 503).await;
    let _daemon = Daemon::start(
        &env,
        &stub.url,
        &[
            ("ORDER_PROCESSOR__RETRY__MAX_ATTEMPTS", "3"),
            ("ORDER_PROCESSOR__RETRY__BASE_DELAY_MS", "100"),
            ("ORDER_PROCESSOR__RETRY__MAX_DELAY_MS", "200"),
        ],
    )
    .await;
    let broker = Broker::connect().await;
    let id = Uuid::new_v4();
    let mut headers = FieldTable::default();
    headers.insert("x-attempts".into(), AMQPValue::LongLongInt(9));
    let properties = Broker::properties(None).with_headers(headers);
    broker
        .publish(
            &env.exchange,
            &env.routing_key,
            &order_json(id, "tok_visa"),
            properties,
        )
        .await;
    env.eventually(WAIT, "the dead letter", || async {
        broker.depth(&env.dead_letter_queue()).await == 1
    })
    .await;

    let dead = broker.get(&env.dead_letter_queue()).await.unwrap();
    assert_eq!(dead.header("x-attempts").as_deref(), Some("3"));
    assert_eq!(stub.calls_for(&id.to_string()).len(), 3);
    broker.close().await;
}

/// These tests run the daemon with `OTEL_SDK_DISABLED=true`: no span is
/// recorded, yet the provider still receives the publisher's trace, with
/// its sampling decision, under a span id of the daemon's own, and the row
/// keeps the trace id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_traces_the_provider_still_receives_the_publishers_trace() {
    let env = TestEnv::new().await;
    let stub = PaymentStub::start(|_, _| 201).await;
    let _daemon = Daemon::start(&env, &stub.url, &[]).await;
    let broker = Broker::connect().await;
    let publisher_span = "00f067aa0ba902b7";
    let cases = [
        (Uuid::new_v4(), "4bf92f3577b34da6a3ce929d0e0e4736", "01"),
        (Uuid::new_v4(), "0af7651916cd43dd8448eb211c80319c", "00"),
    ];
    for (id, trace_id, flags) in &cases {
        broker
            .publish(
                &env.exchange,
                &env.routing_key,
                &order_json(*id, "tok_visa"),
                Broker::properties(Some(&format!("00-{trace_id}-{publisher_span}-{flags}"))),
            )
            .await;
    }
    env.eventually(WAIT, "both orders saved", || async {
        env.order_count().await == 2
    })
    .await;

    for (id, trace_id, flags) in &cases {
        let sent = stub.calls_for(&id.to_string()).pop().unwrap().traceparent;
        let sent = sent.unwrap();
        let parts: Vec<&str> = sent.split('-').collect();
        assert_eq!(parts.len(), 4, "{sent}");
        assert_eq!(
            (parts[0], parts[1], parts[3]),
            ("00", *trace_id, *flags),
            "{sent}"
        );
        assert_ne!(parts[2], publisher_span, "the daemon's own span id: {sent}");
        assert_ne!(parts[2], "0000000000000000", "{sent}");
        assert_eq!(env.stored_trace_id(*id).await.as_deref(), Some(*trace_id));
    }
}
