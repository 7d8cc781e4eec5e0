//! Whether the consumer takes new deliveries: paused while the payment
//! provider or the database is down, with one order at a time testing it.
//!
//! Every call to a dependency is counted as it returns ([`Watched`] wraps
//! the use case's two ports), so that a success counts as soon as it is
//! known; a [`Circuit`] per dependency decides from that whether the
//! dependency is down. A test order's outcome, read from its result (see
//! [`Observed::of`]), closes the circuit or puts the next test off. While one
//! is open, [`Intake::admit`] lets no delivery through but a single test
//! order when the circuit says a test is due; the test's outcome closes
//! the circuit or puts the next test off. Orders that fail because of the
//! outage meanwhile are held by the consumer and run again once intake
//! resumes, so an outage spends no attempt, however long it lasts.
//!
//! Transitions are logged once each and shown as
//! `order_processor_circuit_open{dependency}`.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub use self::watched::Watched;
use crate::circuit::{Circuit, CircuitSettings, Transition};
use crate::metrics::Metrics;
use crate::usecase::{ProcessError, Processed};

mod watched;

/// The dependencies that can pause intake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dependency {
    Payment,
    Database,
}

impl Dependency {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Payment => "payment",
            Self::Database => "database",
        }
    }
}

/// What one order's processing showed of each dependency: `Some(true)`
/// when it failed as in an outage, `Some(false)` when it answered, `None`
/// when the order did not reach it (or its answer says nothing about an
/// outage, like a 409 or a 429).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Observed {
    pub payment: Option<bool>,
    pub database: Option<bool>,
}

impl Observed {
    pub fn of(result: &Result<Processed, ProcessError>) -> Self {
        let error = match result {
            Ok(Processed::Charged(_)) => {
                return Self {
                    payment: Some(false),
                    database: Some(false),
                };
            }
            Ok(Processed::AlreadyProcessed) => {
                return Self {
                    payment: None,
                    database: Some(false),
                };
            }
            Err(error) => error,
        };
        match error {
            ProcessError::Malformed(_) | ProcessError::Invalid(_) | ProcessError::Interrupted => {
                Self::default()
            }
            // The lookup answered before the provider did.
            ProcessError::PaymentDeclined | ProcessError::PaymentRejected { .. } => Self {
                payment: Some(false),
                database: Some(false),
            },
            ProcessError::PaymentUnavailable { reason, .. } => Self {
                payment: reason.is_outage().then_some(true),
                database: Some(false),
            },
            ProcessError::RepositoryUnavailable(error) => Self {
                payment: None,
                database: error.is_outage().then_some(true),
            },
        }
    }

    fn of_dependency(self, dependency: Dependency) -> Option<bool> {
        match dependency {
            Dependency::Payment => self.payment,
            Dependency::Database => self.database,
        }
    }

    /// Whether any dependency failed as in an outage.
    pub fn outage(self) -> bool {
        self.payment == Some(true) || self.database == Some(true)
    }
}

/// How a delivery was let in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Intake is open.
    Normal,
    /// Intake is paused and this order tests the failing dependencies.
    Test,
}

struct Books {
    payment: Circuit,
    database: Circuit,
    /// A test order is running.
    testing: bool,
}

impl Books {
    fn circuit(&mut self, dependency: Dependency) -> &mut Circuit {
        match dependency {
            Dependency::Payment => &mut self.payment,
            Dependency::Database => &mut self.database,
        }
    }

    fn paused(&self) -> bool {
        self.payment.is_open() || self.database.is_open()
    }

    /// When a test may start: the earliest due test of an open circuit.
    fn next_test(&self) -> Option<Instant> {
        [self.payment.next_probe(), self.database.next_probe()]
            .into_iter()
            .flatten()
            .min()
    }
}

/// The gate in front of the worker pool, shared by the consumer (which
/// asks to be let in) and the order tasks (which report outcomes).
pub struct Intake {
    books: Mutex<Books>,
    /// Woken whenever a circuit changes or a test ends.
    changed: Notify,
    metrics: Arc<Metrics>,
}

