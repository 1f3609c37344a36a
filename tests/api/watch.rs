//! WatchInvitations through the real server: every change once, in commit order, with a
//! cursor that resumes exactly after it; initial state, filters, checkpoints; bound and
//! expiring cursors; a client too slow for its buffer; the ends (maximum age, shutdown);
//! concurrent writers on two replicas.
use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use invitations::domain::{
    EnterpriseId, InvitationRepository as _, PageTokenCodec, StatusFilter, Timestamp, WatchCursor,
    WatchCursors, WatchFilter,
};
use invitations::proto::invitations::v1 as wire;
use invitations::proto::invitations::v1::invitation_service_client::InvitationServiceClient;
use tonic::Streaming;
use tonic::transport::Channel;
use uuid::Uuid;

use crate::common::{
    Backend, Fixture, Row, TestApp, assert_invalid, assert_row, authorized, cancel_request,
    create_request, issue_request, list_request,
};
use crate::{on_both_stores, on_each_backend};

/// How long a test waits for a message it expects.
const PATIENCE: Duration = Duration::from_secs(15);

fn watch_request() -> wire::WatchInvitationsRequest {
    wire::WatchInvitationsRequest::default()
}

fn resuming(cursor: &str) -> wire::WatchInvitationsRequest {
    wire::WatchInvitationsRequest {
        start_cursor: cursor.to_owned(),
        ..watch_request()
    }
}

pub(crate) async fn open_with(
    client: &mut InvitationServiceClient<Channel>,
    token: &str,
    request: wire::WatchInvitationsRequest,
) -> Result<Streaming<wire::WatchInvitationsResponse>, tonic::Status> {
    client
        .watch_invitations(authorized(token, request))
        .await
        .map(tonic::Response::into_inner)
}

async fn open(
    app: &TestApp,
    request: wire::WatchInvitationsRequest,
) -> Streaming<wire::WatchInvitationsResponse> {
    open_with(&mut app.client(), &app.token, request)
        .await
        .expect("the watch opens")
}

/// The next message; the stream must not end or fail first.
async fn next(
    stream: &mut Streaming<wire::WatchInvitationsResponse>,
) -> wire::WatchInvitationsResponse {
    tokio::time::timeout(PATIENCE, stream.message())
        .await
        .expect("a message in time")
        .expect("no error")
        .expect("the stream goes on")
}

/// The next `count` events, past checkpoints, and the last one's cursor (a message may
/// carry more: those are left out).
pub(crate) async fn next_events(
    stream: &mut Streaming<wire::WatchInvitationsResponse>,
    count: usize,
) -> (Vec<wire::InvitationEvent>, String) {
    let mut events = Vec::new();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while events.len() < count {
        let message = tokio::time::timeout_at(deadline, stream.message())
            .await
            .unwrap_or_else(|_| panic!("{count} events in time; {} came", events.len()))
            .expect("no error")
            .expect("the stream goes on");
        assert_eq!(message.end, 0, "the stream goes on: {message:?}");
        events.extend(message.events);
    }
    events.truncate(count);
    let cursor = events.last().map(|e| e.cursor.clone()).unwrap_or_default();
    (events, cursor)
}

