//! ftpgate in-process for integration tests: a gateway on port 0 with a caller-tweaked
//! config, a minimal FTP client that reads whole (multi-line) replies, and small
//! helpers. Loopback has a whole /8, so 127.0.0.2 plays a foreign host.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ftpgate::app::Gateway;
use ftpgate::config::Config;
use ftpgate::metrics::Metrics;
use ftpgate::protocol::addr::find_epsv_port;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpSocket, TcpStream};
use tokio_util::sync::CancellationToken;

/// Every wait on ftpgate in these tests is bounded by this.
pub const WAIT: Duration = Duration::from_secs(10);

pub struct Proxy {
    pub addr: SocketAddr,
    /// Every listener's address (`addr` first, then `listeners[]`).
    pub all_addrs: Vec<SocketAddr>,
    /// The admin listener, when the config asked for one.
    pub admin: Option<SocketAddr>,
    pub metrics: Arc<Metrics>,
    pub shutdown: CancellationToken,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A gateway on 127.0.0.1:0 in front of `backends`, announcing 127.0.0.1, data ports
/// 41000-41999 unless `tweak` says otherwise.
pub async fn start_proxy(backends: Vec<SocketAddr>, tweak: impl FnOnce(&mut Config)) -> Proxy {
    let mut cfg = Config {
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        backends: backends.into_iter().map(Into::into).collect(),
        public_address: vec!["127.0.0.1".parse().unwrap()],
        data_ports: "41000-41999".parse().unwrap(),
        ..Config::default()
    };
    tweak(&mut cfg);
    let cfg = cfg.validate().unwrap();
    let metrics = Arc::new(Metrics::new());
    let gw = Gateway::bind(cfg, Arc::clone(&metrics)).await.unwrap();
    let all_addrs = gw.local_addrs();
    let addr = all_addrs[0];
    let admin = gw.admin_addr();
    let shutdown = CancellationToken::new();
    tokio::spawn(gw.serve(shutdown.clone()));
    Proxy {
        addr,
        all_addrs,
        admin,
        metrics,
        shutdown,
    }
}

/// A minimal FTP client that reads whole (multi-line) replies.
pub struct Client {
    pub r: BufReader<OwnedReadHalf>,
    pub w: OwnedWriteHalf,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        let s = tokio::time::timeout(WAIT, TcpStream::connect(addr))
            .await
            .unwrap()
            .unwrap();
        Client::from_stream(s)
    }

    /// A client on a connection made elsewhere (e.g. from a chosen source address).
    pub fn from_stream(s: TcpStream) -> Client {
        let (r, w) = s.into_split();
        Client {
            r: BufReader::new(r),
            w,
        }
    }

    /// Reads one reply; returns its full text (all lines). Empty string on EOF.
    pub async fn reply(&mut self) -> String {
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
            let sep = l.as_bytes().get(3).copied();
            match &first_code {
                None if sep == Some(b'-') => first_code = Some(code),
                None => return all,
                Some(c) if *c == code && sep == Some(b' ') => return all,
                Some(_) => {}
            }
        }
    }

    pub async fn send(&mut self, raw: &[u8]) {
        self.w.write_all(raw).await.unwrap();
    }

    pub async fn cmd(&mut self, line: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes()).await;
        self.reply().await
    }

    pub async fn login(addr: SocketAddr) -> Client {
        let mut c = Client::connect(addr).await;
        assert!(c.reply().await.starts_with("220"));
        assert!(c.cmd("USER u").await.starts_with("331"));
        assert!(c.cmd("PASS secret").await.starts_with("230"));
        c
    }

    /// EPSV through ftpgate: the mapped data address on loopback.
    pub async fn epsv(&mut self) -> SocketAddr {
        let reply = self.cmd("EPSV").await;
        let port = find_epsv_port(reply.trim_end().as_bytes())
            .unwrap_or_else(|e| panic!("not a 229 ({e:?}): {reply}"))
            .port;
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    pub async fn quit(mut self) {
        assert!(self.cmd("QUIT").await.starts_with("221"));
    }
}

/// Connects to `to` from a chosen local address (127.0.0.2: the foreign host).
pub async fn connect_from(src: IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpSocket::new_v4()?;
    s.bind(SocketAddr::new(src, 0))?;
    tokio::time::timeout(WAIT, s.connect(to)).await?
}

/// Deterministic, position-dependent bytes.
pub fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 253) as u8).collect()
}

pub async fn read_all(mut s: TcpStream) -> Vec<u8> {
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap();
    buf
}

/// An address nothing listens on: bound once, then released.
pub fn dead_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// Waits (bounded by [`WAIT`]) until `cond` holds: for values that settle just after a
/// reply, such as byte counters booked when a data relay has wound down on both sides.
pub async fn eventually(what: &str, cond: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not within {WAIT:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
