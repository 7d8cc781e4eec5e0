//! TLS to every peer, with a private CA an operator hands to the daemon:
//! `amqps://` to the broker, `sslmode=verify-full` to PostgreSQL and
//! `https://` to the payment provider, each through a TLS-terminating proxy
//! (tests/it/common/tls.rs) whose certificate only the test's own CA signed.
//!
//! How the daemon is told about the CA is what an operator does in
//! Kubernetes: `SSL_CERT_DIR` (the image's roots plus a mounted folder) or
//! `SSL_CERT_FILE` (that file alone) for the broker and the provider, read
//! by rustls-native-certs under lapin and under reqwest's platform verifier;
//! `sslmode=verify-full&sslrootcert=<file>` in `DATABASE_URL` for sqlx.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

use crate::common;
use std::net::SocketAddr;
use std::time::Duration;

use crate::common::TestEnv;
use crate::common::broker::Broker;
use crate::common::daemon::{DAEMON, Daemon, PaymentSim, config_dir};
use crate::common::tls::{Protocol, TestCa, TlsProxy};

const WAIT: Duration = Duration::from_secs(120);
const RABBITMQ: &str = "127.0.0.1:5672";
const POSTGRES: &str = "127.0.0.1:5432";

/// The three proxies of one test, each in front of the real service.
struct Peers {
    ca: TestCa,
    broker: TlsProxy,
    database: TlsProxy,
    payment: TlsProxy,
}

impl Peers {
    async fn start(sim: &PaymentSim) -> Self {
        let ca = TestCa::new();
        let sim_address: SocketAddr = sim.url.trim_start_matches("http://").parse().unwrap();
        Self {
            broker: TlsProxy::start(&ca, RABBITMQ.parse().unwrap(), Protocol::Tls).await,
            database: TlsProxy::start(&ca, POSTGRES.parse().unwrap(), Protocol::Postgres).await,
            payment: TlsProxy::start(&ca, sim_address, Protocol::Https).await,
            ca,
        }
    }

    fn amqp_url(&self) -> String {
        format!("amqps://guest:guest@localhost:{}/%2f", self.broker.port)
    }

    fn database_url(&self, env: &TestEnv) -> String {
        format!(
            "postgres://postgres@localhost:{}/{}?sslmode=verify-full&sslrootcert={}",
            self.database.port,
            env.database,
            self.ca.file().display()
        )
    }

    fn payment_url(&self) -> String {
        format!("https://localhost:{}", self.payment.port)
    }

    /// What an operator sets to add the private CA to the image's roots.
    fn ssl_cert_dir(&self) -> String {
        format!("/etc/ssl/certs:{}", self.ca.dir().display())
    }
}

/// How the operator hands the private CA to the broker and provider clients.
enum Trust {
    /// `SSL_CERT_DIR=/etc/ssl/certs:<folder>`: the image's roots and the CA.
    CertDir,
    /// `SSL_CERT_FILE=<folder>/ca.crt`: the CA alone.
    CertFile,
}

