//! Socket helpers at the I/O edge.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};
use tokio::net::{TcpSocket, TcpStream};

use crate::config::TcpKeepaliveConfig;

/// Connects to `addr` within `timeout`, optionally from a given local address. A local
/// IP keeps data connections coming from the same address as the control connection
/// (vsftpd refuses others unless `pasv_promiscuous`); a local port serves clients whose
/// firewalls insist that active-mode data comes from port 20.
pub async fn connect_from(
    addr: SocketAddr,
    local: Option<SocketAddr>,
    timeout: Duration,
) -> io::Result<TcpStream> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    if let Some(local) = local.filter(|l| l.is_ipv4() == addr.is_ipv4()) {
        if local.port() != 0 {
            // Several data connections may leave from port 20 at once, to different peers.
            socket.set_reuseaddr(true)?;
        }
        socket.bind(local)?;
    }
    let stream = tokio::time::timeout(timeout, socket.connect(addr))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Prepares a control socket: no Nagle delay (replies are small and latency-bound),
/// TCP keepalive so middleboxes keep the flow while it is idle, and urgent data kept
/// inline so a Telnet Synch (RFC 959 §4.1.3) does not remove a byte from the command
/// stream — Python's ftplib sends `ABOR\r\n` with MSG_OOB, making `\n` the urgent byte.
/// `keepalive: None` leaves TCP keepalive off.
pub fn prepare_control_socket(s: &TcpStream, keepalive: Option<TcpKeepaliveConfig>) {
    let sock = SockRef::from(s);
    let _ = s.set_nodelay(true);
    let _ = sock.set_out_of_band_inline(true);
    if let Some(k) = keepalive {
        let ka = TcpKeepalive::new()
            .with_time(k.idle)
            .with_interval(k.interval)
            .with_retries(k.count);
        if let Err(e) = sock.set_tcp_keepalive(&ka) {
            tracing::debug!(error = %e, "cannot enable TCP keepalive");
        }
    }
}

