//! A scriptable FTP server for in-process tests: enough of RFC 959 to log in, open
//! passive data connections and move files, and a record of every byte it received
//! so tests can assert what ftpgate forwarded. Real daemons are tested end to end.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// How the mock words its passive replies; `{tuple}` / `{port}` are substituted.
#[derive(Clone)]
pub struct MockOptions {
    pub pasv_reply: String,
    pub epsv_reply: String,
    /// Address named in 227 (the mock really listens on 127.0.0.1).
    pub pasv_ip: [u8; 4],
    /// Answer NOOP while a transfer runs (as proftpd does) instead of after it (vsftpd).
    pub noop_during_transfer: bool,
    /// Keep up to this many old passive listeners open for the connection's life
    /// instead of dropping the previous one at the next PASV (servers that time
    /// listeners out themselves): data connections to old ports stay established.
    pub keep_pasv_listeners: usize,
}

impl Default for MockOptions {
    fn default() -> Self {
        MockOptions {
            pasv_reply: "227 Entering Passive Mode ({tuple}).".into(),
            epsv_reply: "229 Entering Extended Passive Mode (|||{port}|)".into(),
            pasv_ip: [127, 0, 0, 1],
            noop_during_transfer: false,
            keep_pasv_listeners: 0,
        }
    }
}

#[derive(Default)]
pub struct MockState {
    /// Every raw command line received, terminator included, per connection in order.
    pub received: Vec<Vec<u8>>,
    pub files: HashMap<String, Vec<u8>>,
    /// Peer addresses of data connections the mock accepted.
    pub data_peers: Vec<SocketAddr>,
    /// Addresses the mock connected to for active-mode transfers.
    pub active_targets: Vec<SocketAddr>,
}

pub struct MockFtp {
    pub addr: SocketAddr,
    pub state: Arc<Mutex<MockState>>,
    accept: tokio::task::AbortHandle,
}

impl MockFtp {
    pub async fn start(opts: MockOptions) -> MockFtp {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(MockState::default()));
        let st = Arc::clone(&state);
        let accept = tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                tokio::spawn(control(s, Arc::clone(&st), opts.clone()));
            }
        })
        .abort_handle();
        MockFtp {
            addr,
            state,
            accept,
        }
    }

    /// Stops accepting (the listener closes: new connections are refused); sessions
    /// already open keep running.
    pub async fn stop(&self) {
        self.accept.abort();
        // The abort lands at the task's next poll; wait until the port refuses.
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while TcpStream::connect(self.addr).await.is_ok() {
            assert!(tokio::time::Instant::now() < deadline, "mock never stopped");
            tokio::task::yield_now().await;
        }
    }

    /// The user names this server was sent, in order.
    pub fn users(&self) -> Vec<String> {
        self.received()
            .iter()
            .filter_map(|l| {
                let t = String::from_utf8_lossy(l);
                t.strip_prefix("USER ").map(|u| u.trim_end().to_string())
            })
            .collect()
    }

    pub fn put_file(&self, name: &str, data: Vec<u8>) {
        self.state.lock().unwrap().files.insert(name.into(), data);
    }

    pub fn file(&self, name: &str) -> Option<Vec<u8>> {
        self.state.lock().unwrap().files.get(name).cloned()
    }

    pub fn received(&self) -> Vec<Vec<u8>> {
        self.state.lock().unwrap().received.clone()
    }
}

