//! The gRPC load generator: connections, callers' tokens, and the List and Cancel loops.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use invitations::auth::{Authenticator, ENTERPRISE_ADMIN};
use invitations::domain::{EnterpriseId, Etag, InvitationId, UserRef, Version};
use invitations::proto::invitations::v1 as pb;
use invitations::proto::invitations::v1::invitation_service_client::InvitationServiceClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;

use crate::closed_loop::{Sample, Span, closed_loop, splitmix};
use crate::plan::Layout;
use crate::seed::{POOL_PREFIX, admin_uuid, enterprise_uuid, mk_uuid};
use crate::service::{JWT_ISSUER, JWT_SECRET};

pub(crate) async fn connect_clients(
    addr: SocketAddr,
    conc: usize,
) -> Vec<InvitationServiceClient<Channel>> {
    let channels = connect_channels(addr, conc).await;
    channels
        .into_iter()
        .map(InvitationServiceClient::new)
        .collect()
}

pub(crate) async fn connect_channels(addr: SocketAddr, conc: usize) -> Vec<Channel> {
    // One HTTP/2 connection per 8 callers, as a client pool would.
    let conns = conc.div_ceil(8).max(1);
    let mut channels = Vec::with_capacity(conns);
    for _ in 0..conns {
        let channel = Channel::from_shared(format!("http://{addr}"))
            .expect("uri")
            .connect()
            .await
            .expect("connect to the server");
        channels.push(channel);
    }
    channels
}

/// A ListInvitations answer as the load generator reads it: the items are counted and left
/// encoded, and the next page's token is skipped. Parsing every item into a `pb::Invitation`
/// (about 15 strings apiece) took the load generator about 98 µs of CPU per 50-item page,
/// as much as the no-op server spent answering it, so the "transport limit" was the load
/// generator's limit. The API tests check what the items hold.
#[derive(Clone, PartialEq, prost::Message)]
struct ListedPage {
    #[prost(bytes = "bytes", repeated, tag = "1")]
    items: Vec<bytes::Bytes>,
}

async fn list_page(
    channel: Channel,
    request: tonic::Request<pb::ListInvitationsRequest>,
) -> Result<ListedPage, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(format!("not ready: {e}")))?;
    let path =
        http::uri::PathAndQuery::from_static("/invitations.v1.InvitationService/ListInvitations");
    let codec = tonic_prost::ProstCodec::<pb::ListInvitationsRequest, ListedPage>::default();
    Ok(grpc.unary(request, path, codec).await?.into_inner())
}

fn code_name(status: &tonic::Status) -> String {
    format!("{:?}", status.code())
}

pub(crate) struct ListLoad {
    pub(crate) channels: Vec<Channel>,
    pub(crate) tokens: Arc<Vec<MetadataValue<Ascii>>>,
    pub(crate) page_size: i32,
    pub(crate) page_token: String,
    pub(crate) expect_items: usize,
}

pub(crate) async fn grpc_list(load: ListLoad, conc: usize, span: Span) -> Sample {
    let load = Arc::new(load);
    closed_loop(conc, span, move |index, task| {
        let load = load.clone();
        async move {
            let channel = load.channels[task % load.channels.len()].clone();
            let token = &load.tokens[(splitmix(index as u64) % load.tokens.len() as u64) as usize];
            let mut request = tonic::Request::new(pb::ListInvitationsRequest {
                page_size: load.page_size,
                page_token: load.page_token.clone(),
                ..Default::default()
            });
            request
                .metadata_mut()
                .insert("authorization", token.clone());
            match list_page(channel, request).await {
                Ok(page) if page.items.len() == load.expect_items => Ok(()),
                Ok(page) => Err(format!("WRONG_ITEM_COUNT_{}", page.items.len())),
                Err(status) => Err(code_name(&status)),
            }
        }
    })
    .await
}

/// One invitation to cancel: id, etag, the caller's token.
#[derive(Clone)]
pub(crate) struct CancelTarget {
    pub(crate) id: String,
    pub(crate) etag: String,
    pub(crate) token: MetadataValue<Ascii>,
}

pub(crate) async fn grpc_cancel(
    clients: Vec<InvitationServiceClient<Channel>>,
    targets: Arc<Vec<CancelTarget>>,
    conc: usize,
    span: Span,
) -> Sample {
    closed_loop(conc, span, move |index, task| {
        let mut client = clients[task % clients.len()].clone();
        let target = targets[index % targets.len()].clone();
        async move {
            let mut request = tonic::Request::new(pb::CancelInvitationRequest {
                invitation_id: target.id,
                etag: target.etag,
                ..Default::default()
            });
            request.metadata_mut().insert("authorization", target.token);
            match client.cancel_invitation(request).await {
                Ok(_) => Ok(()),
                Err(status) => Err(code_name(&status)),
            }
        }
    })
    .await
}

fn bearer(token: &str) -> MetadataValue<Ascii> {
    format!("Bearer {token}").parse().expect("ascii token")
}

pub(crate) fn tokens_for(layout: Layout) -> Arc<Vec<MetadataValue<Ascii>>> {
    let auth = Authenticator::hs256(JWT_SECRET.as_bytes(), JWT_ISSUER, JWT_ISSUER);
    let admin = UserRef::from_uuid(admin_uuid());
    Arc::new(
        (0..layout.enterprises())
            .map(|e| {
                bearer(&auth.mint(
                    admin,
                    Some(EnterpriseId::from_uuid(enterprise_uuid(e))),
                    &[ENTERPRISE_ADMIN.to_owned()],
                    Duration::from_secs(6 * 3600),
                ))
            })
            .collect(),
    )
}

pub(crate) fn cancel_targets(
    layout: Layout,
    tokens: &[MetadataValue<Ascii>],
    from: u64,
    count: usize,
) -> Arc<Vec<CancelTarget>> {
    Arc::new(
        (from..from + count as u64)
            .map(|k| {
                let id = InvitationId::from_uuid(mk_uuid(POOL_PREFIX, k));
                CancelTarget {
                    id: id.to_string(),
                    etag: Etag::of(id, Version::FIRST).as_str().to_owned(),
                    token: tokens[(k % layout.enterprises()) as usize].clone(),
                }
            })
            .collect(),
    )
}
