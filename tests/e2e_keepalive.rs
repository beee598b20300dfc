//! End-to-end tests of keepalives, timeouts and ABOR (issue 4), with real
//! servers (vsftpd, proftpd), real clients (curl, lftp, Python ftplib) and a
//! real stateful firewall.
//!
//! The firewall tests put a connection-tracking firewall with a 3 s
//! established-flow timeout in the backend's namespace
//! ([`common::firewall::install_idle_dropping_firewall`]) and download a file
//! rate-limited to last several times that. Without keepalives the idle
//! control connection is forgotten and the server's `226` is dropped as
//! INVALID; with ftpgate's NOOP keepalive (or TCP keepalive) the transfer
//! completes byte-exact, and the client's transcript holds exactly the
//! replies to its own commands.
//!
//! Needs root and `scripts/install-test-deps.sh`; skips otherwise (fails if
//! `CI` is set).

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use common::addrs::*;
use common::clients::{self, FtpControl, FtpTarget, Transcript};
use common::firewall;
use common::proxy::Ftpgate;
use common::servers::{
    FtpServer, ServerKind, BIG_FILE, BIG_FILE_LEN, FTP_PASS, FTP_USER, LIST_DIR, SMALL_FILE,
};
use common::{sha256_bytes, sha256_file, Netns, ReverseTopology};

/// Established-flow timeout of the backend's firewall.
const CONNTRACK_TIMEOUT_SECS: u32 = 3;
/// The backend's uplink rate ([`firewall::slow_uplink`]): [`BIG_FILE`] (8 MiB)
/// takes about 8 s, several times [`CONNTRACK_TIMEOUT_SECS`]. (A client-side
/// limit such as `curl --limit-rate` does not slow the server down: the
/// kernel's socket buffers along the path absorb the whole file within a
/// second, and the server sends `226` before the conntrack entry expires.)
const RATE_BYTES_PER_SEC: usize = 1024 * 1024;
/// Upper bound of one rate-limited client run: the transfer's ~8 s plus
/// generous slack. A run without keepalives hangs waiting for `226` until it.
const SLOW_CLIENT_MAX_SECS: u64 = 20;
/// Admin (metrics) endpoint inside the proxy namespace (own loopback).
const METRICS_ADDR: &str = "127.0.0.1:9464";

// ---------------------------------------------------------------- helpers

fn ctx(gate: Option<&Ftpgate>, server: Option<&FtpServer>, fw: Option<&Netns>) -> String {
    let mut s = String::new();
    if let Some(g) = gate {
        s.push_str(&g.describe());
    }
    if let Some(server) = server {
        s.push_str(&format!(
            "--- {} logs ---\n{}\n",
            server.kind.name(),
            server.logs()
        ));
    }
    if let Some(ns) = fw {
        s.push_str(&firewall::describe(ns));
    }
    s
}

/// ftpgate options for `topo` with `extra` flags (e.g. `--noop-interval 1s`).
fn gate_options(topo: &ReverseTopology, extra: &[&str]) -> common::proxy::FtpgateOptions {
    let mut o = topo.ftpgate_options(topo.backend_addr());
    o.extra_args = extra.iter().map(|s| s.to_string()).collect();
    o
}

/// curl download giving up after
/// [`SLOW_CLIENT_MAX_SECS`] (exit 28) when the final reply never comes.
fn curl_slow_download(
    ns: &Netns,
    t: &FtpTarget,
    remote: &str,
    local: &Path,
    ty: TransferType,
) -> Transcript {
    let mut cmd = ns.command("curl");
    if ty == TransferType::Ascii {
        cmd.arg("--use-ascii");
    }
    cmd.args(["-v", "--silent", "--show-error", "--connect-timeout", "10"])
        .args(["--max-time", &SLOW_CLIENT_MAX_SECS.to_string()])
        .args(["--ftp-pasv", "--no-ftp-skip-pasv-ip"])
        .arg("--user")
        .arg(format!("{}:{}", t.user, t.pass))
        .arg("-o")
        .arg(local)
        .arg(t.url(remote));
    clients::run_within(cmd, Duration::from_secs(SLOW_CLIENT_MAX_SECS + 10))
}

/// lftp download. `net:timeout` bounds the wait for a reply: when the `226`
/// never arrives, lftp logs `Timeout - reconnecting` and opens a new session.
fn lftp_slow_download(
    ns: &Netns,
    t: &FtpTarget,
    remote: &str,
    local: &Path,
    ty: TransferType,
) -> Transcript {
    let script = format!(
        "set cmd:fail-exit yes; set net:max-retries 1; set net:persist-retries 0; \
         set net:timeout 6; \
         set ftp:ssl-allow no; set ftp:passive-mode on; set ftp:prefer-epsv yes; \
         set xfer:clobber yes; \
         open -u {user},{pass} {url}; get {ascii}{remote} -o {local}; bye",
        ascii = if ty == TransferType::Ascii { "-a " } else { "" },
        user = t.user,
        pass = t.pass,
        url = t.url(""),
        local = local.display(),
    );
    let mut cmd = ns.command("lftp");
    cmd.args(["-d", "-c", &script]);
    clients::run_within(cmd, Duration::from_secs(SLOW_CLIENT_MAX_SECS + 20))
}

/// One FTP dialogue as a client printed it: the commands it sent and the
/// complete replies it received (first line of each, multi-line aware).
#[derive(Debug)]
struct Dialogue {
    commands: Vec<String>,
    replies: Vec<String>,
}

