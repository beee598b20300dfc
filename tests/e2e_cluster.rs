//! Scale-out end to end: three ftpgate replicas (processes, one namespace each) behind
//! an nftables balancer that DNATs the public address's control port and whole data
//! range to a replica picked at random per connection (kube-proxy's nftables mode),
//! in front of a real vsftpd. Topology and helpers: `common/cluster.rs`.
//!
//! - spread: 200 sessions of curl, lftp and Python ftplib in EPSV, PASV, PORT and EPRT,
//!   downloads and uploads, byte-exact; every replica forwarded data connections out
//!   and received some in;
//! - intruder: another address connecting to a session's announced port through the
//!   balancer gets nothing, wherever it lands; the owner counts the refusal; the client's
//!   transfer then succeeds;
//! - kill -9: a replica dies and leaves the balancer; transfers of the others run on
//!   byte-exact, new sessions succeed, a data connection for the dead replica's slice is
//!   reset at once and counted;
//! - rolling restart: each replica in turn leaves the balancer, drains, exits 0, comes
//!   back; clients looping meanwhile lose no transfer (a `421` before a transfer starts is
//!   retried, as real clients do, and counted).
//!
//! Needs root, nft, conntrack, tc, vsftpd, curl, lftp, python3.

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::active::{connect_in, login_in};
use common::clients::FtpControl;
use common::cluster::{
    owner_of, public_control, slice_start, ClusterTopology, Files, Job, Kind, Outcome, Scrape,
    CLIENT, INTRUDER, PUBLIC, SLOTS, SLOW_CLIENT,
};
use common::proxy::{Ftpgate, FtpgateOptions};
use common::servers::{FtpServer, BIG_FILE, BIG_FILE_LEN};
use common::sha256_bytes;

/// Bound on every wait for a counter, an exit or a readiness signal.
const WAIT: Duration = Duration::from_secs(30);

/// Prints a figure for the lead's notes even when the test passes (the test harness
/// captures `println!`).
fn report(line: &str) {
    let _ = writeln!(std::io::stderr(), "[e2e_cluster] {line}");
}

/// The balancer, the backend and three running replicas.
struct Cluster {
    // Fields drop in order: replicas first, the namespaces last.
    gates: Vec<Option<Ftpgate>>,
    options: Vec<FtpgateOptions>,
    server: FtpServer,
    work: tempfile::TempDir,
    net: ClusterTopology,
}

impl Cluster {
    fn start() -> Cluster {
        let net = ClusterTopology::new();
        let server = net.start_backend();
        let work = tempfile::tempdir().unwrap();
        let options: Vec<_> = (0..SLOTS)
            .map(|k| net.replica_options(k, work.path()))
            .collect();
        let gates = (0..SLOTS)
            .map(|k| Some(net.start_replica(k, options[usize::from(k)].clone())))
            .collect();
        Cluster {
            gates,
            options,
            server,
            work,
            net,
        }
    }

    /// Every replica's logs, the balancer's rules and vsftpd's log: failure context.
    fn ctx(&self) -> String {
        let mut s = String::new();
        for (k, g) in self.gates.iter().enumerate() {
            match g {
                Some(g) => s.push_str(&format!("=== replica {k} ===\n{}", g.describe())),
                None => s.push_str(&format!("=== replica {k}: not running ===\n")),
            }
        }
        s.push_str(&format!(
            "=== balancer ===\n{}\n=== vsftpd ===\n{}",
            self.net.describe_balancer(),
            self.server.logs()
        ));
        s
    }

    fn scrape(&self, k: u16) -> Scrape {
        self.net.scrape(k)
    }

    /// Polls replica `k`'s metrics until `cond` holds (bounded); returns the last scrape.
    fn wait_metrics(&self, k: u16, what: &str, cond: impl Fn(&Scrape) -> bool) -> Scrape {
        wait_scrape(&self.net, k, what, cond, || self.ctx())
    }
}

