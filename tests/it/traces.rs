//! The traces the daemon exports, read as an OTLP collector receives them:
//! span names, kinds, destinations and the links between the spans of an
//! order that succeeds, one that is retried and one that is dead-lettered,
//! as the OpenTelemetry messaging, database and HTTP conventions describe
//! them.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

use crate::common;

use std::time::Duration;

use common::broker::Broker;
use common::daemon::Daemon;
use common::otlp::{Collector, all_values, attribute, hex, new_trace};
use common::payment::PaymentStub;
use common::{SHORT_RETRIES, TestEnv, order_json};
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(90);
const API_KEY: &str = "sk_test_never_in_a_trace_51f0";
const TOKEN: &str = "tok_never_in_a_trace_9c2e";

/// One order published under a trace of its own.
struct Published {
    id: Uuid,
    body: Vec<u8>,
    trace_id: String,
    publisher_span: String,
}

impl Published {
    async fn send(broker: &Broker, env: &TestEnv, id: Uuid) -> Self {
        let body = order_json(id, TOKEN);
        let (trace_id, publisher_span) = new_trace();
        let traceparent = format!("00-{trace_id}-{publisher_span}-01");
        let properties =
            Broker::properties(Some(&traceparent)).with_message_id(id.to_string().into());
        broker
            .publish(&env.exchange, &env.routing_key, &body, properties)
            .await;
        Self {
            id,
            body,
            trace_id,
            publisher_span,
        }
    }
}

fn named<'a>(spans: &'a [Span], name: &str) -> Vec<&'a Span> {
    spans.iter().filter(|s| s.name == name).collect()
}

fn only<'a>(spans: &'a [Span], name: &str) -> &'a Span {
    let found = named(spans, name);
    assert_eq!(found.len(), 1, "one span {name}: {:?}", names(spans));
    found[0]
}

fn names(spans: &[Span]) -> Vec<&str> {
    spans.iter().map(|s| s.name.as_str()).collect()
}

fn has(span: &Span, key: &str, value: &str) {
    assert_eq!(
        attribute(span, key).as_deref(),
        Some(value),
        "{key} of {}",
        span.name
    );
}

fn events(span: &Span) -> Vec<&str> {
    span.events.iter().map(|e| e.name.as_str()).collect()
}

/// A process span, as the RabbitMQ conventions describe it, of `order`'s
/// delivery number `attempt`, continuing and linking the publisher's span.
fn is_process_span(span: &Span, order: &Published, destination: &str, attempt: &str) {
    assert_eq!(span.name, format!("process {destination}"));
    assert_eq!(span.kind, SpanKind::Consumer as i32);
    assert_eq!(hex(&span.parent_span_id), order.publisher_span);
    let links: Vec<(String, String)> = span
        .links
        .iter()
        .map(|l| (hex(&l.trace_id), hex(&l.span_id)))
        .collect();
    assert_eq!(
        links,
        [(order.trace_id.clone(), order.publisher_span.clone())]
    );
    has(span, "messaging.system", "rabbitmq");
    has(span, "messaging.operation.type", "process");
    has(span, "messaging.operation.name", "process");
    has(span, "messaging.destination.name", destination);
    has(span, "messaging.message.id", &order.id.to_string());
    has(
        span,
        "messaging.message.body.size",
        &order.body.len().to_string(),
    );
    assert!(attribute(span, "messaging.rabbitmq.message.delivery_tag").is_some());
    has(span, "server.address", "127.0.0.1");
    has(span, "server.port", "5672");
    has(span, "order.id", &order.id.to_string());
    has(span, "order_processor.attempt", attempt);
    for ours in ["messaging.rabbitmq.attempt", "messaging.rabbitmq.outcome"] {
        assert_eq!(
            attribute(span, ours),
            None,
            "{ours} is not the conventions'"
        );
    }
}

