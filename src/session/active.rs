//! Active mode (`PORT`/`EPRT`): which addresses a client may name, and where ftpgate's
//! own data connections come from and what it announces. Pure.
//!
//! A client's `PORT`/`EPRT` may name only the client itself (or a network listed in
//! `active.allow_foreign`): anything else is the FTP bounce attack (RFC 2577 §3), in
//! which a client makes the server (here: ftpgate) connect to a third host.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::config::ListenerMode;
use crate::metrics::Refusal;
use crate::protocol::addr::{canonical_ip, parse_eprt_arg, parse_port_arg, AddrError};
use crate::protocol::command::Verb;

use super::replies::LocalReply;

/// A refused command: the reason counted and the reply the client gets.
pub type Refused = (Refusal, LocalReply);

/// Checks a client's `PORT`/`EPRT` argument. Returns the (canonical) address the
/// client's data connection goes to, or why it is refused.
pub fn check_active_target(
    verb: Verb,
    arg: &[u8],
    client_ip: IpAddr,
    allow_foreign: &[ipnet::IpNet],
) -> Result<SocketAddr, Refused> {
    let parsed = match verb {
        Verb::Port => parse_port_arg(arg).map(SocketAddr::V4),
        _ => parse_eprt_arg(arg),
    };
    let target = match parsed {
        Ok(t) => t,
        Err(AddrError::UnsupportedProtocol) => {
            return Err((Refusal::BadAddress, LocalReply::UnsupportedProtocol))
        }
        Err(_) => return Err((Refusal::BadAddress, LocalReply::BadDataAddress(verb))),
    };
    let ip = canonical_ip(target.ip());
    if target.port() == 0 || ip.is_unspecified() {
        return Err((Refusal::BadAddress, LocalReply::NoUsableAddress(verb)));
    }
    let allowed = ip == canonical_ip(client_ip) || allow_foreign.iter().any(|n| n.contains(&ip));
    if !allowed {
        return Err((Refusal::Bounce, LocalReply::Bounce(verb)));
    }
    Ok(SocketAddr::new(ip, target.port()))
}

/// What ftpgate names in `PORT`/`EPRT` for its backend-side listener at `ours`. On a
/// gateway the server is on the internet: name the public address when one is
/// configured (ftpgate itself may sit behind NAT); in reverse mode the backend reaches
/// ftpgate on the private side, at the listener's own address.
pub fn backend_announce(
    mode: ListenerMode,
    public_v4: Option<Ipv4Addr>,
    ours: SocketAddr,
) -> SocketAddr {
    match (mode, public_v4, ours) {
        (ListenerMode::Transparent, Some(public), SocketAddr::V4(_)) => {
            SocketAddr::new(IpAddr::V4(public), ours.port())
        }
        _ => ours,
    }
}

