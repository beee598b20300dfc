//! Backend selection: round robin over the backends known up, and on a failed connect
//! the next backend; backends known down are tried last.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::net::TcpStream;

use crate::metrics::Metrics;
use crate::net::{connect_from, note_exhaustion, LocalResource};

/// Round-robin over the configured backends (`backends:`); ones found down are tried last.
#[derive(Debug)]
pub struct Balancer {
    backends: Vec<SocketAddr>,
    next: AtomicUsize,
}

/// Why a session got no backend connection: the backends (each tried), or ftpgate
/// itself (out of descriptors or buffers: no backend was at fault, none is marked down).
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// Every backend refused or timed out.
    #[error("no backend reachable ({tried} tried)")]
    NoBackend {
        /// How many backends were tried (all of them).
        tried: usize,
    },
    /// ftpgate itself ran out of `resource`; no backend is blamed.
    #[error("local resource exhausted ({resource}): {source}")]
    LocalResource {
        /// Which resource ran out (the `resource` label).
        resource: LocalResource,
        /// The failed socket call's error.
        #[source]
        source: std::io::Error,
    },
}

impl Balancer {
    /// A balancer over `backends`, in configured order; the first session starts at the first.
    pub fn new(backends: Vec<SocketAddr>) -> Self {
        Balancer {
            backends,
            next: AtomicUsize::new(0),
        }
    }

    /// The order in which to try backends for the next session.
    fn order(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        let n = self.backends.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n).map(move |k| self.backends[(start + k) % n])
    }

    /// Connects to the next backend in turn, falling through to the others on failure.
    pub async fn connect(
        &self,
        timeout: Duration,
        metrics: &Metrics,
    ) -> Result<(TcpStream, SocketAddr), ConnectError> {
        // Backends the health checker (or an earlier session) found down go last, so a
        // black-holed backend does not cost every other session a full connect timeout;
        // they are still tried when nothing else answers.
        let is_up = |a: &SocketAddr| {
            metrics
                .backend_up
                .with_label_values(&[&a.to_string()])
                .get()
                != 0
        };
        let (up, down): (Vec<SocketAddr>, Vec<SocketAddr>) = self.order().partition(is_up);
        for addr in up.into_iter().chain(down) {
            let label = addr.to_string();
            let started = std::time::Instant::now();
            match connect_from(addr, None, timeout).await {
                Ok(s) => {
                    metrics
                        .backend_connect_duration_seconds
                        .observe(started.elapsed().as_secs_f64());
                    metrics.backend_up.with_label_values(&[&label]).set(1);
                    return Ok((s, addr));
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
                    metrics.backend_up.with_label_values(&[&label]).set(0);
                    tracing::warn!(backend = %addr, error = %e, "backend connect failed");
                }
            }
        }
        Err(ConnectError::NoBackend {
            tried: self.backends.len(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_visits_every_backend_once_per_session() {
        let addrs: Vec<SocketAddr> = (1..=3)
            .map(|i| format!("10.0.0.{i}:21").parse().unwrap())
            .collect();
        let b = Balancer::new(addrs.clone());
        let first: Vec<_> = b.order().collect();
        let second: Vec<_> = b.order().collect();
        assert_eq!(first, addrs);
        assert_eq!(second, vec![addrs[1], addrs[2], addrs[0]]);
    }

    #[tokio::test]
    async fn falls_through_to_a_live_backend() {
        let live = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dead = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let b = Balancer::new(vec![dead, live.local_addr().unwrap()]);
        let (_, chosen) = b
            .connect(Duration::from_secs(5), &Metrics::new())
            .await
            .unwrap();
        assert_eq!(chosen, live.local_addr().unwrap());
    }

    #[tokio::test]
    async fn backends_known_down_are_tried_last() {
        let live = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let live = live.local_addr().unwrap();
        let dead = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let metrics = Metrics::new();
        metrics
            .backend_up
            .with_label_values(&[&live.to_string()])
            .set(1);
        metrics
            .backend_up
            .with_label_values(&[&dead.to_string()])
            .set(0);
        let b = Balancer::new(vec![dead, live]);
        for _ in 0..4 {
            let (_, chosen) = b.connect(Duration::from_secs(5), &metrics).await.unwrap();
            assert_eq!(chosen, live);
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
        let b = Balancer::new(vec![dead, dead]);
        assert!(matches!(
            b.connect(Duration::from_secs(5), &Metrics::new())
                .await
                .unwrap_err(),
            ConnectError::NoBackend { tried: 2 }
        ));
    }
}
