//! Byte relay between the two halves of a data connection.
//!
//! Every byte is forwarded; EOF on one side becomes `shutdown(Write)` on the other
//! (half-close), and the relay ends only when both directions are done
//! (ARCHITECTURE invariant 5). An error in either direction ends the relay with that
//! error, which still carries the bytes moved so far ([`RelayError::relayed`]): an
//! aborted transfer (RST, ABOR, a close with unread data) is accounted like any other.
//!
//! Two implementations with the same semantics:
//! - [`relay`]: any `AsyncRead + AsyncWrite` pair, through a user-space buffer per
//!   direction (`tokio::io::copy_bidirectional_with_sizes`).
//! - [`relay_tcp`]: two plain TCP sockets. On Linux the bytes never enter user space:
//!   each direction `splice(2)`s socket → pipe → socket, driven by tokio's readiness
//!   (`readable()`/`writable()` + `try_io`). Elsewhere, or when no pipe can be made
//!   (file-descriptor limit), it is [`relay`].
//!
//! ```text
//!   per direction (splice):
//!   ┌──────────────┐ readable  ┌──────────────┐ writable  ┌──────────────┐
//!   │ pipe empty:  │──────────▶│ pipe holds n │──────────▶│ n == 0       │──┐
//!   │ splice in    │           │ splice out   │  (loop)   │              │  │
//!   └──────────────┘           └──────────────┘           └──────────────┘  │
//!     ▲    │ 0 bytes (EOF)                                                   │
//!     │    └──▶ shutdown(Write) on the other socket ──▶ direction done       │
//!     └──────────────────────────────────────────────────────────────────────┘
//! ```

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::config::RelayMode;

/// Buffer per direction: large enough that a multi-gigabyte transfer costs few syscalls.
const BUF: usize = 256 * 1024;

/// `relay: copy` turns splice off process-wide (benchmarks, and an escape hatch should a
/// kernel misbehave). A global rather than a session parameter: it is chosen once at
/// startup and no relay call site should have to carry it.
static COPY_ONLY: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Selects the relay implementation for every later [`relay_tcp`] call; the binary calls
/// it once at startup with the configured `relay`. Default (never called): `auto`.
pub fn set_relay_mode(mode: RelayMode) {
    COPY_ONLY.store(
        mode == RelayMode::Copy,
        std::sync::atomic::Ordering::Relaxed,
    );
}

/// The mode set by [`set_relay_mode`].
pub fn relay_mode() -> RelayMode {
    if COPY_ONLY.load(std::sync::atomic::Ordering::Relaxed) {
        RelayMode::Copy
    } else {
        RelayMode::Auto
    }
}

/// Bytes relayed in each direction: bytes written to (accepted by) the receiving
/// side, so what the other peer could read, never what was only read and dropped.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Relayed {
    /// From the first stream (the client side) to the second.
    pub a_to_b: u64,
    /// From the second stream (the backend side) to the first.
    pub b_to_a: u64,
}

/// A relay that ended with an error (reset, broken pipe, idle timeout), with what it
/// had moved until then.
#[derive(Debug, thiserror::Error)]
#[error("relay failed after {} bytes a→b and {} bytes b→a", .relayed.a_to_b, .relayed.b_to_a)]
pub struct RelayError {
    /// Bytes moved each way before the error.
    pub relayed: Relayed,
    /// The I/O error that ended the relay.
    #[source]
    pub source: io::Error,
}

impl RelayError {
    /// The kind of the underlying I/O error.
    pub fn kind(&self) -> io::ErrorKind {
        self.source.kind()
    }
}

impl From<RelayError> for io::Error {
    fn from(e: RelayError) -> io::Error {
        e.source
    }
}

/// Running byte counts, shared by both directions (one task, so relaxed order; atomics
/// keep the relay future `Send`). Read on every exit path, error or not.
#[derive(Default)]
struct Counts {
    a_to_b: AtomicU64,
    b_to_a: AtomicU64,
}

