//! `ftpgate probe URL`: finds out why FTP fails through NAT, firewalls and
//! load balancers.
//!
//! - [`target`]: the URL (pure), password redaction.
//! - [`steps`]: the I/O — every step timed and bounded — recording [`facts`].
//! - [`diagnose`]: facts → verdict, reason, remedy (pure, table-tested).
//! - [`report`]: table for people, JSON for scripts.
//! - [`conn`], [`tls`]: control/data connections, TLS with certificate details.
//!
//! Exit status: 0 when every check passed, 1 when one failed, 2 on usage errors.

// No unwrap/expect/panic crate-wide (lib.rs); here indexing is checked as well.
#![cfg_attr(not(test), deny(clippy::indexing_slicing))]

pub mod conn;
pub mod diagnose;
pub mod facts;
pub mod report;
pub mod steps;
pub mod target;
pub mod tls;

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use facts::DataMode;
use target::{Security, Target};

/// Exit status for usage errors (bad URL, unreadable password file).
pub const EXIT_USAGE: u8 = 2;

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("`{s}`: {e} (e.g. 10s, 5m)"))
}

/// `ftpgate probe` flags.
#[derive(clap::Args)]
pub struct ProbeArgs {
    /// ftp://, ftpes:// (explicit TLS) or ftps:// (implicit TLS) URL:
    /// `[user[:password]@]host[:port][/dir/]`. Anonymous without a user.
    #[arg(value_name = "URL")]
    pub url: String,
    /// User name (overrides the URL's).
    #[arg(long)]
    pub user: Option<String>,
    /// File whose first line is the password (overrides the URL's).
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
    /// Bound on every single wait (connect, reply, data).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Data modes to check, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "epsv,pasv,eprt,port")]
    pub modes: Vec<DataMode>,
    /// Also download this file in every mode (throughput).
    #[arg(long, value_name = "PATH")]
    pub retr: Option<String>,
    /// Also upload (then delete) a test file in every mode (throughput).
    #[arg(long)]
    pub stor: bool,
    /// Size of the --stor test file in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 256 * 1024)]
    pub stor_size: usize,
    /// Name of the test file of --stor, --idle-check and --tls-eof-check,
    /// in the URL's directory.
    #[arg(long, value_name = "NAME", default_value = "ftpgate-probe.tmp")]
    pub scratch: String,
    /// Keep the control connection idle during a slow upload for up to this
    /// long and check that the final reply still arrives; on failure,
    /// bisect for the idle time at which it breaks.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub idle_check: Option<Duration>,
    /// Extra runs of the idle-check bisection.
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub idle_rounds: u32,
    /// Upload over TLS once with and once without close_notify: is the server
    /// strict about TLS shutdown (vsftpd strict_ssl_read_eof)?
    #[arg(long)]
    pub tls_eof_check: bool,
    /// PEM file of CA certificates to trust (default: the system bundle).
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// Address to announce in PORT/EPRT (default: the control connection's local address).
    #[arg(long, value_name = "IP")]
    pub active_address: Option<IpAddr>,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// No progress lines on stderr.
    #[arg(long)]
    pub quiet: bool,
}

impl std::fmt::Debug for ProbeArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry a password: never print it.
        let url = Target::parse(&self.url)
            .map(|t| t.redacted())
            .unwrap_or_else(|_| "<invalid URL>".into());
        f.debug_struct("ProbeArgs")
            .field("url", &url)
            .finish_non_exhaustive()
    }
}

