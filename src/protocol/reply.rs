//! Server replies (RFC 959 §4.2).
//!
//! A reply is one line `xyz text`, or a multi-line block from `xyz-text` to the
//! next line that begins with the *same* code followed by a space. Lines in between
//! may begin with anything, including other codes such as `227 ` (servers are meant
//! to pad them, many don't).

use nom::Parser;

use super::line::trim_eol;

/// A three-digit reply code, 100..=599.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReplyCode(pub u16);

impl ReplyCode {
    /// 1xx: more replies to the same command follow.
    pub fn is_preliminary(self) -> bool {
        (100..200).contains(&self.0)
    }
    /// 2xx–5xx: completes the command it answers.
    pub fn is_final(self) -> bool {
        (200..600).contains(&self.0)
    }
}

/// What one reply line means in the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyLine {
    /// `xyz text` outside a multi-line block: a whole reply in one line.
    Single(ReplyCode),
    /// `xyz-text`: first line of a multi-line reply.
    Begin(ReplyCode),
    /// A line inside a multi-line block that does not end it.
    Inner,
    /// `xyz text` with the block's code: last line of a multi-line reply.
    End(ReplyCode),
}

/// Why a server line is not a valid reply line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    /// Outside a multi-line block, the line does not start with a code in 100..=599
    /// followed by a space, a `-`, or the end of the line.
    #[error("malformed reply line")]
    Malformed,
}

/// Tracks multi-line state across lines of the reply stream. Feed it every line in order.
#[derive(Debug, Default, Clone)]
pub struct ReplyFramer {
    open: Option<ReplyCode>,
}

impl ReplyFramer {
    /// A framer outside any multi-line block.
    pub fn new() -> Self {
        Self::default()
    }

    /// Classifies the next line (terminator optional). A bare code line `xyz` with no
    /// text counts as `Single`/`End`. On `Err`, the framer's state is unchanged.
    ///
    /// Inside a block only the terminating line is interpreted; every other line,
    /// including empty, non-UTF-8 or code-less ones, is `Inner` (RFC 959 §4.2).
    pub fn classify(&mut self, line: &[u8]) -> Result<ReplyLine, ReplyError> {
        let line = trim_eol(line);
        if let Some(open) = self.open {
            // RFC 959 §4.2: the block ends at the same code followed by a space.
            // `230-more` inside a `230-` block, or `2301 x`, does not end it.
            return Ok(match code_and_separator(line) {
                Some((code, Separator::Space | Separator::End)) if code == open => {
                    self.open = None;
                    ReplyLine::End(open)
                }
                _ => ReplyLine::Inner,
            });
        }
        match code_and_separator(line) {
            Some((code, Separator::Space | Separator::End)) => Ok(ReplyLine::Single(code)),
            Some((code, Separator::Hyphen)) => {
                self.open = Some(code);
                Ok(ReplyLine::Begin(code))
            }
            None => Err(ReplyError::Malformed),
        }
    }

    /// True while inside a multi-line block.
    pub fn in_block(&self) -> bool {
        self.open.is_some()
    }
}

/// Reads the leading three-digit code of a line, if it has one in 100..=599.
///
/// Exactly three digits: a fourth digit (`2201 x`) means the line has no code.
/// What follows the code is not checked here; see [`ReplyFramer::classify`].
pub fn parse_code(line: &[u8]) -> Option<ReplyCode> {
    grammar::reply_code.parse(line).ok().map(|(_, code)| code)
}

/// What follows a reply code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Separator {
    Space,
    Hyphen,
    End,
}

/// The code of a well-formed reply line (terminator already stripped) and the byte
/// after it; `None` when the line has no valid code or the code is followed by
/// anything other than a space, a `-` or the end of the line.
fn code_and_separator(line: &[u8]) -> Option<(ReplyCode, Separator)> {
    grammar::code_and_separator
        .parse(line)
        .ok()
        .map(|(_, found)| found)
}

/// nom grammar of the start of a reply line (RFC 959 §4.2). The error type is `()`:
/// a failed parse only means "no code here".
mod grammar {
    use nom::branch::alt;
    use nom::bytes::complete::{tag, take_while_m_n};
    use nom::character::complete::digit1;
    use nom::combinator::{eof, map_opt, not, value};
    use nom::sequence::terminated;
    use nom::{IResult, Parser};

    use super::{ReplyCode, Separator};

    type PResult<'a, O> = IResult<&'a [u8], O, ()>;

