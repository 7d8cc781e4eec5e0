//! The OpenTelemetry messaging conventions for RabbitMQ, in one place: the
//! destination names, the process span of a delivery, the send span of
//! every message the daemon publishes, and the settle events.
//!
//! Followed: semantic conventions v1.44.0 (`docs/messaging/rabbitmq.md`,
//! `messaging-spans.md`); attribute keys come from
//! `opentelemetry-semantic-conventions`, so a renamed key fails the build.
//! Attributes of the daemon's own are in the `order_processor.*` namespace.
//!
//! - A process span is `process {exchange}:{routing key}:{queue}`, CONSUMER,
//!   a child of the message's creation context (`traceparent`) and linked to
//!   it. Its constant attributes and the destinations of the two usual
//!   shapes of delivery (from the configured exchange, and a retry coming
//!   back through the default exchange) are made once, not per delivery.
//! - A send span is `publish {exchange}:{routing key}`, PRODUCER. A copy
//!   (retry, dead letter, replay) keeps the original `traceparent`, so its
//!   send span is a child of whatever is current (the process span) and
//!   links to that creation context; a new message (`publish`) carries the
//!   send span's own context.
//! - Settling is an event (`ack`, `nack`) on the process span, not a span:
//!   an event is one entry in the span's list, where a settle span would
//!   cost ids, an attribute set and an export record per delivery, and the
//!   acknowledgement frame itself is sent later, for many deliveries at once.

use std::borrow::Cow;
use std::sync::Arc;

use opentelemetry::trace::{Link, SpanBuilder, SpanKind, Status, TraceContextExt as _};
use opentelemetry::{Context, KeyValue, StringValue};
use opentelemetry_semantic_conventions::attribute as semconv;

mod send;

pub use self::send::{Creation, SendSpan, producer_span};

/// `messaging.system`.
const SYSTEM: &str = "rabbitmq";
/// The operation name of a publish (`basic.publish`).
const PUBLISH: &str = "publish";
/// The attempt this delivery is, 1 for a fresh message.
pub const ATTEMPT: &str = "order_processor.attempt";
/// What became of the delivery: `acked`, `retried`, `dead_lettered`,
/// `requeued` or `held`.
pub const OUTCOME: &str = "order_processor.outcome";
/// The order's id (named by the contract, §7).
pub const ORDER_ID: &str = "order.id";

/// `messaging.destination.name` of a message sent: `{exchange}:{routing key}`,
/// leaving out an empty part, or `amq.default` when both are.
pub fn send_destination(exchange: &str, routing_key: &str) -> String {
    match (exchange.is_empty(), routing_key.is_empty()) {
        (false, false) => format!("{exchange}:{routing_key}"),
        (false, true) => exchange.to_owned(),
        (true, false) => routing_key.to_owned(),
        (true, true) => "amq.default".to_owned(),
    }
}

/// `messaging.destination.name` of a message consumed:
/// `{exchange}:{routing key}:{queue}`, leaving out an empty part, and the
/// routing key when it is the queue's name.
pub fn process_destination(exchange: &str, routing_key: &str, queue: &str) -> String {
    let routing_key = if routing_key == queue {
        ""
    } else {
        routing_key
    };
    let parts = [exchange, routing_key, queue];
    let parts: Vec<&str> = parts.into_iter().filter(|part| !part.is_empty()).collect();
    parts.join(":")
}

/// The broker a span's operation went to (`server.address`, `server.port`).
#[derive(Debug, Clone)]
pub struct Server([KeyValue; 2]);

impl Server {
    pub fn new(host: &str, port: u16) -> Self {
        Self([
            KeyValue::new(semconv::SERVER_ADDRESS, Arc::<str>::from(host)),
            KeyValue::new(semconv::SERVER_PORT, i64::from(port)),
        ])
    }
}

/// Where messages go: the span name and the attributes that say so (their
/// strings shared, so that each span copies them without allocating).
#[derive(Debug, Clone)]
pub struct Destination {
    span_name: Cow<'static, str>,
    name: StringValue,
    routing_key: Option<StringValue>,
    server: Option<Server>,
}

