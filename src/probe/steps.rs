//! The probe's I/O: runs every step against the server and records [`Facts`].

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};

use crate::protocol::addr::{find_epsv_port, find_pasv_tuple, format_eprt_arg, format_pasv_tuple};

use super::conn::{bounded, Control, DataStream, Io};
use super::facts::*;
use super::target::{Security, Target};
use super::tls::TlsClient;

/// What to probe and how.
pub struct Options {
    /// The server URL.
    pub target: Target,
    /// User name: `--user`, else the URL's, else `anonymous`.
    pub user: String,
    /// Password: `--password-file`, else the URL's, else `ftpgate-probe@`.
    pub password: String,
    /// Bound on every single wait (`--timeout`).
    pub timeout: Duration,
    /// Data modes to check, in order, without repeats (`--modes`).
    pub modes: Vec<DataMode>,
    /// A file to download in every mode (`--retr`).
    pub retr: Option<String>,
    /// Upload (then delete) a test file in every mode (`--stor`).
    pub stor: bool,
    /// Size of the `--stor` test file, in bytes.
    pub stor_size: usize,
    /// Name of the test file, in the URL's directory (`--scratch`).
    pub scratch: String,
    /// Idle time for the idle check (`--idle-check`); `None`: no idle check.
    pub idle_check: Option<Duration>,
    /// Extra runs of the idle-check bisection (`--idle-rounds`).
    pub idle_rounds: u32,
    /// Run the TLS shutdown check (`--tls-eof-check`).
    pub tls_eof_check: bool,
    /// Address to announce in `PORT`/`EPRT`; `None`: the control connection's local one.
    pub active_address: Option<IpAddr>,
    /// Print progress lines on stderr (off with `--quiet`).
    pub progress: bool,
}

impl Options {
    fn progress(&self, what: &str) {
        if self.progress {
            eprintln!("probe: {what}");
        }
    }
}

/// A logged-in control connection.
struct Session {
    ctl: Control,
    addrs: ControlAddrs,
    /// Data connections use TLS (`PROT P` accepted).
    data_tls: bool,
}

/// Runs the whole probe.
pub async fn run(opts: &Options, tls: Option<Arc<TlsClient>>) -> Facts {
    let mut facts = Facts {
        url: opts.target.redacted(),
        security: Some(opts.target.security),
        ..Facts::default()
    };
    opts.progress(&format!("resolving {}", opts.target.host));
    let start = Instant::now();
    let resolved = bounded(
        opts.timeout,
        tokio::net::lookup_host((opts.target.host.as_str(), opts.target.port)),
    )
    .await
    .map(|it| it.collect::<Vec<SocketAddr>>());
    facts.resolve = Some(Timed::new(
        start.elapsed(),
        resolved
            .as_ref()
            .map(|v| v.iter().map(SocketAddr::ip).collect())
            .map_err(Clone::clone),
    ));
    let Some(addr) = resolved.ok().and_then(|v| v.first().copied()) else {
        return facts;
    };
    let Some(mut sess) = establish(opts, addr, tls.as_deref(), &mut facts, true).await else {
        return facts;
    };
    for &mode in &opts.modes {
        if mode == DataMode::Port && sess.addrs.local.is_ipv6() {
            // PORT carries only IPv4 addresses (RFC 959); EPRT covers IPv6.
            opts.progress("PORT skipped: IPv6 control connection");
            continue;
        }
        if sess.ctl.desynced {
            // A reply may still be on its way: continue on a fresh session.
            let mut scratch = Facts::default();
            match establish(opts, addr, tls.as_deref(), &mut scratch, false).await {
                Some(s) => sess = s,
                None => break,
            }
        }
        opts.progress(&format!("{} data connection", mode.verb()));
        let m = probe_mode(opts, &mut sess, mode, tls.as_deref()).await;
        facts.modes.push(m);
    }
    let _ = sess.ctl.cmd("QUIT").await;

    let working = facts
        .modes
        .iter()
        .find(|m| m.mode.is_passive() && m.list.as_ref().is_some_and(|l| l.value.succeeded()))
        .map(|m| m.mode);
    if let Some(limit) = opts.idle_check {
        facts.idle = Some(idle_check(opts, addr, tls.as_deref(), working, limit).await);
    }
    if opts.tls_eof_check {
        facts.tls_eof = Some(tls_eof_check(opts, addr, tls.as_deref(), working).await);
    }
    facts
}

