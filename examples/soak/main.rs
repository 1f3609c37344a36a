//! The soak (issue 22, item 3): mixed calls across two replicas on one PostgreSQL database,
//! connections rotated by age, one replica restarted (SIGTERM, then started again on its
//! port) on a schedule, alternating. Reports calls by method, failures by code and reason,
//! the calls retried because the server never saw them, each restart's exit code, and, over
//! time, each replica's RSS and open file descriptors and the database's connections.
//!
//! ```sh
//! cargo build --release --bins --examples
//! target/release/examples/soak --seconds 1800 --out bench/soak.json \
//!     --chart bench/soak.svg                                             # the real one
//! cargo run --example soak -- --seconds 30 --connection-age-ms 5000 \
//!     --restart-every-s 10 --binary target/debug/invitations             # what CI runs
//! target/release/examples/soak --from bench/soak.json --chart bench/soak.svg  # redraw
//! ```
//!
//! It fails (exit 1) when a call failed without a documented error (a status without the
//! service's `ErrorInfo`, other than one the server never saw), when the database held more
//! connections than the two replicas' pools allow, or when a restarted replica did not exit
//! 0 (3: it abandoned calls at its drain timeout) or did not come back.
//! Each caller is an enterprise admin of its own enterprise; the invitee of an accepted
//! invitation is a user with the verified address it was sent to.
mod chart;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use invitations::auth::{Authenticator, ENTERPRISE_ADMIN};
use invitations::client::never_reached_the_server;
use invitations::domain::{EnterpriseId, UserRef};
use invitations::grpc::status::ERROR_DOMAIN;
use invitations::proto::invitations::v1::invitation_service_client::InvitationServiceClient;
use invitations::proto::invitations::v1::{
    AcceptInvitationRequest, CancelInvitationRequest, CreateInvitationRequest,
    GetInvitationRequest, IssueInvitationTokenRequest, ListInvitationsRequest,
};
use sea_orm::sqlx::{self, PgPool};
use serde_json::json;
use tokio::process::{Child, Command};
use tonic::transport::Channel;
use tonic_types::StatusExt;
use uuid::Uuid;

const JWT_SECRET: &str = "soak-secret-that-is-long-enough-for-hs256";
const ISSUER: &str = "invitations-soak";
const AUDIENCE: &str = "invitations-soak";
const READINESS: &str = "invitations.v1.InvitationService";

#[derive(Parser, Debug)]
struct Opts {
    /// A PostgreSQL server where the soak creates (and drops) a database of its own.
    #[arg(long, env = "TEST_DATABASE_URL", default_value = "")]
    database_url: String,
    /// How long the load runs.
    #[arg(long, default_value_t = 1800)]
    seconds: u64,
    /// `INVITATIONS_MAX_CONNECTION_AGE_MS` of both replicas.
    #[arg(long, default_value_t = 60_000)]
    connection_age_ms: u64,
    /// One replica (alternating) is restarted this often.
    #[arg(long, default_value_t = 300)]
    restart_every_s: u64,
    /// The service binary the replicas run.
    #[arg(long, default_value = "target/release/invitations")]
    binary: PathBuf,
    /// Concurrent callers, each running the mixed scenario in a loop.
    #[arg(long, default_value_t = 16)]
    callers: usize,
    /// `INVITATIONS_DB_MAX_CONNECTIONS` of each replica.
    #[arg(long, default_value_t = 8)]
    pool_size: u32,
    /// Seconds between two samples of RSS, descriptors and database connections.
    #[arg(long, default_value_t = 5)]
    sample_every_s: u64,
    /// Where the report goes (JSON); it is printed in any case.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Where the chart goes (SVG): RSS, descriptors and database connections over time.
    #[arg(long)]
    chart: Option<PathBuf>,
    /// Runs nothing: summarizes (and charts, with `--chart`) the report of an earlier run.
    #[arg(long)]
    from: Option<PathBuf>,
}

/// One replica: a fixed port, and the process serving on it now.
struct Replica {
    name: &'static str,
    port: u16,
    generation: u32,
    child: Child,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("a free port")
}

