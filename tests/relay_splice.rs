//! The TCP relay (`relay_tcp`: splice(2) on Linux) on real loopback sockets, against the
//! same expectations as the generic buffered `relay`: exact bytes for awkward sizes,
//! half-close in each direction independently, zero-byte transfers, simultaneous
//! traffic both ways, and an error (never a hang) when a peer resets.
//!
//! Topology of every test:
//!
//! ```text
//!   client ──▶ a ══ relay ══ b ◀── server
//! ```

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use ftpgate::relay::{relay, relay_tcp, RelayError, Relayed};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Guards against hangs only; no test waits on it in the passing case.
const HANG_GUARD: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, Debug)]
enum Impl {
    /// `relay_tcp`: splice on Linux.
    Tcp,
    /// The generic buffered relay on the same sockets, as the reference.
    Generic,
}

const IMPLS: [Impl; 2] = [Impl::Tcp, Impl::Generic];

/// A connected loopback pair: (the end we keep, the end the relay gets).
async fn pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = l.local_addr().unwrap();
    let (c, s) = tokio::join!(TcpStream::connect(addr), l.accept());
    (c.unwrap(), s.unwrap().0)
}

struct Rig {
    client: TcpStream,
    server: TcpStream,
    relay: JoinHandle<Result<Relayed, RelayError>>,
}

async fn rig(which: Impl) -> Rig {
    let (client, mut a) = pair().await;
    let (server, mut b) = pair().await;
    let relay = tokio::spawn(async move {
        match which {
            Impl::Tcp => relay_tcp(&mut a, &mut b).await,
            Impl::Generic => relay(&mut a, &mut b).await,
        }
    });
    Rig {
        client,
        server,
        relay,
    }
}

/// Deterministic, position-dependent bytes so a dropped or reordered chunk shows.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_be_bytes()[0] ^ seed)
        .collect()
}

async fn finish(relay: JoinHandle<Result<Relayed, RelayError>>) -> Result<Relayed, RelayError> {
    tokio::time::timeout(HANG_GUARD, relay)
        .await
        .expect("relay hung")
        .expect("relay task panicked")
}

/// Sends `up` client→server and `down` server→client at the same time; each side
/// half-closes after writing and reads the other direction to its end.
async fn exchange(which: Impl, up: Vec<u8>, down: Vec<u8>) {
    let Rig {
        client,
        server,
        relay,
    } = rig(which).await;
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let (up_len, down_len) = (up.len() as u64, down.len() as u64);
    let up_w = tokio::spawn(async move {
        cw.write_all(&up).await.unwrap();
        cw.shutdown().await.unwrap();
        up
    });
    let down_w = tokio::spawn(async move {
        sw.write_all(&down).await.unwrap();
        sw.shutdown().await.unwrap();
        down
    });
    let up_r = tokio::spawn(async move {
        let mut got = Vec::new();
        sr.read_to_end(&mut got).await.unwrap();
        got
    });
    let down_r = tokio::spawn(async move {
        let mut got = Vec::new();
        cr.read_to_end(&mut got).await.unwrap();
        got
    });
    let guard = |h| async move { tokio::time::timeout(HANG_GUARD, h).await.expect("hung") };
    let (up, down) = (guard(up_w).await.unwrap(), guard(down_w).await.unwrap());
    let (got_up, got_down) = (guard(up_r).await.unwrap(), guard(down_r).await.unwrap());
    assert!(got_up == up, "{which:?}: upload of {up_len} bytes differs");
    assert!(
        got_down == down,
        "{which:?}: download of {down_len} bytes differs"
    );
    let r = finish(relay).await.unwrap();
    assert_eq!(
        r,
        Relayed {
            a_to_b: up_len,
            b_to_a: down_len
        },
        "{which:?}"
    );
}

