//! Client connections: how many the replica holds at once, what each one carries (its open
//! long-lived streams and its unread responses), and the watchdog that closes a connection
//! whose peer leaves a response unread past its deadline.
//!
//! Why the connection and not the stream: hyper only polls a response body while the peer's
//! HTTP/2 window has room, so a peer that grants no window keeps a stream (and whatever it
//! holds) alive with nothing on the server side able to reset it. Closing the connection is
//! the one lever that frees every stream it holds.
use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use atomic_waker::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tonic::transport::server::Connected;

use crate::tls::{ServerTls, Transport};

/// Accepted connections, at most `max_connections` open at once. A connection over the limit
/// is closed as soon as it is accepted: the client sees a reset at once and can try another
/// replica, instead of waiting in the listen backlog. With TLS, each handshake runs in a task
/// of its own (holding its connection slot), so a slow one never delays the next accept.
pub struct Incoming {
    listener: TcpListener,
    permits: Arc<Semaphore>,
    limit: usize,
    last_refusal_log: Option<Instant>,
    tls: Option<Arc<ServerTls>>,
    handshakes: JoinSet<Option<Connection>>,
    /// After an accept error, no accepts until this has elapsed.
    backoff: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// Connections accepted in one poll at most, before the task yields.
const ACCEPTS_PER_POLL: usize = 64;

/// The pause after a failed accept (file descriptors exhausted, for one).
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// How often, at most, a refused connection is logged at `warn` (the others at `debug`).
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

impl Incoming {
    pub fn new(listener: TcpListener, max_connections: usize) -> Self {
        Self {
            listener,
            permits: Arc::new(Semaphore::new(max_connections)),
            limit: max_connections,
            last_refusal_log: None,
            tls: None,
            handshakes: JoinSet::new(),
            backoff: None,
        }
    }

    /// Speaks TLS (`tls.rs`) on every connection, when `tls` is given.
    pub fn with_tls(mut self, tls: Option<Arc<ServerTls>>) -> Self {
        self.tls = tls;
        self
    }

    fn log_refusal(&mut self, remote: SocketAddr) {
        let now = Instant::now();
        if self
            .last_refusal_log
            .is_none_or(|at| now.duration_since(at) >= REFUSAL_LOG_EVERY)
        {
            self.last_refusal_log = Some(now);
            tracing::warn!(
                limit = self.limit,
                "connection refused: INVITATIONS_MAX_CONNECTIONS reached"
            );
        } else {
            tracing::debug!(%remote, "connection refused: connection limit reached");
        }
    }
}

impl tokio_stream::Stream for Incoming {
    type Item = io::Result<Connection>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut accepted = 0;
        loop {
            // Finished handshakes first: they hold connection slots. Polled again after every
            // spawn below, so the set's waker is always registered for the newest ones.
            while let Poll::Ready(Some(finished)) = self.handshakes.poll_join_next(cx) {
                match finished {
                    Ok(Some(connection)) => return Poll::Ready(Some(Ok(connection))),
                    Ok(None) => {}
                    Err(error) => tracing::error!(%error, "a TLS handshake task failed"),
                }
            }
            if let Some(backoff) = self.backoff.as_mut() {
                if backoff.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                self.backoff = None;
            }
            if accepted == ACCEPTS_PER_POLL {
                // A flood of connections does not keep this task: the server's other work
                // (and the handshakes' delivery) gets its turn.
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            let (stream, remote) = match self.listener.poll_accept(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(accepted)) => accepted,
                Poll::Ready(Err(error)) => {
                    // Out of file descriptors, say: the listener stays readable, so without a
                    // pause this would spin. tonic logs the error and polls again.
                    self.backoff = Some(Box::pin(tokio::time::sleep(ACCEPT_ERROR_BACKOFF)));
                    return Poll::Ready(Some(Err(error)));
                }
            };
            accepted += 1;
            let Ok(permit) = self.permits.clone().try_acquire_owned() else {
                self.log_refusal(remote);
                drop(stream);
                continue;
            };
            // Without it every small answer waits for the client's delayed ACK (~40 ms).
            if let Err(error) = stream.set_nodelay(true) {
                tracing::debug!(%error, "cannot set TCP_NODELAY");
            }
            match self.tls.clone() {
                None => {
                    let connection =
                        Connection::new(Transport::Plain(stream), remote, None, permit);
                    return Poll::Ready(Some(Ok(connection)));
                }
                Some(tls) => {
                    self.handshakes.spawn(async move {
                        let (stream, subject) = tls.accept(stream).await?;
                        Some(Connection::new(
                            Transport::Tls(Box::new(stream)),
                            remote,
                            subject,
                            permit,
                        ))
                    });
                }
            }
        }
    }
}

