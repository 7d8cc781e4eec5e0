//! The daemon facing its payment provider, end to end: the API key goes to
//! the provider as a bearer token and nowhere else (no log line even at
//! `RUST_LOG=trace`, no metric, no dead-letter header, no `check-config`
//! output), a wrong key is a permanent rejection that dead-letters visibly,
//! a URL carrying credentials is refused at start, and each way a provider
//! can fail to answer (closing the connection, answering something that is
//! not HTTP, never answering, or answering a charge id that cannot be
//! stored) is named for what it is.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

use crate::common;
use std::time::Duration;

use crate::common::broker::Broker;
use crate::common::daemon::{Daemon, PaymentSim, command};
use crate::common::{TestEnv, order_json};
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(60);
const API_KEY: &str = "sk_test_4eC39HqLyjWDarjtT1zdp7dc";

/// Publishes an order paid with `token` under a fresh trace; returns the
/// order id and the trace id its log lines carry.
async fn publish(env: &TestEnv, broker: &Broker, token: &str) -> (Uuid, String) {
    let id = Uuid::new_v4();
    let trace_id = Uuid::new_v4().simple().to_string();
    let traceparent = format!("00-{trace_id}-00f067aa0ba902b7-01");
    broker
        .publish(
            &env.exchange,
            &env.routing_key,
            &order_json(id, token),
            Broker::properties(Some(&traceparent)),
        )
        .await;
    (id, trace_id)
}

