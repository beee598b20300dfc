//! Backend connect: the farm's policy orders the members, a failed connect falls
//! through to the next; members known down are tried last, draining ones never.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;

use crate::farm::{Farm, SessionKey, SessionLease};
use crate::metrics::Metrics;
use crate::net::{connect_from, note_exhaustion, LocalResource};

/// Connects sessions to the farm's members in the order its policy chooses.
#[derive(Debug)]
pub struct Balancer {
    /// Members, their health and load.
    pub farm: Arc<Farm>,
}

/// Why a session got no backend connection: the backends (each tried), or ftpgate
/// itself (out of descriptors or buffers: no backend was at fault, none is marked down).
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// Every member tried failed (or none may take sessions: all draining).
    #[error("no backend reachable ({tried} tried)")]
    NoBackend {
        /// Members tried.
        tried: usize,
    },
    /// ftpgate ran out of a local resource.
    #[error("local resource exhausted ({resource}): {source}")]
    LocalResource {
        /// Which one.
        resource: LocalResource,
        /// The socket call's error.
        #[source]
        source: std::io::Error,
    },
}

/// A connected backend control connection and the session's claim on its member.
#[derive(Debug)]
pub struct Connected {
    /// The control connection.
    pub stream: TcpStream,
    /// The member's address.
    pub addr: SocketAddr,
    /// Counts the session on the member until dropped.
    pub lease: SessionLease,
}

impl Balancer {
    /// A balancer over `farm`.
    pub fn new(farm: Arc<Farm>) -> Self {
        Balancer { farm }
    }

    /// Connects to the member the policy picks for `key`, falling through to the
    /// others on failure (failover applies to every policy).
    pub async fn connect(
        &self,
        key: SessionKey<'_>,
        timeout: Duration,
        metrics: &Metrics,
    ) -> Result<Connected, ConnectError> {
        // Members known down come last (see `policy::try_order`), so a black-holed
        // backend does not cost every other session a full connect timeout; they are
        // still tried when nothing else answers.
        let order = self.farm.try_order(key);
        for &addr in &order {
            let label = addr.to_string();
            let started = std::time::Instant::now();
            match connect_from(addr, None, timeout).await {
                Ok(stream) => {
                    metrics
                        .backend_connect_duration_seconds
                        .observe(started.elapsed().as_secs_f64());
                    self.farm.health.set(addr, true);
                    let lease = self.farm.lease(addr);
                    return Ok(Connected {
                        stream,
                        addr,
                        lease,
                    });
                }
                Err(e) => {
                    if let Some(resource) = LocalResource::of(&e) {
                        // Every other backend would fail the same way, and this one
                        // is not down: stop here, touching no backend's state.
                        note_exhaustion(metrics, resource, "backend connect", &e);
                        return Err(ConnectError::LocalResource {
                            resource,
                            source: e,
                        });
                    }
                    if e.kind() == std::io::ErrorKind::TimedOut {
                        metrics.timeout(crate::metrics::TimeoutKind::BackendConnect);
                    }
                    metrics
                        .backend_connect_errors_total
                        .with_label_values(&[&label])
                        .inc();
                    self.farm.health.set(addr, false);
                    tracing::warn!(backend = %addr, error = %e, "backend connect failed");
                }
            }
        }
        Err(ConnectError::NoBackend { tried: order.len() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::farm::BalancePolicy;

    fn balancer(addrs: Vec<SocketAddr>, metrics: &Arc<Metrics>) -> Balancer {
        Balancer::new(Arc::new(Farm::new(
            addrs.into_iter().map(Into::into).collect(),
            BalancePolicy::RoundRobin,
            Vec::new(),
            Arc::clone(metrics),
        )))
    }

    fn key() -> SessionKey<'static> {
        SessionKey {
            client_ip: "192.0.2.1".parse().unwrap(),
            user: None,
        }
    }

    #[tokio::test]
    async fn falls_through_to_a_live_backend() {
        let live = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dead = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let metrics = Arc::new(Metrics::new());
        let b = balancer(vec![dead, live.local_addr().unwrap()], &metrics);
        let c = b
            .connect(key(), Duration::from_secs(5), &metrics)
            .await
            .unwrap();
        assert_eq!(c.addr, live.local_addr().unwrap());
        assert!(
            b.farm.health.is_down(dead),
            "the failed connect marked it down"
        );
    }

    #[tokio::test]
    async fn backends_known_down_are_tried_last() {
        let live = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let live = live.local_addr().unwrap();
        let dead = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let metrics = Arc::new(Metrics::new());
        let b = balancer(vec![dead, live], &metrics);
        b.farm.health.set(live, true);
        b.farm.health.set(dead, false);
        for _ in 0..4 {
            let c = b
                .connect(key(), Duration::from_secs(5), &metrics)
                .await
                .unwrap();
            assert_eq!(c.addr, live);
        }
        let errors = metrics
            .backend_connect_errors_total
            .with_label_values(&[&dead.to_string()])
            .get();
        assert_eq!(errors, 0, "the backend known down was never tried");
    }

    #[tokio::test]
    async fn all_dead_is_an_error() {
        let dead = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let other = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let metrics = Arc::new(Metrics::new());
        let b = balancer(vec![dead, other], &metrics);
        assert!(matches!(
            b.connect(key(), Duration::from_secs(5), &metrics)
                .await
                .unwrap_err(),
            ConnectError::NoBackend { tried: 2 }
        ));
    }
}
