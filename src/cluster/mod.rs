//! Scale-out: several ftpgate replicas behind one L4 balancer that picks a replica per
//! TCP connection (cloud balancers, MetalLB, kube-proxy).
//!
//! FTP's passive data connection must reach the replica holding its control session,
//! and such a balancer sends it anywhere. The data-port range is therefore cut into
//! `cluster.slots` fixed slices ([`slices`]); replica `k` announces only ports of slice
//! `k`. Every replica also listens on the ports of every *other* slice: a data
//! connection arriving there is relayed ([`forward`]) to the owning replica's
//! `cluster.listen` port with a PROXY v2 header ([`header`]) naming the original
//! client and the port it connected to. The owner hands it to the session that leased
//! the port ([`handoff`]), which applies its usual check on the original client's
//! address, so hijack protection does not change.
//!
//! ```text
//!  client ──▶ L4 balancer ──(any replica)──▶ replica 1: port 50130 is slice 2's
//!                                              │ splice + PROXY v2 {client, :50130, from 1}
//!                                              ▼
//!                                  replica 2, cluster.listen ──▶ lease of 50130
//!                                    (peer_cidrs only)            (client address check)
//! ```
//! Decided by the port number alone: the session machine never knows (ARCHITECTURE).
//! Slices never move, so replicas coming and going do not disturb other replicas'
//! sessions; a data connection for a replica that is gone is closed at once.

pub mod forward;
pub mod handoff;
pub mod header;
pub mod metrics;
pub mod slices;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

pub use metrics::ClusterMetrics;
pub use slices::Slices;

/// Default bound on connecting to a peer replica: a live peer on the pod network
/// answers in milliseconds; a gone one must not hold the client's connection.
const DEFAULT_FORWARD_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The placeholder `cluster.peer_template` replaces with an ordinal.
pub const ORDINAL_PLACEHOLDER: &str = "{ordinal}";

/// `cluster:` in the YAML file. Off while `slots` is 0.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// Slices the data-port range is cut into: the most replicas it is planned for.
    pub slots: u16,
    /// This replica's ordinal (slice); unset: from the host name (`ftpgate-3` → 3).
    pub ordinal: Option<u16>,
    /// Each replica's `host:port` of `cluster.listen`, index = ordinal.
    pub peers: Vec<String>,
    /// A peer's `host:port` with `{ordinal}` in it, resolved when needed (a
    /// StatefulSet's headless Service: `ftpgate-{ordinal}.ftpgate-peers.ns.svc:2122`).
    pub peer_template: Option<String>,
    /// Where forwarded data connections from peers arrive.
    pub listen: Option<SocketAddr>,
    /// The address the other slices' ports listen on; unset: every address.
    pub data_listen: Option<IpAddr>,
    /// Who may connect to `listen` (the peers' network); others are closed, counted.
    pub peer_cidrs: Vec<IpNet>,
    /// Bound on connecting to a peer; past it the client's data connection is closed.
    #[serde(with = "humantime_serde")]
    pub forward_connect_timeout: Duration,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            slots: 0,
            ordinal: None,
            peers: Vec::new(),
            peer_template: None,
            listen: None,
            data_listen: None,
            peer_cidrs: Vec::new(),
            forward_connect_timeout: DEFAULT_FORWARD_CONNECT_TIMEOUT,
        }
    }
}

impl ClusterConfig {
    /// Whether cluster mode is on (`slots` above 0).
    pub fn enabled(&self) -> bool {
        self.slots > 0
    }

