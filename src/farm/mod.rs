//! The server farm: configured backends resolved into members, their load and
//! health, and which member a new session tries first.
//!
//! - [`backend`]: `backends` entries (`host:port` or address, weight, drain).
//! - [`policy`]: the balancing policies and user routes, pure.
//! - [`health_state`]: [`BackendHealth`], the one record of which members are up.
//! - [`resolve`]: start-up and periodic re-resolution of names (I/O edge).
//!
//! ```text
//!   backends ──resolve──▶ members ──┬─ BackendHealth (checker, connects) ─┐
//!                                   ├─ sessions per member (leases) ─────┤
//!   session key (client ip, USER) ──┴──────────── policy::try_order ◀───┘──▶ Balancer
//! ```

pub mod backend;
pub mod health_state;
pub mod policy;
pub mod resolve;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use dashmap::DashMap;

pub use backend::{BackendHost, BackendSpec};
pub use health_state::{BackendHealth, Verdict};
pub use policy::{BalancePolicy, SessionKey, UserRoute};

use crate::metrics::Metrics;

/// One resolved member of the farm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Where sessions connect.
    pub addr: SocketAddr,
    /// Index into the configured backends (weight, drain, name).
    pub spec: usize,
}

/// The farm: shared by every session, the resolver and the health checker.
#[derive(Debug)]
pub struct Farm {
    specs: Vec<BackendSpec>,
    policy: BalancePolicy,
    routes: Vec<UserRoute>,
    /// Current members; swapped whole on re-resolution (readers clone the `Arc`).
    members: RwLock<Arc<Vec<Member>>>,
    /// Running sessions per member (least connections; mirrored in
    /// `ftpgate_backend_sessions_active`).
    sessions: Arc<DashMap<SocketAddr, usize>>,
    /// Who is up: written by the health checker and session connects.
    pub health: Arc<BackendHealth>,
    turn: AtomicU64,
    metrics: Arc<Metrics>,
}

impl Farm {
    /// A farm whose address backends are members at once; names join when
    /// [`resolve::resolve_once`] resolves them.
    pub fn new(
        specs: Vec<BackendSpec>,
        policy: BalancePolicy,
        routes: Vec<UserRoute>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let members: Vec<Member> = specs
            .iter()
            .enumerate()
            .filter_map(|(spec, s)| s.addr().map(|addr| Member { addr, spec }))
            .collect();
        let farm = Farm {
            health: Arc::new(BackendHealth::new(Arc::clone(&metrics))),
            specs,
            policy,
            routes,
            members: RwLock::new(Arc::new(Vec::new())),
            sessions: Arc::new(DashMap::new()),
            turn: AtomicU64::new(0),
            metrics,
        };
        farm.set_members(members);
        farm
    }

    /// The configured backends.
    pub fn specs(&self) -> &[BackendSpec] {
        &self.specs
    }

    /// The balancing policy.
    pub fn policy(&self) -> BalancePolicy {
        self.policy
    }

    /// The current members.
    pub fn members(&self) -> Arc<Vec<Member>> {
        self.members
            .read()
            .map(|m| Arc::clone(&m))
            .unwrap_or_default()
    }

    /// Replaces the members; new ones get their metric series, departed ones lose
    /// their health verdict (their sessions keep running on their own sockets).
    pub fn set_members(&self, mut next: Vec<Member>) {
        // One member per address: two names resolving to one server are one server.
        let mut seen = std::collections::HashSet::new();
        next.retain(|m| seen.insert(m.addr));
        let prev = self.members();
        for m in next
            .iter()
            .filter(|m| !prev.iter().any(|p| p.addr == m.addr))
        {
            self.metrics.init_backend(m.addr);
            if let Some(spec) = self.specs.get(m.spec) {
                self.metrics
                    .backend_draining
                    .with_label_values(&[&m.addr.to_string()])
                    .set(i64::from(spec.drain));
            }
        }
        for p in prev
            .iter()
            .filter(|p| !next.iter().any(|m| m.addr == p.addr))
        {
            self.health.forget(p.addr);
            let _ = self
                .metrics
                .backend_draining
                .remove_label_values(&[&p.addr.to_string()]);
        }
        if let Ok(mut m) = self.members.write() {
            *m = Arc::new(next);
        }
    }

    /// Members to try for a new session, best first (see [`policy::try_order`]).
    pub fn try_order(&self, key: SessionKey<'_>) -> Vec<SocketAddr> {
        let members = self.members();
        let allowed: Option<Vec<usize>> = match (self.policy, key.user) {
            (BalancePolicy::User, Some(user)) => {
                policy::route_for(&self.routes, user).map(|names| self.spec_indices(names))
            }
            _ => None,
        };
        let candidates: Vec<policy::Candidate> = members
            .iter()
            .filter(|m| allowed.as_ref().is_none_or(|a| a.contains(&m.spec)))
            .filter_map(|m| {
                let spec = self.specs.get(m.spec)?;
                Some(policy::Candidate {
                    addr: m.addr,
                    weight: spec.weight,
                    sessions: self.sessions.get(&m.addr).map_or(0, |n| *n),
                    draining: spec.drain,
                    down: self.health.is_down(m.addr),
                })
            })
            .collect();
        let turn = self.turn.fetch_add(1, Ordering::Relaxed);
        policy::try_order(self.policy, &candidates, key, turn)
    }

