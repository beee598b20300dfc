//! Active-mode (PORT/EPRT) end-to-end helpers: a topology whose private side
//! is a bridged segment (so an intruder can sit next to the backend), curl and
//! lftp in active mode, in-namespace sockets, and the commands a backend
//! daemon logged.
//!
//! ```text
//!   client   203.0.113.2/24  2001:db8:1::2/64 ─┐
//!   attacker 203.0.113.66/24 2001:db8:1::66/64 ┼─ [public: bridge]
//!   proxy    203.0.113.1/24  2001:db8:1::1/64 ─┘   (eth0)
//!   proxy    10.0.0.1/24 (eth1) ─┐
//!   backend  10.0.0.2/24 (eth0) ─┼─ [private: bridge]
//!   intruder 10.0.0.66/24 (eth0) ┘
//! ```
//!
//! As in `ReverseTopology`, the proxy does not forward and no host has a
//! route beyond its own subnet: the backend cannot reach the client, so an
//! active-mode transfer only works when ftpgate relays it.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use super::addrs::*;
use super::clients::{FtpControl, FtpTarget, Transcript};
use super::netns::{Netns, Segment, Topology};
use super::proxy::{Ftpgate, FtpgateOptions};
use super::servers::{FtpServer, ServerKind, FTP_PASS, FTP_USER};

/// A host on the backend's segment that is not the backend.
pub const INTRUDER_V4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 66);

/// Bound for in-namespace connects, accepts and reads.
pub const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// ftpgate's `--backend-data-mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendDataMode {
    /// The backend sees the client's mode (PORT stays PORT).
    Same,
    /// The backend only ever sees EPSV/PASV.
    Passive,
    /// The backend only ever sees PORT/EPRT.
    Active,
}

impl BackendDataMode {
    pub const ALL: [BackendDataMode; 3] = [
        BackendDataMode::Same,
        BackendDataMode::Passive,
        BackendDataMode::Active,
    ];

    pub fn arg(self) -> &'static str {
        match self {
            BackendDataMode::Same => "same",
            BackendDataMode::Passive => "passive",
            BackendDataMode::Active => "active",
        }
    }
}

pub struct ActiveTopology {
    pub client: Netns,
    pub attacker: Netns,
    pub proxy: Netns,
    pub backend: Netns,
    pub intruder: Netns,
    pub public: Segment,
    pub private: Segment,
    // Last field: dropped after anything a test stores in the struct above.
    pub topo: Topology,
}

impl ActiveTopology {
    pub fn new() -> ActiveTopology {
        let topo = Topology::new();
        let super::PublicSide {
            public,
            client,
            attacker,
            proxy,
        } = super::PublicSide::new(&topo);
        let private = topo.segment("priv");
        let backend = topo.add_ns("backend");
        let intruder = topo.add_ns("intruder");
        for (host, dev, v4) in [
            (&proxy, "eth1", PROXY_PRIVATE_V4),
            (&backend, "eth0", BACKEND_V4),
            (&intruder, "eth0", INTRUDER_V4),
        ] {
            topo.attach(&private, host, dev);
            host.addr(dev, &format!("{v4}/24"));
        }

        ActiveTopology {
            client,
            attacker,
            proxy,
            backend,
            intruder,
            public,
            private,
            topo,
        }
    }

