//! Scale-out end to end: the Kubernetes data plane without Kubernetes. Three ftpgate
//! replicas behind an nftables balancer that picks a replica per connection, the way
//! kube-proxy's nftables mode does (`numgen random mod N map`), in front of one vsftpd.
//!
//! ```text
//!   client   198.51.100.2/24  ─┐                        ┌─ replica 0  10.0.0.1  (ftpgate-0)
//!   slow     198.51.100.3/24  ─┼─ [clients: bridge] ─ lb ┼─ replica 1  10.0.0.2  (ftpgate-1)
//!   intruder 198.51.100.66/24 ─┘   198.51.100.1 (eth0)   ├─ replica 2  10.0.0.3  (ftpgate-2)
//!                                  10.0.0.254   (eth1)   └─ backend    10.0.0.100 (vsftpd)
//!                                                          [pods: bridge 10.0.0.0/24]
//! ```
//!
//! The balancer (`lb`) DNATs `203.0.113.10` port 21 and the whole data-port range to a
//! replica chosen at random per connection and keeps the client's address (no SNAT
//! inbound, as `externalTrafficPolicy: Local`); replicas route via it, and only
//! connections they open towards the clients (active mode) are masqueraded. The
//! endpoint map is a named nftables map that [`ClusterTopology::set_endpoints`]
//! rewrites atomically, as an endpoint controller does when readiness changes.
//! Which replica the balancer picked for a connection is read from the balancer's
//! conntrack table ([`ClusterTopology::landed_on`]).

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::active::{self, CurlActive, Op};
use super::clients::{self, FtpTarget, Passive, Transcript};
use super::netns::{run_bounded, Netns, Segment, Topology};
use super::proxy::{Ftpgate, FtpgateOptions};
use super::servers::{FtpServer, ServerKind};

/// The balancer's public address (what `public_address` announces).
pub const PUBLIC: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
/// A second client whose link [`ClusterTopology::shape_slow_client`] can slow down.
pub const SLOW_CLIENT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 3);
pub const INTRUDER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 66);
pub const LB_CLIENT_SIDE: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
pub const LB_POD_SIDE: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 254);
pub const BACKEND: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 100);
pub const SLOTS: u16 = 3;
pub const DATA_PORTS: (u16, u16) = (50000, 50089);
pub const PEER_PORT: u16 = 2122;
pub const ADMIN_PORT: u16 = 9464;
/// nftables table of the balancer.
const LB_TABLE: &str = "ftpgate_lb";

/// Replica `k`'s address on the pod network.
pub fn replica_ip(k: u16) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 0, u8::try_from(k + 1).expect("small ordinal"))
}

/// The replica owning data port `port` (slices of `DATA_PORTS` as ftpgate cuts them).
pub fn owner_of(port: u16) -> Option<u16> {
    let (lo, hi) = DATA_PORTS;
    if !(lo..=hi).contains(&port) {
        return None;
    }
    let len = usize::from(hi - lo) + 1;
    let at = usize::from(port - lo);
    (0..SLOTS).find(|&k| {
        let start = |k: u16| len * usize::from(k) / usize::from(SLOTS);
        start(k) <= at && at < start(k + 1)
    })
}

/// The first port of replica `k`'s slice.
pub fn slice_start(k: u16) -> u16 {
    let (lo, hi) = DATA_PORTS;
    let len = usize::from(hi - lo) + 1;
    lo + u16::try_from(len * usize::from(k) / usize::from(SLOTS)).expect("port")
}

/// The control endpoint clients use.
pub fn public_control() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(PUBLIC), 21)
}

pub struct ClusterTopology {
    pub client: Netns,
    pub slow: Netns,
    pub intruder: Netns,
    pub lb: Netns,
    pub replicas: Vec<Netns>,
    pub backend: Netns,
    pub clients_seg: Segment,
    pub pods_seg: Segment,
    // Last field: dropped after anything a test stores in the struct above.
    pub topo: Topology,
}

