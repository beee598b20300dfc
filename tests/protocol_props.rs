//! Property tests for the pure FTP codec (`ftpgate::protocol`).
//!
//! Three kinds of property: every function is total on arbitrary bytes; formatting
//! and parsing are inverse on canonical forms; rewriting changes only the address
//! bytes. Inputs are biased towards the bytes FTP parsers branch on (digits, commas,
//! delimiters, parentheses, CR/LF, IAC) so the interesting paths are reached.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4};

use ftpgate::protocol::addr::{
    find_epsv_port, find_pasv_tuple, format_eprt_arg, format_pasv_tuple, parse_eprt_arg,
    parse_port_arg, AddrError,
};
use ftpgate::protocol::command::{parse_command, redact_for_log, CommandError, Verb};
use ftpgate::protocol::line::{find_line, trim_eol, LineError, DEFAULT_MAX_LINE};
use ftpgate::protocol::reply::{parse_code, ReplyCode, ReplyFramer, ReplyLine};
use ftpgate::protocol::rewrite::{rewrite_227, rewrite_229};
use proptest::prelude::*;
use proptest::sample::select;

// ---------------------------------------------------------------------------
// Generators
// ---------------------------------------------------------------------------

/// One byte, often one that FTP parsers care about.
fn ftp_byte() -> impl Strategy<Value = u8> {
    prop_oneof![
        any::<u8>(),
        select(b"0123456789".to_vec()),
        select(b",()|!. -\r\n\t\xff\xf4\xf2".to_vec()),
        select(b"PASVpasvEPRTABOR".to_vec()),
    ]
}

fn ftp_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(ftp_byte(), 0..max)
}

/// Bytes with no ASCII digit.
fn non_digit_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        any::<u8>().prop_filter("no digit", |b| !b.is_ascii_digit()),
        0..max,
    )
}

/// Free text before a `227` tuple: non-digit noise plus numbers that must not be
/// mistaken for the tuple (`Mode 2`, `v1.2`, `3,2,1`), each followed by a space.
fn pasv_prefix() -> impl Strategy<Value = Vec<u8>> {
    let token = prop_oneof![
        non_digit_bytes(12),
        (0u32..100_000).prop_map(|n| format!("{n} ").into_bytes()),
        (0u8..10, 0u8..10).prop_map(|(a, b)| format!("v{a}.{b} ").into_bytes()),
        prop::collection::vec(0u16..1000, 1..6).prop_map(|ns| {
            let mut s = ns.iter().map(u16::to_string).collect::<Vec<_>>().join(",");
            s.push(' ');
            s.into_bytes()
        }),
        prop::collection::vec(0u16..300, 7..10).prop_map(|ns| {
            let mut s = ns.iter().map(u16::to_string).collect::<Vec<_>>().join(",");
            s.push(' ');
            s.into_bytes()
        }),
    ];
    prop::collection::vec(token, 0..5).prop_map(|ts| ts.concat())
}

/// Text after a `227` tuple: must not extend the run (no leading digit or `,digit`),
/// anything after that.
fn pasv_suffix() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(Vec::new()),
        (
            any::<u8>().prop_filter("ends run", |b| !b.is_ascii_digit() && *b != b','),
            ftp_bytes(24)
        )
            .prop_map(|(first, rest)| [vec![first], rest].concat()),
    ]
}

/// RFC 2428 delimiter: ASCII 33..=126, not a digit.
fn epsv_delimiter() -> impl Strategy<Value = u8> {
    (33u8..=126).prop_filter("not a digit", |b| !b.is_ascii_digit())
}

/// EPRT delimiter that cannot occur inside the formatted address literal.
fn eprt_delimiter() -> impl Strategy<Value = u8> {
    epsv_delimiter().prop_filter("not in an address literal", |b| {
        !b.is_ascii_hexdigit() && *b != b'.' && *b != b':'
    })
}

fn non_mapped_v6() -> impl Strategy<Value = Ipv6Addr> {
    prop_oneof![
        any::<[u16; 8]>().prop_map(Ipv6Addr::from),
        // Sparse addresses exercise `::` compression.
        (any::<u16>(), any::<u16>(), 0usize..8).prop_map(|(a, b, i)| {
            let mut segs = [0u16; 8];
            segs[0] = a;
            segs[i] = b;
            Ipv6Addr::from(segs)
        }),
        Just(Ipv6Addr::LOCALHOST),
    ]
    .prop_filter("not IPv4-mapped", |ip| ip.to_ipv4_mapped().is_none())
}

