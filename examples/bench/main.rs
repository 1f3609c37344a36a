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

mod chart;
mod closed_loop;
mod dataset;
mod db;
mod explain;
mod grpc_load;
mod measure;
mod noop;
mod pgbench;
mod plan;
mod report;
mod results;
mod seed;
mod servers;
mod service;
mod sql;
mod sqlite_direct;

use std::io::Write as _;
use std::sync::{Arc, Mutex};

use clap::Parser;

use crate::chart::chart;
use crate::dataset::{run_dataset, run_flat_pair};
use crate::explain::explain;
use crate::noop::serve_noop;
use crate::plan::{FLAT_PAIR, Opts, Plan, plan_from};
use crate::report::report;
use crate::results::{DatasetInfo, Record, Results, load_results, machine_info, merge_into_file};
use crate::servers::{pin_self_to_core_1, stop_servers_on_signal};

/// Merges `fresh` into the results file (a dataset measured now replaces its old figures)
/// and redraws the chart; called after every dataset, so a long run keeps what it measured.
fn save(plan: &Plan, fresh: &Results) {
    if let Some(path) = &plan.out {
        let all = merge_into_file(path, fresh);
        if let Some(chart_path) = &plan.chart {
            std::fs::write(chart_path, chart(&all)).expect("write the chart");
            println!("chart: {}", chart_path.display());
        }
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
