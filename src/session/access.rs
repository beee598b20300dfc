//! The access log (target `ftpgate::access`) and the per-transfer metrics: one event
//! per data transfer and one per session end.

use std::time::Duration;

use tracing::info;

use super::data::Finished;
use super::outcome::Outcome;
use crate::metrics::Metrics;
use crate::protocol::command::Verb;
use crate::protocol::logtext::LogText;

/// Longest user name kept for the access log.
const MAX_LOGGED_USER: usize = 64;

/// What a session did, for its access-log line.
#[derive(Debug, Default)]
pub struct SessionStats {
    user: Option<String>,
    /// Client commands parsed (blank or verb-less lines not counted).
    pub commands: u64,
    bytes_up: u64,
    bytes_down: u64,
    transfers: u64,
}

impl SessionStats {
    /// Records the name given in `USER`: bounded, control characters replaced so a
    /// name cannot forge log lines.
    pub fn set_user(&mut self, name: &[u8]) {
        let name = String::from_utf8_lossy(name);
        self.user = Some(
            name.chars()
                .take(MAX_LOGGED_USER)
                .map(|c| if c.is_control() { '?' } else { c })
                .collect(),
        );
    }

    /// Records a finished data transfer and logs it.
    pub fn transfer_finished(&mut self, verb: Option<Verb>, f: &Finished, metrics: &Metrics) {
        let direction = match verb {
            Some(Verb::Retr) => "download",
            Some(Verb::Stor | Verb::Stou | Verb::Appe) => "upload",
            _ => "listing",
        };
        metrics
            .data_connections_total
            .with_label_values(&[f.mode.label(), direction])
            .inc();
        metrics
            .transfer_duration_seconds
            .with_label_values(&[direction])
            .observe(f.duration.as_secs_f64());
        self.transfers += 1;
        self.bytes_up += f.client_to_backend;
        self.bytes_down += f.backend_to_client;
        info!(
            target: "ftpgate::access",
            event = "transfer",
            verb = verb.map_or("-", Verb::as_str),
            direction,
            mode = f.mode.label(),
            bytes_up = f.client_to_backend,
            bytes_down = f.backend_to_client,
            duration_ms = f.duration.as_millis() as u64,
            "data transfer done"
        );
    }

    /// Logs the session's end.
    pub fn log_end(&self, outcome: Outcome, duration: Duration) {
        info!(
            target: "ftpgate::access",
            event = "session",
            user = %LogText::from_str(self.user.as_deref().unwrap_or("-")),
            commands = self.commands,
            bytes_up = self.bytes_up,
            bytes_down = self.bytes_down,
            transfers = self.transfers,
            duration_ms = duration.as_millis() as u64,
            outcome = outcome.label(),
            "session ended"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_names_are_bounded_and_cannot_forge_lines() {
        let mut s = SessionStats::default();
        s.set_user(b"alice\r\nINFO ftpgate: fake\x1b[31m");
        assert_eq!(s.user.as_deref(), Some("alice??INFO ftpgate: fake?[31m"));
        s.set_user(&[b'a'; 500]);
        assert_eq!(s.user.as_ref().map(|u| u.len()), Some(MAX_LOGGED_USER));
    }
}
