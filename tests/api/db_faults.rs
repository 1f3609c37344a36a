//! Database faults are mapped, not leaked: a throwaway PostgreSQL (its own data directory
//! and port, never the shared server) is stopped under the running service and started
//! again; the same process recovers and its health follows.
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use tonic_health::pb::health_check_response::ServingStatus::{NotServing, Serving};

use crate::common::{Backend, Row, TestApp, assert_row};
use crate::operability::{READINESS, await_health};

/// A PostgreSQL server of our own, from the machine's PostgreSQL packages.
struct ThrowawayPostgres {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    as_postgres_user: bool,
}

fn postgres_bin_dir() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| entry.ok().map(|e| e.path().join("bin")))
        .filter(|bin| bin.join("initdb").exists() && bin.join("pg_ctl").exists())
        .collect();
    dirs.sort();
    dirs.pop()
}

impl ThrowawayPostgres {
    /// `None` (skipped, saying so) where the packages are missing, except in CI.
    fn start() -> Option<Self> {
        let Some(bin) = postgres_bin_dir() else {
            assert!(
                std::env::var("CI").map_or(true, |v| v.is_empty()),
                "initdb and pg_ctl are required in CI (PostgreSQL server packages)"
            );
            eprintln!("skipping: no PostgreSQL server binaries under /usr/lib/postgresql");
            return None;
        };
        // PostgreSQL refuses to run as root; root runs it as the `postgres` user.
        let uid = Command::new("id").arg("-u").output().expect("id -u");
        let as_postgres_user = String::from_utf8_lossy(&uid.stdout).trim() == "0";
        let dir = tempfile::tempdir().expect("temp dir");
        if as_postgres_user {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status();
            assert!(status.expect("chown").success(), "chown the data directory");
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("a free port")
            .local_addr()
            .expect("addr")
            .port();
        let server = Self {
            bin,
            dir,
            port,
            as_postgres_user,
        };
        let data = server.data_dir();
        server.run(
            "initdb",
            &[
                "-D",
                &data,
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        );
        server.pg_ctl_start();
        Some(server)
    }

    fn data_dir(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let program = self.bin.join(tool);
        let mut command = if self.as_postgres_user {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&program);
            c
        } else {
            Command::new(&program)
        };
        let output = command
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .expect("run a PostgreSQL tool");
        assert!(
            output.status.success(),
            "{tool} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    fn pg_ctl_start(&self) {
        let options = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {} -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("postgres.log").display().to_string();
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data_dir(),
                "-o",
                &options,
                "-l",
                &log,
                "-w",
                "-t",
                "30",
                "start",
            ],
        );
    }

    fn stop(&self) {
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data_dir(),
                "-m",
                "fast",
                "-w",
                "-t",
                "30",
                "stop",
            ],
        );
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for ThrowawayPostgres {
    fn drop(&mut self) {
        // Best effort: the server may be stopped already.
        let program = self.bin.join("pg_ctl");
        let data = self.data_dir();
        let mut command = if self.as_postgres_user {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(program);
            c
        } else {
            Command::new(program)
        };
        let _ = command
            .args(["-D", &data, "-m", "immediate", "-w", "stop"])
            .output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_database_is_unavailable_and_the_service_recovers() {
    let Some(postgres) = ThrowawayPostgres::start() else {
        return;
    };
    let url = postgres.url();
    let app = TestApp::spawn_configured(Backend::Sqlite, |config| {
        config.database_url = url.into();
        config.db_acquire_timeout_ms = 500;
        config.health_interval_ms = 100;
        config.health_failure_threshold = 2;
        config.health_success_threshold = 2;
    })
    .await;
    await_health(app.addr, READINESS, Serving, Duration::from_secs(10)).await;
    app.list(Default::default()).await.expect("up");

    // Act: the database goes away under the running service.
    postgres.stop();
    let started = std::time::Instant::now();
    let status = app
        .list(Default::default())
        .await
        .expect_err("the database is down");
    // Assert: 503 with RetryInfo, quickly, and no SQL or driver text for the client.
    let metadata = assert_row(&status, Row::DatabaseUnavailable);
    assert_eq!(metadata["retryAfterMs"], "1000");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "bounded well below a deadline: {:?}",
        started.elapsed()
    );
    await_health(app.addr, READINESS, NotServing, Duration::from_secs(10)).await;
    await_health(app.addr, "", NotServing, Duration::from_secs(1)).await;
    // Liveness does not follow the database.
    await_health(app.addr, "liveness", Serving, Duration::from_secs(1)).await;
    let status = app
        .get(uuid::Uuid::new_v4().to_string())
        .await
        .expect_err("still down");
    assert_row(&status, Row::DatabaseUnavailable);

    // The database comes back: the same process serves again, and says so.
    postgres.pg_ctl_start();
    await_health(app.addr, READINESS, Serving, Duration::from_secs(15)).await;
    app.list(Default::default())
        .await
        .expect("serving again without a restart");
    app.finish().await;
}

/// A replica that starts before its database is up: alive, not ready, answering
/// DATABASE_UNAVAILABLE; ready (migrations applied) as soon as the database answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_waits_for_migrations_and_the_database() {
    let Some(postgres) = ThrowawayPostgres::start() else {
        return;
    };
    postgres.stop();
    let url = postgres.url();
    let app = TestApp::spawn_unmigrated(Backend::Sqlite, |config| {
        config.database_url = url.into();
        config.db_acquire_timeout_ms = 300;
        config.health_interval_ms = 100;
    })
    .await;
    await_health(app.addr, READINESS, NotServing, Duration::from_secs(2)).await;
    await_health(app.addr, "liveness", Serving, Duration::from_secs(2)).await;
    let status = app
        .list(Default::default())
        .await
        .expect_err("no database yet");
    assert_row(&status, Row::DatabaseUnavailable);

    postgres.pg_ctl_start();
    await_health(app.addr, READINESS, Serving, Duration::from_secs(15)).await;
    app.list(Default::default())
        .await
        .expect("migrated and serving");
    app.finish().await;
}
