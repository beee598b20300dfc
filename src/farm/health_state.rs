//! Backend health as one shared type: the health checker and failed or successful
//! session connects write it; the balancer and `/readyz` read it; the
//! `ftpgate_backend_up` gauge only mirrors it. Before, the gauge *was* the state, so
//! readiness and balancing depended on what a metrics registry happened to hold.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use crate::metrics::Metrics;

/// What is known about one member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Not checked yet: tried in turn like an up member, but not counted as ready.
    Unknown,
    /// The last check (or session connect) found it serving.
    Up,
    /// The last check failed `fall` times in a row (or a session connect failed).
    Down,
}

/// Per-member verdicts, keyed by resolved address.
#[derive(Debug)]
pub struct BackendHealth {
    verdicts: RwLock<HashMap<SocketAddr, Verdict>>,
    metrics: Arc<Metrics>,
}

impl BackendHealth {
    /// No member known yet.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        BackendHealth {
            verdicts: RwLock::new(HashMap::new()),
            metrics,
        }
    }

    /// The verdict on `addr` (`Unknown` for a member never checked).
    pub fn verdict(&self, addr: SocketAddr) -> Verdict {
        self.verdicts
            .read()
            .map(|v| v.get(&addr).copied().unwrap_or(Verdict::Unknown))
            .unwrap_or(Verdict::Unknown)
    }

    /// Whether `addr` is known down (the balancer tries such members last).
    pub fn is_down(&self, addr: SocketAddr) -> bool {
        self.verdict(addr) == Verdict::Down
    }

    /// Records a verdict and mirrors it into `ftpgate_backend_up`; returns the
    /// previous one so callers log transitions only.
    pub fn set(&self, addr: SocketAddr, up: bool) -> Verdict {
        let new = if up { Verdict::Up } else { Verdict::Down };
        let prev = match self.verdicts.write() {
            Ok(mut v) => v.insert(addr, new).unwrap_or(Verdict::Unknown),
            Err(_) => Verdict::Unknown,
        };
        self.metrics
            .backend_up
            .with_label_values(&[&addr.to_string()])
            .set(i64::from(up));
        prev
    }

    /// Forgets a member that left the farm (its name no longer resolves to it), and
    /// its gauge series, so dashboards do not show a ghost.
    pub fn forget(&self, addr: SocketAddr) {
        if let Ok(mut v) = self.verdicts.write() {
            v.remove(&addr);
        }
        let label = addr.to_string();
        let _ = self.metrics.backend_up.remove_label_values(&[&label]);
    }

    /// Every member with a verdict, sorted by address (for `/readyz`).
    pub fn snapshot(&self) -> Vec<(SocketAddr, Verdict)> {
        let mut all: Vec<_> = self
            .verdicts
            .read()
            .map(|v| v.iter().map(|(a, s)| (*a, *s)).collect())
            .unwrap_or_default();
        all.sort_by_key(|(a, _)| *a);
        all
    }
}

/// Rise/fall hysteresis for one member: `rise` consecutive passes make it up,
/// `fall` consecutive failures make it down (HAProxy's `rise`/`fall`). Pure.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Streak {
    /// Consecutive results agreeing with `last` (saturating).
    count: u32,
    last: Option<bool>,
    verdict: Option<bool>,
}

impl Streak {
    /// Feeds one check result; returns the verdict when it is (re)decided now. The very
    /// first result decides at once, so readiness is known right after start.
    pub fn observe(&mut self, passed: bool, rise: u32, fall: u32) -> Option<bool> {
        if self.last == Some(passed) {
            self.count = self.count.saturating_add(1);
        } else {
            self.last = Some(passed);
            self.count = 1;
        }
        let needed = if passed { rise } else { fall }.max(1);
        let decided = match self.verdict {
            None => Some(passed),
            Some(v) if v != passed && self.count >= needed => Some(passed),
            Some(_) => None,
        };
        if decided.is_some() {
            self.verdict = decided;
        }
        decided
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rise_and_fall_need_consecutive_results() {
        // (results, rise, fall, verdict changes)
        type Row<'a> = (&'a [bool], u32, u32, &'a [Option<bool>]);
        let table: &[Row<'_>] = &[
            // First result decides at once.
            (&[true], 2, 3, &[Some(true)]),
            // A vsftpd restarting: two failed checks do not reach fall=3.
            (
                &[true, false, false, true],
                2,
                3,
                &[Some(true), None, None, None],
            ),
            (
                &[true, false, false, false],
                2,
                3,
                &[Some(true), None, None, Some(false)],
            ),
            // Flapping back needs `rise` passes in a row.
            (
                &[false, true, false, true, true],
                2,
                3,
                &[Some(false), None, None, None, Some(true)],
            ),
            // rise=fall=1: every change counts.
            (
                &[true, false, true],
                1,
                1,
                &[Some(true), Some(false), Some(true)],
            ),
        ];
        for (results, rise, fall, want) in table {
            let mut s = Streak::default();
            let got: Vec<_> = results
                .iter()
                .map(|&r| s.observe(r, *rise, *fall))
                .collect();
            assert_eq!(&got[..], *want, "{results:?} rise={rise} fall={fall}");
        }
    }

    #[test]
    fn gauge_mirrors_the_state() {
        let metrics = Arc::new(Metrics::new());
        let h = BackendHealth::new(Arc::clone(&metrics));
        let a: SocketAddr = "10.0.0.2:21".parse().unwrap();
        assert_eq!(h.verdict(a), Verdict::Unknown);
        assert_eq!(h.set(a, false), Verdict::Unknown);
        assert!(h.is_down(a));
        assert_eq!(
            metrics.backend_up.with_label_values(&["10.0.0.2:21"]).get(),
            0
        );
        assert_eq!(h.set(a, true), Verdict::Down);
        assert_eq!(
            metrics.backend_up.with_label_values(&["10.0.0.2:21"]).get(),
            1
        );
        assert_eq!(h.snapshot(), vec![(a, Verdict::Up)]);
    }
}
