//! Prometheus metrics, served as text on the operations listener (`GET /metrics`,
//! `startup.rs`): the names go-grpc-middleware made standard for gRPC servers, and the
//! service's own.
//!
//! Cardinality is bounded by construction: no label holds an id, an address, an enterprise or
//! a user. A method is labelled by its name only when the server serves it (the services of
//! the file descriptor sets it registers); any other path a client sends counts as
//! `unknown`/`unknown`.
use std::collections::HashMap;
use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use prost::Message;

use crate::grpc::status::{LOAD_SHED_REASONS, RATE_LIMITED_REASON};
use crate::limits::StreamKind;

/// What identifies an RPC in the `grpc_server_*` series.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub struct RpcLabels {
    pub grpc_type: &'static str,
    pub grpc_service: &'static str,
    pub grpc_method: &'static str,
}

/// Upper bounds of `grpc_server_handling_seconds`, from 0.5 ms (a cached read) to 10 s (the
/// request timeout): the service's calls take about a millisecond, so the usual defaults
/// (from 5 ms) would put nearly every call in the first bucket.
const HANDLING_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// How often recorded histogram samples are folded into their buckets (the exporter's
/// upkeep), so their memory stays flat between scrapes.
const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// The process's recorder, installed on first use (the `metrics` facade has one per
/// process): before it, and in a process that never serves `/metrics`, recording is a
/// no-op.
pub fn install() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            RECORDING.store(true, std::sync::atomic::Ordering::Relaxed);
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full("grpc_server_handling_seconds".into()),
                    &HANDLING_BUCKETS,
                )
                .unwrap_or_else(|_| unreachable!("the buckets are not empty"))
                .set_buckets_for_metric(
                    Matcher::Full("invitations_db_connection_wait_seconds".into()),
                    &HANDLING_BUCKETS,
                )
                .unwrap_or_else(|_| unreachable!("the buckets are not empty"))
                .build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed: /metrics stays empty");
            }
            describe();
            handle
        })
        .clone()
}

static RECORDING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether RPCs are counted: once [`install`]ed. Without a recorder every series would be
/// dropped anyway, so the middleware does not even count the messages.
pub fn recording() -> bool {
    RECORDING.load(std::sync::atomic::Ordering::Relaxed)
}

