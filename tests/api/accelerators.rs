//! The store's accelerators (docs/adr/) answer exactly as SeaORM's plain path does: two
//! servers on one database, one with every accelerator and one with none, asked the same
//! questions, give the same answers, and what one writes the other reads back unchanged.
use invitations::domain::InvitationStatus;
use invitations::proto::invitations::v1::{
    CancelInvitationRequest, GetInvitationRequest, InvitationStatus as WireStatus,
    ListInvitationsRequest,
};
use invitations::store::Accelerators;

use crate::common::{Fixture, TestApp};
use crate::on_both_stores;

async fn accelerators_answer_as_the_plain_path_does(app: &TestApp) {
    for i in 0..12 {
        let status = match i % 4 {
            0 => InvitationStatus::Pending,
            1 => InvitationStatus::Accepted,
            2 => InvitationStatus::Cancelled,
            _ => InvitationStatus::Pending,
        };
        let mut fixture = Fixture::new(format!("person{i}@acme.example"), status);
        if i % 3 == 0 {
            fixture = fixture.scope(format!(
                "enterprises/{}/teams/blue",
                app.enterprise.as_uuid()
            ));
        }
        app.insert(fixture).await;
    }
    let (mut plain, stop, server) = app
        .replica_with(|settings| settings.store_accelerators = Accelerators::NONE)
        .await;
    let mut accelerated = app.client();

    // Reads: every filter the page statement has a shape for, walked page by page.
    let blue = format!("enterprises/{}/teams/blue", app.enterprise.as_uuid());
    let queries = [
        ListInvitationsRequest::default(),
        ListInvitationsRequest {
            page_size: 5,
            ..Default::default()
        },
        ListInvitationsRequest {
            statuses: vec![WireStatus::Pending as i32, WireStatus::Cancelled as i32],
            page_size: 3,
            ..Default::default()
        },
        ListInvitationsRequest {
            scope: blue.clone(),
            ..Default::default()
        },
        ListInvitationsRequest {
            email_constraint: "PERSON4@acme.example".into(),
            ..Default::default()
        },
    ];
    for query in queries {
        let mut request = query.clone();
        loop {
            let fast = accelerated
                .list_invitations(app.request(request.clone()))
                .await
                .expect("accelerated page")
                .into_inner();
            let slow = plain
                .list_invitations(app.request(request.clone()))
                .await
                .expect("plain page")
                .into_inner();
            assert_eq!(fast, slow, "{request:?}");
            if fast.next_page_token.is_empty() {
                break;
            }
            request.page_token = fast.next_page_token;
        }
    }

    // Writes on the plain path read back the same on the accelerated one, and back.
    let page = accelerated
        .list_invitations(app.request(ListInvitationsRequest {
            statuses: vec![WireStatus::Pending as i32],
            ..Default::default()
        }))
        .await
        .expect("pending")
        .into_inner()
        .items;
    assert!(page.len() >= 2);
    // Clients are cheap handles on one channel: a clone per direction.
    let directions = [
        (plain.clone(), accelerated.clone()),
        (accelerated.clone(), plain.clone()),
    ];
    for (invitation, (mut writer, mut reader)) in page.iter().zip(directions) {
        let cancelled = writer
            .cancel_invitation(app.request(CancelInvitationRequest {
                invitation_id: invitation.id.clone(),
                etag: invitation.etag.clone(),
                reason: "equivalence".into(),
                ..Default::default()
            }))
            .await
            .expect("cancelled")
            .into_inner();
        assert_eq!(cancelled.status, WireStatus::Cancelled as i32);
        let read = reader
            .get_invitation(app.request(GetInvitationRequest {
                invitation_id: invitation.id.clone(),
            }))
            .await
            .expect("read back")
            .into_inner();
        assert_eq!(read, cancelled);
    }
    let _ = stop.send(());
    server.await.expect("the plain server stops");
}

on_both_stores!(accelerators_answer_as_the_plain_path_does);