/// Extracts the dialogue from a transcript whose sent lines start with `sent`
/// and received lines with `received` (curl -v: `> `/`< `; lftp -d:
/// `---> `/`<--- `).
fn dialogue(stderr: &str, sent: &str, received: &str) -> Dialogue {
    let mut commands = Vec::new();
    let mut replies = Vec::new();
    let mut open: Option<String> = None;
    for raw in stderr.lines() {
        let line = raw.trim_end_matches('\r');
        if let Some(c) = line.strip_prefix(sent) {
            commands.push(c.trim().to_owned());
        } else if let Some(r) = line.strip_prefix(received) {
            let b = r.as_bytes();
            let is_start = b.len() >= 4 && b[..3].iter().all(u8::is_ascii_digit);
            match &open {
                // RFC 959 §4.2: a multi-line reply ends at "<same code><SP>".
                Some(code) if r.starts_with(code.as_str()) && b.get(3) == Some(&b' ') => {
                    open = None;
                }
                Some(_) => {}
                None if is_start => {
                    replies.push(r.to_owned());
                    if b[3] == b'-' {
                        open = Some(r[..3].to_owned());
                    }
                }
                None => {}
            }
        }
    }
    Dialogue { commands, replies }
}

impl Dialogue {
    fn finals(&self) -> Vec<&String> {
        self.replies
            .iter()
            .filter(|r| !r.starts_with('1'))
            .collect()
    }

    /// The client saw exactly one final reply per command it sent (plus the
    /// banner), and none answering a NOOP it never sent. `quit_may_be_unanswered`:
    /// lftp may exit right after sending QUIT.
    fn assert_exact(&self, t: &Transcript, quit_may_be_unanswered: bool, context: &str) {
        let sent_noop = self.commands.iter().any(|c| c.eq_ignore_ascii_case("NOOP"));
        assert!(
            sent_noop
                || !self
                    .replies
                    .iter()
                    .any(|r| r.to_ascii_uppercase().contains("NOOP")),
            "the client received a NOOP reply it never asked for: {self:?}\n{t}\n{context}"
        );
        let finals = self.finals().len();
        let mut expected = self.commands.len() + 1;
        if quit_may_be_unanswered
            && finals + 1 == expected
            && self
                .commands
                .last()
                .is_some_and(|c| c.eq_ignore_ascii_case("QUIT"))
        {
            expected -= 1;
        }
        assert_eq!(
            finals, expected,
            "replies do not match commands one to one: {self:?}\n{t}\n{context}"
        );
        assert!(
            self.replies.first().is_some_and(|r| r.starts_with("220")),
            "first reply must be the banner: {self:?}\n{t}"
        );
    }

    /// The final reply that followed the `RETR` command.
    fn retr_final(&self) -> Option<String> {
        let idx = self
            .commands
            .iter()
            .position(|c| c.to_ascii_uppercase().starts_with("RETR "))?;
        // Banner + one final per earlier command, then RETR's 1xx and final.
        let finals = self.finals();
        finals.get(idx + 1).map(|s| s.to_string())
    }
}

/// Polls (bounded) until `pred` holds on ftpgate's logs.
fn wait_for_log(gate: &Ftpgate, what: &str, bound: Duration, pred: impl Fn(&str) -> bool) {
    let deadline = Instant::now() + bound;
    while Instant::now() < deadline {
        if pred(&gate.logs()) {
            return;
        }
        // Polling the real signal (the log line), bounded by `deadline`.
        thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "ftpgate never logged {what} within {bound:?}\n{}",
        ctx(Some(gate), None, None)
    );
}

/// `GET /metrics` from inside the proxy namespace; the value of `series`
/// (exact series text, e.g. `ftpgate_timeouts_total{kind="login"}`).
fn metric(topo: &ReverseTopology, series: &str) -> Option<f64> {
    let addr: SocketAddr = METRICS_ADDR.parse().unwrap();
    let body = topo
        .proxy
        .spawn_thread(move || -> std::io::Result<String> {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
            let mut out = String::new();
            s.read_to_string(&mut out)?;
            Ok(out)
        })
        .join()
        .expect("metrics thread")
        .unwrap_or_else(|e| panic!("GET /metrics on {METRICS_ADDR}: {e}"));
    body.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l[series.len()..].trim().parse().ok())
}

fn timeouts_metric(topo: &ReverseTopology, kind: &str) -> f64 {
    metric(topo, &format!("ftpgate_timeouts_total{{kind=\"{kind}\"}}")).unwrap_or(0.0)
}

