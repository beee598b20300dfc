//! HAProxy's PROXY protocol (v1 text, v2 binary): reading the header a load balancer
//! puts in front of a connection, and writing one towards backends.
//!
//! ```text
//!   accepted connection ─ peer in proxy_protocol.accept_from? ─ no ─▶ peer is the client
//!                                        │ yes                        (a header from it
//!                                        ▼                             is FTP garbage,
//!   read exactly the header (v1: up to CRLF, ≤107 bytes; v2: 16 + len), never honoured)
//!   bounded by proxy_protocol.timeout ── malformed / slow / missing ──▶ close, counted
//!                                        │ ok
//!                                        ▼
//!   the header's source is the client: data-port check, PORT/EPRT bounce check,
//!   source-ip balancing, logs, access log
//! ```
//! Exactly the header's bytes are read (never more), so whatever the client sends
//! next — a `STOR`'s data on a data connection — stays in the socket for the relay.
//! Parsing is [`parse_proxy_header`], pure and fuzzable; the `ppp` crate does the
//! byte work.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::protocol::addr::canonical_ip;

/// v2's fixed part: 12-byte signature, version/command, family/protocol, 2-byte length.
const V2_FIXED: usize = 16;
/// v2 signature (HAProxy spec §2.2).
pub(crate) const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// v1 lines are at most 107 bytes including CRLF (spec §2.1).
const V1_MAX: usize = 107;
/// ftpgate reads at most this much v2 payload (addresses and TLVs): HAProxy sends a
/// few hundred bytes at most; 64 KiB from a trusted balancer would be a bug.
const V2_MAX_PAYLOAD: usize = 4096;

/// What a valid header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyHeader {
    /// A proxied TCP connection: the client's address and the one it connected to.
    Proxied {
        /// The real client.
        source: SocketAddr,
        /// The address the client connected to (the balancer's frontend).
        destination: SocketAddr,
    },
    /// v2 `LOCAL` or v1 `UNKNOWN`: the balancer's own connection (its health check);
    /// the connection's own addresses apply.
    Local,
}

/// Why a header was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// Not a PROXY header, or a broken one.
    #[error("malformed PROXY protocol header")]
    Malformed,
    /// A v2 header announcing more than ftpgate reads.
    #[error("PROXY protocol header too long")]
    TooLong,
    /// A header for UDP or UNIX sockets: meaningless for an FTP connection.
    #[error("PROXY protocol header for a non-TCP connection")]
    NotTcp,
}

