//! Cluster metrics (`ftpgate_cluster_*`), registered in the gateway's registry.
//! Peer labels are ordinals below `cluster.slots` (or `unknown`), so bounded.

use prometheus::{IntCounterVec, IntGauge, Opts, Registry};

use crate::metrics::{register, valid};

/// Why a forward failed (`ftpgate_cluster_forward_failures_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardFailure {
    /// Out: the slot has no peer address (`cluster.peers` shorter than `slots`).
    NoPeer,
    /// Out: the peer's name did not resolve (a replica that is gone).
    Resolve,
    /// Out: connecting to the peer failed or timed out.
    Connect,
    /// Out: a balancer's PROXY header on the data port was bad or late.
    ClientHeader,
    /// In: a connection to `cluster.listen` from outside `cluster.peer_cidrs`.
    NotPeer,
    /// In: the peer's header was malformed, late, or not ftpgate's.
    BadHeader,
    /// In: the header names a port outside this replica's slice.
    ForeignSlice,
    /// In: no session waits on that port (or too many connections queued for it).
    NoMapping,
}

impl ForwardFailure {
    /// Every value, for label pre-creation.
    pub const ALL: &'static [ForwardFailure] = &[
        ForwardFailure::NoPeer,
        ForwardFailure::Resolve,
        ForwardFailure::Connect,
        ForwardFailure::ClientHeader,
        ForwardFailure::NotPeer,
        ForwardFailure::BadHeader,
        ForwardFailure::ForeignSlice,
        ForwardFailure::NoMapping,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            ForwardFailure::NoPeer => "no_peer",
            ForwardFailure::Resolve => "resolve",
            ForwardFailure::Connect => "connect",
            ForwardFailure::ClientHeader => "client_header",
            ForwardFailure::NotPeer => "not_peer",
            ForwardFailure::BadHeader => "bad_header",
            ForwardFailure::ForeignSlice => "foreign_slice",
            ForwardFailure::NoMapping => "no_mapping",
        }
    }

    /// `out` for failures of this replica forwarding, `in` for those of receiving.
    pub fn direction(self) -> &'static str {
        match self {
            ForwardFailure::NoPeer
            | ForwardFailure::Resolve
            | ForwardFailure::Connect
            | ForwardFailure::ClientHeader => "out",
            _ => "in",
        }
    }
}

/// The `ftpgate_cluster_*` metrics.
#[derive(Debug, Clone)]
pub struct ClusterMetrics {
    /// `ftpgate_cluster_ordinal`: this replica's ordinal (-1 when cluster mode is off).
    pub ordinal: IntGauge,
    /// `ftpgate_cluster_slots`: `cluster.slots` (0: off).
    pub slots: IntGauge,
    /// By direction (`out`: this replica forwarded to the owner; `in`: a peer forwarded
    /// to this replica) and peer ordinal: data connections forwarded.
    pub forwarded_total: IntCounterVec,
    /// By direction, peer ordinal (or `unknown`) and reason: forwards that failed; the
    /// client's connection was closed at once.
    pub forward_failures_total: IntCounterVec,
    /// By direction (`to_owner`, `to_client`): bytes this replica relayed for others.
    pub forwarded_bytes_total: IntCounterVec,
    /// `ftpgate_cluster_forwards_active`: forwarded connections this replica relays now.
    pub forwards_active: IntGauge,
}

impl ClusterMetrics {
    /// Registers every cluster metric in `r`.
    pub fn register(r: &Registry) -> ClusterMetrics {
        let counters = |n: &str, h: &str, l: &[&str]| {
            register(r, valid(IntCounterVec::new(Opts::new(n, h), l)))
        };
        let gauge = |n: &str, h: &str| register(r, valid(IntGauge::new(n, h)));
        let m = ClusterMetrics {
            ordinal: gauge(
                "ftpgate_cluster_ordinal",
                "This replica's ordinal (its data-port slice); -1 when cluster mode is off.",
            ),
            slots: gauge(
                "ftpgate_cluster_slots",
                "Slices the data-port range is cut into (cluster.slots); 0 when off.",
            ),
            forwarded_total: counters(
                "ftpgate_cluster_forwarded_total",
                "Data connections forwarded to (out) or from (in) a peer replica, by peer ordinal.",
                &["direction", "peer"],
            ),
            forward_failures_total: counters(
                "ftpgate_cluster_forward_failures_total",
                "Forwarded data connections that failed and were closed at once, by direction, peer and reason.",
                &["direction", "peer", "reason"],
            ),
            forwarded_bytes_total: counters(
                "ftpgate_cluster_forwarded_bytes_total",
                "Bytes this replica relayed for data connections owned by peers.",
                &["direction"],
            ),
            forwards_active: gauge(
                "ftpgate_cluster_forwards_active",
                "Forwarded data connections this replica relays now.",
            ),
        };
        m.ordinal.set(-1);
        m
    }

    /// Pre-creates every label value for `slots` peers at 0.
    pub fn init(&self, ordinal: u16, slots: u16) {
        self.ordinal.set(i64::from(ordinal));
        self.slots.set(i64::from(slots));
        for k in 0..slots {
            let peer = k.to_string();
            if k != ordinal {
                for d in ["in", "out"] {
                    self.forwarded_total.with_label_values(&[d, &peer]);
                }
            }
            for f in ForwardFailure::ALL {
                self.forward_failures_total
                    .with_label_values(&[f.direction(), &peer, f.label()]);
            }
        }
        for f in ForwardFailure::ALL {
            self.forward_failures_total
                .with_label_values(&[f.direction(), "unknown", f.label()]);
        }
        for d in ["to_owner", "to_client"] {
            self.forwarded_bytes_total.with_label_values(&[d]);
        }
    }

    /// A forward that failed, for peer `peer` (`None`: not known).
    pub fn failed(&self, peer: Option<u16>, why: ForwardFailure) {
        let peer = peer.map_or_else(|| "unknown".to_owned(), |p| p.to_string());
        self.forward_failures_total
            .with_label_values(&[why.direction(), &peer, why.label()])
            .inc();
    }

    /// A connection forwarded `out` to, or `in` from, peer `peer`.
    pub fn forwarded(&self, direction: &'static str, peer: u16) {
        self.forwarded_total
            .with_label_values(&[direction, &peer.to_string()])
            .inc();
    }
}
