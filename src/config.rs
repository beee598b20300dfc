//! Configuration: YAML file, overridden by CLI flags, validated before anything binds.
//!
//! Every key has a default except `listen` and `backends`; `validate` names the
//! offending key so an operator can fix a file without reading code.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::protocol::line::DEFAULT_MAX_LINE;

/// An error in the configuration, naming the key it concerns.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Parse(String),
    #[error("{key}: {reason}")]
    Invalid { key: &'static str, reason: String },
}

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
    pub lo: u16,
    pub hi: u16,
}

impl PortRange {
    pub fn len(&self) -> usize {
        usize::from(self.hi) - usize::from(self.lo) + 1
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    pub fn contains(&self, port: u16) -> bool {
        (self.lo..=self.hi).contains(&port)
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("`{other}` is not a log format (text or json)")),
        }
    }
}

/// How ftpgate opens data connections towards the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
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

impl FromStr for BackendDataMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "same" => Ok(BackendDataMode::Same),
            "passive" => Ok(BackendDataMode::Passive),
            "active" => Ok(BackendDataMode::Active),
            other => Err(format!(
                "`{other}` is not a data mode (same, passive or active)"
            )),
        }
    }
}

/// What a listener does with the connections it accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ListenerMode {
    /// In front of FTP servers: sessions go to `backends`.
    #[default]
    Reverse,
    /// On a gateway: connections redirected by iptables/nftables (REDIRECT or TPROXY)
    /// go to their original destination.
    Transparent,
}

impl FromStr for ListenerMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "reverse" => Ok(ListenerMode::Reverse),
            "transparent" => Ok(ListenerMode::Transparent),
            other => Err(format!("`{other}` is not a mode (reverse or transparent)")),
        }
    }
}

/// One listener, for configurations that mix modes.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    pub listen: SocketAddr,
    #[serde(default)]
    pub mode: ListenerMode,
    /// Accept TPROXY-diverted connections (sets IP_TRANSPARENT; needs CAP_NET_ADMIN).
    #[serde(default)]
    pub tproxy: bool,
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

/// Active mode (PORT/EPRT) relaying.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ActiveConfig {
    /// Networks a client may name in PORT/EPRT besides its own address. Empty: only its
    /// own (FTP bounce protection).
    pub allow_foreign: Vec<ipnet::IpNet>,
    /// Source port for data connections ftpgate opens to clients (20 for client
    /// firewalls that insist on it; needs CAP_NET_BIND_SERVICE). 0: any port.
    pub source_port: u16,
    /// Ports ftpgate listens on for backends' active data connections. Unset: the
    /// `data_ports` range is shared.
    pub ports: Option<PortRange>,
}

/// TCP keepalive on control connections (both sides).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TcpKeepaliveConfig {
    /// Idle time before the first probe; 0s disables TCP keepalive.
    #[serde(with = "humantime_serde")]
    pub idle: Duration,
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
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

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeepaliveConfig {
    /// NOOP on the idle backend control connection every this long while a transfer
    /// runs; 0s disables.
    #[serde(with = "humantime_serde")]
    pub noop_interval: Duration,
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
    pub fn tcp_params(&self) -> Option<crate::net::KeepaliveParams> {
        (!self.tcp.idle.is_zero()).then_some(crate::net::KeepaliveParams {
            idle: self.tcp.idle,
            interval: self.tcp.interval,
            count: self.tcp.count,
        })
    }
}

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
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            data_connect: Duration::from_secs(30),
            backend_connect: Duration::from_secs(5),
            login: Duration::from_secs(60),
            idle: Duration::from_secs(15 * 60),
            data_idle: Duration::from_secs(5 * 60),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
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