/// 50 orders through TLS to all three peers.
async fn orders_flow_over_tls(trust: Trust) {
    let env = TestEnv::new().await;
    let sim = PaymentSim::start(&[]);
    let peers = Peers::start(&sim).await;
    let trust = match trust {
        Trust::CertDir => ("SSL_CERT_DIR", peers.ssl_cert_dir()),
        Trust::CertFile => ("SSL_CERT_FILE", peers.ca.file().display().to_string()),
    };
    let daemon = Daemon::start(
        &env,
        &peers.payment_url(),
        &[
            ("AMQP_URL", &peers.amqp_url()),
            ("DATABASE_URL", &peers.database_url(&env)),
            (trust.0, &trust.1),
        ],
    )
    .await;

    let ids = env.publish_orders(50, "tok_visa").await;
    env.assert_exactly_once(&sim, &ids, WAIT).await;
    env.eventually(WAIT, "every delivery acked", || async {
        daemon
            .metrics()
            .await
            .contains(r#"order_processor_deliveries_total{outcome="acked",error_kind=""} 50"#)
    })
    .await;

    for (peer, proxy) in [
        ("broker", &peers.broker),
        ("database", &peers.database),
        ("payment provider", &peers.payment),
    ] {
        assert!(proxy.handshakes() > 0, "no TLS session with the {peer}");
        assert_eq!(proxy.refused(), 0, "a TLS handshake with the {peer} failed");
    }
    // Offered HTTP/2, the daemon still speaks HTTP/1.1: one connection per
    // charge in flight, never the provider's stream limit of one HTTP/2
    // connection.
    assert_eq!(
        peers.payment.h2_sessions(),
        0,
        "the provider was spoken to in HTTP/2"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_flow_over_amqps_verify_full_and_https_with_the_ca_added_by_ssl_cert_dir() {
    orders_flow_over_tls(Trust::CertDir).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_flow_over_amqps_verify_full_and_https_with_the_ca_alone_in_ssl_cert_file() {
    orders_flow_over_tls(Trust::CertFile).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_private_ca_the_broker_is_refused_and_no_order_is_taken() {
    let env = TestEnv::new().await;
    let sim = PaymentSim::start(&[]);
    let peers = Peers::start(&sim).await;
    let ids = env.publish_orders(5, "tok_visa").await;

    // Everything as above but the trust: the daemon knows only the system's
    // roots. It never becomes ready, so start it by hand.
    let mut command = common::daemon::command(&env, &peers.payment_url());
    command
        .env("AMQP_URL", peers.amqp_url())
        .env("DATABASE_URL", peers.database_url(&env));
    let daemon = Daemon::launch(&env, command).await;

    env.eventually(WAIT, "the broker's certificate refused twice", || async {
        peers.broker.refused() >= 2 && daemon.logs().contains("broker session ended")
    })
    .await;
    assert_eq!(peers.broker.handshakes(), 0);
    assert_eq!(daemon.status("/readyz").await, Some(503));
    // The database, whose CA comes with DATABASE_URL, was reached and migrated.
    assert!(peers.database.handshakes() > 0);

    let logs = daemon.logs();
    let refusal = logs
        .lines()
        .find(|line| line.contains("broker session ended"))
        .unwrap();
    assert!(
        refusal.contains("invalid peer certificate"),
        "the log names the certificate problem: {refusal}"
    );
    assert!(
        !logs.contains("guest:guest"),
        "credentials in the log:\n{logs}"
    );
    assert!(
        !logs.contains(&peers.amqp_url()),
        "the URL in the log:\n{logs}"
    );

    // Nothing was taken from the queue, charged or saved.
    let broker = Broker::connect().await;
    assert_eq!(broker.depth(&env.queue).await, ids.len() as u32);
    broker.close().await;
    assert_eq!(sim.stats().await["requests"], 0);
    assert_eq!(env.order_count().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payment_provider_the_daemon_cannot_verify_is_never_charged() {
    let env = TestEnv::new().await;
    let sim = PaymentSim::start(&[]);
    let peers = Peers::start(&sim).await;
    // Plain broker and database; only the provider's certificate is unknown.
    let daemon = Daemon::start(&env, &peers.payment_url(), &[]).await;

    env.publish_orders(5, "tok_visa").await;
    env.eventually(WAIT, "the provider's certificate refused", || async {
        peers.payment.refused() > 0 && daemon.logs().contains("retrying later")
    })
    .await;
    assert_eq!(peers.payment.handshakes(), 0);
    assert_eq!(sim.stats().await["requests"], 0);
    assert_eq!(env.order_count().await, 0);

    // The verifier's own line, inside the order's `charge` span, says why.
    let logs = daemon.logs();
    let cause = logs
        .lines()
        .find(|line| line.contains("invalid peer certificate"))
        .unwrap_or_else(|| panic!("no line names the refused certificate:\n{logs}"));
    assert!(cause.contains(r#""span":"charge""#), "{cause}");
    assert!(!logs.contains(&peers.payment_url()), "the URL in the log");
}

#[test]
fn a_ca_path_that_holds_no_certificate_stops_the_daemon_with_exit_2_naming_it() {
    let ca = TestCa::new();
    let missing = ca.dir().join("missing.crt");
    for (variable, value, named) in [
        (
            "SSL_CERT_FILE",
            missing.display().to_string(),
            "SSL_CERT_FILE",
        ),
        (
            "SSL_CERT_DIR",
            format!("/etc/ssl/certs:{}", missing.display()),
            "SSL_CERT_DIR",
        ),
        (
            "DATABASE_URL",
            format!(
                "postgres://app:hunter2@localhost/orders?sslmode=verify-full&sslrootcert={}",
                missing.display()
            ),
            "DATABASE_URL sslrootcert",
        ),
    ] {
        let output = std::process::Command::new(DAEMON)
            .arg("run")
            .env_clear()
            .env("ORDER_PROCESSOR_CONFIG_DIR", config_dir())
            .env("OTEL_SDK_DISABLED", "true")
            .env(variable, &value)
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(2), "{variable}");
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.starts_with(&format!("invalid configuration: {named} ")),
            "{stderr}"
        );
        assert!(stderr.contains("missing.crt"), "{stderr}");
        assert!(!stderr.contains("hunter2"), "{stderr}");
    }
}
