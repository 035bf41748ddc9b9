//! The tower-lsp face of the bridge. Each handler only forwards its message to the session
//! task, before its first `.await`, so that messages keep their order; requests then wait for
//! the session's answer (never for the editor).

use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tower_lsp::jsonrpc::{Error, Result};
use tower_lsp::lsp_types::*;
use tower_lsp::LanguageServer;

use crate::session::{CursorParams, Event};

pub struct Backend {
    events: mpsc::UnboundedSender<Event>,
}

impl Backend {
    pub fn new(events: mpsc::UnboundedSender<Event>) -> Backend {
        Backend { events }
    }

    fn send(&self, event: Event) {
        if self.events.send(event).is_err() {
            tracing::error!("the session task has stopped");
        }
    }

    async fn ask<T>(&self, event: impl FnOnce(oneshot::Sender<T>) -> Event) -> Result<T> {
        let (reply, answer) = oneshot::channel();
        self.send(event(reply));
        answer.await.map_err(|_| Error::internal_error())
    }

    /// `duet/cursor`, from our editor plugins.
    pub async fn cursor(&self, params: CursorParams) {
        self.send(Event::Cursor(params));
    }
}

#[tower_lsp::async_trait]
impl LanguageServer for Backend {
    async fn initialize(&self, params: InitializeParams) -> Result<InitializeResult> {
        self.ask(|reply| Event::Initialize(Box::new(params), reply))
            .await
    }

    async fn initialized(&self, _: InitializedParams) {
        self.send(Event::Initialized);
    }

    async fn shutdown(&self) -> Result<()> {
        self.ask(Event::Shutdown).await
    }

    async fn did_open(&self, params: DidOpenTextDocumentParams) {
        self.send(Event::DidOpen(params));
    }

    async fn did_change(&self, params: DidChangeTextDocumentParams) {
        self.send(Event::DidChange(params));
    }

    async fn did_close(&self, params: DidCloseTextDocumentParams) {
        self.send(Event::DidClose(params));
    }

    async fn completion(&self, params: CompletionParams) -> Result<Option<CompletionResponse>> {
        self.ask(|reply| Event::Completion(params, reply)).await
    }

    async fn symbol(
        &self,
        params: WorkspaceSymbolParams,
    ) -> Result<Option<Vec<SymbolInformation>>> {
        self.ask(|reply| Event::WorkspaceSymbol(params, reply))
            .await
    }

    async fn execute_command(&self, params: ExecuteCommandParams) -> Result<Option<Value>> {
        self.ask(|reply| Event::Command(params, reply))
            .await?
            .map_err(|message| Error {
                code: tower_lsp::jsonrpc::ErrorCode::InvalidParams,
                message: message.into(),
                data: None,
            })
    }
}
