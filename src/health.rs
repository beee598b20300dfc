//! Backend health: a background task that TCP-connects to every backend on a fixed
//! interval and records the result in `ftpgate_backend_up`, which `/readyz` reads.
//!
//! A bare TCP connect (no banner, no login) needs no credentials and is what a session
//! needs first; the balancer refreshes the same gauge on every session connect, so a
//! backend that dies between checks is marked down by the first session that finds out.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::metrics::Metrics;
use crate::net::{connect_from, note_exhaustion, LocalResource};

/// How often every backend is checked. Short enough that `/readyz` follows an outage
/// within a load balancer's usual probe period, long enough to be noise in the
/// backends' connection logs.
pub const HEALTH_CHECK_INTERVAL: Duration = Duration::from_secs(5);

/// Checks every backend each `interval` (the first round at once, so readiness is known
/// right after start) until `shutdown` fires. Each connect is bounded by
/// `connect_timeout`, and all backends of a round are checked concurrently so one
/// black-holed backend does not delay the others' verdicts.
pub async fn run(
    backends: Vec<SocketAddr>,
    connect_timeout: Duration,
    interval: Duration,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    if backends.is_empty() {
        return;
    }
    let mut ticker = tokio::time::interval(interval);
    // After a stall, check once rather than in a burst.
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last: Vec<Option<bool>> = vec![None; backends.len()];
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = shutdown.cancelled() => return,
        }
        let mut checks = JoinSet::new();
        for (i, &addr) in backends.iter().enumerate() {
            checks.spawn(async move {
                let result = connect_from(addr, None, connect_timeout).await;
                // Dropping the stream closes it: the connect itself is the check.
                (i, result.map(drop))
            });
        }
        loop {
            // Dropping the JoinSet on shutdown aborts checks still in flight.
            let joined = tokio::select! {
                j = checks.join_next() => j,
                () = shutdown.cancelled() => return,
            };
            let Some(joined) = joined else { break };
            let Ok((i, result)) = joined else { continue };
            let (Some(&addr), Some(prev)) = (backends.get(i), last.get_mut(i)) else {
                continue;
            };
            // Out of descriptors or buffers here says nothing about the backend: keep
            // its last verdict (readiness must not flap to "no backend reachable").
            if let Err(e) = &result {
                if let Some(resource) = LocalResource::of(e) {
                    note_exhaustion(&metrics, resource, "health check", e);
                    continue;
                }
            }
            let up = result.is_ok();
            metrics
                .backend_up
                .with_label_values(&[&addr.to_string()])
                .set(i64::from(up));
            match (*prev, &result) {
                (Some(false) | None, Ok(())) => info!(backend = %addr, "backend up"),
                (Some(true) | None, Err(e)) => {
                    warn!(backend = %addr, error = %e, "backend down (health check)")
                }
                (_, Err(e)) => debug!(backend = %addr, error = %e, "backend still down"),
                (Some(true), Ok(())) => {}
            }
            *prev = Some(up);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn marks_live_backend_up_and_dead_backend_down() {
        let live = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let live_addr = live.local_addr().unwrap();
        let dead = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let metrics = Arc::new(Metrics::new());
        metrics.init_labels(&[live_addr, dead]);
        let gauge = |a: SocketAddr| metrics.backend_up.with_label_values(&[&a.to_string()]);
        // The dead one starts "up" so the test sees the checker set it, not the default.
        gauge(dead).set(1);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run(
            vec![live_addr, dead],
            Duration::from_secs(5),
            Duration::from_millis(20),
            Arc::clone(&metrics),
            shutdown.clone(),
        ));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while gauge(live_addr).get() != 1 || gauge(dead).get() != 0 {
            assert!(tokio::time::Instant::now() < deadline, "checker never ran");
            // Accept and drop so the listener's backlog never fills.
            let _ = tokio::time::timeout(Duration::from_millis(50), live.accept()).await;
        }
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("checker stops on shutdown")
            .unwrap();
    }
}