/// Why `ftpgate probe` cannot start (exit status 2).
#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    /// The URL does not parse.
    #[error("{0}")]
    Url(#[from] target::TargetError),
    /// `--password-file` could not be read.
    #[error("reading the password file {path}: {source}")]
    PasswordFile {
        /// The file's path as given.
        path: String,
        /// The read error.
        source: std::io::Error,
    },
    /// `--tls-eof-check` with an `ftp://` URL.
    #[error("--tls-eof-check needs an ftpes:// or ftps:// URL")]
    TlsEofNeedsTls,
    /// The TLS client could not be set up (`--ca-file`).
    #[error("TLS setup: {0}")]
    Tls(#[from] tls::TlsSetupError),
    /// `--modes` named none.
    #[error("no data modes given")]
    NoModes,
}

/// Turns the flags into probe options (no network I/O).
pub fn options(args: &ProbeArgs) -> Result<steps::Options, UsageError> {
    let target = Target::parse(&args.url)?;
    let user = args
        .user
        .clone()
        .or_else(|| target.user.clone())
        .unwrap_or_else(|| "anonymous".into());
    let password = match &args.password_file {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|source| UsageError::PasswordFile {
                path: path.display().to_string(),
                source,
            })?
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned(),
        None => target
            .password
            .clone()
            .unwrap_or_else(|| "ftpgate-probe@".into()),
    };
    if args.tls_eof_check && target.security == Security::Plain {
        return Err(UsageError::TlsEofNeedsTls);
    }
    if args.modes.is_empty() {
        return Err(UsageError::NoModes);
    }
    let mut modes = args.modes.clone();
    modes.dedup();
    Ok(steps::Options {
        target,
        user,
        password,
        timeout: args.timeout,
        modes,
        retr: args.retr.clone(),
        stor: args.stor,
        stor_size: args.stor_size,
        scratch: args.scratch.clone(),
        idle_check: args.idle_check,
        idle_rounds: args.idle_rounds,
        tls_eof_check: args.tls_eof_check,
        active_address: args.active_address,
        progress: !args.quiet,
    })
}

/// `ftpgate probe`: runs, prints the report, returns the exit status.
pub fn main(args: &ProbeArgs) -> ExitCode {
    let opts = match options(args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("ftpgate probe: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let tls = match opts.target.security {
        Security::Plain => None,
        _ => match tls::TlsClient::new(&opts.target.host, args.ca_file.as_deref()) {
            Ok(t) => Some(Arc::new(t)),
            Err(e) => {
                eprintln!("ftpgate probe: {}", UsageError::from(e));
                return ExitCode::from(EXIT_USAGE);
            }
        },
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ftpgate probe: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let facts = runtime.block_on(steps::run(&opts, tls));
    let checks = diagnose::diagnose(&facts);
    if args.json {
        println!("{}", report::json(&facts.url, &checks));
    } else {
        print!("{}", report::table(&facts.url, &checks));
    }
    if report::all_passed(&checks) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn args(argv: &[&str]) -> ProbeArgs {
        let cli = crate::cli::Cli::try_parse_from(argv).unwrap();
        match cli.command {
            crate::cli::Command::Probe(a) => *a,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn credentials_precedence() {
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "from-file\nignored\n").unwrap();
        let pw = pw.to_str().unwrap();
        for (argv, user, pass) in [
            (
                vec!["ftpgate", "probe", "ftp://h/"],
                "anonymous",
                "ftpgate-probe@",
            ),
            (vec!["ftpgate", "probe", "ftp://u:p@h/"], "u", "p"),
            (
                vec!["ftpgate", "probe", "ftp://u:p@h/", "--user", "v"],
                "v",
                "p",
            ),
            (
                vec!["ftpgate", "probe", "ftp://u:p@h/", "--password-file", pw],
                "u",
                "from-file",
            ),
        ] {
            let o = options(&args(&argv)).unwrap();
            assert_eq!(
                (o.user.as_str(), o.password.as_str()),
                (user, pass),
                "{argv:?}"
            );
        }
    }

    #[test]
    fn usage_errors() {
        for argv in [
            vec!["ftpgate", "probe", "http://h/"],
            vec![
                "ftpgate",
                "probe",
                "ftp://h/",
                "--password-file",
                "/nonexistent/pw",
            ],
            vec!["ftpgate", "probe", "ftp://h/", "--tls-eof-check"],
        ] {
            assert!(options(&args(&argv)).is_err(), "{argv:?}");
        }
        assert!(
            crate::cli::Cli::try_parse_from(["ftpgate", "probe", "ftp://h/", "--modes", "x"])
                .is_err()
        );
    }

    #[test]
    fn debug_output_redacts_the_password() {
        let a = args(&[
            "ftpgate",
            "probe",
            "ftp://u:s3cret@h/",
            "--modes",
            "pasv,port",
        ]);
        assert_eq!(a.modes, vec![DataMode::Pasv, DataMode::Port]);
        let d = format!("{a:?}");
        assert!(!d.contains("s3cret") && d.contains("u:***@"), "{d}");
    }
}
