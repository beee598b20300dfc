//! The admin listener in-process: `/metrics` around real transfers through ftpgate to a
//! mock FTP server (byte counters move by exactly the bytes relayed, the session gauge
//! returns to 0, refusals are counted), `/healthz` and `/readyz`, `promtool check
//! metrics` on the exposition, and a real Prometheus server scraping it.
//!
//! promtool and prometheus come from Debian's `prometheus` package
//! (scripts/install-test-deps.sh). Without them the tests that need them are skipped
//! with a message, and fail when `CI` is set.

#[path = "common/inprocess.rs"]
#[allow(dead_code)] // shared with tests that use other parts of it
mod inprocess;
#[path = "common/mock_ftp.rs"]
#[allow(dead_code)] // shared with tests that use more of it
mod mock_ftp;

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use inprocess::{connect_from, dead_addr, pattern, read_all, start_proxy, Client, Proxy, WAIT};
use mock_ftp::{MockFtp, MockOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Prometheus needs to start, scrape (1 s interval) and index; generous for 2-core CI.
const PROMETHEUS_WAIT: Duration = Duration::from_secs(60);
/// Between polls of something that changes asynchronously.
const POLL: Duration = Duration::from_millis(20);

/// A gateway with its admin listener on port 0. Each test gets its own data-port range
/// so parallel tests never contend for a port (which would be refused and counted).
async fn start_admin_proxy(backends: Vec<SocketAddr>, data_ports: &str) -> Proxy {
    let p = start_proxy(backends, |c| {
        c.data_ports = data_ports.parse().unwrap();
        c.admin.listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    assert_ne!(p.admin.expect("admin listener bound").port(), 0);
    p
}

/// The admin address of a proxy started by [`start_admin_proxy`].
fn admin(p: &Proxy) -> SocketAddr {
    p.admin.expect("admin listener bound")
}

/// A minimal HTTP/1.0 GET (the server closes after the response): status and body.
async fn http_get(addr: SocketAddr, path_and_query: &str) -> (u16, String) {
    http_request(addr, "GET", path_and_query).await
}

async fn http_request(addr: SocketAddr, method: &str, path_and_query: &str) -> (u16, String) {
    let exchange = async {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(
            format!("{method} {path_and_query} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes(),
        )
        .await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        std::io::Result::Ok(buf)
    };
    let raw = tokio::time::timeout(WAIT, exchange)
        .await
        .expect("HTTP response within bound")
        .expect("HTTP exchange");
    let text = String::from_utf8(raw).expect("UTF-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("header/body separator");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status line");
    (status, body.to_string())
}

async fn scrape(admin: SocketAddr) -> String {
    let (status, body) = http_get(admin, "/metrics").await;
    assert_eq!(status, 200, "{body}");
    body
}

/// The value of one series (`name{labels}` exactly as ftpgate writes it), if present.
fn sample(exposition: &str, series: &str) -> Option<f64> {
    exposition.lines().find_map(|l| {
        let rest = l.strip_prefix(series)?.strip_prefix(' ')?;
        rest.trim().parse().ok()
    })
}

/// Polls `/metrics` until `series` has value `want`; panics with the last value.
async fn wait_for_sample(admin: SocketAddr, series: &str, want: f64) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let text = scrape(admin).await;
        let got = sample(&text, series);
        if got == Some(want) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{series} is {got:?}, expected {want}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// A minimal FTP client that reads whole (multi-line) replies.
/// A download and an upload through ftpgate, then QUIT: the mock's side of it.
async fn move_files(proxy: &Proxy, mock: &MockFtp, down: usize, up: usize) {
    mock.put_file("down.bin", pattern(down));
    let mut c = Client::login(proxy.addr).await;
    let data = TcpStream::connect(c.epsv().await).await.unwrap();
    c.send(b"RETR down.bin\r\n").await;
    assert!(c.reply().await.starts_with("150"));
    assert_eq!(read_all(data).await, pattern(down));
    assert!(c.reply().await.starts_with("226"));
    let mut data = TcpStream::connect(c.epsv().await).await.unwrap();
    c.send(b"STOR up.bin\r\n").await;
    assert!(c.reply().await.starts_with("150"));
    data.write_all(&pattern(up).iter().rev().copied().collect::<Vec<_>>())
        .await
        .unwrap();
    data.shutdown().await.unwrap();
    drop(data);
    assert!(c.reply().await.starts_with("226"));
    c.quit().await;
}

/// Finds a tool on PATH; `None` (after saying so) when absent outside CI.
fn tool_or_skip(name: &str, test: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{name} not found on PATH but CI is set: run scripts/install-test-deps.sh \
             (Debian package prometheus)"
        );
        eprintln!("SKIPPED {test}: {name} not found (Debian package prometheus)");
    }
    found
}

#[tokio::test]
async fn byte_counters_grow_by_exactly_the_bytes_moved_and_sessions_return_to_zero() {
    let mock = MockFtp::start(MockOptions::default()).await;
    let proxy = start_admin_proxy(vec![mock.addr], "42000-42099").await;
    let down_series = r#"ftpgate_data_bytes_total{direction="backend_to_client"}"#;
    let up_series = r#"ftpgate_data_bytes_total{direction="client_to_backend"}"#;
    let before = scrape(admin(&proxy)).await;
    // Pre-created at 0, so the first scrape already has the series.
    assert_eq!(sample(&before, down_series), Some(0.0));
    assert_eq!(sample(&before, up_series), Some(0.0));
    assert_eq!(sample(&before, "ftpgate_sessions_active"), Some(0.0));

    let (down, up) = (300_017, 123_457);
    mock.put_file("down.bin", pattern(down));
    let mut c = Client::login(proxy.addr).await;
    let during = scrape(admin(&proxy)).await;
    assert_eq!(sample(&during, "ftpgate_sessions_active"), Some(1.0));

    let data = TcpStream::connect(c.epsv().await).await.unwrap();
    c.send(b"RETR down.bin\r\n").await;
    assert!(c.reply().await.starts_with("150"));
    assert_eq!(read_all(data).await, pattern(down));
    assert!(c.reply().await.starts_with("226"));
    // The relay counts when both directions have closed, which may be just after 226.
    let after_down = wait_for_sample(admin(&proxy), down_series, down as f64).await;
    assert_eq!(sample(&after_down, up_series), Some(0.0));

    let body = pattern(up);
    let mut data = TcpStream::connect(c.epsv().await).await.unwrap();
    c.send(b"STOR up.bin\r\n").await;
    assert!(c.reply().await.starts_with("150"));
    data.write_all(&body).await.unwrap();
    data.shutdown().await.unwrap();
    drop(data);
    assert!(c.reply().await.starts_with("226"));
    let after_up = wait_for_sample(admin(&proxy), up_series, up as f64).await;
    assert_eq!(sample(&after_up, down_series), Some(down as f64));
    assert_eq!(mock.file("up.bin"), Some(body));
    for direction in ["download", "upload"] {
        // The exposition sorts labels by name. The session counts a transfer when its
        // relay reports back, which may trail the 226.
        let series =
            format!(r#"ftpgate_data_connections_total{{direction="{direction}",mode="passive"}}"#);
        wait_for_sample(admin(&proxy), &series, 1.0).await;
    }
    // A second client, then both leave: the gauge returns to 0.
    let second = Client::login(proxy.addr).await;
    wait_for_sample(admin(&proxy), "ftpgate_sessions_active", 2.0).await;
    c.quit().await;
    second.quit().await;
    let end = wait_for_sample(admin(&proxy), "ftpgate_sessions_active", 0.0).await;
    assert_eq!(
        sample(&end, r#"ftpgate_sessions_total{outcome="closed"}"#),
        Some(2.0)
    );
    assert_eq!(sample(&end, down_series), Some(down as f64));
    assert_eq!(sample(&end, up_series), Some(up as f64));
    let backend_series = format!(
        r#"ftpgate_backend_sessions_active{{backend="{}"}}"#,
        mock.addr
    );
    assert_eq!(sample(&end, &backend_series), Some(0.0));
}

#[tokio::test]
async fn foreign_data_peer_is_counted_as_a_refusal() {
    let mock = MockFtp::start(MockOptions::default()).await;
    mock.put_file("secret.bin", pattern(50_000));
    let proxy = start_admin_proxy(vec![mock.addr], "42100-42199").await;
    let series = r#"ftpgate_refusals_total{reason="foreign_data_peer"}"#;
    assert_eq!(sample(&scrape(admin(&proxy)).await, series), Some(0.0));
    let mut c = Client::login(proxy.addr).await;
    let target = c.epsv().await;
    // The thief connects first, from another loopback address.
    let thief = connect_from("127.0.0.2".parse().unwrap(), target)
        .await
        .expect("tcp accept happens before the peer check");
    assert!(read_all(thief).await.is_empty(), "foreign host got data");
    wait_for_sample(admin(&proxy), series, 1.0).await;
    // The real client still gets its file.
    let data = TcpStream::connect(target).await.unwrap();
    c.send(b"RETR secret.bin\r\n").await;
    assert!(c.reply().await.starts_with("150"));
    assert_eq!(read_all(data).await, pattern(50_000));
    assert!(c.reply().await.starts_with("226"));
    c.quit().await;
    let text = wait_for_sample(admin(&proxy), "ftpgate_sessions_active", 0.0).await;
    assert_eq!(sample(&text, series), Some(1.0));
}

#[tokio::test]
async fn healthz_and_readyz_with_a_live_backend() {
    let mock = MockFtp::start(MockOptions::default()).await;
    let proxy = start_admin_proxy(vec![dead_addr(), mock.addr], "42200-42299").await;
    assert_eq!(
        http_get(admin(&proxy), "/healthz").await,
        (200, "ok\n".into())
    );
    // Ready once the first health check has found the live backend.
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, body) = http_get(admin(&proxy), "/readyz").await;
        if status == 200 {
            assert_eq!(body, "ok\n");
            break;
        }
        assert_eq!(status, 503, "{body}");
        assert!(Instant::now() < deadline, "never ready: {body}");
        tokio::time::sleep(POLL).await;
    }
    let up = format!(r#"ftpgate_backend_up{{backend="{}"}}"#, mock.addr);
    assert_eq!(sample(&scrape(admin(&proxy)).await, &up), Some(1.0));
    assert_eq!(http_get(admin(&proxy), "/nope").await.0, 404);
    assert_eq!(http_request(admin(&proxy), "POST", "/metrics").await.0, 405);
    // HEAD is answered without a body.
    let (status, body) = http_request(admin(&proxy), "HEAD", "/metrics").await;
    assert_eq!((status, body.as_str()), (200, ""));
}

#[tokio::test]
async fn readyz_is_503_with_a_reason_when_every_backend_is_dead() {
    let dead = [dead_addr(), dead_addr()];
    let proxy = start_admin_proxy(dead.to_vec(), "42300-42399").await;
    assert_eq!(http_get(admin(&proxy), "/healthz").await.0, 200);
    // Before serve() has marked the listeners serving the reason differs; wait for the
    // backend verdict.
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, body) = http_get(admin(&proxy), "/readyz").await;
        assert_eq!(status, 503, "{body}");
        if body.contains("no backend reachable (0 of 2 up)") {
            break;
        }
        assert!(Instant::now() < deadline, "unexpected reason: {body}");
        tokio::time::sleep(POLL).await;
    }
    let text = scrape(admin(&proxy)).await;
    for d in dead {
        let series = format!(r#"ftpgate_backend_up{{backend="{d}"}}"#);
        assert_eq!(sample(&text, &series), Some(0.0), "{series}");
    }
}

#[tokio::test]
async fn admin_listener_stops_with_the_shutdown_token() {
    let mock = MockFtp::start(MockOptions::default()).await;
    let proxy = start_admin_proxy(vec![mock.addr], "42400-42499").await;
    assert_eq!(http_get(admin(&proxy), "/healthz").await.0, 200);
    let admin = admin(&proxy);
    drop(proxy);
    let deadline = Instant::now() + WAIT;
    while TcpStream::connect(admin).await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "admin still accepting after shutdown"
        );
        tokio::time::sleep(POLL).await;
    }
}

