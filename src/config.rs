//! Configuration: YAML file, overridden by CLI flags, validated before anything binds.
//!
//! Every key has a default except `listen` and `backends`. Keys are grouped by concern
//! (`passive`, `control`, `admin`, `timeouts`, `limits`, ...); the old top-level
//! spellings still load as deprecated aliases (see [`DEPRECATED_KEYS`]), each noted in
//! [`Loaded::deprecations`] for the caller to log once logging is up.
//!
//! [`Config::validate`] reports every problem at once, each naming its key, so an
//! operator fixes a file in one pass; only its [`ValidConfig`] can start a gateway.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Deserializer};

use crate::farm::{BackendSpec, BalancePolicy, UserRoute};
use crate::health::HealthConfig;
use crate::protocol::line::DEFAULT_MAX_LINE;
use crate::proxy_protocol::{ProxyProtocolConfig, ProxyVersion};

/// An error in the configuration, naming the key it concerns.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The configuration file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file's path as given.
        path: String,
        /// The read error.
        source: std::io::Error,
    },
    /// YAML syntax or type error, with its key path and position; stops parsing.
    #[error("{0}")]
    Parse(String),
    /// A value that failed validation.
    #[error("{key}: {reason}")]
    Invalid {
        /// The YAML key path, such as `timeouts.idle`.
        key: &'static str,
        /// What is wrong with the value.
        reason: String,
    },
    /// A deprecated key and the key replacing it were both given: which one wins would
    /// be a guess, so neither does.
    #[error("{old}: deprecated alias of {new}, which is also given; keep only {new}")]
    Conflict {
        /// The deprecated key.
        old: &'static str,
        /// The key replacing it.
        new: &'static str,
    },
}

/// Every error found in a configuration; `Display` puts one per line.
#[derive(Debug, thiserror::Error)]
#[error("{}", join_lines(.0))]
pub struct ConfigErrors(pub Vec<ConfigError>);

fn join_lines(errors: &[ConfigError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

impl ConfigErrors {
    /// The errors, in the order found.
    pub fn iter(&self) -> std::slice::Iter<'_, ConfigError> {
        self.0.iter()
    }

    /// How many errors.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<ConfigError> for ConfigErrors {
    fn from(e: ConfigError) -> Self {
        ConfigErrors(vec![e])
    }
}

/// A deprecated spelling that was used; logged as a warning at startup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deprecation {
    /// The deprecated key (or environment variable) as used.
    pub old: &'static str,
    /// What to use instead.
    pub new: &'static str,
}

impl fmt::Display for Deprecation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} is deprecated; use {}", self.old, self.new)
    }
}

/// Old top-level keys and the keys replacing them (README lists the same).
pub const DEPRECATED_KEYS: &[(&str, &str)] = &[
    ("rewrite_passive", "passive.rewrite"),
    ("passive_target", "passive.target"),
    ("max_line_length", "control.max_line_length"),
    ("max_pipelined_commands", "control.max_pipelined_commands"),
    ("metrics", "admin.listen"),
];

impl ConfigError {
    fn invalid(key: &'static str, reason: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key,
            reason: reason.into(),
        }
    }
}

/// An inclusive port range such as `50000-50999`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    /// First port of the range.
    pub lo: u16,
    /// Last port of the range (inclusive; `lo <= hi`).
    pub hi: u16,
}

impl PortRange {
    /// How many ports the range holds (at least 1).
    pub fn len(&self) -> usize {
        usize::from(self.hi) - usize::from(self.lo) + 1
    }

    /// Always false: a range holds at least one port.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Whether `port` is in the range.
    pub fn contains(&self, port: u16) -> bool {
        (self.lo..=self.hi).contains(&port)
    }

    /// Whether the two ranges share a port.
    pub fn overlaps(&self, other: &PortRange) -> bool {
        self.lo <= other.hi && other.lo <= self.hi
    }
}

impl FromStr for PortRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (lo, hi) = s
            .split_once('-')
            .ok_or_else(|| format!("`{s}` is not a range like 50000-50999"))?;
        let parse = |p: &str| {
            p.trim()
                .parse::<u16>()
                .map_err(|_| format!("`{p}` is not a port number"))
        };
        let (lo, hi) = (parse(lo)?, parse(hi)?);
        if lo == 0 {
            return Err("port 0 cannot be part of a data-port range".into());
        }
        if lo > hi {
            return Err(format!("range {lo}-{hi} is empty (low end above high end)"));
        }
        Ok(PortRange { lo, hi })
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.lo, self.hi)
    }
}

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Where ftpgate connects for a passive data connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum PassiveTarget {
    /// The address in the backend's `227` (its control address when it says 0.0.0.0).
    #[default]
    Reply,
    /// Always the backend's control address, for backends that advertise an
    /// address ftpgate cannot reach (a `pasv_address` meant for direct clients).
    Control,
}

/// Log line format: YAML `log.format`, `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines (the default).
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// How ftpgate opens data connections towards the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum BackendDataMode {
    /// The mode the client chose (PASV/EPSV stay passive, PORT/EPRT stay active).
    #[default]
    Same,
    /// Always PASV/EPSV towards the backend: backends need no outbound connections.
    Passive,
    /// Always PORT/EPRT towards the backend, for backends that only do active mode.
    Active,
}

/// What a listener does with the connections it accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum ListenerMode {
    /// In front of FTP servers: sessions go to `backends`.
    #[default]
    Reverse,
    /// On a gateway: connections redirected by iptables/nftables (REDIRECT or TPROXY)
    /// go to their original destination.
    Transparent,
}

/// How data connections are relayed (process-wide; see [`crate::relay::set_relay_mode`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum RelayMode {
    /// splice(2) between the sockets on Linux (bytes stay in the kernel); elsewhere, or
    /// when no pipe can be made, the buffered copy.
    #[default]
    Auto,
    /// Always copy through a user-space buffer (benchmarks, and an escape hatch should a
    /// kernel's splice misbehave).
    Copy,
}

/// TLS towards clients (`--client-tls`, YAML `tls.client`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum ClientTlsPolicy {
    /// `AUTH` is refused with `502` (ftpgate's behaviour before FTPS).
    Off,
    /// `AUTH TLS` is accepted; clear-text sessions still work.
    Optional,
    /// A login before `AUTH TLS` is refused; the session never reaches a backend login.
    Required,
}

/// TLS towards backends (`--backend-tls`, YAML `tls.backend`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum BackendTlsPolicy {
    /// Never: the backend always sees clear text (TLS offload).
    Off,
    /// TLS to the backend exactly when the client used it.
    #[default]
    Mirror,
    /// Always `AUTH TLS` to the backend, even for a clear-text client; a backend that
    /// refuses ends the session with `421`.
    Required,
    /// The backend speaks TLS from the first byte (implicit FTPS, port 990).
    Implicit,
}

/// The backend's data protection (`tls.backend_data`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum BackendDataProtection {
    /// The client's `PBSZ`/`PROT` go to the backend: its data protection follows the
    /// client's.
    #[default]
    Mirror,
    /// Always `PROT P` towards a TLS backend (ftpgate answers the client's `PROT`).
    Private,
    /// Clear data towards the backend (ftpgate answers the client's `PROT`), e.g. to
    /// keep the farm's data path cheap inside a trusted network.
    Clear,
}

