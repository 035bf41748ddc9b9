//! Presence: our cursor out to the room (from our editor plugins' `duet/cursor`, or where the
//! user last typed), at most every [`PRESENCE_INTERVAL`]; everyone else's in, to the editor
//! (`duet/peers`, the status, and hint diagnostics when asked for).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use duet_server::protocol::{Cursor, Presence, User};
use serde_json::json;
use tower_lsp::lsp_types::*;

use super::{tick_at, Session, ToEditor};
use crate::encoding;

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

    /// Tells the editor where everyone else is: `duet/peers` for our plugins, and hint
    /// diagnostics for editors without one (opt-in).
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
                let (file, anchor, head) = (&cursor.file, cursor.anchor(), cursor.head);
                entry["path"] = json!(file);
                let open = self
                    .docs
                    .iter()
                    .find(|(_, d)| d.path.as_deref() == Some(file.as_str()));
                match open {
                    Some((uri, doc)) => {
                        let text = doc.shadow.crdt_text();
                        let position =
                            |cu: u32| encoding::utf16_to_position(text, cu as usize, self.encoding);
                        let (anchor, head) = (position(anchor), position(head));
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
        self.tell(ToEditor::Peers(json!({"peers": listed})));
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
