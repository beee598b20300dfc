//! End-to-end tests of active-mode FTP (PORT/EPRT) through ftpgate in reverse
//! mode, with real daemons (vsftpd, proftpd, pyftpdlib) as backends and real
//! clients (curl `-P`, lftp with `ftp:passive-mode off`, a raw control
//! client) on the public side, for each `--backend-data-mode`.
//!
//! Topology: see `common::active::ActiveTopology`. The backend has no route
//! to the client, so an active transfer only completes when ftpgate relays
//! it. Each test builds its own namespaces, so tests run in parallel.
//!
//! Needs root and `scripts/install-test-deps.sh`; skips otherwise (fails if
//! `CI` is set).

mod common;

use std::net::{IpAddr, SocketAddr};

use common::active::{
    self, active_rewrites, assert_nothing_pending, backend_commands, bind_in, curl_active,
    eprt_arg, injected_setup_commands, is_verb, lftp_active, login_in, parse_active_command,
    port_arg, probe_from, retr_active, sent_commands, stor_active, wait_log_lines, ActiveTopology,
    BackendDataMode, CurlActive, Op, INTRUDER_V4,
};
use common::addrs::*;
use common::clients::{self, FtpControl, FtpTarget, Passive, Transcript};
use common::proxy::Ftpgate;
use common::servers::{
    upload_source, write_random_file, FtpServer, ServerKind, BIG_FILE, LIST_DIR, SMALL_FILE,
    UPLOAD_DIR,
};
use common::{sha256_bytes, sha256_file};

/// ftpgate's default data-port range (`FtpgateOptions::new`), which active
/// mode shares unless `--active-ports` is given.
const DATA_PORTS: std::ops::RangeInclusive<u16> = 50000..=50099;

/// Context attached to assertion failures: the proxy's and server's logs.
fn context(gate: &Ftpgate, server: &FtpServer) -> String {
    format!(
        "{}--- {} logs ---\n{}",
        gate.describe(),
        server.kind.name(),
        server.logs()
    )
}

fn v4(ip: std::net::Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(ip), port)
}

/// An active-mode client the suite drives.
#[derive(Clone, Copy, Debug)]
enum ActiveClient {
    Curl(CurlActive),
    Lftp,
}

impl ActiveClient {
    fn tag(self) -> &'static str {
        match self {
            ActiveClient::Curl(CurlActive::Port) => "curl-port",
            ActiveClient::Curl(CurlActive::Eprt) => "curl-eprt",
            ActiveClient::Lftp => "lftp",
        }
    }

    fn run(self, topo: &ActiveTopology, t: &FtpTarget, announce: IpAddr, op: Op<'_>) -> Transcript {
        match self {
            ActiveClient::Curl(f) => curl_active(&topo.client, t, announce, f, op),
            ActiveClient::Lftp => lftp_active(&topo.client, t, op),
        }
    }

    /// The client really used the active command it stands for (and never
    /// fell back to passive mode, nor curl from EPRT to PORT).
    fn check_dialogue(self, t: &Transcript, announce: IpAddr, ctx: &dyn Fn() -> String) {
        let sent = sent_commands(t);
        let (want, other) = match (self, announce) {
            (ActiveClient::Curl(CurlActive::Port), IpAddr::V4(_))
            | (ActiveClient::Lftp, IpAddr::V4(_)) => ("PORT", "EPRT"),
            _ => ("EPRT", "PORT"),
        };
        let active: Vec<&String> = sent.iter().filter(|c| is_verb(c, want)).collect();
        assert!(
            !active.is_empty(),
            "{}: no {want} sent:\n{t}\n{}",
            self.tag(),
            ctx()
        );
        for c in &active {
            let addr = parse_active_command(c)
                .unwrap_or_else(|| panic!("{}: unparsable {c:?}\n{t}", self.tag()));
            assert_eq!(addr.ip(), announce, "{}: {c:?}\n{t}", self.tag());
        }
        assert!(
            !sent
                .iter()
                .any(|c| is_verb(c, other) || is_verb(c, "PASV") || is_verb(c, "EPSV")),
            "{}: the client fell back from {want}:\n{t}\n{}",
            self.tag(),
            ctx()
        );
    }
}

const ACTIVE_CLIENTS: [ActiveClient; 3] = [
    ActiveClient::Curl(CurlActive::Port),
    ActiveClient::Curl(CurlActive::Eprt),
    ActiveClient::Lftp,
];

