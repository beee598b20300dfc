//! `balance: user` with FTPS, in-process on loopback: clients that start TLS before
//! `USER` (curl `--ssl-reqd`: `AUTH TLS` first) and implicit-FTPS clients are routed
//! by name, and the backends read ftpgate's PROXY v2 header: the real client and,
//! because the client side is TLS when the header is written, `PP2_TYPE_SSL` (version,
//! cipher) and `PP2_TYPE_AUTHORITY` (the SNI). The backends are small fakes that parse
//! the header with `ppp`, as an `accept-proxy` haproxy or a PROXY-aware FTP server
//! would.

// The whole harness for its certificate maker; the in-process gateway from it too.
mod common;
#[path = "common/inprocess.rs"]
#[allow(dead_code)]
mod inprocess;

use std::net::SocketAddr;
use std::sync::Arc;

use ftpgate::config::{ListenerConfig, ListenerMode, ListenerTls};
use ftpgate::farm::BalancePolicy;
use ftpgate::proxy_protocol::{ProxyVersion, PP2_CLIENT_SSL, PP2_TYPE_AUTHORITY, PP2_TYPE_SSL};
use inprocess::{start_proxy, WAIT};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

const SNI: &str = "ftp.example.net";

/// What a fake backend learnt from one session: the PROXY header's source, its TLVs
/// (kind, value), and the `USER` it was sent.
#[derive(Debug)]
struct Seen {
    source: SocketAddr,
    tlvs: Vec<(u8, Vec<u8>)>,
    user: String,
}

/// A clear-text FTP server that requires a PROXY v2 header, reports what it saw, and
/// answers a login.
async fn fake_backend() -> (SocketAddr, mpsc::UnboundedReceiver<Seen>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let _ = tokio::time::timeout(WAIT, serve_one(s, tx)).await;
            });
        }
    });
    (addr, rx)
}

async fn serve_one(mut s: TcpStream, tx: mpsc::UnboundedSender<Seen>) {
    let mut fixed = [0u8; 16];
    s.read_exact(&mut fixed).await.unwrap();
    let len = usize::from(u16::from_be_bytes([fixed[14], fixed[15]]));
    let mut header = fixed.to_vec();
    header.resize(16 + len, 0);
    s.read_exact(&mut header[16..]).await.unwrap();
    let h = ppp::v2::Header::try_from(&header[..]).expect("a PROXY v2 header");
    let source = match h.addresses {
        ppp::v2::Addresses::IPv4(a) => SocketAddr::from((a.source_address, a.source_port)),
        // A health check (LOCAL): not a session.
        _ => return,
    };
    let tlvs = h
        .tlvs()
        .map(|t| {
            let t = t.unwrap();
            (t.kind, t.value.to_vec())
        })
        .collect();
    let (r, mut w) = s.into_split();
    let mut r = BufReader::new(r);
    w.write_all(b"220 fake backend\r\n").await.unwrap();
    let mut user = String::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).await.unwrap_or(0) == 0 {
            break;
        }
        let reply: &[u8] = match line.get(..4).unwrap_or("") {
            "USER" => {
                user = line[5..].trim_end().to_owned();
                b"331 pw\r\n"
            }
            "PASS" => b"230 ok\r\n",
            "QUIT" => {
                w.write_all(b"221 bye\r\n").await.unwrap();
                break;
            }
            _ => b"502 no\r\n",
        };
        w.write_all(reply).await.unwrap();
    }
    let _ = tx.send(Seen { source, tlvs, user });
}

fn connector(ca: &str) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    #[allow(deprecated)] // as ftpgate's own (src/tls.rs): the ring provider
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

/// Reads one single-line reply.
async fn reply<S: AsyncRead + Unpin>(s: &mut BufReader<S>) -> String {
    let mut line = String::new();
    tokio::time::timeout(WAIT, s.read_line(&mut line))
        .await
        .expect("reply within bound")
        .unwrap();
    line
}

async fn cmd<S: AsyncRead + AsyncWrite + Unpin>(s: &mut BufReader<S>, line: &str) -> String {
    s.get_mut()
        .write_all(format!("{line}\r\n").as_bytes())
        .await
        .unwrap();
    reply(s).await
}

/// USER, PASS, QUIT over `s`, expecting the fake backend's answers.
async fn login<S: AsyncRead + AsyncWrite + Unpin>(s: &mut BufReader<S>, user: &str) {
    assert_eq!(cmd(s, &format!("USER {user}")).await, "331 pw\r\n");
    assert_eq!(cmd(s, "PASS secret").await, "230 ok\r\n");
    assert_eq!(cmd(s, "QUIT").await, "221 bye\r\n");
}

async fn seen(rx: &mut mpsc::UnboundedReceiver<Seen>) -> Seen {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("the backend saw a session")
        .unwrap()
}

fn tlv(s: &Seen, kind: u8) -> Option<&[u8]> {
    s.tlvs.iter().find(|(k, _)| *k == kind).map(|(_, v)| &v[..])
}

