//! The session machine: every decision of a control session, with no sockets, tasks or
//! timers (sans-I/O). See the [module overview](super) for its inputs, outputs and
//! state diagram.
//!
//! The driver feeds it bytes, data events, timer expiries and shutdown; it answers with
//! bytes in [`Outbox`] and [`Action`]s. The one thing it needs from the outside world
//! while deciding — a bound data port to name in a reply — comes through the
//! [`SessionEdge`] trait, which the driver implements with the real port pool and tests
//! with a fake.

use std::net::{IpAddr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::Instant;

use tracing::{debug, info, warn};

use super::access::SessionStats;
use super::active::{backend_announce, check_active_target, client_connect_local, Refused};
use super::data::{DataEvent, DataMode};
use super::drain::{drain_step, DrainStep, DrainView};
use super::keepalive;
use super::ledger::{Disposition, Injected, Origin, ReplyLedger, TlsCommand};
use super::outcome::{Outcome, SessionError};
use super::passive::{
    announce_v4, client_listener_ip, fix_private_pasv, passive_target, HeldReply,
    PassiveTargetDecision,
};
use super::replies::LocalReply;
use super::routing::{before_user, BeforeUser, TlsPolicy};
use super::tls::{
    data_tls, decide_auth, decide_pbsz, decide_prot, inject_backend_prot, missing_features,
    required_refusal, upgrade_backend_at_greeting, AuthDecision, DataTls, ProtectionDecision,
    TlsState,
};
use super::translate::{setup_reply, HeldCommand, Setup, SetupVerdict, Translation};
use super::upstream::NoUpstream;
use crate::config::{BackendDataMode, Config, ListenerMode};
use crate::dataport::LeaseError;
use crate::metrics::{Metrics, Refusal, RewriteKind, TimeoutKind};
use crate::protocol::addr::{find_epsv_port, find_pasv_tuple};
use crate::protocol::command::{
    find_synch, format_data_command, parse_command, redact_for_log, Verb,
};
use crate::protocol::line::{find_line, trim_eol, LineError};
use crate::protocol::logtext::LogText;
use crate::protocol::reply::{parse_code, ReplyLine};
use crate::protocol::rewrite::{rewrite_227, rewrite_229};

/// Longest reply line accepted from a backend. Larger than the client bound because
/// `STAT` listings carry long file names.
pub const MAX_REPLY_LINE: usize = 16 * 1024;

/// Which side a data listener faces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerSide {
    /// Clients connect to it (passive mode towards the client).
    Client,
    /// Backends connect to it (active mode towards the backend).
    Backend,
}

/// What the machine needs from the world while it decides.
pub trait SessionEdge {
    /// A bound data listener (with its port lease), handed back in [`Action::OpenData`].
    type Listener;
    /// Leases a port and binds a listener on `ip` for `side`.
    fn bind_data_listener(
        &mut self,
        side: ListenerSide,
        ip: IpAddr,
    ) -> Result<(u16, Self::Listener), LeaseError>;
    /// Whether `ip` is one of this host's own addresses.
    fn is_own_address(&self, ip: IpAddr) -> bool;
}

/// The addresses of one session, fixed at its start (all canonical: no v4-mapped v6).
#[derive(Debug, Clone, Copy)]
pub struct Addresses {
    /// Whether the session came in on a reverse or a transparent listener.
    pub mode: ListenerMode,
    /// The client's address.
    pub client_ip: IpAddr,
    /// Where the client reached ftpgate.
    pub client_local: SocketAddr,
    /// The backend (or original destination) control address.
    pub backend: SocketAddr,
    /// ftpgate's side of the backend control connection: where backends reach it.
    pub backend_local: SocketAddr,
}

/// How one side of a data connection is obtained.
#[derive(Debug)]
pub enum EndpointSpec<L> {
    /// Accept on a bound listener, only from `expect`.
    Accept {
        /// The bound listener.
        listener: L,
        /// The only peer IP accepted.
        expect: IpAddr,
    },
    /// Connect out to `target`, from `local` when set.
    Connect {
        /// Where to connect.
        target: SocketAddr,
        /// Local address to connect from; `None`: any.
        local: Option<SocketAddr>,
    },
}

/// A data connection to open.
#[derive(Debug)]
pub struct DataSpec<L> {
    /// The data connection's id within its session.
    pub id: u64,
    /// The client-facing mode.
    pub mode: DataMode,
    /// The client side.
    pub client: EndpointSpec<L>,
    /// The backend side.
    pub backend: EndpointSpec<L>,
    /// Which sides are TLS (`PROT P` in force on that side).
    pub tls: DataTls,
}

/// What the driver must do besides writing the outbox.
#[derive(Debug)]
pub enum Action<L> {
    /// Withdraw the newest data mapping not yet in use (a newer one replaces it, as
    /// the server drops its previous listener).
    WithdrawData,
    /// Start a data connection.
    OpenData(DataSpec<L>),
    /// Write the outbox, close the client's control connection, end the session.
    Close(Outcome),
    /// After writing the outbox: TLS handshake with the backend as the TLS client;
    /// report with [`SessionMachine::on_backend_tls`].
    StartBackendTls,
    /// The backend sent a transfer command's `1xx`: it is ready for the data
    /// connection's TLS handshake (pyftpdlib takes a ClientHello that arrives before
    /// it processed the command as stray data and resets; curl, too, starts data TLS
    /// only after the `150`).
    TransferPreliminary,
    /// After writing the outbox (the server's `234`): relay both control connections
    /// as opaque bytes until either closes (transparent mode, `AUTH TLS` to a server
    /// ftpgate has no certificate for). The machine has no more say.
    Passthrough,
    /// After writing the outbox (the `234`): discard unread client bytes, TLS
    /// handshake with the client as the TLS server; report with
    /// [`SessionMachine::on_client_tls`].
    StartClientTls,
    /// `balance: user`: the client sent `USER`; pick a backend for this name, connect
    /// (PROXY header, implicit TLS per `tls.backend`) and report with
    /// [`SessionMachine::on_backend_connected`]. The client is not read meanwhile.
    ConnectBackend(RouteRequest),
}

/// What the balancer keys on when the machine asks for a backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteRequest {
    /// The `USER` name.
    pub user: String,
}

/// A backend control connection the driver made for [`Action::ConnectBackend`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendConnected {
    /// The backend's control address (canonical).
    pub backend: SocketAddr,
    /// ftpgate's side of that connection (canonical).
    pub backend_local: SocketAddr,
    /// The connection is TLS from its first byte (`tls.backend: implicit`).
    pub tls: bool,
}

