//! The consumer: one broker session after another, each feeding deliveries
//! into a bounded pool of order tasks, until the daemon stops.
//!
//! A session connects, opens a consuming channel (with the prefetch as QoS)
//! and a publishing channel in confirm mode, declares the topology, and
//! pulls deliveries only when a worker permit is free and the bodies in
//! flight are within the byte budget ([`budget`]), so a slow payment
//! provider slows intake instead of growing memory. When the session dies
//! (broker restart, closed connection, failed ack), deliveries of the dead
//! channel are left to the broker to redeliver and a new session starts
//! after a jittered exponential backoff. On stop, the consumer is cancelled,
//! in-flight orders get the grace period to finish, the rest is left
//! unacknowledged, and the connection is closed.

mod budget;
mod delivery;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use lapin::message::Delivery;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use self::budget::effective_prefetch;
use self::budget::{BodyBytes, ByteBudget};
use self::delivery::process_delivery;
use super::republish::Republisher;
use super::settler::Settler;
use super::toolkit::Link;
use super::topology::TopologyNames;
use super::{AmqpError, within_answer_timeout};
use crate::domain::{OrderRepository, PaymentProvider};
use crate::health::Health;
use crate::intake::Intake;
use crate::metrics::Metrics;
use crate::retry::{self, RetryPolicy};
use crate::telemetry::OrderTracer;
use crate::telemetry::messaging::{ProcessSpans, Server};
use crate::usecase::ProcessOrder;

/// Everything the consumer needs to know, taken from the settings.
#[derive(Debug, Clone)]
pub struct ConsumerSettings {
    pub url: String,
    pub names: TopologyNames,
    /// The prefetch asked of the broker, already fitted to the byte budget
    /// ([`effective_prefetch`]).
    pub prefetch: u16,
    pub concurrency: usize,
    /// Bytes of bodies taken and not yet settled before intake pauses.
    pub max_in_flight_bytes: u64,
    pub retry: RetryPolicy,
    /// Deliveries of one message (`x-delivery-count`) after which it is
    /// dead-lettered unprocessed.
    pub redelivery_limit: u32,
    pub grace: Duration,
    pub broker_check: super::BrokerCheckSettings,
}

pub struct AmqpConsumer<P, R> {
    settings: ConsumerSettings,
    usecase: Arc<ProcessOrder<P, R>>,
    tracer: OrderTracer,
    /// What every process span shares, made once for the daemon's life.
    spans: Arc<ProcessSpans>,
    /// The broker, as spans name it (read from the URL once).
    server: Option<Server>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    /// Paused while a dependency is down; outlives the broker sessions.
    intake: Arc<Intake>,
}

/// What every order task of one session shares.
struct Session<P, R> {
    usecase: Arc<ProcessOrder<P, R>>,
    tracer: OrderTracer,
    spans: Arc<ProcessSpans>,
    /// The topology's names, to tell a retry from a fresh message.
    names: TopologyNames,
    metrics: Arc<Metrics>,
    settler: Settler,
    republisher: Republisher,
    retry: RetryPolicy,
    redelivery_limit: u32,
    intake: Arc<Intake>,
    /// Deliveries held during an outage, to be run again (they stay
    /// unacknowledged on this session's channel, so at most `prefetch`),
    /// each with its share of the byte budget.
    held: mpsc::Sender<(Delivery, BodyBytes)>,
}

const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

impl<P: PaymentProvider, R: OrderRepository> AmqpConsumer<P, R> {
    pub fn new(
        settings: ConsumerSettings,
        usecase: Arc<ProcessOrder<P, R>>,
        tracer: OrderTracer,
        metrics: Arc<Metrics>,
        health: Arc<Health>,
        intake: Arc<Intake>,
    ) -> Self {
        let names = &settings.names;
        let server = broker_server(&settings.url);
        let spans = ProcessSpans::new(
            &names.exchange,
            &names.routing_key,
            &names.queue,
            server.clone(),
        );
        Self {
            spans: Arc::new(spans),
            server,
            settings,
            usecase,
            tracer,
            metrics,
            health,
            intake,
        }
    }

