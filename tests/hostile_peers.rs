//! Faults found by adversarial testing, each reproduced with real sockets: a backend
//! written to misbehave (scripted here, on loopback), or a client that does what no
//! polite client does. Each test fails on a gateway without the fix.

#[path = "common/inprocess.rs"]
#[allow(dead_code)] // shared with tests that use other parts of it
mod inprocess;
#[path = "common/mock_ftp.rs"]
#[allow(dead_code)]
mod mock_ftp;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ftpgate::protocol::addr::find_pasv_tuple;
use inprocess::{start_proxy, Client, WAIT};
use mock_ftp::{MockFtp, MockOptions};
use prometheus::IntCounterVec;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

fn count(counters: &IntCounterVec, label: &str) -> u64 {
    counters.with_label_values(&[label]).get()
}

/// A backend that greets, accepts any login, and answers every other command with
/// what `script` returns for it (`None`: never answer). It reports when a connection
/// that carried a command is closed by ftpgate.
struct ScriptedBackend {
    addr: SocketAddr,
    closed: Arc<tokio::sync::Notify>,
}

impl ScriptedBackend {
    /// Blocking threads, not tokio: a tokio read that stops at a TCP urgent mark (the
    /// ABOR test) waits for an edge that never comes — the very fault ftpgate fixes —
    /// while a blocking read simply continues past it.
    async fn start(
        ip: &str,
        script: impl Fn(&str) -> Option<String> + Send + Sync + 'static,
    ) -> ScriptedBackend {
        let listener = std::net::TcpListener::bind((ip, 0)).unwrap();
        let addr = listener.local_addr().unwrap();
        let closed = Arc::new(tokio::sync::Notify::new());
        let script = Arc::new(script);
        let c = Arc::clone(&closed);
        std::thread::spawn(move || {
            while let Ok((s, _)) = listener.accept() {
                let (script, closed) = (Arc::clone(&script), Arc::clone(&c));
                std::thread::spawn(move || {
                    // Health checks connect and close without a command: not sessions.
                    if serve_script(s, &*script) {
                        closed.notify_one();
                    }
                });
            }
        });
        ScriptedBackend { addr, closed }
    }
}

/// Returns whether any command arrived.
fn serve_script(s: std::net::TcpStream, script: &(dyn Fn(&str) -> Option<String> + Sync)) -> bool {
    use std::io::{BufRead, Write};
    let Ok(mut w) = s.try_clone() else {
        return false;
    };
    let mut r = std::io::BufReader::new(s);
    if w.write_all(b"220 scripted\r\n").is_err() {
        return false;
    }
    let mut line = Vec::new();
    let mut any = false;
    loop {
        line.clear();
        match r.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return any,
            Ok(_) => any = true,
        }
        let text = String::from_utf8_lossy(&line);
        let cmd = text.trim_end();
        let reply = match cmd.split(' ').next().unwrap_or("") {
            "USER" => Some("331 pw\r\n".to_string()),
            "PASS" => Some("230 in\r\n".to_string()),
            _ => script(cmd),
        };
        if let Some(reply) = reply {
            if w.write_all(reply.as_bytes()).is_err() {
                return any;
            }
        }
    }
}

/// Fault 1: a backend's `227` naming ftpgate's loopback service made ftpgate connect
/// there and relay that service's bytes to the client. Now only the backend's own
/// control address (or `passive.allow_targets`) is used.
#[tokio::test]
async fn backend_cannot_point_ftpgate_at_its_loopback_services() {
    // A loopback-only service on the gateway host.
    let secret = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let secret_port = secret.local_addr().unwrap().port();
    let (p1, p2) = (secret_port >> 8, secret_port & 0xff);
    // The backend lives on 127.0.0.2; its 227 names 127.0.0.1.
    let backend = ScriptedBackend::start("127.0.0.2", move |cmd| match cmd {
        "PASV" => Some(format!(
            "227 Entering Passive Mode (127,0,0,1,{p1},{p2})\r\n"
        )),
        "LIST" => Some("150 here\r\n".into()),
        _ => Some("200 ok\r\n".into()),
    })
    .await;
    let proxy = start_proxy(vec![backend.addr], |_| {}).await;
    let mut c = Client::login(proxy.addr).await;
    let reply = c.cmd("PASV").await;
    let mapped = find_pasv_tuple(reply.trim_end().as_bytes()).unwrap().addr;
    assert_ne!(mapped.port(), secret_port);
    let mut data = TcpStream::connect(SocketAddr::V4(mapped)).await.unwrap();
    c.send(b"LIST\r\n").await;
    let mut got = Vec::new();
    let _ = tokio::time::timeout(WAIT, data.read_to_end(&mut got)).await;
    assert!(got.is_empty(), "service bytes relayed: {got:?}");
    let probe = tokio::time::timeout(Duration::from_millis(500), secret.accept()).await;
    assert!(probe.is_err(), "ftpgate connected to the loopback service");
    assert_eq!(count(&proxy.metrics.refusals_total, "passive_target"), 1);
}

