//! An OTLP/HTTP receiver for the tests that read the daemon's traces: it
//! collects every span exported to `/v1/traces` (protobuf), and reads their
//! ids and attributes back.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message as _;

/// Collects the spans exported to it; stops when dropped.
pub struct Collector {
    pub url: String,
    spans: Arc<Mutex<Vec<Span>>>,
    server: tokio::task::JoinHandle<()>,
}

impl Collector {
    pub async fn start() -> Self {
        let spans: Arc<Mutex<Vec<Span>>> = Arc::default();
        let app = Router::new()
            .route("/v1/traces", post(receive))
            .with_state(Arc::clone(&spans));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { url, spans, server }
    }

    /// The daemon's settings that export to this collector, quickly.
    pub fn exporting_env(&self) -> [(&'static str, &str); 4] {
        [
            ("OTEL_SDK_DISABLED", "false"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &self.url),
            ("OTEL_BSP_SCHEDULE_DELAY", "200"),
        ]
    }

    pub fn spans(&self) -> Vec<Span> {
        self.spans.lock().unwrap().clone()
    }

    /// The spans of one trace (`trace_id` in lowercase hex).
    pub fn trace(&self, trace_id: &str) -> Vec<Span> {
        let mut spans = self.spans();
        spans.retain(|s| hex(&s.trace_id) == trace_id);
        spans
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn receive(State(spans): State<Arc<Mutex<Vec<Span>>>>, body: Bytes) -> &'static str {
    let request = ExportTraceServiceRequest::decode(body).unwrap();
    let mut spans = spans.lock().unwrap();
    for resource in request.resource_spans {
        for scope in resource.scope_spans {
            spans.extend(scope.spans);
        }
    }
    ""
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A new W3C trace id and a publisher's span id, as lowercase hex.
pub fn new_trace() -> (String, String) {
    let trace_id = hex(uuid::Uuid::new_v4().as_bytes());
    let span_id = hex(&uuid::Uuid::new_v4().as_bytes()[..8]);
    (trace_id, span_id)
}

/// An attribute's value as text, if the span has it.
pub fn attribute(span: &Span, key: &str) -> Option<String> {
    let value = span
        .attributes
        .iter()
        .find(|kv| kv.key == key)?
        .value
        .as_ref()?
        .value
        .as_ref()?;
    Some(text(value))
}

/// Every attribute value of a span, its events and links, as text.
pub fn all_values(span: &Span) -> Vec<String> {
    let attributes = span
        .attributes
        .iter()
        .chain(span.events.iter().flat_map(|e| &e.attributes))
        .chain(span.links.iter().flat_map(|l| &l.attributes));
    let mut values: Vec<String> = attributes
        .filter_map(|kv| kv.value.as_ref()?.value.as_ref())
        .map(text)
        .collect();
    values.push(span.name.clone());
    values.extend(span.status.iter().map(|s| s.message.clone()));
    values
}

fn text(value: &Value) -> String {
    match value {
        Value::StringValue(s) => s.clone(),
        Value::IntValue(i) => i.to_string(),
        Value::BoolValue(b) => b.to_string(),
        other => format!("{other:?}"),
    }
}