/// Whether data connections must be protected (`tls.client_data`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ClientDataPolicy {
    /// Clear data connections are allowed.
    #[default]
    Optional,
    /// A transfer on a session that did not send `PROT P` is refused with `522`.
    Required,
}

/// What to do when a client ends a TLS upload without `close_notify`
/// (`tls.unclean_client_eof`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum UncleanEof {
    /// Close the backend side cleanly (with `close_notify`): the backend answers `226`
    /// (vsftpd's documented `strict_ssl_read_eof=NO` behaviour, for the whole farm).
    #[default]
    Complete,
    /// Reset the backend data connection, so a truncation shows as a failed transfer.
    Abort,
}

/// FTPS: YAML `tls:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate chain presented to clients (leaf first).
    pub cert: Option<std::path::PathBuf>,
    /// PEM private key of `cert`.
    pub key: Option<std::path::PathBuf>,
    /// Unset: `optional` when a certificate is configured, else `off`.
    pub client: Option<ClientTlsPolicy>,
    /// Whether client data connections must be protected (`PROT P`).
    pub client_data: ClientDataPolicy,
    /// Refuse a client data-connection handshake that does not resume a TLS session.
    pub require_session_reuse: bool,
    /// TLS towards backends.
    pub backend: BackendTlsPolicy,
    /// The backend's data protection once its control connection is TLS.
    pub backend_data: BackendDataProtection,
    /// PEM CA certificates that backend certificates must chain to; unset: the system
    /// trust store.
    pub backend_ca: Option<std::path::PathBuf>,
    /// Name verified in backend certificates; unset: the backend's IP address.
    pub backend_server_name: Option<String>,
    /// Do not verify backend certificates (warned about at start).
    pub backend_insecure: bool,
    /// A client TLS upload that ends without `close_notify`.
    pub unclean_client_eof: UncleanEof,
    /// Highest TLS version offered to backends (`tls.backend_max_version`).
    pub backend_max_version: TlsVersion,
}

/// A TLS protocol version (`"1.2"`, `"1.3"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
pub enum TlsVersion {
    /// TLS 1.2.
    #[serde(rename = "1.2")]
    Tls12,
    /// TLS 1.3.
    #[default]
    #[serde(rename = "1.3")]
    Tls13,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            cert: None,
            key: None,
            client: None,
            client_data: ClientDataPolicy::Optional,
            // Python's ftplib never resumes the control session on data connections;
            // curl and lftp do. Off by default so every common client works.
            require_session_reuse: false,
            backend: BackendTlsPolicy::Mirror,
            backend_data: BackendDataProtection::Mirror,
            backend_ca: None,
            backend_server_name: None,
            backend_insecure: false,
            unclean_client_eof: UncleanEof::Complete,
            backend_max_version: TlsVersion::Tls13,
        }
    }
}

impl TlsConfig {
    /// The effective client policy: `optional` with a certificate, else `off`.
    pub fn client_policy(&self) -> ClientTlsPolicy {
        match (self.client, self.cert.is_some()) {
            (Some(p), _) => p,
            (None, true) => ClientTlsPolicy::Optional,
            (None, false) => ClientTlsPolicy::Off,
        }
    }
}

/// One listener, for configurations that mix modes.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// Address accepting FTP clients: `listeners[].listen`.
    pub listen: SocketAddr,
    /// What this listener does with its connections: `listeners[].mode` (default `reverse`).
    #[serde(default)]
    pub mode: ListenerMode,
    /// Accept TPROXY-diverted connections (sets IP_TRANSPARENT; needs CAP_NET_ADMIN).
    #[serde(default)]
    pub tproxy: bool,
    /// `implicit`: FTPS from the first byte (port 990 style); `explicit` (default):
    /// clear text until `AUTH TLS`.
    #[serde(default)]
    pub tls: ListenerTls,
}

/// How a listener starts TLS (YAML `listeners[].tls`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ListenerTls {
    /// Clear text; `AUTH TLS` upgrades (RFC 4217).
    #[default]
    Explicit,
    /// TLS from the first byte; data connections protected by default.
    Implicit,
}

/// Transparent (gateway) mode behaviour.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TransparentConfig {
    /// Map passive replies through ftpgate too (for gateways that block outbound high
    /// ports). Off: 227/229 pass through and clients connect out through NAT.
    pub map_passive: bool,
    /// Replace a private address in a server's 227 (a misconfigured server behind its
    /// own NAT) by the server's control address.
    pub fix_private_pasv: bool,
}

impl Default for TransparentConfig {
    fn default() -> Self {
        TransparentConfig {
            map_passive: false,
            fix_private_pasv: true,
        }
    }
}

/// Passive mode (PASV/EPSV) relaying: YAML `passive:`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PassiveConfig {
    /// Rewrite `227`/`229` replies (turning this off is a diagnostic knob only).
    pub rewrite: bool,
    /// Where ftpgate connects for a passive data connection.
    pub target: PassiveTarget,
    /// Networks a backend's `227` may name besides the backend's own control address.
    /// Empty: only its own.
    pub allow_targets: Vec<IpNet>,
}

impl Default for PassiveConfig {
    fn default() -> Self {
        PassiveConfig {
            rewrite: true,
            target: PassiveTarget::Reply,
            allow_targets: Vec::new(),
        }
    }
}

/// The client control connection: YAML `control:`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlConfig {
    /// Longest control line accepted from a client, terminator included.
    pub max_line_length: usize,
    /// Commands a client may have outstanding before ftpgate stops reading from it.
    pub max_pipelined_commands: usize,
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            max_line_length: DEFAULT_MAX_LINE,
            max_pipelined_commands: 64,
        }
    }
}

/// The admin HTTP endpoint: YAML `admin:`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AdminConfig {
    /// Listener for `/metrics`, `/healthz`, `/readyz`; unset: none.
    pub listen: Option<SocketAddr>,
}

/// Caps on what clients may hold: YAML `limits:`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Sessions not yet logged in, at most; 0: unlimited.
    pub max_prelogin_sessions: usize,
    /// Sessions open at once, at most; 0: unlimited. Refused with `421` before any
    /// backend connect.
    pub max_sessions: usize,
    /// Sessions open at once from one client address, at most; 0: unlimited.
    pub max_sessions_per_ip: usize,
    /// New sessions per client address (`20/s`, `100/m burst 20`); unset: unlimited.
    pub new_sessions_per_ip: Option<SessionRate>,
    /// Data ports one session may hold at once (leased and not yet released); a new
    /// `PASV`/`EPSV` releases the session's own unused one first.
    pub data_ports_per_session: usize,
    /// Bytes of command lines a client may send before it has logged in (a client
    /// chatting without logging in holds a backend session); 0: unlimited.
    pub prelogin_bytes: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_prelogin_sessions: 1000,
            max_sessions: 0,
            max_sessions_per_ip: 0,
            new_sessions_per_ip: None,
            data_ports_per_session: 4,
            prelogin_bytes: 64 * 1024,
        }
    }
}

