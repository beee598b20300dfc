//! End-to-end tests of `ftpgate probe` (issue 15): each diagnosis is produced
//! by the real fault, with real servers (vsftpd), real NAT and firewalls in
//! network namespaces, and goes away when the fault is removed.
//!
//! Needs root and `scripts/install-test-deps.sh`; skips otherwise (fails if
//! `CI` is set).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use common::addrs::*;
use common::firewall;
use common::gateway::{self, GatewayTopology};
use common::probe::{make_certificates, probe, url, NatServer, ProbeRun};
use common::proxy::{Ftpgate, FtpgateOptions, FTPGATE_BIN};
use common::servers::{FtpServer, ServerKind, FTP_PASS, FTP_USER};
use common::ReverseTopology;

/// Upper bound of one probe run (each of its waits is bounded by `--timeout`).
const BOUND: Duration = Duration::from_secs(90);
const PUBLIC_ADDR: &str = "pasv_address=203.0.113.1\n";

fn run(ns: &common::Netns, url: &str, extra: &[&str]) -> ProbeRun {
    let mut args = vec![url, "--json"];
    args.extend_from_slice(extra);
    probe(ns, &args, BOUND)
}

fn reason(run: &ProbeRun, step: &str) -> String {
    run.check(step)["reason"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        vec!["probe", "http://example.com/"],
        vec!["probe", "ftp://h/", "--modes", "xyz"],
        vec!["probe", "ftp://h/", "--password-file", "/nonexistent/pw"],
        vec!["probe", "ftp://h/", "--tls-eof-check"],
        vec!["probe"],
    ] {
        let out = Command::new(FTPGATE_BIN).args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
    }
}

/// (1) vsftpd behind a NAT router, without `pasv_address`: its `227` carries
/// 10.0.0.2. With `pasv_address` set to the public address, every check passes.
#[test]
fn server_behind_nat_announcing_its_private_address() {
    if !common::e2e_enabled("server_behind_nat_announcing_its_private_address") {
        return;
    }
    let topo = ReverseTopology::new();
    let nat = NatServer::new(&topo);
    let _broken = nat.vsftpd(21, (50000, 50049), "");
    let _fixed = nat.vsftpd(2121, (50050, 50099), PUBLIC_ADDR);

    let broken = run(
        &topo.client,
        &url("ftp", nat.public(21), ""),
        &["--timeout", "3s"],
    );
    broken.assert_verdict(
        "PASV",
        "passive_private_address",
        "server announces 10.0.0.2 in 227 (private): set pasv_address",
    );
    let reply = broken.check("PASV")["reply"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        reply.starts_with("227 ") && reply.contains("(10,0,0,2,"),
        "{broken}"
    );
    // The port itself is forwarded: clients that ignore the address work.
    assert!(reason(&broken, "PASV").contains("curl"), "{broken}");
    let details = &broken.check("PASV")["details"];
    assert_eq!(details["announced_is_private"], true, "{broken}");
    assert_eq!(details["control_address_fallback_ok"], true, "{broken}");
    // EPSV carries no address, active mode is not affected.
    for step in ["EPSV", "EPRT", "PORT"] {
        assert_eq!(broken.check(step)["status"], "pass", "{step}:\n{broken}");
    }
    assert_eq!(broken.code, Some(1), "{broken}");
    broken.assert_no_password();

    let fixed = run(
        &topo.client,
        &url("ftp", nat.public(2121), ""),
        &["--timeout", "3s"],
    );
    fixed.assert_all_pass();
}