/// Downloads, uploads and lists with `clients` in active mode from the client
/// namespace through ftpgate; every transfer is checked by SHA-256.
fn active_client_suite(
    topo: &ActiveTopology,
    target: &FtpTarget,
    announce: IpAddr,
    server: &FtpServer,
    clients: &[ActiveClient],
    ctx: &dyn Fn() -> String,
) {
    let work = tempfile::tempdir().unwrap();
    let upload_src = upload_source(work.path());
    let upload_sha = sha256_file(&upload_src);
    let fam = if announce.is_ipv4() { "v4" } else { "v6" };

    for &client in clients {
        let tag = format!("{}-{fam}", client.tag());

        let out = work.path().join(format!("{tag}.bin"));
        let t = client.run(
            topo,
            target,
            announce,
            Op::Download {
                remote: BIG_FILE,
                local: &out,
            },
        );
        t.assert_success(&ctx());
        client.check_dialogue(&t, announce, ctx);
        assert_eq!(
            sha256_file(&out),
            server.root.big_sha256(),
            "{tag} download\n{t}"
        );

        let name = format!("{tag}.bin");
        let remote = format!("{UPLOAD_DIR}/{name}");
        let t = client.run(
            topo,
            target,
            announce,
            Op::Upload {
                local: &upload_src,
                remote: &remote,
            },
        );
        t.assert_success(&ctx());
        client.check_dialogue(&t, announce, ctx);
        assert_eq!(
            sha256_file(&server.root.uploaded(&name)),
            upload_sha,
            "{tag} upload\n{t}"
        );

        let t = client.run(topo, target, announce, Op::List { dir: LIST_DIR });
        t.assert_success(&ctx());
        client.check_dialogue(&t, announce, ctx);
        clients::assert_listing(&t, ctx);
    }
}

/// Passive clients (curl EPSV/PASV, lftp PASV) through ftpgate: used in
/// `active` backend mode, where ftpgate answers PASV/EPSV itself.
fn passive_client_suite(
    topo: &ActiveTopology,
    target: &FtpTarget,
    server: &FtpServer,
    ctx: &dyn Fn() -> String,
) {
    let work = tempfile::tempdir().unwrap();
    let upload_src = upload_source(work.path());
    let upload_sha = sha256_file(&upload_src);
    for mode in [Passive::Epsv, Passive::Pasv] {
        let tag = format!("passive-{mode:?}").to_lowercase();
        let out = work.path().join(format!("{tag}.bin"));
        let t = clients::curl_download(&topo.client, target, BIG_FILE, &out, mode);
        t.assert_success(&ctx());
        assert_eq!(sha256_file(&out), server.root.big_sha256(), "{tag}\n{t}");
        if mode == Passive::Pasv {
            let lines = t.reply_lines("227");
            assert!(
                !lines.is_empty() && lines.iter().all(|l| l.contains("203,0,113,1,")),
                "227 must advertise ftpgate's public address: {lines:?}\n{t}\n{}",
                ctx()
            );
        } else {
            assert!(
                t.reply_lines("229").iter().any(|l| l.contains("|||")),
                "no 229 reply:\n{t}"
            );
        }

        let name = format!("{tag}.bin");
        let t = clients::lftp_upload(
            &topo.client,
            target,
            &upload_src,
            &format!("{UPLOAD_DIR}/{name}"),
            mode,
        );
        t.assert_success(&ctx());
        assert_eq!(
            sha256_file(&server.root.uploaded(&name)),
            upload_sha,
            "lftp {tag} upload\n{t}"
        );

        let t = clients::curl_list(&topo.client, target, LIST_DIR, mode);
        t.assert_success(&ctx());
        clients::assert_listing(&t, ctx);
    }
}

