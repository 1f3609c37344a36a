//! ListInvitations: keyset pages, filters, page tokens and page sizes.
use std::collections::HashSet;
use std::time::Duration;

use invitations::domain::{Invitation, InvitationStatus, Timestamp};
use invitations::proto::invitations::v1::{InvitationStatus as WireStatus, ListInvitationsRequest};

use crate::common::{Fixture, Row, TestApp, assert_invalid, assert_row, list_request, violations};
use crate::on_both_stores;

/// Which seeded invitations a request should return.
type Matcher = Box<dyn Fn(&Invitation) -> bool>;

/// Walks every page of `request` and returns the ids in the order served.
async fn walk(app: &TestApp, request: ListInvitationsRequest) -> Vec<String> {
    let mut ids = Vec::new();
    let mut request = request;
    for _ in 0..10_000 {
        let page = app.list(request.clone()).await.expect("a page");
        let page_size = match request.page_size {
            0 => 50,
            n => n.min(1000),
        } as usize;
        assert!(
            page.items.len() <= page_size,
            "a page never exceeds its size"
        );
        ids.extend(page.items.into_iter().map(|i| i.id));
        if page.next_page_token.is_empty() {
            return ids;
        }
        request.page_token = page.next_page_token;
    }
    panic!("the walk did not terminate");
}

/// Newest first, ties broken by id (both descending).
fn expected_order(mut invitations: Vec<&Invitation>) -> Vec<String> {
    invitations.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(b.id.cmp(&a.id)));
    invitations.iter().map(|i| i.id.to_string()).collect()
}

/// A few hundred invitations in every status, with runs of equal `created_at` so that ties
/// must be broken by id, two addresses repeated in different cases, and a sub-scope.
async fn seed(app: &TestApp) -> Vec<Invitation> {
    let base = Timestamp::now().saturating_sub(Duration::from_secs(10_000));
    let mut seeded = Vec::new();
    for n in 0..300u64 {
        // Groups of three share a creation instant.
        let created_at = base.saturating_add(Duration::from_secs(n / 3));
        let status = match n % 5 {
            0 | 1 => InvitationStatus::Pending,
            2 => InvitationStatus::Accepted,
            3 => InvitationStatus::Cancelled,
            _ => InvitationStatus::Expired,
        };
        let email = match n % 7 {
            0 => format!("Repeat{}@Acme.Example", n % 2),
            _ => format!("user{n}@acme.example"),
        };
        let mut fixture = Fixture::new(email, status).created_at(created_at);
        if n % 10 == 6 {
            // Stored pending, but lapsed: listed as expired.
            fixture = Fixture::lapsed(fixture.email.clone()).created_at(created_at);
        }
        if n % 4 == 1 {
            fixture = fixture.scope(format!("{}/teams/blue", app.enterprise));
        }
        if fixture.status == InvitationStatus::Pending && fixture.email.starts_with("Repeat") {
            // At most one invitation per address is stored as pending.
            fixture.status = InvitationStatus::Cancelled;
            fixture.lapsed = false;
        }
        seeded.push(app.insert(fixture).await);
    }
    seeded
}

pub(crate) async fn full_walks_return_each_match_once_in_order(app: &TestApp) {
    // Arrange
    let seeded = seed(app).await;
    // Another enterprise's invitations never appear.
    let (other, _) = app.other_enterprise_admin();
    for n in 0..20 {
        app.insert_in(other, Fixture::pending(format!("other{n}@acme.example")))
            .await;
    }
    let now = Timestamp::now();
    let effective = move |i: &Invitation| i.status_at(now);
    let cases: Vec<(ListInvitationsRequest, Matcher)> = vec![
        (ListInvitationsRequest::default(), Box::new(|_| true)),
        (
            list_request(&[WireStatus::Pending]),
            Box::new(move |i| effective(i) == InvitationStatus::Pending),
        ),
        (
            list_request(&[WireStatus::Cancelled, WireStatus::Expired]),
            Box::new(move |i| {
                matches!(
                    effective(i),
                    InvitationStatus::Cancelled | InvitationStatus::Expired
                )
            }),
        ),
        (
            ListInvitationsRequest {
                email_constraint: "REPEAT1@acme.example".into(),
                ..Default::default()
            },
            Box::new(|i| i.email.normalized() == "repeat1@acme.example"),
        ),
        (
            ListInvitationsRequest {
                scope: format!("{}/teams/blue", app.enterprise),
                statuses: vec![WireStatus::Expired as i32],
                ..Default::default()
            },
            Box::new(move |i| {
                i.scope.as_str().ends_with("/teams/blue")
                    && effective(i) == InvitationStatus::Expired
            }),
        ),
        (
            ListInvitationsRequest {
                scope: app.enterprise.to_string(),
                ..Default::default()
            },
            Box::new(|_| true),
        ),
    ];
    for (request, wanted) in &cases {
        let expected = expected_order(seeded.iter().filter(|i| wanted(i)).collect());
        assert!(
            !expected.is_empty(),
            "every case matches something: {request:?}"
        );
        for page_size in [1, 7, 1000] {
            // Act
            let ids = walk(
                app,
                ListInvitationsRequest {
                    page_size,
                    ..request.clone()
                },
            )
            .await;
            // Assert: each match exactly once, in order.
            assert_eq!(
                ids.len(),
                expected.len(),
                "count for {request:?} at page size {page_size}"
            );
            assert_eq!(
                ids, expected,
                "order for {request:?} at page size {page_size}"
            );
            assert_eq!(
                ids.iter().collect::<HashSet<_>>().len(),
                ids.len(),
                "no duplicates"
            );
        }
    }
}

