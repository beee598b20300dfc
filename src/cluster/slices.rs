//! Which replica owns which data port: the range cut into `slots` contiguous slices
//! of (almost) equal size, fixed by configuration alone so every replica computes the
//! same answer without talking to the others. Pure.

use crate::config::PortRange;

/// The data-port range cut into slices; slice `k` belongs to the replica with ordinal `k`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slices {
    range: PortRange,
    slots: u16,
}

impl Slices {
    /// `range` cut into `slots` slices; `None` unless `1 <= slots <= range.len()`
    /// (every slice holds at least one port).
    pub fn new(range: PortRange, slots: u16) -> Option<Slices> {
        (slots >= 1 && usize::from(slots) <= range.len()).then_some(Slices { range, slots })
    }

    /// How many slices.
    pub fn slots(&self) -> u16 {
        self.slots
    }

    /// The whole range.
    pub fn range(&self) -> PortRange {
        self.range
    }

    /// Offset (from the range's start) of slice `k`'s first port; `k == slots` gives
    /// the range's length. Sizes differ by at most one port.
    fn start(&self, k: u16) -> usize {
        self.range.len() * usize::from(k) / usize::from(self.slots)
    }

    /// The ports of slice `k`, or `None` past the last slice.
    pub fn slice(&self, k: u16) -> Option<PortRange> {
        if k >= self.slots {
            return None;
        }
        let lo = self.port_at(self.start(k))?;
        let hi = self.port_at(self.start(k + 1).checked_sub(1)?)?;
        Some(PortRange { lo, hi })
    }

    /// The ordinal owning `port`, or `None` outside the range.
    pub fn owner(&self, port: u16) -> Option<u16> {
        if !self.range.contains(port) {
            return None;
        }
        let at = usize::from(port - self.range.lo);
        // The slice estimate is off by at most one either way (integer division).
        let guess = at * usize::from(self.slots) / self.range.len();
        let guess = u16::try_from(guess).ok()?;
        [guess.checked_sub(1), Some(guess), guess.checked_add(1)]
            .into_iter()
            .flatten()
            .find(|&k| k < self.slots && self.start(k) <= at && at < self.start(k + 1))
    }

    /// Every port outside slice `own`: what replica `own` forwards.
    pub fn foreign_ports(&self, own: u16) -> impl Iterator<Item = u16> + '_ {
        (self.range.lo..=self.range.hi).filter(move |&p| self.owner(p) != Some(own))
    }

    fn port_at(&self, offset: usize) -> Option<u16> {
        u16::try_from(usize::from(self.range.lo) + offset).ok()
    }
}

/// A StatefulSet pod's ordinal from its host name: `ftpgate-3` → 3 (a domain part,
/// `ftpgate-3.peers.ns.svc`, is ignored).
pub fn ordinal_from_hostname(name: &str) -> Option<u16> {
    let host = name.split('.').next()?;
    let (_, digits) = host.rsplit_once('-')?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// `host:port` split at the last colon (`[v6]:port` keeps its brackets off); `None`
/// when there is no valid port or no host.
pub fn split_host_port(s: &str) -> Option<(&str, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    let port: u16 = port.parse().ok().filter(|&p| p != 0)?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    (!host.is_empty()).then_some((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slices(lo: u16, hi: u16, slots: u16) -> Slices {
        Slices::new(PortRange { lo, hi }, slots).unwrap()
    }

    #[test]
    fn slices_cover_the_range_exactly_once_and_owner_agrees() {
        // Exhaustive over small ranges and every slot count they allow.
        for len in 1u16..=40 {
            for slots in 1..=len {
                let s = slices(1000, 1000 + len - 1, slots);
                let mut next = 1000;
                for k in 0..slots {
                    let r = s.slice(k).unwrap();
                    assert_eq!(r.lo, next, "len {len} slots {slots} slice {k}");
                    let size = r.len();
                    let even = usize::from(len) / usize::from(slots);
                    assert!(size == even || size == even + 1, "uneven: {size} vs {even}");
                    for p in r.lo..=r.hi {
                        assert_eq!(s.owner(p), Some(k), "port {p}");
                    }
                    next = r.hi + 1;
                }
                assert_eq!(next, 1000 + len, "len {len} slots {slots}: not covered");
                assert_eq!(s.slice(slots), None);
            }
        }
    }

    #[test]
    fn documented_example_and_edges() {
        let s = slices(50000, 50099, 4);
        assert_eq!(s.slice(0), Some("50000-50024".parse().unwrap()));
        assert_eq!(s.slice(3), Some("50075-50099".parse().unwrap()));
        assert_eq!(s.owner(49999), None);
        assert_eq!(s.owner(50100), None);
        assert_eq!(s.owner(50024), Some(0));
        assert_eq!(s.owner(50025), Some(1));
        let top = slices(65530, 65535, 3);
        assert_eq!(top.slice(2), Some("65534-65535".parse().unwrap()));
        assert_eq!(top.owner(65535), Some(2));
        assert_eq!(
            top.foreign_ports(2).collect::<Vec<_>>(),
            [65530, 65531, 65532, 65533]
        );
    }

    #[test]
    fn a_range_smaller_than_the_slots_is_refused() {
        assert!(Slices::new(PortRange { lo: 1, hi: 3 }, 4).is_none());
        assert!(Slices::new(PortRange { lo: 1, hi: 3 }, 0).is_none());
        assert!(Slices::new(PortRange { lo: 1, hi: 3 }, 3).is_some());
    }

    #[test]
    fn ordinals_from_host_names() {
        for (name, want) in [
            ("ftpgate-0", Some(0)),
            ("ftpgate-3", Some(3)),
            ("ftp-gate-12", Some(12)),
            ("ftpgate-3.ftpgate-peers.ns.svc.cluster.local", Some(3)),
            ("ftpgate", None),
            ("ftpgate-", None),
            ("ftpgate-x1", None),
            ("ftpgate-+1", None),
            ("ftpgate-70000", None),
            ("", None),
        ] {
            assert_eq!(ordinal_from_hostname(name), want, "{name}");
        }
    }

    #[test]
    fn host_port_forms() {
        assert_eq!(split_host_port("10.0.0.1:2122"), Some(("10.0.0.1", 2122)));
        assert_eq!(
            split_host_port("[2001:db8::1]:2122"),
            Some(("2001:db8::1", 2122))
        );
        assert_eq!(
            split_host_port("a-{ordinal}.svc:2122"),
            Some(("a-{ordinal}.svc", 2122))
        );
        for bad in ["nope", ":2122", "host:0", "host:x", "host:70000"] {
            assert_eq!(split_host_port(bad), None, "{bad}");
        }
    }
}
