//! The relay between nodes (`--redis-url`): several `duet-server` processes behind a load
//! balancer share one PostgreSQL and pass each room's updates and presence to the other nodes
//! that hold the same room through Redis pub/sub, one channel per room (see docs/scale-out.md).
//!
//! Pub/sub may drop a message (a node cut from Redis, a reconnect, a full queue): nothing here
//! relies on every message arriving. Each node announces, once a second and per room, its state
//! vector and a digest of its deletions (a heartbeat); a node that has something the other
//! lacks answers with the difference (a repair). The heartbeat also says how far the node's own
//! updates are written, and that the node is alive: the others write what a node that fell
//! silent had not confirmed (see `Rooms`). This module is only the wire: the envelope, the
//! connections with their reconnects, the publishing queue and the cross-node peer count.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use futures_util::StreamExt;
use redis::aio::{MultiplexedConnection, PubSubSink};
use redis::AsyncConnectionConfig;
use tokio::sync::{mpsc, watch};
use uuid::Uuid;

use crate::metrics::Metrics;

/// How often each node sends a heartbeat for each room it holds.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// A node not heard from in a room for this long is taken for gone (dead, or cut from Redis):
/// its presence is removed and what it had not confirmed as written is written by the others.
pub const SILENCE: Duration = Duration::from_secs(5);
/// How long a node loading a room waits for the nodes that already hold it.
pub const LOAD_WAIT: Duration = Duration::from_secs(1);
/// Bound on each Redis command and connection attempt: Redis is on the local network, and a
/// node must notice an outage quickly (to report it and keep serving its own peers).
const REDIS_TIMEOUT: Duration = Duration::from_secs(1);
/// Relay messages queued for publishing; past it they are dropped (and repaired later).
const OUTBOX: usize = 8192;
/// The envelope's format version.
const VERSION: u8 = 1;

/// A node's random identity, chosen at start.
pub type NodeId = [u8; 16];

/// What one node tells the others about a room.
#[derive(Debug, Clone, PartialEq)]
pub enum Relayed {
    /// An update one of the sender's peers made, numbered in the order the sender sent them.
    Update {
        number: u64,
        update: Vec<u8>,
    },
    /// What the receiver of a heartbeat lacked (answering it), or any other catch-up.
    Repair(Vec<u8>),
    /// Presence of the sender's peers (a y-protocols awareness update).
    Awareness(Vec<u8>),
    Heartbeat(Heartbeat),
    /// The room was deleted: close its peers.
    Deleted,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Heartbeat {
    /// The sender's updates numbered up to this one are in the store.
    pub stored: u64,
    /// The sender has just loaded the room or reconnected: answer with presence and a
    /// heartbeat of your own.
    pub hello: bool,
    /// A digest of the sender's delete set (deletions do not show in a state vector).
    pub deletions: u64,
    /// The sender's state vector (v1 encoding).
    pub state_vector: Vec<u8>,
}

impl Relayed {
    fn kind(&self) -> u8 {
        match self {
            Relayed::Update { .. } => 1,
            Relayed::Repair(_) => 2,
            Relayed::Awareness(_) => 3,
            Relayed::Heartbeat(_) => 4,
            Relayed::Deleted => 5,
        }
    }

    /// `[version][origin: 16 bytes][kind][body]`; numbers are big-endian.
    pub fn encode(&self, origin: &NodeId) -> Bytes {
        let mut out = Vec::with_capacity(32);
        out.push(VERSION);
        out.extend_from_slice(origin);
        out.push(self.kind());
        match self {
            Relayed::Update { number, update } => {
                out.extend_from_slice(&number.to_be_bytes());
                out.extend_from_slice(update);
            }
            Relayed::Repair(data) | Relayed::Awareness(data) => out.extend_from_slice(data),
            Relayed::Heartbeat(h) => {
                out.extend_from_slice(&h.stored.to_be_bytes());
                out.push(u8::from(h.hello));
                out.extend_from_slice(&h.deletions.to_be_bytes());
                out.extend_from_slice(&h.state_vector);
            }
            Relayed::Deleted => {}
        }
        Bytes::from(out)
    }

