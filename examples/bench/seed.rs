//! The seeded data: deterministic, so the harness, SQL and pgbench agree without a lookup.

use invitations::domain::{
    CancelReason, EmailAddress, EnterpriseId, Invitation, InvitationId, InvitationStatus, RoleRef,
    Scope, Timestamp, UserRef, Version,
};
use uuid::Uuid;

use crate::plan::{Layout, StoreKind};

pub(crate) const COLUMNS: [&str; 20] = [
    "id",
    "enterprise_id",
    "scope",
    "email_constraint",
    "email_normalized",
    "role",
    "status",
    "invited_by",
    "pending_human_actor_ref",
    "challenge_ref",
    "created_at",
    "updated_at",
    "expires_at",
    "accepted_at",
    "accepted_by",
    "cancelled_at",
    "cancel_reason",
    "cancelled_by",
    "version",
    "link_token_hash",
];

/// `{prefix:08x}-0000-4000-8000-{n:012x}`.
pub(crate) fn mk_uuid(prefix: u32, n: u64) -> Uuid {
    Uuid::from_u128(
        (u128::from(prefix) << 96) | (0x4000u128 << 64) | (0x8000u128 << 48) | u128::from(n),
    )
}
pub(crate) const ID_PREFIX: u32 = 0xa000_0000;
pub(crate) const POOL_PREFIX: u32 = 0xc000_0000;
const ENTERPRISE_PREFIX: u32 = 0xe000_0000;
pub(crate) fn enterprise_uuid(e: u64) -> Uuid {
    mk_uuid(ENTERPRISE_PREFIX, e)
}
pub(crate) fn admin_uuid() -> Uuid {
    mk_uuid(0xb000_0000, 1)
}
fn acceptor_uuid() -> Uuid {
    mk_uuid(0xb000_0000, 2)
}
pub(crate) fn role_uuid() -> Uuid {
    mk_uuid(0xd000_0000, 1)
}

/// Instants shared by the seed and the load.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    /// created_at of row 0; row i is `t0 - i ms` (row 0 is the newest).
    t0: i64,
    /// expires_at of every live pending row.
    expires: i64,
}

impl Clock {
    pub(crate) fn now() -> Self {
        let now = Timestamp::now().unix_micros();
        Self {
            t0: now - 3_600_000_000,
            expires: now + 7 * 24 * 3_600_000_000,
        }
    }
    pub(crate) fn created_at(self, i: u64) -> i64 {
        self.t0 - i as i64 * 1000
    }
}

/// Row `i` as a domain invitation, exactly as the seed SQL writes it.
/// Status by `i % 4`: pending, accepted, cancelled, expired; every third row has the
/// sub-scope `…/teams/blue`; four consecutive rows share an address. No pending row has
/// lapsed: the service's sweeper stores such rows as expired within seconds, so a dataset
/// with many of them would be swept while it is measured.
pub(crate) fn seeded_invitation(layout: Layout, i: u64, clock: Clock) -> Invitation {
    let e = EnterpriseId::from_uuid(enterprise_uuid(i % layout.enterprises()));
    let c = clock.created_at(i);
    let kind = i % 4;
    let scope = if i % 3 == 1 {
        format!("{e}/teams/blue")
    } else {
        e.to_string()
    };
    let admin = UserRef::from_uuid(admin_uuid());
    Invitation {
        id: InvitationId::from_uuid(mk_uuid(ID_PREFIX, i)),
        enterprise: e,
        scope: Scope::parse(&scope).expect("seeded scope"),
        email: EmailAddress::parse(&format!("user{}@example.com", i / 4)).expect("address"),
        role: RoleRef::from_uuid(role_uuid()),
        stored_status: match kind {
            0 => InvitationStatus::Pending,
            1 => InvitationStatus::Accepted,
            2 => InvitationStatus::Cancelled,
            _ => InvitationStatus::Expired,
        },
        invited_by: admin,
        pending_human_actor: None,
        challenge_ref: None,
        created_at: Timestamp::from_unix_micros(c),
        updated_at: Timestamp::from_unix_micros(if kind == 0 { c } else { c + 60_000_000 }),
        expires_at: Timestamp::from_unix_micros(if kind == 3 {
            c + 1_000_000
        } else {
            clock.expires
        }),
        accepted_at: (kind == 1).then(|| Timestamp::from_unix_micros(c + 60_000_000)),
        accepted_by: (kind == 1).then(|| UserRef::from_uuid(acceptor_uuid())),
        cancelled_at: (kind == 2).then(|| Timestamp::from_unix_micros(c + 60_000_000)),
        cancel_reason: (kind == 2)
            .then(|| CancelReason::parse("seeded").ok().flatten())
            .flatten(),
        cancelled_by: (kind == 2).then_some(admin),
        version: if kind == 0 {
            Version::FIRST
        } else {
            Version::FIRST.next()
        },
    }
}

