//! libtally: the Tally client for C and C++ (`include/tally.h`, `include/tally.hpp`).
//!
//! Every exported function is a thin shell over [`tally_client::blocking`]: it checks its
//! arguments (NULL pointers and text that is not UTF-8 are `TALLY_CODE_INVALID_ARGUMENT`,
//! never undefined behaviour), runs the call inside [`error::guard`] so that no panic
//! crosses into C, and returns a [`TallyCode`] with the calling thread's last error message
//! behind it. Each client owns its tokio runtime (one thread); leases heartbeat there.
//!
//! The header is generated from this crate by cbindgen (`cbindgen.toml`); the test
//! `header::the_committed_header_is_current` fails when `include/tally.h` is stale.
// Exporting unmangled symbols and reading C pointers is what this crate is for; every
// `unsafe` block is a read of a pointer the caller vouches for, per each function's
// `# Safety`.
#![allow(unsafe_code)]

mod error;

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::path::Path;
use std::time::Duration;

use tally_client::blocking::{self, LostWatch};
use tally_client::protocol::EndReason;
use tally_client::ClientConfig;

pub use error::TallyCode;
use error::{guard, guard_value, Failure};

/// A connection to a Tally server (or to the first of a list that answers), with its own
/// thread that heartbeats its leases and reconnects. Made by `tally_connect` or
/// `tally_connect_to`, freed by `tally_client_free`. May be used from several threads at
/// once.
pub struct TallyClient {
    client: blocking::Client,
}

/// Seats checked out by `tally_checkout`. While it lives the client heartbeats it and
/// resumes it after reconnects and server restarts. Ended by `tally_lease_release` (checks
/// in and waits for the server) or `tally_lease_free` (checks in, waiting at most 5 s).
pub struct TallyLease {
    /// The lost callback, if one is set; dropped before the lease so it never runs after.
    watch: Option<LostWatch>,
    lease: blocking::Lease,
    /// The lease id in hex, for `tally_lease_id`.
    id: CString,
    /// For `tally_lease_feature`.
    feature: CString,
}

/// Why a lease ended, as `tally_lease_lost` and the lost callback report it.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TallyEndReason {
    /// The lease is held: it has not ended.
    None = 0,
    /// Its holder checked it in.
    CheckedIn = 1,
    /// Not renewed within its time to live, or its entitlement ended.
    Expired = 2,
    /// An admin revoked the seats it was drawn from, or removed its entitlement.
    Revoked = 3,
    /// An admin released it (a forced check-in).
    Released = 4,
    /// Its user was deactivated.
    Deactivated = 5,
    /// The server no longer knows it (it ended while this client could not reach it).
    Unknown = 6,
    /// Another client instance of the same user resumed it.
    Moved = 7,
}

impl From<EndReason> for TallyEndReason {
    fn from(reason: EndReason) -> Self {
        match reason {
            EndReason::CheckedIn => TallyEndReason::CheckedIn,
            EndReason::Expired => TallyEndReason::Expired,
            EndReason::Revoked => TallyEndReason::Revoked,
            EndReason::Released => TallyEndReason::Released,
            EndReason::Deactivated => TallyEndReason::Deactivated,
            EndReason::Unknown => TallyEndReason::Unknown,
            EndReason::Moved => TallyEndReason::Moved,
        }
    }
}

/// The seat figures of one feature (SPEC §1), filled in by `tally_status`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct TallyFeatureStatus {
    /// Seats of the entitlements in force.
    pub total: u32,
    /// Of those, seats assigned to named users.
    pub assigned: u32,
    /// `total - assigned`: the floating pool.
    pub floating: u32,
    /// Seats held by online leases.
    pub in_use: u32,
    /// Seats borrowed for offline use.
    pub borrowed: u32,
    /// Floating seats free now.
    pub available: u32,
    /// Checkouts waiting in the queue (0 until servers have one).
    pub queued: u32,
}

/// Called once when the server ends a lease (see `tally_lease_on_lost`), with why and the
/// `user_data` given.
pub type TallyLostCallback =
    Option<unsafe extern "C" fn(reason: TallyEndReason, user_data: *mut c_void)>;