/// The whole configuration. Field names are the YAML keys.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Addresses accepting FTP clients, all in `mode`.
    pub listen: Vec<SocketAddr>,
    /// The mode of the `listen` addresses.
    pub mode: ListenerMode,
    /// Listeners with a mode each (one process can serve reverse and transparent
    /// listeners side by side); added to `listen`.
    pub listeners: Vec<ListenerConfig>,
    pub transparent: TransparentConfig,
    /// FTP servers, chosen round robin; on connect failure the next is tried.
    pub backends: Vec<SocketAddr>,
    /// Addresses announced to clients in rewritten passive replies: at most one IPv4
    /// (named in `227`) and one IPv6. Without one, the local address of the client's
    /// control connection is announced.
    pub public_address: Vec<IpAddr>,
    /// Ports ftpgate listens on for passive data connections.
    pub data_ports: PortRange,
    /// Rewrite `227`/`229` replies (turning this off is a diagnostic knob only).
    pub rewrite_passive: bool,
    pub passive_target: PassiveTarget,
    /// Longest control line accepted from a client, terminator included.
    pub max_line_length: usize,
    /// Commands a client may have outstanding before ftpgate stops reading from it.
    pub max_pipelined_commands: usize,
    /// How data connections are opened towards the backend.
    pub backend_data_mode: BackendDataMode,
    pub active: ActiveConfig,
    pub keepalive: KeepaliveConfig,
    pub timeouts: Timeouts,
    /// Admin listener for `/metrics`, `/healthz`, `/readyz`; unset: none.
    pub metrics: Option<SocketAddr>,
    /// Async worker threads; unset: one per core.
    pub worker_threads: Option<usize>,
    pub log: LogConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: Vec::new(),
            mode: ListenerMode::Reverse,
            listeners: Vec::new(),
            transparent: TransparentConfig::default(),
            backends: Vec::new(),
            public_address: Vec::new(),
            data_ports: PortRange {
                lo: 50000,
                hi: 50999,
            },
            rewrite_passive: true,
            passive_target: PassiveTarget::Reply,
            max_line_length: DEFAULT_MAX_LINE,
            max_pipelined_commands: 64,
            backend_data_mode: BackendDataMode::Same,
            active: ActiveConfig::default(),
            keepalive: KeepaliveConfig::default(),
            timeouts: Timeouts::default(),
            metrics: None,
            worker_threads: None,
            log: LogConfig::default(),
        }
    }
}

