//! End-to-end tests of ftpgate as a reverse proxy, with real FTP daemons
//! (vsftpd, proftpd, pyftpdlib) as backends on a private address and real
//! clients (curl, lftp, Python ftplib, a raw control client) on the public
//! side. Topology: see `common::ReverseTopology`. Each test builds its own
//! namespaces, so tests run in parallel.
//!
//! Needs root and `scripts/install-test-deps.sh`; skips otherwise (fails if
//! `CI` is set).

mod common;

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use common::addrs::*;
use common::clients::{self, FtpControl, FtpTarget, Passive, Transcript};
use common::proxy::Ftpgate;
use common::servers::{
    upload_source, FtpServer, ServerKind, BIG_FILE, FTP_PASS, LIST_DIR, UPLOAD_DIR,
};
use common::{sha256_bytes, sha256_file, Netns, ReverseTopology};

/// Context attached to assertion failures: the proxy's and server's logs.
fn context(gate: Option<&Ftpgate>, server: &FtpServer) -> String {
    let mut s = String::new();
    if let Some(g) = gate {
        s.push_str(&g.describe());
    }
    s.push_str(&format!(
        "--- {} logs ---\n{}",
        server.kind.name(),
        server.logs()
    ));
    s
}

/// What the suite expects to see in 227 replies, when it is run through a
/// proxy: the proxy's public address (as the `h1,h2,h3,h4` tuple).
struct Expect227<'a>(Option<&'a str>);

/// Downloads, uploads and lists with curl and lftp in both passive flavours
/// from `ns` against `target`; every transfer is checked by SHA-256.
fn client_suite(
    ns: &Netns,
    target: &FtpTarget,
    server: &FtpServer,
    expect_227: Expect227<'_>,
    ctx: &dyn Fn() -> String,
) {
    let work = tempfile::tempdir().unwrap();
    let upload_src = upload_source(work.path());
    let upload_sha = sha256_file(&upload_src);
    let want = server.root.big_sha256();

    let check_227 = |t: &Transcript, mode: Passive| {
        let lines = t.reply_lines("227");
        match mode {
            Passive::Epsv => assert!(
                t.reply_lines("229").iter().any(|l| l.contains("|||")),
                "EPSV run saw no 229 reply:\n{t}"
            ),
            Passive::Pasv => {
                assert!(!lines.is_empty(), "PASV run saw no 227 reply:\n{t}");
                if let Some(tuple) = expect_227.0 {
                    assert!(
                        lines.iter().all(|l| l.contains(tuple)),
                        "227 must advertise {tuple}, got {lines:?}\n{t}\n{}",
                        ctx()
                    );
                }
            }
        }
    };

    for mode in [Passive::Epsv, Passive::Pasv] {
        let tag = format!("{mode:?}").to_lowercase();

        // curl, then lftp: download, upload, listing.
        for (client, download, upload, list) in CLIENTS {
            let out = work.path().join(format!("{client}-{tag}.bin"));
            let t = download(ns, target, BIG_FILE, &out, mode);
            t.assert_success(&ctx());
            check_227(&t, mode);
            assert_eq!(sha256_file(&out), want, "{client} {tag} download\n{t}");

            let name = format!("{client}-{tag}.bin");
            let t = upload(
                ns,
                target,
                &upload_src,
                &format!("{UPLOAD_DIR}/{name}"),
                mode,
            );
            t.assert_success(&ctx());
            check_227(&t, mode);
            assert_eq!(
                sha256_file(&server.root.uploaded(&name)),
                upload_sha,
                "{client} {tag} upload\n{t}"
            );

            let t = list(ns, target, LIST_DIR, mode);
            t.assert_success(&ctx());
            check_227(&t, mode);
            clients::assert_listing(&t, &ctx);
        }
    }
}

/// A client's download run (`remote` into `local`).
type Download = fn(&Netns, &FtpTarget, &str, &Path, Passive) -> Transcript;
/// A client's upload run (`local` to `remote`).
type Upload = fn(&Netns, &FtpTarget, &Path, &str, Passive) -> Transcript;
/// A client's listing of a directory.
type List = fn(&Netns, &FtpTarget, &str, Passive) -> Transcript;

