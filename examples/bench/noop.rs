//! The no-op InvitationService: the transport limit.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;

use invitations::domain::{EmailAddress, InvitationId, InvitationStatus, Timestamp, Version};
use invitations::proto::invitations::v1 as pb;
use invitations::proto::invitations::v1::invitation_service_server::{
    InvitationService, InvitationServiceServer,
};

use crate::plan::{Layout, Plan};
use crate::seed::{Clock, POOL_PREFIX, mk_uuid, seeded_invitation};
use crate::servers::{ChildGuard, Running, Server, pinned};
use crate::service::service_settings;

#[derive(Clone)]
struct Noop {
    items: Arc<Vec<pb::Invitation>>,
    cancelled: Arc<pb::Invitation>,
}

impl Noop {
    fn new() -> Self {
        let clock = Clock::now();
        let now = Timestamp::now();
        let items: Vec<pb::Invitation> = (0..1000)
            .map(|i| {
                invitations::grpc::wire_invitation(seeded_invitation(Layout::Single, i, clock), now)
            })
            .collect();
        // A freshly cancelled pool row, as the real cancel returns it.
        let mut pool_row = seeded_invitation(Layout::Single, 0, clock);
        pool_row.id = InvitationId::from_uuid(mk_uuid(POOL_PREFIX, 123_456));
        pool_row.email = EmailAddress::parse("pool123456@example.com").expect("address");
        pool_row.stored_status = InvitationStatus::Cancelled;
        pool_row.cancelled_at = Some(now);
        pool_row.cancelled_by = Some(pool_row.invited_by);
        pool_row.updated_at = now;
        pool_row.version = Version::FIRST.next();
        let cancelled = invitations::grpc::wire_invitation(pool_row, now);
        Self {
            items: Arc::new(items),
            cancelled: Arc::new(cancelled),
        }
    }
}

type Reply<T> = Result<tonic::Response<T>, tonic::Status>;

#[tonic::async_trait]
impl InvitationService for Noop {
    /// Answers `page_size` prebuilt items (0: 50), so the harness can match any page's size.
    async fn list_invitations(
        &self,
        request: tonic::Request<pb::ListInvitationsRequest>,
    ) -> Reply<pb::ListInvitationsResponse> {
        let n = match request.get_ref().page_size {
            0 => 50,
            n => (n.max(0) as usize).min(self.items.len()),
        };
        Ok(tonic::Response::new(pb::ListInvitationsResponse {
            items: self.items[..n].to_vec(),
            next_page_token: "x".repeat(if n == 50 { 110 } else { 0 }),
        }))
    }
    async fn get_invitation(
        &self,
        _: tonic::Request<pb::GetInvitationRequest>,
    ) -> Reply<pb::Invitation> {
        Ok(tonic::Response::new(self.items[0].clone()))
    }
    async fn create_invitation(
        &self,
        _: tonic::Request<pb::CreateInvitationRequest>,
    ) -> Reply<pb::Invitation> {
        Ok(tonic::Response::new(self.items[0].clone()))
    }
    async fn cancel_invitation(
        &self,
        _: tonic::Request<pb::CancelInvitationRequest>,
    ) -> Reply<pb::Invitation> {
        Ok(tonic::Response::new((*self.cancelled).clone()))
    }
    async fn issue_invitation_token(
        &self,
        _: tonic::Request<pb::IssueInvitationTokenRequest>,
    ) -> Reply<pb::IssueInvitationTokenResponse> {
        Ok(tonic::Response::new(pb::IssueInvitationTokenResponse {
            invitation: Some(self.items[0].clone()),
            token: String::new(),
        }))
    }
    async fn accept_invitation(
        &self,
        _: tonic::Request<pb::AcceptInvitationRequest>,
    ) -> Reply<pb::Invitation> {
        Ok(tonic::Response::new(self.items[0].clone()))
    }

    type WatchInvitationsStream =
        tokio_stream::Empty<Result<pb::WatchInvitationsResponse, tonic::Status>>;

    /// The transport limit is measured on unary calls; the no-op server has no events.
    async fn watch_invitations(
        &self,
        _: tonic::Request<pb::WatchInvitationsRequest>,
    ) -> Reply<Self::WatchInvitationsStream> {
        Err(tonic::Status::unimplemented(
            "the no-op server has no events",
        ))
    }
}

/// Serves the no-op service on the service's own transport settings; no layers, no auth.
pub(crate) async fn serve_noop(listener: tokio::net::TcpListener) {
    let limits = service_settings(
        "sqlite://unused.db",
        "127.0.0.1:0".parse().expect("addr"),
        None,
        &crate::plan::RateLimit::default(),
    )
    .server;
    let service = InvitationServiceServer::new(Noop::new())
        .max_decoding_message_size(limits.max_request_bytes);
    tonic::transport::Server::builder()
        .timeout(limits.request_timeout)
        .http2_keepalive_interval(Some(limits.http2_keepalive_interval))
        .http2_keepalive_timeout(Some(limits.http2_keepalive_timeout))
        .http2_max_header_list_size(limits.max_metadata_bytes)
        .max_connection_age(limits.max_connection_age)
        .add_service(service)
        // TCP_NODELAY on accepted sockets: without it a small response waits for the
        // client's delayed ACK (~40 ms). This is the limit the service should reach.
        .serve_with_incoming(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
        )
        .await
        .expect("the no-op server runs");
}

pub(crate) async fn start_noop(plan: &Plan) -> Server {
    if plan.inproc {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let handle = tokio::spawn(serve_noop(listener));
        return Server {
            addr,
            running: Running::Noop(handle),
        };
    }
    let exe = std::env::current_exe().expect("own path");
    let mut cmd = pinned(&exe, plan.pin.then_some(0));
    cmd.arg("--serve-noop")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = cmd.spawn().expect("start the no-op server");
    let stdout = child.stdout.take().expect("piped");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("no-op address");
    let addr: SocketAddr = line
        .trim()
        .strip_prefix("listening ")
        .and_then(|a| a.parse().ok())
        .expect("no-op address line");
    Server {
        addr,
        running: Running::Process(ChildGuard::new(child)),
    }
}
