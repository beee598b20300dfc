//! NOOP keepalive on the backend control connection (ARCHITECTURE invariant 2). Pure.
//!
//! While a transfer runs the control connection carries nothing, and firewalls, NAT
//! and load balancers with idle timers (AWS NLB: 350 s) drop it: the transfer's `226`
//! never arrives. ftpgate sends `NOOP` every `keepalive.noop_interval` while a transfer
//! runs and the client waits for nothing else; the replies are swallowed by the ledger.

use std::time::{Duration, Instant};

use super::ledger::ReplyLedger;

/// Keepalive NOOPs a server may leave unanswered (vsftpd answers them only after the
/// transfer) before ftpgate stops adding more.
pub const MAX_UNANSWERED_NOOPS: usize = 256;

/// Whether a NOOP may be sent now.
pub fn noop_allowed(ledger: &ReplyLedger) -> bool {
    let unanswered = ledger.outstanding() - ledger.client_outstanding();
    ledger.keepalive_allowed() && unanswered < MAX_UNANSWERED_NOOPS
}

/// When the next NOOP is due: armed while a transfer runs, kept while it is armed (so
/// traffic on other paths does not postpone it), disarmed when the transfer ends.
pub fn next_noop(
    armed: Option<Instant>,
    interval: Duration,
    transfer_running: bool,
    now: Instant,
) -> Option<Instant> {
    if interval.is_zero() || !transfer_running {
        return None;
    }
    Some(armed.unwrap_or(now + interval))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::command::Verb;
    use crate::session::ledger::Injected;

    fn ledger_with_running_retr() -> ReplyLedger {
        let mut l = ReplyLedger::new(true);
        l.on_server_line(b"220 hi\r\n").unwrap();
        l.forwarded(Verb::Retr);
        l.on_server_line(b"150 opening\r\n").unwrap();
        l
    }

    #[test]
    fn only_while_a_transfer_runs_and_nothing_else_is_owed() {
        let mut l = ReplyLedger::new(true);
        l.on_server_line(b"220 hi\r\n").unwrap();
        assert!(!noop_allowed(&l), "no transfer");
        l.forwarded(Verb::Retr);
        assert!(!noop_allowed(&l), "transfer not started (no 150 yet)");
        l.on_server_line(b"150 opening\r\n").unwrap();
        assert!(noop_allowed(&l));
        // lftp sends a pipelined command during the transfer: the client waits for a
        // reply, and a NOOP reply could be taken for it by a confused server.
        l.forwarded(Verb::Other);
        assert!(!noop_allowed(&l));
    }

    /// vsftpd answers NOOPs only after `226`: they pile up, but not without bound.
    #[test]
    fn unanswered_noops_are_bounded() {
        let mut l = ledger_with_running_retr();
        for _ in 0..MAX_UNANSWERED_NOOPS {
            assert!(noop_allowed(&l));
            l.injected(Injected::Noop);
        }
        assert!(!noop_allowed(&l));
    }

    #[test]
    fn arming() {
        let now = Instant::now();
        let i = Duration::from_secs(60);
        assert_eq!(next_noop(None, i, true, now), Some(now + i));
        let armed = Some(now + Duration::from_secs(5));
        assert_eq!(next_noop(armed, i, true, now), armed, "not postponed");
        assert_eq!(next_noop(armed, i, false, now), None, "transfer over");
        assert_eq!(next_noop(None, Duration::ZERO, true, now), None, "off");
    }
}