async fn page_sizes_default_and_cap(app: &TestApp) {
    let base = Timestamp::now().saturating_sub(Duration::from_secs(5_000));
    for n in 0..1005u64 {
        app.insert(
            Fixture::pending(format!("p{n}@acme.example"))
                .created_at(base.saturating_add(Duration::from_secs(n))),
        )
        .await;
    }
    let list = |page_size: i32| {
        app.list(ListInvitationsRequest {
            page_size,
            ..Default::default()
        })
    };
    let default = list(0).await.expect("page_size 0");
    assert_eq!(default.items.len(), 50);
    assert!(!default.next_page_token.is_empty());
    let capped = list(100_000).await.expect("page_size 100000");
    assert_eq!(capped.items.len(), 1000);
    assert!(!capped.next_page_token.is_empty());

    let negative = list(-1).await.expect_err("page_size -1");
    assert_invalid(&negative, &[("page_size", Row::ValueOutOfRange)]);
}

async fn page_tokens_are_bound_to_enterprise_and_filters(app: &TestApp) {
    // Arrange: two pages' worth of pending invitations, and a token for the second page.
    for n in 0..5 {
        app.insert(Fixture::pending(format!("t{n}@acme.example")))
            .await;
    }
    let query = ListInvitationsRequest {
        page_size: 2,
        ..list_request(&[WireStatus::Pending])
    };
    let first = app.list(query.clone()).await.expect("first page");
    let token = first.next_page_token;
    assert!(!token.is_empty());
    let second = ListInvitationsRequest {
        page_token: token.clone(),
        ..query.clone()
    };
    // The same query with another page size is fine (AIP-158).
    let resized = ListInvitationsRequest {
        page_size: 3,
        ..second.clone()
    };
    app.list(resized)
        .await
        .expect("page size may change between pages");

    let refused = |request: ListInvitationsRequest, token: String| {
        let caller = app.caller(&token);
        async move {
            let status = caller.list(request).await.expect_err("refused");
            assert_invalid(&status, &[("page_token", Row::InvalidPageToken)]);
        }
    };
    let with_page_token = |page_token: String| ListInvitationsRequest {
        page_token,
        ..second.clone()
    };
    // Tampered: every character changed in turn to another base64url character; not a
    // token at all; and far too long.
    let mut bad_tokens: Vec<String> = [0, token.len() / 2, token.len() - 1]
        .into_iter()
        .map(|position| {
            let mut bytes = token.clone().into_bytes();
            bytes[position] = if bytes[position] == b'A' { b'B' } else { b'A' };
            String::from_utf8(bytes).expect("ascii")
        })
        .collect();
    bad_tokens.extend(["not-a-token".to_owned(), "x".repeat(10_000)]);
    for bad in bad_tokens {
        refused(with_page_token(bad), app.token.clone()).await;
    }
    // Replayed by another enterprise.
    let (_, other_token) = app.other_enterprise_admin();
    refused(second.clone(), other_token).await;
    // Replayed with other filters.
    let other_filters = [
        ListInvitationsRequest {
            statuses: vec![],
            ..second.clone()
        },
        ListInvitationsRequest {
            statuses: vec![WireStatus::Cancelled as i32],
            ..second.clone()
        },
        ListInvitationsRequest {
            email_constraint: "t1@acme.example".into(),
            ..second.clone()
        },
    ];
    for request in other_filters {
        refused(request, app.token.clone()).await;
    }
}

