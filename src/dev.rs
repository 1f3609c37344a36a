//! Developer conveniences: the `dev` demo and `mint-token`.
use std::time::Duration;

use uuid::Uuid;

use crate::auth::Authenticator;
use crate::config::{Config, ConfigError, Secret};
use crate::domain::{Actor, Error, EventRecord, EventType, InvitationRepository};
use crate::domain::{
    CancelReason, EmailAddress, EnterpriseId, Invitation, InvitationId, InvitationStatus,
    LinkToken, RoleRef, Scope, Timestamp, UserRef, Version,
};
use crate::startup::{Application, shutdown_signal};
use crate::store::Store;

const HOUR: Duration = Duration::from_secs(3600);

/// Prints a token signed with the configured secret.
pub fn mint_token(
    config: &Config,
    sub: Option<String>,
    enterprise: Option<String>,
    capabilities: &[String],
    ttl_secs: u64,
) -> Result<String, ConfigError> {
    let jwt = config.jwt_settings()?;
    let subject = match sub {
        Some(raw) => {
            UserRef::parse(&raw).map_err(|_| ConfigError("--sub must be users/{uuid}".into()))?
        }
        None => UserRef::from_uuid(Uuid::new_v4()),
    };
    let enterprise = enterprise
        .map(|raw| EnterpriseId::parse_ref(&raw))
        .transpose()
        .map_err(|_| ConfigError("--enterprise must be enterprises/{uuid}".into()))?;
    let authenticator = Authenticator::hs256(jwt.hs256_secret.expose(), &jwt.issuer, &jwt.audience);
    Ok(authenticator.mint(
        subject,
        enterprise,
        capabilities,
        Duration::from_secs(ttl_secs),
    ))
}

/// What the demo seeded.
#[derive(Debug, Clone)]
pub struct Demo {
    pub enterprise: EnterpriseId,
    pub admin: UserRef,
    pub invitations: Vec<Invitation>,
}

/// Seeds one enterprise with a few dozen invitations in every status: 16 pending,
/// 8 accepted, 8 cancelled, and 8 expired (half stored as expired, half still stored as
/// pending with `expires_at` in the past, which every read reports as expired).
pub async fn seed_demo(store: &Store) -> Result<Demo, Error> {
    let enterprise = EnterpriseId::from_uuid(Uuid::new_v4());
    let admin = UserRef::from_uuid(Uuid::new_v4());
    let role = RoleRef::from_uuid(Uuid::new_v4());
    let now = Timestamp::now();
    let mut invitations = Vec::new();
    let plan = [
        (InvitationStatus::Pending, 16),
        (InvitationStatus::Accepted, 8),
        (InvitationStatus::Cancelled, 8),
        (InvitationStatus::Expired, 8),
    ];
    let mut n = 0u32;
    for (status, count) in plan {
        for i in 0..count {
            n += 1;
            let created_at = now.saturating_sub(HOUR * (n * 5));
            let email =
                EmailAddress::parse(&format!("{}{:02}@acme.example", status.as_str(), i + 1))
                    .map_err(|e| Error::Internal(format!("demo address: {e:?}")))?;
            let mut invitation = Invitation {
                id: InvitationId::generate(),
                enterprise,
                scope: Scope::enterprise_root(enterprise),
                email,
                role,
                stored_status: InvitationStatus::Pending,
                invited_by: admin,
                pending_human_actor: (i % 3 == 0).then(|| UserRef::from_uuid(Uuid::new_v4())),
                challenge_ref: None,
                created_at,
                updated_at: created_at,
                expires_at: created_at.saturating_add(HOUR * 24 * 7),
                accepted_at: None,
                accepted_by: None,
                cancelled_at: None,
                cancel_reason: None,
                cancelled_by: None,
                version: Version::FIRST,
            };
            let changed_at = created_at.saturating_add(HOUR);
            match status {
                InvitationStatus::Pending => {}
                InvitationStatus::Accepted => {
                    invitation.stored_status = InvitationStatus::Accepted;
                    invitation.accepted_at = Some(changed_at);
                    invitation.accepted_by = Some(UserRef::from_uuid(Uuid::new_v4()));
                    invitation.updated_at = changed_at;
                    invitation.version = Version::FIRST.next();
                }
                InvitationStatus::Cancelled => {
                    invitation.stored_status = InvitationStatus::Cancelled;
                    invitation.cancelled_at = Some(changed_at);
                    invitation.cancelled_by = Some(admin);
                    invitation.cancel_reason = CancelReason::parse("sent to the wrong address")
                        .ok()
                        .flatten();
                    invitation.updated_at = changed_at;
                    invitation.version = Version::FIRST.next();
                }
                InvitationStatus::Expired => {
                    invitation.expires_at = created_at.saturating_add(HOUR);
                    if i % 2 == 0 {
                        invitation.stored_status = InvitationStatus::Expired;
                        invitation.updated_at = invitation.expires_at;
                        invitation.version = Version::FIRST.next();
                    }
                }
            }
            store.insert_raw(&invitation).await?;
            invitations.push(invitation);
        }
    }
    Ok(Demo {
        enterprise,
        admin,
        invitations,
    })
}

