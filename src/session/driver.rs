//! The async edge of a session: owns the two control sockets and the timers, turns
//! reads, timer expiries and data events into inputs of the [`SessionMachine`],
//! carries out its actions and writes its outbox. No decisions are made here.
//!
//! One task per session, no locks. Backpressure is natural: writes are awaited, and the
//! client is not read while the machine does not want input. Every write is bounded by
//! the session's deadlines and by shutdown, so a peer that stops reading cannot hold a
//! session past its timeouts.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::WriteHalf;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, Instrument};

use super::admission::AdmissionRefused;
use super::data::DataEvent;
use super::edge::{spawn_data, PoolEdge};
use super::limits::PreloginSlot;
use super::machine::{Action, Addresses, SessionMachine};
use super::outcome::{Outcome, SessionError};
use super::replies::LocalReply;
use super::timer::Timer;
use super::upstream::connect_upstream;
use super::writes::{bounded, grace, write_backend, Interrupt, CLOSE_GRACE};
use super::SessionContext;
use crate::config::ListenerMode;
use crate::metrics::Refusal;
use crate::net::{drain_past_urgent_mark, prepare_control_socket};
use crate::protocol::addr::canonical_ip;

/// Control lines are short; a small read size keeps idle sessions cheap (two buffers each).
const READ_CHUNK: usize = 4 * 1024;

static SESSION_IDS: AtomicU64 = AtomicU64::new(1);

type Machine = SessionMachine<PoolEdge>;

/// Serves one client connection to its end.
pub async fn run_session(
    client: TcpStream,
    peer: SocketAddr,
    mode: ListenerMode,
    ctx: Arc<SessionContext>,
    shutdown: CancellationToken,
) {
    let id = SESSION_IDS.fetch_add(1, Ordering::Relaxed);
    let span = info_span!("session", id, client = %peer, backend = tracing::field::Empty);
    let metrics = Arc::clone(&ctx.metrics);
    metrics.sessions_active.inc();
    let outcome = serve(client, peer, mode, &ctx, &shutdown)
        .instrument(span)
        .await;
    metrics.sessions_active.dec();
    metrics.session_ended(outcome);
}

async fn serve(
    mut client: TcpStream,
    peer: SocketAddr,
    mode: ListenerMode,
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
    let (backend, backend_addr) = match connect_upstream(&client, mode, ctx).await {
        Ok(b) => b,
        Err(no) => {
            say_goodbye(&ctx.metrics, &mut client, no.reply).await;
            return no.outcome;
        }
    };
    prepare_control_socket(&backend, keepalive);
    tracing::Span::current().record("backend", tracing::field::display(backend_addr));
    debug!("session started");
    let backend_gauge = ctx
        .metrics
        .backend_sessions_active
        .with_label_values(&[&backend_addr.to_string()]);
    backend_gauge.inc();
    let canon = |a: SocketAddr| SocketAddr::new(canonical_ip(a.ip()), a.port());
    let unknown = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0);
    let addrs = Addresses {
        mode,
        client_ip: canonical_ip(peer.ip()),
        client_local: client.local_addr().map(canon).unwrap_or(unknown),
        backend: canon(backend_addr),
        backend_local: backend.local_addr().map(canon).unwrap_or(unknown),
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
    let outcome = pump(&mut machine, client, backend, &mut slot, ctx, shutdown).await;
    backend_gauge.dec();
    machine.stats().log_end(outcome, started.elapsed());
    outcome
}

/// The one reply of a session that never reached a backend.
async fn say_goodbye(metrics: &crate::metrics::Metrics, client: &mut TcpStream, reply: LocalReply) {
    metrics.reply(reply.code());
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        let _ = client.write_all(&reply.to_bytes()).await;
        let _ = client.shutdown().await;
    })
    .await;
}

