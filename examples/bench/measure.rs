//! One measurement of one dataset: an op, a variant (service, transport or database limit)
//! and a concurrency, recorded.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use invitations::domain::Timestamp;
use tonic::metadata::{Ascii, MetadataValue};

use crate::closed_loop::{Sample, Span};
use crate::db::{Db, sqlite_pool};
use crate::grpc_load::{
    ListLoad, cancel_targets, connect_channels, connect_clients, grpc_cancel, grpc_list,
};
use crate::pgbench::{PgBench, PgSpan, pg_cancel_script, pg_list_script};
use crate::plan::{FLAT_PAIR, Layout, PAGE_SIZE, Plan, StoreKind};
use crate::results::{DatasetInfo, Record};
use crate::seed::{ID_PREFIX, POOL_PREFIX, mk_uuid};
use crate::sqlite_direct::{sqlite_cancel, sqlite_list};

/// How many ids the cancel race (many cancels of one invitation) uses, and cancels per id.
pub(crate) const RACE_IDS: usize = 40;
const RACE_PER_ID: usize = 16;

pub(crate) struct Ctx<'a> {
    pub(crate) plan: &'a Plan,
    pub(crate) store: StoreKind,
    pub(crate) layout: Layout,
    pub(crate) size: u64,
    pub(crate) db: &'a Db,
    pub(crate) pgbench: Option<PgBench>,
    pub(crate) service: SocketAddr,
    /// The no-op server, for the transport limit; none where that limit is not measured.
    pub(crate) noop: Option<SocketAddr>,
    pub(crate) tokens: Arc<Vec<MetadataValue<Ascii>>>,
    pub(crate) records: Vec<Record>,
    pub(crate) info: DatasetInfo,
    /// The op first pages are recorded under: `list`, or `flat` in a size pair.
    pub(crate) list_op: &'static str,
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

    pub(crate) fn items_per_page(&self) -> usize {
        (self.size / self.layout.enterprises()).min(PAGE_SIZE) as usize
    }

    fn timed(&self) -> Span {
        Span::Timed {
            warmup: self.plan.warmup,
            measure: Duration::from_secs(self.plan.secs),
        }
    }

    pub(crate) async fn measure_list(
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

    pub(crate) async fn measure_cancel(
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
    pub(crate) async fn cancel_race(&mut self, next_pool: &mut u64) {
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
