//! The boundary itself: bad arguments are codes with messages, never undefined behaviour,
//! and the names of the codes are the stable ones.

use std::ffi::{c_int, CStr};
use std::ptr;

use tally_client::protocol::ErrorCode;

use super::*;

fn last_error_text() -> String {
    // SAFETY: tally_last_error never returns NULL and the text lives until the next failure.
    unsafe { CStr::from_ptr(tally_last_error()) }
        .to_string_lossy()
        .into_owned()
}

fn code_name(code: c_int) -> String {
    // SAFETY: tally_code_str returns a static NUL-terminated string.
    unsafe { CStr::from_ptr(tally_code_str(code)) }
        .to_string_lossy()
        .into_owned()
}

#[test]
fn every_server_code_has_the_name_spec_gives_it() {
    for code in ErrorCode::ALL {
        let failure = Failure::from(tally_client::Error::Server(
            tally_client::protocol::ErrorBody::new(code, "refused"),
        ));
        assert_eq!(code_name(failure.code as c_int), code.as_str());
    }
    assert_eq!(code_name(TallyCode::Ok as c_int), "ok");
    assert_eq!(code_name(TallyCode::Unreachable as c_int), "unreachable");
    assert_eq!(code_name(TallyCode::Panic as c_int), "panic");
    assert_eq!(code_name(12345), "unknown_code");
}

#[test]
fn null_arguments_are_errors_that_say_which() {
    // SAFETY: every pointer passed is NULL or valid; the functions must check the NULLs.
    unsafe {
        let code = tally_connect(ptr::null(), ptr::null_mut());
        assert_eq!(code, TallyCode::InvalidArgument);
        assert!(
            last_error_text().contains("client"),
            "{}",
            last_error_text()
        );

        let mut lease = ptr::dangling_mut::<TallyLease>();
        let code = tally_checkout(ptr::null(), c"vray".as_ptr(), 1, 0, &mut lease);
        assert_eq!(code, TallyCode::InvalidArgument);
        assert!(lease.is_null(), "the out-parameter is cleared on failure");
        assert_eq!(last_error_text(), "client is NULL");

        let mut status = TallyFeatureStatus::default();
        let code = tally_status(ptr::null(), ptr::null(), &mut status);
        assert_eq!(code, TallyCode::InvalidArgument);

        assert_eq!(tally_lease_lost(ptr::null()), TallyEndReason::None);
        assert!(tally_lease_id(ptr::null()).is_null());
        assert_eq!(tally_lease_release(ptr::null_mut()), TallyCode::Ok);
        tally_lease_free(ptr::null_mut());
        tally_client_free(ptr::null_mut());
        tally_string_free(ptr::null_mut());
    }
}

#[test]
fn text_that_is_not_utf8_is_refused() {
    let bad = [b'c', 0xff, b'.', b't', b'o', b'm', b'l', 0];
    let mut client = ptr::null_mut();
    // SAFETY: `bad` is NUL-terminated and `client` is writable.
    let code = unsafe { tally_connect(bad.as_ptr().cast(), &mut client) };
    assert_eq!(code, TallyCode::InvalidArgument);
    assert_eq!(last_error_text(), "client_file is not UTF-8");
}

#[test]
fn a_missing_client_file_is_a_configuration_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = CString::new(dir.path().join("nope.toml").to_str().unwrap()).unwrap();
    let mut client = ptr::null_mut();
    // SAFETY: `path` is NUL-terminated and `client` is writable.
    let code = unsafe { tally_connect(path.as_ptr(), &mut client) };
    assert_eq!(code, TallyCode::InvalidConfig);
    assert!(client.is_null());
    assert!(
        last_error_text().contains("nope.toml"),
        "{}",
        last_error_text()
    );
}

#[test]
fn the_last_error_is_the_calling_threads_own() {
    // SAFETY: NULL arguments only, which the function checks.
    let code = unsafe { tally_connect(ptr::null(), ptr::null_mut()) };
    assert_eq!(code, TallyCode::InvalidArgument);
    let other = std::thread::spawn(last_error_text).join().unwrap();
    assert_eq!(other, "", "another thread has no error of its own");
    assert!(!last_error_text().is_empty());
}

#[test]
fn a_panic_inside_is_a_code_not_an_unwind() {
    let code = error::guard(|| panic!("boom"));
    assert_eq!(code, TallyCode::Panic);
    assert!(last_error_text().contains("boom"), "{}", last_error_text());
}
