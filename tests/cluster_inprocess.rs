//! Cluster forwarding in-process on loopback: three replicas on their own loopback
//! addresses (127.0.N.1-3) in front of one mock FTP server. The test itself plays the
//! balancer: it connects each data connection to a replica of its choosing, so every
//! (owner, landing replica) pair is exercised deterministically. The namespace suite
//! (`e2e_cluster`) does the same behind a real nftables balancer.

#[path = "common/inprocess.rs"]
#[allow(dead_code)]
mod inprocess;
#[path = "common/mock_ftp.rs"]
#[allow(dead_code)]
mod mock_ftp;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ftpgate::app::Gateway;
use ftpgate::cluster::ClusterConfig;
use ftpgate::config::Config;
use ftpgate::metrics::Metrics;
use ftpgate::protocol::addr::find_epsv_port;
use inprocess::{connect_from, eventually, pattern, Client, WAIT};
use mock_ftp::{MockFtp, MockOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

const PEER_PORT: u16 = 2122;
const DATA_PORTS: &str = "42000-42029";

struct Replica {
    ordinal: u16,
    ip: IpAddr,
    ftp: SocketAddr,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn ip(net: u8, host: u8) -> IpAddr {
    IpAddr::from([127, 0, net, host])
}

/// Replica `ordinal` of a cluster on 127.0.`net`.0/24 with `slots` slots.
async fn replica(net: u8, ordinal: u16, slots: u16, backend: SocketAddr) -> Replica {
    let me = ip(net, u8::try_from(ordinal).unwrap() + 1);
    let cfg = Config {
        listen: vec![SocketAddr::new(me, 0)],
        backends: vec![backend.into()],
        public_address: vec![me],
        data_ports: DATA_PORTS.parse().unwrap(),
        cluster: ClusterConfig {
            slots,
            ordinal: Some(ordinal),
            peers: (1..=slots)
                .map(|k| format!("127.0.{net}.{k}:{PEER_PORT}"))
                .collect(),
            listen: Some(SocketAddr::new(me, PEER_PORT)),
            data_listen: Some(me),
            peer_cidrs: vec![format!("127.0.{net}.0/24").parse().unwrap()],
            forward_connect_timeout: Duration::from_secs(2),
            ..ClusterConfig::default()
        },
        ..Config::default()
    };
    let metrics = Arc::new(Metrics::new());
    let gw = Gateway::bind(cfg.validate().unwrap(), Arc::clone(&metrics))
        .await
        .unwrap();
    assert_eq!(
        gw.cluster_addr(),
        Some(SocketAddr::new(me, PEER_PORT)),
        "peer listener bound"
    );
    let ftp = gw.local_addrs()[0];
    let stop = CancellationToken::new();
    tokio::spawn(gw.serve(stop.clone()));
    Replica {
        ordinal,
        ip: me,
        ftp,
        metrics,
        stop,
    }
}

async fn cluster(net: u8, n: u16, slots: u16, backend: SocketAddr) -> Vec<Replica> {
    let mut v = Vec::new();
    for k in 0..n {
        v.push(replica(net, k, slots, backend).await);
    }
    v
}

fn forwarded(r: &Replica, direction: &str, peer: u16) -> u64 {
    r.metrics
        .cluster
        .forwarded_total
        .with_label_values(&[direction, &peer.to_string()])
        .get()
}

fn failures(r: &Replica, direction: &str, peer: &str, reason: &str) -> u64 {
    r.metrics
        .cluster
        .forward_failures_total
        .with_label_values(&[direction, peer, reason])
        .get()
}

fn foreign_refusals(r: &Replica) -> u64 {
    r.metrics
        .refusals_total
        .with_label_values(&["foreign_data_peer"])
        .get()
}

async fn login(r: &Replica) -> Client {
    let mut c = Client::connect(r.ftp).await;
    assert!(c.reply().await.starts_with("220"));
    assert!(c.cmd("USER u").await.starts_with("331"));
    assert!(c.cmd("PASS secret").await.starts_with("230"));
    c
}

async fn epsv_port(c: &mut Client) -> u16 {
    let reply = c.cmd("EPSV").await;
    find_epsv_port(reply.trim_end().as_bytes())
        .unwrap_or_else(|e| panic!("not a 229 ({e:?}): {reply}"))
        .port
}

async fn read_to_end(s: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut buf))
        .await
        .expect("data within bound")?;
    Ok(buf)
}

