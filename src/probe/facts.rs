//! What the probe observed, step by step: plain data, no judgement (that is
//! [`super::diagnose`]). A step that was not reached is `None`.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde::Serialize;

use super::target::Security;

/// One complete server reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reply {
    /// The reply code (the last line's).
    pub code: u16,
    /// Every line of the reply, terminators removed, joined with `\n`.
    pub text: String,
}

impl Reply {
    /// A reply of `code` with `text`.
    pub fn new(code: u16, text: &str) -> Reply {
        Reply {
            code,
            text: text.to_owned(),
        }
    }
    /// The reply's first line.
    pub fn first_line(&self) -> &str {
        self.text.lines().next().unwrap_or_default()
    }
    /// Whether the code is `1xx`, `2xx` or `3xx`.
    pub fn is_positive(&self) -> bool {
        (100..400).contains(&self.code)
    }
}

/// Why an I/O step did not complete.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum IoFailure {
    /// Nothing within the step timeout (dropped packets, a silent peer).
    Timeout {
        /// The timeout that expired, in milliseconds (0: the OS's own timeout).
        after_ms: u64,
    },
    /// TCP RST on connect.
    Refused,
    /// No route / host or network unreachable.
    Unreachable {
        /// The OS error.
        detail: String,
    },
    /// The peer closed the connection.
    Closed,
    /// The connection was reset while in use.
    Reset,
    /// A TLS handshake or record error.
    Tls {
        /// The TLS error.
        detail: String,
    },
    /// The server sent something that is not an FTP reply.
    Protocol {
        /// The offending line, or why it is not one.
        detail: String,
    },
    /// Any other I/O error.
    Other {
        /// The OS error.
        detail: String,
    },
}

impl IoFailure {
    /// A timeout after `d`.
    pub fn timeout(d: Duration) -> IoFailure {
        IoFailure::Timeout {
            after_ms: millis(d),
        }
    }

    /// The failure an I/O error means.
    pub fn from_io(e: &std::io::Error) -> IoFailure {
        use std::io::ErrorKind as K;
        match e.kind() {
            K::ConnectionRefused => IoFailure::Refused,
            K::ConnectionReset | K::BrokenPipe | K::ConnectionAborted => IoFailure::Reset,
            K::UnexpectedEof => IoFailure::Closed,
            K::TimedOut => IoFailure::Timeout { after_ms: 0 },
            K::HostUnreachable | K::NetworkUnreachable => IoFailure::Unreachable {
                detail: e.to_string(),
            },
            K::InvalidData => IoFailure::Tls {
                detail: e.to_string(),
            },
            _ => IoFailure::Other {
                detail: e.to_string(),
            },
        }
    }
}

impl fmt::Display for IoFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IoFailure::Timeout { after_ms } => write!(f, "no answer within {after_ms} ms"),
            IoFailure::Refused => f.write_str("connection refused"),
            IoFailure::Unreachable { detail } => write!(f, "unreachable ({detail})"),
            IoFailure::Closed => f.write_str("connection closed by the server"),
            IoFailure::Reset => f.write_str("connection reset"),
            IoFailure::Tls { detail } => write!(f, "TLS error: {detail}"),
            IoFailure::Protocol { detail } => write!(f, "not an FTP reply: {detail}"),
            IoFailure::Other { detail } => f.write_str(detail),
        }
    }
}

/// What an I/O step produced, or why it did not complete.
pub type Outcome<T> = Result<T, IoFailure>;

/// A fact with the time its step took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timed<T> {
    /// How long the step took.
    pub elapsed: Duration,
    /// What the step observed.
    pub value: T,
}

impl<T> Timed<T> {
    /// `value`, observed in `elapsed`.
    pub fn new(elapsed: Duration, value: T) -> Timed<T> {
        Timed { elapsed, value }
    }
}

/// `d` in whole milliseconds (saturating).
pub fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The four ways of opening a data connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum DataMode {
    /// `EPSV` (RFC 2428).
    Epsv,
    /// `PASV` (RFC 959).
    Pasv,
    /// `EPRT` (RFC 2428).
    Eprt,
    /// `PORT` (RFC 959).
    Port,
}

impl DataMode {
    /// Every mode, in the order the probe tries them by default.
    pub const ALL: [DataMode; 4] = [
        DataMode::Epsv,
        DataMode::Pasv,
        DataMode::Eprt,
        DataMode::Port,
    ];

    /// The command's verb, e.g. `EPSV`.
    pub fn verb(self) -> &'static str {
        match self {
            DataMode::Epsv => "EPSV",
            DataMode::Pasv => "PASV",
            DataMode::Eprt => "EPRT",
            DataMode::Port => "PORT",
        }
    }

    /// Whether the client connects out (`EPSV`, `PASV`).
    pub fn is_passive(self) -> bool {
        matches!(self, DataMode::Epsv | DataMode::Pasv)
    }

    /// The reply carrying the passive address, for messages.
    pub fn reply_code(self) -> u16 {
        match self {
            DataMode::Epsv => 229,
            DataMode::Pasv => 227,
            DataMode::Eprt | DataMode::Port => 200,
        }
    }
}

impl std::str::FromStr for DataMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        DataMode::ALL
            .into_iter()
            .find(|m| m.verb().eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("`{s}`: expected epsv, pasv, eprt or port"))
    }
}

/// Addresses of the control connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ControlAddrs {
    /// The probe's end.
    pub local: SocketAddr,
    /// The server's end.
    pub peer: SocketAddr,
}

