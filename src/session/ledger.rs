//! The reply ledger of one control connection: who each server reply answers
//! (ARCHITECTURE invariant 1). Pure.
//!
//! FTP is strictly request/reply (RFC 959 §4.2): every command gets exactly one final
//! reply (2xx–5xx), optionally preceded by 1xx preliminaries, and a multi-line reply is
//! one reply. The state keeps a FIFO of what is owed, oldest first:
//!
//! ```text
//!   client command ──forward──▶ [Server(Client(verb))] ─┐
//!   ftpgate NOOP   ──inject───▶ [Server(Injected(Noop))] │ FIFO
//!   ftpgate EPSV…  ──inject───▶ [Server(Injected(DataSetup))]
//!   client command ──refuse───▶ [Local(reply)]          ─┘
//!
//!   server line ──framer──▶ Single/Begin: owner = head of FIFO (or unsolicited),
//!                             except: while a transfer runs, a 200/211/212/213 belongs
//!                             to the first NOOP/STAT queued behind it
//!                           Inner: same owner
//!                           Single/End with final code: remove the owner
//!   head is Local and no reply is mid-block ──▶ emit the local reply, pop
//! ```
//!
//! Owner `Injected(Noop)`: swallowed. Owner `Injected(DataSetup)`: handed to the
//! session machine's translation step, never to the client. `227`/`229` owned by the client are marked for rewriting;
//! everything else is forwarded byte for byte. Local replies wait behind the server
//! replies owed before them, so the client sees replies in command order.
//!
//! Why the transfer exception: during a transfer some servers (proftpd) answer a NOOP
//! or STAT at once, before the transfer's `226`; others (vsftpd) only after it. A
//! transfer command never completes with 200 or 211–213 (RFC 959 §5.4), so those codes
//! while a transfer runs can only answer a later NOOP/STAT.

use std::collections::VecDeque;

use crate::protocol::command::Verb;
use crate::protocol::reply::{ReplyCode, ReplyError, ReplyFramer, ReplyLine};

/// Commands ftpgate sends on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Injected {
    /// Keepalive: the reply is swallowed.
    Noop,
    /// PASV/EPSV/PORT/EPRT for mode translation: the reply goes to the translation step.
    DataSetup,
    /// The backend's greeting when ftpgate greeted the client itself (`balance:
    /// user`): swallowed, the client has had its `220`.
    Banner,
    /// `AUTH TLS`, `PBSZ 0`, `PROT P` when ftpgate itself upgrades the backend
    /// (`tls.backend: required`, or an implicit-TLS client): the reply goes to the
    /// TLS step, never to the client.
    Tls(TlsCommand),
}

/// The FTPS commands ftpgate sends on its own (RFC 4217 §§4, 8, 9).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsCommand {
    /// `AUTH TLS`.
    Auth,
    /// `PBSZ 0`.
    Pbsz,
    /// `PROT P`.
    Prot,
}

impl TlsCommand {
    /// The command line sent.
    pub fn line(self) -> &'static [u8] {
        match self {
            TlsCommand::Auth => b"AUTH TLS\r\n",
            TlsCommand::Pbsz => b"PBSZ 0\r\n",
            TlsCommand::Prot => b"PROT P\r\n",
        }
    }
}

/// Who a server reply answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The `220` banner (possibly after `120`).
    Greeting,
    /// A command the client sent.
    Client(Verb),
    /// A command ftpgate sent on its own (keepalive NOOP, data setup).
    Injected(Injected),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Pending {
    /// `started`: a 1xx arrived (for a transfer: the data connection is in use).
    Server {
        origin: Origin,
        started: bool,
    },
    Local(Vec<u8>),
}

/// What to do with one server line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Pass the line to the client unchanged.
    Forward,
    /// Drop the line: it answers ftpgate's keepalive `NOOP`.
    Swallow,
    /// A line of a reply to ftpgate's own data-setup command.
    Intercept,
    /// A line of a `227` reply: rewrite the tuple if the line carries one.
    RewritePasv,
    /// A line of a `229` reply: rewrite the port if the line carries one.
    RewriteEpsv,
}

/// A reply that ended with the line just classified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ended {
    /// `None` for an unsolicited reply (e.g. `421` idle timeout with nothing outstanding).
    pub origin: Option<Origin>,
    /// The reply's code.
    pub code: ReplyCode,
}

/// The classification of one server line, with the reply it completed, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineOutcome {
    /// The parsed line.
    pub line: ReplyLine,
    /// What to do with it.
    pub disposition: Disposition,
    /// Set on the last line of a reply, preliminary or final.
    pub ended: Option<Ended>,
}

