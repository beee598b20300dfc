//! Session limits applied before any backend connection is made.
//!
//! ftpgate connects to the backend when a client connects (FTP servers greet first), so
//! every silent connection costs a backend session — a forking server a process. The
//! number of sessions not yet logged in is capped (`limits.max_prelogin_sessions`);
//! a session leaves the count when the backend accepts its login, or when it ends.

use std::sync::atomic::{AtomicUsize, Ordering};

use prometheus::IntGauge;

/// The count of sessions not yet logged in.
#[derive(Debug)]
pub struct PreloginSlots {
    taken: AtomicUsize,
    gauge: IntGauge,
}

impl PreloginSlots {
    /// No slot taken yet; `gauge` (`ftpgate_sessions_prelogin`) follows the count.
    pub fn new(gauge: IntGauge) -> Self {
        PreloginSlots {
            taken: AtomicUsize::new(0),
            gauge,
        }
    }

    /// Takes a slot unless `max` are taken (`max == 0`: unlimited).
    pub fn try_take(&self, max: usize) -> Option<PreloginSlot<'_>> {
        let prev = self.taken.fetch_add(1, Ordering::AcqRel);
        if max != 0 && prev >= max {
            self.taken.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        self.gauge.inc();
        Some(PreloginSlot {
            slots: self,
            held: true,
        })
    }

    /// How many slots are held now.
    pub fn taken(&self) -> usize {
        self.taken.load(Ordering::Acquire)
    }
}

/// One session's place in the pre-login count; given back at login or on drop.
#[derive(Debug)]
pub struct PreloginSlot<'a> {
    slots: &'a PreloginSlots,
    held: bool,
}

impl PreloginSlot<'_> {
    /// The session logged in: it no longer counts.
    pub fn release(&mut self) {
        if std::mem::take(&mut self.held) {
            self.slots.taken.fetch_sub(1, Ordering::AcqRel);
            self.slots.gauge.dec();
        }
    }
}

impl Drop for PreloginSlot<'_> {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slots() -> PreloginSlots {
        PreloginSlots::new(IntGauge::new("t", "t").unwrap())
    }

    #[test]
    fn cap_counts_sessions_until_login_or_end() {
        let s = slots();
        let mut a = s.try_take(2).unwrap();
        let b = s.try_take(2).unwrap();
        assert!(s.try_take(2).is_none(), "third pre-login session refused");
        assert_eq!(s.taken(), 2);
        a.release();
        a.release();
        assert_eq!(s.taken(), 1, "release is idempotent");
        let c = s.try_take(2).unwrap();
        drop(b);
        drop(c);
        drop(a);
        assert_eq!(s.taken(), 0);
        assert_eq!(s.gauge.get(), 0);
    }

    #[test]
    fn zero_is_unlimited() {
        let s = slots();
        let held: Vec<_> = (0..1000).map(|_| s.try_take(0).unwrap()).collect();
        assert_eq!(s.taken(), 1000);
        drop(held);
        assert_eq!(s.taken(), 0);
    }
}
