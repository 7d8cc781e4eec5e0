//! One delivery, from its consumer span to its settlement: the use case's
//! result becomes a disposition, and the disposition an ack, a broker-held
//! retry, a dead letter or a requeue.

use std::time::Instant;

use lapin::message::Delivery;
use opentelemetry::context::FutureExt as _;
use opentelemetry::trace::{SpanBuilder, SpanKind, Status, TraceContextExt as _};
use opentelemetry::{Context, KeyValue};
use tokio_util::sync::CancellationToken;

use super::Session;
use super::budget::BodyBytes;
use crate::adapters::amqp::headers::{self, HeaderExtractor};
use crate::disposition::{Disposition, ErrorKind, Intake};
use crate::domain::{OrderRepository, PaymentProvider};
use crate::intake::{Admission, Observed};
use crate::metrics::Outcome;
use crate::telemetry;
use crate::usecase::ProcessError;

/// Processes one delivery and settles it, inside its consumer span. A
/// delivery held because of an outage goes back to the session's `held`
/// queue with its share of the byte budget, to be run again once intake
/// resumes; any other gives its bytes back when it is settled.
pub(super) async fn handle<P: PaymentProvider, R: OrderRepository>(
    session: &Session<P, R>,
    delivery: Delivery,
    bytes: BodyBytes,
    admission: Admission,
    interrupt: &CancellationToken,
) {
    let started = Instant::now();
    session.metrics.in_flight().inc();
    let attempt = headers::attempt(
        &delivery.properties,
        &session.names,
        session.retry.max_attempts,
    );
    let order = consumer_span(session, &delivery, attempt);
    let trace_id = telemetry::context_trace_id(&order);

    let redelivered = headers::delivery_count(&delivery.properties);
    let (failure, disposition) = match Disposition::redelivered(
        redelivered,
        session.redelivery_limit,
    ) {
        Some(disposition) => {
            session.intake.observe(admission, Observed::default());
            let reason = match &disposition {
                Disposition::DeadLetter { reason, .. } => Some(reason.clone()),
                _ => None,
            };
            (reason, disposition)
        }
        None => {
            let result = tokio::select! {
                biased;
                () = interrupt.cancelled() => Err(ProcessError::Interrupted),
                result = session.usecase.execute(&delivery.data, trace_id).with_context(order.clone()) => result,
            };
            let paused = session.intake.observe(admission, Observed::of(&result));
            let intake = if paused { Intake::Paused } else { Intake::Open };
            let disposition = Disposition::decide(&result, attempt, &session.retry, intake);
            (result.err().map(|error| error.to_string()), disposition)
        }
    };
    let settled = settle(session, &delivery, attempt, disposition)
        .with_context(order.clone())
        .await;

    let span = order.span();
    let (outcome, kind) = match settled {
        Settled::Done(outcome, kind) => (outcome_name(outcome), kind),
        Settled::Held => ("held", None),
    };
    span.set_attribute(KeyValue::new("messaging.rabbitmq.outcome", outcome));
    if let Some(error) = &failure {
        let kind = kind.map_or(outcome, ErrorKind::as_str);
        span.set_attribute(KeyValue::new("error.type", kind));
        span.set_status(Status::error(error.clone()));
    }
    span.end();
    session.metrics.in_flight().dec();
    match settled {
        Settled::Done(outcome, kind) => {
            drop(bytes);
            session.metrics.delivery_settled(
                outcome,
                kind.map_or("", ErrorKind::as_str),
                started.elapsed(),
            );
        }
        // A closed queue means the session is over: the broker redelivers
        // it, and the bytes are given back as the send's error is dropped.
        Settled::Held => drop(session.held.send((delivery, bytes)).await),
    }
}

/// The consumer span, a child of the publisher's span when the message
/// carries a `traceparent` (OpenTelemetry messaging conventions), as the
/// order's context.
fn consumer_span<P, R>(session: &Session<P, R>, delivery: &Delivery, attempt: u32) -> Context {
    let properties = &delivery.properties;
    let parent = telemetry::extract(&HeaderExtractor(properties.headers().as_ref()));
    let span = || consumer_span_builder(session, delivery, attempt);
    session.tracer.start(span, "process", &parent)
}

