//! Regression tests from the adversarial campaign, each on real sockets:
//!
//! - the admin listener keeps answering a well-behaved source's probes while another
//!   source floods it with silent and slowloris connections (it used to share one
//!   64-slot cap with everybody, and a Kubernetes liveness probe failing that way
//!   restarts a healthy pod);
//! - a transfer the client aborts with RST still counts the bytes it moved;
//! - reply and command text from the network cannot forge log lines or smuggle
//!   terminal escapes into text logs (ftpgate as a child process);
//! - at the file-descriptor limit clients hear "local resource limit", not "no backend
//!   reachable", the exhaustion is counted, and the accept loop backs off instead of
//!   spinning (ftpgate as a child process under `prlimit`).
//!
//! 127.0.0.0/8 is all loopback, so 127.0.0.2 and 127.0.0.3 play other hosts.

#[path = "common/inprocess.rs"]
#[allow(dead_code)] // shared with tests that use other parts of it
mod inprocess;
#[path = "common/mock_ftp.rs"]
#[allow(dead_code)] // shared with tests that use more of it
mod mock_ftp;

use std::io::Read as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ftpgate::admin::{FIRST_BYTE_TIMEOUT, HEADER_READ_TIMEOUT};
use inprocess::{connect_from, start_proxy, Client, WAIT};
use mock_ftp::{MockFtp, MockOptions};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

const FLOODER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
const PROBER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
const SLOWLORIS: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));
/// Between polls of something that changes asynchronously.
const POLL: Duration = Duration::from_millis(20);

// ---------------------------------------------------------------------------------
// Admin listener starvation
// ---------------------------------------------------------------------------------

/// One HTTP/1.0 GET from `src`: the status code, or why there was none.
async fn probe(src: IpAddr, admin: SocketAddr, path: &str) -> Result<u16, String> {
    let exchange = async {
        let mut s = connect_from(src, admin).await?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: ftpgate\r\n\r\n").as_bytes())
            .await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        std::io::Result::Ok(buf)
    };
    let raw = tokio::time::timeout(WAIT, exchange)
        .await
        .map_err(|_| format!("{path}: no answer within {WAIT:?}"))?
        .map_err(|e| format!("{path}: {e}"))?;
    let text = String::from_utf8_lossy(&raw);
    text.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("{path}: no HTTP response (got {} bytes)", raw.len()))
}

