//! FTPS through ftpgate (issue 11), with real peers in namespaces: vsftpd with
//! `ssl_enable=YES`, `require_ssl_reuse=YES`, `strict_ssl_read_eof=YES`, proftpd
//! with mod_tls (its defaults), pyftpdlib's `TLS_FTPHandler` behind ftpgate; curl,
//! lftp and Python ftplib in front. Transfers are byte-exact.
//!
//! One topology and one vsftpd per test function; each case starts its own
//! ftpgate (a process start is cheap) on its own port and data-port range.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::Command;

use common::addrs::*;
use common::clients::{run, FtpTarget, Transcript};
use common::netns::Netns;
use common::probe::make_certificates;
use common::proxy::{Ftpgate, FtpgateOptions};
use common::servers::{
    upload_source, FtpServer, ServerKind, BIG_FILE, FTP_PASS, FTP_USER, SMALL_FILE,
};
use common::{sha256_file, ReverseTopology};

/// Certificates: ftpgate's (for 203.0.113.1) and the backend's (for 10.0.0.2),
/// each from its own CA, made with openssl at test time.
struct Pki {
    _dir: tempfile::TempDir,
    gate_ca: String,
    gate_cert: String,
    gate_key: String,
    backend_ca: String,
    backend_cert: String,
    backend_key: String,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let g = dir.path().join("gate");
        let b = dir.path().join("backend");
        std::fs::create_dir(&g).unwrap();
        std::fs::create_dir(&b).unwrap();
        let (gate_ca, gate_cert, gate_key) = make_certificates(&g, IpAddr::V4(PROXY_PUBLIC_V4));
        let (backend_ca, backend_cert, backend_key) = make_certificates(&b, IpAddr::V4(BACKEND_V4));
        Pki {
            _dir: dir,
            gate_ca,
            gate_cert,
            gate_key,
            backend_ca,
            backend_cert,
            backend_key,
        }
    }
}

/// vsftpd as strict as its code defaults get: TLS, session reuse required on data
/// connections, `426` for uploads that end without `close_notify`. Clear-text logins
/// stay allowed so the same server serves the offload cases.
fn vsftpd_tls(topo: &ReverseTopology, pki: &Pki) -> FtpServer {
    let extra = format!(
        "ssl_enable=YES\nrsa_cert_file={}\nrsa_private_key_file={}\n\
         require_ssl_reuse=YES\nstrict_ssl_read_eof=YES\nssl_ciphers=HIGH\n\
         force_local_logins_ssl=NO\nforce_local_data_ssl=NO\n\
         pasv_min_port=40000\npasv_max_port=40999\n",
        pki.backend_cert, pki.backend_key
    );
    FtpServer::start_with(
        &topo.topo,
        &topo.backend,
        topo.backend_addr(),
        ServerKind::Vsftpd,
        &extra,
    )
}

/// ftpgate on 203.0.113.1:`port` with data ports `data`, its certificate, and
/// `extra` flags.
fn gate(topo: &ReverseTopology, pki: &Pki, port: u16, data: (u16, u16), extra: &[&str]) -> Ftpgate {
    gate_to(topo, pki, topo.backend_addr(), port, data, extra)
}

/// [`gate`] towards `backend`.
fn gate_to(
    topo: &ReverseTopology,
    pki: &Pki,
    backend: SocketAddr,
    port: u16,
    data: (u16, u16),
    extra: &[&str],
) -> Ftpgate {
    let mut o = FtpgateOptions::new(
        vec![SocketAddr::new(IpAddr::V4(PROXY_PUBLIC_V4), port)],
        backend,
        vec![IpAddr::V4(PROXY_PUBLIC_V4)],
    );
    o.data_ports = data;
    o.extra_args = ["--tls-cert", &pki.gate_cert, "--tls-key", &pki.gate_key]
        .iter()
        .chain(extra)
        .map(|s| (*s).to_string())
        .collect();
    topo.start_ftpgate(o)
}

fn at(port: u16) -> FtpTarget {
    FtpTarget::new(SocketAddr::new(IpAddr::V4(PROXY_PUBLIC_V4), port))
}

fn context(gate: &Ftpgate, server: &FtpServer) -> String {
    format!(
        "--- ftpgate ---\n{}\n--- {} ---\n{}",
        gate.logs(),
        server.kind.name(),
        server.logs()
    )
}

/// How a client sets up data connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Epsv,
    Pasv,
    Active,
}

/// curl with explicit FTPS (`AUTH TLS`, `PROT P`), trusting ftpgate's CA.
fn curl_ftps(ns: &Netns, t: &FtpTarget, ca: &str, mode: Mode) -> Command {
    let mut cmd = common::clients::curl_command(ns, t);
    cmd.args(["--ssl-reqd", "--cacert", ca]);
    match mode {
        Mode::Epsv => cmd.args(["--ftp-pasv", "--no-ftp-skip-pasv-ip"]),
        Mode::Pasv => cmd.args(["--ftp-pasv", "--no-ftp-skip-pasv-ip", "--disable-epsv"]),
        // `-P -`: PORT/EPRT with the control connection's local address.
        Mode::Active => cmd.args(["-P", "-"]),
    };
    cmd
}

fn curl_get(
    ns: &Netns,
    t: &FtpTarget,
    ca: &str,
    mode: Mode,
    remote: &str,
    local: &Path,
) -> Transcript {
    let mut cmd = curl_ftps(ns, t, ca, mode);
    cmd.arg("-o").arg(local).arg(t.url(remote));
    run(cmd)
}

fn curl_put(
    ns: &Netns,
    t: &FtpTarget,
    ca: &str,
    mode: Mode,
    local: &Path,
    remote: &str,
) -> Transcript {
    let mut cmd = curl_ftps(ns, t, ca, mode);
    cmd.arg("-T").arg(local).arg(t.url(remote));
    run(cmd)
}

fn curl_list(ns: &Netns, t: &FtpTarget, ca: &str, mode: Mode) -> Transcript {
    let mut cmd = curl_ftps(ns, t, ca, mode);
    cmd.arg(t.url("pub/"));
    run(cmd)
}

