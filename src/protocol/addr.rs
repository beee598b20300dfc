//! Address forms carried in the control channel.
//!
//! - `227` replies and `PORT` arguments: `h1,h2,h3,h4,p1,p2` (RFC 959), every field 0..=255.
//! - `229` replies: `(<d><d><d>port<d>)` (RFC 2428), `<d>` any ASCII 33..=126.
//! - `EPRT` arguments: `<d>1<d>ipv4<d>port<d>` or `<d>2<d>ipv6<d>port<d>`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4};
use std::ops::Range;

use nom::combinator::all_consuming;
use nom::Parser;

/// Why an address in a `227`/`229`/`PORT`/`EPRT` could not be parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AddrError {
    /// No address where one was expected.
    #[error("no host-port tuple found")]
    Missing,
    /// A number too large for its field (byte, port).
    #[error("field out of range")]
    OutOfRange,
    /// An `EPRT` network protocol other than 1 (IPv4) or 2 (IPv6).
    #[error("unsupported network protocol")]
    UnsupportedProtocol,
    /// Not of the form the command or reply requires.
    #[error("malformed address")]
    Malformed,
}

/// A `227` tuple found in a reply line: its byte range within the line and its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasvTuple {
    /// Range of `h1,h2,h3,h4,p1,p2` in the line (exactly the six numbers and five commas).
    pub span: Range<usize>,
    /// The address and port the six numbers name.
    pub addr: SocketAddrV4,
}

/// Finds the `h1,h2,h3,h4,p1,p2` tuple in a `227` reply line (code and text included,
/// terminator optional). RFC 1123 §4.1.2.6: parentheses may be absent and digits may
/// appear in the text before the tuple, so this scans for the first run of exactly six
/// comma-separated decimal numbers (each 1–3 digits, optional spaces around commas are
/// NOT accepted) not preceded or followed by another digit or comma-digit. A run whose
/// fields are not all 0..=255 is `OutOfRange` (never wrapped into a neighbour). The search
/// starts after the 3-digit code.
///
/// Resolved details: a run of six numbers where a field has more than three digits
/// (`1024`) is `OutOfRange`, like any field above 255. Runs of any other length (a
/// seven-number run `1,2,3,4,5,6,7`, a version number `1.2`) are not the tuple and are
/// skipped; if no six-number run follows, the result is `Missing`.
pub fn find_pasv_tuple(line: &[u8]) -> Result<PasvTuple, AddrError> {
    const CODE_LEN: usize = 3;
    let haystack = line.get(CODE_LEN..).unwrap_or_default();
    let mut pos = 0;
    // Candidates start at a digit not preceded by a digit or `digit,` (those belong to
    // the run just skipped); each candidate run is consumed whole, so a seven-number run
    // is never re-read from its second number as a six-number one.
    while let Some(offset) = haystack
        .get(pos..)
        .and_then(|rest| rest.iter().position(u8::is_ascii_digit))
    {
        let start = pos + offset;
        let candidate = haystack.get(start..).unwrap_or_default();
        let Ok((_, run)) = grammar::number_run.parse(candidate) else {
            // Unreachable: `candidate` starts with a digit, so a run is always found.
            break;
        };
        if let Some(fields) = run.host_port {
            return Ok(PasvTuple {
                span: CODE_LEN + start..CODE_LEN + start + run.text.len(),
                addr: tuple_from_fields(fields)?,
            });
        }
        pos = start + run.text.len();
    }
    Err(AddrError::Missing)
}

/// Builds `h1.h2.h3.h4:p1*256+p2` from six digit strings, each checked to 0..=255.
fn tuple_from_fields(fields: [&[u8]; 6]) -> Result<SocketAddrV4, AddrError> {
    let mut bytes = [0u8; 6];
    for (byte, field) in bytes.iter_mut().zip(fields) {
        // Never truncate or wrap: `256` or `1024` must not become a neighbour's value.
        *byte = match decimal(field) {
            None => return Err(AddrError::Malformed),
            Some(_) if field.len() > 3 => return Err(AddrError::OutOfRange),
            Some(v) => u8::try_from(v).map_err(|_| AddrError::OutOfRange)?,
        };
    }
    let [h1, h2, h3, h4, p1, p2] = bytes;
    Ok(SocketAddrV4::new(
        Ipv4Addr::new(h1, h2, h3, h4),
        u16::from_be_bytes([p1, p2]),
    ))
}

/// Value of a non-empty all-digit string, saturating at `u64::MAX`; `None` otherwise.
fn decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(digits.iter().fold(0u64, |acc, &d| {
        acc.saturating_mul(10).saturating_add(u64::from(d - b'0'))
    }))
}

