//! The data-port pool: which ports of the configured range are leased right now.
//!
//! Ports are chosen at random (predictable ports invite hijacking, ARCHITECTURE
//! invariant 3) and returned when their [`PortLease`] drops, so every exit path of a
//! data mapping — relay finished, timeout, session gone — gives the port back.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use rand::Rng;
use tokio::net::TcpListener;

use prometheus::IntGauge;

use crate::config::PortRange;
use crate::metrics::Metrics;

/// How many random probes before falling back to a scan from a random start.
const RANDOM_PROBES: usize = 16;
/// Ports that fail to bind (held by another process) before giving up on one request.
const BIND_ATTEMPTS: usize = 8;

/// A pool of data ports (`data_ports`, or `active.ports`): each lease binds one port of
/// the range, picked at random, and frees it on drop.
#[derive(Debug)]
pub struct PortPool {
    range: PortRange,
    leased: Mutex<Vec<bool>>,
    in_use: AtomicUsize,
    /// A reload moved the range: no longer counted as free (see [`PortPool::retire`]).
    retired: AtomicBool,
    /// Pools add up in the shared gauges (one process may have two pools).
    gauge_in_use: IntGauge,
    gauge_free: IntGauge,
}

/// Why no data port could be leased.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// Every port of the range is leased (the range's size).
    #[error("all {0} data ports are in use")]
    Exhausted(usize),
    /// Binding failed on every port tried (held by another process); the last error.
    #[error("cannot bind a data port: {0}")]
    Bind(#[source] io::Error),
    /// The session holds `limits.data_ports_per_session` ports already.
    #[error("this session holds {0} data ports already")]
    PerSession(usize),
}

impl PortPool {
    /// A pool over `range`, counted in `metrics`' data-port gauges.
    pub fn new(range: PortRange, metrics: &Metrics) -> Arc<PortPool> {
        metrics.data_ports_free.add(range.len() as i64);
        Arc::new(PortPool {
            range,
            leased: Mutex::new(vec![false; range.len()]),
            in_use: AtomicUsize::new(0),
            retired: AtomicBool::new(false),
            gauge_in_use: metrics.data_ports_in_use.clone(),
            gauge_free: metrics.data_ports_free.clone(),
        })
    }

    /// The port range.
    pub fn range(&self) -> PortRange {
        self.range
    }

    /// A reload replaced this range: new sessions lease from another pool. Its free
    /// ports leave the free gauge now; its leases count as in use until they end (and
    /// sessions that started with it may still lease from it). Idempotent.
    pub fn retire(&self) {
        let leased = self.leased.lock().unwrap_or_else(|p| p.into_inner());
        if !self.retired.swap(true, Ordering::Relaxed) {
            let free = leased.iter().filter(|l| !**l).count();
            self.gauge_free.sub(free as i64);
        }
    }

    /// How many ports the range holds.
    pub fn capacity(&self) -> usize {
        self.range.len()
    }

    /// How many ports are leased right now.
    pub fn in_use(&self) -> usize {
        self.in_use.load(Ordering::Relaxed)
    }

    /// Leases a free port chosen at random, or `None` when every port is leased.
    pub fn lease(self: &Arc<Self>) -> Option<PortLease> {
        let mut leased = self.leased.lock().unwrap_or_else(|p| p.into_inner());
        let n = leased.len();
        let mut rng = rand::rng();
        let slot = (0..RANDOM_PROBES)
            .map(|_| rng.random_range(0..n))
            .find(|&i| !leased[i])
            .or_else(|| {
                let start = rng.random_range(0..n);
                (0..n).map(|k| (start + k) % n).find(|&i| !leased[i])
            })?;
        leased[slot] = true;
        self.in_use.fetch_add(1, Ordering::Relaxed);
        self.gauge_in_use.inc();
        if !self.retired.load(Ordering::Relaxed) {
            self.gauge_free.dec();
        }
        let port = self.range.lo + u16::try_from(slot).ok()?;
        Some(PortLease {
            pool: Arc::clone(self),
            port,
            session: None,
        })
    }

    fn release(&self, port: u16) {
        let slot = usize::from(port - self.range.lo);
        let mut leased = self.leased.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(l) = leased.get_mut(slot) {
            if *l {
                *l = false;
                self.in_use.fetch_sub(1, Ordering::Relaxed);
                self.gauge_in_use.dec();
                if !self.retired.load(Ordering::Relaxed) {
                    self.gauge_free.inc();
                }
            }
        }
    }