/// Sends one byte as TCP urgent data (the Telnet Synch's `IAC`), waiting for room.
pub async fn send_urgent(s: &TcpStream, byte: u8) -> io::Result<()> {
    loop {
        s.writable().await?;
        match s.try_io(tokio::io::Interest::WRITABLE, || {
            SockRef::from(s).send_out_of_band(&[byte])
        }) {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Where a transparently intercepted connection was going. With REDIRECT the kernel
/// rewrote the destination and conntrack remembers the original (`SO_ORIGINAL_DST`);
/// with TPROXY the socket's local address already is the original destination, which is
/// also what conntrack reports — so the local address is the fallback when conntrack
/// knows nothing of the flow.
pub fn original_destination(s: &TcpStream) -> io::Result<SocketAddr> {
    let sock = SockRef::from(s);
    let local = s.local_addr()?;
    // An IPv4 flow accepted on a dual-stack [::] listener has a v4-mapped local address,
    // but conntrack knows it as IPv4.
    let original = match local {
        SocketAddr::V6(v6) if v6.ip().to_ipv4_mapped().is_none() => sock.original_dst_v6(),
        _ => sock.original_dst_v4(),
    };
    match original.ok().and_then(|a| a.as_socket()) {
        Some(dst) => Ok(dst),
        None => Ok(local),
    }
}

/// Whether `ip` is an address of this host: binding to it succeeds only then (without
/// IP_FREEBIND/IP_TRANSPARENT, which plain sockets do not have).
pub fn is_local_ip(ip: std::net::IpAddr) -> bool {
    std::net::TcpListener::bind(SocketAddr::new(ip, 0)).is_ok()
}

/// Binds a listener with `SO_REUSEADDR` (a port whose previous connection sits in
/// TIME_WAIT can be listened on again at once); `transparent` sets IP_TRANSPARENT so
/// TPROXY can deliver connections addressed to other hosts to it.
pub fn bind_listener(
    addr: SocketAddr,
    transparent: bool,
    backlog: i32,
) -> io::Result<tokio::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if transparent {
        match addr {
            SocketAddr::V4(_) => socket.set_ip_transparent_v4(true)?,
            SocketAddr::V6(_) => socket.set_ip_transparent_v6(true)?,
        }
    }
    socket.bind(&addr.into())?;
    socket.listen(backlog)?;
    socket.set_nonblocking(true)?;
    tokio::net::TcpListener::from_std(socket.into())
}

/// Linux `SIOCATMARK` (asm-generic/sockios.h): whether the read pointer is at the
/// urgent mark. (The libc crate does not export it for Linux.)
const SIOCATMARK: libc::c_ulong = 0x8905;

/// Whether the next byte to read is the urgent mark (a Telnet Synch's `IAC`).
#[allow(unsafe_code)]
fn at_urgent_mark(stream: &TcpStream) -> bool {
    use std::os::fd::AsRawFd;
    let mut at_mark: libc::c_int = 0;
    // SAFETY: SIOCATMARK writes one int through the pointer, which points to a live
    // local; the descriptor is owned by `stream` for the duration of the call.
    let r = unsafe { libc::ioctl(stream.as_raw_fd(), SIOCATMARK as _, &mut at_mark) };
    r == 0 && at_mark != 0
}

/// Reads on past a TCP urgent mark after a regular read. A read stops at the mark (RFC
/// 959 §4.1.3 Synch; Python's ftplib sends `ABOR\r\n` with MSG_OOB), and tokio, seeing
/// a short read, assumes the socket is drained and waits for an edge that never comes.
/// So while the socket is at the mark, or the last read filled its buffer, or the buffer
/// ends mid-line, this reads with plain non-blocking reads (which do not depend on
/// tokio's readiness) until the kernel says `WouldBlock` — whatever the buffer ends
/// with: `NOOP\r\n` followed by an urgent `IAC` stalled before this checked the mark.
/// Bounded by `limit` bytes in `buf`.
pub fn drain_past_urgent_mark(
    stream: &TcpStream,
    buf: &mut Vec<u8>,
    limit: usize,
) -> io::Result<()> {
    use std::io::Read;
    let sock = SockRef::from(stream);
    // Zeroed only when a read is needed: this runs after every client read, and a 4 KiB
    // memset per command was a fifth of the control path's instructions.
    let mut chunk: Option<Box<[u8; 4096]>> = None;
    let mut last_full = false;
    while buf.len() <= limit && (last_full || !buf.ends_with(b"\n") || at_urgent_mark(stream)) {
        let chunk = chunk.get_or_insert_with(|| Box::new([0u8; 4096]));
        match (&*sock).read(&mut chunk[..]) {
            // EOF shows up on the next regular read.
            Ok(0) => break,
            Ok(n) => {
                buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
                last_full = n == chunk.len();
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A local resource whose exhaustion makes socket calls fail: ftpgate's own limits,
/// not anything a peer did. A metric label (`ftpgate_local_resource_exhausted_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalResource {
    /// EMFILE: the process's descriptor limit (`RLIMIT_NOFILE`).
    ProcessFds,
    /// ENFILE: the system-wide descriptor table (`fs.file-max`).
    SystemFds,
    /// ENOBUFS / ENOMEM: kernel socket buffers or memory.
    Memory,
}

impl LocalResource {
    /// The exhausted resource behind `e`, if that is what `e` means.
    pub fn of(e: &io::Error) -> Option<LocalResource> {
        match e.raw_os_error()? {
            libc::EMFILE => Some(LocalResource::ProcessFds),
            libc::ENFILE => Some(LocalResource::SystemFds),
            libc::ENOBUFS | libc::ENOMEM => Some(LocalResource::Memory),
            _ => None,
        }
    }

    /// The `resource` label value: `process_fds`, `system_fds` or `memory`.
    pub fn label(self) -> &'static str {
        match self {
            LocalResource::ProcessFds => "process_fds",
            LocalResource::SystemFds => "system_fds",
            LocalResource::Memory => "memory",
        }
    }

    /// Every resource, so each label value is exported (at 0) from the start.
    pub const ALL: [LocalResource; 3] = [
        LocalResource::ProcessFds,
        LocalResource::SystemFds,
        LocalResource::Memory,
    ];
}

impl std::fmt::Display for LocalResource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LocalResource::ProcessFds => "process file-descriptor limit",
            LocalResource::SystemFds => "system file table",
            LocalResource::Memory => "kernel buffers or memory",
        })
    }
}

/// At most one warning per this interval about resource exhaustion: at the limit every
/// connection attempt fails, and a log line per failure would add disk I/O to the
/// overload (the metric counts every one).
const EXHAUSTION_LOG_INTERVAL: Duration = Duration::from_secs(5);

