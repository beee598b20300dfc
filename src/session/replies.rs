//! ftpgate's own replies: every code and text the gateway itself sends a client, in
//! one place. The session never builds reply strings ad hoc; it picks a variant here.
//!
//! Texts name the cause in words a user can act on; codes follow RFC 959 §4.2 (`421`
//! when the control connection closes, `425` for data connections that cannot be
//! opened, `500`/`501`/`502` for refused commands) and RFC 2428 (`522`).

use std::fmt;
use std::net::SocketAddrV4;

use crate::protocol::addr::format_pasv_tuple;
use crate::protocol::command::Verb;

/// A reply of ftpgate's own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalReply {
    /// An empty command line.
    SyntaxError,
    /// A client line longer than `control.max_line_length`; the session closes.
    LineTooLong,
    /// `LPRT`/`LPSV` (RFC 1639): a `228` passed through would leak the backend's address.
    LongModeRefused,
    /// `PASV`/`PORT`/`EPRT` after `EPSV ALL` (RFC 2428 §4).
    EpsvAllInEffect,
    /// `EPSV ALL` answered by ftpgate (active translation keeps PORT towards the backend).
    EpsvAllAccepted,
    /// `AUTH` while ftpgate does not terminate TLS.
    AuthUnsupported,
    /// `EPRT` with a network protocol other than 1 or 2 (RFC 2428 §2).
    UnsupportedProtocol,
    /// Unparsable `PORT`/`EPRT` argument.
    BadDataAddress(Verb),
    /// `PORT`/`EPRT` naming port 0 or the unspecified address.
    NoUsableAddress(Verb),
    /// `PORT`/`EPRT` naming another host: the FTP bounce attack (RFC 2577 §3).
    Bounce(Verb),
    /// `PORT`/`EPRT` accepted by ftpgate itself (passive translation).
    ActiveAccepted(Verb),
    /// No backend-side port for an active data connection.
    CantPrepareData(String),
    /// No client-side port for a passive data connection, or the reply could not be mapped.
    CantOpenPassive(String),
    /// `PASV` on a session with no IPv4 address to announce.
    NoIpv4ForPasv,
    /// Mode translation: no port for the data connection at the transfer command.
    CantOpenDataWith(String),
    /// Mode translation: the backend refused ftpgate's own data-setup command.
    CantOpenData,
    /// ftpgate's own `227` (active translation).
    PassiveAt(SocketAddrV4),
    /// ftpgate's own `229` (active translation).
    ExtendedPassiveAt(u16),
    /// `421`: not logged in within `timeouts.login`.
    LoginTimeout,
    /// `421`: no command and no transfer within `timeouts.idle`.
    IdleTimeout,
    /// A command outstanding at the backend got no reply within `timeouts.backend_reply`.
    BackendReplyTimeout,
    /// `421`: ftpgate is shutting down.
    ShuttingDown,
    /// `421`: the backend control connection closed or failed.
    ConnectionLost,
    /// `421`: the backend sent a line that is not an FTP reply.
    InvalidServerReply,
    /// `421`: no backend accepted the connection.
    NoBackend,
    /// `421`: a transparent session's original destination could not be read.
    UnknownDestination,
    /// `421`: a transparent session's original destination is ftpgate itself (a loop).
    DestinationIsGateway,
    /// `421`: a transparent session's original destination did not accept the connection.
    DestinationUnreachable,
    /// More sessions not yet logged in than `limits.max_prelogin_sessions`.
    TooManyPrelogin,
    /// `limits.max_sessions` sessions are open.
    TooManySessions,
    /// `limits.max_sessions_per_ip` sessions are open from the client's address.
    TooManyFromAddress,
    /// The client's address opens sessions faster than `limits.new_sessions_per_ip`.
    TooFast,
    /// The gateway drains: the session ends at a command boundary.
    Draining,
    /// More than `limits.prelogin_bytes` of commands before logging in.
    PreloginBudget,
    /// ftpgate itself ran out of a local resource (file descriptors, memory).
    LocalResourceLimit,
    /// ftpgate's own greeting under `balance: user` (the text is `greeting`).
    RoutingGreeting(String),
    /// A command before `USER` under `balance: user`: no backend is chosen yet.
    LoginFirst,
    /// `NOOP` before `USER` under `balance: user`.
    NoopOk,
    /// `QUIT` before `USER` under `balance: user`.
    Goodbye,
    /// `FEAT` before `USER` under `balance: user` with TLS offered: the FTPS features
    /// (RFC 4217 §6), so clients that look before they `AUTH` (lftp) find them.
    FeaturesBeforeUser,
    /// `balance: user`: the chosen backend greeted with something other than `220`
    /// (a vsftpd at `max_clients` says `421`).
    BackendRefusedSession,
    /// `AUTH TLS` accepted: the TLS handshake follows (RFC 4217 §4).
    AuthTlsOk,
    /// `AUTH` with a mechanism other than TLS/SSL (RFC 2228: 504).
    AuthMechanismUnsupported,
    /// `AUTH` on a control connection already in TLS (RFC 2228: 503).
    AlreadyTls,
    /// `PBSZ`/`PROT` before `AUTH TLS` (RFC 4217 §8, §9: 503).
    SecurityExchangeFirst,
    /// `PBSZ` answered: TLS has no protection buffer, so it is always 0 (RFC 4217 §8).
    PbszOk,
    /// `PROT C` or `PROT P` accepted.
    ProtOk(u8),
    /// `PROT S`/`PROT E`: no such level with TLS (RFC 4217 §9: 536).
    ProtUnsupported,
    /// An unknown `PROT` level (RFC 2228: 504).
    ProtUnknown,
    /// `CCC`: a clear control channel after TLS would re-blind middleboxes and hide
    /// nothing.
    CccRefused,
    /// `tls.client: required`: a login before `AUTH TLS`.
    TlsRequiredForLogin,
    /// `tls.client_data: required`: a transfer without `PROT P`.
    TlsRequiredForData,
    /// The backend refused TLS, or its handshake failed; the session ends.
    BackendTlsFailed,
}