#[derive(Debug, Clone, Copy)]
struct Current {
    /// Index into `pending` of the owner, `None` when unsolicited.
    owner: Option<usize>,
    origin: Option<Origin>,
    disposition: Disposition,
}

/// The replies a session is owed, oldest first: matches each server reply to the
/// command it answers and decides what reaches the client.
#[derive(Debug)]
pub struct ReplyLedger {
    pending: VecDeque<Pending>,
    framer: ReplyFramer,
    current: Option<Current>,
    rewrite_passive: bool,
    logged_in: bool,
}

impl ReplyLedger {
    /// A fresh session, owed the server's greeting.
    pub fn new(rewrite_passive: bool) -> Self {
        ReplyLedger {
            pending: VecDeque::from([Pending::Server {
                origin: Origin::Greeting,
                started: false,
            }]),
            framer: ReplyFramer::new(),
            current: None,
            rewrite_passive,
            logged_in: false,
        }
    }

    /// A session with no backend yet (`balance: user`): ftpgate greets the client
    /// itself, so nothing is owed until [`Self::banner_owed`].
    pub fn unconnected(rewrite_passive: bool) -> Self {
        let mut s = Self::new(rewrite_passive);
        s.pending.clear();
        s
    }

    /// The backend of an [`Self::unconnected`] session is connected: its greeting is
    /// owed, and swallowed (the client has had ftpgate's `220`). Owed before anything
    /// else: nothing was sent to the backend yet.
    pub fn banner_owed(&mut self) {
        self.pending.push_front(Pending::Server {
            origin: Origin::Injected(Injected::Banner),
            started: false,
        });
    }

    /// Replies still owed to the client or to ftpgate.
    pub fn outstanding(&self) -> usize {
        self.pending.len()
    }

    /// Replies owed for commands of the client's (or local answers to them).
    pub fn client_outstanding(&self) -> usize {
        self.pending
            .iter()
            .filter(|p| {
                !matches!(
                    p,
                    Pending::Server {
                        origin: Origin::Injected(_),
                        ..
                    }
                )
            })
            .count()
    }

    /// Whether the server has accepted a login (a 230/232 to USER/PASS/ACCT).
    pub fn logged_in(&self) -> bool {
        self.logged_in
    }

    /// The client's command was forwarded to the server.
    pub fn forwarded(&mut self, verb: Verb) {
        self.push_server(Origin::Client(verb));
    }

    /// ftpgate sent a command of its own.
    pub fn injected(&mut self, kind: Injected) {
        self.push_server(Origin::Injected(kind));
    }

    fn push_server(&mut self, origin: Origin) {
        self.pending.push_back(Pending::Server {
            origin,
            started: false,
        });
    }

    /// The client's command is answered by ftpgate itself, in turn.
    pub fn answer_locally(&mut self, reply: Vec<u8>) {
        self.pending.push_back(Pending::Local(reply));
    }

    /// The next local reply whose turn has come, if any. Call until `None` after
    /// every change.
    pub fn next_local_reply(&mut self) -> Option<Vec<u8>> {
        if self.framer.in_block() {
            return None;
        }
        if !matches!(self.pending.front(), Some(Pending::Local(_))) {
            return None;
        }
        match self.pending.pop_front() {
            Some(Pending::Local(r)) => Some(r),
            _ => None,
        }
    }

    /// The transfer command at the head of the FIFO, once its data connection is in
    /// use (a 1xx arrived) — the time the control connection sits idle.
    pub fn running_transfer(&self) -> Option<Verb> {
        match self.pending.front() {
            Some(Pending::Server {
                origin: Origin::Client(v),
                started: true,
            }) if v.is_transfer() => Some(*v),
            _ => None,
        }
    }

    /// Whether a transfer command of the client's is still owed its final reply.
    pub fn transfer_outstanding(&self) -> bool {
        self.pending.iter().any(
            |p| matches!(p, Pending::Server { origin: Origin::Client(v), .. } if v.is_transfer()),
        )
    }

    /// Keepalive is safe while a transfer runs and the client waits for nothing else
    /// (ARCHITECTURE invariant 2): only our own NOOPs may be queued behind it.
    pub fn keepalive_allowed(&self) -> bool {
        self.running_transfer().is_some()
            && self.pending.iter().skip(1).all(|p| {
                matches!(
                    p,
                    Pending::Server {
                        origin: Origin::Injected(Injected::Noop),
                        ..
                    }
                )
            })
    }