/// Counts one failure for lack of `resource` and logs it, rate-limited process-wide.
pub fn note_exhaustion(
    metrics: &crate::metrics::Metrics,
    resource: LocalResource,
    during: &'static str,
    error: &io::Error,
) {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static EPOCH: OnceLock<std::time::Instant> = OnceLock::new();
    // Milliseconds since EPOCH at which the next warning may go out.
    static NEXT_LOG_MS: AtomicU64 = AtomicU64::new(0);
    static SUPPRESSED: AtomicU64 = AtomicU64::new(0);
    metrics
        .local_resource_exhausted_total
        .with_label_values(&[resource.label()])
        .inc();
    let now = u64::try_from(
        EPOCH
            .get_or_init(std::time::Instant::now)
            .elapsed()
            .as_millis(),
    )
    .unwrap_or(u64::MAX);
    let next = NEXT_LOG_MS.load(Ordering::Relaxed);
    let interval = u64::try_from(EXHAUSTION_LOG_INTERVAL.as_millis()).unwrap_or(u64::MAX);
    if now >= next
        && NEXT_LOG_MS
            .compare_exchange(
                next,
                now.saturating_add(interval),
                Ordering::Relaxed,
                Ordering::Relaxed,
            )
            .is_ok()
    {
        let suppressed = SUPPRESSED.swap(0, Ordering::Relaxed);
        tracing::warn!(
            resource = resource.label(),
            during,
            error = %error,
            suppressed,
            "local resource exhausted ({resource}); refusing work until it frees up"
        );
    } else {
        SUPPRESSED.fetch_add(1, Ordering::Relaxed);
    }
}

/// Delay before retrying `accept` after a resource-exhaustion error: the pending
/// connection stays queued and the listener stays readable, so retrying at once would
/// spin. Doubles from [`ACCEPT_BACKOFF_MIN`] up to [`ACCEPT_BACKOFF_MAX`]; reset on the
/// next successful accept.
pub const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(50);
/// The longest accept backoff.
pub const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Exponential backoff for accept loops (see [`ACCEPT_BACKOFF_MIN`]).
#[derive(Debug, Default)]
pub struct AcceptBackoff {
    current: Option<Duration>,
}

impl AcceptBackoff {
    /// The delay to wait now; the next one is twice as long, up to the maximum.
    pub fn next_delay(&mut self) -> Duration {
        let d = self
            .current
            .map_or(ACCEPT_BACKOFF_MIN, |c| (c * 2).min(ACCEPT_BACKOFF_MAX));
        self.current = Some(d);
        d
    }

    /// Back to [`ACCEPT_BACKOFF_MIN`] after a successful accept.
    pub fn reset(&mut self) {
        self.current = None;
    }

    /// How long an accept loop waits after `e`. Out of descriptors, the connection
    /// stays queued and the listener readable, so retrying at once would spin: sessions
    /// ending free descriptors, so back off (doubling up to the maximum) until then,
    /// counting and logging the exhaustion. Anything else (ECONNABORTED and the like)
    /// concerns one connection only: a short pause.
    pub fn after_error(
        &mut self,
        e: &io::Error,
        metrics: &crate::metrics::Metrics,
        during: &'static str,
    ) -> Duration {
        match LocalResource::of(e) {
            Some(resource) => {
                note_exhaustion(metrics, resource, during, e);
                self.next_delay()
            }
            None => {
                tracing::debug!(error = %e, during, "accept failed");
                ACCEPT_BACKOFF_MIN
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_errors_are_classified() {
        let of = |n| LocalResource::of(&io::Error::from_raw_os_error(n));
        assert_eq!(of(libc::EMFILE), Some(LocalResource::ProcessFds));
        assert_eq!(of(libc::ENFILE), Some(LocalResource::SystemFds));
        assert_eq!(of(libc::ENOBUFS), Some(LocalResource::Memory));
        assert_eq!(of(libc::ENOMEM), Some(LocalResource::Memory));
        assert_eq!(of(libc::ECONNREFUSED), None);
        assert_eq!(of(libc::ETIMEDOUT), None);
        assert_eq!(
            LocalResource::of(&io::Error::new(io::ErrorKind::TimedOut, "x")),
            None
        );
    }

    #[test]
    fn every_exhaustion_is_counted_even_when_the_log_is_rate_limited() {
        let metrics = crate::metrics::Metrics::new();
        let e = io::Error::from_raw_os_error(libc::EMFILE);
        for _ in 0..3 {
            note_exhaustion(&metrics, LocalResource::ProcessFds, "test", &e);
        }
        let count = |r: LocalResource| {
            metrics
                .local_resource_exhausted_total
                .with_label_values(&[r.label()])
                .get()
        };
        assert_eq!(count(LocalResource::ProcessFds), 3);
        assert_eq!(count(LocalResource::Memory), 0);
    }

    #[test]
    fn accept_backoff_doubles_to_the_cap_and_resets() {
        let mut b = AcceptBackoff::default();
        let seen: Vec<Duration> = (0..8).map(|_| b.next_delay()).collect();
        assert_eq!(seen[0], ACCEPT_BACKOFF_MIN);
        assert_eq!(seen[1], ACCEPT_BACKOFF_MIN * 2);
        assert!(seen.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(*seen.last().unwrap(), ACCEPT_BACKOFF_MAX);
        b.reset();
        assert_eq!(b.next_delay(), ACCEPT_BACKOFF_MIN);
    }
}
