//! The invitation resource, its lifecycle status and its entity tag.
use std::collections::BTreeSet;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::values::{
    CancelReason, EmailAddress, EnterpriseId, InvitationId, RoleRef, Scope, UserRef,
};

/// A UTC instant with microsecond precision: what both stores keep exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

impl Timestamp {
    pub fn now() -> Self {
        // A clock before 1970 or after the year 294 247 is a broken machine, not an input.
        let micros = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| {
                i64::try_from(elapsed.as_micros()).unwrap_or(i64::MAX)
            });
        Self(micros)
    }

    pub fn from_unix_micros(micros: i64) -> Self {
        Self(micros)
    }

    pub fn unix_micros(self) -> i64 {
        self.0
    }

    pub fn saturating_add(self, duration: Duration) -> Self {
        let micros = i64::try_from(duration.as_micros()).unwrap_or(i64::MAX);
        Self(self.0.saturating_add(micros))
    }

    pub fn saturating_sub(self, duration: Duration) -> Self {
        let micros = i64::try_from(duration.as_micros()).unwrap_or(i64::MAX);
        Self(self.0.saturating_sub(micros))
    }
}

/// How many times an invitation has been written; the basis of its etag and of every
/// conditional write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version(i64);

impl Version {
    pub const FIRST: Version = Version(1);

    pub fn from_stored(version: i64) -> Self {
        Self(version)
    }

    pub fn get(self) -> i64 {
        self.0
    }

    pub fn next(self) -> Self {
        Self(self.0 + 1)
    }
}

/// A weak entity tag, `W/"{version}.{tag}"`, where `tag` is derived from the invitation id
/// and version. Tying the tag to the id means an etag copied from another invitation never
/// matches by coincidence; keeping the version readable lets a cancel become one conditional
/// write on `version` without reading the row first. Comparison is by exact string.
///
/// Held inline rather than in a `String`: every item of every page has one, and at most
/// [`Etag::MAX_LEN`] bytes it fits in the value itself.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Etag {
    text: [u8; Etag::MAX_LEN],
    len: u8,
}

impl Etag {
    /// `W/"` (3), a version of at most 20 characters (`i64::MIN`), `.`, 8 hex digits, `"`.
    pub const MAX_LEN: usize = 3 + 20 + 1 + 8 + 1;

    pub fn of(id: InvitationId, version: Version) -> Self {
        // Written by hand rather than with `format!`: every item of every page has one.
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut etag = Self {
            text: [0; Self::MAX_LEN],
            len: 0,
        };
        etag.push(b"W/\"");
        etag.push_decimal(version.get());
        etag.push(b".");
        for byte in Self::tag(id, version).to_be_bytes() {
            etag.push(&[HEX[usize::from(byte >> 4)], HEX[usize::from(byte & 0x0f)]]);
        }
        etag.push(b"\"");
        etag
    }

    /// 32 bits in which every bit of the id and of the version has a say. Nothing here is
    /// secret or adversarial (ids are the server's, and a client reads every etag it may
    /// send), so a mixing function does what a cryptographic digest would, for a fraction of
    /// its cost on every item of a page. The tag is part of the contract between replicas: every replica must
    /// derive the same one, and a change makes every outstanding etag stale (one ABORTED,
    /// with the current etag, for a client that held one). `etag_tags_are_pinned` holds
    /// it fixed.
    fn tag(id: InvitationId, version: Version) -> u32 {
        let (high, low) = id.as_uuid().as_u64_pair();
        // The version's bits, as they are; a negative version is not stored but is parsed.
        let version = u64::from_ne_bytes(version.get().to_ne_bytes());
        let mixed = mix(mix(mix(high) ^ low) ^ version);
        (mixed >> 32) as u32
    }

    fn push(&mut self, bytes: &[u8]) {
        let at = usize::from(self.len);
        self.text[at..at + bytes.len()].copy_from_slice(bytes);
        // At most MAX_LEN (33) in all, by the arithmetic above.
        self.len += bytes.len() as u8;
    }

    /// Appends `value` in decimal, as `Display` writes it.
    fn push_decimal(&mut self, value: i64) {
        if value < 0 {
            self.push(b"-");
        }
        let mut digits = [0u8; 20];
        let mut rest = value.unsigned_abs();
        let mut start = digits.len();
        loop {
            start -= 1;
            // `rest % 10` is below 10, so the cast keeps it whole.
            digits[start] = b'0' + (rest % 10) as u8;
            rest /= 10;
            if rest == 0 {
                break;
            }
        }
        self.push(&digits[start..]);
    }

    /// The version this string is the etag of, for this invitation; `None` when the string
    /// is not exactly one of its etags (it can then only be a mismatch).
    pub fn version_if_of(raw: &str, id: InvitationId) -> Option<Version> {
        let inner = raw.strip_prefix("W/\"")?.strip_suffix('"')?;
        let (version, _) = inner.split_once('.')?;
        let version = Version(version.parse().ok()?);
        (Etag::of(id, version).as_str() == raw).then_some(version)
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(self.as_bytes())
            .unwrap_or_else(|_| unreachable!("an etag is written in ASCII"))
    }

