//! Passive mode (`227`/`229`): where ftpgate connects on a backend's say-so, what it
//! announces to clients, and how a multi-line passive reply is held until its final
//! line. Pure.
//!
//! A backend's `227` names an address ftpgate will connect to and relay to the client.
//! A compromised or misconfigured backend could name anything — ftpgate's loopback
//! services, its private network — so the named address is used only when it is the
//! backend's own control address or listed in `passive.allow_targets`; everything else
//! falls back to the control address (which is where RFC 2428 `229` goes anyway).

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};

use crate::config::{ListenerMode, PassiveTarget};
use crate::protocol::addr::{canonical_ip, is_never_a_data_target, is_private_v4};
use crate::protocol::command::Verb;

/// Where ftpgate connects for a backend's `227`, and whether that overrode the reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PassiveTargetDecision {
    /// The address the backend named.
    Named(SocketAddr),
    /// The backend's control address, because the reply said `0.0.0.0` or the
    /// configuration asks for the control address.
    Control(SocketAddr),
    /// The backend's control address, because the named address is not one ftpgate
    /// connects to (counted and logged: a misconfigured or hostile backend).
    Substituted {
        /// The address the backend named.
        named: Ipv4Addr,
        /// The backend's control address, used instead.
        used: SocketAddr,
    },
}

impl PassiveTargetDecision {
    /// The address to connect to.
    pub fn addr(self) -> SocketAddr {
        match self {
            PassiveTargetDecision::Named(a) | PassiveTargetDecision::Control(a) => a,
            PassiveTargetDecision::Substituted { used, .. } => used,
        }
    }
}

/// Decides the data target for a backend's `227` naming `advertised`.
///
/// `is_own` says whether an address is one of ftpgate's own (a backend must not make
/// ftpgate connect to itself).
pub fn passive_target(
    advertised: SocketAddrV4,
    backend: IpAddr,
    policy: PassiveTarget,
    allow_targets: &[ipnet::IpNet],
    is_own: impl Fn(IpAddr) -> bool,
) -> PassiveTargetDecision {
    let port = advertised.port();
    let control = SocketAddr::new(backend, port);
    let named = *advertised.ip();
    // RFC 959 does not define 0.0.0.0; servers mean "my control address".
    if policy == PassiveTarget::Control || named.is_unspecified() {
        return PassiveTargetDecision::Control(control);
    }
    let ip = IpAddr::V4(named);
    if ip == canonical_ip(backend) {
        return PassiveTargetDecision::Named(SocketAddr::new(ip, port));
    }
    let listed = allow_targets.iter().any(|n| n.contains(&ip));
    if listed && !is_never_a_data_target(ip) && !is_own(ip) {
        return PassiveTargetDecision::Named(SocketAddr::new(ip, port));
    }
    PassiveTargetDecision::Substituted {
        named,
        used: control,
    }
}

/// The IPv4 address clients are told to connect to in a `227`. In reverse mode clients
/// come from the internet: the public address. On a gateway they are on the LAN and
/// reach ftpgate where their control connection did.
pub fn announce_v4(
    mode: ListenerMode,
    public_v4: Option<Ipv4Addr>,
    client_local: IpAddr,
) -> Option<Ipv4Addr> {
    let local = match canonical_ip(client_local) {
        IpAddr::V4(v4) => Some(v4),
        IpAddr::V6(_) => None,
    };
    match mode {
        ListenerMode::Reverse => public_v4.or(local),
        ListenerMode::Transparent => local,
    }
}

/// Where a client-facing passive listener binds: the address the client reached
/// ftpgate at, except that a `227` listener must be IPv4 even for an IPv6 control
/// connection.
pub fn client_listener_ip(verb: Verb, client_local: IpAddr) -> IpAddr {
    match (verb, client_local) {
        (Verb::Pasv, IpAddr::V6(_)) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        (_, ip) => ip,
    }
}

