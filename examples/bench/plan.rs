//! The command line, and the plan it becomes: what a run does, with every default filled in.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;

pub(crate) const PAGE_SIZE: u64 = 50;
const ENTERPRISES_SPREAD: u64 = 1000;
/// The page after this many pages of 50 is the "deep page".
pub(crate) const DEEP_PAGES: u64 = 10_000;

/// The kind of a dataset measured as one side of a size pair (`--ops flat`), and the op its
/// first pages are recorded under.
pub(crate) const FLAT_PAIR: &str = "flat";

/// Benchmarks ListInvitations and CancelInvitation against the transport and database limits.
#[derive(Debug, Parser)]
#[command(name = "bench")]
pub(crate) struct Opts {
    /// A short run (seconds): 1 000 rows, concurrency 1 and 8, one round; SQLite, and
    /// PostgreSQL when TEST_DATABASE_URL is set. Exits non-zero only on errors.
    #[arg(long)]
    quick: bool,
    /// The full matrix (sizes 1k/100k/1M, both layouts, concurrency 1/8/32/64, 5 rounds).
    #[arg(long)]
    full: bool,
    /// Seed the 1M-row table and write EXPLAIN plans of every List filter and of Cancel.
    #[arg(long)]
    pub(crate) explain: bool,
    /// Print the tables and targets from the results file and redraw the chart.
    #[arg(long)]
    pub(crate) report: bool,
    /// (internal) serve the no-op InvitationService and print its address.
    #[arg(long, hide = true)]
    pub(crate) serve_noop: bool,

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
    /// Limit the benchmark's caller to this many calls per second (default: no limit), to
    /// measure what the rate limit costs; set it far above the load so nothing is refused.
    #[arg(long)]
    rate_limit_per_second: Option<u32>,
    /// Share that limit through this Redis (INVITATIONS_RATE_LIMIT_REDIS_URL).
    #[arg(long)]
    rate_limit_redis_url: Option<String>,
    /// Serve the operations listener, so the service records its Prometheus metrics (off
    /// by default: what they cost is measured against a run without them). With
    /// `--server process`.
    #[arg(long)]
    metrics: bool,
    /// Serve through this PgBouncer (transaction mode, 1.21+), e.g.
    /// `postgres://postgres@127.0.0.1:6432/test`: the service's DATABASE_URL names the
    /// pooler with the benchmark's database, and INVITATIONS_DB_TRANSACTION_POOLING is on.
    /// PostgreSQL only, with `--server process`; the database limit stays direct.
    #[arg(long)]
    pgbouncer_url: Option<String>,
    /// A label stored with the results (e.g. `baseline`, `after-fix`).
    #[arg(long, default_value = "")]
    label: String,
}

/// The service's rate limit during the run: off (0) unless asked for.
#[derive(Debug, Clone, Default)]
pub(crate) struct RateLimit {
    pub(crate) per_second: u32,
    pub(crate) redis_url: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StoreKind {
    Sqlite,
    Postgres,
}

impl StoreKind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Postgres => "postgres",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Layout {
    Single,
    Spread,
}

impl Layout {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Single => "single",
            Self::Spread => "spread",
        }
    }
    pub(crate) fn enterprises(self) -> u64 {
        match self {
            Self::Single => 1,
            Self::Spread => ENTERPRISES_SPREAD,
        }
    }
}

/// What a run does, with every default filled in.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub(crate) stores: Vec<StoreKind>,
    pub(crate) sizes: Vec<u64>,
    pub(crate) layouts: Vec<Layout>,
    pub(crate) ops: Vec<String>,
    /// The small and the large table of the size pair (`flat`).
    pub(crate) flat_sizes: (u64, u64),
    pub(crate) conc: Vec<usize>,
    pub(crate) deep_conc: Vec<usize>,
    pub(crate) runs: usize,
    pub(crate) secs: u64,
    pub(crate) warmup: Duration,
    pub(crate) cancels: usize,
    pub(crate) pg_url: Option<String>,
    pub(crate) inproc: bool,
    pub(crate) server_bin: PathBuf,
    pub(crate) pgbench: Option<PathBuf>,
    pub(crate) pin: bool,
    pub(crate) pin_db: bool,
    pub(crate) out: Option<PathBuf>,
    pub(crate) chart: Option<PathBuf>,
    pub(crate) db_max_connections: Option<u32>,
    pub(crate) rate_limit: RateLimit,
    pub(crate) metrics: bool,
    pub(crate) pgbouncer_url: Option<String>,
    pub(crate) label: String,
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

pub(crate) fn plan_from(opts: &Opts) -> Result<Plan, String> {
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
    if opts.metrics && inproc {
        return Err("--metrics needs --server process".into());
    }
    if opts.pgbouncer_url.is_some() && inproc {
        return Err("--pgbouncer-url needs --server process".into());
    }
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
        metrics: opts.metrics,
        pgbouncer_url: opts.pgbouncer_url.clone(),
        rate_limit: RateLimit {
            per_second: opts.rate_limit_per_second.unwrap_or(0),
            redis_url: opts.rate_limit_redis_url.clone(),
        },
        label: opts.label.clone(),
    })
}
