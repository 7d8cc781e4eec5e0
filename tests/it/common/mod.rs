//! Helpers for the black-box tests: every test gets its own queue and
//! exchange names and a brand-new database, runs the real `order-processor`
//! binary against the real RabbitMQ and PostgreSQL of the machine, and
//! cleans up after itself.

#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

pub mod broker;
pub mod daemon;
pub mod otlp;
pub mod payment;
pub mod tls;

use std::time::Duration;

use sqlx::postgres::PgPoolOptions;
use sqlx::{AssertSqlSafe, PgPool};
use uuid::Uuid;

pub const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const ADMIN_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// The services' lock of this process, over RabbitMQ, PostgreSQL and the
/// machine's CPU. Every test that talks to the services holds it shared for
/// its whole run ([`TestEnv::new`]); a test that takes a service away from
/// everyone (stops it, restarts it) or needs the machine to itself holds it
/// exclusively ([`TestEnv::alone`]). tokio's lock is fair: once an exclusive
/// holder waits, no new shared holder starts before it.
static SERVICES: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// A test's hold on [`SERVICES`], released when the test's [`TestEnv`] is
/// dropped (after its cleanup).
pub enum ServicesHold {
    Shared(tokio::sync::RwLockReadGuard<'static, ()>),
    Alone(tokio::sync::RwLockWriteGuard<'static, ()>),
}

impl ServicesHold {
    /// Shared with the other ordinary tests.
    pub async fn shared() -> Self {
        Self::Shared(SERVICES.read().await)
    }

    /// No other test that uses the services runs meanwhile.
    pub async fn alone() -> Self {
        Self::Alone(SERVICES.write().await)
    }

    /// [`Self::shared`] for a test without a runtime (a plain `#[test]`).
    pub fn shared_blocking() -> Self {
        Self::Shared(SERVICES.blocking_read())
    }
}

/// One test's private world: names on the broker and a database.
pub struct TestEnv {
    pub id: String,
    pub exchange: String,
    pub queue: String,
    pub routing_key: String,
    pub database: String,
    pub db: PgPool,
    /// Declared last, so released after the cleanup of [`Drop`].
    _services: ServicesHold,
}

impl TestEnv {
    /// A test's world, run beside the other ordinary tests.
    pub async fn new() -> Self {
        Self::holding(ServicesHold::shared().await).await
    }

    /// A test's world, with no other test that uses the services running
    /// meanwhile: for tests that stop or restart a service, or that measure
    /// something the rest of the suite would disturb.
    pub async fn alone() -> Self {
        Self::holding(ServicesHold::alone().await).await
    }

    async fn holding(services: ServicesHold) -> Self {
        let id = Uuid::new_v4().simple().to_string()[..12].to_owned();
        let database = format!("op_test_{id}");
        let admin = PgPoolOptions::new()
            .max_connections(1)
            .connect(ADMIN_DATABASE_URL)
            .await
            .expect("PostgreSQL must run on 127.0.0.1:5432");
        sqlx::query(AssertSqlSafe(format!("CREATE DATABASE \"{database}\"")))
            .execute(&admin)
            .await
            .unwrap();
        admin.close().await;
        let db = PgPoolOptions::new()
            .max_connections(2)
            .connect(&format!("postgres://postgres@127.0.0.1:5432/{database}"))
            .await
            .unwrap();
        Self {
            exchange: format!("test.{id}.orders"),
            queue: format!("test.{id}.process"),
            routing_key: "order.created".to_owned(),
            id,
            database,
            db,
            _services: services,
        }
    }

    pub fn database_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:5432/{}", self.database)
    }

    pub fn dead_letter_queue(&self) -> String {
        format!("{}.dead", self.queue)
    }

    /// Publishes `count` valid orders paid with `token` (declaring the
    /// topology first, so the daemon need not run yet); returns their ids.
    pub async fn publish_orders(&self, count: usize, token: &str) -> Vec<Uuid> {
        let broker = broker::Broker::connect().await;
        broker.declare(self).await;
        let ids: Vec<Uuid> = (0..count).map(|_| Uuid::new_v4()).collect();
        for id in &ids {
            broker
                .publish(
                    &self.exchange,
                    &self.routing_key,
                    &order_json(*id, token),
                    broker::Broker::properties(None),
                )
                .await;
        }
        broker.close().await;
        ids
    }

    /// Every order saved once, charged once at `payment-sim`, and both
    /// queues empty.
    pub async fn assert_exactly_once(
        &self,
        sim: &daemon::PaymentSim,
        ids: &[Uuid],
        within: Duration,
    ) {
        self.eventually(within, "every order saved", || async {
            self.order_count().await == ids.len() as i64
        })
        .await;
        let stats = sim.stats().await;
        assert_eq!(
            stats["charges"],
            ids.len() as u64,
            "one charge per order: {stats:?}"
        );
        let broker = broker::Broker::connect().await;
        assert_eq!(broker.depth(&self.queue).await, 0);
        assert_eq!(broker.depth(&self.dead_letter_queue()).await, 0);
        broker.close().await;
    }

    /// The trace id saved with an order's row.
    pub async fn stored_trace_id(&self, order_id: Uuid) -> Option<String> {
        sqlx::query_scalar("SELECT trace_id FROM orders WHERE order_id = $1")
            .bind(order_id)
            .fetch_one(&self.db)
            .await
            .unwrap()
    }

    /// Rows in `orders`.
    pub async fn order_count(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM orders")
            .fetch_one(&self.db)
            .await
            .unwrap()
    }

    /// Polls until `check` holds, or fails the test after `within`.
    pub async fn eventually<F, Fut>(&self, within: Duration, what: &str, mut check: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if check().await {
                return;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("timed out waiting for: {what}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        let database = self.database.clone();
        let queue = self.queue.clone();
        let exchange = self.exchange.clone();
        // Drop cannot await; a thread of its own can, even inside a test runtime.
        let cleanup = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                broker::delete_topology(&queue, &exchange).await;
                if let Ok(admin) = PgPoolOptions::new()
                    .max_connections(1)
                    .connect(ADMIN_DATABASE_URL)
                    .await
                {
                    let _ = sqlx::query(AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS \"{database}\" WITH (FORCE)"
                    )))
                    .execute(&admin)
                    .await;
                    admin.close().await;
                }
            });
        });
        let _ = cleanup.join();
    }
}

