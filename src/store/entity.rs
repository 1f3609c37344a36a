//! The SeaORM entity of the `invitations` table. Models never leave `store/`.
use sea_orm::ActiveValue::Set;
use sea_orm::entity::prelude::*;

use crate::domain::{Invitation, Timestamp};

/// Also the stored form of a replayed response (`idempotency_keys.response`), without the
/// link hash, which never leaves the table.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, serde::Serialize, serde::Deserialize)]
#[sea_orm(table_name = "invitations")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub enterprise_id: Uuid,
    pub scope: String,
    pub email_constraint: String,
    pub email_normalized: String,
    pub role: String,
    pub status: String,
    pub invited_by: String,
    pub pending_human_actor_ref: Option<String>,
    pub challenge_ref: Option<String>,
    /// Microseconds since the Unix epoch (see the migration for why).
    pub created_at: i64,
    pub updated_at: i64,
    pub expires_at: i64,
    pub accepted_at: Option<i64>,
    pub accepted_by: Option<String>,
    pub cancelled_at: Option<i64>,
    pub cancel_reason: Option<String>,
    pub cancelled_by: Option<String>,
    pub version: i64,
    /// SHA-256 of the current link token; NULL when there is none (or it was revoked).
    #[serde(skip)]
    pub link_token_hash: Option<Vec<u8>>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

/// A whole invitation as a row to insert.
pub fn active_model(invitation: &Invitation) -> ActiveModel {
    ActiveModel {
        id: Set(invitation.id.as_uuid()),
        enterprise_id: Set(invitation.enterprise.as_uuid()),
        scope: Set(invitation.scope.as_str().to_owned()),
        email_constraint: Set(invitation.email.as_str().to_owned()),
        email_normalized: Set(invitation.email.normalized()),
        role: Set(invitation.role.to_string()),
        status: Set(invitation.stored_status.as_str().to_owned()),
        invited_by: Set(invitation.invited_by.to_string()),
        pending_human_actor_ref: Set(invitation.pending_human_actor.map(|u| u.to_string())),
        challenge_ref: Set(invitation.challenge_ref.clone()),
        created_at: Set(invitation.created_at.unix_micros()),
        updated_at: Set(invitation.updated_at.unix_micros()),
        expires_at: Set(invitation.expires_at.unix_micros()),
        accepted_at: Set(invitation.accepted_at.map(Timestamp::unix_micros)),
        accepted_by: Set(invitation.accepted_by.map(|u| u.to_string())),
        cancelled_at: Set(invitation.cancelled_at.map(Timestamp::unix_micros)),
        cancel_reason: Set(invitation
            .cancel_reason
            .as_ref()
            .map(|r| r.as_str().to_owned())),
        cancelled_by: Set(invitation.cancelled_by.map(|u| u.to_string())),
        version: Set(invitation.version.get()),
        // A new row has no link; IssueInvitationToken sets one.
        link_token_hash: Set(None),
    }
}
