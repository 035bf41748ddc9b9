//! The session: one task that owns everything — the open documents and their shadows, the
//! room replica, the connection — and handles one event at a time, in arrival order.
//!
//! tower-lsp runs handlers concurrently, so the handlers in [`crate::backend`] only forward
//! their message into this task's channel. Nothing here awaits the editor: `applyEdit`
//! requests go out from spawned tasks whose answers come back as events, and messages and
//! notifications go through an outbox task that sends them in order. That keeps `didChange`
//! strictly ordered and stdio free of deadlocks.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use duet_server::autocomplete::{Engine, IdentifierIndex, Request, SuggestionKind};
use ropey::Rope;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};
use tower_lsp::lsp_types::*;
use tower_lsp::Client;

use crate::config::{find_duet_toml, host_of, Invite, Settings};
use crate::connection::{Connection, NetEvent};
use crate::encoding::{self, PositionEncoding};
use crate::ot::{Component, Operation};
use crate::replica::{History, RemoteChange, Replica};
use crate::shadow::Shadow;
use crate::tls;
use crate::workspace::Workspace;

pub const COMMANDS: [&str; 6] = [
    "duet.createRoom",
    "duet.joinRoom",
    "duet.leaveRoom",
    "duet.status",
    "duet.undo",
    "duet.redo",
];

/// How long the outbox waits for the editor's answer to a request of ours that only shows
/// something (a progress token, a cursor position).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);
/// At most this many undo or redo steps at once (`1000u` in Neovim).
const MAX_UNDO_STEPS: u64 = 1000;

/// How long an `applyEdit` may wait for the editor's answer before it counts as refused.
const APPLY_EDIT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long after a rejection that no `didChange` explained an edit is sent again, unchecked:
/// long enough for a completion preview's own `didChange` (if the user accepts) to come first.
const REJECTION_RETRY: Duration = Duration::from_secs(1);
/// Our presence goes out at most this often: a cursor update per keystroke would double the
/// traffic for nothing anyone can see.
const PRESENCE_INTERVAL: Duration = Duration::from_millis(100);

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
    Command(
        ExecuteCommandParams,
        oneshot::Sender<Result<Option<Value>, String>>,
    ),
    Cursor(CursorParams),
    Net(u64, NetEvent),
    ApplyEditAnswered {
        uri: Url,
        id: u64,
        applied: bool,
    },
    RoomCreated(
        Result<Invite, String>,
        oneshot::Sender<Result<Option<Value>, String>>,
    ),
    /// Time to look at held edits again.
    Tick,
    /// The editor sent a message that is not valid UTF-8 (see [`crate::transport`]); it follows
    /// with its invalid bytes replaced.
    InvalidUtf8 {
        method: String,
        uri: Option<Url>,
    },
}

/// `duet/cursor`: where the user's cursor is, sent by our editor plugins.
#[derive(Debug, serde::Deserialize)]
pub struct CursorParams {
    pub uri: Url,
    pub position: Position,
    pub anchor: Option<Position>,
}

struct Document {
    /// Workspace-relative path; `None` when the file is outside the workspace (not shared).
    path: Option<String>,
    language: String,
    shadow: Shadow,
    linked: bool,
    /// An edit was rejected and nothing came from the editor since: when to send it again,
    /// unchecked (see [`Shadow::retry_after_rejection`]).
    retry_at: Option<Instant>,
    /// Where the user's last undo or redo changed the room's text (UTF-16): the cursor goes
    /// there once the editor has the change, unless the user types first.
    undo_cursor: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    Connecting,
    Synced,
    Offline,
}

struct Room {
    /// Which join this is: events of an earlier connection are ignored.
    generation: u64,
    invite: Invite,
    connection: Connection,
    replica: Replica,
    link: Link,
    ever_synced: bool,
    /// The user was told the server cannot be reached (once per join).
    warned_unreachable: bool,
    /// When we last asked the server again for what we lack: an update that waits for one
    /// that never came.
    asked_again: Option<Instant>,
}

/// A message to the editor, queued for the outbox task.
type Outgoing = Box<dyn FnOnce(Client) -> futures_util::future::BoxFuture<'static, ()> + Send>;

pub struct Session {
    client: Client,
    outbox: mpsc::UnboundedSender<Outgoing>,
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
    presence: Option<Value>,
    presence_sent: Option<Instant>,
    presence_tick: bool,
    /// The last `duet/status` sent, so that an unchanged one is not sent again (peers moving
    /// their cursors change `duet/peers` only).
    status_sent: Option<Value>,
}

