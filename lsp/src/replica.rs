//! This bridge's replica of the room: a Yjs document (`files`: path → `Y.Text`) and the
//! awareness (presence) of everyone in it, speaking the y-websocket protocol.
//!
//! Offsets are UTF-16 code units, as in JavaScript Yjs, so any Yjs client in the room agrees
//! with us. Changes made by peers to a file this bridge has linked are collected, per file, as
//! deltas for the session to hand to that document's [`crate::shadow::Shadow`]; our own changes
//! (origin [`LOCAL`]) are not reported back.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

use yrs::sync::{Awareness, Message, SyncMessage};
use yrs::types::Delta;
use yrs::undo::Options as UndoOptions;
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{
    Doc, GetString, Map, MapRef, Observable, OffsetKind, Options, Origin, Out, ReadTxn, Text,
    TextPrelim, TextRef, Transact, UndoManager, Update,
};

use duet_server::protocol::{Cursor, Presence};
use duet_server::span::differing_span;
use thiserror::Error;

use crate::ot::Component;

/// Origin of the transactions this bridge makes for the user's typing, so its own observers
/// skip them (and its undo managers track them).
const LOCAL: &str = "duet-lsp";
/// Origin of the edits that follow the editor's rewriting of ours (its line breaks): ours
/// too, but nothing the user's undo should undo.
const EDITOR_FORM: &str = "duet-lsp/editor-form";

/// Origin of a restore of a version by this user: their own edit, which their undo tracks, but
/// one their editor does not have yet, so it is reported like a peer's and sent like an undo.
const RESTORE: &str = "duet-lsp/restore";

fn ours(origin: Option<&Origin>) -> bool {
    origin.is_some_and(|o| *o == Origin::from(LOCAL) || *o == Origin::from(EDITOR_FORM))
}

/// The user's edits within this long of each other are one undo step: a burst of typing.
const UNDO_CAPTURE_MS: u64 = 500;

/// Peers' changes to one linked file, in order, as UTF-16 components on its previous text.
pub type RemoteChange = (String, Vec<Component>);

