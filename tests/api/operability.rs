//! Health, rate limits, load shedding, request ids and limits, through the real server.
use std::time::Duration;

use invitations::proto::invitations::v1::{CreateInvitationRequest, ListInvitationsRequest};
use sea_orm::{ConnectionTrait, Database};
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_types::StatusExt;
use uuid::Uuid;

use crate::common::{
    Backend, Fixture, Row, SQLITE_WRITE_LOCK, TestApp, assert_row, cancel_as_stored,
    cancel_stuck_in_the_only_slot, create_request,
};
use crate::{on_both_stores, on_each_backend};

/// The health entry that follows the database: the service's readiness.
pub const READINESS: &str = "invitations.v1.InvitationService";

const TEN_SECONDS: Duration = Duration::from_secs(10);

pub async fn health_client(addr: std::net::SocketAddr) -> HealthClient<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    HealthClient::new(channel)
}

/// Waits, through `Watch`, until `service` reports `wanted`; fails after `within`.
pub async fn await_health(
    addr: std::net::SocketAddr,
    service: &str,
    wanted: ServingStatus,
    within: Duration,
) {
    let mut client = health_client(addr).await;
    let mut updates = client
        .watch(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .expect("watch")
        .into_inner();
    let reached = tokio::time::timeout(within, async {
        while let Some(update) = updates.message().await.expect("health stream") {
            if update.status == wanted as i32 {
                return;
            }
        }
        panic!("the health stream ended before {service} was {wanted:?}");
    })
    .await;
    assert!(
        reached.is_ok(),
        "{service} did not become {wanted:?} within {within:?}"
    );
}

pub async fn check(addr: std::net::SocketAddr, service: &str) -> Result<i32, tonic::Status> {
    let mut client = health_client(addr).await;
    client
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .map(|r| r.into_inner().status)
}

async fn health_needs_no_token_and_reports_every_entry(app: &TestApp) {
    for service in ["", READINESS] {
        await_health(app.addr, service, ServingStatus::Serving, TEN_SECONDS).await;
    }
    assert_eq!(
        check(app.addr, "liveness").await.expect("liveness"),
        ServingStatus::Serving as i32
    );
    let unknown = check(app.addr, "no.such.Service")
        .await
        .expect_err("unknown entry");
    assert_eq!(unknown.code(), Code::NotFound);
}

async fn rate_limits_are_per_caller_with_the_real_delay(backend: Backend) {
    let app = TestApp::spawn_configured(backend, |config| {
        config.rate_limit_per_second = 1;
        config.rate_limit_burst = 3;
    })
    .await;
    let list = |token: String| {
        let caller = app.caller(&token);
        async move { caller.list(Default::default()).await }
    };
    for _ in 0..3 {
        list(app.token.clone()).await.expect("within the burst");
    }
    let limited = list(app.token.clone()).await.expect_err("over the burst");
    let metadata = assert_row(&limited, Row::RateLimited);
    let retry_after_ms: u64 = metadata["retryAfterMs"].parse().expect("a number");
    assert!((1..=1000).contains(&retry_after_ms), "{retry_after_ms}");
    let delay = limited
        .get_details_retry_info()
        .expect("RetryInfo")
        .retry_delay
        .expect("a delay");
    assert!(
        delay > Duration::ZERO && delay <= Duration::from_secs(1),
        "{delay:?}"
    );
    // Another caller of the same enterprise, and one of another, are not affected.
    list(app.colleague()).await.expect("another caller");
    list(app.other_enterprise_admin().1)
        .await
        .expect("another enterprise");
    // After the advertised delay the caller may call again.
    tokio::time::sleep(Duration::from_millis(retry_after_ms)).await;
    list(app.token.clone()).await.expect("after the delay");
    app.finish().await;
}

on_each_backend!(
    rate_limits_are_per_caller_with_the_real_delay:
    rate_limits_sqlite,
    rate_limits_postgres
);

/// With one RPC slot, a cancel stuck behind a held SQLite write lock fills it: the next RPC
/// is refused at once, health still answers, and the stuck cancel completes afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_is_shed_fast_and_health_is_never_shed() {
    let app = TestApp::spawn_configured(Backend::Sqlite, |config| {
        config.max_concurrent_requests = 1;
        config.sqlite_busy_timeout_ms = 10_000;
    })
    .await;
    await_health(app.addr, READINESS, ServingStatus::Serving, TEN_SECONDS).await;
    let invitation = app.insert(Fixture::pending("slow@acme.example")).await;
    let lock = app.hold_lock(SQLITE_WRITE_LOCK).await;
    let (stuck, refused) = cancel_stuck_in_the_only_slot(&app, &invitation).await;
    assert_row(&refused, Row::ServerOverloaded);
    let started = std::time::Instant::now();
    let again = app.get("").await.expect_err("shed");
    assert_eq!(again.code(), Code::ResourceExhausted);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "shedding answers at once"
    );
    assert_eq!(
        check(app.addr, READINESS)
            .await
            .expect("health is not shed"),
        ServingStatus::Serving as i32
    );
    stuck.completes_once(lock).await;
    app.finish().await;
}

