//! `duet-lsp`: started by the editor, speaks LSP on stdin/stdout. Logs go to stderr, or to the
//! file named by `DUET_LOG_FILE` — never to stdout, which is the LSP channel.

use duet_lsp::backend::Backend;
use duet_lsp::session::Session;
use tokio::sync::mpsc;
use tower_lsp::{LspService, Server};

#[tokio::main]
async fn main() {
    init_tracing();
    let (events, inbox) = mpsc::unbounded_channel();
    let (service, socket) = LspService::build(move |client| {
        tokio::spawn(Session::new(client, events.clone()).run(inbox));
        Backend::new(events)
    })
    .custom_method("duet/cursor", Backend::cursor)
    .finish();
    Server::new(tokio::io::stdin(), tokio::io::stdout(), socket)
        .serve(service)
        .await;
}

fn init_tracing() {
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("DUET_LOG").unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false);
    match std::env::var_os("DUET_LOG_FILE").map(|path| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
    }) {
        Some(Ok(file)) => builder.with_writer(std::sync::Mutex::new(file)).init(),
        _ => builder.with_writer(std::io::stderr).init(),
    }
}