/// Gateway mode without `map_passive`: a `227` naming a private address, from a server
/// whose control address is public, is unusable from anywhere else. Returns the
/// control address to name instead, or `None` to pass the reply through.
pub fn fix_private_pasv(named: Ipv4Addr, server: IpAddr) -> Option<Ipv4Addr> {
    let IpAddr::V4(server) = canonical_ip(server) else {
        return None;
    };
    if named == server || !is_private_v4(named) || is_private_v4(server) {
        return None;
    }
    Some(server)
}

/// Lines of a multi-line `227`/`229` kept until the reply ends: only the final line
/// carries the reply (RFC 959 §4.2), so only it is mapped, and when it cannot be the
/// whole reply is replaced by one `425` — a client never sees half a block.
#[derive(Debug, Default)]
pub struct HeldReply {
    lines: Vec<Vec<u8>>,
    bytes: usize,
    overflowed: bool,
}

/// The most a held passive reply may take before it is refused. Real servers send
/// `227`/`229` on one line; a block this large is garbage or an attack.
pub const MAX_HELD_REPLY_LINES: usize = 64;
/// Bytes of a held passive reply block, at most; a larger one is replaced by `425`.
pub const MAX_HELD_REPLY_BYTES: usize = 16 * 1024;

impl HeldReply {
    /// Holds one line that is not the reply's last.
    pub fn push(&mut self, line: &[u8]) {
        if self.overflowed {
            return;
        }
        self.bytes += line.len();
        if self.lines.len() >= MAX_HELD_REPLY_LINES || self.bytes > MAX_HELD_REPLY_BYTES {
            self.overflowed = true;
            self.lines.clear();
            return;
        }
        self.lines.push(line.to_vec());
    }

    /// Whether the block outgrew the bounds (its lines are dropped).
    pub fn overflowed(&self) -> bool {
        self.overflowed
    }