/// Asserts, from ftpgate's debug log and the backend's own protocol log, that
/// the backend saw the data-setup commands `mode` promises, and that every
/// PORT/EPRT it received names ftpgate's backend-side address.
fn assert_backend_data_setup(
    mode: BackendDataMode,
    gate: &Ftpgate,
    server: &FtpServer,
    client_active_verbs: &[&str],
    ctx: &dyn Fn() -> String,
) {
    let rewrites = active_rewrites(gate);
    let injected = injected_setup_commands(gate);
    let backend = backend_commands(server);
    let proxy_private = IpAddr::V4(PROXY_PRIVATE_V4);

    // Every PORT/EPRT ftpgate sent names its own backend-side address and a
    // port of its range.
    for (_, rewritten) in &rewrites {
        let a = parse_active_command(rewritten)
            .unwrap_or_else(|| panic!("unparsable rewrite {rewritten:?}\n{}", ctx()));
        assert_eq!(a.ip(), proxy_private, "rewritten {rewritten:?}");
        assert!(DATA_PORTS.contains(&a.port()), "rewritten {rewritten:?}");
    }
    if let Some(cmds) = &backend {
        for c in cmds
            .iter()
            .filter(|c| is_verb(c, "PORT") || is_verb(c, "EPRT"))
        {
            let a = parse_active_command(c)
                .unwrap_or_else(|| panic!("backend got unparsable {c:?}\n{}", ctx()));
            assert_eq!(
                a.ip(),
                proxy_private,
                "the backend was given a data address other than ftpgate's: {c:?}\n{}",
                ctx()
            );
        }
    }
    if let Some(cmds) = &backend {
        // The log parser works: the transfers themselves are there.
        for verb in ["RETR", "STOR", "LIST"] {
            assert!(
                cmds.iter().any(|c| is_verb(c, verb)),
                "no {verb} in the backend's logged commands {cmds:?}\n{}",
                ctx()
            );
        }
    }
    let backend_has = |verb: &str| {
        backend
            .as_ref()
            .map(|cmds| cmds.iter().any(|c| is_verb(c, verb)))
    };

    match mode {
        BackendDataMode::Same => {
            for verb in client_active_verbs {
                assert!(
                    rewrites
                        .iter()
                        .any(|(o, r)| is_verb(o, verb) && is_verb(r, verb)),
                    "same mode: no logged {verb} -> {verb} rewrite in {rewrites:?}\n{}",
                    ctx()
                );
                if let Some(has) = backend_has(verb) {
                    assert!(
                        has,
                        "same mode: the backend never received {verb}\n{}",
                        ctx()
                    );
                }
            }
            assert!(
                injected.is_empty(),
                "same mode: ftpgate injected {injected:?}"
            );
        }
        BackendDataMode::Passive => {
            assert!(
                rewrites.is_empty(),
                "passive mode: ftpgate forwarded PORT/EPRT: {rewrites:?}\n{}",
                ctx()
            );
            assert!(
                injected
                    .iter()
                    .any(|c| is_verb(c, "EPSV") || is_verb(c, "PASV")),
                "passive mode: ftpgate sent no EPSV/PASV: {injected:?}\n{}",
                ctx()
            );
            if let Some(has_epsv) = backend_has("EPSV") {
                assert!(
                    has_epsv || backend_has("PASV") == Some(true),
                    "passive mode: the backend received no EPSV/PASV\n{}",
                    ctx()
                );
                for verb in ["PORT", "EPRT"] {
                    assert_eq!(
                        backend_has(verb),
                        Some(false),
                        "passive mode: the backend received {verb}\n{}",
                        ctx()
                    );
                }
            }
        }
        BackendDataMode::Active => {
            assert!(
                injected.iter().any(|c| {
                    (is_verb(c, "PORT") || is_verb(c, "EPRT"))
                        && parse_active_command(c).map(|a| a.ip()) == Some(proxy_private)
                }),
                "active mode: ftpgate sent no PORT/EPRT for the passive clients: {injected:?}\n{}",
                ctx()
            );
            if backend.is_some() {
                assert_eq!(
                    backend_has("PORT"),
                    Some(true),
                    "active mode: the backend received no PORT\n{}",
                    ctx()
                );
                for verb in ["PASV", "EPSV"] {
                    assert_eq!(
                        backend_has(verb),
                        Some(false),
                        "active mode: the backend received {verb}\n{}",
                        ctx()
                    );
                }
            }
        }
    }
}

/// The full active-mode client matrix through ftpgate against `kind`.
fn active_matrix(kind: ServerKind, mode: BackendDataMode) {
    let topo = ActiveTopology::new();
    topo.assert_backend_cannot_reach_client();
    let server = topo.start_backend(kind);
    let gate = topo.start_ftpgate(topo.ftpgate_options(mode));
    let target = FtpTarget::new(topo.proxy_v4());
    let ctx = || context(&gate, &server);

    active_client_suite(
        &topo,
        &target,
        IpAddr::V4(CLIENT_V4),
        &server,
        &ACTIVE_CLIENTS,
        &ctx,
    );
    if mode == BackendDataMode::Active {
        passive_client_suite(&topo, &target, &server, &ctx);
    }
    assert_backend_data_setup(mode, &gate, &server, &["PORT", "EPRT"], &ctx);
    gate.assert_no_password();
}

macro_rules! matrix_tests {
    ($($name:ident: $kind:expr, $mode:expr;)*) => {$(
        #[test]
        fn $name() {
            if common::e2e_enabled(stringify!($name)) {
                active_matrix($kind, $mode);
            }
        }
    )*};
}

matrix_tests! {
    active_vsftpd_same: ServerKind::Vsftpd, BackendDataMode::Same;
    active_vsftpd_passive: ServerKind::Vsftpd, BackendDataMode::Passive;
    active_vsftpd_active: ServerKind::Vsftpd, BackendDataMode::Active;
    active_proftpd_same: ServerKind::Proftpd, BackendDataMode::Same;
    active_proftpd_passive: ServerKind::Proftpd, BackendDataMode::Passive;
    active_proftpd_active: ServerKind::Proftpd, BackendDataMode::Active;
    active_pyftpdlib_same: ServerKind::Pyftpdlib, BackendDataMode::Same;
    active_pyftpdlib_passive: ServerKind::Pyftpdlib, BackendDataMode::Passive;
    active_pyftpdlib_active: ServerKind::Pyftpdlib, BackendDataMode::Active;
}