fn v4_socket() -> impl Strategy<Value = SocketAddrV4> {
    (any::<[u8; 4]>(), any::<u16>()).prop_map(|(o, p)| SocketAddrV4::new(Ipv4Addr::from(o), p))
}

/// A line inside a multi-line block with code `code` that must not end it.
fn inner_reply_line(code: u16) -> impl Strategy<Value = Vec<u8>> {
    let same = code.to_string();
    let s1 = same.clone();
    let s2 = same.clone();
    let s3 = same.clone();
    prop_oneof![
        // Free text (no LF: the stream is framed by LF).
        prop::collection::vec(ftp_byte().prop_filter("no LF", |b| *b != b'\n'), 0..40),
        // Same code followed by `-`: stays open (`230-more` inside `230-`).
        ftp_bytes(20).prop_map(move |t| [s1.as_bytes(), b"-", &t].concat()),
        // Other codes, terminating-looking or not (`227 ` inside a `211-` block).
        (100u16..=599, select(vec![b' ', b'-']), ftp_bytes(20))
            .prop_filter("other code", move |(c, _, _)| *c != code)
            .prop_map(|(c, sep, t)| [c.to_string().as_bytes(), &[sep], &t].concat()),
        // The same code indented (FEAT), or followed by another digit.
        ftp_bytes(20).prop_map(move |t| [b" ", s2.as_bytes(), b" ", &t].concat()),
        (0u8..10).prop_map(move |d| format!("{s3}{d} text").into_bytes()),
    ]
    .prop_map(move |mut l| {
        l.retain(|b| *b != b'\n');
        // Random free text could happen to be a terminator; defuse it.
        if is_terminator(&l, &same) {
            l.insert(0, b'x');
        }
        l
    })
}