/// The server's record of NOOPs, in the order it processed them relative to
/// the transfer: vsftpd's protocol log (`log_ftp_protocol`), proftpd's
/// ExtendedLog. Returned for the report; the assertions are on the client.
fn server_noop_evidence(server: &FtpServer) -> String {
    server
        .logs()
        .lines()
        .filter(|l| {
            let u = l.to_ascii_uppercase();
            u.contains("NOOP") || u.contains("RETR") || u.contains("\"226") || u.contains(" 226 ")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

// ------------------------------------------------------- firewall tests

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Client {
    Curl,
    Lftp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Keepalive {
    /// `--noop-interval 0 --tcp-keepalive 0`.
    Off,
    /// `--noop-interval 1s --tcp-keepalive 0`: NOOPs alone.
    Noop,
    /// `--noop-interval 0 --tcp-keepalive 1s` with a 1 s probe interval (YAML
    /// `keepalive.tcp.interval`): TCP keepalive probes alone.
    Tcp,
}

/// How the file is transferred. The two servers differ in when they answer a
/// NOOP that arrives during a download: vsftpd reads its control connection
/// only after the transfer, so it answers after `226`; proftpd answers at
/// once ("200 NOOP: data transfer in progress", before `226`) when it relays
/// the data itself, i.e. in ASCII mode, but not in binary mode, where it
/// hands the file to sendfile(2) and answers after `226` like vsftpd.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TransferType {
    Binary,
    Ascii,
}

/// A file whose ASCII-mode transfer is the identity: [`BIG_FILE`]'s bytes
/// without CR and LF (no line-ending conversion on either side). Returns its
/// path relative to the login directory and its SHA-256.
fn ascii_safe_file(server: &FtpServer) -> (String, String) {
    let mut bytes = std::fs::read(server.root.path().join(BIG_FILE)).expect("read big file");
    bytes.retain(|b| *b != b'\n' && *b != b'\r');
    let rel = format!("{LIST_DIR}/text.bin");
    let path = server.root.path().join(&rel);
    std::fs::write(&path, &bytes).expect("write text file");
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .expect("chmod");
    (rel, sha256_bytes(&bytes))
}

/// A download of about 8 MiB through ftpgate from a backend behind a slow
/// uplink whose firewall forgets idle flows after [`CONNTRACK_TIMEOUT_SECS`].
fn through_idle_firewall(kind: ServerKind, client: Client, keepalive: Keepalive, ty: TransferType) {
    let topo = ReverseTopology::new();
    firewall::install_idle_dropping_firewall(&topo.backend, CONNTRACK_TIMEOUT_SECS);
    firewall::slow_uplink(&topo.backend, "eth0", RATE_BYTES_PER_SEC);
    let server = topo.start_backend(kind);
    let work = tempfile::tempdir().unwrap();
    let mut extra: Vec<String> = match keepalive {
        Keepalive::Off => vec!["--noop-interval", "0", "--tcp-keepalive", "0"],
        Keepalive::Noop => vec!["--noop-interval", "1s", "--tcp-keepalive", "0"],
        Keepalive::Tcp => vec!["--noop-interval", "0", "--tcp-keepalive", "1s"],
    }
    .into_iter()
    .map(String::from)
    .collect();
    if keepalive == Keepalive::Tcp {
        // Probe interval is a file-only setting; flags override the rest.
        let yaml = work.path().join("ftpgate.yaml");
        std::fs::write(
            &yaml,
            "keepalive:\n  tcp:\n    idle: 1s\n    interval: 1s\n    count: 4\n",
        )
        .unwrap();
        extra.extend(["--config".to_string(), yaml.display().to_string()]);
    }
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let gate = topo.start_ftpgate(gate_options(&topo, &extra));
    let target = FtpTarget::new(topo.proxy_v4());
    let (remote, want) = match ty {
        TransferType::Binary => (BIG_FILE.to_string(), server.root.big_sha256().to_string()),
        TransferType::Ascii => ascii_safe_file(&server),
    };
    let out = work.path().join("download.bin");
    let context = || ctx(Some(&gate), Some(&server), Some(&topo.backend));

    let (t, d) = match client {
        Client::Curl => {
            let t = curl_slow_download(&topo.client, &target, &remote, &out, ty);
            let d = dialogue(&t.stderr, "> ", "< ");
            (t, d)
        }
        Client::Lftp => {
            let t = lftp_slow_download(&topo.client, &target, &remote, &out, ty);
            let d = dialogue(&t.stderr, "---> ", "<--- ");
            (t, d)
        }
    };
    let dropped = firewall::invalid_drops(&topo.backend, "OUTPUT");
    let noops = gate
        .logs()
        .matches("keepalive NOOP sent to backend")
        .count();
    eprintln!(
        "{kind:?}/{client:?}/{keepalive:?}/{ty:?}: exit {:?} timed_out {}, INVALID drops in \
         OUTPUT: {dropped}, keepalive NOOPs: {noops}\nclient dialogue: {d:?}\n\
         server's view of NOOP/RETR:\n{}",
        t.code,
        t.timed_out,
        server_noop_evidence(&server)
    );

    if keepalive == Keepalive::Off {
        // The firewall dropped the server's 226 (and its retransmissions):
        // the client never learns that the transfer ended.
        assert!(
            t.reply_lines("226").is_empty(),
            "the client must not have received 226:\n{t}\n{}",
            context()
        );
        assert!(
            dropped > 0,
            "the firewall should have dropped the server's packets as INVALID:\n{t}\n{}",
            context()
        );
        assert_eq!(noops, 0, "--noop-interval 0 must not inject NOOPs");
        match client {
            // 28: "Operation timeout" (--max-time) while waiting for 226.
            Client::Curl => assert_eq!(t.code, Some(28), "curl should time out:\n{t}"),
            // lftp gives up on the silent control connection and logs in
            // again; having all the bytes, it does not repeat the RETR.
            Client::Lftp => assert!(
                t.stderr.contains("Timeout - reconnecting"),
                "lftp should have timed out waiting for 226:\n{t}"
            ),
        }
        return;
    }

    t.assert_success(&context());
    assert_eq!(sha256_file(&out), want, "bytes differ\n{t}");
    assert!(
        !t.stderr.contains("Timeout"),
        "the client timed out somewhere:\n{t}\n{}",
        context()
    );
    match keepalive {
        Keepalive::Noop => assert!(
            noops >= 3,
            "a transfer of about 8 s should have carried several NOOPs, got {noops}\n{}",
            context()
        ),
        _ => assert_eq!(noops, 0, "--noop-interval 0 must not inject NOOPs"),
    }
    d.assert_exact(&t, client == Client::Lftp, &context());
    assert!(
        d.retr_final().is_some_and(|r| r.starts_with("226")),
        "RETR's final reply must be 226: {d:?}\n{t}"
    );
}

macro_rules! firewall_test {
    ($name:ident, $kind:ident, $client:ident, $ka:ident, $ty:ident) => {
        #[test]
        fn $name() {
            if common::e2e_enabled(stringify!($name)) {
                through_idle_firewall(
                    ServerKind::$kind,
                    Client::$client,
                    Keepalive::$ka,
                    TransferType::$ty,
                );
            }
        }
    };
}

// vsftpd answers keepalive NOOPs after 226.
firewall_test!(
    idle_firewall_vsftpd_curl_no_keepalive_fails,
    Vsftpd,
    Curl,
    Off,
    Binary
);
firewall_test!(
    idle_firewall_vsftpd_curl_noop_keepalive_succeeds,
    Vsftpd,
    Curl,
    Noop,
    Binary
);
firewall_test!(
    idle_firewall_vsftpd_lftp_no_keepalive_fails,
    Vsftpd,
    Lftp,
    Off,
    Binary
);
firewall_test!(
    idle_firewall_vsftpd_lftp_noop_keepalive_succeeds,
    Vsftpd,
    Lftp,
    Noop,
    Binary
);
// proftpd in ASCII mode answers them during the transfer, before 226 ...
firewall_test!(
    idle_firewall_proftpd_curl_no_keepalive_fails,
    Proftpd,
    Curl,
    Off,
    Ascii
);
firewall_test!(
    idle_firewall_proftpd_curl_noop_keepalive_succeeds,
    Proftpd,
    Curl,
    Noop,
    Ascii
);
firewall_test!(
    idle_firewall_proftpd_lftp_no_keepalive_fails,
    Proftpd,
    Lftp,
    Off,
    Ascii
);
firewall_test!(
    idle_firewall_proftpd_lftp_noop_keepalive_succeeds,
    Proftpd,
    Lftp,
    Noop,
    Ascii
);
// ... and in binary mode (sendfile) after 226.
firewall_test!(
    idle_firewall_proftpd_binary_curl_noop_keepalive_succeeds,
    Proftpd,
    Curl,
    Noop,
    Binary
);
// TCP keepalive probes alone also keep the firewall's entry alive.
firewall_test!(
    idle_firewall_vsftpd_curl_tcp_keepalive_succeeds,
    Vsftpd,
    Curl,
    Tcp,
    Binary
);

// ---------------------------------------------------------------- ABOR

/// How the client aborts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Abort {
    /// Python ftplib's `FTP.abort()`: `ABOR\r\n` sent with MSG_OOB (the last
    /// byte is TCP urgent data), after closing the data connection.
    Ftplib,
    /// RFC 959 §4.1.3 as BSD ftp does it: Telnet IP (`IAC IP`) in line, the
    /// Synch's `IAC` as TCP urgent data, then `DM ABOR\r\n`; the data
    /// connection is closed afterwards.
    TelnetSynch,
}

/// A Python ftplib session that starts a download of `remote`, reads it for
/// 2.5 s (the backend's slow uplink keeps the transfer running), aborts it,
/// and then uses the session: NOOP, NLST, a small download, QUIT. Prints one
/// `KEY value` line per step.
fn ftplib_abort_script(addr: SocketAddr, remote: &str, how: Abort) -> String {
    format!(
        r#"
import ftplib, hashlib, socket, sys, time
def out(k, v): print(k, v, flush=True)
ftp = ftplib.FTP(timeout=20)
ftp.trust_server_pasv_ipv4_address = True
ftp.connect({host:?}, {port})
ftp.login({user:?}, {pw:?})
ftp.voidcmd("TYPE I")
conn = ftp.transfercmd("RETR " + {remote:?})
got, t0 = 0, time.monotonic()
while time.monotonic() - t0 < 2.5:
    chunk = conn.recv(65536)
    if not chunk:
        break
    got += len(chunk)
out("READ", got)
replies = []
if {synch}:
    ftp.sock.sendall(b"\xff\xf4")
    ftp.sock.sendall(b"\xff", socket.MSG_OOB)
    ftp.sock.sendall(b"\xf2ABOR\r\n")
    conn.close()
    replies.append(ftp.getmultiline())
else:
    conn.close()
    replies.append(ftp.abort())
# RETR's final reply (426 when aborted, 226 when it had completed) and ABOR's
# (225/226): two replies; a short timeout ends the wait if a server sends one.
ftp.sock.settimeout(3)
try:
    while len(replies) < 2:
        replies.append(ftp.getmultiline())
except (socket.timeout, TimeoutError):
    out("NOMORE", len(replies))
ftp.sock.settimeout(20)
for r in replies:
    out("ABORT-REPLY", r)
out("NOOP", ftp.sendcmd("NOOP"))
out("NLST", ",".join(sorted(n.rsplit("/", 1)[-1] for n in ftp.nlst({list_dir:?}))))
h = hashlib.sha256()
out("SMALL-RETR", ftp.retrbinary("RETR " + {small:?}, h.update))
out("SMALL-SHA", h.hexdigest())
out("QUIT", ftp.quit())
"#,
        host = addr.ip().to_string(),
        port = addr.port(),
        user = FTP_USER,
        pw = FTP_PASS,
        remote = remote,
        synch = if how == Abort::TelnetSynch {
            "True"
        } else {
            "False"
        },
        list_dir = LIST_DIR,
        small = SMALL_FILE,
    )
}

fn run_ftplib(ns: &Netns, script: &str) -> Transcript {
    // Debian's python (the one on PATH may be a pyenv build).
    let mut cmd = ns.command("/usr/bin/python3");
    cmd.arg("-c").arg(script);
    clients::run_within(cmd, Duration::from_secs(60))
}

/// Values of `KEY value` lines printed by [`ftplib_abort_script`].
fn values(t: &Transcript, key: &str) -> Vec<String> {
    t.stdout
        .lines()
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix(' ').map(str::to_owned))
        .collect()
}

fn codes(replies: &[String]) -> Vec<String> {
    replies
        .iter()
        .map(|r| r.chars().take(3).collect())
        .collect()
}

/// ABOR in the middle of a download through ftpgate (with 1 s keepalive
/// NOOPs outstanding at the server) gives the client exactly the replies the
/// same client gets from the server directly, and the session stays usable.
fn abort_mid_download(kind: ServerKind, how: Abort) {
    let topo = ReverseTopology::new();
    firewall::slow_uplink(&topo.backend, "eth0", RATE_BYTES_PER_SEC);
    let server = topo.start_backend(kind);
    let gate = topo.start_ftpgate(gate_options(&topo, &["--noop-interval", "1s"]));
    let context = || ctx(Some(&gate), Some(&server), None);
    let small_sha = sha256_file(&server.root.path().join(SMALL_FILE));

    // The server's own behaviour, from the proxy host without ftpgate. Not
    // for ftplib's abort(): proftpd (without SO_OOBINLINE) loses the urgent
    // last byte of "ABOR\r\n" and never answers ABOR when talked to directly
    // (ftplib's docstring admits its shortcut "doesn't seem to work").
    let direct = (how == Abort::TelnetSynch).then(|| {
        let t = run_ftplib(
            &topo.proxy,
            &ftplib_abort_script(topo.backend_addr(), BIG_FILE, how),
        );
        t.assert_success(&context());
        t
    });
    let proxied = run_ftplib(
        &topo.client,
        &ftplib_abort_script(topo.proxy_v4(), BIG_FILE, how),
    );
    let noops = gate
        .logs()
        .matches("keepalive NOOP sent to backend")
        .count();
    eprintln!(
        "{kind:?}/{how:?}: direct:\n{}\nthrough ftpgate ({noops} keepalive NOOPs):\n{}",
        direct
            .as_ref()
            .map(|t| t.stdout.as_str())
            .unwrap_or("(not run)"),
        proxied.stdout
    );
    proxied.assert_success(&context());

    for t in direct.iter().chain([&proxied]) {
        let read: usize = values(t, "READ")[0].parse().unwrap();
        assert!(
            read > 0 && read < BIG_FILE_LEN,
            "the abort should happen mid-transfer (read {read} bytes)\n{t}"
        );
        let replies = values(t, "ABORT-REPLY");
        let c = codes(&replies);
        // RETR's final reply, then ABOR's.
        assert_eq!(
            c.len(),
            2,
            "two replies expected after ABOR: {replies:?}\n{t}"
        );
        assert!(
            c[0] == "426" || c[0] == "226",
            "RETR must end in 426 (aborted) or 226: {replies:?}\n{t}"
        );
        assert!(
            c[1] == "225" || c[1] == "226",
            "ABOR must be answered with 225 or 226: {replies:?}\n{t}"
        );
        assert!(
            values(t, "NOOP")[0].starts_with("200"),
            "the session must be usable after ABOR:\n{t}"
        );
        assert_eq!(
            values(t, "NLST"),
            vec!["big.bin,hello.txt".to_string()],
            "listing after ABOR\n{t}"
        );
        assert!(values(t, "SMALL-RETR")[0].starts_with("226"), "{t}");
        assert_eq!(values(t, "SMALL-SHA"), vec![small_sha.clone()], "{t}");
        assert!(values(t, "QUIT")[0].starts_with("221"), "{t}");
    }
    // Through ftpgate the client sees what the server says, reply for
    // reply: no keepalive NOOP reply leaks, none of its own goes missing.
    if let Some(direct) = &direct {
        for key in ["ABORT-REPLY", "NOOP", "SMALL-RETR", "QUIT"] {
            assert_eq!(
                codes(&values(&proxied, key)),
                codes(&values(direct, key)),
                "{key}: replies through ftpgate differ from the server's own\n\
                 direct:\n{direct}\nthrough ftpgate:\n{proxied}\n{}",
                context()
            );
        }
        assert_eq!(
            values(&proxied, "NOOP"),
            values(direct, "NOOP"),
            "the reply to the client's NOOP must be the server's answer to it"
        );
    }
    assert!(
        noops >= 1,
        "the 2.5 s transfer should have carried keepalive NOOPs\n{}",
        context()
    );
}

#[test]
fn abort_ftplib_vsftpd() {
    if common::e2e_enabled("abort_ftplib_vsftpd") {
        abort_mid_download(ServerKind::Vsftpd, Abort::Ftplib);
    }
}

#[test]
fn abort_ftplib_proftpd() {
    if common::e2e_enabled("abort_ftplib_proftpd") {
        abort_mid_download(ServerKind::Proftpd, Abort::Ftplib);
    }
}

#[test]
fn abort_telnet_synch_vsftpd() {
    if common::e2e_enabled("abort_telnet_synch_vsftpd") {
        abort_mid_download(ServerKind::Vsftpd, Abort::TelnetSynch);
    }
}

#[test]
fn abort_telnet_synch_proftpd() {
    if common::e2e_enabled("abort_telnet_synch_proftpd") {
        abort_mid_download(ServerKind::Proftpd, Abort::TelnetSynch);
    }
}

// ---------------------------------------------------------------- timeouts

/// Generous bound for "the timeout fired": short timeouts (1–2 s) plus slack
/// for a loaded machine. Not a timing assertion, a liveness bound.
const FIRE_BOUND: Duration = Duration::from_secs(15);

/// Runs `f` with a control connection from the client namespace; an error
/// carries the control transcript.
fn in_client<T: Send + 'static>(
    topo: &ReverseTopology,
    f: impl FnOnce(&mut FtpControl) -> std::io::Result<T> + Send + 'static,
) -> Result<(T, String), String> {
    let addr = topo.proxy_v4();
    topo.client
        .spawn_thread(move || {
            let mut c = FtpControl::connect(addr).map_err(|e| format!("connect: {e}"))?;
            match f(&mut c) {
                Ok(v) => Ok((v, c.transcript)),
                Err(e) => Err(format!("{e}\n{}", c.transcript)),
            }
        })
        .join()
        .expect("client thread")
}

