//! The status: `duet/status` for our plugins (sent when it changes), and the readable status
//! ([`crate::status`]) that `duet.status` answers in every editor. Helix shows one status line
//! that the next message replaces, so for Helix the bridge also keeps the readable status in
//! `.duet/status.md` (rewritten when it changes) and `duet.status` opens it there.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use tower_lsp::lsp_types::*;

use super::room::Connectivity;
use super::{Session, ToEditor};
use crate::status::{Overview, PeerPlace, RoomFacts};
use crate::workspace::{NotShared, STATUS_FILE};

impl Session {
    /// The state as data: `state`, `since` (Unix seconds), `room`, `server`, `invite`, `peers`
    /// (name, colour), `files` (the room's).
    pub(super) fn status_value(&self) -> Value {
        match &self.room {
            Some(room) => json!({
                "state": state_name(room.connectivity),
                "since": room.since.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default(),
                "room": room.invite.room,
                "server": room.invite.server,
                "invite": room.invite.to_invite_string(),
                "peers": room.replica.peers().iter().map(|p| json!({"name": p.name, "color": p.color})).collect::<Vec<_>>(),
                "files": room.replica.paths(),
            }),
            None => json!({"state": "idle"}),
        }
    }

    /// Sends `duet/status` if it changed (without the invite: it has the token), and for Helix
    /// rewrites the readable status if that changed.
    pub(super) fn status(&mut self) {
        let mut status = self.status_value();
        if let Some(o) = status.as_object_mut() {
            o.remove("invite");
        }
        if self.status_sent.as_ref() != Some(&status) {
            self.status_sent = Some(status.clone());
            self.tell(ToEditor::Status(status));
        }
        // Only once duet is in use: not every folder Helix opens needs a status file.
        if self.helix && (self.room.is_some() || self.status_written.is_some()) {
            self.write_status();
        }
    }

    /// The readable status.
    fn overview(&self) -> Overview {
        let room = self.room.as_ref();
        let peers = room.map(|r| r.replica.peers()).unwrap_or_default();
        let mut open: Vec<(String, Option<String>)> = self
            .docs
            .iter()
            .filter_map(|(uri, doc)| {
                let name = doc.path.clone().unwrap_or_else(|| {
                    uri.to_file_path()
                        .map(|p| p.display().to_string())
                        .unwrap_or(uri.to_string())
                });
                let why_not = match (&doc.path, doc.linked) {
                    (Some(_), true) => None,
                    (Some(_), false) => Some("not yet: waiting for the room".to_string()),
                    (None, _) => match self.workspace.relative_path(uri) {
                        Err(NotShared::StatusFile) => return None,
                        Err(why) => Some(why.to_string()),
                        Ok(_) => Some("your editor sent text that is not valid UTF-8".into()),
                    },
                };
                Some((name, why_not))
            })
            .collect();
        open.sort();
        Overview {
            state: room.map_or("idle", |r| state_name(r.connectivity)),
            since: room.map_or(SystemTime::now(), |r| r.since),
            room: room.map(|r| RoomFacts {
                id: r.invite.room.to_string(),
                server: r.invite.server.clone(),
                invite: r.invite.to_invite_string(),
            }),
            peers: peers
                .iter()
                .map(|peer| PeerPlace {
                    name: peer.name.clone(),
                    file: self
                        .peer_place(peer)
                        .map(|(file, _, _, head)| (file, head.line as usize + 1)),
                })
                .collect(),
            files: room.map(|r| r.replica.paths()).unwrap_or_default(),
            open,
            recent: self.recent.iter().cloned().collect(),
            log_file: crate::logging::file(),
        }
    }

    /// `duet.status`: the state as data, with the readable status as `text`. The message says
    /// it in a line; under Helix the whole status is opened in the editor (`.duet/status.md`).
    pub(super) fn status_command(&mut self) -> Value {
        let overview = self.overview();
        let mut status = self.status_value();
        status["text"] = json!(overview.text());
        let summary = overview.summary();
        let summary = summary.strip_prefix("duet: ").unwrap_or(&summary);
        // Not kept among the recent messages: it is this very status.
        if !self.helix {
            self.tell(ToEditor::Show {
                kind: MessageType::INFO,
                message: format!("duet: status: {summary}"),
            });
            return status;
        }
        let whole = match self.open_status_file() {
            true => format!("whole status in {STATUS_FILE}; :reload it if it was open"),
            false => format!("whole status in {STATUS_FILE}"),
        };
        self.tell(ToEditor::Show {
            kind: MessageType::INFO,
            message: format!("duet: status: {summary} ({whole})"),
        });
        status
    }

    /// Helix: writes the readable status and opens it in the editor; false if it could not.
    pub(super) fn open_status_file(&mut self) -> bool {
        self.status_written = None;
        self.write_status()
            .and_then(|file| Url::from_file_path(file).ok())
            .is_some_and(|uri| self.show_at(uri, Position::default()).is_ok())
    }

    /// Writes the readable status to `.duet/status.md` if it changed; returns the file.
    fn write_status(&mut self) -> Option<std::path::PathBuf> {
        let text = self.overview().text();
        if self.status_written.as_ref() == Some(&text) {
            return Some(self.workspace.root().join(STATUS_FILE));
        }
        match self.workspace.write_status(&text) {
            Ok(file) => {
                self.status_written = Some(text);
                Some(file)
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot write the status file");
                None
            }
        }
    }
}

fn state_name(connectivity: Connectivity) -> &'static str {
    match connectivity {
        Connectivity::Connecting => "connecting",
        Connectivity::Synced => "connected",
        Connectivity::Offline => "offline",
    }
}