    pub fn proxy_v4(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(PROXY_PUBLIC_V4), FTP_PORT)
    }

    pub fn proxy_v6(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V6(PROXY_PUBLIC_V6), FTP_PORT)
    }

    pub fn backend_addr(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(BACKEND_V4), FTP_PORT)
    }

    pub fn start_backend(&self, kind: ServerKind) -> FtpServer {
        FtpServer::start(&self.topo, &self.backend, IpAddr::V4(BACKEND_V4), kind)
    }

    /// ftpgate on the public v4 and v6 addresses in front of the backend,
    /// with `--backend-data-mode mode`.
    pub fn ftpgate_options(&self, mode: BackendDataMode) -> FtpgateOptions {
        let mut o = FtpgateOptions::new(
            vec![self.proxy_v4(), self.proxy_v6()],
            self.backend_addr(),
            vec![IpAddr::V4(PROXY_PUBLIC_V4), IpAddr::V6(PROXY_PUBLIC_V6)],
        );
        o.extra_args
            .extend(["--backend-data-mode".to_string(), mode.arg().to_string()]);
        o
    }

    pub fn start_ftpgate(&self, options: FtpgateOptions) -> Ftpgate {
        Ftpgate::start(&self.proxy, options)
    }

    /// Asserts the premise of every active-mode test: a listener on the
    /// client's address is reachable from the proxy host but not from the
    /// backend (nor from the intruder next to it).
    pub fn assert_backend_cannot_reach_client(&self) {
        let listener = bind_in(&self.client, SocketAddr::new(IpAddr::V4(CLIENT_V4), 0));
        let addr = listener.local_addr().unwrap();
        let from_proxy = connect_in(&self.proxy, addr);
        assert!(
            from_proxy.is_ok(),
            "control: the proxy host must reach the client's listener {addr}: {from_proxy:?}"
        );
        drop(from_proxy);
        for (name, ns) in [("backend", &self.backend), ("intruder", &self.intruder)] {
            let r = connect_in(ns, addr);
            assert!(
                r.is_err(),
                "the {name} namespace must not reach the client at {addr}, but connected: {r:?}"
            );
        }
        // Only the proxy's probe arrived.
        assert!(accept_within(&listener, IO_TIMEOUT).is_some());
        assert_nothing_pending(&listener, "client listener after the reachability probe");
    }
}

impl Default for ActiveTopology {
    fn default() -> Self {
        Self::new()
    }
}

// ------------------------------------------------------ sockets in a namespace

/// A listener created inside `ns` (a socket stays in the namespace it was
/// created in, so it can be used from any thread afterwards).
pub fn bind_in(ns: &Netns, addr: SocketAddr) -> TcpListener {
    ns.spawn_thread(move || TcpListener::bind(addr))
        .join()
        .expect("bind thread")
        .unwrap_or_else(|e| panic!("bind {addr}: {e}"))
}

/// A TCP connection made from inside `ns` (bounded).
pub fn connect_in(ns: &Netns, addr: SocketAddr) -> io::Result<TcpStream> {
    ns.spawn_thread(move || {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        s.set_read_timeout(Some(IO_TIMEOUT))?;
        s.set_write_timeout(Some(IO_TIMEOUT))?;
        Ok(s)
    })
    .join()
    .expect("connect thread")
}

/// A logged-in control connection from `ns` to `addr`, in binary mode.
pub fn login_in(ns: &Netns, addr: SocketAddr) -> FtpControl {
    ns.spawn_thread(move || -> Result<FtpControl, String> {
        let mut c = FtpControl::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
        c.login(FTP_USER, FTP_PASS)
            .and_then(|_| c.expect("TYPE I", 200))
            .map_err(|e| format!("{e}\n{}", c.transcript))?;
        Ok(c)
    })
    .join()
    .expect("login thread")
    .unwrap_or_else(|e| panic!("login to {addr}: {e}"))
}

/// Waits (bounded) for one incoming connection.
pub fn accept_within(listener: &TcpListener, timeout: Duration) -> Option<(TcpStream, SocketAddr)> {
    listener.set_nonblocking(true).expect("nonblocking");
    let deadline = Instant::now() + timeout;
    let got = loop {
        match listener.accept() {
            Ok(x) => break Some(x),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                // Polling the listener for the real event (bounded).
                thread::sleep(Duration::from_millis(10));
            }
            Err(_) => break None,
        }
    };
    listener.set_nonblocking(false).expect("blocking");
    got.map(|(s, peer)| {
        s.set_nonblocking(false).unwrap();
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        (s, peer)
    })
}

