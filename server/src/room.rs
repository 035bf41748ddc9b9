//! A room: one Yjs document (a map from path to text), the peers connected to it, and the
//! updates not yet written to the store.
//!
//! Everything lives behind one std `Mutex`: nothing awaits while holding it, and each message is
//! a few microseconds of CRDT work, so a lock is simpler and faster than a task per room. The
//! few steps that cost in proportion to the whole document (a joiner's first sync, a check on a
//! scratch copy near a size limit) and any wait for a busy room's lock run through
//! [`blocking`], off the async workers, so one large room never stalls the others. Peers
//! receive frames through bounded queues filled with `try_send`; a peer whose queue is full is
//! disconnected instead of slowing everyone else down (it re-syncs when it reconnects).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;
use yrs::sync::{Awareness, AwarenessUpdate, Message, SyncMessage};
use yrs::types::{Event, PathSegment};
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{
    ClientID, DeepObservable, Doc, GetString, Map, MapRef, Out, ReadTxn, StateVector, Text,
    Transact, Update,
};

use crate::blocking::blocking;
use crate::clock::now_ms;
use crate::config::Limits;
use crate::inspect::{inspect, Refusal};
use crate::paths;
use crate::relay::{Heartbeat, NodeId, Outlet, Relayed};
use crate::span::differing_span;

/// The root map every room keeps its files in: path → `Y.Text`.
pub const FILES: &str = "files";

/// Key of the observer that notes which files changed.
const CHANGES: &str = "duet-changes";

/// The plain-text copies of changed files are written once no file has changed for this long
/// (the room went quiet), or once a change has waited [`COPIES_EVERY`] while typing goes on; the
/// update log, written every flush, is what makes an edit durable.
pub const COPIES_QUIET: Duration = Duration::from_secs(3);
pub const COPIES_EVERY: Duration = Duration::from_secs(30);

/// Close codes sent to a peer, with a reason that names what happened.
pub use crate::protocol::close;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseReason {
    pub code: u16,
    pub reason: String,
}

impl CloseReason {
    pub fn new(code: u16, reason: impl Into<String>) -> Self {
        CloseReason {
            code,
            reason: reason.into(),
        }
    }

    /// The room was deleted (here, or on another node): reconnecting cannot help.
    pub fn room_deleted() -> Self {
        CloseReason::new(close::ROOM_DELETED, "room deleted")
    }
}

/// What is known about a room besides its document.
#[derive(Debug, Clone)]
pub struct RoomMeta {
    pub id: Uuid,
    pub name: Option<String>,
    pub language: Option<String>,
    pub token_hash: String,
    pub created_at: i64,
    pub updated_at: i64,
}

pub type PeerId = u64;

/// A peer's side of the room: where its frames go and how to tell it to leave.
pub struct PeerChannels {
    pub frames: mpsc::Sender<Bytes>,
    pub kick: oneshot::Sender<CloseReason>,
}

struct Peer {
    frames: mpsc::Sender<Bytes>,
    kick: Option<oneshot::Sender<CloseReason>>,
    /// Awareness client ids this connection announced; removed for everyone when it leaves.
    clients: HashSet<ClientID>,
    /// The name it announced (awareness `user.name`).
    name: Option<String>,
    /// It edited since the batch last taken for writing.
    edited: bool,
}

impl Peer {
    fn author(&self) -> String {
        self.name.clone().unwrap_or_else(|| ANONYMOUS.to_string())
    }
}

/// The author of edits from a peer that announced no name.
pub const ANONYMOUS: &str = "anonymous";

/// One file as the REST API shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FileInfo {
    pub path: String,
    pub size: usize,
}

/// Updates to write, taken from a room by the flusher. Put back with [`Room::restore`] when
/// the write fails, so nothing is dropped while the database is away.
#[derive(Debug, Default)]
pub struct FlushBatch {
    pub updates: Vec<Vec<u8>>,
    pub changed_files: Vec<(String, String)>,
    pub removed_files: Vec<String>,
    /// The batch carries the copies of every file changed so far: once it is written, the
    /// stored copies are current (else the store marks them stale).
    pub copies: bool,
    /// Who made these edits (peer names), for the next version.
    pub authors: Vec<String>,
    pub updated_at: i64,
}

impl FlushBatch {
    /// What goes into the update log: the batch's updates merged into one — one row per room
    /// per flush instead of one per keystroke, and smaller, as a run of keystrokes merges into
    /// one string — or, should merging fail, each update as it is.
    pub fn rows(&self) -> Vec<Vec<u8>> {
        if self.updates.len() < 2 {
            return self.updates.clone();
        }
        let updates: Vec<&[u8]> = self.updates.iter().map(Vec::as_slice).collect();
        match yrs::merge_updates_v1(&updates) {
            Ok(merged) => vec![merged],
            Err(e) => {
                tracing::warn!(error = %e, "cannot merge updates; storing them one by one");
                self.updates.clone()
            }
        }
    }
}

/// What the observer on `files` saw change.
#[derive(Debug, Default)]
struct Changes {
    /// Files changed since their copies were last taken for writing, so that a flush copies
    /// only those; since when they wait, and when a file last changed.
    to_write: HashSet<String>,
    waiting_since: Option<Instant>,
    changed_at: Option<Instant>,
    /// Files changed since the sizes were last brought up to date.
    to_measure: HashSet<String>,
    /// Files that were given something besides plain text (an embedded type).
    not_plain: HashSet<String>,
}

/// What this node knows of another node that holds the room.
struct Remote {
    heard: Instant,
    /// The highest number of the node's updates received, and how far it says they are
    /// written: any gap is what this node writes should the other fall silent.
    received: u64,
    stored: u64,
    /// Presence client ids of its peers.
    clients: HashSet<ClientID>,
}

