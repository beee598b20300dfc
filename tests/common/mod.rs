//! The one test harness. End-to-end tests `mod common;` and get network
//! namespaces ([`netns`]), real FTP daemons ([`servers`]), real FTP clients
//! ([`clients`]) and ftpgate as a process ([`proxy`]), plus ready-made
//! topologies. In-process tests need none of that: they include
//! `common/inprocess.rs` (ftpgate on loopback port 0, a minimal client) and
//! `common/mock_ftp.rs` (a scriptable server) with `#[path]`.
//!
//! Requirements: root, iproute2, and what `scripts/install-test-deps.sh`
//! installs. Tests call [`e2e_enabled`] first: without privileges they skip
//! with a message, unless `CI` is set, in which case they fail.
//!
//! Network rule: all traffic stays inside namespaces the harness creates,
//! using documentation ("Internet": 203.0.113.0/24, 2001:db8::/32) and
//! private (10.0.0.0/8) addresses.

// Each test binary uses a different subset of the harness.
#![allow(dead_code)]

pub mod active;
pub mod clients;
pub mod cluster;
pub mod firewall;
pub mod gateway;
pub mod netns;
pub mod probe;
pub mod proxy;
pub mod servers;

use std::fs::File;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::process::Command;

use sha2::{Digest, Sha256};

pub use netns::{Netns, Segment, Topology};

/// Hex SHA-256 of a file's contents.
pub fn sha256_file(path: &Path) -> String {
    let mut f = File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).expect("read");
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    hex(&h.finalize())
}

pub fn sha256_bytes(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn is_root() -> bool {
    // Effective uid from /proc, avoiding a libc dependency.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

fn has_ip() -> bool {
    Command::new("ip")
        .arg("-V")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Whether namespace-based tests can run. Without root or `ip`: panics when
/// the `CI` environment variable is set (CI must never silently skip),
/// otherwise prints a SKIP line to stderr and returns false.
pub fn e2e_enabled(test: &str) -> bool {
    let missing = match (is_root(), has_ip()) {
        (true, true) => return true,
        (false, _) => "root privileges",
        (true, false) => "the `ip` command (iproute2)",
    };
    if std::env::var_os("CI").is_some() {
        panic!("{test}: end-to-end tests need {missing}, and CI is set: refusing to skip");
    }
    // Written to the stderr handle rather than with eprintln!, which the
    // test harness captures and only shows for failing tests.
    let _ = writeln!(
        std::io::stderr(),
        "SKIP {test}: needs {missing} (run scripts/test.sh as root)"
    );
    false
}

/// Addresses of [`ReverseTopology`].
pub mod addrs {
    use super::*;
    pub const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
    pub const ATTACKER_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 66);
    pub const PROXY_PUBLIC_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
    pub const PROXY_PRIVATE_V4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
    pub const BACKEND_V4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
    pub const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 2);
    pub const ATTACKER_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0x66);
    pub const PROXY_PUBLIC_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1);
    pub const FTP_PORT: u16 = 21;
}

/// The public side that [`ReverseTopology`] and `active::ActiveTopology`
/// share: a bridge with the client, the attacker and the proxy on it (each on
/// `eth0`, with its [`addrs`] v4/24 and v6/64), the proxy not forwarding.
/// One builder, so both topologies' public sides cannot drift apart.
pub struct PublicSide {
    pub public: Segment,
    pub client: Netns,
    pub attacker: Netns,
    pub proxy: Netns,
}

impl PublicSide {
    pub fn new(topo: &Topology) -> PublicSide {
        use addrs::*;
        let public = topo.segment("pub");
        let client = topo.add_ns("client");
        let attacker = topo.add_ns("attacker");
        let proxy = topo.add_ns("proxy");
        for (host, v4, v6) in [
            (&client, CLIENT_V4, CLIENT_V6),
            (&attacker, ATTACKER_V4, ATTACKER_V6),
            (&proxy, PROXY_PUBLIC_V4, PROXY_PUBLIC_V6),
        ] {
            topo.attach(&public, host, "eth0");
            host.addr("eth0", &format!("{v4}/24"));
            host.addr("eth0", &format!("{v6}/64"));
        }
        // The proxy host is not a router: only ftpgate may carry traffic.
        proxy.sysctl("net.ipv4.ip_forward", "0");
        proxy.sysctl("net.ipv6.conf.all.forwarding", "0");
        PublicSide {
            public,
            client,
            attacker,
            proxy,
        }
    }
}

/// The reverse-proxy topology:
///
/// ```text
///   client   203.0.113.2/24  2001:db8:1::2/64 ─┐
///   attacker 203.0.113.66/24 2001:db8:1::66/64 ┼─ [public: bridge]
///   proxy    203.0.113.1/24  2001:db8:1::1/64 ─┘   (eth0)
///   proxy    10.0.0.1/24 (eth1) ───── backend 10.0.0.2/24 (eth0)
/// ```
///
/// The proxy namespace does not forward (ip_forward=0) and public hosts have
/// routes only for their own subnet, so the backend's private address is
/// unreachable from the client: a proxy that relayed 227 unchanged would
/// send the client to an address it cannot reach.
pub struct ReverseTopology {
    pub client: Netns,
    pub attacker: Netns,
    pub proxy: Netns,
    pub backend: Netns,
    pub public: Segment,
    // Last field: dropped after anything a test stores in the struct above.
    pub topo: Topology,
}

impl ReverseTopology {
    pub fn new() -> ReverseTopology {
        use addrs::*;
        let topo = Topology::new();
        let PublicSide {
            public,
            client,
            attacker,
            proxy,
        } = PublicSide::new(&topo);
        let backend = topo.add_ns("backend");
        topo.link(&proxy, "eth1", &backend, "eth0");
        proxy.addr("eth1", &format!("{PROXY_PRIVATE_V4}/24"));
        backend.addr("eth0", &format!("{BACKEND_V4}/24"));

        ReverseTopology {
            client,
            attacker,
            proxy,
            backend,
            public,
            topo,
        }
    }

    /// ftpgate's IPv4 control endpoint as seen by the client.
    pub fn proxy_v4(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(addrs::PROXY_PUBLIC_V4), addrs::FTP_PORT)
    }

    pub fn proxy_v6(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V6(addrs::PROXY_PUBLIC_V6), addrs::FTP_PORT)
    }

    pub fn backend_addr(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(addrs::BACKEND_V4), addrs::FTP_PORT)
    }

    /// Starts a real FTP server on the backend's private address.
    pub fn start_backend(&self, kind: servers::ServerKind) -> servers::FtpServer {
        servers::FtpServer::start(
            &self.topo,
            &self.backend,
            IpAddr::V4(addrs::BACKEND_V4),
            kind,
        )
    }

    /// Default ftpgate options for this topology: listen on the public v4 and
    /// v6 addresses, forward to `backend`, advertise the public addresses.
    pub fn ftpgate_options(&self, backend: SocketAddr) -> proxy::FtpgateOptions {
        proxy::FtpgateOptions::new(
            vec![self.proxy_v4(), self.proxy_v6()],
            backend,
            vec![
                IpAddr::V4(addrs::PROXY_PUBLIC_V4),
                IpAddr::V6(addrs::PROXY_PUBLIC_V6),
            ],
        )
    }

    pub fn start_ftpgate(&self, options: proxy::FtpgateOptions) -> proxy::Ftpgate {
        proxy::Ftpgate::start(&self.proxy, options)
    }
}

impl Default for ReverseTopology {
    fn default() -> Self {
        Self::new()
    }
}
