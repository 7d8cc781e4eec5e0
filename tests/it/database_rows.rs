//! One row the database refuses fails only its own order: the repository
//! called directly with a batch of orders of which one cannot be stored,
//! and the daemon end to end, with a provider whose charge id for one order
//! the database refuses. The other orders are saved on their first attempt;
//! the refused one is retried and dead-lettered as `retries_exhausted`,
//! and the database is never taken for down.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

use crate::common;
use std::sync::Arc;
use std::time::Duration;

use crate::common::daemon::Daemon;
use crate::common::payment::PaymentStub;
use crate::common::{SHORT_RETRIES, TestEnv, metric, metric_sum};
use futures_util::future::join_all;
use order_processor::adapters::postgres::{self, PostgresOrders};
use order_processor::domain::{
    ChargeId, Currency, CustomerId, OrderId, OrderRepository, ProcessedOrder, RepositoryError,
};
use order_processor::metrics::Metrics;
use serde_json::Value;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(60);

/// A charge id PostgreSQL's `text` cannot store: it holds a NUL.
const NUL_CHARGE_ID: &str = "ch_secret\u{0}tail";

/// A check constraint the test adds to its own database, and a charge id
/// that breaks it.
const REFUSED_CHARGE_ID: &str = "ch_refused_secret";
const REFUSE_CHARGE_ID: &str = "ALTER TABLE orders ADD CONSTRAINT charge_id_not_refused \
     CHECK (charge_id NOT LIKE 'ch_refused%')";

fn processed(charge_id: &str) -> ProcessedOrder {
    ProcessedOrder {
        order_id: OrderId::from_uuid(Uuid::new_v4()),
        customer_id: CustomerId::parse("cus_42").unwrap(),
        currency: Currency::parse("EUR").unwrap(),
        total_minor: 4498,
        charge_id: ChargeId::new(charge_id),
        trace_id: None,
    }
}

/// The repository over the test's database, migrated.
async fn repository(env: &TestEnv, tracker: &TaskTracker) -> (PostgresOrders, Arc<Metrics>) {
    let url = env.database_url();
    let pool = postgres::pool(&url, 4).unwrap();
    postgres::migrate(&url, &pool).await.unwrap();
    let metrics = Arc::new(Metrics::new());
    let orders = PostgresOrders::new(pool, tracker, 1000, Arc::clone(&metrics));
    (orders, metrics)
}

/// Saves every order at once: on this single-threaded runtime all of them
/// are queued before the batch worker runs, so they share one statement.
async fn save_together(
    orders: &PostgresOrders,
    rows: &[ProcessedOrder],
) -> Vec<Result<(), RepositoryError>> {
    join_all(rows.iter().cloned().map(|row| orders.save(row))).await
}

/// The SQLSTATE PostgreSQL answered with, behind a repository error.
fn sqlstate(error: &RepositoryError) -> Option<String> {
    let source = std::error::Error::source(error)?;
    let error = source.downcast_ref::<Arc<sqlx::Error>>()?;
    Some(error.as_database_error()?.code()?.into_owned())
}

async fn saved(env: &TestEnv, row: &ProcessedOrder) -> bool {
    sqlx::query_scalar::<_, i64>("SELECT count(*) FROM orders WHERE order_id = $1")
        .bind(row.order_id.as_uuid())
        .fetch_one(&env.db)
        .await
        .unwrap()
        == 1
}

