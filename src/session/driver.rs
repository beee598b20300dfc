//! The async edge of a session: owns the two control sockets and the timers, turns
//! reads, timer expiries and data events into inputs of the [`SessionMachine`],
//! carries out its actions and writes its outbox. No decisions are made here.
//!
//! One task per session, no locks. Backpressure is natural: writes are awaited, and the
//! client is not read while the machine does not want input. Every write is bounded by
//! the session's deadlines and by shutdown, so a peer that stops reading cannot hold a
//! session past its timeouts.

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn, Instrument};

use super::admission::AdmissionRefused;
use super::data::DataEvent;
use super::edge::{spawn_data, PoolEdge};
use super::front::{await_user, client_behind_balancer, send_backend_header};
use super::limits::PreloginSlot;
use super::machine::{Action, Addresses, Deadline, SessionMachine};
use super::outcome::{Outcome, SessionError};
use super::replies::LocalReply;
use super::timer::Timer;
use super::tls::TlsState;
use super::upstream::connect_upstream;
use super::writes::{bounded, grace, write_backend, write_flush, Interrupt, CLOSE_GRACE};
use super::SessionContext;
use crate::config::{BackendTlsPolicy, ListenerMode, ListenerTls};
use crate::farm::BalancePolicy;
use crate::metrics::Refusal;
use crate::net::{drain_past_urgent_mark, prepare_control_socket};
use crate::protocol::addr::canonical_ip;
use crate::tls::MaybeTls;

/// Control lines are short; a small read size keeps idle sessions cheap (two buffers each).
pub(super) const READ_CHUNK: usize = 4 * 1024;

static SESSION_IDS: AtomicU64 = AtomicU64::new(1);

type Machine = SessionMachine<PoolEdge>;

/// Serves one client connection to its end.
pub async fn run_session(
    mut client: TcpStream,
    peer: SocketAddr,
    mode: ListenerMode,
    tls: ListenerTls,
    ctx: Arc<SessionContext>,
    shutdown: CancellationToken,
) {
    // Behind a trusted balancer the header's source is the client, from here on:
    // logs, access log, balancing, the data-port and bounce checks.
    let Some((peer, proxied_dst)) =
        client_behind_balancer(&mut client, peer, &ctx, &shutdown).await
    else {
        return;
    };
    let id = SESSION_IDS.fetch_add(1, Ordering::Relaxed);
    let span = info_span!("session", id, client = %peer, backend = tracing::field::Empty);
    let metrics = Arc::clone(&ctx.metrics);
    metrics.sessions_active.inc();
    let outcome = serve(client, peer, proxied_dst, mode, tls, &ctx, &shutdown)
        .instrument(span)
        .await;
    metrics.sessions_active.dec();
    metrics.session_ended(outcome);
}

