//! The tower layer in front of every gRPC service: request ids and per-RPC telemetry.
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use tonic::body::Body;
use tower::{Layer, Service};
use tracing::Instrument;

use crate::domain::Error;
use crate::limits::ConnectionInfo;
use crate::metrics::{self, MessageCounter, RpcLabels, rpc_of};

/// Metadata that carries the request id, in and out.
pub const REQUEST_ID_HEADER: &str = "x-request-id";
const MAX_REQUEST_ID_LEN: usize = 128;

fn is_health_check(path: &str) -> bool {
    path.starts_with("/grpc.health.v1.Health/")
}

/// The caller's request id if it is a sane one, else a fresh UUID.
fn request_id(request: &Request<Body>) -> HeaderValue {
    request
        .headers()
        .get(REQUEST_ID_HEADER)
        .filter(|value| {
            let bytes = value.as_bytes();
            !bytes.is_empty()
                && bytes.len() <= MAX_REQUEST_ID_LEN
                && bytes.iter().all(|b| b.is_ascii_graphic())
        })
        .cloned()
        .unwrap_or_else(|| {
            HeaderValue::from_str(&uuid::Uuid::new_v4().to_string())
                .unwrap_or_else(|_| unreachable!("a UUID is a valid header value"))
        })
}

/// Rewrites the one error tonic produces itself before any handler runs that has a
/// documented row: a request message over the size limit keeps tonic's OUT_OF_RANGE but
/// gains the row's ErrorInfo. It is told apart by what it lacks: every status the service
/// makes carries ErrorInfo, and tonic's size check is the only OUT_OF_RANGE without it (no
/// encoding limit is set). A request that is not valid protobuf is answered by the codec
/// (`grpc::codec::ServerDecoder`). Everything else passes unchanged.
fn documented(response: Response<Body>, max_request_bytes: usize) -> Response<Body> {
    let Some(status) = tonic::Status::from_header_map(response.headers()) else {
        return response;
    };
    if status.code() != tonic::Code::OutOfRange || !status.details().is_empty() {
        return response;
    }
    tonic::Status::from(Error::RequestTooLarge {
        limit: max_request_bytes,
    })
    .into_http::<Body>()
}

/// Gives every RPC a span (`method`, `request_id`, `subject` once authenticated, and the
/// `client_certificate`'s subject under mTLS), logs
/// one line when it ends with its gRPC code and latency, and echoes the request id in the
/// response metadata.
#[derive(Debug, Clone)]
pub struct ObserveLayer {
    max_request_bytes: usize,
}

impl ObserveLayer {
    /// `max_request_bytes` is named in the error of a request over it.
    pub fn new(max_request_bytes: usize) -> Self {
        Self { max_request_bytes }
    }
}

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Observe {
            inner,
            max_request_bytes: self.max_request_bytes,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Observe<S> {
    inner: S,
    max_request_bytes: usize,
}

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send + 'static>>;

impl<S> Service<Request<Body>> for Observe<S>
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
        let request_id = request_id(&request);
        let method = request.uri().path().to_owned();
        let quiet = is_health_check(&method);
        // Health checks are not traced: frequent, and of no caller's trace.
        let traced = crate::telemetry::tracing_enabled() && !quiet;
        let span = if traced {
            traced_span(&request, &method, &request_id)
        } else {
            tracing::info_span!(
                "rpc",
                method = %method,
                request_id = request_id.to_str().unwrap_or_default(),
                subject = tracing::field::Empty,
                client_certificate = tracing::field::Empty,
            )
        };
        if let Some(client) = request
            .extensions()
            .get::<ConnectionInfo>()
            .and_then(|info| info.state.client_subject())
        {
            span.record("client_certificate", client);
        }
        let started = Instant::now();
        let rpc = metrics::recording().then(|| rpc_of(&method));
        let request = match rpc {
            None => request,
            Some(rpc) => {
                metrics::rpc_started(&rpc);
                request.map(|inner| counted(inner, Direction::Received, rpc))
            }
        };
        let response = span.in_scope(|| self.inner.call(request));
        let body_span = span.clone();
        let max_request_bytes = self.max_request_bytes;
        Box::pin(
            async move {
                let mut response = documented(response.await?, max_request_bytes);
                response.headers_mut().insert(REQUEST_ID_HEADER, request_id);
                // A trailers-only response (every error) has its status in the headers.
                let code = response.headers().get("grpc-status").and_then(grpc_code);
                let reason = rpc.and_then(|_| metrics::error_reason(response.headers()));
                Ok(response.map(|inner| {
                    Body::new(ObservedBody {
                        inner: match rpc {
                            None => inner,
                            Some(rpc) => counted(inner, Direction::Sent, rpc),
                        },
                        finish: Some(Finish {
                            traced,
                            span: body_span,
                            started,
                            code,
                            reason,
                            quiet,
                            rpc,
                        }),
                    })
                }))
            }
            .instrument(span),
        )
    }
}

fn grpc_code(value: &HeaderValue) -> Option<tonic::Code> {
    value
        .to_str()
        .ok()?
        .parse::<i32>()
        .ok()
        .map(tonic::Code::from)
}

