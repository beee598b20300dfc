//! The cluster's I/O: listeners on every port of the other replicas' slices, each
//! connection relayed to its owner with a header ([`super::header`]); and
//! `cluster.listen`, where peers' forwarded connections arrive and are handed to the
//! session waiting on their port ([`super::handoff`]).
//!
//! ```text
//!  out: accept on a foreign port ─▶ real client (a balancer's PROXY header, if trusted)
//!        ─▶ owner = slice of the port ─▶ resolve peer ─▶ connect ─▶ header ─▶ splice
//!        any failure: the client's connection is reset at once, counted by reason
//!  in:  accept on cluster.listen ─▶ peer in peer_cidrs? ─▶ header ─▶ port in own slice?
//!        ─▶ session waiting on the port? ─▶ handed over (its client check applies)
//! ```

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::handoff::{Handed, Handoffs};
use super::header::{self, FIXED_LEN};
use super::metrics::ForwardFailure;
use super::{ClusterConfig, Slices};
use crate::config::PortRange;
use crate::metrics::Metrics;
use crate::net::AcceptBackoff;
use crate::protocol::addr::canonical_ip;
use crate::proxy_protocol::{read_proxy_header, ProxyHeader, ProxyProtocolConfig};
use crate::relay::relay_tcp_with_idle;

/// Queue of not yet accepted connections per forwarding listener.
const FORWARD_BACKLOG: i32 = 64;
/// Queue of the peer listener (`cluster.listen`): every replica forwards here.
const PEER_BACKLOG: i32 = 1024;

/// Why cluster mode could not start.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// No ordinal: neither configured nor derivable from the host name.
    #[error("{0}")]
    Ordinal(String),
    /// `data_ports` cannot be cut into `cluster.slots` slices.
    #[error("data_ports {range} cannot be cut into {slots} slices")]
    Slices {
        /// `data_ports`.
        range: PortRange,
        /// `cluster.slots`.
        slots: u16,
    },
    /// A listener could not bind (a foreign slice's port, or `cluster.listen`).
    #[error("cannot listen on {addr} (cluster): {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: io::Error,
    },
}

/// This replica's place in the cluster and what its forwarding shares.
#[derive(Debug)]
pub struct ClusterNode {
    /// This replica's ordinal: it owns slice `ordinal`.
    pub ordinal: u16,
    /// The data-port range's slices.
    pub slices: Slices,
    /// `cluster:` as configured at start (restart-only: slices must not move).
    pub config: ClusterConfig,
    /// Sessions waiting for forwarded connections, by port.
    pub handoffs: Arc<Handoffs>,
    metrics: Arc<Metrics>,
}

/// What forwarding needs from the rest of the configuration.
#[derive(Debug, Clone)]
pub struct ForwardSettings {
    /// Balancers whose data connections begin with a PROXY header.
    pub proxy_protocol: ProxyProtocolConfig,
    /// `timeouts.data_idle` (zero: none).
    pub data_idle: Duration,
}

/// The bound listeners of cluster mode.
#[derive(Debug)]
pub struct ClusterListeners {
    /// One per port of the other slices.
    forward: Vec<TcpListener>,
    /// `cluster.listen`.
    peer: TcpListener,
}

impl ClusterListeners {
    /// The bound `cluster.listen` address (with its real port when `:0` was asked).
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.peer.local_addr().ok()
    }

    /// How many foreign-slice ports are bound.
    pub fn forwarding_ports(&self) -> usize {
        self.forward.len()
    }
}

impl ClusterNode {
    /// The node for `config` over `data_ports`; the ordinal from the config or the host
    /// name.
    pub fn new(
        config: &ClusterConfig,
        data_ports: PortRange,
        hostname: Option<&str>,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<ClusterNode>, ClusterError> {
        let ordinal = config
            .own_ordinal(hostname)
            .map_err(ClusterError::Ordinal)?;
        let slices = Slices::new(data_ports, config.slots).ok_or(ClusterError::Slices {
            range: data_ports,
            slots: config.slots,
        })?;
        metrics.cluster.init(ordinal, config.slots);
        Ok(Arc::new(ClusterNode {
            ordinal,
            slices,
            config: config.clone(),
            handoffs: Arc::default(),
            metrics,
        }))
    }

    /// The ports this replica announces and leases.
    pub fn own_slice(&self) -> PortRange {
        // `Slices::new` and `own_ordinal` guarantee the slice exists.
        self.slices
            .slice(self.ordinal)
            .unwrap_or(self.slices.range())
    }

    /// Forwards leave from `cluster.listen`'s address when it names one, so peers see
    /// the address their `peer_cidrs` expect on a multi-homed host.
    fn forward_source(&self) -> Option<SocketAddr> {
        self.config
            .listen
            .filter(|a| !a.ip().is_unspecified())
            .map(|a| SocketAddr::new(a.ip(), 0))
    }

    /// Binds every port of the other slices (all addresses) and `cluster.listen`.
    pub fn bind(&self) -> Result<ClusterListeners, ClusterError> {
        let mut forward = Vec::new();
        for port in self.slices.foreign_ports(self.ordinal) {
            forward.push(match self.config.data_listen {
                Some(ip) => {
                    let addr = SocketAddr::new(ip, port);
                    crate::net::bind_listener(addr, false, FORWARD_BACKLOG)
                        .map_err(|source| ClusterError::Bind { addr, source })?
                }
                None => bind_all_addresses(port)?,
            });
        }
        let addr = self
            .config
            .listen
            .unwrap_or(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0));
        let peer = crate::net::bind_listener(addr, false, PEER_BACKLOG)
            .map_err(|source| ClusterError::Bind { addr, source })?;
        Ok(ClusterListeners { forward, peer })
    }