/// curl with implicit FTPS (`ftps://`, TLS from the first byte) in passive mode:
/// `op` is `-o` (download `remote` to `local`) or `-T` (upload `local` as `remote`).
fn curl_implicit(
    ns: &Netns,
    t: &FtpTarget,
    ca: &str,
    op: &str,
    local: &Path,
    remote: &str,
) -> Transcript {
    let mut cmd = common::clients::curl_command(ns, t);
    cmd.args(["--cacert", ca, "--ftp-pasv", "--no-ftp-skip-pasv-ip", op])
        .arg(local)
        .arg(format!("ftps://{}:{}/{remote}", t.addr.ip(), t.addr.port()));
    run(cmd)
}

/// lftp forcing TLS on control and data (`ftp:ssl-force`, `ftp:ssl-protect-data`).
fn lftp_ftps(ns: &Netns, t: &FtpTarget, ca: &str, mode: Mode, script: &str) -> Transcript {
    let passive = if mode == Mode::Active { "off" } else { "on" };
    let epsv = if mode == Mode::Epsv { "yes" } else { "no" };
    let full = format!(
        "set cmd:fail-exit yes; set net:max-retries 1; set net:timeout 20; \
         set ftp:ssl-allow yes; set ftp:ssl-force yes; set ftp:ssl-protect-data yes; \
         set ftp:ssl-protect-list yes; set ssl:ca-file {ca}; set ssl:verify-certificate yes; \
         set ftp:passive-mode {passive}; set ftp:prefer-epsv {epsv}; \
         set ftp:fix-pasv-address no; set xfer:clobber yes; \
         open -u {user},{pass} {url}; {script}; bye",
        user = t.user,
        pass = t.pass,
        url = t.url(""),
    );
    let mut cmd = ns.command("lftp");
    cmd.args(["-d", "-c", &full]);
    run(cmd)
}

/// Python ftplib `FTP_TLS` with `prot_p()`: `op` is `get`, `put` or
/// `put-unclean` (the upload's TLS data connection is closed without
/// `close_notify`, as many clients do). `reuse`: data connections resume the
/// control session (the usual workaround for vsftpd's `require_ssl_reuse`;
/// plain ftplib does not). Prints `FINAL <reply>` for the transfer's end.
#[allow(clippy::too_many_arguments)]
fn ftplib_tls(
    ns: &Netns,
    addr: SocketAddr,
    ca: &str,
    mode: Mode,
    op: &str,
    remote: &str,
    local: &Path,
    reuse: bool,
) -> Transcript {
    let script = format!(
        r#"
import ftplib, ssl, socket, sys
ctx = ssl.create_default_context(cafile={ca:?})
# TLS 1.2: Python exposes a session for reuse only once TLS 1.3 tickets were read.
ctx.maximum_version = ssl.TLSVersion.TLSv1_2
class F(ftplib.FTP_TLS):
    def ntransfercmd(self, cmd, rest=None):
        conn, size = ftplib.FTP.ntransfercmd(self, cmd, rest)
        if self._prot_p:
            kw = {{"session": self.sock.session}} if {reuse} else {{}}
            conn = self.context.wrap_socket(conn, server_hostname=self.host, **kw)
        return conn, size
ftp = F(context=ctx, timeout=30)
ftp.set_debuglevel(1)
ftp.trust_server_pasv_ipv4_address = True
ftp.connect({host:?}, {port})
ftp.auth()
ftp.login({user:?}, {pw:?})
if {prot}:
    ftp.prot_p()
ftp.set_pasv({passive})
if {epsv}:
    ftp.af = socket.AF_INET6
op = {op:?}
ftp.voidcmd("TYPE I")
try:
    if op.startswith("get"):
        with open({local:?}, "wb") as f:
            conn = ftp.transfercmd("RETR " + {remote:?})
            while True:
                b = conn.recv(65536)
                if not b:
                    break
                f.write(b)
            conn.unwrap()
            conn.close()
    else:
        conn = ftp.transfercmd("STOR " + {remote:?})
        with open({local:?}, "rb") as f:
            while True:
                b = f.read(65536)
                if not b:
                    break
                conn.sendall(b)
        if op == "put":
            conn.unwrap()
        # put-unclean: SSLSocket.close() closes TCP without close_notify.
        conn.close()
    print("FINAL " + ftp.voidresp())
except ftplib.all_errors as e:
    print("FINAL " + str(e))
ftp.quit()
"#,
        host = addr.ip().to_string(),
        port = addr.port(),
        user = FTP_USER,
        pw = FTP_PASS,
        reuse = if reuse { "True" } else { "False" },
        prot = if op.ends_with("-clear") {
            "False"
        } else {
            "True"
        },
        passive = if mode == Mode::Active {
            "False"
        } else {
            "True"
        },
        epsv = if mode == Mode::Epsv { "True" } else { "False" },
        local = local.display().to_string(),
    );
    let mut cmd = ns.command("/usr/bin/python3");
    cmd.arg("-c").arg(script);
    run(cmd)
}

/// The `FINAL` line of an ftplib run.
fn final_reply(t: &Transcript) -> String {
    t.stdout
        .lines()
        .find_map(|l| l.strip_prefix("FINAL "))
        .unwrap_or_default()
        .to_string()
}

