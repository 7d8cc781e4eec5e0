//! `OrderRepository` over PostgreSQL with sqlx.
//!
//! Every order asks "already processed?" and "save this" on its own, but the
//! questions of concurrent orders are answered together: one
//! `SELECT … WHERE order_id = ANY($1)` and one `INSERT … SELECT FROM UNNEST(…)
//! ON CONFLICT DO NOTHING` per batch (see [`crate::batch`]). That keeps the
//! database at a few statements per hundreds of orders instead of a commit
//! per order. Queries use bound parameters only.

use std::collections::HashSet;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use opentelemetry::KeyValue;
use opentelemetry::trace::{SpanBuilder, SpanKind};
use sqlx::ConnectOptions as _;
use sqlx::Connection as _;
use sqlx::Postgres;
use sqlx::migrate::MigrateDatabase;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::batch::{BatchLimits, Batcher};
use crate::domain::{OrderId, OrderRepository, ProcessedOrder, RepositoryError};
use crate::metrics::{Metrics, Statement};
use crate::telemetry;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// A statement that has not answered by then is treated as a lost database.
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_BATCH: usize = 1000;
/// A pooled connection idle for longer is pinged before it is used: under
/// load, connections are used again within milliseconds.
const PING_IF_IDLE_FOR: Duration = Duration::from_secs(1);
/// Connecting to check for (or create) the database.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Two statements of each kind at a time: while one runs (and waits for its
/// commit), the next batch can start instead of waiting for it, which
/// halves the time an order spends waiting for its batch at moderate load
/// (measured by the load benchmark: p50 publish→commit 72 → 17 ms at half
/// the drain rate). More workers take requests nearly one by one and pay
/// a statement and a commit per few orders.
const BATCH_WORKERS: usize = 2;
/// How long a batch that is not full waits for more orders. At a quarter
/// of the maximum rate, batches were otherwise one or two orders, and each
/// statement cost PostgreSQL about 70 µs, whatever its size.
const BATCH_LINGER: Duration = Duration::from_millis(2);

/// Why the database could not be set up. `Display` never shows the URL.
#[derive(Debug, thiserror::Error)]
pub enum DatabaseError {
    #[error("DATABASE_URL is not a valid PostgreSQL URL")]
    InvalidUrl(#[source] sqlx::Error),
    #[error("could not connect to the database: {0}")]
    Connect(#[source] sqlx::Error),
    #[error("could not create the database: {0}")]
    Create(#[source] sqlx::Error),
    #[error("could not apply the migrations: {0}")]
    Migrate(#[source] sqlx::migrate::MigrateError),
    #[error("the database did not answer within {} s", ADMIN_TIMEOUT.as_secs())]
    Timeout,
}

/// Builds a lazily connecting pool: the daemon starts even when the
/// database is down, and becomes ready once it answers.
pub fn pool(url: &str, max_connections: u32) -> Result<PgPool, DatabaseError> {
    let options = PgConnectOptions::from_str(url).map_err(DatabaseError::InvalidUrl)?;
    // The lookup `order_id = ANY($1)` is a prepared statement, first planned
    // while the table may be empty, when a sequential scan is right;
    // PostgreSQL would keep that generic plan while the table grows and scan
    // all of it for every batch. Custom plans use the primary key every time.
    let options = options
        .application_name("order-processor")
        .options([("plan_cache_mode", "force_custom_plan")])
        // sqlx would log a slow statement with its SQL text at WARN; what the
        // daemon logs never holds SQL. A slow batch shows in its span instead.
        .disable_statement_logging();
    Ok(PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
        // sqlx pings every connection it takes back (which finds one that
        // broke while in use), and by default again before handing it out:
        // a round trip more for every batch statement. Only a connection
        // that sat idle is checked again before use, so that one broken
        // while the daemon was idle (a database restart) is replaced
        // instead of failing a statement or the readiness check.
        .test_before_acquire(false)
        .before_acquire(|connection, taken| {
            Box::pin(async move {
                if taken.idle_for > PING_IF_IDLE_FOR {
                    connection.ping().await?;
                }
                Ok(true)
            })
        })
        .connect_lazy_with(options))
}

/// Creates the database if it does not exist, then applies `migrations/`.
/// Safe to run from several replicas at once: sqlx takes an advisory lock.
pub async fn migrate(url: &str, pool: &PgPool) -> Result<(), DatabaseError> {
    let exists = tokio::time::timeout(ADMIN_TIMEOUT, Postgres::database_exists(url))
        .await
        .map_err(|_| DatabaseError::Timeout)?
        .map_err(DatabaseError::Connect)?;
    if !exists {
        let created = tokio::time::timeout(ADMIN_TIMEOUT, Postgres::create_database(url))
            .await
            .map_err(|_| DatabaseError::Timeout)?;
        match created {
            Ok(()) => {}
            // Another replica (or `migrate`) created it in the meantime.
            Err(error) if created_meanwhile(&error) => {}
            Err(error) => return Err(DatabaseError::Create(error)),
        }
    }
    MIGRATOR.run(pool).await.map_err(DatabaseError::Migrate)
}

impl DatabaseError {
    /// Whether waiting may help: the database is unreachable or not
    /// accepting connections yet. A migration that fails on its own (a
    /// changed or missing migration, a statement error) fails again.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Connect(_) | Self::Timeout => true,
            Self::Create(error) => unreachable(error),
            Self::Migrate(sqlx::migrate::MigrateError::Execute(error)) => unreachable(error),
            Self::Migrate(_) | Self::InvalidUrl(_) => false,
        }
    }
}

/// `CREATE DATABASE` lost a race: the name exists now (SQLSTATE 42P04), or
/// the catalogue's unique index refused the second insert (23505).
fn created_meanwhile(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(error) => error
            .code()
            .is_some_and(|code| code == "42P04" || code == "23505"),
        _ => false,
    }
}

/// A lost or refused connection, or a server that is starting or stopping
/// (SQLSTATE classes 08 and 57P).
fn unreachable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(error) => error
            .code()
            .is_some_and(|code| code.starts_with("08") || code.starts_with("57P")),
        _ => false,
    }
}

