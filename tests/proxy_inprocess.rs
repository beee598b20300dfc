//! ftpgate in-process against a mock FTP server on loopback: passive rewriting, data
//! relay, who may connect to a data port, port exhaustion, and bad input. Loopback has
//! a whole /8, so 127.0.0.2 plays the foreign host.

#[path = "support/mock_ftp.rs"]
mod mock_ftp;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ftpgate::app::Gateway;
use ftpgate::config::Config;
use ftpgate::metrics::Metrics;
use ftpgate::protocol::addr::{find_epsv_port, find_pasv_tuple};
use mock_ftp::{MockFtp, MockOptions};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpSocket, TcpStream};
use tokio_util::sync::CancellationToken;

/// Every wait in these tests is bounded by this.
const WAIT: Duration = Duration::from_secs(10);

struct Proxy {
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn start_proxy(backends: Vec<SocketAddr>, tweak: impl FnOnce(&mut Config)) -> Proxy {
    let mut cfg = Config {
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        backends,
        public_address: vec!["127.0.0.1".parse().unwrap()],
        data_ports: "41000-41999".parse().unwrap(),
        ..Config::default()
    };
    tweak(&mut cfg);
    cfg.validate().unwrap();
    let metrics = Arc::new(Metrics::new());
    let gw = Gateway::bind(cfg, Arc::clone(&metrics)).await.unwrap();
    let addr = gw.local_addrs()[0];
    let shutdown = CancellationToken::new();
    tokio::spawn(gw.serve(shutdown.clone()));
    Proxy {
        addr,
        metrics,
        shutdown,
    }
}

/// A minimal FTP client that reads whole (multi-line) replies.
struct Client {
    r: BufReader<OwnedReadHalf>,
    w: OwnedWriteHalf,
}

impl Client {
    async fn connect(addr: SocketAddr) -> Client {
        let s = tokio::time::timeout(WAIT, TcpStream::connect(addr))
            .await
            .unwrap()
            .unwrap();
        let (r, w) = s.into_split();
        Client {
            r: BufReader::new(r),
            w,
        }
    }

    /// Reads one reply; returns its full text (all lines). Empty string on EOF.
    async fn reply(&mut self) -> String {
        let mut all = String::new();
        let mut first_code: Option<String> = None;
        loop {
            let mut line = Vec::new();
            let n = tokio::time::timeout(WAIT, self.r.read_until(b'\n', &mut line))
                .await
                .expect("reply within bound")
                .unwrap();
            if n == 0 {
                return all;
            }
            let l = String::from_utf8_lossy(&line).to_string();
            all.push_str(&l);
            let code = l.get(..3).unwrap_or("").to_string();
            match &first_code {
                None if l.as_bytes().get(3) == Some(&b'-') => first_code = Some(code),
                None => return all,
                Some(c) if *c == code && l.as_bytes().get(3) == Some(&b' ') => return all,
                Some(_) => {}
            }
        }
    }

    async fn send(&mut self, raw: &[u8]) {
        self.w.write_all(raw).await.unwrap();
    }

    async fn cmd(&mut self, line: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes()).await;
        self.reply().await
    }

    async fn login(addr: SocketAddr) -> Client {
        let mut c = Client::connect(addr).await;
        assert!(c.reply().await.starts_with("220"));
        assert!(c.cmd("USER u").await.starts_with("331"));
        assert!(c.cmd("PASS secret").await.starts_with("230"));
        c
    }
}

async fn connect_from(src: IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpSocket::new_v4()?;
    s.bind(SocketAddr::new(src, 0))?;
    tokio::time::timeout(WAIT, s.connect(to)).await?
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 253) as u8).collect()
}

async fn read_all(mut s: TcpStream) -> Vec<u8> {
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap();
    buf
}

