//! The end of the calls a shutdown's drain timeout leaves running.
//!
//! tonic's graceful shutdown waits for every call without a bound, and stopping the server
//! task does not stop the calls: each connection runs on a task of its own, which holds the
//! call's future, and the call holds its database connection. A call stuck behind another
//! session's lock kept the process alive until the lock was released or the busy timeout
//! ran out, and then committed although its client was never answered.
//!
//! [`InFlightLayer`] wraps every call; at the drain timeout [`CallsInFlight::abandon`]
//! drops the future of each call still running (its client is answered UNAVAILABLE with
//! `SHUTTING_DOWN`) and says how many there were. What a dropped call had written is
//! rolled back, not committed: the process never commits it and exits within
//! [`CLOSE_BOUND`]; on SQLite nothing outlives the process. On PostgreSQL the process first
//! cancels the statements it still has running (`Store::cancel_running_statements`), so a
//! single statement waiting for a lock ends at once instead of committing when the lock is
//! released; and a backend whose client is gone stops within 250 ms in any case
//! (`client_connection_check_interval`, `store/mod.rs`).
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tonic::body::Body;
use tower::{Layer, Service};

use crate::domain::Error;

/// How long the process waits, once calls are abandoned, for their answers to be handed to
/// their connections and for the database pool to close, before it exits anyway: an
/// abandoned call's database connection may still be waiting for the statement it sent,
/// and the pool would wait for it.
pub const CLOSE_BOUND: Duration = Duration::from_secs(1);

/// The calls running now, and the signal that ends them.
#[derive(Debug, Default)]
pub struct CallsInFlight {
    running: AtomicUsize,
    abandoned: CancellationToken,
    /// Woken when the last running call ends.
    settled: Notify,
}

impl CallsInFlight {
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    pub fn running(&self) -> usize {
        self.running.load(Ordering::Acquire)
    }

    /// Ends every call still running, and every call that starts from now on; returns how
    /// many were running.
    pub fn abandon(&self) -> usize {
        let running = self.running();
        self.abandoned.cancel();
        running
    }

    /// Completes once no call is running: after [`CallsInFlight::abandon`], once every
    /// abandoned call's answer has been handed to its connection.
    pub async fn settled(&self) {
        loop {
            let settled = self.settled.notified();
            if self.running() == 0 {
                return;
            }
            settled.await;
        }
    }
}

/// Counts a call while it runs.
struct Running(Arc<CallsInFlight>);

impl Running {
    fn enter(calls: &Arc<CallsInFlight>) -> Self {
        calls.running.fetch_add(1, Ordering::AcqRel);
        Self(calls.clone())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.0.running.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.settled.notify_waiters();
        }
    }
}

/// Puts every call in [`CallsInFlight`] until its answer is ready.
#[derive(Debug, Clone)]
pub struct InFlightLayer {
    calls: Arc<CallsInFlight>,
}

impl InFlightLayer {
    pub fn new(calls: Arc<CallsInFlight>) -> Self {
        Self { calls }
    }
}

impl<S> Layer<S> for InFlightLayer {
    type Service = InFlight<S>;
    fn layer(&self, inner: S) -> Self::Service {
        InFlight {
            inner,
            calls: self.calls.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct InFlight<S> {
    inner: S,
    calls: Arc<CallsInFlight>,
}

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send + 'static>>;

impl<S, B> Service<Request<B>> for InFlight<S>
where
    S: Service<Request<B>, Response = Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let running = Running::enter(&self.calls);
        let abandoned = self.calls.abandoned.clone();
        let call = self.inner.call(request);
        Box::pin(async move {
            let _running = running;
            tokio::select! {
                biased;
                () = abandoned.cancelled() => {
                    Ok(tonic::Status::from(Error::ShuttingDown).into_http::<Body>())
                }
                answered = call => answered,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use super::*;

    /// A call that never ends; its sender is dropped with its future.
    struct Stuck(Option<tokio::sync::oneshot::Sender<()>>);

    impl Service<Request<()>> for Stuck {
        type Response = Response<Body>;
        type Error = Infallible;
        type Future = BoxFuture<Result<Response<Body>, Infallible>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: Request<()>) -> Self::Future {
            let tell_when_dropped = self.0.take();
            Box::pin(async move {
                let _tell_when_dropped = tell_when_dropped;
                std::future::pending::<()>().await;
                Ok(Response::new(Body::empty()))
            })
        }
    }

    #[tokio::test]
    async fn an_abandoned_call_is_dropped_and_answered_unavailable() {
        let calls = CallsInFlight::new();
        let (dropped_tx, dropped_rx) = tokio::sync::oneshot::channel::<()>();
        let mut service = InFlightLayer::new(calls.clone()).layer(Stuck(Some(dropped_tx)));
        let call = tokio::spawn(service.call(Request::new(())));
        tokio::task::yield_now().await;
        assert_eq!(calls.running(), 1);

        assert_eq!(calls.abandon(), 1);
        tokio::time::timeout(Duration::from_secs(1), calls.settled())
            .await
            .expect("settled once the call is answered");
        let answer = call.await.expect("join").expect("answered");
        let status = tonic::Status::from_header_map(answer.headers()).expect("a status");
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert!(dropped_rx.await.is_err(), "the call's future was dropped");
        assert_eq!(calls.running(), 0);
    }
}