/// The premise of this file, on its own: the backend cannot open a
/// connection to the client, while the proxy host can.
#[test]
fn topology_backend_cannot_reach_client() {
    if common::e2e_enabled("topology_backend_cannot_reach_client") {
        ActiveTopology::new().assert_backend_cannot_reach_client();
    }
}

/// Sends `line` and requires `code`; panics with the transcript and logs.
fn expect(c: &mut FtpControl, line: &str, code: u16, ctx: &dyn Fn() -> String) -> String {
    match c.cmd(line) {
        Ok((got, text)) if got == code => text,
        other => panic!(
            "{line:?}: expected {code}, got {other:?}\n--- control ---\n{}\n{}",
            c.transcript,
            ctx()
        ),
    }
}

/// A client-side listener plus the raw client's RETR through it, byte-exact.
fn active_retr_ok(
    c: &mut FtpControl,
    topo: &ActiveTopology,
    verb: &str,
    server: &FtpServer,
    ctx: &dyn Fn() -> String,
) -> SocketAddr {
    let listener = bind_in(&topo.client, v4(CLIENT_V4, 0));
    let addr = listener.local_addr().unwrap();
    let arg = if verb == "PORT" {
        port_arg(addr)
    } else {
        eprt_arg(addr)
    };
    expect(c, &format!("{verb} {arg}"), 200, ctx);
    let (peer, body) = retr_active(c, &listener, BIG_FILE).unwrap_or_else(|e| {
        panic!(
            "active RETR failed: {e}\n--- control ---\n{}\n{}",
            c.transcript,
            ctx()
        )
    });
    assert_eq!(sha256_bytes(&body), server.root.big_sha256(), "{verb} RETR");
    assert_nothing_pending(&listener, "client listener after the transfer");
    peer
}

/// Bounce protection: PORT/EPRT naming a host other than the client (on the
/// public side, or inside the private network) is refused with 500, and that
/// host never receives a connection, in every backend data mode.
#[test]
fn bounce_port_eprt_refused() {
    if !common::e2e_enabled("bounce_port_eprt_refused") {
        return;
    }
    let topo = ActiveTopology::new();
    let server = topo.start_backend(ServerKind::Vsftpd);
    let victims = [
        ("attacker v4", bind_in(&topo.attacker, v4(ATTACKER_V4, 0))),
        (
            "attacker v6",
            bind_in(&topo.attacker, SocketAddr::new(IpAddr::V6(ATTACKER_V6), 0)),
        ),
        ("intruder", bind_in(&topo.intruder, v4(INTRUDER_V4, 0))),
        // The backend itself: ftpgate must not be a way to reach it either.
        ("backend", bind_in(&topo.backend, v4(BACKEND_V4, 0))),
    ];
    let addr_of = |i: usize| victims[i].1.local_addr().unwrap();
    let nothing_pending = |when: &str| {
        for (name, l) in &victims {
            assert_nothing_pending(l, &format!("{name} listener {when}"));
        }
    };

    for mode in BackendDataMode::ALL {
        let gate = topo.start_ftpgate(topo.ftpgate_options(mode));
        let ctx = || context(&gate, &server);
        let refused = |c: &mut FtpControl, line: &str| {
            let text = expect(c, line, 500, &ctx);
            let verb = &line[..4];
            assert!(
                text.starts_with(&format!("500 Illegal {verb} command")),
                "{mode:?}: {line:?} got {text:?}"
            );
        };

        // IPv4 control connection.
        let mut c = login_in(&topo.client, topo.proxy_v4());
        for i in [0, 2, 3] {
            refused(&mut c, &format!("PORT {}", port_arg(addr_of(i))));
            refused(&mut c, &format!("EPRT {}", eprt_arg(addr_of(i))));
        }
        refused(&mut c, &format!("EPRT {}", eprt_arg(addr_of(1))));
        expect(&mut c, "NOOP", 200, &ctx);
        nothing_pending(&format!("{mode:?}: after the refusals and a NOOP"));

        // A transfer command after the refusals must not go to the victim
        // either (in passive mode ftpgate connects out itself at this point).
        c.send(&format!("RETR {SMALL_FILE}")).unwrap();
        let (mut code, _) = c.read_reply().unwrap();
        if code < 200 {
            code = c.read_reply().unwrap().0;
        }
        expect(&mut c, "NOOP", 200, &ctx);
        nothing_pending(&format!("{mode:?}: after RETR"));
        assert!(
            code >= 400,
            "{mode:?}: RETR without a data address succeeded:\n{}\n{}",
            c.transcript,
            ctx()
        );

        // The client's own address still works, on the same session.
        let peer = active_retr_ok(&mut c, &topo, "PORT", &server, &ctx);
        assert_eq!(peer.ip(), IpAddr::V4(PROXY_PUBLIC_V4), "{mode:?}");
        nothing_pending(&format!("{mode:?}: after a successful transfer"));
        let _ = c.cmd("QUIT");

        // IPv6 control connection: neither family may name another host.
        let mut c6 = login_in(&topo.client, topo.proxy_v6());
        refused(&mut c6, &format!("EPRT {}", eprt_arg(addr_of(1))));
        refused(&mut c6, &format!("EPRT {}", eprt_arg(addr_of(0))));
        refused(&mut c6, &format!("PORT {}", port_arg(addr_of(2))));
        expect(&mut c6, "NOOP", 200, &ctx);
        nothing_pending(&format!("{mode:?}: after the IPv6 refusals"));
        let _ = c6.cmd("QUIT");

        let warned = wait_log_lines(&gate, "bounce attempt refused", 10);
        assert_eq!(warned.len(), 10, "{mode:?}: bounce warnings\n{}", ctx());
        drop(gate);
    }
    // The backend never heard of any victim address.
    for cmd in backend_commands(&server).expect("vsftpd logs commands") {
        if let Some(a) = parse_active_command(&cmd) {
            assert_eq!(a.ip(), IpAddr::V4(PROXY_PRIVATE_V4), "backend got {cmd:?}");
        }
    }
}

