//! The command line as an operator meets it: exit codes, one-line errors
//! that name the key, secrets that never print, migrations, the
//! container healthcheck.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use crate::common;
use std::process::Command;

use crate::common::TestEnv;
use crate::common::daemon::{DAEMON, Daemon, PAYMENT_SIM, PaymentSim, config_dir};

fn order_processor(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut command = Command::new(DAEMON);
    command
        .env_clear()
        .env("ORDER_PROCESSOR_CONFIG_DIR", config_dir())
        .env("OTEL_SDK_DISABLED", "true")
        .args(args);
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().unwrap()
}

#[test]
fn check_config_prints_the_configuration_with_secrets_redacted() {
    let output = order_processor(
        &["check-config"],
        &[
            ("AMQP_URL", "amqps://app:hunter2@mq.internal:5671/prod"),
            ("DATABASE_URL", "postgres://app:s3cret@db/orders"),
        ],
    );
    assert_eq!(output.status.code(), Some(0));
    let shown = String::from_utf8(output.stdout).unwrap();
    assert!(shown.contains("orders.process"));
    assert!(shown.contains("amqps://app:[redacted]@mq.internal:5671/prod"));
    assert!(!shown.contains("hunter2") && !shown.contains("s3cret"));
}

#[test]
fn a_bad_value_exits_2_with_one_line_naming_the_key() {
    let output = order_processor(
        &["check-config"],
        &[("ORDER_PROCESSOR__WORKERS__CONCURRENCY", "0")],
    );
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(
        stderr,
        "invalid configuration: workers.concurrency must be between 1 and 10000 (got 0)\n"
    );
}

#[test]
fn an_unknown_key_and_a_wrong_type_are_named() {
    let unknown = order_processor(
        &["check-config"],
        &[("ORDER_PROCESSOR__WORKERS__CONCURENCY", "3")],
    );
    assert_eq!(unknown.status.code(), Some(2));
    assert!(
        String::from_utf8(unknown.stderr)
            .unwrap()
            .contains("workers.concurency")
    );

    let wrong = order_processor(&["run"], &[("ORDER_PROCESSOR__AMQP__PREFETCH", "lots")]);
    assert_eq!(wrong.status.code(), Some(2));
    let stderr = String::from_utf8(wrong.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("amqp.prefetch"), "{stderr}");
}

#[test]
fn a_bad_secret_url_is_named_but_not_shown() {
    let output = order_processor(
        &["check-config"],
        &[("PAYMENT_BASE_URL", "ftp://u:topsecret@pay")],
    );
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.contains("PAYMENT_BASE_URL") && !stderr.contains("topsecret"),
        "{stderr}"
    );
}

#[test]
fn a_usage_error_exits_2_with_one_line() {
    let output = order_processor(&["publish", "--rate", "fast"], &[]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("--rate"), "{stderr}");
}

#[tokio::test]
async fn migrate_creates_the_orders_table_and_can_run_twice() {
    let env = TestEnv::new().await;
    for _ in 0..2 {
        let output = order_processor(&["migrate"], &[("DATABASE_URL", &env.database_url())]);
        assert_eq!(
            output.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&output.stdout)
        );
    }
    let columns: Vec<String> = sqlx::query_scalar(
        "SELECT column_name::text FROM information_schema.columns WHERE table_name = 'orders' ORDER BY column_name",
    )
    .fetch_all(&env.db)
    .await
    .unwrap();
    for expected in [
        "charge_id",
        "currency",
        "customer_id",
        "order_id",
        "processed_at",
        "total_minor",
        "trace_id",
    ] {
        assert!(
            columns.iter().any(|c| c == expected),
            "missing column {expected}"
        );
    }
}