fn event_type(event: &wire::InvitationEvent) -> wire::InvitationEventType {
    wire::InvitationEventType::try_from(event.r#type).expect("a known type")
}

pub(crate) async fn a_watch_delivers_each_change_once_with_its_cursor(app: &TestApp) {
    let mut watch = open(app, watch_request()).await;
    let created = app
        .create(create_request("w1@acme.example"))
        .await
        .expect("created");
    let issued = app.issue(issue_request(&created.id)).await.expect("issued");
    let issued = issued.invitation.expect("invitation");
    let mut cancel = cancel_request(&created.id, &issued.etag);
    cancel.reason = "no longer needed".into();
    let request_id = Uuid::new_v4().to_string();
    cancel.request_id = request_id.clone();
    let cancelled = app.cancel(cancel).await.expect("cancelled");

    let (events, last_cursor) = next_events(&mut watch, 3).await;
    let expected = [
        (wire::InvitationEventType::Created, &created),
        (wire::InvitationEventType::LinkIssued, &issued),
        (wire::InvitationEventType::Cancelled, &cancelled),
    ];
    for (event, (kind, answer)) in events.iter().zip(expected) {
        assert_eq!(event_type(event), kind, "{event:?}");
        assert_eq!(event.actor, app.admin.to_string());
        let snapshot = event.invitation.as_ref().expect("a snapshot");
        assert_eq!(snapshot.etag, answer.etag, "the change's etag");
        assert_eq!(snapshot.status, answer.status, "the status the change left");
        assert_eq!(snapshot.id, created.id);
        assert!(!event.cursor.is_empty());
        let id = Uuid::parse_str(&event.event_id).expect("a uuid");
        assert_eq!(id.get_version_num(), 7);
        assert_eq!(event.trace_id, "", "no trace while traces are not exported");
    }
    assert_eq!(events[2].request_id.as_deref(), Some(request_id.as_str()));
    assert_eq!(
        events[2]
            .invitation
            .as_ref()
            .and_then(|i| i.cancel_reason.as_deref()),
        Some("no longer needed")
    );
    assert_eq!(last_cursor, events[2].cursor);
    let ids: HashSet<_> = events.iter().map(|e| e.event_id.clone()).collect();
    assert_eq!(ids.len(), 3);

    // Resuming after the first event delivers the second and third, exactly.
    let mut resumed = open(app, resuming(&events[0].cursor)).await;
    let (again, _) = next_events(&mut resumed, 2).await;
    let again: Vec<_> = again.iter().map(|e| e.event_id.clone()).collect();
    assert_eq!(
        again,
        vec![events[1].event_id.clone(), events[2].event_id.clone()]
    );

    // Resuming after the last one delivers only what follows.
    let mut after_last = open(app, resuming(&last_cursor)).await;
    let later = app
        .create(create_request("w2@acme.example"))
        .await
        .expect("created");
    let (new, _) = next_events(&mut after_last, 1).await;
    assert_eq!(
        new[0].invitation.as_ref().map(|i| i.id.clone()),
        Some(later.id)
    );
    assert_eq!(event_type(&new[0]), wire::InvitationEventType::Created);
}

async fn the_initial_state_comes_first_then_changes(app: &TestApp) {
    let first = app.insert(Fixture::pending("s1@acme.example")).await;
    let second = app.insert(Fixture::pending("s2@acme.example")).await;
    app.insert(Fixture::cancelled("s3@acme.example")).await;
    let mut watch = open(
        app,
        wire::WatchInvitationsRequest {
            statuses: vec![wire::InvitationStatus::Pending as i32],
            send_initial_state: true,
            ..watch_request()
        },
    )
    .await;
    let mut state = Vec::new();
    loop {
        let message = next(&mut watch).await;
        assert!(message.events.is_empty(), "no change before the marker");
        state.extend(message.initial_state);
        if message.initial_state_complete {
            assert!(!message.cursor.is_empty(), "the marker carries a cursor");
            break;
        }
    }
    let listed: BTreeSet<_> = state.iter().map(|i| i.id.clone()).collect();
    let expected: BTreeSet<_> = [first.id, second.id]
        .iter()
        .map(|id| id.to_string())
        .collect();
    assert_eq!(
        listed, expected,
        "the pending invitations, as List shows them"
    );

    let created = app
        .create(create_request("s4@acme.example"))
        .await
        .expect("created");
    let (events, _) = next_events(&mut watch, 1).await;
    assert_eq!(
        events[0].invitation.as_ref().map(|i| i.id.clone()),
        Some(created.id)
    );
}

async fn filters_and_types_apply_to_the_snapshot(app: &TestApp) {
    let mut cancellations = open(
        app,
        wire::WatchInvitationsRequest {
            types: vec![wire::InvitationEventType::Cancelled as i32],
            ..watch_request()
        },
    )
    .await;
    let mut one_address = open(
        app,
        wire::WatchInvitationsRequest {
            email_constraint: "F1@Acme.example".into(),
            ..watch_request()
        },
    )
    .await;
    let mut pending_only = open(
        app,
        wire::WatchInvitationsRequest {
            statuses: vec![wire::InvitationStatus::Cancelled as i32],
            ..watch_request()
        },
    )
    .await;
    let first = app
        .create(create_request("f1@acme.example"))
        .await
        .expect("created");
    let second = app
        .create(create_request("f2@acme.example"))
        .await
        .expect("created");
    app.cancel(cancel_request(&second.id, &second.etag))
        .await
        .expect("cancelled");

    let (events, _) = next_events(&mut cancellations, 1).await;
    assert_eq!(event_type(&events[0]), wire::InvitationEventType::Cancelled);
    assert_eq!(
        events[0].invitation.as_ref().map(|i| i.id.clone()),
        Some(second.id.clone())
    );
    let (events, _) = next_events(&mut one_address, 1).await;
    assert_eq!(
        events[0].invitation.as_ref().map(|i| i.id.clone()),
        Some(first.id)
    );
    let (events, _) = next_events(&mut pending_only, 1).await;
    assert_eq!(
        events[0].invitation.as_ref().map(|i| i.id.clone()),
        Some(second.id)
    );

    // Nothing else arrived for any of them: the next thing each sees is the next change.
    let third = app
        .create(create_request("f1-other@acme.example"))
        .await
        .expect("created");
    app.cancel(cancel_request(&third.id, &third.etag))
        .await
        .expect("cancelled");
    let (events, _) = next_events(&mut cancellations, 1).await;
    assert_eq!(
        events[0].invitation.as_ref().map(|i| i.id.clone()),
        Some(third.id.clone())
    );
    let (events, _) = next_events(&mut pending_only, 1).await;
    assert_eq!(
        events[0].invitation.as_ref().map(|i| i.id.clone()),
        Some(third.id)
    );
}

/// A cursor for `filter` signed with the test server's key, issued at `issued_at`.
fn forged(app: &TestApp, filter: &WatchFilter, position: i64, issued_at: Timestamp) -> String {
    let codec = PageTokenCodec::new(app.settings.page_token_secret.expose());
    WatchCursors::new(codec.signer().clone(), app.settings.event_retention).encode(
        WatchCursor {
            position,
            issued_at,
        },
        filter,
    )
}

fn whole_enterprise(enterprise: EnterpriseId) -> WatchFilter {
    WatchFilter::new(enterprise, None, StatusFilter::new(), None, BTreeSet::new())
        .expect("a filter")
}

pub(crate) async fn cursors_are_bound_to_their_watch_and_expire(app: &TestApp) {
    let mut watch = open(app, watch_request()).await;
    app.create(create_request("c1@acme.example"))
        .await
        .expect("created");
    let (events, cursor) = next_events(&mut watch, 1).await;
    assert_eq!(events.len(), 1);
    let mut client = app.client();

    let mut tampered = cursor.clone().into_bytes();
    let at = tampered.len() / 2;
    tampered[at] = if tampered[at] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).expect("ascii");
    let with_other_types = wire::WatchInvitationsRequest {
        start_cursor: cursor.clone(),
        types: vec![wire::InvitationEventType::Accepted as i32],
        ..watch_request()
    };
    let (_, foreign_token) = app.other_enterprise_admin();
    for (token, request) in [
        (app.token.as_str(), resuming(&tampered)),
        (app.token.as_str(), with_other_types),
        (foreign_token.as_str(), resuming(&cursor)),
        (app.token.as_str(), resuming("not-a-cursor")),
    ] {
        let refused = open_with(&mut client, token, request)
            .await
            .expect_err("refused");
        assert_invalid(&refused, &[("start_cursor", Row::InvalidCursor)]);
    }

    let long_ago =
        Timestamp::now().saturating_sub(app.settings.event_retention + Duration::from_secs(1));
    let expired = forged(app, &whole_enterprise(app.enterprise), 1, long_ago);
    let refused = open_with(&mut client, &app.token, resuming(&expired))
        .await
        .expect_err("expired");
    let metadata = assert_row(&refused, Row::WatchCursorExpired);
    assert_eq!(
        metadata.get("retentionSeconds").map(String::as_str),
        Some(app.settings.event_retention.as_secs().to_string().as_str())
    );
    // Just within the retention it is good.
    let recent =
        Timestamp::now().saturating_sub(app.settings.event_retention - Duration::from_secs(60));
    let good = forged(app, &whole_enterprise(app.enterprise), 0, recent);
    let mut resumed = open_with(&mut client, &app.token, resuming(&good))
        .await
        .expect("good");
    let (replayed, _) = next_events(&mut resumed, 1).await;
    assert_eq!(replayed[0].event_id, events[0].event_id);

    let both = wire::WatchInvitationsRequest {
        start_cursor: cursor,
        send_initial_state: true,
        ..watch_request()
    };
    let refused = open_with(&mut client, &app.token, both)
        .await
        .expect_err("refused");
    assert_invalid(&refused, &[("send_initial_state", Row::InvalidFormat)]);
    let unspecified = wire::WatchInvitationsRequest {
        types: vec![0],
        statuses: vec![0],
        ..watch_request()
    };
    let refused = open_with(&mut client, &app.token, unspecified)
        .await
        .expect_err("refused");
    assert_invalid(
        &refused,
        &[
            ("statuses", Row::InvalidFormat),
            ("types", Row::InvalidFormat),
        ],
    );
    let (other, _) = app.other_enterprise_admin();
    let foreign_scope = wire::WatchInvitationsRequest {
        scope: format!("enterprises/{}", other.as_uuid()),
        ..watch_request()
    };
    let refused = open_with(&mut client, &app.token, foreign_scope)
        .await
        .expect_err("refused");
    assert_row(&refused, Row::ScopeNotPermitted);
    let refused = client
        .watch_invitations(tonic::Request::new(watch_request()))
        .await
        .expect_err("no token");
    assert_row(&refused, Row::Unauthorized);
}