#[tokio::test]
async fn every_landing_replica_reaches_the_owner_byte_exact() {
    let backend = MockFtp::start(MockOptions::default()).await;
    let file = pattern(3 * 1024 * 1024 + 17);
    backend.put_file("f.bin", file.clone());
    let rs = cluster(1, 3, 3, backend.addr).await;
    let slices = ftpgate::cluster::Slices::new(DATA_PORTS.parse().unwrap(), 3).unwrap();
    for owner in &rs {
        for landing in &rs {
            // Download.
            let mut c = login(owner).await;
            let port = epsv_port(&mut c).await;
            assert_eq!(
                slices.owner(port),
                Some(owner.ordinal),
                "announced a port of the own slice"
            );
            c.send(b"RETR f.bin\r\n").await;
            let mut d = connect_from(ip(0, 1), SocketAddr::new(landing.ip, port))
                .await
                .unwrap();
            assert!(c.reply().await.starts_with("150"));
            let got = read_to_end(&mut d).await.unwrap();
            assert!(
                got == file,
                "download {} -> {} not byte-exact",
                landing.ordinal,
                owner.ordinal
            );
            assert!(c.reply().await.starts_with("226"));
            // Upload.
            let port = epsv_port(&mut c).await;
            let name = format!("up-{}-{}", owner.ordinal, landing.ordinal);
            c.send(format!("STOR {name}\r\n").as_bytes()).await;
            let mut d = connect_from(ip(0, 1), SocketAddr::new(landing.ip, port))
                .await
                .unwrap();
            assert!(c.reply().await.starts_with("150"));
            d.write_all(&file).await.unwrap();
            d.shutdown().await.unwrap();
            drop(d);
            assert!(c.reply().await.starts_with("226"));
            assert!(
                backend.file(&name).as_deref() == Some(&file[..]),
                "upload {name} not byte-exact"
            );
            c.quit().await;
        }
    }
    // Each ordered pair of distinct replicas forwarded two connections (down, up).
    for a in &rs {
        for b in rs.iter().filter(|b| b.ordinal != a.ordinal) {
            eventually("forward counters", || {
                forwarded(a, "out", b.ordinal) == 2 && forwarded(b, "in", a.ordinal) == 2
            })
            .await;
        }
    }
    let relayed = rs[0]
        .metrics
        .cluster
        .forwarded_bytes_total
        .with_label_values(&["to_client"])
        .get();
    assert!(
        relayed >= 2 * file.len() as u64,
        "replica 0 relayed {relayed} bytes down"
    );
}

#[tokio::test]
async fn an_intruder_landing_on_another_replica_is_refused_by_the_owner() {
    let backend = MockFtp::start(MockOptions::default()).await;
    let file = pattern(64 * 1024);
    backend.put_file("f.bin", file.clone());
    let rs = cluster(2, 3, 3, backend.addr).await;
    let mut c = login(&rs[0]).await;
    let port = epsv_port(&mut c).await;
    // The intruder (another address) races the client through replica 1.
    let mut intruder = connect_from(ip(0, 66), SocketAddr::new(rs[1].ip, port))
        .await
        .unwrap();
    let got = read_to_end(&mut intruder).await.unwrap_or_default();
    assert!(got.is_empty(), "intruder received {} bytes", got.len());
    eventually("owner refused the forwarded intruder", || {
        foreign_refusals(&rs[0]) == 1
    })
    .await;
    assert_eq!(forwarded(&rs[1], "out", 0), 1, "replica 1 did forward it");
    // The real client still gets its file, through replica 2.
    c.send(b"RETR f.bin\r\n").await;
    let mut d = connect_from(ip(0, 1), SocketAddr::new(rs[2].ip, port))
        .await
        .unwrap();
    assert!(c.reply().await.starts_with("150"));
    assert!(read_to_end(&mut d).await.unwrap() == file);
    assert!(c.reply().await.starts_with("226"));
}

