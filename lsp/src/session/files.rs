//! The room's files as the user finds them: listed (and the peers with them) as workspace
//! symbols, which is how Helix picks one; opened on request (`duet.openFile`), a file the
//! folder lacks being created first with the room's text; and a message when a peer adds one.

use serde_json::json;
use tower_lsp::lsp_types::*;

use super::{CommandResult, Session, ToEditor};

impl Session {
    /// `workspace/symbol`: every file of the room (at its start) and every peer (at their
    /// cursor), those whose name holds the query's characters in order (ignoring case).
    pub(super) fn workspace_symbols(&self, query: &str) -> Vec<SymbolInformation> {
        let Some(room) = &self.room else {
            return Vec::new();
        };
        let short = super::room::short_id(&room.invite);
        let mut symbols = Vec::new();
        for path in room.replica.paths() {
            let Some(uri) = self
                .workspace
                .file_of(&path)
                .and_then(|f| Url::from_file_path(f).ok())
            else {
                continue;
            };
            symbols.push(symbol(
                path,
                SymbolKind::FILE,
                Location::new(uri, Range::default()),
                format!("room {short}"),
            ));
        }
        for peer in room.replica.peers() {
            if let Some((file, uri, _, head)) = self.peer_place(&peer) {
                symbols.push(symbol(
                    format!("@{} {file}:{}", peer.name, head.line + 1),
                    SymbolKind::EVENT,
                    Location::new(uri, Range::new(head, head)),
                    "a peer's cursor".into(),
                ));
            }
        }
        symbols.retain(|s| holds_in_order(&s.name, query));
        symbols
    }

    /// Makes sure a room file is in the folder: one it lacks is created with the room's text.
    pub(super) fn materialize(&mut self, path: &str) -> Result<(), String> {
        let room = self.room.as_ref().ok_or("duet: not in a room")?;
        let text = room
            .replica
            .text(path)
            .ok_or_else(|| format!("duet: the room has no file {path:?}"))?;
        self.workspace
            .create_room_file(path, &text)
            .map(|_| ())
            .map_err(|e| format!("duet: cannot create {path} in your folder: {e}"))
    }

    /// Asks the editor to show `uri` with the cursor at `position`.
    pub(super) fn show_at(&mut self, uri: Url, position: Position) -> Result<(), String> {
        if !self.show_document {
            return Err(format!(
                "duet: your editor cannot be asked to open files; open {}",
                uri.to_file_path()
                    .map(|p| p.display().to_string())
                    .unwrap_or(uri.to_string())
            ));
        }
        self.tell(ToEditor::ShowCursor { uri, position });
        Ok(())
    }

    /// `duet.openFile <path>`: opens a file of the room, creating it in the folder first if
    /// the folder lacks it.
    pub(super) fn open_file(&mut self, path: Option<&str>) -> CommandResult {
        let path = path.ok_or("duet.openFile needs a file of the room (see duet.status)")?;
        self.materialize(path)?;
        let uri = self
            .workspace
            .file_of(path)
            .and_then(|f| Url::from_file_path(f).ok())
            .ok_or_else(|| format!("duet: {path:?} is not a path in your folder"))?;
        self.show_at(uri.clone(), Position::default())?;
        Ok(Some(json!({"path": path, "uri": uri})))
    }

    /// Tells the user about files peers added to the room since we last looked.
    pub(super) fn new_files(&mut self) {
        let Some(room) = self.room.as_mut() else {
            return;
        };
        let added: Vec<String> = room
            .replica
            .paths()
            .into_iter()
            .filter(|p| !room.known_files.contains(p))
            .collect();
        room.known_files.extend(added.iter().cloned());
        for path in added {
            self.show(MessageType::INFO, format!("duet: new in the room: {path}"));
        }
    }
}

#[allow(deprecated)] // `deprecated` is a field LSP itself deprecated; it must still be set.
fn symbol(
    name: String,
    kind: SymbolKind,
    location: Location,
    container: String,
) -> SymbolInformation {
    SymbolInformation {
        name,
        kind,
        tags: None,
        deprecated: None,
        location,
        container_name: Some(container),
    }
}

/// Whether `name` holds the characters of `query` in order, ignoring case (what a picker's
/// fuzzy match keeps).
fn holds_in_order(name: &str, query: &str) -> bool {
    let mut name = name.chars().flat_map(char::to_lowercase);
    query
        .chars()
        .flat_map(char::to_lowercase)
        .filter(|c| !c.is_whitespace())
        .all(|q| name.any(|c| c == q))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_query_matches_its_characters_in_order() {
        use super::holds_in_order;
        assert!(holds_in_order("src/util.py", ""));
        assert!(holds_in_order("src/util.py", "utpy"));
        assert!(holds_in_order("@Bob util.py:3", "bob"));
        assert!(!holds_in_order("src/util.py", "yp"));
    }
}
