//! One dataset: seed, start both servers, alternate the three variants, record.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use invitations::proto::invitations::v1 as pb;
use prost::Message as _;
use tonic::metadata::{Ascii, MetadataValue};

use crate::db::Db;
use crate::grpc_load::{cancel_targets, connect_clients, tokens_for};
use crate::measure::{Ctx, RACE_IDS};
use crate::noop::start_noop;
use crate::pgbench::PgBench;
use crate::plan::{DEEP_PAGES, FLAT_PAIR, Layout, PAGE_SIZE, Plan, StoreKind};
use crate::results::{DatasetInfo, Record};
use crate::seed::Clock;
use crate::service::{AbortOnDrop, DatabaseWork, keep_database_work_on_core_1, start_service};

const PG_BENCH_DB: &str = "invitations_bench";

/// The page token of the page after `DEEP_PAGES` pages of 50, by walking with pages of 1000
/// (a token is not bound to the page size), and the cursor it stands for.
async fn deep_token(
    addr: SocketAddr,
    token: &MetadataValue<Ascii>,
    clock: Clock,
) -> (String, i64, u64) {
    let mut client = connect_clients(addr, 1).await.remove(0);
    let mut page_token = String::new();
    let rows = DEEP_PAGES * PAGE_SIZE;
    for _ in 0..rows / 1000 {
        let mut request = tonic::Request::new(pb::ListInvitationsRequest {
            page_size: 1000,
            page_token: page_token.clone(),
            ..Default::default()
        });
        request
            .metadata_mut()
            .insert("authorization", token.clone());
        let page = client
            .list_invitations(request)
            .await
            .expect("walk to the deep page")
            .into_inner();
        page_token = page.next_page_token;
    }
    let last = rows - 1;
    (page_token, clock.created_at(last), last)
}

pub(crate) async fn run_dataset(
    plan: &Plan,
    store: StoreKind,
    layout: Layout,
    size: u64,
) -> (Vec<Record>, DatasetInfo) {
    println!(
        "\n== {} / {} / {} rows ==",
        store.name(),
        layout.name(),
        size
    );
    let db = Db::create(store, plan.pg_url.as_deref(), PG_BENCH_DB).await;
    db.migrate().await;
    let clock = Clock::now();
    let seeding = Instant::now();
    db.seed(layout, 0, size, clock, false).await;
    let seed_secs = seeding.elapsed().as_secs_f64();
    println!("  seeded {size} rows in {seed_secs:.1} s");

    let service = start_service(plan, &db.url).await;
    let database_work_moved = Arc::new(AtomicU64::new(0));
    let database_work = match (plan.pin_db, store, service.pid()) {
        (false, _, _) | (_, _, None) => None,
        (true, StoreKind::Postgres, Some(_)) => Some(DatabaseWork::PostgresBackends {
            database_url: db.url.clone(),
        }),
        (true, StoreKind::Sqlite, Some(service_pid)) => {
            Some(DatabaseWork::SqliteThreads { service_pid })
        }
    };
    let database_work_pinner = database_work.map(|work| {
        AbortOnDrop(tokio::spawn(keep_database_work_on_core_1(
            work,
            database_work_moved.clone(),
        )))
    });
    let noop = start_noop(plan).await;
    let tokens = tokens_for(layout);
    let pgbench = PgBench::for_database(plan, store, &db.url);
    let mut ctx = Ctx {
        plan,
        store,
        layout,
        size,
        db: &db,
        pgbench,
        service: service.addr,
        noop: Some(noop.addr),
        tokens: tokens.clone(),
        records: vec![],
        info: DatasetInfo {
            store: store.name().into(),
            layout: layout.name().into(),
            size,
            label: plan.label.clone(),
            seed_secs,
            ..Default::default()
        },
        list_op: "list",
    };

    // What one answer weighs, real and no-op (they should match).
    {
        let mut real = connect_clients(service.addr, 1).await.remove(0);
        let mut noop_client = connect_clients(noop.addr, 1).await.remove(0);
        let mut request = tonic::Request::new(pb::ListInvitationsRequest::default());
        request
            .metadata_mut()
            .insert("authorization", tokens[0].clone());
        let page = real
            .list_invitations(request)
            .await
            .expect("a first page")
            .into_inner();
        assert_eq!(
            page.items.len(),
            ctx.items_per_page(),
            "the seeded rows are listed"
        );
        ctx.info.list_bytes_service = page.encoded_len();
        let mut request = tonic::Request::new(pb::ListInvitationsRequest {
            page_size: ctx.items_per_page() as i32,
            ..Default::default()
        });
        request
            .metadata_mut()
            .insert("authorization", tokens[0].clone());
        ctx.info.list_bytes_noop = noop_client
            .list_invitations(request)
            .await
            .expect("no-op")
            .into_inner()
            .encoded_len();
        let request = tonic::Request::new(pb::CancelInvitationRequest::default());
        ctx.info.cancel_bytes_noop = noop_client
            .cancel_invitation(request)
            .await
            .expect("no-op")
            .into_inner()
            .encoded_len();
    }

    let variants = ["service", "transport", "database"];
    let has = |op: &str| plan.ops.iter().any(|o| o == op);
    let deep =
        if has("deep") && layout == Layout::Single && size >= DEEP_PAGES * PAGE_SIZE + PAGE_SIZE {
            Some(deep_token(service.addr, &tokens[0], clock).await)
        } else {
            None
        };
    if has("list") || deep.is_some() {
        for run in 0..plan.runs {
            if has("list") {
                for &conc in &plan.conc {
                    for k in 0..3 {
                        ctx.measure_list(variants[(k + run) % 3], conc, run, None)
                            .await;
                    }
                }
            }
            if let Some(deep) = &deep {
                for &conc in &plan.deep_conc {
                    for k in 0..2 {
                        let v = ["service", "database"][(k + run) % 2];
                        ctx.measure_list(v, conc, run, Some(deep)).await;
                    }
                }
            }
        }
    }
    if has("cancel") {
        // Fresh pending invitations: enough for every measurement, then the race.
        let per_round: usize = plan.conc.iter().map(|&c| 2 * (plan.cancels + c)).sum();
        let needed = (plan.runs * per_round + RACE_IDS + 1) as u64;
        let t = Instant::now();
        db.seed(layout, 0, needed, clock, true).await;
        println!(
            "  added {needed} pending invitations to cancel in {:.1} s",
            t.elapsed().as_secs_f64()
        );
        let mut next_pool = 0u64;
        // The size of a real cancel answer.
        {
            let targets = cancel_targets(layout, &tokens, next_pool, 1);
            next_pool += 1;
            let mut real = connect_clients(service.addr, 1).await.remove(0);
            let mut request = tonic::Request::new(pb::CancelInvitationRequest {
                invitation_id: targets[0].id.clone(),
                etag: targets[0].etag.clone(),
                ..Default::default()
            });
            request
                .metadata_mut()
                .insert("authorization", targets[0].token.clone());
            ctx.info.cancel_bytes_service = real
                .cancel_invitation(request)
                .await
                .expect("a cancel")
                .into_inner()
                .encoded_len();
        }
        for run in 0..plan.runs {
            for &conc in &plan.conc {
                for k in 0..3 {
                    ctx.measure_cancel(variants[(k + run) % 3], conc, run, &mut next_pool)
                        .await;
                }
            }
        }
        ctx.cancel_race(&mut next_pool).await;
    }
    ctx.info.server_peak_rss_kib = service.peak_rss_kib();
    ctx.info.noop_peak_rss_kib = noop.peak_rss_kib();
    if let Some(kib) = ctx.info.server_peak_rss_kib {
        println!("  service peak RSS {:.1} MiB", kib as f64 / 1024.0);
    }
    if database_work_pinner.is_some() {
        let moved = database_work_moved.load(Ordering::Relaxed);
        ctx.info.database_work_on_core_1 = Some(moved);
        println!("  moved to core 1, the service's database work: {moved} backends or threads");
    }
    let (records, info) = (ctx.records, ctx.info);
    drop(database_work_pinner);
    service.stop().await;
    noop.stop().await;
    db.drop_db().await;
    (records, info)
}

