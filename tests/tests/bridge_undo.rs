//! Undo means "my own edits" (`docs/design.md`): `duet.undo` / `duet.redo` undo and redo only the
//! edits this editor's user made, as a change of the room that every peer receives, and put
//! the cursor where the text changed. Through every kind of scripted editor, a real server and
//! a stock Yjs peer; and a restore from the editor, which is the user's own edit too.

use std::time::Duration;

use duet_e2e::editor::{converge, wait_server_file, FakeEditor, Kind, WAIT};
use duet_e2e::server::{Backend, Database, RoomRef, Server};
use duet_e2e::yclient::YClient;
use serde_json::{json, Value};
use yrs::{Map, TextPrelim};

const PATH: &str = "notes.txt";

/// Longer than the bridge's undo grouping (500 ms): what is typed after it is a new step.
const NEW_STEP: Duration = Duration::from_millis(700);

async fn setup(initial: &str) -> (Database, Server, RoomRef) {
    let db = Database::new(Backend::Sqlite);
    let server = Server::start(&db, &[]).await;
    let room = server.create_room_with(&[(PATH, initial)]).await;
    (db, server, room)
}

fn chars(s: &str) -> usize {
    s.chars().count()
}

/// The `window/showDocument` selection the bridge sent after `mark`, as (line, character).
async fn cursor_shown_after(ed: &FakeEditor, mark: usize) -> (u64, u64) {
    let shown = ed
        .wait_received_after(mark, "window/showDocument", WAIT, |m, _| {
            m == "window/showDocument"
        })
        .await;
    let start: &Value = &shown.params["selection"]["start"];
    (
        start["line"].as_u64().expect("line"),
        start["character"].as_u64().expect("character"),
    )
}

/// Waits until the server has `expected` (an undo or redo answered by one bridge reaches the
/// server and the other editors a moment later: until then they all still agree on the text
/// before it), then until every editor has it too.
async fn converge_to(server: &Server, room: &RoomRef, eds: &[&FakeEditor], expected: &str) {
    wait_server_file(server, room, PATH, expected, WAIT, eds).await;
    assert_eq!(converge(server, room, PATH, eds, WAIT).await, expected);
}