fn is_terminator(line: &[u8], code: &str) -> bool {
    let l = trim_eol(line);
    l.starts_with(code.as_bytes()) && matches!(l.get(3), None | Some(b' '))
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// Frames `stream` as one buffer would be framed by a reader that receives it in
/// `chunks`: the complete lines, then either the unconsumed remainder or the error.
fn frame(
    stream: &[u8],
    splits: &[usize],
    max: usize,
) -> (Vec<Vec<u8>>, Result<Vec<u8>, LineError>) {
    let mut cuts: Vec<usize> = splits.iter().map(|s| s % (stream.len() + 1)).collect();
    cuts.push(0);
    cuts.push(stream.len());
    cuts.sort_unstable();
    let mut lines = Vec::new();
    let mut buf: Vec<u8> = Vec::new();
    for w in cuts.windows(2) {
        buf.extend_from_slice(&stream[w[0]..w[1]]);
        loop {
            match find_line(&buf, max) {
                Ok(Some(n)) => {
                    assert!(n > 0 && n <= buf.len() && n <= max);
                    lines.push(buf.drain(..n).collect());
                }
                Ok(None) => break,
                Err(e) => return (lines, Err(e)),
            }
        }
    }
    (lines, Ok(buf))
}

fn join_numbers(ns: &[u8]) -> String {
    ns.iter().map(u8::to_string).collect::<Vec<_>>().join(",")
}

// ---------------------------------------------------------------------------
// Totality: nothing panics on arbitrary bytes, and results are self-consistent
// ---------------------------------------------------------------------------

proptest! {
    #[test]
    fn find_line_is_total_and_bounded(buf in ftp_bytes(200), max in 0usize..64) {
        match find_line(&buf, max) {
            Ok(Some(n)) => {
                prop_assert!(n > 0 && n <= buf.len() && n <= max);
                prop_assert_eq!(buf[n - 1], b'\n');
                prop_assert!(!buf[..n - 1].contains(&b'\n'));
            }
            Ok(None) => {
                prop_assert!(buf.len() < max);
                prop_assert!(!buf.contains(&b'\n'));
            }
            Err(LineError::TooLong { max: m }) => {
                prop_assert_eq!(m, max);
                prop_assert!(buf.len() >= max);
                prop_assert!(!buf[..max].contains(&b'\n'));
            }
        }
    }

    #[test]
    fn trim_eol_strips_at_most_crlf(line in ftp_bytes(40)) {
        let t = trim_eol(&line);
        prop_assert!(line.starts_with(t));
        prop_assert!(line.len() - t.len() <= 2);
    }

    #[test]
    fn parse_command_is_total_and_consistent(line in ftp_bytes(60)) {
        match parse_command(&line) {
            Ok(c) => {
                prop_assert!(!c.verb_token.is_empty());
                prop_assert!(!c.verb_token.contains(&b' '));
                prop_assert_eq!(c.verb, Verb::from_token(c.verb_token));
                let body = trim_eol(&line);
                prop_assert!(body.ends_with(c.arg));
                if !c.arg.is_empty() {
                    let tail = [c.verb_token, b" ", c.arg].concat();
                    prop_assert!(body.ends_with(&tail));
                }
            }
            Err(CommandError::Empty) => {}
        }
        let _ = redact_for_log(&line);
    }

    #[test]
    fn redacted_log_line_is_single_line(line in ftp_bytes(60)) {
        let logged = redact_for_log(&line);
        prop_assert!(!logged.contains('\n') && !logged.contains('\r'));
        prop_assert!(!logged.chars().any(char::is_control));
    }

    #[test]
    fn reply_framer_is_total(lines in prop::collection::vec(ftp_bytes(12), 0..20)) {
        let mut framer = ReplyFramer::new();
        for line in &lines {
            let before = framer.in_block();
            match framer.classify(line) {
                Ok(ReplyLine::Begin(c)) => {
                    prop_assert!(!before && framer.in_block());
                    prop_assert_eq!(parse_code(line), Some(c));
                }
                Ok(ReplyLine::Single(c)) => {
                    prop_assert!(!before && !framer.in_block());
                    prop_assert_eq!(parse_code(line), Some(c));
                }
                Ok(ReplyLine::End(c)) => {
                    prop_assert!(before && !framer.in_block());
                    prop_assert_eq!(parse_code(line), Some(c));
                }
                Ok(ReplyLine::Inner) => prop_assert!(before && framer.in_block()),
                Err(_) => prop_assert!(!before && !framer.in_block()),
            }
        }
    }

    #[test]
    fn parse_code_only_accepts_100_to_599(line in ftp_bytes(8)) {
        if let Some(ReplyCode(c)) = parse_code(&line) {
            prop_assert!((100..=599).contains(&c));
            let text = c.to_string();
            prop_assert_eq!(&line[..3], text.as_bytes());
        }
    }

    #[test]
    fn find_pasv_tuple_is_total_and_span_reparses(line in ftp_bytes(60)) {
        if let Ok(t) = find_pasv_tuple(&line) {
            prop_assert!(t.span.start >= 3 && t.span.end <= line.len());
            prop_assert_eq!(parse_port_arg(&line[t.span.clone()]), Ok(t.addr));
        }
    }

    #[test]
    fn find_epsv_port_is_total_and_span_is_the_port(line in ftp_bytes(60)) {
        if let Ok(p) = find_epsv_port(&line) {
            prop_assert!(p.span.end <= line.len());
            let digits = p.port.to_string();
            prop_assert_eq!(&line[p.span.clone()], digits.as_bytes());
            prop_assert!(p.port != 0);
            prop_assert!(!p.delimiter.is_ascii_digit() && (33..=126).contains(&p.delimiter));
        }
    }

    #[test]
    fn address_parsers_and_rewriters_are_total(bytes in ftp_bytes(60), to in v4_socket(), port: u16) {
        let _ = parse_port_arg(&bytes);
        if let Ok(a) = parse_eprt_arg(&bytes) {
            prop_assert!(a.port() != 0);
        }
        let _ = rewrite_227(&bytes, to);
        let _ = rewrite_229(&bytes, port);
    }

    #[test]
    fn port_field_above_255_is_never_wrapped(
        fields in prop::array::uniform6(0u16..=255),
        i in 0usize..6,
        big in 256u32..100_000,
    ) {
        let mut text: Vec<String> = fields.iter().map(u16::to_string).collect();
        text[i] = big.to_string();
        prop_assert_eq!(parse_port_arg(text.join(",").as_bytes()), Err(AddrError::OutOfRange));
        let line = format!("227 Entering Passive Mode ({}).\r\n", text.join(","));
        prop_assert_eq!(find_pasv_tuple(line.as_bytes()), Err(AddrError::OutOfRange));
    }
}

// ---------------------------------------------------------------------------
// Round trips: format(parse(x)) == x, parse(format(a)) == a
// ---------------------------------------------------------------------------

proptest! {
    #[test]
    fn port_arg_round_trips(ns in prop::array::uniform6(any::<u8>())) {
        let text = join_numbers(&ns);
        let addr = parse_port_arg(text.as_bytes()).unwrap();
        prop_assert_eq!(format_pasv_tuple(addr), text);
    }

    #[test]
    fn port_arg_parses_its_formatting(addr in v4_socket(), pad_l in 0usize..3, pad_r in 0usize..3) {
        let text = format!("{}{}{}", " ".repeat(pad_l), format_pasv_tuple(addr), " ".repeat(pad_r));
        prop_assert_eq!(parse_port_arg(text.as_bytes()), Ok(addr));
    }

    #[test]
    fn eprt_v4_round_trips(o in any::<[u8; 4]>(), port in 1u16..=65535) {
        let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::from(o)), port);
        let text = format_eprt_arg(addr);
        prop_assert_eq!(parse_eprt_arg(text.as_bytes()), Ok(addr));
        prop_assert_eq!(format_eprt_arg(parse_eprt_arg(text.as_bytes()).unwrap()), text);
    }

    #[test]
    fn eprt_v6_round_trips(ip in non_mapped_v6(), port in 1u16..=65535) {
        let addr = SocketAddr::new(IpAddr::V6(ip), port);
        let text = format_eprt_arg(addr);
        prop_assert!(text.starts_with("|2|"));
        prop_assert_eq!(parse_eprt_arg(text.as_bytes()), Ok(addr));
        prop_assert_eq!(format_eprt_arg(parse_eprt_arg(text.as_bytes()).unwrap()), text);
    }

    #[test]
    fn eprt_mapped_v6_formats_as_v4(o in any::<[u8; 4]>(), port in 1u16..=65535) {
        let v4 = Ipv4Addr::from(o);
        let text = format_eprt_arg(SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), port));
        prop_assert_eq!(parse_eprt_arg(text.as_bytes()), Ok(SocketAddr::new(IpAddr::V4(v4), port)));
    }

    #[test]
    fn eprt_any_delimiter_parses(
        d in eprt_delimiter(),
        v6 in any::<bool>(),
        o in any::<[u8; 4]>(),
        ip6 in non_mapped_v6(),
        port in 1u16..=65535,
    ) {
        let (proto, ip) = if v6 {
            ("2", IpAddr::V6(ip6))
        } else {
            ("1", IpAddr::V4(Ipv4Addr::from(o)))
        };
        let d = d as char;
        let text = format!("{d}{proto}{d}{ip}{d}{port}{d}");
        prop_assert_eq!(parse_eprt_arg(text.as_bytes()), Ok(SocketAddr::new(ip, port)));
        // Without its trailing delimiter the same argument is refused.
        prop_assert_eq!(
            parse_eprt_arg(&text.as_bytes()[..text.len() - 1]),
            Err(AddrError::Malformed)
        );
    }

    #[test]
    fn eprt_family_mismatch_is_refused(o in any::<[u8; 4]>(), ip6 in non_mapped_v6(), port in 1u16..=65535) {
        let v4_under_2 = format!("|2|{}|{port}|", Ipv4Addr::from(o));
        prop_assert_eq!(parse_eprt_arg(v4_under_2.as_bytes()), Err(AddrError::Malformed));
        let v6_under_1 = format!("|1|{ip6}|{port}|");
        prop_assert_eq!(parse_eprt_arg(v6_under_1.as_bytes()), Err(AddrError::Malformed));
    }

    #[test]
    fn eprt_other_protocols_unsupported(proto in 3u32..1000, o in any::<[u8; 4]>(), port in 1u16..=65535) {
        let text = format!("|{proto}|{}|{port}|", Ipv4Addr::from(o));
        prop_assert_eq!(parse_eprt_arg(text.as_bytes()), Err(AddrError::UnsupportedProtocol));
    }
}