/// Updates waiting for missing parents: an upper bound of their bytes (cleared when nothing
/// waits any more).
#[derive(Debug, Default)]
struct Waiting {
    room: usize,
    peers: HashMap<PeerId, usize>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Sizes {
    total: usize,
    largest: usize,
    files: usize,
}

struct State {
    awareness: Awareness,
    files: MapRef,
    sizes: Sizes,
    /// Each valid file's size, kept up to date from [`Changes::to_measure`]: measuring only
    /// what an update touched keeps a room of 2,000 files as cheap per keystroke as one file.
    file_sizes: HashMap<String, usize>,
    /// Bytes of updates kept aside until what they build on arrives, per room and per peer.
    waiting: Waiting,
    peers: HashMap<PeerId, Peer>,
    next_peer: PeerId,
    unflushed: Vec<Vec<u8>>,
    /// Authors of unflushed edits who are gone (peers that left, restores through REST).
    authors: BTreeSet<String>,
    /// When the oldest unflushed update arrived, and the oldest of the batch being written:
    /// how far the store is behind.
    unflushed_since: Option<Instant>,
    writing_since: Option<Instant>,
    /// Files changed, filled by an observer on the `files` map, hence its own lock.
    changes: Arc<Mutex<Changes>>,
    updated_at: i64,
    idle_since: Option<Instant>,
    /// Its last peer left since the room's last version.
    everyone_left: bool,
    closed: bool,
    /// The other nodes (with `--redis-url`): where this room's updates and presence go, and
    /// what is known of each node that holds the room too.
    relay: Option<Outlet>,
    remotes: HashMap<NodeId, Remote>,
    /// This node's updates sent to the other nodes, numbered; the number of the last one in
    /// the batch being written, and of the last one written.
    published: u64,
    taken_upto: u64,
    stored_upto: u64,
    /// Changes of the document so far, and the deletions digest as of a count of them.
    version: u64,
    digest: Option<(u64, u64)>,
}

pub struct Room {
    pub meta: RoomMeta,
    limits: Arc<Limits>,
    state: Mutex<State>,
    /// Woken whenever another node is heard from in this room.
    heard: tokio::sync::Notify,
}

#[derive(Debug, thiserror::Error)]
pub enum RoomError {
    #[error("the stored room state is corrupt: {0}")]
    CorruptState(String),
}

impl Room {
    /// Rebuilds a room from its stored state and the updates written since.
    pub fn load(
        meta: RoomMeta,
        limits: Arc<Limits>,
        state: Option<&[u8]>,
        updates: &[Vec<u8>],
    ) -> Result<Room, RoomError> {
        let doc = Doc::new();
        let files = doc.get_or_insert_map(FILES);
        {
            let mut txn = doc.transact_mut();
            for bytes in state.into_iter().chain(updates.iter().map(Vec::as_slice)) {
                let update =
                    Update::decode_v1(bytes).map_err(|e| RoomError::CorruptState(e.to_string()))?;
                txn.apply_update(update)
                    .map_err(|e| RoomError::CorruptState(e.to_string()))?;
            }
        }
        let changes: Arc<Mutex<Changes>> = Arc::default();
        let seen = changes.clone();
        files.observe_deep(CHANGES, move |txn, events| {
            let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            seen.changed_at = Some(now);
            seen.waiting_since.get_or_insert(now);
            for event in events.iter() {
                let path = event.path();
                match (event, path.front()) {
                    // Files added, replaced or removed.
                    (Event::Map(e), None) => {
                        for key in e.keys(txn).keys() {
                            seen.to_write.insert(key.to_string());
                            seen.to_measure.insert(key.to_string());
                        }
                    }
                    // An edit inside a file: the first step of its path is the file's key.
                    (_, Some(PathSegment::Key(key))) => {
                        let plain = path.len() == 1
                            && match event {
                                Event::Text(e) => e.delta(txn).iter().all(is_plain_text),
                                _ => false,
                            };
                        if !plain {
                            seen.not_plain.insert(key.to_string());
                        }
                        seen.to_write.insert(key.to_string());
                        seen.to_measure.insert(key.to_string());
                    }
                    _ => {}
                }
            }
        });
        let updated_at = meta.updated_at;
        let room = Room {
            meta,
            limits,
            state: Mutex::new(State {
                awareness: Awareness::new(doc),
                files,
                sizes: Sizes::default(),
                file_sizes: HashMap::new(),
                waiting: Waiting::default(),
                peers: HashMap::new(),
                next_peer: 1,
                unflushed: Vec::new(),
                authors: BTreeSet::new(),
                unflushed_since: None,
                writing_since: None,
                changes,
                updated_at,
                idle_since: Some(Instant::now()),
                everyone_left: false,
                closed: false,
                relay: None,
                remotes: HashMap::new(),
                published: 0,
                taken_upto: 0,
                stored_upto: 0,
                version: 0,
                digest: None,
            }),
            heard: tokio::sync::Notify::new(),
        };
        let mut state = room.lock();
        let all: Vec<String> = {
            let txn = state.awareness.doc().transact();
            state.files.keys(&txn).map(str::to_string).collect()
        };
        state.changes().to_measure.extend(all);
        measure(&mut state);
        *state.changes() = Changes::default();
        drop(state);
        Ok(room)
    }

