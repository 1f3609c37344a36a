//! The one decoder of an `invitations` row ([`into_domain`]), and of an event row
//! ([`into_domain_event`], whose snapshot goes through the first): every path that reads a row
//! borrows its values into a [`StoredRow`] and hands it here, so the rules of a stored
//! invitation (which references, which statuses, what a corrupt value means) are written
//! once. The ways values are borrowed are the positional-decoding accelerator
//! (docs/adr/0004-positional-row-decoding.md): by position from sqlx rows, from PostgreSQL's
//! binary values directly, from rusqlite (`sqlite_reader`), or from a SeaORM model
//! (transactions and replayed responses).
use sea_orm::sqlx::postgres::{PgRow, PgValueFormat};
use uuid::Uuid;

use super::entity::Model;
use super::outbox;
use super::queries::READ_COLUMNS;
use crate::domain::{
    Actor, CancelReason, EmailAddress, EnterpriseId, Error, EventId, EventRecord, EventType,
    Invitation, InvitationEvent, InvitationId, InvitationStatus, RequestId, RoleRef, Scope,
    Timestamp, TraceContext, UserRef, Version,
};

fn corrupt(id: uuid::Uuid, column: &str) -> Error {
    Error::Internal(format!("stored invitation {id} has an invalid {column}"))
}

/// One stored invitation, borrowed from wherever it was read (a sqlx row or a SeaORM model).
pub(super) struct StoredRow<'a> {
    pub(super) id: Uuid,
    pub(super) enterprise_id: Uuid,
    pub(super) scope: &'a str,
    pub(super) email_constraint: &'a str,
    // References are kept as bytes: `UserRef::from_stored` and `RoleRef::from_stored` read
    // them without a UTF-8 check first.
    pub(super) role: &'a [u8],
    pub(super) status: &'a str,
    pub(super) invited_by: &'a [u8],
    pub(super) pending_human_actor_ref: Option<&'a [u8]>,
    pub(super) challenge_ref: Option<&'a str>,
    pub(super) created_at: i64,
    pub(super) updated_at: i64,
    pub(super) expires_at: i64,
    pub(super) accepted_at: Option<i64>,
    pub(super) accepted_by: Option<&'a [u8]>,
    pub(super) cancelled_at: Option<i64>,
    pub(super) cancel_reason: Option<&'a str>,
    pub(super) cancelled_by: Option<&'a [u8]>,
    pub(super) version: i64,
}

impl<'a> StoredRow<'a> {
    pub(super) fn of_model(row: &'a Model) -> Self {
        Self {
            id: row.id,
            enterprise_id: row.enterprise_id,
            scope: &row.scope,
            email_constraint: &row.email_constraint,
            role: row.role.as_bytes(),
            status: &row.status,
            invited_by: row.invited_by.as_bytes(),
            pending_human_actor_ref: row.pending_human_actor_ref.as_deref().map(str::as_bytes),
            challenge_ref: row.challenge_ref.as_deref(),
            created_at: row.created_at,
            updated_at: row.updated_at,
            expires_at: row.expires_at,
            accepted_at: row.accepted_at,
            accepted_by: row.accepted_by.as_deref().map(str::as_bytes),
            cancelled_at: row.cancelled_at,
            cancel_reason: row.cancel_reason.as_deref(),
            cancelled_by: row.cancelled_by.as_deref().map(str::as_bytes),
            version: row.version,
        }
    }

