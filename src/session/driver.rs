//! The async edge of a session: owns the two control sockets, frames lines, asks
//! [`ControlState`] what each line means, and sets up passive data mappings.
//!
//! One task per session, no locks: a `select!` over the client socket, the backend
//! socket and shutdown. Backpressure is natural: writes are awaited, and the client
//! is not read while `max_pipelined_commands` replies are outstanding.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn, Instrument};

use super::passive::PassiveMapping;
use super::state::{ControlState, Disposition};
use crate::balancer::Balancer;
use crate::config::{Config, PassiveTarget};
use crate::dataport::{LeaseError, PortPool};
use crate::metrics::Metrics;
use crate::protocol::addr::{canonical_ip, find_epsv_port, find_pasv_tuple};
use crate::protocol::command::{parse_command, redact_for_log, Verb};
use crate::protocol::line::{find_line, trim_eol, LineError};
use crate::protocol::reply::ReplyLine;
use crate::protocol::rewrite::{rewrite_227, rewrite_229};

/// Longest reply line accepted from a backend. Larger than the client bound because
/// `STAT` listings carry long file names.
const MAX_REPLY_LINE: usize = 16 * 1024;
const READ_CHUNK: usize = 16 * 1024;

static SESSION_IDS: AtomicU64 = AtomicU64::new(1);

/// What every session shares.
#[derive(Debug)]
pub struct SessionContext {
    pub config: Arc<Config>,
    pub pool: Arc<PortPool>,
    pub balancer: Balancer,
    pub metrics: Arc<Metrics>,
}

/// How a session ended; a bounded metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Closed,
    BackendUnavailable,
    ClientError,
    BackendError,
    Shutdown,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Closed => "closed",
            Outcome::BackendUnavailable => "backend_unavailable",
            Outcome::ClientError => "client_error",
            Outcome::BackendError => "backend_error",
            Outcome::Shutdown => "shutdown",
        }
    }
}

/// Serves one client connection to its end.
pub async fn run_session(
    client: TcpStream,
    peer: SocketAddr,
    ctx: Arc<SessionContext>,
    shutdown: CancellationToken,
) {
    let id = SESSION_IDS.fetch_add(1, Ordering::Relaxed);
    let span = info_span!("session", id, client = %peer, backend = tracing::field::Empty);
    let metrics = Arc::clone(&ctx.metrics);
    metrics.sessions_active.inc();
    let outcome = serve(client, peer, ctx, shutdown).instrument(span).await;
    metrics.sessions_active.dec();
    metrics
        .sessions_total
        .with_label_values(&[outcome.label()])
        .inc();
}

async fn serve(
    mut client: TcpStream,
    peer: SocketAddr,
    ctx: Arc<SessionContext>,
    shutdown: CancellationToken,
) -> Outcome {
    let _ = client.set_nodelay(true);
    let (backend, backend_addr) = match ctx
        .balancer
        .connect(ctx.config.timeouts.backend_connect)
        .await
    {
        Ok(b) => b,
        Err(e) => {
            warn!(error = %e, "no backend for session");
            let _ = client
                .write_all(b"421 Service not available: no backend reachable.\r\n")
                .await;
            let _ = client.shutdown().await;
            return Outcome::BackendUnavailable;
        }
    };
    tracing::Span::current().record("backend", tracing::field::display(backend_addr));
    info!("session started");
    let client_local = client.local_addr().ok();
    let backend_local = backend.local_addr().ok().map(|a| a.ip());
    let mut session = Session {
        ctx: &ctx,
        state: ControlState::new(ctx.config.rewrite_passive),
        client_ip: canonical_ip(peer.ip()),
        client_local: client_local.map(|a| canonical_ip(a.ip())),
        backend_addr,
        backend_local,
        to_client: Vec::with_capacity(1024),
        to_backend: Vec::with_capacity(1024),
        passive: None,
        session_cancel: shutdown.child_token(),
    };
    let outcome = session.pump(client, backend, &shutdown).await;
    session.session_cancel.cancel();
    info!(outcome = outcome.label(), "session ended");
    outcome
}

