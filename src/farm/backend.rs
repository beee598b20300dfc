//! Backends as configured: `host:port` names or addresses, with a weight and a drain
//! flag. YAML accepts the plain string (`"10.0.0.2:21"`) and the map form
//! (`{address: "ftp-0.ftp.svc:21", weight: 2, drain: true}`); `--backend` the string.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use serde::Deserialize;

/// Weight of a backend written without one.
pub const DEFAULT_WEIGHT: u32 = 1;

/// Why a backend entry is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendSpecError {
    /// No `:port` (an IPv6 address needs brackets: `[2001:db8::1]:21`).
    #[error("{0}: expected host:port or ip:port (IPv6 in brackets)")]
    NoPort(String),
    /// The port is not a number in 1..=65535.
    #[error("{0}: port must be 1-65535")]
    BadPort(String),
    /// The host part is empty or not a plausible DNS name.
    #[error("{0}: not an address or host name")]
    BadHost(String),
    /// A weight of 0 would never be chosen: say `drain: true` instead.
    #[error("{0}: weight must be at least 1 (use drain: true to take no new sessions)")]
    ZeroWeight(String),
}

/// Where a backend is: a literal address, or a name resolved (and re-resolved) into
/// one member per A/AAAA record.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum BackendHost {
    /// An IP address and port: one member, never resolved.
    Addr(SocketAddr),
    /// A DNS name and port.
    Name {
        /// The host name as written.
        host: String,
        /// The FTP control port.
        port: u16,
    },
}

/// One configured backend.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawBackend")]
pub struct BackendSpec {
    /// The address or name, as written.
    pub host: BackendHost,
    /// Relative share of new sessions (weighted round robin, least connections and
    /// the consistent hashes all honour it).
    pub weight: u32,
    /// Takes no new sessions; running ones continue (planned maintenance).
    pub drain: bool,
}

impl BackendSpec {
    /// The literal address, when the backend is not a name.
    pub fn addr(&self) -> Option<SocketAddr> {
        match self.host {
            BackendHost::Addr(a) => Some(a),
            BackendHost::Name { .. } => None,
        }
    }

    /// The port sessions connect to.
    pub fn port(&self) -> u16 {
        match &self.host {
            BackendHost::Addr(a) => a.port(),
            BackendHost::Name { port, .. } => *port,
        }
    }
}

impl From<SocketAddr> for BackendSpec {
    fn from(a: SocketAddr) -> Self {
        BackendSpec {
            host: BackendHost::Addr(a),
            weight: DEFAULT_WEIGHT,
            drain: false,
        }
    }
}

impl fmt::Display for BackendHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BackendHost::Addr(a) => write!(f, "{a}"),
            BackendHost::Name { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

impl fmt::Display for BackendSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.host.fmt(f)
    }
}

impl FromStr for BackendHost {
    type Err = BackendSpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Ok(a) = s.parse::<SocketAddr>() {
            return Ok(BackendHost::Addr(a));
        }
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| BackendSpecError::NoPort(s.to_owned()))?;
        let port: u16 = port
            .parse()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| BackendSpecError::BadPort(s.to_owned()))?;
        // A name, not a mangled address: an unbracketed IPv6 literal has more colons
        // and lands here too. RFC 1123 §2.1 labels: letters, digits, hyphens (and `_`
        // for SRV-style Kubernetes names), dot-separated, 253 characters at most.
        let plausible = !host.is_empty()
            && host.len() <= 253
            && host.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            });
        if !plausible {
            return Err(BackendSpecError::BadHost(s.to_owned()));
        }
        Ok(BackendHost::Name {
            host: host.to_ascii_lowercase(),
            port,
        })
    }
}

impl FromStr for BackendSpec {
    type Err = BackendSpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(BackendSpec {
            host: s.parse()?,
            weight: DEFAULT_WEIGHT,
            drain: false,
        })
    }
}

/// The two YAML spellings of a backend.
#[derive(Deserialize)]
#[serde(untagged)]
enum RawBackend {
    Plain(String),
    Full(FullBackend),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FullBackend {
    address: String,
    #[serde(default = "default_weight")]
    weight: u32,
    #[serde(default)]
    drain: bool,
}

fn default_weight() -> u32 {
    DEFAULT_WEIGHT
}

impl TryFrom<RawBackend> for BackendSpec {
    type Error = BackendSpecError;

    fn try_from(raw: RawBackend) -> Result<Self, Self::Error> {
        match raw {
            RawBackend::Plain(s) => s.parse(),
            RawBackend::Full(f) => {
                if f.weight == 0 {
                    return Err(BackendSpecError::ZeroWeight(f.address));
                }
                Ok(BackendSpec {
                    host: f.address.parse()?,
                    weight: f.weight,
                    drain: f.drain,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings() {
        let name = |h: &str, port| BackendHost::Name {
            host: h.into(),
            port,
        };
        for (text, want) in [
            (
                "10.0.0.2:21",
                Ok(BackendHost::Addr("10.0.0.2:21".parse().unwrap())),
            ),
            (
                "[2001:db8::2]:21",
                Ok(BackendHost::Addr("[2001:db8::2]:21".parse().unwrap())),
            ),
            // Kubernetes StatefulSet pod behind a headless service, short form.
            ("ftp-0.ftp.svc:21", Ok(name("ftp-0.ftp.svc", 21))),
            (
                "FTP.Example.Internal:2121",
                Ok(name("ftp.example.internal", 2121)),
            ),
            ("nohost", Err(BackendSpecError::NoPort("nohost".into()))),
            ("host:0", Err(BackendSpecError::BadPort("host:0".into()))),
            (
                "host:ftp",
                Err(BackendSpecError::BadPort("host:ftp".into())),
            ),
            // An unbracketed IPv6 literal is not a name with port 21.
            (
                "2001:db8::2:21",
                Err(BackendSpecError::BadHost("2001:db8::2:21".into())),
            ),
            (":21", Err(BackendSpecError::BadHost(":21".into()))),
            ("a..b:21", Err(BackendSpecError::BadHost("a..b:21".into()))),
        ] {
            assert_eq!(text.parse::<BackendHost>(), want, "{text}");
        }
    }

    #[test]
    fn yaml_plain_and_map_forms_mix() {
        let v: Vec<BackendSpec> = serde_yaml::from_str(
            "- 10.0.0.2:21\n- {address: 'ftp-0.ftp.svc:21', weight: 2, drain: true}\n- {address: '10.0.0.3:21'}\n",
        )
        .unwrap();
        assert_eq!(
            v[0],
            BackendSpec::from("10.0.0.2:21".parse::<SocketAddr>().unwrap())
        );
        assert_eq!(v[1].weight, 2);
        assert!(v[1].drain);
        assert_eq!(v[1].to_string(), "ftp-0.ftp.svc:21");
        assert_eq!((v[2].weight, v[2].drain), (1, false));
        let zero: Result<Vec<BackendSpec>, _> =
            serde_yaml::from_str("- {address: '10.0.0.2:21', weight: 0}\n");
        assert!(zero
            .unwrap_err()
            .to_string()
            .contains("weight must be at least 1"));
    }
}
