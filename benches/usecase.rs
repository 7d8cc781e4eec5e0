//! Benchmark of `ProcessOrder::execute`, the use case every delivery runs,
//! over in-memory ports: its cost in nanoseconds and its heap allocations
//! per order, on the typical ~500-byte order of `decode.rs`.
//!
//! Three cases, because they stop at different steps: `charged` (a new order
//! id every time: validate → lookup miss → charge → save), `already_processed`
//! (the same order again: validate → lookup hit) and `invalid` (an unknown
//! currency: validate fails). The ports do what an in-memory adapter would:
//! the repository is a `HashMap` under a `Mutex`, the provider hands out a
//! formatted charge id. For `charged`, the bodies come from a pool of
//! [`POOL`] distinct orders and the repository is emptied before each pass
//! over it, outside the timed part, so every timed execution is a first one
//! and the map stays small. The trace id is made before the call, as the
//! consumer does, and is neither timed nor counted.
//!
//! Before criterion runs, each case is executed [`COUNTED`] times (100 when
//! not invoked with `--bench`, e.g. by `cargo test --all-targets`) through
//! the same code, and a table of allocations and bytes per order is
//! printed. The global allocator of this binary is `stats_alloc`'s counting
//! wrapper over the system allocator (a wrapper of our own would need
//! `unsafe`, which the crate forbids). The counts do not depend on the
//! allocator, but the nanoseconds do: they are those of glibc malloc, not of
//! the jemalloc the daemon runs on (`src/main.rs`), and include the
//! wrapper's atomic counters, about 10 ns per allocation (on one run,
//! `charged` took 1.03 µs counted and 0.88 µs with the
//! `#[global_allocator]` line removed).
//!
//! No tracing subscriber is installed, so the `validate` span and the
//! `order.id` record are near free here: the figures exclude telemetry,
//! which the end-to-end load benchmark (`benches/load/`) measures.

#![allow(
    clippy::expect_used,
    reason = "a benchmark whose input cannot be built should stop loudly"
)]
#![allow(
    clippy::arithmetic_side_effects,
    clippy::cast_precision_loss,
    reason = "benchmark figures: approximate by nature, computed from small counts"
)]

