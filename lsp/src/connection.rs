//! The WebSocket to the room server: connects, reconnects with backoff, and passes frames
//! both ways. It knows nothing of their meaning: the session task owns the replica and reacts
//! to [`NetEvent`]s, which carry the generation of the connection they come from so that
//! events of a connection the session has dropped are recognised and ignored.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::Message;
use tokio_tungstenite::tungstenite::Error as WsError;

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
    /// Starts connecting to `url` (token included); `emit` receives every event.
    pub fn spawn(url: String, emit: impl Fn(NetEvent) + Send + 'static) -> Connection {
        let (outgoing, frames) = mpsc::unbounded_channel();
        let task = tokio::spawn(run(url, frames, emit));
        Connection { outgoing, task }
    }

    /// Queues a frame. Frames queued while disconnected go out after the next handshake; the
    /// handshake alone would bring the server up to date, and repeating an update is harmless.
    pub fn send(&self, frame: Vec<u8>) {
        let _ = self.outgoing.send(frame);
    }
}

const FIRST_RETRY: Duration = Duration::from_millis(250);
const LAST_RETRY: Duration = Duration::from_secs(5);

async fn run(url: String, mut frames: mpsc::UnboundedReceiver<Vec<u8>>, emit: impl Fn(NetEvent)) {
    let mut backoff = FIRST_RETRY;
    loop {
        match tokio_tungstenite::connect_async(url.as_str()).await {
            Ok((socket, _)) => {
                backoff = FIRST_RETRY;
                emit(NetEvent::Connected);
                let (mut sink, mut stream) = socket.split();
                let ended = loop {
                    tokio::select! {
                        frame = frames.recv() => match frame {
                            Some(frame) => {
                                if let Err(e) = sink.send(Message::Binary(frame.into())).await {
                                    break Ended::Lost(e.to_string());
                                }
                            }
                            None => return,
                        },
                        incoming = stream.next() => match incoming {
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
                        },
                    }
                };
                match ended {
                    Ended::Closed(code, reason) if is_final(code, &reason) => {
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
            Err(WsError::Http(response)) if response.status().is_client_error() => {
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
            Err(e) => emit(NetEvent::Disconnected(e.to_string())),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(LAST_RETRY);
    }
}

enum Ended {
    Closed(u16, String),
    Lost(String),
}

/// Close codes after which reconnecting would only repeat the refusal.
fn is_final(code: u16, reason: &str) -> bool {
    matches!(code, 1007..=1009) || reason == "room deleted"
}
