//! The tower layer in front of every gRPC service that bounds what one stream can hold:
//! a request message must arrive within the read timeout, requests still arriving are
//! capped for the replica, long-lived streams are capped per connection and per replica, and
//! a response counts against its connection's (and the replica's) unread bytes until the
//! peer has taken it, with the request timeout as its deadline.
use std::future::Future as _;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::body::Body;
use tower::{Layer, Service};

use super::connection::{ConnectionInfo, ConnectionState};
use super::{ResponseSize, StreamKind};
use crate::config::ServerSettings;
use crate::domain::{Error, StreamLimitScope};

/// The least time an answer gets to reach a reading client once it is ready, even when its
/// handler used up nearly all of the request timeout: the watchdog closes the connection,
/// with every call on it, so a slow handler must not make a reading client lose it.
const MIN_SEND_WINDOW: Duration = Duration::from_secs(1);

/// The limits, shared by every connection of the replica.
#[derive(Debug)]
struct Shared {
    read_timeout: Duration,
    response_deadline: Duration,
    pending_requests: Arc<Semaphore>,
    watch_streams: Arc<Semaphore>,
    max_watch_streams: usize,
    max_watch_streams_per_connection: usize,
    unsent_bytes: AtomicUsize,
    max_unsent_bytes: usize,
    max_unsent_bytes_per_connection: usize,
}

#[derive(Debug, Clone)]
pub struct StreamLimitLayer {
    shared: Arc<Shared>,
}

impl StreamLimitLayer {
    pub fn new(settings: &ServerSettings) -> Self {
        Self {
            shared: Arc::new(Shared {
                read_timeout: settings.request_read_timeout,
                response_deadline: settings.request_timeout,
                pending_requests: Arc::new(Semaphore::new(settings.max_pending_requests)),
                watch_streams: Arc::new(Semaphore::new(settings.max_watch_streams)),
                max_watch_streams: settings.max_watch_streams,
                max_watch_streams_per_connection: settings.max_watch_streams_per_connection,
                unsent_bytes: AtomicUsize::new(0),
                max_unsent_bytes: settings.max_unsent_bytes,
                max_unsent_bytes_per_connection: settings.max_unsent_bytes_per_connection,
            }),
        }
    }
}