/// Connect, greet, (TLS,) log in and enter the URL's directory, recording
/// each step into `facts`. `None` when a step failed.
async fn establish(
    opts: &Options,
    addr: SocketAddr,
    tls: Option<&TlsClient>,
    facts: &mut Facts,
    full: bool,
) -> Option<Session> {
    let t = opts.timeout;
    opts.progress(&format!("connecting to {addr}"));
    let start = Instant::now();
    let tcp = bounded(t, TcpStream::connect(addr)).await;
    let tcp = tcp.and_then(|s| {
        let local = s.local_addr().map_err(|e| IoFailure::from_io(&e))?;
        Ok((s, ControlAddrs { local, peer: addr }))
    });
    facts.connect = Some(Timed::new(
        start.elapsed(),
        tcp.as_ref().map(|(_, a)| *a).map_err(Clone::clone),
    ));
    let (tcp, addrs) = tcp.ok()?;
    let mut io: Box<dyn Io> = Box::new(tcp);
    let mut tls_facts = None;
    if let (Security::Implicit, Some(tls)) = (opts.target.security, tls) {
        opts.progress("TLS handshake");
        let start = Instant::now();
        let hs = tls.control(io, t).await;
        let (stream, result) = match hs {
            Ok((s, session)) => (Some(s), Ok(session)),
            Err(e) => (None, Err(e)),
        };
        let failed = result.is_err();
        tls_facts = Some(Timed::new(
            start.elapsed(),
            TlsFacts {
                auth: None,
                handshake: Some(result),
            },
        ));
        if failed {
            facts.tls = tls_facts;
            return None;
        }
        io = stream?;
    }
    let mut ctl = Control::new(io, t);
    opts.progress("waiting for the banner");
    let start = Instant::now();
    let banner = ctl.reply().await;
    let ok = matches!(&banner, Ok(r) if r.code == 220);
    facts.banner = Some(Timed::new(start.elapsed(), banner));
    if !ok {
        facts.tls = tls_facts;
        return None;
    }
    if full {
        opts.progress("FEAT");
        let start = Instant::now();
        let feat = ctl.cmd("FEAT").await;
        facts.feat = Some(Timed::new(start.elapsed(), feat));
    }
    if let (Security::Explicit, Some(tls)) = (opts.target.security, tls) {
        opts.progress("AUTH TLS");
        let start = Instant::now();
        let auth = ctl.cmd("AUTH TLS").await;
        let accepted = matches!(&auth, Ok(r) if r.code == 234);
        let mut f = TlsFacts {
            auth: Some(auth),
            handshake: None,
        };
        if !accepted {
            facts.tls = Some(Timed::new(start.elapsed(), f));
            return None;
        }
        let hs = match ctl.into_io() {
            Ok(io) => tls.control(io, t).await,
            Err(e) => Err(e),
        };
        let (stream, result) = match hs {
            Ok((s, session)) => (Some(s), Ok(session)),
            Err(e) => (None, Err(e)),
        };
        f.handshake = Some(result);
        facts.tls = Some(Timed::new(start.elapsed(), f));
        ctl = Control::new(stream?, t);
    } else if tls_facts.is_some() {
        facts.tls = tls_facts;
    } else if let Some(Timed {
        value: Ok(feat), ..
    }) = &facts.feat
    {
        if feat.text.to_ascii_uppercase().contains("AUTH TLS") {
            // ftp:// to a server offering TLS: say so, do not upgrade.
            facts.tls = Some(Timed::new(
                Duration::ZERO,
                TlsFacts {
                    auth: None,
                    handshake: None,
                },
            ));
        }
    }
    opts.progress(&format!("logging in as {}", opts.user));
    let start = Instant::now();
    let mut login = ctl.cmd(&format!("USER {}", opts.user)).await;
    if matches!(&login, Ok(r) if r.code == 331 || r.code == 332) {
        login = ctl.cmd(&format!("PASS {}", opts.password)).await;
    }
    let ok = matches!(&login, Ok(r) if r.code / 100 == 2);
    facts.login = Some(Timed::new(start.elapsed(), login));
    if !ok {
        return None;
    }
    let mut data_tls = false;
    if opts.target.security != Security::Plain {
        let pbsz = ctl.cmd("PBSZ 0").await;
        let prot = ctl.cmd("PROT P").await;
        data_tls = matches!((&pbsz, &prot), (Ok(_), Ok(r)) if r.code / 100 == 2);
    }
    let dir = opts
        .target
        .path
        .rsplit_once('/')
        .map(|(d, _)| d)
        .unwrap_or_default();
    if !dir.is_empty() {
        let start = Instant::now();
        let cwd = ctl.cmd(&format!("CWD {dir}")).await;
        let ok = matches!(&cwd, Ok(r) if r.code / 100 == 2);
        facts.cwd = Some(Timed::new(start.elapsed(), cwd));
        if !ok {
            return None;
        }
    }
    if full {
        let start = Instant::now();
        let syst = ctl.cmd("SYST").await;
        facts.syst = Some(Timed::new(start.elapsed(), syst));
    }
    let _ = ctl.cmd("TYPE I").await;
    Some(Session {
        ctl,
        addrs,
        data_tls,
    })
}

