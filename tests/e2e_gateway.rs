//! End-to-end tests of ftpgate's transparent gateway mode: a LAN client behind a
//! NAT gateway talks to a real FTP server "on the internet"; the gateway diverts
//! FTP control connections to ftpgate with iptables/nftables REDIRECT or TPROXY.
//! Topology: see `common::gateway`. Real servers (vsftpd, proftpd, pyftpdlib) and
//! clients (curl, lftp, a raw control client). Each test builds its own
//! namespaces, so tests run in parallel.
//!
//! The server can reach the gateway's public address only, never the LAN, and
//! the kernel's FTP conntrack helper is not assigned: without ftpgate, active
//! mode fails (`no_ftpgate_active_fails_passive_works` shows it).
//!
//! Needs root and `scripts/install-test-deps.sh`; skips otherwise (fails if
//! `CI` is set).

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use common::clients::{self, FtpControl, FtpTarget, Passive, Transcript};
use common::gateway::*;
use common::proxy::Ftpgate;
use common::servers::{
    upload_source, FtpRoot, FtpServer, ServerKind, BIG_FILE, FTP_PASS, FTP_USER, LIST_DIR,
    UPLOAD_DIR,
};
use common::sha256_file;

// ------------------------------------------------------------------ helpers

/// Context for assertion failures: ftpgate's debug log, the server's logs, the
/// gateway's rules and the server's view of its connections.
fn context(topo: &GatewayTopology, gate: Option<&Ftpgate>, server_logs: &str) -> String {
    let mut s = String::new();
    if let Some(g) = gate {
        s.push_str(&g.describe());
    }
    s.push_str(&format!("--- server logs ---\n{server_logs}\n"));
    s.push_str(&topo.gateway_rules());
    s.push_str(&topo.server_sockets());
    s
}

fn curl_download(ns: &common::Netns, t: &FtpTarget, data: CurlData, local: &Path) -> Transcript {
    let local = local.display().to_string();
    curl(ns, t, data, &["-o", &local, &t.url(BIG_FILE)])
}

fn curl_upload(
    ns: &common::Netns,
    t: &FtpTarget,
    data: CurlData,
    local: &Path,
    name: &str,
) -> Transcript {
    let local = local.display().to_string();
    curl(
        ns,
        t,
        data,
        &["-T", &local, &t.url(&format!("{UPLOAD_DIR}/{name}"))],
    )
}

fn curl_list(ns: &common::Netns, t: &FtpTarget, data: CurlData) -> Transcript {
    curl(ns, t, data, &[&t.url(&format!("{LIST_DIR}/"))])
}

/// lftp with `ftp:passive-mode off` (active mode: PORT for IPv4, EPRT for IPv6).
fn lftp_active(ns: &common::Netns, t: &FtpTarget, script: &str) -> Transcript {
    clients::lftp(
        ns,
        t,
        Passive::Epsv,
        &format!("set ftp:passive-mode off; {script}"),
    )
}

/// Checks that the client really used the data mode it was told to: the
/// command it sent (curl prints `> CMD`, lftp `---> CMD`) names its own address.
fn assert_client_sent(t: &Transcript, what: &str, ctx: &dyn Fn() -> String) {
    assert!(
        t.stderr.lines().any(|l| l.contains(what)),
        "client dialogue lacks {what:?}:\n{t}\n{}",
        ctx()
    );
}

/// The server saw TCP packets from the gateway's public address(es) only: never
/// from a LAN address.
fn assert_server_saw_only_gateway(topo: &GatewayTopology, ctx: &dyn Fn() -> String) {
    let peers = topo.server_peers();
    let allowed: BTreeSet<IpAddr> = [IpAddr::V4(GW_WAN_V4), IpAddr::V6(GW_WAN_V6)].into();
    assert!(
        !peers.is_empty() && peers.is_subset(&allowed),
        "the server must see only the gateway's public address, saw {peers:?}\n{}",
        ctx()
    );
}

