//! The transparent-gateway topology: a LAN client behind a NAT gateway that runs
//! ftpgate in transparent mode, and an FTP server "on the internet".
//!
//! ```text
//!   client  10.1.0.2/24  2001:db8:1::2/64  (eth0, default via the gateway)
//!      │
//!   gateway lan0: 10.1.0.1/24  2001:db8:1::1/64
//!           wan0: 203.0.113.1/24  2001:db8:2::1/64   (forwarding on)
//!      │
//!   server  203.0.113.10/24  2001:db8:2::10/64  (eth0, no route to the LAN)
//! ```
//!
//! The server has only its connected prefixes: it can reach the gateway's public
//! address but never a LAN address, so a client's `PORT 10,1,0,2,...` is useless
//! to it unless something (ftpgate) rewrites it. The gateway's interfaces are
//! called `lan0`/`wan0`, the defaults of the rule files in `deploy/gateway/`,
//! so tests can load those files as shipped.
//!
//! The kernel FTP conntrack helper is never assigned (not automatic since Linux
//! 4.7, and nothing here assigns it), so only ftpgate can make active mode work.
//!
//! The server namespace counts, per address family, the source addresses of the
//! TCP packets it receives from outside ([`GatewayTopology::server_peers`]), so
//! tests can assert that it only ever saw the gateway's public address.

use std::collections::BTreeSet;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::thread;
use std::time::{Duration, Instant};

use super::clients::{FtpTarget, Transcript};
use super::netns::{run_bounded, run_ok, Netns, Topology};
use super::proxy::{Ftpgate, FtpgateOptions};
use super::servers::{FtpRoot, FtpServer, ServerKind, FTP_PASS, FTP_USER};

pub const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 2);
/// A LAN address that is not the client's (bounce target).
pub const LAN_OTHER_V4: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 3);
pub const GW_LAN_V4: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 1);
pub const GW_WAN_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
pub const SERVER_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
pub const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 2);
pub const GW_LAN_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1);
pub const GW_WAN_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 1);
pub const SERVER_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 0x10);
pub const LAN_IF: &str = "lan0";
pub const WAN_IF: &str = "wan0";
/// ftpgate's transparent listener port on the gateway.
pub const FTPGATE_PORT: u16 = 2121;
/// ftpgate's data-port range in these tests.
pub const DATA_PORTS: (u16, u16) = (50000, 50099);

/// Directory of the shipped rule files.
pub fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/gateway")
}

/// How the gateway diverts FTP control connections to ftpgate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Divert {
    /// `iptables -t nat ... -j REDIRECT` (ftpgate without `--tproxy`).
    Redirect,
    /// `iptables -t mangle ... -j TPROXY` plus policy routing (ftpgate `--tproxy`).
    Tproxy,
}

pub struct GatewayTopology {
    pub client: Netns,
    pub gateway: Netns,
    pub server: Netns,
    // Last field: dropped after anything a test stores in the struct above.
    pub topo: Topology,
}

impl Default for GatewayTopology {
    fn default() -> Self {
        Self::new()
    }
}

impl GatewayTopology {
    /// Builds the namespaces and addresses with forwarding on, but no NAT and no
    /// diversion rules: see [`Self::masquerade`], [`Self::redirect`], [`Self::tproxy`].
    pub fn new() -> GatewayTopology {
        let topo = Topology::new();
        let client = topo.add_ns("lan");
        let gateway = topo.add_ns("gw");
        let server = topo.add_ns("srv");
        topo.link(&client, "eth0", &gateway, LAN_IF);
        topo.link(&gateway, WAN_IF, &server, "eth0");
        client.addr("eth0", &format!("{CLIENT_V4}/24"));
        client.addr("eth0", &format!("{CLIENT_V6}/64"));
        gateway.addr(LAN_IF, &format!("{GW_LAN_V4}/24"));
        gateway.addr(LAN_IF, &format!("{GW_LAN_V6}/64"));
        gateway.addr(WAN_IF, &format!("{GW_WAN_V4}/24"));
        gateway.addr(WAN_IF, &format!("{GW_WAN_V6}/64"));
        server.addr("eth0", &format!("{SERVER_V4}/24"));
        server.addr("eth0", &format!("{SERVER_V6}/64"));
        client.route(&["default", "via", &GW_LAN_V4.to_string()]);
        client.ip(&[
            "-6",
            "route",
            "add",
            "default",
            "via",
            &GW_LAN_V6.to_string(),
        ]);
        gateway.sysctl("net.ipv4.ip_forward", "1");
        gateway.sysctl("net.ipv6.conf.all.forwarding", "1");
        // The server deliberately gets no route towards 10.1.0.0/16 or 2001:db8:1::/64.

        // Record every TCP source address the server receives from the wire.
        let observe = "table inet observe {
  set peers4 { type ipv4_addr; flags dynamic; }
  set peers6 { type ipv6_addr; flags dynamic; }
  chain input {
    type filter hook input priority filter; policy accept;
    iifname \"eth0\" meta l4proto tcp meta nfproto ipv4 add @peers4 { ip saddr }
    iifname \"eth0\" meta l4proto tcp meta nfproto ipv6 add @peers6 { ip6 saddr }
  }
}
";
        nft_load(&server, observe);

