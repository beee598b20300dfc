//! Command lines from the client (RFC 959 §4.1, §5.3).
//!
//! Verbs are case-insensitive; arguments are opaque bytes (RFC 2640: UTF-8 or not).
//! A line may begin with Telnet `IAC IP` / `IAC DM` sequences before `ABOR`/`STAT`
//! (RFC 959 §4.1.3); those are skipped for classification but kept in the raw bytes.

use std::fmt::Write as _;

use nom::Parser;

use super::line::trim_eol;

/// Telnet "Interpret As Command" (RFC 854).
const IAC: u8 = 255;

/// The verbs ftpgate acts on; everything else is [`Verb::Other`] and passes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verb {
    /// `USER`: user name (RFC 959).
    User,
    /// `PASS`: password.
    Pass,
    /// `ACCT`: account.
    Acct,
    /// `PASV`: passive mode, IPv4 (RFC 959).
    Pasv,
    /// `EPSV`: extended passive mode (RFC 2428).
    Epsv,
    /// `LPSV`: long passive mode (RFC 1639); refused.
    Lpsv,
    /// `PORT`: active mode, IPv4 (RFC 959).
    Port,
    /// `EPRT`: extended active mode (RFC 2428).
    Eprt,
    /// `LPRT`: long active mode (RFC 1639); refused.
    Lprt,
    /// `RETR`: download a file.
    Retr,
    /// `STOR`: upload a file.
    Stor,
    /// `STOU`: upload under a unique name.
    Stou,
    /// `APPE`: append to a file.
    Appe,
    /// `LIST`: directory listing.
    List,
    /// `NLST`: name list.
    Nlst,
    /// `MLSD`: machine-readable listing (RFC 3659).
    Mlsd,
    /// `ABOR`: abort the transfer.
    Abor,
    /// `STAT`: status.
    Stat,
    /// `NOOP`: no operation.
    Noop,
    /// `QUIT`: end the session.
    Quit,
    /// `REIN`: reinitialize (log out).
    Rein,
    /// `AUTH`: start TLS (RFC 4217).
    Auth,
    /// RFC 4217 §8: protection buffer size (always 0 with TLS).
    Pbsz,
    /// RFC 4217 §9: data channel protection level.
    Prot,
    /// RFC 4217 §11: clear command channel (refused).
    Ccc,
    /// RFC 2389: feature list (augmented with the FTPS features).
    Feat,
    /// Any other verb: passed through untouched.
    Other,
}

/// Every classified verb with its upper-case token; `Other` is not listed.
const VERBS: [(Verb, &str); 26] = [
    (Verb::User, "USER"),
    (Verb::Pass, "PASS"),
    (Verb::Acct, "ACCT"),
    (Verb::Pasv, "PASV"),
    (Verb::Epsv, "EPSV"),
    (Verb::Lpsv, "LPSV"),
    (Verb::Port, "PORT"),
    (Verb::Eprt, "EPRT"),
    (Verb::Lprt, "LPRT"),
    (Verb::Retr, "RETR"),
    (Verb::Stor, "STOR"),
    (Verb::Stou, "STOU"),
    (Verb::Appe, "APPE"),
    (Verb::List, "LIST"),
    (Verb::Nlst, "NLST"),
    (Verb::Mlsd, "MLSD"),
    (Verb::Abor, "ABOR"),
    (Verb::Stat, "STAT"),
    (Verb::Noop, "NOOP"),
    (Verb::Quit, "QUIT"),
    (Verb::Rein, "REIN"),
    (Verb::Auth, "AUTH"),
    (Verb::Pbsz, "PBSZ"),
    (Verb::Prot, "PROT"),
    (Verb::Ccc, "CCC"),
    (Verb::Feat, "FEAT"),
];

impl Verb {
    /// Classifies a verb token, case-insensitively (`b"pasv"` → `Pasv`).
    pub fn from_token(token: &[u8]) -> Verb {
        VERBS
            .iter()
            .find(|(_, name)| token.eq_ignore_ascii_case(name.as_bytes()))
            .map_or(Verb::Other, |&(verb, _)| verb)
    }

    /// Upper-case name; `"OTHER"` for [`Verb::Other`]. Used as a bounded metric label.
    pub fn as_str(self) -> &'static str {
        VERBS
            .iter()
            .find(|&&(verb, _)| verb == self)
            .map_or("OTHER", |&(_, name)| name)
    }

    /// Commands that open a data connection (RETR, STOR, STOU, APPE, LIST, NLST, MLSD).
    pub fn is_transfer(self) -> bool {
        matches!(
            self,
            Verb::Retr
                | Verb::Stor
                | Verb::Stou
                | Verb::Appe
                | Verb::List
                | Verb::Nlst
                | Verb::Mlsd
        )
    }
}

