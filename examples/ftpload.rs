//! `ftpload`: an FTP load generator for ftpgate's benchmarks (`bench/run.sh`).
//!
//! Speaks real FTP (EPSV, binary) to any server or proxy and prints one
//! machine-readable `RESULT key=value ...` line per run on stdout (diagnostics on
//! stderr):
//!
//! ```text
//! ftpload --addr 127.0.0.1:2121 download 2G --file big.bin      # RETR, bytes/s, byte count checked
//! ftpload --addr 127.0.0.1:2121 upload 2G --file up/x.bin       # STOR, bytes/s, SIZE checked
//! ftpload --addr 127.0.0.1:2121 sessions 2000 32 --file 1m.bin  # login, EPSV, RETR, QUIT; sessions/s
//! ftpload --addr 127.0.0.1:2121 idle 9000 --hold 5              # N logged-in sessions held, then NOOP each
//! ftpload --addr 127.0.0.1:2121 noop-latency 20000              # NOOP round trips, p50/p99 in µs
//! ftpload serve 127.0.0.1:2999                                   # control-only stub server (for `idle`)
//! ```
//!
//! It raises its own `RLIMIT_NOFILE` soft limit to the hard limit at start.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use clap::{Parser, Subcommand};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

#[derive(Parser)]
#[command(about = "FTP load generator for ftpgate benchmarks")]
struct Args {
    /// FTP server or proxy control address.
    #[arg(long, default_value = "127.0.0.1:21")]
    addr: SocketAddr,
    #[arg(long, default_value = "anonymous")]
    user: String,
    #[arg(long, default_value = "ftpload@")]
    pass: String,
    /// Per-operation timeout (a stuck session counts as a failure).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// One session: RETR `file`, which must be SIZE bytes long (K/M/G suffixes).
    Download {
        #[arg(value_parser = parse_size)]
        size: u64,
        #[arg(long, default_value = "big.bin")]
        file: String,
    },
    /// One session: STOR SIZE bytes to `file`, then check its SIZE.
    Upload {
        #[arg(value_parser = parse_size)]
        size: u64,
        #[arg(long, default_value = "upload.bin")]
        file: String,
    },
    /// N short sessions, CONCURRENCY at a time: login, TYPE I, EPSV, RETR `file`, QUIT.
    Sessions {
        n: u64,
        concurrency: usize,
        #[arg(long, default_value = "1m.bin")]
        file: String,
        /// Expected size of `file` (K/M/G suffixes).
        #[arg(long, default_value = "1M", value_parser = parse_size)]
        size: u64,
    },
    /// Opens N logged-in sessions, prints `READY`, holds them, then NOOPs each once.
    Idle {
        n: usize,
        /// Seconds to hold after `READY`.
        #[arg(long, default_value_t = 5)]
        hold: u64,
        /// Logins in flight at once while opening.
        #[arg(long, default_value_t = 64)]
        ramp: usize,
    },
    /// One session: COUNT NOOP round trips (after 200 warm-up ones).
    NoopLatency { count: usize },
    /// A control-channel-only FTP stub (220/331/230/200/221) for `idle` at a scale
    /// a forking daemon would struggle with.
    Serve { listen: SocketAddr },
}

fn parse_size(s: &str) -> Result<u64, String> {
    let (num, mult) = match s.as_bytes().last() {
        Some(b'K' | b'k') => (&s[..s.len() - 1], 1u64 << 10),
        Some(b'M' | b'm') => (&s[..s.len() - 1], 1 << 20),
        Some(b'G' | b'g') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    num.parse::<u64>()
        .map(|n| n * mult)
        .map_err(|e| format!("bad size {s:?}: {e}"))
}

/// Soft `RLIMIT_NOFILE` up to the hard limit: `idle 9000` needs 9 000+ descriptors.
#[allow(unsafe_code)]
fn raise_nofile() -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one `rlimit` through a valid, exclusive pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    lim.rlim_cur = lim.rlim_max;
    // SAFETY: setrlimit only reads the `rlimit` behind a valid pointer.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(lim.rlim_cur)
}

/// A control connection.
struct Ctrl {
    io: BufReader<TcpStream>,
    peer: SocketAddr,
    line: String,
    timeout: Duration,
}

