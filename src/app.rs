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

use crate::admin::{self, AdminState};
use crate::balancer::Balancer;
use crate::config::{ListenerMode, ListenerTls, ValidConfig};
use crate::dataport::PortPool;
use crate::farm::{resolve, Farm};
use crate::health;
use crate::metrics::Metrics;
use crate::net::AcceptBackoff;
use crate::session::limits::PreloginSlots;
use crate::session::{run_session, SessionContext};

/// Connections the kernel queues per FTP listener while ftpgate is busy accepting.
const CONTROL_BACKLOG: i32 = 1024;

/// How long sessions get to say goodbye after shutdown before the process exits anyway.
const DRAIN: Duration = Duration::from_secs(5);

/// Why the gateway could not start: a listener failed to bind.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// An FTP listener could not bind.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The FTP listener's address (`listeners[].listen`).
        addr: SocketAddr,
        /// The bind or listen error.
        source: io::Error,
    },
    /// The admin listener (metrics, health) could not bind.
    #[error("cannot listen on {addr} for the admin endpoint (metrics): {source}")]
    AdminBind {
        /// The admin address (`admin.listen`).
        addr: SocketAddr,
        /// The bind or listen error.
        source: io::Error,
    },
    /// A certificate, key or CA file in `tls:` could not be used.
    #[error("TLS: {0}")]
    Tls(#[from] crate::tls::TlsSetupError),
}

/// The running gateway: its bound listeners and what every session shares.
pub struct Gateway {
    listeners: Vec<(TcpListener, ListenerMode, ListenerTls)>,
    ctx: Arc<SessionContext>,
    /// The `/metrics` `/healthz` `/readyz` listener, when `admin.listen` is set.
    admin: Option<TcpListener>,
    admin_state: Arc<AdminState>,
}

impl Gateway {
    /// Binds every listener.
    pub async fn bind(config: ValidConfig, metrics: Arc<Metrics>) -> Result<Gateway, AppError> {
        let wanted = config.all_listeners();
        let mut listeners = Vec::with_capacity(wanted.len());
        for l in &wanted {
            let addr = l.listen;
            let bound = crate::net::bind_listener(addr, l.tproxy, CONTROL_BACKLOG)
                .map_err(|source| AppError::Bind { addr, source })?;
            listeners.push((bound, l.mode, l.tls));
        }
        let listen_addrs = listeners
            .iter()
            .filter_map(|(l, _, _)| l.local_addr().ok())
            .collect();
        // Bound with the FTP listeners so a taken admin port fails startup too.
        let admin = match config.admin.listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| AppError::AdminBind { addr, source })?,
            ),
            None => None,
        };
        let farm = Arc::new(Farm::new(
            config.backends.clone(),
            config.balance,
            config.routes.clone(),
            Arc::clone(&metrics),
        ));
        // Names resolve before "ready"; one that does not yet is logged and joins at
        // the next round.
        resolve::resolve_once(&farm).await;
        let admin_state = Arc::new(AdminState::new(Arc::clone(&metrics), Arc::clone(&farm)));
        metrics.init_labels(&[]);
        let tls = crate::tls::TlsContexts::load(&config.tls)?;
        if let Some(at) = tls.cert_not_after {
            metrics
                .tls_certificate_not_after
                .store(at, std::sync::atomic::Ordering::Relaxed);
            metrics
                .tls_certificate_expiry_seconds
                .set(at - crate::tls::unix_now());
        }
        if config.tls.backend_insecure {
            tracing::warn!("tls.backend_insecure: backend certificates are NOT verified; anyone on the path to the backends can read and change FTPS sessions");
        }
        let pool = PortPool::new(config.data_ports, &metrics);
        let active_pool = match config.active.ports {
            Some(r) => PortPool::new(r, &metrics),
            None => Arc::clone(&pool),
        };
        let ctx = Arc::new(SessionContext {
            pool,
            active_pool,
            balancer: Balancer::new(farm),
            listen_addrs,
            config: Arc::new(config.into_inner()),
            prelogin: PreloginSlots::new(metrics.sessions_prelogin.clone()),
            metrics,
            tls,
        });
        Ok(Gateway {
            listeners,
            ctx,
            admin,
            admin_state,
        })
    }

    /// The bound listener addresses (with real ports when `:0` was asked for).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|(l, _, _)| l.local_addr().ok())
            .collect()
    }

    /// The bound admin address (with the real port when `:0` was asked for), if any.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Serves until `shutdown` fires, then waits (bounded) for sessions to end.
    pub async fn serve(self, shutdown: CancellationToken) {
        let tracker = TaskTracker::new();
        let farm = Arc::clone(&self.ctx.balancer.farm);
        tracker.spawn(health::run(
            Arc::clone(&farm),
            self.ctx.config.health.clone(),
            self.ctx.config.timeouts.backend_connect,
            self.ctx.config.backend_proxy_protocol,
            Arc::clone(&self.ctx.metrics),
            shutdown.clone(),
        ));
        tracker.spawn(resolve::run(
            Arc::clone(&farm),
            self.ctx.config.backend_resolve_interval,
            shutdown.clone(),
        ));
        let backends: Vec<String> = farm.specs().iter().map(ToString::to_string).collect();
        info!(listeners = ?self.local_addrs(), ?backends, balance = farm.policy().label(), data_ports = %self.ctx.config.data_ports, relay = ?crate::relay::relay_mode(), "ftpgate ready");
        if let Some(admin) = self.admin {
            if let Ok(addr) = admin.local_addr() {
                info!(%addr, "admin endpoint serving /metrics, /healthz, /readyz");
            }
            tracker.spawn(admin::run(
                admin,
                Arc::clone(&self.admin_state),
                shutdown.clone(),
            ));
        }
        for (listener, mode, tls) in self.listeners {
            tracker.spawn(accept_loop(
                listener,
                mode,
                tls,
                Arc::clone(&self.ctx),
                shutdown.clone(),
                tracker.clone(),
            ));
        }
        self.admin_state.set_serving(true);
        shutdown.cancelled().await;
        self.admin_state.set_serving(false);
        tracker.close();
        if tokio::time::timeout(DRAIN, tracker.wait()).await.is_err() {
            warn!("sessions still open after drain period; exiting anyway");
        }
        info!("ftpgate stopped");
    }
}

async fn accept_loop(
    listener: TcpListener,
    mode: ListenerMode,
    tls: ListenerTls,
    ctx: Arc<SessionContext>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let mut backoff = AcceptBackoff::default();
    loop {
        let delay = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    backoff.reset();
                    tracker.spawn(run_session(stream, peer, mode, tls, Arc::clone(&ctx), shutdown.clone()));
                    continue;
                }
                Err(e) => backoff.after_error(&e, &ctx.metrics, "accept"),
            },
            () = shutdown.cancelled() => return,
        };
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = shutdown.cancelled() => return,
        }
    }
}
