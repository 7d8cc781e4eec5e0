//! Outages switched on and off while the simulator runs, for tests and demos of how
//! a client rides out a provider that is down.
//!
//! `POST /admin/outage` with `mode=503|refuse|off` (in the query string or as a
//! form body) and, for `503`, an optional `retry_after=SECONDS`:
//! - `503`: every charge is answered 503 (with `Retry-After` when given); nothing is
//!   recorded. Counted as `outage` in `/stats`.
//! - `refuse`: the charge listener is closed, so that new connections are refused
//!   (ECONNREFUSED), and keep-alive connections are closed without an answer to any
//!   request sent on them from then on; a request already being processed is still
//!   answered. When the outage ends the listener opens again
//!   on the same address. This needs `--admin-listen`: the admin routes must stay
//!   reachable while the charge port is closed. Without it, `refuse` is answered 409.
//! - `off`: back to normal.
//!
//! The answer comes once the switch took effect (the port closed or open again), so a
//! test can act on it at once. `GET /admin/outage` shows the current mode.
//!
//! The charge path reads the mode with one atomic load per request.

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Serialize;
use tokio::sync::watch;

use crate::api::App;
use crate::reply::{Reply, json, to_json};

/// The longest an admin request waits for the charge listener to close or reopen.
const SWITCH_TIMEOUT: Duration = Duration::from_secs(5);
/// An admin request body is a few bytes of form parameters.
const MAX_ADMIN_BODY: usize = 1024;
/// `retry_after` is stored in an atomic; this marks "none".
const NO_RETRY_AFTER: u64 = u64::MAX;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Off = 0,
    Unavailable = 1,
    Refuse = 2,
}

impl Mode {
    fn parse(value: &str) -> Option<Self> {
        match value {
            "off" => Some(Self::Off),
            "503" => Some(Self::Unavailable),
            "refuse" => Some(Self::Refuse),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::Unavailable => "503",
            Self::Refuse => "refuse",
        }
    }
}

/// The outage in force, shared by the charge handler, the admin handler and the
/// charge listener's loop ([`crate::serve`]).
pub struct Outage {
    /// The [`Mode`] as a number: what the charge handler reads.
    mode: AtomicU8,
    /// The `Retry-After` seconds of a `503` outage, or [`NO_RETRY_AFTER`].
    retry_after: AtomicU64,
    /// Whether `refuse` is possible: the admin routes have a listener of their own.
    can_refuse: bool,
    /// Every switch, for the charge listener's loop to follow.
    changes: watch::Sender<Mode>,
    /// Whether the charge listener is open; set by that listener's loop, awaited by
    /// the admin handler.
    listening: watch::Sender<bool>,
}

impl Outage {
    pub fn new(can_refuse: bool) -> Self {
        Self {
            mode: AtomicU8::new(Mode::Off as u8),
            retry_after: AtomicU64::new(NO_RETRY_AFTER),
            can_refuse,
            changes: watch::Sender::new(Mode::Off),
            listening: watch::Sender::new(false),
        }
    }

    /// The answer to a charge during a `503` outage; `None` otherwise.
    pub fn reply(&self) -> Option<Reply> {
        if self.mode.load(Ordering::Acquire) != Mode::Unavailable as u8 {
            return None;
        }
        let retry_after = self.retry_after.load(Ordering::Relaxed);
        Some(Reply::Outage(
            (retry_after != NO_RETRY_AFTER).then_some(retry_after),
        ))
    }

    /// Whether a `refuse` outage is in force: read on every read of a charge
    /// connection.
    pub fn is_refusing(&self) -> bool {
        self.mode.load(Ordering::Acquire) == Mode::Refuse as u8
    }

    /// Resolves once a `refuse` outage is in force (at once if it is).
    pub async fn refusing(&self) {
        self.wait_mode(|mode| mode == Mode::Refuse).await;
    }

    /// Resolves once no `refuse` outage is in force (at once if none is).
    pub async fn accepting(&self) {
        self.wait_mode(|mode| mode != Mode::Refuse).await;
    }

    async fn wait_mode(&self, wanted: impl Fn(Mode) -> bool) {
        let mut changes = self.changes.subscribe();
        // The sender lives as long as `self`, so this only fails if it never happens.
        if changes.wait_for(|mode| wanted(*mode)).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Reports whether the charge listener is open.
    pub fn set_listening(&self, open: bool) {
        self.listening.send_replace(open);
    }

    /// Puts `mode` in force and waits until the charge listener follows it.
    async fn switch(&self, mode: Mode, retry_after: Option<u64>) -> Result<(), SwitchError> {
        if mode == Mode::Refuse && !self.can_refuse {
            return Err(SwitchError::NeedsAdminListener);
        }
        self.retry_after
            .store(retry_after.unwrap_or(NO_RETRY_AFTER), Ordering::Relaxed);
        self.mode.store(mode as u8, Ordering::Release);
        self.changes.send_replace(mode);
        let open = mode != Mode::Refuse;
        let mut listening = self.listening.subscribe();
        match tokio::time::timeout(SWITCH_TIMEOUT, listening.wait_for(|is| *is == open)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) | Err(_) => Err(SwitchError::ListenerLate { open }),
        }
    }

