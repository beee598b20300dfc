//! Forwarded data connections reaching the session that leased their port: each
//! client-side data listener of a cluster replica registers its port here, and the
//! cluster listener delivers a peer's forwarded connection to it by port number.

use std::net::SocketAddr;
use std::sync::Arc;

use dashmap::DashMap;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// A forwarded connection, header read: the stream now carries the client's bytes.
#[derive(Debug)]
pub struct Handed {
    /// The stream from the forwarding peer.
    pub stream: TcpStream,
    /// The original client, as the peer's header names it.
    pub client: SocketAddr,
    /// The forwarding peer's ordinal.
    pub from: u16,
}

/// A handed connection waits here until its lease accepts it; more than a few at once
/// for one port is an intruder racing the client, and the rest are refused.
const PER_PORT_QUEUE: usize = 4;

/// Ports leased for a client data connection now, and where their forwarded
/// connections go.
#[derive(Debug, Default)]
pub struct Handoffs {
    waiting: DashMap<u16, mpsc::Sender<Handed>>,
}

/// Why a forwarded connection could not be handed over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Undeliverable {
    /// No session waits on that port (never leased, accepted already, or expired).
    #[error("no data connection is expected on that port")]
    NoMapping,
    /// The port's queue is full.
    #[error("too many connections queued for that port")]
    Full,
}

impl Handoffs {
    /// Registers `port` (leased by the caller) for forwarded connections until the
    /// returned slot drops.
    pub fn register(self: &Arc<Self>, port: u16) -> HandoffSlot {
        let (tx, rx) = mpsc::channel(PER_PORT_QUEUE);
        self.waiting.insert(port, tx.clone());
        HandoffSlot {
            port,
            rx,
            tx,
            registry: Arc::clone(self),
        }
    }

    /// Hands `h` to the session waiting on `port`; gives it back when there is none.
    pub fn deliver(&self, port: u16, h: Handed) -> Result<(), (Undeliverable, Handed)> {
        let Some(tx) = self.waiting.get(&port).map(|t| t.clone()) else {
            return Err((Undeliverable::NoMapping, h));
        };
        tx.try_send(h).map_err(|e| match e {
            mpsc::error::TrySendError::Full(h) => (Undeliverable::Full, h),
            mpsc::error::TrySendError::Closed(h) => (Undeliverable::NoMapping, h),
        })
    }

    /// Ports registered now.
    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    /// Whether no port is registered.
    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }
}

/// A port's registration; ends (and refuses further deliveries) when dropped.
#[derive(Debug)]
pub struct HandoffSlot {
    port: u16,
    rx: mpsc::Receiver<Handed>,
    tx: mpsc::Sender<Handed>,
    registry: Arc<Handoffs>,
}

impl HandoffSlot {
    /// The next forwarded connection for this port.
    pub async fn next(&mut self) -> Option<Handed> {
        self.rx.recv().await
    }
}

impl Drop for HandoffSlot {
    fn drop(&mut self) {
        // Only our own entry: the port may be leased and registered again already.
        let tx = &self.tx;
        self.registry
            .waiting
            .remove_if(&self.port, |_, t| t.same_channel(tx));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn stream() -> TcpStream {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (c, _) = tokio::join!(TcpStream::connect(addr), l.accept());
        c.unwrap()
    }

    fn handed(s: TcpStream) -> Handed {
        Handed {
            stream: s,
            client: "198.51.100.7:40000".parse().unwrap(),
            from: 1,
        }
    }

    #[tokio::test]
    async fn delivered_to_the_registered_port_only() {
        let reg = Arc::new(Handoffs::default());
        let mut slot = reg.register(50130);
        assert_eq!(reg.len(), 1);
        assert!(reg.deliver(50130, handed(stream().await)).is_ok());
        let (e, _) = reg.deliver(50131, handed(stream().await)).unwrap_err();
        assert_eq!(e, Undeliverable::NoMapping);
        let got = slot.next().await.unwrap();
        assert_eq!(got.from, 1);
        drop(slot);
        assert!(reg.is_empty());
        let (e, _) = reg.deliver(50130, handed(stream().await)).unwrap_err();
        assert_eq!(e, Undeliverable::NoMapping);
    }

    #[tokio::test]
    async fn queue_is_bounded() {
        let reg = Arc::new(Handoffs::default());
        let _slot = reg.register(1);
        for _ in 0..PER_PORT_QUEUE {
            assert!(reg.deliver(1, handed(stream().await)).is_ok());
        }
        let (e, _) = reg.deliver(1, handed(stream().await)).unwrap_err();
        assert_eq!(e, Undeliverable::Full);
    }

    #[tokio::test]
    async fn an_old_slot_does_not_remove_a_newer_registration() {
        let reg = Arc::new(Handoffs::default());
        let old = reg.register(7);
        let _new = reg.register(7);
        drop(old);
        assert_eq!(reg.len(), 1, "the newer registration stays");
        assert!(reg.deliver(7, handed(stream().await)).is_ok());
    }
}
