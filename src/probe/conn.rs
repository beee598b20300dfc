//! The probe's FTP control connection (plain or TLS) and data streams. Every
//! wait is bounded by the step timeout.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::protocol::line::{find_line, trim_eol};
use crate::protocol::reply::{ReplyFramer, ReplyLine};

use super::facts::{IoFailure, Outcome, Reply};

/// Longest reply line and longest reply accepted from a server.
const MAX_LINE: usize = 8192;
const MAX_REPLY_LINES: usize = 2000;

/// A byte stream the probe's control connection runs on: TCP, or TLS over it.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A control connection: commands out, complete (multi-line) replies in.
pub struct Control {
    io: Box<dyn Io>,
    buf: Vec<u8>,
    framer: ReplyFramer,
    lines: Vec<String>,
    /// Bound on each wait for a reply (`--timeout`).
    pub timeout: Duration,
    /// A wait ran out: a late reply may still come, so the next reply read
    /// could be the wrong one. Callers open a fresh session instead.
    pub desynced: bool,
}

impl Control {
    /// A control connection over `io`, waiting at most `timeout` for each reply.
    pub fn new(io: Box<dyn Io>, timeout: Duration) -> Control {
        Control {
            io,
            buf: Vec::new(),
            framer: ReplyFramer::new(),
            lines: Vec::new(),
            timeout,
            desynced: false,
        }
    }

    /// The transport, for a TLS upgrade after `234`. Bytes already buffered
    /// (a server talking before the handshake) are an error.
    pub fn into_io(self) -> Result<Box<dyn Io>, IoFailure> {
        if self.buf.is_empty() {
            Ok(self.io)
        } else {
            Err(IoFailure::Protocol {
                detail: "data after 234 before the TLS handshake".into(),
            })
        }
    }

    /// The next complete reply, within the timeout.
    pub async fn reply(&mut self) -> Outcome<Reply> {
        self.reply_within(self.timeout).await
    }

    /// The next complete reply, within `limit`; on timeout the connection is desynced.
    pub async fn reply_within(&mut self, limit: Duration) -> Outcome<Reply> {
        match tokio::time::timeout(limit, self.read_reply()).await {
            Ok(r) => r,
            Err(_) => {
                self.desynced = true;
                Err(IoFailure::timeout(limit))
            }
        }
    }

    /// Cancel-safe: partial lines and the framer's state live in `self`.
    pub async fn read_reply(&mut self) -> Outcome<Reply> {
        loop {
            while let Some(n) = find_line(&self.buf, MAX_LINE).map_err(|_| IoFailure::Protocol {
                detail: format!("reply line longer than {MAX_LINE} bytes"),
            })? {
                let line: Vec<u8> = self.buf.drain(..n).collect();
                let text = String::from_utf8_lossy(trim_eol(&line)).into_owned();
                let kind = self
                    .framer
                    .classify(&line)
                    .map_err(|_| IoFailure::Protocol {
                        detail: format!("{text:?}"),
                    })?;
                self.lines.push(text);
                if self.lines.len() > MAX_REPLY_LINES {
                    return Err(IoFailure::Protocol {
                        detail: format!("reply longer than {MAX_REPLY_LINES} lines"),
                    });
                }
                if let ReplyLine::Single(code) | ReplyLine::End(code) = kind {
                    let text = std::mem::take(&mut self.lines).join("\n");
                    return Ok(Reply { code: code.0, text });
                }
            }
            let mut chunk = [0u8; 4096];
            let n = self
                .io
                .read(&mut chunk)
                .await
                .map_err(|e| IoFailure::from_io(&e))?;
            if n == 0 {
                return Err(IoFailure::Closed);
            }
            self.buf
                .extend_from_slice(chunk.get(..n).unwrap_or_default());
        }
    }

    /// Sends one command line (CRLF added).
    pub async fn send(&mut self, line: &str) -> Outcome<()> {
        let mut bytes = Vec::with_capacity(line.len() + 2);
        bytes.extend_from_slice(line.as_bytes());
        bytes.extend_from_slice(b"\r\n");
        let write = async {
            self.io.write_all(&bytes).await?;
            self.io.flush().await
        };
        match tokio::time::timeout(self.timeout, write).await {
            Ok(r) => r.map_err(|e| IoFailure::from_io(&e)),
            Err(_) => Err(IoFailure::timeout(self.timeout)),
        }
    }

    /// Sends a command and reads its reply.
    pub async fn cmd(&mut self, line: &str) -> Outcome<Reply> {
        self.send(line).await?;
        self.reply().await
    }
}

/// A data connection, plain or TLS (`PROT P`).
pub enum DataStream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS (`PROT P`), resuming the control connection's session.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl DataStream {
    /// Reads into `buf`; 0 at end of stream.
    pub async fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            DataStream::Plain(s) => s.read(buf).await,
            DataStream::Tls(s) => s.read(buf).await,
        }
    }
    /// Writes all of `buf`.
    pub async fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        match self {
            DataStream::Plain(s) => s.write_all(buf).await,
            DataStream::Tls(s) => s.write_all(buf).await,
        }
    }
    /// After [`Self::finish`]: reads until the server closes too. Closing with
    /// unread bytes (TLS 1.3 session tickets) would make the kernel send RST,
    /// which can reach the server before it has read the whole upload.
    pub async fn drain(&mut self) {
        let mut buf = [0u8; 4096];
        while let Ok(n) = self.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    }

    /// Ends the upload: TLS `close_notify` then FIN when `close_notify`, else
    /// FIN only (a bare TCP close of a TLS stream).
    pub async fn finish(&mut self, close_notify: bool) -> std::io::Result<()> {
        match self {
            DataStream::Plain(s) => s.shutdown().await,
            DataStream::Tls(s) if close_notify => s.shutdown().await,
            DataStream::Tls(s) => {
                s.flush().await?;
                s.get_mut().0.shutdown().await
            }
        }
    }
}

/// Runs `f` within `limit`, mapping both error kinds to [`IoFailure`].
pub async fn bounded<T, F>(limit: Duration, f: F) -> Outcome<T>
where
    F: std::future::Future<Output = std::io::Result<T>>,
{
    match tokio::time::timeout(limit, f).await {
        Ok(r) => r.map_err(|e| IoFailure::from_io(&e)),
        Err(_) => Err(IoFailure::timeout(limit)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn replies(input: &'static [u8]) -> Vec<Outcome<Reply>> {
        let (client, mut server) = tokio::io::duplex(64);
        tokio::spawn(async move {
            let _ = server.write_all(input).await;
        });
        let mut c = Control::new(Box::new(client), Duration::from_secs(2));
        let mut out = Vec::new();
        loop {
            let r = c.reply().await;
            let end = r.is_err();
            out.push(r);
            if end {
                return out;
            }
        }
    }

    #[tokio::test]
    async fn multi_line_and_closed() {
        let r =
            replies(b"220-hello\r\n220 there\r\n211-Features:\r\n AUTH TLS\r\n211 End\r\n").await;
        assert_eq!(r[0], Ok(Reply::new(220, "220-hello\n220 there")));
        assert_eq!(
            r[1],
            Ok(Reply::new(211, "211-Features:\n AUTH TLS\n211 End"))
        );
        assert_eq!(r[2], Err(IoFailure::Closed));
    }

    #[tokio::test]
    async fn garbage_is_a_protocol_error_not_a_panic() {
        let r = replies(b"hello\r\n").await;
        assert!(matches!(r[0], Err(IoFailure::Protocol { .. })), "{r:?}");
    }
}
