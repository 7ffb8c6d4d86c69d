//! Text a peer chose (`Hello.host` and `agent`, machine ids, feature names, usernames), made
//! safe to write to the log: control characters (newlines, escape sequences), bidirectional
//! overrides and invisible format characters are escaped as `\n`, `\x1b`, `\u{202e}` and so
//! on (`tally_protocol::text`, which the CLI uses too), a backslash is doubled, and the text
//! is cut at [`MAX_CHARS`] characters, so that no peer can forge log lines, reach the admin's
//! terminal or fill the disk through the log.

use std::fmt;

use tally_protocol::text;

/// The most characters of one peer-supplied value written to the log.
pub const MAX_CHARS: usize = 256;

/// Peer-supplied text as it is logged: `tracing::info!(host = %logtext::peer(&host), ...)`.
pub fn peer(text: &str) -> Escaped<'_> {
    Escaped(text)
}

/// See [`peer`].
#[derive(Debug, Clone, Copy)]
pub struct Escaped<'a>(&'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (written, (at, c)) in self.0.char_indices().enumerate() {
            if written == MAX_CHARS {
                return write!(f, "…(+{} bytes)", self.0.len() - at);
            }
            match c {
                '\\' => f.write_str("\\\\")?,
                c if text::is_unsafe(c) => text::write_escape(f, c)?,
                c => fmt::Write::write_char(f, c)?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped() {
        let forged = "ws-12\n2026-01-01T00:00:00Z  INFO tallyd: owner signed in\x1b[2J\x07\u{202e}";
        let logged = peer(forged).to_string();
        assert_eq!(
            logged,
            "ws-12\\n2026-01-01T00:00:00Z  INFO tallyd: owner signed in\\x1b[2J\\x07\\u{202e}"
        );
        assert!(!logged.chars().any(|c| c.is_control()), "{logged:?}");
        assert_eq!(
            peer("a\\nb").to_string(),
            "a\\\\nb",
            "escapes stay unambiguous"
        );
        assert_eq!(peer("render-07.studio").to_string(), "render-07.studio");
        assert_eq!(peer("Zoë").to_string(), "Zoë");
    }

    #[test]
    fn long_text_is_cut_and_says_how_much_was_left_out() {
        let long = "é".repeat(10_000);
        let logged = peer(&long).to_string();
        assert!(logged.starts_with(&"é".repeat(MAX_CHARS)));
        assert!(
            logged.ends_with(&format!("…(+{} bytes)", 2 * (10_000 - MAX_CHARS))),
            "{logged}"
        );
        assert!(logged.len() < 2 * MAX_CHARS + 32);
        let exact = "x".repeat(MAX_CHARS);
        assert_eq!(peer(&exact).to_string(), exact, "nothing cut at the limit");
    }
}
