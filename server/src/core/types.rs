//! The domain types of the seat core: who asks (actor, holder), what is held (leases,
//! assignments), who signs in (users), and the server settings the rules depend on.

use tally_protocol::{
    ClientId, LeaseId, LeaseKind, LeaseSource, Member, RequestId, Role, RuleSpec, UserState,
};

/// The default longest borrow of an entitlement (SPEC §1): 168 hours.
pub const DEFAULT_MAX_BORROW_SECS: u64 = 168 * 3600;

/// The most seats one request may name, and the longest duration (ten years): the protocol's
/// range checks (`Checkout::validate` and the like) hold requests to them.
pub use tally_protocol::{MAX_DURATION_SECS, MAX_SEATS};

/// The signed-in user a request comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    pub username: String,
    pub role: Role,
}

/// The client instance a request comes from: leases are held by it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub client: ClientId,
    pub host: String,
    /// The rest of what it said of itself, and where it connected from.
    pub peer: Peer,
}

/// What a client instance said of itself at sign-in (beside its host), and the address it
/// connected from: kept with each of its leases for the admins' `status --all`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Peer {
    /// The program (`Hello.client.agent`), e.g. `tally-cli 0.1.0`.
    pub program: String,
    /// Its process id on its host.
    pub pid: u32,
    /// The IP address the connection came from.
    pub address: String,
}

/// A checked-out seat as the core keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub id: LeaseId,
    pub feature: String,
    pub seats: u32,
    pub user: String,
    pub host: String,
    /// The holder's program, process id and address, as its client instance last signed in.
    pub peer: Peer,
    /// The client instance holding it; its heartbeats renew the lease.
    pub client: ClientId,
    /// The client's id for the checkout, so that a retry returns this lease.
    pub request_id: RequestId,
    pub kind: LeaseKind,
    pub source: LeaseSource,
    pub granted_at: i64,
    /// For online leases: when it was granted (plus the ttl). The live expiry is the
    /// session's; this is what the store records.
    pub expires_at: i64,
    /// For a borrowed floating lease: the borrowable entitlement its seats are charged to,
    /// so that they always fit in that entitlement until the borrow ends.
    pub entitlement: Option<u64>,
    /// For a seat of a prerequisite (R18): the lease whose checkout took it, which it ends
    /// with.
    pub taken_with: Option<LeaseId>,
}

/// A person who signs in (SPEC §1). The username is kept in lowercase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// The account's identity, never reused: a session is bound to it, so a connection of a
    /// removed user never acts for a new account of the same name (R22).
    pub id: u64,
    pub username: String,
    pub name: String,
    pub role: Role,
    pub state: UserState,
    pub created_at: i64,
}

/// Seats of one entitlement given by name to one user; out of the floating pool while the
/// user is active.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub id: u64,
    pub user: String,
    pub feature: String,
    pub entitlement: u64,
    pub seats: u32,
    /// No later than the entitlement's end.
    pub expires_at: Option<i64>,
    pub created_at: i64,
}

/// A named set of members (SPEC §8) that policy rules name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub name: String,
    /// In the order they were added; no member twice.
    pub members: Vec<Member>,
    pub created_at: i64,
}

/// A policy rule of one feature (SPEC §8, R16).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Never reused.
    pub id: u64,
    pub spec: RuleSpec,
    pub created_at: i64,
}

/// Server settings the rules depend on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Policy {
    /// Whether guests may draw floating seats (`users.guests_use_floating`).
    pub guests_use_floating: bool,
    /// The most active users; 0 means no limit (`users.max_active`).
    pub max_active: u32,
    /// The longest borrow the server allows, in milliseconds (`borrow.max`); 0 means the
    /// default of 168 hours.
    pub borrow_max_ms: i64,
    /// The most online leases one client instance may hold; 0 means no limit
    /// (`limits.max_leases_per_client`).
    pub max_leases_per_client: u32,
}

/// A freshly minted token: the text goes to the admin once, the hash to the store.
#[derive(Clone)]
pub struct NewToken {
    pub token: String,
    pub hash: [u8; 32],
}

impl std::fmt::Debug for NewToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NewToken(***)")
    }
}
