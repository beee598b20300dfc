//! ftpgate: an FTP-aware NAT/ALG proxy.
//!
//! # Layout
//! - [`protocol`]: pure wire codec — line framing, commands, replies, the address forms
//!   of `227`/`229`/`PORT`/`EPRT`, and byte-preserving rewriting. No I/O.
//! - [`session`]: one client session — a pure session machine (`machine`) with one room
//!   per FTP feature (`active`, `passive`, `translate`, `keepalive`, the reply `ledger`,
//!   ftpgate's own `replies`), a thin async `driver`, and data connections (`data`).
//! - [`dataport`]: the data-port pool (random choice, RAII leases).
//! - [`proxy_protocol`]: PROXY protocol v1/v2 headers in (from trusted balancers) and out.
//! - [`relay`]: byte relay for data connections, half-close aware.
//! - [`farm`]: the server farm — named backends and their members, balancing
//!   policies, user routes, backend health (pure where it decides).
//! - [`balancer`]: backend connect with failover, in the farm's order.
//! - [`net`]: socket helpers at the I/O edge.
//! - [`config`], [`cli`]: YAML configuration, flags that override it, validation.
//! - [`metrics`]: the Prometheus registry.
//! - [`admin`]: the admin HTTP listener (`/metrics`, `/healthz`, `/readyz`).
//! - [`health`]: periodic backend health checks (`tcp`, `banner`, `login`) feeding the
//!   farm's `BackendHealth`.
//! - [`config`]'s sections follow the concerns: `passive`, `active`, `control`,
//!   `timeouts`, `limits`, `keepalive`, `admin`.
//! - [`app`]: binds listeners and runs sessions until shutdown (drain included).
//! - [`listeners`]: the FTP listeners and their accept loops; a reload adds and
//!   removes them (bind new before closing old).
//! - [`reload`]: configuration reload into snapshots for new sessions.
//! - [`tls`]: FTPS at the edge: PEM loading, rustls configurations, upgradable streams.
//! - [`cluster`]: scale-out — data-port slices per replica, forwarding a data
//!   connection to the replica that owns its port (PROXY v2 between peers).
//! - [`probe`]: `ftpgate probe`, diagnoses FTP through NAT, firewalls and load balancers.

// Nothing that came from the network may panic (STYLE: no unwrap/expect outside
// tests); indexing and slicing are checked too, as `protocol/` and `probe/` need.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod admin;
pub mod app;
pub mod balancer;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod dataport;
pub mod farm;
pub mod health;
pub mod listeners;
pub mod metrics;
pub mod net;
pub mod probe;
pub mod protocol;
pub mod proxy_protocol;
pub mod relay;
pub mod reload;
pub mod session;
pub mod tls;
