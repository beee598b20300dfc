//! FTPS policy (RFC 4217): what `AUTH`, `PBSZ`, `PROT`, `CCC` get, when a login or a
//! transfer is refused for lack of TLS, which data connections are TLS on each side,
//! and which features `FEAT` must show. Pure: the machine asks, the driver handshakes.
//!
//! ```text
//!   client AUTH TLS ─┬─ tls.client off ─────────────▶ 502 (as before FTPS)
//!                    ├─ backend mirror, clear ──────▶ forward AUTH TLS; backend 234
//!                    │     ─▶ handshake backend ─▶ our 234 ─▶ handshake client
//!                    └─ otherwise ──────────────────▶ our 234 ─▶ handshake client
//!   (transparent mode: AUTH to the server; its 234 ─▶ opaque byte relay)
//!   (client input is not read from AUTH until the client handshake: plaintext
//!    pipelined behind AUTH is discarded, the STARTTLS command-injection defence
//!    of CVE-2011-0411; likewise what a backend sends behind its 234)
//!   PBSZ/PROT ── client clear ─▶ 503 │ backend TLS ─▶ forward │ else ─▶ our 200
//! ```

use crate::config::{BackendDataProtection, BackendTlsPolicy, ClientDataPolicy, ClientTlsPolicy};
use crate::protocol::command::Verb;

use super::replies::LocalReply;

/// The TLS state of one session.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TlsState {
    /// The client control connection is TLS.
    pub client: bool,
    /// The backend control connection is TLS.
    pub backend: bool,
    /// The client asked for protected data (`PROT P`).
    pub client_private: bool,
    /// The backend accepted `PROT P`.
    pub backend_private: bool,
    /// A `PROT` forwarded to the backend, applied when it answers 2xx.
    pub pending_prot: Option<bool>,
    /// Between `AUTH TLS` and the client handshake: the client is not read.
    pub client_handshake_pending: bool,
    /// Between ftpgate's own `AUTH TLS` to the backend and its handshake: the client
    /// is not read, so no clear-text command can slip in front of the upgrade.
    pub backend_handshake_pending: bool,
    /// The backend answered `AUTH TLS` with `234`; its handshake is next. Its bytes
    /// are not framed as replies until then (the driver discards what came behind
    /// the `234`).
    pub backend_upgrade_due: bool,
    /// The client spoke TLS from its first byte (implicit FTPS listener).
    pub client_implicit: bool,
    /// Transparent mode: `AUTH` went to the server; its `234` ends the FTP relay.
    pub passthrough_pending: bool,
}

impl TlsState {
    /// The state of a session from an implicit-TLS listener: TLS from the first byte,
    /// data connections protected by default.
    pub fn implicit_client() -> TlsState {
        TlsState {
            client: true,
            client_private: true,
            client_implicit: true,
            ..TlsState::default()
        }
    }
}

/// Whether ftpgate upgrades the backend itself after its `220`: always under
/// `required`; under `mirror` when the client is already in TLS (implicit FTPS in
/// front of an explicit-FTPS backend). Not when the backend is implicit (already TLS).
pub fn upgrade_backend_at_greeting(backend: BackendTlsPolicy, st: &TlsState) -> bool {
    !st.backend
        && match backend {
            BackendTlsPolicy::Required => true,
            BackendTlsPolicy::Mirror => st.client,
            BackendTlsPolicy::Off | BackendTlsPolicy::Implicit => false,
        }
}

/// What `AUTH` from the client gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthDecision {
    /// Answered by ftpgate with this refusal.
    Refuse(LocalReply),
    /// ftpgate answers `234` and handshakes with the client; the backend is not
    /// involved (it is already TLS, or stays clear: offload).
    AcceptLocally,
    /// `AUTH TLS` goes to the backend first; its `234` starts both handshakes.
    ForwardToBackend,
    /// Transparent gateway: ftpgate holds no certificate for the servers it stands
    /// in front of, so `AUTH` goes to the server and, on its `234`, the control
    /// connection becomes an opaque byte relay (passive FTPS through NAT then works
    /// as it did without ftpgate).
    Passthrough,
}

