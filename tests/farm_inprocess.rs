//! Server farms in-process on loopback: each balancing policy over 100 sessions
//! against mock FTP servers, user routing (ftpgate's own greeting, the backend's
//! swallowed, pipelined commands in order), drain, failover, and the `banner` and
//! `login` health checks against servers that are broken in the ways real ones are.
//! Loopback is a whole /8, so 127.0.1.x play distinct clients for `source-ip`.
//!
//! The distributions are printed (`--nocapture`) for the measurements.

#[path = "common/inprocess.rs"]
#[allow(dead_code)]
mod inprocess;
#[path = "common/mock_ftp.rs"]
#[allow(dead_code)]
mod mock_ftp;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ftpgate::farm::{BackendSpec, BalancePolicy};
use ftpgate::health::{check_once, CheckKind, HealthConfig, Secret};
use inprocess::{connect_from, start_proxy, Client, Proxy};
use mock_ftp::{MockFtp, MockOptions};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

async fn mocks(n: usize) -> Vec<MockFtp> {
    let mut v = Vec::new();
    for _ in 0..n {
        v.push(MockFtp::start(MockOptions::default()).await);
    }
    v
}

fn spec(addr: SocketAddr, weight: u32, drain: bool) -> BackendSpec {
    BackendSpec {
        weight,
        drain,
        ..BackendSpec::from(addr)
    }
}

/// One short session as `user`: log in, quit.
async fn session(proxy: &Proxy, user: &str) {
    let mut c = Client::connect(proxy.addr).await;
    assert!(c.reply().await.starts_with("220"));
    assert!(c.cmd(&format!("USER {user}")).await.starts_with("331"));
    assert!(c.cmd("PASS x").await.starts_with("230"));
    c.quit().await;
}

fn users_per_backend(ms: &[MockFtp]) -> Vec<usize> {
    ms.iter().map(|m| m.users().len()).collect()
}

async fn proxy_with(backends: Vec<BackendSpec>, policy: BalancePolicy, routes: &str) -> Proxy {
    let routes = serde_yaml::from_str(routes).unwrap();
    start_proxy(Vec::new(), move |c| {
        c.backends = backends;
        c.balance = policy;
        c.routes = routes;
    })
    .await
}

#[tokio::test]
async fn weighted_round_robin_over_100_sessions_and_drain_takes_none() {
    let ms = mocks(4).await;
    let backends = vec![
        spec(ms[0].addr, 1, false),
        spec(ms[1].addr, 2, false),
        spec(ms[2].addr, 1, false),
        // Planned maintenance: keeps its sessions, takes no new ones.
        spec(ms[3].addr, 5, true),
    ];
    let proxy = proxy_with(backends, BalancePolicy::RoundRobin, "[]").await;
    for i in 0..100 {
        session(&proxy, &format!("u{i}")).await;
    }
    let got = users_per_backend(&ms);
    println!("round-robin weights 1/2/1 + drained(5): {got:?}");
    assert_eq!(got, vec![25, 50, 25, 0]);
    let picks = |m: &MockFtp| {
        proxy
            .metrics
            .balancer_picks_total
            .with_label_values(&["round-robin", &m.addr.to_string()])
            .get()
    };
    assert_eq!(picks(&ms[1]), 50, "the distribution is in the metrics too");
}

