//! The broker check, against the real RabbitMQ and its management API:
//! the daemon reads the queue's delivery limit and warns when the broker
//! would give up on a message before the daemon's own redelivery limit,
//! says once when it cannot check, and keeps processing orders either way. Needs the management plugin
//! (`rabbitmq-plugins enable rabbitmq_management`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

use crate::common;
use std::process::Command;
use std::time::Duration;

use crate::common::daemon::{Daemon, PaymentSim};
use crate::common::{ClosedPort, TestEnv};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(60);
const MANAGEMENT: &str = "http://127.0.0.1:15672";
const MANAGEMENT_KEY: &str = "ORDER_PROCESSOR__AMQP__MANAGEMENT_URL";

/// Fails the test at once, saying how to fix it, when the management API
/// does not answer.
async fn require_management() {
    let answer = reqwest::Client::new()
        .get(format!("{MANAGEMENT}/api/overview"))
        .basic_auth("guest", Some("guest"))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    match answer {
        Ok(response) if response.status().is_success() => {}
        _ => panic!(
            "the RabbitMQ management API does not answer on {MANAGEMENT}: enable it with \
             `rabbitmq-plugins enable rabbitmq_management` (no restart needed; CI's .ci/run does)"
        ),
    }
}

/// A policy on the test's work queue only; removed when dropped, even when
/// the test fails.
struct Policy {
    name: String,
}

impl Policy {
    fn set(env: &TestEnv, definition: &str) -> Self {
        let name = format!("test-{}-broker-check", env.id);
        let pattern = format!("^{}$", env.queue.replace('.', "\\."));
        let status = Command::new("rabbitmqctl")
            .args(["-q", "set_policy", "--apply-to", "queues"])
            .args([&name, &pattern, definition])
            .status()
            .expect("rabbitmqctl must be on PATH");
        assert!(status.success(), "rabbitmqctl set_policy failed");
        Self { name }
    }
}

impl Drop for Policy {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl")
            .args(["-q", "clear_policy", &self.name])
            .status();
    }
}

/// The daemon's log lines with this level whose message starts with `start`.
fn lines(daemon: &Daemon, level: &str, start: &str) -> Vec<Value> {
    daemon
        .logs()
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| {
            line["level"] == level
                && line["message"]
                    .as_str()
                    .is_some_and(|message| message.starts_with(start))
        })
        .collect()
}

async fn wait_for_line(env: &TestEnv, daemon: &Daemon, level: &str, start: &str) -> Value {
    env.eventually(WAIT, &format!("a {level} line `{start}…`"), || async {
        !lines(daemon, level, start).is_empty()
    })
    .await;
    lines(daemon, level, start).remove(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_limit_below_the_redelivery_limit_is_warned_about_and_orders_still_flow() {
    require_management().await;
    let env = TestEnv::new().await;
    let ids = env.publish_orders(20, "tok_visa").await;
    let _policy = Policy::set(&env, r#"{"delivery-limit":2}"#);
    let sim = PaymentSim::start(&[]);
    let url = format!("http://guest:guest@{}", &MANAGEMENT["http://".len()..]);
    let daemon = Daemon::start(&env, &sim.url, &[(MANAGEMENT_KEY, &url)]).await;

    let warning = wait_for_line(
        &env,
        &daemon,
        "WARN",
        "the broker's delivery limit is below amqp.redelivery_limit and the queue has no dead-letter exchange",
    )
    .await;
    assert_eq!(warning["queue"], env.queue.as_str());
    assert_eq!(warning["delivery_limit"], 2);
    assert_eq!(warning["delivery_limit_source"], "policy delivery-limit");
    assert_eq!(warning["redelivery_limit"], 10);
    assert_eq!(warning["dead_letter_exchange"], false);

    env.assert_exactly_once(&sim, &ids, WAIT).await;
    assert!(
        lines(&daemon, "INFO", "broker settings fit").is_empty(),
        "no all-is-well line beside a warning"
    );
    assert!(!daemon.logs().contains("guest:guest"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_fits_the_daemons_limits_is_reported_with_its_effective_values() {
    require_management().await;
    let env = TestEnv::new().await;
    let sim = PaymentSim::start(&[]);
    // No credentials in the URL: those of AMQP_URL are used.
    let daemon = Daemon::start(&env, &sim.url, &[(MANAGEMENT_KEY, MANAGEMENT)]).await;

    let line = wait_for_line(
        &env,
        &daemon,
        "INFO",
        "broker settings fit the daemon's limits",
    )
    .await;
    assert_eq!(line["queue"], env.queue.as_str());
    let version = line["rabbitmq_version"].as_str().unwrap_or_default();
    assert!(
        version.starts_with("3.") || version.starts_with("4."),
        "{line}"
    );
    assert!(line["consumer_timeout_ms"].as_u64().unwrap() > 0, "{line}");
    assert!(line["longest_hold_ms"].as_u64().unwrap() > 0, "{line}");
    assert_eq!(line["dead_letter_exchange"], false);
    assert_eq!(line["redelivery_limit"], 10);
    assert!(lines(&daemon, "WARN", "").iter().all(|warning| {
        !warning["message"]
            .as_str()
            .unwrap_or_default()
            .contains("delivery limit")
    }));

    let ids = env.publish_orders(5, "tok_visa").await;
    env.assert_exactly_once(&sim, &ids, WAIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_limit_at_the_redelivery_limit_is_no_warning_even_without_a_dead_letter_exchange()
 {
    require_management().await;
    let env = TestEnv::new().await;
    common::broker::Broker::connect().await.declare(&env).await;
    let _policy = Policy::set(&env, r#"{"delivery-limit":10}"#);
    let sim = PaymentSim::start(&[]);
    let daemon = Daemon::start(&env, &sim.url, &[(MANAGEMENT_KEY, MANAGEMENT)]).await;

    // The daemon dead-letters a message delivered with a count of 10; the
    // broker drops it only past 10.
    let line = wait_for_line(
        &env,
        &daemon,
        "INFO",
        "broker settings fit the daemon's limits",
    )
    .await;
    assert_eq!(line["delivery_limit"], 10);
    assert_eq!(line["delivery_limit_source"], "policy delivery-limit");
    assert_eq!(line["dead_letter_exchange"], false);
    assert_eq!(line["redelivery_limit"], 10);
    assert!(lines(&daemon, "WARN", "").iter().all(|warning| {
        !warning["message"]
            .as_str()
            .unwrap_or_default()
            .contains("delivery limit")
    }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_management_api_is_one_warning_without_the_url() {
    let env = TestEnv::new().await;
    let sim = PaymentSim::start(&[]);
    let closed = ClosedPort::bind();
    let port = closed.port();
    let url = format!("http://ops:hunter2@127.0.0.1:{port}");
    let daemon = Daemon::start(&env, &sim.url, &[(MANAGEMENT_KEY, &url)]).await;

    let warning = wait_for_line(&env, &daemon, "WARN", "could not check the broker's").await;
    assert_eq!(warning["queue"], env.queue.as_str());
    let ids = env.publish_orders(5, "tok_visa").await;
    env.assert_exactly_once(&sim, &ids, WAIT).await;

    let logs = daemon.logs();
    assert_eq!(lines(&daemon, "WARN", "could not check").len(), 1, "{logs}");
    assert!(
        !logs.contains("hunter2") && !logs.contains(&format!(":{port}")),
        "{logs}"
    );
}
