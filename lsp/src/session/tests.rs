//! The session driven as the editor and the room drive it: LSP messages and connection events
//! go in as [`Event`]s, and what it says to the editor comes out as [`ToEditor`] messages.
//!
//! The room is another bridge's [`Replica`] speaking the same sync protocol: its frames reach
//! the session as connection events, and the session's state reaches it as the server would
//! pass it on. (The session's own connection points at a closed port; its events are not
//! handed to the session, so it stays as the test puts it.)

use duet_server::protocol::{Cursor, Presence, User};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};
use tower_lsp::lsp_types::*;

use super::{CommandResult, Event, Session, ToEditor, COMMANDS};
use crate::connection::NetEvent;
use crate::replica::Replica;
use crate::shadow::Splice;

const ROOM: &str = "6f1c2f4e-1d2b-4c3a-9e8f-0a1b2c3d4e5f";

/// A test's editor: it sends the session what an editor sends and reads what it answers.
struct Editor {
    session: Session,
    /// What the session sends itself (connection events, timers): kept, not handed back.
    _events: mpsc::UnboundedReceiver<Event>,
    said: mpsc::UnboundedReceiver<ToEditor>,
    root: tempdir::Dir,
}

impl Editor {
    /// An editor that offers `encoding` and can be asked to show a document.
    fn start(encoding: PositionEncodingKind) -> Editor {
        let (events, events_rx) = mpsc::unbounded_channel();
        let (editor, said) = mpsc::unbounded_channel();
        let mut e = Editor {
            session: Session::new(events, editor),
            _events: events_rx,
            said,
            root: tempdir::Dir::new(),
        };
        let params = InitializeParams {
            root_uri: Some(Url::from_directory_path(e.root.path()).unwrap()),
            capabilities: ClientCapabilities {
                general: Some(GeneralClientCapabilities {
                    position_encodings: Some(vec![encoding]),
                    ..GeneralClientCapabilities::default()
                }),
                window: Some(WindowClientCapabilities {
                    show_document: Some(ShowDocumentClientCapabilities { support: true }),
                    ..WindowClientCapabilities::default()
                }),
                ..ClientCapabilities::default()
            },
            initialization_options: Some(json!({"name": "ann", "color": "#123456"})),
            ..InitializeParams::default()
        };
        let (reply, answer) = oneshot::channel();
        e.session.handle(Event::Initialize(Box::new(params), reply));
        answer.blocking_recv_now();
        e.session.handle(Event::Initialized);
        e
    }

    /// Everything the session said since the last call.
    fn said(&mut self) -> Vec<ToEditor> {
        std::iter::from_fn(|| self.said.try_recv().ok()).collect()
    }

    fn uri(&self, name: &str) -> Url {
        Url::from_file_path(self.root.path().join(name)).unwrap()
    }

    fn open(&mut self, name: &str, language: &str, text: &str) -> Url {
        let uri = self.uri(name);
        self.session
            .handle(Event::DidOpen(DidOpenTextDocumentParams {
                text_document: TextDocumentItem::new(uri.clone(), language.into(), 1, text.into()),
            }));
        uri
    }

    /// The editor's text changed: `range` replaced by `text`, making version `version`.
    fn change(&mut self, uri: &Url, version: i32, range: Range, text: &str) {
        self.session
            .handle(Event::DidChange(DidChangeTextDocumentParams {
                text_document: VersionedTextDocumentIdentifier::new(uri.clone(), version),
                content_changes: vec![TextDocumentContentChangeEvent {
                    range: Some(range),
                    range_length: None,
                    text: text.into(),
                }],
            }));
    }

    /// Applies an `applyEdit` as an editor does: its change comes back as `didChange`, then
    /// the answer.
    fn apply(&mut self, uri: &Url, version: i32, edit: &crate::shadow::ApplyEdit) {
        self.change(uri, version, edit.range, &edit.new_text);
        self.session.handle(Event::ApplyEditAnswered {
            uri: uri.clone(),
            id: edit.id,
            applied: true,
        });
    }

    fn command(&mut self, command: &str, arguments: Vec<Value>) -> CommandResult {
        let (reply, answer) = oneshot::channel();
        self.session.handle(Event::Command(
            ExecuteCommandParams {
                command: command.into(),
                arguments,
                ..ExecuteCommandParams::default()
            },
            reply,
        ));
        answer.blocking_recv_now()
    }

    fn completion(&mut self, uri: &Url, position: Position) -> Vec<CompletionItem> {
        let (reply, answer) = oneshot::channel();
        self.session.handle(Event::Completion(
            CompletionParams {
                text_document_position: TextDocumentPositionParams::new(
                    TextDocumentIdentifier::new(uri.clone()),
                    position,
                ),
                work_done_progress_params: WorkDoneProgressParams::default(),
                partial_result_params: PartialResultParams::default(),
                context: None,
            },
            reply,
        ));
        match answer.blocking_recv_now() {
            Some(CompletionResponse::List(list)) => list.items,
            other => panic!("unexpected completion answer {other:?}"),
        }
    }

