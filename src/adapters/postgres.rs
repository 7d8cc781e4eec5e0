//! `OrderRepository` over PostgreSQL with sqlx.
//!
//! Every order asks "already processed?" and "save this" on its own, but the
//! questions of concurrent orders are answered together: one
//! `SELECT … WHERE order_id = ANY($1)` and one `INSERT … SELECT FROM UNNEST(…)
//! ON CONFLICT DO NOTHING` per batch (see [`crate::batch`]). That keeps the
//! database at a few statements per hundreds of orders instead of a commit
//! per order. A row the database refuses fails only its own order
//! ([`statements`]); what a failure means is decided in [`failure`].
//! Queries use bound parameters only.

mod failure;
mod setup;
mod statements;

use std::sync::Arc;
use std::time::{Duration, Instant};

use opentelemetry::KeyValue;
use opentelemetry::trace::{SpanBuilder, SpanKind};
use opentelemetry_semantic_conventions::attribute as semconv;
use sqlx::postgres::PgPool;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

pub use self::setup::{DatabaseError, migrate, ping, pool};
use self::statements::{Found, Held, SaveFailure, Saved, lookup_batch, save_batch};

use crate::batch::{BatchLimits, Batcher};
use crate::domain::{OrderId, OrderRepository, ProcessedOrder, RepositoryError};
use crate::metrics::{Metrics, Statement};
use crate::telemetry;

/// A statement that has not answered by then is treated as a lost database.
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_BATCH: usize = 1000;
/// A pooled connection idle for longer is pinged before it is used: under
/// load, connections are used again within milliseconds.
const PING_IF_IDLE_FOR: Duration = Duration::from_secs(1);
/// A pooled connection unused for this long is closed, with the buffers a
/// large batch grew in it: after a burst the pool shrinks to what the
/// traffic uses (sqlx's own default is 10 minutes).
const IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(20);
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

/// The longest an order can wait for the database: its lookup and its save
/// each may wait for the batch that is running and the batches that the
/// other orders in flight (`concurrency` − 1 at most) queued before it,
/// then run in their own. A lookup batch is bounded by the statement
/// timeout, a save batch by twice that: its statement, then the halving of
/// a batch the database refused.
pub fn longest_wait(concurrency: usize) -> Duration {
    let batches = concurrency
        .saturating_sub(1)
        .div_ceil(MAX_BATCH)
        .saturating_add(1);
    let lookup = STATEMENT_TIMEOUT.saturating_add(BATCH_LINGER);
    let save = STATEMENT_TIMEOUT
        .saturating_mul(2)
        .saturating_add(BATCH_LINGER);
    lookup
        .saturating_add(save)
        .saturating_mul(u32::try_from(batches).unwrap_or(u32::MAX))
}

pub struct PostgresOrders {
    lookups: Batcher<Uuid, Found>,
    saves: Batcher<ProcessedOrder, Saved>,
    metrics: Arc<Metrics>,
    /// What every database span of an order says of the server, made once.
    server: [KeyValue; 4],
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
            idle: IDLE_CONNECTION_TIMEOUT,
        };
        let options = pool.connect_options();
        let server = [
            KeyValue::new(semconv::DB_SYSTEM_NAME, "postgresql"),
            KeyValue::new(
                semconv::SERVER_ADDRESS,
                Arc::<str>::from(options.get_host()),
            ),
            KeyValue::new(semconv::SERVER_PORT, i64::from(options.get_port())),
            KeyValue::new(
                semconv::DB_NAMESPACE,
                Arc::<str>::from(options.get_database().unwrap_or("postgres")),
            ),
        ];
        let keep = keeps_connections(pool.options().get_max_connections());
        let lookup_pool = pool.clone();
        let lookup_metrics = Arc::clone(&metrics);
        let lookups = Batcher::spawn(limits, tracker, move |held: Held, ids: Vec<Uuid>| {
            let (pool, metrics) = (lookup_pool.clone(), Arc::clone(&lookup_metrics));
            timed(metrics, Statement::Lookup, ids, async move |ids| {
                let (held, found) = lookup_batch(&pool, held, ids).await;
                (held.kept_if(keep), found)
            })
        });
        let save_metrics = Arc::clone(&metrics);
        let saves = Batcher::spawn(
            limits,
            tracker,
            move |held: Held, orders: Vec<ProcessedOrder>| {
                let (pool, metrics) = (pool.clone(), Arc::clone(&save_metrics));
                timed(metrics, Statement::Save, orders, async move |orders| {
                    let (held, saved) = save_batch(&pool, held, orders).await;
                    (held.kept_if(keep), saved)
                })
            },
        );
        Self {
            lookups,
            saves,
            metrics,
            server,
        }
    }
}

