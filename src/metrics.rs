//! The Prometheus metrics the daemon exposes on `/metrics`.
//!
//! One `Metrics` value is built in `commands::run`, shared by reference counting with
//! whoever records, and encoded by the HTTP server. Label values are
//! `&'static str` so that recording on the per-message path never allocates.

use std::sync::atomic::{AtomicI64, AtomicU64};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// How a delivery was settled (the `outcome` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Acked,
    Retried,
    DeadLettered,
    Requeued,
}

impl Outcome {
    /// The label's value, public so that every place naming an outcome
    /// (the process span's `order_processor.outcome` too) spells it
    /// the same way.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Acked => "acked",
            Self::Retried => "retried",
            Self::DeadLettered => "dead_lettered",
            Self::Requeued => "requeued",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeliveryLabels {
    outcome: &'static str,
    error_kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AckLabels {
    multiple: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DependencyLabels {
    dependency: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PaymentLabels {
    status_class: &'static str,
}

/// The database's two questions (the `statement` label), each answered by
/// one statement per batch of orders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Statement {
    /// "Already processed?"
    Lookup,
    /// "Save this."
    Save,
}

impl Statement {
    fn as_str(self) -> &'static str {
        match self {
            Self::Lookup => "lookup",
            Self::Save => "save",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatementLabels {
    statement: &'static str,
}

/// The series of one statement, resolved once so that recording takes no
/// family lock.
struct StatementSeries {
    /// What each order waited for its answer: its batch forming, then the
    /// statement.
    wait: Histogram,
    /// How long each batch statement took.
    duration: Histogram,
    /// How many orders each batch statement answered.
    orders: Histogram,
}

pub struct Metrics {
    registry: Registry,
    deliveries: Family<DeliveryLabels, Counter>,
    processing: Histogram,
    in_flight: Gauge<i64, AtomicI64>,
    reconnects: Counter,
    /// The two series of `order_processor_amqp_ack_frames`, resolved once
    /// so that counting a frame takes no lock: (multiple, one by one).
    ack_frames: (Counter, Counter),
    payment_requests: Family<PaymentLabels, Histogram>,
    payment_waiting: Gauge<i64, AtomicI64>,
    /// (lookup, save).
    database: (StatementSeries, StatementSeries),
    circuit_open: Family<DependencyLabels, Gauge<i64, AtomicI64>>,
    payment_rate_limit: Gauge<f64, AtomicU64>,
}

/// Counts one order among those waiting for a turn to charge, until dropped.
pub struct PaymentWait<'a>(&'a Gauge<i64, AtomicI64>);

impl Drop for PaymentWait<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

fn latency_buckets() -> impl Iterator<Item = f64> {
    // 0.5 ms … ~33 s: from a local payment provider to a slow one near its timeout.
    exponential_buckets(0.0005, 2.0, 17)
}

fn batch_buckets() -> impl Iterator<Item = f64> {
    // 1 … 1024 orders: a batch takes at most 1000.
    exponential_buckets(1.0, 2.0, 11)
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let deliveries = Family::<DeliveryLabels, Counter>::default();
        let processing = Histogram::new(latency_buckets());
        let in_flight = Gauge::<i64, AtomicI64>::default();
        let reconnects = Counter::default();
        let ack_frame_family = Family::<AckLabels, Counter>::default();
        // One statement each: the guard `get_or_create` returns holds the
        // family's lock until the end of its statement.
        let together = ack_frame_family.get_or_create_owned(&AckLabels { multiple: "true" });
        let alone = ack_frame_family.get_or_create_owned(&AckLabels { multiple: "false" });
        let ack_frames = (together, alone);
        let payment_requests = Family::<PaymentLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(latency_buckets())
        });
        let payment_waiting = Gauge::<i64, AtomicI64>::default();
        let database = database_series(&mut registry);
        let circuit_open = Family::<DependencyLabels, Gauge<i64, AtomicI64>>::default();
        for dependency in ["payment", "database"] {
            circuit_open
                .get_or_create(&DependencyLabels { dependency })
                .set(0);
        }
        let payment_rate_limit = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "order_processor_payment_rate_limit",
            "Charges per second the provider is sent while it limits the rate (429); 0 when charges are not paced",
            payment_rate_limit.clone(),
        );
        registry.register(
            "order_processor_circuit_open",
            "1 while intake is paused by an outage of this dependency",
            circuit_open.clone(),
        );
        registry.register(
            "order_processor_deliveries",
            "Deliveries settled, by outcome and error kind",
            deliveries.clone(),
        );
        registry.register(
            "order_processor_processing_seconds",
            "Time from receiving a delivery to settling it",
            processing.clone(),
        );
        registry.register(
            "order_processor_in_flight",
            "Deliveries being processed now",
            in_flight.clone(),
        );
        registry.register(
            "order_processor_amqp_reconnects",
            "Times the broker connection was re-established after a loss",
            reconnects.clone(),
        );
        registry.register(
            "order_processor_amqp_ack_frames",
            "basic.ack frames sent: multiple=\"true\" settles every delivery up to its tag",
            ack_frame_family,
        );
        registry.register(
            "order_processor_payment_request_seconds",
            "Duration of calls to the payment provider, by status class",
            payment_requests.clone(),
        );
        registry.register(
            "order_processor_payment_waiting",
            "Orders waiting for a turn to charge (payment.max_in_flight)",
            payment_waiting.clone(),
        );
        Self {
            registry,
            deliveries,
            processing,
            in_flight,
            reconnects,
            ack_frames,
            payment_requests,
            payment_waiting,
            database,
            circuit_open,
            payment_rate_limit,
        }
    }

