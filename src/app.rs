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
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::admin::{self, AdminState};
use crate::balancer::Balancer;
use crate::cluster::forward::{ClusterError, ClusterListeners, ClusterNode, ForwardSettings};
use crate::config::ValidConfig;
use crate::dataport::PortPool;
use crate::farm::{resolve, Farm};
use crate::health;
use crate::listeners::{ListenerSet, Serving};
use crate::metrics::Metrics;
use crate::reload::{ConfigSource, LogLevelSetter, Reloader, Snapshots};
use crate::session::limits::PreloginSlots;
use crate::session::SessionContext;

/// How long sessions get to say goodbye after a hard stop before the process exits anyway.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// How often the remaining-sessions gauge is refreshed while draining.
const DRAIN_TICK: Duration = Duration::from_secs(1);

/// How a gateway is told to stop.
#[derive(Debug, Clone, Default)]
pub struct StopSignals {
    /// Graceful: close listeners, let sessions reach a command boundary, bounded by
    /// `drain_timeout` (`SIGTERM`, `SIGINT`).
    pub drain: CancellationToken,
    /// Immediate: every session gets `421` now (a second signal, or the drain timeout).
    pub stop: CancellationToken,
}

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
    /// Cluster mode could not start (ordinal, slices, or a listener).
    #[error("cluster: {0}")]
    Cluster(#[from] ClusterError),
}

/// The running gateway: its bound listeners and what every session shares.
pub struct Gateway {
    /// The FTP listeners (a reload adds and removes them).
    listeners: Arc<ListenerSet>,
    ctx: Arc<SessionContext>,
    /// What new sessions take; swapped by a reload.
    snapshots: Arc<Snapshots>,
    /// Wakes the health checker when a reload changed the backends.
    reloaded: Arc<Notify>,
    /// The `/metrics` `/healthz` `/readyz` listener, when `admin.listen` is set.
    admin: Option<TcpListener>,
    admin_state: Arc<AdminState>,
    drain_timeout: Duration,
    /// Cluster mode: the other slices' ports and the peer listener, bound.
    cluster: Option<ClusterListeners>,
}

impl Gateway {
    /// Binds every listener.
    pub async fn bind(config: ValidConfig, metrics: Arc<Metrics>) -> Result<Gateway, AppError> {
        let listeners = ListenerSet::bind(&config.all_listeners()).map_err(|e| AppError::Bind {
            addr: e.addr,
            source: e.source,
        })?;
        let listen_addrs = listeners.local_addrs();
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
        // Cluster mode: this replica announces and leases only its own slice; the
        // other slices' ports are bound here for forwarding.
        let (cluster, cluster_listeners) = if config.cluster.enabled() {
            let host = crate::cluster::hostname();
            let node = ClusterNode::new(
                &config.cluster,
                config.data_ports,
                host.as_deref(),
                Arc::clone(&metrics),
            )?;
            let bound = node.bind()?;
            if config.public_address.is_empty() {
                warn!("cluster mode without public_address: 227 replies name this replica's own address, which clients behind the balancer cannot reach (EPSV is unaffected)");
            }
            (Some(node), Some(bound))
        } else {
            (None, None)
        };
        let own_ports = cluster
            .as_ref()
            .map_or(config.data_ports, |c| c.own_slice());
        let pool = PortPool::new(own_ports, &metrics);
        let active_pool = match config.active.ports {
            Some(r) => PortPool::new(r, &metrics),
            None => Arc::clone(&pool),
        };
        let drain_timeout = config.drain_timeout;
        let ctx = Arc::new(SessionContext {
            pool,
            active_pool,
            balancer: Balancer::new(farm),
            listen_addrs,
            config: Arc::new(config.into_inner()),
            prelogin: Arc::new(PreloginSlots::new(metrics.sessions_prelogin.clone())),
            admission: Arc::default(),
            drain: CancellationToken::new(),
            metrics,
            tls,
            cluster,
        });
        ctx.metrics
            .config_last_reload_success_timestamp_seconds
            .set(crate::reload::unix_now());
        Ok(Gateway {
            listeners: Arc::new(listeners),
            snapshots: Arc::new(Snapshots::new(Arc::clone(&ctx))),
            reloaded: Arc::new(Notify::new()),
            ctx,
            admin,
            admin_state,
            drain_timeout,
            cluster: cluster_listeners,
        })
    }