/// (2) A firewall on the router drops the forwarded passive range.
#[test]
fn firewall_dropping_the_passive_range() {
    if !common::e2e_enabled("firewall_dropping_the_passive_range") {
        return;
    }
    let topo = ReverseTopology::new();
    let nat = NatServer::new(&topo);
    let _server = nat.vsftpd(21, (50000, 50099), PUBLIC_ADDR);
    nat.drop_forwarded("-A", "50000:50099");
    let target = url("ftp", nat.public(21), "");

    let broken = run(&topo.client, &target, &["--timeout", "2s"]);
    for step in ["EPSV", "PASV"] {
        broken.assert_verdict(
            step,
            "passive_unreachable",
            "passive ports unreachable: open",
        );
    }
    for step in ["EPRT", "PORT"] {
        assert_eq!(broken.check(step)["status"], "pass", "{step}:\n{broken}");
    }
    assert_eq!(broken.code, Some(1), "{broken}");

    nat.drop_forwarded("-D", "50000:50099");
    run(&topo.client, &target, &["--timeout", "2s"]).assert_all_pass();
}

/// (3) The client sits behind a masquerading router without an FTP helper:
/// the server refuses `PORT 10,1,0,2,...` (not the address it sees). With
/// plain routing instead of NAT, active mode works.
#[test]
fn active_mode_blocked_by_client_side_nat() {
    if !common::e2e_enabled("active_mode_blocked_by_client_side_nat") {
        return;
    }
    let gw = GatewayTopology::new();
    gw.masquerade();
    let _server = gw.start_server(ServerKind::Vsftpd, false);
    let target = url(
        "ftp",
        SocketAddr::new(IpAddr::V4(gateway::SERVER_V4), 21),
        "",
    );

    let broken = run(&gw.client, &target, &["--timeout", "3s"]);
    for step in ["EPRT", "PORT"] {
        broken.assert_verdict(step, "active_rejected", "use passive mode");
        assert!(
            reason(&broken, step).contains("NAT on the client side"),
            "{broken}"
        );
    }
    for step in ["EPSV", "PASV"] {
        assert_eq!(broken.check(step)["status"], "pass", "{step}:\n{broken}");
    }
    assert_eq!(broken.code, Some(1), "{broken}");

    // Fault removed: no NAT; the server routes to the LAN.
    gw.gw("iptables", &["-w", "-t", "nat", "-F", "POSTROUTING"]);
    gw.server
        .route(&["10.1.0.0/24", "via", &gateway::GW_WAN_V4.to_string()]);
    run(&gw.client, &target, &["--timeout", "3s"]).assert_all_pass();
}

