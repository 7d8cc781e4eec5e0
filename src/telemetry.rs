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
//!
//! The spans of an order (process, validate, the database and HTTP client
//! spans, and the send spans of its copies; [`messaging`] has the
//! conventions they follow) are made with the OpenTelemetry API directly, not through `tracing`: they are the
//! daemon's hot path, and going through the tracing registry and its
//! OpenTelemetry layer cost about four times as much CPU per span. An
//! order's OpenTelemetry [`Context`] is current while its future is polled
//! (`FutureExt::with_context`); it carries the [`OrderTracer`], so the use
//! case and the adapters open the order's steps ([`Step`]) without holding
//! a tracer, and the log layer takes each line's ids from it.

mod logs;
pub mod messaging;
mod propagation;
mod step;

use std::time::Duration;

use opentelemetry::Context;
use opentelemetry::trace::{
    SpanBuilder, SpanContext, TraceContextExt, TraceFlags, TraceState, TracerProvider as _,
};
use opentelemetry_otlp::{Protocol, WithExportConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{IdGenerator as _, RandomIdGenerator, SdkTracer, SdkTracerProvider};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

use self::logs::JsonLogs;
use self::propagation::ids;
pub use self::propagation::{context_trace_id, extract, inject};
pub use self::step::Step;

/// A telemetry set-up that cannot be used. `Display` names the variable
/// (`RUST_LOG`, `OTEL_EXPORTER_OTLP_PROTOCOL`, …) and what is wrong with it.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {key} {problem}")]
pub struct TelemetryError {
    pub key: &'static str,
    pub problem: String,
}

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
    sdk_disabled: bool,
}

impl Telemetry {
    /// Installs the subscriber. `default_service` names the service when
    /// `OTEL_SERVICE_NAME` does not.
    pub fn init(default_service: &'static str, target: LogTarget) -> Result<Self, TelemetryError> {
        let (filter, directives) = log_filter(target)?;
        let sdk_disabled = sdk_disabled();
        let provider = tracer_provider(default_service, sdk_disabled)?;
        let tracer = provider.tracer("order-processor");
        // For the spans made outside an order (`publish`'s send spans).
        opentelemetry::global::set_tracer_provider(provider.clone());
        // Busy/idle timing and context activation cost a clock read and a
        // thread-local swap on every poll of every instrumented future; the
        // span's own start and end times are all a trace needs.
        let spans = tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_tracked_inactivity(false)
            .with_context_activation(false)
            .with_threads(false)
            .with_location(false)
            .with_target(false);
        let logs = JsonLogs::new(filter, directives.contains('['), target);
        tracing_subscriber::registry()
            .with(spans)
            .with(logs)
            .try_init()
            .map_err(|error| TelemetryError {
                key: "RUST_LOG",
                problem: format!("could not install the logger ({error})"),
            })?;
        Ok(Self {
            provider,
            sdk_disabled,
        })
    }

    /// The tracer of the orders' spans, exported like every other span;
    /// with `OTEL_SDK_DISABLED=true`, one that records nothing.
    pub fn order_tracer(&self) -> OrderTracer {
        if self.sdk_disabled {
            OrderTracer(Spans::IdsOnly)
        } else {
            OrderTracer(Spans::Recorded(self.provider.tracer("order-processor")))
        }
    }

    /// Exports what is still buffered, waiting at most `timeout`.
    pub fn shutdown(self, timeout: Duration) {
        if let Err(error) = self.provider.shutdown_with_timeout(timeout) {
            tracing::warn!(%error, "could not flush the last traces");
        }
    }
}

/// Checks what [`Telemetry::init`] would refuse (`RUST_LOG`, the OTLP
/// protocol and endpoint) without installing anything, for `check-config`.
pub fn check(default_service: &'static str) -> Result<(), TelemetryError> {
    log_filter(LogTarget::Stdout)?;
    let provider = tracer_provider(default_service, sdk_disabled())?;
    // Ignored: nothing was recorded, so there is nothing to flush or lose.
    let _ = provider.shutdown();
    Ok(())
}

/// The filter `RUST_LOG` asks for, and its directives.
fn log_filter(target: LogTarget) -> Result<(EnvFilter, String), TelemetryError> {
    let directives = std::env::var("RUST_LOG").unwrap_or_else(|_| match target {
        LogTarget::Stdout => "info".to_owned(),
        // A command's failure is the one line it prints; the AMQP client's
        // own account of a refused login would come on top.
        LogTarget::Stderr => "info,lapin=off".to_owned(),
    });
    let filter = EnvFilter::try_new(&directives).map_err(|error| TelemetryError {
        key: "RUST_LOG",
        problem: format!("is not a valid filter ({error})"),
    })?;
    Ok((filter, directives))
}

/// `OTEL_SDK_DISABLED=true`: no span is recorded, nothing is exported.
pub fn sdk_disabled() -> bool {
    std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"))
}

fn tracer_provider(
    default_service: &'static str,
    sdk_disabled: bool,
) -> Result<SdkTracerProvider, TelemetryError> {
    let service = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| default_service.to_owned());
    let builder = SdkTracerProvider::builder()
        .with_resource(Resource::builder().with_service_name(service).build());
    let no_export =
        sdk_disabled || std::env::var("OTEL_TRACES_EXPORTER").is_ok_and(|v| v == "none");
    if no_export {
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
            return Err(TelemetryError {
                key: "OTEL_EXPORTER_OTLP_PROTOCOL",
                problem: format!("must be grpc or http/protobuf (got {protocol})"),
            });
        }
    };
    let exporter = exporter.map_err(|error| TelemetryError {
        key: "OTEL_EXPORTER_OTLP_ENDPOINT",
        problem: format!("cannot be used ({error})"),
    })?;
    Ok(builder.with_batch_exporter(exporter).build())
}