    /// Whether the server owes any reply (to the client or to ftpgate): the time a
    /// backend that stops answering can hold the session.
    pub fn awaiting_server(&self) -> bool {
        self.pending
            .iter()
            .any(|p| matches!(p, Pending::Server { .. }))
    }

    /// Classifies one server line and settles who it answers.
    pub fn on_server_line(&mut self, line: &[u8]) -> Result<LineOutcome, ReplyError> {
        let kind = self.framer.classify(line)?;
        let (current, ended_code) = match kind {
            ReplyLine::Single(code) => (self.start_reply(code), Some(code)),
            ReplyLine::Begin(code) => {
                let c = self.start_reply(code);
                self.current = Some(c);
                (c, None)
            }
            ReplyLine::Inner => (self.current_or_unsolicited(), None),
            ReplyLine::End(code) => {
                let c = self.current_or_unsolicited();
                self.current = None;
                (c, Some(code))
            }
        };
        let ended = ended_code.map(|code| {
            if let Some(i) = current.owner {
                self.settle(i, current.origin, code);
            }
            Ended {
                origin: current.origin,
                code,
            }
        });
        Ok(LineOutcome {
            line: kind,
            disposition: current.disposition,
            ended,
        })
    }

    fn settle(&mut self, i: usize, origin: Option<Origin>, code: ReplyCode) {
        if code.is_final() {
            self.pending.remove(i);
            if matches!(
                origin,
                Some(Origin::Client(Verb::User | Verb::Pass | Verb::Acct))
            ) && matches!(code.0, 230 | 232)
            {
                self.logged_in = true;
            }
            if matches!(origin, Some(Origin::Client(Verb::Rein))) && code.0 == 220 {
                // RFC 959 §4.1.1: REIN returns the session to its just-connected state.
                self.logged_in = false;
            }
        } else if let Some(Pending::Server { started, .. }) = self.pending.get_mut(i) {
            *started = true;
        }
    }

    fn current_or_unsolicited(&self) -> Current {
        self.current.unwrap_or(Current {
            owner: None,
            origin: None,
            disposition: Disposition::Forward,
        })
    }

    /// Who owns a reply starting now with `code`.
    fn owner_of(&self, code: ReplyCode) -> Option<usize> {
        match self.pending.front() {
            Some(Pending::Server { .. }) => {}
            // A Local at the head has been emitted before any server line is read, so
            // a reply here was not asked for.
            Some(Pending::Local(_)) | None => return None,
        }
        if self.running_transfer().is_some() && matches!(code.0, 200 | 211 | 212 | 213) {
            let early = self.pending.iter().skip(1).position(|p| {
                matches!(
                    p,
                    Pending::Server {
                        origin: Origin::Client(Verb::Noop | Verb::Stat)
                            | Origin::Injected(Injected::Noop),
                        ..
                    }
                )
            });
            if let Some(k) = early {
                return Some(k + 1);
            }
        }
        Some(0)
    }

