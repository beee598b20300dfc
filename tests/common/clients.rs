//! Real FTP clients (curl, lftp, Python ftplib) run inside a namespace, plus a
//! minimal in-process control-channel client ([`FtpControl`]) for tests that
//! need to act between the passive reply and the data connection.
//!
//! Every client run is bounded ([`CLIENT_TIMEOUT`]) and returns a
//! [`Transcript`] with its exit status, stdout and stderr (curl `-v` and
//! lftp `-d` put the FTP dialogue on stderr).

use std::fmt;
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use super::netns::{run_bounded, Netns};
use super::servers::{FTP_PASS, FTP_USER};

pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(90);

/// Passive-mode flavour a client is told to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Passive {
    /// RFC 2428 EPSV → 229 (port only).
    Epsv,
    /// RFC 959 PASV → 227 (address and port).
    Pasv,
}

/// Where a client connects: an FTP control endpoint plus credentials.
#[derive(Clone, Debug)]
pub struct FtpTarget {
    pub addr: SocketAddr,
    pub user: String,
    pub pass: String,
}

impl FtpTarget {
    /// The test user/password every harness server accepts.
    pub fn new(addr: SocketAddr) -> FtpTarget {
        FtpTarget {
            addr,
            user: FTP_USER.into(),
            pass: FTP_PASS.into(),
        }
    }

    /// `ftp://host:port/<path>` without credentials (those go in `--user`).
    pub fn url(&self, path: &str) -> String {
        let host = match self.addr.ip() {
            IpAddr::V4(ip) => ip.to_string(),
            IpAddr::V6(ip) => format!("[{ip}]"),
        };
        format!("ftp://{host}:{}/{path}", self.addr.port())
    }
}

/// Result of one client run.
pub struct Transcript {
    pub command: String,
    pub code: Option<i32>,
    pub timed_out: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Transcript {
    pub fn success(&self) -> bool {
        self.code == Some(0) && !self.timed_out
    }

    /// Panics with the whole transcript (and `context`, e.g. proxy logs) unless
    /// the client exited 0.
    pub fn assert_success(&self, context: &str) {
        assert!(
            self.success(),
            "client failed:\n{self}\n--- context ---\n{context}"
        );
    }

    /// Lines of the FTP dialogue on stderr that start with the reply `code`
    /// (curl prints replies as `< 227 ...`, lftp as `<--- 227 ...`).
    pub fn reply_lines(&self, code: &str) -> Vec<String> {
        self.stderr
            .lines()
            .map(|l| l.trim_start_matches(['<', '-', ' ']))
            .filter(|l| l.starts_with(code))
            .map(str::to_owned)
            .collect()
    }
}

impl fmt::Display for Transcript {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "$ {}", self.command)?;
        writeln!(f, "exit: {:?} timed_out: {}", self.code, self.timed_out)?;
        writeln!(f, "--- stdout ---\n{}", self.stdout)?;
        write!(f, "--- stderr ---\n{}", self.stderr)
    }
}

/// Runs a client command bounded by [`CLIENT_TIMEOUT`]: the one runner every
/// client helper (here, in `active` and in `gateway`) shares.
pub fn run(cmd: Command) -> Transcript {
    run_within(cmd, CLIENT_TIMEOUT)
}