impl<S> Layer<S> for StreamLimitLayer {
    type Service = StreamLimit<S>;
    fn layer(&self, inner: S) -> Self::Service {
        StreamLimit {
            inner,
            shared: self.shared.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct StreamLimit<S> {
    inner: S,
    shared: Arc<Shared>,
}

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send + 'static>>;

fn refuse(error: Error) -> Response<Body> {
    tonic::Status::from(error).into_http::<Body>()
}

/// A long-lived stream's place in its connection's and the replica's counts.
struct WatchSlot {
    connection: Option<Arc<ConnectionState>>,
    _replica: OwnedSemaphorePermit,
}

impl Drop for WatchSlot {
    fn drop(&mut self) {
        if let Some(connection) = &self.connection {
            connection.watch_streams.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Shared {
    fn watch_slot(&self, connection: Option<&Arc<ConnectionState>>) -> Result<WatchSlot, Error> {
        if let Some(connection) = connection {
            let open = connection.watch_streams.fetch_add(1, Ordering::AcqRel);
            if open >= self.max_watch_streams_per_connection {
                connection.watch_streams.fetch_sub(1, Ordering::AcqRel);
                return Err(Error::StreamLimit {
                    scope: StreamLimitScope::Connection,
                    limit: self.max_watch_streams_per_connection,
                });
            }
        }
        // Built before the replica's permit, so a refusal below gives the connection's back.
        let connection = connection.cloned();
        let replica = match self.watch_streams.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                if let Some(connection) = &connection {
                    connection.watch_streams.fetch_sub(1, Ordering::AcqRel);
                }
                return Err(Error::StreamLimit {
                    scope: StreamLimitScope::Server,
                    limit: self.max_watch_streams,
                });
            }
        };
        Ok(WatchSlot {
            connection,
            _replica: replica,
        })
    }

    /// Refuses new work while the peer's connection, or the replica, holds too many bytes of
    /// responses nobody has read yet.
    fn check_unsent(&self, connection: Option<&ConnectionState>) -> Result<(), Error> {
        if let Some(connection) = connection
            && connection.unsent_bytes.load(Ordering::Acquire)
                >= self.max_unsent_bytes_per_connection
        {
            return Err(Error::ResponsesUnread {
                limit: self.max_unsent_bytes_per_connection,
            });
        }
        if self.unsent_bytes.load(Ordering::Acquire) >= self.max_unsent_bytes {
            return Err(Error::Overloaded);
        }
        Ok(())
    }
}

impl<S> Service<Request<Body>> for StreamLimit<S>
where
    S: Service<Request<Body>, Response = Response<Body>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let started = Instant::now();
        let shared = self.shared.clone();
        let connection = request
            .extensions()
            .get::<ConnectionInfo>()
            .map(|info| info.state.clone());
        let kind = StreamKind::of(request.uri().path());

        let admitted = (|| {
            if !kind.is_health() {
                shared.check_unsent(connection.as_deref())?;
            }
            let watch = if kind.is_long_lived() {
                Some(shared.watch_slot(connection.as_ref())?)
            } else {
                None
            };
            // A long-lived stream's request may stay open (reflection): it counts as a stream,
            // not as a request still arriving.
            let pending = if kind.request_ends() {
                Some(
                    shared
                        .pending_requests
                        .clone()
                        .try_acquire_owned()
                        .map_err(|_| Error::Overloaded)?,
                )
            } else {
                None
            };
            Ok::<_, Error>((watch, pending))
        })();
        let (watch, pending) = match admitted {
            Ok(admitted) => admitted,
            Err(error) => return Box::pin(std::future::ready(Ok(refuse(error)))),
        };

        let request = match pending {
            Some(permit) => request.map(|body| {
                Body::new(ReadDeadlineBody {
                    inner: body,
                    timeout: shared.read_timeout,
                    deadline: started + shared.read_timeout,
                    timer: None,
                    pending: Some(permit),
                })
            }),
            None => request,
        };
        let response = self.inner.call(request);
        Box::pin(async move {
            let mut response = response.await?;
            let bytes = response
                .extensions_mut()
                .remove::<ResponseSize>()
                .map_or(0, |size| size.0);
            let tracked = match (&connection, kind.is_long_lived()) {
                (Some(connection), false) => Some(connection.response_started(
                    (started + shared.response_deadline).max(Instant::now() + MIN_SEND_WINDOW),
                )),
                _ => None,
            };
            if let Some(connection) = &connection {
                connection.unsent_bytes.fetch_add(bytes, Ordering::AcqRel);
            }
            shared.unsent_bytes.fetch_add(bytes, Ordering::AcqRel);
            Ok(response.map(|inner| {
                Body::new(UnsentBody {
                    inner,
                    owed: Some(Owed {
                        shared,
                        connection,
                        tracked,
                        bytes,
                        _watch: watch,
                    }),
                })
            }))
        })
    }
}

pin_project_lite::pin_project! {
    /// A request body that must end within `timeout` of the request's headers. Holds the
    /// request's place among those still arriving until it ends.
    struct ReadDeadlineBody {
        #[pin]
        inner: Body,
        timeout: Duration,
        deadline: Instant,
        timer: Option<Pin<Box<tokio::time::Sleep>>>,
        pending: Option<OwnedSemaphorePermit>,
    }
}

impl HttpBody for ReadDeadlineBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        let this = self.project();
        if this.pending.is_none() {
            // Complete already: what follows is the stream's (a long-lived stream's) business.
            return this.inner.poll_frame(cx);
        }
        if let Poll::Ready(frame) = this.inner.poll_frame(cx) {
            if frame.is_none() || matches!(frame, Some(Err(_))) {
                *this.pending = None;
            }
            return Poll::Ready(frame);
        }
        // Armed only when the body is not all there yet: most requests never need a timer.
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until((*this.deadline).into())));
        ready!(timer.as_mut().poll(cx));
        *this.pending = None;
        Poll::Ready(Some(Err(tonic::Status::from(Error::RequestReadTimeout {
            timeout: *this.timeout,
        }))))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What a response owes until its body ends or is dropped: its unread bytes, its deadline on
/// the connection's watchdog, and a long-lived stream's slot.
struct Owed {
    shared: Arc<Shared>,
    connection: Option<Arc<ConnectionState>>,
    tracked: Option<u64>,
    bytes: usize,
    _watch: Option<WatchSlot>,
}

impl Drop for Owed {
    fn drop(&mut self) {
        self.shared
            .unsent_bytes
            .fetch_sub(self.bytes, Ordering::AcqRel);
        if let Some(connection) = &self.connection {
            connection
                .unsent_bytes
                .fetch_sub(self.bytes, Ordering::AcqRel);
            if let Some(id) = self.tracked {
                connection.response_finished(id);
            }
        }
    }
}

pin_project_lite::pin_project! {
    struct UnsentBody {
        #[pin]
        inner: Body,
        owed: Option<Owed>,
    }
}

impl HttpBody for UnsentBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        if frame.is_none() || matches!(frame, Some(Err(_))) {
            *this.owed = None;
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