impl Counts {
    fn snapshot(&self) -> Relayed {
        Relayed {
            a_to_b: self.a_to_b.load(Ordering::Relaxed),
            b_to_a: self.b_to_a.load(Ordering::Relaxed),
        }
    }

    fn end(&self, r: io::Result<()>) -> Result<Relayed, RelayError> {
        let relayed = self.snapshot();
        r.map(|()| relayed)
            .map_err(|source| RelayError { relayed, source })
    }
}

/// Relays until both directions reach EOF.
pub async fn relay<A, B>(a: &mut A, b: &mut B) -> Result<Relayed, RelayError>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let counts = Counts::default();
    let r = buffered(a, b, &counts, None).await;
    counts.end(r)
}

/// The buffered relay, counting what each side accepted (`copy_bidirectional` reports
/// counts only on success).
async fn buffered<A, B>(
    a: &mut A,
    b: &mut B,
    counts: &Counts,
    progress: Option<&Progress>,
) -> io::Result<()>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let mut ma = Metered {
        inner: a,
        written: &counts.b_to_a,
        progress,
    };
    let mut mb = Metered {
        inner: b,
        written: &counts.a_to_b,
        progress,
    };
    tokio::io::copy_bidirectional_with_sizes(&mut ma, &mut mb, BUF, BUF)
        .await
        .map(drop)
}

/// [`relay`] for two TCP sockets: zero-copy `splice(2)` on Linux, same semantics.
pub async fn relay_tcp(a: &mut TcpStream, b: &mut TcpStream) -> Result<Relayed, RelayError> {
    relay_tcp_with_idle(a, b, None).await
}

/// [`relay_tcp`] that gives up with `TimedOut` when no byte moved in either direction
/// for `idle`: a peer that neither sends nor closes would otherwise hold the
/// connection, its data port and its session forever.
pub async fn relay_tcp_with_idle(
    a: &mut TcpStream,
    b: &mut TcpStream,
    idle: Option<std::time::Duration>,
) -> Result<Relayed, RelayError> {
    let progress = Progress::default();
    let counts = Counts::default();
    let work = async {
        #[cfg(target_os = "linux")]
        if splice_enabled() {
            // Pipes cost two descriptors each; at the descriptor limit, relay through
            // buffers rather than fail the transfer.
            if let (Ok(ab), Ok(ba)) = (splice::Pipe::new(), splice::Pipe::new()) {
                return splice::relay(a, b, ab, ba, &progress, &counts).await;
            }
        }
        buffered(a, b, &counts, Some(&progress)).await
    };
    let r = match idle {
        None => work.await,
        Some(idle) => tokio::select! {
            r = work => r,
            () = progress.stalled_for(idle) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no data moved within the data idle timeout",
            )),
        },
    };
    counts.end(r)
}

/// When the relay last moved a byte, as nanoseconds since the relay started (an atomic
/// so the relay future stays `Send`; both directions run in one task, so relaxed order).
struct Progress {
    start: tokio::time::Instant,
    last_nanos: std::sync::atomic::AtomicU64,
}

impl Default for Progress {
    fn default() -> Self {
        Progress {
            start: tokio::time::Instant::now(),
            last_nanos: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

impl Progress {
    fn moved(&self) {
        let nanos = u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last_nanos
            .store(nanos, std::sync::atomic::Ordering::Relaxed);
    }

    fn last(&self) -> tokio::time::Instant {
        let nanos = self.last_nanos.load(std::sync::atomic::Ordering::Relaxed);
        self.start + std::time::Duration::from_nanos(nanos)
    }

    /// Resolves once nothing has moved for `idle`.
    async fn stalled_for(&self, idle: std::time::Duration) {
        loop {
            let due = self.last() + idle;
            if tokio::time::Instant::now() >= due {
                return;
            }
            tokio::time::sleep_until(due).await;
        }
    }
}

/// A side of the buffered relay: counts the bytes written to it (what its peer gets)
/// and, with a watchdog, records progress on every read or write.
struct Metered<'a, S: ?Sized> {
    inner: &'a mut S,
    written: &'a AtomicU64,
    progress: Option<&'a Progress>,
}

impl<S: AsyncRead + Unpin + ?Sized> AsyncRead for Metered<'_, S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut *self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            if let Some(p) = self.progress {
                p.moved();
            }
        }
        r
    }
}

