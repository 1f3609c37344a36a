//! The benchmark harness: ListInvitations and CancelInvitation against the two limits the
//! service cannot beat, measured in the same run on the same machine.
//!
//! - **service**: the real server (the release binary as its own process, pinned to core 0,
//!   or in-process for `--quick`), driven by a closed-loop gRPC load generator (this process,
//!   pinned to core 1); with `--pin-db` the database's work for it moves to core 1 as well,
//!   so core 0 is the server's alone (PostgreSQL's backends, or SQLite's reader and writer
//!   threads in the service process);
//! - **transport limit**: a no-op `InvitationService` on the same tonic server settings (no
//!   database, no interceptor, no layers) whose answers are prebuilt messages of the same size;
//! - **database limit**: the same SQL the service sends (the keyset page, the conditional
//!   update), driven directly at the same concurrency: pgbench with a custom script on
//!   PostgreSQL, a small sqlx loop on SQLite.
//!
//! The combined limit of an operation is `1 / (1/transport + 1/database)`. Every figure is the
//! median of `--runs` rounds in which the three variants alternate. Flatness in size is
//! measured on a pair (`--ops flat`): the smallest and the largest table side by side, their
//! service and bare SQL alternated in every round, so size is not confounded with time.
//!
//! ```sh
//! cargo run --example bench -- --quick                        # seconds; what CI runs
//! cargo build --release --bins --examples                     # then, for the real figures:
//! target/release/examples/bench --full --store postgres       # writes bench/results.json
//! target/release/examples/bench --report                      # tables + bench/throughput.svg
//! target/release/examples/bench --explain --store postgres    # bench/explain-postgres.txt
//! ```
//! See BENCHMARKS.md for the figures and what they mean.
use std::collections::BTreeMap;
use std::future::Future;
use std::io::{BufRead, BufReader, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use invitations::auth::{Authenticator, ENTERPRISE_ADMIN};
use invitations::config::{Config, Secret};
use invitations::domain::{
    CancelReason, EmailAddress, EnterpriseId, Etag, Invitation, InvitationId, InvitationStatus,
    RoleRef, Scope, Timestamp, UserRef, Version,
};
use invitations::proto::invitations::v1 as pb;
use invitations::proto::invitations::v1::invitation_service_client::InvitationServiceClient;
use invitations::proto::invitations::v1::invitation_service_server::{
    InvitationService, InvitationServiceServer,
};
use invitations::startup::Application;
use invitations::store::{Store, StoreSettings};
use prost::Message as _;
use sea_orm::sqlx::{self, AssertSqlSafe, Row as _};
use serde::{Deserialize, Serialize};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;
use uuid::Uuid;

const JWT_SECRET: &str = "benchmark-secret-that-is-at-least-32-bytes-long";
const JWT_ISSUER: &str = "invitations";
const PAGE_SIZE: u64 = 50;
const ENTERPRISES_SPREAD: u64 = 1000;
/// The page after this many pages of 50 is the "deep page".
const DEEP_PAGES: u64 = 10_000;
const PG_BENCH_DB: &str = "invitations_bench";
/// The kind of a dataset measured as one side of a size pair (`--ops flat`), and the op its
/// first pages are recorded under.
const FLAT_PAIR: &str = "flat";
/// How many ids the cancel race (many cancels of one invitation) uses, and cancels per id.
const RACE_IDS: usize = 40;
const RACE_PER_ID: usize = 16;

const COLUMNS: [&str; 20] = [
    "id",
    "enterprise_id",
    "scope",
    "email_constraint",
    "email_normalized",
    "role",
    "status",
    "invited_by",
    "pending_human_actor_ref",
    "challenge_ref",
    "created_at",
    "updated_at",
    "expires_at",
    "accepted_at",
    "accepted_by",
    "cancelled_at",
    "cancel_reason",
    "cancelled_by",
    "version",
    "link_token_hash",
];

/// What the service's reads select and its writes return (`READ_COLUMNS` in
/// `src/store/mod.rs`): every column but the link hash, which never leaves the table.
const READ_COLUMNS: &[&str] = COLUMNS.split_last().expect("columns").1;

// ------------------------------------------------------------------------------------------
// Command line
// ------------------------------------------------------------------------------------------

/// Benchmarks ListInvitations and CancelInvitation against the transport and database limits.
#[derive(Debug, Parser)]
#[command(name = "bench")]
struct Opts {
    /// A short run (seconds): 1 000 rows, concurrency 1 and 8, one round; SQLite, and
    /// PostgreSQL when TEST_DATABASE_URL is set. Exits non-zero only on errors.
    #[arg(long)]
    quick: bool,
    /// The full matrix (sizes 1k/100k/1M, both layouts, concurrency 1/8/32/64, 5 rounds).
    #[arg(long)]
    full: bool,
    /// Seed the 1M-row table and write EXPLAIN plans of every List filter and of Cancel.
    #[arg(long)]
    explain: bool,
    /// Print the tables and targets from the results file and redraw the chart.
    #[arg(long)]
    report: bool,
    /// (internal) serve the no-op InvitationService and print its address.
    #[arg(long, hide = true)]
    serve_noop: bool,

    /// Stores: sqlite, postgres (comma-separated). Default: both (postgres only with a URL).
    #[arg(long, value_delimiter = ',')]
    store: Vec<String>,
    /// Table sizes (rows).
    #[arg(long, value_delimiter = ',')]
    sizes: Vec<u64>,
    /// Layouts: single (all rows in one enterprise), spread (over 1 000 enterprises).
    #[arg(long, value_delimiter = ',')]
    layouts: Vec<String>,
    /// Operations: list, deep (the page after 10 000 pages; 1M single only), cancel, flat
    /// (List on the smallest and the largest size at once, sizes alternated in each round).
    #[arg(long, value_delimiter = ',')]
    ops: Vec<String>,
    /// Concurrency levels (closed-loop clients).
    #[arg(long, value_delimiter = ',')]
    conc: Vec<usize>,
    /// Concurrency levels for the deep page.
    #[arg(long, value_delimiter = ',')]
    deep_conc: Vec<usize>,
    /// Alternating rounds; the median is reported.
    #[arg(long)]
    runs: Option<usize>,
    /// Seconds measured per List measurement (pgbench needs whole seconds).
    #[arg(long)]
    secs: Option<u64>,
    /// Cancels per Cancel measurement of the service and of the database, at every
    /// concurrency (each needs a fresh invitation; the no-op runs for `--secs` instead).
    #[arg(long)]
    cancels: Option<usize>,
    /// PostgreSQL server URL (a database on it is created and dropped); default
    /// TEST_DATABASE_URL.
    #[arg(long)]
    pg_url: Option<String>,
    /// `process` (the release binary, pinned) or `inproc` (same process).
    #[arg(long)]
    server: Option<String>,
    /// The service binary for `--server process`; default: next to this example's directory.
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// pgbench; default: on PATH or /usr/lib/postgresql/*/bin/pgbench.
    #[arg(long)]
    pgbench: Option<PathBuf>,
    /// Pin servers to core 0 and the load generator (this process, pgbench) to core 1.
    #[arg(long)]
    pin: Option<bool>,
    /// With `--pin`, also move the database's work for the service to core 1, so the
    /// server's core is its own: PostgreSQL's backends serving it, or on SQLite the
    /// service's reader and writer threads. Off by default: the combined limit assumes the
    /// database shares the machine's CPU with the server, as it does unmoved.
    #[arg(long)]
    pin_db: Option<bool>,
    /// Results file (merged: a run replaces only the datasets it measured).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Chart file.
    #[arg(long)]
    chart: Option<PathBuf>,
    /// The service's pool size (INVITATIONS_DB_MAX_CONNECTIONS); default: its own default.
    #[arg(long)]
    db_max_connections: Option<u32>,
    /// A label stored with the results (e.g. `baseline`, `after-fix`).
    #[arg(long, default_value = "")]
    label: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StoreKind {
    Sqlite,
    Postgres,
}

impl StoreKind {
    fn name(self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Postgres => "postgres",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    Single,
    Spread,
}

impl Layout {
    fn name(self) -> &'static str {
        match self {
            Self::Single => "single",
            Self::Spread => "spread",
        }
    }
    fn enterprises(self) -> u64 {
        match self {
            Self::Single => 1,
            Self::Spread => ENTERPRISES_SPREAD,
        }
    }
}

/// What a run does, with every default filled in.
#[derive(Debug, Clone)]
struct Plan {
    stores: Vec<StoreKind>,
    sizes: Vec<u64>,
    layouts: Vec<Layout>,
    ops: Vec<String>,
    /// The small and the large table of the size pair (`flat`).
    flat_sizes: (u64, u64),
    conc: Vec<usize>,
    deep_conc: Vec<usize>,
    runs: usize,
    secs: u64,
    warmup: Duration,
    cancels: usize,
    pg_url: Option<String>,
    inproc: bool,
    server_bin: PathBuf,
    pgbench: Option<PathBuf>,
    pin: bool,
    pin_db: bool,
    out: Option<PathBuf>,
    chart: Option<PathBuf>,
    db_max_connections: Option<u32>,
    label: String,
}

fn find_pgbench() -> Option<PathBuf> {
    if let Ok(path) = std::env::var("PATH") {
        for dir in path.split(':') {
            let candidate = Path::new(dir).join("pgbench");
            if candidate.is_file() {
                return Some(candidate);
            }
        }
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("bin/pgbench"))
        .filter(|p| p.is_file())
        .collect();
    found.sort();
    found.pop()
}

fn default_server_bin() -> PathBuf {
    // target/<profile>/examples/bench -> target/<profile>/invitations
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent()?.parent().map(|d| d.join("invitations")))
        .unwrap_or_else(|| PathBuf::from("target/release/invitations"))
}

fn plan_from(opts: &Opts) -> Result<Plan, String> {
    // --explain and --report use the full defaults (1M rows, both stores).
    let quick = opts.quick || !(opts.full || opts.explain || opts.report);
    let benchmarking = !(opts.explain || opts.report);
    let pg_url = opts.pg_url.clone().or_else(|| {
        std::env::var("TEST_DATABASE_URL")
            .ok()
            .filter(|u| !u.is_empty())
    });
    let stores = if opts.store.is_empty() {
        let mut s = vec![StoreKind::Sqlite];
        if pg_url.is_some() {
            s.push(StoreKind::Postgres);
        }
        s
    } else {
        opts.store
            .iter()
            .map(|s| match s.as_str() {
                "sqlite" => Ok(StoreKind::Sqlite),
                "postgres" | "postgresql" => Ok(StoreKind::Postgres),
                other => Err(format!("unknown store {other}")),
            })
            .collect::<Result<_, _>>()?
    };
    if stores.contains(&StoreKind::Postgres) && pg_url.is_none() {
        return Err("PostgreSQL needs --pg-url or TEST_DATABASE_URL".into());
    }
    let layouts = if opts.layouts.is_empty() {
        if quick {
            vec![Layout::Single]
        } else {
            vec![Layout::Single, Layout::Spread]
        }
    } else {
        opts.layouts
            .iter()
            .map(|l| match l.as_str() {
                "single" => Ok(Layout::Single),
                "spread" => Ok(Layout::Spread),
                other => Err(format!("unknown layout {other}")),
            })
            .collect::<Result<_, _>>()?
    };
    let or = |given: &Vec<usize>, quick_default: &[usize], full_default: &[usize]| {
        if !given.is_empty() {
            given.clone()
        } else if quick {
            quick_default.to_vec()
        } else {
            full_default.to_vec()
        }
    };
    let server = opts
        .server
        .clone()
        .unwrap_or_else(|| if quick { "inproc" } else { "process" }.into());
    let inproc = match server.as_str() {
        "inproc" => true,
        "process" => false,
        other => return Err(format!("unknown --server {other}")),
    };
    let server_bin = opts.server_bin.clone().unwrap_or_else(default_server_bin);
    if benchmarking && !inproc && !server_bin.is_file() {
        return Err(format!(
            "--server process needs the service binary at {} (cargo build --release --bins --examples)",
            server_bin.display()
        ));
    }
    let taskset = Path::new("/usr/bin/taskset").is_file();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let pin = opts.pin.unwrap_or(!quick && taskset && cores >= 2);
    let sizes = if !opts.sizes.is_empty() {
        opts.sizes.clone()
    } else if quick {
        vec![1000]
    } else {
        vec![1000, 100_000, 1_000_000]
    };
    let (smallest, largest) = (
        sizes.iter().copied().min().unwrap_or(1000),
        sizes.iter().copied().max().unwrap_or(1000),
    );
    Ok(Plan {
        stores,
        // One size given (the quick run): its pair is ten times larger, so the pair's code
        // runs in CI too.
        flat_sizes: (
            smallest,
            if largest > smallest {
                largest
            } else {
                10 * smallest
            },
        ),
        sizes,
        layouts,
        ops: if !opts.ops.is_empty() {
            opts.ops.clone()
        } else {
            vec![
                "list".into(),
                "deep".into(),
                "cancel".into(),
                FLAT_PAIR.into(),
            ]
        },
        conc: or(&opts.conc, &[1, 8], &[1, 8, 32, 64]),
        deep_conc: or(&opts.deep_conc, &[1, 8], &[1, 8, 32]),
        runs: opts.runs.unwrap_or(if quick { 1 } else { 5 }),
        secs: opts.secs.unwrap_or(if quick { 1 } else { 2 }).max(1),
        warmup: if quick {
            Duration::from_millis(100)
        } else {
            Duration::from_millis(300)
        },
        // A commit waits for a WAL flush, whose latency drifts: at c=1, 6 000 cancels last
        // 2 to 20 s on the machines seen so far, where 500 lasted 0.15 s and a round's p50
        // was one moment's flush latency.
        cancels: opts
            .cancels
            .unwrap_or(if quick { 200 } else { 6000 })
            .max(1),
        pg_url,
        inproc,
        server_bin,
        pgbench: opts.pgbench.clone().or_else(find_pgbench),
        pin,
        pin_db: pin && !inproc && opts.pin_db.unwrap_or(false),
        out: opts.out.clone().or_else(|| {
            (!quick || opts.report || opts.explain).then(|| PathBuf::from("bench/results.json"))
        }),
        chart: opts
            .chart
            .clone()
            .or_else(|| (!quick || opts.report).then(|| PathBuf::from("bench/throughput.svg"))),
        db_max_connections: opts.db_max_connections,
        label: opts.label.clone(),
    })
}

// ------------------------------------------------------------------------------------------
// The seeded data: deterministic, so the harness, SQL and pgbench agree without a lookup.
// ------------------------------------------------------------------------------------------

/// `{prefix:08x}-0000-4000-8000-{n:012x}`.
fn mk_uuid(prefix: u32, n: u64) -> Uuid {
    Uuid::from_u128(
        (u128::from(prefix) << 96) | (0x4000u128 << 64) | (0x8000u128 << 48) | u128::from(n),
    )
}
const ID_PREFIX: u32 = 0xa000_0000;
const POOL_PREFIX: u32 = 0xc000_0000;
const ENTERPRISE_PREFIX: u32 = 0xe000_0000;
fn enterprise_uuid(e: u64) -> Uuid {
    mk_uuid(ENTERPRISE_PREFIX, e)
}
fn admin_uuid() -> Uuid {
    mk_uuid(0xb000_0000, 1)
}
fn acceptor_uuid() -> Uuid {
    mk_uuid(0xb000_0000, 2)
}
fn role_uuid() -> Uuid {
    mk_uuid(0xd000_0000, 1)
}

/// Instants shared by the seed and the load.
#[derive(Debug, Clone, Copy)]
struct Clock {
    /// created_at of row 0; row i is `t0 - i ms` (row 0 is the newest).
    t0: i64,
    /// expires_at of every live pending row.
    expires: i64,
}

impl Clock {
    fn now() -> Self {
        let now = Timestamp::now().unix_micros();
        Self {
            t0: now - 3_600_000_000,
            expires: now + 7 * 24 * 3_600_000_000,
        }
    }
    fn created_at(self, i: u64) -> i64 {
        self.t0 - i as i64 * 1000
    }
}

/// Row `i` as a domain invitation, exactly as the seed SQL writes it.
/// Status by `i % 4`: pending (one in ten of those lapsed), accepted, cancelled, expired;
/// every third row has the sub-scope `…/teams/blue`; four consecutive rows share an address.
fn seeded_invitation(layout: Layout, i: u64, clock: Clock) -> Invitation {
    let e = EnterpriseId::from_uuid(enterprise_uuid(i % layout.enterprises()));
    let c = clock.created_at(i);
    let kind = i % 4;
    let lapsed = kind == 0 && (i / 4).is_multiple_of(10);
    let scope = if i % 3 == 1 {
        format!("{e}/teams/blue")
    } else {
        e.to_string()
    };
    let admin = UserRef::from_uuid(admin_uuid());
    Invitation {
        id: InvitationId::from_uuid(mk_uuid(ID_PREFIX, i)),
        enterprise: e,
        scope: Scope::parse(&scope).expect("seeded scope"),
        email: EmailAddress::parse(&format!("user{}@example.com", i / 4)).expect("address"),
        role: RoleRef::from_uuid(role_uuid()),
        stored_status: match kind {
            0 => InvitationStatus::Pending,
            1 => InvitationStatus::Accepted,
            2 => InvitationStatus::Cancelled,
            _ => InvitationStatus::Expired,
        },
        invited_by: admin,
        pending_human_actor: None,
        challenge_ref: None,
        created_at: Timestamp::from_unix_micros(c),
        updated_at: Timestamp::from_unix_micros(if kind == 0 { c } else { c + 60_000_000 }),
        expires_at: Timestamp::from_unix_micros(if kind == 3 || lapsed {
            c + 1_000_000
        } else {
            clock.expires
        }),
        accepted_at: (kind == 1).then(|| Timestamp::from_unix_micros(c + 60_000_000)),
        accepted_by: (kind == 1).then(|| UserRef::from_uuid(acceptor_uuid())),
        cancelled_at: (kind == 2).then(|| Timestamp::from_unix_micros(c + 60_000_000)),
        cancel_reason: (kind == 2)
            .then(|| CancelReason::parse("seeded").ok().flatten())
            .flatten(),
        cancelled_by: (kind == 2).then_some(admin),
        version: if kind == 0 {
            Version::FIRST
        } else {
            Version::FIRST.next()
        },
    }
}

/// SQL that writes rows `from..from+count` (or cancel-pool rows) as [`seeded_invitation`] does.
fn seed_sql(
    store: StoreKind,
    layout: Layout,
    from: u64,
    count: u64,
    clock: Clock,
    pool: bool,
) -> String {
    let end = from + count;
    let ents = layout.enterprises();
    let cols = COLUMNS.join(", ");
    let role = format!("roles/{}", role_uuid());
    let admin = format!("users/{}", admin_uuid());
    let acceptor = format!("users/{}", acceptor_uuid());
    let Clock { t0, expires } = clock;
    // Pool rows are older than every seeded row, so they never show on a first page.
    let pool_t0 = t0 - 2_000_000_000_000;
    type Render1 = fn(&str) -> String;
    type Render2 = fn(&str, &str) -> String;
    let (series, id_hex, ent_text, ent_key): (String, Render2, Render1, Render1) = match store {
        StoreKind::Postgres => (
            format!("generate_series({from}::bigint, {}::bigint) AS i", end - 1),
            |prefix: &str, v: &str| {
                format!("('{prefix}-0000-4000-8000-' || lpad(to_hex({v}), 12, '0'))::uuid")
            },
            |v: &str| format!("('e0000000-0000-4000-8000-' || lpad(to_hex({v}), 12, '0'))"),
            |v: &str| format!("('e0000000-0000-4000-8000-' || lpad(to_hex({v}), 12, '0'))::uuid"),
        ),
        StoreKind::Sqlite => (
            "s".to_owned(),
            |prefix: &str, v: &str| format!("unhex(printf('{prefix}000040008000%012x', {v}))"),
            |v: &str| format!("printf('e0000000-0000-4000-8000-%012x', {v})"),
            |v: &str| format!("unhex(printf('e0000000000040008000%012x', {v}))"),
        ),
    };
    let ent_of = if ents == 1 {
        "0".to_owned()
    } else {
        format!("(i % {ents})")
    };
    let body = if pool {
        format!(
            "SELECT {id}, {ek}, 'enterprises/' || {et}, 'pool' || i || '@example.com', \
             'pool' || i || '@example.com', '{role}', 'pending', '{admin}', NULL, NULL, \
             {pool_t0} - i, {pool_t0} - i, {expires}, NULL, NULL, NULL, NULL, NULL, 1, NULL \
             FROM {series}",
            id = id_hex("c0000000", "i"),
            ek = ent_key(&ent_of),
            et = ent_text(&ent_of),
        )
    } else {
        format!(
            "SELECT {id}, {ek}, \
             CASE WHEN i % 3 = 1 THEN 'enterprises/' || {et} || '/teams/blue' ELSE 'enterprises/' || {et} END, \
             'user' || (i / 4) || '@example.com', 'user' || (i / 4) || '@example.com', '{role}', \
             CASE i % 4 WHEN 0 THEN 'pending' WHEN 1 THEN 'accepted' WHEN 2 THEN 'cancelled' ELSE 'expired' END, \
             '{admin}', NULL, NULL, \
             {t0} - i * 1000, \
             CASE WHEN i % 4 = 0 THEN {t0} - i * 1000 ELSE {t0} - i * 1000 + 60000000 END, \
             CASE WHEN i % 4 = 3 OR (i % 4 = 0 AND (i / 4) % 10 = 0) THEN {t0} - i * 1000 + 1000000 ELSE {expires} END, \
             CASE WHEN i % 4 = 1 THEN {t0} - i * 1000 + 60000000 END, \
             CASE WHEN i % 4 = 1 THEN '{acceptor}' END, \
             CASE WHEN i % 4 = 2 THEN {t0} - i * 1000 + 60000000 END, \
             CASE WHEN i % 4 = 2 THEN 'seeded' END, \
             CASE WHEN i % 4 = 2 THEN '{admin}' END, \
             CASE WHEN i % 4 = 0 THEN 1 ELSE 2 END, NULL \
             FROM {series}",
            id = id_hex("a0000000", "i"),
            ek = ent_key(&ent_of),
            et = ent_text(&ent_of),
        )
    };
    match store {
        StoreKind::Postgres => format!("INSERT INTO invitations ({cols}) {body}"),
        StoreKind::Sqlite => format!(
            "WITH RECURSIVE s(i) AS (SELECT {from} UNION ALL SELECT i + 1 FROM s WHERE i + 1 < {end}) \
             INSERT INTO invitations ({cols}) {body}"
        ),
    }
}

// ------------------------------------------------------------------------------------------
// The SQL the service runs (src/store/mod.rs, as SeaORM renders it), for the database limit.
// ------------------------------------------------------------------------------------------

fn select_list() -> String {
    READ_COLUMNS
        .iter()
        .map(|c| format!("\"invitations\".\"{c}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `Store::list` without filters; `ent`, `cursor` and `limit` are placeholders or literals.
fn list_sql(ent: &str, cursor: Option<(&str, &str)>, limit: &str) -> String {
    let keyset = cursor
        .map(|(c, id)| format!(" AND (\"created_at\", \"id\") < ({c}, {id})"))
        .unwrap_or_default();
    format!(
        "SELECT {} FROM \"invitations\" WHERE \"invitations\".\"enterprise_id\" = {ent}{keyset} \
         ORDER BY \"invitations\".\"created_at\" DESC, \"invitations\".\"id\" DESC LIMIT {limit}",
        select_list()
    )
}

/// `Store::cancel_pending`: placeholders `p(1..=12)` in SeaORM's order.
fn cancel_sql(p: impl Fn(usize) -> String) -> String {
    format!(
        "UPDATE \"invitations\" SET \"status\" = {}, \"cancelled_at\" = {}, \"cancelled_by\" = {}, \
         \"cancel_reason\" = {}, \"updated_at\" = {}, \"version\" = {}, \"link_token_hash\" = {} \
         WHERE \"invitations\".\"id\" = {} AND \"invitations\".\"enterprise_id\" = {} \
         AND \"invitations\".\"version\" = {} AND (\"invitations\".\"status\" = {} \
         AND \"invitations\".\"expires_at\" > {}) RETURNING {}",
        p(1),
        p(2),
        p(3),
        p(4),
        p(5),
        p(6),
        p(7),
        p(8),
        p(9),
        p(10),
        p(11),
        p(12),
        READ_COLUMNS
            .iter()
            .map(|c| format!("\"{c}\""))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

// ------------------------------------------------------------------------------------------
// Measurements
// ------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Sample {
    rps: f64,
    p50_us: f64,
    p99_us: f64,
    n: u64,
    codes: BTreeMap<String, u64>,
}

fn percentile(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1] as f64
}

fn sample_from(
    mut latencies_ns: Vec<u64>,
    elapsed: Duration,
    codes: BTreeMap<String, u64>,
) -> Sample {
    latencies_ns.sort_unstable();
    let n = latencies_ns.len() as u64;
    Sample {
        rps: n as f64 / elapsed.as_secs_f64().max(1e-9),
        p50_us: percentile(&latencies_ns, 0.50) / 1e3,
        p99_us: percentile(&latencies_ns, 0.99) / 1e3,
        n,
        codes,
    }
}

/// How long a closed loop runs.
#[derive(Debug, Clone, Copy)]
enum Span {
    /// Warm up, then count what completes within `measure`.
    Timed { warmup: Duration, measure: Duration },
    /// Exactly `total` calls (call `i` gets index `i`); the first `warm` are not counted.
    Count { total: usize, warm: usize },
}

/// `conc` tasks, each calling `call(task, index)` back to back.
async fn closed_loop<F, Fut>(conc: usize, span: Span, call: F) -> Sample
where
    F: Fn(usize, usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    let call = Arc::new(call);
    let next = Arc::new(AtomicUsize::new(0));
    let begin = Instant::now();
    let first_start = Arc::new(AtomicU64::new(u64::MAX));
    let last_done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(conc);
    for task in 0..conc {
        let call = call.clone();
        let next = next.clone();
        let (first_start, last_done) = (first_start.clone(), last_done.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(4096);
            let mut codes: BTreeMap<String, u64> = BTreeMap::new();
            let mut seq = 0usize;
            loop {
                let (index, counted, window) = match span {
                    Span::Timed { warmup, measure } => {
                        let now = begin.elapsed();
                        if now >= warmup + measure {
                            break;
                        }
                        seq += 1;
                        (
                            task.wrapping_mul(1_000_003).wrapping_add(seq),
                            true,
                            Some((warmup, warmup + measure)),
                        )
                    }
                    Span::Count { total, warm } => {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= total {
                            break;
                        }
                        (i, i >= warm, None)
                    }
                };
                let started = begin.elapsed();
                let outcome = call(index, task).await;
                let done = begin.elapsed();
                // Timed: what completes inside the window (pgbench -T counts the same way).
                let counted = match window {
                    Some((from, to)) => done >= from && done <= to,
                    None => counted,
                };
                if counted {
                    latencies.push((done - started).as_nanos() as u64);
                    first_start.fetch_min(started.as_nanos() as u64, Ordering::Relaxed);
                    last_done.fetch_max(done.as_nanos() as u64, Ordering::Relaxed);
                    let code = match outcome {
                        Ok(()) => "OK".to_owned(),
                        Err(code) => code,
                    };
                    *codes.entry(code).or_default() += 1;
                }
            }
            (latencies, codes)
        }));
    }
    let mut latencies = Vec::new();
    let mut codes: BTreeMap<String, u64> = BTreeMap::new();
    for task in tasks {
        let (l, c) = task.await.expect("a load task panicked");
        latencies.extend(l);
        for (k, v) in c {
            *codes.entry(k).or_default() += v;
        }
    }
    let elapsed = match span {
        Span::Timed { measure, .. } => measure,
        Span::Count { .. } => Duration::from_nanos(
            last_done
                .load(Ordering::Relaxed)
                .saturating_sub(first_start.load(Ordering::Relaxed).min(u64::MAX - 1)),
        ),
    };
    sample_from(latencies, elapsed, codes)
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

async fn connect_clients(addr: SocketAddr, conc: usize) -> Vec<InvitationServiceClient<Channel>> {
    let channels = connect_channels(addr, conc).await;
    channels
        .into_iter()
        .map(InvitationServiceClient::new)
        .collect()
}

async fn connect_channels(addr: SocketAddr, conc: usize) -> Vec<Channel> {
    // One HTTP/2 connection per 8 callers, as a client pool would.
    let conns = conc.div_ceil(8).max(1);
    let mut channels = Vec::with_capacity(conns);
    for _ in 0..conns {
        let channel = Channel::from_shared(format!("http://{addr}"))
            .expect("uri")
            .connect()
            .await
            .expect("connect to the server");
        channels.push(channel);
    }
    channels
}

/// A ListInvitations answer as the load generator reads it: the items are counted and left
/// encoded, and the next page's token is skipped. Parsing every item into a `pb::Invitation`
/// (about 15 strings apiece) took the load generator about 98 µs of CPU per 50-item page,
/// as much as the no-op server spent answering it, so the "transport limit" was the load
/// generator's limit (BENCHMARKS.md, round 7). The API tests check what the items hold.
#[derive(Clone, PartialEq, prost::Message)]
struct ListedPage {
    #[prost(bytes = "bytes", repeated, tag = "1")]
    items: Vec<bytes::Bytes>,
}

async fn list_page(
    channel: Channel,
    request: tonic::Request<pb::ListInvitationsRequest>,
) -> Result<ListedPage, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(format!("not ready: {e}")))?;
    let path =
        http::uri::PathAndQuery::from_static("/invitations.v1.InvitationService/ListInvitations");
    let codec = tonic_prost::ProstCodec::<pb::ListInvitationsRequest, ListedPage>::default();
    Ok(grpc.unary(request, path, codec).await?.into_inner())
}

fn code_name(status: &tonic::Status) -> String {
    format!("{:?}", status.code())
}

struct ListLoad {
    channels: Vec<Channel>,
    tokens: Arc<Vec<MetadataValue<Ascii>>>,
    page_size: i32,
    page_token: String,
    expect_items: usize,
}

async fn grpc_list(load: ListLoad, conc: usize, span: Span) -> Sample {
    let load = Arc::new(load);
    closed_loop(conc, span, move |index, task| {
        let load = load.clone();
        async move {
            let channel = load.channels[task % load.channels.len()].clone();
            let token = &load.tokens[(splitmix(index as u64) % load.tokens.len() as u64) as usize];
            let mut request = tonic::Request::new(pb::ListInvitationsRequest {
                page_size: load.page_size,
                page_token: load.page_token.clone(),
                ..Default::default()
            });
            request
                .metadata_mut()
                .insert("authorization", token.clone());
            match list_page(channel, request).await {
                Ok(page) if page.items.len() == load.expect_items => Ok(()),
                Ok(page) => Err(format!("WRONG_ITEM_COUNT_{}", page.items.len())),
                Err(status) => Err(code_name(&status)),
            }
        }
    })
    .await
}

/// One invitation to cancel: id, etag, the caller's token.
#[derive(Clone)]
struct CancelTarget {
    id: String,
    etag: String,
    token: MetadataValue<Ascii>,
}

async fn grpc_cancel(
    clients: Vec<InvitationServiceClient<Channel>>,
    targets: Arc<Vec<CancelTarget>>,
    conc: usize,
    span: Span,
) -> Sample {
    closed_loop(conc, span, move |index, task| {
        let mut client = clients[task % clients.len()].clone();
        let target = targets[index % targets.len()].clone();
        async move {
            let mut request = tonic::Request::new(pb::CancelInvitationRequest {
                invitation_id: target.id,
                etag: target.etag,
                ..Default::default()
            });
            request.metadata_mut().insert("authorization", target.token);
            match client.cancel_invitation(request).await {
                Ok(_) => Ok(()),
                Err(status) => Err(code_name(&status)),
            }
        }
    })
    .await
}

// ---- pgbench ----

struct PgBench {
    bin: PathBuf,
    url: String,
    pin: bool,
}

enum PgSpan {
    Secs(u64),
    PerClient(usize),
}

impl PgBench {
    /// pgbench on `url`, for PostgreSQL when one was found.
    fn for_database(plan: &Plan, store: StoreKind, url: &str) -> Option<Self> {
        match (store, &plan.pgbench) {
            (StoreKind::Postgres, Some(bin)) => Some(Self {
                bin: bin.clone(),
                url: url.to_owned(),
                pin: plan.pin,
            }),
            (StoreKind::Postgres, None) => {
                println!("  no pgbench found: the PostgreSQL database limit is skipped");
                None
            }
            _ => None,
        }
    }

    fn run(
        &self,
        script: &str,
        conc: usize,
        span: PgSpan,
        defines: &[(&str, String)],
    ) -> Result<Sample, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let file = dir.path().join("script.sql");
        std::fs::write(&file, script).map_err(|e| e.to_string())?;
        let prefix = dir.path().join("log");
        let mut cmd = if self.pin {
            let mut c = Command::new("taskset");
            c.arg("-c").arg("1").arg(&self.bin);
            c
        } else {
            Command::new(&self.bin)
        };
        cmd.args(["-n", "-M", "prepared", "-j", "1", "-l"])
            .arg(format!("--log-prefix={}", prefix.display()))
            .arg("-c")
            .arg(conc.to_string())
            .arg("-f")
            .arg(&file);
        match span {
            PgSpan::Secs(s) => cmd.arg("-T").arg(s.to_string()),
            PgSpan::PerClient(t) => cmd.arg("-t").arg(t.to_string()),
        };
        for (k, v) in defines {
            cmd.arg("-D").arg(format!("{k}={v}"));
        }
        cmd.arg(&self.url);
        let output = cmd.output().map_err(|e| format!("pgbench: {e}"))?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        if !output.status.success() {
            return Err(format!("pgbench failed: {stdout}\n{stderr}"));
        }
        let tps = stdout
            .lines()
            .find_map(|l| l.strip_prefix("tps = "))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
            .ok_or_else(|| format!("no tps in pgbench output: {stdout}"))?;
        let failed = stdout
            .lines()
            .find_map(|l| l.strip_prefix("number of failed transactions: "))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        let mut latencies = Vec::new();
        for entry in std::fs::read_dir(dir.path()).map_err(|e| e.to_string())? {
            let path = entry.map_err(|e| e.to_string())?.path();
            if !path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("log"))
            {
                continue;
            }
            let text = std::fs::read_to_string(&path).map_err(|e| e.to_string())?;
            for line in text.lines() {
                if let Some(us) = line
                    .split_whitespace()
                    .nth(2)
                    .and_then(|v| v.parse::<u64>().ok())
                {
                    latencies.push(us * 1000);
                }
            }
        }
        let mut codes = BTreeMap::new();
        codes.insert("OK".to_owned(), latencies.len() as u64);
        if failed > 0 {
            codes.insert("FAILED".to_owned(), failed);
        }
        let mut sample = sample_from(latencies, Duration::from_secs(1), codes);
        sample.rps = tps;
        Ok(sample)
    }
}

