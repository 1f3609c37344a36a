//! The outbox: one row per change of an invitation, written in the transaction of the change;
//! and the index the expiry sweeper walks.
//!
//! A row is the event's own fields and then the invitation as the change left it, under the
//! invitations table's column names (its `id` as `invitation_id`), so the store reads a
//! snapshot with the same decoder as an invitation. The link hash is never copied. When
//! the invitations table gains a column, this one gains it too (expand both, in one
//! migration).
//!
//! `position` is the order readers deliver events in. It is taken when the event is inserted,
//! after the change has locked its row, so the events of one invitation take positions in
//! the order they commit; across invitations, PostgreSQL may commit a later position first,
//! which readers account for (see the store).
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum InvitationEvents {
    Table,
    Position,
    EventId,
    EventType,
    OccurredAt,
    Actor,
    RequestId,
    InvitationId,
    EnterpriseId,
    Scope,
    EmailConstraint,
    Role,
    Status,
    InvitedBy,
    PendingHumanActorRef,
    ChallengeRef,
    CreatedAt,
    UpdatedAt,
    ExpiresAt,
    AcceptedAt,
    AcceptedBy,
    CancelledAt,
    CancelReason,
    CancelledBy,
    Version,
}

const TYPES: [&str; 5] = ["created", "link_issued", "accepted", "cancelled", "expired"];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        use InvitationEvents as E;
        let text = |column: E| ColumnDef::new(column).string().not_null().to_owned();
        let optional_text = |column: E| ColumnDef::new(column).string().null().to_owned();
        let micros = |column: E| ColumnDef::new(column).big_integer().not_null().to_owned();
        let optional_micros = |column: E| ColumnDef::new(column).big_integer().null().to_owned();
        manager
            .create_table(
                Table::create()
                    .table(E::Table)
                    .col(
                        ColumnDef::new(E::Position)
                            .big_integer()
                            .not_null()
                            .auto_increment()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(E::EventId).uuid().not_null().unique_key())
                    .col(
                        ColumnDef::new(E::EventType)
                            .string_len(16)
                            .not_null()
                            .check(Expr::col(E::EventType).is_in(TYPES)),
                    )
                    .col(micros(E::OccurredAt))
                    .col(text(E::Actor))
                    .col(ColumnDef::new(E::RequestId).uuid().null())
                    .col(ColumnDef::new(E::InvitationId).uuid().not_null())
                    .col(ColumnDef::new(E::EnterpriseId).uuid().not_null())
                    .col(text(E::Scope))
                    .col(text(E::EmailConstraint))
                    .col(text(E::Role))
                    .col(ColumnDef::new(E::Status).string_len(16).not_null())
                    .col(text(E::InvitedBy))
                    .col(optional_text(E::PendingHumanActorRef))
                    .col(optional_text(E::ChallengeRef))
                    .col(micros(E::CreatedAt))
                    .col(micros(E::UpdatedAt))
                    .col(micros(E::ExpiresAt))
                    .col(optional_micros(E::AcceptedAt))
                    .col(optional_text(E::AcceptedBy))
                    .col(optional_micros(E::CancelledAt))
                    .col(ColumnDef::new(E::CancelReason).text().null())
                    .col(optional_text(E::CancelledBy))
                    .col(micros(E::Version))
                    .to_owned(),
            )
            .await?;
        // A watcher reads one enterprise's events after a position.
        manager
            .create_index(
                Index::create()
                    .name("idx_invitation_events_enterprise_position")
                    .table(E::Table)
                    .col(E::EnterpriseId)
                    .col(E::Position)
                    .to_owned(),
            )
            .await?;
        // The expiry sweeper finds lapsed pending invitations of every enterprise by this
        // index: pending rows only, so it stays small. Plain SQL, as the query builder has no
        // WHERE for indexes (the same text on SQLite and PostgreSQL).
        manager
            .get_connection()
            .execute_unprepared(
                "CREATE INDEX idx_invitations_pending_expiry \
                 ON invitations (expires_at) WHERE status = 'pending'",
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared("DROP INDEX idx_invitations_pending_expiry")
            .await?;
        manager
            .drop_table(Table::drop().table(InvitationEvents::Table).to_owned())
            .await
    }
}
