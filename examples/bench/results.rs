//! The results: what a run records, and the file that keeps them across runs.

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