impl Destination {
    /// Where `publish {exchange}:{routing key}` sends.
    pub fn send(exchange: &str, routing_key: &str) -> Self {
        let name = send_destination(exchange, routing_key);
        Self::named(format!("{PUBLISH} {name}"), &name, routing_key)
    }

    /// A destination without its broker, its strings made shared once.
    fn named(span_name: String, name: &str, routing_key: &str) -> Self {
        Self {
            span_name: Cow::Owned(span_name),
            name: Arc::<str>::from(name).into(),
            routing_key: (!routing_key.is_empty()).then(|| Arc::<str>::from(routing_key).into()),
            server: None,
        }
    }

    /// The same destination, on the broker `server`.
    pub fn at(self, server: Option<&Server>) -> Self {
        Self {
            server: server.cloned(),
            ..self
        }
    }

    fn attributes(&self, into: &mut Vec<KeyValue>) {
        into.push(KeyValue::new(
            semconv::MESSAGING_DESTINATION_NAME,
            self.name.clone(),
        ));
        if let Some(key) = &self.routing_key {
            into.push(KeyValue::new(
                semconv::MESSAGING_RABBITMQ_DESTINATION_ROUTING_KEY,
                key.clone(),
            ));
        }
        if let Some(Server(server)) = &self.server {
            into.extend_from_slice(server);
        }
    }
}

/// What a process span says of its delivery.
#[derive(Debug, Clone, Copy)]
pub struct Delivery<'a> {
    pub exchange: &'a str,
    pub routing_key: &'a str,
    pub delivery_tag: u64,
    pub body_size: usize,
    pub message_id: Option<&'a str>,
    pub correlation_id: Option<&'a str>,
    pub attempt: u32,
}

/// The process spans of one queue, with what they share made once.
#[derive(Debug)]
pub struct ProcessSpans {
    queue: String,
    /// The destinations of the usual deliveries, by exchange and routing
    /// key: published to the configured exchange, and back from a retry
    /// queue through the default exchange.
    known: [(String, String, Destination); 2],
    constant: [KeyValue; 3],
    server: Option<Server>,
}

impl ProcessSpans {
    /// The process spans of deliveries from `queue` on the broker `server`.
    pub fn new(exchange: &str, routing_key: &str, queue: &str, server: Option<Server>) -> Self {
        let known = [(exchange, routing_key), ("", queue)].map(|(e, k)| {
            let destination = process(e, k, queue).at(server.as_ref()).made_once();
            (e.to_owned(), k.to_owned(), destination)
        });
        Self {
            queue: queue.to_owned(),
            known,
            server,
            constant: [
                KeyValue::new(semconv::MESSAGING_SYSTEM, SYSTEM),
                KeyValue::new(semconv::MESSAGING_OPERATION_TYPE, "process"),
                KeyValue::new(semconv::MESSAGING_OPERATION_NAME, "process"),
            ],
        }
    }

    /// The process span of `delivery`, a child of its creation context
    /// (`parent`, from its `traceparent`) and linked to it.
    pub fn builder(&self, delivery: &Delivery<'_>, parent: &Context) -> SpanBuilder {
        let known = self
            .known
            .iter()
            .find(|(e, k, _)| e == delivery.exchange && k == delivery.routing_key)
            .map(|(_, _, destination)| Cow::Borrowed(destination));
        let destination = known.unwrap_or_else(|| {
            let destination = process(delivery.exchange, delivery.routing_key, &self.queue);
            Cow::Owned(destination.at(self.server.as_ref()))
        });
        // Room for what `finish` and the order add later (order id,
        // outcome, error type), so that none of them grows it.
        let mut attributes = Vec::with_capacity(16);
        attributes.extend_from_slice(&self.constant);
        destination.attributes(&mut attributes);
        attributes.extend([
            KeyValue::new(
                semconv::MESSAGING_RABBITMQ_MESSAGE_DELIVERY_TAG,
                i64::try_from(delivery.delivery_tag).unwrap_or(i64::MAX),
            ),
            KeyValue::new(
                semconv::MESSAGING_MESSAGE_BODY_SIZE,
                i64::try_from(delivery.body_size).unwrap_or(i64::MAX),
            ),
            KeyValue::new(ATTEMPT, i64::from(delivery.attempt)),
        ]);
        if let Some(id) = delivery.message_id {
            attributes.push(KeyValue::new(semconv::MESSAGING_MESSAGE_ID, id.to_owned()));
        }
        if let Some(id) = delivery.correlation_id {
            let key = semconv::MESSAGING_MESSAGE_CONVERSATION_ID;
            attributes.push(KeyValue::new(key, id.to_owned()));
        }
        let creation = parent.span().span_context().clone();
        let links = if creation.is_valid() {
            vec![Link::with_context(creation)]
        } else {
            Vec::new()
        };
        SpanBuilder::from_name(destination.span_name.clone())
            .with_kind(SpanKind::Consumer)
            .with_attributes(attributes)
            .with_links(links)
    }
}

