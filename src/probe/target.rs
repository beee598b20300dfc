//! The probe's target: `ftp://`, `ftpes://` or `ftps://` URLs (pure parsing).
//!
//! `scheme://[user[:password]@]host[:port][/path]`, user and password
//! percent-decoded, IPv6 hosts in brackets. The password is never part of
//! [`Target::redacted`].

use std::fmt;

/// How the control connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Security {
    /// `ftp://`: plain text.
    Plain,
    /// `ftpes://`: `AUTH TLS` after the banner (RFC 4217).
    Explicit,
    /// `ftps://`: TLS from the first byte (port 990 by default).
    Implicit,
}

/// Why a probe URL does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// Not `ftp://`, `ftpes://` or `ftps://`.
    #[error("URL must start with ftp://, ftpes:// or ftps://")]
    Scheme,
    /// No host after the scheme.
    #[error("URL has no host")]
    MissingHost,
    /// The port is not a number in 1..=65535 (the text given).
    #[error("invalid port `{0}`")]
    Port(String),
    /// An IPv6 host's `[` has no `]`.
    #[error("unterminated `[` in IPv6 host")]
    Bracket,
    /// A `%` not followed by two hex digits.
    #[error("invalid percent-encoding in URL")]
    Percent,
}

/// A parsed probe URL.
#[derive(Clone, PartialEq, Eq)]
pub struct Target {
    /// Plain, explicit or implicit TLS, from the scheme.
    pub security: Security,
    /// Host name or IP literal (without brackets).
    pub host: String,
    /// The control port: the URL's, else 21 (`ftps://`: 990).
    pub port: u16,
    /// User name from the URL, decoded; `None` when absent or empty.
    pub user: Option<String>,
    /// Password from the URL, decoded.
    pub password: Option<String>,
    /// Decoded path without the leading `/` (RFC 1738: relative to the login directory).
    pub path: String,
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the password, not even in debug output.
        f.write_str(&self.redacted())
    }
}

impl Target {
    /// Parses an `ftp://`, `ftpes://` or `ftps://` URL.
    pub fn parse(url: &str) -> Result<Target, TargetError> {
        let (security, rest) = if let Some(r) = strip_prefix_ci(url, "ftp://") {
            (Security::Plain, r)
        } else if let Some(r) = strip_prefix_ci(url, "ftpes://") {
            (Security::Explicit, r)
        } else if let Some(r) = strip_prefix_ci(url, "ftps://") {
            (Security::Implicit, r)
        } else {
            return Err(TargetError::Scheme);
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, ""),
        };
        // The userinfo ends at the last `@` (a password may contain a raw `@`).
        let (userinfo, hostport) = match authority.rfind('@') {
            Some(i) => (Some(&authority[..i]), &authority[i + 1..]),
            None => (None, authority),
        };
        let (user, password) = match userinfo {
            None => (None, None),
            Some(u) => match u.split_once(':') {
                Some((user, pw)) => (Some(decode(user)?), Some(decode(pw)?)),
                None => (Some(decode(u)?), None),
            },
        };
        let (host, port) = split_host_port(hostport)?;
        if host.is_empty() {
            return Err(TargetError::MissingHost);
        }
        let port = match port {
            None => match security {
                Security::Implicit => 990,
                _ => 21,
            },
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n != 0 => n,
                _ => return Err(TargetError::Port(p.to_owned())),
            },
        };
        Ok(Target {
            security,
            host: host.to_owned(),
            port,
            user: user.filter(|u| !u.is_empty()),
            password,
            path: decode(path)?,
        })
    }

    /// The URL scheme: `ftp`, `ftpes` or `ftps`.
    pub fn scheme(&self) -> &'static str {
        match self.security {
            Security::Plain => "ftp",
            Security::Explicit => "ftpes",
            Security::Implicit => "ftps",
        }
    }

    /// The URL with the password replaced by `***`.
    pub fn redacted(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let userinfo = match (&self.user, &self.password) {
            (Some(u), Some(_)) => format!("{u}:***@"),
            (Some(u), None) => format!("{u}@"),
            (None, _) => String::new(),
        };
        format!(
            "{}://{userinfo}{host}:{}/{}",
            self.scheme(),
            self.port,
            self.path
        )
    }
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| s.get(prefix.len()..))
        .flatten()
}

