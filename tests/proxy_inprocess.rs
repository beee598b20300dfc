//! ftpgate in-process against a mock FTP server on loopback: passive rewriting, data
//! relay, who may connect to a data port, port exhaustion, and bad input. Loopback has
//! a whole /8, so 127.0.0.2 plays the foreign host.

#[path = "common/inprocess.rs"]
#[allow(dead_code)] // shared with tests that use other parts of it
mod inprocess;
#[path = "common/mock_ftp.rs"]
mod mock_ftp;

use std::net::SocketAddr;
use std::time::Duration;

use ftpgate::protocol::addr::{find_epsv_port, find_pasv_tuple};
use inprocess::{connect_from, eventually, pattern, read_all, start_proxy, Client, WAIT};
use mock_ftp::{MockFtp, MockOptions};
use prometheus::IntCounterVec;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

/// Value of one labelled counter (`refusals_total`, `timeouts_total`, ...).
fn count(counters: &IntCounterVec, label: &str) -> u64 {
    counters.with_label_values(&[label]).get()
}

/// A client data listener on loopback, announced with PORT (which must get
/// 200): the start of every active-mode transfer here.
async fn announce_port(c: &mut Client) -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let me = listener.local_addr().unwrap();
    assert!(c
        .cmd(&format!("PORT {}", port_arg(me)))
        .await
        .starts_with("200"));
    (listener, me)
}

/// Accepts ftpgate's active-mode data connection on `listener` (bounded by
/// [`WAIT`]) and requires the 150 that announces the transfer.
async fn accept_data(c: &mut Client, listener: &TcpListener) -> TcpStream {
    let (data, _) = tokio::time::timeout(WAIT, listener.accept())
        .await
        .unwrap()
        .unwrap();
    assert!(c.reply().await.starts_with("150"));
    data
}

/// The rest of a RETR once its data connection is open and 150 has come:
/// every byte until EOF, then 226. Returns the bytes.
async fn finish_retr(c: &mut Client, data: TcpStream) -> Vec<u8> {
    let got = read_all(data).await;
    assert!(c.reply().await.starts_with("226"));
    got
}

/// `RETR name` over the already connected passive data connection `data`:
/// 150, every byte, 226. Returns the bytes.
async fn retr_over(c: &mut Client, data: TcpStream, name: &str) -> Vec<u8> {
    c.send(format!("RETR {name}\r\n").as_bytes()).await;
    assert!(c.reply().await.starts_with("150"));
    finish_retr(c, data).await
}

