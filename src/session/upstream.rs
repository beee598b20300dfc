//! The session's server side: a backend from the balancer (reverse mode) or the
//! destination a client was going to before the gateway redirected it (transparent).
//! I/O edge.

use std::net::SocketAddr;
use std::time::Instant;

use tokio::net::TcpStream;
use tracing::warn;

use super::outcome::Outcome;
use super::replies::LocalReply;
use super::SessionContext;
use crate::balancer::ConnectError;
use crate::config::ListenerMode;
use crate::metrics::{Refusal, TimeoutKind};
use crate::net::{connect_from, is_local_ip, note_exhaustion, original_destination, LocalResource};
use crate::protocol::addr::canonical_ip;

/// Why no upstream connection was made: what the client is told and how the session
/// ends.
#[derive(Debug)]
pub struct NoUpstream {
    /// The reply ftpgate sends the client before closing.
    pub reply: LocalReply,
    /// How the session ends (its `outcome` label).
    pub outcome: Outcome,
}

impl NoUpstream {
    fn unavailable(reply: LocalReply) -> Self {
        NoUpstream {
            reply,
            outcome: Outcome::BackendUnavailable,
        }
    }

    /// ftpgate itself is out of descriptors or memory: not the backend's fault, and
    /// not reported as "no backend reachable".
    fn local_resource() -> Self {
        NoUpstream {
            reply: LocalReply::LocalResourceLimit,
            outcome: Outcome::LocalResource,
        }
    }
}

/// Connects the session's server side.
pub async fn connect_upstream(
    client: &TcpStream,
    mode: ListenerMode,
    ctx: &SessionContext,
) -> Result<(TcpStream, SocketAddr), NoUpstream> {
    let timeout = ctx.config.timeouts.backend_connect;
    if mode == ListenerMode::Reverse {
        return ctx
            .balancer
            .connect(timeout, &ctx.metrics)
            .await
            .map_err(|e| match e {
                // Counted and logged (rate-limited) where it was found.
                ConnectError::LocalResource { .. } => NoUpstream::local_resource(),
                ConnectError::NoBackend { .. } => {
                    warn!(error = %e, "no backend for session");
                    NoUpstream::unavailable(LocalReply::NoBackend)
                }
            });
    }
    let dst = original_destination(client).map_err(|e| {
        warn!(error = %e, "cannot recover the original destination");
        NoUpstream::unavailable(LocalReply::UnknownDestination)
    })?;
    let dst = SocketAddr::new(canonical_ip(dst.ip()), dst.port());
    // A connection made straight to a transparent listener, or redirected back to one,
    // would otherwise connect to ftpgate itself, again and again.
    let own_port = ctx.listen_addrs.iter().any(|l| l.port() == dst.port());
    if own_port && is_local_ip(dst.ip()) {
        ctx.metrics.refuse(Refusal::Loop);
        warn!(destination = %dst, "refusing to connect to one of ftpgate's own listeners");
        return Err(NoUpstream::unavailable(LocalReply::DestinationIsGateway));
    }
    let started = Instant::now();
    match connect_from(dst, None, timeout).await {
        Ok(s) => {
            ctx.metrics
                .backend_connect_duration_seconds
                .observe(started.elapsed().as_secs_f64());
            Ok((s, dst))
        }
        Err(e) => {
            if let Some(resource) = LocalResource::of(&e) {
                note_exhaustion(&ctx.metrics, resource, "upstream connect", &e);
                return Err(NoUpstream::local_resource());
            }
            if e.kind() == std::io::ErrorKind::TimedOut {
                ctx.metrics.timeout(TimeoutKind::BackendConnect);
            }
            warn!(destination = %dst, error = %e, "original destination unreachable");
            Err(NoUpstream::unavailable(LocalReply::DestinationUnreachable))
        }
    }
}