    /// The sender and the message; `None` for anything malformed or of another version.
    pub fn decode(data: &[u8]) -> Option<(NodeId, Relayed)> {
        let (&version, rest) = data.split_first()?;
        if version != VERSION || rest.len() < 17 {
            return None;
        }
        let origin: NodeId = rest[..16].try_into().ok()?;
        let (kind, body) = (rest[16], &rest[17..]);
        let number = |at: usize| -> Option<u64> {
            Some(u64::from_be_bytes(body.get(at..at + 8)?.try_into().ok()?))
        };
        let message = match kind {
            1 => Relayed::Update {
                number: number(0)?,
                update: body.get(8..)?.to_vec(),
            },
            2 => Relayed::Repair(body.to_vec()),
            3 => Relayed::Awareness(body.to_vec()),
            4 => Relayed::Heartbeat(Heartbeat {
                stored: number(0)?,
                hello: *body.get(8)? != 0,
                deletions: number(9)?,
                state_vector: body.get(17..)?.to_vec(),
            }),
            5 => Relayed::Deleted,
            _ => return None,
        };
        Some((origin, message))
    }
}

/// A room's way to send messages to the other nodes: never blocks, drops when the queue is
/// full (the heartbeats repair what is lost).
#[derive(Clone)]
pub struct Outlet {
    room: Uuid,
    relay: Relay,
}

impl Outlet {
    pub fn send(&self, message: &Relayed) {
        self.relay.send(self.room, message);
    }
}

struct Inner {
    node: NodeId,
    client: redis::Client,
    outbox: mpsc::Sender<(Uuid, Bytes)>,
    /// Taken by the publisher task when it starts.
    outbox_rx: Mutex<Option<mpsc::Receiver<(Uuid, Bytes)>>>,
    /// Commands (publish, scripts): one multiplexed connection, made again after an error.
    commands: Mutex<Option<MultiplexedConnection>>,
    /// The subscription's sink while it is connected, to subscribe rooms as they load.
    subscriptions: Mutex<Option<PubSubSink>>,
    /// The subscription is up and answers pings.
    connected: AtomicBool,
    /// The last command sent failed.
    failing: AtomicBool,
    metrics: Arc<Metrics>,
}

/// A cheap handle on the relay.
#[derive(Clone)]
pub struct Relay {
    inner: Arc<Inner>,
}

/// Counts a room's peers on every node at once and, given a limit, takes a place for one
/// more when there is room. Counts of nodes whose liveness key has expired are dropped.
const PEERS_SCRIPT: &str = r"
local total = 0
local counts = redis.call('HGETALL', KEYS[1])
for i = 1, #counts, 2 do
  local node = counts[i]
  if node == ARGV[1] or redis.call('EXISTS', ARGV[3] .. node) == 1 then
    total = total + tonumber(counts[i + 1])
  else
    redis.call('HDEL', KEYS[1], node)
  end
end
local limit = tonumber(ARGV[2])
if limit > 0 then
  if total >= limit then return -1 end
  redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
  redis.call('EXPIRE', KEYS[1], 86400)
  total = total + 1
end
return total
";

/// What a place-taking attempt found.
pub enum Place {
    Taken,
    Full,
    /// Redis did not answer: only this node's own count applies.
    Unknown,
}

impl Relay {
    /// A relay to the Redis at `url` (nothing is connected yet: the tasks connect, and keep
    /// trying while Redis is away).
    pub fn new(url: &str, metrics: Arc<Metrics>) -> Result<Relay, redis::RedisError> {
        let client = redis::Client::open(url)?;
        let (outbox, outbox_rx) = mpsc::channel(OUTBOX);
        Ok(Relay {
            inner: Arc::new(Inner {
                node: *Uuid::new_v4().as_bytes(),
                client,
                outbox,
                outbox_rx: Mutex::new(Some(outbox_rx)),
                commands: Mutex::new(None),
                subscriptions: Mutex::new(None),
                connected: AtomicBool::new(false),
                failing: AtomicBool::new(false),
                metrics,
            }),
        })
    }

    pub fn node(&self) -> NodeId {
        self.inner.node
    }

