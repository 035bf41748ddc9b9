//! The bridge's replica of one open document in the editor: the editor-side half of duet's
//! "CRDT between machines, OT between editor and bridge" design.
//!
//! The editor is a replica we cannot change. It reports every change with `didChange` — the
//! user's typing *and* the echo of every edit we apply — and it may be typing while our
//! `workspace/applyEdit` is on its way. [`Shadow`] keeps, per document:
//!
//! - `shadow`: the editor's text as the `didChange` stream says it is;
//! - `crdt`: the CRDT's text as this bridge knows it;
//! - `pending`: the operation from the editor's text to the CRDT's text (the remote edits the
//!   editor has not applied yet);
//! - at most one `applyEdit` in flight: one contiguous edit, with the text the editor should
//!   have after it.
//!
//! It is a pure state machine — no I/O, no clock, no LSP transport, no CRDT library. The
//! session task feeds it events in the order they happened and carries out what it returns:
//!
//! | event                  | call                            | caller then                 |
//! |------------------------|---------------------------------|-----------------------------|
//! | `didChange`            | [`Shadow::editor_changed`]      | applies [`LocalEdits`]      |
//! | a remote Y.Text update | [`Shadow::remote_changed`]      |                             |
//! | (after any event)      | [`Shadow::next_apply_edit`]     | sends the `applyEdit`       |
//! | the `applyEdit` reply  | [`Shadow::apply_edit_answered`] |                             |
//!
//! How an echo is told from typing (the editors' behaviour is in `editors-*.md`):
//!
//! - Each content change is applied to the shadow on its own. If an edit is in flight and the
//!   change turns the shadow into exactly the expected text, it is the echo — whatever range
//!   the editor reported (Neovim re-derives it with a line diff).
//! - Editors also rewrite what we send, predictably: VS Code turns the line breaks we insert
//!   into the document's EOL, Neovim into LF. A change that produces one of those predicted
//!   texts is the echo too, and the difference to ours goes to the CRDT as the editor's own
//!   edit: its form wins. (Re-sending ours would be rewritten again, forever.)
//! - Neovim keeps a buffer's final line break outside its lines ('eol'): text we append after
//!   the last line gains a `\n`, and a final `\n` we delete stays. That break is the
//!   editor's, not the text's: the echo is recognised, the shadow leaves the break out from
//!   then on ([`Shadow::implicit_final_newline`]), and the editor's changes are read against
//!   its text with the break. (Adopting it put every keystroke a peer typed at the end of a
//!   file on a line of its own.)
//! - Anything else is the user's: it is transformed through `pending` into CRDT coordinates
//!   (remote text first where both insert at one place, so the user's cursor stays after
//!   what they typed), and `pending` is transformed past it.
//! - An edit in flight is then void: every editor checks the version we send (the last one we
//!   saw), and the user's change moved it on. If the editor had applied our edit before the
//!   user's change, the echo would have come first in the stream — also within one batched
//!   Neovim notification, whose changes are in the order they happened. So a non-echo change
//!   proves the edit was (or will be) rejected (VS Code, Helix: `applied: false`) or silently
//!   dropped (Neovim: `applied: true`!); its part of `pending` is sent again later.
//! - The one exception is an edit Neovim does not check: version 0 (Neovim's first version)
//!   or null. Neovim applies it whenever it arrives, at the positions we sent, onto whatever
//!   the user typed in the meantime: within one 150 ms batch the user's change comes first
//!   and the echo after it. Such an edit is kept as *displaced* rather than void: each later
//!   change is compared with the edit applied at its raw LSP positions to the current shadow;
//!   on a match, the editor's text is taken as it is and `pending` is rebuilt to undo the
//!   misplaced edit and redo it right. Nothing else is sent until the displaced edit is
//!   settled (its echo, or `applied: false`).
//! - `applied: true` is never trusted on its own. When it comes and no echo did (yet), the
//!   edit stays in flight: VS Code and Helix send the echo before the reply, Neovim after
//!   it (batched). The next change decides: the echo settles it, anything else voids it
//!   and the edit is re-sent.
//! - `applied: false` voids the edit. If no `didChange` came since it was sent, the editor's
//!   version moved without telling us (Helix's completion preview): nothing is re-sent until
//!   the next `didChange` (which tells the version), or until [`Shadow::retry_after_rejection`]
//!   (the session calls it after a quiet second) sends it unchecked, with version null — so a
//!   stale version is not hammered in a loop, and a user who stops typing after dismissing a
//!   completion still gets peers' edits.
//!
//! Limits:
//! - One applyEdit is one contiguous edit: the first hunk of `pending`, so the editor's
//!   cursors, marks and undo history around untouched text stay put. Many scattered remote
//!   edits take one round trip each.
//! - A user edit that produces exactly the text our in-flight edit would (the same text typed
//!   at the same place) is taken for the echo; the two are indistinguishable by design.
//! - A full-document `didChange` is diffed against the shadow (common prefix and suffix), so
//!   an ambiguous change (typing "a" into "aa") may be attributed to a neighbouring position;
//!   the resulting text is always right.
//! - The editor's rewriting of line breaks is adopted (see above): two editors that rewrite
//!   the same file's line breaks differently would keep rewriting each other's. Normalise
//!   line endings per room to avoid that. An adopted line break typed into a region a peer
//!   deleted at the same time survives, as concurrent typing would.
//! - A change that changes nothing, arriving while an edit that deletes the document's final
//!   line break is in flight, is taken for Neovim's echo of it (Neovim keeps that break): the
//!   break becomes implicit.
//! - A change at the end of a text with an implicit final break can be read two ways (the
//!   break still implicit, or now the text's own): the reading that changes the text less
//!   wins.
//! - An unchecked (version 0) edit that Neovim applies at stale positions damages the text
//!   the user sees until the repair arrives; what the user types into the damage stays.
//! - Helix's completion preview can revert a peer's edit without a `didChange` and then send
//!   the revert as the user's own change; the session must hold back `next_apply_edit` while
//!   a Helix completion session may be open (see `docs/design.md`).

use std::ops::Range as CharRange;

use ropey::Rope;
use thiserror::Error;
use tower_lsp::lsp_types::{
    DocumentChanges, OneOf, OptionalVersionedTextDocumentIdentifier, Range,
    TextDocumentContentChangeEvent, TextDocumentEdit, TextEdit, Url, WorkspaceEdit,
};

use crate::encoding::{self, Clamped, PositionEncoding};
use crate::ot::{Component, Edit, OpError, Operation, Tie};

/// Why the shadow cannot go on; the remedy for both is [`Shadow::resync`] with the CRDT's text.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ShadowError {
    /// A remote operation does not fit the CRDT text the shadow holds: an update was lost or
    /// converted with the wrong text.
    #[error("remote edit expects a CRDT text of {expected} chars but the shadow holds {actual}; resync the document from the CRDT")]
    RemoteMismatch { expected: usize, actual: usize },
    /// An internal operation did not fit: the shadow lost track of the texts (a bug).
    #[error(
        "the editor shadow lost track of the document ({0}); resync the document from the CRDT"
    )]
    Desync(#[from] OpError),
}

/// One splice of the CRDT text, counted in UTF-16 code units as Yjs counts them: delete
/// `delete` units at `index`, then insert `insert` there. A list of splices applies in order,
/// each to the text the previous ones left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Splice {
    pub index: usize,
    pub delete: usize,
    pub insert: String,
    /// The user's own edit, which their undo undoes; not the editor's rewriting of ours (its
    /// line breaks), which only follows the editor.
    pub typed: bool,
}

#[cfg(test)]
impl Splice {
    /// The user's own edit: delete `delete` chars at `index`, then insert `insert` there.
    pub(crate) fn typed(index: usize, delete: usize, insert: &str) -> Splice {
        Splice {
            index,
            delete,
            insert: insert.into(),
            typed: true,
        }
    }
}

/// What one `didChange` meant for the CRDT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalEdits {
    /// The user's own edits (and any adopted editor normalisation), as one operation on the
    /// CRDT text as it was before the notification, in chars. A no-op if the notification
    /// was only the echo of our edit.
    pub op: Operation,
    /// The same edits as UTF-16 splices, in the order to apply them to the Y.Text.
    pub splices: Vec<Splice>,
    /// Some range was out of the document or inside a character and was clamped: worth a log
    /// line, and a hint that the editor and the shadow may disagree.
    pub clamped: bool,
    /// How many content changes were recognised as the echo of our own edit.
    pub echoes: usize,
}

impl LocalEdits {
    /// True if nothing needs to go to the CRDT.
    pub fn is_empty(&self) -> bool {
        self.splices.is_empty()
    }
}

/// A `workspace/applyEdit` to send: one contiguous edit of the editor's text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyEdit {
    /// Pass back to [`Shadow::apply_edit_answered`] with the reply.
    pub id: u64,
    /// The document version to send: the last one the editor reported; `None` (null, not
    /// checked by the editor) only after a rejection that no `didChange` explained, when the
    /// editor's version is unknown (see [`Shadow::retry_after_rejection`]).
    pub version: Option<i32>,
    /// The range to replace, in the negotiated position encoding.
    pub range: Range,
    pub new_text: String,
    /// The same range in chars of [`Shadow::text`].
    pub chars: CharRange<usize>,
}

impl ApplyEdit {
    fn text_edit(&self) -> TextEdit {
        TextEdit::new(self.range, self.new_text.clone())
    }

    /// The `WorkspaceEdit` for `workspace/applyEdit`: one versioned `TextDocumentEdit` with
    /// one `TextEdit`, so that every editor checks the version and echoes a single change.
    pub fn workspace_edit(&self, uri: Url) -> WorkspaceEdit {
        WorkspaceEdit {
            document_changes: Some(DocumentChanges::Edits(vec![TextDocumentEdit {
                text_document: OptionalVersionedTextDocumentIdentifier {
                    uri,
                    version: self.version,
                },
                edits: vec![OneOf::Left(self.text_edit())],
            }])),
            ..WorkspaceEdit::default()
        }
    }
}

/// Where the in-flight edit stands.
#[derive(Debug, Clone)]
enum Flight {
    /// Sent, and the editor has reported nothing since: its next change should be the echo,
    /// turning `shadow` into `expected` by `op`. `pending` is then from `expected` to the CRDT.
    Sent {
        edit: Edit,
        /// The change as the CRDT placed it, before `addressable` moved it for sending.
        placed: Operation,
        expected: Rope,
    },
    /// The user changed the text before the echo came, but the edit went out with a version
    /// the editor does not check (0), so it may still be applied at its raw positions.
    /// `pending` is from `shadow` to the CRDT and does not count this edit as done.
    Displaced,
}

#[derive(Debug, Clone)]
struct InFlight {
    id: u64,
    version: Option<i32>,
    range: Range,
    new_text: String,
    state: Flight,
}

impl InFlight {
    /// Editors skip their staleness check for null, and Neovim also for version 0.
    fn unchecked(&self) -> bool {
        self.version.is_none_or(|v| v <= 0)
    }
}

