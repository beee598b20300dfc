//! Production lifecycle in-process against the mock FTP server on loopback: graceful
//! drain (transfers finish, idle sessions get `421`, listeners close, `/readyz` says
//! draining, the drain timeout closes and counts leftovers) and the session limits
//! (per address, global, rate, data ports per session, pre-login floods). Loopback
//! has a whole /8, so 127.0.0.2 plays another client address.

#[path = "common/inprocess.rs"]
#[allow(dead_code)] // shared with tests that use other parts of it
mod inprocess;
#[path = "common/mock_ftp.rs"]
#[allow(dead_code)]
mod mock_ftp;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ftpgate::app::{Gateway, StopSignals};
use ftpgate::config::Config;
use ftpgate::metrics::Metrics;
use inprocess::{connect_from, pattern, read_all, Client, WAIT};
use mock_ftp::{MockFtp, MockOptions};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

struct Gw {
    addr: SocketAddr,
    admin: Option<SocketAddr>,
    metrics: Arc<Metrics>,
    signals: StopSignals,
    served: JoinHandle<()>,
}

impl Drop for Gw {
    fn drop(&mut self) {
        self.signals.stop.cancel();
    }
}

async fn start(backend: SocketAddr, data_ports: &str, tweak: impl FnOnce(&mut Config)) -> Gw {
    let mut cfg = Config {
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        backends: vec![backend.into()],
        public_address: vec!["127.0.0.1".parse().unwrap()],
        data_ports: data_ports.parse().unwrap(),
        ..Config::default()
    };
    tweak(&mut cfg);
    let metrics = Arc::new(Metrics::new());
    let gw = Gateway::bind(cfg.validate().unwrap(), Arc::clone(&metrics))
        .await
        .unwrap();
    let addr = gw.local_addrs()[0];
    let admin = gw.admin_addr();
    let signals = StopSignals::default();
    let served = tokio::spawn(gw.serve_until(signals.clone()));
    Gw {
        addr,
        admin,
        metrics,
        signals,
        served,
    }
}

fn sha(b: &[u8]) -> Vec<u8> {
    Sha256::digest(b).to_vec()
}

fn refusals(m: &Metrics, reason: &str) -> u64 {
    m.refusals_total.with_label_values(&[reason]).get()
}

async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = tokio::time::timeout(WAIT, TcpStream::connect(addr))
        .await
        .unwrap()
        .unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text.get(9..12).unwrap_or("0").parse().unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
    (status, body.to_string())
}

/// A client connected from `src` (127.0.0.2 plays another address).
async fn client_from(src: IpAddr, to: SocketAddr) -> Client {
    let s = connect_from(src, to).await.unwrap();
    let (r, w) = s.into_split();
    Client {
        r: BufReader::new(r),
        w,
    }
}

