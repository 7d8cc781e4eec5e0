//! Logs and traces: the one global of the process, the tracing subscriber.
//!
//! Logs are JSON lines on stdout, filtered by `RUST_LOG`, each carrying the
//! `trace_id` and `span_id` of the span it was written in. Spans go to
//! OpenTelemetry and are exported by OTLP (gRPC or HTTP/protobuf, chosen by
//! `OTEL_EXPORTER_OTLP_PROTOCOL`) in batches, so Jaeger can show an order
//! from its publisher to the database. Everything the specification defines
//! (`OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_SERVICE_NAME`,
//! `OTEL_TRACES_SAMPLER(_ARG)`, `OTEL_SDK_DISABLED`) is honoured. When no
//! collector listens, the daemon keeps working and says so once.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::{Protocol, WithExportConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

use crate::config::ConfigError;

/// Where log lines go: stdout for the daemon, stderr for commands whose
/// stdout is their result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogTarget {
    Stdout,
    Stderr,
}

/// Flushes and stops the exporter when the process ends.
pub struct Telemetry {
    provider: SdkTracerProvider,
}

impl Telemetry {
    /// Installs the subscriber. `default_service` names the service when
    /// `OTEL_SERVICE_NAME` does not.
    pub fn init(default_service: &'static str, target: LogTarget) -> Result<Self, ConfigError> {
        let filter = match std::env::var("RUST_LOG") {
            Ok(directives) => EnvFilter::try_new(&directives).map_err(|error| ConfigError {
                key: "RUST_LOG".to_owned(),
                problem: format!("is not a valid filter ({error})"),
            })?,
            Err(_) => EnvFilter::new("info"),
        };
        let provider = tracer_provider(default_service)?;
        let tracer = provider.tracer("order-processor");
        let logs = tracing_subscriber::fmt::layer()
            .event_format(JsonLines)
            .with_writer(move || -> Box<dyn std::io::Write> {
                match target {
                    LogTarget::Stdout => Box::new(std::io::stdout()),
                    LogTarget::Stderr => Box::new(std::io::stderr()),
                }
            })
            .with_filter(filter)
            .with_filter(
                tracing_subscriber::filter::DynFilterFn::new(|meta, _| {
                    once_for_exporter_errors(meta)
                })
                .with_callsite_filter(exporter_callsites_are_dynamic),
            );
        // Busy/idle timing and context activation cost a clock read and a
        // thread-local swap on every poll of every instrumented future; the
        // span's own start and end times are all a trace needs.
        let spans = tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_tracked_inactivity(false)
            .with_context_activation(false)
            .with_threads(false)
            .with_location(false)
            .with_target(false)
            // Only the daemon's own spans and events become telemetry. The
            // libraries below (lapin, sqlx, hyper, the exporter itself) emit
            // debug and trace events on every frame; letting them reach this
            // layer would format each of them into the current span.
            .with_filter(Targets::new().with_target("order_processor", tracing::Level::INFO));
        tracing_subscriber::registry()
            .with(spans)
            .with(logs)
            .try_init()
            .map_err(|error| ConfigError {
                key: "RUST_LOG".to_owned(),
                problem: format!("could not install the logger ({error})"),
            })?;
        Ok(Self { provider })
    }

    /// Exports what is still buffered, waiting at most `timeout`.
    pub fn shutdown(self, timeout: Duration) {
        if let Err(error) = self.provider.shutdown_with_timeout(timeout) {
            tracing::warn!(%error, "could not flush the last traces");
        }
    }
}

