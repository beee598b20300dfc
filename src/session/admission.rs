//! Admission: whether a new client connection may become a session, decided before
//! any backend connection is made (a refused client costs the backend nothing).
//!
//! Three limits, each refused with its own `421`: the total number of sessions
//! (`limits.max_sessions`), sessions per client address (`limits.max_sessions_per_ip`)
//! and the rate of new sessions per client address (`limits.new_sessions_per_ip`, a
//! token bucket). Every per-address table is bounded, so a flood from many addresses
//! cannot grow memory without limit: per-address session counts have one entry per
//! open session at most, and the bucket and log tables have a fixed capacity.
//!
//! The decisions ([`TokenBucket::take`], [`Admission::admit`]) take the time as an
//! argument, so they are tested without clocks.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::{LimitsConfig, SessionRate};
use crate::metrics::Refusal;

/// How many addresses the rate and log tables remember at most. Past this, a new
/// address is admitted untracked (its bucket would be full anyway) rather than
/// evicting a limited one, so churning addresses cannot reset an abuser's bucket.
pub const SOURCE_TABLE_CAP: usize = 65_536;

/// A refusal is logged at most once per source per this period (counted always).
pub const LOG_PERIOD: Duration = Duration::from_secs(60);

/// Why a new session was refused before a backend connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AdmissionRefused {
    /// `limits.max_sessions` sessions are open.
    #[error("session limit reached (limits.max_sessions)")]
    MaxSessions,
    /// `limits.max_sessions_per_ip` sessions are open from this address.
    #[error("per-address session limit reached (limits.max_sessions_per_ip)")]
    MaxPerIp,
    /// This address opened sessions faster than `limits.new_sessions_per_ip`.
    #[error("new-session rate exceeded (limits.new_sessions_per_ip)")]
    Rate,
}

impl AdmissionRefused {
    /// The refusal reason for `ftpgate_refusals_total`.
    pub fn refusal(self) -> Refusal {
        match self {
            AdmissionRefused::MaxSessions => Refusal::MaxSessions,
            AdmissionRefused::MaxPerIp => Refusal::MaxSessionsPerIp,
            AdmissionRefused::Rate => Refusal::SessionRate,
        }
    }
}

/// A token bucket: `burst` tokens, refilled at `rate`.
#[derive(Debug, Clone, Copy)]
pub struct TokenBucket {
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn full(rate: SessionRate, now: Instant) -> Self {
        TokenBucket {
            tokens: f64::from(rate.burst),
            at: now,
        }
    }

    /// Refills for the time since the last call, then takes one token if there is one.
    pub fn take(&mut self, rate: SessionRate, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now;
        self.tokens = (self.tokens + elapsed * rate.per_second()).min(f64::from(rate.burst));
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Whether the bucket has refilled completely: it can be forgotten.
    fn is_full(&self, rate: SessionRate, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens + elapsed * rate.per_second() >= f64::from(rate.burst)
    }
}

#[derive(Debug, Default)]
struct Tables {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
    buckets: HashMap<IpAddr, TokenBucket>,
    logged: HashMap<IpAddr, Instant>,
}

/// The admission state shared by every listener.
#[derive(Debug, Default)]
pub struct Admission {
    tables: Mutex<Tables>,
}

impl Admission {
    /// Admits a session from `ip` under `limits` at `now`, or says why not. The
    /// returned ticket counts the session until dropped.
    pub fn admit(
        &self,
        ip: IpAddr,
        limits: &LimitsConfig,
        now: Instant,
    ) -> Result<AdmissionTicket<'_>, AdmissionRefused> {
        let mut t = self.lock();
        if limits.max_sessions != 0 && t.total >= limits.max_sessions {
            return Err(AdmissionRefused::MaxSessions);
        }
        let open_here = t.per_ip.get(&ip).copied().unwrap_or(0);
        if limits.max_sessions_per_ip != 0 && open_here >= limits.max_sessions_per_ip {
            return Err(AdmissionRefused::MaxPerIp);
        }
        if let Some(rate) = limits.new_sessions_per_ip {
            if !take_token(&mut t.buckets, ip, rate, now) {
                return Err(AdmissionRefused::Rate);
            }
        }
        t.total += 1;
        *t.per_ip.entry(ip).or_insert(0) += 1;
        Ok(AdmissionTicket {
            admission: self,
            ip,
        })
    }

    /// Whether a refusal for `ip` should be logged now (once per [`LOG_PERIOD`]).
    pub fn should_log(&self, ip: IpAddr, now: Instant) -> bool {
        let mut t = self.lock();
        let logged = &mut t.logged;
        if let Some(last) = logged.get(&ip) {
            if now.saturating_duration_since(*last) < LOG_PERIOD {
                return false;
            }
        }
        if logged.len() >= SOURCE_TABLE_CAP && !logged.contains_key(&ip) {
            logged.retain(|_, at| now.saturating_duration_since(*at) < LOG_PERIOD);
            if logged.len() >= SOURCE_TABLE_CAP {
                // Table full of recent entries: stay quiet (the counter still counts).
                return false;
            }
        }
        logged.insert(ip, now);
        true
    }

    /// Sessions admitted and not yet ended.
    pub fn open(&self) -> usize {
        self.lock().total
    }