#[tokio::test]
async fn pasv_download_is_rewritten_and_byte_exact() {
    let mock = MockFtp::start(MockOptions {
        pasv_ip: [10, 0, 0, 2],
        ..MockOptions::default()
    })
    .await;
    // The mock names 10.0.0.2 but listens on 127.0.0.1: with passive_target=control
    // ftpgate connects to the control address, the cure for servers that advertise an
    // address ftpgate cannot reach.
    let body = pattern(3 * 1024 * 1024 + 17);
    mock.put_file("f.bin", body.clone());
    let proxy = start_proxy(vec![mock.addr], |c| {
        c.public_address = vec!["127.0.0.1".parse().unwrap()];
        c.passive_target = ftpgate::config::PassiveTarget::Control;
    })
    .await;
    let mut c = Client::login(proxy.addr).await;
    let reply = c.cmd("PASV").await;
    let t = find_pasv_tuple(reply.trim_end().as_bytes()).unwrap();
    assert_eq!(t.addr.ip().octets(), [127, 0, 0, 1], "{reply}");
    assert!((41000..=41999).contains(&t.addr.port()), "{reply}");
    assert!(reply.starts_with("227 Entering Passive Mode ("));
    assert!(reply.ends_with(").\r\n"), "server text kept: {reply}");
    let data = TcpStream::connect(SocketAddr::from(t.addr)).await.unwrap();
    c.send(b"RETR f.bin\r\n").await;
    assert!(c.reply().await.starts_with("150"));
    let got = read_all(data).await;
    assert!(c.reply().await.starts_with("226"));
    assert_eq!(got.len(), body.len());
    assert!(got == body, "bytes differ");
    assert_eq!(
        proxy
            .metrics
            .data_bytes_total
            .with_label_values(&["backend_to_client"])
            .get(),
        body.len() as u64
    );
}

#[tokio::test]
async fn epsv_upload_is_byte_exact_and_half_close_reaches_server() {
    let mock = MockFtp::start(MockOptions::default()).await;
    let proxy = start_proxy(vec![mock.addr], |_| {}).await;
    let mut c = Client::login(proxy.addr).await;
    let reply = c.cmd("EPSV").await;
    assert!(
        reply.starts_with("229 Entering Extended Passive Mode (|||"),
        "{reply}"
    );
    let port = find_epsv_port(reply.trim_end().as_bytes()).unwrap().port;
    assert!((41000..=41999).contains(&port));
    let mut data = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    c.send(b"STOR up.bin\r\n").await;
    assert!(c.reply().await.starts_with("150"));
    let body = pattern(1_000_003);
    data.write_all(&body).await.unwrap();
    // The server answers 226 only after seeing EOF: half-close must be relayed.
    data.shutdown().await.unwrap();
    assert!(c.reply().await.starts_with("226"));
    assert!(mock.file("up.bin").unwrap() == body);
}

#[tokio::test]
async fn pasv_reply_forms_from_the_wild_keep_their_text() {
    for form in [
        "227 Data transfer will passively listen to {tuple}",
        "227 Entering passive mode. {tuple}",
        "227 =127,0,0,1 is not it; {tuple}",
    ] {
        let mock = MockFtp::start(MockOptions {
            pasv_reply: form.into(),
            ..MockOptions::default()
        })
        .await;
        let proxy = start_proxy(vec![mock.addr], |c| {
            c.public_address = vec!["192.0.2.44".parse().unwrap()];
        })
        .await;
        let mut c = Client::login(proxy.addr).await;
        let reply = c.cmd("PASV").await;
        let t = find_pasv_tuple(reply.trim_end().as_bytes()).unwrap();
        assert_eq!(t.addr.ip().octets(), [192, 0, 2, 44]);
        let expect = form.replace(
            "{tuple}",
            &format!("192,0,2,44,{},{}", t.addr.port() >> 8, t.addr.port() & 0xff),
        );
        assert_eq!(reply, format!("{expect}\r\n"));
    }
}

#[tokio::test]
async fn foreign_host_on_data_port_gets_nothing_and_real_transfer_succeeds() {
    let mock = MockFtp::start(MockOptions::default()).await;
    mock.put_file("secret.bin", pattern(200_000));
    let proxy = start_proxy(vec![mock.addr], |_| {}).await;
    let mut c = Client::login(proxy.addr).await;
    let reply = c.cmd("EPSV").await;
    let port = find_epsv_port(reply.trim_end().as_bytes()).unwrap().port;
    let target = SocketAddr::from(([127, 0, 0, 1], port));
    // The thief connects first, from another address.
    let thief = connect_from("127.0.0.2".parse().unwrap(), target)
        .await
        .expect("tcp accept happens before the check");
    assert!(
        read_all(thief).await.is_empty(),
        "foreign host received data"
    );
    let data = TcpStream::connect(target).await.unwrap();
    c.send(b"RETR secret.bin\r\n").await;
    assert!(c.reply().await.starts_with("150"));
    assert!(read_all(data).await == pattern(200_000));
    assert!(c.reply().await.starts_with("226"));
    assert_eq!(
        proxy
            .metrics
            .refusals_total
            .with_label_values(&["foreign_data_peer"])
            .get(),
        1
    );
    let peers = mock.state.lock().unwrap().data_peers.clone();
    assert_eq!(peers.len(), 1, "backend saw exactly one data connection");
}