/// A rate of new sessions with a burst: `20/s`, `600/m`, `1000/h`, optionally
/// followed by `burst N` (default: the count).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct SessionRate {
    /// Sessions per `per`.
    pub count: u32,
    /// The period of `count`.
    pub per: Duration,
    /// Sessions a quiet address may open at once.
    pub burst: u32,
}

impl SessionRate {
    /// Sessions per second.
    pub fn per_second(self) -> f64 {
        f64::from(self.count) / self.per.as_secs_f64()
    }
}

impl std::str::FromStr for SessionRate {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("`{s}`: expected a rate like 20/s, 600/m or 100/m burst 20");
        let mut words = s.split_whitespace();
        let (count, unit) = words
            .next()
            .and_then(|r| r.split_once('/'))
            .ok_or_else(bad)?;
        let count: u32 = count.parse().map_err(|_| bad())?;
        let per = match unit {
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            _ => return Err(bad()),
        };
        let burst = match (words.next(), words.next(), words.next()) {
            (None, _, _) => count,
            (Some("burst"), Some(n), None) => n.parse().map_err(|_| bad())?,
            _ => return Err(bad()),
        };
        if count == 0 || burst == 0 {
            return Err(format!("`{s}`: rate and burst must be at least 1"));
        }
        Ok(SessionRate { count, per, burst })
    }
}

impl TryFrom<String> for SessionRate {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

/// How long a draining gateway waits for sessions before closing them.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// Active mode (PORT/EPRT) relaying.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ActiveConfig {
    /// Networks a client may name in PORT/EPRT besides its own address. Empty: only its
    /// own (FTP bounce protection).
    pub allow_foreign: Vec<IpNet>,
    /// Source port for data connections ftpgate opens to clients (20 for client
    /// firewalls that insist on it; needs CAP_NET_BIND_SERVICE). 0: any port.
    pub source_port: u16,
    /// Ports ftpgate listens on for backends' active data connections. Unset: the
    /// `data_ports` range is shared.
    pub ports: Option<PortRange>,
}

/// TCP keepalive on control connections (both sides): the YAML `keepalive.tcp` section
/// and what [`crate::net::prepare_control_socket`] applies — one type, so a new knob
/// cannot be parsed and then forgotten on the way to the socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TcpKeepaliveConfig {
    /// Idle time before the first probe; 0s disables TCP keepalive.
    #[serde(with = "humantime_serde")]
    pub idle: Duration,
    /// Between unanswered probes: `keepalive.tcp.interval` (default 15s).
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Unanswered probes before the connection is dropped: `keepalive.tcp.count` (default 4).
    pub count: u32,
}

impl Default for TcpKeepaliveConfig {
    fn default() -> Self {
        TcpKeepaliveConfig {
            idle: Duration::from_secs(60),
            interval: Duration::from_secs(15),
            count: 4,
        }
    }
}

/// Keeping idle control connections alive: YAML `keepalive:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeepaliveConfig {
    /// NOOP on the idle backend control connection every this long while a transfer
    /// runs; 0s disables.
    #[serde(with = "humantime_serde")]
    pub noop_interval: Duration,
    /// TCP keepalive on both control connections: `keepalive.tcp`.
    pub tcp: TcpKeepaliveConfig,
}

impl Default for KeepaliveConfig {
    fn default() -> Self {
        KeepaliveConfig {
            noop_interval: Duration::from_secs(60),
            tcp: TcpKeepaliveConfig::default(),
        }
    }
}

impl KeepaliveConfig {
    /// The TCP keepalive to set on control sockets; `None` when disabled (idle 0s).
    pub fn tcp_params(&self) -> Option<TcpKeepaliveConfig> {
        (!self.tcp.idle.is_zero()).then_some(self.tcp)
    }
}

/// Timeouts: YAML `timeouts:`. Each field says whether 0s disables it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// How long a mapped data port waits for the client's connection.
    #[serde(with = "humantime_serde")]
    pub data_connect: Duration,
    /// How long to wait for a TCP connection to a backend (control or data).
    #[serde(with = "humantime_serde")]
    pub backend_connect: Duration,
    /// A session not logged in within this is closed with `421`.
    #[serde(with = "humantime_serde")]
    pub login: Duration,
    /// A session with no client command and no transfer for this long is closed with
    /// `421`; 0s disables.
    #[serde(with = "humantime_serde")]
    pub idle: Duration,
    /// A data connection on which no byte moved either way for this long is closed
    /// (a peer that neither sends nor closes); 0s disables.
    #[serde(with = "humantime_serde")]
    pub data_idle: Duration,
    /// A command outstanding at the backend with no reply for this long closes the
    /// session with `421` (a hung backend would otherwise hold the client forever);
    /// 0s disables.
    #[serde(with = "humantime_serde")]
    pub backend_reply: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            data_connect: Duration::from_secs(30),
            backend_connect: Duration::from_secs(5),
            login: Duration::from_secs(60),
            idle: Duration::from_secs(15 * 60),
            data_idle: Duration::from_secs(5 * 60),
            backend_reply: Duration::from_secs(5 * 60),
        }
    }
}

/// Logging: YAML `log:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// Line format, `text` or `json` (default `text`).
    pub format: LogFormat,
    /// A `tracing` filter such as `info` or `ftpgate=debug`; `RUST_LOG` wins when set.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

/// The whole configuration. Field paths are the YAML key paths.
#[derive(Debug, Clone)]
pub struct Config {
    /// Addresses accepting FTP clients, all in `mode`.
    pub listen: Vec<SocketAddr>,
    /// The mode of the `listen` addresses.
    pub mode: ListenerMode,
    /// Listeners with a mode each (one process can serve reverse and transparent
    /// listeners side by side); added to `listen`.
    pub listeners: Vec<ListenerConfig>,
    /// Transparent (gateway) mode behaviour.
    pub transparent: TransparentConfig,
    /// FTP servers (addresses or `host:port` names, with weight and drain), chosen by
    /// `balance`; on connect failure the next is tried.
    pub backends: Vec<BackendSpec>,
    /// How a new session picks its backend.
    pub balance: BalancePolicy,
    /// Under `balance: user`: users routed to given backends, checked before the hash.
    pub routes: Vec<UserRoute>,
    /// Under `balance: user`: the text of ftpgate's own `220` greeting.
    pub greeting: String,
    /// How often backend names are resolved again; 0 disables re-resolution.
    pub backend_resolve_interval: Duration,
    /// Backend health checks.
    pub health: HealthConfig,
    /// PROXY protocol from load balancers in front of ftpgate.
    pub proxy_protocol: ProxyProtocolConfig,
    /// PROXY protocol header ftpgate sends on backend control connections; unset: none.
    pub backend_proxy_protocol: Option<ProxyVersion>,
    /// Also send the header on data connections ftpgate opens to backends.
    pub backend_proxy_protocol_data: bool,
    /// Addresses announced to clients in rewritten passive replies: at most one IPv4
    /// (named in `227`) and one IPv6. Without one, the local address of the client's
    /// control connection is announced.
    pub public_address: Vec<IpAddr>,
    /// Ports ftpgate listens on for passive data connections.
    pub data_ports: PortRange,
    /// Passive (PASV/EPSV) relaying.
    pub passive: PassiveConfig,
    /// The client control connection.
    pub control: ControlConfig,
    /// How data connections are opened towards the backend.
    pub backend_data_mode: BackendDataMode,
    /// Active (PORT/EPRT) relaying.
    pub active: ActiveConfig,
    /// NOOP and TCP keepalive on control connections.
    pub keepalive: KeepaliveConfig,
    /// Login, idle, connect and reply timeouts.
    pub timeouts: Timeouts,
    /// Caps on what clients may hold.
    pub limits: LimitsConfig,
    /// After `SIGTERM`/`SIGINT`, how long sessions may finish before they are closed.
    pub drain_timeout: Duration,
    /// The admin HTTP endpoint (metrics, health).
    pub admin: AdminConfig,
    /// Data relay implementation (process-wide).
    pub relay: RelayMode,
    /// Async worker threads; unset: one per core.
    pub worker_threads: Option<usize>,
    /// Log format and level.
    pub log: LogConfig,
    /// FTPS towards clients and backends.
    pub tls: TlsConfig,
    /// Scale-out: this replica's data-port slice and its peers.
    pub cluster: crate::cluster::ClusterConfig,
}

