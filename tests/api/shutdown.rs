//! Shutdown bounded whatever the calls are doing (issue 22, item 1): a call stuck behind
//! another session's lock is abandoned at the drain timeout, its client is answered
//! `SHUTTING_DOWN`, the process exits with `EXIT_CALLS_ABANDONED` within the bound, and the
//! abandoned write is not committed when the lock is released afterwards. The real binary,
//! on SQLite and PostgreSQL.
use std::time::{Duration, Instant};

use invitations::proto::invitations::v1::invitation_service_client::InvitationServiceClient;
use invitations::proto::invitations::v1::{CreateInvitationRequest, Invitation};
use invitations::shutdown::CLOSE_BOUND;
use invitations::startup::EXIT_CALLS_ABANDONED;
use sea_orm::{ConnectionTrait, Database, DbBackend, Statement, TransactionTrait};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_types::StatusExt;
use uuid::Uuid;

use crate::common::{
    Backend, Row, assert_row, authorized, cancel_request, create_database, drop_database,
};
use crate::operability::READINESS;
use crate::process::{Served, admin_token};

const GRACE: Duration = Duration::from_millis(200);
const DRAIN: Duration = Duration::from_millis(1000);

/// Grace and drain short, everything that could otherwise end the stuck call long.
fn environment(database_url: Option<&str>) -> Vec<(&str, &str)> {
    let mut env = vec![
        ("INVITATIONS_SHUTDOWN_GRACE_MS", "200"),
        ("INVITATIONS_SHUTDOWN_DRAIN_MS", "1000"),
        ("INVITATIONS_REQUEST_TIMEOUT_MS", "30000"),
        ("INVITATIONS_SQLITE_BUSY_TIMEOUT_MS", "25000"),
        ("INVITATIONS_RATE_LIMIT_PER_SECOND", "0"),
    ];
    if let Some(url) = database_url {
        env.push(("DATABASE_URL", url));
    }
    env
}

async fn create(served: &Served, token: &str) -> Invitation {
    let mut client = InvitationServiceClient::connect(format!("http://{}", served.addr))
        .await
        .expect("connect");
    client
        .create_invitation(authorized(
            token,
            CreateInvitationRequest {
                email_constraint: "stuck@acme.example".into(),
                role: format!("roles/{}", Uuid::new_v4()),
                ..Default::default()
            },
        ))
        .await
        .expect("created")
        .into_inner()
}

