//! The WebSocket to the room server: connects, reconnects with backoff, and passes frames
//! both ways. The session task owns the replica and reacts to [`NetEvent`]s.
//!
//! Outgoing frames are paced: at most [`SEND_RATE`] messages a second (the server closes a
//! connection that sends much faster). Whatever queues up meanwhile — a macro replayed at
//! thousands of keystrokes a second — is merged: all document updates into one, and only the
//! latest presence. Ordinary typing never waits.
//!
//! A network that silently stops carrying packets (Wi-Fi gone, laptop lid) closes nothing: the
//! bridge pings every [`PING_EVERY`] and gives the connection up after [`SILENCE_LIMIT`]
//! without a frame from the server, so the user is told and the bridge reconnects; connecting
//! and sending are bounded by the same limit.
//!
//! The token goes in an `Authorization` header, never in the URL. Over `wss://` the server's
//! certificate is checked against [`crate::tls::client_config`]; a certificate refused before
//! the first connection ends the join with an explanation (retrying would only repeat it), one
//! refused later (the server's certificate changed) is reported and retried.

use std::path::PathBuf;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use thiserror::Error;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Request;
use tokio_tungstenite::tungstenite::http::header::{HeaderValue, AUTHORIZATION};
use tokio_tungstenite::tungstenite::protocol::Message;
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::Connector;
use yrs::sync::{Message as YMessage, SyncMessage};
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;

use duet_server::bucket::TokenBucket;
use duet_server::protocol::close;

use crate::config::Invite;
use crate::tls;

/// What happened on the wire.
#[derive(Debug)]
pub enum NetEvent {
    Connected,
    Frame(Vec<u8>),
    /// The connection dropped; it is being re-established.
    Disconnected(String),
    /// The server refused us for good (bad token, unknown or deleted room): no more retries.
    Refused(String),
}