    pub fn outlet(&self, room: Uuid) -> Outlet {
        Outlet {
            room,
            relay: self.clone(),
        }
    }

    /// Redis answers: subscribed, and the last command went through.
    pub fn healthy(&self) -> bool {
        self.inner.connected.load(Ordering::Relaxed) && !self.inner.failing.load(Ordering::Relaxed)
    }

    fn channel(room: Uuid) -> String {
        format!("duet:room:{room}")
    }

    fn peers_key(room: Uuid) -> String {
        format!("duet:peers:{room}")
    }

    fn node_key(&self) -> String {
        format!("duet:node:{}", Uuid::from_bytes(self.inner.node))
    }

    /// Queues a message for the room's channel.
    pub fn send(&self, room: Uuid, message: &Relayed) {
        let payload = message.encode(&self.inner.node);
        if self.inner.outbox.try_send((room, payload)).is_err() {
            Metrics::inc(&self.inner.metrics.relay_dropped);
        }
    }

    /// Publishes one message now, bypassing the queue (the last words of a node shutting
    /// down).
    pub async fn publish(&self, room: Uuid, message: &Relayed) {
        let payload = message.encode(&self.inner.node);
        self.run::<()>(
            redis::cmd("PUBLISH")
                .arg(Self::channel(room))
                .arg(payload.as_ref()),
        )
        .await;
    }

    /// The command connection, connecting if there is none.
    async fn commands(&self) -> Option<MultiplexedConnection> {
        if let Some(conn) = self
            .inner
            .commands
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            return Some(conn);
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(REDIS_TIMEOUT)
            .set_response_timeout(REDIS_TIMEOUT);
        match self
            .inner
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
        {
            Ok(conn) => {
                *self
                    .inner
                    .commands
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = Some(conn.clone());
                Some(conn)
            }
            Err(e) => {
                self.failed(&e);
                None
            }
        }
    }

    /// Runs a command; on failure the connection is dropped (made again on next use).
    async fn run<T: redis::FromRedisValue>(&self, command: &redis::Cmd) -> Option<T> {
        let mut conn = self.commands().await?;
        match command.query_async(&mut conn).await {
            Ok(value) => {
                self.recovered();
                Some(value)
            }
            Err(e) => {
                self.failed(&e);
                None
            }
        }
    }

    async fn run_pipeline(&self, pipeline: &redis::Pipeline) -> bool {
        let Some(mut conn) = self.commands().await else {
            return false;
        };
        match pipeline.query_async::<()>(&mut conn).await {
            Ok(()) => {
                self.recovered();
                true
            }
            Err(e) => {
                self.failed(&e);
                false
            }
        }
    }

    fn failed(&self, error: &redis::RedisError) {
        *self
            .inner
            .commands
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = None;
        if !self.inner.failing.swap(true, Ordering::Relaxed) {
            tracing::warn!(error = %error, "Redis unreachable; serving this node's peers alone, the relay resumes when it is back");
        }
    }

    fn recovered(&self) {
        if self.inner.failing.swap(false, Ordering::Relaxed) {
            tracing::info!("Redis commands go through again");
        }
    }

    /// Publishes the queued messages, in order, as pipelines of up to 256.
    pub async fn run_publisher(self, mut shutdown: watch::Receiver<bool>) {
        let Some(mut outbox) = self
            .inner
            .outbox_rx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        else {
            return;
        };
        let mut batch = Vec::with_capacity(256);
        loop {
            tokio::select! {
                n = outbox.recv_many(&mut batch, 256) => if n == 0 { return },
                _ = shutdown.changed() => return,
            }
            let mut pipeline = redis::pipe();
            let mut bytes = 0;
            for (room, payload) in batch.drain(..) {
                bytes += payload.len() as u64;
                pipeline
                    .cmd("PUBLISH")
                    .arg(Self::channel(room))
                    .arg(payload.as_ref())
                    .ignore();
            }
            let count = pipeline.cmd_iter().count() as u64;
            let metrics = &self.inner.metrics;
            if self.run_pipeline(&pipeline).await {
                metrics.relay_published.fetch_add(count, Ordering::Relaxed);
                metrics
                    .relay_bytes_published
                    .fetch_add(bytes, Ordering::Relaxed);
            } else {
                metrics.relay_dropped.fetch_add(count, Ordering::Relaxed);
            }
        }
    }

