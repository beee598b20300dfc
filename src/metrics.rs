//! Prometheus metrics: one registry owned by the gateway, typed fields, bounded labels
//! (never a client address, user name or path). Backend labels are configured
//! addresses, so bounded by the config.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

/// Every ftpgate metric (all named `ftpgate_*`), registered in [`Metrics::registry`].
#[derive(Debug, Clone)]
pub struct Metrics {
    /// The registry `/metrics` encodes; holds every field below.
    pub registry: Registry,
    /// `ftpgate_sessions_active`: client sessions open now.
    pub sessions_active: IntGauge,
    /// Sessions open and not yet logged in (capped by `limits.max_prelogin_sessions`).
    pub sessions_prelogin: IntGauge,
    /// By outcome: see [`crate::session::Outcome::label`].
    pub sessions_total: IntCounterVec,
    /// By verb: the verbs ftpgate knows, else `OTHER`.
    pub commands_total: IntCounterVec,
    /// By reply code as sent to the client (swallowed replies are not counted).
    pub replies_total: IntCounterVec,
    /// By mode (`passive`, `active`) and direction (`download`, `upload`, `listing`).
    pub data_connections_total: IntCounterVec,
    /// By direction: `client_to_backend`, `backend_to_client`.
    pub data_bytes_total: IntCounterVec,
    /// `ftpgate_data_ports_in_use`: data ports leased now, all pools together.
    pub data_ports_in_use: IntGauge,
    /// `ftpgate_data_ports_free`: data ports free now, all pools together (not those of
    /// a range a reload retired: new sessions no longer lease there).
    pub data_ports_free: IntGauge,
    /// `ftpgate_data_port_exhausted_total`: data-port requests refused because every port
    /// was in use.
    pub data_port_exhausted_total: IntCounter,
    /// By kind: see [`RewriteKind`].
    pub rewrites_total: IntCounterVec,
    /// `ftpgate_keepalive_noops_total`: NOOPs sent to backends to keep idle control
    /// connections alive (`keepalive.noop_interval`).
    pub keepalive_noops_total: IntCounter,
    /// By reason: see [`Refusal`].
    pub refusals_total: IntCounterVec,
    /// By kind: see [`TimeoutKind`].
    pub timeouts_total: IntCounterVec,
    /// By backend: 1 when its last health check connected.
    pub backend_up: IntGaugeVec,
    /// `ftpgate_backend_sessions_active{backend}`: sessions open now, by backend address.
    pub backend_sessions_active: IntGaugeVec,
    /// `ftpgate_backend_connect_errors_total{backend}`: failed control connections to a
    /// backend.
    pub backend_connect_errors_total: IntCounterVec,
    /// By member: 1 while its backend entry says `drain: true`.
    pub backend_draining: IntGaugeVec,
    /// By configured backend (name or address as written): members it resolves to now.
    pub backend_members: IntGaugeVec,
    /// By configured backend: lookups that failed (its last members were kept).
    pub backend_resolve_failures_total: IntCounterVec,
    /// By policy and member: sessions the balancer placed (the policy's distribution).
    pub balancer_picks_total: IntCounterVec,
    /// By member and result (`pass`, `fail`): health checks run.
    pub health_checks_total: IntCounterVec,
    /// By port (`control`, `data`) and result (`accepted`, `malformed`, `timeout`,
    /// `closed`, `mismatch`): PROXY protocol headers from trusted balancers.
    pub proxy_headers_total: IntCounterVec,
    /// By direction (`download`, `upload`, `listing`).
    pub transfer_duration_seconds: HistogramVec,
    /// `ftpgate_backend_connect_duration_seconds`: time to establish a control connection
    /// to a backend.
    pub backend_connect_duration_seconds: Histogram,
    /// Time from a backend reply's bytes arriving to their write to the client finishing.
    pub reply_added_latency_seconds: Histogram,
    /// By resource (`process_fds`, `system_fds`, `memory`): socket calls that failed
    /// because ftpgate itself ran out (accepts, backend and data connects).
    pub local_resource_exhausted_total: IntCounterVec,
    /// By reason (`per_source_limit`, `global_limit`, `first_byte_timeout`): admin
    /// connections closed without an answer.
    pub admin_connections_refused_total: IntCounterVec,
    /// 1 while the gateway drains (after `SIGTERM`/`SIGINT`), else 0.
    pub draining: IntGauge,
    /// Sessions still open while draining (0 when not draining).
    pub drain_sessions_remaining: IntGauge,
    /// Sessions still open at the drain timeout, closed by ftpgate.
    pub drain_sessions_closed_total: IntCounter,
    /// By outcome (`ok`, `invalid`, `error`): configuration reloads.
    pub config_reload_total: IntCounterVec,
    /// Unix time of the last successful configuration load (start or reload).
    pub config_last_reload_success_timestamp_seconds: IntGauge,
    /// By side (`client`, `backend`), outcome (`full`, `resumed`, `failed`) and
    /// protocol version (`TLSv1_3`, `TLSv1_2`, `none` when failed).
    pub tls_handshakes_total: IntCounterVec,
    /// By action (`complete`, `abort`): client TLS uploads that ended without
    /// `close_notify` (`tls.unclean_client_eof`).
    pub tls_unclean_eof_total: IntCounterVec,
    /// Seconds until the client-facing certificate expires (negative: expired).
    pub tls_certificate_expiry_seconds: IntGauge,
    /// Unix time the client-facing certificate expires (0: none); the expiry gauge is
    /// recomputed from it at every scrape, so it counts down on an idle gateway too.
    pub tls_certificate_not_after: std::sync::Arc<std::sync::atomic::AtomicI64>,
    /// Transparent sessions whose control connection became an opaque relay after
    /// `AUTH TLS`.
    pub tls_passthrough_total: IntCounter,
    /// `ftpgate_cluster_*`: scale-out forwarding (see [`crate::cluster`]).
    pub cluster: crate::cluster::ClusterMetrics,
}