impl LocalReply {
    /// The reply code.
    pub fn code(&self) -> u16 {
        use LocalReply::*;
        match self {
            SyntaxError | LineTooLong | EpsvAllInEffect | Bounce(_) => 500,
            BadDataAddress(_) | NoUsableAddress(_) => 501,
            LongModeRefused | AuthUnsupported => 502,
            UnsupportedProtocol => 522,
            EpsvAllAccepted | ActiveAccepted(_) => 200,
            CantPrepareData(_) | CantOpenPassive(_) | NoIpv4ForPasv | CantOpenDataWith(_)
            | CantOpenData => 425,
            PassiveAt(_) => 227,
            ExtendedPassiveAt(_) => 229,
            LoginTimeout
            | IdleTimeout
            | BackendReplyTimeout
            | ShuttingDown
            | ConnectionLost
            | InvalidServerReply
            | NoBackend
            | UnknownDestination
            | DestinationIsGateway
            | DestinationUnreachable
            | TooManyPrelogin
            | TooManySessions
            | TooManyFromAddress
            | TooFast
            | Draining
            | PreloginBudget
            | LocalResourceLimit
            | BackendTlsFailed
            | BackendRefusedSession => 421,
            AuthTlsOk => 234,
            AuthMechanismUnsupported | ProtUnknown => 504,
            AlreadyTls | SecurityExchangeFirst => 503,
            PbszOk | ProtOk(_) => 200,
            ProtUnsupported => 536,
            CccRefused => 502,
            TlsRequiredForLogin => 530,
            TlsRequiredForData => 521,
            RoutingGreeting(_) => 220,
            LoginFirst => 530,
            NoopOk => 200,
            Goodbye => 221,
            FeaturesBeforeUser => 211,
        }
    }

    /// The reply as sent, CRLF-terminated (one line, except [`Self::FeaturesBeforeUser`]).
    pub fn to_bytes(&self) -> Vec<u8> {
        format!("{self}\r\n").into_bytes()
    }
}

