//! Command line: `ftpgate run` and `ftpgate check`. Every flag has a YAML key of the
//! same meaning; flags override the file.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use std::time::Duration;

use crate::farm::{BackendSpec, BalancePolicy};
use crate::health::CheckKind;
use crate::proxy_protocol::ProxyVersion;

use crate::config::{
    BackendDataMode, BackendTlsPolicy, ClientTlsPolicy, Config, ConfigErrors, Deprecation,
    ListenerMode, Loaded, LogFormat, PortRange, RelayMode,
};

/// The pre-`relay:` way to turn splice off; still honoured, with a deprecation warning.
pub const RELAY_ENV: &str = "FTPGATE_RELAY";

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("`{s}`: {e} (e.g. 30s, 5m)"))
}

/// The `ftpgate` command line.
#[derive(Debug, Parser)]
#[command(name = "ftpgate", version, about = "FTP-aware NAT/ALG proxy")]
pub struct Cli {
    /// What to do: run, check a config, or probe a server.
    #[command(subcommand)]
    pub command: Command,
}

/// The `ftpgate` subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway.
    Run(Box<RunArgs>),
    /// Validate a configuration file and exit (status 2 when invalid).
    Check {
        /// The YAML configuration file to check.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Make a running `ftpgate run --pid-file F` reload its configuration (sends
    /// SIGHUP; the outcome is in its log and `ftpgate_config_reload_total`).
    Reload {
        /// The file `ftpgate run --pid-file` wrote.
        #[arg(long, value_name = "FILE")]
        pid_file: PathBuf,
    },
    /// Diagnose an FTP server through NAT, firewalls and load balancers
    /// (exit 0: every check passed, 1: a check failed, 2: usage error).
    Probe(Box<crate::probe::ProbeArgs>),
}