// ---------------------------------------------------------------------------
// Rewriting: only the address bytes change
// ---------------------------------------------------------------------------

proptest! {
    #[test]
    fn rewrite_227_changes_only_the_tuple(
        prefix in pasv_prefix(),
        from in v4_socket(),
        to in v4_socket(),
        suffix in pasv_suffix(),
    ) {
        let head = [b"227".as_slice(), &prefix].concat();
        let tuple = format_pasv_tuple(from);
        let line = [head.as_slice(), tuple.as_bytes(), &suffix].concat();

        let found = find_pasv_tuple(&line).unwrap();
        prop_assert_eq!(found.addr, from);
        prop_assert_eq!(found.span.clone(), head.len()..head.len() + tuple.len());

        // Rewriting to the same address is the identity.
        prop_assert_eq!(rewrite_227(&line, from).unwrap(), line.clone());

        let out = rewrite_227(&line, to).unwrap();
        prop_assert!(out.starts_with(&head));
        prop_assert!(out.ends_with(&suffix));
        prop_assert_eq!(out.len(), head.len() + format_pasv_tuple(to).len() + suffix.len());
        prop_assert_eq!(find_pasv_tuple(&out).unwrap().addr, to);
    }

    #[test]
    fn rewrite_227_in_common_server_shapes(
        shape in select(vec![
            ("227 Entering Passive Mode (", ")\r\n"),
            ("227 Entering Passive Mode (", ").\r\n"),
            ("227 Data transfer will passively listen to ", "\r\n"),
            ("227 Entering passive mode. ", "\n"),
            ("227 =", "\r\n"),
            ("227 Entering Passive Mode 2 (", ")\r\n"),
            ("227 v1.2 listening (", ")"),
        ]),
        from in v4_socket(),
        to in v4_socket(),
    ) {
        let (head, tail) = shape;
        let line = format!("{head}{}{tail}", format_pasv_tuple(from));
        let out = rewrite_227(line.as_bytes(), to).unwrap();
        prop_assert_eq!(out, format!("{head}{}{tail}", format_pasv_tuple(to)).into_bytes());
    }

    #[test]
    fn rewrite_229_changes_only_the_port(
        prefix in ftp_bytes(30),
        d in epsv_delimiter(),
        from in 1u16..=65535,
        to in 1u16..=65535,
        suffix in prop::collection::vec(ftp_byte().prop_filter("no group", |b| *b != b'('), 0..20),
    ) {
        let head = [b"229".as_slice(), &prefix, b"(", &[d, d, d]].concat();
        let tail = [&[d, b')'][..], &suffix].concat();
        let line = [head.as_slice(), from.to_string().as_bytes(), &tail].concat();

        let found = find_epsv_port(&line).unwrap();
        prop_assert_eq!((found.port, found.delimiter), (from, d));
        prop_assert_eq!(found.span, head.len()..head.len() + from.to_string().len());

        prop_assert_eq!(rewrite_229(&line, from).unwrap(), line.clone());

        let out = rewrite_229(&line, to).unwrap();
        prop_assert_eq!(out.clone(), [head.as_slice(), to.to_string().as_bytes(), &tail].concat());
        let again = find_epsv_port(&out).unwrap();
        prop_assert_eq!((again.port, again.delimiter), (to, d));
    }
}