/// The local address ftpgate connects to a client's data address from, if it must
/// choose one. Reverse: the address the client connected to (clients and their
/// firewalls expect data from there). Transparent: that address may be the server's
/// (TPROXY), so the kernel picks the LAN address — unless a source port is configured.
pub fn client_connect_local(
    mode: ListenerMode,
    source_port: u16,
    client_local: IpAddr,
    target: SocketAddr,
) -> Option<SocketAddr> {
    let ip = match mode {
        ListenerMode::Reverse => client_local,
        ListenerMode::Transparent if target.is_ipv4() => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        ListenerMode::Transparent => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    (source_port != 0 || mode == ListenerMode::Reverse).then_some(SocketAddr::new(ip, source_port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> ipnet::IpNet {
        s.parse().unwrap()
    }

    type Row = (
        IpAddr,
        Verb,
        &'static str,
        Vec<ipnet::IpNet>,
        Result<SocketAddr, Refused>,
    );

    /// Each row: client address, verb, argument, foreign allow-list, expected result.
    #[test]
    fn bounce_check_table() {
        let v4: IpAddr = "198.51.100.7".parse().unwrap();
        let v6: IpAddr = "2001:db8::7".parse().unwrap();
        // A v4 client on a dual-stack listener shows up as ::ffff:a.b.c.d.
        let mapped: IpAddr = "::ffff:198.51.100.7".parse().unwrap();
        let ok = |s: &str| Ok::<SocketAddr, Refused>(s.parse().unwrap());
        let bounce = |v| Err((Refusal::Bounce, LocalReply::Bounce(v)));
        let cases: Vec<Row> = vec![
            // The client's own address: curl and lftp in active mode.
            (
                v4,
                Verb::Port,
                "198,51,100,7,19,136",
                vec![],
                ok("198.51.100.7:5000"),
            ),
            (
                v4,
                Verb::Eprt,
                "|1|198.51.100.7|5000|",
                vec![],
                ok("198.51.100.7:5000"),
            ),
            (
                mapped,
                Verb::Port,
                "198,51,100,7,19,136",
                vec![],
                ok("198.51.100.7:5000"),
            ),
            (
                v6,
                Verb::Eprt,
                "|2|2001:db8::7|5000|",
                vec![],
                ok("[2001:db8::7]:5000"),
            ),
            // EPRT |2| naming a v4-mapped form of the v4 client is the client too.
            (
                v4,
                Verb::Eprt,
                "|2|::ffff:198.51.100.7|5000|",
                vec![],
                ok("198.51.100.7:5000"),
            ),
            // The bounce attack: a third host, v4 and v6, and the v6 client naming a v4 host.
            (
                v4,
                Verb::Port,
                "203,0,113,9,0,25",
                vec![],
                bounce(Verb::Port),
            ),
            (
                v4,
                Verb::Eprt,
                "|1|127.0.0.1|22|",
                vec![],
                bounce(Verb::Eprt),
            ),
            (
                v6,
                Verb::Eprt,
                "|2|2001:db8::66|25|",
                vec![],
                bounce(Verb::Eprt),
            ),
            (
                v6,
                Verb::Port,
                "198,51,100,7,0,25",
                vec![],
                bounce(Verb::Port),
            ),
            // active.allow_foreign lists deliberate exceptions (FXP between known hosts).
            (
                v4,
                Verb::Port,
                "203,0,113,9,19,136",
                vec![net("203.0.113.0/24")],
                ok("203.0.113.9:5000"),
            ),
            (
                v4,
                Verb::Port,
                "203,0,114,9,19,136",
                vec![net("203.0.113.0/24")],
                bounce(Verb::Port),
            ),
            // Unusable and malformed arguments.
            (
                v4,
                Verb::Port,
                "198,51,100,7,0,0",
                vec![],
                Err((Refusal::BadAddress, LocalReply::NoUsableAddress(Verb::Port))),
            ),
            (
                v4,
                Verb::Port,
                "0,0,0,0,19,136",
                vec![],
                Err((Refusal::BadAddress, LocalReply::NoUsableAddress(Verb::Port))),
            ),
            // `256` must never wrap into the next field.
            (
                v4,
                Verb::Port,
                "198,51,100,7,256,22",
                vec![],
                Err((Refusal::BadAddress, LocalReply::BadDataAddress(Verb::Port))),
            ),
            (
                v4,
                Verb::Eprt,
                "|3|198.51.100.7|5000|",
                vec![],
                Err((Refusal::BadAddress, LocalReply::UnsupportedProtocol)),
            ),
            (
                v4,
                Verb::Eprt,
                "garbage",
                vec![],
                Err((Refusal::BadAddress, LocalReply::BadDataAddress(Verb::Eprt))),
            ),
        ];
        for (client, verb, arg, allow, want) in cases {
            let got = check_active_target(verb, arg.as_bytes(), client, &allow);
            assert_eq!(got, want, "{client} {} {arg}", verb.as_str());
        }
    }

    #[test]
    fn announce_public_address_only_on_gateways() {
        let ours: SocketAddr = "10.0.0.1:50000".parse().unwrap();
        let public = Some(Ipv4Addr::new(203, 0, 113, 1));
        assert_eq!(
            backend_announce(ListenerMode::Transparent, public, ours),
            "203.0.113.1:50000".parse().unwrap()
        );
        assert_eq!(backend_announce(ListenerMode::Reverse, public, ours), ours);
        assert_eq!(
            backend_announce(ListenerMode::Transparent, None, ours),
            ours
        );
        let v6: SocketAddr = "[2001:db8::1]:50000".parse().unwrap();
        assert_eq!(backend_announce(ListenerMode::Transparent, public, v6), v6);
    }

    #[test]
    fn data_source_address_by_mode() {
        let local: IpAddr = "203.0.113.10".parse().unwrap();
        let t4: SocketAddr = "198.51.100.7:5000".parse().unwrap();
        let t6: SocketAddr = "[2001:db8::7]:5000".parse().unwrap();
        assert_eq!(
            client_connect_local(ListenerMode::Reverse, 0, local, t4),
            Some("203.0.113.10:0".parse().unwrap())
        );
        assert_eq!(
            client_connect_local(ListenerMode::Reverse, 20, local, t4),
            Some("203.0.113.10:20".parse().unwrap())
        );
        assert_eq!(
            client_connect_local(ListenerMode::Transparent, 0, local, t4),
            None
        );
        assert_eq!(
            client_connect_local(ListenerMode::Transparent, 20, local, t6),
            Some("[::]:20".parse().unwrap())
        );
    }
}
