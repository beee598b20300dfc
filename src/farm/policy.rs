//! Balancing policies as pure functions: given the members, their load and health,
//! and what is known of the session, the order in which to try members.
//!
//! ```text
//!   members ─▶ eligible (not draining, not known down) ─▶ policy order ─┐
//!           └▶ known down (not draining) ─────────── as a last resort ──┴▶ try in turn
//! ```
//! Draining members never take a new session. Consistent hashing (`source-ip`,
//! `user`) is weighted rendezvous hashing (HRW): every member scores the key and the
//! highest score wins, so removing a member moves only the keys it held and adding
//! one takes only its weighted share; the next-highest score is the failover.

use std::cmp::Ordering;
use std::net::{IpAddr, SocketAddr};

use serde::Deserialize;

/// How a new session picks its backend (`--balance`, YAML `balance`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum BalancePolicy {
    /// Weighted round robin.
    #[default]
    RoundRobin,
    /// Fewest active sessions relative to weight (long transfers skew the load).
    LeastConnections,
    /// Consistent hash of the client's (real) address: a client keeps its server.
    SourceIp,
    /// ftpgate greets, reads `USER`, routes by `routes` then a consistent hash of
    /// the name.
    User,
}

impl BalancePolicy {
    /// The metric label and the spelling in flags and YAML.
    pub fn label(self) -> &'static str {
        match self {
            BalancePolicy::RoundRobin => "round-robin",
            BalancePolicy::LeastConnections => "least-connections",
            BalancePolicy::SourceIp => "source-ip",
            BalancePolicy::User => "user",
        }
    }
}

/// One member as the policy sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    /// The resolved address.
    pub addr: SocketAddr,
    /// Relative share (at least 1).
    pub weight: u32,
    /// Sessions running on it now.
    pub sessions: usize,
    /// Takes no new sessions.
    pub draining: bool,
    /// Known down (health check or a failed session connect).
    pub down: bool,
}

/// What the policy may key on.
#[derive(Debug, Clone, Copy)]
pub struct SessionKey<'a> {
    /// The client's real address (the PROXY header's source when one was accepted).
    pub client_ip: IpAddr,
    /// The `USER` name, under the `user` policy.
    pub user: Option<&'a str>,
}

/// The members to try, best first: eligible ones in policy order, then members known
/// down (they may have recovered since the last check; better late than `421`).
/// `turn` is a per-farm counter that rotates round robin and breaks ties.
pub fn try_order(
    policy: BalancePolicy,
    members: &[Candidate],
    key: SessionKey<'_>,
    turn: u64,
) -> Vec<SocketAddr> {
    let (mut eligible, mut down): (Vec<Candidate>, Vec<Candidate>) = members
        .iter()
        .filter(|c| !c.draining)
        .partition(|c| !c.down);
    order_by(policy, &mut eligible, key, turn);
    order_by(policy, &mut down, key, turn);
    eligible.iter().chain(&down).map(|c| c.addr).collect()
}

fn order_by(policy: BalancePolicy, list: &mut [Candidate], key: SessionKey<'_>, turn: u64) {
    match policy {
        BalancePolicy::RoundRobin => weighted_rotation(list, turn),
        BalancePolicy::LeastConnections => {
            // Rotate first so equally loaded members share ties in turn.
            weighted_rotation(list, turn);
            // sessions/weight, compared without division.
            list.sort_by(|a, b| {
                let l = a.sessions as u128 * u128::from(b.weight.max(1));
                let r = b.sessions as u128 * u128::from(a.weight.max(1));
                l.cmp(&r)
            });
        }
        BalancePolicy::SourceIp => hrw_sort(list, &key.client_ip.to_string()),
        BalancePolicy::User => hrw_sort(list, key.user.unwrap_or_default()),
    }
}

/// Weighted round robin: turn `t` starts at the member owning slot `t mod Σweight`,
/// then the others follow in list order (the failover).
fn weighted_rotation(list: &mut [Candidate], turn: u64) {
    let total: u64 = list.iter().map(|c| u64::from(c.weight.max(1))).sum();
    if total == 0 {
        return;
    }
    let mut slot = turn % total;
    let mut start = 0;
    for (i, c) in list.iter().enumerate() {
        let w = u64::from(c.weight.max(1));
        if slot < w {
            start = i;
            break;
        }
        slot -= w;
    }
    list.rotate_left(start);
}

