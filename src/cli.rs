//! Command line: `ftpgate run` and `ftpgate check`. Every flag has a YAML key of the
//! same meaning; flags override the file.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use std::time::Duration;

use crate::config::{BackendDataMode, Config, ConfigError, ListenerMode, LogFormat, PortRange};

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("`{s}`: {e} (e.g. 30s, 5m)"))
}

#[derive(Debug, Parser)]
#[command(name = "ftpgate", version, about = "FTP-aware NAT/ALG proxy")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway.
    Run(Box<RunArgs>),
    /// Validate a configuration file and exit (status 2 when invalid).
    Check {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Diagnose an FTP server through NAT, firewalls and load balancers
    /// (exit 0: every check passed, 1: a check failed, 2: usage error).
    Probe(Box<crate::probe::ProbeArgs>),
}

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
    #[arg(long, value_name = "MODE")]
    pub mode: Option<ListenerMode>,
    /// Transparent listeners accept TPROXY-diverted connections (IP_TRANSPARENT).
    /// YAML: listeners[].tproxy.
    #[arg(long)]
    pub tproxy: bool,
    /// Map passive replies through ftpgate in transparent mode. YAML: transparent.map_passive.
    #[arg(long)]
    pub map_passive: bool,
    /// FTP server to relay to (repeatable, round robin). YAML: backends.
    #[arg(long, value_name = "ADDR:PORT")]
    pub backend: Vec<SocketAddr>,
    /// Address announced in rewritten passive replies (one IPv4, one IPv6). YAML: public_address.
    #[arg(long, value_name = "IP")]
    pub public_address: Vec<IpAddr>,
    /// Ports for passive data connections. YAML: data_ports.
    #[arg(long, value_name = "LO-HI")]
    pub data_ports: Option<PortRange>,
    /// Relay 227/229 unchanged (diagnostics only). YAML: rewrite_passive: false.
    #[arg(long)]
    pub no_rewrite_passive: bool,
    /// Data mode towards backends: same, passive or active. YAML: backend_data_mode.
    #[arg(long, value_name = "MODE")]
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
    /// Async worker threads (default: one per core). YAML: worker_threads.
    #[arg(long, value_name = "N")]
    pub worker_threads: Option<usize>,
    /// Admin listener for /metrics, /healthz, /readyz. YAML: metrics.
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics: Option<SocketAddr>,
    /// Log filter, e.g. info or ftpgate=debug (RUST_LOG wins). YAML: log.level.
    #[arg(long, value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// Log format: text or json. YAML: log.format.
    #[arg(long, value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
}

impl RunArgs {
    /// The file's config (or defaults) with every given flag applied on top.
    pub fn resolve(&self) -> Result<Config, ConfigError> {
        let mut cfg = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
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
                    })
                    .collect();
            } else {
                cfg.listen = self.listen.clone();
                cfg.listeners.clear();
            }
        }
        if self.map_passive {
            cfg.transparent.map_passive = true;
        }
        if !self.backend.is_empty() {
            cfg.backends = self.backend.clone();
        }
        if !self.public_address.is_empty() {
            cfg.public_address = self.public_address.clone();
        }
        if let Some(r) = self.data_ports {
            cfg.data_ports = r;
        }
        if self.no_rewrite_passive {
            cfg.rewrite_passive = false;
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
        if let Some(n) = self.worker_threads {
            cfg.worker_threads = Some(n);
        }
        if let Some(m) = self.metrics {
            cfg.metrics = Some(m);
        }
        if let Some(l) = &self.log_level {
            cfg.log.level = l.clone();
        }
        if let Some(f) = self.log_format {
            cfg.log.format = f;
        }
        Ok(cfg)
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
        let cfg = args.resolve().unwrap();
        assert_eq!(cfg.listen, vec!["127.0.0.1:2121".parse().unwrap()]);
        assert_eq!(cfg.backends.len(), 2);
        assert_eq!(cfg.data_ports.to_string(), "50000-50010");
        assert!(!cfg.rewrite_passive);
        assert_eq!(cfg.keepalive.noop_interval, Duration::from_millis(250));
        assert_eq!(cfg.backend_data_mode, BackendDataMode::Passive);
        assert_eq!(cfg.active.allow_foreign.len(), 1);
        assert_eq!(cfg.worker_threads, Some(1));
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
