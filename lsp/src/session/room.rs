//! The room: joining (invite, connection, replica), the connection's events, linking open
//! documents to the room's files, and handing peers' changes to them; re-basing a document on
//! the room's text when its shadow lost track.
//!
//! A join while in a room keeps the user in the old one until the new one has synced
//! ([`Session::joining_net`]); events of a connection that is no longer ours are ignored
//! (each join has its own generation).

use std::collections::HashSet;
use std::time::{Duration, Instant, SystemTime};

use serde_json::json;
use tokio::sync::oneshot;
use tower_lsp::lsp_types::*;

use super::commands::CreateRoomError;
use super::{CommandResult, Event, Session, ToEditor};
use duet_server::protocol::Presence;

use crate::config::Invite;
use crate::connection::{Connection, NetEvent};
use crate::replica::{RemoteChange, Replica};

/// Where the connection to a room stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Connectivity {
    Connecting,
    Synced,
    Offline,
}

pub(super) struct Room {
    /// Which join this is: events of an earlier connection are ignored.
    pub(super) generation: u64,
    pub(super) invite: Invite,
    pub(super) connection: Connection,
    pub(super) replica: Replica,
    pub(super) connectivity: Connectivity,
    /// When `connectivity` last changed.
    pub(super) since: SystemTime,
    /// The room's files we know of: one not among them is new (see [`Session::new_files`]).
    pub(super) known_files: HashSet<String>,
    pub(super) ever_synced: bool,
    /// The user was told the server cannot be reached (once per join).
    warned_unreachable: bool,
    /// When we last asked the server again for what we lack: an update that waits for one
    /// that never came.
    asked_again: Option<Instant>,
}

impl Session {
    /// A connection's event: for the room we are in, the one we are joining, or (from an
    /// earlier join) nobody.
    pub(super) fn net(&mut self, generation: u64, event: NetEvent) {
        if self
            .room
            .as_ref()
            .is_some_and(|r| r.generation == generation)
        {
            self.room_net(event);
        } else if self
            .joining
            .as_ref()
            .is_some_and(|r| r.generation == generation)
        {
            self.joining_net(event);
        }
    }

    /// `duet.createRoom`'s REST request was answered: join the new room.
    pub(super) fn room_created(
        &mut self,
        result: Result<Invite, CreateRoomError>,
        reply: oneshot::Sender<CommandResult>,
    ) {
        match result {
            Ok(invite) => {
                let text = invite.to_invite_string();
                self.show(
                    MessageType::INFO,
                    format!("duet: room created. Invite (share it): {text}"),
                );
                self.join(invite);
                if self.helix {
                    // The message is gone at the next one: the invite stays in the status.
                    self.open_status_file();
                }
                let _ = reply.send(Ok(Some(json!({"invite": text}))));
            }
            Err(e) => {
                self.show(
                    MessageType::ERROR,
                    format!("duet: could not create a room: {e}"),
                );
                let _ = reply.send(Err(e.to_string()));
            }
        }
    }

    /// Joins a room. While we are in another one, that one stays until the new one has synced
    /// (see [`Session::joining_net`]).
    pub(super) fn join(&mut self, invite: Invite) {
        self.generation += 1;
        let generation = self.generation;
        let events = self.events.clone();
        let connection = Connection::spawn(&invite, self.settings.ca.clone(), move |event| {
            let _ = events.send(Event::Net(generation, event));
        });
        let mut replica = Replica::new();
        replica.set_presence(&Presence {
            user: self.user(),
            cursor: None,
        });
        tracing::info!(room = %invite.room, server = %invite.server, "joining");
        self.tell(ToEditor::ProgressBegin {
            generation,
            message: format!("connecting to {}", invite.server),
        });
        let room = Room {
            generation,
            invite,
            connection,
            replica,
            connectivity: Connectivity::Connecting,
            since: SystemTime::now(),
            known_files: HashSet::new(),
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

    pub(super) fn leave(&mut self) {
        self.joining = None;
        self.remember_room();
        self.away = None;
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
        self.tell(ToEditor::ProgressEnd {
            generation,
            message: "failed".into(),
        });
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

    fn room_net(&mut self, event: NetEvent) {
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
                    if received.synced && room.connectivity != Connectivity::Synced {
                        self.synced();
                    }
                    if received.doc_changed {
                        self.remote_changed();
                        self.new_files();
                    }
                    if received.presence_changed {
                        self.publish_peers();
                    }
                }
                Err(e) => tracing::warn!(error = %e, "ignoring a frame from the server"),
            },
            NetEvent::Disconnected(reason) => {
                let message = if room.connectivity == Connectivity::Synced {
                    room.connectivity = Connectivity::Offline;
                    room.since = SystemTime::now();
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
                    // Editors without a plugin get a lasting sign (see `publish_peers`).
                    self.publish_peers();
                }
            }
            NetEvent::Refused(reason) => {
                let generation = room.generation;
                self.show(
                    MessageType::ERROR,
                    format!("duet: cannot join the room: {reason}"),
                );
                self.tell(ToEditor::ProgressEnd {
                    generation,
                    message: "failed".into(),
                });
                self.leave();
            }
        }
    }