    /// Serves the listeners until `stop`; forwarded connections relaying run on in
    /// `relays` (the gateway waits for them before it exits).
    pub async fn run(
        self: Arc<Self>,
        listeners: ClusterListeners,
        settings: ForwardSettings,
        stop: CancellationToken,
        relays: TaskTracker,
    ) {
        info!(
            ordinal = self.ordinal,
            slots = self.slices.slots(),
            slice = %self.own_slice(),
            forwarding_ports = listeners.forward.len(),
            peer_listen = ?listeners.peer_addr(),
            "cluster: announcing own slice, forwarding the others"
        );
        let accepting = TaskTracker::new();
        for l in listeners.forward {
            let node = Arc::clone(&self);
            let (settings, relays) = (settings.clone(), relays.clone());
            accepting.spawn(accept_loop(
                l,
                stop.clone(),
                self.metrics.clone(),
                move |s, peer| {
                    relays.spawn(Arc::clone(&node).forward(s, peer, settings.clone()));
                },
            ));
        }
        let node = Arc::clone(&self);
        let receiving = relays.clone();
        accepting.spawn(accept_loop(
            listeners.peer,
            stop.clone(),
            self.metrics.clone(),
            move |s, peer| {
                receiving.spawn(Arc::clone(&node).receive(s, peer));
            },
        ));
        accepting.close();
        accepting.wait().await;
    }

    /// Relays one connection that arrived on another slice's port to its owner.
    async fn forward(
        self: Arc<Self>,
        mut client: TcpStream,
        peer: SocketAddr,
        settings: ForwardSettings,
    ) {
        let m = &self.metrics.cluster;
        let Ok(local) = client.local_addr() else {
            return;
        };
        let Some(owner) = self.slices.owner(local.port()) else {
            return;
        };
        let fail = |client: TcpStream, why: ForwardFailure, detail: &dyn std::fmt::Display| {
            m.failed(Some(owner), why);
            info!(port = local.port(), owner, reason = why.label(), %detail, "cluster: data connection for a peer's slice not forwarded; closed");
            reset(client);
        };
        let source = match client_address(&mut client, peer, &settings.proxy_protocol).await {
            Ok(s) => s,
            Err(e) => return fail(client, ForwardFailure::ClientHeader, &e),
        };
        let Some(target) = self.config.peer_address(owner) else {
            return fail(
                client,
                ForwardFailure::NoPeer,
                &"no peer address for this slot",
            );
        };
        let t = self.config.forward_connect_timeout;
        let resolved = tokio::time::timeout(t, tokio::net::lookup_host(target.as_str())).await;
        let Some(addr) = resolved
            .ok()
            .and_then(Result::ok)
            .and_then(|mut a| a.next())
        else {
            return fail(client, ForwardFailure::Resolve, &target);
        };
        let header = header::encode(source, local, self.ordinal);
        let connected = async {
            let mut s = crate::net::connect_from(addr, self.forward_source(), t).await?;
            tokio::time::timeout(t, s.write_all(&header))
                .await
                .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
            io::Result::Ok(s)
        };
        let mut upstream = match connected.await {
            Ok(s) => s,
            Err(e) => {
                return fail(
                    client,
                    ForwardFailure::Connect,
                    &format_args!("{addr}: {e}"),
                )
            }
        };
        m.forwarded("out", owner);
        m.forwards_active.inc();
        debug!(port = local.port(), owner, peer = %addr, "cluster: forwarding data connection");
        let idle = (!settings.data_idle.is_zero()).then_some(settings.data_idle);
        let relayed = match relay_tcp_with_idle(&mut client, &mut upstream, idle).await {
            Ok(r) => r,
            Err(e) => e.relayed,
        };
        m.forwards_active.dec();
        m.forwarded_bytes_total
            .with_label_values(&["to_owner"])
            .inc_by(relayed.a_to_b);
        m.forwarded_bytes_total
            .with_label_values(&["to_client"])
            .inc_by(relayed.b_to_a);
    }

