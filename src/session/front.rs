//! The client side before the session machine exists (I/O edge, decisions in pure
//! rooms): the PROXY protocol header of a trusted balancer
//! ([`crate::proxy_protocol`]), the `balance: user` greeting until `USER`
//! ([`super::routing`]), and the header ftpgate sends to a backend. Kept out of
//! [`super::driver`] so the driver stays the machine's pump.

use std::net::SocketAddr;
use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::driver::READ_CHUNK;
use super::outcome::Outcome;
use super::replies::LocalReply;
use super::routing::{before_user, GateStep};
use super::start::say_goodbye;
use super::writes::grace;
use super::SessionContext;
use crate::protocol::addr::canonical_ip;
use crate::proxy_protocol::{encode_proxy_header, read_proxy_header, ProxyHeader};

/// The real client of a control connection: the PROXY header's source when the peer
/// is a trusted balancer (which must then send one), else the peer itself. `None`:
/// the connection was closed (bad, slow or missing header; shutdown) without a reply
/// and without touching a backend.
pub async fn client_behind_balancer(
    client: &mut TcpStream,
    peer: SocketAddr,
    ctx: &SessionContext,
    shutdown: &CancellationToken,
) -> Option<(SocketAddr, Option<SocketAddr>)> {
    let pp = &ctx.config.proxy_protocol;
    if !pp.expects_header(peer.ip()) {
        return Some((peer, None));
    }
    let read = tokio::select! {
        r = read_proxy_header(client, pp.timeout) => r,
        () = shutdown.cancelled() => return None,
    };
    let result = match &read {
        Ok(_) => "accepted",
        Err(e) => e.label(),
    };
    ctx.metrics
        .proxy_headers_total
        .with_label_values(&["control", result])
        .inc();
    match read {
        Ok(ProxyHeader::Proxied {
            source,
            destination,
        }) => Some((
            SocketAddr::new(canonical_ip(source.ip()), source.port()),
            Some(destination),
        )),
        // The balancer's own health check: its address is the client's.
        Ok(ProxyHeader::Local) => Some((peer, None)),
        Err(e) => {
            debug!(balancer = %peer, error = %e, "PROXY protocol header refused; connection closed");
            None
        }
    }
}

/// `balance: user`: greets the client and answers it until `USER` (see
/// [`super::routing`]), bounded by the login timeout and shutdown. The `USER` line
/// and what follows stay in `cbuf`.
pub async fn await_user(
    client: &mut TcpStream,
    cbuf: &mut Vec<u8>,
    ctx: &SessionContext,
    started: Instant,
    shutdown: &CancellationToken,
) -> Result<String, Outcome> {
    let max_line = ctx.config.control.max_line_length;
    let greeting = LocalReply::RoutingGreeting(ctx.config.greeting.clone());
    ctx.metrics.reply(greeting.code());
    let mut out = greeting.to_bytes();
    let deadline = tokio::time::Instant::from_std(started + ctx.config.timeouts.login);
    loop {
        let step = before_user(cbuf, &mut out, max_line);
        if !out.is_empty() {
            let write = tokio::time::timeout_at(deadline, client.write_all(&out));
            if !matches!(write.await, Ok(Ok(()))) {
                return Err(Outcome::Closed);
            }
            out.clear();
        }
        match step {
            GateStep::Routed(user) => return Ok(user),
            GateStep::Close => {
                let _ = grace(client.shutdown()).await;
                return Err(Outcome::Closed);
            }
            GateStep::NeedMore => {}
        }
        cbuf.reserve(READ_CHUNK);
        tokio::select! {
            r = client.read_buf(cbuf) => match r {
                Ok(0) | Err(_) => return Err(Outcome::Closed),
                Ok(_) => {}
            },
            () = tokio::time::sleep_until(deadline) => {
                ctx.metrics.timeout(crate::metrics::TimeoutKind::Login);
                say_goodbye(&ctx.metrics, client, LocalReply::LoginTimeout).await;
                return Err(Outcome::Timeout);
            }
            () = shutdown.cancelled() => {
                say_goodbye(&ctx.metrics, client, LocalReply::ShuttingDown).await;
                return Err(Outcome::Shutdown);
            }
        }
    }
}

/// With `backend_proxy_protocol`, opens the backend control connection with a header
/// naming the client (`peer`) and where it connected (`dst`): the backend, or the
/// haproxy `accept-proxy` in front of it, learns the real client before the first FTP
/// byte. False when the header could not be written (the session cannot go on).
pub async fn send_backend_header(
    backend: &mut TcpStream,
    backend_addr: SocketAddr,
    peer: SocketAddr,
    dst: Option<SocketAddr>,
    ctx: &SessionContext,
) -> bool {
    let Some(version) = ctx.config.backend_proxy_protocol else {
        return true;
    };
    let header = encode_proxy_header(version, peer, dst.unwrap_or(peer));
    let sent = tokio::time::timeout(
        ctx.config.timeouts.backend_connect,
        backend.write_all(&header),
    )
    .await;
    if !matches!(sent, Ok(Ok(()))) {
        warn!(backend = %backend_addr, "cannot send the PROXY protocol header");
        return false;
    }
    true
}