/// Resolves when the server closes `s` (EOF or reset); bytes read meanwhile ignored.
async fn closed_by_server(mut s: TcpStream) {
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// 200 silent connections and 20 slowloris connections (a header byte every 200 ms)
/// from two other addresses: the prober's 60 `/readyz`, `/healthz` and `/metrics`
/// requests all get 200. Before the fix the flood held all 64 shared slots and the
/// probes were closed unanswered. Silent connections are closed by the server after
/// the first-byte timeout, slowloris ones after the header timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_probes_survive_silent_and_slowloris_floods_from_other_sources() {
    let mock = MockFtp::start(MockOptions::default()).await;
    let proxy = start_proxy(vec![mock.addr], |c| {
        c.data_ports = "43000-43099".parse().unwrap();
        c.admin.listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let admin = proxy.admin.expect("admin listener bound");
    // Ready once the first health check saw the backend.
    let deadline = Instant::now() + WAIT;
    while probe(PROBER, admin, "/readyz").await != Ok(200) {
        assert!(Instant::now() < deadline, "never ready");
        tokio::time::sleep(POLL).await;
    }

    let flood_start = Instant::now();
    let mut silent = Vec::new();
    for _ in 0..200 {
        silent.push(connect_from(FLOODER, admin).await.expect("silent connect"));
    }
    let mut slowloris = Vec::new();
    for _ in 0..20 {
        let mut s = connect_from(SLOWLORIS, admin)
            .await
            .expect("slowloris connect");
        slowloris.push(tokio::spawn(async move {
            let opened = Instant::now();
            if s.write_all(b"GET /readyz HTTP/1.1\r\n").await.is_err() {
                return opened.elapsed();
            }
            let (mut r, mut w) = s.split();
            let dribble = async {
                loop {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    if w.write_all(b"X").await.is_err() {
                        return;
                    }
                }
            };
            let mut buf = [0u8; 1024];
            let closed = async {
                loop {
                    match r.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                }
            };
            tokio::select! {
                () = dribble => {}
                () = closed => {}
            }
            opened.elapsed()
        }));
    }

    let mut failures = Vec::new();
    for i in 0..60 {
        let path = ["/readyz", "/healthz", "/metrics"][i % 3];
        match probe(PROBER, admin, path).await {
            Ok(200) => {}
            other => failures.push(format!("probe {i} {path}: {other:?}")),
        }
        // Spread the probes over the flood's lifetime (pacing, not a readiness wait).
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert!(
        failures.is_empty(),
        "{} of 60 probes failed: {failures:#?}",
        failures.len()
    );

    // Every silent connection is closed by the server: at once when over the
    // per-source cap, else after the first-byte timeout (generous bound).
    let bound = FIRST_BYTE_TIMEOUT + Duration::from_secs(3);
    let all_closed = futures_join_all(silent.into_iter().map(closed_by_server));
    tokio::time::timeout_at(flood_start + bound, all_closed)
        .await
        .unwrap_or_else(|_| panic!("silent connections still open {bound:?} after opening"));
    for h in slowloris {
        let lived = tokio::time::timeout(WAIT + HEADER_READ_TIMEOUT, h)
            .await
            .expect("slowloris connection closed by the server")
            .unwrap();
        assert!(
            lived < HEADER_READ_TIMEOUT + Duration::from_secs(3),
            "slowloris connection lived {lived:?}"
        );
    }
    let refused = proxy
        .metrics
        .admin_connections_refused_total
        .with_label_values(&["per_source_limit"])
        .get();
    assert!(refused > 0, "per-source refusals are counted");
}

/// `join_all` without the futures crate: runs every future to completion.
async fn futures_join_all<F: std::future::Future<Output = ()> + Send + 'static>(
    futs: impl Iterator<Item = F>,
) {
    let mut set = tokio::task::JoinSet::new();
    for f in futs {
        set.spawn(f);
    }
    while let Some(r) = set.join_next().await {
        r.unwrap();
    }
}

// ---------------------------------------------------------------------------------
// Byte accounting of aborted transfers
// ---------------------------------------------------------------------------------

/// Closes with RST (SO_LINGER 0) instead of FIN.
fn reset(s: TcpStream) {
    s.set_zero_linger().unwrap();
    drop(s);
}

/// Polls an in-process counter until `pred` holds; panics with the last value.
async fn wait_counter(what: &str, get: impl Fn() -> u64, pred: impl Fn(u64) -> bool) -> u64 {
    let deadline = Instant::now() + WAIT;
    loop {
        let v = get();
        if pred(v) {
            return v;
        }
        assert!(Instant::now() < deadline, "{what} stayed at {v}");
        tokio::time::sleep(POLL).await;
    }
}

/// A client that resets its data connection in the middle of a download, one that
/// just closes it mid-download, and one that resets mid-upload:
/// `ftpgate_data_bytes_total` grows by at least what the client received (exactly
/// what the server received, for the upload). It used to grow by 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfers_aborted_by_reset_count_the_bytes_they_moved() {
    let mock = MockFtp::start(MockOptions::default()).await;
    let proxy = start_proxy(vec![mock.addr], |c| {
        c.data_ports = "43100-43199".parse().unwrap();
    })
    .await;
    let counter = |d: &'static str| {
        let m = Arc::clone(&proxy.metrics);
        move || m.data_bytes_total.with_label_values(&[d]).get()
    };
    let down = counter("backend_to_client");
    let up = counter("client_to_backend");
    let (down0, up0) = (down(), up());

    // Download: the mock sends 1 KiB every 20 ms (2 MiB in all); the client takes
    // 64 KiB and resets.
    let mut c = Client::login(proxy.addr).await;
    let mut data = TcpStream::connect(c.epsv().await).await.unwrap();
    c.send(b"RETR slow:2048\r\n").await;
    assert!(c.reply().await.starts_with("150"));
    let mut received = 0u64;
    let mut buf = vec![0u8; 16 * 1024];
    while received < 64 * 1024 {
        let n = tokio::time::timeout(WAIT, data.read(&mut buf))
            .await
            .expect("download progresses")
            .unwrap();
        assert_ne!(n, 0, "download ended early");
        received += n as u64;
    }
    reset(data);
    // The mock notices its data connection closing and ends the transfer.
    assert!(c.reply().await.starts_with("226"));
    let counted = wait_counter("backend_to_client", &down, |v| v - down0 >= received).await;
    assert!(counted - down0 >= received);

    // Download again; this time the client just closes mid-transfer (what ftplib does
    // on ABOR): ftpgate's next write to it fails.
    let down1 = down();
    let mut data = TcpStream::connect(c.epsv().await).await.unwrap();
    c.send(b"RETR slow:2048\r\n").await;
    assert!(c.reply().await.starts_with("150"));
    let mut received = 0u64;
    while received < 32 * 1024 {
        let n = tokio::time::timeout(WAIT, data.read(&mut buf))
            .await
            .expect("download progresses")
            .unwrap();
        assert_ne!(n, 0, "download ended early");
        received += n as u64;
    }
    drop(data);
    assert!(c.reply().await.starts_with("226"));
    wait_counter("backend_to_client", &down, |v| v - down1 >= received).await;

    // Upload: 256 KiB, then RST; whatever reached the server is what counts.
    let mut data = TcpStream::connect(c.epsv().await).await.unwrap();
    c.send(b"STOR aborted.bin\r\n").await;
    assert!(c.reply().await.starts_with("150"));
    data.write_all(&inprocess::pattern(256 * 1024))
        .await
        .unwrap();
    reset(data);
    assert!(c.reply().await.starts_with("226"));
    let stored = mock
        .file("aborted.bin")
        .expect("mock stored the partial upload");
    assert!(!stored.is_empty(), "some of the upload reached the server");
    wait_counter("client_to_backend", &up, |v| v - up0 == stored.len() as u64).await;
    c.quit().await;
}

