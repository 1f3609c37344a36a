//! The chart: throughput and p99 against concurrency, as SVG.

use crate::report::{combined, get, medians};
use crate::results::Results;

/// Throughput and p99 against concurrency, for the largest single-enterprise dataset.
pub(crate) fn chart(results: &Results) -> String {
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
