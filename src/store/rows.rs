//! The one row of the `invitations` table that reads leave it with ([`InvitationRow`]), its
//! one decoder into the domain's [`Invitation`], and the one encoder the other way.
use sea_orm::{ActiveValue::Set, FromQueryResult};
use uuid::Uuid;

use super::entity::{ActiveModel, Column};
use crate::domain::{
    CancelReason, EmailAddress, EnterpriseId, Error, Invitation, InvitationId, InvitationStatus,
    RoleRef, Scope, Timestamp, UserRef, Version,
};

/// What every read selects and every conditional write returns. The link hash is not among
/// them: it never leaves the table. Nor is the case-folded e-mail: it is there for lookups,
/// and the domain folds the address itself when it needs it.
pub const READ_COLUMNS: [Column; 18] = [
    Column::Id,
    Column::EnterpriseId,
    Column::Scope,
    Column::EmailConstraint,
    Column::Role,
    Column::Status,
    Column::InvitedBy,
    Column::PendingHumanActorRef,
    Column::ChallengeRef,
    Column::CreatedAt,
    Column::UpdatedAt,
    Column::ExpiresAt,
    Column::AcceptedAt,
    Column::AcceptedBy,
    Column::CancelledAt,
    Column::CancelReason,
    Column::CancelledBy,
    Column::Version,
];

/// A row of [`READ_COLUMNS`]; also the stored form of a replayed response
/// (`idempotency_keys.response`, JSON).
#[derive(Debug, Clone, FromQueryResult, serde::Serialize, serde::Deserialize)]
pub struct InvitationRow {
    pub id: Uuid,
    pub enterprise_id: Uuid,
    pub scope: String,
    pub email_constraint: String,
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
}

fn corrupt(id: Uuid, column: &str) -> Error {
    Error::Internal(format!("stored invitation {id} has an invalid {column}"))
}

impl TryFrom<InvitationRow> for Invitation {
    type Error = Error;

    /// A row changed behind the service's back so that it no longer reads as an invitation
    /// is an internal error naming the row and the column, never a panic.
    fn try_from(row: InvitationRow) -> Result<Self, Error> {
        let id = row.id;
        let user = |raw: &str, column: &str| {
            UserRef::from_stored(raw.as_bytes()).ok_or_else(|| corrupt(id, column))
        };
        let optional_user =
            |raw: Option<&str>, column: &str| raw.map(|r| user(r, column)).transpose();
        Ok(Invitation {
            id: InvitationId::from_uuid(id),
            enterprise: EnterpriseId::from_uuid(row.enterprise_id),
            scope: Scope::from_stored(row.scope).map_err(|_| corrupt(id, "scope"))?,
            role: RoleRef::from_stored(row.role.as_bytes()).ok_or_else(|| corrupt(id, "role"))?,
            stored_status: InvitationStatus::parse_stored(&row.status)
                .ok_or_else(|| corrupt(id, "status"))?,
            invited_by: user(&row.invited_by, "invited_by")?,
            pending_human_actor: optional_user(
                row.pending_human_actor_ref.as_deref(),
                "pending_human_actor_ref",
            )?,
            accepted_by: optional_user(row.accepted_by.as_deref(), "accepted_by")?,
            cancelled_by: optional_user(row.cancelled_by.as_deref(), "cancelled_by")?,
            email: EmailAddress::from_stored(row.email_constraint),
            challenge_ref: row.challenge_ref,
            created_at: Timestamp::from_unix_micros(row.created_at),
            updated_at: Timestamp::from_unix_micros(row.updated_at),
            expires_at: Timestamp::from_unix_micros(row.expires_at),
            accepted_at: row.accepted_at.map(Timestamp::from_unix_micros),
            cancelled_at: row.cancelled_at.map(Timestamp::from_unix_micros),
            cancel_reason: row.cancel_reason.map(CancelReason::from_stored),
            version: Version::from_stored(row.version),
        })
    }
}

/// A whole invitation as a row to insert (a new row has no link).
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
        link_token_hash: Set(None),
    }
}

#[cfg(test)]
mod tests {
    use sea_orm::{Iden, Iterable};

    use super::*;

    #[test]
    fn reads_select_every_column_but_the_link_hash_and_folded_email() {
        let declared: Vec<String> = Column::iter()
            .filter(|c| !matches!(c, Column::LinkTokenHash | Column::EmailNormalized))
            .map(|c| c.to_string())
            .collect();
        let read: Vec<String> = READ_COLUMNS.iter().map(|c| c.to_string()).collect();
        assert_eq!(read, declared);
    }
}
