//! The operator's dead-letter tools against the real broker: `dlq list`
//! counts without removing, `dlq replay` moves messages back with their
//! trace context and never loses one; `show`, the filters and `purge` are
//! in `dlq/inspect.rs`, `export`/`import`, `replay --rate` and the runs
//! killed mid-way in `dlq/moves.rs`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

use crate::common;
mod inspect;
mod moves;

use std::process::Output;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::broker::Broker;
use common::daemon::{Daemon, command};
use common::payment::PaymentStub;
use common::{TestEnv, order_json};
use lapin::BasicProperties;
use lapin::types::AMQPValue;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(60);

fn run(env: &TestEnv, payment_url: &str, args: &[&str]) -> (i32, String) {
    let output = command(env, payment_url).args(args).output().unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    (output.status.code().unwrap_or(-1), stdout)
}

/// No payment provider is needed by the `dlq` commands.
const NO_PROVIDER: &str = "http://127.0.0.1:9";

/// Runs `order-processor dlq …` with stdin closed (no terminal).
fn dlq(env: &TestEnv, args: &[&str]) -> Output {
    command(env, NO_PROVIDER)
        .arg("dlq")
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Asserts the command succeeded and returns its stdout.
fn ok(output: &Output) -> String {
    assert!(
        output.status.success(),
        "{}\n{}",
        stdout(output),
        String::from_utf8_lossy(&output.stderr)
    );
    stdout(output)
}

/// Seconds since the epoch, `ago` in the past.
fn seconds_ago(ago: u64) -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - ago
}

/// The properties of a dead letter as the daemon writes them, for the
/// order `order_id`, published `age` seconds ago.
fn dead_letter_properties(order_id: &str, kind: &str, reason: &str, age: u64) -> BasicProperties {
    let mut properties = Broker::properties(Some(
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    ))
    .with_message_id(order_id.into())
    .with_timestamp(seconds_ago(age));
    let headers = properties.headers().clone().unwrap_or_default();
    let mut headers = headers;
    headers.insert("x-error-kind".into(), AMQPValue::LongString(kind.into()));
    headers.insert(
        "x-error-reason".into(),
        AMQPValue::LongString(reason.into()),
    );
    headers.insert("x-attempts".into(), AMQPValue::LongLongInt(4));
    properties = properties.with_headers(headers);
    properties
}

/// A broker with `env`'s topology declared and `n` dead letters of kind
/// `kind` in its dead-letter queue; returns their order ids.
async fn with_dead_letters(env: &TestEnv, n: usize, kind: &str) -> (Broker, Vec<String>) {
    let broker = Broker::connect().await;
    broker.declare(env).await;
    let ids = add_dead_letters(env, &broker, n, kind, 0).await;
    (broker, ids)
}

async fn add_dead_letters(
    env: &TestEnv,
    broker: &Broker,
    n: usize,
    kind: &str,
    age: u64,
) -> Vec<String> {
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        let id = Uuid::new_v4();
        let properties = dead_letter_properties(&id.to_string(), kind, "the provider said no", age);
        broker
            .dead_letter(env, &order_json(id, "tok_visa"), properties)
            .await;
        ids.push(id.to_string());
    }
    ids
}

/// Publishes `n` bodies that are no order: each is dead-lettered at once.
async fn publish_malformed(env: &TestEnv, broker: &Broker, n: usize) {
    for _ in 0..n {
        let properties = Broker::properties(None);
        let (exchange, key) = (&env.exchange, &env.routing_key);
        broker
            .publish(exchange, key, b"not an order", properties)
            .await;
    }
}

