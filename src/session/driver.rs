//! The async edge of a session: owns the two control sockets, frames lines, asks
//! [`ControlState`] what each line means, and starts data connections.
//!
//! One task per session, no locks: a `select!` over the client socket, the backend
//! socket, data-connection events, timers and shutdown. Backpressure is natural:
//! writes are awaited, and the client is not read while `max_pipelined_commands`
//! replies are outstanding or while a client command waits for ftpgate's own
//! data-setup command (mode translation) to be answered.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn, Instrument};

use super::data::{DataEvent, DataMode, DataPlan, Endpoint, Finished};
use super::state::{ControlState, Disposition, Injected, Origin};
use crate::balancer::{Balancer, ConnectError};
use crate::config::{BackendDataMode, Config, ListenerMode, PassiveTarget};
use crate::dataport::{LeaseError, PortPool};
use crate::metrics::Metrics;
use crate::net::{
    connect_from, is_local_ip, note_exhaustion, original_destination, prepare_control_socket,
    send_urgent, LocalResource,
};
use crate::protocol::addr::{
    canonical_ip, find_epsv_port, find_pasv_tuple, format_eprt_arg, format_pasv_tuple,
    parse_eprt_arg, parse_port_arg, AddrError,
};
use crate::protocol::command::{parse_command, redact_for_log, Verb};
use crate::protocol::line::{find_line, trim_eol, LineError};
use crate::protocol::logtext::LogText;
use crate::protocol::reply::{parse_code, ReplyLine};
use crate::protocol::rewrite::{rewrite_227, rewrite_229};

/// Longest reply line accepted from a backend. Larger than the client bound because
/// `STAT` listings carry long file names.
const MAX_REPLY_LINE: usize = 16 * 1024;
/// Control lines are short; a small read size keeps idle sessions cheap (two buffers each).
const READ_CHUNK: usize = 4 * 1024;
/// Keepalive NOOPs a server may leave unanswered (vsftpd answers them only after the
/// transfer) before ftpgate stops adding more.
const MAX_UNANSWERED_NOOPS: usize = 256;
/// Longest user name kept for the access log.
const MAX_LOGGED_USER: usize = 64;
/// ftpgate itself is out of descriptors or buffers: not the backends' fault.
const LOCAL_RESOURCE_421: &[u8] = b"421 Service not available, local resource limit.\r\n";

static SESSION_IDS: AtomicU64 = AtomicU64::new(1);

/// What every session shares.
#[derive(Debug)]
pub struct SessionContext {
    pub config: Arc<Config>,
    /// Ports for client-facing data listeners.
    pub pool: Arc<PortPool>,
    /// Ports for backend-facing data listeners (active mode); may be `pool` itself.
    pub active_pool: Arc<PortPool>,
    pub balancer: Balancer,
    /// Every bound listener, for loop protection in transparent mode.
    pub listen_addrs: Vec<SocketAddr>,
    pub metrics: Arc<Metrics>,
}

/// How a session ended; a bounded metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Closed,
    BackendUnavailable,
    ClientError,
    BackendError,
    Timeout,
    Shutdown,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Closed => "closed",
            Outcome::BackendUnavailable => "backend_unavailable",
            Outcome::ClientError => "client_error",
            Outcome::BackendError => "backend_error",
            Outcome::Timeout => "timeout",
            Outcome::Shutdown => "shutdown",
        }
    }
}

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
    let outcome = serve(client, peer, mode, ctx, shutdown)
        .instrument(span)
        .await;
    metrics.sessions_active.dec();
    metrics
        .sessions_total
        .with_label_values(&[outcome.label()])
        .inc();
}

/// Connects the session's server side: a backend from the pool (reverse), or the
/// destination the client was going to before the gateway redirected it (transparent).
async fn connect_upstream(
    client: &TcpStream,
    mode: ListenerMode,
    ctx: &SessionContext,
) -> Result<(TcpStream, SocketAddr), &'static [u8]> {
    let timeout = ctx.config.timeouts.backend_connect;
    if mode == ListenerMode::Reverse {
        return ctx
            .balancer
            .connect(timeout, &ctx.metrics)
            .await
            .map_err(|e| match e {
                // Counted and logged (rate-limited) where it was detected.
                ConnectError::LocalResource { .. } => LOCAL_RESOURCE_421,
                ConnectError::NoBackend { .. } => {
                    warn!(error = %e, "no backend for session");
                    &b"421 Service not available: no backend reachable.\r\n"[..]
                }
            });
    }
    let dst = original_destination(client).map_err(|e| {
        warn!(error = %e, "cannot recover the original destination");
        &b"421 Service not available: unknown destination.\r\n"[..]
    })?;
    let dst = canon_sockaddr(dst);
    // A connection made straight to a transparent listener, or redirected back to one,
    // would otherwise connect to ftpgate itself, again and again.
    let own_port = ctx.listen_addrs.iter().any(|l| l.port() == dst.port());
    if own_port && is_local_ip(dst.ip()) {
        ctx.metrics.refuse("loop");
        warn!(destination = %dst, "refusing to connect to one of ftpgate's own listeners");
        return Err(b"421 Service not available: destination is this gateway.\r\n");
    }
    let started = Instant::now();
    match connect_from(dst, None, timeout).await {
        Ok(s) => {
            ctx.metrics
                .backend_connect_duration_seconds
                .observe(started.elapsed().as_secs_f64());
            Ok((s, dst))
        }
        Err(e) => {
            if let Some(resource) = LocalResource::of(&e) {
                note_exhaustion(&ctx.metrics, resource, "upstream connect", &e);
                return Err(LOCAL_RESOURCE_421);
            }
            if e.kind() == std::io::ErrorKind::TimedOut {
                ctx.metrics.timeout("backend_connect");
            }
            warn!(destination = %dst, error = %e, "original destination unreachable");
            Err(b"421 Service not available: destination unreachable.\r\n")
        }
    }
}