/// Everything the daemon logged under `trace_id`.
fn logged_under(logs: &str, trace_id: &str) -> String {
    logs.lines()
        .filter(|line| {
            serde_json::from_str::<Value>(line)
                .is_ok_and(|line| line["trace_id"].as_str() == Some(trace_id))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_key_reaches_the_provider_as_a_bearer_token_and_shows_nowhere_else() {
    let env = TestEnv::new().await;
    let sim = PaymentSim::start(&["--api-key", API_KEY]);
    let daemon = Daemon::start(
        &env,
        &sim.url,
        &[("PAYMENT_API_KEY", API_KEY), ("RUST_LOG", "trace")],
    )
    .await;
    let broker = Broker::connect().await;
    let mut charged = Vec::new();
    for _ in 0..3 {
        charged.push(publish(&env, &broker, "tok_visa").await.0);
    }
    // A dead letter, to look at its headers.
    publish(&env, &broker, "tok_decline").await;

    let dead_letter_queue = env.dead_letter_queue();
    env.eventually(WAIT, "three rows and one dead letter", || async {
        env.order_count().await == 3 && broker.depth(&dead_letter_queue).await == 1
    })
    .await;
    let stats = sim.stats().await;
    assert_eq!(stats["charges"], 3, "{stats:?}");
    assert_eq!(stats["unauthorized"], 0, "every charge carried the key");

    let dead = broker.get(&dead_letter_queue).await.unwrap();
    assert_eq!(
        dead.header("x-error-kind").as_deref(),
        Some("payment_declined")
    );
    let headers = dead.properties.headers().clone().unwrap_or_default();
    for (name, value) in headers.inner() {
        assert!(!format!("{value:?}").contains(API_KEY), "header {name}");
    }
    assert!(!daemon.metrics().await.contains(API_KEY));

    let logs = daemon.logs();
    assert!(
        logs.lines().any(|line| line.contains(r#""level":"TRACE""#)),
        "RUST_LOG=trace was in force"
    );
    assert!(!logs.contains(API_KEY), "the key is in the logs");
    // The HTTP client's own debug lines name pool keys and headers.
    for line in logs.lines() {
        let line: Value = serde_json::from_str(line).unwrap();
        let target = line["target"].as_str().unwrap_or_default();
        let origin = line["log.target"].as_str().unwrap_or(target);
        let level = line["level"].as_str().unwrap_or_default();
        let http_client = ["hyper", "hyper_util", "reqwest", "h2"]
            .iter()
            .any(|name| origin == *name || origin.starts_with(&format!("{name}::")));
        assert!(
            !(http_client && matches!(level, "DEBUG" | "TRACE")),
            "an HTTP client's debug line: {line}"
        );
    }

    let shown = command(&env, &sim.url)
        .arg("check-config")
        .env("PAYMENT_API_KEY", API_KEY)
        .output()
        .unwrap();
    assert_eq!(shown.status.code(), Some(0));
    let stdout = String::from_utf8(shown.stdout).unwrap();
    assert!(!stdout.contains(API_KEY), "{stdout}");
    assert!(stdout.contains(r#""api_key": "[redacted]""#), "{stdout}");
    broker.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_api_key_dead_letters_each_order_as_rejected_with_the_status_named() {
    let env = TestEnv::new().await;
    let sim = PaymentSim::start(&["--api-key", API_KEY]);
    let daemon = Daemon::start(&env, &sim.url, &[("PAYMENT_API_KEY", "sk_test_wrong")]).await;
    let broker = Broker::connect().await;
    for _ in 0..2 {
        publish(&env, &broker, "tok_visa").await;
    }
    let dead_letter_queue = env.dead_letter_queue();
    env.eventually(WAIT, "two dead letters", || async {
        broker.depth(&dead_letter_queue).await == 2
    })
    .await;
    for _ in 0..2 {
        let dead = broker.get(&dead_letter_queue).await.unwrap();
        assert_eq!(
            dead.header("x-error-kind").as_deref(),
            Some("payment_rejected")
        );
        assert_eq!(
            dead.header("x-attempts").as_deref(),
            Some("1"),
            "not retried"
        );
        let reason = dead.header("x-error-reason").unwrap();
        assert!(reason.contains("401"), "{reason}");
        assert!(!reason.contains("sk_test"), "{reason}");
    }
    let stats = sim.stats().await;
    assert_eq!(
        (stats["unauthorized"], stats["charges"]),
        (2, 0),
        "{stats:?}"
    );
    assert_eq!(env.order_count().await, 0);
    let logs = daemon.logs();
    assert!(
        logs.lines()
            .filter(|line| line.contains("dead-lettered") && line.contains("401"))
            .count()
            >= 2,
        "each dead letter is logged with its reason:\n{logs}"
    );
    assert!(!logs.contains("sk_test_wrong"));
    broker.close().await;
}

#[test]
fn credentials_in_the_payment_url_or_an_unsendable_key_are_refused_at_start() {
    let env_free = |vars: &[(&str, &str)], args: &[&str]| {
        let mut command = std::process::Command::new(common::daemon::DAEMON);
        command
            .env_clear()
            .env("ORDER_PROCESSOR_CONFIG_DIR", common::daemon::config_dir())
            .env("OTEL_SDK_DISABLED", "true")
            .args(args);
        for (name, value) in vars {
            command.env(name, value);
        }
        command.output().unwrap()
    };
    let cases: [(&str, &str, &str); 5] = [
        (
            "PAYMENT_BASE_URL",
            "https://sk_live_hunter2:@psp.example",
            "PAYMENT_BASE_URL",
        ),
        (
            "PAYMENT_BASE_URL",
            "https://user:hunter2@psp.example/api",
            "PAYMENT_BASE_URL",
        ),
        ("PAYMENT_API_KEY", "", "PAYMENT_API_KEY"),
        ("PAYMENT_API_KEY", "sk_live_hunter2\n", "PAYMENT_API_KEY"),
        ("PAYMENT_API_KEY", "sk live hunter2", "PAYMENT_API_KEY"),
    ];
    for (name, value, named) in cases {
        for args in [&["check-config"][..], &["run"][..]] {
            let output = env_free(&[(name, value)], args);
            let stderr = String::from_utf8(output.stderr).unwrap();
            assert_eq!(
                output.status.code(),
                Some(2),
                "{args:?} {value:?}: {stderr}"
            );
            assert_eq!(stderr.lines().count(), 1, "{stderr}");
            assert!(stderr.contains(named), "{stderr}");
            assert!(!stderr.contains("hunter2"), "{stderr}");
            assert!(output.stdout.is_empty(), "{args:?} {value:?}");
        }
    }
}

/// A provider that misbehaves as the order's payment token asks:
/// `tok_close` closes the connection without answering, `tok_garbage`
/// answers something that is not HTTP, `tok_hang` never answers, `tok_nul`
/// answers a charge whose id holds a NUL.
async fn hostile_provider() -> (String, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        loop {
            let (socket, _) = listener.accept().await.unwrap();
            tokio::spawn(misbehave(socket));
        }
    });
    (url, server)
}

async fn misbehave(mut socket: TcpStream) {
    let Some(body) = read_request(&mut socket).await else {
        return;
    };
    let order: Value = serde_json::from_slice(&body).unwrap_or_default();
    match order["payment_token"].as_str().unwrap_or_default() {
        "tok_garbage" => {
            let _ = socket.write_all(b"SSH-2.0-OpenSSH_9.6\r\n").await;
        }
        "tok_hang" => std::future::pending::<()>().await,
        "tok_nul" => {
            let body = r#"{"charge_id":"ch_\u0000","status":"succeeded"}"#;
            let answer = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            let _ = socket.write_all(answer.as_bytes()).await;
        }
        // tok_close, and anything else: read, then hang up without a word.
        _ => {}
    }
}

/// Reads one request (head and `content-length` body); returns the body.
async fn read_request(socket: &mut TcpStream) -> Option<Vec<u8>> {
    let mut data = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&data[..end]).to_lowercase();
            let length: usize = head
                .lines()
                .find_map(|line| line.strip_prefix("content-length:"))
                .and_then(|value| value.trim().parse().ok())
                .unwrap_or(0);
            if data.len() >= end + 4 + length {
                return Some(data[end + 4..end + 4 + length].to_vec());
            }
        }
        let read = socket.read(&mut chunk).await.ok()?;
        if read == 0 || data.len() > 1 << 20 {
            return None;
        }
        data.extend_from_slice(&chunk[..read]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_way_of_getting_no_usable_answer_is_named_for_what_it_is() {
    let env = TestEnv::new().await;
    let (url, server) = hostile_provider().await;
    let daemon = Daemon::start(
        &env,
        &url,
        &[("ORDER_PROCESSOR__PAYMENT__TIMEOUT_MS", "1000")],
    )
    .await;
    let broker = Broker::connect().await;
    let closed = "the provider closed the connection without answering";
    let not_http = "the provider's answer was not HTTP";
    let timed_out = "timed out";
    let unusable = "no settled charge with a usable charge_id";
    let sentences = [closed, not_http, timed_out, unusable];
    let mut cases = Vec::new();
    for (token, expected) in [
        ("tok_close", closed),
        ("tok_garbage", not_http),
        ("tok_hang", timed_out),
        ("tok_nul", unusable),
    ] {
        let (_, trace_id) = publish(&env, &broker, token).await;
        cases.push((token, trace_id, expected));
    }

    env.eventually(WAIT, "a failure logged for every order", || async {
        let logs = daemon.logs();
        cases.iter().all(|(_, trace_id, _)| {
            let lines = logged_under(&logs, trace_id);
            sentences.iter().any(|sentence| lines.contains(sentence))
        })
    })
    .await;
    let logs = daemon.logs();
    for (token, trace_id, expected) in &cases {
        let lines = logged_under(&logs, trace_id);
        assert!(lines.contains(expected), "{token}: {lines}");
        for other in sentences.iter().filter(|s| *s != expected) {
            assert!(!lines.contains(other), "{token} is not {other:?}: {lines}");
        }
        assert!(!lines.contains("could not connect"), "{token}: {lines}");
    }
    assert_eq!(
        env.order_count().await,
        0,
        "no charge id with a NUL is saved"
    );
    server.abort();
    broker.close().await;
}