/// The calling thread's last error message: a sentence saying what failed and what to do.
/// Read it right after a call returned a code other than `TALLY_CODE_OK`; it stays valid
/// until the next failing call on the same thread. Never NULL (empty before any failure).
#[no_mangle]
pub extern "C" fn tally_last_error() -> *const c_char {
    error::last_error()
}

/// The stable name of a code (`"no_seat"`, `"unreachable"`, ...), as SPEC §4 and
/// `tally --json` spell the server's codes; `"unknown_code"` for a number that is no code.
#[no_mangle]
pub extern "C" fn tally_code_str(code: c_int) -> *const c_char {
    TallyCode::name(code)
        .unwrap_or("unknown_code\0")
        .as_ptr()
        .cast()
}

/// The name of an end reason (`"released"`, ...; `"none"` for a held lease).
#[no_mangle]
pub extern "C" fn tally_end_reason_str(reason: c_int) -> *const c_char {
    let name: &'static str = match reason {
        0 => "none\0",
        1 => "checked_in\0",
        2 => "expired\0",
        3 => "revoked\0",
        4 => "released\0",
        5 => "deactivated\0",
        6 => "unknown\0",
        7 => "moved\0",
        _ => "unknown_reason\0",
    };
    name.as_ptr().cast()
}

/// This library's version, e.g. `"0.1.0"`.
#[no_mangle]
pub extern "C" fn tally_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// Reads a C string argument that may not be NULL.
///
/// # Safety
/// `ptr` is NULL or points to a NUL-terminated string that outlives `'a`.
unsafe fn text<'a>(ptr: *const c_char, what: &str) -> Result<&'a str, Failure> {
    optional_text(ptr, what)?.ok_or_else(|| Failure::argument(format!("{what} is NULL")))
}

/// Reads a C string argument that may be NULL.
///
/// # Safety
/// As [`text`].
unsafe fn optional_text<'a>(ptr: *const c_char, what: &str) -> Result<Option<&'a str>, Failure> {
    if ptr.is_null() {
        return Ok(None);
    }
    CStr::from_ptr(ptr)
        .to_str()
        .map(Some)
        .map_err(|_| Failure::argument(format!("{what} is not UTF-8")))
}

/// Takes a handle argument that may not be NULL.
///
/// # Safety
/// `ptr` is NULL or a live handle of this library.
unsafe fn handle<'a, T>(ptr: *const T, what: &str) -> Result<&'a T, Failure> {
    ptr.as_ref()
        .ok_or_else(|| Failure::argument(format!("{what} is NULL")))
}

/// Checks an out-parameter and clears what it points to.
fn out<'a, T>(ptr: *mut *mut T, what: &str) -> Result<&'a mut *mut T, Failure> {
    // SAFETY: the caller gives NULL or a pointer to writable storage for a pointer.
    let slot = unsafe { ptr.as_mut() }
        .ok_or_else(|| Failure::argument(format!("{what} (the out-parameter) is NULL")))?;
    *slot = std::ptr::null_mut();
    Ok(slot)
}

/// A text for C: NUL bytes cannot be in it, so they are replaced.
fn c_string(text: &str) -> CString {
    CString::new(text.replace('\0', "\u{fffd}")).unwrap_or_default()
}

fn connect(config: ClientConfig, client: &mut *mut TallyClient) -> Result<(), Failure> {
    let connected = blocking::Client::connect(config)?;
    *client = Box::into_raw(Box::new(TallyClient { client: connected }));
    Ok(())
}

/// Connects with a client file (`servers`, `ca`, `token_file` or `token`, as `tally`
/// reads it) and signs in. With `client_file` NULL, the file is found as `tally` finds it:
/// `TALLY_CONFIG`, else `~/.config/tally/client.toml`. On success `*client` is a new
/// handle; on failure it is NULL.
///
/// # Safety
/// `client_file` is NULL or a NUL-terminated string; `client` points to writable storage.
#[no_mangle]
pub unsafe extern "C" fn tally_connect(
    client_file: *const c_char,
    client: *mut *mut TallyClient,
) -> TallyCode {
    guard(|| {
        let client = out(client, "client")?;
        let config = match optional_text(client_file, "client_file")? {
            Some(path) => ClientConfig::from_file(Path::new(path))?,
            None => ClientConfig::from_env()?,
        };
        connect(config, client)
    })
}

