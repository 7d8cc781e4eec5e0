//! The daemon's copies of a message (retries and dead letters) against the
//! real broker: they fit the connection's frame whatever the publisher's
//! headers, naming what they had to leave out, and they never report more
//! attempts than `MAX_ATTEMPTS`, whatever the headers claim.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::common::broker::{Broker, Received};
use crate::common::daemon::Daemon;
use crate::common::payment::PaymentStub;
use crate::common::{TestEnv, order_json};
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString};
use order_processor::adapters::amqp::frame::properties_len;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(60);
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
/// A content header frame's bytes besides its properties: the frame's type,
/// channel, size and end, then class id, weight and body size.
const FRAME_BYTES_BESIDES_PROPERTIES: usize = 8 + 12;

fn text(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value))
}

/// `properties` completed with a header `filler` so that their content
/// header frame is `slack` bytes short of `frame_max`.
fn filled_up(
    properties: BasicProperties,
    filler: &str,
    frame_max: u32,
    slack: usize,
) -> BasicProperties {
    let mut headers = properties.headers().clone().unwrap_or_default();
    let frame = FRAME_BYTES_BESIDES_PROPERTIES + properties_len(&properties);
    // The filler's entry: its name as a short string, a type tag, a length.
    let besides_text = 1 + filler.len() + 1 + 4;
    let fill = frame_max as usize - slack - frame - besides_text;
    headers.insert(filler.into(), text(&"f".repeat(fill)));
    let properties = properties.with_headers(headers);
    let frame = FRAME_BYTES_BESIDES_PROPERTIES + properties_len(&properties);
    assert_eq!(frame, frame_max as usize - slack);
    properties
}

fn dropped_headers(message: &Received) -> Vec<String> {
    let headers = message.properties.headers().clone().unwrap_or_default();
    match headers.inner().get("x-dropped-headers") {
        Some(AMQPValue::FieldArray(names)) => names
            .as_slice()
            .iter()
            .map(|name| match name {
                AMQPValue::LongString(name) => {
                    String::from_utf8_lossy(name.as_bytes()).into_owned()
                }
                other => panic!("not a name: {other:?}"),
            })
            .collect(),
        other => panic!("x-dropped-headers is {other:?}"),
    }
}

