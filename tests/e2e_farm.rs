//! Server farms end to end, in namespaces, with real peers:
//! - a real haproxy in front of ftpgate sending PROXY protocol v2 on the control
//!   port and the data-port range: curl transfers byte-exact in both passive modes,
//!   an intruder behind the same haproxy is refused on the data port because its
//!   header names another address, and the logs name the real client;
//! - a real haproxy with `accept-proxy` in front of a backend, logging `%ci`: it
//!   sees the client's real address in ftpgate's PROXY header;
//! - the same in front of a backend's passive range too (`backend_proxy_protocol_data`,
//!   v1 and v2): curl downloads and uploads byte-exact in both passive modes, and
//!   haproxy's data frontend logs the client's address for every data connection;
//! - named backends served by dnsmasq: a re-resolution that adds and removes a member
//!   while a session runs, and a name that stops resolving keeps its members;
//! - health checks against vsftpd: `banner` finds one at `max_clients` (421).
//!
//! Needs root, haproxy, dnsmasq and vsftpd (`scripts/install-test-deps.sh`).

mod common;

use std::fs;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::addrs::*;
use common::clients::{self, FtpControl, FtpTarget, Passive};
use common::proxy::{Ftpgate, FtpgateOptions};
use common::servers::{FtpServer, ServerKind, BIG_FILE, FTP_PASS, FTP_USER, LIST_DIR, UPLOAD_DIR};
use common::{sha256_bytes, sha256_file, Netns, ReverseTopology};

/// Bound on every wait for a log line or a daemon.
const WAIT: Duration = Duration::from_secs(20);

/// Polls `cond` (bounded by [`WAIT`]); panics with `what` and `ctx()` on timeout.
fn wait_for(what: &str, mut cond: impl FnMut() -> bool, ctx: impl Fn() -> String) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}\n{}",
            ctx()
        );
        // Polling a log file / process output, the only signal these daemons give.
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A daemon of the test's own (haproxy, dnsmasq) with its output in a file.
struct Daemon {
    pid: u32,
    out: PathBuf,
    _dir: tempfile::TempDir,
}

impl Daemon {
    fn start(
        topo: &common::Topology,
        ns: &Netns,
        program: &str,
        args: &[&str],
        dir: tempfile::TempDir,
    ) -> Daemon {
        let out = dir.path().join("out.log");
        let log = fs::File::create(&out).unwrap();
        let mut cmd = ns.command(program);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let pid = topo.spawn(cmd);
        Daemon {
            pid,
            out,
            _dir: dir,
        }
    }

    fn output(&self) -> String {
        fs::read_to_string(&self.out).unwrap_or_default()
    }
}

fn tempdir() -> tempfile::TempDir {
    let d = tempfile::Builder::new()
        .prefix("ftpgate-farm-")
        .tempdir()
        .unwrap();
    // dnsmasq and haproxy may drop privileges: let them read their files.
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(d.path(), fs::Permissions::from_mode(0o755)).unwrap();
    d
}

fn haproxy(topo: &common::Topology, ns: &Netns, config: &str) -> Daemon {
    let dir = tempdir();
    let cfg = dir.path().join("haproxy.cfg");
    fs::write(&cfg, config).unwrap();
    let cfg = cfg.display().to_string();
    Daemon::start(topo, ns, "/usr/sbin/haproxy", &["-db", "-f", &cfg], dir)
}

/// Adds 10.0.0.3 to the backend host (a second server, or haproxy in front of one).
fn second_backend_address(topo: &ReverseTopology) -> Ipv4Addr {
    let second = Ipv4Addr::new(10, 0, 0, 3);
    topo.backend.addr("eth0", &format!("{second}/24"));
    second
}

/// The start of an `accept-proxy` haproxy's configuration: one line a connection, at
/// connect, naming the frontend and the client address from the PROXY header.
const HAPROXY_LOG_CLIENT: &str = "global\n  log stdout format raw local0\n\
     defaults\n  log global\n  mode tcp\n  option logasap\n  log-format \"frontend=%f seen-client=%ci\"\n\
     timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n";

