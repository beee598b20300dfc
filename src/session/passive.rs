//! One passive data mapping: a leased port on ftpgate that accepts one connection,
//! only from the control client's IP (ARCHITECTURE invariant 4), and relays it to the
//! backend's data address.
//!
//! ```text
//!   Listening ──client IP matches──▶ Connecting ──ok──▶ Relaying ──both EOF──▶ done
//!      │ foreign IP: close it, count, keep listening      │ fail: close client
//!      └ timeout / superseded / session gone ──▶ done (lease dropped: port back in pool)
//! ```

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::dataport::PortLease;
use crate::metrics::Metrics;
use crate::net::connect_timeout;
use crate::protocol::addr::canonical_ip;
use crate::relay::relay;

#[derive(Debug)]
pub struct PassiveMapping {
    pub listener: TcpListener,
    pub lease: PortLease,
    /// The only peer IP accepted (the control client's).
    pub expect: IpAddr,
    /// Where the backend listens for this data connection.
    pub target: SocketAddr,
    /// Local IP for the backend connection: that of the control connection.
    pub local: Option<IpAddr>,
    pub accept_timeout: Duration,
    pub connect_timeout: Duration,
}

impl PassiveMapping {
    /// Runs the mapping to its end. `cancel` stops it only while it waits for the client:
    /// a relay in progress finishes its transfer.
    pub async fn serve(self, cancel: CancellationToken, metrics: Arc<Metrics>) {
        let PassiveMapping {
            listener,
            lease,
            expect,
            target,
            local,
            accept_timeout,
            connect_timeout: backend_timeout,
        } = self;
        metrics.data_ports_in_use.inc();
        let _in_use = scopeguard(|| metrics.data_ports_in_use.dec());
        let port = lease.port();
        let deadline = tokio::time::sleep(accept_timeout);
        tokio::pin!(deadline);
        let mut client = loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) if canonical_ip(peer.ip()) == expect => break stream,
                    Ok((stream, peer)) => {
                        // Hijack attempt or a confused host: close before reading a byte.
                        drop(stream);
                        metrics.refuse("foreign_data_peer");
                        warn!(port, peer = %peer, "data connection from foreign address refused");
                    }
                    Err(e) => {
                        warn!(port, error = %e, "data port accept failed");
                        return;
                    }
                },
                () = &mut deadline => {
                    metrics.timeouts_total.with_label_values(&["data_connect"]).inc();
                    info!(port, timeout = ?accept_timeout, "no data connection within timeout; port released");
                    return;
                }
                () = cancel.cancelled() => {
                    debug!(port, "passive mapping withdrawn before use");
                    return;
                }
            }
        };
        // One connection per mapping: stop listening so the port cannot be reused.
        drop(listener);
        let mut backend = match connect_timeout(target, local, backend_timeout).await {
            Ok(s) => s,
            Err(e) => {
                warn!(port, backend = %target, error = %e, "backend data connect failed");
                return;
            }
        };
        let started = Instant::now();
        match relay(&mut client, &mut backend).await {
            Ok(r) => {
                metrics
                    .data_bytes_total
                    .with_label_values(&["client_to_backend"])
                    .inc_by(r.a_to_b);
                metrics
                    .data_bytes_total
                    .with_label_values(&["backend_to_client"])
                    .inc_by(r.b_to_a);
                debug!(port, up = r.a_to_b, down = r.b_to_a, elapsed = ?started.elapsed(), "data relay done");
            }
            Err(e) => debug!(port, error = %e, "data relay ended with error"),
        }
        drop(lease);
    }
}

/// Runs `f` on drop, so gauges come back down on every exit path.
fn scopeguard<F: FnOnce()>(f: F) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}