/// Fault 2: sessions that send commands but never read their replies blocked ftpgate
/// in a write, and no timeout fired: fifty such clients outlived a 10 s login timeout,
/// each holding a backend connection.
#[tokio::test]
async fn login_timeout_fires_while_a_write_to_the_client_is_blocked() {
    let big = format!("214-{}\r\n", "x".repeat(200)).repeat(200) + "214 end\r\n";
    let backend =
        ScriptedBackend::start("127.0.0.1", move |cmd| (cmd == "HELP").then(|| big.clone())).await;
    let proxy = start_proxy(vec![backend.addr], |c| {
        c.timeouts.login = Duration::from_secs(2);
    })
    .await;
    let sock = TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let mut client = sock.connect(proxy.addr).await.unwrap();
    // Never read: the replies fill the client's receive window and ftpgate's send buffer.
    let flood = "HELP\r\n".repeat(3000);
    let _ = tokio::time::timeout(WAIT, client.write_all(flood.as_bytes())).await;
    tokio::time::timeout(WAIT, backend.closed.notified())
        .await
        .expect("ftpgate closes the backend connection at the login timeout");
    assert_eq!(count(&proxy.metrics.timeouts_total, "login"), 1);
}

/// Fault 3: a backend that stops answering (here: `LIST` never gets a reply) kept the
/// session forever, since the idle timeout is off while a command is outstanding.
#[tokio::test]
async fn backend_that_stops_answering_is_timed_out() {
    let backend = ScriptedBackend::start("127.0.0.1", |cmd| {
        (cmd != "LIST").then(|| "200 ok\r\n".to_string())
    })
    .await;
    let proxy = start_proxy(vec![backend.addr], |c| {
        c.timeouts.backend_reply = Duration::from_secs(1);
    })
    .await;
    let mut c = Client::login(proxy.addr).await;
    let r = c.cmd("LIST").await;
    assert_eq!(
        r,
        "421 Server did not answer in time; closing control connection.\r\n"
    );
    assert_eq!(c.reply().await, "", "closed after the 421");
    assert_eq!(count(&proxy.metrics.timeouts_total, "backend_reply"), 1);
}

/// Fault 4: a multi-line 227 whose closing line could not be mapped (one data port,
/// taken by the reply's first line) was dropped, leaving the client inside an open
/// reply; later replies landed inside the block. Only the final line is mapped now.
#[tokio::test]
async fn multiline_227_maps_its_final_line_and_never_leaves_a_block_open() {
    let mock = MockFtp::start(MockOptions {
        pasv_reply: "227-Entering Passive Mode ({tuple})\r\n227 Entering Passive Mode ({tuple})"
            .into(),
        ..MockOptions::default()
    })
    .await;
    let proxy = start_proxy(vec![mock.addr], |c| {
        c.data_ports = "41990-41990".parse().unwrap();
    })
    .await;
    let mut c = Client::login(proxy.addr).await;
    let reply = c.cmd("PASV").await;
    let last = reply.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("227 Entering Passive Mode (127,0,0,1,164,6)"),
        "{reply}"
    );
    assert!(
        c.cmd("NOOP").await.starts_with("200"),
        "replies stay in step"
    );
}

/// Fault 4 (cont.): a 5 000-tuple multi-line 227 leased every port at once.
#[tokio::test]
async fn huge_multiline_227_leases_nothing() {
    let block = "227-(127,0,0,1,4,1)\r\n".repeat(5000) + "227 (127,0,0,1,4,1)\r\n";
    let backend = ScriptedBackend::start("127.0.0.1", move |cmd| match cmd {
        "PASV" => Some(block.clone()),
        _ => Some("200 ok\r\n".into()),
    })
    .await;
    let proxy = start_proxy(vec![backend.addr], |_| {}).await;
    let mut c = Client::login(proxy.addr).await;
    let r = c.cmd("PASV").await;
    assert!(r.starts_with("425 "), "{r}");
    assert_eq!(proxy.metrics.data_ports_in_use.get(), 0);
    assert!(c.cmd("NOOP").await.starts_with("200"));
}

