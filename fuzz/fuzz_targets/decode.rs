//! Every decoder a peer's bytes reach: client and server messages, and borrow tokens.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tally_protocol::{decode_token, ClientMessage, ServerMessage};

fuzz_target!(|data: &[u8]| {
    let _ = postcard::from_bytes::<ClientMessage>(data);
    let _ = postcard::from_bytes::<ServerMessage>(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = decode_token(text);
    }
});