fn pg_enterprise_expr(var: &str, enterprises: u64) -> String {
    if enterprises == 1 {
        "'e0000000-0000-4000-8000-000000000000'::uuid".to_owned()
    } else {
        format!(
            "('e0000000-0000-4000-8000-' || lpad(to_hex({var}::bigint % {enterprises}), 12, '0'))::uuid"
        )
    }
}

fn pg_list_script(enterprises: u64, deep: bool) -> String {
    let ent = pg_enterprise_expr(":e", enterprises);
    let cursor = deep.then_some((
        ":cc::bigint",
        "('a0000000-0000-4000-8000-' || lpad(to_hex(:ci::bigint), 12, '0'))::uuid",
    ));
    format!(
        "\\set e random(0, {})\n{};\n",
        enterprises.saturating_sub(1),
        list_sql(&ent, cursor, &(PAGE_SIZE + 1).to_string())
    )
}

fn pg_cancel_script(enterprises: u64) -> String {
    let admin = format!("'users/{}'", admin_uuid());
    let params = move |i: usize| -> String {
        match i {
            1 => "'cancelled'".into(),
            2 | 5 => ":now::bigint".into(),
            3 => admin.clone(),
            4 => "NULL".into(),
            6 => "2".into(),
            7 => "NULL".into(),
            8 => "('c0000000-0000-4000-8000-' || lpad(to_hex(:k::bigint), 12, '0'))::uuid".into(),
            9 => pg_enterprise_expr(":k", enterprises),
            10 => "1".into(),
            11 => "'pending'".into(),
            _ => ":now::bigint".into(),
        }
    };
    format!(
        "\\set n :n + 1\n\\set k :base + :client_id * :per + :n - 1\n{};\n",
        cancel_sql(params)
    )
}