/// Where a session stands with its backend (see [`super::routing`]).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Route {
    /// A backend is connected and ready for client commands.
    Connected,
    /// `balance: user`: ftpgate greeted the client; no backend yet.
    AwaitingUser,
    /// [`Action::ConnectBackend`] asked; the `USER` line waits.
    Connecting(Vec<u8>),
    /// Connected; the `USER` line waits for the backend's greeting (and ftpgate's own
    /// TLS upgrade of it).
    Replaying(Vec<u8>),
}

/// Bytes for the two control connections.
#[derive(Debug, Default)]
pub struct Outbox {
    /// Bytes to write to the client, in order.
    pub to_client: Vec<u8>,
    /// Bytes to write to the backend, in order.
    pub to_backend: Vec<u8>,
    /// Index in `to_backend` of a byte to send as TCP urgent data (Telnet Synch).
    pub urgent_at: Option<usize>,
}

/// Which control connection bytes came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Peer {
    Client,
    Backend,
}

/// The session deadlines (the keepalive has its own timer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deadline {
    /// Not logged in within `timeouts.login`.
    Login,
    /// No command and no transfer for `timeouts.idle`.
    Idle,
    /// A command outstanding at the backend without a reply for `timeouts.backend_reply`.
    BackendReply,
}

/// One control session's state and decisions.
pub struct SessionMachine<E: SessionEdge> {
    cfg: Arc<Config>,
    metrics: Arc<Metrics>,
    edge: E,
    addrs: Addresses,
    ledger: ReplyLedger,
    /// Bytes to write; the driver drains them.
    pub out: Outbox,
    actions: Vec<Action<E::Listener>>,
    translation: Translation<E::Listener>,
    /// A multi-line `227`/`229` held until its final line.
    held_reply: Option<HeldReply>,
    epsv_all: bool,
    last_transfer: Option<Verb>,
    next_data_id: u64,
    stats: SessionStats,
    now: Instant,
    started: Instant,
    /// Last complete client command or data-connection end: the idle clock.
    last_activity: Instant,
    /// Last sign of life from the backend while it owes a reply: the reply clock.
    backend_progress: Instant,
    active_data: usize,
    /// Data connections mapped and not yet established nor given up.
    pending_data: usize,
    next_noop: Option<Instant>,
    closing: Option<Outcome>,
    /// The gateway drains: close at the next command boundary.
    draining: bool,
    /// Command bytes received before login (`limits.prelogin_bytes`).
    prelogin_bytes: usize,
    /// A data-port share refusal was logged (a PASV flood logs once, counts all).
    port_share_logged: bool,
    tls: TlsState,
    /// Inner lines of the backend reply being received (for `FEAT` augmentation).
    reply_lines: Vec<Vec<u8>>,
    route: Route,
}

impl<E: SessionEdge> SessionMachine<E> {
    /// A session whose control connections are both open, owed the server's greeting.
    pub fn new(
        cfg: Arc<Config>,
        metrics: Arc<Metrics>,
        edge: E,
        addrs: Addresses,
        now: Instant,
    ) -> Self {
        let ledger = ReplyLedger::new(cfg.passive.rewrite);
        SessionMachine {
            cfg,
            metrics,
            edge,
            addrs,
            ledger,
            out: Outbox::default(),
            actions: Vec::new(),
            translation: Translation::Idle,
            held_reply: None,
            epsv_all: false,
            last_transfer: None,
            next_data_id: 0,
            stats: SessionStats::default(),
            now,
            started: now,
            last_activity: now,
            backend_progress: now,
            active_data: 0,
            pending_data: 0,
            next_noop: None,
            closing: None,
            draining: false,
            prelogin_bytes: 0,
            port_share_logged: false,
            tls: TlsState::default(),
            reply_lines: Vec::new(),
            route: Route::Connected,
        }
    }

    /// Makes a fresh machine a `balance: user` session with no backend yet: ftpgate's
    /// own `220 <greeting>` is in the outbox, and client commands are answered here
    /// until `USER` (see [`super::routing`]). `addrs.backend`/`backend_local` are
    /// placeholders until [`Self::on_backend_connected`].
    #[must_use]
    pub fn awaiting_user(self) -> Self {
        let mut m = self;
        m.ledger = ReplyLedger::unconnected(m.cfg.passive.rewrite);
        m.route = Route::AwaitingUser;
        m.reply_now(LocalReply::RoutingGreeting(m.cfg.greeting.clone()));
        m
    }

    // ----- queries the driver asks every turn -----

    /// Whether the driver should read the client: not while `max_pipelined_commands`
    /// replies are owed, nor while a command is held for mode translation (later lines
    /// must not overtake it), nor once the session is closing.
    pub fn wants_client_input(&self) -> bool {
        self.closing.is_none()
            && self.ledger.outstanding() < self.cfg.control.max_pipelined_commands
            && !self.translation.holding()
            && !self.tls.client_handshake_pending
            && !self.tls.backend_handshake_pending
            && !self.tls.passthrough_pending
            && matches!(self.route, Route::Connected | Route::AwaitingUser)
    }

    /// Sets the TLS state a session starts with: an implicit-TLS client listener, an
    /// implicit-TLS backend. Called before any input.
    pub fn set_initial_tls(&mut self, st: TlsState) {
        self.tls = st;
    }

    /// The client's address (what `source-ip` and the PROXY header name).
    pub fn client_ip(&self) -> IpAddr {
        self.addrs.client_ip
    }

    /// The session's TLS state.
    pub fn tls_state(&self) -> &TlsState {
        &self.tls
    }

    /// The earliest session deadline, if any applies.
    pub fn next_deadline(&self) -> Option<(Instant, Deadline)> {
        let t = &self.cfg.timeouts;
        let mut next: Option<(Instant, Deadline)> = None;
        let mut consider = |at: Instant, kind: Deadline| {
            if next.is_none_or(|(n, _)| at < n) {
                next = Some((at, kind));
            }
        };
        if !self.ledger.logged_in() {
            consider(self.started + t.login, Deadline::Login);
        } else if !t.idle.is_zero() && !self.busy() {
            consider(self.last_activity + t.idle, Deadline::Idle);
        }
        // A running data connection is progress: a transfer's final reply comes only
        // after it, however long it takes.
        if !t.backend_reply.is_zero() && self.ledger.awaiting_server() && self.active_data == 0 {
            consider(
                self.backend_progress + t.backend_reply,
                Deadline::BackendReply,
            );
        }
        next
    }

    /// When the next keepalive NOOP is due, if one is armed.
    pub fn next_keepalive(&self) -> Option<Instant> {
        self.next_noop
    }

    /// Whether the backend has accepted a login.
    pub fn logged_in(&self) -> bool {
        self.ledger.logged_in()
    }