        GatewayTopology {
            client,
            gateway,
            server,
            topo,
        }
    }

    /// Runs `program args...` in the gateway namespace; panics on failure.
    pub fn gw(&self, program: &str, args: &[&str]) {
        self.gateway.run_ok(program, args);
    }

    /// The usual REDIRECT gateway: [`Self::new`], [`Self::masquerade`] and
    /// [`Self::redirect`], the setup most gateway tests start from.
    pub fn with_redirect() -> GatewayTopology {
        let topo = GatewayTopology::new();
        topo.masquerade();
        topo.redirect();
        topo
    }

    /// Source NAT of everything leaving through the WAN interface (v4 and v6).
    pub fn masquerade(&self) {
        for ipt in ["iptables", "ip6tables"] {
            self.gw(
                ipt,
                &[
                    "-t",
                    "nat",
                    "-A",
                    "POSTROUTING",
                    "-o",
                    WAN_IF,
                    "-j",
                    "MASQUERADE",
                ],
            );
        }
    }

    /// `iptables` (and `ip6tables`) REDIRECT of LAN FTP control connections to ftpgate.
    pub fn redirect(&self) {
        self.redirect_rule("-A");
    }

    /// Removes the rules of [`Self::redirect`].
    pub fn unredirect(&self) {
        self.redirect_rule("-D");
    }

    /// Appends (`-A`) or deletes (`-D`) the REDIRECT rule: one spelling of the
    /// rule, so [`Self::unredirect`] always removes what [`Self::redirect`] added.
    fn redirect_rule(&self, action: &str) {
        for ipt in ["iptables", "ip6tables"] {
            self.gw(
                ipt,
                &[
                    "-t",
                    "nat",
                    action,
                    "PREROUTING",
                    "-i",
                    LAN_IF,
                    "-p",
                    "tcp",
                    "--dport",
                    "21",
                    "-j",
                    "REDIRECT",
                    "--to-ports",
                    &FTPGATE_PORT.to_string(),
                ],
            );
        }
    }

    /// Runs one of the shipped shell scripts in the gateway namespace with `env`.
    pub fn run_deploy_script(&self, script: &str, env: &[(&str, &str)]) -> std::process::Output {
        let mut cmd = self.gateway.command("sh");
        cmd.arg(deploy_dir().join(script));
        cmd.env("LAN_IF", LAN_IF)
            .env("WAN_IF", WAN_IF)
            .env("FTPGATE_PORT", FTPGATE_PORT.to_string());
        for (k, v) in env {
            cmd.env(k, v);
        }
        run_ok(cmd)
    }

    /// Loads a shipped nftables file into the gateway after substituting its
    /// `define NAME = ...` lines (the site-specific placeholders) with `defines`.
    /// Returns the text that was loaded.
    pub fn load_deploy_nft(&self, file: &str, defines: &[(&str, &str)]) -> String {
        let path = deploy_dir().join(file);
        let text =
            fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        let mut seen = BTreeSet::new();
        let mut out = String::new();
        for line in text.lines() {
            let replaced = defines.iter().find_map(|(name, value)| {
                let prefix = format!("define {name} = ");
                line.starts_with(&prefix).then(|| {
                    seen.insert(*name);
                    format!("{prefix}{value}")
                })
            });
            out.push_str(&replaced.unwrap_or_else(|| line.to_owned()));
            out.push('\n');
        }
        for (name, _) in defines {
            assert!(
                seen.contains(name),
                "{}: no `define {name} = ...` line to substitute",
                path.display()
            );
        }
        nft_load(&self.gateway, &out);
        out
    }

    /// Policy routing for TPROXY in the gateway (v4 and v6).
    pub fn tproxy_routing(&self) {
        self.gw("ip", &["-4", "rule", "add", "fwmark", "1", "lookup", "100"]);
        self.gw(
            "ip",
            &[
                "-4",
                "route",
                "add",
                "local",
                "0.0.0.0/0",
                "dev",
                "lo",
                "table",
                "100",
            ],
        );
        self.gw("ip", &["-6", "rule", "add", "fwmark", "1", "lookup", "100"]);
        self.gw(
            "ip",
            &[
                "-6", "route", "add", "local", "::/0", "dev", "lo", "table", "100",
            ],
        );
    }

    /// A real FTP server on the server's IPv4 (or IPv6) address, port 21.
    pub fn start_server(&self, kind: ServerKind, v6: bool) -> FtpServer {
        let ip = if v6 {
            IpAddr::V6(SERVER_V6)
        } else {
            IpAddr::V4(SERVER_V4)
        };
        FtpServer::start(&self.topo, &self.server, ip, kind)
    }

    /// What LAN clients connect to: the server's real address (the gateway
    /// intercepts it).
    pub fn target(&self, v6: bool) -> FtpTarget {
        let ip = if v6 {
            IpAddr::V6(SERVER_V6)
        } else {
            IpAddr::V4(SERVER_V4)
        };
        FtpTarget::new(SocketAddr::new(ip, 21))
    }

    /// ftpgate options for a transparent listener on `listen` (no backends).
    pub fn ftpgate_options(&self, listen: Vec<SocketAddr>, divert: Divert) -> FtpgateOptions {
        let mut o = FtpgateOptions::new(
            listen,
            SocketAddr::new(IpAddr::V4(SERVER_V4), 21),
            vec![IpAddr::V4(GW_WAN_V4)],
        );
        // Transparent sessions go to their original destination: no backends (a
        // backend would also be health-checked, adding connections the server sees).
        o.backend.clear();
        o.data_ports = DATA_PORTS;
        o.extra_args = vec!["--mode".into(), "transparent".into()];
        if divert == Divert::Tproxy {
            o.extra_args.push("--tproxy".into());
        }
        o
    }

    /// The usual listener: every address of the gateway, IPv4.
    pub fn default_listen() -> Vec<SocketAddr> {
        vec![SocketAddr::new(
            IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            FTPGATE_PORT,
        )]
    }

    /// One `[::]` listener (dual stack: it takes IPv4 too).
    pub fn any_v6_listen() -> Vec<SocketAddr> {
        vec![SocketAddr::new(
            IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            FTPGATE_PORT,
        )]
    }

    pub fn start_ftpgate(&self, options: FtpgateOptions) -> Ftpgate {
        Ftpgate::start(&self.gateway, options)
    }

    /// ftpgate with [`Self::ftpgate_options`] unchanged: the common case,
    /// spelled once for the tests that need no extra flags.
    pub fn start_transparent(&self, listen: Vec<SocketAddr>, divert: Divert) -> Ftpgate {
        self.start_ftpgate(self.ftpgate_options(listen, divert))
    }

    /// Source addresses of every TCP packet the server received from outside.
    pub fn server_peers(&self) -> BTreeSet<IpAddr> {
        let mut peers = BTreeSet::new();
        for set in ["peers4", "peers6"] {
            let out = self
                .server
                .run_ok("nft", &["list", "set", "inet", "observe", set]);
            let text = String::from_utf8_lossy(&out.stdout);
            if let Some(start) = text.find("elements = {") {
                let rest = &text[start + "elements = {".len()..];
                let body = &rest[..rest.find('}').unwrap_or(rest.len())];
                for item in body.split(',') {
                    // Elements of a dynamic set may carry "expires ..." annotations.
                    let word = item.split_whitespace().next().unwrap_or("");
                    if let Ok(ip) = word.parse::<IpAddr>() {
                        peers.insert(ip);
                    }
                }
            }
        }
        peers
    }

    /// `conntrack -L` and `ss -tan` in the server namespace (for failure messages).
    pub fn server_sockets(&self) -> String {
        let mut s = String::new();
        for (prog, args) in [("ss", &["-tan"][..]), ("conntrack", &["-L"][..])] {
            let (out, _) = run_bounded(
                {
                    let mut c = self.server.command(prog);
                    c.args(args);
                    c
                },
                Duration::from_secs(10),
            );
            s.push_str(&format!(
                "--- {prog} {args:?} (server ns) ---\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        s
    }

    /// The gateway's rules, for failure messages.
    pub fn gateway_rules(&self) -> String {
        let (out, _) = run_bounded(
            {
                let mut c = self.gateway.command("nft");
                c.args(["list", "ruleset"]);
                c
            },
            Duration::from_secs(10),
        );
        format!(
            "--- nft list ruleset (gateway ns) ---\n{}",
            String::from_utf8_lossy(&out.stdout)
        )
    }
}

/// Loads an nftables ruleset (`nft -f -`) into `ns`; panics with nft's errors.
pub fn nft_load(ns: &Netns, ruleset: &str) {
    let mut child = ns
        .command("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn nft");
    child
        .stdin
        .take()
        .expect("stdin piped")
        .write_all(ruleset.as_bytes())
        .expect("write nft ruleset");
    let out = child.wait_with_output().expect("nft");
    assert!(
        out.status.success(),
        "nft -f failed in {}: {}\n--- ruleset ---\n{ruleset}",
        ns.name(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// How a curl run sets up its data connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CurlData {
    /// `--ftp-pasv` (EPSV first).
    Epsv,
    /// `--ftp-pasv --disable-epsv`.
    Pasv,
    /// `-P <arg>` (EPRT first).
    Eprt(&'static str),
    /// `-P <arg> --disable-eprt`.
    Port(&'static str),
}

/// A curl invocation from `ns` to `t` with `data` mode; `extra` are the
/// operation's arguments (e.g. `-o FILE URL`).
pub fn curl(ns: &Netns, t: &FtpTarget, data: CurlData, extra: &[&str]) -> Transcript {
    let mut cmd = super::clients::curl_command(ns, t);
    cmd.args([
        // Use the address in the 227 (as lftp and ftplib are told to do too), so
        // a server's or gateway's address handling is really exercised.
        "--no-ftp-skip-pasv-ip",
    ]);
    match data {
        CurlData::Epsv => {
            cmd.arg("--ftp-pasv");
        }
        CurlData::Pasv => {
            cmd.args(["--ftp-pasv", "--disable-epsv"]);
        }
        CurlData::Eprt(a) => {
            cmd.args(["-P", a]);
        }
        CurlData::Port(a) => {
            cmd.args(["-P", a, "--disable-eprt"]);
        }
    }
    cmd.args(extra);
    super::clients::run(cmd)
}

/// A pyftpdlib server that names `masquerade` in its 227 replies — a server
/// behind its own NAT, configured with its private address (the classic
/// misconfiguration). Same users and files as [`FtpServer`].
pub struct MasqueradingServer {
    pub addr: SocketAddr,
    pub root: FtpRoot,
    pub pid: u32,
    log: tempfile::NamedTempFile,
}

impl MasqueradingServer {
    pub fn start(
        topo: &Topology,
        ns: &Netns,
        addr: SocketAddr,
        masquerade: Ipv4Addr,
    ) -> MasqueradingServer {
        let root = FtpRoot::create();
        let script = format!(
            r#"
import logging, sys
from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import FTPHandler
from pyftpdlib.servers import FTPServer
logging.basicConfig(level=logging.INFO, stream=sys.stderr)
auth = DummyAuthorizer()
auth.add_user({user:?}, {pw:?}, {root:?}, perm="elradfmwMT")
FTPHandler.authorizer = auth
FTPHandler.masquerade_address = {masq:?}
server = FTPServer(({ip:?}, {port}), FTPHandler)
server.serve_forever()
"#,
            user = FTP_USER,
            pw = FTP_PASS,
            root = root.path().display().to_string(),
            masq = masquerade.to_string(),
            ip = addr.ip().to_string(),
            port = addr.port(),
        );
        let log = tempfile::NamedTempFile::new().expect("tempfile");
        let mut cmd = ns.command("/usr/bin/python3");
        cmd.arg("-c")
            .arg(script)
            .stdin(Stdio::null())
            .stdout(log.reopen().expect("reopen log"))
            .stderr(log.reopen().expect("reopen log"));
        let pid = topo.spawn(cmd);
        let server = MasqueradingServer {
            addr,
            root,
            pid,
            log,
        };
        let probe = ns.spawn_thread(move || wait_banner(addr, Duration::from_secs(15)));
        if let Err(e) = probe.join().expect("probe thread") {
            panic!(
                "pyftpdlib (masquerade) on {addr} not ready: {e}\n{}",
                server.logs()
            );
        }
        server
    }

    pub fn logs(&self) -> String {
        fs::read_to_string(self.log.path()).unwrap_or_default()
    }
}

/// Polls `addr` until it answers with a complete 220 line (bounded).
pub fn wait_banner(addr: SocketAddr, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    while Instant::now() < deadline {
        match first_line(addr) {
            Ok(l) if l.starts_with("220 ") => return Ok(()),
            Ok(l) => last = format!("unexpected {l:?}"),
            Err(e) => last = e.to_string(),
        }
        // Retry interval while polling the real signal (the banner).
        thread::sleep(Duration::from_millis(50));
    }
    Err(last)
}

/// Connects to `addr` and returns the first line it sends (bounded).
pub fn first_line(addr: SocketAddr) -> std::io::Result<String> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line)?;
    Ok(line)
}