/// The editor's replica of one document; see the module docs.
#[derive(Debug, Clone)]
pub struct Shadow {
    encoding: PositionEncoding,
    shadow: Rope,
    crdt: Rope,
    /// From `shadow` (or, while an edit is [`Flight::Sent`], from its expected text) to `crdt`.
    pending: Operation,
    in_flight: Option<InFlight>,
    version: i32,
    next_id: u64,
    /// An edit was rejected and no `didChange` came since: don't resend yet.
    blocked_by_rejection: bool,
    /// The next edit goes out unchecked (see [`Shadow::retry_after_rejection`]).
    unchecked_retry: bool,
    /// The text when the editor last asked for completions (Helix: see
    /// [`Shadow::completion_requested`]), and our edits it applied since, as one operation
    /// from that text to the shadow; until the user's next change.
    completion_base: Option<(Rope, Operation)>,
    /// The editor shows one line break more at the end than the document has: Neovim keeps a
    /// buffer's final line break outside its lines ('eol') and adds one when text is appended
    /// after the last line. That break belongs to the editor's file format, not to the text:
    /// `shadow` leaves it out, and it never reaches the CRDT.
    implicit_final_newline: bool,
}

impl Shadow {
    /// A document just opened: the editor's text, equal to the CRDT's text, at `version`.
    /// (If they differ, open with the editor's text and call [`Shadow::resync`] with the
    /// CRDT's.)
    pub fn new(text: &str, version: i32, encoding: PositionEncoding) -> Self {
        let rope = Rope::from_str(text);
        Shadow {
            encoding,
            pending: Operation::identity(rope.len_chars()),
            crdt: rope.clone(),
            shadow: rope,
            in_flight: None,
            version,
            next_id: 1,
            blocked_by_rejection: false,
            unchecked_retry: false,
            implicit_final_newline: false,
            completion_base: None,
        }
    }

    /// The editor's text as its `didChange` stream says it is (without an implicit final line
    /// break, see [`Shadow::implicit_final_newline`]).
    pub fn text(&self) -> &Rope {
        &self.shadow
    }

    /// True when the editor shows a line break at the end that the text does not have
    /// (Neovim's 'eol'): the editor's text is [`Shadow::text`] followed by `\n`.
    #[cfg(test)]
    fn implicit_final_newline(&self) -> bool {
        self.implicit_final_newline
    }

    /// The CRDT's text as this bridge knows it (the shadow with `pending` applied). Use it to
    /// convert a remote update's UTF-16 offsets into chars before [`Shadow::remote_changed`].
    pub fn crdt_text(&self) -> &Rope {
        &self.crdt
    }

    /// The last document version the editor reported.
    #[cfg(test)]
    fn version(&self) -> i32 {
        self.version
    }

    /// True if the editor has everything: nothing pending, nothing in flight.
    pub fn is_settled(&self) -> bool {
        self.in_flight.is_none() && self.pending.is_noop()
    }

    /// True if an applyEdit is out and not yet settled by its echo or a rejection.
    #[cfg(test)]
    fn has_in_flight(&self) -> bool {
        self.in_flight.is_some()
    }

    /// The editor reported changes (one `didChange`: its version and its content changes, in
    /// order). Returns what the user did, for the CRDT.
    pub fn editor_changed(
        &mut self,
        version: i32,
        changes: &[TextDocumentContentChangeEvent],
    ) -> Result<LocalEdits, ShadowError> {
        let mut out = LocalEdits {
            op: Operation::identity(self.crdt.len_chars()),
            splices: Vec::new(),
            clamped: false,
            echoes: 0,
        };
        for change in changes {
            let (op, clamped, implicit_final_newline) = self.change_to_op(change)?;
            self.implicit_final_newline = implicit_final_newline;
            out.clamped |= clamped.is_yes();
            // Our edits' echoes leave the text saved for a completion as it was.
            let restored = match &self.completion_base {
                Some((base, since)) if version > self.version + 1 && !since.is_noop() => {
                    Some((base.clone(), since.clone()))
                        .filter(|(base, _)| self.went_back_to(base, &op).unwrap_or(false))
                }
                _ => None,
            };
            match restored {
                Some((base, since)) => {
                    self.completion_base = None;
                    self.editor_restored(&base, &since, op, &mut out)?;
                }
                None => {
                    let echoes = out.echoes;
                    self.process_change(op, &mut out)?;
                    if out.echoes == echoes {
                        self.completion_base = None;
                    }
                }
            }
        }
        if version < self.version {
            tracing::warn!(
                last = self.version,
                got = version,
                "editor document version went backwards"
            );
        }
        self.version = version;
        self.blocked_by_rejection = false;
        self.unchecked_retry = false;
        Ok(out)
    }

    /// Helix asked for completions: it saves its text now and restores it, without a
    /// `didChange`, when the user previews an item (the version moves on, unsent). Peers' edits
    /// applied meanwhile vanish from the editor, and the `didChange` that accepts the item
    /// deletes them along with inserting it. The next `didChange` tells: a version that jumped
    /// and a change that spans what was applied since mean the editor went back to this text;
    /// the peers' edits are then sent again, and only the user's completion goes to the CRDT.
    /// However long the menu stays open.
    pub fn completion_requested(&mut self) {
        let len = self.shadow.len_chars();
        self.completion_base = Some((self.shadow.clone(), Operation::identity(len)));
    }

    /// Someone else's edit reached the CRDT: `op` applies to [`Shadow::crdt_text`], in chars.
    pub fn remote_changed(&mut self, op: &Operation) -> Result<(), ShadowError> {
        if op.base_len() != self.crdt.len_chars() {
            return Err(ShadowError::RemoteMismatch {
                expected: op.base_len(),
                actual: self.crdt.len_chars(),
            });
        }
        op.apply_to(&mut self.crdt)?;
        self.pending = self.pending.compose(op)?;
        Ok(())
    }

    /// Someone else's edit reached the CRDT, as the CRDT counts it: UTF-16 components on
    /// [`Shadow::crdt_text`].
    pub fn remote_changed_utf16(&mut self, components: Vec<Component>) -> Result<(), ShadowError> {
        let op = Operation::from_utf16(&self.crdt, components)?;
        self.remote_changed(&op)
    }

    /// The CRDT's text became `text` (a document joining a room that has its file already):
    /// the difference reaches the editor like a peer's edit.
    pub fn remote_replaced(&mut self, text: &str) -> Result<(), ShadowError> {
        let op = Operation::diff(&self.crdt, &Rope::from_str(text));
        self.remote_changed(&op)
    }

    /// The next `applyEdit` to send, if the editor lacks something and nothing is in flight:
    /// the first contiguous hunk of `pending`, at the last version seen. Marks it in flight.
    pub fn next_apply_edit(&mut self) -> Result<Option<ApplyEdit>, ShadowError> {
        if self.in_flight.is_some() || self.blocked_by_rejection || self.pending.is_noop() {
            return Ok(None);
        }
        self.take_implicit_newline_as_the_texts()?;
        self.pending = self.pending.simplify(&self.shadow)?;
        let Some((first, _, rest)) = self.pending.split_first_edit() else {
            return Ok(None);
        };
        let len = self.shadow.len_chars();
        // The hunk as the CRDT placed it: what goes back into `pending` if the edit is void.
        // The form sent may be moved (see `addressable`), which would change how it orders
        // against the user's concurrent typing at the same place.
        let placed = Operation::replace(len, first.start, first.end, &first.text)?;
        let edit = self.addressable(first);
        let op = Operation::replace(len, edit.start, edit.end, &edit.text)?;
        let expected = op.apply(&self.shadow)?;
        let (range, _) =
            encoding::chars_to_range(&self.shadow, edit.start..edit.end, self.encoding);
        let id = self.next_id;
        self.next_id += 1;
        let version = (!std::mem::take(&mut self.unchecked_retry)).then_some(self.version);
        self.in_flight = Some(InFlight {
            id,
            version,
            range,
            new_text: edit.text.clone(),
            state: Flight::Sent {
                edit: edit.clone(),
                placed,
                expected,
            },
        });
        // `rest` applies to the text the hunk produces, which `edit` produces too.
        self.pending = rest;
        Ok(Some(ApplyEdit {
            id,
            version,
            range,
            new_text: edit.text,
            chars: edit.start..edit.end,
        }))
    }

    /// The editor answered applyEdit `id`. Replies to edits already settled (by their echo, or
    /// voided by typing) are ignored. Also call it with `applied = false` when the request
    /// failed or timed out.
    pub fn apply_edit_answered(&mut self, id: u64, applied: bool) -> Result<(), ShadowError> {
        if applied || self.in_flight.as_ref().is_none_or(|f| f.id != id) {
            // `applied: true` is not trusted: only the echo proves it (Neovim says it for
            // edits it dropped, and sends the echo after the reply when batching). The next
            // change decides: the echo settles the edit, anything else voids it.
            return Ok(());
        }
        if let Some(InFlight {
            state: Flight::Sent { placed, .. },
            ..
        }) = self.in_flight.take()
        {
            // As placed by the CRDT, not as moved for sending: see `next_apply_edit`.
            self.pending = placed.compose(&self.pending)?;
            // Nothing came from the editor since we sent it, yet the version was stale.
            self.blocked_by_rejection = true;
        }
        Ok(())
    }

    /// True while a rejection that no `didChange` explained holds edits back.
    pub fn is_blocked(&self) -> bool {
        self.blocked_by_rejection
    }

    /// Re-sends after a rejection that no `didChange` explained (the session does it after a
    /// quiet second). The editor's version moved without telling us — Helix's completion
    /// preview, shown and dismissed — so the next edit goes out unchecked (version null):
    /// nothing came from the editor since, so its text is the shadow's, and if the user types
    /// before it lands, it is handled as a displaced edit.
    pub fn retry_after_rejection(&mut self) {
        if std::mem::take(&mut self.blocked_by_rejection) {
            self.unchecked_retry = true;
        }
    }

    /// Re-bases the shadow on the CRDT's full text, trusting the editor's `didChange` stream
    /// for the editor's side: `pending` becomes the difference, and the next applyEdits bring
    /// the editor there. An edit in flight stays in flight (its echo may still come).
    pub fn resync(&mut self, crdt_text: &str) {
        self.crdt = Rope::from_str(crdt_text);
        let base = match &self.in_flight {
            Some(InFlight {
                state: Flight::Sent { expected, .. },
                ..
            }) => expected,
            _ => &self.shadow,
        };
        self.pending = Operation::diff(base, &self.crdt);
    }

    // -----------------------------------------------------------------------------------------

