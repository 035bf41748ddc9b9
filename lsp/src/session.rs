//! The session: one task that owns everything — the open documents and their shadows, the
//! room replica, the connection — and handles one event at a time, in arrival order.
//!
//! tower-lsp runs handlers concurrently, so the handlers in [`crate::backend`] only forward
//! their message into this task's channel. Nothing here awaits the editor: what the session
//! says to the editor is a [`ToEditor`] message, delivered by [`editor::deliver`] (in order;
//! the answer to an `applyEdit` comes back as an event). That keeps `didChange` strictly
//! ordered and stdio free of deadlocks, and lets tests drive the session with events and read
//! what it says without an editor.
//!
//! The state lives here; the handlers live by concern in the submodules, as `impl Session`
//! blocks: [`lifecycle`] (initialize), [`documents`] (open, change, close, the next
//! `applyEdit`), [`room`] (join, connection events, linking documents to the room's files,
//! peers' changes), [`presence`] (our cursor out, peers in, jumping to and following a peer),
//! [`files`] (the room's files: listing, opening, creating those the folder lacks, noticing
//! new ones), [`overview`] (the status, readable everywhere), [`completion`], [`commands`] and
//! [`history`] (the room's versions, restores, what changed while we were away).

mod commands;
mod completion;
mod documents;
pub mod editor;
mod files;
mod history;
mod lifecycle;
mod overview;
mod presence;
mod room;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Instant, SystemTime};

use duet_server::autocomplete::{Engine, IdentifierIndex};
use duet_server::protocol::Presence;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tower_lsp::lsp_types::*;

use crate::config::{Invite, Settings};
use crate::connection::NetEvent;
use crate::encoding::PositionEncoding;
use crate::shadow::Shadow;
use crate::workspace::Workspace;

pub use commands::COMMANDS;
pub use editor::ToEditor;
pub use presence::CursorParams;
use room::Room;

/// Everything the session reacts to.
pub enum Event {
    Initialize(Box<InitializeParams>, oneshot::Sender<InitializeResult>),
    Initialized,
    Shutdown(oneshot::Sender<()>),
    DidOpen(DidOpenTextDocumentParams),
    DidChange(DidChangeTextDocumentParams),
    DidClose(DidCloseTextDocumentParams),
    Completion(
        CompletionParams,
        oneshot::Sender<Option<CompletionResponse>>,
    ),
    Command(ExecuteCommandParams, oneshot::Sender<CommandResult>),
    /// `workspace/symbol`: the room's files and the peers, to pick one to go to.
    WorkspaceSymbol(
        WorkspaceSymbolParams,
        oneshot::Sender<Option<Vec<SymbolInformation>>>,
    ),
    Cursor(CursorParams),
    Net(u64, NetEvent),
    ApplyEditAnswered {
        uri: Url,
        id: u64,
        applied: bool,
    },
    RoomCreated(
        Result<Invite, commands::CreateRoomError>,
        oneshot::Sender<CommandResult>,
    ),
    /// A version's texts, fetched for `duet.restore`: to apply as the user's own edit.
    Restore(Box<history::Fetched>, oneshot::Sender<CommandResult>),
    /// Time to look at held edits again.
    Tick,
    /// The editor sent a message that is not valid UTF-8 (see [`crate::transport`]); it follows
    /// with its invalid bytes replaced.
    InvalidUtf8 {
        method: String,
        uri: Option<Url>,
    },
}

/// A command's answer: its result, or the message that says what went wrong.
pub type CommandResult = Result<Option<Value>, String>;

struct Document {
    /// Workspace-relative path; `None` when the file is outside the workspace (not shared).
    path: Option<String>,
    language: String,
    shadow: Shadow,
    /// Linked to its file in the room: edits go both ways.
    linked: bool,
    /// An edit was rejected and nothing came from the editor since: when to send it again,
    /// unchecked (see [`Shadow::retry_after_rejection`]).
    retry_at: Option<Instant>,
    /// Where the user's last undo or redo changed the room's text (UTF-16): the cursor goes
    /// there once the editor has the change, unless the user types first.
    undo_cursor: Option<usize>,
    /// The room's text is on its way to the editor: peers' cursors are shown again once the
    /// editor has it (drawn before, they would land where the old text put them).
    peers_when_settled: bool,
}