/// `AUTH <arg>` from the client (RFC 2228 §3, RFC 4217 §4).
pub fn decide_auth(
    client: ClientTlsPolicy,
    backend: BackendTlsPolicy,
    transparent: bool,
    arg: &[u8],
    st: &TlsState,
) -> AuthDecision {
    if transparent && !st.client {
        return AuthDecision::Passthrough;
    }
    if client == ClientTlsPolicy::Off {
        return AuthDecision::Refuse(LocalReply::AuthUnsupported);
    }
    // RFC 4217 §4: `TLS`; `SSL`, `TLS-C`, `TLS-P` are older spellings clients still send.
    let mech = arg.trim_ascii();
    let known = [&b"TLS"[..], b"SSL", b"TLS-C", b"TLS-P"]
        .iter()
        .any(|m| mech.eq_ignore_ascii_case(m));
    if !known {
        return AuthDecision::Refuse(LocalReply::AuthMechanismUnsupported);
    }
    if st.client {
        return AuthDecision::Refuse(LocalReply::AlreadyTls);
    }
    if backend == BackendTlsPolicy::Mirror && !st.backend {
        AuthDecision::ForwardToBackend
    } else {
        AuthDecision::AcceptLocally
    }
}

/// What `PBSZ`/`PROT` get.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProtectionDecision {
    /// Answered by ftpgate (offload, or a refusal).
    Answer(LocalReply),
    /// The backend speaks TLS too: it answers (and its data connections follow).
    Forward,
}

/// `PBSZ` (RFC 4217 §8): only after `AUTH`; with TLS the size is always 0.
pub fn decide_pbsz(st: &TlsState, backend_data: BackendDataProtection) -> ProtectionDecision {
    if !st.client {
        ProtectionDecision::Answer(LocalReply::SecurityExchangeFirst)
    } else if st.backend && backend_data == BackendDataProtection::Mirror {
        ProtectionDecision::Forward
    } else {
        ProtectionDecision::Answer(LocalReply::PbszOk)
    }
}

/// `PROT <level>` (RFC 4217 §9). Returns the decision and, when accepted, whether data
/// becomes private.
pub fn decide_prot(
    arg: &[u8],
    st: &TlsState,
    backend_data: BackendDataProtection,
) -> (ProtectionDecision, Option<bool>) {
    if !st.client {
        return (
            ProtectionDecision::Answer(LocalReply::SecurityExchangeFirst),
            None,
        );
    }
    let level = match arg.trim_ascii() {
        [l] => l.to_ascii_uppercase(),
        _ => return (ProtectionDecision::Answer(LocalReply::ProtUnknown), None),
    };
    let private = match level {
        b'P' => true,
        b'C' => false,
        b'S' | b'E' => {
            return (
                ProtectionDecision::Answer(LocalReply::ProtUnsupported),
                None,
            )
        }
        _ => return (ProtectionDecision::Answer(LocalReply::ProtUnknown), None),
    };
    if st.backend && backend_data == BackendDataProtection::Mirror {
        (ProtectionDecision::Forward, Some(private))
    } else {
        (
            ProtectionDecision::Answer(LocalReply::ProtOk(level)),
            Some(private),
        )
    }
}

/// A refusal owed before `verb` may proceed, under the `required` policies.
pub fn required_refusal(
    client: ClientTlsPolicy,
    data: ClientDataPolicy,
    verb: Verb,
    st: &TlsState,
) -> Option<LocalReply> {
    match verb {
        Verb::User | Verb::Pass | Verb::Acct
            if client == ClientTlsPolicy::Required && !st.client =>
        {
            Some(LocalReply::TlsRequiredForLogin)
        }
        v if v.is_transfer() && data == ClientDataPolicy::Required && !st.client_private => {
            Some(LocalReply::TlsRequiredForData)
        }
        _ => None,
    }
}

/// Whether ftpgate sends `PBSZ 0`/`PROT P` itself once the backend is in TLS:
/// under `tls.backend_data: private`, and when ftpgate upgraded the backend on its own
/// (`required`, implicit) unless `clear` is asked for.
pub fn inject_backend_prot(backend_data: BackendDataProtection, own_upgrade: bool) -> bool {
    match backend_data {
        BackendDataProtection::Private => true,
        BackendDataProtection::Clear => false,
        BackendDataProtection::Mirror => own_upgrade,
    }
}

/// Which sides of a data connection are TLS.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DataTls {
    /// ftpgate is the TLS server towards the client (also in active mode: RFC 4217
    /// §7, the FTP server side always takes the TLS server role).
    pub client: bool,
    /// ftpgate is the TLS client towards the backend.
    pub backend: bool,
}

/// The data protection in force: each side as negotiated with it.
pub fn data_tls(st: &TlsState) -> DataTls {
    DataTls {
        client: st.client && st.client_private,
        backend: st.backend && st.backend_private,
    }
}