/// The destination of a process span.
fn process(exchange: &str, routing_key: &str, queue: &str) -> Destination {
    let name = process_destination(exchange, routing_key, queue);
    Destination::named(format!("process {name}"), &name, routing_key)
}

impl Destination {
    /// The same, with its span name leaked, so that every span borrows it
    /// instead of copying it. Only for the few destinations made once for
    /// the life of the process.
    fn made_once(self) -> Self {
        let span_name: &'static str = Box::leak(self.span_name.into_owned().into_boxed_str());
        Self {
            span_name: Cow::Borrowed(span_name),
            ..self
        }
    }
}

/// Ends a process span's story: what became of the delivery and, when its
/// processing failed, the error's type and description.
pub fn finish_process(
    order: &Context,
    outcome: &'static str,
    error: Option<(&'static str, String)>,
) {
    let span = order.span();
    span.set_attribute(KeyValue::new(OUTCOME, outcome));
    if let Some((kind, description)) = error {
        span.set_attribute(KeyValue::new(semconv::ERROR_TYPE, kind));
        span.set_status(Status::error(description));
    }
}

/// How a delivery was settled on the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settle {
    Ack,
    /// Given back to the queue (`basic.nack` with requeue).
    Nack,
}

/// Records the settlement of the current order's delivery as an event on
/// its process span (see the module's docs for why not a span).
pub fn settled(settle: Settle) {
    let name = match settle {
        Settle::Ack => "ack",
        Settle::Nack => "nack",
    };
    Context::map_current(|order| order.span().add_event(name, Vec::new()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_are_named_as_the_rabbitmq_conventions_say() {
        assert_eq!(
            send_destination("orders", "order.created"),
            "orders:order.created"
        );
        assert_eq!(
            send_destination("", "orders.process.retry.1"),
            "orders.process.retry.1"
        );
        assert_eq!(send_destination("orders.dlx", ""), "orders.dlx");
        assert_eq!(send_destination("", ""), "amq.default");
        assert_eq!(
            process_destination("orders", "order.created", "orders.process"),
            "orders:order.created:orders.process"
        );
        // A retry comes back through the default exchange, keyed by the queue.
        assert_eq!(
            process_destination("", "orders.process", "orders.process"),
            "orders.process"
        );
        assert_eq!(process_destination("orders", "", "q"), "orders:q");
    }

    #[test]
    fn a_process_span_is_named_after_its_destination_and_links_its_creation() {
        use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
        let spans = ProcessSpans::new("orders", "order.created", "orders.process", None);
        let creation = SpanContext::new(
            TraceId::from(1),
            SpanId::from(2),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        );
        let parent = Context::new().with_remote_span_context(creation);
        let delivery = Delivery {
            exchange: "orders",
            routing_key: "order.created",
            delivery_tag: 7,
            body_size: 100,
            message_id: Some("m-1"),
            correlation_id: None,
            attempt: 1,
        };
        let fresh = spans.builder(&delivery, &parent);
        assert_eq!(fresh.name, "process orders:order.created:orders.process");
        assert!(matches!(fresh.name, Cow::Borrowed(_)), "made once");
        assert_eq!(fresh.links.as_ref().map(Vec::len), Some(1));
        let retried = Delivery {
            exchange: "",
            routing_key: "orders.process",
            ..delivery
        };
        let retried = spans.builder(&retried, &Context::new());
        assert_eq!(retried.name, "process orders.process");
        assert_eq!(retried.links.as_ref().map(Vec::len), Some(0));
    }
}
