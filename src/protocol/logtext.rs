//! Network text made safe for text logs.
//!
//! Reply text from backends and command text from clients end up in log lines. Written
//! raw, a CR or LF forges a new log line (`\rINFO ftpgate: session ended ...`), an ESC
//! starts a terminal escape sequence (recolouring, retitling or clearing the operator's
//! terminal), and invalid UTF-8 breaks log shippers. [`LogText`] shows such text as one
//! inert line instead:
//!
//! | input | shown as |
//! |---|---|
//! | CR, LF, TAB | `\r`, `\n`, `\t` |
//! | other C0 controls (ESC, NUL, BEL, ...), DEL | `\x1b`, `\x00`, `\x07`, `\x7f` |
//! | C1 controls (U+0080..U+009F), U+2028, U+2029, bidi overrides and isolates | `\u{85}`, `\u{202e}`, ... |
//! | a byte that is not valid UTF-8 | `\xNN` |
//! | anything else (backslash included) | itself |
//!
//! A backslash is not doubled, so escaping twice changes nothing: text already escaped
//! (e.g. by [`redact_for_log`](super::command::redact_for_log)) may be wrapped again.
//! The output never contains a control character, which is the property that matters.

use std::fmt::{self, Write as _};

/// Displays bytes from the network as one line of printable text (see the module
/// docs). Use it for every logged field whose text came from a peer:
/// `warn!(reply = %LogText(line), ...)`.
#[derive(Clone, Copy)]
pub struct LogText<'a>(pub &'a [u8]);

impl<'a> LogText<'a> {
    /// For text already held as a `str` (user names, lossily decoded lines).
    #[allow(clippy::should_implement_trait)] // not `FromStr`: borrows, cannot fail
    pub fn from_str(s: &'a str) -> Self {
        LogText(s.as_bytes())
    }
}

