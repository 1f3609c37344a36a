//! Prometheus metrics on the operations listener, through the real binary: `GET /metrics`
//! over HTTP/1.1 holds the standard `grpc_server_*` series for the calls made, by code and
//! with their messages; a method the server does not serve counts as `unknown`, and no label
//! holds an id.
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http::uri::PathAndQuery;
use invitations::proto::invitations::v1::invitation_service_client::InvitationServiceClient;
use invitations::proto::invitations::v1::{
    GetInvitationRequest, ListInvitationsRequest, ListInvitationsResponse, WatchInvitationsRequest,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

use crate::common::authorized;
use crate::operability::{READINESS, await_health};
use crate::process::{Served, admin_token};

/// `GET /metrics` on `ops`: the whole HTTP/1.1 response, head and body.
pub(crate) async fn scrape(ops: SocketAddr) -> String {
    let mut stream = tokio::net::TcpStream::connect(ops)
        .await
        .expect("connect to the operations port");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .expect("send the request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .expect("read the response");
    response
}

/// Scrapes until every one of `series` is in the text (a call is counted as its response
/// ends, a moment after the client has it), at most 10 s; the last text.
pub(crate) async fn scrape_until(ops: SocketAddr, series: &[String]) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = scrape(ops).await;
        if series.iter().all(|line| text.contains(line.as_str())) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "missing {:?} in\n{text}",
            series
                .iter()
                .filter(|line| !text.contains(line.as_str()))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn handled(method: &str, code: &str, count: u64) -> String {
    format!(
        "grpc_server_handled_total{{grpc_type=\"unary\",grpc_service=\"{service}\",\
         grpc_method=\"{method}\",grpc_code=\"{code}\"}} {count}",
        service = if method == "unknown" {
            "unknown"
        } else {
            "invitations.v1.InvitationService"
        }
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operations_port_serves_the_standard_grpc_series() {
    let ops = free_ops_addr();
    let served = Served::start(&[("INVITATIONS_OPS_LISTEN_ADDR", &ops.to_string())]);
    await_health(
        ops,
        READINESS,
        ServingStatus::Serving,
        Duration::from_secs(20),
    )
    .await;
    let (token, admin) = admin_token();
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", served.addr))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut client = InvitationServiceClient::new(channel.clone());
    for _ in 0..3 {
        client
            .list_invitations(authorized(&token, ListInvitationsRequest::default()))
            .await
            .expect("listed");
    }
    let refused = client
        .list_invitations(ListInvitationsRequest::default())
        .await
        .expect_err("no token");
    assert_eq!(refused.code(), Code::Unauthenticated);
    // A path of the caller's making: counted, but not under its name.
    let mut raw = tonic::client::Grpc::new(channel);
    raw.ready().await.expect("ready");
    let unknown = raw
        .unary::<ListInvitationsRequest, ListInvitationsResponse, _>(
            tonic::Request::new(ListInvitationsRequest::default()),
            PathAndQuery::from_static("/evil.v1.Made/up-8f2c1d"),
            tonic_prost::ProstCodec::default(),
        )
        .await
        .expect_err("no such method");
    assert_eq!(unknown.code(), Code::Unimplemented);
    let missing = client
        .get_invitation(authorized(
            &token,
            GetInvitationRequest {
                invitation_id: uuid::Uuid::new_v4().to_string(),
            },
        ))
        .await
        .expect_err("no such invitation");
    assert_eq!(missing.code(), Code::NotFound);

    let list = "grpc_type=\"unary\",grpc_service=\"invitations.v1.InvitationService\",\
                grpc_method=\"ListInvitations\"";
    let response = scrape_until(
        ops,
        &[
            handled("ListInvitations", "OK", 3),
            handled("ListInvitations", "Unauthenticated", 1),
            handled("unknown", "Unimplemented", 1),
            format!("grpc_server_started_total{{{list}}} 4"),
            format!("grpc_server_msg_sent_total{{{list}}} 3"),
            format!("grpc_server_handling_seconds_count{{{list}}} 4"),
            "# TYPE grpc_server_handling_seconds histogram".to_owned(),
        ],
    )
    .await;
    let (head, text) = response.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    let received = text
        .lines()
        .find(|line| line.starts_with(&format!("grpc_server_msg_received_total{{{list}}}")))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|count| count.parse::<u64>().ok());
    assert!(
        received.is_some_and(|count| count >= 3),
        "three requests read: {received:?}"
    );
    assert!(text.contains("invitations_build_info{version="), "{text}");

    // The service's own: outcomes by documented reason, readiness, the pool.
    let outcome = |method: &str, outcome: &str, count: u64| {
        let service = if method == "unknown" {
            "unknown"
        } else {
            "invitations.v1.InvitationService"
        };
        format!(
            "invitations_rpc_outcomes_total{{grpc_service=\"{service}\",\
             grpc_method=\"{method}\",outcome=\"{outcome}\"}} {count}"
        )
    };
    let response = scrape_until(
        ops,
        &[
            outcome("ListInvitations", "OK", 3),
            outcome("ListInvitations", "UNAUTHORIZED", 1),
            outcome("GetInvitation", "INVITATION_NOT_FOUND", 1),
            outcome("unknown", "UNDOCUMENTED", 1),
            "invitations_ready 1".to_owned(),
            "# TYPE invitations_db_pool_connections gauge".to_owned(),
            "invitations_db_pool_connections{state=\"in_use\"}".to_owned(),
            "invitations_db_pool_connections{state=\"idle\"}".to_owned(),
        ],
    )
    .await;
    let (_, text) = response.split_once("\r\n\r\n").expect("an HTTP response");
    let max_connections = text
        .lines()
        .find_map(|line| line.strip_prefix("invitations_db_pool_max_connections "))
        .and_then(|value| value.parse::<f64>().ok());
    assert!(
        max_connections.is_some_and(|max| max >= 1.0),
        "the pool's bound: {max_connections:?}"
    );

    // An open watch is counted while it lasts.
    let watch = client
        .watch_invitations(authorized(&token, WatchInvitationsRequest::default()))
        .await
        .expect("watching")
        .into_inner();
    scrape_until(ops, &["invitations_watch_streams 1".to_owned()]).await;
    drop(watch);
    scrape_until(ops, &["invitations_watch_streams 0".to_owned()]).await;
    for private in [admin.to_string(), "up-8f2c1d".to_owned(), "evil".to_owned()] {
        assert!(!text.contains(&private), "{private} in a label");
    }
}

/// A free port on the loopback, for an operations listener.
fn free_ops_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("a free port")
        .local_addr()
        .expect("address")
}

/// The value of a series without labels.
pub(crate) fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(&format!("{series} ")))
        .and_then(|value| value.parse().ok())
}