/// Registers `c` in `reg` (also used by [`crate::cluster::ClusterMetrics`]).
pub(crate) fn register<C: prometheus::core::Collector + Clone + 'static>(
    reg: &Registry,
    c: C,
) -> C {
    // Names are constants of this module; a clash is a programming error that every
    // test would show, so it is not propagated.
    if let Err(e) = reg.register(Box::new(c.clone())) {
        unreachable!("metric registration: {e}");
    }
    c
}

/// A static metric definition's result (also used by [`crate::cluster::ClusterMetrics`]).
pub(crate) fn valid<T>(r: prometheus::Result<T>) -> T {
    r.unwrap_or_else(|e| unreachable!("metric definitions are static and valid: {e}"))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every metric registered and label values pre-created at 0.
    pub fn new() -> Self {
        let r = Registry::new();
        let gauge = |n: &str, h: &str| register(&r, valid(IntGauge::new(n, h)));
        let counter = |n: &str, h: &str| register(&r, valid(IntCounter::new(n, h)));
        let counters = |n: &str, h: &str, l: &[&str]| {
            register(&r, valid(IntCounterVec::new(Opts::new(n, h), l)))
        };
        let gauges = |n: &str, h: &str, l: &[&str]| {
            register(&r, valid(IntGaugeVec::new(Opts::new(n, h), l)))
        };
        // Transfers run from milliseconds (a listing) to hours (a multi-gigabyte file).
        let transfer_buckets = vec![
            0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14400.0,
        ];
        let fast_buckets = vec![
            0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.0025, 0.005, 0.01,
            0.05, 0.25, 1.0,
        ];
        let connect_buckets = vec![0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0];
        Metrics {
            sessions_active: gauge("ftpgate_sessions_active", "Client sessions open now."),
            sessions_prelogin: gauge(
                "ftpgate_sessions_prelogin",
                "Client sessions open and not yet logged in.",
            ),
            sessions_total: counters(
                "ftpgate_sessions_total",
                "Client sessions ended, by outcome.",
                &["outcome"],
            ),
            commands_total: counters(
                "ftpgate_commands_total",
                "Client commands received, by verb.",
                &["verb"],
            ),
            replies_total: counters(
                "ftpgate_replies_total",
                "Replies sent to clients, by code.",
                &["code"],
            ),
            data_connections_total: counters(
                "ftpgate_data_connections_total",
                "Data connections relayed, by mode and direction.",
                &["mode", "direction"],
            ),
            data_bytes_total: counters(
                "ftpgate_data_bytes_total",
                "Bytes relayed on data connections, by direction.",
                &["direction"],
            ),
            data_ports_in_use: gauge(
                "ftpgate_data_ports_in_use",
                "Data ports leased now.",
            ),
            data_ports_free: gauge("ftpgate_data_ports_free", "Data ports free now."),
            data_port_exhausted_total: counter(
                "ftpgate_data_port_exhausted_total",
                "Data-port requests refused because every port was in use.",
            ),
            rewrites_total: counters(
                "ftpgate_rewrites_total",
                "Control-channel addresses rewritten, by kind.",
                &["kind"],
            ),
            keepalive_noops_total: counter(
                "ftpgate_keepalive_noops_total",
                "NOOPs sent to backends to keep idle control connections alive.",
            ),
            refusals_total: counters(
                "ftpgate_refusals_total",
                "Connections or commands refused, by reason.",
                &["reason"],
            ),
            timeouts_total: counters(
                "ftpgate_timeouts_total",
                "Timeouts that fired, by kind.",
                &["kind"],
            ),
            backend_up: gauges(
                "ftpgate_backend_up",
                "1 when the backend passed its health check (or accepted the last session), else 0.",
                &["backend"],
            ),
            backend_sessions_active: gauges(
                "ftpgate_backend_sessions_active",
                "Sessions open now, by backend.",
                &["backend"],
            ),
            backend_connect_errors_total: counters(
                "ftpgate_backend_connect_errors_total",
                "Failed control connections to a backend.",
                &["backend"],
            ),
            backend_draining: gauges(
                "ftpgate_backend_draining",
                "1 when the backend takes no new sessions (drain: true).",
                &["backend"],
            ),
            backend_members: gauges(
                "ftpgate_backend_members",
                "Members a configured backend resolves to now.",
                &["backend"],
            ),
            backend_resolve_failures_total: counters(
                "ftpgate_backend_resolve_failures_total",
                "Failed lookups of a backend name (its last members were kept).",
                &["backend"],
            ),
            balancer_picks_total: counters(
                "ftpgate_balancer_picks_total",
                "Sessions placed on a backend, by policy.",
                &["policy", "backend"],
            ),
            health_checks_total: counters(
                "ftpgate_health_checks_total",
                "Backend health checks run, by result (pass, fail).",
                &["backend", "result"],
            ),
            proxy_headers_total: counters(
                "ftpgate_proxy_headers_total",
                "PROXY protocol headers read from trusted sources, by port and result.",
                &["port", "result"],
            ),
            transfer_duration_seconds: register(
                &r,
                valid(HistogramVec::new(
                    HistogramOpts::new(
                        "ftpgate_transfer_duration_seconds",
                        "Data transfer duration, by direction.",
                    )
                    .buckets(transfer_buckets),
                    &["direction"],
                )),
            ),
            backend_connect_duration_seconds: register(
                &r,
                valid(Histogram::with_opts(
                    HistogramOpts::new(
                        "ftpgate_backend_connect_duration_seconds",
                        "Time to establish a control connection to a backend.",
                    )
                    .buckets(connect_buckets),
                )),
            ),
            reply_added_latency_seconds: register(
                &r,
                valid(Histogram::with_opts(
                    HistogramOpts::new(
                        "ftpgate_reply_added_latency_seconds",
                        "Latency ftpgate adds to control replies (read from backend to written to client).",
                    )
                    .buckets(fast_buckets),
                )),
            ),
            tls_handshakes_total: counters(
                "ftpgate_tls_handshakes_total",
                "TLS handshakes (control and data), by side, outcome and protocol version.",
                &["side", "outcome", "version"],
            ),
            tls_unclean_eof_total: counters(
                "ftpgate_tls_unclean_eof_total",
                "Client TLS uploads ended without close_notify, by the action taken.",
                &["action"],
            ),
            tls_passthrough_total: counter(
                "ftpgate_tls_passthrough_total",
                "Transparent sessions relayed opaquely after AUTH TLS (no certificate for the server).",
            ),
            tls_certificate_not_after: std::sync::Arc::default(),
            cluster: crate::cluster::ClusterMetrics::register(&r),
            tls_certificate_expiry_seconds: gauge(
                "ftpgate_tls_certificate_expiry_seconds",
                "Seconds until the certificate presented to clients expires.",
            ),
            local_resource_exhausted_total: counters(
                "ftpgate_local_resource_exhausted_total",
                "Socket operations that failed because ftpgate ran out of a local resource, by resource.",
                &["resource"],
            ),
            admin_connections_refused_total: counters(
                "ftpgate_admin_connections_refused_total",
                "Admin (metrics/health) connections closed without an answer, by reason.",
                &["reason"],
            ),
            draining: gauge(
                "ftpgate_draining",
                "1 while ftpgate drains (no new sessions; running ones finish), else 0.",
            ),
            drain_sessions_remaining: gauge(
                "ftpgate_drain_sessions_remaining",
                "Sessions still open while draining.",
            ),
            drain_sessions_closed_total: counter(
                "ftpgate_drain_sessions_closed_total",
                "Sessions still open at the drain timeout and closed by ftpgate.",
            ),
            config_reload_total: counters(
                "ftpgate_config_reload_total",
                "Configuration reloads, by outcome (ok, invalid, error).",
                &["outcome"],
            ),
            config_last_reload_success_timestamp_seconds: gauge(
                "ftpgate_config_last_reload_success_timestamp_seconds",
                "Unix time of the last successful configuration load (start or reload).",
            ),
            registry: r,
        }
    }

    /// A command or connection ftpgate refused.
    pub fn refuse(&self, reason: Refusal) {
        self.refusals_total
            .with_label_values(&[reason.label()])
            .inc();
    }

    /// A timeout that fired.
    pub fn timeout(&self, kind: TimeoutKind) {
        self.timeouts_total.with_label_values(&[kind.label()]).inc();
    }

    /// An address ftpgate rewrote in a reply or command.
    pub fn rewrite(&self, kind: RewriteKind) {
        self.rewrites_total.with_label_values(&[kind.label()]).inc();
    }

    /// A reply sent to a client, by code.
    pub fn reply(&self, code: u16) {
        self.replies_total
            .with_label_values(&[code_label(code)])
            .inc();
    }

    /// A command received from a client.
    pub fn command(&self, verb: crate::protocol::command::Verb) {
        self.commands_total
            .with_label_values(&[verb.as_str()])
            .inc();
    }

    /// A session ended.
    pub fn session_ended(&self, outcome: crate::session::Outcome) {
        self.sessions_total
            .with_label_values(&[outcome.label()])
            .inc();
    }

    /// Pre-creates the per-backend series of a member (at start, or when a name
    /// resolves to a new address).
    pub fn init_backend(&self, b: std::net::SocketAddr) {
        let b = b.to_string();
        self.backend_up.with_label_values(&[&b]);
        self.backend_sessions_active.with_label_values(&[&b]);
        self.backend_connect_errors_total.with_label_values(&[&b]);
        self.backend_draining.with_label_values(&[&b]);
        for r in ["pass", "fail"] {
            self.health_checks_total.with_label_values(&[&b, r]);
        }
    }

    /// A TLS handshake finished (`negotiated`) or failed (`None`).
    pub fn tls_handshake(&self, side: &str, negotiated: Option<crate::tls::Negotiated>) {
        let (outcome, version) = match negotiated {
            Some(n) if n.resumed => ("resumed", n.version),
            Some(n) => ("full", n.version),
            None => ("failed", "none"),
        };
        self.tls_handshakes_total
            .with_label_values(&[side, outcome, version])
            .inc();
    }

    /// Pre-creates every label value the dashboards expect, so series exist (at 0)
    /// before the first event: `rate()` and `increase()` are right from the first
    /// scrape, and every family is visible in `/metrics` at once.
    pub fn init_labels(&self, backends: &[std::net::SocketAddr]) {
        for &b in backends {
            self.init_backend(b);
        }
        for d in ["client_to_backend", "backend_to_client"] {
            self.data_bytes_total.with_label_values(&[d]);
        }
        for port in ["control", "data"] {
            for result in ["accepted", "malformed", "timeout", "closed"] {
                self.proxy_headers_total.with_label_values(&[port, result]);
            }
        }
        for k in RewriteKind::ALL {
            self.rewrites_total.with_label_values(&[k.label()]);
        }
        for o in crate::session::Outcome::ALL {
            self.sessions_total.with_label_values(&[o.label()]);
        }
        for mode in ["passive", "active"] {
            for d in ["download", "upload", "listing"] {
                self.data_connections_total.with_label_values(&[mode, d]);
            }
        }
        for d in ["download", "upload", "listing"] {
            self.transfer_duration_seconds.with_label_values(&[d]);
        }
        for side in ["client", "backend"] {
            self.tls_handshakes_total
                .with_label_values(&[side, "failed", "none"]);
        }
        for a in ["complete", "abort"] {
            self.tls_unclean_eof_total.with_label_values(&[a]);
        }
        for r in Refusal::ALL {
            self.refusals_total.with_label_values(&[r.label()]);
        }
        for k in TimeoutKind::ALL {
            self.timeouts_total.with_label_values(&[k.label()]);
        }
        for res in crate::net::LocalResource::ALL {
            self.local_resource_exhausted_total
                .with_label_values(&[res.label()]);
        }
        for o in ["ok", "invalid", "error"] {
            self.config_reload_total.with_label_values(&[o]);
        }
        for r in ["per_source_limit", "global_limit", "first_byte_timeout"] {
            self.admin_connections_refused_total.with_label_values(&[r]);
        }
    }

    /// The registry in Prometheus text exposition format.
    pub fn render(&self) -> String {
        let not_after = self
            .tls_certificate_not_after
            .load(std::sync::atomic::Ordering::Relaxed);
        if not_after != 0 {
            self.tls_certificate_expiry_seconds
                .set(not_after - crate::tls::unix_now());
        }
        let mut out = String::new();
        let encoder = prometheus::TextEncoder::new();
        if let Err(e) = encoder.encode_utf8(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "metrics encoding failed");
        }
        out
    }
}

