//! The documents the editor has open: `didOpen`, `didChange` (the user's edits into the room),
//! `didClose`, text the editor could not send as UTF-8, and the `applyEdit`s that bring the
//! editor what the room has (one at a time per document, the next when the previous is
//! answered or echoed).

use std::time::{Duration, Instant};

use ropey::Rope;
use tower_lsp::lsp_types::*;

use super::{tick_at, Document, Session, ToEditor};
use crate::encoding;
use crate::shadow::Shadow;
use crate::workspace::NotShared;

/// How long after a rejection that no `didChange` explained an edit is sent again, unchecked:
/// long enough for a completion preview's own `didChange` (if the user accepts) to come first.
const REJECTION_RETRY: Duration = Duration::from_secs(1);

impl Session {
    /// The editor's message about `uri` was not valid UTF-8: its text of that document can no
    /// longer be trusted, so the document stops being shared (until it is opened again), and
    /// the user is told which and why. Every other document goes on.
    pub(super) fn invalid_utf8(&mut self, method: &str, uri: Option<Url>) {
        let why = format!("your editor sent text that is not valid UTF-8 ({method})");
        let Some(uri) = uri else {
            self.show(
                MessageType::WARNING,
                format!("duet: {why}; it was read with replacement characters"),
            );
            return;
        };
        let Some(doc) = self.docs.get_mut(&uri) else {
            self.undecodable.insert(uri);
            return;
        };
        let Some(path) = doc.path.take() else {
            return;
        };
        doc.linked = false;
        if let Some(room) = self.room.as_mut() {
            if !self.docs.values().any(|d| d.path.as_ref() == Some(&path)) {
                room.replica.unlink(&path);
            }
        }
        self.show(
            MessageType::ERROR,
            format!(
                "duet: {path} is no longer shared: {why}. Your other files are still shared; \
                 fix the file's encoding and open it again to share it."
            ),
        );
    }

    pub(super) fn did_open(&mut self, params: DidOpenTextDocumentParams) {
        let item = params.text_document;
        let path = match self.workspace.relative_path(&item.uri) {
            Ok(_) if self.undecodable.remove(&item.uri) => {
                self.show(
                    MessageType::ERROR,
                    format!(
                        "duet: {} is not shared: your editor sent text that is not valid UTF-8",
                        item.uri
                    ),
                );
                None
            }
            Ok(path) => Some(path),
            Err(why) => {
                if self.room.is_some() && !matches!(why, NotShared::StatusFile) {
                    self.show(
                        MessageType::INFO,
                        format!("duet: {} is not shared: {why}", item.uri),
                    );
                }
                None
            }
        };
        if let Some(path) = &path {
            self.identifiers.set_document(path, &item.text);
        }
        self.docs.insert(
            item.uri.clone(),
            Document {
                path,
                language: item.language_id,
                shadow: Shadow::new(&item.text, item.version, self.encoding),
                linked: false,
                retry_at: None,
                undo_cursor: None,
                peers_when_settled: false,
            },
        );
        self.link(&item.uri);
    }