/// The passive clients of [`client_suite`], in the order it runs them: the
/// same download/upload/listing checks apply to each.
const CLIENTS: [(&str, Download, Upload, List); 2] = [
    (
        "curl",
        clients::curl_download,
        clients::curl_upload,
        clients::curl_list,
    ),
    (
        "lftp",
        clients::lftp_download,
        clients::lftp_upload,
        clients::lftp_list,
    ),
];

/// Harness self-check, no ftpgate involved: each daemon serves every client
/// directly on the private network (from the proxy host), and the backend's
/// private address is unreachable from the client.
fn direct(kind: ServerKind) {
    let topo = ReverseTopology::new();
    let server = topo.start_backend(kind);
    let target = FtpTarget::new(topo.backend_addr());
    let ctx = || context(None, &server);

    client_suite(
        &topo.proxy,
        &target,
        &server,
        Expect227(Some("10,0,0,2")),
        &ctx,
    );

    // Without ftpgate the client cannot reach the backend at all: this is
    // what makes the rewrite necessary in every other test.
    let work = tempfile::tempdir().unwrap();
    let t = clients::curl_list(&topo.client, &target, LIST_DIR, Passive::Pasv);
    // curl exit 7: "Couldn't connect to server" (no route), not some other
    // failure; the same command succeeded from the proxy host above.
    assert_eq!(
        t.code,
        Some(7),
        "client must not reach the backend's private address:\n{t}"
    );
    let t = clients::curl_download(
        &topo.client,
        &target,
        BIG_FILE,
        &work.path().join("x"),
        Passive::Epsv,
    );
    assert_eq!(t.code, Some(7), "client reached {}:\n{t}", target.addr);
}

#[test]
fn direct_vsftpd() {
    if common::e2e_enabled("direct_vsftpd") {
        direct(ServerKind::Vsftpd);
    }
}

#[test]
fn direct_proftpd() {
    if common::e2e_enabled("direct_proftpd") {
        direct(ServerKind::Proftpd);
    }
}

#[test]
fn direct_pyftpdlib() {
    if common::e2e_enabled("direct_pyftpdlib") {
        direct(ServerKind::Pyftpdlib);
    }
}

/// The full client suite through ftpgate against `kind`.
fn reverse(kind: ServerKind) {
    let topo = ReverseTopology::new();
    let server = topo.start_backend(kind);
    let mut gate = topo.start_ftpgate(topo.ftpgate_options(topo.backend_addr()));
    let target = FtpTarget::new(topo.proxy_v4());
    let ctx = || context(Some(&gate), &server);

    client_suite(
        &topo.client,
        &target,
        &server,
        Expect227(Some("203,0,113,1")),
        &ctx,
    );

    // The debug log shows each rewrite, from the backend's private tuple to
    // ftpgate's public one.
    let rewrites = gate.passive_rewrites();
    assert!(
        rewrites.iter().any(|(o, r)| o.starts_with("227")
            && o.contains("10,0,0,2,")
            && r.starts_with("227")
            && r.contains("203,0,113,1,")),
        "no logged 227 rewrite 10,0,0,2 -> 203,0,113,1 in {rewrites:?}\n{}",
        ctx()
    );
    assert!(
        rewrites
            .iter()
            .any(|(o, r)| o.starts_with("229") && r.starts_with("229") && r.contains("|||")),
        "no logged 229 rewrite in {rewrites:?}\n{}",
        ctx()
    );
    gate.assert_no_password();

    // SIGTERM after the sessions ended: a clean exit (status 0).
    let status = gate.stop();
    assert!(
        status.is_some_and(|s| s.success()),
        "ftpgate did not exit cleanly on SIGTERM: {status:?}\n{}",
        gate.logs()
    );
}

#[test]
fn reverse_vsftpd() {
    if common::e2e_enabled("reverse_vsftpd") {
        reverse(ServerKind::Vsftpd);
    }
}

#[test]
fn reverse_proftpd() {
    if common::e2e_enabled("reverse_proftpd") {
        reverse(ServerKind::Proftpd);
    }
}