on_both_stores!(
    a_watch_delivers_each_change_once_with_its_cursor,
    the_initial_state_comes_first_then_changes,
    filters_and_types_apply_to_the_snapshot,
    cursors_are_bound_to_their_watch_and_expire,
);

/// An idle watch sends checkpoints; resuming from one skips what the watch did not want,
/// and another enterprise's changes never reach it.
async fn checkpoints_move_past_what_a_watch_skips(backend: Backend) {
    let app = TestApp::spawn_configured(backend, |config| config.watch_checkpoint_ms = 200).await;
    let cancellations = wire::WatchInvitationsRequest {
        types: vec![wire::InvitationEventType::Cancelled as i32],
        ..watch_request()
    };
    let mut watch = open(&app, cancellations.clone()).await;
    let (other, other_token) = app.other_enterprise_admin();
    let mut foreign = open_with(&mut app.client(), &other_token, watch_request())
        .await
        .expect("opens");
    for n in 0..3 {
        app.create(create_request(format!("k{n}@acme.example")))
            .await
            .expect("created");
    }
    // A checkpoint once the creates have been passed over.
    let checkpoint = loop {
        let message = next(&mut watch).await;
        assert!(message.events.is_empty(), "{message:?}");
        let horizon = app.store.event_horizon().await.expect("horizon");
        let events = app
            .store
            .events_after(app.enterprise, None, horizon, 100)
            .await
            .expect("read");
        if events.len() == 3 && !message.cursor.is_empty() {
            // A checkpoint taken after the reader settled past them: wait one more.
            break next(&mut watch).await.cursor;
        }
    };
    let mut resumed = open(
        &app,
        wire::WatchInvitationsRequest {
            start_cursor: checkpoint,
            ..cancellations
        },
    )
    .await;
    let target = app
        .create(create_request("k9@acme.example"))
        .await
        .expect("created");
    app.cancel(cancel_request(&target.id, &target.etag))
        .await
        .expect("cancelled");
    let (events, _) = next_events(&mut resumed, 1).await;
    assert_eq!(event_type(&events[0]), wire::InvitationEventType::Cancelled);
    let message = next(&mut foreign).await;
    assert!(
        message.events.is_empty(),
        "another enterprise's watch sees only checkpoints"
    );
    let _ = other;
    app.finish().await;
}