impl Session {
    pub fn new(client: Client, events: mpsc::UnboundedSender<Event>) -> Session {
        let (outbox, mut queued) = mpsc::unbounded_channel::<Outgoing>();
        let sender = client.clone();
        tokio::spawn(async move {
            while let Some(message) = queued.recv().await {
                message(sender.clone()).await;
            }
        });
        Session {
            outbox,
            client,
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
            peer_diagnostics: HashSet::new(),
            show_document: false,
            last_typed: None,
            undecodable: HashSet::new(),
            presence: None,
            presence_sent: None,
            presence_tick: false,
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
            Event::Cursor(params) => self.cursor(params),
            Event::Net(generation, event) => {
                if self
                    .room
                    .as_ref()
                    .is_some_and(|r| r.generation == generation)
                {
                    self.net(event);
                } else if self
                    .joining
                    .as_ref()
                    .is_some_and(|r| r.generation == generation)
                {
                    self.joining_net(event);
                }
            }
            Event::ApplyEditAnswered { uri, id, applied } => {
                if let Some(doc) = self.docs.get_mut(&uri) {
                    if let Err(e) = doc.shadow.apply_edit_answered(id, applied) {
                        tracing::warn!(%uri, error = %e, "applyEdit answer left the shadow inconsistent");
                        self.resync(&uri);
                    } else if doc.shadow.is_blocked() && doc.retry_at.is_none() {
                        let at = Instant::now() + REJECTION_RETRY;
                        doc.retry_at = Some(at);
                        tick_at(&self.events, at);
                    }
                }
                self.flush(&uri);
            }
            Event::RoomCreated(result, reply) => match result {
                Ok(invite) => {
                    let text = invite.to_invite_string();
                    self.show(
                        MessageType::INFO,
                        format!("duet: room created. Invite (share it): {text}"),
                    );
                    self.join(invite);
                    let _ = reply.send(Ok(Some(json!({"invite": text}))));
                }
                Err(e) => {
                    self.show(
                        MessageType::ERROR,
                        format!("duet: could not create a room: {e}"),
                    );
                    let _ = reply.send(Err(e));
                }
            },
            Event::InvalidUtf8 { method, uri } => self.invalid_utf8(&method, uri),
            Event::Tick => {
                let uris: Vec<Url> = self.docs.keys().cloned().collect();
                for uri in uris {
                    self.flush(&uri);
                }
                self.presence_tick = false;
                self.send_presence();
            }
        }
    }

    // ----- lifecycle -------------------------------------------------------------------

    fn initialize(&mut self, params: InitializeParams) -> InitializeResult {
        self.encoding = PositionEncoding::negotiate(&params.capabilities);
        self.snippets = params
            .capabilities
            .text_document
            .as_ref()
            .and_then(|t| t.completion.as_ref())
            .and_then(|c| c.completion_item.as_ref())
            .and_then(|i| i.snippet_support)
            .unwrap_or(false);
        self.show_document = params
            .capabilities
            .window
            .as_ref()
            .and_then(|w| w.show_document.as_ref())
            .is_some_and(|s| s.support);
        self.helix = params
            .client_info
            .as_ref()
            .is_some_and(|c| c.name.eq_ignore_ascii_case("helix"));
        self.workspace = Workspace::from_initialize(&params);
        let mut settings = Settings::default();
        if let Some(file) = find_duet_toml(self.workspace.root()) {
            match std::fs::read_to_string(&file)
                .map_err(|e| e.to_string())
                .and_then(|t| Settings::from_toml(&t, &file))
            {
                Ok(from_file) => settings = from_file,
                Err(e) => self.show(
                    MessageType::ERROR,
                    format!("duet: ignoring {}: {e}", file.display()),
                ),
            }
            if params.root_uri.is_none()
                && params.workspace_folders.as_ref().is_none_or(Vec::is_empty)
            {
                if let Some(dir) = file.parent() {
                    self.workspace = Workspace::new(dir.to_path_buf());
                }
            }
        }
        settings = settings.merged(Settings::from_env());
        if let Some(options) = params.initialization_options {
            match serde_json::from_value::<Settings>(options) {
                Ok(options) => settings = settings.merged(options),
                Err(e) => self.show(
                    MessageType::ERROR,
                    format!("duet: ignoring initializationOptions: {e}"),
                ),
            }
        }
        self.settings = settings;
        self.load_user_rules();
        tracing::info!(root = %self.workspace.root().display(), encoding = ?self.encoding, "initialized");
        InitializeResult {
            capabilities: ServerCapabilities {
                position_encoding: Some(self.encoding.kind()),
                text_document_sync: Some(TextDocumentSyncCapability::Options(
                    TextDocumentSyncOptions {
                        open_close: Some(true),
                        change: Some(TextDocumentSyncKind::INCREMENTAL),
                        ..TextDocumentSyncOptions::default()
                    },
                )),
                completion_provider: Some(CompletionOptions::default()),
                execute_command_provider: Some(ExecuteCommandOptions {
                    commands: COMMANDS.iter().map(|c| c.to_string()).collect(),
                    ..ExecuteCommandOptions::default()
                }),
                ..ServerCapabilities::default()
            },
            server_info: Some(ServerInfo {
                name: "duet-lsp".into(),
                version: Some(env!("CARGO_PKG_VERSION").into()),
            }),
        }
    }

