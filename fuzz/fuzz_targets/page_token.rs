//! Page tokens from untrusted clients: decoding never panics, and nothing but a token this
//! codec issued for this query decodes.
#![no_main]

use invitations::domain::PageTokenCodec;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (binding, token) = data.split_at(data.len().min(8));
    if let Ok(token) = std::str::from_utf8(token) {
        let codec = PageTokenCodec::new(b"fuzzing-key");
        assert!(codec.decode(token, binding).is_err(), "a forged token decoded: {token:?}");
    }
});
