//! The header a replica puts in front of a forwarded data connection: PROXY v2 (the
//! original client, and the address and data port it connected to) plus a custom TLV
//! naming the forwarding replica's ordinal, so the owner can count by peer. Pure;
//! the bytes are `ppp`'s.

use std::net::SocketAddr;

use crate::protocol::addr::canonical_ip;
use crate::proxy_protocol::{same_family, HeaderError};

/// PP2_TYPE_MIN_CUSTOM (0xE0): the forwarding replica's ordinal, 2 bytes big-endian.
pub const TLV_PEER_ORDINAL: u8 = 0xE0;

/// v2's fixed part: signature, version/command, family, 2-byte length.
pub const FIXED_LEN: usize = 16;

/// ftpgate reads at most this much header payload from a peer (its own headers are
/// 40 bytes: addresses and one TLV).
const MAX_PAYLOAD: usize = 512;

/// What a forwarded connection's header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forwarded {
    /// The original client (canonical: IPv4-mapped addresses as IPv4).
    pub client: SocketAddr,
    /// Where the client connected on the forwarding replica: its port is the data port.
    pub destination: SocketAddr,
    /// The forwarding replica's ordinal.
    pub from: u16,
}

/// The header for a connection from `client` to `destination` forwarded by replica
/// `from`.
pub fn encode(client: SocketAddr, destination: SocketAddr, from: u16) -> Vec<u8> {
    let (s, d) = same_family(client, destination);
    ppp::v2::Builder::with_addresses(
        ppp::v2::Version::Two | ppp::v2::Command::Proxy,
        ppp::v2::Protocol::Stream,
        (s, d),
    )
    .write_tlv(TLV_PEER_ORDINAL, &from.to_be_bytes())
    .and_then(ppp::v2::Builder::build)
    // Writing to a Vec and two addresses of one family cannot fail.
    .unwrap_or_default()
}

/// The payload length a fixed part announces, or an error when `fixed` is not a v2
/// PROXY header's start (or announces more than ftpgate reads from a peer).
pub fn payload_len(fixed: &[u8; FIXED_LEN]) -> Result<usize, HeaderError> {
    if !fixed.starts_with(crate::proxy_protocol::V2_SIGNATURE) {
        return Err(HeaderError::Malformed);
    }
    let len = usize::from(u16::from_be_bytes([fixed[14], fixed[15]]));
    if len > MAX_PAYLOAD {
        return Err(HeaderError::TooLong);
    }
    Ok(len)
}

/// Decodes a whole header (fixed part and payload). Only what [`encode`] writes is
/// accepted: v2 `PROXY` over TCP with the ordinal TLV. Safe on any input.
pub fn decode(whole: &[u8]) -> Result<Forwarded, HeaderError> {
    let h = ppp::v2::Header::try_from(whole).map_err(|_| HeaderError::Malformed)?;
    if h.command != ppp::v2::Command::Proxy || h.protocol != ppp::v2::Protocol::Stream {
        return Err(HeaderError::NotTcp);
    }
    let (client, destination) = match h.addresses {
        ppp::v2::Addresses::IPv4(a) => (
            SocketAddr::from((a.source_address, a.source_port)),
            SocketAddr::from((a.destination_address, a.destination_port)),
        ),
        ppp::v2::Addresses::IPv6(a) => (
            SocketAddr::from((a.source_address, a.source_port)),
            SocketAddr::from((a.destination_address, a.destination_port)),
        ),
        _ => return Err(HeaderError::NotTcp),
    };
    let mut from = None;
    for tlv in h.tlvs() {
        let tlv = tlv.map_err(|_| HeaderError::Malformed)?;
        if tlv.kind == TLV_PEER_ORDINAL {
            let bytes: [u8; 2] = tlv
                .value
                .as_ref()
                .try_into()
                .map_err(|_| HeaderError::Malformed)?;
            from = Some(u16::from_be_bytes(bytes));
        }
    }
    let canon = |s: SocketAddr| SocketAddr::new(canonical_ip(s.ip()), s.port());
    Ok(Forwarded {
        client: canon(client),
        destination: canon(destination),
        from: from.ok_or(HeaderError::Malformed)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(client: &str, dst: &str, from: u16) -> Forwarded {
        let bytes = encode(client.parse().unwrap(), dst.parse().unwrap(), from);
        let fixed: [u8; FIXED_LEN] = bytes[..FIXED_LEN].try_into().unwrap();
        assert_eq!(FIXED_LEN + payload_len(&fixed).unwrap(), bytes.len());
        decode(&bytes).unwrap()
    }

    #[test]
    fn what_is_encoded_decodes() {
        let f = roundtrip("198.51.100.7:40123", "10.0.0.2:50130", 1);
        assert_eq!(f.client, "198.51.100.7:40123".parse().unwrap());
        assert_eq!(f.destination.port(), 50130);
        assert_eq!(f.from, 1);
        let f = roundtrip("[2001:db8::7]:40123", "[2001:db8::2]:50130", 65535);
        assert_eq!(f.client, "[2001:db8::7]:40123".parse().unwrap());
        assert_eq!(f.from, 65535);
    }

    #[test]
    fn mixed_families_come_back_as_ipv4() {
        let f = roundtrip("198.51.100.7:40123", "[2001:db8::2]:50130", 2);
        assert_eq!(f.client, "198.51.100.7:40123".parse().unwrap());
        assert_eq!(f.destination.port(), 50130);
    }

    #[test]
    fn a_balancer_header_without_the_ordinal_is_refused() {
        let plain = crate::proxy_protocol::encode_proxy_header(
            crate::proxy_protocol::ProxyVersion::V2,
            "198.51.100.7:40123".parse().unwrap(),
            "10.0.0.2:50130".parse().unwrap(),
        );
        assert_eq!(decode(&plain), Err(HeaderError::Malformed));
        let local =
            crate::proxy_protocol::encode_local_header(crate::proxy_protocol::ProxyVersion::V2);
        assert_eq!(decode(&local), Err(HeaderError::NotTcp));
    }

    #[test]
    fn fixed_part_checks() {
        let mut fixed = [0u8; FIXED_LEN];
        assert_eq!(payload_len(&fixed), Err(HeaderError::Malformed));
        fixed[..12].copy_from_slice(b"\r\n\r\n\0\r\nQUIT\n");
        fixed[14..16].copy_from_slice(&600u16.to_be_bytes());
        assert_eq!(payload_len(&fixed), Err(HeaderError::TooLong));
        let v1 = *b"PROXY TCP4 1.2.3";
        assert_eq!(payload_len(&v1), Err(HeaderError::Malformed));
    }

    #[test]
    fn truncated_and_garbled_headers_never_panic() {
        let bytes = encode(
            "198.51.100.7:40123".parse().unwrap(),
            "10.0.0.2:50130".parse().unwrap(),
            3,
        );
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        for i in 12..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0xFF;
            let _ = decode(&b);
        }
    }
}