/// Connects from `ns` to `addr` until a 220 arrives (haproxy and what is behind it
/// are ready), bounded.
fn wait_banner(ns: &Netns, addr: SocketAddr) -> Result<(), String> {
    ns.spawn_thread(move || {
        let deadline = Instant::now() + WAIT;
        let mut last = String::new();
        while Instant::now() < deadline {
            match FtpControl::connect(addr) {
                Ok(mut c) => {
                    let _ = c.cmd("QUIT");
                    return Ok(());
                }
                Err(e) => last = e.to_string(),
            }
            // Retry interval while polling the real signal (the banner).
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(last)
    })
    .join()
    .unwrap()
}

/// What a host saw on a data port it had no business on.
#[derive(Debug)]
struct Probe {
    bytes: usize,
    outcome: String,
}

fn probe_from(ns: &Netns, addr: SocketAddr) -> Probe {
    ns.spawn_thread(move || {
        use std::io::Read;
        let mut s = match std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(10)) {
            Ok(s) => s,
            Err(e) => {
                return Probe {
                    bytes: 0,
                    outcome: format!("connect failed: {e}"),
                }
            }
        };
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = [0u8; 65536];
        let mut bytes = 0;
        loop {
            match s.read(&mut buf) {
                Ok(0) => {
                    return Probe {
                        bytes,
                        outcome: "eof".into(),
                    }
                }
                Ok(n) => bytes += n,
                Err(e) => {
                    return Probe {
                        bytes,
                        outcome: format!("error: {e} ({:?})", e.kind()),
                    }
                }
            }
        }
    })
    .join()
    .expect("probe thread")
}

/// Log in, EPSV, report the data address, wait for `go`, then RETR BIG_FILE and
/// hash it.
fn retr_after_probe(
    ns: &Netns,
    control: SocketAddr,
    port_tx: mpsc::Sender<SocketAddr>,
    go_rx: mpsc::Receiver<()>,
) -> Result<String, String> {
    ns.spawn_thread(move || {
        let mut c = FtpControl::connect(control).map_err(|e| e.to_string())?;
        let r = (|| -> std::io::Result<String> {
            c.login(FTP_USER, FTP_PASS)?;
            c.expect("TYPE I", 200)?;
            let data = SocketAddr::new(control.ip(), c.epsv()?);
            port_tx.send(data).map_err(std::io::Error::other)?;
            go_rx
                .recv_timeout(Duration::from_secs(60))
                .map_err(std::io::Error::other)?;
            let mut d = std::net::TcpStream::connect_timeout(&data, Duration::from_secs(10))?;
            d.set_read_timeout(Some(Duration::from_secs(30)))?;
            c.send(&format!("RETR {BIG_FILE}"))?;
            let (code, text) = c.read_reply()?;
            if code != 150 && code != 125 {
                return Err(std::io::Error::other(format!("RETR: {text}")));
            }
            let mut body = Vec::new();
            std::io::Read::read_to_end(&mut d, &mut body)?;
            let (code, text) = c.read_reply()?;
            if code != 226 {
                return Err(std::io::Error::other(format!("after RETR: {text}")));
            }
            let _ = c.cmd("QUIT");
            Ok(sha256_bytes(&body))
        })();
        r.map_err(|e| format!("{e}\n{}", c.transcript))
    })
    .join()
    .expect("client thread")
}

const GATE_PRIVATE: &str = "127.0.0.1:2121";

