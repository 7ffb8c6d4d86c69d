//! Borrow tokens: what a client keeps to use a seat offline, signed by the server.
//!
//! The text form is `tally2.CLAIMS.SIGNATURE.CERT[.CERT...]`: the postcard encoding of
//! [`BorrowClaims`], its Ed25519 signature, and the X.509 certificate chain of the signing key
//! (the certificate for the key first, then any intermediates up to the CA the clients
//! trust), each in unpadded base64url DER. The signature covers the CLAIMS bytes exactly as
//! they stand in the token; the chain is what lets a client check, with no network, that the
//! key belongs to a server its admin's CA vouches for.
//!
//! `tally1.CLAIMS.SIGNATURE` (no chain) is the first format: it still decodes, with an empty
//! chain, so that a verifier can say why it no longer trusts such a token.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::{LeaseId, UnixMillis};

/// The first part of every borrow token; a new format gets a new prefix.
pub const TOKEN_PREFIX: &str = "tally2";

/// The prefix of the first format, whose tokens carry no certificate chain.
pub const TOKEN_PREFIX_V1: &str = "tally1";

/// The most certificates a token's chain may carry.
pub const MAX_CHAIN: usize = 4;

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

/// A decoded token: the claims, the exact bytes the signature covers, the signature, and the
/// certificate chain of the signing key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedClaims {
    pub claims: BorrowClaims,
    pub signed: Vec<u8>,
    pub signature: Vec<u8>,
    /// DER certificates: the one for the signing key first, then intermediates. Empty for a
    /// `tally1` token.
    pub chain: Vec<Vec<u8>>,
}

impl BorrowClaims {
    /// The bytes to sign.
    pub fn to_bytes(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("claims always encode")
    }

    /// The token's text form, given the signature of [`to_bytes`](Self::to_bytes) and the
    /// DER certificate chain of the signing key (its own certificate first).
    pub fn encode(&self, signature: &[u8], chain: &[Vec<u8>]) -> String {
        let mut text = format!(
            "{TOKEN_PREFIX}.{}.{}",
            URL_SAFE_NO_PAD.encode(self.to_bytes()),
            URL_SAFE_NO_PAD.encode(signature)
        );
        for cert in chain {
            text.push('.');
            text.push_str(&URL_SAFE_NO_PAD.encode(cert));
        }
        text
    }
}

/// Reads a token's text form. It does not check the signature: see the client's
/// `verify_offline`.
pub fn decode_token(text: &str) -> Result<SignedClaims, TokenError> {
    let parts: Vec<&str> = text.trim().split('.').collect();
    let (claims, signature, certs) =
        match parts.as_slice() {
            [TOKEN_PREFIX_V1, claims, signature] => (claims, signature, &[][..]),
            [TOKEN_PREFIX_V1, ..] => {
                return Err(TokenError("expected three parts separated by '.'".into()))
            }
            [TOKEN_PREFIX, claims, signature, certs @ ..] if !certs.is_empty() => {
                (claims, signature, certs)
            }
            [TOKEN_PREFIX, ..] => return Err(TokenError(
                "expected the claims, the signature and at least one certificate, separated by '.'"
                    .into(),
            )),
            [prefix, ..] => {
                let shown: String = prefix.chars().take(16).collect();
                return Err(TokenError(format!("unknown format {shown:?}")));
            }
            [] => return Err(TokenError("empty".into())),
        };
    if certs.len() > MAX_CHAIN {
        return Err(TokenError(format!(
            "{} certificates, more than the {MAX_CHAIN} a chain may have",
            certs.len()
        )));
    }
    let chain = certs
        .iter()
        .enumerate()
        .map(|(i, cert)| {
            URL_SAFE_NO_PAD
                .decode(cert)
                .map_err(|_| TokenError(format!("certificate {} is not base64url", i + 1)))
        })
        .collect::<Result<Vec<_>, _>>()?;
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
        chain,
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
