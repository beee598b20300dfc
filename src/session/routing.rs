//! `balance: user`: what a client command gets before any backend exists (pure). The
//! session machine holds the state (`Route` in [`super::machine`]); this room decides.
//!
//! ```text
//!   accept (implicit FTPS: TLS handshake first)
//!     ─▶ 220 <greeting> (ftpgate's own) ─▶ AwaitingUser
//!   AwaitingUser ── NOOP ─────────────▶ 200            (answered here, in order)
//!                ── QUIT ─────────────▶ 221, close
//!                ── FEAT ─────────────▶ 211 AUTH TLS/PBSZ/PROT (TLS offered), else 530
//!                ── AUTH TLS ─────────▶ 234, client handshake (no backend to ask)
//!                ── PBSZ / PROT ──────▶ answered here (RFC 4217; remembered for data)
//!                ── USER (tls.client: required, clear) ─▶ 530, still AwaitingUser
//!                ── other ────────────▶ 530 log in first
//!                ── USER name ────────▶ Connecting: Action::ConnectBackend(name);
//!                                       the client is not read
//!   Connecting ── connected ─▶ Replaying ── failed ─▶ 421, close
//!   Replaying ── backend 220 (swallowed) ─┬─ client in TLS, tls.backend mirror/required:
//!              │                          │   AUTH TLS, handshake, PBSZ 0, PROT P (ours)
//!              │                          └─ USER replayed ─▶ Connected
//!              └─ backend greets with anything else ─▶ 421, close
//! ```
//! The client's `USER` (and any commands pipelined behind it, left unread) reach the
//! backend in their order once it is ready, so every reply is still in order.
//! ProFTPD mod_proxy's PerUser does the same.

use crate::config::{BackendTlsPolicy, ClientDataPolicy, ClientTlsPolicy};
use crate::metrics::Refusal;
use crate::protocol::command::{Command, Verb};

use super::replies::LocalReply;
use super::tls::{decide_auth, required_refusal, AuthDecision, TlsState};

/// What a client command gets while ftpgate waits for `USER`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BeforeUser {
    /// `USER name`: pick a backend by `name` and connect.
    Route(String),
    /// Answered by ftpgate, in turn.
    Answer(LocalReply),
    /// Refused by ftpgate, counted under the reason.
    Refuse(Refusal, LocalReply),
    /// `QUIT`: `221`, then close.
    Quit,
    /// `AUTH TLS`: ftpgate answers `234` and handshakes with the client.
    StartTls,
    /// `PBSZ`/`PROT`: the machine's FTPS step answers (no backend is in TLS yet, so
    /// it answers locally).
    Protection,
}

/// The FTPS settings the decision needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlsPolicy {
    /// `tls.client`.
    pub client: ClientTlsPolicy,
    /// `tls.client_data`.
    pub client_data: ClientDataPolicy,
}