/// TLS on both sides (`--backend-tls mirror`, the default): every client, every
/// data mode, downloads, uploads and listings, byte-exact, through vsftpd that
/// requires session reuse and a clean TLS end on uploads.
#[test]
fn ftps_mirror_vsftpd() {
    if !common::e2e_enabled("ftps_mirror_vsftpd") {
        return;
    }
    let topo = ReverseTopology::new();
    let pki = Pki::new();
    let server = vsftpd_tls(&topo, &pki);
    let g = gate(
        &topo,
        &pki,
        21,
        (50000, 50099),
        &[
            "--backend-ca",
            &pki.backend_ca,
            "--admin-listen",
            "127.0.0.1:9464",
        ],
    );
    let t = at(21);
    let work = tempfile::tempdir().unwrap();
    let src = upload_source(work.path());
    let want_up = sha256_file(&src);
    let want_big = server.root.big_sha256().to_string();
    let ctx = || context(&g, &server);

    // Not curl in active mode: Debian 12's curl 7.88 never starts the TLS handshake
    // on an accepted FTPS data connection (it times out against vsftpd directly
    // too); lftp and ftplib cover active mode below.
    for mode in [Mode::Epsv, Mode::Pasv] {
        let out = work.path().join(format!("curl-{mode:?}.bin"));
        let r = curl_get(&topo.client, &t, &pki.gate_ca, mode, BIG_FILE, &out);
        r.assert_success(&format!("curl --ssl-reqd {mode:?} download\n{}", ctx()));
        assert_eq!(
            sha256_file(&out),
            want_big,
            "curl {mode:?} download\n{}",
            ctx()
        );
        let name = format!("curl-{mode:?}.bin");
        let r = curl_put(
            &topo.client,
            &t,
            &pki.gate_ca,
            mode,
            &src,
            &format!("upload/{name}"),
        );
        r.assert_success(&format!("curl --ssl-reqd {mode:?} upload\n{}", ctx()));
        assert_eq!(
            sha256_file(&server.root.uploaded(&name)),
            want_up,
            "curl {mode:?} upload\n{}",
            ctx()
        );
        let r = curl_list(&topo.client, &t, &pki.gate_ca, mode);
        r.assert_success(&format!("curl {mode:?} listing\n{}", ctx()));
        common::clients::assert_listing(&r, &ctx);
    }
    // curl really spoke TLS with ftpgate, and asked for protected data.
    let r = curl_get(
        &topo.client,
        &t,
        &pki.gate_ca,
        Mode::Epsv,
        SMALL_FILE,
        &work.path().join("s"),
    );
    assert!(
        r.stderr.contains("AUTH TLS") && r.stderr.contains("PROT P"),
        "{r}"
    );

    for mode in [Mode::Epsv, Mode::Active] {
        let out = work.path().join(format!("lftp-{mode:?}.bin"));
        let name = format!("lftp-{mode:?}.bin");
        let script = format!(
            "get {BIG_FILE} -o {}; put {} -o upload/{name}; cls -1 pub/",
            out.display(),
            src.display()
        );
        let r = lftp_ftps(&topo.client, &t, &pki.gate_ca, mode, &script);
        r.assert_success(&format!("lftp ssl-force {mode:?}\n{}", ctx()));
        assert_eq!(
            sha256_file(&out),
            want_big,
            "lftp {mode:?} download\n{}",
            ctx()
        );
        assert_eq!(
            sha256_file(&server.root.uploaded(&name)),
            want_up,
            "lftp {mode:?} upload\n{}",
            ctx()
        );
        common::clients::assert_listing(&r, &ctx);
    }

    // Plain ftplib never resumes the control session on data connections: ftpgate
    // accepts that (tls.require_session_reuse: false) and resumes towards vsftpd.
    for mode in [Mode::Pasv, Mode::Active] {
        let out = work.path().join(format!("ftplib-{mode:?}.bin"));
        let r = ftplib_tls(
            &topo.client,
            t.addr,
            &pki.gate_ca,
            mode,
            "get",
            BIG_FILE,
            &out,
            false,
        );
        assert!(
            final_reply(&r).starts_with("226"),
            "ftplib {mode:?} get\n{r}\n{}",
            ctx()
        );
        assert_eq!(
            sha256_file(&out),
            want_big,
            "ftplib {mode:?} download\n{}",
            ctx()
        );
        let name = format!("ftplib-{mode:?}.bin");
        let r = ftplib_tls(
            &topo.client,
            t.addr,
            &pki.gate_ca,
            mode,
            "put",
            &format!("upload/{name}"),
            &src,
            false,
        );
        assert!(
            final_reply(&r).starts_with("226"),
            "ftplib {mode:?} put\n{r}\n{}",
            ctx()
        );
        assert_eq!(
            sha256_file(&server.root.uploaded(&name)),
            want_up,
            "ftplib {mode:?} upload\n{}",
            ctx()
        );
    }

    // The backend saw TLS on control and data, and data connections resumed.
    let logs = g.logs();
    assert!(
        logs.contains("backend control connection in TLS"),
        "{}",
        ctx()
    );
    // Metrics: resumed backend data handshakes, and the certificate's remaining life
    // (made for 30 days by the test) counted down from its notAfter.
    let mut cmd = topo.proxy.command("curl");
    cmd.args(["-s", "http://127.0.0.1:9464/metrics"]);
    let metrics = run(cmd).stdout;
    let sample = |prefix: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    assert!(
        sample("ftpgate_tls_handshakes_total{outcome=\"resumed\",side=\"backend\"") > 0.0,
        "no resumed backend handshake counted:\n{metrics}"
    );
    let expiry = sample("ftpgate_tls_certificate_expiry_seconds");
    assert!(
        (29.0 * 86400.0..=30.0 * 86400.0 + 60.0).contains(&expiry),
        "certificate expiry gauge {expiry}:\n{metrics}"
    );
    g.assert_no_password();
}

/// Writes a YAML config with `tls:` keys that have no flag; returns its path.
fn yaml(dir: &Path, name: &str, tls: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, format!("tls:\n{tls}")).unwrap();
    p.display().to_string()
}