fn tracer_provider(default_service: &'static str) -> Result<SdkTracerProvider, ConfigError> {
    let service = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| default_service.to_owned());
    let builder = SdkTracerProvider::builder()
        .with_resource(Resource::builder().with_service_name(service).build());
    let disabled = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"))
        || std::env::var("OTEL_TRACES_EXPORTER").is_ok_and(|v| v == "none");
    if disabled {
        // Spans still get ids (for the logs and the rows); nothing leaves the process.
        return Ok(builder.build());
    }
    let protocol = std::env::var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        .or_else(|_| std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL"))
        .unwrap_or_else(|_| "grpc".to_owned());
    let exporter = match protocol.as_str() {
        "grpc" => opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_protocol(Protocol::Grpc)
            .build(),
        "http/protobuf" => opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .build(),
        _ => {
            return Err(ConfigError {
                key: "OTEL_EXPORTER_OTLP_PROTOCOL".to_owned(),
                problem: format!("must be grpc or http/protobuf (got {protocol})"),
            });
        }
    };
    let exporter = exporter.map_err(|error| ConfigError {
        key: "OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(),
        problem: format!("cannot be used ({error})"),
    })?;
    Ok(builder.with_batch_exporter(exporter).build())
}

static EXPORT_FAILURE_REPORTED: AtomicBool = AtomicBool::new(false);

/// The SDK reports every failed export; an absent collector would flood
/// the logs, so only its first complaint is shown.
/// The answer for the exporter's own callsites changes after its first
/// event, so it must be asked per event, not cached per callsite.
fn exporter_callsites_are_dynamic(
    meta: &'static tracing::Metadata<'static>,
) -> tracing::subscriber::Interest {
    if meta.target().starts_with("opentelemetry") {
        tracing::subscriber::Interest::sometimes()
    } else {
        tracing::subscriber::Interest::always()
    }
}

fn once_for_exporter_errors(meta: &tracing::Metadata<'_>) -> bool {
    if !meta.target().starts_with("opentelemetry") {
        return true;
    }
    if *meta.level() > tracing::Level::WARN {
        return false;
    }
    !EXPORT_FAILURE_REPORTED.swap(true, Ordering::Relaxed)
}

/// The W3C trace-context propagator (`traceparent`, `tracestate`).
pub fn propagator() -> TraceContextPropagator {
    TraceContextPropagator::new()
}

/// The context a carrier (AMQP headers, HTTP headers) propagates.
pub fn extract(carrier: &dyn Extractor) -> Context {
    propagator().extract(carrier)
}

/// Writes the context of the current span into a carrier.
pub fn inject_current(carrier: &mut dyn Injector) {
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let context = tracing::Span::current().context();
    propagator().inject_context(&context, carrier);
}

/// The trace id of a span as 32 lowercase hex digits, if it has one.
pub fn trace_id(span: &tracing::Span) -> Option<String> {
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let context = span.context();
    let span_context = context.span().span_context().clone();
    span_context
        .is_valid()
        .then(|| span_context.trace_id().to_string())
}

/// One JSON object per line: time, level, target, message and fields, the
/// innermost span's name, and its trace and span ids.
struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut line = Map::new();
        let now = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        line.insert("timestamp".into(), Value::String(now));
        line.insert(
            "level".into(),
            Value::String(event.metadata().level().to_string()),
        );
        line.insert(
            "target".into(),
            Value::String(event.metadata().target().to_owned()),
        );
        event.record(&mut JsonFields(&mut line));
        if let Some(span) = ctx.lookup_current() {
            line.insert("span".into(), Value::String(span.name().to_owned()));
            let context = tracing::dispatcher::get_default(|dispatch| {
                tracing_opentelemetry::get_otel_context(&span.id(), dispatch)
            });
            if let Some(context) = context {
                let otel_span = context.span();
                let ids = otel_span.span_context();
                if ids.is_valid() {
                    line.insert("trace_id".into(), Value::String(ids.trace_id().to_string()));
                    line.insert("span_id".into(), Value::String(ids.span_id().to_string()));
                }
            }
        }
        writeln!(writer, "{}", Value::Object(line))
    }
}

struct JsonFields<'a>(&'a mut Map<String, Value>);

impl Visit for JsonFields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().to_owned(), Value::String(format!("{value:?}")));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0
            .insert(field.name().to_owned(), Value::String(value.to_owned()));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_owned(), Value::Bool(value));
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0
            .insert(field.name().to_owned(), Value::String(value.to_string()));
    }
}
