//! FTPS material at the I/O edge: certificates and keys from PEM files, the rustls
//! configurations (ring provider, no C build), and [`MaybeTls`], a control or data
//! stream that starts as plain TCP and can be upgraded in place after `AUTH TLS`.
//!
//! The policy (what `AUTH`, `PBSZ`, `PROT` get, which data connections are TLS) lives
//! in [`crate::session::tls`]; this module only does what that policy decides.

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::Resumption;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::config::{TlsConfig, TlsVersion};

/// System trust roots (Debian's ca-certificates bundle), used without `tls.backend_ca`.
const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";
/// Server-side session cache entries: one per recent control connection is plenty,
/// since data connections resume within seconds.
const SERVER_SESSION_CACHE: usize = 4096;
/// Sessions remembered per backend control connection (its data connections resume
/// them; TLS 1.3 tickets are single use, and each resumption brings new ones).
const CLIENT_SESSIONS_PER_CONTROL: usize = 8;

/// Why the TLS material could not be loaded (a startup error, never a session error).
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("{key}: {path}: {reason}")]
    Pem {
        /// The configuration key naming the file.
        key: &'static str,
        /// The file.
        path: String,
        /// What was wrong.
        reason: String,
    },
    /// rustls refused the combination (e.g. a key not matching the certificate).
    #[error("{key}: {source}")]
    Rustls {
        /// The configuration key concerned.
        key: &'static str,
        /// The rustls error.
        source: rustls::Error,
    },
}

/// The process-wide TLS contexts built from `tls:` at start.
#[derive(Debug, Clone)]
pub struct TlsContexts {
    /// ftpgate as the TLS server towards clients (control and data), when a
    /// certificate is configured.
    pub server: Option<Arc<ServerConfig>>,
    /// ftpgate as the TLS client towards backends; each session derives its own copy
    /// with a private resumption store ([`TlsContexts::backend_session`]).
    pub client: Arc<ClientConfig>,
    /// Seconds since the epoch when the client-facing certificate expires.
    pub cert_not_after: Option<i64>,
}

// ring without post-quantum key exchange: the issue rules out aws-lc (C builds).
#[allow(deprecated)]
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn pem_err(key: &'static str, path: &Path, reason: impl ToString) -> TlsSetupError {
    TlsSetupError::Pem {
        key,
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

fn load_certs(
    key: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_err(key, path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_err(key, path, e))?;
    if certs.is_empty() {
        return Err(pem_err(key, path, "no certificate in file"));
    }
    Ok(certs)
}

impl TlsContexts {
    /// Loads certificates and keys named in `cfg`.
    pub fn load(cfg: &TlsConfig) -> Result<TlsContexts, TlsSetupError> {
        let (server, cert_not_after) = match (&cfg.cert, &cfg.key) {
            (Some(cert), Some(key)) => {
                let chain = load_certs("tls.cert", cert)?;
                let not_after = chain.first().and_then(|c| {
                    x509_parser::parse_x509_certificate(c.as_ref())
                        .ok()
                        .map(|(_, x)| x.validity().not_after.timestamp())
                });
                let pk =
                    PrivateKeyDer::from_pem_file(key).map_err(|e| pem_err("tls.key", key, e))?;
                let mut sc = ServerConfig::builder_with_provider(provider())
                    .with_safe_default_protocol_versions()
                    .map_err(|source| TlsSetupError::Rustls { key: "tls", source })?
                    .with_no_client_auth()
                    .with_single_cert(chain, pk)
                    .map_err(|source| TlsSetupError::Rustls {
                        key: "tls.key",
                        source,
                    })?;
                // Data connections resume the control connection's session: offer
                // both a session cache (TLS 1.2 session IDs) and tickets.
                sc.session_storage =
                    rustls::server::ServerSessionMemoryCache::new(SERVER_SESSION_CACHE);
                if let Ok(t) = rustls::crypto::ring::Ticketer::new() {
                    sc.ticketer = t;
                }
                (Some(Arc::new(sc)), not_after)
            }
            _ => (None, None),
        };
        // An escape hatch for backends whose TLS 1.3 session resumption is broken
        // (none of vsftpd 3.0.3 and pyftpdlib 1.5.7 as tested needs it).
        let versions: &[&rustls::SupportedProtocolVersion] = match cfg.backend_max_version {
            TlsVersion::Tls12 => &[&rustls::version::TLS12],
            TlsVersion::Tls13 => rustls::DEFAULT_VERSIONS,
        };
        let builder = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(versions)
            .map_err(|source| TlsSetupError::Rustls {
                key: "tls.backend_max_version",
                source,
            })?;
        let client = if cfg.backend_insecure {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoVerify(provider())))
                .with_no_client_auth()
        } else {
            let mut roots = RootCertStore::empty();
            let (key, path) = match &cfg.backend_ca {
                Some(p) => ("tls.backend_ca", p.as_path()),
                None => ("tls.backend_ca", Path::new(SYSTEM_ROOTS)),
            };
            // The system bundle may be absent on minimal hosts; only a configured CA
            // file must load.
            match load_certs(key, path) {
                Ok(certs) => {
                    roots.add_parsable_certificates(certs);
                }
                Err(e) if cfg.backend_ca.is_some() => return Err(e),
                Err(_) => {}
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        };
        Ok(TlsContexts {
            server,
            client: Arc::new(client),
            cert_not_after,
        })
    }

    /// The backend TLS client of one session: a private resumption store, so the
    /// session's data connections resume exactly its control connection's session
    /// (vsftpd `require_ssl_reuse=YES`, proftpd's default).
    pub fn backend_session(&self) -> TlsConnector {
        let mut c = (*self.client).clone();
        c.resumption = Resumption::in_memory_sessions(CLIENT_SESSIONS_PER_CONTROL);
        TlsConnector::from(Arc::new(c))
    }

    /// The acceptor for client-facing TLS, when a certificate is configured.
    pub fn acceptor(&self) -> Option<TlsAcceptor> {
        self.server.clone().map(TlsAcceptor::from)
    }
}

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// The name backend certificates are verified against: `tls.backend_server_name`, else
/// the backend's IP address.
pub fn backend_server_name(cfg: &TlsConfig, ip: std::net::IpAddr) -> ServerName<'static> {
    cfg.backend_server_name
        .as_deref()
        .and_then(|n| ServerName::try_from(n.to_owned()).ok())
        .unwrap_or_else(|| ServerName::IpAddress(ip.into()))
}

