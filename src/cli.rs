//! Command line: `ftpgate run` and `ftpgate check`. Every flag has a YAML key of the
//! same meaning; flags override the file.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{Config, ConfigError, LogFormat, PortRange};

#[derive(Debug, Parser)]
#[command(name = "ftpgate", version, about = "FTP-aware NAT/ALG proxy")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway.
    Run(RunArgs),
    /// Validate a configuration file and exit (status 2 when invalid).
    Check {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
}

#[derive(Debug, Args, Default)]
pub struct RunArgs {
    /// YAML configuration file; flags below override its values.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to accept FTP clients on (repeatable). YAML: listen.
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Vec<SocketAddr>,
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
        if !self.listen.is_empty() {
            cfg.listen = self.listen.clone();
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
        ]);
        let Command::Run(args) = cli.command else {
            panic!("run expected")
        };
        let cfg = args.resolve().unwrap();
        assert_eq!(cfg.listen, vec!["127.0.0.1:2121".parse().unwrap()]);
        assert_eq!(cfg.backends.len(), 2);
        assert_eq!(cfg.data_ports.to_string(), "50000-50010");
        assert!(!cfg.rewrite_passive);
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