impl ClusterTopology {
    pub fn new() -> ClusterTopology {
        let topo = Topology::new();
        let clients_seg = topo.segment("cseg");
        let pods_seg = topo.segment("pseg");
        let lb = topo.add_ns("lb");
        topo.attach(&clients_seg, &lb, "eth0");
        lb.addr("eth0", &format!("{LB_CLIENT_SIDE}/24"));
        topo.attach(&pods_seg, &lb, "eth1");
        lb.addr("eth1", &format!("{LB_POD_SIDE}/24"));
        // The public address is the balancer's own: a port it does not forward is
        // answered with a reset, as a cloud balancer without that listener does.
        lb.addr("lo", &format!("{PUBLIC}/32"));
        lb.sysctl("net.ipv4.ip_forward", "1");

        let mut client_hosts = Vec::new();
        for (role, ip) in [
            ("client", CLIENT),
            ("slow", SLOW_CLIENT),
            ("intruder", INTRUDER),
        ] {
            let ns = topo.add_ns(role);
            topo.attach(&clients_seg, &ns, "eth0");
            ns.addr("eth0", &format!("{ip}/24"));
            ns.route(&["default", "via", &LB_CLIENT_SIDE.to_string()]);
            client_hosts.push(ns);
        }
        let mut replicas = Vec::new();
        for k in 0..SLOTS {
            let ns = topo.add_ns(&format!("ftpgate-{k}"));
            topo.attach(&pods_seg, &ns, "eth0");
            ns.addr("eth0", &format!("{}/24", replica_ip(k)));
            ns.route(&["default", "via", &LB_POD_SIDE.to_string()]);
            replicas.push(ns);
        }
        // The backend has no route beyond the pod network: only replicas reach it.
        let backend = topo.add_ns("backend");
        topo.attach(&pods_seg, &backend, "eth0");
        backend.addr("eth0", &format!("{BACKEND}/24"));

        let intruder = client_hosts.pop().expect("intruder");
        let slow = client_hosts.pop().expect("slow");
        let client = client_hosts.pop().expect("client");
        let t = ClusterTopology {
            client,
            slow,
            intruder,
            lb,
            replicas,
            backend,
            clients_seg,
            pods_seg,
            topo,
        };
        t.install_balancer();
        t
    }

    fn nft_script(&self, script: &str) {
        let file = tempfile::NamedTempFile::new().expect("tempfile");
        fs::write(file.path(), script).expect("write nft script");
        self.lb
            .run_ok("nft", &["-f", &file.path().display().to_string()]);
    }

