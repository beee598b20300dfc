//! `relay: copy` is a process-wide switch (its own test binary, so flipping it cannot
//! touch other tests): set once, read back, and `relay_tcp` still relays exactly.

use ftpgate::config::RelayMode;
use ftpgate::relay::{relay_mode, relay_tcp, set_relay_mode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

async fn pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
    (c, l.accept().await.unwrap().0)
}

#[tokio::test]
async fn copy_mode_is_process_wide_and_relays() {
    assert_eq!(relay_mode(), RelayMode::Auto, "default");
    set_relay_mode(RelayMode::Copy);
    assert_eq!(relay_mode(), RelayMode::Copy);
    let (mut client, mut a) = pair().await;
    let (mut b, mut server) = pair().await;
    let relay = tokio::spawn(async move { relay_tcp(&mut a, &mut b).await });
    let data: Vec<u8> = (0..300_001u32).map(|i| (i % 251) as u8).collect();
    client.write_all(&data).await.unwrap();
    client.shutdown().await.unwrap();
    let mut got = Vec::new();
    server.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, data);
    server.shutdown().await.unwrap();
    let r = relay.await.unwrap().unwrap();
    assert_eq!((r.a_to_b, r.b_to_a), (300_001, 0));
    set_relay_mode(RelayMode::Auto);
    assert_eq!(relay_mode(), RelayMode::Auto);
}