/// Decides one client command before `USER` (see the module diagram).
pub fn before_user(cmd: &Command<'_>, st: &TlsState, policy: TlsPolicy) -> BeforeUser {
    if let Some(reply) = required_refusal(policy.client, policy.client_data, cmd.verb, st) {
        return BeforeUser::Refuse(Refusal::TlsRequired, reply);
    }
    match cmd.verb {
        Verb::User if cmd.arg.is_empty() => BeforeUser::Answer(LocalReply::SyntaxError),
        Verb::User => BeforeUser::Route(String::from_utf8_lossy(cmd.arg).into_owned()),
        Verb::Quit => BeforeUser::Quit,
        Verb::Noop => BeforeUser::Answer(LocalReply::NoopOk),
        // lftp and FileZilla ask FEAT first and try AUTH TLS only if it is listed.
        Verb::Feat if policy.client != ClientTlsPolicy::Off => {
            BeforeUser::Answer(LocalReply::FeaturesBeforeUser)
        }
        // No backend yet: whatever `tls.backend` says, ftpgate answers AUTH itself
        // (the backend is upgraded, or not, once it exists).
        Verb::Auth => match decide_auth(policy.client, BackendTlsPolicy::Off, false, cmd.arg, st) {
            AuthDecision::AcceptLocally => BeforeUser::StartTls,
            AuthDecision::Refuse(LocalReply::AuthUnsupported) => {
                BeforeUser::Refuse(Refusal::AuthTls, LocalReply::AuthUnsupported)
            }
            AuthDecision::Refuse(r) => BeforeUser::Answer(r),
            AuthDecision::ForwardToBackend | AuthDecision::Passthrough => {
                BeforeUser::Answer(LocalReply::LoginFirst)
            }
        },
        Verb::Pbsz | Verb::Prot => BeforeUser::Protection,
        _ => BeforeUser::Answer(LocalReply::LoginFirst),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::command::parse_command;

    fn tls(client: bool) -> TlsState {
        TlsState {
            client,
            ..TlsState::default()
        }
    }

    const OFF: TlsPolicy = TlsPolicy {
        client: ClientTlsPolicy::Off,
        client_data: ClientDataPolicy::Optional,
    };
    const OPTIONAL: TlsPolicy = TlsPolicy {
        client: ClientTlsPolicy::Optional,
        client_data: ClientDataPolicy::Optional,
    };
    const REQUIRED: TlsPolicy = TlsPolicy {
        client: ClientTlsPolicy::Required,
        client_data: ClientDataPolicy::Optional,
    };

    #[test]
    fn client_quirks_before_user() {
        use BeforeUser as B;
        // (what the client does, line, TLS so far, policy, decision)
        let table: &[(&str, &[u8], bool, TlsPolicy, BeforeUser)] = &[
            (
                "curl and lftp send USER first",
                b"USER alice",
                false,
                OFF,
                B::Route("alice".into()),
            ),
            (
                "tenant suffix",
                b"USER bob@acme",
                false,
                OFF,
                B::Route("bob@acme".into()),
            ),
            (
                "FileZilla probes FEAT, no TLS offered",
                b"FEAT",
                false,
                OFF,
                B::Answer(LocalReply::LoginFirst),
            ),
            (
                "lftp probes FEAT, TLS offered: AUTH TLS listed",
                b"FEAT",
                false,
                OPTIONAL,
                B::Answer(LocalReply::FeaturesBeforeUser),
            ),
            (
                "keepalive",
                b"NOOP",
                false,
                OFF,
                B::Answer(LocalReply::NoopOk),
            ),
            ("bye", b"quit", false, OFF, B::Quit),
            (
                "USER without a name",
                b"USER",
                false,
                OFF,
                B::Answer(LocalReply::SyntaxError),
            ),
            (
                "curl --ssl-reqd: AUTH TLS before USER",
                b"AUTH TLS",
                false,
                OPTIONAL,
                B::StartTls,
            ),
            (
                "FileZilla's AUTH SSL fallback",
                b"AUTH SSL",
                false,
                OPTIONAL,
                B::StartTls,
            ),
            (
                "no certificate: 502 as before FTPS",
                b"AUTH TLS",
                false,
                OFF,
                B::Refuse(Refusal::AuthTls, LocalReply::AuthUnsupported),
            ),
            (
                "second AUTH",
                b"AUTH TLS",
                true,
                OPTIONAL,
                B::Answer(LocalReply::AlreadyTls),
            ),
            (
                "Kerberos is not ours",
                b"AUTH GSSAPI",
                false,
                OPTIONAL,
                B::Answer(LocalReply::AuthMechanismUnsupported),
            ),
            (
                "ftplib prot_p(): PBSZ 0",
                b"PBSZ 0",
                true,
                OPTIONAL,
                B::Protection,
            ),
            ("PROT P", b"PROT P", true, OPTIONAL, B::Protection),
            (
                "tls.client required: clear USER never routes",
                b"USER alice",
                false,
                REQUIRED,
                B::Refuse(Refusal::TlsRequired, LocalReply::TlsRequiredForLogin),
            ),
            (
                "tls.client required, after AUTH TLS",
                b"USER alice",
                true,
                REQUIRED,
                B::Route("alice".into()),
            ),
            (
                "anything else waits for a login",
                b"LIST",
                true,
                OPTIONAL,
                B::Answer(LocalReply::LoginFirst),
            ),
        ];
        for (name, line, client_tls, policy, want) in table {
            let cmd = parse_command(line).unwrap();
            assert_eq!(
                before_user(&cmd, &tls(*client_tls), *policy),
                *want,
                "{name}"
            );
        }
    }
}