/// Fault 6: dribbling a few bytes of a line every few seconds kept sessions past their
/// idle timeout. Only complete commands are activity.
#[tokio::test]
async fn partial_lines_do_not_keep_a_session_alive() {
    let mock = MockFtp::start(MockOptions::default()).await;
    let proxy = start_proxy(vec![mock.addr], |c| {
        c.timeouts.idle = Duration::from_secs(2);
    })
    .await;
    let Client { mut r, mut w } = Client::login(proxy.addr).await;
    let dribble = tokio::spawn(async move {
        for _ in 0..200 {
            if w.write_all(b"N").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let mut r_line = String::new();
    let read = tokio::time::timeout(WAIT, r.read_line(&mut r_line)).await;
    dribble.abort();
    assert!(read.is_ok(), "no idle timeout while bytes dribble in");
    let r = r_line;
    assert_eq!(r, "421 Idle timeout; closing control connection.\r\n");
}

/// Fault 7: `NOOP\r\n`, then an urgent `IAC` starting the next command (Telnet Synch:
/// `IAC` as TCP urgent data, then `IP IAC DM ABOR`): the read stopped at the urgent
/// mark and the ABOR was not read until the client sent more.
#[tokio::test]
async fn abor_after_an_urgent_mark_is_read_whatever_the_buffer_ends_with() {
    let backend = ScriptedBackend::start("127.0.0.1", |cmd| {
        Some(if cmd.ends_with("ABOR") {
            "225 abort ok\r\n".to_string()
        } else {
            "200 ok\r\n".to_string()
        })
    })
    .await;
    let proxy = start_proxy(vec![backend.addr], |_| {}).await;
    let mut c = Client::login(proxy.addr).await;
    for _ in 0..20 {
        c.send(b"NOOP\r\n").await;
        socket2::SockRef::from(c.w.as_ref())
            .send_out_of_band(&[0xff])
            .unwrap();
        c.send(b"\xf4\xff\xf2ABOR\r\n").await;
        assert_eq!(c.reply().await, "200 ok\r\n");
        assert_eq!(c.reply().await, "225 abort ok\r\n");
    }
}

/// Fault 11: every silent connection cost a backend session (300 silent connections
/// spawned 136 vsftpd processes). Sessions not yet logged in are capped before any
/// backend connect.
#[tokio::test]
async fn prelogin_sessions_are_capped_before_the_backend_connect() {
    let backend = ScriptedBackend::start("127.0.0.1", |_| Some("200 ok\r\n".into())).await;
    let proxy = start_proxy(vec![backend.addr], |c| {
        c.limits.max_prelogin_sessions = 3;
    })
    .await;
    let mut silent = Vec::new();
    for _ in 0..3 {
        let mut c = Client::connect(proxy.addr).await;
        assert!(c.reply().await.starts_with("220"));
        silent.push(c);
    }
    let mut extra = Client::connect(proxy.addr).await;
    assert_eq!(
        extra.reply().await,
        "421 Too many connections waiting to log in; try again later.\r\n"
    );
    let backend_sessions = proxy
        .metrics
        .backend_sessions_active
        .with_label_values(&[&backend.addr.to_string()]);
    assert_eq!(
        backend_sessions.get(),
        3,
        "no backend connect for the refused one"
    );
    assert_eq!(count(&proxy.metrics.refusals_total, "prelogin_limit"), 1);
    // A login frees its slot.
    let first = &mut silent[0];
    assert!(first.cmd("USER u").await.starts_with("331"));
    assert!(first.cmd("PASS p").await.starts_with("230"));
    let mut next = Client::connect(proxy.addr).await;
    assert!(next.reply().await.starts_with("220"));
    assert_eq!(proxy.metrics.sessions_prelogin.get(), 3);
}

// ---------------------------------------------------------------------------
// Clear text around `AUTH TLS` (the STARTTLS command-injection class, CVE-2011-0411)
// ---------------------------------------------------------------------------

/// A self-signed certificate for 127.0.0.1 (`CA:FALSE`, so rustls takes it as its own
/// trust anchor): returns (dir, cert.pem, key.pem).
fn self_signed() -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let out = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
        .args([
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ])
        .args(["-addext", "basicConstraints=critical,CA:FALSE", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(out.status.success(), "openssl: {out:?}");
    (dir, cert, key)
}

/// ring, as ftpgate uses it (without post-quantum key exchange, hence deprecated).
#[allow(deprecated)]
fn ring_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_acceptor(cert: &std::path::Path, key: &std::path::Path) -> tokio_rustls::TlsAcceptor {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_file_iter(cert)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(key).unwrap();
    let provider = ring_provider();
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    tokio_rustls::TlsAcceptor::from(Arc::new(cfg))
}

fn tls_connector(cert: &std::path::Path) -> tokio_rustls::TlsConnector {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(cert).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = ring_provider();
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

/// One line read a byte at a time: nothing past its LF is consumed, so the bytes that
/// follow (a TLS handshake) stay in the socket. Empty on EOF.
async fn read_line_unbuffered<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> String {
    let mut line = Vec::new();
    while line.last() != Some(&b'\n') {
        match tokio::time::timeout(WAIT, s.read_u8())
            .await
            .expect("line within bound")
        {
            Ok(b) => line.push(b),
            Err(_) => break,
        }
    }
    String::from_utf8_lossy(&line).into_owned()
}

/// Serves command lines on `s`, recording each; answers `USER`/`PASS`/`QUIT` and `200`
/// otherwise. Returns true when `AUTH TLS` was answered with `234` followed by
/// `after_234` in the same write: the caller then handshakes.
async fn serve_lines<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    s: &mut S,
    seen: &std::sync::Mutex<Vec<String>>,
    after_234: &[u8],
) -> bool {
    loop {
        let line = read_line_unbuffered(s).await;
        if line.is_empty() {
            return false;
        }
        let cmd = line.trim_end().to_string();
        seen.lock().unwrap().push(cmd.clone());
        let reply: &[u8] = match cmd.split(' ').next().unwrap_or("") {
            "AUTH" => {
                let mut r = b"234 AUTH TLS ok\r\n".to_vec();
                r.extend_from_slice(after_234);
                let _ = s.write_all(&r).await;
                return true;
            }
            "USER" => b"331 real backend wants a password\r\n",
            "PASS" => b"230 real backend logged in\r\n",
            "QUIT" => b"221 bye\r\n",
            _ => b"200 ok\r\n",
        };
        if s.write_all(reply).await.is_err() || cmd == "QUIT" {
            return false;
        }
    }
}

/// A backend speaking explicit FTPS that records every command line it receives, in
/// clear text or in TLS, and sends `after_234` (plain text) right behind its `234`.
async fn recording_ftps_backend(
    acceptor: tokio_rustls::TlsAcceptor,
    after_234: &'static [u8],
) -> (SocketAddr, Arc<std::sync::Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let all = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let (acceptor, seen) = (acceptor.clone(), Arc::clone(&all));
            tokio::spawn(async move {
                if s.write_all(b"220 ftps backend\r\n").await.is_err()
                    || !serve_lines(&mut s, &seen, after_234).await
                {
                    return;
                }
                match acceptor.accept(s).await {
                    Ok(mut tls) => {
                        serve_lines(&mut tls, &seen, b"").await;
                    }
                    Err(e) => seen.lock().unwrap().push(format!("handshake failed: {e}")),
                }
            });
        }
    });
    (addr, seen)
}

/// ftpgate with `cert` towards clients and `policy` towards `backend` (whose
/// certificate it does not check: the tests here are about bytes, not trust).
async fn tls_proxy(
    backend: SocketAddr,
    cert: &std::path::Path,
    key: &std::path::Path,
    policy: ftpgate::config::BackendTlsPolicy,
) -> inprocess::Proxy {
    let (c, k) = (cert.to_path_buf(), key.to_path_buf());
    start_proxy(vec![backend], move |cfg| {
        cfg.tls.cert = Some(c);
        cfg.tls.key = Some(k);
        cfg.tls.backend = policy;
        cfg.tls.backend_insecure = true;
    })
    .await
}

/// Reads ftpgate's `234` on `s`, then handshakes as a client trusting `cert`.
async fn upgrade_after_234(
    mut s: TcpStream,
    cert: &std::path::Path,
    what: &str,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let reply = read_line_unbuffered(&mut s).await;
    assert!(reply.starts_with("234"), "{what}: {reply}");
    let name = rustls::pki_types::ServerName::from(std::net::IpAddr::from([127, 0, 0, 1]));
    tokio::time::timeout(WAIT, tls_connector(cert).connect(name, s))
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("{what}: client handshake: {e}"))
}