    /// Joins the test's room (at a port where nothing listens).
    fn join(&mut self) {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let invite = format!("ws://127.0.0.1:{port}/ws/{ROOM}?token=secret");
        let joined = self.command("duet.joinRoom", vec![json!(invite)]);
        assert_eq!(joined, Ok(Some(json!({"room": ROOM}))));
    }

    fn generation(&self) -> u64 {
        self.session.room.as_ref().expect("in a room").generation
    }

    /// A frame from the room, as the connection hands it over.
    fn receive(&mut self, frame: Vec<u8>) {
        let generation = self.generation();
        self.session
            .handle(Event::Net(generation, NetEvent::Frame(frame)));
    }

    /// The connection is up and the room's state (`peer`'s) arrived.
    fn sync_with(&mut self, peer: &mut Replica) {
        let generation = self.generation();
        self.session
            .handle(Event::Net(generation, NetEvent::Connected));
        let ask = self.replica().sync_request();
        let state = peer.receive(&ask).unwrap().reply.expect("sync step 2");
        self.receive(state);
    }

    /// Brings `peer` what the session's replica has, as the server would: its document and
    /// its latest presence.
    fn send_to(&mut self, peer: &mut Replica) {
        let ask = peer.sync_request();
        let replica = &mut self.session.room.as_mut().expect("in a room").replica;
        let state = replica.receive(&ask).unwrap().reply.expect("sync step 2");
        peer.receive(&state).unwrap();
        for frame in replica.hello().into_iter().skip(1) {
            peer.receive(&frame).unwrap();
        }
    }

    fn replica(&self) -> &Replica {
        &self.session.room.as_ref().expect("in a room").replica
    }

    fn text(&self, uri: &Url) -> String {
        self.session.docs[uri].shadow.text().to_string()
    }
}

