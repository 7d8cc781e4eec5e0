//! End-to-end tests of the `payment-sim` binary: each test starts the real executable on
//! an ephemeral port (`--listen 127.0.0.1:0`), learns the port from the line it prints,
//! talks HTTP to it and checks the answers and the counters it exposes. The child is
//! killed when its guard drops, also when an assertion fails.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_payment-sim");
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// A running simulator; killed and reaped on drop.
struct Sim {
    child: Child,
    base: String,
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
            http: reqwest::Client::new(),
        };
        // Read on a thread so that a child that never prints fails the test instead of
        // hanging it.
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("payment-sim printed its address");
        let addr = line
            .trim()
            .strip_prefix("payment-sim listening on ")
            .unwrap_or_else(|| panic!("unexpected first line: {line:?}"));
        assert!(
            !addr.ends_with(":0"),
            "the printed address must carry the real port: {addr}"
        );
        sim.base = format!("http://{addr}");
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
        let response = request.send().await.expect("POST /v1/charges");
        let status = response.status().as_u16();
        let text = response.text().await.expect("response body");
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
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
        let sum: u64 = ["charges", "replays", "declined", "rejected", "failed"]
            .iter()
            .map(|k| stats[k].as_u64().unwrap())
            .sum();
        assert_eq!(stats["requests"].as_u64().unwrap(), sum, "{stats}");
        stats
    }
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
        .stdin(Stdio::null())
        .output()
        .expect("run payment-sim");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn charge_then_replay_returns_the_same_charge() {
    let sim = Sim::start(&[]);
    let (status, body) = sim.charge(Some("order-1"), "tok_visa").await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["status"], "succeeded");
    let first = charge_id(&body);

    let (status, body) = sim.charge(Some("order-1"), "tok_visa").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(charge_id(&body), first);

    let stats = sim.stats().await;
    assert_eq!(stats["charges"], 1, "{stats}");
    assert_eq!(stats["replays"], 1, "{stats}");
    assert_eq!(stats["requests"], 2, "{stats}");

    let (status, record) = sim.get("/v1/charges/order-1").await;
    assert_eq!(status, 200);
    assert_eq!(record["charge_id"], first.as_str());
    assert_eq!(record["status"], "succeeded");
    assert_eq!(record["amount_minor"], 1999);
    assert_eq!(record["currency"], "EUR");
    assert_eq!(record["requests"], 2);

    let (status, _) = sim.get("/v1/charges/never-seen").await;
    assert_eq!(status, 404);
    let (status, _) = sim.get("/healthz").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn deterministic_tokens() {
    let sim = Sim::start(&[]);

    let (status, body) = sim.charge(Some("dec"), "tok_decline").await;
    assert_eq!(status, 402, "{body}");
    let (status, _) = sim.charge(Some("dec"), "tok_decline").await;
    assert_eq!(status, 402, "a decline is replayed");
    let (status, record) = sim.get("/v1/charges/dec").await;
    assert_eq!(status, 200);
    assert_eq!(record["status"], "declined");
    assert_eq!(record["requests"], 2);

    let (status, body) = sim.charge(Some("rej"), "tok_reject").await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(sim.get("/v1/charges/rej").await.0, 404, "nothing recorded");

    let (status, body) = sim.charge(Some("fail"), "tok_fail").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(sim.get("/v1/charges/fail").await.0, 404, "nothing recorded");

    // A key that failed is charged normally on a later attempt, which counts both POSTs.
    let (status, _) = sim.charge(Some("fail"), "tok_visa").await;
    assert_eq!(status, 201);
    assert_eq!(sim.get("/v1/charges/fail").await.1["requests"], 2);

    let stats = sim.stats().await;
    assert_eq!(stats["declined"], 1, "{stats}");
    assert_eq!(stats["replays"], 1, "{stats}");
    assert_eq!(stats["rejected"], 1, "{stats}");
    assert_eq!(stats["failed"], 1, "{stats}");
    assert_eq!(stats["charges"], 1, "{stats}");
}

#[tokio::test]
async fn tok_slow_waits_at_least_two_seconds() {
    let sim = Sim::start(&[]);
    let started = Instant::now();
    let (status, _) = sim.charge(Some("slow"), "tok_slow").await;
    assert_eq!(status, 201);
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn latency_applies_to_new_charges_only() {
    let sim = Sim::start(&["--latency-ms", "1000"]);
    let started = Instant::now();
    assert_eq!(sim.charge(Some("lat"), "tok_visa").await.0, 201);
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    let started = Instant::now();
    assert_eq!(sim.charge(Some("lat"), "tok_visa").await.0, 200);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "replays are not delayed"
    );
}

#[tokio::test]
async fn invalid_requests_are_rejected() {
    let sim = Sim::start(&[]);

    let (status, _) = sim.charge(None, "tok_visa").await;
    assert_eq!(status, 400, "missing Idempotency-Key");
    let (status, _) = sim.charge(Some(""), "tok_visa").await;
    assert_eq!(status, 400, "empty Idempotency-Key");
    let (status, _) = sim.post(Some("bad"), None, "{not json".to_owned()).await;
    assert_eq!(status, 400, "malformed JSON");
    let wrong_shape = body("bad", json!("12"), "EUR", "t");
    let (status, _) = sim.post(Some("bad"), None, wrong_shape).await;
    assert_eq!(status, 400, "amount_minor must be a number");
    let missing =
        json!({"order_id": "bad", "amount_minor": 12, "currency": "EUR", "payment_token": "t"});
    let (status, _) = sim.post(Some("bad"), None, missing.to_string()).await;
    assert_eq!(status, 400, "customer_id is required");

    let zero = body("z", json!(0), "EUR", "t");
    assert_eq!(sim.post(Some("z"), None, zero).await.0, 422);
    let currency = body("z", json!(5), "euro", "t");
    assert_eq!(sim.post(Some("z"), None, currency).await.0, 422);

    // Reusing a charged key for another amount is a conflict, not a replay.
    assert_eq!(sim.charge(Some("k"), "tok_visa").await.0, 201);
    let other = body("k", json!(1), "EUR", "tok_visa");
    assert_eq!(sim.post(Some("k"), None, other).await.0, 409);

    let stats = sim.stats().await;
    assert_eq!(stats["rejected"], 8, "{stats}");
    assert_eq!(stats["charges"], 1, "{stats}");
}

