//! The session's start: `initialize` (what the editor can do, the settings, the completion
//! rules) and `initialized` (joining the configured room).

use std::path::PathBuf;

use tower_lsp::lsp_types::*;

use super::{Session, COMMANDS};
use crate::config::{find_duet_toml, Settings};
use crate::encoding::PositionEncoding;
use crate::workspace::Workspace;

impl Session {
    pub(super) fn initialize(&mut self, params: InitializeParams) -> InitializeResult {
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
        if self.helix {
            crate::logging::for_helix();
        }
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
                workspace_symbol_provider: Some(OneOf::Left(true)),
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

    pub(super) fn initialized(&mut self) {
        match self.settings.invite() {
            Ok(Some(invite)) => self.join(invite),
            Ok(None) => self.status(),
            Err(e) => self.show(MessageType::ERROR, format!("duet: cannot join: {e}")),
        }
    }
}