    /// Reports problems as (key, reason); `data_ports` is the range to be sliced.
    pub fn check(
        &self,
        data_ports: crate::config::PortRange,
        mut problem: impl FnMut(&str, String),
    ) {
        if !self.enabled() {
            let set = self.ordinal.is_some()
                || !self.peers.is_empty()
                || self.peer_template.is_some()
                || self.listen.is_some()
                || self.data_listen.is_some()
                || !self.peer_cidrs.is_empty();
            if set {
                problem("slots", "cluster keys are set but slots is 0 (off)".into());
            }
            return;
        }
        if usize::from(self.slots) > data_ports.len() {
            problem(
                "slots",
                format!(
                    "{} slots need at least as many ports; data_ports {data_ports} has {}",
                    self.slots,
                    data_ports.len()
                ),
            );
        }
        if let Some(k) = self.ordinal.filter(|&k| k >= self.slots) {
            problem(
                "ordinal",
                format!("{k} is not below slots ({})", self.slots),
            );
        }
        match (&self.peer_template, self.peers.is_empty()) {
            (Some(_), false) => problem("peers", "give peers or peer_template, not both".into()),
            (None, true) => problem("peers", "peers or peer_template is required".into()),
            (Some(t), true) => {
                if !t.contains(ORDINAL_PLACEHOLDER) {
                    problem(
                        "peer_template",
                        format!("`{t}` has no {ORDINAL_PLACEHOLDER}"),
                    );
                } else if slices::split_host_port(t).is_none() {
                    problem("peer_template", format!("`{t}` is not host:port"));
                }
            }
            (None, false) => {
                if self.peers.len() > usize::from(self.slots) {
                    problem(
                        "peers",
                        format!("{} peers but only {} slots", self.peers.len(), self.slots),
                    );
                }
                for p in self
                    .peers
                    .iter()
                    .filter(|p| slices::split_host_port(p).is_none())
                {
                    problem("peers", format!("`{p}` is not host:port"));
                }
            }
        }
        match self.listen {
            None => problem("listen", "required in cluster mode".into()),
            Some(a) if data_ports.contains(a.port()) => problem(
                "listen",
                format!("port {} is inside data_ports {data_ports}", a.port()),
            ),
            Some(_) => {}
        }
        if self.peer_cidrs.is_empty() {
            problem(
                "peer_cidrs",
                "required in cluster mode: who may send forwarded connections".into(),
            );
        }
        if self.forward_connect_timeout.is_zero() {
            problem("forward_connect_timeout", "must be above 0".into());
        }
    }

    /// The `host:port` of the peer with `ordinal`, if it has one.
    pub fn peer_address(&self, ordinal: u16) -> Option<String> {
        match &self.peer_template {
            Some(t) => Some(t.replace(ORDINAL_PLACEHOLDER, &ordinal.to_string())),
            None => self.peers.get(usize::from(ordinal)).cloned(),
        }
    }

    /// This replica's ordinal: `ordinal`, else the host name's trailing `-N`.
    pub fn own_ordinal(&self, hostname: Option<&str>) -> Result<u16, String> {
        if let Some(k) = self.ordinal {
            return Ok(k);
        }
        let Some(name) = hostname else {
            return Err("cluster.ordinal is not set and the host name is unknown".into());
        };
        let k = slices::ordinal_from_hostname(name).ok_or_else(|| {
            format!("cluster.ordinal is not set and host name `{name}` does not end in -N")
        })?;
        if k >= self.slots {
            return Err(format!(
                "ordinal {k} (from host name `{name}`) is not below cluster.slots ({})",
                self.slots
            ));
        }
        Ok(k)
    }
}