fn consumer_span_builder<P, R>(
    session: &Session<P, R>,
    delivery: &Delivery,
    attempt: u32,
) -> SpanBuilder {
    let properties = &delivery.properties;
    // Room for the message id, and for what `handle` and the use case add
    // later (order id, outcome, error type), so that none of them grows it.
    let mut attributes = Vec::with_capacity(12);
    attributes.extend([
        KeyValue::new("messaging.system", "rabbitmq"),
        KeyValue::new("messaging.operation.type", "process"),
        KeyValue::new("messaging.operation.name", "process"),
        KeyValue::new("messaging.destination.name", session.queue.clone()),
        KeyValue::new(
            "messaging.rabbitmq.destination.routing_key",
            delivery.routing_key.to_string(),
        ),
        KeyValue::new(
            "messaging.rabbitmq.message.delivery_tag",
            i64::try_from(delivery.delivery_tag).unwrap_or(i64::MAX),
        ),
        KeyValue::new(
            "messaging.message.body.size",
            i64::try_from(delivery.data.len()).unwrap_or(i64::MAX),
        ),
        KeyValue::new("messaging.rabbitmq.attempt", i64::from(attempt)),
    ]);
    if let Some(id) = properties.message_id() {
        attributes.push(KeyValue::new("messaging.message.id", id.to_string()));
    }
    SpanBuilder::from_name(session.span_name.clone())
        .with_kind(SpanKind::Consumer)
        .with_attributes(attributes)
}

/// How carrying out a disposition ended.
#[derive(Debug, Clone, Copy)]
enum Settled {
    /// Settled on the broker (or left for redelivery), with the error kind
    /// of a failure.
    Done(Outcome, Option<ErrorKind>),
    /// Kept unacknowledged, to run again when intake resumes.
    Held,
}

/// Carries out a disposition. A copy that cannot be published (retry or
/// dead letter) leaves the original to the broker, requeued.
async fn settle<P, R>(
    session: &Session<P, R>,
    delivery: &Delivery,
    attempt: u32,
    disposition: Disposition,
) -> Settled {
    let tag = delivery.delivery_tag;
    match disposition {
        Disposition::Ack => {
            session.settler.ack(tag).await;
            Settled::Done(Outcome::Acked, None)
        }
        Disposition::LeaveUnacked => Settled::Done(Outcome::Requeued, None),
        Disposition::Hold => Settled::Held,
        Disposition::Retry { delay, reason } => {
            let parked = session
                .republisher
                .retry(&delivery.data, &delivery.properties, attempt, delay)
                .await;
            let kind = Some(ErrorKind::Transient);
            match parked {
                Ok(()) => {
                    tracing::info!(attempt, delay_ms = delay.as_millis(), %reason, "retrying later");
                    session.settler.ack(tag).await;
                    Settled::Done(Outcome::Retried, kind)
                }
                Err(error) => {
                    tracing::warn!(%error, "could not park the message for a retry; requeueing it");
                    session.settler.requeue(tag).await;
                    Settled::Done(Outcome::Requeued, kind)
                }
            }
        }
        Disposition::DeadLetter { kind, reason } => {
            let moved = session
                .republisher
                .dead_letter(
                    &delivery.data,
                    &delivery.properties,
                    attempt,
                    kind.as_str(),
                    &reason,
                )
                .await;
            match moved {
                Ok(()) => {
                    tracing::warn!(error.kind = kind.as_str(), %reason, attempt, "dead-lettered");
                    session.settler.ack(tag).await;
                    Settled::Done(Outcome::DeadLettered, Some(kind))
                }
                Err(error) => {
                    tracing::warn!(%error, "could not dead-letter the message; requeueing it");
                    session.settler.requeue(tag).await;
                    Settled::Done(Outcome::Requeued, Some(kind))
                }
            }
        }
    }
}

fn outcome_name(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Acked => "acked",
        Outcome::Retried => "retried",
        Outcome::DeadLettered => "dead_lettered",
        Outcome::Requeued => "requeued",
    }
}
