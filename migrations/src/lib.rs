//! Schema migrations for the invitations store, portable across SQLite and PostgreSQL.
//!
//! Applied at start-up and by the `migrate` subcommand. Each migration is a file named
//! `mYYYYMMDD_HHMMSS_name.rs`; never edit one that has shipped, add a new one.
pub use sea_orm_migration::prelude::*;

mod m20261123_000001_create_invitations;
mod m20261123_000002_invitation_links;
mod m20261123_000003_idempotency_keys;
mod m20261206_000004_invitation_events;
mod m20261206_000005_event_relays;
mod m20261207_000006_event_traceparent;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261123_000001_create_invitations::Migration),
            Box::new(m20261123_000002_invitation_links::Migration),
            Box::new(m20261123_000003_idempotency_keys::Migration),
            Box::new(m20261206_000004_invitation_events::Migration),
            Box::new(m20261206_000005_event_relays::Migration),
            Box::new(m20261207_000006_event_traceparent::Migration),
        ]
    }
}