/// Makes the consumer span of each delivery; the context it returns hands
/// the tracer down to the spans made inside it.
#[derive(Clone, Debug)]
pub struct OrderTracer(Spans);

#[derive(Clone, Debug)]
enum Spans {
    /// Recorded by the SDK, exported as configured.
    Recorded(SdkTracer),
    /// `OTEL_SDK_DISABLED=true`: nothing is recorded. A span is only a new
    /// span id under its parent's trace id, flags and state, so that log
    /// lines and rows still carry ids and the publisher's sampling decision
    /// reaches the provider unchanged.
    IdsOnly,
}

/// What an order's context carries besides its span: the tracer of the
/// child spans, and the span's name for the log lines written inside it.
struct OrderContext {
    tracer: OrderTracer,
    span_name: &'static str,
}

impl OrderTracer {
    /// Starts the span `span` describes as a child of `parent` (the
    /// publisher's context, or an empty one) and returns the order's
    /// context: that span, and this tracer for its children. `log_name`
    /// names the span in log lines. `span` is only called when spans are
    /// recorded.
    pub fn start(
        &self,
        span: impl FnOnce() -> SpanBuilder,
        log_name: &'static str,
        parent: &Context,
    ) -> Context {
        let in_order = OrderContext {
            tracer: self.clone(),
            span_name: log_name,
        };
        match &self.0 {
            Spans::Recorded(tracer) => {
                let span = span().start_with_context(tracer, parent);
                parent.with_value(in_order).with_span(span)
            }
            Spans::IdsOnly => parent
                .with_value(in_order)
                .with_remote_span_context(ids_under(parent)),
        }
    }

    /// A span under `parent`'s span, in a context that keeps `parent`'s
    /// values.
    fn child(&self, span: impl FnOnce() -> SpanBuilder, parent: &Context) -> Context {
        match &self.0 {
            Spans::Recorded(tracer) => parent.with_span(span().start_with_context(tracer, parent)),
            Spans::IdsOnly => parent.with_remote_span_context(ids_under(parent)),
        }
    }
}

/// A new span's ids under `parent`'s span, or in a new trace (unsampled)
/// when there is none.
fn ids_under(parent: &Context) -> SpanContext {
    let ids = RandomIdGenerator::default();
    let span = parent.span();
    let parent = span.span_context();
    if parent.is_valid() {
        SpanContext::new(
            parent.trace_id(),
            ids.new_span_id(),
            parent.trace_flags(),
            false,
            parent.trace_state().clone(),
        )
    } else {
        SpanContext::new(
            ids.new_trace_id(),
            ids.new_span_id(),
            TraceFlags::default(),
            false,
            TraceState::default(),
        )
    }
}

#[cfg(test)]
#[allow(clippy::panic)]
mod tests {
    use opentelemetry::trace::{SpanId, TraceId};

    use super::*;

    fn sampled_parent() -> Context {
        Context::new().with_remote_span_context(SpanContext::new(
            TraceId::from(0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736),
            SpanId::from(0x00f0_67aa_0ba9_02b7),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        ))
    }

    fn ids_of(context: &Context) -> SpanContext {
        context.span().span_context().clone()
    }

    #[test]
    fn a_disabled_sdk_records_nothing_but_keeps_the_publishers_trace_and_flags() {
        let parent = sampled_parent();
        let order = OrderTracer(Spans::IdsOnly).start(
            || panic!("no span is described when nothing is recorded"),
            "process",
            &parent,
        );
        let step = {
            let _current = order.clone().attach();
            Step::start("charge", || panic!("nor for a step"))
        };
        let child = step.context();
        for context in [&order, child] {
            let ids = ids_of(context);
            assert!(!context.span().is_recording());
            assert_eq!(ids.trace_id(), ids_of(&parent).trace_id());
            assert!(
                ids.is_sampled(),
                "the publisher's sampling decision is kept"
            );
            assert_ne!(ids.span_id(), ids_of(&parent).span_id());
            assert!(ids.is_valid());
            assert_eq!(
                context.get::<OrderContext>().map(|o| o.span_name),
                Some("process"),
                "a step keeps the order's values"
            );
        }
        assert_ne!(ids_of(&order).span_id(), ids_of(child).span_id());
    }

    #[test]
    fn a_disabled_sdk_starts_an_unsampled_trace_when_there_is_no_parent() {
        let order = OrderTracer(Spans::IdsOnly).start(
            || SpanBuilder::from_name("process"),
            "process",
            &Context::new(),
        );
        let ids = ids_of(&order);
        assert!(ids.is_valid());
        assert!(!ids.is_sampled());
    }

    #[test]
    fn an_enabled_sdk_records_the_spans() {
        let provider = SdkTracerProvider::builder().build();
        let tracer = OrderTracer(Spans::Recorded(provider.tracer("test")));
        let order = tracer.start(
            || SpanBuilder::from_name("process"),
            "process",
            &sampled_parent(),
        );
        assert!(order.span().is_recording());
        assert_eq!(
            ids_of(&order).trace_id(),
            ids_of(&sampled_parent()).trace_id()
        );
    }
}