impl fmt::Display for LogText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for chunk in self.0.utf8_chunks() {
            let valid = chunk.valid();
            // Runs of safe characters go out in one write.
            let mut start = 0;
            for (i, c) in valid.char_indices() {
                if needs_escape(c) {
                    f.write_str(valid.get(start..i).unwrap_or_default())?;
                    write_escaped(f, c)?;
                    start = i + c.len_utf8();
                }
            }
            f.write_str(valid.get(start..).unwrap_or_default())?;
            for b in chunk.invalid() {
                write!(f, "\\x{b:02x}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for LogText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_char('"')?;
        fmt::Display::fmt(self, f)?;
        f.write_char('"')
    }
}

/// `bytes` escaped as [`LogText`] shows them.
pub fn escape_for_log(bytes: &[u8]) -> String {
    LogText(bytes).to_string()
}

fn needs_escape(c: char) -> bool {
    c.is_control() // C0, DEL, C1
        || matches!(
            c,
            // Line and paragraph separators: some viewers break lines there.
            '\u{2028}' | '\u{2029}'
            // Bidi embeddings, overrides and isolates: they reorder what follows on
            // the displayed line ("Trojan Source").
            | '\u{202a}'..='\u{202e}'
            | '\u{2066}'..='\u{2069}'
        )
}

fn write_escaped(f: &mut fmt::Formatter<'_>, c: char) -> fmt::Result {
    match c {
        '\r' => f.write_str("\\r"),
        '\n' => f.write_str("\\n"),
        '\t' => f.write_str("\\t"),
        c if c.is_ascii() => write!(f, "\\x{:02x}", u32::from(c)),
        c => write!(f, "\\u{{{:x}}}", u32::from(c)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn esc(b: &[u8]) -> String {
        escape_for_log(b)
    }

    #[test]
    fn printable_ascii_and_unicode_pass_unchanged() {
        let printable: Vec<u8> = (0x20..0x7f).collect();
        assert_eq!(esc(&printable).as_bytes(), &printable[..]);
        assert_eq!(
            esc("230 Willkommen, Zoë — 日本 🦀".as_bytes()),
            "230 Willkommen, Zoë — 日本 🦀"
        );
        assert_eq!(esc(b""), "");
    }

    #[test]
    fn every_c0_control_and_del_is_escaped() {
        for b in (0u8..0x20).chain([0x7f]) {
            let want = match b {
                b'\r' => "\\r".to_string(),
                b'\n' => "\\n".to_string(),
                b'\t' => "\\t".to_string(),
                b => format!("\\x{b:02x}"),
            };
            assert_eq!(esc(&[b]), want, "byte {b:#04x}");
            assert_eq!(esc(&[b'a', b, b'z']), format!("a{want}z"), "byte {b:#04x}");
        }
    }

    #[test]
    fn terminal_escape_sequences_are_inert() {
        assert_eq!(esc(b"\x1b[31mred\x1b[0m"), "\\x1b[31mred\\x1b[0m");
        assert_eq!(esc(b"\x1b]0;title\x07"), "\\x1b]0;title\\x07");
    }

    #[test]
    fn forged_log_lines_stay_on_one_line() {
        let forged =
            b"550 no\r\n2026-01-01T00:00:00Z  INFO ftpgate: session ended\rINFO ftpgate: x";
        let out = esc(forged);
        assert!(!out.contains('\r') && !out.contains('\n'));
        assert_eq!(
            out,
            "550 no\\r\\n2026-01-01T00:00:00Z  INFO ftpgate: session ended\\rINFO ftpgate: x"
        );
    }

    #[test]
    fn c1_controls_separators_and_bidi_are_escaped() {
        for c in (0x80u32..0xa0).filter_map(char::from_u32) {
            let s = c.to_string();
            assert_eq!(esc(s.as_bytes()), format!("\\u{{{:x}}}", u32::from(c)));
        }
        for c in [
            '\u{2028}', '\u{2029}', '\u{202a}', '\u{202e}', '\u{2066}', '\u{2069}',
        ] {
            let s = format!("a{c}b");
            assert_eq!(esc(s.as_bytes()), format!("a\\u{{{:x}}}b", u32::from(c)));
        }
        // Neighbours of the escaped ranges are ordinary text.
        assert_eq!(
            esc("\u{a0}\u{2027}\u{202f}\u{2065}\u{206a}".as_bytes())
                .chars()
                .count(),
            5
        );
    }

    #[test]
    fn invalid_utf8_is_shown_byte_by_byte() {
        assert_eq!(esc(b"ok \xff\xfe end"), "ok \\xff\\xfe end");
        // A truncated multi-byte sequence, then valid text.
        assert_eq!(esc(b"\xe6\x97 x"), "\\xe6\\x97 x");
        // An overlong encoding of '/' and a lone continuation byte.
        assert_eq!(esc(b"\xc0\xaf\x80"), "\\xc0\\xaf\\x80");
        // Latin-1 C1 as a raw byte is invalid UTF-8, shown as a byte.
        assert_eq!(esc(b"\x9b31m"), "\\x9b31m");
    }

    #[test]
    fn escaping_is_idempotent() {
        let nasty = b"a\r\nb\x1b[1m\xff\\x41 \xc2\x85 \xe2\x80\xae";
        let once = esc(nasty);
        assert_eq!(esc(once.as_bytes()), once);
    }

    #[test]
    fn output_never_contains_a_control_character_for_any_byte_pair() {
        for a in 0..=255u8 {
            for b in 0..=255u8 {
                let out = esc(&[a, b]);
                assert!(
                    !out.chars().any(needs_escape),
                    "{a:#04x} {b:#04x} -> {out:?}"
                );
            }
        }
    }

    #[test]
    fn debug_is_quoted_display() {
        assert_eq!(format!("{:?}", LogText(b"x\ry")), "\"x\\ry\"");
        assert_eq!(format!("{}", LogText::from_str("u\x1b")), "u\\x1b");
    }
}