    fn spec_indices(&self, names: &[String]) -> Vec<usize> {
        let by_name: HashMap<String, usize> = self
            .specs
            .iter()
            .enumerate()
            .map(|(i, s)| (s.to_string(), i))
            .collect();
        names
            .iter()
            .filter_map(|n| {
                n.parse::<BackendHost>()
                    .ok()
                    .and_then(|h| by_name.get(&h.to_string()).copied())
            })
            .collect()
    }

    /// Counts a session on `addr` until the lease drops.
    pub fn lease(&self, addr: SocketAddr) -> SessionLease {
        *self.sessions.entry(addr).or_default() += 1;
        let gauge = self
            .metrics
            .backend_sessions_active
            .with_label_values(&[&addr.to_string()]);
        gauge.inc();
        self.metrics
            .balancer_picks_total
            .with_label_values(&[self.policy.label(), &addr.to_string()])
            .inc();
        SessionLease {
            addr,
            sessions: Arc::clone(&self.sessions),
            gauge,
        }
    }

    /// Whether any member can take sessions now (for `/readyz`): up (or not yet
    /// checked when `count_unknown`) and not draining.
    pub fn usable_members(&self) -> usize {
        self.members()
            .iter()
            .filter(|m| {
                self.specs.get(m.spec).is_some_and(|s| !s.drain)
                    && self.health.verdict(m.addr) == Verdict::Up
            })
            .count()
    }

    /// One line per member for `/readyz`: address, backend as written, state.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        for m in self.members().iter() {
            let Some(spec) = self.specs.get(m.spec) else {
                continue;
            };
            let state = match (spec.drain, self.health.verdict(m.addr)) {
                (true, _) => "draining",
                (false, Verdict::Up) => "up",
                (false, Verdict::Down) => "down",
                (false, Verdict::Unknown) => "unknown",
            };
            let sessions = self.sessions.get(&m.addr).map_or(0, |n| *n);
            out.push_str(&format!(
                "backend {} ({spec}) {state} sessions={sessions}\n",
                m.addr
            ));
        }
        out
    }
}

/// A running session's claim on its member: counted for least connections until it
/// drops.
#[derive(Debug)]
pub struct SessionLease {
    addr: SocketAddr,
    sessions: Arc<DashMap<SocketAddr, usize>>,
    gauge: prometheus::IntGauge,
}

impl Drop for SessionLease {
    fn drop(&mut self) {
        if let Some(mut n) = self.sessions.get_mut(&self.addr) {
            *n = n.saturating_sub(1);
        }
        self.gauge.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn farm(yaml: &str, policy: BalancePolicy, routes: &str) -> Farm {
        Farm::new(
            serde_yaml::from_str(yaml).unwrap(),
            policy,
            serde_yaml::from_str(routes).unwrap(),
            Arc::new(Metrics::new()),
        )
    }

    #[test]
    fn leases_feed_least_connections() {
        let f = farm(
            "['10.0.0.1:21', '10.0.0.2:21']",
            BalancePolicy::LeastConnections,
            "[]",
        );
        let a: SocketAddr = "10.0.0.1:21".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:21".parse().unwrap();
        let key = SessionKey {
            client_ip: "192.0.2.1".parse().unwrap(),
            user: None,
        };
        let l1 = f.lease(a);
        let _l2 = f.lease(a);
        for _ in 0..3 {
            assert_eq!(f.try_order(key)[0], b);
        }
        drop(l1);
        let _l3 = f.lease(b);
        let _l4 = f.lease(b);
        assert_eq!(f.try_order(key)[0], a);
    }

    #[test]
    fn user_routes_restrict_to_named_backends() {
        let f = farm(
            "['10.0.0.1:21', '10.0.0.2:21', {address: '10.0.0.3:21', drain: true}]",
            BalancePolicy::User,
            "[{user: alice, backends: ['10.0.0.2:21']}, {user_suffix: '@old', backends: ['10.0.0.3:21']}]",
        );
        let key = |u| SessionKey {
            client_ip: "192.0.2.1".parse().unwrap(),
            user: Some(u),
        };
        assert_eq!(
            f.try_order(key("alice")),
            vec!["10.0.0.2:21".parse().unwrap()]
        );
        // The tenant's only backend drains: no new sessions for it (421), rather than
        // landing on a server that lacks the tenant's files.
        assert!(f.try_order(key("bob@old")).is_empty());
        // Unrouted users hash over the whole farm, draining members excluded.
        assert_eq!(f.try_order(key("carol")).len(), 2);
    }

    #[test]
    fn readiness_counts_up_members_that_do_not_drain() {
        let f = farm(
            "['10.0.0.1:21', {address: '10.0.0.2:21', drain: true}]",
            BalancePolicy::RoundRobin,
            "[]",
        );
        assert_eq!(f.usable_members(), 0, "nothing checked yet");
        f.health.set("10.0.0.2:21".parse().unwrap(), true);
        assert_eq!(f.usable_members(), 0, "a draining member is not capacity");
        f.health.set("10.0.0.1:21".parse().unwrap(), true);
        assert_eq!(f.usable_members(), 1);
        assert!(f.describe().contains("10.0.0.2:21 (10.0.0.2:21) draining"));
    }
}