/// vsftpd's protocol log names the client of every session and command
/// (`Client "203.0.113.1"`): all of them must be the gateway's public address
/// `want`. Sessions from `own` (the server's own address: the harness's
/// readiness probe, made inside the server's namespace) are ignored.
fn assert_vsftpd_clients(server: &FtpServer, want: &str, own: &str, ctx: &dyn Fn() -> String) {
    let logs = server.logs();
    let clients: BTreeSet<String> = logs
        .split("Client \"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .map(|c| c.trim_start_matches("::ffff:").to_owned())
        .filter(|c| c != own)
        .collect();
    assert!(
        clients.len() == 1 && clients.contains(want),
        "vsftpd must see only client {want}, saw {clients:?}\n{}",
        ctx()
    );
    assert!(
        !logs.contains("10.1.0.") && !logs.contains("10,1,0,"),
        "vsftpd's log mentions a LAN address\n{}",
        ctx()
    );
}

/// lftp in active mode silently switches to passive when PORT/EPRT is refused
/// ("Switching passive mode on"): make sure a run really stayed active.
fn assert_lftp_stayed_active(t: &Transcript, ctx: &dyn Fn() -> String) {
    let sent_passive = t
        .stderr
        .lines()
        .any(|l| l.starts_with("---> PASV") || l.starts_with("---> EPSV"));
    assert!(
        !sent_passive && !t.stderr.contains("Switching passive mode on"),
        "lftp fell back to passive mode:\n{t}\n{}",
        ctx()
    );
}

/// `active command rewritten` debug lines (original → rewritten PORT/EPRT).
fn active_rewrites(gate: &Ftpgate) -> Vec<String> {
    gate.logs()
        .lines()
        .filter(|l| l.contains("active command rewritten"))
        .map(str::to_owned)
        .collect()
}

/// `t` for an assertion message, headed by `label` when there is one.
fn labelled(label: &str, t: &Transcript) -> String {
    if label.is_empty() {
        t.to_string()
    } else {
        format!("{label}\n{t}")
    }
}

/// The transfer-and-verify steps the tests here repeat: a client on the LAN
/// runs through the gateway to `target`; the run must succeed and its data be
/// byte-exact against `root`, with the test's failure context `ctx`. Spelled
/// once, so every test checks a transfer the same way.
struct Transfers<'a> {
    topo: &'a GatewayTopology,
    target: &'a FtpTarget,
    root: &'a FtpRoot,
    ctx: &'a dyn Fn() -> String,
}

impl<'a> Transfers<'a> {
    fn new(
        topo: &'a GatewayTopology,
        target: &'a FtpTarget,
        root: &'a FtpRoot,
        ctx: &'a dyn Fn() -> String,
    ) -> Self {
        Transfers {
            topo,
            target,
            root,
            ctx,
        }
    }

    /// curl downloads `BIG_FILE` in `data` mode into `out`: it must succeed,
    /// must have sent `sent` (when given: it really used that data mode) and
    /// must be byte-exact. `label` heads the hash-mismatch message.
    fn curl_download(
        &self,
        data: CurlData,
        out: &Path,
        sent: Option<&str>,
        label: &str,
    ) -> Transcript {
        let t = curl_download(&self.topo.client, self.target, data, out);
        t.assert_success(&(self.ctx)());
        if let Some(sent) = sent {
            assert_client_sent(&t, sent, self.ctx);
        }
        assert_eq!(
            sha256_file(out),
            self.root.big_sha256(),
            "{}",
            labelled(label, &t)
        );
        t
    }

    /// curl uploads `src` (whose hash is `src_sha`) as `UPLOAD_DIR/name` in
    /// `data` mode: it must succeed, must have sent `sent` (when given) and the
    /// server's copy must be byte-exact. `label` heads the mismatch message.
    fn curl_upload(
        &self,
        data: CurlData,
        src: &Path,
        src_sha: &str,
        name: &str,
        sent: Option<&str>,
        label: &str,
    ) {
        let t = curl_upload(&self.topo.client, self.target, data, src, name);
        t.assert_success(&(self.ctx)());
        if let Some(sent) = sent {
            assert_client_sent(&t, sent, self.ctx);
        }
        assert_eq!(
            sha256_file(&self.root.uploaded(name)),
            src_sha,
            "{}",
            labelled(label, &t)
        );
    }

    /// [`Self::curl_download`] into `out` (checking `sent`, when given), then
    /// [`Self::curl_upload`] of `src` as `UPLOAD_DIR/name`, both in `data` mode
    /// and headed by `label`: the round trip several tests make per data mode.
    fn curl_round_trip(
        &self,
        data: CurlData,
        out: &Path,
        src: &Path,
        name: &str,
        sent: Option<&str>,
        label: &str,
    ) {
        self.curl_download(data, out, sent, label);
        self.curl_upload(data, src, &sha256_file(src), name, None, label);
    }

    /// lftp downloads `BIG_FILE` passively (`mode`) into `out`: must succeed,
    /// byte-exact.
    fn lftp_download(&self, mode: Passive, out: &Path) {
        let t = clients::lftp_download(&self.topo.client, self.target, BIG_FILE, out, mode);
        t.assert_success(&(self.ctx)());
        assert_eq!(sha256_file(out), self.root.big_sha256(), "{t}");
    }

    /// lftp downloads `BIG_FILE` in active mode into `out`: must succeed, stay
    /// active, have sent `sent` (the PORT/EPRT it used) and be byte-exact.
    fn lftp_active_download(&self, out: &Path, sent: &str) {
        let t = lftp_active(
            &self.topo.client,
            self.target,
            &format!("get {BIG_FILE} -o {}", out.display()),
        );
        t.assert_success(&(self.ctx)());
        assert_lftp_stayed_active(&t, self.ctx);
        assert_client_sent(&t, sent, self.ctx);
        assert_eq!(sha256_file(out), self.root.big_sha256(), "{t}");
    }

    /// lftp lists `LIST_DIR` in active mode: must succeed, stay active, and
    /// name the directory's files.
    fn lftp_active_list(&self) {
        let t = lftp_active(
            &self.topo.client,
            self.target,
            &format!("cls -1 {LIST_DIR}/"),
        );
        t.assert_success(&(self.ctx)());
        assert_lftp_stayed_active(&t, self.ctx);
        clients::assert_listing(&t, self.ctx);
    }
}

