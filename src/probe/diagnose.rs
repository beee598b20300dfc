//! Facts → verdicts: for every step the probe reached, whether it passed, the
//! reason in words and, for failures, one line of remedy. Pure.

use std::net::{IpAddr, SocketAddr};

use serde::Serialize;

use super::facts::*;

/// How a check came out; `status` in `--json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// The step worked.
    Pass,
    /// Worth knowing, not a failure (e.g. an unsupported optional command).
    Warn,
    /// The step failed; the probe exits 1.
    Fail,
}

/// Machine-readable diagnosis; stable names in `--json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Nothing wrong.
    Ok,
    /// The host name did not resolve.
    ResolveFailed,
    /// The control connection was refused (TCP RST).
    ConnectRefused,
    /// The control connection got no answer in time.
    ConnectTimeout,
    /// The control connection failed otherwise (unreachable, reset).
    ConnectFailed,
    /// The greeting was not `220` (e.g. `421`: too many connections).
    BannerRejected,
    /// TCP connected but no greeting came.
    BannerTimeout,
    /// A command got no reply, or not an FTP one: the control connection broke.
    BadReply,
    /// `AUTH TLS` was refused or got no reply.
    TlsRejected,
    /// The TLS handshake failed.
    TlsHandshakeFailed,
    /// The certificate chain did not verify against the trust roots.
    CertUntrusted,
    /// The certificate has expired.
    CertExpired,
    /// The certificate does not name the URL's host.
    CertNameMismatch,
    /// `USER`/`PASS` was not accepted.
    LoginFailed,
    /// The URL's directory could not be entered.
    CwdFailed,
    /// An optional command the server does not support (a warning).
    Unsupported,
    /// The server refused a data-mode command.
    CommandFailed,
    /// A `227` names a private address while the control address is public.
    PassivePrivateAddress,
    /// A `227` names another address than the control one, which does not answer.
    PassiveAddressMismatch,
    /// Connecting to the announced passive port timed out or failed.
    PassiveUnreachable,
    /// The server refused `PORT`/`EPRT` with our address.
    ActiveRejected,
    /// `PORT`/`EPRT` was accepted but the server never connected back.
    ActiveUnreachable,
    /// The data connection opened but the transfer failed.
    TransferFailed,
    /// No final reply after a transfer with an idle control connection.
    IdleDrop,
    /// An upload ending without TLS `close_notify` got `426`.
    TlsEofStrict,
    /// An optional check could not run (an earlier step failed).
    CheckFailed,
}

/// The verdict on one probe step (one entry of `checks` in `--json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// `resolve`, `connect`, `banner`, `feat`, `tls`, `login`, `cwd`, `syst`,
    /// `EPSV`/`PASV`/`EPRT`/`PORT`, `idle`, `tls_eof`.
    pub step: String,
    /// Pass, warn or fail.
    pub status: Status,
    /// The machine-readable diagnosis.
    pub verdict: Verdict,
    /// How long the step took, in milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub elapsed_ms: Option<u64>,
    /// The exact server reply the verdict is about.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply: Option<String>,
    /// What happened, in words.
    pub reason: String,
    /// For failures, one line on what to change.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remedy: Option<String>,
    /// Structured facts behind the verdict, for scripts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<Details>,
}

/// The facts behind a check, by kind of step (`details` in `--json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Details {
    /// A data-mode step.
    Mode(ModeDetails),
    /// The `tls` step: the session and certificate.
    Tls(TlsSession),
    /// The `idle` step.
    Idle(IdleDetails),
}

/// What a data-mode step saw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModeDetails {
    /// The control connection's server address.
    pub control: String,
    /// Passive: the address the server announced; active: the one we announced.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub announced: Option<String>,
    /// Whether the announced address is the control connection's server address.
    pub announced_is_control: bool,
    /// Whether the announced address is not routable on the Internet (RFC 1918, CGNAT,
    /// loopback, link-local, ULA).
    pub announced_is_private: bool,
    /// Time to open the data connection, or why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_connect_ms: Option<u64>,
    /// Why the data connection failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_error: Option<String>,
    /// Passive, announced address failed: whether the control address and that port worked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub control_address_fallback_ok: Option<bool>,
    /// The transfers made in this mode (`LIST`, then any `RETR`/`STOR`).
    pub transfers: Vec<TransferDetails>,
}

/// One transfer of a data-mode step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TransferDetails {
    /// The command, e.g. `LIST` or `RETR x`.
    pub command: String,
    /// Bytes moved over the data connection.
    pub bytes: u64,
    /// How long the data connection was in use, in milliseconds.
    pub data_ms: u64,
    /// The first line of the reply that completed the command.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub final_reply: Option<String>,
    /// Whether the transfer succeeded (data intact, `2xx` final reply).
    pub ok: bool,
}

/// What the idle check saw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IdleDetails {
    /// The idle time asked for (`--idle-check`), in milliseconds.
    pub requested_ms: u64,
    /// The runs, in the order made.
    pub runs: Vec<IdleRunDetails>,
}

/// One run of the idle check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IdleRunDetails {
    /// How long the control connection stayed idle, in milliseconds.
    pub idle_ms: u64,
    /// Whether the final reply arrived and was `2xx`.
    pub ok: bool,
    /// The final reply's first line, or why none came.
    pub result: String,
}