use std::alloc::System;
use std::collections::HashMap;
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use order_processor::domain::{
    ChargeId, Order, OrderId, OrderMessage, OrderRepository, PaymentError, PaymentProvider,
    ProcessedOrder, RepositoryError,
};
use order_processor::usecase::{ProcessError, ProcessOrder, Processed};
use stats_alloc::{INSTRUMENTED_SYSTEM, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Distinct orders cycled through by `charged`; also the number of
/// executions timed between two clearings of the repository.
const POOL: usize = 1024;
/// Executions per case for the allocation table under `cargo bench`.
const COUNTED: u64 = 10_000;
const TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";

/// A provider that charges at once: a fresh charge id per call.
#[derive(Clone, Default)]
struct MemoryPayments {
    charges: Arc<AtomicU64>,
}

impl PaymentProvider for MemoryPayments {
    async fn charge(&self, _order: &Order) -> Result<ChargeId, PaymentError> {
        let n = self.charges.fetch_add(1, Ordering::Relaxed);
        Ok(ChargeId::new(format!("ch_{n:024x}")))
    }
}

/// A repository that keeps the rows in a map, idempotent like the real one.
#[derive(Clone, Default)]
struct MemoryOrders {
    rows: Arc<Mutex<HashMap<OrderId, ProcessedOrder>>>,
}

impl MemoryOrders {
    fn clear(&self) {
        self.rows
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    fn len(&self) -> usize {
        self.rows
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

impl OrderRepository for MemoryOrders {
    async fn is_processed(&self, id: OrderId) -> Result<bool, RepositoryError> {
        Ok(self
            .rows
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(&id))
    }

    async fn save(&self, order: ProcessedOrder) -> Result<(), RepositoryError> {
        self.rows
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(order.order_id)
            .or_insert(order);
        Ok(())
    }
}

/// One case: the use case over its own ports, the bodies it cycles through,
/// and whether the repository is emptied before each pass over them.
struct Case {
    name: &'static str,
    usecase: ProcessOrder<MemoryPayments, MemoryOrders>,
    payments: MemoryPayments,
    orders: MemoryOrders,
    bodies: Vec<Vec<u8>>,
    fresh_repository: bool,
}

/// What the timed part of [`Case::run`] took.
#[derive(Default)]
struct Measured {
    time: Duration,
    /// Allocation and reallocation requests.
    allocations: u64,
    /// Bytes requested: whole allocations, and the growth of reallocations.
    bytes: u64,
}

impl Case {
    fn new(name: &'static str, bodies: Vec<Vec<u8>>, fresh_repository: bool) -> Self {
        let payments = MemoryPayments::default();
        let orders = MemoryOrders::default();
        Self {
            name,
            usecase: ProcessOrder::new(payments.clone(), orders.clone()),
            payments,
            orders,
            bodies,
            fresh_repository,
        }
    }

    /// Executes the use case `iters` times, in chunks of at most [`POOL`]
    /// executions; only the executions are timed and counted, not the
    /// trace ids made before them nor the clearing of the repository.
    async fn run(&self, iters: u64) -> Measured {
        let mut measured = Measured::default();
        let mut left = iters;
        let mut traces: Vec<Option<String>> = Vec::with_capacity(POOL);
        while left > 0 {
            let chunk = left.min(POOL as u64);
            left -= chunk;
            if self.fresh_repository {
                self.orders.clear();
            }
            traces.extend((0..chunk).map(|_| Some(TRACE_ID.to_owned())));

            let before = GLOBAL.stats();
            let start = Instant::now();
            for (body, trace_id) in self.bodies.iter().cycle().zip(traces.drain(..)) {
                drop(black_box(
                    self.usecase.execute(black_box(body), trace_id).await,
                ));
            }
            measured.time += start.elapsed();
            let after = GLOBAL.stats();

            measured.allocations += (after.allocations - before.allocations + after.reallocations
                - before.reallocations) as u64;
            measured.bytes += (after.bytes_allocated - before.bytes_allocated) as u64;
        }
        measured
    }
}

fn body(id: u128, currency: &str) -> Vec<u8> {
    let mut message = OrderMessage::example(uuid::Uuid::from_u128(id));
    currency.clone_into(&mut message.currency);
    message.to_json().expect("the example serializes")
}

const FIRST_ID: u128 = 0x5f0c_4c2e_8a51_4f55_9d1e_3e2b_9f3f_8a10;

fn cases(runtime: &tokio::runtime::Runtime) -> [Case; 3] {
    let charged = Case::new(
        "charged",
        (0..POOL as u128)
            .map(|i| body(FIRST_ID + i, "EUR"))
            .collect(),
        true,
    );
    let already_processed = Case::new("already_processed", vec![body(FIRST_ID, "EUR")], false);
    let invalid = Case::new("invalid", vec![body(FIRST_ID, "ZZZ")], false);

    // Check each case is what its name says before timing it.
    let execute = |case: &Case| {
        let body = case.bodies.first().expect("a case has a body");
        runtime.block_on(case.usecase.execute(body, Some(TRACE_ID.to_owned())))
    };
    let first = execute(&charged);
    assert!(matches!(first, Ok(Processed::Charged(_))), "{first:?}");
    let first = execute(&already_processed);
    assert!(matches!(first, Ok(Processed::Charged(_))), "{first:?}");
    let again = execute(&already_processed);
    assert!(
        matches!(again, Ok(Processed::AlreadyProcessed)),
        "{again:?}"
    );
    let invalid_result = execute(&invalid);
    assert!(
        matches!(invalid_result, Err(ProcessError::Invalid(_))),
        "{invalid_result:?}"
    );
    [charged, already_processed, invalid]
}

/// Prints allocations and bytes per order for each case, after checking
/// from the ports that every execution did what the case's name says.
fn allocation_table(runtime: &tokio::runtime::Runtime, cases: &[Case], executions: u64) {
    println!("use case, {executions} executions per case, system allocator:");
    println!(
        "{:<20}{:>20}{:>14}",
        "case", "allocations/order", "bytes/order"
    );
    for case in cases {
        // One pass first, so that the repository's map has grown to its size.
        runtime.block_on(case.run(POOL as u64));
        let charges_before = case.payments.charges.load(Ordering::Relaxed);
        let rows_before = case.orders.len();

        let measured = runtime.block_on(case.run(executions));

        let charges = case.payments.charges.load(Ordering::Relaxed) - charges_before;
        let expected_charges = if case.fresh_repository { executions } else { 0 };
        assert_eq!(charges, expected_charges, "{}: charges", case.name);
        if !case.fresh_repository {
            assert_eq!(case.orders.len(), rows_before, "{}: rows", case.name);
        }
        println!(
            "{:<20}{:>20.1}{:>14.0}",
            case.name,
            measured.allocations as f64 / executions as f64,
            measured.bytes as f64 / executions as f64,
        );
    }
}

fn execute(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a current-thread runtime starts");
    let cases = cases(&runtime);
    let benchmarking = std::env::args().any(|arg| arg == "--bench");
    allocation_table(&runtime, &cases, if benchmarking { COUNTED } else { 100 });

    let mut group = c.benchmark_group("usecase_execute");
    for case in &cases {
        group.bench_function(case.name, |b| {
            b.to_async(&runtime)
                .iter_custom(|iters| async move { case.run(iters).await.time });
        });
    }
    group.finish();
}

criterion_group!(benches, execute);
criterion_main!(benches);
