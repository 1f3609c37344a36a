//! Hostile clients against the real binary (docs/SECURITY.md, B1): raw HTTP/2 connections
//! from the h2 crate do what a gRPC library never would, while a well-behaved client keeps
//! calling. Each test asserts that the process survives, that its resident memory (read from
//! /proc) stays under the Deployment's budget, and that the bystander is always answered.
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use invitations::auth::{Authenticator, ENTERPRISE_ADMIN};
use invitations::domain::{EnterpriseId, UserRef};
use invitations::proto::invitations::v1::ListInvitationsRequest;
use invitations::proto::invitations::v1::invitation_service_client::InvitationServiceClient;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use uuid::Uuid;

use crate::common::{
    AUDIENCE, Backend, Caller, Fixture, ISSUER, JWT_SECRET, Row, SQLITE_WRITE_LOCK, TestApp,
    assert_row, authorized, cancel_stuck_in_the_only_slot, create_request,
};
use crate::operability::READINESS;
use crate::process::Served;

/// How long the binary may take to turn ready.
const START: Duration = Duration::from_secs(10);

/// The Deployment's memory limit is 128 MiB; the service must stay well inside it.
const RSS_BUDGET_BYTES: u64 = 96 * 1024 * 1024;

fn token(capabilities: &[String], enterprise: Option<EnterpriseId>) -> String {
    Authenticator::hs256(JWT_SECRET.as_bytes(), ISSUER, AUDIENCE).mint(
        UserRef::from_uuid(Uuid::new_v4()),
        enterprise,
        capabilities,
        Duration::from_secs(600),
    )
}

fn admin_token() -> String {
    token(
        &[ENTERPRISE_ADMIN.to_owned()],
        Some(EnterpriseId::from_uuid(Uuid::new_v4())),
    )
}

/// The resident set of a process, from /proc.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kib * 1024
}