async fn serve(
    mut client: TcpStream,
    peer: SocketAddr,
    mode: ListenerMode,
    ctx: Arc<SessionContext>,
    shutdown: CancellationToken,
) -> Outcome {
    let started = Instant::now();
    let keepalive = ctx.config.keepalive.tcp_params();
    prepare_control_socket(&client, keepalive);
    let (backend, backend_addr) = match connect_upstream(&client, mode, &ctx).await {
        Ok(b) => b,
        Err(reply) => {
            ctx.metrics.replies_total.with_label_values(&["421"]).inc();
            let _ = client.write_all(reply).await;
            let _ = client.shutdown().await;
            return Outcome::BackendUnavailable;
        }
    };
    prepare_control_socket(&backend, keepalive);
    tracing::Span::current().record("backend", tracing::field::display(backend_addr));
    debug!("session started");
    let backend_label = backend_addr.to_string();
    let backend_gauge = ctx
        .metrics
        .backend_sessions_active
        .with_label_values(&[&backend_label]);
    backend_gauge.inc();
    let (data_tx, data_rx) = mpsc::unbounded_channel();
    let fallback = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0);
    let mut session = Session {
        ctx: &ctx,
        mode,
        state: ControlState::new(ctx.config.rewrite_passive),
        client_ip: canonical_ip(peer.ip()),
        client_local: client.local_addr().map(canon_sockaddr).unwrap_or(fallback),
        backend_addr,
        backend_local: backend.local_addr().map(canon_sockaddr).unwrap_or(fallback),
        to_client: Vec::with_capacity(1024),
        to_backend: Vec::with_capacity(1024),
        urgent_at: None,
        cancel: shutdown.child_token(),
        newest_plan: None,
        data_tx,
        next_data_id: 0,
        epsv_all: false,
        client_port_target: None,
        client_side_waiting: None,
        setup: None,
        held: None,
        last_transfer: None,
        stats: Stats::default(),
    };
    let outcome = session.pump(client, backend, data_rx, &shutdown).await;
    session.cancel.cancel();
    backend_gauge.dec();
    let s = &session.stats;
    info!(
        target: "ftpgate::access",
        event = "session",
        user = %LogText::from_str(s.user.as_deref().unwrap_or("-")),
        commands = s.commands,
        bytes_up = s.bytes_up,
        bytes_down = s.bytes_down,
        transfers = s.transfers,
        duration_ms = started.elapsed().as_millis() as u64,
        outcome = outcome.label(),
        "session ended"
    );
    outcome
}

fn canon_sockaddr(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(canonical_ip(a.ip()), a.port())
}

#[derive(Debug, Default)]
struct Stats {
    user: Option<String>,
    commands: u64,
    bytes_up: u64,
    bytes_down: u64,
    transfers: u64,
}

/// ftpgate's own data-setup command towards the backend, awaiting its reply.
#[derive(Debug)]
enum Setup {
    /// Passive translation: EPSV, falling back to PASV if the backend refuses it.
    Epsv {
        client: SocketAddr,
    },
    Pasv {
        client: SocketAddr,
    },
    /// Active translation: PORT/EPRT naming this backend-side listener.
    Port {
        client: Endpoint,
        backend: Endpoint,
    },
}

struct Session<'a> {
    ctx: &'a SessionContext,
    mode: ListenerMode,
    state: ControlState,
    client_ip: IpAddr,
    /// Local address of the client control connection: where clients reach us.
    client_local: SocketAddr,
    backend_addr: SocketAddr,
    /// Local address of the backend control connection: where backends reach us.
    backend_local: SocketAddr,
    to_client: Vec<u8>,
    to_backend: Vec<u8>,
    /// Index in `to_backend` of a byte to send as TCP urgent data (Telnet Synch).
    urgent_at: Option<usize>,
    /// Cancelled when the session ends: withdraws data mappings not yet in use.
    cancel: CancellationToken,
    /// The newest data mapping not yet in use; a newer PASV/EPSV/PORT/EPRT withdraws it,
    /// as the server itself drops its previous listener.
    newest_plan: Option<CancellationToken>,
    data_tx: mpsc::UnboundedSender<DataEvent>,
    next_data_id: u64,
    epsv_all: bool,
    /// Passive translation: where the client's PORT/EPRT asked data to go.
    client_port_target: Option<SocketAddr>,
    /// Active translation: the client-facing listener announced in our local 227/229.
    client_side_waiting: Option<Endpoint>,
    setup: Option<Setup>,
    /// The client's transfer command, held until `setup` is answered.
    held: Option<(Vec<u8>, Verb)>,
    last_transfer: Option<Verb>,
    stats: Stats,
}

/// Why the pump must stop after the current batch.
struct Stop(Outcome);

