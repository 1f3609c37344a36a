//! Chaos: eight writers make 10 000 changes over two replicas (the real binary, PostgreSQL,
//! NATS) while three watchers stream; the replica that relays is killed (SIGKILL) midway
//! and restarted. Afterwards every watcher, resuming from its last cursor each time its
//! stream broke, has seen every event of the outbox exactly once and in the outbox's order,
//! JetStream holds each exactly once, and every invitation that lapsed during the run has
//! exactly one `expired` event.
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use invitations::auth::{Authenticator, ENTERPRISE_ADMIN};
use invitations::domain::{EnterpriseId, EventType, InvitationRepository as _, UserRef};
use invitations::proto::invitations::v1 as wire;
use invitations::proto::invitations::v1::invitation_service_client::InvitationServiceClient;
use invitations::store::Store;
use tonic_health::pb::health_check_response::ServingStatus;
use uuid::Uuid;

use crate::common::{
    AUDIENCE, Backend, ISSUER, JWT_SECRET, authorized, cancel_request, create_database,
    drop_database, issue_request,
};
use crate::operability::{READINESS, await_health};
use crate::process::Served;
use crate::relay::{nats_url, published};

const CHANGES: usize = 10_000;
const WRITERS: usize = 8;

/// Where the live replicas listen; writers and watchers pick from it.
type Replicas = Arc<Mutex<Vec<SocketAddr>>>;

fn pick(replicas: &Replicas, n: usize) -> SocketAddr {
    let live = replicas.lock().expect("replicas");
    live[n % live.len()]
}

async fn client(addr: SocketAddr) -> Option<InvitationServiceClient<tonic::transport::Channel>> {
    InvitationServiceClient::connect(format!("http://{addr}"))
        .await
        .ok()
}

/// One writer: creates invitations and then issues and cancels their links, over whichever
/// replica it picks, until `made` changes have been asked for overall. Calls that fail
/// (the replica was killed) move on: what counts is what the outbox holds.
async fn write(
    replicas: Replicas,
    token: String,
    writer: usize,
    made: Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::atomic::Ordering;
    let mut n = 0usize;
    while made.load(Ordering::Relaxed) < CHANGES {
        n += 1;
        let Some(mut client) = client(pick(&replicas, writer + n)).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        // Every tenth invitation lapses during the run: the sweeper expires it.
        let lapses = n.is_multiple_of(10);
        let mut create = wire::CreateInvitationRequest {
            email_constraint: format!("chaos-{writer}-{n}@acme.example"),
            role: format!("roles/{}", Uuid::new_v4()),
            ..Default::default()
        };
        if lapses {
            let at = std::time::SystemTime::now() + Duration::from_secs(2);
            create.expires_at = Some(at.into());
        }
        made.fetch_add(1, Ordering::Relaxed);
        let Ok(created) = client.create_invitation(authorized(&token, create)).await else {
            continue;
        };
        if lapses {
            continue;
        }
        let created = created.into_inner();
        made.fetch_add(2, Ordering::Relaxed);
        let Ok(issued) = client
            .issue_invitation_token(authorized(&token, issue_request(&created.id)))
            .await
        else {
            continue;
        };
        let etag = issued
            .into_inner()
            .invitation
            .map(|i| i.etag)
            .unwrap_or_default();
        let _ = client
            .cancel_invitation(authorized(&token, cancel_request(&created.id, &etag)))
            .await;
    }
}

/// What one watcher saw: event ids in the order they came, and how often it resumed.
#[derive(Default)]
struct Seen {
    events: Vec<String>,
    resumed: usize,
}