impl Check {
    fn new(step: &str, status: Status, verdict: Verdict, reason: String) -> Check {
        Check {
            step: step.to_owned(),
            status,
            verdict,
            elapsed_ms: None,
            reply: None,
            reason,
            remedy: None,
            details: None,
        }
    }
    fn pass(step: &str, reason: String) -> Check {
        Check::new(step, Status::Pass, Verdict::Ok, reason)
    }
    fn fail(step: &str, verdict: Verdict, reason: String, remedy: &str) -> Check {
        let mut c = Check::new(step, Status::Fail, verdict, reason);
        c.remedy = Some(remedy.to_owned());
        c
    }
    fn timed<T>(mut self, t: &Timed<T>) -> Check {
        self.elapsed_ms = Some(millis(t.elapsed));
        self
    }
    fn with_reply(mut self, r: Option<&Reply>) -> Check {
        self.reply = r.map(|r| r.text.clone());
        self
    }
}

/// Whether an address cannot be reached across the internet (RFC 1918, CGNAT,
/// loopback, link-local, ULA, unspecified, documentation is *not* included:
/// tests and examples use it as "public").
pub fn is_private(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || (a == 100 && (64..128).contains(&b))
        }
        IpAddr::V6(v6) => {
            let s = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || (s & 0xfe00) == 0xfc00
                || (s & 0xffc0) == 0xfe80
        }
    }
}

/// The verdicts for every step present in `facts`, in probe order.
pub fn diagnose(facts: &Facts) -> Vec<Check> {
    let mut out = Vec::new();
    out.extend(facts.resolve.as_ref().map(resolve));
    out.extend(facts.connect.as_ref().map(connect));
    out.extend(facts.banner.as_ref().map(banner));
    out.extend(facts.feat.as_ref().map(feat));
    out.extend(facts.tls.as_ref().map(tls).into_iter().flatten());
    out.extend(facts.login.as_ref().map(login));
    out.extend(facts.cwd.as_ref().map(cwd));
    out.extend(facts.syst.as_ref().map(|t| simple("syst", t, "SYST")));
    for m in &facts.modes {
        out.push(mode(m));
    }
    if let Some(i) = &facts.idle {
        out.push(idle(i));
    }
    if let Some(e) = &facts.tls_eof {
        out.push(tls_eof(e));
    }
    out
}

fn resolve(t: &Timed<Outcome<Vec<IpAddr>>>) -> Check {
    match &t.value {
        Ok(ips) if !ips.is_empty() => {
            let list: Vec<String> = ips.iter().map(ToString::to_string).collect();
            Check::pass("resolve", list.join(", "))
        }
        Ok(_) => Check::fail(
            "resolve",
            Verdict::ResolveFailed,
            "the name has no address".into(),
            "check the host name and its DNS records",
        ),
        Err(e) => Check::fail(
            "resolve",
            Verdict::ResolveFailed,
            format!("cannot resolve the host: {e}"),
            "check the host name and the resolver (/etc/resolv.conf)",
        ),
    }
    .timed(t)
}

fn connect(t: &Timed<Outcome<ControlAddrs>>) -> Check {
    match &t.value {
        Ok(a) => Check::pass("connect", format!("{} from {}", a.peer, a.local)),
        Err(IoFailure::Refused) => Check::fail(
            "connect",
            Verdict::ConnectRefused,
            "connection refused: nothing listens on the control port".into(),
            "start the FTP server or fix the port (a load balancer with no healthy backend also refuses)",
        ),
        Err(e @ IoFailure::Timeout { .. }) => Check::fail(
            "connect",
            Verdict::ConnectTimeout,
            format!("control connection: {e} (packets silently dropped)"),
            "a firewall drops the control port: allow TCP to it",
        ),
        Err(e) => Check::fail(
            "connect",
            Verdict::ConnectFailed,
            format!("control connection failed: {e}"),
            "check routing and firewalls between here and the server",
        ),
    }
    .timed(t)
}

fn banner(t: &Timed<Outcome<Reply>>) -> Check {
    match &t.value {
        Ok(r) if r.code == 220 => Check::pass("banner", format!("220 {}", text_of(r))),
        Ok(r) if r.code == 421 => Check::fail(
            "banner",
            Verdict::BannerRejected,
            format!("the server refuses the session: {}", r.first_line()),
            "server is at a connection limit or refuses this client (vsftpd max_clients/max_per_ip, \
             proftpd MaxClients, tcp_wrappers): close idle sessions or raise the limit",
        ),
        Ok(r) => Check::fail(
            "banner",
            Verdict::BannerRejected,
            format!("unexpected greeting: {}", r.first_line()),
            "the server is not ready for FTP sessions: check its logs",
        ),
        Err(IoFailure::Timeout { after_ms }) => Check::fail(
            "banner",
            Verdict::BannerTimeout,
            format!("TCP connected but no greeting within {after_ms} ms"),
            "something accepts TCP but no FTP server answers: check the load balancer's backend \
             (or the port expects implicit TLS: try ftps://)",
        ),
        Err(e) => Check::fail(
            "banner",
            Verdict::BannerTimeout,
            format!("no greeting: {e}"),
            "the server closed the connection before greeting: check its logs and access rules",
        ),
    }
    .with_reply(t.value.as_ref().ok())
    .timed(t)
}