    /// The initial document of a new room: one update holding the given files.
    pub fn initial_update(files: &[(String, String)]) -> Vec<u8> {
        let doc = Doc::new();
        let map = doc.get_or_insert_map(FILES);
        let mut txn = doc.transact_mut();
        for (path, text) in files {
            map.insert(&mut txn, path.as_str(), yrs::TextPrelim::new(text.as_str()));
        }
        txn.encode_update_v1()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock would be a bug in yrs or here; the state is still the
        // best copy we have, so keep serving it rather than poisoning the room forever.
        match self.state.try_lock() {
            Ok(state) => state,
            Err(std::sync::TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            // Busy: wait where waiting blocks no async worker.
            Err(std::sync::TryLockError::WouldBlock) => blocking(|| {
                self.state
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
            }),
        }
    }

    /// Adds a peer. Returns its id and the frames that open the conversation: our state vector
    /// (sync step 1) and everyone's presence.
    pub fn join(&self, channels: PeerChannels) -> Result<(PeerId, Vec<Bytes>), CloseReason> {
        let mut state = self.lock();
        if state.closed {
            return Err(CloseReason::new(close::GOING_AWAY, "room is closed"));
        }
        if state.peers.len() >= self.limits.max_peers {
            return Err(CloseReason::new(
                close::TRY_AGAIN_LATER,
                format!("room is full ({} peers)", self.limits.max_peers),
            ));
        }
        let id = state.next_peer;
        state.next_peer += 1;
        state.peers.insert(
            id,
            Peer {
                frames: channels.frames,
                kick: Some(channels.kick),
                clients: HashSet::new(),
                name: None,
                edited: false,
            },
        );
        state.idle_since = None;
        let mut hello = Vec::new();
        let sv = state.awareness.doc().transact().state_vector();
        hello.push(frame(Message::Sync(SyncMessage::SyncStep1(sv))));
        if let Ok(update) = state.awareness.update() {
            if !update.clients.is_empty() {
                hello.push(frame(Message::Awareness(update)));
            }
        }
        Ok((id, hello))
    }

    /// Removes a peer and its presence; everyone else sees it leave.
    pub fn leave(&self, peer: PeerId) {
        let mut state = self.lock();
        remove_peer(&mut state, peer);
    }

    /// Handles one binary frame from a peer: returns the frame to answer it with, if any. An
    /// error closes only this peer's connection.
    pub fn receive(&self, peer: PeerId, data: &[u8]) -> Result<Option<Bytes>, CloseReason> {
        // y-websocket sends one message per frame. (yrs' `MessageReader` would take a truncated
        // frame for the end of the stream and silently ignore it.)
        let message = Message::decode_v1(data).map_err(|e| {
            CloseReason::new(
                close::INVALID_DATA,
                format!("malformed y-protocol frame: {e}"),
            )
        })?;
        let mut state = self.lock();
        if !state.peers.contains_key(&peer) {
            return Err(CloseReason::new(close::POLICY, "disconnected"));
        }
        match message {
            Message::Sync(SyncMessage::SyncStep1(sv)) => {
                // A joiner's first sync is in proportion to the whole document.
                let update = blocking(|| {
                    state
                        .awareness
                        .doc()
                        .transact()
                        .encode_state_as_update_v1(&sv)
                });
                Ok(Some(frame(Message::Sync(SyncMessage::SyncStep2(update)))))
            }
            Message::Sync(SyncMessage::SyncStep2(update) | SyncMessage::Update(update)) => {
                self.apply_update(&mut state, peer, &update).map(|()| None)
            }
            Message::Awareness(update) => {
                apply_awareness(&mut state, &self.limits, peer, update).map(|()| None)
            }
            Message::AwarenessQuery => Ok(state
                .awareness
                .update()
                .ok()
                .map(|u| frame(Message::Awareness(u)))),
            // Auth is the server's to send; custom messages have no meaning here. Both are
            // ignored, as the reference server does, so newer clients keep working.
            Message::Auth(_) | Message::Custom(..) => Ok(None),
        }
    }

    fn apply_update(
        &self,
        state: &mut State,
        peer: PeerId,
        bytes: &[u8],
    ) -> Result<(), CloseReason> {
        // Only plain texts in `files`: anything else is refused before any of it is kept.
        let shape = inspect(bytes).map_err(|refusal| match refusal {
            Refusal::Malformed(_) => CloseReason::new(close::INVALID_DATA, refusal.to_string()),
            Refusal::Foreign(_) => CloseReason::new(close::POLICY, refusal.to_string()),
        })?;
        let update = Update::decode_v1(bytes)
            .map_err(|e| CloseReason::new(close::INVALID_DATA, format!("malformed update: {e}")))?;
        let complete = shape.complete_against(&state.awareness.doc().transact());
        if !complete {
            self.check_waiting(state, peer, bytes.len())?;
        }
        // An update's encoding holds every inserted string verbatim, so its length bounds how
        // much it can grow any file. Only near a limit is it worth checking on a scratch copy.
        let sizes = state.sizes;
        let near_limit = sizes.total + bytes.len() > self.limits.max_room_bytes
            || sizes.largest + bytes.len() > self.limits.max_file_bytes;
        if near_limit {
            blocking(|| self.check_on_scratch_copy(state, bytes))?;
        }
        let (delta, had_pending, waits) = {
            let mut txn = state.awareness.doc().transact_mut();
            // Parts of earlier updates may be waiting for what they build on (a peer's update
            // can arrive before the one it follows, e.g. while peers re-sync after a restart).
            // If this update completes them, its delta carries them too, and they came from
            // someone else: then even this update's author must receive the delta.
            let had_pending = txn.store().pending_update().is_some();
            txn.apply_update(update).map_err(|e| {
                CloseReason::new(close::INVALID_DATA, format!("invalid update: {e}"))
            })?;
            let waits =
                txn.store().pending_update().is_some() || txn.store().pending_ds().is_some();
            (
                txn.has_changes().then(|| txn.encode_update_v1()),
                had_pending,
                waits,
            )
        };
        if !waits {
            state.waiting = Waiting::default();
        } else if !complete {
            state.waiting.room += bytes.len();
            *state.waiting.peers.entry(peer).or_default() += bytes.len();
        }
        let Some(delta) = delta else { return Ok(()) };
        if let Some(p) = state.peers.get_mut(&peer) {
            p.edited = true;
        }
        self.record(state, (!had_pending).then_some(peer), delta);
        self.enforce(state)
    }

    /// Refuses an update that would wait for missing parents past the room's or this peer's
    /// share: such updates are kept whole until their parents arrive, and sent to joiners.
    fn check_waiting(&self, state: &State, peer: PeerId, len: usize) -> Result<(), CloseReason> {
        let room_limit = self.limits.max_message_bytes;
        let peer_limit = room_limit / 2;
        let by_peer = state.waiting.peers.get(&peer).copied().unwrap_or(0);
        if state.waiting.room + len > room_limit || by_peer + len > peer_limit {
            return Err(CloseReason::new(
                close::POLICY,
                format!(
                    "too many updates waiting for the ones they build on (limit {peer_limit} bytes per peer, {room_limit} per room); reconnect to re-sync"
                ),
            ));
        }
        Ok(())
    }

    /// Brings the sizes up to date after an update and takes out again, for everyone, what
    /// breaks the room's rules — keys that are not normal paths to texts, anything but plain
    /// text inside a file, files past the file limit — closing the peer that put it there.
    fn enforce(&self, state: &mut State) -> Result<(), CloseReason> {
        let verdict = measure(state);
        let too_many = state.sizes.files > self.limits.max_files && !verdict.added.is_empty();
        if verdict.invalid.is_empty() && verdict.not_plain.is_empty() && !too_many {
            return Ok(());
        }
        let removal = {
            let mut txn = state.awareness.doc().transact_mut();
            for key in &verdict.invalid {
                state.files.remove(&mut txn, key);
            }
            if too_many {
                for key in &verdict.added {
                    state.files.remove(&mut txn, key);
                }
            }
            for key in &verdict.not_plain {
                if let Some(Out::YText(text)) = state.files.get(&txn, key) {
                    keep_plain_text(&mut txn, &text);
                }
            }
            txn.encode_update_v1()
        };
        self.record(state, None, removal);
        measure(state);
        state.changes().not_plain.clear();
        Err(if let Some(key) = verdict.invalid.first() {
            CloseReason::new(
                close::POLICY,
                format!(
                    "invalid file entry {key:?}: keys must be workspace-relative paths to texts"
                ),
            )
        } else if too_many {
            CloseReason::new(
                close::TOO_BIG,
                format!("too many files: limit is {}", self.limits.max_files),
            )
        } else {
            CloseReason::new(
                close::POLICY,
                "files hold plain text only: embedded content was removed",
            )
        })
    }

    /// Applies the update to a copy of the document and refuses it if the copy breaks a limit.
    fn check_on_scratch_copy(&self, state: &State, bytes: &[u8]) -> Result<(), CloseReason> {
        let scratch = Doc::new();
        let files = scratch.get_or_insert_map(FILES);
        {
            let current = state
                .awareness
                .doc()
                .transact()
                .encode_state_as_update_v1(&StateVector::default());
            let mut txn = scratch.transact_mut();
            for b in [current.as_slice(), bytes] {
                let update = Update::decode_v1(b).map_err(|e| {
                    CloseReason::new(close::INVALID_DATA, format!("malformed update: {e}"))
                })?;
                txn.apply_update(update).map_err(|e| {
                    CloseReason::new(close::INVALID_DATA, format!("invalid update: {e}"))
                })?;
            }
        }
        let (sizes, _) = scan_map(&scratch, &files);
        let limits = &self.limits;
        if sizes.largest > limits.max_file_bytes {
            return Err(CloseReason::new(
                close::TOO_BIG,
                format!("file too large: limit is {} bytes", limits.max_file_bytes),
            ));
        }
        if sizes.total > limits.max_room_bytes {
            return Err(CloseReason::new(
                close::TOO_BIG,
                format!("room too large: limit is {} bytes", limits.max_room_bytes),
            ));
        }
        if sizes.files > limits.max_files {
            return Err(CloseReason::new(
                close::TOO_BIG,
                format!("too many files: limit is {}", limits.max_files),
            ));
        }
        Ok(())
    }

    /// Keeps an integrated update for the store and sends it to every peer but its author.
    fn record(&self, state: &mut State, author: Option<PeerId>, delta: Vec<u8>) {
        let message = frame(Message::Sync(SyncMessage::Update(delta.clone())));
        state.version += 1;
        if let Some(relay) = &state.relay {
            state.published += 1;
            relay.send(&Relayed::Update {
                number: state.published,
                update: delta.clone(),
            });
        }
        state.unflushed.push(delta);
        state.unflushed_since.get_or_insert_with(Instant::now);
        state.updated_at = now_ms();
        broadcast(state, author, &message);
    }

    /// Takes what has not been written yet: the updates, and the copies of the files changed
    /// since their copies were last taken when they are due — `copy_now`, or the room quiet
    /// for [`COPIES_QUIET`], or a change waiting for [`COPIES_EVERY`]. `None` when there is
    /// nothing to write. Files that only other nodes' updates changed are copied by this node
    /// too (when due): a copy that a node wrote before another's last change is brought up to
    /// date.
    pub fn take_unflushed(&self, copy_now: bool) -> Option<FlushBatch> {
        let mut state = self.lock();
        let dirty: Vec<String> = {
            let mut changes = state.changes();
            let due = copy_now
                || changes
                    .changed_at
                    .is_none_or(|at| at.elapsed() >= COPIES_QUIET)
                || changes
                    .waiting_since
                    .is_some_and(|since| since.elapsed() >= COPIES_EVERY);
            if !due {
                Vec::new()
            } else {
                changes.waiting_since = None;
                std::mem::take(&mut changes.to_write).into_iter().collect()
            }
        };
        let copies = state.changes().to_write.is_empty();
        if state.unflushed.is_empty() && dirty.is_empty() {
            return None;
        }
        // Until the write succeeds (`flushed`), `/readyz` must not call the store current.
        state.writing_since = state.unflushed_since.take();
        state.taken_upto = state.published;
        let updates = std::mem::take(&mut state.unflushed);
        let (mut changed_files, mut removed_files) = (Vec::new(), Vec::new());
        {
            let txn = state.awareness.doc().transact();
            for path in dirty {
                match state.files.get(&txn, &path) {
                    Some(Out::YText(text)) => changed_files.push((path, text.get_string(&txn))),
                    _ => removed_files.push(path),
                }
            }
        }
        let mut authors = std::mem::take(&mut state.authors);
        for peer in state.peers.values_mut() {
            if std::mem::take(&mut peer.edited) {
                authors.insert(peer.author());
            }
        }
        Some(FlushBatch {
            updates,
            changed_files,
            removed_files,
            copies,
            authors: authors.into_iter().collect(),
            updated_at: state.updated_at,
        })
    }

    /// Puts back a batch whose write failed, ahead of anything that arrived since.
    pub fn restore(&self, batch: FlushBatch) {
        let mut state = self.lock();
        let newer = std::mem::replace(&mut state.unflushed, batch.updates);
        state.unflushed.extend(newer);
        state.unflushed_since = state.writing_since.take().or(state.unflushed_since);
        state.authors.extend(batch.authors);
        // The next write copies these files again.
        let mut changes = state.changes();
        let written = batch.changed_files.into_iter().map(|(path, _)| path);
        let written: Vec<String> = written.chain(batch.removed_files).collect();
        if !written.is_empty() {
            changes.waiting_since.get_or_insert_with(Instant::now);
        }
        changes.to_write.extend(written);
    }

    /// Every file's copy is to be written by the next flush, and each of `copied` (the paths
    /// of the stored copies) the room no longer has removed: the stored copies may be stale
    /// (the room was loaded after a crash).
    pub fn copy_all(&self, copied: impl Iterator<Item = String>) {
        let state = self.lock();
        let keys: Vec<String> = {
            let txn = state.awareness.doc().transact();
            state.files.keys(&txn).map(str::to_string).collect()
        };
        let mut changes = state.changes();
        changes.waiting_since.get_or_insert_with(Instant::now);
        changes.to_write.extend(keys.into_iter().chain(copied));
    }

    /// Some file's copy is not written yet.
    pub fn copies_pending(&self) -> bool {
        !self.lock().changes().to_write.is_empty()
    }

    /// The batch taken last is written.
    pub fn flushed(&self) {
        let mut state = self.lock();
        state.writing_since = None;
        state.stored_upto = state.taken_upto;
    }

    /// Something is not in the store yet: waiting for the next flush, or being written.
    pub fn has_unflushed(&self) -> bool {
        let state = self.lock();
        !state.unflushed.is_empty() || state.writing_since.is_some()
    }

    /// How long the oldest update not yet in the store has been waiting.
    pub fn unflushed_for(&self) -> Option<std::time::Duration> {
        let state = self.lock();
        let oldest = match (state.writing_since, state.unflushed_since) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        oldest.map(|since| since.elapsed())
    }

    /// The whole document as one update, for compaction.
    pub fn snapshot(&self) -> Vec<u8> {
        self.lock()
            .awareness
            .doc()
            .transact()
            .encode_state_as_update_v1(&StateVector::default())
    }

    /// The files and their sizes (no copy of any text).
    pub fn files(&self) -> Vec<FileInfo> {
        let mut files: Vec<FileInfo> = self
            .lock()
            .file_sizes
            .iter()
            .map(|(path, size)| FileInfo {
                path: path.clone(),
                size: *size,
            })
            .collect();
        files.sort_by(|a, b| a.path.cmp(&b.path));
        files
    }

    pub fn file_text(&self, path: &str) -> Option<String> {
        text_of(&self.lock(), path)
    }

    /// Gives files the texts of `wanted` (`None`: removes the file) as one new edit that every
    /// peer receives; with `only_these`, also removes every other file. A file is changed by
    /// replacing only the span that differs, so what peers type elsewhere in it meanwhile
    /// stays. Returns the files it changed with their texts just before (`None`: the file did
    /// not exist), or, when the room would break its limits, why not.
    pub fn restore_files(
        &self,
        wanted: &[(String, Option<String>)],
        only_these: bool,
        author: &str,
    ) -> Result<Vec<(String, Option<String>)>, String> {
        let mut state = self.lock();
        let mut before = Vec::new();
        let mut targets: Vec<(&str, Option<&str>)> = wanted
            .iter()
            .map(|(path, text)| (path.as_str(), text.as_deref()))
            .collect();
        if only_these {
            let keep: HashSet<&str> = targets.iter().map(|(path, _)| *path).collect();
            let others: Vec<String> = state
                .file_sizes
                .keys()
                .filter(|path| !keep.contains(path.as_str()))
                .cloned()
                .collect();
            for path in others {
                let text = text_of(&state, &path);
                before.push((path, text));
            }
            targets.extend(before.iter().map(|(path, _)| (path.as_str(), None)));
        }
        let mut changes = Vec::new();
        for (path, text) in &targets {
            let now = match before.iter().find(|(p, _)| p == path) {
                Some((_, now)) => now.clone(),
                None => text_of(&state, path),
            };
            if now.as_deref() != *text {
                changes.push((*path, *text, now));
            }
        }
        // The room after the restore must keep within its limits.
        let (mut total, mut files) = (state.sizes.total, state.sizes.files);
        for (_, text, now) in &changes {
            total = total + text.map_or(0, str::len) - now.as_ref().map_or(0, String::len);
            files = files + usize::from(text.is_some()) - usize::from(now.is_some());
            if text.is_some_and(|t| t.len() > self.limits.max_file_bytes) {
                return Err(format!(
                    "a restored file would be larger than the limit of {} bytes",
                    self.limits.max_file_bytes
                ));
            }
        }
        if total > self.limits.max_room_bytes || files > self.limits.max_files {
            return Err(format!(
                "the room would exceed its limits ({} bytes, {} files)",
                self.limits.max_room_bytes, self.limits.max_files
            ));
        }
        if changes.is_empty() {
            return Ok(Vec::new());
        }
        let delta = {
            let files = state.files.clone();
            let mut txn = state.awareness.doc().transact_mut();
            for (path, text, now) in &changes {
                match (text, files.get(&txn, path)) {
                    (None, _) => {
                        files.remove(&mut txn, path);
                    }
                    (Some(text), Some(Out::YText(existing))) => {
                        let now = now.as_deref().unwrap_or_default();
                        let (at, removed, inserted) = differing_span(now, text);
                        // Inserted first, before the span it replaces: text typed meanwhile
                        // after that span (its origin) then stays after the new text.
                        existing.insert(&mut txn, at as u32, inserted);
                        let after = (at + inserted.len()) as u32;
                        existing.remove_range(&mut txn, after, removed as u32);
                    }
                    (Some(text), _) => {
                        files.insert(&mut txn, *path, yrs::TextPrelim::new(*text));
                    }
                }
            }
            txn.encode_update_v1()
        };
        state.authors.insert(author.to_string());
        self.record(&mut state, None, delta);
        measure(&mut state);
        Ok(changes
            .into_iter()
            .map(|(path, _, now)| (path.to_string(), now))
            .collect())
    }

    /// Presence: each announced awareness state, as the peers sent it.
    pub fn presence(&self) -> Vec<serde_json::Value> {
        let state = self.lock();
        let mut peers: Vec<(ClientID, serde_json::Value)> = state
            .awareness
            .iter()
            .filter_map(|(id, s)| {
                let data = s.data.as_deref()?;
                let value: serde_json::Value = serde_json::from_str(data).ok()?;
                (!value.is_null()).then_some((id, value))
            })
            .collect();
        peers.sort_by_key(|(id, _)| id.get());
        peers
            .into_iter()
            .map(|(id, state)| serde_json::json!({"client_id": id.get(), "state": state}))
            .collect()
    }

    pub fn peer_count(&self) -> usize {
        self.lock().peers.len()
    }

    pub fn updated_at(&self) -> i64 {
        self.lock().updated_at
    }

    /// Its last peer left since [`Room::versioned`] was last called, and none came back.
    pub fn everyone_left(&self) -> bool {
        let state = self.lock();
        state.everyone_left && state.peers.is_empty()
    }

    /// A version of the room was taken.
    pub fn versioned(&self) {
        self.lock().everyone_left = false;
    }

    /// How long the room has had no peers, if it has none.
    pub fn idle_for(&self) -> Option<std::time::Duration> {
        self.lock().idle_since.map(|since| since.elapsed())
    }

    /// Closes every connection with `reason` and refuses new ones.
    pub fn close(&self, reason: CloseReason) {
        let mut state = self.lock();
        state.closed = true;
        state.everyone_left |= !state.peers.is_empty();
        for (_, mut peer) in state.peers.drain() {
            if let Some(kick) = peer.kick.take() {
                let _ = kick.send(reason.clone());
            }
        }
    }
}

/// Relaying: what another node sent, and what this node tells them.
impl Room {
    /// From now on, this room's updates and presence go to the other nodes too.
    pub fn relay_through(self, outlet: Outlet) -> Room {
        self.lock().relay = Some(outlet);
        self
    }