    /// User rules: a global file and a per-workspace file, on top of the built-in ones.
    fn load_user_rules(&mut self) {
        let global = std::env::var_os("XDG_CONFIG_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
            .map(|dir| dir.join("duet/rules.toml"));
        let local = self.workspace.root().join(".duet/rules.toml");
        for file in global.into_iter().chain([local]) {
            if file.is_file() {
                if let Err(e) = self.engine.load_file(&file) {
                    self.show(
                        MessageType::ERROR,
                        format!("duet: completion rules not loaded: {e}"),
                    );
                }
            }
        }
    }

    fn initialized(&mut self) {
        match self.settings.invite() {
            Ok(Some(invite)) => self.join(invite),
            Ok(None) => self.status(),
            Err(e) => self.show(MessageType::ERROR, format!("duet: cannot join: {e}")),
        }
    }

    // ----- the room ----------------------------------------------------------------------

    /// Joins a room. While we are in another one, that one stays until the new one has synced
    /// (see [`Session::joining_net`]).
    fn join(&mut self, invite: Invite) {
        self.generation += 1;
        let generation = self.generation;
        let events = self.events.clone();
        let connection = Connection::spawn(&invite, self.settings.ca.clone(), move |event| {
            let _ = events.send(Event::Net(generation, event));
        });
        let mut replica = Replica::new();
        replica.set_presence(&json!({"user": self.user()}));
        tracing::info!(room = %invite.room, server = %invite.server, "joining");
        self.progress(
            generation,
            "begin",
            format!("connecting to {}", invite.server),
        );
        let room = Room {
            generation,
            invite,
            connection,
            replica,
            link: Link::Connecting,
            ever_synced: false,
            warned_unreachable: false,
            asked_again: None,
        };
        if self.room.is_some() {
            self.joining = Some(room);
        } else {
            self.room = Some(room);
            self.status();
        }
    }

    fn leave(&mut self) {
        self.joining = None;
        if let Some(room) = self.room.take() {
            tracing::info!(room = %room.invite.room, "left the room");
            for doc in self.docs.values_mut() {
                doc.linked = false;
            }
            self.clear_peer_diagnostics();
            self.status();
        }
    }

    /// The connection to a room we are joining while in another: it takes the other's place
    /// once synced; if it is refused or cannot connect, the user stays where they were.
    fn joining_net(&mut self, event: NetEvent) {
        let Some(joining) = self.joining.as_mut() else {
            return;
        };
        let failure = match event {
            NetEvent::Connected => {
                for frame in joining.replica.hello() {
                    joining.connection.send(frame);
                }
                return;
            }
            NetEvent::Frame(data) => match joining.replica.receive(&data) {
                Ok(received) => {
                    if let Some(reply) = received.reply {
                        joining.connection.send(reply);
                    }
                    if received.synced {
                        let joined = self.joining.take();
                        self.leave();
                        self.room = joined;
                        self.synced();
                    }
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "ignoring a frame from the server");
                    return;
                }
            },
            NetEvent::Disconnected(reason) => {
                format!("cannot reach {} ({reason})", joining.invite.server)
            }
            NetEvent::Refused(reason) => format!("cannot join the room: {reason}"),
        };
        let generation = joining.generation;
        self.joining = None;
        self.progress(generation, "end", "failed".into());
        let staying = self
            .room
            .as_ref()
            .map(|r| short_id(&r.invite))
            .unwrap_or_default();
        self.show(
            MessageType::ERROR,
            format!("duet: {failure}; you are still in room {staying}"),
        );
    }

    fn net(&mut self, event: NetEvent) {
        let Some(room) = self.room.as_mut() else {
            return;
        };
        match event {
            NetEvent::Connected => {
                for frame in room.replica.hello() {
                    room.connection.send(frame);
                }
            }
            NetEvent::Frame(data) => match room.replica.receive(&data) {
                Ok(received) => {
                    if let Some(reply) = received.reply {
                        room.connection.send(reply);
                    }
                    // Updates wait only until what they build on arrives, which the server
                    // sends first. If something still waits, a frame went missing on the
                    // way: ask for everything we lack again (at most once a second).
                    if received.waiting
                        && room
                            .asked_again
                            .is_none_or(|t| t.elapsed() > Duration::from_secs(1))
                    {
                        tracing::warn!(
                            "an update waits for one that never came; asking the server again"
                        );
                        room.asked_again = Some(Instant::now());
                        room.connection.send(room.replica.sync_request());
                    }
                    if received.synced && room.link != Link::Synced {
                        self.synced();
                    }
                    if received.doc_changed {
                        self.remote_changed();
                    }
                    if received.presence_changed {
                        self.publish_peers();
                    }
                }
                Err(e) => tracing::warn!(error = %e, "ignoring a frame from the server"),
            },
            NetEvent::Disconnected(reason) => {
                let message = if room.link == Link::Synced {
                    room.link = Link::Offline;
                    tracing::warn!(%reason, "offline");
                    Some(format!(
                        "duet: offline ({reason}). Keep typing: your edits are kept and sync when the server is back."
                    ))
                } else if !room.ever_synced && !room.warned_unreachable {
                    room.warned_unreachable = true;
                    Some(format!(
                        "duet: cannot reach {} ({reason}); still trying. Your edits are kept.",
                        room.invite.server
                    ))
                } else {
                    None
                };
                if let Some(message) = message {
                    self.show(MessageType::WARNING, message);
                    self.status();
                }
            }
            NetEvent::Refused(reason) => {
                let generation = room.generation;
                self.show(
                    MessageType::ERROR,
                    format!("duet: cannot join the room: {reason}"),
                );
                self.progress(generation, "end", "failed".into());
                self.leave();
            }
        }
    }

    fn synced(&mut self) {
        let Some(room) = self.room.as_mut() else {
            return;
        };
        let generation = room.generation;
        let first = !room.ever_synced;
        room.link = Link::Synced;
        room.ever_synced = true;
        let short = short_id(&room.invite);
        // Documents opened before the first sync, or while offline, join the room now.
        let unlinked: Vec<Url> = self
            .docs
            .iter()
            .filter(|(_, d)| !d.linked)
            .map(|(u, _)| u.clone())
            .collect();
        for uri in &unlinked {
            self.link(uri);
        }
        if first {
            self.progress(generation, "end", "connected".into());
            let peers = self.room.as_ref().map_or(0, |r| r.replica.peers().len());
            self.show(
                MessageType::INFO,
                format!("duet: joined room {short} ({peers} other peer(s))"),
            );
        } else {
            self.show(
                MessageType::INFO,
                format!("duet: back online in room {short}; edits synced"),
            );
        }
        self.status();
        self.publish_peers();
    }

