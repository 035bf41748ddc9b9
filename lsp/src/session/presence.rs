//! Presence: our cursor out to the room (from our editor plugins' `duet/cursor`, or where the
//! user last typed), at most every [`PRESENCE_INTERVAL`]; everyone else's in, to the editor
//! (`duet/peers`, the status, and hint diagnostics when asked for); going to a peer's cursor
//! once (`duet.jump`) or as it moves (`duet.follow`, for editors without a plugin of ours).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use duet_server::protocol::{Cursor, Presence, User};
use ropey::Rope;
use serde_json::{json, Value};
use tower_lsp::lsp_types::*;

use super::room::Connectivity;
use super::{tick_at, CommandResult, Session, ToEditor};
use crate::encoding;
use crate::replica::Peer;
use crate::status::clock;

/// Our presence goes out at most this often: a cursor update per keystroke would double the
/// traffic for nothing anyone can see.
const PRESENCE_INTERVAL: Duration = Duration::from_millis(100);

/// `duet/cursor`: where the user's cursor is, sent by our editor plugins.
#[derive(Debug, serde::Deserialize)]
pub struct CursorParams {
    pub uri: Url,
    pub position: Position,
    pub anchor: Option<Position>,
}

impl Session {
    pub(super) fn cursor(&mut self, params: CursorParams) {
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
    pub(super) fn set_cursor(&mut self, uri: &Url, anchor: usize, head: usize) {
        let Some(doc) = self.docs.get(uri).filter(|d| d.linked) else {
            return;
        };
        let Some(path) = doc.path.clone() else {
            return;
        };
        let text = doc.shadow.text();
        let to_utf16 = |c: usize| encoding::char_to_utf16(text, c).0 as u32;
        self.presence = Some(Presence {
            user: self.user(),
            cursor: Some(Cursor {
                file: path,
                anchor: Some(to_utf16(anchor)),
                head: to_utf16(head),
            }),
        });
        self.send_presence();
    }

    /// Sends our latest presence, unless one went out less than [`PRESENCE_INTERVAL`] ago;
    /// then it goes out on a tick.
    pub(super) fn send_presence(&mut self) {
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

    pub(super) fn user(&self) -> User {
        let name = self.settings.name.clone().unwrap_or_else(default_name);
        let color = self
            .settings
            .color
            .clone()
            .unwrap_or_else(|| default_color(&name).into());
        User { name, color }
    }

    /// Where a peer's cursor is: their file, its URI here, and their selection (anchor,
    /// head) as positions of the text the editor has (or, for a file not open here, of the
    /// room's text, which is what opening it gives).
    pub(super) fn peer_place(&self, peer: &Peer) -> Option<(String, Url, Position, Position)> {
        let cursor = peer.cursor.as_ref()?;
        let (file, anchor, head) = (&cursor.file, cursor.anchor(), cursor.head);
        let open = self
            .docs
            .iter()
            .find(|(_, d)| d.path.as_deref() == Some(file.as_str()));
        let (uri, text) = match open {
            Some((uri, doc)) => (uri.clone(), doc.shadow.crdt_text().clone()),
            None => {
                let text = self.room.as_ref()?.replica.text(file)?;
                let uri = Url::from_file_path(self.workspace.file_of(file)?).ok()?;
                (uri, Rope::from_str(&text))
            }
        };
        let position = |cu: u32| encoding::utf16_to_position(&text, cu as usize, self.encoding);
        Some((file.clone(), uri, position(anchor), position(head)))
    }

    /// Tells the editor where everyone else is: `duet/peers` for our plugins, and for editors
    /// without one (opt-in, `peerDiagnostics`) hint diagnostics at the peers' cursors and,
    /// while the connection is down, a lasting warning in every shared file.
    pub(super) fn publish_peers(&mut self) {
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
            if let Some(cursor) = &peer.cursor {
                entry["path"] = json!(cursor.file);
            }
            if let Some((_, uri, anchor, head)) = self.peer_place(peer) {
                entry["uri"] = json!(uri);
                entry["anchor"] = json!(anchor);
                entry["head"] = json!(head);
                entry["range"] = json!(Range::new(anchor.min(head), anchor.max(head)));
                if self.docs.contains_key(&uri) {
                    by_uri.entry(uri).or_default().push(Diagnostic {
                        range: Range::new(head, head),
                        severity: Some(DiagnosticSeverity::HINT),
                        source: Some("duet".into()),
                        message: format!("{} is here", peer.name),
                        ..Diagnostic::default()
                    });
                }
            }
            listed.push(entry);
        }
        self.tell(ToEditor::Peers(json!({"peers": listed})));
        self.status();
        self.follow_moved();
        if self.settings.peer_diagnostics.unwrap_or(false) {
            if let Some(room) = self
                .room
                .as_ref()
                .filter(|r| r.connectivity == Connectivity::Offline)
            {
                let sign = Diagnostic {
                    range: Range::default(),
                    severity: Some(DiagnosticSeverity::WARNING),
                    source: Some("duet".into()),
                    message: format!(
                        "duet: offline since {}. Keep typing: your edits are kept and sync when \
                         the server is back.",
                        clock(room.since)
                    ),
                    ..Diagnostic::default()
                };
                for (uri, doc) in &self.docs {
                    if doc.path.is_some() {
                        by_uri
                            .entry(uri.clone())
                            .or_default()
                            .insert(0, sign.clone());
                    }
                }
            }
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

    /// The peer a command names: its client id (a number, or digits), else its name (exactly,
    /// or a unique start of one, ignoring case); with no argument, the only peer there is.
    fn named_peer(&self, who: Option<&Value>) -> Result<Peer, String> {
        let peers = self
            .room
            .as_ref()
            .map(|r| r.replica.peers())
            .ok_or("duet: not in a room")?;
        let Some(who) = who.filter(|w| !w.is_null()) else {
            return match <[Peer; 1]>::try_from(peers) {
                Ok([peer]) => Ok(peer),
                Err(peers) if peers.is_empty() => Err("duet: nobody else is in the room".into()),
                Err(peers) => Err(format!(
                    "duet: name the peer: {}",
                    peers
                        .iter()
                        .map(|p| p.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
            };
        };
        let text = who.as_str().map(str::to_string).unwrap_or(who.to_string());
        let id = who.as_u64().or_else(|| text.parse().ok());
        if let Some(peer) = peers.iter().find(|p| Some(p.client_id) == id) {
            return Ok(peer.clone());
        }
        let lower = text.to_lowercase();
        if let Some(peer) = peers.iter().find(|p| p.name.to_lowercase() == lower) {
            return Ok(peer.clone());
        }
        let mut starting = peers
            .iter()
            .filter(|p| p.name.to_lowercase().starts_with(&lower));
        match (starting.next(), starting.next()) {
            (Some(peer), None) => Ok(peer.clone()),
            (Some(_), Some(_)) => Err(format!(
                "duet: more than one peer's name starts with {text:?}"
            )),
            _ => Err(format!("duet: no peer named {text:?} in the room")),
        }
    }

    /// Takes the editor to a peer's cursor (`window/showDocument`), first creating their file
    /// in the folder if it lacks it. Returns where.
    fn go_to_peer(&mut self, peer: &Peer) -> Result<Value, String> {
        let Some((file, uri, _, head)) = self.peer_place(peer) else {
            return Err(format!("duet: {} has no file open", peer.name));
        };
        self.materialize(&file)?;
        self.show_at(uri.clone(), head)?;
        Ok(json!({"peer": peer.name, "path": file, "uri": uri, "position": head}))
    }

    /// `duet.jump [peer]`: to the peer's cursor, once.
    pub(super) fn jump(&mut self, arguments: &[Value]) -> CommandResult {
        let peer = self.named_peer(arguments.first())?;
        self.go_to_peer(&peer).map(Some)
    }

    /// `duet.follow [peer]`: to the peer's cursor, and again whenever it moves to another line
    /// or file, until the user types, the peer leaves, or `duet.follow` is run without a
    /// peer while following.
    pub(super) fn follow(&mut self, arguments: &[Value]) -> CommandResult {
        if arguments.first().is_none_or(Value::is_null) && self.following.is_some() {
            self.stop_following("asked to");
            return Ok(None);
        }
        let peer = self.named_peer(arguments.first())?;
        self.following = Some((peer.client_id, None));
        self.show(
            MessageType::INFO,
            format!(
                "duet: following {} (type, or run duet.follow again, to stop)",
                peer.name
            ),
        );
        self.follow_moved();
        Ok(Some(json!({"following": peer.name})))
    }

    /// Stops following, saying why.
    pub(super) fn stop_following(&mut self, why: &str) {
        if self.following.take().is_some() {
            self.show(
                MessageType::INFO,
                format!("duet: no longer following ({why})"),
            );
        }
    }

    /// Following: takes the editor along when the followed peer's cursor reached another line
    /// or file.
    fn follow_moved(&mut self) {
        let Some((id, last)) = self.following.clone() else {
            return;
        };
        let Some(peer) = self
            .room
            .as_ref()
            .and_then(|r| r.replica.peers().into_iter().find(|p| p.client_id == id))
        else {
            self.stop_following("the peer left");
            return;
        };
        let Some((file, _, _, head)) = self.peer_place(&peer) else {
            return;
        };
        let now = Some((file, head.line));
        if now != last {
            self.following = Some((id, now));
            if let Err(e) = self.go_to_peer(&peer) {
                tracing::debug!(error = %e, "cannot follow the peer");
            }
        }
    }

    pub(super) fn clear_peer_diagnostics(&mut self) {
        for uri in std::mem::take(&mut self.peer_diagnostics) {
            self.publish_diagnostics(uri, Vec::new());
        }
    }

    fn publish_diagnostics(&self, uri: Url, diagnostics: Vec<Diagnostic>) {
        self.tell(ToEditor::Diagnostics { uri, diagnostics });
    }
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
