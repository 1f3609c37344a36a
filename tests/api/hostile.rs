//! Oversized and hostile requests: each gets its documented answer, and other clients keep
//! being served meanwhile.
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use invitations::proto::invitations::v1::{
    CancelInvitationRequest, CreateInvitationRequest, Invitation, InvitationStatus as WireStatus,
    ListInvitationsRequest,
};
use tonic::Code;

use crate::common::{
    Fixture, Row, TestApp, assert_invalid, assert_row, cancel_as_stored, create_request,
    list_request,
};
use crate::on_both_stores;

/// CancelInvitationRequest with `bytes` where the contract has `string`: what a client
/// with a broken encoder (or an attacker) can put on the wire.
#[derive(Clone, PartialEq, prost::Message)]
struct RawCancelRequest {
    #[prost(bytes = "vec", tag = "1")]
    invitation_id: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    reason: Vec<u8>,
    #[prost(bytes = "vec", tag = "3")]
    etag: Vec<u8>,
}

async fn send_raw(app: &TestApp, message: RawCancelRequest) -> Result<Invitation, tonic::Status> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", app.addr))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("ready");
    let path =
        http::uri::PathAndQuery::from_static("/invitations.v1.InvitationService/CancelInvitation");
    grpc.unary(
        app.request(message),
        path,
        tonic_prost::ProstCodec::default(),
    )
    .await
    .map(tonic::Response::into_inner)
}

async fn hostile_requests_get_documented_answers_while_others_are_served(app: &TestApp) {
    let invitation = app.insert(Fixture::pending("victim@acme.example")).await;
    // Arrange: a well-behaved client in a loop.
    let stop = Arc::new(AtomicBool::new(false));
    let (served, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let bystander = tokio::spawn({
        let (stop, served, failed) = (stop.clone(), served.clone(), failed.clone());
        let admin = app.caller(&app.token);
        async move {
            while !stop.load(Ordering::Relaxed) {
                match admin.list(Default::default()).await {
                    Ok(_) => served.fetch_add(1, Ordering::Relaxed),
                    Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }
    });

    // A 5 MiB request.
    let status = app
        .create(CreateInvitationRequest {
            role: "r".repeat(5 * 1024 * 1024),
            ..create_request("big@acme.example")
        })
        .await
        .expect_err("5 MiB");
    let metadata = assert_row(&status, Row::RequestTooLarge);
    assert_eq!(metadata["maxRequestBytes"], "65536");
    // A reason of `length` characters.
    let with_reason = |length: usize| CancelInvitationRequest {
        reason: "x".repeat(length),
        ..cancel_as_stored(&invitation)
    };
    // A 1 MB reason: over the message limit before it is even a reason.
    let status = app
        .cancel(with_reason(1_000_000))
        .await
        .expect_err("1 MB reason");
    assert_row(&status, Row::RequestTooLarge);
    // A reason within the message limit but over 500 characters.
    let status = app
        .cancel(with_reason(10_000))
        .await
        .expect_err("long reason");
    assert_invalid(&status, &[("reason", Row::ValueTooLong)]);
    // 10 000 statuses in a filter.
    let status = app
        .list(list_request(&[WireStatus::Pending; 10_000]))
        .await
        .expect_err("10 000 statuses");
    assert_row(&status, Row::ValueOutOfRange);
    // Metadata over 16 KiB.
    let mut request = app.request(ListInvitationsRequest::default());
    request
        .metadata_mut()
        .insert("x-padding", "p".repeat(20 * 1024).parse().expect("ascii"));
    let status = app
        .client()
        .list_invitations(request)
        .await
        .expect_err("metadata over 16 KiB");
    // Refused by the HTTP/2 layer before gRPC sees it: HTTP 431, which gRPC clients
    // report as UNKNOWN (the gRPC HTTP-to-status mapping).
    assert_eq!(status.code(), Code::Unknown, "{status:?}");
    assert!(status.message().contains("431"), "{status:?}");
    // Not UTF-8 where the contract says string.
    for raw in [
        RawCancelRequest {
            invitation_id: vec![0xff, 0xfe, 0x00],
            etag: b"W/\"1.x\"".to_vec(),
            reason: vec![],
        },
        RawCancelRequest {
            invitation_id: invitation.id.to_string().into_bytes(),
            etag: invitation.etag().as_str().as_bytes().to_vec(),
            reason: vec![b'o', b'k', 0xc3, 0x28],
        },
    ] {
        let status = send_raw(app, raw).await.expect_err("not UTF-8");
        assert_row(&status, Row::InvalidEncoding);
    }
    // The well-formed twin of the raw request works, so the refusals were about encoding.
    let fine = RawCancelRequest {
        invitation_id: invitation.id.to_string().into_bytes(),
        etag: invitation.etag().as_str().as_bytes().to_vec(),
        reason: "fine".into(),
    };
    assert_eq!(
        send_raw(app, fine).await.expect("valid bytes").status,
        WireStatus::Cancelled as i32
    );

    stop.store(true, Ordering::Relaxed);
    bystander.await.expect("bystander");
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "the bystander was never refused"
    );
    assert!(served.load(Ordering::Relaxed) > 0);
}

on_both_stores!(hostile_requests_get_documented_answers_while_others_are_served);

/// A scope with `.`, `..` or empty segments is refused naming the field, on create and on
/// list, so no consumer that normalizes paths can read it as another enterprise's.
async fn scopes_that_walk_out_of_their_enterprise_are_refused(app: &TestApp) {
    let own = format!("enterprises/{}", app.enterprise.as_uuid());
    let other = format!("enterprises/{}", uuid::Uuid::new_v4());
    for scope in [
        format!("{own}/teams/../../../{other}"),
        format!("{own}/../.."),
        format!("{own}/teams/./blue"),
    ] {
        let create = CreateInvitationRequest {
            scope: scope.clone(),
            ..create_request("dots@acme.example")
        };
        let status = app.create(create).await.expect_err(&scope);
        assert_invalid(&status, &[("scope", Row::InvalidFormat)]);
        let list = ListInvitationsRequest {
            scope: scope.clone(),
            ..Default::default()
        };
        let status = app.list(list).await.expect_err(&scope);
        assert_invalid(&status, &[("scope", Row::InvalidFormat)]);
    }
    let listed = app.list(Default::default()).await.expect("list");
    assert!(listed.items.is_empty(), "nothing was stored");
}

on_both_stores!(scopes_that_walk_out_of_their_enterprise_are_refused);