/// Whether a TPROXY test can run: the e2e prerequisites, and a kernel that
/// does TPROXY (otherwise it prints a SKIP line for `test`).
fn tproxy_enabled(test: &str) -> bool {
    if !common::e2e_enabled(test) {
        return false;
    }
    if let Err(why) = tproxy_supported() {
        let _ = writeln!(std::io::stderr(), "SKIP {test}: {why}");
        return false;
    }
    true
}

/// ftpgate logged an EPRT rewritten to the gateway's public IPv6 address
/// (the IPv6 tests' proof that active mode went through it).
fn assert_eprt_rewritten_to_gateway_v6(gate: &Ftpgate, ctx: &dyn Fn() -> String) {
    assert!(
        active_rewrites(gate)
            .iter()
            .any(|l| l.contains("|2|2001:db8:2::1|")),
        "no EPRT rewritten to the gateway's public IPv6 address\n{}",
        ctx()
    );
}

/// Reads the first reply line of a connection from `ns` to `addr` (bounded).
fn first_reply(ns: &common::Netns, addr: SocketAddr) -> std::io::Result<String> {
    ns.spawn_thread(move || first_line(addr))
        .join()
        .expect("thread")
}

// ------------------------------------------------------------------ tests

/// Control experiment: the same topology with plain NAT (MASQUERADE) and no
/// ftpgate. Passive mode works; active mode fails, because the server cannot
/// use (and refuses) a PORT/EPRT naming the client's LAN address.
#[test]
fn no_ftpgate_active_fails_passive_works() {
    if !common::e2e_enabled("no_ftpgate_active_fails_passive_works") {
        return;
    }
    let topo = GatewayTopology::new();
    topo.masquerade();
    let server = topo.start_server(ServerKind::Vsftpd, false);
    let target = topo.target(false);
    let work = tempfile::tempdir().unwrap();
    let ctx = || context(&topo, None, &server.logs());
    let xfer = Transfers::new(&topo, &target, &server.root, &ctx);

    for data in [CurlData::Epsv, CurlData::Pasv] {
        let out = work.path().join(format!("{data:?}.bin"));
        xfer.curl_download(data, &out, None, "");
    }

    for data in [CurlData::Eprt("-"), CurlData::Port("10.1.0.2")] {
        let out = work.path().join(format!("{data:?}-active.bin"));
        let t = curl_download(&topo.client, &target, data, &out);
        assert!(
            !t.success(),
            "{data:?}: active mode must fail through plain NAT:\n{t}\n{}",
            ctx()
        );
        assert_client_sent(&t, "10,1,0,2", &ctx);
    }
    let out = work.path().join("lftp-active.bin");
    let t = lftp_active(
        &topo.client,
        &target,
        &format!("get {BIG_FILE} -o {}", out.display()),
    );
    // lftp's PORT is refused; it then gives up on active mode (and retries
    // passively, which is not what is being tested here).
    assert_client_sent(&t, "---> PORT 10,1,0,2,", &ctx);
    assert!(
        t.stderr.contains("<--- 500") && t.stderr.contains("Switching passive mode on"),
        "lftp's active mode must be refused through plain NAT:\n{t}\n{}",
        ctx()
    );

    // Nothing assigned the kernel's FTP helper to these flows.
    let ct = topo.gateway.run_ok("conntrack", &["-L"]);
    let ct = String::from_utf8_lossy(&ct.stdout);
    assert!(
        !ct.contains("helper=ftp"),
        "the kernel FTP helper is assigned on the gateway:\n{ct}"
    );
}