    /// A content change as an operation on the shadow, whether its range was clamped, and
    /// whether the editor still shows an implicit final line break after it. A change without a
    /// range replaces the whole document and is diffed against the shadow.
    fn change_to_op(
        &self,
        change: &TextDocumentContentChangeEvent,
    ) -> Result<(Operation, Clamped, bool), ShadowError> {
        if !self.implicit_final_newline {
            let (op, clamped) = change_op(&self.shadow, change, self.encoding)?;
            return Ok((op, clamped, false));
        }
        // The editor's text is the shadow and the implicit break: the change applies there.
        let len = self.shadow.len_chars();
        let mut full = self.shadow.clone();
        full.insert(len, "\n");
        let (op, clamped) = change_op(&full, change, self.encoding)?;
        let edits = op.edits();
        if edits.last().is_none_or(|e| e.end <= len) {
            // The break stays as it was: the same edits apply to the shadow.
            return Ok((Operation::from_edits(len, &edits)?, clamped, true));
        }
        // The change reaches the break. The editor's new text either still ends with an
        // implicit break, or its last break is now the text's own: whichever changes the text
        // less (Neovim removes an emptied last line in a step of its own, after our edit
        // reached past its buffer; that step makes the break the text's own again).
        let after = op.apply(&full)?;
        let replace_end = |text: &Rope| -> Result<Operation, ShadowError> {
            // Everything before the first edit is unchanged.
            let start = edits[0].start.min(len).min(text.len_chars());
            let new = text.slice(start..).to_string();
            Ok(Operation::replace_trimmed(&self.shadow, start, len, &new)?)
        };
        let own = replace_end(&after)?;
        let n = after.len_chars();
        if n > 0 && after.char(n - 1) == '\n' {
            let implicit = replace_end(&after.slice(..n - 1).into())?;
            if implicit.changed_chars() <= own.changed_chars() {
                return Ok((implicit, clamped, true));
            }
        }
        Ok((own, clamped, false))
    }

    fn process_change(&mut self, op: Operation, out: &mut LocalEdits) -> Result<(), ShadowError> {
        let actual = op.apply(&self.shadow)?;

        // 1. The echo of our edit, as sent or displaced?
        if let Some(flight) = &self.in_flight {
            match &flight.state {
                Flight::Sent {
                    edit,
                    placed,
                    expected,
                } => {
                    let candidates = self.echo_candidates(edit);
                    if let Some(mut echo) = match_candidate(&self.shadow, &candidates, &actual)? {
                        let (expected, placed) = (expected.clone(), placed.clone());
                        let actual = self.leave_out_added_newline(&mut echo, actual);
                        // As the room placed it (the form sent may be moved: see
                        // `addressable`), unless the editor rewrote it.
                        let applied = if echo.exact {
                            placed
                        } else {
                            Operation::from_edits(
                                self.shadow.len_chars(),
                                std::slice::from_ref(&echo.edit),
                            )?
                        };
                        self.applied_since_completion(&applied)?;
                        self.shadow = expected;
                        self.in_flight = None;
                        out.echoes += 1;
                        return self.adopt_editor_form(&echo, actual, out);
                    }
                }
                Flight::Displaced => {
                    let (raw, _) =
                        encoding::range_to_chars(&self.shadow, flight.range, self.encoding);
                    let raw_edit = Edit::new(raw.start, raw.end, flight.new_text.clone());
                    let candidates = self.echo_candidates(&raw_edit);
                    if let Some(mut echo) = match_candidate(&self.shadow, &candidates, &actual)? {
                        // The editor applied our edit (in form `echo`) where the user's typing
                        // had moved the text. Take its text as it is; `pending` undoes the
                        // misplaced edit and redoes the remote changes where they belong.
                        // (No adoption of the editor's form here: that text is going away.)
                        let actual = self.leave_out_added_newline(&mut echo, actual);
                        let misplaced = Operation::from_edits(
                            self.shadow.len_chars(),
                            std::slice::from_ref(&echo.edit),
                        )?;
                        self.applied_since_completion(&misplaced)?;
                        let undo = misplaced.invert(&self.shadow)?;
                        self.pending = undo.compose(&self.pending)?.simplify(&actual)?;
                        self.shadow = actual;
                        self.in_flight = None;
                        out.echoes += 1;
                        return Ok(());
                    }
                }
            }
        }

        // 2. A change that changes nothing is no edit, and must not void our edit in flight.
        if op.simplify(&self.shadow)?.is_noop() {
            return Ok(());
        }

        // 3. The user's own edit.
        self.void_in_flight()?;
        self.local_edit(op, actual, true, out)
    }

    /// Whether the editor's change `op` is better explained as made on `base` (the editor went
    /// back to it, unsent) than on the text we knew: it changes less from there. Which
    /// characters a change spans cannot tell (an insertion next to the same text is reported a
    /// character off, a line diff pairs repeated lines as it likes); how much it changes can.
    fn went_back_to(&self, base: &Rope, op: &Operation) -> Result<bool, ShadowError> {
        let actual = op.apply(&self.shadow)?;
        Ok(Operation::diff(base, &actual).changed_chars() < op.changed_chars())
    }

    /// The editor went back to `base` without telling (Helix's completion preview) and then
    /// reported `op` on the text we knew: the edits applied since `base` are the editor's to
    /// receive again, and the user's own change is only what turns `base` into its text now.
    fn editor_restored(
        &mut self,
        base: &Rope,
        since: &Operation,
        op: Operation,
        out: &mut LocalEdits,
    ) -> Result<(), ShadowError> {
        let actual = op.apply(&self.shadow)?;
        self.void_in_flight()?;
        self.pending = since.compose(&self.pending)?;
        self.shadow = base.clone();
        let user = Operation::diff(base, &actual);
        self.local_edit(user, actual, true, out)
    }

    /// After an echo in the editor's form `echo`: for any but the exact one, the editor's form
    /// wins, as an edit of its own from the expected text (now the shadow) to what it reported
    /// (`actual`, without an added final line break). Re-sending ours would only be normalised
    /// again, forever.
    fn adopt_editor_form(
        &mut self,
        echo: &Echo,
        actual: Rope,
        out: &mut LocalEdits,
    ) -> Result<(), ShadowError> {
        if echo.exact {
            return Ok(());
        }
        let op = Operation::diff_line_breaks(&self.shadow, &actual);
        self.local_edit(op, actual, false, out)
    }

    /// An echo that added a final line break (Neovim appending after its last line, or keeping
    /// the break our edit deleted): the break is the editor's, implicit from now on, and left
    /// out of the echo's edit and of the text it produced.
    fn leave_out_added_newline(&mut self, echo: &mut Echo, mut actual: Rope) -> Rope {
        if echo.adds_newline {
            let n = actual.len_chars();
            actual.remove(n - 1..n);
            echo.edit.text.pop();
            self.implicit_final_newline = true;
        }
        actual
    }

    /// The room's text came to end with a line break where the editor shows its implicit one:
    /// that break is the text's own from now on. (Sending it would give the editor an empty
    /// last line more than the others show.)
    fn take_implicit_newline_as_the_texts(&mut self) -> Result<(), ShadowError> {
        let ends_with_break = |t: &Rope| t.len_chars() > 0 && t.char(t.len_chars() - 1) == '\n';
        if !self.implicit_final_newline
            || ends_with_break(&self.shadow)
            || !ends_with_break(&self.crdt)
        {
            return Ok(());
        }
        let len = self.shadow.len_chars();
        let mut with_break = self.shadow.clone();
        with_break.insert(len, "\n");
        let drop_break = Operation::replace(len + 1, len, len + 1, "")?;
        self.pending = drop_break.compose(&self.pending)?;
        self.shadow = with_break;
        self.implicit_final_newline = false;
        Ok(())
    }

    /// Our edit reached the editor (`applied`, on the shadow): while a completion may be open,
    /// it is one more edit the editor's restoring would take back.
    fn applied_since_completion(&mut self, applied: &Operation) -> Result<(), ShadowError> {
        if let Some((_, since)) = &mut self.completion_base {
            *since = since.compose(applied)?;
        }
        Ok(())
    }

    /// What an editor may make of our edit on the shadow, exact first:
    /// - as sent;
    /// - with the line breaks of the new text normalised to LF (Neovim always; VS Code in an
    ///   LF document) or to CRLF (VS Code in a CRLF document; Neovim with `fileformat=dos`);
    /// - for an edit reaching the end of a text that ends with `\n` (and no implicit break
    ///   yet), each of those followed by that `\n`: Neovim keeps the last line break outside
    ///   its buffer lines, so it survives the edit (or is appended after text inserted on the
    ///   empty last line).
    fn echo_candidates(&self, edit: &Edit) -> Vec<Echo> {
        let base = &self.shadow;
        let lf = edit.text.replace("\r\n", "\n").replace('\r', "\n");
        let crlf = lf.replace('\n', "\r\n");
        let mut texts = vec![edit.text.clone()];
        for t in [lf, crlf] {
            if !texts.contains(&t) {
                texts.push(t);
            }
        }
        let form = |i: usize, edit: Edit, adds_newline: bool| Echo {
            edit,
            exact: i == 0 && !adds_newline,
            adds_newline,
        };
        let mut out: Vec<Echo> = texts
            .iter()
            .enumerate()
            .map(|(i, t)| form(i, Edit::new(edit.start, edit.end, t.clone()), false))
            .collect();
        let len = base.len_chars();
        if !self.implicit_final_newline && edit.end == len && len > 0 && base.char(len - 1) == '\n'
        {
            out.extend(
                texts
                    .iter()
                    .enumerate()
                    .map(|(i, t)| form(i, Edit::new(edit.start, len, format!("{t}\n")), true)),
            );
        }
        out
    }

    /// A change that is not our echo: our edit in flight will not be applied (the editor's
    /// version moved on) unless it went out unchecked.
    fn void_in_flight(&mut self) -> Result<(), ShadowError> {
        let Some(mut flight) = self.in_flight.take() else {
            return Ok(());
        };
        if let Flight::Sent { placed, .. } = &flight.state {
            // `pending` goes back to starting from the shadow.
            self.pending = placed.compose(&self.pending)?;
            if flight.unchecked() {
                flight.state = Flight::Displaced;
                self.in_flight = Some(flight);
            }
        } else {
            self.in_flight = Some(flight);
        }
        Ok(())
    }

    /// Applies an editor edit `op` (on the shadow, producing `actual`) to the CRDT.
    fn local_edit(
        &mut self,
        op: Operation,
        actual: Rope,
        typed: bool,
        out: &mut LocalEdits,
    ) -> Result<(), ShadowError> {
        debug_assert!(!matches!(
            self.in_flight,
            Some(InFlight {
                state: Flight::Sent { .. },
                ..
            })
        ));
        // Remote text first where both insert at one place: it lands before the user's
        // insertion, so the user's cursor stays after what they typed.
        let (user, pending) = Operation::transform(&op, &self.pending, Tie::BFirst)?;
        for e in user.edits().iter().rev() {
            let index = self.crdt.char_to_utf16_cu(e.start);
            out.splices.push(Splice {
                index,
                delete: self.crdt.char_to_utf16_cu(e.end) - index,
                insert: e.text.clone(),
                typed,
            });
        }
        out.op = out.op.compose(&user)?;
        user.apply_to(&mut self.crdt)?;
        self.shadow = actual;
        self.pending = pending;
        Ok(())
    }

    /// Makes an edit of the shadow expressible in LSP and unambiguous to every editor:
    /// - a boundary between `\r` and `\n` has no LSP position: widen over the pair;
    /// - a range ending after the document's final line break, with a replacement ending in
    ///   that same break, ends before it instead (same resulting text): Neovim keeps the last
    ///   line break outside its buffer and mangles edits that reach past it.
    fn addressable(&self, mut e: Edit) -> Edit {
        let text = &self.shadow;
        if encoding::is_inside_crlf(text, e.start) {
            e.start -= 1;
            e.text.insert(0, '\r');
        }
        if encoding::is_inside_crlf(text, e.end) {
            e.end += 1;
            e.text.push('\n');
        }
        let len = text.len_chars();
        let final_break = if len >= 2 && text.slice(len - 2..) == "\r\n" {
            "\r\n"
        } else if len >= 1 && text.char(len - 1) == '\n' {
            "\n"
        } else if len >= 1 && text.char(len - 1) == '\r' {
            "\r"
        } else {
            ""
        };
        if e.end == len && !final_break.is_empty() && e.text.ends_with(final_break) {
            let k = final_break.chars().count();
            let start = e.start.min(len - k);
            let mut t: String = text.slice(start..e.start).to_string();
            t.push_str(&e.text[..e.text.len() - final_break.len()]);
            e = Edit::new(start, len - k, t);
        }
        e
    }
}

