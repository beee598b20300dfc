//! How a session ends, and errors that know which side failed.
//!
//! Every I/O failure of a session is a [`SessionError`] naming its [`Side`]; the
//! session's [`Outcome`] (a bounded metric label and the access log's `outcome`) and
//! the reply the client gets, if any, both derive from it in one place.

use std::io;

use super::replies::LocalReply;

/// Which party a failure belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The client's control connection.
    Client,
    /// The backend's (or original destination's) control connection.
    Backend,
    /// ftpgate itself: a policy decision or a local resource.
    Local,
}

/// What went wrong on a side.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// Reading the client control connection failed.
    #[error("client read failed: {0}")]
    ClientRead(#[source] io::Error),
    /// Writing to the client control connection failed.
    #[error("client write failed: {0}")]
    ClientWrite(#[source] io::Error),
    /// Reading the backend control connection failed.
    #[error("backend read failed: {0}")]
    BackendRead(#[source] io::Error),
    /// Writing to the backend control connection failed.
    #[error("backend write failed: {0}")]
    BackendWrite(#[source] io::Error),
}

impl SessionError {
    /// Which peer's connection failed.
    pub fn side(&self) -> Side {
        match self {
            SessionError::ClientRead(_) | SessionError::ClientWrite(_) => Side::Client,
            SessionError::BackendRead(_) | SessionError::BackendWrite(_) => Side::Backend,
        }
    }

    /// The session's outcome after this error.
    pub fn outcome(&self) -> Outcome {
        match self.side() {
            Side::Client => Outcome::ClientError,
            Side::Backend => Outcome::BackendError,
            Side::Local => Outcome::LocalResource,
        }
    }

    /// What the client is told, if it can still be told anything.
    pub fn reply(&self) -> Option<LocalReply> {
        match self.side() {
            Side::Client => None,
            Side::Backend => Some(LocalReply::ConnectionLost),
            Side::Local => Some(LocalReply::LocalResourceLimit),
        }
    }
}

/// How a session ended; a bounded metric label (`ftpgate_sessions_total{outcome}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Either side closed its control connection.
    Closed,
    /// No backend (or original destination) could be reached, or ftpgate refused to try.
    BackendUnavailable,
    /// The client's control connection failed (or it sent an overlong line).
    ClientError,
    /// The backend's control connection failed, or it broke the protocol.
    BackendError,
    /// A login, idle or backend-reply timeout closed the session.
    Timeout,
    /// ftpgate shut down.
    Shutdown,
    /// Closed at a command boundary while the gateway drained.
    Drained,
    /// Refused before a backend connect by a session limit.
    Limited,
    /// ftpgate ran out of a local resource (file descriptors, memory).
    LocalResource,
}

impl Outcome {
    /// Every outcome, for label pre-creation.
    pub const ALL: [Outcome; 9] = [
        Outcome::Closed,
        Outcome::BackendUnavailable,
        Outcome::ClientError,
        Outcome::BackendError,
        Outcome::Timeout,
        Outcome::Shutdown,
        Outcome::Drained,
        Outcome::Limited,
        Outcome::LocalResource,
    ];

    /// The `outcome` label value.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Closed => "closed",
            Outcome::BackendUnavailable => "backend_unavailable",
            Outcome::ClientError => "client_error",
            Outcome::BackendError => "backend_error",
            Outcome::Timeout => "timeout",
            Outcome::Shutdown => "shutdown",
            Outcome::Drained => "drained",
            Outcome::Limited => "limited",
            Outcome::LocalResource => "local_resource",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_know_their_side_outcome_and_reply() {
        let e = || io::Error::from(io::ErrorKind::ConnectionReset);
        let cases = [
            (
                SessionError::ClientRead(e()),
                Side::Client,
                Outcome::ClientError,
                None,
            ),
            (
                SessionError::ClientWrite(e()),
                Side::Client,
                Outcome::ClientError,
                None,
            ),
            (
                SessionError::BackendRead(e()),
                Side::Backend,
                Outcome::BackendError,
                Some(421),
            ),
            (
                SessionError::BackendWrite(e()),
                Side::Backend,
                Outcome::BackendError,
                Some(421),
            ),
        ];
        for (err, side, outcome, code) in cases {
            assert_eq!(err.side(), side, "{err}");
            assert_eq!(err.outcome(), outcome, "{err}");
            assert_eq!(err.reply().map(|r| r.code()), code, "{err}");
        }
    }

    #[test]
    fn labels_are_distinct() {
        let mut labels: Vec<_> = Outcome::ALL.iter().map(|o| o.label()).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), Outcome::ALL.len());
    }
}
