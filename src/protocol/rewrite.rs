//! Rewriting replaces only the address part of a line and keeps every other byte,
//! including the server's text, punctuation and line terminator.

use std::net::SocketAddrV4;
use std::ops::Range;

use super::addr::{find_epsv_port, find_pasv_tuple, format_pasv_tuple, AddrError};

/// Rewrites the tuple in a `227` line to `to`, keeping every other byte.
///
/// Errors are those of [`find_pasv_tuple`]; `to` itself is not judged (0.0.0.0 or
/// port 0 are written as given).
pub fn rewrite_227(line: &[u8], to: SocketAddrV4) -> Result<Vec<u8>, AddrError> {
    let tuple = find_pasv_tuple(line)?;
    replace_span(line, tuple.span, format_pasv_tuple(to).as_bytes())
}

/// Rewrites the port in a `229` line to `port`, keeping the delimiter and text.
///
/// Errors are those of [`find_epsv_port`], and `OutOfRange` for `port == 0`, which
/// RFC 2428 cannot express (clients would read it as malformed).
pub fn rewrite_229(line: &[u8], port: u16) -> Result<Vec<u8>, AddrError> {
    let found = find_epsv_port(line)?;
    if port == 0 {
        return Err(AddrError::OutOfRange);
    }
    replace_span(line, found.span, port.to_string().as_bytes())
}

/// `line` with the bytes in `span` replaced by `with`. An out-of-bounds span is never
/// produced by the finders; it is an error rather than a panic or a line passed on
/// unrewritten (which would leak the backend's address).
fn replace_span(line: &[u8], span: Range<usize>, with: &[u8]) -> Result<Vec<u8>, AddrError> {
    let (Some(prefix), Some(suffix)) = (line.get(..span.start), line.get(span.end..)) else {
        return Err(AddrError::Malformed);
    };
    if span.start > span.end {
        return Err(AddrError::Malformed);
    }
    let mut out = Vec::with_capacity(prefix.len() + with.len() + suffix.len());
    out.extend_from_slice(prefix);
    out.extend_from_slice(with);
    out.extend_from_slice(suffix);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn nat() -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 9), 50_001)
    }

    #[test]
    fn rewrite_227_keeps_vsftpd_text_and_crlf() {
        let out = rewrite_227(b"227 Entering Passive Mode (10,0,0,2,156,64)\r\n", nat());
        assert_eq!(
            out.unwrap(),
            b"227 Entering Passive Mode (203,0,113,9,195,81)\r\n"
        );
    }

    #[test]
    fn rewrite_227_keeps_trailing_period_and_bare_lf() {
        let out = rewrite_227(b"227 Entering Passive Mode (172,16,1,69,171,37).\n", nat());
        assert_eq!(
            out.unwrap(),
            b"227 Entering Passive Mode (203,0,113,9,195,81).\n"
        );
    }

    #[test]
    fn rewrite_227_without_parentheses_keeps_old_wu_ftpd_shape() {
        let out = rewrite_227(
            b"227 Data transfer will passively listen to 127,0,0,1,4,51",
            nat(),
        );
        assert_eq!(
            out.unwrap(),
            b"227 Data transfer will passively listen to 203,0,113,9,195,81"
        );
        let out = rewrite_227(b"227 =127,0,0,1,4,51\r\n", nat());
        assert_eq!(out.unwrap(), b"227 =203,0,113,9,195,81\r\n");
    }

    #[test]
    fn rewrite_227_leaves_digits_in_text_alone() {
        let out = rewrite_227(b"227 v1.2 listening 2 (10,0,0,2,156,64)\r\n", nat());
        assert_eq!(
            out.unwrap(),
            b"227 v1.2 listening 2 (203,0,113,9,195,81)\r\n"
        );
    }

    #[test]
    fn rewrite_227_refuses_out_of_range_tuple_instead_of_leaking_it() {
        let line = b"227 Entering Passive Mode (10,0,1,2,256,22)\r\n";
        assert_eq!(rewrite_227(line, nat()), Err(AddrError::OutOfRange));
        assert_eq!(
            rewrite_227(b"227 nothing here\r\n", nat()),
            Err(AddrError::Missing)
        );
    }

    #[test]
    fn rewrite_227_shorter_replacement_changes_length() {
        let to = SocketAddrV4::new(Ipv4Addr::new(1, 2, 3, 4), 5);
        let out = rewrite_227(b"227 (255,255,255,255,255,255)\r\n", to).unwrap();
        assert_eq!(out, b"227 (1,2,3,4,0,5)\r\n");
    }

    #[test]
    fn rewrite_229_keeps_delimiter_text_and_period() {
        let out = rewrite_229(
            b"229 Entering Extended Passive Mode (|||6446|).\r\n",
            50_001,
        );
        assert_eq!(
            out.unwrap(),
            b"229 Entering Extended Passive Mode (|||50001|).\r\n"
        );
        let out = rewrite_229(b"229 (!!!6446!)\n", 21);
        assert_eq!(out.unwrap(), b"229 (!!!21!)\n");
    }

    #[test]
    fn rewrite_229_touches_only_the_last_group() {
        let out = rewrite_229(b"229 foo (bar) (|||6446|)\r\n", 7000);
        assert_eq!(out.unwrap(), b"229 foo (bar) (|||7000|)\r\n");
    }

    #[test]
    fn rewrite_229_refuses_port_zero_and_bad_lines() {
        assert_eq!(
            rewrite_229(b"229 (|||6446|)", 0),
            Err(AddrError::OutOfRange)
        );
        assert_eq!(rewrite_229(b"229 (|||0|)", 21), Err(AddrError::OutOfRange));
        assert_eq!(rewrite_229(b"229 no group", 21), Err(AddrError::Missing));
    }

    #[test]
    fn replace_span_out_of_bounds_is_an_error_not_a_panic() {
        assert_eq!(replace_span(b"abc", 2..9, b"x"), Err(AddrError::Malformed));
        #[allow(clippy::reversed_empty_ranges)]
        let inverted = 3..1;
        assert_eq!(
            replace_span(b"abc", inverted, b"x"),
            Err(AddrError::Malformed)
        );
        assert_eq!(replace_span(b"abc", 1..2, b"XY"), Ok(b"aXYc".to_vec()));
    }
}