#[tokio::test]
async fn a_row_the_database_cannot_store_fails_only_its_own_order_of_a_batch() {
    let env = TestEnv::new().await;
    let tracker = TaskTracker::new();
    let (orders, metrics) = repository(&env, &tracker).await;
    let rows: Vec<ProcessedOrder> = (0..50)
        .map(|n| processed(if n == 29 { NUL_CHARGE_ID } else { "ch_ok" }))
        .collect();

    let answers = save_together(&orders, &rows).await;

    let encoded = metrics.encode().unwrap();
    assert_eq!(
        metric(
            &encoded,
            "order_processor_database_batch_orders_count{statement=\"save\"}"
        ),
        1.0,
        "the 50 orders were one batch:\n{encoded}"
    );
    for (n, (row, answer)) in rows.iter().zip(&answers).enumerate() {
        if n == 29 {
            let error = answer.as_ref().unwrap_err();
            assert!(
                matches!(error, RepositoryError::RowRejected(_)),
                "{error:?}"
            );
            assert!(!error.is_outage());
            assert_eq!(
                error.to_string(),
                "the order database refused this order's row"
            );
            assert_eq!(sqlstate(error).as_deref(), Some("22021"), "{error:?}");
            assert!(!saved(&env, row).await);
        } else {
            assert!(answer.is_ok(), "order {n}: {answer:?}");
            assert!(saved(&env, row).await, "order {n}");
        }
    }
    assert_eq!(env.order_count().await, 49);
}

#[tokio::test]
async fn rows_that_break_a_constraint_fail_only_their_own_orders_wherever_they_are() {
    let env = TestEnv::new().await;
    let tracker = TaskTracker::new();
    let (orders, _metrics) = repository(&env, &tracker).await;
    sqlx::query(REFUSE_CHARGE_ID)
        .execute(&env.db)
        .await
        .unwrap();
    let refused = [0, 1, 137, 499];
    let rows: Vec<ProcessedOrder> = (0..500)
        .map(|n| {
            processed(if refused.contains(&n) {
                REFUSED_CHARGE_ID
            } else {
                "ch_ok"
            })
        })
        .collect();

    let answers = save_together(&orders, &rows).await;

    for (n, answer) in answers.iter().enumerate() {
        if refused.contains(&n) {
            assert!(
                matches!(answer, Err(RepositoryError::RowRejected(_))),
                "order {n}: {answer:?}"
            );
        } else {
            assert!(answer.is_ok(), "order {n}: {answer:?}");
        }
    }
    assert_eq!(env.order_count().await, 496);

    // Saved again (a redelivery), the saved rows are no conflict and the
    // refused ones are refused again.
    let again = save_together(&orders, &rows).await;
    let rejected = again
        .iter()
        .filter(|answer| matches!(answer, Err(RepositoryError::RowRejected(_))))
        .count();
    assert_eq!(rejected, refused.len());
    assert_eq!(env.order_count().await, 496);
}

#[tokio::test]
async fn a_batch_that_fails_for_every_row_alike_is_an_outage_not_refused_rows() {
    let env = TestEnv::new().await;
    let tracker = TaskTracker::new();
    let (orders, _metrics) = repository(&env, &tracker).await;
    // Every statement fails now (42P01: no such table), whatever its rows.
    sqlx::query("ALTER TABLE orders RENAME TO orders_elsewhere")
        .execute(&env.db)
        .await
        .unwrap();
    let rows: Vec<ProcessedOrder> = (0..20).map(|_| processed("ch_ok")).collect();

    let answers = save_together(&orders, &rows).await;

    for answer in &answers {
        let error = answer.as_ref().unwrap_err();
        assert!(
            matches!(error, RepositoryError::Unavailable(_)),
            "{error:?}"
        );
        assert!(error.is_outage());
    }
}

/// The daemon's JSON log lines at WARN that carry this field and value.
fn warnings_with(daemon: &Daemon, field: &str, value: &str) -> Vec<Value> {
    daemon
        .logs()
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| line["level"] == "WARN" && line[field] == value)
        .collect()
}