    /// Consumes until `stop` is cancelled, reconnecting whenever the broker
    /// goes away. Returns once in-flight orders are settled or abandoned.
    pub async fn run(self, stop: CancellationToken) {
        let pool = WorkerPool::new(self.settings.concurrency, self.settings.max_in_flight_bytes);
        let mut backoff = BACKOFF_MIN;
        let mut reconnecting = false;
        while !stop.is_cancelled() {
            let started = Instant::now();
            let ended = self.session(&stop, &pool, reconnecting).await;
            self.health.set_broker(false);
            let Err(error) = ended else { break };
            if started.elapsed() > BACKOFF_MAX {
                backoff = BACKOFF_MIN;
            }
            let pause = retry::jittered(backoff);
            tracing::warn!(%error, retry_in_ms = pause.as_millis(), "broker session ended; reconnecting");
            backoff = backoff.saturating_mul(2).min(BACKOFF_MAX);
            reconnecting = true;
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(pause) => {}
            }
        }
        // Tasks of sessions that died are still tracked; none may outlive the daemon.
        pool.drain(self.settings.grace).await;
    }

    async fn session(
        &self,
        stop: &CancellationToken,
        pool: &WorkerPool,
        reconnecting: bool,
    ) -> Result<(), AmqpError> {
        let settings = &self.settings;
        // The pid in the name lets an operator find this replica's connection.
        let name = format!("order-processor pid {}", std::process::id());
        // The link's channel, in confirm mode, carries retries and dead letters.
        let link = Link::open(
            &settings.url,
            &name,
            &settings.names,
            settings.retry.max_attempts,
        )
        .await?;
        let connection = &link.connection;
        let publishing = link.channel.clone();
        let consuming =
            within_answer_timeout(connection.create_channel(), AmqpError::Channel).await?;
        super::broker_check::spawn(settings, &pool.tasks, stop);
        let qos = consuming.basic_qos(settings.prefetch, BasicQosOptions::default());
        within_answer_timeout(qos, AmqpError::Channel).await?;

        let ack_failed = CancellationToken::new();
        // The settler is tracked with the order tasks: it ends after the last
        // of them has settled, so draining them drains it too.
        let settler = Settler::spawn(
            consuming.clone(),
            usize::from(settings.prefetch),
            settings.concurrency,
            &pool.tasks,
            ack_failed.clone(),
            Arc::clone(&self.metrics),
        );
        let (held, held_again) = mpsc::channel(usize::from(settings.prefetch).max(1));
        let session = Arc::new(Session {
            usecase: Arc::clone(&self.usecase),
            tracer: self.tracer.clone(),
            spans: Arc::clone(&self.spans),
            names: settings.names.clone(),
            metrics: Arc::clone(&self.metrics),
            settler,
            republisher: Republisher::new(
                publishing.clone(),
                settings.names.clone(),
                link.frame_max(),
            )
            .at(self.server.clone()),
            retry: settings.retry,
            redelivery_limit: settings.redelivery_limit,
            intake: Arc::clone(&self.intake),
            held,
        });
        let consume = consuming.basic_consume(
            settings.names.queue.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        );
        let consumer = within_answer_timeout(consume, AmqpError::Channel).await?;
        let consumer_tag = consumer.tag();
        self.health.set_broker(true);
        if reconnecting {
            self.metrics.reconnected();
        }
        tracing::info!(queue = %settings.names.queue, prefetch = settings.prefetch, "consuming");

        let deliveries = Deliveries {
            consumer,
            held: held_again,
        };
        let ended = self
            .take_deliveries(deliveries, session, stop, &ack_failed, pool)
            .await;
        ended?;

        // Stopping on purpose: no new deliveries, then let the orders finish.
        self.health.set_broker(false);
        let cancel = consuming.basic_cancel(consumer_tag, BasicCancelOptions::default());
        if let Err(error) = within_answer_timeout(cancel, AmqpError::Channel).await {
            tracing::warn!(%error, "could not cancel the consumer");
        }
        pool.drain(settings.grace).await;
        link.close(&[&consuming]).await;
        Ok(())
    }

    /// Hands deliveries to order tasks while intake is open (or a test of a
    /// failing dependency is due) and a worker permit is free.
    async fn take_deliveries(
        &self,
        mut deliveries: Deliveries,
        session: Arc<Session<P, R>>,
        stop: &CancellationToken,
        ack_failed: &CancellationToken,
        pool: &WorkerPool,
    ) -> Result<(), AmqpError> {
        loop {
            let admission = tokio::select! {
                biased;
                () = ack_failed.cancelled() => return Err(AmqpError::AckFailed),
                admission = self.intake.admit(stop) => match admission {
                    Some(admission) => admission,
                    None => return Ok(()),
                },
            };
            let next = deliveries.next(stop, ack_failed, pool).await;
            let (delivery, bytes, permit) = match next {
                Ok(Some(next)) => next,
                Ok(None) => {
                    self.intake.abandon(admission);
                    return Ok(());
                }
                Err(error) => {
                    self.intake.abandon(admission);
                    return Err(error);
                }
            };
            let session = Arc::clone(&session);
            let interrupt = pool.interrupt.clone();
            // Boxed: an order's future is a few KiB, which the runtime
            // would otherwise copy several times as it makes the task, and
            // again as the task ends; a box is copied once.
            pool.tasks.spawn(Box::pin(async move {
                process_delivery(&session, delivery, bytes, admission, &interrupt).await;
                drop(permit);
            }));
        }
    }
}