/// The `rpc` span while traces are exported: named and attributed by the RPC semantic
/// conventions (`rpc.system`, `rpc.service`, `rpc.method`; `rpc.grpc.status_code` when it
/// ends), a child of the caller's span when its W3C `traceparent` says so, and with the
/// trace id as a field, so every log line of the call carries it.
fn traced_span(request: &Request<Body>, method: &str, request_id: &HeaderValue) -> tracing::Span {
    use opentelemetry::propagation::TextMapPropagator;
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    // Only the served methods are named: a made-up path must not make a span name of its own.
    let rpc = rpc_of(method);
    let (service, name) = (rpc.grpc_service, rpc.grpc_method);
    let span = tracing::info_span!(
        "rpc",
        otel.name = %format_args!("{service}/{name}"),
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        rpc.system = "grpc",
        rpc.service = service,
        rpc.method = name,
        rpc.grpc.status_code = tracing::field::Empty,
        method = %method,
        request_id = request_id.to_str().unwrap_or_default(),
        trace_id = tracing::field::Empty,
        subject = tracing::field::Empty,
        client_certificate = tracing::field::Empty,
    );
    let caller = opentelemetry_sdk::propagation::TraceContextPropagator::new()
        .extract(&opentelemetry_http::HeaderExtractor(request.headers()));
    if caller.span().span_context().is_valid() {
        // Fails only without the OpenTelemetry layer, which `traced` rules out.
        let _ = span.set_parent(caller);
    }
    let trace_id = span.context().span().span_context().trace_id();
    span.record("trace_id", tracing::field::display(trace_id));
    span
}

/// The codes a server reports as its own failure (the RPC conventions' span status).
fn is_server_error(code: tonic::Code) -> bool {
    use tonic::Code;
    matches!(
        code,
        Code::Unknown
            | Code::DeadlineExceeded
            | Code::Unimplemented
            | Code::Internal
            | Code::Unavailable
            | Code::DataLoss
    )
}

/// What to log when the response body ends (or is dropped: the client went away).
struct Finish {
    /// The span carries the RPC conventions' attributes (traces are exported).
    traced: bool,
    span: tracing::Span,
    started: Instant,
    code: Option<tonic::Code>,
    /// The error's `ErrorInfo.reason`, when metrics are recorded and the call failed.
    reason: Option<String>,
    quiet: bool,
    /// Counted in the metrics, when they are recorded.
    rpc: Option<RpcLabels>,
}

impl Finish {
    fn log(self, completed: bool) {
        let elapsed = self.started.elapsed().as_secs_f64();
        let latency_ms = elapsed * 1e3;
        let code = match (self.code, completed) {
            (Some(code), _) => code,
            (None, true) => tonic::Code::Unknown,
            (None, false) => tonic::Code::Cancelled,
        };
        if let Some(rpc) = &self.rpc {
            metrics::rpc_handled(rpc, code, elapsed);
            metrics::rpc_outcome(rpc, code, self.reason);
        }
        if self.traced {
            self.span.record("rpc.grpc.status_code", code as i64);
            if is_server_error(code) {
                self.span.record("otel.status_code", "ERROR");
            }
        }
        let _entered = self.span.enter();
        // `?code` is formatted only by a subscriber that keeps the event, not on every RPC.
        if self.quiet {
            tracing::debug!(code = ?code, latency_ms, "rpc finished");
        } else {
            tracing::info!(code = ?code, latency_ms, "rpc finished");
        }
    }
}

/// Which way a [`CountedBody`]'s messages go.
#[derive(Clone, Copy)]
enum Direction {
    Received,
    Sent,
}

fn counted(inner: Body, direction: Direction, rpc: RpcLabels) -> Body {
    Body::new(CountedBody {
        inner,
        counter: MessageCounter::default(),
        direction,
        rpc,
    })
}

pin_project_lite::pin_project! {
    /// A request or response body whose gRPC messages are counted as they pass.
    struct CountedBody {
        #[pin]
        inner: Body,
        counter: MessageCounter,
        direction: Direction,
        rpc: RpcLabels,
    }
}

impl HttpBody for CountedBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        let this = self.project();
        let frame = std::task::ready!(this.inner.poll_frame(cx));
        if let Some(Ok(data)) = frame
            .as_ref()
            .map(|frame| frame.as_ref().map(Frame::data_ref))
            && let Some(data) = data
        {
            let messages = this.counter.feed(data);
            match this.direction {
                Direction::Received => metrics::messages_received(this.rpc, messages),
                Direction::Sent => metrics::messages_sent(this.rpc, messages),
            }
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

pin_project_lite::pin_project! {
    struct ObservedBody {
        #[pin]
        inner: Body,
        finish: Option<Finish>,
    }

    impl PinnedDrop for ObservedBody {
        fn drop(this: Pin<&mut Self>) {
            if let Some(finish) = this.project().finish.take() {
                finish.log(false);
            }
        }
    }
}

impl HttpBody for ObservedBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        let this = self.project();
        let frame = std::task::ready!(this.inner.poll_frame(cx));
        match &frame {
            Some(Ok(frame)) => {
                if let Some(trailers) = frame.trailers_ref()
                    && let Some(code) = trailers.get("grpc-status").and_then(grpc_code)
                    && let Some(finish) = this.finish.as_mut()
                {
                    finish.code = Some(code);
                    if finish.rpc.is_some() {
                        finish.reason = metrics::error_reason(trailers);
                    }
                }
            }
            Some(Err(_)) | None => {
                if let Some(finish) = this.finish.take() {
                    finish.log(frame.is_none());
                }
            }
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
