//! TLS for the probe (rustls, ring provider). The handshake always proceeds so
//! the certificate can be inspected; whether it verified against the trust
//! roots is recorded and judged by [`super::diagnose`].

use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::conn::Io;
use super::facts::{CertFacts, IoFailure, Outcome, TlsSession};

/// System trust roots (Debian's ca-certificates bundle), used without `--ca-file`.
const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";

#[derive(Debug)]
struct Recorder {
    inner: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
    verdict: Mutex<Option<Result<(), String>>>,
}

impl ServerCertVerifier for Recorder {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verdict = match &self.inner {
            None => Err("no trust roots".to_owned()),
            Some(v) => v
                .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
                .map(|_| ())
                .map_err(|e| e.to_string()),
        };
        if let Ok(mut slot) = self.verdict.lock() {
            *slot = Some(verdict);
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A TLS client for one probe: the control connection and its data
/// connections share it (and so its session cache, for servers that require
/// data connections to resume the control session).
pub struct TlsClient {
    connector: TlsConnector,
    recorder: Arc<Recorder>,
    host: String,
}

/// Why the TLS client could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// `--ca-file` could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file's path as given.
        path: String,
        /// The read error.
        source: std::io::Error,
    },
    /// rustls rejected the configuration.
    #[error("{0}")]
    Rustls(#[from] rustls::Error),
}

impl TlsClient {
    /// A client for `host`, trusting the CAs in `ca_file`, else the system bundle.
    pub fn new(host: &str, ca_file: Option<&Path>) -> Result<TlsClient, TlsSetupError> {
        // The ring provider (no C build); deprecated only for lacking post-quantum key exchange.
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        let path = ca_file.unwrap_or(Path::new(SYSTEM_ROOTS));
        match std::fs::read(path) {
            Ok(pem) => {
                for cert in CertificateDer::pem_slice_iter(&pem).flatten() {
                    let _ = roots.add(cert);
                }
            }
            Err(source) if ca_file.is_some() => {
                return Err(TlsSetupError::Read {
                    path: path.display().to_string(),
                    source,
                })
            }
            Err(_) => {}
        }
        let inner = if roots.is_empty() {
            None
        } else {
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .ok()
        };
        let recorder = Arc::new(Recorder {
            inner,
            provider: provider.clone(),
            verdict: Mutex::new(None),
        });
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(recorder.clone())
            .with_no_client_auth();
        Ok(TlsClient {
            connector: TlsConnector::from(Arc::new(config)),
            recorder,
            host: host.to_owned(),
        })
    }

    fn server_name(&self) -> Outcome<ServerName<'static>> {
        ServerName::try_from(self.host.clone()).map_err(|e| IoFailure::Tls {
            detail: format!("{}: {e}", self.host),
        })
    }

    /// Handshake on the control connection; returns the stream and the session facts.
    pub async fn control(
        &self,
        io: Box<dyn Io>,
        limit: std::time::Duration,
    ) -> Outcome<(Box<dyn Io>, TlsSession)> {
        let name = self.server_name()?;
        let tls = super::conn::bounded(limit, self.connector.connect(name, io)).await?;
        let (_, conn) = tls.get_ref();
        let session = TlsSession {
            protocol: conn
                .protocol_version()
                .map(|v| format!("{v:?}").replace('_', "."))
                .unwrap_or_default(),
            cipher: conn
                .negotiated_cipher_suite()
                .map(|s| format!("{:?}", s.suite()))
                .unwrap_or_default(),
            cert: conn
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|der| self.cert_facts(der)),
        };
        Ok((Box::new(tls), session))
    }

    /// Handshake on a data connection.
    pub async fn data(
        &self,
        tcp: TcpStream,
        limit: std::time::Duration,
    ) -> Outcome<tokio_rustls::client::TlsStream<TcpStream>> {
        let name = self.server_name()?;
        super::conn::bounded(limit, self.connector.connect(name, tcp)).await
    }

    fn cert_facts(&self, der: &CertificateDer<'_>) -> CertFacts {
        let trusted = self
            .recorder
            .verdict
            .lock()
            .ok()
            .and_then(|v| v.clone())
            .unwrap_or_else(|| Err("not verified".into()));
        match x509_parser::parse_x509_certificate(der.as_ref()) {
            Ok((_, cert)) => {
                let mut names = Vec::new();
                if let Ok(Some(san)) = cert.subject_alternative_name() {
                    for n in &san.value.general_names {
                        match n {
                            x509_parser::extensions::GeneralName::DNSName(d) => {
                                names.push((*d).to_owned())
                            }
                            x509_parser::extensions::GeneralName::IPAddress(b) => {
                                if let Some(ip) = ip_from_bytes(b) {
                                    names.push(ip.to_string());
                                }
                            }
                            _ => {}
                        }
                    }
                }
                if names.is_empty() {
                    for cn in cert.subject().iter_common_name() {
                        if let Ok(s) = cn.as_str() {
                            names.push(s.to_owned());
                        }
                    }
                }
                let not_after = cert.validity().not_after;
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
                    .unwrap_or_default();
                CertFacts {
                    subject: cert.subject().to_string(),
                    issuer: cert.issuer().to_string(),
                    not_after: not_after.to_string(),
                    days_left: (not_after.timestamp() - now).div_euclid(86_400),
                    name_matches: names.iter().any(|n| name_matches(n, &self.host)),
                    names,
                    trusted,
                }
            }
            Err(e) => CertFacts {
                subject: format!("(unparsable certificate: {e})"),
                issuer: String::new(),
                not_after: String::new(),
                days_left: 0,
                names: Vec::new(),
                name_matches: false,
                trusted,
            },
        }
    }
}

fn ip_from_bytes(b: &[u8]) -> Option<IpAddr> {
    match b.len() {
        4 => <[u8; 4]>::try_from(b).ok().map(IpAddr::from),
        16 => <[u8; 16]>::try_from(b).ok().map(IpAddr::from),
        _ => None,
    }
}

/// Whether certificate name `pattern` covers `host` (IP literals compared as
/// addresses, DNS case-insensitively, `*.` only as the whole leftmost label).
pub fn name_matches(pattern: &str, host: &str) -> bool {
    if let (Ok(a), Ok(b)) = (pattern.parse::<IpAddr>(), host.parse::<IpAddr>()) {
        return a == b;
    }
    let pattern = pattern.trim_end_matches('.').to_ascii_lowercase();
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    match pattern.strip_prefix("*.") {
        Some(rest) => host
            .split_once('.')
            .is_some_and(|(label, domain)| !label.is_empty() && domain == rest),
        None => pattern == host,
    }
}

#[cfg(test)]
mod tests {
    use super::name_matches;

    #[test]
    fn names() {
        for (pattern, host, ok) in [
            ("ftp.example.com", "FTP.example.com", true),
            ("*.example.com", "ftp.example.com", true),
            ("*.example.com", "a.b.example.com", false),
            ("*.example.com", "example.com", false),
            ("203.0.113.1", "203.0.113.1", true),
            ("203.0.113.1", "203.0.113.2", false),
            ("ftp.example.com", "203.0.113.1", false),
        ] {
            assert_eq!(name_matches(pattern, host), ok, "{pattern} vs {host}");
        }
    }
}