/// The `PP2_TYPE_SSL` value as HAProxy's spec lays it out: the client flags, then
/// the version and cipher sub-TLVs.
fn assert_ssl_tlv(s: &Seen) {
    let ssl = tlv(s, PP2_TYPE_SSL).unwrap_or_else(|| panic!("no PP2_TYPE_SSL: {s:?}"));
    assert_eq!(ssl[0] & PP2_CLIENT_SSL, PP2_CLIENT_SSL, "{s:?}");
    let mut subs = Vec::new();
    let mut rest = &ssl[5..];
    while rest.len() >= 3 {
        let len = usize::from(u16::from_be_bytes([rest[1], rest[2]]));
        subs.push((
            rest[0],
            String::from_utf8(rest[3..3 + len].to_vec()).unwrap(),
        ));
        rest = &rest[3 + len..];
    }
    let sub = |k: ppp::v2::Type| {
        subs.iter()
            .find(|(t, _)| *t == u8::from(k))
            .map(|(_, v)| v.clone())
    };
    assert_eq!(sub(ppp::v2::Type::SSLVersion).as_deref(), Some("TLSv1.3"));
    let cipher = sub(ppp::v2::Type::SSLCipher).unwrap();
    assert!(cipher.starts_with("TLS_"), "{cipher}");
    assert_eq!(tlv(s, PP2_TYPE_AUTHORITY), Some(SNI.as_bytes()), "{s:?}");
}

#[tokio::test]
async fn tls_before_user_and_implicit_ftps_are_routed_and_described_to_backends() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) =
        common::probe::make_certificates_for(dir.path(), &format!("DNS:{SNI}"), SNI);
    let (a, mut seen_a) = fake_backend().await;
    let (b, mut seen_b) = fake_backend().await;
    let routes = serde_yaml::from_str(&format!(
        "[{{user: alice, backends: ['{a}']}}, {{user: bob, backends: ['{b}']}}]"
    ))
    .unwrap();
    let proxy = start_proxy(vec![a, b], |c| {
        c.balance = BalancePolicy::User;
        c.routes = routes;
        c.backend_proxy_protocol = Some(ProxyVersion::V2);
        c.tls.cert = Some(cert.into());
        c.tls.key = Some(key.into());
        // The fakes speak clear text: ftpgate terminates TLS (offload).
        c.tls.backend = ftpgate::config::BackendTlsPolicy::Off;
        c.listeners = vec![ListenerConfig {
            // Loopback is a /8: a second address, so port 0 is not "listed twice".
            listen: "127.0.0.3:0".parse().unwrap(),
            mode: ListenerMode::Reverse,
            tproxy: false,
            tls: ListenerTls::Implicit,
        }];
    })
    .await;
    let tls = connector(&ca);
    let name = ServerName::try_from(SNI).unwrap();

    // curl --ssl-reqd: ftpgate's greeting, AUTH TLS, then the login inside TLS.
    let tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let client = tcp.local_addr().unwrap();
    let mut plain = BufReader::new(tcp);
    assert_eq!(reply(&mut plain).await, "220 ftpgate ready\r\n");
    // lftp looks at FEAT before it sends AUTH TLS.
    let mut feat = cmd(&mut plain, "FEAT").await;
    while !feat.ends_with("211 End\r\n") {
        let more = reply(&mut plain).await;
        assert!(!more.is_empty(), "{feat}");
        feat.push_str(&more);
    }
    assert!(
        feat.starts_with("211-") && feat.contains("\r\n AUTH TLS\r\n"),
        "{feat}"
    );
    assert!(cmd(&mut plain, "AUTH TLS").await.starts_with("234 "));
    let s = tokio::time::timeout(WAIT, tls.connect(name.clone(), plain.into_inner()))
        .await
        .unwrap()
        .unwrap();
    let mut s = BufReader::new(s);
    assert_eq!(cmd(&mut s, "PBSZ 0").await, "200 PBSZ=0\r\n");
    assert!(cmd(&mut s, "PROT P").await.starts_with("200 "));
    login(&mut s, "alice").await;
    let got = seen(&mut seen_a).await;
    assert_eq!(got.user, "alice");
    assert_eq!(got.source, client, "the header names the real client");
    assert_ssl_tlv(&got);

    // Implicit FTPS: TLS from the first byte, ftpgate's greeting inside it.
    let implicit = proxy_implicit_addr(&proxy);
    let tcp = TcpStream::connect(implicit).await.unwrap();
    let s = tokio::time::timeout(WAIT, tls.connect(name.clone(), tcp))
        .await
        .unwrap()
        .unwrap();
    let mut s = BufReader::new(s);
    assert_eq!(reply(&mut s).await, "220 ftpgate ready\r\n");
    login(&mut s, "bob").await;
    let got = seen(&mut seen_b).await;
    assert_eq!(got.user, "bob");
    assert_ssl_tlv(&got);

    // A clear-text client: a header with no TLS TLVs.
    let mut plain = BufReader::new(TcpStream::connect(proxy.addr).await.unwrap());
    assert_eq!(reply(&mut plain).await, "220 ftpgate ready\r\n");
    login(&mut plain, "alice").await;
    let got = seen(&mut seen_a).await;
    assert!(got.tlvs.is_empty(), "{got:?}");
}

/// The implicit listener's address: the one that is not `proxy.addr`.
fn proxy_implicit_addr(proxy: &inprocess::Proxy) -> SocketAddr {
    proxy
        .all_addrs
        .iter()
        .copied()
        .find(|a| *a != proxy.addr)
        .expect("an implicit listener")
}