#[tokio::test]
async fn exhausted_port_range_answers_425_at_once_and_recovers() {
    let mock = MockFtp::start(MockOptions::default()).await;
    mock.put_file("a", b"abc".to_vec());
    let proxy = start_proxy(vec![mock.addr], |c| {
        c.data_ports = "41500-41500".parse().unwrap();
    })
    .await;
    let mut first = Client::login(proxy.addr).await;
    let r1 = first.cmd("EPSV").await;
    let port = find_epsv_port(r1.trim_end().as_bytes()).unwrap().port;
    assert_eq!(port, 41500);
    let mut second = Client::login(proxy.addr).await;
    let r2 = second.cmd("EPSV").await;
    assert!(r2.starts_with("425 "), "{r2}");
    assert_eq!(proxy.metrics.data_port_exhausted_total.get(), 1);
    // The session that got 425 still works.
    assert!(second.cmd("NOOP").await.starts_with("200"));
    // Finish the first transfer: the port goes back to the pool.
    let data = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    first.send(b"RETR a\r\n").await;
    assert!(first.reply().await.starts_with("150"));
    assert_eq!(read_all(data).await, b"abc");
    assert!(first.reply().await.starts_with("226"));
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let r = second.cmd("EPSV").await;
        if r.starts_with("229") {
            assert_eq!(find_epsv_port(r.trim_end().as_bytes()).unwrap().port, 41500);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "port never returned"
        );
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn unused_data_port_is_released_after_data_connect_timeout() {
    let mock = MockFtp::start(MockOptions::default()).await;
    let proxy = start_proxy(vec![mock.addr], |c| {
        c.data_ports = "41600-41600".parse().unwrap();
        c.timeouts.data_connect = Duration::from_millis(200);
    })
    .await;
    let mut a = Client::login(proxy.addr).await;
    assert!(a.cmd("EPSV").await.starts_with("229"));
    let mut b = Client::login(proxy.addr).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if b.cmd("EPSV").await.starts_with("229") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "port never released"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        proxy
            .metrics
            .timeouts_total
            .with_label_values(&["data_connect"])
            .get()
            >= 1
    );
}

#[tokio::test]
async fn pipelined_unknown_and_non_utf8_commands_pass_through_untouched() {
    let mock = MockFtp::start(MockOptions::default()).await;
    let proxy = start_proxy(vec![mock.addr], |_| {}).await;
    let mut c = Client::connect(proxy.addr).await;
    assert!(c.reply().await.starts_with("220"));
    let mut batch = Vec::new();
    batch.extend_from_slice(b"USER u\r\nPASS p\r\nXWEIRD  two  spaces \r\n");
    batch.extend_from_slice(b"CWD caf\xe9-\xff\xfe\r\nnoop\n");
    for i in 0..300 {
        batch.extend_from_slice(format!("SITE n{i}\r\n").as_bytes());
    }
    c.send(&batch).await;
    let mut codes = Vec::new();
    for _ in 0..305 {
        codes.push(c.reply().await[..3].to_string());
    }
    assert_eq!(&codes[..5], ["331", "230", "500", "500", "200"]);
    assert!(codes[5..].iter().all(|c| c == "500"));
    let got = mock.received();
    assert_eq!(got[2], b"XWEIRD  two  spaces \r\n");
    assert_eq!(got[3], b"CWD caf\xe9-\xff\xfe\r\n");
    assert_eq!(got[4], b"noop\r\n", "bare LF becomes CRLF");
    assert_eq!(got.len(), 305);
}

#[tokio::test]
async fn multiline_reply_with_inner_227_is_not_rewritten() {
    let mock = MockFtp::start(MockOptions::default()).await;
    let proxy = start_proxy(vec![mock.addr], |_| {}).await;
    let mut c = Client::login(proxy.addr).await;
    let feat = c.cmd("FEAT").await;
    assert_eq!(
        feat,
        "211-Features:\r\n EPSV\r\n227 inner line, not a reply\r\n211 End\r\n"
    );
    assert_eq!(
        proxy
            .metrics
            .rewrites_total
            .with_label_values(&["227"])
            .get(),
        0
    );
}