impl<S: AsyncWrite + Unpin + ?Sized> AsyncWrite for Metered<'_, S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        let r = std::pin::Pin::new(&mut *self.inner).poll_write(cx, data);
        if let std::task::Poll::Ready(Ok(n)) = r {
            if n > 0 {
                self.written.fetch_add(n as u64, Ordering::Relaxed);
                if let Some(p) = self.progress {
                    p.moved();
                }
            }
        }
        r
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut *self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut *self.inner).poll_shutdown(cx)
    }
}

/// Whether [`relay_tcp`] may splice: not under `relay: copy` ([`set_relay_mode`]).
#[cfg(target_os = "linux")]
fn splice_enabled() -> bool {
    relay_mode() == RelayMode::Auto
}

#[cfg(target_os = "linux")]
mod splice {
    //! Three libc calls on descriptors we own (the other `unsafe` of ftpgate: `SIOCATMARK`
    //! in `net.rs` and `setrlimit` in `main.rs`).

    use std::io;
    use std::net::Shutdown;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

    use tokio::io::Interest;
    use tokio::net::TcpStream;

    use super::{AtomicU64, Ordering, Progress};

    /// Pipe capacity asked for. The kernel default is 64 KiB; larger moves more per
    /// wake-up. Best effort: above `/proc/sys/fs/pipe-max-size` the call fails and the
    /// pipe keeps its default size.
    ///
    /// Why 256 KiB and not more: an unprivileged process may hold only
    /// `/proc/sys/fs/pipe-user-pages-soft` pages of pipes (16384 = 64 MiB by default);
    /// past that, F_SETPIPE_SZ fails and *new* pipes get 2 pages (8 KiB), which costs
    /// about 3× the CPU per byte. Two pipes per data connection: 1 MiB pipes reach that
    /// after 32 concurrent transfers, 256 KiB ones after 128. On loopback (bench/run.sh,
    /// 2 cores) 256 KiB was also no slower than 1 MiB: the same under fixed CPU
    /// placement, and a higher download median in each of six unpinned runs (there the
    /// ratio to direct is set by where the scheduler puts the three processes, not by
    /// the relay).
    const PIPE_SIZE: libc::c_int = 256 * 1024;
    /// Upper bound for one splice call (bytes).
    const CHUNK: usize = PIPE_SIZE as usize;

    /// A non-blocking pipe; both ends close on drop.
    pub(super) struct Pipe {
        read: OwnedFd,
        write: OwnedFd,
        /// Bytes spliced in and not yet out.
        held: usize,
    }

    impl Pipe {
        #[allow(unsafe_code)]
        pub(super) fn new() -> io::Result<Pipe> {
            let mut fds = [-1 as libc::c_int; 2];
            // SAFETY: `fds` is a valid, writable array of two c_ints, as pipe2 requires.
            if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: pipe2 succeeded, so both descriptors are open and owned by nobody
            // else; each is wrapped exactly once.
            let (read, write) =
                unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
            // SAFETY: fcntl on a descriptor we own; F_SETPIPE_SZ takes an int and
            // touches no memory of ours. Failure only leaves the default size.
            let _ = unsafe { libc::fcntl(write.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_SIZE) };
            Ok(Pipe {
                read,
                write,
                held: 0,
            })
        }
    }