/// A client that pipelines `USER evil` behind `AUTH TLS` in one clear-text write
/// (CVE-2011-0411, Postfix/Pure-FTPd's STARTTLS injection): ftpgate's `234` comes,
/// the handshake succeeds, and the first reply inside TLS is the one to `USER good`.
/// The backend never sees `USER evil`: not in clear text, not inside TLS — whether
/// ftpgate answers `AUTH` itself (`tls.backend: off`) or forwards it and handshakes
/// with the backend first (`mirror`), when the line sits in ftpgate's buffer longest.
#[tokio::test]
async fn clear_text_pipelined_behind_auth_tls_is_never_executed() {
    use ftpgate::config::BackendTlsPolicy;
    let (_dir, cert, key) = self_signed();
    let acceptor = tls_acceptor(&cert, &key);
    for policy in [BackendTlsPolicy::Off, BackendTlsPolicy::Mirror] {
        let (backend, seen) = recording_ftps_backend(acceptor.clone(), b"").await;
        let proxy = tls_proxy(backend, &cert, &key, policy).await;
        let mut s = TcpStream::connect(proxy.addr).await.unwrap();
        assert!(read_line_unbuffered(&mut s).await.starts_with("220"));
        s.write_all(b"AUTH TLS\r\nUSER evil\r\n").await.unwrap();
        let mut tls = upgrade_after_234(s, &cert, &format!("{policy:?}")).await;
        tls.write_all(b"USER good\r\n").await.unwrap();
        let reply = read_line_unbuffered(&mut tls).await;
        assert!(reply.starts_with("331 real backend"), "{policy:?}: {reply}");
        tls.write_all(b"QUIT\r\n").await.unwrap();
        let reply = read_line_unbuffered(&mut tls).await;
        assert!(
            reply.starts_with("221"),
            "{policy:?}: a reply owed to USER evil? {reply}"
        );
        let seen = seen.lock().unwrap().clone();
        let want: &[&str] = match policy {
            BackendTlsPolicy::Mirror => &["AUTH TLS", "USER good", "QUIT"],
            _ => &["USER good", "QUIT"],
        };
        assert_eq!(seen, want, "{policy:?}: what the backend received");
    }
}

