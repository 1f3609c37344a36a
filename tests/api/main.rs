//! Black-box tests: the real server on an ephemeral port, called with the generated
//! client, on SQLite and (with TEST_DATABASE_URL) PostgreSQL.
mod common;

mod accelerators;
mod attacks;
mod auth;
mod authorization;
mod cancel;
mod chaos;
mod create_get;
mod database_tls;
mod db_faults;
mod events;
mod hostile;
mod idempotency;
mod links;
mod list;
mod metrics;
mod migrations;
mod operability;
mod pgbouncer;
mod pki;
mod process;
mod relay;
mod replicas;
mod rotation;
mod shared_rate_limit;
mod shutdown;
mod tls;
mod tokens;
mod traces;
mod watch;