#[test]
fn haproxy_send_proxy_v2_on_control_and_data_ports() {
    if !common::e2e_enabled("haproxy_send_proxy_v2_on_control_and_data_ports") {
        return;
    }
    let topo = ReverseTopology::new();
    let server = topo.start_backend(ServerKind::Vsftpd);
    // ftpgate behind haproxy, on the proxy host's loopback; it trusts only haproxy.
    let mut opts = FtpgateOptions::new(
        vec![GATE_PRIVATE.parse().unwrap()],
        topo.backend_addr(),
        vec![IpAddr::V4(PROXY_PUBLIC_V4)],
    );
    opts.data_ports = (50000, 50009);
    opts.extra_args = vec!["--accept-proxy-protocol".into(), "127.0.0.1/32".into()];
    let gate = Ftpgate::start(&topo.proxy, opts);
    // The data-port range forwarded port for port (`server` without a port keeps the
    // client's destination port), as a cloud balancer in front of FTP is set up.
    let lb = haproxy(
        &topo.topo,
        &topo.proxy,
        &format!(
            "defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n\
             frontend ctl\n  bind {PROXY_PUBLIC_V4}:21\n  default_backend gate\n\
             backend gate\n  server g {GATE_PRIVATE} send-proxy-v2\n\
             frontend data\n  bind {PROXY_PUBLIC_V4}:50000-50009\n  default_backend gatedata\n\
             backend gatedata\n  server g 127.0.0.1 send-proxy-v2\n"
        ),
    );
    let ctx = || {
        format!(
            "{}--- haproxy ---\n{}\n--- vsftpd ---\n{}",
            gate.describe(),
            lb.output(),
            server.logs()
        )
    };
    wait_banner(&topo.client, topo.proxy_v4()).unwrap_or_else(|e| panic!("{e}\n{}", ctx()));

    // curl through haproxy and ftpgate, both passive flavours, byte-exact.
    let target = FtpTarget::new(topo.proxy_v4());
    let work = tempfile::tempdir().unwrap();
    for mode in [Passive::Epsv, Passive::Pasv] {
        let out = work.path().join(format!("{mode:?}.bin"));
        let t = clients::curl_download(&topo.client, &target, BIG_FILE, &out, mode);
        t.assert_success(&ctx());
        assert_eq!(sha256_file(&out), server.root.big_sha256(), "{mode:?}\n{t}");
    }

    // An intruder behind the same haproxy races the client to its data port: its
    // header names 203.0.113.66, not the control client.
    let (port_tx, port_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel();
    let client_ns = topo.client.clone();
    let control = topo.proxy_v4();
    let client = std::thread::spawn(move || retr_after_probe(&client_ns, control, port_tx, go_rx));
    let data = port_rx
        .recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("no passive port ({e})\n{}", ctx()));
    let probe = probe_from(&topo.attacker, data);
    go_tx.send(()).unwrap();
    let sha = client
        .join()
        .unwrap()
        .unwrap_or_else(|e| panic!("client after the intruder: {e}\n{}", ctx()));
    assert_eq!(
        probe.bytes,
        0,
        "the intruder got data: {probe:?}\n{}",
        ctx()
    );
    assert!(
        probe.outcome == "eof" || probe.outcome.contains("reset"),
        "the intruder's connection is closed at once: {probe:?}\n{}",
        ctx()
    );
    assert_eq!(sha, server.root.big_sha256());
    let logs = gate.logs();
    assert!(
        logs.lines().any(
            |l| l.contains("data connection from foreign address refused")
                && l.contains(&format!("peer={ATTACKER_V4}:"))
        ),
        "the refusal names the intruder's real address\n{}",
        ctx()
    );
    // Sessions and the access log name the real client, never haproxy.
    assert!(
        logs.lines()
            .any(|l| l.contains("ftpgate::access") && l.contains(&format!("client={CLIENT_V4}:"))),
        "access log names the real client\n{}",
        ctx()
    );
    assert!(
        !logs.contains("client=127.0.0.1"),
        "haproxy's address leaked into the logs\n{}",
        ctx()
    );

    // Not from a trusted source: a header is not honoured (the connection goes on
    // as FTP, and the header line is just a bad command).
    let direct = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 2121);
    let spoof = topo
        .proxy
        .spawn_thread(move || {
            use std::io::{BufRead, Write};
            let mut s = std::net::TcpStream::connect_timeout(&direct, Duration::from_secs(5))?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            // Malformed: a trusted source gets closed without a reply.
            s.write_all(b"PROXY TCP4 1.2.3 nonsense\r\n")?;
            let mut line = String::new();
            std::io::BufReader::new(s).read_line(&mut line)?;
            Ok::<_, std::io::Error>(line)
        })
        .join()
        .unwrap();
    assert_eq!(
        spoof.ok().as_deref(),
        Some(""),
        "a malformed header is closed silently\n{}",
        ctx()
    );
    gate.assert_no_password();
}