/// One transfer over a data connection (LIST, RETR, STOR).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferFacts {
    /// `LIST`, `RETR x`, `STOR x`.
    pub command: String,
    /// The first reply to the command (normally `150`/`125`).
    pub first: Outcome<Reply>,
    /// Bytes moved over the data connection and how long that took.
    pub bytes: u64,
    /// How long the data connection was in use.
    pub data_elapsed: Duration,
    /// Why the data connection failed, if it did.
    pub data_error: Option<IoFailure>,
    /// The final reply after a positive preliminary one.
    pub last: Option<Outcome<Reply>>,
}

impl TransferFacts {
    /// The reply that completed the command, if any.
    pub fn final_reply(&self) -> Option<&Reply> {
        match (&self.first, &self.last) {
            (Ok(r), None) if r.code >= 200 => Some(r),
            (_, Some(Ok(r))) => Some(r),
            _ => None,
        }
    }
    /// Whether the data connection ended cleanly and the final reply is `2xx`.
    pub fn succeeded(&self) -> bool {
        self.data_error.is_none() && self.final_reply().is_some_and(|r| r.code / 100 == 2)
    }
}

/// Everything about one data mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModeFacts {
    /// Which mode.
    pub mode: DataMode,
    /// The control connection the mode was tried on.
    pub control: ControlAddrs,
    /// The exact reply to `EPSV`/`PASV`/`EPRT x`/`PORT x`.
    pub reply: Timed<Outcome<Reply>>,
    /// Passive: the address the reply announced (EPSV: control address + port),
    /// or why it could not be read. Active: the address we announced.
    pub announced: Option<Result<SocketAddr, String>>,
    /// Passive: our connection to the announced address; active: the server's
    /// connection to us.
    pub data: Option<Timed<Outcome<()>>>,
    /// Passive, when the announced address failed and differs from the control
    /// address: a connection to the control address and the announced port.
    pub fallback: Option<Timed<Outcome<()>>>,
    /// The `LIST` over the mode's data connection.
    pub list: Option<Timed<TransferFacts>>,
    /// `RETR`/`STOR` (`--retr`, `--stor`), each on a new data connection.
    pub transfers: Vec<Timed<TransferFacts>>,
}

/// TLS session details.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TlsSession {
    /// The negotiated version, e.g. `TLSv1.3`.
    pub protocol: String,
    /// The negotiated cipher suite.
    pub cipher: String,
    /// The server's certificate; `None` when it sent none.
    pub cert: Option<CertFacts>,
}

/// The server certificate, as far as the probe reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CertFacts {
    /// Subject distinguished name.
    pub subject: String,
    /// Issuer distinguished name.
    pub issuer: String,
    /// End of validity, as the certificate states it.
    pub not_after: String,
    /// Days until expiry (negative: expired).
    pub days_left: i64,
    /// DNS names and IP addresses (subject alternative names; else the common names).
    pub names: Vec<String>,
    /// Whether one of `names` matches the URL's host.
    pub name_matches: bool,
    /// `Ok` when the chain verified against the trust roots, else why not.
    pub trusted: Result<(), String>,
}

/// The TLS step: `AUTH TLS` (explicit) and the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFacts {
    /// Explicit TLS: the reply to `AUTH TLS`.
    pub auth: Option<Outcome<Reply>>,
    /// The handshake's session, or why it failed.
    pub handshake: Option<Outcome<TlsSession>>,
}

/// One run of the idle check: a paced upload keeping the control connection
/// idle for `idle`, then the wait for the final reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdleRun {
    /// How long the control connection stayed idle.
    pub idle: Duration,
    /// The final reply, or why none came.
    pub result: Outcome<Reply>,
}

impl IdleRun {
    /// Whether the final reply arrived and was `2xx`.
    pub fn ok(&self) -> bool {
        self.result.as_ref().is_ok_and(|r| r.code / 100 == 2)
    }
}

/// The idle check (`--idle-check`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdleFacts {
    /// The idle time asked for.
    pub requested: Duration,
    /// Runs in the order made (the first one idles for `requested`).
    pub runs: Vec<IdleRun>,
    /// Why the check could not run at all (no working data mode, no login...).
    pub setup_error: Option<String>,
}

/// The two uploads of the TLS shutdown check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsEofFacts {
    /// The final reply to the upload ending with `close_notify`.
    pub with_close_notify: Outcome<Reply>,
    /// The final reply to the upload ending without it.
    pub without_close_notify: Outcome<Reply>,
    /// Why the check could not run at all.
    pub setup_error: Option<String>,
}

/// Everything the probe saw.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Facts {
    /// The URL probed, password masked.
    pub url: String,
    /// Plain, explicit or implicit TLS.
    pub security: Option<Security>,
    /// The host's addresses.
    pub resolve: Option<Timed<Outcome<Vec<IpAddr>>>>,
    /// The control connection.
    pub connect: Option<Timed<Outcome<ControlAddrs>>>,
    /// The greeting.
    pub banner: Option<Timed<Outcome<Reply>>>,
    /// The reply to `FEAT`.
    pub feat: Option<Timed<Outcome<Reply>>>,
    /// TLS setup (`ftps://`, `ftpes://`).
    pub tls: Option<Timed<TlsFacts>>,
    /// Final reply of `USER`/`PASS`.
    pub login: Option<Timed<Outcome<Reply>>>,
    /// The reply to `CWD` into the URL's directory.
    pub cwd: Option<Timed<Outcome<Reply>>>,
    /// The reply to `SYST`.
    pub syst: Option<Timed<Outcome<Reply>>>,
    /// One entry per data mode tried.
    pub modes: Vec<ModeFacts>,
    /// The idle check, when asked for.
    pub idle: Option<IdleFacts>,
    /// The TLS shutdown check, when asked for.
    pub tls_eof: Option<TlsEofFacts>,
}