    /// Applies what another node sent. Returns true when a repair brought something this node
    /// lacked (it is then written by this node as well: whoever had it may not have).
    pub fn relayed(&self, origin: NodeId, message: Relayed) -> bool {
        let mut state = self.lock();
        if state.closed {
            return false;
        }
        let remote = state.remotes.entry(origin).or_insert_with(|| Remote {
            heard: Instant::now(),
            received: 0,
            stored: 0,
            clients: HashSet::new(),
        });
        remote.heard = Instant::now();
        let repaired = match message {
            Relayed::Update { number, update } => {
                remote.received = remote.received.max(number);
                integrate(&mut state, &update, false);
                false
            }
            Relayed::Repair(update) => integrate(&mut state, &update, true),
            Relayed::Awareness(update) => {
                remote_presence(&mut state, origin, &update);
                false
            }
            Relayed::Heartbeat(heartbeat) => {
                remote.stored = remote.stored.max(heartbeat.stored);
                answer(&mut state, &heartbeat);
                false
            }
            Relayed::Deleted => false,
        };
        drop(state);
        self.heard.notify_waiters();
        repaired
    }

    /// This node's heartbeat for the room (`hello` asks the others for theirs and their
    /// presence at once).
    pub fn heartbeat(&self) -> Relayed {
        heartbeat(&mut self.lock(), false)
    }