/// The FTPS features (RFC 4217 §6) missing from a backend's `FEAT` reply, given the
/// feature lines it listed; empty when ftpgate does not offer TLS.
pub fn missing_features(client: ClientTlsPolicy, listed: &[Vec<u8>]) -> Vec<&'static [u8]> {
    if client == ClientTlsPolicy::Off {
        return Vec::new();
    }
    let has = |name: &[u8]| {
        listed.iter().any(|l| {
            let t = l.trim_ascii();
            t.len() >= name.len()
                && t[..name.len()].eq_ignore_ascii_case(name)
                && t.get(name.len()).is_none_or(|b| *b == b' ')
        })
    };
    let mut missing = Vec::new();
    if !has(b"AUTH") {
        missing.push(&b" AUTH TLS"[..]);
    }
    if !has(b"PBSZ") {
        missing.push(&b" PBSZ"[..]);
    }
    if !has(b"PROT") {
        missing.push(&b" PROT"[..]);
    }
    missing
}

#[cfg(test)]
mod tests {
    use super::*;
    use BackendTlsPolicy as B;
    use ClientTlsPolicy as C;

    fn st(client: bool, backend: bool) -> TlsState {
        TlsState {
            client,
            backend,
            ..TlsState::default()
        }
    }

    #[test]
    fn auth_decisions() {
        type Case<'a> = (&'a str, C, B, &'a [u8], TlsState, AuthDecision);
        // A LAN client's FTPS to an internet server: ftpgate has no certificate of
        // that server, whatever tls.client says.
        for c in [C::Off, C::Optional] {
            assert_eq!(
                decide_auth(c, B::Mirror, true, b"TLS", &st(false, false)),
                AuthDecision::Passthrough
            );
        }
        let cases: &[Case] = &[
            // Before FTPS: clients that merely prefer TLS carry on in clear text.
            (
                "off keeps 502",
                C::Off,
                B::Mirror,
                b"TLS",
                st(false, false),
                AuthDecision::Refuse(LocalReply::AuthUnsupported),
            ),
            (
                "curl --ssl-reqd, mirror",
                C::Optional,
                B::Mirror,
                b"TLS",
                st(false, false),
                AuthDecision::ForwardToBackend,
            ),
            // lftp tries `AUTH TLS`; old clients (and FileZilla's fallback) send `AUTH SSL`.
            (
                "AUTH SSL spelling",
                C::Optional,
                B::Mirror,
                b"ssl",
                st(false, false),
                AuthDecision::ForwardToBackend,
            ),
            (
                "offload",
                C::Optional,
                B::Off,
                b"TLS",
                st(false, false),
                AuthDecision::AcceptLocally,
            ),
            (
                "backend already upgraded (required)",
                C::Required,
                B::Required,
                b"TLS",
                st(false, true),
                AuthDecision::AcceptLocally,
            ),
            (
                "Kerberos GSSAPI is not ours",
                C::Optional,
                B::Mirror,
                b"GSSAPI",
                st(false, false),
                AuthDecision::Refuse(LocalReply::AuthMechanismUnsupported),
            ),
            (
                "second AUTH",
                C::Optional,
                B::Mirror,
                b"TLS",
                st(true, true),
                AuthDecision::Refuse(LocalReply::AlreadyTls),
            ),
        ];
        for (name, c, b, arg, s, want) in cases {
            assert_eq!(decide_auth(*c, *b, false, arg, s), *want, "{name}");
        }
    }

    #[test]
    fn pbsz_and_prot_follow_rfc_4217() {
        // ftplib's prot_p() sends PBSZ 0 then PROT P.
        use BackendDataProtection as P;
        assert_eq!(
            decide_pbsz(&st(false, false), P::Mirror),
            ProtectionDecision::Answer(LocalReply::SecurityExchangeFirst)
        );
        assert_eq!(
            decide_pbsz(&st(true, false), P::Mirror),
            ProtectionDecision::Answer(LocalReply::PbszOk)
        );
        assert_eq!(
            decide_pbsz(&st(true, true), P::Mirror),
            ProtectionDecision::Forward
        );
        // backend_data private/clear: the backend's protection is ftpgate's business.
        assert_eq!(
            decide_pbsz(&st(true, true), P::Private),
            ProtectionDecision::Answer(LocalReply::PbszOk)
        );
        assert_eq!(
            decide_prot(b"C", &st(true, true), P::Private),
            (
                ProtectionDecision::Answer(LocalReply::ProtOk(b'C')),
                Some(false)
            )
        );
        assert_eq!(
            decide_prot(b"P", &st(true, true), P::Clear),
            (
                ProtectionDecision::Answer(LocalReply::ProtOk(b'P')),
                Some(true)
            )
        );
        assert!(inject_backend_prot(P::Private, false));
        assert!(inject_backend_prot(P::Mirror, true));
        assert!(!inject_backend_prot(P::Mirror, false));
        assert!(!inject_backend_prot(P::Clear, true));
        let cases: &[(&[u8], TlsState, ProtectionDecision, Option<bool>)] = &[
            (
                b"P",
                st(true, false),
                ProtectionDecision::Answer(LocalReply::ProtOk(b'P')),
                Some(true),
            ),
            (
                b"c",
                st(true, false),
                ProtectionDecision::Answer(LocalReply::ProtOk(b'C')),
                Some(false),
            ),
            (
                b"P",
                st(true, true),
                ProtectionDecision::Forward,
                Some(true),
            ),
            (
                b"P",
                st(false, false),
                ProtectionDecision::Answer(LocalReply::SecurityExchangeFirst),
                None,
            ),
            (
                b"S",
                st(true, true),
                ProtectionDecision::Answer(LocalReply::ProtUnsupported),
                None,
            ),
            (
                b"E",
                st(true, false),
                ProtectionDecision::Answer(LocalReply::ProtUnsupported),
                None,
            ),
            (
                b"X",
                st(true, false),
                ProtectionDecision::Answer(LocalReply::ProtUnknown),
                None,
            ),
            (
                b"",
                st(true, false),
                ProtectionDecision::Answer(LocalReply::ProtUnknown),
                None,
            ),
        ];
        for (arg, s, want, private) in cases {
            assert_eq!(
                decide_prot(arg, s, BackendDataProtection::Mirror),
                (want.clone(), *private),
                "PROT {:?}",
                String::from_utf8_lossy(arg)
            );
        }
        assert_eq!(LocalReply::ProtUnsupported.code(), 536);
        assert_eq!(LocalReply::PbszOk.to_string(), "200 PBSZ=0");
    }

