//! One data connection, relayed between the client and the backend.
//!
//! Each side is an [`Endpoint`]: ftpgate either *accepts* it on a leased port (only from
//! one peer IP: ARCHITECTURE invariant 4) or *connects* out to it. The four FTP
//! combinations are all the same task:
//!
//! | client mode | backend mode | client side | backend side |
//! |---|---|---|---|
//! | PASV/EPSV | passive (same) | Accept | Connect |
//! | PORT/EPRT | active (same) | Connect | Accept |
//! | PORT/EPRT | passive (translated) | Connect | Connect |
//! | PASV/EPSV | active (translated) | Accept | Accept |
//!
//! ```text
//!   Accepting (all Accept sides; foreign peers closed, counted, ignored)
//!       │ every accept done            └ timeout / withdrawn ──▶ done
//!   Connecting (all Connect sides)  ── fail ──▶ done (both sides closed)
//!       │
//!   Relaying ── both directions EOF ──▶ done: leases dropped, ports back in the pool
//! ```

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::cluster::handoff::{Handed, HandoffSlot};
use crate::config::UncleanEof;
use crate::dataport::PortLease;
use crate::metrics::{Metrics, Refusal, TimeoutKind};
use crate::net::{connect_from, note_exhaustion, AcceptBackoff, LocalResource};
use crate::protocol::addr::canonical_ip;
use crate::proxy_protocol::{
    encode_proxy_header, read_proxy_header, ProxyHeader, ProxyProtocolConfig, ProxyVersion,
    ReadHeaderError,
};
use crate::relay::relay_tcp_with_idle;
use crate::tls::MaybeTls;

/// How one side of a data connection is obtained.
#[derive(Debug)]
pub enum Endpoint {
    /// Accept one connection on a leased data port.
    Accept {
        /// The bound listener on the leased port.
        listener: TcpListener,
        /// The port's lease; the port returns to the pool when the endpoint is dropped.
        lease: PortLease,
        /// The only peer IP accepted.
        expect: IpAddr,
        /// Cluster mode: connections for this port that landed on another replica,
        /// forwarded here with the original client's address.
        handoff: Option<HandoffSlot>,
    },
    /// Connect out to a peer's data address.
    Connect {
        /// The peer's data address.
        target: SocketAddr,
        /// Local address to connect from (port 0: any).
        local: Option<SocketAddr>,
    },
}

/// The mode a data connection uses on the client side; a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataMode {
    /// Passive (PASV/EPSV): the client connects in.
    Passive,
    /// Active (PORT/EPRT): ftpgate connects out to the client.
    Active,
}

impl DataMode {
    /// The `mode` label value: `passive` or `active`.
    pub fn label(self) -> &'static str {
        match self {
            DataMode::Passive => "passive",
            DataMode::Active => "active",
        }
    }
}

/// What the session hears back about its data connections.
#[derive(Debug, Clone, Copy)]
pub enum DataEvent {
    /// Both sides are connected and the relay runs.
    Started {
        /// The data connection's id within its session.
        id: u64,
    },
    /// The data connection ended (or never came up).
    Finished(Finished),
}

/// The end of one data connection: what it moved and for how long.
#[derive(Debug, Clone, Copy)]
pub struct Finished {
    /// The data connection's id within its session.
    pub id: u64,
    /// The client-facing mode.
    pub mode: DataMode,
    /// Bytes relayed from the client to the backend (uploads).
    pub client_to_backend: u64,
    /// Bytes relayed from the backend to the client (downloads, listings).
    pub backend_to_client: u64,
    /// How long the relay ran; zero when the connection was never established.
    pub duration: Duration,
    /// False when the connection was never established (timeout, refused connect).
    pub established: bool,
}