/// Policies and failure paths, on one vsftpd: the `strict_ssl_read_eof` 426 case
/// (direct, `complete`, `abort`), offload, `required` client policies, session
/// reuse on client data connections, an untrusted backend certificate.
#[test]
fn ftps_policies_vsftpd() {
    if !common::e2e_enabled("ftps_policies_vsftpd") {
        return;
    }
    let topo = ReverseTopology::new();
    let pki = Pki::new();
    let server = vsftpd_tls(&topo, &pki);
    let work = tempfile::tempdir().unwrap();
    let src = upload_source(work.path());
    let want_up = sha256_file(&src);
    let want_big = server.root.big_sha256().to_string();
    let ca_flag = ["--backend-ca", pki.backend_ca.as_str()];

    // (1) The vsftpd 426 case, directly (from the proxy host, which reaches the
    // backend): an upload ended without close_notify fails.
    let direct = ftplib_tls(
        &topo.proxy,
        topo.backend_addr(),
        &pki.backend_ca,
        Mode::Pasv,
        "put-unclean",
        "upload/direct.bin",
        &src,
        true,
    );
    assert!(
        final_reply(&direct).starts_with("426"),
        "direct unclean upload:\n{direct}\n{}",
        server.logs()
    );

    // (2) Through ftpgate, `complete` (default): the backend sees a clean end, 226,
    // and the file is intact.
    let g = gate(&topo, &pki, 21, (50000, 50099), &ca_flag);
    let r = ftplib_tls(
        &topo.client,
        at(21).addr,
        &pki.gate_ca,
        Mode::Pasv,
        "put-unclean",
        "upload/complete.bin",
        &src,
        false,
    );
    assert!(
        final_reply(&r).starts_with("226"),
        "unclean upload, complete:\n{r}\n{}",
        context(&g, &server)
    );
    assert_eq!(
        sha256_file(&server.root.uploaded("complete.bin")),
        want_up,
        "{}",
        context(&g, &server)
    );
    assert!(
        g.logs()
            .contains("without close_notify; completing the backend side cleanly"),
        "{}",
        g.logs()
    );

    // (3) `abort`: the backend data connection is reset; the transfer fails.
    let cfg = yaml(work.path(), "abort.yaml", "  unclean_client_eof: abort\n");
    let g = gate(
        &topo,
        &pki,
        2121,
        (50100, 50199),
        &["--config", &cfg, "--backend-ca", &pki.backend_ca],
    );
    let r = ftplib_tls(
        &topo.client,
        at(2121).addr,
        &pki.gate_ca,
        Mode::Pasv,
        "put-unclean",
        "upload/abort.bin",
        &src,
        false,
    );
    let fin = final_reply(&r);
    assert!(
        !fin.is_empty() && !fin.starts_with('2'),
        "unclean upload, abort, must fail:\n{r}\n{}",
        context(&g, &server)
    );
    assert!(
        g.logs().contains("resetting the backend side"),
        "{}",
        g.logs()
    );

    // (4) Offload (`--backend-tls off`): TLS client, clear backend.
    let g = gate(&topo, &pki, 2122, (50200, 50299), &["--backend-tls", "off"]);
    let t = at(2122);
    let out = work.path().join("offload.bin");
    let r = curl_get(&topo.client, &t, &pki.gate_ca, Mode::Epsv, BIG_FILE, &out);
    r.assert_success(&context(&g, &server));
    assert_eq!(sha256_file(&out), want_big);
    let r = curl_put(
        &topo.client,
        &t,
        &pki.gate_ca,
        Mode::Pasv,
        &src,
        "upload/offload.bin",
    );
    r.assert_success(&context(&g, &server));
    assert_eq!(sha256_file(&server.root.uploaded("offload.bin")), want_up);
    assert!(r.stderr.contains("PROT P"), "{r}");
    assert!(
        !g.logs().contains("backend control connection in TLS"),
        "offload spoke TLS to the backend:\n{}",
        g.logs()
    );

    // (5) `tls.client: required` + `tls.client_data: required`: a clear-text login
    // gets 530 and never reaches the backend; `PROT C` transfers get 521.
    let cfg = yaml(
        work.path(),
        "required.yaml",
        "  client: required\n  client_data: required\n",
    );
    let g = gate(
        &topo,
        &pki,
        2123,
        (50300, 50399),
        &["--config", &cfg, "--backend-ca", &pki.backend_ca],
    );
    let t = at(2123);
    let logins = || server.logs().matches("OK LOGIN").count();
    let before = logins();
    let mut cmd = common::clients::curl_command(&topo.client, &t);
    cmd.arg(t.url(SMALL_FILE))
        .arg("-o")
        .arg(work.path().join("clear.txt"));
    let r = run(cmd);
    assert!(
        !r.success() && r.stderr.contains("< 530"),
        "clear login must get 530:\n{r}"
    );
    assert_eq!(
        logins(),
        before,
        "a clear-text login reached the backend:\n{}",
        server.logs()
    );
    let r = ftplib_tls(
        &topo.client,
        t.addr,
        &pki.gate_ca,
        Mode::Pasv,
        "get-clear",
        SMALL_FILE,
        &work.path().join("c"),
        false,
    );
    assert!(
        final_reply(&r).starts_with("521"),
        "PROT C transfer must get 521:\n{r}\n{}",
        g.logs()
    );
    let r = curl_get(
        &topo.client,
        &t,
        &pki.gate_ca,
        Mode::Epsv,
        SMALL_FILE,
        &work.path().join("ok.txt"),
    );
    r.assert_success(&context(&g, &server));

    // (6) `tls.require_session_reuse: true`: ftplib (no reuse) is refused on its
    // data connection, curl (which resumes) is served.
    let cfg = yaml(work.path(), "reuse.yaml", "  require_session_reuse: true\n");
    let g = gate(
        &topo,
        &pki,
        2124,
        (50400, 50499),
        &["--config", &cfg, "--backend-ca", &pki.backend_ca],
    );
    let t = at(2124);
    let r = ftplib_tls(
        &topo.client,
        t.addr,
        &pki.gate_ca,
        Mode::Pasv,
        "get",
        SMALL_FILE,
        &work.path().join("n"),
        false,
    );
    assert!(
        g.logs().contains("did not resume the TLS session"),
        "{r}\n{}",
        g.logs()
    );
    assert!(
        !final_reply(&r).starts_with("226"),
        "non-resumed data handshake must be refused:\n{r}\n{}",
        g.logs()
    );
    let r = ftplib_tls(
        &topo.client,
        t.addr,
        &pki.gate_ca,
        Mode::Pasv,
        "get",
        SMALL_FILE,
        &work.path().join("y"),
        true,
    );
    assert!(
        final_reply(&r).starts_with("226"),
        "resumed data handshake must pass:\n{r}\n{}",
        g.logs()
    );
    let r = curl_get(
        &topo.client,
        &t,
        &pki.gate_ca,
        Mode::Epsv,
        SMALL_FILE,
        &work.path().join("r.txt"),
    );
    r.assert_success(&format!("curl resumes its data sessions\n{}", g.logs()));

    // (7) A backend certificate from a CA ftpgate does not trust: 421 and a log line
    // naming the reason.
    let g = gate(&topo, &pki, 2125, (50500, 50599), &[]);
    let r = curl_get(
        &topo.client,
        &at(2125),
        &pki.gate_ca,
        Mode::Epsv,
        SMALL_FILE,
        &work.path().join("u"),
    );
    assert!(
        !r.success() && r.stderr.contains("< 421"),
        "untrusted backend must give 421:\n{r}"
    );
    assert!(
        g.logs().contains("TLS towards the backend failed") && g.logs().contains("UnknownIssuer"),
        "{}",
        g.logs()
    );
    g.assert_no_password();
}