/// `--allow-foreign 203.0.113.66/32` lets a client name that host (the
/// transfer goes there, byte-exact); other foreign hosts stay refused.
#[test]
fn allow_foreign_permits_listed_host() {
    if !common::e2e_enabled("allow_foreign_permits_listed_host") {
        return;
    }
    let topo = ActiveTopology::new();
    let server = topo.start_backend(ServerKind::Vsftpd);
    for mode in BackendDataMode::ALL {
        let mut options = topo.ftpgate_options(mode);
        options
            .extra_args
            .extend(["--allow-foreign".into(), format!("{ATTACKER_V4}/32")]);
        let gate = topo.start_ftpgate(options);
        let ctx = || context(&gate, &server);
        let mut c = login_in(&topo.client, topo.proxy_v4());

        let third = bind_in(&topo.attacker, v4(ATTACKER_V4, 0));
        let intruder = bind_in(&topo.intruder, v4(INTRUDER_V4, 0));
        for verb in ["PORT", "EPRT"] {
            let addr = third.local_addr().unwrap();
            let arg = if verb == "PORT" {
                port_arg(addr)
            } else {
                eprt_arg(addr)
            };
            expect(&mut c, &format!("{verb} {arg}"), 200, &ctx);
            let (peer, body) = retr_active(&mut c, &third, BIG_FILE).unwrap_or_else(|e| {
                panic!(
                    "{mode:?} {verb}: transfer to the allowed host failed: {e}\n{}\n{}",
                    c.transcript,
                    ctx()
                )
            });
            assert_eq!(peer.ip(), IpAddr::V4(PROXY_PUBLIC_V4), "{mode:?} {verb}");
            assert_eq!(
                sha256_bytes(&body),
                server.root.big_sha256(),
                "{mode:?} {verb}"
            );
            assert_nothing_pending(&third, "allowed host after its transfer");
        }
        let text = expect(
            &mut c,
            &format!("PORT {}", port_arg(intruder.local_addr().unwrap())),
            500,
            &ctx,
        );
        assert!(text.starts_with("500 Illegal PORT command"), "{text:?}");
        expect(&mut c, "NOOP", 200, &ctx);
        assert_nothing_pending(&intruder, "intruder (not in --allow-foreign)");
        let _ = c.cmd("QUIT");
    }
}