#[tokio::test]
async fn least_connections_steers_around_long_transfers() {
    let ms = mocks(2).await;
    let backends = vec![spec(ms[0].addr, 1, false), spec(ms[1].addr, 1, false)];
    let proxy = proxy_with(backends, BalancePolicy::LeastConnections, "[]").await;
    // Six long downloads (held open by the mock): three land on each server.
    let mut long = Vec::new();
    for i in 0..6 {
        let mut c = Client::connect(proxy.addr).await;
        assert!(c.reply().await.starts_with("220"));
        assert!(c.cmd(&format!("USER long{i}")).await.starts_with("331"));
        assert!(c.cmd("PASS x").await.starts_with("230"));
        let data = c.epsv().await;
        c.send(b"RETR hold\r\n").await;
        let d = tokio::net::TcpStream::connect(data).await.unwrap();
        assert!(c.reply().await.starts_with("150"));
        long.push((c, d));
    }
    assert_eq!(users_per_backend(&ms), vec![3, 3]);
    // The three on the second server finish.
    let before: Vec<usize> = users_per_backend(&ms);
    let mut kept = Vec::new();
    for (i, (mut c, d)) in long.into_iter().enumerate() {
        let on_second = ms[1].users().contains(&format!("long{i}"));
        if on_second {
            drop(d);
            assert!(c.reply().await.starts_with("426"));
            c.quit().await;
        } else {
            kept.push((c, d));
        }
    }
    // Wait until ftpgate has seen those sessions end (the gauge mirrors the lease).
    let gauge = proxy
        .metrics
        .backend_sessions_active
        .with_label_values(&[&ms[1].addr.to_string()]);
    let deadline = tokio::time::Instant::now() + inprocess::WAIT;
    while gauge.get() != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "sessions never ended"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for i in 0..100 {
        session(&proxy, &format!("s{i}")).await;
    }
    let after = users_per_backend(&ms);
    let short: Vec<usize> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    println!("least-connections, 3 long transfers on the first server: short sessions {short:?}");
    assert_eq!(
        short,
        vec![0, 100],
        "every short session avoided the busy server"
    );
    drop(kept);
}

#[tokio::test]
async fn source_ip_keeps_clients_and_a_lost_member_moves_only_its_clients() {
    let ms = mocks(3).await;
    let backends = ms.iter().map(|m| spec(m.addr, 1, false)).collect();
    let proxy = proxy_with(backends, BalancePolicy::SourceIp, "[]").await;
    let clients: Vec<IpAddr> = (1..=100).map(|i| IpAddr::from([127, 0, 1, i])).collect();
    // Which server each client lands on: the one whose USER log gained its name.
    let place = |round: &str| {
        let ms = &ms;
        let proxy = &proxy;
        let clients = clients.clone();
        let round = round.to_string();
        async move {
            let mut at = HashMap::new();
            for ip in clients {
                let user = format!("{round}-{ip}");
                let s = connect_from(ip, proxy.addr).await.unwrap();
                let mut c = Client::from_stream(s);
                assert!(c.reply().await.starts_with("220"));
                assert!(c.cmd(&format!("USER {user}")).await.starts_with("331"));
                c.quit().await;
                let i = ms.iter().position(|m| m.users().contains(&user)).unwrap();
                at.insert(ip, i);
            }
            at
        }
    };
    let first = place("a").await;
    let second = place("b").await;
    assert_eq!(first, second, "every client kept its server");
    let counts = |at: &HashMap<IpAddr, usize>| {
        (0..3)
            .map(|i| at.values().filter(|&&v| v == i).count())
            .collect::<Vec<_>>()
    };
    println!(
        "source-ip, 100 clients over 3 servers: {:?}",
        counts(&first)
    );
    assert!(
        counts(&first).iter().all(|&n| n >= 15),
        "{:?}",
        counts(&first)
    );
    // Server 2 goes away: its clients fail over, nobody else moves.
    ms[2].stop().await;
    let third = place("c").await;
    println!("source-ip after losing server 2: {:?}", counts(&third));
    for ip in &clients {
        if first[ip] != 2 {
            assert_eq!(third[ip], first[ip], "{ip} moved though its server stayed");
        } else {
            assert_ne!(third[ip], 2);
        }
    }
}

