//! The FTP listeners: bound at start, changed by a reload without a restart, and one
//! accept loop each.
//!
//! ```text
//!   reload ── new listener list, diffed by address with the open set
//!     ├─ added ───▶ bound first, all or none ── one fails ─▶ nothing changes (the old
//!     │                                                      set serves; key logged)
//!     ├─ kept ────▶ the same socket; a new `mode`/`tls` applies to the next session
//!     │             (a changed `tproxy` needs a restart: the socket option is set at bind)
//!     └─ removed ─▶ closed once the new snapshot is in; its sessions keep running
//!   drain/stop ─▶ every listener closes (added ones too: their tokens are children)
//! ```
//! New listeners are bound before removed ones close, so moving a port is never a
//! moment without one; the kernel's `EADDRINUSE` is the only arbiter of a clash.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::config::{ListenerConfig, ListenerMode, ListenerTls};
use crate::net::AcceptBackoff;
use crate::reload::Snapshots;
use crate::session::run_session;

/// Connections the kernel queues per FTP listener while ftpgate is busy accepting.
const CONTROL_BACKLOG: i32 = 1024;

/// An FTP listener address that could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {source}")]
pub struct ListenerBindError {
    /// The listener's address (`listen`, `listeners[].listen`).
    pub addr: SocketAddr,
    /// The bind or listen error.
    #[source]
    pub source: io::Error,
}

/// What the accept loops need once the gateway serves.
#[derive(Clone)]
pub(crate) struct Serving {
    /// The snapshot each accepted session starts with.
    pub snapshots: Arc<Snapshots>,
    /// Hard stop for sessions.
    pub stop: CancellationToken,
    /// Every session, for the drain.
    pub sessions: TaskTracker,
    /// Every accept loop, for the drain.
    pub acceptors: TaskTracker,
}

/// One open listener.
#[derive(Debug)]
struct Open {
    /// As configured (`:0` stays `:0`: the key of the diff).
    spec: ListenerConfig,
    /// As bound (the real port).
    local: SocketAddr,
    /// Until its accept loop takes it.
    socket: Option<TcpListener>,
    /// `mode` and `tls` for the next accepted session (a reload may change them).
    attrs: watch::Sender<(ListenerMode, ListenerTls)>,
    /// Closes this listener alone (a child of the set's `accepting`).
    close: CancellationToken,
}

/// The open FTP listeners.
pub struct ListenerSet {
    open: Mutex<Vec<Open>>,
    serving: Mutex<Option<Serving>>,
    /// Parent of every listener's token: cancelled when the gateway drains or stops.
    accepting: CancellationToken,
}

impl std::fmt::Debug for ListenerSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerSet")
            .field("local_addrs", &self.local_addrs())
            .finish_non_exhaustive()
    }
}

/// A reload's new listeners, bound but not yet accepting; dropping it closes them.
#[derive(Debug)]
pub struct ListenerChange {
    specs: Vec<ListenerConfig>,
    added: Vec<Open>,
    /// Every listener's bound address after the change, in configuration order.
    local_addrs: Vec<SocketAddr>,
}

impl ListenerChange {
    /// The bound addresses once the change is committed (for `listen_addrs`).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local_addrs
    }
}

fn bind_one(
    spec: &ListenerConfig,
    accepting: &CancellationToken,
) -> Result<Open, ListenerBindError> {
    let addr = spec.listen;
    let socket = crate::net::bind_listener(addr, spec.tproxy, CONTROL_BACKLOG)
        .map_err(|source| ListenerBindError { addr, source })?;
    let local = socket
        .local_addr()
        .map_err(|source| ListenerBindError { addr, source })?;
    Ok(Open {
        spec: spec.clone(),
        local,
        socket: Some(socket),
        attrs: watch::channel((spec.mode, spec.tls)).0,
        close: accepting.child_token(),
    })
}

