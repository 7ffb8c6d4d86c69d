//! Text a peer chose, made safe to show a person: on a terminal, in a log line.
//!
//! Everything a server or client says can be chosen by whoever runs it: error messages,
//! feature and user names, hosts, programs. Shown raw, an escape sequence (ESC, the 8-bit
//! CSI U+009B and OSC U+009D, BEL) can retitle, clear or rewrite an admin's terminal, a
//! newline can forge a line that looks like the program's own, and a bidirectional override
//! or an invisible format character can make one name look like another. [`escape`] writes
//! each such character as a readable escape (`\x1b`, `\n`, `\u{202e}`) and leaves the rest of
//! Unicode (accents, CJK, emoji) alone. The CLI escapes every line it prints for people with
//! it, the daemon every peer-supplied log field (`tallyd`'s `logtext::peer`).

use std::borrow::Cow;
use std::fmt;

/// Whether `c` must not reach a terminal or a log line raw: C0 and C1 controls and DEL
/// (escape sequences start with them; newlines forge lines), the Unicode line and
/// paragraph separators, and the format characters (category Cf: bidirectional marks,
/// overrides and isolates, which reorder what is shown; zero-width and invisible
/// characters and tags, which hide text). The zero-width joiner and non-joiner stay: they
/// are part of ordinary writing (Persian, Indic scripts) and of emoji, and move nothing.
pub fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{00ad}'
                | '\u{0600}'..='\u{0605}'
                | '\u{061c}'
                | '\u{06dd}'
                | '\u{070f}'
                | '\u{0890}'..='\u{0891}'
                | '\u{08e2}'
                | '\u{180e}'
                | '\u{200b}'
                | '\u{200e}'..='\u{200f}'
                | '\u{2028}'..='\u{202e}'
                | '\u{2060}'..='\u{2064}'
                | '\u{2066}'..='\u{206f}'
                | '\u{feff}'
                | '\u{fff9}'..='\u{fffb}'
                | '\u{110bd}'
                | '\u{110cd}'
                | '\u{13430}'..='\u{1343f}'
                | '\u{1bca0}'..='\u{1bca3}'
                | '\u{1d173}'..='\u{1d17a}'
                | '\u{e0001}'
                | '\u{e0020}'..='\u{e007f}'
        )
}

/// Writes the escape of one unsafe character: `\n`, `\r`, `\t`, `\xNN` for the other
/// controls below U+00A0 (C0, DEL, C1: ESC is `\x1b`, BEL `\x07`, as tracing-subscriber
/// writes them in a log message), `\u{NNNN}` for the rest.
pub fn write_escape(out: &mut impl fmt::Write, c: char) -> fmt::Result {
    match c {
        '\n' => out.write_str("\\n"),
        '\r' => out.write_str("\\r"),
        '\t' => out.write_str("\\t"),
        c if (c as u32) < 0xa0 => write!(out, "\\x{:02x}", c as u32),
        c => write!(out, "\\u{{{:x}}}", c as u32),
    }
}

/// `text` with every [unsafe](is_unsafe) character escaped ([`write_escape`]); borrowed when
/// there is none. A backslash stays as it is, so that paths and the text people typed read
/// as written; where text must be unambiguous (the daemon's log) the caller doubles it.
pub fn escape(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_unsafe) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if is_unsafe(c) {
            // Writing to a String cannot fail.
            let _ = write_escape(&mut out, c);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_sequences_bells_and_newlines_are_shown_not_obeyed() {
        assert_eq!(
            escape("\u{1b}]0;pwned\u{7}\u{1b}[2J\r\nrow"),
            "\\x1b]0;pwned\\x07\\x1b[2J\\r\\nrow"
        );
        assert_eq!(escape("tab\there\0\u{7f}"), "tab\\there\\x00\\x7f");
    }

    #[test]
    fn c1_controls_are_escaped() {
        // The 8-bit CSI and OSC, and NEL (a line break on some terminals).
        assert_eq!(escape("a\u{9b}31mb"), "a\\x9b31mb");
        assert_eq!(escape("\u{9d}0;t\u{9c}"), "\\x9d0;t\\x9c");
        assert_eq!(escape("x\u{85}y"), "x\\x85y");
        for c in '\u{80}'..='\u{9f}' {
            assert!(is_unsafe(c), "{:x}", c as u32);
        }
    }

    #[test]
    fn bidi_and_invisible_format_characters_are_escaped() {
        assert_eq!(escape("txt\u{202e}exe.doc"), "txt\\u{202e}exe.doc");
        for c in [
            '\u{200e}',
            '\u{200f}',
            '\u{202a}',
            '\u{202b}',
            '\u{202c}',
            '\u{202d}',
            '\u{2066}',
            '\u{2067}',
            '\u{2068}',
            '\u{2069}',
            '\u{061c}',
            '\u{200b}',
            '\u{2060}',
            '\u{feff}',
            '\u{00ad}',
            '\u{2028}',
            '\u{2029}',
            '\u{e0041}',
        ] {
            let shown = escape(&format!("a{c}b")).into_owned();
            assert_eq!(shown, format!("a\\u{{{:x}}}b", c as u32));
        }
    }

    #[test]
    fn ordinary_text_is_left_alone() {
        for text in [
            "render-07.studio",
            "Zoë Müller",
            "名前 ✓ Ελληνικά العربية",
            "C:\\Users\\zoe",
            "👩\u{200d}💻",
            "",
        ] {
            assert!(
                matches!(escape(text), Cow::Borrowed(t) if t == text),
                "{text}"
            );
        }
    }

    #[test]
    fn nothing_escaped_holds_a_character_to_escape() {
        let all: String = (0..0x3000)
            .chain(0xe0000..0xe0080)
            .filter_map(char::from_u32)
            .collect();
        let shown = escape(&all);
        assert!(!shown.chars().any(is_unsafe));
        assert!(!shown.chars().any(char::is_control));
    }
}