/// Runs a client command bounded by `bound` and records its [`Transcript`]
/// (for tests whose clients need a tighter or looser bound than the default).
pub fn run_within(cmd: Command, bound: Duration) -> Transcript {
    let command = format!("{cmd:?}");
    let (out, timed_out) = run_bounded(cmd, bound);
    Transcript {
        command,
        code: out.status.code(),
        timed_out,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A listing run (`t`) names the files every harness server's `LIST_DIR`
/// holds; `ctx` adds the test's failure context.
pub fn assert_listing(t: &Transcript, ctx: &dyn Fn() -> String) {
    for name in ["big.bin", "hello.txt"] {
        assert!(
            t.stdout.contains(name),
            "listing lacks {name}:\n{t}\n{}",
            ctx()
        );
    }
}

// ---------------------------------------------------------------- curl

/// `curl` from `ns` with what every harness curl run shares (the dialogue on
/// stderr, bounded connect and total time, `t`'s credentials); callers add
/// the data mode and the operation. Shared by the passive, active and
/// gateway helpers.
pub fn curl_command(ns: &Netns, t: &FtpTarget) -> Command {
    let mut cmd = ns.command("curl");
    cmd.args([
        "-v",
        "--silent",
        "--show-error",
        "--connect-timeout",
        "10",
        "--max-time",
        "60",
    ]);
    cmd.arg("--user").arg(format!("{}:{}", t.user, t.pass));
    cmd
}

fn curl_base(ns: &Netns, t: &FtpTarget, mode: Passive) -> Command {
    let mut cmd = curl_command(ns, t);
    cmd.args([
        "--ftp-pasv",
        // curl ignores the 227 address by default and reuses the control
        // connection's; make it use the address ftpgate advertises, so the
        // tests prove the rewrite rather than curl's workaround.
        "--no-ftp-skip-pasv-ip",
    ]);
    if mode == Passive::Pasv {
        cmd.arg("--disable-epsv");
    }
    cmd
}

/// `curl` download of `remote` (path relative to the login dir) into `local`.
pub fn curl_download(
    ns: &Netns,
    t: &FtpTarget,
    remote: &str,
    local: &Path,
    mode: Passive,
) -> Transcript {
    let mut cmd = curl_base(ns, t, mode);
    cmd.arg("-o").arg(local).arg(t.url(remote));
    run(cmd)
}

/// `curl -T` upload of `local` to `remote`.
pub fn curl_upload(
    ns: &Netns,
    t: &FtpTarget,
    local: &Path,
    remote: &str,
    mode: Passive,
) -> Transcript {
    let mut cmd = curl_base(ns, t, mode);
    cmd.arg("-T").arg(local).arg(t.url(remote));
    run(cmd)
}

/// `curl` LIST of `dir` (listing on stdout).
pub fn curl_list(ns: &Netns, t: &FtpTarget, dir: &str, mode: Passive) -> Transcript {
    let mut cmd = curl_base(ns, t, mode);
    cmd.arg(t.url(&format!("{}/", dir.trim_end_matches('/'))));
    run(cmd)
}

// ---------------------------------------------------------------- lftp

/// Runs an lftp script after logging in to `t` (lftp `-d`: the dialogue
/// goes to stderr).
pub fn lftp(ns: &Netns, t: &FtpTarget, mode: Passive, script: &str) -> Transcript {
    let prefer_epsv = if mode == Passive::Epsv { "yes" } else { "no" };
    let full = format!(
        "set cmd:fail-exit yes; set net:max-retries 1; set net:timeout 20; \
         set net:reconnect-interval-base 1; set ftp:ssl-allow no; \
         set ftp:passive-mode on; set ftp:prefer-epsv {prefer_epsv}; \
         set ftp:fix-pasv-address no; set xfer:clobber yes; \
         open -u {user},{pass} {url}; {script}; bye",
        user = t.user,
        pass = t.pass,
        url = t.url(""),
    );
    let mut cmd = ns.command("lftp");
    // `ftp:fix-pasv-address no`: lftp would otherwise replace a private 227
    // address with the control address, hiding a missing rewrite.
    cmd.args(["-d", "-c", &full]);
    run(cmd)
}

pub fn lftp_download(
    ns: &Netns,
    t: &FtpTarget,
    remote: &str,
    local: &Path,
    mode: Passive,
) -> Transcript {
    lftp(ns, t, mode, &format!("get {remote} -o {}", local.display()))
}

pub fn lftp_upload(
    ns: &Netns,
    t: &FtpTarget,
    local: &Path,
    remote: &str,
    mode: Passive,
) -> Transcript {
    lftp(ns, t, mode, &format!("put {} -o {remote}", local.display()))
}

/// lftp `cls -1 <dir>/` (NLST-like names, one per line, on stdout).
pub fn lftp_list(ns: &Netns, t: &FtpTarget, dir: &str, mode: Passive) -> Transcript {
    lftp(ns, t, mode, &format!("cls -1 {dir}/"))
}

// ---------------------------------------------------------------- ftplib

/// Python ftplib download (Debian's /usr/bin/python3). ftplib trusts the
/// 227 address only when told to, which we do for the same reason as curl.
pub fn ftplib_download(
    ns: &Netns,
    t: &FtpTarget,
    remote: &str,
    local: &Path,
    mode: Passive,
) -> Transcript {
    let script = format!(
        r#"
import ftplib, sys
ftp = ftplib.FTP(timeout=30)
ftp.set_debuglevel(1)
ftp.trust_server_pasv_ipv4_address = True
ftp.connect({host:?}, {port})
ftp.login({user:?}, {pw:?})
ftp.af = __import__("socket").AF_INET6 if {epsv} else ftp.af
with open({local:?}, "wb") as f:
    ftp.retrbinary("RETR " + {remote:?}, f.write)
ftp.quit()
"#,
        host = t.addr.ip().to_string(),
        port = t.addr.port(),
        user = t.user,
        pw = t.pass,
        // ftplib sends EPSV when its address family is IPv6.
        epsv = if mode == Passive::Epsv {
            "True"
        } else {
            "False"
        },
        local = local.display().to_string(),
        remote = remote,
    );
    let mut cmd = ns.command("/usr/bin/python3");
    cmd.arg("-c").arg(script);
    run(cmd)
}

// ---------------------------------------------------------------- raw

/// A minimal blocking FTP control connection for step-by-step tests. Create it
/// on a thread from [`Netns::spawn_thread`] so its sockets live in a namespace.
pub struct FtpControl {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    /// Every line sent (`> `) and received (`< `), PASS masked.
    pub transcript: String,
}

impl FtpControl {
    pub fn connect(addr: SocketAddr) -> std::io::Result<FtpControl> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        let writer = stream.try_clone()?;
        let mut c = FtpControl {
            reader: BufReader::new(stream),
            writer,
            transcript: String::new(),
        };
        let (code, text) = c.read_reply()?;
        if code != 220 {
            return Err(other(format!("banner: {text}")));
        }
        Ok(c)
    }

    /// Reads one complete reply (multi-line aware); returns (code, all text).
    pub fn read_reply(&mut self) -> std::io::Result<(u16, String)> {
        let mut all = String::new();
        let mut code: Option<String> = None;
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line)? == 0 {
                return Err(other(format!("control closed after {all:?}")));
            }
            self.transcript.push_str(&format!("< {line}"));
            all.push_str(&line);
            let c = code.get_or_insert_with(|| line.get(..3).unwrap_or("").to_owned());
            // RFC 959 §4.2: the reply ends at "<same code><SP>".
            if line.len() >= 4 && line.get(..3) == Some(c.as_str()) && line.as_bytes()[3] == b' ' {
                let n = c.parse().map_err(|_| other(format!("bad reply {all:?}")))?;
                return Ok((n, all));
            }
        }
    }

    pub fn send(&mut self, line: &str) -> std::io::Result<()> {
        let shown = if line.to_ascii_uppercase().starts_with("PASS ") {
            "PASS ****"
        } else {
            line
        };
        self.transcript.push_str(&format!("> {shown}\n"));
        self.writer.write_all(format!("{line}\r\n").as_bytes())
    }

    pub fn cmd(&mut self, line: &str) -> std::io::Result<(u16, String)> {
        self.send(line)?;
        self.read_reply()
    }

    /// Sends `line` and requires a reply with exactly `code`.
    pub fn expect(&mut self, line: &str, code: u16) -> std::io::Result<String> {
        let (got, text) = self.cmd(line)?;
        if got != code {
            return Err(other(format!("{line:?}: expected {code}, got {text:?}")));
        }
        Ok(text)
    }

    pub fn login(&mut self, user: &str, pass: &str) -> std::io::Result<()> {
        let (code, text) = self.cmd(&format!("USER {user}"))?;
        match code {
            230 => return Ok(()),
            331 => {}
            _ => return Err(other(format!("USER: {text}"))),
        }
        self.expect(&format!("PASS {pass}"), 230).map(|_| ())
    }

    /// PASV → the advertised data address.
    pub fn pasv(&mut self) -> std::io::Result<SocketAddr> {
        let text = self.expect("PASV", 227)?;
        parse_227(&text).ok_or_else(|| other(format!("unparsable 227: {text:?}")))
    }

    /// EPSV → the advertised data port (address = control peer, RFC 2428).
    pub fn epsv(&mut self) -> std::io::Result<u16> {
        let text = self.expect("EPSV", 229)?;
        parse_229(&text).ok_or_else(|| other(format!("unparsable 229: {text:?}")))
    }
}

