//! The `ftpgate` binary: parse flags, set up logs, load config, run.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use tracing_subscriber::EnvFilter;

use ftpgate::app::{Gateway, StopSignals};
use ftpgate::cli::{Cli, Command, RunArgs};
use ftpgate::config::{Config, ConfigErrors, LogConfig, LogFormat, ValidConfig};
use ftpgate::metrics::Metrics;
use ftpgate::reload::{ConfigSource, LogLevelSetter, Reloader};

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
        Command::Reload { pid_file } => match signal_reload(&pid_file) {
            Ok(pid) => {
                println!("ftpgate: asked process {pid} to reload (see its log)");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("ftpgate reload: {e:#}");
                ExitCode::FAILURE
            }
        },
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
            let log_level = init_logs(&config.log);
            for d in &deprecations {
                tracing::warn!("{d}");
            }
            // Process-wide, and before any session can start a relay.
            ftpgate::relay::set_relay_mode(config.relay);
            match run(config, args, log_level) {
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

/// Sets up logging; returns how a reload changes `log.level` (none when `RUST_LOG`
/// is set: it wins, as at start).
fn init_logs(log: &LogConfig) -> Option<LogLevelSetter> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let from_env = EnvFilter::try_from_default_env().ok();
    let env_wins = from_env.is_some();
    let filter = from_env
        .or_else(|| EnvFilter::try_new(&log.level).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    // Colours only for a terminal: piped logs (journald, files, tests) stay plain.
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match log.format {
        LogFormat::Text => registry.with(fmt).init(),
        LogFormat::Json => registry.with(fmt.json()).init(),
    }
    if env_wins {
        return None;
    }
    Some(Box::new(move |level: &str| {
        let f = EnvFilter::try_new(level).map_err(|e| e.to_string())?;
        handle.reload(f).map_err(|e| e.to_string())
    }))
}

/// `ftpgate reload`: SIGHUP to the process named in the pid file.
#[allow(unsafe_code)] // kill(2): no safe wrapper in std.
fn signal_reload(pid_file: &std::path::Path) -> anyhow::Result<i32> {
    let text = std::fs::read_to_string(pid_file)
        .with_context(|| format!("reading {}", pid_file.display()))?;
    let pid: i32 = text
        .trim()
        .parse()
        .with_context(|| format!("{}: not a process id", pid_file.display()))?;
    anyhow::ensure!(pid > 0, "{}: not a process id", pid_file.display());
    // SAFETY: kill(2) with a positive pid and a valid signal number has no memory effects.
    if unsafe { libc::kill(pid, libc::SIGHUP) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("signalling process {pid}"));
    }
    Ok(pid)
}

/// Removes the pid file when `run` ends.
struct PidFile(std::path::PathBuf);

impl PidFile {
    fn write(path: &std::path::Path) -> anyhow::Result<PidFile> {
        std::fs::write(path, format!("{}\n", std::process::id()))
            .with_context(|| format!("writing pid file {}", path.display()))?;
        Ok(PidFile(path.to_path_buf()))
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Each session holds two control sockets plus data sockets and splice pipes; the
/// usual soft limit of 1024 descriptors would cap ftpgate at a few hundred sessions.
#[allow(unsafe_code)]
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
        // SAFETY: as above: setrlimit only reads `lim`, a live, initialised local.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } == 0 {
            tracing::debug!(from = old, to = lim.rlim_max, "raised open-file limit");
        }
    }
}

fn run(
    config: ValidConfig,
    args: Box<RunArgs>,
    log_level: Option<LogLevelSetter>,
) -> anyhow::Result<()> {
    raise_fd_limit();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = config.worker_threads {
        builder.worker_threads(n);
    }
    let runtime = builder
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let pid_file = args.pid_file.clone();
    let result = runtime.block_on(async {
        let signals = StopSignals::default();
        let gateway = Gateway::bind(config, std::sync::Arc::new(Metrics::new()))
            .await
            .context("binding listeners")?;
        let source: Option<ConfigSource> = args.config.is_some().then(|| {
            let args = std::sync::Arc::new(args);
            Box::new(move || args.resolve()) as ConfigSource
        });
        let reloader = gateway.reloader(source, log_level);
        let _pid = pid_file.as_deref().map(PidFile::write).transpose()?;
        tokio::spawn(stop_on_signal(signals.clone()));
        tokio::spawn(reload_on_hangup(reloader));
        gateway.serve_until(signals).await;
        Ok(())
    });
    // Sessions are gone; nothing left is worth waiting for.
    runtime.shutdown_timeout(std::time::Duration::from_millis(500));
    result
}

/// Each `SIGHUP` reloads the configuration (errors are logged and counted).
async fn reload_on_hangup(reloader: std::sync::Arc<Reloader>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot install the SIGHUP handler; reload through POST /reload");
        return;
    };
    while hup.recv().await.is_some() {
        tracing::info!("SIGHUP: reloading configuration");
        // Reading a small file; a blocking thread keeps the runtime responsive anyway.
        let r = std::sync::Arc::clone(&reloader);
        let _ = tokio::task::spawn_blocking(move || r.reload()).await;
    }
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