impl Intake {
    pub fn new(settings: CircuitSettings, metrics: Arc<Metrics>) -> Self {
        let now = Instant::now();
        Self {
            books: Mutex::new(Books {
                payment: Circuit::new(settings, now),
                database: Circuit::new(settings, now),
                testing: false,
            }),
            changed: Notify::new(),
            metrics,
        }
    }

    fn books(&self) -> std::sync::MutexGuard<'_, Books> {
        // The books hold counters only; a panic elsewhere cannot leave them
        // in a state worse than slightly off counts.
        self.books.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether a dependency is down now.
    pub fn is_paused(&self) -> bool {
        self.books().paused()
    }

    /// Waits until a delivery may be taken: at once while intake is open;
    /// while paused, when a test is due and no other test runs. `None` when
    /// `stop` is cancelled first.
    pub async fn admit(&self, stop: &CancellationToken) -> Option<Admission> {
        loop {
            if stop.is_cancelled() {
                return None;
            }
            // Registered before the books are read, so that a change made
            // in between still wakes this wait.
            let changed = self.changed.notified();
            let wait_until = {
                let mut books = self.books();
                if !books.paused() {
                    return Some(Admission::Normal);
                }
                let due = books.next_test().filter(|_| !books.testing);
                match due {
                    Some(at) if at <= Instant::now() => {
                        books.testing = true;
                        return Some(Admission::Test);
                    }
                    other => other,
                }
            };
            let until_due = async {
                match wait_until {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = stop.cancelled() => return None,
                () = changed => {}
                () = until_due => {}
            }
        }
    }

    /// Gives back an admission that no delivery used (the session ended
    /// while waiting for one), so that the next test is not held up.
    pub fn abandon(&self, admission: Admission) {
        if admission == Admission::Test {
            self.books().testing = false;
            self.changed.notify_waiters();
        }
    }

    /// Counts the outcome of one call to a dependency, as it comes back:
    /// a success counts as soon as it is known, not once the rest of its
    /// order is done, so that quick failures never outrun it.
    pub fn saw(&self, dependency: Dependency, failed: Option<bool>) {
        let Some(failed) = failed else { return };
        let transition = self
            .books()
            .circuit(dependency)
            .record(Instant::now(), failed);
        if let Some(transition) = transition {
            self.announce(dependency, transition);
            self.changed.notify_waiters();
        }
    }

    /// Takes in what an order showed of the dependencies (a test's outcome
    /// decides its circuits), and returns whether intake is paused now.
    pub fn observe(&self, admission: Admission, observed: Observed) -> bool {
        let now = Instant::now();
        let mut transitions = Vec::new();
        let paused = {
            let mut books = self.books();
            for dependency in [Dependency::Payment, Dependency::Database] {
                let circuit = books.circuit(dependency);
                // The calls of a normal order were counted as they were
                // made (see [`Watched`]); a test's outcome decides the circuit.
                let transition = match (observed.of_dependency(dependency), admission) {
                    (None, _) | (Some(_), Admission::Normal) => None,
                    (Some(failed), Admission::Test) => circuit.probed(now, failed),
                };
                if let Some(transition) = transition {
                    transitions.push((dependency, transition));
                }
            }
            if admission == Admission::Test {
                books.testing = false;
            }
            books.paused()
        };
        for (dependency, transition) in &transitions {
            self.announce(*dependency, *transition);
        }
        if admission == Admission::Test || !transitions.is_empty() {
            self.changed.notify_waiters();
        }
        paused
    }

    fn announce(&self, dependency: Dependency, transition: Transition) {
        let name = dependency.as_str();
        match transition {
            Transition::Opened => {
                tracing::warn!(
                    dependency = name,
                    "circuit open: {name} is failing for most orders; pausing intake and testing it with one order at a time"
                );
                self.metrics.circuit(name, true);
            }
            Transition::Closed => {
                tracing::info!(
                    dependency = name,
                    "circuit closed: {name} answered a test order; resuming intake"
                );
                self.metrics.circuit(name, false);
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::domain::{ChargeId, RepositoryError, UnavailableReason};

    fn settings() -> CircuitSettings {
        CircuitSettings {
            window: Duration::from_secs(10),
            min_calls: 3,
            failure_ratio: 0.5,
            consecutive_failures: 3,
            first_probe_after: Duration::from_millis(50),
            max_probe_interval: Duration::from_millis(200),
        }
    }

    fn payment_down() -> Result<Processed, ProcessError> {
        Err(ProcessError::PaymentUnavailable {
            reason: UnavailableReason::Status(503),
            retry_after: None,
        })
    }

    #[test]
    fn what_a_result_shows_of_each_dependency() {
        let charged = Ok(Processed::Charged(ChargeId::new("ch_1")));
        assert_eq!(
            Observed::of(&charged),
            Observed {
                payment: Some(false),
                database: Some(false)
            }
        );
        assert_eq!(Observed::of(&payment_down()).payment, Some(true));
        let in_progress = Err(ProcessError::PaymentUnavailable {
            reason: UnavailableReason::InProgress,
            retry_after: None,
        });
        assert_eq!(Observed::of(&in_progress).payment, None);
        let row = Err(ProcessError::RepositoryUnavailable(
            RepositoryError::RowRejected("bad value".into()),
        ));
        assert_eq!(Observed::of(&row), Observed::default());
        let database = Err(ProcessError::RepositoryUnavailable(
            RepositoryError::Unavailable("refused".into()),
        ));
        assert_eq!(Observed::of(&database).database, Some(true));
    }

    #[tokio::test]
    async fn intake_pauses_on_an_outage_lets_one_test_through_and_resumes_when_it_succeeds() {
        let metrics = Arc::new(Metrics::new());
        let intake = Intake::new(settings(), Arc::clone(&metrics));
        let stop = CancellationToken::new();
        assert_eq!(intake.admit(&stop).await, Some(Admission::Normal));
        let down = Observed::of(&payment_down());
        intake.saw(Dependency::Payment, Some(true));
        intake.saw(Dependency::Payment, Some(true));
        assert!(!intake.is_paused());
        intake.saw(Dependency::Payment, Some(true));
        assert!(intake.is_paused());
        // A normal order's outcome changes nothing: its calls were counted.
        assert!(intake.observe(Admission::Normal, down));

        let started = Instant::now();
        assert_eq!(intake.admit(&stop).await, Some(Admission::Test));
        assert!(started.elapsed() >= Duration::from_millis(40));
        // A second test waits for the first to end.
        let second = tokio::time::timeout(Duration::from_millis(150), intake.admit(&stop)).await;
        assert!(second.is_err(), "{second:?}");
        assert!(intake.observe(Admission::Test, down));
        assert_eq!(intake.admit(&stop).await, Some(Admission::Test));
        let charged = Observed::of(&Ok(Processed::Charged(ChargeId::new("ch_1"))));
        assert!(!intake.observe(Admission::Test, charged));
        assert_eq!(intake.admit(&stop).await, Some(Admission::Normal));
    }

    #[tokio::test]
    async fn a_test_that_does_not_reach_the_dependency_lets_the_next_one_go_at_once() {
        let intake = Intake::new(settings(), Arc::new(Metrics::new()));
        let stop = CancellationToken::new();
        for _ in 0..3 {
            intake.saw(Dependency::Payment, Some(true));
        }
        assert_eq!(intake.admit(&stop).await, Some(Admission::Test));
        let already = Observed::of(&Ok(Processed::AlreadyProcessed));
        assert!(intake.observe(Admission::Test, already));
        let started = Instant::now();
        assert_eq!(intake.admit(&stop).await, Some(Admission::Test));
        assert!(started.elapsed() < Duration::from_millis(40));
        stop.cancel();
        intake.observe(Admission::Test, already);
        assert_eq!(intake.admit(&stop).await, None);
    }
}