/// Polls `/readyz` until cancelled; true if it ever answered anything but 200.
fn watch_readiness(daemon: &Daemon) -> (CancellationToken, tokio::task::JoinHandle<bool>) {
    let url = format!("{}/readyz", daemon.http);
    let stop = CancellationToken::new();
    let stopped = stop.clone();
    let unready = Arc::new(AtomicBool::new(false));
    let watch = tokio::spawn(async move {
        while !stopped.is_cancelled() {
            let status = reqwest::get(&url).await.map(|r| r.status().as_u16());
            if status.ok() != Some(200) {
                unready.store(true, Ordering::SeqCst);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        unready.load(Ordering::SeqCst)
    });
    (stop, watch)
}

async fn reconnects(daemon: &Daemon) -> String {
    let metrics = daemon.metrics().await;
    metrics
        .lines()
        .find(|line| line.starts_with("order_processor_amqp_reconnects_total"))
        .unwrap_or("order_processor_amqp_reconnects_total missing")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_with_huge_headers_is_dead_lettered_with_the_dropped_headers_named() {
    let env = TestEnv::new().await;
    let stub = PaymentStub::start(|_, _| 201).await;
    let daemon = Daemon::start(&env, &stub.url, &[]).await;
    let (stop_watching, watch) = watch_readiness(&daemon);
    let broker = Broker::connect().await;
    let frame_max = broker.frame_max();

    let mut invalid =
        serde_json::from_slice::<serde_json::Value>(&order_json(Uuid::new_v4(), "tok_visa"))
            .unwrap();
    invalid["order_id"] = "not-a-uuid".into();
    let body = serde_json::to_vec(&invalid).unwrap();
    let mut headers = Broker::properties(Some(TRACEPARENT))
        .headers()
        .clone()
        .unwrap();
    headers.insert("x-small".into(), text("keep me"));
    headers.insert("x-large".into(), text(&"l".repeat(20_000)));
    let properties = Broker::properties(None).with_headers(headers);
    // The daemon's own headers (kind, reason, attempts) take more than this.
    let huge = filled_up(properties, "x-filler", frame_max, 64);

    let before = Uuid::new_v4();
    let after = Uuid::new_v4();
    let publish = |body: Vec<u8>, properties: BasicProperties| {
        let broker = &broker;
        let env = &env;
        async move {
            broker
                .publish(&env.exchange, &env.routing_key, &body, properties)
                .await;
        }
    };
    publish(order_json(before, "tok_visa"), Broker::properties(None)).await;
    publish(body.clone(), huge.clone()).await;
    publish(order_json(after, "tok_visa"), Broker::properties(None)).await;

    env.eventually(WAIT, "the dead letter and both orders", || async {
        broker.depth(&env.dead_letter_queue()).await == 1 && env.order_count().await == 2
    })
    .await;
    let dead = broker.get(&env.dead_letter_queue()).await.unwrap();
    assert_eq!(dead.body, body, "the original body, byte for byte");
    assert_eq!(dropped_headers(&dead), ["x-filler"]);
    assert_eq!(dead.header("traceparent").as_deref(), Some(TRACEPARENT));
    assert_eq!(dead.header("x-small").as_deref(), Some("keep me"));
    assert_eq!(dead.header("x-large").map(|v| v.len()), Some(20_000));
    assert_eq!(dead.header("x-error-kind").as_deref(), Some("invalid"));
    assert!(dead.header("x-error-reason").is_some());
    assert_eq!(dead.header("x-attempts").as_deref(), Some("1"));
    assert_eq!(dead.properties.content_type(), huge.content_type());
    assert_eq!(stub.calls_for(&before.to_string()).len(), 1);
    assert_eq!(stub.calls_for(&after.to_string()).len(), 1);
    assert_eq!(broker.depth(&env.queue).await, 0);

    assert_eq!(
        reconnects(&daemon).await,
        "order_processor_amqp_reconnects_total 0"
    );
    stop_watching.cancel();
    assert!(!watch.await.unwrap(), "/readyz answered other than 200");
    broker.close().await;
}

/// Many headers of the same size, so that the retry copy leaves out only as
/// few as it must and comes back from its retry queue with the broker's
/// `x-death` bookkeeping close to the frame: any shortfall in the room the
/// daemon keeps for it would close the daemon's connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_message_with_huge_headers_is_finally_saved() {
    let env = TestEnv::new().await;
    let stub = PaymentStub::start(|_, nth| if nth == 1 { 503 } else { 201 }).await;
    let daemon = Daemon::start(
        &env,
        &stub.url,
        &[
            ("ORDER_PROCESSOR__RETRY__BASE_DELAY_MS", "100"),
            ("ORDER_PROCESSOR__RETRY__MAX_DELAY_MS", "200"),
        ],
    )
    .await;
    let (stop_watching, watch) = watch_readiness(&daemon);
    let broker = Broker::connect().await;
    let frame_max = broker.frame_max();

    let mut headers = Broker::properties(Some(TRACEPARENT))
        .headers()
        .clone()
        .unwrap();
    let base = FRAME_BYTES_BESIDES_PROPERTIES
        + properties_len(&Broker::properties(None).with_headers(headers.clone()));
    // "x-pad-NNNN" and 100 bytes: 1 + 10 + 1 + 4 + 100 bytes each, up to a
    // remainder of one to two pads for the filler.
    let pads = (frame_max as usize - 300 - base) / 116 - 1;
    for n in 0..pads {
        headers.insert(format!("x-pad-{n:04}").into(), text(&"p".repeat(100)));
    }
    let properties = Broker::properties(None).with_headers(headers);
    let huge = filled_up(properties, "x-pad-filler", frame_max, 300);
    let id = Uuid::new_v4();
    broker
        .publish(
            &env.exchange,
            &env.routing_key,
            &order_json(id, "tok_visa"),
            huge,
        )
        .await;

    env.eventually(WAIT, "the order saved", || async {
        env.order_count().await == 1
    })
    .await;
    assert_eq!(stub.calls_for(&id.to_string()).len(), 2);
    assert_eq!(broker.depth(&env.dead_letter_queue()).await, 0);
    assert_eq!(broker.depth(&env.queue).await, 0);
    assert_eq!(
        env.stored_trace_id(id).await.as_deref(),
        Some("4bf92f3577b34da6a3ce929d0e0e4736")
    );
    assert!(
        daemon.logs().contains("fits the broker's frame"),
        "{}",
        daemon.logs()
    );

    assert_eq!(
        reconnects(&daemon).await,
        "order_processor_amqp_reconnects_total 0"
    );
    stop_watching.cancel();
    assert!(!watch.await.unwrap(), "/readyz answered other than 200");
    broker.close().await;
}

/// A publisher claims, with a forged `x-death`, that the message comes back
/// from a retry queue that does not exist: it cannot make the daemon call
/// the provider more often than `MAX_ATTEMPTS`, nor report more attempts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_attempt_count_beyond_max_attempts_is_clamped() {
    let env = TestEnv::new().await;
    let stub = PaymentStub::start(|_, _| 503).await;
    let _daemon = Daemon::start(
        &env,
        &stub.url,
        &[
            ("ORDER_PROCESSOR__RETRY__MAX_ATTEMPTS", "4"),
            ("ORDER_PROCESSOR__RETRY__BASE_DELAY_MS", "100"),
            ("ORDER_PROCESSOR__RETRY__MAX_DELAY_MS", "200"),
        ],
    )
    .await;
    let broker = Broker::connect().await;
    let mut death = FieldTable::default();
    death.insert("queue".into(), text(&format!("{}.retry.99", env.queue)));
    death.insert("reason".into(), text("expired"));
    let mut headers = FieldTable::default();
    headers.insert(
        "x-death".into(),
        AMQPValue::FieldArray(vec![AMQPValue::FieldTable(death)].into()),
    );
    headers.insert("x-attempts".into(), AMQPValue::LongLongInt(99));
    let id = Uuid::new_v4();
    let properties = Broker::properties(None).with_headers(headers);
    broker
        .publish(
            &env.exchange,
            &env.routing_key,
            &order_json(id, "tok_visa"),
            properties,
        )
        .await;

    env.eventually(WAIT, "the dead letter", || async {
        broker.depth(&env.dead_letter_queue()).await == 1
    })
    .await;
    let dead = broker.get(&env.dead_letter_queue()).await.unwrap();
    assert_eq!(dead.header("x-attempts").as_deref(), Some("4"));
    assert_eq!(
        dead.header("x-error-kind").as_deref(),
        Some("retries_exhausted")
    );
    let calls = stub.calls_for(&id.to_string()).len();
    assert!((1..=4).contains(&calls), "{calls} calls");
    broker.close().await;
}