#[tokio::test]
async fn user_routing_greets_routes_swallows_the_banner_and_keeps_order() {
    let ms = mocks(3).await;
    let backends = ms.iter().map(|m| spec(m.addr, 1, false)).collect();
    let routes = format!(
        "[{{user: alice, backends: ['{}']}}, {{user_suffix: '@acme', backends: ['{}']}}]",
        ms[1].addr, ms[2].addr
    );
    let proxy = proxy_with(backends, BalancePolicy::User, &routes).await;

    // A FileZilla-like client probes before USER, then pipelines the login.
    let mut c = Client::connect(proxy.addr).await;
    let greeting = c.reply().await;
    assert_eq!(greeting, "220 ftpgate ready\r\n");
    assert!(c.cmd("FEAT").await.starts_with("530"));
    c.send(b"USER alice\r\nPASS x\r\nNOOP\r\n").await;
    assert!(
        c.reply().await.starts_with("331"),
        "the backend's 220 is swallowed"
    );
    assert!(c.reply().await.starts_with("230"));
    assert!(c.reply().await.starts_with("200"));
    c.quit().await;
    assert_eq!(ms[1].users(), ["alice"]);

    for i in 0..20 {
        session(&proxy, &format!("user{i}@acme")).await;
    }
    assert_eq!(
        ms[2].users().len(),
        20,
        "the tenant's sessions all went to its server"
    );
    // Unrouted names: a consistent hash, so a name always returns to its server.
    for round in 0..2 {
        for i in 0..100 {
            session(&proxy, &format!("person{i}")).await;
        }
        let _ = round;
    }
    let mut homes = HashMap::new();
    for (k, m) in ms.iter().enumerate() {
        for u in m.users().into_iter().filter(|u| u.starts_with("person")) {
            homes.entry(u).or_insert_with(Vec::new).push(k);
        }
    }
    assert_eq!(homes.len(), 100);
    assert!(
        homes.values().all(|v| v.len() == 2 && v[0] == v[1]),
        "{homes:?}"
    );
    let counts: Vec<usize> = (0..3)
        .map(|k| homes.values().filter(|v| v[0] == k).count())
        .collect();
    println!("user hash, 100 names over 3 servers: {counts:?}");
    assert!(counts.iter().all(|&n| n >= 15), "{counts:?}");
}

// ----- health checks -----

fn health(kind: CheckKind) -> HealthConfig {
    HealthConfig {
        check: kind,
        timeout: Duration::from_secs(2),
        user: Some("monitor".into()),
        password: Some(Secret("not-logged".into())),
        ..HealthConfig::default()
    }
}

/// A server that accepts and answers every connection with `banner` (None: silence).
async fn fake(banner: Option<&'static str>) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut s, _)) = l.accept().await {
            if let Some(b) = banner {
                let _ = s.write_all(b.as_bytes()).await;
            }
            held.push(s);
        }
    });
    addr
}

#[tokio::test]
async fn banner_check_finds_a_full_vsftpd_and_a_silent_server_tcp_does_not() {
    let t = Duration::from_secs(2);
    // vsftpd at max_clients: accepts, says 421, closes.
    let full = fake(Some(
        "421 There are too many connected users, please try later.\r\n",
    ))
    .await;
    // A wedged daemon: the kernel accepts, nobody speaks.
    let silent = fake(None).await;
    let good = MockFtp::start(MockOptions::default()).await;
    for addr in [full, silent] {
        assert!(check_once(addr, &health(CheckKind::Tcp), t).await.is_ok());
        assert!(check_once(addr, &health(CheckKind::Banner), t)
            .await
            .is_err());
    }
    assert!(check_once(good.addr, &health(CheckKind::Banner), t)
        .await
        .is_ok());
}

#[tokio::test]
async fn login_check_lists_over_a_real_data_connection() {
    let t = Duration::from_secs(2);
    let good = MockFtp::start(MockOptions::default()).await;
    check_once(good.addr, &health(CheckKind::Login), t)
        .await
        .unwrap();
    let seen: Vec<String> = good
        .received()
        .iter()
        .map(|l| String::from_utf8_lossy(l).trim_end().to_string())
        .collect();
    assert_eq!(
        seen,
        ["USER monitor", "PASS not-logged", "EPSV", "LIST", "QUIT"]
    );
    // Data ports firewalled: EPSV names a port where nothing answers. The banner
    // check passes; only the login check (which connects there) fails.
    let closed = inprocess::dead_addr().port();
    let blocked = MockFtp::start(MockOptions {
        epsv_reply: format!("229 Entering Extended Passive Mode (|||{closed}|)"),
        ..MockOptions::default()
    })
    .await;
    assert!(check_once(blocked.addr, &health(CheckKind::Banner), t)
        .await
        .is_ok());
    assert!(check_once(blocked.addr, &health(CheckKind::Login), t)
        .await
        .is_err());
}