// ---- SQLite direct loop ----

async fn sqlite_pool(path: &Path, connections: u32) -> sqlx::SqlitePool {
    use sqlx::sqlite::{
        SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous,
    };
    // The service's options (src/store/mod.rs): WAL, synchronous NORMAL, busy timeout, the
    // row channel.
    let options = SqliteConnectOptions::new()
        .filename(path)
        .row_buffer_size(invitations::store::SQLITE_ROW_CHANNEL)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(5))
        .foreign_keys(true);
    SqlitePoolOptions::new()
        .max_connections(connections)
        .min_connections(1)
        .connect_with(options)
        .await
        .expect("open the SQLite file")
}

/// The SQLite read path at its cheapest: rusqlite connections with the service's reader
/// settings (`src/store/sqlite_reader.rs`), one blocking task per page, every value of every
/// row touched in place, the statement prepared once per connection.
struct SqliteDirectReaders {
    idle: std::sync::Mutex<Vec<rusqlite::Connection>>,
    permits: Arc<tokio::sync::Semaphore>,
}

impl SqliteDirectReaders {
    /// As many connections as the service's readers at this concurrency: at most 8.
    fn open(path: &Path, conc: usize) -> Arc<Self> {
        let connections = conc.clamp(1, 8);
        let idle = (0..connections)
            .map(|_| {
                let connection = rusqlite::Connection::open_with_flags(
                    path,
                    rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE
                        | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )
                .expect("open the SQLite file");
                connection
                    .busy_timeout(Duration::from_secs(5))
                    .expect("busy timeout");
                connection
                    .pragma_update(None, "query_only", true)
                    .expect("query_only");
                connection
                    .set_db_config(
                        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
                        true,
                    )
                    .expect("QPSG");
                connection
            })
            .collect();
        Arc::new(Self {
            idle: std::sync::Mutex::new(idle),
            permits: Arc::new(tokio::sync::Semaphore::new(connections)),
        })
    }
}

async fn sqlite_list(
    path: &Path,
    enterprises: u64,
    cursor: Option<(i64, Uuid)>,
    conc: usize,
    span: Span,
) -> Sample {
    let readers = SqliteDirectReaders::open(path, conc);
    let sql: Arc<str> = if cursor.is_some() {
        list_sql("?", Some(("?", "?")), "?").into()
    } else {
        list_sql("?", None, "?").into()
    };
    closed_loop(conc, span, move |index, _| {
        let readers = readers.clone();
        let sql = sql.clone();
        async move {
            let permit = readers
                .permits
                .clone()
                .acquire_owned()
                .await
                .map_err(|e| e.to_string())?;
            let ent = enterprise_uuid(splitmix(index as u64) % enterprises);
            tokio::task::spawn_blocking(move || {
                let _permit = permit;
                let connection = readers
                    .idle
                    .lock()
                    .expect("readers")
                    .pop()
                    .expect("a reader per permit");
                let page = (|| {
                    let mut statement = connection.prepare_cached(&sql)?;
                    let mut params: Vec<rusqlite::types::Value> =
                        vec![rusqlite::types::Value::Blob(ent.as_bytes().to_vec())];
                    if let Some((c, id)) = cursor {
                        params.push(rusqlite::types::Value::Integer(c));
                        params.push(rusqlite::types::Value::Blob(id.as_bytes().to_vec()));
                    }
                    params.push(rusqlite::types::Value::Integer((PAGE_SIZE + 1) as i64));
                    let mut rows = statement.query(rusqlite::params_from_iter(params))?;
                    let mut count = 0usize;
                    while let Some(row) = rows.next()? {
                        for column in 0..READ_COLUMNS.len() {
                            std::hint::black_box(row.get_ref(column)?);
                        }
                        count += 1;
                    }
                    Ok::<_, rusqlite::Error>(count)
                })();
                readers.idle.lock().expect("readers").push(connection);
                page.map(|rows| {
                    std::hint::black_box(rows);
                })
                .map_err(|e| format!("SQL: {e}"))
            })
            .await
            .map_err(|e| e.to_string())?
        }
    })
    .await
}

async fn sqlite_cancel(
    pool: sqlx::SqlitePool,
    enterprises: u64,
    base: u64,
    conc: usize,
    span: Span,
) -> Sample {
    let sql: Arc<str> = cancel_sql(|_| "?".to_owned()).into();
    let admin = format!("users/{}", admin_uuid());
    closed_loop(conc, span, move |index, _| {
        let (pool, sql, admin) = (pool.clone(), sql.clone(), admin.clone());
        async move {
            let k = base + index as u64;
            let now = Timestamp::now().unix_micros();
            let rows = sqlx::query(AssertSqlSafe(sql))
                .bind("cancelled")
                .bind(now)
                .bind(admin)
                .bind(Option::<String>::None)
                .bind(now)
                .bind(2i64)
                .bind(Option::<Vec<u8>>::None)
                .bind(mk_uuid(POOL_PREFIX, k))
                .bind(enterprise_uuid(k % enterprises))
                .bind(1i64)
                .bind("pending")
                .bind(now)
                .fetch_all(&pool)
                .await
                .map_err(|e| format!("SQL: {e}"))?;
            if rows.len() == 1 {
                Ok(())
            } else {
                Err("NO_ROW".into())
            }
        }
    })
    .await
}

// ------------------------------------------------------------------------------------------
// The no-op InvitationService: the transport limit.
// ------------------------------------------------------------------------------------------

#[derive(Clone)]
struct Noop {
    items: Arc<Vec<pb::Invitation>>,
    cancelled: Arc<pb::Invitation>,
}

