//! `/ws/{id}`: the y-websocket protocol, one connection per peer.
//!
//! This module only translates between WebSocket frames and [`Room`] calls, and enforces the
//! per-connection limits (message size, message rate, a bounded send queue). Whatever goes
//! wrong with one connection closes that connection, with a close reason that says why.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, oneshot, watch};

use crate::bucket::TokenBucket;
use crate::metrics::Metrics;
use crate::room::{close, CloseReason, PeerChannels, Room};
use crate::rooms::Rooms;

/// How long one frame may take to go out before the peer counts as gone.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the peer's answer to our close frame may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// How often the server pings each peer (browsers and our bridge answer pings by themselves).
const PING_EVERY: Duration = Duration::from_secs(10);
/// A peer silent this long — no frame, no pong — is gone (its network stopped carrying
/// packets): it is closed, so its presence does not linger in the room.
const SILENCE_LIMIT: Duration = Duration::from_secs(30);

/// Serves one accepted WebSocket until either side ends it.
pub async fn serve(
    socket: WebSocket,
    room: Arc<Room>,
    rooms: Rooms,
    mut shutdown: watch::Receiver<bool>,
) {
    let metrics = rooms.metrics();
    let limits = rooms.limits();
    let _open = rooms.connections().open();
    let (frames_tx, mut frames) = mpsc::channel(limits.send_queue.max(1));
    let (kick_tx, kick_rx) = oneshot::channel();
    let (sink, mut stream) = socket.split();
    let mut conn = Conn {
        sink,
        kick: kick_rx,
    };
    let room_id = room.meta.id;

    // With several nodes, the room's peer limit counts the peers on all of them.
    let place = rooms.take_place(room_id).await;
    let joined = place.clone().and_then(|_| {
        room.join(PeerChannels {
            frames: frames_tx,
            kick: kick_tx,
        })
    });
    let placed = place.unwrap_or(false);
    let (peer, hello) = match joined {
        Ok(joined) => joined,
        Err(reason) => {
            if placed {
                rooms.give_place(room_id);
            }
            tracing::info!(room = %room_id, reason = %reason.reason, "connection refused");
            Metrics::inc(&metrics.connections_rejected);
            close_handshake(&mut conn.sink, &mut stream, reason, false).await;
            return;
        }
    };
    tracing::debug!(room = %room_id, peer, "peer joined");
    let mut rate = message_rate(limits.max_messages_per_second);
    let max_bytes = limits.max_message_bytes;
    let mut heard = Instant::now();
    // The peer's last frame was cut off unread (it was over the size limit).
    let mut unread = false;
    let mut pings = tokio::time::interval_at(tokio::time::Instant::now() + PING_EVERY, PING_EVERY);

    let outcome: Result<(), CloseReason> = async {
        for frame in hello {
            conn.send(Message::Binary(frame)).await?;
        }
        loop {
            tokio::select! {
                frame = frames.recv() => match frame {
                    Some(frame) => conn.send_queued(frame, &mut frames).await?,
                    // The room let go of us: it has said why on the kick channel.
                    None => return Err(kicked(conn.kick.try_recv().ok())),
                },
                reason = &mut conn.kick => return Err(kicked(reason.ok())),
                _ = shutdown.changed() => {
                    return Err(CloseReason::new(close::GOING_AWAY, "server shutting down"));
                }
                _ = pings.tick() => {
                    if heard.elapsed() > SILENCE_LIMIT {
                        return Err(CloseReason::new(
                            close::GOING_AWAY,
                            format!("no answer for {} s", SILENCE_LIMIT.as_secs()),
                        ));
                    }
                    conn.send(Message::Ping(Default::default())).await?;
                }
                incoming = stream.next() => {
                    heard = Instant::now();
                    let data = match incoming {
                        None | Some(Ok(Message::Close(_))) => return Ok(()),
                        Some(Ok(Message::Binary(data))) => data,
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                        Some(Ok(Message::Text(_))) => return Err(CloseReason::new(
                            close::INVALID_DATA,
                            "text frames are not part of the y-websocket protocol; send binary frames",
                        )),
                        // Any other error is a connection that is gone.
                        Some(Err(e)) if is_too_long(&e) => {
                            unread = true;
                            return Err(CloseReason::new(
                                close::TOO_BIG,
                                format!("message too large (the limit is {max_bytes} bytes): {e}"),
                            ))
                        }
                        Some(Err(e)) => {
                            tracing::debug!(room = %room_id, peer, error = %e, "connection lost");
                            return Ok(());
                        }
                    };
                    Metrics::inc(&metrics.messages_received);
                    metrics.bytes_received.fetch_add(data.len() as u64, std::sync::atomic::Ordering::Relaxed);
                    if data.len() > max_bytes {
                        return Err(CloseReason::new(
                            close::TOO_BIG,
                            format!("message too large: {} bytes, limit is {max_bytes}", data.len()),
                        ));
                    }
                    if rate.take().is_err() {
                        return Err(CloseReason::new(
                            close::POLICY,
                            format!("rate limit: more than {} messages per second", limits.max_messages_per_second),
                        ));
                    }
                    if let Some(reply) = room.receive(peer, &data)? {
                        conn.send(Message::Binary(reply)).await?;
                    }
                }
            }
        }
    }
    .await;

    room.leave(peer);
    if placed {
        rooms.give_place(room_id);
    }
    if let Err(reason) = outcome {
        if !matches!(reason.code, close::GOING_AWAY | close::ROOM_DELETED) {
            Metrics::inc(&metrics.peers_kicked);
            tracing::info!(room = %room_id, peer, code = reason.code, reason = %reason.reason, "connection closed");
        }
        close_handshake(&mut conn.sink, &mut stream, reason, unread).await;
    }
    tracing::debug!(room = %room_id, peer, "peer left");
}