    /// Leases a port and binds a listener on `ip` at it. Ports another process holds
    /// are skipped (their lease is returned) and another is tried.
    pub fn bind(self: &Arc<Self>, ip: IpAddr) -> Result<(PortLease, TcpListener), LeaseError> {
        let mut last_err = None;
        for _ in 0..BIND_ATTEMPTS {
            let lease = self.lease().ok_or(LeaseError::Exhausted(self.capacity()))?;
            match bind_listener(SocketAddr::new(ip, lease.port())) {
                Ok(l) => return Ok((lease, l)),
                Err(e) => last_err = Some(e),
            }
        }
        Err(LeaseError::Bind(last_err.unwrap_or_else(|| {
            io::Error::new(io::ErrorKind::AddrInUse, "no bindable port")
        })))
    }
}

/// A leased data port; returned to the pool on drop.
#[derive(Debug)]
pub struct PortLease {
    pool: Arc<PortPool>,
    port: u16,
    /// The holding session's count of leases (`limits.data_ports_per_session`).
    session: Option<Arc<AtomicUsize>>,
}

impl PortLease {
    /// The leased port number.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Counts this lease in a session's total until it drops.
    pub fn count_in(&mut self, session: &Arc<AtomicUsize>) {
        session.fetch_add(1, Ordering::AcqRel);
        if let Some(old) = self.session.replace(Arc::clone(session)) {
            old.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Drop for PortLease {
    fn drop(&mut self) {
        self.pool.release(self.port);
        if let Some(s) = self.session.take() {
            s.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// A data port expects one peer; a small backlog still lets a foreign connection and
/// the real client queue at the same time.
const DATA_BACKLOG: i32 = 8;

fn bind_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    crate::net::bind_listener(addr, false, DATA_BACKLOG)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn pool(lo: u16, hi: u16) -> Arc<PortPool> {
        PortPool::new(PortRange { lo, hi }, &Metrics::new())
    }

    #[test]
    fn leases_every_port_of_the_range_then_exhausts() {
        let p = pool(40000, 40009);
        let leases: Vec<_> = (0..10).map(|_| p.lease().expect("free port")).collect();
        let ports: HashSet<u16> = leases.iter().map(PortLease::port).collect();
        assert_eq!(ports, (40000..=40009).collect());
        assert!(p.lease().is_none());
        assert_eq!(p.in_use(), 10);
        drop(leases);
        assert_eq!(p.in_use(), 0);
        assert!(p.lease().is_some());
    }

    #[test]
    fn single_port_range_and_top_of_port_space() {
        let p = pool(65535, 65535);
        let l = p.lease().unwrap();
        assert_eq!(l.port(), 65535);
        assert!(p.lease().is_none());
        drop(l);
        assert_eq!(p.lease().unwrap().port(), 65535);
    }

    #[test]
    fn released_port_comes_back() {
        let p = pool(1, 2);
        let a = p.lease().unwrap();
        let b = p.lease().unwrap();
        let freed = a.port();
        drop(a);
        assert_eq!(p.lease().unwrap().port(), freed);
        drop(b);
    }

    #[test]
    fn choice_is_not_sequential() {
        let p = pool(20000, 29999);
        let ports: Vec<u16> = (0..20)
            .map(|_| p.lease().unwrap())
            .map(|l| l.port())
            .collect();
        let sequential = ports.windows(2).all(|w| w[1] == w[0].wrapping_add(1));
        assert!(!sequential, "{ports:?}");
    }

    #[test]
    fn retired_pool_leaves_the_free_gauge_and_its_leases_end() {
        let m = Metrics::new();
        let old = PortPool::new(
            PortRange {
                lo: 40000,
                hi: 40009,
            },
            &m,
        );
        let held = old.lease().unwrap();
        let new = PortPool::new(
            PortRange {
                lo: 41000,
                hi: 41004,
            },
            &m,
        );
        assert_eq!(
            (m.data_ports_in_use.get(), m.data_ports_free.get()),
            (1, 14)
        );
        old.retire();
        old.retire();
        assert_eq!((m.data_ports_in_use.get(), m.data_ports_free.get()), (1, 5));
        let again = old.lease().unwrap();
        drop((held, again));
        let l = new.lease().unwrap();
        assert_eq!((m.data_ports_in_use.get(), m.data_ports_free.get()), (1, 4));
        drop(l);
        assert_eq!((m.data_ports_in_use.get(), m.data_ports_free.get()), (0, 5));
    }

    #[tokio::test]
    async fn bind_skips_ports_held_by_others() {
        let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let held = holder.local_addr().unwrap().port();
        let p = pool(held, held);
        assert!(matches!(
            p.bind("127.0.0.1".parse().unwrap()),
            Err(LeaseError::Bind(_))
        ));
        assert_eq!(p.in_use(), 0, "failed binds return their lease");
    }
}