async fn request_ids_are_echoed_or_generated(app: &TestApp) {
    let mut request = app.request(ListInvitationsRequest::default());
    request
        .metadata_mut()
        .insert("x-request-id", "req-42".parse().expect("ascii"));
    let response = app.client().list_invitations(request).await.expect("list");
    assert_eq!(
        response
            .metadata()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok()),
        Some("req-42")
    );
    let response = app
        .client()
        .list_invitations(app.request(ListInvitationsRequest::default()))
        .await
        .expect("list");
    let generated = response
        .metadata()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .expect("an id");
    assert!(Uuid::parse_str(generated).is_ok(), "{generated}");
    // Errors carry it too, even those refused before the handler.
    let mut request = tonic::Request::new(ListInvitationsRequest::default());
    request
        .metadata_mut()
        .insert("x-request-id", "req-43".parse().expect("ascii"));
    let refused = app
        .client()
        .list_invitations(request)
        .await
        .expect_err("no token");
    assert_eq!(
        refused
            .metadata()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok()),
        Some("req-43")
    );
}

async fn oversized_requests_are_refused(app: &TestApp) {
    let status = app
        .create(CreateInvitationRequest {
            role: "x".repeat(100 * 1024),
            ..create_request("big@acme.example")
        })
        .await
        .expect_err("over the request size limit");
    assert_eq!(status.code(), Code::OutOfRange);
    // The server keeps serving.
    app.list(Default::default()).await.expect("still serving");
}

on_both_stores!(
    health_needs_no_token_and_reports_every_entry,
    request_ids_are_echoed_or_generated,
    oversized_requests_are_refused,
);

/// A client deadline shorter than the server's timeout wins. The abandoned cancels leave
/// the row whole (cancelled exactly once, or not at all), and their connections go back to
/// a pool of two: the server keeps serving afterwards.
async fn client_deadlines_are_honoured_and_leave_no_half_write(backend: Backend) {
    let postgres = matches!(backend, Backend::Postgres(_));
    let app = TestApp::spawn_configured(backend, |config| {
        config.sqlite_busy_timeout_ms = 10_000;
        config.db_max_connections = 2;
    })
    .await;
    let invitation = app.insert(Fixture::pending("deadline@acme.example")).await;
    // Block writes to the row from a second connection.
    let block = if postgres {
        format!(
            "SELECT 1 FROM invitations WHERE id = '{}' FOR UPDATE",
            invitation.id
        )
    } else {
        SQLITE_WRITE_LOCK.to_owned()
    };
    let lock = app.hold_lock(&block).await;

    let cancel = || {
        let mut request = app.request(cancel_as_stored(&invitation));
        request.set_timeout(Duration::from_millis(300));
        request
    };
    for _ in 0..3 {
        let started = std::time::Instant::now();
        let status = app
            .client()
            .cancel_invitation(cancel())
            .await
            .expect_err("the deadline passes first");
        assert!(
            matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
            "{status:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "answered at the deadline: {:?}",
            started.elapsed()
        );
    }
    lock.release().await;

    // DEADLINE_EXCEEDED leaves the outcome unknown to the client: an abandoned write may
    // still land once the lock is free. Either way it is whole, and at most one of the three
    // (they share one etag) can win; a retry with the etag settles it.
    let retry = app.cancel(cancel_as_stored(&invitation)).await;
    let stored = app.stored(invitation.id).await;
    assert_eq!(
        stored.version,
        invitation.version.next(),
        "exactly one write in all"
    );
    assert_eq!(
        stored.stored_status,
        invitations::domain::InvitationStatus::Cancelled
    );
    assert!(stored.cancelled_at.is_some() && stored.cancelled_by.is_some());
    match retry {
        Ok(cancelled) => assert_eq!(cancelled.etag, stored.etag().as_str()),
        Err(status) => {
            // An abandoned cancel landed first: the retry learns the new etag.
            let metadata = assert_row(&status, Row::EtagMismatch);
            assert_eq!(metadata["etag"], stored.etag().as_str());
        }
    }
    // The pool of two was not leaked by the abandoned calls.
    for _ in 0..10 {
        app.list(Default::default()).await.expect("still serving");
    }
    app.finish().await;
}

on_each_backend!(
    client_deadlines_are_honoured_and_leave_no_half_write:
    client_deadlines_sqlite,
    client_deadlines_postgres
);

