//! The tonic adapter: parse the request into a domain command, call the domain, convert the
//! result. No rules live here. Telemetry per RPC is the `middleware::ObserveLayer`'s.
pub mod codec;
pub mod convert;
pub mod status;
pub mod wire;

use std::pin::Pin;
use std::sync::Arc;

use tokio_stream::{Stream, StreamExt};

use tonic::{Request, Response, Status};

use crate::auth::{Caller, EnterpriseAdmin};
use crate::domain::{Error, Forbidden};
use crate::domain::{InvitationRepository, InvitationService, Timestamp};
use crate::limits::{Admission, ResponseSize, Slot};
use crate::proto::invitations::v1 as pb;
use crate::proto::server::invitation_service_server::InvitationService as InvitationRpc;
use crate::watch::{WatchEnd, WatchItem, Watcher};

pub use convert::wire_invitation;
pub use wire::WireInvitation;
use wire::{
    IssueInvitationTokenResponse, ListInvitationsResponse, WatchInvitationsResponse, WireEvent,
};

/// Implements `invitations.v1.InvitationService`.
#[derive(Clone)]
pub struct InvitationApi<R> {
    service: InvitationService<R>,
    watcher: Watcher<R>,
    admission: Arc<Admission>,
}

impl<R: InvitationRepository> InvitationApi<R> {
    pub fn new(
        service: InvitationService<R>,
        watcher: Watcher<R>,
        admission: Arc<Admission>,
    ) -> Self {
        Self {
            service,
            watcher,
            admission,
        }
    }

    /// The call's slot among those in flight (`limits::admission`): taken here, once the
    /// request is complete and authenticated, and held until the handler returns.
    fn admit<T>(&self, request: &Request<T>) -> Result<Slot, Error> {
        self.admission.admit(caller(request)?)
    }
}

/// The caller the auth interceptor let through.
fn caller<T>(request: &Request<T>) -> Result<&Caller, Error> {
    request
        .extensions()
        .get::<Arc<Caller>>()
        .map(|caller| &**caller)
        .ok_or_else(|| Error::Internal("the auth interceptor is not installed".into()))
}

fn enterprise_admin<T>(request: &Request<T>) -> Result<EnterpriseAdmin, Error> {
    caller(request)?.enterprise_admin()
}

/// The answer to send: the message, with its size for the unread-bytes limit
/// (`limits::stream`), or the error through THE table (`status.rs`), logged here when it is
/// the server's failure.
fn answer<T: prost::Message>(outcome: Result<T, Error>) -> Result<Response<T>, Status> {
    outcome
        .map(|message| {
            let size = ResponseSize(message.encoded_len());
            let mut response = Response::new(message);
            response.extensions_mut().insert(size);
            response
        })
        .map_err(|error| {
            status::log_server_side(&error);
            Status::from(error)
        })
}

/// A watch's message as sent.
fn watch_message(item: WatchItem) -> WatchInvitationsResponse {
    let mut message = WatchInvitationsResponse::default();
    match item {
        WatchItem::InitialState {
            items,
            evaluated_at,
        } => {
            message.initial_state = items
                .into_iter()
                .map(|invitation| WireInvitation::new(invitation, evaluated_at))
                .collect();
        }
        WatchItem::InitialStateComplete { cursor } => {
            message.initial_state_complete = true;
            message.cursor = cursor;
        }
        WatchItem::Events { events, cursor } => {
            message.events = events
                .into_iter()
                .map(|(shared, at)| {
                    let (encoded, cursor_at) = shared.encoded.get_or_init(|| {
                        WireEvent::encode_shared(convert::wire_event(&shared.event, String::new()))
                    });
                    WireEvent::new(encoded.clone(), *cursor_at, at)
                })
                .collect();
            message.cursor = cursor;
        }
        WatchItem::Checkpoint { cursor } => message.cursor = cursor,
        WatchItem::End { reason, cursor } => {
            message.cursor = cursor;
            message.end = match reason {
                WatchEnd::MaxAge => pb::WatchEnd::MaxAge,
                WatchEnd::Shutdown => pb::WatchEnd::Shutdown,
            } as i32;
        }
    }
    message
}