impl fmt::Display for LocalReply {
    /// The line without its CRLF.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use LocalReply::*;
        let code = self.code();
        match self {
            SyntaxError => write!(f, "{code} Syntax error, command unrecognized."),
            LineTooLong => write!(
                f,
                "{code} Command line too long; closing control connection."
            ),
            LongModeRefused => write!(f, "{code} Command not implemented; use EPSV or EPRT."),
            EpsvAllInEffect => write!(f, "{code} EPSV ALL in effect; only EPSV is allowed."),
            EpsvAllAccepted => write!(f, "{code} EPSV ALL command successful."),
            AuthUnsupported => write!(f, "{code} AUTH is not supported through this gateway."),
            UnsupportedProtocol => write!(f, "{code} Network protocol not supported, use (1,2)"),
            BadDataAddress(v) => write!(f, "{code} Syntax error in {} arguments.", v.as_str()),
            NoUsableAddress(v) => write!(f, "{code} {} names no usable address.", v.as_str()),
            Bounce(v) => write!(
                f,
                "{code} Illegal {} command: the address must be your own.",
                v.as_str()
            ),
            ActiveAccepted(v) => write!(f, "{code} {} command successful.", v.as_str()),
            CantPrepareData(why) => write!(f, "{code} Can't prepare data connection: {why}."),
            CantOpenPassive(why) => write!(f, "{code} Can't open passive connection: {why}."),
            NoIpv4ForPasv => write!(
                f,
                "{code} Can't open passive connection: no IPv4 address to announce; use EPSV."
            ),
            CantOpenDataWith(why) => write!(f, "{code} Can't open data connection: {why}."),
            CantOpenData => write!(f, "{code} Can't open data connection."),
            PassiveAt(a) => write!(
                f,
                "{code} Entering Passive Mode ({}).",
                format_pasv_tuple(*a)
            ),
            ExtendedPassiveAt(p) => write!(f, "{code} Entering Extended Passive Mode (|||{p}|)"),
            LoginTimeout => write!(f, "{code} Login timeout; closing control connection."),
            IdleTimeout => write!(f, "{code} Idle timeout; closing control connection."),
            BackendReplyTimeout => write!(
                f,
                "{code} Server did not answer in time; closing control connection."
            ),
            ShuttingDown => write!(
                f,
                "{code} Service shutting down, closing control connection."
            ),
            ConnectionLost => write!(f, "{code} Connection to server lost."),
            InvalidServerReply => write!(
                f,
                "{code} Invalid reply from server; closing control connection."
            ),
            NoBackend => write!(f, "{code} Service not available: no backend reachable."),
            RoutingGreeting(text) => write!(f, "{code} {text}"),
            LoginFirst => write!(f, "{code} Please log in with USER first."),
            NoopOk => write!(f, "{code} NOOP ok."),
            Goodbye => write!(f, "{code} Goodbye."),
            // RFC 2389 §3.2: feature lines begin with a space.
            FeaturesBeforeUser => write!(
                f,
                "{code}-Features:\r\n AUTH TLS\r\n PBSZ\r\n PROT\r\n{code} End"
            ),
            BackendRefusedSession => write!(
                f,
                "{code} Service not available: server refused the session."
            ),
            UnknownDestination => write!(f, "{code} Service not available: unknown destination."),
            DestinationIsGateway => write!(
                f,
                "{code} Service not available: destination is this gateway."
            ),
            DestinationUnreachable => {
                write!(f, "{code} Service not available: destination unreachable.")
            }
            TooManyPrelogin => write!(
                f,
                "{code} Too many connections waiting to log in; try again later."
            ),
            TooManySessions => write!(f, "{code} Too many sessions; try again later."),
            TooManyFromAddress => write!(
                f,
                "{code} Too many sessions from your address; try again later."
            ),
            TooFast => write!(
                f,
                "{code} Too many new sessions from your address; slow down."
            ),
            Draining => write!(
                f,
                "{code} Service restarting, closing control connection; please reconnect."
            ),
            PreloginBudget => write!(
                f,
                "{code} Too many commands before login; closing control connection."
            ),
            LocalResourceLimit => write!(f, "{code} Service not available, local resource limit."),
            AuthTlsOk => write!(f, "{code} AUTH TLS successful; proceed with negotiation."),
            AuthMechanismUnsupported => write!(f, "{code} Unsupported AUTH mechanism; use TLS."),
            AlreadyTls => write!(f, "{code} Control connection already protected by TLS."),
            SecurityExchangeFirst => write!(f, "{code} Send AUTH TLS first."),
            PbszOk => write!(f, "{code} PBSZ=0"),
            ProtOk(level) => write!(f, "{code} Protection level set to {}.", char::from(*level)),
            ProtUnsupported => write!(f, "{code} PROT level not supported by TLS; use C or P."),
            ProtUnknown => write!(f, "{code} Unknown PROT level; use C or P."),
            CccRefused => write!(f, "{code} CCC not permitted through this gateway."),
            TlsRequiredForLogin => {
                write!(f, "{code} TLS required: send AUTH TLS before logging in.")
            }
            TlsRequiredForData => {
                write!(f, "{code} Data connections must be protected: send PROT P.")
            }
            BackendTlsFailed => write!(f, "{code} Service not available: TLS to server failed."),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Texts clients and the existing tests match on stay exactly as they were.
    #[test]
    fn texts_and_codes() {
        let cases: &[(LocalReply, &str)] = &[
            (
                LocalReply::SyntaxError,
                "500 Syntax error, command unrecognized.",
            ),
            (
                LocalReply::LongModeRefused,
                "502 Command not implemented; use EPSV or EPRT.",
            ),
            (
                LocalReply::Bounce(Verb::Port),
                "500 Illegal PORT command: the address must be your own.",
            ),
            (
                LocalReply::ActiveAccepted(Verb::Eprt),
                "200 EPRT command successful.",
            ),
            (
                LocalReply::PassiveAt("203.0.113.10:50001".parse().unwrap()),
                "227 Entering Passive Mode (203,0,113,10,195,81).",
            ),
            (
                LocalReply::ExtendedPassiveAt(50001),
                "229 Entering Extended Passive Mode (|||50001|)",
            ),
            (
                LocalReply::NoBackend,
                "421 Service not available: no backend reachable.",
            ),
            (
                LocalReply::UnsupportedProtocol,
                "522 Network protocol not supported, use (1,2)",
            ),
        ];
        for (reply, text) in cases {
            assert_eq!(reply.to_string(), *text);
            assert_eq!(reply.to_bytes(), format!("{text}\r\n").into_bytes());
            assert_eq!(text[..3].parse::<u16>().unwrap(), reply.code(), "{text}");
        }
    }

    #[test]
    fn session_ending_replies_are_421() {
        for r in [
            LocalReply::LoginTimeout,
            LocalReply::IdleTimeout,
            LocalReply::BackendReplyTimeout,
            LocalReply::ShuttingDown,
            LocalReply::ConnectionLost,
            LocalReply::InvalidServerReply,
            LocalReply::TooManyPrelogin,
            LocalReply::LocalResourceLimit,
        ] {
            assert_eq!(r.code(), 421, "{r}");
            assert!(r.to_string().starts_with("421 "));
        }
    }
}
