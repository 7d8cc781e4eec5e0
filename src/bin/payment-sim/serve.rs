//! The listeners, and how they stop.
//!
//! The charge listener is served by one `axum::serve` per period in which it is open:
//! a `refuse` outage ([`crate::outage`]) ends the period with a graceful shutdown, which
//! closes the listening socket at once (new connections are refused) and closes idle
//! keep-alive connections, while requests already being processed are answered; when
//! the outage ends the same address is listened on again. A request that reaches an
//! old keep-alive connection during the outage, before the graceful shutdown closed
//! it, finds the connection at its end ([`Gated`]): it is closed without an answer. The admin listener, when
//! there is one, is served throughout. On SIGTERM or SIGINT ([`Signals`]) every server
//! shuts down gracefully, and open requests get a bounded time to finish.

use std::future::IntoFuture as _;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::outage::Outage;

/// How long to wait before trying again to listen on the charge address after a
/// `refuse` outage, when something else holds it.
const REBIND_PAUSE: Duration = Duration::from_millis(100);

/// The servers of one process.
pub struct Servers {
    pub api: TcpListener,
    pub api_router: Router,
    pub admin: Option<(TcpListener, Router)>,
    pub outage: &'static Outage,
}

/// How the servers ended.
pub enum Ended {
    /// Every connection closed within the grace period.
    Drained,
    /// Some were still open when the grace period ran out, and were dropped.
    GraceElapsed,
}

impl Servers {
    /// Serves until `stop` turns true, then waits up to `grace` for open requests.
    pub async fn run(self, stop: watch::Receiver<bool>, grace: Duration) -> Ended {
        let mut servers = JoinSet::new();
        if let Some((listener, router)) = self.admin {
            let server =
                axum::serve(Tapped(listener), router).with_graceful_shutdown(stopped(stop.clone()));
            servers.spawn(server.into_future());
        }
        serve_api(self.api, self.api_router, self.outage, &stop, &mut servers).await;
        let drained = async {
            while let Some(joined) = servers.join_next().await {
                // axum's servers handle accept errors themselves and return only `Ok`;
                // a task that panicked or failed is reported and the others awaited.
                match joined {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::error!("server failed: {e}"),
                    Err(e) => tracing::error!("server task failed: {e}"),
                }
            }
        };
        match tokio::time::timeout(grace, drained).await {
            Ok(()) => Ended::Drained,
            Err(_) => Ended::GraceElapsed,
        }
    }
}

/// Serves the charge listener until `stop`, closing it for `refuse` outages and
/// listening again on the same address after them. Each open period's server is a
/// task of `servers`, which drains after the period ends.
async fn serve_api(
    listener: TcpListener,
    router: Router,
    outage: &'static Outage,
    stop: &watch::Receiver<bool>,
    servers: &mut JoinSet<io::Result<()>>,
) {
    let address = match listener.local_addr() {
        Ok(address) => address,
        Err(e) => {
            tracing::error!("cannot read the charge listener's address: {e}");
            return;
        }
    };
    let mut listener = Some(listener);
    loop {
        let open = match listener.take() {
            Some(open) => open,
            None => match listen_again(address, stop).await {
                Some(open) => open,
                None => return,
            },
        };
        outage.set_listening(true);
        let period_ends = {
            let stop = stop.clone();
            async move {
                tokio::select! {
                    () = outage.refusing() => {}
                    () = stopped(stop) => {}
                }
            }
        };
        let server = axum::serve(
            Closing {
                inner: Some(open),
                outage,
            },
            router.clone(),
        )
        .with_graceful_shutdown(period_ends);
        servers.spawn(server.into_future());
        tokio::select! {
            () = outage.refusing() => {}
            () = stopped(stop.clone()) => return,
        }
        tracing::info!(%address, "refuse outage: no longer listening");
        tokio::select! {
            () = outage.accepting() => {}
            () = stopped(stop.clone()) => return,
        }
        tracing::info!(%address, "refuse outage over: listening again");
    }
}

/// Binds `address` again, retrying while something else holds it; `None` if stopped
/// meanwhile.
async fn listen_again(address: SocketAddr, stop: &watch::Receiver<bool>) -> Option<TcpListener> {
    let mut warned = false;
    loop {
        match TcpListener::bind(address).await {
            Ok(listener) => return Some(listener),
            Err(e) if !warned => {
                tracing::warn!(%address, "cannot listen again yet, retrying: {e}");
                warned = true;
            }
            Err(_) => {}
        }
        tokio::select! {
            () = tokio::time::sleep(REBIND_PAUSE) => {}
            () = stopped(stop.clone()) => return None,
        }
    }
}

/// Resolves once a stop was requested. If the sender is dropped without a request
/// (it is not), it never resolves rather than stopping the server by mistake.
pub async fn stopped(mut rx: watch::Receiver<bool>) {
    if rx.wait_for(|stop| *stop).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Without TCP_NODELAY a reply that leaves in two writes can stall ~40 ms behind
/// the client's delayed ACK (Nagle), which would dominate a microsecond replay.
fn accepted(stream: &TcpStream) {
    // Ignored: without it a connection is slower, not wrong.
    let _ = stream.set_nodelay(true);
}

/// A listener with TCP_NODELAY on every connection.
struct Tapped(TcpListener);

impl axum::serve::Listener for Tapped {
    type Io = TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (stream, peer) = axum::serve::Listener::accept(&mut self.0).await;
        accepted(&stream);
        (stream, peer)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

/// The charge listener of one open period: reports itself closed when the server
/// drops it, which `axum::serve` does as soon as its graceful shutdown begins.
struct Closing {
    /// Always `Some` until dropped: taken in `drop` to close the socket before the
    /// closure is reported.
    inner: Option<TcpListener>,
    outage: &'static Outage,
}

impl axum::serve::Listener for Closing {
    type Io = Gated;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let Some(inner) = self.inner.as_mut() else {
            return std::future::pending().await;
        };
        let (stream, peer) = axum::serve::Listener::accept(inner).await;
        accepted(&stream);
        let gated = Gated {
            stream,
            outage: self.outage,
        };
        (gated, peer)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        match &self.inner {
            Some(inner) => inner.local_addr(),
            None => Err(io::ErrorKind::NotConnected.into()),
        }
    }
}

impl Drop for Closing {
    fn drop(&mut self) {
        drop(self.inner.take());
        self.outage.set_listening(false);
    }
}

/// A charge connection that reads as ended while a `refuse` outage is in force, so
/// that the server closes it without answering what was sent on it. One atomic load
/// per read.
pub struct Gated {
    stream: TcpStream,
    outage: &'static Outage,
}

impl AsyncRead for Gated {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.outage.is_refusing() {
            // Nothing read: the end of the stream.
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Gated {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// SIGTERM and SIGINT, registered eagerly (see `run`).
pub struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl Signals {
    pub fn install() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Self {
                term: signal(SignalKind::terminate())?,
                int: signal(SignalKind::interrupt())?,
            })
        }
        #[cfg(not(unix))]
        {
            Ok(Self {})
        }
    }

    pub async fn wait(mut self) {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.term.recv() => {}
                _ = self.int.recv() => {}
            }
        }
        #[cfg(not(unix))]
        {
            if tokio::signal::ctrl_c().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}