/// An unexpected answer from the database (here: its table is gone) is the 502 row, with a
/// generic message: no SQL, no driver text.
async fn unexpected_database_answers_are_upstream_errors(app: &TestApp) {
    let admin = Database::connect(app.settings.store.url.expose())
        .await
        .expect("second connection");
    admin
        .execute_unprepared("ALTER TABLE invitations RENAME TO invitations_gone")
        .await
        .expect("rename");
    let status = app
        .list(Default::default())
        .await
        .expect_err("the table is gone");
    assert_row(&status, Row::UpstreamError);
    let everything = format!("{status:?}").to_lowercase();
    assert!(
        !everything.contains("select") && !everything.contains("invitations_gone"),
        "{everything}"
    );
    admin
        .execute_unprepared("ALTER TABLE invitations_gone RENAME TO invitations")
        .await
        .expect("rename back");
    admin.close().await.expect("close");
    app.list(Default::default()).await.expect("back");
}

on_both_stores!(unexpected_database_answers_are_upstream_errors);

/// Server reflection answers in both versions (grpcurl 1.8.7 and older speak only
/// v1alpha), and knows the error-detail types, so grpcurl can print them as JSON.
async fn reflection_serves_v1_and_v1alpha(app: &TestApp) {
    use tonic_reflection::pb::{v1, v1alpha};
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", app.addr))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let ask_v1 = |request: v1::server_reflection_request::MessageRequest| {
        let mut client = v1::server_reflection_client::ServerReflectionClient::new(channel.clone());
        async move {
            let request = v1::ServerReflectionRequest {
                host: String::new(),
                message_request: Some(request),
            };
            let mut answers = client
                .server_reflection_info(tokio_stream::iter([request]))
                .await
                .expect("v1 reflection")
                .into_inner();
            answers
                .message()
                .await
                .expect("an answer")
                .expect("one message")
                .message_response
                .expect("a response")
        }
    };
    match ask_v1(v1::server_reflection_request::MessageRequest::ListServices(
        String::new(),
    ))
    .await
    {
        v1::server_reflection_response::MessageResponse::ListServicesResponse(list) => {
            let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
            assert!(
                names.contains(&"invitations.v1.InvitationService".to_owned()),
                "{names:?}"
            );
            assert!(
                names.contains(&"grpc.health.v1.Health".to_owned()),
                "{names:?}"
            );
        }
        other => panic!("unexpected {other:?}"),
    }
    for symbol in [
        "google.rpc.ErrorInfo",
        "google.rpc.PreconditionFailure",
        "invitations.v1.Invitation",
    ] {
        match ask_v1(
            v1::server_reflection_request::MessageRequest::FileContainingSymbol(symbol.into()),
        )
        .await
        {
            v1::server_reflection_response::MessageResponse::FileDescriptorResponse(files) => {
                assert!(!files.file_descriptor_proto.is_empty(), "{symbol}");
            }
            other => panic!("{symbol}: unexpected {other:?}"),
        }
    }
    let mut client =
        v1alpha::server_reflection_client::ServerReflectionClient::new(channel.clone());
    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
        ),
    };
    let answer = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("v1alpha reflection")
        .into_inner()
        .message()
        .await
        .expect("an answer")
        .expect("one message");
    match answer.message_response.expect("a response") {
        v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(list) => {
            assert!(
                list.service
                    .iter()
                    .any(|s| s.name == "invitations.v1.InvitationService")
            );
        }
        other => panic!("unexpected {other:?}"),
    }
}

on_both_stores!(reflection_serves_v1_and_v1alpha);

/// With `INVITATIONS_OPS_LISTEN_ADDR`, health is also served on a plaintext port of its own
/// (for probes that speak no TLS), and only health: calls are not served there. It follows
/// readiness through the shutdown's grace period like the main port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_served_on_the_operations_listener_alone() {
    let mut app = TestApp::spawn_configured(Backend::Sqlite, |config| {
        config.ops_listen_addr = Some("127.0.0.1:0".parse().expect("address"));
        config.shutdown_grace_ms = 2_000;
    })
    .await;
    let ops = app.ops_addr.expect("an operations address");
    assert_ne!(ops, app.addr);
    await_health(ops, READINESS, ServingStatus::Serving, TEN_SECONDS).await;
    await_health(ops, "liveness", ServingStatus::Serving, TEN_SECONDS).await;
    let mut calls = invitations::proto::invitations::v1::invitation_service_client::InvitationServiceClient::connect(
        format!("http://{ops}"),
    )
    .await
    .expect("connect");
    let refused = calls
        .list_invitations(app.request(ListInvitationsRequest::default()))
        .await
        .expect_err("no calls on the operations port");
    assert_eq!(refused.code(), Code::Unimplemented, "{refused:?}");
    app.begin_shutdown();
    await_health(
        ops,
        READINESS,
        ServingStatus::NotServing,
        Duration::from_secs(1),
    )
    .await;
    app.finish().await;
}