    /// The actions decided since the last call.
    pub fn take_actions(&mut self) -> std::vec::Drain<'_, Action<E::Listener>> {
        self.actions.drain(..)
    }

    /// What the session did, for the access log.
    pub fn stats(&self) -> &SessionStats {
        &self.stats
    }

    // ----- inputs -----

    /// Bytes from the client: handles every complete line, as far as pipelining
    /// allows, and removes them from `buf`. A partial line is not activity.
    pub fn on_client_input(&mut self, buf: &mut Vec<u8>, now: Instant) {
        self.take_lines(Peer::Client, buf, now);
    }

    /// Bytes from the backend: handles every complete line and removes it from `buf`.
    pub fn on_server_input(&mut self, buf: &mut Vec<u8>, now: Instant) {
        self.take_lines(Peer::Backend, buf, now);
    }

    /// Counts a command line received before login; past `limits.prelogin_bytes` the
    /// session is refused and closed (a client that chats without logging in holds a
    /// backend session and, with a forking server, a process).
    fn over_prelogin_budget(&mut self, line_len: usize) -> bool {
        let budget = self.cfg.limits.prelogin_bytes;
        if self.ledger.logged_in() || budget == 0 {
            return false;
        }
        self.prelogin_bytes = self.prelogin_bytes.saturating_add(line_len);
        if self.prelogin_bytes <= budget {
            return false;
        }
        self.metrics.refuse(Refusal::PreloginBytes);
        info!(budget, "pre-login byte budget spent; closing session");
        self.reply_now(LocalReply::PreloginBudget);
        self.close(Outcome::Limited);
        true
    }

    /// Frames `buf` into lines for as long as the machine takes them from `from`.
    fn take_lines(&mut self, from: Peer, buf: &mut Vec<u8>, now: Instant) {
        self.now = now;
        let max_line = match from {
            Peer::Client => self.cfg.control.max_line_length,
            Peer::Backend => MAX_REPLY_LINE,
        };
        let mut used = 0;
        let wanted = |m: &Self| match from {
            Peer::Backend => !m.tls.backend_upgrade_due,
            Peer::Client => m.wants_client_input(),
        };
        while self.closing.is_none() && wanted(self) {
            let rest = buf.get(used..).unwrap_or_default();
            match find_line(rest, max_line) {
                Ok(Some(n)) => {
                    let line = rest.get(..n).unwrap_or_default();
                    used += n;
                    if from == Peer::Client {
                        self.last_activity = now;
                        if self.over_prelogin_budget(n) {
                            break;
                        }
                        self.on_client_line(line);
                    } else {
                        self.backend_progress = now;
                        self.on_server_line(line);
                    }
                }
                Ok(None) => break,
                Err(LineError::TooLong { max }) => {
                    if from == Peer::Client {
                        self.metrics.refuse(Refusal::LineTooLong);
                        warn!(max, "client line too long; closing session");
                        self.reply_now(LocalReply::LineTooLong);
                        self.close(Outcome::ClientError);
                    } else {
                        warn!(max, "backend reply line too long; closing session");
                        self.reply_now(LocalReply::InvalidServerReply);
                        self.close(Outcome::BackendError);
                    }
                    break;
                }
            }
        }
        buf.drain(..used.min(buf.len()));
        self.settle();
    }

    /// The backend closed its control connection; replies complete in `buf` still go out.
    pub fn on_server_closed(&mut self, buf: &mut Vec<u8>, now: Instant) {
        debug!("backend closed control connection");
        self.on_server_input(buf, now);
        self.close(Outcome::Closed);
    }

    /// The client closed its control connection.
    pub fn on_client_closed(&mut self) {
        debug!("client closed control connection");
        self.close(Outcome::Closed);
    }

    /// A control connection failed.
    pub fn on_error(&mut self, err: &SessionError) {
        debug!(error = %err, "control connection failed");
        if let Some(reply) = err.reply() {
            self.reply_now(reply);
        }
        self.close(err.outcome());
    }

    /// News from a data connection.
    pub fn on_data_event(&mut self, ev: DataEvent, now: Instant) {
        self.now = now;
        match ev {
            DataEvent::Started { .. } => {
                self.active_data += 1;
                self.pending_data = self.pending_data.saturating_sub(1);
            }
            DataEvent::Finished(f) => {
                if !f.established {
                    self.pending_data = self.pending_data.saturating_sub(1);
                }
                if f.established {
                    self.active_data = self.active_data.saturating_sub(1);
                    self.stats
                        .transfer_finished(self.last_transfer, &f, &self.metrics);
                }
                self.last_activity = now;
            }
        }
        self.backend_progress = now;
        self.settle();
    }

    /// A session deadline passed.
    pub fn on_deadline(&mut self, kind: Deadline, now: Instant) {
        self.now = now;
        let (metric, reply) = match kind {
            Deadline::Login => (TimeoutKind::Login, LocalReply::LoginTimeout),
            Deadline::Idle => (TimeoutKind::Idle, LocalReply::IdleTimeout),
            Deadline::BackendReply => (TimeoutKind::BackendReply, LocalReply::BackendReplyTimeout),
        };
        self.metrics.timeout(metric);
        info!(kind = metric.label(), "session timeout");
        self.reply_now(reply);
        self.close(Outcome::Timeout);
    }

    /// The keepalive timer fired.
    pub fn on_keepalive(&mut self, now: Instant) {
        self.now = now;
        self.next_noop = None;
        if keepalive::noop_allowed(&self.ledger) {
            self.queue_for_backend(b"NOOP\r\n");
            self.ledger.injected(Injected::Noop);
            self.metrics.keepalive_noops_total.inc();
            debug!("keepalive NOOP sent to backend");
        }
        self.settle();
    }

    /// The backend handshake ([`Action::StartBackendTls`]) ended; `Err` names why.
    pub fn on_backend_tls(&mut self, result: Result<(), String>, now: Instant) {
        self.now = now;
        self.tls.backend_upgrade_due = false;
        match result {
            Ok(()) => {
                self.tls.backend = true;
                let own = std::mem::take(&mut self.tls.backend_handshake_pending);
                if inject_backend_prot(self.cfg.tls.backend_data, own) {
                    self.protect_backend_data();
                }
                self.replay_user();
                if self.tls.client_handshake_pending {
                    // Mirror: the backend is in TLS; now the client's turn.
                    self.reply_now(LocalReply::AuthTlsOk);
                    self.actions.push(Action::StartClientTls);
                }
            }
            Err(reason) => {
                warn!(reason = %reason, "TLS towards the backend failed; closing session");
                self.reply_now(LocalReply::BackendTlsFailed);
                self.close(Outcome::BackendError);
            }
        }
        self.settle();
    }

    /// The client handshake ([`Action::StartClientTls`]) ended; `Err` names why.
    pub fn on_client_tls(&mut self, result: Result<(), String>, now: Instant) {
        self.now = now;
        self.tls.client_handshake_pending = false;
        match result {
            Ok(()) => self.tls.client = true,
            Err(reason) => {
                info!(reason = %reason, "client TLS handshake failed; closing session");
                self.close(Outcome::ClientError);
            }
        }
        self.settle();
    }

    /// The backend connect asked by [`Action::ConnectBackend`] ended. Connected: the
    /// backend's greeting is owed (and swallowed), then `USER` is replayed. Failed:
    /// the client hears why, and the session ends.
    pub fn on_backend_connected(
        &mut self,
        result: Result<BackendConnected, NoUpstream>,
        now: Instant,
    ) {
        self.now = now;
        let Route::Connecting(user_line) = std::mem::replace(&mut self.route, Route::Connected)
        else {
            return;
        };
        match result {
            Ok(c) => {
                self.addrs.backend = c.backend;
                self.addrs.backend_local = c.backend_local;
                self.tls.backend = c.tls;
                self.ledger.banner_owed();
                self.backend_progress = now;
                self.route = Route::Replaying(user_line);
            }
            Err(no) => {
                self.reply_now(no.reply);
                self.close(no.outcome);
            }
        }
        self.settle();
    }

    /// The backend is ready for the client (greeted, and in TLS when ftpgate upgraded
    /// it): the `USER` line that chose it goes first, then whatever the client
    /// pipelined behind it.
    fn replay_user(&mut self) {
        if let Route::Replaying(line) = std::mem::replace(&mut self.route, Route::Connected) {
            self.forward(&line, Verb::User);
        }
    }

    /// The gateway drains: the session says `421` and closes at its next command
    /// boundary (at once when idle); a running transfer and a data connection already
    /// promised to the client are honoured first. See [`super::drain`].
    pub fn on_drain(&mut self) {
        self.draining = true;
        self.settle();
    }

    /// The gateway is shutting down.
    pub fn on_shutdown(&mut self) {
        self.reply_now(LocalReply::ShuttingDown);
        self.close(Outcome::Shutdown);
    }

    // ----- client commands -----

    fn on_client_line(&mut self, line: &[u8]) {
        let Ok(cmd) = parse_command(line) else {
            debug!("empty command line");
            self.answer(LocalReply::SyntaxError);
            return;
        };
        self.stats.commands += 1;
        self.metrics.command(cmd.verb);
        debug!(command = %LogText::from_str(&redact_for_log(line)), "client command");
        if self.route == Route::AwaitingUser {
            return self.on_line_before_user(&cmd, line);
        }
        let mode = self.cfg.backend_data_mode;
        let policy = self.cfg.tls.client_policy();
        if let Some(reply) = required_refusal(policy, self.cfg.tls.client_data, cmd.verb, &self.tls)
        {
            return self.refuse((Refusal::TlsRequired, reply));
        }
        match cmd.verb {
            // RFC 1639: a 228 passed through would leak the backend's address; refusing
            // makes clients fall back to EPSV/PASV.
            Verb::Lpsv | Verb::Lprt => {
                self.refuse((Refusal::LprtLpsv, LocalReply::LongModeRefused))
            }
            // RFC 2428 §4: after EPSV ALL only EPSV may set up data connections.
            Verb::Pasv | Verb::Port | Verb::Eprt if self.epsv_all => {
                self.refuse((Refusal::EpsvAll, LocalReply::EpsvAllInEffect))
            }
            Verb::Epsv if cmd.arg.eq_ignore_ascii_case(b"ALL") => {
                self.epsv_all = true;
                if mode == BackendDataMode::Active {
                    // Towards the backend ftpgate keeps using PORT/EPRT.
                    self.answer(LocalReply::EpsvAllAccepted);
                } else {
                    self.forward(line, cmd.verb);
                }
            }
            Verb::Port | Verb::Eprt => self.on_active_command(cmd.verb, cmd.arg, line),
            Verb::Pasv | Verb::Epsv if mode == BackendDataMode::Active => {
                self.answer_passive_locally(cmd.verb)
            }
            Verb::Pasv | Verb::Epsv => {
                // The backend's reply sets up the data connection: a PORT remembered
                // for passive translation is superseded.
                self.translation = Translation::Idle;
                self.forward(line, cmd.verb);
            }
            v if v.is_transfer() => self.on_transfer_command(line, v),
            Verb::Auth => self.on_auth(cmd.arg),
            Verb::Pbsz => match decide_pbsz(&self.tls, self.cfg.tls.backend_data) {
                ProtectionDecision::Answer(r) => self.answer(r),
                ProtectionDecision::Forward => self.forward(line, cmd.verb),
            },
            Verb::Prot => match decide_prot(cmd.arg, &self.tls, self.cfg.tls.backend_data) {
                (ProtectionDecision::Answer(r), private) => {
                    if let Some(p) = private {
                        self.tls.client_private = p;
                    }
                    self.answer(r);
                }
                (ProtectionDecision::Forward, private) => {
                    self.tls.pending_prot = private;
                    self.forward(line, cmd.verb);
                }
            },
            Verb::Ccc => self.refuse((Refusal::Ccc, LocalReply::CccRefused)),
            Verb::User => {
                self.stats.set_user(cmd.arg);
                self.forward(line, cmd.verb);
            }
            Verb::Abor | Verb::Stat => {
                // RFC 959 §4.1.3: relay the Telnet Synch the client sent, so servers
                // that watch for urgent data notice the command during a transfer.
                // Inside TLS there is no urgent data: the command goes in band
                // (ProFTPD mod_proxy does the same).
                if let Some(dm) = find_synch(line).filter(|_| !self.tls.backend) {
                    self.out.urgent_at = Some(self.out.to_backend.len() + dm);
                }
                self.forward(line, cmd.verb);
            }
            verb => self.forward(line, verb),
        }
    }

    /// A client command under `balance: user` before any backend exists.
    fn on_line_before_user(&mut self, cmd: &crate::protocol::command::Command<'_>, line: &[u8]) {
        let policy = TlsPolicy {
            client: self.cfg.tls.client_policy(),
            client_data: self.cfg.tls.client_data,
        };
        match before_user(cmd, &self.tls, policy) {
            BeforeUser::Route(user) => {
                self.stats.set_user(cmd.arg);
                debug!("USER received; choosing a backend");
                self.route = Route::Connecting(line.to_vec());
                self.actions
                    .push(Action::ConnectBackend(RouteRequest { user }));
            }
            BeforeUser::Answer(reply) => self.answer(reply),
            BeforeUser::Refuse(reason, reply) => self.refuse((reason, reply)),
            BeforeUser::Quit => {
                self.answer(LocalReply::Goodbye);
                self.close(Outcome::Closed);
            }
            BeforeUser::StartTls => {
                self.tls.client_handshake_pending = true;
                self.answer(LocalReply::AuthTlsOk);
            }
            // No backend in TLS yet: the FTPS step answers locally.
            BeforeUser::Protection if cmd.verb == Verb::Pbsz => {
                match decide_pbsz(&self.tls, self.cfg.tls.backend_data) {
                    ProtectionDecision::Answer(r) => self.answer(r),
                    ProtectionDecision::Forward => self.answer(LocalReply::LoginFirst),
                }
            }
            BeforeUser::Protection => {
                match decide_prot(cmd.arg, &self.tls, self.cfg.tls.backend_data) {
                    (ProtectionDecision::Answer(r), private) => {
                        if let Some(p) = private {
                            self.tls.client_private = p;
                        }
                        self.answer(r);
                    }
                    (ProtectionDecision::Forward, _) => self.answer(LocalReply::LoginFirst),
                }
            }
        }
    }

    /// ftpgate's own upgrade of the backend (after its `220`): `AUTH TLS`, and the
    /// client is not read until the handshake is done.
    fn upgrade_backend(&mut self) {
        debug!("upgrading the backend control connection to TLS");
        self.tls.backend_handshake_pending = true;
        self.queue_for_backend(TlsCommand::Auth.line());
        self.ledger.injected(Injected::Tls(TlsCommand::Auth));
    }

    /// The backend's `234`: it handshakes next. Nothing it sent behind the `234` is a
    /// reply: RFC 4217 §4 makes the next bytes TLS, so plain text there is an
    /// injection attempt (CVE-2011-0411 class) and is not framed; the driver discards it.
    fn start_backend_tls(&mut self) {
        self.tls.backend_upgrade_due = true;
        self.actions.push(Action::StartBackendTls);
    }

    /// `PBSZ 0` and `PROT P` to a backend ftpgate put into TLS itself: its data
    /// connections are protected whatever the client does (servers like vsftpd
    /// refuse clear data on TLS sessions by default).
    fn protect_backend_data(&mut self) {
        for cmd in [TlsCommand::Pbsz, TlsCommand::Prot] {
            self.queue_for_backend(cmd.line());
            self.ledger.injected(Injected::Tls(cmd));
        }
    }

    /// The backend answered one of ftpgate's own FTPS commands.
    fn on_tls_command_reply(&mut self, cmd: TlsCommand, code: u16, line: &[u8]) {
        match (cmd, code) {
            (TlsCommand::Auth, 234) => self.start_backend_tls(),
            (TlsCommand::Auth, _) => {
                warn!(code, reply = %LogText(trim_eol(line)), "backend refused AUTH TLS (tls.backend requires it); closing session");
                self.reply_now(LocalReply::BackendTlsFailed);
                self.close(Outcome::BackendError);
            }
            (TlsCommand::Pbsz, _) => {}
            (TlsCommand::Prot, c) => {
                self.tls.backend_private = (200..300).contains(&c);
                if !self.tls.backend_private {
                    warn!(code, reply = %LogText(trim_eol(line)), "backend refused PROT P; its data connections stay clear");
                }
            }
        }
    }

    /// `AUTH` from the client: refused, answered with our `234`, or sent on to the
    /// backend first (mirror). Either way the client is not read until its handshake.
    fn on_auth(&mut self, arg: &[u8]) {
        let policy = self.cfg.tls.client_policy();
        let transparent = self.addrs.mode == ListenerMode::Transparent;
        match decide_auth(policy, self.cfg.tls.backend, transparent, arg, &self.tls) {
            AuthDecision::Passthrough => {
                info!("AUTH in transparent mode: forwarded; on 234 the control connection becomes an opaque relay");
                self.tls.passthrough_pending = true;
                self.forward(&[b"AUTH ", arg].concat(), Verb::Auth);
            }
            AuthDecision::Refuse(LocalReply::AuthUnsupported) => {
                self.refuse((Refusal::AuthTls, LocalReply::AuthUnsupported))
            }
            AuthDecision::Refuse(r) => self.answer(r),
            AuthDecision::AcceptLocally => {
                self.tls.client_handshake_pending = true;
                self.answer(LocalReply::AuthTlsOk);
            }
            AuthDecision::ForwardToBackend => {
                self.tls.client_handshake_pending = true;
                self.queue_for_backend(b"AUTH TLS\r\n");
                self.ledger.forwarded(Verb::Auth);
            }
        }
    }

    /// `PORT`/`EPRT` from the client, checked against the bounce attack, then either
    /// relayed (rewritten to a backend-side listener of ftpgate's) or, in passive
    /// translation, answered by ftpgate and remembered for the transfer command.
    fn on_active_command(&mut self, verb: Verb, arg: &[u8], line: &[u8]) {
        let target = match check_active_target(
            verb,
            arg,
            self.addrs.client_ip,
            &self.cfg.active.allow_foreign,
        ) {
            Ok(t) => t,
            Err(refused) => {
                if refused.0 == Refusal::Bounce {
                    warn!(verb = verb.as_str(), argument = %LogText(arg), "bounce attempt refused: data address is not the client's");
                }
                return self.refuse(refused);
            }
        };
        self.withdraw_data();
        if self.cfg.backend_data_mode == BackendDataMode::Passive {
            // The backend will be asked for EPSV when the transfer command comes.
            self.translation = Translation::ClientPort(target);
            return self.answer(LocalReply::ActiveAccepted(verb));
        }
        self.translation = Translation::Idle;
        let (backend_side, ours) = match self.backend_side_listener() {
            Ok(x) => x,
            // The backend was never told: answer in its stead.
            Err(why) => return self.refuse((Refusal::DataPort, LocalReply::CantPrepareData(why))),
        };
        let client = self.client_endpoint(target);
        self.open_data(DataMode::Active, client, backend_side);
        let announce = backend_announce(self.addrs.mode, self.cfg.public_v4(), ours);
        let cmd = format_data_command(verb, announce);
        debug!(original = %LogText::from_str(&redact_for_log(line)), rewritten = %cmd.trim_end(), "active command rewritten");
        self.metrics.rewrite(rewrite_kind_of(&cmd));
        self.queue_for_backend(cmd.as_bytes());
        self.ledger.forwarded(verb);
    }

    /// Active translation: the client asked for passive mode; ftpgate answers with a
    /// listener of its own and the backend gets PORT/EPRT at the transfer command.
    fn answer_passive_locally(&mut self, verb: Verb) {
        self.withdraw_data();
        self.translation = Translation::Idle;
        let announce = match verb {
            Verb::Pasv => announce_v4(
                self.addrs.mode,
                self.cfg.public_v4(),
                self.addrs.client_local.ip(),
            )
            .map(IpAddr::V4),
            _ => Some(self.addrs.client_local.ip()),
        };
        let Some(announce) = announce else {
            return self.refuse((Refusal::NoIpv4, LocalReply::NoIpv4ForPasv));
        };
        let (endpoint, port) = match self.client_side_listener(verb) {
            Ok(x) => x,
            Err(why) => return self.refuse((Refusal::DataPort, LocalReply::CantOpenPassive(why))),
        };
        self.translation = Translation::ClientListening(endpoint);
        self.answer(match (verb, announce) {
            (Verb::Pasv, IpAddr::V4(v4)) => LocalReply::PassiveAt(SocketAddrV4::new(v4, port)),
            _ => LocalReply::ExtendedPassiveAt(port),
        });
    }

    fn on_transfer_command(&mut self, line: &[u8], verb: Verb) {
        self.last_transfer = Some(verb);
        match std::mem::take(&mut self.translation) {
            Translation::ClientPort(client) => {
                self.translation = Translation::Awaiting {
                    setup: Setup::Epsv { client },
                    held: HeldCommand {
                        line: line.to_vec(),
                        verb,
                    },
                };
                self.inject_setup(b"EPSV\r\n");
            }
            Translation::ClientListening(client) => match self.backend_side_listener() {
                Ok((backend, ours)) => {
                    let cmd = format_data_command(
                        if ours.is_ipv4() {
                            Verb::Port
                        } else {
                            Verb::Eprt
                        },
                        ours,
                    );
                    self.metrics.rewrite(rewrite_kind_of(&cmd));
                    self.translation = Translation::Awaiting {
                        setup: Setup::Port { client, backend },
                        held: HeldCommand {
                            line: line.to_vec(),
                            verb,
                        },
                    };
                    self.inject_setup(cmd.as_bytes());
                }
                Err(why) => self.refuse((Refusal::DataPort, LocalReply::CantOpenDataWith(why))),
            },
            other => {
                self.translation = other;
                self.forward(line, verb);
            }
        }
    }

    fn inject_setup(&mut self, cmd: &[u8]) {
        debug!(command = %LogText(trim_eol(cmd)), "data-setup command sent to backend");
        self.queue_for_backend(cmd);
        self.ledger.injected(Injected::DataSetup);
    }

    // ----- server replies -----

    fn on_server_line(&mut self, line: &[u8]) {
        let outcome = match self.ledger.on_server_line(line) {
            Ok(o) => o,
            Err(e) => {
                warn!(error = %e, line = %LogText(trim_eol(line)), "malformed reply from backend; closing session");
                self.reply_now(LocalReply::InvalidServerReply);
                return self.close(Outcome::BackendError);
            }
        };
        // The code the client receives for a reply ending here, if it receives one.
        let mut sent = outcome.ended.map(|e| e.code.0);
        let preliminary = outcome.ended.is_some_and(|e| {
            e.code.0 < 200 && matches!(e.origin, Some(Origin::Client(v)) if v.is_transfer())
        });
        if preliminary {
            self.actions.push(Action::TransferPreliminary);
        }
        let ended_for = |verb: Verb| {
            outcome
                .ended
                .filter(|e| e.origin == Some(Origin::Client(verb)) && e.code.is_final())
                .map(|e| e.code.0)
        };
        if let Some(code) = ended_for(Verb::Auth).filter(|_| self.tls.passthrough_pending) {
            if code == 234 {
                self.push_line(line);
                self.metrics.reply(code);
                self.actions.push(Action::Passthrough);
                return;
            }
            self.tls.passthrough_pending = false;
        }
        if let Some(code) = ended_for(Verb::Auth) {
            if code == 234 {
                // Mirror: ftpgate's own 234 follows the backend handshake.
                self.start_backend_tls();
                self.reply_lines.clear();
                return;
            }
            warn!(code, reply = %LogText(trim_eol(line)), "backend refused AUTH TLS");
            self.tls.client_handshake_pending = false;
        }
        if let Some(code) = ended_for(Verb::Prot) {
            if let Some(p) = self
                .tls
                .pending_prot
                .take()
                .filter(|_| (200..300).contains(&code))
            {
                self.tls.client_private = p;
                self.tls.backend_private = p;
            }
        }
        match outcome.disposition {
            Disposition::Forward => {
                let feat_end =
                    matches!(outcome.line, ReplyLine::End(_)) && ended_for(Verb::Feat) == Some(211);
                if feat_end {
                    let policy = self.cfg.tls.client_policy();
                    for f in missing_features(policy, &self.reply_lines) {
                        push_line(&mut self.out.to_client, f);
                    }
                } else if outcome.ended.is_none() && self.reply_lines.len() < 256 {
                    self.reply_lines.push(trim_eol(line).to_vec());
                }
                self.push_line(line);
            }
            Disposition::Swallow => sent = None,
            Disposition::Intercept => {
                sent = None;
                if let Some(ended) = outcome.ended.filter(|e| e.code.is_final()) {
                    match ended.origin {
                        Some(Origin::Injected(Injected::Tls(cmd))) => {
                            self.on_tls_command_reply(cmd, ended.code.0, line);
                        }
                        _ => self.on_setup_reply(line, ended.code.0),
                    }
                }
            }
            Disposition::RewritePasv | Disposition::RewriteEpsv => {
                let from_client = match outcome.ended {
                    Some(e) => matches!(e.origin, Some(Origin::Client(_)) | None),
                    // Not the last line: a multi-line reply, whoever it belongs to.
                    None => true,
                };
                if !from_client {
                    self.push_line(line);
                } else if !self.maps_passive() {
                    self.fix_passive_line(line, outcome.disposition);
                } else {
                    sent = self.on_passive_line(line, outcome.line, outcome.disposition);
                }
            }
        }
        if let Some(code) = sent {
            self.metrics.reply(code);
        }
        if outcome.ended.is_some() {
            self.reply_lines.clear();
            self.emit_local_replies();
        }
        // The backend's greeting: forwarded, or swallowed after ftpgate's own.
        let greeting = outcome.ended.filter(|e| {
            e.code.is_final()
                && matches!(
                    e.origin,
                    Some(Origin::Greeting | Origin::Injected(Injected::Banner))
                )
        });
        if greeting.is_some_and(|e| e.code.0 == 220) {
            if upgrade_backend_at_greeting(self.cfg.tls.backend, &self.tls) {
                self.upgrade_backend();
            } else if self.tls.backend && inject_backend_prot(self.cfg.tls.backend_data, true) {
                // Implicit backend: already TLS; protect its data the same way.
                self.protect_backend_data();
            }
            if !self.tls.backend_handshake_pending {
                self.replay_user();
            }
        } else if let Some(e) = greeting.filter(|_| matches!(self.route, Route::Replaying(_))) {
            // The client has had ftpgate's 220; only a 421 can say the server said no.
            warn!(code = e.code.0, reply = %LogText(trim_eol(line)), "backend refused the session at its greeting");
            self.reply_now(LocalReply::BackendRefusedSession);
            self.close(Outcome::BackendUnavailable);
        }
    }

    /// Whether passive replies are mapped through ftpgate's own ports. On a gateway
    /// without `map_passive` they pass through and clients connect out through NAT.
    fn maps_passive(&self) -> bool {
        self.addrs.mode == ListenerMode::Reverse || self.cfg.transparent.map_passive
    }

    /// One line of a client's `227`/`229`. Only a reply's final line is mapped (RFC
    /// 959 §4.2); the lines before it are held so that, if it cannot be mapped, one
    /// `425` replaces the whole reply. Returns the code sent when the reply ended.
    fn on_passive_line(&mut self, line: &[u8], kind: ReplyLine, how: Disposition) -> Option<u16> {
        let last = matches!(kind, ReplyLine::Single(_) | ReplyLine::End(_));
        if !last {
            self.held_reply
                .get_or_insert_with(HeldReply::default)
                .push(line);
            return None;
        }
        let held = self.held_reply.take().unwrap_or_default();
        let mapped = if held.overflowed() {
            self.metrics.refuse(Refusal::PassiveReplyTooLong);
            Err("reply from server too long".to_string())
        } else {
            self.map_passive(line, how)
        };
        match mapped {
            Ok(rewritten) => {
                for l in held.lines() {
                    push_line(&mut self.out.to_client, l);
                }
                push_line(&mut self.out.to_client, &rewritten);
                parse_code(line).map(|c| c.0)
            }
            Err(why) => {
                warn!(reason = %why, original = %LogText(trim_eol(line)), "passive reply not mapped");
                let reply = LocalReply::CantOpenPassive(why);
                self.out.to_client.extend_from_slice(&reply.to_bytes());
                Some(reply.code())
            }
        }
    }

    /// Maps a passive reply's final line to a port of ftpgate's, starting the data
    /// connection; the error says why it could not be.
    fn map_passive(&mut self, line: &[u8], how: Disposition) -> Result<Vec<u8>, String> {
        let (verb, target) = if how == Disposition::RewritePasv {
            let t = find_pasv_tuple(line)
                .map_err(|e| format!("unparsable 227 reply from server ({e})"))?;
            (Verb::Pasv, self.pasv_target(t.addr))
        } else {
            let p = find_epsv_port(line)
                .map_err(|e| format!("unparsable 229 reply from server ({e})"))?;
            // RFC 2428 §3: the data connection goes to the control connection's address.
            (Verb::Epsv, SocketAddr::new(self.addrs.backend.ip(), p.port))
        };
        if target.port() == 0 {
            return Err("server named data port 0".into());
        }
        let public = match verb {
            Verb::Pasv => Some(
                announce_v4(
                    self.addrs.mode,
                    self.cfg.public_v4(),
                    self.addrs.client_local.ip(),
                )
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
        let backend = self.backend_endpoint(target);
        self.withdraw_data();
        self.open_data(DataMode::Passive, client, backend);
        self.metrics.rewrite(if public.is_some() {
            RewriteKind::Pasv227
        } else {
            RewriteKind::Epsv229
        });
        debug!(original = %LogText(trim_eol(line)), rewritten = %LogText(trim_eol(&rewritten)), "passive reply rewritten");
        Ok(rewritten)
    }

    /// Gateway mode without mapping: a `227` naming a private address, from a server
    /// whose control address is public, names the control address instead.
    fn fix_passive_line(&mut self, line: &[u8], how: Disposition) {
        let fixable = how == Disposition::RewritePasv && self.cfg.transparent.fix_private_pasv;
        let fixed = fixable
            .then(|| find_pasv_tuple(line).ok())
            .flatten()
            .and_then(|t| {
                let to = fix_private_pasv(*t.addr.ip(), self.addrs.backend.ip())?;
                let fixed = rewrite_227(line, SocketAddrV4::new(to, t.addr.port())).ok()?;
                info!(named = %t.addr.ip(), server = %to, "server named a private address in 227; using its control address");
                Some(fixed)
            });
        match fixed {
            Some(f) => {
                self.metrics.rewrite(RewriteKind::Pasv227);
                self.push_line(&f);
            }
            None => self.push_line(line),
        }
    }

    /// Where to connect for a backend's `227`; a substitution is counted and logged.
    fn pasv_target(&self, advertised: SocketAddrV4) -> SocketAddr {
        let decision = passive_target(
            advertised,
            self.addrs.backend.ip(),
            self.cfg.passive.target,
            &self.cfg.passive.allow_targets,
            |ip| self.edge.is_own_address(ip),
        );
        if let PassiveTargetDecision::Substituted { named, used } = decision {
            self.metrics.refuse(Refusal::PassiveTarget);
            warn!(%named, %used, "backend's 227 names an address ftpgate does not connect to; using its control address (see passive.allow_targets)");
        }
        decision.addr()
    }

    /// The backend answered ftpgate's data-setup command: open the data connection and
    /// release the held transfer command, or answer the client in the backend's stead.
    fn on_setup_reply(&mut self, line: &[u8], code: u16) {
        let Translation::Awaiting { setup, held } = std::mem::take(&mut self.translation) else {
            return;
        };
        let backend_ip = self.addrs.backend.ip();
        let verdict = setup_reply(setup, line, code, backend_ip, |a| self.pasv_target(a));
        match verdict {
            SetupVerdict::RetryWithPasv { client } => {
                self.translation = Translation::Awaiting {
                    setup: Setup::Pasv { client },
                    held,
                };
                self.inject_setup(b"PASV\r\n");
            }
            SetupVerdict::Connect { client, backend } => {
                let client = self.client_endpoint(client);
                let backend = self.backend_endpoint(backend);
                self.withdraw_data();
                self.open_data(DataMode::Active, client, backend);
                self.forward(&held.line, held.verb);
            }
            SetupVerdict::Accept { client, backend } => {
                self.withdraw_data();
                self.open_data(DataMode::Passive, client, backend);
                self.forward(&held.line, held.verb);
            }
            SetupVerdict::Refused => {
                warn!(code, reply = %LogText(trim_eol(line)), "backend refused data setup");
                self.answer(LocalReply::CantOpenData);
            }
        }
    }

    // ----- data endpoints -----

    fn client_side_listener(
        &mut self,
        verb: Verb,
    ) -> Result<(EndpointSpec<E::Listener>, u16), String> {
        let ip = client_listener_ip(verb, self.addrs.client_local.ip());
        let (port, listener) = self
            .edge
            .bind_data_listener(ListenerSide::Client, ip)
            .map_err(|e| self.lease_error(e))?;
        let expect = self.addrs.client_ip;
        Ok((EndpointSpec::Accept { listener, expect }, port))
    }

    /// A listener on ftpgate's backend-side address for a backend's active-mode data
    /// connection, accepting only that backend.
    fn backend_side_listener(&mut self) -> Result<(EndpointSpec<E::Listener>, SocketAddr), String> {
        let ip = self.addrs.backend_local.ip();
        let (port, listener) = self
            .edge
            .bind_data_listener(ListenerSide::Backend, ip)
            .map_err(|e| self.lease_error(e))?;
        let expect = self.addrs.backend.ip();
        Ok((
            EndpointSpec::Accept { listener, expect },
            SocketAddr::new(ip, port),
        ))
    }

    fn client_endpoint(&self, target: SocketAddr) -> EndpointSpec<E::Listener> {
        let local = client_connect_local(
            self.addrs.mode,
            self.cfg.active.source_port,
            self.addrs.client_local.ip(),
            target,
        );
        EndpointSpec::Connect { target, local }
    }

    /// Backends see data connections from the control connection's local address
    /// (vsftpd refuses others: its `pasv_promiscuous=NO` check).
    fn backend_endpoint(&self, target: SocketAddr) -> EndpointSpec<E::Listener> {
        EndpointSpec::Connect {
            target,
            local: Some(SocketAddr::new(self.addrs.backend_local.ip(), 0)),
        }
    }

    fn lease_error(&mut self, e: LeaseError) -> String {
        match e {
            LeaseError::Exhausted(n) => {
                self.metrics.data_port_exhausted_total.inc();
                warn!(ports = n, "data-port range exhausted");
            }
            LeaseError::PerSession(n) => {
                self.metrics.refuse(Refusal::DataPortsPerSession);
                if !std::mem::replace(&mut self.port_share_logged, true) {
                    info!(ports = n, "session holds its data-port share (limits.data_ports_per_session); further refusals counted, not logged");
                }
            }
            LeaseError::Bind(_) => {}
        }
        e.to_string()
    }

    fn withdraw_data(&mut self) {
        self.actions.push(Action::WithdrawData);
    }

    fn open_data(
        &mut self,
        mode: DataMode,
        client: EndpointSpec<E::Listener>,
        backend: EndpointSpec<E::Listener>,
    ) {
        self.next_data_id += 1;
        self.pending_data += 1;
        self.actions.push(Action::OpenData(DataSpec {
            id: self.next_data_id,
            mode,
            client,
            backend,
            tls: data_tls(&self.tls),
        }));
    }

    // ----- output -----

    fn forward(&mut self, line: &[u8], verb: Verb) {
        // RFC 1123 §4.1.2.10: accept bare LF, but always send CRLF.
        let line = trim_eol(line);
        self.queue_for_backend(line);
        self.queue_for_backend(b"\r\n");
        self.ledger.forwarded(verb);
    }

    /// Queues bytes for the backend; a command sent while the backend owes nothing
    /// starts the reply clock.
    fn queue_for_backend(&mut self, bytes: &[u8]) {
        if !self.ledger.awaiting_server() {
            self.backend_progress = self.now;
        }
        self.out.to_backend.extend_from_slice(bytes);
    }

    fn push_line(&mut self, line: &[u8]) {
        push_line(&mut self.out.to_client, line);
    }

    /// Answers the client's command in turn (after the replies owed before it).
    fn answer(&mut self, reply: LocalReply) {
        self.ledger.answer_locally(reply.to_bytes());
    }

    fn refuse(&mut self, (reason, reply): Refused) {
        self.metrics.refuse(reason);
        info!(reason = reason.label(), reply = %reply, "command refused");
        self.answer(reply);
    }

    /// A reply that goes out at once: the session is ending.
    fn reply_now(&mut self, reply: LocalReply) {
        self.metrics.reply(reply.code());
        self.out.to_client.extend_from_slice(&reply.to_bytes());
    }

    fn emit_local_replies(&mut self) {
        while let Some(reply) = self.ledger.next_local_reply() {
            let code = parse_code(&reply).map(|c| c.0);
            if let Some(code) = code {
                self.metrics.reply(code);
            }
            self.out.to_client.extend_from_slice(&reply);
            // RFC 2228: after our 234 the next byte on the control connection is TLS.
            if code == Some(234) {
                self.actions.push(Action::StartClientTls);
            }
        }
    }

    fn close(&mut self, outcome: Outcome) {
        if self.closing.is_none() {
            self.closing = Some(outcome);
            self.actions.push(Action::Close(outcome));
        }
    }

    /// After every input: local replies whose turn came go out, and the keepalive
    /// follows the transfer state.
    fn settle(&mut self) {
        self.emit_local_replies();
        self.next_noop = keepalive::next_noop(
            self.next_noop,
            self.cfg.keepalive.noop_interval,
            self.ledger.running_transfer().is_some(),
            self.now,
        );
        if self.draining
            && self.closing.is_none()
            && drain_step(self.drain_view()) == DrainStep::CloseNow
        {
            debug!("draining: closing at a command boundary");
            self.reply_now(LocalReply::Draining);
            self.close(Outcome::Drained);
        }
    }

    /// What draining waits for.
    fn drain_view(&self) -> DrainView {
        DrainView {
            replies_owed: self.ledger.outstanding(),
            // A TLS handshake under way is a command (AUTH) not yet finished.
            command_held: self.translation.holding()
                || matches!(self.route, Route::Connecting(_) | Route::Replaying(_))
                || self.tls.client_handshake_pending
                || self.tls.backend_handshake_pending,
            data_running: self.active_data,
            // A PORT answered by ftpgate (passive translation) or its own 227/229
            // (active translation) is a promise too, though no task runs yet.
            data_pending: self.pending_data
                + usize::from(!matches!(self.translation, Translation::Idle)),
            reply_held: self.held_reply.is_some(),
        }
    }

    /// A transfer or a translation is in flight: the session is not idle.
    fn busy(&self) -> bool {
        self.active_data > 0 || self.ledger.transfer_outstanding() || self.translation.holding()
    }
}

fn push_line(out: &mut Vec<u8>, line: &[u8]) {
    out.extend_from_slice(trim_eol(line));
    out.extend_from_slice(b"\r\n");
}

fn rewrite_kind_of(cmd: &str) -> RewriteKind {
    if cmd.starts_with("PORT") {
        RewriteKind::Port
    } else {
        RewriteKind::Eprt
    }
}

#[cfg(test)]
#[path = "machine_tests.rs"]
mod tests;