/// Parses a header at the start of `buf`: `Ok(None)` when more bytes are needed,
/// else the header and its length in bytes. Pure, and safe on any input (the fuzz
/// target calls it).
pub fn parse_proxy_header(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, HeaderError> {
    if buf.is_empty() {
        return Ok(None);
    }
    let sig_len = buf.len().min(V2_SIGNATURE.len());
    if buf.get(..sig_len) == V2_SIGNATURE.get(..sig_len) {
        return parse_v2(buf);
    }
    let v1_prefix = b"PROXY ";
    let pre = buf.len().min(v1_prefix.len());
    if buf.get(..pre) == v1_prefix.get(..pre) {
        return parse_v1(buf);
    }
    Err(HeaderError::Malformed)
}

fn parse_v2(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, HeaderError> {
    let Some(fixed) = buf.get(..V2_FIXED) else {
        return Ok(None);
    };
    let payload = usize::from(u16::from_be_bytes([fixed[14], fixed[15]]));
    if payload > V2_MAX_PAYLOAD {
        return Err(HeaderError::TooLong);
    }
    let total = V2_FIXED + payload;
    let Some(whole) = buf.get(..total) else {
        return Ok(None);
    };
    let h = ppp::v2::Header::try_from(whole).map_err(|_| HeaderError::Malformed)?;
    let header = match (h.command, h.addresses) {
        (ppp::v2::Command::Local, _) => ProxyHeader::Local,
        (_, _) if h.protocol != ppp::v2::Protocol::Stream => {
            return Err(HeaderError::NotTcp);
        }
        (ppp::v2::Command::Proxy, ppp::v2::Addresses::IPv4(a)) => ProxyHeader::Proxied {
            source: SocketAddr::from((a.source_address, a.source_port)),
            destination: SocketAddr::from((a.destination_address, a.destination_port)),
        },
        (ppp::v2::Command::Proxy, ppp::v2::Addresses::IPv6(a)) => ProxyHeader::Proxied {
            source: SocketAddr::from((a.source_address, a.source_port)),
            destination: SocketAddr::from((a.destination_address, a.destination_port)),
        },
        (ppp::v2::Command::Proxy, ppp::v2::Addresses::Unspecified) => ProxyHeader::Local,
        (ppp::v2::Command::Proxy, ppp::v2::Addresses::Unix(_)) => return Err(HeaderError::NotTcp),
    };
    Ok(Some((header, total)))
}

fn parse_v1(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, HeaderError> {
    let window = buf.get(..buf.len().min(V1_MAX)).unwrap_or(buf);
    let Some(nl) = window.iter().position(|&b| b == b'\n') else {
        return if buf.len() >= V1_MAX {
            Err(HeaderError::Malformed)
        } else {
            Ok(None)
        };
    };
    let line = window.get(..=nl).unwrap_or(window);
    let h = ppp::v1::Header::try_from(line).map_err(|_| HeaderError::Malformed)?;
    if h.header.len() != line.len() {
        return Err(HeaderError::Malformed);
    }
    let header = match h.addresses {
        ppp::v1::Addresses::Unknown => ProxyHeader::Local,
        ppp::v1::Addresses::Tcp4(a) => ProxyHeader::Proxied {
            source: SocketAddr::from((a.source_address, a.source_port)),
            destination: SocketAddr::from((a.destination_address, a.destination_port)),
        },
        ppp::v1::Addresses::Tcp6(a) => ProxyHeader::Proxied {
            source: SocketAddr::from((a.source_address, a.source_port)),
            destination: SocketAddr::from((a.destination_address, a.destination_port)),
        },
    };
    Ok(Some((header, line.len())))
}

/// Why no header was read from a connection.
#[derive(Debug, thiserror::Error)]
pub enum ReadHeaderError {
    /// The bytes are not a valid header.
    #[error(transparent)]
    Header(#[from] HeaderError),
    /// The header did not arrive within `proxy_protocol.timeout`.
    #[error("no complete PROXY protocol header in time")]
    Timeout,
    /// The connection failed or closed first.
    #[error("reading the PROXY protocol header: {0}")]
    Io(#[from] io::Error),
}

impl ReadHeaderError {
    /// The `result` label of `ftpgate_proxy_headers_total`.
    pub fn label(&self) -> &'static str {
        match self {
            ReadHeaderError::Header(_) => "malformed",
            ReadHeaderError::Timeout => "timeout",
            ReadHeaderError::Io(_) => "closed",
        }
    }
}

/// Reads exactly one header from `r` (never a byte beyond it), within `timeout`.
pub async fn read_proxy_header<R: AsyncRead + Unpin>(
    r: &mut R,
    timeout: Duration,
) -> Result<ProxyHeader, ReadHeaderError> {
    tokio::time::timeout(timeout, read_exact_header(r))
        .await
        .unwrap_or(Err(ReadHeaderError::Timeout))
}

async fn read_exact_header<R: AsyncRead + Unpin>(
    r: &mut R,
) -> Result<ProxyHeader, ReadHeaderError> {
    // 8 bytes are in every header (v1's shortest is 15, v2's 16) and tell them apart.
    let mut buf = vec![0u8; 8];
    r.read_exact(&mut buf).await?;
    loop {
        if let Some((header, _)) = parse_proxy_header(&buf)? {
            return Ok(header);
        }
        // How much more is certainly part of the header: v2 says its length after
        // 16 bytes; v1 is read a byte at a time up to its LF (at most 107).
        let more = if buf.starts_with(V2_SIGNATURE.get(..8).unwrap_or_default()) {
            if buf.len() < V2_FIXED {
                V2_FIXED - buf.len()
            } else {
                let len = buf
                    .get(14..16)
                    .map_or(0, |b| usize::from(u16::from_be_bytes([b[0], b[1]])));
                (V2_FIXED + len).saturating_sub(buf.len()).max(1)
            }
        } else {
            1
        };
        let at = buf.len();
        buf.resize(at + more, 0);
        r.read_exact(buf.get_mut(at..).unwrap_or_default()).await?;
    }
}

/// The header version ftpgate sends to backends (`backend_proxy_protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ProxyVersion {
    /// Text: `PROXY TCP4 <src> <dst> <sport> <dport>\r\n`.
    V1,
    /// Binary.
    V2,
}

/// A header naming `source` (the real client) and `destination` (where it
/// connected). An IPv4 address facing an IPv6 one is written as IPv4-mapped IPv6, as
/// both versions need one family.
pub fn encode_proxy_header(
    version: ProxyVersion,
    source: SocketAddr,
    destination: SocketAddr,
) -> Vec<u8> {
    let (source, destination) = same_family(source, destination);
    match version {
        ProxyVersion::V1 => ppp::v1::Addresses::from((source, destination))
            .to_string()
            .into_bytes(),
        ProxyVersion::V2 => ppp::v2::Builder::with_addresses(
            ppp::v2::Version::Two | ppp::v2::Command::Proxy,
            ppp::v2::Protocol::Stream,
            (source, destination),
        )
        .build()
        // Building from two addresses of one family cannot fail; LOCAL if it did.
        .unwrap_or_else(|_| local_v2()),
    }
}

/// The client's TLS session as a v2 header describes it (HAProxy spec §2.2.5, the
/// `PP2_TYPE_SSL` TLV): known when the client side is TLS at the time ftpgate writes
/// the header (implicit FTPS, or `balance: user` after `AUTH TLS`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTls {
    /// `PP2_SUBTYPE_SSL_VERSION`: `TLSv1.3`, `TLSv1.2` (OpenSSL's spelling, as
    /// HAProxy sends it).
    pub version: &'static str,
    /// `PP2_SUBTYPE_SSL_CIPHER`: the IANA name (`TLS_AES_256_GCM_SHA384`,
    /// `TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256`).
    pub cipher: String,
    /// The SNI the client sent: `PP2_TYPE_AUTHORITY`.
    pub sni: Option<String>,
}

/// `PP2_TYPE_AUTHORITY` (spec §2.2.2).
pub const PP2_TYPE_AUTHORITY: u8 = 0x02;
/// `PP2_TYPE_SSL` (spec §2.2.5).
pub const PP2_TYPE_SSL: u8 = 0x20;
/// `PP2_SUBTYPE_SSL_VERSION`.
pub const PP2_SUBTYPE_SSL_VERSION: u8 = 0x21;
/// `PP2_SUBTYPE_SSL_CIPHER`.
pub const PP2_SUBTYPE_SSL_CIPHER: u8 = 0x23;
/// `PP2_CLIENT_SSL`: the client connected over TLS.
pub const PP2_CLIENT_SSL: u8 = 0x01;

/// rustls names TLS 1.3 suites `TLS13_…`; RFC 8446 (and OpenSSL, and HAProxy) say
/// `TLS_…`. TLS 1.2 names are already IANA's.
pub fn iana_cipher_name(rustls_name: &str) -> String {
    match rustls_name.strip_prefix("TLS13_") {
        Some(rest) => format!("TLS_{rest}"),
        None => rustls_name.to_owned(),
    }
}

/// [`encode_proxy_header`], and with v2 the client's TLS session as TLVs:
/// `PP2_TYPE_AUTHORITY` (the SNI, when sent) and `PP2_TYPE_SSL` with `PP2_CLIENT_SSL`
/// and the version and cipher sub-TLVs. v1 has no TLVs: `tls` is ignored.
pub fn encode_proxy_header_tls(
    version: ProxyVersion,
    source: SocketAddr,
    destination: SocketAddr,
    tls: Option<&ClientTls>,
) -> Vec<u8> {
    let Some(tls) = tls.filter(|_| version == ProxyVersion::V2) else {
        return encode_proxy_header(version, source, destination);
    };
    let (source, destination) = same_family(source, destination);
    let mut builder = ppp::v2::Builder::with_addresses(
        ppp::v2::Version::Two | ppp::v2::Command::Proxy,
        ppp::v2::Protocol::Stream,
        (source, destination),
    );
    // Values longer than a TLV holds cannot come from rustls; such a TLV is left out.
    let fits = |v: &[u8]| v.len() <= usize::from(u16::MAX) - 64;
    if let Some(sni) = tls.sni.as_deref().filter(|s| fits(s.as_bytes())) {
        builder = match builder.write_tlv(PP2_TYPE_AUTHORITY, sni.as_bytes()) {
            Ok(b) => b,
            Err(_) => return encode_proxy_header(version, source, destination),
        };
    }
    let ssl = ssl_tlv_value(tls);
    if fits(&ssl) {
        builder = match builder.write_tlv(PP2_TYPE_SSL, &ssl) {
            Ok(b) => b,
            Err(_) => return encode_proxy_header(version, source, destination),
        };
    }
    builder
        .build()
        .unwrap_or_else(|_| encode_proxy_header(version, source, destination))
}

/// The value of a `PP2_TYPE_SSL` TLV: `client` flags, a 32-bit `verify` (spec: zero
/// only when the client presented a certificate that was verified; ftpgate asks for
/// none, so 1), then sub-TLVs.
fn ssl_tlv_value(tls: &ClientTls) -> Vec<u8> {
    let mut v = vec![PP2_CLIENT_SSL];
    v.extend(1u32.to_be_bytes());
    for (kind, value) in [
        (PP2_SUBTYPE_SSL_VERSION, tls.version.as_bytes()),
        (PP2_SUBTYPE_SSL_CIPHER, tls.cipher.as_bytes()),
    ] {
        let len = u16::try_from(value.len()).unwrap_or(0);
        v.push(kind);
        v.extend(len.to_be_bytes());
        v.extend(value.get(..usize::from(len)).unwrap_or_default());
    }
    v
}

/// The header of a connection made on ftpgate's own behalf (health checks): v2
/// `LOCAL`, v1 `UNKNOWN`; the receiver uses the connection's own addresses.
pub fn encode_local_header(version: ProxyVersion) -> Vec<u8> {
    match version {
        ProxyVersion::V1 => b"PROXY UNKNOWN\r\n".to_vec(),
        ProxyVersion::V2 => local_v2(),
    }
}

fn local_v2() -> Vec<u8> {
    let mut v = V2_SIGNATURE.to_vec();
    v.extend([0x20, 0x00, 0x00, 0x00]);
    v
}

/// Both addresses in one family (IPv4-mapped IPv6 when they differ), as headers need.
pub(crate) fn same_family(a: SocketAddr, b: SocketAddr) -> (SocketAddr, SocketAddr) {
    let canon = |s: SocketAddr| SocketAddr::new(canonical_ip(s.ip()), s.port());
    let (a, b) = (canon(a), canon(b));
    let v6 = |s: SocketAddr| match s {
        SocketAddr::V4(v4) => SocketAddr::new(v4.ip().to_ipv6_mapped().into(), v4.port()),
        v6 => v6,
    };
    if a.is_ipv4() == b.is_ipv4() {
        (a, b)
    } else {
        (v6(a), v6(b))
    }
}

/// YAML `proxy_protocol:`: who may (and then must) send a header.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyProtocolConfig {
    /// Sources (load balancers) whose connections begin with a header, on the control
    /// port and the data ports alike. Empty: PROXY protocol is off.
    pub accept_from: Vec<IpNet>,
    /// How long a trusted source has to deliver its whole header.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for ProxyProtocolConfig {
    fn default() -> Self {
        ProxyProtocolConfig {
            accept_from: Vec::new(),
            timeout: Duration::from_secs(3),
        }
    }
}

impl ProxyProtocolConfig {
    /// Whether a connection from `peer` must begin with a header.
    pub fn expects_header(&self, peer: std::net::IpAddr) -> bool {
        let ip = canonical_ip(peer);
        self.accept_from.iter().any(|n| n.contains(&ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn headers_as_balancers_send_them() {
        let v2 = encode_proxy_header(
            ProxyVersion::V2,
            a("198.51.100.7:40000"),
            a("203.0.113.1:21"),
        );
        let v2_6 = encode_proxy_header(
            ProxyVersion::V2,
            a("[2001:db8::7]:40000"),
            a("[2001:db8::1]:21"),
        );
        type Parsed = Result<Option<(ProxyHeader, usize)>, HeaderError>;
        let table: Vec<(&str, Vec<u8>, Parsed)> = vec![
            // haproxy send-proxy
            (
                "v1 tcp4",
                b"PROXY TCP4 198.51.100.7 203.0.113.1 40000 21\r\nUSER x".to_vec(),
                Ok(Some((
                    ProxyHeader::Proxied {
                        source: a("198.51.100.7:40000"),
                        destination: a("203.0.113.1:21"),
                    },
                    46,
                ))),
            ),
            (
                "v1 tcp6",
                b"PROXY TCP6 2001:db8::7 2001:db8::1 40000 21\r\n".to_vec(),
                Ok(Some((
                    ProxyHeader::Proxied {
                        source: a("[2001:db8::7]:40000"),
                        destination: a("[2001:db8::1]:21"),
                    },
                    45,
                ))),
            ),
            // A balancer's own health check.
            (
                "v1 unknown",
                b"PROXY UNKNOWN\r\n".to_vec(),
                Ok(Some((ProxyHeader::Local, 15))),
            ),
            // haproxy send-proxy-v2, and AWS NLB (v2 with TLVs would be longer).
            (
                "v2 tcp4",
                v2.clone(),
                Ok(Some((
                    ProxyHeader::Proxied {
                        source: a("198.51.100.7:40000"),
                        destination: a("203.0.113.1:21"),
                    },
                    28,
                ))),
            ),
            (
                "v2 tcp6",
                v2_6.clone(),
                Ok(Some((
                    ProxyHeader::Proxied {
                        source: a("[2001:db8::7]:40000"),
                        destination: a("[2001:db8::1]:21"),
                    },
                    52,
                ))),
            ),
            ("v2 local", local_v2(), Ok(Some((ProxyHeader::Local, 16)))),
            ("v2 partial", v2[..20].to_vec(), Ok(None)),
            ("v1 partial", b"PROXY TCP4 198.51".to_vec(), Ok(None)),
            // A client that is not behind the balancer speaks FTP at once.
            (
                "plain FTP",
                b"USER anonymous\r\n".to_vec(),
                Err(HeaderError::Malformed),
            ),
            (
                "v1 garbage",
                b"PROXY TCP4 nonsense\r\n".to_vec(),
                Err(HeaderError::Malformed),
            ),
            (
                "v1 no end",
                [b"PROXY TCP4 ".as_slice(), &[b'1'; 120]].concat(),
                Err(HeaderError::Malformed),
            ),
            (
                "v2 huge",
                [V2_SIGNATURE.as_slice(), &[0x21, 0x11, 0xff, 0xff]].concat(),
                Err(HeaderError::TooLong),
            ),
            (
                "v2 udp",
                [V2_SIGNATURE.as_slice(), &[0x21, 0x12, 0, 12], &[0; 12]].concat(),
                Err(HeaderError::NotTcp),
            ),
        ];
        for (name, bytes, want) in table {
            assert_eq!(parse_proxy_header(&bytes), want, "{name}");
        }
    }

    #[test]
    fn mixed_families_are_sent_as_mapped_ipv6() {
        let h = encode_proxy_header(ProxyVersion::V1, a("[2001:db8::7]:1"), a("10.0.0.1:21"));
        assert_eq!(h, b"PROXY TCP6 2001:db8::7 ::ffff:10.0.0.1 1 21\r\n");
    }

    /// Sub-TLVs of a `PP2_TYPE_SSL` value (after `client` and `verify`).
    fn sub_tlvs(ssl: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut out = Vec::new();
        let mut rest = &ssl[5..];
        while !rest.is_empty() {
            let len = usize::from(u16::from_be_bytes([rest[1], rest[2]]));
            out.push((rest[0], rest[3..3 + len].to_vec()));
            rest = &rest[3 + len..];
        }
        out
    }

    #[test]
    fn a_tls_client_is_described_in_v2_tlvs_as_haproxy_does() {
        let tls = ClientTls {
            version: "TLSv1.3",
            cipher: iana_cipher_name("TLS13_AES_256_GCM_SHA384"),
            sni: Some("ftp.example.net".into()),
        };
        let bytes = encode_proxy_header_tls(
            ProxyVersion::V2,
            a("198.51.100.7:40000"),
            a("203.0.113.1:990"),
            Some(&tls),
        );
        // ppp decodes what ftpgate encodes; ftpgate's own parser still takes it.
        let h = ppp::v2::Header::try_from(&bytes[..]).unwrap();
        assert_eq!(h.len(), bytes.len());
        let tlvs: Vec<_> = h.tlvs().map(|t| t.unwrap()).collect();
        assert_eq!(tlvs.len(), 2, "{tlvs:?}");
        assert_eq!(tlvs[0].kind, PP2_TYPE_AUTHORITY);
        assert_eq!(&tlvs[0].value[..], b"ftp.example.net");
        assert_eq!(tlvs[1].kind, u8::from(ppp::v2::Type::SSL));
        let ssl = &tlvs[1].value;
        assert_eq!(ssl[0], PP2_CLIENT_SSL);
        assert_ne!(
            &ssl[1..5],
            &[0, 0, 0, 0],
            "no client certificate: not verified"
        );
        assert_eq!(
            sub_tlvs(ssl),
            vec![
                (u8::from(ppp::v2::Type::SSLVersion), b"TLSv1.3".to_vec()),
                (
                    u8::from(ppp::v2::Type::SSLCipher),
                    b"TLS_AES_256_GCM_SHA384".to_vec()
                ),
            ]
        );
        assert!(matches!(
            parse_proxy_header(&bytes),
            Ok(Some((ProxyHeader::Proxied { source, .. }, n))) if source == a("198.51.100.7:40000") && n == bytes.len()
        ));
        // No SNI (a client connecting by address): no authority TLV.
        let bare = ClientTls {
            sni: None,
            ..tls.clone()
        };
        let h2 = encode_proxy_header_tls(
            ProxyVersion::V2,
            a("198.51.100.7:40000"),
            a("203.0.113.1:990"),
            Some(&bare),
        );
        let kinds: Vec<u8> = ppp::v2::Header::try_from(&h2[..])
            .unwrap()
            .tlvs()
            .map(|t| t.unwrap().kind)
            .collect();
        assert_eq!(kinds, vec![PP2_TYPE_SSL]);
        // v1 has no TLVs; a clear client gets the plain header.
        assert_eq!(
            encode_proxy_header_tls(
                ProxyVersion::V1,
                a("198.51.100.7:1"),
                a("203.0.113.1:21"),
                Some(&tls)
            ),
            encode_proxy_header(ProxyVersion::V1, a("198.51.100.7:1"), a("203.0.113.1:21"))
        );
        assert_eq!(
            encode_proxy_header_tls(
                ProxyVersion::V2,
                a("198.51.100.7:1"),
                a("203.0.113.1:21"),
                None
            ),
            encode_proxy_header(ProxyVersion::V2, a("198.51.100.7:1"), a("203.0.113.1:21"))
        );
        assert_eq!(
            iana_cipher_name("TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"),
            "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"
        );
    }

    #[tokio::test]
    async fn reads_exactly_the_header_and_leaves_the_data() {
        let v2 = encode_proxy_header(
            ProxyVersion::V2,
            a("198.51.100.7:40000"),
            a("203.0.113.1:50000"),
        );
        for header in [
            v2,
            b"PROXY TCP4 198.51.100.7 203.0.113.1 40000 50000\r\n".to_vec(),
        ] {
            // A STOR's first bytes arrive in the same segment as the header.
            let mut input: &[u8] = &[header.as_slice(), b"file body"].concat();
            let h = read_proxy_header(&mut input, Duration::from_secs(1))
                .await
                .unwrap();
            assert!(
                matches!(h, ProxyHeader::Proxied { source, .. } if source == a("198.51.100.7:40000"))
            );
            assert_eq!(input, b"file body");
        }
    }

    #[tokio::test]
    async fn a_slow_header_times_out() {
        let (mut rx, mut tx) = tokio::io::duplex(64);
        use tokio::io::AsyncWriteExt;
        tx.write_all(b"PROXY TCP4 198.51").await.unwrap();
        let e = read_proxy_header(&mut rx, Duration::from_millis(50))
            .await
            .unwrap_err();
        assert_eq!(e.label(), "timeout");
    }
}