/// A host next to the backend (10.0.0.66) connects first to the port ftpgate
/// announced to the backend in the rewritten PORT: it gets nothing (and its
/// bytes go nowhere), and the real transfer then completes byte-exact. With
/// `--active-ports`, the announced port comes from that range.
#[test]
fn active_data_port_hijack_from_backend_segment() {
    if !common::e2e_enabled("active_data_port_hijack_from_backend_segment") {
        return;
    }
    let topo = ActiveTopology::new();
    let server = topo.start_backend(ServerKind::Vsftpd);
    let active_ports = 51000..=51099;
    let upload = {
        let mut v = vec![0u8; 3 * 1024 * 1024 + 17];
        // Non-repeating content, so any injected or lost bytes change the hash.
        for (i, b) in v.iter_mut().enumerate() {
            *b = (i.wrapping_mul(2_654_435_761) >> 13) as u8;
        }
        v
    };

    for mode in [BackendDataMode::Same, BackendDataMode::Active] {
        let mut options = topo.ftpgate_options(mode);
        options.extra_args.extend([
            "--active-ports".into(),
            format!("{}-{}", active_ports.start(), active_ports.end()),
        ]);
        let gate = topo.start_ftpgate(options);
        let ctx = || context(&gate, &server);
        let mut c = login_in(&topo.client, topo.proxy_v4());
        let listener = bind_in(&topo.client, v4(CLIENT_V4, 0));
        let own = listener.local_addr().unwrap();

        for (n, direction) in ["RETR", "STOR"].into_iter().enumerate() {
            expect(&mut c, &format!("PORT {}", port_arg(own)), 200, &ctx);
            // The 200 came from the backend, after ftpgate logged the rewrite.
            let lines = wait_log_lines(&gate, "active command rewritten", n + 1);
            let (original, rewritten) = lines
                .get(n)
                .and_then(|l| common::proxy::parse_rewrite_fields(l))
                .unwrap_or_else(|| panic!("{mode:?}: no rewrite logged: {lines:?}\n{}", ctx()));
            assert!(original.contains(&port_arg(own)), "{original:?}");
            let mapped = parse_active_command(&rewritten)
                .unwrap_or_else(|| panic!("unparsable rewrite {rewritten:?}"));
            assert_eq!(mapped.ip(), IpAddr::V4(PROXY_PRIVATE_V4), "{rewritten:?}");
            assert!(
                active_ports.contains(&mapped.port()),
                "{mode:?}: backend-side port {} outside --active-ports\n{}",
                mapped.port(),
                ctx()
            );

            let probe = probe_from(&topo.intruder, mapped, b"INJECTED BY 10.0.0.66\r\n");
            assert!(
                probe.was_turned_away(),
                "{mode:?} {direction}: intruder at {INTRUDER_V4} -> {mapped}: {probe:?}\n{}",
                ctx()
            );

            if direction == "RETR" {
                let (peer, body) = retr_active(&mut c, &listener, BIG_FILE).unwrap_or_else(|e| {
                    panic!(
                        "{mode:?}: real RETR after the probe failed: {e}\n{}\n{}",
                        c.transcript,
                        ctx()
                    )
                });
                assert_eq!(peer.ip(), IpAddr::V4(PROXY_PUBLIC_V4));
                assert_eq!(
                    sha256_bytes(&body),
                    server.root.big_sha256(),
                    "{mode:?}: RETR bytes differ"
                );
            } else {
                let name = format!("hijack-{}.bin", mode.arg());
                stor_active(&mut c, &listener, &format!("{UPLOAD_DIR}/{name}"), &upload)
                    .unwrap_or_else(|e| {
                        panic!(
                            "{mode:?}: real STOR after the probe failed: {e}\n{}\n{}",
                            c.transcript,
                            ctx()
                        )
                    });
                assert_eq!(
                    sha256_file(&server.root.uploaded(&name)),
                    sha256_bytes(&upload),
                    "{mode:?}: uploaded bytes differ (intruder's bytes injected?)"
                );
            }
            assert_nothing_pending(&listener, "client listener after the transfer");
        }
        let refused = wait_log_lines(&gate, "data connection from foreign address refused", 2);
        assert!(
            refused.len() >= 2 && refused.iter().all(|l| l.contains("10.0.0.66")),
            "{mode:?}: ftpgate did not log the refused intruder: {refused:?}\n{}",
            ctx()
        );
        let _ = c.cmd("QUIT");
    }
}

/// An IPv6 client (2001:db8:1::2) uses EPRT |2| through ftpgate's IPv6
/// listener against the IPv4-only backend: ftpgate translates to the
/// backend's family. curl and lftp, download, upload and listing.
#[test]
fn ipv6_client_eprt_to_ipv4_backend() {
    if !common::e2e_enabled("ipv6_client_eprt_to_ipv4_backend") {
        return;
    }
    let topo = ActiveTopology::new();
    let server = topo.start_backend(ServerKind::Vsftpd);
    let target = FtpTarget::new(topo.proxy_v6());
    for mode in BackendDataMode::ALL {
        let gate = topo.start_ftpgate(topo.ftpgate_options(mode));
        let ctx = || context(&gate, &server);
        active_client_suite(
            &topo,
            &target,
            IpAddr::V6(CLIENT_V6),
            &server,
            &[ActiveClient::Curl(CurlActive::Eprt), ActiveClient::Lftp],
            &ctx,
        );
        let rewrites = active_rewrites(&gate);
        if mode == BackendDataMode::Passive {
            assert!(rewrites.is_empty(), "{rewrites:?}");
            assert!(
                injected_setup_commands(&gate)
                    .iter()
                    .any(|c| is_verb(c, "EPSV")),
                "passive mode: no EPSV sent\n{}",
                ctx()
            );
        } else {
            assert!(
                !rewrites.is_empty(),
                "{mode:?}: no rewrite logged\n{}",
                ctx()
            );
            for (o, r) in &rewrites {
                assert!(o.starts_with("EPRT |2|2001:db8:1::2|"), "{o:?}");
                let a = parse_active_command(r).unwrap_or_else(|| panic!("{r:?}"));
                assert_eq!(a.ip(), IpAddr::V4(PROXY_PRIVATE_V4), "{mode:?}: {r:?}");
            }
        }
        gate.assert_no_password();
    }
    let cmds = backend_commands(&server).expect("vsftpd logs commands");
    assert!(
        cmds.iter()
            .any(|c| is_verb(c, "PORT") || is_verb(c, "EPRT")),
        "the backend never got an active command: {cmds:?}"
    );
    assert!(
        !cmds
            .iter()
            .any(|c| c.contains("|2|") || c.contains("2001:db8")),
        "an IPv6 data address reached the IPv4 backend: {cmds:?}"
    );
}

