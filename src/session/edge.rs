//! The machine's view of the world, implemented with real sockets: data ports from the
//! pools, and data connections started as tasks. I/O edge.

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::data::{DataEvent, DataPlan, DataTlsPlan, Endpoint};
use super::machine::{DataSpec, EndpointSpec, ListenerSide, SessionEdge};
use super::transport::SessionTls;
use crate::cluster::handoff::{HandoffSlot, Handoffs};
use crate::config::Config;
use crate::dataport::{LeaseError, PortLease, PortPool};
use crate::metrics::Metrics;
use crate::tls::TlsContexts;

/// A leased port with its listener.
#[derive(Debug)]
pub struct BoundPort {
    lease: PortLease,
    listener: TcpListener,
    /// Cluster mode: the port's registration for connections peers forward.
    handoff: Option<HandoffSlot>,
}

/// Data ports from the gateway's pools.
pub struct PoolEdge {
    /// Client-facing listeners.
    pub pool: Arc<PortPool>,
    /// Backend-facing listeners (active mode); may be `pool` itself.
    pub active_pool: Arc<PortPool>,
    /// This session's leases alive now (both pools): each lease counts until it drops.
    pub held: Arc<AtomicUsize>,
    /// `limits.data_ports_per_session`.
    pub max_held: usize,
    /// Cluster mode: client-side ports register here for forwarded connections.
    pub handoffs: Option<Arc<Handoffs>>,
}

impl SessionEdge for PoolEdge {
    type Listener = BoundPort;

    fn bind_data_listener(
        &mut self,
        side: ListenerSide,
        ip: IpAddr,
    ) -> Result<(u16, BoundPort), LeaseError> {
        let pool = match side {
            ListenerSide::Client => &self.pool,
            ListenerSide::Backend => &self.active_pool,
        };
        // One session must not empty the pool for everyone: its own leases are
        // capped. Unused ones are withdrawn when a newer mapping replaces them, so a
        // well-behaved client never comes near the cap.
        if per_session_full(self.held.load(Ordering::Acquire), self.max_held) {
            return Err(LeaseError::PerSession(self.max_held));
        }
        let (mut lease, listener) = pool.bind(ip)?;
        lease.count_in(&self.held);
        // Only client-side ports: a client's data connection may land on another
        // replica; a backend connects to this replica directly.
        let handoff = match side {
            ListenerSide::Client => self.handoffs.as_ref().map(|h| h.register(lease.port())),
            ListenerSide::Backend => None,
        };
        Ok((
            lease.port(),
            BoundPort {
                lease,
                listener,
                handoff,
            },
        ))
    }

    fn is_own_address(&self, ip: IpAddr) -> bool {
        crate::net::is_local_ip(ip)
    }
}

/// Whether a session holding `held` leases may take no more (`max` 0: no cap).
fn per_session_full(held: usize, max: usize) -> bool {
    max != 0 && held >= max
}

/// Starts a data connection; the returned token withdraws it until it is in use.
#[allow(clippy::too_many_arguments)]
pub fn spawn_data(
    spec: DataSpec<BoundPort>,
    cfg: &Config,
    metrics: &Arc<Metrics>,
    events: &mpsc::UnboundedSender<DataEvent>,
    parent: &CancellationToken,
    contexts: &TlsContexts,
    session: &SessionTls,
    preliminary: tokio::sync::watch::Receiver<u64>,
) -> CancellationToken {
    let t = &cfg.timeouts;
    let tls = DataTlsPlan {
        client: spec.tls.client.then(|| contexts.acceptor()).flatten(),
        backend: spec
            .tls
            .backend
            .then(|| (session.connector.clone(), session.name.clone())),
        require_reuse: cfg.tls.require_session_reuse,
        unclean: cfg.tls.unclean_client_eof,
        preliminary: Some(preliminary),
    };
    let plan = DataPlan {
        id: spec.id,
        mode: spec.mode,
        client: endpoint(spec.client),
        backend: endpoint(spec.backend),
        accept_timeout: t.data_connect,
        connect_timeout: t.backend_connect,
        idle_timeout: (!t.data_idle.is_zero()).then_some(t.data_idle),
        client_proxy: (!cfg.proxy_protocol.accept_from.is_empty())
            .then(|| cfg.proxy_protocol.clone()),
        backend_header: cfg
            .backend_proxy_protocol
            .filter(|_| cfg.backend_proxy_protocol_data),
        tls,
    };
    let cancel = parent.child_token();
    tokio::spawn(
        plan.run(cancel.clone(), Arc::clone(metrics), events.clone())
            .instrument(tracing::Span::current()),
    );
    cancel
}

fn endpoint(spec: EndpointSpec<BoundPort>) -> Endpoint {
    match spec {
        EndpointSpec::Accept { listener, expect } => Endpoint::Accept {
            listener: listener.listener,
            lease: listener.lease,
            expect,
            handoff: listener.handoff,
        },
        EndpointSpec::Connect { target, local } => Endpoint::Connect { target, local },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    #[test]
    fn pasv_flood_session_is_capped_and_leases_come_back() {
        // A client looping PASV without ever transferring.
        let metrics = Metrics::new();
        let pool = PortPool::new("46100-46109".parse().unwrap(), &metrics);
        let mut edge = PoolEdge {
            pool: Arc::clone(&pool),
            active_pool: Arc::clone(&pool),
            held: Arc::new(AtomicUsize::new(0)),
            max_held: 3,
            handoffs: None,
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _g = rt.enter();
        let ip = IpAddr::from([127, 0, 0, 1]);
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(edge.bind_data_listener(ListenerSide::Client, ip).unwrap());
        }
        let refused = edge.bind_data_listener(ListenerSide::Client, ip);
        assert!(matches!(refused, Err(LeaseError::PerSession(3))));
        assert_eq!(
            pool.in_use(),
            3,
            "the other 7 ports stay for other sessions"
        );
        held.pop();
        assert!(edge.bind_data_listener(ListenerSide::Client, ip).is_ok());
        drop(held);
        assert_eq!(edge.held.load(Ordering::Acquire), 0);
        assert_eq!(pool.in_use(), 0);
    }
}
