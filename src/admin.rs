//! Admin HTTP listener (`metrics:` / `--metrics`): `/metrics` in the Prometheus text
//! format, `/healthz` (the process answers), `/readyz` (listeners serving and at least
//! one backend reachable, else `503` and the reason).
//!
//! Bounded by construction, since it may face the same networks as the FTP port: `GET`
//! and `HEAD` only, request bodies never read, one request per connection (nothing
//! idles on keep-alive), a short first-byte timeout against silent connections, a
//! header read timeout against slow clients (slowloris), a whole-connection timeout, a
//! cap on concurrent connections per source address (so one client cannot starve the
//! probes of another: a Kubernetes liveness probe that times out restarts a healthy
//! pod), a larger global cap, and everything ends with the shutdown token.

use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use dashmap::DashMap;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::farm::Farm;
use crate::metrics::Metrics;
use crate::net::AcceptBackoff;
use crate::protocol::addr::canonical_ip;

/// A probe or scraper writes its request as soon as it connects; a connection with no
/// byte after this long is closed. Short, so silent connections cannot pile up.
pub const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(2);
/// A scraper sends its request line and headers at once; anything slower is not one
/// (slowloris). Counted from the start of the request.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(3);
/// Upper bound on one connection, including a slow reader of a large `/metrics`.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);
/// Concurrent admin connections from one source address. Probes and scrapers need a
/// handful each; the cap keeps one client (or one misbehaving network) from taking the
/// slots that other sources' probes need. More from that address are closed at once.
pub const MAX_CONNECTIONS_PER_SOURCE: usize = 16;
/// Concurrent admin connections in all: a backstop on memory and descriptors, large
/// enough that many sources at their own cap do not reach it.
pub const MAX_CONNECTIONS: usize = 1024;

/// Open admin connections per source address; a slot is given back when its
/// [`SourceSlot`] drops.
#[derive(Debug, Default)]
struct PerSource {
    open: DashMap<IpAddr, usize>,
}

struct SourceSlot {
    table: Arc<PerSource>,
    ip: IpAddr,
}

impl PerSource {
    fn try_acquire(table: &Arc<PerSource>, ip: IpAddr) -> Option<SourceSlot> {
        // The entry guard is held only for this check-and-increment (never across an
        // `.await`).
        let mut n = table.open.entry(ip).or_insert(0);
        if *n >= MAX_CONNECTIONS_PER_SOURCE {
            return None;
        }
        *n += 1;
        drop(n);
        Some(SourceSlot {
            table: Arc::clone(table),
            ip,
        })
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        if let Some(mut n) = self.table.open.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
        }
        self.table.open.remove_if(&self.ip, |_, n| *n == 0);
    }
}

/// What the admin endpoints report on.
#[derive(Debug)]
pub struct AdminState {
    metrics: Arc<Metrics>,
    /// The current snapshot's farm (a reload replaces it).
    farm: std::sync::RwLock<Arc<Farm>>,
    serving: AtomicBool,
    /// `POST /reload`, once the gateway has a reloader.
    reloader: std::sync::OnceLock<Arc<crate::reload::Reloader>>,
    /// Set when draining starts: `/readyz` answers `503 draining` so balancers move on.
    draining: AtomicBool,
}

impl AdminState {
    /// State for `metrics` and the `/readyz` check of `farm`'s health; not serving
    /// until marked so.
    pub fn new(metrics: Arc<Metrics>, farm: Arc<Farm>) -> Self {
        AdminState {
            metrics,
            farm: std::sync::RwLock::new(farm),
            serving: AtomicBool::new(false),
            reloader: std::sync::OnceLock::new(),
            draining: AtomicBool::new(false),
        }
    }

    /// Set once the FTP listeners accept sessions (and cleared at shutdown).
    pub fn set_serving(&self, serving: bool) {
        self.serving.store(serving, Ordering::Relaxed);
    }

    /// The farm readiness looks at, after a reload.
    pub fn set_farm(&self, farm: Arc<Farm>) {
        *self.farm.write().unwrap_or_else(|p| p.into_inner()) = farm;
    }

    /// Enables `POST /reload`.
    pub fn set_reloader(&self, r: Arc<crate::reload::Reloader>) {
        let _ = self.reloader.set(r);
    }

    /// Set once draining starts; `/healthz` stays `200` (the process is fine).
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// `Ok` when ftpgate can take sessions; otherwise why not. Backend reachability is
    /// the farm's [`crate::farm::BackendHealth`], kept by the health checker and the
    /// balancer: ready while one member is up and not draining. Without backends
    /// (transparent listeners only) every session has its own destination, so serving
    /// is enough. The body lists every member's state either way (after `ok` or the
    /// reason), for the operator reading `curl /readyz`.
    pub fn readiness(&self) -> Result<String, String> {
        if self.draining.load(Ordering::Relaxed) {
            return Err("draining".into());
        }
        if !self.serving.load(Ordering::Relaxed) {
            return Err("FTP listeners are not serving".into());
        }
        let farm = Arc::clone(&self.farm.read().unwrap_or_else(|p| p.into_inner()));
        let detail = farm.describe();
        if farm.specs().is_empty() {
            return Ok(detail);
        }
        if farm.usable_members() == 0 {
            return Err(format!(
                "no backend reachable (0 of {} up)\n{detail}",
                farm.members().len()
            ));
        }
        Ok(detail)
    }
}