/// `--active-source-port 20`: ftpgate's connections to the client come from
/// port 20, also for a second transfer right after the first (the first
/// socket is in TIME_WAIT).
#[test]
fn active_source_port_20() {
    if !common::e2e_enabled("active_source_port_20") {
        return;
    }
    let topo = ActiveTopology::new();
    let server = topo.start_backend(ServerKind::Vsftpd);
    for mode in BackendDataMode::ALL {
        let mut options = topo.ftpgate_options(mode);
        options
            .extra_args
            .extend(["--active-source-port".into(), "20".into()]);
        let gate = topo.start_ftpgate(options);
        let ctx = || context(&gate, &server);
        let mut c = login_in(&topo.client, topo.proxy_v4());
        for verb in ["PORT", "EPRT", "PORT"] {
            let peer = active_retr_ok(&mut c, &topo, verb, &server, &ctx);
            assert_eq!(
                peer,
                v4(PROXY_PUBLIC_V4, 20),
                "{mode:?} {verb}: data connection source\n{}",
                ctx()
            );
        }
        let _ = c.cmd("QUIT");
    }
}

/// LPRT and LPSV (RFC 1639) are refused with 502 by ftpgate itself, the
/// session stays usable, and the backend never sees them.
#[test]
fn lprt_lpsv_refused_with_502() {
    if !common::e2e_enabled("lprt_lpsv_refused_with_502") {
        return;
    }
    let topo = ActiveTopology::new();
    let server = topo.start_backend(ServerKind::Vsftpd);
    for mode in BackendDataMode::ALL {
        let gate = topo.start_ftpgate(topo.ftpgate_options(mode));
        let ctx = || context(&gate, &server);
        for control in [topo.proxy_v4(), topo.proxy_v6()] {
            let mut c = login_in(&topo.client, control);
            expect(&mut c, "LPSV", 502, &ctx);
            expect(&mut c, "LPRT 4,4,203,0,113,2,2,195,80", 502, &ctx);
            expect(
                &mut c,
                "LPRT 6,16,32,1,13,184,0,1,0,0,0,0,0,0,0,0,0,2,2,195,80",
                502,
                &ctx,
            );
            expect(&mut c, "lpsv", 502, &ctx);
            expect(&mut c, "NOOP", 200, &ctx);
            if control.is_ipv4() {
                let peer = active_retr_ok(&mut c, &topo, "PORT", &server, &ctx);
                assert_eq!(peer.ip(), IpAddr::V4(PROXY_PUBLIC_V4));
            }
            let _ = c.cmd("QUIT");
        }
    }
    let cmds = backend_commands(&server).expect("vsftpd logs commands");
    assert!(
        !cmds
            .iter()
            .any(|c| is_verb(c, "LPRT") || is_verb(c, "LPSV")),
        "the backend received LPRT/LPSV: {cmds:?}"
    );
}