/// A valid order body with this id and payment token.
pub fn order_json(order_id: Uuid, token: &str) -> Vec<u8> {
    serde_json::json!({
        "order_id": order_id.to_string(),
        "customer_id": "cus_42",
        "currency": "EUR",
        "items": [
            {"sku": "SKU-1", "quantity": 2, "unit_price_minor": 1999},
            {"sku": "SKU-2", "quantity": 1, "unit_price_minor": 500}
        ],
        "payment_token": token,
        "created_at": "2026-11-24T10:00:00Z"
    })
    .to_string()
    .into_bytes()
}

/// Retry settings that dead-letter an order failing every time after 4
/// attempts, within about half a second.
pub const SHORT_RETRIES: [(&str, &str); 3] = [
    ("ORDER_PROCESSOR__RETRY__MAX_ATTEMPTS", "4"),
    ("ORDER_PROCESSOR__RETRY__BASE_DELAY_MS", "50"),
    ("ORDER_PROCESSOR__RETRY__MAX_DELAY_MS", "400"),
];

/// The value of one series of `/metrics`, 0 when absent.
pub fn metric(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find(|line| line.starts_with(series) && line[series.len()..].starts_with(' '))
        .and_then(|line| line.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

/// The sum of every series of `/metrics` whose name and labels start so.
pub fn metric_sum(metrics: &str, name_and_labels: &str) -> f64 {
    metrics
        .lines()
        .filter(|line| line.starts_with(name_and_labels))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Publishes `count` valid orders at about `per_second`, in the
/// background; the task returns their ids.
pub fn publish_paced(
    env: &TestEnv,
    count: usize,
    per_second: u32,
) -> tokio::task::JoinHandle<Vec<Uuid>> {
    let exchange = env.exchange.clone();
    let routing_key = env.routing_key.clone();
    tokio::spawn(async move {
        let broker = broker::Broker::connect().await;
        let gap = Duration::from_secs(1) / per_second;
        let started = tokio::time::Instant::now();
        let mut ids = Vec::with_capacity(count);
        for n in 0..count {
            let id = Uuid::new_v4();
            broker
                .publish(
                    &exchange,
                    &routing_key,
                    &order_json(id, "tok_visa"),
                    broker::Broker::properties(None),
                )
                .await;
            ids.push(id);
            tokio::time::sleep_until(started + gap * (n as u32 + 1)).await;
        }
        broker.close().await;
        ids
    })
}

/// A loopback port where nothing listens, kept so for as long as this
/// lives: a socket bound to it that never listens, so the kernel refuses
/// every connection and no other process can take the port meanwhile.
pub struct ClosedPort(tokio::net::TcpSocket);

impl ClosedPort {
    pub fn bind() -> Self {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(([127, 0, 0, 1], 0).into()).unwrap();
        Self(socket)
    }

    pub fn port(&self) -> u16 {
        self.0.local_addr().unwrap().port()
    }
}