// ---------------------------------------------------------------------------------
// ftpgate as a child process
// ---------------------------------------------------------------------------------

/// ftpgate started from its binary, stderr drained into a buffer by a thread.
struct GatewayProcess {
    child: Child,
    stderr: Arc<Mutex<Vec<u8>>>,
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl GatewayProcess {
    /// `ftpgate run <args>` with text logs at `debug`, uncoloured; `nofile` caps
    /// RLIMIT_NOFILE (soft and hard, so ftpgate cannot raise it) through `prlimit`.
    fn spawn(args: &[String], nofile: Option<u32>) -> GatewayProcess {
        let bin = env!("CARGO_BIN_EXE_ftpgate");
        let mut cmd = match nofile {
            Some(n) => {
                let mut c = Command::new("prlimit");
                c.arg(format!("--nofile={n}:{n}")).arg("--").arg(bin);
                c
            }
            None => Command::new(bin),
        };
        cmd.arg("run")
            .args(args)
            .args(["--log-format", "text", "--log-level", "debug"])
            .env_remove("RUST_LOG")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("start ftpgate");
        let mut pipe = child.stderr.take().unwrap();
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&stderr);
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        GatewayProcess { child, stderr }
    }

    fn stderr(&self) -> Vec<u8> {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits (bounded) for a log line containing `needle`; returns that line.
    async fn wait_line(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let text = String::from_utf8_lossy(&self.stderr()).to_string();
            if let Some(l) = text.lines().find(|l| l.contains(needle)) {
                return l.to_string();
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("ftpgate exited ({status}) before logging {needle:?}:\n{text}");
            }
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in ftpgate's log:\n{text}"
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// The address after `key=` (e.g. `listeners=[127.0.0.1:4000]`) in the line
    /// containing `needle`.
    async fn logged_addr(&mut self, needle: &str, key: &str) -> SocketAddr {
        let line = self.wait_line(needle).await;
        let rest = &line[line.find(key).unwrap_or_else(|| panic!("{key} in {line}")) + key.len()..];
        let rest = rest.trim_start_matches('[');
        let end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == ':'))
            .unwrap_or(rest.len());
        rest[..end]
            .parse()
            .unwrap_or_else(|_| panic!("address in {line}"))
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

fn base_args(backend: SocketAddr, data_ports: &str) -> Vec<String> {
    [
        "--listen",
        "127.0.0.1:0",
        "--backend",
        &backend.to_string(),
        "--public-address",
        "127.0.0.1",
        "--data-ports",
        data_ports,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

// ---------------------------------------------------------------------------------
// Log injection
// ---------------------------------------------------------------------------------

const FAKE: &str = "INFO ftpgate: fake";

/// A backend written to attack the operator's terminal and log pipeline: escape
/// sequences, bare CRs and text posing as ftpgate log lines in its replies.
async fn malicious_backend() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (r, mut w) = s.into_split();
                let mut r = BufReader::new(r);
                let banner = format!("220 hi \x1b[31mred\x1b[0m\r{FAKE} banner\r\n");
                if w.write_all(banner.as_bytes()).await.is_err() {
                    return;
                }
                let mut line = String::new();
                loop {
                    line.clear();
                    if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let verb = line.split([' ', '\r', '\n']).next().unwrap_or("");
                    let reply = match verb.to_ascii_uppercase().as_str() {
                        "USER" => "331 \x1b]0;pwned\x07 password\r\n".to_string(),
                        "PASS" => "230 in\r\n".to_string(),
                        // Unparsable passive replies: logged as "passive reply not mapped".
                        "PASV" => format!("227 Entering Passive Mode \x1b[2J\r{FAKE} pasv\r\n"),
                        "EPSV" => format!("229 Extended (|||\x1b[31m|)\r{FAKE} epsv\r\n"),
                        // Not a reply at all: logged as "malformed reply from backend".
                        _ => format!("\x1b[31mXYZ\r{FAKE} malformed\r\n"),
                    };
                    if w.write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// Text logs (at debug, the chattiest level) carry no raw ESC or CR, and no log line
/// begins with text the network sent; the escaped text is there instead. Before the
/// fix the bare CRs went out raw, so a terminal showed a forged `INFO ftpgate:` line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_text_cannot_forge_log_lines_or_inject_escapes() {
    let backend = malicious_backend().await;
    let mut gw = GatewayProcess::spawn(&base_args(backend, "43200-43299"), None);
    let addr = gw.logged_addr("ftpgate ready", "listeners=").await;

    let mut c = Client::connect(addr).await;
    assert!(c.reply().await.starts_with("220"));
    c.send(format!("USER evil\x1b[31m\r{FAKE} user\r\n").as_bytes())
        .await;
    assert!(c.reply().await.starts_with("331"));
    assert!(c.cmd("PASS secret").await.starts_with("230"));
    assert!(c.cmd("PASV").await.starts_with("425"));
    assert!(c.cmd("EPSV").await.starts_with("425"));
    assert!(c.cmd("NOOP").await.starts_with("421"));
    gw.wait_line("session ended").await;

    let log = gw.stderr();
    let text = String::from_utf8_lossy(&log);
    assert!(!log.contains(&0x1b), "raw ESC in the log:\n{text}");
    assert!(!log.contains(&b'\r'), "raw CR in the log:\n{text}");
    for l in text.split(['\n', '\r']) {
        assert!(
            !l.trim_start().starts_with(FAKE),
            "forged log line {l:?} in:\n{text}"
        );
    }
    // Not vacuous: the hostile text was logged, escaped.
    for shown in [
        format!("\\x1b[2J\\r{FAKE} pasv"),
        format!("\\x1b[31m|)\\r{FAKE} epsv"),
        format!("\\x1b[31mXYZ\\r{FAKE} malformed"),
        format!("evil\\x1b[31m\\r{FAKE} user"),
    ] {
        assert!(text.contains(&shown), "{shown:?} not in the log:\n{text}");
    }
    assert!(!text.contains("secret"), "password logged:\n{text}");
}

// ---------------------------------------------------------------------------------
// File-descriptor exhaustion
// ---------------------------------------------------------------------------------

/// RLIMIT_NOFILE for the exhaustion test: room for the runtime and listeners and a
/// dozen sessions (two descriptors each), so the limit is reached quickly.
const NOFILE: u32 = 40;
/// How long a new client waits for its first reply before it counts as queued in the
/// listen backlog (ftpgate cannot accept it). A decision threshold, not an assertion:
/// a slow reply only makes the test take one more round.
const QUEUED_AFTER: Duration = Duration::from_millis(1500);
/// Exhaustion is held this long while ftpgate's CPU time is measured.
const SPIN_WINDOW: Duration = Duration::from_secs(3);

enum FirstReply {
    Line(String, TcpStream),
    Queued(TcpStream),
}

async fn first_reply(addr: SocketAddr) -> FirstReply {
    let s = tokio::time::timeout(WAIT, TcpStream::connect(addr))
        .await
        .expect("connect within bound")
        .expect("connect (the kernel queues it even when ftpgate cannot accept)");
    let mut r = BufReader::new(s);
    let mut line = String::new();
    match tokio::time::timeout(QUEUED_AFTER, r.read_line(&mut line)).await {
        Ok(Ok(_)) => FirstReply::Line(line, r.into_inner()),
        Ok(Err(e)) => FirstReply::Line(format!("(read error: {e})"), r.into_inner()),
        Err(_) => FirstReply::Queued(r.into_inner()),
    }
}

/// utime + stime of `pid`, in seconds.
#[allow(unsafe_code)]
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/PID/stat");
    // Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
    let after = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<&str> = after.split(' ').collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    // SAFETY: sysconf reads a constant of the running system.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    ticks as f64 / hz as f64
}

/// Sends one command line on a held session; returns the (single-line) reply.
async fn ask(s: &mut TcpStream, line: &str) -> String {
    s.write_all(line.as_bytes()).await.unwrap();
    let mut r = BufReader::new(s);
    let mut reply = String::new();
    tokio::time::timeout(WAIT, r.read_line(&mut reply))
        .await
        .expect("reply within bound")
        .unwrap();
    reply
}

/// Makes one descriptor of ftpgate's busy: logs in on a held session and asks for
/// EPSV, whose client-side data listener stays open (waiting for the data connection).
async fn occupy_one_descriptor(held: &mut [(TcpStream, bool)]) {
    let (s, used) = held
        .iter_mut()
        .find(|(_, used)| !*used)
        .expect("a held session not used for EPSV yet");
    *used = true;
    assert!(ask(s, "USER u\r\n").await.starts_with("331"));
    assert!(ask(s, "PASS p\r\n").await.starts_with("230"));
    let epsv = ask(s, "EPSV\r\n").await;
    assert!(epsv.starts_with("229"), "{epsv}");
}

/// Ends `n` held sessions that hold no EPSV listener (two descriptors each).
fn end_sessions(held: &mut Vec<(TcpStream, bool)>, n: usize) {
    for _ in 0..n {
        let i = held
            .iter()
            .position(|(_, used)| !*used)
            .expect("a session to end");
        held.remove(i);
    }
}

/// With RLIMIT_NOFILE low, clients are opened until ftpgate runs out of descriptors.
/// The one whose backend connect fails for lack of a descriptor hears the local-resource
/// 421 (it used to hear "no backend reachable"), the failure is counted in
/// `ftpgate_local_resource_exhausted_total`, and while accepts fail with EMFILE
/// ftpgate's CPU time stays far below wall time (no spinning accept loop).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn descriptor_exhaustion_is_reported_as_local_and_does_not_spin() {
    let mock = MockFtp::start(MockOptions::default()).await;
    let mut args = base_args(mock.addr, "43300-43399");
    args.extend(["--metrics".to_string(), "127.0.0.1:0".to_string()]);
    let mut gw = GatewayProcess::spawn(&args, Some(NOFILE));
    let addr = gw.logged_addr("ftpgate ready", "listeners=").await;
    let admin = gw.logged_addr("admin endpoint serving", "addr=").await;

    // Sessions ftpgate serves (first reply 220); the flag marks one used for EPSV.
    let mut held: Vec<(TcpStream, bool)> = Vec::new();
    let mut local_421: Option<String> = None;
    let mut spin_checked = false;
    for round in 0.. {
        assert!(round < 200, "descriptors never ran out");
        match first_reply(addr).await {
            FirstReply::Line(l, s) if l.starts_with("220") => held.push((s, false)),
            FirstReply::Line(l, mut s) => {
                assert_eq!(
                    l.trim_end(),
                    "421 Service not available, local resource limit.",
                    "reply at the descriptor limit"
                );
                local_421 = Some(l);
                // ftpgate closes this session, which frees its descriptor.
                let mut rest = Vec::new();
                let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut rest)).await;
                if spin_checked {
                    break;
                }
                // Fill that descriptor so that the next client stays queued.
                occupy_one_descriptor(&mut held).await;
            }
            FirstReply::Queued(queued) => {
                // Every descriptor is taken: accept fails with EMFILE while this
                // client waits in the backlog. Is ftpgate spinning on it?
                if !spin_checked {
                    let cpu0 = cpu_seconds(gw.pid());
                    let wall0 = Instant::now();
                    tokio::time::sleep(SPIN_WINDOW).await;
                    let cpu = cpu_seconds(gw.pid()) - cpu0;
                    let wall = wall0.elapsed().as_secs_f64();
                    assert!(
                        cpu < wall / 2.0,
                        "ftpgate used {cpu:.2} s of CPU in {wall:.2} s at the descriptor limit"
                    );
                    spin_checked = true;
                }
                if local_421.is_some() {
                    break;
                }
                // Two sessions end (four descriptors free), the queued client takes
                // two, an EPSV listener one: one left, for the next client's
                // accept, so its backend connect is what fails.
                end_sessions(&mut held, 2);
                let mut r = BufReader::new(queued);
                let mut line = String::new();
                tokio::time::timeout(WAIT, r.read_line(&mut line))
                    .await
                    .expect("queued client served once descriptors free up")
                    .unwrap();
                assert!(line.starts_with("220"), "{line}");
                held.push((r.into_inner(), false));
                occupy_one_descriptor(&mut held).await;
            }
        }
    }
    assert!(local_421.is_some() && spin_checked);