/// Samples a process's RSS until stopped; returns the highest seen.
struct RssWatch {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl RssWatch {
    fn start(pid: u32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn({
            let (stop, peak) = (stop.clone(), peak.clone());
            async move {
                while !stop.load(Ordering::Relaxed) {
                    peak.fetch_max(rss_bytes(pid), Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        });
        Self { stop, peak, task }
    }

    async fn peak(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("rss sampler");
        self.peak.load(Ordering::Relaxed)
    }
}

fn assert_rss_within_budget(peak: u64, attack: &str) {
    let mib = peak as f64 / (1024.0 * 1024.0);
    // Printed for the record: CI's log shows the figure, not only the verdict.
    eprintln!("peak RSS under {attack}: {mib:.1} MiB (budget 96 MiB)");
    assert!(
        peak < RSS_BUDGET_BYTES,
        "peak RSS {mib:.1} MiB under {attack}"
    );
}

/// A well-behaved client listing in a loop on its own connection; every answer it gets must
/// be OK.
struct Bystander {
    stop: Arc<AtomicBool>,
    task: JoinHandle<(u64, Vec<tonic::Status>)>,
}

impl Bystander {
    async fn start(addr: SocketAddr, token: String) -> Self {
        let mut client = InvitationServiceClient::connect(format!("http://{addr}"))
            .await
            .expect("bystander connects");
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn({
            let stop = stop.clone();
            async move {
                let (mut served, mut failures) = (0, Vec::new());
                while !stop.load(Ordering::Relaxed) {
                    let call = client.list_invitations(authorized(
                        &token,
                        ListInvitationsRequest {
                            page_size: 10,
                            ..Default::default()
                        },
                    ));
                    match tokio::time::timeout(Duration::from_secs(5), call).await {
                        Ok(Ok(_)) => served += 1,
                        Ok(Err(status)) => failures.push(status),
                        Err(_) => failures.push(tonic::Status::deadline_exceeded("5 s")),
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                (served, failures)
            }
        });
        Self { stop, task }
    }

    /// Stops it, and asserts it was answered, every time.
    async fn assert_always_served(self) {
        self.stop.store(true, Ordering::Relaxed);
        let (served, failures) = self.task.await.expect("bystander");
        assert!(
            failures.is_empty(),
            "the bystander was refused {} times, first: {:?}",
            failures.len(),
            failures.first()
        );
        assert!(served > 0, "the bystander was never served");
    }
}

/// A raw HTTP/2 connection: the attacker's tool.
async fn raw_connection(
    addr: SocketAddr,
    configure: impl FnOnce(&mut h2::client::Builder),
) -> Result<
    (
        h2::client::SendRequest<Bytes>,
        JoinHandle<Result<(), h2::Error>>,
    ),
    h2::Error,
> {
    let tcp = TcpStream::connect(addr).await.expect("tcp connect");
    let mut builder = h2::client::Builder::new();
    configure(&mut builder);
    let (send, connection) = builder.handshake(tcp).await?;
    let driver = tokio::spawn(connection);
    let send = send.ready().await?;
    Ok((send, driver))
}

fn grpc_request(addr: SocketAddr, path: &str, token: Option<&str>) -> http::Request<()> {
    let mut request = http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    request.body(()).expect("request")
}

/// A message in gRPC's length-prefixed framing.
fn grpc_frame(message: &impl prost::Message) -> Bytes {
    let mut frame = BytesMut::new();
    frame.put_u8(0);
    frame.put_u32(message.encoded_len() as u32);
    message.encode(&mut frame).expect("encode");
    frame.freeze()
}

/// The status of a trailers-only answer (every refusal), if this is one.
fn refusal(response: &http::Response<h2::RecvStream>) -> Option<tonic::Status> {
    tonic::Status::from_header_map(response.headers())
}

/// One health check on a raw connection: the answer's headers and its body.
async fn health_check(
    send: &mut h2::client::SendRequest<Bytes>,
    addr: SocketAddr,
) -> Result<(http::Response<()>, h2::RecvStream), h2::Error> {
    let ready = send.clone().ready().await?;
    *send = ready;
    let (response, mut body) = send.send_request(
        grpc_request(addr, "/grpc.health.v1.Health/Check", None),
        false,
    )?;
    body.send_data(grpc_frame(&HealthCheckRequest::default()), true)?;
    let (parts, body) = response.await?.into_parts();
    Ok((http::Response::from_parts(parts, ()), body))
}

const WATCH: &str = "/grpc.health.v1.Health/Watch";
const LIST: &str = "/invitations.v1.InvitationService/ListInvitations";

type HeldStreams = (
    Vec<http::Response<h2::RecvStream>>,
    JoinHandle<Result<(), h2::Error>>,
);

/// `connections` raw connections at once, each opening `streams` health watches without a
/// token: the watches left open per connection, and the scope of every refusal.
async fn watch_flood(
    addr: SocketAddr,
    connections: usize,
    streams: usize,
) -> (Vec<HeldStreams>, Vec<String>) {
    let mut attackers = tokio::task::JoinSet::new();
    for _ in 0..connections {
        attackers.spawn(async move {
            let (mut send, driver) = raw_connection(addr, |_| {}).await.expect("handshake");
            let (answer, _) = health_check(&mut send, addr).await.expect("health answers");
            assert_eq!(answer.status(), http::StatusCode::OK);
            assert_eq!(
                send.current_max_send_streams(),
                100,
                "SETTINGS_MAX_CONCURRENT_STREAMS is advertised"
            );
            let (mut held, mut scopes) = (Vec::new(), Vec::new());
            for _ in 0..streams {
                send = send.ready().await.expect("stream capacity");
                let (response, mut body) = send
                    .send_request(grpc_request(addr, WATCH, None), false)
                    .expect("send");
                // A refusal may close the stream before the message is sent: that is fine.
                let _ = body.send_data(grpc_frame(&HealthCheckRequest::default()), true);
                let response = response.await.expect("answer");
                match refusal(&response) {
                    Some(status) => {
                        let metadata = assert_row(&status, Row::StreamLimitReached);
                        scopes.push(metadata["scope"].clone());
                    }
                    None => held.push(response),
                }
            }
            assert!(held.len() <= 16, "{} watches on one connection", held.len());
            ((held, driver), scopes)
        });
    }
    let (mut held, mut scopes) = (Vec::new(), Vec::new());
    while let Some(attacker) = attackers.join_next().await {
        let (streams, refused) = attacker.expect("attacker");
        held.push(streams);
        scopes.extend(refused);
    }
    (held, scopes)
}

/// Item 1: thousands of health `Watch` streams, which need no token, cannot take the process
/// down: each connection advertises a stream limit, open watches are capped per connection
/// and per process, and the rest are refused with STREAM_LIMIT_REACHED.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flood_of_watch_streams_without_a_token_is_capped() {
    const STREAMS_PER_CONNECTION: usize = 100;
    let env = [
        ("INVITATIONS_RATE_LIMIT_PER_SECOND", "0"),
        ("INVITATIONS_MAX_WATCH_STREAMS", "500"),
    ];
    let served = Served::start_ready(&env, START).await;
    let rss = RssWatch::start(served.pid());
    let bystander = Bystander::start(served.addr, admin_token()).await;

    // Thirty connections at once, each opening watches: each gets its 16 (480 in all).
    let (mut held, first) = watch_flood(served.addr, 30, STREAMS_PER_CONNECTION).await;
    assert!(first.iter().all(|scope| scope == "connection"), "{first:?}");
    // Ten more: the process's 500 fill up, and the rest are refused for the server.
    let (more, second) = watch_flood(served.addr, 10, STREAMS_PER_CONNECTION).await;
    assert!(second.iter().any(|scope| scope == "server"), "{second:?}");
    held.extend(more);
    let open: usize = held.iter().map(|(streams, _)| streams.len()).sum();
    let refused = first.len() + second.len();
    assert_eq!(open, 500, "watches open on the process");
    assert_eq!(open + refused, 40 * STREAMS_PER_CONNECTION);

    // Health checks still answer, on a fresh connection, while every watch slot is taken.
    assert_eq!(
        crate::operability::check(served.addr, READINESS)
            .await
            .expect("health check"),
        ServingStatus::Serving as i32
    );
    bystander.assert_always_served().await;
    assert_rss_within_budget(rss.peak().await, "a watch flood");
    drop(held);
}

/// Item 1: connections over `INVITATIONS_MAX_CONNECTIONS` are closed at once, and the
/// connections already held (the bystander's) keep working.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connections_over_the_limit_are_closed_at_once() {
    let env = [
        ("INVITATIONS_RATE_LIMIT_PER_SECOND", "0"),
        ("INVITATIONS_MAX_CONNECTIONS", "20"),
    ];
    let served = Served::start_ready(&env, START).await;
    let bystander = Bystander::start(served.addr, admin_token()).await;
    let mut held = Vec::new();
    let mut closed = 0;
    for _ in 0..60 {
        let attempt = async {
            let (mut send, driver) = raw_connection(served.addr, |_| {}).await?;
            let _answer = health_check(&mut send, served.addr).await?;
            Ok::<_, h2::Error>((send, driver))
        };
        match tokio::time::timeout(Duration::from_secs(5), attempt)
            .await
            .expect("an answer at once, never a hang")
        {
            Ok(connection) => held.push(connection),
            Err(_) => closed += 1,
        }
    }
    // The bystander's connection and the health checks' came first: at most 19 more fit.
    assert!(held.len() < 20, "{} connections held", held.len());
    assert_eq!(held.len() + closed, 60);
    bystander.assert_always_served().await;
    assert!(
        served
            .logs()
            .iter()
            .any(|line| line.contains("connection refused: INVITATIONS_MAX_CONNECTIONS reached")),
        "the refusal is logged"
    );
}

/// Item 2: a caller with a valid token (an invitee's, with no capability) that sends the
/// headers of ListInvitations and never the message holds no call slot: every such stream
/// ends after the read timeout with REQUEST_READ_TIMEOUT, and the bystander is never shed,
/// even with far more of them than the replica's call limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn headers_without_a_message_hold_no_call_slot() {
    const STREAMS: usize = 300;
    let env = [
        ("INVITATIONS_RATE_LIMIT_PER_SECOND", "0"),
        ("INVITATIONS_MAX_CONCURRENT_REQUESTS", "32"),
        ("INVITATIONS_REQUEST_READ_TIMEOUT_MS", "1500"),
    ];
    let served = Served::start_ready(&env, START).await;
    let rss = RssWatch::start(served.pid());
    let bystander = Bystander::start(served.addr, admin_token()).await;
    let invitee = token(&[], None);

    let started = Instant::now();
    let mut answers = Vec::new();
    let mut drivers = Vec::new();
    for _ in 0..STREAMS / 75 {
        let (mut send, driver) = raw_connection(served.addr, |_| {})
            .await
            .expect("handshake");
        drivers.push(driver);
        for _ in 0..75 {
            send = send.ready().await.expect("stream capacity");
            let (response, body) = send
                .send_request(grpc_request(served.addr, LIST, Some(&invitee)), false)
                .expect("send");
            // The message never comes; the stream stays open.
            answers.push(tokio::spawn(async move {
                let response = response.await;
                drop(body);
                (response, Instant::now())
            }));
        }
    }
    for answer in answers {
        let (response, at) = answer.await.expect("task");
        let response = response.expect("an answer for every stream");
        let status = refusal(&response).expect("a trailers-only refusal");
        let metadata = assert_row(&status, Row::RequestReadTimeout);
        assert_eq!(metadata["readTimeoutMs"], "1500");
        let waited = at.duration_since(started);
        assert!(
            waited >= Duration::from_millis(1400) && waited < Duration::from_secs(6),
            "answered after {waited:?}"
        );
    }
    bystander.assert_always_served().await;
    assert_rss_within_budget(rss.peak().await, "headers without a message");
}

/// Item 3: a client that grants no HTTP/2 window and keeps asking for the largest page gets
/// a few answers that can never be sent, then RESPONSES_UNREAD, and its connection is closed
/// when the first unread answer passes the request timeout. Memory stays bounded and the
/// bystander is served throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_that_never_reads_cannot_make_the_server_hoard_answers() {
    const INVITATIONS: usize = 1000;
    const ATTACKERS: usize = 3;
    let env = [
        ("INVITATIONS_RATE_LIMIT_PER_SECOND", "0"),
        ("INVITATIONS_REQUEST_TIMEOUT_MS", "3000"),
    ];
    let served = Served::start_ready(&env, START).await;
    // A thousand invitations, so a page of 1000 is about 440 KB.
    let admin = admin_token();
    let client = InvitationServiceClient::connect(format!("http://{}", served.addr))
        .await
        .expect("connect");
    let reader = Caller::new(client, admin.clone());
    let mut creating = tokio::task::JoinSet::new();
    for worker in 0..8 {
        let creator = reader.clone();
        creating.spawn(async move {
            for i in (worker..INVITATIONS).step_by(8) {
                let request = create_request(format!("invitee-{i:04}@acme.example"));
                let created = creator.create(request).await;
                created.map_err(|status| format!("create {i}: {status:?}"))?;
            }
            Ok::<_, String>(())
        });
    }
    while let Some(created) = creating.join_next().await {
        created.expect("task").expect("created");
    }
    let page = ListInvitationsRequest {
        page_size: 1000,
        ..Default::default()
    };
    // The size of the page the attackers ask for, as the server counts it.
    let page_bytes = reader
        .list(page.clone())
        .await
        .expect("a reader gets its page");
    assert_eq!(page_bytes.items.len(), INVITATIONS);
    let page_bytes = prost::Message::encoded_len(&page_bytes);
    // Each attacker waits for an answer's headers before its next call, and a call is
    // refused once its connection holds 4 MiB unread: exactly this many stall.
    let stall_limit = (4 * 1024 * 1024usize).div_ceil(page_bytes);

    let rss = RssWatch::start(served.pid());
    let bystander = Bystander::start(served.addr, admin.clone()).await;
    let mut attackers = Vec::new();
    for _ in 0..ATTACKERS {
        let (mut send, driver) = raw_connection(served.addr, |builder| {
            builder.initial_window_size(0);
        })
        .await
        .expect("handshake");
        let (admin, page) = (admin.clone(), page.clone());
        let addr = served.addr;
        attackers.push(tokio::spawn(async move {
            let started = Instant::now();
            let (mut stalled, mut unread_refusals) = (Vec::new(), 0);
            // 45 calls a second, as in the report, until the server gives up on us.
            while started.elapsed() < Duration::from_secs(8) {
                send = match send.ready().await {
                    Ok(send) => send,
                    Err(_) => break,
                };
                let Ok((response, mut body)) =
                    send.send_request(grpc_request(addr, LIST, Some(&admin)), false)
                else {
                    break;
                };
                if body.send_data(grpc_frame(&page), true).is_err() {
                    break;
                }
                match response.await {
                    Ok(response) => match refusal(&response) {
                        Some(status) => {
                            assert_row(&status, Row::ResponsesUnread);
                            unread_refusals += 1;
                        }
                        None => stalled.push(response),
                    },
                    Err(_) => break,
                }
                tokio::time::sleep(Duration::from_millis(22)).await;
            }
            let lasted = started.elapsed();
            let closed = tokio::time::timeout(Duration::from_secs(5), driver).await;
            (stalled.len(), unread_refusals, lasted, closed.is_ok())
        }));
    }
    for attacker in attackers {
        let (stalled, unread_refusals, lasted, closed) = attacker.await.expect("attacker");
        assert_eq!(stalled, stall_limit, "answers stalled on one connection");
        assert!(
            unread_refusals > 0,
            "RESPONSES_UNREAD once the budget is held"
        );
        assert!(
            lasted < Duration::from_secs(6),
            "the server closed the connection after the request timeout, not {lasted:?}"
        );
        assert!(closed, "the connection ended");
    }
    bystander.assert_always_served().await;
    // A client that reads still gets the big page.
    let page = reader.list(page).await.expect("a reader gets its page");
    assert_eq!(page.items.len(), INVITATIONS);
    assert_rss_within_budget(rss.peak().await, "clients that never read");
    assert!(
        served
            .logs()
            .iter()
            .any(|line| line.contains("a response was not read before its deadline")),
        "the closed connection is logged"
    );
}

/// Item 2: one caller cannot take the replica's call slots. With a limit of one call per
/// caller, a cancel stuck behind a held SQLite write lock holds its caller's only slot: that
/// caller's next call is refused at once with CALLER_CONCURRENCY_LIMIT, another caller is
/// served meanwhile, and the stuck cancel completes once the lock is released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_caller_cannot_take_the_replicas_call_slots() {
    let app = TestApp::spawn_configured(Backend::Sqlite, |config| {
        config.max_concurrent_requests_per_caller = 1;
        config.sqlite_busy_timeout_ms = 10_000;
        config.rate_limit_per_second = 0;
    })
    .await;
    let invitation = app.insert(Fixture::pending("slow@acme.example")).await;
    let lock = app.hold_lock(SQLITE_WRITE_LOCK).await;
    // The cancel holds the caller's one slot once a list of the same caller is refused.
    let (stuck, refused) = cancel_stuck_in_the_only_slot(&app, &invitation).await;
    let metadata = assert_row(&refused, Row::CallerConcurrencyLimit);
    assert_eq!(metadata["maxConcurrentRequestsPerCaller"], "1");
    // Another caller (the same enterprise's other admin) is served meanwhile.
    let colleague = app.caller(&app.colleague());
    colleague
        .list(Default::default())
        .await
        .expect("another caller is served");
    stuck.completes_once(lock).await;
    app.list(Default::default())
        .await
        .expect("the slot is given back");
    app.finish().await;
}

/// Issue 28, item 5: watchers that stop reading while thousands of changes are made. Each
/// watch holds at most `INVITATIONS_WATCH_BUFFER` events and its connection's flow-control
/// window, so the resident memory stays flat however many changes follow; every stalled
/// stream, read at last, ends WATCH_TOO_SLOW with the cursor to resume from. (Until it is
/// read or its connection closes, a stalled watch keeps its place among
/// `INVITATIONS_MAX_WATCH_STREAMS`: the end is the stream's next message.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stalled_watchers_keep_memory_flat_and_each_ends_with_a_cursor() {
    const STALLED: usize = 20;
    const CHANGES: usize = 4_000;
    const WRITERS: usize = 8;
    const WARM_UP: usize = 20;
    let env = [
        ("INVITATIONS_RATE_LIMIT_PER_SECOND", "0"),
        ("INVITATIONS_WATCH_BUFFER", "64"),
        ("INVITATIONS_SQLITE_SYNCHRONOUS", "normal"),
    ];
    let served = Served::start_ready(&env, START).await;
    let token = admin_token();
    let writer = InvitationServiceClient::connect(format!("http://{}", served.addr))
        .await
        .expect("connect");
    let create = {
        let token = token.clone();
        move |n: usize| {
            let mut writer = writer.clone();
            let token = token.clone();
            async move {
                writer
                    .create_invitation(authorized(
                        &token,
                        create_request(format!("stalled-{n}@acme.example")),
                    ))
                    .await
                    .expect("created");
            }
        }
    };
    // Each watcher on its own connection with a small window, and never read.
    let mut stalled = Vec::new();
    for _ in 0..STALLED {
        let mut client = crate::watch::small_window_client(served.addr).await;
        stalled.push(
            crate::watch::open_with(&mut client, &token, Default::default())
                .await
                .expect("the watch opens"),
        );
    }
    // A few changes to warm the write path, well inside every watch's buffer; then the
    // baseline, before any watch falls behind.
    for n in 0..WARM_UP {
        create(n).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let baseline = rss_bytes(served.pid());
    let rss = RssWatch::start(served.pid());
    let mut writers = tokio::task::JoinSet::new();
    for lane in 0..WRITERS {
        let create = create.clone();
        writers.spawn(async move {
            for n in (WARM_UP + lane..WARM_UP + CHANGES).step_by(WRITERS) {
                create(n).await;
            }
        });
    }
    while let Some(done) = writers.join_next().await {
        done.expect("a writer");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let peak = rss.peak().await;
    let grown = peak.saturating_sub(baseline) as f64 / (1024.0 * 1024.0);
    eprintln!(
        "{STALLED} stalled watchers, {CHANGES} changes: RSS {:.1} MiB at the baseline, \
         peak {:.1} MiB (+{grown:.1})",
        baseline as f64 / (1024.0 * 1024.0),
        peak as f64 / (1024.0 * 1024.0)
    );
    // The watchers share each event, so even holding them all would cost only a few MiB
    // here: the bound shows in the ends below, which only a full buffer brings (with
    // `INVITATIONS_WATCH_BUFFER` above the change count, the reads below fail).
    assert!(
        grown < 16.0,
        "RSS grew {grown:.1} MiB with stalled watchers"
    );
    assert_rss_within_budget(peak, "stalled watchers");

    for mut stream in stalled {
        let ended = loop {
            match tokio::time::timeout(Duration::from_secs(15), stream.message())
                .await
                .expect("the stalled stream answers once read")
            {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("a stalled watch ended without WATCH_TOO_SLOW"),
                Err(status) => break status,
            }
        };
        let metadata = assert_row(&ended, Row::WatchTooSlow);
        assert!(
            metadata.get("resumeCursor").is_some_and(|c| !c.is_empty()),
            "{metadata:?}"
        );
    }
}
