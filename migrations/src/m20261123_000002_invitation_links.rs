//! Invitation links: the SHA-256 of the current link token, never the token itself.
//! Unique, so a redeem finds its invitation through the index; NULL (no link, or revoked
//! by a cancel) for any number of rows.
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Invitations {
    Table,
    LinkTokenHash,
}

const INDEX: &str = "uq_invitations_link_token_hash";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Invitations::Table)
                    .add_column(
                        ColumnDef::new(Invitations::LinkTokenHash)
                            .binary_len(32)
                            .null(),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name(INDEX)
                    .table(Invitations::Table)
                    .col(Invitations::LinkTokenHash)
                    .unique()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(
                Index::drop()
                    .name(INDEX)
                    .table(Invitations::Table)
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Invitations::Table)
                    .drop_column(Invitations::LinkTokenHash)
                    .to_owned(),
            )
            .await
    }
}