/// Answers whether the database is reachable, for `/readyz`.
pub async fn ping(pool: &PgPool) -> bool {
    let check = sqlx::query("SELECT 1").execute(pool);
    matches!(
        tokio::time::timeout(Duration::from_secs(2), check).await,
        Ok(Ok(_))
    )
}

/// The longest an order can wait for the database: its lookup and its save
/// each may wait for the batch that is running and the batches that the
/// other orders in flight (`concurrency` − 1 at most) queued before it,
/// then run in their own, each bounded by the statement timeout.
pub fn longest_wait(concurrency: usize) -> Duration {
    let batches = concurrency
        .saturating_sub(1)
        .div_ceil(MAX_BATCH)
        .saturating_add(1);
    STATEMENT_TIMEOUT
        .saturating_add(BATCH_LINGER)
        .saturating_mul(u32::try_from(batches).unwrap_or(u32::MAX))
        .saturating_mul(2)
}

type Shared<T> = Result<T, Arc<sqlx::Error>>;

pub struct PostgresOrders {
    lookups: Batcher<Uuid, Shared<bool>>,
    saves: Batcher<ProcessedOrder, Shared<()>>,
    metrics: Arc<Metrics>,
}

impl PostgresOrders {
    /// Starts the batch workers on `tracker`; they stop once this value
    /// (and every clone of its handles) is dropped.
    pub fn new(
        pool: PgPool,
        tracker: &TaskTracker,
        max_waiting: usize,
        metrics: Arc<Metrics>,
    ) -> Self {
        let limits = BatchLimits {
            queue: max_waiting,
            max_batch: MAX_BATCH,
            workers: BATCH_WORKERS,
            linger: BATCH_LINGER,
        };
        let lookup_pool = pool.clone();
        let lookup_metrics = Arc::clone(&metrics);
        let lookups = Batcher::spawn(limits, tracker, move |ids: Vec<Uuid>| {
            let (pool, metrics) = (lookup_pool.clone(), Arc::clone(&lookup_metrics));
            timed(metrics, Statement::Lookup, ids, async move |ids| {
                lookup_batch(&pool, ids).await
            })
        });
        let save_metrics = Arc::clone(&metrics);
        let saves = Batcher::spawn(limits, tracker, move |orders: Vec<ProcessedOrder>| {
            let (pool, metrics) = (pool.clone(), Arc::clone(&save_metrics));
            timed(metrics, Statement::Save, orders, async move |orders| {
                save_batch(&pool, orders).await
            })
        });
        Self {
            lookups,
            saves,
            metrics,
        }
    }
}

/// Runs one batch statement and records its size and duration.
async fn timed<T, R>(
    metrics: Arc<Metrics>,
    statement: Statement,
    batch: Vec<T>,
    run: impl AsyncFnOnce(Vec<T>) -> Vec<R>,
) -> Vec<R> {
    let (orders, started) = (batch.len(), Instant::now());
    let answers = run(batch).await;
    metrics.database_batch(statement, orders, started.elapsed());
    answers
}

