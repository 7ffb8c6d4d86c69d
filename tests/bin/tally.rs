//! The CLI, linked into the test package so that tests can run it as a real process.
//!
//! `TALLY_TEST_MACHINE_ID_FILES` (a path list) replaces the files the machine id is read
//! from, so that tests can stand in for other machines; the real `tally` has no such knob.

fn main() -> std::process::ExitCode {
    match std::env::var_os("TALLY_TEST_MACHINE_ID_FILES") {
        Some(files) => tally_client::cli::main_with_machine_id_files(
            &std::env::split_paths(&files).collect::<Vec<_>>(),
        ),
        None => tally_client::cli::main(),
    }
}