impl Replica {
    async fn start(name: &'static str, port: u16, generation: u32, opts: &Opts, url: &str) -> Self {
        let mut child = Command::new(&opts.binary)
            .arg("serve")
            .env("DATABASE_URL", url)
            .env("INVITATIONS_LISTEN_ADDR", format!("127.0.0.1:{port}"))
            .env("INVITATIONS_JWT_HS256_SECRET", JWT_SECRET)
            .env("INVITATIONS_JWT_ISSUER", ISSUER)
            .env("INVITATIONS_JWT_AUDIENCE", AUDIENCE)
            .env(
                "INVITATIONS_MAX_CONNECTION_AGE_MS",
                opts.connection_age_ms.to_string(),
            )
            .env("INVITATIONS_DB_MAX_CONNECTIONS", opts.pool_size.to_string())
            .env("INVITATIONS_SHUTDOWN_GRACE_MS", "1000")
            .env("INVITATIONS_SHUTDOWN_DRAIN_MS", "5000")
            .env("INVITATIONS_RATE_LIMIT_PER_SECOND", "0")
            .env("INVITATIONS_LOG_FORMAT", "json")
            .env("RUST_LOG", HTTP2_LOG)
            .env_remove("INVITATIONS_PAGE_TOKEN_SECRET")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start a replica");
        let stderr = child.stderr.take().expect("the replica's stderr");
        tokio::spawn(forward_unusual_lines(
            format!("{name}#{generation}"),
            stderr,
        ));
        let replica = Self {
            name,
            port,
            generation,
            child,
        };
        replica.await_ready(Duration::from_secs(60)).await;
        replica
    }

    fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    async fn await_ready(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let ready =
                invitations::health::check(self.addr(), READINESS, Duration::from_secs(1), None)
                    .await
                    .is_ok_and(|status| status == "SERVING");
            if ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not become ready within {within:?}",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGTERM, then the exit code once it has stopped.
    async fn stop(&mut self) -> Option<i32> {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await;
        }
        self.child
            .wait()
            .await
            .ok()
            .and_then(|status| status.code())
    }
}

/// What the replicas and the soak's own clients log: warnings, and HTTP/2's account of a
/// connection that ended (at debug), so that a call lost with its connection comes with the
/// reason the connection ended, on either side.
const HTTP2_LOG: &str = "warn,h2::proto=debug";

/// Whether a log line tells of the ordinary: a connection closed gracefully (a rotation, a
/// restart) or settings applied. These are dropped; everything else is shown.
fn is_ordinary(line: &str) -> bool {
    line.contains("NO_ERROR") || line.contains("settings ACK")
}

/// Copies a replica's log to the soak's stderr, all but its ordinary lines.
async fn forward_unusual_lines(replica: String, stderr: tokio::process::ChildStderr) {
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(stderr).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if !is_ordinary(&line) {
            eprintln!("replica {replica}: {line}");
        }
    }
}

/// The soak's own log (its clients' HTTP/2 connections), on stderr, without its ordinary
/// lines: each event is formatted into a buffer and written, or dropped, when complete.
struct UnusualLines(Vec<u8>);

impl std::io::Write for UnusualLines {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for UnusualLines {
    fn drop(&mut self) {
        let line = String::from_utf8_lossy(&self.0);
        if !is_ordinary(&line) {
            eprint!("soak client: {line}");
        }
    }
}

/// RSS (KiB) and open descriptors of a process, from /proc.
fn process_figures(pid: u32) -> Option<(u64, usize)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count();
    Some((rss, fds))
}

/// What the callers saw.
#[derive(Default)]
struct Tally {
    calls: BTreeMap<&'static str, u64>,
    /// `method code reason` of every failure the service answered with a documented error.
    documented: BTreeMap<String, u64>,
    /// Failures without the service's ErrorInfo that the server may have seen.
    undocumented: Vec<String>,
    /// Calls retried because the server never saw them (a replica restarting, a rotation).
    never_sent: u64,
}

/// Two clients, one per replica; a call goes to the preferred one and, if the server never
/// saw it, to the other, until one takes it (a restart leaves the other replica serving).
struct Callers {
    clients: [InvitationServiceClient<Channel>; 2],
    tally: Arc<Mutex<Tally>>,
    /// When the soak started: a failure says when it happened, to set beside the restarts.
    started: Instant,
}

