//! 128-bit identifiers, shown to people as 32 lowercase hex digits.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A hex string that is not a 128-bit identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an id: expected 32 hexadecimal digits")]
pub struct ParseIdError(pub String);

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub struct $name(pub [u8; 16]);

        impl $name {
            /// Reads an id from its 32-digit hex form.
            pub fn from_hex(text: &str) -> Result<Self, ParseIdError> {
                let mut bytes = [0u8; 16];
                hex::decode_to_slice(text.trim(), &mut bytes)
                    .map_err(|_| ParseIdError(text.to_string()))?;
                Ok(Self(bytes))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&hex::encode(self.0))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self)
            }
        }

        impl FromStr for $name {
            type Err = ParseIdError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::from_hex(s)
            }
        }
    };
}

id_type!(
    /// The id of a lease: chosen at random by the server when it grants a seat.
    LeaseId
);
id_type!(
    /// One running instance of a client; leases belong to it, not to a TCP connection.
    ClientId
);
id_type!(
    /// Chosen by the client for each checkout, so that a retried checkout returns the same lease.
    RequestId
);

/// The fewest hex digits a lease id pattern must give, so that a slip of the keyboard does
/// not select someone else's lease.
pub const MIN_PATTERN_DIGITS: usize = 4;

/// A lease id as people type it: the whole id, its first digits (`3f9c`), or its first and
/// last digits around `...` (`3f9c...e1`, as listings abbreviate it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeasePattern {
    prefix: String,
    suffix: String,
}

impl LeasePattern {
    /// Reads a pattern: hex digits (any case), with at most one `...` (or `…`) between a
    /// prefix and a suffix, at least [`MIN_PATTERN_DIGITS`] digits in all.
    pub fn parse(text: &str) -> Result<Self, String> {
        let trimmed = text.trim().to_ascii_lowercase();
        let (prefix, suffix) = match trimmed.split_once("...").or(trimmed.split_once('…')) {
            Some((prefix, suffix)) => (prefix.to_string(), suffix.to_string()),
            None => (trimmed.clone(), String::new()),
        };
        let digits = prefix.len() + suffix.len();
        let hex = |part: &str| part.bytes().all(|b| b.is_ascii_hexdigit());
        if !hex(&prefix) || !hex(&suffix) {
            return Err(format!(
                "{text:?} is not a lease id: give its hexadecimal digits, all 32 or the first few (like 3f9c)"
            ));
        }
        if digits < MIN_PATTERN_DIGITS {
            return Err(format!(
                "{text:?} is too short to name a lease: give at least {MIN_PATTERN_DIGITS} digits of its id"
            ));
        }
        if digits > 32 || (digits == 32 && !suffix.is_empty()) {
            return Err(format!(
                "{text:?} is not a lease id: an id has 32 hexadecimal digits"
            ));
        }
        Ok(Self { prefix, suffix })
    }

    /// Whether `id` starts with the prefix and ends with the suffix.
    pub fn matches(&self, id: &LeaseId) -> bool {
        let text = id.to_string();
        text.starts_with(&self.prefix) && text.ends_with(&self.suffix)
    }

    /// The lease id itself, when the pattern gives all 32 digits.
    pub fn exact(&self) -> Option<LeaseId> {
        (self.prefix.len() == 32)
            .then(|| LeaseId::from_hex(&self.prefix).ok())
            .flatten()
    }
}

impl fmt::Display for LeasePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.suffix.is_empty() {
            f.write_str(&self.prefix)
        } else {
            write!(f, "{}...{}", self.prefix, self.suffix)
        }
    }
}