#[test]
fn haproxy_accept_proxy_in_front_of_a_backend_sees_the_real_client() {
    if !common::e2e_enabled("haproxy_accept_proxy_in_front_of_a_backend_sees_the_real_client") {
        return;
    }
    let topo = ReverseTopology::new();
    let server = topo.start_backend(ServerKind::Vsftpd);
    // haproxy on the backend host, requiring a PROXY header, logging %ci at connect.
    let lb = haproxy(
        &topo.topo,
        &topo.backend,
        &format!(
            "{HAPROXY_LOG_CLIENT}\
             frontend ftp\n  bind {BACKEND_V4}:2121 accept-proxy\n  default_backend vs\n\
             backend vs\n  server v {BACKEND_V4}:21\n"
        ),
    );
    // ftpgate's header in both versions, each parsed by a real haproxy.
    for version in ["v1", "v2"] {
        let mut opts = topo.ftpgate_options(SocketAddr::new(IpAddr::V4(BACKEND_V4), 2121));
        opts.extra_args = vec![
            "--backend-proxy-protocol".into(),
            version.into(),
            // Health checks open with `PROXY UNKNOWN` / v2 `LOCAL`, so the banner check
            // passes too.
            "--health-check".into(),
            "banner".into(),
        ];
        let gate = topo.start_ftpgate(opts);
        let ctx = || {
            format!(
                "{}--- haproxy ---\n{}\n--- vsftpd ---\n{}",
                gate.describe(),
                lb.output(),
                server.logs()
            )
        };
        let control = topo.proxy_v4();
        let seen = format!("seen-client={CLIENT_V4}");
        let seen_before = lb.output().matches(&seen).count();
        let pwd = topo
            .client
            .spawn_thread(move || {
                let deadline = Instant::now() + WAIT;
                loop {
                    // haproxy may still be starting: ftpgate then answers 421.
                    match FtpControl::connect(control) {
                        Ok(mut c) => {
                            c.login(FTP_USER, FTP_PASS)?;
                            let pwd = c.cmd("PWD")?;
                            let _ = c.cmd("QUIT");
                            return Ok::<_, std::io::Error>(pwd);
                        }
                        Err(e) if Instant::now() > deadline => return Err(e),
                        // Retry interval while haproxy comes up.
                        Err(_) => std::thread::sleep(Duration::from_millis(100)),
                    }
                }
            })
            .join()
            .unwrap()
            .unwrap_or_else(|e| panic!("{e}\n{}", ctx()));
        assert_eq!(pwd.0, 257, "{pwd:?}");
        wait_for(
            "haproxy's log line",
            || lb.output().matches(&seen).count() > seen_before,
            ctx,
        );
        wait_for(
            "the banner check through accept-proxy",
            || {
                gate.logs().lines().any(|l| {
                    l.contains("backend up") && l.contains(&format!("backend={BACKEND_V4}:2121"))
                })
            },
            ctx,
        );
    }
}

#[test]
fn haproxy_accept_proxy_on_backend_data_ports_sees_the_real_client() {
    if !common::e2e_enabled("haproxy_accept_proxy_on_backend_data_ports_sees_the_real_client") {
        return;
    }
    let topo = ReverseTopology::new();
    // haproxy on a second address of the backend host, in front of vsftpd's control
    // port and its whole passive range; vsftpd's 227 names haproxy. ftpgate's backend
    // is haproxy's control address, so EPSV (port only) lands on haproxy too.
    let lb_ip = second_backend_address(&topo);
    let server = FtpServer::start_with(
        &topo.topo,
        &topo.backend,
        topo.backend_addr(),
        ServerKind::Vsftpd,
        // A data connection haproxy never forwards: vsftpd answers 425 after 15 s
        // (instead of curl's own 60 s timeout).
        &format!(
            "pasv_address={lb_ip}\npasv_min_port=40000\npasv_max_port=40009\naccept_timeout=15\n"
        ),
    );
    let lb = haproxy(
        &topo.topo,
        &topo.backend,
        &format!(
            "{HAPROXY_LOG_CLIENT}\
             frontend ctl\n  bind {lb_ip}:21 accept-proxy\n  default_backend vs\n\
             backend vs\n  server v {BACKEND_V4}:21\n\
             frontend data\n  bind {lb_ip}:40000-40009 accept-proxy\n  default_backend vsdata\n\
             # Bounds the wait for a header that never comes (2.6 has no client-hs).\n  timeout client 10s\n\
             backend vsdata\n  server v {BACKEND_V4}\n"
        ),
    );
    // Lines naming the real client, per frontend.
    let seen = |frontend: &str| {
        let want = format!("frontend={frontend} seen-client={CLIENT_V4}");
        lb.output().lines().filter(|l| l.trim() == want).count()
    };
    let work = tempfile::tempdir().unwrap();
    let upload = common::servers::upload_source(work.path());
    let upload_sha = sha256_file(&upload);
    let cfg_dir = tempdir();
    let cfg = cfg_dir.path().join("ftpgate.yaml");
    for version in ["v1", "v2"] {
        // No CLI flag for the data side: the YAML keys.
        fs::write(
            &cfg,
            format!("backend_proxy_protocol: {version}\nbackend_proxy_protocol_data: true\n"),
        )
        .unwrap();
        let mut opts = topo.ftpgate_options(SocketAddr::new(IpAddr::V4(lb_ip), 21));
        opts.extra_args = vec!["--config".into(), cfg.display().to_string()];
        let gate = topo.start_ftpgate(opts);
        let ctx = || {
            format!(
                "{}--- haproxy ---\n{}\n--- vsftpd ---\n{}",
                gate.describe(),
                lb.output(),
                server.logs()
            )
        };
        // haproxy may still be starting: ftpgate then answers 421.
        wait_banner(&topo.client, topo.proxy_v4()).unwrap_or_else(|e| panic!("{e}\n{}", ctx()));
        let target = FtpTarget::new(topo.proxy_v4());
        for mode in [Passive::Epsv, Passive::Pasv] {
            let what = format!("{version} {mode:?}");
            let before = seen("data");
            let out = work.path().join(format!("{version}-{mode:?}.bin"));
            let t = clients::curl_download(&topo.client, &target, BIG_FILE, &out, mode);
            t.assert_success(&ctx());
            assert_eq!(sha256_file(&out), server.root.big_sha256(), "{what}\n{t}");
            wait_for(
                &format!("{what}: haproxy's data line for the download"),
                || seen("data") > before,
                ctx,
            );

            let before = seen("data");
            let name = format!("{version}-{mode:?}.bin");
            let t = clients::curl_upload(
                &topo.client,
                &target,
                &upload,
                &format!("{UPLOAD_DIR}/{name}"),
                mode,
            );
            t.assert_success(&ctx());
            assert_eq!(
                sha256_file(&server.root.uploaded(&name)),
                upload_sha,
                "{what}\n{t}"
            );
            wait_for(
                &format!("{what}: haproxy's data line for the upload"),
                || seen("data") > before,
                ctx,
            );
        }
        assert!(seen("ctl") > 0, "control lines name the client\n{}", ctx());
        // Every data connection haproxy accepted named the real client (never ftpgate).
        let data_lines: Vec<_> = lb
            .output()
            .lines()
            .filter(|l| l.starts_with("frontend=data "))
            .map(str::to_owned)
            .collect();
        assert!(
            data_lines
                .iter()
                .all(|l| l.trim() == format!("frontend=data seen-client={CLIENT_V4}")),
            "{data_lines:?}\n{}",
            ctx()
        );
        gate.assert_no_password();
    }
}

