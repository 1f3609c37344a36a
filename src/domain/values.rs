//! Validated value types. Each `parse` is the only way in, so holding one is proof that the
//! value is well formed.
use std::fmt;

use uuid::Uuid;

/// Why a raw value was refused; the transport turns it into a field violation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValueError {
    Missing,
    Malformed(&'static str),
    TooLong { max: usize },
}

fn parse_uuid(raw: &str) -> Result<Uuid, ValueError> {
    if raw.is_empty() {
        return Err(ValueError::Missing);
    }
    // Only the canonical hyphenated form: ids are compared and echoed as strings, and a
    // braced or URN form would make two spellings of one id.
    if raw.len() != 36 {
        return Err(ValueError::Malformed(
            "must be a UUID such as 0196a2c4-8f3e-7a10-9b1c-2d3e4f5a6b7c",
        ));
    }
    Uuid::try_parse(raw).map_err(|_| {
        ValueError::Malformed("must be a UUID such as 0196a2c4-8f3e-7a10-9b1c-2d3e4f5a6b7c")
    })
}

fn parse_ref(
    raw: &str,
    collection: &'static str,
    example: &'static str,
) -> Result<Uuid, ValueError> {
    if raw.is_empty() {
        return Err(ValueError::Missing);
    }
    raw.strip_prefix(collection)
        .and_then(|rest| rest.strip_prefix('/'))
        .ok_or(ValueError::Malformed(example))
        .and_then(|id| parse_uuid(id).map_err(|_| ValueError::Malformed(example)))
}

/// What [`parse_ref`] accepts, read from a stored value's bytes. The UUID parser takes only
/// ASCII hex digits and hyphens, so the value need not be checked as UTF-8 first.
fn parse_stored_ref(raw: &[u8], collection: &'static str) -> Option<Uuid> {
    let id = raw
        .strip_prefix(collection.as_bytes())?
        .strip_prefix(b"/")?;
    if id.len() != 36 {
        return None;
    }
    Uuid::try_parse_ascii(id).ok()
}

/// `{collection}/{uuid}`, built without the formatting machinery: a page writes five of these
/// per invitation.
fn resource_name(collection: &str, id: Uuid) -> String {
    let mut buffer = Uuid::encode_buffer();
    let hyphenated = id.hyphenated().encode_lower(&mut buffer);
    let mut name = String::with_capacity(collection.len() + 1 + hyphenated.len());
    name.push_str(collection);
    name.push('/');
    name.push_str(hyphenated);
    name
}

/// The id of an invitation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InvitationId(Uuid);

impl InvitationId {
    /// A new time-ordered (v7) id, so fresh rows land at the end of the primary-key index.
    pub fn generate() -> Self {
        Self(Uuid::now_v7())
    }
    pub fn parse(raw: &str) -> Result<Self, ValueError> {
        parse_uuid(raw).map(Self)
    }
    pub fn from_uuid(id: Uuid) -> Self {
        Self(id)
    }
    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
    /// The canonical (lower-case, hyphenated) spelling, as `to_string` writes it.
    pub fn to_canonical(&self) -> String {
        let mut buffer = Uuid::encode_buffer();
        self.0.hyphenated().encode_lower(&mut buffer).to_owned()
    }
}

impl fmt::Display for InvitationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

/// The client's id of one logical request, for safe retries (AIP-155).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RequestId(Uuid);

impl RequestId {
    pub fn parse(raw: &str) -> Result<Self, ValueError> {
        parse_uuid(raw).map(Self)
    }
    pub fn from_uuid(id: Uuid) -> Self {
        Self(id)
    }
    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

/// An enterprise, written `enterprises/{uuid}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EnterpriseId(Uuid);

impl EnterpriseId {
    /// The collection of its resource name, `enterprises/{uuid}`.
    pub const COLLECTION: &'static str = "enterprises";

    /// `enterprises/{uuid}`, as `to_string` writes it but without the formatting machinery.
    pub fn resource_name(&self) -> String {
        resource_name(Self::COLLECTION, self.0)
    }
    pub fn parse_ref(raw: &str) -> Result<Self, ValueError> {
        parse_ref(raw, Self::COLLECTION, "must be enterprises/{uuid}").map(Self)
    }
    pub fn from_uuid(id: Uuid) -> Self {
        Self(id)
    }
    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl fmt::Display for EnterpriseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buffer = Uuid::encode_buffer();
        f.write_str("enterprises/")?;
        f.write_str(self.0.hyphenated().encode_lower(&mut buffer))
    }
}