/// REDIRECT gateway in front of vsftpd: curl and lftp, active (EPRT and PORT)
/// and passive (EPSV and PASV), download, upload and listing, all byte-exact;
/// the server only ever sees the gateway's public address.
#[test]
fn redirect_vsftpd_active_and_passive() {
    if !common::e2e_enabled("redirect_vsftpd_active_and_passive") {
        return;
    }
    let topo = GatewayTopology::with_redirect();
    let server = topo.start_server(ServerKind::Vsftpd, false);
    let gate = topo.start_transparent(GatewayTopology::default_listen(), Divert::Redirect);
    let target = topo.target(false);
    let ctx = || context(&topo, Some(&gate), &server.logs());
    let xfer = Transfers::new(&topo, &target, &server.root, &ctx);
    let work = tempfile::tempdir().unwrap();
    let upload_src = upload_source(work.path());
    let upload_sha = sha256_file(&upload_src);

    let modes = [
        (CurlData::Eprt("-"), "EPRT |1|10.1.0.2|"),
        (CurlData::Port("10.1.0.2"), "PORT 10,1,0,2,"),
        (CurlData::Epsv, "EPSV"),
        (CurlData::Pasv, "PASV"),
    ];
    for (i, (data, sent)) in modes.into_iter().enumerate() {
        let out = work.path().join(format!("curl-{i}.bin"));
        let t = xfer.curl_download(data, &out, Some(sent), &format!("{data:?} download"));
        if data == CurlData::Pasv {
            // Passive replies pass through: the server's own public address.
            let lines = t.reply_lines("227");
            assert!(
                !lines.is_empty() && lines.iter().all(|l| l.contains("203,0,113,10,")),
                "227 must pass through unchanged, got {lines:?}\n{t}"
            );
        }

        let name = format!("curl-{i}.bin");
        xfer.curl_upload(
            data,
            &upload_src,
            &upload_sha,
            &name,
            Some(sent),
            &format!("{data:?} upload"),
        );

        let t = curl_list(&topo.client, &target, data);
        t.assert_success(&ctx());
        assert_client_sent(&t, sent, &ctx);
        clients::assert_listing(&t, &ctx);
    }

    // lftp, active mode (PORT).
    let out = work.path().join("lftp-active.bin");
    xfer.lftp_active_download(&out, "PORT 10,1,0,2,");
    let t = lftp_active(
        &topo.client,
        &target,
        &format!(
            "put {} -o {UPLOAD_DIR}/lftp-active.bin",
            upload_src.display()
        ),
    );
    t.assert_success(&ctx());
    assert_lftp_stayed_active(&t, &ctx);
    assert_eq!(
        sha256_file(&server.root.uploaded("lftp-active.bin")),
        upload_sha,
        "{t}"
    );
    xfer.lftp_active_list();

    // lftp, passive (EPSV and PASV).
    for mode in [Passive::Epsv, Passive::Pasv] {
        let out = work.path().join(format!("lftp-{mode:?}.bin"));
        xfer.lftp_download(mode, &out);
        let name = format!("lftp-{mode:?}.bin");
        let t = clients::lftp_upload(
            &topo.client,
            &target,
            &upload_src,
            &format!("{UPLOAD_DIR}/{name}"),
            mode,
        );
        t.assert_success(&ctx());
        assert_eq!(sha256_file(&server.root.uploaded(&name)), upload_sha, "{t}");
        let t = clients::lftp_list(&topo.client, &target, LIST_DIR, mode);
        t.assert_success(&ctx());
        clients::assert_listing(&t, &ctx);
    }

    // ftpgate rewrote the client's PORT/EPRT to name the gateway's public address...
    let rewrites = active_rewrites(&gate);
    assert!(
        rewrites
            .iter()
            .any(|l| l.contains("PORT 10,1,0,2,") && l.contains("PORT 203,0,113,1,")),
        "no logged PORT rewrite 10,1,0,2 -> 203,0,113,1 in {rewrites:#?}\n{}",
        ctx()
    );
    assert!(
        rewrites
            .iter()
            .any(|l| l.contains("EPRT |1|10.1.0.2|") && l.contains("EPRT |1|203.0.113.1|")),
        "no logged EPRT rewrite naming 203.0.113.1 in {rewrites:#?}\n{}",
        ctx()
    );
    // ...and that is what the server received.
    let logs = server.logs();
    assert!(
        logs.contains("PORT 203,0,113,1,") || logs.contains("EPRT |1|203.0.113.1|"),
        "vsftpd never received a PORT/EPRT naming the gateway\n{}",
        ctx()
    );
    assert_vsftpd_clients(&server, "203.0.113.1", "203.0.113.10", &ctx);
    assert_server_saw_only_gateway(&topo, &ctx);
    gate.assert_no_password();
}

/// Active mode through the REDIRECT gateway with two more daemons (each checks
/// that PORT names its control peer, like vsftpd).
#[test]
fn redirect_active_proftpd_and_pyftpdlib() {
    if !common::e2e_enabled("redirect_active_proftpd_and_pyftpdlib") {
        return;
    }
    for kind in [ServerKind::Proftpd, ServerKind::Pyftpdlib] {
        let topo = GatewayTopology::with_redirect();
        let server = topo.start_server(kind, false);
        let gate = topo.start_transparent(GatewayTopology::default_listen(), Divert::Redirect);
        let target = topo.target(false);
        let ctx = || context(&topo, Some(&gate), &server.logs());
        let xfer = Transfers::new(&topo, &target, &server.root, &ctx);
        let work = tempfile::tempdir().unwrap();
        let upload_src = upload_source(work.path());

        for (i, data) in [CurlData::Eprt("-"), CurlData::Port("10.1.0.2")]
            .into_iter()
            .enumerate()
        {
            let out = work.path().join(format!("{i}.bin"));
            let name = format!("up-{i}.bin");
            xfer.curl_round_trip(
                data,
                &out,
                &upload_src,
                &name,
                None,
                &format!("{} {data:?}", kind.name()),
            );
        }
        xfer.lftp_active_list();
        assert_server_saw_only_gateway(&topo, &ctx);
        gate.assert_no_password();
    }
}