/// The relay's series: the events it relayed, and the age of the oldest event it has not,
/// which grows while NATS does not answer and is 0 once the relay has caught up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_reports_what_it_relayed_and_how_far_behind_it_is() {
    let Some(nats) = crate::relay::nats_url() else {
        return;
    };
    // Nothing listens on port 1: the relay leads, and cannot publish.
    for (url, reachable) in [("nats://127.0.0.1:1", false), (nats.as_str(), true)] {
        let ops = free_ops_addr();
        let served = Served::start(&[
            ("INVITATIONS_OPS_LISTEN_ADDR", &ops.to_string()),
            ("INVITATIONS_NATS_URL", url),
            ("INVITATIONS_NATS_LEASE_MS", "600"),
        ]);
        await_health(
            ops,
            READINESS,
            ServingStatus::Serving,
            Duration::from_secs(20),
        )
        .await;
        let (token, _) = admin_token();
        let mut client = InvitationServiceClient::connect(format!("http://{}", served.addr))
            .await
            .expect("connect");
        for n in 0..3 {
            client
                .create_invitation(authorized(
                    &token,
                    crate::common::create_request(format!("relayed{n}@acme.example")),
                ))
                .await
                .expect("created");
        }
        if reachable {
            let text = scrape_until(
                ops,
                &[
                    "invitations_events_relayed_total 3".to_owned(),
                    "invitations_outbox_lag_seconds 0".to_owned(),
                ],
            )
            .await;
            assert!(text.contains("# TYPE invitations_events_relayed_total counter"));
        } else {
            // Each try measures the lag before it asks JetStream, which answers nothing
            // for 10 s (async-nats' request timeout); the next try finds the events older
            // than a second.
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let text = scrape(ops).await;
                let lag = value(&text, "invitations_outbox_lag_seconds");
                if lag.is_some_and(|lag| lag > 1.0) {
                    assert_eq!(value(&text, "invitations_events_relayed_total"), None);
                    break;
                }
                assert!(Instant::now() < deadline, "lag {lag:?} in\n{text}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