/// Declares a label enum: variants, their label strings, and `ALL` for pre-creation.
macro_rules! label_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident => $label:literal,)+ }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name {
            $($(#[$vdoc])* $variant,)+
        }

        impl $name {
            /// Every value, for label pre-creation.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The metric label.
            pub fn label(self) -> &'static str {
                match self {
                    $($name::$variant => $label,)+
                }
            }
        }
    };
}

label_enum!(
    /// Why ftpgate refused something (`ftpgate_refusals_total{reason}`).
    Refusal {
        /// A data connection from an address other than the expected peer.
        ForeignDataPeer => "foreign_data_peer",
        /// `PORT`/`EPRT` naming another host (RFC 2577 §3).
        Bounce => "bounce",
        /// `LPRT`/`LPSV` (long addresses), which ftpgate does not relay.
        LprtLpsv => "lprt_lpsv",
        /// A client line longer than `control.max_line_length`.
        LineTooLong => "line_too_long",
        /// `PASV`/`PORT`/`EPRT` after `EPSV ALL` (RFC 2428 §4).
        EpsvAll => "epsv_all",
        /// A malformed `PORT`/`EPRT` address, or an unsupported protocol.
        BadAddress => "bad_address",
        /// No data port could be leased or bound.
        DataPort => "data_port",
        /// `PASV` with no IPv4 address to announce in the `227`.
        NoIpv4 => "no_ipv4",
        /// `AUTH` while ftpgate does not terminate TLS.
        AuthTls => "auth_tls",
        /// `tls.client: required` or `tls.client_data: required` refused a command.
        TlsRequired => "tls_required",
        /// `CCC` (clear command channel) refused.
        Ccc => "ccc",
        /// A client data handshake that did not resume a session, under
        /// `tls.require_session_reuse`.
        TlsNotResumed => "tls_not_resumed",
        /// A transparent session that would connect to ftpgate itself.
        Loop => "loop",
        /// A backend's `227` named an address ftpgate does not connect to.
        PassiveTarget => "passive_target",
        /// A multi-line passive reply too long to hold for rewriting.
        PassiveReplyTooLong => "passive_reply_too_long",
        /// `limits.max_prelogin_sessions` reached.
        PreloginLimit => "prelogin_limit",
        /// `limits.max_sessions` reached.
        MaxSessions => "max_sessions",
        /// `limits.max_sessions_per_ip` reached for the client's address.
        MaxSessionsPerIp => "max_sessions_per_ip",
        /// `limits.new_sessions_per_ip` exceeded by the client's address.
        SessionRate => "session_rate",
        /// `limits.data_ports_per_session` ports held by the session.
        DataPortsPerSession => "data_ports_per_session",
        /// `limits.prelogin_bytes` sent before logging in.
        PreloginBytes => "prelogin_bytes",
    }
);