    /// Connects an open document to its file in the room: the room's text wins, and the
    /// editor's previous text is kept in a recovery file if it differed. A file the room does
    /// not have yet is added to it.
    fn link(&mut self, uri: &Url) {
        let Some(room) = self.room.as_mut().filter(|r| r.link == Link::Synced) else {
            return;
        };
        let Some(doc) = self.docs.get_mut(uri) else {
            return;
        };
        let Some(path) = doc.path.clone() else { return };
        let mut notice = None;
        match room.replica.link(&path) {
            Some(room_text) => {
                let current = doc.shadow.crdt_text().to_string();
                if current != room_text {
                    // A final line break only the editor has (Neovim's 'eol') is no text of
                    // the user's: nothing to recover.
                    let worth_saving = !current.trim().is_empty()
                        && current.strip_suffix('\n') != Some(room_text.as_str());
                    let saved = worth_saving.then(|| {
                        self.workspace
                            .save_recovery(&room.invite.room.to_string(), &path, &current)
                    });
                    let op = Operation::diff(doc.shadow.crdt_text(), &Rope::from_str(&room_text));
                    if let Err(e) = doc.shadow.remote_changed(&op) {
                        tracing::warn!(%path, error = %e, "cannot bring the document to the room's text");
                    }
                    notice = match saved {
                        Some(Ok(file)) => Some((
                            MessageType::INFO,
                            format!("duet: {path} now shows the room's text; your previous text is saved in {}", file.display()),
                        )),
                        Some(Err(e)) => Some((
                            MessageType::WARNING,
                            format!("duet: {path} now shows the room's text; saving your previous text failed: {e}"),
                        )),
                        None => None,
                    };
                }
            }
            None => {
                let frame = room
                    .replica
                    .create(&path, &doc.shadow.crdt_text().to_string());
                room.connection.send(frame);
                room.replica.link(&path);
            }
        }
        doc.linked = true;
        if let Some((kind, message)) = notice {
            self.show(kind, message);
        }
        self.flush(uri);
        // Peers already in this file can be shown now; the room may also have a new file.
        self.publish_peers();
    }

    /// Hands peers' changes to the documents they concern.
    fn remote_changed(&mut self) {
        if let Some(room) = self.room.as_mut() {
            let changes = room.replica.take_remote_changes();
            self.apply_remote_changes(changes);
        }
    }

    /// Hands changes of the room's files (peers', or our undoing) to the open documents.
    fn apply_remote_changes(&mut self, changes: Vec<RemoteChange>) {
        let Some(room) = self.room.as_ref() else {
            return;
        };
        let mut touched: Vec<Url> = Vec::new();
        let mut broken: Vec<Url> = Vec::new();
        tracing::debug!(changes = changes.len(), "remote changes");
        for (path, components) in changes {
            if !self
                .docs
                .values()
                .any(|d| d.path.as_deref() == Some(path.as_str()))
            {
                self.stale_identifiers.insert(path.clone());
            }
            for (uri, doc) in self
                .docs
                .iter_mut()
                .filter(|(_, d)| d.linked && d.path.as_deref() == Some(path.as_str()))
            {
                let applied = Operation::from_utf16(doc.shadow.crdt_text(), components.clone())
                    .map_err(|e| e.to_string())
                    .and_then(|op| doc.shadow.remote_changed(&op).map_err(|e| e.to_string()));
                if let Err(e) = applied {
                    tracing::warn!(%path, error = %e, "remote change does not fit the shadow; resyncing");
                    broken.push(uri.clone());
                }
                touched.push(uri.clone());
            }
        }
        // A file removed or replaced by a peer's concurrent creation: follow the room's text.
        let replaced: Vec<Url> = self
            .docs
            .iter()
            .filter(|(_, d)| {
                d.linked && d.path.as_ref().is_some_and(|p| room.replica.link_broken(p))
            })
            .map(|(uri, _)| uri.clone())
            .collect();
        broken.extend(touched.iter().filter(|uri| !self.in_step(uri)).cloned());
        for uri in broken {
            self.resync(&uri);
        }
        for uri in replaced {
            if let Some(doc) = self.docs.get_mut(&uri) {
                doc.linked = false;
            }
            self.link(&uri);
        }
        for uri in touched {
            self.flush(&uri);
        }
    }

    /// Whether the shadow's idea of the room's text still matches the replica's: always their
    /// lengths, and in debug builds (the tests) the texts themselves. A mismatch is a bug; it
    /// is logged, and the caller re-bases the document on the room's text.
    fn in_step(&self, uri: &Url) -> bool {
        let (Some(room), Some(doc)) = (self.room.as_ref(), self.docs.get(uri)) else {
            return true;
        };
        let Some(path) = doc.path.as_deref().filter(|_| doc.linked) else {
            return true;
        };
        let ours = doc.shadow.crdt_text();
        let same = if cfg!(debug_assertions) {
            room.replica.text(path).is_some_and(|t| *ours == t)
        } else {
            room.replica.len_utf16(path) == Some(ours.len_utf16_cu())
        };
        if !same {
            let room_text = room.replica.text(path).unwrap_or_default();
            let first_difference = ours
                .chars()
                .zip(room_text.chars())
                .take_while(|(a, b)| a == b)
                .count();
            tracing::error!(
                %path,
                shadow_chars = ours.len_chars(),
                room_chars = room_text.chars().count(),
                first_difference,
                "the document's shadow lost track of the room's text; resyncing"
            );
        }
        same
    }

    /// Re-bases a document on the room's text after the shadow lost track.
    fn resync(&mut self, uri: &Url) {
        let Some(room) = self.room.as_ref() else {
            return;
        };
        let Some(doc) = self.docs.get_mut(uri) else {
            return;
        };
        if let Some(text) = doc.path.as_deref().and_then(|p| room.replica.text(p)) {
            doc.shadow.resync(&text);
        }
    }

