//! The service under test: its benchmark settings, how it starts (in-process or as a pinned
//! process), and where the database's work for it runs (`--pin-db`).

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use invitations::config::{Config, Secret};
use invitations::startup::Application;
use sea_orm::sqlx;

use crate::plan::{Plan, RateLimit};
use crate::servers::{ChildGuard, Running, Server, free_port, pinned, wait_ready};

pub(crate) const JWT_SECRET: &str = "benchmark-secret-that-is-at-least-32-bytes-long";
pub(crate) const JWT_ISSUER: &str = "invitations";

pub(crate) fn service_settings(
    database_url: &str,
    listen: SocketAddr,
    pool: Option<u32>,
    rate_limit: &RateLimit,
) -> invitations::config::Settings {
    let mut config = Config::defaults();
    config.database_url = database_url.into();
    config.listen_addr = listen;
    config.jwt_hs256_secret = Some(Secret::new(JWT_SECRET));
    config.rate_limit_per_second = rate_limit.per_second;
    config.rate_limit_burst = rate_limit.per_second;
    config.rate_limit_redis_url = rate_limit.redis_url.as_deref().map(Secret::new);
    config.max_concurrent_requests_per_caller = 4096;
    config.max_concurrent_requests = 4096;
    config.sqlite_synchronous = crate::db::sqlite_synchronous();
    if let Some(pool) = pool {
        config.db_max_connections = pool;
    }
    config.settings().expect("benchmark settings are valid")
}

pub(crate) async fn start_service(plan: &Plan, database_url: &str) -> Server {
    if plan.inproc {
        let settings = service_settings(
            database_url,
            "127.0.0.1:0".parse().expect("addr"),
            plan.db_max_connections,
            &plan.rate_limit,
        );
        let app = Application::build(&settings)
            .await
            .expect("the server builds");
        app.store().migrate().await.expect("migrations apply");
        let addr = app.local_addr();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let handle = tokio::spawn(async move {
            app.run_until(async {
                let _ = stopped.await;
            })
            .await
            .expect("the server runs");
        });
        let server = Server {
            addr,
            running: Running::Task(stop, handle),
        };
        wait_ready(addr).await;
        return server;
    }
    let addr = free_port();
    let mut cmd = pinned(&plan.server_bin, plan.pin.then_some(0));
    let database_url = match &plan.pgbouncer_url {
        Some(pooler) if database_url.starts_with("postgres") => {
            cmd.env("INVITATIONS_DB_TRANSACTION_POOLING", "true");
            through_pooler(database_url, pooler)
        }
        _ => database_url.to_owned(),
    };
    cmd.arg("serve")
        .env("DATABASE_URL", service_database_url(&database_url))
        .env("INVITATIONS_LISTEN_ADDR", addr.to_string())
        .env("INVITATIONS_JWT_HS256_SECRET", JWT_SECRET)
        .env(
            "INVITATIONS_RATE_LIMIT_PER_SECOND",
            plan.rate_limit.per_second.to_string(),
        )
        .env(
            "INVITATIONS_RATE_LIMIT_BURST",
            plan.rate_limit.per_second.max(1).to_string(),
        )
        .env("INVITATIONS_MAX_CONCURRENT_REQUESTS", "4096")
        .env("INVITATIONS_MAX_CONCURRENT_REQUESTS_PER_CALLER", "4096")
        .env("INVITATIONS_SHUTDOWN_GRACE_MS", "0")
        .env("INVITATIONS_LOG_FORMAT", "json")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    if let Some(pool) = plan.db_max_connections {
        cmd.env("INVITATIONS_DB_MAX_CONNECTIONS", pool.to_string());
    }
    if let Some(url) = &plan.rate_limit.redis_url {
        cmd.env("INVITATIONS_RATE_LIMIT_REDIS_URL", url);
    }
    if plan.metrics {
        cmd.env("INVITATIONS_OPS_LISTEN_ADDR", free_port().to_string());
    }
    let child = ChildGuard::new(cmd.spawn().expect("start the service binary"));
    wait_ready(addr).await;
    Server {
        addr,
        running: Running::Process(child),
    }
}

