//! A session's start, before its machine runs: admission limits and the pre-login cap
//! (refused before any backend connect), implicit TLS towards the client, then the
//! machine and the pump. The backend connect (with its PROXY header and implicit TLS
//! towards the backend) is [`open_backend`]: here before the machine runs, or from the
//! driver when a `balance: user` machine asks for it after `USER`. I/O edge.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::admission::AdmissionRefused;
use super::driver::pump;
use super::edge::PoolEdge;
use super::front::send_backend_header;
use super::machine::{Addresses, BackendConnected, SessionMachine};
use super::outcome::Outcome;
use super::replies::LocalReply;
use super::tls::TlsState;
use super::transport::SessionTls;
use super::upstream::{connect_upstream, NoUpstream};
use super::writes::CLOSE_GRACE;
use super::SessionContext;
use crate::config::{BackendTlsPolicy, ListenerMode, ListenerTls};
use crate::farm::{BalancePolicy, SessionLease};
use crate::metrics::Refusal;
use crate::net::prepare_control_socket;
use crate::protocol::addr::canonical_ip;
use crate::tls::MaybeTls;

#[allow(clippy::too_many_lines)]
pub(super) async fn serve(
    mut client: TcpStream,
    peer: SocketAddr,
    proxied_dst: Option<SocketAddr>,
    mode: ListenerMode,
    listener_tls: ListenerTls,
    ctx: &SessionContext,
    shutdown: &CancellationToken,
) -> Outcome {
    let started = Instant::now();
    let keepalive = ctx.config.keepalive.tcp_params();
    prepare_control_socket(&client, keepalive);
    let client_ip = canonical_ip(peer.ip());
    let _admitted = match ctx
        .admission
        .admit(client_ip, &ctx.config.limits, Instant::now())
    {
        Ok(ticket) => ticket,
        Err(why) => {
            ctx.metrics.refuse(why.refusal());
            if ctx.admission.should_log(client_ip, Instant::now()) {
                info!(reason = %why, "session refused before any backend connect (logged once a minute per address)");
            }
            let reply = match why {
                AdmissionRefused::MaxSessions => LocalReply::TooManySessions,
                AdmissionRefused::MaxPerIp => LocalReply::TooManyFromAddress,
                AdmissionRefused::Rate => LocalReply::TooFast,
            };
            say_goodbye(&ctx.metrics, &mut client, reply).await;
            return Outcome::Limited;
        }
    };
    let Some(mut slot) = ctx
        .prelogin
        .try_take(ctx.config.limits.max_prelogin_sessions)
    else {
        ctx.metrics.refuse(Refusal::PreloginLimit);
        debug!("pre-login session limit reached; refused before any backend connect");
        say_goodbye(&ctx.metrics, &mut client, LocalReply::TooManyPrelogin).await;
        return Outcome::Limited;
    };
    // Implicit FTPS: TLS before any FTP byte (ftpgate's own greeting included).
    let mut client = MaybeTls::Plain(client);
    let mut initial = TlsState::default();
    if listener_tls == ListenerTls::Implicit {
        let Some(acceptor) = ctx.tls.acceptor() else {
            return Outcome::ClientError;
        };
        let r = tokio::time::timeout(ctx.config.timeouts.login, client.accept(&acceptor)).await;
        match r {
            Ok(Ok(s)) => {
                ctx.metrics.tls_handshake("client", s.negotiated());
                client = s;
                initial = TlsState::implicit_client();
            }
            Ok(Err(e)) => {
                ctx.metrics.tls_handshake("client", None);
                info!(error = %e, "implicit TLS handshake with client failed");
                return Outcome::ClientError;
            }
            Err(_) => {
                ctx.metrics.tls_handshake("client", None);
                info!("implicit TLS handshake with client timed out");
                return Outcome::Timeout;
            }
        }
    }
    let front = Front {
        peer,
        dst: proxied_dst.or_else(|| client.tcp().local_addr().ok()),
        mode,
    };
    let canon = |a: SocketAddr| SocketAddr::new(canonical_ip(a.ip()), a.port());
    let unknown = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0);
    let mut addrs = Addresses {
        mode,
        client_ip,
        client_local: client.tcp().local_addr().map(canon).unwrap_or(unknown),
        // Until a backend is connected (`balance: user`): never used before then.
        backend: unknown,
        backend_local: unknown,
    };
    let mut tls = SessionTls {
        connector: ctx.tls.backend_session(),
        name: crate::tls::backend_server_name(&ctx.config.tls, unknown.ip()),
    };
    let edge = PoolEdge {
        pool: Arc::clone(&ctx.pool),
        active_pool: Arc::clone(&ctx.active_pool),
        held: Arc::default(),
        max_held: ctx.config.limits.data_ports_per_session,
        handoffs: ctx.cluster.as_ref().map(|c| Arc::clone(&c.handoffs)),
    };
    let (cfg, metrics) = (Arc::clone(&ctx.config), Arc::clone(&ctx.metrics));
    let mut hold = None;
    // `balance: user`: the machine greets and waits for USER; the driver connects when
    // it asks (Action::ConnectBackend). Otherwise the backend is connected first.
    let routes_by_user = mode == ListenerMode::Reverse && ctx.config.balance == BalancePolicy::User;
    let (mut machine, backend) = if routes_by_user {
        let m = SessionMachine::new(cfg, metrics, edge, addrs, Instant::now()).awaiting_user();
        (m, None)
    } else {
        let opened = match open_backend(&client, &front, client_ip, None, &mut tls, ctx).await {
            Ok(b) => b,
            Err(no) => {
                say_goodbye(&ctx.metrics, &mut client, no.reply).await;
                return no.outcome;
            }
        };
        addrs.backend = opened.connected.backend;
        addrs.backend_local = opened.connected.backend_local;
        initial.backend = opened.connected.tls;
        hold = Some(opened.hold);
        let m = SessionMachine::new(cfg, metrics, edge, addrs, Instant::now());
        (m, Some(opened.stream))
    };
    machine.set_initial_tls(initial);
    let outcome = pump(
        &mut machine,
        client,
        backend,
        tls,
        &front,
        &mut hold,
        &mut slot,
        ctx,
        shutdown,
    )
    .await;
    drop(hold);
    machine.stats().log_end(outcome, started.elapsed());
    outcome
}

