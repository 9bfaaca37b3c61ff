//! The HTTP server of `sluice serve`: the accept loop, HTTP/1 and HTTP/2 (h2c) on each
//! connection, and the limits that keep a hostile client from exhausting the process.
//!
//! `axum::serve` has no deadlines and no connection cap: a client that opens sockets and never
//! finishes a request holds a file descriptor each for as long as it likes, and once the
//! process runs out of descriptors nothing is accepted, `/health` included. Here:
//!
//! - **Connection cap** ([`Limits::max_connections`], held to what the file-descriptor limit
//!   allows, [`connections_allowed_by`]). At the cap a new connection closes the connection
//!   that has *waited* longest — accepted or kept alive with no request in flight, which is
//!   what half-sent requests and idle keep-alives look like — and takes its place, so a flood
//!   of stalled sockets cannot lock real clients out for even one header timeout. Connections
//!   with a request in flight are never closed for room; when every connection has one, the
//!   server stops accepting until one finishes (new clients wait in the listen backlog).
//! - **Header deadline**: a connection's first request head must be complete
//!   [`Limits::header_read`] after it is accepted; a later one, that long after its first
//!   byte. Else the connection is closed (no answer: the client has not asked anything yet).
//! - **Idle deadline**: a kept-alive connection with no request for [`Limits::idle`] is closed.
//! - **Body deadline**: a request's body must be complete [`Limits::body_read`] after its
//!   head; else reading it fails with [`BodyTimedOut`], which the API answers with 408, and
//!   the connection is closed after that answer.
//!
//! One registry, one lock, holds each connection's state; a watchdog per connection sleeps
//! until its next deadline. A connection closed while the tail of its last answer still waits
//! for a slow reader's window gets up to one header deadline to finish writing it. Evicted
//! sockets still closing are bounded (`MAX_CLOSING`), and the listen backlog is deep
//! ([`bind`]), so a burst of connections waits instead of running the process out of
//! descriptors or losing SYNs. Accept errors (e.g. `EMFILE` if descriptors run out for
//! another reason) pause accepting for 100 ms instead of spinning or ending the server.
//! On shutdown the server stops accepting, lets every connection finish its requests
//! (hyper's graceful shutdown; the deadlines still apply), then returns.

use std::collections::{BTreeSet, HashMap};
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderValue, Request, Response, header};
use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tokio::time::{Instant, Sleep};

use crate::config::ServerConfig;

/// Descriptors kept for everything but client connections: stdio, the listener, the SQLite
/// files, the log file, the runtime's own.
pub const RESERVED_FDS: u64 = 64;

/// Evicted connections whose sockets may still be open at once. Eviction only marks a
/// connection; its own task closes the socket. Without this bound a burst of new connections
/// (the accept loop runs ahead of the victims' tasks) holds more sockets than the cap allows
/// for, and the process runs out of descriptors after all (the flood test saw `EMFILE`).
const MAX_CLOSING: usize = 32;

/// Connections the kernel queues for `accept` (std's and mio's default is 128). While the
/// accept loop waits for evicted connections to close, a burst of new ones waits here instead
/// of having its SYNs dropped (which costs a client a 1 s retransmission).
const LISTEN_BACKLOG: u32 = 1024;

/// How long accepting pauses after an error that is not about one connection (`EMFILE`…).
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// The limits the server holds every connection to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// A request head must be complete this long after the connection was accepted (first
    /// request) or after its first byte (later requests).
    pub header_read: Duration,
    /// A request body must be complete this long after its head.
    pub body_read: Duration,
    /// A kept-alive connection with no request for this long is closed.
    pub idle: Duration,
    /// Most connections open at once.
    pub max_connections: usize,
}

impl Limits {
    /// The limits of `[server]` in the config.
    pub fn from_config(server: &ServerConfig) -> Self {
        // Validated: finite, positive, at most a day.
        let secs = |s: f64| Duration::try_from_secs_f64(s).unwrap_or(Duration::from_secs(86_400));
        Self {
            header_read: secs(server.header_read_timeout_s),
            body_read: secs(server.body_read_timeout_s),
            idle: secs(server.idle_timeout_s),
            max_connections: server.max_connections.max(1),
        }
    }