#[tokio::test]
async fn pasv_download_is_rewritten_and_byte_exact() {
    let mock = MockFtp::start(MockOptions {
        pasv_ip: [10, 0, 0, 2],
        ..MockOptions::default()
    })
    .await;
    // The mock names 10.0.0.2 but listens on 127.0.0.1: with passive.target=control
    // ftpgate connects to the control address, the cure for servers that advertise an
    // address ftpgate cannot reach.
    let body = pattern(3 * 1024 * 1024 + 17);
    mock.put_file("f.bin", body.clone());
    let proxy = start_proxy(vec![mock.addr], |c| {
        c.public_address = vec!["127.0.0.1".parse().unwrap()];
        c.passive.target = ftpgate::config::PassiveTarget::Control;
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
    // Booked when the relay has finished both directions, which may be just after 226.
    let bytes = || count(&proxy.metrics.data_bytes_total, "backend_to_client");
    eventually("download bytes counted", || bytes() >= body.len() as u64).await;
    assert_eq!(bytes(), body.len() as u64);
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
    let got = retr_over(&mut c, data, "secret.bin").await;
    assert!(got == pattern(200_000));
    assert_eq!(count(&proxy.metrics.refusals_total, "foreign_data_peer"), 1);
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
    // The client was told 425 (what it received), not the server's 229.
    assert_eq!(count(&proxy.metrics.replies_total, "425"), 1);
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
    assert!(count(&proxy.metrics.timeouts_total, "data_connect") >= 1);
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
    assert_eq!(count(&proxy.metrics.rewrites_total, "227"), 0);
    // Replies are counted as whole replies: the inner `227 ` line is text.
    assert_eq!(count(&proxy.metrics.replies_total, "211"), 1);
    assert_eq!(count(&proxy.metrics.replies_total, "227"), 0);
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
async fn long_address_commands_are_refused_in_order() {
    let mock = MockFtp::start(MockOptions::default()).await;
    let proxy = start_proxy(vec![mock.addr], |_| {}).await;
    let mut c = Client::login(proxy.addr).await;
    c.send(b"NOOP\r\nLPSV\r\nLPRT 4,4,127,0,0,1,2,4,1\r\nNOOP\r\n")
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
    assert!(!forwarded.iter().any(|v| v == b"LPSV" || v == b"LPRT"));
    assert_eq!(count(&proxy.metrics.refusals_total, "lprt_lpsv"), 2);
}

fn port_arg(a: SocketAddr) -> String {
    let SocketAddr::V4(v4) = a else {
        panic!("v4 expected")
    };
    let o = v4.ip().octets();
    format!(
        "{},{},{},{},{},{}",
        o[0],
        o[1],
        o[2],
        o[3],
        v4.port() >> 8,
        v4.port() & 0xff
    )
}

#[tokio::test]
async fn bounce_port_to_another_host_is_refused_and_nothing_connects() {
    let mock = MockFtp::start(MockOptions::default()).await;
    mock.put_file("f", b"x".to_vec());
    let proxy = start_proxy(vec![mock.addr], |_| {}).await;
    let victim = std::net::TcpListener::bind("127.0.0.2:0").unwrap();
    victim.set_nonblocking(true).unwrap();
    let mut c = Client::login(proxy.addr).await;
    let r = c
        .cmd(&format!("PORT {}", port_arg(victim.local_addr().unwrap())))
        .await;
    assert!(r.starts_with("500 "), "{r}");
    let r = c
        .cmd(&format!(
            "EPRT |1|127.0.0.2|{}|",
            victim.local_addr().unwrap().port()
        ))
        .await;
    assert!(r.starts_with("500 "), "{r}");
    let r = c.cmd("RETR f").await;
    assert!(r.starts_with("425"), "backend got no PORT: {r}");
    assert!(c.cmd("NOOP").await.starts_with("200"));
    assert!(victim.accept().is_err(), "victim received a connection");
    assert!(!mock
        .received()
        .iter()
        .any(|l| l.starts_with(b"PORT") || l.starts_with(b"EPRT")));
    assert_eq!(count(&proxy.metrics.refusals_total, "bounce"), 2);
    // Malformed or unsupported forms get syntax replies, not a crash.
    assert!(c.cmd("PORT 127,0,0,1,256,1").await.starts_with("501"));
    assert!(c.cmd("EPRT |3|x|1|").await.starts_with("522"));
}

#[tokio::test]
async fn active_mode_is_relayed_through_ftpgate() {
    let mock = MockFtp::start(MockOptions::default()).await;
    mock.put_file("a.bin", pattern(500_001));
    let proxy = start_proxy(vec![mock.addr], |c| {
        c.active.ports = Some("42000-42099".parse().unwrap());
    })
    .await;
    let mut c = Client::login(proxy.addr).await;
    let (listener, me) = announce_port(&mut c).await;
    c.send(b"RETR a.bin\r\n").await;
    let data = accept_data(&mut c, &listener).await;
    let got = finish_retr(&mut c, data).await;
    assert!(got == pattern(500_001));
    // The backend was told to connect to ftpgate, never to the client.
    let targets = mock.state.lock().unwrap().active_targets.clone();
    assert_eq!(targets.len(), 1);
    assert_ne!(targets[0], me);
    assert!((42000..=42099).contains(&targets[0].port()), "{targets:?}");
    assert_eq!(count(&proxy.metrics.rewrites_total, "port"), 1);

    // EPRT upload, same session.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    assert!(c
        .cmd(&format!("EPRT |1|127.0.0.1|{port}|"))
        .await
        .starts_with("200"));
    c.send(b"STOR up.bin\r\n").await;
    let mut data = accept_data(&mut c, &listener).await;
    data.write_all(&pattern(77_777)).await.unwrap();
    data.shutdown().await.unwrap();
    assert!(c.reply().await.starts_with("226"));
    assert!(mock.file("up.bin").unwrap() == pattern(77_777));
    assert_eq!(count(&proxy.metrics.rewrites_total, "eprt"), 1);
}

#[tokio::test]
async fn foreign_host_on_active_backend_side_port_gets_nothing() {
    // In active mode the mapped port faces the backend: only the backend may connect.
    let mock = MockFtp::start(MockOptions::default()).await;
    mock.put_file("a", pattern(10_000));
    let proxy = start_proxy(vec![mock.addr], |c| {
        c.active.ports = Some("42100-42100".parse().unwrap());
    })
    .await;
    let mut c = Client::login(proxy.addr).await;
    let (listener, _) = announce_port(&mut c).await;
    let thief = connect_from(
        "127.0.0.2".parse().unwrap(),
        "127.0.0.1:42100".parse().unwrap(),
    )
    .await
    .unwrap();
    assert!(read_all(thief).await.is_empty());
    c.send(b"RETR a\r\n").await;
    let data = accept_data(&mut c, &listener).await;
    let got = finish_retr(&mut c, data).await;
    assert!(got == pattern(10_000));
    assert_eq!(count(&proxy.metrics.refusals_total, "foreign_data_peer"), 1);
}

#[tokio::test]
async fn passive_translation_client_port_backend_epsv() {
    let mock = MockFtp::start(MockOptions::default()).await;
    mock.put_file("t.bin", pattern(300_003));
    let proxy = start_proxy(vec![mock.addr], |c| {
        c.backend_data_mode = ftpgate::config::BackendDataMode::Passive;
    })
    .await;
    let mut c = Client::login(proxy.addr).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let me = listener.local_addr().unwrap();
    // Pipelined: the RETR must wait for ftpgate's own EPSV without losing order.
    c.send(format!("PORT {}\r\nRETR t.bin\r\nNOOP\r\n", port_arg(me)).as_bytes())
        .await;
    assert!(c.reply().await.starts_with("200"));
    let data = accept_data(&mut c, &listener).await;
    let got = finish_retr(&mut c, data).await;
    assert!(got == pattern(300_003));
    assert!(c.reply().await.starts_with("200"));
    let got = mock.received();
    assert!(got.iter().any(|l| l == b"EPSV\r\n"));
    assert!(
        !got.iter().any(|l| l.starts_with(b"PORT")),
        "backend never sees PORT"
    );
}

#[tokio::test]
async fn active_translation_client_epsv_backend_port() {
    let mock = MockFtp::start(MockOptions::default()).await;
    mock.put_file("t.bin", pattern(123_457));
    let proxy = start_proxy(vec![mock.addr], |c| {
        c.backend_data_mode = ftpgate::config::BackendDataMode::Active;
    })
    .await;
    let mut c = Client::login(proxy.addr).await;
    for verb in ["EPSV", "PASV"] {
        let r = c.cmd(verb).await;
        let target: SocketAddr = if verb == "EPSV" {
            SocketAddr::from((
                [127, 0, 0, 1],
                find_epsv_port(r.trim_end().as_bytes()).unwrap().port,
            ))
        } else {
            find_pasv_tuple(r.trim_end().as_bytes())
                .unwrap()
                .addr
                .into()
        };
        let data = TcpStream::connect(target).await.unwrap();
        let got = retr_over(&mut c, data, "t.bin").await;
        assert!(got == pattern(123_457));
    }
    let got = mock.received();
    assert!(!got
        .iter()
        .any(|l| l.starts_with(b"EPSV") || l.starts_with(b"PASV")));
    assert_eq!(got.iter().filter(|l| l.starts_with(b"PORT")).count(), 2);
    // EPSV ALL is honoured towards the client and not sent to the backend.
    assert!(c.cmd("EPSV ALL").await.starts_with("200"));
    assert!(c.cmd("PASV").await.starts_with("500"));
    assert!(c.cmd("EPSV").await.starts_with("229"));
    assert!(!mock.received().iter().any(|l| l.starts_with(b"EPSV")));
}

async fn keepalive_transcript(noop_during_transfer: bool) {
    let mock = MockFtp::start(MockOptions {
        noop_during_transfer,
        ..MockOptions::default()
    })
    .await;
    let proxy = start_proxy(vec![mock.addr], |c| {
        c.keepalive.noop_interval = Duration::from_millis(30);
    })
    .await;
    let mut c = Client::login(proxy.addr).await;
    let data = TcpStream::connect(c.epsv().await).await.unwrap();
    c.send(b"RETR slow:25\r\n").await;
    assert!(c.reply().await.starts_with("150"));
    assert_eq!(read_all(data).await.len(), 25 * 1024);
    assert_eq!(c.reply().await, "226 slow transfer complete\r\n");
    // The next reply the client sees is the answer to its own command, not a NOOP's.
    assert_eq!(c.cmd("SYST").await, "500 unknown command\r\n");
    let noops = mock.received().iter().filter(|l| *l == b"NOOP\r\n").count();
    assert!(noops >= 1, "no keepalive NOOP reached the server");
    assert_eq!(proxy.metrics.keepalive_noops_total.get() as usize, noops);
    // The client's own NOOP is answered to the client.
    assert_eq!(c.cmd("NOOP").await, "200 NOOP ok\r\n");
}

#[tokio::test]
async fn keepalive_noop_replies_after_226_are_swallowed() {
    keepalive_transcript(false).await;
}

#[tokio::test]
async fn keepalive_noop_replies_during_transfer_are_swallowed() {
    keepalive_transcript(true).await;
}

#[tokio::test]
async fn login_timeout_sends_421_and_closes() {
    let mock = MockFtp::start(MockOptions::default()).await;
    let proxy = start_proxy(vec![mock.addr], |c| {
        c.timeouts.login = Duration::from_millis(100);
    })
    .await;
    let mut c = Client::connect(proxy.addr).await;
    assert!(c.reply().await.starts_with("220"));
    assert!(c.cmd("USER u").await.starts_with("331"));
    let r = c.reply().await;
    assert!(r.starts_with("421 Login timeout"), "{r}");
    assert_eq!(c.reply().await, "");
    assert_eq!(count(&proxy.metrics.timeouts_total, "login"), 1);
}

#[tokio::test]
async fn idle_timeout_sends_421_but_not_during_a_transfer() {
    let mock = MockFtp::start(MockOptions::default()).await;
    let proxy = start_proxy(vec![mock.addr], |c| {
        c.timeouts.idle = Duration::from_millis(150);
        c.keepalive.noop_interval = Duration::ZERO;
    })
    .await;
    let mut c = Client::login(proxy.addr).await;
    // A transfer far longer than the idle timeout survives it.
    let data = TcpStream::connect(c.epsv().await).await.unwrap();
    c.send(b"RETR slow:20\r\n").await;
    assert!(c.reply().await.starts_with("150"));
    assert_eq!(read_all(data).await.len(), 20 * 1024);
    assert!(c.reply().await.starts_with("226"));
    let r = c.reply().await;
    assert!(r.starts_with("421 Idle timeout"), "{r}");
    assert_eq!(c.reply().await, "");
    assert_eq!(count(&proxy.metrics.timeouts_total, "idle"), 1);
}

/// A backend on a plain blocking socket, as C servers read theirs, recording the
/// inline byte stream (urgent data is not inline: SO_OOBINLINE is off).
fn synch_checking_backend() -> (SocketAddr, std::thread::JoinHandle<Vec<u8>>) {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let handle = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        s.write_all(b"220 hi\r\n").unwrap();
        let mut inline = Vec::new();
        let mut buf = [0u8; 512];
        let mut answered = 0;
        loop {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "closed early");
            inline.extend_from_slice(&buf[..n]);
            let lines = inline.iter().filter(|&&b| b == b'\n').count();
            while answered < lines {
                let reply: &[u8] = match answered {
                    0 => b"331 pw\r\n",
                    1 => b"230 in\r\n",
                    _ => b"226 ABOR ok\r\n",
                };
                s.write_all(reply).unwrap();
                answered += 1;
            }
            if inline.ends_with(b"ABOR\r\n") {
                break;
            }
        }
        inline
    });
    (addr, handle)
}