impl OrderRepository for PostgresOrders {
    async fn is_processed(&self, id: OrderId) -> Result<bool, RepositoryError> {
        let step = telemetry::Step::start("lookup", |span| {
            client_span(span, "SELECT", "SELECT orders")
        });
        let started = Instant::now();
        let answer = step.run(self.lookups.call(id.as_uuid())).await;
        self.metrics
            .database_wait(Statement::Lookup, started.elapsed());
        flatten(answer)
    }

    async fn save(&self, order: ProcessedOrder) -> Result<(), RepositoryError> {
        let step =
            telemetry::Step::start("save", |span| client_span(span, "INSERT", "INSERT orders"));
        let started = Instant::now();
        let answer = step.run(self.saves.call(order)).await;
        self.metrics
            .database_wait(Statement::Save, started.elapsed());
        flatten(answer)
    }
}

/// A database client span of an order (OpenTelemetry database conventions).
fn client_span(span: SpanBuilder, operation: &'static str, summary: &'static str) -> SpanBuilder {
    span.with_kind(SpanKind::Client).with_attributes([
        KeyValue::new("db.system.name", "postgresql"),
        KeyValue::new("db.operation.name", operation),
        KeyValue::new("db.collection.name", "orders"),
        KeyValue::new("db.query.summary", summary),
    ])
}

fn flatten<T>(
    answer: Result<Shared<T>, crate::batch::BatcherClosed>,
) -> Result<T, RepositoryError> {
    match answer {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(RepositoryError::Unavailable(Box::new(error))),
        Err(closed) => Err(RepositoryError::Unavailable(Box::new(closed))),
    }
}

async fn with_timeout<T>(
    query: impl std::future::Future<Output = Result<T, sqlx::Error>>,
) -> Result<T, sqlx::Error> {
    tokio::time::timeout(STATEMENT_TIMEOUT, query)
        .await
        .unwrap_or_else(|_| {
            let late = format!("no answer within {} s", STATEMENT_TIMEOUT.as_secs());
            Err(sqlx::Error::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                late,
            )))
        })
}

async fn lookup_batch(pool: &PgPool, ids: Vec<Uuid>) -> Vec<Shared<bool>> {
    let query =
        sqlx::query_scalar::<_, Uuid>("SELECT order_id FROM orders WHERE order_id = ANY($1)")
            .bind(&ids)
            .fetch_all(pool);
    match with_timeout(query).await {
        Ok(found) => {
            let found: HashSet<Uuid> = found.into_iter().collect();
            ids.iter().map(|id| Ok(found.contains(id))).collect()
        }
        Err(error) => vec![Err(Arc::new(error)); ids.len()],
    }
}

async fn save_batch(pool: &PgPool, orders: Vec<ProcessedOrder>) -> Vec<Shared<()>> {
    let count = orders.len();
    let mut ids = Vec::with_capacity(count);
    let mut customers = Vec::with_capacity(count);
    let mut currencies = Vec::with_capacity(count);
    let mut totals = Vec::with_capacity(count);
    let mut charges = Vec::with_capacity(count);
    let mut traces = Vec::with_capacity(count);
    for order in orders {
        ids.push(order.order_id.as_uuid());
        customers.push(order.customer_id.as_str().to_owned());
        currencies.push(order.currency.as_str().to_owned());
        totals.push(order.total_minor);
        charges.push(order.charge_id.as_str().to_owned());
        traces.push(order.trace_id);
    }
    let query = sqlx::query(
        "INSERT INTO orders (order_id, customer_id, currency, total_minor, charge_id, trace_id) \
         SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::int8[], $5::text[], $6::text[]) \
         ON CONFLICT (order_id) DO NOTHING",
    )
    .bind(&ids)
    .bind(&customers)
    .bind(&currencies)
    .bind(&totals)
    .bind(&charges)
    .bind(&traces)
    .execute(pool);
    match with_timeout(query).await {
        Ok(_) => vec![Ok(()); count],
        Err(error) => vec![Err(Arc::new(error)); count],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_order_waits_longer_for_the_database_when_more_orders_share_its_batches() {
        let statements = |n: u32| (STATEMENT_TIMEOUT + BATCH_LINGER).saturating_mul(n);
        assert_eq!(longest_wait(1), statements(2));
        assert_eq!(longest_wait(2), statements(4));
        assert_eq!(longest_wait(MAX_BATCH.saturating_add(1)), statements(4));
        assert_eq!(longest_wait(MAX_BATCH.saturating_add(2)), statements(6));
        assert_eq!(longest_wait(2048), statements(8));
    }
}
