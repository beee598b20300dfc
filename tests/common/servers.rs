//! Real FTP daemons started inside a namespace, each serving a fresh temp
//! root with generated files and advertising its own (private) address in
//! 227 replies.
//!
//! Credentials: every server accepts user [`FTP_USER`] with password
//! [`FTP_PASS`]. vsftpd and proftpd authenticate it as the system account
//! created by `scripts/install-test-deps.sh` (vsftpd through the PAM service
//! `ftpgate-test`, proftpd through /etc/shadow); pyftpdlib uses an in-memory
//! user, pure-ftpd a PureDB virtual user mapped to that account. After login the working directory is the served root:
//!
//! ```text
//! <root>/pub/big.bin      8 MiB of random bytes   (BIG_FILE)
//! <root>/pub/hello.txt    a short text file       (SMALL_FILE)
//! <root>/upload/          writable by the FTP user (UPLOAD_DIR)
//! ```

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::netns::{Netns, Topology};
use super::sha256_file;

pub const FTP_USER: &str = "ftpgate-test";
pub const FTP_PASS: &str = "ftpgate-test-pw";
/// Multi-megabyte download target, relative to the login directory.
pub const BIG_FILE: &str = "pub/big.bin";
pub const SMALL_FILE: &str = "pub/hello.txt";
pub const LIST_DIR: &str = "pub";
pub const UPLOAD_DIR: &str = "upload";
pub const BIG_FILE_LEN: usize = 8 * 1024 * 1024;

/// Where `scripts/install-test-deps.sh` unpacks proftpd.
pub const PROFTPD_BIN: &str = "/opt/ftpgate-test/proftpd/usr/sbin/proftpd";

/// Where `scripts/install-test-deps.sh` unpacks pure-ftpd.
pub const PURE_FTPD_DIR: &str = "/opt/ftpgate-test/pure-ftpd/usr";

/// How long a server may take to answer its first 220 banner.
const READY_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerKind {
    Vsftpd,
    Proftpd,
    Pyftpdlib,
    PureFtpd,
}

impl ServerKind {
    pub fn name(self) -> &'static str {
        match self {
            ServerKind::Vsftpd => "vsftpd",
            ServerKind::Proftpd => "proftpd",
            ServerKind::Pyftpdlib => "pyftpdlib",
            ServerKind::PureFtpd => "pure-ftpd",
        }
    }
}