/// One watcher: streams from replica `first`, and whenever its stream breaks or ends,
/// resumes from its last cursor on a live replica, until `stop`.
async fn watch(
    replicas: Replicas,
    token: String,
    first: usize,
    seen: Arc<Mutex<Seen>>,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut cursor = String::new();
    let mut attempt = first;
    loop {
        if stop.is_cancelled() {
            return;
        }
        let addr = pick(&replicas, attempt);
        attempt += 1;
        let Some(mut client) = client(addr).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let request = wire::WatchInvitationsRequest {
            start_cursor: cursor.clone(),
            ..Default::default()
        };
        let Ok(stream) = client.watch_invitations(authorized(&token, request)).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let mut stream = stream.into_inner();
        loop {
            let message = tokio::select! {
                () = stop.cancelled() => return,
                message = stream.message() => message,
            };
            let Ok(Some(message)) = message else { break };
            let mut seen = seen.lock().expect("seen");
            for event in message.events {
                seen.events.push(event.event_id);
                cursor = event.cursor;
            }
            if !message.cursor.is_empty() {
                cursor = message.cursor;
            }
        }
        seen.lock().expect("seen").resumed += 1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watchers_and_jetstream_see_every_event_once_through_a_killed_replica() {
    let (Some(Backend::Postgres(admin_url)), Some(nats)) = (Backend::postgres(), nats_url()) else {
        return;
    };
    let (name, url) = create_database(&admin_url).await;
    let env = [
        ("DATABASE_URL", url.as_str()),
        ("INVITATIONS_NATS_URL", nats.as_str()),
        ("INVITATIONS_NATS_LEASE_MS", "1000"),
        ("INVITATIONS_EXPIRY_SWEEP_MS", "300"),
        ("INVITATIONS_WATCH_CHECKPOINT_MS", "500"),
        ("INVITATIONS_RATE_LIMIT_PER_SECOND", "0"),
        ("INVITATIONS_SHUTDOWN_GRACE_MS", "0"),
    ];
    let within = Duration::from_secs(30);
    let leader = Served::start_ready(&env, within).await;
    let other = Served::start_ready(&env, within).await;
    let replicas: Replicas = Arc::new(Mutex::new(vec![leader.addr, other.addr]));
    let enterprise = EnterpriseId::from_uuid(Uuid::new_v4());
    let token = Authenticator::hs256(JWT_SECRET.as_bytes(), ISSUER, AUDIENCE).mint(
        UserRef::from_uuid(Uuid::new_v4()),
        Some(enterprise),
        &[ENTERPRISE_ADMIN.to_owned()],
        Duration::from_secs(3600),
    );

    let stop_watching = tokio_util::sync::CancellationToken::new();
    let watchers: Vec<_> = (0..3)
        .map(|n| {
            let seen = Arc::new(Mutex::new(Seen::default()));
            let task = tokio::spawn(watch(
                replicas.clone(),
                token.clone(),
                n,
                seen.clone(),
                stop_watching.clone(),
            ));
            (seen, task)
        })
        .collect();
    // Every watcher is open before the first change.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let made = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| tokio::spawn(write(replicas.clone(), token.clone(), w, made.clone())))
        .collect();

    // Midway, the replica that relays (the first one up) is killed, then started again.
    while made.load(std::sync::atomic::Ordering::Relaxed) < CHANGES * 2 / 5 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        leader
            .logs()
            .iter()
            .any(|line| line.contains("relaying events to NATS JetStream")),
        "the replica killed is the one relaying"
    );
    replicas
        .lock()
        .expect("replicas")
        .retain(|addr| *addr != leader.addr);
    leader.signal("KILL");
    drop(leader);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let restarted = Served::start(&env);
    await_health(restarted.addr, READINESS, ServingStatus::Serving, within).await;
    replicas.lock().expect("replicas").push(restarted.addr);

    for writer in writers {
        writer.await.expect("a writer");
    }
    // The lapsing invitations expire, and the sweeper records them.
    tokio::time::sleep(Duration::from_secs(4)).await;

    let store = Store::connect(
        &invitations::config::Config {
            database_url: url.clone().into(),
            ..invitations::config::Config::defaults()
        }
        .store_settings()
        .expect("settings"),
    )
    .await
    .expect("the store");
    store.migrate().await.expect("migrated");
    let horizon = store.event_horizon().await.expect("horizon");
    let outbox = store
        .events_after(enterprise, None, horizon, 1_000_000)
        .await
        .expect("the outbox");
    let expected: Vec<String> = outbox.iter().map(|e| e.record.id.to_string()).collect();
    eprintln!("chaos: {} events in the outbox", expected.len());
    assert!(
        expected.len() >= CHANGES * 9 / 10,
        "most changes were made: {}",
        expected.len()
    );

    // Every watcher catches up; each has every event once, in the outbox's order.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    for (seen, _) in &watchers {
        while seen.lock().expect("seen").events.len() < expected.len()
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop_watching.cancel();
    let mut resumed = 0;
    for (n, (seen, task)) in watchers.into_iter().enumerate() {
        task.await.expect("a watcher");
        let seen = seen.lock().expect("seen");
        eprintln!("chaos: watcher {n} resumed {} times", seen.resumed);
        resumed += seen.resumed;
        assert_eq!(
            seen.events.len(),
            expected.len(),
            "watcher {n}: every event, none twice"
        );
        assert!(
            seen.events == expected,
            "watcher {n}: in the outbox's order"
        );
    }

    assert!(
        resumed > 0,
        "the kill broke the streams of the watchers on it"
    );

    // JetStream holds each event once.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let relayed = loop {
        let relayed = published(&nats, enterprise).await;
        if relayed.len() >= expected.len() || tokio::time::Instant::now() > deadline {
            break relayed;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let relayed: Vec<String> = relayed.into_iter().map(|p| p.message_id).collect();
    assert_eq!(
        relayed.len(),
        expected.len(),
        "JetStream: every event, none twice"
    );
    let mut sorted_relayed = relayed.clone();
    sorted_relayed.sort();
    let mut sorted_expected = expected.clone();
    sorted_expected.sort();
    assert_eq!(sorted_relayed, sorted_expected);

    // Each invitation that lapsed has exactly one expired event.
    let mut expired: HashMap<_, usize> = HashMap::new();
    for event in &outbox {
        if event.record.kind == EventType::Expired {
            *expired.entry(event.invitation.id).or_default() += 1;
        }
    }
    assert!(!expired.is_empty(), "invitations lapsed during the run");
    assert!(
        expired.values().all(|count| *count == 1),
        "one expired event each"
    );

    drop(other);
    drop(restarted);
    store.close().await;
    drop_database(&admin_url, &name).await;
}