#[test]
fn reverse_pyftpdlib() {
    if common::e2e_enabled("reverse_pyftpdlib") {
        reverse(ServerKind::Pyftpdlib);
    }
}

/// With rewriting disabled, the client is sent to the backend's private
/// address, which it cannot reach: the transfer fails. The same command with
/// rewriting enabled succeeds (the control experiment).
#[test]
fn no_rewrite_passive_fails() {
    if !common::e2e_enabled("no_rewrite_passive_fails") {
        return;
    }
    let topo = ReverseTopology::new();
    let server = topo.start_backend(ServerKind::Vsftpd);
    let mut options = topo.ftpgate_options(topo.backend_addr());
    options.rewrite_passive = false;
    let gate = topo.start_ftpgate(options);
    let target = FtpTarget::new(topo.proxy_v4());
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("big.bin");

    let t = clients::curl_download(&topo.client, &target, BIG_FILE, &out, Passive::Pasv);
    assert!(
        !t.success(),
        "transfer must fail without rewriting:\n{t}\n{}",
        context(Some(&gate), &server)
    );
    let seen = t.reply_lines("227");
    assert!(
        seen.iter().any(|l| l.contains("10,0,0,2")),
        "the client should have seen the backend's private 227 tuple, got {seen:?}\n{t}"
    );
    assert!(
        t.stderr.contains("Trying 10.0.0.2:"),
        "curl should have tried the private address (and failed):\n{t}"
    );

    // lftp, told not to "fix" private PASV addresses, fails the same way.
    let t = clients::lftp_download(&topo.client, &target, BIG_FILE, &out, Passive::Pasv);
    assert!(!t.success(), "lftp must fail without rewriting:\n{t}");
    let seen = t.reply_lines("227");
    assert!(
        seen.iter().any(|l| l.contains("10,0,0,2")),
        "lftp should have seen the backend's private 227 tuple, got {seen:?}\n{t}"
    );
    gate.assert_no_password();
    drop(gate);

    // Control: identical topology, server and command, rewriting on.
    let gate = topo.start_ftpgate(topo.ftpgate_options(topo.backend_addr()));
    let t = clients::curl_download(&topo.client, &target, BIG_FILE, &out, Passive::Pasv);
    t.assert_success(&context(Some(&gate), &server));
    assert_eq!(sha256_file(&out), server.root.big_sha256());
    gate.assert_no_password();
}

/// An IPv6 client talks to ftpgate's v6 listener and downloads, via EPSV,
/// from the IPv4-only backend.
#[test]
fn ipv6_client_epsv_to_ipv4_backend() {
    if !common::e2e_enabled("ipv6_client_epsv_to_ipv4_backend") {
        return;
    }
    let topo = ReverseTopology::new();
    let server = topo.start_backend(ServerKind::Vsftpd);
    let gate = topo.start_ftpgate(topo.ftpgate_options(topo.backend_addr()));
    let target = FtpTarget::new(topo.proxy_v6());
    let work = tempfile::tempdir().unwrap();
    let ctx = || context(Some(&gate), &server);

    let out = work.path().join("v6-curl.bin");
    let t = clients::curl_download(&topo.client, &target, BIG_FILE, &out, Passive::Epsv);
    t.assert_success(&ctx());
    assert!(
        t.stderr.contains("2001:db8:1::1"),
        "curl did not use IPv6:\n{t}"
    );
    assert_eq!(sha256_file(&out), server.root.big_sha256(), "{t}");

    let out = work.path().join("v6-lftp.bin");
    let t = clients::lftp_download(&topo.client, &target, BIG_FILE, &out, Passive::Epsv);
    t.assert_success(&ctx());
    assert_eq!(sha256_file(&out), server.root.big_sha256(), "{t}");
    gate.assert_no_password();
}