/// Serves admin requests on `listener` until `shutdown` fires.
pub async fn run(listener: TcpListener, state: Arc<AdminState>, shutdown: CancellationToken) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let per_source = Arc::new(PerSource::default());
    let mut backoff = AcceptBackoff::default();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.cancelled() => return,
        };
        let (stream, peer) = match accepted {
            Ok(x) => {
                backoff.reset();
                x
            }
            Err(e) => {
                let delay = backoff.after_error(&e, &state.metrics, "admin accept");
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = shutdown.cancelled() => return,
                }
                continue;
            }
        };
        let refused = |reason: &'static str| {
            state
                .metrics
                .admin_connections_refused_total
                .with_label_values(&[reason])
                .inc();
        };
        let ip = canonical_ip(peer.ip());
        let Some(source_slot) = PerSource::try_acquire(&per_source, ip) else {
            refused("per_source_limit");
            debug!(%peer, "admin connections from this source at their limit; closing a new one");
            continue;
        };
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
            refused("global_limit");
            debug!("admin connection limit reached; closing a new connection");
            continue;
        };
        let state = Arc::clone(&state);
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let _slots = (permit, source_slot);
            tokio::select! {
                () = serve_connection(stream, &state) => {}
                () = shutdown.cancelled() => {}
            }
        });
    }
}

/// One admin connection: its first byte within [`FIRST_BYTE_TIMEOUT`], its headers
/// within [`HEADER_READ_TIMEOUT`], all of it within [`CONNECTION_TIMEOUT`].
async fn serve_connection(stream: TcpStream, state: &Arc<AdminState>) {
    let mut probe = [0u8; 1];
    match tokio::time::timeout(FIRST_BYTE_TIMEOUT, stream.peek(&mut probe)).await {
        Ok(Ok(n)) if n > 0 => {}
        Ok(_) => return, // closed or failed before a request
        Err(_) => {
            state
                .metrics
                .admin_connections_refused_total
                .with_label_values(&["first_byte_timeout"])
                .inc();
            debug!("admin connection sent nothing; closed");
            return;
        }
    }
    let state = Arc::clone(state);
    let service = service_fn(move |req: Request<Incoming>| {
        let response = respond(&state, &req);
        async move { Ok::<_, Infallible>(response) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .keep_alive(false)
        .serve_connection(TokioIo::new(stream), service);
    match tokio::time::timeout(CONNECTION_TIMEOUT, conn).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => debug!(error = %e, "admin connection error"),
        Err(_) => debug!("admin connection timed out"),
    }
}

fn respond(state: &AdminState, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if *req.method() == Method::POST && req.uri().path() == "/reload" {
        return reload(state);
    }
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n".into());
    }
    match req.uri().path() {
        "/metrics" => {
            let mut r = Response::new(Full::new(Bytes::from(state.metrics.render())));
            r.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static(prometheus::TEXT_FORMAT),
            );
            r
        }
        "/healthz" => text(StatusCode::OK, "ok\n".into()),
        "/readyz" => match state.readiness() {
            Ok(detail) => text(StatusCode::OK, format!("ok\n{detail}")),
            Err(reason) if reason == "draining" => {
                text(StatusCode::SERVICE_UNAVAILABLE, "draining\n".into())
            }
            Err(reason) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {reason}\n"),
            ),
        },
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /metrics, /healthz or /readyz\n".into(),
        ),
    }
}

/// `POST /reload`: the same reload as `SIGHUP`, answered with its outcome. Only the
/// admin listener serves it (bind `admin.listen` to a trusted address).
fn reload(state: &AdminState) -> Response<Full<Bytes>> {
    let Some(r) = state.reloader.get() else {
        return text(StatusCode::NOT_FOUND, "reload not available\n".into());
    };
    match r.reload() {
        Ok(kept) if kept.is_empty() => text(StatusCode::OK, "reloaded\n".into()),
        Ok(kept) => text(
            StatusCode::OK,
            format!(
                "reloaded; kept old values (restart to apply): {}\n",
                kept.join(", ")
            ),
        ),
        Err(crate::reload::ReloadError::Invalid(errors)) => {
            let mut body = String::from("reload refused, nothing changed:\n");
            for e in errors.iter() {
                body.push_str(&format!("{e}\n"));
            }
            text(StatusCode::UNPROCESSABLE_ENTITY, body)
        }
        Err(e) => text(StatusCode::CONFLICT, format!("{e}\n")),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_source_cap_is_per_address_and_slots_come_back() {
        let table = Arc::new(PerSource::default());
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let mut held: Vec<SourceSlot> = (0..MAX_CONNECTIONS_PER_SOURCE)
            .map(|_| PerSource::try_acquire(&table, a).expect("under the cap"))
            .collect();
        assert!(PerSource::try_acquire(&table, a).is_none(), "over the cap");
        // Another source is not affected by the first one's flood.
        let other = PerSource::try_acquire(&table, b).expect("other source");
        held.pop();
        assert!(
            PerSource::try_acquire(&table, a).is_some(),
            "a slot came back"
        );
        drop((held, other));
        assert!(table.open.is_empty(), "no entries leak");
    }
}