async fn pump(
    m: &mut Machine,
    mut client: TcpStream,
    mut backend: TcpStream,
    slot: &mut PreloginSlot<'_>,
    ctx: &SessionContext,
    shutdown: &CancellationToken,
) -> Outcome {
    let max_line = ctx.config.control.max_line_length;
    let (data_tx, mut data_rx) = mpsc::unbounded_channel();
    let mut data = DataTasks {
        ctx,
        events: data_tx,
        scope: shutdown.child_token(),
        newest: None,
    };
    // Data mappings not yet in use are withdrawn when the session ends.
    let _withdraw_all = data.scope.clone().drop_guard();
    let mut closing: Option<Outcome> = None;
    let (mut noop_timer, mut deadline_timer) = (Timer::default(), Timer::default());
    let mut cbuf: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    let mut sbuf: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    let (mut cr, mut cw) = client.split();
    let (mut br, mut bw) = backend.split();
    let mut drain_seen = false;

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
        let wake = match (m.next_deadline().map(|(at, _)| at), reply_bound) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        deadline_timer.arm_early(wake);
        noop_timer.arm(m.next_keepalive());
        let mut backend_read_at = None;
        tokio::select! {
            r = cr.read_buf(&mut cbuf), if read_client => match r {
                Ok(0) => {
                    // Let the backend see the close; its own close ends its side.
                    let _ = bw.shutdown().await;
                    m.on_client_closed();
                }
                Ok(_) => match drain_past_urgent_mark(cr.as_ref(), &mut cbuf, max_line) {
                    Ok(()) => m.on_client_input(&mut cbuf, Instant::now()),
                    Err(e) => m.on_error(&SessionError::ClientRead(e)),
                },
                Err(e) => m.on_error(&SessionError::ClientRead(e)),
            },
            r = br.read_buf(&mut sbuf) => match r {
                Ok(0) => m.on_server_closed(&mut sbuf, Instant::now()),
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
        flush_backend(m, &mut bw, closing, &mut deadline_timer, shutdown).await;
        data.execute(m, &mut closing);
        if flush_client(m, &mut cw, closing, &mut deadline_timer, shutdown).await {
            if let Some(t) = backend_read_at {
                ctx.metrics
                    .reply_added_latency_seconds
                    .observe(t.elapsed().as_secs_f64());
            }
        }
        data.execute(m, &mut closing);
        if let Some(outcome) = closing {
            let _ = grace(cw.shutdown()).await;
            return outcome;
        }
    }
}

/// The session's data connections: started and withdrawn as the machine says.
struct DataTasks<'a> {
    ctx: &'a SessionContext,
    events: mpsc::UnboundedSender<DataEvent>,
    /// Parent of every data task's token; cancelled when the session ends.
    scope: CancellationToken,
    /// The newest data mapping, withdrawn when a newer one replaces it.
    newest: Option<CancellationToken>,
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
                    ));
                }
                Action::Close(o) => *closing = closing.or(Some(o)),
            }
        }
    }
}

/// Writes the backend's outbox; a failure becomes a machine input.
async fn flush_backend(
    m: &mut Machine,
    bw: &mut WriteHalf<'_>,
    closing: Option<Outcome>,
    timer: &mut Timer,
    shutdown: &CancellationToken,
) {
    if m.out.to_backend.is_empty() {
        return;
    }
    let deadline = m.next_deadline();
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
    cw: &mut WriteHalf<'_>,
    closing: Option<Outcome>,
    timer: &mut Timer,
    shutdown: &CancellationToken,
) -> bool {
    if m.out.to_client.is_empty() {
        return false;
    }
    let deadline = m.next_deadline();
    let r = match closing {
        Some(_) => grace(cw.write_all(&m.out.to_client)).await,
        None => bounded(cw.write_all(&m.out.to_client), timer, deadline, shutdown).await,
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
            let _ = grace(cw.write_all(&m.out.to_client)).await;
            m.out.to_client.clear();
        }
    }
    false
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