impl Callers {
    async fn call<T, F, Fut>(
        &mut self,
        method: &'static str,
        prefer: usize,
        mut call: F,
    ) -> Option<T>
    where
        F: FnMut(InvitationServiceClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let give_up = Instant::now() + Duration::from_secs(30);
        let mut attempt = 0;
        loop {
            let replica = (prefer + attempt) % 2;
            let client = self.clients[replica].clone();
            attempt += 1;
            let outcome = call(client).await;
            let retry = {
                let mut tally = self.tally.lock().expect("tally");
                match outcome {
                    Ok(answer) => {
                        *tally.calls.entry(method).or_default() += 1;
                        return Some(answer.into_inner());
                    }
                    Err(status)
                        if never_reached_the_server(&status) && Instant::now() < give_up =>
                    {
                        tally.never_sent += 1;
                        true
                    }
                    Err(status) => {
                        *tally.calls.entry(method).or_default() += 1;
                        match status.get_details_error_info() {
                            Some(info) if info.domain == ERROR_DOMAIN => {
                                let key = format!("{method} {:?} {}", status.code(), info.reason);
                                *tally.documented.entry(key).or_default() += 1;
                            }
                            _ => tally.undocumented.push(format!(
                                "{method} at {:.3} s on replica {}: {status:?}",
                                self.started.elapsed().as_secs_f64(),
                                ["a", "b"][replica]
                            )),
                        }
                        false
                    }
                }
            };
            if !retry {
                return None;
            }
            if attempt.is_multiple_of(2) {
                // Both replicas refused: one is restarting, the other not ready yet.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

fn authorized<T>(token: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("ascii"),
    );
    request
}

/// One caller: create, get, list, issue a link, then accept it (even rounds) or cancel.
async fn caller(number: usize, mut callers: Callers, until: Instant) {
    let authenticator = Authenticator::hs256(JWT_SECRET.as_bytes(), ISSUER, AUDIENCE);
    let enterprise = EnterpriseId::from_uuid(Uuid::new_v4());
    let admin = authenticator.mint(
        UserRef::from_uuid(Uuid::new_v4()),
        Some(enterprise),
        &[ENTERPRISE_ADMIN.to_owned()],
        Duration::from_secs(86_400),
    );
    let mut round = 0usize;
    while Instant::now() < until {
        round += 1;
        let prefer = number + round;
        let email = format!("soak-{number}-{round}@acme.example");
        let create = CreateInvitationRequest {
            email_constraint: email.clone(),
            role: format!("roles/{}", Uuid::new_v4()),
            ..Default::default()
        };
        let Some(created) = callers
            .call("CreateInvitation", prefer, |mut c| {
                let request = authorized(&admin, create.clone());
                async move { c.create_invitation(request).await }
            })
            .await
        else {
            continue;
        };
        let id = created.id.clone();
        let get = GetInvitationRequest {
            invitation_id: id.clone(),
        };
        callers
            .call("GetInvitation", prefer + 1, |mut c| {
                let request = authorized(&admin, get.clone());
                async move { c.get_invitation(request).await }
            })
            .await;
        let list = ListInvitationsRequest {
            page_size: 10,
            ..Default::default()
        };
        callers
            .call("ListInvitations", prefer, |mut c| {
                let request = authorized(&admin, list.clone());
                async move { c.list_invitations(request).await }
            })
            .await;
        let issue = IssueInvitationTokenRequest {
            invitation_id: id.clone(),
            etag: created.etag.clone(),
            ..Default::default()
        };
        let Some(issued) = callers
            .call("IssueInvitationToken", prefer + 1, |mut c| {
                let request = authorized(&admin, issue.clone());
                async move { c.issue_invitation_token(request).await }
            })
            .await
        else {
            continue;
        };
        if round.is_multiple_of(2) {
            let invitee = authenticator.mint_invitee(
                UserRef::from_uuid(Uuid::new_v4()),
                &email,
                Duration::from_secs(600),
            );
            let accept = AcceptInvitationRequest {
                token: issued.token.clone(),
            };
            callers
                .call("AcceptInvitation", prefer, |mut c| {
                    let request = authorized(&invitee, accept.clone());
                    async move { c.accept_invitation(request).await }
                })
                .await;
        } else {
            let etag = issued
                .invitation
                .as_ref()
                .map_or(created.etag.clone(), |invitation| invitation.etag.clone());
            let cancel = CancelInvitationRequest {
                invitation_id: id.clone(),
                etag,
                reason: "soak".into(),
                ..Default::default()
            };
            callers
                .call("CancelInvitation", prefer, |mut c| {
                    let request = authorized(&admin, cancel.clone());
                    async move { c.cancel_invitation(request).await }
                })
                .await;
        }
    }
}

/// The admin URL with its database replaced by `name`.
fn with_database(admin_url: &str, name: &str) -> String {
    let mut url = url::Url::parse(admin_url).expect("a PostgreSQL URL");
    url.set_path(name);
    url.to_string()
}

#[tokio::main]
async fn main() {
    let opts = Opts::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(HTTP2_LOG))
        .with_ansi(false)
        .with_writer(|| UnusualLines(Vec::new()))
        .init();
    if let Some(path) = &opts.from {
        let text = std::fs::read_to_string(path).expect("read the report");
        let report: serde_json::Value = serde_json::from_str(&text).expect("a soak report");
        summarize(&report);
        if let Some(chart_path) = &opts.chart {
            std::fs::write(chart_path, chart::chart(&report)).expect("write the chart");
        }
        return;
    }
    if opts.database_url.is_empty() {
        eprintln!("soak: needs a PostgreSQL server: --database-url or TEST_DATABASE_URL");
        std::process::exit(2);
    }
    let admin = PgPool::connect(&opts.database_url)
        .await
        .expect("connect to PostgreSQL");
    let database = format!("invitations_soak_{}", Uuid::new_v4().simple());
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE DATABASE \"{database}\""
    )))
    .execute(&admin)
    .await
    .expect("create the soak's database");
    let url = with_database(&opts.database_url, &database);
    let migrated = Command::new(&opts.binary)
        .arg("migrate")
        .env("DATABASE_URL", &url)
        .status()
        .await
        .expect("run migrate");
    assert!(migrated.success(), "migrate failed: {migrated:?}");

    let started = Instant::now();
    let mut replicas = [
        Replica::start("a", free_port(), 1, &opts, &url).await,
        Replica::start("b", free_port(), 1, &opts, &url).await,
    ];
    let channels: Vec<Channel> = replicas
        .iter()
        .map(|replica| {
            tonic::transport::Endpoint::from_shared(format!("http://{}", replica.addr()))
                .expect("endpoint")
                .connect_lazy()
        })
        .collect();
    let until = started + Duration::from_secs(opts.seconds);
    let tally = Arc::new(Mutex::new(Tally::default()));
    let callers: Vec<_> = (0..opts.callers)
        .map(|number| {
            let callers = Callers {
                clients: [
                    InvitationServiceClient::new(channels[0].clone()),
                    InvitationServiceClient::new(channels[1].clone()),
                ],
                tally: tally.clone(),
                started,
            };
            tokio::spawn(caller(number, callers, until))
        })
        .collect();

    // The schedule: samples, and one restart (alternating replicas) every period.
    let pool_bound = 2 * i64::from(opts.pool_size);
    let mut samples = Vec::new();
    let mut restarts = Vec::new();
    let mut next_restart = started + Duration::from_secs(opts.restart_every_s);
    let mut restarted = 0usize;
    let mut sampling = tokio::time::interval(Duration::from_secs(opts.sample_every_s));
    while Instant::now() < until {
        sampling.tick().await;
        let at = started.elapsed().as_secs_f64();
        let connections: i64 =
            sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE datname = $1")
                .bind(&database)
                .fetch_one(&admin)
                .await
                .expect("count connections");
        let figures: Vec<_> = replicas
            .iter()
            .map(|replica| {
                let (rss_kib, fds) = replica
                    .pid()
                    .and_then(process_figures)
                    .map_or((None, None), |(rss, fds)| (Some(rss), Some(fds)));
                json!({"replica": replica.name, "generation": replica.generation,
                       "rss_kib": rss_kib, "fds": fds})
            })
            .collect();
        samples.push(json!({"at_s": at, "pg_connections": connections, "replicas": figures}));
        if Instant::now() >= next_restart && Instant::now() + Duration::from_secs(5) < until {
            let replica = &mut replicas[restarted % 2];
            let stopping = Instant::now();
            let exit_code = replica.stop().await;
            let stopped_after = stopping.elapsed();
            let (name, port, generation) = (replica.name, replica.port, replica.generation + 1);
            *replica = Replica::start(name, port, generation, &opts, &url).await;
            restarts.push(json!({
                "at_s": at, "replica": name, "exit_code": exit_code,
                "stopped_after_ms": stopped_after.as_millis() as u64,
                "back_after_ms": stopping.elapsed().as_millis() as u64,
            }));
            restarted += 1;
            next_restart += Duration::from_secs(opts.restart_every_s);
        }
    }
    for caller in callers {
        caller.await.expect("a caller");
    }
    for replica in &mut replicas {
        replica.stop().await;
    }
    admin.close().await;
    let admin = PgPool::connect(&opts.database_url)
        .await
        .expect("reconnect to PostgreSQL");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS \"{database}\" WITH (FORCE)"
    )))
    .execute(&admin)
    .await
    .expect("drop the soak's database");

    let tally = tally.lock().expect("tally");
    let most_connections = samples
        .iter()
        .filter_map(|sample| sample["pg_connections"].as_i64())
        .max()
        .unwrap_or(0);
    let report = json!({
        "seconds": opts.seconds,
        "connection_age_ms": opts.connection_age_ms,
        "restart_every_s": opts.restart_every_s,
        "callers": opts.callers,
        "pool_size_per_replica": opts.pool_size,
        "calls": tally.calls,
        "calls_total": tally.calls.values().sum::<u64>(),
        "documented_failures": tally.documented,
        "undocumented_failures": tally.undocumented,
        "never_sent_and_retried": tally.never_sent,
        "restarts": restarts,
        "pg_connections_max": most_connections,
        "pg_connections_bound": pool_bound,
        "samples": samples,
    });
    let text = serde_json::to_string_pretty(&report).expect("a report");
    if let Some(path) = &opts.out {
        std::fs::write(path, &text).expect("write the report");
    }
    if let Some(path) = &opts.chart {
        std::fs::write(path, chart::chart(&report)).expect("write the chart");
    }
    println!("{text}");
    summarize(&report);

    let mut failed = Vec::new();
    if !tally.undocumented.is_empty() {
        failed.push(format!(
            "{} undocumented failures",
            tally.undocumented.len()
        ));
    }
    if most_connections > pool_bound {
        failed.push(format!(
            "{most_connections} database connections, above the pools' {pool_bound}"
        ));
    }
    let unclean: Vec<_> = restarts
        .iter()
        .filter(|restart| restart["exit_code"] != 0)
        .collect();
    if !unclean.is_empty() {
        failed.push(format!("restarts that did not exit 0: {unclean:?}"));
    }
    if tally.calls.values().sum::<u64>() == 0 {
        failed.push("no call was made".into());
    }
    if !failed.is_empty() {
        eprintln!("soak: FAILED: {}", failed.join("; "));
        std::process::exit(1);
    }
    eprintln!("soak: ok");
}