/// Connects to `servers` (`servers_len` strings `"HOST:PORT"`, tried in order), trusting
/// the CA certificate(s) in the PEM file `ca_file`, and signs in with `token`.
///
/// # Safety
/// `servers` points to `servers_len` NUL-terminated strings; `ca_file` and `token` are
/// NUL-terminated strings; `client` points to writable storage.
#[no_mangle]
pub unsafe extern "C" fn tally_connect_to(
    servers: *const *const c_char,
    servers_len: usize,
    ca_file: *const c_char,
    token: *const c_char,
    client: *mut *mut TallyClient,
) -> TallyCode {
    guard(|| {
        let client = out(client, "client")?;
        if servers.is_null() && servers_len > 0 {
            return Err(Failure::argument("servers is NULL"));
        }
        let list = (0..servers_len)
            .map(|i| text(*servers.add(i), &format!("servers[{i}]")).map(str::to_string))
            .collect::<Result<Vec<_>, _>>()?;
        let ca = text(ca_file, "ca_file")?;
        let token = text(token, "token")?;
        let config = ClientConfig::from_parts(list, Some(ca.into()), Some(token.into()), None)?;
        connect(config, client)
    })
}

/// Frees a client. Its leases stay valid and keep heartbeating until they are released
/// or freed themselves. NULL is ignored.
///
/// # Safety
/// `client` is NULL or a handle from `tally_connect*` not freed before, and no other
/// thread is using it.
#[no_mangle]
pub unsafe extern "C" fn tally_client_free(client: *mut TallyClient) {
    guard_value((), || {
        if !client.is_null() {
            drop(Box::from_raw(client));
        }
    })
}

/// Checks out `seats` seats of `feature`. When none is free: with `wait_ms` 0 fails at once
/// with `TALLY_CODE_NO_SEAT`; otherwise waits in the feature's queue on the server (first
/// come, first served) until a seat is granted or `wait_ms` milliseconds have passed, then
/// leaves the queue and fails with `TALLY_CODE_NO_SEAT`. (`TALLY_CODE_QUEUE_TIMEOUT` means
/// the same: treat both alike.) On success `*lease` is a new handle.
///
/// # Safety
/// `client` is a live client handle; `feature` a NUL-terminated string; `lease` points
/// to writable storage.
#[no_mangle]
pub unsafe extern "C" fn tally_checkout(
    client: *const TallyClient,
    feature: *const c_char,
    seats: u32,
    wait_ms: u64,
    lease: *mut *mut TallyLease,
) -> TallyCode {
    guard(|| {
        let lease = out(lease, "lease")?;
        let client = handle(client, "client")?;
        let feature = text(feature, "feature")?;
        let held =
            client
                .client
                .checkout_waiting(feature, seats, Duration::from_millis(wait_ms))?;
        let info = held.info();
        *lease = Box::into_raw(Box::new(TallyLease {
            watch: None,
            id: c_string(&info.id.to_string()),
            feature: c_string(&info.feature),
            lease: held,
        }));
        Ok(())
    })
}

/// The lease's id (hex), as `tally leases` shows it and `tally release` takes it. Valid
/// while the lease handle lives; NULL if `lease` is NULL.
///
/// # Safety
/// `lease` is NULL or a live lease handle.
#[no_mangle]
pub unsafe extern "C" fn tally_lease_id(lease: *const TallyLease) -> *const c_char {
    guard_value(std::ptr::null(), || match lease.as_ref() {
        Some(lease) => lease.id.as_ptr(),
        None => std::ptr::null(),
    })
}

/// The feature the lease holds seats of. Valid while the lease handle lives; NULL if
/// `lease` is NULL.
///
/// # Safety
/// `lease` is NULL or a live lease handle.
#[no_mangle]
pub unsafe extern "C" fn tally_lease_feature(lease: *const TallyLease) -> *const c_char {
    guard_value(std::ptr::null(), || match lease.as_ref() {
        Some(lease) => lease.feature.as_ptr(),
        None => std::ptr::null(),
    })
}