/// A TCP port 1..=65535 from its decimal digits (RFC 2428 `<tcp-port>`).
fn tcp_port(digits: &[u8]) -> Result<u16, AddrError> {
    let value = decimal(digits).ok_or(AddrError::Malformed)?;
    match u16::try_from(value) {
        Ok(port) if port != 0 => Ok(port),
        _ => Err(AddrError::OutOfRange),
    }
}

/// RFC 2428 §2: the delimiter is any ASCII 33..=126; a digit would be ambiguous with
/// the port, so it is refused.
fn is_delimiter(b: u8) -> bool {
    (33..=126).contains(&b) && !b.is_ascii_digit()
}

/// An EPSV `229` port found in a reply line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpsvPort {
    /// Range of the decimal port digits in the line.
    pub span: Range<usize>,
    /// The port named.
    pub port: u16,
    /// The delimiter character used (usually `|`), kept for rewriting.
    pub delimiter: u8,
}

/// Finds the port in a `229` reply line: the *last* parenthesised group
/// (`229 foo (bar) (|||6446|)`) of the form `(ddd<port>d)`, with the same delimiter `d`
/// (ASCII 33..=126, not a digit) four times. Port must be 1..=65535.
///
/// Groups of another shape after the port group (`(|||6446|) (took 2 ms)`) are
/// skipped; no group of this shape at all is `Missing`, a port of 0 or above 65535
/// in the last such group is `OutOfRange`.
pub fn find_epsv_port(line: &[u8]) -> Result<EpsvPort, AddrError> {
    // Try the group grammar at every `(`, last first. A delimiter may itself be `(`
    // (`((((21()`), so candidates overlap and each one is tried, not just the
    // outermost.
    let opens = line
        .iter()
        .enumerate()
        .rev()
        .filter(|&(_, &b)| b == b'(')
        .map(|(i, _)| i);
    for open in opens {
        let candidate = line.get(open..).unwrap_or_default();
        let Ok((_, group)) = grammar::epsv_group.parse(candidate) else {
            continue;
        };
        let start = open + group.port_offset;
        return Ok(EpsvPort {
            span: start..start + group.port.len(),
            port: tcp_port(group.port)?,
            delimiter: group.delimiter,
        });
    }
    Err(AddrError::Missing)
}

/// Parses a `PORT` argument `h1,h2,h3,h4,p1,p2` (surrounding spaces tolerated).
/// Every field must be 0..=255; the result may be 0.0.0.0 or port 0: callers decide
/// whether that is an acceptable *target*.
///
/// An empty argument is `Missing`; a wrong number of fields, empty or non-digit
/// fields, or spaces inside are `Malformed`; then any field above 255 is `OutOfRange`.
pub fn parse_port_arg(arg: &[u8]) -> Result<SocketAddrV4, AddrError> {
    let arg = arg.trim_ascii();
    if arg.is_empty() {
        return Err(AddrError::Missing);
    }
    // Shape first, values second: `10,0,1,2,256,x` is `Malformed`, not `OutOfRange`.
    let (_, fields) = all_consuming(grammar::host_port)
        .parse(arg)
        .map_err(|_| AddrError::Malformed)?;
    tuple_from_fields(fields)
}

/// Parses an `EPRT` argument `<d><proto><d><addr><d><port><d>`. Protocol `1` requires an
/// IPv4 literal and `2` an IPv6 literal (never split on `:`); other protocols are
/// `UnsupportedProtocol`. Port must be 1..=65535.
///
/// Resolved details: surrounding whitespace is tolerated as for `PORT`; an empty
/// argument is `Missing`; a bad delimiter, a field count other than three, a missing
/// trailing delimiter, a non-numeric protocol, or an address that is not a literal of
/// the announced family is `Malformed`; an all-digit protocol other than `1`/`2` is
/// `UnsupportedProtocol`; port 0 or above 65535 is `OutOfRange`. IPv4-mapped IPv6
/// under protocol `2` is returned as IPv6 (see [`canonical_ip`]); zone ids
/// (`fe80::1%eth0`) are refused as `Malformed`.
pub fn parse_eprt_arg(arg: &[u8]) -> Result<SocketAddr, AddrError> {
    let arg = arg.trim_ascii();
    if arg.is_empty() {
        return Err(AddrError::Missing);
    }
    let (_, eprt) = all_consuming(grammar::eprt)
        .parse(arg)
        .map_err(|_| AddrError::Malformed)?;
    // Checked in this order: address before port, so `|3|x|0|` is
    // `UnsupportedProtocol` and `|1|x|0|` is `Malformed`.
    let addr = std::str::from_utf8(eprt.addr).map_err(|_| AddrError::Malformed)?;
    let ip = match eprt.proto {
        b"1" => IpAddr::V4(addr.parse::<Ipv4Addr>().map_err(|_| AddrError::Malformed)?),
        b"2" => IpAddr::V6(addr.parse::<Ipv6Addr>().map_err(|_| AddrError::Malformed)?),
        // The grammar only lets digits through as a protocol number.
        _ => return Err(AddrError::UnsupportedProtocol),
    };
    Ok(SocketAddr::new(ip, tcp_port(eprt.port)?))
}

