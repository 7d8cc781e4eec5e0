//! Send spans: one per message the daemon publishes (a retry or
//! dead-letter copy, a `dlq` replay, an order sent by `publish`), PRODUCER,
//! `publish {destination}`. See [`super`] for the conventions followed.

use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::{Link, SpanBuilder, SpanKind, Status, TraceContextExt as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_semantic_conventions::attribute as semconv;

use super::super::{OrderContext, context_trace_id, extract, inject};
use super::{Destination, PUBLISH, SYSTEM};

/// Where the context of a published message comes from.
pub enum Creation<'a> {
    /// A new message: the send span's context is written into its headers.
    Inject(&'a mut dyn Injector),
    /// A copy of a message: it keeps the creation context its headers
    /// carry, which the send span links to.
    Kept(&'a dyn Extractor),
}

/// The send span of one published message; ends when dropped.
pub struct SendSpan {
    context: Context,
}

/// Starts the send span of a message to `destination`: under the current
/// order (its tracer, its process span) when there is one, else under the
/// current context with the global tracer.
pub fn producer_span(
    destination: &Destination,
    message_id: Option<&str>,
    body_size: usize,
    creation: Creation<'_>,
) -> SendSpan {
    let builder = |link: Option<Link>| {
        let mut attributes = Vec::with_capacity(10);
        attributes.extend([
            KeyValue::new(semconv::MESSAGING_SYSTEM, SYSTEM),
            KeyValue::new(semconv::MESSAGING_OPERATION_TYPE, "send"),
            KeyValue::new(semconv::MESSAGING_OPERATION_NAME, PUBLISH),
            KeyValue::new(
                semconv::MESSAGING_MESSAGE_BODY_SIZE,
                i64::try_from(body_size).unwrap_or(i64::MAX),
            ),
        ]);
        destination.attributes(&mut attributes);
        if let Some(id) = message_id {
            attributes.push(KeyValue::new(semconv::MESSAGING_MESSAGE_ID, id.to_owned()));
        }
        SpanBuilder::from_name(destination.span_name.clone())
            .with_kind(SpanKind::Producer)
            .with_attributes(attributes)
            .with_links(link.into_iter().collect())
    };
    match creation {
        Creation::Inject(carrier) => {
            let context = start(|| builder(None));
            inject(&context, carrier);
            SendSpan { context }
        }
        Creation::Kept(carrier) => {
            let kept = extract(carrier).span().span_context().clone();
            let link = kept.is_valid().then(|| Link::with_context(kept));
            SendSpan {
                context: start(|| builder(link)),
            }
        }
    }
}

/// A span under the current context: the order's tracer inside an order,
/// the global one elsewhere.
fn start(span: impl FnOnce() -> SpanBuilder) -> Context {
    Context::map_current(|current| match current.get::<OrderContext>() {
        Some(order) => order.tracer.child(span, current),
        None => {
            let tracer = opentelemetry::global::tracer("order-processor");
            current.with_span(span().start_with_context(&tracer, current))
        }
    })
}

impl SendSpan {
    /// The trace id of the message, as 32 lowercase hex digits.
    pub fn trace_id(&self) -> Option<String> {
        context_trace_id(&self.context)
    }

    /// Marks the send as failed, with the error's low-cardinality type.
    pub fn failed(&self, error_type: &'static str) {
        let span = self.context.span();
        span.set_attribute(KeyValue::new(semconv::ERROR_TYPE, error_type));
        span.set_status(Status::error(error_type));
    }
}
