//! Backend health checks: a background task that checks every member on an interval
//! and records verdicts in the farm's [`BackendHealth`](crate::farm::BackendHealth)
//! (which `/readyz`, the balancer and the `ftpgate_backend_up` gauge follow).
//!
//! Three depths (`health.check`), each finding what the previous cannot:
//! - `tcp`: the connect succeeds (no credentials; what a session needs first).
//! - `banner`: a `220` arrives within the timeout. A vsftpd at `max_clients` accepts
//!   the connection and answers `421`; a wedged server accepts and never speaks.
//! - `login`: banner, `USER`/`PASS`, `EPSV` (falling back to `PASV`), `LIST` over a
//!   real data connection, `QUIT` — as NetScaler's FTP-EXTENDED monitor does. Only this
//!   finds a server whose passive data ports are firewalled.
//!
//! Rise/fall hysteresis ([`Streak`]) keeps one lost probe from pulling a member.
//! The password is never logged: [`Secret`] prints as `***`.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::farm::health_state::Streak;
use crate::farm::Farm;
use crate::metrics::Metrics;
use crate::net::{connect_from, note_exhaustion, LocalResource};
use crate::protocol::addr::{find_epsv_port, find_pasv_tuple};
use crate::protocol::reply::{ReplyFramer, ReplyLine};
use crate::proxy_protocol::{encode_local_header, ProxyVersion};

/// How deep a health check goes (`--health-check`, YAML `health.check`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum CheckKind {
    /// TCP connect only.
    #[default]
    Tcp,
    /// Connect and require a `220` greeting.
    Banner,
    /// Log in, list a directory over a data connection, quit.
    Login,
}

/// A string kept out of logs and `Debug` output (health-check password).
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// YAML `health:`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// `tcp`, `banner` or `login`.
    pub check: CheckKind,
    /// Time between rounds.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Bound on one whole check (connect, every reply, the listing).
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Consecutive passes that bring a down member up.
    pub rise: u32,
    /// Consecutive failures that take an up member down.
    pub fall: u32,
    /// `login` check account.
    pub user: Option<String>,
    /// `login` check password (never logged).
    pub password: Option<Secret>,
}

impl Default for HealthConfig {
    fn default() -> Self {
        // rise = fall = 1 keeps the behaviour of the bare TCP check before these
        // settings existed; HAProxy-like 2/3 is one YAML line away.
        HealthConfig {
            check: CheckKind::Tcp,
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(5),
            rise: 1,
            fall: 1,
            user: None,
            password: None,
        }
    }
}

impl HealthConfig {
    /// Reports problems as (key, reason).
    pub fn check(&self, mut problem: impl FnMut(&str, String)) {
        if self.interval.is_zero() {
            problem("interval", "must be above 0".into());
        }
        if self.timeout.is_zero() {
            problem("timeout", "must be above 0".into());
        }
        if self.rise == 0 || self.fall == 0 {
            problem("rise/fall", "must be at least 1".into());
        }
        if self.check == CheckKind::Login && self.user.is_none() {
            problem("user", "required by check: login".into());
        }
    }
}

/// Why a check failed (for the log; never contains the password).
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// Connect, read or write failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The whole check took longer than `health.timeout`.
    #[error("timed out")]
    Timeout,
    /// The server answered, but not as a healthy one does.
    #[error("{step}: {reply}")]
    Reply {
        /// What was asked.
        step: &'static str,
        /// What came back (first line, trimmed).
        reply: String,
    },
}

fn io_err(e: &std::io::Error) -> Option<LocalResource> {
    LocalResource::of(e)
}

/// Runs one check of `addr`.
pub async fn check_once(
    addr: SocketAddr,
    cfg: &HealthConfig,
    connect_timeout: Duration,
) -> Result<(), CheckError> {
    check_once_with(addr, cfg, connect_timeout, None).await
}

/// [`check_once`] towards a backend that expects a PROXY protocol header
/// (`backend_proxy_protocol`): the check opens with a `LOCAL` (v2) / `UNKNOWN` (v1)
/// header, the spec's form for a balancer's own health checks, so an `accept-proxy`
/// haproxy in front of the server does not drop it.
pub async fn check_once_with(
    addr: SocketAddr,
    cfg: &HealthConfig,
    connect_timeout: Duration,
    proxy: Option<ProxyVersion>,
) -> Result<(), CheckError> {
    let connect_timeout = connect_timeout.min(cfg.timeout);
    let run = async {
        let mut stream = connect_from(addr, None, connect_timeout).await?;
        if let Some(version) = proxy {
            stream.write_all(&encode_local_header(version)).await?;
        }
        match cfg.check {
            CheckKind::Tcp => Ok(()),
            CheckKind::Banner => {
                let mut c = Control::new(stream);
                c.expect("banner", &[220]).await.map(drop)
            }
            CheckKind::Login => login(Control::new(stream), addr, cfg, connect_timeout).await,
        }
    };
    tokio::time::timeout(cfg.timeout, run)
        .await
        .unwrap_or(Err(CheckError::Timeout))
}