impl Session<'_> {
    async fn pump(
        &mut self,
        mut client: TcpStream,
        mut backend: TcpStream,
        mut data_rx: mpsc::UnboundedReceiver<DataEvent>,
        shutdown: &CancellationToken,
    ) -> Outcome {
        let cfg = Arc::clone(&self.ctx.config);
        let max_line = cfg.max_line_length;
        let max_pipelined = cfg.max_pipelined_commands;
        let noop_every = cfg.keepalive.noop_interval;
        let session_start = tokio::time::Instant::now();
        let mut last_activity = session_start;
        let mut active_data: usize = 0;
        let mut next_noop: Option<tokio::time::Instant> = None;
        // Two timers for the whole session, re-armed only when their deadline moves:
        // creating a timer per loop turn showed in profiles of the control path.
        let mut noop_timer = Timer::new();
        let mut deadline_timer = Timer::new();
        let mut cbuf: Vec<u8> = Vec::with_capacity(READ_CHUNK);
        let mut sbuf: Vec<u8> = Vec::with_capacity(READ_CHUNK);
        let (mut cr, mut cw) = client.split();
        let (mut br, mut bw) = backend.split();

        loop {
            let read_client = self.state.outstanding() < max_pipelined && !self.holding();
            if read_client {
                cbuf.reserve(READ_CHUNK);
            }
            sbuf.reserve(READ_CHUNK);
            let (deadline, deadline_kind) =
                self.next_deadline(session_start, last_activity, active_data);
            noop_timer.arm(next_noop);
            deadline_timer.arm(deadline);
            let mut backend_read_at = None;
            tokio::select! {
                r = cr.read_buf(&mut cbuf), if read_client => match r {
                    Ok(0) => {
                        debug!("client closed control connection");
                        // Let the backend see the close; its own close ends its side.
                        let _ = bw.shutdown().await;
                        return Outcome::Closed;
                    }
                    Ok(_) => {
                        last_activity = tokio::time::Instant::now();
                        if let Err(e) = drain_past_urgent_mark(cr.as_ref(), &mut cbuf, max_line) {
                            debug!(error = %e, "client read failed");
                            return Outcome::ClientError;
                        }
                    }
                    Err(e) => {
                        debug!(error = %e, "client read failed");
                        return Outcome::ClientError;
                    }
                },
                r = br.read_buf(&mut sbuf) => match r {
                    Ok(0) => {
                        debug!("backend closed control connection");
                        // Complete replies that arrived before the close still go out.
                        let _ = self.process_backend(&mut sbuf);
                        let _ = cw.write_all(&self.to_client).await;
                        let _ = cw.shutdown().await;
                        return Outcome::Closed;
                    }
                    Ok(_) => backend_read_at = Some(Instant::now()),
                    Err(e) => {
                        debug!(error = %e, "backend read failed");
                        self.count_reply(421);
                        let _ = cw.write_all(b"421 Connection to server lost.\r\n").await;
                        return Outcome::BackendError;
                    }
                },
                Some(ev) = data_rx.recv() => match ev {
                    DataEvent::Started { .. } => active_data += 1,
                    DataEvent::Finished(f) => {
                        if f.established {
                            active_data = active_data.saturating_sub(1);
                            self.transfer_finished(&f);
                        }
                        last_activity = tokio::time::Instant::now();
                    }
                },
                () = noop_timer.fired() => {
                    next_noop = None;
                    self.inject_keepalive();
                },
                () = deadline_timer.fired() => {
                    let (kind, text): (&'static str, &[u8]) = match deadline_kind {
                        Deadline::Login => ("login", b"421 Login timeout; closing control connection.\r\n"),
                        Deadline::Idle => ("idle", b"421 Idle timeout; closing control connection.\r\n"),
                    };
                    self.ctx.metrics.timeout(kind);
                    info!(kind, "session timeout");
                    self.count_reply(421);
                    let _ = cw.write_all(text).await;
                    let _ = cw.shutdown().await;
                    return Outcome::Timeout;
                }
                () = shutdown.cancelled() => {
                    self.count_reply(421);
                    let _ = cw.write_all(b"421 Service shutting down, closing control connection.\r\n").await;
                    return Outcome::Shutdown;
                }
            }
            let stop = self
                .process_backend(&mut sbuf)
                .and_then(|()| self.process_client(&mut cbuf, max_line, max_pipelined));
            // A running transfer arms the keepalive; its end disarms it.
            if noop_every.is_zero() || self.state.running_transfer().is_none() {
                next_noop = None;
            } else if next_noop.is_none() {
                next_noop = Some(tokio::time::Instant::now() + noop_every);
            }
            if let Err(o) = self.flush_backend(&mut bw).await {
                self.count_reply(421);
                let _ = cw.write_all(b"421 Connection to server lost.\r\n").await;
                return o;
            }
            if !self.to_client.is_empty() {
                if let Err(e) = cw.write_all(&self.to_client).await {
                    debug!(error = %e, "client write failed");
                    return Outcome::ClientError;
                }
                self.to_client.clear();
                if let Some(t) = backend_read_at {
                    self.ctx
                        .metrics
                        .reply_added_latency_seconds
                        .observe(t.elapsed().as_secs_f64());
                }
            }
            if let Err(Stop(o)) = stop {
                let _ = cw.shutdown().await;
                return o;
            }
        }
    }

    /// Client lines stay unread while ftpgate's own data-setup command is outstanding:
    /// the command it prepares for is held, and later ones must not overtake it.
    fn holding(&self) -> bool {
        self.held.is_some() || self.setup.is_some()
    }

    fn next_deadline(
        &self,
        start: tokio::time::Instant,
        last_activity: tokio::time::Instant,
        active_data: usize,
    ) -> (Option<tokio::time::Instant>, Deadline) {
        let t = &self.ctx.config.timeouts;
        if !self.state.logged_in() {
            return (Some(start + t.login), Deadline::Login);
        }
        let busy = active_data > 0 || self.state.transfer_outstanding() || self.holding();
        if t.idle.is_zero() || busy {
            return (None, Deadline::Idle);
        }
        (Some(last_activity + t.idle), Deadline::Idle)
    }

    fn inject_keepalive(&mut self) {
        let unanswered = self.state.outstanding() - self.state.client_outstanding();
        if !self.state.keepalive_allowed() || unanswered >= MAX_UNANSWERED_NOOPS {
            return;
        }
        self.to_backend.extend_from_slice(b"NOOP\r\n");
        self.state.injected(Injected::Noop);
        self.ctx.metrics.keepalive_noops_total.inc();
        debug!("keepalive NOOP sent to backend");
    }

    /// Writes pending backend bytes, sending one byte as urgent data where a Telnet
    /// Synch was relayed.
    async fn flush_backend(
        &mut self,
        bw: &mut tokio::net::tcp::WriteHalf<'_>,
    ) -> Result<(), Outcome> {
        if self.to_backend.is_empty() {
            return Ok(());
        }
        let result = match self.urgent_at.take() {
            Some(i) if i < self.to_backend.len() => {
                let (before, rest) = self.to_backend.split_at(i);
                async {
                    bw.write_all(before).await?;
                    send_urgent(bw.as_ref(), rest[0]).await?;
                    bw.write_all(&rest[1..]).await
                }
                .await
            }
            _ => bw.write_all(&self.to_backend).await,
        };
        self.to_backend.clear();
        result.map_err(|e| {
            debug!(error = %e, "backend write failed");
            Outcome::BackendError
        })
    }

    /// Counts one reply sent to the client, by code.
    fn count_reply(&self, code: u16) {
        self.ctx
            .metrics
            .replies_total
            .with_label_values(&[code_label(code)])
            .inc();
    }

    fn transfer_finished(&mut self, f: &Finished) {
        let direction = match self.last_transfer {
            Some(Verb::Retr) => "download",
            Some(Verb::Stor | Verb::Stou | Verb::Appe) => "upload",
            _ => "listing",
        };
        let m = &self.ctx.metrics;
        m.data_connections_total
            .with_label_values(&[f.mode.label(), direction])
            .inc();
        m.transfer_duration_seconds
            .with_label_values(&[direction])
            .observe(f.duration.as_secs_f64());
        self.stats.transfers += 1;
        self.stats.bytes_up += f.client_to_backend;
        self.stats.bytes_down += f.backend_to_client;
        info!(
            target: "ftpgate::access",
            event = "transfer",
            verb = self.last_transfer.map_or("-", Verb::as_str),
            direction,
            mode = f.mode.label(),
            bytes_up = f.client_to_backend,
            bytes_down = f.backend_to_client,
            duration_ms = f.duration.as_millis() as u64,
            "data transfer done"
        );
    }

    /// Handles every complete client line in `buf`, as far as pipelining allows.
    fn process_client(
        &mut self,
        buf: &mut Vec<u8>,
        max_line: usize,
        max_pipelined: usize,
    ) -> Result<(), Stop> {
        let mut used = 0;
        let result = loop {
            if self.state.outstanding() >= max_pipelined || self.holding() {
                break Ok(());
            }
            match find_line(&buf[used..], max_line) {
                Ok(Some(n)) => {
                    let range = used..used + n;
                    used += n;
                    self.on_client_line(&buf[range]);
                }
                Ok(None) => break Ok(()),
                Err(LineError::TooLong { max }) => {
                    self.ctx.metrics.refuse("line_too_long");
                    warn!(max, "client line too long; closing session");
                    self.push_final_reply(
                        b"500 Command line too long; closing control connection.\r\n",
                    );
                    break Err(Stop(Outcome::ClientError));
                }
            }
        };
        buf.drain(..used);
        self.emit_local_replies();
        result
    }

    fn refuse(&mut self, reason: &'static str, reply: &str) {
        self.ctx.metrics.refuse(reason);
        info!(reason, reply, "command refused");
        self.state
            .answer_locally(format!("{reply}\r\n").into_bytes());
    }

    fn on_client_line(&mut self, line: &[u8]) {
        let Ok(cmd) = parse_command(line) else {
            debug!("empty command line");
            self.state
                .answer_locally(b"500 Syntax error, command unrecognized.\r\n".to_vec());
            return;
        };
        self.stats.commands += 1;
        self.ctx
            .metrics
            .commands_total
            .with_label_values(&[cmd.verb.as_str()])
            .inc();
        debug!(command = %LogText::from_str(&redact_for_log(line)), "client command");
        let mode = self.ctx.config.backend_data_mode;
        match cmd.verb {
            // RFC 1639: a 228 passed through would leak the backend's address; refusing
            // makes clients fall back to EPSV/PASV.
            Verb::Lpsv | Verb::Lprt => self.refuse(
                "lprt_lpsv",
                "502 Command not implemented; use EPSV or EPRT.",
            ),
            // RFC 2428 §4: after EPSV ALL only EPSV may set up data connections.
            Verb::Pasv | Verb::Port | Verb::Eprt if self.epsv_all => {
                self.refuse("epsv_all", "500 EPSV ALL in effect; only EPSV is allowed.")
            }
            Verb::Epsv if cmd.arg.eq_ignore_ascii_case(b"ALL") => {
                self.epsv_all = true;
                if mode == BackendDataMode::Active {
                    // Towards the backend ftpgate keeps using PORT/EPRT.
                    self.state
                        .answer_locally(b"200 EPSV ALL command successful.\r\n".to_vec());
                } else {
                    self.forward(line, cmd.verb);
                }
            }
            Verb::Port | Verb::Eprt => self.on_active_command(cmd.verb, cmd.arg, line, mode),
            Verb::Pasv | Verb::Epsv if mode == BackendDataMode::Active => {
                self.answer_passive_locally(cmd.verb)
            }
            v if v.is_transfer() => self.on_transfer_command(line, v, mode),
            // After `234` the control channel becomes TLS, which a line relay cannot
            // carry (and would then fail with a confusing 421). Until ftpgate terminates
            // TLS itself, refuse plainly: clients that require TLS stop, clients that
            // merely prefer it continue in plain text.
            Verb::Auth => self.refuse(
                "auth_tls",
                "502 AUTH is not supported through this gateway.",
            ),
            Verb::User => {
                let name = String::from_utf8_lossy(cmd.arg);
                self.stats.user = Some(name.chars().take(MAX_LOGGED_USER).collect());
                self.forward(line, cmd.verb);
            }
            Verb::Abor | Verb::Stat => {
                // RFC 959 §4.1.3: relay the Telnet Synch the client sent, so servers
                // that watch for urgent data notice the command during a transfer.
                if let Some(dm) = find_synch(line) {
                    self.urgent_at = Some(self.to_backend.len() + dm);
                }
                self.forward(line, cmd.verb);
            }
            verb => self.forward(line, verb),
        }
    }

    fn forward(&mut self, line: &[u8], verb: Verb) {
        // RFC 1123 §4.1.2.10: accept bare LF, but always send CRLF.
        self.to_backend.extend_from_slice(trim_eol(line));
        self.to_backend.extend_from_slice(b"\r\n");
        self.state.forwarded(verb);
    }

    fn emit_local_replies(&mut self) {
        while let Some(reply) = self.state.next_local_reply() {
            if let Some(code) = parse_code(&reply) {
                self.count_reply(code.0);
            }
            self.to_client.extend_from_slice(&reply);
        }
    }

    /// A reply of ftpgate's own that goes out at once (the session is ending).
    fn push_final_reply(&mut self, reply: &[u8]) {
        if let Some(code) = parse_code(reply) {
            self.count_reply(code.0);
        }
        self.to_client.extend_from_slice(reply);
    }

    /// Where the client's data connections may come to: the client's own address, or
    /// one of `active.allow_foreign` (deliberate exceptions). Anything else is the FTP
    /// bounce attack (RFC 2577 §3).
    fn check_active_target(&mut self, verb: Verb, arg: &[u8]) -> Result<SocketAddr, ()> {
        let parsed = match verb {
            Verb::Port => parse_port_arg(arg).map(SocketAddr::V4),
            _ => parse_eprt_arg(arg),
        };
        let target = match parsed {
            Ok(t) => t,
            Err(AddrError::UnsupportedProtocol) => {
                self.refuse(
                    "bad_address",
                    "522 Network protocol not supported, use (1,2)",
                );
                return Err(());
            }
            Err(_) => {
                self.refuse(
                    "bad_address",
                    &format!("501 Syntax error in {} arguments.", verb.as_str()),
                );
                return Err(());
            }
        };
        let ip = canonical_ip(target.ip());
        if target.port() == 0 || ip.is_unspecified() {
            self.refuse(
                "bad_address",
                &format!("501 {} names no usable address.", verb.as_str()),
            );
            return Err(());
        }
        let allowed = ip == self.client_ip
            || self
                .ctx
                .config
                .active
                .allow_foreign
                .iter()
                .any(|n| n.contains(&ip));
        if !allowed {
            warn!(verb = verb.as_str(), target = %target, "bounce attempt refused: data address is not the client's");
            self.refuse(
                "bounce",
                &format!(
                    "500 Illegal {} command: the address must be your own.",
                    verb.as_str()
                ),
            );
            return Err(());
        }
        Ok(SocketAddr::new(ip, target.port()))
    }

    fn on_active_command(&mut self, verb: Verb, arg: &[u8], line: &[u8], mode: BackendDataMode) {
        let Ok(target) = self.check_active_target(verb, arg) else {
            return;
        };
        self.withdraw_newest_plan();
        self.client_side_waiting = None;
        if mode == BackendDataMode::Passive {
            // The backend will be asked for EPSV when the transfer command comes.
            self.client_port_target = Some(target);
            self.state.answer_locally(
                format!("200 {} command successful.\r\n", verb.as_str()).into_bytes(),
            );
            return;
        }
        let (backend_side, ours) = match self.backend_side_listener() {
            Ok(x) => x,
            Err(reason) => {
                // The backend was never told: answer in its stead.
                self.refuse(
                    "data_port",
                    &format!("425 Can't prepare data connection: {reason}."),
                );
                return;
            }
        };
        let plan = DataPlan {
            id: self.data_id(),
            mode: DataMode::Active,
            client: self.client_connect_endpoint(target),
            backend: backend_side,
            accept_timeout: self.ctx.config.timeouts.data_connect,
            connect_timeout: self.ctx.config.timeouts.backend_connect,
            idle_timeout: self.data_idle(),
        };
        self.spawn_plan(plan);
        let (cmd, kind) = active_command(verb, self.backend_announce(ours));
        debug!(original = %LogText::from_str(&redact_for_log(line)), rewritten = %cmd.trim_end(), "active command rewritten");
        self.ctx
            .metrics
            .rewrites_total
            .with_label_values(&[kind])
            .inc();
        self.to_backend.extend_from_slice(cmd.as_bytes());
        self.state.forwarded(verb);
    }

    /// A listener on ftpgate's backend-side address for a backend's active-mode data
    /// connection, accepting only that backend.
    fn backend_side_listener(&mut self) -> Result<(Endpoint, SocketAddr), String> {
        let ip = self.backend_local.ip();
        let (lease, listener) = self
            .ctx
            .active_pool
            .bind(ip)
            .map_err(|e| self.lease_error(e))?;
        let ours = SocketAddr::new(ip, lease.port());
        Ok((
            Endpoint::Accept {
                listener,
                lease,
                expect: canonical_ip(self.backend_addr.ip()),
            },
            ours,
        ))
    }

    /// What ftpgate names in PORT/EPRT for a backend-side listener at `ours`. On a
    /// gateway the server is on the internet: name the public address when one is
    /// configured (ftpgate itself may sit behind NAT); in reverse mode the backend
    /// reaches ftpgate on the private side, at the listener's own address.
    fn backend_announce(&self, ours: SocketAddr) -> SocketAddr {
        match (self.mode, self.ctx.config.public_v4(), ours) {
            (ListenerMode::Transparent, Some(public), SocketAddr::V4(_)) => {
                SocketAddr::new(IpAddr::V4(public), ours.port())
            }
            _ => ours,
        }
    }

    fn client_connect_endpoint(&self, target: SocketAddr) -> Endpoint {
        let port = self.ctx.config.active.source_port;
        // Reverse: data comes from the address the client connected to. Transparent: that
        // address may be the server's (TPROXY), so the kernel picks the LAN address.
        let ip = match self.mode {
            ListenerMode::Reverse => self.client_local.ip(),
            ListenerMode::Transparent if target.is_ipv4() => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            ListenerMode::Transparent => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
        };
        let local =
            (port != 0 || self.mode == ListenerMode::Reverse).then_some(SocketAddr::new(ip, port));
        Endpoint::Connect { target, local }
    }

    fn lease_error(&self, e: LeaseError) -> String {
        if let LeaseError::Exhausted(n) = e {
            self.ctx.metrics.data_port_exhausted_total.inc();
            warn!(ports = n, "data-port range exhausted");
        }
        e.to_string()
    }

    fn data_idle(&self) -> Option<std::time::Duration> {
        let d = self.ctx.config.timeouts.data_idle;
        (!d.is_zero()).then_some(d)
    }

    fn data_id(&mut self) -> u64 {
        self.next_data_id += 1;
        self.next_data_id
    }

    fn withdraw_newest_plan(&mut self) {
        if let Some(previous) = self.newest_plan.take() {
            previous.cancel();
        }
    }

    fn spawn_plan(&mut self, plan: DataPlan) {
        self.withdraw_newest_plan();
        let cancel = self.cancel.child_token();
        self.newest_plan = Some(cancel.clone());
        tokio::spawn(
            plan.run(cancel, Arc::clone(&self.ctx.metrics), self.data_tx.clone())
                .instrument(tracing::Span::current()),
        );
    }

    /// Active translation: the client asked for passive mode, the backend gets
    /// PORT/EPRT later. The client-facing listener is announced now.
    fn answer_passive_locally(&mut self, verb: Verb) {
        self.withdraw_newest_plan();
        self.client_port_target = None;
        let announce = match verb {
            Verb::Pasv => self.announce_v4().map(IpAddr::V4),
            _ => Some(self.client_local.ip()),
        };
        let Some(announce) = announce else {
            self.refuse(
                "no_ipv4",
                "425 Can't open passive connection: no IPv4 address to announce; use EPSV.",
            );
            return;
        };
        let (endpoint, port) = match self.client_side_listener(verb) {
            Ok(x) => x,
            Err(reason) => {
                self.refuse(
                    "data_port",
                    &format!("425 Can't open passive connection: {reason}."),
                );
                return;
            }
        };
        self.client_side_waiting = Some(endpoint);
        let reply = match (verb, announce) {
            (Verb::Pasv, IpAddr::V4(v4)) => format!(
                "227 Entering Passive Mode ({}).\r\n",
                format_pasv_tuple(SocketAddrV4::new(v4, port))
            ),
            _ => format!("229 Entering Extended Passive Mode (|||{port}|)\r\n"),
        };
        self.state.answer_locally(reply.into_bytes());
    }

    /// The IPv4 address clients are told to connect to in a `227`. In reverse mode
    /// clients come from the internet: the public address. On a gateway they are on the
    /// LAN and reach ftpgate where their control connection did.
    fn announce_v4(&self) -> Option<Ipv4Addr> {
        let local = match self.client_local.ip() {
            IpAddr::V4(v4) => Some(v4),
            IpAddr::V6(_) => None,
        };
        match self.mode {
            ListenerMode::Reverse => self.ctx.config.public_v4().or(local),
            ListenerMode::Transparent => local,
        }
    }

    /// A client-facing listener for a passive data connection, accepting only the
    /// control client. A `227` listener must be IPv4 even for an IPv6 control connection.
    fn client_side_listener(&mut self, verb: Verb) -> Result<(Endpoint, u16), String> {
        let bind_ip = match (verb, self.client_local.ip()) {
            (Verb::Pasv, IpAddr::V6(_)) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            (_, ip) => ip,
        };
        let (lease, listener) = self
            .ctx
            .pool
            .bind(bind_ip)
            .map_err(|e| self.lease_error(e))?;
        let port = lease.port();
        Ok((
            Endpoint::Accept {
                listener,
                lease,
                expect: self.client_ip,
            },
            port,
        ))
    }

    fn on_transfer_command(&mut self, line: &[u8], verb: Verb, mode: BackendDataMode) {
        self.last_transfer = Some(verb);
        match mode {
            BackendDataMode::Passive => {
                if let Some(client) = self.client_port_target.take() {
                    self.held = Some((line.to_vec(), verb));
                    self.setup = Some(Setup::Epsv { client });
                    self.inject_setup(b"EPSV\r\n");
                    return;
                }
            }
            BackendDataMode::Active => {
                if let Some(client) = self.client_side_waiting.take() {
                    match self.backend_side_listener() {
                        Ok((backend, ours)) => {
                            self.held = Some((line.to_vec(), verb));
                            let (cmd, kind) = active_command(
                                if ours.is_ipv4() {
                                    Verb::Port
                                } else {
                                    Verb::Eprt
                                },
                                ours,
                            );
                            self.ctx
                                .metrics
                                .rewrites_total
                                .with_label_values(&[kind])
                                .inc();
                            self.setup = Some(Setup::Port { client, backend });
                            self.inject_setup(cmd.as_bytes());
                        }
                        Err(reason) => self.refuse(
                            "data_port",
                            &format!("425 Can't open data connection: {reason}."),
                        ),
                    }
                    return;
                }
            }
            BackendDataMode::Same => {}
        }
        self.forward(line, verb);
    }

    fn inject_setup(&mut self, cmd: &[u8]) {
        debug!(command = %LogText(trim_eol(cmd)), "data-setup command sent to backend");
        self.to_backend.extend_from_slice(cmd);
        self.state.injected(Injected::DataSetup);
    }

    /// The backend answered ftpgate's data-setup command: open the data connection and
    /// release the held transfer command, or answer the client in the backend's stead.
    fn on_setup_reply(&mut self, line: &[u8], code: u16) {
        let Some(setup) = self.setup.take() else {
            return;
        };
        let plan = match setup {
            Setup::Epsv { client } if code == 229 => find_epsv_port(line)
                .ok()
                .map(|p| SocketAddr::new(self.backend_addr.ip(), p.port))
                .map(|b| {
                    (
                        self.client_connect_endpoint(client),
                        self.backend_connect(b),
                    )
                }),
            Setup::Epsv { client } if code >= 500 && self.backend_addr.is_ipv4() => {
                // Older servers lack EPSV (RFC 2428 is optional): fall back to PASV.
                self.setup = Some(Setup::Pasv { client });
                self.inject_setup(b"PASV\r\n");
                return;
            }
            Setup::Pasv { client } if code == 227 => find_pasv_tuple(line).ok().map(|t| {
                let b = self.passive_target(t.addr);
                (
                    self.client_connect_endpoint(client),
                    self.backend_connect(b),
                )
            }),
            Setup::Port { client, backend } if (200..300).contains(&code) => {
                Some((client, backend))
            }
            _ => None,
        };
        let Some((held_line, verb)) = self.held.take() else {
            return;
        };
        match plan {
            Some((client, backend)) => {
                let mode = if matches!(client, Endpoint::Accept { .. }) {
                    DataMode::Passive
                } else {
                    DataMode::Active
                };
                let plan = DataPlan {
                    id: self.data_id(),
                    mode,
                    client,
                    backend,
                    accept_timeout: self.ctx.config.timeouts.data_connect,
                    connect_timeout: self.ctx.config.timeouts.backend_connect,
                    idle_timeout: self.data_idle(),
                };
                self.spawn_plan(plan);
                self.forward(&held_line, verb);
            }
            None => {
                warn!(code, reply = %LogText(trim_eol(line)), "backend refused data setup");
                self.state
                    .answer_locally(b"425 Can't open data connection.\r\n".to_vec());
            }
        }
    }

    fn backend_connect(&self, target: SocketAddr) -> Endpoint {
        Endpoint::Connect {
            target,
            local: Some(SocketAddr::new(self.backend_local.ip(), 0)),
        }
    }

    /// Handles every complete backend line in `buf`.
    fn process_backend(&mut self, buf: &mut Vec<u8>) -> Result<(), Stop> {
        let mut used = 0;
        let result = loop {
            match find_line(&buf[used..], MAX_REPLY_LINE) {
                Ok(Some(n)) => {
                    let range = used..used + n;
                    used += n;
                    if let Err(stop) = self.on_backend_line(&buf[range]) {
                        break Err(stop);
                    }
                }
                Ok(None) => break Ok(()),
                Err(LineError::TooLong { .. }) => {
                    warn!("backend reply line too long; closing session");
                    self.push_final_reply(
                        b"421 Invalid reply from server; closing control connection.\r\n",
                    );
                    break Err(Stop(Outcome::BackendError));
                }
            }
        };
        buf.drain(..used);
        result
    }

    fn on_backend_line(&mut self, line: &[u8]) -> Result<(), Stop> {
        let outcome = match self.state.on_server_line(line) {
            Ok(o) => o,
            Err(e) => {
                warn!(error = %e, line = %LogText(trim_eol(line)), "malformed reply from backend; closing session");
                self.push_final_reply(
                    b"421 Invalid reply from server; closing control connection.\r\n",
                );
                return Err(Stop(Outcome::BackendError));
            }
        };
        // The code the client receives for a reply ending here, if it receives one.
        let mut sent = outcome.ended.map(|e| e.code.0);
        match outcome.disposition {
            Disposition::Forward => self.push_reply_line(line),
            Disposition::Swallow => sent = None,
            Disposition::Intercept => {
                sent = None;
                if let Some(ended) = outcome.ended {
                    if ended.code.is_final() {
                        self.on_setup_reply(line, ended.code.0);
                    }
                }
            }
            Disposition::RewritePasv | Disposition::RewriteEpsv => {
                let single = matches!(outcome.line, ReplyLine::Single(_));
                let from_client = matches!(
                    outcome.ended.map(|e| e.origin),
                    Some(Some(Origin::Client(_))) | None
                );
                if from_client && !self.rewrite_passive(line, outcome.disposition, single) && single
                {
                    sent = Some(425);
                } else if !from_client {
                    self.push_reply_line(line);
                }
            }
        }
        if let Some(code) = sent {
            self.count_reply(code);
        }
        if outcome.ended.is_some() {
            self.emit_local_replies();
        }
        Ok(())
    }

    fn push_reply_line(&mut self, line: &[u8]) {
        self.to_client.extend_from_slice(trim_eol(line));
        self.to_client.extend_from_slice(b"\r\n");
    }

    /// Maps a passive reply line to a port of ours. A line without an address (text of
    /// a multi-line reply) passes through; a line whose address cannot be mapped never
    /// reaches the client with the backend's address in it. Returns false when the line
    /// was replaced by a `425` (single-line reply) or dropped.
    fn rewrite_passive(&mut self, line: &[u8], kind: Disposition, single: bool) -> bool {
        if self.mode == ListenerMode::Transparent && !self.ctx.config.transparent.map_passive {
            // Passive data goes straight out through NAT; only a server that names its
            // own private address needs help.
            self.fix_private_pasv(line, kind);
            return true;
        }
        let mapped = if kind == Disposition::RewritePasv {
            match find_pasv_tuple(line) {
                Ok(t) => self.map_passive(line, Verb::Pasv, self.passive_target(t.addr)),
                Err(_) if !single => {
                    self.push_reply_line(line);
                    return true;
                }
                Err(e) => Err(format!("unparsable 227 reply from server ({e})")),
            }
        } else {
            match find_epsv_port(line) {
                // RFC 2428 §3: the data connection goes to the control connection's address.
                Ok(p) => self.map_passive(
                    line,
                    Verb::Epsv,
                    SocketAddr::new(self.backend_addr.ip(), p.port),
                ),
                Err(_) if !single => {
                    self.push_reply_line(line);
                    return true;
                }
                Err(e) => Err(format!("unparsable 229 reply from server ({e})")),
            }
        };
        match mapped {
            Ok(rewritten) => {
                self.push_reply_line(&rewritten);
                true
            }
            Err(reason) => {
                warn!(reason = %reason, original = %LogText(trim_eol(line)), "passive reply not mapped");
                if single {
                    self.to_client.extend_from_slice(
                        format!("425 Can't open passive connection: {reason}.\r\n").as_bytes(),
                    );
                }
                // In a multi-line reply the line is dropped: the code cannot change
                // mid-reply, and the backend's address must not leak.
                false
            }
        }
    }

    /// A `227` naming a private address, from a server whose control address is
    /// public, is unusable from anywhere else: name the control address instead.
    fn fix_private_pasv(&mut self, line: &[u8], kind: Disposition) {
        let fixable =
            kind == Disposition::RewritePasv && self.ctx.config.transparent.fix_private_pasv;
        let tuple = if fixable {
            find_pasv_tuple(line).ok()
        } else {
            None
        };
        let (Some(t), IpAddr::V4(server)) = (tuple, self.backend_addr.ip()) else {
            return self.push_reply_line(line);
        };
        let named = *t.addr.ip();
        if named == server || !is_private_v4(named) || is_private_v4(server) {
            return self.push_reply_line(line);
        }
        match rewrite_227(line, SocketAddrV4::new(server, t.addr.port())) {
            Ok(fixed) => {
                self.ctx
                    .metrics
                    .rewrites_total
                    .with_label_values(&["227"])
                    .inc();
                info!(named = %named, server = %server, "server named a private address in 227; using its control address");
                self.push_reply_line(&fixed);
            }
            Err(_) => self.push_reply_line(line),
        }
    }

    /// Where to connect for a backend's `227`.
    fn passive_target(&self, advertised: SocketAddrV4) -> SocketAddr {
        let ip = match self.ctx.config.passive_target {
            PassiveTarget::Reply if !advertised.ip().is_unspecified() => {
                IpAddr::V4(*advertised.ip())
            }
            // RFC 959 does not define 0.0.0.0; servers mean "my control address".
            _ => self.backend_addr.ip(),
        };
        SocketAddr::new(ip, advertised.port())
    }

    fn map_passive(
        &mut self,
        line: &[u8],
        verb: Verb,
        target: SocketAddr,
    ) -> Result<Vec<u8>, String> {
        if target.port() == 0 {
            return Err("server named data port 0".into());
        }
        let public = match verb {
            Verb::Pasv => Some(
                self.announce_v4()
                    .ok_or("no IPv4 address to announce; use EPSV")?,
            ),
            _ => None,
        };
        let (client, port) = self.client_side_listener(verb)?;
        let rewritten = match public {
            Some(v4) => rewrite_227(line, SocketAddrV4::new(v4, port)),
            None => rewrite_229(line, port),
        }
        .map_err(|e| format!("rewrite failed ({e})"))?;
        let plan = DataPlan {
            id: self.data_id(),
            mode: DataMode::Passive,
            client,
            backend: self.backend_connect(target),
            accept_timeout: self.ctx.config.timeouts.data_connect,
            connect_timeout: self.ctx.config.timeouts.backend_connect,
            idle_timeout: self.data_idle(),
        };
        self.spawn_plan(plan);
        let kind = if public.is_some() { "227" } else { "229" };
        self.ctx
            .metrics
            .rewrites_total
            .with_label_values(&[kind])
            .inc();
        debug!(original = %LogText(trim_eol(line)), rewritten = %LogText(trim_eol(&rewritten)), "passive reply rewritten");
        Ok(rewritten)
    }
}

