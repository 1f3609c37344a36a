//! Idempotent retries (AIP-155): the response of each write made with a `request_id`,
//! written in the same transaction as the write itself, kept for a retention period.
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum IdempotencyKeys {
    Table,
    EnterpriseId,
    RequestId,
    Operation,
    RequestFingerprint,
    Response,
    CreatedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(IdempotencyKeys::Table)
                    .col(
                        ColumnDef::new(IdempotencyKeys::EnterpriseId)
                            .uuid()
                            .not_null(),
                    )
                    .col(ColumnDef::new(IdempotencyKeys::RequestId).uuid().not_null())
                    .col(
                        ColumnDef::new(IdempotencyKeys::Operation)
                            .string_len(64)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(IdempotencyKeys::RequestFingerprint)
                            .binary_len(32)
                            .not_null(),
                    )
                    .col(ColumnDef::new(IdempotencyKeys::Response).text().not_null())
                    .col(
                        ColumnDef::new(IdempotencyKeys::CreatedAt)
                            .big_integer()
                            .not_null(),
                    )
                    .primary_key(
                        Index::create()
                            .col(IdempotencyKeys::EnterpriseId)
                            .col(IdempotencyKeys::RequestId),
                    )
                    .to_owned(),
            )
            .await?;
        // The purge of expired keys walks this index.
        manager
            .create_index(
                Index::create()
                    .name("idx_idempotency_keys_created_at")
                    .table(IdempotencyKeys::Table)
                    .col(IdempotencyKeys::CreatedAt)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(IdempotencyKeys::Table).to_owned())
            .await
    }
}