    /// Tells the other nodes that hold the room that this node holds it too (it has just
    /// loaded it, or reconnected): its peers' presence and a heartbeat that asks for theirs.
    pub fn introduce(&self) {
        let mut state = self.lock();
        if let Some(relay) = state.relay.clone() {
            introduce(&mut state, &relay, true);
        }
    }

    /// Forgets the nodes not heard from within `silence`, with their peers' presence.
    /// Returns true when one of them had updates it had not confirmed as written: this node
    /// must then write the whole document (it holds them).
    pub fn forget_silent(&self, silence: std::time::Duration) -> bool {
        let mut state = self.lock();
        let silent: Vec<NodeId> = state
            .remotes
            .iter()
            .filter(|(_, r)| r.heard.elapsed() > silence)
            .map(|(id, _)| *id)
            .collect();
        let mut unwritten = false;
        for id in silent {
            let Some(remote) = state.remotes.remove(&id) else {
                continue;
            };
            unwritten |= remote.received > remote.stored;
            let gone: Vec<ClientID> = remote.clients.into_iter().collect();
            forget_presence(&mut state, &gone);
            tracing::info!(room = %self.meta.id, node = %Uuid::from_bytes(id), unwritten = remote.received > remote.stored, "another node fell silent");
        }
        unwritten
    }

    /// Some other node's updates are here that it has not confirmed as written.
    pub fn holds_unconfirmed(&self) -> bool {
        self.lock().remotes.values().any(|r| r.received > r.stored)
    }

