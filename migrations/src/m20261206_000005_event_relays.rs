//! Where each relay of the outbox stands, and which process holds it.
//!
//! One row per relay (today `nats`): the position up to which it has published every event,
//! and a lease (`holder`, `lease_until`, microseconds since the epoch) that one process at a
//! time holds and renews with each advance, so a second replica never publishes alongside the
//! first, and a replica that dies hands over once its lease lapses. A relay that starts on a
//! database with events publishes the ones still kept.
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum EventRelays {
    Table,
    Name,
    Position,
    Holder,
    LeaseUntil,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        use EventRelays as R;
        manager
            .create_table(
                Table::create()
                    .table(R::Table)
                    .col(ColumnDef::new(R::Name).string().not_null().primary_key())
                    .col(ColumnDef::new(R::Position).big_integer().not_null())
                    .col(ColumnDef::new(R::Holder).uuid().null())
                    .col(ColumnDef::new(R::LeaseUntil).big_integer().not_null())
                    .to_owned(),
            )
            .await?;
        manager
            .exec_stmt(
                Query::insert()
                    .into_table(R::Table)
                    .columns([R::Name, R::Position, R::LeaseUntil])
                    .values_panic(["nats".into(), 0i64.into(), 0i64.into()])
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(EventRelays::Table).to_owned())
            .await
    }
}