    /// Sends the next `applyEdit` for a document, if one is due.
    fn flush(&mut self, uri: &Url) {
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
                if let Some(at) = doc.undo_cursor.filter(|_| doc.shadow.is_settled()) {
                    doc.undo_cursor = None;
                    self.show_cursor(uri, at);
                }
                return;
            }
            Err(e) => {
                tracing::warn!(%uri, error = %e, "cannot compute the next edit; resyncing");
                self.resync(uri);
                return;
            }
        };
        let (client, events, uri) = (self.client.clone(), self.events.clone(), uri.clone());
        tokio::spawn(async move {
            let request = client.apply_edit(edit.workspace_edit(uri.clone()));
            let applied = match tokio::time::timeout(APPLY_EDIT_TIMEOUT, request).await {
                Ok(Ok(response)) => response.applied,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "applyEdit failed");
                    false
                }
                Err(_) => {
                    tracing::warn!("applyEdit timed out");
                    false
                }
            };
            let _ = events.send(Event::ApplyEditAnswered {
                uri,
                id: edit.id,
                applied,
            });
        });
    }

    // ----- documents ---------------------------------------------------------------------

    /// The editor's message about `uri` was not valid UTF-8: its text of that document can no
    /// longer be trusted, so the document stops being shared (until it is opened again), and
    /// the user is told which and why. Every other document goes on.
    fn invalid_utf8(&mut self, method: &str, uri: Option<Url>) {
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

    fn did_open(&mut self, params: DidOpenTextDocumentParams) {
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
                if self.room.is_some() {
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
            },
        );
        self.link(&item.uri);
    }

    fn did_change(&mut self, params: DidChangeTextDocumentParams) {
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
                    self.flush(&uri);
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
            if !self.cursor_from_editor {
                // Editors without our plugin do not say where the cursor is: use where the
                // user just typed (the echo of a peer's edit is not the user's cursor).
                if let Some(end) = typed_at {
                    self.set_cursor(&uri, end, end);
                }
            }
        }
        self.flush(&uri);
    }

    fn did_close(&mut self, params: DidCloseTextDocumentParams) {
        if let Some(doc) = self.docs.remove(&params.text_document.uri) {
            if let (Some(path), Some(room)) = (doc.path, self.room.as_mut()) {
                if !self.docs.values().any(|d| d.path.as_ref() == Some(&path)) {
                    room.replica.unlink(&path);
                }
            }
        }
    }

    // ----- presence ----------------------------------------------------------------------

    fn cursor(&mut self, params: CursorParams) {
        self.cursor_from_editor = true;
        let Some(doc) = self.docs.get(&params.uri) else {
            return;
        };
        let text = doc.shadow.text();
        let char_at = |p: Position| encoding::position_to_char(text, p, self.encoding).0;
        let head = char_at(params.position);
        let anchor = params.anchor.map_or(head, char_at);
        self.set_cursor(&params.uri, anchor, head);
    }

    /// Our cursor, in chars of the document's text (the editor's).
    fn set_cursor(&mut self, uri: &Url, anchor: usize, head: usize) {
        let Some(doc) = self.docs.get(uri).filter(|d| d.linked) else {
            return;
        };
        let Some(path) = doc.path.clone() else {
            return;
        };
        let text = doc.shadow.text();
        let to_utf16 = |c: usize| encoding::char_to_utf16(text, c).0;
        self.presence = Some(json!({
            "user": self.user(),
            "cursor": {"file": path, "anchor": to_utf16(anchor), "head": to_utf16(head)},
        }));
        self.send_presence();
    }

    /// Sends our latest presence, unless one went out less than [`PRESENCE_INTERVAL`] ago;
    /// then it goes out on a tick.
    fn send_presence(&mut self) {
        let Some(room) = self.room.as_mut() else {
            return;
        };
        if self.presence.is_none() {
            return;
        }
        if let Some(due) = self.presence_sent.map(|sent| sent + PRESENCE_INTERVAL) {
            if Instant::now() < due {
                // One tick per interval, however many cursor moves come meanwhile.
                if !std::mem::replace(&mut self.presence_tick, true) {
                    tick_at(&self.events, due);
                }
                return;
            }
        }
        if let Some(frame) = self
            .presence
            .take()
            .and_then(|state| room.replica.set_presence(&state))
        {
            room.connection.send(frame);
            self.presence_sent = Some(Instant::now());
        }
    }

    fn user(&self) -> Value {
        let name = self.settings.name.clone().unwrap_or_else(default_name);
        let color = self
            .settings
            .color
            .clone()
            .unwrap_or_else(|| default_color(&name).into());
        json!({"name": name, "color": color})
    }

    /// Tells the editor where everyone else is: `duet/peers` for our plugins, and hint
    /// diagnostics for editors without one (opt-in).
    fn publish_peers(&mut self) {
        let peers = self
            .room
            .as_ref()
            .map(|r| r.replica.peers())
            .unwrap_or_default();
        let mut listed = Vec::new();
        let mut by_uri: HashMap<Url, Vec<Diagnostic>> = HashMap::new();
        for peer in &peers {
            let mut entry =
                json!({"clientId": peer.client_id, "name": peer.name, "color": peer.color});
            if let Some((file, anchor, head)) = &peer.cursor {
                entry["path"] = json!(file);
                let open = self
                    .docs
                    .iter()
                    .find(|(_, d)| d.path.as_deref() == Some(file.as_str()));
                match open {
                    Some((uri, doc)) => {
                        let text = doc.shadow.crdt_text();
                        let position = |cu: u32| {
                            let (c, _) = encoding::utf16_to_char(text, cu as usize);
                            encoding::char_to_position(text, c, self.encoding).0
                        };
                        let (anchor, head) = (position(*anchor), position(*head));
                        entry["uri"] = json!(uri);
                        entry["anchor"] = json!(anchor);
                        entry["head"] = json!(head);
                        entry["range"] = json!(Range::new(anchor.min(head), anchor.max(head)));
                        by_uri.entry(uri.clone()).or_default().push(Diagnostic {
                            range: Range::new(head, head),
                            severity: Some(DiagnosticSeverity::HINT),
                            source: Some("duet".into()),
                            message: format!("{} is here", peer.name),
                            ..Diagnostic::default()
                        });
                    }
                    // Not open here: where the file would be, so that an editor can open it
                    // to follow the peer (positions need the text, which the editor has then).
                    None => {
                        if let Ok(uri) = Url::from_file_path(self.workspace.root().join(file)) {
                            entry["uri"] = json!(uri);
                        }
                    }
                }
            }
            listed.push(entry);
        }
        self.notify::<PeersNotification>(json!({"peers": listed}));
        self.status();
        if self.settings.peer_diagnostics.unwrap_or(false) {
            let stale: Vec<Url> = self
                .peer_diagnostics
                .iter()
                .filter(|u| !by_uri.contains_key(*u))
                .cloned()
                .collect();
            for uri in stale {
                self.publish_diagnostics(uri, Vec::new());
            }
            self.peer_diagnostics = by_uri.keys().cloned().collect();
            for (uri, diagnostics) in by_uri {
                self.publish_diagnostics(uri, diagnostics);
            }
        }
    }

    fn clear_peer_diagnostics(&mut self) {
        for uri in std::mem::take(&mut self.peer_diagnostics) {
            self.publish_diagnostics(uri, Vec::new());
        }
    }

    fn publish_diagnostics(&self, uri: Url, diagnostics: Vec<Diagnostic>) {
        self.post(
            move |client| async move { client.publish_diagnostics(uri, diagnostics, None).await },
        );
    }

    // ----- completion ------------------------------------------------------------------------

    fn completion(&mut self, params: CompletionParams) -> Option<CompletionResponse> {
        let uri = params.text_document_position.text_document.uri;
        let position = params.text_document_position.position;
        self.refresh_identifiers();
        let doc = self.docs.get_mut(&uri)?;
        if self.helix {
            // Helix saves the text now, to restore it when the user previews an item: see
            // `Shadow::completion_requested`.
            doc.shadow.completion_requested();
        }
        let text = doc.shadow.text();
        let (cursor, _) = encoding::position_to_char(text, position, self.encoding);
        let line_start = text.line_to_char(text.char_to_line(cursor));
        let line_prefix = text.slice(line_start..cursor).to_string();
        let suggestions = self.engine.complete(&Request {
            language: &doc.language,
            line_prefix: &line_prefix,
            identifiers: Some(&self.identifiers),
            limit: 50,
        });
        let items = suggestions
            .into_iter()
            .enumerate()
            .map(|(rank, s)| {
                let start_char = line_start
                    + line_prefix[..s.replace_start.min(line_prefix.len())]
                        .chars()
                        .count();
                let start = encoding::char_to_position(text, start_char, self.encoding).0;
                let (new_text, format) = match (&s.snippet, self.snippets) {
                    (Some(snippet), true) => (snippet.clone(), InsertTextFormat::SNIPPET),
                    _ => (s.insert_text.clone(), InsertTextFormat::PLAIN_TEXT),
                };
                CompletionItem {
                    label: s.label,
                    kind: Some(match s.kind {
                        SuggestionKind::Snippet => CompletionItemKind::SNIPPET,
                        SuggestionKind::Keyword => CompletionItemKind::KEYWORD,
                        SuggestionKind::Identifier => CompletionItemKind::TEXT,
                    }),
                    detail: Some(s.detail),
                    sort_text: Some(format!("{rank:04}")),
                    filter_text: Some(
                        line_prefix[s.replace_start.min(line_prefix.len())..].to_string(),
                    ),
                    insert_text_format: Some(format),
                    text_edit: Some(CompletionTextEdit::Edit(TextEdit::new(
                        Range::new(start, position),
                        new_text,
                    ))),
                    ..CompletionItem::default()
                }
            })
            .collect();
        Some(CompletionResponse::List(CompletionList {
            is_incomplete: true,
            items,
        }))
    }

    /// Re-indexes the identifiers of room files that peers changed since the last completion
    /// (open documents are followed edit by edit), and indexes room files not seen yet.
    fn refresh_identifiers(&mut self) {
        let Some(room) = &self.room else { return };
        for path in std::mem::take(&mut self.stale_identifiers) {
            match room.replica.text(&path) {
                Some(text) => self.identifiers.set_document(&path, &text),
                None => {
                    self.identifiers.remove_document(&path);
                }
            }
        }
        for path in room.replica.paths() {
            if !self.identifiers.has_document(&path) {
                if let Some(text) = room.replica.text(&path) {
                    self.identifiers.set_document(&path, &text);
                }
            }
        }
    }

    // ----- commands ----------------------------------------------------------------------------

    fn command(
        &mut self,
        params: ExecuteCommandParams,
        reply: oneshot::Sender<Result<Option<Value>, String>>,
    ) {
        let argument = params
            .arguments
            .first()
            .and_then(Value::as_str)
            .map(str::to_string);
        let result = match params.command.as_str() {
            "duet.joinRoom" => match argument.as_deref().map(Invite::parse) {
                Some(Ok(invite)) => {
                    let room = invite.room.to_string();
                    self.join(invite);
                    Ok(Some(json!({"room": room})))
                }
                Some(Err(e)) => Err(format!("duet: cannot join: {e}")),
                None => Err(
                    "duet.joinRoom needs an invite: ws://HOST:PORT/ws/<room>?token=<token>".into(),
                ),
            },
            "duet.createRoom" => {
                // The server named, else the configured one (or that of the configured invite).
                let server = argument
                    .or_else(|| self.settings.server.clone())
                    .or_else(|| Some(self.settings.invite().ok()??.server))
                    .unwrap_or_else(|| "http://127.0.0.1:8000".into());
                self.create_room(server, reply);
                return;
            }
            "duet.leaveRoom" => {
                let was_in_room = self.room.is_some();
                self.leave();
                self.show(
                    MessageType::INFO,
                    if was_in_room {
                        "duet: left the room"
                    } else {
                        "duet: not in a room"
                    }
                    .into(),
                );
                Ok(None)
            }
            "duet.undo" => self.undo(&params.arguments, History::Undo),
            "duet.redo" => self.undo(&params.arguments, History::Redo),
            "duet.status" => {
                let mut status = self.status_value();
                self.show(MessageType::INFO, format!("duet: {status}"));
                if let Some(room) = &self.room {
                    // Compare with `sha256sum`, or with another bridge's status: equal digests,
                    // equal texts.
                    let digests: serde_json::Map<String, Value> = room
                        .replica
                        .paths()
                        .into_iter()
                        .map(|path| {
                            let digest = room.replica.text(&path).map(|t| sha256_hex(&t));
                            (path, json!(digest))
                        })
                        .collect();
                    status["sha256"] = json!(digests);
                }
                Ok(Some(status))
            }
            other => Err(format!(
                "unknown command {other:?}; duet's commands are {}",
                COMMANDS.join(", ")
            )),
        };
        if let Err(e) = &result {
            self.show(MessageType::ERROR, e.clone());
        }
        let _ = reply.send(result);
    }

    /// `duet.undo` / `duet.redo` `[uri?, count?]`: undoes (or redoes) the user's own last edits
    /// in a document (by default the one they last typed in), as a change of the room that
    /// reaches the editor like a peer's; the cursor then goes where it changed the text.
    fn undo(&mut self, arguments: &[Value], history: History) -> Result<Option<Value>, String> {
        let (word, key) = match history {
            History::Undo => ("undo", "undone"),
            History::Redo => ("redo", "redone"),
        };
        let uri = match arguments.first().and_then(Value::as_str) {
            Some(uri) => {
                Url::parse(uri).map_err(|e| format!("duet: {uri:?} is not a document URI: {e}"))?
            }
            None => self
                .last_typed
                .clone()
                .ok_or_else(|| format!("duet: nothing typed yet, nothing to {word}"))?,
        };
        let steps = arguments
            .get(1)
            .and_then(Value::as_u64)
            .unwrap_or(1)
            .clamp(1, MAX_UNDO_STEPS) as usize;
        let Some(room) = self.room.as_mut() else {
            return Err(format!("duet: not in a room, nothing to {word}"));
        };
        let Some(path) = self
            .docs
            .get(&uri)
            .filter(|d| d.linked)
            .and_then(|d| d.path.clone())
        else {
            return Err(format!("duet: {uri} is not shared in the room"));
        };
        let (done, frames) = room.replica.undo(&path, history, steps);
        for frame in frames {
            room.connection.send(frame);
        }
        let changes = room.replica.take_remote_changes();
        // The cursor goes where the last step's change begins (the same offset before and
        // after it).
        let at = changes
            .iter()
            .rev()
            .find(|(p, _)| *p == path)
            .map(|(_, components)| match components.first() {
                Some(Component::Retain(n)) => *n,
                _ => 0,
            });
        if let Some(doc) = self.docs.get_mut(&uri) {
            doc.undo_cursor = at;
        }
        self.apply_remote_changes(changes);
        if done == 0 {
            self.show(
                MessageType::INFO,
                format!("duet: nothing of yours to {word} in {path}"),
            );
        }
        Ok(Some(json!({ key: done })))
    }

    /// Puts the editor's cursor at a UTF-16 offset of a settled document's text.
    fn show_cursor(&self, uri: &Url, at: usize) {
        let Some(doc) = self.docs.get(uri).filter(|_| self.show_document) else {
            return;
        };
        let text = doc.shadow.text();
        let (c, _) = encoding::utf16_to_char(text, at);
        let (position, _) = encoding::char_to_position(text, c, self.encoding);
        let params = ShowDocumentParams {
            uri: uri.clone(),
            external: Some(false),
            take_focus: Some(true),
            selection: Some(Range::new(position, position)),
        };
        self.post(move |client| async move {
            // Later messages wait for this one: an editor that does not answer only keeps its
            // cursor where it was.
            let shown = tokio::time::timeout(ANSWER_TIMEOUT, client.show_document(params)).await;
            if !matches!(shown, Ok(Ok(true))) {
                tracing::debug!(?shown, "the editor did not show the undone change");
            }
        });
    }

    /// Creates a room over REST with the open files of the workspace, then joins it.
    fn create_room(
        &mut self,
        server: String,
        reply: oneshot::Sender<Result<Option<Value>, String>>,
    ) {
        let files: serde_json::Map<String, Value> = self
            .docs
            .values()
            .filter_map(|d| Some((d.path.clone()?, json!(d.shadow.text().to_string()))))
            .collect();
        let events = self.events.clone();
        let ca = self.settings.ca.clone();
        let create_token = self.settings.create_token.clone();
        tokio::spawn(async move {
            let result = async {
                let base = server
                    .trim_end_matches('/')
                    .replacen("ws://", "http://", 1)
                    .replacen("wss://", "https://", 1);
                let http = match base.starts_with("https://") {
                    true => tls::http_client(tls::client_config(ca.as_deref())?)?,
                    false => reqwest::Client::new(),
                };
                let mut request = http.post(format!("{base}/rooms"));
                if let Some(secret) = &create_token {
                    request = request.bearer_auth(secret);
                }
                let response = request
                    .json(&json!({"files": files}))
                    .timeout(Duration::from_secs(10))
                    .send()
                    .await
                    .map_err(|e| match tls::explain(&e, host_of(&base)) {
                        Some(why) => why,
                        None => format!("{base} is not reachable: {e}"),
                    })?;
                let status = response.status();
                let body: Value = response
                    .json()
                    .await
                    .map_err(|e| format!("unexpected answer from {base}: {e}"))?;
                if !status.is_success() {
                    return Err(format!(
                        "{base} answered {status}: {}",
                        body["error"].as_str().unwrap_or("")
                    ));
                }
                let invite = body["invite"]
                    .as_str()
                    .ok_or("the server's answer has no invite")?;
                // The server builds the invite from the address we used; keep ours.
                let mut invite = Invite::parse(invite).map_err(|e| e.to_string())?;
                invite.server = base;
                Ok(invite)
            }
            .await;
            let _ = events.send(Event::RoomCreated(result, reply));
        });
    }

    fn status_value(&self) -> Value {
        match &self.room {
            Some(room) => json!({
                "state": match room.link {
                    Link::Connecting => "connecting",
                    Link::Synced => "connected",
                    Link::Offline => "offline",
                },
                "room": room.invite.room,
                "server": room.invite.server,
                "invite": room.invite.to_invite_string(),
                "peers": room.replica.peers().iter().map(|p| json!({"name": p.name, "color": p.color})).collect::<Vec<_>>(),
                "files": room.replica.paths(),
            }),
            None => json!({"state": "idle"}),
        }
    }

    // ----- talking to the editor ---------------------------------------------------------------

    fn status(&mut self) {
        let mut status = self.status_value();
        if let Some(o) = status.as_object_mut() {
            o.remove("invite");
        }
        if self.status_sent.as_ref() != Some(&status) {
            self.status_sent = Some(status.clone());
            self.notify::<StatusNotification>(status);
        }
    }

    /// Queues a message to the editor. Messages go out one after another, in the order they
    /// were queued (a spawned task each could overtake one another: "connected" after
    /// "offline"), from a task of their own, so the session never waits for the editor.
    fn post<F, Fut>(&self, message: F)
    where
        F: FnOnce(Client) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let _ = self
            .outbox
            .send(Box::new(move |client| Box::pin(message(client))));
    }

    fn show(&self, kind: MessageType, message: String) {
        tracing::info!(%message, "message to the user");
        self.post(move |client| async move { client.show_message(kind, message).await });
    }

    fn notify<N: notification::Notification<Params = Value>>(&self, params: Value) {
        self.post(move |client| async move { client.send_notification::<N>(params).await });
    }

    fn progress(&self, generation: u64, kind: &str, message: String) {
        let token = NumberOrString::String(format!("duet-join-{generation}"));
        let value = match kind {
            "begin" => WorkDoneProgress::Begin(WorkDoneProgressBegin {
                title: "duet".into(),
                message: Some(message),
                ..WorkDoneProgressBegin::default()
            }),
            _ => WorkDoneProgress::End(WorkDoneProgressEnd {
                message: Some(message),
            }),
        };
        let begin = kind == "begin";
        self.post(move |client| async move {
            if begin {
                // The token must exist before it is used; an editor that refuses (or does not
                // answer) just shows no spinner.
                let create = client.send_request::<request::WorkDoneProgressCreate>(
                    WorkDoneProgressCreateParams {
                        token: token.clone(),
                    },
                );
                if !matches!(
                    tokio::time::timeout(ANSWER_TIMEOUT, create).await,
                    Ok(Ok(()))
                ) {
                    return;
                }
            }
            client
                .send_notification::<notification::Progress>(ProgressParams {
                    token,
                    value: ProgressParamsValue::WorkDone(value),
                })
                .await;
        });
    }
}