type WatchResponses = Pin<Box<dyn Stream<Item = Result<WatchInvitationsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl<R: InvitationRepository> InvitationRpc for InvitationApi<R> {
    type WatchInvitationsStream = WatchResponses;

    /// Opening a watch takes a slot among the calls in flight, like any call; the stream
    /// that follows counts among the long-lived streams (`limits::stream`) instead, so
    /// watches never starve unary calls of slots.
    async fn watch_invitations(
        &self,
        request: Request<pb::WatchInvitationsRequest>,
    ) -> Result<Response<WatchResponses>, Status> {
        let opened = async {
            let admin = enterprise_admin(&request)?;
            let _slot = self.admit(&request)?;
            let query = convert::watch_query(admin, request.into_inner())?;
            self.watcher.open(query).await
        }
        .await;
        match opened {
            Ok(stream) => Ok(Response::new(Box::pin(stream.map(|item| {
                item.map(watch_message).map_err(|error| {
                    status::log_server_side(&error);
                    Status::from(error)
                })
            })) as WatchResponses)),
            Err(error) => {
                status::log_server_side(&error);
                Err(Status::from(error))
            }
        }
    }
    async fn list_invitations(
        &self,
        request: Request<pb::ListInvitationsRequest>,
    ) -> Result<Response<ListInvitationsResponse>, Status> {
        answer(
            async {
                let admin = enterprise_admin(&request)?;
                let _slot = self.admit(&request)?;
                let query = convert::list_query(admin, request.into_inner())?;
                let page = self.service.list(query).await?;
                let evaluated_at = page.evaluated_at;
                Ok(ListInvitationsResponse {
                    items: page
                        .items
                        .into_iter()
                        .map(|i| WireInvitation::new(i, evaluated_at))
                        .collect(),
                    next_page_token: page.next_page_token.unwrap_or_default(),
                })
            }
            .await,
        )
    }

    async fn get_invitation(
        &self,
        request: Request<pb::GetInvitationRequest>,
    ) -> Result<Response<WireInvitation>, Status> {
        answer(
            async {
                let admin = enterprise_admin(&request)?;
                let _slot = self.admit(&request)?;
                let id = convert::invitation_id(&request.get_ref().invitation_id)?;
                let invitation = self.service.get(admin.enterprise, id).await?;
                Ok(WireInvitation::new(invitation, Timestamp::now()))
            }
            .await,
        )
    }

    async fn create_invitation(
        &self,
        request: Request<pb::CreateInvitationRequest>,
    ) -> Result<Response<WireInvitation>, Status> {
        answer(
            async {
                let admin = enterprise_admin(&request)?;
                let _slot = self.admit(&request)?;
                let mut command = convert::create_command(admin, request.into_inner())?;
                command.trace = crate::telemetry::current_trace();
                let invitation = self.service.create(command).await?;
                Ok(WireInvitation::new(invitation, Timestamp::now()))
            }
            .await,
        )
    }

    async fn cancel_invitation(
        &self,
        request: Request<pb::CancelInvitationRequest>,
    ) -> Result<Response<WireInvitation>, Status> {
        answer(
            async {
                let admin = enterprise_admin(&request)?;
                let _slot = self.admit(&request)?;
                let (metadata, _, message) = request.into_parts();
                let mut command = convert::cancel_command(admin, &metadata, message)?;
                command.trace = crate::telemetry::current_trace();
                let invitation = self.service.cancel(command).await?;
                Ok(WireInvitation::new(invitation, Timestamp::now()))
            }
            .await,
        )
    }

    async fn issue_invitation_token(
        &self,
        request: Request<pb::IssueInvitationTokenRequest>,
    ) -> Result<Response<IssueInvitationTokenResponse>, Status> {
        answer(
            async {
                let admin = enterprise_admin(&request)?;
                let _slot = self.admit(&request)?;
                let (metadata, _, message) = request.into_parts();
                let mut command = convert::issue_token_command(admin, &metadata, message)?;
                command.trace = crate::telemetry::current_trace();
                let (invitation, token) = self.service.issue_token(command).await?;
                Ok(IssueInvitationTokenResponse {
                    invitation: Some(WireInvitation::new(invitation, Timestamp::now())),
                    token: token.reveal().to_owned(),
                })
            }
            .await,
        )
    }

    async fn accept_invitation(
        &self,
        request: Request<pb::AcceptInvitationRequest>,
    ) -> Result<Response<WireInvitation>, Status> {
        answer(
            async {
                let caller = caller(&request)?;
                let _slot = self.admit(&request)?;
                let email = caller
                    .verified_email
                    .clone()
                    .ok_or(Error::PermissionDenied(Forbidden::EmailNotVerified))?;
                let mut command =
                    convert::accept_command(caller.subject, email, &request.get_ref().token)?;
                command.trace = crate::telemetry::current_trace();
                let invitation = self.service.accept(command).await?;
                Ok(WireInvitation::new(invitation, Timestamp::now()))
            }
            .await,
        )
    }
}
