//! What the session says to the editor, as values: [`ToEditor`]. [`deliver`] sends them
//! through tower-lsp's `Client`, one after another in the order they were queued (a spawned
//! task each could overtake one another: "connected" after "offline"), so the session never
//! waits for the editor. Only an `applyEdit` goes out at once, from a task of its own: it
//! waits for the editor's answer (which comes back to the session as an event), and must not
//! wait behind a message that waits for one.

use std::time::Duration;

use serde_json::Value;
use tokio::sync::mpsc;
use tower_lsp::lsp_types::*;
use tower_lsp::Client;

use super::Event;
use crate::shadow::ApplyEdit;

/// How long delivery waits for the editor's answer to a request of ours that only shows
/// something (a progress token, a cursor position).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);
/// How long an `applyEdit` may wait for the editor's answer before it counts as refused.
const APPLY_EDIT_TIMEOUT: Duration = Duration::from_secs(10);

/// A message to the editor.
#[derive(Debug, Clone, PartialEq)]
pub enum ToEditor {
    /// `window/showMessage`.
    Show { kind: MessageType, message: String },
    /// `duet/status`: the room, the connection state and the peers.
    Status(Value),
    /// `duet/peers`: everyone else in the room and where they are.
    Peers(Value),
    /// `textDocument/publishDiagnostics` (peers' cursors as hints, when asked for).
    Diagnostics {
        uri: Url,
        diagnostics: Vec<Diagnostic>,
    },
    /// `window/showDocument`: the cursor goes to `position` of `uri`.
    ShowCursor { uri: Url, position: Position },
    /// The join numbered `generation` started: `window/workDoneProgress/create`, then a
    /// `$/progress` begin.
    ProgressBegin { generation: u64, message: String },
    /// The join numbered `generation` ended: `$/progress` end.
    ProgressEnd { generation: u64, message: String },
    /// `duet/away`: what changed in the room while the user was away, and who changed it.
    Away(Value),
    /// `window/showMessageRequest`: a list to read (and pick from; the pick is not used).
    Choose {
        message: String,
        actions: Vec<String>,
    },
    /// `workspace/applyEdit`; the answer comes back as [`Event::ApplyEditAnswered`].
    ApplyEdit { uri: Url, edit: ApplyEdit },
}

/// Sends `messages` to the editor through `client` until the session ends; answers to
/// `applyEdit` go to `events`.
pub async fn deliver(
    client: Client,
    mut messages: mpsc::UnboundedReceiver<ToEditor>,
    events: mpsc::UnboundedSender<Event>,
) {
    let (in_order, queued) = mpsc::unbounded_channel();
    tokio::spawn(send_in_order(client.clone(), queued));
    while let Some(message) = messages.recv().await {
        match message {
            ToEditor::ApplyEdit { uri, edit } => {
                tokio::spawn(apply_edit(client.clone(), uri, edit, events.clone()));
            }
            other => {
                let _ = in_order.send(other);
            }
        }
    }
}

/// Sends every message but `applyEdit`, each once the one before has gone out (or, for a
/// request, been answered).
async fn send_in_order(client: Client, mut messages: mpsc::UnboundedReceiver<ToEditor>) {
    while let Some(message) = messages.recv().await {
        match message {
            // `deliver` keeps these.
            ToEditor::ApplyEdit { .. } => {}
            ToEditor::Show { kind, message } => client.show_message(kind, message).await,
            ToEditor::Status(params) => {
                client.send_notification::<StatusNotification>(params).await
            }
            ToEditor::Peers(params) => client.send_notification::<PeersNotification>(params).await,
            ToEditor::Away(params) => client.send_notification::<AwayNotification>(params).await,
            ToEditor::Choose { message, actions } => {
                let actions = actions
                    .into_iter()
                    .map(|title| MessageActionItem {
                        title,
                        properties: Default::default(),
                    })
                    .collect();
                // Nothing waits for the pick: later messages go out meanwhile.
                let client = client.clone();
                tokio::spawn(async move {
                    let _ = client
                        .show_message_request(MessageType::INFO, message, Some(actions))
                        .await;
                });
            }
            ToEditor::Diagnostics { uri, diagnostics } => {
                client.publish_diagnostics(uri, diagnostics, None).await
            }
            ToEditor::ShowCursor { uri, position } => {
                let params = ShowDocumentParams {
                    uri,
                    external: Some(false),
                    take_focus: Some(true),
                    selection: Some(Range::new(position, position)),
                };
                // Later messages wait for this one: an editor that does not answer only keeps
                // its cursor where it was.
                let shown =
                    tokio::time::timeout(ANSWER_TIMEOUT, client.show_document(params)).await;
                if !matches!(shown, Ok(Ok(true))) {
                    tracing::debug!(?shown, "the editor did not show the cursor's place");
                }
            }
            ToEditor::ProgressBegin {
                generation,
                message,
            } => {
                // The token must exist before it is used; an editor that refuses (or does not
                // answer) just shows no spinner.
                let create = client.send_request::<request::WorkDoneProgressCreate>(
                    WorkDoneProgressCreateParams {
                        token: progress_token(generation),
                    },
                );
                if matches!(
                    tokio::time::timeout(ANSWER_TIMEOUT, create).await,
                    Ok(Ok(()))
                ) {
                    let begin = WorkDoneProgress::Begin(WorkDoneProgressBegin {
                        title: "duet".into(),
                        message: Some(message),
                        ..WorkDoneProgressBegin::default()
                    });
                    progress(&client, generation, begin).await;
                }
            }
            ToEditor::ProgressEnd {
                generation,
                message,
            } => {
                let end = WorkDoneProgress::End(WorkDoneProgressEnd {
                    message: Some(message),
                });
                progress(&client, generation, end).await;
            }
        }
    }
}

async fn apply_edit(
    client: Client,
    uri: Url,
    edit: ApplyEdit,
    events: mpsc::UnboundedSender<Event>,
) {
    let request = client.apply_edit(edit.workspace_edit(uri.clone()));
    let applied = match tokio::time::timeout(APPLY_EDIT_TIMEOUT, request).await {
        Ok(Ok(response)) => response.applied,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "applyEdit failed");
            false
        }
        Err(_) => {
            tracing::warn!("applyEdit timed out");
            false
        }
    };
    let _ = events.send(Event::ApplyEditAnswered {
        uri,
        id: edit.id,
        applied,
    });
}

fn progress_token(generation: u64) -> NumberOrString {
    NumberOrString::String(format!("duet-join-{generation}"))
}

async fn progress(client: &Client, generation: u64, value: WorkDoneProgress) {
    client
        .send_notification::<notification::Progress>(ProgressParams {
            token: progress_token(generation),
            value: ProgressParamsValue::WorkDone(value),
        })
        .await;
}

/// `duet/status`: the room, the connection state and the peers.
pub enum StatusNotification {}

impl notification::Notification for StatusNotification {
    type Params = Value;
    const METHOD: &'static str = "duet/status";
}

/// `duet/away`: what changed in the room while the user was away.
pub enum AwayNotification {}

impl notification::Notification for AwayNotification {
    type Params = Value;
    const METHOD: &'static str = "duet/away";
}

/// `duet/peers`: everyone else in the room and where they are.
pub enum PeersNotification {}

impl notification::Notification for PeersNotification {
    type Params = Value;
    const METHOD: &'static str = "duet/peers";
}
