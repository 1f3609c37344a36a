//! Measurements: the closed loop every variant is driven by, and the sample it yields.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Sample {
    pub(crate) rps: f64,
    pub(crate) p50_us: f64,
    pub(crate) p99_us: f64,
    n: u64,
    pub(crate) codes: BTreeMap<String, u64>,
}

fn percentile(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1] as f64
}

pub(crate) fn sample_from(
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
pub(crate) enum Span {
    /// Warm up, then count what completes within `measure`.
    Timed { warmup: Duration, measure: Duration },
    /// Exactly `total` calls (call `i` gets index `i`); the first `warm` are not counted.
    Count { total: usize, warm: usize },
}

/// `conc` tasks, each calling `call(task, index)` back to back.
pub(crate) async fn closed_loop<F, Fut>(conc: usize, span: Span, call: F) -> Sample
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

pub(crate) fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}