/// Fifty orders of which one is charged with `bad_charge_id`; `prepare`
/// runs on the test's database once the daemon has migrated it.
async fn one_refused_order_among_fifty(
    bad_charge_id: &'static str,
    prepare: Option<&'static str>,
    sqlstate: &str,
) {
    let env = TestEnv::new().await;
    let ids: Vec<Uuid> = (0..50).map(|_| Uuid::new_v4()).collect();
    let bad = ids[17].to_string();
    let stub = PaymentStub::start_with_charge_ids(|_, _| 201, {
        let bad = bad.clone();
        move |key| (key == bad).then(|| bad_charge_id.to_owned())
    })
    .await;
    let daemon = Daemon::start(&env, &stub.url, &SHORT_RETRIES).await;
    if let Some(sql) = prepare {
        sqlx::query(sql).execute(&env.db).await.unwrap();
    }
    let broker = common::broker::Broker::connect().await;
    for id in &ids {
        broker
            .publish(
                &env.exchange,
                &env.routing_key,
                &common::order_json(*id, "tok_visa"),
                common::broker::Broker::properties(None),
            )
            .await;
    }

    env.eventually(WAIT, "the refused order dead-lettered", || async {
        broker.depth(&env.dead_letter_queue()).await == 1
    })
    .await;
    assert_eq!(env.order_count().await, 49);
    for id in &ids {
        let key = id.to_string();
        let expected = if key == bad { 4 } else { 1 };
        assert_eq!(stub.calls_for(&key).len(), expected, "calls for {key}");
    }
    assert_eq!(stub.charge_count(), 50, "one charge per order");

    let dead = broker.get(&env.dead_letter_queue()).await.unwrap();
    assert_eq!(dead.body, common::order_json(ids[17], "tok_visa"));
    assert_eq!(
        dead.header("x-error-kind").as_deref(),
        Some("retries_exhausted")
    );
    assert_eq!(
        dead.header("x-error-reason").as_deref(),
        Some("the order database refused this order's row")
    );
    assert_eq!(dead.header("x-attempts").as_deref(), Some("4"));
    assert_eq!(broker.depth(&env.queue).await, 0);
    broker.close().await;

    let metrics = daemon.metrics().await;
    assert_eq!(
        metric_sum(
            &metrics,
            "order_processor_deliveries_total{outcome=\"retried\""
        ),
        3.0,
        "only the refused order was retried:\n{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            "order_processor_circuit_open{dependency=\"database\"}"
        ),
        0.0
    );
    let logs = daemon.logs();
    assert!(!logs.contains("circuit open"), "{logs}");
    // Each attempt's refusal is logged once, with its SQLSTATE and the
    // order, never the value.
    let refusals = warnings_with(&daemon, "order.id", &bad);
    assert_eq!(refusals.len(), 4, "{logs}");
    for refusal in &refusals {
        assert_eq!(refusal["sqlstate"], sqlstate, "{refusal}");
        assert_eq!(refusal["statement"], "save", "{refusal}");
    }
    assert!(!logs.contains("ch_secret") && !logs.contains("ch_refused_secret"));
    assert!(!logs.contains("INSERT"), "no SQL in the logs");
}

/// The adapter refuses a charge id the database could not store before it
/// reaches a batch: only that order fails (as a transient payment failure),
/// and the 49 others are saved at their first attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_charge_id_with_a_nul_fails_only_its_order_and_the_other_49_are_saved_at_once() {
    let env = TestEnv::new().await;
    let ids: Vec<Uuid> = (0..50).map(|_| Uuid::new_v4()).collect();
    let bad = ids[17].to_string();
    let stub = PaymentStub::start_with_charge_ids(|_, _| 201, {
        let bad = bad.clone();
        move |key| (key == bad).then(|| NUL_CHARGE_ID.to_owned())
    })
    .await;
    let daemon = Daemon::start(&env, &stub.url, &SHORT_RETRIES).await;
    let broker = common::broker::Broker::connect().await;
    for id in &ids {
        broker
            .publish(
                &env.exchange,
                &env.routing_key,
                &common::order_json(*id, "tok_visa"),
                common::broker::Broker::properties(None),
            )
            .await;
    }
    env.eventually(WAIT, "the order with the NUL dead-lettered", || async {
        broker.depth(&env.dead_letter_queue()).await == 1
    })
    .await;
    assert_eq!(env.order_count().await, 49);
    for id in &ids {
        let key = id.to_string();
        let expected = if key == bad { 4 } else { 1 };
        assert_eq!(stub.calls_for(&key).len(), expected, "calls for {key}");
    }
    let dead = broker.get(&env.dead_letter_queue()).await.unwrap();
    assert_eq!(
        dead.header("x-error-kind").as_deref(),
        Some("retries_exhausted")
    );
    let reason = dead.header("x-error-reason").unwrap_or_default();
    assert!(reason.contains("charge_id"), "{reason}");
    let metrics = daemon.metrics().await;
    assert_eq!(
        metric_sum(
            &metrics,
            "order_processor_deliveries_total{outcome=\"retried\""
        ),
        3.0,
        "only that order was retried:\n{metrics}"
    );
    broker.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_that_breaks_a_constraint_fails_only_its_order_and_the_other_49_are_saved_at_once() {
    one_refused_order_among_fifty(REFUSED_CHARGE_ID, Some(REFUSE_CHARGE_ID), "23514").await;
}

