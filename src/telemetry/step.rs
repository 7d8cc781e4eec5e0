//! The steps of an order (validate, lookup, charge, save): child spans of
//! the order's span, and the name log lines written inside them carry.
//!
//! A step's context is the order's context with the step's span in it, so
//! it shares the order's values (the tracer, the order's log name) instead
//! of copying them: an OpenTelemetry context copies its whole value map for
//! every value added, which cost four map copies per order when each step
//! added its own name. The step's name is instead made current on the
//! thread while its work runs, and read back by the log layer.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use opentelemetry::Context;
use opentelemetry::context::FutureExt as _;
use opentelemetry::trace::SpanBuilder;

use super::OrderContext;

thread_local! {
    /// The step whose work this thread is running, if any.
    static CURRENT: Cell<Option<&'static str>> = const { Cell::new(None) };
}

/// A step of the current order: its context (its span under the order's
/// span) and its name. The span ends when the last clone of the context is
/// dropped.
pub struct Step {
    context: Context,
    name: &'static str,
}

impl Step {
    /// Starts the step `name` (the name its log lines carry) under the
    /// current order's span, as the span `span` describes. Outside an order (no order in the current
    /// context: unit tests, benchmarks) no span is made and the step runs
    /// in the current context.
    pub fn start(name: &'static str, span: impl FnOnce() -> SpanBuilder) -> Self {
        let context = Context::map_current(|current| match current.get::<OrderContext>() {
            Some(order) => order.tracer.child(span, current),
            None => current.clone(),
        });
        Self { context, name }
    }

    /// The step's context, to set attributes on its span or to propagate it.
    pub fn context(&self) -> &Context {
        &self.context
    }

    /// Runs `work` with the step's context current and its name on log lines.
    pub fn run<F: Future>(&self, work: F) -> impl Future<Output = F::Output> {
        Named {
            name: self.name,
            work,
        }
        .with_context(self.context.clone())
    }

    /// [`Step::run`] for work that does not wait.
    pub fn run_now<T>(&self, work: impl FnOnce() -> T) -> T {
        let _attached = self.context.clone().attach();
        let _named = NameGuard::enter(self.name);
        work()
    }
}

/// The name of the step this thread is running, for log lines.
pub(super) fn current_name() -> Option<&'static str> {
    CURRENT.with(Cell::get)
}

pin_project_lite::pin_project! {
    /// Makes a step's name current on the thread while `work` is polled.
    struct Named<F> {
        name: &'static str,
        #[pin]
        work: F,
    }
}

impl<F: Future> Future for Named<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<F::Output> {
        let this = self.project();
        let _named = NameGuard::enter(this.name);
        this.work.poll(cx)
    }
}

/// Restores the thread's previous step name when dropped, also when the
/// work it wraps unwinds.
struct NameGuard(Option<&'static str>);

impl NameGuard {
    fn enter(name: &'static str) -> Self {
        Self(CURRENT.with(|current| current.replace(Some(name))))
    }
}

impl Drop for NameGuard {
    fn drop(&mut self) {
        CURRENT.with(|current| current.set(self.0));
    }
}

#[cfg(test)]
#[allow(clippy::panic)]
mod tests {
    use std::task::Waker;

    use super::*;

    #[test]
    fn a_steps_name_is_current_only_while_its_work_runs() {
        assert_eq!(current_name(), None);
        let step = Step::start("charge", || panic!("no span outside an order"));
        let inner = Step::start("save", || panic!("no span outside an order"));
        let seen = step.run_now(|| (current_name(), inner.run_now(current_name), current_name()));
        assert_eq!(seen, (Some("charge"), Some("save"), Some("charge")));
        assert_eq!(current_name(), None);

        let mut work = std::pin::pin!(step.run(async { current_name() }));
        let mut cx = TaskContext::from_waker(Waker::noop());
        assert_eq!(work.as_mut().poll(&mut cx), Poll::Ready(Some("charge")));
        assert_eq!(current_name(), None);
    }
}