    /// One non-blocking splice; `WouldBlock` when either end is not ready.
    #[allow(unsafe_code)]
    fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
        // SAFETY: splice reads and writes no user memory when both offsets are null;
        // the descriptors are open for the duration of the call (borrowed from live
        // sockets and pipes).
        let n = unsafe {
            libc::splice(
                from,
                std::ptr::null_mut(),
                to,
                std::ptr::null_mut(),
                len,
                libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
            )
        };
        usize::try_from(n).map_err(|_| io::Error::last_os_error())
    }

    /// Moves `from` → `to` until EOF on `from`, then half-closes `to`. `total` counts
    /// the bytes spliced out to `to`, kept current so an error loses none of them.
    async fn one_way(
        from: &TcpStream,
        to: &TcpStream,
        mut pipe: Pipe,
        progress: &Progress,
        total: &AtomicU64,
    ) -> io::Result<()> {
        loop {
            // Fill: only when the pipe is empty, so `WouldBlock` means the socket has
            // nothing (not that the pipe is full).
            let n = loop {
                from.readable().await?;
                match from.try_io(Interest::READABLE, || {
                    splice(from.as_raw_fd(), pipe.write.as_raw_fd(), CHUNK)
                }) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Err(e),
                }
            };
            if n == 0 {
                socket2::SockRef::from(to).shutdown(Shutdown::Write)?;
                return Ok(());
            }
            pipe.held = n;
            progress.moved();
            // Drain everything before reading again.
            while pipe.held > 0 {
                to.writable().await?;
                match to.try_io(Interest::WRITABLE, || {
                    splice(pipe.read.as_raw_fd(), to.as_raw_fd(), pipe.held)
                }) {
                    Ok(m) => {
                        pipe.held -= m;
                        total.fetch_add(m as u64, Ordering::Relaxed);
                        progress.moved();
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }

    pub(super) async fn relay(
        a: &TcpStream,
        b: &TcpStream,
        ab: Pipe,
        ba: Pipe,
        progress: &Progress,
        counts: &super::Counts,
    ) -> io::Result<()> {
        tokio::try_join!(
            one_way(a, b, ab, progress, &counts.a_to_b),
            one_way(b, a, ba, progress, &counts.b_to_a)
        )
        .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn half_close_each_way_and_exact_bytes() {
        let (mut a_near, mut a_far) = tokio::io::duplex(4096);
        let (mut b_near, mut b_far) = tokio::io::duplex(4096);
        let task = tokio::spawn(async move { relay(&mut a_far, &mut b_near).await });

        let upload: Vec<u8> = (0..100_003u32).map(|i| (i % 251) as u8).collect();
        let up = upload.clone();
        let writer = tokio::spawn(async move {
            a_near.write_all(&up).await.unwrap();
            a_near.shutdown().await.unwrap();
            // After our half-close the other direction still delivers.
            let mut back = Vec::new();
            a_near.read_to_end(&mut back).await.unwrap();
            back
        });
        let mut got = Vec::new();
        b_far.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, upload);
        b_far.write_all(b"226 late reply bytes").await.unwrap();
        b_far.shutdown().await.unwrap();
        assert_eq!(writer.await.unwrap(), b"226 late reply bytes");
        let r = task.await.unwrap().unwrap();
        assert_eq!(r.a_to_b, 100_003);
        assert_eq!(r.b_to_a, 20);
    }

    #[tokio::test]
    async fn zero_bytes_both_ways() {
        let (mut a_near, mut a_far) = tokio::io::duplex(64);
        let (mut b_near, mut b_far) = tokio::io::duplex(64);
        let task = tokio::spawn(async move { relay(&mut a_far, &mut b_near).await });
        a_near.shutdown().await.unwrap();
        b_far.shutdown().await.unwrap();
        let mut sink = Vec::new();
        b_far.read_to_end(&mut sink).await.unwrap();
        a_near.read_to_end(&mut sink).await.unwrap();
        assert!(sink.is_empty());
        assert_eq!(task.await.unwrap().unwrap(), Relayed::default());
    }
}