    /// Waits until `nodes` other nodes have been heard from in this room, or `limit` passes.
    pub async fn hear_from(&self, nodes: usize, limit: std::time::Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let heard = self.heard.notified();
            if self.lock().remotes.len() >= nodes {
                return;
            }
            if tokio::time::timeout_at(deadline, heard).await.is_err() {
                return;
            }
        }
    }
}

/// Applies an update from another node and passes what it changed on to the local peers.
/// With `keep`, the change is also written by this node. Returns whether anything changed.
fn integrate(state: &mut State, bytes: &[u8], keep: bool) -> bool {
    let Ok(update) = Update::decode_v1(bytes) else {
        tracing::warn!("malformed update from another node ignored");
        return false;
    };
    let delta = {
        let mut txn = state.awareness.doc().transact_mut();
        if let Err(e) = txn.apply_update(update) {
            tracing::warn!(error = %e, "invalid update from another node ignored");
            return false;
        }
        txn.has_changes().then(|| txn.encode_update_v1())
    };
    let Some(delta) = delta else { return false };
    state.version += 1;
    state.updated_at = now_ms();
    measure(state);
    broadcast(
        state,
        None,
        &frame(Message::Sync(SyncMessage::Update(delta.clone()))),
    );
    if keep {
        state.unflushed.push(delta);
        state.unflushed_since.get_or_insert_with(Instant::now);
    }
    true
}

fn heartbeat(state: &mut State, hello: bool) -> Relayed {
    Relayed::Heartbeat(Heartbeat {
        stored: state.stored_upto,
        hello,
        deletions: digest(state),
        state_vector: state.awareness.doc().transact().state_vector().encode_v1(),
    })
}

/// The digest of the document's deletions, computed again only after a change.
fn digest(state: &mut State) -> u64 {
    match state.digest {
        Some((version, digest)) if version == state.version => digest,
        _ => {
            let digest = deletions_digest(&state.awareness.doc().transact());
            state.digest = Some((state.version, digest));
            digest
        }
    }
}

/// Answers another node's heartbeat with what it lacks; when it says hello, also with this
/// node's presence and heartbeat.
fn answer(state: &mut State, heartbeat: &Heartbeat) {
    let Some(relay) = state.relay.clone() else {
        return;
    };
    let Ok(theirs) = StateVector::decode_v1(&heartbeat.state_vector) else {
        return;
    };
    let ours = state.awareness.doc().transact().state_vector();
    let ahead = ours
        .iter()
        .any(|(client, clock)| theirs.get(client) < *clock);
    if ahead || (ours == theirs && digest(state) != heartbeat.deletions) {
        let diff = state
            .awareness
            .doc()
            .transact()
            .encode_state_as_update_v1(&theirs);
        relay.send(&Relayed::Repair(diff));
    }
    if heartbeat.hello {
        introduce(state, &relay, false);
    }
}

/// Sends the presence of this node's own peers and a heartbeat.
fn introduce(state: &mut State, relay: &Outlet, hello: bool) {
    let clients: Vec<ClientID> = state
        .peers
        .values()
        .flat_map(|p| p.clients.iter().copied())
        .collect();
    if let Ok(update) = state.awareness.update_with_clients(clients) {
        if !update.clients.is_empty() {
            relay.send(&Relayed::Awareness(update.encode_v1()));
        }
    }
    relay.send(&heartbeat(state, hello));
}

/// Applies another node's presence update (its peers' states) and passes it on.
fn remote_presence(state: &mut State, origin: NodeId, bytes: &[u8]) {
    let Ok(update) = AwarenessUpdate::decode_v1(bytes) else {
        return;
    };
    let mut theirs = AwarenessUpdate {
        clients: HashMap::new(),
    };
    for (id, entry) in update.clients {
        // A local peer's id is this node's to announce.
        if state.peers.values().any(|p| p.clients.contains(&id)) {
            continue;
        }
        if let Some(remote) = state.remotes.get_mut(&origin) {
            if &*entry.json == "null" {
                remote.clients.remove(&id);
            } else {
                remote.clients.insert(id);
            }
        }
        theirs.clients.insert(id, entry);
    }
    if theirs.clients.is_empty() {
        return;
    }
    let message = frame(Message::Awareness(theirs.clone()));
    if state.awareness.apply_update(theirs).is_ok() {
        broadcast(state, None, &message);
    }
}

/// A digest of the document's deletions, the same on every node that has the same ones
/// (ranges merged where they touch, clients in order).
fn deletions_digest(txn: &impl ReadTxn) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::hash::DefaultHasher::new();
    for (client, ranges) in txn.snapshot().delete_set.iter() {
        client.hash(&mut hasher);
        let mut merged: Option<std::ops::Range<u32>> = None;
        for range in ranges.iter() {
            merged = match merged {
                Some(m) if m.end >= range.start => Some(m.start..m.end.max(range.end)),
                Some(m) => {
                    (m.start, m.end).hash(&mut hasher);
                    Some(range.clone())
                }
                None => Some(range.clone()),
            };
        }
        if let Some(m) = merged {
            (m.start, m.end).hash(&mut hasher);
        }
    }
    hasher.finish()
}

/// One update holding everything the given updates hold (each may repeat the others).
pub fn union_of(updates: &[Vec<u8>]) -> Result<Vec<u8>, RoomError> {
    let doc = Doc::new();
    {
        let mut txn = doc.transact_mut();
        for bytes in updates {
            let update =
                Update::decode_v1(bytes).map_err(|e| RoomError::CorruptState(e.to_string()))?;
            txn.apply_update(update)
                .map_err(|e| RoomError::CorruptState(e.to_string()))?;
        }
    }
    let txn = doc.transact();
    Ok(txn.encode_state_as_update_v1(&StateVector::default()))
}

fn frame(message: Message) -> Bytes {
    Bytes::from(message.encode_v1())
}

fn broadcast(state: &mut State, author: Option<PeerId>, message: &Bytes) {
    let mut too_slow = Vec::new();
    for (id, peer) in &state.peers {
        if Some(*id) == author {
            continue;
        }
        if peer.frames.try_send(message.clone()).is_err() {
            too_slow.push(*id);
        }
    }
    for id in too_slow {
        if let Some(kick) = state.peers.get_mut(&id).and_then(|p| p.kick.take()) {
            let _ = kick.send(CloseReason::new(
                close::TRY_AGAIN_LATER,
                "too slow: send queue full, reconnect to resync",
            ));
        }
        remove_peer(state, id);
    }
}

fn remove_peer(state: &mut State, peer: PeerId) {
    let Some(removed) = state.peers.remove(&peer) else {
        return;
    };
    if removed.edited {
        state.authors.insert(removed.author());
    }
    if state.peers.is_empty() {
        state.idle_since = Some(Instant::now());
        state.everyone_left = true;
    }
    let gone: Vec<ClientID> = removed
        .clients
        .into_iter()
        .filter(|id| state.awareness.meta(*id).is_some())
        .collect();
    if let Some(update) = forget_presence(state, &gone) {
        if let Some(relay) = &state.relay {
            relay.send(&Relayed::Awareness(update.encode_v1()));
        }
    }
}

