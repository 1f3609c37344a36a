//! The trace of the call that made each change: its W3C `traceparent`
//! (`00-{trace id}-{span id}-{flags}`), null when traces were not exported or the change was
//! the service's own (expiry). Nullable and added, so rows written before it read as having
//! none, and a replica still on the previous version keeps writing (expand first).
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum InvitationEvents {
    Table,
    Traceparent,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(InvitationEvents::Table)
                    .add_column(
                        ColumnDef::new(InvitationEvents::Traceparent)
                            .string()
                            .null(),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(InvitationEvents::Table)
                    .drop_column(InvitationEvents::Traceparent)
                    .to_owned(),
            )
            .await
    }
}