fn text_of(r: &Reply) -> String {
    r.first_line()
        .get(4..)
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// FEAT: the feature names (the lines between `211-` and `211 `).
fn feat(t: &Timed<Outcome<Reply>>) -> Check {
    let mut c = simple("feat", t, "FEAT");
    if let (Status::Pass, Ok(r)) = (c.status, &t.value) {
        let names: Vec<&str> = r
            .text
            .lines()
            .skip(1)
            .filter(|l| l.starts_with(' '))
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        c.reason = format!("features: {}", names.join(" "));
    }
    c
}

/// A command whose failure only means the server lacks it.
fn simple(step: &str, t: &Timed<Outcome<Reply>>, verb: &str) -> Check {
    match &t.value {
        Ok(r) if r.code / 100 == 2 => Check::pass(step, r.first_line().to_owned()),
        Ok(r) => Check::new(
            step,
            Status::Warn,
            Verdict::Unsupported,
            format!("{verb} not supported: {}", r.first_line()),
        ),
        Err(e) => Check::fail(
            step,
            Verdict::BadReply,
            format!("no reply to {verb}: {e}"),
            "the control connection broke: see the steps above",
        ),
    }
    .with_reply(t.value.as_ref().ok())
    .timed(t)
}

fn tls(t: &Timed<TlsFacts>) -> Vec<Check> {
    let f = &t.value;
    if let Some(auth) = &f.auth {
        match auth {
            Ok(r) if r.code == 234 => {}
            Ok(r) => {
                return vec![Check::fail(
                    "tls",
                    Verdict::TlsRejected,
                    format!("AUTH TLS refused: {}", r.first_line()),
                    "enable TLS on the server (vsftpd ssl_enable=YES) or use ftp://",
                )
                .with_reply(Some(r))
                .timed(t)]
            }
            Err(e) => {
                return vec![Check::fail(
                    "tls",
                    Verdict::TlsRejected,
                    format!("no reply to AUTH TLS: {e}"),
                    "a middlebox may block AUTH TLS: check firewalls with FTP inspection",
                )
                .timed(t)]
            }
        }
    }
    let Some(hs) = &f.handshake else {
        // Recorded for ftp:// URLs when FEAT lists AUTH TLS.
        return vec![Check::pass(
            "tls",
            "AUTH TLS offered (FEAT), not used with ftp://: probe ftpes:// to check it".into(),
        )
        .timed(t)];
    };
    let s = match hs {
        Err(e) => {
            return vec![Check::fail(
                "tls",
                Verdict::TlsHandshakeFailed,
                format!("TLS handshake failed: {e}"),
                "check the server's certificate and TLS settings (protocol versions, ciphers)",
            )
            .timed(t)]
        }
        Ok(s) => s,
    };
    let Some(c) = &s.cert else {
        return vec![Check::pass("tls", format!("{} {}", s.protocol, s.cipher)).timed(t)];
    };
    let summary = format!(
        "{} {}; certificate subject {}, issuer {}, expires {} ({} days)",
        s.protocol, s.cipher, c.subject, c.issuer, c.not_after, c.days_left
    );
    let check = if c.days_left < 0 {
        Check::fail(
            "tls",
            Verdict::CertExpired,
            format!("certificate expired: {summary}"),
            "renew the server certificate",
        )
    } else if !c.name_matches {
        Check::fail(
            "tls",
            Verdict::CertNameMismatch,
            format!(
                "certificate names [{}] do not match the host: {summary}",
                c.names.join(", ")
            ),
            "use a host name the certificate covers, or reissue it with this name",
        )
    } else if let Err(e) = &c.trusted {
        Check::fail(
            "tls",
            Verdict::CertUntrusted,
            format!("certificate not trusted ({e}): {summary}"),
            "use a certificate from a trusted CA, or pass its CA with --ca-file",
        )
    } else {
        Check::pass("tls", summary)
    };
    let mut check = check.timed(t);
    check.details = Some(Details::Tls(s.clone()));
    vec![check]
}

fn login(t: &Timed<Outcome<Reply>>) -> Check {
    reply_step(
        t,
        ("login", Verdict::LoginFailed),
        (
            "login refused",
            "check user and password (--user, --password-file); anonymous needs anonymous_enable",
        ),
        (
            "no reply to USER/PASS",
            "the control connection broke during login: check server logs",
        ),
    )
}

fn cwd(t: &Timed<Outcome<Reply>>) -> Check {
    reply_step(
        t,
        ("cwd", Verdict::CwdFailed),
        (
            "cannot enter the URL's directory",
            "fix the path in the URL",
        ),
        (
            "no reply to CWD",
            "the control connection broke: check server logs",
        ),
    )
}

/// A step that passes on a 2xx reply: `(name, verdict)`, and for a refusal and for no
/// reply at all `(reason, remedy)`.
fn reply_step(
    t: &Timed<Outcome<Reply>>,
    (name, verdict): (&'static str, Verdict),
    (refused, refused_remedy): (&str, &'static str),
    (silent, silent_remedy): (&str, &'static str),
) -> Check {
    match &t.value {
        Ok(r) if r.code / 100 == 2 => Check::pass(name, r.first_line().to_owned()),
        Ok(r) => Check::fail(
            name,
            verdict,
            format!("{refused}: {}", r.first_line()),
            refused_remedy,
        ),
        Err(e) => Check::fail(name, verdict, format!("{silent}: {e}"), silent_remedy),
    }
    .with_reply(t.value.as_ref().ok())
    .timed(t)
}

/// A mode's check, timed from its command to the end of its last transfer.
fn mode(m: &ModeFacts) -> Check {
    let mut c = mode_verdict(m);
    let total = m.reply.elapsed
        + m.data.as_ref().map(|d| d.elapsed).unwrap_or_default()
        + m.fallback.as_ref().map(|d| d.elapsed).unwrap_or_default()
        + m.list
            .iter()
            .chain(m.transfers.iter())
            .map(|t| t.elapsed)
            .sum::<std::time::Duration>();
    c.elapsed_ms = Some(millis(total));
    c.details = Some(Details::Mode(mode_details(m)));
    c
}

fn mode_details(m: &ModeFacts) -> ModeDetails {
    let announced = m.announced.as_ref().and_then(|a| a.as_ref().ok()).copied();
    let peer = m.control.peer.ip().to_canonical();
    ModeDetails {
        control: m.control.peer.to_string(),
        announced: announced.map(|a| a.to_string()),
        announced_is_control: announced.is_some_and(|a| a.ip().to_canonical() == peer),
        announced_is_private: announced.is_some_and(|a| is_private(a.ip())),
        data_connect_ms: m
            .data
            .as_ref()
            .filter(|d| d.value.is_ok())
            .map(|d| millis(d.elapsed)),
        data_error: m
            .data
            .as_ref()
            .and_then(|d| d.value.as_ref().err())
            .map(ToString::to_string),
        control_address_fallback_ok: m.fallback.as_ref().map(|f| f.value.is_ok()),
        transfers: m
            .list
            .iter()
            .chain(m.transfers.iter())
            .map(|t| TransferDetails {
                command: t.value.command.clone(),
                bytes: t.value.bytes,
                data_ms: millis(t.value.data_elapsed),
                final_reply: t.value.final_reply().map(|r| r.first_line().to_owned()),
                ok: t.value.succeeded(),
            })
            .collect(),
    }
}

fn mode_verdict(m: &ModeFacts) -> Check {
    let step = m.mode.verb();
    let reply = match &m.reply.value {
        Ok(r) => r,
        Err(e) => {
            return Check::fail(
                step,
                Verdict::BadReply,
                format!("no reply to {step}: {e}"),
                "the control connection broke: see the steps above",
            )
            .timed(&m.reply)
        }
    };
    let base = |c: Check| c.with_reply(Some(reply)).timed(&m.reply);
    if reply.code / 100 != 2 {
        return base(mode_refused(m, reply));
    }
    let announced = match &m.announced {
        Some(Ok(a)) => *a,
        Some(Err(e)) => {
            return base(Check::fail(
                step,
                Verdict::BadReply,
                format!("cannot read the address in the reply: {e}"),
                "the server's reply is malformed: try another data mode",
            ))
        }
        None => {
            return base(Check::fail(
                step,
                Verdict::BadReply,
                "no address".into(),
                "try another data mode",
            ))
        }
    };
    let data_ok = m.data.as_ref().is_some_and(|d| d.value.is_ok());
    if m.mode.is_passive() {
        if let Some(c) = passive_address_problem(m, announced, data_ok) {
            return base(c);
        }
        if !data_ok {
            let err = data_error(m);
            return base(Check::fail(
                step,
                Verdict::PassiveUnreachable,
                format!(
                    "passive port {} on {} unreachable: {err}",
                    announced.port(),
                    announced.ip()
                ),
                &format!(
                    "passive ports unreachable: open the server's passive port range (this time {}) \
                     in every firewall/NAT in front of it and forward it to the server",
                    announced.port()
                ),
            ));
        }
    } else if !data_ok {
        // The server accepted PORT/EPRT, yet never connected back.
        let first_reply = m.list.as_ref().and_then(|l| l.value.final_reply());
        let mut c = Check::fail(
            step,
            Verdict::ActiveUnreachable,
            format!(
                "the server never connected back to {announced}: {}{}",
                data_error(m),
                first_reply
                    .map(|r| format!("; LIST: {}", r.first_line()))
                    .unwrap_or_default()
            ),
            if is_private(announced.ip()) {
                "this client is behind NAT: use passive mode, or an FTP-aware NAT (ftpgate transparent mode, nf_conntrack_ftp)"
            } else {
                "a firewall in front of this client blocks incoming connections: allow them or use passive mode"
            },
        );
        c.reply = Some(reply.text.clone());
        return c.timed(&m.reply);
    }
    base(transfers(m, announced))
}

/// Passive address checks: private or different from the control address.
fn passive_address_problem(m: &ModeFacts, announced: SocketAddr, data_ok: bool) -> Option<Check> {
    let step = m.mode.verb();
    let control = m.control.peer.ip().to_canonical();
    let ip = announced.ip().to_canonical();
    if ip == control {
        return None;
    }
    let fallback_ok = m.fallback.as_ref().is_some_and(|f| f.value.is_ok());
    let clients = if fallback_ok {
        " (the port answers on the control address: clients that ignore the reply's address, like curl's default, work; others fail)"
    } else {
        ""
    };
    if is_private(ip) && !is_private(control) {
        return Some(Check::fail(
            step,
            Verdict::PassivePrivateAddress,
            format!(
                "server announces {ip} in {} (private), not the control address {control}{}{clients}",
                m.mode.reply_code(),
                if data_ok { "" } else { ": unreachable from here" },
            ),
            &format!(
                "server announces {ip} in {} (private): set pasv_address (vsftpd) / MasqueradeAddress (proftpd) \
                 to {control}, or put ftpgate in front with --public-address {control}",
                m.mode.reply_code()
            ),
        ));
    }
    if data_ok {
        return None;
    }
    Some(Check::fail(
        step,
        Verdict::PassiveAddressMismatch,
        format!(
            "server announces {ip} in {}, not the control address {control}, and it is unreachable: {}{clients}",
            m.mode.reply_code(),
            data_error(m)
        ),
        &format!("make the server announce {control} (vsftpd pasv_address) or put ftpgate in front with --public-address"),
    ))
}

fn data_error(m: &ModeFacts) -> String {
    match m.data.as_ref().map(|d| &d.value) {
        Some(Err(e)) => e.to_string(),
        Some(Ok(())) => "connected".into(),
        None => "not attempted".into(),
    }
}

fn mode_refused(m: &ModeFacts, reply: &Reply) -> Check {
    let step = m.mode.verb();
    let unsupported = matches!(reply.code, 500 | 502 | 504)
        && !reply.text.to_ascii_lowercase().contains("illegal");
    if !m.mode.is_passive() {
        if let Some(Ok(a)) = &m.announced {
            if matches!(reply.code, 500 | 501) && is_private(a.ip()) {
                return Check::fail(
                    step,
                    Verdict::ActiveRejected,
                    format!(
                        "the server refuses {step} {} ({}): it sees this client under another address (NAT on the client side)",
                        a.ip(),
                        reply.first_line()
                    ),
                    "active mode cannot work through this NAT: use passive mode, or an FTP-aware NAT on the client side (ftpgate transparent mode, nf_conntrack_ftp)",
                );
            }
            if matches!(reply.code, 500 | 501) && !unsupported {
                return Check::fail(
                    step,
                    Verdict::ActiveRejected,
                    format!("the server refuses {step} {}: {}", a, reply.first_line()),
                    "the server does not accept this client's address for active mode: use passive mode",
                );
            }
        }
    }
    if unsupported {
        return Check::new(
            step,
            Status::Warn,
            Verdict::Unsupported,
            format!("{step} not supported: {}", reply.first_line()),
        );
    }
    Check::fail(
        step,
        Verdict::CommandFailed,
        format!("{step} refused: {}", reply.first_line()),
        "check the server's data connection settings (pasv_enable/port_enable)",
    )
}

/// LIST and the optional RETR/STOR over a working data connection.
fn transfers(m: &ModeFacts, announced: SocketAddr) -> Check {
    let step = m.mode.verb();
    let connect_ms = m.data.as_ref().map(|d| millis(d.elapsed)).unwrap_or(0);
    let mut words = vec![format!("data connection {announced} in {connect_ms} ms")];
    for t in m.list.iter().chain(m.transfers.iter()) {
        let f = &t.value;
        if !f.succeeded() {
            let why = match (&f.data_error, f.final_reply(), &f.first, &f.last) {
                (Some(e), _, _, _) => format!("data connection: {e}"),
                (None, Some(r), _, _) => r.first_line().to_owned(),
                (None, None, Err(e), _) | (None, None, _, Some(Err(e))) => {
                    format!("no final reply: {e}")
                }
                (None, None, _, _) => "no final reply".into(),
            };
            let mut c = Check::fail(
                step,
                Verdict::TransferFailed,
                format!("{} failed: {why}", f.command),
                "the data connection opened but the transfer failed: check permissions and middleboxes that inspect data",
            );
            c.elapsed_ms = Some(millis(t.elapsed));
            return c;
        }
        let secs = f.data_elapsed.as_secs_f64();
        let rate = if secs > 0.0 {
            format!(", {:.1} KiB/s", f.bytes as f64 / 1024.0 / secs)
        } else {
            String::new()
        };
        words.push(format!("{} {} bytes{rate}", f.command, f.bytes));
    }
    Check::pass(step, words.join("; "))
}

fn idle(i: &IdleFacts) -> Check {
    let mut c = idle_verdict(i);
    c.details = Some(Details::Idle(IdleDetails {
        requested_ms: millis(i.requested),
        runs: i
            .runs
            .iter()
            .map(|r| IdleRunDetails {
                idle_ms: millis(r.idle),
                ok: r.ok(),
                result: match &r.result {
                    Ok(rep) => rep.first_line().to_owned(),
                    Err(e) => e.to_string(),
                },
            })
            .collect(),
    }));
    c
}

fn idle_verdict(i: &IdleFacts) -> Check {
    if let Some(e) = &i.setup_error {
        return Check::fail(
            "idle",
            Verdict::CheckFailed,
            format!("idle check could not run: {e}"),
            "fix the failures above first",
        );
    }
    let last_ok = i.runs.iter().filter(|r| r.ok()).map(|r| r.idle).max();
    let first_bad = i.runs.iter().filter(|r| !r.ok()).map(|r| r.idle).min();
    let secs = |d: std::time::Duration| d.as_secs_f64();
    match first_bad {
        None => Check::pass(
            "idle",
            format!(
                "final reply still arrived after {:.0} s of control-connection idle during a transfer",
                secs(i.requested)
            ),
        ),
        Some(bad) => {
            let good = last_ok.filter(|g| *g < bad).unwrap_or_default();
            let estimate = (secs(good) + secs(bad)) / 2.0;
            let why = i
                .runs
                .iter()
                .find(|r| r.idle == bad)
                .map(|r| match &r.result {
                    Ok(rep) => rep.first_line().to_owned(),
                    Err(e) => e.to_string(),
                })
                .unwrap_or_default();
            Check::fail(
                "idle",
                Verdict::IdleDrop,
                format!(
                    "control connection dropped after ~{estimate:.0} s idle during a transfer \
                     (ok after {:.1} s, lost after {:.1} s: {why})",
                    secs(good),
                    secs(bad)
                ),
                &format!(
                    "control connection dropped after ~{estimate:.0} s idle during a transfer: enable NOOP keepalive \
                     (ftpgate --noop-interval, client keepalive) or raise the firewall/LB idle timeout"
                ),
            )
        }
    }
}

fn tls_eof(e: &TlsEofFacts) -> Check {
    if let Some(err) = &e.setup_error {
        return Check::fail(
            "tls_eof",
            Verdict::CheckFailed,
            format!("TLS shutdown check could not run: {err}"),
            "fix the failures above first",
        );
    }
    let show = |o: &Outcome<Reply>| match o {
        Ok(r) => r.first_line().to_owned(),
        Err(e) => e.to_string(),
    };
    let ok = |o: &Outcome<Reply>| o.as_ref().is_ok_and(|r| r.code / 100 == 2);
    match (ok(&e.with_close_notify), ok(&e.without_close_notify)) {
        (true, true) => Check::pass(
            "tls_eof",
            "uploads end fine with and without TLS close_notify".into(),
        ),
        (true, false) => Check::fail(
            "tls_eof",
            Verdict::TlsEofStrict,
            format!(
                "the server rejects uploads that end without TLS close_notify ({}); with close_notify: {}",
                show(&e.without_close_notify),
                show(&e.with_close_notify)
            ),
            "server is strict about TLS shutdown (vsftpd strict_ssl_read_eof=YES): clients must send close_notify, or set strict_ssl_read_eof=NO",
        ),
        (false, _) => Check::fail(
            "tls_eof",
            Verdict::CheckFailed,
            format!("even an upload ending with close_notify failed: {}", show(&e.with_close_notify)),
            "check that the upload path is writable",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn t<T>(v: T) -> Timed<T> {
        Timed::new(Duration::from_millis(3), v)
    }
    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }
    fn ok_transfer(cmd: &str) -> Timed<TransferFacts> {
        t(TransferFacts {
            command: cmd.into(),
            first: Ok(Reply::new(150, "150 Here comes the directory listing.")),
            bytes: 42,
            data_elapsed: Duration::from_millis(2),
            data_error: None,
            last: Some(Ok(Reply::new(226, "226 Directory send OK."))),
        })
    }
    fn mode_facts(mode: DataMode, reply: Reply, announced: &str, data: Outcome<()>) -> ModeFacts {
        let data_ok = data.is_ok();
        ModeFacts {
            mode,
            control: ControlAddrs {
                local: sa("203.0.113.2:40000"),
                peer: sa("203.0.113.1:21"),
            },
            reply: t(Ok(reply)),
            announced: Some(Ok(sa(announced))),
            data: Some(t(data)),
            fallback: None,
            list: data_ok.then(|| ok_transfer("LIST")),
            transfers: vec![],
        }
    }

    #[test]
    fn private_ranges() {
        for (ip, private) in [
            ("10.0.0.5", true),
            ("172.16.1.1", true),
            ("192.168.1.1", true),
            ("100.64.0.1", true),
            ("127.0.0.1", true),
            ("169.254.1.1", true),
            ("203.0.113.1", false),
            ("8.8.8.8", false),
            ("fd00::1", true),
            ("fe80::1", true),
            ("2001:db8::1", false),
            ("::ffff:10.0.0.1", true),
        ] {
            assert_eq!(is_private(ip.parse().unwrap()), private, "{ip}");
        }
    }

    #[test]
    fn mode_table() {
        let unreachable = Err(IoFailure::Unreachable {
            detail: "Network is unreachable".into(),
        });
        let timeout = Err(IoFailure::Timeout { after_ms: 5000 });
        // (facts, status, verdict, remedy must contain)
        let cases: Vec<(ModeFacts, Status, Verdict, &str)> = vec![
            (
                mode_facts(
                    DataMode::Pasv,
                    Reply::new(227, "227 Entering Passive Mode (203,0,113,1,195,80)."),
                    "203.0.113.1:50000",
                    Ok(()),
                ),
                Status::Pass,
                Verdict::Ok,
                "",
            ),
            (
                mode_facts(
                    DataMode::Pasv,
                    Reply::new(227, "227 Entering Passive Mode (10,0,0,5,195,80)."),
                    "10.0.0.5:50000",
                    unreachable.clone(),
                ),
                Status::Fail,
                Verdict::PassivePrivateAddress,
                "server announces 10.0.0.5 in 227 (private): set pasv_address",
            ),
            (
                mode_facts(
                    DataMode::Epsv,
                    Reply::new(229, "229 Entering Extended Passive Mode (|||50000|)"),
                    "203.0.113.1:50000",
                    timeout.clone(),
                ),
                Status::Fail,
                Verdict::PassiveUnreachable,
                "passive ports unreachable: open",
            ),
            (
                mode_facts(
                    DataMode::Pasv,
                    Reply::new(227, "227 Entering Passive Mode (198,51,100,7,195,80)."),
                    "198.51.100.7:50000",
                    timeout.clone(),
                ),
                Status::Fail,
                Verdict::PassiveAddressMismatch,
                "pasv_address",
            ),
            (
                mode_facts(
                    DataMode::Port,
                    Reply::new(500, "500 Illegal PORT command."),
                    "10.1.0.2:40001",
                    timeout.clone(),
                ),
                Status::Fail,
                Verdict::ActiveRejected,
                "use passive mode",
            ),
            (
                mode_facts(
                    DataMode::Eprt,
                    Reply::new(200, "200 EPRT command successful."),
                    "203.0.113.2:40001",
                    timeout.clone(),
                ),
                Status::Fail,
                Verdict::ActiveUnreachable,
                "blocks incoming connections",
            ),
            (
                mode_facts(
                    DataMode::Eprt,
                    Reply::new(502, "502 Command not implemented."),
                    "203.0.113.2:40001",
                    timeout,
                ),
                Status::Warn,
                Verdict::Unsupported,
                "",
            ),
        ];
        for (facts, status, verdict, remedy) in cases {
            let c = mode(&facts);
            assert_eq!((c.status, c.verdict), (status, verdict), "{facts:?}\n{c:?}");
            assert!(
                c.remedy.as_deref().unwrap_or_default().contains(remedy),
                "{remedy:?} not in {c:?}"
            );
            assert_eq!(
                c.reply.as_deref(),
                facts.reply.value.as_ref().ok().map(|r| r.text.as_str())
            );
        }
    }

    #[test]
    fn private_announcement_with_working_fallback_mentions_it() {
        let mut m = mode_facts(
            DataMode::Pasv,
            Reply::new(227, "227 Entering Passive Mode (10,0,0,5,195,80)."),
            "10.0.0.5:50000",
            Err(IoFailure::Timeout { after_ms: 10 }),
        );
        m.fallback = Some(t(Ok(())));
        let c = mode(&m);
        assert_eq!(c.verdict, Verdict::PassivePrivateAddress);
        assert!(c.reason.contains("curl"), "{c:?}");
    }

    #[test]
    fn mode_details_for_scripts() {
        let mut m = mode_facts(
            DataMode::Pasv,
            Reply::new(227, "227 Entering Passive Mode (10,0,0,5,195,80)."),
            "10.0.0.5:50000",
            Err(IoFailure::Timeout { after_ms: 10 }),
        );
        m.fallback = Some(t(Ok(())));
        let Some(Details::Mode(d)) = mode(&m).details else {
            panic!("no mode details")
        };
        assert_eq!(d.announced.as_deref(), Some("10.0.0.5:50000"));
        assert!(d.announced_is_private && !d.announced_is_control);
        assert_eq!(d.control_address_fallback_ok, Some(true));
        assert_eq!(d.data_connect_ms, None);
        assert_eq!(d.data_error.as_deref(), Some("no answer within 10 ms"));
        let ok = mode(&mode_facts(
            DataMode::Epsv,
            Reply::new(229, "229 (|||50000|)"),
            "203.0.113.1:50000",
            Ok(()),
        ));
        let Some(Details::Mode(d)) = ok.details else {
            panic!("no mode details")
        };
        assert!(d.announced_is_control && !d.announced_is_private);
        assert_eq!(d.transfers.len(), 1);
        assert_eq!((d.transfers[0].bytes, d.transfers[0].ok), (42, true));
    }

    #[test]
    fn failed_list_after_connect_is_a_transfer_failure() {
        let mut m = mode_facts(
            DataMode::Epsv,
            Reply::new(229, "229 (|||50000|)"),
            "203.0.113.1:50000",
            Ok(()),
        );
        m.list = Some(t(TransferFacts {
            command: "LIST".into(),
            first: Ok(Reply::new(150, "150 ok")),
            bytes: 0,
            data_elapsed: Duration::ZERO,
            data_error: None,
            last: Some(Err(IoFailure::Timeout { after_ms: 10 })),
        }));
        assert_eq!(mode(&m).verdict, Verdict::TransferFailed);
    }

    #[test]
    fn step_table() {
        let banner421 = Facts {
            banner: Some(t(Ok(Reply::new(
                421,
                "421 There are too many connections from your internet address.",
            )))),
            ..Facts::default()
        };
        let refused = Facts {
            connect: Some(t(Err(IoFailure::Refused))),
            ..Facts::default()
        };
        let silent = Facts {
            banner: Some(t(Err(IoFailure::Timeout { after_ms: 5000 }))),
            ..Facts::default()
        };
        let badlogin = Facts {
            login: Some(t(Ok(Reply::new(530, "530 Login incorrect.")))),
            ..Facts::default()
        };
        let feat500 = Facts {
            feat: Some(t(Ok(Reply::new(500, "500 Unknown command.")))),
            ..Facts::default()
        };
        for (facts, status, verdict, remedy) in [
            (
                banner421,
                Status::Fail,
                Verdict::BannerRejected,
                "max_per_ip",
            ),
            (
                refused,
                Status::Fail,
                Verdict::ConnectRefused,
                "start the FTP server",
            ),
            (silent, Status::Fail, Verdict::BannerTimeout, "ftps://"),
            (badlogin, Status::Fail, Verdict::LoginFailed, "password"),
            (feat500, Status::Warn, Verdict::Unsupported, ""),
        ] {
            let checks = diagnose(&facts);
            assert_eq!(checks.len(), 1);
            let c = &checks[0];
            assert_eq!((c.status, c.verdict), (status, verdict), "{c:?}");
            assert!(
                c.remedy.as_deref().unwrap_or_default().contains(remedy),
                "{c:?}"
            );
        }
    }

    fn idle_facts(runs: &[(u64, bool)]) -> IdleFacts {
        IdleFacts {
            requested: Duration::from_secs(runs[0].0),
            runs: runs
                .iter()
                .map(|&(s, ok)| IdleRun {
                    idle: Duration::from_secs(s),
                    result: if ok {
                        Ok(Reply::new(226, "226 Transfer complete."))
                    } else {
                        Err(IoFailure::Timeout { after_ms: 3000 })
                    },
                })
                .collect(),
            setup_error: None,
        }
    }

    #[test]
    fn feat_lists_feature_names() {
        let f = Facts {
            feat: Some(t(Ok(Reply::new(
                211,
                "211-Features:\n EPRT\n EPSV\n AUTH TLS\n211 End",
            )))),
            ..Facts::default()
        };
        assert_eq!(diagnose(&f)[0].reason, "features: EPRT EPSV AUTH");
    }

    #[test]
    fn idle_table() {
        let c = idle(&idle_facts(&[(8, true)]));
        assert_eq!(c.verdict, Verdict::Ok);
        let c = idle(&idle_facts(&[(8, false), (4, false), (2, true)]));
        assert_eq!(c.verdict, Verdict::IdleDrop);
        assert!(
            c.remedy.as_deref().unwrap().starts_with(
                "control connection dropped after ~3 s idle during a transfer: enable NOOP keepalive"
            ),
            "{c:?}"
        );
        let c = idle(&idle_facts(&[(8, false), (4, false), (2, false)]));
        assert!(c.reason.contains("~1 s"), "{c:?}");
    }

    #[test]
    fn tls_eof_table() {
        let ok = || Ok(Reply::new(226, "226 Transfer complete."));
        let bad = || Ok(Reply::new(426, "426 Failure reading network stream."));
        for (with, without, verdict) in [
            (ok(), ok(), Verdict::Ok),
            (ok(), bad(), Verdict::TlsEofStrict),
            (bad(), bad(), Verdict::CheckFailed),
        ] {
            let c = tls_eof(&TlsEofFacts {
                with_close_notify: with,
                without_close_notify: without,
                setup_error: None,
            });
            assert_eq!(c.verdict, verdict, "{c:?}");
        }
    }

    #[test]
    fn certificate_table() {
        let cert = |days_left, name_matches, trusted: Result<(), String>| TlsFacts {
            auth: Some(Ok(Reply::new(234, "234 Proceed with negotiation."))),
            handshake: Some(Ok(TlsSession {
                protocol: "TLSv1.3".into(),
                cipher: "TLS13_AES_256_GCM_SHA384".into(),
                cert: Some(CertFacts {
                    subject: "CN=ftp.example".into(),
                    issuer: "CN=ftp.example".into(),
                    not_after: "2030-01-01".into(),
                    days_left,
                    names: vec!["ftp.example".into()],
                    name_matches,
                    trusted,
                }),
            })),
        };
        for (f, verdict) in [
            (cert(30, true, Ok(())), Verdict::Ok),
            (cert(-1, true, Ok(())), Verdict::CertExpired),
            (cert(30, false, Ok(())), Verdict::CertNameMismatch),
            (
                cert(30, true, Err("unknown issuer".into())),
                Verdict::CertUntrusted,
            ),
        ] {
            assert_eq!(tls(&t(f))[0].verdict, verdict);
        }
        let refused = TlsFacts {
            auth: Some(Ok(Reply::new(530, "530 Please login with USER and PASS."))),
            handshake: None,
        };
        assert_eq!(tls(&t(refused))[0].verdict, Verdict::TlsRejected);
    }
}
