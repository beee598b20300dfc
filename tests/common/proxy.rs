//! ftpgate started as a real process inside a namespace.
//!
//! Readiness is the `ftpgate ready` line on stderr (bounded wait); after that
//! a thread keeps draining stderr into a buffer so tests can inspect logs
//! (e.g. that the password never appears, or the `passive reply rewritten`
//! debug lines).

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use super::netns::Netns;

/// Path of the binary under test (cargo builds it for integration tests).
pub const FTPGATE_BIN: &str = env!("CARGO_BIN_EXE_ftpgate");

pub const READY_LINE: &str = "ftpgate ready";
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Command-line options for `ftpgate run`.
#[derive(Clone, Debug)]
pub struct FtpgateOptions {
    pub listen: Vec<SocketAddr>,
    pub backend: Vec<SocketAddr>,
    pub public_address: Vec<IpAddr>,
    pub data_ports: (u16, u16),
    pub rewrite_passive: bool,
    pub log_level: String,
    /// Anything else, appended verbatim (for flags later topologies need).
    pub extra_args: Vec<String>,
}

impl FtpgateOptions {
    pub fn new(listen: Vec<SocketAddr>, backend: SocketAddr, public: Vec<IpAddr>) -> Self {
        FtpgateOptions {
            listen,
            backend: vec![backend],
            public_address: public,
            data_ports: (50000, 50099),
            rewrite_passive: true,
            // Debug, so password-leak assertions cover the chattiest level.
            log_level: "debug".into(),
            extra_args: Vec::new(),
        }
    }

    pub fn args(&self) -> Vec<String> {
        let mut a = vec!["run".to_string()];
        for l in &self.listen {
            a.extend(["--listen".into(), l.to_string()]);
        }
        for b in &self.backend {
            a.extend(["--backend".into(), b.to_string()]);
        }
        for p in &self.public_address {
            a.extend(["--public-address".into(), p.to_string()]);
        }
        a.extend([
            "--data-ports".into(),
            format!("{}-{}", self.data_ports.0, self.data_ports.1),
        ]);
        if !self.rewrite_passive {
            a.push("--no-rewrite-passive".into());
        }
        a.extend(["--log-level".into(), self.log_level.clone()]);
        a.extend(["--log-format".into(), "text".into()]);
        a.extend(self.extra_args.iter().cloned());
        a
    }
}

/// Removes ANSI colour sequences (tracing's text format may emit them).
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            // CSI: parameters until a final byte in '@'..='~'.
            for n in chars.by_ref() {
                if ('@'..='~').contains(&n) {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Extracts the `original` and `rewritten` fields of a text-format log line.
/// Accepts quoted values (`original="227 ..."`, Debug formatting) and bare
/// ones (`original=227 ... rewritten=227 ...`, Display formatting, where the
/// value runs until the next field or the end of the line).
pub fn parse_rewrite_fields(line: &str) -> Option<(String, String)> {
    let o = line.find(" original=")? + " original=".len();
    let r = line.find(" rewritten=")? + " rewritten=".len();
    if r < o {
        return None;
    }
    let value = |start: usize, end: usize| -> String {
        let v = &line[start..end];
        match v.strip_prefix('"') {
            Some(q) => q[..q.find('"').unwrap_or(q.len())].to_owned(),
            None => v.trim().to_owned(),
        }
    };
    let original = value(o, r - " rewritten=".len());
    let rewritten = value(r, line.len());
    Some((original, rewritten))
}

/// A running ftpgate; killed on drop.
pub struct Ftpgate {
    child: Child,
    logs: Arc<Mutex<String>>,
    pub options: FtpgateOptions,
}

impl Ftpgate {
    /// Starts ftpgate in `ns` and waits (bounded) for its ready line; panics
    /// with the logs if it exits or stays silent.
    pub fn start(ns: &Netns, options: FtpgateOptions) -> Ftpgate {
        let mut cmd = ns.command(FTPGATE_BIN);
        cmd.args(options.args())
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let desc = format!("{cmd:?}");
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {desc}: {e}"));
        let stderr = child.stderr.take().expect("stderr piped");
        let logs = Arc::new(Mutex::new(String::new()));
        let (ready_tx, ready_rx) = mpsc::channel();
        let sink = Arc::clone(&logs);
        thread::spawn(move || {
            let mut ready_tx = Some(ready_tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let line = strip_ansi(&line);
                let is_ready = line.contains(READY_LINE);
                if let Ok(mut l) = sink.lock() {
                    l.push_str(&line);
                    l.push('\n');
                }
                if is_ready {
                    if let Some(tx) = ready_tx.take() {
                        let _ = tx.send(());
                    }
                }
            }
            // Dropping the sender (EOF: ftpgate exited) wakes the waiter.
        });
        let mut gate = Ftpgate {
            child,
            logs,
            options,
        };
        match ready_rx.recv_timeout(READY_TIMEOUT) {
            Ok(()) => gate,
            Err(e) => {
                let status = gate.stop();
                panic!(
                    "ftpgate did not log {READY_LINE:?} ({e:?}; exit: {status:?})\n\
                     $ {desc}\n--- ftpgate stderr ---\n{}",
                    gate.logs()
                );
            }
        }
    }

    /// Everything ftpgate wrote to stderr so far (ANSI stripped).
    pub fn logs(&self) -> String {
        self.logs.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// ftpgate's arguments and logs: the section of every e2e test's
    /// failure context that shows ftpgate.
    pub fn describe(&self) -> String {
        format!(
            "--- ftpgate {:?} ---\n{}\n",
            self.options.args(),
            self.logs()
        )
    }

    /// The password must never reach ftpgate's logs, even at debug level.
    pub fn assert_no_password(&self) {
        let logs = self.logs();
        assert!(
            !logs.contains(super::servers::FTP_PASS),
            "ftpgate logged the password:\n{logs}"
        );
    }

    /// The `passive reply rewritten` debug lines so far.
    pub fn rewrite_log_lines(&self) -> Vec<String> {
        self.logs()
            .lines()
            .filter(|l| l.contains("passive reply rewritten"))
            .map(str::to_owned)
            .collect()
    }

    /// `(original, rewritten)` from each `passive reply rewritten` line.
    pub fn passive_rewrites(&self) -> Vec<(String, String)> {
        self.rewrite_log_lines()
            .iter()
            .filter_map(|l| parse_rewrite_fields(l))
            .collect()
    }

    /// Sends `signal` (`TERM`, `HUP`, ...) to ftpgate.
    pub fn signal(&self, signal: &str) {
        let _ = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status();
    }

    /// The exit status once ftpgate has exited, waiting at most `bound`.
    pub fn wait_exit(&mut self, bound: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + bound;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            // Polling the exit status (bounded by `deadline`).
            thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Sends SIGTERM and waits up to 10 s for a clean exit, then SIGKILL.
    /// Returns the exit status.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Some(status);
        }
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            // Polling the exit status (bounded by `deadline`).
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        self.child.wait().ok()
    }
}

impl Drop for Ftpgate {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
