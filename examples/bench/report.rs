//! Summaries and targets: the medians, the tables in Markdown, MET and MISSED.

use std::collections::BTreeMap;

use crate::plan::FLAT_PAIR;
use crate::results::{Record, Results};

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
pub(crate) struct Med {
    pub(crate) rps: f64,
    p50: f64,
    pub(crate) p99: f64,
    runs: usize,
}

pub(crate) type Key = (String, String, u64, String, String, usize);

pub(crate) fn medians(records: &[Record]) -> BTreeMap<Key, Med> {
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

pub(crate) fn combined(a: f64, b: f64) -> f64 {
    1.0 / (1.0 / a + 1.0 / b)
}

pub(crate) fn get(
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
pub(crate) fn report(results: &Results) -> (String, bool) {
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