// ---------------------------------------------------------------------------
// Commands and redaction
// ---------------------------------------------------------------------------

proptest! {
    #[test]
    fn command_arg_bytes_are_preserved_exactly(
        verb in "[A-Za-z]{1,6}",
        telnet in prop::collection::vec((Just(255u8), 0u8..255), 0..3),
        arg in prop::collection::vec(any::<u8>().prop_filter("no LF", |b| *b != b'\n'), 0..40)
            .prop_filter("no trailing CR", |a| a.last() != Some(&b'\r')),
        crlf in any::<bool>(),
    ) {
        let prefix: Vec<u8> = telnet.iter().flat_map(|&(i, x)| [i, x]).collect();
        let eol: &[u8] = if crlf { b"\r\n" } else { b"\n" };
        let line = [prefix.as_slice(), verb.as_bytes(), b" ", &arg, eol].concat();
        let c = parse_command(&line).unwrap();
        prop_assert_eq!(c.verb_token, verb.as_bytes());
        prop_assert_eq!(c.arg, arg.as_slice());
        prop_assert_eq!(c.verb, Verb::from_token(verb.to_ascii_uppercase().as_bytes()));
    }

    #[test]
    fn password_is_never_logged(
        verb in "[Pp][Aa][Ss][Ss]|[Aa][Cc][Cc][Tt]",
        telnet in prop::collection::vec((Just(255u8), any::<u8>()), 0..3),
        sep in select(vec![&b" "[..], b"\t", b"  ", b" \t", b""]),
        secret in prop::collection::vec(ftp_byte().prop_filter("no LF", |b| *b != b'\n'), 0..30),
        eol in select(vec![&b"\r\n"[..], b"\n", b""]),
    ) {
        let prefix: Vec<u8> = telnet.iter().flat_map(|&(i, x)| [i, x]).collect();
        let line = [prefix.as_slice(), verb.as_bytes(), sep, &secret, eol].concat();
        let logged = redact_for_log(&line);
        let expected_tail = format!("{verb} ****");
        prop_assert!(logged.ends_with(&expected_tail), "{:?} -> {}", line, logged);
        prop_assert!(!logged.contains("PASV"));
    }
}