impl Ctrl {
    async fn connect(addr: SocketAddr, timeout: Duration) -> anyhow::Result<Ctrl> {
        let s = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| anyhow!("connect timeout"))??;
        s.set_nodelay(true)?;
        let mut c = Ctrl {
            io: BufReader::with_capacity(4096, s),
            peer: addr,
            line: String::new(),
            timeout,
        };
        c.expect(2).await.context("banner")?;
        Ok(c)
    }

    /// Reads one complete reply (RFC 959 §4.2 multi-line aware); returns its code.
    async fn reply(&mut self) -> anyhow::Result<u16> {
        let mut code: Option<u16> = None;
        loop {
            self.line.clear();
            let n = tokio::time::timeout(self.timeout, self.io.read_line(&mut self.line))
                .await
                .map_err(|_| anyhow!("reply timeout"))??;
            if n == 0 {
                bail!("control connection closed");
            }
            let b = self.line.as_bytes();
            let this = (b.len() >= 4 && b[..3].iter().all(u8::is_ascii_digit)).then(|| {
                u16::from(b[0] - b'0') * 100 + u16::from(b[1] - b'0') * 10 + u16::from(b[2] - b'0')
            });
            match (code, this) {
                (None, Some(c)) if b[3] == b'-' => code = Some(c),
                (None, Some(c)) => return Ok(c),
                (Some(c), Some(t)) if t == c && b[3] == b' ' => return Ok(c),
                (None, None) => bail!("malformed reply {:?}", self.line),
                _ => {}
            }
        }
    }

    /// Reads a reply and checks its first digit.
    async fn expect(&mut self, class: u16) -> anyhow::Result<u16> {
        let c = self.reply().await?;
        if c / 100 != class {
            bail!("expected {class}xx, got {:?}", self.line.trim_end());
        }
        Ok(c)
    }

    async fn send(&mut self, cmd: &str) -> anyhow::Result<()> {
        let s = self.io.get_mut();
        s.write_all(cmd.as_bytes()).await?;
        s.write_all(b"\r\n").await?;
        Ok(())
    }

    async fn cmd(&mut self, cmd: &str, class: u16) -> anyhow::Result<u16> {
        self.send(cmd).await?;
        self.expect(class)
            .await
            .with_context(|| cmd.split(' ').next().unwrap_or(cmd).to_string())
    }

    async fn login(&mut self, user: &str, pass: &str) -> anyhow::Result<()> {
        self.send(&format!("USER {user}")).await?;
        match self.reply().await? {
            230 => return Ok(()),
            331 => {}
            _ => bail!("USER: {:?}", self.line.trim_end()),
        }
        self.cmd(&format!("PASS {pass}"), 2).await?;
        Ok(())
    }

    /// EPSV, then connects to the announced port on the control peer's address.
    async fn epsv(&mut self) -> anyhow::Result<TcpStream> {
        self.cmd("EPSV", 2).await?;
        // 229 Entering Extended Passive Mode (|||port|)
        let l = &self.line;
        let open = l.find('(').ok_or_else(|| anyhow!("bad 229 {l:?}"))?;
        let inner = &l[open + 1..];
        let d = inner
            .chars()
            .next()
            .ok_or_else(|| anyhow!("bad 229 {l:?}"))?;
        let port: u16 = inner
            .split(d)
            .nth(3)
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| anyhow!("bad 229 {l:?}"))?;
        let addr = SocketAddr::new(self.peer.ip(), port);
        let s = tokio::time::timeout(self.timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| anyhow!("data connect timeout"))??;
        Ok(s)
    }
}

async fn open_session(args: &Args) -> anyhow::Result<Ctrl> {
    let mut c = Ctrl::connect(args.addr, args.timeout).await?;
    c.login(&args.user, &args.pass).await?;
    c.cmd("TYPE I", 2).await?;
    Ok(c)
}

/// RETR `file` and count the bytes; returns the count.
async fn retr(c: &mut Ctrl, file: &str, buf: &mut [u8]) -> anyhow::Result<u64> {
    let mut data = c.epsv().await?;
    c.cmd(&format!("RETR {file}"), 1).await?;
    let mut n = 0u64;
    loop {
        let k = tokio::time::timeout(c.timeout, data.read(buf))
            .await
            .map_err(|_| anyhow!("data read timeout"))??;
        if k == 0 {
            break;
        }
        n += k as u64;
    }
    drop(data);
    c.expect(2).await.context("RETR final reply")?;
    Ok(n)
}