/// Flags of `ftpgate run`; each one set overrides the same key in the YAML file.
#[derive(Debug, Args, Default)]
pub struct RunArgs {
    /// YAML configuration file; flags below override its values.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to accept FTP clients on (repeatable). YAML: listen.
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Vec<SocketAddr>,
    /// Mode of the --listen addresses: reverse (in front of servers) or transparent
    /// (on a gateway, for redirected connections). YAML: mode, or per listener in listeners.
    #[arg(long, value_name = "MODE", value_enum)]
    pub mode: Option<ListenerMode>,
    /// Transparent listeners accept TPROXY-diverted connections (IP_TRANSPARENT).
    /// YAML: listeners[].tproxy.
    #[arg(long)]
    pub tproxy: bool,
    /// Map passive replies through ftpgate in transparent mode. YAML: transparent.map_passive.
    #[arg(long)]
    pub map_passive: bool,
    /// FTP server to relay to: ADDR:PORT or HOST:PORT, every A/AAAA record a member
    /// (repeatable). YAML: backends.
    #[arg(long, value_name = "HOST:PORT")]
    pub backend: Vec<BackendSpec>,
    /// How sessions pick a backend: round-robin, least-connections, source-ip or user.
    /// YAML: balance.
    #[arg(long, value_name = "POLICY", value_enum)]
    pub balance: Option<BalancePolicy>,
    /// How often backend names are resolved again (0 disables). YAML: backend_resolve_interval.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub backend_resolve_interval: Option<Duration>,
    /// Connections from this network (a load balancer) must begin with a PROXY protocol
    /// header, on the control and data ports (repeatable). YAML: proxy_protocol.accept_from.
    #[arg(long, value_name = "CIDR")]
    pub accept_proxy_protocol: Vec<ipnet::IpNet>,
    /// Send a PROXY protocol header (v1 or v2) naming the client on backend control
    /// connections. YAML: backend_proxy_protocol.
    #[arg(long, value_name = "VERSION", value_enum)]
    pub backend_proxy_protocol: Option<ProxyVersion>,
    /// Backend health check: tcp, banner or login. YAML: health.check.
    #[arg(long, value_name = "KIND", value_enum)]
    pub health_check: Option<CheckKind>,
    /// Address announced in rewritten passive replies (one IPv4, one IPv6). YAML: public_address.
    #[arg(long, value_name = "IP")]
    pub public_address: Vec<IpAddr>,
    /// Ports for passive data connections. YAML: data_ports.
    #[arg(long, value_name = "LO-HI")]
    pub data_ports: Option<PortRange>,
    /// Relay 227/229 unchanged (diagnostics only). YAML: passive.rewrite: false.
    #[arg(long)]
    pub no_rewrite_passive: bool,
    /// Data mode towards backends: same, passive or active. YAML: backend_data_mode.
    #[arg(long, value_name = "MODE", value_enum)]
    pub backend_data_mode: Option<BackendDataMode>,
    /// Network a client may name in PORT/EPRT besides its own address (repeatable).
    /// YAML: active.allow_foreign.
    #[arg(long, value_name = "CIDR")]
    pub allow_foreign: Vec<ipnet::IpNet>,
    /// Source port of active-mode data connections to clients (e.g. 20). YAML: active.source_port.
    #[arg(long, value_name = "PORT")]
    pub active_source_port: Option<u16>,
    /// Ports ftpgate listens on for backends' active data connections. YAML: active.ports.
    #[arg(long, value_name = "LO-HI")]
    pub active_ports: Option<PortRange>,
    /// NOOP keepalive interval during transfers, 0 disables. YAML: keepalive.noop_interval.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub noop_interval: Option<Duration>,
    /// TCP keepalive idle time on control connections, 0 disables. YAML: keepalive.tcp.idle.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub tcp_keepalive: Option<Duration>,
    /// Close sessions not logged in within this. YAML: timeouts.login.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub login_timeout: Option<Duration>,
    /// Close sessions idle (no command, no transfer) this long, 0 disables. YAML: timeouts.idle.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub idle_timeout: Option<Duration>,
    /// How long a data port waits for its connection. YAML: timeouts.data_connect.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub data_connect_timeout: Option<Duration>,
    /// Close data connections idle (no byte either way) this long, 0 disables.
    /// YAML: timeouts.data_idle.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub data_idle_timeout: Option<Duration>,
    /// TCP connect timeout towards backends. YAML: timeouts.backend_connect.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub backend_connect_timeout: Option<Duration>,
    /// Close the session (421) when a command gets no backend reply within this, 0
    /// disables. YAML: timeouts.backend_reply.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub backend_reply_timeout: Option<Duration>,
    /// Sessions not yet logged in, at most (0: unlimited). YAML: limits.max_prelogin_sessions.
    #[arg(long, value_name = "N")]
    pub max_prelogin_sessions: Option<usize>,
    /// Sessions open at once, at most (0: unlimited). YAML: limits.max_sessions.
    #[arg(long, value_name = "N")]
    pub max_sessions: Option<usize>,
    /// Sessions open at once from one client address (0: unlimited).
    /// YAML: limits.max_sessions_per_ip.
    #[arg(long, value_name = "N")]
    pub max_sessions_per_ip: Option<usize>,
    /// After SIGTERM/SIGINT, how long running sessions may finish. YAML: drain_timeout.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub drain_timeout: Option<Duration>,
    /// Write the process id here (for `ftpgate reload --pid-file`).
    #[arg(long, value_name = "FILE")]
    pub pid_file: Option<PathBuf>,
    /// Data relay: auto (splice(2) on Linux) or copy (user-space buffer). YAML: relay.
    #[arg(long, value_name = "MODE", value_enum)]
    pub relay: Option<RelayMode>,
    /// Async worker threads (default: one per core). YAML: worker_threads.
    #[arg(long, value_name = "N")]
    pub worker_threads: Option<usize>,
    /// Admin listener for /metrics, /healthz, /readyz (--metrics: the old name).
    /// YAML: admin.listen.
    #[arg(long, value_name = "ADDR:PORT", visible_alias = "metrics")]
    pub admin_listen: Option<SocketAddr>,
    /// Log filter, e.g. info or ftpgate=debug (RUST_LOG wins). YAML: log.level.
    #[arg(long, value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// Log format: text or json. YAML: log.format.
    #[arg(long, value_name = "FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Address accepting implicit FTPS (TLS from the first byte; repeatable).
    /// YAML: listeners[] with tls: implicit.
    #[arg(long, value_name = "ADDR:PORT")]
    pub implicit_tls_listen: Vec<SocketAddr>,
    /// PEM certificate chain for FTPS towards clients. YAML: tls.cert.
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert. YAML: tls.key.
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// TLS towards clients: off, optional, required (default: optional with a
    /// certificate, else off). YAML: tls.client.
    #[arg(long, value_name = "POLICY", value_enum)]
    pub client_tls: Option<ClientTlsPolicy>,
    /// TLS towards backends: off, mirror (as the client), required. YAML: tls.backend.
    #[arg(long, value_name = "POLICY", value_enum)]
    pub backend_tls: Option<BackendTlsPolicy>,
    /// PEM CA certificates backend certificates must chain to. YAML: tls.backend_ca.
    #[arg(long, value_name = "FILE")]
    pub backend_ca: Option<PathBuf>,
    /// Do not verify backend certificates. YAML: tls.backend_insecure.
    #[arg(long)]
    pub backend_tls_insecure: bool,
}