/// A user, written `users/{uuid}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UserRef(Uuid);

impl UserRef {
    /// The collection of its resource name, `users/{uuid}`.
    pub const COLLECTION: &'static str = "users";

    /// `users/{uuid}`, as `to_string` writes it but without the formatting machinery.
    pub fn resource_name(&self) -> String {
        resource_name(Self::COLLECTION, self.0)
    }
    pub fn parse(raw: &str) -> Result<Self, ValueError> {
        parse_ref(raw, Self::COLLECTION, "must be users/{uuid}").map(Self)
    }
    /// A stored reference, as `parse` would accept it; `None` when it would not.
    pub fn from_stored(raw: &[u8]) -> Option<Self> {
        parse_stored_ref(raw, Self::COLLECTION).map(Self)
    }
    pub fn from_uuid(id: Uuid) -> Self {
        Self(id)
    }
    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl fmt::Display for UserRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buffer = Uuid::encode_buffer();
        f.write_str("users/")?;
        f.write_str(self.0.hyphenated().encode_lower(&mut buffer))
    }
}

/// A role, written `roles/{uuid}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RoleRef(Uuid);

impl RoleRef {
    /// The collection of its resource name, `roles/{uuid}`.
    pub const COLLECTION: &'static str = "roles";

    /// `roles/{uuid}`, as `to_string` writes it but without the formatting machinery.
    pub fn resource_name(&self) -> String {
        resource_name(Self::COLLECTION, self.0)
    }
    pub fn parse(raw: &str) -> Result<Self, ValueError> {
        parse_ref(raw, Self::COLLECTION, "must be roles/{uuid}").map(Self)
    }
    /// A stored reference, as `parse` would accept it; `None` when it would not.
    pub fn from_stored(raw: &[u8]) -> Option<Self> {
        parse_stored_ref(raw, Self::COLLECTION).map(Self)
    }
    pub fn from_uuid(id: Uuid) -> Self {
        Self(id)
    }
    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl fmt::Display for RoleRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buffer = Uuid::encode_buffer();
        f.write_str("roles/")?;
        f.write_str(self.0.hyphenated().encode_lower(&mut buffer))
    }
}

/// Where an invitation admits its invitee: the enterprise itself (`enterprises/{uuid}`) or
/// a resource beneath it (`enterprises/{uuid}/teams/{id}`, any depth of
/// `collection/id` pairs). Segments use the URL-safe unreserved characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Scope {
    enterprise: EnterpriseId,
    name: String,
}

impl Scope {
    pub const MAX_LEN: usize = 256;

    pub fn parse(raw: &str) -> Result<Self, ValueError> {
        const SHAPE: &str =
            "must be enterprises/{uuid} optionally followed by /{collection}/{id} pairs";
        if raw.is_empty() {
            return Err(ValueError::Missing);
        }
        if raw.len() > Self::MAX_LEN {
            return Err(ValueError::TooLong { max: Self::MAX_LEN });
        }
        let mut segments = raw.split('/');
        let (Some("enterprises"), Some(id)) = (segments.next(), segments.next()) else {
            return Err(ValueError::Malformed(SHAPE));
        };
        let enterprise = parse_uuid(id).map_err(|_| ValueError::Malformed(SHAPE))?;
        let rest: Vec<&str> = segments.collect();
        // A consumer that normalizes paths would read `enterprises/A/teams/../../enterprises/B`
        // as another enterprise's scope: such a name is refused, not stored as given.
        if rest
            .iter()
            .any(|segment| matches!(*segment, "" | "." | ".."))
        {
            return Err(ValueError::Malformed(
                "must not contain empty, '.' or '..' segments",
            ));
        }
        let well_formed = rest.len().is_multiple_of(2)
            && rest.iter().all(|segment| {
                !segment.is_empty()
                    && segment.bytes().all(|b| {
                        b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~')
                    })
            });
        if !well_formed {
            return Err(ValueError::Malformed(SHAPE));
        }
        Ok(Self {
            enterprise: EnterpriseId(enterprise),
            // Canonical lower-case UUID so one scope has one spelling.
            name: std::iter::once(format!("enterprises/{}", enterprise.hyphenated()))
                .chain(rest.iter().map(|s| (*s).to_owned()))
                .collect::<Vec<_>>()
                .join("/"),
        })
    }