/// The longest reply line a check reads (a banner is short; a bound keeps a hostile
/// or broken server from growing the buffer).
const MAX_LINE: u64 = 4096;
/// The most listing bytes read (the content does not matter, only that data flows).
const MAX_LISTING: u64 = 1 << 20;

struct Control {
    io: BufReader<TcpStream>,
}

impl Control {
    fn new(s: TcpStream) -> Self {
        Control {
            io: BufReader::new(s),
        }
    }

    /// Reads one whole reply (multi-line aware): its code and last line.
    async fn reply(&mut self) -> Result<(u16, String), CheckError> {
        let mut framer = ReplyFramer::new();
        loop {
            let mut line = Vec::new();
            let n = (&mut self.io)
                .take(MAX_LINE)
                .read_until(b'\n', &mut line)
                .await?;
            if n == 0 {
                return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
            }
            let text = String::from_utf8_lossy(&line).trim_end().to_owned();
            match framer.classify(&line) {
                Ok(ReplyLine::Single(c) | ReplyLine::End(c)) => return Ok((c.0, text)),
                Ok(_) => {}
                Err(_) => {
                    return Err(CheckError::Reply {
                        step: "reply",
                        reply: text,
                    })
                }
            }
        }
    }

    /// Reads a reply and requires one of `codes` (skipping 1xx preliminaries).
    async fn expect(&mut self, step: &'static str, codes: &[u16]) -> Result<String, CheckError> {
        loop {
            let (code, text) = self.reply().await?;
            if codes.contains(&code) {
                return Ok(text);
            }
            if !(100..200).contains(&code) {
                return Err(CheckError::Reply { step, reply: text });
            }
        }
    }

    async fn send(&mut self, line: &str) -> Result<(), CheckError> {
        self.io.get_mut().write_all(line.as_bytes()).await?;
        self.io.get_mut().write_all(b"\r\n").await?;
        Ok(())
    }
}

async fn login(
    mut c: Control,
    addr: SocketAddr,
    cfg: &HealthConfig,
    connect_timeout: Duration,
) -> Result<(), CheckError> {
    c.expect("banner", &[220]).await?;
    c.send(&format!(
        "USER {}",
        cfg.user.as_deref().unwrap_or("anonymous")
    ))
    .await?;
    let (code, text) = c.reply().await?;
    match code {
        230 => {}
        331 | 332 => {
            let pass = cfg.password.as_ref().map_or("", |s| s.0.as_str());
            c.send(&format!("PASS {pass}")).await?;
            c.expect("PASS", &[230]).await?;
        }
        _ => {
            return Err(CheckError::Reply {
                step: "USER",
                reply: text,
            })
        }
    }
    // EPSV names only a port, on the control connection's address (RFC 2428); PASV
    // for servers without it.
    c.send("EPSV").await?;
    let (code, text) = c.reply().await?;
    let target = if code == 229 {
        let port = find_epsv_port(text.as_bytes()).map_err(|_| CheckError::Reply {
            step: "EPSV",
            reply: text.clone(),
        })?;
        SocketAddr::new(addr.ip(), port.port)
    } else {
        c.send("PASV").await?;
        let text = c.expect("PASV", &[227]).await?;
        let t = find_pasv_tuple(text.as_bytes()).map_err(|_| CheckError::Reply {
            step: "PASV",
            reply: text.clone(),
        })?;
        pasv_target(addr, t.addr)
    };
    let mut data = connect_from(target, None, connect_timeout).await?;
    c.send("LIST").await?;
    c.expect("LIST", &[150, 125]).await?;
    let mut sink = tokio::io::sink();
    tokio::io::copy(&mut (&mut data).take(MAX_LISTING), &mut sink).await?;
    drop(data);
    c.expect("LIST", &[226, 250]).await?;
    c.send("QUIT").await?;
    // A server that closes without 221 after a good listing is still healthy.
    let _ = c.reply().await;
    Ok(())
}

/// Where a `227`'s data connection goes: its IPv4 address over IPv4; over IPv6 its
/// port on the control connection's address (a `227` can only name IPv4, which an
/// IPv6-only path cannot reach; curl's `--ftp-skip-pasv-ip` does the same).
fn pasv_target(control: SocketAddr, named: std::net::SocketAddrV4) -> SocketAddr {
    match control {
        SocketAddr::V4(_) => SocketAddr::V4(named),
        SocketAddr::V6(_) => SocketAddr::new(control.ip(), named.port()),
    }
}