/// A client on its own connection with HTTP/2's smallest windows, so that when it stops
/// reading the server's sending stops soon.
pub(crate) async fn small_window_client(
    addr: std::net::SocketAddr,
) -> InvitationServiceClient<Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .initial_stream_window_size(Some(65_535))
        .initial_connection_window_size(Some(65_535))
        .connect()
        .await
        .expect("connects");
    InvitationServiceClient::new(channel)
}

/// A client that stops reading: its watch ends WATCH_TOO_SLOW with a cursor, after which a
/// resumed watch delivers the rest, and nothing twice.
async fn a_stalled_watch_ends_too_slow_and_resumes_exactly(backend: Backend) {
    let app = TestApp::spawn_configured(backend, |config| config.watch_buffer = 8).await;
    let mut client = small_window_client(app.addr).await;
    let mut stalled = open_with(&mut client, &app.token, watch_request())
        .await
        .expect("opens");
    const CHANGES: usize = 300;
    for n in 0..CHANGES {
        app.create(create_request(format!("slow{n}@acme.example")))
            .await
            .expect("created");
    }
    let mut seen = Vec::new();
    let resume = loop {
        match tokio::time::timeout(PATIENCE, stalled.message())
            .await
            .expect("in time")
        {
            Ok(Some(message)) => seen.extend(message.events.into_iter().map(|e| e.event_id)),
            Ok(None) => panic!(
                "the stream ended without WATCH_TOO_SLOW after {} events",
                seen.len()
            ),
            Err(status) => {
                let metadata = assert_row(&status, Row::WatchTooSlow);
                assert_eq!(
                    metadata.get("maxBufferedEvents").map(String::as_str),
                    Some("8")
                );
                break metadata
                    .get("resumeCursor")
                    .cloned()
                    .expect("a resume cursor");
            }
        }
    };
    assert!(seen.len() < CHANGES, "it fell behind before the end");
    let mut resumed = open(&app, resuming(&resume)).await;
    let (rest, _) = next_events(&mut resumed, CHANGES - seen.len()).await;
    seen.extend(rest.into_iter().map(|e| e.event_id));
    let unique: HashSet<_> = seen.iter().collect();
    assert_eq!(unique.len(), CHANGES, "every event once");
    app.finish().await;
}

