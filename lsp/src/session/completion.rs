//! Completion: the autocomplete engine shared with the server, fed with the identifiers of
//! the open documents (followed edit by edit) and of the room's other files.

use duet_server::autocomplete::{Request, SuggestionKind};
use tower_lsp::lsp_types::*;

use super::Session;
use crate::encoding;

impl Session {
    pub(super) fn completion(&mut self, params: CompletionParams) -> Option<CompletionResponse> {
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
}