fn split_host_port(s: &str) -> Result<(&str, Option<&str>), TargetError> {
    if let Some(rest) = s.strip_prefix('[') {
        let end = rest.find(']').ok_or(TargetError::Bracket)?;
        let host = &rest[..end];
        let after = &rest[end + 1..];
        return match after.strip_prefix(':') {
            Some(p) => Ok((host, Some(p))),
            None if after.is_empty() => Ok((host, None)),
            None => Err(TargetError::Port(after.to_owned())),
        };
    }
    Ok(match s.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (s, None),
    })
}

/// RFC 3986 percent-decoding (UTF-8 result required).
fn decode(s: &str) -> Result<String, TargetError> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        if c == b'%' {
            let hex = b.get(i + 1..i + 3).ok_or(TargetError::Percent)?;
            let hex = std::str::from_utf8(hex).map_err(|_| TargetError::Percent)?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| TargetError::Percent)?);
            i += 3;
        } else {
            out.push(c);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| TargetError::Percent)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// URL, security, host, port, user, password, path.
    type Case<'a> = (
        &'a str,
        Security,
        &'a str,
        u16,
        Option<&'a str>,
        Option<&'a str>,
        &'a str,
    );

    #[test]
    fn urls() {
        let cases: &[Case<'_>] = &[
            ("ftp://h", Security::Plain, "h", 21, None, None, ""),
            ("FTP://h:2121/", Security::Plain, "h", 2121, None, None, ""),
            (
                "ftp://u:p%40ss@h/upload/",
                Security::Plain,
                "h",
                21,
                Some("u"),
                Some("p@ss"),
                "upload/",
            ),
            (
                "ftpes://u@h",
                Security::Explicit,
                "h",
                21,
                Some("u"),
                None,
                "",
            ),
            (
                "ftps://[2001:db8::1]",
                Security::Implicit,
                "2001:db8::1",
                990,
                None,
                None,
                "",
            ),
            (
                "ftp://a:b@c@h:21/x",
                Security::Plain,
                "h",
                21,
                Some("a"),
                Some("b@c"),
                "x",
            ),
        ];
        for &(url, sec, host, port, user, pw, path) in cases {
            let t = Target::parse(url).unwrap_or_else(|e| panic!("{url}: {e}"));
            assert_eq!(t.security, sec, "{url}");
            assert_eq!(t.host, host, "{url}");
            assert_eq!(t.port, port, "{url}");
            assert_eq!(t.user.as_deref(), user, "{url}");
            assert_eq!(t.password.as_deref(), pw, "{url}");
            assert_eq!(t.path, path, "{url}");
        }
    }

    #[test]
    fn bad_urls() {
        for (url, err) in [
            ("http://h", TargetError::Scheme),
            ("ftp://", TargetError::MissingHost),
            ("ftp://h:0", TargetError::Port("0".into())),
            ("ftp://h:x", TargetError::Port("x".into())),
            ("ftp://[::1", TargetError::Bracket),
            ("ftp://u:%zz@h", TargetError::Percent),
        ] {
            assert_eq!(Target::parse(url), Err(err), "{url}");
        }
    }

    #[test]
    fn redaction_hides_the_password() {
        let t = Target::parse("ftp://bob:s3cret@[::1]:2121/pub").unwrap();
        assert_eq!(t.redacted(), "ftp://bob:***@[::1]:2121/pub");
        assert!(!format!("{t:?}").contains("s3cret"));
    }
}