impl std::fmt::Display for Verb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One parsed command line. Borrowed from the line buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Command<'a> {
    /// The verb, classified.
    pub verb: Verb,
    /// The verb token as sent (after any leading Telnet sequences), original case.
    pub verb_token: &'a [u8],
    /// Argument bytes after the single space following the verb, without line terminator;
    /// empty when there is none. Never trimmed beyond the terminator: bytes are opaque.
    pub arg: &'a [u8],
}

/// Why a client line is not a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// Blank line, or a line with no verb token (e.g. starts with a space).
    #[error("empty command")]
    Empty,
}

/// Parses one command line (terminator optional; `\r\n` or `\n` is stripped).
/// Leading Telnet IAC sequences (`255, x` pairs, x != 255) are skipped before the verb.
/// The verb is the bytes up to the first space (or end of line); RFC 959 verbs are
/// ASCII letters, but any non-space bytes are accepted as a verb token (they classify as
/// `Other`). Never panics on any input.
///
/// `IAC IAC` is an escaped data byte 255 (RFC 854), so it is not skipped and becomes
/// part of the verb token. A line made only of IAC bytes (after the skipped pairs,
/// e.g. `IAC IP IAC` or `IAC IAC`) carries no command and is `Empty`.
pub fn parse_command(line: &[u8]) -> Result<Command<'_>, CommandError> {
    let Ok((rest, _)) = grammar::telnet_prefix.parse(trim_eol(line)) else {
        return Err(CommandError::Empty);
    };
    if rest.iter().all(|&b| b == IAC) {
        return Err(CommandError::Empty);
    }
    let (_, (verb_token, arg)) = grammar::verb_and_arg
        .parse(rest)
        .map_err(|_| CommandError::Empty)?;
    Ok(Command {
        verb: Verb::from_token(verb_token),
        verb_token,
        arg,
    })
}

/// nom grammar of a command line (RFC 959 §4.1.3, §5.3), terminator already stripped.
/// The error type is `()`: a failed parse only means "no command here".
mod grammar {
    use nom::branch::alt;
    use nom::bytes::complete::{tag, take_till1};
    use nom::combinator::{eof, recognize, rest, verify};
    use nom::multi::many0_count;
    use nom::number::complete::u8 as byte;
    use nom::sequence::preceded;
    use nom::{IResult, Parser};

    use super::IAC;

    type PResult<'a, O> = IResult<&'a [u8], O, ()>;

    /// Leading Telnet `IAC x` pairs with `x != IAC` (RFC 959 §4.1.3: `IAC IP`, `IAC DM`
    /// before `ABOR`/`STAT`). `IAC IAC` is an escaped data byte (RFC 854) and a trailing
    /// lone IAC is not a pair; both are left in place. Always succeeds.
    pub(super) fn telnet_prefix(i: &[u8]) -> PResult<'_, &[u8]> {
        recognize(many0_count((
            tag(&[IAC][..]),
            verify(byte, |&x: &u8| x != IAC),
        )))
        .parse(i)
    }

    /// RFC 959 §5.3 `<verb> [<SP> <arg>]`: the verb is every byte up to the first space
    /// (at least one), the argument everything after that one space, kept as is.
    pub(super) fn verb_and_arg(i: &[u8]) -> PResult<'_, (&[u8], &[u8])> {
        let verb = take_till1(|b| b == b' ');
        let arg = alt((preceded(tag(&b" "[..]), rest), eof));
        (verb, arg).parse(i)
    }
}

/// Renders a command for logs: verb plus argument (lossy UTF-8, control bytes escaped),
/// except that `PASS` (and `ACCT`) arguments are replaced by `****`.
///
/// Details: the terminator is stripped; leading Telnet bytes are kept (escaped); bytes
/// that are not valid UTF-8 appear as `\xNN`; control characters as `\r`, `\n`, `\t`
/// or `\xNN` (`\u{..}` for non-ASCII ones), so one log record stays one line.
/// A line is a password line when, after any Telnet bytes, 0xFF bytes and whitespace,
/// it starts with `PASS` or `ACCT` in any case, whatever follows (`PASS\tsecret`,
/// `PASSsecret`, `pass`): everything after those four letters becomes ` ****`, even
/// when it is empty, so the log never reveals the secret or its length.
pub fn redact_for_log(line: &[u8]) -> String {
    let line = trim_eol(line);
    let mut out = String::with_capacity(line.len().min(256));
    match password_verb_end(line) {
        Some(end) => {
            let (visible, _secret) = line.split_at(end);
            push_escaped(&mut out, visible);
            out.push_str(" ****");
        }
        None => push_escaped(&mut out, line),
    }
    out
}

