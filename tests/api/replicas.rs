//! Two server processes over one PostgreSQL: one cancel wins across replicas, and paging
//! stays exact while other clients write.
use std::collections::HashSet;
use std::time::Duration;

use invitations::proto::invitations::v1::invitation_service_client::InvitationServiceClient;
use invitations::proto::invitations::v1::{CreateInvitationRequest, ListInvitationsRequest};
use uuid::Uuid;

use crate::common::{
    AUDIENCE, Backend, Caller, ISSUER, JWT_SECRET, Row, assert_row, cancel_request,
    create_database, create_request, drop_database,
};
use crate::process::Served;

fn create(n: usize) -> CreateInvitationRequest {
    create_request(format!(
        "replica{n}-{}@acme.example",
        Uuid::new_v4().simple()
    ))
}

/// Every invitation id of a walk through the pages of `page_size`, in the order served.
async fn walk(caller: &Caller, page_size: i32) -> Vec<String> {
    let mut seen = Vec::new();
    let mut page_token = String::new();
    for _ in 0..1000 {
        let request = ListInvitationsRequest {
            page_size,
            page_token,
            ..Default::default()
        };
        let page = caller.list(request).await.expect("page");
        seen.extend(page.items.into_iter().map(|i| i.id));
        if page.next_page_token.is_empty() {
            return seen;
        }
        page_token = page.next_page_token;
    }
    panic!("the walk does not end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_processes_one_database_one_winner_and_exact_pages() {
    let Some(Backend::Postgres(admin_url)) = Backend::postgres() else {
        return;
    };
    let (name, url) = create_database(&admin_url).await;

    let env = [
        ("DATABASE_URL", url.as_str()),
        ("INVITATIONS_RATE_LIMIT_PER_SECOND", "0"),
        ("INVITATIONS_SHUTDOWN_GRACE_MS", "0"),
    ];
    let first = Served::start_ready(&env, Duration::from_secs(20)).await;
    let second = Served::start_ready(&env, Duration::from_secs(20)).await;
    let enterprise = invitations::domain::EnterpriseId::from_uuid(Uuid::new_v4());
    let token = invitations::auth::Authenticator::hs256(JWT_SECRET.as_bytes(), ISSUER, AUDIENCE)
        .mint(
            invitations::domain::UserRef::from_uuid(Uuid::new_v4()),
            Some(enterprise),
            &[invitations::auth::ENTERPRISE_ADMIN.to_owned()],
            Duration::from_secs(600),
        );
    let connect = |addr: std::net::SocketAddr| {
        let token = token.clone();
        async move {
            let client = InvitationServiceClient::connect(format!("http://{addr}")).await;
            Caller::new(client.expect("connect"), token)
        }
    };
    let callers = [connect(first.addr).await, connect(second.addr).await];

    // 50 concurrent cancels of one invitation with one etag, spread over both replicas.
    let invitation = callers[0].create(create(0)).await.expect("created");
    let attempts: Vec<_> = (0..50)
        .map(|n| callers[n % 2].spawn_cancel(cancel_request(&invitation.id, &invitation.etag)))
        .collect();
    let (mut ok, mut aborted) = (Vec::new(), 0);
    for attempt in attempts {
        match attempt.await.expect("task") {
            Ok(cancelled) => ok.push(cancelled),
            Err(status) => {
                assert_row(&status, Row::EtagMismatch);
                aborted += 1;
            }
        }
    }
    assert_eq!((ok.len(), aborted), (1, 49));
    assert!(
        invitation.etag.starts_with("W/\"1.") && ok[0].etag.starts_with("W/\"2."),
        "the version moved by one"
    );

    // Paging on one replica while the other creates and cancels.
    for n in 0..150 {
        callers[n % 2].create(create(n)).await.expect("seed");
    }
    let before: HashSet<String> = walk(&callers[0], 1000).await.into_iter().collect();
    let writer = tokio::spawn({
        let writer = callers[1].clone();
        async move {
            let mut writes = 0;
            for n in 0..60 {
                let created = writer.create(create(1000 + n)).await.expect("create");
                if n % 2 == 0 {
                    let cancel = cancel_request(created.id, created.etag);
                    writer.cancel(cancel).await.expect("cancel");
                }
                writes += 1;
            }
            writes
        }
    });
    let seen = walk(&callers[0], 7).await;
    assert!(writer.await.expect("writer") > 0);
    let unique: HashSet<String> = seen.iter().cloned().collect();
    assert_eq!(unique.len(), seen.len(), "no duplicates");
    assert!(
        before.is_subset(&unique),
        "every invitation that existed before the walk is on a page"
    );

    drop((first, second));
    drop_database(&admin_url, &name).await;
}
