//! The CLI, linked into the test package so that tests can run it as a real process.

fn main() -> std::process::ExitCode {
    tally_client::cli::main()
}