/// Who the client is, for the backend connect: the real client (behind a trusted
/// balancer, its header's source), where it connected, and the listener's mode.
#[derive(Debug, Clone, Copy)]
pub(super) struct Front {
    /// The real client.
    pub peer: SocketAddr,
    /// Where the client connected (the balancer's frontend when proxied).
    pub dst: Option<SocketAddr>,
    /// The listener's mode.
    pub mode: ListenerMode,
}

/// A session's claim on its server side while it runs: the farm member's lease
/// (reverse mode), or the gauge counting a transparent session's destination.
#[derive(Debug)]
pub(super) struct BackendHold {
    _lease: Option<SessionLease>,
    gauge: Option<prometheus::IntGauge>,
}

impl Drop for BackendHold {
    fn drop(&mut self) {
        if let Some(g) = &self.gauge {
            g.dec();
        }
    }
}

/// A connected backend control connection, ready for FTP.
pub(super) struct OpenedBackend {
    /// The connection (TLS when `tls.backend: implicit`).
    pub stream: MaybeTls,
    /// Its addresses, as the machine learns them.
    pub connected: BackendConnected,
    /// Held for the session's life.
    pub hold: BackendHold,
}

/// Connects the session's server side: picks a backend (by `user` under `balance:
/// user`), sends the PROXY header (describing the client's TLS session when it has
/// one), and with `tls.backend: implicit` handshakes. `tls.name` becomes the name the
/// backend's certificate must carry. Each step is bounded by
/// `timeouts.backend_connect`.
pub(super) async fn open_backend(
    client: &MaybeTls,
    front: &Front,
    client_ip: IpAddr,
    user: Option<&str>,
    tls: &mut SessionTls,
    ctx: &SessionContext,
) -> Result<OpenedBackend, NoUpstream> {
    let upstream = connect_upstream(client.tcp(), client_ip, user, front.mode, ctx).await?;
    let (mut backend, backend_addr, lease) = (upstream.stream, upstream.addr, upstream.lease);
    // Farm members are counted by their lease; a transparent session's destination is
    // counted here, as before farms existed.
    let gauge = lease.is_none().then(|| {
        let g = ctx
            .metrics
            .backend_sessions_active
            .with_label_values(&[&backend_addr.to_string()]);
        g.inc();
        g
    });
    let hold = BackendHold {
        _lease: lease,
        gauge,
    };
    let facts = client.client_facts();
    if !send_backend_header(
        &mut backend,
        backend_addr,
        front.peer,
        front.dst,
        facts.as_ref(),
        ctx,
    )
    .await
    {
        return Err(NoUpstream {
            reply: LocalReply::ConnectionLost,
            outcome: Outcome::BackendUnavailable,
        });
    }
    prepare_control_socket(&backend, ctx.config.keepalive.tcp_params());
    let canon = |a: SocketAddr| SocketAddr::new(canonical_ip(a.ip()), a.port());
    let unknown = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0);
    let backend_local = backend.local_addr().map(canon).unwrap_or(unknown);
    tls.name = crate::tls::backend_server_name(&ctx.config.tls, canonical_ip(backend_addr.ip()));
    let mut stream = MaybeTls::Plain(backend);
    let implicit = ctx.config.tls.backend == BackendTlsPolicy::Implicit;
    if implicit {
        let r = tokio::time::timeout(
            ctx.config.timeouts.backend_connect,
            stream.connect(&tls.connector, tls.name.clone()),
        )
        .await;
        match r {
            Ok(Ok(s)) => {
                ctx.metrics.tls_handshake("backend", s.negotiated());
                stream = s;
            }
            other => {
                ctx.metrics.tls_handshake("backend", None);
                let reason = match other {
                    Ok(Err(e)) => e.to_string(),
                    _ => "handshake timed out".into(),
                };
                warn!(reason = %reason, "TLS towards the backend failed (implicit); closing session");
                return Err(NoUpstream {
                    reply: LocalReply::BackendTlsFailed,
                    outcome: Outcome::BackendError,
                });
            }
        }
    }
    tracing::Span::current().record("backend", tracing::field::display(backend_addr));
    debug!("session started");
    Ok(OpenedBackend {
        stream,
        connected: BackendConnected {
            backend: canon(backend_addr),
            backend_local,
            tls: implicit,
        },
        hold,
    })
}

/// The one reply of a session that never reached a backend.
pub(super) async fn say_goodbye<S: AsyncWrite + Unpin>(
    metrics: &crate::metrics::Metrics,
    client: &mut S,
    reply: LocalReply,
) {
    metrics.reply(reply.code());
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        let _ = client.write_all(&reply.to_bytes()).await;
        let _ = client.shutdown().await;
    })
    .await;
}
