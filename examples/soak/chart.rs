//! The soak's chart, as SVG: each replica's RSS and open descriptors, and the database's
//! connections, over time, with the restarts marked. One line per replica process (a
//! restart starts a new one), so flat means each line levels off.
use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::Value;

const WIDTH: f64 = 900.0;
const PANEL: f64 = 170.0;
const LEFT: f64 = 70.0;
const TOP: f64 = 40.0;
const GAP: f64 = 50.0;
const COLOURS: [&str; 2] = ["#1f77b4", "#d62728"];

/// A line: its colour and its points (seconds, value).
struct Line {
    colour: &'static str,
    points: Vec<(f64, f64)>,
}

pub fn chart(report: &Value) -> String {
    let seconds = report["seconds"].as_f64().unwrap_or(1.0).max(1.0);
    let mut rss: BTreeMap<(String, u64), Line> = BTreeMap::new();
    let mut fds: BTreeMap<(String, u64), Line> = BTreeMap::new();
    let mut connections = Line {
        colour: "#2ca02c",
        points: Vec::new(),
    };
    for sample in report["samples"].as_array().into_iter().flatten() {
        let at = sample["at_s"].as_f64().unwrap_or(0.0);
        if let Some(count) = sample["pg_connections"].as_f64() {
            connections.points.push((at, count));
        }
        for replica in sample["replicas"].as_array().into_iter().flatten() {
            let name = replica["replica"].as_str().unwrap_or("?").to_owned();
            let colour = COLOURS[usize::from(name == "b")];
            let key = (name, replica["generation"].as_u64().unwrap_or(0));
            if let Some(kib) = replica["rss_kib"].as_f64() {
                rss.entry(key.clone())
                    .or_insert_with(|| Line {
                        colour,
                        points: Vec::new(),
                    })
                    .points
                    .push((at, kib / 1024.0));
            }
            if let Some(open) = replica["fds"].as_f64() {
                fds.entry(key)
                    .or_insert_with(|| Line {
                        colour,
                        points: Vec::new(),
                    })
                    .points
                    .push((at, open));
            }
        }
    }
    let restarts: Vec<f64> = report["restarts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|restart| restart["at_s"].as_f64())
        .collect();
    let bound = report["pg_connections_bound"].as_f64();

    let height = TOP + 3.0 * (PANEL + GAP);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{height}\" \
         font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" \
         fill=\"white\"/>\n<text x=\"{LEFT}\" y=\"20\" font-size=\"14\">Soak: {} s, two \
         replicas on PostgreSQL (a blue, b red), restarts dashed</text>\n",
        WIDTH + LEFT + 20.0,
        seconds
    );
    let panels: [(&str, Vec<&Line>, Option<f64>); 3] = [
        ("RSS (MiB)", rss.values().collect(), None),
        ("open file descriptors", fds.values().collect(), None),
        (
            "PostgreSQL connections (bound dotted)",
            vec![&connections],
            bound,
        ),
    ];
    for (index, (title, lines, limit)) in panels.iter().enumerate() {
        let top = TOP + index as f64 * (PANEL + GAP);
        let most = lines
            .iter()
            .flat_map(|line| line.points.iter().map(|point| point.1))
            .chain(*limit)
            .fold(1.0_f64, f64::max)
            * 1.15;
        let x = |at: f64| LEFT + at / seconds * WIDTH;
        let y = |value: f64| top + PANEL - value / most * PANEL;
        let _ = writeln!(
            svg,
            "<text x=\"{LEFT}\" y=\"{}\">{title}</text>\n<rect x=\"{LEFT}\" y=\"{top}\" \
             width=\"{WIDTH}\" height=\"{PANEL}\" fill=\"none\" stroke=\"#999\"/>\n<text \
             x=\"{}\" y=\"{}\" text-anchor=\"end\">{most:.0}</text>\n<text x=\"{}\" y=\"{}\" \
             text-anchor=\"end\">0</text>\n<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{seconds:.0} \
             s</text>",
            top - 6.0,
            LEFT - 6.0,
            top + 12.0,
            LEFT - 6.0,
            top + PANEL,
            LEFT + WIDTH,
            top + PANEL + 14.0,
        );
        for at in &restarts {
            let _ = writeln!(
                svg,
                "<line x1=\"{0:.1}\" x2=\"{0:.1}\" y1=\"{top}\" y2=\"{1}\" stroke=\"#bbb\" \
                 stroke-dasharray=\"4 3\"/>",
                x(*at),
                top + PANEL
            );
        }
        if let Some(limit) = limit {
            let _ = writeln!(
                svg,
                "<line x1=\"{LEFT}\" x2=\"{0}\" y1=\"{1:.1}\" y2=\"{1:.1}\" stroke=\"#2ca02c\" \
                 stroke-dasharray=\"1 3\"/>",
                LEFT + WIDTH,
                y(*limit)
            );
        }
        for line in lines {
            let points: Vec<String> = line
                .points
                .iter()
                .map(|(at, value)| format!("{:.1},{:.1}", x(*at), y(*value)))
                .collect();
            let _ = writeln!(
                svg,
                "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"1.5\" points=\"{}\"/>",
                line.colour,
                points.join(" ")
            );
        }
    }
    svg.push_str("</svg>\n");
    svg
}
