//! `balance: user`: the session state before any backend connect (pure).
//!
//! ```text
//!   accept ─▶ 220 <greeting> (ftpgate's own) ─▶ AwaitingUser
//!   AwaitingUser ── NOOP ─▶ 200            (answered here, in order)
//!                ── QUIT ─▶ 221, close
//!                ── other ─▶ 530 log in first
//!                ── USER name ─▶ Routed(name): the USER line and everything after it
//!                                 stay in the buffer for the machine
//!   driver: pick backend by name ─▶ connect ─▶ machine with the greeting swallowed
//!           (SessionMachine::greeted_locally) ─▶ buffer replayed as client input
//! ```
//! The backend's own `220` is swallowed by the machine's ledger, and the client's
//! `USER` (and any commands pipelined behind it) reach the backend in their order,
//! so every reply is still in order. ProFTPD mod_proxy's PerUser does the same.

use crate::protocol::command::{parse_command, Verb};
use crate::protocol::line::{find_line, LineError};

use super::replies::LocalReply;

/// What the gate decided after some client input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GateStep {
    /// No `USER` yet: read more.
    NeedMore,
    /// `USER name` is at the head of the buffer: route by `name`.
    Routed(String),
    /// The client quit, or sent a line too long: write the replies, then close.
    Close,
}

/// Handles complete client lines before `USER`: answers are appended to `out`, lines
/// answered are removed from `buf`; the `USER` line is left in place.
pub fn before_user(buf: &mut Vec<u8>, out: &mut Vec<u8>, max_line: usize) -> GateStep {
    let mut used = 0;
    let step = loop {
        let rest = buf.get(used..).unwrap_or_default();
        let n = match find_line(rest, max_line) {
            Ok(Some(n)) => n,
            Ok(None) => break GateStep::NeedMore,
            Err(LineError::TooLong { .. }) => {
                out.extend(LocalReply::LineTooLong.to_bytes());
                break GateStep::Close;
            }
        };
        let line = rest.get(..n).unwrap_or_default();
        let reply = match parse_command(line) {
            Ok(cmd) if cmd.verb == Verb::User && !cmd.arg.is_empty() => {
                break GateStep::Routed(String::from_utf8_lossy(cmd.arg).into_owned());
            }
            Ok(cmd) if cmd.verb == Verb::Quit => {
                out.extend(LocalReply::Goodbye.to_bytes());
                used += n;
                break GateStep::Close;
            }
            Ok(cmd) if cmd.verb == Verb::Noop => LocalReply::NoopOk,
            Ok(cmd) if cmd.verb == Verb::User => LocalReply::SyntaxError,
            Ok(_) => LocalReply::LoginFirst,
            Err(_) => LocalReply::SyntaxError,
        };
        out.extend(reply.to_bytes());
        used += n;
    };
    buf.drain(..used.min(buf.len()));
    step
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_quirks_before_user() {
        // (client bytes, replies, step, bytes left for the machine)
        let table: &[(&[u8], &str, GateStep, &[u8])] = &[
            // curl and lftp send USER first.
            (
                b"USER alice\r\n",
                "",
                GateStep::Routed("alice".into()),
                b"USER alice\r\n",
            ),
            // A pipelining client (ftplib scripts, lftp with pipelining on): USER, PASS
            // and PWD arrive together; all of it goes to the backend, in order.
            (
                b"USER bob@acme\r\nPASS x\r\nPWD\r\n",
                "",
                GateStep::Routed("bob@acme".into()),
                b"USER bob@acme\r\nPASS x\r\nPWD\r\n",
            ),
            // FileZilla probes before logging in: answered here, in order.
            (
                b"FEAT\r\nNOOP\r\nUSER carol\r\nPASS y\r\n",
                "530 Please log in with USER first.\r\n200 NOOP ok.\r\n",
                GateStep::Routed("carol".into()),
                b"USER carol\r\nPASS y\r\n",
            ),
            // A bare-LF client (some embedded devices).
            (
                b"USER dave\n",
                "",
                GateStep::Routed("dave".into()),
                b"USER dave\n",
            ),
            (
                b"USER\r\nQUIT\r\n",
                "500 Syntax error, command unrecognized.\r\n221 Goodbye.\r\n",
                GateStep::Close,
                b"",
            ),
            (b"USER ali", "", GateStep::NeedMore, b"USER ali"),
        ];
        for (input, replies, step, left) in table {
            let mut buf = input.to_vec();
            let mut out = Vec::new();
            let got = before_user(&mut buf, &mut out, 512);
            assert_eq!(&got, step, "{:?}", String::from_utf8_lossy(input));
            assert_eq!(String::from_utf8_lossy(&out), *replies);
            assert_eq!(&buf[..], *left);
        }
    }

    #[test]
    fn a_line_too_long_before_user_closes() {
        let mut buf = vec![b'A'; 600];
        let mut out = Vec::new();
        assert_eq!(before_user(&mut buf, &mut out, 512), GateStep::Close);
        assert!(out.starts_with(b"500 "));
    }
}
