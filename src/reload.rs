//! Configuration reload without dropping anything (`SIGHUP`, `ftpgate reload`,
//! admin `POST /reload`).
//!
//! A reload re-reads the file (flags given at start still override it), validates it
//! as `ftpgate check` does, and swaps a new session-context snapshot in. New sessions
//! take the new snapshot; running sessions keep the `Arc` of the one they started
//! with, so a reload never closes or changes them. An invalid file changes nothing.
//!
//! Listeners and data-port ranges change live: new listeners are bound before the
//! snapshot swap and removed ones close after it ([`crate::listeners`]); a changed
//! `data_ports`/`active.ports` gets a new pool that new sessions lease from, while the
//! old one is retired and its leases come back as their transfers end. A listener that
//! cannot be bound keeps the whole old listener set (the key is logged). The keys still
//! bound to resources made once at start (the admin socket, the runtime, the log
//! format, the relay) — [`plan`] keeps their old values and names each in the log.

use std::sync::{Arc, RwLock};

use tracing::{info, warn};

use crate::balancer::Balancer;
use crate::config::{Config, ConfigErrors, Loaded};
use crate::dataport::PortPool;
use crate::farm::Farm;
use crate::listeners::{ListenerChange, ListenerSet};
use crate::session::SessionContext;

/// Keys whose change needs a restart, with why; their old value stays in force.
const RESTART_KEYS: &[&str] = &[
    "admin.listen",
    "relay",
    "worker_threads",
    "log.format",
    // Slices must not move under running sessions (and peers compute the same ones).
    "cluster",
];

/// What a reload does with a new, valid file.
#[derive(Debug, Clone)]
pub struct ReloadPlan {
    /// The config to swap in: the new file with every restart-only key at its old value.
    pub effective: Config,
    /// Restart-only keys that changed in the file (not applied).
    pub kept: Vec<&'static str>,
}

/// Merges a new config over the running one: everything applies to new sessions
/// except the keys in [`RESTART_KEYS`], which keep their running values.
pub fn plan(old: &Config, new: Config) -> ReloadPlan {
    let mut effective = new;
    let mut kept = Vec::new();
    for &key in RESTART_KEYS {
        let changed = match key {
            "admin.listen" => old.admin.listen != effective.admin.listen,
            "relay" => old.relay != effective.relay,
            "worker_threads" => old.worker_threads != effective.worker_threads,
            "log.format" => old.log.format != effective.log.format,
            "cluster" => old.cluster != effective.cluster,
            _ => false,
        };
        if changed {
            kept.push(key);
        }
    }
    effective.admin.listen = old.admin.listen;
    effective.relay = old.relay;
    effective.worker_threads = old.worker_threads;
    effective.log.format = old.log.format;
    effective.cluster = old.cluster.clone();
    // In cluster mode the range is what the slices cut: it moves with `cluster` only.
    if old.cluster.enabled() && old.data_ports != effective.data_ports {
        kept.push("data_ports");
        effective.data_ports = old.data_ports;
    }
    ReloadPlan { effective, kept }
}

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file did not parse or did not validate; each error names its key.
    #[error("configuration invalid, nothing changed: {0}")]
    Invalid(ConfigErrors),
    /// A certificate or key in `tls:` could not be loaded; the old ones stay.
    #[error("TLS files not loaded, nothing changed: {0}")]
    Tls(String),
    /// No configuration source was given at start (nothing to re-read).
    #[error("no configuration file to reload (start ftpgate with --config)")]
    NoSource,
}

impl ReloadError {
    /// The `ftpgate_config_reload_total{outcome}` label.
    pub fn label(&self) -> &'static str {
        match self {
            ReloadError::Invalid(_) | ReloadError::Tls(_) => "invalid",
            ReloadError::NoSource => "error",
        }
    }
}

/// Re-reads the configuration: the file with the start-time flags on top.
pub type ConfigSource = Box<dyn Fn() -> Result<Loaded, ConfigErrors> + Send + Sync>;

/// Called with the new config after a snapshot was swapped in (readiness, health).
pub type SwapHook = Box<dyn Fn(&SessionContext) + Send + Sync>;

/// Applies a new `log.level` (unless `RUST_LOG` overrides it).
pub type LogLevelSetter = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// The session-context snapshot new sessions take.
#[derive(Debug)]
pub struct Snapshots {
    current: RwLock<Arc<SessionContext>>,
}

impl Snapshots {
    /// Starts with `ctx`.
    pub fn new(ctx: Arc<SessionContext>) -> Self {
        Snapshots {
            current: RwLock::new(ctx),
        }
    }

