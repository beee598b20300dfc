//! Bounded line framing for the control channel.
//!
//! RFC 959 lines end in CRLF; RFC 1123 §4.1.2.10 asks us to accept bare LF too.
//! Framing never allocates: it reports where the next line ends in a buffer.

/// Default longest control line accepted (terminator included).
pub const DEFAULT_MAX_LINE: usize = 4096;

/// Why a line could not be framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    /// `max` bytes arrived without a line terminator.
    #[error("line longer than {max} bytes")]
    TooLong {
        /// The line-length limit, in bytes.
        max: usize,
    },
}

/// Finds the first complete line in `buf`.
///
/// Returns `Ok(Some(n))` where `buf[..n]` is the line *including* its terminator (`\n`,
/// possibly preceded by `\r`), `Ok(None)` when more bytes are needed, and
/// `Err(TooLong)` when no terminator occurs within the first `max` bytes
/// (a line of exactly `max` bytes including its `\n` is accepted).
///
/// Only the first `max` bytes are ever examined. With `max == 0` every call is
/// `TooLong` (no line can fit).
pub fn find_line(buf: &[u8], max: usize) -> Result<Option<usize>, LineError> {
    let window = buf.get(..max).unwrap_or(buf);
    match window.iter().position(|&b| b == b'\n') {
        Some(i) => Ok(Some(i + 1)),
        // `window` is all of `buf` here unless `buf` already holds `max` bytes.
        None if buf.len() >= max => Err(LineError::TooLong { max }),
        None => Ok(None),
    }
}

/// Strips one trailing `\n` and then one trailing `\r`, if present.
///
/// The two are independent: `b"x\r"` (a final fragment cut before its `\n`) becomes
/// `b"x"`, and `b"x\r\r\n"` becomes `b"x\r"` (only one terminator is removed; the
/// remaining `\r` belongs to the opaque argument).
pub fn trim_eol(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crlf_line_as_sent_by_rfc959_servers() {
        assert_eq!(find_line(b"220 ready\r\n", 4096), Ok(Some(11)));
    }

    #[test]
    fn bare_lf_line_as_sent_by_unix_clients_rfc1123() {
        assert_eq!(find_line(b"USER bob\nPASS x\n", 4096), Ok(Some(9)));
    }

    #[test]
    fn line_split_across_tcp_segments_needs_more_bytes() {
        assert_eq!(find_line(b"227 Entering Passive Mode (1,2", 4096), Ok(None));
        assert_eq!(find_line(b"227 ok\r", 4096), Ok(None));
        assert_eq!(find_line(b"", 4096), Ok(None));
    }

    #[test]
    fn several_replies_in_one_segment_yield_first_line_only() {
        let buf = b"150 Opening\r\n226 Done\r\n";
        assert_eq!(find_line(buf, 4096), Ok(Some(13)));
        assert_eq!(find_line(&buf[13..], 4096), Ok(Some(10)));
    }

    #[test]
    fn line_of_exactly_max_bytes_including_lf_is_accepted() {
        let mut line = vec![b'a'; 9];
        line.push(b'\n');
        assert_eq!(find_line(&line, 10), Ok(Some(10)));
        line.push(b'x');
        assert_eq!(find_line(&line, 10), Ok(Some(10)));
    }

    #[test]
    fn endless_line_from_flooding_peer_is_too_long_at_max() {
        let line = vec![b'a'; 10];
        assert_eq!(find_line(&line, 10), Err(LineError::TooLong { max: 10 }));
        assert_eq!(find_line(&line[..9], 10), Ok(None));
        // A terminator beyond the window does not rescue the line.
        let mut long = vec![b'a'; 10];
        long.push(b'\n');
        assert_eq!(find_line(&long, 10), Err(LineError::TooLong { max: 10 }));
    }

    #[test]
    fn zero_max_never_fits_a_line() {
        assert_eq!(find_line(b"\n", 0), Err(LineError::TooLong { max: 0 }));
        assert_eq!(find_line(b"", 0), Err(LineError::TooLong { max: 0 }));
    }

    #[test]
    fn empty_line_is_one_byte_or_two() {
        assert_eq!(find_line(b"\n", 4096), Ok(Some(1)));
        assert_eq!(find_line(b"\r\n", 4096), Ok(Some(2)));
    }

    #[test]
    fn trim_eol_strips_crlf_lf_and_lone_cr() {
        assert_eq!(trim_eol(b"NOOP\r\n"), b"NOOP");
        assert_eq!(trim_eol(b"NOOP\n"), b"NOOP");
        assert_eq!(trim_eol(b"NOOP\r"), b"NOOP");
        assert_eq!(trim_eol(b"NOOP"), b"NOOP");
        assert_eq!(trim_eol(b""), b"");
        assert_eq!(trim_eol(b"\r\n"), b"");
    }

    #[test]
    fn trim_eol_removes_only_one_terminator_from_odd_clients() {
        assert_eq!(trim_eol(b"RETR a\r\r\n"), b"RETR a\r");
        assert_eq!(trim_eol(b"RETR a\n\n"), b"RETR a\n");
        // LF before CR is not a terminator pair.
        assert_eq!(trim_eol(b"RETR a\n\r"), b"RETR a\n");
    }
}