label_enum!(
    /// Which timeout fired (`ftpgate_timeouts_total{kind}`).
    TimeoutKind {
        /// A mapped data port got no connection in time (`timeouts.data_connect`).
        DataConnect => "data_connect",
        /// A TCP connect to a backend (`timeouts.backend_connect`).
        BackendConnect => "backend_connect",
        /// Not logged in in time (`timeouts.login`).
        Login => "login",
        /// No command and no transfer (`timeouts.idle`).
        Idle => "idle",
        /// No byte moved on a data connection (`timeouts.data_idle`).
        DataIdle => "data_idle",
        /// A command outstanding at the backend got no reply in time.
        BackendReply => "backend_reply",
    }
);

label_enum!(
    /// What ftpgate rewrote (`ftpgate_rewrites_total{kind}`).
    RewriteKind {
        /// The address in a `227` passive reply.
        Pasv227 => "227",
        /// The port in a `229` extended passive reply.
        Epsv229 => "229",
        /// The address in a client's `PORT`.
        Port => "port",
        /// The address in a client's `EPRT`.
        Eprt => "eprt",
    }
);

/// Reply codes as static labels (bounded: 100..=599, else `other`), built once.
fn code_label(code: u16) -> &'static str {
    static LABELS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let labels = LABELS.get_or_init(|| (100..600).map(|c: u16| c.to_string()).collect());
    code.checked_sub(100)
        .and_then(|i| labels.get(usize::from(i)))
        .map_or("other", String::as_str)
}