    /// The rate charges are paced at, or `None` when they are not.
    pub fn payment_rate_limit(&self, rate: Option<f64>) {
        self.payment_rate_limit.set(rate.unwrap_or(0.0));
    }

    /// Marks the circuit of `dependency` open (1) or closed (0).
    pub fn circuit(&self, dependency: &'static str, open: bool) {
        self.circuit_open
            .get_or_create(&DependencyLabels { dependency })
            .set(i64::from(open));
    }

    pub fn delivery_settled(&self, outcome: Outcome, error_kind: &'static str, took: Duration) {
        self.deliveries
            .get_or_create(&DeliveryLabels {
                outcome: outcome.as_str(),
                error_kind,
            })
            .inc();
        self.processing.observe(took.as_secs_f64());
    }

    pub fn in_flight(&self) -> &Gauge<i64, AtomicI64> {
        &self.in_flight
    }

    pub fn reconnected(&self) {
        self.reconnects.inc();
    }

    /// One `basic.ack` frame sent, settling one delivery or (`multiple`)
    /// every delivery up to its tag.
    pub fn ack_frame_sent(&self, multiple: bool) {
        let (together, alone) = &self.ack_frames;
        if multiple { together } else { alone }.inc();
    }

    /// `status_class` is `2xx`, `4xx`, `5xx` or `error` (no answer).
    pub fn payment_request(&self, status_class: &'static str, took: Duration) {
        self.payment_requests
            .get_or_create(&PaymentLabels { status_class })
            .observe(took.as_secs_f64());
    }

    /// An order starts waiting for a turn to charge; it stops when the
    /// returned value is dropped.
    pub fn payment_wait(&self) -> PaymentWait<'_> {
        self.payment_waiting.inc();
        PaymentWait(&self.payment_waiting)
    }

    /// An order got the answer to its database question after `took`.
    pub fn database_wait(&self, statement: Statement, took: Duration) {
        self.statement(statement).wait.observe(took.as_secs_f64());
    }

    /// One batch statement answered `orders` orders in `took`.
    pub fn database_batch(&self, statement: Statement, orders: usize, took: Duration) {
        let series = self.statement(statement);
        series.duration.observe(took.as_secs_f64());
        // Exact for any batch size (at most 1000).
        series.orders.observe(orders as f64);
    }

    fn statement(&self, statement: Statement) -> &StatementSeries {
        match statement {
            Statement::Lookup => &self.database.0,
            Statement::Save => &self.database.1,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

/// Registers the three database histograms and resolves the series of
/// both statements.
fn database_series(registry: &mut Registry) -> (StatementSeries, StatementSeries) {
    let wait = Family::<StatementLabels, Histogram>::new_with_constructor(|| {
        Histogram::new(latency_buckets())
    });
    let duration = Family::<StatementLabels, Histogram>::new_with_constructor(|| {
        Histogram::new(latency_buckets())
    });
    let orders = Family::<StatementLabels, Histogram>::new_with_constructor(|| {
        Histogram::new(batch_buckets())
    });
    let series = |statement: Statement| {
        let labels = StatementLabels {
            statement: statement.as_str(),
        };
        StatementSeries {
            wait: wait.get_or_create_owned(&labels),
            duration: duration.get_or_create_owned(&labels),
            orders: orders.get_or_create_owned(&labels),
        }
    };
    let both = (series(Statement::Lookup), series(Statement::Save));
    registry.register(
        "order_processor_database_wait_seconds",
        "Time an order waits for the answer to its database question: its batch forming, then the statement",
        wait,
    );
    registry.register(
        "order_processor_database_statement_seconds",
        "Duration of each batch statement",
        duration,
    );
    registry.register(
        "order_processor_database_batch_orders",
        "Orders answered by each batch statement",
        orders,
    );
    both
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn both_ack_frame_series_exist_from_the_start_and_count_apart() {
        let metrics = Metrics::new();
        metrics.ack_frame_sent(true);
        metrics.ack_frame_sent(true);
        metrics.ack_frame_sent(false);
        let text = metrics.encode().unwrap();
        assert!(
            text.contains("\norder_processor_amqp_ack_frames_total{multiple=\"true\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("\norder_processor_amqp_ack_frames_total{multiple=\"false\"} 1\n"),
            "{text}"
        );
        let fresh = Metrics::new().encode().unwrap();
        assert!(
            fresh.contains("\norder_processor_amqp_ack_frames_total{multiple=\"false\"} 0\n"),
            "{fresh}"
        );
    }

    #[test]
    fn each_statement_has_its_own_database_series_from_the_start() {
        let metrics = Metrics::new();
        metrics.database_batch(Statement::Save, 3, Duration::from_millis(4));
        metrics.database_batch(Statement::Save, 5, Duration::from_millis(6));
        metrics.database_wait(Statement::Save, Duration::from_millis(7));
        let text = metrics.encode().unwrap();
        for line in [
            "order_processor_database_batch_orders_sum{statement=\"save\"} 8.0",
            "order_processor_database_batch_orders_count{statement=\"save\"} 2",
            "order_processor_database_batch_orders_bucket{le=\"4.0\",statement=\"save\"} 1",
            "order_processor_database_statement_seconds_count{statement=\"save\"} 2",
            "order_processor_database_wait_seconds_count{statement=\"save\"} 1",
            "order_processor_database_wait_seconds_count{statement=\"lookup\"} 0",
            "order_processor_database_batch_orders_count{statement=\"lookup\"} 0",
        ] {
            assert!(text.contains(&format!("\n{line}\n")), "{line} in\n{text}");
        }
    }
}