#[tokio::test]
async fn the_balancer_skips_members_the_banner_check_finds_down() {
    let full = fake(Some("421 Too many users.\r\n")).await;
    let good = MockFtp::start(MockOptions::default()).await;
    let proxy = start_proxy(vec![full, good.addr], |c| {
        c.health.check = CheckKind::Banner;
        c.health.interval = Duration::from_millis(50);
    })
    .await;
    let up = |a: SocketAddr| {
        proxy
            .metrics
            .backend_up
            .with_label_values(&[&a.to_string()])
            .get()
    };
    let deadline = tokio::time::Instant::now() + inprocess::WAIT;
    while up(full) != 0 || up(good.addr) != 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "checker never decided"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // TCP-wise the full server is fine; without the banner check half the sessions
    // would get its 421.
    for i in 0..10 {
        let mut c = Client::connect(proxy.addr).await;
        let greeting = c.reply().await;
        assert!(greeting.starts_with("220"), "session {i}: {greeting}");
        c.quit().await;
    }
}

// ----- PROXY protocol in, in-process -----

use ftpgate::proxy_protocol::{encode_proxy_header, ProxyVersion};

async fn proxied_gate(backend: SocketAddr) -> Proxy {
    start_proxy(vec![backend], |c| {
        c.proxy_protocol.accept_from = vec!["127.0.0.1/32".parse().unwrap()];
        c.proxy_protocol.timeout = Duration::from_millis(300);
    })
    .await
}

fn picks(proxy: &Proxy) -> u64 {
    use prometheus::core::Collector;
    proxy
        .metrics
        .balancer_picks_total
        .collect()
        .iter()
        .flat_map(|f| f.get_metric())
        .map(|m| m.get_counter().get_value() as u64)
        .sum()
}

fn headers(proxy: &Proxy, port: &str, result: &str) -> u64 {
    proxy
        .metrics
        .proxy_headers_total
        .with_label_values(&[port, result])
        .get()
}

#[tokio::test]
async fn v1_ipv6_header_on_control_and_v2_on_the_data_port_name_the_client() {
    let mock = MockFtp::start(MockOptions::default()).await;
    mock.put_file("f.bin", inprocess::pattern(100_000));
    let proxy = proxied_gate(mock.addr).await;
    let client: SocketAddr = "[2001:db8::7]:40000".parse().unwrap();
    let intruder: SocketAddr = "[2001:db8::66]:40001".parse().unwrap();
    let front: SocketAddr = "[2001:db8::1]:21".parse().unwrap();
    let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(&encode_proxy_header(ProxyVersion::V1, client, front))
        .await
        .unwrap();
    let mut c = Client::from_stream(s);
    assert!(c.reply().await.starts_with("220"));
    assert!(c.cmd("USER u").await.starts_with("331"));
    assert!(c.cmd("PASS p").await.starts_with("230"));
    let data = c.epsv().await;
    // Behind the same balancer, another client's header: refused, the port waits on.
    let mut bad = tokio::net::TcpStream::connect(data).await.unwrap();
    bad.write_all(&encode_proxy_header(ProxyVersion::V2, intruder, front))
        .await
        .unwrap();
    let mut sink = Vec::new();
    let n = tokio::time::timeout(
        inprocess::WAIT,
        tokio::io::AsyncReadExt::read_to_end(&mut bad, &mut sink),
    )
    .await
    .unwrap()
    .unwrap_or(0);
    assert_eq!(n, 0, "the intruder got nothing");
    let mut good = tokio::net::TcpStream::connect(data).await.unwrap();
    good.write_all(&encode_proxy_header(ProxyVersion::V2, client, front))
        .await
        .unwrap();
    c.send(b"RETR f.bin\r\n").await;
    assert!(c.reply().await.starts_with("150"));
    let got = inprocess::read_all(good).await;
    assert!(c.reply().await.starts_with("226"));
    assert_eq!(got, inprocess::pattern(100_000));
    assert_eq!(headers(&proxy, "control", "accepted"), 1);
    assert_eq!(headers(&proxy, "data", "accepted"), 2);
    assert_eq!(
        proxy
            .metrics
            .refusals_total
            .with_label_values(&["foreign_data_peer"])
            .get(),
        1
    );
}

