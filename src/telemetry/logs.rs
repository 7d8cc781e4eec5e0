//! The log layer: JSON lines on stdout (or stderr), each with the name and
//! ids of the span it was written in, and the subscriber's only filter.

use std::fmt;
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::Context;
use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::subscriber::Interest;
use tracing::{Event, Subscriber, span};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::Context as LayerContext;
use tracing_subscriber::registry::{LookupSpan, SpanRef};

use super::{LogTarget, OrderContext, ids};

/// The log layer, and the subscriber's only filter.
///
/// The daemon's own spans and events at INFO and above are always enabled,
/// so that traces never depend on the log level; everything else is enabled
/// as `RUST_LOG` says, and an event becomes a line only if `RUST_LOG` lets it
/// through. One global filter instead of one per layer keeps the cost of a
/// span to the registry and the OpenTelemetry layer: per-layer filters and
/// a formatting layer do work on every enter, exit and record of every span.
pub(super) struct JsonLogs {
    filter: EnvFilter,
    /// `RUST_LOG` filters by span (`[span{field=value}]`), so the filter must
    /// follow spans being entered and left.
    dynamic: bool,
    target: LogTarget,
}

impl JsonLogs {
    /// `dynamic` when `RUST_LOG` filters by span.
    pub(super) fn new(filter: EnvFilter, dynamic: bool, target: LogTarget) -> Self {
        Self {
            filter,
            dynamic,
            target,
        }
    }
}

fn is_ours(meta: &tracing::Metadata<'_>) -> bool {
    meta.target().starts_with("order_processor") && *meta.level() <= tracing::Level::INFO
}

/// Lines no `RUST_LOG` can enable, because they can carry secrets:
/// - the AMQP client's TRACE lines dump whole frames, the login's password
///   included;
/// - the HTTP clients' DEBUG and TRACE lines (hyper, hyper-util, reqwest, and
///   h2 under the OTLP exporter) name connection-pool keys with a URL's
///   authority (`pooling idle connection for ("https", user:password@host)`)
///   and can show request headers, such as the provider's `Authorization`.
///   Their INFO and above still show. rustls is not capped: it never sees
///   an HTTP header or a URL's user info, only the server's name.
fn never_shown(meta: &tracing::Metadata<'_>) -> bool {
    let level = *meta.level();
    let target = meta.target();
    (level == tracing::Level::TRACE && is_from(target, &["lapin", "amq_protocol"]))
        || (level > tracing::Level::INFO
            && is_from(target, &["hyper", "hyper_util", "reqwest", "h2"]))
}

/// Whether `target` is one of `crates` or a module of one.
fn is_from(target: &str, crates: &[&str]) -> bool {
    crates.iter().any(|name| {
        target
            .strip_prefix(name)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
    })
}

impl<S> tracing_subscriber::Layer<S> for JsonLogs
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn register_callsite(&self, meta: &'static tracing::Metadata<'static>) -> Interest {
        if is_ours(meta) {
            return Interest::always();
        }
        if never_shown(meta) {
            return Interest::never();
        }
        tracing_subscriber::Layer::<S>::register_callsite(&self.filter, meta)
    }

    fn enabled(&self, meta: &tracing::Metadata<'_>, ctx: LayerContext<'_, S>) -> bool {
        is_ours(meta) || (!never_shown(meta) && self.filter.enabled(meta, ctx))
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        tracing_subscriber::Layer::<S>::max_level_hint(&self.filter)
            .map(|level| level.max(LevelFilter::INFO))
    }

    fn on_new_span(&self, attrs: &span::Attributes<'_>, id: &span::Id, ctx: LayerContext<'_, S>) {
        if self.dynamic {
            self.filter.on_new_span(attrs, id, ctx);
        }
    }

    fn on_record(&self, id: &span::Id, values: &span::Record<'_>, ctx: LayerContext<'_, S>) {
        if self.dynamic {
            self.filter.on_record(id, values, ctx);
        }
    }

    fn on_enter(&self, id: &span::Id, ctx: LayerContext<'_, S>) {
        if self.dynamic {
            self.filter.on_enter(id, ctx);
        }
    }

    fn on_exit(&self, id: &span::Id, ctx: LayerContext<'_, S>) {
        if self.dynamic {
            self.filter.on_exit(id, ctx);
        }
    }

    fn on_close(&self, id: span::Id, ctx: LayerContext<'_, S>) {
        if self.dynamic {
            self.filter.on_close(id, ctx);
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: LayerContext<'_, S>) {
        let meta = event.metadata();
        if never_shown(meta)
            || !self.filter.enabled(meta, ctx.clone())
            || !once_for_exporter_errors(meta)
        {
            return;
        }
        let mut line = json_line(event, ctx.lookup_current()).to_string();
        line.push('\n');
        // A log line that cannot be written has nowhere else to go.
        let _ = match self.target {
            LogTarget::Stdout => std::io::stdout().lock().write_all(line.as_bytes()),
            LogTarget::Stderr => std::io::stderr().lock().write_all(line.as_bytes()),
        };
    }
}

/// One JSON object: time, level, target, message and fields, then the name
/// and ids of the current order's span, or else of the innermost tracing
/// span.
fn json_line<S>(event: &Event<'_>, span: Option<SpanRef<'_, S>>) -> Value
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
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
    let in_order = Context::map_current(|current| {
        let order = current.get::<OrderContext>()?;
        let name = super::step::current_name().unwrap_or(order.span_name);
        Some((name, current.clone()))
    });
    let (name, context) = match (in_order, span) {
        // Inside an order: its spans are not tracing spans.
        (Some((name, context)), _) => (Some(name), Some(context)),
        (None, Some(span)) => (
            Some(span.name()),
            tracing::dispatcher::get_default(|dispatch| {
                tracing_opentelemetry::get_otel_context(&span.id(), dispatch)
            }),
        ),
        (None, None) => (None, None),
    };
    if let Some(name) = name {
        line.insert("span".into(), Value::String(name.to_owned()));
    }
    if let Some((trace_id, span_id)) = context.as_ref().and_then(ids) {
        line.insert("trace_id".into(), Value::String(trace_id));
        line.insert("span_id".into(), Value::String(span_id));
    }
    Value::Object(line)
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

static EXPORT_FAILURE_REPORTED: AtomicBool = AtomicBool::new(false);

/// The SDK reports every failed export; an absent collector would flood
/// the logs, so only its first complaint is shown.
fn once_for_exporter_errors(meta: &tracing::Metadata<'_>) -> bool {
    if !meta.target().starts_with("opentelemetry") {
        return true;
    }
    if *meta.level() > tracing::Level::WARN {
        return false;
    }
    !EXPORT_FAILURE_REPORTED.swap(true, Ordering::Relaxed)
}