/// The only `applyEdit` among `said`.
fn only_apply_edit(said: &[ToEditor]) -> crate::shadow::ApplyEdit {
    let edits: Vec<_> = said
        .iter()
        .filter_map(|m| match m {
            ToEditor::ApplyEdit { edit, .. } => Some(edit.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(edits.len(), 1, "expected one applyEdit in {said:?}");
    edits[0].clone()
}

fn statuses(said: &[ToEditor]) -> Vec<Value> {
    said.iter()
        .filter_map(|m| match m {
            ToEditor::Status(status) => Some(status.clone()),
            _ => None,
        })
        .collect()
}

fn at(line: u32, character: u32) -> Range {
    Range::new(
        Position::new(line, character),
        Position::new(line, character),
    )
}

/// A oneshot answered while the event was handled: the session answers requests at once.
trait AnsweredNow<T> {
    fn blocking_recv_now(self) -> T;
}

impl<T> AnsweredNow<T> for oneshot::Receiver<T> {
    fn blocking_recv_now(mut self) -> T {
        self.try_recv().expect("the session answered at once")
    }
}

/// A room with a peer ("bob") who has `a.txt`, and an editor that joined it and opened the
/// file with the room's text.
fn joined_with_file(encoding: PositionEncodingKind, text: &str) -> (Editor, Replica, Url) {
    let mut peer = Replica::new();
    peer.create("a.txt", text);
    peer.link("a.txt");
    let mut editor = Editor::start(encoding);
    editor.join();
    editor.sync_with(&mut peer);
    let uri = editor.open("a.txt", "plaintext", text);
    editor.said();
    (editor, peer, uri)
}

#[tokio::test]
async fn typing_reaches_the_room() {
    let mut peer = Replica::new();
    let mut editor = Editor::start(PositionEncodingKind::UTF16);
    editor.join();
    editor.sync_with(&mut peer);
    let uri = editor.open("a.txt", "plaintext", "hello\n");
    editor.change(&uri, 2, at(0, 5), " world");
    assert_eq!(editor.replica().text("a.txt").unwrap(), "hello world\n");
    editor.send_to(&mut peer);
    assert_eq!(peer.link("a.txt").unwrap(), "hello world\n");
    // Nothing comes back to the editor for its own typing.
    assert!(!editor
        .said()
        .iter()
        .any(|m| matches!(m, ToEditor::ApplyEdit { .. })));
}

#[tokio::test]
async fn a_peers_change_reaches_the_editor_as_one_apply_edit() {
    let (mut editor, mut peer, uri) = joined_with_file(PositionEncodingKind::UTF16, "héllo\n");
    let frame = peer.edit("a.txt", &[Splice::typed(5, 0, "!")]).unwrap();
    editor.receive(frame);
    let edit = only_apply_edit(&editor.said());
    assert_eq!(edit.range, at(0, 5));
    assert_eq!(edit.new_text, "!");
    assert_eq!(edit.version, Some(1));
    // The echo settles it: nothing more to send.
    editor.apply(&uri, 2, &edit);
    assert_eq!(editor.text(&uri), "héllo!\n");
    assert!(editor.session.docs[&uri].shadow.is_settled());
    assert!(!editor
        .said()
        .iter()
        .any(|m| matches!(m, ToEditor::ApplyEdit { .. })));
}

#[tokio::test]
async fn a_peers_change_waits_for_the_previous_apply_edit() {
    let (mut editor, mut peer, uri) = joined_with_file(PositionEncodingKind::UTF16, "ab\n");
    editor.receive(peer.edit("a.txt", &[Splice::typed(0, 0, "1")]).unwrap());
    let first = only_apply_edit(&editor.said());
    editor.receive(peer.edit("a.txt", &[Splice::typed(3, 0, "2")]).unwrap());
    assert!(
        editor.said().is_empty(),
        "one applyEdit in flight at a time"
    );
    editor.apply(&uri, 2, &first);
    let second = only_apply_edit(&editor.said());
    assert_eq!((second.range, second.new_text.as_str()), (at(0, 3), "2"));
    editor.apply(&uri, 3, &second);
    assert_eq!(editor.text(&uri), "1ab2\n");
}

#[tokio::test]
async fn undo_takes_back_the_users_typing_and_not_the_peers() {
    let (mut editor, mut peer, uri) = joined_with_file(PositionEncodingKind::UTF16, "x\n");
    editor.change(&uri, 2, at(0, 1), "abc");
    editor.receive(peer.edit("a.txt", &[Splice::typed(0, 0, "P")]).unwrap());
    let edit = only_apply_edit(&editor.said());
    editor.apply(&uri, 3, &edit);
    assert_eq!(editor.text(&uri), "Pxabc\n");

    assert_eq!(
        editor.command("duet.undo", vec![]),
        Ok(Some(json!({"undone": 1})))
    );
    let said = editor.said();
    let undo = only_apply_edit(&said);
    editor.apply(&uri, 4, &undo);
    assert_eq!(editor.text(&uri), "Px\n");
    assert_eq!(editor.replica().text("a.txt").unwrap(), "Px\n");
    // Once the editor has it, the cursor goes where the text changed.
    assert_eq!(
        editor.said(),
        vec![ToEditor::ShowCursor {
            uri: uri.clone(),
            position: Position::new(0, 2)
        }]
    );
    assert_eq!(
        editor.command("duet.redo", vec![json!(uri.as_str())]),
        Ok(Some(json!({"redone": 1})))
    );
    let redo = only_apply_edit(&editor.said());
    editor.apply(&uri, 5, &redo);
    assert_eq!(editor.text(&uri), "Pxabc\n");
}

#[tokio::test]
async fn undo_outside_a_room_says_why() {
    let mut editor = Editor::start(PositionEncodingKind::UTF16);
    let uri = editor.open("a.txt", "plaintext", "x\n");
    assert_eq!(
        editor.command("duet.undo", vec![]),
        Err("duet: nothing typed yet, nothing to undo".into())
    );
    editor.change(&uri, 2, at(0, 0), "y");
    assert_eq!(
        editor.command("duet.undo", vec![]),
        Err("duet: not in a room, nothing to undo".into())
    );
}

#[tokio::test]
async fn completion_offers_the_documents_identifiers_over_the_typed_prefix() {
    let mut editor = Editor::start(PositionEncodingKind::UTF8);
    let uri = editor.open("a.rs", "rust", "let total_count = 1;\nlet é = to");
    let items = editor.completion(&uri, Position::new(1, 11));
    let item = items
        .iter()
        .find(|i| i.label == "total_count")
        .expect("the identifier is offered");
    // The prefix "to" is replaced: it starts two bytes before the cursor.
    assert_eq!(
        item.text_edit,
        Some(CompletionTextEdit::Edit(TextEdit::new(
            Range::new(Position::new(1, 9), Position::new(1, 11)),
            "total_count".into()
        )))
    );
    // A peer's identifier in a file not open here is offered too.
    let mut peer = Replica::new();
    peer.create("b.rs", "fn shared_helper() {}\n");
    editor.join();
    editor.sync_with(&mut peer);
    editor.change(&uri, 2, at(1, 11), "\nsha");
    let items = editor.completion(&uri, Position::new(2, 3));
    assert!(
        items.iter().any(|i| i.label == "shared_helper"),
        "{items:?}"
    );
}

#[tokio::test]
async fn status_follows_the_connection() {
    let mut editor = Editor::start(PositionEncodingKind::UTF16);
    assert_eq!(statuses(&editor.said()), vec![json!({"state": "idle"})]);
    editor.join();
    let said = editor.said();
    assert_eq!(statuses(&said)[0]["state"], "connecting");
    assert!(said
        .iter()
        .any(|m| matches!(m, ToEditor::ProgressBegin { .. })));

    let mut peer = Replica::new();
    peer.create("a.txt", "hi\n");
    editor.sync_with(&mut peer);
    let said = editor.said();
    let status = statuses(&said).pop().expect("a status");
    assert_eq!(status["state"], "connected");
    assert_eq!(status["room"], ROOM);
    assert_eq!(status["files"], json!(["a.txt"]));
    assert!(status.get("invite").is_none(), "the token stays out of it");
    assert!(said
        .iter()
        .any(|m| matches!(m, ToEditor::Show { message, .. } if message.starts_with("duet: joined room 6f1c2f4e"))));

    let generation = editor.generation();
    editor.session.handle(Event::Net(
        generation,
        NetEvent::Disconnected("connection reset".into()),
    ));
    let said = editor.said();
    assert_eq!(statuses(&said).pop().unwrap()["state"], "offline");
    assert!(said
        .iter()
        .any(|m| matches!(m, ToEditor::Show { kind, .. } if *kind == MessageType::WARNING)));

    // `duet.status` answers with the digests of the room's texts.
    let status = editor.command("duet.status", vec![]).unwrap().unwrap();
    assert_eq!(
        status["sha256"]["a.txt"],
        "98ea6e4f216f2fb4b69fff9b3a44842c38686ca685f3f55dc48c5d3fb1107be4"
    );
    assert!(status["invite"].as_str().unwrap().contains("token=secret"));
    editor.said();
    // Events of an earlier join are ignored.
    editor.session.handle(Event::Net(
        generation - 1,
        NetEvent::Refused("room deleted".into()),
    ));
    assert!(editor.said().is_empty());
}

#[tokio::test]
async fn peers_are_shown_where_they_are_in_the_editors_encoding() {
    let (mut editor, mut peer, uri) = joined_with_file(PositionEncodingKind::UTF8, "héllo\n");
    // bob's cursor after "hé": two UTF-16 units, three bytes.
    let frame = peer
        .set_presence(&Presence {
            user: User {
                name: "bob".into(),
                color: "#ff0000".into(),
            },
            cursor: Some(Cursor {
                file: "a.txt".into(),
                anchor: Some(0),
                head: 2,
            }),
        })
        .unwrap();
    editor.receive(frame);
    let peers: Vec<Value> = editor
        .said()
        .into_iter()
        .filter_map(|m| match m {
            ToEditor::Peers(peers) => Some(peers),
            _ => None,
        })
        .collect();
    let bob = &peers.last().expect("duet/peers")["peers"][0];
    assert_eq!(bob["name"], "bob");
    assert_eq!(bob["uri"], json!(uri));
    assert_eq!(bob["head"], json!(Position::new(0, 3)));
    assert_eq!(bob["anchor"], json!(Position::new(0, 0)));
}

#[tokio::test]
async fn our_cursor_after_typing_non_ascii_is_counted_in_the_editors_encoding() {
    let (mut editor, mut peer, uri) = joined_with_file(PositionEncodingKind::UTF8, "é🎉llo\n");
    // "ü" typed after "é🎉llo": at byte 9 (UTF-8), ending at char 6, which is UTF-16 unit 7
    // (the emoji takes two) — what the room counts in.
    editor.change(&uri, 2, at(0, 9), "ü");
    editor.send_to(&mut peer);
    let ann = &peer.peers()[0];
    assert_eq!(ann.name, "ann");
    assert_eq!(
        ann.cursor,
        Some(Cursor {
            file: "a.txt".into(),
            anchor: Some(7),
            head: 7
        })
    );
    assert_eq!(ann.color, "#123456");
}

#[tokio::test]
async fn an_unknown_command_names_the_known_ones() {
    let mut editor = Editor::start(PositionEncodingKind::UTF16);
    let answer = editor.command("duet.dance", vec![]);
    assert_eq!(
        answer,
        Err(format!(
            "unknown command \"duet.dance\"; duet's commands are {}",
            COMMANDS.join(", ")
        ))
    );
    assert!(editor
        .said()
        .iter()
        .any(|m| matches!(m, ToEditor::Show { kind, .. } if *kind == MessageType::ERROR)));
}

/// A directory of its own for each test's workspace, removed at the end.
mod tempdir {
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicUsize, Ordering};

    pub struct Dir(PathBuf);

    impl Dir {
        pub fn new() -> Dir {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let dir = std::env::temp_dir().join(format!(
                "duet-session-test-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&dir).unwrap();
            Dir(dir.canonicalize().unwrap())
        }

        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
