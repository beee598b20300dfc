//! Byte relay between the two halves of a data connection.
//!
//! Every byte is forwarded; EOF on one side becomes `shutdown(Write)` on the other
//! (half-close), and the relay ends only when both directions are done
//! (ARCHITECTURE invariant 5).

use std::io;

use tokio::io::{AsyncRead, AsyncWrite};

/// Buffer per direction: large enough that a multi-gigabyte transfer costs few syscalls.
const BUF: usize = 256 * 1024;

/// Bytes relayed in each direction.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Relayed {
    /// From the first stream (the client side) to the second.
    pub a_to_b: u64,
    pub b_to_a: u64,
}

/// Relays until both directions reach EOF.
pub async fn relay<A, B>(a: &mut A, b: &mut B) -> io::Result<Relayed>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let (a_to_b, b_to_a) = tokio::io::copy_bidirectional_with_sizes(a, b, BUF, BUF).await?;
    Ok(Relayed { a_to_b, b_to_a })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn half_close_each_way_and_exact_bytes() {
        let (mut a_near, mut a_far) = tokio::io::duplex(4096);
        let (mut b_near, mut b_far) = tokio::io::duplex(4096);
        let task = tokio::spawn(async move { relay(&mut a_far, &mut b_near).await });

        let upload: Vec<u8> = (0..100_003u32).map(|i| (i % 251) as u8).collect();
        let up = upload.clone();
        let writer = tokio::spawn(async move {
            a_near.write_all(&up).await.unwrap();
            a_near.shutdown().await.unwrap();
            // After our half-close the other direction still delivers.
            let mut back = Vec::new();
            a_near.read_to_end(&mut back).await.unwrap();
            back
        });
        let mut got = Vec::new();
        b_far.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, upload);
        b_far.write_all(b"226 late reply bytes").await.unwrap();
        b_far.shutdown().await.unwrap();
        assert_eq!(writer.await.unwrap(), b"226 late reply bytes");
        let r = task.await.unwrap().unwrap();
        assert_eq!(r.a_to_b, 100_003);
        assert_eq!(r.b_to_a, 20);
    }

    #[tokio::test]
    async fn zero_bytes_both_ways() {
        let (mut a_near, mut a_far) = tokio::io::duplex(64);
        let (mut b_near, mut b_far) = tokio::io::duplex(64);
        let task = tokio::spawn(async move { relay(&mut a_far, &mut b_near).await });
        a_near.shutdown().await.unwrap();
        b_far.shutdown().await.unwrap();
        let mut sink = Vec::new();
        b_far.read_to_end(&mut sink).await.unwrap();
        a_near.read_to_end(&mut sink).await.unwrap();
        assert!(sink.is_empty());
        assert_eq!(task.await.unwrap().unwrap(), Relayed::default());
    }
}