/// A LAN client's PORT/EPRT naming any address but its own is the FTP bounce
/// attack: ftpgate answers 500 and the server never sees the command.
#[test]
fn bounce_through_gateway_is_refused() {
    if !common::e2e_enabled("bounce_through_gateway_is_refused") {
        return;
    }
    let topo = GatewayTopology::with_redirect();
    let server = topo.start_server(ServerKind::Vsftpd, false);
    let gate = topo.start_transparent(GatewayTopology::default_listen(), Divert::Redirect);
    let control = topo.target(false).addr;
    let result = topo
        .client
        .spawn_thread(move || {
            let mut c = FtpControl::connect(control).map_err(|e| e.to_string())?;
            let r = (|| -> std::io::Result<Vec<(String, u16, String)>> {
                c.login(FTP_USER, FTP_PASS)?;
                let mut replies = Vec::new();
                for cmd in [
                    // Another LAN host.
                    "PORT 10,1,0,3,195,80",
                    "EPRT |1|10.1.0.3|50000|",
                    // The server itself, and another internet host.
                    "PORT 203,0,113,10,0,21",
                    "EPRT |1|198.51.100.7|2000|",
                    // Control: the client's own address is accepted.
                    "PORT 10,1,0,2,195,80",
                ] {
                    let (code, text) = c.cmd(cmd)?;
                    replies.push((cmd.to_owned(), code, text));
                }
                let _ = c.cmd("QUIT");
                Ok(replies)
            })();
            r.map(|replies| (replies, c.transcript.clone()))
                .map_err(|e| format!("{e}\n{}", c.transcript))
        })
        .join()
        .expect("client thread");
    let ctx = || context(&topo, Some(&gate), &server.logs());
    let (replies, transcript) =
        result.unwrap_or_else(|e| panic!("control session failed: {e}\n{}", ctx()));
    for (cmd, code, text) in &replies {
        let own = cmd.contains("10,1,0,2,");
        if own {
            assert_eq!(
                *code,
                200,
                "{cmd}: the client's own address must be accepted, got {text:?}\n{transcript}\n{}",
                ctx()
            );
        } else {
            assert_eq!(
                *code,
                500,
                "{cmd}: a bounce must be refused with 500, got {text:?}\n{transcript}\n{}",
                ctx()
            );
        }
    }
    let logs = server.logs();
    for never in ["10,1,0,3", "10.1.0.3", "203,0,113,10,0,21", "198.51.100.7"] {
        assert!(
            !logs.contains(never),
            "the server received a bounce command naming {never}\n{}",
            ctx()
        );
    }
    assert!(
        gate.logs().contains("bounce attempt refused"),
        "ftpgate did not log the refusals\n{}",
        ctx()
    );
    gate.assert_no_password();
}

/// A server that names a private address in its 227 (pyftpdlib with
/// `masquerade_address = 10.9.9.9`, as if configured for its own NAT): through
/// ftpgate the 227 carries the server's control address and the passive
/// transfer works; without ftpgate the client is sent to 10.9.9.9 and fails.
#[test]
fn private_227_is_fixed_to_control_address() {
    if !common::e2e_enabled("private_227_is_fixed_to_control_address") {
        return;
    }
    let topo = GatewayTopology::with_redirect();
    let server = MasqueradingServer::start(
        &topo.topo,
        &topo.server,
        SocketAddr::new(IpAddr::V4(SERVER_V4), 21),
        Ipv4Addr::new(10, 9, 9, 9),
    );
    let mut gate = topo.start_transparent(GatewayTopology::default_listen(), Divert::Redirect);
    let target = topo.target(false);
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("fixed.bin");
    {
        let ctx = || context(&topo, Some(&gate), &server.logs());
        let xfer = Transfers::new(&topo, &target, &server.root, &ctx);
        let t = xfer.curl_download(CurlData::Pasv, &out, None, "");
        let lines = t.reply_lines("227");
        assert!(
            !lines.is_empty() && lines.iter().all(|l| l.contains("(203,0,113,10,")),
            "227 must name the server's control address 203,0,113,10, got {lines:?}\n{t}\n{}",
            ctx()
        );
        xfer.lftp_download(Passive::Pasv, &out);
        assert!(
            gate.logs()
                .contains("server named a private address in 227"),
            "ftpgate did not log the substitution\n{}",
            ctx()
        );
        assert_server_saw_only_gateway(&topo, &ctx);
    }

    // Without ftpgate: the client gets the private address and fails.
    gate.stop();
    topo.unredirect();
    let out = work.path().join("unfixed.bin");
    let t = curl_download(&topo.client, &target, CurlData::Pasv, &out);
    assert!(
        !t.success(),
        "without ftpgate the transfer must fail:\n{t}\n{}",
        server.logs()
    );
    let lines = t.reply_lines("227");
    assert!(
        lines.iter().any(|l| l.contains("10,9,9,9")),
        "without ftpgate the client must see the server's private 227, got {lines:?}\n{t}"
    );
}