/// The scans of `orders` PostgreSQL has counted so far: (sequential, index).
async fn scans_of_orders(env: &TestEnv) -> (i64, i64) {
    // A new connection, so that no cached statistics snapshot is read.
    let mut connection = <sqlx::PgConnection as sqlx::Connection>::connect(&env.database_url())
        .await
        .unwrap();
    let scans = sqlx::query_as::<_, (i64, i64)>(
        "SELECT seq_scan, coalesce(idx_scan, 0) FROM pg_stat_user_tables WHERE relname = 'orders'",
    )
    .fetch_one(&mut connection)
    .await
    .unwrap();
    sqlx::Connection::close(connection).await.unwrap();
    scans
}

#[tokio::test]
async fn lookups_use_the_primary_key_even_where_a_sequential_scan_looks_cheaper() {
    let env = TestEnv::new().await;
    let tracker = TaskTracker::new();
    let url = env.database_url();
    let pool = postgres::pool(&url, 4).unwrap();
    postgres::migrate(&url, &pool).await.unwrap();
    let orders = PostgresOrders::new(pool.clone(), &tracker, 1000, Arc::new(Metrics::new()));
    // A table of one page, its statistics fresh: the planner's own choice
    // for a lookup of many ids would be to read all of it.
    let stored: Vec<Uuid> = (0..100).map(|_| Uuid::new_v4()).collect();
    sqlx::query(
        "INSERT INTO orders (order_id, customer_id, currency, total_minor, charge_id) \
         SELECT id, 'cus_42', 'EUR', 100, 'ch_ok' FROM UNNEST($1::uuid[]) AS id",
    )
    .bind(&stored)
    .execute(&env.db)
    .await
    .unwrap();
    sqlx::query("ANALYZE orders")
        .execute(&env.db)
        .await
        .unwrap();
    // ANALYZE reads the table, and counts as a sequential scan: once it is
    // counted, the scans from here on are the lookups'.
    env.eventually(WAIT, "the ANALYZE is counted", || async {
        scans_of_orders(&env).await.0 > 0
    })
    .await;
    let before = scans_of_orders(&env).await;

    let mut ids: Vec<OrderId> = stored[..50]
        .iter()
        .copied()
        .map(OrderId::from_uuid)
        .collect();
    ids.extend((0..150).map(|_| OrderId::from_uuid(Uuid::new_v4())));
    let answers = join_all(ids.iter().map(|id| orders.is_processed(*id))).await;
    // The daemon's connections report their statistics as they close.
    drop(orders);
    tracker.close();
    tracker.wait().await;
    pool.close().await;

    let found = answers
        .iter()
        .filter(|answer| *answer.as_ref().unwrap())
        .count();
    assert_eq!(found, 50, "every stored order was found, and only those");
    env.eventually(WAIT, "the lookups' scans are counted", || async {
        let (sequential, index) = scans_of_orders(&env).await;
        sequential + index > before.0 + before.1
    })
    .await;
    let after = scans_of_orders(&env).await;
    assert_eq!(
        after.0, before.0,
        "no sequential scan of orders: {before:?} → {after:?}"
    );
}