    // Free everything, then the admin endpoint answers and shows the count.
    drop(held);
    let deadline = Instant::now() + WAIT;
    let series = r#"ftpgate_local_resource_exhausted_total{resource="process_fds"}"#;
    loop {
        let body = metrics_body(admin).await;
        let value = body.as_deref().and_then(|b| {
            b.lines()
                .find_map(|l| l.strip_prefix(series)?.trim().parse::<f64>().ok())
        });
        if value.is_some_and(|v| v >= 1.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{series} is {value:?}; log:\n{}",
            String::from_utf8_lossy(&gw.stderr())
        );
        tokio::time::sleep(POLL).await;
    }
    let log = String::from_utf8_lossy(&gw.stderr()).to_string();
    assert!(
        !log.contains("no backend reachable"),
        "exhaustion blamed on the backends:\n{log}"
    );
}

/// `/metrics` body, or `None` while ftpgate cannot answer yet.
async fn metrics_body(admin: SocketAddr) -> Option<String> {
    let exchange = async {
        let mut s = TcpStream::connect(admin).await?;
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        std::io::Result::Ok(buf)
    };
    let raw = tokio::time::timeout(WAIT, exchange).await.ok()?.ok()?;
    let text = String::from_utf8(raw).ok()?;
    Some(text.split_once("\r\n\r\n")?.1.to_string())
}