    fn install_balancer(&self) {
        self.nft_script(&format!(
            "table ip {LB_TABLE} {{
  map endpoints {{ typeof numgen random mod {SLOTS} : ip daddr; }}
  chain prerouting {{ type nat hook prerouting priority dstnat; policy accept; }}
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    # Only connections replicas open towards clients (active mode): the balancer's
    # DNAT'd flows are translated back by conntrack and never reach this chain.
    ip saddr 10.0.0.0/24 ip daddr 198.51.100.0/24 masquerade
  }}
}}
"
        ));
        self.set_endpoints(&(0..SLOTS).collect::<Vec<_>>());
    }

    /// Makes `ordinals` the balancer's endpoints, in one atomic nftables transaction
    /// (map and modulus together, as kube-proxy rewrites its `numgen` rule).
    /// Established flows keep their replica (conntrack).
    pub fn set_endpoints(&self, ordinals: &[u16]) {
        assert!(!ordinals.is_empty(), "a balancer needs an endpoint");
        let (lo, hi) = DATA_PORTS;
        let elements: Vec<String> = ordinals
            .iter()
            .enumerate()
            .map(|(i, &k)| format!("{i} : {}", replica_ip(k)))
            .collect();
        self.nft_script(&format!(
            "flush map ip {LB_TABLE} endpoints
add element ip {LB_TABLE} endpoints {{ {} }}
flush chain ip {LB_TABLE} prerouting
add rule ip {LB_TABLE} prerouting ip daddr {PUBLIC} tcp dport {{ 21, {lo}-{hi} }} dnat to numgen random mod {} map @endpoints
",
            elements.join(", "),
            ordinals.len()
        ));
    }

    /// The balancer's ruleset, for failure messages.
    pub fn describe_balancer(&self) -> String {
        let mut cmd = self.lb.command("nft");
        cmd.args(["list", "table", "ip", LB_TABLE]);
        let (out, _) = run_bounded(cmd, Duration::from_secs(10));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The replica the balancer sent the connection from `client` to `dport` to (its
    /// conntrack entry's reply source), or `None` when it has no entry.
    pub fn landed_on(&self, client: SocketAddr, dport: u16) -> Option<u16> {
        let mut cmd = self.lb.command("conntrack");
        cmd.args([
            "-L",
            "-p",
            "tcp",
            "--orig-src",
            &client.ip().to_string(),
            "--sport",
            &client.port().to_string(),
            "--dport",
            &dport.to_string(),
        ]);
        let (out, _) = run_bounded(cmd, Duration::from_secs(10));
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text.lines().next()?;
        // "tcp 6 ... src=C dst=PUBLIC sport=.. dport=.. src=REPLICA dst=C ..."
        let reply_src = line
            .split_whitespace()
            .filter_map(|w| w.strip_prefix("src="))
            .nth(1)?;
        let ip: Ipv4Addr = reply_src.parse().ok()?;
        (0..SLOTS).find(|&k| replica_ip(k) == ip)
    }

    /// Slows the slow client's link to `bytes_per_sec` both ways: its own uplink
    /// (uploads) and the bridge port towards it (downloads).
    pub fn shape_slow_client(&self, bytes_per_sec: usize) {
        super::firewall::slow_uplink(&self.slow, "eth0", bytes_per_sec);
        // The bridge port is eth0's veth peer: `eth0@ifN` names its index.
        let out = self.slow.ip(&["-o", "link", "show", "eth0"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let peer = text
            .split_whitespace()
            .nth(1)
            .and_then(|n| n.trim_end_matches(':').split_once("@if"))
            .map(|(_, i)| i.to_owned())
            .unwrap_or_else(|| panic!("no veth peer in {text:?}"));
        let out = self.clients_seg.ns.ip(&["-o", "link"]);
        let links = String::from_utf8_lossy(&out.stdout).into_owned();
        let port = links
            .lines()
            .find(|l| l.starts_with(&format!("{peer}: ")))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|n| n.trim_end_matches(':').split('@').next())
            .unwrap_or_else(|| panic!("bridge port {peer} not in {links}"))
            .to_owned();
        let rate = format!("{}bit", bytes_per_sec * 8);
        self.clients_seg.ns.run_ok(
            "tc",
            &[
                "qdisc", "add", "dev", &port, "root", "tbf", "rate", &rate, "burst", "32kb",
                "latency", "200ms",
            ],
        );
    }

    pub fn start_backend(&self) -> FtpServer {
        FtpServer::start(
            &self.topo,
            &self.backend,
            IpAddr::V4(BACKEND),
            ServerKind::Vsftpd,
        )
    }

    /// Replica `k`'s options: its YAML (cluster, admin, drain) written into `dir`.
    pub fn replica_options(&self, k: u16, dir: &Path) -> FtpgateOptions {
        let me = replica_ip(k);
        let peers: Vec<String> = (0..SLOTS)
            .map(|p| format!("\"{}:{PEER_PORT}\"", replica_ip(p)))
            .collect();
        let yaml = format!(
            "admin:
  listen: \"{me}:{ADMIN_PORT}\"
drain_timeout: 60s
cluster:
  slots: {SLOTS}
  ordinal: {k}
  peers: [{}]
  listen: \"0.0.0.0:{PEER_PORT}\"
  peer_cidrs: [\"10.0.0.0/24\"]
",
            peers.join(", ")
        );
        let cfg = dir.join(format!("ftpgate-{k}.yaml"));
        fs::write(&cfg, yaml).expect("write replica config");
        let mut o = FtpgateOptions::new(
            vec![SocketAddr::new(IpAddr::V4(me), 21)],
            SocketAddr::new(IpAddr::V4(BACKEND), 21),
            vec![IpAddr::V4(PUBLIC)],
        );
        o.data_ports = DATA_PORTS;
        o.log_level = "info".into();
        o.extra_args = vec!["--config".into(), cfg.display().to_string()];
        o
    }

    /// Starts replica `k` and waits (bounded) until its `/readyz` answers 200.
    pub fn start_replica(&self, k: u16, options: FtpgateOptions) -> Ftpgate {
        let gate = Ftpgate::start(&self.replicas[usize::from(k)], options);
        let admin = self.admin(k);
        let ns = self.replicas[usize::from(k)].clone();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match http_get(&ns, admin, "/readyz") {
                Ok((200, _)) => return gate,
                other => assert!(
                    Instant::now() < deadline,
                    "replica {k}: /readyz never 200 (last {other:?})\n{}",
                    gate.describe()
                ),
            }
            // Polling the readiness endpoint (bounded above).
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn admin(&self, k: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(replica_ip(k)), ADMIN_PORT)
    }

    /// Replica `k`'s `/metrics`, parsed.
    pub fn scrape(&self, k: u16) -> Scrape {
        let (code, body) = http_get(&self.replicas[usize::from(k)], self.admin(k), "/metrics")
            .unwrap_or_else(|e| panic!("scrape replica {k}: {e}"));
        assert_eq!(code, 200, "replica {k} /metrics: {body}");
        Scrape::parse(&body)
    }
}

impl Default for ClusterTopology {
    fn default() -> Self {
        Self::new()
    }
}

/// A bounded HTTP/1.0 GET from inside `ns`: (status, body).
pub fn http_get(ns: &Netns, addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let path = path.to_owned();
    ns.spawn_thread(move || {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .map_err(|e| format!("connect {addr}: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .map_err(|e| e.to_string())?;
        let mut text = String::new();
        s.read_to_string(&mut text).map_err(|e| e.to_string())?;
        let code = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| format!("no status line in {text:?}"))?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        Ok((code, body))
    })
    .join()
    .expect("http thread")
}

/// A Prometheus text exposition: samples by name with their labels.
#[derive(Debug, Default)]
pub struct Scrape {
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

impl Scrape {
    pub fn parse(text: &str) -> Scrape {
        let mut samples = Vec::new();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            let (name, labels) = match series.split_once('{') {
                Some((n, rest)) => {
                    let mut m = BTreeMap::new();
                    for pair in rest.trim_end_matches('}').split("\",") {
                        if let Some((k, v)) = pair.split_once("=\"") {
                            m.insert(
                                k.trim_matches(',').to_owned(),
                                v.trim_end_matches('"').to_owned(),
                            );
                        }
                    }
                    (n.to_owned(), m)
                }
                None => (series.to_owned(), BTreeMap::new()),
            };
            samples.push((name, labels, value));
        }
        Scrape { samples }
    }

    /// Sum of `name` over the samples whose labels include every `(key, value)`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        let total: f64 = self
            .samples
            .iter()
            .filter(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, _, v)| v)
            .sum();
        total as u64
    }

    /// `ftpgate_cluster_forwarded_total{direction}` (every peer).
    pub fn forwarded(&self, direction: &str) -> u64 {
        self.sum(
            "ftpgate_cluster_forwarded_total",
            &[("direction", direction)],
        )
    }

    /// `ftpgate_cluster_forward_failures_total` with these labels.
    pub fn forward_failures(&self, labels: &[(&str, &str)]) -> u64 {
        self.sum("ftpgate_cluster_forward_failures_total", labels)
    }

    /// `ftpgate_refusals_total{reason}`.
    pub fn refusals(&self, reason: &str) -> u64 {
        self.sum("ftpgate_refusals_total", &[("reason", reason)])
    }
}

// ------------------------------------------------------------------ clients

/// Which real client runs a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Curl,
    Lftp,
    Ftplib,
}

/// The data connection setup a client uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataMode {
    Epsv,
    Pasv,
    Port,
    Eprt,
}

