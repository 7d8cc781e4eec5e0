//! Setting the database up: the connection pool, the migrations, and the
//! readiness check, with the errors an operator reads when they fail.

use std::str::FromStr;
use std::time::Duration;

use sqlx::ConnectOptions as _;
use sqlx::Connection as _;
use sqlx::Postgres;
use sqlx::migrate::MigrateDatabase;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use super::{IDLE_CONNECTION_TIMEOUT, PING_IF_IDLE_FOR};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Connecting to check for (or create) the database.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the database could not be set up. `Display` never shows the URL.
#[derive(Debug, thiserror::Error)]
pub enum DatabaseError {
    #[error("DATABASE_URL is not a valid PostgreSQL URL")]
    InvalidUrl(#[source] sqlx::Error),
    #[error("could not connect to the database: {}", Said(.0))]
    Connect(#[source] sqlx::Error),
    #[error("could not create the database: {}", Said(.0))]
    Create(#[source] sqlx::Error),
    #[error("could not apply the migrations: {}", SaidWhileMigrating(.0))]
    Migrate(#[source] sqlx::migrate::MigrateError),
    #[error("the database did not answer within {} s", ADMIN_TIMEOUT.as_secs())]
    Timeout,
}

/// A sqlx error as an operator reads it: what PostgreSQL said and its
/// SQLSTATE, without the location in PostgreSQL's own source code that
/// sqlx appends (`… at line 938`).
struct Said<'a>(&'a sqlx::Error);

impl std::fmt::Display for Said<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            sqlx::Error::Database(error) => match error.code() {
                Some(code) => write!(f, "{} (SQLSTATE {code})", error.message()),
                None => f.write_str(error.message()),
            },
            other => other.fmt(f),
        }
    }
}

/// A migration error, its PostgreSQL part as [`Said`] shows it.
struct SaidWhileMigrating<'a>(&'a sqlx::migrate::MigrateError);

impl std::fmt::Display for SaidWhileMigrating<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use sqlx::migrate::MigrateError;
        match self.0 {
            MigrateError::Execute(error) => {
                write!(f, "while executing migrations: {}", Said(error))
            }
            MigrateError::ExecuteMigration(error, version) => {
                write!(f, "while executing migration {version}: {}", Said(error))
            }
            other => other.fmt(f),
        }
    }
}

/// Builds a lazily connecting pool: the daemon starts even when the
/// database is down, and becomes ready once it answers.
pub fn pool(url: &str, max_connections: u32) -> Result<PgPool, DatabaseError> {
    let options = PgConnectOptions::from_str(url).map_err(DatabaseError::InvalidUrl)?;
    // The lookup `order_id = ANY($1)` must use the primary key whatever the
    // table's size and statistics. Planned while the table is small, or
    // while its statistics lag behind its growth, a batch's lookup reads all
    // of it instead: a prepared statement's generic plan keeps that choice
    // while the table grows (hence custom plans), and even a custom plan
    // makes it while the statistics say the table is small. The daemon's
    // statements never need a sequential scan, so its sessions rule it out.
    let options = options
        .application_name("order-processor")
        .options([
            ("plan_cache_mode", "force_custom_plan"),
            ("enable_seqscan", "off"),
        ])
        // sqlx would log a slow statement with its SQL text at WARN; what the
        // daemon logs never holds SQL. A slow batch shows in its span instead.
        .disable_statement_logging();
    Ok(PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .idle_timeout(IDLE_CONNECTION_TIMEOUT)
        // sqlx pings every connection it takes back (which finds one that
        // broke while in use), and by default again before handing it out:
        // a round trip more for every statement (the batch workers keep
        // their connection between statements: `statements::Held`). Only a
        // connection that sat idle is checked again before use, so that one
        // broken while the daemon was idle (a database restart) is replaced
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
