//! The listener's connections: each served by hyper on a task of its own,
//! with a deadline for its request headers, and at most
//! [`MAX_CONNECTIONS`] open at once.
//!
//! A client that connects and never completes a request costs the daemon
//! a file descriptor for as long as the connection stays open; enough of
//! them took every descriptor the process had, and charges failed for
//! want of a socket. Two limits bound them. hyper closes a connection whose
//! request headers have not all arrived [`HEADER_READ_TIMEOUT`] after it
//! began to wait for them (on a kept-alive connection, after the previous
//! answer). And once [`MAX_CONNECTIONS`] are open, each new connection
//! closes the oldest one that is not inside a request; only when every open
//! connection is inside a request is the new one closed at once. Closing
//! the oldest idle connection rather than refusing the newest is what keeps
//! `/readyz` answering the kubelet during a flood: a probe sends its request
//! as soon as it connects and cannot be closed once inside it, while the
//! flood's connections, which never complete a request, are the ones
//! closed.

use std::collections::BTreeMap;
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::Router;
use hyper::server::conn::http1;
use hyper::service::Service as _;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// How long a client has to send a request's headers.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// The most connections open at once: far below any file-descriptor limit
/// a container gets, far above what probes and a scraper need.
pub const MAX_CONNECTIONS: usize = 1024;
/// The listener says it is at its cap at most this often.
const AT_CAP_LOG_EVERY: Duration = Duration::from_secs(60);

/// The open connections, oldest first; cheap to clone.
#[derive(Clone, Default)]
pub(super) struct Connections {
    open: Arc<Mutex<Registry>>,
}

#[derive(Default)]
struct Registry {
    next: u64,
    /// By the order they were accepted in.
    open: BTreeMap<u64, Entry>,
}

struct Entry {
    close: CancellationToken,
    in_request: Arc<AtomicUsize>,
}

/// What a new connection gets.
pub(super) enum Admission {
    /// A place among the open connections.
    Admitted(Slot),
    /// A place, taken from the oldest connection that was not inside a
    /// request, which is being closed.
    ClosedOldest(Slot),
    /// None: every open connection is inside a request.
    Full,
}

/// A connection's place among the open ones; dropping it frees the place.
pub(super) struct Slot {
    id: u64,
    /// Cancelled when a newer connection takes the place.
    close: CancellationToken,
    /// Requests of this connection between their headers and their answer.
    in_request: Arc<AtomicUsize>,
    connections: Connections,
}

impl Connections {
    fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        // The registry is consistent after every statement: a panic while
        // it was held leaves nothing half done.
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Finds a place for a new connection, closing the oldest idle one
    /// when all places are taken.
    pub fn admit(&self) -> Admission {
        let mut registry = self.registry();
        let mut closed_oldest = false;
        if registry.open.len() >= MAX_CONNECTIONS {
            let oldest_idle = registry
                .open
                .iter()
                .find(|(_, entry)| entry.in_request.load(Ordering::Acquire) == 0)
                .map(|(id, _)| *id);
            let Some(entry) = oldest_idle.and_then(|id| registry.open.remove(&id)) else {
                return Admission::Full;
            };
            entry.close.cancel();
            closed_oldest = true;
        }
        let id = registry.next;
        registry.next = id.wrapping_add(1);
        let entry = Entry {
            close: CancellationToken::new(),
            in_request: Arc::default(),
        };
        let slot = Slot {
            id,
            close: entry.close.clone(),
            in_request: Arc::clone(&entry.in_request),
            connections: self.clone(),
        };
        registry.open.insert(id, entry);
        if closed_oldest {
            Admission::ClosedOldest(slot)
        } else {
            Admission::Admitted(slot)
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.registry().open.len()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.connections.registry().open.remove(&self.id);
    }
}

/// Counts a request of a connection from its headers to its answer.
struct InRequest(Arc<AtomicUsize>);

impl InRequest {
    fn enter(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::AcqRel);
        Self(Arc::clone(count))
    }
}

