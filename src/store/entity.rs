//! The SeaORM entity of the `invitations` table. Models never leave `store/`.
use sea_orm::entity::prelude::*;

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