/// Two editors interleave bursts of typing; each undoes and redoes its own, several times:
/// only its own text changes, everyone converges, and the cursor lands at the change.
async fn interleaved_undo(a_kind: Kind, b_kind: Kind) {
    let (_db, server, room) = setup("0\n").await;
    let a = FakeEditor::joined(a_kind, "ann", &server, &room, PATH).await;
    let b = FakeEditor::joined(b_kind, "bob", &server, &room, PATH).await;
    let eds = [&a, &b];

    a.type_text(PATH, 0, "a1 ").await;
    converge(&server, &room, PATH, &eds, WAIT).await;
    b.type_text(PATH, chars("a1 0"), " b1").await;
    converge(&server, &room, PATH, &eds, WAIT).await;
    tokio::time::sleep(NEW_STEP).await;
    a.type_text(PATH, chars("a1 0 b1\n"), "a2\n").await;
    converge(&server, &room, PATH, &eds, WAIT).await;
    tokio::time::sleep(NEW_STEP).await;
    b.type_text(PATH, 0, "b2 ").await;
    let text = converge(&server, &room, PATH, &eds, WAIT).await;
    assert_eq!(text, "b2 a1 0 b1\na2\n");

    // ann's last step: her second line; the cursor goes to where it was.
    let mark = a.mark();
    assert_eq!(a.history("duet.undo", PATH, 1).await, 1);
    converge_to(&server, &room, &eds, "b2 a1 0 b1\n").await;
    assert_eq!(cursor_shown_after(&a, mark).await, (1, 0));

    // bob undoes his last step, then ann her first: bob's " b1" stays.
    assert_eq!(b.history("duet.undo", PATH, 1).await, 1);
    assert_eq!(a.history("duet.undo", PATH, 1).await, 1);
    converge_to(&server, &room, &eds, "0 b1\n").await;
    // Nothing of ann's is left to undo, and she is told so; the text stays.
    assert_eq!(a.history("duet.undo", PATH, 1).await, 0);
    a.wait_message("nothing to undo", WAIT, |p| {
        p["message"]
            .as_str()
            .is_some_and(|m| m.contains("nothing of yours to undo"))
    })
    .await;

    // Redo both of ann's steps at once, and bob's; then ann undoes two steps again.
    assert_eq!(a.history("duet.redo", PATH, 5).await, 2);
    assert_eq!(b.history("duet.redo", PATH, 1).await, 1);
    converge_to(&server, &room, &eds, "b2 a1 0 b1\na2\n").await;
    assert_eq!(a.history("duet.undo", PATH, 2).await, 2);
    converge_to(&server, &room, &eds, "b2 0 b1\n").await;
    // Typing clears ann's redo: there is nothing to redo after it.
    a.type_text(PATH, chars("b2 0 b1\n"), "a3").await;
    assert_eq!(a.history("duet.redo", PATH, 1).await, 0);
    converge_to(&server, &room, &eds, "b2 0 b1\na3").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vscode_undoes_only_its_own_edits_beside_neovim() {
    interleaved_undo(Kind::VsCode, Kind::Neovim).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helix_undoes_only_its_own_edits_beside_vscode() {
    interleaved_undo(Kind::Helix, Kind::VsCode).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn neovim_undoes_only_its_own_edits_beside_helix() {
    interleaved_undo(Kind::Neovim, Kind::Helix).await;
}

/// A peer typed inside the text ann is undoing: the peer's text stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undoing_text_a_peer_typed_into_keeps_the_peers_text() {
    let (_db, server, room) = setup("x\n").await;
    let a = FakeEditor::joined(Kind::VsCode, "ann", &server, &room, PATH).await;
    let peer = YClient::join(&server.ws_url(&room)).await;
    a.type_text(PATH, 0, "hello world ").await;
    peer.wait_text(PATH, "hello world x\n", WAIT).await;
    peer.insert(PATH, 5, ", dear");
    a.wait_text(PATH, "hello, dear world x\n", WAIT).await;
    // Without an argument: the document ann last typed in.
    let result = a.execute_command("duet.undo", json!([])).await.unwrap();
    assert_eq!(result["undone"], 1);
    let text = converge(&server, &room, PATH, &[&a], WAIT).await;
    assert_eq!(text, ", dearx\n");
    peer.wait_text(PATH, &text, WAIT).await;
}

/// The undo history outlives a lost connection: after the server restarts and the bridge is
/// back, ann's undo removes what she typed before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undo_works_after_a_reconnect() {
    let (_db, mut server, room) = setup("x\n").await;
    let a = FakeEditor::joined(Kind::Helix, "ann", &server, &room, PATH).await;
    a.type_text(PATH, 1, " typed before").await;
    converge(&server, &room, PATH, &[&a], WAIT).await;
    server.kill9();
    a.wait_status(&["offline"], WAIT).await;
    server.restart().await;
    a.wait_connected(WAIT).await;
    assert_eq!(a.history("duet.undo", PATH, 1).await, 1);
    let text = converge(&server, &room, PATH, &[&a], WAIT).await;
    assert_eq!(text, "x\n");
    assert_eq!(a.history("duet.redo", PATH, 1).await, 1);
    let text = converge(&server, &room, PATH, &[&a], WAIT).await;
    assert_eq!(text, "x typed before\n");
}

/// Bad arguments get clear errors and change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undo_outside_a_shared_document_is_a_clear_error() {
    let (_db, server, room) = setup("x\n").await;
    let a = FakeEditor::joined(Kind::VsCode, "ann", &server, &room, PATH).await;
    let error = a
        .execute_command("duet.undo", json!([]))
        .await
        .expect_err("nothing typed yet");
    assert!(error.to_string().contains("nothing typed yet"), "{error}");
    let error = a
        .execute_command("duet.undo", json!(["not a uri"]))
        .await
        .expect_err("not a URI");
    assert!(error.to_string().contains("not a document URI"), "{error}");
    let error = a
        .execute_command("duet.redo", json!([a.uri("elsewhere.txt")]))
        .await
        .expect_err("not open");
    assert!(error.to_string().contains("not shared"), "{error}");
    assert_eq!(server.file(&room, PATH).await.as_deref(), Some("x\n"));
}

