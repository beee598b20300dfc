//! Wires listeners, the port pool, the balancer and sessions; owns shutdown.
//!
//! [`Gateway::bind`] binds everything first (so errors surface before "ready" and tests
//! can bind port 0 and read the real address), then [`Gateway::serve`] runs until the
//! shutdown token fires and every session has ended.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::balancer::Balancer;
use crate::config::Config;
use crate::dataport::PortPool;
use crate::metrics::Metrics;
use crate::session::{run_session, SessionContext};

/// How long sessions get to say goodbye after shutdown before the process exits anyway.
const DRAIN: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
}

pub struct Gateway {
    listeners: Vec<TcpListener>,
    ctx: Arc<SessionContext>,
}

impl Gateway {
    /// Binds every listener. The config must have been validated.
    pub async fn bind(config: Config, metrics: Arc<Metrics>) -> Result<Gateway, AppError> {
        let mut listeners = Vec::with_capacity(config.listen.len());
        for &addr in &config.listen {
            let l = TcpListener::bind(addr)
                .await
                .map_err(|source| AppError::Bind { addr, source })?;
            listeners.push(l);
        }
        metrics.init_labels(&config.backends);
        let pool = PortPool::new(config.data_ports, &metrics);
        let active_pool = match config.active.ports {
            Some(r) => PortPool::new(r, &metrics),
            None => Arc::clone(&pool),
        };
        let ctx = Arc::new(SessionContext {
            pool,
            active_pool,
            balancer: Balancer::new(config.backends.clone()),
            config: Arc::new(config),
            metrics,
        });
        Ok(Gateway { listeners, ctx })
    }

    /// The bound listener addresses (with real ports when `:0` was asked for).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }

    /// Serves until `shutdown` fires, then waits (bounded) for sessions to end.
    pub async fn serve(self, shutdown: CancellationToken) {
        let tracker = TaskTracker::new();
        info!(listeners = ?self.local_addrs(), backends = ?self.ctx.config.backends, data_ports = %self.ctx.config.data_ports, "ftpgate ready");
        for listener in self.listeners {
            tracker.spawn(accept_loop(
                listener,
                Arc::clone(&self.ctx),
                shutdown.clone(),
                tracker.clone(),
            ));
        }
        shutdown.cancelled().await;
        tracker.close();
        if tokio::time::timeout(DRAIN, tracker.wait()).await.is_err() {
            warn!("sessions still open after drain period; exiting anyway");
        }
        info!("ftpgate stopped");
    }
}

async fn accept_loop(
    listener: TcpListener,
    ctx: Arc<SessionContext>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    tracker.spawn(run_session(stream, peer, Arc::clone(&ctx), shutdown.clone()));
                }
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            () = shutdown.cancelled() => return,
        }
    }
}