#[tokio::test]
async fn a_gone_replicas_slice_is_closed_at_once_and_counted() {
    let backend = MockFtp::start(MockOptions::default()).await;
    // Three slots, replica 2 never started (or killed): nothing on its peer port.
    let rs = cluster(3, 2, 3, backend.addr).await;
    let slices = ftpgate::cluster::Slices::new(DATA_PORTS.parse().unwrap(), 3).unwrap();
    let dead_port = slices.slice(2).unwrap().lo;
    let started = tokio::time::Instant::now();
    let mut d = connect_from(ip(0, 1), SocketAddr::new(rs[0].ip, dead_port))
        .await
        .unwrap();
    let r = read_to_end(&mut d).await;
    assert!(
        matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "expected a reset, got {r:?}"
    );
    eventually("failure counted", || {
        failures(&rs[0], "out", "2", "connect") == 1
    })
    .await;
    // Reported, not asserted: far below the 2 s forward_connect_timeout.
    println!("closed after {:?}", started.elapsed());
    // The live replicas' sessions are unaffected.
    let mut c = login(&rs[1]).await;
    let port = epsv_port(&mut c).await;
    c.send(b"LIST\r\n").await;
    let mut d = connect_from(ip(0, 1), SocketAddr::new(rs[0].ip, port))
        .await
        .unwrap();
    assert!(c.reply().await.starts_with("150"));
    read_to_end(&mut d).await.unwrap();
    assert!(c.reply().await.starts_with("226"));
}

#[tokio::test]
async fn the_peer_port_takes_only_peers_with_a_valid_header_for_a_waiting_port() {
    let backend = MockFtp::start(MockOptions::default()).await;
    let rs = cluster(4, 2, 2, backend.addr).await;
    let peer_port = SocketAddr::new(rs[0].ip, PEER_PORT);
    let closed = |mut s: TcpStream| async move {
        let mut buf = [0u8; 16];
        let r = tokio::time::timeout(WAIT, s.read(&mut buf)).await.unwrap();
        assert!(matches!(r, Ok(0) | Err(_)), "expected a close, read {r:?}");
    };
    // Outside peer_cidrs (127.0.4.0/24).
    let s = connect_from(ip(9, 9), peer_port).await.unwrap();
    closed(s).await;
    eventually("not_peer", || {
        failures(&rs[0], "in", "unknown", "not_peer") == 1
    })
    .await;
    // A peer address, but garbage instead of a header.
    let mut s = connect_from(ip(4, 2), peer_port).await.unwrap();
    s.write_all(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\nxxxxxxxxxxxxxxxx")
        .await
        .unwrap();
    closed(s).await;
    eventually("bad_header", || {
        failures(&rs[0], "in", "unknown", "bad_header") == 1
    })
    .await;
    // A valid header for a port of the other slice.
    let slices = ftpgate::cluster::Slices::new(DATA_PORTS.parse().unwrap(), 2).unwrap();
    let theirs = slices.slice(1).unwrap().lo;
    let own = slices.slice(0).unwrap().lo;
    let header = |port| {
        ftpgate::cluster::header::encode(
            "127.0.0.1:40000".parse().unwrap(),
            SocketAddr::new(rs[1].ip, port),
            1,
        )
    };
    let mut s = connect_from(ip(4, 2), peer_port).await.unwrap();
    s.write_all(&header(theirs)).await.unwrap();
    closed(s).await;
    eventually("foreign_slice", || {
        failures(&rs[0], "in", "1", "foreign_slice") == 1
    })
    .await;
    // A valid header for an own port nobody leased.
    let mut s = connect_from(ip(4, 2), peer_port).await.unwrap();
    s.write_all(&header(own)).await.unwrap();
    closed(s).await;
    eventually("no_mapping", || {
        failures(&rs[0], "in", "1", "no_mapping") == 1
    })
    .await;
    assert_eq!(forwarded(&rs[0], "in", 1), 0);
}