async fn connect_data(addr: SocketAddr) -> TcpStream {
    tokio::time::timeout(WAIT, TcpStream::connect(addr))
        .await
        .unwrap()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_finishes_transfers_closes_idle_at_once_and_stops_accepting() {
    let mock = MockFtp::start(MockOptions::default()).await;
    // Larger than every socket buffer on the way, so the download is still running
    // (the client has not read it) when the drain starts.
    let down = pattern(16 * 1024 * 1024 + 5);
    mock.put_file("big.bin", down.clone());
    mock.put_file("small.bin", pattern(1000));
    let mut gw = start(mock.addr, "41300-41349", |c| {
        c.admin.listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let admin = gw.admin.unwrap();

    let mut idle = Client::login(gw.addr).await;
    let mut downloader = Client::login(gw.addr).await;
    let d_addr = downloader.epsv().await;
    let d_data = connect_data(d_addr).await;
    downloader.send(b"RETR big.bin\r\n").await;
    assert!(downloader.reply().await.starts_with("150"));
    let mut uploader = Client::login(gw.addr).await;
    let u_addr = uploader.epsv().await;
    let mut u_data = connect_data(u_addr).await;
    uploader.send(b"STOR up.bin\r\n").await;
    assert!(uploader.reply().await.starts_with("150"));
    let up = pattern(3 * 1024 * 1024 + 11);
    u_data.write_all(&up[..1024 * 1024]).await.unwrap();
    // Got its 229 but has not sent RETR yet: a promise to honour.
    let mut pending = Client::login(gw.addr).await;
    let p_addr = pending.epsv().await;

    gw.signals.drain.cancel();

    // The idle session is told at once.
    let bye = idle.reply().await;
    assert!(bye.starts_with("421"), "idle session got {bye:?}");
    assert_eq!(idle.reply().await, "", "and closed");
    // Listeners are closed: a balancer's next connect goes elsewhere.
    let mut refused = false;
    for _ in 0..100 {
        if TcpStream::connect(gw.addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(refused, "new connections are refused while draining");
    let (status, body) = http_get(admin, "/readyz").await;
    assert_eq!((status, body.trim()), (503, "draining"));
    assert_eq!(http_get(admin, "/healthz").await.0, 200);
    assert_eq!(gw.metrics.draining.get(), 1);

    // The pending passive setup is honoured.
    let p_data = connect_data(p_addr).await;
    pending.send(b"RETR small.bin\r\n").await;
    assert!(pending.reply().await.starts_with("150"));
    assert_eq!(read_all(p_data).await, pattern(1000));
    assert!(pending.reply().await.starts_with("226"));
    assert!(pending.reply().await.starts_with("421"));

    // The transfers complete byte-exact, then 421.
    u_data.write_all(&up[1024 * 1024..]).await.unwrap();
    drop(u_data);
    assert!(uploader.reply().await.starts_with("226"));
    assert!(uploader.reply().await.starts_with("421"));
    assert_eq!(sha(&mock.file("up.bin").unwrap()), sha(&up));
    let got = read_all(d_data).await;
    assert_eq!(sha(&got), sha(&down), "download byte-exact");
    assert!(downloader.reply().await.starts_with("226"));
    assert!(downloader.reply().await.starts_with("421"));

    // The gateway returns once the last session has ended.
    tokio::time::timeout(WAIT, &mut gw.served)
        .await
        .unwrap()
        .unwrap();
    let drained = gw
        .metrics
        .sessions_total
        .with_label_values(&["drained"])
        .get();
    assert_eq!(drained, 4);
    assert_eq!(gw.metrics.drain_sessions_closed_total.get(), 0);
}

#[tokio::test]
async fn drain_timeout_closes_the_leftover_and_counts_it() {
    let mock = MockFtp::start(MockOptions::default()).await;
    let mut gw = start(mock.addr, "41350-41359", |c| {
        c.drain_timeout = Duration::from_millis(300);
    })
    .await;
    let mut stuck = Client::login(gw.addr).await;
    let addr = stuck.epsv().await;
    let _data = connect_data(addr).await;
    // The mock holds this transfer open until the data connection closes.
    stuck.send(b"RETR hold\r\n").await;
    assert!(stuck.reply().await.starts_with("150"));
    gw.signals.drain.cancel();
    let bye = stuck.reply().await;
    assert!(bye.starts_with("421"), "leftover closed with 421: {bye:?}");
    tokio::time::timeout(WAIT, &mut gw.served)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(gw.metrics.drain_sessions_closed_total.get(), 1);
}

#[tokio::test]
async fn sessions_per_address_cap_refuses_before_backend_and_serves_others() {
    let mock = MockFtp::start(MockOptions::default()).await;
    mock.put_file("f.bin", pattern(70_000));
    let gw = start(mock.addr, "41360-41369", |c| {
        c.limits.max_sessions_per_ip = 20;
    })
    .await;
    // Many idle pre-login connections from one address (slowloris-style).
    let mut idle = Vec::new();
    for _ in 0..20 {
        let mut c = Client::connect(gw.addr).await;
        assert!(c.reply().await.starts_with("220"));
        idle.push(c);
    }
    let greetings_before = mock.received().len();
    for _ in 0..10 {
        let mut c = Client::connect(gw.addr).await;
        let first = c.reply().await;
        // The first line is ftpgate's own: no backend greeting came before it.
        assert!(
            first.starts_with("421") && first.contains("your address"),
            "{first:?}"
        );
        assert_eq!(c.reply().await, "");
    }
    assert_eq!(refusals(&gw.metrics, "max_sessions_per_ip"), 10);
    // Another address is still served, transfer included.
    let mut other = client_from([127, 0, 0, 2].into(), gw.addr).await;
    assert!(other.reply().await.starts_with("220"));
    assert!(other.cmd("USER u").await.starts_with("331"));
    assert!(other.cmd("PASS p").await.starts_with("230"));
    let reply = other.cmd("EPSV").await;
    let port = ftpgate::protocol::addr::find_epsv_port(reply.trim_end().as_bytes())
        .unwrap()
        .port;
    let data = connect_from(
        [127, 0, 0, 2].into(),
        SocketAddr::from(([127, 0, 0, 1], port)),
    )
    .await
    .unwrap();
    other.send(b"RETR f.bin\r\n").await;
    assert!(other.reply().await.starts_with("150"));
    assert_eq!(read_all(data).await, pattern(70_000));
    assert!(other.reply().await.starts_with("226"));
    assert!(mock.received().len() > greetings_before);
    // Slots come back when sessions end.
    drop(idle);
    let mut again = None;
    for _ in 0..200 {
        let mut c = Client::connect(gw.addr).await;
        if c.reply().await.starts_with("220") {
            again = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        again.is_some(),
        "the address is served again once its sessions end"
    );
}

#[tokio::test]
async fn global_session_cap_refuses_with_421() {
    let mock = MockFtp::start(MockOptions::default()).await;
    let gw = start(mock.addr, "41370-41379", |c| {
        c.limits.max_sessions = 2;
    })
    .await;
    let _a = Client::login(gw.addr).await;
    let _b = Client::login(gw.addr).await;
    let mut c = client_from([127, 0, 0, 2].into(), gw.addr).await;
    let first = c.reply().await;
    assert!(first.starts_with("421 Too many sessions"), "{first:?}");
    assert_eq!(refusals(&gw.metrics, "max_sessions"), 1);
}

#[tokio::test]
async fn reconnect_storm_is_rate_limited_per_address() {
    let mock = MockFtp::start(MockOptions::default()).await;
    let gw = start(mock.addr, "41380-41389", |c| {
        // A rate so slow that no token comes back during the test.
        c.limits.new_sessions_per_ip = Some("1/h burst 3".parse().unwrap());
    })
    .await;
    for _ in 0..3 {
        let mut c = Client::connect(gw.addr).await;
        assert!(c.reply().await.starts_with("220"));
    }
    let mut c = Client::connect(gw.addr).await;
    let first = c.reply().await;
    assert!(
        first.starts_with("421") && first.contains("slow down"),
        "{first:?}"
    );
    assert_eq!(refusals(&gw.metrics, "session_rate"), 1);
    let mut other = client_from([127, 0, 0, 2].into(), gw.addr).await;
    assert!(
        other.reply().await.starts_with("220"),
        "buckets are per address"
    );
}

#[tokio::test]
async fn pasv_flood_from_one_session_leaves_the_pool_usable_for_others() {
    let mock = MockFtp::start(MockOptions {
        keep_pasv_listeners: 32,
        ..MockOptions::default()
    })
    .await;
    mock.put_file("f.bin", pattern(100_000));
    // Eight ports; one session may hold two.
    let gw = start(mock.addr, "41390-41397", |c| {
        c.limits.data_ports_per_session = 2;
        // Withdrawn listeners would otherwise wait this long for a client.
        c.timeouts.data_connect = Duration::from_secs(30);
    })
    .await;
    let mut flood = Client::login(gw.addr).await;
    // First the hard case: connect to every port offered and never transfer, so no
    // mapping is unused and withdrawal alone would free nothing.
    let mut squatted = Vec::new();
    for _ in 0..20 {
        let r = flood.cmd("PASV").await;
        if let Ok(t) = ftpgate::protocol::addr::find_pasv_tuple(r.trim_end().as_bytes()) {
            squatted.push(connect_data(SocketAddr::V4(t.addr)).await);
        } else {
            assert!(r.starts_with("425"), "{r:?}");
        }
    }
    let (mut ok, mut refused) = (0u32, 0u32);
    // 10 000 PASV in pipelined batches (the client never connects).
    for _ in 0..(10_000 / 50) {
        flood.send("PASV\r\n".repeat(50).as_bytes()).await;
        for _ in 0..50 {
            let r = flood.reply().await;
            if r.starts_with("227") {
                ok += 1;
            } else {
                assert!(r.starts_with("425"), "{r:?}");
                refused += 1;
            }
        }
        assert!(
            gw.metrics.data_ports_in_use.get() <= 2,
            "one session holds at most its share"
        );
    }
    assert_eq!(ok + refused, 10_000);
    // Another session still gets a port and a byte-exact transfer.
    let mut other = Client::login(gw.addr).await;
    let addr = other.epsv().await;
    let data = connect_data(addr).await;
    other.send(b"RETR f.bin\r\n").await;
    assert!(other.reply().await.starts_with("150"));
    assert_eq!(read_all(data).await, pattern(100_000));
    assert!(other.reply().await.starts_with("226"));
    assert!(refusals(&gw.metrics, "data_ports_per_session") > 0);
    drop((flood, squatted));
}

#[tokio::test]
async fn prelogin_byte_budget_closes_a_chatty_unauthenticated_client() {
    let mock = MockFtp::start(MockOptions::default()).await;
    let gw = start(mock.addr, "41398-41399", |c| {
        c.limits.prelogin_bytes = 4096;
    })
    .await;
    let mut c = Client::connect(gw.addr).await;
    assert!(c.reply().await.starts_with("220"));
    let mut closed = false;
    for _ in 0..1000 {
        let r = c.cmd("NOOP").await;
        if r.starts_with("421") {
            closed = true;
            break;
        }
        assert!(r.starts_with("200"), "{r:?}");
    }
    assert!(closed, "421 once the pre-login budget is spent");
    assert_eq!(refusals(&gw.metrics, "prelogin_bytes"), 1);
    // A client that logs in is not affected.
    let mut ok = Client::login(gw.addr).await;
    for _ in 0..1000 {
        assert!(ok.cmd("NOOP").await.starts_with("200"));
    }
}

// ----- reload -----

fn write_config(path: &std::path::Path, backend: SocketAddr, extra: &str) {
    std::fs::write(
        path,
        format!(
            "listen: [\"127.0.0.1:0\"]\nbackends: [\"{backend}\"]\npublic_address: [127.0.0.1]\n\
             data_ports: 41430-41449\nadmin:\n  listen: 127.0.0.1:0\n{extra}"
        ),
    )
    .unwrap();
}

async fn post(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text.get(9..12).unwrap_or("0").parse().unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
    (status, body.to_string())
}

/// ftpgate in-process from a configuration file, with the reloader `SIGHUP` uses.
struct Reloadable {
    /// The first listener.
    addr: SocketAddr,
    admin: SocketAddr,
    metrics: Arc<Metrics>,
    reloader: Arc<ftpgate::reload::Reloader>,
    listeners: Arc<ftpgate::listeners::ListenerSet>,
    _stop: tokio_util::sync::DropGuard,
}

impl Reloadable {
    async fn start(file: &std::path::Path) -> Reloadable {
        let args = ftpgate::cli::RunArgs {
            config: Some(file.to_path_buf()),
            ..Default::default()
        };
        let cfg = args.resolve().unwrap().config.validate().unwrap();
        let metrics = Arc::new(Metrics::new());
        let gw = Gateway::bind(cfg, Arc::clone(&metrics)).await.unwrap();
        let listeners = gw.listener_set();
        let addr = listeners.local_addrs()[0];
        let admin = gw.admin_addr().unwrap();
        let args = Arc::new(args);
        let reloader = gw.reloader(Some(Box::new(move || args.resolve())), None);
        let signals = StopSignals::default();
        let stop = signals.stop.clone().drop_guard();
        tokio::spawn(gw.serve_until(signals));
        Reloadable {
            addr,
            admin,
            metrics,
            reloader,
            listeners,
            _stop: stop,
        }
    }
}

/// Whether the mock saw a login (its record of command lines).
fn saw_login(mock: &MockFtp) -> bool {
    mock.received().iter().any(|l| l.starts_with(b"USER"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_moves_new_sessions_to_the_new_backend_and_keeps_running_transfers() {
    let old = MockFtp::start(MockOptions::default()).await;
    let new = MockFtp::start(MockOptions::default()).await;
    let body = pattern(8 * 1024 * 1024 + 3);
    old.put_file("big.bin", body.clone());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ftpgate.yaml");
    write_config(&file, old.addr, "");
    let gw = Reloadable::start(&file).await;
    let (addr, admin, metrics, reloader) = (gw.addr, gw.admin, &gw.metrics, &gw.reloader);

    let mut running = Client::login(addr).await;
    let data_addr = running.epsv().await;
    let data = connect_data(data_addr).await;
    running.send(b"RETR big.bin\r\n").await;
    assert!(running.reply().await.starts_with("150"));

    // Every backend replaced, through SIGHUP's code path.
    write_config(&file, new.addr, "");
    assert_eq!(reloader.reload().unwrap(), Vec::<&str>::new());
    assert!(!saw_login(&new));
    let fresh = Client::login(addr).await;
    assert!(saw_login(&new), "a new session goes to the new backend");
    fresh.quit().await;

    // An invalid file changes nothing; the error names the key.
    write_config(&file, old.addr, "timeouts:\n  login: 0s\n");
    let (status, answer) = post(admin, "/reload").await;
    assert_eq!(status, 422, "{answer}");
    assert!(answer.contains("timeouts.login"), "{answer}");
    let invalid = metrics.config_reload_total.with_label_values(&["invalid"]);
    assert_eq!(invalid.get(), 1);
    let logins_at_old = old
        .received()
        .iter()
        .filter(|l| l.starts_with(b"USER"))
        .count();
    Client::login(addr).await.quit().await;
    assert_eq!(
        old.received()
            .iter()
            .filter(|l| l.starts_with(b"USER"))
            .count(),
        logins_at_old,
        "the invalid file's backend was not applied"
    );

    // A restart-only key is named and kept; the rest applies.
    write_config(&file, new.addr, "worker_threads: 3\n");
    let (status, answer) = post(admin, "/reload").await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains("worker_threads"), "{answer}");
    assert_eq!(
        metrics.config_reload_total.with_label_values(&["ok"]).get(),
        2
    );

    // The transfer that started before all this completes byte-exact.
    let got = read_all(data).await;
    assert_eq!(sha(&got), sha(&body));
    assert!(running.reply().await.starts_with("226"));
    running.quit().await;
}

fn write_listeners_config(
    path: &std::path::Path,
    backend: SocketAddr,
    listen: &[&str],
    ports: &str,
) {
    let listen: Vec<String> = listen.iter().map(|l| format!("\"{l}\"")).collect();
    std::fs::write(
        path,
        format!(
            "listen: [{}]\nbackends: [\"{backend}\"]\npublic_address: [127.0.0.1]\n\
             data_ports: {ports}\nadmin:\n  listen: 127.0.0.1:0\n",
            listen.join(", ")
        ),
    )
    .unwrap();
}

/// The data port a `227` through ftpgate names.
async fn pasv_port(c: &mut Client) -> u16 {
    let reply = c.cmd("PASV").await;
    ftpgate::protocol::addr::find_pasv_tuple(reply.trim_end().as_bytes())
        .unwrap_or_else(|e| panic!("not a 227 ({e:?}): {reply}"))
        .addr
        .port()
}

/// A reload changes listeners and the data-port range live (a Kubernetes rollout that
/// moves the FTP port, a firewall change that moves the passive range): a listener
/// added by `POST /reload` serves at once while the old one still does; one removed
/// by the `SIGHUP` path closes while the session it accepted finishes its transfer,
/// announced in the old range, byte-exact; new `227`s name the new range, and the
/// port gauges count the new range only once the old lease is back. A listener that
/// cannot be bound (its address held elsewhere) keeps the old set; the rest applies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_adds_and_removes_listeners_and_moves_the_data_port_range() {
    let mock = MockFtp::start(MockOptions::default()).await;
    let body = pattern(4 * 1024 * 1024 + 5);
    mock.put_file("big.bin", body.clone());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ftpgate.yaml");
    let write =
        |listen: &[&str], ports: &str| write_listeners_config(&file, mock.addr, listen, ports);
    write(&["127.0.0.1:0"], "41480-41489");
    let gw = Reloadable::start(&file).await;
    let (first, admin, metrics, reloader) = (gw.addr, gw.admin, &gw.metrics, &gw.reloader);
    let set = &gw.listeners;
    let old_range = 41480..=41489;
    let new_range = 41490..=41499;

    // A transfer announced in the old range, running across the reloads below.
    let mut running = Client::login(first).await;
    let data_addr = running.epsv().await;
    assert!(old_range.contains(&data_addr.port()), "{data_addr}");
    let data = connect_data(data_addr).await;
    running.send(b"RETR big.bin\r\n").await;
    assert!(running.reply().await.starts_with("150"));

    // POST /reload: a second listener, and the range moves.
    write(&["127.0.0.1:0", "127.0.0.5:0"], "41490-41499");
    let (status, answer) = post(admin, "/reload").await;
    assert_eq!((status, answer.as_str()), (200, "reloaded\n"));
    let addrs = set.local_addrs();
    assert_eq!(addrs.len(), 2, "{addrs:?}");
    assert_eq!(addrs[0], first, "a kept listener keeps its socket");
    let added = addrs[1];
    assert_eq!(added.ip(), IpAddr::from([127, 0, 0, 5]));
    for at in [first, added] {
        let mut c = Client::login(at).await;
        let port = pasv_port(&mut c).await;
        assert!(new_range.contains(&port), "{at}: 227 names {port}");
        c.quit().await;
    }

    // SIGHUP's code path: the first listener goes.
    write(&["127.0.0.5:0"], "41490-41499");
    assert_eq!(reloader.reload().unwrap(), Vec::<&str>::new());
    assert_eq!(set.local_addrs(), vec![added]);
    inprocess::eventually("the removed listener refuses", || {
        std::net::TcpStream::connect_timeout(&first, Duration::from_secs(1)).is_err()
    })
    .await;
    Client::login(added).await.quit().await;

    // The session accepted on the removed listener carries on: its transfer, in the
    // old range, completes, and it takes further commands.
    let got = read_all(data).await;
    assert_eq!(sha(&got), sha(&body));
    assert!(running.reply().await.starts_with("226"));
    assert!(running.cmd("NOOP").await.starts_with("200"));
    running.quit().await;
    inprocess::eventually("gauges: the new range free, nothing leased", || {
        (
            metrics.data_ports_in_use.get(),
            metrics.data_ports_free.get(),
        ) == (0, 10)
    })
    .await;

    // An address held elsewhere: the listeners stay as they are (the key is named),
    // the new range applies.
    let held = std::net::TcpListener::bind("127.0.0.6:0").unwrap();
    let held_at = held.local_addr().unwrap().to_string();
    write(&["127.0.0.5:0", "127.0.0.7:0", &held_at], "41480-41489");
    assert_eq!(reloader.reload().unwrap(), vec!["listen"]);
    assert_eq!(set.local_addrs(), vec![added]);
    let mut c = Client::login(added).await;
    let port = pasv_port(&mut c).await;
    assert!(old_range.contains(&port), "227 names {port}");
    c.quit().await;
}

// ----- the binary: signals, pid file, exit status -----

struct Proc {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    fn start(args: &[&str]) -> (Proc, SocketAddr) {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ftpgate"))
            .args(args)
            .env_remove("RUST_LOG")
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut p = Proc { child, lines: rx };
        let ready = p.wait_line("ftpgate ready");
        let listeners = ready.split("listeners=[").nth(1).unwrap();
        let addr = listeners.split(']').next().unwrap().parse().unwrap();
        (p, addr)
    }

    /// The next log line containing `needle` (bounded by [`WAIT`]).
    fn wait_line(&mut self, needle: &str) -> String {
        let until = std::time::Instant::now() + WAIT;
        loop {
            let left = until.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.contains(needle) => return l,
                Ok(_) => {}
                Err(e) => panic!("no log line with {needle:?}: {e}"),
            }
        }
    }

    #[allow(unsafe_code)] // kill(2) on our own child: no safe wrapper in std.
    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child.
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, sig) }, 0);
    }

    /// The exit status, waiting at most [`WAIT`].
    async fn exit_status(&mut self) -> std::process::ExitStatus {
        let until = std::time::Instant::now() + WAIT;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(std::time::Instant::now() < until, "process did not exit");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_sighup_reloads_and_the_process_exits_zero() {
    let old = MockFtp::start(MockOptions::default()).await;
    let new = MockFtp::start(MockOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ftpgate.yaml");
    let pid = dir.path().join("ftpgate.pid");
    write_config(&file, old.addr, "");
    let (mut p, addr) = Proc::start(&[
        "run",
        "--config",
        file.to_str().unwrap(),
        "--pid-file",
        pid.to_str().unwrap(),
    ]);
    assert_eq!(
        std::fs::read_to_string(&pid).unwrap().trim(),
        p.child.id().to_string()
    );
    let mut busy = Client::login(addr).await;
    let data_addr = busy.epsv().await;
    let data = connect_data(data_addr).await;
    busy.send(b"RETR hold\r\n").await;
    assert!(busy.reply().await.starts_with("150"));

    // `ftpgate reload --pid-file` (SIGHUP) moves new sessions to the new backend.
    write_config(&file, new.addr, "");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ftpgate"))
        .args(["reload", "--pid-file", pid.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    p.wait_line("configuration reloaded");
    let mut idle = Client::login(addr).await;
    assert!(saw_login(&new));

    p.signal(libc::SIGTERM);
    assert!(
        idle.reply().await.starts_with("421"),
        "idle session told at once"
    );
    assert!(
        p.child.try_wait().unwrap().is_none(),
        "the running transfer holds the process"
    );
    // The transfer ends (the mock answers 426 when its data connection closes).
    drop(data);
    assert!(busy.reply().await.starts_with("426"));
    assert!(busy.reply().await.starts_with("421"));
    assert!(
        p.exit_status().await.success(),
        "exit 0 after the last session"
    );
    assert!(!pid.exists(), "pid file removed at exit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_sigterm_stops_at_once() {
    let mock = MockFtp::start(MockOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ftpgate.yaml");
    write_config(&file, mock.addr, "");
    let (mut p, addr) = Proc::start(&["run", "--config", file.to_str().unwrap()]);
    let mut busy = Client::login(addr).await;
    let data_addr = busy.epsv().await;
    let _data = connect_data(data_addr).await;
    busy.send(b"RETR hold\r\n").await;
    assert!(busy.reply().await.starts_with("150"));
    p.signal(libc::SIGTERM);
    p.wait_line("draining");
    p.signal(libc::SIGTERM);
    assert!(busy.reply().await.starts_with("421"));
    assert!(p.exit_status().await.success());
}