/// ftpgate's own `220` text under `balance: user` (the backend's banner is swallowed).
pub const DEFAULT_GREETING: &str = "ftpgate ready";

/// Re-resolution of backend names: about a cluster DNS record's TTL.
pub const DEFAULT_RESOLVE_INTERVAL: Duration = Duration::from_secs(30);

const DEFAULT_DATA_PORTS: PortRange = PortRange {
    lo: 50000,
    hi: 50999,
};

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: Vec::new(),
            mode: ListenerMode::Reverse,
            listeners: Vec::new(),
            transparent: TransparentConfig::default(),
            backends: Vec::new(),
            balance: BalancePolicy::RoundRobin,
            routes: Vec::new(),
            greeting: DEFAULT_GREETING.to_owned(),
            backend_resolve_interval: DEFAULT_RESOLVE_INTERVAL,
            health: HealthConfig::default(),
            proxy_protocol: ProxyProtocolConfig::default(),
            backend_proxy_protocol: None,
            backend_proxy_protocol_data: false,
            public_address: Vec::new(),
            data_ports: DEFAULT_DATA_PORTS,
            passive: PassiveConfig::default(),
            control: ControlConfig::default(),
            backend_data_mode: BackendDataMode::Same,
            active: ActiveConfig::default(),
            keepalive: KeepaliveConfig::default(),
            timeouts: Timeouts::default(),
            limits: LimitsConfig::default(),
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            admin: AdminConfig::default(),
            relay: RelayMode::Auto,
            worker_threads: None,
            log: LogConfig::default(),
            tls: TlsConfig::default(),
            cluster: crate::cluster::ClusterConfig::default(),
        }
    }
}