/// Reads the reply ftpgate sends on its own (the timeout's `421`), then
/// requires EOF. Returns the reply and how long it took.
fn expect_421_then_eof(c: &mut FtpControl) -> std::io::Result<(String, Duration)> {
    let started = Instant::now();
    let (code, text) = c.read_reply()?;
    let took = started.elapsed();
    if code != 421 {
        return Err(std::io::Error::other(format!("expected 421, got {text:?}")));
    }
    match c.read_reply() {
        Err(e) if e.to_string().contains("control closed") => Ok((text, took)),
        other => Err(std::io::Error::other(format!(
            "expected EOF after 421, got {other:?}"
        ))),
    }
}

fn with_metrics(extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    v.extend(["--metrics".to_string(), METRICS_ADDR.to_string()]);
    v
}

fn gate_with(topo: &ReverseTopology, extra: &[&str]) -> Ftpgate {
    let args = with_metrics(extra);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    topo.start_ftpgate(gate_options(topo, &args))
}

/// `--login-timeout 1s`: a client that connects and never logs in, and one
/// that stops after USER, get `421` and EOF; a client that logged in is not
/// affected.
#[test]
fn login_timeout_closes_unauthenticated_sessions() {
    if !common::e2e_enabled("login_timeout_closes_unauthenticated_sessions") {
        return;
    }
    let topo = ReverseTopology::new();
    let server = topo.start_backend(ServerKind::Vsftpd);
    let gate = gate_with(&topo, &["--login-timeout", "1s", "--idle-timeout", "0"]);
    let context = || ctx(Some(&gate), Some(&server), None);

    // Logged in before the others connect: still alive after their timeouts.
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let addr = topo.proxy_v4();
    let logged_in = topo.client.spawn_thread(move || {
        let mut c = FtpControl::connect(addr).map_err(|e| e.to_string())?;
        let r = (|| -> std::io::Result<String> {
            c.login(FTP_USER, FTP_PASS)?;
            go_rx
                .recv_timeout(Duration::from_secs(60))
                .map_err(std::io::Error::other)?;
            c.expect("NOOP", 200)
        })();
        r.map_err(|e| format!("{e}\n{}", c.transcript))
    });

    let silent = in_client(&topo, expect_421_then_eof);
    let after_user = in_client(&topo, |c| {
        c.expect(&format!("USER {FTP_USER}"), 331)?;
        expect_421_then_eof(c)
    });
    go_tx.send(()).unwrap();
    let logged_in = logged_in.join().expect("thread");

    for (what, r) in [("no command", &silent), ("USER only", &after_user)] {
        let ((text, took), transcript) = r
            .as_ref()
            .unwrap_or_else(|e| panic!("{what}: {e}\n{}", context()));
        eprintln!("login timeout ({what}): {text:?} after {took:?}\n{transcript}");
        assert!(
            *took < FIRE_BOUND,
            "{what}: 421 took {took:?}\n{}",
            context()
        );
    }
    logged_in.unwrap_or_else(|e| panic!("logged-in session was closed: {e}\n{}", context()));
    // The metric says which timeout fired and how often; the log is not asserted on.
    assert_eq!(timeouts_metric(&topo, "login"), 2.0, "{}", context());
}