/// An accepted connection that the server side can close from outside hyper.
pub struct Connection {
    io: Transport,
    state: Arc<ConnectionState>,
    _permit: OwnedSemaphorePermit,
}

impl Connection {
    fn new(
        io: Transport,
        remote: SocketAddr,
        client_subject: Option<Arc<str>>,
        permit: OwnedSemaphorePermit,
    ) -> Self {
        let state = Arc::new(ConnectionState::new(remote, client_subject));
        tokio::spawn(watchdog(state.clone()));
        Self {
            io,
            state,
            _permit: permit,
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        // Stops the watchdog; the connection slot is the permit's.
        self.state.close(None);
    }
}

/// What every request of a connection finds in its extensions (tonic's connect info).
#[derive(Clone)]
pub struct ConnectionInfo {
    pub state: Arc<ConnectionState>,
}

impl Connected for Connection {
    type ConnectInfo = ConnectionInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        ConnectionInfo {
            state: self.state.clone(),
        }
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        // Registered before the check, so a close between the two still wakes this task.
        self.state.reader.register(cx.waker());
        if self.state.is_closed() {
            return Poll::Ready(Err(io::ErrorKind::ConnectionAborted.into()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.state.is_closed() {
            return Poll::Ready(Err(io::ErrorKind::ConnectionAborted.into()));
        }
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.state.is_closed() {
            return Poll::Ready(Err(io::ErrorKind::ConnectionAborted.into()));
        }
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Why the server closed a connection itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// A response was still unread by the peer at its deadline.
    ResponseUnread,
}

/// One connection's share of the replica: its open long-lived streams, the bytes of its
/// responses not yet taken by the peer, and the deadlines of those responses.
pub struct ConnectionState {
    remote: SocketAddr,
    /// The subject of the client's TLS certificate, when it gave one.
    client_subject: Option<Arc<str>>,
    closed: AtomicBool,
    /// The connection task's waker, so a close takes effect even while it waits on the socket.
    reader: AtomicWaker,
    watchdog: Notify,
    pub(super) watch_streams: AtomicUsize,
    pub(super) unsent_bytes: AtomicUsize,
    next_response: AtomicU64,
    /// Unfinished responses by id (ids grow with time, so the first is the oldest): deadline.
    unfinished: Mutex<BTreeMap<u64, Instant>>,
}

impl ConnectionState {
    fn new(remote: SocketAddr, client_subject: Option<Arc<str>>) -> Self {
        Self {
            remote,
            client_subject,
            closed: AtomicBool::new(false),
            reader: AtomicWaker::new(),
            watchdog: Notify::new(),
            watch_streams: AtomicUsize::new(0),
            unsent_bytes: AtomicUsize::new(0),
            next_response: AtomicU64::new(0),
            unfinished: Mutex::default(),
        }
    }

    pub fn remote_addr(&self) -> SocketAddr {
        self.remote
    }

    pub fn client_subject(&self) -> Option<&str> {
        self.client_subject.as_deref()
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Closes the connection: its next read and write fail, so hyper drops it with every
    /// stream it holds. `None` when the connection is already gone.
    fn close(&self, reason: Option<CloseReason>) {
        if !self.closed.swap(true, Ordering::AcqRel) {
            if let Some(reason) = reason {
                tracing::warn!(
                    remote = %self.remote,
                    ?reason,
                    "closing a connection: a response was not read before its deadline"
                );
            }
            self.reader.wake();
            self.watchdog.notify_one();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Instant>> {
        // A poisoned lock only means a panic between two map operations; the map is intact.
        self.unfinished
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A response that must be taken by the peer before `deadline`; returns its id.
    pub(super) fn response_started(&self, deadline: Instant) -> u64 {
        let id = self.next_response.fetch_add(1, Ordering::Relaxed);
        let was_empty = {
            let mut unfinished = self.lock();
            let was_empty = unfinished.is_empty();
            unfinished.insert(id, deadline);
            was_empty
        };
        if was_empty {
            self.watchdog.notify_one();
        }
        id
    }

    pub(super) fn response_finished(&self, id: u64) {
        self.lock().remove(&id);
    }

    fn earliest_deadline(&self) -> Option<Instant> {
        self.lock().values().next().copied()
    }
}

/// Sleeps until the oldest unfinished response's deadline, and closes the connection if that
/// response is still unfinished then. Ends with the connection.
async fn watchdog(state: Arc<ConnectionState>) {
    loop {
        if state.is_closed() {
            return;
        }
        match state.earliest_deadline() {
            None => state.watchdog.notified().await,
            Some(deadline) if deadline <= Instant::now() => {
                state.close(Some(CloseReason::ResponseUnread));
                return;
            }
            Some(deadline) => {
                tokio::select! {
                    () = tokio::time::sleep_until(deadline.into()) => {}
                    () = state.watchdog.notified() => {}
                }
            }
        }
    }
}
