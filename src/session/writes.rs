//! Writes on the control connections, bounded: a peer that stops reading must not hold
//! a session past its deadlines, nor a closing session past a short grace. I/O edge.

use std::future::Future;
use std::io;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

use super::machine::{Deadline, Outbox};
use super::timer::Timer;
use crate::net::send_urgent;
use crate::tls::MaybeTls;

/// How long a closing session tries to deliver its last reply (a client that does not
/// read gets no more).
pub const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// What interrupted a write.
pub enum Interrupt {
    /// A session deadline passed.
    Deadline(Deadline),
    /// The gateway is shutting down.
    Shutdown,
}

/// Runs `write` unless a session deadline or shutdown comes first. `timer` is the
/// session's deadline timer (reused: a timer per write showed in profiles), which may
/// fire early (see [`Timer::arm_early`]): only a deadline really due interrupts. The
/// write is polled first, so one that completes at once (the usual case) touches
/// neither the timer nor the shutdown token.
pub async fn bounded<F: Future<Output = io::Result<()>>>(
    write: F,
    timer: &mut Timer,
    deadline: Option<(Instant, Deadline)>,
    shutdown: &CancellationToken,
) -> Result<io::Result<()>, Interrupt> {
    tokio::pin!(write);
    timer.arm_early(deadline.map(|(at, _)| at));
    loop {
        tokio::select! {
            biased;
            r = &mut write => return Ok(r),
            () = timer.fired() => {
                if let Some((at, kind)) = deadline {
                    if at <= Instant::now() {
                        return Err(Interrupt::Deadline(kind));
                    }
                    timer.arm_early(Some(at));
                }
            }
            () = shutdown.cancelled() => return Err(Interrupt::Shutdown),
        }
    }
}

/// A last write of a closing session, bounded by [`CLOSE_GRACE`].
pub async fn grace<F: Future<Output = io::Result<()>>>(
    write: F,
) -> Result<io::Result<()>, Interrupt> {
    Ok(tokio::time::timeout(CLOSE_GRACE, write)
        .await
        .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into())))
}

/// Writes the backend's bytes, sending one byte as urgent data where a Telnet Synch
/// was relayed (plain TCP only: inside TLS there is no urgent data, and the machine
/// sets none for a TLS backend).
pub async fn write_backend(bw: &mut MaybeTls, out: &Outbox) -> io::Result<()> {
    let bytes = &out.to_backend;
    match out.urgent_at.filter(|&i| i < bytes.len() && !bw.is_tls()) {
        Some(i) => {
            let (before, rest) = bytes.split_at(i);
            bw.write_all(before).await?;
            if let Some((&urgent, after)) = rest.split_first() {
                send_urgent(bw.tcp(), urgent).await?;
                bw.write_all(after).await?;
            }
            Ok(())
        }
        None => write_flush(bw, bytes).await,
    }
}

/// Writes and flushes: a TLS stream holds written bytes until flushed.
pub async fn write_flush(s: &mut MaybeTls, bytes: &[u8]) -> io::Result<()> {
    s.write_all(bytes).await?;
    s.flush().await
}
