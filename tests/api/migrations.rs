//! Migrations started together (issue 26, item 6): `migrate` processes and a `serve` started
//! at the same moment on one empty database all succeed, on PostgreSQL and on SQLite. The
//! race is timing-dependent, so each test runs several rounds, each on a fresh database.
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use invitations::store::{Store, StoreSettings};
use invitations_migrations::{Migrator, MigratorTrait};
use sea_orm::{ConnectionTrait, Database, DbBackend, Statement};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::common::{AUDIENCE, Backend, ISSUER, JWT_SECRET, create_database, drop_database};

const BINARY: &str = env!("CARGO_BIN_EXE_invitations");
/// Rounds per test: before the lock, 8 rounds out of 8 failed on PostgreSQL.
const ROUNDS: usize = 5;
/// `migrate` processes per round (the Job, plus two more for good measure).
const MIGRATORS: usize = 3;
const READINESS: &str = "invitations.v1.InvitationService";
/// What the health supervisor logs when `serve`'s own migration run fails.
const MIGRATION_RETRY: &str = "migrations not applied yet";

/// The binary on `database_url`, logging JSON to stderr.
fn command(database_url: &str) -> Command {
    let mut command = Command::new(BINARY);
    command
        .env("DATABASE_URL", database_url)
        .env("INVITATIONS_LISTEN_ADDR", "127.0.0.1:0")
        .env("INVITATIONS_JWT_HS256_SECRET", JWT_SECRET)
        .env("INVITATIONS_JWT_ISSUER", ISSUER)
        .env("INVITATIONS_JWT_AUDIENCE", AUDIENCE)
        .env("INVITATIONS_HEALTH_INTERVAL_MS", "100")
        .env("INVITATIONS_SHUTDOWN_GRACE_MS", "0")
        .env("INVITATIONS_LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .env_remove("INVITATIONS_PAGE_TOKEN_SECRET")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// What one round saw.
struct Round {
    /// Exit code and stderr of each `migrate`.
    migrators: Vec<(Option<i32>, String)>,
    serve_ready: bool,
    serve_logs: String,
    /// `seaql_migrations`, in order.
    applied: Vec<String>,
    elapsed: Duration,
}

/// Starts one `serve` and `MIGRATORS` `migrate` processes on `database_url` at once, waits
/// for every `migrate` to exit and for `serve` to turn ready, then reads what was recorded.
async fn race(database_url: &str, backend: DbBackend) -> Round {
    let started = Instant::now();
    // Arrange: every process is spawned before any is waited for.
    let mut serve = command(database_url).spawn().expect("start serve");
    let migrators: Vec<Child> = (0..MIGRATORS)
        .map(|_| {
            command(database_url)
                .arg("migrate")
                .spawn()
                .expect("start migrate")
        })
        .collect();

    // Act
    let (addr, serve_logs) = follow(&mut serve);
    let migrators: Vec<_> = migrators
        .into_iter()
        .map(|child| tokio::spawn(child.wait_with_output()))
        .collect();
    let serve_ready = match tokio::time::timeout(Duration::from_secs(20), addr).await {
        Ok(Ok(addr)) => becomes_ready(addr, Duration::from_secs(20)).await,
        _ => false,
    };
    let mut outcomes = Vec::new();
    for migrator in migrators {
        let output = migrator.await.expect("join").expect("wait for migrate");
        outcomes.push((
            output.status.code(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        ));
    }
    let elapsed = started.elapsed();
    serve.kill().await.expect("stop serve");
    let serve_logs = serve_logs.lock().expect("log sink").join("\n");

    let db = Database::connect(database_url)
        .await
        .expect("connect to the migrated database");
    let applied = db
        .query_all_raw(Statement::from_string(
            backend,
            "SELECT version FROM seaql_migrations ORDER BY version",
        ))
        .await
        .expect("seaql_migrations is there")
        .iter()
        .map(|row| row.try_get::<String>("", "version").expect("version"))
        .collect();
    db.close().await.expect("close");
    Round {
        migrators: outcomes,
        serve_ready,
        serve_logs,
        applied,
        elapsed,
    }
}

/// Collects `serve`'s log lines; the receiver gets the address once it is serving.
fn follow(
    serve: &mut Child,
) -> (
    tokio::sync::oneshot::Receiver<SocketAddr>,
    Arc<Mutex<Vec<String>>>,
) {
    let stderr = serve.stderr.take().expect("stderr");
    let logs = Arc::new(Mutex::new(Vec::new()));
    let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
    let sink = logs.clone();
    tokio::spawn(async move {
        let mut addr_tx = Some(addr_tx);
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if let Ok(json) = serde_json::from_str::<serde_json::Value>(&line)
                && json["message"] == "serving gRPC"
                && let Some(addr) = json["addr"].as_str().and_then(|a| a.parse().ok())
                && let Some(tx) = addr_tx.take()
            {
                let _ = tx.send(addr);
            }
            sink.lock().expect("log sink").push(line);
        }
    });
    (addr_rx, logs)
}

/// Whether readiness turns SERVING within `within` (it does only after `serve` migrated).
async fn becomes_ready(addr: SocketAddr, within: Duration) -> bool {
    let watch = async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .ok()?
            .connect()
            .await
            .ok()?;
        let mut client = HealthClient::new(channel);
        let mut updates = client
            .watch(HealthCheckRequest {
                service: READINESS.into(),
            })
            .await
            .ok()?
            .into_inner();
        while let Ok(Some(update)) = updates.message().await {
            if update.status == ServingStatus::Serving as i32 {
                return Some(());
            }
        }
        None
    };
    matches!(tokio::time::timeout(within, watch).await, Ok(Some(())))
}

fn assert_all_succeeded(round: &Round, number: usize) {
    for (code, stderr) in &round.migrators {
        assert_eq!(
            *code,
            Some(0),
            "round {number}: a migrate exited {code:?}: {stderr}"
        );
        assert!(stderr.contains("migrations applied"), "{stderr}");
    }
    assert!(
        round.serve_ready,
        "round {number}: serve did not become ready: {}",
        round.serve_logs
    );
    assert!(
        !round.serve_logs.contains(MIGRATION_RETRY),
        "round {number}: serve's migration run failed before it succeeded: {}",
        round.serve_logs
    );
    let expected: Vec<String> = Migrator::migrations()
        .iter()
        .map(|migration| migration.name().to_owned())
        .collect();
    assert_eq!(
        round.applied, expected,
        "round {number}: every migration recorded once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn migrate_and_serve_started_together_on_an_empty_postgres_all_succeed() {
    let Some(Backend::Postgres(admin_url)) = Backend::postgres() else {
        return;
    };
    for number in 1..=ROUNDS {
        let (name, url) = create_database(&admin_url).await;
        let round = race(&url, DbBackend::Postgres).await;
        // Dropped before asserting, so a failing round leaves no database behind.
        drop_database(&admin_url, &name).await;
        eprintln!("postgres round {number}: {:?}", round.elapsed);
        assert_all_succeeded(&round, number);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn migrate_and_serve_started_together_on_an_empty_sqlite_file_all_succeed() {
    for number in 1..=ROUNDS {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("invitations.db").display());
        let round = race(&url, DbBackend::Sqlite).await;
        eprintln!("sqlite round {number}: {:?}", round.elapsed);
        assert_all_succeeded(&round, number);
    }
}

/// Stores opened at once on one new SQLite file, in one process, each migrating: the race
/// the processes above run, without their start-up time, so many rounds fit in a second.
/// SQLite answered the switch of a new file to WAL with BUSY at once (no busy timeout) in
/// about one round in forty, which failed the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stores_opened_together_on_a_new_sqlite_file_all_connect_and_migrate() {
    const STORE_ROUNDS: usize = 200;
    const STORES: usize = 4;
    for number in 1..=STORE_ROUNDS {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("invitations.db").display());
        let opened: Vec<_> = (0..STORES)
            .map(|_| {
                let settings = StoreSettings {
                    url: url.as_str().into(),
                    max_connections: 2,
                    acquire_timeout: Duration::from_secs(10),
                    sqlite_busy_timeout: Duration::from_secs(5),
                    sqlite_synchronous: invitations::store::SqliteSync::default(),
                    transaction_pooling: false,
                    listen_url: None,
                };
                tokio::spawn(async move {
                    let store = Store::connect(&settings).await?;
                    store.migrate().await?;
                    store.close().await;
                    Ok::<_, sea_orm::DbErr>(())
                })
            })
            .collect();
        for store in opened {
            let outcome = store.await.expect("join");
            assert!(outcome.is_ok(), "round {number}: {outcome:?}");
        }
    }
}

/// A call that reaches a replica before its first schema check has ended (a client that
/// connects without looking at readiness, a replica just restarted) waits for that check
/// instead of being refused DATABASE_UNAVAILABLE. The check is held up here by another
/// session holding the migration lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_call_before_the_first_schema_check_waits_for_it() {
    use invitations::proto::invitations::v1::ListInvitationsRequest;
    use invitations::proto::invitations::v1::invitation_service_client::InvitationServiceClient;
    use sea_orm::TransactionTrait;

    let Some(Backend::Postgres(admin_url)) = Backend::postgres() else {
        return;
    };
    let (name, url) = create_database(&admin_url).await;
    let holder = Database::connect(&url).await.expect("connect");
    let lock = holder.begin().await.expect("begin");
    lock.execute_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        "SELECT pg_advisory_xact_lock($1)",
        [invitations::store::MIGRATION_LOCK_KEY.into()],
    ))
    .await
    .expect("take the migration lock");

    let served = crate::process::Served::start(&[("DATABASE_URL", url.as_str())]);
    let (token, _) = crate::process::admin_token();
    let mut client = InvitationServiceClient::connect(format!("http://{}", served.addr))
        .await
        .expect("connect");
    let call = tokio::spawn(async move {
        client
            .list_invitations(crate::common::authorized(
                &token,
                ListInvitationsRequest::default(),
            ))
            .await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let waited = !call.is_finished();
    lock.commit().await.expect("release the migration lock");
    let answer = call.await.expect("join");
    holder.close().await.expect("close");
    drop(served);
    drop_database(&admin_url, &name).await;

    assert!(waited, "the call waited for the schema check: {answer:?}");
    assert!(answer.is_ok(), "then it was answered: {answer:?}");
}
