//! The open WebSocket connections. Each connection holds an [`Open`] guard for as long as it
//! lives: the guard counts it in and, when dropped on whatever path the connection ends, out
//! (the `duet_connections_open` metric), so no path can forget it. At shutdown every connection
//! has been told to close, and [`Connections::all_closed`] waits for the last guard: upgraded
//! connections are not tracked by axum, and the process must not exit before their close
//! frames (with the reason) are sent.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::watch;

use crate::metrics::Metrics;

#[derive(Clone)]
pub struct Connections {
    metrics: Arc<Metrics>,
    /// How many are open; watched by [`Connections::all_closed`].
    open: Arc<watch::Sender<u64>>,
}

/// One open connection, counted until dropped.
pub struct Open {
    connections: Connections,
}

impl Connections {
    pub fn new(metrics: Arc<Metrics>) -> Connections {
        Connections {
            metrics,
            open: Arc::new(watch::channel(0).0),
        }
    }

    /// Counts a connection in, until the guard is dropped.
    pub fn open(&self) -> Open {
        self.open.send_modify(|n| *n += 1);
        Metrics::inc(&self.metrics.connections_total);
        self.metrics
            .connections_open
            .fetch_add(1, Ordering::Relaxed);
        Open {
            connections: self.clone(),
        }
    }

    /// Waits until no connection is open.
    pub async fn all_closed(&self) {
        let mut open = self.open.subscribe();
        // The sender lives as long as `self`: this cannot fail.
        let _ = open.wait_for(|n| *n == 0).await;
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        let connections = &self.connections;
        connections.open.send_modify(|n| *n -= 1);
        connections
            .metrics
            .connections_open
            .fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn all_closed_waits_for_the_last_guard() {
        let metrics = Arc::new(Metrics::default());
        let connections = Connections::new(metrics.clone());
        connections.all_closed().await;
        let (a, b) = (connections.open(), connections.open());
        assert_eq!(metrics.connections_open.load(Ordering::Relaxed), 2);
        let waiting = tokio::spawn({
            let connections = connections.clone();
            async move { connections.all_closed().await }
        });
        drop(a);
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "one is still open");
        drop(b);
        waiting.await.unwrap();
        assert_eq!(metrics.connections_open.load(Ordering::Relaxed), 0);
        assert_eq!(metrics.connections_total.load(Ordering::Relaxed), 2);
    }
}