/// Everything one data connection needs: how to get each side, and its timeouts.
#[derive(Debug)]
pub struct DataPlan {
    /// The data connection's id within its session.
    pub id: u64,
    /// The client-facing mode.
    pub mode: DataMode,
    /// How the client side is obtained.
    pub client: Endpoint,
    /// How the backend side is obtained.
    pub backend: Endpoint,
    /// How long a listener waits for its peer (`timeouts.data_connect`).
    pub accept_timeout: Duration,
    /// How long a connect out may take (`timeouts.backend_connect`).
    pub connect_timeout: Duration,
    /// Close the connection when no byte moved for this long.
    pub idle_timeout: Option<Duration>,
    /// PROXY protocol on the client side's accepted connection (a balancer forwarding
    /// the data ports too): whose connections must begin with a header.
    pub client_proxy: Option<ProxyProtocolConfig>,
    /// PROXY protocol header to send on a backend data connection ftpgate opens.
    pub backend_header: Option<ProxyVersion>,
    /// TLS on either side (`PROT P`).
    pub tls: DataTlsPlan,
}

/// TLS layers of one data connection. Towards the client ftpgate is the TLS server,
/// towards the backend the TLS client, whoever opened the TCP connection (RFC 4217 §7).
#[derive(Default)]
pub struct DataTlsPlan {
    /// Client side in TLS, ftpgate the server.
    pub client: Option<tokio_rustls::TlsAcceptor>,
    /// Backend side in TLS: the session's connector (its resumption store holds the
    /// control connection's session) and the name to verify.
    pub backend: Option<(
        tokio_rustls::TlsConnector,
        rustls::pki_types::ServerName<'static>,
    )>,
    /// Refuse a client handshake that does not resume (`tls.require_session_reuse`).
    pub require_reuse: bool,
    /// A client upload ending without `close_notify` (`tls.unclean_client_eof`).
    pub unclean: UncleanEof,
    /// Changes when the backend sends a transfer command's `1xx`; the backend-side
    /// handshake waits for it, as curl does (`None`: no wait).
    pub preliminary: Option<tokio::sync::watch::Receiver<u64>>,
}

impl std::fmt::Debug for DataTlsPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataTlsPlan")
            .field("client", &self.client.is_some())
            .field("backend", &self.backend.is_some())
            .field("require_reuse", &self.require_reuse)
            .field("unclean", &self.unclean)
            .finish()
    }
}

impl DataPlan {
    /// Runs the data connection to its end. `cancel` only stops it before the relay
    /// starts: a transfer in progress always finishes.
    pub async fn run(
        self,
        cancel: CancellationToken,
        metrics: Arc<Metrics>,
        events: mpsc::UnboundedSender<DataEvent>,
    ) {
        let DataPlan {
            id,
            mode,
            client,
            backend,
            accept_timeout,
            connect_timeout,
            idle_timeout,
            client_proxy,
            backend_header,
            tls,
        } = self;
        let proxy = DataProxy {
            client: client_proxy,
            backend_header,
        };
        let mut finished = Finished {
            id,
            mode,
            client_to_backend: 0,
            backend_to_client: 0,
            duration: Duration::ZERO,
            established: false,
        };
        let opened = tokio::select! {
            r = open_both(client, backend, accept_timeout, connect_timeout, &proxy, &metrics) => r,
            () = cancel.cancelled() => {
                debug!(id, "data mapping withdrawn before use");
                Err(Unopened::Withdrawn)
            }
        };
        let (mut c, mut b, leases) = match opened {
            Ok(x) => x,
            Err(e) => {
                if let Unopened::Failed(reason) = e {
                    info!(id, reason = %reason, "data connection not established");
                }
                let _ = events.send(DataEvent::Finished(finished));
                return;
            }
        };
        if tls.client.is_some() || tls.backend.is_some() {
            let mut tls = tls;
            let (c, b) = match secure_both(c, b, &mut tls, accept_timeout, &metrics).await {
                Ok(x) => x,
                Err(reason) => {
                    info!(id, reason = %reason, "data connection TLS handshake failed");
                    let _ = events.send(DataEvent::Finished(finished));
                    return;
                }
            };
            let _ = events.send(DataEvent::Started { id });
            let started = Instant::now();
            let (up, down) = relay_tls(c, b, idle_timeout, tls.unclean, &metrics, id).await;
            finished.client_to_backend = up;
            finished.backend_to_client = down;
            drop(leases);
            return finish(finished, started, &metrics, &events);
        }
        let _ = events.send(DataEvent::Started { id });
        let started = Instant::now();
        // An aborted transfer (RST, ABOR, a close with unread data) still moved bytes:
        // they are counted like those of a complete one.
        let relayed = match relay_tcp_with_idle(&mut c, &mut b, idle_timeout).await {
            Ok(r) => r,
            Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                metrics.timeout(TimeoutKind::DataIdle);
                info!(id, timeout = ?idle_timeout, "data connection idle; closed");
                e.relayed
            }
            Err(e) => {
                debug!(id, error = %e.source, up = e.relayed.a_to_b, down = e.relayed.b_to_a, "data relay ended with error");
                e.relayed
            }
        };
        finished.client_to_backend = relayed.a_to_b;
        finished.backend_to_client = relayed.b_to_a;
        drop(leases);
        finished.duration = started.elapsed();
        finished.established = true;
        metrics
            .data_bytes_total
            .with_label_values(&["client_to_backend"])
            .inc_by(finished.client_to_backend);
        metrics
            .data_bytes_total
            .with_label_values(&["backend_to_client"])
            .inc_by(finished.backend_to_client);
        let _ = events.send(DataEvent::Finished(finished));
    }
}