#[allow(clippy::too_many_lines)]
async fn serve(
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

/// The session's TLS client towards its backend: one resumption store shared by the
/// control connection and its data connections, and the name verified.
pub struct SessionTls {
    /// ftpgate as the TLS client, with this session's resumption store.
    pub connector: tokio_rustls::TlsConnector,
    /// The name the backend's certificate must carry.
    pub name: rustls::pki_types::ServerName<'static>,
}

/// Upgrades `stream` in place with `upgrade`, bounded by the session deadlines and
/// shutdown; the error names why it failed.
async fn handshake<F, Fut>(
    stream: &mut Option<MaybeTls>,
    upgrade: F,
    deadline: Option<(Instant, Deadline)>,
    shutdown: &CancellationToken,
) -> Result<(), String>
where
    F: FnOnce(MaybeTls) -> Fut,
    Fut: Future<Output = io::Result<MaybeTls>>,
{
    let Some(plain) = stream.take() else {
        return Err("connection already gone".into());
    };
    let mut timer = Timer::default();
    timer.arm(deadline.map(|(at, _)| at));
    tokio::select! {
        r = upgrade(plain) => match r {
            Ok(s) => {
                *stream = Some(s);
                Ok(())
            }
            Err(e) => Err(e.to_string()),
        },
        () = timer.fired() => Err("handshake timed out".into()),
        () = shutdown.cancelled() => Err("shutting down".into()),
    }
}

// `cbuf` carries what `balance: user` read before the machine existed.
#[allow(clippy::too_many_lines, clippy::too_many_arguments)]
async fn pump(
    m: &mut Machine,
    client: MaybeTls,
    backend: MaybeTls,
    tls: &SessionTls,
    mut cbuf: Vec<u8>,
    slot: &mut PreloginSlot<'_>,
    ctx: &SessionContext,
    shutdown: &CancellationToken,
) -> Outcome {
    let max_line = ctx.config.control.max_line_length;
    let (data_tx, mut data_rx) = mpsc::unbounded_channel();
    let mut data = DataTasks {
        ctx,
        tls,
        events: data_tx,
        scope: shutdown.child_token(),
        newest: None,
        preliminaries: watch::channel(0u64).0,
        upgrades: Upgrades::default(),
    };
    // Data mappings not yet in use are withdrawn when the session ends.
    let _withdraw_all = data.scope.clone().drop_guard();
    let mut closing: Option<Outcome> = None;
    let (mut noop_timer, mut deadline_timer) = (Timer::default(), Timer::default());
    let mut sbuf: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    // `None` only while a handshake owns the stream.
    let (mut client, mut backend) = (Some(client), Some(backend));
    let mut drain_seen = false;

    let mut deadline = m.next_deadline();
    loop {
        let read_client = m.wants_client_input();
        if read_client {
            cbuf.reserve(READ_CHUNK);
        }
        sbuf.reserve(READ_CHUNK);
        // Armed no later than the machine's next deadline, nor than the earliest a
        // backend-reply deadline could start from now: then a command sent this turn
        // never has to move the timer earlier (see `Timer::arm_early`).
        let now = Instant::now();
        let reply_bound = Some(ctx.config.timeouts.backend_reply)
            .filter(|d| !d.is_zero())
            .map(|d| now + d);
        let wake = match (deadline.map(|(at, _)| at), reply_bound) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        deadline_timer.arm_early(wake);
        noop_timer.arm(m.next_keepalive());
        let mut backend_read_at = None;
        let (Some(cs), Some(bs)) = (client.as_mut(), backend.as_mut()) else {
            return closing.unwrap_or(Outcome::ClientError);
        };
        tokio::select! {
            r = cs.read_buf(&mut cbuf), if read_client => match r {
                Ok(0) => {
                    // Let the backend see the close; its own close ends its side.
                    let _ = grace(bs.shutdown()).await;
                    m.on_client_closed();
                }
                // Urgent data (Telnet Synch) exists only on plain TCP.
                Ok(_) if cs.is_tls() => m.on_client_input(&mut cbuf, Instant::now()),
                Ok(_) => match drain_past_urgent_mark(cs.tcp(), &mut cbuf, max_line) {
                    Ok(()) => m.on_client_input(&mut cbuf, Instant::now()),
                    Err(e) => m.on_error(&SessionError::ClientRead(e)),
                },
                // A TLS peer that closes TCP without close_notify (vsftpd after
                // `221`, most clients after QUIT) has still closed.
                Err(e) if cs.is_tls() && e.kind() == io::ErrorKind::UnexpectedEof => {
                    let _ = grace(bs.shutdown()).await;
                    m.on_client_closed();
                }
                Err(e) => m.on_error(&SessionError::ClientRead(e)),
            },
            r = bs.read_buf(&mut sbuf) => match r {
                Ok(0) => m.on_server_closed(&mut sbuf, Instant::now()),
                Err(e) if bs.is_tls() && e.kind() == io::ErrorKind::UnexpectedEof => {
                    m.on_server_closed(&mut sbuf, Instant::now());
                }
                Ok(_) => {
                    backend_read_at = Some(Instant::now());
                    m.on_server_input(&mut sbuf, Instant::now());
                }
                Err(e) => m.on_error(&SessionError::BackendRead(e)),
            },
            Some(ev) = data_rx.recv() => m.on_data_event(ev, Instant::now()),
            () = noop_timer.fired() => m.on_keepalive(Instant::now()),
            () = deadline_timer.fired() => {
                // The timer may fire early; only a deadline really due counts.
                let now = Instant::now();
                if let Some((at, kind)) = m.next_deadline().filter(|(at, _)| *at <= now) {
                    m.on_deadline(kind, at.max(now));
                }
            }
            () = shutdown.cancelled() => m.on_shutdown(),
            () = ctx.drain.cancelled(), if !drain_seen => {
                drain_seen = true;
                m.on_drain();
            }
        }
        // Lines read earlier but left while the machine wanted no input (pipelining
        // limit, a held command) are offered again once it does.
        if !cbuf.is_empty() && m.wants_client_input() {
            m.on_client_input(&mut cbuf, Instant::now());
        }
        if m.logged_in() {
            slot.release();
        }
        data.execute(m, &mut closing);
        // One deadline for both writes and the next turn's timer: only an error
        // between them changes it, and an error closes the session anyway (a TLS step
        // below recomputes it).
        deadline = m.next_deadline();
        flush_backend(
            m,
            backend.as_mut(),
            closing,
            deadline,
            &mut deadline_timer,
            shutdown,
        )
        .await;
        data.execute(m, &mut closing);
        if flush_client(
            m,
            client.as_mut(),
            closing,
            deadline,
            &mut deadline_timer,
            shutdown,
        )
        .await
        {
            if let Some(t) = backend_read_at {
                ctx.metrics
                    .reply_added_latency_seconds
                    .observe(t.elapsed().as_secs_f64());
            }
        }
        data.execute(m, &mut closing);

        // TLS upgrades, once the replies announcing them are out. Backend first: in
        // mirror mode its success is what lets ftpgate send the client its 234.
        if std::mem::take(&mut data.upgrades.backend) && closing.is_none() {
            let r = handshake(
                &mut backend,
                |s| s.connect(&tls.connector, tls.name.clone()),
                m.next_deadline(),
                shutdown,
            )
            .await;
            let negotiated = backend.as_ref().and_then(MaybeTls::negotiated);
            ctx.metrics
                .tls_handshake("backend", negotiated.filter(|_| r.is_ok()));
            if let Some(n) = negotiated {
                debug!(version = n.version, "backend control connection in TLS");
            }
            m.on_backend_tls(r, Instant::now());
            data.execute(m, &mut closing);
            deadline = m.next_deadline();
            flush_client(
                m,
                client.as_mut(),
                closing,
                deadline,
                &mut deadline_timer,
                shutdown,
            )
            .await;
            data.execute(m, &mut closing);
            deadline = m.next_deadline();
        }
        if std::mem::take(&mut data.upgrades.client) && closing.is_none() {
            if !cbuf.is_empty() {
                // Bytes pipelined behind AUTH in clear text must not be taken as
                // commands from inside TLS (the STARTTLS command-injection attack).
                warn!(
                    bytes = cbuf.len(),
                    "discarding clear-text bytes sent after AUTH TLS"
                );
                cbuf.clear();
            }
            let r = match ctx.tls.acceptor() {
                Some(acceptor) => {
                    handshake(
                        &mut client,
                        |s| async move { s.accept(&acceptor).await },
                        m.next_deadline(),
                        shutdown,
                    )
                    .await
                }
                None => Err("no certificate configured".into()),
            };
            let negotiated = client.as_ref().and_then(MaybeTls::negotiated);
            ctx.metrics
                .tls_handshake("client", negotiated.filter(|_| r.is_ok()));
            m.on_client_tls(r, Instant::now());
            data.execute(m, &mut closing);
            deadline = m.next_deadline();
        }
        if std::mem::take(&mut data.upgrades.passthrough) && closing.is_none() {
            if let (Some(c), Some(b)) = (client.as_mut(), backend.as_mut()) {
                return relay_opaque(c, b, &mut cbuf, &mut sbuf, ctx, shutdown).await;
            }
        }

        if let Some(outcome) = closing {
            if let Some(cw) = client.as_mut() {
                let _ = grace(cw.shutdown()).await;
            }
            return outcome;
        }
    }
}

/// TLS steps the machine asked for this turn, carried out after the outbox is written.
#[derive(Default)]
struct Upgrades {
    client: bool,
    backend: bool,
    passthrough: bool,
}

/// The session's data connections: started and withdrawn as the machine says; the
/// TLS steps it asks for are noted in `upgrades`.
struct DataTasks<'a> {
    ctx: &'a SessionContext,
    tls: &'a SessionTls,
    events: mpsc::UnboundedSender<DataEvent>,
    /// Parent of every data task's token; cancelled when the session ends.
    scope: CancellationToken,
    /// The newest data mapping, withdrawn when a newer one replaces it.
    newest: Option<CancellationToken>,
    /// Counts the backend's `1xx` replies to transfer commands: a TLS data connection
    /// to the backend handshakes after the next one.
    preliminaries: watch::Sender<u64>,
    upgrades: Upgrades,
}