    /// The snapshot for a session starting now.
    pub fn current(&self) -> Arc<SessionContext> {
        Arc::clone(&self.current.read().unwrap_or_else(|p| p.into_inner()))
    }

    fn swap(&self, ctx: Arc<SessionContext>) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = ctx;
    }
}

/// Everything a reload needs; shared by the signal handler and the admin endpoint.
pub struct Reloader {
    snapshots: Arc<Snapshots>,
    listeners: Arc<ListenerSet>,
    source: Option<ConfigSource>,
    log_level: Option<LogLevelSetter>,
    on_swap: Option<SwapHook>,
    /// Serialises reloads (a SIGHUP and a POST at once).
    lock: std::sync::Mutex<()>,
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader").finish_non_exhaustive()
    }
}

impl Reloader {
    /// A reloader swapping into `snapshots`, reading `source`.
    pub fn new(
        snapshots: Arc<Snapshots>,
        listeners: Arc<ListenerSet>,
        source: Option<ConfigSource>,
        log_level: Option<LogLevelSetter>,
        on_swap: Option<SwapHook>,
    ) -> Self {
        Reloader {
            snapshots,
            listeners,
            source,
            log_level,
            on_swap,
            lock: std::sync::Mutex::new(()),
        }
    }

    /// Reloads, counts the outcome and logs it. Returns the restart-only keys that
    /// changed and were kept.
    pub fn reload(&self) -> Result<Vec<&'static str>, ReloadError> {
        let _one_at_a_time = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let old = self.snapshots.current();
        let result = self.try_reload(&old);
        let metrics = &old.metrics;
        match &result {
            Ok(kept) => {
                metrics.config_reload_total.with_label_values(&["ok"]).inc();
                metrics
                    .config_last_reload_success_timestamp_seconds
                    .set(unix_now());
                for key in kept {
                    warn!(key, "reload: this key cannot change while running; old value kept (restart to apply)");
                }
                info!("configuration reloaded; new sessions use it, running sessions keep theirs");
            }
            Err(e) => {
                metrics
                    .config_reload_total
                    .with_label_values(&[e.label()])
                    .inc();
                match e {
                    ReloadError::Invalid(errors) => {
                        for err in errors.iter() {
                            warn!(error = %err, "reload refused; running configuration unchanged");
                        }
                    }
                    ReloadError::Tls(_) | ReloadError::NoSource => warn!("{e}"),
                }
            }
        }
        result
    }

    fn try_reload(&self, old: &SessionContext) -> Result<Vec<&'static str>, ReloadError> {
        let source = self.source.as_ref().ok_or(ReloadError::NoSource)?;
        let loaded = source().map_err(ReloadError::Invalid)?;
        let mut plan = plan(&old.config, loaded.config);
        let valid = plan
            .effective
            .clone()
            .validate()
            .map_err(ReloadError::Invalid)?;
        let mut config = valid.into_inner();
        for d in &loaded.deprecations {
            warn!("{d}");
        }
        if config.log.level != old.config.log.level {
            if let Some(set) = &self.log_level {
                if let Err(e) = set(&config.log.level) {
                    warn!(error = %e, "reload: log.level not applied");
                }
            }
        }
        // Certificates are re-read too (renewed files apply to new sessions).
        let tls = crate::tls::TlsContexts::load(&config.tls)
            .map_err(|e| ReloadError::Tls(e.to_string()))?;
        if let Some(at) = tls.cert_not_after {
            old.metrics
                .tls_certificate_not_after
                .store(at, std::sync::atomic::Ordering::Relaxed);
        }
        // New listeners bound before anything is swapped; one that cannot be bound keeps
        // the old set (and the old listener keys) and the rest of the reload applies.
        let (listen_addrs, change) = match self.prepare_listeners(old, &mut plan, &mut config)? {
            Some(change) => (change.local_addrs().to_vec(), Some(change)),
            None => (old.listen_addrs.clone(), None),
        };
        // A new farm: members, weights, policy and routes as the file says; names join
        // once the health task's first resolution round has run.
        let farm = Arc::new(Farm::new(
            config.backends.clone(),
            config.balance,
            config.routes.clone(),
            Arc::clone(&old.metrics),
        ));
        let (pool, active_pool) = pools(old, &config);
        let ctx = SessionContext {
            config: Arc::new(config.clone()),
            pool,
            active_pool,
            balancer: Balancer::new(farm),
            listen_addrs,
            metrics: Arc::clone(&old.metrics),
            prelogin: Arc::clone(&old.prelogin),
            admission: Arc::clone(&old.admission),
            drain: old.drain.clone(),
            cluster: old.cluster.clone(),
            tls,
        };
        let ctx = Arc::new(ctx);
        self.snapshots.swap(Arc::clone(&ctx));
        if let Some(change) = change {
            self.listeners.commit(change);
        }
        // Ranges no new session leases from: their free ports leave the gauge.
        let shared = Arc::ptr_eq(&old.pool, &old.active_pool);
        let old_pools = [Some(&old.pool), (!shared).then_some(&old.active_pool)];
        for p in old_pools.into_iter().flatten() {
            if !Arc::ptr_eq(p, &ctx.pool) && !Arc::ptr_eq(p, &ctx.active_pool) {
                info!(range = %p.range(), in_use = p.in_use(), "reload: data-port range retired; its leases end with their transfers");
                p.retire();
            }
        }
        if let Some(hook) = &self.on_swap {
            hook(&ctx);
        }
        Ok(plan.kept)
    }

    /// Binds the listeners the new file adds. `None` when the listener set stays as it
    /// is: unchanged, or a bind failed — then `config` gets the old listener keys back
    /// (validated again) and the keys are reported as kept.
    fn prepare_listeners(
        &self,
        old: &SessionContext,
        plan: &mut ReloadPlan,
        config: &mut Config,
    ) -> Result<Option<ListenerChange>, ReloadError> {
        let changed: Vec<&'static str> = [
            ("listen", old.config.listen != config.listen),
            ("listeners", old.config.listeners != config.listeners),
            ("mode", old.config.mode != config.mode),
        ]
        .into_iter()
        .filter_map(|(k, c)| c.then_some(k))
        .collect();
        if changed.is_empty() {
            return Ok(None);
        }
        match self.listeners.prepare(&config.all_listeners()) {
            Ok(change) => Ok(Some(change)),
            Err(e) => {
                warn!(error = %e, keys = ?changed, "reload: a new listener cannot be bound; the listeners stay as they are");
                plan.effective.listen.clone_from(&old.config.listen);
                plan.effective.listeners.clone_from(&old.config.listeners);
                plan.effective.mode = old.config.mode;
                let valid = plan
                    .effective
                    .clone()
                    .validate()
                    .map_err(ReloadError::Invalid)?;
                *config = valid.into_inner();
                plan.kept.extend(changed);
                Ok(None)
            }
        }
    }

    /// The snapshot new sessions take now.
    pub fn current(&self) -> Arc<SessionContext> {
        self.snapshots.current()
    }
}