/// Writes `len` random bytes (from /dev/urandom) to `path`.
pub fn write_random_file(path: &Path, len: usize) {
    let mut buf = vec![0u8; len];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .expect("read /dev/urandom");
    fs::write(path, &buf).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// A random [`BIG_FILE_LEN`]-byte file `upload-src.bin` in `work`: the
/// source of the upload checks of every e2e suite.
pub fn upload_source(work: &Path) -> PathBuf {
    let src = work.join("upload-src.bin");
    write_random_file(&src, BIG_FILE_LEN);
    src
}

/// Looks up the uid/gid of a system user via `id`, so files can be chowned to
/// the account vsftpd/proftpd switch to after login.
fn user_ids(user: &str) -> Option<(u32, u32)> {
    let get = |flag: &str| -> Option<u32> {
        let out = Command::new("id").args([flag, user]).output().ok()?;
        if !out.status.success() {
            return None;
        }
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    };
    Some((get("-u")?, get("-g")?))
}

/// The served directory tree (see module docs).
pub struct FtpRoot {
    dir: tempfile::TempDir,
    big_sha256: String,
}

impl FtpRoot {
    pub fn create() -> FtpRoot {
        let dir = tempfile::Builder::new()
            .prefix("ftpgate-root-")
            .tempdir()
            .expect("tempdir");
        // The FTP user (not root) must be able to traverse and read.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let pub_dir = dir.path().join(LIST_DIR);
        let upload = dir.path().join(UPLOAD_DIR);
        fs::create_dir(&pub_dir).unwrap();
        fs::create_dir(&upload).unwrap();
        fs::set_permissions(&pub_dir, fs::Permissions::from_mode(0o755)).unwrap();
        let big = dir.path().join(BIG_FILE);
        write_random_file(&big, BIG_FILE_LEN);
        fs::write(dir.path().join(SMALL_FILE), b"hello through ftpgate\n").unwrap();
        for f in [BIG_FILE, SMALL_FILE] {
            fs::set_permissions(dir.path().join(f), fs::Permissions::from_mode(0o644)).unwrap();
        }
        if let Some((uid, gid)) = user_ids(FTP_USER) {
            std::os::unix::fs::chown(&upload, Some(uid), Some(gid)).unwrap();
        }
        fs::set_permissions(&upload, fs::Permissions::from_mode(0o777)).unwrap();
        let big_sha256 = sha256_file(&big);
        FtpRoot { dir, big_sha256 }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// SHA-256 (hex) of [`BIG_FILE`].
    pub fn big_sha256(&self) -> &str {
        &self.big_sha256
    }

    /// Local path of a file uploaded as `upload/<name>`.
    pub fn uploaded(&self, name: &str) -> PathBuf {
        self.dir.path().join(UPLOAD_DIR).join(name)
    }
}

/// A running FTP daemon. The process belongs to the [`Topology`] (killed when
/// it drops); this struct keeps its files alive.
pub struct FtpServer {
    pub kind: ServerKind,
    pub addr: SocketAddr,
    pub root: FtpRoot,
    pub pid: u32,
    conf_dir: tempfile::TempDir,
}

impl FtpServer {
    /// Starts `kind` in `ns`, listening on `ip:21`, and waits (bounded) until
    /// it answers with a 220 banner.
    pub fn start(topo: &Topology, ns: &Netns, ip: IpAddr, kind: ServerKind) -> FtpServer {
        Self::start_on(topo, ns, SocketAddr::new(ip, 21), kind)
    }

    pub fn start_on(topo: &Topology, ns: &Netns, addr: SocketAddr, kind: ServerKind) -> FtpServer {
        Self::start_with(topo, ns, addr, kind, "")
    }

    /// [`Self::start_on`] with `extra` appended to the configuration file
    /// (vsftpd: later keys override earlier ones), e.g. `pasv_address=...`; for
    /// pure-ftpd, which has no configuration file, extra command-line options.
    pub fn start_with(
        topo: &Topology,
        ns: &Netns,
        addr: SocketAddr,
        kind: ServerKind,
        extra: &str,
    ) -> FtpServer {
        let root = FtpRoot::create();
        let conf_dir = tempfile::Builder::new()
            .prefix(&format!("ftpgate-{}-", kind.name()))
            .tempdir()
            .expect("tempdir");
        fs::set_permissions(conf_dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let log = fs::File::create(conf_dir.path().join("stderr.log")).unwrap();
        let mut cmd = match kind {
            ServerKind::Vsftpd => vsftpd_command(ns, addr, root.path(), conf_dir.path(), extra),
            ServerKind::Proftpd => proftpd_command(ns, addr, root.path(), conf_dir.path(), extra),
            ServerKind::Pyftpdlib => pyftpdlib_command(ns, addr, root.path(), extra),
            ServerKind::PureFtpd => {
                pure_ftpd_command(ns, addr, root.path(), conf_dir.path(), extra)
            }
        };
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let pid = topo.spawn(cmd);
        let server = FtpServer {
            kind,
            addr,
            root,
            pid,
            conf_dir,
        };
        // An implicit-TLS server greets only after a handshake: ready once it accepts.
        let implicit_tls = extra.contains("implicit_ssl=YES");
        server.wait_ready(topo, ns, implicit_tls);
        server
    }

    /// Everything the daemon wrote to stdout/stderr and its own log files.
    pub fn logs(&self) -> String {
        let mut s = String::new();
        if let Ok(entries) = fs::read_dir(self.conf_dir.path()) {
            for e in entries.flatten() {
                let p = e.path();
                if p.extension().is_some_and(|x| x == "log") {
                    s.push_str(&format!("==> {} <==\n", p.display()));
                    s.push_str(&fs::read_to_string(&p).unwrap_or_default());
                }
            }
        }
        s
    }

    /// Polls the control port from inside `ns` until a complete 220 reply
    /// arrives; panics with the daemon's logs if it exits or the deadline hits.
    fn wait_ready(&self, topo: &Topology, ns: &Netns, accept_only: bool) {
        let addr = self.addr;
        let probe = ns.spawn_thread(move || {
            let deadline = Instant::now() + READY_TIMEOUT;
            let mut last_err = String::new();
            while Instant::now() < deadline {
                let greeting = if accept_only {
                    TcpStream::connect_timeout(&addr, Duration::from_secs(1))
                        .map(|_| "220 (accepting)".to_owned())
                } else {
                    read_banner(addr)
                };
                match greeting {
                    Ok(banner) if banner.starts_with("220") => return Ok(banner),
                    Ok(other) => last_err = format!("unexpected banner {other:?}"),
                    Err(e) => last_err = e.to_string(),
                }
                // Retry interval while polling the real signal (the banner).
                thread::sleep(Duration::from_millis(50));
            }
            Err(last_err)
        });
        // Check the process while the probe runs, to fail fast with its logs.
        while !probe.is_finished() {
            if let Some(status) = topo.exit_status(self.pid) {
                panic!(
                    "{} exited before becoming ready ({status}):\n{}",
                    self.kind.name(),
                    self.logs()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
        if let Err(e) = probe.join().expect("probe thread") {
            panic!(
                "{} on {} not ready within {READY_TIMEOUT:?}: {e}\n{}",
                self.kind.name(),
                self.addr,
                self.logs()
            );
        }
    }
}

/// Connects and reads one complete (possibly multi-line) reply.
fn read_banner(addr: SocketAddr) -> std::io::Result<String> {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream);
    let mut all = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("closed after {all:?}"),
            ));
        }
        all.push_str(&line);
        // RFC 959 §4.2: a reply ends with "<code><SP>" at the start of a line.
        let b = line.as_bytes();
        if b.len() >= 4 && b[..3].iter().all(u8::is_ascii_digit) && b[3] == b' ' {
            let mut s = reader.into_inner();
            let _ = s.write_all(b"QUIT\r\n");
            return Ok(all);
        }
    }
}

fn vsftpd_command(ns: &Netns, addr: SocketAddr, root: &Path, conf: &Path, extra: &str) -> Command {
    // secure_chroot_dir must exist, be owned by root and not be writable.
    let empty = conf.join("empty");
    fs::create_dir(&empty).unwrap();
    fs::set_permissions(&empty, fs::Permissions::from_mode(0o555)).unwrap();
    let (listen_key, other_key) = if addr.is_ipv6() {
        ("listen_ipv6", "listen")
    } else {
        ("listen", "listen_ipv6")
    };
    let config = format!(
        "# Generated by ftpgate's test harness (tests/common/servers.rs).
{listen_key}=YES
{other_key}=NO
listen_address{v6}={ip}
listen_port={port}
# Stay in the foreground so the harness owns the process.
background=NO
anonymous_enable=NO
local_enable=YES
write_enable=YES
local_umask=022
# Local user {FTP_USER} (nologin shell) authenticated by pam_unix only.
pam_service_name=ftpgate-test
userlist_enable=NO
local_root={root}
secure_chroot_dir={empty}
# The seccomp sandbox rejects syscalls that newer kernels/libcs use.
seccomp_sandbox=NO
# Else each session's unprivileged process runs in a private network namespace that
# `ip netns pids` cannot see: teardown misses it and it outlives the test until
# vsftpd's idle timeout (5 min).
isolate_network=NO
pasv_enable=YES
connect_from_port_20=NO
dirmessage_enable=NO
xferlog_enable=YES
vsftpd_log_file={conf}/vsftpd.log
dual_log_enable=YES
xferlog_file={conf}/xfer.log
log_ftp_protocol=YES
{extra}
",
        v6 = if addr.is_ipv6() { "6" } else { "" },
        ip = addr.ip(),
        port = addr.port(),
        root = root.display(),
        empty = empty.display(),
        conf = conf.display(),
    );
    let path = conf.join("vsftpd.conf");
    fs::write(&path, config).unwrap();
    let mut cmd = ns.command("/usr/sbin/vsftpd");
    cmd.arg(path);
    cmd
}

/// Where `scripts/install-test-deps.sh` unpacks proftpd-mod-crypto (mod_tls).
pub const PROFTPD_CRYPTO_MODULES: &str = "/opt/ftpgate-test/proftpd-crypto/usr/lib/proftpd";

/// proftpd; `extra` is appended to its configuration (e.g. mod_tls directives).
fn proftpd_command(ns: &Netns, addr: SocketAddr, root: &Path, conf: &Path, extra: &str) -> Command {
    let c = conf.display();
    let config = format!(
        "# Generated by ftpgate's test harness (tests/common/servers.rs).
ServerType standalone
ServerName \"ftpgate-test proftpd\"
DefaultServer on
UseIPv6 {ipv6}
DefaultAddress {ip}
SocketBindTight on
Port {port}
User nobody
Group nogroup
Umask 022
MaxInstances 50
UseReverseDNS off
WtmpLog off
# Paths that default to /var/run/proftpd and /var/log/proftpd (which do not
# exist when proftpd is only unpacked) live in the instance's own directory.
PidFile {c}/proftpd.pid
ScoreboardFile {c}/proftpd.scoreboard
SystemLog {c}/system.log
TransferLog {c}/xfer.log
ExtendedLog {c}/protocol.log ALL
# {FTP_USER} has a nologin shell; authenticate it from /etc/shadow directly.
AuthOrder mod_auth_unix.c
RequireValidShell off
DefaultRoot {root}
AllowOverwrite on
<IfModule mod_delay.c>
  DelayEngine off
</IfModule>
<IfModule mod_ctrls.c>
  ControlsEngine off
</IfModule>
<IfModule mod_lang.c>
  LangEngine off
</IfModule>
{extra}
",
        ipv6 = if addr.is_ipv6() { "on" } else { "off" },
        ip = addr.ip(),
        port = addr.port(),
        root = root.display(),
    );
    let path = conf.join("proftpd.conf");
    fs::write(&path, config).unwrap();
    let mut cmd = ns.command(PROFTPD_BIN);
    // -n: stay in the foreground; -c: our config instead of /etc/proftpd.
    cmd.arg("-n").arg("-c").arg(path);
    cmd
}

/// pyftpdlib; `extra` may hold `tls_cert=PATH` and `tls_key=PATH` lines, which make it
/// pyftpdlib's `TLS_FTPHandler` (explicit FTPS; needs python3-openssl).
fn pyftpdlib_command(ns: &Netns, addr: SocketAddr, root: &Path, extra: &str) -> Command {
    let setting = |key: &str| {
        extra
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .map(str::to_owned)
    };
    let tls = match (setting("tls_cert="), setting("tls_key=")) {
        (Some(cert), Some(key)) => format!(
            "from pyftpdlib.handlers import TLS_FTPHandler as FTPHandler\n\
             FTPHandler.certfile = {cert:?}\nFTPHandler.keyfile = {key:?}\n"
        ),
        _ => String::new(),
    };
    let script = format!(
        r#"
import logging, sys
from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import FTPHandler
from pyftpdlib.servers import FTPServer
{tls}
logging.basicConfig(level=logging.INFO, stream=sys.stderr)
auth = DummyAuthorizer()
auth.add_user({user:?}, {pw:?}, {root:?}, perm="elradfmwMT")
FTPHandler.authorizer = auth
FTPHandler.permit_foreign_addresses = False
server = FTPServer(({ip:?}, {port}), FTPHandler)
server.serve_forever()
"#,
        user = FTP_USER,
        pw = FTP_PASS,
        root = root.display().to_string(),
        ip = addr.ip().to_string(),
        port = addr.port(),
    );
    // Debian's python (the one on PATH may be a pyenv without pyftpdlib).
    let mut cmd = ns.command("/usr/bin/python3");
    cmd.arg("-c").arg(script);
    cmd
}

/// pure-ftpd in the foreground, configured on its command line only; `extra` holds
/// more options, whitespace-separated (e.g. `--tls=2 --certfile=CERT,KEY`). Its one
/// login is a PureDB virtual user ([`FTP_USER`]/[`FTP_PASS`]) running as the system
/// account and chrooted into the served root (`pure-pw -d`), so paths match the other
/// servers'. It logs to syslog only; transfers go to `xfer.log` in `conf`.
fn pure_ftpd_command(
    ns: &Netns,
    addr: SocketAddr,
    root: &Path,
    conf: &Path,
    extra: &str,
) -> Command {
    let (uid, gid) = user_ids(FTP_USER).expect("the test account (scripts/install-test-deps.sh)");
    let (passwd, pdb) = (conf.join("pureftpd.passwd"), conf.join("pureftpd.pdb"));
    let mut pw = Command::new(format!("{PURE_FTPD_DIR}/bin/pure-pw"));
    pw.args([
        "useradd",
        FTP_USER,
        "-u",
        &uid.to_string(),
        "-g",
        &gid.to_string(),
    ])
    .arg("-d")
    .arg(root)
    .arg("-f")
    .arg(&passwd)
    .arg("-m")
    .arg("-F")
    .arg(&pdb)
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = pw.spawn().expect("pure-pw");
    // pure-pw asks twice ("Password:", "Enter it again:") and reads stdin when it is
    // not a terminal.
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(format!("{FTP_PASS}\n{FTP_PASS}\n").as_bytes())
        .expect("password to pure-pw");
    let out = child.wait_with_output().expect("pure-pw");
    assert!(out.status.success(), "pure-pw useradd: {out:?}");
    let mut cmd = ns.command(&format!("{PURE_FTPD_DIR}/sbin/pure-ftpd"));
    cmd.arg(format!("--bind={},{}", addr.ip(), addr.port()))
        .arg(format!("--login=puredb:{}", pdb.display()))
        // No anonymous logins, no reverse DNS, the passive range of the other servers.
        .args([
            "--noanonymous",
            "--dontresolve",
            "--passiveportrange=40000:40999",
        ])
        .arg(format!(
            "--altlog=xferlog:{}",
            conf.join("xfer.log").display()
        ))
        .args(extra.split_whitespace());
    cmd
}