impl DataTasks<'_> {
    /// Carries out the machine's actions; a `Close` is remembered in `closing`.
    fn execute(&mut self, m: &mut Machine, closing: &mut Option<Outcome>) {
        for action in m.take_actions() {
            match action {
                Action::WithdrawData => {
                    if let Some(t) = self.newest.take() {
                        t.cancel();
                    }
                }
                Action::OpenData(spec) => {
                    let c = self.ctx;
                    self.newest = Some(spawn_data(
                        spec,
                        &c.config,
                        &c.metrics,
                        &self.events,
                        &self.scope,
                        &c.tls,
                        self.tls,
                        self.preliminaries.subscribe(),
                    ));
                }
                Action::Close(o) => *closing = closing.or(Some(o)),
                Action::StartBackendTls => self.upgrades.backend = true,
                Action::StartClientTls => self.upgrades.client = true,
                Action::Passthrough => self.upgrades.passthrough = true,
                Action::TransferPreliminary => self.preliminaries.send_modify(|n| *n += 1),
            }
        }
    }
}

/// Writes the backend's outbox; a failure becomes a machine input.
async fn flush_backend(
    m: &mut Machine,
    bw: Option<&mut MaybeTls>,
    closing: Option<Outcome>,
    deadline: Option<(Instant, Deadline)>,
    timer: &mut Timer,
    shutdown: &CancellationToken,
) {
    if m.out.to_backend.is_empty() {
        return;
    }
    let Some(bw) = bw else {
        m.out.to_backend.clear();
        return;
    };
    let r = match closing {
        Some(_) => grace(write_backend(bw, &m.out)).await,
        None => bounded(write_backend(bw, &m.out), timer, deadline, shutdown).await,
    };
    m.out.to_backend.clear();
    m.out.urgent_at = None;
    match r {
        Ok(Ok(())) => {}
        Ok(Err(e)) if closing.is_none() => m.on_error(&SessionError::BackendWrite(e)),
        Ok(Err(_)) => {}
        Err(interrupt) => interrupted(m, interrupt),
    }
}