/// The closing handshake: sends our close frame, then reads until the peer's answer, so that
/// no unread bytes are left when the socket closes (they would turn the FIN into a reset, and
/// the peer could lose our close frame and its reason). A slow reader gets as long for the
/// close frame as for any frame; a peer that stopped reading may never take it. When the rest
/// of the peer's last frame is `unread` (it was past the size limit, and cannot be read as
/// frames), the socket stays open a moment all the same, so that the peer, still busy sending,
/// reads our close frame before the reset.
async fn close_handshake(
    sink: &mut futures_util::stream::SplitSink<WebSocket, Message>,
    stream: &mut futures_util::stream::SplitStream<WebSocket>,
    reason: CloseReason,
    unread: bool,
) {
    let sent = tokio::time::timeout(SEND_TIMEOUT, sink.send(close_message(reason))).await;
    if !matches!(sent, Ok(Ok(()))) {
        return;
    }
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        loop {
            match stream.next().await {
                Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => continue,
                Some(Err(_)) | None if unread => std::future::pending::<()>().await,
                Some(Err(_)) | None => return,
            }
        }
    })
    .await;
}

/// The sending half of a connection, and the room's way of telling it to go.
struct Conn {
    sink: futures_util::stream::SplitSink<WebSocket, Message>,
    kick: oneshot::Receiver<CloseReason>,
}

impl Conn {
    /// Sends one frame. A peer whose socket stays full is gone; a kick from the room (this peer
    /// fell too far behind) ends the wait at once.
    async fn send(&mut self, message: Message) -> Result<(), CloseReason> {
        let Conn { sink, kick } = self;
        delivered(kick, sink.send(message)).await
    }

    /// Sends a frame and the frames already queued behind it with one flush: a burst (a busy
    /// room's updates) goes out in one write to the socket rather than one write per frame.
    async fn send_queued(
        &mut self,
        first: Bytes,
        queued: &mut mpsc::Receiver<Bytes>,
    ) -> Result<(), CloseReason> {
        let Conn { sink, kick } = self;
        let burst = async {
            sink.feed(Message::Binary(first)).await?;
            for _ in 0..queued.len() {
                let Ok(frame) = queued.try_recv() else { break };
                sink.feed(Message::Binary(frame)).await?;
            }
            sink.flush().await
        };
        delivered(kick, burst).await
    }
}

/// Waits for `sending` within [`SEND_TIMEOUT`], or until the room kicks the peer.
async fn delivered<E>(
    kick: &mut oneshot::Receiver<CloseReason>,
    sending: impl std::future::Future<Output = Result<(), E>>,
) -> Result<(), CloseReason> {
    tokio::select! {
        sent = tokio::time::timeout(SEND_TIMEOUT, sending) => match sent {
            Ok(Ok(())) => Ok(()),
            _ => Err(CloseReason::new(close::GOING_AWAY, "peer unreachable")),
        },
        reason = kick => Err(kicked(reason.ok())),
    }
}

fn kicked(reason: Option<CloseReason>) -> CloseReason {
    reason.unwrap_or_else(|| CloseReason::new(close::GOING_AWAY, "disconnected"))
}

pub fn close_message(reason: CloseReason) -> Message {
    // A close reason must fit a control frame (123 bytes); cut on a character boundary.
    let mut text = reason.reason;
    while text.len() > 123 {
        text.pop();
    }
    Message::Close(Some(CloseFrame {
        code: reason.code,
        reason: text.into(),
    }))
}

/// A connection's message rate: `per_second` sustained, bursts of twice that.
fn message_rate(per_second: u32) -> TokenBucket {
    let per_second = f64::from(per_second.max(1));
    TokenBucket::new(per_second, 2.0 * per_second)
}

/// Whether a read failed on a message over the size limit: tungstenite's capacity error, the
/// error axum's WebSocket wraps.
fn is_too_long(error: &axum::Error) -> bool {
    std::error::Error::source(error)
        .and_then(|inner| inner.downcast_ref::<tungstenite::Error>())
        .is_some_and(|e| {
            matches!(
                e,
                tungstenite::Error::Capacity(
                    tungstenite::error::CapacityError::MessageTooLong { .. }
                )
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_allows_bursts_of_twice_the_rate_then_refuses() {
        let mut rate = message_rate(10);
        assert!((0..20).all(|_| rate.take().is_ok()));
        assert!(rate.take().is_err());
    }

    #[test]
    fn close_reasons_are_cut_to_fit_a_control_frame() {
        let Message::Close(Some(frame)) = close_message(CloseReason::new(1008, "é".repeat(100)))
        else {
            panic!("not a close frame");
        };
        assert!(frame.reason.len() <= 123);
        assert_eq!(frame.code, 1008);
    }
}
