//! The authorization matrix: every RPC (WatchInvitations as it opens) x {no capability, admin of A, admin of B} x
//! {invitation of A, of B, nonexistent}, each cell with its exact code; a cross-enterprise
//! id answers exactly like a nonexistent one.
use std::collections::HashMap;
use std::time::Duration;

use invitations::domain::{EnterpriseId, Invitation, UserRef};
use invitations::proto::invitations::v1::{
    CreateInvitationRequest, ListInvitationsRequest, WatchInvitationsRequest,
};
use tonic::{Code, Status};
use tonic_types::StatusExt;
use uuid::Uuid;

use crate::common::{Fixture, Row, TestApp, cancel_request, create_request, issue_request};
use crate::on_both_stores;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    NoCapability,
    AdminOfA,
    AdminOfB,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    OfA,
    OfB,
    Nonexistent,
}

/// What a call answered: its code, and for errors what a client can compare.
type Answer = (
    Code,
    Option<(String, String, HashMap<String, String>, usize)>,
);

fn answer<T>(outcome: Result<T, Status>, id: &str) -> Answer {
    match outcome {
        Ok(_) => (Code::Ok, None),
        Err(status) => {
            let info = status
                .get_details_error_info()
                .expect("ErrorInfo on every error");
            let mut metadata = info.metadata;
            for value in metadata.values_mut() {
                *value = value.replace(id, "ID");
            }
            let shape = (
                status.message().to_owned(),
                info.reason,
                metadata,
                status.get_error_details_vec().len(),
            );
            (status.code(), Some(shape))
        }
    }
}

async fn call(
    app: &TestApp,
    rpc: &str,
    token: &str,
    invitation: Option<&Invitation>,
    scope_of: EnterpriseId,
) -> Answer {
    let id = invitation.map_or_else(|| Uuid::new_v4().to_string(), |i| i.id.to_string());
    let etag = invitation.map_or_else(
        || "W/\"1.00000000\"".to_owned(),
        |i| i.etag().as_str().to_owned(),
    );
    let caller = app.caller(token);
    let scope = scope_of.to_string();
    match rpc {
        "List" => {
            let request = ListInvitationsRequest {
                scope,
                ..Default::default()
            };
            answer(caller.list(request).await, &id)
        }
        "Watch" => {
            let request = WatchInvitationsRequest {
                scope,
                ..Default::default()
            };
            let opened = crate::watch::open_with(&mut app.client(), token, request).await;
            answer(opened, &id)
        }
        "Get" => answer(caller.get(&id).await, &id),
        "Create" => {
            let request = CreateInvitationRequest {
                scope,
                ..create_request(format!("{}@acme.example", Uuid::new_v4()))
            };
            answer(caller.create(request).await, &id)
        }
        "Cancel" => answer(caller.cancel(cancel_request(&id, etag)).await, &id),
        "IssueToken" => answer(caller.issue(issue_request(&id)).await, &id),
        "Accept" => answer(caller.accept(&format!("inv_{}", "A".repeat(43))).await, &id),
        other => unreachable!("{other}"),
    }
}

async fn every_rpc_caller_and_target_has_its_exact_code(app: &TestApp) {
    let (enterprise_b, admin_b) = app.other_enterprise_admin();
    let enterprise_a = app.enterprise;
    let no_capability = app.authenticator.mint(
        UserRef::from_uuid(Uuid::new_v4()),
        Some(enterprise_a),
        &["viewer".to_owned()],
        Duration::from_secs(600),
    );
    let mut cells = 0;
    for rpc in [
        "List",
        "Watch",
        "Get",
        "Create",
        "Cancel",
        "IssueToken",
        "Accept",
    ] {
        for who in [Who::NoCapability, Who::AdminOfA, Who::AdminOfB] {
            let (token, own) = match who {
                Who::NoCapability => (no_capability.as_str(), enterprise_a),
                Who::AdminOfA => (app.token.as_str(), enterprise_a),
                Who::AdminOfB => (admin_b.as_str(), enterprise_b),
            };
            let mut nonexistent_answer = None;
            for target in [Target::OfA, Target::OfB, Target::Nonexistent] {
                // A fresh invitation per cell, so cells never see each other's writes.
                let (invitation, scope_of) = match target {
                    Target::OfA => (
                        Some(
                            app.insert(Fixture::pending(format!("{}@a.example", Uuid::new_v4())))
                                .await,
                        ),
                        enterprise_a,
                    ),
                    Target::OfB => (
                        Some(
                            app.insert_in(
                                enterprise_b,
                                Fixture::pending(format!("{}@b.example", Uuid::new_v4())),
                            )
                            .await,
                        ),
                        enterprise_b,
                    ),
                    Target::Nonexistent => (None, EnterpriseId::from_uuid(Uuid::new_v4())),
                };
                let got = call(app, rpc, token, invitation.as_ref(), scope_of).await;
                let owned = scope_of == own && invitation.is_some();
                let expected = match (rpc, who) {
                    ("Accept", _) => Code::PermissionDenied, // no verified e-mail in any of these tokens
                    (_, Who::NoCapability) => Code::PermissionDenied,
                    ("List" | "Watch" | "Create", _) if scope_of == own => Code::Ok,
                    ("List" | "Watch" | "Create", _) => Code::PermissionDenied, // a scope outside the caller's
                    (_, _) if owned => Code::Ok,
                    (_, _) => Code::NotFound,
                };
                assert_eq!(got.0, expected, "{rpc} by {who:?} on {target:?}: {got:?}");
                if let Some((_, reason, _, _)) = &got.1 {
                    let wanted = match got.0 {
                        Code::PermissionDenied if rpc == "Accept" => Row::EmailNotVerified,
                        Code::PermissionDenied if who == Who::NoCapability => {
                            Row::EnterpriseAdminRequired
                        }
                        Code::PermissionDenied => Row::ScopeNotPermitted,
                        Code::NotFound => Row::InvitationNotFound,
                        other => panic!("{rpc} by {who:?} on {target:?}: unexpected {other:?}"),
                    };
                    assert_eq!(reason, wanted.reason(), "{rpc} by {who:?} on {target:?}");
                }
                // An invitation of the other enterprise is indistinguishable from none.
                match target {
                    Target::Nonexistent => nonexistent_answer = Some(got.clone()),
                    _ if got.0 == Code::NotFound => {
                        let missing = call(app, rpc, token, None, scope_of).await;
                        assert_eq!(
                            got, missing,
                            "{rpc} by {who:?}: cross-enterprise versus nonexistent"
                        );
                    }
                    _ => {}
                }
                cells += 1;
            }
            assert!(nonexistent_answer.is_some());
        }
    }
    assert_eq!(cells, 7 * 3 * 3);
}

on_both_stores!(every_rpc_caller_and_target_has_its_exact_code);