/// A data connection about to be made.
enum Pending {
    /// Passive: connect to the announced address.
    Connect(SocketAddr),
    /// Active: the server connects to this listener.
    Listen(TcpListener),
}

struct Prepared {
    reply: Timed<Outcome<Reply>>,
    announced: Option<Result<SocketAddr, String>>,
    pending: Option<Pending>,
}

/// Sends EPSV/PASV/EPRT/PORT and reads the answer.
async fn prepare(opts: &Options, sess: &mut Session, mode: DataMode) -> Prepared {
    let start = Instant::now();
    if mode.is_passive() {
        let reply = sess.ctl.cmd(mode.verb()).await;
        let mut announced = None;
        if let Ok(r) = &reply {
            if r.code / 100 == 2 {
                let line = r.text.lines().last().unwrap_or_default().as_bytes();
                announced = Some(match mode {
                    DataMode::Pasv => find_pasv_tuple(line)
                        .map(|t| SocketAddr::V4(t.addr))
                        .map_err(|e| e.to_string()),
                    _ => find_epsv_port(line)
                        .map(|p| SocketAddr::new(sess.addrs.peer.ip(), p.port))
                        .map_err(|e| e.to_string()),
                });
            }
        }
        let pending = match &announced {
            Some(Ok(a)) => Some(Pending::Connect(*a)),
            _ => None,
        };
        return Prepared {
            reply: Timed::new(start.elapsed(), reply),
            announced,
            pending,
        };
    }
    let ip = opts.active_address.unwrap_or(sess.addrs.local.ip());
    let listener = match TcpListener::bind(SocketAddr::new(sess.addrs.local.ip(), 0)).await {
        Ok(l) => l,
        Err(e) => {
            return Prepared {
                reply: Timed::new(start.elapsed(), Err(IoFailure::from_io(&e))),
                announced: None,
                pending: None,
            }
        }
    };
    let port = listener.local_addr().map(|a| a.port()).unwrap_or_default();
    let target = SocketAddr::new(ip, port);
    let arg = match (mode, target) {
        (DataMode::Port, SocketAddr::V4(v4)) => format_pasv_tuple(v4),
        (DataMode::Port, SocketAddr::V6(_)) => {
            return Prepared {
                reply: Timed::new(
                    start.elapsed(),
                    Err(IoFailure::Other {
                        detail: "PORT cannot carry an IPv6 address".into(),
                    }),
                ),
                announced: None,
                pending: None,
            }
        }
        _ => format_eprt_arg(target),
    };
    let reply = sess.ctl.cmd(&format!("{} {arg}", mode.verb())).await;
    Prepared {
        reply: Timed::new(start.elapsed(), reply),
        announced: Some(Ok(target)),
        pending: Some(Pending::Listen(listener)),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    Download,
    /// Upload `n` bytes, ending with or without TLS close_notify.
    Upload {
        n: usize,
        close_notify: bool,
    },
}

/// The result of opening a data connection and running one command over it.
struct Run {
    data: Timed<Outcome<()>>,
    fallback: Option<Timed<Outcome<()>>>,
    transfer: Option<Timed<TransferFacts>>,
}

async fn open_and_transfer(
    opts: &Options,
    sess: &mut Session,
    pending: Pending,
    command: &str,
    dir: Direction,
    tls: Option<&TlsClient>,
) -> Run {
    let t = opts.timeout;
    let start = Instant::now();
    match pending {
        Pending::Connect(addr) => {
            let tcp = bounded(t, TcpStream::connect(addr)).await;
            let data = Timed::new(
                start.elapsed(),
                tcp.as_ref().map(|_| ()).map_err(Clone::clone),
            );
            let tcp = match tcp {
                Ok(s) => s,
                Err(_) => {
                    let mut fallback = None;
                    if addr.ip() != sess.addrs.peer.ip() {
                        let start = Instant::now();
                        let alt = SocketAddr::new(sess.addrs.peer.ip(), addr.port());
                        let r = bounded(t, TcpStream::connect(alt)).await.map(|_| ());
                        fallback = Some(Timed::new(start.elapsed(), r));
                    }
                    return Run {
                        data,
                        fallback,
                        transfer: None,
                    };
                }
            };
            let started = Instant::now();
            let first = sess.ctl.cmd(command).await;
            let transfer = finish_transfer(opts, sess, command, first, Some(tcp), dir, tls).await;
            Run {
                data,
                fallback: None,
                transfer: Some(Timed::new(started.elapsed(), transfer)),
            }
        }
        Pending::Listen(listener) => {
            let started = Instant::now();
            if let Err(e) = sess.ctl.send(command).await {
                return Run {
                    data: Timed::new(start.elapsed(), Err(e)),
                    fallback: None,
                    transfer: None,
                };
            }
            // The server connects before or after its first reply (vsftpd: before).
            let mut first = None;
            let accepted = tokio::select! {
                a = bounded(t, listener.accept()) => a,
                r = sess.ctl.reply() => {
                    let positive = matches!(&r, Ok(rep) if rep.code / 100 == 1);
                    first = Some(r);
                    if positive {
                        bounded(t, listener.accept()).await
                    } else {
                        Err(IoFailure::Other { detail: "the server answered without connecting".into() })
                    }
                }
            };
            let data = Timed::new(
                start.elapsed(),
                accepted.as_ref().map(|_| ()).map_err(Clone::clone),
            );
            let stream = accepted.ok().map(|(tcp, _)| tcp);
            let first = match first {
                Some(r) => r,
                None => sess.ctl.reply().await,
            };
            let transfer = finish_transfer(opts, sess, command, first, stream, dir, tls).await;
            Run {
                data,
                fallback: None,
                transfer: Some(Timed::new(started.elapsed(), transfer)),
            }
        }
    }
}

async fn wrap(
    sess: &Session,
    tls: Option<&TlsClient>,
    tcp: TcpStream,
    t: Duration,
) -> Outcome<DataStream> {
    match (sess.data_tls, tls) {
        (true, Some(tls)) => Ok(DataStream::Tls(Box::new(tls.data(tcp, t).await?))),
        _ => Ok(DataStream::Plain(tcp)),
    }
}

/// After the command's first reply: move the data, then read the final reply.
async fn finish_transfer(
    opts: &Options,
    sess: &mut Session,
    command: &str,
    first: Outcome<Reply>,
    stream: Option<TcpStream>,
    dir: Direction,
    tls: Option<&TlsClient>,
) -> TransferFacts {
    let t = opts.timeout;
    let mut facts = TransferFacts {
        command: command.to_owned(),
        first,
        bytes: 0,
        data_elapsed: Duration::ZERO,
        data_error: None,
        last: None,
    };
    let preliminary = matches!(&facts.first, Ok(r) if r.code / 100 == 1);
    let Some(tcp) = stream else {
        if preliminary {
            facts.data_error = Some(IoFailure::Other {
                detail: "no data connection".into(),
            });
            facts.last = Some(sess.ctl.reply().await);
        }
        return facts;
    };
    if !preliminary {
        return facts;
    }
    // FTPS servers (vsftpd) start the data TLS handshake after their 150.
    let mut stream = match wrap(sess, tls, tcp, t).await {
        Ok(s) => s,
        Err(e) => {
            facts.data_error = Some(e);
            facts.last = Some(sess.ctl.reply().await);
            return facts;
        }
    };
    let start = Instant::now();
    let moved = match dir {
        Direction::Download => {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match bounded(t, stream.read(&mut buf)).await {
                    Ok(0) => break Ok(()),
                    Ok(n) => facts.bytes += n as u64,
                    Err(e) => break Err(e),
                }
            }
        }
        Direction::Upload { n, close_notify } => {
            let chunk = vec![b'x'; 16 * 1024];
            let mut left = n;
            let mut result = Ok(());
            while left > 0 && result.is_ok() {
                let k = left.min(chunk.len());
                result = bounded(t, stream.write_all(chunk.get(..k).unwrap_or_default())).await;
                if result.is_ok() {
                    facts.bytes += k as u64;
                    left -= k;
                }
            }
            match result {
                Ok(()) => finish(&mut stream, close_notify, t).await,
                Err(e) => Err(e),
            }
        }
    };
    facts.data_elapsed = start.elapsed();
    facts.data_error = moved.err();
    drop(stream);
    facts.last = Some(sess.ctl.reply().await);
    facts
}

