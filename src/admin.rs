//! Admin HTTP listener (`metrics:` / `--metrics`): `/metrics` in the Prometheus text
//! format, `/healthz` (the process answers), `/readyz` (listeners serving and at least
//! one backend reachable, else `503` and the reason).
//!
//! Bounded by construction, since it may face the same networks as the FTP port: `GET`
//! and `HEAD` only, request bodies never read, one request per connection (nothing
//! idles on keep-alive), a header read timeout against slow clients, a whole-connection
//! timeout, a cap on concurrent connections, and everything ends with the shutdown
//! token.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::metrics::Metrics;

/// A scraper sends its request line and headers at once; anything slower is not one.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Upper bound on one connection, including a slow reader of a large `/metrics`.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);
/// Scrapers and probes need a handful; more is a flood, refused by closing.
const MAX_CONNECTIONS: usize = 64;

/// What the admin endpoints report on.
#[derive(Debug)]
pub struct AdminState {
    metrics: Arc<Metrics>,
    backends: Vec<SocketAddr>,
    serving: AtomicBool,
}

impl AdminState {
    pub fn new(metrics: Arc<Metrics>, backends: Vec<SocketAddr>) -> Self {
        AdminState {
            metrics,
            backends,
            serving: AtomicBool::new(false),
        }
    }

    /// Set once the FTP listeners accept sessions (and cleared at shutdown).
    pub fn set_serving(&self, serving: bool) {
        self.serving.store(serving, Ordering::Relaxed);
    }

    /// `Ok` when ftpgate can take sessions; otherwise why not. Backend reachability is
    /// `ftpgate_backend_up`, kept by the health checker and the balancer. Without
    /// backends (transparent listeners only) every session has its own destination, so
    /// serving is enough.
    pub fn readiness(&self) -> Result<(), String> {
        if !self.serving.load(Ordering::Relaxed) {
            return Err("FTP listeners are not serving".into());
        }
        if self.backends.is_empty() {
            return Ok(());
        }
        let up = self
            .backends
            .iter()
            .filter(|b| {
                self.metrics
                    .backend_up
                    .with_label_values(&[&b.to_string()])
                    .get()
                    > 0
            })
            .count();
        if up == 0 {
            return Err(format!(
                "no backend reachable (0 of {} up)",
                self.backends.len()
            ));
        }
        Ok(())
    }
}

/// Serves admin requests on `listener` until `shutdown` fires.
pub async fn run(listener: TcpListener, state: Arc<AdminState>, shutdown: CancellationToken) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => return,
        };
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
            debug!("admin connection limit reached; closing a new connection");
            continue;
        };
        let state = Arc::clone(&state);
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service = service_fn(move |req: Request<Incoming>| {
                let response = respond(&state, &req);
                async move { Ok::<_, Infallible>(response) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                done = tokio::time::timeout(CONNECTION_TIMEOUT, conn) => match done {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => debug!(error = %e, "admin connection error"),
                    Err(_) => debug!("admin connection timed out"),
                },
                () = shutdown.cancelled() => {}
            }
        });
    }
}

fn respond(state: &AdminState, req: &Request<Incoming>) -> Response<Full<Bytes>> {
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
            Ok(()) => text(StatusCode::OK, "ok\n".into()),
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

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}