    /// Exactly three digits with a value in 100..=599; a fourth digit (`2201`) is not
    /// a code.
    pub(super) fn reply_code(i: &[u8]) -> PResult<'_, ReplyCode> {
        map_opt(
            terminated(
                take_while_m_n(3, 3, |b: u8| b.is_ascii_digit()),
                not(digit1),
            ),
            |digits: &[u8]| {
                let value = digits
                    .iter()
                    .fold(0u16, |acc, &d| acc * 10 + u16::from(d - b'0'));
                (100..=599).contains(&value).then_some(ReplyCode(value))
            },
        )
        .parse(i)
    }

    /// `xyz` followed by a space, a `-` or the end of the line; the text after the
    /// separator is not examined.
    pub(super) fn code_and_separator(i: &[u8]) -> PResult<'_, (ReplyCode, Separator)> {
        let separator = alt((
            value(Separator::Space, tag(&b" "[..])),
            value(Separator::Hyphen, tag(&b"-"[..])),
            value(Separator::End, eof),
        ));
        (reply_code, separator).parse(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classify_all(lines: &[&[u8]]) -> Vec<Result<ReplyLine, ReplyError>> {
        let mut framer = ReplyFramer::new();
        lines.iter().map(|l| framer.classify(l)).collect()
    }

    #[test]
    fn single_line_greeting_from_vsftpd() {
        let mut f = ReplyFramer::new();
        assert_eq!(
            f.classify(b"220 (vsFTPd 3.0.5)\r\n"),
            Ok(ReplyLine::Single(ReplyCode(220)))
        );
        assert!(!f.in_block());
    }

    #[test]
    fn bare_code_without_text_as_sent_by_minimal_servers_is_single() {
        let mut f = ReplyFramer::new();
        assert_eq!(
            f.classify(b"220\r\n"),
            Ok(ReplyLine::Single(ReplyCode(220)))
        );
        assert_eq!(f.classify(b"226"), Ok(ReplyLine::Single(ReplyCode(226))));
        assert_eq!(f.classify(b"200 \n"), Ok(ReplyLine::Single(ReplyCode(200))));
    }

    #[test]
    fn proftpd_multiline_banner_ends_at_same_code_and_space() {
        let r = classify_all(&[b"220-Welcome\r\n", b"220-second line\r\n", b"220 ready\r\n"]);
        assert_eq!(
            r,
            vec![
                Ok(ReplyLine::Begin(ReplyCode(220))),
                Ok(ReplyLine::Inner),
                Ok(ReplyLine::End(ReplyCode(220))),
            ]
        );
    }

    #[test]
    fn feat_reply_with_indented_extension_lines_and_unpadded_codes() {
        // RFC 2389 FEAT: extension lines indented by one space; some servers also put
        // bare codes inside that must not end the block.
        let mut f = ReplyFramer::new();
        assert_eq!(
            f.classify(b"211-Features:\r\n"),
            Ok(ReplyLine::Begin(ReplyCode(211)))
        );
        for inner in [
            &b" EPSV\r\n"[..],
            b" 211 not an end, it is indented\r\n",
            b"211-still inside\r\n",
            b"227 Entering Passive Mode (1,2,3,4,5,6)\r\n",
            b"230 other code\r\n",
            b"\r\n",
            b"\xff\xfe garbage\r\n",
            b"2111 four digits\r\n",
        ] {
            assert_eq!(f.classify(inner), Ok(ReplyLine::Inner), "{inner:?}");
            assert!(f.in_block());
        }
        assert_eq!(
            f.classify(b"211 End\r\n"),
            Ok(ReplyLine::End(ReplyCode(211)))
        );
        assert!(!f.in_block());
    }

    #[test]
    fn login_banner_230_hyphen_more_inside_230_block_stays_open() {
        let r = classify_all(&[b"230-Hello\r\n", b"230-more\r\n", b"230\r\n"]);
        assert_eq!(
            r,
            vec![
                Ok(ReplyLine::Begin(ReplyCode(230))),
                Ok(ReplyLine::Inner),
                Ok(ReplyLine::End(ReplyCode(230))),
            ]
        );
    }

    #[test]
    fn next_reply_after_block_is_framed_independently() {
        let r = classify_all(&[
            b"211-a\n",
            b"211 b\n",
            b"227 Entering Passive Mode (1,2,3,4,5,6)\n",
        ]);
        assert_eq!(r[2], Ok(ReplyLine::Single(ReplyCode(227))));
    }

    #[test]
    fn out_of_range_or_short_codes_outside_block_are_malformed() {
        let mut f = ReplyFramer::new();
        for bad in [
            &b"099 x"[..],
            b"600 x",
            b"22 x",
            b"abc",
            b"",
            b"\r\n",
            b" 220 x",
            b"2200 x",
            b"220\tx",
            b"220_x",
        ] {
            assert_eq!(f.classify(bad), Err(ReplyError::Malformed), "{bad:?}");
            assert!(!f.in_block());
        }
    }

    #[test]
    fn malformed_line_leaves_framer_state_unchanged() {
        let mut f = ReplyFramer::new();
        assert_eq!(f.classify(b"nonsense"), Err(ReplyError::Malformed));
        assert!(!f.in_block());
        assert_eq!(f.classify(b"150 ok"), Ok(ReplyLine::Single(ReplyCode(150))));
    }

    #[test]
    fn preliminary_1xx_multiline_reply() {
        let r = classify_all(&[b"150-Opening\r\n", b"150 data\r\n"]);
        assert_eq!(r[1], Ok(ReplyLine::End(ReplyCode(150))));
        assert!(ReplyCode(150).is_preliminary());
        assert!(!ReplyCode(150).is_final());
        assert!(ReplyCode(226).is_final());
    }

    #[test]
    fn parse_code_bounds() {
        assert_eq!(parse_code(b"100"), Some(ReplyCode(100)));
        assert_eq!(parse_code(b"599 x"), Some(ReplyCode(599)));
        assert_eq!(parse_code(b"099 x"), None);
        assert_eq!(parse_code(b"600"), None);
        assert_eq!(parse_code(b"22"), None);
        assert_eq!(parse_code(b"2201"), None);
        assert_eq!(parse_code(b"227-x"), Some(ReplyCode(227)));
    }
}
