//! `duet-lsp`: started by the editor, speaks LSP on stdin/stdout. Logs go where
//! [`duet_lsp::logging`] says — never to stdout, which is the LSP channel.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use duet_lsp::backend::Backend;
use duet_lsp::session::{editor, Session};
use duet_lsp::transport;
use tokio::sync::mpsc;
use tower_lsp::jsonrpc::{Request, Response};
use tower_lsp::{ExitedError, LspService, Server};
use tower_service::Service;

#[tokio::main]
async fn main() {
    // Run by hand in a terminal: answer, instead of waiting for LSP on stdin. (`--stdio`, which
    // some clients pass, is what the bridge does anyway.)
    match std::env::args().nth(1).as_deref() {
        None | Some("--stdio") => {}
        Some("--version" | "-V") => return println!("duet-lsp {}", env!("CARGO_PKG_VERSION")),
        Some("--help" | "-h") => return print!("{USAGE}"),
        Some(other) => {
            eprint!("duet-lsp: unknown argument {other:?}\n\n{USAGE}");
            std::process::exit(2);
        }
    }
    duet_lsp::logging::init();
    let (events, inbox) = mpsc::unbounded_channel();
    let stdin = transport::checked(tokio::io::stdin(), events.clone());
    let (service, socket) = LspService::build(move |client| {
        let (editor, to_editor) = mpsc::unbounded_channel();
        tokio::spawn(editor::deliver(client, to_editor, events.clone()));
        tokio::spawn(Session::new(events.clone(), editor).run(inbox));
        Backend::new(events)
    })
    .custom_method("duet/cursor", Backend::cursor)
    .finish();
    let service = ExitOnExit {
        inner: service,
        shut_down: Arc::default(),
    };
    Server::new(stdin, tokio::io::stdout(), socket)
        .serve(service)
        .await;
}

const USAGE: &str = "\
duet-lsp: duet's bridge, a language server your editor starts (LSP over stdin and stdout).
It shares the files the editor opens with a duet room.

usage: duet-lsp [--stdio]    (started by the editor)
       duet-lsp --version
       duet-lsp --help

The room: `invite = \"ws://HOST:PORT/ws/<room>?token=<token>\"` in a .duet.toml in the project,
DUET_INVITE, the client's initializationOptions, or the duet.joinRoom command.
Logs: stderr, or DUET_LOG_FILE; under Helix, duet-lsp.log beside helix.log (errors also on
stderr); DUET_LOG=debug for more.
";

/// Ends the process on the `exit` notification. tower-lsp would only stop once stdin closes,
/// and editors (VS Code) count a server that lingers after `exit` as hung. The exit code is
/// 0 after a `shutdown` request, 1 without one, as the LSP specification says.
struct ExitOnExit<S> {
    inner: S,
    shut_down: Arc<AtomicBool>,
}

impl<S> Service<Request> for ExitOnExit<S>
where
    S: Service<Request, Response = Option<Response>, Error = ExitedError>,
    S::Future: Send + 'static,
{
    type Response = Option<Response>;
    type Error = ExitedError;
    type Future = futures_util::future::BoxFuture<'static, Result<Option<Response>, ExitedError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ExitedError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let method = request.method().to_string();
        let shut_down = self.shut_down.clone();
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await;
            match method.as_str() {
                "shutdown" => shut_down.store(true, Ordering::SeqCst),
                "exit" => {
                    tracing::info!("exit");
                    std::process::exit(if shut_down.load(Ordering::SeqCst) {
                        0
                    } else {
                        1
                    });
                }
                _ => {}
            }
            response
        })
    }
}
