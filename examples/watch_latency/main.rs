//! The watch benchmark (issue 28, item 6): commit-to-delivery latency of WatchInvitations
//! and the server's peak memory, at a steady rate of changes with many watchers.
//!
//! Creates a database of its own on a PostgreSQL server, starts one or two replicas of the
//! release binary on it, opens `--watchers` watch streams spread over the replicas (each on
//! a connection of its own), then makes `--rate` changes per second (half CreateInvitation,
//! half CancelInvitation of an invitation created before; open loop: each change is sent on
//! schedule whether or not the previous ones were answered),
//! spread over the replicas, for `--seconds` after a warm-up. With two replicas half of the
//! deliveries cross replicas (through PostgreSQL LISTEN/NOTIFY).
//!
//! Latency is the time from an event's `occurred_at` (stamped by the replica just before the
//! change's statement, so it is earlier than the commit) to its arrival at a watcher: an
//! upper bound of commit-to-delivery. Peak RSS is each replica's `VmHWM`, with `--stalled`
//! more watchers that never read their streams among the clients.
//!
//! ```sh
//! cargo build --release --bins --examples
//! target/release/examples/watch_latency --replicas 1 --out bench/watch-latency-1.json
//! target/release/examples/watch_latency --replicas 2 --out bench/watch-latency-2.json
//! ```
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use clap::Parser;
use invitations::auth::{Authenticator, ENTERPRISE_ADMIN};
use invitations::domain::{EnterpriseId, UserRef};
use invitations::proto::invitations::v1::invitation_service_client::InvitationServiceClient;
use invitations::proto::invitations::v1::{
    CancelInvitationRequest, CreateInvitationRequest, WatchInvitationsRequest,
};
use sea_orm::sqlx::{self, PgPool};
use serde_json::json;
use tokio::process::{Child, Command};
use tonic::transport::Channel;
use uuid::Uuid;

const JWT_SECRET: &str = "watch-bench-secret-that-is-long-enough";
const ISSUER: &str = "invitations-watch-bench";
const AUDIENCE: &str = "invitations-watch-bench";
const READINESS: &str = "invitations.v1.InvitationService";

#[derive(Parser, Debug)]
struct Opts {
    /// A PostgreSQL server where the benchmark creates (and drops) a database of its own.
    #[arg(long, env = "TEST_DATABASE_URL", default_value = "")]
    database_url: String,
    #[arg(long, default_value = "target/release/invitations")]
    binary: String,
    #[arg(long, default_value_t = 1)]
    replicas: usize,
    #[arg(long, default_value_t = 100)]
    watchers: usize,
    /// Changes per second, all replicas together.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// How long the measured part lasts (after a warm-up of 3 s).
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Watchers that open a stream and never read it (their connections' HTTP/2 windows
    /// small), to show that clients that stall cannot grow the server's memory.
    #[arg(long, default_value_t = 10)]
    stalled: usize,
    /// Where to write the figures (JSON).
    #[arg(long)]
    out: Option<String>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|addr| addr.port())
        .expect("a free port")
}

fn with_database(url: &str, name: &str) -> String {
    let mut parsed = url::Url::parse(url).expect("a PostgreSQL URL");
    parsed.set_path(&format!("/{name}"));
    parsed.to_string()
}

struct Replica {
    port: u16,
    child: Child,
}