/// The other client-TLS × backend-TLS combinations: a clear client with TLS forced
/// towards the backend (`--backend-tls required`), implicit FTPS in front of an
/// explicit backend, and an implicit-FTPS backend behind clear and TLS clients.
#[test]
fn ftps_upgrade_and_implicit_vsftpd() {
    if !common::e2e_enabled("ftps_upgrade_and_implicit_vsftpd") {
        return;
    }
    let topo = ReverseTopology::new();
    let pki = Pki::new();
    let server = vsftpd_tls(&topo, &pki);
    let implicit_addr = SocketAddr::new(IpAddr::V4(BACKEND_V4), 990);
    let implicit = FtpServer::start_with(
        &topo.topo,
        &topo.backend,
        implicit_addr,
        ServerKind::Vsftpd,
        &format!(
            "ssl_enable=YES\nimplicit_ssl=YES\nrsa_cert_file={}\nrsa_private_key_file={}\n\
             require_ssl_reuse=YES\nstrict_ssl_read_eof=YES\nssl_ciphers=HIGH\n\
             pasv_min_port=41000\npasv_max_port=41999\n",
            pki.backend_cert, pki.backend_key
        ),
    );
    let work = tempfile::tempdir().unwrap();
    let src = upload_source(work.path());
    let want_up = sha256_file(&src);
    let ca = ["--backend-ca", pki.backend_ca.as_str()];

    // (a) Clear client, `--backend-tls required`: vsftpd gets AUTH TLS, PBSZ, PROT P
    // from ftpgate, and TLS data connections that resume its session.
    let g = gate(
        &topo,
        &pki,
        21,
        (50000, 50099),
        &[&ca[..], &["--backend-tls", "required"]].concat(),
    );
    let t = at(21);
    let out = work.path().join("required.bin");
    let r = common::clients::curl_download(
        &topo.client,
        &t,
        BIG_FILE,
        &out,
        common::clients::Passive::Epsv,
    );
    r.assert_success(&context(&g, &server));
    assert_eq!(sha256_file(&out), server.root.big_sha256());
    let r = common::clients::curl_upload(
        &topo.client,
        &t,
        &src,
        "upload/required.bin",
        common::clients::Passive::Pasv,
    );
    r.assert_success(&context(&g, &server));
    assert_eq!(sha256_file(&server.root.uploaded("required.bin")), want_up);
    assert!(
        !r.stderr.contains("AUTH TLS"),
        "the client itself stayed clear:\n{r}"
    );
    assert!(
        g.logs().contains("backend control connection in TLS"),
        "{}",
        g.logs()
    );
    let log = server.logs();
    assert!(
        log.contains("\"AUTH TLS\"") && log.contains("\"PROT P\""),
        "vsftpd saw no upgrade:\n{log}"
    );

    // (b) Implicit FTPS (ftps://, port 990) in front of the explicit vsftpd.
    let g = gate(
        &topo,
        &pki,
        2121,
        (50100, 50199),
        &[&ca[..], &["--implicit-tls-listen", "203.0.113.1:990"]].concat(),
    );
    let out = work.path().join("implicit.bin");
    let r = curl_implicit(&topo.client, &at(990), &pki.gate_ca, "-o", &out, BIG_FILE);
    r.assert_success(&context(&g, &server));
    assert_eq!(sha256_file(&out), server.root.big_sha256());
    let r = curl_implicit(
        &topo.client,
        &at(990),
        &pki.gate_ca,
        "-T",
        &src,
        "upload/implicit.bin",
    );
    r.assert_success(&context(&g, &server));
    assert_eq!(sha256_file(&server.root.uploaded("implicit.bin")), want_up);

    // (c) An implicit-FTPS backend, behind a clear client and a TLS client.
    let g = gate_to(
        &topo,
        &pki,
        implicit_addr,
        2122,
        (50200, 50299),
        &[&ca[..], &["--backend-tls", "implicit"]].concat(),
    );
    let t = at(2122);
    let out = work.path().join("to-implicit-clear.bin");
    let r = common::clients::curl_download(
        &topo.client,
        &t,
        BIG_FILE,
        &out,
        common::clients::Passive::Epsv,
    );
    r.assert_success(&context(&g, &implicit));
    assert_eq!(sha256_file(&out), implicit.root.big_sha256());
    let out = work.path().join("to-implicit-tls.bin");
    let r = curl_get(&topo.client, &t, &pki.gate_ca, Mode::Pasv, BIG_FILE, &out);
    r.assert_success(&context(&g, &implicit));
    assert_eq!(sha256_file(&out), implicit.root.big_sha256());
    let r = curl_put(
        &topo.client,
        &t,
        &pki.gate_ca,
        Mode::Epsv,
        &src,
        "upload/via-implicit.bin",
    );
    r.assert_success(&context(&g, &implicit));
    assert_eq!(
        sha256_file(&implicit.root.uploaded("via-implicit.bin")),
        want_up
    );
    g.assert_no_password();
}

