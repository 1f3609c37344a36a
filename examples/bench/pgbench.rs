//! The database limit on PostgreSQL: pgbench with a custom script of the service's SQL.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use sea_orm::DbBackend;

use crate::closed_loop::{Sample, sample_from};
use crate::plan::{Plan, StoreKind};
use crate::seed::enterprise_uuid;
use crate::sql::{self, ListShape, Slot};

pub(crate) struct PgBench {
    bin: PathBuf,
    url: String,
    pin: bool,
}

pub(crate) enum PgSpan {
    Secs(u64),
    PerClient(usize),
}

impl PgBench {
    /// pgbench on `url`, for PostgreSQL when one was found.
    pub(crate) fn for_database(plan: &Plan, store: StoreKind, url: &str) -> Option<Self> {
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

    pub(crate) fn run(
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
        format!("'{}'::uuid", enterprise_uuid(0))
    } else {
        format!(
            "('e0000000-0000-4000-8000-' || lpad(to_hex({var}::bigint % {enterprises}), 12, '0'))::uuid"
        )
    }
}

/// `Store::list`'s statement for a random enterprise; a deep page's cursor comes from the
/// variables `cc` (created_at) and `ci` (the row number of the id).
pub(crate) fn pg_list_script(enterprises: u64, deep: bool) -> String {
    let list = sql::list(DbBackend::Postgres, &ListShape::page(deep)).pg_text(|slot| match slot {
        Slot::Enterprise => pg_enterprise_expr(":e", enterprises),
        Slot::CursorCreatedAt => ":cc::bigint".into(),
        Slot::CursorId => {
            "('a0000000-0000-4000-8000-' || lpad(to_hex(:ci::bigint), 12, '0'))::uuid".into()
        }
        Slot::Id | Slot::Now | Slot::EventId => unreachable!("a first page binds none of these"),
    });
    format!(
        "\\set e random(0, {})\n{list};\n",
        enterprises.saturating_sub(1)
    )
}

/// `Store::cancel`'s statement on pool invitation `k` (each client walks its own range), at
/// the instant `now`.
pub(crate) fn pg_cancel_script(enterprises: u64) -> String {
    let cancel = sql::cancel().pg_text(|slot| match slot {
        Slot::Enterprise => pg_enterprise_expr(":k", enterprises),
        Slot::Id => {
            "('c0000000-0000-4000-8000-' || lpad(to_hex(:k::bigint), 12, '0'))::uuid".into()
        }
        Slot::Now => ":now::bigint".into(),
        Slot::EventId => "gen_random_uuid()".into(),
        Slot::CursorCreatedAt | Slot::CursorId => unreachable!("a cancel has no cursor"),
    });
    format!("\\set n :n + 1\n\\set k :base + :client_id * :per + :n - 1\n{cancel};\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scripts_run_the_services_statements_with_pgbench_variables() {
        let list = pg_list_script(1000, true);
        assert!(list.contains(":e::bigint % 1000"), "{list}");
        assert!(list.contains("(:cc::bigint, ('a0000000"), "{list}");
        assert!(!list.contains('$'), "{list}");
        let cancel = pg_cancel_script(1);
        assert!(
            cancel.contains(&format!("'{}'::uuid", enterprise_uuid(0))),
            "{cancel}"
        );
        assert!(cancel.contains("to_hex(:k::bigint)"), "{cancel}");
        assert!(cancel.contains(":now::bigint"), "{cancel}");
        assert!(
            cancel.contains("INSERT INTO \"invitation_events\""),
            "{cancel}"
        );
        assert!(cancel.contains("gen_random_uuid()"), "{cancel}");
        assert!(!cancel.contains('$'), "{cancel}");
    }
}
