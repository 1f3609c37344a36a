//! The tonic adapter: parse the request into a domain command, call the domain, convert the
//! result. No rules live here.
mod convert;

use std::future::Future;
use std::time::Instant;

use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::auth::{Caller, EnterpriseAdmin};
use crate::domain::{InvitationService, Timestamp};
use crate::error::Error;
use crate::proto::invitations::v1 as pb;
use crate::proto::invitations::v1::invitation_service_server::InvitationService as InvitationRpc;

pub use convert::wire_invitation;

/// Implements `invitations.v1.InvitationService`.
#[derive(Clone)]
pub struct InvitationApi {
    service: InvitationService,
}

impl InvitationApi {
    pub fn new(service: InvitationService) -> Self {
        Self { service }
    }
}

/// The enterprise administrator behind a request the auth interceptor let through.
fn enterprise_admin<T>(request: &Request<T>) -> Result<EnterpriseAdmin, Error> {
    request
        .extensions()
        .get::<Caller>()
        .ok_or_else(|| Error::Internal("the auth interceptor is not installed".into()))?
        .enterprise_admin()
}

/// Runs one RPC inside a span that records its method, outcome and latency.
async fn observe<T>(
    method: &'static str,
    rpc: impl Future<Output = Result<T, Error>>,
) -> Result<T, Status> {
    let span = tracing::info_span!("rpc", method, code = tracing::field::Empty);
    async move {
        let started = Instant::now();
        let outcome = rpc.await.map_err(Status::from);
        let code = outcome
            .as_ref()
            .map_or_else(|status| status.code(), |_| tonic::Code::Ok);
        tracing::Span::current().record("code", tracing::field::debug(code));
        let latency_ms = started.elapsed().as_secs_f64() * 1e3;
        tracing::info!(latency_ms, "rpc finished");
        outcome
    }
    .instrument(span)
    .await
}

#[tonic::async_trait]
impl InvitationRpc for InvitationApi {
    async fn list_invitations(
        &self,
        request: Request<pb::ListInvitationsRequest>,
    ) -> Result<Response<pb::ListInvitationsResponse>, Status> {
        observe("ListInvitations", async {
            let admin = enterprise_admin(&request)?;
            let query = convert::list_query(admin, request.into_inner())?;
            let page = self.service.list(query).await?;
            Ok(Response::new(pb::ListInvitationsResponse {
                items: page
                    .items
                    .iter()
                    .map(|i| wire_invitation(i, page.evaluated_at))
                    .collect(),
                next_page_token: page.next_page_token.unwrap_or_default(),
            }))
        })
        .await
    }

    async fn get_invitation(
        &self,
        request: Request<pb::GetInvitationRequest>,
    ) -> Result<Response<pb::Invitation>, Status> {
        observe("GetInvitation", async {
            let admin = enterprise_admin(&request)?;
            let id = convert::invitation_id(&request.get_ref().invitation_id)?;
            let invitation = self.service.get(admin.enterprise, id).await?;
            Ok(Response::new(wire_invitation(
                &invitation,
                Timestamp::now(),
            )))
        })
        .await
    }

    async fn create_invitation(
        &self,
        request: Request<pb::CreateInvitationRequest>,
    ) -> Result<Response<pb::Invitation>, Status> {
        observe("CreateInvitation", async {
            let admin = enterprise_admin(&request)?;
            let command = convert::create_command(admin, request.into_inner())?;
            let invitation = self.service.create(command).await?;
            Ok(Response::new(wire_invitation(
                &invitation,
                Timestamp::now(),
            )))
        })
        .await
    }

    async fn cancel_invitation(
        &self,
        request: Request<pb::CancelInvitationRequest>,
    ) -> Result<Response<pb::Invitation>, Status> {
        observe("CancelInvitation", async {
            let admin = enterprise_admin(&request)?;
            let (metadata, _, message) = request.into_parts();
            let command = convert::cancel_command(admin, &metadata, message)?;
            let invitation = self.service.cancel(command).await?;
            Ok(Response::new(wire_invitation(
                &invitation,
                Timestamp::now(),
            )))
        })
        .await
    }
}