pub struct Session {
    editor: mpsc::UnboundedSender<ToEditor>,
    events: mpsc::UnboundedSender<Event>,
    encoding: PositionEncoding,
    workspace: Workspace,
    settings: Settings,
    snippets: bool,
    helix: bool,
    engine: Engine,
    identifiers: IdentifierIndex,
    stale_identifiers: HashSet<String>,
    docs: HashMap<Url, Document>,
    room: Option<Room>,
    /// A room being joined while we are still in `room`: it replaces `room` once it has
    /// synced, and a join that fails leaves the user where they were.
    joining: Option<Room>,
    generation: u64,
    cursor_from_editor: bool,
    peer_diagnostics: HashSet<Url>,
    /// The editor can be asked to show a document at a position (`window/showDocument`).
    show_document: bool,
    /// The document the user last typed in: the one `duet.undo` without arguments undoes in.
    last_typed: Option<Url>,
    /// Documents the editor sent invalid UTF-8 for before opening them: not shared.
    undecodable: HashSet<Url>,
    /// Our latest presence, not sent yet, and when the last one went out.
    presence: Option<Presence>,
    presence_sent: Option<Instant>,
    presence_tick: bool,
    /// The last `duet/status` sent, so that an unchanged one is not sent again (peers moving
    /// their cursors change `duet/peers` only).
    status_sent: Option<Value>,
    /// What changed in the room while we were away (from our last visit to it).
    away: Option<history::Away>,
    /// The last readable status written for Helix (see [`overview`]).
    status_written: Option<String>,
    /// The last messages shown, with when: the status repeats them (Helix's status line keeps
    /// a message only until the next).
    recent: VecDeque<(SystemTime, String)>,
    /// The peer (client id) whose cursor the editor follows (`duet.follow`, for editors without
    /// a plugin), and where we last took the editor.
    following: Option<(u64, Option<(String, u32)>)>,
}

impl Session {
    /// A session that says what it has to say to the editor on `editor`, and that sends itself
    /// events (connection, timers, answers) on `events`, the sender of the channel
    /// [`Session::run`] reads.
    pub fn new(
        events: mpsc::UnboundedSender<Event>,
        editor: mpsc::UnboundedSender<ToEditor>,
    ) -> Session {
        Session {
            editor,
            events,
            encoding: PositionEncoding::Utf16,
            workspace: Workspace::new(std::env::current_dir().unwrap_or_default()),
            settings: Settings::default(),
            snippets: false,
            helix: false,
            engine: Engine::builtin(),
            identifiers: IdentifierIndex::new(),
            stale_identifiers: HashSet::new(),
            docs: HashMap::new(),
            room: None,
            joining: None,
            generation: 0,
            cursor_from_editor: false,
            status_sent: None,
            status_written: None,
            recent: VecDeque::new(),
            following: None,
            peer_diagnostics: HashSet::new(),
            show_document: false,
            last_typed: None,
            undecodable: HashSet::new(),
            presence: None,
            presence_sent: None,
            presence_tick: false,
            away: None,
        }
    }

    /// Handles events until the editor shuts us down or goes away.
    pub async fn run(mut self, mut events: mpsc::UnboundedReceiver<Event>) {
        while let Some(event) = events.recv().await {
            self.handle(event);
        }
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Initialize(params, reply) => {
                let _ = reply.send(self.initialize(*params));
            }
            Event::Initialized => self.initialized(),
            Event::Shutdown(reply) => {
                self.leave();
                let _ = reply.send(());
            }
            Event::DidOpen(params) => self.did_open(params),
            Event::DidChange(params) => self.did_change(params),
            Event::DidClose(params) => self.did_close(params),
            Event::Completion(params, reply) => {
                let _ = reply.send(self.completion(params));
            }
            Event::Command(params, reply) => self.command(params, reply),
            Event::WorkspaceSymbol(params, reply) => {
                let _ = reply.send(Some(self.workspace_symbols(&params.query)));
            }
            Event::Cursor(params) => self.cursor(params),
            Event::Net(generation, event) => self.net(generation, event),
            Event::ApplyEditAnswered { uri, id, applied } => {
                self.apply_edit_answered(&uri, id, applied)
            }
            Event::RoomCreated(result, reply) => self.room_created(result, reply),
            Event::Restore(fetched, reply) => self.restore(*fetched, reply),
            Event::InvalidUtf8 { method, uri } => self.invalid_utf8(&method, uri),
            Event::Tick => {
                let uris: Vec<Url> = self.docs.keys().cloned().collect();
                for uri in uris {
                    self.send_next_edit(&uri);
                }
                self.presence_tick = false;
                self.send_presence();
            }
        }
    }

    /// Queues a message to the editor (see [`editor::deliver`]).
    fn tell(&self, message: ToEditor) {
        let _ = self.editor.send(message);
    }

    fn show(&mut self, kind: MessageType, message: String) {
        tracing::info!(message = %crate::config::without_tokens(&message), "message to the user");
        if self.recent.len() == RECENT_MESSAGES {
            self.recent.pop_front();
        }
        self.recent.push_back((SystemTime::now(), message.clone()));
        self.tell(ToEditor::Show { kind, message });
    }
}

/// How many of the last messages the status repeats.
const RECENT_MESSAGES: usize = 8;

/// Sends the session a [`Event::Tick`] at `when`, to look again at what was held back.
fn tick_at(events: &mpsc::UnboundedSender<Event>, when: Instant) {
    let events = events.clone();
    tokio::spawn(async move {
        tokio::time::sleep_until(when.into()).await;
        let _ = events.send(Event::Tick);
    });
}
