//! Graceful drain: when a draining session may be closed (pure).
//!
//! FTP cannot move a running transfer to another process, so a draining gateway lets
//! each session reach a command boundary — nothing owed to the client, no transfer
//! running, no data connection set up and still waiting for its transfer command —
//! and only then says `421` and closes. An idle session is at a boundary at once.

/// What a session is doing, as far as draining cares.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DrainView {
    /// Replies owed to the client (commands forwarded or answered, greeting).
    pub replies_owed: usize,
    /// A transfer command waits for ftpgate's own data setup (mode translation).
    pub command_held: bool,
    /// Data connections established and not yet finished.
    pub data_running: usize,
    /// Data connections mapped (a `227`/`229`/`PORT` answered) and not yet
    /// established: the client was promised a transfer.
    pub data_pending: usize,
    /// A multi-line passive reply is being held for rewriting.
    pub reply_held: bool,
}

/// The drain decision for one session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainStep {
    /// At a command boundary: `421` and close now.
    CloseNow,
    /// Something the client is owed is in flight; ask again after the next event.
    Wait,
}

/// Whether a draining session may close now.
pub fn drain_step(v: DrainView) -> DrainStep {
    let in_flight = v.replies_owed > 0
        || v.command_held
        || v.data_running > 0
        || v.data_pending > 0
        || v.reply_held;
    if in_flight {
        DrainStep::Wait
    } else {
        DrainStep::CloseNow
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drain_decisions_follow_ftp_client_behaviour() {
        let idle = DrainView::default();
        let cases: &[(&str, DrainView, DrainStep)] = &[
            (
                "idle lftp session waiting for a command",
                idle,
                DrainStep::CloseNow,
            ),
            (
                "curl between 150 and 226 of a 64 MiB RETR",
                DrainView {
                    replies_owed: 1,
                    data_running: 1,
                    ..idle
                },
                DrainStep::Wait,
            ),
            (
                "226 sent but the data socket's last bytes still draining",
                DrainView {
                    data_running: 1,
                    ..idle
                },
                DrainStep::Wait,
            ),
            (
                "ftplib got 227 and is about to send RETR (pending passive setup)",
                DrainView {
                    data_pending: 1,
                    ..idle
                },
                DrainStep::Wait,
            ),
            (
                "PORT answered 200, STOR not yet sent (pending active setup)",
                DrainView {
                    data_pending: 1,
                    ..idle
                },
                DrainStep::Wait,
            ),
            (
                "mode translation: RETR held while ftpgate's EPSV is out",
                DrainView {
                    command_held: true,
                    replies_owed: 1,
                    ..idle
                },
                DrainStep::Wait,
            ),
            (
                "vsftpd greeting not yet relayed",
                DrainView {
                    replies_owed: 1,
                    ..idle
                },
                DrainStep::Wait,
            ),
            (
                "proftpd multi-line 227 half read",
                DrainView {
                    reply_held: true,
                    ..idle
                },
                DrainStep::Wait,
            ),
        ];
        for (name, view, want) in cases {
            assert_eq!(drain_step(*view), *want, "{name}");
        }
    }
}