/// `--idle-timeout 2s`: a download lasting about 8 s is not idle time; once
/// the session sits without command or transfer, the client gets `421`.
#[test]
fn idle_timeout_spares_transfers_and_closes_idle_sessions() {
    if !common::e2e_enabled("idle_timeout_spares_transfers_and_closes_idle_sessions") {
        return;
    }
    let topo = ReverseTopology::new();
    firewall::slow_uplink(&topo.backend, "eth0", RATE_BYTES_PER_SEC);
    let server = topo.start_backend(ServerKind::Vsftpd);
    let gate = gate_with(&topo, &["--idle-timeout", "2s"]);
    let context = || ctx(Some(&gate), Some(&server), None);

    let r = in_client(&topo, |c| {
        c.login(FTP_USER, FTP_PASS)?;
        c.expect("TYPE I", 200)?;
        let data = c.pasv()?;
        let mut d = TcpStream::connect_timeout(&data, Duration::from_secs(10))?;
        d.set_read_timeout(Some(Duration::from_secs(30)))?;
        c.send(&format!("RETR {BIG_FILE}"))?;
        let (code, text) = c.read_reply()?;
        if code != 150 {
            return Err(std::io::Error::other(format!("RETR: {text}")));
        }
        let started = Instant::now();
        let mut body = Vec::new();
        d.read_to_end(&mut body)?;
        let transfer = started.elapsed();
        // Like every real client: the data connection ends in both directions.
        drop(d);
        let (code, text) = c.read_reply()?;
        if code != 226 {
            return Err(std::io::Error::other(format!("after RETR: {text}")));
        }
        // Still alive right after a transfer longer than the idle timeout.
        c.expect("NOOP", 200)?;
        let (reply, took) = expect_421_then_eof(c)?;
        Ok((sha256_bytes(&body), transfer, reply, took))
    });
    let ((sha, transfer, reply, took), transcript) =
        r.unwrap_or_else(|e| panic!("{e}\n{}", context()));
    eprintln!("idle timeout: transfer {transfer:?}, then {reply:?} after {took:?}\n{transcript}");
    assert_eq!(sha, server.root.big_sha256(), "bytes differ");
    assert!(
        transfer > Duration::from_secs(2),
        "the transfer must outlast the idle timeout for this test to mean anything ({transfer:?})"
    );
    assert!(took < FIRE_BOUND, "421 took {took:?}\n{}", context());
    assert_eq!(timeouts_metric(&topo, "idle"), 1.0, "{}", context());
}