    /// The etag's ASCII, without [`Etag::as_str`]'s UTF-8 check (about 12 ns, twice an item
    /// of every page).
    pub fn as_bytes(&self) -> &[u8] {
        &self.text[..usize::from(self.len)]
    }

    pub fn into_string(self) -> String {
        self.as_str().to_owned()
    }
}

/// SplitMix64's output function: a bijection of 64 bits in which each input bit flips about
/// half of the output bits.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl fmt::Debug for Etag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Etag").field(&self.as_str()).finish()
    }
}

/// The lifecycle state of an invitation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum InvitationStatus {
    Pending,
    Accepted,
    Cancelled,
    Expired,
}

/// The effective statuses a list asks for; empty means every status.
pub type StatusFilter = BTreeSet<InvitationStatus>;

impl InvitationStatus {
    pub const ALL: [InvitationStatus; 4] = [
        Self::Pending,
        Self::Accepted,
        Self::Cancelled,
        Self::Expired,
    ];

    /// The spelling in the documented API and in the store.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Accepted => "accepted",
            Self::Cancelled => "cancelled",
            Self::Expired => "expired",
        }
    }

    pub fn parse_stored(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|status| status.as_str() == raw)
    }
}

/// One invitation as stored. Its reported status is [`Invitation::status_at`], which turns
/// a lapsed pending invitation into an expired one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invitation {
    pub id: InvitationId,
    pub enterprise: EnterpriseId,
    pub scope: Scope,
    pub email: EmailAddress,
    pub role: RoleRef,
    pub stored_status: InvitationStatus,
    pub invited_by: UserRef,
    pub pending_human_actor: Option<UserRef>,
    /// Reference to an identity challenge. No challenge flow writes it yet; the field is
    /// part of the documented resource and kept as stored.
    pub challenge_ref: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub expires_at: Timestamp,
    pub accepted_at: Option<Timestamp>,
    pub accepted_by: Option<UserRef>,
    pub cancelled_at: Option<Timestamp>,
    pub cancel_reason: Option<CancelReason>,
    pub cancelled_by: Option<UserRef>,
    pub version: Version,
}

impl Invitation {
    /// The status callers see: pending past `expires_at` is expired, whatever is stored.
    pub fn status_at(&self, now: Timestamp) -> InvitationStatus {
        match self.stored_status {
            InvitationStatus::Pending if self.expires_at <= now => InvitationStatus::Expired,
            status => status,
        }
    }

    pub fn etag(&self) -> Etag {
        Etag::of(self.id, self.version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Replicas compare each other's etags: the tag of an id and a version never changes
    /// without a decision (see [`Etag::tag`]).
    #[test]
    fn etag_tags_are_pinned() {
        let id = InvitationId::from_uuid(uuid::Uuid::from_u128(
            0x0193_8a4e_5c1f_7d2b_9e10_4f6a_2b3c_8d7e,
        ));
        let pinned = [
            (1, "W/\"1.d318e8b4\""),
            (2, "W/\"2.a205dedd\""),
            (12_345, "W/\"12345.83313d62\""),
            (i64::MAX, "W/\"9223372036854775807.1bc172e7\""),
            (-3, "W/\"-3.452976e6\""),
            (i64::MIN, "W/\"-9223372036854775808.272156c1\""),
        ];
        for (version, etag) in pinned {
            assert_eq!(Etag::of(id, Version::from_stored(version)).as_str(), etag);
        }
    }

    /// Ids and versions that differ by one bit, as generated ids and successive versions
    /// do, get tags that differ: none of 10 000 neighbours share a tag with another.
    #[test]
    fn etag_tags_of_neighbours_differ() {
        let mut tags = std::collections::HashSet::new();
        for n in 0..2_500u128 {
            let id = InvitationId::from_uuid(uuid::Uuid::from_u128(
                0x0193_8a4e_5c1f_7000_8000_0000_0000_0000 | n << 64 | n,
            ));
            for version in 1..=4 {
                assert!(tags.insert(Etag::tag(id, Version::from_stored(version))));
            }
        }
    }

    #[test]
    fn etag_matches_only_its_own_invitation_and_version() {
        let id = InvitationId::generate();
        let other = InvitationId::generate();
        let etag = Etag::of(id, Version::from_stored(7));
        assert!(etag.as_str().starts_with("W/\"7."));
        assert_eq!(
            Etag::version_if_of(etag.as_str(), id),
            Some(Version::from_stored(7))
        );
        assert_eq!(Etag::version_if_of(etag.as_str(), other), None);
        assert_eq!(
            Etag::version_if_of(&etag.as_str().replace("W/", ""), id),
            None
        );
        assert_eq!(Etag::version_if_of("W/\"07.00000000\"", id), None);
        assert_eq!(Etag::version_if_of("", id), None);
        assert_ne!(Etag::of(id, Version::from_stored(8)), etag);
    }
}