async fn control(stream: TcpStream, state: Arc<Mutex<MockState>>, opts: MockOptions) {
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    w.write_all(b"220 mock ready\r\n").await.unwrap();
    let mut data: Option<DataSource> = None;
    let mut kept: Vec<DataSource> = Vec::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        if r.read_until(b'\n', &mut line).await.unwrap_or(0) == 0 {
            return;
        }
        state.lock().unwrap().received.push(line.clone());
        // A PROXY protocol v1 header from ftpgate (`backend_proxy_protocol: v1`):
        // recorded, not answered, as a server behind `accept-proxy` would.
        if line.starts_with(b"PROXY ") {
            continue;
        }
        let text = String::from_utf8_lossy(&line).trim_end().to_string();
        let (verb, arg) = text.split_once(' ').unwrap_or((&text, ""));
        let reply = match verb.to_ascii_uppercase().as_str() {
            "USER" => "331 password please".to_string(),
            "PASS" => "230 logged in".to_string(),
            "NOOP" => "200 NOOP ok".to_string(),
            "FEAT" => {
                "211-Features:\r\n EPSV\r\n227 inner line, not a reply\r\n211 End".to_string()
            }
            "QUIT" => {
                let _ = w.write_all(b"221 bye\r\n").await;
                return;
            }
            "PASV" => {
                let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
                let p = l.local_addr().unwrap().port();
                if let Some(old) = data.replace(DataSource::Listen(l)) {
                    if kept.len() < opts.keep_pasv_listeners {
                        kept.push(old);
                    }
                }
                let [a, b, c, d] = opts.pasv_ip;
                let tuple = format!("{a},{b},{c},{d},{},{}", p >> 8, p & 0xff);
                opts.pasv_reply.replace("{tuple}", &tuple)
            }
            "EPSV" => {
                let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
                let p = l.local_addr().unwrap().port();
                data = Some(DataSource::Listen(l));
                opts.epsv_reply.replace("{port}", &p.to_string())
            }
            "PORT" | "EPRT" => match parse_active(verb, arg) {
                Some(t) => {
                    data = Some(DataSource::Connect(t));
                    format!("200 {} command successful", verb.to_ascii_uppercase())
                }
                None => "501 bad address".to_string(),
            },
            "RETR" | "STOR" | "LIST" => {
                let Some(source) = data.take() else {
                    w.write_all(b"425 use PASV first\r\n").await.unwrap();
                    continue;
                };
                w.write_all(b"150 opening data connection\r\n")
                    .await
                    .unwrap();
                let mut d = match source {
                    DataSource::Listen(l) => {
                        let (d, peer) = l.accept().await.unwrap();
                        state.lock().unwrap().data_peers.push(peer);
                        d
                    }
                    DataSource::Connect(t) => {
                        state.lock().unwrap().active_targets.push(t);
                        match TcpStream::connect(t).await {
                            Ok(d) => d,
                            Err(_) => {
                                w.write_all(b"425 cannot connect\r\n").await.unwrap();
                                continue;
                            }
                        }
                    }
                };
                match verb.to_ascii_uppercase().as_str() {
                    "RETR" if arg == "hold" => {
                        // Open the data connection and send nothing until it is closed.
                        let mut sink = [0u8; 64];
                        let _ = d.read(&mut sink).await;
                        "426 data connection closed; transfer aborted".to_string()
                    }
                    "RETR" if arg.starts_with("slow:") => {
                        // slow:<chunks>: 1 KiB every 20 ms, answering NOOPs meanwhile if asked.
                        let chunks: usize = arg[5..].parse().unwrap_or(10);
                        for i in 0..chunks {
                            let chunk = vec![(i % 251) as u8; 1024];
                            if d.write_all(&chunk).await.is_err() {
                                break;
                            }
                            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                            if opts.noop_during_transfer {
                                answer_noops_now(&mut r, &mut w, &state).await;
                            }
                        }
                        drop(d);
                        "226 slow transfer complete".to_string()
                    }
                    "RETR" => {
                        let body = state.lock().unwrap().files.get(arg).cloned();
                        match body {
                            Some(b) => {
                                d.write_all(&b).await.unwrap();
                                drop(d);
                                "226 transfer complete".to_string()
                            }
                            None => {
                                drop(d);
                                "550 no such file".to_string()
                            }
                        }
                    }
                    "STOR" => {
                        let mut buf = Vec::new();
                        d.read_to_end(&mut buf).await.unwrap();
                        state.lock().unwrap().files.insert(arg.to_string(), buf);
                        "226 stored".to_string()
                    }
                    _ => {
                        let names: Vec<String> =
                            state.lock().unwrap().files.keys().cloned().collect();
                        d.write_all(names.join("\r\n").as_bytes()).await.unwrap();
                        drop(d);
                        "226 listing sent".to_string()
                    }
                }
            }
            _ => "500 unknown command".to_string(),
        };
        if w.write_all(format!("{reply}\r\n").as_bytes())
            .await
            .is_err()
        {
            return;
        }
    }
}

enum DataSource {
    Listen(TcpListener),
    Connect(SocketAddr),
}

fn parse_active(verb: &str, arg: &str) -> Option<SocketAddr> {
    if verb.eq_ignore_ascii_case("PORT") {
        let n: Vec<u16> = arg
            .split(',')
            .map(|x| x.trim().parse().ok())
            .collect::<Option<_>>()?;
        if n.len() != 6 {
            return None;
        }
        let ip = std::net::Ipv4Addr::new(n[0] as u8, n[1] as u8, n[2] as u8, n[3] as u8);
        Some(SocketAddr::from((ip, n[4] * 256 + n[5])))
    } else {
        let d = arg.chars().next()?;
        let parts: Vec<&str> = arg.split(d).collect();
        let ip: std::net::IpAddr = parts.get(2)?.parse().ok()?;
        let port: u16 = parts.get(3)?.parse().ok()?;
        Some(SocketAddr::new(ip, port))
    }
}

/// Reads whatever complete NOOP lines are already buffered on the control connection
/// and answers them at once, as proftpd does during a transfer.
async fn answer_noops_now(
    r: &mut BufReader<tokio::net::tcp::OwnedReadHalf>,
    w: &mut tokio::net::tcp::OwnedWriteHalf,
    state: &Arc<Mutex<MockState>>,
) -> usize {
    let mut answered = 0;
    loop {
        let mut line = Vec::new();
        let got = tokio::time::timeout(
            std::time::Duration::from_millis(1),
            r.read_until(b'\n', &mut line),
        )
        .await;
        match got {
            Ok(Ok(n)) if n > 0 => {
                state.lock().unwrap().received.push(line.clone());
                if line.starts_with(b"NOOP") {
                    w.write_all(b"200 NOOP during transfer\r\n").await.unwrap();
                    answered += 1;
                } else {
                    w.write_all(b"500 not during a transfer\r\n").await.unwrap();
                }
            }
            _ => return answered,
        }
    }
}