/// A restore from the editor is the restorer's own edit: the peer receives it live; the
/// restorer's undo takes the whole restore back in one step, and only it (what the peer typed
/// since stays, and what the restore replaced comes back); redo restores again. A version of
/// what the restore replaced is taken first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_is_the_restorers_edit_that_their_undo_takes_back() {
    let (_db, server, room) = setup("alpha\nbeta\ngamma\n").await;
    let a = FakeEditor::joined(Kind::VsCode, "ann", &server, &room, PATH).await;
    let peer = YClient::join(&server.ws_url(&room)).await;
    let eds = [&a];
    assert_eq!(server.take_version(&room, "start").await["id"], json!(1));

    // Ann edits a line, the peer adds one: the restore replaces both.
    a.type_text(PATH, chars("alpha\nbeta"), " edited by ann")
        .await;
    converge_to(&server, &room, &eds, "alpha\nbeta edited by ann\ngamma\n").await;
    peer.append(PATH, "delta\n");
    let edited = "alpha\nbeta edited by ann\ngamma\ndelta\n";
    a.wait_text(PATH, edited, WAIT).await;
    let restored = a
        .execute_command("duet.restore", json!([1, PATH]))
        .await
        .unwrap();
    assert_eq!(restored["restored"], json!([PATH]), "{restored}");
    let before = &restored["before"];
    assert_eq!(before["label"], json!("before restoring version 1"));
    let start = "alpha\nbeta\ngamma\n";
    peer.wait_text(PATH, start, WAIT).await;
    converge_to(&server, &room, &eds, start).await;
    // The version taken first holds what the restore replaced.
    let before_id = before["id"].as_i64().unwrap();
    assert_eq!(
        server.version_file(&room, before_id, PATH).await.as_deref(),
        Some(edited)
    );

    // The peer types at the start; then ann undoes once: the restore goes, what it replaced
    // comes back, and the peer's new typing stays.
    peer.insert(PATH, 0, "zero\n");
    a.wait_text(PATH, &format!("zero\n{start}"), WAIT).await;
    let mark = a.mark();
    assert_eq!(a.history("duet.undo", PATH, 1).await, 1);
    let undone = format!("zero\n{edited}");
    converge_to(&server, &room, &eds, &undone).await;
    peer.wait_text(PATH, &undone, WAIT).await;
    assert_eq!(cursor_shown_after(&a, mark).await, (2, 4));

    // Redo restores again, keeping the peer's typing.
    assert_eq!(a.history("duet.redo", PATH, 1).await, 1);
    let redone = format!("zero\n{start}");
    converge_to(&server, &room, &eds, &redone).await;
    peer.wait_text(PATH, &redone, WAIT).await;

    a.assert_no_violations();
}

/// Restoring all of a version from the editor re-creates the files removed since and removes
/// those the version did not have, for every peer; a file the version lacks is a clear error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restoring_all_of_a_version_brings_back_its_files() {
    let db = Database::new(Backend::Sqlite);
    let server = Server::start(&db, &[]).await;
    let room = server
        .create_room_with(&[(PATH, "kept\n"), ("gone.txt", "was here\n")])
        .await;
    let a = FakeEditor::joined(Kind::Helix, "ann", &server, &room, PATH).await;
    let peer = YClient::join(&server.ws_url(&room)).await;
    assert_eq!(server.take_version(&room, "start").await["id"], json!(1));
    peer.transact(|txn, files| {
        files.remove(txn, "gone.txt");
        files.insert(txn, "new.txt", TextPrelim::new("new"));
    });
    wait_server_file(&server, &room, "new.txt", "new", WAIT, &[&a]).await;

    let error = a
        .execute_command("duet.restore", json!([1, "new.txt"]))
        .await
        .expect_err("new.txt is not in version 1");
    assert!(error.to_string().contains("no file"), "{error}");

    let restored = a.execute_command("duet.restore", json!([1])).await.unwrap();
    assert_eq!(
        restored["restored"],
        json!(["gone.txt", "new.txt"]),
        "{restored}"
    );
    peer.wait_text("gone.txt", "was here\n", WAIT).await;
    duet_e2e::eventually(WAIT, "new.txt to go", || async {
        peer.text("new.txt").is_none().then_some(())
    })
    .await;
    assert_eq!(peer.text(PATH).as_deref(), Some("kept\n"));
    wait_server_file(&server, &room, "gone.txt", "was here\n", WAIT, &[&a]).await;
    assert_eq!(server.file(&room, "new.txt").await, None);
}