    /// Reads a row selected with [`READ_COLUMNS`], by position. The columns are this
    /// table's, selected by name, so their types are known: `try_get_unchecked` skips sqlx's
    /// per-column type-compatibility check (a clone and compare of the type info on every
    /// value); a value that does not decode is still an error, never a panic.
    pub(super) fn of_sqlx<R>(row: &'a R) -> Result<Self, sea_orm::sqlx::Error>
    where
        R: sea_orm::sqlx::Row,
        usize: sea_orm::sqlx::ColumnIndex<R>,
        Uuid: sea_orm::sqlx::Decode<'a, R::Database>,
        &'a str: sea_orm::sqlx::Decode<'a, R::Database>,
        &'a [u8]: sea_orm::sqlx::Decode<'a, R::Database>,
        i64: sea_orm::sqlx::Decode<'a, R::Database>,
    {
        Ok(Self {
            id: row.try_get_unchecked(0)?,
            enterprise_id: row.try_get_unchecked(1)?,
            scope: row.try_get_unchecked(2)?,
            email_constraint: row.try_get_unchecked(3)?,
            role: row.try_get_unchecked(4)?,
            status: row.try_get_unchecked(5)?,
            invited_by: row.try_get_unchecked(6)?,
            pending_human_actor_ref: row.try_get_unchecked(7)?,
            challenge_ref: row.try_get_unchecked(8)?,
            created_at: row.try_get_unchecked(9)?,
            updated_at: row.try_get_unchecked(10)?,
            expires_at: row.try_get_unchecked(11)?,
            accepted_at: row.try_get_unchecked(12)?,
            accepted_by: row.try_get_unchecked(13)?,
            cancelled_at: row.try_get_unchecked(14)?,
            cancel_reason: row.try_get_unchecked(15)?,
            cancelled_by: row.try_get_unchecked(16)?,
            version: row.try_get_unchecked(17)?,
        })
    }

    /// Reads a PostgreSQL row selected with [`READ_COLUMNS`], from its values' bytes.
    /// sqlx prepares every statement the store runs, so values come in PostgreSQL's binary
    /// format: a `uuid` is its 16 bytes, a `bigint` 8 bytes big-endian, text its UTF-8
    /// bytes. sqlx's `Decode` goes through a per-value dispatch and NULL and length checks
    /// that build boxed errors, 18 values a row (`docs/adr/0004-positional-row-decoding.md`).
    /// A value in any other shape is an error, never a panic.
    pub(super) fn of_postgres(row: &'a PgRow) -> Result<Self, sea_orm::sqlx::Error> {
        let values = PgValues::of(row)?;
        Ok(Self {
            id: values.uuid(0)?,
            enterprise_id: values.uuid(1)?,
            scope: values.text(2)?,
            email_constraint: values.text(3)?,
            role: values.bytes(4)?,
            status: values.text(5)?,
            invited_by: values.bytes(6)?,
            pending_human_actor_ref: values.optional_bytes(7),
            challenge_ref: values.optional_text(8)?,
            created_at: values.bigint(9)?,
            updated_at: values.bigint(10)?,
            expires_at: values.bigint(11)?,
            accepted_at: values.optional_bigint(12)?,
            accepted_by: values.optional_bytes(13),
            cancelled_at: values.optional_bigint(14)?,
            cancel_reason: values.optional_text(15)?,
            cancelled_by: values.optional_bytes(16),
            version: values.bigint(17)?,
        })
    }
}

/// The values of one PostgreSQL row in binary format, by position (see
/// [`StoredRow::of_postgres`]); `None` is NULL.
struct PgValues<'a>([Option<&'a [u8]>; READ_COLUMNS.len()]);

impl<'a> PgValues<'a> {
    /// Every value's bytes, read in one pass. Each `try_get_raw` clones the column's type
    /// and hands back a value that the caller moves: reading them all in one tight loop, and
    /// checking each typed value afterwards, keeps that cost out of the per-column readers.
    fn of(row: &'a PgRow) -> Result<Self, sea_orm::sqlx::Error> {
        use sea_orm::sqlx::{Row, ValueRef};
        let mut values = [None; READ_COLUMNS.len()];
        for (index, slot) in values.iter_mut().enumerate() {
            let value = row.try_get_raw(index)?;
            if value.is_null() {
                continue;
            }
            if value.format() != PgValueFormat::Binary {
                return Err(Self::failure(index, "a value in text format"));
            }
            *slot = Some(value.as_bytes().map_err(|e| Self::failure(index, e))?);
        }
        Ok(Self(values))
    }

    fn optional_bytes(&self, index: usize) -> Option<&'a [u8]> {
        self.0[index]
    }

    fn optional_text(&self, index: usize) -> Result<Option<&'a str>, sea_orm::sqlx::Error> {
        self.optional_bytes(index)
            .map(|bytes| std::str::from_utf8(bytes).map_err(|e| Self::failure(index, e)))
            .transpose()
    }

    fn optional_bigint(&self, index: usize) -> Result<Option<i64>, sea_orm::sqlx::Error> {
        self.optional_bytes(index)
            .map(|bytes| {
                <[u8; 8]>::try_from(bytes)
                    .map(i64::from_be_bytes)
                    .map_err(|_| Self::failure(index, "not a bigint"))
            })
            .transpose()
    }

    fn bytes(&self, index: usize) -> Result<&'a [u8], sea_orm::sqlx::Error> {
        Self::required(index, self.optional_bytes(index))
    }

    fn text(&self, index: usize) -> Result<&'a str, sea_orm::sqlx::Error> {
        Self::required(index, self.optional_text(index)?)
    }

    fn bigint(&self, index: usize) -> Result<i64, sea_orm::sqlx::Error> {
        Self::required(index, self.optional_bigint(index)?)
    }

    fn uuid(&self, index: usize) -> Result<Uuid, sea_orm::sqlx::Error> {
        Uuid::from_slice(self.bytes(index)?).map_err(|_| Self::failure(index, "not a uuid"))
    }

    fn required<T>(index: usize, value: Option<T>) -> Result<T, sea_orm::sqlx::Error> {
        value.ok_or_else(|| Self::failure(index, sea_orm::sqlx::error::UnexpectedNullError))
    }

    fn failure(
        index: usize,
        source: impl Into<sea_orm::sqlx::error::BoxDynError>,
    ) -> sea_orm::sqlx::Error {
        sea_orm::sqlx::Error::ColumnDecode {
            index: index.to_string(),
            source: source.into(),
        }
    }
}