/// Transparent gateway mode: ftpgate has no certificate for internet servers, so a
/// LAN client's `AUTH TLS` turns its control connection into an opaque relay, and
/// passive FTPS through the gateway's NAT works as without ftpgate.
#[test]
fn ftps_transparent_passthrough() {
    use common::gateway::{Divert, GatewayTopology, SERVER_V4};
    if !common::e2e_enabled("ftps_transparent_passthrough") {
        return;
    }
    let topo = GatewayTopology::with_redirect();
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = make_certificates(dir.path(), IpAddr::V4(SERVER_V4));
    let server = FtpServer::start_with(
        &topo.topo,
        &topo.server,
        SocketAddr::new(IpAddr::V4(SERVER_V4), 21),
        ServerKind::Vsftpd,
        &format!(
            "ssl_enable=YES\nrsa_cert_file={cert}\nrsa_private_key_file={key}\n\
             require_ssl_reuse=YES\nssl_ciphers=HIGH\n"
        ),
    );
    let gate = topo.start_transparent(GatewayTopology::default_listen(), Divert::Redirect);
    let t = topo.target(false);
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("passthrough.bin");
    let r = curl_get(&topo.client, &t, &ca, Mode::Epsv, BIG_FILE, &out);
    r.assert_success(&format!("{}\n{}", gate.logs(), server.logs()));
    assert_eq!(sha256_file(&out), server.root.big_sha256());
    // The TLS session was the server's own: curl verified its certificate.
    assert!(
        gate.logs()
            .contains("relaying the control connection opaquely"),
        "{}",
        gate.logs()
    );
}

/// A TLS backend of one kind behind ftpgate on port 21 (data ports 50000-50099),
/// TLS on both sides, the backend's certificate checked against its CA; and an
/// upload source. The setup of the per-server mirror tests below.
struct MirrorRig {
    topo: ReverseTopology,
    pki: Pki,
    server: FtpServer,
    gate: Ftpgate,
    t: FtpTarget,
    work: tempfile::TempDir,
    src: std::path::PathBuf,
    want_up: String,
}

impl MirrorRig {
    /// `extra`: the server's TLS settings, given its certificate files. `None` when
    /// the end-to-end tests are disabled (`test` names the caller).
    fn start(
        test: &str,
        kind: ServerKind,
        extra: impl FnOnce(&Pki) -> String,
    ) -> Option<MirrorRig> {
        if !common::e2e_enabled(test) {
            return None;
        }
        let topo = ReverseTopology::new();
        let pki = Pki::new();
        let server = FtpServer::start_with(
            &topo.topo,
            &topo.backend,
            topo.backend_addr(),
            kind,
            &extra(&pki),
        );
        let gate = gate(
            &topo,
            &pki,
            21,
            (50000, 50099),
            &["--backend-ca", &pki.backend_ca],
        );
        let work = tempfile::tempdir().unwrap();
        let src = upload_source(work.path());
        let want_up = sha256_file(&src);
        Some(MirrorRig {
            topo,
            pki,
            server,
            gate,
            t: at(21),
            work,
            src,
            want_up,
        })
    }

    fn ctx(&self) -> String {
        context(&self.gate, &self.server)
    }

    /// ftpgate's control connection to the backend went TLS, and no password was logged.
    fn assert_backend_tls_and_no_password(&self) {
        let logs = self.gate.logs();
        assert!(
            logs.contains("backend control connection in TLS"),
            "{}",
            self.ctx()
        );
        self.gate.assert_no_password();
    }

    /// curl downloads [`BIG_FILE`] in `get` mode and uploads `upload/<name>.bin` in
    /// `put` mode, both byte-exact.
    fn curl_get_put(&self, get: Mode, put: Mode, name: &str) {
        let out = self.work.path().join(format!("{name}.bin"));
        let ca = &self.pki.gate_ca;
        let r = curl_get(&self.topo.client, &self.t, ca, get, BIG_FILE, &out);
        r.assert_success(&self.ctx());
        assert_eq!(
            sha256_file(&out),
            self.server.root.big_sha256(),
            "{}",
            self.ctx()
        );
        let remote = format!("upload/{name}.bin");
        let r = curl_put(&self.topo.client, &self.t, ca, put, &self.src, &remote);
        r.assert_success(&self.ctx());
        let up = self.server.root.uploaded(&format!("{name}.bin"));
        assert_eq!(sha256_file(&up), self.want_up, "{}", self.ctx());
    }

    /// lftp in `mode`: downloads [`BIG_FILE`], uploads `upload/<name>.bin`, lists
    /// `pub/`, then runs `more`; byte-exact. Returns the transcript.
    fn lftp_get_put_list(&self, mode: Mode, name: &str, more: &str) -> Transcript {
        let out = self.work.path().join(format!("{name}.bin"));
        let script = format!(
            "get {BIG_FILE} -o {}; put {} -o upload/{name}.bin; cls -1 pub/{more}",
            out.display(),
            self.src.display()
        );
        let r = lftp_ftps(&self.topo.client, &self.t, &self.pki.gate_ca, mode, &script);
        r.assert_success(&self.ctx());
        assert_eq!(
            sha256_file(&out),
            self.server.root.big_sha256(),
            "{}",
            self.ctx()
        );
        let up = self.server.root.uploaded(&format!("{name}.bin"));
        assert_eq!(sha256_file(&up), self.want_up, "{}", self.ctx());
        common::clients::assert_listing(&r, &|| self.ctx());
        r
    }
}