    /// Keeps a subscription to the rooms in `rooms()` open: connects (and after any loss
    /// connects again), subscribes them, calls `connected` once subscribed, and hands every
    /// message to `deliver`. A subscription that stops answering pings counts as lost.
    pub async fn run_subscriber(
        self,
        mut shutdown: watch::Receiver<bool>,
        rooms: impl Fn() -> Vec<Uuid>,
        connected: impl Fn(),
        deliver: impl Fn(Uuid, NodeId, Relayed),
    ) {
        let mut wait = Duration::from_millis(100);
        loop {
            let session = async {
                let pubsub =
                    tokio::time::timeout(REDIS_TIMEOUT, self.inner.client.get_async_pubsub())
                        .await
                        .map_err(|_| "connecting timed out".to_string())?
                        .map_err(|e| e.to_string())?;
                let (mut sink, mut stream) = pubsub.split();
                *self
                    .inner
                    .subscriptions
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = Some(sink.clone());
                let channels: Vec<String> = rooms().into_iter().map(Self::channel).collect();
                if !channels.is_empty() {
                    tokio::time::timeout(REDIS_TIMEOUT * 5, sink.subscribe(&channels))
                        .await
                        .map_err(|_| "subscribing timed out".to_string())?
                        .map_err(|e| e.to_string())?;
                }
                self.inner.connected.store(true, Ordering::Relaxed);
                tracing::info!(rooms = channels.len(), "relay subscribed");
                connected();
                wait = Duration::from_millis(100);
                let mut pings = tokio::time::interval(HEARTBEAT);
                loop {
                    tokio::select! {
                        message = stream.next() => {
                            let Some(message) = message else {
                                return Err("the subscription closed".to_string());
                            };
                            let room = message
                                .get_channel_name()
                                .strip_prefix("duet:room:")
                                .and_then(|id| Uuid::parse_str(id).ok());
                            let decoded = Relayed::decode(message.get_payload_bytes());
                            match (room, decoded) {
                                (Some(room), Some((origin, relayed))) if origin != self.inner.node => {
                                    Metrics::inc(&self.inner.metrics.relay_received);
                                    deliver(room, origin, relayed);
                                }
                                (Some(_), Some(_)) => {}
                                _ => tracing::warn!(channel = message.get_channel_name(), "unreadable relay message ignored"),
                            }
                        }
                        _ = pings.tick() => {
                            match tokio::time::timeout(REDIS_TIMEOUT * 2, sink.ping::<redis::Value>()).await {
                                Ok(Ok(_)) => {}
                                _ => return Err("the subscription stopped answering".to_string()),
                            }
                        }
                        _ = shutdown.changed() => return Ok(()),
                    }
                }
            };
            let outcome: Result<(), String> = session.await;
            *self
                .inner
                .subscriptions
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = None;
            let was = self.inner.connected.swap(false, Ordering::Relaxed);
            match outcome {
                Ok(()) => return,
                Err(error) if was => {
                    tracing::warn!(
                        error,
                        "relay subscription lost; serving this node's peers alone, reconnecting"
                    );
                }
                Err(error) => tracing::debug!(error, retry_in = ?wait, "relay not connected"),
            }
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => return,
            }
            wait = (wait * 2).min(Duration::from_secs(2));
        }
    }

    /// Subscribes to a room's channel (a room being loaded). False if it could not be done
    /// now: the next (re)connection subscribes every loaded room.
    pub async fn subscribe(&self, room: Uuid) -> bool {
        let Some(mut sink) = self.subscriptions() else {
            return false;
        };
        matches!(
            tokio::time::timeout(REDIS_TIMEOUT, sink.subscribe(Self::channel(room))).await,
            Ok(Ok(()))
        )
    }