/// `--data-connect-timeout 1s`: after PASV the client never connects; the
/// mapped port is released (a later connection is refused), the timeout is
/// logged and counted, nothing unsolicited reaches the client, and the session
/// still transfers files.
#[test]
fn data_connect_timeout_releases_the_port() {
    if !common::e2e_enabled("data_connect_timeout_releases_the_port") {
        return;
    }
    let topo = ReverseTopology::new();
    let server = topo.start_backend(ServerKind::Vsftpd);
    let gate = gate_with(&topo, &["--data-connect-timeout", "1s"]);
    let context = || ctx(Some(&gate), Some(&server), None);

    let (port_tx, port_rx) = std::sync::mpsc::channel();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let addr = topo.proxy_v4();
    let client = topo.client.spawn_thread(move || {
        let mut c = FtpControl::connect(addr).map_err(|e| e.to_string())?;
        let r = (|| -> std::io::Result<(std::io::Result<TcpStream>, String)> {
            c.login(FTP_USER, FTP_PASS)?;
            c.expect("TYPE I", 200)?;
            let data = c.pasv()?;
            port_tx.send(data).map_err(std::io::Error::other)?;
            go_rx
                .recv_timeout(Duration::from_secs(60))
                .map_err(std::io::Error::other)?;
            // The timed-out mapping: no listener any more.
            let late = TcpStream::connect_timeout(&data, Duration::from_secs(5));
            // The next reply is the one to this NOOP: nothing unsolicited.
            c.expect("NOOP", 200)?;
            let port = c.epsv()?;
            let mut d = TcpStream::connect_timeout(
                &SocketAddr::new(addr.ip(), port),
                Duration::from_secs(10),
            )?;
            d.set_read_timeout(Some(Duration::from_secs(30)))?;
            c.send(&format!("RETR {BIG_FILE}"))?;
            let (code, text) = c.read_reply()?;
            if code != 150 {
                return Err(std::io::Error::other(format!("RETR: {text}")));
            }
            let mut body = Vec::new();
            d.read_to_end(&mut body)?;
            drop(d);
            let (code, text) = c.read_reply()?;
            if code != 226 {
                return Err(std::io::Error::other(format!("after RETR: {text}")));
            }
            Ok((late, sha256_bytes(&body)))
        })();
        r.map(|v| (v, c.transcript.clone()))
            .map_err(|e| format!("{e}\n{}", c.transcript))
    });

    let data = port_rx
        .recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("no passive port ({e})\n{}", context()));
    let started = Instant::now();
    wait_for_log(&gate, "the data-connect timeout", FIRE_BOUND, |l| {
        l.contains(&format!("on port {} within timeout", data.port()))
    });
    eprintln!("data-connect timeout logged after {:?}", started.elapsed());
    go_tx.send(()).unwrap();
    let ((late, sha), transcript) = client
        .join()
        .expect("client thread")
        .unwrap_or_else(|e| panic!("{e}\n{}", context()));
    eprintln!("late connection to {data}: {late:?}\n{transcript}");
    match late {
        Err(e) => assert_eq!(
            e.kind(),
            std::io::ErrorKind::ConnectionRefused,
            "a connection after the timeout must be refused, got {e}\n{}",
            context()
        ),
        Ok(_) => panic!(
            "{data} still accepted a connection after the data-connect timeout\n{}",
            context()
        ),
    }
    assert_eq!(sha, server.root.big_sha256(), "bytes differ\n{transcript}");
    assert_eq!(timeouts_metric(&topo, "data_connect"), 1.0, "{}", context());
}

