//! The `invitation_events` entity (the outbox; see the migration for its shape): an event's
//! record, then the invitation as the change left it, under the invitations table's names.
use sea_orm::ActiveValue::Set;
use sea_orm::entity::prelude::*;

use super::entity;
use crate::domain::{EventRecord, Invitation};

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "invitation_events")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub position: i64,
    pub event_id: Uuid,
    pub event_type: String,
    pub occurred_at: i64,
    pub actor: String,
    pub request_id: Option<Uuid>,
    pub invitation_id: Uuid,
    pub enterprise_id: Uuid,
    pub scope: String,
    pub email_constraint: String,
    pub role: String,
    pub status: String,
    pub invited_by: String,
    pub pending_human_actor_ref: Option<String>,
    pub challenge_ref: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    pub expires_at: i64,
    pub accepted_at: Option<i64>,
    pub accepted_by: Option<String>,
    pub cancelled_at: Option<i64>,
    pub cancel_reason: Option<String>,
    pub cancelled_by: Option<String>,
    pub version: i64,
    pub traceparent: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

/// The snapshot's columns, in the order of `queries::READ_COLUMNS` (the invitations table's),
/// so a statement returning them is read by the invitation decoders.
pub const SNAPSHOT_COLUMNS: [Column; 18] = [
    Column::InvitationId,
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

/// The record's columns, in the order `queries` binds them.
pub const RECORD_COLUMNS: [Column; 6] = [
    Column::EventId,
    Column::EventType,
    Column::OccurredAt,
    Column::Actor,
    Column::RequestId,
    Column::Traceparent,
];

/// The record's values, in the order of [`RECORD_COLUMNS`].
pub fn record_values(record: &EventRecord) -> [sea_orm::Value; 6] {
    [
        record.id.as_uuid().into(),
        record.kind.as_str().into(),
        record.occurred_at.unix_micros().into(),
        record.actor.to_string().into(),
        record.request_id.map(|r| r.as_uuid()).into(),
        record.trace.map(|trace| trace.traceparent()).into(),
    ]
}

/// `record` about `invitation` as a row to insert (the position is the database's).
pub fn active_model(record: &EventRecord, invitation: &Invitation) -> ActiveModel {
    let row = entity::active_model(invitation);
    ActiveModel {
        position: sea_orm::ActiveValue::NotSet,
        event_id: Set(record.id.as_uuid()),
        event_type: Set(record.kind.as_str().to_owned()),
        occurred_at: Set(record.occurred_at.unix_micros()),
        actor: Set(record.actor.to_string()),
        request_id: Set(record.request_id.map(|r| r.as_uuid())),
        traceparent: Set(record.trace.map(|trace| trace.traceparent())),
        invitation_id: row.id,
        enterprise_id: row.enterprise_id,
        scope: row.scope,
        email_constraint: row.email_constraint,
        role: row.role,
        status: row.status,
        invited_by: row.invited_by,
        pending_human_actor_ref: row.pending_human_actor_ref,
        challenge_ref: row.challenge_ref,
        created_at: row.created_at,
        updated_at: row.updated_at,
        expires_at: row.expires_at,
        accepted_at: row.accepted_at,
        accepted_by: row.accepted_by,
        cancelled_at: row.cancelled_at,
        cancel_reason: row.cancel_reason,
        cancelled_by: row.cancelled_by,
        version: row.version,
    }
}