/// The pools for a new snapshot: the running ones where the range is unchanged, a new
/// pool where it changed (`active.ports` unset shares the data-port pool).
fn pools(old: &SessionContext, config: &Config) -> (Arc<PortPool>, Arc<PortPool>) {
    let pool = if config.data_ports == old.config.data_ports {
        Arc::clone(&old.pool)
    } else {
        PortPool::new(config.data_ports, &old.metrics)
    };
    let active_pool = match config.active.ports {
        None => Arc::clone(&pool),
        Some(r) if old.config.active.ports == Some(r) => Arc::clone(&old.active_pool),
        Some(r) => PortPool::new(r, &old.metrics),
    };
    (pool, active_pool)
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Config {
        Config {
            listen: vec!["0.0.0.0:21".parse().unwrap()],
            backends: vec!["10.0.0.1:21".parse().unwrap()],
            ..Config::default()
        }
    }

    #[test]
    fn backend_swap_for_a_rolling_update_applies_without_restart_keys() {
        let old = base();
        let mut new = base();
        new.backends = vec!["10.0.0.2:21".parse().unwrap()];
        new.limits.max_sessions = 7;
        new.timeouts.idle = std::time::Duration::from_secs(5);
        let p = plan(&old, new);
        assert!(p.kept.is_empty());
        assert_eq!(p.effective.backends, vec!["10.0.0.2:21".parse().unwrap()]);
        assert_eq!(p.effective.limits.max_sessions, 7);
    }

    #[test]
    fn listeners_and_port_ranges_are_live_the_admin_socket_is_kept() {
        let old = base();
        let mut new = base();
        new.listen = vec!["0.0.0.0:2121".parse().unwrap()];
        new.data_ports = "40000-40009".parse().unwrap();
        new.admin.listen = Some("127.0.0.1:9100".parse().unwrap());
        new.log.level = "debug".into();
        let p = plan(&old, new);
        assert_eq!(p.kept, vec!["admin.listen"]);
        assert_eq!(p.effective.listen, vec!["0.0.0.0:2121".parse().unwrap()]);
        assert_eq!(p.effective.data_ports, "40000-40009".parse().unwrap());
        assert_eq!(p.effective.admin.listen, None);
        assert_eq!(p.effective.log.level, "debug", "log level is live");
    }
}