/// Python ftplib as a third client, both passive flavours, via ftpgate.
#[test]
fn ftplib_through_ftpgate() {
    if !common::e2e_enabled("ftplib_through_ftpgate") {
        return;
    }
    let topo = ReverseTopology::new();
    let server = topo.start_backend(ServerKind::Proftpd);
    let gate = topo.start_ftpgate(topo.ftpgate_options(topo.backend_addr()));
    let target = FtpTarget::new(topo.proxy_v4());
    let work = tempfile::tempdir().unwrap();
    for mode in [Passive::Epsv, Passive::Pasv] {
        let out = work.path().join(format!("{mode:?}.bin"));
        let t = clients::ftplib_download(&topo.client, &target, BIG_FILE, &out, mode);
        t.assert_success(&context(Some(&gate), &server));
        assert_eq!(sha256_file(&out), server.root.big_sha256(), "{t}");
    }
    gate.assert_no_password();
}

/// What the attacker observed on a mapped data port.
#[derive(Debug)]
struct Probe {
    bytes: usize,
    outcome: String,
}

/// Connects from the attacker's namespace to `addr` and reads until EOF
/// (bounded). Returns how many bytes arrived and how the connection ended.
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

/// The real client's side of the foreign-connection test, run in the client
/// namespace: log in, ask for a passive port, report it, wait until the
/// attacker is done, then RETR and hash the data.
fn retr_after_probe(
    ns: &Netns,
    control: SocketAddr,
    mode: Passive,
    port_tx: mpsc::Sender<SocketAddr>,
    go_rx: mpsc::Receiver<()>,
) -> Result<(String, String), String> {
    ns.spawn_thread(move || {
        let mut c = FtpControl::connect(control).map_err(|e| e.to_string())?;
        let r = (|| -> std::io::Result<String> {
            c.login(common::servers::FTP_USER, FTP_PASS)?;
            c.expect("TYPE I", 200)?;
            let data = match mode {
                Passive::Pasv => c.pasv()?,
                Passive::Epsv => SocketAddr::new(control.ip(), c.epsv()?),
            };
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
        match r {
            Ok(sha) => Ok((sha, c.transcript)),
            Err(e) => Err(format!("{e}\n{}", c.transcript)),
        }
    })
    .join()
    .expect("client thread")
}

/// A host other than the control client connects to the mapped data port
/// first: it is accepted and closed with zero bytes, and the real client's
/// transfer on the same port then completes byte-exact.
#[test]
fn foreign_data_connection_is_refused() {
    if !common::e2e_enabled("foreign_data_connection_is_refused") {
        return;
    }
    let topo = ReverseTopology::new();
    let server = topo.start_backend(ServerKind::Vsftpd);
    let gate = topo.start_ftpgate(topo.ftpgate_options(topo.backend_addr()));

    for mode in [Passive::Pasv, Passive::Epsv] {
        let (port_tx, port_rx) = mpsc::channel();
        let (go_tx, go_rx) = mpsc::channel();
        let client_ns = topo.client.clone();
        let control = topo.proxy_v4();
        let client =
            std::thread::spawn(move || retr_after_probe(&client_ns, control, mode, port_tx, go_rx));

        let data = match port_rx.recv_timeout(Duration::from_secs(30)) {
            Ok(data) => data,
            Err(e) => panic!(
                "{mode:?}: no passive port ({e}); client: {:?}\n{}",
                client.join(),
                context(Some(&gate), &server)
            ),
        };
        assert_eq!(
            data.ip(),
            IpAddr::V4(PROXY_PUBLIC_V4),
            "{mode:?}: data address must be ftpgate's public one"
        );

        let probe = probe_from(&topo.attacker, data);
        eprintln!("{mode:?}: attacker {ATTACKER_V4} -> {data}: {probe:?}");
        go_tx.send(()).unwrap();
        let result = client.join().expect("client");

        assert_eq!(
            probe.bytes,
            0,
            "{mode:?}: attacker received data: {probe:?}\n{}",
            context(Some(&gate), &server)
        );
        assert!(
            probe.outcome == "eof" || probe.outcome.contains("reset"),
            "{mode:?}: attacker's connection must be closed at once, got {probe:?}\n{}",
            context(Some(&gate), &server)
        );
        let (sha, transcript) = result.unwrap_or_else(|e| {
            panic!(
                "{mode:?}: real client failed after the probe: {e}\n{}",
                context(Some(&gate), &server)
            )
        });
        assert_eq!(
            sha,
            server.root.big_sha256(),
            "{mode:?}: bytes differ\n{transcript}"
        );
    }
    gate.assert_no_password();
}