/// Download or upload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    Get,
    Put,
}

/// One client session: who, how, which way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Job {
    pub kind: Kind,
    pub mode: DataMode,
    pub dir: Dir,
}

impl Job {
    /// Every combination the real clients can do (lftp sends PORT, never EPRT, over
    /// IPv4).
    pub fn all() -> Vec<Job> {
        let mut v = Vec::new();
        for kind in [Kind::Curl, Kind::Lftp, Kind::Ftplib] {
            for mode in [
                DataMode::Epsv,
                DataMode::Pasv,
                DataMode::Port,
                DataMode::Eprt,
            ] {
                for dir in [Dir::Get, Dir::Put] {
                    if !(kind == Kind::Lftp && mode == DataMode::Eprt) {
                        v.push(Job { kind, mode, dir });
                    }
                }
            }
        }
        v
    }

    /// Runs the session from `ns` (whose address is `me`): downloads `remote` into
    /// `local`, or uploads `local` as `remote`.
    pub fn run(
        &self,
        ns: &Netns,
        me: Ipv4Addr,
        t: &FtpTarget,
        local: &Path,
        remote: &str,
    ) -> Transcript {
        let op = match self.dir {
            Dir::Get => Op::Download { remote, local },
            Dir::Put => Op::Upload { local, remote },
        };
        let passive = |m| match m {
            DataMode::Pasv => Some(Passive::Pasv),
            DataMode::Epsv => Some(Passive::Epsv),
            _ => None,
        };
        match (self.kind, passive(self.mode)) {
            (Kind::Ftplib, _) => ftplib_transfer(ns, t, self.mode, op),
            (Kind::Curl, Some(p)) => match self.dir {
                Dir::Get => clients::curl_download(ns, t, remote, local, p),
                Dir::Put => clients::curl_upload(ns, t, local, remote, p),
            },
            (Kind::Curl, None) => {
                let flavour = if self.mode == DataMode::Port {
                    CurlActive::Port
                } else {
                    CurlActive::Eprt
                };
                active::curl_active(ns, t, IpAddr::V4(me), flavour, op)
            }
            (Kind::Lftp, Some(p)) => match self.dir {
                Dir::Get => clients::lftp_download(ns, t, remote, local, p),
                Dir::Put => clients::lftp_upload(ns, t, local, remote, p),
            },
            (Kind::Lftp, None) => active::lftp_active(ns, t, op),
        }
    }
}