impl Drop for InRequest {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Serves one connection until it ends, a newer connection takes its place,
/// or `stop` is cancelled: then a request in progress is answered and the
/// connection closed; one with no request in progress is closed at once.
pub(super) async fn serve(stream: TcpStream, router: Router, slot: Slot, stop: CancellationToken) {
    let in_request = Arc::clone(&slot.in_request);
    let service = TowerToHyperService::new(router);
    let service = hyper::service::service_fn(move |request| {
        let counted = InRequest::enter(&in_request);
        let answer = service.call(request);
        async move {
            let answer = answer.await;
            drop(counted);
            answer
        }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let mut connection = pin!(builder.serve_connection(TokioIo::new(stream), service));
    tokio::select! {
        served = connection.as_mut() => return ended(served),
        () = slot.close.cancelled() => return,
        () = stop.cancelled() => {}
    }
    if slot.in_request.load(Ordering::Acquire) == 0 {
        return;
    }
    connection.as_mut().graceful_shutdown();
    tokio::select! {
        served = connection => ended(served),
        () = slot.close.cancelled() => {}
    }
}

/// A connection that ends in an error was the client's doing (headers too
/// slow or malformed, a reset): worth a debug line, not a warning.
fn ended(served: Result<(), hyper::Error>) {
    if let Err(error) = served {
        tracing::debug!(%error, "HTTP connection closed");
    }
}

/// Says, at most once a minute, that the listener is at its cap, with how
/// many connections it closed for it since it last said so.
#[derive(Default)]
pub(super) struct AtCap {
    said: Option<Instant>,
    closed_oldest: u64,
    refused: u64,
}

impl AtCap {
    pub fn note(&mut self, admission: &Admission) {
        match admission {
            Admission::Admitted(_) => return,
            Admission::ClosedOldest(_) => self.closed_oldest = self.closed_oldest.saturating_add(1),
            Admission::Full => self.refused = self.refused.saturating_add(1),
        }
        if self
            .said
            .is_some_and(|said| said.elapsed() < AT_CAP_LOG_EVERY)
        {
            return;
        }
        tracing::warn!(
            max_connections = MAX_CONNECTIONS,
            closed_oldest_idle = self.closed_oldest,
            refused_all_busy = self.refused,
            "the HTTP listener is at its cap of open connections: each new one closes the \
             oldest connection that is not inside a request (a client is opening connections \
             it does not use?)"
        );
        *self = Self {
            said: Some(Instant::now()),
            closed_oldest: 0,
            refused: 0,
        };
    }
}

#[cfg(test)]
#[allow(clippy::panic)]
mod tests {
    use super::*;

    fn admitted(admission: Admission) -> Slot {
        match admission {
            Admission::Admitted(slot) | Admission::ClosedOldest(slot) => slot,
            Admission::Full => panic!("no place"),
        }
    }

    #[test]
    fn beyond_the_cap_a_new_connection_closes_the_oldest_idle_one() {
        let connections = Connections::default();
        let mut slots: Vec<Slot> = (0..MAX_CONNECTIONS)
            .map(|_| match connections.admit() {
                Admission::Admitted(slot) => slot,
                _ => panic!("below the cap every connection is admitted"),
            })
            .collect();
        // The oldest two are inside a request: the third oldest goes.
        let busy: Vec<InRequest> = slots
            .iter()
            .take(2)
            .map(|slot| InRequest::enter(&slot.in_request))
            .collect();
        let Admission::ClosedOldest(newest) = connections.admit() else {
            panic!("at the cap a new connection closes an old one");
        };
        assert!(!slots.first().is_some_and(|s| s.close.is_cancelled()));
        assert!(!slots.get(1).is_some_and(|s| s.close.is_cancelled()));
        assert!(slots.get(2).is_some_and(|s| s.close.is_cancelled()));
        assert!(!newest.close.is_cancelled());
        assert_eq!(connections.len(), MAX_CONNECTIONS);

        // The closed connection's task ends and drops its slot: no double count.
        drop(slots.remove(2));
        assert_eq!(connections.len(), MAX_CONNECTIONS);
        drop(busy);
        slots.push(newest);
    }

    #[test]
    fn when_every_connection_is_inside_a_request_a_new_one_is_refused() {
        let connections = Connections::default();
        let slots: Vec<Slot> = (0..MAX_CONNECTIONS)
            .map(|_| admitted(connections.admit()))
            .collect();
        let busy: Vec<InRequest> = slots
            .iter()
            .map(|slot| InRequest::enter(&slot.in_request))
            .collect();
        assert!(matches!(connections.admit(), Admission::Full));
        assert!(slots.iter().all(|slot| !slot.close.is_cancelled()));

        // Once a request is answered, its connection may give its place.
        drop(busy);
        assert!(matches!(connections.admit(), Admission::ClosedOldest(_)));
    }

    #[test]
    fn a_closed_connection_frees_its_place() {
        let connections = Connections::default();
        let slot = admitted(connections.admit());
        assert_eq!(connections.len(), 1);
        drop(slot);
        assert_eq!(connections.len(), 0);
    }
}