fn finish(
    mut finished: Finished,
    started: Instant,
    metrics: &Metrics,
    events: &mpsc::UnboundedSender<DataEvent>,
) {
    finished.duration = started.elapsed();
    finished.established = true;
    metrics
        .data_bytes_total
        .with_label_values(&["client_to_backend"])
        .inc_by(finished.client_to_backend);
    metrics
        .data_bytes_total
        .with_label_values(&["backend_to_client"])
        .inc_by(finished.backend_to_client);
    let _ = events.send(DataEvent::Finished(finished));
}

/// Both TLS handshakes at once, bounded by `timeout`; a client side that must resume
/// and did not is refused.
async fn secure_both(
    c: TcpStream,
    b: TcpStream,
    tls: &mut DataTlsPlan,
    timeout: Duration,
    metrics: &Metrics,
) -> Result<(MaybeTls, MaybeTls), String> {
    let mut preliminary = tls.preliminary.take();
    // Client side first: a refused client (no resumption, failed handshake) must not
    // let the backend go ahead, so the backend's handshake waits for it.
    let client = async {
        match &tls.client {
            Some(acceptor) => {
                let r = MaybeTls::Plain(c).accept(acceptor).await;
                let negotiated = r.as_ref().ok().and_then(MaybeTls::negotiated);
                metrics.tls_handshake("client", negotiated);
                let s = r.map_err(|e| format!("client side: {e}"))?;
                let resumed = negotiated.is_some_and(|n| n.resumed);
                debug!(
                    resumed,
                    version = negotiated.map_or("none", |n| n.version),
                    "client data connection in TLS"
                );
                if tls.require_reuse && !resumed {
                    metrics.refuse(Refusal::TlsNotResumed);
                    warn!("client data connection did not resume the TLS session; refused (tls.require_session_reuse)");
                    return Err("client side: TLS session not resumed".to_string());
                }
                Ok(s)
            }
            None => Ok(MaybeTls::Plain(c)),
        }
    };
    let both = async {
        let c = client.await?;
        let b = match &tls.backend {
            Some((connector, name)) => {
                if let Some(rx) = preliminary.as_mut() {
                    rx.changed()
                        .await
                        .map_err(|_| "session ended before the transfer started".to_string())?;
                }
                let r = MaybeTls::Plain(b).connect(connector, name.clone()).await;
                let negotiated = r.as_ref().ok().and_then(MaybeTls::negotiated);
                metrics.tls_handshake("backend", negotiated);
                debug!(
                    resumed = negotiated.is_some_and(|n| n.resumed),
                    "backend data connection in TLS"
                );
                r.map_err(|e| format!("backend side: {e}"))?
            }
            None => MaybeTls::Plain(b),
        };
        Ok((c, b))
    };
    match tokio::time::timeout(timeout, both).await {
        Ok(r) => r,
        Err(_) => Err("handshake timed out".into()),
    }
}