/// If `line` is a password line (see [`redact_for_log`]), the index just past its
/// `PASS`/`ACCT` verb.
fn password_verb_end(line: &[u8]) -> Option<usize> {
    // Deliberately more lenient than `parse_command`: whatever a server, with or
    // without Telnet processing, might still take for `PASS` is redacted. The scan
    // stops at the first byte that can be neither a prefix nor the verb.
    let mut after_iac = false;
    for (i, &b) in line.iter().enumerate() {
        let word = line.get(i..i + 4)?;
        if word.eq_ignore_ascii_case(b"PASS") || word.eq_ignore_ascii_case(b"ACCT") {
            return Some(i + 4);
        }
        if !(b == IAC || b.is_ascii_whitespace() || after_iac) {
            return None;
        }
        after_iac = b == IAC && !after_iac;
    }
    None
}

/// Appends `bytes` to `out` as readable single-line text.
fn push_escaped(out: &mut String, bytes: &[u8]) {
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\r' => out.push_str("\\r"),
                '\n' => out.push_str("\\n"),
                '\t' => out.push_str("\\t"),
                c if c.is_ascii_control() => {
                    let _ = write!(out, "\\x{:02x}", u32::from(c));
                }
                // C1 controls, and line/paragraph separators that some log viewers
                // treat as newlines.
                c if c.is_control() || matches!(c, '\u{2028}' | '\u{2029}') => {
                    let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
                }
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
}

/// Offset of the `IAC` of a Telnet Synch (`IAC DM`) in the Telnet prefix of a line:
/// the byte to send as TCP urgent data when relaying `ABOR`/`STAT` (RFC 959 §4.1.3).
pub fn find_synch(line: &[u8]) -> Option<usize> {
    let mut i = 0;
    while line.get(i) == Some(&IAC) {
        if line.get(i + 1) == Some(&0xf2) {
            return Some(i);
        }
        i += 2;
    }
    None
}