/// How many seats the lease holds (0 if `lease` is NULL).
///
/// # Safety
/// `lease` is NULL or a live lease handle.
#[no_mangle]
pub unsafe extern "C" fn tally_lease_seats(lease: *const TallyLease) -> u32 {
    guard_value(0, || lease.as_ref().map_or(0, |l| l.lease.info().seats))
}

/// Whether the lease was lost: `TALLY_END_REASON_NONE` while it is held, else why the
/// server ended it (released by an admin, revoked, expired while unreachable, ...). A lease
/// survives reconnects and server restarts without being lost. Cheap: poll it as often as
/// you like. `TALLY_END_REASON_NONE` if `lease` is NULL.
///
/// # Safety
/// `lease` is NULL or a live lease handle.
#[no_mangle]
pub unsafe extern "C" fn tally_lease_lost(lease: *const TallyLease) -> TallyEndReason {
    guard_value(TallyEndReason::None, || {
        lease
            .as_ref()
            .and_then(|lease| lease.lease.is_lost())
            .map_or(TallyEndReason::None, TallyEndReason::from)
    })
}

/// Has `callback(reason, user_data)` called once when the server ends the lease (at once
/// if it has already ended). It runs on a thread of the library's own, never on the
/// caller's; it may call any function of this library, including `tally_lease_free` on
/// this lease. It is not called for a lease its holder releases or frees: once
/// `tally_lease_release` or `tally_lease_free` returns, it is not running and will not
/// run. A second call replaces the first callback; a NULL `callback` removes it.
///
/// # Safety
/// `lease` is a live lease handle not used by another thread during this call;
/// `callback` is NULL or a function safe to call from another thread with `user_data`.
#[no_mangle]
pub unsafe extern "C" fn tally_lease_on_lost(
    lease: *mut TallyLease,
    callback: TallyLostCallback,
    user_data: *mut c_void,
) -> TallyCode {
    /// The caller's pointer, passed to its callback on the library's thread.
    struct UserData(*mut c_void);
    // SAFETY: the caller promises the callback may use `user_data` from another thread.
    unsafe impl Send for UserData {}

    guard(|| {
        let lease = lease
            .as_mut()
            .ok_or_else(|| Failure::argument("lease is NULL"))?;
        lease.watch = None;
        if let Some(callback) = callback {
            let user_data = UserData(user_data);
            lease.watch = Some(lease.lease.on_lost(move |reason| {
                let user_data = user_data;
                // SAFETY: as the caller promised for `callback` and `user_data`.
                unsafe { callback(reason.into(), user_data.0) }
            }));
        }
        Ok(())
    })
}

/// Checks the lease in, waits for the server to confirm, and frees the handle (always,
/// even on failure). A lease that was lost needs no check-in: `TALLY_CODE_OK`. NULL is
/// `TALLY_CODE_OK`.
///
/// # Safety
/// `lease` is NULL or a lease handle not freed before, not used by another thread.
#[no_mangle]
pub unsafe extern "C" fn tally_lease_release(lease: *mut TallyLease) -> TallyCode {
    guard(|| {
        if lease.is_null() {
            return Ok(());
        }
        let TallyLease { watch, lease, .. } = *Box::from_raw(lease);
        drop(watch);
        lease.release()?;
        Ok(())
    })
}

/// Frees the lease handle, checking the lease in first (waiting at most 5 s for the
/// server). NULL is ignored.
///
/// # Safety
/// As `tally_lease_release`.
#[no_mangle]
pub unsafe extern "C" fn tally_lease_free(lease: *mut TallyLease) {
    guard_value((), || {
        if !lease.is_null() {
            let TallyLease { watch, lease, .. } = *Box::from_raw(lease);
            drop(watch);
            drop(lease);
        }
    })
}

/// Fills `*status` with the seat figures of `feature`.
///
/// # Safety
/// `client` is a live client handle; `feature` a NUL-terminated string; `status` points
/// to writable storage.
#[no_mangle]
pub unsafe extern "C" fn tally_status(
    client: *const TallyClient,
    feature: *const c_char,
    status: *mut TallyFeatureStatus,
) -> TallyCode {
    guard(|| {
        let status = status
            .as_mut()
            .ok_or_else(|| Failure::argument("status (the out-parameter) is NULL"))?;
        let client = handle(client, "client")?;
        let feature = text(feature, "feature")?;
        let figures = client
            .client
            .status(Some(feature))?
            .into_iter()
            .find(|figures| figures.feature == feature)
            .ok_or_else(|| Failure {
                code: TallyCode::NotFound,
                message: format!("the server has no feature {feature}"),
            })?;
        *status = TallyFeatureStatus {
            total: figures.total,
            assigned: figures.assigned,
            floating: figures.floating,
            in_use: figures.in_use,
            borrowed: figures.borrowed,
            available: figures.available,
            queued: figures.queued,
        };
        Ok(())
    })
}