/// `--backend-tls-insecure`: accepts any backend certificate (signatures are still
/// checked, so the handshake itself is sound).
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A TCP stream, possibly inside TLS: ftpgate as the TLS server (towards clients) or
/// the TLS client (towards backends).
#[derive(Debug)]
pub enum MaybeTls {
    /// Clear text.
    Plain(TcpStream),
    /// ftpgate is the TLS server.
    Server(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// ftpgate is the TLS client.
    Client(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// What a completed handshake negotiated, for logs and metrics.
#[derive(Debug, Clone, Copy)]
pub struct Negotiated {
    /// `TLSv1_3`, `TLSv1_2`, …
    pub version: &'static str,
    /// Whether the handshake resumed an earlier session.
    pub resumed: bool,
}

impl MaybeTls {
    /// The TCP socket underneath.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            MaybeTls::Plain(s) => s,
            MaybeTls::Server(s) => s.get_ref().0,
            MaybeTls::Client(s) => s.get_ref().0,
        }
    }

    /// Whether the stream is TLS.
    pub fn is_tls(&self) -> bool {
        !matches!(self, MaybeTls::Plain(_))
    }

    /// What the handshake negotiated; `None` on clear text.
    pub fn negotiated(&self) -> Option<Negotiated> {
        let (version, kind) = match self {
            MaybeTls::Plain(_) => return None,
            MaybeTls::Server(s) => {
                let c = s.get_ref().1;
                (c.protocol_version(), c.handshake_kind())
            }
            MaybeTls::Client(s) => {
                let c = s.get_ref().1;
                (c.protocol_version(), c.handshake_kind())
            }
        };
        Some(Negotiated {
            version: version.and_then(|v| v.as_str()).unwrap_or("unknown"),
            resumed: kind == Some(rustls::HandshakeKind::Resumed),
        })
    }

    /// What a client handshake (ftpgate as the TLS server) negotiated, as a PROXY v2
    /// `PP2_TYPE_SSL` names it; `None` unless this is the client side in TLS.
    pub fn client_facts(&self) -> Option<crate::proxy_protocol::ClientTls> {
        let MaybeTls::Server(s) = self else {
            return None;
        };
        let c = s.get_ref().1;
        let version = match c.protocol_version()? {
            rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3",
            rustls::ProtocolVersion::TLSv1_2 => "TLSv1.2",
            _ => "unknown",
        };
        let suite = c.negotiated_cipher_suite()?.suite();
        Some(crate::proxy_protocol::ClientTls {
            version,
            cipher: crate::proxy_protocol::iana_cipher_name(suite.as_str().unwrap_or("unknown")),
            sni: c.server_name().map(str::to_owned),
        })
    }

    /// Upgrades a plain stream with ftpgate as the TLS server.
    pub async fn accept(self, acceptor: &TlsAcceptor) -> io::Result<MaybeTls> {
        match self {
            MaybeTls::Plain(s) => Ok(MaybeTls::Server(Box::new(acceptor.accept(s).await?))),
            other => Ok(other),
        }
    }

    /// Upgrades a plain stream with ftpgate as the TLS client.
    pub async fn connect(
        self,
        connector: &TlsConnector,
        name: ServerName<'static>,
    ) -> io::Result<MaybeTls> {
        match self {
            MaybeTls::Plain(s) => Ok(MaybeTls::Client(Box::new(
                connector.connect(name, s).await?,
            ))),
            other => Ok(other),
        }
    }
}

impl AsyncRead for MaybeTls {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_read(cx, buf),
            MaybeTls::Server(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            MaybeTls::Client(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for MaybeTls {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_write(cx, buf),
            MaybeTls::Server(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            MaybeTls::Client(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_flush(cx),
            MaybeTls::Server(s) => Pin::new(s.as_mut()).poll_flush(cx),
            MaybeTls::Client(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    /// On TLS: `close_notify`, then the TCP write side is shut.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_shutdown(cx),
            MaybeTls::Server(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            MaybeTls::Client(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