// ---------------------------------------------------------------------------
// Framing: lines and multi-line replies over arbitrary segmentation
// ---------------------------------------------------------------------------

proptest! {
    #[test]
    fn find_line_is_independent_of_segmentation(
        stream in ftp_bytes(300),
        splits in prop::collection::vec(any::<usize>(), 0..12),
        max in prop_oneof![Just(DEFAULT_MAX_LINE), 1usize..40],
    ) {
        let whole = frame(&stream, &[], max);
        let chunked = frame(&stream, &splits, max);
        prop_assert_eq!(&chunked, &whole);
        if let (lines, Ok(rest)) = &whole {
            prop_assert_eq!([lines.concat(), rest.clone()].concat(), stream);
        }
    }

    #[test]
    fn multiline_reply_ends_exactly_at_its_terminator(
        (code, inners) in (100u16..=599).prop_flat_map(|c| {
            (Just(c), prop::collection::vec(inner_reply_line(c), 0..12))
        }),
        first_text in ftp_bytes(20),
        last_text in prop::option::of(ftp_bytes(20)),
        splits in prop::collection::vec(any::<usize>(), 0..8),
        crlf in any::<bool>(),
    ) {
        let eol: &[u8] = if crlf { b"\r\n" } else { b"\n" };
        let c = code.to_string();
        let mut stream = Vec::new();
        let strip_lf = |t: &[u8]| t.iter().copied().filter(|b| *b != b'\n').collect::<Vec<u8>>();
        stream.extend([c.as_bytes(), b"-", &strip_lf(&first_text), eol].concat());
        for l in &inners {
            stream.extend([l.as_slice(), eol].concat());
        }
        match &last_text {
            Some(t) => stream.extend([c.as_bytes(), b" ", &strip_lf(t), eol].concat()),
            None => stream.extend([c.as_bytes(), eol].concat()),
        }
        stream.extend(b"200 next\r\n");

        let (lines, rest) = frame(&stream, &splits, DEFAULT_MAX_LINE);
        prop_assert_eq!(rest, Ok(Vec::new()));
        prop_assert_eq!(lines.len(), inners.len() + 3);

        let mut framer = ReplyFramer::new();
        let kinds: Vec<ReplyLine> = lines.iter().map(|l| framer.classify(l).unwrap()).collect();
        let code = ReplyCode(code);
        prop_assert_eq!(kinds[0], ReplyLine::Begin(code));
        for k in &kinds[1..=inners.len()] {
            prop_assert_eq!(*k, ReplyLine::Inner);
        }
        prop_assert_eq!(kinds[inners.len() + 1], ReplyLine::End(code));
        prop_assert_eq!(kinds[inners.len() + 2], ReplyLine::Single(ReplyCode(200)));
        prop_assert!(!framer.in_block());
    }
}