/// pyftpdlib's `TLS_FTPHandler` (pyOpenSSL) behind ftpgate, TLS on both sides:
/// curl, lftp and ftplib, passive and active, byte-exact. pyftpdlib resets a data
/// connection whose ClientHello arrives before it processed the transfer command,
/// so ftpgate starts backend data TLS only after the `150` (as curl does).
#[test]
fn ftps_mirror_pyftpdlib() {
    let Some(rig) = MirrorRig::start("ftps_mirror_pyftpdlib", ServerKind::Pyftpdlib, |pki| {
        format!(
            "tls_cert={}\ntls_key={}\n",
            pki.backend_cert, pki.backend_key
        )
    }) else {
        return;
    };
    rig.curl_get_put(Mode::Epsv, Mode::Pasv, "curl");
    rig.lftp_get_put_list(Mode::Active, "lftp", "; quote FEAT");

    let out = rig.work.path().join("ftplib.bin");
    let r = ftplib_tls(
        &rig.topo.client,
        rig.t.addr,
        &rig.pki.gate_ca,
        Mode::Epsv,
        "get",
        BIG_FILE,
        &out,
        false,
    );
    assert!(final_reply(&r).starts_with("226"), "{r}\n{}", rig.ctx());
    assert_eq!(sha256_file(&out), rig.server.root.big_sha256());
    rig.gate.assert_no_password();
}

/// ProFTPD with mod_tls at its defaults (session reuse required on data connections)
/// behind ftpgate, TLS on both sides: curl and lftp, passive and active, byte-exact.
#[test]
fn ftps_mirror_proftpd() {
    let tls_log = tempfile::tempdir().unwrap();
    let Some(rig) = MirrorRig::start("ftps_mirror_proftpd", ServerKind::Proftpd, |pki| {
        format!(
            "ModulePath {modules}\nLoadModule mod_tls.c\n<IfModule mod_tls.c>\n\
             TLSEngine on\nTLSRSACertificateFile {cert}\nTLSRSACertificateKeyFile {key}\n\
             TLSProtocol TLSv1.2 TLSv1.3\nTLSLog {log}\n</IfModule>\n",
            modules = common::servers::PROFTPD_CRYPTO_MODULES,
            cert = pki.backend_cert,
            key = pki.backend_key,
            log = tls_log.path().join("tls.log").display(),
        )
    }) else {
        return;
    };
    rig.curl_get_put(Mode::Epsv, Mode::Pasv, "curl");
    rig.lftp_get_put_list(Mode::Active, "lftp", "");
    rig.assert_backend_tls_and_no_password();
}

/// Pure-FTPd 1.0.50 (Debian 12) with `--tls=2` — TLS required on the control
/// connection: a clear-text `USER` gets `421` and the connection closes — behind
/// ftpgate, TLS on both sides (`mirror`, the backend's certificate checked): curl and
/// lftp, downloads and uploads in EPSV, PASV and active mode, byte-exact, and the
/// clear-text login through ftpgate still refused by the server itself.
///
/// What pure-ftpd in Debian 12 cannot do here: its options live on the command line
/// (the Debian wrapper and `/etc/pure-ftpd/conf` are not used: the package conflicts
/// with vsftpd as an `ftp-server`, so it is only unpacked); it logs commands to
/// syslog only, so the test cannot read what it received (transfers go to
/// `--altlog`); `--tls=2` leaves data connections to the client's `PROT` (`--tls=3`
/// would force `PROT P`, which curl and lftp send anyway).
#[test]
fn ftps_mirror_pure_ftpd() {
    let Some(rig) = MirrorRig::start("ftps_mirror_pure_ftpd", ServerKind::PureFtpd, |pki| {
        format!(
            "--tls=2 --certfile={},{}",
            pki.backend_cert, pki.backend_key
        )
    }) else {
        return;
    };

    // The server's own policy holds through ftpgate: no clear-text login.
    let mut plain = common::clients::curl_command(&rig.topo.client, &rig.t);
    plain.arg("-o").arg(rig.work.path().join("plain.bin"));
    plain.arg(rig.t.url(SMALL_FILE));
    let r = run(plain);
    assert!(
        !r.success(),
        "clear-text login accepted:\n{r}\n{}",
        rig.ctx()
    );
    assert!(
        r.reply_lines("421").iter().any(|l| l.contains("cleartext")),
        "pure-ftpd's own 421 expected:\n{r}\n{}",
        rig.ctx()
    );

    rig.curl_get_put(Mode::Epsv, Mode::Epsv, "curl-epsv");
    rig.curl_get_put(Mode::Pasv, Mode::Pasv, "curl-pasv");
    rig.lftp_get_put_list(Mode::Epsv, "lftp-epsv", "");
    rig.lftp_get_put_list(Mode::Active, "lftp-active", "");
    rig.assert_backend_tls_and_no_password();
}