    /// Rebuilds a scope that was validated (and made canonical) before it was stored,
    /// keeping its string: reading a page must not re-parse every row.
    pub fn from_stored(name: String) -> Result<Self, ValueError> {
        let id = name
            .strip_prefix("enterprises/")
            .and_then(|rest| rest.get(..36))
            .ok_or(ValueError::Malformed("a stored scope"))?;
        let enterprise = parse_uuid(id).map_err(|_| ValueError::Malformed("a stored scope"))?;
        Ok(Self {
            enterprise: EnterpriseId(enterprise),
            name,
        })
    }

    /// The whole enterprise.
    pub fn enterprise_root(enterprise: EnterpriseId) -> Self {
        Self {
            enterprise,
            name: enterprise.to_string(),
        }
    }

    pub fn enterprise(&self) -> EnterpriseId {
        self.enterprise
    }

    pub fn is_enterprise_root(&self) -> bool {
        self.name.len() == "enterprises/".len() + 36
    }

    pub fn as_str(&self) -> &str {
        &self.name
    }

    pub fn into_string(self) -> String {
        self.name
    }
}

/// An e-mail address as given (for display); [`EmailAddress::normalized`] is its
/// case-folded form (for matching). The folded form is worked out when asked for, not kept:
/// the store keeps it in its own column for lookups, and reads (every item of every page)
/// never need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmailAddress {
    address: String,
}

impl EmailAddress {
    /// RFC 5321 limits: 64 octets of local part, 254 of address.
    pub const MAX_LEN: usize = 254;

    pub fn parse(raw: &str) -> Result<Self, ValueError> {
        const SHAPE: &str = "must be an e-mail address such as jane.doe@acme.example";
        if raw.is_empty() {
            return Err(ValueError::Missing);
        }
        if raw.len() > Self::MAX_LEN {
            return Err(ValueError::TooLong { max: Self::MAX_LEN });
        }
        let Some((local, domain)) = raw.rsplit_once('@') else {
            return Err(ValueError::Malformed(SHAPE));
        };
        let local_ok = !local.is_empty()
            && local.len() <= 64
            && !local.starts_with('.')
            && !local.ends_with('.')
            && !local.contains("..")
            && local
                .chars()
                .all(|c| c.is_alphanumeric() || "!#$%&'*+-/=?^_`{|}~.".contains(c));
        let domain_ok = domain.contains('.')
            && domain.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label.chars().all(|c| c.is_alphanumeric() || c == '-')
            });
        if !(local_ok && domain_ok) {
            return Err(ValueError::Malformed(SHAPE));
        }
        Ok(Self {
            address: raw.to_owned(),
        })
    }

    /// Rebuilds an address that was validated before it was stored.
    pub fn from_stored(address: String) -> Self {
        Self { address }
    }

    pub fn as_str(&self) -> &str {
        &self.address
    }

    /// The address as given.
    pub fn into_string(self) -> String {
        self.address
    }

    /// The address case-folded, as the store matches it.
    pub fn normalized(&self) -> String {
        self.address.to_lowercase()
    }

    /// For logs: the first character of the local part and the domain, never the whole address.
    pub fn masked(&self) -> String {
        match self.address.split_once('@') {
            Some((local, domain)) => {
                let first: String = local.chars().take(1).collect();
                format!("{first}***@{domain}")
            }
            None => "***".to_owned(),
        }
    }
}

/// Why an invitation was cancelled: at most 500 characters, no control characters other
/// than line breaks and tabs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CancelReason(String);

impl CancelReason {
    pub const MAX_CHARS: usize = 500;

