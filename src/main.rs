//! The `ftpgate` binary: parse flags, set up logs, load config, run.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use tracing_subscriber::EnvFilter;

use ftpgate::app::{Gateway, StopSignals};
use ftpgate::cli::{Cli, Command};
use ftpgate::config::{Config, ConfigErrors, LogConfig, LogFormat, ValidConfig};
use ftpgate::metrics::Metrics;

/// Exit status for an invalid configuration, distinct from runtime failure (1).
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => {
            let path = config.display();
            let loaded = match Config::from_file(&config) {
                Ok(l) => l,
                Err(errors) => return config_errors(&path.to_string(), &errors),
            };
            for d in &loaded.deprecations {
                eprintln!("{path}: warning: {d}");
            }
            match loaded.config.validate() {
                Ok(_) => {
                    println!("{path}: ok");
                    ExitCode::SUCCESS
                }
                Err(errors) => config_errors(&path.to_string(), &errors),
            }
        }
        Command::Probe(args) => ftpgate::probe::main(&args),
        Command::Run(args) => {
            let (config, deprecations) = match args
                .resolve()
                .and_then(|l| Ok((l.config.validate()?, l.deprecations)))
            {
                Ok(c) => c,
                Err(errors) => {
                    return config_errors("ftpgate: invalid configuration", &errors);
                }
            };
            init_logs(&config.log);
            for d in &deprecations {
                tracing::warn!("{d}");
            }
            // Process-wide, and before any session can start a relay.
            ftpgate::relay::set_relay_mode(config.relay);
            match run(config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("ftpgate: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// One line per error (so a file with several mistakes is fixed in one pass), exit 2.
fn config_errors(prefix: &str, errors: &ConfigErrors) -> ExitCode {
    for e in errors.iter() {
        eprintln!("{prefix}: {e}");
    }
    ExitCode::from(EXIT_CONFIG)
}

fn init_logs(log: &LogConfig) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&log.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match log.format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Each session holds two control sockets plus data sockets and splice pipes; the
/// usual soft limit of 1024 descriptors would cap ftpgate at a few hundred sessions.
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read/write the struct we pass.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0;
    if ok && lim.rlim_cur < lim.rlim_max {
        let old = lim.rlim_cur;
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } == 0 {
            tracing::debug!(from = old, to = lim.rlim_max, "raised open-file limit");
        }
    }
}

fn run(config: ValidConfig) -> anyhow::Result<()> {
    raise_fd_limit();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = config.worker_threads {
        builder.worker_threads(n);
    }
    let runtime = builder
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let result = runtime.block_on(async {
        let signals = StopSignals::default();
        let gateway = Gateway::bind(config, std::sync::Arc::new(Metrics::new()))
            .await
            .context("binding listeners")?;
        tokio::spawn(stop_on_signal(signals.clone()));
        gateway.serve_until(signals).await;
        Ok(())
    });
    // Sessions are gone; nothing left is worth waiting for.
    runtime.shutdown_timeout(std::time::Duration::from_millis(500));
    result
}

/// The first `SIGTERM`/`SIGINT` drains; a second one stops at once.
async fn stop_on_signal(signals: StopSignals) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::warn!("cannot install signal handlers; stop with SIGKILL");
        return;
    };
    for what in ["draining", "stopping now"] {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: {what}"),
            _ = int.recv() => tracing::info!("SIGINT: {what}"),
        }
        if what == "draining" {
            signals.drain.cancel();
        }
    }
    signals.stop.cancel();
}