/// Points the system resolver of `ns` (glibc, through `ip netns exec`'s bind mount of
/// /etc/netns/<ns>/resolv.conf) at `server`; removed on drop.
struct NetnsResolvConf(PathBuf);

impl NetnsResolvConf {
    fn new(ns: &Netns, server: Ipv4Addr) -> Self {
        let dir = Path::new("/etc/netns").join(ns.name());
        fs::create_dir_all(&dir).unwrap();
        fs::write(
            dir.join("resolv.conf"),
            format!("nameserver {server}\noptions timeout:1 attempts:1\n"),
        )
        .unwrap();
        NetnsResolvConf(dir)
    }
}

impl Drop for NetnsResolvConf {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn session_backends(logs: &str) -> Vec<String> {
    logs.lines()
        .filter(|l| l.contains("session started"))
        .filter_map(|l| {
            let b = l.split("backend=").nth(1)?;
            Some(b.split(['}', ' ', ':']).next()?.to_string())
        })
        .collect()
}

#[test]
fn dnsmasq_names_re_resolve_while_a_session_runs() {
    if !common::e2e_enabled("dnsmasq_names_re_resolve_while_a_session_runs") {
        return;
    }
    let topo = ReverseTopology::new();
    let ips: [Ipv4Addr; 3] = [
        BACKEND_V4,
        Ipv4Addr::new(10, 0, 0, 3),
        Ipv4Addr::new(10, 0, 0, 4),
    ];
    let dns_ip = Ipv4Addr::new(10, 0, 0, 53);
    for ip in &ips[1..] {
        topo.backend.addr("eth0", &format!("{ip}/24"));
    }
    topo.backend.addr("eth0", &format!("{dns_ip}/24"));
    let servers: Vec<FtpServer> = ips
        .iter()
        .map(|&ip| {
            FtpServer::start_on(
                &topo.topo,
                &topo.backend,
                SocketAddr::new(IpAddr::V4(ip), 21),
                ServerKind::Vsftpd,
            )
        })
        .collect();
    let dir = tempdir();
    let hosts = dir.path().join("farm.hosts");
    let set_hosts = |members: &[Ipv4Addr]| {
        let text: String = members
            .iter()
            .map(|ip| format!("{ip} ftp.farm.test\n"))
            .collect();
        fs::write(&hosts, text).unwrap();
    };
    set_hosts(&ips[..2]);
    let hosts_arg = format!("--addn-hosts={}", hosts.display());
    let listen_arg = format!("--listen-address={dns_ip}");
    let dns = Daemon::start(
        &topo.topo,
        &topo.backend,
        "/usr/sbin/dnsmasq",
        &[
            "--keep-in-foreground",
            "--log-facility=-",
            "--log-queries",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            &hosts_arg,
            &listen_arg,
            "--bind-interfaces",
            "--user=root",
            "--pid-file",
            "--local-ttl=0",
        ],
        tempdir(),
    );
    let _resolv = NetnsResolvConf::new(&topo.proxy, dns_ip);
    let mut opts = topo.ftpgate_options(topo.backend_addr());
    opts.backend.clear();
    opts.extra_args = vec![
        "--backend".into(),
        "ftp.farm.test:21".into(),
        "--backend-resolve-interval".into(),
        "300ms".into(),
        "--admin-listen".into(),
        "127.0.0.1:9464".into(),
    ];
    // dnsmasq answers once it is up; ftpgate resolves at start.
    wait_for(
        "dnsmasq",
        || dns.output().contains("started"),
        || dns.output(),
    );
    let gate = topo.start_ftpgate(opts);
    let ctx = || format!("{}--- dnsmasq ---\n{}", gate.describe(), dns.output());
    let target = FtpTarget::new(topo.proxy_v4());
    let list = |n: usize| {
        for _ in 0..n {
            clients::curl_list(&topo.client, &target, LIST_DIR, Passive::Epsv)
                .assert_success(&ctx());
        }
    };
    list(6);
    let seen = session_backends(&gate.logs());
    assert!(
        seen.iter().any(|b| *b == ips[0].to_string()),
        "{seen:?}\n{}",
        ctx()
    );
    assert!(
        seen.iter().any(|b| *b == ips[1].to_string()),
        "{seen:?}\n{}",
        ctx()
    );
    assert!(
        !seen.iter().any(|b| *b == ips[2].to_string()),
        "{seen:?}\n{}",
        ctx()
    );

    // A long session, then the farm changes under it: .2 leaves, .4 joins.
    let (ready_tx, ready_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let control = topo.proxy_v4();
    let long = topo.client.spawn_thread(move || -> Result<String, String> {
        let mut c = FtpControl::connect(control).map_err(|e| e.to_string())?;
        c.login(FTP_USER, FTP_PASS).map_err(|e| e.to_string())?;
        ready_tx.send(()).unwrap();
        go_rx
            .recv_timeout(Duration::from_secs(60))
            .map_err(|e| e.to_string())?;
        let data = SocketAddr::new(control.ip(), c.epsv().map_err(|e| e.to_string())?);
        let mut d = std::net::TcpStream::connect_timeout(&data, Duration::from_secs(10))
            .map_err(|e| e.to_string())?;
        c.send(&format!("RETR {BIG_FILE}"))
            .map_err(|e| e.to_string())?;
        let mut body = Vec::new();
        std::io::Read::read_to_end(&mut d, &mut body).map_err(|e| e.to_string())?;
        let _ = c.read_reply();
        let _ = c.read_reply();
        Ok(sha256_bytes(&body))
    });
    ready_rx.recv_timeout(WAIT).unwrap();
    set_hosts(&ips[1..]);
    assert!(std::process::Command::new("kill")
        .args(["-HUP", &dns.pid.to_string()])
        .status()
        .unwrap()
        .success());
    wait_for(
        "the re-resolution",
        || {
            gate.logs().lines().any(|l| {
                l.contains("backend members changed")
                    && l.contains(&format!("removed=[{}:21]", ips[0]))
            })
        },
        ctx,
    );
    go_tx.send(()).unwrap();
    let sha = long
        .join()
        .unwrap()
        .unwrap_or_else(|e| panic!("long session: {e}\n{}", ctx()));
    assert!(
        servers.iter().any(|s| s.root.big_sha256() == sha),
        "the running session finished byte-exact"
    );
    let before = session_backends(&gate.logs()).len();
    list(6);
    let after: Vec<String> = session_backends(&gate.logs()).split_off(before);
    assert!(!after.contains(&ips[0].to_string()), "{after:?}\n{}", ctx());
    assert!(after.contains(&ips[2].to_string()), "{after:?}\n{}", ctx());

    // The name stops resolving (NXDOMAIN): the last members stay.
    set_hosts(&[]);
    assert!(std::process::Command::new("kill")
        .args(["-HUP", &dns.pid.to_string()])
        .status()
        .unwrap()
        .success());
    wait_for(
        "the failed lookup",
        || {
            gate.logs()
                .contains("backend name does not resolve; keeping its last members")
        },
        ctx,
    );
    list(2);
    // Counted, and the last members are still the farm (in /metrics and /readyz).
    let metrics = http_get(&topo.proxy, "/metrics");
    let failures = metrics
        .lines()
        .find(|l| {
            l.starts_with("ftpgate_backend_resolve_failures_total{backend=\"ftp.farm.test:21\"}")
        })
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(failures >= 1.0, "{metrics}");
    assert!(
        metrics.contains("ftpgate_backend_members{backend=\"ftp.farm.test:21\"} 2"),
        "{metrics}"
    );
    let ready = http_get(&topo.proxy, "/readyz");
    for ip in &ips[1..] {
        assert!(
            ready.contains(&format!("backend {ip}:21 (ftp.farm.test:21)")),
            "{ready}"
        );
    }
}

/// `GET path` from the admin listener on the proxy host's loopback; the whole response.
fn http_get(ns: &Netns, path: &'static str) -> String {
    ns.spawn_thread(move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect_timeout(
            &"127.0.0.1:9464".parse().unwrap(),
            Duration::from_secs(5),
        )
        .unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    })
    .join()
    .unwrap()
}

#[test]
fn banner_check_takes_a_full_vsftpd_out() {
    if !common::e2e_enabled("banner_check_takes_a_full_vsftpd_out") {
        return;
    }
    let topo = ReverseTopology::new();
    let second = second_backend_address(&topo);
    // vsftpd at max_clients answers "421 There are too many connected users".
    let full = FtpServer::start_with(
        &topo.topo,
        &topo.backend,
        topo.backend_addr(),
        ServerKind::Vsftpd,
        "max_clients=1\n",
    );
    let good = FtpServer::start_on(
        &topo.topo,
        &topo.backend,
        SocketAddr::new(IpAddr::V4(second), 21),
        ServerKind::Vsftpd,
    );
    // Someone holds the only slot.
    let (hold_tx, hold_rx) = mpsc::channel::<()>();
    let (held_tx, held_rx) = mpsc::channel();
    let full_addr = full.addr;
    let holder = topo.proxy.spawn_thread(move || {
        let c = FtpControl::connect(full_addr);
        held_tx.send(c.is_ok()).unwrap();
        let _ = hold_rx.recv_timeout(Duration::from_secs(120));
        drop(c);
    });
    assert!(
        held_rx.recv_timeout(WAIT).unwrap(),
        "the holder got the slot"
    );
    let mut opts = topo.ftpgate_options(full.addr);
    opts.backend.push(good.addr);
    opts.extra_args = vec!["--health-check".into(), "banner".into()];
    let gate = topo.start_ftpgate(opts);
    let ctx = || gate.describe();
    wait_for(
        "the banner check's verdict",
        || {
            gate.logs().lines().any(|l| {
                l.contains("backend down (health check)")
                    && l.contains(&format!("backend={}", full.addr))
                    && l.contains("421")
            })
        },
        ctx,
    );
    // Every session now lands on the good server (TCP-wise the full one is fine).
    let target = FtpTarget::new(topo.proxy_v4());
    for _ in 0..4 {
        clients::curl_list(&topo.client, &target, LIST_DIR, Passive::Epsv).assert_success(&ctx());
    }
    let seen = session_backends(&gate.logs());
    assert_eq!(seen, vec![second.to_string(); 4], "{}", ctx());
    hold_tx.send(()).unwrap();
    holder.join().unwrap();
}

#[test]
fn login_check_finds_firewalled_data_ports_tcp_and_banner_do_not() {
    if !common::e2e_enabled("login_check_finds_firewalled_data_ports_tcp_and_banner_do_not") {
        return;
    }
    let topo = ReverseTopology::new();
    let second = second_backend_address(&topo);
    // The first server's passive ports are dropped by a firewall in front of it: it
    // greets and logs in fine, and every transfer hangs.
    let blocked = FtpServer::start_with(
        &topo.topo,
        &topo.backend,
        topo.backend_addr(),
        ServerKind::Vsftpd,
        "pasv_min_port=40000\npasv_max_port=40009\n",
    );
    topo.backend.run_ok(
        "iptables",
        &[
            "-A",
            "INPUT",
            "-p",
            "tcp",
            "-d",
            &BACKEND_V4.to_string(),
            "--dport",
            "40000:40009",
            "-j",
            "DROP",
        ],
    );
    let good = FtpServer::start_on(
        &topo.topo,
        &topo.backend,
        SocketAddr::new(IpAddr::V4(second), 21),
        ServerKind::Vsftpd,
    );
    let cfg_dir = tempdir();
    let cfg = cfg_dir.path().join("ftpgate.yaml");
    let verdicts = |check: &str| -> (String, String) {
        fs::write(
            &cfg,
            format!(
                "health:\n  check: {check}\n  interval: 500ms\n  timeout: 2s\n  user: {FTP_USER}\n  password: {FTP_PASS}\n"
            ),
        )
        .unwrap();
        let mut opts = topo.ftpgate_options(blocked.addr);
        opts.backend.push(good.addr);
        opts.extra_args = vec!["--config".into(), cfg.display().to_string()];
        let gate = topo.start_ftpgate(opts);
        // Two full rounds: every member has its verdict.
        wait_for(
            "two health-check rounds",
            || {
                gate.logs().matches("backend up").count()
                    + gate.logs().matches("backend down (health check)").count()
                    >= 2
            },
            || gate.describe(),
        );
        let logs = gate.logs();
        gate.assert_no_password();
        (logs, gate.describe())
    };
    let down_line = format!("backend={}", blocked.addr);
    for check in ["tcp", "banner"] {
        let (logs, ctx) = verdicts(check);
        assert!(
            !logs
                .lines()
                .any(|l| l.contains("backend down") && l.contains(&down_line)),
            "{check} cannot see the firewall\n{ctx}"
        );
    }
    let (logs, ctx) = verdicts("login");
    assert!(
        logs.lines()
            .any(|l| l.contains("backend down (health check)") && l.contains(&down_line)),
        "login finds the firewalled data ports\n{ctx}"
    );
    assert!(
        logs.lines()
            .any(|l| l.contains("backend up") && l.contains(&format!("backend={}", good.addr))),
        "login passes a healthy vsftpd (EPSV + LIST over a real data connection)\n{ctx}"
    );
}

#[test]
fn user_routing_sends_each_user_to_its_real_server() {
    if !common::e2e_enabled("user_routing_sends_each_user_to_its_real_server") {
        return;
    }
    let topo = ReverseTopology::new();
    let second = second_backend_address(&topo);
    let a = topo.start_backend(ServerKind::Vsftpd);
    let b = FtpServer::start_on(
        &topo.topo,
        &topo.backend,
        SocketAddr::new(IpAddr::V4(second), 21),
        ServerKind::Vsftpd,
    );
    // Route the user to the server the name's hash would NOT pick, so only the
    // route (not luck) can put every session there.
    let score = |s: &FtpServer| ftpgate::farm::policy::hrw_score(FTP_USER, s.addr, 1);
    let (routed, first) = if score(&a) < score(&b) {
        (a, b)
    } else {
        (b, a)
    };
    let cfg_dir = tempdir();
    let cfg = cfg_dir.path().join("ftpgate.yaml");
    fs::write(
        &cfg,
        format!("balance: user\ngreeting: farm ready\nroutes:\n  - {{user: {FTP_USER}, backends: ['{}']}}\n", routed.addr),
    )
    .unwrap();
    let mut opts = topo.ftpgate_options(first.addr);
    opts.backend.push(routed.addr);
    opts.extra_args = vec!["--config".into(), cfg.display().to_string()];
    let gate = topo.start_ftpgate(opts);
    let ctx = || {
        format!(
            "{}--- routed vsftpd ---\n{}\n--- other vsftpd ---\n{}",
            gate.describe(),
            routed.logs(),
            first.logs()
        )
    };
    let target = FtpTarget::new(topo.proxy_v4());
    let work = tempfile::tempdir().unwrap();
    // curl and lftp: ftpgate's own greeting, the server's swallowed, USER replayed.
    for mode in [Passive::Epsv, Passive::Pasv] {
        let out = work.path().join(format!("{mode:?}.bin"));
        let t = clients::curl_download(&topo.client, &target, BIG_FILE, &out, mode);
        t.assert_success(&ctx());
        assert!(
            t.stderr.contains("220 farm ready") || t.stdout.contains("220 farm ready"),
            "{t}"
        );
        assert_eq!(
            sha256_file(&out),
            routed.root.big_sha256(),
            "{mode:?}: the routed server's file\n{t}"
        );
        clients::lftp_list(&topo.client, &target, LIST_DIR, mode).assert_success(&ctx());
    }
    let logins = |s: &FtpServer| s.logs().matches("OK LOGIN").count();
    assert_eq!(logins(&routed), 4, "{}", ctx());
    assert_eq!(logins(&first), 0, "{}", ctx());
    gate.assert_no_password();
}