/// List on a small and a large table at once: both seeded, a service on each, and in every
/// round the sizes alternate as the variants do. Measured as two datasets one after the
/// other, the two sizes are minutes apart, and the machine's drift over those minutes shows
/// up as a size effect (the bare SQL was measured 13 to 16 % faster on 1M rows than on 1k at
/// c >= 8 in two runs, and flat when alternated).
pub(crate) async fn run_flat_pair(
    plan: &Plan,
    store: StoreKind,
    layout: Layout,
    (small, large): (u64, u64),
) -> (Vec<Record>, Vec<DatasetInfo>) {
    println!(
        "\n== {} / {} / {small} and {large} rows, alternated (flat in size) ==",
        store.name(),
        layout.name(),
    );
    let clock = Clock::now();
    let mut sides = vec![];
    for (size, name) in [
        (small, "invitations_bench_small"),
        (large, "invitations_bench_large"),
    ] {
        let db = Db::create(store, plan.pg_url.as_deref(), name).await;
        db.migrate().await;
        let seeding = Instant::now();
        db.seed(layout, 0, size, clock, false).await;
        let seed_secs = seeding.elapsed().as_secs_f64();
        println!("  seeded {size} rows in {seed_secs:.1} s");
        sides.push((size, db, seed_secs));
    }
    let mut services = vec![];
    for (_, db, _) in &sides {
        services.push(start_service(plan, &db.url).await);
    }
    let tokens = tokens_for(layout);
    let mut ctxs: Vec<Ctx> = sides
        .iter()
        .zip(&services)
        .map(|((size, db, seed_secs), service)| Ctx {
            plan,
            store,
            layout,
            size: *size,
            db,
            pgbench: PgBench::for_database(plan, store, &db.url),
            service: service.addr,
            noop: None,
            tokens: tokens.clone(),
            records: vec![],
            info: DatasetInfo {
                store: store.name().into(),
                layout: layout.name().into(),
                size: *size,
                kind: FLAT_PAIR.into(),
                label: plan.label.clone(),
                seed_secs: *seed_secs,
                ..Default::default()
            },
            list_op: FLAT_PAIR,
        })
        .collect();
    // Order in a round, rotated by one each round: small service, large service, small
    // database, large database.
    for run in 0..plan.runs {
        for &conc in &plan.conc {
            for k in 0..4 {
                let j = (k + run) % 4;
                let variant = ["service", "database"][j / 2];
                ctxs[j % 2].measure_list(variant, conc, run, None).await;
            }
        }
    }
    let mut records = vec![];
    let mut infos = vec![];
    for (ctx, service) in ctxs.into_iter().zip(services) {
        let mut info = ctx.info;
        info.server_peak_rss_kib = service.peak_rss_kib();
        records.extend(ctx.records);
        infos.push(info);
        service.stop().await;
    }
    for (_, db, _) in sides {
        db.drop_db().await;
    }
    (records, infos)
}
