//! Traces, metrics and probes as Jaeger, Prometheus and Kubernetes see them.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

use crate::common;

use std::collections::HashMap;
use std::time::Duration;

use common::broker::Broker;
use common::daemon::{Daemon, PaymentSim};
use common::otlp::{Collector, attribute, hex};
use common::payment::PaymentStub;
use common::{TestEnv, order_json};
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_is_one_trace_from_the_publisher_to_the_provider_and_the_row() {
    let env = TestEnv::new().await;
    let collector = Collector::start().await;
    let stub = PaymentStub::start(|_, _| 201).await;
    let daemon = Daemon::start(&env, &stub.url, &collector.exporting_env()).await;
    let broker = Broker::connect().await;

    let order_id = Uuid::new_v4();
    let trace_id = hex(Uuid::new_v4().as_bytes());
    let publisher_span = &hex(Uuid::new_v4().as_bytes())[..16];
    let traceparent = format!("00-{trace_id}-{publisher_span}-01");
    broker
        .publish(
            &env.exchange,
            &env.routing_key,
            &order_json(order_id, "tok_visa"),
            Broker::properties(Some(&traceparent)),
        )
        .await;
    let invalid_trace = hex(Uuid::new_v4().as_bytes());
    broker
        .publish(
            &env.exchange,
            &env.routing_key,
            br#"{"order_id":"nope","customer_id":"c","currency":"EUR","items":[{"sku":"a","quantity":1,"unit_price_minor":1}],"payment_token":"t"}"#,
            Broker::properties(Some(&format!("00-{invalid_trace}-{publisher_span}-01"))),
        )
        .await;

    let wanted = [
        "process",
        "validate",
        "SELECT orders",
        "POST",
        "INSERT orders",
    ];
    env.eventually(WAIT, "the spans of the order", || async {
        let spans = collector.spans();
        let names: Vec<&str> = spans
            .iter()
            .filter(|s| hex(&s.trace_id) == trace_id)
            .map(|s| s.name.as_str())
            .collect();
        wanted
            .iter()
            .all(|w| names.iter().any(|n| n.starts_with(w)))
            && spans.iter().any(|s| hex(&s.trace_id) == invalid_trace)
    })
    .await;
    let spans: Vec<Span> = collector
        .spans()
        .into_iter()
        .filter(|s| hex(&s.trace_id) == trace_id)
        .collect();
    let by_name = |prefix: &str| {
        spans
            .iter()
            .find(|s| s.name.starts_with(prefix))
            .unwrap()
            .clone()
    };

    let consumer = by_name("process");
    let destination = format!("{}:{}:{}", env.exchange, env.routing_key, env.queue);
    assert_eq!(consumer.name, format!("process {destination}"));
    assert_eq!(consumer.kind, SpanKind::Consumer as i32);
    assert_eq!(
        hex(&consumer.parent_span_id),
        publisher_span,
        "the consumer span continues the publisher's"
    );
    assert_eq!(
        attribute(&consumer, "messaging.system").as_deref(),
        Some("rabbitmq")
    );
    assert_eq!(
        attribute(&consumer, "messaging.destination.name").as_deref(),
        Some(destination.as_str())
    );
    assert_eq!(
        attribute(&consumer, "messaging.rabbitmq.destination.routing_key").as_deref(),
        Some("order.created")
    );
    assert_eq!(attribute(&consumer, "order.id"), Some(order_id.to_string()));

    for child in ["validate", "SELECT orders", "POST", "INSERT orders"] {
        assert_eq!(
            by_name(child).parent_span_id,
            consumer.span_id,
            "{child} is a child of the consumer span"
        );
    }
    let charge = by_name("POST");
    assert_eq!(charge.kind, SpanKind::Client as i32);
    assert_eq!(
        attribute(&charge, "http.response.status_code").as_deref(),
        Some("201")
    );
    let save = by_name("INSERT orders");
    assert_eq!(
        attribute(&save, "db.system.name").as_deref(),
        Some("postgresql")
    );

    // The provider was called under the charge span of the same trace.
    let call = stub.calls_for(&order_id.to_string()).pop().unwrap();
    let sent = call.traceparent.unwrap();
    assert_eq!(sent, format!("00-{trace_id}-{}-01", hex(&charge.span_id)));

    assert_eq!(env.stored_trace_id(order_id).await, Some(trace_id));

    let failed = collector
        .spans()
        .into_iter()
        .find(|s| hex(&s.trace_id) == invalid_trace && s.name.starts_with("process"))
        .unwrap();
    assert_eq!(
        failed.status.as_ref().map(|s| s.code),
        Some(StatusCode::Error as i32)
    );
    assert_eq!(attribute(&failed, "error.type").as_deref(), Some("invalid"));

    // The log line written while dead-lettering carries the ids of that span.
    let logs = daemon.logs();
    let line: serde_json::Value = logs
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|line| line["message"] == "dead-lettered")
        .unwrap_or_else(|| panic!("no dead-letter log line:\n{logs}"));
    assert_eq!(line["trace_id"].as_str(), Some(invalid_trace.as_str()));
    assert_eq!(
        line["span_id"].as_str(),
        Some(hex(&failed.span_id).as_str())
    );
    assert_eq!(line["level"].as_str(), Some("WARN"));
    broker.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_count_what_was_published() {
    let env = TestEnv::new().await;
    let sim = PaymentSim::start(&[]);
    let daemon = Daemon::start(&env, &sim.url, &[]).await;
    let broker = Broker::connect().await;

    for _ in 0..5 {
        broker
            .publish(
                &env.exchange,
                &env.routing_key,
                &order_json(Uuid::new_v4(), "tok_visa"),
                Broker::properties(None),
            )
            .await;
    }
    for _ in 0..2 {
        broker
            .publish(
                &env.exchange,
                &env.routing_key,
                b"[1, 2]",
                Broker::properties(None),
            )
            .await;
    }
    broker
        .publish(
            &env.exchange,
            &env.routing_key,
            &order_json(Uuid::new_v4(), "tok_decline"),
            Broker::properties(None),
        )
        .await;

    let parse = |text: String| {
        let lines = text.lines().map(|l| Ok(l.to_owned()));
        prometheus_parse::Scrape::parse(lines).unwrap()
    };
    let value = |scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]| -> f64 {
        scrape
            .samples
            .iter()
            .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                prometheus_parse::Value::Histogram(ref buckets) => {
                    buckets.last().map_or(0.0, |b| b.count)
                }
                _ => 0.0,
            })
            .sum()
    };
    env.eventually(WAIT, "eight settled deliveries", || async {
        let scrape = parse(daemon.metrics().await);
        value(&scrape, "order_processor_deliveries_total", &[]) >= 8.0
    })
    .await;

    let scrape = parse(daemon.metrics().await);
    let deliveries = "order_processor_deliveries_total";
    assert_eq!(value(&scrape, deliveries, &[("outcome", "acked")]), 5.0);
    assert_eq!(
        value(
            &scrape,
            deliveries,
            &[("outcome", "dead_lettered"), ("error_kind", "malformed")]
        ),
        2.0
    );
    assert_eq!(
        value(
            &scrape,
            deliveries,
            &[
                ("outcome", "dead_lettered"),
                ("error_kind", "payment_declined")
            ]
        ),
        1.0
    );
    assert_eq!(value(&scrape, "order_processor_in_flight", &[]), 0.0);
    // The 8 deliveries finished in one go: none waited behind another long
    // enough to be acknowledged alone.
    let frames = "order_processor_amqp_ack_frames_total";
    env.eventually(WAIT, "the acknowledgements", || async {
        let scrape = parse(daemon.metrics().await);
        value(&scrape, frames, &[("multiple", "true")]) >= 1.0
    })
    .await;
    let scrape = parse(daemon.metrics().await);
    assert!(value(&scrape, frames, &[("multiple", "true")]) <= 8.0);
    assert_eq!(value(&scrape, frames, &[("multiple", "false")]), 0.0);
    assert_eq!(value(&scrape, "order_processor_payment_waiting", &[]), 0.0);
    assert_eq!(
        value(&scrape, "order_processor_amqp_reconnects_total", &[]),
        0.0
    );
    let payment_calls: HashMap<&str, f64> = ["2xx", "4xx"]
        .into_iter()
        .map(|class| {
            (
                class,
                value(
                    &scrape,
                    "order_processor_payment_request_seconds",
                    &[("status_class", class)],
                ),
            )
        })
        .collect();
    assert_eq!(payment_calls["2xx"], 5.0);
    assert_eq!(payment_calls["4xx"], 1.0);
    assert_eq!(
        value(&scrape, "order_processor_processing_seconds", &[]),
        8.0
    );
    // Six valid orders asked whether they were processed, the five charged
    // were saved; the two malformed ones never reached the database. Each
    // statement's batches answered all of them, in one batch or several.
    for (statement, orders) in [("lookup", 6.0), ("save", 5.0)] {
        let labels = [("statement", statement)];
        let waits = value(&scrape, "order_processor_database_wait_seconds", &labels);
        assert_eq!(waits, orders, "{statement}");
        let answered = value(
            &scrape,
            "order_processor_database_batch_orders_sum",
            &labels,
        );
        assert_eq!(answered, orders, "{statement}");
        let batches = value(&scrape, "order_processor_database_batch_orders", &labels);
        let statements = value(
            &scrape,
            "order_processor_database_statement_seconds",
            &labels,
        );
        assert!((1.0..=orders).contains(&batches), "{statement}: {batches}");
        assert_eq!(statements, batches, "{statement}");
    }

    assert_eq!(daemon.status("/healthz").await, Some(200));
    assert_eq!(daemon.status("/readyz").await, Some(200));
    broker.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_collector_the_daemon_keeps_working_and_says_so_once() {
    let env = TestEnv::new().await;
    let sim = PaymentSim::start(&[]);
    let closed = common::ClosedPort::bind();
    let nobody = format!("http://127.0.0.1:{}", closed.port());
    let daemon = Daemon::start(
        &env,
        &sim.url,
        &[
            ("OTEL_SDK_DISABLED", "false"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &nobody),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    )
    .await;
    for _ in 0..3 {
        env.publish_orders(5, "tok_visa").await;
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    env.eventually(WAIT, "15 orders saved", || async {
        env.order_count().await == 15
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let failures = daemon.logs().matches("ExportError").count();
    assert_eq!(failures, 1, "log:\n{}", daemon.logs());
}