    /// The subscription's sink, while subscribed.
    fn subscriptions(&self) -> Option<PubSubSink> {
        self.inner
            .subscriptions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub async fn unsubscribe(&self, room: Uuid) {
        if let Some(mut sink) = self.subscriptions() {
            let _ =
                tokio::time::timeout(REDIS_TIMEOUT, sink.unsubscribe(Self::channel(room))).await;
        }
        self.run::<()>(
            redis::cmd("HDEL")
                .arg(Self::peers_key(room))
                .arg(Uuid::from_bytes(self.inner.node).to_string()),
        )
        .await;
    }

    /// How many other nodes are subscribed to the room's channel.
    pub async fn other_holders(&self, room: Uuid) -> usize {
        let counts: Option<Vec<(String, usize)>> = self
            .run(redis::cmd("PUBSUB").arg("NUMSUB").arg(Self::channel(room)))
            .await;
        counts
            .and_then(|c| c.first().map(|(_, n)| n.saturating_sub(1)))
            .unwrap_or(0)
    }

    async fn peers_script(&self, room: Uuid, limit: usize) -> Option<i64> {
        let mut command = redis::cmd("EVAL");
        command
            .arg(PEERS_SCRIPT)
            .arg(1)
            .arg(Self::peers_key(room))
            .arg(Uuid::from_bytes(self.inner.node).to_string())
            .arg(limit)
            .arg("duet:node:");
        self.run(&command).await
    }

    /// Takes a place for one more peer of the room, if all nodes together have fewer than
    /// `limit`.
    pub async fn take_place(&self, room: Uuid, limit: usize) -> Place {
        match self.peers_script(room, limit.max(1)).await {
            Some(-1) => Place::Full,
            Some(_) => Place::Taken,
            None => Place::Unknown,
        }
    }

    /// Gives back a place taken with [`Relay::take_place`].
    pub async fn give_place(&self, room: Uuid) {
        self.run::<()>(
            redis::cmd("HINCRBY")
                .arg(Self::peers_key(room))
                .arg(Uuid::from_bytes(self.inner.node).to_string())
                .arg(-1),
        )
        .await;
    }

    /// The room's peers on every node, if Redis answers.
    pub async fn peer_count(&self, room: Uuid) -> Option<usize> {
        self.peers_script(room, 0).await.map(|n| n.max(0) as usize)
    }

    /// Says this node is alive (for the peer counts) and sets its exact peer count in each
    /// room it holds, repairing any count a lost command left wrong.
    pub async fn announce(&self, counts: &[(Uuid, usize)]) {
        let node = Uuid::from_bytes(self.inner.node).to_string();
        let mut pipeline = redis::pipe();
        pipeline
            .cmd("SET")
            .arg(self.node_key())
            .arg(1)
            .arg("EX")
            .arg(SILENCE.as_secs())
            .ignore();
        for (room, count) in counts {
            pipeline
                .cmd("HSET")
                .arg(Self::peers_key(*room))
                .arg(&node)
                .arg(*count)
                .ignore();
        }
        self.run_pipeline(&pipeline).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_message_reads_back_as_written() {
        let origin = [7u8; 16];
        let messages = [
            Relayed::Update {
                number: 42,
                update: vec![1, 2, 3],
            },
            Relayed::Repair(vec![9; 20]),
            Relayed::Awareness(vec![]),
            Relayed::Heartbeat(Heartbeat {
                stored: u64::MAX,
                hello: true,
                deletions: 12345,
                state_vector: vec![1, 0],
            }),
            Relayed::Deleted,
        ];
        for message in messages {
            let encoded = message.encode(&origin);
            assert_eq!(Relayed::decode(&encoded), Some((origin, message)));
        }
    }

    #[test]
    fn malformed_envelopes_are_refused() {
        assert_eq!(Relayed::decode(&[]), None);
        assert_eq!(Relayed::decode(&[2; 40]), None, "another version");
        let mut cut = Relayed::Update {
            number: 1,
            update: vec![],
        }
        .encode(&[0; 16])
        .to_vec();
        cut.truncate(20);
        assert_eq!(Relayed::decode(&cut), None);
        let mut unknown = Relayed::Deleted.encode(&[0; 16]).to_vec();
        unknown[17] = 99;
        assert_eq!(Relayed::decode(&unknown), None);
    }
}