impl Noop {
    fn new() -> Self {
        let clock = Clock::now();
        let now = Timestamp::now();
        let items: Vec<pb::Invitation> = (0..1000)
            .map(|i| {
                invitations::grpc::wire_invitation(seeded_invitation(Layout::Single, i, clock), now)
            })
            .collect();
        // A freshly cancelled pool row, as the real cancel returns it.
        let mut pool_row = seeded_invitation(Layout::Single, 0, clock);
        pool_row.id = InvitationId::from_uuid(mk_uuid(POOL_PREFIX, 123_456));
        pool_row.email = EmailAddress::parse("pool123456@example.com").expect("address");
        pool_row.stored_status = InvitationStatus::Cancelled;
        pool_row.cancelled_at = Some(now);
        pool_row.cancelled_by = Some(pool_row.invited_by);
        pool_row.updated_at = now;
        pool_row.version = Version::FIRST.next();
        let cancelled = invitations::grpc::wire_invitation(pool_row, now);
        Self {
            items: Arc::new(items),
            cancelled: Arc::new(cancelled),
        }
    }
}

type Reply<T> = Result<tonic::Response<T>, tonic::Status>;

#[tonic::async_trait]
impl InvitationService for Noop {
    /// Answers `page_size` prebuilt items (0: 50), so the harness can match any page's size.
    async fn list_invitations(
        &self,
        request: tonic::Request<pb::ListInvitationsRequest>,
    ) -> Reply<pb::ListInvitationsResponse> {
        let n = match request.get_ref().page_size {
            0 => 50,
            n => (n.max(0) as usize).min(self.items.len()),
        };
        Ok(tonic::Response::new(pb::ListInvitationsResponse {
            items: self.items[..n].to_vec(),
            next_page_token: "x".repeat(if n == 50 { 110 } else { 0 }),
        }))
    }
    async fn get_invitation(
        &self,
        _: tonic::Request<pb::GetInvitationRequest>,
    ) -> Reply<pb::Invitation> {
        Ok(tonic::Response::new(self.items[0].clone()))
    }
    async fn create_invitation(
        &self,
        _: tonic::Request<pb::CreateInvitationRequest>,
    ) -> Reply<pb::Invitation> {
        Ok(tonic::Response::new(self.items[0].clone()))
    }
    async fn cancel_invitation(
        &self,
        _: tonic::Request<pb::CancelInvitationRequest>,
    ) -> Reply<pb::Invitation> {
        Ok(tonic::Response::new((*self.cancelled).clone()))
    }
    async fn issue_invitation_token(
        &self,
        _: tonic::Request<pb::IssueInvitationTokenRequest>,
    ) -> Reply<pb::IssueInvitationTokenResponse> {
        Ok(tonic::Response::new(pb::IssueInvitationTokenResponse {
            invitation: Some(self.items[0].clone()),
            token: String::new(),
        }))
    }
    async fn accept_invitation(
        &self,
        _: tonic::Request<pb::AcceptInvitationRequest>,
    ) -> Reply<pb::Invitation> {
        Ok(tonic::Response::new(self.items[0].clone()))
    }
}

fn service_settings(
    database_url: &str,
    listen: SocketAddr,
    pool: Option<u32>,
) -> invitations::config::Settings {
    let mut config = Config::defaults();
    config.database_url = database_url.into();
    config.listen_addr = listen;
    config.jwt_hs256_secret = Some(Secret::new(JWT_SECRET));
    config.rate_limit_per_second = 0;
    config.max_concurrent_requests_per_caller = 4096;
    config.max_concurrent_requests = 4096;
    if let Some(pool) = pool {
        config.db_max_connections = pool;
    }
    config.settings().expect("benchmark settings are valid")
}

/// Serves the no-op service on the service's own transport settings; no layers, no auth.
async fn serve_noop(listener: tokio::net::TcpListener) {
    let limits = service_settings(
        "sqlite://unused.db",
        "127.0.0.1:0".parse().expect("addr"),
        None,
    )
    .server;
    let service = InvitationServiceServer::new(Noop::new())
        .max_decoding_message_size(limits.max_request_bytes);
    tonic::transport::Server::builder()
        .timeout(limits.request_timeout)
        .http2_keepalive_interval(Some(limits.http2_keepalive_interval))
        .http2_keepalive_timeout(Some(limits.http2_keepalive_timeout))
        .http2_max_header_list_size(limits.max_metadata_bytes)
        .max_connection_age(limits.max_connection_age)
        .add_service(service)
        // TCP_NODELAY on accepted sockets: without it a small response waits for the
        // client's delayed ACK (~40 ms). This is the limit the service should reach.
        .serve_with_incoming(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
        )
        .await
        .expect("the no-op server runs");
}

// ------------------------------------------------------------------------------------------
// Servers: in-process tasks or pinned child processes.
// ------------------------------------------------------------------------------------------

/// The server processes started and not yet reaped, for [`stop_servers_on_signal`].
static SERVER_PIDS: Mutex<Vec<u32>> = Mutex::new(Vec::new());

fn server_pids() -> std::sync::MutexGuard<'static, Vec<u32>> {
    SERVER_PIDS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A child process killed when dropped, or when the harness is interrupted, where no
/// destructor runs (the no-op also exits when its stdin closes; the service has no such
/// hook, and outlived an interrupted harness before).
struct ChildGuard(Child);
impl ChildGuard {
    fn new(child: Child) -> Self {
        server_pids().push(child.id());
        Self(child)
    }
}
impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        // Unlisted before it is reaped: until then its pid cannot be reused.
        server_pids().retain(|&pid| pid != self.0.id());
        let _ = self.0.wait();
    }
}

/// On SIGINT, SIGTERM or SIGHUP: stops the server processes and exits. On a thread and a
/// runtime of its own, so a busy load generator cannot hold it up.
fn stop_servers_on_signal() {
    std::thread::spawn(|| {
        use tokio::signal::unix::{SignalKind, signal};
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("signal runtime");
        let (name, code) = runtime.block_on(async {
            let listen = |kind| signal(kind).expect("signal handler");
            let mut interrupt = listen(SignalKind::interrupt());
            let mut terminate = listen(SignalKind::terminate());
            let mut hangup = listen(SignalKind::hangup());
            tokio::select! {
                _ = interrupt.recv() => ("SIGINT", 130),
                _ = terminate.recv() => ("SIGTERM", 143),
                _ = hangup.recv() => ("SIGHUP", 129),
            }
        });
        let pids = server_pids().clone();
        for pid in &pids {
            let _ = Command::new("kill").arg(pid.to_string()).status();
        }
        eprintln!("bench: {name}: stopped {} server process(es)", pids.len());
        std::process::exit(code);
    });
}

enum Running {
    Task(
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<()>,
    ),
    Process(ChildGuard),
    Noop(tokio::task::JoinHandle<()>),
}

struct Server {
    addr: SocketAddr,
    running: Running,
}

impl Server {
    fn pid(&self) -> Option<u32> {
        match &self.running {
            Running::Process(child) => Some(child.0.id()),
            _ => None,
        }
    }
    /// Peak resident set of the server process (VmHWM), in KiB.
    fn peak_rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
    }
    async fn stop(self) {
        match self.running {
            Running::Task(stop, handle) => {
                let _ = stop.send(());
                let _ = handle.await;
            }
            Running::Process(child) => drop(child),
            Running::Noop(handle) => handle.abort(),
        }
    }
}

fn free_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr")
}

fn pinned(program: &Path, core: Option<usize>) -> Command {
    match core {
        Some(core) => {
            let mut c = Command::new("taskset");
            c.arg("-c").arg(core.to_string()).arg(program);
            c
        }
        None => Command::new(program),
    }
}

