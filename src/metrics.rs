//! Prometheus metrics: one registry owned by the gateway, typed fields, bounded labels
//! (never a client address, user name or path).

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

#[derive(Debug, Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub sessions_active: IntGauge,
    /// By outcome: `closed`, `backend_unavailable`, `client_error`, `backend_error`, `shutdown`.
    pub sessions_total: IntCounterVec,
    /// By kind: `227`, `229`.
    pub rewrites_total: IntCounterVec,
    /// By reason: `foreign_data_peer`, `lprt_lpsv`, `active_mode`, `line_too_long`, ...
    pub refusals_total: IntCounterVec,
    pub data_ports_in_use: IntGauge,
    pub data_port_exhausted_total: IntCounter,
    /// By kind: `data_connect`, `backend_connect`.
    pub timeouts_total: IntCounterVec,
    /// By direction: `client_to_backend`, `backend_to_client`.
    pub data_bytes_total: IntCounterVec,
}

fn counter_vec(reg: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| unreachable!("metric {name} is statically valid: {e}"));
    register(reg, c.clone());
    c
}

fn register<C: prometheus::core::Collector + 'static>(reg: &Registry, c: C) {
    // Names are unique constants of this module; a clash is a programming error that
    // would show in every test, so it is not propagated.
    if let Err(e) = reg.register(Box::new(c)) {
        unreachable!("duplicate metric registration: {e}");
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help)
                .unwrap_or_else(|e| unreachable!("metric {name} is statically valid: {e}"));
            register(&registry, g.clone());
            g
        };
        let sessions_active = gauge("ftpgate_sessions_active", "Client sessions open now.");
        let data_ports_in_use = gauge(
            "ftpgate_data_ports_in_use",
            "Data ports leased for passive mappings now.",
        );
        let data_port_exhausted_total = IntCounter::new(
            "ftpgate_data_port_exhausted_total",
            "Passive replies answered 425 because every data port was in use.",
        )
        .unwrap_or_else(|e| unreachable!("{e}"));
        register(&registry, data_port_exhausted_total.clone());
        Metrics {
            sessions_active,
            sessions_total: counter_vec(
                &registry,
                "ftpgate_sessions_total",
                "Client sessions ended, by outcome.",
                &["outcome"],
            ),
            rewrites_total: counter_vec(
                &registry,
                "ftpgate_rewrites_total",
                "Control-channel addresses rewritten, by kind.",
                &["kind"],
            ),
            refusals_total: counter_vec(
                &registry,
                "ftpgate_refusals_total",
                "Connections or commands refused, by reason.",
                &["reason"],
            ),
            data_ports_in_use,
            data_port_exhausted_total,
            timeouts_total: counter_vec(
                &registry,
                "ftpgate_timeouts_total",
                "Timeouts that fired, by kind.",
                &["kind"],
            ),
            data_bytes_total: counter_vec(
                &registry,
                "ftpgate_data_bytes_total",
                "Bytes relayed on data connections, by direction.",
                &["direction"],
            ),
            registry,
        }
    }

    pub fn refuse(&self, reason: &'static str) {
        self.refusals_total.with_label_values(&[reason]).inc();
    }

    /// The registry in Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let encoder = prometheus::TextEncoder::new();
        if let Err(e) = encoder.encode_utf8(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "metrics encoding failed");
        }
        out
    }
}