/// Borrows `seats` seats of `feature` for `duration_secs` seconds of offline use, bound to
/// this machine: the signed token is kept in the user's data directory, as `tally borrow`
/// keeps it, and `tally_verify_offline` checks it with no network. `expires_at_ms` (may
/// be NULL) receives the borrow's end, in milliseconds since the Unix epoch.
///
/// # Safety
/// `client` is a live client handle; `feature` a NUL-terminated string; `expires_at_ms`
/// NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn tally_borrow(
    client: *const TallyClient,
    feature: *const c_char,
    seats: u32,
    duration_secs: u64,
    expires_at_ms: *mut i64,
) -> TallyCode {
    guard(|| {
        let client = handle(client, "client")?;
        let feature = text(feature, "feature")?;
        let (lease, _file) =
            client
                .client
                .borrow(feature, seats, Duration::from_secs(duration_secs))?;
        if let Some(expires) = expires_at_ms.as_mut() {
            *expires = lease.expires_at;
        }
        Ok(())
    })
}

/// Gives back this machine's borrows of `feature` from the connected server;
/// `returned_seats` (may be NULL) receives how many seats the server took back. Nothing
/// to give back is `TALLY_CODE_NOT_FOUND`.
///
/// # Safety
/// `client` is a live client handle; `feature` a NUL-terminated string; `returned_seats`
/// NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn tally_return(
    client: *const TallyClient,
    feature: *const c_char,
    returned_seats: *mut u32,
) -> TallyCode {
    guard(|| {
        let client = handle(client, "client")?;
        let feature = text(feature, "feature")?;
        let returned = client.client.return_borrows(feature)?;
        if let Some(out) = returned_seats.as_mut() {
            *out = returned;
        }
        Ok(())
    })
}

/// Whether this machine holds a valid borrow of `feature`, checked with no network: the
/// token's signature against the `ca` of the client file (`client_file`, or with NULL the
/// one `tally_connect(NULL, ...)` would read), this machine, and the clock. Sets `*valid`;
/// `reason` (may be NULL) receives a sentence saying why, to free with `tally_string_free`.
/// `TALLY_CODE_OK` means the check ran, whatever its verdict.
///
/// # Safety
/// `client_file` NULL or a NUL-terminated string; `feature` a NUL-terminated string;
/// `valid` writable; `reason` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn tally_verify_offline(
    client_file: *const c_char,
    feature: *const c_char,
    valid: *mut bool,
    reason: *mut *mut c_char,
) -> TallyCode {
    guard(|| {
        let valid = valid
            .as_mut()
            .ok_or_else(|| Failure::argument("valid (the out-parameter) is NULL"))?;
        let mut reason = reason.as_mut();
        if let Some(reason) = reason.as_deref_mut() {
            *reason = std::ptr::null_mut();
        }
        let feature = text(feature, "feature")?;
        let config = match optional_text(client_file, "client_file")? {
            Some(path) => ClientConfig::from_file(Path::new(path))?,
            None => ClientConfig::from_env()?,
        };
        let verdict = tally_client::verify_offline(feature, &config.ca_pem)?;
        *valid = verdict.valid;
        if let Some(reason) = reason {
            *reason = c_string(&verdict.reason).into_raw();
        }
        Ok(())
    })
}

/// Frees a string this library returned to the caller's ownership. NULL is ignored.
///
/// # Safety
/// `text` is NULL or a string from this library not freed before.
#[no_mangle]
pub unsafe extern "C" fn tally_string_free(text: *mut c_char) {
    guard_value((), || {
        if !text.is_null() {
            drop(CString::from_raw(text));
        }
    })
}

#[cfg(test)]
mod header;
#[cfg(test)]
mod tests;