/// nom grammars of the address forms. They only recognise shapes and hand back the
/// raw fields; value checks (0..=255, 1..=65535, address literals) stay with the
/// callers, which decide between `Malformed`, `OutOfRange` and `UnsupportedProtocol`.
/// The error type is `()`: a failed parse means "not this shape", nothing more.
mod grammar {
    use nom::bytes::complete::{tag, take_till};
    use nom::character::complete::{char, digit1};
    use nom::combinator::{not, recognize, verify};
    use nom::multi::many0_count;
    use nom::number::complete::u8 as byte;
    use nom::sequence::{preceded, terminated};
    use nom::{IResult, Offset, Parser};

    use super::is_delimiter;

    type PResult<'a, O> = IResult<&'a [u8], O, ()>;

    /// `,<digits>`: the next field of a comma-separated number run. On `,` without a
    /// digit it fails without consuming, so a run `1,2,3,4,5,6,)` ends at `6`.
    fn next_number(i: &[u8]) -> PResult<'_, &[u8]> {
        preceded(char(','), digit1).parse(i)
    }

    /// The six raw fields of a host-port, in order.
    pub(super) type HostPort<'a> = [&'a [u8]; 6];

    /// RFC 959 host-port `h1,h2,h3,h4,p1,p2`: six digit strings of any length (their
    /// values are checked by the caller), no spaces.
    pub(super) fn host_port(i: &[u8]) -> PResult<'_, HostPort<'_>> {
        (
            digit1,
            next_number,
            next_number,
            next_number,
            next_number,
            next_number,
        )
            .map(|(h1, h2, h3, h4, p1, p2)| [h1, h2, h3, h4, p1, p2])
            .parse(i)
    }

    /// A maximal comma-separated number run `n,n,...,n`.
    pub(super) struct NumberRun<'a> {
        /// The run itself: its length gives the span, and lets the caller skip runs of
        /// any other length whole.
        pub text: &'a [u8],
        /// Its fields when it has exactly six numbers.
        pub host_port: Option<HostPort<'a>>,
    }

    /// The number run at the start of `i` (which must be a digit). RFC 1123 §4.1.2.6:
    /// the `227` tuple is recognised by shape alone, as the run of exactly six numbers.
    pub(super) fn number_run(i: &[u8]) -> PResult<'_, NumberRun<'_>> {
        let (rest, text) = recognize(preceded(digit1, many0_count(next_number))).parse(i)?;
        // `digit1` is greedy, so after six fields only `,<digit>` could extend the run.
        let host_port = terminated(host_port, not(next_number))
            .parse(text)
            .ok()
            .map(|(_, fields)| fields);
        Ok((rest, NumberRun { text, host_port }))
    }

    /// RFC 2428 §2 delimiter byte.
    fn delimiter(i: &[u8]) -> PResult<'_, u8> {
        verify(byte, |&d| is_delimiter(d)).parse(i)
    }

    /// The bytes up to the next `d`, then that `d`.
    fn field_before(d: u8) -> impl FnMut(&[u8]) -> PResult<'_, &[u8]> {
        move |i| terminated(take_till(|b| b == d), tag(&[d][..])).parse(i)
    }

    /// A `229` group `(<d><d><d><port><d>)` (RFC 2428 §3).
    pub(super) struct EpsvGroup<'a> {
        pub delimiter: u8,
        /// Offset of the port digits from the `(`.
        pub port_offset: usize,
        pub port: &'a [u8],
    }

    /// RFC 2428 §3 `229` group at the start of `i`, the same delimiter four times.
    pub(super) fn epsv_group(i: &[u8]) -> PResult<'_, EpsvGroup<'_>> {
        let (after_open, d) = preceded(char('('), delimiter).parse(i)?;
        let (digits, _) = tag(&[d, d][..]).parse(after_open)?;
        let (rest, port) = terminated(digit1, tag(&[d, b')'][..])).parse(digits)?;
        let group = EpsvGroup {
            delimiter: d,
            port_offset: i.offset(digits),
            port,
        };
        Ok((rest, group))
    }

    /// The raw fields of an `EPRT` argument.
    pub(super) struct Eprt<'a> {
        pub proto: &'a [u8],
        pub addr: &'a [u8],
        pub port: &'a [u8],
    }

    /// RFC 2428 §2 `<d><net-prt><d><net-addr><d><tcp-port><d>`. The protocol must be
    /// digits; address and port are any bytes but `d` (checked by the caller, address
    /// first). Trailing bytes are left for `all_consuming` to refuse.
    pub(super) fn eprt(i: &[u8]) -> PResult<'_, Eprt<'_>> {
        let (i, d) = delimiter(i)?;
        let (i, proto) = terminated(digit1, tag(&[d][..])).parse(i)?;
        let (i, (addr, port)) = (field_before(d), field_before(d)).parse(i)?;
        Ok((i, Eprt { proto, addr, port }))
    }
}