fn hrw_sort(list: &mut [Candidate], key: &str) {
    list.sort_by(|a, b| {
        hrw_score(key, b.addr, b.weight)
            .partial_cmp(&hrw_score(key, a.addr, a.weight))
            .unwrap_or(Ordering::Equal)
            // Deterministic when scores tie (they practically never do).
            .then_with(|| a.addr.cmp(&b.addr))
    });
}

/// Weighted rendezvous score (Schindelhauer & Schomaker): `-w / ln(u)` with `u` a
/// uniform hash of (key, member) in (0, 1). A member of weight 2 wins twice as many
/// keys, and a member's score for a key never depends on the other members.
pub fn hrw_score(key: &str, member: SocketAddr, weight: u32) -> f64 {
    let h = mix(fnv1a(key.as_bytes()) ^ mix(fnv1a(member.to_string().as_bytes())));
    // 53 random bits, shifted off 0 so ln(u) < 0 and finite.
    let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    f64::from(weight.max(1)) / -u.ln()
}

/// FNV-1a: stable across Rust releases and processes (std's `DefaultHasher` is not
/// guaranteed to be), so two ftpgate replicas route a client alike.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// splitmix64's finaliser: FNV alone leaves similar keys (10.0.0.1, 10.0.0.2) close.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// One `routes:` entry: users it matches, and the backends (entries of `backends`,
/// as written) they go to. Checked in order before the consistent hash.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserRoute {
    /// Exact user name (case-sensitive, as FTP servers compare it).
    #[serde(default)]
    pub user: Option<String>,
    /// Users ending in this (`@acme`: every account of a tenant).
    #[serde(default)]
    pub user_suffix: Option<String>,
    /// Backends for the matched users, as written in `backends`.
    pub backends: Vec<String>,
}

impl UserRoute {
    /// Whether `user` matches this route.
    pub fn matches(&self, user: &str) -> bool {
        self.user.as_deref() == Some(user)
            || self
                .user_suffix
                .as_deref()
                .is_some_and(|s| !s.is_empty() && user.ends_with(s))
    }
}

