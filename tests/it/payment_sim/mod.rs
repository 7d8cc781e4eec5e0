//! End-to-end tests of the `payment-sim` binary: each test starts the real executable on
//! ephemeral ports (`--listen 127.0.0.1:0`, and `--admin-listen 127.0.0.1:0` when it
//! needs an admin listener), learns the ports from the lines it prints, talks HTTP to it
//! and checks the answers and the counters it exposes. The child is killed when its
//! guard drops, also when an assertion fails.
//!
//! [`charges`]: the charge API (replays, tokens, latency, 409 while a key is in
//! progress); [`front_door`]: API key, rate limit and outages; [`process`]: the
//! command line, start-up and shutdown.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{Value, json};

mod charges;
mod front_door;
mod process;

const BIN: &str = env!("CARGO_BIN_EXE_payment-sim");
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// A running simulator; killed and reaped on drop.
struct Sim {
    child: Child,
    /// The charge API.
    base: String,
    /// The admin routes: the same as `base` without `--admin-listen`.
    admin: String,
    http: reqwest::Client,
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Sim {
    fn start(args: &[&str]) -> Self {
        let mut child = Command::new(BIN)
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .env_remove("PAYMENT_SIM_LISTEN")
            .env_remove("PAYMENT_SIM_API_KEY")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn payment-sim");
        let stdout = child.stdout.take().expect("piped stdout");
        // Guard first, so that the child is killed if reading its address fails.
        let mut sim = Sim {
            child,
            base: String::new(),
            admin: String::new(),
            http: reqwest::Client::new(),
        };
        // Read on a thread so that a child that never prints fails the test instead of
        // hanging it.
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut stdout = BufReader::new(stdout);
            for _ in 0..2 {
                let mut line = String::new();
                let _ = stdout.read_line(&mut line);
                let _ = tx.send(line);
            }
        });
        let address = |prefix: &str| {
            let line = rx
                .recv_timeout(Duration::from_secs(30))
                .expect("payment-sim printed its addresses");
            let addr = line
                .trim()
                .strip_prefix(prefix)
                .unwrap_or_else(|| panic!("expected {prefix:?}, got {line:?}"))
                .to_owned();
            assert!(
                !addr.ends_with(":0"),
                "the printed address must carry the real port: {addr}"
            );
            format!("http://{addr}")
        };
        sim.base = address("payment-sim listening on ");
        sim.admin = address("payment-sim admin listening on ");
        sim
    }

    async fn charge(&self, key: Option<&str>, token: &str) -> (u16, Value) {
        let body = body(key.unwrap_or("no-key"), json!(1999), "EUR", token);
        self.post(key, None, body).await
    }

    async fn post(
        &self,
        key: Option<&str>,
        traceparent: Option<&str>,
        body: String,
    ) -> (u16, Value) {
        let mut request = self
            .http
            .post(format!("{}/v1/charges", self.base))
            .header("content-type", "application/json")
            .body(body);
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        if let Some(tp) = traceparent {
            request = request.header("traceparent", tp);
        }
        let (status, _, body) = answer(request).await;
        (status, body)
    }

    /// A charge of `key` with extra headers; the status, `Retry-After` and body.
    async fn charge_with(
        &self,
        key: &str,
        headers: &[(&str, &str)],
    ) -> (u16, Option<String>, Value) {
        let mut request = self
            .http
            .post(format!("{}/v1/charges", self.base))
            .header("content-type", "application/json")
            .header("Idempotency-Key", key)
            .body(body(key, json!(1999), "EUR", "tok_visa"));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        answer(request).await
    }

    /// `POST /admin/outage` with `form` on the admin routes.
    async fn outage(&self, form: &str) -> (u16, Value) {
        let request = self
            .http
            .post(format!("{}/admin/outage", self.admin))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form.to_owned());
        let (status, _, body) = answer(request).await;
        (status, body)
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let response = self
            .http
            .get(format!("{}{path}", self.admin))
            .send()
            .await
            .expect("GET");
        let status = response.status().as_u16();
        let text = response.text().await.expect("response body");
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn stats(&self) -> Value {
        let (status, stats) = self.get("/stats").await;
        assert_eq!(status, 200);
        // Every POST is counted in exactly one outcome.
        let sum: u64 = [
            "charges",
            "replays",
            "declined",
            "rejected",
            "failed",
            "in_progress",
            "rate_limited",
            "unauthorized",
            "outage",
        ]
        .iter()
        .map(|k| stats[k].as_u64().unwrap())
        .sum();
        assert_eq!(stats["requests"].as_u64().unwrap(), sum, "{stats}");
        stats
    }
}

/// Sends `request`; the status, `Retry-After` and body of the answer.
async fn answer(request: reqwest::RequestBuilder) -> (u16, Option<String>, Value) {
    let response = request.send().await.expect("an answer");
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let text = response.text().await.expect("response body");
    (
        status,
        retry_after,
        serde_json::from_str(&text).unwrap_or(Value::Null),
    )
}

/// A charge body; `amount` is a `Value` so that tests can send a wrong type.
fn body(order_id: &str, amount: Value, currency: &str, token: &str) -> String {
    json!({
        "order_id": order_id,
        "customer_id": "cust-1",
        "amount_minor": amount,
        "currency": currency,
        "payment_token": token,
    })
    .to_string()
}

fn charge_id(body: &Value) -> String {
    let id = body["charge_id"].as_str().expect("charge_id").to_owned();
    let hex = id.strip_prefix("ch_").expect("ch_ prefix");
    assert_eq!(hex.len(), 32, "{id}");
    assert!(
        hex.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "{id}"
    );
    id
}

/// Runs the binary to completion with `args` and returns (exit code, stderr).
fn run_to_exit(args: &[&str]) -> (Option<i32>, String) {
    let output = Command::new(BIN)
        .args(args)
        .env_remove("PAYMENT_SIM_LISTEN")
        .env_remove("PAYMENT_SIM_API_KEY")
        .stdin(Stdio::null())
        .output()
        .expect("run payment-sim");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}