pub(crate) async fn page_tokens_survive_a_restart_and_work_on_a_replica(app: &TestApp) {
    for n in 0..4 {
        app.insert(Fixture::pending(format!("r{n}@acme.example")))
            .await;
    }
    let query = ListInvitationsRequest {
        page_size: 2,
        ..Default::default()
    };
    let first = app.list(query.clone()).await.expect("first");
    // A second server process-alike over the same database and configuration.
    let (mut replica, shutdown, server) = app.replica().await;
    let second = replica
        .list_invitations(app.request(ListInvitationsRequest {
            page_token: first.next_page_token,
            ..query
        }))
        .await
        .expect("the replica accepts the token")
        .into_inner();
    assert_eq!(second.items.len(), 2);
    assert!(second.next_page_token.is_empty(), "four items, two pages");
    let all: HashSet<_> = first
        .items
        .iter()
        .chain(&second.items)
        .map(|i| i.id.clone())
        .collect();
    assert_eq!(all.len(), 4);
    let _ = shutdown.send(());
    server.await.expect("the replica stops");
}

async fn expired_is_reported_everywhere(app: &TestApp) {
    let lapsed = app.insert(Fixture::lapsed("late@acme.example")).await;
    let pending = app.insert(Fixture::pending("fresh@acme.example")).await;
    let list = |statuses: &[WireStatus]| {
        let listed = app.list(list_request(statuses));
        async move { listed.await.expect("list").items }
    };
    let expired = list(&[WireStatus::Expired]).await;
    assert_eq!(
        expired.iter().map(|i| i.id.clone()).collect::<Vec<_>>(),
        vec![lapsed.id.to_string()]
    );
    assert_eq!(expired[0].status, WireStatus::Expired as i32);
    let pending_only = list(&[WireStatus::Pending]).await;
    assert_eq!(
        pending_only
            .iter()
            .map(|i| i.id.clone())
            .collect::<Vec<_>>(),
        vec![pending.id.to_string()]
    );
    let everything = list(&[]).await;
    assert_eq!(everything.len(), 2);
}

async fn bad_filters_name_each_field(app: &TestApp) {
    let status = app
        .list(ListInvitationsRequest {
            page_size: -5,
            statuses: vec![WireStatus::Unspecified as i32, 42],
            email_constraint: "not-an-address".into(),
            scope: "teams/blue".into(),
            ..Default::default()
        })
        .await
        .expect_err("refused");
    assert_row(&status, Row::ValueOutOfRange);
    let fields: HashSet<String> = violations(&status).into_iter().map(|(f, _)| f).collect();
    assert_eq!(
        fields,
        ["page_size", "statuses", "email_constraint", "scope"]
            .into_iter()
            .map(String::from)
            .collect()
    );
    let too_many = app
        .list(list_request(&[WireStatus::Pending; 10_000]))
        .await
        .expect_err("refused");
    assert_invalid(&too_many, &[("statuses", Row::ValueOutOfRange)]);
}

/// A stored row that no longer reads as an invitation (changed behind the API's back) is
/// INTERNAL, with the documented details, and never a panic; the rows around it still
/// read once it is repaired. Each column is read from its bytes (`StoredRow::of_postgres`,
/// `sqlite_reader`), so each kind of damage is tried.
async fn corrupt_rows_are_internal_errors(app: &TestApp) {
    use sea_orm::{ConnectionTrait, Database};
    // The damaged row in the middle of the page: the store stops reading at it, with rows
    // of the answer still unread, and the next read must not see what was left of it.
    let hour_ago = Timestamp::now().saturating_sub(Duration::from_secs(3600));
    let at = |minutes: u64| hour_ago.saturating_add(Duration::from_secs(60 * minutes));
    for (i, minutes) in [1, 2, 4, 5].into_iter().enumerate() {
        app.insert(Fixture::pending(format!("intact{i}@acme.example")).created_at(at(minutes)))
            .await;
    }
    let invitation = app
        .insert(Fixture::pending("damaged@acme.example").created_at(at(3)))
        .await;
    let admin = Database::connect(app.settings.store.url.expose())
        .await
        .expect("connect");
    let good_user = invitation.invited_by.to_string();
    let good_role = invitation.role.to_string();
    for (column, damage, repair) in [
        (
            "invited_by",
            "'users/not-a-uuid'".to_owned(),
            format!("'{good_user}'"),
        ),
        (
            "invited_by",
            format!("'roles/{}'", invitation.invited_by.as_uuid()),
            format!("'{good_user}'"),
        ),
        (
            "invited_by",
            format!("'{good_user} '"),
            format!("'{good_user}'"),
        ),
        (
            "role",
            format!("'{}'", invitation.role.as_uuid()),
            format!("'{good_role}'"),
        ),
        ("cancelled_by", "'users/'".to_owned(), "NULL".to_owned()),
    ] {
        let set = |value: &str| {
            format!(
                "UPDATE invitations SET {column} = {value} \
                 WHERE email_normalized = 'damaged@acme.example'"
            )
        };
        let list_after = |value: String| {
            let admin = &admin;
            async move {
                admin
                    .execute_unprepared(&set(&value))
                    .await
                    .expect("update");
                app.list(Default::default()).await
            }
        };
        let status = list_after(damage).await.expect_err("a damaged row");
        assert_row(&status, Row::Internal);
        let page = list_after(repair)
            .await
            .unwrap_or_else(|e| panic!("repaired {column}: {e:?}"));
        assert_eq!(page.items.len(), 5, "{column}");
        assert_eq!(
            page.items[2].email_constraint, "damaged@acme.example",
            "{column}"
        );
        assert!(page.items.iter().all(|item| item.invited_by == good_user));
    }
    admin.close().await.expect("close");
}