/// The host name (`/proc/sys/kernel/hostname`, else `$HOSTNAME`).
pub fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PortRange;

    fn range() -> PortRange {
        "50000-50099".parse().unwrap()
    }

    fn on() -> ClusterConfig {
        ClusterConfig {
            slots: 4,
            peers: vec!["10.0.0.1:2122".into(), "10.0.0.2:2122".into()],
            listen: Some("0.0.0.0:2122".parse().unwrap()),
            peer_cidrs: vec!["10.0.0.0/24".parse().unwrap()],
            ..ClusterConfig::default()
        }
    }

    fn problems(c: &ClusterConfig) -> Vec<String> {
        let mut v = Vec::new();
        c.check(range(), |k, r| v.push(format!("{k}: {r}")));
        v
    }

    #[test]
    fn off_by_default_and_valid() {
        assert!(!ClusterConfig::default().enabled());
        assert!(problems(&ClusterConfig::default()).is_empty());
        assert!(problems(&on()).is_empty(), "{:?}", problems(&on()));
    }

    #[test]
    fn keys_without_slots_are_an_error() {
        let c = ClusterConfig { slots: 0, ..on() };
        assert_eq!(
            problems(&c),
            ["slots: cluster keys are set but slots is 0 (off)"]
        );
    }

    #[test]
    fn each_problem_names_its_key() {
        let cases: Vec<(ClusterConfig, &str)> = vec![
            (ClusterConfig { slots: 101, ..on() }, "slots:"),
            (
                ClusterConfig {
                    ordinal: Some(4),
                    ..on()
                },
                "ordinal:",
            ),
            (
                ClusterConfig {
                    peer_template: Some("x-{ordinal}:1".into()),
                    ..on()
                },
                "peers: give peers or peer_template",
            ),
            (
                ClusterConfig {
                    peers: vec![],
                    ..on()
                },
                "peers: peers or",
            ),
            (
                ClusterConfig {
                    peers: vec![],
                    peer_template: Some("ftpgate.svc:2122".into()),
                    ..on()
                },
                "peer_template:",
            ),
            (
                ClusterConfig {
                    peers: vec![],
                    peer_template: Some("ftpgate-{ordinal}.svc".into()),
                    ..on()
                },
                "peer_template:",
            ),
            (
                ClusterConfig {
                    peers: vec!["nope".into()],
                    ..on()
                },
                "peers: `nope`",
            ),
            (
                ClusterConfig {
                    peers: vec!["a:1".into(); 5],
                    ..on()
                },
                "peers: 5 peers",
            ),
            (
                ClusterConfig {
                    listen: None,
                    ..on()
                },
                "listen: required",
            ),
            (
                ClusterConfig {
                    listen: Some("0.0.0.0:50001".parse().unwrap()),
                    ..on()
                },
                "listen: port 50001",
            ),
            (
                ClusterConfig {
                    peer_cidrs: vec![],
                    ..on()
                },
                "peer_cidrs:",
            ),
            (
                ClusterConfig {
                    forward_connect_timeout: Duration::ZERO,
                    ..on()
                },
                "forward_connect_timeout:",
            ),
        ];
        for (c, want) in cases {
            let p = problems(&c);
            assert!(
                p.len() == 1 && p[0].starts_with(want),
                "want one `{want}`, got {p:?}"
            );
        }
    }

    #[test]
    fn peer_addresses_from_list_or_template() {
        let c = on();
        assert_eq!(c.peer_address(1).as_deref(), Some("10.0.0.2:2122"));
        assert_eq!(c.peer_address(2), None, "a slot without a listed peer");
        let t = ClusterConfig {
            peers: vec![],
            peer_template: Some("ftpgate-{ordinal}.ftpgate-peers.ns.svc:2122".into()),
            ..on()
        };
        assert_eq!(
            t.peer_address(3).as_deref(),
            Some("ftpgate-3.ftpgate-peers.ns.svc:2122")
        );
    }

    #[test]
    fn ordinal_from_config_or_host_name() {
        let c = on();
        assert_eq!(c.own_ordinal(Some("ftpgate-3")), Ok(3));
        assert!(c
            .own_ordinal(Some("ftpgate-4"))
            .unwrap_err()
            .contains("not below"));
        assert!(c.own_ordinal(Some("ftpgate")).unwrap_err().contains("-N"));
        assert!(c.own_ordinal(None).is_err());
        let fixed = ClusterConfig {
            ordinal: Some(1),
            ..on()
        };
        assert_eq!(fixed.own_ordinal(Some("ftpgate-3")), Ok(1));
    }
}