/// Formats `h1,h2,h3,h4,p1,p2`.
pub fn format_pasv_tuple(addr: SocketAddrV4) -> String {
    let [h1, h2, h3, h4] = addr.ip().octets();
    let [p1, p2] = addr.port().to_be_bytes();
    format!("{h1},{h2},{h3},{h4},{p1},{p2}")
}

/// Formats an EPRT argument with delimiter `|`: `|1|192.0.2.7|6446|` or `|2|2001:db8::7|6446|`.
/// IPv4-mapped IPv6 addresses are formatted as protocol 1.
///
/// Scope ids and flow labels of IPv6 addresses are not representable and are dropped.
pub fn format_eprt_arg(addr: SocketAddr) -> String {
    let port = addr.port();
    match canonical_ip(addr.ip()) {
        IpAddr::V4(ip) => format!("|1|{ip}|{port}|"),
        IpAddr::V6(ip) => format!("|2|{ip}|{port}|"),
    }
}

/// Maps IPv4-mapped IPv6 (`::ffff:a.b.c.d`) to IPv4; other addresses unchanged.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

/// Addresses that cannot be reached across the internet (RFC 1918, loopback,
/// link-local, CGNAT RFC 6598, unspecified): a `227` naming one, from a server with a
/// public control address, is a server behind its own NAT.
pub fn is_private_v4(ip: std::net::Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    ip.is_private()
        || ip.is_loopback()
        || ip.is_link_local()
        || ip.is_unspecified()
        || (a == 100 && (64..128).contains(&b))
}

