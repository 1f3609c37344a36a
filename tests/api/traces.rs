//! OpenTelemetry traces through the real binary: with `OTEL_EXPORTER_OTLP_ENDPOINT` naming a
//! collector (here the OTLP trace service of `opentelemetry-proto`, run by the test), a call
//! that carries a W3C `traceparent` yields a server span in the caller's trace with the RPC
//! conventions' attributes, a database span under it, and log lines with the trace id; the
//! change such a call makes carries the trace into its event (the watch's `trace_id`, the
//! relay's `traceparent` header).
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use invitations::domain::EnterpriseId;
use invitations::proto::invitations::v1::ListInvitationsRequest;
use invitations::proto::invitations::v1::invitation_service_client::InvitationServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;

use crate::common::authorized;
use crate::process::{Served, admin_token};

/// What the collector received: each span with its resource's `service.name`.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<(String, Span)>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().expect("spans");
        for resource in request.into_inner().resource_spans {
            let service = resource
                .resource
                .iter()
                .flat_map(|resource| &resource.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| kv.value.as_ref())
                .and_then(|value| match &value.value {
                    Some(Value::StringValue(name)) => Some(name.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for scope in resource.scope_spans {
                spans.extend(scope.spans.into_iter().map(|span| (service.clone(), span)));
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

impl Collector {
    /// Serves on an ephemeral port until the test ends.
    async fn start(&self) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a port");
        let addr = listener.local_addr().expect("address");
        let service = TraceServiceServer::new(self.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        addr
    }

    /// The spans of `trace_id` once there are at least `count`, at most 20 s.
    async fn trace(&self, trace_id: &[u8], count: usize) -> Vec<(String, Span)> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let spans: Vec<_> = self
                .spans
                .lock()
                .expect("spans")
                .iter()
                .filter(|(_, span)| span.trace_id == trace_id)
                .cloned()
                .collect();
            if spans.len() >= count {
                return spans;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {count} spans of the trace arrived",
                spans.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn attribute(span: &Span, key: &str) -> Option<Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|value| value.value.clone())
}

fn text(value: &str) -> Option<Value> {
    Some(Value::StringValue(value.to_owned()))
}

/// The binary exporting its spans to a collector of the test's (every 100 ms), with
/// `extra_env`; a client of it.
async fn traced_binary(
    extra_env: &[(&str, &str)],
) -> (
    Collector,
    Served,
    InvitationServiceClient<tonic::transport::Channel>,
) {
    let collector = Collector::default();
    let endpoint = format!("http://{}", collector.start().await);
    let mut env = vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ];
    env.extend_from_slice(extra_env);
    let served = Served::start_ready(&env, Duration::from_secs(20)).await;
    let client = InvitationServiceClient::connect(format!("http://{}", served.addr))
        .await
        .expect("connect");
    (collector, served, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_continues_the_callers_trace_with_its_database_span() {
    let (collector, served, mut client) = traced_binary(&[]).await;
    let (token, _) = admin_token();

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let mut request = authorized(&token, ListInvitationsRequest::default());
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id}-{caller_span}-01")
            .parse()
            .expect("ascii"),
    );
    client.list_invitations(request).await.expect("listed");

    let trace_bytes = hex(trace_id);
    let spans = collector.trace(&trace_bytes, 2).await;
    let (service, server) = spans
        .iter()
        .find(|(_, span)| span.kind == SpanKind::Server as i32)
        .expect("a server span");
    assert_eq!(service, "invitations", "OTEL_SERVICE_NAME's default");
    assert_eq!(
        server.name,
        "invitations.v1.InvitationService/ListInvitations"
    );
    assert_eq!(server.parent_span_id, hex(caller_span), "the caller's span");
    assert_eq!(attribute(server, "rpc.system"), text("grpc"));
    assert_eq!(
        attribute(server, "rpc.service"),
        text("invitations.v1.InvitationService")
    );
    assert_eq!(attribute(server, "rpc.method"), text("ListInvitations"));
    assert_eq!(
        attribute(server, "rpc.grpc.status_code"),
        Some(Value::IntValue(0))
    );
    let (_, database) = spans
        .iter()
        .find(|(_, span)| span.kind == SpanKind::Client as i32)
        .expect("a database span");
    assert_eq!(database.parent_span_id, server.span_id, "under the call");
    assert_eq!(database.name, "SELECT invitations");
    assert_eq!(attribute(database, "db.system.name"), text("sqlite"));
    assert_eq!(attribute(database, "db.operation.name"), text("SELECT"));

    // Every log line of the call names the trace.
    let finished: Vec<String> = served
        .logs()
        .into_iter()
        .filter(|line| line.contains("rpc finished") && line.contains("ListInvitations"))
        .collect();
    assert!(!finished.is_empty(), "the call's log line");
    assert!(
        finished.iter().all(|line| line.contains(trace_id)),
        "{finished:?}"
    );
}

/// A change made by a traced call: its event names the call's trace (`trace_id` on the
/// watch) and the relay's NATS message carries the call's span as its `traceparent`, so a
/// consumer's work joins the trace under it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_carries_its_calls_trace_into_its_event_and_the_relay() {
    let Some(nats) = crate::relay::nats_url() else {
        return;
    };
    let (collector, _served, mut client) = traced_binary(&[("INVITATIONS_NATS_URL", &nats)]).await;
    let (token, _) = admin_token();
    let mut watch = client
        .watch_invitations(authorized(&token, Default::default()))
        .await
        .expect("the watch opens")
        .into_inner();

    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let mut request = authorized(&token, crate::common::create_request("traced@acme.example"));
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id}-b7ad6b7169203331-01")
            .parse()
            .expect("ascii"),
    );
    let created = client
        .create_invitation(request)
        .await
        .expect("created")
        .into_inner();

    let event = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            let message = watch.message().await.expect("the watch").expect("open");
            if let Some(event) = message.events.into_iter().next() {
                return event;
            }
        }
    })
    .await
    .expect("the created event");
    assert_eq!(event.trace_id, trace_id, "the call's trace on the watch");

    let spans = collector.trace(&hex(trace_id), 1).await;
    let (_, server) = spans
        .iter()
        .find(|(_, span)| span.kind == SpanKind::Server as i32)
        .expect("the call's server span");
    assert_eq!(
        server.name,
        "invitations.v1.InvitationService/CreateInvitation"
    );
    let span_id: String = server.span_id.iter().map(|b| format!("{b:02x}")).collect();

    let enterprise = EnterpriseId::parse_ref(&created.enterprise_ref).expect("enterprise");
    let deadline = Instant::now() + Duration::from_secs(15);
    let relayed = loop {
        let published = crate::relay::published(&nats, enterprise).await;
        if let Some(message) = published
            .into_iter()
            .find(|m| m.message_id == event.event_id)
        {
            break message;
        }
        assert!(Instant::now() < deadline, "the event relayed within 15 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        relayed.traceparent,
        Some(format!("00-{trace_id}-{span_id}-01")),
        "the call's span as the message's parent"
    );
    assert_eq!(relayed.event.trace_id, trace_id);
}

#[test]
fn a_protocol_other_than_grpc_stops_the_start() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_invitations"))
        .arg("serve")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
        .env("DATABASE_URL", "sqlite::memory:")
        .output()
        .expect("run the binary");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf: only grpc"),
        "{stderr}"
    );
}

fn hex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
        .collect()
}