fn other(msg: String) -> std::io::Error {
    std::io::Error::other(msg)
}

/// Finds six comma-separated numbers (RFC 1123 §4.1.2.6: scan for them;
/// parentheses are optional) in a 227 reply.
pub fn parse_227(text: &str) -> Option<SocketAddr> {
    let body = text.get(4..)?;
    let bytes = body.as_bytes();
    for start in 0..bytes.len() {
        if !bytes[start].is_ascii_digit() || (start > 0 && bytes[start - 1].is_ascii_digit()) {
            continue;
        }
        let candidate: String = body[start..]
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == ',')
            .collect();
        let nums: Vec<u8> = candidate
            .split(',')
            .map_while(|n| n.parse::<u8>().ok())
            .collect();
        if nums.len() >= 6 {
            let ip = Ipv4Addr::new(nums[0], nums[1], nums[2], nums[3]);
            let port = u16::from(nums[4]) << 8 | u16::from(nums[5]);
            return Some(SocketAddr::new(IpAddr::V4(ip), port));
        }
    }
    None
}

/// Port from a 229 reply: the last parenthesised `(<d><d><d>port<d>)` group.
pub fn parse_229(text: &str) -> Option<u16> {
    let open = text.rfind('(')?;
    let close = open + text[open..].find(')')?;
    let inner = &text[open + 1..close];
    let d = inner.chars().next()?;
    let parts: Vec<&str> = inner.split(d).collect();
    // "|||6446|" splits into ["", "", "", "6446", ""].
    if parts.len() != 5 {
        return None;
    }
    parts[3].parse().ok()
}
