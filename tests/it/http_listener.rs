//! The HTTP listener against clients that open connections and never
//! complete a request: the daemon closes them once their headers are late,
//! never holds more than its cap of connections open, keeps answering
//! `/readyz` and processing orders while flooded, and still stops promptly.
//! It runs alone ([`TestEnv::alone`]): its 2000 connections and its 5 s
//! deadline want the machine to themselves.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::TestEnv;
use crate::common::daemon::{Daemon, PaymentSim};
use order_processor::adapters::http_server::{HEADER_READ_TIMEOUT, MAX_CONNECTIONS};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(60);
/// Nearly twice the cap, and well within the default descriptor limit of
/// a CI runner.
const FLOOD: usize = 2000;
const _: () = assert!(FLOOD > MAX_CONNECTIONS);
/// Time for the daemon to notice a late header and close, on a busy machine.
const MARGIN: Duration = Duration::from_secs(3);

/// What each flooding connection sends before it goes silent.
const BEGINNINGS: [&[u8]; 4] = [
    b"GET /readyz HT",
    b"GET /metr",
    b"GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Waiting: ",
    b"",
];

/// The soft limit of open files of this process.
fn open_files_limit() -> u64 {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    let line = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .unwrap();
    let soft = line["Max open files".len()..]
        .split_whitespace()
        .next()
        .unwrap();
    soft.parse().unwrap_or(u64::MAX)
}

/// Descriptors the daemon holds open.
fn open_files(daemon: &Daemon) -> usize {
    std::fs::read_dir(format!("/proc/{}/fd", daemon.child.id()))
        .unwrap()
        .count()
}

/// Connections that each send the beginning of a request and then wait
/// for the daemon to close them, noting when it did.
struct Flood {
    opened: Vec<Instant>,
    closed: Arc<Mutex<Vec<Option<Instant>>>>,
}

impl Flood {
    async fn open(address: &str, count: usize) -> Self {
        let closed = Arc::new(Mutex::new(vec![None; count]));
        let mut opened = Vec::with_capacity(count);
        for n in 0..count {
            let mut stream = TcpStream::connect(address).await.unwrap();
            let written = stream.write_all(BEGINNINGS[n % BEGINNINGS.len()]).await;
            opened.push(Instant::now());
            let closed = Arc::clone(&closed);
            tokio::spawn(async move {
                if written.is_ok() {
                    // Whatever the daemon sends, until it closes (EOF) or
                    // resets (an error).
                    let mut buffer = [0_u8; 512];
                    while let Ok(1..) = stream.read(&mut buffer).await {}
                }
                closed.lock().unwrap()[n] = Some(Instant::now());
            });
        }
        Self { opened, closed }
    }

    fn still_open(&self) -> usize {
        self.closed
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.is_none())
            .count()
    }

    /// How long each connection stayed open.
    fn lifetimes(&self) -> Vec<Duration> {
        let closed = self.closed.lock().unwrap();
        self.opened
            .iter()
            .zip(closed.iter())
            .map(|(opened, closed)| closed.unwrap().duration_since(*opened))
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_never_finish_their_headers_are_closed_capped_and_do_not_stop_probes_or_orders()
 {
    let limit = open_files_limit();
    assert!(
        limit >= FLOOD as u64 + 500,
        "this test holds {FLOOD} connections open: raise `ulimit -n` (now {limit})"
    );
    let env = TestEnv::alone().await;
    let sim = PaymentSim::start(&[]);
    let mut daemon = Daemon::start(&env, &sim.url, &[]).await;
    let address = daemon.http.trim_start_matches("http://").to_owned();
    let before = open_files(&daemon);

    let flood = Flood::open(&address, FLOOD).await;
    let flooded = Instant::now();
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The newest connections are still open, within their header time.
    assert!(flooded.duration_since(flood.opened[FLOOD - 1]) < HEADER_READ_TIMEOUT);
    let open = flood.still_open();
    assert!(
        open <= MAX_CONNECTIONS,
        "{open} flooding connections open, beyond the cap of {MAX_CONNECTIONS}"
    );
    assert!(open > 0, "the newest connections wait for their headers");
    let held = open_files(&daemon);
    assert!(
        held <= before + MAX_CONNECTIONS + 50,
        "the daemon holds {held} descriptors, {before} before the flood"
    );
    for _ in 0..3 {
        assert_eq!(daemon.status("/readyz").await, Some(200));
    }
    let ids = env.publish_orders(5, "tok_visa").await;
    env.assert_exactly_once(&sim, &ids, WAIT).await;
    assert_eq!(daemon.status("/healthz").await, Some(200));

    env.eventually(
        HEADER_READ_TIMEOUT + MARGIN + Duration::from_secs(5),
        "every flooding connection closed",
        || async { flood.still_open() == 0 },
    )
    .await;
    for (n, lifetime) in flood.lifetimes().into_iter().enumerate() {
        assert!(
            lifetime <= HEADER_READ_TIMEOUT + MARGIN,
            "connection {n} stayed open {lifetime:?}"
        );
    }
    let logs = daemon.logs();
    let at_cap = logs
        .lines()
        .filter(|line| line.contains("the HTTP listener is at its cap"))
        .count();
    assert_eq!(at_cap, 1, "said once a minute at most:\n{logs}");
    assert_eq!(daemon.status("/readyz").await, Some(200));

    // Connections that never send a request do not hold up a shutdown.
    let _lingering = Flood::open(&address, 20).await;
    let code = daemon.stop_with("TERM", Duration::from_secs(15));
    assert_eq!(code, Some(0), "log:\n{}", daemon.logs());
    assert!(
        !daemon.logs().contains("did not stop in time"),
        "{}",
        daemon.logs()
    );
}