    /// `Ok(None)` for an empty reason: the field is optional.
    pub fn parse(raw: &str) -> Result<Option<Self>, ValueError> {
        if raw.is_empty() {
            return Ok(None);
        }
        if raw.chars().count() > Self::MAX_CHARS {
            return Err(ValueError::TooLong {
                max: Self::MAX_CHARS,
            });
        }
        if raw
            .chars()
            .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
        {
            return Err(ValueError::Malformed("must not contain control characters"));
        }
        Ok(Some(Self(raw.to_owned())))
    }

    pub fn from_stored(reason: String) -> Self {
        Self(reason)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refs_round_trip_and_reject_other_collections() {
        let user = UserRef::parse("users/0196a2c4-8f3e-7a10-9b1c-2d3e4f5a6b7c").unwrap();
        assert_eq!(
            user.to_string(),
            "users/0196a2c4-8f3e-7a10-9b1c-2d3e4f5a6b7c"
        );
        assert!(matches!(
            UserRef::parse("roles/0196a2c4-8f3e-7a10-9b1c-2d3e4f5a6b7c"),
            Err(ValueError::Malformed(_))
        ));
        assert_eq!(UserRef::parse(""), Err(ValueError::Missing));
        assert!(InvitationId::parse("{0196a2c4-8f3e-7a10-9b1c-2d3e4f5a6b7c}").is_err());
        let id = Uuid::parse_str("0196A2C4-8F3E-7A10-9B1C-2D3E4F5A6B7C").unwrap();
        assert_eq!(
            InvitationId::from_uuid(id).to_canonical(),
            "0196a2c4-8f3e-7a10-9b1c-2d3e4f5a6b7c"
        );
        assert_eq!(
            EnterpriseId::from_uuid(id).resource_name(),
            format!("enterprises/{}", id.hyphenated())
        );
        assert_eq!(
            RoleRef::from_uuid(id).resource_name(),
            format!("roles/{}", id.hyphenated())
        );
    }

    #[test]
    fn scope_accepts_sub_resources_and_canonicalises_the_uuid() {
        let scope =
            Scope::parse("enterprises/0196A2C4-8F3E-7A10-9B1C-2D3E4F5A6B7C/teams/t-1").unwrap();
        assert_eq!(
            scope.as_str(),
            "enterprises/0196a2c4-8f3e-7a10-9b1c-2d3e4f5a6b7c/teams/t-1"
        );
        assert!(!scope.is_enterprise_root());
        assert!(
            Scope::parse("enterprises/0196a2c4-8f3e-7a10-9b1c-2d3e4f5a6b7c")
                .unwrap()
                .is_enterprise_root()
        );
        for bad in [
            "enterprises/0196a2c4-8f3e-7a10-9b1c-2d3e4f5a6b7c/teams",
            "enterprises/0196a2c4-8f3e-7a10-9b1c-2d3e4f5a6b7c//x",
            "enterprises/not-a-uuid",
            "users/0196a2c4-8f3e-7a10-9b1c-2d3e4f5a6b7c",
        ] {
            assert!(Scope::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn scopes_with_dot_or_empty_segments_are_refused() {
        let a = "enterprises/0196a2c4-8f3e-7a10-9b1c-2d3e4f5a6b7c";
        for bad in [
            format!("{a}/teams/../../../enterprises/0196a2c4-8f3e-7a10-9b1c-2d3e4f5a6b7d"),
            format!("{a}/../.."),
            format!("{a}/teams/."),
            format!("{a}/./x"),
            format!("{a}/teams/"),
            format!("{a}//teams/x"),
        ] {
            assert_eq!(
                Scope::parse(&bad),
                Err(ValueError::Malformed(
                    "must not contain empty, '.' or '..' segments"
                )),
                "{bad}"
            );
        }
        // Dots inside a segment are fine.
        assert!(Scope::parse(&format!("{a}/teams/v1.2")).is_ok());
        assert!(Scope::parse(&format!("{a}/teams/...")).is_ok());
    }

    #[test]
    fn email_is_matched_case_insensitively_and_masked_in_logs() {
        let email = EmailAddress::parse("Jane.Doe@Acme.Example").unwrap();
        assert_eq!(email.normalized(), "jane.doe@acme.example");
        assert_eq!(email.masked(), "J***@Acme.Example");
        for bad in [
            "",
            "jane",
            "jane@",
            "@acme.example",
            "ja ne@acme.example",
            "jane@acme",
            "a..b@acme.example",
        ] {
            assert!(EmailAddress::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cancel_reason_counts_characters_not_bytes() {
        assert_eq!(CancelReason::parse("").unwrap(), None);
        assert!(CancelReason::parse(&"é".repeat(500)).unwrap().is_some());
        assert_eq!(
            CancelReason::parse(&"é".repeat(501)),
            Err(ValueError::TooLong { max: 500 })
        );
        assert!(CancelReason::parse("bad\u{0}byte").is_err());
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Parsers take any input without panicking, and what they accept is canonical.
        #[test]
        fn parsers_never_panic(raw in any::<String>()) {
            let _ = InvitationId::parse(&raw);
            let _ = RequestId::parse(&raw);
            let _ = UserRef::parse(&raw);
            let _ = RoleRef::parse(&raw);
            let _ = EnterpriseId::parse_ref(&raw);
            if let Ok(reason) = CancelReason::parse(&raw) {
                prop_assert!(reason.is_none_or(|r| r.as_str().chars().count() <= CancelReason::MAX_CHARS));
            }
            if let Ok(email) = EmailAddress::parse(&raw) {
                prop_assert_eq!(email.normalized(), raw.to_lowercase());
            }
            if let Ok(scope) = Scope::parse(&raw) {
                prop_assert_eq!(Scope::parse(scope.as_str()), Ok(scope.clone()));
            }
        }

        /// A stored reference is read exactly as `parse` reads the same text: the UUID's
        /// other spellings, other collections and near misses are refused by both.
        #[test]
        fn stored_refs_are_read_as_parse_reads_them(
            collection in prop_oneof![Just("users"), Just("roles"), Just("user"), Just("")],
            separator in prop_oneof![Just("/"), Just(""), Just("//")],
            id in prop_oneof![
                any::<u128>().prop_map(|n| Uuid::from_u128(n).hyphenated().to_string()),
                any::<u128>().prop_map(|n| Uuid::from_u128(n).hyphenated().to_string().to_uppercase()),
                any::<u128>().prop_map(|n| Uuid::from_u128(n).simple().to_string()),
                any::<u128>().prop_map(|n| Uuid::from_u128(n).braced().to_string()),
                "[0-9a-fA-F-]{36}",
                "[0-9a-f-]{35,37}",
                any::<String>(),
            ],
        ) {
            let raw = format!("{collection}{separator}{id}");
            prop_assert_eq!(UserRef::from_stored(raw.as_bytes()), UserRef::parse(&raw).ok());
            prop_assert_eq!(RoleRef::from_stored(raw.as_bytes()), RoleRef::parse(&raw).ok());
        }

        /// Bytes that are not UTF-8 are never a reference.
        #[test]
        fn stored_refs_that_are_not_utf8_are_refused(id in any::<u128>(), at in 0usize..42) {
            let mut raw = UserRef::from_uuid(Uuid::from_u128(id)).to_string().into_bytes();
            raw[at] = 0xff;
            prop_assert_eq!(UserRef::from_stored(&raw), None);
        }

        #[test]
        fn resource_names_round_trip(id in any::<u128>()) {
            let user = UserRef::from_uuid(Uuid::from_u128(id));
            prop_assert_eq!(UserRef::parse(&user.to_string()), Ok(user));
            let enterprise = EnterpriseId::from_uuid(Uuid::from_u128(id));
            prop_assert_eq!(EnterpriseId::parse_ref(&enterprise.to_string()), Ok(enterprise));
        }
    }
}

#[cfg(test)]
mod stored {
    use super::*;

    #[test]
    fn a_stored_scope_keeps_its_name_and_enterprise() {
        let parsed =
            Scope::parse("enterprises/0196a2c4-8f3e-7a10-9b1c-2d3e4f5a6b7c/teams/t-1").unwrap();
        assert_eq!(
            Scope::from_stored(parsed.as_str().to_owned()),
            Ok(parsed.clone())
        );
        assert!(Scope::from_stored("teams/x".into()).is_err());
        assert!(Scope::from_stored("enterprises/short".into()).is_err());
    }
}
