//! Opaque page tokens for keyset pagination, and the signer they share with watch cursors.
//!
//! A token carries the position of the last item of a page, `(created_at, id)`, and a MAC
//! over that position and the query it belongs to (enterprise, scope, statuses, e-mail).
//! The query itself is not in the token: the server recomputes it from the request, so a
//! token replayed by another enterprise or with other filters fails the MAC just like an
//! edited one. The key comes from configuration, so tokens survive restarts and work on
//! every replica that shares it. The page size is deliberately not bound (AIP-158 lets a
//! client change it between pages).
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::invitation::Timestamp;
use super::values::InvitationId;

const FORMAT_VERSION: u8 = 1;
const MAC_LEN: usize = 16;
const PAYLOAD_LEN: usize = 8 + 16;

/// Where the next page starts: strictly after this item in (created_at desc, id desc) order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageCursor {
    pub created_at: Timestamp,
    pub id: InvitationId,
}

/// Signs opaque tokens with one secret key: a format byte, a fixed-size payload and a
/// truncated HMAC-SHA256 over both and over what the token is bound to, base64url. Page
/// tokens and watch cursors are its two formats; the format byte keeps one from being
/// taken for the other.
#[derive(Clone)]
pub struct TokenSigner {
    mac: Hmac<Sha256>,
}

/// The token is not one this service issued for this query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidPageToken;

impl TokenSigner {
    pub fn new(secret: &[u8]) -> Self {
        // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
        let mac = Hmac::<Sha256>::new_from_slice(secret).unwrap_or_else(|_| unreachable!());
        Self { mac }
    }

    fn mac_of(&self, signed: &[u8], binding: &[u8]) -> Hmac<Sha256> {
        let mut mac = self.mac.clone();
        mac.update(signed);
        mac.update(binding);
        mac
    }

    pub fn sign(&self, format: u8, payload: &[u8], binding: &[u8]) -> String {
        let mut token = Vec::with_capacity(1 + payload.len() + MAC_LEN);
        token.push(format);
        token.extend_from_slice(payload);
        let full = self.mac_of(&token, binding).finalize().into_bytes();
        token.extend_from_slice(&full[..MAC_LEN]);
        URL_SAFE_NO_PAD.encode(token)
    }

    /// The payload of a token of `format` with an `N`-byte payload, signed for `binding`.
    pub fn open<const N: usize>(
        &self,
        format: u8,
        token: &str,
        binding: &[u8],
    ) -> Result<[u8; N], InvalidPageToken> {
        let token_len = 1 + N + MAC_LEN;
        // Refuse anything of the wrong length before decoding, so hostile input costs nothing.
        if token.len() != (token_len * 4).div_ceil(3) {
            return Err(InvalidPageToken);
        }
        let bytes = URL_SAFE_NO_PAD
            .decode(token)
            .map_err(|_| InvalidPageToken)?;
        if bytes.len() != token_len || bytes[0] != format {
            return Err(InvalidPageToken);
        }
        // Constant-time comparison of the truncated tag.
        self.mac_of(&bytes[..=N], binding)
            .verify_truncated_left(&bytes[1 + N..])
            .map_err(|_| InvalidPageToken)?;
        let mut payload = [0u8; N];
        payload.copy_from_slice(&bytes[1..=N]);
        Ok(payload)
    }
}

/// Signs and checks page tokens with one secret key.
#[derive(Clone)]
pub struct PageTokenCodec {
    signer: TokenSigner,
}

impl PageTokenCodec {
    pub fn new(secret: &[u8]) -> Self {
        Self {
            signer: TokenSigner::new(secret),
        }
    }

    /// `binding` identifies the query (see `ListQuery::binding`).
    pub fn encode(&self, cursor: PageCursor, binding: &[u8]) -> String {
        let mut payload = [0u8; PAYLOAD_LEN];
        payload[..8].copy_from_slice(&cursor.created_at.unix_micros().to_be_bytes());
        payload[8..].copy_from_slice(cursor.id.as_uuid().as_bytes());
        self.signer.sign(FORMAT_VERSION, &payload, binding)
    }

    pub fn decode(&self, token: &str, binding: &[u8]) -> Result<PageCursor, InvalidPageToken> {
        let payload: [u8; PAYLOAD_LEN] = self.signer.open(FORMAT_VERSION, token, binding)?;
        let mut micros = [0u8; 8];
        micros.copy_from_slice(&payload[..8]);
        let mut id = [0u8; 16];
        id.copy_from_slice(&payload[8..]);
        Ok(PageCursor {
            created_at: Timestamp::from_unix_micros(i64::from_be_bytes(micros)),
            id: InvitationId::from_uuid(uuid::Uuid::from_bytes(id)),
        })
    }

    /// The signer behind the tokens, for the other formats signed with the same key.
    pub fn signer(&self) -> &TokenSigner {
        &self.signer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cursor() -> PageCursor {
        PageCursor {
            created_at: Timestamp::from_unix_micros(1_767_225_600_123_456),
            id: InvitationId::generate(),
        }
    }

    #[test]
    fn round_trips_for_the_same_query_and_key() {
        let codec = PageTokenCodec::new(b"k1");
        let cursor = cursor();
        let token = codec.encode(cursor, b"query-a");
        assert_eq!(codec.decode(&token, b"query-a"), Ok(cursor));
        assert_eq!(
            PageTokenCodec::new(b"k1").decode(&token, b"query-a"),
            Ok(cursor)
        );
    }

    #[test]
    fn rejects_other_queries_other_keys_and_every_single_edit() {
        let codec = PageTokenCodec::new(b"k1");
        let token = codec.encode(cursor(), b"query-a");
        assert_eq!(codec.decode(&token, b"query-b"), Err(InvalidPageToken));
        assert_eq!(
            PageTokenCodec::new(b"k2").decode(&token, b"query-a"),
            Err(InvalidPageToken)
        );
        let raw = URL_SAFE_NO_PAD.decode(&token).unwrap();
        for i in 0..raw.len() {
            let mut edited = raw.clone();
            edited[i] ^= 0x01;
            assert_eq!(
                codec.decode(&URL_SAFE_NO_PAD.encode(edited), b"query-a"),
                Err(InvalidPageToken)
            );
        }
        for junk in ["", "x", "%%%%", &"A".repeat(10_000), &token[1..]] {
            assert_eq!(codec.decode(junk, b"query-a"), Err(InvalidPageToken));
        }
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Any string is refused or decoded, never a panic; only tokens this codec issued
        /// for this query decode.
        #[test]
        fn arbitrary_strings_never_decode_or_panic(token in any::<String>(), binding in any::<Vec<u8>>()) {
            let codec = PageTokenCodec::new(b"property-key");
            prop_assert_eq!(codec.decode(&token, &binding), Err(InvalidPageToken));
        }

        #[test]
        fn issued_tokens_round_trip(micros in any::<i64>(), id in any::<u128>(), binding in any::<Vec<u8>>()) {
            let codec = PageTokenCodec::new(b"property-key");
            let cursor = PageCursor {
                created_at: Timestamp::from_unix_micros(micros),
                id: InvitationId::from_uuid(uuid::Uuid::from_u128(id)),
            };
            let token = codec.encode(cursor, &binding);
            prop_assert_eq!(codec.decode(&token, &binding), Ok(cursor));
            let mut other = binding.clone();
            other.push(0);
            prop_assert_eq!(codec.decode(&token, &other), Err(InvalidPageToken));
        }
    }
}