impl ListenerSet {
    /// Binds every listener in `specs` (all or none).
    pub fn bind(specs: &[ListenerConfig]) -> Result<ListenerSet, ListenerBindError> {
        let accepting = CancellationToken::new();
        let open = specs
            .iter()
            .map(|s| bind_one(s, &accepting))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ListenerSet {
            open: Mutex::new(open),
            serving: Mutex::new(None),
            accepting,
        })
    }

    fn open(&self) -> std::sync::MutexGuard<'_, Vec<Open>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The bound addresses (with real ports when `:0` was asked for), in
    /// configuration order.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.open().iter().map(|o| o.local).collect()
    }

    /// Starts an accept loop on every listener; later additions start at commit.
    pub(crate) fn serve(&self, serving: Serving) {
        for o in self.open().iter_mut() {
            start(o, &serving);
        }
        *self.serving.lock().unwrap_or_else(|p| p.into_inner()) = Some(serving);
    }

    /// Closes every listener (drain, stop); sessions are not touched.
    pub fn close_all(&self) {
        self.accepting.cancel();
    }

    /// Binds the listeners of `specs` that are not open yet (by address), all or none.
    /// Nothing changes until [`Self::commit`].
    pub fn prepare(&self, specs: &[ListenerConfig]) -> Result<ListenerChange, ListenerBindError> {
        let open = self.open();
        // Draining: nothing new is opened (the drain closed every listener).
        let draining = self.accepting.is_cancelled();
        let mut added = Vec::new();
        let mut local_addrs = Vec::with_capacity(specs.len());
        for spec in specs {
            match open.iter().find(|o| o.spec.listen == spec.listen) {
                Some(o) => local_addrs.push(o.local),
                None if draining => {}
                None => {
                    let o = bind_one(spec, &self.accepting)?;
                    local_addrs.push(o.local);
                    added.push(o);
                }
            }
        }
        Ok(ListenerChange {
            specs: specs.to_vec(),
            added,
            local_addrs,
        })
    }

    /// Applies a prepared change: the added listeners accept, kept ones take their new
    /// `mode`/`tls`, removed ones close (their sessions keep running).
    pub fn commit(&self, change: ListenerChange) {
        let serving = self
            .serving
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut open = self.open();
        let ListenerChange { specs, added, .. } = change;
        open.retain(|o| {
            let keep = specs.iter().any(|s| s.listen == o.spec.listen);
            if !keep {
                info!(addr = %o.local, "reload: listener closed; its sessions keep running");
                o.close.cancel();
            }
            keep
        });
        for o in open.iter_mut() {
            let Some(spec) = specs.iter().find(|s| s.listen == o.spec.listen) else {
                continue;
            };
            if spec.tproxy != o.spec.tproxy {
                warn!(addr = %o.local, key = "listeners[].tproxy", "reload: tproxy is set when a socket is bound; old value kept (restart to apply)");
            }
            if (spec.mode, spec.tls) != (o.spec.mode, o.spec.tls) {
                info!(addr = %o.local, mode = ?spec.mode, tls = ?spec.tls, "reload: listener settings changed for new sessions");
                o.attrs.send_replace((spec.mode, spec.tls));
                o.spec.mode = spec.mode;
                o.spec.tls = spec.tls;
            }
        }
        for mut o in added {
            info!(addr = %o.local, mode = ?o.spec.mode, tls = ?o.spec.tls, "reload: listener added");
            if let Some(s) = &serving {
                start(&mut o, s);
            }
            open.push(o);
        }
        // Configuration order, as at start.
        open.sort_by_key(|o| specs.iter().position(|s| s.listen == o.spec.listen));
    }
}

fn start(o: &mut Open, serving: &Serving) {
    if let Some(socket) = o.socket.take() {
        serving.acceptors.spawn(accept_loop(
            socket,
            o.attrs.subscribe(),
            serving.clone(),
            o.close.clone(),
        ));
    }
}

async fn accept_loop(
    listener: TcpListener,
    attrs: watch::Receiver<(ListenerMode, ListenerTls)>,
    serving: Serving,
    close: CancellationToken,
) {
    let mut backoff = AcceptBackoff::default();
    let Serving {
        snapshots,
        stop,
        sessions,
        ..
    } = serving;
    loop {
        let delay = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    backoff.reset();
                    let (mode, tls) = *attrs.borrow();
                    // Each session keeps the snapshot it started with across reloads.
                    sessions.spawn(run_session(stream, peer, mode, tls, snapshots.current(), stop.clone()));
                    continue;
                }
                Err(e) => backoff.after_error(&e, &snapshots.current().metrics, "accept"),
            },
            () = close.cancelled() => return,
        };
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = close.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(addr: &str) -> ListenerConfig {
        ListenerConfig {
            listen: addr.parse().unwrap(),
            mode: ListenerMode::Reverse,
            tproxy: false,
            tls: ListenerTls::Explicit,
        }
    }

    #[tokio::test]
    async fn diff_by_address_binds_new_keeps_old_and_fails_as_a_whole() {
        let set = ListenerSet::bind(&[spec("127.0.0.1:0")]).unwrap();
        let first = set.local_addrs()[0];
        // Kept (same configured address, same socket) plus one new.
        let change = set
            .prepare(&[spec("127.0.0.1:0"), spec("127.0.0.2:0")])
            .unwrap();
        assert_eq!(change.local_addrs()[0], first);
        assert_eq!(change.local_addrs().len(), 2);
        set.commit(change);
        let both = set.local_addrs();
        assert_eq!(both[0], first);
        // An address held elsewhere: nothing bound, nothing changed.
        let held = std::net::TcpListener::bind("127.0.0.3:0").unwrap();
        let taken = ListenerConfig {
            listen: held.local_addr().unwrap(),
            ..spec("127.0.0.3:0")
        };
        let err = set
            .prepare(&[spec("127.0.0.1:0"), spec("127.0.0.4:0"), taken])
            .unwrap_err();
        assert_eq!(err.addr, held.local_addr().unwrap());
        assert_eq!(set.local_addrs(), both);
        // Removing the first leaves the second, in configuration order.
        set.commit(set.prepare(&[spec("127.0.0.2:0")]).unwrap());
        assert_eq!(set.local_addrs(), vec![both[1]]);
    }
}