    /// These limits with `max_connections` held to what `fd_limit` descriptors allow.
    pub fn within_fd_limit(self, fd_limit: u64) -> Self {
        Self {
            max_connections: self.max_connections.min(connections_allowed_by(fd_limit)),
            ..self
        }
    }
}

/// Connections a process with `fd_limit` descriptors can hold: each may need a second
/// descriptor for its upstream call, and [`RESERVED_FDS`] are kept for the rest.
pub fn connections_allowed_by(fd_limit: u64) -> usize {
    let allowed = (fd_limit.saturating_sub(RESERVED_FDS) / 2).max(1);
    usize::try_from(allowed).unwrap_or(usize::MAX)
}

/// Reading a request body did not finish within [`Limits::body_read`].
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the request body did not arrive in time")]
pub struct BodyTimedOut;

/// Whether `error`, or any error it was caused by, is [`BodyTimedOut`] (how a handler tells a
/// body that timed out from one that broke off).
pub fn body_timed_out(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(e) = next {
        if e.is::<BodyTimedOut>() {
            return true;
        }
        next = e.source();
    }
    false
}

/// A listener on `addr` with a `LISTEN_BACKLOG`-deep (1024) accept queue.
pub fn bind(addr: std::net::SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // As `TcpListener::bind` does: a restarted server can bind at once.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Serves `app` on `listener` within `limits` until `shutdown` completes, then lets open
/// connections finish their requests and returns.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send,
) {
    let registry = Arc::new(Registry::new(limits.max_connections));
    let (stop, stopping) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(e) if is_about_one_connection(&e) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot accept connections; pausing");
                    tokio::select! {
                        () = tokio::time::sleep(ACCEPT_PAUSE) => continue,
                        () = &mut shutdown => break,
                    }
                }
            },
            () = &mut shutdown => break,
        };
        let admitted = loop {
            let room = registry.room.notified();
            if let Some(conn) = registry.admit(Instant::now()) {
                break Some(conn);
            }
            tokio::select! {
                () = room => {}
                () = &mut shutdown => break None,
            }
        };
        let Some(conn) = admitted else {
            break;
        };
        // Small writes (event-stream chunks) go out at once rather than after an ACK.
        let _ = stream.set_nodelay(true);
        tokio::spawn(serve_connection(
            stream,
            app.clone(),
            Arc::clone(&registry),
            conn,
            limits,
            stopping.clone(),
        ));
    }
    drop(listener);
    let _ = stop.send(true);
    registry.drained().await;
}

/// Accept errors that concern only the connection being accepted.
fn is_about_one_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// Why the server closed a connection itself.
#[derive(Debug, Clone, Copy)]
enum Closed {
    /// Its request head did not arrive in time.
    HeaderTimeout,
    /// No request came for the idle time.
    Idle,
    /// Another connection needed its place.
    Evicted,
}

impl Closed {
    fn as_str(self) -> &'static str {
        match self {
            Self::HeaderTimeout => "header_timeout",
            Self::Idle => "idle",
            Self::Evicted => "evicted",
        }
    }
}

