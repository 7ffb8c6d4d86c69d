//! Borrow tokens: what a client keeps to use a seat offline, signed by the server.
//!
//! The text form is `tally1.CLAIMS.SIGNATURE`: the postcard encoding of [`BorrowClaims`] and
//! its Ed25519 signature, each in unpadded base64url. The signature covers the CLAIMS bytes
//! exactly as they stand in the token.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::{LeaseId, UnixMillis};

/// The first part of every borrow token; a new format gets a new prefix.
pub const TOKEN_PREFIX: &str = "tally1";

/// What a borrow token asserts. Append-only like every wire type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BorrowClaims {
    /// The server that granted it; its pinned key verifies the signature.
    pub server_id: String,
    /// Which of the server's keys signed it ([`key_id`]).
    pub key_id: String,
    pub lease: LeaseId,
    pub feature: String,
    pub seats: u32,
    pub user: String,
    /// The machine the borrow is bound to.
    pub machine_id: String,
    pub issued_at: UnixMillis,
    pub expires_at: UnixMillis,
}

/// A borrow token that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a borrow token: {0}")]
pub struct TokenError(pub String);

/// A decoded token: the claims, the exact bytes the signature covers, and the signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedClaims {
    pub claims: BorrowClaims,
    pub signed: Vec<u8>,
    pub signature: Vec<u8>,
}

impl BorrowClaims {
    /// The bytes to sign.
    pub fn to_bytes(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("claims always encode")
    }

    /// The token's text form, given the signature of [`to_bytes`](Self::to_bytes).
    pub fn encode(&self, signature: &[u8]) -> String {
        format!(
            "{TOKEN_PREFIX}.{}.{}",
            URL_SAFE_NO_PAD.encode(self.to_bytes()),
            URL_SAFE_NO_PAD.encode(signature)
        )
    }
}

/// Reads a token's text form. It does not check the signature: see the client's
/// `verify_offline`.
pub fn decode_token(text: &str) -> Result<SignedClaims, TokenError> {
    let mut parts = text.trim().split('.');
    let (Some(prefix), Some(claims), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError("expected three parts separated by '.'".into()));
    };
    if prefix != TOKEN_PREFIX {
        return Err(TokenError(format!("unknown format {prefix:?}")));
    }
    let signed = URL_SAFE_NO_PAD
        .decode(claims)
        .map_err(|_| TokenError("the claims are not base64url".into()))?;
    let signature = URL_SAFE_NO_PAD
        .decode(signature)
        .map_err(|_| TokenError("the signature is not base64url".into()))?;
    let (claims, rest) = postcard::take_from_bytes::<BorrowClaims>(&signed)
        .map_err(|err| TokenError(format!("the claims cannot be read: {err}")))?;
    if !rest.is_empty() {
        return Err(TokenError("trailing bytes after the claims".into()));
    }
    Ok(SignedClaims {
        claims,
        signed,
        signature,
    })
}

/// A short id of a public key: its first 8 bytes in hex.
pub fn key_id(public_key: &[u8]) -> String {
    public_key
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}
