//! End-to-end tests of the `payment-sim` binary: each test starts the real executable on
//! ephemeral ports (`--listen 127.0.0.1:0`, and `--admin-listen 127.0.0.1:0` when it
//! needs an admin listener), learns the ports from the lines it prints, talks HTTP to it
//! and checks the answers and the counters it exposes. The child is killed when its
//! guard drops, also when an assertion fails.
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

    // Reusing a charged key for another amount is a rejection (CONTRACT §4: 422),
    // not a replay, and not the 409 that means "in progress".
    assert_eq!(sim.charge(Some("k"), "tok_visa").await.0, 201);
    let other = body("k", json!(1), "EUR", "tok_visa");
    assert_eq!(sim.post(Some("k"), None, other).await.0, 422);

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
async fn concurrent_requests_for_one_key_make_one_charge_and_the_others_answer_409() {
    // The latency keeps the first request in progress while the others arrive.
    let sim = std::sync::Arc::new(Sim::start(&["--latency-ms", "500"]));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let sim = sim.clone();
        tasks.spawn(async move { sim.charge(Some("race"), "tok_visa").await });
    }
    let mut created = Vec::new();
    let mut in_progress = 0;
    while let Some(result) = tasks.join_next().await {
        let (status, body) = result.unwrap();
        match status {
            201 => created.push(charge_id(&body)),
            409 => {
                assert_eq!(body["error"], "idempotency_key_in_use", "{body}");
                in_progress += 1;
            }
            _ => panic!("{status} {body}"),
        }
    }
    assert_eq!(created.len(), 1, "one charge for one key: {created:?}");
    assert_eq!(in_progress, 19);

    // Once the first is answered, a replay gets its charge.
    let (status, body) = sim.charge(Some("race"), "tok_visa").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(charge_id(&body), created[0]);

    let stats = sim.stats().await;
    assert_eq!(stats["charges"], 1, "{stats}");
    assert_eq!(stats["in_progress"], 19, "{stats}");
    assert_eq!(stats["replays"], 1, "{stats}");
    assert_eq!(sim.get("/v1/charges/race").await.1["requests"], 21);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_request_while_the_first_is_in_progress_is_answered_409_at_once() {
    let sim = std::sync::Arc::new(Sim::start(&["--latency-ms", "3000"]));
    let first = tokio::spawn({
        let sim = sim.clone();
        async move { sim.charge(Some("k"), "tok_visa").await }
    });
    // The first request has arrived once it is counted (not yet as an outcome, so
    // the counters are read without `stats`' check that they add up).
    let deadline = Instant::now() + Duration::from_secs(10);
    while sim.get("/stats").await.1["requests"] == 0 {
        assert!(Instant::now() < deadline, "the first request never arrived");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (status, body) = sim.charge(Some("k"), "tok_visa").await;
    assert_eq!(status, 409, "{body}");
    assert!(
        !first.is_finished(),
        "409 is answered while the first waits"
    );
    assert_eq!(
        sim.get("/v1/charges/k").await.0,
        404,
        "nothing recorded yet"
    );

    let (status, body) = first.await.unwrap();
    assert_eq!(status, 201, "the first completes normally: {body}");
    let (status, replay) = sim.charge(Some("k"), "tok_visa").await;
    assert_eq!(status, 200);
    assert_eq!(charge_id(&replay), charge_id(&body));
    let stats = sim.stats().await;
    assert_eq!(stats["in_progress"], 1, "{stats}");
    assert_eq!(stats["charges"], 1, "{stats}");
}

#[tokio::test]
async fn a_key_whose_request_failed_is_free_again() {
    // A 503 or 422 records nothing and ends the request's hold on its key.
    let sim = Sim::start(&[]);
    assert_eq!(sim.charge(Some("k"), "tok_fail").await.0, 503);
    assert_eq!(sim.charge(Some("k"), "tok_reject").await.0, 422);
    assert_eq!(sim.charge(Some("k"), "tok_visa").await.0, 201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn charges_over_the_rate_limit_are_answered_429_with_the_seconds_to_wait() {
    let sim = std::sync::Arc::new(Sim::start(&["--rate-limit", "2"]));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..10 {
        let sim = sim.clone();
        tasks.spawn(async move { (n, sim.charge_with(&format!("r{n}"), &[]).await) });
    }
    let mut limited = Vec::new();
    let mut accepted = 0u64;
    while let Some(result) = tasks.join_next().await {
        let (n, (status, retry_after, body)) = result.unwrap();
        match status {
            201 => accepted += 1,
            429 => {
                let seconds: u64 = retry_after
                    .expect("a 429 says when to come back")
                    .parse()
                    .expect("Retry-After in whole seconds");
                // A token frees up every half second: rounded up, 1.
                assert_eq!(seconds, 1);
                assert_eq!(body["error"], "rate_limited", "{body}");
                limited.push(n);
            }
            _ => panic!("{status} {body}"),
        }
    }
    // A bucket of 2, refilled at 2 a second, while the requests were sent.
    let refilled = (started.elapsed().as_secs_f64() * 2.0).ceil() as u64;
    assert!(accepted >= 2, "the full bucket's tokens are taken");
    assert!(accepted <= 2 + refilled, "{accepted} accepted");
    assert!(!limited.is_empty());
    let n = limited[0];
    assert_eq!(sim.get(&format!("/v1/charges/r{n}")).await.0, 404);

    // After the wait it named, a limited charge goes through.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(sim.charge_with(&format!("r{n}"), &[]).await.0, 201);
    let stats = sim.stats().await;
    assert_eq!(stats["rate_limited"], limited.len() as u64, "{stats}");
}

#[tokio::test]
async fn with_an_api_key_a_charge_without_the_bearer_token_is_401_and_records_nothing() {
    let sim = Sim::start(&["--api-key", "sk_test_42"]);
    let (status, _, _) = sim.charge_with("a", &[]).await;
    assert_eq!(status, 401);
    let wrong = [("authorization", "Bearer sk_test_41")];
    assert_eq!(sim.charge_with("a", &wrong).await.0, 401);
    let basic = [("authorization", "Basic c2tfdGVzdF80Mjo=")];
    assert_eq!(sim.charge_with("a", &basic).await.0, 401);
    assert_eq!(sim.get("/v1/charges/a").await.0, 404, "nothing recorded");

    let right = [("authorization", "Bearer sk_test_42")];
    assert_eq!(sim.charge_with("a", &right).await.0, 201);
    let any_case = [("authorization", "bearer sk_test_42")];
    assert_eq!(sim.charge_with("a", &any_case).await.0, 200);
    let stats = sim.stats().await;
    assert_eq!(stats["unauthorized"], 3, "{stats}");
    assert_eq!(stats["charges"], 1, "{stats}");
}

#[tokio::test]
async fn a_503_outage_answers_every_charge_503_until_it_is_switched_off() {
    let sim = Sim::start(&[]);
    assert_eq!(sim.charge_with("before", &[]).await.0, 201);

    let (status, shown) = sim.outage("mode=503&retry_after=7").await;
    assert_eq!(status, 200, "{shown}");
    assert_eq!(shown["mode"], "503");
    let (status, retry_after, _) = sim.charge_with("during", &[]).await;
    assert_eq!((status, retry_after.as_deref()), (503, Some("7")));
    let (status, _, _) = sim.charge_with("before", &[]).await;
    assert_eq!(status, 503, "replays too: the provider is down");
    assert_eq!(
        sim.get("/v1/charges/during").await.0,
        404,
        "nothing recorded"
    );

    let (status, _) = sim.outage("mode=503").await;
    assert_eq!(status, 200);
    let (status, retry_after, _) = sim.charge_with("during", &[]).await;
    assert_eq!((status, retry_after), (503, None));

    assert_eq!(sim.outage("mode=off").await.0, 200);
    assert_eq!(sim.charge_with("during", &[]).await.0, 201);
    assert_eq!(sim.stats().await["outage"], 3);
}

#[tokio::test]
async fn a_refuse_outage_refuses_connections_then_listens_again_on_the_same_address() {
    let sim = Sim::start(&["--admin-listen", "127.0.0.1:0"]);
    assert_ne!(sim.admin, sim.base);
    // A keep-alive connection to the charge port, open before the outage.
    assert_eq!(sim.charge_with("before", &[]).await.0, 201);

    let (status, shown) = sim.outage("mode=refuse").await;
    assert_eq!(status, 200, "{shown}");
    assert_eq!(shown["listening"], false);
    let address = sim.base.trim_start_matches("http://");
    let refused = std::net::TcpStream::connect(address).unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
    let sent = sim
        .http
        .post(format!("{}/v1/charges", sim.base))
        .header("Idempotency-Key", "during")
        .body(body("during", json!(5), "EUR", "tok_visa"))
        .send()
        .await;
    assert!(
        sent.is_err(),
        "no answer during the outage, on the old connection or a new one: {sent:?}"
    );
    // The admin listener is still up.
    assert_eq!(sim.get("/stats").await.0, 200);

    let (status, shown) = sim.outage("mode=off").await;
    assert_eq!(status, 200, "{shown}");
    assert_eq!(shown["listening"], true);
    assert_eq!(sim.charge_with("during", &[]).await.0, 201);
    assert_eq!(sim.charge_with("before", &[]).await.0, 200);
}

#[tokio::test]
async fn refuse_needs_an_admin_listener_and_bad_switches_are_400() {
    let sim = Sim::start(&[]);
    assert_eq!(sim.admin, sim.base);
    let (status, body) = sim.outage("mode=refuse").await;
    assert_eq!(status, 409, "{body}");
    assert!(body["message"].as_str().unwrap().contains("--admin-listen"));
    assert_eq!(sim.charge_with("k", &[]).await.0, 201, "still serving");
    for form in [
        "",
        "mode=down",
        "mode=off&retry_after=3",
        "mode=503&retry_after=x",
    ] {
        assert_eq!(sim.outage(form).await.0, 400, "{form:?}");
    }
    let (status, shown) = sim.get("/admin/outage").await;
    assert_eq!((status, &shown["mode"]), (200, &json!("off")));
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
        (&["--rate-limit", "0"][..], "--rate-limit"),
        (&["--api-key", ""][..], "--api-key"),
        (&["--api-key", "two words"][..], "--api-key"),
        (&["--admin-listen", "nowhere"][..], "--admin-listen"),
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