/// Panics if a connection is waiting in `listener`'s accept queue.
pub fn assert_nothing_pending(listener: &TcpListener, what: &str) {
    listener.set_nonblocking(true).expect("nonblocking");
    let r = listener.accept();
    listener.set_nonblocking(false).expect("blocking");
    match r {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
        Ok((_, peer)) => panic!("{what}: unexpected connection from {peer}"),
        Err(e) => panic!("{what}: accept failed: {e}"),
    }
}

/// What a foreign host observed on a mapped data port.
#[derive(Debug)]
pub struct Probe {
    pub connected: bool,
    pub bytes: usize,
    pub outcome: String,
}

impl Probe {
    /// Connected, then closed by ftpgate without a byte.
    pub fn was_turned_away(&self) -> bool {
        self.connected
            && self.bytes == 0
            && (self.outcome == "eof" || self.outcome.contains("reset"))
    }
}

/// From `ns`, connects to `addr`, writes `junk` (a hijacker trying to inject
/// an upload) and reads until EOF (bounded).
pub fn probe_from(ns: &Netns, addr: SocketAddr, junk: &'static [u8]) -> Probe {
    ns.spawn_thread(move || {
        let mut s = match TcpStream::connect_timeout(&addr, Duration::from_secs(10)) {
            Ok(s) => s,
            Err(e) => {
                return Probe {
                    connected: false,
                    bytes: 0,
                    outcome: format!("connect failed: {e}"),
                }
            }
        };
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        // Best effort: the peer may already have closed.
        let _ = s.write_all(junk);
        let mut buf = [0u8; 65536];
        let mut bytes = 0;
        loop {
            match s.read(&mut buf) {
                Ok(0) => {
                    return Probe {
                        connected: true,
                        bytes,
                        outcome: "eof".into(),
                    }
                }
                Ok(n) => bytes += n,
                Err(e) => {
                    return Probe {
                        connected: true,
                        bytes,
                        outcome: format!("error: {e} ({:?})", e.kind()),
                    }
                }
            }
        }
    })
    .join()
    .expect("probe thread")
}

// ------------------------------------------------------ raw active transfers

/// `h1,h2,h3,h4,p1,p2` for PORT.
pub fn port_arg(addr: SocketAddr) -> String {
    let IpAddr::V4(ip) = addr.ip() else {
        panic!("PORT needs IPv4, got {addr}")
    };
    let o = ip.octets();
    format!(
        "{},{},{},{},{},{}",
        o[0],
        o[1],
        o[2],
        o[3],
        addr.port() >> 8,
        addr.port() & 0xff
    )
}

/// `|1|a.b.c.d|port|` or `|2|v6|port|` for EPRT.
pub fn eprt_arg(addr: SocketAddr) -> String {
    let proto = if addr.is_ipv4() { 1 } else { 2 };
    format!("|{proto}|{}|{}|", addr.ip(), addr.port())
}

/// The data address of a `PORT ...` or `EPRT ...` command line.
pub fn parse_active_command(cmd: &str) -> Option<SocketAddr> {
    let (verb, arg) = cmd.trim().split_once(' ')?;
    match verb.to_ascii_uppercase().as_str() {
        "PORT" => {
            let n: Vec<u16> = arg
                .split(',')
                .map(|x| x.trim().parse().ok())
                .collect::<Option<_>>()?;
            if n.len() != 6 || n.iter().any(|&x| x > 255) {
                return None;
            }
            let ip = Ipv4Addr::new(n[0] as u8, n[1] as u8, n[2] as u8, n[3] as u8);
            Some(SocketAddr::new(IpAddr::V4(ip), n[4] << 8 | n[5]))
        }
        "EPRT" => {
            let d = arg.chars().next()?;
            let parts: Vec<&str> = arg.split(d).collect();
            // "|1|10.0.0.1|5000|" -> ["", "1", "10.0.0.1", "5000", ""]
            if parts.len() != 5 {
                return None;
            }
            Some(SocketAddr::new(
                parts[2].parse().ok()?,
                parts[3].parse().ok()?,
            ))
        }
        _ => None,
    }
}

