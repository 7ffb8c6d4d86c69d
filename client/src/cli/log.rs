//! The log of `tally` (`-v`, `TALLY_LOG`): the library's warnings on stderr, one line per
//! event, escaped as a whole.
//!
//! The library logs what servers say (a refusal's message, why a connection ended, the
//! leader a standby names) in its fields, and those fields are formatted by
//! tracing-subscriber, which leaves newlines, bidirectional overrides and most controls as
//! they are. Escaping each field where it is logged would need every `tracing` call of the
//! library, present and future, to remember it. Instead the writer escapes the event's
//! whole text ([`clean`]) before it reaches stderr, keeping only the one newline that ends
//! it: whatever a field holds, it stays on its line and cannot drive the terminal.

use std::io::{self, Write};

use tracing_subscriber::fmt::MakeWriter;

use super::output::clean;

/// Installs the log on stderr at `level` (or as `TALLY_LOG` says).
pub fn to_stderr(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TALLY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(EscapedStderr)
        // Colours are escape sequences: the writer would show them as text.
        .with_ansi(false)
        .with_target(false)
        .try_init();
}

/// Makes an [`EventWriter`] for each event.
#[derive(Debug, Clone, Copy)]
pub struct EscapedStderr;

impl<'a> MakeWriter<'a> for EscapedStderr {
    type Writer = EventWriter<io::Stderr>;

    // The event is escaped before it is written.
    #[allow(clippy::disallowed_methods)]
    fn make_writer(&'a self) -> Self::Writer {
        EventWriter::new(io::stderr())
    }
}

/// The text of one event, gathered as tracing-subscriber writes it and written escaped,
/// as one line, when the event is done (dropped).
#[derive(Debug)]
pub struct EventWriter<W: Write> {
    /// What the event wrote so far; whole, so that a character split between two writes
    /// is escaped as one.
    text: Vec<u8>,
    /// Where the line goes.
    out: W,
}

impl<W: Write> EventWriter<W> {
    pub fn new(out: W) -> Self {
        Self {
            text: Vec::new(),
            out,
        }
    }

    /// The event's line: its text escaped, a trailing newline kept as the line's end.
    fn line(&self) -> String {
        let text = String::from_utf8_lossy(&self.text);
        let body = text.strip_suffix('\n').unwrap_or(&text);
        format!("{}\n", clean(body))
    }
}

impl<W: Write> Write for EventWriter<W> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.text.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<W: Write> Drop for EventWriter<W> {
    fn drop(&mut self) {
        if self.text.is_empty() {
            return;
        }
        let line = self.line();
        // A log line that cannot be written is lost, as eprintln's would be.
        let _ = self
            .out
            .write_all(line.as_bytes())
            .and_then(|()| self.out.flush());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer whose bytes the test can read after the event writer is gone.
    #[derive(Clone, Default)]
    struct Shared(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn logged(writes: &[&[u8]]) -> String {
        let out = Shared::default();
        let mut writer = EventWriter::new(out.clone());
        for bytes in writes {
            writer.write_all(bytes).unwrap();
        }
        drop(writer);
        let bytes = out.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn an_event_is_one_line_with_its_controls_escaped() {
        let event = "2026-01-01T00:00:00Z  WARN background request refused error=\u{1b}]0;pwned\u{7}\n2026-01-01T00:00:00Z  INFO signed in as owner\u{9b}2J\u{202e}\n";
        assert_eq!(
            logged(&[event.as_bytes()]),
            "2026-01-01T00:00:00Z  WARN background request refused error=\\x1b]0;pwned\\x07\\n2026-01-01T00:00:00Z  INFO signed in as owner\\x9b2J\\u{202e}\n"
        );
    }

    #[test]
    fn a_character_split_between_writes_is_escaped_whole() {
        let csi = "\u{9b}".as_bytes();
        assert_eq!(csi.len(), 2);
        assert_eq!(
            logged(&[b"a", &csi[..1], &csi[1..], "é\n".as_bytes()]),
            "a\\x9bé\n"
        );
    }

    #[test]
    fn a_line_always_ends_in_one_newline_and_nothing_is_written_for_nothing() {
        assert_eq!(logged(&[b"no newline"]), "no newline\n");
        assert_eq!(logged(&[b"two\n\n"]), "two\\n\n");
        assert_eq!(logged(&[]), "");
    }
}