on_both_stores!(
    corrupt_rows_are_internal_errors,
    full_walks_return_each_match_once_in_order,
    page_sizes_default_and_cap,
    page_tokens_are_bound_to_enterprise_and_filters,
    page_tokens_survive_a_restart_and_work_on_a_replica,
    expired_is_reported_everywhere,
    bad_filters_name_each_field,
);

/// Reads keep PostgreSQL connections checked out between requests
/// (`src/store/hot_connections.rs`). When the server closes them (a restart, an idle
/// timeout, a pooler), the next List must still answer: a read on a kept connection that
/// fails is repeated once on a connection from the pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_survive_postgres_closing_the_kept_connections() {
    use sea_orm::{ConnectionTrait, Database, Statement};
    let Some(backend) = crate::common::Backend::postgres() else {
        return;
    };
    let app = TestApp::spawn(backend).await;
    let invitation = app.insert(Fixture::pending("kept@acme.example")).await;
    let list = || {
        let admin = app.caller(&app.token);
        async move {
            let page = admin.list(Default::default()).await;
            page.map(|page| page.items.len())
        }
    };
    // Concurrent reads, so that several connections are kept.
    for _ in 0..5 {
        let mut pages = tokio::task::JoinSet::new();
        for _ in 0..6 {
            pages.spawn(list());
        }
        while let Some(page) = pages.join_next().await {
            assert_eq!(page.expect("the call ran").expect("a page"), 1);
        }
    }

    let database = Database::connect(app.settings.store.url.expose())
        .await
        .expect("connect to the test database");
    let terminated = database
        .query_one_raw(Statement::from_string(
            database.get_database_backend(),
            "SELECT count(*) AS n FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid()) AS t",
        ))
        .await
        .expect("terminate the service's connections")
        .expect("a row")
        .try_get::<i64>("", "n")
        .expect("a count");
    assert!(terminated >= 2, "only {terminated} connections were open");
    database.close().await.expect("close");

    for _ in 0..3 {
        assert_eq!(
            list().await.expect("a page after the connections closed"),
            1
        );
    }
    let page = app.list(Default::default()).await.expect("a page");
    assert_eq!(page.items[0].id, invitation.id.to_string());
    app.finish().await;
}

/// On a SQLite file, pages are read on threads named for it, not on tokio's shared blocking
/// pool: an operator (and the benchmark's `--pin-db`) can tell the embedded database's work
/// from the server's.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_pages_are_read_on_named_reader_threads() {
    let app = TestApp::spawn(crate::common::Backend::Sqlite).await;
    app.insert(Fixture::pending("a@x.example")).await;
    let page = app.list(Default::default()).await.expect("a page");
    assert_eq!(page.items.len(), 1);
    // `comm` holds the first 15 bytes of a thread's name.
    let name = &invitations::store::SQLITE_READER_THREAD_NAME
        [..invitations::store::SQLITE_READER_THREAD_NAME.len().min(15)];
    let readers = std::fs::read_dir("/proc/self/task")
        .expect("this process's threads")
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|comm| comm.trim_end() == name)
        .count();
    assert!(readers >= 1, "no thread named {name} after a SQLite read");
    app.finish().await;
}