impl RunArgs {
    /// The file's config (or defaults) with every given flag applied on top, and the
    /// deprecated spellings used (including `FTPGATE_RELAY` in the environment).
    pub fn resolve(&self) -> Result<Loaded, ConfigErrors> {
        let mut loaded = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => Loaded::default(),
        };
        self.apply(&mut loaded.config);
        apply_relay_env(
            &mut loaded,
            std::env::var_os(RELAY_ENV).as_deref(),
            self.relay.is_some(),
        );
        Ok(loaded)
    }

    /// Applies every given flag to `cfg`.
    fn apply(&self, cfg: &mut Config) {
        if let Some(m) = self.mode {
            cfg.mode = m;
        }
        if !self.listen.is_empty() {
            if self.tproxy {
                // tproxy is a per-listener property: the flag's listeners carry it.
                cfg.listen.clear();
                cfg.listeners = self
                    .listen
                    .iter()
                    .map(|&listen| crate::config::ListenerConfig {
                        listen,
                        mode: cfg.mode,
                        tproxy: true,
                        tls: crate::config::ListenerTls::Explicit,
                    })
                    .collect();
            } else {
                cfg.listen = self.listen.clone();
                cfg.listeners.clear();
            }
        }
        // Added to whatever --listen / the file gave: implicit FTPS usually runs
        // beside an explicit listener (990 beside 21).
        cfg.listeners
            .extend(
                self.implicit_tls_listen
                    .iter()
                    .map(|&listen| crate::config::ListenerConfig {
                        listen,
                        mode: cfg.mode,
                        tproxy: false,
                        tls: crate::config::ListenerTls::Implicit,
                    }),
            );
        if self.map_passive {
            cfg.transparent.map_passive = true;
        }
        if !self.backend.is_empty() {
            cfg.backends = self.backend.clone();
        }
        if let Some(b) = self.balance {
            cfg.balance = b;
        }
        if let Some(d) = self.backend_resolve_interval {
            cfg.backend_resolve_interval = d;
        }
        if !self.accept_proxy_protocol.is_empty() {
            cfg.proxy_protocol.accept_from = self.accept_proxy_protocol.clone();
        }
        if let Some(v) = self.backend_proxy_protocol {
            cfg.backend_proxy_protocol = Some(v);
        }
        if let Some(c) = self.health_check {
            cfg.health.check = c;
        }
        if !self.public_address.is_empty() {
            cfg.public_address = self.public_address.clone();
        }
        if let Some(r) = self.data_ports {
            cfg.data_ports = r;
        }
        if self.no_rewrite_passive {
            cfg.passive.rewrite = false;
        }
        if let Some(m) = self.backend_data_mode {
            cfg.backend_data_mode = m;
        }
        if !self.allow_foreign.is_empty() {
            cfg.active.allow_foreign = self.allow_foreign.clone();
        }
        if let Some(p) = self.active_source_port {
            cfg.active.source_port = p;
        }
        if let Some(r) = self.active_ports {
            cfg.active.ports = Some(r);
        }
        if let Some(d) = self.noop_interval {
            cfg.keepalive.noop_interval = d;
        }
        if let Some(d) = self.tcp_keepalive {
            cfg.keepalive.tcp.idle = d;
        }
        if let Some(d) = self.login_timeout {
            cfg.timeouts.login = d;
        }
        if let Some(d) = self.idle_timeout {
            cfg.timeouts.idle = d;
        }
        if let Some(d) = self.data_connect_timeout {
            cfg.timeouts.data_connect = d;
        }
        if let Some(d) = self.data_idle_timeout {
            cfg.timeouts.data_idle = d;
        }
        if let Some(d) = self.backend_connect_timeout {
            cfg.timeouts.backend_connect = d;
        }
        if let Some(d) = self.backend_reply_timeout {
            cfg.timeouts.backend_reply = d;
        }
        if let Some(n) = self.max_prelogin_sessions {
            cfg.limits.max_prelogin_sessions = n;
        }
        if let Some(n) = self.max_sessions {
            cfg.limits.max_sessions = n;
        }
        if let Some(n) = self.max_sessions_per_ip {
            cfg.limits.max_sessions_per_ip = n;
        }
        if let Some(d) = self.drain_timeout {
            cfg.drain_timeout = d;
        }
        if let Some(r) = self.relay {
            cfg.relay = r;
        }
        if let Some(n) = self.worker_threads {
            cfg.worker_threads = Some(n);
        }
        if let Some(a) = self.admin_listen {
            cfg.admin.listen = Some(a);
        }
        if let Some(l) = &self.log_level {
            cfg.log.level = l.clone();
        }
        if let Some(f) = self.log_format {
            cfg.log.format = f;
        }
        if let Some(p) = &self.tls_cert {
            cfg.tls.cert = Some(p.clone());
        }
        if let Some(p) = &self.tls_key {
            cfg.tls.key = Some(p.clone());
        }
        if let Some(c) = self.client_tls {
            cfg.tls.client = Some(c);
        }
        if let Some(b) = self.backend_tls {
            cfg.tls.backend = b;
        }
        if let Some(p) = &self.backend_ca {
            cfg.tls.backend_ca = Some(p.clone());
        }
        if self.backend_tls_insecure {
            cfg.tls.backend_insecure = true;
        }
    }
}

