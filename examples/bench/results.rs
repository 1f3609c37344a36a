//! The results: what a run records, and the file that keeps them across runs.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::closed_loop::Sample;
use crate::plan::FLAT_PAIR;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Record {
    pub(crate) store: String,
    pub(crate) layout: String,
    pub(crate) size: u64,
    pub(crate) op: String,
    pub(crate) variant: String,
    pub(crate) conc: usize,
    pub(crate) run: usize,
    #[serde(flatten)]
    pub(crate) sample: Sample,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct DatasetInfo {
    pub(crate) store: String,
    pub(crate) layout: String,
    pub(crate) size: u64,
    /// Empty for a dataset of its own; [`FLAT_PAIR`] for one side of a size pair.
    #[serde(default)]
    pub(crate) kind: String,
    pub(crate) label: String,
    pub(crate) seed_secs: f64,
    pub(crate) server_peak_rss_kib: Option<u64>,
    pub(crate) noop_peak_rss_kib: Option<u64>,
    /// Processes or threads doing the database's work for the service that were moved to
    /// core 1 (`--pin-db`): PostgreSQL backends, SQLite threads; none when nothing was moved.
    pub(crate) database_work_on_core_1: Option<u64>,
    /// Encoded response sizes (bytes): the real answer and the no-op's.
    pub(crate) list_bytes_service: usize,
    pub(crate) list_bytes_noop: usize,
    pub(crate) cancel_bytes_service: usize,
    pub(crate) cancel_bytes_noop: usize,
    /// Codes of the contended cancel storm (RACE_PER_ID cancels of each of RACE_IDS ids).
    pub(crate) race_codes: BTreeMap<String, u64>,
    pub(crate) race_one_winner_each: bool,
    pub(crate) errors: Vec<String>,
}

impl DatasetInfo {
    /// `store layout size`, and `(pair)` for one side of a size pair.
    pub(crate) fn name(&self) -> String {
        let pair = if self.kind == FLAT_PAIR {
            " (pair)"
        } else {
            ""
        };
        format!("{} {} {}{pair}", self.store, self.layout, self.size)
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Results {
    pub(crate) machine: BTreeMap<String, String>,
    pub(crate) datasets: Vec<DatasetInfo>,
    pub(crate) records: Vec<Record>,
}

pub(crate) fn machine_info(pg_url: Option<&str>) -> BTreeMap<String, String> {
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

pub(crate) fn load_results(path: &Path) -> Results {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or_default()
}

/// Merges `fresh` into the results file at `path` (a dataset measured now replaces its old
/// figures), writes it, and answers what the file now holds.
pub(crate) fn merge_into_file(path: &Path, fresh: &Results) -> Results {
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
    std::fs::write(path, serde_json::to_string_pretty(&all).expect("json")).expect("write results");
    println!("results: {}", path.display());
    all
}
