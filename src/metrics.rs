//! The Prometheus metrics the daemon exposes on `/metrics`.
//!
//! One `Metrics` value is built in `app::run`, shared by reference counting with
//! whoever records, and encoded by the HTTP server. Label values are
//! `&'static str` so that recording on the per-message path never allocates.

use std::sync::atomic::AtomicI64;
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
    fn as_str(self) -> &'static str {
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
struct PaymentLabels {
    status_class: &'static str,
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
        }
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

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
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
}