/// Polls replica `k`'s metrics until `cond` holds (bounded by [`WAIT`]); returns the
/// last scrape; on timeout panics with `ctx()`.
fn wait_scrape(
    net: &ClusterTopology,
    k: u16,
    what: &str,
    cond: impl Fn(&Scrape) -> bool,
    ctx: impl Fn() -> String,
) -> Scrape {
    let deadline = Instant::now() + WAIT;
    loop {
        let s = net.scrape(k);
        if cond(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "replica {k}: timed out waiting for {what}\n{}",
            ctx()
        );
        // Polling the metrics endpoint: the signal the counters give (bounded).
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `f(i)` for `i` in `0..n` on `threads` threads; results in order of `i`.
fn parallel<R: Send>(n: usize, threads: usize, f: impl Fn(usize) -> R + Sync) -> Vec<R> {
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<R>>> = Mutex::new((0..n).map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= n {
                    return;
                }
                let r = f(i);
                results.lock().unwrap()[i] = Some(r);
            });
        }
    });
    results
        .into_inner()
        .unwrap()
        .into_iter()
        .map(|r| r.expect("every job ran"))
        .collect()
}

/// Runs `n` sessions of the real clients (every job in turn) from the client
/// namespace, `threads` at a time; returns the failures (a retried session counts)
/// and the mean duration by client kind.
fn sessions(
    c: &Cluster,
    files: &Files,
    n: usize,
    threads: usize,
    first: usize,
) -> (Vec<String>, String) {
    let jobs = Job::all();
    let runs = parallel(n, threads, |i| {
        let job = jobs[(first + i) % jobs.len()];
        let start = Instant::now();
        let (o, _) = files.session(&c.server, &c.net.client, CLIENT, job, first + i);
        let failure = match o {
            Outcome::Ok => None,
            Outcome::Retried(why) => Some(format!("session {i} {job:?}: 421 ({why})")),
            Outcome::Failed(why) => Some(format!("session {i} {job:?}: {why}")),
        };
        (job, start.elapsed(), failure)
    });
    let mut means = Vec::new();
    for kind in [Kind::Curl, Kind::Lftp, Kind::Ftplib] {
        let d: Vec<Duration> = runs
            .iter()
            .filter(|r| r.0.kind == kind)
            .map(|r| r.1)
            .collect();
        if !d.is_empty() {
            let mean = d.iter().sum::<Duration>() / u32::try_from(d.len()).unwrap();
            means.push(format!("{kind:?} {mean:.2?}"));
        }
    }
    let failures = runs.into_iter().filter_map(|r| r.2).collect();
    (failures, format!("mean session: {}", means.join(", ")))
}

/// [`sessions`] moving a fresh 256 KiB file `name`; every one must succeed. Returns
/// the time they took and their mean durations.
fn sessions_all_ok(
    c: &Cluster,
    name: &str,
    n: usize,
    threads: usize,
    first: usize,
) -> (Duration, String) {
    let files = Files::new(&c.server, c.work.path(), name, 256 * 1024);
    let started = Instant::now();
    let (failures, means) = sessions(c, &files, n, threads, first);
    assert!(
        failures.is_empty(),
        "{} of {n} sessions failed:\n{}\n{}",
        failures.len(),
        failures.join("\n"),
        c.ctx()
    );
    (started.elapsed(), means)
}

/// Forwarded in/out and failures of every replica, one line each.
fn forward_figures(c: &Cluster) -> Vec<(u16, u64, u64, u64)> {
    (0..SLOTS)
        .filter(|&k| c.gates[usize::from(k)].is_some())
        .map(|k| {
            let s = c.scrape(k);
            (
                k,
                s.forwarded("out"),
                s.forwarded("in"),
                s.forward_failures(&[]),
            )
        })
        .collect()
}