async fn probe_mode(
    opts: &Options,
    sess: &mut Session,
    mode: DataMode,
    tls: Option<&TlsClient>,
) -> ModeFacts {
    let p = prepare(opts, sess, mode).await;
    let mut m = ModeFacts {
        mode,
        control: sess.addrs,
        reply: p.reply,
        announced: p.announced,
        data: None,
        fallback: None,
        list: None,
        transfers: Vec::new(),
    };
    let ok = matches!(&m.reply.value, Ok(r) if r.code / 100 == 2);
    let Some(pending) = p.pending.filter(|_| ok) else {
        return m;
    };
    let run = open_and_transfer(opts, sess, pending, "LIST", Direction::Download, tls).await;
    m.data = Some(run.data);
    m.fallback = run.fallback;
    m.list = run.transfer;
    if !m.list.as_ref().is_some_and(|l| l.value.succeeded()) {
        return m;
    }
    let mut extra = Vec::new();
    if let Some(path) = &opts.retr {
        extra.push((format!("RETR {path}"), Direction::Download));
    }
    if opts.stor {
        extra.push((
            format!("STOR {}", opts.scratch),
            Direction::Upload {
                n: opts.stor_size,
                close_notify: true,
            },
        ));
    }
    for (command, dir) in extra {
        let p = prepare(opts, sess, mode).await;
        let Some(pending) = p
            .pending
            .filter(|_| matches!(&p.reply.value, Ok(r) if r.code / 100 == 2))
        else {
            break;
        };
        opts.progress(&format!("{} over {}", command, mode.verb()));
        let run = open_and_transfer(opts, sess, pending, &command, dir, tls).await;
        let Some(transfer) = run.transfer else { break };
        let ok = transfer.value.succeeded();
        m.transfers.push(transfer);
        if !ok {
            break;
        }
    }
    if opts.stor {
        let _ = sess.ctl.cmd(&format!("DELE {}", opts.scratch)).await;
    }
    m
}

