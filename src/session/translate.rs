//! Mode translation (`backend_data_mode`): the client uses one data mode, the backend
//! another. Pure.
//!
//! ```text
//!  passive: client PORT/EPRT ─▶ 200 (ftpgate) ─▶ [ClientPort]
//!           client RETR ─▶ held; ftpgate ─EPSV─▶ backend ─▶ [Awaiting Epsv]
//!             229 ─▶ open data (connect both sides), release RETR
//!             5xx ─▶ ftpgate ─PASV─▶ backend ─▶ [Awaiting Pasv] ─227─▶ open, release
//!  active:  client PASV/EPSV ─▶ 227/229 (ftpgate, own listener) ─▶ [ClientListening]
//!           client RETR ─▶ held; ftpgate ─PORT/EPRT─▶ backend ─▶ [Awaiting Port]
//!             2xx ─▶ open data (accept both sides), release RETR
//!  anything else from the backend ─▶ 425 to the client in the backend's stead
//! ```
//!
//! The held transfer command is the only client line in flight: the client is not read
//! until the backend has answered, so later commands cannot overtake it.

use std::net::{IpAddr, SocketAddr};

use crate::protocol::addr::{find_epsv_port, find_pasv_tuple};
use crate::protocol::command::Verb;

use super::machine::EndpointSpec;

/// The one place the data-setup state of a translated session lives.
#[derive(Debug, Default)]
pub enum Translation<L> {
    /// Nothing prepared.
    #[default]
    Idle,
    /// Passive translation: the client's `PORT`/`EPRT` target, waiting for a transfer.
    ClientPort(SocketAddr),
    /// Active translation: ftpgate's own client-facing listener, announced in its
    /// `227`/`229`, waiting for a transfer.
    ClientListening(EndpointSpec<L>),
    /// ftpgate's own data-setup command is at the backend; `held` waits for its reply.
    Awaiting {
        /// The setup command sent.
        setup: Setup<L>,
        /// The client's transfer command, held until the setup's reply.
        held: HeldCommand,
    },
}

impl<L> Translation<L> {
    /// Whether a client command is held (the client is not read meanwhile).
    pub fn holding(&self) -> bool {
        matches!(self, Translation::Awaiting { .. })
    }
}

/// The client's transfer command, held until the backend answers ftpgate's setup.
#[derive(Debug)]
pub struct HeldCommand {
    /// The command line as the client sent it.
    pub line: Vec<u8>,
    /// Its verb.
    pub verb: Verb,
}

/// ftpgate's own data-setup command at the backend.
#[derive(Debug)]
pub enum Setup<L> {
    /// Passive translation: EPSV, falling back to PASV if the backend refuses it.
    Epsv {
        /// The client's data address (from its `PORT`/`EPRT`), to connect to.
        client: SocketAddr,
    },
    /// Passive translation with `PASV`, after an IPv4 backend refused `EPSV`.
    Pasv {
        /// The client's data address (from its `PORT`/`EPRT`), to connect to.
        client: SocketAddr,
    },
    /// Active translation: PORT/EPRT naming ftpgate's backend-side listener.
    Port {
        /// The client side.
        client: EndpointSpec<L>,
        /// ftpgate's listener the backend connects to.
        backend: EndpointSpec<L>,
    },
}

/// What the backend's reply to a setup command means.
#[derive(Debug)]
pub enum SetupVerdict<L> {
    /// Passive translation succeeded: connect to the client's address and to the
    /// backend's data address.
    Connect {
        /// The client side.
        client: SocketAddr,
        /// The backend's data address.
        backend: SocketAddr,
    },
    /// Active translation succeeded: accept on both listeners.
    Accept {
        /// The client side.
        client: EndpointSpec<L>,
        /// ftpgate's listener the backend connects to.
        backend: EndpointSpec<L>,
    },
    /// The backend refused `EPSV`: ask for `PASV` instead (RFC 2428 is optional, and
    /// older servers lack it).
    RetryWithPasv {
        /// The client's data address (from its `PORT`/`EPRT`), to connect to.
        client: SocketAddr,
    },
    /// The backend refused the setup (or its reply was unusable).
    Refused,
}