#[test]
fn balancer_spreads_200_sessions_over_every_replica() {
    if !common::e2e_enabled("balancer_spreads_200_sessions_over_every_replica") {
        return;
    }
    let c = Cluster::start();
    let (took, means) = sessions_all_ok(&c, "spread.bin", 200, 8, 0);
    let figures = forward_figures(&c);
    report(&format!(
        "spread: 200 sessions ({} job kinds) byte-exact in {took:.1?}; {means}",
        Job::all().len()
    ));
    for &(k, out, inn, failed) in &figures {
        let s = c.scrape(k);
        report(&format!(
            "spread: replica {k}: forwarded out {out}, in {inn}, failures {failed}, sessions {}",
            s.sum("ftpgate_sessions_total", &[])
        ));
    }
    for &(k, out, inn, failed) in &figures {
        assert!(
            out > 0 && inn > 0,
            "replica {k} forwarded out {out}, in {inn}: the balancer did not spread data connections\n{}",
            c.ctx()
        );
        assert_eq!(failed, 0, "replica {k}: forward failures\n{}", c.ctx());
        assert_eq!(
            c.scrape(k).refusals("foreign_data_peer"),
            0,
            "replica {k} refused a real client's data connection\n{}",
            c.ctx()
        );
    }
    let out: u64 = figures.iter().map(|f| f.1).sum();
    let inn: u64 = figures.iter().map(|f| f.2).sum();
    assert_eq!(out, inn, "every forward out arrived in\n{}", c.ctx());
}

/// What a connection from `ns` to `addr` saw: its local address, bytes, how it ended.
struct Probe {
    local: SocketAddr,
    bytes: usize,
    outcome: String,
    took: Duration,
}

/// Connects from `ns` (address `from`) to `addr`, writes `junk`, reads until EOF or
/// error (bounded). A reset can come before `connect` returns (the peer accepted and
/// reset at once): that ends the probe too.
fn probe(ns: &common::Netns, from: Ipv4Addr, addr: SocketAddr, junk: &'static [u8]) -> Probe {
    ns.spawn_thread(move || {
        use socket2::{Domain, Socket, Type};
        let start = Instant::now();
        let sock = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
        // Bound first, so the local address is known even when connect fails.
        sock.bind(&SocketAddr::new(IpAddr::V4(from), 0).into())
            .expect("bind probe");
        let local = sock
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .expect("probe address");
        let ended = |bytes, outcome| Probe {
            local,
            bytes,
            outcome,
            took: start.elapsed(),
        };
        if let Err(e) = sock.connect_timeout(&addr.into(), Duration::from_secs(5)) {
            return ended(0, format!("{:?}", e.kind()));
        }
        let mut s = TcpStream::from(sock);
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        // Best effort: the peer may have closed already.
        let _ = s.write_all(junk);
        // `read_to_end` keeps what arrived before an error: every byte is counted.
        let mut got = Vec::new();
        let outcome = match s.read_to_end(&mut got) {
            Ok(_) => "eof".to_owned(),
            Err(e) => format!("{:?}", e.kind()),
        };
        ended(got.len(), outcome)
    })
    .join()
    .expect("probe thread")
}

fn closed_at_once(p: &Probe) -> bool {
    p.bytes == 0
        && (p.outcome == "eof" || p.outcome == "ConnectionReset")
        && p.took < Duration::from_secs(5)
}

/// RETR over an already connected passive data connection; the body's SHA-256.
fn retr(c: &mut FtpControl, mut data: TcpStream, remote: &str) -> std::io::Result<String> {
    c.send(&format!("RETR {remote}"))?;
    let (code, text) = c.read_reply()?;
    if code != 150 && code != 125 {
        return Err(std::io::Error::other(format!("RETR: {text}")));
    }
    let mut body = Vec::new();
    data.read_to_end(&mut body)?;
    let (code, text) = c.read_reply()?;
    if code != 226 {
        return Err(std::io::Error::other(format!("after RETR: {text}")));
    }
    Ok(sha256_bytes(&body))
}

