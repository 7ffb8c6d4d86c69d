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