/// Watches end by themselves with a resumable cursor: at their maximum age, and when the
/// server drains for shutdown.
async fn watches_end_with_a_cursor_at_max_age_and_shutdown(backend: Backend) {
    let mut app = TestApp::spawn_configured(backend, |config| {
        config.watch_max_age = Duration::from_secs(1);
    })
    .await;
    let mut aging = open(&app, watch_request()).await;
    let created = app
        .create(create_request("e1@acme.example"))
        .await
        .expect("created");
    let (events, _) = next_events(&mut aging, 1).await;
    let end = loop {
        let message = next(&mut aging).await;
        if message.end != 0 {
            break message;
        }
    };
    assert_eq!(end.end, wire::WatchEnd::MaxAge as i32);
    assert!(
        aging.message().await.expect("a clean end").is_none(),
        "nothing after the end"
    );
    // The end's cursor is past the event: resuming delivers only what follows.
    let mut resumed = open(&app, resuming(&end.cursor)).await;
    app.cancel(cancel_request(&created.id, &created.etag))
        .await
        .expect("cancelled");
    let (after, _) = next_events(&mut resumed, 1).await;
    assert_ne!(after[0].event_id, events[0].event_id);
    assert_eq!(event_type(&after[0]), wire::InvitationEventType::Cancelled);

    let mut draining = open(&app, watch_request()).await;
    app.begin_shutdown();
    let end = loop {
        let message = next(&mut draining).await;
        if message.end != 0 {
            break message;
        }
    };
    assert_eq!(end.end, wire::WatchEnd::Shutdown as i32);
    assert!(!end.cursor.is_empty());
    app.finish().await;
}

/// Eight writers over two replicas while a watch on each streams: each sees every event
/// exactly once, in the outbox's order; a watch that stops midway and resumes on the other
/// replica misses nothing. On PostgreSQL the replicas poll only once a minute: what reaches
/// a watch of the other replica at once is the LISTEN/NOTIFY announcement.
async fn concurrent_writers_on_two_replicas_reach_every_watch_once(backend: Backend) {
    let postgres = matches!(backend, Backend::Postgres(_));
    let app = TestApp::spawn_configured(backend, |config| {
        config.watch_poll_ms = if postgres { 60_000 } else { 100 };
        config.db_max_connections = 16;
    })
    .await;
    let (mut replica, stop, replica_task) = app.replica().await;
    let mut on_first = open(&app, watch_request()).await;
    let mut on_second = open_with(&mut replica, &app.token, watch_request())
        .await
        .expect("opens");

    const WRITERS: usize = 8;
    const EACH: usize = 25;
    let mut writers = Vec::new();
    for writer in 0..WRITERS {
        let mut client = if writer % 2 == 0 {
            app.client()
        } else {
            replica.clone()
        };
        let token = app.token.clone();
        writers.push(tokio::spawn(async move {
            for n in 0..EACH {
                let created = client
                    .create_invitation(authorized(
                        &token,
                        create_request(format!("cw{writer}-{n}@acme.example")),
                    ))
                    .await
                    .expect("created")
                    .into_inner();
                client
                    .cancel_invitation(authorized(
                        &token,
                        cancel_request(&created.id, &created.etag),
                    ))
                    .await
                    .expect("cancelled");
            }
        }));
    }
    let total = WRITERS * EACH * 2;
    // The first watch stops after a third and resumes on the other replica.
    let (mut first_seen, cursor) = next_events(&mut on_first, total / 3).await;
    drop(on_first);
    let mut resumed = open_with(&mut replica, &app.token, resuming(&cursor))
        .await
        .expect("opens");
    let (rest, _) = next_events(&mut resumed, total - first_seen.len()).await;
    first_seen.extend(rest);
    let (second_seen, _) = next_events(&mut on_second, total).await;
    for writer in writers {
        writer.await.expect("the writer finished");
    }

    let horizon = app.store.event_horizon().await.expect("horizon");
    let stored: Vec<String> = app
        .store
        .events_after(app.enterprise, None, horizon, 10_000)
        .await
        .expect("read")
        .iter()
        .map(|event| event.record.id.to_string())
        .collect();
    assert_eq!(stored.len(), total);
    for seen in [first_seen, second_seen] {
        let seen: Vec<String> = seen.into_iter().map(|e| e.event_id).collect();
        assert_eq!(seen, stored, "every event once, in the outbox's order");
    }
    let _ = stop.send(());
    replica_task.await.expect("the replica stops");
    app.finish().await;
}

