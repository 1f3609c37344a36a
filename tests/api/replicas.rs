//! Two server processes over one PostgreSQL: one cancel wins across replicas, and paging
//! stays exact while other clients write.
use std::collections::HashSet;
use std::time::Duration;

use invitations::proto::invitations::v1::invitation_service_client::InvitationServiceClient;
use invitations::proto::invitations::v1::{
    CancelInvitationRequest, CreateInvitationRequest, ListInvitationsRequest,
};
use sea_orm::{ConnectionTrait, Database};
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use uuid::Uuid;

use crate::common::{AUDIENCE, Backend, ISSUER, JWT_SECRET, assert_error, authorized};
use crate::operability::await_health;
use crate::process::Served;

fn create(n: usize) -> CreateInvitationRequest {
    CreateInvitationRequest {
        email_constraint: format!("replica{n}-{}@acme.example", Uuid::new_v4().simple()),
        role: format!("roles/{}", Uuid::new_v4()),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_processes_one_database_one_winner_and_exact_pages() {
    let Some(Backend::Postgres(admin_url)) = Backend::postgres() else {
        return;
    };
    let name = format!("invitations_test_{}", Uuid::new_v4().simple());
    let admin = Database::connect(&admin_url).await.expect("connect");
    admin
        .execute_unprepared(&format!("CREATE DATABASE \"{name}\""))
        .await
        .expect("create database");
    let (server, _) = admin_url.rsplit_once('/').expect("a path");
    let url = format!("{server}/{name}");

    let env = [
        ("DATABASE_URL", url.as_str()),
        ("INVITATIONS_RATE_LIMIT_PER_SECOND", "0"),
        ("INVITATIONS_SHUTDOWN_GRACE_MS", "0"),
    ];
    let first = Served::start(&env);
    await_health(
        first.addr,
        "invitations.v1.InvitationService",
        ServingStatus::Serving,
        Duration::from_secs(20),
    )
    .await;
    let second = Served::start(&env);
    await_health(
        second.addr,
        "invitations.v1.InvitationService",
        ServingStatus::Serving,
        Duration::from_secs(20),
    )
    .await;
    let enterprise = invitations::domain::EnterpriseId::from_uuid(Uuid::new_v4());
    let token = invitations::auth::Authenticator::hs256(JWT_SECRET.as_bytes(), ISSUER, AUDIENCE)
        .mint(
            invitations::domain::UserRef::from_uuid(Uuid::new_v4()),
            Some(enterprise),
            &[invitations::auth::ENTERPRISE_ADMIN.to_owned()],
            Duration::from_secs(600),
        );
    let connect = |addr: std::net::SocketAddr| async move {
        InvitationServiceClient::connect(format!("http://{addr}"))
            .await
            .expect("connect")
    };
    let clients: [InvitationServiceClient<Channel>; 2] =
        [connect(first.addr).await, connect(second.addr).await];

    // 50 concurrent cancels of one invitation with one etag, spread over both replicas.
    let invitation = clients[0]
        .clone()
        .create_invitation(authorized(&token, create(0)))
        .await
        .expect("created")
        .into_inner();
    let attempts: Vec<_> = (0..50)
        .map(|n| {
            let mut client = clients[n % 2].clone();
            let request = authorized(
                &token,
                CancelInvitationRequest {
                    invitation_id: invitation.id.clone(),
                    etag: invitation.etag.clone(),
                    ..Default::default()
                },
            );
            tokio::spawn(async move { client.cancel_invitation(request).await })
        })
        .collect();
    let (mut ok, mut aborted) = (Vec::new(), 0);
    for attempt in attempts {
        match attempt.await.expect("task") {
            Ok(response) => ok.push(response.into_inner()),
            Err(status) => {
                assert_error(
                    &status,
                    Code::Aborted,
                    "ETAG_MISMATCH",
                    "precondition_failed",
                    412,
                );
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
        clients[n % 2]
            .clone()
            .create_invitation(authorized(&token, create(n)))
            .await
            .expect("seed");
    }
    let before: HashSet<String> = {
        let mut all = HashSet::new();
        let mut page_token = String::new();
        loop {
            let page = clients[0]
                .clone()
                .list_invitations(authorized(
                    &token,
                    ListInvitationsRequest {
                        page_size: 1000,
                        page_token: page_token.clone(),
                        ..Default::default()
                    },
                ))
                .await
                .expect("list")
                .into_inner();
            all.extend(page.items.into_iter().map(|i| i.id));
            if page.next_page_token.is_empty() {
                break all;
            }
            page_token = page.next_page_token;
        }
    };
    let writer = tokio::spawn({
        let (mut client, token) = (clients[1].clone(), token.clone());
        async move {
            let mut writes = 0;
            for n in 0..60 {
                let created = client
                    .create_invitation(authorized(&token, create(1000 + n)))
                    .await
                    .expect("create");
                let created = created.into_inner();
                if n % 2 == 0 {
                    client
                        .cancel_invitation(authorized(
                            &token,
                            CancelInvitationRequest {
                                invitation_id: created.id,
                                etag: created.etag,
                                ..Default::default()
                            },
                        ))
                        .await
                        .expect("cancel");
                }
                writes += 1;
            }
            writes
        }
    });
    let mut seen = Vec::new();
    let mut page_token = String::new();
    let mut terminated = false;
    for _ in 0..1000 {
        let page = clients[0]
            .clone()
            .list_invitations(authorized(
                &token,
                ListInvitationsRequest {
                    page_size: 7,
                    page_token: page_token.clone(),
                    ..Default::default()
                },
            ))
            .await
            .expect("page")
            .into_inner();
        seen.extend(page.items.into_iter().map(|i| i.id));
        if page.next_page_token.is_empty() {
            terminated = true;
            break;
        }
        page_token = page.next_page_token;
    }
    assert!(terminated, "the walk ends");
    assert!(writer.await.expect("writer") > 0);
    let unique: HashSet<String> = seen.iter().cloned().collect();
    assert_eq!(unique.len(), seen.len(), "no duplicates");
    assert!(
        before.is_subset(&unique),
        "every invitation that existed before the walk is on a page"
    );

    drop((first, second));
    admin
        .execute_unprepared(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .await
        .expect("drop");
    admin.close().await.expect("close");
}