/// The file as written: sections whose keys have deprecated top-level aliases keep
/// every value optional, so [`RawConfig::normalise`] can tell "given" from "default".
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawConfig {
    listen: Vec<SocketAddr>,
    mode: ListenerMode,
    listeners: Vec<ListenerConfig>,
    transparent: TransparentConfig,
    backends: Vec<BackendSpec>,
    balance: BalancePolicy,
    routes: Vec<UserRoute>,
    greeting: Option<String>,
    #[serde(with = "humantime_serde")]
    backend_resolve_interval: Option<Duration>,
    health: HealthConfig,
    proxy_protocol: ProxyProtocolConfig,
    backend_proxy_protocol: Option<ProxyVersion>,
    backend_proxy_protocol_data: bool,
    public_address: Vec<IpAddr>,
    data_ports: Option<PortRange>,
    passive: RawPassive,
    control: RawControl,
    backend_data_mode: BackendDataMode,
    active: ActiveConfig,
    keepalive: KeepaliveConfig,
    timeouts: Timeouts,
    limits: LimitsConfig,
    #[serde(with = "humantime_serde")]
    drain_timeout: Option<Duration>,
    admin: RawAdmin,
    relay: RelayMode,
    worker_threads: Option<usize>,
    log: LogConfig,
    tls: TlsConfig,
    cluster: crate::cluster::ClusterConfig,
    // Deprecated top-level spellings (DEPRECATED_KEYS).
    rewrite_passive: Option<bool>,
    passive_target: Option<PassiveTarget>,
    max_line_length: Option<usize>,
    max_pipelined_commands: Option<usize>,
    metrics: Option<SocketAddr>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawPassive {
    rewrite: Option<bool>,
    target: Option<PassiveTarget>,
    allow_targets: Vec<IpNet>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawControl {
    max_line_length: Option<usize>,
    max_pipelined_commands: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawAdmin {
    listen: Option<SocketAddr>,
}

/// Resolves one key that has a deprecated alias: the new key, else the old one (noted),
/// else `default`; both given is an error.
fn aliased<T>(
    new: (&'static str, Option<T>),
    old: (&'static str, Option<T>),
    default: T,
    deprecations: &mut Vec<Deprecation>,
    errors: &mut Vec<ConfigError>,
) -> T {
    match (new.1, old.1) {
        (Some(_), Some(_)) => {
            errors.push(ConfigError::Conflict {
                old: old.0,
                new: new.0,
            });
            default
        }
        (Some(v), None) => v,
        (None, Some(v)) => {
            deprecations.push(Deprecation {
                old: old.0,
                new: new.0,
            });
            v
        }
        (None, None) => default,
    }
}

impl RawConfig {
    fn normalise(self) -> Result<Loaded, ConfigErrors> {
        let mut deprecations = Vec::new();
        let mut errors = Vec::new();
        let d = Config::default();
        let passive = PassiveConfig {
            rewrite: aliased(
                ("passive.rewrite", self.passive.rewrite),
                ("rewrite_passive", self.rewrite_passive),
                d.passive.rewrite,
                &mut deprecations,
                &mut errors,
            ),
            target: aliased(
                ("passive.target", self.passive.target),
                ("passive_target", self.passive_target),
                d.passive.target,
                &mut deprecations,
                &mut errors,
            ),
            allow_targets: self.passive.allow_targets,
        };
        let control = ControlConfig {
            max_line_length: aliased(
                ("control.max_line_length", self.control.max_line_length),
                ("max_line_length", self.max_line_length),
                d.control.max_line_length,
                &mut deprecations,
                &mut errors,
            ),
            max_pipelined_commands: aliased(
                (
                    "control.max_pipelined_commands",
                    self.control.max_pipelined_commands,
                ),
                ("max_pipelined_commands", self.max_pipelined_commands),
                d.control.max_pipelined_commands,
                &mut deprecations,
                &mut errors,
            ),
        };
        let admin = AdminConfig {
            listen: aliased(
                ("admin.listen", self.admin.listen.map(Some)),
                ("metrics", self.metrics.map(Some)),
                None,
                &mut deprecations,
                &mut errors,
            ),
        };
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        let config = Config {
            listen: self.listen,
            mode: self.mode,
            listeners: self.listeners,
            transparent: self.transparent,
            backends: self.backends,
            balance: self.balance,
            routes: self.routes,
            greeting: self.greeting.unwrap_or_else(|| DEFAULT_GREETING.to_owned()),
            backend_resolve_interval: self
                .backend_resolve_interval
                .unwrap_or(DEFAULT_RESOLVE_INTERVAL),
            health: self.health,
            proxy_protocol: self.proxy_protocol,
            backend_proxy_protocol: self.backend_proxy_protocol,
            backend_proxy_protocol_data: self.backend_proxy_protocol_data,
            public_address: self.public_address,
            data_ports: self.data_ports.unwrap_or(DEFAULT_DATA_PORTS),
            passive,
            control,
            backend_data_mode: self.backend_data_mode,
            active: self.active,
            keepalive: self.keepalive,
            timeouts: self.timeouts,
            limits: self.limits,
            drain_timeout: self.drain_timeout.unwrap_or(DEFAULT_DRAIN_TIMEOUT),
            admin,
            relay: self.relay,
            worker_threads: self.worker_threads,
            log: self.log,
            tls: self.tls,
            cluster: self.cluster,
        };
        Ok(Loaded {
            config,
            deprecations,
        })
    }
}

/// A parsed (not yet validated) configuration and the deprecated spellings it used.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    /// The configuration as parsed.
    pub config: Config,
    /// One entry per deprecated key (or environment variable) used, to log as a
    /// warning once logging is set up.
    pub deprecations: Vec<Deprecation>,
}

/// A configuration that passed [`Config::validate`]; what [`crate::app::Gateway::bind`]
/// takes, so an unchecked config cannot start a gateway.
#[derive(Debug, Clone)]
pub struct ValidConfig(Config);

impl ValidConfig {
    /// The validated configuration.
    pub fn into_inner(self) -> Config {
        self.0
    }
}

impl std::ops::Deref for ValidConfig {
    type Target = Config;
    fn deref(&self) -> &Config {
        &self.0
    }
}

/// Collects validation errors, each naming its key.
#[derive(Default)]
struct Problems(Vec<ConfigError>);

impl Problems {
    fn add(&mut self, key: &'static str, reason: impl Into<String>) {
        self.0.push(ConfigError::invalid(key, reason));
    }

    /// A closure other modules validate their own sections with.
    fn sink(&mut self, section: &'static str) -> impl FnMut(&str, String) + '_ {
        move |key: &str, reason: String| {
            self.add(section, format!("{key}: {reason}"));
        }
    }
}

impl Config {
    /// Reads and parses a YAML file (not yet validated).
    pub fn from_file(path: &Path) -> Result<Loaded, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Config::from_yaml(&text)
    }

    /// Parses YAML (not yet validated). A syntax or type error stops parsing, so it
    /// comes alone; alias conflicts are all reported together.
    pub fn from_yaml(text: &str) -> Result<Loaded, ConfigErrors> {
        // An empty file is a valid (all-defaults) document, not a parse error.
        if text.trim().is_empty() {
            return Ok(Loaded::default());
        }
        // serde_path_to_error names the key even for top-level values, which the YAML
        // deserializer's own messages leave out.
        let de = serde_yaml::Deserializer::from_str(text);
        let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner().to_string();
            // The YAML error may carry a prefix of the path itself; say it once.
            let reason = match inner.split_once(": ") {
                Some((head, rest)) if path.starts_with(head) => rest.to_string(),
                _ => inner,
            };
            if path == "." {
                ConfigError::Parse(reason)
            } else {
                ConfigError::Parse(format!("{path}: {reason}"))
            }
        })?;
        raw.normalise()
    }

    /// Checks what types alone cannot and returns the config as [`ValidConfig`], or
    /// every problem found (not just the first), each naming its key.
    pub fn validate(self) -> Result<ValidConfig, ConfigErrors> {
        let problems = self.problems();
        if problems.is_empty() {
            Ok(ValidConfig(self))
        } else {
            Err(ConfigErrors(problems))
        }
    }

    /// Every validation problem, in key order; empty when valid.
    pub fn problems(&self) -> Vec<ConfigError> {
        let mut p = Problems::default();
        self.check_listeners(&mut p);
        self.check_addresses(&mut p);
        self.check_ports(&mut p);
        self.check_passive(&mut p);
        if self.control.max_line_length < 512 {
            // RFC 959 §4.1.3 commands fit in far less, but paths do not.
            p.add("control.max_line_length", "must be at least 512 bytes");
        }
        if self.control.max_pipelined_commands == 0 {
            p.add("control.max_pipelined_commands", "must be at least 1");
        }
        for (key, d) in [
            ("timeouts.data_connect", self.timeouts.data_connect),
            ("timeouts.backend_connect", self.timeouts.backend_connect),
            ("timeouts.login", self.timeouts.login),
        ] {
            if d.is_zero() {
                p.add(key, "must be longer than 0s");
            }
        }
        if self.worker_threads == Some(0) {
            p.add("worker_threads", "must be at least 1");
        }
        if self.limits.data_ports_per_session == 0 {
            p.add("limits.data_ports_per_session", "must be at least 1");
        }
        self.check_tls(&mut p);
        self.cluster.check(self.data_ports, p.sink("cluster"));
        p.0
    }

    fn check_tls(&self, p: &mut Problems) {
        let t = &self.tls;
        if t.cert.is_some() != t.key.is_some() {
            p.add("tls.cert", "tls.cert and tls.key go together");
        }
        if t.client.is_some_and(|c| c != ClientTlsPolicy::Off) && t.cert.is_none() {
            p.add("tls.client", "needs tls.cert and tls.key");
        }
        let implicit = self
            .listeners
            .iter()
            .any(|l| l.tls == ListenerTls::Implicit);
        if implicit && t.cert.is_none() {
            p.add("listeners", "tls: implicit needs tls.cert and tls.key");
        }
        if t.client_data == ClientDataPolicy::Required
            && self.tls.client_policy() == ClientTlsPolicy::Off
        {
            p.add("tls.client_data", "required needs TLS towards clients");
        }
    }

    fn check_listeners(&self, p: &mut Problems) {
        let listeners = self.all_listeners();
        if listeners.is_empty() {
            p.add(
                "listen",
                "at least one listen address (listen or listeners) is required",
            );
        }
        let mut seen = std::collections::HashSet::new();
        for l in &listeners {
            if !seen.insert(l.listen) {
                p.add("listeners", format!("{} is listed twice", l.listen));
            }
        }
        for l in listeners
            .iter()
            .filter(|l| l.tproxy && l.mode != ListenerMode::Transparent)
        {
            p.add(
                "listeners",
                format!("{}: tproxy needs mode transparent", l.listen),
            );
        }
        if self.transparent.map_passive && listeners.iter().any(|l| l.tproxy) {
            // A TPROXY session's local address is the server's; there is no gateway
            // address of ours to announce to the client.
            p.add(
                "transparent.map_passive",
                "not supported with tproxy listeners (use REDIRECT)",
            );
        }
        let any_reverse = listeners.iter().any(|l| l.mode == ListenerMode::Reverse);
        if any_reverse && self.backends.is_empty() {
            p.add(
                "backends",
                "at least one backend is required for a reverse listener",
            );
        }
        for b in self.backends.iter().filter(|b| b.port() == 0) {
            p.add("backends", format!("{b}: port 0 is not a backend port"));
        }
        self.check_farm(p);
    }

    fn check_farm(&self, p: &mut Problems) {
        let written: Vec<String> = self.backends.iter().map(ToString::to_string).collect();
        for (i, r) in self.routes.iter().enumerate() {
            if r.user.is_none() && r.user_suffix.as_deref().is_none_or(str::is_empty) {
                p.add("routes", format!("routes[{i}]: needs user or user_suffix"));
            }
            if r.backends.is_empty() {
                p.add("routes", format!("routes[{i}]: needs at least one backend"));
            }
            for b in &r.backends {
                let known = b
                    .parse::<crate::farm::BackendHost>()
                    .is_ok_and(|h| written.contains(&h.to_string()));
                if !known {
                    p.add("routes", format!("routes[{i}]: {b} is not one of backends"));
                }
            }
        }
        if !self.routes.is_empty() && self.balance != BalancePolicy::User {
            p.add("routes", "only used with balance: user");
        }
        if self.greeting.contains(['\r', '\n']) {
            p.add("greeting", "must be one line");
        }
        self.health.check(p.sink("health"));
        if self.backend_proxy_protocol_data && self.backend_proxy_protocol.is_none() {
            p.add(
                "backend_proxy_protocol_data",
                "needs backend_proxy_protocol (v1 or v2)",
            );
        }
        if self.proxy_protocol.timeout.is_zero() {
            p.add("proxy_protocol.timeout", "must be above 0");
        }
    }

    fn check_addresses(&self, p: &mut Problems) {
        let v4 = self.public_address.iter().filter(|a| a.is_ipv4()).count();
        let v6 = self.public_address.len() - v4;
        if v4 > 1 || v6 > 1 {
            p.add("public_address", "at most one IPv4 and one IPv6 address");
        }
        for a in self.public_address.iter().filter(|a| a.is_unspecified()) {
            p.add(
                "public_address",
                format!("{a} is not an address a client can connect to"),
            );
        }
    }

    /// Data-port ranges must not hold a port something else listens on: the pool would
    /// hand it out and fail to bind it (or, with SO_REUSEADDR on a wildcard address,
    /// steal connections meant for it).
    fn check_ports(&self, p: &mut Problems) {
        let mut fixed: Vec<(String, SocketAddr)> = self
            .listen
            .iter()
            .map(|&a| ("listen".to_string(), a))
            .chain(
                self.listeners
                    .iter()
                    .enumerate()
                    .map(|(i, l)| (format!("listeners[{i}].listen"), l.listen)),
            )
            .collect();
        if let Some(a) = self.admin.listen {
            fixed.push(("admin.listen".into(), a));
        }
        let mut ranges = vec![("data_ports", self.data_ports)];
        if let Some(r) = self.active.ports {
            ranges.push(("active.ports", r));
        }
        for &(key, range) in &ranges {
            for (what, addr) in fixed.iter().filter(|(_, a)| range.contains(a.port())) {
                p.add(
                    key,
                    format!(
                        "range {range} contains {what} port {} ({addr})",
                        addr.port()
                    ),
                );
            }
        }
        if let Some(active) = self.active.ports {
            // A set active.ports is a pool of its own (even when equal to data_ports): a
            // port in both ranges could be leased twice at once.
            if active.overlaps(&self.data_ports) {
                p.add(
                    "active.ports",
                    format!(
                        "range {active} overlaps data_ports {}; make them disjoint, or omit \
                         active.ports to share data_ports",
                        self.data_ports
                    ),
                );
            }
        }
    }

    fn check_passive(&self, p: &mut Problems) {
        let mut seen = std::collections::HashSet::new();
        for net in &self.passive.allow_targets {
            if net.trunc() != *net {
                // 10.0.0.5/8 is most likely a typo for a host (/32) or for 10.0.0.0/8;
                // guessing either would widen or narrow what a backend may name.
                p.add(
                    "passive.allow_targets",
                    format!("{net} has host bits set (network is {})", net.trunc()),
                );
            }
            if !seen.insert(*net) {
                p.add("passive.allow_targets", format!("{net} is listed twice"));
            }
        }
        if self.passive.target == PassiveTarget::Control && !self.passive.allow_targets.is_empty() {
            p.add(
                "passive.allow_targets",
                "has no effect with passive.target: control (ftpgate never connects to the \
                 address a 227 names)",
            );
        }
    }

    /// Every listener: the `listen` shorthand (in `mode`) followed by `listeners`.
    pub fn all_listeners(&self) -> Vec<ListenerConfig> {
        self.listen
            .iter()
            .map(|&listen| ListenerConfig {
                listen,
                mode: self.mode,
                tproxy: false,
                tls: ListenerTls::Explicit,
            })
            .chain(self.listeners.iter().cloned())
            .collect()
    }

    /// The public IPv4 address to name in `227`, if configured.
    pub fn public_v4(&self) -> Option<std::net::Ipv4Addr> {
        self.public_address.iter().find_map(|a| match a {
            IpAddr::V4(v4) => Some(*v4),
            IpAddr::V6(_) => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "listen: ['127.0.0.1:2121']\nbackends: ['10.0.0.2:21']\n";

    fn load(extra: &str) -> Loaded {
        Config::from_yaml(&format!("{BASE}{extra}")).expect("parses")
    }

    /// Every error's text, one per element.
    fn errors_of(r: Result<impl fmt::Debug, ConfigErrors>) -> Vec<String> {
        r.unwrap_err().iter().map(ToString::to_string).collect()
    }

    fn first_error(cfg: &Config) -> String {
        cfg.problems()
            .first()
            .map(ToString::to_string)
            .unwrap_or_default()
    }

    #[test]
    fn farm_settings_that_cannot_work_name_their_key() {
        let table = [
            (
                "balance: user\nroutes: [{user: alice, backends: ['10.0.0.9:21']}]\n",
                "routes: routes[0]: 10.0.0.9:21 is not one of backends",
            ),
            (
                "routes: [{user: alice, backends: ['10.0.0.2:21']}]\n",
                "routes: only used with balance: user",
            ),
            (
                "balance: user\nroutes: [{backends: ['10.0.0.2:21']}]\n",
                "routes: routes[0]: needs user or user_suffix",
            ),
            (
                "backend_proxy_protocol_data: true\n",
                "backend_proxy_protocol_data: needs backend_proxy_protocol (v1 or v2)",
            ),
            (
                "health: {check: login}\n",
                "health: user: required by check: login",
            ),
            (
                "health: {rise: 0}\n",
                "health: rise/fall: must be at least 1",
            ),
        ];
        for (yaml, want) in table {
            let cfg = Config::from_yaml(&format!(
                "listen: ['127.0.0.1:2121']\nbackends: ['10.0.0.2:21']\n{yaml}"
            ))
            .unwrap()
            .config;
            assert_eq!(first_error(&cfg), want, "{yaml}");
        }
        // Names, weights, drain and a route by the name as written are all fine.
        let ok = Config::from_yaml(
            "listen: ['127.0.0.1:2121']\nbackends: ['ftp-0.ftp.svc:21', {address: '10.0.0.3:21', weight: 3, drain: true}]\n\
             balance: user\nroutes: [{user_suffix: '@acme', backends: ['FTP-0.ftp.svc:21']}]\n",
        )
        .unwrap()
        .config;
        assert!(ok.problems().is_empty(), "{:?}", ok.problems());
    }

    #[test]
    fn example_config_in_repo_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/ftpgate.yaml");
        let loaded = Config::from_file(&path).expect("example parses");
        assert_eq!(loaded.deprecations, [], "example uses deprecated keys");
        loaded.config.validate().expect("example validates");
    }

    #[test]
    fn unknown_key_is_named() {
        let err = Config::from_yaml("listen: ['127.0.0.1:21']\nbackend: ['10.0.0.2:21']\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("backend"), "{err}");
        let err = Config::from_yaml("passive:\n  target: reply\n  rewrite_passive: true\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("passive.rewrite_passive"), "{err}");
    }

    #[test]
    fn bad_port_range_names_key() {
        let err = Config::from_yaml("data_ports: 6000-5000\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("data_ports"), "{err}");
    }

    #[test]
    fn durations_parse_humanly() {
        let cfg = load("timeouts:\n  data_connect: 2m\n  backend_connect: 250ms\n").config;
        assert_eq!(cfg.timeouts.data_connect, Duration::from_secs(120));
        assert_eq!(cfg.timeouts.backend_connect, Duration::from_millis(250));
    }

    #[test]
    fn new_keys_have_their_defaults() {
        let loaded = load("");
        assert!(loaded.deprecations.is_empty());
        let cfg = loaded.config;
        assert!(cfg.passive.rewrite);
        assert_eq!(cfg.passive.target, PassiveTarget::Reply);
        assert!(cfg.passive.allow_targets.is_empty());
        assert_eq!(cfg.control.max_line_length, DEFAULT_MAX_LINE);
        assert_eq!(cfg.control.max_pipelined_commands, 64);
        assert_eq!(cfg.admin.listen, None);
        assert_eq!(cfg.timeouts.backend_reply, Duration::from_secs(300));
        assert_eq!(cfg.limits.max_prelogin_sessions, 1000);
        assert_eq!(cfg.relay, RelayMode::Auto);
        assert_eq!(cfg.data_ports, DEFAULT_DATA_PORTS);
        cfg.validate().unwrap();
    }

    #[test]
    fn new_keys_parse() {
        let cfg = load(
            "passive:\n  rewrite: false\n  target: control\n\
             control:\n  max_line_length: 1024\n  max_pipelined_commands: 8\n\
             admin:\n  listen: '127.0.0.1:9464'\n\
             timeouts:\n  backend_reply: 0s\n\
             limits:\n  max_prelogin_sessions: 0\n\
             relay: copy\n",
        )
        .config;
        assert!(!cfg.passive.rewrite);
        assert_eq!(cfg.passive.target, PassiveTarget::Control);
        assert_eq!(cfg.control.max_line_length, 1024);
        assert_eq!(cfg.control.max_pipelined_commands, 8);
        assert_eq!(cfg.admin.listen, Some("127.0.0.1:9464".parse().unwrap()));
        assert_eq!(cfg.timeouts.backend_reply, Duration::ZERO);
        assert_eq!(cfg.limits.max_prelogin_sessions, 0);
        assert_eq!(cfg.relay, RelayMode::Copy);
        let cfg = load("passive:\n  allow_targets: ['192.0.2.0/24', '2001:db8::/32']\n").config;
        assert_eq!(cfg.passive.allow_targets.len(), 2);
        cfg.validate().unwrap();
    }

    #[test]
    fn each_deprecated_key_still_works_and_is_noted() {
        for (old, new, yaml) in [
            (
                "rewrite_passive",
                "passive.rewrite",
                "rewrite_passive: false\n",
            ),
            (
                "passive_target",
                "passive.target",
                "passive_target: control\n",
            ),
            (
                "max_line_length",
                "control.max_line_length",
                "max_line_length: 1024\n",
            ),
            (
                "max_pipelined_commands",
                "control.max_pipelined_commands",
                "max_pipelined_commands: 8\n",
            ),
            ("metrics", "admin.listen", "metrics: '127.0.0.1:9464'\n"),
        ] {
            let loaded = load(yaml);
            assert_eq!(loaded.deprecations, [Deprecation { old, new }], "{yaml}");
            assert!(DEPRECATED_KEYS.contains(&(old, new)), "{old} not in table");
            let warning = loaded.deprecations[0].to_string();
            assert!(warning.contains(old) && warning.contains(new), "{warning}");
            let c = loaded.config;
            // The old key's value lands at the new path.
            match old {
                "rewrite_passive" => assert!(!c.passive.rewrite),
                "passive_target" => assert_eq!(c.passive.target, PassiveTarget::Control),
                "max_line_length" => assert_eq!(c.control.max_line_length, 1024),
                "max_pipelined_commands" => assert_eq!(c.control.max_pipelined_commands, 8),
                _ => assert_eq!(c.admin.listen, Some("127.0.0.1:9464".parse().unwrap())),
            }
        }
        assert_eq!(DEPRECATED_KEYS.len(), 5);
    }

    #[test]
    fn deprecated_and_new_key_together_is_an_error_naming_both() {
        for (yaml, old, new) in [
            (
                "rewrite_passive: false\npassive:\n  rewrite: true\n",
                "rewrite_passive",
                "passive.rewrite",
            ),
            (
                "passive_target: reply\npassive:\n  target: reply\n",
                "passive_target",
                "passive.target",
            ),
            (
                "max_line_length: 1024\ncontrol:\n  max_line_length: 1024\n",
                "max_line_length",
                "control.max_line_length",
            ),
            (
                "max_pipelined_commands: 8\ncontrol:\n  max_pipelined_commands: 8\n",
                "max_pipelined_commands",
                "control.max_pipelined_commands",
            ),
            (
                "metrics: '127.0.0.1:1'\nadmin:\n  listen: '127.0.0.1:2'\n",
                "metrics",
                "admin.listen",
            ),
        ] {
            let errs = errors_of(Config::from_yaml(&format!("{BASE}{yaml}")));
            assert_eq!(errs.len(), 1, "{yaml}: {errs:?}");
            assert!(errs[0].starts_with(&format!("{old}:")), "{}", errs[0]);
            assert!(errs[0].contains(new), "{}", errs[0]);
        }
        // Two conflicts in one file: both reported.
        let errs = errors_of(Config::from_yaml(&format!(
            "{BASE}metrics: '127.0.0.1:1'\nadmin:\n  listen: '127.0.0.1:2'\n\
             rewrite_passive: true\npassive:\n  rewrite: true\n"
        )));
        assert_eq!(errs.len(), 2, "{errs:?}");
    }

    #[test]
    fn validation_reports_every_error_at_once() {
        let cfg = load(
            "public_address: ['0.0.0.0']\n\
             control:\n  max_line_length: 100\n\
             timeouts:\n  login: 0s\n",
        )
        .config;
        let errs = errors_of(cfg.validate());
        assert_eq!(errs.len(), 3, "{errs:?}");
        assert!(errs[0].starts_with("public_address:"), "{errs:?}");
        assert!(errs[1].starts_with("control.max_line_length:"), "{errs:?}");
        assert!(errs[2].starts_with("timeouts.login:"), "{errs:?}");
        // Display: one error per line, for `ftpgate check`.
        let cfg = load("public_address: ['0.0.0.0']\nworker_threads: 0\n").config;
        let text = cfg.validate().unwrap_err().to_string();
        assert_eq!(text.lines().count(), 2, "{text}");
    }

    #[test]
    fn validation_names_the_key() {
        let mut cfg = Config {
            listen: vec!["127.0.0.1:2121".parse().unwrap()],
            backends: vec!["127.0.0.1:21".parse().unwrap()],
            ..Config::default()
        };
        assert!(cfg.problems().is_empty());
        cfg.data_ports = "2000-3000".parse().unwrap();
        assert!(first_error(&cfg).starts_with("data_ports:"));
        cfg.data_ports = "50000-50001".parse().unwrap();
        cfg.public_address = vec!["0.0.0.0".parse().unwrap()];
        assert!(first_error(&cfg).starts_with("public_address:"));
        cfg.public_address.clear();
        cfg.backends.clear();
        assert!(first_error(&cfg).starts_with("backends:"));
        cfg.backends = vec!["127.0.0.1:21".parse().unwrap()];
        cfg.control.max_pipelined_commands = 0;
        assert!(first_error(&cfg).starts_with("control.max_pipelined_commands:"));
    }

    #[test]
    fn data_ports_must_not_hold_any_listener_port() {
        // A `listeners[]` entry, not only `listen`, inside the range.
        let cfg = load(
            "data_ports: 2200-3000\nlisteners:\n  - listen: '10.0.0.1:2500'\n    mode: transparent\n",
        )
        .config;
        let errs = errors_of(cfg.validate());
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0].starts_with("data_ports:") && errs[0].contains("listeners[0].listen port 2500"),
            "{errs:?}"
        );
        // The admin listener too.
        let cfg = load("data_ports: 9000-9999\nadmin:\n  listen: '127.0.0.1:9464'\n").config;
        let errs = errors_of(cfg.validate());
        assert!(errs[0].starts_with("data_ports:") && errs[0].contains("admin.listen"));
        // And active.ports against listeners.
        let cfg = load("active:\n  ports: 2100-2200\n").config;
        let errs = errors_of(cfg.validate());
        assert!(errs[0].starts_with("active.ports:") && errs[0].contains("2121"));
        // Port 0 (pick one) is never inside a range.
        load("listeners:\n  - listen: '127.0.0.1:0'\n")
            .config
            .validate()
            .unwrap();
    }

    #[test]
    fn separate_active_ports_must_not_overlap_data_ports() {
        let cfg = load("data_ports: 50000-50999\nactive:\n  ports: 50900-51100\n").config;
        let errs = errors_of(cfg.validate());
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(errs[0].starts_with("active.ports:"), "{errs:?}");
        assert!(errs[0].contains("50000-50999"), "{errs:?}");
        // Equal is overlap too: a set active.ports is a second pool over the same ports.
        let cfg = load("data_ports: 50000-50999\nactive:\n  ports: 50000-50999\n").config;
        assert!(first_error(&cfg).starts_with("active.ports:"));
        // Touching but disjoint is fine.
        load("data_ports: 50000-50999\nactive:\n  ports: 51000-51100\n")
            .config
            .validate()
            .unwrap();
    }

    #[test]
    fn passive_allow_targets_are_checked() {
        let cfg =
            load("passive:\n  allow_targets: ['10.0.0.5/8', '192.0.2.0/24', '192.0.2.0/24']\n")
                .config;
        let errs = errors_of(cfg.validate());
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(errs[0].starts_with("passive.allow_targets:") && errs[0].contains("10.0.0.0/8"));
        assert!(errs[1].contains("twice"), "{errs:?}");
        let cfg = load("passive:\n  target: control\n  allow_targets: ['192.0.2.0/24']\n").config;
        let errs = errors_of(cfg.validate());
        assert!(errs[0].starts_with("passive.allow_targets:") && errs[0].contains("control"));
        let err = Config::from_yaml("passive:\n  allow_targets: ['not-a-net']\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("passive.allow_targets"), "{err}");
    }

    #[test]
    fn bad_values_of_new_keys_name_the_key() {
        for (yaml, key) in [
            ("relay: splice\n", "relay"),
            (
                "limits:\n  max_prelogin_sessions: -1\n",
                "limits.max_prelogin_sessions",
            ),
            (
                "timeouts:\n  backend_reply: soon\n",
                "timeouts.backend_reply",
            ),
            ("admin:\n  listen: nowhere\n", "admin.listen"),
            ("admin:\n  metrics: '127.0.0.1:1'\n", "admin"),
        ] {
            let err = Config::from_yaml(yaml).unwrap_err().to_string();
            assert!(err.contains(key), "{yaml}: {err}");
        }
    }

    #[test]
    fn keepalive_params_come_from_the_config_type() {
        let k = KeepaliveConfig::default();
        assert_eq!(k.tcp_params(), Some(TcpKeepaliveConfig::default()));
        let off = load("keepalive:\n  tcp:\n    idle: 0s\n").config;
        assert_eq!(off.keepalive.tcp_params(), None);
    }

    #[test]
    fn transparent_listeners_need_no_backends_but_reverse_ones_do() {
        let cfg = Config::from_yaml(
            "listeners:\n  - listen: '10.0.0.1:2121'\n    mode: transparent\n    tproxy: true\n",
        )
        .unwrap()
        .config;
        cfg.validate().unwrap();
        let cfg = Config::from_yaml(
            "listen: ['0.0.0.0:21']\nlisteners:\n  - listen: '10.0.0.1:2121'\n    mode: transparent\n",
        )
        .unwrap()
        .config;
        assert!(first_error(&cfg).starts_with("backends:"));
        let cfg = Config::from_yaml(
            "listeners:\n  - listen: '10.0.0.1:2121'\n    tproxy: true\nbackends: ['10.0.0.2:21']\n",
        )
        .unwrap()
        .config;
        assert!(first_error(&cfg).starts_with("listeners:"));
    }

    #[test]
    fn zero_worker_threads_is_rejected() {
        let cfg = load("worker_threads: 0\n").config;
        assert!(first_error(&cfg).starts_with("worker_threads:"));
    }

    #[test]
    fn port_range_edges() {
        assert_eq!("1-1".parse::<PortRange>().unwrap().len(), 1);
        assert_eq!("1-65535".parse::<PortRange>().unwrap().len(), 65535);
        assert!("0-10".parse::<PortRange>().is_err());
        assert!("10".parse::<PortRange>().is_err());
        assert!("10-70000".parse::<PortRange>().is_err());
        let r: PortRange = "100-200".parse().unwrap();
        assert!(r.contains(100) && r.contains(200) && !r.contains(99) && !r.contains(201));
        let o = |s: &str| r.overlaps(&s.parse().unwrap());
        assert!(o("200-300") && o("50-100") && o("120-130") && o("1-1000"));
        assert!(!o("201-300") && !o("1-99"));
    }
}
