//! Backend selection: round robin, and on a failed connect the next backend.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::net::TcpStream;

use crate::net::connect_timeout;

#[derive(Debug)]
pub struct Balancer {
    backends: Vec<SocketAddr>,
    next: AtomicUsize,
}

#[derive(Debug, thiserror::Error)]
#[error("no backend reachable ({tried} tried)")]
pub struct NoBackend {
    pub tried: usize,
}

impl Balancer {
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
    pub async fn connect(&self, timeout: Duration) -> Result<(TcpStream, SocketAddr), NoBackend> {
        for addr in self.order() {
            match connect_timeout(addr, None, timeout).await {
                Ok(s) => return Ok((s, addr)),
                Err(e) => tracing::warn!(backend = %addr, error = %e, "backend connect failed"),
            }
        }
        Err(NoBackend {
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
        let (_, chosen) = b.connect(Duration::from_secs(5)).await.unwrap();
        assert_eq!(chosen, live.local_addr().unwrap());
    }

    #[tokio::test]
    async fn all_dead_is_an_error() {
        let dead = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let b = Balancer::new(vec![dead, dead]);
        assert_eq!(
            b.connect(Duration::from_secs(5)).await.unwrap_err().tried,
            2
        );
    }
}