impl Config {
    /// Reads and parses a YAML file (not yet validated).
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Config::from_yaml(&text)
    }

    pub fn from_yaml(text: &str) -> Result<Config, ConfigError> {
        // An empty file is a valid (all-defaults) document, not a parse error.
        if text.trim().is_empty() {
            return Ok(Config::default());
        }
        // serde_path_to_error names the key even for top-level values, which the YAML
        // deserializer's own messages leave out.
        let de = serde_yaml::Deserializer::from_str(text);
        serde_path_to_error::deserialize(de).map_err(|e| {
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
        })
    }

    /// Checks what types alone cannot, naming the key at fault.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let listeners = self.all_listeners();
        if listeners.is_empty() {
            return Err(ConfigError::invalid(
                "listen",
                "at least one listen address (listen or listeners) is required",
            ));
        }
        let mut seen = std::collections::HashSet::new();
        if let Some(l) = listeners.iter().find(|l| !seen.insert(l.listen)) {
            return Err(ConfigError::invalid(
                "listeners",
                format!("{} is listed twice", l.listen),
            ));
        }
        if let Some(l) = listeners
            .iter()
            .find(|l| l.tproxy && l.mode != ListenerMode::Transparent)
        {
            return Err(ConfigError::invalid(
                "listeners",
                format!("{}: tproxy needs mode transparent", l.listen),
            ));
        }
        if self.transparent.map_passive && listeners.iter().any(|l| l.tproxy) {
            // A TPROXY session's local address is the server's; there is no gateway
            // address of ours to announce to the client.
            return Err(ConfigError::invalid(
                "transparent.map_passive",
                "not supported with tproxy listeners (use REDIRECT)",
            ));
        }
        let any_reverse = listeners.iter().any(|l| l.mode == ListenerMode::Reverse);
        if any_reverse && self.backends.is_empty() {
            return Err(ConfigError::invalid(
                "backends",
                "at least one backend is required for a reverse listener",
            ));
        }
        if let Some(b) = self.backends.iter().find(|b| b.port() == 0) {
            return Err(ConfigError::invalid(
                "backends",
                format!("{b}: port 0 is not a backend port"),
            ));
        }
        let v4 = self.public_address.iter().filter(|a| a.is_ipv4()).count();
        let v6 = self.public_address.len() - v4;
        if v4 > 1 || v6 > 1 {
            return Err(ConfigError::invalid(
                "public_address",
                "at most one IPv4 and one IPv6 address",
            ));
        }
        if let Some(a) = self.public_address.iter().find(|a| a.is_unspecified()) {
            return Err(ConfigError::invalid(
                "public_address",
                format!("{a} is not an address a client can connect to"),
            ));
        }
        if let Some(l) = self
            .listen
            .iter()
            .find(|l| self.data_ports.contains(l.port()))
        {
            return Err(ConfigError::invalid(
                "data_ports",
                format!(
                    "range {} contains listen port {}",
                    self.data_ports,
                    l.port()
                ),
            ));
        }
        if self.max_line_length < 512 {
            // RFC 959 §4.1.3 commands fit in far less, but paths do not.
            return Err(ConfigError::invalid(
                "max_line_length",
                "must be at least 512 bytes",
            ));
        }
        if self.worker_threads == Some(0) {
            return Err(ConfigError::invalid("worker_threads", "must be at least 1"));
        }
        if self.max_pipelined_commands == 0 {
            return Err(ConfigError::invalid(
                "max_pipelined_commands",
                "must be at least 1",
            ));
        }
        for (key, d) in [
            ("timeouts.data_connect", self.timeouts.data_connect),
            ("timeouts.backend_connect", self.timeouts.backend_connect),
            ("timeouts.login", self.timeouts.login),
        ] {
            if d.is_zero() {
                return Err(ConfigError::invalid(key, "must be longer than 0s"));
            }
        }
        Ok(())
    }

    /// Every listener: the `listen` shorthand (in `mode`) followed by `listeners`.
    pub fn all_listeners(&self) -> Vec<ListenerConfig> {
        self.listen
            .iter()
            .map(|&listen| ListenerConfig {
                listen,
                mode: self.mode,
                tproxy: false,
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

    #[test]
    fn example_config_in_repo_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/ftpgate.yaml");
        let cfg = Config::from_file(&path).expect("example parses");
        cfg.validate().expect("example validates");
    }

    #[test]
    fn unknown_key_is_named() {
        let err = Config::from_yaml("listen: ['127.0.0.1:21']\nbackend: ['10.0.0.2:21']\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("backend"), "{err}");
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
        let cfg =
            Config::from_yaml("timeouts:\n  data_connect: 2m\n  backend_connect: 250ms\n").unwrap();
        assert_eq!(cfg.timeouts.data_connect, Duration::from_secs(120));
        assert_eq!(cfg.timeouts.backend_connect, Duration::from_millis(250));
    }

    #[test]
    fn validation_names_the_key() {
        let mut cfg = Config {
            listen: vec!["127.0.0.1:2121".parse().unwrap()],
            backends: vec!["127.0.0.1:21".parse().unwrap()],
            ..Config::default()
        };
        cfg.validate().unwrap();
        cfg.data_ports = "2000-3000".parse().unwrap();
        assert!(cfg
            .validate()
            .unwrap_err()
            .to_string()
            .starts_with("data_ports:"));
        cfg.data_ports = "50000-50001".parse().unwrap();
        cfg.public_address = vec!["0.0.0.0".parse().unwrap()];
        assert!(cfg
            .validate()
            .unwrap_err()
            .to_string()
            .starts_with("public_address:"));
        cfg.public_address.clear();
        cfg.backends.clear();
        assert!(cfg
            .validate()
            .unwrap_err()
            .to_string()
            .starts_with("backends:"));
    }

    #[test]
    fn transparent_listeners_need_no_backends_but_reverse_ones_do() {
        let cfg = Config::from_yaml(
            "listeners:\n  - listen: '10.0.0.1:2121'\n    mode: transparent\n    tproxy: true\n",
        )
        .unwrap();
        cfg.validate().unwrap();
        let cfg = Config::from_yaml(
            "listen: ['0.0.0.0:21']\nlisteners:\n  - listen: '10.0.0.1:2121'\n    mode: transparent\n",
        )
        .unwrap();
        assert!(cfg
            .validate()
            .unwrap_err()
            .to_string()
            .starts_with("backends:"));
        let cfg = Config::from_yaml(
            "listeners:\n  - listen: '10.0.0.1:2121'\n    tproxy: true\nbackends: ['10.0.0.2:21']\n",
        )
        .unwrap();
        assert!(cfg
            .validate()
            .unwrap_err()
            .to_string()
            .starts_with("listeners:"));
    }

    #[test]
    fn zero_worker_threads_is_rejected() {
        let cfg = Config::from_yaml(
            "listen: ['127.0.0.1:2121']\nbackends: ['10.0.0.2:21']\nworker_threads: 0\n",
        )
        .unwrap();
        assert!(cfg
            .validate()
            .unwrap_err()
            .to_string()
            .starts_with("worker_threads:"));
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
    }
}