    /// The held lines, in order.
    pub fn lines(&self) -> impl Iterator<Item = &[u8]> {
        self.lines.iter().map(Vec::as_slice)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(s: &str) -> SocketAddrV4 {
        s.parse().unwrap()
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// Each row: what the backend's `227` names, the backend's control address, the
    /// policy, the allow-list, and where ftpgate must connect.
    #[test]
    fn passive_target_table() {
        use PassiveTargetDecision::*;
        let backend: IpAddr = "10.0.0.2".parse().unwrap();
        let allow: Vec<ipnet::IpNet> = vec!["10.0.1.0/24".parse().unwrap()];
        let own = |ip: IpAddr| ip == "10.0.1.1".parse::<IpAddr>().unwrap();
        let cases = [
            // vsftpd naming its own address: used as named.
            (
                "10.0.0.2:5000",
                PassiveTarget::Reply,
                Named(sa("10.0.0.2:5000")),
            ),
            // 0.0.0.0 (some servers behind NAT): the control address.
            (
                "0.0.0.0:5000",
                PassiveTarget::Reply,
                Control(sa("10.0.0.2:5000")),
            ),
            (
                "10.0.0.9:5000",
                PassiveTarget::Control,
                Control(sa("10.0.0.2:5000")),
            ),
            // A multi-homed server on a listed network (its data NIC).
            (
                "10.0.1.7:5000",
                PassiveTarget::Reply,
                Named(sa("10.0.1.7:5000")),
            ),
            // A hostile backend pointing ftpgate at its own loopback services.
            (
                "127.0.0.1:7777",
                PassiveTarget::Reply,
                Substituted {
                    named: "127.0.0.1".parse().unwrap(),
                    used: sa("10.0.0.2:7777"),
                },
            ),
            // ... at the cloud metadata service (link-local).
            (
                "169.254.169.254:80",
                PassiveTarget::Reply,
                Substituted {
                    named: "169.254.169.254".parse().unwrap(),
                    used: sa("10.0.0.2:80"),
                },
            ),
            // ... at another host of the private network, not listed.
            (
                "10.0.0.66:22",
                PassiveTarget::Reply,
                Substituted {
                    named: "10.0.0.66".parse().unwrap(),
                    used: sa("10.0.0.2:22"),
                },
            ),
            // ... at a listed network, but one of ftpgate's own addresses there.
            (
                "10.0.1.1:9464",
                PassiveTarget::Reply,
                Substituted {
                    named: "10.0.1.1".parse().unwrap(),
                    used: sa("10.0.0.2:9464"),
                },
            ),
            // A pasv_address meant for direct internet clients (public, not listed).
            (
                "203.0.113.5:5000",
                PassiveTarget::Reply,
                Substituted {
                    named: "203.0.113.5".parse().unwrap(),
                    used: sa("10.0.0.2:5000"),
                },
            ),
        ];
        for (named, policy, want) in cases {
            let got = passive_target(v4(named), backend, policy, &allow, own);
            assert_eq!(got, want, "{named} {policy:?}");
        }
    }

    #[test]
    fn loopback_backend_naming_itself_is_itself() {
        // A server on the same host (and the in-process tests' mock) names 127.0.0.1.
        let got = passive_target(
            v4("127.0.0.1:5000"),
            "127.0.0.1".parse().unwrap(),
            PassiveTarget::Reply,
            &[],
            |_| true,
        );
        assert_eq!(got, PassiveTargetDecision::Named(sa("127.0.0.1:5000")));
    }

    #[test]
    fn listed_loopback_is_still_refused() {
        let allow: Vec<ipnet::IpNet> = vec!["0.0.0.0/0".parse().unwrap()];
        let got = passive_target(
            v4("127.0.0.1:22"),
            "10.0.0.2".parse().unwrap(),
            PassiveTarget::Reply,
            &allow,
            |_| false,
        );
        assert!(matches!(got, PassiveTargetDecision::Substituted { .. }));
    }

    #[test]
    fn announced_address_by_mode() {
        let public = Some(Ipv4Addr::new(203, 0, 113, 10));
        let lan: IpAddr = "10.0.0.1".parse().unwrap();
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(announce_v4(ListenerMode::Reverse, public, lan), public);
        assert_eq!(
            announce_v4(ListenerMode::Reverse, None, mapped),
            Some(Ipv4Addr::new(10, 0, 0, 1))
        );
        assert_eq!(announce_v4(ListenerMode::Reverse, None, v6), None);
        assert_eq!(
            announce_v4(ListenerMode::Transparent, public, lan),
            Some(Ipv4Addr::new(10, 0, 0, 1))
        );
    }

    #[test]
    fn pasv_listener_is_ipv4_for_ipv6_clients() {
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(
            client_listener_ip(Verb::Pasv, v6),
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        );
        assert_eq!(client_listener_ip(Verb::Epsv, v6), v6);
    }

    #[test]
    fn private_227_fixed_only_for_public_servers() {
        let private = Ipv4Addr::new(10, 0, 0, 5);
        let public: IpAddr = "198.51.100.20".parse().unwrap();
        assert_eq!(
            fix_private_pasv(private, public),
            Some(Ipv4Addr::new(198, 51, 100, 20))
        );
        assert_eq!(fix_private_pasv(private, "10.0.0.5".parse().unwrap()), None);
        assert_eq!(
            fix_private_pasv(private, "192.168.1.1".parse().unwrap()),
            None
        );
        assert_eq!(
            fix_private_pasv(Ipv4Addr::new(198, 51, 100, 21), public),
            None
        );
        assert_eq!(
            fix_private_pasv(private, "2001:db8::1".parse().unwrap()),
            None
        );
    }

    #[test]
    fn held_reply_is_bounded() {
        let mut h = HeldReply::default();
        for _ in 0..MAX_HELD_REPLY_LINES {
            h.push(b"227-x\r\n");
        }
        assert!(!h.overflowed());
        assert_eq!(h.lines().count(), MAX_HELD_REPLY_LINES);
        h.push(b"227-x\r\n");
        assert!(h.overflowed());
        assert_eq!(h.lines().count(), 0, "an overflowed block keeps nothing");
        let mut big = HeldReply::default();
        big.push(&vec![b'x'; MAX_HELD_REPLY_BYTES + 1]);
        assert!(big.overflowed());
    }
}
