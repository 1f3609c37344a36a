//! The `invitations` table.
//!
//! Timestamps are stored as BIGINT microseconds since the Unix epoch (UTC). SQLite has no
//! timestamp type, and text timestamps compare correctly only when every writer formats them
//! identically; integers give both stores the same exact ordering, which keyset pagination on
//! `(created_at, id)` depends on.
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Invitations {
    Table,
    Id,
    EnterpriseId,
    Scope,
    EmailConstraint,
    EmailNormalized,
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

const STATUSES: [&str; 4] = ["pending", "accepted", "cancelled", "expired"];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Invitations::Table)
                    .col(
                        ColumnDef::new(Invitations::Id)
                            .uuid()
                            .not_null()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(Invitations::EnterpriseId).uuid().not_null())
                    .col(ColumnDef::new(Invitations::Scope).string().not_null())
                    .col(
                        ColumnDef::new(Invitations::EmailConstraint)
                            .string()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(Invitations::EmailNormalized)
                            .string()
                            .not_null(),
                    )
                    .col(ColumnDef::new(Invitations::Role).string().not_null())
                    .col(
                        ColumnDef::new(Invitations::Status)
                            .string_len(16)
                            .not_null()
                            .check(Expr::col(Invitations::Status).is_in(STATUSES)),
                    )
                    .col(ColumnDef::new(Invitations::InvitedBy).string().not_null())
                    .col(
                        ColumnDef::new(Invitations::PendingHumanActorRef)
                            .string()
                            .null(),
                    )
                    .col(ColumnDef::new(Invitations::ChallengeRef).string().null())
                    .col(
                        ColumnDef::new(Invitations::CreatedAt)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(Invitations::UpdatedAt)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(Invitations::ExpiresAt)
                            .big_integer()
                            .not_null(),
                    )
                    .col(ColumnDef::new(Invitations::AcceptedAt).big_integer().null())
                    .col(ColumnDef::new(Invitations::AcceptedBy).string().null())
                    .col(
                        ColumnDef::new(Invitations::CancelledAt)
                            .big_integer()
                            .null(),
                    )
                    .col(ColumnDef::new(Invitations::CancelReason).text().null())
                    .col(ColumnDef::new(Invitations::CancelledBy).string().null())
                    .col(
                        ColumnDef::new(Invitations::Version)
                            .big_integer()
                            .not_null()
                            .check(Expr::col(Invitations::Version).gte(1)),
                    )
                    .to_owned(),
            )
            .await?;

        // Keyset pagination is newest first within one enterprise, ties broken by id; each
        // filter of ListInvitations has an index that starts with the enterprise and ends with
        // the page order, so a page is an index range scan at any table size.
        let page_indexes: [(&str, Option<Invitations>); 4] = [
            ("idx_invitations_page", None),
            ("idx_invitations_status_page", Some(Invitations::Status)),
            (
                "idx_invitations_email_page",
                Some(Invitations::EmailNormalized),
            ),
            ("idx_invitations_scope_page", Some(Invitations::Scope)),
        ];
        for (name, filter) in page_indexes {
            let mut index = Index::create();
            index
                .name(name)
                .table(Invitations::Table)
                .col(Invitations::EnterpriseId);
            if let Some(column) = filter {
                index.col(column);
            }
            index
                .col((Invitations::CreatedAt, IndexOrder::Desc))
                .col((Invitations::Id, IndexOrder::Desc));
            manager.create_index(index.to_owned()).await?;
        }

        // At most one pending invitation per address and enterprise. Partial indexes are
        // written the same way on SQLite and PostgreSQL; the query builder has no WHERE for
        // indexes, so this one is plain SQL.
        manager
            .get_connection()
            .execute_unprepared(
                "CREATE UNIQUE INDEX uq_invitations_pending_email \
                 ON invitations (enterprise_id, email_normalized) WHERE status = 'pending'",
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(Invitations::Table).to_owned())
            .await
    }
}