/// Keeps the histograms' memory flat; runs until the server aborts it.
pub async fn upkeep(handle: PrometheusHandle) {
    let mut ticks = tokio::time::interval(UPKEEP_EVERY);
    loop {
        ticks.tick().await;
        handle.run_upkeep();
    }
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!("grpc_server_started_total", "RPCs started on the server.");
    describe_counter!(
        "grpc_server_handled_total",
        "RPCs completed on the server, by gRPC code."
    );
    describe_histogram!(
        "grpc_server_handling_seconds",
        metrics::Unit::Seconds,
        "Time from an RPC's start to its last response message or status."
    );
    describe_counter!(
        "grpc_server_msg_received_total",
        "Request messages received."
    );
    describe_counter!("grpc_server_msg_sent_total", "Response messages sent.");
    describe_gauge!("invitations_build_info", "The running build (always 1).");
    describe_counter!(
        "invitations_rpc_outcomes_total",
        "Calls ended, by outcome: OK, the ErrorInfo reason of a documented error, \
         UNDOCUMENTED (an error without one) or CANCELLED (the client left)."
    );
    describe_counter!(
        "invitations_rate_limited_total",
        "Calls refused by the per-caller rate limit (RATE_LIMITED)."
    );
    describe_counter!(
        "invitations_load_shed_total",
        "Calls refused to protect the replica, by reason (SERVER_OVERLOADED, \
         CALLER_CONCURRENCY_LIMIT, STREAM_LIMIT_REACHED, RESPONSES_UNREAD)."
    );
    describe_gauge!(
        "invitations_db_pool_max_connections",
        "The database connection pool's bound."
    );
    describe_gauge!(
        "invitations_db_pool_connections",
        "Open database connections, idle or in use (sampled at each scrape)."
    );
    describe_histogram!(
        "invitations_db_connection_wait_seconds",
        metrics::Unit::Seconds,
        "Time a PostgreSQL statement waited for a connection."
    );
    describe_counter!(
        "invitations_db_errors_total",
        "Database failures, by class: transaction_conflict (retried by the client), \
         unavailable (UNAVAILABLE), other (INTERNAL)."
    );
    describe_gauge!(
        "invitations_ready",
        "1 while readiness is SERVING, 0 while NOT_SERVING."
    );
    describe_gauge!(
        "invitations_outbox_lag_seconds",
        "Age of the oldest event the relay has yet to publish (0 when caught up; set by \
         the replica holding the relay lease)."
    );
    describe_counter!(
        "invitations_events_relayed_total",
        "Events published to NATS JetStream and acknowledged."
    );
    describe_gauge!(
        "invitations_watch_streams",
        "Open WatchInvitations streams."
    );
    metrics::gauge!("invitations_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
}

pub fn rpc_started(rpc: &RpcLabels) {
    metrics::counter!("grpc_server_started_total", &rpc.labels()).increment(1);
}

pub fn rpc_handled(rpc: &RpcLabels, code: tonic::Code, seconds: f64) {
    let [kind, service, method] = rpc.labels();
    metrics::counter!(
        "grpc_server_handled_total",
        &[kind, service, method, ("grpc_code", code_name(code))]
    )
    .increment(1);
    metrics::histogram!("grpc_server_handling_seconds", &rpc.labels()).record(seconds);
}

/// The outcome of a call, as `invitations_rpc_outcomes_total` labels it: `OK`, the
/// `ErrorInfo.reason` of a documented error, `UNDOCUMENTED` for an error without one (tonic's
/// own: an unknown method, a malformed request), `CANCELLED` when the client left first.
/// Refusals that protect the replica are counted once more under their own names.
pub fn rpc_outcome(rpc: &RpcLabels, code: tonic::Code, reason: Option<String>) {
    let [_, service, method] = rpc.labels();
    let outcome: metrics::SharedString = match (code, reason) {
        (tonic::Code::Ok, _) => "OK".into(),
        (_, Some(reason)) => reason.into(),
        (tonic::Code::Cancelled, None) => "CANCELLED".into(),
        (_, None) => "UNDOCUMENTED".into(),
    };
    if &*outcome == RATE_LIMITED_REASON {
        metrics::counter!("invitations_rate_limited_total", &[service, method]).increment(1);
    } else if LOAD_SHED_REASONS.contains(&&*outcome) {
        metrics::counter!(
            "invitations_load_shed_total",
            "reason" => outcome.clone()
        )
        .increment(1);
    }
    metrics::counter!(
        "invitations_rpc_outcomes_total",
        "grpc_service" => service.1,
        "grpc_method" => method.1,
        "outcome" => outcome
    )
    .increment(1);
}

/// The `ErrorInfo.reason` of the status in `map` (a trailers-only response's headers, or a
/// stream's trailers), if it is an error with one. Only the service's own upper-case reasons
/// are taken, so a label can hold nothing else.
pub fn error_reason(map: &http::HeaderMap) -> Option<String> {
    use tonic_types::StatusExt;
    let status = tonic::Status::from_header_map(map)?;
    if status.code() == tonic::Code::Ok {
        return None;
    }
    status
        .get_details_error_info()
        .map(|info| info.reason)
        .filter(|reason| {
            !reason.is_empty()
                && reason.len() <= 64
                && reason.bytes().all(|b| b.is_ascii_uppercase() || b == b'_')
        })
}

pub fn messages_received(rpc: &RpcLabels, count: u64) {
    if count > 0 {
        metrics::counter!("grpc_server_msg_received_total", &rpc.labels()).increment(count);
    }
}

pub fn messages_sent(rpc: &RpcLabels, count: u64) {
    if count > 0 {
        metrics::counter!("grpc_server_msg_sent_total", &rpc.labels()).increment(count);
    }
}

impl RpcLabels {
    fn labels(&self) -> [(&'static str, &'static str); 3] {
        [
            ("grpc_type", self.grpc_type),
            ("grpc_service", self.grpc_service),
            ("grpc_method", self.grpc_method),
        ]
    }
}

/// The labels of the RPC at `path` (`/package.Service/Method`).
pub fn rpc_of(path: &str) -> RpcLabels {
    let grpc_type = match StreamKind::of(path) {
        StreamKind::Call | StreamKind::HealthCheck => "unary",
        StreamKind::HealthWatch | StreamKind::InvitationWatch => "server_stream",
        StreamKind::Reflection => "bidi_stream",
    };
    let (grpc_service, grpc_method) = served_methods()
        .get(path)
        .copied()
        .unwrap_or(("unknown", "unknown"));
    RpcLabels {
        grpc_type,
        grpc_service,
        grpc_method,
    }
}

/// Every method the server can serve, by path: the services of the descriptor sets it
/// registers (its own, health, reflection). Built once; the names live as long as the
/// process, like the descriptors they come from.
fn served_methods() -> &'static HashMap<String, (&'static str, &'static str)> {
    static METHODS: OnceLock<HashMap<String, (&'static str, &'static str)>> = OnceLock::new();
    METHODS.get_or_init(|| {
        let mut methods = HashMap::new();
        for set in [
            crate::proto::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
        ] {
            let Ok(set) = prost_types::FileDescriptorSet::decode(set) else {
                continue;
            };
            for file in set.file {
                let package = file.package.unwrap_or_default();
                for service in file.service {
                    let service_name: &'static str = Box::leak(
                        format!("{package}.{}", service.name.unwrap_or_default()).into_boxed_str(),
                    );
                    for method in service.method {
                        let method_name: &'static str =
                            Box::leak(method.name.unwrap_or_default().into_boxed_str());
                        methods.insert(
                            format!("/{service_name}/{method_name}"),
                            (service_name, method_name),
                        );
                    }
                }
            }
        }
        methods
    })
}

/// The canonical name of a gRPC code, as go-grpc-middleware labels it (`OK`, `NotFound`).
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Canceled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

