//! `order-processor healthcheck`: asks a running daemon's `/readyz` and
//! turns the answer into an exit code, for container runtimes that can only
//! run a command (Docker Compose's `healthcheck`: the distroless image has
//! no shell and no `curl`).
//!
//! It reaches the daemon where `http.listen` says it listens: an
//! unspecified address (`0.0.0.0`, `::`) becomes the loopback address of
//! its family, anything else is asked as it is. The whole request is
//! bounded by [`TIMEOUT`], well inside any sensible probe interval, so a
//! daemon that accepts but never answers fails the check instead of
//! hanging it. No proxy from the environment is consulted: the daemon is
//! on this host.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use reqwest::StatusCode;

use super::CommandError;
use crate::config::Settings;

/// The longest the check waits for the daemon, connecting included.
pub const TIMEOUT: Duration = Duration::from_secs(3);

/// Why the daemon is not reported ready. `Display` is the one line the
/// command prints.
#[derive(Debug, thiserror::Error)]
pub enum HealthcheckError {
    #[error("not ready: {url} answered {status}")]
    NotReady { url: String, status: u16 },
    #[error("not ready: {url} did not answer within {} s", TIMEOUT.as_secs())]
    Timeout { url: String },
    #[error("not ready: nothing answered at {url}")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("could not build the HTTP client")]
    Client(#[source] reqwest::Error),
}

/// The command. It starts no telemetry: a probe run every few seconds must
/// not log or export. Its only output is the error line when not ready.
pub async fn run(settings: &Settings) -> Result<(), CommandError> {
    Ok(check(settings.http.listen).await?)
}

/// The `/readyz` URL of a daemon listening on `listen`.
pub fn readyz_url(listen: SocketAddr) -> String {
    let host = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    format!("http://{}/readyz", SocketAddr::new(host, listen.port()))
}

/// `Ok` when the daemon listening on `listen` answers `/readyz` with 200.
pub async fn check(listen: SocketAddr) -> Result<(), HealthcheckError> {
    let url = readyz_url(listen);
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(TIMEOUT)
        .connect_timeout(TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(HealthcheckError::Client)?;
    let response = client.get(&url).send().await.map_err(|error| {
        if error.is_timeout() {
            HealthcheckError::Timeout { url: url.clone() }
        } else {
            HealthcheckError::Unreachable {
                url: url.clone(),
                source: error.without_url(),
            }
        }
    })?;
    match response.status() {
        StatusCode::OK => Ok(()),
        status => Err(HealthcheckError::NotReady {
            url,
            status: status.as_u16(),
        }),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn an_unspecified_listen_address_is_asked_on_the_loopback_of_its_family() {
        let url = |listen: &str| readyz_url(listen.parse().unwrap());
        assert_eq!(url("0.0.0.0:9090"), "http://127.0.0.1:9090/readyz");
        assert_eq!(url("[::]:9090"), "http://[::1]:9090/readyz");
        assert_eq!(url("10.1.2.3:8080"), "http://10.1.2.3:8080/readyz");
        assert_eq!(url("[fd00::7]:9090"), "http://[fd00::7]:9090/readyz");
    }
}