#[tokio::test]
async fn a_failing_migration_says_what_postgresql_said_and_its_sqlstate_not_where_in_its_source() {
    let env = TestEnv::new().await;
    // A type named like the table: its row type cannot be created.
    sqlx::query("CREATE TYPE orders AS ENUM ('placed')")
        .execute(&env.db)
        .await
        .unwrap();
    let output = order_processor(&["migrate"], &[("DATABASE_URL", &env.database_url())]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(r#"type "orders" already exists (SQLSTATE 42710)"#),
        "{stderr}"
    );
    assert!(!stderr.contains(" at line "), "{stderr}");
}

#[test]
fn an_unreachable_database_is_one_line_and_exit_1() {
    let output = order_processor(
        &["migrate"],
        &[("DATABASE_URL", "postgres://app:pw@127.0.0.1:1/orders")],
    );
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(!stderr.contains("pw@"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_prints_the_ids_of_confirmed_orders_that_are_processed_under_those_traces() {
    let env = TestEnv::new().await;
    let sim = PaymentSim::start(&[]);
    let _daemon = Daemon::start(&env, &sim.url, &[]).await;

    let output = common::daemon::command(&env, &sim.url)
        .args(["publish", "--count", "3"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("published 3 message(s), 3 confirmed by the broker"),
        "{stderr}"
    );
    assert!(
        !stderr.contains(r#""level":"ERROR""#),
        "a clean run logs no error:\n{stderr}"
    );

    let printed: Vec<(uuid::Uuid, String)> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| {
            let (order, trace) = line.split_once(' ').unwrap();
            let order = order.strip_prefix("order_id=").unwrap().parse().unwrap();
            (order, trace.strip_prefix("trace_id=").unwrap().to_owned())
        })
        .collect();
    assert_eq!(printed.len(), 3);
    let ids: Vec<uuid::Uuid> = printed.iter().map(|(id, _)| *id).collect();
    env.assert_exactly_once(&sim, &ids, std::time::Duration::from_secs(30))
        .await;
    for (id, trace) in printed {
        let stored = env.stored_trace_id(id).await;
        assert_eq!(
            stored,
            Some(trace),
            "the row of {id} is in the printed trace"
        );
    }
}

#[test]
fn check_config_refuses_what_run_would_refuse() {
    for (key, value, named) in [
        ("RUST_LOG", "garbage===", "RUST_LOG"),
        (
            "OTEL_EXPORTER_OTLP_PROTOCOL",
            "bogus",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ),
        (
            "DATABASE_URL",
            "postgres://app:hunter2@db/orders?sslmode=bogus",
            "DATABASE_URL",
        ),
    ] {
        let output = order_processor(
            &["check-config"],
            &[(key, value), ("OTEL_SDK_DISABLED", "false")],
        );
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert_eq!(output.status.code(), Some(2), "{key}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.contains(named) && !stderr.contains("hunter2"),
            "{stderr}"
        );
    }
}

#[test]
fn a_secret_that_is_not_utf8_is_named_not_replaced_by_the_default() {
    use std::os::unix::ffi::OsStrExt as _;
    let output = Command::new(DAEMON)
        .env_clear()
        .env("ORDER_PROCESSOR_CONFIG_DIR", config_dir())
        .env(
            "DATABASE_URL",
            std::ffi::OsStr::from_bytes(b"postgres://u:p\xff@10.9.9.9/db"),
        )
        .arg("check-config")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(
        stderr,
        "invalid configuration: DATABASE_URL is not valid UTF-8\n"
    );
}

#[test]
fn a_bad_tokio_worker_threads_never_panics() {
    let output = order_processor(&["check-config"], &[("TOKIO_WORKER_THREADS", "abc")]);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let sim = Command::new(PAYMENT_SIM)
        .env_clear()
        .env("TOKIO_WORKER_THREADS", "0")
        .args(["--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert_eq!(sim.status.code(), Some(2), "{sim:?}");
    let stderr = String::from_utf8(sim.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("TOKIO_WORKER_THREADS"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_migrating_a_new_database_at_once_all_succeed() {
    let env = TestEnv::new().await;
    let fresh = format!("{}_fresh", env.database);
    let url = format!("postgres://postgres@127.0.0.1:5432/{fresh}");
    let migrations: Vec<_> = (0..4)
        .map(|_| {
            Command::new(DAEMON)
                .env_clear()
                .env("ORDER_PROCESSOR_CONFIG_DIR", config_dir())
                .env("OTEL_SDK_DISABLED", "true")
                .env("DATABASE_URL", &url)
                .arg("migrate")
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outputs: Vec<_> = migrations
        .into_iter()
        .map(|child| child.wait_with_output().unwrap())
        .collect();
    let drop = format!("DROP DATABASE IF EXISTS \"{fresh}\" WITH (FORCE)");
    sqlx::query(sqlx::AssertSqlSafe(drop))
        .execute(&env.db)
        .await
        .unwrap();
    for output in outputs {
        assert_eq!(
            output.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// `healthcheck` against whatever listens on `listen`: (exit code, stderr).
fn healthcheck(listen: &str) -> (Option<i32>, String) {
    let output = order_processor(
        &["healthcheck"],
        &[("ORDER_PROCESSOR__HTTP__LISTEN", listen)],
    );
    (
        output.status.code(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

/// A one-connection HTTP server that answers `status_line` to the first request.
fn answering(status_line: &'static str) -> (String, std::thread::JoinHandle<()>) {
    use std::io::{BufRead as _, BufReader, Write as _};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let server = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut line = String::new();
        while reader.read_line(&mut line).unwrap() > 0 && line != "\r\n" {
            line.clear();
        }
        let mut stream = stream;
        write!(
            stream,
            "HTTP/1.1 {status_line}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        )
        .unwrap();
    });
    (address, server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthcheck_exits_0_while_the_daemon_is_ready() {
    let env = TestEnv::new().await;
    let sim = PaymentSim::start(&[]);
    let daemon = Daemon::start(&env, &sim.url, &[]).await;
    let listen = daemon.http.trim_start_matches("http://").to_owned();

    let (code, stderr) = tokio::task::spawn_blocking(move || healthcheck(&listen))
        .await
        .unwrap();
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stderr, "");
}

#[test]
fn healthcheck_exits_1_with_one_line_when_readyz_is_not_200() {
    let (address, server) = answering("503 Service Unavailable");
    let (code, stderr) = healthcheck(&address);
    server.join().unwrap();
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(
        stderr,
        format!("not ready: http://{address}/readyz answered 503\n")
    );
}

#[test]
fn healthcheck_exits_1_with_one_line_when_nothing_listens() {
    let closed = common::ClosedPort::bind();
    let port = closed.port();
    let (code, stderr) = healthcheck(&format!("0.0.0.0:{port}"));
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(
        stderr,
        format!("not ready: nothing answered at http://127.0.0.1:{port}/readyz\n")
    );
}

#[test]
fn healthcheck_gives_up_on_a_daemon_that_never_answers() {
    // Connections are accepted by the kernel into the backlog, never served.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let (code, stderr) = healthcheck(&address);
    drop(listener);
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(
        stderr,
        format!("not ready: http://{address}/readyz did not answer within 3 s\n")
    );
}