/// `--backend-connect-timeout 1s` against a backend whose SYNs are dropped:
/// the client gets `421` within a generous bound, then EOF.
#[test]
fn backend_connect_timeout_answers_421() {
    if !common::e2e_enabled("backend_connect_timeout_answers_421") {
        return;
    }
    let topo = ReverseTopology::new();
    firewall::drop_syns_to_port(&topo.backend, FTP_PORT);
    let gate = gate_with(&topo, &["--backend-connect-timeout", "1s"]);
    let context = || ctx(Some(&gate), None, Some(&topo.backend));

    let addr = topo.proxy_v4();
    let (text, took, rest) = topo
        .client
        .spawn_thread(move || -> std::io::Result<(String, Duration, Vec<u8>)> {
            let started = Instant::now();
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
            s.set_read_timeout(Some(FIRE_BOUND))?;
            let mut all = Vec::new();
            s.read_to_end(&mut all)?;
            let took = started.elapsed();
            let text = String::from_utf8_lossy(&all).into_owned();
            let first_len = text.find("\r\n").map_or(all.len(), |i| i + 2);
            Ok((
                text[..first_len].to_owned(),
                took,
                all[first_len..].to_vec(),
            ))
        })
        .join()
        .expect("client thread")
        .unwrap_or_else(|e| panic!("client: {e}\n{}", context()));
    eprintln!("backend connect timeout: {text:?} after {took:?}");
    assert!(
        text.starts_with("421 "),
        "the client must get 421, got {text:?}\n{}",
        context()
    );
    assert!(rest.is_empty(), "nothing may follow the 421: {rest:?}");
    assert!(took < FIRE_BOUND, "421 took {took:?}\n{}", context());
    assert!(
        timeouts_metric(&topo, "backend_connect") >= 1.0,
        "the backend connect timeout must be counted\n{}",
        context()
    );
}

// ---------------------------------------------------------- TCP keepalive

