//! Prometheus metrics, served as text on the operations listener (`GET /metrics`,
//! `startup.rs`): the names go-grpc-middleware made standard for gRPC servers, and the
//! service's own.
//!
//! Cardinality is bounded by construction: no label holds an id, an address, an enterprise or
//! a user. A method is labelled by its name only when the server serves it (the services of
//! the file descriptor sets it registers); any other path a client sends counts as
//! `unknown`/`unknown`.
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use prost::Message;

use crate::limits::StreamKind;

/// What identifies an RPC in the `grpc_server_*` series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    pub grpc_type: &'static str,
    pub grpc_service: &'static str,
    pub grpc_method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HandledLabels {
    grpc_type: &'static str,
    grpc_service: &'static str,
    grpc_method: &'static str,
    grpc_code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

/// Upper bounds of `grpc_server_handling_seconds`, from 0.5 ms (a cached read) to 10 s (the
/// request timeout): the service's calls take about a millisecond, so the usual defaults
/// (from 5 ms) would put nearly every call in the first bucket.
const HANDLING_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The replica's metrics and the registry that renders them.
pub struct Metrics {
    registry: Registry,
    started: Family<RpcLabels, Counter>,
    handled: Family<HandledLabels, Counter>,
    handling_seconds: Family<RpcLabels, Histogram>,
    msg_received: Family<RpcLabels, Counter>,
    msg_sent: Family<RpcLabels, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let started = Family::<RpcLabels, Counter>::default();
        registry.register(
            "grpc_server_started",
            "RPCs started on the server",
            started.clone(),
        );
        let handled = Family::<HandledLabels, Counter>::default();
        registry.register(
            "grpc_server_handled",
            "RPCs completed on the server, by gRPC code",
            handled.clone(),
        );
        let handling_seconds = Family::<RpcLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(HANDLING_BUCKETS)
        });
        registry.register(
            "grpc_server_handling_seconds",
            "Time from an RPC's start to its last response message or status",
            handling_seconds.clone(),
        );
        let msg_received = Family::<RpcLabels, Counter>::default();
        registry.register(
            "grpc_server_msg_received",
            "Request messages received",
            msg_received.clone(),
        );
        let msg_sent = Family::<RpcLabels, Counter>::default();
        registry.register(
            "grpc_server_msg_sent",
            "Response messages sent",
            msg_sent.clone(),
        );
        let build_info = Family::<BuildLabels, Gauge>::default();
        registry.register(
            "invitations_build_info",
            "The running build (always 1)",
            build_info.clone(),
        );
        build_info
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        Self {
            registry,
            started,
            handled,
            handling_seconds,
            msg_received,
            msg_sent,
        }
    }

    /// The metrics in the Prometheus text exposition format (OpenMetrics text 1.0).
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }

    pub fn rpc_started(&self, rpc: &RpcLabels) {
        self.started.get_or_create(rpc).inc();
    }

    pub fn rpc_handled(&self, rpc: &RpcLabels, code: tonic::Code, seconds: f64) {
        let handled = HandledLabels {
            grpc_type: rpc.grpc_type,
            grpc_service: rpc.grpc_service,
            grpc_method: rpc.grpc_method,
            grpc_code: code_name(code),
        };
        self.handled.get_or_create(&handled).inc();
        self.handling_seconds.get_or_create(rpc).observe(seconds);
    }

    pub fn messages_received(&self, rpc: &RpcLabels, count: u64) {
        if count > 0 {
            self.msg_received.get_or_create(rpc).inc_by(count);
        }
    }

    pub fn messages_sent(&self, rpc: &RpcLabels, count: u64) {
        if count > 0 {
            self.msg_sent.get_or_create(rpc).inc_by(count);
        }
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
#[derive(Debug, Clone)]
pub struct ScrapeLayer {
    metrics: Arc<Metrics>,
}

impl ScrapeLayer {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self { metrics }
    }
}

impl<S> tower::Layer<S> for ScrapeLayer {
    type Service = Scrape<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Scrape {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Scrape<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

/// OpenMetrics text, which Prometheus asks for first.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

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
        let mut response = http::Response::new(tonic::body::Body::new(self.metrics.render()));
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static(OPENMETRICS),
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
        let metrics = Metrics::new();
        let rpc = rpc_of("/invitations.v1.InvitationService/GetInvitation");
        metrics.rpc_started(&rpc);
        metrics.messages_received(&rpc, 1);
        metrics.messages_sent(&rpc, 1);
        metrics.rpc_handled(&rpc, tonic::Code::NotFound, 0.002);
        let text = metrics.render();
        for series in [
            "grpc_server_started_total{grpc_type=\"unary\",grpc_service=\"invitations.v1.InvitationService\",grpc_method=\"GetInvitation\"} 1",
            "grpc_server_handled_total{grpc_type=\"unary\",grpc_service=\"invitations.v1.InvitationService\",grpc_method=\"GetInvitation\",grpc_code=\"NotFound\"} 1",
            "grpc_server_handling_seconds_bucket{le=\"0.0025\",grpc_type=\"unary\",grpc_service=\"invitations.v1.InvitationService\",grpc_method=\"GetInvitation\"} 1",
            "grpc_server_msg_received_total{",
            "grpc_server_msg_sent_total{",
            "invitations_build_info{version=",
        ] {
            assert!(text.contains(series), "{series} in\n{text}");
        }
    }
}