/// Serves one connection until it ends, a deadline passes, or it is evicted.
async fn serve_connection(
    stream: TcpStream,
    app: Router,
    registry: Arc<Registry>,
    conn: Arc<ConnHandle>,
    limits: Limits,
    mut stopping: watch::Receiver<bool>,
) {
    let _registered = Registered {
        registry: Arc::clone(&registry),
        id: conn.id,
    };
    let io = TokioIo::new(Watched {
        inner: stream,
        conn: Arc::clone(&conn),
        registry: Arc::clone(&registry),
    });
    let app = TowerToHyperService::new(app);
    let service_registry = Arc::clone(&registry);
    let id = conn.id;
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        // Counted from here; the count drops when the answer's body is done or dropped.
        let in_flight = InFlight::start(Arc::clone(&service_registry), id);
        let app = app.clone();
        async move { Ok::<_, Infallible>(answer(&app, request, limits, in_flight).await) }
    });
    let builder = auto::Builder::new(TokioExecutor::new());
    let connection = builder.serve_connection(io, service);
    tokio::pin!(connection);
    let watchdog = watchdog(&registry, &conn, limits);
    tokio::pin!(watchdog);
    let mut draining = *stopping.borrow();
    if draining {
        connection.as_mut().graceful_shutdown();
    }
    loop {
        tokio::select! {
            served = connection.as_mut() => {
                if let Err(e) = served {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            closed = &mut watchdog => {
                tracing::debug!(reason = closed.as_str(), "connection closed by the server");
                if conn.write_pending.load(Ordering::Acquire) {
                    // The tail of the last answer is still on its way to a slow reader: let
                    // hyper finish it and close, within one header deadline.
                    connection.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(limits.header_read, connection.as_mut()).await;
                }
                return;
            }
            _ = stopping.changed(), if !draining => {
                draining = true;
                connection.as_mut().graceful_shutdown();
            }
        }
    }
}

/// Runs one request through the app, its body held to the body deadline.
async fn answer(
    app: &TowerToHyperService<Router>,
    request: Request<Incoming>,
    limits: Limits,
    in_flight: InFlight,
) -> Response<Tracked> {
    use hyper::service::Service;
    let timed_out = Arc::new(AtomicBool::new(false));
    let deadline = Instant::now() + limits.body_read;
    let request = request.map(|body| {
        axum::body::Body::new(Deadline {
            inner: body,
            deadline,
            sleep: None,
            timed_out: Arc::clone(&timed_out),
            expired: false,
        })
    });
    let response = match app.call(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    };
    let (mut parts, body) = response.into_parts();
    if timed_out.load(Ordering::Relaxed) {
        // The rest of the body may still be on its way: the connection cannot be reused.
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    Response::from_parts(
        parts,
        Tracked {
            body,
            _in_flight: in_flight,
        },
    )
}

/// A request body that fails with [`BodyTimedOut`] once its deadline passes.
struct Deadline {
    inner: Incoming,
    deadline: Instant,
    /// Made at the first wait: a body that is already there (or absent) needs no timer.
    sleep: Option<Pin<Box<Sleep>>>,
    timed_out: Arc<AtomicBool>,
    expired: bool,
}

impl Body for Deadline {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if this.expired {
            return Poll::Ready(None);
        }
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let deadline = this.deadline;
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if sleep.as_mut().poll(cx).is_ready() {
            this.expired = true;
            this.timed_out.store(true, Ordering::Relaxed);
            return Poll::Ready(Some(Err(Box::new(BodyTimedOut))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.expired || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// An answer's body, holding its request's place in the in-flight count until it is done.
struct Tracked {
    body: axum::body::Body,
    _in_flight: InFlight,
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// One request in flight on a connection; dropping it ends the request.
struct InFlight {
    registry: Arc<Registry>,
    id: u64,
}

impl InFlight {
    fn start(registry: Arc<Registry>, id: u64) -> Self {
        registry.request_started(id);
        Self { registry, id }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.registry.request_ended(self.id, Instant::now());
    }
}

/// A connection's place in the registry; dropping it (the connection's task ending) frees it.
struct Registered {
    registry: Arc<Registry>,
    id: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.registry.remove(self.id);
    }
}

/// What a connection's task and socket share outside the registry's lock.
struct ConnHandle {
    id: u64,
    /// Set while the connection waits for a request and no byte of one has come: the next
    /// read records the first byte (it starts the header deadline).
    watch_first_byte: AtomicBool,
    /// Wakes the connection's watchdog when its deadline may have moved.
    wake: Notify,
    /// Whether the socket last refused a write (its send buffer is full): bytes of an answer
    /// are still waiting to go out, so the connection is not closed outright.
    write_pending: AtomicBool,
}

/// The socket of a connection, noting when the first byte of a request arrives.
struct Watched {
    inner: TcpStream,
    conn: Arc<ConnHandle>,
    registry: Arc<Registry>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before && self.conn.watch_first_byte.swap(false, Ordering::AcqRel) {
            self.registry.first_byte(self.conn.id, Instant::now());
        }
        polled
    }
}

impl Watched {
    /// Notes whether a write had to wait.
    fn noting<T>(&self, polled: Poll<T>) -> Poll<T> {
        self.conn
            .write_pending
            .store(polled.is_pending(), Ordering::Release);
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.noting(polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.noting(polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Sleeps until the connection's deadline passes or it is evicted, and says which.
async fn watchdog(registry: &Registry, conn: &ConnHandle, limits: Limits) -> Closed {
    loop {
        // `notify_one` keeps a permit when nobody waits, so a change made between the check
        // and the wait still wakes this loop.
        match registry.verdict(conn.id, limits, Instant::now()) {
            Verdict::Close(reason) => return reason,
            Verdict::WaitUntil(at) => {
                tokio::select! {
                    () = tokio::time::sleep_until(at) => {}
                    () = conn.wake.notified() => {}
                }
            }
            Verdict::WaitForChange => conn.wake.notified().await,
        }
    }
}

/// What a connection's watchdog does next.
enum Verdict {
    /// Close the connection now.
    Close(Closed),
    /// Check again at this time (or on a change).
    WaitUntil(Instant),
    /// Requests are in flight: no deadline until they end.
    WaitForChange,
}

/// Every open connection's state, under one lock (held for a few map operations, never
/// across an await).
struct Registry {
    max: usize,
    state: Mutex<State>,
    /// Wakes the accept loop (a place may have come free) and the shutdown drain.
    room: Notify,
}

#[derive(Default)]
struct State {
    next_id: u64,
    /// Connections counted against the cap (evicted ones are on their way out).
    counted: usize,
    conns: HashMap<u64, Conn>,
    /// Connections waiting for a request, oldest wait first: the eviction order.
    waiting: BTreeSet<(Instant, u64)>,
}

/// One connection's state.
struct Conn {
    handle: Arc<ConnHandle>,
    in_flight: usize,
    /// Since when it has waited for a request (none while requests are in flight).
    waiting_since: Option<Instant>,
    /// When the first byte of the awaited request came.
    first_byte: Option<Instant>,
    /// Requests started on it so far.
    requests: u64,
    evicted: bool,
}

impl Registry {
    fn new(max: usize) -> Self {
        Self {
            max: max.max(1),
            state: Mutex::new(State::default()),
            room: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every change is a few map operations that leave the maps consistent between them.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a new connection, evicting the one that has waited longest when at the
    /// cap; `None` when every connection has a request in flight, or [`MAX_CLOSING`] evicted
    /// ones are still closing (a removal wakes the accept loop through `room`).
    fn admit(&self, now: Instant) -> Option<Arc<ConnHandle>> {
        let mut state = self.lock();
        if state.counted >= self.max {
            // Sockets still open: the counted ones and the evicted ones not yet closed.
            if state.conns.len() >= self.max + MAX_CLOSING {
                return None;
            }
            let (_, victim) = state.waiting.pop_first()?;
            if let Some(victim) = state.conns.get_mut(&victim) {
                victim.evicted = true;
                victim.waiting_since = None;
                victim.handle.wake.notify_one();
            }
        } else {
            state.counted += 1;
        }
        let id = state.next_id;
        state.next_id += 1;
        let handle = Arc::new(ConnHandle {
            id,
            watch_first_byte: AtomicBool::new(true),
            wake: Notify::new(),
            write_pending: AtomicBool::new(false),
        });
        state.conns.insert(
            id,
            Conn {
                handle: Arc::clone(&handle),
                in_flight: 0,
                waiting_since: Some(now),
                first_byte: None,
                requests: 0,
                evicted: false,
            },
        );
        state.waiting.insert((now, id));
        Some(handle)
    }

    fn first_byte(&self, id: u64, now: Instant) {
        let mut state = self.lock();
        if let Some(conn) = state.conns.get_mut(&id)
            && conn.waiting_since.is_some()
            && conn.first_byte.is_none()
        {
            conn.first_byte = Some(now);
            conn.handle.wake.notify_one();
        }
    }

    fn request_started(&self, id: u64) {
        let mut state = self.lock();
        let State { conns, waiting, .. } = &mut *state;
        if let Some(conn) = conns.get_mut(&id) {
            conn.in_flight += 1;
            conn.requests += 1;
            conn.first_byte = None;
            conn.handle.watch_first_byte.store(false, Ordering::Release);
            if let Some(since) = conn.waiting_since.take() {
                waiting.remove(&(since, id));
            }
        }
    }

    fn request_ended(&self, id: u64, now: Instant) {
        let mut state = self.lock();
        let State { conns, waiting, .. } = &mut *state;
        let Some(conn) = conns.get_mut(&id) else {
            return;
        };
        conn.in_flight = conn.in_flight.saturating_sub(1);
        if conn.in_flight > 0 || conn.evicted {
            return;
        }
        conn.waiting_since = Some(now);
        conn.first_byte = None;
        conn.handle.watch_first_byte.store(true, Ordering::Release);
        waiting.insert((now, id));
        conn.handle.wake.notify_one();
        drop(state);
        self.room.notify_one();
    }

    fn verdict(&self, id: u64, limits: Limits, now: Instant) -> Verdict {
        let state = self.lock();
        let Some(conn) = state.conns.get(&id) else {
            return Verdict::Close(Closed::Evicted);
        };
        if conn.evicted {
            return Verdict::Close(Closed::Evicted);
        }
        let Some(since) = conn.waiting_since else {
            return Verdict::WaitForChange;
        };
        let (deadline, reason) = match (conn.requests, conn.first_byte) {
            (0, _) => (since + limits.header_read, Closed::HeaderTimeout),
            (_, Some(first)) => (first + limits.header_read, Closed::HeaderTimeout),
            (_, None) => (since + limits.idle, Closed::Idle),
        };
        if deadline <= now {
            Verdict::Close(reason)
        } else {
            Verdict::WaitUntil(deadline)
        }
    }

    fn remove(&self, id: u64) {
        let mut state = self.lock();
        if let Some(conn) = state.conns.remove(&id) {
            if let Some(since) = conn.waiting_since {
                state.waiting.remove(&(since, id));
            }
            if !conn.evicted {
                state.counted = state.counted.saturating_sub(1);
            }
        }
        drop(state);
        self.room.notify_one();
    }

    /// Waits until every connection has ended.
    async fn drained(&self) {
        loop {
            let room = self.room.notified();
            if self.lock().conns.is_empty() {
                return;
            }
            room.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        header_read: Duration::from_secs(10),
        body_read: Duration::from_secs(30),
        idle: Duration::from_secs(60),
        max_connections: 2,
    };

    #[test]
    fn the_cap_is_held_to_the_descriptor_limit() {
        assert_eq!(connections_allowed_by(256), 96);
        assert_eq!(connections_allowed_by(20_000), 9_968);
        assert_eq!(connections_allowed_by(10), 1);
        assert_eq!(connections_allowed_by(u64::MAX), usize::MAX / 2 - 32);
        let limits = Limits {
            max_connections: 4096,
            ..LIMITS
        };
        assert_eq!(limits.within_fd_limit(256).max_connections, 96);
        assert_eq!(limits.within_fd_limit(1 << 20).max_connections, 4096);
    }

    #[test]
    fn limits_come_from_the_config() {
        let limits = Limits::from_config(&ServerConfig::default());
        assert_eq!(limits.header_read, Duration::from_secs(10));
        assert_eq!(limits.body_read, Duration::from_secs(30));
        assert_eq!(limits.idle, Duration::from_secs(60));
        assert_eq!(limits.max_connections, 4096);
    }

    fn deadline(registry: &Registry, id: u64, now: Instant) -> Option<Duration> {
        match registry.verdict(id, LIMITS, now) {
            Verdict::WaitUntil(at) => Some(at - now),
            Verdict::Close(_) => Some(Duration::ZERO),
            Verdict::WaitForChange => None,
        }
    }

    #[test]
    fn deadlines_follow_the_connection_through_its_requests() {
        let registry = Registry::new(10);
        let t0 = Instant::now();
        let id = registry.admit(t0).unwrap().id;
        // The first head: from the accept, whenever its first byte comes.
        assert_eq!(deadline(&registry, id, t0), Some(LIMITS.header_read));
        registry.first_byte(id, t0 + Duration::from_secs(9));
        let at = t0 + Duration::from_secs(9);
        assert_eq!(deadline(&registry, id, at), Some(Duration::from_secs(1)));
        assert!(matches!(
            registry.verdict(id, LIMITS, t0 + LIMITS.header_read),
            Verdict::Close(Closed::HeaderTimeout)
        ));
        // A request in flight: no deadline, however long it takes.
        registry.request_started(id);
        assert_eq!(deadline(&registry, id, t0 + Duration::from_secs(500)), None);
        // Kept alive: idle until a byte comes, then the header deadline from that byte.
        let t1 = t0 + Duration::from_secs(600);
        registry.request_ended(id, t1);
        assert_eq!(deadline(&registry, id, t1), Some(LIMITS.idle));
        assert!(matches!(
            registry.verdict(id, LIMITS, t1 + LIMITS.idle),
            Verdict::Close(Closed::Idle)
        ));
        registry.first_byte(id, t1 + Duration::from_secs(55));
        assert_eq!(
            deadline(&registry, id, t1 + Duration::from_secs(60)),
            Some(Duration::from_secs(5))
        );
    }

    #[test]
    fn evicted_connections_still_closing_hold_back_further_evictions() {
        let registry = Registry::new(1);
        let t0 = Instant::now();
        let mut ids = vec![registry.admit(t0).unwrap().id];
        for i in 1..=MAX_CLOSING as u64 {
            ids.push(registry.admit(t0 + Duration::from_millis(i)).unwrap().id);
        }
        // One counted and MAX_CLOSING evicted sockets still open: no more room.
        assert!(registry.admit(t0 + Duration::from_secs(1)).is_none());
        registry.remove(ids[0]);
        assert!(registry.admit(t0 + Duration::from_secs(1)).is_some());
    }

    #[test]
    fn at_the_cap_the_longest_waiting_connection_makes_room() {
        let registry = Registry::new(2);
        let t0 = Instant::now();
        let first = registry.admit(t0).unwrap();
        let second = registry.admit(t0 + Duration::from_secs(1)).unwrap();
        // The oldest is busy: the second-oldest waiter goes.
        registry.request_started(first.id);
        let third = registry.admit(t0 + Duration::from_secs(2)).unwrap();
        assert!(matches!(
            registry.verdict(second.id, LIMITS, t0),
            Verdict::Close(Closed::Evicted)
        ));
        assert!(matches!(
            registry.verdict(first.id, LIMITS, t0),
            Verdict::WaitForChange
        ));
        // Every counted connection busy: no room, nobody evicted.
        registry.request_started(third.id);
        assert!(registry.admit(t0 + Duration::from_secs(3)).is_none());
        // The evicted one leaving does not free a place twice.
        registry.remove(second.id);
        assert!(registry.admit(t0 + Duration::from_secs(3)).is_none());
        // A request ending makes its connection the one to go.
        registry.request_ended(first.id, t0 + Duration::from_secs(4));
        let fourth = registry.admit(t0 + Duration::from_secs(5)).unwrap();
        assert!(matches!(
            registry.verdict(first.id, LIMITS, t0),
            Verdict::Close(Closed::Evicted)
        ));
        registry.remove(first.id);
        registry.remove(third.id);
        // One counted connection left: room for one more without evicting it.
        assert!(registry.admit(t0 + Duration::from_secs(6)).is_some());
        assert!(matches!(
            registry.verdict(fourth.id, LIMITS, t0 + Duration::from_secs(6)),
            Verdict::WaitUntil(_)
        ));
    }
}