/// `invitations dev`: a fresh SQLite database (unless `--database-url` names one), a demo
/// enterprise, a token and commands to paste.
pub async fn run(config: &Config) -> Result<(), Box<dyn std::error::Error>> {
    let mut config = config.clone();
    if config.database_url == crate::config::DEFAULT_DATABASE_URL {
        let path = std::env::temp_dir().join("invitations-dev.db");
        for suffix in ["", "-wal", "-shm"] {
            let file = format!("{}{suffix}", path.display());
            match std::fs::remove_file(&file) {
                Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                    return Err(error.into());
                }
                _ => {}
            }
        }
        config.database_url = format!("sqlite://{}", path.display()).into();
    }
    if config.jwt_hs256_secret.is_none() {
        let random: String = format!("{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple());
        config.jwt_hs256_secret = Some(Secret::new(random));
    }
    // Listening before the banner: a Ctrl-C right after it is a shutdown, not a kill.
    let stop = shutdown_signal();
    let mut settings = config.settings()?;
    // Ctrl-C stops dev mode at once: no grace delay (no load balancer has to see it leave)
    // and at most a second for calls in flight.
    settings.server.shutdown_grace = Duration::ZERO;
    settings.server.shutdown_drain = settings.server.shutdown_drain.min(Duration::from_secs(1));
    let app = Application::build(&settings).await?;
    app.store().migrate().await?;
    let demo = seed_demo(app.store()).await?;
    let token = app.authenticator().mint(
        demo.admin,
        Some(demo.enterprise),
        &[crate::auth::ENTERPRISE_ADMIN.to_owned()],
        HOUR * 24,
    );
    let addr = app.local_addr();
    let now = Timestamp::now();
    let mut pending = demo
        .invitations
        .iter()
        .filter(|i| i.stored_status == InvitationStatus::Pending && i.expires_at > now);
    let pending_to_cancel = pending.next().ok_or("the demo has no pending invitation")?;
    let pending_to_accept = pending
        .next()
        .ok_or("the demo has one pending invitation only")?;
    let link = LinkToken::generate()?;
    app.store()
        .issue_link(
            demo.enterprise,
            pending_to_accept.id,
            None,
            link.hash(),
            None,
            &EventRecord::of(EventType::LinkIssued, Actor::User(demo.admin), now),
        )
        .await?
        .ok_or("the demo link could not be issued")?;
    let invitee_token = app.authenticator().mint_invitee(
        UserRef::from_uuid(Uuid::new_v4()),
        pending_to_accept.email.as_str(),
        HOUR * 24,
    );
    let pending = pending_to_cancel;
    let etag_json = pending.etag().as_str().replace('"', "\\\"");
    println!(
        r#"
invitations dev mode: {count} demo invitations in {enterprise}
database: {db}

export TOKEN='{token}'

# what the server offers (reflection):
grpcurl -plaintext {addr} list
grpcurl -plaintext {addr} describe invitations.v1.InvitationService

# list the first page of 5, then only the cancelled ones:
grpcurl -plaintext -H "authorization: Bearer $TOKEN" -d '{{"page_size": 5}}' {addr} invitations.v1.InvitationService/ListInvitations
grpcurl -plaintext -H "authorization: Bearer $TOKEN" -d '{{"statuses": ["INVITATION_STATUS_CANCELLED"]}}' {addr} invitations.v1.InvitationService/ListInvitations

# watch the changes as they happen (in another terminal; Ctrl-C stops it), with the current pending invitations first:
grpcurl -plaintext -H "authorization: Bearer $TOKEN" -d '{{"send_initial_state": true, "statuses": ["INVITATION_STATUS_PENDING"]}}' {addr} invitations.v1.InvitationService/WatchInvitations

# get one pending invitation, then cancel it with its etag (run the cancel twice: the second answers ABORTED with the new etag):
grpcurl -plaintext -H "authorization: Bearer $TOKEN" -d '{{"invitation_id": "{id}"}}' {addr} invitations.v1.InvitationService/GetInvitation
grpcurl -plaintext -H "authorization: Bearer $TOKEN" -d '{{"invitation_id": "{id}", "etag": "{etag}", "reason": "demo"}}' {addr} invitations.v1.InvitationService/CancelInvitation

# accept another invitation through its link, as the invitee ({invitee_email}, verified):
export INVITEE_TOKEN='{invitee_token}'
grpcurl -plaintext -H "authorization: Bearer $INVITEE_TOKEN" -d '{{"token": "{link}"}}' {addr} invitations.v1.InvitationService/AcceptInvitation

# issue (or rotate) a link yourself:
grpcurl -plaintext -H "authorization: Bearer $TOKEN" -d '{{"invitation_id": "{id}"}}' {addr} invitations.v1.InvitationService/IssueInvitationToken

# health:
grpcurl -plaintext -d '{{"service": "invitations.v1.InvitationService"}}' {addr} grpc.health.v1.Health/Check

Ctrl-C stops the server.
"#,
        count = demo.invitations.len(),
        enterprise = demo.enterprise,
        db = settings.store.url,
        id = pending.id,
        etag = etag_json,
        invitee_email = pending_to_accept.email.as_str(),
        link = link.reveal(),
    );
    app.run_until(stop).await?;
    Ok(())
}