/// `FTPGATE_RELAY=copy` predates `relay:`: it still selects copy (as it did, over the
/// file) unless `--relay` is given, and any `FTPGATE_RELAY` is noted as deprecated.
/// Other values never did anything and still do not.
fn apply_relay_env(loaded: &mut Loaded, env: Option<&std::ffi::OsStr>, flag_given: bool) {
    let Some(value) = env else { return };
    loaded.deprecations.push(Deprecation {
        old: "FTPGATE_RELAY (environment)",
        new: "relay (--relay)",
    });
    if value == "copy" && !flag_given {
        loaded.config.relay = RelayMode::Copy;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.yaml");
        std::fs::write(
            &path,
            "listen: ['127.0.0.1:2121']\nbackends: ['10.0.0.2:21']\ndata_ports: 50000-50010\n",
        )
        .unwrap();
        let cli = Cli::parse_from([
            "ftpgate",
            "run",
            "--config",
            path.to_str().unwrap(),
            "--backend",
            "10.0.0.3:21",
            "--backend",
            "10.0.0.4:21",
            "--no-rewrite-passive",
            "--noop-interval",
            "250ms",
            "--backend-data-mode",
            "passive",
            "--allow-foreign",
            "192.0.2.0/24",
            "--worker-threads",
            "1",
        ]);
        let Command::Run(args) = cli.command else {
            panic!("run expected")
        };
        let cfg = args.resolve().unwrap().config;
        assert_eq!(cfg.listen, vec!["127.0.0.1:2121".parse().unwrap()]);
        assert_eq!(cfg.backends.len(), 2);
        assert_eq!(cfg.data_ports.to_string(), "50000-50010");
        assert!(!cfg.passive.rewrite);
        assert_eq!(cfg.keepalive.noop_interval, Duration::from_millis(250));
        assert_eq!(cfg.backend_data_mode, BackendDataMode::Passive);
        assert_eq!(cfg.active.allow_foreign.len(), 1);
        assert_eq!(cfg.worker_threads, Some(1));
    }

    fn run_args(flags: &[&str]) -> RunArgs {
        let cli = Cli::try_parse_from(["ftpgate", "run"].iter().chain(flags)).unwrap();
        let Command::Run(args) = cli.command else {
            panic!("run expected")
        };
        *args
    }

    #[test]
    fn new_flags_set_new_keys() {
        let mut cfg = Config::default();
        run_args(&[
            "--admin-listen",
            "127.0.0.1:9464",
            "--backend-reply-timeout",
            "30s",
            "--max-prelogin-sessions",
            "0",
            "--relay",
            "copy",
        ])
        .apply(&mut cfg);
        assert_eq!(cfg.admin.listen, Some("127.0.0.1:9464".parse().unwrap()));
        assert_eq!(cfg.timeouts.backend_reply, Duration::from_secs(30));
        assert_eq!(cfg.limits.max_prelogin_sessions, 0);
        assert_eq!(cfg.relay, RelayMode::Copy);
        // The old flag name is an alias of --admin-listen.
        let mut cfg = Config::default();
        run_args(&["--metrics", "127.0.0.1:1"]).apply(&mut cfg);
        assert_eq!(cfg.admin.listen, Some("127.0.0.1:1".parse().unwrap()));
    }

    #[test]
    fn enum_flags_keep_their_values() {
        let mut cfg = Config::default();
        run_args(&[
            "--mode",
            "transparent",
            "--backend-data-mode",
            "active",
            "--log-format",
            "json",
            "--relay",
            "auto",
        ])
        .apply(&mut cfg);
        assert_eq!(cfg.mode, ListenerMode::Transparent);
        assert_eq!(cfg.backend_data_mode, BackendDataMode::Active);
        assert_eq!(cfg.log.format, LogFormat::Json);
        assert_eq!(cfg.relay, RelayMode::Auto);
        for (flag, value) in [
            ("--mode", "forward"),
            ("--backend-data-mode", "pasv"),
            ("--log-format", "xml"),
            ("--relay", "splice"),
        ] {
            let err = Cli::try_parse_from(["ftpgate", "run", flag, value]).unwrap_err();
            assert!(err.to_string().contains(value), "{flag}: {err}");
        }
    }

    #[test]
    fn relay_env_is_a_deprecated_alias() {
        let copy = std::ffi::OsStr::new("copy");
        let mut loaded = Loaded::default();
        apply_relay_env(&mut loaded, None, false);
        assert_eq!(loaded.config.relay, RelayMode::Auto);
        assert!(loaded.deprecations.is_empty());
        apply_relay_env(&mut loaded, Some(copy), false);
        assert_eq!(loaded.config.relay, RelayMode::Copy);
        assert_eq!(loaded.deprecations.len(), 1);
        assert!(loaded.deprecations[0].to_string().contains("FTPGATE_RELAY"));
        // --relay wins over the environment, which is still reported.
        let mut loaded = Loaded::default();
        apply_relay_env(&mut loaded, Some(copy), true);
        assert_eq!(loaded.config.relay, RelayMode::Auto);
        assert_eq!(loaded.deprecations.len(), 1);
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