/// Checks every member each `health.interval` (the first round at once, so readiness
/// is known right after start) until `shutdown` fires. Members of a round are checked
/// concurrently so one black-holed backend does not delay the others' verdicts.
pub async fn run(
    farm: Arc<Farm>,
    cfg: HealthConfig,
    connect_timeout: Duration,
    proxy: Option<ProxyVersion>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let mut ticker = tokio::time::interval(cfg.interval);
    // After a stall, check once rather than in a burst.
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let cfg = Arc::new(cfg);
    let mut streaks: std::collections::HashMap<SocketAddr, Streak> = Default::default();
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = shutdown.cancelled() => return,
        }
        let members = farm.members();
        streaks.retain(|a, _| members.iter().any(|m| m.addr == *a));
        let mut checks = JoinSet::new();
        for m in members.iter() {
            let addr = m.addr;
            let cfg = Arc::clone(&cfg);
            checks.spawn(async move {
                (
                    addr,
                    check_once_with(addr, &cfg, connect_timeout, proxy).await,
                )
            });
        }
        loop {
            // Dropping the JoinSet on shutdown aborts checks still in flight.
            let joined = tokio::select! {
                j = checks.join_next() => j,
                () = shutdown.cancelled() => return,
            };
            let Some(joined) = joined else { break };
            let Ok((addr, result)) = joined else { continue };
            // Out of descriptors or buffers here says nothing about the backend: keep
            // its last verdict (readiness must not flap to "no backend reachable").
            if let Err(CheckError::Io(e)) = &result {
                if let Some(resource) = io_err(e) {
                    note_exhaustion(&metrics, resource, "health check", e);
                    continue;
                }
            }
            let passed = result.is_ok();
            metrics
                .health_checks_total
                .with_label_values(&[
                    addr.to_string().as_str(),
                    if passed { "pass" } else { "fail" },
                ])
                .inc();
            let streak = streaks.entry(addr).or_default();
            let Some(up) = streak.observe(passed, cfg.rise, cfg.fall) else {
                if let Err(e) = &result {
                    debug!(backend = %addr, error = %e, "health check failed");
                }
                continue;
            };
            // The checker's own verdict changed (a session connect may have said
            // so already; the log tells what the check found).
            farm.health.set(addr, up);
            match &result {
                Ok(()) => info!(backend = %addr, check = ?cfg.check, "backend up"),
                Err(e) => {
                    warn!(backend = %addr, check = ?cfg.check, error = %e, "backend down (health check)")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::farm::{BalancePolicy, Verdict};

    #[test]
    fn pasv_fallback_over_ipv6_uses_the_control_address() {
        let named: std::net::SocketAddrV4 = "10.9.8.7:50001".parse().unwrap();
        let v4: SocketAddr = "192.0.2.1:21".parse().unwrap();
        let v6: SocketAddr = "[2001:db8::21]:21".parse().unwrap();
        assert_eq!(pasv_target(v4, named), SocketAddr::V4(named));
        assert_eq!(
            pasv_target(v6, named),
            "[2001:db8::21]:50001".parse::<SocketAddr>().unwrap()
        );
    }

    #[test]
    fn password_never_appears_in_debug_output() {
        let cfg = HealthConfig {
            check: CheckKind::Login,
            user: Some("monitor".into()),
            password: Some(Secret("hunter2".into())),
            ..HealthConfig::default()
        };
        let text = format!("{cfg:?}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("monitor"));
    }

    #[tokio::test]
    async fn marks_live_backend_up_and_dead_backend_down() {
        let live = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let live_addr = live.local_addr().unwrap();
        let dead = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let metrics = Arc::new(Metrics::new());
        let farm = Arc::new(Farm::new(
            vec![live_addr.into(), dead.into()],
            BalancePolicy::RoundRobin,
            Vec::new(),
            Arc::clone(&metrics),
        ));
        // The dead one starts "up" so the test sees the checker set it, not the default.
        farm.health.set(dead, true);
        let shutdown = CancellationToken::new();
        let cfg = HealthConfig {
            interval: Duration::from_millis(20),
            ..HealthConfig::default()
        };
        let task = tokio::spawn(run(
            Arc::clone(&farm),
            cfg,
            Duration::from_secs(5),
            None,
            Arc::clone(&metrics),
            shutdown.clone(),
        ));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while farm.health.verdict(live_addr) != Verdict::Up
            || farm.health.verdict(dead) != Verdict::Down
        {
            assert!(tokio::time::Instant::now() < deadline, "checker never ran");
            // Accept and drop so the listener's backlog never fills.
            let _ = tokio::time::timeout(Duration::from_millis(50), live.accept()).await;
        }
        let gauge = |a: SocketAddr| {
            metrics
                .backend_up
                .with_label_values(&[&a.to_string()])
                .get()
        };
        assert_eq!(
            (gauge(live_addr), gauge(dead)),
            (1, 0),
            "the gauge mirrors the verdicts"
        );
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("checker stops on shutdown")
            .unwrap();
    }
}
