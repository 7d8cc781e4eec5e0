//! Benchmark of `Order::parse`, the per-message cost of the consumer loop
//! (about 20 000 messages a second in production).
//!
//! It measures a typical ~500-byte valid order and the main kinds of bad
//! ones, because the failure paths differ a lot in cost: a syntax error or a
//! broken rule stops in the first decoding pass, while a wrong type or a
//! missing field decodes twice to recover the field path for the error text.

#![allow(
    clippy::expect_used,
    reason = "a benchmark whose input cannot be built should stop loudly"
)]

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use order_processor::domain::{Order, OrderMessage};

fn typical_body() -> String {
    let body = OrderMessage::example(uuid::Uuid::from_u128(
        0x5f0c_4c2e_8a51_4f55_9d1e_3e2b_9f3f_8a10,
    ))
    .to_json()
    .expect("the example serializes");
    String::from_utf8(body).expect("serde_json writes UTF-8")
}

fn parse(c: &mut Criterion) {
    let valid = typical_body();
    let cases = [
        ("valid", valid.clone()),
        ("invalid_currency", valid.replace("\"EUR\"", "\"eur\"")),
        (
            "invalid_quantity",
            valid.replacen("\"quantity\":2", "\"quantity\":1.5", 1),
        ),
        (
            "wrong_type",
            valid.replacen("\"quantity\":2", "\"quantity\":\"2\"", 1),
        ),
        (
            "missing_field",
            valid.replacen("\"payment_token\"", "\"payment_tokn\"", 1),
        ),
        ("syntax_error", valid.replacen(':', "", 1)),
        ("not_an_object", format!("[{valid}]")),
    ];

    let mut group = c.benchmark_group("order_parse");
    for (name, body) in &cases {
        // Check the case is what its name says before timing it.
        let result = Order::parse(body.as_bytes());
        assert_eq!(result.is_ok(), *name == "valid", "{name}: {result:?}");
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_function(*name, |b| {
            b.iter(|| Order::parse(black_box(body.as_bytes())))
        });
    }
    group.finish();
}

criterion_group!(benches, parse);
criterion_main!(benches);
