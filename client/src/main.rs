//! `tally`: the command-line client of the Tally license server.

fn main() -> std::process::ExitCode {
    tally_client::cli::main()
}
