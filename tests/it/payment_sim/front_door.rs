//! What a production provider does before it looks at a charge: require an
//! API key (401), limit the rate (429 with `Retry-After`), and be down (503,
//! or refused connections) when switched so at the admin endpoint.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::payment_sim::{Sim, body};

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