struct Session<'a> {
    ctx: &'a SessionContext,
    state: ControlState,
    client_ip: IpAddr,
    client_local: Option<IpAddr>,
    backend_addr: SocketAddr,
    backend_local: Option<IpAddr>,
    to_client: Vec<u8>,
    to_backend: Vec<u8>,
    /// The newest unused passive mapping; a newer PASV/EPSV withdraws it, as the
    /// server itself drops its previous listener.
    passive: Option<CancellationToken>,
    session_cancel: CancellationToken,
}

/// Why the pump stopped.
enum Stop {
    Done(Outcome),
}

impl Session<'_> {
    async fn pump(
        &mut self,
        mut client: TcpStream,
        mut backend: TcpStream,
        shutdown: &CancellationToken,
    ) -> Outcome {
        let max_line = self.ctx.config.max_line_length;
        let max_pipelined = self.ctx.config.max_pipelined_commands;
        let mut cbuf: Vec<u8> = Vec::with_capacity(READ_CHUNK);
        let mut sbuf: Vec<u8> = Vec::with_capacity(READ_CHUNK);
        let (mut cr, mut cw) = client.split();
        let (mut br, mut bw) = backend.split();
        let outcome = loop {
            let read_client = self.state.outstanding() < max_pipelined;
            if read_client {
                cbuf.reserve(READ_CHUNK);
            }
            sbuf.reserve(READ_CHUNK);
            tokio::select! {
                r = cr.read_buf(&mut cbuf), if read_client => match r {
                    Ok(0) => {
                        debug!("client closed control connection");
                        // Let the backend see the close; its own close ends the session.
                        let _ = bw.shutdown().await;
                        break Outcome::Closed;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        debug!(error = %e, "client read failed");
                        break Outcome::ClientError;
                    }
                },
                r = br.read_buf(&mut sbuf) => match r {
                    Ok(0) => {
                        debug!("backend closed control connection");
                        // Whatever complete replies arrived before the close still go out.
                        if let Err(Stop::Done(o)) = self.process_backend(&mut sbuf) {
                            let _ = cw.write_all(&self.to_client).await;
                            break o;
                        }
                        let _ = cw.write_all(&self.to_client).await;
                        let _ = cw.shutdown().await;
                        break Outcome::Closed;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        debug!(error = %e, "backend read failed");
                        let _ = cw.write_all(b"421 Connection to server lost.\r\n").await;
                        break Outcome::BackendError;
                    }
                },
                () = shutdown.cancelled() => {
                    let _ = cw.write_all(b"421 Service shutting down, closing control connection.\r\n").await;
                    break Outcome::Shutdown;
                }
            }
            let stop = self
                .process_backend(&mut sbuf)
                .and_then(|()| self.process_client(&mut cbuf, max_line, max_pipelined));
            // Flush what processing produced, in the order it was produced per side.
            if !self.to_backend.is_empty() {
                if let Err(e) = bw.write_all(&self.to_backend).await {
                    debug!(error = %e, "backend write failed");
                    let _ = cw.write_all(b"421 Connection to server lost.\r\n").await;
                    break Outcome::BackendError;
                }
                self.to_backend.clear();
            }
            if !self.to_client.is_empty() {
                if let Err(e) = cw.write_all(&self.to_client).await {
                    debug!(error = %e, "client write failed");
                    break Outcome::ClientError;
                }
                self.to_client.clear();
            }
            if let Err(Stop::Done(o)) = stop {
                let _ = cw.shutdown().await;
                break o;
            }
        };
        outcome
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
            if self.state.outstanding() >= max_pipelined {
                break Ok(());
            }
            match find_line(&buf[used..], max_line) {
                Ok(Some(n)) => {
                    let line = &buf[used..used + n];
                    used += n;
                    self.on_client_line(line);
                }
                Ok(None) => break Ok(()),
                Err(LineError::TooLong { max }) => {
                    self.ctx.metrics.refuse("line_too_long");
                    warn!(max, "client line too long; closing session");
                    // Pending replies would be lost in a half-parsed stream: close.
                    self.to_client.extend_from_slice(
                        b"500 Command line too long; closing control connection.\r\n",
                    );
                    break Err(Stop::Done(Outcome::ClientError));
                }
            }
        };
        buf.drain(..used);
        self.emit_local_replies();
        result
    }

    fn on_client_line(&mut self, line: &[u8]) {
        let Ok(cmd) = parse_command(line) else {
            debug!("empty command line");
            self.state
                .answer_locally(b"500 Syntax error, command unrecognized.\r\n".to_vec());
            return;
        };
        debug!(command = %redact_for_log(line), "client command");
        match cmd.verb {
            // RFC 1639: a 228 passed through would leak the backend's address; refusing
            // makes clients fall back to EPSV/PASV.
            Verb::Lpsv | Verb::Lprt => {
                self.ctx.metrics.refuse("lprt_lpsv");
                info!(verb = cmd.verb.as_str(), "long-address command refused");
                self.state
                    .answer_locally(b"502 Command not implemented; use EPSV or PASV.\r\n".to_vec());
            }
            // Relaying active mode needs bounce protection and a backend-side listener;
            // until that exists, refuse rather than let the backend connect anywhere.
            Verb::Port | Verb::Eprt => {
                self.ctx.metrics.refuse("active_mode");
                info!(verb = cmd.verb.as_str(), "active mode refused");
                self.state.answer_locally(
                    b"502 Active mode is not available through this gateway; use EPSV or PASV.\r\n"
                        .to_vec(),
                );
            }
            verb => {
                // RFC 1123 §4.1.2.10: accept bare LF, but always send CRLF.
                self.to_backend.extend_from_slice(trim_eol(line));
                self.to_backend.extend_from_slice(b"\r\n");
                self.state.forwarded(verb);
            }
        }
    }

    fn emit_local_replies(&mut self) {
        while let Some(reply) = self.state.next_local_reply() {
            self.to_client.extend_from_slice(&reply);
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
                    self.to_client.extend_from_slice(
                        b"421 Invalid reply from server; closing control connection.\r\n",
                    );
                    break Err(Stop::Done(Outcome::BackendError));
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
                warn!(error = %e, line = %String::from_utf8_lossy(trim_eol(line)), "malformed reply from backend; closing session");
                self.to_client.extend_from_slice(
                    b"421 Invalid reply from server; closing control connection.\r\n",
                );
                return Err(Stop::Done(Outcome::BackendError));
            }
        };
        match outcome.disposition {
            Disposition::Forward => self.push_reply_line(line),
            Disposition::Swallow => {}
            Disposition::RewritePasv | Disposition::RewriteEpsv => {
                let single = matches!(outcome.line, ReplyLine::Single(_));
                self.rewrite_passive(line, outcome.disposition, single);
            }
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
    /// reaches the client with the backend's address in it.
    fn rewrite_passive(&mut self, line: &[u8], kind: Disposition, single: bool) {
        let mapped = match kind {
            Disposition::RewritePasv => match find_pasv_tuple(line) {
                Ok(t) => self.map_pasv(line, t.addr),
                Err(_) if !single => return self.push_reply_line(line),
                Err(e) => Err(format!("unparsable 227 reply from server ({e})")),
            },
            _ => match find_epsv_port(line) {
                Ok(p) => self.map_epsv(line, p.port),
                Err(_) if !single => return self.push_reply_line(line),
                Err(e) => Err(format!("unparsable 229 reply from server ({e})")),
            },
        };
        match mapped {
            Ok(rewritten) => self.push_reply_line(&rewritten),
            Err(reason) => {
                warn!(reason = %reason, original = %String::from_utf8_lossy(trim_eol(line)), "passive reply not mapped");
                if single {
                    self.to_client.extend_from_slice(
                        format!("425 Can't open passive data connection: {reason}.\r\n").as_bytes(),
                    );
                }
                // In a multi-line reply the line is dropped: the code cannot change
                // mid-reply, and the backend's address must not leak.
            }
        }
    }

    fn map_pasv(&mut self, line: &[u8], advertised: SocketAddrV4) -> Result<Vec<u8>, String> {
        let public = self
            .ctx
            .config
            .public_v4()
            .or(match self.client_local {
                Some(IpAddr::V4(v4)) => Some(v4),
                _ => None,
            })
            .ok_or("no IPv4 address to announce; use EPSV")?;
        let target_ip = match self.ctx.config.passive_target {
            PassiveTarget::Reply if !advertised.ip().is_unspecified() => {
                IpAddr::V4(*advertised.ip())
            }
            // RFC 959 does not define 0.0.0.0; servers mean "my control address".
            _ => self.backend_addr.ip(),
        };
        let bind_ip = match self.client_local {
            Some(ip @ IpAddr::V4(_)) => ip,
            _ => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        };
        let port = self.open_mapping(bind_ip, SocketAddr::new(target_ip, advertised.port()))?;
        let rewritten = rewrite_227(line, SocketAddrV4::new(public, port))
            .map_err(|e| format!("rewrite failed ({e})"))?;
        self.ctx
            .metrics
            .rewrites_total
            .with_label_values(&["227"])
            .inc();
        debug!(original = %String::from_utf8_lossy(trim_eol(line)), rewritten = %String::from_utf8_lossy(trim_eol(&rewritten)), "passive reply rewritten");
        Ok(rewritten)
    }

    fn map_epsv(&mut self, line: &[u8], port: u16) -> Result<Vec<u8>, String> {
        // RFC 2428: the data connection goes to the control connection's address.
        let target = SocketAddr::new(self.backend_addr.ip(), port);
        let bind_ip = self
            .client_local
            .ok_or("control connection has no local address")?;
        let ours = self.open_mapping(bind_ip, target)?;
        let rewritten = rewrite_229(line, ours).map_err(|e| format!("rewrite failed ({e})"))?;
        self.ctx
            .metrics
            .rewrites_total
            .with_label_values(&["229"])
            .inc();
        debug!(original = %String::from_utf8_lossy(trim_eol(line)), rewritten = %String::from_utf8_lossy(trim_eol(&rewritten)), "passive reply rewritten");
        Ok(rewritten)
    }

    /// Leases a data port, listens on it and starts the mapping task. Returns the port.
    fn open_mapping(&mut self, bind_ip: IpAddr, target: SocketAddr) -> Result<u16, String> {
        if target.port() == 0 {
            return Err("server named data port 0".into());
        }
        let (lease, listener) = self.ctx.pool.bind(bind_ip).map_err(|e| {
            if let LeaseError::Exhausted(n) = e {
                self.ctx.metrics.data_port_exhausted_total.inc();
                warn!(ports = n, "data-port range exhausted");
            }
            e.to_string()
        })?;
        let port = lease.port();
        if let Some(previous) = self.passive.take() {
            previous.cancel();
        }
        let cancel = self.session_cancel.child_token();
        self.passive = Some(cancel.clone());
        let mapping = PassiveMapping {
            listener,
            lease,
            expect: self.client_ip,
            target,
            local: self.backend_local,
            accept_timeout: self.ctx.config.timeouts.data_connect,
            connect_timeout: self.ctx.config.timeouts.backend_connect,
        };
        tokio::spawn(
            mapping
                .serve(cancel, Arc::clone(&self.ctx.metrics))
                .instrument(tracing::Span::current()),
        );
        Ok(port)
    }
}