/// The data-setup command telling a server to connect to `to`: `PORT` for IPv4 when
/// the client itself used `PORT`, else `EPRT` in `to`'s family (RFC 2428; RFC 6384 for
/// IPv6 clients in front of IPv4 servers). CRLF-terminated.
pub fn format_data_command(client_verb: Verb, to: std::net::SocketAddr) -> String {
    use super::addr::{format_eprt_arg, format_pasv_tuple};
    match to {
        std::net::SocketAddr::V4(v4) if client_verb == Verb::Port => {
            format!("PORT {}\r\n", format_pasv_tuple(v4))
        }
        _ => format!("EPRT {}\r\n", format_eprt_arg(to)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(line: &[u8]) -> Command<'_> {
        parse_command(line).expect("command")
    }

    #[test]
    fn lower_and_mixed_case_verbs_from_hand_typed_telnet_sessions() {
        assert_eq!(cmd(b"pasv\r\n").verb, Verb::Pasv);
        assert_eq!(cmd(b"PaSv\r\n").verb, Verb::Pasv);
        assert_eq!(cmd(b"PaSv\r\n").verb_token, b"PaSv");
        assert_eq!(cmd(b"eprt |1|1.2.3.4|5|").verb, Verb::Eprt);
    }

    #[test]
    fn every_known_verb_round_trips_through_as_str() {
        for (verb, name) in VERBS {
            assert_eq!(Verb::from_token(name.as_bytes()), verb);
            assert_eq!(Verb::from_token(name.to_ascii_lowercase().as_bytes()), verb);
            assert_eq!(verb.as_str(), name);
        }
        assert_eq!(Verb::Other.as_str(), "OTHER");
        assert_eq!(Verb::from_token(b"OTHER"), Verb::Other);
        assert_eq!(Verb::from_token(b"SITE"), Verb::Other);
        assert_eq!(Verb::from_token(b""), Verb::Other);
        assert_eq!(Verb::from_token(b"PASVX"), Verb::Other);
        assert_eq!(Verb::from_token(b"PAS"), Verb::Other);
    }

    #[test]
    fn transfer_verbs_open_a_data_connection() {
        let transfer: Vec<Verb> = VERBS
            .iter()
            .map(|&(v, _)| v)
            .filter(|v| v.is_transfer())
            .collect();
        assert_eq!(
            transfer,
            [
                Verb::Retr,
                Verb::Stor,
                Verb::Stou,
                Verb::Appe,
                Verb::List,
                Verb::Nlst,
                Verb::Mlsd
            ]
        );
        assert!(!Verb::Other.is_transfer());
    }

    #[test]
    fn argument_after_first_space_keeps_inner_and_trailing_spaces() {
        // Windows users upload "  my file .txt"; the server must see every space.
        let c = cmd(b"STOR   my file .txt  \r\n");
        assert_eq!(c.verb, Verb::Stor);
        assert_eq!(c.arg, b"  my file .txt  ");
    }

    #[test]
    fn non_utf8_latin1_path_from_legacy_windows_client_is_opaque() {
        let c = cmd(b"RETR caf\xe9.txt\r\n");
        assert_eq!(c.verb, Verb::Retr);
        assert_eq!(c.arg, b"caf\xe9.txt");
    }

    #[test]
    fn bare_lf_terminator_from_unix_scripts_rfc1123() {
        let c = cmd(b"CWD /pub\n");
        assert_eq!(c.verb_token, b"CWD");
        assert_eq!(c.arg, b"/pub");
    }

    #[test]
    fn verb_without_argument_and_without_terminator() {
        let c = cmd(b"PASV");
        assert_eq!(c.verb, Verb::Pasv);
        assert_eq!(c.arg, b"");
        // A trailing space gives an empty argument too.
        assert_eq!(cmd(b"NOOP \r\n").arg, b"");
    }

    #[test]
    fn only_the_terminator_is_stripped_from_the_argument() {
        assert_eq!(cmd(b"RETR a\r\r\n").arg, b"a\r");
        assert_eq!(cmd(b"RETR a\tb\r\n").arg, b"a\tb");
        assert_eq!(cmd(b"RETR \0x\r\n").arg, b"\0x");
    }

    #[test]
    fn telnet_ip_and_synch_before_abor_as_sent_by_ncftp() {
        // RFC 959 §4.1.3: IAC IP, then IAC DM (Synch), then ABOR.
        let c = cmd(b"\xff\xf4\xff\xf2ABOR\r\n");
        assert_eq!(c.verb, Verb::Abor);
        assert_eq!(c.verb_token, b"ABOR");
        assert_eq!(c.arg, b"");
        assert_eq!(cmd(b"\xff\xf4STAT\r\n").verb, Verb::Stat);
    }

    #[test]
    fn dm_alone_after_urgent_data_split_is_dm_then_abor() {
        // mod_proxy: IAC IP goes out of band, the in-band part is `IAC DM ABOR`.
        assert_eq!(cmd(b"\xff\xf2ABOR\r\n").verb, Verb::Abor);
    }

    #[test]
    fn escaped_iac_iac_is_a_data_byte_not_a_telnet_prefix() {
        let c = cmd(b"\xff\xffABOR\r\n");
        assert_eq!(c.verb, Verb::Other);
        assert_eq!(c.verb_token, b"\xff\xffABOR");
    }

    #[test]
    fn line_of_only_telnet_bytes_is_empty() {
        for line in [
            &b"\xff\xf4\xff\xf2\r\n"[..],
            b"\xff\xf4",
            b"\xff",
            b"\xff\xff",
            b"\xff\xf4\xff",
            b"\xff\xff\xff\r\n",
        ] {
            assert_eq!(parse_command(line), Err(CommandError::Empty), "{line:?}");
        }
    }

    #[test]
    fn blank_or_space_led_lines_are_empty() {
        assert_eq!(parse_command(b""), Err(CommandError::Empty));
        assert_eq!(parse_command(b"\r\n"), Err(CommandError::Empty));
        assert_eq!(parse_command(b"\n"), Err(CommandError::Empty));
        assert_eq!(parse_command(b" USER x\r\n"), Err(CommandError::Empty));
        assert_eq!(parse_command(b"\xff\xf4 ABOR"), Err(CommandError::Empty));
    }

    #[test]
    fn tab_is_not_a_separator_rfc959() {
        let c = cmd(b"USER\tbob\r\n");
        assert_eq!(c.verb, Verb::Other);
        assert_eq!(c.verb_token, b"USER\tbob");
        assert_eq!(c.arg, b"");
    }

    #[test]
    fn pass_is_redacted_keeping_the_verb_as_sent() {
        assert_eq!(redact_for_log(b"PASS secret\r\n"), "PASS ****");
        assert_eq!(redact_for_log(b"pass secret\r\n"), "pass ****");
        assert_eq!(redact_for_log(b"PaSs secret"), "PaSs ****");
        assert_eq!(redact_for_log(b"ACCT billing-42\r\n"), "ACCT ****");
        assert_eq!(redact_for_log(b"acct x\n"), "acct ****");
    }

    #[test]
    fn pass_with_spaces_inside_password_is_fully_redacted() {
        assert_eq!(redact_for_log(b"PASS  my secret  \r\n"), "PASS ****");
    }

    #[test]
    fn pass_after_telnet_prefix_is_redacted() {
        assert_eq!(
            redact_for_log(b"\xff\xf4\xff\xf2PASS secret\r\n"),
            "\\xff\\xf4\\xff\\xf2PASS ****"
        );
        assert_eq!(
            redact_for_log(b"\xff\xffPASS secret"),
            "\\xff\\xffPASS ****"
        );
        assert_eq!(redact_for_log(b"\xffPASS secret"), "\\xffPASS ****");
    }

    #[test]
    fn weird_pass_lines_never_leak_the_secret() {
        for line in [
            &b"PASS\tsecret\r\n"[..],
            b"PASS\t\tsecret",
            b"PASSsecret",
            b" PASS secret",
            b"\t pass secret\r\n",
            b"PASS secret\rmore\r\n",
            b"PASS secret\nmore",
            b"PASS \xffsecret\xfe",
        ] {
            let logged = redact_for_log(line);
            assert!(!logged.contains("secret"), "{line:?} -> {logged}");
            assert!(logged.ends_with("****"), "{line:?} -> {logged}");
        }
        assert_eq!(redact_for_log(b"PASS\r\n"), "PASS ****");
        assert_eq!(redact_for_log(b"PASS"), "PASS ****");
        assert_eq!(redact_for_log(b"PASS \r\n"), "PASS ****");
    }

    #[test]
    fn other_commands_are_logged_with_controls_escaped() {
        assert_eq!(redact_for_log(b"USER bob\r\n"), "USER bob");
        assert_eq!(redact_for_log(b"PASV\n"), "PASV");
        assert_eq!(
            redact_for_log(b"RETR a\rb\0c\x1b\r\n"),
            "RETR a\\rb\\x00c\\x1b"
        );
        assert_eq!(redact_for_log(b"RETR x\ny"), "RETR x\\ny");
        assert_eq!(redact_for_log(b"RETR \x7f"), "RETR \\x7f");
        assert_eq!(
            redact_for_log("RETR caf\u{e9}\u{85}".as_bytes()),
            "RETR caf\u{e9}\\u{85}"
        );
        assert_eq!(redact_for_log(b"RETR caf\xe9"), "RETR caf\\xe9");
        assert_eq!(redact_for_log(b""), "");
    }

    #[test]
    fn pasv_and_other_pas_prefixed_verbs_are_not_redacted() {
        assert_eq!(redact_for_log(b"PASV\r\n"), "PASV");
        assert_eq!(redact_for_log(b"PAS secret"), "PAS secret");
        assert_eq!(redact_for_log(b"SITE PASS x"), "SITE PASS x");
    }

    #[test]
    fn synch_offset_in_telnet_prefix() {
        assert_eq!(find_synch(b"\xff\xf4\xff\xf2ABOR\r\n"), Some(2));
        assert_eq!(find_synch(b"\xff\xf2ABOR\r\n"), Some(0));
        assert_eq!(find_synch(b"ABOR\r\n"), None);
        assert_eq!(find_synch(b"\xff\xf4ABOR\r\n"), None);
        assert_eq!(find_synch(b"\xff"), None);
    }

    #[test]
    fn data_command_forms() {
        let v4: std::net::SocketAddr = "10.0.0.1:5000".parse().unwrap();
        let v6: std::net::SocketAddr = "[2001:db8::1]:5000".parse().unwrap();
        assert_eq!(
            format_data_command(Verb::Port, v4),
            "PORT 10,0,0,1,19,136\r\n"
        );
        assert_eq!(
            format_data_command(Verb::Eprt, v4),
            "EPRT |1|10.0.0.1|5000|\r\n"
        );
        assert_eq!(
            format_data_command(Verb::Port, v6),
            "EPRT |2|2001:db8::1|5000|\r\n"
        );
    }
}
