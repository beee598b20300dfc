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
}

impl Default for MockOptions {
    fn default() -> Self {
        MockOptions {
            pasv_reply: "227 Entering Passive Mode ({tuple}).".into(),
            epsv_reply: "229 Entering Extended Passive Mode (|||{port}|)".into(),
            pasv_ip: [127, 0, 0, 1],
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
}

pub struct MockFtp {
    pub addr: SocketAddr,
    pub state: Arc<Mutex<MockState>>,
}

impl MockFtp {
    pub async fn start(opts: MockOptions) -> MockFtp {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(MockState::default()));
        let st = Arc::clone(&state);
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                tokio::spawn(control(s, Arc::clone(&st), opts.clone()));
            }
        });
        MockFtp { addr, state }
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
    let mut data: Option<TcpListener> = None;
    let mut line = Vec::new();
    loop {
        line.clear();
        if r.read_until(b'\n', &mut line).await.unwrap_or(0) == 0 {
            return;
        }
        state.lock().unwrap().received.push(line.clone());
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
                data = Some(l);
                let [a, b, c, d] = opts.pasv_ip;
                let tuple = format!("{a},{b},{c},{d},{},{}", p >> 8, p & 0xff);
                opts.pasv_reply.replace("{tuple}", &tuple)
            }
            "EPSV" => {
                let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
                let p = l.local_addr().unwrap().port();
                data = Some(l);
                opts.epsv_reply.replace("{port}", &p.to_string())
            }
            "RETR" | "STOR" | "LIST" => {
                let Some(l) = data.take() else {
                    w.write_all(b"425 use PASV first\r\n").await.unwrap();
                    continue;
                };
                w.write_all(b"150 opening data connection\r\n")
                    .await
                    .unwrap();
                let (mut d, peer) = l.accept().await.unwrap();
                state.lock().unwrap().data_peers.push(peer);
                match verb.to_ascii_uppercase().as_str() {
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