#[tokio::test]
async fn abor_with_telnet_synch_is_relayed_with_urgent_iac() {
    let (backend, checked) = synch_checking_backend();
    let proxy = start_proxy(vec![backend], |_| {}).await;
    let c = Client::login(proxy.addr).await;
    // Python ftplib sends the whole line as urgent data: the urgent byte is the final
    // \n, and the read stops at the urgent mark before it.
    let raw = c.w.as_ref();
    raw.writable().await.unwrap();
    socket2::SockRef::from(raw)
        .send_out_of_band(b"\xff\xf4\xff\xf2ABOR\r\n")
        .unwrap();
    let mut c = c;
    assert_eq!(c.reply().await, "226 ABOR ok\r\n");
    let inline = tokio::task::spawn_blocking(move || checked.join().unwrap())
        .await
        .unwrap();
    // `IAC IP` inline, then the Synch's `IAC` as urgent data (so missing from the
    // inline stream), then `DM ABOR`: what servers watching SIGURG expect.
    assert!(
        inline.ends_with(b"PASS secret\r\n\xff\xf4\xf2ABOR\r\n"),
        "{:?}",
        String::from_utf8_lossy(&inline)
    );
}

#[tokio::test]
async fn failover_to_next_backend_and_421_when_none() {
    let dead = inprocess::dead_addr();
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
    let got = retr_over(&mut c, data, "v6.bin").await;
    assert!(got == pattern(70_001));
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

#[tokio::test]
async fn transparent_listener_refuses_to_connect_to_itself() {
    // Without a REDIRECT rule the "original destination" is the listener itself.
    let proxy = start_proxy(vec![], |c| {
        c.mode = ftpgate::config::ListenerMode::Transparent;
    })
    .await;
    let mut c = Client::connect(proxy.addr).await;
    let r = c.reply().await;
    assert!(r.starts_with("421 "), "{r}");
    assert_eq!(c.reply().await, "");
    assert_eq!(count(&proxy.metrics.refusals_total, "loop"), 1);
}

#[tokio::test]
async fn silent_data_connection_is_closed_after_data_idle_timeout() {
    let mock = MockFtp::start(MockOptions::default()).await;
    let proxy = start_proxy(vec![mock.addr], |c| {
        c.timeouts.data_idle = Duration::from_millis(200);
        c.data_ports = "41700-41700".parse().unwrap();
    })
    .await;
    let mut c = Client::login(proxy.addr).await;
    let data = TcpStream::connect(c.epsv().await).await.unwrap();
    c.send(b"RETR hold\r\n").await;
    assert!(c.reply().await.starts_with("150"));
    // ftpgate closes both sides: the client sees EOF, the server its 426.
    assert!(read_all(data).await.is_empty());
    assert!(c.reply().await.starts_with("426"));
    assert_eq!(count(&proxy.metrics.timeouts_total, "data_idle"), 1);
    // The port is back in the (one-port) pool.
    let deadline = tokio::time::Instant::now() + WAIT;
    while !c.cmd("EPSV").await.starts_with("229") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "port never released"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn auth_tls_is_refused_so_the_control_channel_stays_readable() {
    let mock = MockFtp::start(MockOptions::default()).await;
    let proxy = start_proxy(vec![mock.addr], |_| {}).await;
    let mut c = Client::connect(proxy.addr).await;
    assert!(c.reply().await.starts_with("220"));
    let r = c.cmd("AUTH TLS").await;
    assert!(r.starts_with("502 "), "{r}");
    assert!(c.cmd("USER u").await.starts_with("331"));
    assert!(!mock.received().iter().any(|l| l.starts_with(b"AUTH")));
    assert_eq!(count(&proxy.metrics.refusals_total, "auth_tls"), 1);
}
