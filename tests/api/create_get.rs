//! CreateInvitation and GetInvitation.
use std::time::Duration;

use invitations::domain::{InvitationStatus, Timestamp};
use invitations::proto::invitations::v1::{
    CreateInvitationRequest, InvitationStatus as WireStatus,
};
use prost_types::Timestamp as WireTimestamp;
use tonic_types::StatusExt;
use uuid::Uuid;

use crate::common::{
    Fixture, Row, TestApp, assert_invalid, assert_row, cancel_request, create_request,
};
use crate::on_both_stores;

fn wire(at: Timestamp) -> WireTimestamp {
    WireTimestamp {
        seconds: at.unix_micros().div_euclid(1_000_000),
        nanos: 0,
    }
}

/// A create for `email` that expires at `at`.
fn expiring(email: &str, at: Timestamp) -> CreateInvitationRequest {
    CreateInvitationRequest {
        expires_at: Some(wire(at)),
        ..create_request(email)
    }
}

async fn create_then_get_round_trips(app: &TestApp) {
    let before = Timestamp::now();
    let created = app
        .create(CreateInvitationRequest {
            pending_human_actor_ref: format!("users/{}", Uuid::new_v4()),
            scope: format!("{}/teams/blue", app.enterprise),
            ..create_request("New.Hire@Acme.Example")
        })
        .await
        .expect("created");
    assert_eq!(created.status, WireStatus::Pending as i32);
    assert_eq!(created.email_constraint, "New.Hire@Acme.Example");
    assert_eq!(created.enterprise_ref, app.enterprise.to_string());
    assert_eq!(created.scope, format!("{}/teams/blue", app.enterprise));
    assert_eq!(created.invited_by, app.admin.to_string());
    assert!(created.pending_human_actor_ref.is_some());
    assert_eq!(created.challenge_ref, None);
    assert_eq!(created.cancelled_at, None);
    assert_eq!(created.created_at, created.updated_at);
    // Default lifetime: seven days.
    let expires = created.expires_at.expect("expires_at").seconds;
    let week = before
        .saturating_add(Duration::from_secs(7 * 24 * 3600))
        .unix_micros()
        / 1_000_000;
    assert!(
        (week..=week + 60).contains(&expires),
        "expires in about 7 days"
    );

    let fetched = app.fetch(created.id.clone()).await;
    assert_eq!(fetched, created);
    // And it can be cancelled with the etag Create returned.
    app.cancel(cancel_request(&created.id, &created.etag))
        .await
        .expect("cancel with the etag from create");
}

async fn a_second_pending_invitation_for_an_address_already_exists(app: &TestApp) {
    let first = app
        .create(create_request("dup@acme.example"))
        .await
        .expect("first");
    let status = app
        .create(create_request("DUP@acme.example"))
        .await
        .expect_err("duplicate, whatever the case");
    assert_row(&status, Row::InvitationAlreadyExists);
    let resource = status.get_details_resource_info().expect("ResourceInfo");
    assert_eq!(resource.resource_type, "invitations.v1.Invitation");
    assert_eq!(resource.resource_name, format!("invitations/{}", first.id));
    // A lapsed pending invitation does not block a new one, and is then stored as expired.
    let lapsed = app.insert(Fixture::lapsed("again@acme.example")).await;
    app.create(create_request("again@acme.example"))
        .await
        .expect("the lapsed one does not count");
    let stored = app.stored(lapsed.id).await;
    assert_eq!(stored.stored_status, InvitationStatus::Expired);
    assert_eq!(
        stored.version,
        lapsed.version.next(),
        "a stored change moves the etag"
    );
    // Another enterprise may invite the same address.
    let (_, other) = app.other_enterprise_admin();
    app.caller(&other)
        .create(create_request("dup@acme.example"))
        .await
        .expect("other enterprise");
}

async fn concurrent_creates_for_one_address_make_one_invitation(app: &TestApp) {
    let attempts: Vec<_> = (0..10)
        .map(|_| {
            let admin = app.caller(&app.token);
            tokio::spawn(async move { admin.create(create_request("once@acme.example")).await })
        })
        .collect();
    let mut created = 0;
    for attempt in attempts {
        match attempt.await.expect("task") {
            Ok(_) => created += 1,
            Err(status) => {
                assert_row(&status, Row::InvitationAlreadyExists);
            }
        }
    }
    assert_eq!(created, 1);
}

async fn bad_create_requests_name_each_field(app: &TestApp) {
    let status = app
        .create(CreateInvitationRequest::default())
        .await
        .expect_err("empty");
    assert_invalid(
        &status,
        &[
            ("email_constraint", Row::MissingRequiredField),
            ("role", Row::MissingRequiredField),
        ],
    );
    let now = Timestamp::now();
    for (expires_at, why) in [
        (now.saturating_sub(Duration::from_secs(60)), "past"),
        (
            now.saturating_add(Duration::from_secs(31 * 24 * 3600)),
            "beyond 30 days",
        ),
    ] {
        let status = app
            .create(expiring("when@acme.example", expires_at))
            .await
            .expect_err(why);
        assert_invalid(&status, &[("expires_at", Row::ValueOutOfRange)]);
    }
    let status = app
        .create(CreateInvitationRequest {
            role: "admin".into(),
            pending_human_actor_ref: "bob".into(),
            expires_at: Some(WireTimestamp {
                seconds: 0,
                nanos: -5,
            }),
            ..create_request("jane@")
        })
        .await
        .expect_err("malformed");
    assert_invalid(
        &status,
        &[
            ("email_constraint", Row::InvalidFormat),
            ("role", Row::InvalidFormat),
            ("pending_human_actor_ref", Row::InvalidFormat),
            ("expires_at", Row::InvalidFormat),
        ],
    );
    // A custom lifetime inside the bounds is kept to the second.
    let at = now.saturating_add(Duration::from_secs(3 * 24 * 3600));
    let created = app
        .create(expiring("ok@acme.example", at))
        .await
        .expect("in bounds");
    assert_eq!(created.expires_at, Some(wire(at)));
}

async fn get_reports_the_effective_status(app: &TestApp) {
    for (fixture, expected) in [
        (Fixture::pending("p@acme.example"), WireStatus::Pending),
        (Fixture::lapsed("l@acme.example"), WireStatus::Expired),
        (
            Fixture::new("e@acme.example", InvitationStatus::Expired),
            WireStatus::Expired,
        ),
        (
            Fixture::new("a@acme.example", InvitationStatus::Accepted),
            WireStatus::Accepted,
        ),
        (
            Fixture::new("c@acme.example", InvitationStatus::Cancelled),
            WireStatus::Cancelled,
        ),
    ] {
        let invitation = app.insert(fixture).await;
        let fetched = app.fetch(invitation.id.to_string()).await;
        assert_eq!(
            fetched.status,
            expected as i32,
            "{}",
            invitation.email.as_str()
        );
        assert_eq!(fetched.etag, invitation.etag().as_str());
        assert_eq!(
            fetched.accepted_at.is_some(),
            expected == WireStatus::Accepted
        );
        assert_eq!(
            fetched.accepted_by.is_some(),
            expected == WireStatus::Accepted
        );
    }
}

on_both_stores!(
    create_then_get_round_trips,
    a_second_pending_invitation_for_an_address_already_exists,
    concurrent_creates_for_one_address_make_one_invitation,
    bad_create_requests_name_each_field,
    get_reports_the_effective_status,
);