/// One fresh session uploading `n` bytes over `mode` (the TLS shutdown check)
/// or pacing an upload for `idle` (the idle check); returns the final reply.
async fn scratch_upload(
    opts: &Options,
    addr: SocketAddr,
    tls: Option<&TlsClient>,
    mode: DataMode,
    upload: Upload,
) -> Result<Outcome<Reply>, String> {
    let mut scratch = Facts::default();
    let Some(mut sess) = establish(opts, addr, tls, &mut scratch, false).await else {
        let why = super::diagnose::diagnose(&scratch)
            .into_iter()
            .find(|c| c.status == super::diagnose::Status::Fail)
            .map(|c| c.reason)
            .unwrap_or_else(|| "could not log in".into());
        return Err(why);
    };
    let p = prepare(opts, &mut sess, mode).await;
    let Some(Pending::Connect(data_addr)) = p.pending else {
        return Err(format!("{} failed", mode.verb()));
    };
    let t = opts.timeout;
    let tcp = bounded(t, TcpStream::connect(data_addr))
        .await
        .map_err(|e| format!("data connection: {e}"))?;
    let command = format!("STOR {}", opts.scratch);
    match sess.ctl.cmd(&command).await {
        Ok(r) if r.code / 100 == 1 => {}
        Ok(r) => return Err(format!("{command}: {}", r.first_line())),
        Err(e) => return Err(format!("{command}: {e}")),
    }
    let mut stream = wrap(&sess, tls, tcp, t)
        .await
        .map_err(|e| format!("data connection: {e}"))?;
    let chunk = [b'x'; 1024];
    let sent = match upload {
        Upload::Paced(idle) => {
            let start = Instant::now();
            let mut r = Ok(());
            while start.elapsed() < idle && r.is_ok() {
                r = bounded(t, stream.write_all(&chunk)).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            match r {
                Ok(()) => finish(&mut stream, true, t).await,
                Err(e) => Err(e),
            }
        }
        Upload::Once { close_notify } => {
            let mut r = Ok(());
            for _ in 0..64 {
                if r.is_ok() {
                    r = bounded(t, stream.write_all(&chunk)).await;
                }
            }
            match r {
                Ok(()) => finish(&mut stream, close_notify, t).await,
                Err(e) => Err(e),
            }
        }
    };
    drop(stream);
    let reply = sess.ctl.reply().await;
    if let Err(e) = sent {
        if reply.is_err() {
            return Ok(Err(e));
        }
    }
    if reply.is_ok() {
        let _ = sess.ctl.cmd(&format!("DELE {}", opts.scratch)).await;
        let _ = sess.ctl.cmd("QUIT").await;
    }
    Ok(reply)
}

/// Ends an upload and waits (bounded) for the server to close its side.
async fn finish(stream: &mut DataStream, close_notify: bool, t: Duration) -> Outcome<()> {
    bounded(t, stream.finish(close_notify)).await?;
    let _ = tokio::time::timeout(t, stream.drain()).await;
    Ok(())
}

#[derive(Clone, Copy)]
enum Upload {
    Paced(Duration),
    Once { close_notify: bool },
}

/// Whether the final reply of a transfer still arrives after the control
/// connection idled for `limit`; on failure, bisects over `idle_rounds` more
/// runs for the idle time at which it breaks.
async fn idle_check(
    opts: &Options,
    addr: SocketAddr,
    tls: Option<&TlsClient>,
    mode: Option<DataMode>,
    limit: Duration,
) -> IdleFacts {
    let mut facts = IdleFacts {
        requested: limit,
        runs: Vec::new(),
        setup_error: None,
    };
    let Some(mode) = mode else {
        facts.setup_error = Some("no passive mode could list the directory".into());
        return facts;
    };
    let (mut good, mut bad) = (Duration::ZERO, limit);
    let mut idle = limit;
    for round in 0..=opts.idle_rounds {
        opts.progress(&format!(
            "idle check: upload keeping the control connection idle for {:.1} s",
            idle.as_secs_f64()
        ));
        let result = match scratch_upload(opts, addr, tls, mode, Upload::Paced(idle)).await {
            Ok(r) => r,
            Err(e) => {
                facts.setup_error = Some(e);
                return facts;
            }
        };
        let run = IdleRun { idle, result };
        let ok = run.ok();
        facts.runs.push(run);
        if round == 0 && ok {
            break;
        }
        if ok {
            good = idle;
        } else {
            bad = idle;
        }
        idle = (good + bad) / 2;
    }
    facts
}

async fn tls_eof_check(
    opts: &Options,
    addr: SocketAddr,
    tls: Option<&TlsClient>,
    mode: Option<DataMode>,
) -> TlsEofFacts {
    let mut facts = TlsEofFacts {
        with_close_notify: Err(IoFailure::Other {
            detail: "not run".into(),
        }),
        without_close_notify: Err(IoFailure::Other {
            detail: "not run".into(),
        }),
        setup_error: None,
    };
    if opts.target.security == Security::Plain {
        facts.setup_error = Some("needs an ftpes:// or ftps:// URL".into());
        return facts;
    }
    let Some(mode) = mode else {
        facts.setup_error = Some("no passive mode could list the directory".into());
        return facts;
    };
    for close_notify in [true, false] {
        opts.progress(&format!(
            "TLS shutdown check: upload ending {} close_notify",
            if close_notify { "with" } else { "without" }
        ));
        match scratch_upload(opts, addr, tls, mode, Upload::Once { close_notify }).await {
            Ok(r) if close_notify => facts.with_close_notify = r,
            Ok(r) => facts.without_close_notify = r,
            Err(e) => {
                facts.setup_error = Some(e);
                return facts;
            }
        }
    }
    facts
}