    /// Takes one connection from a peer: its header, then the session on its port.
    async fn receive(self: Arc<Self>, mut s: TcpStream, peer: SocketAddr) {
        let m = &self.metrics.cluster;
        let ip = canonical_ip(peer.ip());
        if !self.config.peer_cidrs.iter().any(|n| n.contains(&ip)) {
            m.failed(None, ForwardFailure::NotPeer);
            warn!(%peer, "cluster: connection to the peer port from outside cluster.peer_cidrs; closed");
            return reset(s);
        }
        let read =
            tokio::time::timeout(self.config.forward_connect_timeout, read_header(&mut s)).await;
        let f = match read {
            Ok(Ok(f)) => f,
            Ok(Err(e)) => {
                m.failed(None, ForwardFailure::BadHeader);
                warn!(%peer, error = %e, "cluster: bad header from a peer; closed");
                return reset(s);
            }
            Err(_) => {
                m.failed(None, ForwardFailure::BadHeader);
                warn!(%peer, "cluster: no header from a peer in time; closed");
                return reset(s);
            }
        };
        let port = f.destination.port();
        if self.slices.owner(port) != Some(self.ordinal) {
            m.failed(Some(f.from), ForwardFailure::ForeignSlice);
            warn!(%peer, port, from = f.from, "cluster: forwarded connection for a port outside this replica's slice; closed");
            return reset(s);
        }
        let handed = Handed {
            stream: s,
            client: f.client,
            from: f.from,
        };
        match self.handoffs.deliver(port, handed) {
            Ok(()) => {
                m.forwarded("in", f.from);
                debug!(
                    port,
                    from = f.from,
                    "cluster: forwarded data connection handed to its session"
                );
            }
            Err((why, h)) => {
                m.failed(Some(f.from), ForwardFailure::NoMapping);
                info!(port, from = f.from, reason = %why, "cluster: forwarded data connection has no session; closed");
                reset(h.stream);
            }
        }
    }
}

/// The client behind an accepted data connection: a trusted balancer's header says
/// who, else the peer itself.
async fn client_address(
    s: &mut TcpStream,
    peer: SocketAddr,
    proxy: &ProxyProtocolConfig,
) -> Result<SocketAddr, crate::proxy_protocol::ReadHeaderError> {
    if !proxy.expects_header(peer.ip()) {
        return Ok(peer);
    }
    match read_proxy_header(s, proxy.timeout).await? {
        ProxyHeader::Proxied { source, .. } => Ok(source),
        ProxyHeader::Local => Ok(peer),
    }
}

/// Reads exactly one forwarding header (never a byte of the client's data behind it).
async fn read_header(
    s: &mut TcpStream,
) -> Result<header::Forwarded, crate::proxy_protocol::HeaderError> {
    let malformed = |_| crate::proxy_protocol::HeaderError::Malformed;
    let mut fixed = [0u8; FIXED_LEN];
    s.read_exact(&mut fixed).await.map_err(malformed)?;
    let len = header::payload_len(&fixed)?;
    let mut whole = fixed.to_vec();
    whole.resize(FIXED_LEN + len, 0);
    s.read_exact(whole.get_mut(FIXED_LEN..).unwrap_or_default())
        .await
        .map_err(malformed)?;
    header::decode(&whole)
}

/// Closes with RST: the client sees its data connection fail at once instead of an
/// empty transfer that looks complete.
fn reset(s: TcpStream) {
    let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
    drop(s);
}

/// Accepts until `stop`, giving each connection to `handle`.
async fn accept_loop(
    listener: TcpListener,
    stop: CancellationToken,
    metrics: Arc<Metrics>,
    handle: impl Fn(TcpStream, SocketAddr),
) {
    let mut backoff = AcceptBackoff::default();
    loop {
        let delay = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((s, peer)) => {
                    backoff.reset();
                    handle(s, peer);
                    continue;
                }
                Err(e) => backoff.after_error(&e, &metrics, "cluster accept"),
            },
            () = stop.cancelled() => return,
        };
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = stop.cancelled() => return,
        }
    }
}

/// A listener on `port` of every address: IPv6 and IPv4 in one socket where the host
/// has IPv6, else IPv4 only.
fn bind_all_addresses(port: u16) -> Result<TcpListener, ClusterError> {
    use socket2::{Domain, Protocol, Socket, Type};
    let v6 = SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port);
    let dual = || -> io::Result<TcpListener> {
        let s = Socket::new(Domain::IPV6, Type::STREAM, Some(Protocol::TCP))?;
        s.set_only_v6(false)?;
        s.set_reuse_address(true)?;
        s.bind(&v6.into())?;
        s.listen(FORWARD_BACKLOG)?;
        s.set_nonblocking(true)?;
        TcpListener::from_std(s.into())
    };
    match dual() {
        Ok(l) => Ok(l),
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => Err(ClusterError::Bind {
            addr: v6,
            source: e,
        }),
        Err(_) => {
            let v4 = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port);
            crate::net::bind_listener(v4, false, FORWARD_BACKLOG)
                .map_err(|source| ClusterError::Bind { addr: v4, source })
        }
    }
}
