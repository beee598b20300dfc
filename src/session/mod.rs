//! One client session: a pure machine that decides, a thin async driver that does I/O,
//! and one room per FTP feature.
//!
//! # Rooms
//! - [`machine`]: the session machine (sans-I/O): client commands and server replies
//!   in, bytes and [`machine::Action`]s out.
//! - [`ledger`]: reply accounting — who each server reply answers (pure).
//! - [`active`]: `PORT`/`EPRT` bounce checks and data-source addresses (pure).
//! - [`passive`]: `227`/`229` data targets, announced addresses, held multi-line
//!   replies (pure).
//! - [`translate`]: mode translation (`backend_data_mode`), the one place data-setup
//!   state lives (pure).
//! - [`tls`]: FTPS policy — `AUTH`/`PBSZ`/`PROT`/`CCC`, `required` policies, which
//!   data sides are TLS, `FEAT` augmentation (pure).
//! - [`keepalive`]: when NOOPs go to the backend (pure).
//! - [`replies`]: every reply ftpgate writes itself; [`outcome`]: errors with their
//!   side, and how sessions end.
//! - [`driver`]: the async edge (sockets, timers, `select!`); [`edge`]: data ports and
//!   data tasks for the machine; [`upstream`]: the backend connect; [`data`]: one data
//!   connection; [`access`]: the access log; [`limits`]: the pre-login cap;
//!   [`routing`]: `balance: user`, what commands before `USER` get (pure);
//!   [`front`]: the PROXY protocol at the session's edges;
//!   [`writes`]: bounded control-connection writes; [`admission`]: session caps and
//!   rates per client address; [`drain`]: when a draining session closes;
//!   [`start`]: a session's start (limits, implicit TLS, the backend connect);
//!   [`transport`]: TLS upgrades in place and the opaque passthrough relay;
//!   [`timer`]: a reusable timer.
//!
//! # The machine
//! ```text
//!   driver                          SessionMachine                      driver
//!   ──────                          ──────────────                      ──────
//!   client bytes ──on_client_input──▶ frame lines ─▶ command policy ─┐
//!   server bytes ──on_server_input──▶ frame lines ─▶ ledger ─────────┤ Outbox { to_client,
//!   data events  ──on_data_event────▶ transfer stats, clocks ────────┤   to_backend, urgent }
//!   deadlines    ──on_deadline──────▶ 421, Close(Timeout) ───────────┤ Action::OpenData
//!   keepalive    ──on_keepalive─────▶ NOOP (if allowed) ─────────────┤ Action::WithdrawData
//!   shutdown     ──on_shutdown──────▶ 421, Close(Shutdown) ──────────┤ Action::Close(outcome)
//!   connect done ──on_backend_connected▶ banner owed, USER waits ────┘ Action::ConnectBackend
//!                  SessionEdge ◀──── bind a data port / is this address ours?
//! ```
//! Before the machine exists: a trusted balancer's PROXY header is read (its source is
//! `Addresses::client_ip`) and an implicit-FTPS client handshakes. Under `balance:
//! user` the machine starts with no backend (`SessionMachine::awaiting_user`): it
//! greets, answers until `USER` as [`routing`] decides (including `AUTH TLS`), asks
//! the driver for the backend (`Action::ConnectBackend`), swallows its `220`, upgrades
//! it when the client is in TLS, then replays `USER`. Otherwise the backend is
//! connected first and the machine starts owing its greeting.
//!
//! # Command side, per client command
//! ```text
//!                 ┌─ refused (LPRT, bounce, EPSV ALL, AUTH…) ─▶ local reply, in turn
//!   client line ──┼─ PORT/EPRT ─▶ bounce check ─▶ rewrite to our backend-side port
//!                 │                             └ passive translation: 200, remember
//!                 ├─ PASV/EPSV ─▶ forward; the 227/229 is mapped on its final line
//!                 │             └ active translation: our own 227/229
//!                 ├─ RETR/STOR/LIST… with a translation pending ─▶ HELD until the
//!                 │     backend answers ftpgate's EPSV/PASV/PORT (client not read)
//!                 └─ anything else ─▶ forward (CRLF), owed one reply in the ledger
//! ```
//!
//! Deadlines: login (until a `230`), idle (logged in, no command and no transfer),
//! backend reply (the backend owes a reply and no data connection runs). Each applies
//! while a write is pending too.

pub mod access;
pub mod active;
pub mod admission;
pub mod data;
pub mod drain;
pub mod driver;
pub mod edge;
pub mod front;
pub mod keepalive;
pub mod ledger;
pub mod limits;
pub mod machine;
pub mod outcome;
pub mod passive;
pub mod replies;
pub mod routing;
pub mod start;
pub mod timer;
pub mod tls;
pub mod translate;
pub mod transport;
pub mod upstream;
pub mod writes;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

pub use driver::run_session;
pub use outcome::Outcome;

use crate::balancer::Balancer;
use crate::config::Config;
use crate::dataport::PortPool;
use crate::metrics::Metrics;

/// What every session shares.
#[derive(Debug)]
pub struct SessionContext {
    /// The configuration the gateway started with.
    pub config: Arc<Config>,
    /// Ports for client-facing data listeners.
    pub pool: Arc<PortPool>,
    /// Ports for backend-facing data listeners (active mode); may be `pool` itself.
    pub active_pool: Arc<PortPool>,
    /// Picks the backend for each reverse-mode session.
    pub balancer: Balancer,
    /// Every bound listener, for loop protection in transparent mode.
    pub listen_addrs: Vec<SocketAddr>,
    /// The gateway's metrics.
    pub metrics: Arc<Metrics>,
    /// Sessions not yet logged in (`limits.max_prelogin_sessions`).
    pub prelogin: Arc<limits::PreloginSlots>,
    /// Session counts and rates per client address (`limits.max_sessions*`,
    /// `limits.new_sessions_per_ip`).
    pub admission: Arc<admission::Admission>,
    /// Fires when the gateway starts draining (see [`drain`]).
    pub drain: CancellationToken,
    /// Certificates and rustls configurations (`tls:`).
    pub tls: crate::tls::TlsContexts,
    /// Cluster mode: where forwarded data connections are handed to sessions.
    pub cluster: Option<Arc<crate::cluster::forward::ClusterNode>>,
}