pub struct Connection {
    outgoing: mpsc::UnboundedSender<Vec<u8>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Connection {
    /// Starts connecting to `invite`'s room, trusting `ca` besides the system's roots over
    /// `wss://`; `emit` receives every event.
    pub fn spawn(
        invite: &Invite,
        ca: Option<PathBuf>,
        emit: impl Fn(NetEvent) + Send + 'static,
    ) -> Connection {
        let (outgoing, frames) = mpsc::unbounded_channel();
        let target = Target {
            url: invite.ws_url(),
            token: invite.token.clone(),
            host: invite.host().to_string(),
            ca,
        };
        let task = tokio::spawn(run(target, frames, emit));
        Connection { outgoing, task }
    }

    /// Queues a frame. Frames queued while disconnected go out after the next handshake; the
    /// handshake alone would bring the server up to date, and repeating an update is harmless.
    pub fn send(&self, frame: Vec<u8>) {
        let _ = self.outgoing.send(frame);
    }
}

/// Messages per second we send at most, in bursts of as many: half the server's default limit.
pub const SEND_RATE: u32 = 100;
const FIRST_RETRY: Duration = Duration::from_millis(250);
/// The longest wait between reconnection attempts: short, so a pair is back together within
/// seconds of the network or the server returning (a reconnect costs the server one sync).
const LAST_RETRY: Duration = Duration::from_secs(2);
/// How often the bridge pings the server (the server answers every ping).
pub const PING_EVERY: Duration = Duration::from_secs(2);
/// How long the server may stay silent — no frame, no pong — before the connection counts as
/// lost; also the limit for connecting and for sending one frame.
pub const SILENCE_LIMIT: Duration = Duration::from_secs(6);

/// Where to connect and how.
struct Target {
    /// The room's WebSocket URL, without the token.
    url: String,
    token: String,
    /// `HOST:PORT`, for messages.
    host: String,
    ca: Option<PathBuf>,
}

impl Target {
    /// The handshake request, with the token in its header; and the TLS set-up for `wss://`
    /// (loaded once: it reads the system's certificates).
    fn prepare(&self) -> Result<(Request, Option<Connector>), Unusable> {
        let mut request = self
            .url
            .as_str()
            .into_client_request()
            .map_err(|e| Unusable::Address(self.url.clone(), Box::new(e)))?;
        let bearer = HeaderValue::from_str(&format!("Bearer {}", self.token))
            .map_err(|_| Unusable::Token)?;
        request.headers_mut().insert(AUTHORIZATION, bearer);
        let connector = match request.uri().scheme_str() {
            Some("wss") => Some(Connector::Rustls(
                tls::client_config(self.ca.as_deref()).map_err(Unusable::Tls)?,
            )),
            _ => None,
        };
        Ok((request, connector))
    }
}

async fn run(
    target: Target,
    mut frames: mpsc::UnboundedReceiver<Vec<u8>>,
    emit: impl Fn(NetEvent),
) {
    let (request, connector) = match target.prepare() {
        Ok(prepared) => prepared,
        Err(e) => return emit(NetEvent::Refused(e.to_string())),
    };
    let mut backoff = FIRST_RETRY;
    let mut ever_connected = false;
    loop {
        // Small, latency-bound messages: without TCP_NODELAY, Nagle's algorithm and the
        // server's delayed ACK hold some back for up to 40 ms.
        let connecting = tokio_tungstenite::connect_async_tls_with_config(
            request.clone(),
            None,
            true,
            connector.clone(),
        );
        match tokio::time::timeout(SILENCE_LIMIT, connecting).await {
            Ok(Ok((socket, _))) => {
                backoff = FIRST_RETRY;
                ever_connected = true;
                emit(NetEvent::Connected);
                let (mut sink, mut stream) = socket.split();
                let rate = f64::from(SEND_RATE);
                let mut pace = TokenBucket::new(rate, rate);
                let mut heard = Instant::now();
                let mut pings = tokio::time::interval(PING_EVERY);
                let ended = loop {
                    tokio::select! {
                        frame = frames.recv() => {
                            let Some(frame) = frame else { return };
                            // Wait for the pace, then take everything that queued meanwhile.
                            paced(&mut pace).await;
                            let mut batch = vec![frame];
                            while let Ok(more) = frames.try_recv() {
                                batch.push(more);
                            }
                            let mut failed = None;
                            for (i, frame) in coalesce(batch).into_iter().enumerate() {
                                // The first one's token is taken.
                                if i > 0 {
                                    paced(&mut pace).await;
                                }
                                if let Err(e) = send(&mut sink, Message::Binary(frame.into())).await {
                                    failed = Some(e);
                                    break;
                                }
                            }
                            if let Some(e) = failed {
                                break Ended::Lost(e.to_string());
                            }
                        }
                        _ = pings.tick() => {
                            if heard.elapsed() > SILENCE_LIMIT {
                                break Ended::Lost(format!(
                                    "no answer from the server for {} s",
                                    SILENCE_LIMIT.as_secs()
                                ));
                            }
                            if let Err(e) = send(&mut sink, Message::Ping(Vec::new().into())).await {
                                break Ended::Lost(e.to_string());
                            }
                        }
                        incoming = stream.next() => {
                            heard = Instant::now();
                            match incoming {
                                Some(Ok(Message::Binary(data))) => emit(NetEvent::Frame(data.to_vec())),
                                Some(Ok(Message::Close(frame))) => {
                                    let (code, reason) = frame
                                        .map(|f| (u16::from(f.code), f.reason.to_string()))
                                        .unwrap_or((1005, String::new()));
                                    break Ended::Closed(code, reason);
                                }
                                Some(Ok(_)) => {}
                                Some(Err(e)) => break Ended::Lost(e.to_string()),
                                None => break Ended::Lost("connection closed".into()),
                            }
                        }
                    }
                };
                match ended {
                    Ended::Closed(code, reason) if is_final(code) => {
                        emit(NetEvent::Refused(format!(
                            "the server closed the room connection: {reason} ({code})"
                        )));
                        return;
                    }
                    Ended::Closed(code, reason) => {
                        emit(NetEvent::Disconnected(format!("{reason} ({code})")))
                    }
                    Ended::Lost(reason) => emit(NetEvent::Disconnected(reason)),
                }
            }
            Ok(Err(WsError::Http(response))) if response.status().is_client_error() => {
                let status = response.status();
                let why = match status.as_u16() {
                    401 | 403 => "the invite's token is wrong for this room",
                    404 => "no such room on this server (deleted?)",
                    400 => "the invite's room id is malformed",
                    _ => "the server refused the connection",
                };
                emit(NetEvent::Refused(format!("{why} (HTTP {status})")));
                return;
            }
            Ok(Err(e)) => match tls::explain(&e, &target.host) {
                Some(why) if !ever_connected => return emit(NetEvent::Refused(why)),
                Some(why) => emit(NetEvent::Disconnected(why)),
                None => emit(NetEvent::Disconnected(e.to_string())),
            },
            Err(_) => emit(NetEvent::Disconnected(format!(
                "no answer from the server for {} s",
                SILENCE_LIMIT.as_secs()
            ))),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(LAST_RETRY);
    }
}

/// Sends one frame, within [`SILENCE_LIMIT`].
async fn send<S>(sink: &mut S, message: Message) -> Result<(), SendError>
where
    S: SinkExt<Message, Error = WsError> + Unpin,
{
    match tokio::time::timeout(SILENCE_LIMIT, sink.send(message)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(SendError::Socket(e)),
        Err(_) => Err(SendError::Stalled),
    }
}

/// Why an invite cannot be connected to at all.
#[derive(Debug, Error)]
enum Unusable {
    #[error("the invite's address {0:?} is not usable: {1}")]
    Address(String, #[source] Box<WsError>),
    #[error("the invite's token holds characters a token cannot have")]
    Token,
    #[error("{0}")]
    Tls(String),
}

/// Why a frame did not go out: the connection is lost.
#[derive(Debug, Error)]
enum SendError {
    #[error(transparent)]
    Socket(WsError),
    #[error("the server took no data for {} s", SILENCE_LIMIT.as_secs())]
    Stalled,
}

enum Ended {
    Closed(u16, String),
    Lost(String),
}

/// Close codes after which reconnecting would only repeat the refusal: our data was refused
/// as malformed or too large, or the room is gone. A rate limit (1008) is not: the re-sync
/// after reconnecting carries what was refused.
fn is_final(code: u16) -> bool {
    matches!(
        code,
        close::INVALID_DATA | close::TOO_BIG | close::ROOM_DELETED
    )
}

/// Waits for a token of `pace` and takes it.
async fn paced(pace: &mut TokenBucket) {
    while let Err(wait) = pace.take() {
        tokio::time::sleep(wait).await;
    }
}

/// Merges a batch of queued frames: every document update into one update (Yjs updates
/// commute, so their order does not matter), the latest presence only, other messages as
/// they are.
pub fn coalesce(frames: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    if frames.len() < 2 {
        return frames;
    }
    let mut updates = Vec::new();
    let mut presence = None;
    let mut out = Vec::new();
    for frame in frames {
        match YMessage::decode_v1(&frame) {
            Ok(YMessage::Sync(SyncMessage::Update(update))) => updates.push(update),
            Ok(YMessage::Awareness(_)) => presence = Some(frame),
            _ => out.push(frame),
        }
    }
    match updates.len() {
        0 => {}
        1 => out.push(YMessage::Sync(SyncMessage::Update(updates.remove(0))).encode_v1()),
        _ => match yrs::merge_updates_v1(&updates) {
            Ok(merged) => out.push(YMessage::Sync(SyncMessage::Update(merged)).encode_v1()),
            // Cannot happen for updates we encoded ourselves; send them one by one if it does.
            Err(_) => out.extend(
                updates
                    .into_iter()
                    .map(|u| YMessage::Sync(SyncMessage::Update(u)).encode_v1()),
            ),
        },
    }
    out.extend(presence);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replica::Replica;
    use crate::shadow::Splice;
    use duet_server::protocol::{Cursor, Presence, User};

    #[test]
    fn the_token_goes_in_a_header_never_in_the_url() {
        let invite = Invite::parse(
            "wss://duet.example:8443/ws/0b5c7d1e-2f3a-4b5c-8d9e-0f1a2b3c4d5e?token=secret",
        )
        .unwrap();
        let target = Target {
            url: invite.ws_url(),
            token: invite.token.clone(),
            host: invite.host().to_string(),
            ca: None,
        };
        let (request, connector) = target.prepare().unwrap();
        assert!(
            !request.uri().to_string().contains("secret"),
            "{}",
            request.uri()
        );
        assert_eq!(request.headers()[AUTHORIZATION], "Bearer secret");
        assert!(
            matches!(connector, Some(Connector::Rustls(_))),
            "wss:// is TLS"
        );
        let plain = Target {
            url: "ws://h:1/ws/x".into(),
            ..target
        };
        assert!(plain.prepare().unwrap().1.is_none(), "ws:// is not");
    }

    #[test]
    fn a_burst_of_updates_and_presence_becomes_one_of_each() {
        let mut replica = Replica::new();
        let mut frames = vec![replica.create("a.txt", "")];
        replica.link("a.txt");
        for i in 0..500 {
            let splice = Splice {
                index: i,
                delete: 0,
                insert: "x".into(),
                typed: true,
            };
            frames.push(replica.edit("a.txt", &[splice]).unwrap());
            if i % 50 == 0 {
                frames.push(
                    replica
                        .set_presence(&Presence {
                            user: User::default(),
                            cursor: Some(Cursor {
                                file: "a.txt".into(),
                                anchor: None,
                                head: i as u32,
                            }),
                        })
                        .unwrap(),
                );
            }
        }
        let merged = coalesce(frames);
        assert_eq!(merged.len(), 2, "one update and one presence");
        let mut other = Replica::new();
        other.receive(&merged[0]).unwrap();
        other.receive(&merged[1]).unwrap();
        assert_eq!(other.text("a.txt").unwrap(), "x".repeat(500));
        let peers = other.peers();
        assert_eq!(peers.len(), 1);
        assert_eq!(
            peers[0].cursor.as_ref().unwrap().head,
            450,
            "the latest presence"
        );
    }
}