/// `database_url`'s database (and query) on the server of `pooler`.
fn through_pooler(database_url: &str, pooler: &str) -> String {
    let database = url::Url::parse(database_url).expect("a PostgreSQL URL");
    let mut url = url::Url::parse(pooler).expect("--pgbouncer-url is a PostgreSQL URL");
    url.set_path(database.path());
    url.set_query(database.query());
    url.to_string()
}

/// The name the service's PostgreSQL connections carry (followed by the service's own
/// suffix), so the harness can find their backends.
const SERVICE_APPLICATION_NAME: &str = "invitations-bench-service";

fn service_database_url(database_url: &str) -> String {
    if !database_url.starts_with("postgres") {
        return database_url.to_owned();
    }
    let separator = if database_url.contains('?') { '&' } else { '?' };
    format!("{database_url}{separator}application_name={SERVICE_APPLICATION_NAME}")
}

/// Where the database's work for the service runs, to be moved to core 1.
pub(crate) enum DatabaseWork {
    /// PostgreSQL's backends serving the service's connections (by `application_name`).
    PostgresBackends { database_url: String },
    /// The service's SQLite threads: its readers and sqlx's writer threads (by name).
    SqliteThreads { service_pid: u32 },
}

impl DatabaseWork {
    /// Process or thread ids doing the database's work for the service now.
    async fn ids(&self, pool: Option<&sqlx::PgPool>) -> Vec<i32> {
        match (self, pool) {
            (Self::PostgresBackends { .. }, Some(pool)) => {
                // The service appends a suffix of its own to the name (src/store/mod.rs).
                sqlx::query_scalar(
                    "SELECT pid FROM pg_stat_activity WHERE application_name LIKE $1 || ' %'",
                )
                .bind(SERVICE_APPLICATION_NAME)
                .fetch_all(pool)
                .await
                .unwrap_or_default()
            }
            (Self::SqliteThreads { service_pid }, _) => {
                // `comm` holds the first 15 bytes of a thread's name.
                let names = [
                    invitations::store::SQLITE_READER_THREAD_NAME,
                    "sqlx-sqlite-wor",
                ];
                let Ok(tasks) = std::fs::read_dir(format!("/proc/{service_pid}/task")) else {
                    return vec![];
                };
                tasks
                    .filter_map(|task| {
                        let task = task.ok()?;
                        let comm = std::fs::read_to_string(task.path().join("comm")).ok()?;
                        if !names.iter().any(|name| comm.starts_with(name)) {
                            return None;
                        }
                        task.file_name().to_str()?.parse().ok()
                    })
                    .collect()
            }
            (Self::PostgresBackends { .. }, None) => vec![],
        }
    }
}

/// Moves the database's work for the service to core 1 as it appears, for as long as it is
/// not aborted; counts the processes or threads moved.
///
/// A loopback send wakes its receiver on the sender's core when the sender is alone there,
/// so with the server pinned to core 0 the PostgreSQL backends it queried ran beside it and
/// its core filled while core 1 idled. Only the service's backends move: pgbench's, the
/// database limit, keep both cores. On SQLite the same work runs on the service's own
/// threads, which move likewise, so both stores get the same split: core 0 the server's
/// request handling, core 1 the load generator and the database.
pub(crate) async fn keep_database_work_on_core_1(work: DatabaseWork, moved: Arc<AtomicU64>) {
    let pool = match &work {
        DatabaseWork::PostgresBackends { database_url } => {
            match sqlx::postgres::PgPoolOptions::new()
                .max_connections(1)
                .connect(database_url)
                .await
            {
                Ok(pool) => Some(pool),
                Err(e) => {
                    eprintln!("could not watch the service's backends: {e}");
                    return;
                }
            }
        }
        DatabaseWork::SqliteThreads { .. } => None,
    };
    let mut seen = std::collections::HashSet::new();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tick.tick().await;
        for id in work.ids(pool.as_ref()).await {
            if !seen.insert(id) {
                continue;
            }
            let status = tokio::process::Command::new("taskset")
                .args(["-p", "-c", "1", &id.to_string()])
                .stdout(Stdio::null())
                .status()
                .await;
            match status {
                Ok(s) if s.success() => {
                    moved.fetch_add(1, Ordering::Relaxed);
                }
                _ => eprintln!("could not move {id} (the service's database work) to core 1"),
            }
        }
    }
}

/// Aborts a background task when dropped.
pub(crate) struct AbortOnDrop(pub(crate) tokio::task::JoinHandle<()>);
impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
