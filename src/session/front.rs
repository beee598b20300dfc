//! The PROXY protocol at the session's edges (I/O): the header of a trusted balancer
//! in front of ftpgate ([`crate::proxy_protocol`]), and the header ftpgate sends to a
//! backend. Kept out of [`super::driver`] so the driver stays the machine's pump.

use std::net::SocketAddr;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::SessionContext;
use crate::protocol::addr::canonical_ip;
use crate::proxy_protocol::{encode_proxy_header_tls, read_proxy_header, ClientTls, ProxyHeader};

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

/// With `backend_proxy_protocol`, opens the backend control connection with a header
/// naming the client (`peer`) and where it connected (`dst`): the backend, or the
/// haproxy `accept-proxy` in front of it, learns the real client before the first FTP
/// byte. A client already in TLS (`tls`: implicit FTPS, or `AUTH TLS` before `USER`
/// under `balance: user`) is described in v2 TLVs. False when the header could not be
/// written (the session cannot go on).
pub async fn send_backend_header(
    backend: &mut TcpStream,
    backend_addr: SocketAddr,
    peer: SocketAddr,
    dst: Option<SocketAddr>,
    tls: Option<&ClientTls>,
    ctx: &SessionContext,
) -> bool {
    let Some(version) = ctx.config.backend_proxy_protocol else {
        return true;
    };
    let header = encode_proxy_header_tls(version, peer, dst.unwrap_or(peer), tls);
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