/// Python ftplib in any of the four data modes (EPSV and EPRT forced on an IPv4
/// control connection); replies are echoed to stderr as `< 150 ...` so
/// [`Transcript::reply_lines`] reads them as for curl. The reply to QUIT does not
/// matter (a draining server may close instead), as for any real client.
pub fn ftplib_transfer(ns: &Netns, t: &FtpTarget, mode: DataMode, op: Op<'_>) -> Transcript {
    let (cmd, local) = match op {
        Op::Download { remote, local } => (format!("RETR {remote}"), local),
        Op::Upload { local, remote } => (format!("STOR {remote}"), local),
        Op::List { .. } => panic!("ftplib_transfer moves files"),
    };
    let script = format!(
        r#"
import ftplib, socket, sys
MODE = {mode:?}
class F(ftplib.FTP):
    def getline(self):
        line = super().getline()
        sys.stderr.write("< " + line + "\n")
        return line
    def makepasv(self):
        if MODE == "Epsv":
            _, port = ftplib.parse229(self.sendcmd("EPSV"), self.sock.getpeername())
            return self.sock.getpeername()[0], port
        return super().makepasv()
    def makeport(self):
        if MODE != "Eprt":
            return super().makeport()
        host = self.sock.getsockname()[0]
        sock = socket.create_server((host, 0), family=socket.AF_INET, backlog=1)
        self.sendeprt(host, sock.getsockname()[1])
        sock.settimeout(self.timeout)
        return sock
ftp = F(timeout=30)
ftp.trust_server_pasv_ipv4_address = True
ftp.connect({host:?}, {port})
ftp.login({user:?}, {pw:?})
ftp.set_pasv(MODE in ("Epsv", "Pasv"))
if {upload}:
    with open({local:?}, "rb") as f:
        ftp.storbinary({cmd:?}, f)
else:
    with open({local:?}, "wb") as f:
        ftp.retrbinary({cmd:?}, f.write)
try:
    ftp.quit()
except Exception:
    ftp.close()
"#,
        mode = format!("{mode:?}"),
        host = t.addr.ip().to_string(),
        port = t.addr.port(),
        user = t.user,
        pw = t.pass,
        upload = if matches!(op, Op::Upload { .. }) {
            "True"
        } else {
            "False"
        },
        local = local.display().to_string(),
    );
    let mut c = ns.command("/usr/bin/python3");
    c.arg("-c").arg(script);
    clients::run(c)
}