/// A gateway that blocks forwarding of new outbound connections to high ports:
/// passive transfers fail unless ftpgate maps them (`--map-passive`). PASV's 227
/// then names the gateway's LAN address; EPSV (port only, RFC 2428) additionally
/// needs the data-port range redirected (`MAP_PASSIVE=1` in the shipped script).
#[test]
fn map_passive_through_restrictive_gateway() {
    if !common::e2e_enabled("map_passive_through_restrictive_gateway") {
        return;
    }
    let topo = GatewayTopology::new();
    topo.run_deploy_script("iptables-redirect.sh", &[]);
    // Refuse (at once, with a reset) new forwarded connections to high ports.
    topo.gw(
        "iptables",
        &[
            "-A",
            "FORWARD",
            "-p",
            "tcp",
            "--dport",
            "1024:65535",
            "-m",
            "conntrack",
            "--ctstate",
            "NEW",
            "-j",
            "REJECT",
            "--reject-with",
            "tcp-reset",
        ],
    );
    let server = topo.start_server(ServerKind::Vsftpd, false);
    let target = topo.target(false);
    let work = tempfile::tempdir().unwrap();

    // Without --map-passive the 227 passes through and the gateway blocks the
    // client's data connection.
    let mut gate = topo.start_transparent(GatewayTopology::default_listen(), Divert::Redirect);
    let out = work.path().join("blocked.bin");
    let t = curl_download(&topo.client, &target, CurlData::Pasv, &out);
    assert!(
        !t.success(),
        "passive data must be blocked by the gateway without --map-passive:\n{t}\n{}",
        context(&topo, Some(&gate), &server.logs())
    );
    gate.stop();
    drop(gate);

    let mut options = topo.ftpgate_options(GatewayTopology::default_listen(), Divert::Redirect);
    options.extra_args.push("--map-passive".into());
    let gate = topo.start_ftpgate(options);
    let ctx = || context(&topo, Some(&gate), &server.logs());
    let xfer = Transfers::new(&topo, &target, &server.root, &ctx);
    let out = work.path().join("mapped.bin");
    let t = curl_download(&topo.client, &target, CurlData::Pasv, &out);
    let lines = t.reply_lines("227");
    assert!(
        !lines.is_empty() && lines.iter().all(|l| l.contains("10,1,0,1,")),
        "with --map-passive the 227 must name the gateway's LAN address 10,1,0,1, \
         got {lines:?}\n{t}\n{}",
        ctx()
    );
    t.assert_success(&ctx());
    assert_eq!(sha256_file(&out), server.root.big_sha256(), "{t}");
    xfer.lftp_download(Passive::Pasv, &out);

    // EPSV: the shipped script's MAP_PASSIVE=1 also redirects the data ports
    // (re-running it replaces its rules).
    let range = format!("{}:{}", DATA_PORTS.0, DATA_PORTS.1);
    topo.run_deploy_script(
        "iptables-redirect.sh",
        &[("MAP_PASSIVE", "1"), ("DATA_PORTS", &range)],
    );
    let out = work.path().join("mapped-epsv.bin");
    xfer.curl_download(CurlData::Epsv, &out, None, "");
    assert!(
        gate.passive_rewrites()
            .iter()
            .any(|(o, _)| o.starts_with("229")),
        "ftpgate did not map the 229\n{}",
        ctx()
    );
    assert_server_saw_only_gateway(&topo, &ctx);
    gate.assert_no_password();
}

