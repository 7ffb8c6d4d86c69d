//! `tallyd`: the Tally license daemon.

fn main() -> std::process::ExitCode {
    tally_server::cli::main()
}