/// Buffer per direction for TLS relays (one TLS record is at most 16 KiB).
const TLS_RELAY_CHUNK: usize = 64 * 1024;

/// The buffered relay used when either side is TLS. Each EOF is passed on with a
/// shutdown, which on ftpgate's TLS sides is a `close_notify` first: backends with
/// vsftpd's `strict_ssl_read_eof=YES` see a clean end. A client TLS side ending
/// without `close_notify` is handled by `unclean`. Returns (up, down) bytes.
async fn relay_tls(
    mut c: MaybeTls,
    mut b: MaybeTls,
    idle: Option<Duration>,
    unclean: UncleanEof,
    metrics: &Metrics,
    id: u64,
) -> (u64, u64) {
    let (mut cbuf, mut bbuf) = (vec![0u8; TLS_RELAY_CHUNK], vec![0u8; TLS_RELAY_CHUNK]);
    let (mut up, mut down) = (0u64, 0u64);
    let (mut c_open, mut b_open) = (true, true);
    while c_open || b_open {
        let idle_at = idle.map(|d| tokio::time::Instant::now() + d);
        let idle_sleep = async {
            match idle_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let step: io::Result<()> = tokio::select! {
            r = c.read(&mut cbuf), if c_open => match r {
                Ok(0) => {
                    c_open = false;
                    b.shutdown().await
                }
                Ok(n) => {
                    up += n as u64;
                    write_flush(&mut b, cbuf.get(..n).unwrap_or_default()).await
                }
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof && c.is_tls() => {
                    c_open = false;
                    match unclean {
                        UncleanEof::Complete => {
                            metrics.tls_unclean_eof_total.with_label_values(&["complete"]).inc();
                            info!(id, bytes = up, "client ended its TLS data connection without close_notify; completing the backend side cleanly (tls.unclean_client_eof: complete)");
                            b.shutdown().await
                        }
                        UncleanEof::Abort => {
                            metrics.tls_unclean_eof_total.with_label_values(&["abort"]).inc();
                            warn!(id, bytes = up, "client ended its TLS data connection without close_notify; resetting the backend side (tls.unclean_client_eof: abort)");
                            // SO_LINGER 0: close sends RST, so the backend fails the
                            // transfer instead of taking the truncated file as complete.
                            let _ = socket2::SockRef::from(b.tcp()).set_linger(Some(Duration::ZERO));
                            return (up, down);
                        }
                    }
                }
                Err(e) => Err(e),
            },
            r = b.read(&mut bbuf), if b_open => match r {
                // A backend that closes without close_notify ended its data anyway.
                Ok(0) => {
                    b_open = false;
                    c.shutdown().await
                }
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof && b.is_tls() => {
                    debug!(id, "backend ended its TLS data connection without close_notify");
                    b_open = false;
                    c.shutdown().await
                }
                Ok(n) => {
                    down += n as u64;
                    write_flush(&mut c, bbuf.get(..n).unwrap_or_default()).await
                }
                Err(e) => Err(e),
            },
            () = idle_sleep => {
                metrics.timeout(TimeoutKind::DataIdle);
                info!(id, timeout = ?idle, "data connection idle; closed");
                return (up, down);
            }
        };
        if let Err(e) = step {
            debug!(id, error = %e, up, down, "TLS data relay ended with error");
            break;
        }
    }
    (up, down)
}

async fn write_flush(s: &mut MaybeTls, bytes: &[u8]) -> io::Result<()> {
    s.write_all(bytes).await?;
    s.flush().await
}

enum Unopened {
    Withdrawn,
    Failed(String),
}

type Opened = (TcpStream, TcpStream, Vec<PortLease>);

/// PROXY protocol on a data connection: in on the client side, out on the backend's.
struct DataProxy {
    client: Option<ProxyProtocolConfig>,
    backend_header: Option<ProxyVersion>,
}

/// Accept sides first (a connection out is made only once the peers we wait for have
/// shown up, so an absent client never ties up a backend data connection), then
/// connect sides.
async fn open_both(
    client: Endpoint,
    backend: Endpoint,
    accept_timeout: Duration,
    connect_timeout: Duration,
    proxy: &DataProxy,
    metrics: &Metrics,
) -> Result<Opened, Unopened> {
    let mut leases = Vec::new();
    let deadline = tokio::time::Instant::now() + accept_timeout;
    let (c, b) = tokio::join!(
        accept_side(client, deadline, metrics, "client", proxy.client.as_ref()),
        accept_side(backend, deadline, metrics, "backend", None)
    );
    let (c, b) = (c?, b?);
    // The client's real data address, for a header towards the backend.
    let client_real = match &c {
        Half::Accepted(_, _, real) => *real,
        Half::ToConnect(target, _) => *target,
    };
    let backend_target = match &b {
        Half::ToConnect(target, _) => Some(*target),
        Half::Accepted(..) => None,
    };
    let (c, b) = tokio::join!(
        connect_side(c, connect_timeout),
        connect_side(b, connect_timeout)
    );
    let failed = |side: &str, e: io::Error| {
        if let Some(resource) = LocalResource::of(&e) {
            note_exhaustion(metrics, resource, "data connect", &e);
        }
        Unopened::Failed(format!("connect to {side}: {e}"))
    };
    let (c, lc) = c.map_err(|e| failed("client", e))?;
    let (mut b, lb) = b.map_err(|e| failed("backend", e))?;
    // Only on a connection ftpgate opened: a backend connecting to us (active mode)
    // knows who it connected to.
    if let (Some(version), Some(target)) = (proxy.backend_header, backend_target) {
        let header = encode_proxy_header(version, client_real, target);
        match tokio::time::timeout(connect_timeout, b.write_all(&header)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(failed("backend", e)),
            Err(_) => return Err(failed("backend", io::ErrorKind::TimedOut.into())),
        }
    }
    leases.extend(lc);
    leases.extend(lb);
    Ok((c, b, leases))
}

/// A side after its accept phase: a stream (with its lease), or still to connect.
enum Half {
    /// With the peer's real address (a PROXY header's source, else the TCP peer).
    Accepted(TcpStream, PortLease, SocketAddr),
    ToConnect(SocketAddr, Option<SocketAddr>),
}

async fn accept_side(
    ep: Endpoint,
    deadline: tokio::time::Instant,
    metrics: &Metrics,
    side: &'static str,
    proxy: Option<&ProxyProtocolConfig>,
) -> Result<Half, Unopened> {
    match ep {
        Endpoint::Connect { target, local } => Ok(Half::ToConnect(target, local)),
        Endpoint::Accept {
            listener,
            lease,
            expect,
            mut handoff,
        } => {
            let port = lease.port();
            let mut backoff = AcceptBackoff::default();
            loop {
                tokio::select! {
                    Some(Handed { stream, client, from }) = next_forwarded(&mut handoff) => {
                        // The peer's header names the client; the same check as for a
                        // direct connection applies to it.
                        let real = SocketAddr::new(canonical_ip(client.ip()), client.port());
                        if real.ip() != expect {
                            drop(stream);
                            metrics.refuse(Refusal::ForeignDataPeer);
                            warn!(port, side, peer = %real, from, "forwarded data connection from foreign address refused");
                            continue;
                        }
                        drop(listener);
                        drop(handoff);
                        debug!(port, side, from, "data connection forwarded by peer replica");
                        return Ok(Half::Accepted(stream, lease, real));
                    }
                    accepted = listener.accept() => match accepted {
                        Ok((mut stream, peer)) => {
                            let Some(real) = data_peer(&mut stream, peer, proxy, deadline, metrics).await else {
                                continue;
                            };
                            if canonical_ip(real.ip()) != expect {
                                // Hijack attempt or a confused host (behind a balancer:
                                // its header names another client): close before a
                                // byte moves.
                                drop(stream);
                                metrics.refuse(Refusal::ForeignDataPeer);
                                warn!(port, side, peer = %real, "data connection from foreign address refused");
                                continue;
                            }
                            // One connection per mapping: closing the listener (and the
                            // cluster registration) now means nobody else can reach this
                            // port while it relays.
                            drop(listener);
                            drop(handoff);
                            return Ok(Half::Accepted(stream, lease, real));
                        }
                        Err(e) => match LocalResource::of(&e) {
                            // Out of descriptors: the peer stays queued; retry (backing
                            // off, not spinning) until descriptors free up or the
                            // accept deadline passes.
                            Some(resource) => {
                                note_exhaustion(metrics, resource, "data accept", &e);
                                let retry = tokio::time::Instant::now() + backoff.next_delay();
                                tokio::time::sleep_until(retry.min(deadline)).await;
                            }
                            None => return Err(Unopened::Failed(format!("accept on port {port}: {e}"))),
                        },
                    },
                    () = tokio::time::sleep_until(deadline) => {
                        metrics.timeout(TimeoutKind::DataConnect);
                        return Err(Unopened::Failed(format!("no {side} data connection on port {port} within timeout; port released")));
                    }
                }
            }
        }
    }
}

/// The next connection a peer replica forwarded for this port; never, outside
/// cluster mode.
async fn next_forwarded(slot: &mut Option<HandoffSlot>) -> Option<Handed> {
    match slot {
        Some(slot) => slot.next().await,
        None => std::future::pending().await,
    }
}

/// The real peer of an accepted data connection: the PROXY header's source when the
/// peer is a trusted balancer (bounded by the header timeout and the accept deadline),
/// else the peer. `None`: the header was bad or late; the connection is dropped and
/// the port keeps waiting for its client.
async fn data_peer(
    stream: &mut TcpStream,
    peer: SocketAddr,
    proxy: Option<&ProxyProtocolConfig>,
    deadline: tokio::time::Instant,
    metrics: &Metrics,
) -> Option<SocketAddr> {
    let Some(p) = proxy.filter(|p| p.expects_header(peer.ip())) else {
        return Some(peer);
    };
    let read = tokio::time::timeout_at(deadline, read_proxy_header(stream, p.timeout))
        .await
        .unwrap_or(Err(ReadHeaderError::Timeout));
    let result = match &read {
        Ok(_) => "accepted",
        Err(e) => e.label(),
    };
    metrics
        .proxy_headers_total
        .with_label_values(&["data", result])
        .inc();
    match read {
        Ok(ProxyHeader::Proxied { source, .. }) => Some(source),
        Ok(ProxyHeader::Local) => Some(peer),
        Err(e) => {
            debug!(balancer = %peer, error = %e, "PROXY protocol header on a data port refused");
            None
        }
    }
}

async fn connect_side(half: Half, timeout: Duration) -> io::Result<(TcpStream, Option<PortLease>)> {
    match half {
        Half::Accepted(s, lease, _) => Ok((s, Some(lease))),
        Half::ToConnect(target, local) => {
            let s = connect_from(target, local, timeout).await?;
            Ok((s, None))
        }
    }
}