#[tokio::test]
async fn fail_rate_one_always_fails_and_records_nothing() {
    let sim = Sim::start(&["--fail-rate", "1"]);
    for _ in 0..10 {
        let (status, _) = sim.charge(Some("f"), "tok_visa").await;
        assert_eq!(status, 503);
    }
    assert_eq!(sim.get("/v1/charges/f").await.0, 404);
    let stats = sim.stats().await;
    assert_eq!(stats["failed"], 10, "{stats}");
    assert_eq!(stats["charges"], 0, "{stats}");
}

#[tokio::test]
async fn decline_rate_one_declines_and_replays_the_decline() {
    let sim = Sim::start(&["--decline-rate", "1"]);
    assert_eq!(sim.charge(Some("d"), "tok_visa").await.0, 402);
    assert_eq!(sim.charge(Some("d"), "tok_visa").await.0, 402);
    let stats = sim.stats().await;
    assert_eq!(stats["declined"], 1, "{stats}");
    assert_eq!(stats["replays"], 1, "{stats}");
}

#[tokio::test]
async fn max_keys_bounds_the_store() {
    let sim = Sim::start(&["--max-keys", "1"]);
    assert_eq!(sim.charge(Some("a"), "tok_visa").await.0, 201);
    assert_eq!(sim.charge(Some("b"), "tok_visa").await.0, 503, "store full");
    assert_eq!(
        sim.charge(Some("a"), "tok_visa").await.0,
        200,
        "known key still replays"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_requests_make_one_charge() {
    // The latency keeps all 20 requests in flight at once, past the replay check.
    let sim = std::sync::Arc::new(Sim::start(&["--latency-ms", "200"]));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let sim = sim.clone();
        tasks.spawn(async move { sim.charge(Some("race"), "tok_visa").await });
    }
    let mut answers = Vec::new();
    while let Some(result) = tasks.join_next().await {
        let (status, body) = result.unwrap();
        assert!(status == 200 || status == 201, "{status} {body}");
        answers.push((status, charge_id(&body)));
    }
    assert_eq!(answers.len(), 20);
    let created = answers.iter().filter(|(status, _)| *status == 201).count();
    assert_eq!(created, 1, "{answers:?}");
    let mut ids: Vec<&String> = answers.iter().map(|(_, id)| id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 1, "one charge_id for one key: {ids:?}");

    let stats = sim.stats().await;
    assert_eq!(stats["charges"], 1, "{stats}");
    assert_eq!(stats["replays"], 19, "{stats}");
    assert_eq!(sim.get("/v1/charges/race").await.1["requests"], 20);
}

#[tokio::test]
async fn traceparent_is_recorded() {
    let sim = Sim::start(&[]);
    let body = body("t", json!(5), "EUR", "tok_visa");
    assert_eq!(
        sim.post(Some("t"), Some(TRACEPARENT), body.clone()).await.0,
        201
    );
    let (_, record) = sim.get("/v1/charges/t").await;
    assert_eq!(record["traceparent"], TRACEPARENT);

    // The last one seen is kept: a retry carries a new span id.
    let retry = "00-4bf92f3577b34da6a3ce929d0e0e4736-b7ad6b7169203331-01";
    assert_eq!(sim.post(Some("t"), Some(retry), body.clone()).await.0, 200);
    let (_, record) = sim.get("/v1/charges/t").await;
    assert_eq!(record["traceparent"], retry);

    assert_eq!(sim.post(Some("u"), None, body).await.0, 201);
    assert_eq!(sim.get("/v1/charges/u").await.1["traceparent"], Value::Null);
}

#[test]
fn bad_arguments_exit_2_with_one_line() {
    for (args, option) in [
        (&["--decline-rate", "2"][..], "--decline-rate"),
        (&["--fail-rate", "-0.1"][..], "--fail-rate"),
        (&["--fail-rate", "NaN"][..], "--fail-rate"),
        (&["--listen", "not-an-address"][..], "--listen"),
        (&["--max-keys", "-1"][..], "--max-keys"),
        (&["--latency-ms", "-5"][..], "--latency-ms"),
    ] {
        let (code, stderr) = run_to_exit(args);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr:?}");
        assert!(stderr.contains(option), "{args:?}: {stderr}");
    }
}

#[test]
fn unbindable_address_exits_1_with_one_line() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (code, stderr) = run_to_exit(&["--listen", &addr]);
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr:?}");
    assert!(stderr.contains(&addr), "{stderr}");
}

#[cfg(unix)]
#[tokio::test]
async fn sigterm_shuts_down_gracefully() {
    let mut sim = Sim::start(&[]);
    // Leaves a keep-alive connection open, which must not hold up the shutdown.
    assert_eq!(sim.charge(Some("s"), "tok_visa").await.0, 201);
    let status = Command::new("kill")
        .args(["-TERM", &sim.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let started = Instant::now();
    loop {
        if let Some(exit) = sim.child.try_wait().unwrap() {
            assert_eq!(exit.code(), Some(0));
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no exit within 10 s of SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