#[tokio::test]
async fn over_long_line_closes_only_that_session() {
    let mock = MockFtp::start(MockOptions::default()).await;
    let proxy = start_proxy(vec![mock.addr], |_| {}).await;
    let mut good = Client::login(proxy.addr).await;
    let mut bad = Client::connect(proxy.addr).await;
    assert!(bad.reply().await.starts_with("220"));
    bad.send(&vec![b'A'; 100_000]).await;
    let r = bad.reply().await;
    assert!(r.starts_with("500 "), "{r}");
    assert_eq!(bad.reply().await, "", "connection closed after 500");
    assert!(good.cmd("NOOP").await.starts_with("200"));
}

#[tokio::test]
async fn binary_garbage_gets_replies_not_a_crash() {
    let mock = MockFtp::start(MockOptions::default()).await;
    let proxy = start_proxy(vec![mock.addr], |_| {}).await;
    let mut c = Client::connect(proxy.addr).await;
    assert!(c.reply().await.starts_with("220"));
    let garbage: Vec<u8> = (0..2000u32).map(|i| (i * 131 % 256) as u8).collect();
    c.send(&garbage).await;
    c.send(b"\r\nNOOP\r\n").await;
    // Every line of garbage gets its own reply; the session stays in step.
    let lines = garbage.split(|&b| b == b'\n').count();
    let mut last = String::new();
    for _ in 0..lines + 1 {
        last = c.reply().await;
        assert!(!last.is_empty(), "session closed");
    }
    assert!(last.starts_with("200"), "{last}");
    let mut other = Client::login(proxy.addr).await;
    assert!(other.cmd("NOOP").await.starts_with("200"));
}

#[tokio::test]
async fn long_address_and_active_commands_are_refused_in_order() {
    let mock = MockFtp::start(MockOptions::default()).await;
    let proxy = start_proxy(vec![mock.addr], |_| {}).await;
    let mut c = Client::login(proxy.addr).await;
    c.send(b"NOOP\r\nLPSV\r\nPORT 127,0,0,1,4,1\r\nNOOP\r\n")
        .await;
    assert!(c.reply().await.starts_with("200"));
    assert!(c.reply().await.starts_with("502"));
    assert!(c.reply().await.starts_with("502"));
    assert!(c.reply().await.starts_with("200"));
    let forwarded: Vec<_> = mock
        .received()
        .into_iter()
        .map(|l| l[..4].to_vec())
        .collect();
    assert!(!forwarded.iter().any(|v| v == b"LPSV" || v == b"PORT"));
}

#[tokio::test]
async fn failover_to_next_backend_and_421_when_none() {
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let mock = MockFtp::start(MockOptions::default()).await;
    let proxy = start_proxy(vec![dead, mock.addr], |_| {}).await;
    for _ in 0..2 {
        let mut c = Client::connect(proxy.addr).await;
        assert!(c.reply().await.starts_with("220 mock"));
    }
    let none = start_proxy(vec![dead], |_| {}).await;
    let mut c = Client::connect(none.addr).await;
    assert!(c.reply().await.starts_with("421 "));
    assert_eq!(c.reply().await, "");
}

#[tokio::test]
async fn ipv6_client_reaches_ipv4_backend_through_epsv() {
    let mock = MockFtp::start(MockOptions::default()).await;
    mock.put_file("v6.bin", pattern(70_001));
    let proxy = start_proxy(vec![mock.addr], |c| {
        c.listen = vec!["[::1]:0".parse().unwrap()];
        c.public_address = vec![];
    })
    .await;
    assert!(proxy.addr.is_ipv6());
    let mut c = Client::login(proxy.addr).await;
    let r = c.cmd("EPSV").await;
    let port = find_epsv_port(r.trim_end().as_bytes()).unwrap().port;
    let data = TcpStream::connect(("::1", port)).await.unwrap();
    c.send(b"RETR v6.bin\r\n").await;
    assert!(c.reply().await.starts_with("150"));
    assert!(read_all(data).await == pattern(70_001));
    assert!(c.reply().await.starts_with("226"));
}

#[tokio::test]
async fn client_quit_ends_session_and_gauge_returns_to_zero() {
    let mock = MockFtp::start(MockOptions::default()).await;
    let proxy = start_proxy(vec![mock.addr], |_| {}).await;
    let mut c = Client::login(proxy.addr).await;
    assert_eq!(proxy.metrics.sessions_active.get(), 1);
    assert!(c.cmd("QUIT").await.starts_with("221"));
    assert_eq!(c.reply().await, "");
    let deadline = tokio::time::Instant::now() + WAIT;
    while proxy.metrics.sessions_active.get() != 0 {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::task::yield_now().await;
    }
}