/// The other direction: a backend (or whoever sits on the path to it) sends plain
/// text right behind its `234` in the same segment — a complete reply line and a
/// partial one. ftpgate handshakes with the backend; those bytes are discarded, never
/// relayed to the client nor read as replies from inside TLS: the client's first
/// reply in TLS is the backend's real answer. Both when the client's `AUTH` is
/// forwarded (`mirror`) and when ftpgate upgrades the backend itself (`required`,
/// client in clear text).
#[tokio::test]
async fn clear_text_behind_the_backends_234_is_discarded() {
    use ftpgate::config::BackendTlsPolicy;
    let (_dir, cert, key) = self_signed();
    let acceptor = tls_acceptor(&cert, &key);
    const JUNK: &[u8] = b"230 injected login\r\n331 inj";
    for policy in [BackendTlsPolicy::Mirror, BackendTlsPolicy::Required] {
        let (backend, seen) = recording_ftps_backend(acceptor.clone(), JUNK).await;
        let proxy = tls_proxy(backend, &cert, &key, policy).await;
        let mut s = TcpStream::connect(proxy.addr).await.unwrap();
        assert!(read_line_unbuffered(&mut s).await.starts_with("220"));
        let mut replies = Vec::new();
        if policy == BackendTlsPolicy::Mirror {
            s.write_all(b"AUTH TLS\r\n").await.unwrap();
            let mut tls = upgrade_after_234(s, &cert, &format!("{policy:?}")).await;
            for cmd in [&b"USER good\r\n"[..], b"QUIT\r\n"] {
                tls.write_all(cmd).await.unwrap();
                replies.push(read_line_unbuffered(&mut tls).await);
            }
        } else {
            for cmd in [&b"USER good\r\n"[..], b"QUIT\r\n"] {
                s.write_all(cmd).await.unwrap();
                replies.push(read_line_unbuffered(&mut s).await);
            }
        }
        assert!(
            replies[0].starts_with("331 real backend") && replies[1].starts_with("221"),
            "{policy:?}: {replies:?}"
        );
        let seen = seen.lock().unwrap().clone();
        assert_eq!(
            seen.first().map(String::as_str),
            Some("AUTH TLS"),
            "{policy:?}"
        );
        assert!(
            seen.contains(&"USER good".to_string()),
            "{policy:?}: {seen:?}"
        );
    }
}
