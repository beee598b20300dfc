//! The async edge of a session: owns the two control sockets and the timers, turns
//! reads, timer expiries and data events into inputs of the [`SessionMachine`],
//! carries out its actions and writes its outbox. No decisions are made here.
//!
//! One task per session, no locks. Backpressure is natural: writes are awaited, and the
//! client is not read while the machine does not want input. Every write is bounded by
//! the session's deadlines and by shutdown, so a peer that stops reading cannot hold a
//! session past its timeouts.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info_span, warn, Instrument};

use super::data::DataEvent;
use super::edge::{spawn_data, PoolEdge};
use super::front::client_behind_balancer;
use super::limits::PreloginSlot;
use super::machine::{Action, Deadline, RouteRequest, SessionMachine};
use super::outcome::{Outcome, SessionError};
use super::start::{open_backend, serve, BackendHold, Front};
use super::timer::Timer;
use super::transport::{handshake, relay_opaque, SessionTls};
use super::writes::{bounded, grace, write_backend, write_flush, Interrupt};
use super::SessionContext;
use crate::config::{ListenerMode, ListenerTls};
use crate::net::drain_past_urgent_mark;
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

// `backend` is `None` until a `balance: user` machine asks for its connect
// (`Action::ConnectBackend`); `hold` then keeps that backend's lease.
#[allow(clippy::too_many_lines, clippy::too_many_arguments)]
pub(super) async fn pump(
    m: &mut Machine,
    client: MaybeTls,
    backend: Option<MaybeTls>,
    tls: SessionTls,
    front: &Front,
    hold: &mut Option<BackendHold>,
    slot: &mut PreloginSlot<'_>,
    ctx: &SessionContext,
    shutdown: &CancellationToken,
) -> Outcome {
    let max_line = ctx.config.control.max_line_length;
    let mut cbuf: Vec<u8> = Vec::with_capacity(READ_CHUNK);
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
    // A backend that is not there yet is expected (the machine asks for it); one that
    // went missing (a failed handshake took it) ends the session.
    let mut awaiting_backend = backend.is_none();
    // Data mappings not yet in use are withdrawn when the session ends.
    let _withdraw_all = data.scope.clone().drop_guard();
    let mut closing: Option<Outcome> = None;
    let (mut noop_timer, mut deadline_timer) = (Timer::default(), Timer::default());
    let mut sbuf: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    // `None` only while a handshake owns the stream (or, for the backend, before
    // `balance: user` connects it).
    let (mut client, mut backend) = (Some(client), backend);
    let mut drain_seen = false;

    let mut deadline = m.next_deadline();
    // Every write of both outboxes, with the actions each step decides.
    macro_rules! flush_both {
        () => {
            flush_all(
                m,
                client.as_mut(),
                backend.as_mut(),
                &mut data,
                &mut closing,
                &mut deadline_timer,
                shutdown,
            )
            .await
        };
    }
    // ftpgate's own greeting (`balance: user`) goes out before anything is read.
    flush_both!();
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
        let Some(cs) = client.as_mut() else {
            return closing.unwrap_or(Outcome::ClientError);
        };
        if backend.is_none() && !awaiting_backend {
            return closing.unwrap_or(Outcome::ClientError);
        }
        let mut bs = backend.as_mut();
        tokio::select! {
            r = cs.read_buf(&mut cbuf), if read_client => match r {
                Ok(0) => {
                    // Let the backend see the close; its own close ends its side.
                    if let Some(b) = bs.as_deref_mut() {
                        let _ = grace(b.shutdown()).await;
                    }
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
                    if let Some(b) = bs.as_deref_mut() {
                        let _ = grace(b.shutdown()).await;
                    }
                    m.on_client_closed();
                }
                Err(e) => m.on_error(&SessionError::ClientRead(e)),
            },
            r = read_backend(bs.as_deref_mut(), &mut sbuf) => match r {
                Ok(0) => m.on_server_closed(&mut sbuf, Instant::now()),
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof
                    && bs.as_deref().is_some_and(MaybeTls::is_tls) => {
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
        if flush_both!() {
            if let Some(t) = backend_read_at {
                ctx.metrics
                    .reply_added_latency_seconds
                    .observe(t.elapsed().as_secs_f64());
            }
        }
        // The next turn's timer: only an error changes the deadline after the writes,
        // and an error closes the session anyway (a step below recomputes it).
        deadline = m.next_deadline();

        // `balance: user`: the backend for the USER just read.
        if let Some(req) = data.upgrades.connect.take().filter(|_| closing.is_none()) {
            let mut timer = Timer::default();
            timer.arm(m.next_deadline().map(|(at, _)| at));
            let opened = match client.as_ref() {
                Some(c) => tokio::select! {
                    r = open_backend(c, front, m.client_ip(), Some(&req.user), &mut data.tls, ctx) => Some(r),
                    () = timer.fired() => None,
                    () = shutdown.cancelled() => None,
                },
                None => None,
            };
            match opened {
                Some(Ok(b)) => {
                    awaiting_backend = false;
                    backend = Some(b.stream);
                    *hold = Some(b.hold);
                    m.on_backend_connected(Ok(b.connected), Instant::now());
                }
                Some(Err(no)) => m.on_backend_connected(Err(no), Instant::now()),
                None if shutdown.is_cancelled() => m.on_shutdown(),
                None => {
                    let now = Instant::now();
                    let kind = m.next_deadline().map_or(Deadline::Login, |(_, k)| k);
                    m.on_deadline(kind, now);
                }
            }
            flush_both!();
            deadline = m.next_deadline();
        }

        // TLS upgrades, once the replies announcing them are out. Backend first: in
        // mirror mode its success is what lets ftpgate send the client its 234.
        if std::mem::take(&mut data.upgrades.backend) && closing.is_none() {
            if !sbuf.is_empty() {
                // The machine stopped framing at the 234: plain text behind it would
                // otherwise be read as replies from inside TLS (CVE-2011-0411 class).
                warn!(
                    bytes = sbuf.len(),
                    "discarding clear-text bytes the backend sent after its 234"
                );
                sbuf.clear();
            }
            let r = handshake(
                &mut backend,
                |s| s.connect(&data.tls.connector, data.tls.name.clone()),
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
            // ftpgate's own PBSZ/PROT, and a routed session's replayed USER, go now:
            // nothing else may wake this loop before the backend answers them.
            flush_both!();
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

/// Connection steps the machine asked for this turn (a backend connect, TLS), carried
/// out after the outbox is written.
#[derive(Default)]
struct Upgrades {
    connect: Option<RouteRequest>,
    client: bool,
    backend: bool,
    passthrough: bool,
}

/// Reads the backend, or waits forever while there is none yet.
async fn read_backend(bs: Option<&mut MaybeTls>, buf: &mut Vec<u8>) -> io::Result<usize> {
    match bs {
        Some(s) => s.read_buf(buf).await,
        None => std::future::pending().await,
    }
}

/// The session's data connections: started and withdrawn as the machine says; the
/// TLS steps it asks for are noted in `upgrades`.
struct DataTasks<'a> {
    ctx: &'a SessionContext,
    /// The session's TLS client towards its backend (named once it is connected).
    tls: SessionTls,
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
                        &self.tls,
                        self.preliminaries.subscribe(),
                    ));
                }
                Action::Close(o) => *closing = closing.or(Some(o)),
                Action::StartBackendTls => self.upgrades.backend = true,
                Action::StartClientTls => self.upgrades.client = true,
                Action::Passthrough => self.upgrades.passthrough = true,
                Action::TransferPreliminary => self.preliminaries.send_modify(|n| *n += 1),
                Action::ConnectBackend(req) => self.upgrades.connect = Some(req),
            }
        }
    }
}

/// Carries out the machine's actions and writes both outboxes (the backend's first),
/// under one deadline; true when something reached the client.
async fn flush_all(
    m: &mut Machine,
    client: Option<&mut MaybeTls>,
    backend: Option<&mut MaybeTls>,
    data: &mut DataTasks<'_>,
    closing: &mut Option<Outcome>,
    timer: &mut Timer,
    shutdown: &CancellationToken,
) -> bool {
    data.execute(m, closing);
    let deadline = m.next_deadline();
    flush_backend(m, backend, *closing, deadline, timer, shutdown).await;
    data.execute(m, closing);
    let delivered = flush_client(m, client, *closing, deadline, timer, shutdown).await;
    data.execute(m, closing);
    delivered
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
