//! Invitation link tokens: the secret an invitee redeems.
//!
//! `inv_` followed by 256 bits from the operating system's CSPRNG, base64url without
//! padding (47 characters in all). The fixed prefix lets secret scanners spot a leaked
//! token. Only the SHA-256 of a token is stored: with 256 bits of entropy a plain hash is
//! as good as a slow one, and lookup stays one index probe.
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use sha2::{Digest, Sha256};

use super::values::ValueError;

const PREFIX: &str = "inv_";
const SECRET_BYTES: usize = 32;
/// `inv_` + 43 base64url characters.
pub const LINK_TOKEN_LEN: usize = 4 + 43;

/// A well-formed link token. Its `Debug` never shows the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct LinkToken(String);

/// What the store keeps of a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkTokenHash(pub [u8; 32]);

impl std::fmt::Debug for LinkToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LinkToken(***)")
    }
}

impl LinkToken {
    /// A fresh token. Fails only if the operating system cannot provide randomness.
    pub fn generate() -> Result<Self, getrandom::Error> {
        let mut secret = [0u8; SECRET_BYTES];
        getrandom::fill(&mut secret)?;
        Ok(Self(format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(secret))))
    }

    /// Checks the shape only (prefix, length, alphabet); whether it names an invitation is
    /// the store's question.
    pub fn parse(raw: &str) -> Result<Self, ValueError> {
        const SHAPE: &str =
            "must be an invitation link token (inv_ followed by 43 base64url characters)";
        if raw.is_empty() {
            return Err(ValueError::Missing);
        }
        let well_formed = raw.len() == LINK_TOKEN_LEN
            && raw.starts_with(PREFIX)
            && raw[PREFIX.len()..]
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if well_formed {
            Ok(Self(raw.to_owned()))
        } else {
            Err(ValueError::Malformed(SHAPE))
        }
    }

    pub fn hash(&self) -> LinkTokenHash {
        LinkTokenHash(Sha256::digest(self.0.as_bytes()).into())
    }

    /// The secret itself: only for the one response that hands it out.
    pub fn reveal(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_parse_differ_and_hide_in_debug() {
        let a = LinkToken::generate().unwrap();
        let b = LinkToken::generate().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.reveal().len(), LINK_TOKEN_LEN);
        assert_eq!(LinkToken::parse(a.reveal()), Ok(a.clone()));
        assert_eq!(format!("{a:?}"), "LinkToken(***)");
        assert_ne!(a.hash(), b.hash());
    }

    #[test]
    fn malformed_tokens_are_refused_by_shape() {
        let good = LinkToken::generate().unwrap();
        assert_eq!(LinkToken::parse(""), Err(ValueError::Missing));
        for bad in [
            "inv_".to_owned(),
            good.reveal()[1..].to_owned(),
            format!("{}A", good.reveal()),
            good.reveal().replace("inv_", "xyz_"),
            format!("inv_{}", "+".repeat(43)),
            format!("inv_{}", "é".repeat(21)),
        ] {
            assert!(
                matches!(LinkToken::parse(&bad), Err(ValueError::Malformed(_))),
                "{bad}"
            );
        }
    }
}