/// Removes presence states and tells the local peers; returns the removal, if any.
fn forget_presence(state: &mut State, gone: &[ClientID]) -> Option<AwarenessUpdate> {
    for id in gone {
        state.awareness.remove_state(*id);
    }
    let update = state
        .awareness
        .update_with_clients(gone.iter().copied())
        .ok()
        .filter(|u| !u.clients.is_empty())?;
    broadcast(state, None, &frame(Message::Awareness(update.clone())));
    Some(update)
}

/// Applies the presence states a peer sent for the client ids it owns: the first connection
/// to announce an id owns it until it leaves. States for ids another connection owns — a stock
/// provider relays the states it receives, and a hostile one could rename someone — are
/// dropped, so nobody can set another's presence. Each connection owns a few ids at most, each
/// state of a bounded size.
fn apply_awareness(
    state: &mut State,
    limits: &Limits,
    peer: PeerId,
    update: AwarenessUpdate,
) -> Result<(), CloseReason> {
    let mut own = AwarenessUpdate {
        clients: HashMap::new(),
    };
    for (id, entry) in update.clients {
        let owner = state
            .peers
            .iter()
            .find(|(_, p)| p.clients.contains(&id))
            .map(|(owner, _)| *owner);
        let remote = state.remotes.values().any(|r| r.clients.contains(&id));
        if owner.is_some_and(|owner| owner != peer) || remote {
            continue;
        }
        let present = &*entry.json != "null";
        if present && entry.json.len() > limits.max_presence_bytes {
            return Err(CloseReason::new(
                close::TOO_BIG,
                format!(
                    "presence state too large: {} bytes, limit is {}",
                    entry.json.len(),
                    limits.max_presence_bytes
                ),
            ));
        }
        let owned = state.peers.get(&peer).map_or(0, |p| p.clients.len());
        if present && owner.is_none() && owned >= limits.max_presence_states {
            return Err(CloseReason::new(
                close::POLICY,
                format!(
                    "too many presence states on one connection: limit is {}",
                    limits.max_presence_states
                ),
            ));
        }
        if let Some(p) = state.peers.get_mut(&peer) {
            if present {
                p.clients.insert(id);
                p.name = announced_name(&entry.json).or(p.name.take());
            } else {
                p.clients.remove(&id);
            }
        }
        own.clients.insert(id, entry);
    }
    if own.clients.is_empty() {
        return Ok(());
    }
    let message = frame(Message::Awareness(own.clone()));
    if let Some(relay) = &state.relay {
        relay.send(&Relayed::Awareness(own.encode_v1()));
    }
    state.awareness.apply_update(own).map_err(|e| {
        CloseReason::new(
            close::INVALID_DATA,
            format!("invalid awareness update: {e}"),
        )
    })?;
    broadcast(state, Some(peer), &message);
    Ok(())
}

fn text_of(state: &State, path: &str) -> Option<String> {
    let txn = state.awareness.doc().transact();
    match state.files.get(&txn, path) {
        Some(Out::YText(text)) => Some(text.get_string(&txn)),
        _ => None,
    }
}

/// The `user.name` of a presence state, if it has one (short, one line).
fn announced_name(json: &str) -> Option<String> {
    let state: serde_json::Value = serde_json::from_str(json).ok()?;
    let name = state.get("user")?.get("name")?.as_str()?.trim();
    let name: String = name.chars().filter(|c| !c.is_control()).take(100).collect();
    (!name.is_empty()).then_some(name)
}

