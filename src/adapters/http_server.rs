//! The small HTTP surface for Kubernetes and Prometheus: `/healthz` (the
//! process is alive), `/readyz` (connected to broker and database and not
//! draining) and `/metrics` (Prometheus text).
//!
//! The accept loop is the daemon's own rather than `axum::serve`, for the
//! limits a listener open to the network needs ([`connections`]): a
//! deadline for request headers and a cap on open connections.

mod connections;

pub use self::connections::{HEADER_READ_TIMEOUT, MAX_CONNECTIONS};

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::connections::{Admission, AtCap, Connections};

use crate::health::Health;
use crate::metrics::Metrics;

#[derive(Clone)]
struct Probes {
    health: Arc<Health>,
    metrics: Arc<Metrics>,
}

#[derive(Debug, thiserror::Error)]
pub enum HttpServerError {
    #[error("could not listen on {address}: {source}")]
    Bind {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// How long accepting pauses after an error that is not one connection's
/// (out of file descriptors, say), so as not to spin on it.
const ACCEPT_PAUSE: Duration = Duration::from_secs(1);

/// A bound listener, so a busy port fails the start instead of the first probe.
pub struct HttpServer {
    listener: tokio::net::TcpListener,
    router: Router,
}

impl HttpServer {
    pub async fn bind(
        address: SocketAddr,
        health: Arc<Health>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, HttpServerError> {
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .map_err(|source| HttpServerError::Bind { address, source })?;
        let router = Router::new()
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics_text))
            .with_state(Probes { health, metrics });
        Ok(Self { listener, router })
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// Serves until `stop` is cancelled, then closes the idle connections,
    /// answers the requests in progress, and returns once every connection
    /// is closed.
    pub async fn serve(self, stop: CancellationToken) {
        let connections = Connections::default();
        let tasks = TaskTracker::new();
        let mut at_cap = AtCap::default();
        loop {
            let accepted = tokio::select! {
                () = stop.cancelled() => break,
                accepted = self.listener.accept() => accepted,
            };
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(error) if one_connections(&error) => continue,
                Err(error) => {
                    tracing::error!(%error, "could not accept an HTTP connection; pausing");
                    tokio::select! {
                        () = stop.cancelled() => break,
                        () = tokio::time::sleep(ACCEPT_PAUSE) => continue,
                    }
                }
            };
            let admission = connections.admit();
            at_cap.note(&admission);
            match admission {
                Admission::Admitted(slot) | Admission::ClosedOldest(slot) => {
                    let router = self.router.clone();
                    tasks.spawn(connections::serve(stream, router, slot, stop.clone()));
                }
                // Closed at once: dropping it closes the socket.
                Admission::Full => drop(stream),
            }
        }
        // New connections are refused from here on.
        drop(self.listener);
        tasks.close();
        tasks.wait().await;
    }
}

/// An accept error that concerns the one connection being accepted.
fn one_connections(error: &std::io::Error) -> bool {
    matches!(
        error.kind(),
        std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::ConnectionRefused
    )
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(probes): State<Probes>) -> (StatusCode, &'static str) {
    if probes.health.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

async fn metrics_text(State(probes): State<Probes>) -> Response {
    match probes.metrics.encode() {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(error) => {
            tracing::error!(%error, "could not encode the metrics");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}