    /// The bound `cluster.listen` address (with the real port when `:0` was asked for).
    pub fn cluster_addr(&self) -> Option<SocketAddr> {
        self.cluster.as_ref().and_then(ClusterListeners::peer_addr)
    }

    /// The bound listener addresses (with real ports when `:0` was asked for).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners.local_addrs()
    }

    /// The listener set, which outlives [`Self::serve_until`]'s start: its
    /// addresses after a reload.
    pub fn listener_set(&self) -> Arc<ListenerSet> {
        Arc::clone(&self.listeners)
    }

    /// The reloader for this gateway (`SIGHUP`, `POST /reload`): re-reads `source`
    /// and swaps a new snapshot in for new sessions. Call before serving.
    pub fn reloader(
        &self,
        source: Option<ConfigSource>,
        log_level: Option<LogLevelSetter>,
    ) -> Arc<Reloader> {
        let admin_state = Arc::clone(&self.admin_state);
        let reloaded = Arc::clone(&self.reloaded);
        let on_swap: crate::reload::SwapHook = Box::new(move |ctx: &SessionContext| {
            admin_state.set_farm(Arc::clone(&ctx.balancer.farm));
            // A stored permit: a reload between two waits is not lost.
            reloaded.notify_one();
        });
        let r = Arc::new(Reloader::new(
            Arc::clone(&self.snapshots),
            Arc::clone(&self.listeners),
            source,
            log_level,
            Some(on_swap),
        ));
        self.admin_state.set_reloader(Arc::clone(&r));
        r
    }

    /// The bound admin address (with the real port when `:0` was asked for), if any.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Serves until `shutdown` fires, then closes every session at once (`421`) and
    /// waits (bounded) for them to end.
    pub async fn serve(self, shutdown: CancellationToken) {
        self.serve_until(StopSignals {
            drain: shutdown.clone(),
            stop: shutdown,
        })
        .await;
    }

    /// Serves until `signals.drain` (graceful) or `signals.stop` (immediate) fires.
    /// Draining closes the listeners at once, makes `/readyz` answer `503 draining`,
    /// lets each session finish what it started, and after `drain_timeout` closes what
    /// is left. Returns when the last session has ended.
    pub async fn serve_until(self, signals: StopSignals) {
        let sessions = TaskTracker::new();
        // Health checks and the admin endpoint outlive the listeners: `/readyz` must
        // say `draining` while sessions finish.
        let infra = CancellationToken::new();
        let _stop_infra = infra.clone().drop_guard();
        tokio::spawn(check_health(
            Arc::clone(&self.snapshots),
            Arc::clone(&self.reloaded),
            infra.clone(),
        ));
        let farm = Arc::clone(&self.ctx.balancer.farm);
        let backends: Vec<String> = farm.specs().iter().map(ToString::to_string).collect();
        info!(listeners = ?self.local_addrs(), ?backends, balance = farm.policy().label(), data_ports = %self.ctx.config.data_ports, relay = ?crate::relay::relay_mode(), "ftpgate ready");
        if let Some(admin) = self.admin {
            if let Ok(addr) = admin.local_addr() {
                info!(%addr, "admin endpoint serving /metrics, /healthz, /readyz");
            }
            tokio::spawn(admin::run(
                admin,
                Arc::clone(&self.admin_state),
                infra.clone(),
            ));
        }
        // Forwarding outlives the FTP listeners: while this replica drains, peers
        // still forward its sessions' data connections to it, and balancers may still
        // send it data connections for other replicas until they see `/readyz` fail.
        let forwards = TaskTracker::new();
        let cluster_stop = CancellationToken::new();
        if let (Some(node), Some(listeners)) = (self.ctx.cluster.clone(), self.cluster) {
            let settings = ForwardSettings {
                proxy_protocol: self.ctx.config.proxy_protocol.clone(),
                data_idle: self.ctx.config.timeouts.data_idle,
            };
            tokio::spawn(node.run(listeners, settings, cluster_stop.clone(), forwards.clone()));
        }
        let acceptors = TaskTracker::new();
        self.listeners.serve(Serving {
            snapshots: Arc::clone(&self.snapshots),
            stop: signals.stop.clone(),
            sessions: sessions.clone(),
            acceptors: acceptors.clone(),
        });
        acceptors.close();
        self.admin_state.set_serving(true);
        tokio::select! {
            () = signals.drain.cancelled() => {}
            () = signals.stop.cancelled() => {}
        }
        // Readiness and the gauge first, so anyone who sees the listeners closed sees
        // them too; then the listeners: a balancer's next connect goes elsewhere.
        let metrics = &self.ctx.metrics;
        metrics.draining.set(1);
        self.admin_state.set_draining();
        self.admin_state.set_serving(false);
        self.listeners.close_all();
        acceptors.wait().await;
        self.ctx.drain.cancel();
        sessions.close();
        if !signals.stop.is_cancelled() {
            info!(sessions = sessions.len(), timeout = ?self.drain_timeout, "draining: listeners closed; sessions finish what they started");
        }
        let deadline = tokio::time::sleep(self.drain_timeout);
        tokio::pin!(deadline);
        loop {
            metrics.drain_sessions_remaining.set(sessions.len() as i64);
            tokio::select! {
                () = sessions.wait() => break,
                () = &mut deadline, if !signals.stop.is_cancelled() => {
                    let left = sessions.len();
                    metrics.drain_sessions_closed_total.inc_by(left as u64);
                    warn!(sessions = left, "drain timeout: closing the sessions left");
                    signals.stop.cancel();
                }
                () = signals.stop.cancelled() => {
                    if tokio::time::timeout(STOP_GRACE, sessions.wait()).await.is_err() {
                        warn!("sessions still open after stop; exiting anyway");
                    }
                    break;
                }
                () = tokio::time::sleep(DRAIN_TICK) => {}
            }
        }
        metrics.drain_sessions_remaining.set(0);
        // Then the connections relayed for peers' sessions, within what is left of the
        // drain timeout (a stop gives them the short grace only).
        cluster_stop.cancel();
        forwards.close();
        if !forwards.is_empty() {
            info!(
                forwards = forwards.len(),
                "waiting for data connections forwarded for peers"
            );
            let bound = async {
                if signals.stop.is_cancelled() {
                    tokio::time::sleep(STOP_GRACE).await;
                } else {
                    (&mut deadline).await;
                }
            };
            tokio::select! {
                () = forwards.wait() => {}
                () = bound => warn!(forwards = forwards.len(), "forwarded data connections still open; exiting anyway"),
            }
        }
        info!("ftpgate stopped");
    }
}