/// (4) A conntrack firewall in front of the server forgets the idle control
/// connection during a transfer: `--idle-check` finds it and bisects the idle
/// time; with ftpgate's NOOP keepalive in front, it finds nothing.
#[test]
fn idle_check_finds_a_firewall_dropping_idle_control_connections() {
    if !common::e2e_enabled("idle_check_finds_a_firewall_dropping_idle_control_connections") {
        return;
    }
    let topo = ReverseTopology::new();
    let nat = NatServer::new(&topo);
    let _direct = nat.vsftpd(21, (50000, 50099), PUBLIC_ADDR);
    // The server ftpgate relays to: private, as usual behind ftpgate.
    let behind_gate = FtpServer::start_with(
        &topo.topo,
        &topo.backend,
        SocketAddr::new(IpAddr::V4(BACKEND_V4), 2100),
        ServerKind::Vsftpd,
        "pasv_min_port=50100\npasv_max_port=50199\n",
    );
    firewall::install_idle_dropping_firewall(&topo.backend, 2);
    let args = ["--timeout", "3s", "--modes", "epsv", "--idle-check", "6s"];

    let started = Instant::now();
    let broken = run(&topo.client, &url("ftp", nat.public(21), "upload/"), &args);
    broken.assert_verdict(
        "idle",
        "idle_drop",
        "idle during a transfer: enable NOOP keepalive",
    );
    // Bisection: broken at 6 s and 3 s, fine at 1.5 s → "~2 s".
    let why = reason(&broken, "idle");
    let secs: u32 = why
        .split_once('~')
        .and_then(|(_, r)| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no ~N s in {why:?}\n{broken}"));
    assert!((1..=4).contains(&secs), "estimate {secs} s:\n{broken}");
    assert!(
        firewall::invalid_drops(&topo.backend, "OUTPUT") > 0,
        "{}",
        firewall::describe(&topo.backend)
    );
    assert_eq!(broken.code, Some(1), "{broken}");
    assert!(
        started.elapsed() < Duration::from_secs(45),
        "{:?}",
        started.elapsed()
    );

    let mut options = FtpgateOptions::new(
        vec![SocketAddr::new(IpAddr::V4(PROXY_PUBLIC_V4), 2121)],
        behind_gate.addr,
        vec![IpAddr::V4(PROXY_PUBLIC_V4)],
    );
    options.data_ports = (51000, 51099);
    options.extra_args = vec!["--noop-interval".into(), "1s".into()];
    let gate = Ftpgate::start(&topo.proxy, options);
    let fixed = run(
        &topo.client,
        &url(
            "ftp",
            SocketAddr::new(IpAddr::V4(PROXY_PUBLIC_V4), 2121),
            "upload/",
        ),
        &args,
    );
    assert_eq!(
        fixed.check("idle")["verdict"],
        "ok",
        "{fixed}\n{}",
        gate.describe()
    );
    fixed.assert_all_pass();
    gate.assert_no_password();
}

/// (5) vsftpd with `strict_ssl_read_eof=YES` answers `426` to an upload that
/// ends without TLS close_notify; with `NO` both uploads succeed.
#[test]
fn tls_eof_check_finds_a_strict_server() {
    if !common::e2e_enabled("tls_eof_check_finds_a_strict_server") {
        return;
    }
    let topo = ReverseTopology::new();
    let nat = NatServer::new(&topo);
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = make_certificates(dir.path(), IpAddr::V4(PROXY_PUBLIC_V4));
    let tls = format!(
        "ssl_enable=YES\nrsa_cert_file={cert}\nrsa_private_key_file={key}\n\
         require_ssl_reuse=NO\nssl_ciphers=HIGH\n{PUBLIC_ADDR}"
    );
    let _strict = nat.vsftpd(
        21,
        (50000, 50049),
        &format!("{tls}strict_ssl_read_eof=YES\n"),
    );
    let _lax = nat.vsftpd(
        2121,
        (50050, 50099),
        &format!("{tls}strict_ssl_read_eof=NO\n"),
    );
    let args = [
        "--timeout",
        "5s",
        "--modes",
        "epsv,pasv",
        "--ca-file",
        &ca,
        "--tls-eof-check",
    ];

    let broken = run(
        &topo.client,
        &url("ftpes", nat.public(21), "upload/"),
        &args,
    );
    broken.assert_verdict("tls_eof", "tls_eof_strict", "strict_ssl_read_eof");
    assert!(reason(&broken, "tls_eof").contains("426"), "{broken}");
    assert_eq!(broken.check("tls")["verdict"], "ok", "{broken}");
    assert!(
        reason(&broken, "tls").contains("CN=203.0.113.1"),
        "{broken}"
    );
    assert_eq!(broken.code, Some(1), "{broken}");

    let fixed = run(
        &topo.client,
        &url("ftpes", nat.public(2121), "upload/"),
        &args,
    );
    fixed.assert_all_pass();

    // Implicit TLS (ftps://): TLS from the first byte, data connections too.
    let _implicit = nat.vsftpd(990, (50100, 50149), &format!("{tls}implicit_ssl=YES\n"));
    let implicit = run(
        &topo.client,
        &format!("ftps://{FTP_USER}:{FTP_PASS}@{}/upload/", PROXY_PUBLIC_V4),
        &["--timeout", "5s", "--ca-file", &ca, "--stor"],
    );
    implicit.assert_all_pass();
    assert!(reason(&implicit, "tls").contains("TLSv1"), "{implicit}");
    implicit.assert_no_password();
}

/// Connects from `ns` until a session gets a `220` (the server may still be
/// counting a previous session) and keeps it open.
fn hold_session(ns: &common::Netns, addr: SocketAddr) -> TcpStream {
    ns.spawn_thread(move || {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut line = String::new();
            BufReader::new(&s).read_line(&mut line).unwrap();
            if line.starts_with("220") {
                return s;
            }
            assert!(Instant::now() < deadline, "no 220 from {addr}: {line:?}");
            let _ = (&s).write_all(b"QUIT\r\n");
        }
    })
    .join()
    .unwrap()
}

