//! A small y-websocket client in Rust (tokio-tungstenite + yrs), for tests that need control
//! the stock JS provider does not give: raw and malformed frames, exact close codes, a peer
//! that stops reading. Offsets are UTF-16 code units, as in JavaScript Yjs.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::protocol::Message as WsMessage;
use yrs::sync::awareness::AwarenessUpdateEntry;
use yrs::sync::{Awareness, AwarenessUpdate, Message, MessageReader, SyncMessage};
use yrs::updates::decoder::{Decode, DecoderV1};
use yrs::updates::encoder::Encode;
use yrs::{
    ClientID, Doc, GetString, Map, MapRef, OffsetKind, Options, Out, ReadTxn, Text, TextPrelim,
    Transact, Update,
};

pub type Close = (u16, String);

pub struct YClient {
    state: Arc<Mutex<Awareness>>,
    files: MapRef,
    out: mpsc::UnboundedSender<WsMessage>,
    synced: watch::Receiver<bool>,
    closed: watch::Receiver<Option<Close>>,
    tasks: [tokio::task::JoinHandle<()>; 2],
}

impl Drop for YClient {
    /// Drops the connection at once, as a crashed peer would.
    fn drop(&mut self) {
        self.tasks.iter().for_each(|t| t.abort());
    }
}

#[derive(Debug)]
pub enum ConnectError {
    /// The server refused the upgrade with this HTTP status.
    Http(u16),
    Other(String),
}

impl YClient {
    /// Connects and starts syncing (sync step 1). See [`YClient::wait_synced`].
    pub async fn connect(url: &str) -> Result<YClient, ConnectError> {
        // A large room's first sync is one large frame: take any size, as the stock
        // provider does.
        let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
            .max_message_size(None)
            .max_frame_size(None);
        let (socket, _) = tokio_tungstenite::connect_async_with_config(url, Some(config), true)
            .await
            .map_err(|e| match e {
                tokio_tungstenite::tungstenite::Error::Http(response) => {
                    ConnectError::Http(response.status().as_u16())
                }
                other => ConnectError::Other(other.to_string()),
            })?;
        let doc = Doc::with_options(Options {
            offset_kind: OffsetKind::Utf16,
            ..Options::default()
        });
        let files = doc.get_or_insert_map("files");
        let state = Arc::new(Mutex::new(Awareness::new(doc)));
        let (out, mut out_rx) = mpsc::unbounded_channel::<WsMessage>();
        let (synced_tx, synced) = watch::channel(false);
        let (closed_tx, closed) = watch::channel(None);
        let (mut sink, mut stream) = socket.split();

        let writer = tokio::spawn(async move {
            while let Some(message) = out_rx.recv().await {
                if sink.send(message).await.is_err() {
                    break;
                }
            }
        });
        let reader_state = state.clone();
        let reply = out.clone();
        let reader = tokio::spawn(async move {
            while let Some(frame) = stream.next().await {
                match frame {
                    Ok(WsMessage::Binary(data)) => {
                        for answer in handle(&reader_state, &data, &synced_tx) {
                            let _ = reply.send(WsMessage::Binary(answer.into()));
                        }
                    }
                    Ok(WsMessage::Close(frame)) => {
                        let close = frame.map(|f| (u16::from(f.code), f.reason.to_string()));
                        let _ = closed_tx.send(Some(close.unwrap_or((1005, String::new()))));
                        return;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        let _ = closed_tx.send(Some((1006, format!("connection lost: {e}"))));
                        return;
                    }
                }
            }
            let _ = closed_tx.send(Some((1006, "connection lost".into())));
        });

        let client = YClient {
            state,
            files,
            out,
            synced,
            closed,
            tasks: [writer, reader],
        };
        let sv = client.lock().doc().transact().state_vector();
        client.send_message(Message::Sync(SyncMessage::SyncStep1(sv)));
        Ok(client)
    }