/// `EPSV ALL` (RFC 2428 §4) is honoured towards the client in every backend
/// data mode: PORT, EPRT and PASV are refused with 500 afterwards, and EPSV
/// still transfers byte-exact.
#[test]
fn epsv_all_refuses_other_data_commands() {
    if !common::e2e_enabled("epsv_all_refuses_other_data_commands") {
        return;
    }
    let topo = ActiveTopology::new();
    let server = topo.start_backend(ServerKind::Vsftpd);
    for mode in BackendDataMode::ALL {
        let gate = topo.start_ftpgate(topo.ftpgate_options(mode));
        let ctx = || context(&gate, &server);
        let mut c = login_in(&topo.client, topo.proxy_v4());
        let listener = bind_in(&topo.client, v4(CLIENT_V4, 0));
        let own = listener.local_addr().unwrap();
        expect(&mut c, "EPSV ALL", 200, &ctx);
        expect(&mut c, &format!("PORT {}", port_arg(own)), 500, &ctx);
        expect(&mut c, &format!("EPRT {}", eprt_arg(own)), 500, &ctx);
        expect(&mut c, "PASV", 500, &ctx);
        expect(&mut c, "NOOP", 200, &ctx);
        assert_nothing_pending(&listener, "client listener after EPSV ALL refusals");

        let text = expect(&mut c, "EPSV", 229, &ctx);
        let port = clients::parse_229(&text).unwrap_or_else(|| panic!("229: {text:?}"));
        let data = SocketAddr::new(topo.proxy_v4().ip(), port);
        let mut d = active::connect_in(&topo.client, data)
            .unwrap_or_else(|e| panic!("{mode:?}: connect {data}: {e}\n{}", ctx()));
        c.send(&format!("RETR {BIG_FILE}")).unwrap();
        let (code, text) = c.read_reply().unwrap();
        assert!(
            code == 150 || code == 125,
            "{mode:?}: RETR: {text}\n{}",
            ctx()
        );
        let mut body = Vec::new();
        std::io::Read::read_to_end(&mut d, &mut body).unwrap();
        let (code, text) = c.read_reply().unwrap();
        assert_eq!(code, 226, "{mode:?}: {text}\n{}", ctx());
        assert_eq!(sha256_bytes(&body), server.root.big_sha256(), "{mode:?}");
        assert_nothing_pending(&listener, "client listener after the EPSV transfer");
        let _ = c.cmd("QUIT");
    }
}

/// `--backend-data-mode passive` against a backend without EPSV (RFC 959
/// only): ftpgate falls back to PASV, and PORT/EPRT clients still transfer
/// byte-exact while the backend never sees PORT/EPRT.
#[test]
fn passive_mode_falls_back_to_pasv() {
    if !common::e2e_enabled("passive_mode_falls_back_to_pasv") {
        return;
    }
    let topo = ActiveTopology::new();
    topo.assert_backend_cannot_reach_client();
    let server = active::LegacyServer::start(&topo);
    let gate = topo.start_ftpgate(topo.ftpgate_options(BackendDataMode::Passive));
    let ctx = || {
        format!(
            "--- ftpgate ---\n{}\n--- legacy pyftpdlib ---\n{}",
            gate.logs(),
            server.logs()
        )
    };
    let target = FtpTarget::new(topo.proxy_v4());
    let client_ip = IpAddr::V4(CLIENT_V4);
    let work = tempfile::tempdir().unwrap();

    let out = work.path().join("legacy.bin");
    let client = ActiveClient::Curl(CurlActive::Port);
    let t = client.run(
        &topo,
        &target,
        client_ip,
        Op::Download {
            remote: BIG_FILE,
            local: &out,
        },
    );
    t.assert_success(&ctx());
    client.check_dialogue(&t, client_ip, &ctx);
    assert_eq!(sha256_file(&out), server.root.big_sha256(), "{t}");

    let src = work.path().join("legacy-up.bin");
    write_random_file(&src, 1024 * 1024 + 3);
    let client = ActiveClient::Curl(CurlActive::Eprt);
    let t = client.run(
        &topo,
        &target,
        client_ip,
        Op::Upload {
            local: &src,
            remote: &format!("{UPLOAD_DIR}/legacy-up.bin"),
        },
    );
    t.assert_success(&ctx());
    client.check_dialogue(&t, client_ip, &ctx);
    assert_eq!(
        sha256_file(&server.root.uploaded("legacy-up.bin")),
        sha256_file(&src),
        "{t}"
    );

    let t = lftp_active(&topo.client, &target, Op::List { dir: LIST_DIR });
    t.assert_success(&ctx());
    ActiveClient::Lftp.check_dialogue(&t, client_ip, &ctx);
    clients::assert_listing(&t, &ctx);

    let injected = injected_setup_commands(&gate);
    assert_eq!(
        injected,
        ["EPSV", "PASV", "EPSV", "PASV", "EPSV", "PASV"],
        "ftpgate must try EPSV, then PASV, per transfer\n{}",
        ctx()
    );
    let cmds = server.commands();
    assert_eq!(
        cmds.iter().filter(|c| is_verb(c, "PASV")).count(),
        3,
        "the backend must have received PASV per transfer: {cmds:?}"
    );
    assert!(
        !cmds
            .iter()
            .any(|c| is_verb(c, "PORT") || is_verb(c, "EPRT")),
        "the backend received an active command: {cmds:?}"
    );
    assert!(cmds.iter().any(|c| is_verb(c, "RETR")), "{cmds:?}");
    gate.assert_no_password();
}