#[derive(Debug, Clone, Copy)]
enum Deadline {
    Login,
    Idle,
}

/// Reads on past a TCP urgent mark. A read stops at the mark (RFC 959 §4.1.3 Synch;
/// Python's ftplib sends `ABOR\r\n` with MSG_OOB), and tokio, seeing a short read,
/// assumes the socket is drained and waits for an edge that never comes. Raw reads do
/// not depend on tokio's readiness; they run only while the buffer ends mid-line.
fn drain_past_urgent_mark(
    stream: &TcpStream,
    buf: &mut Vec<u8>,
    max_line: usize,
) -> std::io::Result<()> {
    use std::io::Read;
    let sock = socket2::SockRef::from(stream);
    let mut chunk = [0u8; 4096];
    while !buf.ends_with(b"\n") && buf.len() <= max_line {
        match (&*sock).read(&mut chunk) {
            // EOF shows up on the next regular read.
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A reusable timer: one timer-wheel entry per session, moved when the deadline moves.
struct Timer {
    sleep: std::pin::Pin<Box<tokio::time::Sleep>>,
    at: Option<tokio::time::Instant>,
}

impl Timer {
    fn new() -> Self {
        Timer {
            sleep: Box::pin(tokio::time::sleep_until(tokio::time::Instant::now())),
            at: None,
        }
    }

    fn arm(&mut self, at: Option<tokio::time::Instant>) {
        if at != self.at {
            if let Some(t) = at {
                self.sleep.as_mut().reset(t);
            }
            self.at = at;
        }
    }

    /// Resolves at the armed deadline; never while disarmed.
    async fn fired(&mut self) {
        if self.at.is_none() {
            return std::future::pending().await;
        }
        (&mut self.sleep).await;
        self.at = None;
    }
}

/// The command telling the backend to connect to `ours`: PORT for IPv4 when the client
/// used PORT, else EPRT in the backend's family (RFC 2428; RFC 6384 for v6 clients in
/// front of v4 backends). Returns the line and its rewrite-metric kind.
fn active_command(client_verb: Verb, ours: SocketAddr) -> (String, &'static str) {
    match ours {
        SocketAddr::V4(v4) if client_verb == Verb::Port => {
            (format!("PORT {}\r\n", format_pasv_tuple(v4)), "port")
        }
        _ => (format!("EPRT {}\r\n", format_eprt_arg(ours)), "eprt"),
    }
}

/// Addresses that cannot be reached across the internet (RFC 1918, loopback,
/// link-local, CGNAT RFC 6598, unspecified).
fn is_private_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    ip.is_private()
        || ip.is_loopback()
        || ip.is_link_local()
        || ip.is_unspecified()
        || (a == 100 && (64..128).contains(&b))
}

/// Offset of the `IAC` of a Telnet Synch (`IAC DM`) in the Telnet prefix of a line.
fn find_synch(line: &[u8]) -> Option<usize> {
    let mut i = 0;
    while line.get(i) == Some(&0xff) {
        if line.get(i + 1) == Some(&0xf2) {
            return Some(i);
        }
        i += 2;
    }
    None
}

/// Reply codes as static labels (bounded: 100..=599), built once.
fn code_label(code: u16) -> &'static str {
    static LABELS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let labels = LABELS.get_or_init(|| (100..600).map(|c: u16| c.to_string()).collect());
    code.checked_sub(100)
        .and_then(|i| labels.get(usize::from(i)))
        .map_or("other", String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synch_offset() {
        assert_eq!(find_synch(b"\xff\xf4\xff\xf2ABOR\r\n"), Some(2));
        assert_eq!(find_synch(b"\xff\xf2ABOR\r\n"), Some(0));
        assert_eq!(find_synch(b"ABOR\r\n"), None);
        assert_eq!(find_synch(b"\xff\xf4ABOR\r\n"), None);
    }

    #[test]
    fn private_v4_ranges() {
        for p in [
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "127.0.0.1",
            "169.254.1.1",
            "100.64.0.1",
            "0.0.0.0",
        ] {
            assert!(is_private_v4(p.parse().unwrap()), "{p}");
        }
        for p in ["203.0.113.10", "198.51.100.1", "100.128.0.1", "172.32.0.1"] {
            assert!(!is_private_v4(p.parse().unwrap()), "{p}");
        }
    }

    #[test]
    fn active_command_forms() {
        let v4: SocketAddr = "10.0.0.1:5000".parse().unwrap();
        let v6: SocketAddr = "[2001:db8::1]:5000".parse().unwrap();
        assert_eq!(active_command(Verb::Port, v4).0, "PORT 10,0,0,1,19,136\r\n");
        assert_eq!(
            active_command(Verb::Eprt, v4).0,
            "EPRT |1|10.0.0.1|5000|\r\n"
        );
        assert_eq!(
            active_command(Verb::Port, v6).0,
            "EPRT |2|2001:db8::1|5000|\r\n"
        );
    }
}