/// Writes the client's outbox; true when something was delivered. A failure or an
/// interruption becomes a machine input.
async fn flush_client(
    m: &mut Machine,
    cw: Option<&mut MaybeTls>,
    closing: Option<Outcome>,
    deadline: Option<(Instant, Deadline)>,
    timer: &mut Timer,
    shutdown: &CancellationToken,
) -> bool {
    if m.out.to_client.is_empty() {
        return false;
    }
    let Some(cw) = cw else {
        m.out.to_client.clear();
        return false;
    };
    let r = match closing {
        Some(_) => grace(write_flush(cw, &m.out.to_client)).await,
        None => bounded(write_flush(cw, &m.out.to_client), timer, deadline, shutdown).await,
    };
    m.out.to_client.clear();
    match r {
        Ok(Ok(())) => return true,
        Ok(Err(e)) if closing.is_none() => {
            m.on_error(&SessionError::ClientWrite(e));
            // Nothing more can reach this client.
            m.out.to_client.clear();
        }
        Ok(Err(_)) => {}
        Err(interrupt) => {
            interrupted(m, interrupt);
            // One last try for the 421 that explains the close.
            let _ = grace(write_flush(cw, &m.out.to_client)).await;
            m.out.to_client.clear();
        }
    }
    false
}

/// Transparent FTPS: the rest of the control connection is TLS between the client and
/// its server, which ftpgate can neither read nor rewrite. Bytes already read go on
/// first; then both directions are copied until either side closes or shutdown.
async fn relay_opaque(
    client: &mut MaybeTls,
    backend: &mut MaybeTls,
    cbuf: &mut Vec<u8>,
    sbuf: &mut Vec<u8>,
    ctx: &SessionContext,
    shutdown: &CancellationToken,
) -> Outcome {
    ctx.metrics.tls_passthrough_total.inc();
    info!("server accepted AUTH TLS: relaying the control connection opaquely (transparent FTPS passthrough)");
    let relay = async {
        write_flush(backend, cbuf).await?;
        write_flush(client, sbuf).await?;
        cbuf.clear();
        sbuf.clear();
        tokio::io::copy_bidirectional(client, backend).await
    };
    tokio::select! {
        r = relay => match r {
            Ok((up, down)) => {
                debug!(up, down, "opaque control relay ended");
                Outcome::Closed
            }
            Err(e) => {
                debug!(error = %e, "opaque control relay ended with error");
                Outcome::Closed
            }
        },
        () = shutdown.cancelled() => Outcome::Shutdown,
    }
}

/// A write interrupted by a deadline or shutdown: what was queued cannot be delivered
/// in order any more, so it is dropped, and the machine closes the session.
fn interrupted(m: &mut Machine, interrupt: Interrupt) {
    m.out.to_backend.clear();
    m.out.to_client.clear();
    match interrupt {
        Interrupt::Deadline(kind) => m.on_deadline(kind, Instant::now()),
        Interrupt::Shutdown => m.on_shutdown(),
    }
}