/// Whether each batch worker keeps its connection between statements
/// ([`statements::Held`]): only where the pool has room for all of them and
/// one more (the readiness check, the halves of a refused batch). With
/// fewer, the workers that hold one would leave the others none.
fn keeps_connections(max_connections: u32) -> bool {
    let workers = u32::try_from(BATCH_WORKERS.saturating_mul(2)).unwrap_or(u32::MAX);
    max_connections > workers
}

/// Runs one batch statement and records its size and duration.
async fn timed<T, O>(
    metrics: Arc<Metrics>,
    statement: Statement,
    batch: Vec<T>,
    run: impl AsyncFnOnce(Vec<T>) -> O,
) -> O {
    let (orders, started) = (batch.len(), Instant::now());
    let answers = run(batch).await;
    metrics.database_batch(statement, orders, started.elapsed());
    answers
}

impl OrderRepository for PostgresOrders {
    async fn is_processed(&self, id: OrderId) -> Result<bool, RepositoryError> {
        let step = telemetry::Step::start("lookup", || self.client_span("SELECT", "SELECT orders"));
        let started = Instant::now();
        let answer = step.run(self.lookups.call(id.as_uuid())).await;
        self.metrics
            .database_wait(Statement::Lookup, started.elapsed());
        flatten(answer.map(|found| found.map_err(SaveFailure::Unavailable)))
    }

    async fn save(&self, order: ProcessedOrder) -> Result<(), RepositoryError> {
        let step = telemetry::Step::start("save", || self.client_span("INSERT", "INSERT orders"));
        let started = Instant::now();
        let answer = step.run(self.saves.call(order)).await;
        self.metrics
            .database_wait(Statement::Save, started.elapsed());
        flatten(answer)
    }
}

impl PostgresOrders {
    /// A database client span of an order (OpenTelemetry database
    /// conventions): named by its query summary, `{operation} orders`, and
    /// without the statement's text or values.
    fn client_span(&self, operation: &'static str, summary: &'static str) -> SpanBuilder {
        let mut attributes = Vec::with_capacity(7);
        attributes.extend_from_slice(&self.server);
        attributes.extend([
            KeyValue::new(semconv::DB_OPERATION_NAME, operation),
            KeyValue::new(semconv::DB_COLLECTION_NAME, "orders"),
            KeyValue::new(semconv::DB_QUERY_SUMMARY, summary),
        ]);
        SpanBuilder::from_name(summary)
            .with_kind(SpanKind::Client)
            .with_attributes(attributes)
    }
}

fn flatten<T>(
    answer: Result<Result<T, SaveFailure>, crate::batch::BatcherClosed>,
) -> Result<T, RepositoryError> {
    match answer {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(SaveFailure::Unavailable(error))) => {
            Err(RepositoryError::Unavailable(Box::new(error)))
        }
        Ok(Err(SaveFailure::Refused(error))) => Err(RepositoryError::RowRejected(Box::new(error))),
        Err(closed) => Err(RepositoryError::Unavailable(Box::new(closed))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_workers_keep_their_connections_only_where_the_pool_has_one_more() {
        // Two workers for lookups and two for saves.
        assert!(!keeps_connections(1));
        assert!(!keeps_connections(4));
        assert!(keeps_connections(5));
        assert!(keeps_connections(8));
    }

    #[test]
    fn an_order_waits_longer_for_the_database_when_more_orders_share_its_batches() {
        // A lookup batch and a save batch (whose halving may take a
        // statement timeout more), for each batch waited for.
        let batches = |n: u32| (STATEMENT_TIMEOUT * 3 + BATCH_LINGER * 2).saturating_mul(n);
        assert_eq!(longest_wait(1), batches(1));
        assert_eq!(longest_wait(2), batches(2));
        assert_eq!(longest_wait(MAX_BATCH.saturating_add(1)), batches(2));
        assert_eq!(longest_wait(MAX_BATCH.saturating_add(2)), batches(3));
        assert_eq!(longest_wait(2048), batches(4));
    }
}