/// A frame from the server that this replica cannot take (it is ignored; the next sync
/// brings what it should have carried).
#[derive(Debug, Error)]
pub enum FrameError {
    #[error("malformed frame from the server: {0}")]
    Frame(#[source] yrs::encoding::read::Error),
    #[error("malformed update: {0}")]
    Update(#[source] yrs::encoding::read::Error),
    #[error("invalid update: {0}")]
    Apply(#[source] yrs::error::UpdateError),
    #[error("invalid presence update: {0}")]
    Presence(#[source] yrs::sync::awareness::Error),
}

/// What a frame from the server meant.
#[derive(Debug, Default)]
pub struct Received {
    /// A frame to send back (sync step 2 for the server's step 1).
    pub reply: Option<Vec<u8>>,
    /// The server's state has arrived (sync step 2).
    pub synced: bool,
    /// The document changed.
    pub doc_changed: bool,
    /// Part of what arrived waits for something we never received.
    pub waiting: bool,
    /// Somebody's presence changed.
    pub presence_changed: bool,
}

/// Another peer's announced presence.
#[derive(Debug, Clone, PartialEq)]
pub struct Peer {
    pub client_id: u64,
    pub name: String,
    pub color: String,
    pub cursor: Option<Cursor>,
}

pub struct Replica {
    awareness: Awareness,
    files: MapRef,
    changes: Arc<Mutex<Vec<RemoteChange>>>,
    linked: Vec<(String, TextRef)>,
    /// Per linked file, the user's own edits, to undo and redo (see [`Replica::undo`]).
    undo: HashMap<String, UndoManager>,
    /// Updates made by undoing, redoing or restoring, to send.
    made_updates: Arc<Mutex<Vec<Vec<u8>>>>,
}

/// Undo or redo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum History {
    Undo,
    Redo,
}

impl Default for Replica {
    fn default() -> Self {
        Self::new()
    }
}

impl Replica {
    pub fn new() -> Replica {
        let doc = Doc::with_options(Options {
            offset_kind: OffsetKind::Utf16,
            ..Options::default()
        });
        let files = doc.get_or_insert_map("files");
        // Undoing is a transaction of its undo manager's origin, a restore one of RESTORE:
        // neither ours (LOCAL, sent as it is made) nor a peer's (no origin). Their updates are
        // collected here, to be sent.
        let made_updates: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
        let collected = made_updates.clone();
        doc.observe_update_v1(LOCAL, move |txn, event| {
            if txn.origin().is_some() && !ours(txn.origin()) {
                collected
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(event.update.clone());
            }
        })
        .expect("a new document has no transaction open");
        Replica {
            awareness: Awareness::new(doc),
            files,
            changes: Arc::default(),
            linked: Vec::new(),
            undo: HashMap::new(),
            made_updates,
        }
    }

    fn doc(&self) -> &Doc {
        self.awareness.doc()
    }

    /// Opens the conversation after (re)connecting: our state vector, and our presence.
    pub fn hello(&self) -> Vec<Vec<u8>> {
        let mut frames = vec![self.sync_request()];
        frames.extend(self.own_presence());
        frames
    }

    /// Sync step 1: our state vector, to which the server answers with all we lack.
    pub fn sync_request(&self) -> Vec<u8> {
        let sv = self.doc().transact().state_vector();
        Message::Sync(SyncMessage::SyncStep1(sv)).encode_v1()
    }

    /// Handles one frame from the server.
    pub fn receive(&mut self, data: &[u8]) -> Result<Received, FrameError> {
        let message = Message::decode_v1(data).map_err(FrameError::Frame)?;
        let mut out = Received::default();
        match message {
            Message::Sync(SyncMessage::SyncStep1(sv)) => {
                let update = self.doc().transact().encode_state_as_update_v1(&sv);
                out.reply = Some(Message::Sync(SyncMessage::SyncStep2(update)).encode_v1());
            }
            Message::Sync(SyncMessage::SyncStep2(update)) => {
                (out.doc_changed, out.waiting) = self.apply_remote(&update)?;
                out.synced = true;
            }
            Message::Sync(SyncMessage::Update(update)) => {
                (out.doc_changed, out.waiting) = self.apply_remote(&update)?;
            }
            Message::Awareness(update) => {
                self.awareness
                    .apply_update(update)
                    .map_err(FrameError::Presence)?;
                out.presence_changed = true;
            }
            Message::AwarenessQuery | Message::Auth(_) | Message::Custom(..) => {}
        }
        Ok(out)
    }

    /// Applies a peer's update: whether the document changed, and whether part of it (or of
    /// an earlier one) still waits for something it builds on.
    fn apply_remote(&mut self, update: &[u8]) -> Result<(bool, bool), FrameError> {
        let update = Update::decode_v1(update).map_err(FrameError::Update)?;
        let mut txn = self.doc().transact_mut();
        txn.apply_update(update).map_err(FrameError::Apply)?;
        let (changed, waiting) = (txn.has_changes(), txn.store().pending_update().is_some());
        tracing::debug!(changed, waiting, "remote update applied");
        Ok((changed, waiting))
    }

    /// The changes peers made to linked files since the last call.
    pub fn take_remote_changes(&self) -> Vec<RemoteChange> {
        // The lists hold complete entries only: one left by a panicking thread is still whole.
        std::mem::take(&mut *self.changes.lock().unwrap_or_else(PoisonError::into_inner))
    }

    fn text_ref(&self, path: &str) -> Option<TextRef> {
        let txn = self.doc().transact();
        match self.files.get(&txn, path) {
            Some(Out::YText(text)) => Some(text),
            _ => None,
        }
    }

    /// The file's text in the room, if the room has it.
    pub fn text(&self, path: &str) -> Option<String> {
        let text = self.text_ref(path)?;
        let txn = self.doc().transact();
        Some(text.get_string(&txn))
    }

    /// The file's length in UTF-16 code units, without copying its text.
    pub fn len_utf16(&self, path: &str) -> Option<usize> {
        let text = self.text_ref(path)?;
        let txn = self.doc().transact();
        Some(text.len(&txn) as usize)
    }

    /// Paths of every file in the room.
    pub fn paths(&self) -> Vec<String> {
        let txn = self.doc().transact();
        let mut paths: Vec<String> = self.files.keys(&txn).map(str::to_string).collect();
        paths.sort();
        paths
    }

    /// Adds a file to the room. Returns the frame to send.
    pub fn create(&mut self, path: &str, text: &str) -> Vec<u8> {
        let mut txn = self.doc().transact_mut_with(LOCAL);
        self.files.insert(&mut txn, path, TextPrelim::new(text));
        update_frame(txn.encode_update_v1())
    }

    /// Starts reporting peers' changes to `path`; returns its text, or `None` if the room has
    /// no such file. Linking again (after the text was replaced) follows the new text.
    pub fn link(&mut self, path: &str) -> Option<String> {
        self.unlink(path);
        let text = self.text_ref(path)?;
        let changes = self.changes.clone();
        let key = path.to_string();
        text.observe(LOCAL, move |txn, event| {
            if ours(txn.origin()) {
                return;
            }
            let components = event
                .delta(txn)
                .iter()
                .map(|d| match d {
                    Delta::Inserted(Out::Any(yrs::Any::String(s)), _) => {
                        Component::Insert(s.to_string())
                    }
                    Delta::Inserted(other, _) => Component::Insert(other.to_string()),
                    Delta::Deleted(n) => Component::Delete(*n as usize),
                    Delta::Retain(n, _) => Component::Retain(*n as usize),
                })
                .collect();
            changes
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push((key.clone(), components));
        });
        let mut undo = UndoManager::with_options(UndoOptions {
            capture_timeout_millis: UNDO_CAPTURE_MS,
            tracked_origins: HashSet::from([Origin::from(LOCAL), Origin::from(RESTORE)]),
            ..UndoOptions::default()
        });
        undo.expand_scope(self.doc(), &text);
        self.undo.insert(path.to_string(), undo);
        self.linked.push((path.to_string(), text.clone()));
        let txn = self.doc().transact();
        Some(text.get_string(&txn))
    }

    pub fn unlink(&mut self, path: &str) {
        if let Some(i) = self.linked.iter().position(|(p, _)| p == path) {
            let (_, text) = self.linked.swap_remove(i);
            text.unobserve(LOCAL);
        }
        self.undo.remove(path);
    }

    /// Undoes (or redoes) up to `steps` of this bridge's own edits to a linked file, as a new
    /// change of the CRDT: a peer's text is never removed, even typed inside ours. The change
    /// is reported like a peer's ([`Replica::take_remote_changes`]), so that it reaches the
    /// editor. Returns how many steps were done and the frames to send.
    pub fn undo(&mut self, path: &str, history: History, steps: usize) -> (usize, Vec<Vec<u8>>) {
        let Some(undo) = self.undo.get_mut(path) else {
            return (0, Vec::new());
        };
        let done = (0..steps)
            .take_while(|_| match history {
                History::Undo => undo.undo_blocking(),
                History::Redo => undo.redo_blocking(),
            })
            .count();
        (done, self.take_made_updates())
    }

    /// Gives files the texts of `wanted` (`None`: removes the file), and with `only_these`
    /// removes every other file, as one edit of the user's own: each linked file's undo then
    /// takes its part back in one step. A file is changed by replacing only the span that
    /// differs (inserting the new text before it, then deleting it, as the server's restore
    /// does), so what peers type elsewhere in it stays. The change is reported like a peer's
    /// ([`Replica::take_remote_changes`]). Returns the paths changed and the frames to send.
    pub fn restore(
        &mut self,
        wanted: &[(String, Option<String>)],
        only_these: bool,
    ) -> (Vec<String>, Vec<Vec<u8>>) {
        let mut targets: Vec<(String, Option<&str>)> = wanted
            .iter()
            .map(|(path, text)| (path.clone(), text.as_deref()))
            .collect();
        if only_these {
            let others: Vec<String> = self
                .paths()
                .into_iter()
                .filter(|path| !wanted.iter().any(|(p, _)| p == path))
                .collect();
            targets.extend(others.into_iter().map(|path| (path, None)));
        }
        // The restore is a step of its own: neither the typing before it nor that after it.
        self.undo.values_mut().for_each(UndoManager::reset);
        let mut changed = Vec::new();
        {
            let mut txn = self.doc().transact_mut_with(RESTORE);
            for (path, text) in &targets {
                let existing = match self.files.get(&txn, path) {
                    Some(Out::YText(existing)) => Some(existing),
                    _ => None,
                };
                match (text, existing) {
                    (None, None) => continue,
                    (None, Some(_)) => {
                        self.files.remove(&mut txn, path);
                    }
                    (Some(text), Some(existing)) => {
                        let now = existing.get_string(&txn);
                        if now == *text {
                            continue;
                        }
                        let (at, removed, inserted) = differing_span(&now, text);
                        let at16 = utf16_len(&now[..at]);
                        existing.insert(&mut txn, at16, inserted);
                        let after = at16 + utf16_len(inserted);
                        existing.remove_range(&mut txn, after, utf16_len(&now[at..at + removed]));
                    }
                    (Some(text), None) => {
                        self.files
                            .insert(&mut txn, path.as_str(), TextPrelim::new(*text));
                    }
                }
                changed.push(path.clone());
            }
        }
        self.undo.values_mut().for_each(UndoManager::reset);
        (changed, self.take_made_updates())
    }

    /// The frames of the updates made by undoing, redoing or restoring, to send.
    fn take_made_updates(&self) -> Vec<Vec<u8>> {
        let updates = std::mem::take(
            &mut *self
                .made_updates
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        updates.into_iter().map(update_frame).collect()
    }

    /// True when the room's entry for a linked path is no longer the text we follow: removed,
    /// or replaced by a peer that created the same file at the same time.
    pub fn link_broken(&self, path: &str) -> bool {
        let linked = self.linked.iter().find(|(p, _)| p == path).map(|(_, t)| t);
        match (linked, self.text_ref(path)) {
            (Some(ours), Some(current)) => *ours != current,
            (Some(_), None) => true,
            (None, _) => false,
        }
    }

    /// Applies our own splices (UTF-16) to a linked file. Returns the update to send. The
    /// user's typing and the edits that follow the editor's form go in transactions of their
    /// own origin, in order, so that undo tracks only the former.
    pub fn edit(&mut self, path: &str, splices: &[crate::shadow::Splice]) -> Option<Vec<u8>> {
        let text = self.text_ref(path)?;
        let mut updates = Vec::new();
        for run in splices.chunk_by(|a, b| a.typed == b.typed) {
            let origin = if run[0].typed { LOCAL } else { EDITOR_FORM };
            let mut txn = self.doc().transact_mut_with(origin);
            for splice in run {
                if splice.delete > 0 {
                    text.remove_range(&mut txn, splice.index as u32, splice.delete as u32);
                }
                if !splice.insert.is_empty() {
                    text.insert(&mut txn, splice.index as u32, &splice.insert);
                }
            }
            updates.push(txn.encode_update_v1());
        }
        let update = match updates.len() {
            1 => updates.pop()?,
            _ => yrs::merge_updates_v1(updates.iter().map(Vec::as_slice))
                .expect("updates this replica encoded merge"),
        };
        Some(update_frame(update))
    }

    /// Sets our presence. Returns the frame to send.
    pub fn set_presence(&mut self, state: &Presence) -> Option<Vec<u8>> {
        self.awareness
            .set_local_state_raw(serde_json::to_string(state).ok()?);
        self.own_presence()
    }

    /// Our presence alone. (`Awareness::update` would carry every state we know of, and the
    /// server would take them all for ours and remove them all when we leave.)
    fn own_presence(&self) -> Option<Vec<u8>> {
        let me = self.awareness.client_id();
        let update = self.awareness.update_with_clients([me]).ok()?;
        Some(Message::Awareness(update).encode_v1())
    }

    /// Everyone else's presence, by client id.
    pub fn peers(&self) -> Vec<Peer> {
        let me = self.awareness.client_id();
        let mut peers: Vec<Peer> = self
            .awareness
            .iter()
            .filter(|(id, _)| *id != me)
            .filter_map(|(id, state)| {
                // A client that cleared its state (`null`) is gone; what else it announces
                // is read leniently (see `Presence`).
                let value: serde_json::Value = serde_json::from_str(state.data.as_deref()?).ok()?;
                if value.is_null() {
                    return None;
                }
                let presence: Presence = serde_json::from_value(value).unwrap_or_default();
                Some(Peer {
                    client_id: id.get(),
                    name: presence.user.name,
                    color: presence.user.color,
                    cursor: presence.cursor,
                })
            })
            .collect();
        peers.sort_by_key(|p| p.client_id);
        peers
    }
}

/// A text's length in UTF-16 code units: the replica's offsets.
fn utf16_len(text: &str) -> u32 {
    text.encode_utf16().count() as u32
}

/// The frame that sends a document update.
pub fn update_frame(update: Vec<u8>) -> Vec<u8> {
    Message::Sync(SyncMessage::Update(update)).encode_v1()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::shadow::Splice;

    /// Two replicas connected directly, as the server would relay between them.
    fn relay(from: &Replica, to: &mut Replica) {
        let sv = to.doc().transact().state_vector();
        let update = from.doc().transact().encode_state_as_update_v1(&sv);
        to.receive(&update_frame(update)).unwrap();
    }

    /// Applies frames (updates) from another replica, as the server would relay them.
    fn receive_all(to: &mut Replica, frames: &[Vec<u8>]) {
        for frame in frames {
            to.receive(frame).unwrap();
        }
    }

    #[test]
    fn a_restore_is_one_step_of_our_own_in_utf16_offsets() {
        let (mut a, mut b) = (Replica::new(), Replica::new());
        let created = a.create("f.txt", "🎉 x 🎉 old 🎉\n");
        receive_all(&mut b, &[created]);
        a.link("f.txt");
        // Typed just before the restore (within one undo burst): a step of its own still.
        let typed = a.edit("f.txt", &[Splice::typed(0, 0, "ann ")]).unwrap();
        receive_all(&mut b, &[typed]);
        let wanted = [
            (
                "f.txt".to_string(),
                Some("ann 🎉 x 🎉 new 🎉\n".to_string()),
            ),
            ("back.txt".to_string(), Some("é".to_string())),
        ];
        let (changed, frames) = a.restore(&wanted, false);
        assert_eq!(changed, ["f.txt", "back.txt"]);
        assert_eq!(a.text("f.txt").unwrap(), "ann 🎉 x 🎉 new 🎉\n");
        receive_all(&mut b, &frames);
        assert_eq!(b.text("f.txt").unwrap(), "ann 🎉 x 🎉 new 🎉\n");
        assert_eq!(b.text("back.txt").as_deref(), Some("é"));
        // The editor is told like a peer's change: only the span that differs (UTF-16).
        assert_eq!(
            a.take_remote_changes(),
            vec![(
                "f.txt".to_string(),
                vec![
                    Component::Retain(12),
                    Component::Insert("new".into()),
                    Component::Delete(3)
                ]
            )]
        );
        // A peer types at the end; one undo takes back the restore only: the peer's typing and
        // ann's own from before stay.
        let typed = b.edit("f.txt", &[Splice::typed(18, 0, "bob")]).unwrap();
        receive_all(&mut a, &[typed]);
        let (done, frames) = a.undo("f.txt", History::Undo, 1);
        assert_eq!(done, 1);
        assert_eq!(a.text("f.txt").unwrap(), "ann 🎉 x 🎉 old 🎉bob\n");
        receive_all(&mut b, &frames);
        assert_eq!(b.text("f.txt").unwrap(), a.text("f.txt").unwrap());
        // Restoring all removes the files the version lacks; nothing changes twice.
        let only = [("f.txt".to_string(), Some("🎉\n".to_string()))];
        let (changed, _) = a.restore(&only, true);
        assert_eq!(changed, ["f.txt", "back.txt"]);
        assert_eq!(a.paths(), ["f.txt"]);
        assert_eq!(a.restore(&only, true).0, Vec::<String>::new());
    }

    #[test]
    fn undo_removes_only_our_own_edits_and_redo_brings_them_back() {
        let (mut a, mut b) = (Replica::new(), Replica::new());
        let created = a.create("f.txt", "0\n");
        receive_all(&mut b, &[created]);
        a.link("f.txt");
        b.link("f.txt");
        // ann types a line; bob types inside it; ann types again, a while later.
        let typed = a.edit("f.txt", &[Splice::typed(2, 0, "ann1\n")]).unwrap();
        receive_all(&mut b, &[typed]);
        let typed = b.edit("f.txt", &[Splice::typed(4, 0, "BOB")]).unwrap();
        receive_all(&mut a, &[typed]);
        std::thread::sleep(Duration::from_millis(UNDO_CAPTURE_MS + 50));
        let typed = a.edit("f.txt", &[Splice::typed(0, 0, "ann2 ")]).unwrap();
        receive_all(&mut b, &[typed]);
        a.take_remote_changes();
        b.take_remote_changes();
        assert_eq!(a.text("f.txt").unwrap(), "ann2 0\nanBOBn1\n");

        // One step: ann's last burst only.
        let (done, frames) = a.undo("f.txt", History::Undo, 1);
        assert_eq!((done, frames.len()), (1, 1));
        assert_eq!(a.text("f.txt").unwrap(), "0\nanBOBn1\n");
        assert_eq!(
            a.take_remote_changes(),
            vec![("f.txt".to_string(), vec![Component::Delete(5)])],
            "the undo reaches the editor like a peer's change"
        );
        // Two more asked, one left: bob's text inside ann's line stays.
        let (done, more) = a.undo("f.txt", History::Undo, 2);
        assert_eq!(done, 1);
        assert_eq!(a.text("f.txt").unwrap(), "0\nBOB");
        receive_all(&mut b, &[frames, more].concat());
        assert_eq!(b.text("f.txt").unwrap(), "0\nBOB");
        // Redo both; bob's replica follows.
        let (done, frames) = a.undo("f.txt", History::Redo, 5);
        assert_eq!(done, 2);
        receive_all(&mut b, &frames);
        assert_eq!(a.text("f.txt").unwrap(), "ann2 0\nanBOBn1\n");
        assert_eq!(b.text("f.txt").unwrap(), a.text("f.txt").unwrap());
        // bob has nothing of his own in ann's edits to undo but his "BOB".
        let (done, frames) = b.undo("f.txt", History::Undo, 5);
        assert_eq!(done, 1);
        receive_all(&mut a, &frames);
        assert_eq!(a.text("f.txt").unwrap(), "ann2 0\nann1\n");
        // A file not linked has no history.
        assert_eq!(a.undo("other.txt", History::Undo, 1).0, 0);
    }

    #[test]
    fn undo_leaves_the_editors_rewriting_of_line_breaks_alone() {
        let mut a = Replica::new();
        a.create("f.txt", "x\r\ny\n");
        a.link("f.txt");
        a.edit("f.txt", &[Splice::typed(0, 0, "typed ")]).unwrap();
        // The editor wrote the peer's CRLF as LF: the bridge follows it, in the same burst.
        let form = Splice {
            typed: false,
            ..Splice::typed(7, 1, "")
        };
        a.edit("f.txt", &[form]).unwrap();
        assert_eq!(a.text("f.txt").unwrap(), "typed x\ny\n");
        assert_eq!(a.undo("f.txt", History::Undo, 5).0, 1);
        assert_eq!(a.text("f.txt").unwrap(), "x\ny\n");
    }

    #[test]
    fn peers_changes_to_linked_files_arrive_as_utf16_deltas() {
        let (mut a, mut b) = (Replica::new(), Replica::new());
        a.create("main.py", "héllo 🎉\n");
        relay(&a, &mut b);
        assert_eq!(b.link("main.py").as_deref(), Some("héllo 🎉\n"));
        a.link("main.py");
        // After the emoji (2 UTF-16 units): index 8.
        a.edit(
            "main.py",
            &[Splice {
                index: 8,
                delete: 0,
                insert: "世".into(),
                typed: true,
            }],
        )
        .unwrap();
        assert!(
            a.take_remote_changes().is_empty(),
            "our own edits are not reported back"
        );
        relay(&a, &mut b);
        assert_eq!(b.text("main.py").as_deref(), Some("héllo 🎉世\n"));
        let changes = b.take_remote_changes();
        assert_eq!(
            changes,
            vec![(
                "main.py".to_string(),
                vec![Component::Retain(8), Component::Insert("世".into())]
            )]
        );
    }

    #[test]
    fn a_replaced_file_breaks_the_link() {
        let (mut a, mut b) = (Replica::new(), Replica::new());
        a.create("x.txt", "mine");
        a.link("x.txt");
        assert!(!a.link_broken("x.txt"));
        b.create("x.txt", "theirs");
        relay(&b, &mut a);
        // Concurrent creations: one of the two texts wins the map entry, everywhere.
        let winner = a.text("x.txt").unwrap();
        assert_eq!(a.link_broken("x.txt"), winner == "theirs");
    }

    /// Peers' deltas, applied in order to a mirror of the text, always give the replica's
    /// text: with concurrent edits, updates arriving out of order (held until their
    /// dependencies arrive), twice, merged, and whole-state syncs after reconnecting.
    #[test]
    fn remote_deltas_always_rebuild_the_text() {
        use crate::ot::tests::Rng;
        use crate::ot::Operation;
        use ropey::Rope;
        const PIECES: &[&str] = &["a", "é", "🎉", "👩\u{200d}💻", "世界", "\n", "\r\n", "xyz"];
        for seed in 0..300u64 {
            let mut rng = Rng::new(seed);
            let mut peers = [Replica::new(), Replica::new()];
            let mut b = Replica::new();
            let first = peers[0].create("f.txt", "start\n");
            b.receive(&first).unwrap();
            peers[1].receive(&first).unwrap();
            let mut mirror = Rope::from_str(&b.link("f.txt").unwrap());
            let mut queue: Vec<Vec<u8>> = Vec::new();
            for _ in 0..60 {
                let who = rng.below(2);
                let p = &mut peers[who];
                p.link("f.txt");
                let len = p
                    .text_ref("f.txt")
                    .map(|t| t.len(&p.doc().transact()))
                    .unwrap() as usize;
                let text: Vec<u16> = p.text("f.txt").unwrap().encode_utf16().collect();
                // A boundary that does not split a surrogate pair.
                let mut at = rng.below(len + 1);
                while at > 0 && at < len && (0xDC00..0xE000).contains(&text[at]) {
                    at -= 1;
                }
                let mut end = (at + rng.below(6)).min(len);
                while end < len && (0xDC00..0xE000).contains(&text[end]) {
                    end += 1;
                }
                let delete = if rng.below(3) == 0 { end - at } else { 0 };
                let insert = if delete == 0 || rng.below(2) == 0 {
                    PIECES[rng.below(PIECES.len())].to_string()
                } else {
                    String::new()
                };
                let frame = p
                    .edit(
                        "f.txt",
                        &[Splice {
                            index: at,
                            delete,
                            insert,
                            typed: true,
                        }],
                    )
                    .unwrap();
                queue.push(frame.clone());
                // Peers see each other's edits sometimes, so edits are concurrent or not.
                if rng.below(2) == 0 {
                    let (x, y) = peers.split_at_mut(1);
                    let (from, to) = if who == 0 {
                        (&x[0], &mut y[0])
                    } else {
                        (&y[0], &mut x[0])
                    };
                    relay(from, to);
                }
                // b gets some of the queued frames, in any order, some twice; or everything
                // the peers have at once (a sync after reconnecting).
                while !queue.is_empty() && rng.below(3) > 0 {
                    let i = rng.below(queue.len());
                    let frame = if rng.below(4) == 0 {
                        queue[i].clone()
                    } else {
                        queue.swap_remove(i)
                    };
                    b.receive(&frame).unwrap();
                }
                if rng.below(10) == 0 {
                    let from = &peers[rng.below(2)];
                    let update = from
                        .doc()
                        .transact()
                        .encode_state_as_update_v1(&Default::default());
                    b.receive(&update_frame(update)).unwrap();
                }
                for (_, components) in b.take_remote_changes() {
                    let op = Operation::from_utf16(&mirror, components).unwrap();
                    op.apply_to(&mut mirror).unwrap();
                }
                // b types too (its own edits are not reported; the mirror follows them).
                if rng.below(3) == 0 && mirror == b.text("f.txt").unwrap() {
                    let len = mirror.len_chars();
                    let at = rng.below(len + 1);
                    let index = mirror.char_to_utf16_cu(at);
                    let delete = if at < len && rng.below(2) == 0 {
                        mirror.char_to_utf16_cu(at + 1) - index
                    } else {
                        0
                    };
                    let frame = b
                        .edit(
                            "f.txt",
                            &[Splice {
                                index,
                                delete,
                                insert: "B".into(),
                                typed: true,
                            }],
                        )
                        .unwrap();
                    mirror = Rope::from_str(&b.text("f.txt").unwrap());
                    for p in peers.iter_mut() {
                        if rng.below(2) == 0 {
                            p.receive(&frame).unwrap();
                        }
                    }
                    if rng.below(2) == 0 {
                        for p in peers.iter_mut() {
                            relay(&b, p);
                        }
                    }
                }
                assert_eq!(
                    mirror.to_string(),
                    b.text("f.txt").unwrap(),
                    "seed {seed}: the deltas no longer describe the text"
                );
            }
        }
    }
}

/// A model of people moving lines, typing and undoing their own bursts on three replicas with
/// delays: whatever the order, no line is lost (a move re-inserts a copy; undoing and redoing
/// it never removes the last one).
#[cfg(test)]
mod undo_model {
    use super::*;
    use crate::ot::tests::Rng;
    use crate::shadow::Splice;

    fn sp(index: usize, delete: usize, insert: &str) -> Splice {
        Splice {
            index,
            delete,
            insert: insert.into(),
            typed: true,
        }
    }

    fn line_starts(t: &str) -> Vec<usize> {
        let u: Vec<u16> = t.encode_utf16().collect();
        let mut v = vec![0];
        for (i, c) in u.iter().enumerate() {
            if *c == b'\n' as u16 && i + 1 < u.len() {
                v.push(i + 1);
            }
        }
        v
    }

    #[test]
    fn moves_and_undo_bursts_never_lose_a_line() {
        for seed in 0..400u64 {
            let mut rng = Rng::new(seed);
            let mut r = [Replica::new(), Replica::new(), Replica::new()];
            let f = r[0].create("f", "«s0»\n«s1»\n«s2»\n");
            for x in &mut r[1..] {
                x.receive(&f).unwrap();
            }
            for x in &mut r {
                x.link("f");
            }
            let mut queue: Vec<(usize, Vec<u8>)> = Vec::new();
            let mut markers: Vec<String> = (0..3).map(|i| format!("«s{i}»")).collect();
            for step in 0..80 {
                let who = rng.below(3);
                let t = r[who].text("f").unwrap();
                let starts = line_starts(&t);
                let len = t.encode_utf16().count();
                let frames: Vec<Vec<u8>> = match rng.below(10) {
                    0..=2 => {
                        let m = format!("«m{step}»\n");
                        markers.push(m.trim().to_string());
                        let at = starts[rng.below(starts.len())];
                        vec![r[who].edit("f", &[sp(at, 0, &m)]).unwrap()]
                    }
                    3..=6 if starts.len() > 1 => {
                        let i = rng.below(starts.len());
                        let end = starts.get(i + 1).copied().unwrap_or(len);
                        let u: Vec<u16> = t.encode_utf16().collect();
                        let line = String::from_utf16(&u[starts[i]..end]).unwrap();
                        if !line.ends_with('\n') {
                            continue;
                        }
                        let to = starts[rng.below(starts.len())];
                        if to == starts[i] {
                            continue;
                        }
                        let n = end - starts[i];
                        let splices = if to < starts[i] {
                            vec![sp(to, 0, &line), sp(starts[i] + n, n, "")]
                        } else {
                            vec![sp(starts[i], n, ""), sp(to - n, 0, &line)]
                        };
                        vec![r[who].edit("f", &splices).unwrap()]
                    }
                    7..=8 => {
                        let k = 1 + rng.below(3);
                        let (done, mut fr) = r[who].undo("f", History::Undo, k);
                        // Others act meanwhile: deliver some.
                        for (to, frame) in std::mem::take(&mut queue) {
                            if rng.below(2) == 0 {
                                r[to].receive(&frame).unwrap();
                            } else {
                                queue.push((to, frame));
                            }
                        }
                        let (redone, fr2) = r[who].undo("f", History::Redo, done);
                        assert_eq!(redone, done, "seed {seed}");
                        fr.extend(fr2);
                        fr
                    }
                    _ => Vec::new(),
                };
                for frame in frames {
                    for to in 0..3 {
                        if to != who {
                            queue.push((to, frame.clone()));
                        }
                    }
                }
                for (to, frame) in std::mem::take(&mut queue) {
                    if rng.below(3) == 0 {
                        queue.push((to, frame));
                    } else {
                        r[to].receive(&frame).unwrap();
                    }
                }
                for x in &r {
                    x.take_remote_changes();
                }
            }
            for (to, frame) in std::mem::take(&mut queue) {
                r[to].receive(&frame).unwrap();
            }
            let t = r[0].text("f").unwrap();
            for x in &r {
                assert_eq!(x.text("f").unwrap(), t, "seed {seed}");
            }
            for m in &markers {
                assert!(t.contains(m.as_str()), "seed {seed}: {m} lost in {t:?}");
            }
        }
    }
}
