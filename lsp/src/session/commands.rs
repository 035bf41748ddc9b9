//! The commands (`workspace/executeCommand`): join, create and leave a room, the status, open
//! a room file, jump to or follow a peer, and undo/redo of the user's own edits; the history's
//! are in [`super::history`].

use std::time::Duration;

use duet_server::digest::sha256_hex;
use serde_json::{json, Value};
use thiserror::Error;
use tokio::sync::oneshot;
use tower_lsp::lsp_types::*;

use super::{CommandResult, Event, Session, ToEditor};
use crate::config::{host_of, Invite, InviteError};
use crate::encoding;
use crate::ot::Component;
use crate::replica::History;
use crate::tls;

use super::history::http_client;

pub const COMMANDS: [&str; 15] = [
    "duet.createRoom",
    "duet.joinRoom",
    "duet.leaveRoom",
    "duet.status",
    "duet.openFile",
    "duet.jump",
    "duet.follow",
    "duet.undo",
    "duet.redo",
    "duet.versions",
    "duet.versionText",
    "duet.saveVersion",
    "duet.restore",
    "duet.away",
    "duet.awayText",
];

/// At most this many undo or redo steps at once (`1000u` in Neovim).
const MAX_UNDO_STEPS: u64 = 1000;

/// Why `duet.createRoom` created no room.
#[derive(Debug, Error)]
pub enum CreateRoomError {
    /// The TLS set-up, or the server's certificate, explained.
    #[error("{0}")]
    Tls(String),
    #[error("{0} is not reachable: {1}")]
    Unreachable(String, #[source] reqwest::Error),
    #[error("unexpected answer from {0}: {1}")]
    Answer(String, #[source] reqwest::Error),
    #[error("{0} answered {1}: {2}")]
    Refused(String, reqwest::StatusCode, String),
    #[error("the server's answer has no invite")]
    NoInvite,
    #[error(transparent)]
    Invite(#[from] InviteError),
}

impl Session {
    pub(super) fn command(
        &mut self,
        params: ExecuteCommandParams,
        reply: oneshot::Sender<CommandResult>,
    ) {
        let Some(reply) = self.history_command(&params.command, &params.arguments, reply) else {
            return;
        };
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
            "duet.openFile" => self.open_file(argument.as_deref()),
            "duet.jump" => self.jump(&params.arguments),
            "duet.follow" => self.follow(&params.arguments),
            "duet.undo" => self.undo(&params.arguments, History::Undo),
            "duet.redo" => self.undo(&params.arguments, History::Redo),
            "duet.status" => {
                let mut status = self.status_command();
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
    fn undo(&mut self, arguments: &[Value], history: History) -> CommandResult {
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
    pub(super) fn show_cursor(&self, uri: &Url, at: usize) {
        let Some(doc) = self.docs.get(uri).filter(|_| self.show_document) else {
            return;
        };
        let position = encoding::utf16_to_position(doc.shadow.text(), at, self.encoding);
        self.tell(ToEditor::ShowCursor {
            uri: uri.clone(),
            position,
        });
    }

    /// Creates a room over REST with the open files of the workspace, then joins it.
    fn create_room(&mut self, server: String, reply: oneshot::Sender<CommandResult>) {
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
                let http = http_client(&base, ca.as_deref()).map_err(CreateRoomError::Tls)?;
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
                        Some(why) => CreateRoomError::Tls(why),
                        None => CreateRoomError::Unreachable(base.clone(), e),
                    })?;
                let status = response.status();
                let body: Value = response
                    .json()
                    .await
                    .map_err(|e| CreateRoomError::Answer(base.clone(), e))?;
                if !status.is_success() {
                    let why = body["error"].as_str().unwrap_or("").to_string();
                    return Err(CreateRoomError::Refused(base, status, why));
                }
                let invite = body["invite"].as_str().ok_or(CreateRoomError::NoInvite)?;
                // The server builds the invite from the address we used; keep ours.
                let mut invite = Invite::parse(invite)?;
                invite.server = base;
                Ok(invite)
            }
            .await;
            let _ = events.send(Event::RoomCreated(result, reply));
        });
    }
}