/// `ss` lines of ftpgate's established control sockets in the proxy
/// namespace: the client-facing one (local port 21) and the backend-facing
/// one (peer port 21).
fn control_sockets(topo: &ReverseTopology) -> Vec<String> {
    let out = topo
        .proxy
        .run_ok("ss", &["-t", "-n", "-o", "-H", "state", "established"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.split_whitespace().any(|t| t.ends_with(":21")))
        .map(str::to_owned)
        .collect()
}

/// `--tcp-keepalive 1s` arms TCP keepalive on both control sockets of a
/// session (the kernel shows a `keepalive` timer); `--tcp-keepalive 0` arms
/// it on neither.
#[test]
fn tcp_keepalive_on_both_control_sockets() {
    if !common::e2e_enabled("tcp_keepalive_on_both_control_sockets") {
        return;
    }
    let topo = ReverseTopology::new();
    let server = topo.start_backend(ServerKind::Vsftpd);
    for (flag, armed) in [("1s", true), ("0", false)] {
        let gate = topo.start_ftpgate(gate_options(&topo, &["--tcp-keepalive", flag]));
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
        let addr = topo.proxy_v4();
        let client = topo.client.spawn_thread(move || -> std::io::Result<()> {
            let mut c = FtpControl::connect(addr)?;
            c.login(FTP_USER, FTP_PASS)?;
            ready_tx.send(()).map_err(std::io::Error::other)?;
            go_rx
                .recv_timeout(Duration::from_secs(60))
                .map_err(std::io::Error::other)?;
            c.expect("QUIT", 221).map(|_| ())
        });
        if let Err(e) = ready_rx.recv_timeout(Duration::from_secs(30)) {
            panic!("client did not log in ({e}): {:?}", client.join());
        }
        // The last reply may still await its ACK (a retransmission timer,
        // `timer:(on`, shows then); poll until both sockets are quiet.
        let deadline = Instant::now() + Duration::from_secs(10);
        let sockets = loop {
            let s = control_sockets(&topo);
            if Instant::now() >= deadline || !s.iter().any(|l| l.contains("timer:(on")) {
                break s;
            }
            thread::sleep(Duration::from_millis(50));
        };
        go_tx.send(()).unwrap();
        client
            .join()
            .expect("thread")
            .unwrap_or_else(|e| panic!("client: {e}\n{}", ctx(Some(&gate), Some(&server), None)));
        eprintln!("--tcp-keepalive {flag}:\n{}", sockets.join("\n"));
        let client_side: Vec<_> = sockets
            .iter()
            .filter(|l| l.contains(&format!("{CLIENT_V4}:")))
            .collect();
        let backend_side: Vec<_> = sockets
            .iter()
            .filter(|l| l.contains(&format!("{BACKEND_V4}:21")))
            .collect();
        assert_eq!(
            client_side.len(),
            1,
            "client-side control socket: {sockets:?}"
        );
        assert_eq!(
            backend_side.len(),
            1,
            "backend-side control socket: {sockets:?}"
        );
        for (side, line) in [("client", client_side[0]), ("backend", backend_side[0])] {
            assert_eq!(
                line.contains("timer:(keepalive"),
                armed,
                "--tcp-keepalive {flag}: {side}-side control socket: {line}"
            );
        }
    }
}

// ------------------------------------------- the client's own NOOP mid-transfer

/// A client sends its own NOOP 2.5 s into a download (after ftpgate has
/// injected keepalive NOOPs): through ftpgate it receives the same replies, in
/// the same order, as from the server directly: proftpd in ASCII mode
/// answers at once ("200 NOOP: data transfer in progress", then 226), vsftpd
/// after the transfer (226, then 200).
fn client_noop_mid_transfer(kind: ServerKind, ty: TransferType) {
    let topo = ReverseTopology::new();
    firewall::slow_uplink(&topo.backend, "eth0", RATE_BYTES_PER_SEC);
    let server = topo.start_backend(kind);
    let gate = topo.start_ftpgate(gate_options(&topo, &["--noop-interval", "1s"]));
    let context = || ctx(Some(&gate), Some(&server), None);
    let (remote, want) = match ty {
        TransferType::Binary => (BIG_FILE.to_string(), server.root.big_sha256().to_string()),
        TransferType::Ascii => ascii_safe_file(&server),
    };

    let run = |ns: &Netns, addr: SocketAddr| {
        let remote = remote.clone();
        ns.spawn_thread(move || -> Result<(Vec<String>, String, String), String> {
            let mut c = FtpControl::connect(addr).map_err(|e| e.to_string())?;
            let r = (|| -> std::io::Result<(Vec<String>, String)> {
                c.login(FTP_USER, FTP_PASS)?;
                c.expect(
                    if ty == TransferType::Ascii {
                        "TYPE A"
                    } else {
                        "TYPE I"
                    },
                    200,
                )?;
                let data = c.pasv()?;
                let mut d = TcpStream::connect_timeout(&data, Duration::from_secs(10))?;
                d.set_read_timeout(Some(Duration::from_secs(30)))?;
                c.send(&format!("RETR {remote}"))?;
                let (code, text) = c.read_reply()?;
                if code != 150 {
                    return Err(std::io::Error::other(format!("RETR: {text}")));
                }
                let reader = thread::spawn(move || {
                    let mut body = Vec::new();
                    d.read_to_end(&mut body).map(|_| sha256_bytes(&body))
                });
                // Let the transfer (and ftpgate's 1 s keepalive) run first.
                thread::sleep(Duration::from_millis(2500));
                c.send("NOOP")?;
                let mut replies = Vec::new();
                while replies.len() < 2 {
                    replies.push(c.read_reply()?.1.trim_end().to_owned());
                }
                let sha = reader.join().expect("reader")?;
                c.expect("QUIT", 221)?;
                Ok((replies, sha))
            })();
            r.map(|(replies, sha)| (replies, sha, c.transcript.clone()))
                .map_err(|e| format!("{e}\n{}", c.transcript))
        })
        .join()
        .expect("client thread")
    };
    let (direct, direct_sha, _) = run(&topo.proxy, topo.backend_addr())
        .unwrap_or_else(|e| panic!("direct: {e}\n{}", context()));
    let (proxied, proxied_sha, transcript) =
        run(&topo.client, topo.proxy_v4()).unwrap_or_else(|e| panic!("{e}\n{}", context()));
    let noops = gate
        .logs()
        .matches("keepalive NOOP sent to backend")
        .count();
    eprintln!(
        "{kind:?}/{ty:?}: direct {direct:?}; through ftpgate ({noops} keepalive NOOPs) {proxied:?}"
    );
    assert_eq!(direct_sha, want);
    assert_eq!(proxied_sha, want, "bytes differ\n{transcript}");
    assert!(
        noops >= 2,
        "keepalive NOOPs expected before the client's\n{}",
        context()
    );
    assert_eq!(
        proxied,
        direct,
        "replies through ftpgate differ from the server's own\n{transcript}\n{}",
        context()
    );
}

#[test]
fn client_noop_mid_transfer_proftpd_ascii() {
    if common::e2e_enabled("client_noop_mid_transfer_proftpd_ascii") {
        client_noop_mid_transfer(ServerKind::Proftpd, TransferType::Ascii);
    }
}

#[test]
fn client_noop_mid_transfer_vsftpd() {
    if common::e2e_enabled("client_noop_mid_transfer_vsftpd") {
        client_noop_mid_transfer(ServerKind::Vsftpd, TransferType::Binary);
    }
}