/// Counts the gRPC messages in a body, fed its data chunks in order: each message is a
/// 5-byte prefix (compression flag, big-endian length) and that many bytes.
#[derive(Debug, Default)]
pub struct MessageCounter {
    prefix: [u8; 5],
    prefix_len: usize,
    remaining: usize,
}

impl MessageCounter {
    /// The messages that `chunk` completes.
    pub fn feed(&mut self, mut chunk: &[u8]) -> u64 {
        let mut completed = 0;
        while !chunk.is_empty() {
            if self.remaining > 0 {
                let take = self.remaining.min(chunk.len());
                self.remaining -= take;
                chunk = &chunk[take..];
                if self.remaining == 0 {
                    completed += 1;
                }
                continue;
            }
            let take = (5 - self.prefix_len).min(chunk.len());
            self.prefix[self.prefix_len..self.prefix_len + take].copy_from_slice(&chunk[..take]);
            self.prefix_len += take;
            chunk = &chunk[take..];
            if self.prefix_len == 5 {
                self.prefix_len = 0;
                let [_, a, b, c, d] = self.prefix;
                self.remaining = u32::from_be_bytes([a, b, c, d]) as usize;
                if self.remaining == 0 {
                    completed += 1;
                }
            }
        }
        completed
    }
}

/// `GET /metrics` on the operations listener: the text, whatever else it serves (gRPC health
/// on the same port, over HTTP/2; Prometheus scrapes over HTTP/1.1).
#[derive(Clone)]
pub struct ScrapeLayer {
    metrics: PrometheusHandle,
    sample: Sampler,
}

/// Sets the gauges read at each scrape (the database pool's figures).
pub type Sampler = std::sync::Arc<dyn Fn() + Send + Sync>;

impl ScrapeLayer {
    pub fn new(metrics: PrometheusHandle, sample: Sampler) -> Self {
        Self { metrics, sample }
    }
}

impl<S> tower::Layer<S> for ScrapeLayer {
    type Service = Scrape<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Scrape {
            inner,
            metrics: self.metrics.clone(),
            sample: self.sample.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Scrape<S> {
    inner: S,
    metrics: PrometheusHandle,
    sample: Sampler,
}

/// The Prometheus text exposition format.
const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

impl<S> tower::Service<http::Request<tonic::body::Body>> for Scrape<S>
where
    S: tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
        >,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, S::Error>> + Send + 'static>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        if request.uri().path() != "/metrics" {
            return Box::pin(self.inner.call(request));
        }
        (self.sample)();
        let mut response = http::Response::new(tonic::body::Body::new(self.metrics.render()));
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static(TEXT_FORMAT),
        );
        Box::pin(std::future::ready(Ok(response)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(payloads: &[&[u8]]) -> Vec<u8> {
        let mut body = Vec::new();
        for payload in payloads {
            body.push(0);
            body.extend_from_slice(&(payload.len() as u32).to_be_bytes());
            body.extend_from_slice(payload);
        }
        body
    }

    #[test]
    fn messages_are_counted_however_the_body_is_split() {
        let body = framed(&[b"first", b"", b"a longer third message"]);
        for split in 1..body.len() {
            let mut counter = MessageCounter::default();
            let counted: u64 = body.chunks(split).map(|chunk| counter.feed(chunk)).sum();
            assert_eq!(counted, 3, "chunks of {split}");
        }
    }

    #[test]
    fn only_served_methods_are_named() {
        let list = rpc_of("/invitations.v1.InvitationService/ListInvitations");
        assert_eq!(
            (list.grpc_type, list.grpc_service, list.grpc_method),
            (
                "unary",
                "invitations.v1.InvitationService",
                "ListInvitations"
            )
        );
        let watch = rpc_of("/invitations.v1.InvitationService/WatchInvitations");
        assert_eq!(watch.grpc_type, "server_stream");
        let health = rpc_of("/grpc.health.v1.Health/Check");
        assert_eq!(health.grpc_service, "grpc.health.v1.Health");
        let made_up = rpc_of("/evil.Service/x-a-random-string-per-request");
        assert_eq!(
            (made_up.grpc_service, made_up.grpc_method),
            ("unknown", "unknown")
        );
    }

    #[test]
    fn the_text_names_the_standard_series() {
        let handle = install();
        let rpc = rpc_of("/invitations.v1.InvitationService/GetInvitation");
        rpc_started(&rpc);
        messages_received(&rpc, 1);
        messages_sent(&rpc, 1);
        rpc_handled(&rpc, tonic::Code::NotFound, 0.002);
        let text = handle.render();
        for series in [
            "# TYPE grpc_server_started_total counter",
            "grpc_server_handled_total{grpc_type=\"unary\",grpc_service=\"invitations.v1.InvitationService\",grpc_method=\"GetInvitation\",grpc_code=\"NotFound\"} 1",
            "grpc_server_handling_seconds_bucket{grpc_type=\"unary\",grpc_service=\"invitations.v1.InvitationService\",grpc_method=\"GetInvitation\",le=\"0.0025\"} 1",
            "grpc_server_msg_received_total{",
            "grpc_server_msg_sent_total{",
            "invitations_build_info{version=",
        ] {
            assert!(text.contains(series), "{series} in\n{text}");
        }
    }
}