/// Addresses a data connection must never be relayed to on a server's say-so:
/// loopback, link-local, unspecified, multicast and broadcast (IPv4 and IPv6,
/// IPv4-mapped included). A backend naming one in `227` is either broken or trying to
/// reach services on ftpgate's own host or segment.
pub fn is_never_a_data_target(ip: IpAddr) -> bool {
    match canonical_ip(ip) {
        IpAddr::V4(v4) => {
            v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_multicast()
                || v4.is_broadcast()
        }
        IpAddr::V6(v6) => {
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (v6.segments()[0] & 0xffc0) == 0xfe80
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddrV6;

    fn v4(a: u8, b: u8, c: u8, d: u8, port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::new(a, b, c, d), port)
    }

    fn tuple_text(line: &[u8]) -> &[u8] {
        let t = find_pasv_tuple(line).expect("tuple");
        &line[t.span]
    }

    // ---- 227 ----

    #[test]
    fn pasv_reply_rfc959_parenthesised_as_sent_by_vsftpd() {
        let line = b"227 Entering Passive Mode (127,0,0,1,4,51)\r\n";
        let t = find_pasv_tuple(line).unwrap();
        assert_eq!(t.addr, v4(127, 0, 0, 1, 1075));
        assert_eq!(&line[t.span], b"127,0,0,1,4,51");
    }

    #[test]
    fn pasv_reply_with_trailing_period_as_sent_by_ms_ftp() {
        let line = b"227 Entering Passive Mode (172,16,1,69,171,37).\r\n";
        let t = find_pasv_tuple(line).unwrap();
        assert_eq!(t.addr, v4(172, 16, 1, 69, 171 * 256 + 37));
        assert_eq!(&line[t.span], b"172,16,1,69,171,37");
    }

    #[test]
    fn pasv_reply_without_parentheses_as_sent_by_old_wu_ftpd() {
        let line = b"227 Data transfer will passively listen to 127,0,0,1,4,51\r\n";
        assert_eq!(find_pasv_tuple(line).unwrap().addr, v4(127, 0, 0, 1, 1075));
        assert_eq!(tuple_text(line), b"127,0,0,1,4,51");
    }

    #[test]
    fn pasv_reply_tuple_after_sentence_period_rfc1123() {
        let line = b"227 Entering passive mode. 127,0,0,1,4,51\r\n";
        assert_eq!(find_pasv_tuple(line).unwrap().addr, v4(127, 0, 0, 1, 1075));
    }

    #[test]
    fn pasv_reply_equals_form_as_sent_by_some_embedded_servers() {
        let line = b"227 =127,0,0,1,4,51";
        let t = find_pasv_tuple(line).unwrap();
        assert_eq!(t.addr, v4(127, 0, 0, 1, 1075));
        assert_eq!(t.span, 5..19);
    }

    #[test]
    fn pasv_reply_with_digits_in_text_before_tuple() {
        let line = b"227 Entering Passive Mode 2 (10,0,0,2,156,64)\r\n";
        assert_eq!(
            find_pasv_tuple(line).unwrap().addr,
            v4(10, 0, 0, 2, 156 * 256 + 64)
        );
        let line = b"227 v1.2 listening (10,0,0,2,156,64)\r\n";
        assert_eq!(
            find_pasv_tuple(line).unwrap().addr,
            v4(10, 0, 0, 2, 156 * 256 + 64)
        );
        let line = b"227 3,2,1 go (10,0,0,2,156,64)\r\n";
        assert_eq!(tuple_text(line), b"10,0,0,2,156,64");
    }

    #[test]
    fn pasv_reply_search_starts_after_the_code() {
        // Without skipping the code, `227` would be a seventh field.
        let line = b"227,10,0,0,2,156,64";
        assert_eq!(
            find_pasv_tuple(line).unwrap().addr,
            v4(10, 0, 0, 2, 156 * 256 + 64)
        );
    }

    #[test]
    fn pasv_reply_field_256_is_out_of_range_not_wrapped() {
        let line = b"227 Entering Passive Mode (10,0,1,2,256,22)\r\n";
        assert_eq!(find_pasv_tuple(line), Err(AddrError::OutOfRange));
        let line = b"227 Entering Passive Mode (256,0,1,2,4,22)\r\n";
        assert_eq!(find_pasv_tuple(line), Err(AddrError::OutOfRange));
    }

    #[test]
    fn pasv_reply_port_as_one_number_from_buggy_server_is_out_of_range() {
        let line = b"227 Entering Passive Mode (10,0,0,2,1024,64)\r\n";
        assert_eq!(find_pasv_tuple(line), Err(AddrError::OutOfRange));
        let line = b"227 (10,0,0,2,0004,64)";
        assert_eq!(find_pasv_tuple(line), Err(AddrError::OutOfRange));
    }

    #[test]
    fn pasv_reply_seven_number_run_is_not_a_tuple() {
        let line = b"227 Entering Passive Mode (10,0,0,2,156,64,1)\r\n";
        assert_eq!(find_pasv_tuple(line), Err(AddrError::Missing));
        let line = b"227 id 1,2,3,4,5,6,7 then (10,0,0,2,156,64)\r\n";
        assert_eq!(tuple_text(line), b"10,0,0,2,156,64");
    }

    #[test]
    fn pasv_reply_five_numbers_is_missing() {
        let line = b"227 Entering Passive Mode (10,0,0,2,156)\r\n";
        assert_eq!(find_pasv_tuple(line), Err(AddrError::Missing));
    }

    #[test]
    fn pasv_reply_with_spaces_after_commas_is_not_a_tuple() {
        let line = b"227 Entering Passive Mode (10, 0, 0, 2, 156, 64)\r\n";
        assert_eq!(find_pasv_tuple(line), Err(AddrError::Missing));
    }

    #[test]
    fn pasv_reply_trailing_comma_ends_the_run() {
        let line = b"227 Entering Passive Mode (10,0,0,2,156,64,)\r\n";
        assert_eq!(tuple_text(line), b"10,0,0,2,156,64");
    }

    #[test]
    fn pasv_reply_zero_address_and_port_zero_parse_caller_decides() {
        // A backend replying 0,0,0,0 means "my control address".
        let line = b"227 Entering Passive Mode (0,0,0,0,0,0)\r\n";
        assert_eq!(find_pasv_tuple(line).unwrap().addr, v4(0, 0, 0, 0, 0));
    }

    #[test]
    fn pasv_reply_extremes_of_every_field() {
        let line = b"227 (255,255,255,255,255,255)";
        assert_eq!(
            find_pasv_tuple(line).unwrap().addr,
            v4(255, 255, 255, 255, 65535)
        );
        let line = b"227 (010,000,00,1,4,051)";
        assert_eq!(find_pasv_tuple(line).unwrap().addr, v4(10, 0, 0, 1, 1075));
    }

    #[test]
    fn pasv_reply_without_tuple_or_truncated() {
        assert_eq!(find_pasv_tuple(b"227"), Err(AddrError::Missing));
        assert_eq!(find_pasv_tuple(b"22"), Err(AddrError::Missing));
        assert_eq!(find_pasv_tuple(b""), Err(AddrError::Missing));
        assert_eq!(
            find_pasv_tuple(b"227 Entering Passive Mode"),
            Err(AddrError::Missing)
        );
        assert_eq!(
            find_pasv_tuple(b"227 Entering Passive Mode (1,2,3,"),
            Err(AddrError::Missing)
        );
    }

    #[test]
    fn pasv_reply_huge_digit_run_does_not_overflow() {
        let line = b"227 (99999999999999999999999999,0,0,1,4,51)";
        assert_eq!(find_pasv_tuple(line), Err(AddrError::OutOfRange));
    }

    // ---- 229 ----

    #[test]
    fn epsv_reply_rfc2428_pipe_delimiter() {
        let line = b"229 Entering Extended Passive Mode (|||6446|)\r\n";
        let p = find_epsv_port(line).unwrap();
        assert_eq!(p.port, 6446);
        assert_eq!(p.delimiter, b'|');
        assert_eq!(&line[p.span], b"6446");
    }

    #[test]
    fn epsv_reply_with_parentheses_in_text_uses_last_group() {
        let line = b"229 foo (bar) (|||6446|)\r\n";
        let p = find_epsv_port(line).unwrap();
        assert_eq!(p.port, 6446);
        assert_eq!(&line[p.span], b"6446");
        let line = b"229 (|||1|) (|||6446|)";
        assert_eq!(find_epsv_port(line).unwrap().port, 6446);
    }

    #[test]
    fn epsv_reply_with_comment_group_after_port_group() {
        let line = b"229 Extended Passive Mode OK (|||6446|) (took 2 ms)\r\n";
        assert_eq!(find_epsv_port(line).unwrap().port, 6446);
    }

    #[test]
    fn epsv_reply_with_other_printable_delimiter() {
        let line = b"229 Entering Extended Passive Mode (!!!6446!)\r\n";
        let p = find_epsv_port(line).unwrap();
        assert_eq!((p.port, p.delimiter), (6446, b'!'));
        for d in [b'~', b'(', b')', b'a', b'!'] {
            let line = [&b"229 ("[..], &[d, d, d], b"21", &[d], b")"].concat();
            let p = find_epsv_port(&line).unwrap();
            assert_eq!((p.port, p.delimiter), (21, d), "{d}");
        }
    }

    #[test]
    fn epsv_reply_with_trailing_period_as_sent_by_pure_ftpd() {
        let line = b"229 Extended Passive mode OK (|||6446|).\r\n";
        let p = find_epsv_port(line).unwrap();
        assert_eq!(p.port, 6446);
        assert_eq!(&line[p.span], b"6446");
    }

    #[test]
    fn epsv_reply_port_bounds() {
        assert_eq!(find_epsv_port(b"229 (|||1|)").unwrap().port, 1);
        assert_eq!(find_epsv_port(b"229 (|||65535|)").unwrap().port, 65535);
        assert_eq!(find_epsv_port(b"229 (|||0|)"), Err(AddrError::OutOfRange));
        assert_eq!(
            find_epsv_port(b"229 (|||65536|)"),
            Err(AddrError::OutOfRange)
        );
        assert_eq!(
            find_epsv_port(b"229 (|||999999999999999999999999|)"),
            Err(AddrError::OutOfRange)
        );
    }

    #[test]
    fn epsv_reply_with_bad_shapes_is_missing() {
        for line in [
            &b"229 Entering Extended Passive Mode"[..],
            b"229 (||6446|)",
            b"229 (|||6446)",
            b"229 (|||6446|",
            b"229 (|!|6446|)",
            b"229 (|||6446!)",
            b"229 (||||)",
            b"229 (   6446 )",
            b"229 (111644611)",
            b"229 (\x7f\x7f\x7f6446\x7f)",
            b"229 (|||64a46|)",
            b"229 (",
            b"(",
            b"",
        ] {
            assert_eq!(find_epsv_port(line), Err(AddrError::Missing), "{line:?}");
        }
    }

    // ---- PORT ----

    #[test]
    fn port_argument_rfc959() {
        assert_eq!(
            parse_port_arg(b"192,168,1,2,4,1"),
            Ok(v4(192, 168, 1, 2, 1025))
        );
        assert_eq!(
            parse_port_arg(b" 192,168,1,2,4,1 "),
            Ok(v4(192, 168, 1, 2, 1025))
        );
    }

    #[test]
    fn port_field_256_is_rejected_not_shifted_cve_style() {
        // The 2026 kernel fix: 256 must not spill into the neighbouring byte.
        assert_eq!(
            parse_port_arg(b"10,0,1,2,256,22"),
            Err(AddrError::OutOfRange)
        );
        assert_eq!(
            parse_port_arg(b"10,0,1,2,1,256"),
            Err(AddrError::OutOfRange)
        );
        assert_eq!(parse_port_arg(b"300,0,1,2,1,2"), Err(AddrError::OutOfRange));
        assert_eq!(
            parse_port_arg(b"10,0,1,2,1,99999999999999999999"),
            Err(AddrError::OutOfRange)
        );
    }

    #[test]
    fn port_zero_address_parses_caller_decides() {
        assert_eq!(parse_port_arg(b"0,0,0,0,0,0"), Ok(v4(0, 0, 0, 0, 0)));
    }

    #[test]
    fn port_argument_malformed_shapes() {
        for arg in [
            &b"10,0,1,2,4"[..],
            b"10,0,1,2,4,5,6",
            b"10,0,1,2,4,",
            b",10,0,1,2,4",
            b"10,0,,2,4,5",
            b"10, 0,1,2,4,5",
            b"10.0.1.2,4,5",
            b"a,b,c,d,e,f",
            b"10,0,1,2,4,5)",
            b"-1,0,1,2,4,5",
            b"+1,0,1,2,4,5",
        ] {
            assert_eq!(parse_port_arg(arg), Err(AddrError::Malformed), "{arg:?}");
        }
        assert_eq!(parse_port_arg(b""), Err(AddrError::Missing));
        assert_eq!(parse_port_arg(b"   "), Err(AddrError::Missing));
    }

    #[test]
    fn port_argument_shape_is_checked_before_values() {
        // The grammar runs first: a bad shape is `Malformed` even with a field > 255.
        assert_eq!(parse_port_arg(b"10,0,1,2,256,x"), Err(AddrError::Malformed));
        assert_eq!(parse_port_arg(b"256,0,1,2,4"), Err(AddrError::Malformed));
    }

    // ---- EPRT ----

    #[test]
    fn eprt_ipv4_rfc2428_example() {
        assert_eq!(
            parse_eprt_arg(b"|1|192.0.2.7|6446|"),
            Ok("192.0.2.7:6446".parse().unwrap())
        );
    }

    #[test]
    fn eprt_ipv6_is_never_split_on_colons() {
        assert_eq!(
            parse_eprt_arg(b"|2|2001:db8::7|6446|"),
            Ok("[2001:db8::7]:6446".parse().unwrap())
        );
        assert_eq!(
            parse_eprt_arg(b"|2|1080::8:800:200C:417A|5282|"),
            Ok("[1080::8:800:200c:417a]:5282".parse().unwrap())
        );
    }

    #[test]
    fn eprt_with_bang_delimiter_as_sent_by_lftp() {
        assert_eq!(
            parse_eprt_arg(b"!2!::1!21!"),
            Ok("[::1]:21".parse().unwrap())
        );
    }

    #[test]
    fn eprt_ipv4_mapped_under_protocol_2_stays_ipv6() {
        let got = parse_eprt_arg(b"|2|::ffff:192.0.2.7|21|").unwrap();
        assert_eq!(got, "[::ffff:192.0.2.7]:21".parse().unwrap());
        assert_eq!(
            canonical_ip(got.ip()),
            "192.0.2.7".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn eprt_unsupported_protocol() {
        assert_eq!(
            parse_eprt_arg(b"|3|192.0.2.7|6446|"),
            Err(AddrError::UnsupportedProtocol)
        );
        assert_eq!(
            parse_eprt_arg(b"|0|192.0.2.7|6446|"),
            Err(AddrError::UnsupportedProtocol)
        );
        assert_eq!(
            parse_eprt_arg(b"|12|192.0.2.7|6446|"),
            Err(AddrError::UnsupportedProtocol)
        );
    }

    #[test]
    fn eprt_family_mismatch_is_malformed() {
        assert_eq!(
            parse_eprt_arg(b"|2|192.0.2.7|6446|"),
            Err(AddrError::Malformed)
        );
        assert_eq!(
            parse_eprt_arg(b"|1|2001:db8::7|6446|"),
            Err(AddrError::Malformed)
        );
        assert_eq!(
            parse_eprt_arg(b"|1|::ffff:1.2.3.4|6446|"),
            Err(AddrError::Malformed)
        );
    }

    #[test]
    fn eprt_port_bounds() {
        assert_eq!(
            parse_eprt_arg(b"|1|192.0.2.7|65535|"),
            Ok("192.0.2.7:65535".parse().unwrap())
        );
        assert_eq!(
            parse_eprt_arg(b"|1|192.0.2.7|1|"),
            Ok("192.0.2.7:1".parse().unwrap())
        );
        assert_eq!(
            parse_eprt_arg(b"|1|192.0.2.7|0|"),
            Err(AddrError::OutOfRange)
        );
        assert_eq!(
            parse_eprt_arg(b"|1|192.0.2.7|65536|"),
            Err(AddrError::OutOfRange)
        );
        assert_eq!(
            parse_eprt_arg(b"|1|192.0.2.7|99999999999999999999999|"),
            Err(AddrError::OutOfRange)
        );
    }

    #[test]
    fn eprt_missing_trailing_delimiter_and_other_shapes_are_malformed() {
        for arg in [
            &b"|1|192.0.2.7|6446"[..],
            b"|1|192.0.2.7|6446||",
            b"|1|192.0.2.7|6446|x",
            b"|1|192.0.2.7|",
            b"|1|192.0.2.7",
            b"|1|",
            b"|",
            b"||192.0.2.7|6446|",
            b"|x|192.0.2.7|6446|",
            b"|1||6446|",
            b"|1|192.0.2.7||",
            b"|1|192.0.2.7|64a6|",
            b"|1|192.0.2.7|-1|",
            b"|1|192.0.2.777|6446|",
            b"|1|192.0.2|6446|",
            b"|1|192.0.2.7|6446!",
            b"1|192.0.2.7|6446|",
            b"\x7f1\x7f192.0.2.7\x7f6446\x7f",
            b"|2|fe80::1%eth0|6446|",
            b"|2|[::1]|21|",
            b"|1|\xff.0.2.7|6446|",
            b".1.192.0.2.7.6446.",
        ] {
            assert_eq!(parse_eprt_arg(arg), Err(AddrError::Malformed), "{arg:?}");
        }
        assert_eq!(parse_eprt_arg(b""), Err(AddrError::Missing));
        assert_eq!(parse_eprt_arg(b"  "), Err(AddrError::Missing));
    }

    #[test]
    fn eprt_fields_are_judged_protocol_then_address_then_port() {
        assert_eq!(
            parse_eprt_arg(b"|3|x|abc|"),
            Err(AddrError::UnsupportedProtocol)
        );
        assert_eq!(parse_eprt_arg(b"|1|x|0|"), Err(AddrError::Malformed));
        assert_eq!(
            parse_eprt_arg(b"|1|192.0.2.7|abc|"),
            Err(AddrError::Malformed)
        );
        assert_eq!(parse_eprt_arg(b"|x|x|0|"), Err(AddrError::Malformed));
    }

    #[test]
    fn eprt_surrounding_spaces_tolerated() {
        assert_eq!(
            parse_eprt_arg(b" |1|192.0.2.7|6446| "),
            Ok("192.0.2.7:6446".parse().unwrap())
        );
    }

    // ---- formatting ----

    #[test]
    fn format_pasv_tuple_splits_port_into_high_and_low_byte() {
        assert_eq!(format_pasv_tuple(v4(127, 0, 0, 1, 1075)), "127,0,0,1,4,51");
        assert_eq!(format_pasv_tuple(v4(0, 0, 0, 0, 0)), "0,0,0,0,0,0");
        assert_eq!(
            format_pasv_tuple(v4(255, 255, 255, 255, 65535)),
            "255,255,255,255,255,255"
        );
    }

    #[test]
    fn format_eprt_arg_per_family_and_mapped_as_v4() {
        assert_eq!(
            format_eprt_arg("192.0.2.7:6446".parse().unwrap()),
            "|1|192.0.2.7|6446|"
        );
        assert_eq!(
            format_eprt_arg("[2001:db8::7]:6446".parse().unwrap()),
            "|2|2001:db8::7|6446|"
        );
        assert_eq!(
            format_eprt_arg("[::ffff:192.0.2.7]:21".parse().unwrap()),
            "|1|192.0.2.7|21|"
        );
        let scoped = SocketAddr::V6(SocketAddrV6::new("fe80::1".parse().unwrap(), 21, 0, 3));
        assert_eq!(format_eprt_arg(scoped), "|2|fe80::1|21|");
    }

    #[test]
    fn canonical_ip_maps_only_v4_mapped() {
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(canonical_ip(mapped), "10.0.0.1".parse::<IpAddr>().unwrap());
        let v6: IpAddr = "::1".parse().unwrap();
        assert_eq!(canonical_ip(v6), v6);
    }

    #[test]
    fn private_v4_ranges() {
        for p in [
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "127.0.0.1",
            "169.254.1.1",
            "100.64.0.1",
            "0.0.0.0",
        ] {
            assert!(is_private_v4(p.parse().unwrap()), "{p}");
        }
        for p in ["203.0.113.10", "198.51.100.1", "100.128.0.1", "172.32.0.1"] {
            assert!(!is_private_v4(p.parse().unwrap()), "{p}");
        }
    }

    #[test]
    fn never_a_data_target() {
        for p in [
            "127.0.0.1",
            "127.9.9.9",
            "169.254.169.254",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(is_never_a_data_target(p.parse().unwrap()), "{p}");
        }
        for p in [
            "10.0.0.2",
            "192.168.1.1",
            "203.0.113.10",
            "2001:db8::1",
            "fd00::1",
        ] {
            assert!(!is_never_a_data_target(p.parse().unwrap()), "{p}");
        }
    }
}
