//! The daemon, linked into the test package so that tests can run it as a real process.

fn main() -> std::process::ExitCode {
    tally_server::cli::main()
}