#[tokio::test]
async fn promtool_accepts_the_exposition() {
    let Some(promtool) = tool_or_skip("promtool", "promtool_accepts_the_exposition") else {
        return;
    };
    let mock = MockFtp::start(MockOptions::default()).await;
    let proxy = start_admin_proxy(vec![mock.addr], "42500-42599").await;
    move_files(&proxy, &mock, 10_000, 20_000).await;
    let text = wait_for_sample(admin(&proxy), "ftpgate_sessions_active", 0.0).await;
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool starts");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n--- exposition ---\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Kills the child process when the test ends, however it ends.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Percent-encodes a PromQL query for a URL query string.
fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Runs one instant query; the `data.result` array.
async fn prom_query(prom: SocketAddr, query: &str) -> Vec<serde_json::Value> {
    let (status, body) =
        http_get(prom, &format!("/api/v1/query?query={}", url_encode(query))).await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON from Prometheus");
    v["data"]["result"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_server_scrapes_ftpgate() {
    let Some(prometheus) = tool_or_skip("prometheus", "prometheus_server_scrapes_ftpgate") else {
        return;
    };
    let mock = MockFtp::start(MockOptions::default()).await;
    let proxy = start_admin_proxy(vec![mock.addr], "42600-42699").await;
    move_files(&proxy, &mock, 4096, 8192).await;
    wait_for_sample(admin(&proxy), "ftpgate_sessions_active", 0.0).await;

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
             scrape_configs:\n  - job_name: ftpgate\n    static_configs:\n      \
             - targets: ['{}']\n",
            admin(&proxy)
        ),
    )
    .unwrap();
    // Prometheus takes an address, not a listener: pick a free port and release it.
    let prom_addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let log_path = dir.path().join("prometheus.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut server = KillOnDrop(
        Command::new(prometheus)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={prom_addr}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("prometheus starts"),
    );
    let log_text = || std::fs::read_to_string(&log_path).unwrap_or_default();

    let deadline = Instant::now() + PROMETHEUS_WAIT;
    // 1. The target is scraped and healthy.
    loop {
        if let Ok(Some(status)) = server.0.try_wait() {
            panic!("prometheus exited ({status}):\n{}", log_text());
        }
        if let Ok(Ok(mut s)) = tokio::time::timeout(WAIT, TcpStream::connect(prom_addr)).await {
            let _ = s.shutdown().await;
            let (status, body) = http_get(prom_addr, "/api/v1/targets").await;
            if status == 200 {
                let v: serde_json::Value = serde_json::from_str(&body).unwrap();
                let targets = v["data"]["activeTargets"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                let ours = targets.iter().find(|t| t["labels"]["job"] == "ftpgate");
                if let Some(t) = ours {
                    assert_ne!(t["health"], "down", "scrape failed: {t}");
                    if t["health"] == "up" {
                        break;
                    }
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "prometheus never scraped ftpgate:\n{}",
            log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // 2. The samples are queryable: `up` and a counter ftpgate moved.
    loop {
        let up = prom_query(prom_addr, r#"up{job="ftpgate"}"#).await;
        let closed = prom_query(prom_addr, r#"ftpgate_sessions_total{outcome="closed"}"#).await;
        let value = |r: &[serde_json::Value]| {
            r.first()
                .and_then(|s| s["value"][1].as_str().map(str::to_string))
        };
        if value(&up).as_deref() == Some("1") && value(&closed).as_deref() == Some("1") {
            let bytes = prom_query(
                prom_addr,
                r#"ftpgate_data_bytes_total{direction="client_to_backend"}"#,
            )
            .await;
            assert_eq!(value(&bytes).as_deref(), Some("8192"));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "queries never returned data: up={up:?} sessions={closed:?}\n{}",
            log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