async fn start_service(plan: &Plan, database_url: &str) -> Server {
    if plan.inproc {
        let settings = service_settings(
            database_url,
            "127.0.0.1:0".parse().expect("addr"),
            plan.db_max_connections,
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
    cmd.arg("serve")
        .env("DATABASE_URL", service_database_url(database_url))
        .env("INVITATIONS_LISTEN_ADDR", addr.to_string())
        .env("INVITATIONS_JWT_HS256_SECRET", JWT_SECRET)
        .env("INVITATIONS_RATE_LIMIT_PER_SECOND", "0")
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
    let child = ChildGuard::new(cmd.spawn().expect("start the service binary"));
    wait_ready(addr).await;
    Server {
        addr,
        running: Running::Process(child),
    }
}

/// The name the service's PostgreSQL connections carry, so the harness can find their backends.
const SERVICE_APPLICATION_NAME: &str = "invitations-bench-service";

fn service_database_url(database_url: &str) -> String {
    if !database_url.starts_with("postgres") {
        return database_url.to_owned();
    }
    let separator = if database_url.contains('?') { '&' } else { '?' };
    format!("{database_url}{separator}application_name={SERVICE_APPLICATION_NAME}")
}

/// Where the database's work for the service runs, to be moved to core 1.
enum DatabaseWork {
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
                sqlx::query_scalar("SELECT pid FROM pg_stat_activity WHERE application_name = $1")
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
/// its core filled while core 1 idled (BENCHMARKS.md, rounds 3, 7 and 9). Only the service's
/// backends move: pgbench's, the database limit, keep both cores. On SQLite the same work
/// runs on the service's own threads, which move likewise, so both stores get the same
/// split: core 0 the server's request handling, core 1 the load generator and the database.
async fn keep_database_work_on_core_1(work: DatabaseWork, moved: Arc<AtomicU64>) {
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
struct AbortOnDrop(tokio::task::JoinHandle<()>);
impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn start_noop(plan: &Plan) -> Server {
    if plan.inproc {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let handle = tokio::spawn(serve_noop(listener));
        return Server {
            addr,
            running: Running::Noop(handle),
        };
    }
    let exe = std::env::current_exe().expect("own path");
    let mut cmd = pinned(&exe, plan.pin.then_some(0));
    cmd.arg("--serve-noop")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = cmd.spawn().expect("start the no-op server");
    let stdout = child.stdout.take().expect("piped");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("no-op address");
    let addr: SocketAddr = line
        .trim()
        .strip_prefix("listening ")
        .and_then(|a| a.parse().ok())
        .expect("no-op address line");
    Server {
        addr,
        running: Running::Process(ChildGuard::new(child)),
    }
}

/// Polls the readiness entry until SERVING (the server is a separate process: nothing else
/// tells us when its background migration check is done).
async fn wait_ready(addr: SocketAddr) {
    use tonic_health::pb::health_client::HealthClient;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(channel) = Channel::from_shared(format!("http://{addr}"))
            .expect("uri")
            .connect()
            .await
        {
            let mut health = HealthClient::new(channel);
            if let Ok(r) = health
                .check(tonic_health::pb::HealthCheckRequest {
                    service: "invitations.v1.InvitationService".into(),
                })
                .await
                && r.get_ref().status == 1
            {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the service at {addr} did not become ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ------------------------------------------------------------------------------------------
// Databases
// ------------------------------------------------------------------------------------------

fn with_database(url: &str, name: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let server = base.rsplit_once('/').map_or(base, |(s, _)| s);
    match query {
        Some(q) => format!("{server}/{name}?{q}"),
        None => format!("{server}/{name}"),
    }
}

/// A fresh benchmark database; dropped by [`Db::drop_db`].
struct Db {
    store: StoreKind,
    url: String,
    admin_url: Option<String>,
    name: String,
    _dir: Option<tempfile::TempDir>,
    sqlite_path: Option<PathBuf>,
}

impl Db {
    async fn create(store: StoreKind, pg_url: Option<&str>, name: &str) -> Db {
        match store {
            StoreKind::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let path = dir.path().join("invitations.db");
                Db {
                    store,
                    url: format!("sqlite://{}", path.display()),
                    admin_url: None,
                    name: name.to_owned(),
                    _dir: Some(dir),
                    sqlite_path: Some(path),
                }
            }
            StoreKind::Postgres => {
                let admin_url = pg_url.expect("a PostgreSQL URL").to_owned();
                let admin = sqlx::PgPool::connect(&admin_url)
                    .await
                    .expect("connect to PostgreSQL");
                sqlx::raw_sql(AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
                )))
                .execute(&admin)
                .await
                .expect("drop the old benchmark database");
                sqlx::raw_sql(AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
                    .execute(&admin)
                    .await
                    .expect("create the benchmark database");
                admin.close().await;
                Db {
                    store,
                    url: with_database(&admin_url, name),
                    admin_url: Some(admin_url),
                    name: name.to_owned(),
                    _dir: None,
                    sqlite_path: None,
                }
            }
        }
    }

    /// Applies the service's migrations through its own store.
    async fn migrate(&self) {
        let store = Store::connect(&StoreSettings {
            url: self.url.as_str().into(),
            max_connections: 1,
            acquire_timeout: Duration::from_secs(10),
            sqlite_busy_timeout: Duration::from_secs(5),
        })
        .await
        .expect("connect");
        store.migrate().await.expect("migrations apply");
        store.close().await;
    }

    async fn exec(&self, sql: &str) {
        match self.store {
            StoreKind::Postgres => {
                let pool = sqlx::PgPool::connect(&self.url).await.expect("connect");
                sqlx::raw_sql(AssertSqlSafe(sql.to_owned()))
                    .execute(&pool)
                    .await
                    .unwrap_or_else(|e| panic!("{e}: {}", &sql[..sql.len().min(300)]));
                pool.close().await;
            }
            StoreKind::Sqlite => {
                let pool = sqlite_pool(self.sqlite_path.as_ref().expect("path"), 1).await;
                sqlx::raw_sql(AssertSqlSafe(sql.to_owned()))
                    .execute(&pool)
                    .await
                    .unwrap_or_else(|e| panic!("{e}: {}", &sql[..sql.len().min(300)]));
                pool.close().await;
            }
        }
    }

    async fn count(&self, where_: &str) -> i64 {
        let sql = format!("SELECT count(*) FROM invitations WHERE {where_}");
        match self.store {
            StoreKind::Postgres => {
                let pool = sqlx::PgPool::connect(&self.url).await.expect("connect");
                let n: i64 = sqlx::query(AssertSqlSafe(sql))
                    .fetch_one(&pool)
                    .await
                    .expect("count")
                    .get(0);
                pool.close().await;
                n
            }
            StoreKind::Sqlite => {
                let pool = sqlite_pool(self.sqlite_path.as_ref().expect("path"), 1).await;
                let n: i64 = sqlx::query(AssertSqlSafe(sql))
                    .fetch_one(&pool)
                    .await
                    .expect("count")
                    .get(0);
                pool.close().await;
                n
            }
        }
    }

    /// Seeds rows in batches (one statement per batch).
    async fn seed(&self, layout: Layout, from: u64, count: u64, clock: Clock, pool: bool) {
        const BATCH: u64 = 250_000;
        let mut at = from;
        while at < from + count {
            let n = BATCH.min(from + count - at);
            self.exec(&seed_sql(self.store, layout, at, n, clock, pool))
                .await;
            at += n;
        }
        if self.store == StoreKind::Postgres {
            self.exec("VACUUM ANALYZE invitations").await;
        }
    }

    async fn drop_db(self) {
        if let Some(admin_url) = &self.admin_url {
            let admin = sqlx::PgPool::connect(admin_url).await.expect("connect");
            let _ = sqlx::raw_sql(AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                self.name
            )))
            .execute(&admin)
            .await;
            admin.close().await;
        }
    }
}

// ------------------------------------------------------------------------------------------
// One dataset: seed, start both servers, alternate the three variants, record.
// ------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    store: String,
    layout: String,
    size: u64,
    op: String,
    variant: String,
    conc: usize,
    run: usize,
    #[serde(flatten)]
    sample: Sample,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct DatasetInfo {
    store: String,
    layout: String,
    size: u64,
    /// Empty for a dataset of its own; [`FLAT_PAIR`] for one side of a size pair.
    #[serde(default)]
    kind: String,
    label: String,
    seed_secs: f64,
    server_peak_rss_kib: Option<u64>,
    noop_peak_rss_kib: Option<u64>,
    /// Processes or threads doing the database's work for the service that were moved to
    /// core 1 (`--pin-db`): PostgreSQL backends, SQLite threads; none when nothing was moved.
    database_work_on_core_1: Option<u64>,
    /// Encoded response sizes (bytes): the real answer and the no-op's.
    list_bytes_service: usize,
    list_bytes_noop: usize,
    cancel_bytes_service: usize,
    cancel_bytes_noop: usize,
    /// Codes of the contended cancel storm (RACE_PER_ID cancels of each of RACE_IDS ids).
    race_codes: BTreeMap<String, u64>,
    race_one_winner_each: bool,
    errors: Vec<String>,
}

impl DatasetInfo {
    /// `store layout size`, and `(pair)` for one side of a size pair.
    fn name(&self) -> String {
        let pair = if self.kind == FLAT_PAIR {
            " (pair)"
        } else {
            ""
        };
        format!("{} {} {}{pair}", self.store, self.layout, self.size)
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Results {
    machine: BTreeMap<String, String>,
    datasets: Vec<DatasetInfo>,
    records: Vec<Record>,
}

fn bearer(token: &str) -> MetadataValue<Ascii> {
    format!("Bearer {token}").parse().expect("ascii token")
}

fn tokens_for(layout: Layout) -> Arc<Vec<MetadataValue<Ascii>>> {
    let auth = Authenticator::hs256(JWT_SECRET.as_bytes(), JWT_ISSUER, JWT_ISSUER);
    let admin = UserRef::from_uuid(admin_uuid());
    Arc::new(
        (0..layout.enterprises())
            .map(|e| {
                bearer(&auth.mint(
                    admin,
                    Some(EnterpriseId::from_uuid(enterprise_uuid(e))),
                    &[ENTERPRISE_ADMIN.to_owned()],
                    Duration::from_secs(6 * 3600),
                ))
            })
            .collect(),
    )
}

fn cancel_targets(
    layout: Layout,
    tokens: &[MetadataValue<Ascii>],
    from: u64,
    count: usize,
) -> Arc<Vec<CancelTarget>> {
    Arc::new(
        (from..from + count as u64)
            .map(|k| {
                let id = InvitationId::from_uuid(mk_uuid(POOL_PREFIX, k));
                CancelTarget {
                    id: id.to_string(),
                    etag: Etag::of(id, Version::FIRST).as_str().to_owned(),
                    token: tokens[(k % layout.enterprises()) as usize].clone(),
                }
            })
            .collect(),
    )
}

struct Ctx<'a> {
    plan: &'a Plan,
    store: StoreKind,
    layout: Layout,
    size: u64,
    db: &'a Db,
    pgbench: Option<PgBench>,
    service: SocketAddr,
    /// The no-op server, for the transport limit; none where that limit is not measured.
    noop: Option<SocketAddr>,
    tokens: Arc<Vec<MetadataValue<Ascii>>>,
    records: Vec<Record>,
    info: DatasetInfo,
    /// The op first pages are recorded under: `list`, or `flat` in a size pair.
    list_op: &'static str,
}

impl Ctx<'_> {
    fn record(&mut self, op: &str, variant: &str, conc: usize, run: usize, sample: Sample) {
        let bad: u64 = sample
            .codes
            .iter()
            .filter(|(k, _)| k.as_str() != "OK")
            .map(|(_, v)| v)
            .sum();
        if bad > 0 {
            self.info.errors.push(format!(
                "{op}/{variant}/c{conc}/run{run}: {:?}",
                sample.codes
            ));
        }
        println!(
            "  {:<6} {:<6} {:<9} c={:<3} run {}  {:>9.0} req/s  p50 {:>7.0} us  p99 {:>7.0} us{}{}",
            self.store.name(),
            op,
            variant,
            conc,
            run + 1,
            sample.rps,
            sample.p50_us,
            sample.p99_us,
            if bad > 0 {
                format!("  codes {:?}", sample.codes)
            } else {
                String::new()
            },
            if op == FLAT_PAIR {
                format!("  ({} rows)", self.size)
            } else {
                String::new()
            }
        );
        self.records.push(Record {
            store: self.store.name().into(),
            layout: self.layout.name().into(),
            size: self.size,
            op: op.into(),
            variant: variant.into(),
            conc,
            run,
            sample,
        });
    }

    fn items_per_page(&self) -> usize {
        (self.size / self.layout.enterprises()).min(PAGE_SIZE) as usize
    }

    fn timed(&self) -> Span {
        Span::Timed {
            warmup: self.plan.warmup,
            measure: Duration::from_secs(self.plan.secs),
        }
    }

    async fn measure_list(
        &mut self,
        variant: &str,
        conc: usize,
        run: usize,
        deep: Option<&(String, i64, u64)>,
    ) {
        let op = if deep.is_some() { "deep" } else { self.list_op };
        let expect = if deep.is_some() {
            PAGE_SIZE as usize
        } else {
            self.items_per_page()
        };
        let sample = match variant {
            "service" | "transport" => {
                let addr = if variant == "service" {
                    self.service
                } else {
                    self.noop.expect("a no-op server for the transport limit")
                };
                let load = ListLoad {
                    channels: connect_channels(addr, conc).await,
                    tokens: self.tokens.clone(),
                    // The no-op answers `page_size` items: ask it for as many as the real page has.
                    page_size: if variant == "service" {
                        0
                    } else {
                        expect as i32
                    },
                    page_token: match (variant, deep) {
                        ("service", Some((token, _, _))) => token.clone(),
                        _ => String::new(),
                    },
                    expect_items: expect,
                };
                grpc_list(load, conc, self.timed()).await
            }
            _ => match self.store {
                StoreKind::Postgres => {
                    let Some(pgbench) = &self.pgbench else { return };
                    let mut defines = vec![];
                    if let Some((_, c, i)) = deep {
                        defines.push(("cc", c.to_string()));
                        defines.push(("ci", i.to_string()));
                    }
                    match pgbench.run(
                        &pg_list_script(self.layout.enterprises(), deep.is_some()),
                        conc,
                        PgSpan::Secs(self.plan.secs),
                        &defines,
                    ) {
                        Ok(s) => s,
                        Err(e) => {
                            self.info.errors.push(e);
                            return;
                        }
                    }
                }
                StoreKind::Sqlite => {
                    let cursor = deep.map(|(_, c, i)| (*c, mk_uuid(ID_PREFIX, *i)));
                    sqlite_list(
                        self.db.sqlite_path.as_ref().expect("path"),
                        self.layout.enterprises(),
                        cursor,
                        conc,
                        self.timed(),
                    )
                    .await
                }
            },
        };
        self.record(op, variant, conc, run, sample);
    }

    async fn measure_cancel(
        &mut self,
        variant: &str,
        conc: usize,
        run: usize,
        next_pool: &mut u64,
    ) {
        let total = self.plan.cancels;
        let warm = total / 10;
        let span = Span::Count { total, warm };
        let sample = match variant {
            "service" => {
                let targets = cancel_targets(self.layout, &self.tokens, *next_pool, total);
                *next_pool += total as u64;
                grpc_cancel(
                    connect_clients(self.service, conc).await,
                    targets,
                    conc,
                    span,
                )
                .await
            }
            // The no-op changes nothing, so it can cancel the same few ids for a set time.
            "transport" => {
                let targets = cancel_targets(self.layout, &self.tokens, 0, 64);
                let clients = connect_clients(
                    self.noop.expect("a no-op server for the transport limit"),
                    conc,
                )
                .await;
                grpc_cancel(clients, targets, conc, self.timed()).await
            }
            _ => match self.store {
                StoreKind::Postgres => {
                    let Some(pgbench) = &self.pgbench else { return };
                    let per = total.div_ceil(conc);
                    let base = *next_pool;
                    *next_pool += (per * conc) as u64;
                    let defines = [
                        ("n", "0".to_owned()),
                        ("base", base.to_string()),
                        ("per", per.to_string()),
                        ("now", Timestamp::now().unix_micros().to_string()),
                    ];
                    let result = pgbench.run(
                        &pg_cancel_script(self.layout.enterprises()),
                        conc,
                        PgSpan::PerClient(per),
                        &defines,
                    );
                    // The conditional update must have hit a row every time, or it measured nothing.
                    let hit = self
                        .db
                        .count(&format!(
                            "id >= '{}' AND id < '{}' AND version = 2",
                            mk_uuid(POOL_PREFIX, base),
                            mk_uuid(POOL_PREFIX, base + (per * conc) as u64)
                        ))
                        .await;
                    match result {
                        Ok(mut s) => {
                            let missed = (per * conc) as i64 - hit;
                            if missed != 0 {
                                s.codes.insert("NO_ROW".into(), missed.unsigned_abs());
                            }
                            s
                        }
                        Err(e) => {
                            self.info.errors.push(e);
                            return;
                        }
                    }
                }
                StoreKind::Sqlite => {
                    let base = *next_pool;
                    *next_pool += total as u64;
                    let pool = sqlite_pool(
                        self.db.sqlite_path.as_ref().expect("path"),
                        conc.min(16) as u32,
                    )
                    .await;
                    let s =
                        sqlite_cancel(pool.clone(), self.layout.enterprises(), base, conc, span)
                            .await;
                    pool.close().await;
                    s
                }
            },
        };
        self.record("cancel", variant, conc, run, sample);
    }

    /// Many concurrent cancels of the same invitation with the same (correct) etag: exactly
    /// one succeeds; the others see ABORTED or FAILED_PRECONDITION, nothing else.
    async fn cancel_race(&mut self, next_pool: &mut u64) {
        let clients = connect_clients(self.service, RACE_PER_ID).await;
        let targets = cancel_targets(self.layout, &self.tokens, *next_pool, RACE_IDS);
        *next_pool += RACE_IDS as u64;
        let mut all: BTreeMap<String, u64> = BTreeMap::new();
        let mut one_winner = true;
        for target in targets.iter() {
            let same = Arc::new(vec![target.clone()]);
            let s = grpc_cancel(
                clients.clone(),
                same,
                RACE_PER_ID,
                Span::Count {
                    total: RACE_PER_ID,
                    warm: 0,
                },
            )
            .await;
            one_winner &= s.codes.get("OK").copied() == Some(1);
            for (k, v) in s.codes {
                *all.entry(k).or_default() += v;
            }
        }
        let unexpected = all
            .keys()
            .any(|k| !matches!(k.as_str(), "OK" | "Aborted" | "FailedPrecondition"));
        if unexpected || !one_winner {
            self.info.errors.push(format!(
                "cancel race: {all:?}, one winner each: {one_winner}"
            ));
        }
        println!(
            "  cancel race ({RACE_IDS} ids x {RACE_PER_ID} callers): {all:?}, one winner each: {one_winner}"
        );
        self.info.race_codes = all;
        self.info.race_one_winner_each = one_winner;
    }
}

/// The page token of the page after `DEEP_PAGES` pages of 50, by walking with pages of 1000
/// (a token is not bound to the page size), and the cursor it stands for.
async fn deep_token(
    addr: SocketAddr,
    token: &MetadataValue<Ascii>,
    clock: Clock,
) -> (String, i64, u64) {
    let mut client = connect_clients(addr, 1).await.remove(0);
    let mut page_token = String::new();
    let rows = DEEP_PAGES * PAGE_SIZE;
    for _ in 0..rows / 1000 {
        let mut request = tonic::Request::new(pb::ListInvitationsRequest {
            page_size: 1000,
            page_token: page_token.clone(),
            ..Default::default()
        });
        request
            .metadata_mut()
            .insert("authorization", token.clone());
        let page = client
            .list_invitations(request)
            .await
            .expect("walk to the deep page")
            .into_inner();
        page_token = page.next_page_token;
    }
    let last = rows - 1;
    (page_token, clock.created_at(last), last)
}

async fn run_dataset(
    plan: &Plan,
    store: StoreKind,
    layout: Layout,
    size: u64,
) -> (Vec<Record>, DatasetInfo) {
    println!(
        "\n== {} / {} / {} rows ==",
        store.name(),
        layout.name(),
        size
    );
    let db = Db::create(store, plan.pg_url.as_deref(), PG_BENCH_DB).await;
    db.migrate().await;
    let clock = Clock::now();
    let seeding = Instant::now();
    db.seed(layout, 0, size, clock, false).await;
    let seed_secs = seeding.elapsed().as_secs_f64();
    println!("  seeded {size} rows in {seed_secs:.1} s");

    let service = start_service(plan, &db.url).await;
    let database_work_moved = Arc::new(AtomicU64::new(0));
    let database_work = match (plan.pin_db, store, service.pid()) {
        (false, _, _) | (_, _, None) => None,
        (true, StoreKind::Postgres, Some(_)) => Some(DatabaseWork::PostgresBackends {
            database_url: db.url.clone(),
        }),
        (true, StoreKind::Sqlite, Some(service_pid)) => {
            Some(DatabaseWork::SqliteThreads { service_pid })
        }
    };
    let database_work_pinner = database_work.map(|work| {
        AbortOnDrop(tokio::spawn(keep_database_work_on_core_1(
            work,
            database_work_moved.clone(),
        )))
    });
    let noop = start_noop(plan).await;
    let tokens = tokens_for(layout);
    let pgbench = PgBench::for_database(plan, store, &db.url);
    let mut ctx = Ctx {
        plan,
        store,
        layout,
        size,
        db: &db,
        pgbench,
        service: service.addr,
        noop: Some(noop.addr),
        tokens: tokens.clone(),
        records: vec![],
        info: DatasetInfo {
            store: store.name().into(),
            layout: layout.name().into(),
            size,
            label: plan.label.clone(),
            seed_secs,
            ..Default::default()
        },
        list_op: "list",
    };

    // What one answer weighs, real and no-op (they should match).
    {
        let mut real = connect_clients(service.addr, 1).await.remove(0);
        let mut noop_client = connect_clients(noop.addr, 1).await.remove(0);
        let mut request = tonic::Request::new(pb::ListInvitationsRequest::default());
        request
            .metadata_mut()
            .insert("authorization", tokens[0].clone());
        let page = real
            .list_invitations(request)
            .await
            .expect("a first page")
            .into_inner();
        assert_eq!(
            page.items.len(),
            ctx.items_per_page(),
            "the seeded rows are listed"
        );
        ctx.info.list_bytes_service = page.encoded_len();
        let mut request = tonic::Request::new(pb::ListInvitationsRequest {
            page_size: ctx.items_per_page() as i32,
            ..Default::default()
        });
        request
            .metadata_mut()
            .insert("authorization", tokens[0].clone());
        ctx.info.list_bytes_noop = noop_client
            .list_invitations(request)
            .await
            .expect("no-op")
            .into_inner()
            .encoded_len();
        let request = tonic::Request::new(pb::CancelInvitationRequest::default());
        ctx.info.cancel_bytes_noop = noop_client
            .cancel_invitation(request)
            .await
            .expect("no-op")
            .into_inner()
            .encoded_len();
    }

    let variants = ["service", "transport", "database"];
    let has = |op: &str| plan.ops.iter().any(|o| o == op);
    let deep =
        if has("deep") && layout == Layout::Single && size >= DEEP_PAGES * PAGE_SIZE + PAGE_SIZE {
            Some(deep_token(service.addr, &tokens[0], clock).await)
        } else {
            None
        };
    if has("list") || deep.is_some() {
        for run in 0..plan.runs {
            if has("list") {
                for &conc in &plan.conc {
                    for k in 0..3 {
                        ctx.measure_list(variants[(k + run) % 3], conc, run, None)
                            .await;
                    }
                }
            }
            if let Some(deep) = &deep {
                for &conc in &plan.deep_conc {
                    for k in 0..2 {
                        let v = ["service", "database"][(k + run) % 2];
                        ctx.measure_list(v, conc, run, Some(deep)).await;
                    }
                }
            }
        }
    }
    if has("cancel") {
        // Fresh pending invitations: enough for every measurement, then the race.
        let per_round: usize = plan.conc.iter().map(|&c| 2 * (plan.cancels + c)).sum();
        let needed = (plan.runs * per_round + RACE_IDS + 1) as u64;
        let t = Instant::now();
        db.seed(layout, 0, needed, clock, true).await;
        println!(
            "  added {needed} pending invitations to cancel in {:.1} s",
            t.elapsed().as_secs_f64()
        );
        let mut next_pool = 0u64;
        // The size of a real cancel answer.
        {
            let targets = cancel_targets(layout, &tokens, next_pool, 1);
            next_pool += 1;
            let mut real = connect_clients(service.addr, 1).await.remove(0);
            let mut request = tonic::Request::new(pb::CancelInvitationRequest {
                invitation_id: targets[0].id.clone(),
                etag: targets[0].etag.clone(),
                ..Default::default()
            });
            request
                .metadata_mut()
                .insert("authorization", targets[0].token.clone());
            ctx.info.cancel_bytes_service = real
                .cancel_invitation(request)
                .await
                .expect("a cancel")
                .into_inner()
                .encoded_len();
        }
        for run in 0..plan.runs {
            for &conc in &plan.conc {
                for k in 0..3 {
                    ctx.measure_cancel(variants[(k + run) % 3], conc, run, &mut next_pool)
                        .await;
                }
            }
        }
        ctx.cancel_race(&mut next_pool).await;
    }
    ctx.info.server_peak_rss_kib = service.peak_rss_kib();
    ctx.info.noop_peak_rss_kib = noop.peak_rss_kib();
    if let Some(kib) = ctx.info.server_peak_rss_kib {
        println!("  service peak RSS {:.1} MiB", kib as f64 / 1024.0);
    }
    if database_work_pinner.is_some() {
        let moved = database_work_moved.load(Ordering::Relaxed);
        ctx.info.database_work_on_core_1 = Some(moved);
        println!("  moved to core 1, the service's database work: {moved} backends or threads");
    }
    let (records, info) = (ctx.records, ctx.info);
    drop(database_work_pinner);
    service.stop().await;
    noop.stop().await;
    db.drop_db().await;
    (records, info)
}

/// List on a small and a large table at once: both seeded, a service on each, and in every
/// round the sizes alternate as the variants do. Measured as two datasets one after the
/// other, the two sizes are minutes apart, and the machine's drift over those minutes shows
/// up as a size effect (round 9: the bare SQL 13 to 16 % faster on 1M rows than on 1k at
/// c >= 8 in two runs, flat when alternated).
async fn run_flat_pair(
    plan: &Plan,
    store: StoreKind,
    layout: Layout,
    (small, large): (u64, u64),
) -> (Vec<Record>, Vec<DatasetInfo>) {
    println!(
        "\n== {} / {} / {small} and {large} rows, alternated (flat in size) ==",
        store.name(),
        layout.name(),
    );
    let clock = Clock::now();
    let mut sides = vec![];
    for (size, name) in [
        (small, "invitations_bench_small"),
        (large, "invitations_bench_large"),
    ] {
        let db = Db::create(store, plan.pg_url.as_deref(), name).await;
        db.migrate().await;
        let seeding = Instant::now();
        db.seed(layout, 0, size, clock, false).await;
        let seed_secs = seeding.elapsed().as_secs_f64();
        println!("  seeded {size} rows in {seed_secs:.1} s");
        sides.push((size, db, seed_secs));
    }
    let mut services = vec![];
    for (_, db, _) in &sides {
        services.push(start_service(plan, &db.url).await);
    }
    let tokens = tokens_for(layout);
    let mut ctxs: Vec<Ctx> = sides
        .iter()
        .zip(&services)
        .map(|((size, db, seed_secs), service)| Ctx {
            plan,
            store,
            layout,
            size: *size,
            db,
            pgbench: PgBench::for_database(plan, store, &db.url),
            service: service.addr,
            noop: None,
            tokens: tokens.clone(),
            records: vec![],
            info: DatasetInfo {
                store: store.name().into(),
                layout: layout.name().into(),
                size: *size,
                kind: FLAT_PAIR.into(),
                label: plan.label.clone(),
                seed_secs: *seed_secs,
                ..Default::default()
            },
            list_op: FLAT_PAIR,
        })
        .collect();
    // Order in a round, rotated by one each round: small service, large service, small
    // database, large database.
    for run in 0..plan.runs {
        for &conc in &plan.conc {
            for k in 0..4 {
                let j = (k + run) % 4;
                let variant = ["service", "database"][j / 2];
                ctxs[j % 2].measure_list(variant, conc, run, None).await;
            }
        }
    }
    let mut records = vec![];
    let mut infos = vec![];
    for (ctx, service) in ctxs.into_iter().zip(services) {
        let mut info = ctx.info;
        info.server_peak_rss_kib = service.peak_rss_kib();
        records.extend(ctx.records);
        infos.push(info);
        service.stop().await;
    }
    for (_, db, _) in sides {
        db.drop_db().await;
    }
    (records, infos)
}

// ------------------------------------------------------------------------------------------
// Summaries, targets, chart
// ------------------------------------------------------------------------------------------

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if !n.is_multiple_of(2) {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

#[derive(Debug, Clone, Copy)]
struct Med {
    rps: f64,
    p50: f64,
    p99: f64,
    runs: usize,
}

type Key = (String, String, u64, String, String, usize);

fn medians(records: &[Record]) -> BTreeMap<Key, Med> {
    let mut groups: BTreeMap<Key, Vec<&Record>> = BTreeMap::new();
    for r in records {
        groups
            .entry((
                r.store.clone(),
                r.layout.clone(),
                r.size,
                r.op.clone(),
                r.variant.clone(),
                r.conc,
            ))
            .or_default()
            .push(r);
    }
    groups
        .into_iter()
        .map(|(k, rs)| {
            let m = Med {
                rps: median(rs.iter().map(|r| r.sample.rps).collect()),
                p50: median(rs.iter().map(|r| r.sample.p50_us).collect()),
                p99: median(rs.iter().map(|r| r.sample.p99_us).collect()),
                runs: rs.len(),
            };
            (k, m)
        })
        .collect()
}

fn combined(a: f64, b: f64) -> f64 {
    1.0 / (1.0 / a + 1.0 / b)
}

fn get(
    m: &BTreeMap<Key, Med>,
    store: &str,
    layout: &str,
    size: u64,
    op: &str,
    variant: &str,
    conc: usize,
) -> Option<Med> {
    m.get(&(
        store.into(),
        layout.into(),
        size,
        op.into(),
        variant.into(),
        conc,
    ))
    .copied()
}

/// The tables, in Markdown, and the target checks.
fn report(results: &Results) -> (String, bool) {
    let m = medians(&results.records);
    let mut out = String::new();
    let mut any_error = false;
    let mut datasets: Vec<(String, String, u64)> =
        m.keys().map(|k| (k.0.clone(), k.1.clone(), k.2)).collect();
    datasets.dedup();
    let mut ops: Vec<String> = m.keys().map(|k| k.3.clone()).collect();
    ops.sort();
    ops.dedup();
    for op in ["list", "deep", "cancel"] {
        if !ops.iter().any(|o| o == op) {
            continue;
        }
        out.push_str(&format!(
            "\n### {}\n\n| store | layout | rows | conc | service req/s | transport req/s | database req/s | combined limit | ratio | service p50 / p99 (ms) | transport p50 | database p50 / p99 | p99/p50 | runs |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
            match op {
                "list" => "ListInvitations, first page of 50",
                "deep" => "ListInvitations, the page after 10 000 pages of 50",
                _ => "CancelInvitation (fresh pending invitations)",
            }
        ));
        let mut keys: Vec<&Key> = m.keys().filter(|k| k.3 == op && k.4 == "service").collect();
        keys.sort_by_key(|k| (k.0.clone(), k.1 != "single", k.2, k.5));
        for k in keys {
            let s = m[k];
            let t = get(
                &m,
                &k.0,
                &k.1,
                k.2,
                if op == "deep" { "list" } else { op },
                "transport",
                k.5,
            );
            let d = get(&m, &k.0, &k.1, k.2, op, "database", k.5);
            let comb = match (t, d) {
                (Some(t), Some(d)) => Some(combined(t.rps, d.rps)),
                _ => None,
            };
            let f = |v: Option<f64>, digits: usize| {
                v.map_or("–".to_owned(), |v| format!("{v:.digits$}"))
            };
            out.push_str(&format!(
                "| {} | {} | {} | {} | {:.0} | {} | {} | {} | {} | {:.2} / {:.2} | {} | {} | {:.1} | {} |\n",
                k.0,
                k.1,
                k.2,
                k.5,
                s.rps,
                f(t.map(|t| t.rps), 0),
                f(d.map(|d| d.rps), 0),
                f(comb, 0),
                f(comb.map(|c| s.rps / c), 2),
                s.p50 / 1e3,
                s.p99 / 1e3,
                f(t.map(|t| t.p50 / 1e3), 2),
                d.map_or("–".to_owned(), |d| format!("{:.2} / {:.2}", d.p50 / 1e3, d.p99 / 1e3)),
                s.p99 / s.p50,
                s.runs
            ));
        }
    }

    // Scaling: 1M vs 1k, per store/layout/conc, service vs bare SQL. Measured two ways: the
    // first pages of two separate datasets, and a size pair alternated in every round
    // (`flat`). Where the pair was measured, the target is checked on it: the separate
    // datasets are minutes apart, and the machine drifts in between.
    out.push_str("\n### Flat in size\n\n| store | layout | measured | conc | service large/small | database large/small | service ratio / database ratio (target >= 0.9) |\n|---|---|---|---:|---:|---:|---:|\n");
    let mut checks: Vec<(String, bool)> = vec![];
    for (store, layout) in [
        ("postgres", "single"),
        ("postgres", "spread"),
        ("sqlite", "single"),
        ("sqlite", "spread"),
    ] {
        let paired = m
            .keys()
            .any(|k| k.0 == store && k.1 == layout && k.3 == FLAT_PAIR);
        for (op, measured) in [
            ("list", "separate datasets"),
            (FLAT_PAIR, "alternated pair"),
        ] {
            let mut sizes: Vec<u64> = m
                .keys()
                .filter(|k| k.0 == store && k.1 == layout && k.3 == op)
                .map(|k| k.2)
                .collect();
            sizes.sort_unstable();
            let (Some(&small), Some(&big)) = (sizes.first(), sizes.last()) else {
                continue;
            };
            if small == big {
                continue;
            }
            let checked = store == "postgres" && (op == FLAT_PAIR || !paired);
            for conc in [1, 8, 32, 64] {
                let q =
                    |size, variant| get(&m, store, layout, size, op, variant, conc).map(|x| x.rps);
                if let (Some(s1), Some(s2), Some(d1), Some(d2)) = (
                    q(small, "service"),
                    q(big, "service"),
                    q(small, "database"),
                    q(big, "database"),
                ) {
                    let rel = (s2 / s1) / (d2 / d1);
                    out.push_str(&format!(
                        "| {store} | {layout} | {measured} | {conc} | {:.2} | {:.2} | {:.2} |\n",
                        s2 / s1,
                        d2 / d1,
                        rel
                    ));
                    if checked {
                        checks.push((format!("flat in size: postgres {layout} c={conc} ({measured}): {big}/{small} rows, service ratio / SQL ratio = {rel:.2} (>= 0.9)"), rel >= 0.9));
                    }
                }
            }
        }
    }
    out.push_str("\n### The page after 10 000 pages\n\n| store | conc | service first / deep req/s | database first / deep req/s | service cost ratio / database cost ratio (target <= 1.1) |\n|---|---:|---:|---:|---:|\n");
    for k in m.keys().filter(|k| k.3 == "deep" && k.4 == "service") {
        let first = get(&m, &k.0, &k.1, k.2, "list", "service", k.5);
        let dfirst = get(&m, &k.0, &k.1, k.2, "list", "database", k.5);
        let ddeep = get(&m, &k.0, &k.1, k.2, "deep", "database", k.5);
        if let (Some(f), Some(df), Some(dd)) = (first, dfirst, ddeep) {
            let s = m[k];
            let rel = (f.rps / s.rps) / (df.rps / dd.rps);
            out.push_str(&format!(
                "| {} | {} | {:.0} / {:.0} | {:.0} / {:.0} | {:.2} |\n",
                k.0, k.5, f.rps, s.rps, df.rps, dd.rps, rel
            ));
            if k.0 == "postgres" {
                checks.push((format!("deep page: postgres c={}: service cost x{:.2} vs SQL x{:.2}: relative {rel:.2} (<= 1.1)", k.5, f.rps / s.rps, df.rps / dd.rps), rel <= 1.1));
            }
        }
    }

    // Targets on PostgreSQL, per dataset.
    for (store, layout, size) in &datasets {
        for op in ["list", "cancel"] {
            for conc in [8, 32] {
                if let (Some(s), Some(t), Some(d)) = (
                    get(&m, store, layout, *size, op, "service", conc),
                    get(&m, store, layout, *size, op, "transport", conc),
                    get(&m, store, layout, *size, op, "database", conc),
                ) && store == "postgres"
                {
                    let ratio = s.rps / combined(t.rps, d.rps);
                    checks.push((format!("{op} {store} {layout} {size} c={conc}: {:.0} req/s = {ratio:.2} x combined limit {:.0} (>= 0.8)", s.rps, combined(t.rps, d.rps)), ratio >= 0.8));
                }
            }
            if let (Some(s), Some(t), Some(d)) = (
                get(&m, store, layout, *size, op, "service", 1),
                get(&m, store, layout, *size, op, "transport", 1),
                get(&m, store, layout, *size, op, "database", 1),
            ) && store == "postgres"
            {
                let over = (s.p50 - t.p50 - d.p50) / 1e3;
                checks.push((format!("latency {op} {store} {layout} {size} c=1: p50 {:.3} ms - (no-op {:.3} + database {:.3}) = {over:.3} ms (<= 0.1)", s.p50 / 1e3, t.p50 / 1e3, d.p50 / 1e3), over <= 0.1));
            }
            if let Some(s) = get(&m, store, layout, *size, op, "service", 8) {
                checks.push((
                    format!(
                        "p99/p50 {op} {store} {layout} {size} c=8: {:.2} (<= 3)",
                        s.p99 / s.p50
                    ),
                    s.p99 / s.p50 <= 3.0,
                ));
            }
        }
        if store == "sqlite"
            && let Some(pg) = get(&m, "postgres", layout, *size, "list", "service", 8)
            && let Some(sq) = get(&m, "sqlite", layout, *size, "list", "service", 8)
        {
            checks.push((
                format!(
                    "sqlite list {layout} {size} c=8: {:.0} req/s vs postgres {:.0} (>=)",
                    sq.rps, pg.rps
                ),
                sq.rps >= pg.rps,
            ));
        }
    }
    for d in &results.datasets {
        if let Some(kib) = d.server_peak_rss_kib {
            checks.push((
                format!(
                    "peak RSS {}{}: {:.1} MiB (<= 64)",
                    d.name(),
                    if d.kind == FLAT_PAIR {
                        ", List only"
                    } else {
                        ""
                    },
                    kib as f64 / 1024.0
                ),
                kib <= 64 * 1024,
            ));
        }
        if !d.race_codes.is_empty() {
            let ok = d.race_one_winner_each
                && d.race_codes
                    .keys()
                    .all(|k| matches!(k.as_str(), "OK" | "Aborted" | "FailedPrecondition"));
            checks.push((
                format!(
                    "cancel storm codes {} {} {}: {:?}",
                    d.store, d.layout, d.size, d.race_codes
                ),
                ok,
            ));
        }
        if !d.errors.is_empty() {
            any_error = true;
            out.push_str(&format!(
                "\nERRORS in {} {} {}: {:?}\n",
                d.store, d.layout, d.size, d.errors
            ));
        }
    }
    out.push_str("\n### Response sizes (bytes, encoded protobuf)\n\n| store | layout | rows | list: service / no-op | cancel: service / no-op | service peak RSS (MiB) | no-op peak RSS (MiB) |\n|---|---|---:|---:|---:|---:|---:|\n");
    for d in results.datasets.iter().filter(|d| d.kind.is_empty()) {
        let mib = |k: Option<u64>| k.map_or("–".into(), |k| format!("{:.1}", k as f64 / 1024.0));
        out.push_str(&format!(
            "| {} | {} | {} | {} / {} | {} / {} | {} | {} |\n",
            d.store,
            d.layout,
            d.size,
            d.list_bytes_service,
            d.list_bytes_noop,
            d.cancel_bytes_service,
            d.cancel_bytes_noop,
            mib(d.server_peak_rss_kib),
            mib(d.noop_peak_rss_kib)
        ));
    }
    out.push_str("\n### Targets\n\n");
    for (text, met) in &checks {
        out.push_str(&format!(
            "- {} {text}\n",
            if *met { "MET   " } else { "MISSED" }
        ));
    }
    (out, any_error)
}

/// Throughput and p99 against concurrency, for the largest single-enterprise dataset.
fn chart(results: &Results) -> String {
    let m = medians(&results.records);
    let size = results
        .records
        .iter()
        .filter(|r| r.layout == "single")
        .map(|r| r.size)
        .max()
        .unwrap_or(0);
    let mut concs: Vec<usize> = results
        .records
        .iter()
        .filter(|r| r.size == size && r.op != "deep")
        .map(|r| r.conc)
        .collect();
    concs.sort_unstable();
    concs.dedup();
    let series: [(&str, &str, &str, &str); 5] = [
        ("service, PostgreSQL", "postgres", "service", "#1f77b4"),
        ("service, SQLite", "sqlite", "service", "#2ca02c"),
        (
            "transport limit (no-op RPC)",
            "postgres",
            "transport",
            "#7f7f7f",
        ),
        (
            "database limit, PostgreSQL (pgbench)",
            "postgres",
            "database",
            "#d62728",
        ),
        (
            "combined limit, PostgreSQL",
            "postgres",
            "combined",
            "#ff7f0e",
        ),
    ];
    let value = |store: &str, op: &str, variant: &str, conc: usize, p99: bool| -> Option<f64> {
        if variant == "combined" {
            if p99 {
                return None;
            }
            let t = get(&m, store, "single", size, op, "transport", conc)?;
            let d = get(&m, store, "single", size, op, "database", conc)?;
            return Some(combined(t.rps, d.rps));
        }
        let x = get(&m, store, "single", size, op, variant, conc)?;
        Some(if p99 { x.p99 / 1e3 } else { x.rps })
    };
    let (pw, ph, left, top) = (420.0, 260.0, 70.0, 60.0);
    let mut svg = String::new();
    let width = left + 2.0 * (pw + 90.0);
    let height = top + 2.0 * (ph + 80.0) + 110.0;
    svg.push_str(&format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"{left}\" y=\"28\" font-size=\"16\" font-weight=\"bold\">invitations: throughput and p99 against concurrency ({size} rows, one enterprise; medians)</text>\n"
    ));
    for (row, op) in ["list", "cancel"].iter().enumerate() {
        for (col, p99) in [false, true].iter().enumerate() {
            let x0 = left + col as f64 * (pw + 90.0);
            let y0 = top + row as f64 * (ph + 80.0);
            let mut max: f64 = 0.0;
            for (_, store, variant, _) in series {
                for &c in &concs {
                    if let Some(v) = value(store, op, variant, c, *p99) {
                        max = max.max(v);
                    }
                }
            }
            if max <= 0.0 {
                continue;
            }
            let step = nice_step(max / 5.0);
            let ymax = (max / step).ceil() * step;
            let title = format!(
                "{} — {}",
                if *op == "list" {
                    "ListInvitations (page of 50)"
                } else {
                    "CancelInvitation"
                },
                if *p99 {
                    "p99 latency (ms)"
                } else {
                    "throughput (req/s)"
                }
            );
            svg.push_str(&format!(
                "<text x=\"{x0}\" y=\"{}\" font-weight=\"bold\">{title}</text>\n",
                y0 - 10.0
            ));
            svg.push_str(&format!("<rect x=\"{x0}\" y=\"{y0}\" width=\"{pw}\" height=\"{ph}\" fill=\"none\" stroke=\"#999\"/>\n"));
            let mut tick = 0.0;
            while tick <= ymax + 1e-9 {
                let y = y0 + ph - tick / ymax * ph;
                svg.push_str(&format!("<line x1=\"{x0}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#eee\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>\n", x0 + pw, x0 - 6.0, y + 4.0, fmt_tick(tick)));
                tick += step;
            }
            let xs = |i: usize| x0 + (i as f64 + 0.5) * pw / concs.len() as f64;
            for (i, c) in concs.iter().enumerate() {
                svg.push_str(&format!(
                    "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{c}</text>\n",
                    xs(i),
                    y0 + ph + 16.0
                ));
            }
            svg.push_str(&format!("<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">concurrency (closed-loop clients)</text>\n", x0 + pw / 2.0, y0 + ph + 34.0));
            for (_, store, variant, color) in series {
                let pts: Vec<(f64, f64)> = concs
                    .iter()
                    .enumerate()
                    .filter_map(|(i, &c)| {
                        value(store, op, variant, c, *p99).map(|v| (xs(i), y0 + ph - v / ymax * ph))
                    })
                    .collect();
                if pts.is_empty() {
                    continue;
                }
                let path: Vec<String> = pts.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
                let dash = if variant == "combined" {
                    " stroke-dasharray=\"6 4\""
                } else {
                    ""
                };
                svg.push_str(&format!("<polyline points=\"{}\" fill=\"none\" stroke=\"{color}\" stroke-width=\"2\"{dash}/>\n", path.join(" ")));
                for (x, y) in pts {
                    svg.push_str(&format!(
                        "<circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"3\" fill=\"{color}\"/>\n"
                    ));
                }
            }
        }
    }
    let ly = top + 2.0 * (ph + 80.0) + 10.0;
    for (i, (name, _, _, color)) in series.iter().enumerate() {
        let x = left + (i % 3) as f64 * 300.0;
        let y = ly + (i / 3) as f64 * 22.0;
        svg.push_str(&format!("<rect x=\"{x}\" y=\"{}\" width=\"14\" height=\"4\" fill=\"{color}\"/><text x=\"{}\" y=\"{}\">{name}</text>\n", y - 4.0, x + 20.0, y));
    }
    svg.push_str("</svg>\n");
    svg
}

fn nice_step(raw: f64) -> f64 {
    let mag = 10f64.powf(raw.log10().floor());
    for f in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if f * mag >= raw {
            return f * mag;
        }
    }
    10.0 * mag
}

fn fmt_tick(v: f64) -> String {
    if v >= 10.0 || v == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

fn machine_info(pg_url: Option<&str>) -> BTreeMap<String, String> {
    let mut info = BTreeMap::new();
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    if let Some(model) = cpuinfo.lines().find_map(|l| l.strip_prefix("model name")) {
        info.insert(
            "cpu".into(),
            model.trim_start_matches([' ', '\t', ':']).to_owned(),
        );
    }
    // The machine's cores, not this process's: the harness may have pinned itself already.
    info.insert(
        "cores".into(),
        cpuinfo
            .lines()
            .filter(|l| l.starts_with("processor"))
            .count()
            .to_string(),
    );
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    if let Some(total) = meminfo.lines().find_map(|l| l.strip_prefix("MemTotal:")) {
        info.insert("memory".into(), total.trim().to_owned());
    }
    if let Ok(out) = Command::new("uname").arg("-sr").output() {
        info.insert(
            "kernel".into(),
            String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        );
    }
    if let Some(url) = pg_url
        && let Ok(out) = Command::new("psql")
            .args([url, "-Atc", "SHOW server_version"])
            .output()
    {
        info.insert(
            "postgresql".into(),
            String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        );
    }
    info.insert("sqlite".into(), "bundled (libsqlite3-sys)".into());
    info.insert(
        "date".into(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
            .to_string(),
    );
    info
}

fn load_results(path: &Path) -> Results {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or_default()
}

// ------------------------------------------------------------------------------------------
// EXPLAIN: every List filter combination and Cancel on the 1M-row table.
// ------------------------------------------------------------------------------------------

/// SQL (with `$n` placeholders for PostgreSQL, `?` for SQLite) for a filter combination, as
/// `Store::list` builds it: enterprise, scope, e-mail, statuses, cursor.
fn list_filter_sql(
    store: StoreKind,
    clock: Clock,
    scope: bool,
    email: bool,
    statuses: &[InvitationStatus],
    cursor: bool,
) -> (String, Vec<String>) {
    let mut n = 0;
    let mut params = vec![];
    let mut p = |value: String| {
        n += 1;
        params.push(value);
        match store {
            StoreKind::Postgres => format!("${n}"),
            StoreKind::Sqlite => "?".into(),
        }
    };
    let q = |c: &str| format!("\"invitations\".\"{c}\"");
    let lit_uuid = |u: Uuid| match store {
        StoreKind::Postgres => format!("'{u}'::uuid"),
        StoreKind::Sqlite => format!("X'{}'", u.simple()),
    };
    let ent = enterprise_uuid(0);
    let mut sql = format!(
        "SELECT {} FROM \"invitations\" WHERE {} = {}",
        select_list(),
        q("enterprise_id"),
        p(lit_uuid(ent))
    );
    if scope {
        sql += &format!(
            " AND {} = {}",
            q("scope"),
            p(format!("'enterprises/{ent}/teams/blue'"))
        );
    }
    if email {
        sql += &format!(
            " AND {} = {}",
            q("email_normalized"),
            p("'user1234@example.com'".into())
        );
    }
    let now = Timestamp::now().unix_micros().to_string();
    if !statuses.is_empty() {
        let mut any = vec![];
        for s in statuses {
            any.push(match s {
                InvitationStatus::Pending => format!(
                    "({} = {} AND {} > {})",
                    q("status"),
                    p("'pending'".into()),
                    q("expires_at"),
                    p(now.clone())
                ),
                InvitationStatus::Expired => format!(
                    "({} = {} OR ({} = {} AND {} <= {}))",
                    q("status"),
                    p("'expired'".into()),
                    q("status"),
                    p("'pending'".into()),
                    q("expires_at"),
                    p(now.clone())
                ),
                other => format!("{} = {}", q("status"), p(format!("'{}'", other.as_str()))),
            });
        }
        sql += &format!(" AND ({})", any.join(" OR "));
    }
    if cursor {
        let row = DEEP_PAGES * PAGE_SIZE - 1;
        let c = p(clock.created_at(row).to_string());
        let i = p(lit_uuid(mk_uuid(ID_PREFIX, row)));
        sql += &format!(" AND (\"created_at\", \"id\") < ({c}, {i})");
    }
    sql += &format!(
        " ORDER BY {} DESC, {} DESC LIMIT {}",
        q("created_at"),
        q("id"),
        p("51".into())
    );
    (sql, params)
}

async fn explain(plan: &Plan, store: StoreKind) -> String {
    use InvitationStatus::*;
    let size = plan.sizes.iter().copied().max().unwrap_or(1_000_000);
    let db = Db::create(store, plan.pg_url.as_deref(), "invitations_bench_explain").await;
    db.migrate().await;
    let clock = Clock::now();
    db.seed(Layout::Single, 0, size, clock, false).await;
    db.seed(Layout::Single, 0, 1000, clock, true).await;
    let mut out = format!(
        "# EXPLAIN on {}: {size} rows in one enterprise (+1000 pending to cancel)\n",
        store.name()
    );
    let combos: Vec<(&str, bool, bool, Vec<InvitationStatus>, bool)> = vec![
        ("no filter (first page)", false, false, vec![], false),
        (
            "no filter, the page after 10 000 pages (keyset cursor)",
            false,
            false,
            vec![],
            true,
        ),
        ("statuses = [PENDING]", false, false, vec![Pending], false),
        ("statuses = [ACCEPTED]", false, false, vec![Accepted], false),
        ("statuses = [EXPIRED]", false, false, vec![Expired], false),
        (
            "statuses = [ACCEPTED, CANCELLED]",
            false,
            false,
            vec![Accepted, Cancelled],
            false,
        ),
        (
            "statuses = [PENDING, EXPIRED], deep cursor",
            false,
            false,
            vec![Pending, Expired],
            true,
        ),
        ("email", false, true, vec![], false),
        ("scope", true, false, vec![], false),
        ("scope, deep cursor", true, false, vec![], true),
        (
            "statuses = [PENDING] + email",
            false,
            true,
            vec![Pending],
            false,
        ),
        (
            "statuses = [CANCELLED] + scope",
            true,
            false,
            vec![Cancelled],
            false,
        ),
        ("email + scope", true, true, vec![], false),
        (
            "statuses = [PENDING] + email + scope",
            true,
            true,
            vec![Pending],
            false,
        ),
    ];
    match store {
        StoreKind::Postgres => {
            let pool = sqlx::postgres::PgPoolOptions::new()
                .max_connections(1)
                .connect(&db.url)
                .await
                .expect("connect");
            let mut conn = pool.acquire().await.expect("conn");
            let mut run = async |sql: String| -> String {
                let rows = sqlx::raw_sql(AssertSqlSafe(sql))
                    .fetch_all(&mut *conn)
                    .await
                    .expect("explain");
                rows.iter()
                    .map(|r| format!("    {}\n", r.get::<String, _>(0)))
                    .collect()
            };
            for (i, (name, scope, email, statuses, cursor)) in combos.iter().enumerate() {
                let (sql, params) =
                    list_filter_sql(store, clock, *scope, *email, statuses, *cursor);
                out += &format!(
                    "\n## List: {name}\n\n    {sql}\n\nGeneric plan (a cached prepared statement; what the service runs with plan_cache_mode = force_generic_plan):\n\n"
                );
                run(format!("PREPARE q{i} AS {sql}")).await;
                run("SET plan_cache_mode = force_generic_plan".into()).await;
                out += &run(format!(
                    "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) EXECUTE q{i}({})",
                    params.join(", ")
                ))
                .await;
                run("SET plan_cache_mode = force_custom_plan".into()).await;
                out += "\nCustom plan (re-planned for these values; what PostgreSQL picks for the service today, LIMIT being a bind parameter):\n\n";
                out += &run(format!(
                    "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) EXECUTE q{i}({})",
                    params.join(", ")
                ))
                .await;
                run("RESET plan_cache_mode".into()).await;
            }
            let sql = cancel_sql(|i| format!("${i}"));
            let now = Timestamp::now().unix_micros();
            let params = [
                "'cancelled'".to_owned(),
                now.to_string(),
                format!("'users/{}'", admin_uuid()),
                "NULL".into(),
                now.to_string(),
                "2".into(),
                "NULL".into(),
                format!("'{}'::uuid", mk_uuid(POOL_PREFIX, 7)),
                format!("'{}'::uuid", enterprise_uuid(0)),
                "1".into(),
                "'pending'".into(),
                now.to_string(),
            ];
            out += &format!(
                "\n## Cancel (in a rolled-back transaction)\n\n    {sql}\n\nGeneric plan:\n\n"
            );
            run(format!("PREPARE c AS {sql}")).await;
            run("SET plan_cache_mode = force_generic_plan".into()).await;
            run("BEGIN".into()).await;
            out += &run(format!(
                "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) EXECUTE c({})",
                params.join(", ")
            ))
            .await;
            run("ROLLBACK".into()).await;
            drop(conn);
            pool.close().await;
        }
        StoreKind::Sqlite => {
            let pool = sqlite_pool(db.sqlite_path.as_ref().expect("path"), 1).await;
            for (name, scope, email, statuses, cursor) in &combos {
                let (sql, params) =
                    list_filter_sql(store, clock, *scope, *email, statuses, *cursor);
                let mut literal = String::new();
                let mut it = params.iter();
                for ch in sql.chars() {
                    if ch == '?' {
                        literal += it.next().expect("param");
                    } else {
                        literal.push(ch);
                    }
                }
                let rows = sqlx::query(AssertSqlSafe(format!("EXPLAIN QUERY PLAN {literal}")))
                    .fetch_all(&pool)
                    .await
                    .expect("explain");
                let started = Instant::now();
                let mut n = 0;
                for _ in 0..20 {
                    n = sqlx::query(AssertSqlSafe(literal.clone()))
                        .fetch_all(&pool)
                        .await
                        .expect("run")
                        .len();
                }
                out += &format!("\n## List: {name}\n\n    {sql}\n\n");
                for r in rows {
                    out += &format!("    {}\n", r.get::<String, _>(3));
                }
                out += &format!(
                    "    ({n} rows, {:.3} ms per query)\n",
                    started.elapsed().as_secs_f64() * 1e3 / 20.0
                );
            }
            let sql = cancel_sql(|_| "?".to_owned());
            let now = Timestamp::now().unix_micros();
            let literal = cancel_sql(|i| match i {
                1 => "'cancelled'".into(),
                3 => format!("'users/{}'", admin_uuid()),
                4 | 7 => "NULL".into(),
                6 => "2".into(),
                8 => format!("X'{}'", mk_uuid(POOL_PREFIX, 7).simple()),
                9 => format!("X'{}'", enterprise_uuid(0).simple()),
                10 => "1".into(),
                11 => "'pending'".into(),
                _ => now.to_string(),
            });
            let rows = sqlx::query(AssertSqlSafe(format!("EXPLAIN QUERY PLAN {literal}")))
                .fetch_all(&pool)
                .await
                .expect("explain");
            out += &format!("\n## Cancel\n\n    {sql}\n\n");
            for r in rows {
                out += &format!("    {}\n", r.get::<String, _>(3));
            }
            pool.close().await;
        }
    }
    db.drop_db().await;
    out
}

// ------------------------------------------------------------------------------------------

/// Merges `fresh` into the results file (a dataset measured now replaces its old figures)
/// and redraws the chart; called after every dataset, so a long run keeps what it measured.
fn save(plan: &Plan, fresh: &Results) {
    if let Some(path) = &plan.out {
        // Merge: replace the datasets measured now, keep the others.
        let mut all = load_results(path);
        let measured = |store: &str, layout: &str, size: u64, kind: &str| {
            fresh
                .datasets
                .iter()
                .any(|d| d.store == store && d.layout == layout && d.size == size && d.kind == kind)
        };
        let record_kind = |r: &Record| if r.op == FLAT_PAIR { FLAT_PAIR } else { "" };
        all.records
            .retain(|r| !measured(&r.store, &r.layout, r.size, record_kind(r)));
        all.datasets
            .retain(|d| !measured(&d.store, &d.layout, d.size, &d.kind));
        all.records.extend(fresh.records.clone());
        all.datasets.extend(fresh.datasets.clone());
        all.machine = fresh.machine.clone();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("results dir");
        }
        std::fs::write(path, serde_json::to_string_pretty(&all).expect("json"))
            .expect("write results");
        println!("results: {}", path.display());
        if let Some(chart_path) = &plan.chart {
            std::fs::write(chart_path, chart(&all)).expect("write the chart");
            println!("chart: {}", chart_path.display());
        }
    }
}

fn pin_self_to_core_1() {
    let pid = std::process::id().to_string();
    let ok = Command::new("taskset")
        .args(["-a", "-p", "-c", "1", &pid])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("could not pin the load generator to core 1");
    }
}

fn main() {
    let opts = Opts::parse();
    if opts.serve_noop {
        // The harness holds our stdin open and never writes to it: end of file means it is
        // gone, even if it was killed by a signal and could not stop us.
        std::thread::spawn(|| {
            let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
            std::process::exit(0);
        });
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            println!("listening {}", listener.local_addr().expect("addr"));
            std::io::stdout().flush().expect("flush");
            serve_noop(listener).await;
        });
        return;
    }
    let plan = match plan_from(&opts) {
        Ok(plan) => plan,
        Err(e) => {
            eprintln!("bench: {e}");
            std::process::exit(2);
        }
    };
    if opts.report {
        let path = plan.out.clone().expect("results path");
        let results = load_results(&path);
        let (text, _) = report(&results);
        println!("{text}");
        if let Some(chart_path) = &plan.chart {
            std::fs::write(chart_path, chart(&results)).expect("write the chart");
            println!("chart: {}", chart_path.display());
        }
        return;
    }
    if plan.pin {
        // Before the runtime exists, so every thread it starts inherits the mask.
        pin_self_to_core_1();
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder
        .worker_threads(if plan.pin { 1 } else { 2 })
        .enable_all();
    let rt = builder.build().expect("runtime");
    if opts.explain {
        std::fs::create_dir_all("bench").expect("bench/");
        for &store in &plan.stores {
            let text = rt.block_on(explain(&plan, store));
            let path = format!("bench/explain-{}.txt", store.name());
            std::fs::write(&path, &text).expect("write the plans");
            println!("{text}\nwritten: {path}");
        }
        return;
    }
    stop_servers_on_signal();
    println!(
        "bench: stores {:?}, sizes {:?}, layouts {:?}, ops {:?}, concurrency {:?}, {} round(s), server {}, pinned {}, the database's work for it on core 1 {}",
        plan.stores.iter().map(|s| s.name()).collect::<Vec<_>>(),
        plan.sizes,
        plan.layouts.iter().map(|l| l.name()).collect::<Vec<_>>(),
        plan.ops,
        plan.conc,
        plan.runs,
        if plan.inproc { "in-process" } else { "process" },
        plan.pin,
        plan.pin_db
    );
    let mut fresh = Results {
        machine: machine_info(plan.pg_url.as_deref()),
        ..Default::default()
    };
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut keep = |records: Vec<Record>, infos: Vec<DatasetInfo>| {
        for info in infos.iter().filter(|i| !i.errors.is_empty()) {
            failures
                .lock()
                .expect("lock")
                .push(format!("{}: {:?}", info.name(), info.errors));
        }
        fresh.records.extend(records);
        fresh.datasets.extend(infos);
        save(&plan, &fresh);
    };
    let per_dataset = plan
        .ops
        .iter()
        .any(|o| matches!(o.as_str(), "list" | "deep" | "cancel"));
    let pair = plan.ops.iter().any(|o| o == FLAT_PAIR);
    for &store in &plan.stores {
        for &layout in &plan.layouts {
            for &size in plan.sizes.iter().filter(|_| per_dataset) {
                let (records, info) = rt.block_on(run_dataset(&plan, store, layout, size));
                keep(records, vec![info]);
            }
            if pair {
                let (records, infos) =
                    rt.block_on(run_flat_pair(&plan, store, layout, plan.flat_sizes));
                keep(records, infos);
            }
        }
    }
    let (text, _) = report(&fresh);
    println!("\n# This run\n{text}");
    let failures = failures.lock().expect("lock");
    if !failures.is_empty() {
        eprintln!("bench: errors:\n{}", failures.join("\n"));
        std::process::exit(1);
    }
}
