//! Resolving backend names into members, at start and every
//! `backend_resolve_interval`.
//!
//! The system resolver (`tokio::net::lookup_host`, i.e. getaddrinfo on a blocking
//! thread) rather than hickory: on Kubernetes, short service names
//! (`ftp-0.ftp.svc`) only resolve through the pod's `resolv.conf` search list and
//! `ndots`, and `/etc/hosts` and nsswitch are honoured the same way as by every other
//! program on the host; it also adds no dependency to build. The price is no record
//! TTLs, hence a fixed interval (default 30 s, about a cluster DNS TTL).
//!
//! A name that fails to resolve (or resolves to nothing) keeps its last members:
//! a DNS outage must not empty the farm. It is logged and counted.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{BackendHost, Farm, Member};

/// How long one lookup may take before it counts as failed (glibc's default is
/// 5 s × 2 attempts per server; a stuck lookup must not delay the next round).
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);

/// The members after one round: names that resolved get exactly their addresses,
/// names that failed keep what they had, literal addresses are always members.
/// Pure.
pub fn merge_members(
    hosts: &[BackendHost],
    prev: &[Member],
    resolved: &[Option<Vec<SocketAddr>>],
) -> Vec<Member> {
    let mut next = Vec::new();
    for (spec, host) in hosts.iter().enumerate() {
        match (host, resolved.get(spec)) {
            (BackendHost::Addr(addr), _) => next.push(Member { addr: *addr, spec }),
            (BackendHost::Name { .. }, Some(Some(addrs))) if !addrs.is_empty() => {
                next.extend(addrs.iter().map(|&addr| Member { addr, spec }));
            }
            (BackendHost::Name { .. }, _) => {
                next.extend(prev.iter().filter(|m| m.spec == spec).cloned());
            }
        }
    }
    next
}

/// Resolves every name once and updates the farm's members.
pub async fn resolve_once(farm: &Farm) {
    let hosts: Vec<BackendHost> = farm.specs().iter().map(|s| s.host.clone()).collect();
    let mut resolved = Vec::with_capacity(hosts.len());
    for host in &hosts {
        let r = match host {
            BackendHost::Addr(_) => None,
            BackendHost::Name { host: name, port } => {
                let found = lookup(name, *port).await;
                match found {
                    Ok(addrs) if !addrs.is_empty() => Some(addrs),
                    Ok(_) => {
                        note_failure(farm, host, &io::Error::other("no A/AAAA records"));
                        None
                    }
                    Err(e) => {
                        note_failure(farm, host, &e);
                        None
                    }
                }
            }
        };
        resolved.push(r);
    }
    let prev = farm.members();
    let next = merge_members(&hosts, &prev, &resolved);
    let added: Vec<_> = next
        .iter()
        .filter(|m| !prev.contains(m))
        .map(|m| m.addr)
        .collect();
    let removed: Vec<_> = prev
        .iter()
        .filter(|m| !next.contains(m))
        .map(|m| m.addr)
        .collect();
    if !added.is_empty() || !removed.is_empty() {
        info!(
            ?added,
            ?removed,
            members = next.len(),
            "backend members changed"
        );
    }
    for (spec, host) in hosts.iter().enumerate() {
        let n = next.iter().filter(|m| m.spec == spec).count();
        farm.metrics
            .backend_members
            .with_label_values(&[&host.to_string()])
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }
    farm.set_members(next);
}

async fn lookup(host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
    let found = tokio::time::timeout(LOOKUP_TIMEOUT, tokio::net::lookup_host((host, port)))
        .await
        .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
    let mut addrs: Vec<SocketAddr> = found
        .map(|a| SocketAddr::new(crate::protocol::addr::canonical_ip(a.ip()), a.port()))
        .collect();
    // getaddrinfo returns one entry per socket type on some systems.
    addrs.sort();
    addrs.dedup();
    Ok(addrs)
}

fn note_failure(farm: &Farm, host: &BackendHost, e: &io::Error) {
    farm.metrics
        .backend_resolve_failures_total
        .with_label_values(&[&host.to_string()])
        .inc();
    warn!(backend = %host, error = %e, "backend name does not resolve; keeping its last members");
}

/// Re-resolves every `interval` until `shutdown` (the first round is the caller's,
/// at start). Does nothing when every backend is an address.
pub async fn run(farm: Arc<Farm>, interval: Duration, shutdown: CancellationToken) {
    if farm.specs().iter().all(|s| s.addr().is_some()) || interval.is_zero() {
        return;
    }
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = shutdown.cancelled() => return,
        }
        tokio::select! {
            () = resolve_once(&farm) => debug!("backend names re-resolved"),
            () = shutdown.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn scale_up_scale_down_and_dns_outage() {
        let hosts: Vec<BackendHost> = ["10.0.0.9:21", "ftp.ftp.svc:21"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let m = |addr: &str, spec| Member {
            addr: a(addr),
            spec,
        };
        let prev = vec![
            m("10.0.0.9:21", 0),
            m("10.0.1.1:21", 1),
            m("10.0.1.2:21", 1),
        ];
        // (what the name resolved to, members after)
        let table: Vec<(Option<Vec<SocketAddr>>, Vec<Member>)> = vec![
            // A StatefulSet scaled to 3: the new pod joins, the others stay.
            (
                Some(vec![a("10.0.1.1:21"), a("10.0.1.2:21"), a("10.0.1.3:21")]),
                vec![
                    m("10.0.0.9:21", 0),
                    m("10.0.1.1:21", 1),
                    m("10.0.1.2:21", 1),
                    m("10.0.1.3:21", 1),
                ],
            ),
            // Scaled to 1: the removed pod leaves.
            (
                Some(vec![a("10.0.1.2:21")]),
                vec![m("10.0.0.9:21", 0), m("10.0.1.2:21", 1)],
            ),
            // NXDOMAIN / SERVFAIL / timeout: keep the last members.
            (None, prev.clone()),
            // An empty answer (every pod unready) is treated as a failure too.
            (Some(vec![]), prev.clone()),
        ];
        for (resolved, want) in table {
            let got = merge_members(&hosts, &prev, &[None, resolved.clone()]);
            assert_eq!(got, want, "{resolved:?}");
        }
    }
}