/// Health checks for the current snapshot's backends, restarted when a reload
/// swaps a new snapshot in.
async fn check_health(snapshots: Arc<Snapshots>, reloaded: Arc<Notify>, stop: CancellationToken) {
    let mut first = true;
    loop {
        let ctx = snapshots.current();
        let farm = Arc::clone(&ctx.balancer.farm);
        let round = stop.child_token();
        tokio::spawn(health::run(
            Arc::clone(&farm),
            ctx.config.health.clone(),
            ctx.config.timeouts.backend_connect,
            ctx.config.backend_proxy_protocol,
            Arc::clone(&ctx.metrics),
            round.clone(),
        ));
        let (interval, resolved_at_start) = (ctx.config.backend_resolve_interval, first);
        let names = round.clone();
        tokio::spawn(async move {
            // At start `Gateway::bind` resolved the names before "ready"; a reloaded
            // farm resolves its names now (its addresses are members at once).
            if !resolved_at_start {
                tokio::select! {
                    () = resolve::resolve_once(&farm) => {}
                    () = names.cancelled() => return,
                }
            }
            resolve::run(farm, interval, names).await;
        });
        first = false;
        tokio::select! {
            () = reloaded.notified() => round.cancel(),
            () = stop.cancelled() => return,
        }
    }
}