/// `balance: user` with FTPS (issues 12 and 11): ftpgate greets, answers `AUTH TLS`
/// (and lftp's `FEAT`, `PBSZ`, `PROT`) itself before `USER`, then routes by name,
/// connects, upgrades the vsftpd it chose (`mirror`: the client is in TLS) and only
/// then replays `USER`. Two users on two vsftpd (each requiring session reuse):
/// `ftpgate-test` is routed to the server its name's hash would NOT pick (so only the
/// route can put it there), `anonymous` to the other, the only one that allows
/// anonymous logins. curl `--ssl-reqd`, lftp `ftp:ssl-force` and implicit FTPS
/// (`ftps://`, port 990), byte-exact both ways.
#[test]
fn ftps_user_routing_vsftpd() {
    if !common::e2e_enabled("ftps_user_routing_vsftpd") {
        return;
    }
    let topo = ReverseTopology::new();
    let second = std::net::Ipv4Addr::new(10, 0, 0, 3);
    topo.backend.addr("eth0", &format!("{second}/24"));
    let pki = Pki::new();
    let work = tempfile::tempdir().unwrap();
    let second_dir = work.path().join("second");
    std::fs::create_dir(&second_dir).unwrap();
    let (second_ca, second_cert, second_key) = make_certificates(&second_dir, IpAddr::V4(second));
    let cas = work.path().join("backend-cas.pem");
    std::fs::write(
        &cas,
        [
            std::fs::read(&pki.backend_ca).unwrap(),
            std::fs::read(&second_ca).unwrap(),
        ]
        .concat(),
    )
    .unwrap();
    let first = topo.backend_addr();
    let other = SocketAddr::new(IpAddr::V4(second), 21);
    let score = |a: SocketAddr| ftpgate::farm::policy::hrw_score(FTP_USER, a, 1);
    let (user_home, anon_home) = if score(first) < score(other) {
        (first, other)
    } else {
        (other, first)
    };
    // Anonymous files: world-readable, outside any writable chroot (vsftpd insists).
    let anon_root = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        anon_root.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let anon_file = anon_root.path().join("anon.bin");
    common::servers::write_random_file(&anon_file, 3 * 1024 * 1024 + 17);
    std::fs::set_permissions(
        &anon_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    let start = |addr: SocketAddr| {
        let (cert, key, pasv) = if addr == first {
            (&pki.backend_cert, &pki.backend_key, 40000)
        } else {
            (&second_cert, &second_key, 42000)
        };
        let anon = if addr == anon_home {
            format!(
                "anonymous_enable=YES\nanon_root={}\nno_anon_password=YES\nallow_anon_ssl=YES\n",
                anon_root.path().display()
            )
        } else {
            String::new()
        };
        FtpServer::start_with(
            &topo.topo,
            &topo.backend,
            addr,
            ServerKind::Vsftpd,
            &format!(
                "ssl_enable=YES\nrsa_cert_file={cert}\nrsa_private_key_file={key}\n\
                 require_ssl_reuse=YES\nstrict_ssl_read_eof=YES\nssl_ciphers=HIGH\n\
                 force_local_logins_ssl=NO\nforce_local_data_ssl=NO\n\
                 pasv_min_port={pasv}\npasv_max_port={}\n{anon}",
                pasv + 999
            ),
        )
    };
    let users = start(user_home);
    let anons = start(anon_home);
    let cfg = work.path().join("ftpgate.yaml");
    std::fs::write(
        &cfg,
        format!(
            "balance: user\ngreeting: farm ready\nroutes:\n  - {{user: {FTP_USER}, backends: ['{user_home}']}}\n  - {{user: anonymous, backends: ['{anon_home}']}}\n"
        ),
    )
    .unwrap();
    let mut o = FtpgateOptions::new(
        vec![SocketAddr::new(IpAddr::V4(PROXY_PUBLIC_V4), 21)],
        first,
        vec![IpAddr::V4(PROXY_PUBLIC_V4)],
    );
    o.backend.push(other);
    o.extra_args = [
        "--config",
        &cfg.display().to_string(),
        "--tls-cert",
        &pki.gate_cert,
        "--tls-key",
        &pki.gate_key,
        "--backend-ca",
        &cas.display().to_string(),
        "--implicit-tls-listen",
        "203.0.113.1:990",
    ]
    .iter()
    .map(|s| (*s).to_string())
    .collect();
    let g = topo.start_ftpgate(o);
    let ctx = || {
        format!(
            "{}\n--- user's vsftpd ---\n{}\n--- anonymous vsftpd ---\n{}",
            g.logs(),
            users.logs(),
            anons.logs()
        )
    };
    let t = at(21);
    let anon = FtpTarget {
        user: "anonymous".into(),
        pass: "guest".into(),
        ..at(21)
    };

    // curl --ssl-reqd: AUTH TLS, then USER; EPSV and PASV, down and up.
    for mode in [Mode::Epsv, Mode::Pasv] {
        let out = work.path().join(format!("user-{mode:?}.bin"));
        let r = curl_get(&topo.client, &t, &pki.gate_ca, mode, BIG_FILE, &out);
        r.assert_success(&ctx());
        assert!(r.stderr.contains("220 farm ready"), "{r}");
        assert_eq!(sha256_file(&out), users.root.big_sha256(), "{mode:?}");
        let out = work.path().join(format!("anon-{mode:?}.bin"));
        let r = curl_get(&topo.client, &anon, &pki.gate_ca, mode, "anon.bin", &out);
        r.assert_success(&ctx());
        assert_eq!(sha256_file(&out), sha256_file(&anon_file), "{mode:?}");
    }
    let (src, ca) = (upload_source(work.path()), &pki.gate_ca);
    let r = curl_put(&topo.client, &t, ca, Mode::Epsv, &src, "upload/routed.bin");
    r.assert_success(&ctx());
    assert_eq!(
        sha256_file(&users.root.uploaded("routed.bin")),
        sha256_file(&src)
    );

    // lftp: FEAT before AUTH TLS (answered by ftpgate), then the login inside TLS.
    let out = work.path().join("lftp.bin");
    let r = lftp_ftps(
        &topo.client,
        &t,
        &pki.gate_ca,
        Mode::Epsv,
        &format!("get {BIG_FILE} -o {}", out.display()),
    );
    r.assert_success(&ctx());
    assert_eq!(sha256_file(&out), users.root.big_sha256());

    // Implicit FTPS: ftpgate's greeting inside TLS, then both users.
    for (who, remote, want) in [
        (&t, BIG_FILE, users.root.big_sha256().to_owned()),
        (&anon, "anon.bin", sha256_file(&anon_file)),
    ] {
        let out = work.path().join(format!("implicit-{}.bin", who.user));
        let implicit = FtpTarget {
            addr: SocketAddr::new(IpAddr::V4(PROXY_PUBLIC_V4), 990),
            ..(*who).clone()
        };
        let r = curl_implicit(&topo.client, &implicit, &pki.gate_ca, "-o", &out, remote);
        r.assert_success(&ctx());
        assert_eq!(sha256_file(&out), want, "{}", who.user);
    }

    // Each vsftpd saw only its user, over TLS that ftpgate started before USER.
    let (ul, al) = (users.logs(), anons.logs());
    assert_eq!(ul.matches("OK LOGIN").count(), 5, "{}", ctx());
    assert!(!ul.contains("anon password"), "{}", ctx());
    assert_eq!(al.matches("OK LOGIN").count(), 3, "{}", ctx());
    assert_eq!(al.matches("anon password").count(), 3, "{}", ctx());
    for log in [&ul, &al] {
        let auth = log.find("\"AUTH TLS\"").expect("AUTH TLS from ftpgate");
        let user = log.find("\"USER ").expect("USER");
        assert!(auth < user, "USER only after TLS\n{}", ctx());
    }
    g.assert_no_password();
}