#[test]
fn intruder_on_a_sessions_port_gets_nothing_wherever_it_lands() {
    if !common::e2e_enabled("intruder_on_a_sessions_port_gets_nothing_wherever_it_lands") {
        return;
    }
    let c = Cluster::start();
    let mut control = login_in(&c.net.client, public_control());
    let port = control
        .epsv()
        .unwrap_or_else(|e| panic!("EPSV: {e}\n{}", c.ctx()));
    let owner = owner_of(port).expect("announced port in the range");
    let data_addr = SocketAddr::new(IpAddr::V4(PUBLIC), port);
    let mut landings = Vec::new();
    for attempt in 1..=40 {
        let before: Vec<Scrape> = (0..SLOTS).map(|k| c.scrape(k)).collect();
        let refused = before[usize::from(owner)].refusals("foreign_data_peer");
        let p = probe(&c.net.intruder, INTRUDER, data_addr, b"STOR-INJECTED-BYTES");
        let landed = c
            .net
            .landed_on(p.local, port)
            .unwrap_or_else(|| panic!("no conntrack entry for {}\n{}", p.local, c.ctx()));
        landings.push(landed);
        assert!(
            closed_at_once(&p),
            "intruder (landed on replica {landed}, owner {owner}) got {} bytes, {} after {:?}\n{}",
            p.bytes,
            p.outcome,
            p.took,
            c.ctx()
        );
        c.wait_metrics(owner, "the owner's foreign_data_peer refusal", |s| {
            s.refusals("foreign_data_peer") == refused + 1
        });
        if landed != owner {
            let out = before[usize::from(landed)].forwarded("out");
            c.wait_metrics(landed, "the landing replica's forward out", |s| {
                s.forwarded("out") == out + 1
            });
            report(&format!(
                "intruder: session on replica {owner} port {port}; intruder landed on {landings:?} \
                 (attempt {attempt}), forwarded by {landed}, refused by {owner}: 0 bytes, {} after {:?}",
                p.outcome, p.took
            ));
            break;
        }
        assert!(attempt < 40, "the balancer never picked a non-owner");
    }
    // The real client's data connection is still expected, wherever it lands.
    let data = connect_in(&c.net.client, data_addr)
        .unwrap_or_else(|e| panic!("client data connect: {e}\n{}", c.ctx()));
    let landed = c.net.landed_on(data.local_addr().unwrap(), port);
    let sha = retr(&mut control, data, BIG_FILE)
        .unwrap_or_else(|e| panic!("{e}\n{}\n{}", control.transcript, c.ctx()));
    assert_eq!(sha, c.server.root.big_sha256(), "{}", c.ctx());
    report(&format!(
        "intruder: the client's own data connection (landed on {landed:?}) then moved {BIG_FILE} byte-exact"
    ));
    let _ = control.cmd("QUIT");
}

/// A long transfer's control and data connection, on a session of replica `owner`
/// whose data connection did not land on `avoid`.
struct Long {
    control: FtpControl,
    data: TcpStream,
    port: u16,
    landed: u16,
}

fn open_long(c: &Cluster, owner: u16, avoid: u16) -> Long {
    for _ in 0..80 {
        let mut control = login_in(&c.net.slow, public_control());
        let port = control
            .epsv()
            .unwrap_or_else(|e| panic!("EPSV: {e}\n{}", c.ctx()));
        if owner_of(port) != Some(owner) {
            let _ = control.cmd("QUIT");
            continue;
        }
        let data = connect_in(&c.net.slow, SocketAddr::new(IpAddr::V4(PUBLIC), port))
            .unwrap_or_else(|e| panic!("data connect: {e}\n{}", c.ctx()));
        let landed = c
            .net
            .landed_on(data.local_addr().unwrap(), port)
            .expect("conntrack entry of the data connection");
        if landed == avoid {
            drop(data);
            let _ = control.cmd("QUIT");
            continue;
        }
        return Long {
            control,
            data,
            port,
            landed,
        };
    }
    panic!("no session on replica {owner} with its data connection off {avoid}");
}

