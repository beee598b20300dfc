//! Reply accounting for one control connection (ARCHITECTURE invariant 1), pure.
//!
//! FTP is strictly request/reply (RFC 959 §4.2): every command gets exactly one final
//! reply (2xx–5xx), optionally preceded by 1xx preliminaries, and a multi-line reply is
//! one reply. The state keeps a FIFO of what the client is owed, in order:
//!
//! ```text
//!   client command ──forward──▶ [Server(Client(verb))] ─┐
//!   ftpgate inject ──forward──▶ [Server(Injected)]      ├─ FIFO, oldest first
//!   client command ──refuse───▶ [Local(reply)]         ─┘
//!
//!   server line ──framer──▶ Single/Begin: owner = head of FIFO (or unsolicited)
//!                           Inner:        same owner
//!                           Single/End with final code: pop the owner
//!   head is Local and no reply is mid-block ──▶ emit the local reply, pop
//! ```
//!
//! Replies owned by `Injected` are swallowed; `227`/`229` are marked for rewriting;
//! everything else is forwarded byte for byte. Local replies (refusals) wait behind
//! the server replies owed before them, so the client sees replies in command order.

use std::collections::VecDeque;

use crate::protocol::command::Verb;
use crate::protocol::reply::{ReplyCode, ReplyError, ReplyFramer, ReplyLine};

/// Who a server reply answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The `220` banner (possibly after `120`).
    Greeting,
    /// A command the client sent.
    Client(Verb),
    /// A command ftpgate sent on its own (keepalive `NOOP`): its reply is swallowed.
    Injected,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Pending {
    Server(Origin),
    Local(Vec<u8>),
}

/// What to do with one server line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    Forward,
    Swallow,
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
    pub code: ReplyCode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineOutcome {
    pub line: ReplyLine,
    pub disposition: Disposition,
    /// Set on the last line of a reply, preliminary or final.
    pub ended: Option<Ended>,
}

#[derive(Debug, Clone, Copy)]
struct Current {
    origin: Option<Origin>,
    disposition: Disposition,
}

#[derive(Debug)]
pub struct ControlState {
    pending: VecDeque<Pending>,
    framer: ReplyFramer,
    current: Option<Current>,
    rewrite_passive: bool,
}

impl ControlState {
    /// A fresh session, owed the server's greeting.
    pub fn new(rewrite_passive: bool) -> Self {
        ControlState {
            pending: VecDeque::from([Pending::Server(Origin::Greeting)]),
            framer: ReplyFramer::new(),
            current: None,
            rewrite_passive,
        }
    }

    /// Replies still owed to the client or to ftpgate.
    pub fn outstanding(&self) -> usize {
        self.pending.len()
    }

    /// The client's command was forwarded to the server.
    pub fn forwarded(&mut self, verb: Verb) {
        self.pending
            .push_back(Pending::Server(Origin::Client(verb)));
    }

    /// ftpgate sent a command of its own; its reply must not reach the client.
    pub fn injected(&mut self) {
        self.pending.push_back(Pending::Server(Origin::Injected));
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
        match self.pending.front() {
            Some(Pending::Local(_)) => match self.pending.pop_front() {
                Some(Pending::Local(r)) => Some(r),
                _ => None,
            },
            _ => None,
        }
    }