/// Whether this kernel can do TPROXY: tries the rule in a scratch namespace.
fn tproxy_supported() -> Result<(), String> {
    let topo = common::netns::Topology::new();
    let ns = topo.add_ns("tpcheck");
    let mut cmd = ns.command("iptables");
    cmd.args([
        "-t",
        "mangle",
        "-A",
        "PREROUTING",
        "-p",
        "tcp",
        "--dport",
        "21",
        "-j",
        "TPROXY",
        "--on-port",
        "2121",
        "--tproxy-mark",
        "1",
    ]);
    let (out, _) = common::netns::run_bounded(cmd, Duration::from_secs(10));
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "iptables -j TPROXY failed (xt_TPROXY/nf_tproxy missing? try `modprobe xt_TPROXY`): {}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Transfers through a TPROXY gateway (`ftpgate --tproxy`): active and
/// passive, byte-exact; the server sees only the gateway.
fn tproxy_transfers(topo: &GatewayTopology, server: &FtpServer, gate: &Ftpgate) {
    let target = topo.target(false);
    let ctx = || context(topo, Some(gate), &server.logs());
    let xfer = Transfers::new(topo, &target, &server.root, &ctx);
    let work = tempfile::tempdir().unwrap();
    let upload_src = upload_source(work.path());
    for (i, data) in [
        CurlData::Eprt("-"),
        CurlData::Port("10.1.0.2"),
        CurlData::Epsv,
        CurlData::Pasv,
    ]
    .into_iter()
    .enumerate()
    {
        let out = work.path().join(format!("{i}.bin"));
        let name = format!("tproxy-{i}.bin");
        xfer.curl_round_trip(data, &out, &upload_src, &name, None, &format!("{data:?}"));
    }
    xfer.lftp_active_list();
    // The session's server side went to the original destination.
    assert!(
        gate.logs().contains("203.0.113.10:21"),
        "ftpgate's log does not name the original destination\n{}",
        ctx()
    );
    assert!(
        !active_rewrites(gate).is_empty(),
        "no active command was rewritten\n{}",
        ctx()
    );
    assert_vsftpd_clients(server, "203.0.113.1", "203.0.113.10", &ctx);
    assert_server_saw_only_gateway(topo, &ctx);
    gate.assert_no_password();
}

/// TPROXY with the shipped iptables script (rules + policy routing).
#[test]
fn tproxy_iptables_script() {
    if !tproxy_enabled("tproxy_iptables_script") {
        return;
    }
    let topo = GatewayTopology::new();
    topo.run_deploy_script("iptables-tproxy.sh", &[("IPV6", "1")]);
    let server = topo.start_server(ServerKind::Vsftpd, false);
    let gate = topo.start_transparent(GatewayTopology::default_listen(), Divert::Tproxy);
    tproxy_transfers(&topo, &server, &gate);
}

/// IPv6 TPROXY (the shipped iptables script with `IPV6=1`; ip6tables TPROXY and
/// `ip -6` policy routing) through a `[::]` transparent listener: a v6 LAN
/// client to a v6 server, active (EPRT |2|) and passive (EPSV).
#[test]
fn tproxy_ipv6() {
    if !tproxy_enabled("tproxy_ipv6") {
        return;
    }
    let topo = GatewayTopology::new();
    topo.run_deploy_script("iptables-tproxy.sh", &[("IPV6", "1")]);
    // proftpd: the harness's vsftpd IPv6 configuration does not start (see
    // `ipv6_redirect`).
    let server = topo.start_server(ServerKind::Proftpd, true);
    let gate = topo.start_transparent(GatewayTopology::any_v6_listen(), Divert::Tproxy);
    let target = topo.target(true);
    let ctx = || context(&topo, Some(&gate), &server.logs());
    let xfer = Transfers::new(&topo, &target, &server.root, &ctx);
    let work = tempfile::tempdir().unwrap();
    for (i, data) in [CurlData::Eprt("-"), CurlData::Epsv]
        .into_iter()
        .enumerate()
    {
        let out = work.path().join(format!("{i}.bin"));
        xfer.curl_download(data, &out, None, &format!("{data:?}"));
    }
    assert_eprt_rewritten_to_gateway_v6(&gate, &ctx);
    assert_server_saw_only_gateway(&topo, &ctx);
}

/// TPROXY with the shipped nftables file (policy routing from the harness, as
/// the file's header prescribes).
#[test]
fn tproxy_nftables_file() {
    if !tproxy_enabled("tproxy_nftables_file") {
        return;
    }
    let topo = GatewayTopology::new();
    topo.load_deploy_nft(
        "nftables-tproxy.nft",
        &[
            ("lan_if", &format!("\"{LAN_IF}\"")),
            ("wan_if", &format!("\"{WAN_IF}\"")),
            ("ftpgate_port", &FTPGATE_PORT.to_string()),
        ],
    );
    topo.tproxy_routing();
    let server = topo.start_server(ServerKind::Vsftpd, false);
    let gate = topo.start_transparent(GatewayTopology::default_listen(), Divert::Tproxy);
    tproxy_transfers(&topo, &server, &gate);
}

/// The shipped nftables REDIRECT file, with its placeholders substituted (a
/// non-default ftpgate port proves the substitution took effect), carries
/// active and passive transfers.
#[test]
fn nftables_redirect_file() {
    if !common::e2e_enabled("nftables_redirect_file") {
        return;
    }
    let port: u16 = 2999;
    let topo = GatewayTopology::new();
    let loaded = topo.load_deploy_nft(
        "nftables-redirect.nft",
        &[
            ("lan_if", &format!("\"{LAN_IF}\"")),
            ("wan_if", &format!("\"{WAN_IF}\"")),
            ("ftpgate_port", &port.to_string()),
            ("data_ports", &format!("{}-{}", DATA_PORTS.0, DATA_PORTS.1)),
        ],
    );
    assert!(loaded.contains("define ftpgate_port = 2999"));
    let server = topo.start_server(ServerKind::Vsftpd, false);
    let gate = topo.start_ftpgate(topo.ftpgate_options(
        vec![SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port)],
        Divert::Redirect,
    ));
    let target = topo.target(false);
    let ctx = || context(&topo, Some(&gate), &server.logs());
    let xfer = Transfers::new(&topo, &target, &server.root, &ctx);
    let work = tempfile::tempdir().unwrap();
    let upload_src = upload_source(work.path());
    for (i, data) in [CurlData::Port("-"), CurlData::Pasv]
        .into_iter()
        .enumerate()
    {
        let out = work.path().join(format!("{i}.bin"));
        let name = format!("nft-{i}.bin");
        xfer.curl_round_trip(data, &out, &upload_src, &name, None, &format!("{data:?}"));
    }
    assert!(
        !active_rewrites(&gate).is_empty(),
        "active mode did not go through ftpgate\n{}",
        ctx()
    );
    assert_server_saw_only_gateway(&topo, &ctx);
}