#[test]
fn kill_9_of_a_replica_spares_the_others_transfers() {
    if !common::e2e_enabled("kill_9_of_a_replica_spares_the_others_transfers") {
        return;
    }
    let mut c = Cluster::start();
    // ~1.5 MiB/s each way: an 8 MiB transfer runs for about five seconds.
    c.net.shape_slow_client(1536 * 1024);
    let upload = common::servers::upload_source(c.work.path());
    let upload_sha = common::sha256_file(&upload);
    let upload_data = std::fs::read(&upload).unwrap();
    let down = open_long(&c, 0, 2);
    let up = open_long(&c, 1, 2);
    report(&format!(
        "kill -9: long download on replica 0 (port {}, data via {}), long upload on replica 1 (port {}, data via {})",
        down.port, down.landed, up.port, up.landed
    ));

    let got = Arc::new(AtomicUsize::new(0));
    let sent = Arc::new(AtomicUsize::new(0));
    let (g, s2) = (Arc::clone(&got), Arc::clone(&sent));
    let download = std::thread::spawn(move || -> Result<(String, Instant), String> {
        let Long {
            mut control,
            mut data,
            ..
        } = down;
        let mut run = || -> std::io::Result<String> {
            control.send(&format!("RETR {BIG_FILE}"))?;
            let (code, text) = control.read_reply()?;
            if code != 150 && code != 125 {
                return Err(std::io::Error::other(format!("RETR: {text}")));
            }
            let mut body = Vec::with_capacity(BIG_FILE_LEN);
            let mut buf = vec![0u8; 65536];
            loop {
                let n = data.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                body.extend_from_slice(&buf[..n]);
                g.store(body.len(), Ordering::SeqCst);
            }
            let (code, text) = control.read_reply()?;
            if code != 226 {
                return Err(std::io::Error::other(format!("after RETR: {text}")));
            }
            Ok(sha256_bytes(&body))
        };
        let r = run();
        r.map(|sha| (sha, Instant::now()))
            .map_err(|e| format!("{e}\n{}", control.transcript))
    });
    let upload_thread = std::thread::spawn(move || -> Result<Instant, String> {
        let Long {
            mut control,
            mut data,
            ..
        } = up;
        let mut run = || -> std::io::Result<()> {
            control.send("STOR upload/long-up.bin")?;
            let (code, text) = control.read_reply()?;
            if code != 150 && code != 125 {
                return Err(std::io::Error::other(format!("STOR: {text}")));
            }
            for chunk in upload_data.chunks(65536) {
                data.write_all(chunk)?;
                s2.fetch_add(chunk.len(), Ordering::SeqCst);
            }
            data.shutdown(std::net::Shutdown::Write)?;
            let mut rest = Vec::new();
            data.read_to_end(&mut rest)?;
            let (code, text) = control.read_reply()?;
            if code != 226 {
                return Err(std::io::Error::other(format!("after STOR: {text}")));
            }
            Ok(())
        };
        let r = run();
        r.map(|()| Instant::now())
            .map_err(|e| format!("{e}\n{}", control.transcript))
    });
    // Both transfers are moving before the kill.
    let deadline = Instant::now() + WAIT;
    while got.load(Ordering::SeqCst) < 1 << 20 || sent.load(Ordering::SeqCst) < 1 << 20 {
        assert!(Instant::now() < deadline, "long transfers never got going");
        // Polling the transfers' own progress counters (bounded).
        std::thread::sleep(Duration::from_millis(20));
    }

    let killed_at = Instant::now();
    let (at_kill_down, at_kill_up) = (got.load(Ordering::SeqCst), sent.load(Ordering::SeqCst));
    let victim = c.gates[2].as_mut().expect("replica 2");
    victim.signal("KILL");
    let status = victim.wait_exit(WAIT);
    assert!(status.is_some(), "replica 2 survived SIGKILL");
    c.gates[2] = None;
    // The endpoint controller notices and takes it out of the balancer.
    c.net.set_endpoints(&[0, 1]);
    let removed_after = killed_at.elapsed();

    // A data connection for the dead replica's slice: reset at once, counted.
    let dead_port = slice_start(2);
    let before: Vec<u64> = (0..2)
        .map(|k| {
            c.scrape(k)
                .forward_failures(&[("reason", "connect"), ("peer", "2")])
        })
        .collect();
    let p = probe(
        &c.net.client,
        CLIENT,
        SocketAddr::new(IpAddr::V4(PUBLIC), dead_port),
        b"",
    );
    let landed = c
        .net
        .landed_on(p.local, dead_port)
        .expect("conntrack entry of the probe");
    assert!(
        landed < 2,
        "the balancer sent the probe to removed replica {landed}"
    );
    assert!(
        closed_at_once(&p),
        "data connection for dead replica 2's port {dead_port} (landed on {landed}): {} bytes, {} after {:?}\n{}",
        p.bytes,
        p.outcome,
        p.took,
        c.ctx()
    );
    let failures = c.wait_metrics(landed, "forward failure reason connect, peer 2", |s| {
        s.forward_failures(&[("reason", "connect"), ("peer", "2")])
            == before[usize::from(landed)] + 1
    });

    // New sessions while the long transfers still run: all on replicas 0 and 1.
    let (new_took, _) = sessions_all_ok(&c, "after-kill.bin", 22, 4, 1000);

    let (down_sha, down_done) = download
        .join()
        .unwrap()
        .unwrap_or_else(|e| panic!("long download on replica 0: {e}\n{}", c.ctx()));
    assert_eq!(down_sha, c.server.root.big_sha256(), "{}", c.ctx());
    let up_done = upload_thread
        .join()
        .unwrap()
        .unwrap_or_else(|e| panic!("long upload on replica 1: {e}\n{}", c.ctx()));
    assert_eq!(
        common::sha256_file(&c.server.root.uploaded("long-up.bin")),
        upload_sha,
        "{}",
        c.ctx()
    );
    assert!(
        at_kill_down < BIG_FILE_LEN && at_kill_up < BIG_FILE_LEN,
        "the transfers were still running at the kill ({at_kill_down}, {at_kill_up} bytes)"
    );
    report(&format!(
        "kill -9: replica 2 killed with the download at {} KiB and the upload at {} KiB of {} KiB; out of the balancer {removed_after:.1?} later",
        at_kill_down / 1024,
        at_kill_up / 1024,
        BIG_FILE_LEN / 1024
    ));
    report(&format!(
        "kill -9: download completed byte-exact {:.1?} after the kill, upload {:.1?} after",
        down_done.duration_since(killed_at),
        up_done.duration_since(killed_at)
    ));
    report(&format!(
        "kill -9: probe of dead slice port {dead_port} landed on replica {landed}: {} after {:?}, 0 bytes; \
         replica {landed} failures{{reason=connect,peer=2}} = {}",
        p.outcome,
        p.took,
        failures.forward_failures(&[("reason", "connect"), ("peer", "2")])
    ));
    report(&format!(
        "kill -9: 22 new sessions succeeded in {new_took:.1?}; forward figures (ordinal, out, in, failures): {:?}",
        forward_figures(&c)
    ));
}