    /// Connects and waits until the server's state has arrived.
    pub async fn join(url: &str) -> YClient {
        let client = YClient::connect(url).await.expect("connect");
        client.wait_synced().await;
        client
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Awareness> {
        self.state.lock().expect("client state")
    }

    pub async fn wait_synced(&self) {
        let mut synced = self.synced.clone();
        tokio::time::timeout(Duration::from_secs(10), synced.wait_for(|s| *s))
            .await
            .expect("sync step 2 within 10 s")
            .expect("client alive");
    }

    fn send_message(&self, message: Message) {
        let _ = self.out.send(WsMessage::Binary(message.encode_v1().into()));
    }

    pub fn send_raw(&self, message: WsMessage) {
        let _ = self.out.send(message);
    }

    /// Changes the document in one transaction and sends the update: anything a stock Yjs
    /// client could do, `files` and any other root type alike.
    pub fn transact(&self, f: impl FnOnce(&mut yrs::TransactionMut, &MapRef)) {
        let update = {
            let state = self.lock();
            let mut txn = state.doc().transact_mut();
            f(&mut txn, &self.files);
            txn.encode_update_v1()
        };
        self.send_update(update);
    }

    /// Sends an update as it is (it need not come from our document).
    pub fn send_update(&self, update: Vec<u8>) {
        self.send_message(Message::Sync(SyncMessage::Update(update)));
    }

    /// Edits a file (created if missing) and sends the update.
    pub fn edit(&self, file: &str, f: impl FnOnce(&mut yrs::TransactionMut, &yrs::TextRef)) {
        self.transact(|txn, files| {
            let text = match files.get(txn, file) {
                Some(Out::YText(text)) => text,
                _ => files.insert(txn, file, TextPrelim::new("")),
            };
            f(txn, &text);
        });
    }

    pub fn insert(&self, file: &str, index: u32, text: &str) {
        self.edit(file, |txn, t| t.insert(txn, index, text));
    }

    /// Inserts `text` right after the first `anchor` in the file, reading the text and
    /// inserting in one step: an index read beforehand could be shifted by a remote update
    /// applied in between.
    pub fn insert_after(&self, file: &str, anchor: &str, text: &str) {
        self.edit(file, |txn, t| {
            let current = t.get_string(txn);
            let at = current
                .find(anchor)
                .unwrap_or_else(|| panic!("no {anchor:?} in {current:?}"))
                + anchor.len();
            t.insert(txn, current[..at].encode_utf16().count() as u32, text);
        });
    }

    pub fn append(&self, file: &str, text: &str) {
        self.edit(file, |txn, t| {
            let end = t.len(txn);
            t.insert(txn, end, text)
        });
    }

    pub fn text(&self, file: &str) -> Option<String> {
        let state = self.lock();
        let txn = state.doc().transact();
        match self.files.get(&txn, file) {
            Some(Out::YText(text)) => Some(text.get_string(&txn)),
            _ => None,
        }
    }

    /// Sets our presence and sends it.
    pub fn set_presence(&self, state: serde_json::Value) {
        let update = {
            let mut awareness = self.lock();
            awareness.set_local_state_raw(state.to_string());
            let me = awareness.client_id();
            awareness.update_with_clients([me])
        };
        if let Ok(update) = update {
            self.send_message(Message::Awareness(update));
        }
    }

    /// Our awareness client id.
    pub fn client_id(&self) -> u64 {
        self.lock().client_id().get()
    }

    /// Sends a presence state for any client id, with any clock: what a careless or hostile
    /// peer can put on the wire.
    pub fn send_presence_as(&self, client: u64, clock: u32, state: &serde_json::Value) {
        let entry = AwarenessUpdateEntry {
            clock,
            json: state.to_string().into(),
        };
        let clients = std::iter::once((ClientID::new(client), entry)).collect();
        self.send_message(Message::Awareness(AwarenessUpdate { clients }));
    }

    /// Other peers' presence states.
    pub fn peers(&self) -> Vec<serde_json::Value> {
        let awareness = self.lock();
        let me = awareness.client_id();
        awareness
            .iter()
            .filter(|(id, _)| *id != me)
            .filter_map(|(_, s)| serde_json::from_str(s.data.as_deref()?).ok())
            .filter(|v: &serde_json::Value| !v.is_null())
            .collect()
    }

    /// The close frame the server sent, once it has.
    pub fn closed(&self) -> Option<Close> {
        self.closed.borrow().clone()
    }

    pub async fn wait_closed(&self, timeout: Duration) -> Close {
        let mut closed = self.closed.clone();
        let value = tokio::time::timeout(timeout, closed.wait_for(Option::is_some))
            .await
            .expect("the server closes the connection in time")
            .expect("client alive");
        value.clone().expect("closed")
    }

    /// Length of a file in UTF-16 code units (cheap: no copy of the text).
    pub fn len(&self, file: &str) -> Option<u32> {
        let state = self.lock();
        let txn = state.doc().transact();
        match self.files.get(&txn, file) {
            Some(Out::YText(text)) => Some(text.len(&txn)),
            _ => None,
        }
    }

    pub async fn wait_text(&self, file: &str, expected: &str, timeout: Duration) {
        let what = format!("{file} to read the expected {} bytes", expected.len());
        let expected_len = expected.encode_utf16().count() as u32;
        crate::eventually(timeout, &what, || async {
            (self.len(file) == Some(expected_len) && self.text(file).as_deref() == Some(expected))
                .then_some(())
        })
        .await
    }
}

/// Handles one frame from the server; returns the frames to answer with.
fn handle(state: &Mutex<Awareness>, data: &[u8], synced: &watch::Sender<bool>) -> Vec<Vec<u8>> {
    let mut decoder = DecoderV1::from(data);
    let Ok(messages) = MessageReader::new(&mut decoder).collect::<Result<Vec<_>, _>>() else {
        return Vec::new();
    };
    let mut state = state.lock().expect("client state");
    let mut answers = Vec::new();
    for message in messages {
        match message {
            Message::Sync(SyncMessage::SyncStep1(sv)) => {
                let update = state.doc().transact().encode_state_as_update_v1(&sv);
                answers.push(Message::Sync(SyncMessage::SyncStep2(update)).encode_v1());
            }
            Message::Sync(SyncMessage::SyncStep2(update)) => {
                apply(&state, &update);
                let _ = synced.send(true);
            }
            Message::Sync(SyncMessage::Update(update)) => apply(&state, &update),
            Message::Awareness(update) => {
                let _ = state.apply_update(update);
            }
            _ => {}
        }
    }
    answers
}

fn apply(state: &Awareness, update: &[u8]) {
    if let Ok(update) = Update::decode_v1(update) {
        let _ = state.doc().transact_mut().apply_update(update);
    }
}