/// Sends the transfer command `cmd` after PORT/EPRT set up `listener`,
/// accepts the data connection, runs `io` on it, and reads the final reply.
/// Returns the data connection's peer and what `io` returned.
pub fn active_transfer<T>(
    c: &mut FtpControl,
    listener: &TcpListener,
    cmd: &str,
    io: impl FnOnce(&mut TcpStream) -> io::Result<T>,
) -> io::Result<(SocketAddr, T)> {
    c.send(cmd)?;
    let (code, text) = c.read_reply()?;
    if code != 150 && code != 125 {
        return Err(io::Error::other(format!("{cmd}: {text}")));
    }
    let (mut s, peer) = accept_within(listener, IO_TIMEOUT)
        .ok_or_else(|| io::Error::other(format!("{cmd}: no data connection arrived")))?;
    let out = io(&mut s)?;
    drop(s);
    let (code, text) = c.read_reply()?;
    if code != 226 {
        return Err(io::Error::other(format!("after {cmd}: {text}")));
    }
    Ok((peer, out))
}

/// RETR over an already announced active data address.
pub fn retr_active(
    c: &mut FtpControl,
    listener: &TcpListener,
    remote: &str,
) -> io::Result<(SocketAddr, Vec<u8>)> {
    active_transfer(c, listener, &format!("RETR {remote}"), |s| {
        let mut body = Vec::new();
        s.read_to_end(&mut body)?;
        Ok(body)
    })
}

/// STOR over an already announced active data address.
pub fn stor_active(
    c: &mut FtpControl,
    listener: &TcpListener,
    remote: &str,
    data: &[u8],
) -> io::Result<SocketAddr> {
    active_transfer(c, listener, &format!("STOR {remote}"), |s| {
        s.write_all(data)?;
        s.shutdown(Shutdown::Write)?;
        // Wait for the relay to close its side: the upload is complete.
        let mut rest = Vec::new();
        s.read_to_end(&mut rest)?;
        Ok(())
    })
    .map(|(peer, ())| peer)
}

// ------------------------------------------------------ real clients, active

/// What a client run does.
#[derive(Clone, Copy, Debug)]
pub enum Op<'a> {
    Download { remote: &'a str, local: &'a Path },
    Upload { local: &'a Path, remote: &'a str },
    List { dir: &'a str },
}

/// Which active command curl sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CurlActive {
    /// `--disable-eprt`: PORT only.
    Port,
    /// curl's default with `-P`: EPRT (falls back to PORT on a 5xx).
    Eprt,
}

/// curl in active mode (`-P <announce>`), where `announce` is the client's
/// own address (bracketed for IPv6).
pub fn curl_active(
    ns: &Netns,
    t: &FtpTarget,
    announce: IpAddr,
    flavour: CurlActive,
    op: Op<'_>,
) -> Transcript {
    let mut cmd = super::clients::curl_command(ns, t);
    let port = match announce {
        IpAddr::V4(ip) => ip.to_string(),
        IpAddr::V6(ip) => format!("[{ip}]"),
    };
    cmd.args(["--ftp-port", &port]);
    if flavour == CurlActive::Port {
        cmd.arg("--disable-eprt");
    }
    match op {
        Op::Download { remote, local } => {
            cmd.arg("-o").arg(local).arg(t.url(remote));
        }
        Op::Upload { local, remote } => {
            cmd.arg("-T").arg(local).arg(t.url(remote));
        }
        Op::List { dir } => {
            cmd.arg(t.url(&format!("{}/", dir.trim_end_matches('/'))));
        }
    }
    super::clients::run(cmd)
}

