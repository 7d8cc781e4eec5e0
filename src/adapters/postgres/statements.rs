//! The batch statements, and each order's answer from them.
//!
//! One `SELECT … WHERE order_id = ANY($1)` answers the lookups of a batch,
//! and one `INSERT … SELECT FROM UNNEST(…) ON CONFLICT DO NOTHING` saves
//! its orders. A statement is all or nothing, so one row the database
//! refuses fails the whole save: the batch is then saved again in halves,
//! and the halves that are refused in halves again, until each refused row
//! stands alone. Only the orders of the refused rows fail, as a refusal
//! that is not an outage; the others are saved by the same call, on their
//! first attempt. Halving costs about two statements a level, some twenty
//! for one refused row among a thousand, where a statement per row would
//! cost a thousand commits.
//!
//! A failure that is not the rows' ([`super::failure`]) fails every order
//! not yet saved as unavailable at once: more statements would fail the
//! same way. Every failed statement is logged once, at WARN, with its
//! SQLSTATE and never its values.

use std::ops::Range;
use std::sync::Arc;

use sqlx::Connection as _;
use sqlx::Postgres;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnection, PgPool};
use tokio::time::Instant;
use uuid::Uuid;

use super::failure::{Diagnosis, Failure, classify};
use super::{PING_IF_IDLE_FOR, STATEMENT_TIMEOUT};
use crate::domain::ProcessedOrder;

/// A lookup's answer: processed or not, or the database's failure.
pub(super) type Found = Result<bool, Arc<sqlx::Error>>;

/// Why an order was not saved.
#[derive(Debug, Clone)]
pub(super) enum SaveFailure {
    Unavailable(Arc<sqlx::Error>),
    /// The database refused this order's row.
    Refused(Arc<sqlx::Error>),
}

pub(super) type Saved = Result<(), SaveFailure>;

/// A batch worker's connection, kept from one statement to the next, with
/// when it was last used. Taken from the pool for each statement, a
/// connection costs a round trip more, because sqlx pings it as it comes
/// back: at low rates, where a batch holds an order or two, each order paid
/// for two. A failed statement lets go of its connection (the pool tests
/// it, and closes it if it is broken), and the batcher drops a worker's
/// connection once the worker has had no order for a while, which gives it
/// back to the pool. The workers keep their connections only where the pool
/// has one more for everything else (`keeps_connections`).
#[derive(Default)]
pub(super) struct Held(Option<(PoolConnection<Postgres>, Instant)>);

impl Held {
    /// This connection if `keep`, else none: the connection goes back to
    /// the pool.
    pub(super) fn kept_if(self, keep: bool) -> Self {
        if keep { self } else { Self::default() }
    }

    fn keep(connection: PoolConnection<Postgres>) -> Self {
        Self(Some((connection, Instant::now())))
    }

    /// The connection for the next statement: the one kept, pinged first if
    /// it sat idle (a database restart may have broken it meanwhile) and
    /// replaced if that fails, or else one from the pool.
    async fn take(self, pool: &PgPool) -> Result<PoolConnection<Postgres>, sqlx::Error> {
        if let Some((mut connection, used)) = self.0 {
            if used.elapsed() <= PING_IF_IDLE_FOR || connection.ping().await.is_ok() {
                return Ok(connection);
            }
            connection.close_on_drop();
        }
        pool.acquire().await
    }
}

/// Runs `query`, failing it as timed out at `deadline`.
async fn until<T>(
    deadline: Instant,
    query: impl Future<Output = Result<T, sqlx::Error>>,
) -> Result<T, sqlx::Error> {
    tokio::time::timeout_at(deadline, query)
        .await
        .unwrap_or_else(|_| {
            let late = format!("no answer within {} s", STATEMENT_TIMEOUT.as_secs());
            Err(sqlx::Error::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                late,
            )))
        })
}

fn deadline() -> Instant {
    let now = Instant::now();
    now.checked_add(STATEMENT_TIMEOUT).unwrap_or(now)
}

pub(super) async fn lookup_batch(pool: &PgPool, held: Held, ids: Vec<Uuid>) -> (Held, Vec<Found>) {
    let lookup = async {
        let mut connection = held.take(pool).await?;
        let found =
            sqlx::query_scalar::<_, Uuid>("SELECT order_id FROM orders WHERE order_id = ANY($1)")
                .bind(&ids)
                .fetch_all(&mut *connection)
                .await?;
        Ok((connection, found))
    };
    match until(deadline(), lookup).await {
        Ok((connection, found)) => {
            let found: std::collections::HashSet<Uuid> = found.into_iter().collect();
            let answers = ids.iter().map(|id| Ok(found.contains(id))).collect();
            (Held::keep(connection), answers)
        }
        // Its one parameter is an array of uuids: no value of an order can
        // be refused, so any failure is the database's.
        Err(error) => {
            unavailable("lookup", ids.len(), &error);
            (Held::default(), vec![Err(Arc::new(error)); ids.len()])
        }
    }
}

