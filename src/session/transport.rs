//! The control connections as streams that change under the session: TLS upgrades in
//! place (bounded by the session deadlines), and the opaque relay of transparent FTPS
//! passthrough. I/O edge.

use std::future::Future;
use std::io;
use std::time::Instant;

use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::machine::Deadline;
use super::outcome::Outcome;
use super::timer::Timer;

use super::writes::write_flush;
use super::SessionContext;
use crate::tls::MaybeTls;

/// The session's TLS client towards its backend: one resumption store shared by the
/// control connection and its data connections, and the name verified.
pub struct SessionTls {
    /// ftpgate as the TLS client, with this session's resumption store.
    pub connector: tokio_rustls::TlsConnector,
    /// The name the backend's certificate must carry.
    pub name: rustls::pki_types::ServerName<'static>,
}

/// Upgrades `stream` in place with `upgrade`, bounded by the session deadlines and
/// shutdown; the error names why it failed.
pub(super) async fn handshake<F, Fut>(
    stream: &mut Option<MaybeTls>,
    upgrade: F,
    deadline: Option<(Instant, Deadline)>,
    shutdown: &CancellationToken,
) -> Result<(), String>
where
    F: FnOnce(MaybeTls) -> Fut,
    Fut: Future<Output = io::Result<MaybeTls>>,
{
    let Some(plain) = stream.take() else {
        return Err("connection already gone".into());
    };
    let mut timer = Timer::default();
    timer.arm(deadline.map(|(at, _)| at));
    tokio::select! {
        r = upgrade(plain) => match r {
            Ok(s) => {
                *stream = Some(s);
                Ok(())
            }
            Err(e) => Err(e.to_string()),
        },
        () = timer.fired() => Err("handshake timed out".into()),
        () = shutdown.cancelled() => Err("shutting down".into()),
    }
}

/// Transparent FTPS: the rest of the control connection is TLS between the client and
/// its server, which ftpgate can neither read nor rewrite. Bytes already read go on
/// first; then both directions are copied until either side closes or shutdown.
pub(super) async fn relay_opaque(
    client: &mut MaybeTls,
    backend: &mut MaybeTls,
    cbuf: &mut Vec<u8>,
    sbuf: &mut Vec<u8>,
    ctx: &SessionContext,
    shutdown: &CancellationToken,
) -> Outcome {
    ctx.metrics.tls_passthrough_total.inc();
    info!("server accepted AUTH TLS: relaying the control connection opaquely (transparent FTPS passthrough)");
    let relay = async {
        write_flush(backend, cbuf).await?;
        write_flush(client, sbuf).await?;
        cbuf.clear();
        sbuf.clear();
        tokio::io::copy_bidirectional(client, backend).await
    };
    tokio::select! {
        r = relay => match r {
            Ok((up, down)) => {
                debug!(up, down, "opaque control relay ended");
                Outcome::Closed
            }
            Err(e) => {
                debug!(error = %e, "opaque control relay ended with error");
                Outcome::Closed
            }
        },
        () = shutdown.cancelled() => Outcome::Shutdown,
    }
}