/// A content change as an operation on `base`, and whether its range was clamped.
fn change_op(
    base: &Rope,
    change: &TextDocumentContentChangeEvent,
    encoding: PositionEncoding,
) -> Result<(Operation, Clamped), ShadowError> {
    Ok(match change.range {
        Some(range) => {
            let (chars, clamped) = encoding::range_to_chars(base, range, encoding);
            let op = Operation::replace_trimmed(base, chars.start, chars.end, &change.text)?;
            (op, clamped)
        }
        None => (
            Operation::replace_trimmed(base, 0, base.len_chars(), &change.text)?,
            Clamped::No,
        ),
    })
}

/// One form in which an editor may echo our edit.
#[derive(Debug, Clone)]
struct Echo {
    /// The edit on the shadow that the editor's change amounts to.
    edit: Edit,
    /// Exactly as sent.
    exact: bool,
    /// With a line break added at the end, which the editor keeps implicit (Neovim).
    adds_newline: bool,
}

/// The first candidate that turns `base` into `actual`.
fn match_candidate(
    base: &Rope,
    candidates: &[Echo],
    actual: &Rope,
) -> Result<Option<Echo>, ShadowError> {
    for c in candidates {
        let e = &c.edit;
        // Lengths first: typing changes the length, so the full comparison is rare.
        if base.len_chars() - (e.end - e.start) + e.inserted_chars() != actual.len_chars() {
            continue;
        }
        let op = Operation::from_edits(base.len_chars(), std::slice::from_ref(e))?;
        if op.apply(base)? == *actual {
            return Ok(Some(c.clone()));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;
    use crate::ot::tests::Rng;
    use tower_lsp::lsp_types::Position;
    use PositionEncoding::{Utf16, Utf32, Utf8};

    fn ch(range: Option<Range>, text: &str) -> TextDocumentContentChangeEvent {
        TextDocumentContentChangeEvent {
            range,
            range_length: None,
            text: text.to_string(),
        }
    }

    fn lsp_range(a: (u32, u32), b: (u32, u32)) -> Range {
        Range::new(Position::new(a.0, a.1), Position::new(b.0, b.1))
    }

    /// The change an editor reports for replacing chars `start..end` of `before`.
    fn change_on(
        before: &str,
        start: usize,
        end: usize,
        text: &str,
        enc: PositionEncoding,
    ) -> TextDocumentContentChangeEvent {
        let (range, clamped) = encoding::chars_to_range(&Rope::from_str(before), start..end, enc);
        assert_eq!(clamped, Clamped::No);
        ch(Some(range), text)
    }

    /// The echo of our edit, reported exactly as sent (VS Code, Helix).
    fn echo(e: &ApplyEdit) -> TextDocumentContentChangeEvent {
        ch(Some(e.range), &e.new_text)
    }

    fn remote(s: &mut Shadow, start: usize, end: usize, text: &str) {
        let op = Operation::replace(s.crdt_text().len_chars(), start, end, text).unwrap();
        s.remote_changed(&op).unwrap();
    }

    /// Applies an applyEdit to an editor text the way a plain editor would.
    fn apply(text: &str, e: &ApplyEdit, enc: PositionEncoding) -> String {
        let mut r = Rope::from_str(text);
        let (chars, clamped) = encoding::range_to_chars(&r, e.range, enc);
        assert_eq!(clamped, Clamped::No, "we never send a clamped range");
        r.remove(chars.clone());
        r.insert(chars.start, &e.new_text);
        r.to_string()
    }

    fn apply_splices(text: &Rope, splices: &[Splice]) -> Rope {
        let mut r = text.clone();
        for sp in splices {
            let start = r.utf16_cu_to_char(sp.index);
            let end = r.utf16_cu_to_char(sp.index + sp.delete);
            r.remove(start..end);
            r.insert(start, &sp.insert);
        }
        r
    }

    #[test]
    fn typing_before_the_final_line_break_stays_before_a_voided_appended_line() {
        // A peer appends "tail\n" after the final line break; the user types at the end of
        // the last line while that edit is on its way. The edit is sent moved before the final
        // break ("\ntail"), but when it is void it must go back where the CRDT put it: after
        // the break, so after what the user typed.
        let editor = "3\n";
        let mut s = Shadow::new(editor, 1, Utf16);
        remote(&mut s, 2, 2, "tail\n");
        let sent = s.next_apply_edit().unwrap().unwrap();
        assert_eq!(
            (sent.range, sent.new_text.as_str()),
            (lsp_range((0, 1), (0, 1)), "\ntail")
        );
        let typed = change_on(editor, 1, 1, "y", Utf16);
        s.editor_changed(2, &[typed]).unwrap();
        s.apply_edit_answered(sent.id, false).unwrap();
        let again = s.next_apply_edit().unwrap().unwrap();
        assert_eq!(apply("3y\n", &again, Utf16), "3y\ntail\n");
    }

    #[test]
    fn multi_cursor_typing_keeps_a_voided_appended_line_after_it() {
        let editor = "1🎉a\n2世b\n3\n";
        let mut s = Shadow::new(editor, 2, Utf16);
        let len = s.crdt_text().len_chars();
        remote(&mut s, len, len, "tail\n");
        let sent = s.next_apply_edit().unwrap().unwrap();
        let changes = [
            ch(Some(lsp_range((2, 1), (2, 1))), "y"),
            ch(Some(lsp_range((1, 2), (1, 2))), "x"),
            ch(Some(lsp_range((0, 0), (0, 1))), ""),
        ];
        for change in &changes {
            s.editor_changed(3, std::slice::from_ref(change)).unwrap();
        }
        s.apply_edit_answered(sent.id, false).unwrap();
        let again = s.next_apply_edit().unwrap().unwrap();
        assert_eq!(
            apply("🎉a\n2世xb\n3y\n", &again, Utf16),
            "🎉a\n2世xb\n3y\ntail\n"
        );
    }

    #[test]
    fn a_rejection_answered_before_the_typing_arrives_keeps_the_appended_line_after_it() {
        // The reply and the didChange travel different paths inside the bridge: the
        // rejection may be handled first.
        let mut s = Shadow::new("a\n", 1, Utf16);
        remote(&mut s, 2, 2, "b\n");
        let sent = s.next_apply_edit().unwrap().unwrap();
        s.apply_edit_answered(sent.id, false).unwrap();
        s.editor_changed(2, &[change_on("a\n", 1, 1, "X", Utf16)])
            .unwrap();
        let again = s.next_apply_edit().unwrap().unwrap();
        assert_eq!(apply("aX\n", &again, Utf16), "aX\nb\n");
    }

    fn assert_converged(s: &Shadow, editor: &str) {
        assert!(s.is_settled(), "not settled");
        assert_eq!(s.text().to_string(), editor);
        assert_eq!(s.crdt_text().to_string(), editor);
    }

    #[test]
    fn echo_before_reply_is_recognised_not_forwarded() {
        // VS Code and Helix: the echo didChange arrives before the `applied: true` reply.
        let mut s = Shadow::new("hello", 1, Utf16);
        remote(&mut s, 5, 5, " 🎉world");
        let e = s.next_apply_edit().unwrap().unwrap();
        assert_eq!((e.version, e.new_text.as_str()), (Some(1), " 🎉world"));
        assert!(
            s.next_apply_edit().unwrap().is_none(),
            "one edit in flight at most"
        );
        let le = s.editor_changed(2, &[echo(&e)]).unwrap();
        assert_eq!(le.echoes, 1);
        assert!(le.is_empty() && le.op.is_noop());
        s.apply_edit_answered(e.id, true).unwrap();
        assert_converged(&s, "hello 🎉world");
    }

    #[test]
    fn stale_apply_edit_is_resent_after_typing() {
        // VS Code: the user typed before our edit arrived; it is rejected with applied:false
        // (after the user's didChange) and must be re-sent from pending at the new version.
        let mut s = Shadow::new("abc", 1, Utf16);
        remote(&mut s, 3, 3, "X");
        let e1 = s.next_apply_edit().unwrap().unwrap();
        let le = s
            .editor_changed(2, &[change_on("abc", 0, 0, "Z", Utf16)])
            .unwrap();
        assert_eq!(le.echoes, 0);
        assert_eq!(
            le.splices,
            vec![Splice {
                index: 0,
                delete: 0,
                insert: "Z".into(),
                typed: true
            }]
        );
        assert_eq!(s.crdt_text().to_string(), "ZabcX");
        s.apply_edit_answered(e1.id, false).unwrap();
        let e2 = s.next_apply_edit().unwrap().expect("re-sent");
        assert_eq!((e2.version, e2.chars.clone()), (Some(2), 4..4));
        let editor = apply("Zabc", &e2, Utf16);
        s.editor_changed(3, &[echo(&e2)]).unwrap();
        s.apply_edit_answered(e2.id, true).unwrap();
        assert_converged(&s, &editor);
        assert_eq!(editor, "ZabcX");
    }

    #[test]
    fn rejection_without_a_didchange_waits_for_the_next_one() {
        // Helix's completion preview bumps the version without a didChange: a rejected edit
        // is not re-sent in a loop at the same stale version; a retry goes out unchecked.
        let mut s = Shadow::new("abc", 5, Utf8);
        remote(&mut s, 0, 0, "X");
        let e1 = s.next_apply_edit().unwrap().unwrap();
        s.apply_edit_answered(e1.id, false).unwrap();
        assert!(s.next_apply_edit().unwrap().is_none());
        s.retry_after_rejection();
        let e2 = s.next_apply_edit().unwrap().expect("retry allowed");
        assert_eq!(
            e2.version, None,
            "the version is unknown: the retry goes out unchecked"
        );
        s.apply_edit_answered(e2.id, false).unwrap();
        assert!(s.next_apply_edit().unwrap().is_none());
        s.editor_changed(9, &[change_on("abc", 3, 3, "d", Utf8)])
            .unwrap();
        let e3 = s.next_apply_edit().unwrap().expect("a didChange unblocks");
        assert_eq!(e3.version, Some(9));
    }

    #[test]
    fn applied_true_without_echo_is_void_and_resent() {
        // Neovim: our edit was stale (the user's typing is still in the 150 ms batch), so it
        // was silently dropped — and answered applied:true, before the batch arrived.
        let mut s = Shadow::new("abc", 3, Utf8);
        remote(&mut s, 3, 3, "X");
        let e1 = s.next_apply_edit().unwrap().unwrap();
        s.apply_edit_answered(e1.id, true).unwrap();
        assert!(s.has_in_flight(), "applied:true alone proves nothing");
        assert!(s.next_apply_edit().unwrap().is_none());
        let le = s
            .editor_changed(4, &[change_on("abc", 0, 0, "Z", Utf8)])
            .unwrap();
        assert_eq!(le.echoes, 0);
        assert!(!s.has_in_flight());
        let e2 = s.next_apply_edit().unwrap().expect("re-sent");
        assert_eq!((e2.version, e2.chars.clone()), (Some(4), 4..4));
        s.editor_changed(5, &[echo(&e2)]).unwrap();
        assert_converged(&s, "ZabcX");
    }

    #[test]
    fn line_diff_echo_is_recognised_by_its_resulting_text() {
        // Neovim re-derives the echo's range with a line diff: here the whole line.
        let mut s = Shadow::new("one\ntwo\nthree\n", 3, Utf32);
        remote(&mut s, 4, 7, "TWO!");
        let e = s.next_apply_edit().unwrap().unwrap();
        let le = s
            .editor_changed(4, &[ch(Some(lsp_range((1, 0), (2, 0))), "TWO!\n")])
            .unwrap();
        assert_eq!(le.echoes, 1);
        assert!(le.is_empty());
        s.apply_edit_answered(e.id, true).unwrap();
        assert_converged(&s, "one\nTWO!\nthree\n");
    }

    #[test]
    fn batch_with_echo_then_typing_splits_correctly() {
        // Neovim batching: our edit was applied, then the user typed; one notification.
        let mut s = Shadow::new("ab\n", 2, Utf8);
        remote(&mut s, 1, 1, "é");
        let e = s.next_apply_edit().unwrap().unwrap();
        s.apply_edit_answered(e.id, true).unwrap();
        let changes = [
            ch(Some(lsp_range((0, 0), (1, 0))), "aéb\n"),
            change_on("aéb\n", 3, 3, "Z", Utf8),
        ];
        let le = s.editor_changed(4, &changes).unwrap();
        assert_eq!(le.echoes, 1);
        assert_eq!(le.splices.len(), 1);
        assert_converged(&s, "aébZ\n");
    }

    #[test]
    fn unchecked_edit_applied_after_typing_is_repaired() {
        // Neovim does not check version 0: the user's typing (batched) came first, then our
        // edit landed at its raw position in the moved text; both in one notification.
        let mut s = Shadow::new("hello world\n", 0, Utf32);
        remote(&mut s, 6, 6, "<r1>");
        let e = s.next_apply_edit().unwrap().unwrap();
        assert_eq!(e.version, Some(0));
        let typed = "abc hello world\n";
        let garbled = apply(typed, &e, Utf32);
        assert_eq!(garbled, "abc he<r1>llo world\n");
        let changes = [
            change_on("hello world\n", 0, 0, "abc ", Utf32),
            change_on(typed, 6, 6, "<r1>", Utf32),
        ];
        s.apply_edit_answered(e.id, true).unwrap();
        let le = s.editor_changed(2, &changes).unwrap();
        assert_eq!(
            le.echoes, 1,
            "the displaced application is ours, not the user's"
        );
        assert_eq!(s.crdt_text().to_string(), "abc hello <r1>world\n");
        let mut editor = garbled;
        let mut version = 2;
        while let Some(e) = s.next_apply_edit().unwrap() {
            editor = apply(&editor, &e, Utf32);
            version += 1;
            s.editor_changed(version, &[echo(&e)]).unwrap();
        }
        assert_converged(&s, "abc hello <r1>world\n");
        assert_eq!(editor, "abc hello <r1>world\n");
    }

    #[test]
    fn checked_edit_is_not_waited_for_after_typing() {
        // The same as above at version 3: Neovim checks it, so it is void at once.
        let mut s = Shadow::new("hello world\n", 3, Utf32);
        remote(&mut s, 6, 6, "<r1>");
        s.next_apply_edit().unwrap().unwrap();
        s.editor_changed(4, &[change_on("hello world\n", 0, 0, "abc ", Utf32)])
            .unwrap();
        let e = s.next_apply_edit().unwrap().expect("re-sent at once");
        assert_eq!((e.version, e.chars.clone()), (Some(4), 10..10));
    }

    #[test]
    fn version_gaps_are_normal() {
        // Helix: versions jump (completion previews are never sent); the echo is V+1.
        let mut s = Shadow::new("fn main() {}\n", 0, Utf8);
        s.editor_changed(4, &[change_on("fn main() {}\n", 11, 11, " ", Utf8)])
            .unwrap();
        remote(&mut s, 0, 0, "pub ");
        let e = s.next_apply_edit().unwrap().unwrap();
        assert_eq!(e.version, Some(4));
        s.editor_changed(5, &[echo(&e)]).unwrap();
        s.apply_edit_answered(e.id, true).unwrap();
        assert_converged(&s, "pub fn main() { }\n");
        s.editor_changed(9, &[change_on("pub fn main() { }\n", 0, 0, "// ", Utf8)])
            .unwrap();
        remote(&mut s, 0, 0, "!");
        assert_eq!(s.next_apply_edit().unwrap().unwrap().version, Some(9));
    }

    #[test]
    fn typing_while_remote_edit_in_flight_is_transformed() {
        let mut s = Shadow::new("0123456789", 1, Utf16);
        remote(&mut s, 2, 5, ""); // "0156789"
        remote(&mut s, 5, 5, "AB"); // "01567AB89"
        let e1 = s.next_apply_edit().unwrap().unwrap();
        assert_eq!(e1.chars, 2..5, "the first hunk only");
        let le = s
            .editor_changed(2, &[change_on("0123456789", 9, 9, "X", Utf16)])
            .unwrap();
        assert_eq!(le.splices[0].index, 8);
        assert_eq!(s.crdt_text().to_string(), "01567AB8X9");
        s.apply_edit_answered(e1.id, false).unwrap();
        let mut editor = "012345678X9".to_string();
        let mut version = 2;
        while let Some(e) = s.next_apply_edit().unwrap() {
            assert_eq!(e.version, Some(version));
            editor = apply(&editor, &e, Utf16);
            version += 1;
            s.editor_changed(version, &[echo(&e)]).unwrap();
        }
        assert_converged(&s, &editor);
        assert_eq!(editor, "01567AB8X9");
    }

    #[test]
    fn remote_text_goes_before_the_users_insert_at_the_same_place() {
        // The user's cursor is after what they typed; the remote text lands before it, so
        // when the editor applies it the cursor stays after the user's own text.
        let mut s = Shadow::new("ab", 1, Utf16);
        remote(&mut s, 1, 1, "R");
        s.editor_changed(2, &[change_on("ab", 1, 1, "U", Utf16)])
            .unwrap();
        assert_eq!(s.crdt_text().to_string(), "aRUb");
        let e = s.next_apply_edit().unwrap().unwrap();
        assert_eq!((e.chars.clone(), e.new_text.as_str()), (1..1, "R"));
    }

    #[test]
    fn full_document_change_is_diffed_not_last_writer_wins() {
        let mut s = Shadow::new("hello\n", 1, Utf16);
        remote(&mut s, 0, 0, "REMOTE ");
        let le = s.editor_changed(2, &[ch(None, "hello world\n")]).unwrap();
        assert_eq!(
            le.splices,
            vec![Splice {
                index: 12,
                delete: 0,
                insert: " world".into(),
                typed: true
            }]
        );
        assert_eq!(s.crdt_text().to_string(), "REMOTE hello world\n");
        let e = s.next_apply_edit().unwrap().unwrap();
        let editor = apply("hello world\n", &e, Utf16);
        // A full-sync client echoes with the full text too.
        s.editor_changed(3, &[ch(None, &editor)]).unwrap();
        assert_converged(&s, "REMOTE hello world\n");
    }

    #[test]
    fn out_of_range_changes_are_clamped_and_reported() {
        let mut s = Shadow::new("ab\ncd", 1, Utf16);
        let le = s
            .editor_changed(2, &[ch(Some(lsp_range((5, 0), (9, 9))), "X")])
            .unwrap();
        assert!(le.clamped);
        assert_eq!(s.text().to_string(), "ab\ncdX");
        let le = s
            .editor_changed(3, &[ch(Some(lsp_range((0, 99), (0, 1))), "Y")])
            .unwrap();
        assert!(le.clamped, "reversed and past the line end");
        assert_eq!(s.text().to_string(), "aY\ncdX");
        let mut s = Shadow::new("a🎉", 1, Utf16);
        let le = s
            .editor_changed(2, &[ch(Some(lsp_range((0, 2), (0, 2))), "Z")])
            .unwrap();
        assert!(le.clamped, "inside a surrogate pair");
        assert_eq!(s.text().to_string(), "aZ🎉");
        assert_eq!(s.crdt_text().to_string(), "aZ🎉");
    }

    #[test]
    fn edit_boundary_inside_crlf_is_widened() {
        let mut s = Shadow::new("a\r\nb", 1, Utf16);
        remote(&mut s, 2, 2, "X"); // between \r and \n: no LSP position
        let e = s.next_apply_edit().unwrap().unwrap();
        assert_eq!((e.chars.clone(), e.new_text.as_str()), (1..3, "\rX\n"));
        assert_eq!(e.range, lsp_range((0, 1), (1, 0)));
        let editor = apply("a\r\nb", &e, Utf16);
        s.editor_changed(2, &[echo(&e)]).unwrap();
        assert_converged(&s, &editor);
        assert_eq!(editor, "a\rX\nb");
    }

    #[test]
    fn insert_after_the_final_line_break_is_sent_before_it() {
        let mut s = Shadow::new("a\n", 1, Utf16);
        remote(&mut s, 2, 2, "b\n");
        let e = s.next_apply_edit().unwrap().unwrap();
        assert_eq!(
            (e.range, e.new_text.as_str()),
            (lsp_range((0, 1), (0, 1)), "\nb")
        );
        s.editor_changed(2, &[echo(&e)]).unwrap();
        assert_converged(&s, "a\nb\n");
    }

    #[test]
    fn normalised_line_breaks_are_adopted_not_resent() {
        // VS Code normalises inserted line breaks to the document's EOL (LF here).
        let mut s = Shadow::new("a\nb", 1, Utf16);
        remote(&mut s, 1, 1, "x\r\ny");
        let e = s.next_apply_edit().unwrap().unwrap();
        let le = s.editor_changed(2, &[ch(Some(e.range), "x\ny")]).unwrap();
        assert_eq!(le.echoes, 1);
        assert!(!le.is_empty(), "the editor's form goes to the CRDT");
        assert_converged(&s, "ax\ny\nb");
        // A lone CR before an existing LF becomes an extra line in an LF editor.
        let mut s = Shadow::new("a\nb", 1, Utf16);
        remote(&mut s, 1, 1, "x\r");
        let e = s.next_apply_edit().unwrap().unwrap();
        s.editor_changed(2, &[ch(Some(e.range), "x\n")]).unwrap();
        assert!(s.next_apply_edit().unwrap().is_none(), "nothing to re-send");
        assert_converged(&s, "ax\n\nb");
    }

    #[test]
    fn neovims_final_line_break_stays_out_of_the_text() {
        // A peer types "ab" at the very end of "x\n", one character at a time. Neovim appends
        // text sent for the empty last line as a new line with its own implicit "\n": that
        // break is Neovim's, not the room's (every keystroke used to land on a line of its own).
        let mut s = Shadow::new("x\n", 1, Utf8);
        remote(&mut s, 2, 2, "a");
        let e = s.next_apply_edit().unwrap().unwrap();
        assert_eq!(e.range, lsp_range((1, 0), (1, 0)));
        let le = s
            .editor_changed(2, &[ch(Some(lsp_range((1, 0), (1, 0))), "a\n")])
            .unwrap();
        assert_eq!((le.echoes, le.is_empty()), (1, true), "{le:?}");
        assert!(s.implicit_final_newline());
        assert_converged(&s, "x\na");
        remote(&mut s, 3, 3, "b");
        let e = s.next_apply_edit().unwrap().unwrap();
        assert_eq!(e.range, lsp_range((1, 1), (1, 1)));
        let le = s.editor_changed(3, &[echo(&e)]).unwrap();
        assert_eq!((le.echoes, le.is_empty()), (1, true), "{le:?}");
        assert_converged(&s, "x\nab");
        // The Neovim user types at the end of the last line, and opens a line below it: Neovim
        // reports the new line after its implicit break ("x\nab\n" + "c\n").
        let le = s
            .editor_changed(4, &[ch(Some(lsp_range((1, 2), (1, 2))), "!")])
            .unwrap();
        assert_eq!(
            le.splices,
            vec![Splice {
                index: 4,
                delete: 0,
                insert: "!".into(),
                typed: true
            }]
        );
        let le = s
            .editor_changed(5, &[ch(Some(lsp_range((2, 0), (2, 0))), "c\n")])
            .unwrap();
        assert_eq!(
            le.splices,
            vec![Splice {
                index: 5,
                delete: 0,
                insert: "\nc".into(),
                typed: true
            }]
        );
        assert_converged(&s, "x\nab!\nc");
        // Deleting the last line (`dd`): the line before it keeps its implicit break.
        let le = s
            .editor_changed(6, &[ch(Some(lsp_range((1, 3), (2, 1))), "")])
            .unwrap();
        assert_eq!(
            le.splices,
            vec![Splice {
                index: 5,
                delete: 2,
                insert: String::new(),
                typed: true
            }]
        );
        assert_converged(&s, "x\nab!");
        assert!(s.implicit_final_newline());
        // A full-document change keeps it too; one without the break ends it (`:set noeol`).
        s.editor_changed(7, &[ch(None, "x\nab!\n")]).unwrap();
        assert_converged(&s, "x\nab!");
        s.editor_changed(8, &[ch(None, "x\nab!")]).unwrap();
        assert!(!s.implicit_final_newline());
        assert_converged(&s, "x\nab!");
    }

    #[test]
    fn a_peers_final_line_break_is_the_one_neovim_shows_already() {
        // "x\na" in the room, shown by Neovim as lines {"x", "a"} with its implicit break. A
        // peer ends the text with a line break: Neovim shows it already, so nothing is sent
        // (Neovim would show an empty line more than the others).
        let mut s = Shadow::new("x\n", 1, Utf8);
        remote(&mut s, 2, 2, "a");
        let e = s.next_apply_edit().unwrap().unwrap();
        s.editor_changed(2, &[ch(Some(e.range), "a\n")]).unwrap();
        assert!(s.implicit_final_newline());
        remote(&mut s, 3, 3, "\n");
        assert_eq!(s.next_apply_edit().unwrap(), None);
        assert!(!s.implicit_final_newline());
        assert_converged(&s, "x\na\n");
        // Text and a break together: the text goes before the break Neovim shows.
        remote(&mut s, 4, 4, "b");
        let e = s.next_apply_edit().unwrap().unwrap();
        s.editor_changed(3, &[ch(Some(e.range), "b\n")]).unwrap();
        remote(&mut s, 5, 5, "c\n");
        let e = s.next_apply_edit().unwrap().unwrap();
        assert_eq!(
            (e.range, e.new_text.as_str()),
            (lsp_range((2, 1), (2, 1)), "c")
        );
        s.editor_changed(4, &[echo(&e)]).unwrap();
        assert!(!s.implicit_final_newline());
        assert_converged(&s, "x\na\nbc\n");
    }

    #[test]
    fn a_deleted_final_line_break_that_neovim_keeps_stays_deleted() {
        // The room's text lost its final "\n" (or never had it: joining such a room). Neovim
        // keeps the break and reports a change that changes nothing: the room keeps its text.
        let mut s = Shadow::new("x = 1\n", 1, Utf8);
        remote(&mut s, 5, 6, "");
        let e = s.next_apply_edit().unwrap().unwrap();
        let le = s.editor_changed(2, &[ch(Some(e.range), "\n")]).unwrap();
        assert_eq!((le.echoes, le.is_empty()), (1, true), "{le:?}");
        assert!(s.implicit_final_newline());
        assert_converged(&s, "x = 1");
    }

    /// Drives a Helix-like editor: applies and echoes every edit the bridge sends.
    fn settle_helix(s: &mut Shadow, editor: &mut String, version: &mut i32) {
        while let Some(e) = s.next_apply_edit().unwrap() {
            *editor = apply(editor, &e, Utf16);
            *version += 1;
            s.editor_changed(*version, &[echo(&e)]).unwrap();
            s.apply_edit_answered(e.id, true).unwrap();
        }
    }

    /// Helix's completion preview revert: completion requested on `base`; `peers` edit it
    /// (chars of the CRDT text, in order) and the edits reach Helix while the menu is open; the
    /// user previews (Helix restores `base`, version +2, unsent) and accepts, which Helix sends
    /// as one change from what we knew to `accepted`. Returns what went to the room, and the
    /// text everyone has once the bridge has sent Helix the peers' edits again.
    fn helix_completion_revert(
        base: &str,
        peers: &[(usize, usize, &str)],
        accepted: &str,
    ) -> (LocalEdits, String) {
        let (mut editor, mut version) = (base.to_string(), 1);
        let mut s = Shadow::new(base, version, Utf16);
        s.completion_requested();
        for (start, end, text) in peers {
            remote(&mut s, *start, *end, text);
        }
        settle_helix(&mut s, &mut editor, &mut version);
        // Helix reports the span from the first to the last character that differs.
        let (old, new): (Vec<char>, Vec<char>) =
            (editor.chars().collect(), accepted.chars().collect());
        let prefix = old.iter().zip(&new).take_while(|(a, b)| a == b).count();
        let suffix = old[prefix..]
            .iter()
            .rev()
            .zip(new[prefix..].iter().rev())
            .take_while(|(a, b)| a == b)
            .count();
        let text: String = new[prefix..new.len() - suffix].iter().collect();
        let change = change_on(&editor, prefix, old.len() - suffix, &text, Utf16);
        version += 3;
        let le = s.editor_changed(version, &[change]).unwrap();
        editor = accepted.into();
        settle_helix(&mut s, &mut editor, &mut version);
        assert_converged(&s, &editor);
        (le, editor)
    }

    fn inserted(le: &LocalEdits) -> Vec<&str> {
        le.splices.iter().map(|sp| sp.insert.as_str()).collect()
    }

    #[test]
    fn a_helix_completion_preview_revert_is_undone_and_only_the_item_sent() {
        // Peers edit on both sides of the cursor; "ITEM" is accepted at 5.
        let (le, text) = helix_completion_revert(
            "0123456789\n",
            &[(1, 1, "<a>"), (11, 11, "<b>")],
            "01234ITEM56789\n",
        );
        assert_eq!(
            inserted(&le),
            ["ITEM"],
            "only the item goes to the room: {le:?}"
        );
        assert_eq!(text, "0<a>1234ITEM567<b>89\n");
    }

    #[test]
    fn a_helix_completion_revert_among_repeated_lines_is_recognised() {
        // Lines that repeat: a line diff of the reverting change may take back another copy
        // of the repeated line than the one the peer added.
        let (le, text) = helix_completion_revert(
            "a\nthird\nthird\nz\n",
            &[(2, 2, "third\n"), (22, 22, "end\n")],
            "a\nthird\nthird\nzITEM\n",
        );
        assert_eq!(inserted(&le), ["ITEM"], "{le:?}");
        assert_eq!(text, "a\nthird\nthird\nthird\nzITEM\nend\n");
    }

    #[test]
    fn a_helix_completion_revert_reported_a_character_off_is_recognised() {
        // The peer typed "a" after an "a": where the reverting change starts (after "aa")
        // is not where the peer's text went.
        let (le, text) = helix_completion_revert("aab\n", &[(1, 1, "a")], "aabZ\n");
        assert_eq!(le.op.changed_chars(), 1, "only the item: {le:?}");
        assert_eq!(text, "aaabZ\n");
    }

    #[test]
    fn typing_before_a_character_the_room_replaced_stays_after_the_new_text() {
        // The room replaced "»" with "«v»" (a peer's marker deleted, another's typed there).
        // The user types before the old "»" while that edit is on its way: the typing goes
        // after the new text, not into it ("«v" + typed + "»" if the edit kept the old "»").
        let mut s = Shadow::new("🎉»x", 1, Utf16);
        remote(&mut s, 1, 2, "«v»");
        let e = s.next_apply_edit().unwrap().unwrap();
        assert_eq!(e.new_text, "«v»");
        s.editor_changed(2, &[change_on("🎉»x", 1, 1, "U", Utf16)])
            .unwrap();
        s.apply_edit_answered(e.id, false).unwrap();
        assert_eq!(s.crdt_text().to_string(), "🎉«v»Ux");
    }

    #[test]
    fn noop_change_does_not_void_the_edit_in_flight() {
        let mut s = Shadow::new("abc", 1, Utf16);
        remote(&mut s, 0, 0, "X");
        let e = s.next_apply_edit().unwrap().unwrap();
        s.editor_changed(2, &[ch(Some(lsp_range((0, 1), (0, 2))), "b")])
            .unwrap();
        assert!(s.has_in_flight());
        let le = s.editor_changed(3, &[echo(&e)]).unwrap();
        assert_eq!(le.echoes, 1);
        assert_converged(&s, "Xabc");
    }

    #[test]
    fn replies_to_settled_or_unknown_edits_are_ignored() {
        let mut s = Shadow::new("abc", 1, Utf16);
        remote(&mut s, 0, 0, "X");
        let e = s.next_apply_edit().unwrap().unwrap();
        s.editor_changed(2, &[echo(&e)]).unwrap();
        s.apply_edit_answered(e.id, false).unwrap();
        s.apply_edit_answered(999, false).unwrap();
        assert_converged(&s, "Xabc");
        assert!(s.next_apply_edit().unwrap().is_none());
    }

    #[test]
    fn remote_edit_that_does_not_fit_is_an_error_and_resync_recovers() {
        let mut s = Shadow::new("abc", 1, Utf16);
        let bad = Operation::replace(5, 0, 0, "X").unwrap();
        assert_eq!(
            s.remote_changed(&bad),
            Err(ShadowError::RemoteMismatch {
                expected: 5,
                actual: 3
            })
        );
        s.resync("abc🎉def");
        let mut editor = "abc".to_string();
        let mut version = 1;
        while let Some(e) = s.next_apply_edit().unwrap() {
            editor = apply(&editor, &e, Utf16);
            version += 1;
            s.editor_changed(version, &[echo(&e)]).unwrap();
        }
        assert_converged(&s, "abc🎉def");
    }

    #[test]
    fn several_changes_in_one_notification_give_sequential_splices() {
        // Helix with two cursors: one notification, two changes, in order.
        let mut s = Shadow::new("🎉a\nb", 1, Utf32);
        remote(&mut s, 0, 0, "R");
        let before = s.crdt_text().clone();
        let changes = [
            change_on("🎉a\nb", 1, 1, "é", Utf32),
            change_on("🎉éa\nb", 5, 5, "世", Utf32),
        ];
        let le = s.editor_changed(2, &changes).unwrap();
        assert_eq!(le.splices[0].index, 3, "after R and the two-unit 🎉");
        assert_eq!(apply_splices(&before, &le.splices), *s.crdt_text());
        assert_eq!(le.op.apply(&before).unwrap(), *s.crdt_text());
        assert_eq!(s.crdt_text().to_string(), "R🎉éa\nb世");
    }

    #[test]
    fn workspace_edit_is_versioned_with_one_text_edit() {
        let mut s = Shadow::new("abc", 7, Utf16);
        remote(&mut s, 1, 2, "B");
        let e = s.next_apply_edit().unwrap().unwrap();
        let uri = Url::parse("file:///tmp/a.txt").unwrap();
        let json = serde_json::to_value(e.workspace_edit(uri)).unwrap();
        let doc = &json["documentChanges"][0];
        assert_eq!(doc["textDocument"]["version"], 7);
        assert_eq!(doc["edits"].as_array().unwrap().len(), 1);
        assert_eq!(doc["edits"][0]["newText"], "B");
    }

    // ---------------------------------------------------------------------------------------
    // Simulation: a fake editor with each editor's measured behaviour, a fake CRDT with remote
    // peers, random interleavings; after quiescence all texts agree and no marker is lost or
    // duplicated.
    // ---------------------------------------------------------------------------------------

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Kind {
        /// Strict version check; echo (as sent, line breaks normalised to LF) before the reply.
        VsCode,
        /// The same, but a client that syncs whole documents (no ranges).
        VsCodeFullSync,
        /// No check for version 0; silent drop with applied:true when stale; echo re-derived
        /// by a diff (sometimes widened to the line start); optional 150 ms batching with the
        /// reply ahead of the echo; line breaks normalised to LF; the final "\n" kept outside
        /// the buffer's lines.
        Neovim,
        /// Strict check; version gaps; silent version bumps (cancelled completion previews);
        /// several changes per notification (multiple cursors); no normalisation.
        Helix,
    }

    enum Msg {
        Change(i32, Vec<TextDocumentContentChangeEvent>),
        Reply(u64, bool),
    }

    struct Editor {
        kind: Kind,
        enc: PositionEncoding,
        text: Rope,
        version: i32,
        batching: bool,
        batch: Vec<TextDocumentContentChangeEvent>,
        outbox: VecDeque<Msg>,
        inbox: VecDeque<ApplyEdit>,
        stale_applications: usize,
        rejections: usize,
        silent_drops: usize,
    }

    fn lf(s: &str) -> String {
        s.replace("\r\n", "\n").replace('\r', "\n")
    }

    /// True if `pos` is inside a marker `<...>` (markers contain no `<`, `>`, fillers neither).
    fn inside_marker(text: &Rope, pos: usize) -> bool {
        let mut i = pos;
        while i > 0 {
            i -= 1;
            match text.char(i) {
                '<' => return true,
                '>' => return false,
                _ => {}
            }
        }
        false
    }

    fn filler(rng: &mut Rng, alphabet: &[&str]) -> String {
        (0..1 + rng.below(4))
            .map(|_| alphabet[rng.below(alphabet.len())])
            .collect()
    }

    /// A random range `s..e` of `text` that touches no marker, or an insertion point if `len`
    /// is 0. `editor` restricts it to what an editor can address.
    fn pick_range(
        rng: &mut Rng,
        text: &Rope,
        max_len: usize,
        limit: usize,
        editor: bool,
    ) -> Option<(usize, usize)> {
        for _ in 0..20 {
            let s = rng.below(limit + 1);
            let e = (s + if max_len == 0 {
                0
            } else {
                1 + rng.below(max_len)
            })
            .min(limit);
            let bad_point =
                |p: usize| inside_marker(text, p) || (editor && encoding::is_inside_crlf(text, p));
            if bad_point(s) || bad_point(e) {
                continue;
            }
            if text.slice(s..e).chars().any(|c| c == '<' || c == '>') {
                continue;
            }
            return Some((s, e));
        }
        None
    }

    impl Editor {
        fn new(
            kind: Kind,
            enc: PositionEncoding,
            text: &str,
            version: i32,
            batching: bool,
        ) -> Self {
            Editor {
                kind,
                enc,
                text: Rope::from_str(text),
                version,
                batching,
                batch: Vec::new(),
                outbox: VecDeque::new(),
                inbox: VecDeque::new(),
                stale_applications: 0,
                rejections: 0,
                silent_drops: 0,
            }
        }

        /// Neovim keeps a final "\n" outside its buffer lines: nothing goes after it.
        fn keeps_final_newline(&self) -> bool {
            self.kind == Kind::Neovim
                && self.text.len_chars() > 0
                && self.text.char(self.text.len_chars() - 1) == '\n'
        }

        fn emit(&mut self, changes: Vec<TextDocumentContentChangeEvent>) {
            if self.kind == Kind::Neovim && self.batching {
                self.batch.extend(changes);
            } else {
                self.outbox.push_back(Msg::Change(self.version, changes));
            }
        }

        fn send_pending(&mut self) {
            if !self.batch.is_empty() {
                let batch = std::mem::take(&mut self.batch);
                self.outbox.push_back(Msg::Change(self.version, batch));
            }
        }

        /// Replaces chars `s..e` as the user would, returning the change to report.
        fn edit(&mut self, s: usize, e: usize, text: &str) -> TextDocumentContentChangeEvent {
            let (range, clamped) = encoding::chars_to_range(&self.text, s..e, self.enc);
            assert_eq!(clamped, Clamped::No);
            self.text.remove(s..e);
            self.text.insert(s, text);
            match self.kind {
                Kind::VsCodeFullSync => ch(None, &self.text.to_string()),
                _ => ch(Some(range), text),
            }
        }

        fn user_edit(&mut self, rng: &mut Rng, markers: &mut Vec<String>) {
            let cursors = if self.kind == Kind::Helix && rng.chance(20) {
                2
            } else {
                1
            };
            let mut changes = Vec::new();
            for _ in 0..cursors {
                let len = self.text.len_chars();
                let limit = if self.keeps_final_newline() {
                    len - 1
                } else {
                    len
                };
                let alphabet: &[&str] = if self.kind == Kind::Helix {
                    &["a", "b", " ", "é", "世", "🎉", "\n", "\r", "\r\n"]
                } else {
                    &["a", "b", " ", "é", "世", "🎉", "\n"]
                };
                let (max_len, text) = match rng.below(10) {
                    0..=3 => {
                        let m = format!("<u{}>", markers.len());
                        (0, m)
                    }
                    4..=6 => (0, filler(rng, alphabet)),
                    _ => (6, String::new()),
                };
                let Some((s, e)) = pick_range(rng, &self.text, max_len, limit, true) else {
                    continue;
                };
                if text.starts_with('<') {
                    markers.push(text.clone());
                }
                changes.push(self.edit(s, e, &text));
            }
            if changes.is_empty() {
                return;
            }
            self.version += 1;
            if self.kind == Kind::Helix && rng.chance(20) {
                self.version += 1 + rng.below(3) as i32;
            }
            self.emit(changes);
        }

        /// The editor handles the oldest applyEdit request.
        fn process_request(&mut self, rng: &mut Rng) -> bool {
            let Some(req) = self.inbox.pop_front() else {
                return false;
            };
            match self.kind {
                Kind::VsCode | Kind::VsCodeFullSync | Kind::Helix => {
                    // Null: applied with no check, at the positions as they are now.
                    if req.version.is_some_and(|v| v != self.version) {
                        self.rejections += 1;
                        self.outbox.push_back(Msg::Reply(req.id, false));
                        return true;
                    }
                    let text = if self.kind == Kind::Helix {
                        req.new_text.clone()
                    } else {
                        lf(&req.new_text)
                    };
                    let (chars, clamped) =
                        encoding::range_to_chars(&self.text, req.range, self.enc);
                    assert!(
                        clamped == Clamped::No || req.version.is_none(),
                        "the bridge sent a clamped range"
                    );
                    let mut change = self.edit(chars.start, chars.end, &text);
                    if change.range.is_some() && clamped == Clamped::No {
                        change.range = Some(req.range);
                    }
                    self.version += 1;
                    self.outbox
                        .push_back(Msg::Change(self.version, vec![change]));
                    self.outbox.push_back(Msg::Reply(req.id, true));
                }
                Kind::Neovim => {
                    if req.version.is_some_and(|v| v > 0 && self.version > v) {
                        self.silent_drops += 1;
                        self.outbox.push_back(Msg::Reply(req.id, true));
                        return true;
                    }
                    if req.version != Some(self.version) {
                        self.stale_applications += 1;
                    }
                    let steps = self.nvim_apply(&req);
                    let reply_first = self.batching || rng.chance(50);
                    if reply_first {
                        self.outbox.push_back(Msg::Reply(req.id, true));
                    }
                    for (before, after) in steps {
                        self.version += 1;
                        let change = derive_change(&before, &after, self.enc, rng.chance(50));
                        self.emit(vec![change]);
                    }
                    if !reply_first {
                        self.outbox.push_back(Msg::Reply(req.id, true));
                    }
                }
            }
            true
        }

        /// Neovim's `apply_text_edits` for one edit, as a list of buffer states (one per
        /// `on_lines`): line breaks normalised to LF; text for the empty last line appended as
        /// new lines; a range reaching past the last line clamped before the final "\n", then
        /// an empty last line removed.
        fn nvim_apply(&mut self, req: &ApplyEdit) -> Vec<(Rope, Rope)> {
            let text = lf(&req.new_text);
            let before = self.text.clone();
            let len = before.len_chars();
            let eol = self.keeps_final_newline();
            let max = encoding::line_count(&before) - usize::from(eol);
            let mut steps = Vec::new();
            let mut after = before.clone();
            if eol && req.range.start.line as usize >= max {
                after.insert(len, &format!("{text}\n"));
                steps.push((before, after.clone()));
            } else if eol && req.range.end.line as usize >= max {
                let (s, _) = encoding::position_to_char(&before, req.range.start, self.enc);
                after.remove(s..len - 1);
                after.insert(s, &text);
                steps.push((before, after.clone()));
                let n = after.len_chars();
                if n >= 2 && after.slice(n - 2..) == "\n\n" {
                    let mut fixed = after.clone();
                    fixed.remove(n - 1..n);
                    steps.push((after, fixed.clone()));
                    after = fixed;
                }
            } else {
                let (chars, _) = encoding::range_to_chars(&before, req.range, self.enc);
                after.remove(chars.clone());
                after.insert(chars.start, &text);
                steps.push((before, after.clone()));
            }
            self.text = after;
            steps
        }
    }

    /// The change an editor reports for `before` -> `after`, derived by a diff (as Neovim
    /// does), optionally widened to the start of the line; a no-op gives an empty change.
    fn derive_change(
        before: &Rope,
        after: &Rope,
        enc: PositionEncoding,
        widen: bool,
    ) -> TextDocumentContentChangeEvent {
        let mut e = Operation::diff(before, after)
            .edits()
            .into_iter()
            .next()
            .unwrap_or(Edit::new(0, 0, ""));
        // A diff boundary between CR and LF has no LSP position: widen over the pair.
        if encoding::is_inside_crlf(before, e.start) {
            e.start -= 1;
            e.text.insert(0, '\r');
        }
        if encoding::is_inside_crlf(before, e.end) {
            e.end += 1;
            e.text.push('\n');
        }
        if widen {
            let (_, line_start) = encoding::char_to_line(before, e.start);
            let mut t = before.slice(line_start..e.start).to_string();
            t.push_str(&e.text);
            e = Edit::new(line_start, e.end, t);
        }
        let (range, clamped) = encoding::chars_to_range(before, e.start..e.end, enc);
        assert_eq!(clamped, Clamped::No);
        ch(Some(range), &e.text)
    }

    #[derive(Default, Debug)]
    struct Stats {
        runs: usize,
        echoes: usize,
        stale_applications: usize,
        rejections: usize,
        silent_drops: usize,
        local_edits: usize,
        /// Echoes in a form the editor rewrote, adopted into the CRDT.
        adopted: usize,
    }

    struct Sim {
        seed: u64,
        rng: Rng,
        editor: Editor,
        shadow: Shadow,
        crdt: Rope,
        markers: Vec<String>,
        stats: Stats,
        /// `DUET_SIM_TRACE=<seed>` prints that run's events, to replay a failure.
        trace: bool,
    }

    impl Sim {
        fn log(&self, what: impl FnOnce() -> String) {
            if self.trace {
                eprintln!("{}", what());
            }
        }

        fn new(seed: u64, kind: Kind, enc: PositionEncoding) -> Self {
            let mut rng = Rng::new(seed);
            let texts = [
                "",
                "hello\n",
                "a\r\nb\r\n",
                "first line\nsecond 🎉 line\n",
                "x",
                "世界\rmixed\r\nends",
            ];
            let text = texts[rng.below(texts.len())];
            let (version, batching) = match kind {
                Kind::VsCode | Kind::VsCodeFullSync => (1, false),
                Kind::Helix => (0, false),
                // Neovim 0.7 opens at version 0 (unchecked); 0.11 at its changedtick.
                Kind::Neovim => (
                    if rng.chance(50) {
                        0
                    } else {
                        1 + rng.below(5) as i32
                    },
                    rng.chance(50),
                ),
            };
            Sim {
                seed,
                editor: Editor::new(kind, enc, text, version, batching),
                shadow: Shadow::new(text, version, enc),
                crdt: Rope::from_str(text),
                markers: Vec::new(),
                stats: Stats::default(),
                trace: std::env::var("DUET_SIM_TRACE").is_ok_and(|v| v == seed.to_string()),
                rng,
            }
        }

        fn ctx(&self) -> String {
            format!(
                "seed {} {:?} {:?} batching={}",
                self.seed, self.editor.kind, self.editor.enc, self.editor.batching
            )
        }

        fn deliver(&mut self) -> bool {
            let Some(msg) = self.editor.outbox.pop_front() else {
                return false;
            };
            match &msg {
                Msg::Change(v, c) => self.log(|| format!("  -> didChange v{v} {c:?}")),
                Msg::Reply(id, ok) => self.log(|| format!("  -> reply #{id} applied={ok}")),
            }
            match msg {
                Msg::Change(version, changes) => {
                    let le = self
                        .shadow
                        .editor_changed(version, &changes)
                        .unwrap_or_else(|e| panic!("{}: {e}", self.ctx()));
                    let via_op = le.op.apply(&self.crdt).unwrap();
                    assert_eq!(
                        apply_splices(&self.crdt, &le.splices),
                        via_op,
                        "{}",
                        self.ctx()
                    );
                    assert!(
                        !le.clamped,
                        "{}: a consistent editor never needs clamping",
                        self.ctx()
                    );
                    self.stats.echoes += le.echoes;
                    self.stats.local_edits += usize::from(!le.is_empty());
                    self.stats.adopted += usize::from(le.echoes > 0 && !le.is_empty());
                    self.crdt = via_op;
                    self.log(|| {
                        format!(
                            "     echoes={} local={} shadow={:?} crdt={:?} inflight={}",
                            le.echoes,
                            le.op,
                            self.shadow.text().to_string(),
                            self.crdt.to_string(),
                            self.shadow.has_in_flight()
                        )
                    });
                }
                Msg::Reply(id, applied) => self
                    .shadow
                    .apply_edit_answered(id, applied)
                    .unwrap_or_else(|e| panic!("{}: {e}", self.ctx())),
            }
            assert_eq!(*self.shadow.crdt_text(), self.crdt, "{}", self.ctx());
            true
        }

        fn remote_edit(&mut self) {
            let rng = &mut self.rng;
            let len = self.crdt.len_chars();
            let (max_len, text) = match rng.below(10) {
                0..=3 => (0, format!("<r{}>", self.markers.len())),
                4..=6 => (
                    0,
                    filler(rng, &["x", "y", " ", "é", "世", "🎉", "\n", "\r\n", "\r"]),
                ),
                _ => (5, String::new()),
            };
            let Some((s, e)) = pick_range(rng, &self.crdt, max_len, len, false) else {
                return;
            };
            if text.starts_with('<') {
                self.markers.push(text.clone());
            }
            let op = Operation::replace(len, s, e, &text).unwrap();
            self.log(|| format!("remote {op}"));
            self.crdt = op.apply(&self.crdt).unwrap();
            self.shadow
                .remote_changed(&op)
                .unwrap_or_else(|e| panic!("{}: {e}", self.ctx()));
        }

        fn bridge_send(&mut self) {
            if let Some(e) = self
                .shadow
                .next_apply_edit()
                .unwrap_or_else(|e| panic!("{}: {e}", self.ctx()))
            {
                self.log(|| format!("  <- applyEdit {e:?}"));
                assert!(
                    e.version.is_none_or(|v| v == self.shadow.version()),
                    "{}",
                    self.ctx()
                );
                self.editor.inbox.push_back(e);
            }
        }

        fn step(&mut self) {
            self.log(|| {
                format!(
                    "editor v{} {:?}",
                    self.editor.version,
                    self.editor.text.to_string()
                )
            });
            match self.rng.below(100) {
                0..=19 => self.editor.user_edit(&mut self.rng, &mut self.markers),
                20..=34 => self.remote_edit(),
                35..=59 => {
                    self.deliver();
                }
                60..=74 => {
                    self.editor.process_request(&mut self.rng);
                }
                75..=89 => self.bridge_send(),
                90..=94 => self.editor.send_pending(),
                95..=96 if self.editor.kind == Kind::Helix => {
                    // A completion preview came and went: version bumped, nothing sent.
                    self.editor.version += 1 + self.rng.below(3) as i32;
                }
                _ => self.shadow.retry_after_rejection(),
            }
        }

        fn quiesce(&mut self) {
            for round in 0..200 {
                self.editor.send_pending();
                while self.deliver() {}
                self.bridge_send();
                while self.editor.process_request(&mut self.rng) {}
                self.editor.send_pending();
                while self.deliver() {}
                if self.shadow.is_settled()
                    && self.editor.inbox.is_empty()
                    && self.editor.outbox.is_empty()
                    && self.editor.batch.is_empty()
                {
                    return;
                }
                self.shadow.retry_after_rejection();
                if round % 8 == 7 {
                    // After a silent version bump only the user's next keystroke tells the
                    // bridge the version; a real user types eventually.
                    self.editor.user_edit(&mut self.rng, &mut self.markers);
                }
            }
            panic!("{}: did not settle", self.ctx());
        }

        fn check(&self) {
            let ctx = self.ctx();
            let mut editor = self.editor.text.to_string();
            if self.shadow.implicit_final_newline() {
                assert!(
                    editor.ends_with('\n'),
                    "{ctx}: no implicit final line break"
                );
                editor.pop();
            }
            assert_eq!(
                self.shadow.text().to_string(),
                editor,
                "{ctx}: shadow != editor"
            );
            assert_eq!(
                self.shadow.crdt_text().to_string(),
                editor,
                "{ctx}: crdt != editor"
            );
            assert_eq!(self.crdt.to_string(), editor, "{ctx}: fake crdt != editor");
            for m in &self.markers {
                let n = editor.matches(m.as_str()).count();
                if self.editor.stale_applications == 0 {
                    assert_eq!(n, 1, "{ctx}: marker {m} in {editor:?}");
                } else {
                    // Neovim applied an unchecked edit at stale positions: the user saw the
                    // damaged text and may have typed into it before the repair, which no
                    // bridge can undo. Still, nothing may be duplicated.
                    assert!(n <= 1, "{ctx}: marker {m} duplicated in {editor:?}");
                }
            }
        }
    }

    fn simulate(kind: Kind, seeds: std::ops::Range<u64>) -> Stats {
        let t0 = std::time::Instant::now();
        let mut total = Stats::default();
        for seed in seeds {
            let enc = [Utf8, Utf16, Utf32][(seed % 3) as usize];
            let mut sim = Sim::new(seed, kind, enc);
            let steps = 20 + sim.rng.below(120);
            for _ in 0..steps {
                sim.step();
            }
            sim.quiesce();
            sim.check();
            total.runs += 1;
            total.echoes += sim.stats.echoes;
            total.local_edits += sim.stats.local_edits;
            total.adopted += sim.stats.adopted;
            total.stale_applications += sim.editor.stale_applications;
            total.rejections += sim.editor.rejections;
            total.silent_drops += sim.editor.silent_drops;
        }
        eprintln!("{kind:?}: {total:?} in {:?}", t0.elapsed());
        total
    }

    #[test]
    fn simulation_vscode_converges() {
        let s = simulate(Kind::VsCode, 0..1000);
        assert!(s.echoes > 1000 && s.rejections > 100, "{s:?}");
        assert!(s.adopted > 100, "line-break rewriting exercised: {s:?}");
    }

    #[test]
    fn simulation_vscode_full_sync_converges() {
        let s = simulate(Kind::VsCodeFullSync, 10_000..10_600);
        assert!(
            s.echoes > 500 && s.rejections > 50 && s.adopted > 50,
            "{s:?}"
        );
    }

    #[test]
    fn simulation_neovim_converges() {
        let s = simulate(Kind::Neovim, 20_000..21_500);
        assert!(s.echoes > 1000 && s.silent_drops > 100, "{s:?}");
        assert!(
            s.stale_applications > 10,
            "unchecked edits exercised: {s:?}"
        );
        assert!(s.adopted > 100, "{s:?}");
    }

    #[test]
    fn simulation_helix_converges() {
        let s = simulate(Kind::Helix, 30_000..31_000);
        assert!(s.echoes > 1000 && s.rejections > 100, "{s:?}");
    }
}
