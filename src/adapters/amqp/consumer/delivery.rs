//! One delivery, from its consumer span to its settlement: the use case's
//! result becomes a disposition, and the disposition an ack, a broker-held
//! retry, a dead letter or a requeue.

use std::time::Instant;

use lapin::message::Delivery;
use opentelemetry::context::FutureExt as _;
use opentelemetry::trace::{SpanBuilder, TraceContextExt as _};
use opentelemetry::{Context, KeyValue};
use tokio_util::sync::CancellationToken;

use super::Session;
use super::budget::BodyBytes;
use crate::adapters::amqp::headers::{self, HeaderExtractor};
use crate::disposition::{Disposition, ErrorKind, Intake};
use crate::domain::{OrderRepository, PaymentProvider};
use crate::intake::{Admission, Observed};
use crate::metrics::Outcome;
use crate::telemetry::messaging::{self, ORDER_ID, Settle};
use crate::telemetry::{self, Step};
use crate::usecase::{ProcessError, ProcessOrder, Processed};

/// Processes one delivery and settles it, inside its consumer span. A
/// delivery held because of an outage goes back to the session's `held`
/// queue with its share of the byte budget, to be run again once intake
/// resumes; any other gives its bytes back when it is settled.
pub(super) async fn process_delivery<P: PaymentProvider, R: OrderRepository>(
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
                result = run(session, &delivery.data, trace_id).with_context(order.clone()) => result,
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

    let (outcome, kind) = match settled {
        Settled::Done(outcome, kind) => (outcome.as_str(), kind),
        Settled::Held => ("held", None),
    };
    let error = failure.map(|error| (kind.map_or(outcome, ErrorKind::as_str), error));
    messaging::finish_process(&order, outcome, error);
    order.span().end();
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

/// The use case's two steps, the first under a span of its own; the
/// order's id goes on the process span once it is known.
async fn run<P: PaymentProvider, R: OrderRepository>(
    session: &Session<P, R>,
    body: &[u8],
    trace_id: Option<String>,
) -> Result<Processed, ProcessError> {
    let validate = Step::start("validate", || SpanBuilder::from_name("validate"));
    let order = validate.run_now(|| ProcessOrder::<P, R>::validate(body))?;
    drop(validate);
    Context::map_current(|process| {
        let id = KeyValue::new(ORDER_ID, order.id().to_string());
        process.span().set_attribute(id);
    });
    session.usecase.process(order, trace_id).await
}

/// The consumer span, a child of the publisher's span when the message
/// carries a `traceparent` (OpenTelemetry messaging conventions), as the
/// order's context.
fn consumer_span<P, R>(session: &Session<P, R>, delivery: &Delivery, attempt: u32) -> Context {
    let properties = &delivery.properties;
    let parent = telemetry::extract(&HeaderExtractor(properties.headers().as_ref()));
    let described = messaging::Delivery {
        exchange: delivery.exchange.as_str(),
        routing_key: delivery.routing_key.as_str(),
        delivery_tag: delivery.delivery_tag,
        body_size: delivery.data.len(),
        message_id: properties.message_id().as_ref().map(|id| id.as_str()),
        correlation_id: properties.correlation_id().as_ref().map(|id| id.as_str()),
        attempt,
    };
    let span = || session.spans.builder(&described, &parent);
    session.tracer.start(span, "process", &parent)
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
            ack(session, tag).await;
            Settled::Done(Outcome::Acked, None)
        }
        Disposition::LeaveUnacked => Settled::Done(Outcome::Requeued, None),
        Disposition::Hold => Settled::Held,
        Disposition::Retry { delay, reason } => {
            // Boxed, as is the dead letter's: a publish's future is several
            // KiB, which would otherwise make every order's task that much
            // larger, to be copied when it is spawned, for a rare path.
            let parked = Box::pin(session.republisher.retry(
                &delivery.data,
                &delivery.properties,
                attempt,
                delay,
            ))
            .await;
            let kind = Some(ErrorKind::Transient);
            match parked {
                Ok(()) => {
                    tracing::info!(attempt, delay_ms = delay.as_millis(), %reason, "retrying later");
                    ack(session, tag).await;
                    Settled::Done(Outcome::Retried, kind)
                }
                Err(error) => {
                    tracing::warn!(%error, "could not park the message for a retry; requeueing it");
                    requeue(session, tag).await;
                    Settled::Done(Outcome::Requeued, kind)
                }
            }
        }
        Disposition::DeadLetter { kind, reason } => {
            let moved = Box::pin(session.republisher.dead_letter(
                &delivery.data,
                &delivery.properties,
                attempt,
                kind.as_str(),
                &reason,
            ))
            .await;
            match moved {
                Ok(()) => {
                    tracing::warn!(error.kind = kind.as_str(), %reason, attempt, "dead-lettered");
                    ack(session, tag).await;
                    Settled::Done(Outcome::DeadLettered, Some(kind))
                }
                Err(error) => {
                    tracing::warn!(%error, "could not dead-letter the message; requeueing it");
                    requeue(session, tag).await;
                    Settled::Done(Outcome::Requeued, Some(kind))
                }
            }
        }
    }
}

/// Acknowledges the delivery (with others, in one frame when it can), and
/// says so on its process span.
async fn ack<P, R>(session: &Session<P, R>, tag: u64) {
    messaging::settled(Settle::Ack);
    session.settler.ack(tag).await;
}

/// Gives the delivery back to the queue, and says so on its process span.
async fn requeue<P, R>(session: &Session<P, R>, tag: u64) {
    messaging::settled(Settle::Nack);
    session.settler.requeue(tag).await;
}
