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

use crate::dataport::PortLease;
use crate::metrics::{Metrics, Refusal, TimeoutKind};
use crate::net::{connect_from, note_exhaustion, AcceptBackoff, LocalResource};
use crate::protocol::addr::canonical_ip;
use crate::relay::relay_tcp_with_idle;

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
        } = self;
        let mut finished = Finished {
            id,
            mode,
            client_to_backend: 0,
            backend_to_client: 0,
            duration: Duration::ZERO,
            established: false,
        };
        let opened = tokio::select! {
            r = open_both(client, backend, accept_timeout, connect_timeout, &metrics) => r,
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

enum Unopened {
    Withdrawn,
    Failed(String),
}

type Opened = (TcpStream, TcpStream, Vec<PortLease>);

/// Accept sides first (a connection out is made only once the peers we wait for have
/// shown up, so an absent client never ties up a backend data connection), then
/// connect sides.
async fn open_both(
    client: Endpoint,
    backend: Endpoint,
    accept_timeout: Duration,
    connect_timeout: Duration,
    metrics: &Metrics,
) -> Result<Opened, Unopened> {
    let mut leases = Vec::new();
    let deadline = tokio::time::Instant::now() + accept_timeout;
    let (c, b) = tokio::join!(
        accept_side(client, deadline, metrics, "client"),
        accept_side(backend, deadline, metrics, "backend")
    );
    let (c, b) = (c?, b?);
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
    let (b, lb) = b.map_err(|e| failed("backend", e))?;
    leases.extend(lc);
    leases.extend(lb);
    Ok((c, b, leases))
}

/// A side after its accept phase: a stream (with its lease), or still to connect.
enum Half {
    Accepted(TcpStream, PortLease),
    ToConnect(SocketAddr, Option<SocketAddr>),
}

async fn accept_side(
    ep: Endpoint,
    deadline: tokio::time::Instant,
    metrics: &Metrics,
    side: &'static str,
) -> Result<Half, Unopened> {
    match ep {
        Endpoint::Connect { target, local } => Ok(Half::ToConnect(target, local)),
        Endpoint::Accept {
            listener,
            lease,
            expect,
        } => {
            let port = lease.port();
            let mut backoff = AcceptBackoff::default();
            loop {
                tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((stream, peer)) if canonical_ip(peer.ip()) == expect => {
                            // One connection per mapping: closing the listener now means
                            // nobody else can reach this port while it relays.
                            drop(listener);
                            return Ok(Half::Accepted(stream, lease));
                        }
                        Ok((stream, peer)) => {
                            // Hijack attempt or a confused host: close before a byte moves.
                            drop(stream);
                            metrics.refuse(Refusal::ForeignDataPeer);
                            warn!(port, side, peer = %peer, "data connection from foreign address refused");
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

async fn connect_side(half: Half, timeout: Duration) -> io::Result<(TcpStream, Option<PortLease>)> {
    match half {
        Half::Accepted(s, lease) => Ok((s, Some(lease))),
        Half::ToConnect(target, local) => {
            let s = connect_from(target, local, timeout).await?;
            Ok((s, None))
        }
    }
}