    pub(super) fn synced(&mut self) {
        let Some(room) = self.room.as_mut() else {
            return;
        };
        let generation = room.generation;
        let first = !room.ever_synced;
        room.connectivity = Connectivity::Synced;
        room.since = SystemTime::now();
        room.ever_synced = true;
        if first {
            // What the room holds when we arrive is not news.
            room.known_files = room.replica.paths().into_iter().collect();
        }
        let short = short_id(&room.invite);
        if first {
            // Before our documents join: what they add is not news.
            self.welcome_back();
        }
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
            self.tell(ToEditor::ProgressEnd {
                generation,
                message: "connected".into(),
            });
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
            self.new_files();
        }
        self.status();
        self.publish_peers();
    }

    /// Connects an open document to its file in the room: the room's text wins, and the
    /// editor's previous text is kept in a recovery file if it differed. A file the room does
    /// not have yet is added to it.
    pub(super) fn link(&mut self, uri: &Url) {
        let Some(room) = self
            .room
            .as_mut()
            .filter(|r| r.connectivity == Connectivity::Synced)
        else {
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
                // A room file the folder lacks, opened as a new buffer (Helix's symbol picker,
                // `:e`): it is created in the folder with the room's text.
                if let Err(e) = self.workspace.create_room_file(&path, &room_text) {
                    tracing::warn!(%path, error = %e, "cannot create the room's file");
                }
                if current != room_text {
                    doc.peers_when_settled = true;
                    // A final line break only the editor has (Neovim's 'eol') is no text of
                    // the user's: nothing to recover.
                    let worth_saving = !current.trim().is_empty()
                        && current.strip_suffix('\n') != Some(room_text.as_str());
                    let saved = worth_saving.then(|| {
                        self.workspace
                            .save_recovery(&room.invite.room.to_string(), &path, &current)
                    });
                    if let Err(e) = doc.shadow.remote_replaced(&room_text) {
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
                room.known_files.insert(path.clone());
            }
        }
        doc.linked = true;
        if let Some((kind, message)) = notice {
            self.show(kind, message);
        }
        self.send_next_edit(uri);
        // Peers already in this file can be shown now; the room may also have a new file.
        self.publish_peers();
    }

    /// Hands peers' changes to the documents they concern.
    pub(super) fn remote_changed(&mut self) {
        if let Some(room) = self.room.as_mut() {
            let changes = room.replica.take_remote_changes();
            self.apply_remote_changes(changes);
        }
    }

    /// Hands changes of the room's files (peers', or our undoing) to the open documents.
    pub(super) fn apply_remote_changes(&mut self, changes: Vec<RemoteChange>) {
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
                if let Err(e) = doc.shadow.remote_changed_utf16(components.clone()) {
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
            self.send_next_edit(&uri);
        }
    }

    /// Whether the shadow's idea of the room's text still matches the replica's: always their
    /// lengths, and in debug builds (the tests) the texts themselves. A mismatch is a bug; it
    /// is logged, and the caller re-bases the document on the room's text.
    pub(super) fn in_step(&self, uri: &Url) -> bool {
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
    pub(super) fn resync(&mut self, uri: &Url) {
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
}

/// A room's id as people see it: its first 8 characters.
pub(super) fn short_id(invite: &Invite) -> String {
    invite.room.to_string()[..8].to_string()
}