/// One line per figure a reader looks for: calls, failures, and the first and last samples
/// of each replica's generation (flat means last ≈ first once warmed up).
fn summarize(report: &serde_json::Value) {
    eprintln!(
        "soak: {} calls, {} documented failures, {} undocumented, {} never sent and retried, \
         {} restarts, at most {} of {} database connections",
        report["calls_total"],
        report["documented_failures"]
            .as_object()
            .map_or(0, |failures| failures
                .values()
                .filter_map(|n| n.as_u64())
                .sum()),
        report["undocumented_failures"]
            .as_array()
            .map_or(0, Vec::len),
        report["never_sent_and_retried"],
        report["restarts"].as_array().map_or(0, Vec::len),
        report["pg_connections_max"],
        report["pg_connections_bound"],
    );
    /// A replica's sample: seconds since the start, RSS (KiB), open descriptors.
    type Point = (f64, u64, u64);
    let mut generations: BTreeMap<(String, u64), Vec<Point>> = BTreeMap::new();
    for sample in report["samples"].as_array().into_iter().flatten() {
        for replica in sample["replicas"].as_array().into_iter().flatten() {
            if let (Some(rss), Some(fds)) = (replica["rss_kib"].as_u64(), replica["fds"].as_u64()) {
                generations
                    .entry((
                        replica["replica"].as_str().unwrap_or("?").to_owned(),
                        replica["generation"].as_u64().unwrap_or(0),
                    ))
                    .or_default()
                    .push((sample["at_s"].as_f64().unwrap_or(0.0), rss, fds));
            }
        }
    }
    for ((name, generation), points) in generations {
        let (first, last) = (points[0], points[points.len() - 1]);
        let most = points.iter().map(|point| point.1).max().unwrap_or(0);
        eprintln!(
            "soak: replica {name}#{generation}: RSS {} -> {} KiB (max {most}), fds {} -> {}, \
             {:.0}-{:.0} s, {} samples",
            first.1,
            last.1,
            first.2,
            last.2,
            first.0,
            last.0,
            points.len()
        );
    }
}
