//! A session's start, before its machine runs: admission limits and the pre-login cap
//! (refused before any backend connect), `balance: user` routing, the backend connect
//! and its PROXY header, implicit TLS on either side, then the machine and the pump.
//! I/O edge.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::admission::AdmissionRefused;
use super::driver::{pump, READ_CHUNK};
use super::edge::PoolEdge;
use super::front::{await_user, send_backend_header};
use super::machine::{Addresses, SessionMachine};
use super::outcome::Outcome;
use super::replies::LocalReply;
use super::tls::TlsState;
use super::transport::SessionTls;
use super::upstream::connect_upstream;
use super::writes::{grace, write_flush, CLOSE_GRACE};
use super::SessionContext;
use crate::config::{BackendTlsPolicy, ListenerMode, ListenerTls};
use crate::farm::BalancePolicy;
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
    let client_ip = canonical_ip(peer.ip());
    // `balance: user`: ftpgate greets and reads up to USER before any backend exists.
    let mut cbuf: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    let routes_by_user = mode == ListenerMode::Reverse && ctx.config.balance == BalancePolicy::User;
    let user = if routes_by_user {
        match await_user(&mut client, &mut cbuf, ctx, started, shutdown).await {
            Ok(user) => Some(user),
            Err(outcome) => return outcome,
        }
    } else {
        None
    };
    let upstream = match connect_upstream(&client, client_ip, user.as_deref(), mode, ctx).await {
        Ok(b) => b,
        Err(no) => {
            say_goodbye(&ctx.metrics, &mut client, no.reply).await;
            return no.outcome;
        }
    };
    let (mut backend, backend_addr, lease) = (upstream.stream, upstream.addr, upstream.lease);
    // Farm members are counted by their lease; a transparent session's destination is
    // counted here, as before farms existed.
    let destination_gauge = lease.is_none().then(|| {
        let g = ctx
            .metrics
            .backend_sessions_active
            .with_label_values(&[&backend_addr.to_string()]);
        g.inc();
        g
    });
    let dst = proxied_dst.or_else(|| client.local_addr().ok());
    if !send_backend_header(&mut backend, backend_addr, peer, dst, ctx).await {
        say_goodbye(&ctx.metrics, &mut client, LocalReply::ConnectionLost).await;
        return Outcome::BackendUnavailable;
    }
    prepare_control_socket(&backend, keepalive);
    let client_local = client.local_addr();
    let backend_local = backend.local_addr();
    let name = crate::tls::backend_server_name(&ctx.config.tls, canonical_ip(backend_addr.ip()));
    let tls = SessionTls {
        connector: ctx.tls.backend_session(),
        name,
    };
    let mut initial = TlsState::default();
    // Implicit FTPS: TLS before any FTP byte, each side bounded by its own timeout.
    let mut client = MaybeTls::Plain(client);
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
    let mut backend = MaybeTls::Plain(backend);
    if ctx.config.tls.backend == BackendTlsPolicy::Implicit {
        let r = tokio::time::timeout(
            ctx.config.timeouts.backend_connect,
            backend.connect(&tls.connector, tls.name.clone()),
        )
        .await;
        match r {
            Ok(Ok(s)) => {
                ctx.metrics.tls_handshake("backend", s.negotiated());
                backend = s;
                initial.backend = true;
            }
            other => {
                ctx.metrics.tls_handshake("backend", None);
                let reason = match other {
                    Ok(Err(e)) => e.to_string(),
                    _ => "handshake timed out".into(),
                };
                warn!(reason = %reason, "TLS towards the backend failed (implicit); closing session");
                let reply = LocalReply::BackendTlsFailed;
                ctx.metrics.reply(reply.code());
                let _ = grace(write_flush(&mut client, &reply.to_bytes())).await;
                return Outcome::BackendError;
            }
        }
    }
    tracing::Span::current().record("backend", tracing::field::display(backend_addr));
    debug!("session started");
    let canon = |a: SocketAddr| SocketAddr::new(canonical_ip(a.ip()), a.port());
    let unknown = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0);
    let addrs = Addresses {
        mode,
        client_ip,
        client_local: client_local.map(canon).unwrap_or(unknown),
        backend: canon(backend_addr),
        backend_local: backend_local.map(canon).unwrap_or(unknown),
    };
    let edge = PoolEdge {
        pool: Arc::clone(&ctx.pool),
        active_pool: Arc::clone(&ctx.active_pool),
        held: Arc::default(),
        max_held: ctx.config.limits.data_ports_per_session,
        handoffs: ctx.cluster.as_ref().map(|c| Arc::clone(&c.handoffs)),
    };
    let mut machine = SessionMachine::new(
        Arc::clone(&ctx.config),
        Arc::clone(&ctx.metrics),
        edge,
        addrs,
        Instant::now(),
    );
    machine.set_initial_tls(initial);
    if routes_by_user {
        machine.greeted_locally();
        // USER and whatever was pipelined behind it, in order; written to the backend
        // once its (swallowed) greeting has arrived.
        machine.on_client_input(&mut cbuf, Instant::now());
    }
    let outcome = pump(
        &mut machine,
        client,
        backend,
        &tls,
        cbuf,
        &mut slot,
        ctx,
        shutdown,
    )
    .await;
    if let Some(g) = destination_gauge {
        g.dec();
    }
    drop(lease);
    machine.stats().log_end(outcome, started.elapsed());
    outcome
}

/// The one reply of a session that never reached a backend.
pub(super) async fn say_goodbye(
    metrics: &crate::metrics::Metrics,
    client: &mut TcpStream,
    reply: LocalReply,
) {
    metrics.reply(reply.code());
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        let _ = client.write_all(&reply.to_bytes()).await;
        let _ = client.shutdown().await;
    })
    .await;
}