/// Cancels `invitation` (the call the lock holds up), signals SIGTERM once it is in flight,
/// and checks how the process ends and what the client heard. Returns the exited process,
/// whose directory holds the SQLite file.
async fn cancel_stuck_then_terminate(
    mut served: Served,
    token: &str,
    invitation: &Invitation,
) -> Served {
    let mut client = InvitationServiceClient::connect(format!("http://{}", served.addr))
        .await
        .expect("connect");
    let request = authorized(token, cancel_request(&invitation.id, &invitation.etag));
    let stuck = tokio::spawn(async move { client.cancel_invitation(request).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!stuck.is_finished(), "the cancel waits for the lock");

    let signalled = Instant::now();
    served.signal("TERM");
    let (exit, served) = tokio::task::spawn_blocking(move || {
        let exit = served.wait_exit(Duration::from_secs(20));
        (exit, served)
    })
    .await
    .expect("join");
    let exited_after = signalled.elapsed();

    // Exited within grace + drain + the pool's close bound (plus slack for a loaded machine
    // starting and stopping a process), not when the 25 s busy timeout or the lock ran out;
    // the code says calls were abandoned.
    let bound = GRACE + DRAIN + CLOSE_BOUND + Duration::from_secs(3);
    assert!(exited_after < bound, "exited after {exited_after:?}");
    eprintln!("exited {exited_after:?} after SIGTERM");
    assert_eq!(
        exit.code(),
        Some(i32::from(EXIT_CALLS_ABANDONED)),
        "{exit:?}"
    );
    let status = stuck
        .await
        .expect("join")
        .expect_err("the stuck cancel is not answered OK");
    // Its answer goes out before the pool is closed; on a loaded machine the process may
    // still exit before the client reads it, and the client sees the connection go instead.
    if status.get_details_error_info().is_some() {
        assert_row(&status, Row::ShuttingDown);
    } else {
        assert!(
            std::error::Error::source(&status).is_some(),
            "a transport error, if not the answer: {status:?}"
        );
    }
    let logs = served.logs().join("\n");
    assert!(logs.contains("\"abandoned_calls\":1"), "{logs}");
    served
}

/// `status` and `version` of the only invitation.
async fn stored(database_url: &str, backend: DbBackend) -> (String, i64) {
    let db = Database::connect(database_url).await.expect("connect");
    let row = db
        .query_one_raw(Statement::from_string(
            backend,
            "SELECT status, version FROM invitations",
        ))
        .await
        .expect("read")
        .expect("one invitation");
    let stored = (
        row.try_get::<String>("", "status").expect("status"),
        row.try_get::<i64>("", "version").expect("version"),
    );
    db.close().await.expect("close");
    stored
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_call_stuck_behind_a_sqlite_lock_is_abandoned_and_not_committed() {
    let served = Served::start_ready(&environment(None), Duration::from_secs(10)).await;
    let url = format!("sqlite://{}", served.sqlite_path().display());
    let (token, _) = admin_token();
    let invitation = create(&served, &token).await;
    let before = stored(&url, DbBackend::Sqlite).await;

    // Another process's write lock, as `sqlite3` or a migration would hold it.
    let holder = rusqlite::Connection::open(served.sqlite_path()).expect("open");
    holder.execute_batch("BEGIN IMMEDIATE").expect("lock");
    let exited = cancel_stuck_then_terminate(served, &token, &invitation).await;
    holder.execute_batch("ROLLBACK").expect("unlock");
    drop(holder);

    assert_eq!(
        stored(&url, DbBackend::Sqlite).await,
        before,
        "the abandoned cancel committed nothing"
    );
    drop(exited);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_call_stuck_behind_a_postgres_row_lock_is_abandoned_and_not_committed() {
    let Some(Backend::Postgres(admin_url)) = Backend::postgres() else {
        return;
    };
    let (name, url) = create_database(&admin_url).await;
    let served = Served::start_ready(&environment(Some(&url)), Duration::from_secs(20)).await;
    let (token, _) = admin_token();
    let invitation = create(&served, &token).await;
    let before = stored(&url, DbBackend::Postgres).await;

    // Another session's row lock, held in an open transaction.
    let holder = Database::connect(&url).await.expect("connect");
    let lock = holder.begin().await.expect("begin");
    lock.execute_unprepared(&format!(
        "SELECT id FROM invitations WHERE id = '{}'::uuid FOR UPDATE",
        Uuid::parse_str(&invitation.id).expect("a UUID")
    ))
    .await
    .expect("lock the row");
    let exited = cancel_stuck_then_terminate(served, &token, &invitation).await;
    // The process cancelled its abandoned statement before it exited: the lock released at
    // once after the exit does not let the cancel through.
    let logs = exited.logs().join("\n");
    assert!(logs.contains("abandoned statements cancelled"), "{logs}");
    lock.commit().await.expect("unlock");
    tokio::time::sleep(Duration::from_millis(200)).await;
    holder.close().await.expect("close");

    let after = stored(&url, DbBackend::Postgres).await;
    drop_database(&admin_url, &name).await;
    assert_eq!(after, before, "the abandoned cancel committed nothing");
}

/// A long-lived stream (health `Watch`, the one the service has today) does not hold the
/// process either: its watcher sees NOT_SERVING at SIGTERM, the stream ends at the drain
/// timeout, and the process exits 0 (a watch is not a call whose answer was lost).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_watch_open_at_shutdown_ends_at_the_drain_timeout_and_the_exit_is_clean() {
    let mut served = Served::start_ready(&environment(None), Duration::from_secs(10)).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", served.addr))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut updates = HealthClient::new(channel)
        .watch(HealthCheckRequest {
            service: READINESS.into(),
        })
        .await
        .expect("watch")
        .into_inner();
    let first = updates.message().await.expect("an update").expect("open");
    assert_eq!(first.status, ServingStatus::Serving as i32);

    let signalled = Instant::now();
    served.signal("TERM");
    let next = updates.message().await.expect("an update").expect("open");
    assert_eq!(next.status, ServingStatus::NotServing as i32);
    let (exit, _served) = tokio::task::spawn_blocking(move || {
        let exit = served.wait_exit(Duration::from_secs(20));
        (exit, served)
    })
    .await
    .expect("join");
    let exited_after = signalled.elapsed();

    assert!(
        exited_after >= GRACE + DRAIN,
        "the watch held the drain: {exited_after:?}"
    );
    assert!(
        exited_after < GRACE + DRAIN + CLOSE_BOUND + Duration::from_secs(3),
        "exited after {exited_after:?}"
    );
    assert_eq!(exit.code(), Some(0), "{exit:?}");
    let ended = tokio::time::timeout(Duration::from_secs(5), updates.message()).await;
    assert!(
        matches!(ended, Ok(Ok(None)) | Ok(Err(_))),
        "the watch ended with the process: {ended:?}"
    );
}