    pub(super) fn did_change(&mut self, params: DidChangeTextDocumentParams) {
        let uri = params.text_document.uri;
        let version = params.text_document.version;
        let Some(doc) = self.docs.get_mut(&uri) else {
            tracing::warn!(%uri, "didChange for a document that is not open");
            return;
        };
        doc.retry_at = None;
        // One change at a time, so that the identifier index can follow each in O(line): the
        // shadow processes a notification's changes one by one anyway.
        let mut splices = Vec::new();
        // Where the user last typed (not where an applied peer's edit was echoed).
        let mut typed_at = None;
        for change in &params.content_changes {
            let (first, old) = affected_lines(doc.shadow.text(), change);
            // Where the change's text will end, in chars of the text after it.
            let end = change.range.map(|range| {
                let (start, _) =
                    encoding::position_to_char(doc.shadow.text(), range.start, self.encoding);
                start + change.text.chars().count()
            });
            match doc
                .shadow
                .editor_changed(version, std::slice::from_ref(change))
            {
                Ok(local) => {
                    if local.clamped {
                        tracing::warn!(%uri, "didChange had positions out of range; clamped");
                    }
                    if local.echoes == 0 && !local.splices.is_empty() {
                        typed_at = end.or(typed_at);
                        doc.undo_cursor = None;
                        self.last_typed = Some(uri.clone());
                    }
                    splices.extend(local.splices);
                }
                Err(e) => {
                    tracing::warn!(%uri, error = %e, "didChange does not fit the shadow; resyncing");
                    self.resync(&uri);
                    self.send_next_edit(&uri);
                    return;
                }
            }
            if let Some(path) = &doc.path {
                let inserted_lines = change.text.matches('\n').count();
                let new = lines(doc.shadow.text(), first, first + inserted_lines);
                self.identifiers.edit_document(path, &old, &new);
            }
        }
        if let Some(path) = doc.path.clone() {
            if let (true, Some(room)) = (doc.linked && !splices.is_empty(), self.room.as_mut()) {
                if let Some(frame) = room.replica.edit(&path, &splices) {
                    room.connection.send(frame);
                }
                if !self.in_step(&uri) {
                    self.resync(&uri);
                }
            }
            if typed_at.is_some() {
                self.stop_following("you typed");
            }
            if !self.cursor_from_editor {
                // Editors without our plugin do not say where the cursor is: use where the
                // user just typed (the echo of a peer's edit is not the user's cursor).
                if let Some(end) = typed_at {
                    self.set_cursor(&uri, end, end);
                }
            }
        }
        self.send_next_edit(&uri);
    }

    pub(super) fn did_close(&mut self, params: DidCloseTextDocumentParams) {
        if let Some(doc) = self.docs.remove(&params.text_document.uri) {
            if let (Some(path), Some(room)) = (doc.path, self.room.as_mut()) {
                if !self.docs.values().any(|d| d.path.as_ref() == Some(&path)) {
                    room.replica.unlink(&path);
                }
            }
        }
    }

    /// The editor answered our `applyEdit` `id` for `uri` (or it failed, or timed out).
    pub(super) fn apply_edit_answered(&mut self, uri: &Url, id: u64, applied: bool) {
        if let Some(doc) = self.docs.get_mut(uri) {
            if let Err(e) = doc.shadow.apply_edit_answered(id, applied) {
                tracing::warn!(%uri, error = %e, "applyEdit answer left the shadow inconsistent");
                self.resync(uri);
            } else if doc.shadow.is_blocked() && doc.retry_at.is_none() {
                let at = Instant::now() + REJECTION_RETRY;
                doc.retry_at = Some(at);
                tick_at(&self.events, at);
            }
        }
        self.send_next_edit(uri);
    }

    /// Sends the next `applyEdit` for a document, if one is due.
    pub(super) fn send_next_edit(&mut self, uri: &Url) {
        let Some(doc) = self.docs.get_mut(uri) else {
            return;
        };
        if let Some(at) = doc.retry_at {
            if Instant::now() < at {
                return;
            }
            doc.retry_at = None;
            doc.shadow.retry_after_rejection();
        }
        let edit = match doc.shadow.next_apply_edit() {
            Ok(Some(edit)) => edit,
            Ok(None) => {
                if !doc.shadow.is_settled() {
                    return;
                }
                let peers = std::mem::take(&mut doc.peers_when_settled);
                if let Some(at) = doc.undo_cursor.take() {
                    self.show_cursor(uri, at);
                }
                if peers {
                    self.publish_peers();
                }
                return;
            }
            Err(e) => {
                tracing::warn!(%uri, error = %e, "cannot compute the next edit; resyncing");
                self.resync(uri);
                return;
            }
        };
        self.tell(ToEditor::ApplyEdit {
            uri: uri.clone(),
            edit,
        });
    }
}

/// The first line a change touches and the text of the lines it touches, before it applies.
fn affected_lines(text: &Rope, change: &TextDocumentContentChangeEvent) -> (usize, String) {
    match change.range {
        Some(range) => {
            let first = range.start.line as usize;
            (first, lines(text, first, range.end.line as usize))
        }
        None => (0, text.to_string()),
    }
}

/// Lines `first..=last` of `text` (clamped to the text).
fn lines(text: &Rope, first: usize, last: usize) -> String {
    let count = text.len_lines();
    let first = first.min(count - 1);
    let last = last.clamp(first, count - 1);
    let start = text.line_to_char(first);
    let end = if last + 1 < count {
        text.line_to_char(last + 1)
    } else {
        text.len_chars()
    };
    text.slice(start..end).to_string()
}
