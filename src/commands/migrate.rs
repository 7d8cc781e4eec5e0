//! `order-processor migrate`: applies `migrations/` to `DATABASE_URL`
//! (creating the database if needed), then exits. Its output is its log
//! lines on stdout; the daemon applies the same migrations at start when
//! `database.migrate` is set.

use super::{CommandError, TELEMETRY_FLUSH};
use crate::adapters::postgres::{self, DatabaseError};
use crate::config::Settings;
use crate::telemetry::{LogTarget, Telemetry};

/// The command: starts telemetry, migrates, exports the traces.
pub async fn run(settings: &Settings) -> Result<(), CommandError> {
    let telemetry = Telemetry::init("order-processor", LogTarget::Stdout)?;
    let result = migrate(settings).await;
    telemetry.shutdown(TELEMETRY_FLUSH);
    Ok(result?)
}

/// Applies the migrations over a pool of one connection, closed after.
async fn migrate(settings: &Settings) -> Result<(), DatabaseError> {
    let url = settings.database.url.expose();
    let pool = postgres::pool(url, 1)?;
    postgres::migrate(url, &pool).await?;
    pool.close().await;
    Ok(())
}