async fn download(args: &Args, size: u64, file: &str) -> anyhow::Result<()> {
    let mut c = open_session(args).await?;
    let mut buf = vec![0u8; 1 << 20];
    let t = Instant::now();
    let n = retr(&mut c, file, &mut buf).await?;
    let secs = t.elapsed().as_secs_f64();
    let _ = c.cmd("QUIT", 2).await;
    if n != size {
        bail!("downloaded {n} bytes, expected {size}");
    }
    println!(
        "RESULT mode=download bytes={n} secs={secs:.4} bytes_per_sec={:.0}",
        n as f64 / secs
    );
    Ok(())
}

async fn upload(args: &Args, size: u64, file: &str) -> anyhow::Result<()> {
    let mut c = open_session(args).await?;
    let chunk: Vec<u8> = (0..1u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let t = Instant::now();
    let mut data = c.epsv().await?;
    c.cmd(&format!("STOR {file}"), 1).await?;
    let mut left = size;
    while left > 0 {
        let k = left.min(chunk.len() as u64) as usize;
        tokio::time::timeout(c.timeout, data.write_all(&chunk[..k]))
            .await
            .map_err(|_| anyhow!("data write timeout"))??;
        left -= k as u64;
    }
    data.shutdown().await?;
    drop(data);
    c.expect(2).await.context("STOR final reply")?;
    let secs = t.elapsed().as_secs_f64();
    c.cmd(&format!("SIZE {file}"), 2).await?;
    let stored: u64 = c.line[4..].trim().parse().context("SIZE reply")?;
    let _ = c.cmd("QUIT", 2).await;
    if stored != size {
        bail!("server stored {stored} bytes, sent {size}");
    }
    println!(
        "RESULT mode=upload bytes={size} secs={secs:.4} bytes_per_sec={:.0}",
        size as f64 / secs
    );
    Ok(())
}

async fn short_session(args: &Args, file: &str, size: u64, buf: &mut [u8]) -> anyhow::Result<()> {
    let mut c = open_session(args).await?;
    let n = retr(&mut c, file, buf).await?;
    if n != size {
        bail!("RETR gave {n} bytes, expected {size}");
    }
    c.cmd("QUIT", 2).await?;
    Ok(())
}

async fn sessions(
    args: Arc<Args>,
    n: u64,
    conc: usize,
    file: String,
    size: u64,
) -> anyhow::Result<()> {
    let next = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let file = Arc::new(file);
    let t = Instant::now();
    let workers: Vec<_> = (0..conc)
        .map(|_| {
            let (args, next, failed, file) =
                (args.clone(), next.clone(), failed.clone(), file.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 256 * 1024];
                while next.fetch_add(1, Ordering::Relaxed) < n {
                    if let Err(e) = short_session(&args, &file, size, &mut buf).await {
                        if failed.fetch_add(1, Ordering::Relaxed) < 5 {
                            eprintln!("ftpload: session failed: {e:#}");
                        }
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.await?;
    }
    let secs = t.elapsed().as_secs_f64();
    let failed = failed.load(Ordering::Relaxed);
    println!(
        "RESULT mode=sessions sessions={n} concurrency={conc} failures={failed} secs={secs:.4} sessions_per_sec={:.1}",
        n as f64 / secs
    );
    Ok(())
}

async fn idle(args: Arc<Args>, n: usize, hold: u64, ramp: usize) -> anyhow::Result<()> {
    let gate = Arc::new(tokio::sync::Semaphore::new(ramp));
    let t = Instant::now();
    let opening: Vec<_> = (0..n)
        .map(|_| {
            let (args, gate) = (args.clone(), gate.clone());
            tokio::spawn(async move {
                let _permit = gate.acquire_owned().await?;
                let mut c = Ctrl::connect(args.addr, args.timeout).await?;
                c.login(&args.user, &args.pass).await?;
                anyhow::Ok(c)
            })
        })
        .collect();
    let mut held = Vec::with_capacity(n);
    let mut failed = 0usize;
    for h in opening {
        match h.await? {
            Ok(c) => held.push(c),
            Err(e) => {
                failed += 1;
                if failed <= 5 {
                    eprintln!("ftpload: login failed: {e:#}");
                }
            }
        }
    }
    println!(
        "READY sessions={} failures={failed} secs={:.2}",
        held.len(),
        t.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(hold)).await;
    // Still alive? One NOOP each, in parallel.
    let checks: Vec<_> = held
        .into_iter()
        .map(|mut c| tokio::spawn(async move { c.cmd("NOOP", 2).await.map(|_| c) }))
        .collect();
    let mut alive = Vec::with_capacity(checks.len());
    let mut dead = 0usize;
    for h in checks {
        match h.await? {
            Ok(c) => alive.push(c),
            Err(e) => {
                dead += 1;
                if dead <= 5 {
                    eprintln!("ftpload: held session failed NOOP: {e:#}");
                }
            }
        }
    }
    println!(
        "RESULT mode=idle sessions={n} alive={} failures={}",
        alive.len(),
        failed + dead
    );
    Ok(())
}

async fn noop_latency(args: &Args, count: usize) -> anyhow::Result<()> {
    let mut c = open_session(args).await?;
    for _ in 0..200 {
        c.cmd("NOOP", 2).await?;
    }
    let mut us = Vec::with_capacity(count);
    for _ in 0..count {
        let t = Instant::now();
        c.cmd("NOOP", 2).await?;
        us.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let _ = c.cmd("QUIT", 2).await;
    us.sort_by(f64::total_cmp);
    let q = |p: f64| us[((us.len() as f64 - 1.0) * p).round() as usize];
    let mean = us.iter().sum::<f64>() / us.len() as f64;
    println!(
        "RESULT mode=noop-latency count={count} p50_us={:.1} p99_us={:.1} mean_us={mean:.1} min_us={:.1}",
        q(0.50),
        q(0.99),
        us[0]
    );
    Ok(())
}

async fn serve(listen: SocketAddr) -> anyhow::Result<()> {
    let l = TcpListener::bind(listen).await?;
    eprintln!("ftpload: stub FTP server on {}", l.local_addr()?);
    loop {
        let (s, _) = match l.accept().await {
            Ok(x) => x,
            Err(e) => {
                eprintln!("ftpload: accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        tokio::spawn(async move {
            let _ = s.set_nodelay(true);
            let mut io = BufReader::with_capacity(512, s);
            io.get_mut().write_all(b"220 ftpload stub\r\n").await?;
            let mut line = String::new();
            loop {
                line.clear();
                if io.read_line(&mut line).await? == 0 {
                    return io::Result::Ok(());
                }
                let verb = line
                    .split([' ', '\r', '\n'])
                    .next()
                    .unwrap_or("")
                    .to_ascii_uppercase();
                let reply: &[u8] = match verb.as_str() {
                    "USER" => b"331 password please\r\n",
                    "PASS" => b"230 logged in\r\n",
                    "NOOP" | "TYPE" => b"200 ok\r\n",
                    "QUIT" => {
                        io.get_mut().write_all(b"221 bye\r\n").await?;
                        return Ok(());
                    }
                    _ => b"502 not in the stub\r\n",
                };
                io.get_mut().write_all(reply).await?;
            }
        });
    }
}

fn main() -> anyhow::Result<()> {
    let args = Arc::new(Args::parse());
    match raise_nofile() {
        Ok(n) => eprintln!("ftpload: RLIMIT_NOFILE soft limit {n}"),
        Err(e) => eprintln!("ftpload: cannot raise RLIMIT_NOFILE: {e}"),
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        match &args.mode {
            Mode::Download { size, file } => download(&args, *size, file).await,
            Mode::Upload { size, file } => upload(&args, *size, file).await,
            Mode::Sessions {
                n,
                concurrency,
                file,
                size,
            } => sessions(args.clone(), *n, *concurrency, file.clone(), *size).await,
            Mode::Idle { n, hold, ramp } => idle(args.clone(), *n, *hold, *ramp).await,
            Mode::NoopLatency { count } => noop_latency(&args, *count).await,
            Mode::Serve { listen } => serve(*listen).await,
        }
    })
}
