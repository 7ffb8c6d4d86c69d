//! `tally completions SHELL` and `tally man`: a shell completion script and the manual page
//! (roff), generated from the argument definitions so that they never go stale.

use std::io::Write;

use clap::CommandFactory;

use super::args::Cli;
use super::failure::{exit, Failure};

/// A documentation command, answered with no server and no configuration.
pub enum Action {
    Completions(clap_complete::Shell),
    Man,
}

impl Action {
    pub fn run(self) -> Result<u8, Failure> {
        let text = match self {
            Action::Completions(shell) => completions(shell),
            Action::Man => man_page().map_err(Failure::printing)?,
        };
        let mut stdout = std::io::stdout().lock();
        stdout
            .write_all(&text)
            .and_then(|()| stdout.flush())
            .map_err(Failure::printing)?;
        Ok(exit::OK)
    }
}

/// The completion script of `tally` for `shell`.
fn completions(shell: clap_complete::Shell) -> Vec<u8> {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "tally", &mut script);
    script
}

/// The manual page of `tally`, in roff, with every command in its COMMANDS section.
fn man_page() -> std::io::Result<Vec<u8>> {
    let mut page = Vec::new();
    clap_mangen::Man::new(Cli::command()).render(&mut page)?;
    Ok(page)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completion_scripts_know_the_commands_and_options() {
        for shell in [
            clap_complete::Shell::Bash,
            clap_complete::Shell::Zsh,
            clap_complete::Shell::Fish,
        ] {
            let script = String::from_utf8(completions(shell)).unwrap();
            for word in ["tally", "checkout", "entitlement", "token-file", "json"] {
                assert!(script.contains(word), "{shell:?} script lacks {word}");
            }
        }
    }

    #[test]
    fn the_man_page_is_roff_naming_every_command() {
        let page = String::from_utf8(man_page().unwrap()).unwrap();
        assert!(
            page.starts_with(".ie") || page.contains(".TH tally"),
            "{page}"
        );
        for word in ["checkout", "borrow", "audit", "completions", "token\\-file"] {
            assert!(page.contains(word), "the man page lacks {word}");
        }
    }
}