/// IPv6 REDIRECT (ip6tables; SO_ORIGINAL_DST's IPv6 path): a v6 LAN client to a
/// v6 server, active (EPRT |2|) and passive (EPSV), through a `[::]` listener.
#[test]
fn ipv6_redirect() {
    if !common::e2e_enabled("ipv6_redirect") {
        return;
    }
    let topo = GatewayTopology::with_redirect();
    // proftpd: the harness's vsftpd IPv6 configuration does not start (see the
    // report: `listen_address_ipv6` is not a vsftpd option, `listen_address6` is).
    let server = topo.start_server(ServerKind::Proftpd, true);
    let gate = topo.start_transparent(GatewayTopology::any_v6_listen(), Divert::Redirect);
    let target = topo.target(true);
    let ctx = || context(&topo, Some(&gate), &server.logs());
    let xfer = Transfers::new(&topo, &target, &server.root, &ctx);
    let work = tempfile::tempdir().unwrap();
    let upload_src = upload_source(work.path());
    for (i, (data, sent)) in [
        (CurlData::Eprt("-"), "EPRT |2|2001:db8:1::2|"),
        (CurlData::Epsv, "EPSV"),
    ]
    .into_iter()
    .enumerate()
    {
        let out = work.path().join(format!("{i}.bin"));
        let name = format!("v6-{i}.bin");
        xfer.curl_round_trip(
            data,
            &out,
            &upload_src,
            &name,
            Some(sent),
            &format!("{data:?}"),
        );
    }
    let out = work.path().join("lftp.bin");
    xfer.lftp_active_download(&out, "EPRT |2|2001:db8:1::2|");
    assert_eprt_rewritten_to_gateway_v6(&gate, &ctx);
    assert_server_saw_only_gateway(&topo, &ctx);
    gate.assert_no_password();
}

/// One `[::]:PORT` listener takes IPv4 too (README: "`[::]:21` takes IPv4 and
/// IPv6"): an IPv4 REDIRECT through it must reach the original IPv4 destination.
#[test]
fn dual_stack_listener_takes_ipv4_redirect() {
    if !common::e2e_enabled("dual_stack_listener_takes_ipv4_redirect") {
        return;
    }
    let topo = GatewayTopology::with_redirect();
    let server = topo.start_server(ServerKind::Vsftpd, false);
    let gate = topo.start_transparent(GatewayTopology::any_v6_listen(), Divert::Redirect);
    let target = topo.target(false);
    let ctx = || context(&topo, Some(&gate), &server.logs());
    let xfer = Transfers::new(&topo, &target, &server.root, &ctx);
    let work = tempfile::tempdir().unwrap();
    for (i, data) in [CurlData::Port("-"), CurlData::Pasv]
        .into_iter()
        .enumerate()
    {
        let out = work.path().join(format!("{i}.bin"));
        xfer.curl_download(data, &out, None, &format!("{data:?}"));
    }
    assert_server_saw_only_gateway(&topo, &ctx);
}

/// Connecting from the LAN straight to ftpgate's transparent listener would make
/// it connect to itself: it answers 421 instead, and keeps serving others.
#[test]
fn loop_protection() {
    if !common::e2e_enabled("loop_protection") {
        return;
    }
    let topo = GatewayTopology::with_redirect();
    let server = topo.start_server(ServerKind::Vsftpd, false);
    let gate = topo.start_transparent(GatewayTopology::default_listen(), Divert::Redirect);
    let ctx = || context(&topo, Some(&gate), &server.logs());
    for ip in [GW_LAN_V4, GW_WAN_V4] {
        let addr = SocketAddr::new(IpAddr::V4(ip), FTPGATE_PORT);
        for attempt in 0..2 {
            let line = first_reply(&topo.client, addr).unwrap_or_else(|e| {
                panic!(
                    "connect to the listener {addr} (#{attempt}): {e}\n{}",
                    ctx()
                )
            });
            assert!(
                line.starts_with("421"),
                "{addr}: a session to ftpgate's own listener must get 421, got {line:?}\n{}",
                ctx()
            );
        }
    }
    assert!(
        gate.logs()
            .contains("refusing to connect to one of ftpgate's own listeners"),
        "ftpgate did not log the loop refusal\n{}",
        ctx()
    );

    // Still serving: an active and a passive transfer right after.
    let target = topo.target(false);
    let xfer = Transfers::new(&topo, &target, &server.root, &ctx);
    let work = tempfile::tempdir().unwrap();
    for (i, data) in [CurlData::Eprt("-"), CurlData::Epsv]
        .into_iter()
        .enumerate()
    {
        let out = work.path().join(format!("{i}.bin"));
        xfer.curl_download(data, &out, None, "");
    }
    // The server never saw a session for the refused connections.
    assert_vsftpd_clients(&server, "203.0.113.1", "203.0.113.10", &ctx);
    let connects = server
        .logs()
        .matches("CONNECT: Client \"203.0.113.1\"")
        .count();
    assert_eq!(
        connects,
        2,
        "the server should see exactly the two real sessions\n{}",
        ctx()
    );
}