/// (6) The server greets with `421`: this client already holds its one
/// allowed session (vsftpd `max_per_ip=1`). With room for two, it passes.
#[test]
fn banner_421_from_a_full_server() {
    if !common::e2e_enabled("banner_421_from_a_full_server") {
        return;
    }
    let topo = ReverseTopology::new();
    let nat = NatServer::new(&topo);
    let _full = nat.vsftpd(21, (50000, 50049), &format!("{PUBLIC_ADDR}max_per_ip=1\n"));
    let _roomy = nat.vsftpd(
        2121,
        (50050, 50099),
        &format!("{PUBLIC_ADDR}max_per_ip=2\n"),
    );
    let _held = hold_session(&topo.client, nat.public(21));
    let _held2 = hold_session(&topo.client, nat.public(2121));

    let broken = run(
        &topo.client,
        &url("ftp", nat.public(21), ""),
        &["--timeout", "3s"],
    );
    broken.assert_verdict("banner", "banner_rejected", "max_per_ip");
    let reply = broken.check("banner")["reply"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(reply.starts_with("421"), "{broken}");
    assert_eq!(broken.code, Some(1), "{broken}");

    run(
        &topo.client,
        &url("ftp", nat.public(2121), ""),
        &["--timeout", "3s"],
    )
    .assert_all_pass();
}

/// (7) vsftpd on a private address behind ftpgate: every check passes, in
/// JSON and in the table; the password never shows.
#[test]
fn healthy_server_behind_ftpgate_passes_every_check() {
    if !common::e2e_enabled("healthy_server_behind_ftpgate_passes_every_check") {
        return;
    }
    let topo = ReverseTopology::new();
    let _server = topo.start_backend(ServerKind::Vsftpd);
    let gate = topo.start_ftpgate(topo.ftpgate_options(topo.backend_addr()));
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("pw");
    std::fs::write(&pw, format!("{FTP_PASS}\n")).unwrap();
    let pw = pw.display().to_string();
    let no_pw_url = format!("ftp://{FTP_USER}@{}/upload/", topo.proxy_v4());

    let ok = run(
        &topo.client,
        &no_pw_url,
        &[
            "--password-file",
            &pw,
            "--retr",
            "../pub/hello.txt",
            "--stor",
        ],
    );
    ok.assert_all_pass();
    for step in ["EPSV", "PASV", "EPRT", "PORT"] {
        let why = reason(&ok, step);
        assert!(
            why.contains("RETR ../pub/hello.txt 22 bytes"),
            "{why}\n{ok}"
        );
        assert!(
            why.contains("STOR ftpgate-probe.tmp 262144 bytes"),
            "{why}\n{ok}"
        );
    }

    let table = probe(&topo.client, &[&url("ftp", topo.proxy_v4(), "")], BOUND);
    assert_eq!(table.code, Some(0), "{table}");
    for step in ["banner", "login", "EPSV", "PASV", "EPRT", "PORT"] {
        assert!(table.stdout.contains(&format!("✓ {step}")), "{table}");
    }
    assert!(!table.stdout.contains('✗'), "{table}");
    assert!(
        table.stdout.contains(&format!("ftp://{FTP_USER}:***@")),
        "{table}"
    );
    assert!(
        table.stderr.contains("probe: "),
        "progress on stderr:\n{table}"
    );
    table.assert_no_password();
    ok.assert_no_password();
    gate.assert_no_password();
}
