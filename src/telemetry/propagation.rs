//! The W3C trace context (`traceparent`, `tracestate`) in and out of a
//! carrier (AMQP or HTTP headers), and the ids as the logs and the rows
//! write them.

use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator as _};
use opentelemetry::trace::{SpanId, TraceContextExt as _, TraceId};
use opentelemetry_sdk::propagation::TraceContextPropagator;

/// Writes `context`'s span into a carrier as the W3C propagator does:
/// `traceparent` (`00-<trace id>-<span id>-<flags>`, the flags reduced to
/// `sampled`), and `tracestate` when the span has one (an empty header
/// would say nothing). Written here rather than by the SDK's propagator,
/// whose `format!` of the two ids took 1 % of the daemon's CPU for every
/// charge.
pub fn inject(context: &Context, carrier: &mut dyn Injector) {
    let span = context.span();
    let ids = span.span_context();
    if !ids.is_valid() {
        return;
    }
    let flags = if ids.is_sampled() { "01" } else { "00" };
    let traceparent = [
        "00",
        &hex::encode(ids.trace_id().to_bytes()),
        &hex::encode(ids.span_id().to_bytes()),
        flags,
    ]
    .join("-");
    carrier.set("traceparent", traceparent);
    let state = ids.trace_state().header();
    if !state.is_empty() {
        carrier.set("tracestate", state);
    }
}

/// The trace id of an order's context as 32 lowercase hex digits, if it
/// has one.
pub fn context_trace_id(context: &Context) -> Option<String> {
    valid_ids(context).map(|(trace_id, _)| hex::encode(trace_id.to_bytes()))
}

/// The trace and span ids of a context's span as lowercase hex, if valid.
pub(super) fn ids(context: &Context) -> Option<(String, String)> {
    valid_ids(context).map(|(trace_id, span_id)| {
        (
            hex::encode(trace_id.to_bytes()),
            hex::encode(span_id.to_bytes()),
        )
    })
}

/// A context's span ids, if valid; formatted only by who needs them.
fn valid_ids(context: &Context) -> Option<(TraceId, SpanId)> {
    let span = context.span();
    let ids = span.span_context();
    ids.is_valid().then(|| (ids.trace_id(), ids.span_id()))
}

/// The W3C trace-context propagator (`traceparent`, `tracestate`).
fn propagator() -> TraceContextPropagator {
    TraceContextPropagator::new()
}

/// The context a carrier (AMQP headers, HTTP headers) propagates.
pub fn extract(carrier: &dyn Extractor) -> Context {
    propagator().extract(carrier)
}

#[cfg(test)]
#[allow(clippy::panic)]
mod tests {
    use std::collections::HashMap;

    use opentelemetry::trace::{SpanContext, TraceFlags, TraceState};

    use super::*;

    /// What the SDK's W3C propagator writes for `context`.
    fn injected_by_the_sdk(context: &Context) -> HashMap<String, String> {
        let mut headers = HashMap::new();
        propagator().inject_context(context, &mut headers);
        headers
    }

    #[test]
    fn inject_writes_what_the_w3c_propagator_writes_but_an_empty_tracestate() {
        let state = TraceState::from_key_value([("vendor", "opaque"), ("other", "x")])
            .unwrap_or_else(|error| panic!("{error}"));
        let flags = [
            TraceFlags::SAMPLED,
            TraceFlags::default(),
            TraceFlags::new(0xff),
        ];
        let examples = [
            (
                0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736,
                0x00f0_67aa_0ba9_02b7,
            ),
            (1, 1),
            (u128::MAX, u64::MAX),
        ];
        for (trace_id, span_id) in examples {
            for flags in flags {
                for state in [TraceState::default(), state.clone()] {
                    let context = Context::new().with_remote_span_context(SpanContext::new(
                        TraceId::from(trace_id),
                        SpanId::from(span_id),
                        flags,
                        true,
                        state.clone(),
                    ));
                    let mut ours = HashMap::new();
                    inject(&context, &mut ours);
                    let mut sdk = injected_by_the_sdk(&context);
                    if sdk.get("tracestate").is_some_and(String::is_empty) {
                        sdk.remove("tracestate");
                    }
                    assert_eq!(ours, sdk, "{trace_id:x} {span_id:x} {flags:?} {state:?}");
                    assert_eq!(
                        context_trace_id(&context),
                        Some(TraceId::from(trace_id).to_string())
                    );
                    assert_eq!(
                        ids(&context),
                        Some((
                            TraceId::from(trace_id).to_string(),
                            SpanId::from(span_id).to_string()
                        ))
                    );
                }
            }
        }
        let mut none = HashMap::new();
        inject(&Context::new(), &mut none);
        assert!(none.is_empty(), "no span, no header: {none:?}");
        assert_eq!(context_trace_id(&Context::new()), None);
    }
}