/// A watch is a call when it opens: it spends a token of the caller's rate limit, the same
/// bucket as the caller's unary calls, and over the limit it is refused like one. Once open
/// it holds no call slot: a caller with more open watches than its concurrent-call limits
/// still has every unary call answered, and every watch still gets every change.
async fn watches_count_against_the_rate_limit_and_do_not_starve_unary_calls(backend: Backend) {
    let app = TestApp::spawn_configured(backend.clone(), |config| {
        config.rate_limit_per_second = 1;
        config.rate_limit_burst = 3;
    })
    .await;
    let mut client = app.client();
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(
            open_with(&mut client, &app.token, watch_request())
                .await
                .expect("within the burst"),
        );
    }
    let refused = open_with(&mut client, &app.token, watch_request())
        .await
        .expect_err("a watch over the burst");
    assert_row(&refused, Row::RateLimited);
    let unary = app
        .list(list_request(&[]))
        .await
        .expect_err("the watches spent the caller's burst");
    assert_row(&unary, Row::RateLimited);
    let colleague = app.colleague();
    app.caller(&colleague)
        .list(list_request(&[]))
        .await
        .expect("another caller is not limited by these watches");
    drop(held);
    app.finish().await;

    const WATCHES: usize = 8;
    const CHANGES: usize = 10;
    let app = TestApp::spawn_configured(backend, |config| {
        config.max_concurrent_requests = 4;
        config.max_concurrent_requests_per_caller = 2;
    })
    .await;
    let mut client = app.client();
    let mut watches = Vec::new();
    for _ in 0..WATCHES {
        watches.push(
            open_with(&mut client, &app.token, watch_request())
                .await
                .expect("an open watch holds no call slot"),
        );
    }
    for n in 0..CHANGES {
        app.create(create_request(format!("beside-watches-{n}@acme.example")))
            .await
            .expect("a unary call beside more open watches than call slots");
    }
    app.list(list_request(&[])).await.expect("and a list");
    for watch in &mut watches {
        let (events, _) = next_events(watch, CHANGES).await;
        assert!(
            events
                .iter()
                .all(|event| event_type(event) == wire::InvitationEventType::Created),
            "{events:?}"
        );
    }
    app.finish().await;
}

on_each_backend!(
    watches_count_against_the_rate_limit_and_do_not_starve_unary_calls:
        watch_limits_on_sqlite, watch_limits_on_postgres
);
on_each_backend!(
    checkpoints_move_past_what_a_watch_skips:
        checkpoints_on_sqlite, checkpoints_on_postgres
);
on_each_backend!(
    a_stalled_watch_ends_too_slow_and_resumes_exactly:
        too_slow_on_sqlite, too_slow_on_postgres
);
on_each_backend!(
    watches_end_with_a_cursor_at_max_age_and_shutdown:
        watch_ends_on_sqlite, watch_ends_on_postgres
);
on_each_backend!(
    concurrent_writers_on_two_replicas_reach_every_watch_once:
        two_replicas_on_sqlite, two_replicas_on_postgres
);