/// lftp in active mode (`ftp:passive-mode off`; lftp sends PORT over IPv4
/// and EPRT over IPv6). The dialogue (`-d`) goes to stderr.
pub fn lftp_active(ns: &Netns, t: &FtpTarget, op: Op<'_>) -> Transcript {
    let action = match op {
        Op::Download { remote, local } => format!("get {remote} -o {}", local.display()),
        Op::Upload { local, remote } => format!("put {} -o {remote}", local.display()),
        Op::List { dir } => format!("cls -1 {dir}/"),
    };
    let full = format!(
        "set cmd:fail-exit yes; set net:max-retries 1; set net:timeout 20; \
         set net:reconnect-interval-base 1; set ftp:ssl-allow no; \
         set ftp:passive-mode off; set xfer:clobber yes; \
         open -u {user},{pass} {url}; {action}; bye",
        user = t.user,
        pass = t.pass,
        url = t.url(""),
    );
    let mut cmd = ns.command("lftp");
    cmd.args(["-d", "-c", &full]);
    super::clients::run(cmd)
}

/// Commands a client sent, from its `-v`/`-d` dialogue on stderr (curl
/// prints `> CMD`, lftp `---> CMD`).
pub fn sent_commands(t: &Transcript) -> Vec<String> {
    t.stderr
        .lines()
        .filter_map(|l| {
            l.strip_prefix("---> ")
                .or_else(|| l.strip_prefix("> "))
                .map(|c| c.trim().to_owned())
        })
        .collect()
}

// ------------------------------------------------------ evidence

/// The FTP commands the backend daemon received, from its own protocol log:
/// vsftpd (`log_ftp_protocol`) and proftpd (`ExtendedLog ... ALL`). `None`
/// for daemons whose harness configuration logs no commands (pyftpdlib, pure-ftpd).
pub fn backend_commands(server: &FtpServer) -> Option<Vec<String>> {
    let logs = server.logs();
    let quoted = |l: &str| -> Option<String> {
        let start = l.find('"')? + 1;
        let end = start + l[start..].find('"')?;
        Some(l[start..end].to_owned())
    };
    match server.kind {
        ServerKind::Vsftpd => Some(
            logs.lines()
                .filter_map(|l| {
                    // FTP command: Client "10.0.0.1", "PORT 10,0,0,1,195,80"
                    let rest = &l[l.find("FTP command: Client ")?..];
                    let cmd = &rest[rest.find("\", \"")? + 4..];
                    Some(cmd.strip_suffix('"').unwrap_or(cmd).to_owned())
                })
                .collect(),
        ),
        ServerKind::Proftpd => {
            // Only the ExtendedLog section: `host ... [date] "CMD args" code bytes`.
            let mut in_protocol = false;
            let mut cmds = Vec::new();
            for l in logs.lines() {
                if l.starts_with("==> ") {
                    in_protocol = l.contains("protocol.log");
                    continue;
                }
                if in_protocol {
                    if let Some(c) = quoted(l) {
                        cmds.push(c);
                    }
                }
            }
            Some(cmds)
        }
        ServerKind::Pyftpdlib | ServerKind::PureFtpd => None,
    }
}

/// Whether `cmd` uses `verb` (case-insensitive).
pub fn is_verb(cmd: &str, verb: &str) -> bool {
    cmd.split_whitespace()
        .next()
        .is_some_and(|v| v.eq_ignore_ascii_case(verb))
}

/// `(original, rewritten)` of ftpgate's `active command rewritten` lines.
pub fn active_rewrites(gate: &Ftpgate) -> Vec<(String, String)> {
    gate.logs()
        .lines()
        .filter(|l| l.contains("active command rewritten"))
        .filter_map(super::proxy::parse_rewrite_fields)
        .collect()
}