/// A send span of a copy of `order`: a child of the process span that
/// published it, linked to the message's creation context.
fn is_send_span(span: &Span, order: &Published, process: &Span, destination: &str) {
    assert_eq!(span.name, format!("publish {destination}"));
    assert_eq!(span.kind, SpanKind::Producer as i32);
    assert_eq!(span.parent_span_id, process.span_id);
    assert!(
        span.links
            .iter()
            .any(|l| hex(&l.span_id) == order.publisher_span),
        "{} links the message's creation context",
        span.name
    );
    has(span, "messaging.system", "rabbitmq");
    has(span, "messaging.operation.type", "send");
    has(span, "messaging.operation.name", "publish");
    has(span, "messaging.destination.name", destination);
    has(span, "messaging.message.id", &order.id.to_string());
    has(span, "server.address", "127.0.0.1");
    has(span, "server.port", "5672");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acked_a_retried_and_a_dead_lettered_order_are_traced_as_the_conventions_say() {
    let env = TestEnv::new().await;
    let collector = Collector::start().await;
    // One order's first charge fails (503), another's is declined (402).
    let failing_once = Uuid::new_v4();
    let dead = Uuid::new_v4();
    let (once_key, dead_key) = (failing_once.to_string(), dead.to_string());
    let stub = PaymentStub::start(move |key, nth| {
        if key == dead_key {
            402
        } else if key == once_key && nth == 1 {
            503
        } else {
            201
        }
    })
    .await;
    let mut settings = collector.exporting_env().to_vec();
    settings.extend(SHORT_RETRIES);
    settings.push(("PAYMENT_API_KEY", API_KEY));
    let daemon = Daemon::start(&env, &stub.url, &settings).await;
    let broker = Broker::connect().await;

    let acked = Published::send(&broker, &env, Uuid::new_v4()).await;
    let retried = Published::send(&broker, &env, failing_once).await;
    let dead_lettered = Published::send(&broker, &env, dead).await;

    let fresh = format!("{}:{}:{}", env.exchange, env.routing_key, env.queue);
    // A retry comes back through the default exchange, keyed by the queue.
    let back_from_retry = env.queue.clone();
    let retry_queue = format!("{}.retry.1", env.queue);
    let dead_letters = format!("{}.dlx:{}", env.exchange, env.queue);
    env.eventually(WAIT, "the spans of the three orders", || async {
        let acked = collector.trace(&acked.trace_id);
        let retried = collector.trace(&retried.trace_id);
        let dead = collector.trace(&dead_lettered.trace_id);
        !named(&acked, "INSERT orders").is_empty()
            && !named(&acked, &format!("process {fresh}")).is_empty()
            && !named(&retried, "INSERT orders").is_empty()
            && !named(&retried, &format!("process {back_from_retry}")).is_empty()
            && !named(&retried, &format!("process {fresh}")).is_empty()
            && !named(&dead, &format!("publish {dead_letters}")).is_empty()
            && !named(&dead, &format!("process {fresh}")).is_empty()
    })
    .await;
    let port = stub.url.rsplit(':').next().unwrap().to_owned();

    // Acked: a process span, and its steps as database and HTTP client spans.
    let spans = collector.trace(&acked.trace_id);
    let process = only(&spans, &format!("process {fresh}"));
    is_process_span(process, &acked, &fresh, "1");
    has(
        process,
        "messaging.rabbitmq.destination.routing_key",
        "order.created",
    );
    has(process, "order_processor.outcome", "acked");
    assert_eq!(events(process), ["ack"]);
    assert_eq!(attribute(process, "error.type"), None);
    for step in ["validate", "SELECT orders", "POST", "INSERT orders"] {
        assert_eq!(only(&spans, step).parent_span_id, process.span_id, "{step}");
    }
    for (statement, operation) in [("SELECT orders", "SELECT"), ("INSERT orders", "INSERT")] {
        let span = only(&spans, statement);
        assert_eq!(span.kind, SpanKind::Client as i32);
        has(span, "db.system.name", "postgresql");
        has(span, "db.operation.name", operation);
        has(span, "db.collection.name", "orders");
        has(span, "db.namespace", &env.database);
    }
    let charge = only(&spans, "POST");
    assert_eq!(charge.kind, SpanKind::Client as i32);
    has(charge, "http.request.method", "POST");
    has(charge, "server.address", "127.0.0.1");
    has(charge, "server.port", &port);
    has(charge, "url.full", &format!("{}/v1/charges", stub.url));
    has(charge, "http.response.status_code", "201");
    assert_eq!(attribute(charge, "error.type"), None);
    assert!(
        spans.iter().all(|s| s.kind != SpanKind::Producer as i32),
        "nothing was republished: {:?}",
        names(&spans)
    );

    // Retried: the first delivery's process span publishes the copy to the
    // retry queue; the second delivery continues the same trace.
    let spans = collector.trace(&retried.trace_id);
    let first = only(&spans, &format!("process {fresh}"));
    is_process_span(first, &retried, &fresh, "1");
    has(first, "order_processor.outcome", "retried");
    has(first, "error.type", "transient");
    assert_eq!(events(first), ["ack"], "acked once its copy was confirmed");
    let failed_charge = named(&spans, "POST")
        .into_iter()
        .find(|s| s.parent_span_id == first.span_id)
        .unwrap();
    has(failed_charge, "http.response.status_code", "503");
    has(failed_charge, "error.type", "503");
    let retry = only(&spans, &format!("publish {retry_queue}"));
    is_send_span(retry, &retried, first, &retry_queue);
    let second = only(&spans, &format!("process {back_from_retry}"));
    is_process_span(second, &retried, &back_from_retry, "2");
    has(second, "order_processor.outcome", "acked");

    // Dead-lettered: the copy to the dead-letter exchange has its send span.
    let spans = collector.trace(&dead_lettered.trace_id);
    let process = only(&spans, &format!("process {fresh}"));
    is_process_span(process, &dead_lettered, &fresh, "1");
    has(process, "order_processor.outcome", "dead_lettered");
    has(process, "error.type", "payment_declined");
    assert_eq!(
        process.status.as_ref().map(|s| s.code),
        Some(StatusCode::Error as i32)
    );
    assert_eq!(events(process), ["ack"]);
    let send = only(&spans, &format!("publish {dead_letters}"));
    is_send_span(send, &dead_lettered, process, &dead_letters);
    has(
        send,
        "messaging.rabbitmq.destination.routing_key",
        &env.queue,
    );
    let declined = only(&spans, "POST");
    has(declined, "http.response.status_code", "402");
    has(declined, "error.type", "402");

    // No span says anything secret: the provider's key, the payment token,
    // the broker's credentials.
    for span in collector.spans() {
        for value in all_values(&span) {
            for secret in [API_KEY, TOKEN, "guest:guest", "Bearer"] {
                assert!(
                    !value.contains(secret),
                    "{} carries {secret}: {value}",
                    span.name
                );
            }
        }
    }
    drop(daemon);
    broker.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_sends_each_order_under_a_producer_span_that_its_process_span_continues() {
    let env = TestEnv::new().await;
    let collector = Collector::start().await;
    let stub = PaymentStub::start(|_, _| 201).await;
    let _daemon = Daemon::start(&env, &stub.url, &collector.exporting_env()).await;

    let output = common::daemon::command(&env, &stub.url)
        .envs(collector.exporting_env())
        .args(["publish", "--count", "1"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let stdout = String::from_utf8(output.stdout).unwrap();
    let (order, trace) = stdout.trim().split_once(' ').unwrap();
    let order = order.strip_prefix("order_id=").unwrap().to_owned();
    let trace_id = trace.strip_prefix("trace_id=").unwrap().to_owned();

    let sent = format!("{}:{}", env.exchange, env.routing_key);
    let fresh = format!("{sent}:{}", env.queue);
    env.eventually(WAIT, "the send and process spans", || async {
        let spans = collector.trace(&trace_id);
        !named(&spans, &format!("publish {sent}")).is_empty()
            && !named(&spans, &format!("process {fresh}")).is_empty()
    })
    .await;
    let spans = collector.trace(&trace_id);
    let send = only(&spans, &format!("publish {sent}"));
    assert_eq!(send.kind, SpanKind::Producer as i32);
    assert!(send.parent_span_id.is_empty(), "a new trace per message");
    has(send, "messaging.system", "rabbitmq");
    has(send, "messaging.operation.type", "send");
    has(send, "messaging.operation.name", "publish");
    has(send, "messaging.destination.name", &sent);
    has(
        send,
        "messaging.rabbitmq.destination.routing_key",
        "order.created",
    );
    has(send, "messaging.message.id", &order);
    let process = only(&spans, &format!("process {fresh}"));
    assert_eq!(process.parent_span_id, send.span_id);
    assert_eq!(process.links.len(), 1);
    assert_eq!(process.links[0].span_id, send.span_id);
}
