//! `order-processor run`, the daemon (and what a bare `order-processor`
//! does), with its logs as JSON lines on stdout.
//!
//! Wiring: the one place that knows every concrete type. It builds the
//! adapters from the settings, hands them to the use case and the consumer,
//! and runs until a signal asks it to stop.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{CommandError, TELEMETRY_FLUSH, amqp_names};
use crate::adapters::amqp::{
    AmqpConsumer, BrokerCheckSettings, ConsumerSettings, effective_prefetch,
};
use crate::adapters::http_server::{HttpServer, HttpServerError};
use crate::adapters::payment_http::{self, HttpPaymentProvider, PaymentClientError, PaymentLimits};
use crate::adapters::postgres::{self, DatabaseError, PostgresOrders};
use crate::config::{ApiKey, Settings};
use crate::health::Health;
use crate::intake::{Intake, Watched};
use crate::metrics::Metrics;
use crate::telemetry::{LogTarget, OrderTracer, Telemetry};
use crate::usecase::ProcessOrder;

/// Why the daemon could not run. `Display` is the one line printed before
/// exiting with code 1; it never shows a secret.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Database(#[from] DatabaseError),
    #[error(transparent)]
    Payment(#[from] PaymentClientError),
    #[error(transparent)]
    Http(#[from] HttpServerError),
    #[error("could not listen for signals: {0}")]
    Signals(#[source] std::io::Error),
    #[error("the consumer ended abnormally: {0}")]
    Consumer(#[source] tokio::task::JoinError),
}

const MIGRATE_RETRY: Duration = Duration::from_secs(2);
const DATABASE_CHECK_EVERY: Duration = Duration::from_secs(1);
const BACKGROUND_GRACE: Duration = Duration::from_secs(5);

/// The command: starts telemetry, runs the daemon until it stops, then
/// exports the traces still buffered.
/// `small_pages` is what [`keep_pages_small`] returned.
pub async fn run(settings: Settings, small_pages: std::io::Result<()>) -> Result<(), CommandError> {
    let telemetry = Telemetry::init("order-processor", LogTarget::Stdout)?;
    if let Err(error) = small_pages {
        tracing::warn!(
            %error,
            "could not turn transparent huge pages off: memory freed after a burst may stay resident"
        );
    }
    let result = run_until_stopped(settings, telemetry.order_tracer()).await;
    telemetry.shutdown(TELEMETRY_FLUSH);
    Ok(result?)
}

/// Turns transparent huge pages off for this process, first thing in
/// `main`. A 2 MiB page stays resident as long as any byte of it is in use:
/// with them, the daemon held 40 MiB idle instead of 25, and after a burst
/// kept about twice that for good (the load benchmark prints both). With
/// 4 KiB pages, what a burst freed goes back to the system. The allocator
/// does not ask for huge pages (jemalloc's `thp` and `metadata_thp` stay at
/// their defaults); this also keeps the kernel from giving them unasked
/// (`transparent_hugepage=always`).
pub fn keep_pages_small() -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    rustix::thread::disable_transparent_huge_pages(true)?;
    Ok(())
}

/// Runs the daemon until SIGTERM or SIGINT, then drains and returns.
pub async fn run_until_stopped(settings: Settings, tracer: OrderTracer) -> Result<(), RunError> {
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::default());
    let stop = CancellationToken::new();
    let background = TaskTracker::new();

    // Everything that can fail is built before the first task is spawned, so
    // that a failure returns without leaving a task behind.
    let http = HttpServer::bind(
        settings.http.listen,
        Arc::clone(&health),
        Arc::clone(&metrics),
    )
    .await?;
    let on_signal = stop_on_signal(stop.clone(), Arc::clone(&health))?;
    let url = settings.database.url.expose();
    let pool = postgres::pool(url, settings.database.max_connections)?;
    let concurrency = settings.workers.concurrency;
    let payment_timeout = Duration::from_millis(settings.payment.timeout_ms);
    let payments_in_flight = settings.payment_in_flight();
    let payment_limits = PaymentLimits {
        timeout: payment_timeout,
        max_in_flight: payments_in_flight,
        min_rate: settings.payment.min_rate,
    };
    let payments = HttpPaymentProvider::new(
        settings.payment.base_url.expose(),
        settings.payment.api_key.as_ref().map(ApiKey::expose),
        payment_limits,
        Arc::clone(&metrics),
    )?;

    match http.local_addr() {
        Some(address) => tracing::info!(%address, "serving /healthz /readyz /metrics"),
        None => tracing::info!("serving /healthz /readyz /metrics"),
    }
    let http_stop = CancellationToken::new();
    background.spawn(http.serve(http_stop.clone()));
    background.spawn(on_signal);

    let migrated = if settings.database.migrate {
        migrate_when_ready(url, &pool, &stop).await
    } else {
        Ok(())
    };
    if let Err(error) = migrated {
        stop.cancel();
        http_stop.cancel();
        finish(&background).await;
        return Err(error.into());
    }
    background.spawn(watch_database(
        pool.clone(),
        Arc::clone(&health),
        stop.clone(),
    ));

    let batch_workers = TaskTracker::new();
    let orders = PostgresOrders::new(
        pool.clone(),
        &batch_workers,
        concurrency,
        Arc::clone(&metrics),
    );
    let intake = Arc::new(Intake::new(
        settings.circuit_settings(),
        Arc::clone(&metrics),
    ));
    // Every call to a dependency is counted by the intake gate as it returns.
    let usecase = Arc::new(ProcessOrder::new(
        Watched::new(payments, Arc::clone(&intake)),
        Watched::new(orders, Arc::clone(&intake)),
    ));
    let consumer = AmqpConsumer::new(
        ConsumerSettings {
            url: settings.amqp.url.expose().to_owned(),
            names: amqp_names(&settings),
            prefetch: prefetch(&settings),
            concurrency,
            max_in_flight_bytes: settings.workers.max_in_flight_bytes,
            retry: settings.retry_policy(),
            redelivery_limit: settings.amqp.redelivery_limit,
            grace: Duration::from_millis(settings.shutdown.grace_ms),
            broker_check: BrokerCheckSettings {
                management_url: settings.amqp.management_url.clone(),
                order_budget: payment_http::longest_wait(payment_limits, concurrency)
                    .saturating_add(postgres::longest_wait(concurrency)),
            },
        },
        usecase,
        tracer,
        Arc::clone(&metrics),
        Arc::clone(&health),
        intake,
    );
    // On a runtime worker rather than the thread that started the runtime:
    // the order tasks the consumer spawns then start on that worker's own
    // queue, instead of each being handed over with a cross-thread wake-up.
    let consumed = background.spawn(consumer.run(stop.clone())).await;

    // The consumer held the last use of the repository: its batch workers
    // see their queues close and finish.
    batch_workers.close();
    batch_workers.wait().await;
    pool.close().await;
    http_stop.cancel();
    stop.cancel();
    finish(&background).await;
    consumed.map_err(RunError::Consumer)?;
    tracing::info!("stopped");
    Ok(())
}

/// The prefetch to ask of the broker: the configured one, lowered to what
/// the byte budget holds of the largest bodies (said once, at start).
fn prefetch(settings: &Settings) -> u16 {
    let configured = settings.amqp.prefetch;
    let budget = settings.workers.max_in_flight_bytes;
    let effective = effective_prefetch(configured, budget);
    if effective < configured {
        tracing::info!(
            configured,
            effective,
            max_in_flight_bytes = budget,
            "amqp.prefetch lowered so that a full window of 64 KiB orders fits workers.max_in_flight_bytes"
        );
    }
    effective
}

/// Applies the migrations, waiting (until `stop`) for a database that is
/// not up yet. A migration that fails on its own is returned: retrying
/// would fail the same way, and the exit says why.
async fn migrate_when_ready(
    url: &str,
    pool: &sqlx::PgPool,
    stop: &CancellationToken,
) -> Result<(), DatabaseError> {
    loop {
        let attempt = tokio::select! {
            () = stop.cancelled() => return Ok(()),
            attempt = postgres::migrate(url, pool) => attempt,
        };
        match attempt {
            Ok(()) => return Ok(()),
            Err(error) if error.is_transient() => {
                tracing::warn!(%error, "database not ready for migrations; retrying");
            }
            Err(error) => return Err(error),
        }
        tokio::select! {
            () = stop.cancelled() => return Ok(()),
            () = tokio::time::sleep(MIGRATE_RETRY) => {}
        }
    }
}

/// Waits for the background tasks (HTTP server, signal and database
/// watchers), which stop once their tokens are cancelled; a client holding
/// the HTTP server open does not hold the exit beyond `BACKGROUND_GRACE`.
async fn finish(background: &TaskTracker) {
    background.close();
    if tokio::time::timeout(BACKGROUND_GRACE, background.wait())
        .await
        .is_err()
    {
        tracing::warn!("background tasks did not stop in time; exiting without them");
    }
}

/// Cancels `stop` at the first SIGTERM or SIGINT, turning `/readyz` off first.
fn stop_on_signal(
    stop: CancellationToken,
    health: Arc<Health>,
) -> Result<impl Future<Output = ()> + Send + 'static, RunError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).map_err(RunError::Signals)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(RunError::Signals)?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => tracing::info!("SIGTERM: draining"),
            _ = interrupt.recv() => tracing::info!("SIGINT: draining"),
            () = stop.cancelled() => return,
        }
        health.start_draining();
        stop.cancel();
    })
}

async fn watch_database(pool: sqlx::PgPool, health: Arc<Health>, stop: CancellationToken) {
    loop {
        health.set_database(postgres::ping(&pool).await);
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(DATABASE_CHECK_EVERY) => {}
        }
    }
}