    fn start_reply(&self, code: ReplyCode) -> Current {
        let owner = self.owner_of(code);
        let origin = owner.and_then(|i| match self.pending.get(i) {
            Some(Pending::Server { origin, .. }) => Some(*origin),
            _ => None,
        });
        let disposition = match (origin, code.0) {
            (Some(Origin::Injected(Injected::Noop | Injected::Banner)), _) => Disposition::Swallow,
            (Some(Origin::Injected(Injected::DataSetup | Injected::Tls(_))), _) => {
                Disposition::Intercept
            }
            (_, 227) if self.rewrite_passive => Disposition::RewritePasv,
            (_, 229) if self.rewrite_passive => Disposition::RewriteEpsv,
            _ => Disposition::Forward,
        };
        Current {
            owner,
            origin,
            disposition,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(s: &mut ReplyLedger, line: &str) -> LineOutcome {
        s.on_server_line(line.as_bytes()).expect("valid reply line")
    }

    fn origin(o: LineOutcome) -> Option<Origin> {
        o.ended.expect("reply ended").origin
    }

    #[test]
    fn backend_banner_swallowed_after_user_routing_greeted_the_client() {
        // balance: user — ftpgate said 220 itself; the client's USER is already queued
        // when the backend's multi-line vsftpd banner arrives.
        let mut s = ReplyLedger::unconnected(true);
        assert_eq!(s.outstanding(), 0, "no backend, nothing owed");
        s.banner_owed();
        s.forwarded(Verb::User);
        for line in ["220-welcome\r\n", "220 ready\r\n"] {
            let o = s.on_server_line(line.as_bytes()).unwrap();
            assert_eq!(o.disposition, Disposition::Swallow, "{line}");
        }
        let o = feed(&mut s, "331 password please\r\n");
        assert_eq!(origin(o), Some(Origin::Client(Verb::User)));
        assert_eq!(o.disposition, Disposition::Forward);
    }

    fn greeted() -> ReplyLedger {
        let mut s = ReplyLedger::new(true);
        let o = feed(&mut s, "220 ready\r\n");
        assert_eq!(origin(o), Some(Origin::Greeting));
        assert_eq!(s.outstanding(), 0);
        s
    }

    #[test]
    fn greeting_after_120_preliminary() {
        let mut s = ReplyLedger::new(true);
        let o = feed(&mut s, "120 wait 1 minute\r\n");
        assert_eq!(o.ended.unwrap().code, ReplyCode(120));
        assert_eq!(s.outstanding(), 1, "a 1xx does not complete the greeting");
        feed(&mut s, "220 ready\r\n");
        assert_eq!(s.outstanding(), 0);
    }

    #[test]
    fn pipelined_commands_pop_in_order_and_login_is_seen() {
        let mut s = greeted();
        s.forwarded(Verb::User);
        s.forwarded(Verb::Pass);
        s.forwarded(Verb::Pasv);
        assert_eq!(
            origin(feed(&mut s, "331 pw\r\n")),
            Some(Origin::Client(Verb::User))
        );
        assert!(!s.logged_in());
        assert_eq!(
            origin(feed(&mut s, "230 ok\r\n")),
            Some(Origin::Client(Verb::Pass))
        );
        assert!(s.logged_in());
        let o = feed(&mut s, "227 Entering Passive Mode (10,0,0,2,4,1)\r\n");
        assert_eq!(o.disposition, Disposition::RewritePasv);
        assert_eq!(s.outstanding(), 0);
    }

    #[test]
    fn failed_login_is_not_a_login() {
        let mut s = greeted();
        s.forwarded(Verb::User);
        s.forwarded(Verb::Pass);
        feed(&mut s, "331 pw\r\n");
        feed(&mut s, "530 Login incorrect.\r\n");
        assert!(!s.logged_in());
        s.forwarded(Verb::Other);
        feed(&mut s, "230 odd but not a login reply\r\n");
        assert!(!s.logged_in());
    }

    #[test]
    fn multiline_reply_with_inner_code_lines_is_one_reply() {
        // Servers do not always pad inner lines (RFC 959 §4.2), so `227 ` inside a
        // `211-` block is text, not a passive reply.
        let mut s = greeted();
        s.forwarded(Verb::Other);
        s.forwarded(Verb::Pasv);
        assert_eq!(feed(&mut s, "211-Features:\r\n").ended, None);
        let inner = feed(&mut s, "227 not a reply\r\n");
        assert_eq!(inner.disposition, Disposition::Forward);
        assert_eq!(inner.ended, None);
        assert_eq!(s.outstanding(), 2);
        let end = feed(&mut s, "211 End\r\n");
        assert_eq!(origin(end), Some(Origin::Client(Verb::Other)));
        assert_eq!(s.outstanding(), 1);
    }

    #[test]
    fn noop_answered_after_226_as_vsftpd_does() {
        let mut s = greeted();
        s.forwarded(Verb::Retr);
        assert!(!s.keepalive_allowed(), "not before the transfer starts");
        feed(&mut s, "150 opening\r\n");
        assert!(s.keepalive_allowed());
        s.injected(Injected::Noop);
        s.injected(Injected::Noop);
        assert!(s.keepalive_allowed());
        assert_eq!(
            feed(&mut s, "226 done\r\n").disposition,
            Disposition::Forward
        );
        assert!(!s.keepalive_allowed());
        assert_eq!(
            feed(&mut s, "200-NOOP\r\n").disposition,
            Disposition::Swallow
        );
        assert_eq!(feed(&mut s, "200 ok\r\n").disposition, Disposition::Swallow);
        assert_eq!(feed(&mut s, "200 ok\r\n").disposition, Disposition::Swallow);
        assert_eq!(s.outstanding(), 0);
    }

    #[test]
    fn noop_answered_during_transfer_as_proftpd_does() {
        let mut s = greeted();
        s.forwarded(Verb::Retr);
        feed(&mut s, "150 opening\r\n");
        s.injected(Injected::Noop);
        let o = feed(&mut s, "200 NOOP command successful\r\n");
        assert_eq!(o.disposition, Disposition::Swallow);
        assert_eq!(origin(o), Some(Origin::Injected(Injected::Noop)));
        assert_eq!(
            s.running_transfer(),
            Some(Verb::Retr),
            "transfer still owed"
        );
        let done = feed(&mut s, "226 Transfer complete\r\n");
        assert_eq!(origin(done), Some(Origin::Client(Verb::Retr)));
        assert_eq!(done.disposition, Disposition::Forward);
        assert_eq!(s.outstanding(), 0);
    }

    #[test]
    fn clients_own_stat_during_transfer_is_answered_early_and_forwarded() {
        let mut s = greeted();
        s.forwarded(Verb::Stor);
        feed(&mut s, "150 ok\r\n");
        s.forwarded(Verb::Stat);
        assert!(!s.keepalive_allowed(), "client has something outstanding");
        feed(&mut s, "213-Status: 1000 bytes\r\n");
        let end = feed(&mut s, "213 End\r\n");
        assert_eq!(origin(end), Some(Origin::Client(Verb::Stat)));
        assert_eq!(end.disposition, Disposition::Forward);
        assert_eq!(
            origin(feed(&mut s, "226 ok\r\n")),
            Some(Origin::Client(Verb::Stor))
        );
    }

    #[test]
    fn abor_during_transfer_426_then_226() {
        let mut s = greeted();
        s.forwarded(Verb::Retr);
        feed(&mut s, "150 ok\r\n");
        s.injected(Injected::Noop);
        s.forwarded(Verb::Abor);
        assert_eq!(
            origin(feed(&mut s, "426 aborted\r\n")),
            Some(Origin::Client(Verb::Retr))
        );
        assert_eq!(
            feed(&mut s, "200 NOOP ok\r\n").disposition,
            Disposition::Swallow
        );
        let o = feed(&mut s, "226 ABOR ok\r\n");
        assert_eq!(origin(o), Some(Origin::Client(Verb::Abor)));
        assert_eq!(o.disposition, Disposition::Forward);
    }

    #[test]
    fn data_setup_reply_is_intercepted() {
        let mut s = greeted();
        s.injected(Injected::DataSetup);
        assert!(s.awaiting_server());
        let o = feed(&mut s, "229 Entering Extended Passive Mode (|||5000|)\r\n");
        assert_eq!(o.disposition, Disposition::Intercept);
        assert!(!s.awaiting_server());
        assert_eq!(s.client_outstanding(), 0);
    }

    #[test]
    fn local_reply_waits_for_earlier_server_replies() {
        let mut s = greeted();
        s.forwarded(Verb::Other);
        s.answer_locally(b"502 no\r\n".to_vec());
        s.forwarded(Verb::Noop);
        assert_eq!(s.next_local_reply(), None, "server reply is owed first");
        feed(&mut s, "250-a\r\n");
        assert_eq!(s.next_local_reply(), None);
        feed(&mut s, "250 b\r\n");
        assert_eq!(s.next_local_reply(), Some(b"502 no\r\n".to_vec()));
        assert_eq!(s.next_local_reply(), None);
        assert_eq!(
            origin(feed(&mut s, "200 ok\r\n")),
            Some(Origin::Client(Verb::Noop))
        );
    }

    #[test]
    fn unsolicited_reply_is_forwarded_and_pops_nothing() {
        let mut s = greeted();
        let o = feed(&mut s, "421 Timeout\r\n");
        assert_eq!(origin(o), None);
        assert_eq!(o.disposition, Disposition::Forward);
        s.forwarded(Verb::Noop);
        assert_eq!(s.outstanding(), 1);
    }

    #[test]
    fn rewriting_off_forwards_passive_replies() {
        let mut s = ReplyLedger::new(false);
        feed(&mut s, "220 hi\r\n");
        s.forwarded(Verb::Epsv);
        assert_eq!(
            feed(&mut s, "229 (|||5000|)\r\n").disposition,
            Disposition::Forward
        );
    }

    #[test]
    fn malformed_line_is_an_error_and_changes_nothing() {
        let mut s = greeted();
        s.forwarded(Verb::Noop);
        assert!(s.on_server_line(b"hello\r\n").is_err());
        assert_eq!(s.outstanding(), 1);
    }

    #[test]
    fn transfer_tracking() {
        let mut s = greeted();
        s.forwarded(Verb::Retr);
        assert!(s.transfer_outstanding());
        assert_eq!(s.running_transfer(), None);
        feed(&mut s, "150 go\r\n");
        assert_eq!(s.running_transfer(), Some(Verb::Retr));
        feed(&mut s, "226 done\r\n");
        assert!(!s.transfer_outstanding());
        assert_eq!(s.running_transfer(), None);
    }
}