/// How one session ended.
#[derive(Debug)]
pub enum Outcome {
    /// Exit 0 and the file byte-exact.
    Ok,
    /// `421` before any transfer started: a real client reconnects and retries.
    Retried(String),
    /// Anything else.
    Failed(String),
}

/// Classifies a client run: `exact` says whether the moved file is byte-exact.
pub fn outcome(t: &Transcript, exact: impl FnOnce() -> bool) -> Outcome {
    let started = !t.reply_lines("150").is_empty() || !t.reply_lines("125").is_empty();
    if t.success() {
        return if exact() {
            Outcome::Ok
        } else {
            Outcome::Failed(format!("exit 0 but not byte-exact\n{t}"))
        };
    }
    if !started && !t.reply_lines("421").is_empty() {
        return Outcome::Retried(t.reply_lines("421").join(" | "));
    }
    Outcome::Failed(t.to_string())
}

/// Files a session moves: a download target or an upload source, and its name.
pub struct Files {
    pub work: PathBuf,
    /// Served as `pub/<name>`, and the upload source.
    pub name: String,
    pub sha256: String,
    pub source: PathBuf,
}

impl Files {
    /// Puts a random `len`-byte `pub/<name>` into `server`'s root and keeps a copy as
    /// the upload source in `work`.
    pub fn new(server: &FtpServer, work: &Path, name: &str, len: usize) -> Files {
        use std::os::unix::fs::PermissionsExt;
        let source = work.join(format!("src-{name}"));
        super::servers::write_random_file(&source, len);
        let served = server.root.path().join("pub").join(name);
        fs::copy(&source, &served).expect("copy served file");
        fs::set_permissions(&served, fs::Permissions::from_mode(0o644)).unwrap();
        Files {
            work: work.to_owned(),
            name: name.to_owned(),
            sha256: super::sha256_file(&source),
            source,
        }
    }

    /// Runs `job` as session number `n` from `ns` (address `me`) and classifies it.
    pub fn session(
        &self,
        server: &FtpServer,
        ns: &Netns,
        me: Ipv4Addr,
        job: Job,
        n: usize,
    ) -> (Outcome, Transcript) {
        let t = FtpTarget::new(public_control());
        let tag = format!("{n}-{:?}-{:?}-{:?}", job.kind, job.mode, job.dir).to_lowercase();
        match job.dir {
            Dir::Get => {
                let local = self.work.join(format!("got-{tag}.bin"));
                let tr = job.run(ns, me, &t, &local, &format!("pub/{}", self.name));
                let o = outcome(&tr, || super::sha256_file(&local) == self.sha256);
                let _ = fs::remove_file(&local);
                (o, tr)
            }
            Dir::Put => {
                let remote = format!("up-{tag}.bin");
                let tr = job.run(ns, me, &t, &self.source, &format!("upload/{remote}"));
                let stored = server.root.uploaded(&remote);
                let o = outcome(&tr, || {
                    stored.exists() && super::sha256_file(&stored) == self.sha256
                });
                let _ = fs::remove_file(&stored);
                (o, tr)
            }
        }
    }
}