pub(super) async fn save_batch(
    pool: &PgPool,
    held: Held,
    orders: Vec<ProcessedOrder>,
) -> (Held, Vec<Saved>) {
    let save = async {
        let mut connection = held.take(pool).await?;
        insert(&mut connection, &orders).await?;
        Ok(connection)
    };
    let error = match until(deadline(), save).await {
        Ok(connection) => return (Held::keep(connection), vec![Ok(()); orders.len()]),
        Err(error) => error,
    };
    let saved = match classify(&error) {
        Failure::Unavailable => {
            unavailable("save", orders.len(), &error);
            vec![Err(SaveFailure::Unavailable(Arc::new(error))); orders.len()]
        }
        Failure::Refused => save_in_halves(pool, &orders, error).await,
    };
    (Held::default(), saved)
}

/// Saves what it can of a batch whose statement was refused. The halving
/// has a statement timeout of its own for all its statements, so that a
/// save batch takes at most two ([`super::longest_wait`]).
async fn save_in_halves(
    pool: &PgPool,
    orders: &[ProcessedOrder],
    refused: sqlx::Error,
) -> Vec<Saved> {
    let deadline = deadline();
    let refused = Arc::new(refused);
    let mut answers: Vec<Option<Saved>> = vec![None; orders.len()];
    // Ranges whose statement was refused, each with its error, to split.
    let mut to_split = vec![(0..orders.len(), Arc::clone(&refused))];
    let mut rows_refused = 0_usize;
    while let Some((range, error)) = to_split.pop() {
        if range.len() <= 1 {
            if let Some(order) = orders.get(range.start) {
                row_refused(order, &error);
                rows_refused = rows_refused.saturating_add(1);
            }
            answer(&mut answers, range, &Err(SaveFailure::Refused(error)));
            continue;
        }
        let middle = range.start.saturating_add(range.len() / 2);
        for half in [range.start..middle, middle..range.end] {
            let rows = orders.get(half.clone()).unwrap_or_default();
            let half_saved = async {
                let mut connection = pool.acquire().await?;
                insert(&mut connection, rows).await
            };
            match until(deadline, half_saved).await {
                Ok(()) => answer(&mut answers, half, &Ok(())),
                Err(error) => match classify(&error) {
                    Failure::Refused => to_split.push((half, Arc::new(error))),
                    Failure::Unavailable => {
                        let left = answers.iter().filter(|a| a.is_none()).count();
                        unavailable("save", left, &error);
                        let down = Err(SaveFailure::Unavailable(Arc::new(error)));
                        return finish(answers, &down);
                    }
                },
            }
        }
    }
    if rows_refused == 0 {
        // Refused as a whole but no row alone: the batch's size, say.
        let diagnosis = Diagnosis::of(&refused);
        tracing::warn!(
            statement = "save",
            orders = orders.len(),
            sqlstate = diagnosis.sqlstate,
            constraint = diagnosis.constraint,
            "the database refused a batch of orders but none of its rows alone; \
             every order was saved in smaller statements"
        );
    }
    // Every order has its answer by now; were one left, it is not saved,
    // and retrying it as an outage spends none of its attempts.
    finish(answers, &Err(SaveFailure::Unavailable(refused)))
}

fn answer(answers: &mut [Option<Saved>], range: Range<usize>, saved: &Saved) {
    for slot in answers.iter_mut().skip(range.start).take(range.len()) {
        *slot = Some(saved.clone());
    }
}

/// Every order answered, the unanswered ones with `rest`.
fn finish(answers: Vec<Option<Saved>>, rest: &Saved) -> Vec<Saved> {
    answers
        .into_iter()
        .map(|answer| answer.unwrap_or_else(|| rest.clone()))
        .collect()
}

async fn insert(
    connection: &mut PgConnection,
    orders: &[ProcessedOrder],
) -> Result<(), sqlx::Error> {
    let count = orders.len();
    let mut ids = Vec::with_capacity(count);
    let mut customers = Vec::with_capacity(count);
    let mut currencies = Vec::with_capacity(count);
    let mut totals = Vec::with_capacity(count);
    let mut charges = Vec::with_capacity(count);
    let mut traces = Vec::with_capacity(count);
    for order in orders {
        ids.push(order.order_id.as_uuid());
        customers.push(order.customer_id.as_str());
        currencies.push(order.currency.as_str());
        totals.push(order.total_minor);
        charges.push(order.charge_id.as_str());
        traces.push(order.trace_id.as_deref());
    }
    sqlx::query(
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
    .execute(connection)
    .await
    .map(|_| ())
}

fn unavailable(statement: &'static str, orders: usize, error: &sqlx::Error) {
    let diagnosis = Diagnosis::of(error);
    tracing::warn!(
        statement,
        orders,
        failure = %diagnosis.failure,
        sqlstate = diagnosis.sqlstate,
        "a database statement failed; its orders take the database as unavailable"
    );
}

fn row_refused(order: &ProcessedOrder, error: &sqlx::Error) {
    let diagnosis = Diagnosis::of(error);
    tracing::warn!(
        statement = "save",
        order.id = %order.order_id,
        sqlstate = diagnosis.sqlstate,
        constraint = diagnosis.constraint,
        table = diagnosis.table,
        column = diagnosis.column,
        "the database refused an order's row; only that order fails"
    );
}