/// Where a session's deliveries come from: those held during an outage
/// first, then the broker's.
struct Deliveries {
    consumer: lapin::Consumer,
    held: mpsc::Receiver<(Delivery, BodyBytes)>,
}

impl Deliveries {
    /// The next delivery, its share of the byte budget and the worker
    /// permit to run it with; `None` once `stop` is cancelled. A delivery
    /// from the broker waits for its bytes before it is handed over, so
    /// that intake pauses while the budget is spent; a held one kept its
    /// share.
    async fn next(
        &mut self,
        stop: &CancellationToken,
        ack_failed: &CancellationToken,
        pool: &WorkerPool,
    ) -> Result<Option<(Delivery, BodyBytes, OwnedSemaphorePermit)>, AmqpError> {
        let permit = tokio::select! {
            biased;
            () = stop.cancelled() => return Ok(None),
            () = ack_failed.cancelled() => return Err(AmqpError::AckFailed),
            permit = Arc::clone(&pool.permits).acquire_owned() => permit,
        };
        let Ok(permit) = permit else { return Ok(None) };
        let delivery = tokio::select! {
            biased;
            () = stop.cancelled() => return Ok(None),
            () = ack_failed.cancelled() => return Err(AmqpError::AckFailed),
            Some(held) = self.held.recv() => return Ok(Some((held.0, held.1, permit))),
            delivery = self.consumer.next() => match delivery {
                Some(Ok(delivery)) => Ok(delivery),
                Some(Err(error)) => Err(AmqpError::Channel(error)),
                None => Err(AmqpError::ConsumerCancelled),
            },
        }?;
        let bytes = tokio::select! {
            biased;
            () = stop.cancelled() => return Ok(None),
            () = ack_failed.cancelled() => return Err(AmqpError::AckFailed),
            bytes = pool.bytes.take(delivery.data.len()) => bytes,
        };
        Ok(Some((delivery, bytes, permit)))
    }
}

/// The order tasks, for the daemon's whole life: the orders of a session
/// that died still run, and hold their permits and bytes, while the next
/// session consumes, so `concurrency` and the byte budget bound them all.
struct WorkerPool {
    tasks: TaskTracker,
    permits: Arc<Semaphore>,
    bytes: ByteBudget,
    /// Cancelled when the grace period is over: unfinished orders stop.
    interrupt: CancellationToken,
}

impl WorkerPool {
    fn new(concurrency: usize, max_in_flight_bytes: u64) -> Self {
        Self {
            tasks: TaskTracker::new(),
            permits: Arc::new(Semaphore::new(concurrency)),
            bytes: ByteBudget::new(max_in_flight_bytes),
            interrupt: CancellationToken::new(),
        }
    }

    /// Waits for in-flight orders; past `grace`, interrupts them (they are
    /// left unacknowledged) and waits for them to notice.
    async fn drain(&self, grace: Duration) {
        self.tasks.close();
        if tokio::time::timeout(grace, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                grace_ms = grace.as_millis(),
                "grace period over; leaving unfinished orders for redelivery"
            );
            self.interrupt.cancel();
            self.tasks.wait().await;
        }
        self.tasks.reopen();
    }
}

/// The broker's host and port, as spans name them (never its credentials).
fn broker_server(url: &str) -> Option<Server> {
    let uri = url.parse::<lapin::uri::AMQPUri>().ok()?;
    Some(Server::new(&uri.authority.host, uri.authority.port))
}
