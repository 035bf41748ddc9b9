//! Prometheus counters and gauges, rendered by hand: a handful of atomics is all the server
//! needs, and the text format is simple enough not to warrant a metrics framework.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

#[derive(Default)]
pub struct Metrics {
    pub connections_total: AtomicU64,
    pub connections_open: AtomicU64,
    pub connections_rejected: AtomicU64,
    pub messages_received: AtomicU64,
    pub bytes_received: AtomicU64,
    pub peers_kicked: AtomicU64,
    pub rooms_created: AtomicU64,
    pub rooms_loaded: AtomicU64,
    pub rooms_unloaded: AtomicU64,
    pub flushes: AtomicU64,
    pub flush_failures: AtomicU64,
    pub updates_written: AtomicU64,
    pub update_rows_written: AtomicU64,
    pub compactions: AtomicU64,
    pub compaction_failures: AtomicU64,
    pub versions_taken: AtomicU64,
    pub version_failures: AtomicU64,
    pub relay_published: AtomicU64,
    pub relay_bytes_published: AtomicU64,
    pub relay_received: AtomicU64,
    pub relay_dropped: AtomicU64,
    pub relay_repairs: AtomicU64,
}

impl Metrics {
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }

    /// The Prometheus text exposition of every metric, plus the gauges passed in.
    pub fn render(
        &self,
        rooms_loaded_now: usize,
        unflushed_rooms: usize,
        degraded: bool,
    ) -> String {
        let counters: [(&str, &str, &AtomicU64); 22] = [
            (
                "duet_connections_total",
                "WebSocket connections accepted",
                &self.connections_total,
            ),
            (
                "duet_connections_open",
                "WebSocket connections open now",
                &self.connections_open,
            ),
            (
                "duet_connections_rejected_total",
                "WebSocket upgrades refused",
                &self.connections_rejected,
            ),
            (
                "duet_messages_received_total",
                "WebSocket messages received",
                &self.messages_received,
            ),
            (
                "duet_bytes_received_total",
                "WebSocket payload bytes received",
                &self.bytes_received,
            ),
            (
                "duet_peers_kicked_total",
                "connections closed for breaking a limit or being too slow",
                &self.peers_kicked,
            ),
            (
                "duet_rooms_created_total",
                "rooms created",
                &self.rooms_created,
            ),
            (
                "duet_rooms_loaded_total",
                "rooms loaded from the store",
                &self.rooms_loaded,
            ),
            (
                "duet_rooms_unloaded_total",
                "idle rooms unloaded",
                &self.rooms_unloaded,
            ),
            ("duet_flushes_total", "group commits written", &self.flushes),
            (
                "duet_flush_failures_total",
                "group commits that failed and will be retried",
                &self.flush_failures,
            ),
            (
                "duet_updates_written_total",
                "CRDT updates written to the store",
                &self.updates_written,
            ),
            (
                "duet_update_rows_written_total",
                "rows of the update log written (each flush merges a room's updates into one)",
                &self.update_rows_written,
            ),
            (
                "duet_compactions_total",
                "room states compacted",
                &self.compactions,
            ),
            (
                "duet_compaction_failures_total",
                "compactions that failed (tried again after the room's next flush)",
                &self.compaction_failures,
            ),
            (
                "duet_versions_taken_total",
                "versions of rooms taken",
                &self.versions_taken,
            ),
            (
                "duet_version_failures_total",
                "versions that could not be written (tried again after the next flush)",
                &self.version_failures,
            ),
            (
                "duet_relay_published_total",
                "messages published to the other nodes (Redis PUBLISH)",
                &self.relay_published,
            ),
            (
                "duet_relay_published_bytes_total",
                "bytes published to the other nodes",
                &self.relay_bytes_published,
            ),
            (
                "duet_relay_received_total",
                "messages received from the other nodes",
                &self.relay_received,
            ),
            (
                "duet_relay_dropped_total",
                "messages to the other nodes dropped (Redis away, queue full); heartbeats repair them",
                &self.relay_dropped,
            ),
            (
                "duet_relay_repairs_total",
                "repairs from other nodes that brought this node something it lacked",
                &self.relay_repairs,
            ),
        ];
        let mut out = String::new();
        for (name, help, value) in counters {
            let kind = if name.ends_with("_open") {
                "gauge"
            } else {
                "counter"
            };
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {}",
                value.load(Relaxed)
            );
        }
        let gauges = [
            (
                "duet_rooms_in_memory",
                "rooms held in memory",
                rooms_loaded_now as u64,
            ),
            (
                "duet_rooms_unflushed",
                "rooms with updates not yet written",
                unflushed_rooms as u64,
            ),
            (
                "duet_store_degraded",
                "1 while the database is unreachable",
                degraded as u64,
            ),
        ];
        for (name, help, value) in gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        }
        out
    }
}