/// Waits until the dead-letter queue holds `n` messages.
async fn dead_letters(env: &TestEnv, broker: &Broker, n: u32) {
    env.eventually(WAIT, &format!("{n} dead letters"), || async {
        broker.depth(&env.dead_letter_queue()).await == n
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_then_replayed_by_kind_once_the_provider_is_back() {
    let env = TestEnv::new().await;
    let provider_up = Arc::new(AtomicBool::new(false));
    let up = Arc::clone(&provider_up);
    let stub =
        PaymentStub::start(move |_, _| if up.load(Ordering::SeqCst) { 201 } else { 503 }).await;
    let _daemon = Daemon::start(
        &env,
        &stub.url,
        &[("ORDER_PROCESSOR__RETRY__MAX_ATTEMPTS", "1")],
    )
    .await;
    let broker = Broker::connect().await;

    let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let ids: Vec<Uuid> = (0..3).map(|_| Uuid::new_v4()).collect();
    for id in &ids {
        broker
            .publish(
                &env.exchange,
                &env.routing_key,
                &order_json(*id, "tok_visa"),
                Broker::properties(Some(traceparent)),
            )
            .await;
    }
    publish_malformed(&env, &broker, 2).await;
    dead_letters(&env, &broker, 5).await;

    let (code, listing) = run(&env, &stub.url, &["dlq", "list"]);
    assert_eq!(code, 0, "{listing}");
    assert!(listing.contains("5 dead letter(s)"), "{listing}");
    assert!(listing.contains("3  retries_exhausted"), "{listing}");
    assert!(listing.contains("2  malformed"), "{listing}");
    assert_eq!(
        broker.depth(&env.dead_letter_queue()).await,
        5,
        "listing removes nothing"
    );

    provider_up.store(true, Ordering::SeqCst);
    let (code, output) = run(
        &env,
        &stub.url,
        &[
            "dlq",
            "replay",
            "--kind",
            "retries_exhausted",
            "--limit",
            "2",
        ],
    );
    assert_eq!(code, 0, "{output}");
    assert!(output.contains("replayed 2"), "{output}");
    env.eventually(WAIT, "two orders saved", || async {
        env.order_count().await == 2
    })
    .await;

    let (code, output) = run(
        &env,
        &stub.url,
        &["dlq", "replay", "--kind", "retries_exhausted"],
    );
    assert_eq!(code, 0, "{output}");
    assert!(output.contains("replayed 1"), "{output}");
    env.eventually(WAIT, "all three orders saved", || async {
        env.order_count().await == 3
    })
    .await;
    env.eventually(WAIT, "only the malformed ones left", || async {
        broker.depth(&env.dead_letter_queue()).await == 2
    })
    .await;

    // The replayed attempts continued the publisher's trace.
    for id in &ids {
        let calls = stub.calls_for(&id.to_string());
        let last = calls.last().unwrap();
        assert!(
            last.traceparent
                .as_deref()
                .unwrap()
                .contains("0af7651916cd43dd8448eb211c80319c")
        );
    }
    let stored: Vec<Option<String>> = sqlx::query_scalar("SELECT trace_id FROM orders")
        .fetch_all(&env.db)
        .await
        .unwrap();
    assert!(
        stored
            .iter()
            .all(|t| t.as_deref() == Some("0af7651916cd43dd8448eb211c80319c"))
    );
    broker.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_reads_each_dead_letter_once_even_when_it_fails_again() {
    let env = TestEnv::new().await;
    let stub = PaymentStub::start(|_, _| 201).await;
    let _daemon = Daemon::start(&env, &stub.url, &[]).await;
    let broker = Broker::connect().await;
    publish_malformed(&env, &broker, 20).await;
    dead_letters(&env, &broker, 20).await;

    // While the replay runs, the daemon dead-letters every replayed message
    // again; the replay must not pick those up and go round for ever.
    let (code, output) = run(&env, &stub.url, &["dlq", "replay"]);
    assert_eq!(code, 0, "{output}");
    assert!(output.contains("replayed 20 "), "{output}");
    dead_letters(&env, &broker, 20).await;
    broker.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_keeps_its_properties_but_not_the_publishers_expiration() {
    let env = TestEnv::new().await;
    let stub = PaymentStub::start(|_, _| 201).await;
    let _daemon = Daemon::start(&env, &stub.url, &[]).await;
    let broker = Broker::connect().await;
    let properties = Broker::properties(Some(
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    ))
    .with_message_id("m-1".into())
    .with_expiration("600000".into());
    broker
        .publish(&env.exchange, &env.routing_key, b"not an order", properties)
        .await;
    dead_letters(&env, &broker, 1).await;

    let dead = broker.get(&env.dead_letter_queue()).await.unwrap();
    assert_eq!(dead.body, b"not an order");
    assert_eq!(
        dead.properties.expiration(),
        &None,
        "it would expire in turn"
    );
    assert_eq!(
        dead.properties.message_id().as_ref().map(|id| id.as_str()),
        Some("m-1")
    );
    assert_eq!(
        dead.header("traceparent").as_deref(),
        Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
    );
    assert_eq!(dead.header("x-error-kind").as_deref(), Some("malformed"));
    broker.close().await;
}