    fn view(&self) -> OutageView {
        let mode = match self.mode.load(Ordering::Acquire) {
            1 => Mode::Unavailable,
            2 => Mode::Refuse,
            _ => Mode::Off,
        };
        let retry_after = self.retry_after.load(Ordering::Relaxed);
        OutageView {
            mode: mode.name(),
            retry_after: (mode == Mode::Unavailable && retry_after != NO_RETRY_AFTER)
                .then_some(retry_after),
            listening: *self.listening.borrow(),
        }
    }
}

enum SwitchError {
    NeedsAdminListener,
    ListenerLate { open: bool },
}

#[derive(Serialize)]
struct OutageView {
    mode: &'static str,
    retry_after: Option<u64>,
    /// Whether the charge listener is open.
    listening: bool,
}

/// `GET /admin/outage`.
pub async fn show(State(app): State<&'static App>) -> Response {
    to_json(StatusCode::OK, &app.outage().view())
}

/// `POST /admin/outage`.
pub async fn switch(State(app): State<&'static App>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let Ok(body) = axum::body::to_bytes(body, MAX_ADMIN_BODY).await else {
        return bad_request("the body must be a short form: mode=503|refuse|off");
    };
    let form = std::str::from_utf8(&body).unwrap_or_default();
    let (mode, retry_after) = match parse(parts.uri.query().unwrap_or_default(), form) {
        Ok(parsed) => parsed,
        Err(message) => return bad_request(message),
    };
    let outage = app.outage();
    match outage.switch(mode, retry_after).await {
        Ok(()) => to_json(StatusCode::OK, &outage.view()),
        Err(SwitchError::NeedsAdminListener) => json(
            StatusCode::CONFLICT,
            r#"{"error":"needs_admin_listener","message":"mode=refuse closes the charge port; start payment-sim with --admin-listen to use it"}"#,
        ),
        Err(SwitchError::ListenerLate { open: true }) => json(
            StatusCode::SERVICE_UNAVAILABLE,
            r#"{"error":"not_listening_yet","message":"the charge address could not be listened on again yet; still trying"}"#,
        ),
        Err(SwitchError::ListenerLate { open: false }) => json(
            StatusCode::SERVICE_UNAVAILABLE,
            r#"{"error":"still_listening","message":"the charge listener has not closed yet"}"#,
        ),
    }
}

/// `mode` and `retry_after` from the query string and the form body (the body wins).
fn parse(query: &str, form: &str) -> Result<(Mode, Option<u64>), &'static str> {
    let mut mode = None;
    let mut retry_after = None;
    let pairs = query.split('&').chain(form.trim().split('&'));
    for (name, value) in pairs.filter_map(|pair| pair.split_once('=')) {
        match name {
            "mode" => {
                mode = Some(Mode::parse(value).ok_or("mode must be 503, refuse or off")?);
            }
            "retry_after" => {
                let seconds = value.parse::<u64>().ok().filter(|s| *s < NO_RETRY_AFTER);
                retry_after = Some(seconds.ok_or("retry_after must be whole seconds")?);
            }
            _ => return Err("the parameters are mode and retry_after"),
        }
    }
    let mode = mode.ok_or("mode=503|refuse|off is required")?;
    if retry_after.is_some() && mode != Mode::Unavailable {
        return Err("retry_after goes with mode=503 only");
    }
    Ok((mode, retry_after))
}

fn bad_request(message: &'static str) -> Response {
    to_json(
        StatusCode::BAD_REQUEST,
        &serde_json::json!({ "error": "bad_request", "message": message }),
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_mode_comes_from_the_query_or_the_form() {
        assert_eq!(parse("mode=503", "").unwrap(), (Mode::Unavailable, None));
        assert_eq!(
            parse("", "mode=503&retry_after=7\n").unwrap(),
            (Mode::Unavailable, Some(7))
        );
        assert_eq!(parse("mode=503", "mode=off").unwrap(), (Mode::Off, None));
        assert_eq!(parse("mode=refuse", "").unwrap(), (Mode::Refuse, None));
        assert!(parse("", "").is_err());
        assert!(parse("mode=down", "").is_err());
        assert!(parse("mode=off&retry_after=3", "").is_err());
        assert!(parse("mode=503&retry_after=soon", "").is_err());
        assert!(parse("mode=503&colour=red", "").is_err());
    }
}