const ODD_SIZES: [usize; 6] = [1, 4095, 4097, 65537, (1 << 20) + 3, (3 << 20) + 7];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_size_downloads_are_byte_exact() {
    for which in IMPLS {
        for n in ODD_SIZES {
            exchange(which, Vec::new(), pattern(n, 1)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_size_uploads_are_byte_exact() {
    for which in IMPLS {
        for n in ODD_SIZES {
            exchange(which, pattern(n, 2), Vec::new()).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_bytes_both_ways() {
    for which in IMPLS {
        exchange(which, Vec::new(), Vec::new()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simultaneous_both_ways() {
    for which in IMPLS {
        exchange(which, pattern((8 << 20) + 1, 3), pattern((5 << 20) + 9, 4)).await;
        exchange(which, pattern(65537, 5), pattern(1, 6)).await;
    }
}

/// Half-close is per direction: after the client's upload EOF reaches the server, the
/// server can still answer (like a `226` arriving after an upload's last byte), and
/// the relay ends only after that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_then_late_reply() {
    for which in IMPLS {
        let Rig {
            mut client,
            mut server,
            relay,
        } = rig(which).await;
        let up = pattern(100_003, 7);
        client.write_all(&up).await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert!(got == up, "{which:?}");
        assert!(
            !relay.is_finished(),
            "{which:?}: relay ended with one direction open"
        );
        server.write_all(b"late reply bytes").await.unwrap();
        server.shutdown().await.unwrap();
        let mut back = Vec::new();
        client.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"late reply bytes", "{which:?}");
        let r = finish(relay).await.unwrap();
        assert_eq!((r.a_to_b, r.b_to_a), (100_003, 16), "{which:?}");
    }
}

/// An uploader (curl, ftplib) writes its last bytes and closes the socket at once,
/// without a separate shutdown: every byte still reaches the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_last_bytes_right_before_close() {
    for which in IMPLS {
        for n in [1usize, 65537, (1 << 20) + 3] {
            let Rig {
                mut client,
                mut server,
                relay,
            } = rig(which).await;
            let up = pattern(n, 8);
            let (body, tail) = up.split_at(n - 1);
            client.write_all(body).await.unwrap();
            client.write_all(tail).await.unwrap();
            drop(client);
            let mut got = Vec::new();
            server.read_to_end(&mut got).await.unwrap();
            assert!(got == up, "{which:?}: {n} bytes");
            server.shutdown().await.unwrap();
            let r = finish(relay).await.unwrap();
            assert_eq!(r.a_to_b, n as u64, "{which:?}");
        }
    }
}

/// A slow reader: the relay must wait for the socket to drain, never drop bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_reader_backpressure() {
    for which in IMPLS {
        let Rig {
            client,
            mut server,
            relay,
        } = rig(which).await;
        let down = pattern((4 << 20) + 11, 9);
        let d = down.clone();
        let writer = tokio::spawn(async move {
            server.write_all(&d).await.unwrap();
            server.shutdown().await.unwrap();
            server
        });
        let mut client = client;
        let mut got = Vec::with_capacity(down.len());
        let mut buf = [0u8; 1000];
        loop {
            let n = client.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
            tokio::task::yield_now().await;
        }
        assert!(got == down, "{which:?}");
        client.shutdown().await.unwrap();
        drop(writer.await.unwrap());
        let r = finish(relay).await.unwrap();
        assert_eq!(r.b_to_a, down.len() as u64, "{which:?}");
    }
}

/// Closes with RST (SO_LINGER 0) instead of FIN.
fn reset(s: TcpStream) {
    s.set_zero_linger().unwrap();
    drop(s);
}

/// One side sends, the other receives a first byte, then the sender resets: the relay
/// must end with an error instead of waiting for the peer that never closes, and the
/// error must still say how many bytes reached the receiver (an aborted transfer is
/// billed and logged like any other; it used to report 0).
async fn reset_mid_transfer(which: Impl, client_resets: bool, seed: u8) {
    let Rig {
        client,
        server,
        relay,
    } = rig(which).await;
    let (mut sender, mut receiver) = if client_resets {
        (client, server)
    } else {
        (server, client)
    };
    sender.write_all(&pattern(70_000, seed)).await.unwrap();
    let mut first = [0u8; 1];
    receiver.read_exact(&mut first).await.unwrap();
    reset(sender);
    let r = finish(relay).await;
    let Err(e) = r else {
        panic!("{which:?}: relay did not fail: {r:?}");
    };
    // The relay task has ended and closed its sockets: the receiver now reads what the
    // relay wrote, to EOF.
    let mut rest = Vec::new();
    tokio::time::timeout(HANG_GUARD, receiver.read_to_end(&mut rest))
        .await
        .expect("receiver sees EOF")
        .expect("receiver reads to EOF");
    let received = 1 + rest.len() as u64;
    let (moved, other) = if client_resets {
        (e.relayed.a_to_b, e.relayed.b_to_a)
    } else {
        (e.relayed.b_to_a, e.relayed.a_to_b)
    };
    assert_eq!(
        moved, received,
        "{which:?}: relay reported {moved} bytes, the receiver got {received}"
    );
    assert_eq!(other, 0, "{which:?}: nothing went the other way");
}

/// A client that resets mid-upload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_reset_is_an_error_not_a_hang() {
    for which in IMPLS {
        reset_mid_transfer(which, true, 10).await;
    }
}

/// The server resets during a download while the client keeps its side open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_reset_is_an_error_not_a_hang() {
    for which in IMPLS {
        reset_mid_transfer(which, false, 11).await;
    }
}

/// A peer that neither sends nor closes must not hold a data connection forever.
#[tokio::test]
async fn stalled_relay_times_out_and_steady_trickle_does_not() {
    use ftpgate::relay::relay_tcp_with_idle;
    let idle = Some(Duration::from_millis(200));

    // Nobody sends: TimedOut, and both of the relay's sockets are closed.
    let (mut client, mut a) = pair().await;
    let (mut server, mut b) = pair().await;
    let r = tokio::time::timeout(HANG_GUARD, relay_tcp_with_idle(&mut a, &mut b, idle))
        .await
        .expect("watchdog fires");
    assert_eq!(r.unwrap_err().kind(), io::ErrorKind::TimedOut);
    drop((a, b));
    let mut sink = Vec::new();
    assert_eq!(client.read_to_end(&mut sink).await.unwrap(), 0);
    assert_eq!(server.read_to_end(&mut sink).await.unwrap(), 0);

    // Bytes every 50 ms for a second (five times the idle limit): never idle.
    let (mut client, mut a) = pair().await;
    let (mut server, mut b) = pair().await;
    let relay = tokio::spawn(async move { relay_tcp_with_idle(&mut a, &mut b, idle).await });
    for i in 0..20u8 {
        server.write_all(&[i]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.shutdown().await.unwrap();
    client.shutdown().await.unwrap();
    let mut got = Vec::new();
    client.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, (0..20u8).collect::<Vec<_>>());
    let r = finish(relay).await.unwrap();
    assert_eq!(r.b_to_a, 20);
}