/// A room's id as people see it: its first 8 characters.
fn short_id(invite: &Invite) -> String {
    invite.room.to_string()[..8].to_string()
}

/// Sends the session a [`Event::Tick`] at `when`, to look again at what was held back.
fn tick_at(events: &mpsc::UnboundedSender<Event>, when: Instant) {
    let events = events.clone();
    tokio::spawn(async move {
        tokio::time::sleep_until(when.into()).await;
        let _ = events.send(Event::Tick);
    });
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

/// A colour for someone who chose none, from their name: people in one room without colours
/// of their own still look different (FNV-1a, so every bridge picks the same for a name).
fn default_color(name: &str) -> &'static str {
    const PALETTE: [&str; 8] = [
        "#e5c07b", "#61afef", "#c678dd", "#98c379", "#e06c75", "#56b6c2", "#d19a66", "#be5046",
    ];
    let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    PALETTE[(hash % PALETTE.len() as u64) as usize]
}

fn default_name() -> String {
    std::env::var("USER").unwrap_or_else(|_| "anonymous".into())
}

/// `duet/status`: the room, the connection state and the peers.
pub enum StatusNotification {}

impl notification::Notification for StatusNotification {
    type Params = Value;
    const METHOD: &'static str = "duet/status";
}

/// `duet/peers`: everyone else in the room and where they are.
pub enum PeersNotification {}

impl notification::Notification for PeersNotification {
    type Params = Value;
    const METHOD: &'static str = "duet/peers";
}

/// The SHA-256 of a text's UTF-8 bytes, in lowercase hex (as `sha256sum` prints it).
fn sha256_hex(text: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