#[tokio::test]
async fn malformed_slow_and_missing_headers_close_without_touching_a_backend() {
    let mock = MockFtp::start(MockOptions::default()).await;
    let proxy = proxied_gate(mock.addr).await;
    for (bytes, result) in [
        (b"PROXY TCP4 1.2.3.4 nonsense\r\n".as_slice(), "malformed"),
        // A client that should have come through the balancer speaks FTP at once.
        (b"USER anonymous\r\n".as_slice(), "malformed"),
        // Slowloris: half a header, then nothing.
        (b"PROXY TCP4 198.51".as_slice(), "timeout"),
    ] {
        let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
        s.write_all(bytes).await.unwrap();
        let mut got = Vec::new();
        let n = tokio::time::timeout(
            inprocess::WAIT,
            tokio::io::AsyncReadExt::read_to_end(&mut s, &mut got),
        )
        .await
        .expect("closed within the header timeout")
        .unwrap_or(0);
        assert_eq!(
            n,
            0,
            "{result}: no reply at all, got {:?}",
            String::from_utf8_lossy(&got)
        );
        assert!(headers(&proxy, "control", result) > 0, "{result}");
    }
    assert_eq!(picks(&proxy), 0, "no backend was chosen");
    assert!(mock.received().is_empty(), "the backend never heard a byte");
}

#[tokio::test]
async fn backend_control_and_data_connections_open_with_a_header_naming_the_client() {
    let mock = MockFtp::start(MockOptions::default()).await;
    let proxy = start_proxy(vec![mock.addr], |c| {
        c.backend_proxy_protocol = Some(ProxyVersion::V1);
        c.backend_proxy_protocol_data = true;
    })
    .await;
    // The client comes from 127.0.0.9 (loopback is a /8): that is what the headers name.
    let client_ip: IpAddr = "127.0.0.9".parse().unwrap();
    let s = connect_from(client_ip, proxy.addr).await.unwrap();
    let client_port = s.local_addr().unwrap().port();
    let mut c = Client::from_stream(s);
    assert!(c.reply().await.starts_with("220"));
    assert!(c.cmd("USER u").await.starts_with("331"));
    assert!(c.cmd("PASS p").await.starts_with("230"));
    let data = c.epsv().await;
    let mut d = connect_from(client_ip, data).await.unwrap();
    let data_port = d.local_addr().unwrap().port();
    c.send(b"STOR up.bin\r\n").await;
    assert!(c.reply().await.starts_with("150"));
    let body = inprocess::pattern(50_000);
    d.write_all(&body).await.unwrap();
    drop(d);
    assert!(c.reply().await.starts_with("226"));
    // (Health checks open with `PROXY UNKNOWN`; the session's header names the client.)
    let control_header = mock
        .received()
        .iter()
        .map(|l| String::from_utf8_lossy(l).to_string())
        .find(|l| l.starts_with("PROXY TCP4"))
        .expect("a header on the session's control connection");
    assert_eq!(
        control_header,
        format!(
            "PROXY TCP4 127.0.0.9 127.0.0.1 {client_port} {}\r\n",
            proxy.addr.port()
        )
    );
    // The backend's data port received the header, then exactly the file.
    let stored = mock.file("up.bin").unwrap();
    let line_end = stored.iter().position(|&b| b == b'\n').unwrap() + 1;
    let data_header = String::from_utf8_lossy(&stored[..line_end]).to_string();
    assert!(
        data_header.starts_with(&format!("PROXY TCP4 127.0.0.9 127.0.0.1 {data_port} ")),
        "{data_header}"
    );
    assert!(
        stored[line_end..] == body[..],
        "data after the header is the file"
    );
}