impl Replica {
    async fn start(binary: &str, url: &str) -> Self {
        let port = free_port();
        let child = Command::new(binary)
            .arg("serve")
            .env("DATABASE_URL", url)
            .env("INVITATIONS_LISTEN_ADDR", format!("127.0.0.1:{port}"))
            .env("INVITATIONS_JWT_HS256_SECRET", JWT_SECRET)
            .env("INVITATIONS_JWT_ISSUER", ISSUER)
            .env("INVITATIONS_JWT_AUDIENCE", AUDIENCE)
            .env("INVITATIONS_RATE_LIMIT_PER_SECOND", "0")
            .env("INVITATIONS_MAX_WATCH_STREAMS", "1000")
            .env("INVITATIONS_LOG_FORMAT", "json")
            .env("RUST_LOG", "warn")
            .env_remove("INVITATIONS_PAGE_TOKEN_SECRET")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("start a replica");
        let replica = Self { port, child };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !invitations::health::check(replica.addr(), READINESS, Duration::from_secs(1), None)
            .await
            .is_ok_and(|status| status == "SERVING")
        {
            assert!(Instant::now() < deadline, "a replica did not become ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        replica
    }

    fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Peak resident memory (`VmHWM`), in KiB.
    fn peak_rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()?)).ok()?;
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
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

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() {
    let opts = Opts::parse();
    if opts.database_url.is_empty() {
        eprintln!("watch_latency: needs a PostgreSQL server: --database-url or TEST_DATABASE_URL");
        std::process::exit(2);
    }
    let admin = PgPool::connect(&opts.database_url)
        .await
        .expect("PostgreSQL");
    let database = format!("invitations_watch_{}", Uuid::new_v4().simple());
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE DATABASE \"{database}\""
    )))
    .execute(&admin)
    .await
    .expect("create the database");
    let url = with_database(&opts.database_url, &database);
    let migrated = Command::new(&opts.binary)
        .arg("migrate")
        .env("DATABASE_URL", &url)
        .status()
        .await
        .expect("run migrate");
    assert!(migrated.success(), "migrate failed");

    let mut replicas = Vec::new();
    for _ in 0..opts.replicas.max(1) {
        replicas.push(Replica::start(&opts.binary, &url).await);
    }
    let enterprise = EnterpriseId::from_uuid(Uuid::new_v4());
    let token = Authenticator::hs256(JWT_SECRET.as_bytes(), ISSUER, AUDIENCE).mint(
        UserRef::from_uuid(Uuid::new_v4()),
        Some(enterprise),
        &[ENTERPRISE_ADMIN.to_owned()],
        Duration::from_secs(3600),
    );

    // The watchers: each on a connection of its own; latencies in microseconds.
    let measuring = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let latencies: Arc<Mutex<Vec<f64>>> = Arc::new(Mutex::new(Vec::new()));
    let mut watchers = Vec::new();
    for n in 0..opts.watchers {
        let addr = replicas[n % replicas.len()].addr();
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .expect("endpoint")
            .connect()
            .await
            .expect("connect");
        let mut client = InvitationServiceClient::new(channel);
        let mut stream = client
            .watch_invitations(authorized(&token, WatchInvitationsRequest::default()))
            .await
            .expect("a watch")
            .into_inner();
        let latencies = latencies.clone();
        let measuring = measuring.clone();
        watchers.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            while let Ok(Some(message)) = stream.message().await {
                let arrived = SystemTime::now();
                if !measuring.load(std::sync::atomic::Ordering::Relaxed) {
                    continue;
                }
                for event in message.events {
                    let Some(at) = event.occurred_at else {
                        continue;
                    };
                    let Ok(at) = SystemTime::try_from(at) else {
                        continue;
                    };
                    if let Ok(latency) = arrived.duration_since(at) {
                        mine.push(latency.as_secs_f64() * 1000.0);
                    }
                }
                if mine.len() >= 4096 {
                    latencies.lock().expect("latencies").append(&mut mine);
                }
            }
            latencies.lock().expect("latencies").append(&mut mine);
        }));
    }

    // The stalled watchers: open, never read; held until the end.
    let mut stalled = Vec::new();
    for n in 0..opts.stalled {
        let addr = replicas[n % replicas.len()].addr();
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .expect("endpoint")
            .initial_stream_window_size(Some(65_535))
            .initial_connection_window_size(Some(65_535))
            .connect()
            .await
            .expect("connect");
        let mut client = InvitationServiceClient::new(channel);
        let stream = client
            .watch_invitations(authorized(&token, WatchInvitationsRequest::default()))
            .await
            .expect("a watch")
            .into_inner();
        stalled.push((client, stream));
    }

    // The writers: open loop at `rate`, over a few connections per replica.
    let writers: Vec<InvitationServiceClient<Channel>> = (0..8)
        .map(|n| {
            let addr = replicas[n % replicas.len()].addr();
            InvitationServiceClient::new(
                tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                    .expect("endpoint")
                    .connect_lazy(),
            )
        })
        .collect();
    let warmup = Duration::from_secs(3);
    let total = warmup + Duration::from_secs(opts.seconds);
    let interval = Duration::from_secs_f64(1.0 / opts.rate as f64);
    let started = Instant::now();
    let failed = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut sent = 0u64;
    let created: Arc<Mutex<std::collections::VecDeque<(String, String)>>> = Arc::default();
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    while started.elapsed() < total {
        ticks.tick().await;
        if !measuring.load(std::sync::atomic::Ordering::Relaxed) && started.elapsed() >= warmup {
            measuring.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        let mut client = writers[(sent as usize) % writers.len()].clone();
        let failed = failed.clone();
        let created = created.clone();
        let token = token.clone();
        // Every other change cancels an invitation created before; the rest create.
        let to_cancel = if sent % 2 == 1 {
            created.lock().expect("created").pop_front()
        } else {
            None
        };
        let email = format!("w{sent}@bench.example");
        tokio::spawn(async move {
            let outcome = match to_cancel {
                Some((id, etag)) => client
                    .cancel_invitation(authorized(
                        &token,
                        CancelInvitationRequest {
                            invitation_id: id,
                            etag,
                            ..Default::default()
                        },
                    ))
                    .await
                    .map(|_| ()),
                None => client
                    .create_invitation(authorized(
                        &token,
                        CreateInvitationRequest {
                            email_constraint: email,
                            role: format!("roles/{}", Uuid::new_v4()),
                            ..Default::default()
                        },
                    ))
                    .await
                    .map(|answer| {
                        let answer = answer.into_inner();
                        created
                            .lock()
                            .expect("created")
                            .push_back((answer.id, answer.etag));
                    }),
            };
            if outcome.is_err() {
                failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        });
        sent += 1;
    }
    let elapsed = started.elapsed();
    // The last events arrive.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let peak_rss_mib: Vec<f64> = replicas
        .iter()
        .map(|r| r.peak_rss_kib().unwrap_or(0) as f64 / 1024.0)
        .collect();
    drop(stalled);
    drop(replicas);
    for watcher in watchers {
        let _ = tokio::time::timeout(Duration::from_secs(5), watcher).await;
    }
    let mut all = std::mem::take(&mut *latencies.lock().expect("latencies"));
    all.sort_by(|a, b| a.total_cmp(b));
    let figures = json!({
        "replicas": opts.replicas,
        "watchers": opts.watchers,
        "stalled_watchers": opts.stalled,
        "rate_per_s": opts.rate,
        "achieved_rate_per_s": sent as f64 / elapsed.as_secs_f64(),
        "changes_failed": failed.load(std::sync::atomic::Ordering::Relaxed),
        "deliveries": all.len(),
        "latency_ms": {
            "p50": percentile(&all, 50.0),
            "p90": percentile(&all, 90.0),
            "p99": percentile(&all, 99.0),
            "max": all.last().copied().unwrap_or(f64::NAN),
        },
        "peak_rss_mib": peak_rss_mib,
        "machine": std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|c| c.lines().find_map(|l| l.strip_prefix("model name").map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned()))),
    });
    println!("{}", serde_json::to_string_pretty(&figures).expect("json"));
    if let Some(out) = &opts.out {
        std::fs::write(out, serde_json::to_string_pretty(&figures).expect("json")).expect("write");
    }
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS \"{database}\" WITH (FORCE)"
    )))
    .execute(&admin)
    .await
    .expect("drop the database");
}
