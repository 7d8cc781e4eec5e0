//! Running the real binaries (`order-processor`, `payment-sim`) as child
//! processes.

use std::collections::HashMap;
use std::io::{BufRead as _, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{AMQP_URL, TestEnv};

pub const DAEMON: &str = env!("CARGO_BIN_EXE_order-processor");
pub const PAYMENT_SIM: &str = env!("CARGO_BIN_EXE_payment-sim");

pub fn config_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config")
}

/// `order-processor` with the environment of a test; nothing inherited
/// from the developer's shell can change what a test does.
pub fn command(env: &TestEnv, payment_url: &str) -> Command {
    let mut command = Command::new(DAEMON);
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("ORDER_PROCESSOR_CONFIG_DIR", config_dir())
        .env("AMQP_URL", AMQP_URL)
        .env("DATABASE_URL", env.database_url())
        .env("PAYMENT_BASE_URL", payment_url)
        .env("ORDER_PROCESSOR__AMQP__EXCHANGE", &env.exchange)
        .env("ORDER_PROCESSOR__AMQP__QUEUE", &env.queue)
        .env("ORDER_PROCESSOR__AMQP__ROUTING_KEY", &env.routing_key)
        .env("OTEL_SDK_DISABLED", "true")
        .env("RUST_LOG", "info");
    command
}

/// A running daemon; killed when dropped.
pub struct Daemon {
    pub child: Child,
    pub http: String,
    pub log: PathBuf,
}

impl Daemon {
    /// Starts the daemon and waits until `/readyz` answers 200.
    pub async fn start(env: &TestEnv, payment_url: &str, extra: &[(&str, &str)]) -> Self {
        let mut command = command(env, payment_url);
        for (key, value) in extra {
            command.env(key, value);
        }
        let daemon = Self::launch(env, command).await;
        daemon.wait_ready(Duration::from_secs(60)).await;
        daemon
    }

    /// Spawns `command` with its HTTP listener on a port the kernel picks
    /// and its output in a log file, and returns once the daemon has logged
    /// the address it listens on (before it is ready, if it ever is).
    pub async fn launch(env: &TestEnv, mut command: Command) -> Self {
        let log = std::env::temp_dir().join(format!(
            "order-processor-{}-{}.log",
            env.id,
            uuid::Uuid::new_v4().simple()
        ));
        let file = std::fs::File::create(&log).unwrap();
        command
            .env("ORDER_PROCESSOR__HTTP__LISTEN", "127.0.0.1:0")
            .stdout(file.try_clone().unwrap())
            .stderr(file);
        let child = command.spawn().unwrap();
        let mut daemon = Self {
            child,
            http: String::new(),
            log,
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(address) = listening_address(&daemon.logs()) {
                daemon.http = format!("http://{address}");
                return daemon;
            }
            let exited = daemon.child.try_wait().unwrap();
            if exited.is_some() || tokio::time::Instant::now() > deadline {
                panic!(
                    "the daemon logged no listening address ({exited:?}); log:\n{}",
                    daemon.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn wait_ready(&self, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        while tokio::time::Instant::now() < deadline {
            if self.status("/readyz").await == Some(200) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the daemon did not become ready; log:\n{}", self.logs());
    }

    pub async fn status(&self, path: &str) -> Option<u16> {
        let response = reqwest::get(format!("{}{path}", self.http)).await.ok()?;
        Some(response.status().as_u16())
    }

    pub async fn metrics(&self) -> String {
        reqwest::get(format!("{}/metrics", self.http))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends a signal and waits for the exit code.
    pub fn stop_with(&mut self, signal: &str, within: Duration) -> Option<i32> {
        let pid = self.child.id().to_string();
        Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .unwrap();
        let deadline = std::time::Instant::now() + within;
        while std::time::Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

/// The address of the daemon's HTTP listener, from its JSON log line
/// `serving /healthz /readyz /metrics` (field `address`).
fn listening_address(logs: &str) -> Option<String> {
    logs.lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|line| {
            line["message"]
                .as_str()
                .is_some_and(|message| message.starts_with("serving /healthz"))
        })
        .and_then(|line| Some(line["address"].as_str()?.to_owned()))
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// A running `payment-sim`; killed when dropped. It always has an admin
/// listener of its own, so that [`PaymentSim::outage`] can close the charge
/// port (`refuse`) while the counters stay readable.
pub struct PaymentSim {
    child: Child,
    /// The charge API: what the daemon's `PAYMENT_BASE_URL` points at.
    pub url: String,
    /// The admin listener: the outage switch, `/stats`, `/v1/charges/{key}`.
    pub admin: String,
}

/// An outage of `payment-sim`, switched on and off while it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimOutage {
    /// Every charge answered 503, with `Retry-After: <seconds>` if given.
    Unavailable { retry_after: Option<u64> },
    /// The charge port closed: connections refused (ECONNREFUSED).
    Refuse,
    /// Back to normal, listening again on the same address.
    Off,
}

impl PaymentSim {
    pub fn start(args: &[&str]) -> Self {
        let mut child = Command::new(PAYMENT_SIM)
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .args(args)
            .env_remove("PAYMENT_SIM_API_KEY")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut address = || {
            let mut line = String::new();
            stdout.read_line(&mut line).unwrap();
            format!("http://{}", line.trim().rsplit(' ').next().unwrap())
        };
        let url = address();
        let admin = address();
        Self { child, url, admin }
    }

    pub async fn stats(&self) -> HashMap<String, u64> {
        reqwest::get(format!("{}/stats", self.admin))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// What the simulator recorded for one idempotency key.
    pub async fn charge(&self, key: &str) -> Option<serde_json::Value> {
        let response = reqwest::get(format!("{}/v1/charges/{key}", self.admin))
            .await
            .unwrap();
        if response.status() == 404 {
            return None;
        }
        Some(response.json().await.unwrap())
    }

    /// Switches an outage on or off; returns once it is in force (the port
    /// closed, or open again).
    pub async fn outage(&self, outage: SimOutage) {
        let form = match outage {
            SimOutage::Unavailable {
                retry_after: Some(seconds),
            } => format!("mode=503&retry_after={seconds}"),
            SimOutage::Unavailable { retry_after: None } => "mode=503".to_owned(),
            SimOutage::Refuse => "mode=refuse".to_owned(),
            SimOutage::Off => "mode=off".to_owned(),
        };
        let response = reqwest::Client::new()
            .post(format!("{}/admin/outage", self.admin))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form)
            .send()
            .await
            .unwrap();
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        assert_eq!(status, 200, "payment-sim refused the outage switch: {body}");
    }
}

impl Drop for PaymentSim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