#[tokio::test]
async fn source_ip_balancing_keys_on_the_proxy_header_source() {
    use ftpgate::farm::policy::hrw_score;
    let ms = mocks(2).await;
    let backends: Vec<BackendSpec> = ms.iter().map(|m| spec(m.addr, 1, false)).collect();
    let proxy = start_proxy(Vec::new(), move |c| {
        c.backends = backends;
        c.balance = BalancePolicy::SourceIp;
        c.proxy_protocol.accept_from = vec!["127.0.0.1/32".parse().unwrap()];
    })
    .await;
    let front: SocketAddr = "203.0.113.1:21".parse().unwrap();
    // Every connection comes from the balancer (127.0.0.1); only the headers differ.
    for i in 0..20u8 {
        let client = SocketAddr::from(([198, 51, 100, i + 1], 40000));
        let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
        s.write_all(&encode_proxy_header(ProxyVersion::V2, client, front))
            .await
            .unwrap();
        let mut c = Client::from_stream(s);
        assert!(c.reply().await.starts_with("220"));
        let user = format!("c{i}");
        assert!(c.cmd(&format!("USER {user}")).await.starts_with("331"));
        c.quit().await;
        let key = client.ip().to_string();
        let want = if hrw_score(&key, ms[0].addr, 1) > hrw_score(&key, ms[1].addr, 1) {
            0
        } else {
            1
        };
        assert!(
            ms[want].users().contains(&user),
            "client {client} on its hashed server"
        );
    }
    assert!(
        ms.iter().all(|m| !m.users().is_empty()),
        "the headers spread the clients"
    );
}

/// An IPv6 server that refuses `EPSV` and names an unreachable IPv4 address in its
/// `227` (all a `227` can name): the login check lists through the `227`'s port on the
/// control connection's IPv6 address.
#[tokio::test]
async fn login_check_falls_back_to_pasv_over_ipv6() {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let Ok(l) = TcpListener::bind("[::1]:0").await else {
        eprintln!("SKIPPED: no IPv6 loopback");
        return;
    };
    let addr = l.local_addr().unwrap();
    let data = TcpListener::bind("[::1]:0").await.unwrap();
    let port = data.local_addr().unwrap().port();
    let listed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen = std::sync::Arc::clone(&listed);
    tokio::spawn(async move {
        let (s, _) = l.accept().await.unwrap();
        let (r, mut w) = s.into_split();
        let mut r = BufReader::new(r);
        w.write_all(b"220 v6 only\r\n").await.unwrap();
        let mut line = String::new();
        while r.read_line(&mut line).await.unwrap_or(0) > 0 {
            let verb = line
                .split_whitespace()
                .next()
                .unwrap_or("")
                .to_ascii_uppercase();
            let reply = match verb.as_str() {
                "USER" => "331 password\r\n".to_string(),
                "PASS" => "230 in\r\n".to_string(),
                "EPSV" => "500 EPSV not understood\r\n".to_string(),
                "PASV" => format!(
                    "227 Entering Passive Mode (10,9,8,7,{},{})\r\n",
                    port >> 8,
                    port & 0xff
                ),
                "LIST" => {
                    w.write_all(b"150 here\r\n").await.unwrap();
                    let (mut d, _) = data.accept().await.unwrap();
                    d.write_all(b"-rw-r--r-- 1 ftp ftp 0 Jan 1 00:00 x\r\n")
                        .await
                        .unwrap();
                    drop(d);
                    seen.store(true, std::sync::atomic::Ordering::SeqCst);
                    "226 done\r\n".to_string()
                }
                _ => "221 bye\r\n".to_string(),
            };
            w.write_all(reply.as_bytes()).await.unwrap();
            line.clear();
        }
    });
    check_once(addr, &health(CheckKind::Login), Duration::from_secs(2))
        .await
        .unwrap();
    assert!(listed.load(std::sync::atomic::Ordering::SeqCst));
}