    /// Whether an outstanding client command is a data transfer.
    pub fn transfer_outstanding(&self) -> bool {
        self.pending
            .iter()
            .any(|p| matches!(p, Pending::Server(Origin::Client(v)) if v.is_transfer()))
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
            if code.is_final() && current.origin.is_some() {
                self.pending.pop_front();
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

    fn current_or_unsolicited(&self) -> Current {
        self.current.unwrap_or(Current {
            origin: None,
            disposition: Disposition::Forward,
        })
    }

    fn start_reply(&self, code: ReplyCode) -> Current {
        let origin = match self.pending.front() {
            Some(Pending::Server(o)) => Some(*o),
            // A Local at the head has been emitted before any server line is read, so
            // a reply here was not asked for.
            Some(Pending::Local(_)) | None => None,
        };
        let disposition = match (origin, code.0) {
            (Some(Origin::Injected), _) => Disposition::Swallow,
            (_, 227) if self.rewrite_passive => Disposition::RewritePasv,
            (_, 229) if self.rewrite_passive => Disposition::RewriteEpsv,
            _ => Disposition::Forward,
        };
        Current {
            origin,
            disposition,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(s: &mut ControlState, line: &str) -> LineOutcome {
        s.on_server_line(line.as_bytes()).expect("valid reply line")
    }

    fn greeted() -> ControlState {
        let mut s = ControlState::new(true);
        let o = feed(&mut s, "220 ready\r\n");
        assert_eq!(o.ended.unwrap().origin, Some(Origin::Greeting));
        assert_eq!(s.outstanding(), 0);
        s
    }

    #[test]
    fn greeting_after_120_preliminary() {
        let mut s = ControlState::new(true);
        let o = feed(&mut s, "120 wait 1 minute\r\n");
        assert_eq!(o.ended.unwrap().code, ReplyCode(120));
        assert_eq!(s.outstanding(), 1, "a 1xx does not complete the greeting");
        feed(&mut s, "220 ready\r\n");
        assert_eq!(s.outstanding(), 0);
    }

    #[test]
    fn pipelined_commands_pop_in_order() {
        let mut s = greeted();
        s.forwarded(Verb::User);
        s.forwarded(Verb::Pass);
        s.forwarded(Verb::Pasv);
        assert_eq!(
            feed(&mut s, "331 pw\r\n").ended.unwrap().origin,
            Some(Origin::Client(Verb::User))
        );
        assert_eq!(
            feed(&mut s, "230 ok\r\n").ended.unwrap().origin,
            Some(Origin::Client(Verb::Pass))
        );
        let o = feed(&mut s, "227 Entering Passive Mode (10,0,0,2,4,1)\r\n");
        assert_eq!(o.disposition, Disposition::RewritePasv);
        assert_eq!(s.outstanding(), 0);
    }

    #[test]
    fn multiline_reply_with_inner_code_lines_is_one_reply() {
        // Servers do not always pad inner lines (RFC 959 §4.2), so `227 ` inside a
        // `211-` block is text, not a passive reply.
        let mut s = greeted();
        s.forwarded(Verb::Other);
        s.forwarded(Verb::Pasv);
        let b = feed(&mut s, "211-Features:\r\n");
        assert_eq!(b.ended, None);
        let inner = feed(&mut s, "227 not a reply\r\n");
        assert_eq!(inner.disposition, Disposition::Forward);
        assert_eq!(inner.ended, None);
        assert_eq!(s.outstanding(), 2);
        let end = feed(&mut s, "211 End\r\n");
        assert_eq!(end.ended.unwrap().origin, Some(Origin::Client(Verb::Other)));
        assert_eq!(s.outstanding(), 1);
    }

    #[test]
    fn injected_noop_reply_is_swallowed_even_multiline() {
        let mut s = greeted();
        s.forwarded(Verb::Retr);
        s.injected();
        assert_eq!(
            feed(&mut s, "150 opening\r\n").disposition,
            Disposition::Forward
        );
        assert_eq!(
            feed(&mut s, "226 done\r\n").disposition,
            Disposition::Forward
        );
        assert_eq!(
            feed(&mut s, "200-NOOP\r\n").disposition,
            Disposition::Swallow
        );
        assert_eq!(feed(&mut s, "200 ok\r\n").disposition, Disposition::Swallow);
        assert_eq!(s.outstanding(), 0);
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
            feed(&mut s, "200 ok\r\n").ended.unwrap().origin,
            Some(Origin::Client(Verb::Noop))
        );
    }

    #[test]
    fn unsolicited_reply_is_forwarded_and_pops_nothing() {
        let mut s = greeted();
        let o = feed(&mut s, "421 Timeout\r\n");
        assert_eq!(o.ended.unwrap().origin, None);
        assert_eq!(o.disposition, Disposition::Forward);
        s.forwarded(Verb::Noop);
        assert_eq!(s.outstanding(), 1);
    }

    #[test]
    fn rewriting_off_forwards_passive_replies() {
        let mut s = ControlState::new(false);
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
    fn transfer_outstanding_tracks_transfer_verbs() {
        let mut s = greeted();
        s.forwarded(Verb::Retr);
        assert!(s.transfer_outstanding());
        feed(&mut s, "150 go\r\n");
        assert!(s.transfer_outstanding());
        feed(&mut s, "226 done\r\n");
        assert!(!s.transfer_outstanding());
    }
}