impl State {
    fn changes(&self) -> MutexGuard<'_, Changes> {
        self.changes.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What an update did that the room does not allow.
#[derive(Debug, Default)]
struct Verdict {
    /// Keys that are not normal paths to texts.
    invalid: Vec<String>,
    /// Files that hold something besides plain text.
    not_plain: Vec<String>,
    /// Files that are new since the last measure.
    added: Vec<String>,
}

/// Brings the sizes up to date with the files changed since the last measure.
fn measure(state: &mut State) -> Verdict {
    let (to_measure, not_plain) = {
        let mut changes = state.changes();
        (
            std::mem::take(&mut changes.to_measure),
            changes.not_plain.iter().cloned().collect(),
        )
    };
    let mut verdict = Verdict {
        not_plain,
        ..Verdict::default()
    };
    let txn = state.awareness.doc().transact();
    for key in to_measure {
        let size = match state.files.get(&txn, &key) {
            Some(Out::YText(text)) if paths::is_normal(&key) => Some(text.len(&txn) as usize),
            Some(_) => {
                verdict.invalid.push(key.clone());
                None
            }
            None => None,
        };
        let old = match size {
            Some(size) => state.file_sizes.insert(key.clone(), size),
            None => state.file_sizes.remove(&key),
        };
        if old.is_none() && size.is_some() {
            verdict.added.push(key);
        }
    }
    drop(txn);
    state.sizes = Sizes {
        total: state.file_sizes.values().sum(),
        largest: state.file_sizes.values().copied().max().unwrap_or(0),
        files: state.file_sizes.len(),
    };
    verdict
}

/// True for a change that inserts plain text (no embedded value, no formatting) or removes.
fn is_plain_text(change: &yrs::types::Delta<Out>) -> bool {
    match change {
        yrs::types::Delta::Inserted(value, attributes) => {
            attributes.is_none() && matches!(value, Out::Any(yrs::Any::String(_)))
        }
        yrs::types::Delta::Retain(_, attributes) => attributes.is_none(),
        yrs::types::Delta::Deleted(_) => true,
    }
}

/// Removes from a file everything that is not plain text (embedded values and types).
fn keep_plain_text(txn: &mut yrs::TransactionMut, text: &yrs::TextRef) {
    let mut at = 0u32;
    let mut embedded = Vec::new();
    for chunk in text.diff(txn, yrs::types::text::YChange::identity) {
        match &chunk.insert {
            Out::Any(yrs::Any::String(s)) => at += s.len() as u32,
            _ => {
                embedded.push(at);
                at += 1;
            }
        }
    }
    for at in embedded.into_iter().rev() {
        text.remove_range(txn, at, 1);
    }
}

/// Sizes of the files in the map, and the keys that are not normal paths to texts.
fn scan_map(doc: &Doc, files: &MapRef) -> (Sizes, Vec<String>) {
    let txn = doc.transact();
    let mut sizes = Sizes::default();
    let mut invalid = Vec::new();
    for (path, value) in files.iter(&txn) {
        match value {
            Out::YText(text) if paths::is_normal(path) => {
                let len = text.len(&txn) as usize;
                sizes.total += len;
                sizes.largest = sizes.largest.max(len);
                sizes.files += 1;
            }
            _ => invalid.push(path.to_string()),
        }
    }
    (sizes, invalid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use yrs::TextPrelim;

    fn limits() -> Arc<Limits> {
        Arc::new(Limits {
            max_peers: 8,
            max_message_bytes: 1 << 20,
            max_file_bytes: 1 << 20,
            max_room_bytes: 1 << 22,
            max_files: 100,
            max_messages_per_second: 1000,
            max_presence_bytes: 1024,
            max_presence_states: 2,
            max_rooms_per_minute: 10,
            create_token: None,
            max_connections: 16,
            header_timeout_secs: 10,
            idle_timeout_secs: 60,
            send_queue: 64,
        })
    }

    fn peer(room: &Room) -> (PeerId, mpsc::Receiver<Bytes>) {
        let (frames, rx) = mpsc::channel(64);
        let (kick, _) = oneshot::channel();
        let (id, _) = room.join(PeerChannels { frames, kick }).unwrap();
        (id, rx)
    }

    fn update_frame(update: Vec<u8>) -> Vec<u8> {
        Message::Sync(SyncMessage::Update(update)).encode_v1()
    }

    fn empty_room() -> Room {
        let meta = RoomMeta {
            id: Uuid::new_v4(),
            name: None,
            language: None,
            token_hash: String::new(),
            created_at: 0,
            updated_at: 0,
        };
        Room::load(meta, limits(), None, &[]).unwrap()
    }

    #[test]
    fn a_flush_copies_exactly_the_files_that_changed() {
        let room = empty_room();
        let (peer, _frames) = peer(&room);
        let doc = Doc::new();
        let files = doc.get_or_insert_map(FILES);
        let send = |f: &dyn Fn(&mut yrs::TransactionMut)| {
            let mut txn = doc.transact_mut();
            f(&mut txn);
            room.receive(peer, &update_frame(txn.encode_update_v1()))
                .unwrap();
        };
        send(&|txn| {
            files.insert(txn, "a.txt", TextPrelim::new("a"));
            files.insert(txn, "b.txt", TextPrelim::new("b"));
        });
        let batch = room.take_unflushed(true).unwrap();
        let mut changed = batch.changed_files.clone();
        changed.sort();
        assert_eq!(
            changed,
            vec![("a.txt".into(), "a".into()), ("b.txt".into(), "b".into())]
        );
        room.flushed();

        // An edit in one file copies that file only; a removal is reported as such.
        send(&|txn| {
            let Some(Out::YText(text)) = files.get(txn, "a.txt") else {
                panic!()
            };
            text.insert(txn, 1, "!");
        });
        send(&|txn| {
            files.remove(txn, "b.txt");
        });
        let batch = room.take_unflushed(true).unwrap();
        assert_eq!(
            batch.changed_files,
            vec![("a.txt".to_string(), "a!".to_string())]
        );
        assert_eq!(batch.removed_files, vec!["b.txt".to_string()]);
        // A failed write puts them back for the next one.
        room.restore(batch);
        let again = room.take_unflushed(true).unwrap();
        assert_eq!(
            again.changed_files,
            vec![("a.txt".to_string(), "a!".to_string())]
        );
        assert_eq!(again.removed_files, vec!["b.txt".to_string()]);
    }

    /// While files keep changing, a flush writes the updates without the copies, and says so;
    /// the copies come when asked for (or once the room is quiet).
    #[test]
    fn a_flush_while_typing_leaves_the_copies_for_later() {
        let room = empty_room();
        let (peer, _frames) = peer(&room);
        let doc = Doc::new();
        let files = doc.get_or_insert_map(FILES);
        {
            let mut txn = doc.transact_mut();
            files.insert(&mut txn, "a.txt", TextPrelim::new("a"));
            room.receive(peer, &update_frame(txn.encode_update_v1()))
                .unwrap();
        }
        let batch = room.take_unflushed(false).unwrap();
        assert_eq!(batch.updates.len(), 1);
        assert!(batch.changed_files.is_empty());
        assert!(
            !batch.copies,
            "the stored copies are stale after this batch"
        );
        room.flushed();
        assert!(room.copies_pending());
        let batch = room.take_unflushed(true).unwrap();
        assert!(batch.updates.is_empty());
        assert!(batch.copies);
        assert_eq!(batch.changed_files, vec![("a.txt".into(), "a".into())]);
        room.flushed();
        assert!(!room.copies_pending());
        assert!(room.take_unflushed(true).is_none());
    }

    /// A flush writes one row per room, however many keystrokes it holds, and the room counts
    /// as unflushed until that row is written.
    #[test]
    fn a_flush_merges_its_updates_into_one_row_and_is_unflushed_until_written() {
        let room = empty_room();
        let (peer, _frames) = peer(&room);
        let doc = Doc::new();
        let files = doc.get_or_insert_map(FILES);
        {
            let mut txn = doc.transact_mut();
            files.insert(&mut txn, "a.txt", TextPrelim::new(""));
            room.receive(peer, &update_frame(txn.encode_update_v1()))
                .unwrap();
        }
        for (i, c) in "héllo 🎉".chars().enumerate() {
            let mut txn = doc.transact_mut();
            let Some(Out::YText(text)) = files.get(&txn, "a.txt") else {
                panic!()
            };
            let at = "héllo 🎉"
                .chars()
                .take(i)
                .map(char::len_utf8)
                .sum::<usize>();
            text.insert(&mut txn, at as u32, &c.to_string());
            room.receive(peer, &update_frame(txn.encode_update_v1()))
                .unwrap();
        }
        let batch = room.take_unflushed(true).unwrap();
        assert!(room.has_unflushed(), "being written is not written");
        assert_eq!(batch.updates.len(), 8, "the file, then 7 keystrokes");
        let rows = batch.rows();
        assert_eq!(rows.len(), 1);
        let loaded = Doc::new();
        let loaded_files = loaded.get_or_insert_map(FILES);
        loaded
            .transact_mut()
            .apply_update(Update::decode_v1(&rows[0]).unwrap())
            .unwrap();
        let txn = loaded.transact();
        let Some(Out::YText(text)) = loaded_files.get(&txn, "a.txt") else {
            panic!("the merged row holds the file")
        };
        assert_eq!(text.get_string(&txn), "héllo 🎉");
        drop(txn);
        room.flushed();
        assert!(!room.has_unflushed());
    }

    #[test]
    fn an_update_that_completes_anothers_pending_one_reaches_its_author_too() {
        let room = empty_room();
        let (ann, mut ann_frames) = peer(&room);
        let (bob, _) = peer(&room);

        // Ann's document: a file, then a line that builds on it.
        let doc = Doc::new();
        let files = doc.get_or_insert_map(FILES);
        let first = {
            let mut txn = doc.transact_mut();
            files.insert(&mut txn, "a.txt", TextPrelim::new("start\n"));
            txn.encode_update_v1()
        };
        let second = {
            let mut txn = doc.transact_mut();
            let Some(Out::YText(text)) = files.get(&txn, "a.txt") else {
                panic!()
            };
            text.insert(&mut txn, 6, "more\n");
            txn.encode_update_v1()
        };
        // Bob relays the second first: it waits for what it builds on.
        room.receive(bob, &update_frame(second)).unwrap();
        assert_eq!(room.file_text("a.txt"), None);
        while ann_frames.try_recv().is_ok() {}
        // Ann's first update completes it: the delta holds both, and Ann lacks Bob's part.
        room.receive(ann, &update_frame(first)).unwrap();
        assert_eq!(room.file_text("a.txt").as_deref(), Some("start\nmore\n"));
        assert!(
            ann_frames.try_recv().is_ok(),
            "the completing author gets the delta"
        );
    }
}