/// Interprets the final line of the backend's reply to `setup`. `pasv_target` turns a
/// `227`'s address into the address to connect to (see [`super::passive`]).
pub fn setup_reply<L>(
    setup: Setup<L>,
    line: &[u8],
    code: u16,
    backend: IpAddr,
    pasv_target: impl FnOnce(std::net::SocketAddrV4) -> SocketAddr,
) -> SetupVerdict<L> {
    match setup {
        // RFC 2428 §3: the data connection goes to the control connection's address.
        Setup::Epsv { client } if code == 229 => match find_epsv_port(line) {
            Ok(p) => SetupVerdict::Connect {
                client,
                backend: SocketAddr::new(backend, p.port),
            },
            Err(_) => SetupVerdict::Refused,
        },
        Setup::Epsv { client } if code >= 500 && backend.is_ipv4() => {
            SetupVerdict::RetryWithPasv { client }
        }
        Setup::Pasv { client } if code == 227 => match find_pasv_tuple(line) {
            Ok(t) => SetupVerdict::Connect {
                client,
                backend: pasv_target(t.addr),
            },
            Err(_) => SetupVerdict::Refused,
        },
        Setup::Port { client, backend } if (200..300).contains(&code) => {
            SetupVerdict::Accept { client, backend }
        }
        _ => SetupVerdict::Refused,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type V = SetupVerdict<u16>;

    fn client() -> SocketAddr {
        "198.51.100.7:5000".parse().unwrap()
    }

    fn v4_backend() -> IpAddr {
        "10.0.0.2".parse().unwrap()
    }

    fn verdict(setup: Setup<u16>, line: &str, backend: IpAddr) -> V {
        let code = line[..3].parse().unwrap();
        setup_reply(setup, line.as_bytes(), code, backend, SocketAddr::V4)
    }

    #[test]
    fn epsv_answer_connects_to_control_address() {
        let v = verdict(
            Setup::Epsv { client: client() },
            "229 Entering Extended Passive Mode (|||6446|)\r\n",
            v4_backend(),
        );
        assert!(
            matches!(v, V::Connect { backend, .. } if backend == "10.0.0.2:6446".parse().unwrap())
        );
    }

    /// pyftpdlib with EPSV disabled, and old servers without RFC 2428: 500/502.
    #[test]
    fn epsv_refused_falls_back_to_pasv_on_ipv4() {
        for line in ["500 Unknown command\r\n", "502 not implemented\r\n"] {
            let v = verdict(Setup::Epsv { client: client() }, line, v4_backend());
            assert!(matches!(v, V::RetryWithPasv { .. }), "{line}");
        }
        // IPv6 backends have no PASV: the refusal stands.
        let v = verdict(
            Setup::Epsv { client: client() },
            "500 no\r\n",
            "2001:db8::2".parse().unwrap(),
        );
        assert!(matches!(v, V::Refused));
        // A 4xx is a temporary failure, not a missing command.
        let v = verdict(
            Setup::Epsv { client: client() },
            "425 busy\r\n",
            v4_backend(),
        );
        assert!(matches!(v, V::Refused));
    }

    #[test]
    fn pasv_answer_goes_through_the_target_decision() {
        let v = verdict(
            Setup::Pasv { client: client() },
            "227 Entering Passive Mode (10,0,0,2,25,46)\r\n",
            v4_backend(),
        );
        assert!(
            matches!(v, V::Connect { backend, .. } if backend == "10.0.0.2:6446".parse().unwrap())
        );
        let v = verdict(
            Setup::Pasv { client: client() },
            "227 garbage\r\n",
            v4_backend(),
        );
        assert!(matches!(v, V::Refused));
    }

    /// Active translation: both sides accept on ftpgate's listeners.
    fn port_setup() -> Setup<u16> {
        Setup::Port {
            client: EndpointSpec::Accept {
                listener: 1,
                expect: client().ip(),
            },
            backend: EndpointSpec::Accept {
                listener: 2,
                expect: v4_backend(),
            },
        }
    }

    #[test]
    fn port_accepted_by_any_2xx() {
        for line in ["200 PORT command successful\r\n", "250 ok\r\n"] {
            let v = verdict(port_setup(), line, v4_backend());
            assert!(matches!(v, V::Accept { .. }), "{line}");
        }
        let v = verdict(port_setup(), "500 Illegal PORT command\r\n", v4_backend());
        assert!(matches!(v, V::Refused));
    }

    #[test]
    fn only_awaiting_holds_the_client() {
        assert!(!Translation::<u16>::Idle.holding());
        assert!(!Translation::<u16>::ClientPort(client()).holding());
        assert!(Translation::<u16>::Awaiting {
            setup: Setup::Epsv { client: client() },
            held: HeldCommand {
                line: b"RETR f\r\n".to_vec(),
                verb: Verb::Retr
            },
        }
        .holding());
    }
}