#[derive(Default)]
struct Tally {
    ok: usize,
    retried: Vec<String>,
    failed: Vec<String>,
}

#[test]
fn rolling_restart_loses_no_transfer() {
    if !common::e2e_enabled("rolling_restart_loses_no_transfer") {
        return;
    }
    let mut c = Cluster::start();
    // A shared 4 MiB/s link: 1 MiB transfers of six clients last a second or more, so
    // each replica has transfers running when it is told to drain.
    c.net.shape_slow_client(4 << 20);
    let files = Files::new(&c.server, c.work.path(), "roll.bin", 1024 * 1024);
    let tally = Mutex::new(Tally::default());
    let stop = AtomicBool::new(false);
    let jobs = Job::all();
    const WORKERS: usize = 6;
    const TRIES: usize = 5;
    let ok_now = || tally.lock().unwrap().ok;
    let wait_ok = |n: usize, what: &str| {
        let deadline = Instant::now() + Duration::from_secs(90);
        while ok_now() < n {
            assert!(Instant::now() < deadline, "clients stalled: {what}");
            // Polling the workers' tally (bounded).
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let mut steps = Vec::new();
    std::thread::scope(|s| {
        for w in 0..WORKERS {
            let (server, net) = (&c.server, &c.net);
            let (files, tally, stop, jobs) = (&files, &tally, &stop, &jobs);
            s.spawn(move || {
                let mut i = w * 5;
                while !stop.load(Ordering::SeqCst) {
                    let job = jobs[i % jobs.len()];
                    for attempt in 1..=TRIES {
                        let n = 10_000 * (w + 1) + i * TRIES + attempt;
                        let (o, _) = files.session(server, &net.slow, SLOW_CLIENT, job, n);
                        let mut t = tally.lock().unwrap();
                        match o {
                            Outcome::Ok => {
                                t.ok += 1;
                                break;
                            }
                            Outcome::Retried(why) if attempt < TRIES => {
                                t.retried.push(format!("{job:?}: {why}"));
                            }
                            Outcome::Retried(why) | Outcome::Failed(why) => {
                                t.failed.push(format!("{job:?} (attempt {attempt}): {why}"));
                                break;
                            }
                        }
                    }
                    i += 1;
                }
            });
        }
        let mut run = || -> Result<(), String> {
            wait_ok(WORKERS, "before the first restart");
            for k in 0..SLOTS {
                let others: Vec<u16> = (0..SLOTS).filter(|&o| o != k).collect();
                let ok_before = ok_now();
                // Wait until it holds sessions and a transfer (a leased data port).
                let busy = wait_scrape(
                    &c.net,
                    k,
                    "sessions and a transfer on the replica",
                    |s| {
                        s.sum("ftpgate_sessions_active", &[]) >= 2
                            && s.sum("ftpgate_data_ports_in_use", &[]) >= 1
                    },
                    String::new,
                );
                // Readiness fails / preStop: the endpoint controller removes it first.
                c.net.set_endpoints(&others);
                let term = Instant::now();
                let gate = c.gates[usize::from(k)].as_mut().expect("running");
                gate.signal("TERM");
                let status = gate.wait_exit(Duration::from_secs(60));
                let drained = term.elapsed();
                let logs = gate.logs();
                if !status.is_some_and(|s| s.success()) {
                    return Err(format!(
                        "replica {k} drain exit: {status:?}\n{}",
                        gate.describe()
                    ));
                }
                let in_drain = logs
                    .lines()
                    .find(|l| l.contains("draining: listeners closed"))
                    .and_then(|l| l.split("sessions=").nth(1))
                    .and_then(|v| v.split_whitespace().next())
                    .unwrap_or("?")
                    .to_owned();
                let restart = Instant::now();
                let gate = c.net.start_replica(k, c.options[usize::from(k)].clone());
                c.gates[usize::from(k)] = Some(gate);
                let ready = restart.elapsed();
                c.net.set_endpoints(&(0..SLOTS).collect::<Vec<_>>());
                steps.push(format!(
                    "replica {k}: {} sessions / {} data ports in use at SIGTERM, {in_drain} sessions draining, exit 0 after {drained:.1?}, ready again {ready:.1?} after restart; {} transfers completed meanwhile",
                    busy.sum("ftpgate_sessions_active", &[]),
                    busy.sum("ftpgate_data_ports_in_use", &[]),
                    ok_now() - ok_before
                ));
                // Clients keep running on the full set before the next one goes.
                wait_ok(ok_now() + WORKERS, "after a restart");
            }
            Ok(())
        };
        let r = run();
        stop.store(true, Ordering::SeqCst);
        if let Err(e) = r {
            panic!("{e}");
        }
    });
    let t = tally.into_inner().unwrap();
    for s in &steps {
        report(&format!("rolling restart: {s}"));
    }
    report(&format!(
        "rolling restart: {} transfers byte-exact, {} sessions retried after a 421 before their transfer, {} failed",
        t.ok,
        t.retried.len(),
        t.failed.len()
    ));
    for r in &t.retried {
        report(&format!("rolling restart: retried: {r}"));
    }
    assert!(
        t.failed.is_empty(),
        "{} transfers failed during the rolling restart:\n{}\n{}",
        t.failed.len(),
        t.failed.join("\n"),
        c.ctx()
    );
    let figures = forward_figures(&c);
    report(&format!(
        "rolling restart: forward figures since each restart (ordinal, out, in, failures): {figures:?}"
    ));
}