    #[test]
    fn required_policies() {
        use ClientDataPolicy as D;
        let plain = st(false, false);
        let mut private = st(true, false);
        private.client_private = true;
        assert_eq!(
            required_refusal(C::Required, D::Optional, Verb::User, &plain),
            Some(LocalReply::TlsRequiredForLogin)
        );
        assert_eq!(
            required_refusal(C::Required, D::Optional, Verb::User, &st(true, false)),
            None
        );
        assert_eq!(
            required_refusal(C::Optional, D::Optional, Verb::User, &plain),
            None
        );
        // `PROT C` after AUTH: a transfer in clear text under client_data: required.
        assert_eq!(
            required_refusal(C::Optional, D::Required, Verb::Retr, &st(true, false)),
            Some(LocalReply::TlsRequiredForData)
        );
        assert_eq!(
            required_refusal(C::Optional, D::Required, Verb::Retr, &private),
            None
        );
        assert_eq!(
            required_refusal(C::Optional, D::Required, Verb::Other, &plain),
            None
        );
    }

    #[test]
    fn greeting_upgrades() {
        // Clear client, `required`: TLS on the farm side anyway.
        assert!(upgrade_backend_at_greeting(B::Required, &st(false, false)));
        // Implicit FTPS client (port 990) in front of an explicit-only vsftpd.
        assert!(upgrade_backend_at_greeting(
            B::Mirror,
            &TlsState::implicit_client()
        ));
        assert!(!upgrade_backend_at_greeting(B::Mirror, &st(false, false)));
        assert!(!upgrade_backend_at_greeting(
            B::Off,
            &TlsState::implicit_client()
        ));
        // An implicit backend is TLS before its greeting.
        assert!(!upgrade_backend_at_greeting(B::Implicit, &st(false, true)));
    }

    #[test]
    fn data_sides() {
        let mut s = st(true, true);
        assert_eq!(data_tls(&s), DataTls::default());
        s.client_private = true;
        s.backend_private = true;
        assert_eq!(
            data_tls(&s),
            DataTls {
                client: true,
                backend: true
            }
        );
        // Offload: the backend never heard of TLS.
        let mut o = st(true, false);
        o.client_private = true;
        assert_eq!(
            data_tls(&o),
            DataTls {
                client: true,
                backend: false
            }
        );
    }

    #[test]
    fn feat_augmentation() {
        // pyftpdlib's plain FTPHandler lists no FTPS features at all.
        let plain: Vec<Vec<u8>> = vec![b" EPSV".to_vec(), b" MDTM".to_vec()];
        assert_eq!(
            missing_features(C::Optional, &plain),
            vec![&b" AUTH TLS"[..], b" PBSZ", b" PROT"]
        );
        // vsftpd with ssl_enable=YES lists AUTH TLS, PBSZ and PROT itself: no duplicates.
        let vsftpd: Vec<Vec<u8>> = vec![
            b" AUTH SSL".to_vec(),
            b" AUTH TLS".to_vec(),
            b" PBSZ".to_vec(),
            b" PROT".to_vec(),
        ];
        assert!(missing_features(C::Optional, &vsftpd).is_empty());
        assert!(missing_features(C::Off, &plain).is_empty());
    }
}