    /// Addresses with a remembered bucket (bounded by [`SOURCE_TABLE_CAP`]).
    pub fn tracked_buckets(&self) -> usize {
        self.lock().buckets.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tables> {
        // A panic while holding the lock leaves counts that are still counts.
        self.tables.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Takes a token from `ip`'s bucket, keeping the table within [`SOURCE_TABLE_CAP`].
fn take_token(
    buckets: &mut HashMap<IpAddr, TokenBucket>,
    ip: IpAddr,
    rate: SessionRate,
    now: Instant,
) -> bool {
    if let Some(b) = buckets.get_mut(&ip) {
        return b.take(rate, now);
    }
    if buckets.len() >= SOURCE_TABLE_CAP {
        // A full bucket is the same as none: forget those first.
        buckets.retain(|_, b| !b.is_full(rate, now));
        if buckets.len() >= SOURCE_TABLE_CAP {
            return true;
        }
    }
    let mut b = TokenBucket::full(rate, now);
    let ok = b.take(rate, now);
    buckets.insert(ip, b);
    ok
}

/// One admitted session; leaves the counts when dropped.
#[derive(Debug)]
pub struct AdmissionTicket<'a> {
    admission: &'a Admission,
    ip: IpAddr,
}

impl Drop for AdmissionTicket<'_> {
    fn drop(&mut self) {
        let mut t = self.admission.lock();
        t.total = t.total.saturating_sub(1);
        if let Some(n) = t.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                // No entry for addresses without sessions: the table stays bounded
                // by the number of open sessions.
                t.per_ip.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([198, 51, 100, last])
    }

    fn limits(max: usize, per_ip: usize, rate: Option<SessionRate>) -> LimitsConfig {
        LimitsConfig {
            max_sessions: max,
            max_sessions_per_ip: per_ip,
            new_sessions_per_ip: rate,
            ..LimitsConfig::default()
        }
    }

    #[test]
    fn one_nat_address_opening_many_sessions_does_not_starve_another() {
        let a = Admission::default();
        let l = limits(0, 3, None);
        let now = Instant::now();
        let held: Vec<_> = (0..3).map(|_| a.admit(ip(1), &l, now).unwrap()).collect();
        assert_eq!(
            a.admit(ip(1), &l, now).unwrap_err(),
            AdmissionRefused::MaxPerIp
        );
        let other = a.admit(ip(2), &l, now).expect("another address is served");
        drop(held);
        assert!(
            a.admit(ip(1), &l, now).is_ok(),
            "slots come back at session end"
        );
        drop(other);
        assert_eq!(a.open(), 0);
        assert!(a.lock().per_ip.is_empty(), "no entry without sessions");
    }

    #[test]
    fn global_cap_refuses_before_per_address_cap() {
        let a = Admission::default();
        let l = limits(2, 5, None);
        let now = Instant::now();
        let _x = a.admit(ip(1), &l, now).unwrap();
        let _y = a.admit(ip(2), &l, now).unwrap();
        assert_eq!(
            a.admit(ip(3), &l, now).unwrap_err(),
            AdmissionRefused::MaxSessions
        );
    }

    #[test]
    fn zero_means_unlimited() {
        let a = Admission::default();
        let l = limits(0, 0, None);
        let now = Instant::now();
        let held: Vec<_> = (0..500).map(|_| a.admit(ip(1), &l, now).unwrap()).collect();
        assert_eq!(a.open(), 500);
        drop(held);
    }

    #[test]
    fn reconnect_loop_is_held_to_its_rate_after_the_burst() {
        // A client retrying in a tight loop (curl --retry 0 in a shell loop).
        let rate: SessionRate = "2/s".parse().unwrap();
        let rate = SessionRate { burst: 3, ..rate };
        let a = Admission::default();
        let l = limits(0, 0, Some(rate));
        let t0 = Instant::now();
        for _ in 0..3 {
            drop(a.admit(ip(1), &l, t0).unwrap());
        }
        assert_eq!(a.admit(ip(1), &l, t0).unwrap_err(), AdmissionRefused::Rate);
        assert!(a.admit(ip(2), &l, t0).is_ok(), "buckets are per address");
        let later = t0 + Duration::from_millis(500);
        assert!(
            a.admit(ip(1), &l, later).is_ok(),
            "one token after 0.5 s at 2/s"
        );
        assert!(a.admit(ip(1), &l, later).is_err());
    }

    #[test]
    fn spoofed_source_churn_keeps_bucket_table_bounded() {
        let rate: SessionRate = "1/m".parse().unwrap();
        let mut buckets = HashMap::new();
        let now = Instant::now();
        for i in 0..(SOURCE_TABLE_CAP as u32 + 1000) {
            let addr = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            take_token(&mut buckets, addr, rate, now);
        }
        assert!(buckets.len() <= SOURCE_TABLE_CAP);
        // Refilled buckets are forgotten to make room.
        let later = now + Duration::from_secs(120);
        assert!(take_token(&mut buckets, ip(9), rate, later));
        assert!(buckets.len() <= 2, "full buckets were purged");
    }

    #[test]
    fn refusals_are_logged_once_per_source_per_minute() {
        let a = Admission::default();
        let t0 = Instant::now();
        assert!(a.should_log(ip(1), t0));
        assert!(!a.should_log(ip(1), t0 + Duration::from_secs(59)));
        assert!(a.should_log(ip(2), t0 + Duration::from_secs(1)));
        assert!(a.should_log(ip(1), t0 + Duration::from_secs(61)));
    }
}
