//! The charge API: charges and replays, the deterministic tokens, latency,
//! invalid requests, the store's bound, and 409 while a key is in progress.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::payment_sim::{Sim, TRACEPARENT, body, charge_id};

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