/// The backends (as written) that `user` is restricted to by the first matching
/// route, or `None` when no route matches (the whole farm, hashed by name).
pub fn route_for<'a>(routes: &'a [UserRoute], user: &str) -> Option<&'a [String]> {
    routes
        .iter()
        .find(|r| r.matches(user))
        .map(|r| r.backends.as_slice())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn member(i: u8, weight: u32) -> Candidate {
        Candidate {
            addr: SocketAddr::from(([10, 0, 0, i], 21)),
            weight,
            sessions: 0,
            draining: false,
            down: false,
        }
    }

    fn key(ip: [u8; 4]) -> SessionKey<'static> {
        SessionKey {
            client_ip: IpAddr::from(ip),
            user: None,
        }
    }

    fn first(policy: BalancePolicy, m: &[Candidate], k: SessionKey<'_>, turn: u64) -> SocketAddr {
        try_order(policy, m, k, turn)[0]
    }

    #[test]
    fn weighted_round_robin_shares_by_weight_and_fails_over_to_all() {
        let m = [member(1, 1), member(2, 2), member(3, 1)];
        let mut count: HashMap<SocketAddr, u32> = HashMap::new();
        for t in 0..400 {
            let order = try_order(BalancePolicy::RoundRobin, &m, key([1, 1, 1, 1]), t);
            assert_eq!(order.len(), 3, "every member is a failover");
            *count.entry(order[0]).or_default() += 1;
        }
        assert_eq!(count[&m[0].addr], 100);
        assert_eq!(count[&m[1].addr], 200);
        assert_eq!(count[&m[2].addr], 100);
    }

    #[test]
    fn draining_members_take_nothing_and_down_members_come_last() {
        let mut m = [member(1, 1), member(2, 1), member(3, 1)];
        m[0].draining = true;
        m[1].down = true;
        for policy in [
            BalancePolicy::RoundRobin,
            BalancePolicy::LeastConnections,
            BalancePolicy::SourceIp,
            BalancePolicy::User,
        ] {
            for t in 0..10 {
                let order = try_order(policy, &m, key([192, 0, 2, t as u8]), t);
                assert_eq!(order, vec![m[2].addr, m[1].addr], "{policy:?}");
            }
        }
    }

    #[test]
    fn least_connections_weighs_sessions_by_weight() {
        // A long STOR pins sessions to .1: new sessions go elsewhere.
        let mut m = [member(1, 1), member(2, 1), member(3, 2)];
        m[0].sessions = 5;
        m[1].sessions = 2;
        m[2].sessions = 3; // 1.5 per weight unit
        assert_eq!(
            first(BalancePolicy::LeastConnections, &m, key([1, 1, 1, 1]), 0),
            m[2].addr
        );
        m[2].sessions = 5; // 2.5 per unit
        assert_eq!(
            first(BalancePolicy::LeastConnections, &m, key([1, 1, 1, 1]), 0),
            m[1].addr
        );
        // Ties rotate instead of piling onto the first member.
        let idle = [member(1, 1), member(2, 1)];
        let a = first(BalancePolicy::LeastConnections, &idle, key([1, 1, 1, 1]), 0);
        let b = first(BalancePolicy::LeastConnections, &idle, key([1, 1, 1, 1]), 1);
        assert_ne!(a, b);
    }

    #[test]
    fn source_ip_is_stable_and_a_removed_member_moves_only_its_clients() {
        let m = [member(1, 1), member(2, 1), member(3, 1), member(4, 1)];
        let clients: Vec<[u8; 4]> = (0..2000u32)
            .map(|i| [198, 51, (i >> 8) as u8, i as u8])
            .collect();
        let before: Vec<_> = clients
            .iter()
            .map(|&c| first(BalancePolicy::SourceIp, &m, key(c), 7))
            .collect();
        // Stable whatever the turn (sessions of one client, minutes apart).
        for (c, b) in clients.iter().zip(&before).take(50) {
            assert_eq!(first(BalancePolicy::SourceIp, &m, key(*c), 12345), *b);
        }
        // Roughly even: each of 4 members within 20% of 500.
        for x in &m {
            let n = before.iter().filter(|&&a| a == x.addr).count();
            assert!((400..=600).contains(&n), "{} got {n}", x.addr);
        }
        // .3 leaves (scaled down): only its clients move.
        let without = [m[0], m[1], m[3]];
        for (c, b) in clients.iter().zip(&before) {
            let now = first(BalancePolicy::SourceIp, &without, key(*c), 7);
            if *b != m[2].addr {
                assert_eq!(now, *b, "client {c:?} moved though its member stayed");
            }
        }
        // .5 joins: it takes about a fifth, and every moved client moved to it.
        let with = [m[0], m[1], m[2], m[3], member(5, 1)];
        let mut moved = 0;
        for (c, b) in clients.iter().zip(&before) {
            let now = first(BalancePolicy::SourceIp, &with, key(*c), 7);
            if now != *b {
                assert_eq!(now, with[4].addr);
                moved += 1;
            }
        }
        assert!(
            (300..=500).contains(&moved),
            "{moved} of 2000 moved to the new member"
        );
    }

    #[test]
    fn consistent_hash_honours_weights() {
        let m = [member(1, 1), member(2, 3)];
        let heavy = (0..4000)
            .filter(|i| {
                let name = format!("user{i}");
                let k = SessionKey {
                    client_ip: IpAddr::from([0, 0, 0, 0]),
                    user: Some(&name),
                };
                first(BalancePolicy::User, &m, k, 0) == m[1].addr
            })
            .count();
        assert!(
            (2800..=3200).contains(&heavy),
            "weight 3 of 4 won {heavy} of 4000"
        );
    }

    #[test]
    fn routes_match_exact_user_then_suffix_in_order() {
        let routes: Vec<UserRoute> = serde_yaml::from_str(
            "- {user: alice, backends: ['10.0.0.1:21']}\n\
             - {user_suffix: '@acme', backends: ['10.0.0.2:21', '10.0.0.3:21']}\n",
        )
        .unwrap();
        assert_eq!(route_for(&routes, "alice").unwrap(), ["10.0.0.1:21"]);
        assert_eq!(route_for(&routes, "bob@acme").unwrap().len(), 2);
        // FTP user names are case-sensitive on vsftpd and proftpd.
        assert!(route_for(&routes, "Alice").is_none());
        assert!(route_for(&routes, "acme").is_none());
    }
}