/// The `command=` field of ftpgate's `data-setup command sent to backend`
/// lines (commands ftpgate injected on its own for mode translation).
pub fn injected_setup_commands(gate: &Ftpgate) -> Vec<String> {
    gate.logs()
        .lines()
        .filter(|l| l.contains("data-setup command sent to backend"))
        .filter_map(|l| {
            let start = l.find(" command=")? + " command=".len();
            let v = &l[start..];
            let v = match v.strip_prefix('"') {
                Some(q) => &q[..q.find('"').unwrap_or(q.len())],
                // Display formatting: the value runs to the end of the line.
                None => v,
            };
            Some(v.trim().to_owned())
        })
        .collect()
}

/// Waits (bounded) until ftpgate's log has `n` lines containing `needle`;
/// returns them. Logs arrive through a pipe, slightly after the event.
pub fn wait_log_lines(gate: &Ftpgate, needle: &str, n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let lines: Vec<String> = gate
            .logs()
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_owned)
            .collect();
        if lines.len() >= n || Instant::now() >= deadline {
            return lines;
        }
        // Polling the log buffer for the real signal (bounded).
        thread::sleep(Duration::from_millis(10));
    }
}

// ------------------------------------------------------ a backend without EPSV

/// pyftpdlib with EPSV and EPRT removed from its command table (an RFC 959
/// server that predates RFC 2428), logging every command at debug level.
/// The process belongs to the topology; this struct keeps its files alive.
pub struct LegacyServer {
    pub addr: SocketAddr,
    pub root: super::servers::FtpRoot,
    log: tempfile::NamedTempFile,
}

impl LegacyServer {
    pub fn start(topo: &ActiveTopology) -> LegacyServer {
        let addr = SocketAddr::new(IpAddr::V4(BACKEND_V4), FTP_PORT);
        let root = super::servers::FtpRoot::create();
        let log = tempfile::NamedTempFile::new().expect("log file");
        let script = format!(
            r#"
import logging, sys
from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import FTPHandler
from pyftpdlib.servers import FTPServer
logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)
auth = DummyAuthorizer()
auth.add_user({user:?}, {pw:?}, {root:?}, perm="elradfmwMT")
class Legacy(FTPHandler):
    proto_cmds = {{k: v for k, v in FTPHandler.proto_cmds.items() if k not in ("EPSV", "EPRT")}}
Legacy.authorizer = auth
Legacy.permit_foreign_addresses = False
FTPServer(({ip:?}, {port}), Legacy).serve_forever()
"#,
            user = FTP_USER,
            pw = FTP_PASS,
            root = root.path().display().to_string(),
            ip = addr.ip().to_string(),
            port = addr.port(),
        );
        let mut cmd = topo.backend.command("/usr/bin/python3");
        cmd.arg("-c")
            .arg(script)
            .stdin(std::process::Stdio::null())
            .stdout(log.reopen().expect("log"))
            .stderr(log.reopen().expect("log"));
        let pid = topo.topo.spawn(cmd);
        let server = LegacyServer { addr, root, log };
        // Ready when the 220 banner arrives (bounded).
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = topo.topo.exit_status(pid) {
                panic!("legacy pyftpdlib exited ({status}):\n{}", server.logs());
            }
            if let Ok(mut s) = connect_in(&topo.backend, addr) {
                let mut buf = [0u8; 4];
                if s.read_exact(&mut buf).is_ok() && &buf[..3] == b"220" {
                    let _ = s.write_all(b"QUIT\r\n");
                    return server;
                }
            }
            assert!(
                Instant::now() < deadline,
                "legacy pyftpdlib not ready:\n{}",
                server.logs()
            );
            // Retry interval while polling the real signal (the banner).
            thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    /// Commands received (pyftpdlib's debug lines `... <- CMD`).
    pub fn commands(&self) -> Vec<String> {
        self.logs()
            .lines()
            .filter_map(|l| l.split_once("<- ").map(|(_, c)| c.trim().to_owned()))
            .collect()
    }
}