/// SQL that writes rows `from..from+count` (or cancel-pool rows) as [`seeded_invitation`] does.
pub(crate) fn seed_sql(
    store: StoreKind,
    layout: Layout,
    from: u64,
    count: u64,
    clock: Clock,
    pool: bool,
) -> String {
    let end = from + count;
    let ents = layout.enterprises();
    let cols = COLUMNS.join(", ");
    let role = format!("roles/{}", role_uuid());
    let admin = format!("users/{}", admin_uuid());
    let acceptor = format!("users/{}", acceptor_uuid());
    let Clock { t0, expires } = clock;
    // Pool rows are older than every seeded row, so they never show on a first page.
    let pool_t0 = t0 - 2_000_000_000_000;
    type Render1 = fn(&str) -> String;
    type Render2 = fn(&str, &str) -> String;
    let (series, id_hex, ent_text, ent_key): (String, Render2, Render1, Render1) = match store {
        StoreKind::Postgres => (
            format!("generate_series({from}::bigint, {}::bigint) AS i", end - 1),
            |prefix: &str, v: &str| {
                format!("('{prefix}-0000-4000-8000-' || lpad(to_hex({v}), 12, '0'))::uuid")
            },
            |v: &str| format!("('e0000000-0000-4000-8000-' || lpad(to_hex({v}), 12, '0'))"),
            |v: &str| format!("('e0000000-0000-4000-8000-' || lpad(to_hex({v}), 12, '0'))::uuid"),
        ),
        StoreKind::Sqlite => (
            "s".to_owned(),
            |prefix: &str, v: &str| format!("unhex(printf('{prefix}000040008000%012x', {v}))"),
            |v: &str| format!("printf('e0000000-0000-4000-8000-%012x', {v})"),
            |v: &str| format!("unhex(printf('e0000000000040008000%012x', {v}))"),
        ),
    };
    let ent_of = if ents == 1 {
        "0".to_owned()
    } else {
        format!("(i % {ents})")
    };
    let body = if pool {
        format!(
            "SELECT {id}, {ek}, 'enterprises/' || {et}, 'pool' || i || '@example.com', \
             'pool' || i || '@example.com', '{role}', 'pending', '{admin}', NULL, NULL, \
             {pool_t0} - i, {pool_t0} - i, {expires}, NULL, NULL, NULL, NULL, NULL, 1, NULL \
             FROM {series}",
            id = id_hex("c0000000", "i"),
            ek = ent_key(&ent_of),
            et = ent_text(&ent_of),
        )
    } else {
        format!(
            "SELECT {id}, {ek}, \
             CASE WHEN i % 3 = 1 THEN 'enterprises/' || {et} || '/teams/blue' ELSE 'enterprises/' || {et} END, \
             'user' || (i / 4) || '@example.com', 'user' || (i / 4) || '@example.com', '{role}', \
             CASE i % 4 WHEN 0 THEN 'pending' WHEN 1 THEN 'accepted' WHEN 2 THEN 'cancelled' ELSE 'expired' END, \
             '{admin}', NULL, NULL, \
             {t0} - i * 1000, \
             CASE WHEN i % 4 = 0 THEN {t0} - i * 1000 ELSE {t0} - i * 1000 + 60000000 END, \
             CASE WHEN i % 4 = 3 THEN {t0} - i * 1000 + 1000000 ELSE {expires} END, \
             CASE WHEN i % 4 = 1 THEN {t0} - i * 1000 + 60000000 END, \
             CASE WHEN i % 4 = 1 THEN '{acceptor}' END, \
             CASE WHEN i % 4 = 2 THEN {t0} - i * 1000 + 60000000 END, \
             CASE WHEN i % 4 = 2 THEN 'seeded' END, \
             CASE WHEN i % 4 = 2 THEN '{admin}' END, \
             CASE WHEN i % 4 = 0 THEN 1 ELSE 2 END, NULL \
             FROM {series}",
            id = id_hex("a0000000", "i"),
            ek = ent_key(&ent_of),
            et = ent_text(&ent_of),
        )
    };
    match store {
        StoreKind::Postgres => format!("INSERT INTO invitations ({cols}) {body}"),
        StoreKind::Sqlite => format!(
            "WITH RECURSIVE s(i) AS (SELECT {from} UNION ALL SELECT i + 1 FROM s WHERE i + 1 < {end}) \
             INSERT INTO invitations ({cols}) {body}"
        ),
    }
}