pub(super) fn into_domain(row: StoredRow<'_>) -> Result<Invitation, Error> {
    let id = row.id;
    let user =
        |raw: &[u8], column: &str| UserRef::from_stored(raw).ok_or_else(|| corrupt(id, column));
    let optional_user = |raw: Option<&[u8]>, column: &str| raw.map(|r| user(r, column)).transpose();
    Ok(Invitation {
        id: InvitationId::from_uuid(id),
        enterprise: EnterpriseId::from_uuid(row.enterprise_id),
        scope: Scope::from_stored(row.scope.to_owned()).map_err(|_| corrupt(id, "scope"))?,
        role: RoleRef::from_stored(row.role).ok_or_else(|| corrupt(id, "role"))?,
        stored_status: InvitationStatus::parse_stored(row.status)
            .ok_or_else(|| corrupt(id, "status"))?,
        invited_by: user(row.invited_by, "invited_by")?,
        pending_human_actor: optional_user(row.pending_human_actor_ref, "pending_human_actor_ref")?,
        accepted_by: optional_user(row.accepted_by, "accepted_by")?,
        cancelled_by: optional_user(row.cancelled_by, "cancelled_by")?,
        email: EmailAddress::from_stored(row.email_constraint.to_owned()),
        challenge_ref: row.challenge_ref.map(str::to_owned),
        created_at: Timestamp::from_unix_micros(row.created_at),
        updated_at: Timestamp::from_unix_micros(row.updated_at),
        expires_at: Timestamp::from_unix_micros(row.expires_at),
        accepted_at: row.accepted_at.map(Timestamp::from_unix_micros),
        cancelled_at: row.cancelled_at.map(Timestamp::from_unix_micros),
        cancel_reason: row
            .cancel_reason
            .map(|reason| CancelReason::from_stored(reason.to_owned())),
        version: Version::from_stored(row.version),
    })
}

pub(super) fn model_into_domain(row: &Model) -> Result<Invitation, Error> {
    into_domain(StoredRow::of_model(row))
}

/// A row of [`READ_COLUMNS`] read by position from a SeaORM result (a statement run in a
/// transaction), as a model without its link hash (never read).
pub(super) fn model_of_result(row: &sea_orm::QueryResult) -> Result<Model, sea_orm::DbErr> {
    Ok(Model {
        id: row.try_get_by_index(0)?,
        enterprise_id: row.try_get_by_index(1)?,
        scope: row.try_get_by_index(2)?,
        email_constraint: row.try_get_by_index(3)?,
        // Not among the columns read; the domain folds the address itself.
        email_normalized: String::new(),
        role: row.try_get_by_index(4)?,
        status: row.try_get_by_index(5)?,
        invited_by: row.try_get_by_index(6)?,
        pending_human_actor_ref: row.try_get_by_index(7)?,
        challenge_ref: row.try_get_by_index(8)?,
        created_at: row.try_get_by_index(9)?,
        updated_at: row.try_get_by_index(10)?,
        expires_at: row.try_get_by_index(11)?,
        accepted_at: row.try_get_by_index(12)?,
        accepted_by: row.try_get_by_index(13)?,
        cancelled_at: row.try_get_by_index(14)?,
        cancel_reason: row.try_get_by_index(15)?,
        cancelled_by: row.try_get_by_index(16)?,
        version: row.try_get_by_index(17)?,
        link_token_hash: None,
    })
}

/// The one decoder of an event row: its record, and its snapshot through the invitation's.
pub(super) fn into_domain_event(row: &outbox::Model) -> Result<InvitationEvent, Error> {
    let corrupt = |column: &str| {
        Error::Internal(format!(
            "stored event {} has an invalid {column}",
            row.event_id
        ))
    };
    let record = EventRecord {
        id: EventId::from_uuid(row.event_id),
        kind: EventType::parse_stored(&row.event_type).ok_or_else(|| corrupt("event_type"))?,
        occurred_at: Timestamp::from_unix_micros(row.occurred_at),
        actor: Actor::parse_stored(&row.actor).ok_or_else(|| corrupt("actor"))?,
        request_id: row.request_id.map(RequestId::from_uuid),
        // Only the service writes it, and it is no part of the change: one that does not
        // read back (a row edited by hand) is dropped rather than failing the event.
        trace: row
            .traceparent
            .as_deref()
            .and_then(TraceContext::parse_traceparent),
    };
    let invitation = into_domain(StoredRow {
        id: row.invitation_id,
        enterprise_id: row.enterprise_id,
        scope: &row.scope,
        email_constraint: &row.email_constraint,
        role: row.role.as_bytes(),
        status: &row.status,
        invited_by: row.invited_by.as_bytes(),
        pending_human_actor_ref: row.pending_human_actor_ref.as_deref().map(str::as_bytes),
        challenge_ref: row.challenge_ref.as_deref(),
        created_at: row.created_at,
        updated_at: row.updated_at,
        expires_at: row.expires_at,
        accepted_at: row.accepted_at,
        accepted_by: row.accepted_by.as_deref().map(str::as_bytes),
        cancelled_at: row.cancelled_at,
        cancel_reason: row.cancel_reason.as_deref(),
        cancelled_by: row.cancelled_by.as_deref().map(str::as_bytes),
        version: row.version,
    })?;
    Ok(InvitationEvent {
        position: row.position,
        record,
        invitation,
    })
}
